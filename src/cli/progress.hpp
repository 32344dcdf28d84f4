// qemu-img's progress line: "    (42.00/100%)\r", redrawn when the percentage moves.
#pragma once
#include <cstdint>
#include <cstdio>

namespace netblk::cli {

class Progress {
 public:
  Progress(bool enabled, std::uint64_t total) : enabled_(enabled), total_(total ? total : 1) { draw(0); }
  void add(std::uint64_t bytes) {
    done_ += bytes;
    draw(done_);
  }
  void finish() {
    if (!enabled_) return;
    if (last_ != 10000) std::printf("    (100.00/100%%)\r");
    std::printf("\n");
    std::fflush(stdout);
  }

 private:
  void draw(std::uint64_t done) {
    if (!enabled_) return;
    int permyriad = static_cast<int>(done * 10000 / total_);
    if (permyriad / 100 == last_ / 100 && last_ >= 0) return;
    last_ = permyriad;
    std::printf("    (%d.%02d/100%%)\r", permyriad / 100, permyriad % 100);
    std::fflush(stdout);
  }
  bool enabled_;
  std::uint64_t total_;
  std::uint64_t done_ = 0;
  int last_ = -1;
};

}  // namespace netblk::cli
