// The native Triton backend `tensorrtllm`: Triton requests in, the in-flight batcher's outputs out as
// Triton responses, sent from the server process with Triton's C API.
//
// Each model instance starts one engine process (`python -m backend.engine_core`, backend/engine_core.py)
// and talks to it over a Unix socket (backend/wire.py). `Execute` forwards every request's inputs in one
// frame and releases the requests at once (responses go through response factories, in both transaction
// policies, so a non-decoupled request joins the running batch too). The reader thread turns each step's
// RESPONSES frame into responses; the watcher thread polls cancellation. No Python runs in this process.
//
// Rank > 0 of a multi-rank engine: the engine process follows rank 0's steps; this instance never
// returns from initialization (its server never opens its endpoints) and the process exits with it.

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "triton_api.h"
#include "wire.h"

extern char** environ;

namespace trtllm {
namespace {

void Log(TRITONSERVER_LogLevel level, int line, const std::string& msg) {
  if (TRITONSERVER_LogIsEnabled(level)) {
    TRITONSERVER_Error* err = TRITONSERVER_LogMessage(level, __FILE__, line, msg.c_str());
    if (err != nullptr) TRITONSERVER_ErrorDelete(err);
  }
}
#define LOG_INFO(msg) ::trtllm::Log(TRITONSERVER_LOG_INFO, __LINE__, msg)
#define LOG_WARN(msg) ::trtllm::Log(TRITONSERVER_LOG_WARN, __LINE__, msg)
#define LOG_ERROR(msg) ::trtllm::Log(TRITONSERVER_LOG_ERROR, __LINE__, msg)

// Logs and drops an error returned by a Triton call; true when there was none.
bool Ok(TRITONSERVER_Error* err, const char* what) {
  if (err == nullptr) return true;
  LOG_ERROR(std::string(what) + ": " + TRITONSERVER_ErrorMessage(err));
  TRITONSERVER_ErrorDelete(err);
  return false;
}

uint64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Outputs of the tensorrt_llm model (all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt).
enum Output : int {
  kOutputIds,
  kSequenceLength,
  kCumLogProbs,
  kOutputLogProbs,
  kContextLogits,
  kGenerationLogits,
  kBatchIndex,
  kSequenceIndex,
  kStreamPrefixIds,
  kStreamFinal,
  // return_perf_metrics (a record with PERF), in backend/wire.py's PERF_OUTPUTS order
  kKvAllocNewBlocks,
  kKvReusedBlocks,
  kKvAllocTotalBlocks,
  kArrivalTime,
  kFirstScheduledTime,
  kFirstTokenTime,
  kLastTokenTime,
  kAcceptanceRate,
  kTotalAcceptedDraftTokens,
  kTotalDraftTokens,
  kNumOutputs,
};
#define TRTLLM_PERF_OUTPUT_NAMES                                                                                \
  "kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks", "arrival_time_ns",     \
      "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns", "acceptance_rate",                \
      "total_accepted_draft_tokens", "total_draft_tokens"
const char* const kOutputNames[kNumOutputs] = {
    "output_ids",    "sequence_length", "cum_log_probs",  "output_log_probs",  "context_logits",
    "generation_logits", "batch_index", "sequence_index", "stream_prefix_ids", "stream_final",
    TRTLLM_PERF_OUTPUT_NAMES,
};
// The same outputs as a text front (the `ensemble` interface) names them; null: the front has none.
const char* const kTextOutputNames[kNumOutputs] = {
    "text_output", nullptr, "cum_log_probs", "output_log_probs", "context_logits",
    "generation_logits", "batch_index", "sequence_index", nullptr, nullptr,
    TRTLLM_PERF_OUTPUT_NAMES,
};
constexpr uint32_t kAllOutputs = (1u << kNumOutputs) - 1;

// One Triton request in flight.
struct Slot {
  TRITONBACKEND_ResponseFactory* factory = nullptr;
  uint32_t wanted = kAllOutputs;  // outputs the client asked for (all when it named none)
  bool text = false;              // a text front's request: text_output instead of token ids
  bool decoupled = false;         // the transaction policy of the model the request came to
  bool cancel_sent = false;
  std::map<int32_t, std::vector<int32_t>> streamed;  // batch row -> tokens sent so far (stream_prefix_ids)
};

// The socket to the engine process: whole frames in, whole frames out.
class Channel {
 public:
  explicit Channel(int fd) : fd_(fd) {}
  ~Channel() { Close(); }
  void Close() {
    int fd = fd_.exchange(-1);
    if (fd >= 0) close(fd);
  }
  // Unblocks a reader without giving the descriptor number away while it may still be read.
  void Shutdown() {
    int fd = fd_.load();
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
  }
  bool Send(uint8_t type, const std::string& payload) {
    std::lock_guard<std::mutex> lock(send_mu_);
    std::string head;
    Writer w(&head);
    w.Put<uint32_t>(static_cast<uint32_t>(payload.size() + 1));
    w.Put<uint8_t>(type);
    return WriteAll(head.data(), head.size()) && WriteAll(payload.data(), payload.size());
  }
  bool Recv(uint8_t* type, std::string* payload) {
    char head[5];
    if (!ReadAll(head, sizeof(head))) return false;
    uint32_t len;
    std::memcpy(&len, head, 4);
    *type = static_cast<uint8_t>(head[4]);
    if (len < 1) return false;
    payload->resize(len - 1);
    return ReadAll(&(*payload)[0], len - 1);
  }

 private:
  bool WriteAll(const char* p, size_t n) {
    while (n > 0) {
      ssize_t k = send(fd_.load(), p, n, MSG_NOSIGNAL);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) return false;
      p += k;
      n -= static_cast<size_t>(k);
    }
    return true;
  }
  bool ReadAll(char* p, size_t n) {
    while (n > 0) {
      ssize_t k = recv(fd_.load(), p, n, 0);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) return false;
      p += k;
      n -= static_cast<size_t>(k);
    }
    return true;
  }
  std::atomic<int> fd_;
  std::mutex send_mu_;
};

// Custom metrics declared by the engine process (READY `family=` lines) and fed by METRICS frames.
class Metrics {
 public:
  Metrics(std::string model, std::string version) : model_(std::move(model)), version_(std::move(version)) {}
  ~Metrics() {
    for (auto& m : metrics_) Ok(TRITONSERVER_MetricDelete(m.second.metric), "deleting a metric");
    for (auto& f : families_) Ok(TRITONSERVER_MetricFamilyDelete(f.second.family), "deleting a metric family");
  }
  // `name|kind|help[|bucket,bucket,...]`
  void Declare(const std::string& spec) {
    auto parts = Split(spec, '|');
    if (parts.size() < 3 || !enabled_) return;
    Family f;
    f.kind = parts[1] == "c" ? TRITONSERVER_METRIC_KIND_COUNTER
             : parts[1] == "h" ? TRITONSERVER_METRIC_KIND_HISTOGRAM
                               : TRITONSERVER_METRIC_KIND_GAUGE;
    if (parts.size() > 3)
      for (const auto& b : Split(parts[3], ',')) f.buckets.push_back(std::strtod(b.c_str(), nullptr));
    TRITONSERVER_Error* err = TRITONSERVER_MetricFamilyNew(&f.family, f.kind, parts[0].c_str(), parts[2].c_str());
    if (err != nullptr) {  // metrics turned off (--allow-metrics=false): say so once, carry on without
      LOG_WARN(std::string("custom metrics unavailable: ") + TRITONSERVER_ErrorMessage(err));
      TRITONSERVER_ErrorDelete(err);
      enabled_ = false;
      return;
    }
    families_[parts[0]] = f;
  }
  // Lines `kind\tfamily\tlabel_key\tlabel_value\tvalue`.
  void Update(const std::string& text) {
    for (const auto& line : Split(text, '\n')) {
      auto f = Split(line, '\t');
      if (f.size() != 5) continue;
      auto fam = families_.find(f[1]);
      if (fam == families_.end()) continue;
      const double v = std::strtod(f[4].c_str(), nullptr);
      Series* s = Get(fam->second, f[1] + '\t' + f[2] + '\t' + f[3], f[2], f[3]);
      if (s == nullptr) continue;
      if (f[0] == "g") {
        Ok(TRITONSERVER_MetricSet(s->metric, v), "setting a gauge");
      } else if (f[0] == "c") {  // the engine reports totals; Triton counters only go up
        if (v > s->last) Ok(TRITONSERVER_MetricIncrement(s->metric, v - s->last), "incrementing a counter");
        s->last = v;
      } else if (f[0] == "h") {
        Ok(TRITONSERVER_MetricObserve(s->metric, v), "observing a histogram");
      }
    }
  }

 private:
  struct Family {
    TRITONSERVER_MetricFamily* family = nullptr;
    TRITONSERVER_MetricKind kind = TRITONSERVER_METRIC_KIND_GAUGE;
    std::vector<double> buckets;
  };
  struct Series {
    TRITONSERVER_Metric* metric = nullptr;
    double last = 0;
  };
  Series* Get(const Family& fam, const std::string& key, const std::string& label, const std::string& value) {
    auto it = metrics_.find(key);
    if (it != metrics_.end()) return &it->second;
    const TRITONSERVER_Parameter* labels[3] = {
        TRITONSERVER_ParameterNew("model", TRITONSERVER_PARAMETER_STRING, model_.c_str()),
        TRITONSERVER_ParameterNew("version", TRITONSERVER_PARAMETER_STRING, version_.c_str()),
        TRITONSERVER_ParameterNew(label.c_str(), TRITONSERVER_PARAMETER_STRING, value.c_str()),
    };
    Series s;
    TRITONSERVER_Error* err;
    if (fam.kind == TRITONSERVER_METRIC_KIND_HISTOGRAM) {
      TRITONSERVER_MetricArgs* args = nullptr;
      Ok(TRITONSERVER_MetricArgsNew(&args), "metric args");
      Ok(TRITONSERVER_MetricArgsSetHistogram(args, fam.buckets.data(), fam.buckets.size()), "histogram buckets");
      err = TRITONSERVER_MetricNewWithArgs(&s.metric, fam.family, labels, 3, args);
      Ok(TRITONSERVER_MetricArgsDelete(args), "metric args");
    } else {
      err = TRITONSERVER_MetricNew(&s.metric, fam.family, labels, 3);
    }
    for (auto* l : labels) TRITONSERVER_ParameterDelete(const_cast<TRITONSERVER_Parameter*>(l));
    if (!Ok(err, "creating a metric")) return nullptr;
    return &(metrics_[key] = s);
  }
  std::string model_, version_;
  bool enabled_ = true;
  std::unordered_map<std::string, Family> families_;
  std::unordered_map<std::string, Series> metrics_;
};

class Instance {
 public:
  Instance(TRITONBACKEND_ModelInstance* instance, std::string model, std::string version)
      : instance_(instance), model_(std::move(model)), version_(std::move(version)), metrics_(model_, version_) {}

  // Starts the engine process and waits until it is ready (or has failed to start).
  TRITONSERVER_Error* Start(const std::string& model_config_json) {
    config_ = "{\"model_name\": \"" + model_ + "\", \"model_version\": \"" + version_ +
              "\", \"model_config\": " + model_config_json + "}";
    std::string payload;
    TRITONSERVER_Error* err = Spawn(&payload);
    if (err != nullptr) return err;
    for (const auto& line : Split(payload, '\n')) {
      const size_t eq = line.find('=');
      if (eq == std::string::npos) continue;
      const std::string key = line.substr(0, eq), value = line.substr(eq + 1);
      if (key == "family") {
        metrics_.Declare(value);
      } else {
        ready_[key] = value;
      }
    }
    decoupled_ = ready_["decoupled"] == "1";
    logits_dtype_ = TRITONSERVER_StringToDataType(ready_["logits_dtype"].substr(5).c_str());  // "TYPE_FP32"
    if (logits_dtype_ == TRITONSERVER_TYPE_INVALID) logits_dtype_ = TRITONSERVER_TYPE_FP32;
    cancel_ms_ = std::max(1, std::atoi(ready_["cancel_ms"].c_str()));
    if (ready_["role"] == "follower") return Follow();
    reader_ = std::thread([this] { ReadLoop(); });
    watcher_ = std::thread([this] { WatchLoop(); });
    LOG_INFO("tensorrtllm: engine process " + std::to_string(pid_) + " ready for model " + model_ +
             (decoupled_ ? " (decoupled)" : ""));
    return nullptr;
  }

  // Graceful stop: the engine process ends what is left (cancelled) and exits; then the threads.
  void Stop() {
    stopping_ = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake_.notify_all();
    }
    if (auto ch = channel()) {
      std::string p;
      Writer(&p).Put<double>(0.0);
      ch->Send(kShutdown, p);
    }
    Reap(30);
    if (reader_.joinable()) reader_.join();  // ends at the engine process's end of the socket
    if (watcher_.joinable()) watcher_.join();
    Reap(5);  // one started by a restart racing this unload
    FailAll(TRITONSERVER_ERROR_UNAVAILABLE, "the model is being unloaded");
  }

  void Execute(TRITONBACKEND_Request** requests, uint32_t count) { Submit(instance_, 0, decoupled_, requests, count); }

  // Requests of the engine model (front 0) or of text front `front`, whose statistics go to `reporter`.
  void Submit(TRITONBACKEND_ModelInstance* reporter, uint32_t front, bool decoupled, TRITONBACKEND_Request** requests,
              uint32_t count) {
    const uint64_t start_ns = NowNs();
    std::string frame;
    Writer w(&frame);
    w.Put<uint32_t>(0);  // request count, patched below
    uint32_t sent = 0;
    std::vector<uint64_t> slots;
    for (uint32_t i = 0; i < count; ++i) {
      TRITONBACKEND_Request* request = requests[i];
      auto slot = std::make_unique<Slot>();
      slot->text = front != 0;
      slot->decoupled = decoupled;
      bool ok = Ok(TRITONBACKEND_ResponseFactoryNew(&slot->factory, request), "creating a response factory");
      std::string error;
      const uint64_t id = next_slot_++;
      if (ok && (!alive_ || stopping_)) error = "the engine process is not running (restarting): retry shortly";
      if (ok && error.empty()) error = Serialize(request, id, front, slot.get(), &w);
      const uint64_t now = NowNs();
      Ok(TRITONBACKEND_ModelInstanceReportStatistics(reporter, request, ok && error.empty(), start_ns, start_ns,
                                                     now, now),
         "reporting statistics");
      if (ok && error.empty()) {
        std::lock_guard<std::mutex> lock(mu_);
        slots.push_back(id);
        slots_[id] = std::move(slot);
        ++sent;
      } else if (ok) {
        SendError(*slot, TRITONSERVER_ERROR_UNAVAILABLE, error, true);
        Ok(TRITONBACKEND_ResponseFactoryDelete(slot->factory), "deleting a response factory");
      } else {  // no factory: answer from the request itself, or its client would wait for ever
        TRITONBACKEND_Response* response = nullptr;
        if (Ok(TRITONBACKEND_ResponseNew(&response, request), "creating a response")) {
          TRITONSERVER_Error* err = TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, "cannot create a response");
          Ok(TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, err), "sending a response");
          TRITONSERVER_ErrorDelete(err);
        }
      }
      Ok(TRITONBACKEND_RequestRelease(request, TRITONSERVER_REQUEST_RELEASE_ALL), "releasing a request");
    }
    std::memcpy(&frame[0], &sent, sizeof(sent));
    if (sent > 0 && !channel()->Send(kRequests, frame)) {
      for (uint64_t s : slots) Finish(s, TRITONSERVER_ERROR_UNAVAILABLE, "the engine process is not running");
    }
    const uint64_t end_ns = NowNs();
    Ok(TRITONBACKEND_ModelInstanceReportBatchStatistics(reporter, count, start_ns, start_ns, end_ns, end_ns),
       "reporting batch statistics");
  }

 private:
  // Appends one request to the REQUESTS frame; an error message when it cannot be read.
  std::string Serialize(TRITONBACKEND_Request* request, uint64_t slot_id, uint32_t front, Slot* slot, Writer* w) {
    const char* const* names = slot->text ? kTextOutputNames : kOutputNames;
    uint32_t n_out = 0;
    if (!Ok(TRITONBACKEND_RequestOutputCount(request, &n_out), "output count")) return "cannot read the request";
    if (n_out > 0) {
      slot->wanted = 0;
      for (uint32_t o = 0; o < n_out; ++o) {
        const char* name = nullptr;
        if (!Ok(TRITONBACKEND_RequestOutputName(request, o, &name), "output name")) continue;
        for (int k = 0; k < kNumOutputs; ++k)
          if (names[k] != nullptr && std::strcmp(name, names[k]) == 0) slot->wanted |= 1u << k;
      }
    }
    const char* id = "";
    Ok(TRITONBACKEND_RequestId(request, &id), "request id");
    uint32_t n_in = 0;
    if (!Ok(TRITONBACKEND_RequestInputCount(request, &n_in), "input count")) return "cannot read the request";
    std::string body;
    Writer b(&body);
    for (uint32_t k = 0; k < n_in; ++k) {
      TRITONBACKEND_Input* input = nullptr;
      const char* name = nullptr;
      TRITONSERVER_DataType dtype;
      const int64_t* shape = nullptr;
      uint32_t dims = 0, buffers = 0;
      uint64_t nbytes = 0;
      if (!Ok(TRITONBACKEND_RequestInputByIndex(request, k, &input), "input") ||
          !Ok(TRITONBACKEND_InputProperties(input, &name, &dtype, &shape, &dims, &nbytes, &buffers), "input"))
        return "cannot read the request's inputs";
      std::vector<std::pair<const void*, uint64_t>> parts;
      for (uint32_t j = 0; j < buffers; ++j) {
        const void* p = nullptr;
        uint64_t size = 0;
        TRITONSERVER_MemoryType mem = TRITONSERVER_MEMORY_CPU;
        int64_t mem_id = 0;
        if (!Ok(TRITONBACKEND_InputBuffer(input, j, &p, &size, &mem, &mem_id), "input buffer"))
          return std::string("cannot read input ") + name;
        if (mem == TRITONSERVER_MEMORY_GPU) return std::string("input ") + name + " is in GPU memory: send it from the host";
        parts.emplace_back(p, size);
      }
      PutInput(&b, name, static_cast<uint8_t>(dtype), shape, dims, parts);
    }
    const uint32_t id_len = static_cast<uint32_t>(std::strlen(id));
    w->Put<uint64_t>(slot_id);
    w->Put<uint32_t>(front);
    w->Put<uint32_t>(id_len);
    w->Bytes(id, id_len);
    w->Put<uint32_t>(n_in);
    w->Bytes(body.data(), body.size());
    return {};
  }

  // Starts an engine process, sends it the config and waits for READY (its payload) or its failure.
  TRITONSERVER_Error* Spawn(std::string* ready) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, "socketpair failed");
    const char* python = std::getenv("TRTLLM_PYTHON");
    std::string exe = python != nullptr && *python ? python : "python3";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, sv[1], 3);  // dup2 clears close-on-exec on fd 3
    char* argv[] = {const_cast<char*>(exe.c_str()), const_cast<char*>("-m"),
                    const_cast<char*>("backend.engine_core"), const_cast<char*>("--fd"), const_cast<char*>("3"),
                    nullptr};
    pid_t pid = 0;
    int rc = posix_spawnp(&pid, exe.c_str(), &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(sv[1]);
    if (rc != 0) {
      close(sv[0]);
      return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL,
                                   ("cannot start the engine process " + exe + ": " + std::strerror(rc)).c_str());
    }
    {
      std::lock_guard<std::mutex> lock(reap_mu_);
      pid_ = pid;
    }
    auto channel = std::make_shared<Channel>(sv[0]);
    {
      std::lock_guard<std::mutex> lock(channel_mu_);
      channel_ = channel;
    }
    uint8_t type = 0;
    if (!channel->Send(kConfig, config_) || !channel->Recv(&type, ready) || type != kReady) {
      std::string why = type == kFatal ? *ready : "the engine process exited during start (see its log above)";
      Reap(10);
      return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, ("engine start failed: " + why).c_str());
    }
    return nullptr;
  }

  std::shared_ptr<Channel> channel() {
    std::lock_guard<std::mutex> lock(channel_mu_);
    return channel_;
  }

 public:
  // A text front attaches: its id (> 0) for its requests. The engine process gets the front's spec before
  // any of its requests (same socket, sent first), and again after a restart.
  uint32_t RegisterFront(const std::string& name, const std::string& spec) {
    std::lock_guard<std::mutex> lock(fronts_mu_);
    uint32_t id = 0;
    for (size_t i = 0; i < fronts_.size() && id == 0; ++i)
      if (fronts_[i].first == name) id = static_cast<uint32_t>(i + 1);
    if (id == 0) {
      fronts_.emplace_back(name, spec);
      id = static_cast<uint32_t>(fronts_.size());
    } else if (fronts_[id - 1].second == spec) {
      return id;
    } else {
      fronts_[id - 1].second = spec;  // the front was reloaded with another config
    }
    SendFront(id, spec);
    return id;
  }

 private:
  void SendFront(uint32_t id, const std::string& spec) {
    std::string p;
    Writer w(&p);
    w.Put<uint32_t>(id);
    w.Bytes(spec.data(), spec.size());
    channel()->Send(kFront, p);
  }

  // Responses until the engine process ends. An engine process that dies unexpectedly (killed, crashed)
  // fails its requests at once and is started again (world size 1: a rank cannot rejoin its peers), with
  // requests refused as UNAVAILABLE meanwhile, so that service resumes without anyone acting.
  void ReadLoop() {
    uint8_t type;
    std::string payload;
    std::vector<Record> records;
    for (int restarts = 0;;) {
      std::shared_ptr<Channel> ch = channel();
      while (ch->Recv(&type, &payload)) {
        if (type == kResponses) {
          std::string error;
          if (!ParseRecords(payload, &records, &error)) {
            LOG_ERROR("tensorrtllm: bad frame from the engine process: " + error);
            ch->Shutdown();  // the engine process sees the end of its socket and exits
            break;
          }
          for (const Record& r : records) Respond(r);
        } else if (type == kMetrics) {
          metrics_.Update(payload);
        }
      }
      alive_ = false;
      if (stopping_) break;
      const int status = Reap(5);
      const bool restartable = ready_["world"] == "1";
      LOG_ERROR("tensorrtllm: the engine process of model " + model_ + " exited unexpectedly (" +
                DescribeStatus(status) + "); its requests fail" +
                (restartable ? "; starting a new one" : "; a rank cannot be replaced alone: later requests fail"));
      FailAll(TRITONSERVER_ERROR_UNAVAILABLE, "the engine process exited; retry shortly");
      if (!restartable) break;
      while (!stopping_) {
        // Back off when it keeps failing (a broken GPU, a bad engine): 0, 1, 2, ... 10 s between tries.
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait_for(lock, std::chrono::seconds(std::min(restarts++, 10)), [this] { return stopping_.load(); });
        lock.unlock();
        if (stopping_) break;
        std::string ready;
        TRITONSERVER_Error* err = Spawn(&ready);
        if (err == nullptr) break;
        LOG_ERROR(std::string("tensorrtllm: restarting the engine process failed: ") + TRITONSERVER_ErrorMessage(err));
        TRITONSERVER_ErrorDelete(err);
      }
      if (stopping_) {
        channel()->Shutdown();  // a process started while unloading ends with its socket
        break;
      }
      {
        std::lock_guard<std::mutex> lock(fronts_mu_);
        for (size_t i = 0; i < fronts_.size(); ++i) SendFront(static_cast<uint32_t>(i + 1), fronts_[i].second);
      }
      alive_ = true;
      LOG_INFO("tensorrtllm: engine process " + std::to_string(pid_) + " restarted for model " + model_);
    }
    FailAll(TRITONSERVER_ERROR_UNAVAILABLE, "the engine process exited");
  }

  void WatchLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      wake_.wait_for(lock, std::chrono::milliseconds(cancel_ms_));
      std::vector<uint64_t> cancelled;
      for (auto& it : slots_) {
        bool c = false;
        Slot& s = *it.second;
        // Under mu_: a slot's factory is deleted only after leaving slots_, so it is alive here.
        if (!s.cancel_sent && Ok(TRITONBACKEND_ResponseFactoryIsCancelled(s.factory, &c), "is cancelled") && c) {
          s.cancel_sent = true;
          cancelled.push_back(it.first);
        }
      }
      if (cancelled.empty()) continue;
      lock.unlock();
      for (uint64_t id : cancelled) {
        std::string p;
        Writer(&p).Put<uint64_t>(id);
        channel()->Send(kCancel, p);
      }
      lock.lock();
    }
  }

  // One record -> one response (or the final flag alone).
  void Respond(const Record& r) {
    Slot* slot = nullptr;
    std::unique_ptr<Slot> owned;  // set when this is the request's last response
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = slots_.find(r.slot);
      if (it == slots_.end()) return;  // already failed (e.g. the send of its request failed)
      if (r.flags & kFinal) {
        owned = std::move(it->second);
        slots_.erase(it);
        slot = owned.get();
      } else {
        slot = it->second.get();
      }
    }
    const uint32_t send_flags = (r.flags & kFinal) ? TRITONSERVER_RESPONSE_COMPLETE_FINAL : 0;
    if (r.flags & kError) {
      SendError(*slot, static_cast<TRITONSERVER_Error_Code>(r.error_code), r.error, r.flags & kFinal);
    } else if ((r.flags & kEmpty) && slot->decoupled) {
      Ok(TRITONBACKEND_ResponseFactorySendFlags(slot->factory, send_flags), "sending the final flag");
    } else {
      TRITONBACKEND_Response* response = nullptr;
      if (Ok(TRITONBACKEND_ResponseNewFromFactory(&response, slot->factory), "creating a response")) {
        std::string error;
        if (!(r.flags & kEmpty)) error = AddOutputs(response, slot, r);
        TRITONSERVER_Error* err = error.empty() ? nullptr : TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, error.c_str());
        Ok(TRITONBACKEND_ResponseSend(response, send_flags, err), "sending a response");
        if (err != nullptr) TRITONSERVER_ErrorDelete(err);
      }
    }
    if (owned) Ok(TRITONBACKEND_ResponseFactoryDelete(owned->factory), "deleting a response factory");
  }

  // The record's tensors, those the client asked for; an error message if one cannot be made.
  std::string AddOutputs(TRITONBACKEND_Response* response, Slot* slot, const Record& r) {
    const int64_t beams = r.beams;
    const uint32_t want = slot->wanted;
    const char* const* names = slot->text ? kTextOutputNames : kOutputNames;
    auto add = [&](int which, TRITONSERVER_DataType dtype, std::vector<int64_t> shape, const void* data,
                   size_t nbytes) -> bool {
      if (!(want & (1u << which)) || names[which] == nullptr) return true;
      TRITONBACKEND_Output* out = nullptr;
      if (!Ok(TRITONBACKEND_ResponseOutput(response, &out, names[which], dtype, shape.data(),
                                           static_cast<uint32_t>(shape.size())),
              "creating an output"))
        return false;
      void* buf = nullptr;
      TRITONSERVER_MemoryType mem = TRITONSERVER_MEMORY_CPU;
      int64_t mem_id = 0;
      if (!Ok(TRITONBACKEND_OutputBuffer(out, &buf, nbytes, &mem, &mem_id), "allocating an output")) return false;
      if (nbytes > 0) {
        if (mem == TRITONSERVER_MEMORY_GPU || buf == nullptr) return false;
        if (data != nullptr) {
          std::memcpy(buf, data, nbytes);
        } else {
          std::memset(buf, 0, nbytes);
        }
      }
      return true;
    };
    const bool stream = r.flags & kStream;
    std::vector<int32_t>* prefix = nullptr;
    if (stream && (want & (1u << kStreamPrefixIds))) prefix = &slot->streamed[r.batch_index];
    const int32_t batch_index = r.batch_index, sequence_index = 0;
    const bool stream_final = !stream || (r.flags & kRowEnd);
    const size_t logit_bytes = TRITONSERVER_DataTypeByteSize(logits_dtype_);
    const std::vector<float> no_cum(r.beams, 0.0f);
    const bool lp = r.flags & kLogProbs;
    bool ok = true;
    if (slot->text) {  // one BYTES element per beam, laid out as Triton's BYTES tensors are: u32 length | bytes
      std::string texts;
      Writer tw(&texts);
      for (const std::string& t : r.texts) {
        tw.Put<uint32_t>(static_cast<uint32_t>(t.size()));
        tw.Bytes(t.data(), t.size());
      }
      ok = add(kOutputIds, TRITONSERVER_TYPE_BYTES, {static_cast<int64_t>(r.texts.size())}, texts.data(), texts.size());
    } else {
      ok = add(kOutputIds, TRITONSERVER_TYPE_INT32, {1, beams, static_cast<int64_t>(r.width)}, r.tokens.data(),
               4 * r.tokens.size());
    }
    ok = ok &&
              add(kSequenceLength, TRITONSERVER_TYPE_INT32, {1, beams}, r.seq_lens.data(), 4 * r.seq_lens.size()) &&
              add(kCumLogProbs, TRITONSERVER_TYPE_FP32, {1, beams}, lp ? r.cum_log_probs.data() : no_cum.data(),
                  4 * r.beams) &&
              add(kOutputLogProbs, TRITONSERVER_TYPE_FP32, {1, beams, lp ? static_cast<int64_t>(r.log_prob_width) : 0}, r.log_probs.data(),
                  lp ? 4 * r.log_probs.size() : 0) &&
              add(kContextLogits, logits_dtype_, {1, 1, 1}, nullptr, logit_bytes) &&
              add(kGenerationLogits, logits_dtype_, {1, 1, 1, 1}, nullptr, logit_bytes) &&
              add(kBatchIndex, TRITONSERVER_TYPE_INT32, {1, 1}, &batch_index, 4) &&
              add(kSequenceIndex, TRITONSERVER_TYPE_INT32, {1, 1}, &sequence_index, 4) &&
              add(kStreamPrefixIds, TRITONSERVER_TYPE_INT32, {1, prefix ? static_cast<int64_t>(prefix->size()) : 0},
                  prefix ? prefix->data() : nullptr, prefix ? 4 * prefix->size() : 0) &&
              add(kStreamFinal, TRITONSERVER_TYPE_BOOL, {1, 1}, &stream_final, 1);
    if (ok && (r.flags & kPerf)) {  // no speculative decoding: its three outputs are zero
      const float zero_rate = 0.0f;
      const int32_t zero = 0;
      for (int k = 0; k < 3 && ok; ++k)
        ok = add(kKvAllocNewBlocks + k, TRITONSERVER_TYPE_INT32, {1, 1}, &r.kv_blocks[k], 4);
      for (int k = 0; k < 4 && ok; ++k)
        ok = add(kArrivalTime + k, TRITONSERVER_TYPE_INT64, {1, 1}, &r.times_ns[k], 8);
      ok = ok && add(kAcceptanceRate, TRITONSERVER_TYPE_FP32, {1, 1}, &zero_rate, 4) &&
           add(kTotalAcceptedDraftTokens, TRITONSERVER_TYPE_INT32, {1, 1}, &zero, 4) &&
           add(kTotalDraftTokens, TRITONSERVER_TYPE_INT32, {1, 1}, &zero, 4);
    }
    if (prefix != nullptr) prefix->insert(prefix->end(), r.tokens.begin(), r.tokens.end());
    return ok ? std::string() : "failed to build the response's outputs";
  }

  static void SendError(const Slot& slot, TRITONSERVER_Error_Code code, const std::string& msg, bool final) {
    TRITONBACKEND_ResponseFactory* factory = slot.factory;
    TRITONBACKEND_Response* response = nullptr;
    if (!Ok(TRITONBACKEND_ResponseNewFromFactory(&response, factory), "creating an error response")) return;
    TRITONSERVER_Error* err = TRITONSERVER_ErrorNew(code, msg.c_str());
    // Decoupled: the error, then the final flag alone. A BLS caller (the Python backend's decoupled
    // `exec`) never sees an error response that carries the final flag itself: its stream hangs (seen).
    const bool split = final && slot.decoupled;
    Ok(TRITONBACKEND_ResponseSend(response, final && !split ? TRITONSERVER_RESPONSE_COMPLETE_FINAL : 0, err),
       "sending an error response");
    TRITONSERVER_ErrorDelete(err);
    if (split) Ok(TRITONBACKEND_ResponseFactorySendFlags(factory, TRITONSERVER_RESPONSE_COMPLETE_FINAL), "final flag");
  }

  // Ends one request with an error, if it is still in flight.
  void Finish(uint64_t id, TRITONSERVER_Error_Code code, const std::string& msg) {
    std::unique_ptr<Slot> slot;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = slots_.find(id);
      if (it == slots_.end()) return;
      slot = std::move(it->second);
      slots_.erase(it);
    }
    SendError(*slot, code, msg, true);
    Ok(TRITONBACKEND_ResponseFactoryDelete(slot->factory), "deleting a response factory");
  }

  void FailAll(TRITONSERVER_Error_Code code, const std::string& msg) {
    std::vector<uint64_t> ids;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& it : slots_) ids.push_back(it.first);
    }
    for (uint64_t id : ids) Finish(id, code, msg);
  }

  // A follower rank: the engine process runs until rank 0 stops; then this server process ends too,
  // as the TensorRT-LLM backend's workers do (their servers never serve).
  TRITONSERVER_Error* Follow() {
    LOG_INFO("tensorrtllm: rank " + ready_["rank"] + " follows rank 0 (this server does not serve)");
    int status = Reap(-1);
    LOG_INFO("tensorrtllm: follower engine process ended (" + DescribeStatus(status) + ")");
    std::fflush(nullptr);
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
  }

  // Waits for the engine process (at most `seconds`, -1: for ever), then kills it; its exit status.
  int Reap(int seconds) {
    std::lock_guard<std::mutex> lock(reap_mu_);
    if (pid_ <= 0) return reaped_status_;
    int status = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (true) {
      pid_t r = waitpid(pid_, &status, seconds < 0 ? 0 : WNOHANG);
      if (r == pid_ || (r < 0 && errno != EINTR)) break;
      if (seconds >= 0 && std::chrono::steady_clock::now() > deadline) {
        LOG_WARN("tensorrtllm: engine process " + std::to_string(pid_) + " did not exit: killing it");
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        break;
      }
      if (seconds >= 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    pid_ = 0;
    reaped_status_ = status;
    return status;
  }

  static std::string DescribeStatus(int status) {
    if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
    return "exit code " + std::to_string(WEXITSTATUS(status));
  }

  TRITONBACKEND_ModelInstance* instance_;
  std::string model_, version_;
  Metrics metrics_;
  std::map<std::string, std::string> ready_;
  bool decoupled_ = false;
  TRITONSERVER_DataType logits_dtype_ = TRITONSERVER_TYPE_FP32;
  int cancel_ms_ = 100;
  pid_t pid_ = 0;
  int reaped_status_ = 0;
  std::string config_;  // the CONFIG frame, kept to start the engine process again
  std::mutex channel_mu_;
  std::shared_ptr<Channel> channel_;  // replaced when the engine process is restarted
  std::atomic<bool> alive_{true};
  std::atomic<bool> stopping_{false};
  std::mutex reap_mu_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::unordered_map<uint64_t, std::unique_ptr<Slot>> slots_;
  std::atomic<uint64_t> next_slot_{1};  // Submit runs on the threads of this model and of its fronts
  std::thread reader_, watcher_;
  std::mutex fronts_mu_;
  std::vector<std::pair<std::string, std::string>> fronts_;  // id - 1 -> (front model name, spec JSON)
};

// Engines by model name, for the text fronts (all models of this backend live in one server process).
std::mutex g_engines_mu;
std::map<std::string, std::weak_ptr<Instance>> g_engines;

std::shared_ptr<Instance> FindEngine(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_engines_mu);
  auto it = g_engines.find(name);
  return it == g_engines.end() ? nullptr : it->second.lock();
}

// Small readers of the model config JSON that Triton serializes (no JSON library is linked).
size_t SkipSpace(const std::string& s, size_t p) {
  while (p < s.size() && std::isspace(static_cast<unsigned char>(s[p]))) ++p;
  return p;
}

// The string value of parameter `key` ("parameters":{"key":{"string_value":"..."}}); `fallback` when absent.
std::string ParamString(const std::string& json, const std::string& key, const std::string& fallback = "") {
  size_t p = json.find("\"parameters\"");
  if (p == std::string::npos || (p = json.find("\"" + key + "\"", p)) == std::string::npos) return fallback;
  if ((p = json.find("\"string_value\"", p)) == std::string::npos) return fallback;
  p = SkipSpace(json, json.find(':', p) + 1);
  const size_t end = json.find('"', p + 1);
  if (p >= json.size() || json[p] != '"' || end == std::string::npos) return fallback;
  return json.substr(p + 1, end - p - 1);
}

// A parameter's value, or `fallback` when it is absent, empty or an unfilled `${placeholder}`.
std::string FilledParam(const std::string& json, const std::string& key, const std::string& fallback = "") {
  const std::string v = ParamString(json, key);
  return v.empty() || v.rfind("${", 0) == 0 ? fallback : v;
}

// The engine model a text front serves from, or "" for a model that is an engine itself. A front is a model
// with parameter `engine_model` (our `ensemble`), or with `tensorrt_llm_model_name` (upstream's
// `tensorrt_llm_bls` parameter, which names the engine model it calls: "tensorrt_llm" when left unfilled).
std::string FrontEngineModel(const std::string& config) {
  const std::string engine = ParamString(config, "engine_model");
  if (!engine.empty()) return engine;
  const std::string absent = "\x01";
  if (ParamString(config, "tensorrt_llm_model_name", absent) == absent) return "";
  return FilledParam(config, "tensorrt_llm_model_name", "tensorrt_llm");
}

// Position of the value of `"decoupled"` in the JSON (or a pbtxt's text), npos when absent.
size_t DecoupledValue(const std::string& text) {
  size_t p = text.find("decoupled");
  if (p == std::string::npos) return p;
  p = SkipSpace(text, p + std::strlen("decoupled") + (text[p + 9] == '"' ? 1 : 0));
  if (p >= text.size() || text[p] != ':') return std::string::npos;
  return SkipSpace(text, p + 1);
}

bool IsTrueAt(const std::string& text, size_t p) {
  if (p == std::string::npos) return false;
  for (const char* t : {"true", "True", "1"})
    if (text.compare(p, std::strlen(t), t) == 0) return true;
  return false;
}

// Whether the engine model's config.pbtxt (beside this model's directory) asks for decoupled mode.
bool EngineIsDecoupled(const std::string& model_dir, const std::string& engine_model) {
  const size_t slash = model_dir.find_last_of('/');
  const std::string path = (slash == std::string::npos ? "." : model_dir.substr(0, slash)) + "/" + engine_model +
                           "/config.pbtxt";
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return false;
  std::string text;
  char line[4096];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    std::string l(line);
    const size_t hash = l.find('#');  // comments may mention the word
    text += hash == std::string::npos ? l : l.substr(0, hash) + "\n";
  }
  std::fclose(f);
  return IsTrueAt(text, DecoupledValue(text));
}

bool JsonDecoupled(const std::string& json) {
  const size_t p = json.find("\"model_transaction_policy\"");
  if (p == std::string::npos) return false;
  const std::string rest = json.substr(p);
  return IsTrueAt(rest, DecoupledValue(rest));
}

std::string ConfigJson(TRITONBACKEND_Model* model, TRITONSERVER_Error** err) {
  TRITONSERVER_Message* message = nullptr;
  if ((*err = TRITONBACKEND_ModelConfig(model, 1, &message)) != nullptr) return {};
  const char* json = nullptr;
  size_t size = 0;
  *err = TRITONSERVER_MessageSerializeToJson(message, &json, &size);
  std::string config = *err == nullptr ? std::string(json, size) : std::string();
  Ok(TRITONSERVER_MessageDelete(message), "deleting the model config");
  return config;
}

// A text model (the `ensemble` and `tensorrt_llm_bls` interfaces: text in, text out) served by the engine of
// another model of this backend: no Python model and no Triton ensemble sits between the client and the
// engine, so a client's cancellation reaches the engine (Triton 2.51 ensembles do not pass it to their steps)
// and each response costs no Python stub. The engine process tokenizes and detokenizes with the tokenizer
// settings of the `preprocessing` / `postprocessing` models (read from the server, so that they stay the one
// place to set them), or with the front's own when its config sets `tokenizer_dir`.
class Front {
 public:
  Front(TRITONBACKEND_ModelInstance* instance, TRITONSERVER_Server* server, std::string model, const std::string& config)
      : instance_(instance),
        server_(server),
        model_(std::move(model)),
        config_(config),
        engine_model_(FrontEngineModel(config)),
        pre_model_(ParamString(config, "preprocessing_model", "preprocessing")),
        post_model_(ParamString(config, "postprocessing_model", "postprocessing")),
        own_tokenizer_(!FilledParam(config, "tokenizer_dir").empty()),
        decoupled_(JsonDecoupled(config)) {}

  bool decoupled() const { return decoupled_; }

  void Execute(TRITONBACKEND_Request** requests, uint32_t count) {
    std::shared_ptr<Instance> engine = FindEngine(engine_model_);
    std::string why = "model '" + model_ + "' serves from engine model '" + engine_model_ + "', which is not loaded";
    const uint32_t id = engine ? Attach(engine, &why) : 0;
    if (id == 0) {
      Reject(requests, count, why);
      return;
    }
    engine->Submit(instance_, id, decoupled_, requests, count);
  }

 private:
  uint32_t Attach(const std::shared_ptr<Instance>& engine, std::string* why) {
    if (attached_.lock() == engine) return id_;
    // Tokenizer settings: the front's own (a BLS config with `tokenizer_dir`), else those of the two models.
    std::string pre = config_, post = config_;
    if (!own_tokenizer_ && (!OtherConfig(pre_model_, &pre, why) || !OtherConfig(post_model_, &post, why))) return 0;
    const std::string spec = "{\"name\": \"" + model_ + "\", \"decoupled\": " + (decoupled_ ? "true" : "false") +
                             ", \"preprocessing\": " + pre + ", \"postprocessing\": " + post +
                             ", \"config\": " + config_ + "}";
    id_ = engine->RegisterFront(model_, spec);
    attached_ = engine;
    return id_;
  }

  bool OtherConfig(const std::string& name, std::string* json, std::string* why) {
    TRITONSERVER_Message* message = nullptr;
    TRITONSERVER_Error* err = TRITONSERVER_ServerModelConfig(server_, name.c_str(), -1, 1, &message);
    if (err == nullptr) {
      const char* base = nullptr;
      size_t size = 0;
      err = TRITONSERVER_MessageSerializeToJson(message, &base, &size);
      if (err == nullptr) json->assign(base, size);
      Ok(TRITONSERVER_MessageDelete(message), "deleting a model config");
    }
    if (err == nullptr) return true;
    *why = "model '" + model_ + "' takes its tokenizer settings from model '" + name + "', which is not loaded: " +
           TRITONSERVER_ErrorMessage(err);
    TRITONSERVER_ErrorDelete(err);
    return false;
  }

  void Reject(TRITONBACKEND_Request** requests, uint32_t count, const std::string& why) {
    const uint64_t now = NowNs();
    for (uint32_t i = 0; i < count; ++i) {
      TRITONBACKEND_Response* response = nullptr;
      if (Ok(TRITONBACKEND_ResponseNew(&response, requests[i]), "creating a response")) {
        TRITONSERVER_Error* err = TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_UNAVAILABLE, why.c_str());
        Ok(TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, err), "sending a response");
        TRITONSERVER_ErrorDelete(err);
      }
      Ok(TRITONBACKEND_ModelInstanceReportStatistics(instance_, requests[i], false, now, now, now, now), "statistics");
      Ok(TRITONBACKEND_RequestRelease(requests[i], TRITONSERVER_REQUEST_RELEASE_ALL), "releasing a request");
    }
  }

  TRITONBACKEND_ModelInstance* instance_;
  TRITONSERVER_Server* server_;
  std::string model_, config_, engine_model_, pre_model_, post_model_;
  bool own_tokenizer_, decoupled_;
  std::weak_ptr<Instance> attached_;
  uint32_t id_ = 0;
};

// What a model instance of this backend is: an engine, or a text front of one.
struct State {
  std::shared_ptr<Instance> engine;
  std::unique_ptr<Front> front;
};

}  // namespace
}  // namespace trtllm

extern "C" {

TRITON_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_Initialize(TRITONBACKEND_Backend* backend) {
  (void)backend;
  uint32_t major = 0, minor = 0;
  TRITONSERVER_Error* err = TRITONBACKEND_ApiVersion(&major, &minor);
  if (err != nullptr) return err;
  // Our declarations (triton_api.h) are those of backend API 1.19 (Triton 2.51): same major, no older minor.
  if (major != TRITONBACKEND_API_VERSION_MAJOR || minor < TRITONBACKEND_API_VERSION_MINOR) {
    const std::string msg = "tensorrtllm backend: built for Triton backend API " +
                            std::to_string(TRITONBACKEND_API_VERSION_MAJOR) + "." +
                            std::to_string(TRITONBACKEND_API_VERSION_MINOR) + " (Triton 2.51), server has " +
                            std::to_string(major) + "." + std::to_string(minor);
    return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_UNSUPPORTED, msg.c_str());
  }
  return nullptr;
}

// The `ensemble` front takes the transaction policy of its engine model, as a Triton ensemble is decoupled when
// its engine step is: upstream fills the ensemble's config with two keys only, neither of them the policy (a
// BLS config sets its own, `decoupled_mode`, which stays).
// Triton 2.51 takes the completed config even with --disable-auto-complete-config (which the launchers
// pass); the instance reads the policy back from it.
TRITON_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model) {
  TRITONSERVER_Error* err = nullptr;
  std::string config = trtllm::ConfigJson(model, &err);
  if (err != nullptr) return err;
  const std::string engine_model = trtllm::ParamString(config, "engine_model");
  if (engine_model.empty() || trtllm::JsonDecoupled(config)) return nullptr;
  TRITONBACKEND_ArtifactType type;
  const char* location = nullptr;
  if ((err = TRITONBACKEND_ModelRepository(model, &type, &location)) != nullptr) return err;
  if (!trtllm::EngineIsDecoupled(location, engine_model)) return nullptr;
  // Triton writes every field, so the policy is there as "decoupled":false; insert it if a later one does not.
  const size_t policy = config.find("\"model_transaction_policy\"");
  const size_t value = policy == std::string::npos ? policy : trtllm::DecoupledValue(config.substr(policy));
  if (value != std::string::npos && config.compare(policy + value, 5, "false") == 0) {
    config.replace(policy + value, 5, "true");
  } else {
    config.insert(config.find('{') + 1, "\"model_transaction_policy\":{\"decoupled\":true},");
  }
  TRITONSERVER_Message* message = nullptr;
  if ((err = TRITONSERVER_MessageNewFromSerializedJson(&message, config.data(), config.size())) != nullptr) return err;
  err = TRITONBACKEND_ModelSetConfig(model, 1, message);
  trtllm::Ok(TRITONSERVER_MessageDelete(message), "deleting a model config");
  return err;
}

TRITON_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* instance) {
  TRITONBACKEND_Model* model = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceModel(instance, &model);
  if (err != nullptr) return err;
  const char* name = nullptr;
  uint64_t version = 0;
  if ((err = TRITONBACKEND_ModelName(model, &name)) != nullptr) return err;
  if ((err = TRITONBACKEND_ModelVersion(model, &version)) != nullptr) return err;
  const std::string config = trtllm::ConfigJson(model, &err);
  if (err != nullptr) return err;
  auto state = std::make_unique<trtllm::State>();
  const std::string engine_model = trtllm::FrontEngineModel(config);
  if (!engine_model.empty()) {
    TRITONSERVER_Server* server = nullptr;
    if ((err = TRITONBACKEND_ModelServer(model, &server)) != nullptr) return err;
    state->front = std::make_unique<trtllm::Front>(instance, server, name, config);
    LOG_INFO(std::string("tensorrtllm: model ") + name + " is a text front of model " + engine_model +
             (state->front->decoupled() ? " (decoupled)" : ""));
  } else {
    state->engine = std::make_shared<trtllm::Instance>(instance, name, std::to_string(version));
    if ((err = state->engine->Start(config)) != nullptr) return err;
    std::lock_guard<std::mutex> lock(trtllm::g_engines_mu);
    trtllm::g_engines[name] = state->engine;
  }
  return TRITONBACKEND_ModelInstanceSetState(instance, state.release());
}

TRITON_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* instance) {
  void* p = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(instance, &p);
  if (err != nullptr) return err;
  std::unique_ptr<trtllm::State> state(static_cast<trtllm::State*>(p));
  if (state != nullptr && state->engine != nullptr) {
    {
      std::lock_guard<std::mutex> lock(trtllm::g_engines_mu);
      for (auto it = trtllm::g_engines.begin(); it != trtllm::g_engines.end(); ++it) {
        if (it->second.lock() == state->engine) {
          trtllm::g_engines.erase(it);
          break;
        }
      }
    }
    state->engine->Stop();  // a front still holding it gets "not running" for what it submits now
  }
  return nullptr;
}

TRITON_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* instance,
                                                                             TRITONBACKEND_Request** requests,
                                                                             const uint32_t request_count) {
  void* p = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(instance, &p);
  if (err != nullptr) return err;
  auto* state = static_cast<trtllm::State*>(p);
  if (state->front != nullptr) {
    state->front->Execute(requests, request_count);
  } else {
    state->engine->Execute(requests, request_count);
  }
  return nullptr;
}

}  // extern "C"
