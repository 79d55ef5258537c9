// The few wide-integer operations the exact integer path needs: a 192-bit sum of squares of
// 64-bit integers, and the signed 256-bit difference that turns exact sums into M2.
#pragma once
#include <cmath>
#include <cstdint>

#include "config.hpp"

namespace fastmoments {

using u128 = unsigned __int128;
using i128 = __int128;

// In the ISA namespace (config.hpp), as every inline function: one copy per variant. Outside it,
// the linker kept one variant's members for all (an ODR hazard) and the uint8 lanes path built its
// IntegerSums vectors through an out-of-line UInt192 constructor called via the PLT.
inline namespace FM_ISA_NAMESPACE {

// Non-negative sum of up to 2^64 values below 2^128 (squares of 64-bit integers).
struct UInt192 {
    u128 lo = 0;
    uint64_t hi = 0;

    UInt192() = default;
    explicit UInt192(u128 v) : lo(v) {}

    void add(u128 v) {
        hi += __builtin_add_overflow(lo, v, &lo);  // carry out of the low 128 bits
    }
    void add(const UInt192& o) {
        add(o.lo);
        hi += o.hi;
    }
};

// Two's-complement 256-bit integer, little-endian 64-bit limbs.
struct Int256 {
    uint64_t w[4] = {0, 0, 0, 0};

    static Int256 from(const UInt192& v) {
        Int256 r;
        r.w[0] = static_cast<uint64_t>(v.lo);
        r.w[1] = static_cast<uint64_t>(v.lo >> 64);
        r.w[2] = v.hi;
        return r;
    }

    // Exact a * b.
    static Int256 product(i128 a, i128 b) {
        const bool negative = (a < 0) != (b < 0);
        const u128 ua = a < 0 ? u128(0) - static_cast<u128>(a) : static_cast<u128>(a);
        const u128 ub = b < 0 ? u128(0) - static_cast<u128>(b) : static_cast<u128>(b);
        const uint64_t a0 = static_cast<uint64_t>(ua), a1 = static_cast<uint64_t>(ua >> 64);
        const uint64_t b0 = static_cast<uint64_t>(ub), b1 = static_cast<uint64_t>(ub >> 64);
        const u128 p00 = u128(a0) * b0, p01 = u128(a0) * b1, p10 = u128(a1) * b0, p11 = u128(a1) * b1;
        Int256 r;
        r.w[0] = static_cast<uint64_t>(p00);
        const u128 mid = (p00 >> 64) + static_cast<uint64_t>(p01) + static_cast<uint64_t>(p10);
        r.w[1] = static_cast<uint64_t>(mid);
        const u128 high = (mid >> 64) + (p01 >> 64) + (p10 >> 64) + static_cast<uint64_t>(p11);
        r.w[2] = static_cast<uint64_t>(high);
        r.w[3] = static_cast<uint64_t>(high >> 64) + static_cast<uint64_t>(p11 >> 64);
        return negative ? r.negated() : r;
    }

    Int256 operator-(const Int256& o) const {
        Int256 r;
        uint64_t borrow = 0;
        for (int i = 0; i < 4; ++i) {
            const uint64_t d = w[i] - o.w[i];
            const uint64_t b1 = w[i] < o.w[i];
            r.w[i] = d - borrow;
            borrow = b1 | (d < borrow);
        }
        return r;
    }

    Int256 negated() const {
        Int256 r;
        uint64_t carry = 1;
        for (int i = 0; i < 4; ++i) {
            r.w[i] = ~w[i] + carry;
            carry = carry && r.w[i] == 0;
        }
        return r;
    }

    bool negative() const { return (w[3] >> 63) != 0; }

    // Correctly rounded (round to nearest even) value.
    double to_double() const {
        if (negative()) return -negated().to_double();
        int top = 3;
        while (top > 0 && w[top] == 0) --top;
        if (top <= 1) return static_cast<double>((u128(w[1]) << 64) | w[0]);
        // The two top limbs hold at least 65 significant bits, so any lower bit can only act as
        // a sticky bit below the rounding position.
        u128 window = (u128(w[top]) << 64) | w[top - 1];
        bool sticky = false;
        for (int i = 0; i < top - 1; ++i) sticky = sticky || w[i] != 0;
        if (sticky) window |= 1;
        return std::ldexp(static_cast<double>(window), 64 * (top - 1));
    }
};

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
