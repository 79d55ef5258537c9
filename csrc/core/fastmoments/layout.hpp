// Turns an N-d strided array plus "which axes keep statistics" into a small loop plan.
//
// The plan is independent of the thread count: it fixes the chunk and task grid, so every thread
// count merges the same partial states in the same order and gets the same bits.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.hpp"

namespace fastmoments {
inline namespace FM_ISA_NAMESPACE {

struct LoopAxis {
    int64_t size = 1;
    int64_t stride = 0;   // bytes
    int64_t ostride = 0;  // output elements; only kept axes have one
    bool kept = false;
};

// Axes of size > 1 in a plan: more would mean more than 2^64 values.
constexpr size_t kMaxLoopAxes = 64;

// Odometer over a list of axes: yields the byte offset of consecutive multi-indices. Holds no heap
// memory, so workers may make and copy them inside a parallel region.
class Odometer {
public:
    explicit Odometer(const std::vector<LoopAxis>& axes) : axes_(axes) {}

    int64_t count() const {
        int64_t n = 1;
        for (const auto& a : axes_) n *= a.size;
        return n;
    }

    // Positions the odometer at flat index i (C order over the axes).
    void seek(int64_t i) {
        offset_ = 0;
        out_ = 0;
        for (size_t k = axes_.size(); k-- > 0;) {
            index_[k] = i % axes_[k].size;
            i /= axes_[k].size;
            offset_ += index_[k] * axes_[k].stride;
            out_ += index_[k] * axes_[k].ostride;
        }
    }

    void next() {
        for (size_t k = axes_.size(); k-- > 0;) {
            offset_ += axes_[k].stride;
            out_ += axes_[k].ostride;
            if (++index_[k] < axes_[k].size) return;
            offset_ -= axes_[k].stride * axes_[k].size;
            out_ -= axes_[k].ostride * axes_[k].size;
            index_[k] = 0;
        }
    }

    // out[k] = base + the offset of the next n positions, k = 0..n-1, and steps past them: a plain
    // strided loop along the innermost axis (next() per row was ~20% of the uint8 lanes time on
    // 256-byte rows: a store-forwarding chain through offset_).
    void fill(const char* base, const char** out, int64_t n) {
        if (axes_.empty()) {
            for (int64_t k = 0; k < n; ++k) out[k] = base + offset_;
            return;
        }
        const size_t last = axes_.size() - 1;
        const int64_t stride = axes_[last].stride;
        for (int64_t k = 0; k < n;) {
            const int64_t run = std::min(n - k, axes_[last].size - index_[last]);
            const char* p = base + offset_;
            for (int64_t j = 0; j < run; ++j) out[k + j] = p + j * stride;
            k += run;
            index_[last] += run - 1;
            offset_ += (run - 1) * stride;
            out_ += (run - 1) * axes_[last].ostride;
            next();
        }
    }

    int64_t offset() const { return offset_; }
    int64_t out() const { return out_; }

private:
    const std::vector<LoopAxis>& axes_;
    std::array<int64_t, kMaxLoopAxes> index_{};
    int64_t offset_ = 0;
    int64_t out_ = 0;
};

struct Plan {
    // true: the innermost memory axis keeps statistics, and a row of `lanes` values updates
    // `lanes` separate states (vectorised across lanes). false: the innermost axis is reduced, and
    // runs of `run_length` values update one state (vectorised along the run).
    bool lanes_mode = false;
    int64_t lanes = 1;         // lanes_mode: values per row after folding
    int64_t lane_stride = 0;   // bytes between lanes
    int64_t lane_period = 1;   // lane j feeds output lane j % lane_period (folding, see below)
    int64_t lane_ostride = 0;  // output stride of an output lane
    int64_t run_length = 1;    // !lanes_mode: values per run
    int64_t run_stride = 0;    // bytes between values of a run
    std::vector<LoopAxis> columns;  // kept axes outside the inner one: independent columns
    std::vector<LoopAxis> rows;     // reduced axes outside the inner one
    int64_t base_offset = 0;        // bytes; moved to the far end of axes with negative strides
    int64_t base_out = 0;
    int64_t out_size = 1;
    int64_t reduced_count = 1;      // values reduced into each output
};

constexpr int64_t kMaxLanes = 1024;   // lanes per column block: accumulators stay in L1
constexpr int64_t kFoldTarget = 64;   // fold short kept rows up to at least this many lanes
// ... and at most this many: per-lane sums (12 ints per 8-bit lane, 3 doubles per float lane)
// must stay inside L1. On the 2-core AMD EPYC VM (32 KiB L1d) uint8 RGB measured 0.81-0.87 of the
// read loop at 96 lanes and 0.48-0.52 at 960 (46 KB of sums); on the Intel Xeon VM (48 KiB L1d,
// AVX-512) 0.72-0.75 at 96 lanes (96-byte rows: loop overhead per row) and 0.86 at 384 (18 KB).
constexpr int64_t kFoldMaxLanes = 384;

// One array's axes, or two arrays' walked together (the data and its weights: `wstride` is the
// second array's stride of the same axis, 0 when there is none). Output strides are C order over
// the kept axes in their original order.
struct PairAxis {
    int64_t size = 1, stride = 0, wstride = 0, ostride = 0;
    bool kept = false;
};

struct OrderedAxes {
    std::vector<PairAxis> axes;  // outermost first, merged where every array continues the next
    int64_t base_offset = 0, wbase_offset = 0, base_out = 0, out_size = 1, reduced_count = 1;
};

// The one owner of the loop order: drops axes of size 1, walks negative (data) strides forwards
// from the far end (the second array and the output along with them), orders axes by the data's
// stride (stable: ties keep array order) and merges neighbours that continue one another in every
// array and in the output. Never empty: a single value is one axis of size 1.
inline OrderedAxes order_axes(int ndim, const int64_t* shape, const int64_t* strides, const int64_t* wstrides,
                              const bool* keep, const char* who) {
    OrderedAxes r;
    std::vector<int64_t> ostrides(ndim, 0);
    for (int i = ndim; i-- > 0;) {
        if (shape[i] <= 0) throw std::invalid_argument(std::string(who) + ": empty axis");
        if (keep[i]) {
            ostrides[i] = r.out_size;
            r.out_size *= shape[i];
        } else {
            r.reduced_count *= shape[i];
        }
    }
    std::vector<PairAxis> axes;
    for (int i = 0; i < ndim; ++i) {
        if (shape[i] == 1) continue;
        PairAxis a{shape[i], strides[i], wstrides ? wstrides[i] : 0, ostrides[i], keep[i]};
        if (a.stride < 0) {  // walk it forwards from the far end
            r.base_offset += (a.size - 1) * a.stride;
            r.wbase_offset += (a.size - 1) * a.wstride;
            a.stride = -a.stride;
            a.wstride = -a.wstride;
            if (a.kept) {
                r.base_out += (a.size - 1) * a.ostride;
                a.ostride = -a.ostride;
            }
        }
        axes.push_back(a);
    }
    if (axes.size() > kMaxLoopAxes)
        throw std::invalid_argument(std::string(who) + ": more than 64 axes of size > 1");
    std::stable_sort(axes.begin(), axes.end(),
                     [](const PairAxis& x, const PairAxis& y) { return x.stride > y.stride; });
    for (const auto& a : axes) {
        if (!r.axes.empty()) {
            PairAxis& m = r.axes.back();
            const bool contiguous = m.kept == a.kept && m.stride == a.stride * a.size &&
                                    m.wstride == a.wstride * a.size && (!a.kept || m.ostride == a.ostride * a.size);
            if (contiguous) {
                m.size *= a.size;
                m.stride = a.stride;
                m.wstride = a.wstride;
                m.ostride = a.ostride;
                continue;
            }
        }
        r.axes.push_back(a);
    }
    if (r.axes.empty()) r.axes.push_back(PairAxis{1, 0, 0, 0, false});
    return r;
}

// shape/strides: the array; keep[i]: axis i keeps statistics. All sizes must be > 0.
inline Plan make_plan(int ndim, const int64_t* shape, const int64_t* strides, const bool* keep) {
    Plan plan;
    const OrderedAxes ordered = order_axes(ndim, shape, strides, nullptr, keep, "make_plan");
    plan.base_offset = ordered.base_offset;
    plan.base_out = ordered.base_out;
    plan.out_size = ordered.out_size;
    plan.reduced_count = ordered.reduced_count;
    std::vector<LoopAxis> merged;
    for (const auto& a : ordered.axes) merged.push_back(LoopAxis{a.size, a.stride, a.ostride, a.kept});

    const LoopAxis inner = merged.back();
    merged.pop_back();
    if (inner.kept) {
        plan.lanes_mode = true;
        plan.lanes = inner.size;
        plan.lane_stride = inner.stride;
        plan.lane_period = inner.size;
        plan.lane_ostride = inner.ostride;
        // Folding: a short kept row (e.g. 3 RGB channels) directly inside a reduced axis that
        // continues it in memory is read as f rows at once, f * 3 lanes wide; lane j feeds
        // channel j % 3 and the f partial states per channel are merged at the end.
        if (inner.size < kFoldTarget && !merged.empty() && !merged.back().kept &&
            merged.back().stride == inner.size * inner.stride) {
            LoopAxis& outer = merged.back();
            // Largest fold dividing the outer axis; prefer rows of whole 32-byte vectors.
            int64_t fold = 1, aligned_fold = 1;
            for (int64_t f = std::min<int64_t>(outer.size, kFoldMaxLanes / inner.size); f > 1; --f) {
                if (outer.size % f != 0) continue;
                if (fold == 1) fold = f;
                if ((f * inner.size * inner.stride) % 32 == 0) {
                    aligned_fold = f;
                    break;
                }
            }
            if (aligned_fold > 1 && aligned_fold * inner.size >= std::min(kFoldTarget, fold * inner.size))
                fold = aligned_fold;
            if (fold > 1) {
                plan.lanes = inner.size * fold;
                outer.size /= fold;
                outer.stride *= fold;
                if (outer.size == 1) merged.pop_back();
            }
        }
    } else {
        plan.run_length = inner.size;
        plan.run_stride = inner.stride;
    }
    for (const auto& a : merged) (a.kept ? plan.columns : plan.rows).push_back(a);
    return plan;
}

}  // namespace FM_ISA_NAMESPACE
}  // namespace fastmoments
