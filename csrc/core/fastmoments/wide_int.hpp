// The few wide-integer operations the exact integer paths need: a 192-bit sum of squares of
// 64-bit integers, and signed 256-bit sums, products and one rounded division that turn exact
// sums (unweighted, or with integer weights) into M2.
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

    static Int256 of(i128 v) {
        Int256 r;
        r.w[0] = static_cast<uint64_t>(v);
        r.w[1] = static_cast<uint64_t>(static_cast<u128>(v) >> 64);
        r.w[2] = r.w[3] = v < 0 ? ~uint64_t{0} : 0;
        return r;
    }
    static Int256 of_unsigned(u128 v) {
        Int256 r;
        r.w[0] = static_cast<uint64_t>(v);
        r.w[1] = static_cast<uint64_t>(v >> 64);
        return r;
    }

    // Exact a * b of two non-negative numbers below 2^128 and 2^64 (a 64-bit square times a
    // weight: below 2^192).
    static Int256 product_unsigned(u128 a, uint64_t b) {
        const u128 lo = u128(static_cast<uint64_t>(a)) * b;
        const u128 hi = u128(static_cast<uint64_t>(a >> 64)) * b;
        Int256 r;
        r.w[0] = static_cast<uint64_t>(lo);
        const u128 mid = (lo >> 64) + static_cast<uint64_t>(hi);
        r.w[1] = static_cast<uint64_t>(mid);
        r.w[2] = static_cast<uint64_t>(mid >> 64) + static_cast<uint64_t>(hi >> 64);
        return r;
    }

    Int256 operator+(const Int256& o) const {
        Int256 r;
        uint64_t carry = 0;
        for (int i = 0; i < 4; ++i) {
            const uint64_t s = w[i] + o.w[i];
            const uint64_t c1 = s < w[i];
            r.w[i] = s + carry;
            carry = c1 | (r.w[i] < s);
        }
        return r;
    }
    Int256& operator+=(const Int256& o) { return *this = *this + o; }

    // this * b modulo 2^256: the two's-complement product, exact whenever the true product fits
    // in 256 bits (whatever the intermediate terms).
    Int256 times(i128 b) const {
        const Int256 bb = of(b);
        Int256 r;
        for (int i = 0; i < 4; ++i) {
            uint64_t carry = 0;
            for (int j = 0; i + j < 4; ++j) {
                const u128 t = u128(w[i]) * bb.w[j] + r.w[i + j] + carry;
                r.w[i + j] = static_cast<uint64_t>(t);
                carry = static_cast<uint64_t>(t >> 64);
            }
        }
        return r;
    }

    bool fits_i128() const {  // the top 129 bits all equal the sign bit
        const uint64_t sign = negative() ? ~uint64_t{0} : 0;
        return w[3] == sign && w[2] == sign && ((w[1] >> 63) != 0) == (sign != 0);
    }
    i128 low_i128() const { return static_cast<i128>((u128(w[1]) << 64) | w[0]); }

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

// a = q * d + r with q the quotient rounded to nearest (ties towards zero) and |r| <= d/2,
// for d > 0 below 2^126 and |q| < 2^126 (a mean: the caller's sums guarantee it). Rounded
// division of wide sums happens once per output, in a finish: a bitwise long division is enough.
inline void divide_rounded(const Int256& a, u128 d, i128& q, i128& r) {
    const bool negative = a.negative();
    const Int256 mag = negative ? a.negated() : a;
    u128 uq = 0, rem = 0;
    if (mag.w[3] == 0 && mag.w[2] == 0) {
        const u128 v = (u128(mag.w[1]) << 64) | mag.w[0];
        uq = v / d;
        rem = v % d;
    } else {
        for (int bit = 255; bit >= 0; --bit) {  // rem < d < 2^126: rem * 2 + 1 fits
            rem = (rem << 1) | ((mag.w[bit / 64] >> (bit % 64)) & 1);
            if (rem >= d) {
                rem -= d;
                if (bit < 128) uq |= u128(1) << bit;
            }
        }
    }
    i128 sq = static_cast<i128>(uq), sr = static_cast<i128>(rem);
    if (2 * rem > d) sq += 1, sr -= static_cast<i128>(d);
    q = negative ? -sq : sq;
    r = negative ? -sr : sr;
}

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
