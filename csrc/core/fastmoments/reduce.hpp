// The driver of the CPU kernel: one pass over a strided array, per-output count/mean/m2, OpenMP
// threads over a fixed task grid. The chunk kernels live in float_chunks.hpp (float data: shifted
// float64 sums) and integer_sums.hpp (exact integer sums); the loop plan in layout.hpp.
//
// Determinism: values are read in fixed-size chunks; chunk states are merged with `combine` in a
// fixed order, tasks in a fixed order, so the result does not depend on the thread count
// (Schubert & Gertz 2018 for the parallel merge). Every buffer a worker needs is allocated before
// the parallel region: an out-of-memory is then a std::bad_alloc in the calling thread.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <type_traits>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include <vector>

#include "dtypes.hpp"
#include "float_chunks.hpp"
#include "integer_sums.hpp"
#include "float_env.hpp"
#include "layout.hpp"
#include "state.hpp"

namespace fastmoments {

enum class NanPolicy : int { Propagate = 0, Omit = 1 };
enum class Status : int { Ok = 0, Cancelled = 1 };

struct ReduceOptions {
    int threads = 1;
    NanPolicy nan_policy = NanPolicy::Propagate;
    // Called from one thread about every `poll_seconds` with (values done, values total);
    // returning false cancels the computation. Must not throw.
    std::function<bool(int64_t, int64_t)> poll;
    double poll_seconds = 0.1;
};

inline namespace FM_ISA_NAMESPACE {

// Run mode: values per chunk state (fixed: determinism). 32768 float32 values = 128 KiB: the
// per-chunk totals and merge cost 0.87 -> 1.03 of a huge-page read loop against 8192 (AVX-512).
constexpr int64_t kChunkValues = 32768;
// ... and 65536 for float16/bfloat16, whose runs are prefetched in software (FloatRun): 0.60-0.67
// of the read loop at 8192, 0.69-0.83 at 32768, 0.79-0.85 at 65536 (without the prefetch 32768
// had measured 0.31-0.34).
constexpr int64_t kHalfChunkValues = 65536;
// Run mode, integers: exact sums give the same bits for any chunking; larger chunks cost fewer
// per-chunk flushes (8 KiB uint8 chunks spent ~10% there). The SIMD run loops are exact up to 2^16.
constexpr int64_t kIntegerChunkValues = 1 << 16;
constexpr int64_t kLaneChunkValues = 1 << 16;  // lanes mode: values per chunk (lane states in L1)
// ... but 4x more for float data, at most kLaneChunkValues rows: fewer chunk ends (first values,
// lane states merged, streams restarted): (N, 256) float32 0.82 -> 0.87-0.90 of the read loop.
constexpr int64_t kFloatLaneChunkValues = 1 << 18;
// ... and 4x that for float16/bfloat16 (2 MiB of values, as float64): their chunk ends cost more
// of a slower kernel. Kernel harness (Intel Xeon VM, AVX-512, threads=1, 0.25 GiB (N, 256), median
// of 7 interleaved runs, fm / read loop): float16 0.81 -> 0.86-0.87, bfloat16 0.74 -> 0.80-0.81
// (2x: 0.84, 0.76-0.80; 8x and 16x within 2% of 4x). float32 and float64 measured no gain (1.01
// and 1.05 -> 1.00 and 1.04).
constexpr int64_t kHalfLaneChunkValues = 4 * kFloatLaneChunkValues;
// ... and 16x for 8- and 16-bit integers (at most kMaxIntegerChunkRows rows): longer streams per
// chunk. Kernel harness (CPU clock, fm/read avx512/avx2, against 4x): uint8 RGB axis=-1
// 0.79-0.82/0.78-0.81 -> 0.82-0.87/0.86-0.90, uint8 (N,256) 0.93/0.90 -> 0.99/0.96-0.98, int16
// (N,256) 0.86/0.91-0.93 -> 0.95-0.99/1.00-1.07; int32 and int64 lanes lost 5-10% (kept at 4x).
constexpr int64_t kNarrowLaneChunks = 16;
constexpr int64_t kMaxIntegerChunkRows = 1 << 15;  // 8/16-bit lanes: int32 sums cannot overflow
constexpr int64_t kTaskValues = 1 << 20;    // values per task (unit of thread scheduling)
constexpr int64_t kWaveTasks = 256;         // tasks whose states are held before merging
// Run mode with columns inside rows (float32 NCHW axis=1: each 4 MiB sample holds a 64 KiB run of
// every channel): a task reads the runs of a block of columns side by side, at least this many
// bytes, in memory order, instead of one column's runs 4 MiB apart.
constexpr int64_t kBlockBytes = int64_t(1) << 20;

// The float64 overflow pass. Finite float64 data near the range limit can overflow the shifted
// sums (x - shift, (x - shift)^2), the chunk means relative to their column's shift, or the
// lanes' rebasing onto their output's shift: [1.7e308, -1.7e308, 1.7e308] gave a mean of -inf.
// Such values are rare and an overflow anywhere leaves an inf or NaN in the output's state, so
// the pass is a second look, not a cost on the common path: an output whose state came out
// non-finite although no NaN or inf input entered it (InputFlags) has its columns reduced again with every value multiplied by 2^-545 on its way into the same kernels
// (copied per chunk into a worker buffer), and its state is scaled back: mean * 2^545,
// m2 * 2^1090. Scaled, |x| < 2^479 and n < 2^63 keep every intermediate below 2^1023, and values
// below 2^-529 that flush to 0 weigh under 2^-1000 of an output that overflowed (one needs
// |x| > 2^479). m2 stays the sum of squared deviations, as NumPy's var sums them: it is inf when
// it exceeds DBL_MAX even where m2 / n would fit (the state is the portable record every door
// merges, so it holds m2, not a scaled m2). float32 and smaller types cannot overflow in float64.
constexpr double kOverflowDown = 0x1p-545;
constexpr double kOverflowUp = 0x1p545;

// A state of values scaled by kOverflowDown, back in the data's units. The exact mean lies within
// the data's range, so a rounded mean past DBL_MAX is clamped to it.
inline void unscale_overflow(MomentState& s) {
    const double m = s.mean * kOverflowUp;
    s.mean_lo *= kOverflowUp;
    if (std::isinf(m) && std::isfinite(s.mean)) {
        s.mean = std::copysign(std::numeric_limits<double>::max(), m);
        s.mean_lo = 0.0;
    } else {
        s.mean = m;
    }
    s.m2 = s.m2 * kOverflowUp * kOverflowUp;
}

inline MomentState finish(const MomentState& s) { return s; }

// ---- the driver --------------------------------------------------------------------------------

template <class T>
using accumulator_t = std::conditional_t<element_traits<T>::exact_integer, IntegerSums, MomentState>;

// Per-column geometry shared by both modes.
struct ColumnGrid {
    int64_t count = 1;          // number of independent columns
    int64_t lane_blocks = 1;    // lanes mode: lane blocks per column of `columns` axes
    int64_t width = 1;          // states per column (lanes of the widest block, or 1)
    int64_t values = 0;         // values per column
    int64_t splits = 1;         // tasks per column (> 1: partial states merged in waves)
    int64_t group = 1;          // columns per task (splits == 1)
    int64_t units = 0;          // rows (lanes mode) or values (run mode) per column
    int64_t units_per_task = 0;
};

// Runs body(t, worker) for tasks t in [0, ntasks) on the workers' threads (OpenMP, dynamic
// schedule); the calling thread polls between its tasks. The one task loop of both drivers
// (reduce.hpp, weighted_reduce.hpp): workers are made before, so nothing allocates in here.
template <class Worker, class Body, class Poll>
void run_tasks(int64_t ntasks, const std::vector<std::unique_ptr<Worker>>& workers, std::atomic<bool>& cancel,
               Poll& poll, Body&& body) {
    const int nt = static_cast<int>(std::min<int64_t>(static_cast<int64_t>(workers.size()), ntasks));
#if defined(_OPENMP)
#pragma omp parallel num_threads(nt)
#endif
    {
        const ExactFloatScope exact;  // every thread that runs kernel code (see float_env.hpp)
#if defined(_OPENMP)
        Worker& w = *workers[static_cast<size_t>(omp_get_thread_num())];
        const bool poller = omp_get_thread_num() == 0;
#pragma omp for schedule(dynamic, 1)
#else
        Worker& w = *workers[0];
        const bool poller = true;
#endif
        for (int64_t t = 0; t < ntasks; ++t) {
            if (cancel.load(std::memory_order_relaxed)) continue;
            body(t, w);
            if (poller) poll();
        }
    }
    (void)nt;
}

// The poll both drivers call between tasks (thread 0) and between waves: opt.poll with (values
// done, values total), at most every opt.poll_seconds; a false answer (Ctrl-C, a raising
// progress callback) sets `cancel`, which the task loop checks.
class ThrottledPoll {
public:
    ThrottledPoll(const ReduceOptions& opt, const std::atomic<int64_t>& done, int64_t total,
                  std::atomic<bool>& cancel)
        : opt_(opt), done_(done), total_(total), cancel_(cancel), last_(std::chrono::steady_clock::now()) {}

    void operator()() {
        if (!opt_.poll || cancel_.load(std::memory_order_relaxed)) return;
        const auto now = std::chrono::steady_clock::now();
        if (std::chrono::duration<double>(now - last_).count() < opt_.poll_seconds) return;
        last_ = now;
        if (!opt_.poll(done_.load(std::memory_order_relaxed), total_)) cancel_.store(true);
    }

private:
    const ReduceOptions& opt_;
    const std::atomic<int64_t>& done_;
    int64_t total_;
    std::atomic<bool>& cancel_;
    std::chrono::steady_clock::time_point last_;
};

// The pieces of runs that n values of a run-mode column cover from (rows, pos) on, in order, as
// offsets from the column's base (the same for every column). A piece that ends its run is
// followed by a jump (the column's next run) and is read in four parts side by side, any other in
// two (FloatRun::run): the parts are part of the result's bits.
struct RunPiece {
    int64_t offset = 0, values = 0;
    int parts = 2;
    int64_t part_bytes(size_t es) const { return (values / (8 * parts)) * 8 * static_cast<int64_t>(es); }
};

struct RunPieces {
    const Plan& plan;
    Odometer rows;  // where the next piece starts, then the pieces' end
    int64_t pos, left;
    RunPieces(const Plan& p, const Odometer& r, int64_t at, int64_t n) : plan(p), rows(r), pos(at), left(n) {}

    bool next(RunPiece& out) {
        if (left <= 0) return false;
        const int64_t m = std::min(left, plan.run_length - pos);
        out.offset = rows.offset() + pos * plan.run_stride;
        out.values = m;
        left -= m;
        pos += m;
        out.parts = pos == plan.run_length ? 4 : 2;
        if (pos == plan.run_length) pos = 0, rows.next();
        return true;
    }
};

template <class T, bool Omit>
class Reducer {
public:
    using Acc = accumulator_t<T>;
    static constexpr bool kExact = element_traits<T>::exact_integer;
    static constexpr bool kOverflowPass = std::is_same_v<T, double>;  // see kOverflowDown

    Reducer(const char* data, const Plan& plan) : data_(data + plan.base_offset), plan_(plan) {
        Odometer cols(plan.columns), rows(plan.rows);
        if (plan.lanes_mode) {
            grid_.lane_blocks = (plan.lanes + kMaxLanes - 1) / kMaxLanes;
            grid_.width = std::min(plan.lanes, kMaxLanes);
            grid_.count = cols.count() * grid_.lane_blocks;
            grid_.units = rows.count();
            grid_.values = grid_.units * grid_.width;
            chunk_units_ = std::max<int64_t>(1, kExact ? (sizeof(T) <= 2 ? kNarrowLaneChunks : 4) * kLaneChunkValues / grid_.width
                                                       : std::min(kLaneChunkValues, (sizeof(T) == 2 ? kHalfLaneChunkValues : kFloatLaneChunkValues) / grid_.width));
            if constexpr (kExact) chunk_units_ = std::min(chunk_units_, kMaxIntegerChunkRows);
            grid_.units_per_task = std::max<int64_t>(chunk_units_, (kTaskValues / grid_.width) / chunk_units_ * chunk_units_);
        } else {
            grid_.count = cols.count();
            grid_.units = rows.count() * plan.run_length;
            grid_.values = grid_.units;
            chunk_units_ = kExact ? kIntegerChunkValues : sizeof(T) == 2 ? kHalfChunkValues : kChunkValues;
            grid_.units_per_task = kTaskValues;
            interleave_ = !plan.columns.empty() && !plan.rows.empty() && plan.columns.back().stride < plan.rows.back().stride;
        }
        if (grid_.units > grid_.units_per_task) {
            grid_.splits = (grid_.units + grid_.units_per_task - 1) / grid_.units_per_task;
        } else {
            grid_.group = std::max<int64_t>(1, kTaskValues / std::max<int64_t>(1, grid_.values));
        }
    }

    // Float states are merged relative to a per-column (per-lane) shift, the column's first
    // finite value: chunk means then carry no rounding of a large offset into Chan's delta,
    // which keeps m2 exact to ~1e-15 even for 1e9 + N(0, 1) (a bare mean near 1e9 has an ulp of
    // 1.2e-7, and that error, squared into delta^2 * na*nb/n, dominates after many merges).
    // The search goes row by row over a column block's lanes (search_rows): (262144, 256) float32
    // with every fifth lane all NaN, nan_policy='omit', went from 110 to 43 ms at threads=1 and
    // from 77 to 25 ms at threads=2 (the same data without NaN: 43 / 23 ms), where a walk down
    // each lane read a cache line per value, serially before the threads start.
    static constexpr int64_t kShiftSearch = 1 << 16;  // values searched for a finite shift

    static double load_value(const char* p) {
        return static_cast<double>(element_traits<T>::load(load_at<T>(p)));
    }

    // Calls stop(v) on the n values of a run-mode column from (rows, pos) on, in order, until it
    // returns true; whether one did.
    template <class Stop>
    bool scan_run(const char* base, Odometer rows, int64_t pos, int64_t n, Stop&& stop) const {
        const int64_t L = plan_.run_length, st = plan_.run_stride;
        for (int64_t i = 0; i < n; ++i) {
            if (stop(load_value(base + rows.offset() + pos * st))) return true;
            if (++pos == L) pos = 0, rows.next();
        }
        return false;
    }

    // First finite value among the n values of a run-mode column from (rows, pos) on, or 0.
    double first_finite_run(const char* base, const Odometer& rows, int64_t pos, int64_t n) const {
        double first = 0.0;
        scan_run(base, rows, pos, n, [&](double v) {
            if (!std::isfinite(v)) return false;
            first = v;
            return true;
        });
        return first;
    }

    const double* shift_of(int64_t c) const {
        return col_shift_.empty() ? nullptr : &col_shift_[static_cast<size_t>(c * grid_.width)];
    }

    void compute_shifts() {
        if constexpr (!kExact) {
            const Plan& p = plan_;
            col_shift_.assign(static_cast<size_t>(grid_.count * grid_.width), 0.0);
            std::vector<int64_t> pending;
            pending.reserve(static_cast<size_t>(grid_.width));
            Odometer cols(p.columns);
            for (int64_t c = 0; c < grid_.count; ++c) {
                double* sh = &col_shift_[static_cast<size_t>(c * grid_.width)];
                if (p.lanes_mode) {
                    cols.seek(c / grid_.lane_blocks);
                    const int64_t lane0 = (c % grid_.lane_blocks) * kMaxLanes;
                    const int64_t width = std::min(kMaxLanes, p.lanes - lane0);
                    const char* base = data_ + cols.offset() + lane0 * p.lane_stride;
                    Odometer rows(p.rows);
                    rows.seek(0);
                    const char* row = base;
                    all_lanes(pending, width);
                    search_rows(pending, std::min(grid_.units, kShiftSearch),
                                [&](int64_t r) {
                                    if (r > 0) rows.next(), row = base + rows.offset();
                                },
                                [&](int64_t, int64_t l) {
                                    const double v = load_value(row + l * p.lane_stride);
                                    if (!std::isfinite(v)) return false;
                                    sh[l] = v;
                                    return true;
                                });
                } else {
                    cols.seek(c);
                    Odometer rows(p.rows);
                    rows.seek(0);
                    sh[0] = first_finite_run(data_ + cols.offset(), rows, 0, std::min(grid_.units, kShiftSearch));
                }
            }
            if (scaled_)
                for (double& v : col_shift_) v *= kOverflowDown;
        }
    }

    Status run(MomentState* out, const ReduceOptions& opt) {
        Status s = pass(out, opt);
        if constexpr (kOverflowPass) {
            if (s == Status::Ok && !redo_out_.empty()) {
                scaled_ = true;
                ReduceOptions again = opt;  // progress stays at its end; cancelling still works
                if (opt.poll) again.poll = [&opt](int64_t, int64_t total) { return opt.poll(total, total); };
                s = pass(out, again);
            }
        }
        return s;
    }

private:
    // One pass over the columns (all, or in the overflow pass those in need_col_).
    Status pass(MomentState* out, const ReduceOptions& opt) {
        const int64_t ncols = grid_.count;
        compute_shifts();
        // Filled with copies of one Acc{}: the value-initialising constructor is an STL loop
        // compiled for the baseline target, which called the ISA variant's UInt192 constructor
        // out of line once per state (~40% of a 1 MiB uint8 image's reduce in perf).
        std::vector<Acc> acc(static_cast<size_t>(ncols * grid_.width), Acc{});
        // Per column lane: what entered it (float data; InputFlags).
        std::vector<uint8_t> inputs(kExact ? 0 : acc.size(), 0);
        auto flags_at = [&](std::vector<uint8_t>& v, int64_t i) { return v.empty() ? nullptr : &v[static_cast<size_t>(i)]; };
        auto needed = [&](int64_t c) { return need_col_.empty() || need_col_[static_cast<size_t>(c)]; };
        const int64_t total = ncols * grid_.values;
        const int threads = std::max(1, opt.threads);
        std::atomic<int64_t> done{0};
        std::atomic<bool> cancel{false};
        ThrottledPoll poll(opt, done, total, cancel);

        // Every worker's buffers exist before the threads start (an out-of-memory is a bad_alloc
        // here, in the calling thread, not a std::terminate inside the parallel region).
        // Columns inside rows (interleave_): a task is one split of a block of `block_` columns,
        // read in memory order (Worker::run_columns). The block does not touch the bits (each
        // column's chunks and splits stay the same), so it may follow the thread count: runs side
        // by side over at least kBlockBytes, cut down to leave four tasks per thread.
        // (The overflow pass reads only the columns it needs, one by one.)
        const bool blocked = interleave_ && !scaled_;
        const int64_t wave_splits = std::min(grid_.splits, std::max<int64_t>(1, kWaveTasks / ncols));
        block_ = 1;
        if (blocked) {
            const int64_t run_bytes = std::max<int64_t>(1, plan_.run_length * static_cast<int64_t>(sizeof(T)));
            block_ = std::min(ncols, (kBlockBytes + run_bytes - 1) / run_bytes);
            block_ = std::max<int64_t>(1, std::min(block_, ncols * wave_splits / (4 * int64_t{threads})));
        }
        const int64_t nblocks = (ncols + block_ - 1) / block_;
        const int64_t max_tasks = blocked ? nblocks * wave_splits
                                : grid_.splits == 1 ? (ncols + grid_.group - 1) / grid_.group
                                                    : std::min(kWaveTasks, ncols * grid_.splits);
        const bool parallel = grid_.splits > 1 || total > kTaskValues;
        std::vector<std::unique_ptr<Worker>> workers(
            static_cast<size_t>(parallel ? std::min<int64_t>(threads, max_tasks) : 1));
        for (auto& w : workers) w = std::make_unique<Worker>(*this);

        if (blocked) {
            // Tasks split-major, blocks within a split; a wave holds whole splits, and each
            // column's partial states merge into it in split order, as below.
            const bool direct = grid_.splits == 1;  // one split: the states are the columns'
            std::vector<Acc> slots(direct ? 0 : static_cast<size_t>(wave_splits * ncols * grid_.width), Acc{});
            std::vector<uint8_t> slot_inputs(inputs.empty() || direct ? 0 : slots.size());
            for (int64_t s0 = 0; s0 < grid_.splits && !cancel.load(); s0 += wave_splits) {
                const int64_t ns = std::min(wave_splits, grid_.splits - s0);
                std::fill(slots.begin(), slots.end(), Acc{});
                std::fill(slot_inputs.begin(), slot_inputs.end(), uint8_t{0});
                Acc* dst = direct ? acc.data() : slots.data();
                std::vector<uint8_t>& dst_inputs = direct ? inputs : slot_inputs;
                run_tasks(ns * nblocks, workers, cancel, poll, [&](int64_t t, Worker& w) {
                    const int64_t s = s0 + t / nblocks, c0 = (t % nblocks) * block_;
                    const int64_t c1 = std::min(ncols, c0 + block_);
                    const int64_t u0 = s * grid_.units_per_task;
                    const int64_t u1 = std::min(grid_.units, u0 + grid_.units_per_task);
                    const int64_t i = ((s - s0) * ncols + c0) * grid_.width;
                    w.run_columns(c0, c1, u0, u1, dst + i, flags_at(dst_inputs, i));
                    done.fetch_add((c1 - c0) * (u1 - u0), std::memory_order_relaxed);
                });
                if (!direct)
                    for (int64_t i = 0; i < ns * ncols * grid_.width; ++i) {
                        const int64_t c = i % (ncols * grid_.width);
                        acc[c] = combine(acc[c], slots[i]);
                        if (!inputs.empty()) inputs[c] |= slot_inputs[i];
                    }
                poll();
            }
        } else if (grid_.splits == 1) {
            const int64_t ntasks = (ncols + grid_.group - 1) / grid_.group;
            run_tasks(ntasks, workers, cancel, poll,
                      [&](int64_t t, Worker& w) {
                          const int64_t c1 = std::min(ncols, (t + 1) * grid_.group);
                          for (int64_t c = t * grid_.group; c < c1; ++c) {
                              if (needed(c))
                                  w.column(c, 0, grid_.units, &acc[static_cast<size_t>(c * grid_.width)],
                                           flags_at(inputs, c * grid_.width));
                              done.fetch_add(grid_.values, std::memory_order_relaxed);
                          }
                      });
        } else {
            // Each column is cut into `splits` tasks; waves of tasks run in parallel and their
            // partial states are merged into the column in task order.
            const int64_t ntasks = ncols * grid_.splits;
            std::vector<Acc> slots(static_cast<size_t>(std::min(kWaveTasks, ntasks) * grid_.width), Acc{});
            std::vector<uint8_t> slot_inputs(inputs.empty() ? 0 : slots.size());
            for (int64_t w0 = 0; w0 < ntasks && !cancel.load(); w0 += kWaveTasks) {
                const int64_t nw = std::min(kWaveTasks, ntasks - w0);
                std::fill(slots.begin(), slots.begin() + nw * grid_.width, Acc{});
                std::fill(slot_inputs.begin(), slot_inputs.end(), uint8_t{0});
                run_tasks(nw, workers, cancel, poll, [&](int64_t t, Worker& w) {
                    const int64_t task = w0 + t;
                    const int64_t c = task / grid_.splits, s = task % grid_.splits;
                    const int64_t u0 = s * grid_.units_per_task;
                    const int64_t u1 = std::min(grid_.units, u0 + grid_.units_per_task);
                    if (needed(c))
                        w.column(c, u0, u1, &slots[static_cast<size_t>(t * grid_.width)],
                                 flags_at(slot_inputs, t * grid_.width));
                    done.fetch_add((u1 - u0) * (grid_.values / grid_.units), std::memory_order_relaxed);
                });
                for (int64_t t = 0; t < nw; ++t) {
                    const int64_t c = (w0 + t) / grid_.splits;
                    for (int64_t l = 0; l < grid_.width; ++l) {
                        acc[c * grid_.width + l] = combine(acc[c * grid_.width + l], slots[t * grid_.width + l]);
                        if (!inputs.empty()) inputs[c * grid_.width + l] |= slot_inputs[t * grid_.width + l];
                    }
                }
                poll();
            }
        }
        if (cancel.load()) return Status::Cancelled;
        scatter(acc, inputs, out);
        return Status::Ok;
    }

    // Per-thread scratch and the loops over one column's units [u0, u1).
    class Worker {
    public:
        Worker(const Reducer& r) : r_(r), lanes_(r.grid_.width), row_ptrs_(r.plan_.lanes_mode ? r.chunk_units_ : 0) {
            if (r.scaled_) scaled_.resize(static_cast<size_t>(r.chunk_units_ * (r.plan_.lanes_mode ? lanes_ : 1)));
            if (!r.plan_.lanes_mode) {
                const size_t g = static_cast<size_t>(r.block_);
                if (r.plan_.run_stride == static_cast<int64_t>(sizeof(T))) contig_runs_.resize(g);
                else strided_runs_.resize(g);
                bases_.resize(g);
            }
        }

        // flags: InputFlags per lane state (nullptr for integer data).
        void column(int64_t c, int64_t u0, int64_t u1, Acc* acc, uint8_t* flags) {
            const Plan& p = r_.plan_;
            Odometer cols(p.columns), rows(p.rows);
            if (p.lanes_mode) {
                const int64_t block = c % r_.grid_.lane_blocks;
                cols.seek(c / r_.grid_.lane_blocks);
                const int64_t lane0 = block * kMaxLanes;
                const int64_t width = std::min(kMaxLanes, p.lanes - lane0);
                const char* base = r_.data_ + cols.offset() + lane0 * p.lane_stride;
                rows.seek(u0);
                for (int64_t r0 = u0; r0 < u1; r0 += r_.chunk_units_) {
                    const int64_t n = std::min(r_.chunk_units_, u1 - r0);
                    if constexpr (kOverflowPass) {
                        if (r_.scaled_) {  // the chunk's rows, scaled, as contiguous rows of the buffer
                            for (int64_t k = 0; k < n; ++k, rows.next()) {
                                const char* row = base + rows.offset();
                                double* b = scaled_.data() + k * width;
                                for (int64_t l = 0; l < width; ++l) b[l] = load_value(row + l * p.lane_stride) * kOverflowDown;
                                row_ptrs_[k] = reinterpret_cast<const char*>(b);
                            }
                            contig_lanes_.chunk(row_ptrs_.data(), n, width, sizeof(double), acc, r_.shift_of(c), flags);
                            continue;
                        }
                    }
                    rows.fill(base, row_ptrs_.data(), n);
                    if (p.lane_stride == static_cast<int64_t>(sizeof(T)))
                        lane_kernel<true>(n, width, acc, r_.shift_of(c), flags);
                    else
                        lane_kernel<false>(n, width, acc, r_.shift_of(c), flags);
                }
            } else {
                if constexpr (kOverflowPass) {
                    if (r_.scaled_) {
                        cols.seek(c);
                        const char* base = r_.data_ + cols.offset();
                        const int64_t L = p.run_length;
                        rows.seek(u0 / L);
                        int64_t pos = u0 % L;
                        for (int64_t e0 = u0; e0 < u1; e0 += r_.chunk_units_)
                            scaled_run(base, rows, pos, std::min(r_.chunk_units_, u1 - e0), acc[0], r_.shift_of(c), *flags);
                        return;
                    }
                }
                run_columns(c, c + 1, u0, u1, acc, flags);
            }
        }

        // Run mode: columns [c0, c1) over units [u0, u1), into acc[0 .. c1 - c0) (flags alike),
        // chunk by chunk. Inside a chunk the pieces of runs it covers (RunPieces) are read in
        // order, each piece for every column in turn: memory order where the columns lie inside
        // the rows (interleave_). A column's chunk is read by the same calls in the same order
        // whatever the block, so the bits do not depend on it.
        void run_columns(int64_t c0, int64_t c1, int64_t u0, int64_t u1, Acc* acc, uint8_t* flags) {
            if (r_.plan_.run_stride == static_cast<int64_t>(sizeof(T)))
                run_block<true>(contig_runs_, c0, c1, u0, u1, acc, flags);
            else
                run_block<false>(strided_runs_, c0, c1, u0, u1, acc, flags);
        }

    private:
        template <bool Contig>
        void lane_kernel(int64_t n, int64_t width, Acc* acc, const double* shift, uint8_t* flags) {
            const int64_t ls = r_.plan_.lane_stride;
            if constexpr (kExact) {
                if constexpr (Contig)
                    contig_lanes_.chunk(row_ptrs_.data(), n, width, ls, acc, shift);
                else
                    strided_lanes_.chunk(row_ptrs_.data(), n, width, ls, acc, shift);
            } else {
                if constexpr (Contig)
                    contig_lanes_.chunk(row_ptrs_.data(), n, width, ls, acc, shift, flags);
                else
                    strided_lanes_.chunk(row_ptrs_.data(), n, width, ls, acc, shift, flags);
            }
        }

        // The overflow pass in run mode: the chunk's n values from (rows, pos), scaled into the
        // buffer, then the float kernel's steps over it as one contiguous run.
        void scaled_run(const char* base, Odometer& rows, int64_t& pos, int64_t n, Acc& acc,
                        const double* shift, uint8_t& flags) {
            const Plan& p = r_.plan_;
            double* b = scaled_.data();
            for (int64_t i = 0; i < n;) {  // run by run
                const int64_t m = std::min(n - i, p.run_length - pos);
                const char* q = base + rows.offset() + pos * p.run_stride;
                for (int64_t j = 0; j < m; ++j) b[i + j] = load_value(q + j * p.run_stride) * kOverflowDown;
                i += m;
                pos += m;
                if (pos == p.run_length) pos = 0, rows.next();
            }
            FloatRun<double, Omit, true> k;
            const char* q = reinterpret_cast<const char*>(b);
            double first = 0.0;
            for (int64_t i = 0; i < n; ++i)
                if (std::isfinite(b[i])) {
                    first = b[i];
                    break;
                }
            k.start(first);
            k.run(q, n, sizeof(double));
            const double better = k.better_shift(n);
            if (!std::isnan(better)) {
                k.start(better);
                k.run(q, n, sizeof(double));
            }
            acc = combine(acc, k.finish_chunk(n, *shift, flags, [&] {
                for (int64_t i = 0; i < n; ++i)
                    if (std::isinf(b[i])) return true;
                return false;
            }));
        }

        template <bool Contig, class K>
        void run_block(std::vector<K>& ks, int64_t c0, int64_t c1, int64_t u0, int64_t u1, Acc* acc, uint8_t* flags) {
            const Plan& p = r_.plan_;
            const int64_t G = c1 - c0, L = p.run_length, st = p.run_stride;
            Odometer cols(p.columns), rows(p.rows);
            cols.seek(c0);
            for (int64_t g = 0; g < G; ++g, cols.next()) bases_[g] = r_.data_ + cols.offset();
            rows.seek(u0 / L);
            RunPieces pieces(p, rows, u0 % L, 0);
            // Runs of at least 4 KiB tell the kernel what is read next (RunAhead): the next
            // column's piece, after the last column the next piece (past the chunk's end the
            // next chunk's first; none after the task's end).
            const bool ahead = !kExact && Contig && L * static_cast<int64_t>(sizeof(T)) >= kRunPrefetchBytes;
            for (int64_t e0 = u0; e0 < u1; e0 += r_.chunk_units_) {
                const int64_t n = std::min(r_.chunk_units_, u1 - e0);
                const Odometer start(pieces.rows);
                const int64_t start_pos = pieces.pos;
                for (int64_t g = 0; g < G; ++g) {
                    if constexpr (kExact) {
                        ks[g].start();
                    } else {
                        const double first = load_value(bases_[g] + start.offset() + start_pos * st);
                        ks[g].start(std::isfinite(first) ? first : r_.first_finite_run(bases_[g], start, start_pos, n));
                    }
                }
                pieces.left = n;
                RunPiece cur, nxt;
                bool have = pieces.next(cur);
                while (have) {
                    const bool more = pieces.next(nxt);
                    if (!more && e0 + n < u1)  // the next chunk's first piece, for the hint only
                        RunPieces(p, pieces.rows, pieces.pos, std::min(r_.chunk_units_, u1 - e0 - n)).next(nxt);
                    for (int64_t g = 0; g < G; ++g) {
                        const char* q = bases_[g] + cur.offset;
                        if constexpr (kExact) {
                            ks[g].run(q, cur.values, st);
                        } else {
                            RunAhead next;
                            if (ahead && g + 1 < G)
                                next = {bases_[g + 1] + cur.offset, cur.part_bytes(sizeof(T))};
                            else if (ahead && (more || e0 + n < u1))
                                next = {bases_[0] + nxt.offset, nxt.part_bytes(sizeof(T))};
                            ks[g].run(q, cur.values, st, cur.parts, next);
                        }
                    }
                    cur = nxt;
                    have = more;
                }
                for (int64_t g = 0; g < G; ++g) {
                    if constexpr (kExact) {
                        ks[g].add_to(acc[g], n);
                    } else {
                        K& k = ks[g];
                        const char* base = bases_[g];
                        auto again = [&](double shift, bool bits) {
                            k.start(shift, bits);
                            RunPieces again_pieces(p, start, start_pos, n);
                            RunPiece piece;
                            while (again_pieces.next(piece)) k.run(base + piece.offset, piece.values, st, piece.parts);
                        };
                        if (k.bits_suspect(n)) again(k.sh, false);  // a NaN or inf may have entered
                        const double better = k.better_shift(n);
                        if (!std::isnan(better)) again(better, k.bits);  // an outlier came first: sum around the mean
                        acc[g] = combine(acc[g], k.finish_chunk(n, *r_.shift_of(c0 + g), flags[g], [&] {
                            return r_.scan_run(base, start, start_pos, n, [](double v) { return std::isinf(v); });
                        }));
                    }
                }
            }
        }

        using ContigLanes = std::conditional_t<kExact, IntegerLanes<T, true>, FloatLanes<T, Omit, true>>;
        using StridedLanes = std::conditional_t<kExact, IntegerLanes<T, false>, FloatLanes<T, Omit, false>>;

        const Reducer& r_;
        int64_t lanes_;
        std::vector<const char*> row_ptrs_;
        std::vector<double> scaled_;  // the overflow pass's scaled chunk
        ContigLanes contig_lanes_{lanes_};
        StridedLanes strided_lanes_{lanes_};
        using ContigRun = std::conditional_t<kExact, IntegerRun<T, true>, FloatRun<T, Omit, true>>;
        using StridedRun = std::conditional_t<kExact, IntegerRun<T, false>, FloatRun<T, Omit, false>>;
        std::vector<ContigRun> contig_runs_;    // run mode: a block's chunk states (run_columns)
        std::vector<StridedRun> strided_runs_;  // ... of the one the plan's run stride needs
        std::vector<const char*> bases_;        // ... and its columns' first values
    };

    // Calls f(output, column, lane) for every lane state, in lane order within each output.
    template <class F>
    void for_each_lane(F&& f) const {
        const Plan& p = plan_;
        Odometer cols(p.columns);
        for (int64_t c = 0; c < grid_.count; ++c) {
            if (p.lanes_mode) {
                const int64_t block = c % grid_.lane_blocks;
                cols.seek(c / grid_.lane_blocks);
                const int64_t lane0 = block * kMaxLanes;
                const int64_t width = std::min(kMaxLanes, p.lanes - lane0);
                for (int64_t l = 0; l < width; ++l)
                    f(p.base_out + cols.out() + ((lane0 + l) % p.lane_period) * p.lane_ostride, c, l);
            } else {
                cols.seek(c);
                f(p.base_out + cols.out(), c, int64_t{0});
            }
        }
    }

    // Column states -> output states; folded lanes merge into their output lane in lane order.
    // The first float64 pass also marks the outputs the overflow pass redoes (see kOverflowDown);
    // that pass writes only those.
    void scatter(const std::vector<Acc>& acc, const std::vector<uint8_t>& inputs, MomentState* out) {
        const Plan& p = plan_;
        std::vector<Acc> merged(static_cast<size_t>(p.out_size), Acc{});
        // Float states are relative to their lane's shift; an output takes the shift of its first
        // lane and rebases the others onto it (shifts are close values: the difference is exact).
        std::vector<double> out_shift(kExact ? 0 : static_cast<size_t>(p.out_size), 0.0);
        std::vector<char> has_shift(out_shift.size(), 0);
        const bool mark = kOverflowPass && !scaled_;
        std::vector<uint8_t> out_inputs(mark ? static_cast<size_t>(p.out_size) : 0, 0);  // InputFlags
        for_each_lane([&](int64_t o, int64_t c, int64_t l) {
            const size_t i = static_cast<size_t>(c * grid_.width + l);
            Acc a = acc[i];
            if constexpr (!kExact) {
                const double sh = col_shift_[i];
                if (!has_shift[o]) out_shift[o] = sh, has_shift[o] = 1;
                else if (a.count > 0) set_mean(a, a.mean, a.mean_lo + (sh - out_shift[o]));
            }
            merged[o] = combine(merged[o], a);
            if (mark) out_inputs[o] |= inputs[i];
        });
        for (int64_t o = 0; o < p.out_size; ++o) {
            if (scaled_ && !redo_out_[o]) continue;
            out[o] = finish(merged[o]);
            if constexpr (!kExact) {  // back from shifted coordinates, keeping the residual
                const double lo = out[o].mean_lo;
                set_mean(out[o], out_shift[o], out[o].mean);
                out[o].mean_lo += lo;
                // One NaN: x86 keeps the first operand's NaN, and the compiler may commute an
                // addition differently per ISA, so +NaN (an input's) and -NaN (inf - inf's)
                // would otherwise differ in their sign bit between variants.
                if (out[o].mean != out[o].mean) out[o].mean = std::numeric_limits<double>::quiet_NaN();
                if (out[o].m2 != out[o].m2) out[o].m2 = std::numeric_limits<double>::quiet_NaN();
            }
            if constexpr (kOverflowPass) {
                if (scaled_) {
                    unscale_overflow(out[o]);
                } else if (!(std::isfinite(out[o].mean) && std::isfinite(out[o].m2)) && !(out_inputs[o] & (kNanEntered | kInfEntered))) {
                    if (redo_out_.empty()) redo_out_.assign(static_cast<size_t>(p.out_size), 0);
                    redo_out_[o] = 1;
                }
            }
        }
        if (mark && !redo_out_.empty()) {
            need_col_.assign(static_cast<size_t>(grid_.count), 0);
            for_each_lane([&](int64_t o, int64_t c, int64_t) {
                if (redo_out_[o]) need_col_[static_cast<size_t>(c)] = 1;
            });
        }
    }

    const char* data_;
    const Plan& plan_;
    ColumnGrid grid_;
    std::vector<double> col_shift_;
    int64_t chunk_units_ = 1;
    bool interleave_ = false;  // run mode, columns inside rows: tasks read blocks of columns
    int64_t block_ = 1;        // columns per task when they do (pass())
    bool scaled_ = false;            // the overflow pass: values enter the kernels times kOverflowDown
    std::vector<uint8_t> redo_out_;  // outputs the overflow pass redoes (empty: none)
    std::vector<uint8_t> need_col_;  // columns that pass reads (empty: all)
};

// Reduces `data` (dtype, shape, byte strides) over the axes with keep[i] == false, writing
// prod(kept shape) states to `out` in C order of the kept axes. Sizes must all be > 0.
inline Status reduce(const void* data, DType dtype, int ndim, const int64_t* shape,
                     const int64_t* strides, const bool* keep, MomentState* out,
                     const ReduceOptions& opt) {
    const ExactFloatScope exact;  // the calling thread too (shift searches, merges)
    const Plan plan = make_plan(ndim, shape, strides, keep);
    return visit_dtype(dtype, [&](auto tag) -> Status {
        using T = decltype(tag);
        const char* p = static_cast<const char*>(data);
        if (opt.nan_policy == NanPolicy::Omit && !element_traits<T>::exact_integer)
            return Reducer<T, true>(p, plan).run(out, opt);
        return Reducer<T, false>(p, plan).run(out, opt);
    });
}

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
