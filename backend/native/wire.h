// The backend side of the wire to the engine process; the format is described in backend/wire.py.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace trtllm {

// Frame types (backend/wire.py).
enum FrameType : uint8_t {
  kConfig = 1,
  kRequests = 2,
  kCancel = 3,
  kShutdown = 4,
  kFront = 5,
  kReady = 11,
  kResponses = 12,
  kMetrics = 13,
  kFatal = 14,
};

// Response record flags.
enum RecordFlag : uint32_t {
  kFinal = 1,
  kStream = 2,
  kRowEnd = 4,
  kError = 8,
  kLogProbs = 16,
  kEmpty = 32,
  kText = 64,
  kPerf = 128,
};

// Appends little-endian values (the only byte order of the machines we serve on).
class Writer {
 public:
  explicit Writer(std::string* out) : out_(out) {}
  template <typename T>
  void Put(T v) {
    out_->append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void Bytes(const void* p, size_t n) { out_->append(static_cast<const char*>(p), n); }

 private:
  std::string* out_;
};

// Bounds-checked reads; any read past the end sets failed() and yields zeros.
class Reader {
 public:
  Reader(const char* p, size_t n) : p_(p), n_(n) {}
  template <typename T>
  T Get() {
    T v{};
    if (!Need(sizeof(T))) return v;
    std::memcpy(&v, p_ + off_, sizeof(T));
    off_ += sizeof(T);
    return v;
  }
  template <typename T>
  void Array(std::vector<T>* out, size_t count) {
    out->resize(count);
    if (count == 0 || !Need(count * sizeof(T))) return;
    std::memcpy(out->data(), p_ + off_, count * sizeof(T));
    off_ += count * sizeof(T);
  }
  std::string String(size_t n) {
    if (!Need(n)) return {};
    std::string s(p_ + off_, n);
    off_ += n;
    return s;
  }
  bool failed() const { return failed_; }
  bool done() const { return off_ == n_; }

 private:
  bool Need(size_t k) {
    if (failed_ || k > n_ - off_) {
      failed_ = true;
      return false;
    }
    return true;
  }
  const char* p_;
  size_t n_;
  size_t off_ = 0;
  bool failed_ = false;
};

struct Record {
  uint64_t slot = 0;
  int32_t batch_index = 0;
  uint32_t flags = 0;
  uint32_t beams = 0;
  uint32_t width = 0;                // tokens per beam
  std::vector<int32_t> tokens;       // [beams * width]
  std::vector<int32_t> seq_lens;     // [beams]
  uint32_t log_prob_width = 0;
  std::vector<float> cum_log_probs;  // [beams] (LOGPROBS)
  std::vector<float> log_probs;      // [beams * log_prob_width] (LOGPROBS)
  std::vector<std::string> texts;    // [beams] (TEXT)
  // PERF: kv_cache_alloc_new_blocks, kv_cache_reused_blocks, kv_cache_alloc_total_blocks
  uint32_t kv_blocks[3] = {0, 0, 0};
  // PERF: arrival, first scheduled, first token, last token (ns since the epoch)
  int64_t times_ns[4] = {0, 0, 0, 0};
  uint32_t error_code = 0;
  std::string error;
};

// A RESPONSES payload -> records; false (and `error`) when it is malformed.
inline bool ParseRecords(const std::string& body, std::vector<Record>* out, std::string* error) {
  Reader r(body.data(), body.size());
  const uint32_t n = r.Get<uint32_t>();
  out->clear();
  for (uint32_t i = 0; i < n && !r.failed(); ++i) {
    Record rec;
    rec.slot = r.Get<uint64_t>();
    rec.batch_index = r.Get<int32_t>();
    rec.flags = r.Get<uint32_t>();
    rec.beams = r.Get<uint32_t>();
    rec.width = r.Get<uint32_t>();
    if (static_cast<uint64_t>(rec.beams) * rec.width > body.size()) {
      *error = "record larger than its frame";
      return false;
    }
    r.Array(&rec.tokens, static_cast<size_t>(rec.beams) * rec.width);
    r.Array(&rec.seq_lens, rec.beams);
    if (rec.flags & kLogProbs) {
      rec.log_prob_width = r.Get<uint32_t>();
      if (static_cast<uint64_t>(rec.beams) * rec.log_prob_width > body.size()) {
        *error = "log probs larger than their frame";
        return false;
      }
      r.Array(&rec.cum_log_probs, rec.beams);
      r.Array(&rec.log_probs, static_cast<size_t>(rec.beams) * rec.log_prob_width);
    }
    if (rec.flags & kText) {
      if (rec.beams > body.size()) {
        *error = "texts larger than their frame";
        return false;
      }
      for (uint32_t b = 0; b < rec.beams && !r.failed(); ++b) rec.texts.push_back(r.String(r.Get<uint32_t>()));
    }
    if (rec.flags & kPerf) {
      for (uint32_t& v : rec.kv_blocks) v = r.Get<uint32_t>();
      for (int64_t& v : rec.times_ns) v = r.Get<int64_t>();
    }
    if (rec.flags & kError) {
      rec.error_code = r.Get<uint32_t>();
      rec.error = r.String(r.Get<uint32_t>());
    }
    out->push_back(std::move(rec));
  }
  if (r.failed() || !r.done()) {
    *error = r.failed() ? "truncated RESPONSES frame" : "trailing bytes after the records";
    return false;
  }
  return true;
}

// One input of a request, as the engine process reads it (backend/wire.py decode_requests).
inline void PutInput(Writer* w, const char* name, uint8_t dtype, const int64_t* dims, uint32_t ndims,
                     const std::vector<std::pair<const void*, uint64_t>>& buffers) {
  const uint16_t name_len = static_cast<uint16_t>(std::strlen(name));
  w->Put<uint16_t>(name_len);
  w->Bytes(name, name_len);
  w->Put<uint8_t>(dtype);
  w->Put<uint8_t>(static_cast<uint8_t>(ndims));
  for (uint32_t d = 0; d < ndims; ++d) w->Put<int64_t>(dims[d]);
  uint64_t total = 0;
  for (const auto& b : buffers) total += b.second;
  w->Put<uint64_t>(total);
  for (const auto& b : buffers) w->Bytes(b.first, b.second);
}

// READY / METRICS payloads are text; splits one on `sep`.
inline std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(sep, start);
    if (end == std::string::npos) end = s.size();
    parts.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

}  // namespace trtllm
