// Element types the kernels read, and how each one is turned into a number.
#pragma once
#include <cstdint>
#include <cstring>

#include "config.hpp"

namespace fastmoments {

enum class DType : int {
    Bool = 0, Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64,
    Float16, BFloat16, Float32, Float64,
};

inline const char* dtype_name(DType t) {
    switch (t) {
        case DType::Bool: return "bool";
        case DType::Int8: return "int8";
        case DType::Int16: return "int16";
        case DType::Int32: return "int32";
        case DType::Int64: return "int64";
        case DType::UInt8: return "uint8";
        case DType::UInt16: return "uint16";
        case DType::UInt32: return "uint32";
        case DType::UInt64: return "uint64";
        case DType::Float16: return "float16";
        case DType::BFloat16: return "bfloat16";
        case DType::Float32: return "float32";
        case DType::Float64: return "float64";
    }
    return "unknown";
}

// NumPy's kind letter of each type: 'b' bool, 'i' signed, 'u' unsigned, 'f' floating point.
inline char dtype_kind(DType t) {
    if (t == DType::Bool) return 'b';
    if (t >= DType::Int8 && t <= DType::Int64) return 'i';
    if (t >= DType::UInt8 && t <= DType::UInt64) return 'u';
    return 'f';
}

inline int dtype_itemsize(DType t) {
    switch (t) {
        case DType::Bool: case DType::Int8: case DType::UInt8: return 1;
        case DType::Int16: case DType::UInt16: case DType::Float16: case DType::BFloat16: return 2;
        case DType::Int32: case DType::UInt32: case DType::Float32: return 4;
        default: return 8;
    }
}

// Storage wrappers for the two 16-bit float formats (no arithmetic, only conversion).
struct half_bits { uint16_t bits; };
struct bfloat16_bits { uint16_t bits; };

inline namespace FM_ISA_NAMESPACE {

FM_HOST_DEVICE inline float bits_to_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

FM_HOST_DEVICE inline uint32_t float_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// IEEE binary16 -> binary32, exact for every input (normals, subnormals, inf, NaN). Branch-free so
// loops over it vectorise: rescaling the exponent by 2^112 maps normals and subnormals alike.
FM_HOST_DEVICE inline float half_to_float(uint16_t h) {
    const uint32_t magnitude = static_cast<uint32_t>(h & 0x7fffu) << 13;
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    float f = bits_to_float(magnitude) * 5.192296858534828e+33f;  // 2^112
    uint32_t u = float_to_bits(f);
    if ((h & 0x7c00u) == 0x7c00u) u |= 0x7f800000u;  // inf / NaN keep their payload
    return bits_to_float(u | sign);
}

FM_HOST_DEVICE inline float bfloat16_to_float(uint16_t h) {
    return bits_to_float(static_cast<uint32_t>(h) << 16);
}

// A T at any address (strided or unaligned storage).
template <class T>
inline T load_at(const char* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

}  // namespace FM_ISA_NAMESPACE

// Maps a storage type to the kernel family and to its widened value.
template <class T> struct element_traits;

#define FM_INTEGER_TRAITS(T, WIDE)                                        \
    template <> struct element_traits<T> {                                \
        static constexpr bool exact_integer = true;                       \
        using wide = WIDE;                                                \
        FM_HOST_DEVICE static wide load(T v) { return static_cast<wide>(v); } \
    };
FM_INTEGER_TRAITS(bool, int64_t)
FM_INTEGER_TRAITS(int8_t, int64_t)
FM_INTEGER_TRAITS(uint8_t, int64_t)
FM_INTEGER_TRAITS(int16_t, int64_t)
FM_INTEGER_TRAITS(uint16_t, int64_t)
FM_INTEGER_TRAITS(int32_t, int64_t)
FM_INTEGER_TRAITS(uint32_t, int64_t)
FM_INTEGER_TRAITS(int64_t, int64_t)
FM_INTEGER_TRAITS(uint64_t, uint64_t)
#undef FM_INTEGER_TRAITS

#define FM_FLOAT_TRAITS(T, WORK, EXPR)                                    \
    template <> struct element_traits<T> {                                \
        static constexpr bool exact_integer = false;                      \
        using work = WORK; /* type the shift is subtracted in */          \
        FM_HOST_DEVICE static work load(T v) { return EXPR; }             \
    };
FM_FLOAT_TRAITS(float, float, v)
FM_FLOAT_TRAITS(double, double, v)
FM_FLOAT_TRAITS(half_bits, float, half_to_float(v.bits))
FM_FLOAT_TRAITS(bfloat16_bits, float, bfloat16_to_float(v.bits))
#undef FM_FLOAT_TRAITS

// Calls f(T{}) with the storage type for a runtime dtype.
template <class F>
inline auto visit_dtype(DType t, F&& f) {
    switch (t) {
        case DType::Bool: return f(bool{});
        case DType::Int8: return f(int8_t{});
        case DType::Int16: return f(int16_t{});
        case DType::Int32: return f(int32_t{});
        case DType::Int64: return f(int64_t{});
        case DType::UInt8: return f(uint8_t{});
        case DType::UInt16: return f(uint16_t{});
        case DType::UInt32: return f(uint32_t{});
        case DType::UInt64: return f(uint64_t{});
        case DType::Float16: return f(half_bits{});
        case DType::BFloat16: return f(bfloat16_bits{});
        case DType::Float32: return f(float{});
        case DType::Float64: return f(double{});
    }
    return f(double{});
}

}  // namespace fastmoments
