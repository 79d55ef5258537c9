// Kernel harness for the float chunk kernels without Python: builds one ISA variant of the core
// (benches/kernel_harness/build.sh SRC_ROOT OUT_BINARY baseline|avx2|avx512), then
// `OUT f32|f64|f16|bf16 lanes|runs|nchw GIB REPEAT` (nchw: C=channels, HW=values per run) prints GB/s of bench_core's read loop and of
// Reducer<T> at threads=1 (THREADS=n: n) on a huge-page buffer (thread CPU time, best of REPEAT), a hash of the
// output states (variants must agree), and with REF=1 (MEAN=, SD=) the m2/mean error against a
// long double two-pass. A tool for kernel work, not part of the build or the tests.
// Kernel harness: one thread, CPU-time clock, read loop vs Reducer<T> on a huge-page buffer.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>
#include <omp.h>
#include <immintrin.h>
#include <sys/mman.h>
#include <time.h>
#include <cstdio>
#include <cstdlib>
uint64_t read_loop(const unsigned char* p, int64_t bytes);
__attribute__((target("f16c"))) static uint16_t to_half(float f) { return _cvtss_sh(f, 0); }
#define FM_DO_PRAGMA(x) _Pragma(#x)
#define FM_GCC_TARGET(t) FM_DO_PRAGMA(GCC target(t))
#if defined(FM_ISA_TARGET)
#pragma GCC push_options
FM_GCC_TARGET(FM_ISA_TARGET)
#endif
#include "fastmoments/reduce.hpp"
#if defined(FM_ISA_TARGET)
#pragma GCC pop_options
#endif
using namespace fastmoments;
// THREADS=n (default 1): Reducer and read loop on n threads, timed by the wall clock (one thread:
// the thread's CPU time).
static const int kThreads = getenv("THREADS") ? atoi(getenv("THREADS")) : 1;
static double tcpu() {
    timespec t;
    clock_gettime(kThreads > 1 ? CLOCK_MONOTONIC : CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
// The read loop over [p, p + nb) on kThreads threads, each over its own contiguous share.
static uint64_t read_all(const unsigned char* p, size_t nb) {
    if (kThreads == 1) return read_loop(p, nb);
    uint64_t total = 0;
    const size_t share = nb / kThreads / 4096 * 4096;
#pragma omp parallel for num_threads(kThreads) reduction(+ : total)
    for (int t = 0; t < kThreads; ++t)
        total += read_loop(p + t * share, t == kThreads - 1 ? nb - t * share : share);
    return total;
}

template <class T>
double run_fm(const char* p, const std::vector<int64_t>& shape, const std::vector<bool>& keepv, std::vector<MomentState>& out) {
    std::vector<int64_t> strides(shape.size());
    int64_t s = sizeof(T);
    for (size_t i = shape.size(); i-- > 0;) { strides[i] = s; s *= shape[i]; }
    bool keep[8]; for (size_t i = 0; i < shape.size(); ++i) keep[i] = keepv[i];
    Plan plan = FM_ISA_NAMESPACE::make_plan((int)shape.size(), shape.data(), strides.data(), keep);
    out.assign(plan.out_size, MomentState{});
    ReduceOptions opt; opt.threads = kThreads;
    double t0 = tcpu();
    FM_ISA_NAMESPACE::Reducer<T, false>(p, plan).run(out.data(), opt);
    return tcpu() - t0;
}

template <class T>
double run_int(const char* p, size_t nb, const std::string& mode, std::vector<MomentState>& out) {
    const int64_t n = (int64_t)(nb / sizeof(T));
    const int64_t w = sizeof(T) == 8 ? 64 : 256;
    if (mode == "lanes") return run_fm<T>(p, {n / w, w}, {false, true}, out);
    if (mode == "runs") return run_fm<T>(p, {n / w, w}, {false, false}, out);
    if (mode == "rgb") return run_fm<T>(p, {n / (224 * 224 * 3), 224, 224, 3}, {false, false, false, true}, out);
    if (mode == "rgbruns") return run_fm<T>(p, {n / (224 * 224 * 3), 224, 224, 3}, {false, false, false, false}, out);
    if (mode == "jpeg") {  // (1,512,512,4) axis=-1, hot in cache: 64 passes over one 1 MiB image
        double t = 0;
        for (size_t o = 0; o < nb; o += 512 * 512 * 4) t += run_fm<T>(p, {1, 512, 512, 4}, {false, false, false, true}, out);
        return t;
    }
    throw std::runtime_error("mode");
}

int main(int argc, char** argv) {
    std::string dt = argv[1], mode = argv[2];
    double gib = argc > 3 ? atof(argv[3]) : 0.5;
    int rep = argc > 4 ? atoi(argv[4]) : 5;
    const bool isint = dt[0] == 'u' || dt[0] == 'i';
    size_t es = isint ? (dt == "u8" || dt == "i8" ? 1 : dt == "i16" ? 2 : dt == "i32" ? 4 : 8)
                      : dt == "f32" ? 4 : dt == "f64" ? 8 : 2;
    size_t nb = (size_t)(gib * (1 << 30));
    nb = mode == "nchw" ? nb / (64 * 128 * 128 * 8) * (64 * 128 * 128 * 8)
       : mode == "rgb" || mode == "rgbruns" ? nb / (224 * 224 * 3) * (224 * 224 * 3)
       : mode == "jpeg" ? 64 * 512 * 512 * 4 : nb / 4096 * 4096;
    char* buf = (char*)aligned_alloc(1 << 21, (nb + (1 << 21)) / (1 << 21) * (1 << 21));
    madvise(buf, nb, MADV_HUGEPAGE);
    size_t n = nb / es;
    std::mt19937_64 g(1);
    double MEAN = getenv("MEAN") ? atof(getenv("MEAN")) : 1000, SD = getenv("SD") ? atof(getenv("SD")) : 10;
    std::normal_distribution<double> nd(MEAN, SD);
    if (isint) {  // uniform over the type (int64: [-1000, 1000)), as bench_core
        for (size_t i = 0; i < n; ++i) {
            uint64_t r = g();
            if (es == 8) r = (uint64_t)((int64_t)(r % 2000) - 1000);
            memcpy(buf + i * es, &r, es);
        }
    } else
    for (size_t i = 0; i < n; ++i) {
        double dv = nd(g); float f = (float)dv;
        if (es == 4) ((float*)buf)[i] = f;
        else if (es == 8) ((double*)buf)[i] = dv;
        else if (dt == "f16") ((uint16_t*)buf)[i] = to_half(f);
        else { uint32_t u; memcpy(&u, &f, 4); ((uint16_t*)buf)[i] = u >> 16; }
    }
    std::vector<int64_t> shape; std::vector<bool> keep;
    if (mode == "lanes") shape = {(int64_t)(n / 256), 256}, keep = {false, true};
    else if (mode == "runs") shape = {(int64_t)(n / 256), 256}, keep = {false, false};
    else {  // nchw: (N, C, H, W) axis=1, C = 64 or C=..., H*W = 128*128 or HW=...
        const int64_t hw = getenv("HW") ? atoll(getenv("HW")) : 128 * 128;
        const int64_t ch = getenv("C") ? atoll(getenv("C")) : 64;
        shape = {(int64_t)(n / (ch * hw)), ch, hw}, keep = {false, true, false};
    }
    double best_r = 1e9, best_k = 1e9; volatile uint64_t sink = 0;
    std::vector<MomentState> out;
    for (int r = 0; r < rep; ++r) {
        double t0 = tcpu();
        if (mode == "jpeg") for (size_t o = 0; o < nb; o += 512 * 512 * 4) sink += read_loop((const unsigned char*)buf, 512 * 512 * 4);
        else sink += read_all((const unsigned char*)buf, nb);
        best_r = std::min(best_r, tcpu() - t0);
        double t;
        if (dt == "f32") t = run_fm<float>(buf, shape, keep, out);
        else if (dt == "f64") t = run_fm<double>(buf, shape, keep, out);
        else if (dt == "f16") t = run_fm<half_bits>(buf, shape, keep, out);
        else if (dt == "bf16") t = run_fm<bfloat16_bits>(buf, shape, keep, out);
        else if (dt == "u8") t = run_int<uint8_t>(buf, nb, mode, out);
        else if (dt == "i8") t = run_int<int8_t>(buf, nb, mode, out);
        else if (dt == "i16") t = run_int<int16_t>(buf, nb, mode, out);
        else if (dt == "i32") t = run_int<int32_t>(buf, nb, mode, out);
        else t = run_int<int64_t>(buf, nb, mode, out);
        best_k = std::min(best_k, t);
    }
    double m = 0; for (auto& s : out) m += s.m2;
    uint64_t hsh = 1469598103934665603ull;
    for (auto& s : out) { uint64_t b[3]; memcpy(&b[0], &s.mean, 8); memcpy(&b[1], &s.m2, 8); memcpy(&b[2], &s.mean_lo, 8); for (auto v : b) hsh = (hsh ^ v) * 1099511628211ull; }
    printf("hash %016llx ", (unsigned long long)hsh);
    if (getenv("REF") && !isint) {
        auto val = [&](size_t i) -> long double { if (es == 4) return ((float*)buf)[i]; if (es == 8) return ((double*)buf)[i];
            uint16_t h = ((uint16_t*)buf)[i]; if (dt == "bf16") { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
            return (long double)fastmoments::half_to_float(h); };
        size_t no = out.size(); std::vector<long double> s1(no, 0), s2(no, 0); std::vector<size_t> cn(no, 0);
        auto oi = [&](size_t i) -> size_t { if (mode == "lanes") return i % 256; if (mode == "runs") return 0; return (i / (128 * 128)) % 64; };
        for (size_t i = 0; i < n; ++i) { s1[oi(i)] += val(i); cn[oi(i)]++; }
        for (size_t o = 0; o < no; ++o) s1[o] /= cn[o];
        for (size_t i = 0; i < n; ++i) { long double d = val(i) - s1[oi(i)]; s2[oi(i)] += d * d; }
        double worst = 0, worstm = 0;
        for (size_t o = 0; o < no; ++o) { worst = std::max(worst, (double)fabsl((out[o].m2 - s2[o]) / s2[o])); worstm = std::max(worstm, (double)fabsl(((long double)out[o].mean + out[o].mean_lo - s1[o]) / s1[o])); }
        printf("m2 relerr %.2e mean relerr %.2e ", worst, worstm);
    }
    printf("%s %s %s read %.2f GB/s fm %.2f GB/s ratio %.3f  (chk %.6g %.9g)\n", ISA_NAME, dt.c_str(), mode.c_str(), nb / best_r / 1e9, nb / best_k / 1e9, best_r / best_k, m, out[0].mean);
}
