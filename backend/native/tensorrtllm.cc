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

#include <atomic>
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
#define LOG_INFO(msg) Log(TRITONSERVER_LOG_INFO, __LINE__, msg)
#define LOG_WARN(msg) Log(TRITONSERVER_LOG_WARN, __LINE__, msg)
#define LOG_ERROR(msg) Log(TRITONSERVER_LOG_ERROR, __LINE__, msg)

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
  kNumOutputs,
};
const char* const kOutputNames[kNumOutputs] = {
    "output_ids",    "sequence_length", "cum_log_probs",  "output_log_probs",  "context_logits",
    "generation_logits", "batch_index", "sequence_index", "stream_prefix_ids", "stream_final",
};
constexpr uint32_t kAllOutputs = (1u << kNumOutputs) - 1;

// One Triton request in flight.
struct Slot {
  TRITONBACKEND_ResponseFactory* factory = nullptr;
  uint32_t wanted = kAllOutputs;  // outputs the client asked for (all when it named none)
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

  void Execute(TRITONBACKEND_Request** requests, uint32_t count) {
    const uint64_t start_ns = NowNs();
    std::string frame;
    Writer w(&frame);
    w.Put<uint32_t>(0);  // request count, patched below
    uint32_t sent = 0;
    std::vector<uint64_t> slots;
    for (uint32_t i = 0; i < count; ++i) {
      TRITONBACKEND_Request* request = requests[i];
      auto slot = std::make_unique<Slot>();
      bool ok = Ok(TRITONBACKEND_ResponseFactoryNew(&slot->factory, request), "creating a response factory");
      std::string error;
      if (ok && !alive_) error = "the engine process is not running (restarting): retry shortly";
      if (ok && error.empty()) error = Serialize(request, next_slot_, slot.get(), &w);
      const uint64_t now = NowNs();
      Ok(TRITONBACKEND_ModelInstanceReportStatistics(instance_, request, ok && error.empty(), start_ns, start_ns,
                                                     now, now),
         "reporting statistics");
      if (ok && error.empty()) {
        std::lock_guard<std::mutex> lock(mu_);
        slots.push_back(next_slot_);
        slots_[next_slot_++] = std::move(slot);
        ++sent;
      } else if (ok) {
        SendError(slot->factory, TRITONSERVER_ERROR_UNAVAILABLE, error, true);
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
    Ok(TRITONBACKEND_ModelInstanceReportBatchStatistics(instance_, count, start_ns, start_ns, end_ns, end_ns),
       "reporting batch statistics");
  }

 private:
  // Appends one request to the REQUESTS frame; an error message when it cannot be read.
  std::string Serialize(TRITONBACKEND_Request* request, uint64_t slot_id, Slot* slot, Writer* w) {
    uint32_t n_out = 0;
    if (!Ok(TRITONBACKEND_RequestOutputCount(request, &n_out), "output count")) return "cannot read the request";
    if (n_out > 0) {
      slot->wanted = 0;
      for (uint32_t o = 0; o < n_out; ++o) {
        const char* name = nullptr;
        if (!Ok(TRITONBACKEND_RequestOutputName(request, o, &name), "output name")) continue;
        for (int k = 0; k < kNumOutputs; ++k)
          if (std::strcmp(name, kOutputNames[k]) == 0) slot->wanted |= 1u << k;
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
      SendError(slot->factory, static_cast<TRITONSERVER_Error_Code>(r.error_code), r.error, r.flags & kFinal);
    } else if ((r.flags & kEmpty) && decoupled_) {
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
    auto add = [&](int which, TRITONSERVER_DataType dtype, std::vector<int64_t> shape, const void* data,
                   size_t nbytes) -> bool {
      if (!(want & (1u << which))) return true;
      TRITONBACKEND_Output* out = nullptr;
      if (!Ok(TRITONBACKEND_ResponseOutput(response, &out, kOutputNames[which], dtype, shape.data(),
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
    bool ok = add(kOutputIds, TRITONSERVER_TYPE_INT32, {1, beams, static_cast<int64_t>(r.width)}, r.tokens.data(), 4 * r.tokens.size()) &&
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
    if (prefix != nullptr) prefix->insert(prefix->end(), r.tokens.begin(), r.tokens.end());
    return ok ? std::string() : "failed to build the response's outputs";
  }

  void SendError(TRITONBACKEND_ResponseFactory* factory, TRITONSERVER_Error_Code code, const std::string& msg,
                 bool final) {
    TRITONBACKEND_Response* response = nullptr;
    if (!Ok(TRITONBACKEND_ResponseNewFromFactory(&response, factory), "creating an error response")) return;
    TRITONSERVER_Error* err = TRITONSERVER_ErrorNew(code, msg.c_str());
    // Decoupled: the error, then the final flag alone. A BLS caller (the Python backend's decoupled
    // `exec`) never sees an error response that carries the final flag itself: its stream hangs (seen).
    const bool split = final && decoupled_;
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
    SendError(slot->factory, code, msg, true);
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
  uint64_t next_slot_ = 1;  // only Execute (one thread per instance) touches it
  std::thread reader_, watcher_;
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

TRITON_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* instance) {
  TRITONBACKEND_Model* model = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceModel(instance, &model);
  if (err != nullptr) return err;
  const char* name = nullptr;
  uint64_t version = 0;
  if ((err = TRITONBACKEND_ModelName(model, &name)) != nullptr) return err;
  if ((err = TRITONBACKEND_ModelVersion(model, &version)) != nullptr) return err;
  TRITONSERVER_Message* message = nullptr;
  if ((err = TRITONBACKEND_ModelConfig(model, 1, &message)) != nullptr) return err;
  const char* json = nullptr;
  size_t size = 0;
  err = TRITONSERVER_MessageSerializeToJson(message, &json, &size);
  std::string config = err == nullptr ? std::string(json, size) : std::string();
  trtllm::Ok(TRITONSERVER_MessageDelete(message), "deleting the model config");
  if (err != nullptr) return err;
  auto state = std::make_unique<trtllm::Instance>(instance, name, std::to_string(version));
  if ((err = state->Start(config)) != nullptr) return err;
  return TRITONBACKEND_ModelInstanceSetState(instance, state.release());
}

TRITON_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* instance) {
  void* state = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(instance, &state);
  if (err != nullptr) return err;
  auto* inst = static_cast<trtllm::Instance*>(state);
  if (inst != nullptr) {
    inst->Stop();
    delete inst;
  }
  return nullptr;
}

TRITON_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* instance,
                                                                             TRITONBACKEND_Request** requests,
                                                                             const uint32_t request_count) {
  void* state = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(instance, &state);
  if (err != nullptr) return err;
  static_cast<trtllm::Instance*>(state)->Execute(requests, request_count);
  return nullptr;
}

}  // extern "C"
