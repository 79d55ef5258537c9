// The read loop every benchmark ratio is taken against: the sum of the 64-bit words of a buffer
// in eight independent accumulators, the least work per byte that still reads every byte (and
// whose result the compiler cannot drop). One block of words [w0, w1); callers split a buffer
// into blocks of kReadBlockWords and spread them over threads.
#pragma once
#include <cstdint>
#include <cstring>

namespace fastmoments {

constexpr int64_t kReadBlockWords = int64_t(1) << 16;

inline uint64_t read_block(const unsigned char* p, int64_t w0, int64_t w1) {
    uint64_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t w = w0;
    for (; w + 8 <= w1; w += 8)
        for (int k = 0; k < 8; ++k) {
            uint64_t v;
            std::memcpy(&v, p + 8 * (w + k), 8);
            lane[k] += v;
        }
    for (; w < w1; ++w) {
        uint64_t v;
        std::memcpy(&v, p + 8 * w, 8);
        lane[0] += v;
    }
    uint64_t total = 0;
    for (int k = 0; k < 8; ++k) total += lane[k];
    return total;
}

}  // namespace fastmoments
