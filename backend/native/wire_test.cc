// Tests of the backend's side of the wire (wire.h). Without arguments: self-checks (ctest). With
// `decode FILE`: prints the records of a RESPONSES payload, one per line; with `requests FILE`: writes a
// REQUESTS payload. tests/server/test_native_wire.py runs both against backend/wire.py.
#include "wire.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

using namespace trtllm;

namespace {

int failures = 0;
#define CHECK(cond)                                                  \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::cerr << __FILE__ << ":" << __LINE__ << ": " #cond "\n";   \
      ++failures;                                                    \
    }                                                                \
  } while (0)

std::string OneRecord(uint32_t flags) {
  std::string s;
  Writer w(&s);
  w.Put<uint32_t>(1);
  w.Put<uint64_t>(42);
  w.Put<int32_t>(3);
  w.Put<uint32_t>(flags);
  w.Put<uint32_t>(2);  // beams
  w.Put<uint32_t>(2);  // width
  for (int32_t t : {5, 6, 7, 8}) w.Put<int32_t>(t);
  w.Put<int32_t>(2);
  w.Put<int32_t>(1);
  if (flags & kLogProbs) {
    w.Put<uint32_t>(1);
    for (float f : {-1.0f, -2.0f, -0.5f, -0.25f}) w.Put<float>(f);
  }
  if (flags & kText) {
    for (const char* t : {"ab", "\xc3\xa9"}) {
      w.Put<uint32_t>(static_cast<uint32_t>(std::strlen(t)));
      w.Bytes(t, std::strlen(t));
    }
  }
  if (flags & kPerf) {
    for (uint32_t v : {4u, 2u, 6u}) w.Put<uint32_t>(v);
    for (int64_t v : {int64_t{1} << 60, int64_t{11}, int64_t{12}, int64_t{13}}) w.Put<int64_t>(v);
  }
  if (flags & kError) {
    w.Put<uint32_t>(3);
    w.Put<uint32_t>(3);
    w.Bytes("bad", 3);
  }
  return s;
}

void SelfTest() {
  std::vector<Record> recs;
  std::string err;
  CHECK(ParseRecords(OneRecord(kFinal | kLogProbs | kError), &recs, &err));
  CHECK(recs.size() == 1);
  const Record& r = recs[0];
  CHECK(r.slot == 42 && r.batch_index == 3 && r.beams == 2 && r.width == 2);
  CHECK((r.tokens == std::vector<int32_t>{5, 6, 7, 8}));
  CHECK((r.seq_lens == std::vector<int32_t>{2, 1}));
  CHECK(r.log_prob_width == 1 && r.cum_log_probs[1] == -2.0f && r.log_probs[1] == -0.25f);
  CHECK(r.error_code == 3 && r.error == "bad");
  CHECK(ParseRecords(OneRecord(kText), &recs, &err));
  CHECK((recs[0].texts == std::vector<std::string>{"ab", "\xc3\xa9"}));
  CHECK(ParseRecords(OneRecord(kText | kPerf | kError), &recs, &err));
  CHECK(recs[0].kv_blocks[0] == 4 && recs[0].kv_blocks[2] == 6 && recs[0].times_ns[0] == int64_t{1} << 60);
  CHECK(recs[0].times_ns[3] == 13 && recs[0].error == "bad");

  // Every truncation is refused, never read past the end.
  const std::string whole = OneRecord(kLogProbs | kText | kPerf | kError);
  for (size_t n = 0; n < whole.size(); ++n) CHECK(!ParseRecords(whole.substr(0, n), &recs, &err));
  CHECK(!ParseRecords(whole + "x", &recs, &err));
  // A header claiming more tokens than the frame holds is refused before allocating them.
  std::string huge = OneRecord(0);
  const uint32_t big = 0x7fffffff;
  std::memcpy(&huge[4 + 8 + 4 + 4], &big, 4);
  CHECK(!ParseRecords(huge, &recs, &err));

  CHECK((Split("a=1\nb=2", '\n') == std::vector<std::string>{"a=1", "b=2"}));
  CHECK((Split("", '|') == std::vector<std::string>{""}));
}

int Decode(const char* path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  std::vector<Record> recs;
  std::string err;
  if (!ParseRecords(ss.str(), &recs, &err)) {
    std::cout << "error " << err << "\n";
    return 1;
  }
  for (const Record& r : recs) {
    std::cout << r.slot << " " << r.batch_index << " " << r.flags << " " << r.beams << " " << r.width << " |";
    for (int32_t t : r.tokens) std::cout << " " << t;
    std::cout << " |";
    for (int32_t t : r.seq_lens) std::cout << " " << t;
    std::cout << " |";
    for (float v : r.cum_log_probs) std::cout << " " << v;
    std::cout << " |";
    for (float v : r.log_probs) std::cout << " " << v;
    std::cout << " |";
    for (const std::string& t : r.texts) std::cout << " " << t;
    std::cout << " | " << r.error_code << " " << r.error;
    if (r.flags & kPerf) {
      std::cout << " | perf";
      for (uint32_t v : r.kv_blocks) std::cout << " " << v;
      for (int64_t v : r.times_ns) std::cout << " " << v;
    }
    std::cout << "\n";
  }
  return 0;
}

int Requests(const char* path) {
  std::string s;
  Writer w(&s);
  w.Put<uint32_t>(1);
  w.Put<uint64_t>(7);
  w.Put<uint32_t>(2);  // front
  w.Put<uint32_t>(3);
  w.Bytes("abc", 3);
  w.Put<uint32_t>(2);
  const int32_t ids[4] = {1, 2, 3, 4};
  const int64_t ids_dims[2] = {1, 4};
  // Two buffers for one input: Triton may hand an input over in pieces.
  PutInput(&w, "input_ids", 8, ids_dims, 2, {{ids, 8}, {ids + 2, 8}});
  const char text[] = "\x02\x00\x00\x00hi";
  const int64_t text_dims[2] = {1, 1};
  PutInput(&w, "stop_words", 13, text_dims, 2, {{text, 6}});
  std::ofstream(path, std::ios::binary) << s;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "decode") return Decode(argv[2]);
  if (argc == 3 && std::string(argv[1]) == "requests") return Requests(argv[2]);
  SelfTest();
  if (failures == 0) std::cout << "wire_test: all checks passed\n";
  return failures == 0 ? 0 : 1;
}
