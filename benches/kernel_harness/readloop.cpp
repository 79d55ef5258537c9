// The read loop of _core.read_bandwidth (fastmoments/read_loop.hpp), one thread, compiled apart
// from the harness so that the compiler sees neither side of the other.
#include <algorithm>
#include <cstdint>

#include "fastmoments/read_loop.hpp"

uint64_t read_loop(const unsigned char* p, int64_t bytes) {
    using namespace fastmoments;
    const int64_t words = bytes / 8;
    uint64_t total = 0;
    for (int64_t w = 0; w < words; w += kReadBlockWords)
        total += read_block(p, w, std::min(words, w + kReadBlockWords));
    return total;
}
