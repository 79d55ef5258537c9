#include <cstdint>
#include <cstring>
#include <algorithm>
uint64_t read_loop(const unsigned char* p, int64_t bytes) {
    const int64_t words = bytes / 8;
    uint64_t total = 0;
    const int64_t block = 1 << 16;
    const int64_t nblocks = (words + block - 1) / block;
    for (int64_t b = 0; b < nblocks; ++b) {
        uint64_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const int64_t w1 = std::min(words, (b + 1) * block);
        int64_t w = b * block;
        for (; w + 8 <= w1; w += 8)
            for (int k = 0; k < 8; ++k) {
                uint64_t v;
                std::memcpy(&v, p + 8 * (w + k), 8);
                lane[k] += v;
            }
        for (int k = 0; k < 8; ++k) total += lane[k];
    }
    return total;
}
