// Checked arithmetic for sizes that come from outside (file headers, shapes, piece plans): every
// product or sum that decides how much is allocated, mapped or read goes through these, so a size
// that would wrap is refused instead of walking past a buffer.
#pragma once
#include <cstdint>
#include <initializer_list>

namespace fastmoments {

// a * b into *out; false when it does not fit in int64 or an operand is negative.
inline bool checked_mul(int64_t a, int64_t b, int64_t* out) {
    return a >= 0 && b >= 0 && !__builtin_mul_overflow(a, b, out);
}

// a + b into *out; false when it does not fit in int64 or an operand is negative.
inline bool checked_add(int64_t a, int64_t b, int64_t* out) {
    return a >= 0 && b >= 0 && !__builtin_add_overflow(a, b, out);
}

// Product of [first, last) into *out; false on a negative entry or an overflow. As NumPy does for
// shapes, a zero does not excuse the other entries: their product must fit too.
template <class It>
bool checked_product(It first, It last, int64_t* out) {
    int64_t nonzero = 1;
    bool zero = false;
    for (; first != last; ++first) {
        const int64_t v = static_cast<int64_t>(*first);
        if (v < 0) return false;
        if (v == 0) zero = true;
        else if (!checked_mul(nonzero, v, &nonzero)) return false;
    }
    *out = zero ? 0 : nonzero;
    return true;
}

}  // namespace fastmoments
