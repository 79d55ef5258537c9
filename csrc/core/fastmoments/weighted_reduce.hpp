// The weighted driver: one pass over a strided array and a weight (or mask) array of the same
// shape (broadcast weights have stride 0), per-output WeightedState. Same chunk and task grid,
// fixed merge order and threading as the unweighted driver in reduce.hpp, so threads=1 and
// threads=N give the same bits; a separate instantiation, so the unweighted path is untouched.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "dtypes.hpp"
#include "layout.hpp"
#include "reduce.hpp"
#include "state.hpp"
#include "weighted_chunks.hpp"
#include "weighted_integer_sums.hpp"

namespace fastmoments {

// Stored type of the weights: float64, float32, a boolean mask (where=), or int64 (integer
// weights of integer data: exact sums, weighted_integer_sums.hpp).
enum class WeightType : int { Float64 = 0, Float32 = 1, Mask = 2, Int64 = 3 };

inline namespace FM_ISA_NAMESPACE {

// The loop plan of make_plan for two arrays walked together: axes are ordered by the data's
// strides and merged only where both arrays continue each other (no lane folding).
struct PairPlan {
    bool lanes_mode = false;
    int64_t lanes = 1, lane_stride = 0, wlane_stride = 0, lane_ostride = 0;
    int64_t run_length = 1, run_stride = 0, wrun_stride = 0;
    std::vector<LoopAxis> columns, rows, wcolumns, wrows;  // w*: the same axes with weight strides
    int64_t base_offset = 0, wbase_offset = 0, base_out = 0, out_size = 1;
};

inline PairPlan make_pair_plan(int ndim, const int64_t* shape, const int64_t* strides, const int64_t* wstrides,
                               const bool* keep) {
    PairPlan plan;
    OrderedAxes ordered = order_axes(ndim, shape, strides, wstrides, keep, "make_pair_plan");
    plan.base_offset = ordered.base_offset;
    plan.wbase_offset = ordered.wbase_offset;
    plan.base_out = ordered.base_out;
    plan.out_size = ordered.out_size;
    std::vector<PairAxis>& merged = ordered.axes;
    const PairAxis inner = merged.back();
    merged.pop_back();
    int64_t reduced_rows = 1;
    for (const auto& a : merged)
        if (!a.kept) reduced_rows *= a.size;
    // A reduced inner run of one weight (per-row weights under axis=None) is read as lanes of
    // one output, folded in scatter: the row kernel, not one short run per row.
    const bool fold = !inner.kept && inner.wstride == 0 && inner.size >= 16 && inner.size <= kMaxLanes &&
                      reduced_rows >= 64;
    if (inner.kept || fold) {
        plan.lanes_mode = true;
        plan.lanes = inner.size;
        plan.lane_stride = inner.stride;
        plan.wlane_stride = inner.wstride;
        plan.lane_ostride = fold ? 0 : inner.ostride;
    } else {
        plan.run_length = inner.size;
        plan.run_stride = inner.stride;
        plan.wrun_stride = inner.wstride;
    }
    for (const auto& a : merged) {
        (a.kept ? plan.columns : plan.rows).push_back(LoopAxis{a.size, a.stride, a.ostride, a.kept});
        (a.kept ? plan.wcolumns : plan.wrows).push_back(LoopAxis{a.size, a.wstride, a.ostride, a.kept});
    }
    return plan;
}

// Lanes mode: a task's first chunk (summed around a first value, then again around its own
// mean) takes at most 256 rows; later chunks start from the running mean and take up to 1024,
// so a chunk's per-lane work (shift, state, merge: ~17% of the per-row kernel at 256 rows)
// is spread over 4x the values.
constexpr int64_t kMaxWeightedChunkRows = 256;
constexpr int64_t kMaxRunningChunkRows = 1024;

// Integer data with integer weights or a mask is summed exactly (WeightedIntegerSums: no shifts,
// one rounding per output in scatter); every other pair takes shifted float64 sums.
template <class T, class Wt, bool Omit>
class WeightedReducer {
public:
    static constexpr bool kExact = element_traits<T>::exact_integer &&
                                   (std::is_same_v<Wt, int64_t> || std::is_same_v<Wt, bool>);
    using Acc = std::conditional_t<kExact, WeightedIntegerSums, WeightedState>;

    WeightedReducer(const char* data, const char* weights, const PairPlan& plan)
        : data_(data + plan.base_offset), weights_(weights + plan.wbase_offset), plan_(plan) {
        Odometer cols(plan.columns), rows(plan.rows);
        if (plan.lanes_mode) {
            lane_blocks_ = (plan.lanes + kMaxLanes - 1) / kMaxLanes;
            width_ = std::min(plan.lanes, kMaxLanes);
            ncols_ = cols.count() * lane_blocks_;
            units_ = rows.count();
            // At most 256 rows a chunk: narrow rows would otherwise sum thousands of rows around
            // one shift (no folding here); later chunks start from the running mean.
            chunk_units_ = std::clamp<int64_t>(kLaneChunkValues / width_, 1, kMaxWeightedChunkRows);
            later_units_ = std::clamp<int64_t>(4 * kLaneChunkValues / width_, 1, kMaxRunningChunkRows);
            units_per_task_ = std::max<int64_t>(chunk_units_, (kTaskValues / width_) / chunk_units_ * chunk_units_);
        } else {
            ncols_ = cols.count();
            units_ = rows.count() * plan.run_length;
            chunk_units_ = later_units_ = kChunkValues;
            units_per_task_ = kTaskValues;
        }
        const int64_t values = units_ * width_;
        if (units_ > units_per_task_) splits_ = (units_ + units_per_task_ - 1) / units_per_task_;
        else group_ = std::max<int64_t>(1, kTaskValues / std::max<int64_t>(1, values));
    }

    // Chunk states are merged relative to a per-lane shift col_shift_ (and added back in
    // scatter): the first finite value of positive weight among the lane's first
    // kShiftSearchRows rows (run mode: first kShiftSearchValues values), else 0.
    //
    // Why a bounded search and 0 are enough (accuracy): col_shift_ enters only (a) a chunk's mean
    // as the double-double set_mean(shift - col_shift, s1/sw), (b) Chan's merges of those means,
    // (c) scatter's two_sum back. With col_shift = 0, (a) is exact (shift - 0), and (b) takes delta
    // between double-double means: the highs of two means of the same data differ by less than
    // a factor 2 (Sterbenz: their difference is exact) or by about themselves (then u relative),
    // and the new low part a.mean_lo + delta * wb rounds by u * |delta|, a spread-sized number,
    // not u * |mean|. So the mean keeps ~u * spread per merge and m2's merge terms
    // delta^2 * wa * wb / W ~2u relative, whatever the offset (1e9 float64, tests/test_weights.py
    // late-start cases: <= 1e-12 against the exact reference). A shift found near the data gives
    // the same bounds; it is kept for the common case so that unmasked results keep their bits.
    // What must never be a shift is a value of zero weight (a fill value 1e30 far from the data
    // would round the chunk means in (a)): the search takes only values of positive weight.
    //
    // Why bounded (speed): a lane without positive weight in its first rows (a masked feature,
    // padding) was searched over 65536 rows with a strided column walk, serially before the
    // threads start (~30% of a (65536, 256) float32 call with 51 masked features). The search is
    // row-major over all lanes of a column block at once (one row's lanes are near in memory),
    // drops the lanes found, and stops after kShiftSearchRows rows: at most that many rows of
    // each column block are read. Deterministic: the same rows for every thread count.
    static constexpr int64_t kShiftSearchRows = kShiftProbeRows;
    static constexpr int64_t kShiftSearchValues = 256;  // run mode: contiguous values, 1 KiB of float32

    void compute_shifts() {
        const PairPlan& p = plan_;
        col_shift_.assign(static_cast<size_t>(ncols_ * width_), 0.0);
        if constexpr (kExact) return;  // exact sums need no shift
        std::vector<int64_t> pending;
        pending.reserve(static_cast<size_t>(width_));
        for (int64_t c = 0; c < ncols_; ++c) {
            double* sh = &col_shift_[static_cast<size_t>(c * width_)];
            Cursor cur = cursor(c, 0);
            if (p.lanes_mode) {
                const char* row = nullptr;
                const char* wrow = nullptr;
                all_lanes(pending, cur.width);
                search_rows(pending, std::min(units_, kShiftSearchRows),
                            [&](int64_t r) {
                                if (r > 0) cur.rows.next(), cur.wrows.next();
                                row = cur.base + cur.rows.offset(), wrow = cur.wbase + cur.wrows.offset();
                            },
                            [&](int64_t, int64_t l) {
                                const double v = value_at<T>(row + l * p.lane_stride);
                                if (!std::isfinite(v) || !(weight_at<Wt>(wrow + l * p.wlane_stride) > 0.0)) return false;
                                sh[l] = v;
                                return true;
                            });
            } else {
                sh[0] = first_in_run(cur.base, cur.wbase, cur.rows, cur.wrows, 0, std::min(units_, kShiftSearchValues));
            }
        }
    }

    // First finite value of positive weight among n run-mode values from (rows, pos), or 0.
    double first_in_run(const char* base, const char* wbase, Odometer rows, Odometer wrows, int64_t pos,
                        int64_t n) const {
        const int64_t L = plan_.run_length, st = plan_.run_stride, ws = plan_.wrun_stride;
        for (int64_t i = 0; i < n; ++i) {
            const double v = value_at<T>(base + rows.offset() + pos * st);
            if (std::isfinite(v) && weight_at<Wt>(wbase + wrows.offset() + pos * ws) > 0.0) return v;
            if (++pos == L) pos = 0, rows.next(), wrows.next();
        }
        return 0.0;
    }

    // Fills out[0..out_size); returns Cancelled, or sets *bad_weights when a weight was negative,
    // NaN or infinite (the states are then meaningless).
    Status run(WeightedState* out, bool* bad_weights, const ReduceOptions& opt) {
        compute_shifts();
        std::vector<Acc> acc(static_cast<size_t>(ncols_ * width_), Acc{});
        const int64_t total = ncols_ * units_ * width_;
        const int threads = std::max(1, opt.threads);
        std::atomic<int64_t> done{0};
        std::atomic<bool> cancel{false};
        ThrottledPoll poll(opt, done, total, cancel);
        const int64_t max_tasks = splits_ == 1 ? (ncols_ + group_ - 1) / group_ : std::min(kWaveTasks, ncols_ * splits_);
        const bool parallel = splits_ > 1 || total > kTaskValues;
        std::vector<std::unique_ptr<Worker>> workers(static_cast<size_t>(parallel ? std::min<int64_t>(threads, max_tasks) : 1));
        for (auto& w : workers) w = std::make_unique<Worker>(*this);

        if (splits_ == 1) {
            run_tasks((ncols_ + group_ - 1) / group_, workers, cancel, poll, [&](int64_t t, Worker& w) {
                const int64_t c1 = std::min(ncols_, (t + 1) * group_);
                for (int64_t c = t * group_; c < c1; ++c) {
                    w.column(c, 0, units_, &acc[static_cast<size_t>(c * width_)]);
                    done.fetch_add(units_ * width_, std::memory_order_relaxed);
                }
            });
        } else {
            const int64_t ntasks = ncols_ * splits_;
            std::vector<Acc> slots(static_cast<size_t>(std::min(kWaveTasks, ntasks) * width_), Acc{});
            for (int64_t w0 = 0; w0 < ntasks && !cancel.load(); w0 += kWaveTasks) {
                const int64_t nw = std::min(kWaveTasks, ntasks - w0);
                std::fill(slots.begin(), slots.begin() + nw * width_, Acc{});
                run_tasks(nw, workers, cancel, poll, [&](int64_t t, Worker& w) {
                    const int64_t task = w0 + t, c = task / splits_, s = task % splits_;
                    const int64_t u0 = s * units_per_task_, u1 = std::min(units_, u0 + units_per_task_);
                    w.column(c, u0, u1, &slots[static_cast<size_t>(t * width_)]);
                    done.fetch_add((u1 - u0) * width_, std::memory_order_relaxed);
                });
                for (int64_t t = 0; t < nw; ++t) {
                    const int64_t c = (w0 + t) / splits_;
                    for (int64_t l = 0; l < width_; ++l)
                        acc[c * width_ + l] = combine_weighted(acc[c * width_ + l], slots[t * width_ + l]);
                }
                poll();
            }
        }
        if (cancel.load()) return Status::Cancelled;
        bool bad = false;
        for (const auto& w : workers) bad = bad || w->bad();
        *bad_weights = bad;
        scatter(acc, out);
        return Status::Ok;
    }

private:
    class Worker {
    public:
        explicit Worker(const WeightedReducer& r)
            : r_(r), rows_(r.later_units_), wrows_(r.later_units_), w_(kExact ? 0 : r.later_units_),
              iw_(kExact ? r.later_units_ : 0), row_lanes_(kExact ? 0 : r.width_), elem_lanes_(kExact ? 0 : r.width_),
              int_lanes_(kExact ? r.width_ : 0) {}

        bool bad() const { return bad_ || elem_lanes_.bad || int_lanes_.bad; }

        void column(int64_t c, int64_t u0, int64_t u1, Acc* acc) {
            if constexpr (kExact) exact_column(c, u0, u1, acc);
            else float_column(c, u0, u1, acc);
        }

    private:
        // Integer data, integer weights: exact sums, chunk by chunk (any chunking gives the same sums).
        void exact_column(int64_t c, int64_t u0, int64_t u1, WeightedIntegerSums* acc) {
            const PairPlan& p = r_.plan_;
            Cursor cur = r_.cursor(c, u0);
            Odometer &rows = cur.rows, &wrows = cur.wrows;
            const char *base = cur.base, *wbase = cur.wbase;
            if (p.lanes_mode) {
                const int64_t width = cur.width;
                for (int64_t r0 = u0; r0 < u1;) {
                    const int64_t n = std::min(r_.later_units_, u1 - r0);
                    r0 += n;
                    if (p.wlane_stride == 0) {  // one weight per row: keep the rows of positive weight
                        int64_t k = 0;
                        for (int64_t i = 0; i < n; ++i, rows.next(), wrows.next()) {
                            const int64_t w = integer_weight_at<Wt>(wbase + wrows.offset());
                            bad_ = bad_ || w < 0;
                            if (w > 0) rows_[k] = base + rows.offset(), iw_[k] = static_cast<uint64_t>(w), ++k;
                        }
                        int_lanes_.rows_chunk(rows_.data(), iw_.data(), k, width, p.lane_stride, acc);
                    } else {
                        for (int64_t i = 0; i < n; ++i, rows.next(), wrows.next())
                            rows_[i] = base + rows.offset(), wrows_[i] = wbase + wrows.offset();
                        int_lanes_.elements_chunk(rows_.data(), wrows_.data(), n, width, p.lane_stride, p.wlane_stride,
                                                  acc);
                    }
                }
            } else {
                const int64_t L = p.run_length, st = p.run_stride, ws = p.wrun_stride;
                int64_t& pos = cur.pos;
                for (int64_t e0 = u0; e0 < u1; e0 += r_.chunk_units_) {
                    const int64_t n = std::min(u1, e0 + r_.chunk_units_) - e0;
                    WeightedIntegerRun<T, Wt> k;
                    auto walk = [&](Odometer& o, Odometer& wo, int64_t& q, bool wide) {
                        for (int64_t left = n; left > 0;) {
                            const int64_t m = std::min(left, L - q);
                            const char* x = base + o.offset() + q * st;
                            const char* w = wbase + wo.offset() + q * ws;
                            if (wide) k.run_wide(x, w, m, st, ws);
                            else k.run(x, w, m, st, ws);
                            left -= m;
                            q += m;
                            if (q == L) q = 0, o.next(), wo.next();
                        }
                    };
                    Odometer again(rows), wagain(wrows);
                    int64_t again_pos = pos;
                    walk(rows, wrows, pos, false);
                    if (k.exact()) {
                        k.add_fast_to(acc[0]);
                        continue;
                    }
                    walk(again, wagain, again_pos, true);  // some sum may have wrapped: the wide sums
                    k.sums.add_to(acc[0]);
                    bad_ = bad_ || k.bad();
                }
            }
        }

        void float_column(int64_t c, int64_t u0, int64_t u1, WeightedState* acc) {
            const PairPlan& p = r_.plan_;
            const double* shift = &r_.col_shift_[static_cast<size_t>(c * r_.width_)];
            Cursor cur = r_.cursor(c, u0);
            Odometer &rows = cur.rows, &wrows = cur.wrows;
            const char *base = cur.base, *wbase = cur.wbase;
            if (p.lanes_mode) {
                const int64_t width = cur.width;
                const bool contig = p.lane_stride == static_cast<int64_t>(sizeof(T));
                for (int64_t r0 = u0; r0 < u1;) {
                    const int64_t n = std::min(r0 == u0 ? r_.chunk_units_ : r_.later_units_, u1 - r0);
                    r0 += n;
                    if (p.wlane_stride == 0) {  // one weight per row: keep the rows of positive weight
                        int64_t k = 0;
                        for (int64_t i = 0; i < n; ++i, rows.next(), wrows.next()) {
                            const double w = weight_at<Wt>(wbase + wrows.offset());
                            bad_ = bad_ || !valid_weight(w);
                            if (w > 0.0) rows_[k] = base + rows.offset(), w_[k] = w, ++k;
                        }
                        row_lanes_.chunk(rows_.data(), w_.data(), k, width, p.lane_stride, contig, acc, shift);
                    } else {
                        for (int64_t i = 0; i < n; ++i, rows.next(), wrows.next())
                            rows_[i] = base + rows.offset(), wrows_[i] = wbase + wrows.offset();
                        const bool vec = contig && p.wlane_stride == static_cast<int64_t>(sizeof(Wt));
                        elem_lanes_.chunk(rows_.data(), wrows_.data(), n, width, p.lane_stride, p.wlane_stride,
                                          vec, acc, shift);
                    }
                }
            } else {
                const int64_t L = p.run_length, st = p.run_stride, ws = p.wrun_stride;
                int64_t& pos = cur.pos;
                for (int64_t e0 = u0; e0 < u1; e0 += r_.chunk_units_) {
                    const int64_t n = std::min(u1, e0 + r_.chunk_units_) - e0;
                    WeightedRun<T, Wt, Omit> k;
                    auto walk = [&](Odometer& o, Odometer& wo, int64_t& q) {
                        int64_t left = n;
                        while (left > 0) {
                            const int64_t m = std::min(left, L - q);
                            k.run(base + o.offset() + q * st, wbase + wo.offset() + q * ws, m, st, ws);
                            left -= m;
                            q += m;
                            if (q == L) q = 0, o.next(), wo.next();
                        }
                    };
                    const double running = running_shift(acc[0], shift[0]);
                    // A fresh chunk is summed again around its own mean (resum): a probe of its first values
                    // will do, bounded so that a masked column costs no scan of every chunk.
                    k.start(std::isnan(running)
                                ? r_.first_in_run(base, wbase, rows, wrows, pos, std::min(n, kShiftSearchValues))
                                : running);
                    Odometer again(rows), wagain(wrows);
                    int64_t again_pos = pos;
                    walk(rows, wrows, pos);
                    const double better = k.better_shift(std::isnan(running));
                    if (!std::isnan(better)) {
                        k.start(better);
                        walk(again, wagain, again_pos);
                    }
                    acc[0] = combine_weighted(acc[0], k.finish_chunk(shift[0]));
                    bad_ = bad_ || k.bad;
                }
            }
        }

        // The float kernels' weight type: int64 weights reach them only with integer data,
        // which takes exact_column (this keeps the float kernels' instantiations to their types).
        using FloatWt = std::conditional_t<std::is_same_v<Wt, int64_t>, double, Wt>;

        const WeightedReducer& r_;
        std::vector<const char*> rows_, wrows_;
        std::vector<double> w_;
        std::vector<uint64_t> iw_;
        RowWeightedLanes<T, Omit> row_lanes_;
        ElementWeightedLanes<T, FloatWt, Omit> elem_lanes_;
        WeightedIntegerLanes<T, Wt> int_lanes_;
        bool bad_ = false;
    };

    // Where column c's values and weights start and how the walk goes on from unit u0: lanes mode
    // (the `width` lanes of a column block, rows from row u0), run mode (position `pos` in the run
    // of row u0 / run_length). Both column walks (exact and float) start here.
    struct Cursor {
        const char* base;
        const char* wbase;
        int64_t width;
        Odometer rows, wrows;
        int64_t pos;
    };
    Cursor cursor(int64_t c, int64_t u0) const {
        const PairPlan& p = plan_;
        Odometer cols(p.columns), wcols(p.wcolumns), rows(p.rows), wrows(p.wrows);
        if (p.lanes_mode) {
            cols.seek(c / lane_blocks_), wcols.seek(c / lane_blocks_);
            const int64_t lane0 = (c % lane_blocks_) * kMaxLanes;
            rows.seek(u0), wrows.seek(u0);
            return Cursor{data_ + cols.offset() + lane0 * p.lane_stride, weights_ + wcols.offset() + lane0 * p.wlane_stride,
                          std::min(kMaxLanes, p.lanes - lane0), rows, wrows, 0};
        }
        cols.seek(c), wcols.seek(c);
        rows.seek(u0 / p.run_length), wrows.seek(u0 / p.run_length);
        return Cursor{data_ + cols.offset(), weights_ + wcols.offset(), 1, rows, wrows, u0 % p.run_length};
    }

    void scatter(const std::vector<Acc>& acc, WeightedState* out) const {
        if constexpr (kExact) exact_scatter(acc, out);
        else float_scatter(acc, out);
    }

    // Calls f(output, lane state index, first) for every lane state, in lane order within each
    // output; first: the output's first lane (folded lanes, lane_ostride 0, share one output).
    template <class F>
    void for_each_lane(F&& f) const {
        const PairPlan& p = plan_;
        Odometer cols(p.columns);
        for (int64_t c = 0; c < ncols_; ++c) {
            if (!p.lanes_mode) {
                cols.seek(c);
                f(p.base_out + cols.out(), c, true);
                continue;
            }
            cols.seek(c / lane_blocks_);
            const int64_t lane0 = (c % lane_blocks_) * kMaxLanes;
            const int64_t width = std::min(kMaxLanes, p.lanes - lane0);
            for (int64_t l = 0; l < width; ++l)
                f(p.base_out + cols.out() + (lane0 + l) * p.lane_ostride, c * width_ + l,
                  p.lane_ostride != 0 || lane0 + l == 0);
        }
    }

    // Exact sums -> output states: the lanes of one output add up, and each output rounds once.
    void exact_scatter(const std::vector<WeightedIntegerSums>& acc, WeightedState* out) const {
        std::vector<Acc> merged(static_cast<size_t>(plan_.out_size), Acc{});
        for_each_lane([&](int64_t o, int64_t i, bool) {
            merged[static_cast<size_t>(o)] = combine_weighted(merged[static_cast<size_t>(o)], acc[static_cast<size_t>(i)]);
        });
        for (int64_t o = 0; o < plan_.out_size; ++o) out[o] = finish(merged[static_cast<size_t>(o)]);
    }

    // Column states -> output states, back from the column shifts; folded lanes merge into their
    // output in lane order.
    void float_scatter(const std::vector<WeightedState>& acc, WeightedState* out) const {
        auto state = [&](int64_t i) {
            WeightedState s = acc[static_cast<size_t>(i)];
            const double lo = s.mean_lo;
            set_mean(s, col_shift_[static_cast<size_t>(i)], s.mean);
            s.mean_lo += lo;
            return s.count == 0 ? WeightedState{} : s;
        };
        for_each_lane([&](int64_t o, int64_t i, bool first) {
            out[o] = first ? state(i) : combine_weighted(out[o], state(i));
        });
    }

    const char* data_;
    const char* weights_;
    const PairPlan& plan_;
    std::vector<double> col_shift_;
    int64_t lane_blocks_ = 1, width_ = 1, ncols_ = 1, units_ = 0, chunk_units_ = 1, later_units_ = 1;
    int64_t units_per_task_ = 1;
    int64_t splits_ = 1, group_ = 1;
};

// ---- one weight per output ----------------------------------------------------------------------
// Weights constant along every reduced axis (one weight or mask value per output, such as where=
// of shape (1, d) on (n, d) data, or per-row weights under axis=0): an output's weighted state is
// its unweighted state with the weight w applied (mean unchanged; m2 and wsum times w, w2sum times
// w^2), or empty where w == 0. One pass of the unweighted kernel instead of the weighted kernel
// reading a weight per value: (65536, 256) float32 with where= of shape (1, 256) ran at 0.53-0.55
// of the read loop through the weighted kernel. Masked outputs are reduced and then dropped (what
// they hold, NaN or infinite, does not count). The TF op runs this same driver.
inline bool weights_per_output(int ndim, const int64_t* shape, const int64_t* wstrides, const bool* keep) {
    for (int i = 0; i < ndim; ++i)
        if (shape[i] <= 0 || (!keep[i] && shape[i] > 1 && wstrides[i] != 0)) return false;  // empty: the plan's error
    return true;
}

// Integer weights above 2^53 have no exact double: this route (which applies a double) declines
// them (returns false) and the exact weighted kernel takes the array.
template <class Wt>
inline bool reduce_per_output_weights(const void* data, DType dtype, int ndim, const int64_t* shape,
                                      const int64_t* strides, const char* weights, const int64_t* wstrides,
                                      const bool* keep, WeightedState* out, bool* bad_weights,
                                      const ReduceOptions& opt, Status* status) {
    // The outputs in C order of the kept axes, as reduce() writes them, and their weights.
    std::vector<int64_t> size, wstride;
    for (int i = 0; i < ndim; ++i)
        if (keep[i]) size.push_back(shape[i]), wstride.push_back(wstrides[i]);
    int64_t outputs = 1;
    for (int64_t n : size) outputs *= n;
    std::vector<double> w(static_cast<size_t>(outputs));
    std::vector<int64_t> index(size.size(), 0);
    int64_t offset = 0;
    *status = Status::Ok;
    for (int64_t o = 0; o < outputs; ++o) {
        w[static_cast<size_t>(o)] = weight_at<Wt>(weights + offset);
        if (!valid_weight(w[static_cast<size_t>(o)])) {
            *bad_weights = true;
            return true;
        }
        if constexpr (std::is_same_v<Wt, int64_t>) {
            if (w[static_cast<size_t>(o)] > 0x1p53) return false;
        }
        for (size_t k = size.size(); k-- > 0;) {  // the next output: last kept axis fastest
            offset += wstride[k];
            if (++index[k] < size[k]) break;
            offset -= wstride[k] * size[k];
            index[k] = 0;
        }
    }
    std::vector<MomentState> states(static_cast<size_t>(outputs));
    *status = reduce(data, dtype, ndim, shape, strides, keep, states.data(), opt);
    if (*status != Status::Ok) return true;
    for (int64_t o = 0; o < outputs; ++o) {
        const double wo = w[static_cast<size_t>(o)];
        const MomentState& s = states[static_cast<size_t>(o)];
        out[o] = (wo > 0.0 && s.count > 0) ? as_weighted(s, wo) : WeightedState{};
    }
    return true;
}

// Reduces `data` weighted by `weights` (same shape, its own byte strides; 0 for broadcast axes)
// over the axes with keep[i] == false. *bad_weights: some weight was negative, NaN or infinite.
// Int64 weights need integer data (std::invalid_argument otherwise).
inline Status reduce_weighted(const void* data, DType dtype, int ndim, const int64_t* shape, const int64_t* strides,
                              const void* weights, WeightType wtype, const int64_t* wstrides, const bool* keep,
                              WeightedState* out, bool* bad_weights, const ReduceOptions& opt) {
    const ExactFloatScope exact;  // the calling thread too (see float_env.hpp)
    const char* w = static_cast<const char*>(weights);
    *bad_weights = false;
    const bool integer_data = visit_dtype(dtype, [](auto tag) { return element_traits<decltype(tag)>::exact_integer; });
    if (wtype == WeightType::Int64 && !integer_data)
        throw std::invalid_argument("int64 weights (exact integer sums) need integer data");
    if (weights_per_output(ndim, shape, wstrides, keep)) {
        auto route = [&](auto wtag) {
            Status st = Status::Ok;
            return reduce_per_output_weights<decltype(wtag)>(data, dtype, ndim, shape, strides, w, wstrides, keep,
                                                             out, bad_weights, opt, &st)
                       ? std::optional<Status>(st) : std::nullopt;
        };
        std::optional<Status> st;
        switch (wtype) {
            case WeightType::Float32: st = route(float{}); break;
            case WeightType::Mask: st = route(bool{}); break;
            case WeightType::Int64: st = route(int64_t{}); break;
            default: st = route(double{}); break;
        }
        if (st) return *st;
    }
    const PairPlan plan = make_pair_plan(ndim, shape, strides, wstrides, keep);
    return visit_dtype(dtype, [&](auto tag) -> Status {
        using T = decltype(tag);
        const char* p = static_cast<const char*>(data);
        auto go = [&](auto wtag) -> Status {
            using Wt = decltype(wtag);
            if constexpr (!element_traits<T>::exact_integer) {
                if constexpr (std::is_same_v<Wt, int64_t>) {
                    return Status::Ok;  // unreachable: refused above
                } else {
                    if (opt.nan_policy == NanPolicy::Omit)
                        return WeightedReducer<T, Wt, true>(p, w, plan).run(out, bad_weights, opt);
                    return WeightedReducer<T, Wt, false>(p, w, plan).run(out, bad_weights, opt);
                }
            } else {
                return WeightedReducer<T, Wt, false>(p, w, plan).run(out, bad_weights, opt);
            }
        };
        switch (wtype) {
            case WeightType::Float32: return go(float{});
            case WeightType::Mask: return go(bool{});
            case WeightType::Int64: return go(int64_t{});
            default: return go(double{});
        }
    });
}

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
