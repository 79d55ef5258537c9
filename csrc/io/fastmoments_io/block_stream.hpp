// Streams an array stored raw in a file through the chunk kernel with bounded memory.
//
// The file is cut (by the caller, from the file's shape alone) into pieces: C-contiguous runs of
// whole slices along one "split" axis. One reader thread pread()s the pieces in order into a small
// ring of aligned buffers, a few workers reduce them with the ISA-dispatched kernel (one piece per
// worker), and the piece states are merged with `combine` strictly in piece order, so the result
// does not depend on the number of threads. pread gives short reads on a truncated file where a
// memory map would raise SIGBUS; pages this reader brought into the page cache are released once
// consumed, pages that were cached before stay cached. No Python here: the caller polls.
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fastmoments/dtypes.hpp>
#include <fastmoments/reduce.hpp>
#include <fastmoments/state.hpp>

#include "mapped_file.hpp"

namespace fastmoments::io {

// Kernel entry point (fastmoments::isa::ReduceFn).
using ReduceFn = Status (*)(const void*, DType, int, const int64_t*, const int64_t*, const bool*,
                            MomentState*, const ReduceOptions&);

// One C-contiguous piece: `rows` slices of the split axis starting at byte `offset` of the file;
// its states are merged into out[out_base, out_base + states).
struct Piece {
    int64_t offset = 0;
    int64_t rows = 0;
    int64_t out_base = 0;
};

struct StreamSpec {
    std::string path;                 // the file, or only its name in messages when fd >= 0
    int fd = -1;                      // an open descriptor to read instead of opening path (not closed)
    DType dtype = DType::Float64;
    bool byteswap = false;            // file stored in the other byte order
    std::vector<int64_t> tail;        // sizes of the axes after the split axis
    std::vector<char> keep;           // keep flags: split axis, then the tail axes
    std::vector<Piece> pieces;
    int64_t out_size = 0;
    int threads = 1;
    NanPolicy nan_policy = NanPolicy::Propagate;
    bool sequential = true;           // pieces in increasing file order (read-ahead hint)
    double read_delay = 0.0;          // seconds slept per piece by the reader (tests only)
    // Thread: one reader thread fills a ring of workers + 2 buffers while the workers compute
    // (disk-bound reads stay one sequential stream). Workers: each worker preads its own piece into
    // its own buffer (copies from the page cache scale with the workers) and hints the kernel to
    // fetch the piece `workers` ahead. Map: as Workers, but pieces that are in the page cache are
    // reduced straight from a memory map of the file (no copy; see mapped_file.hpp for truncation).
    // Auto: Map when most of the data is cached (Workers for byte-swapped files), else Thread.
    // The result is the same in every mode.
    enum class ReaderMode : int { Auto = 0, Thread = 1, Workers = 2, Map = 3 };
    ReaderMode reader_mode = ReaderMode::Auto;
};

struct StreamResult {
    enum Kind { Ok = 0, OsError = 1, Truncated = 2, Cancelled = 3 } kind = Ok;
    int err = 0;
    std::string message;
};

class BlockStream {
public:
    using Poll = std::function<bool(int64_t done_bytes, int64_t total_bytes)>;

    BlockStream(const StreamSpec& spec, ReduceFn reduce) : s_(spec), reduce_(reduce) {
        item_ = dtype_itemsize(s_.dtype);
        slice_bytes_ = item_;
        for (int64_t n : s_.tail) slice_bytes_ *= n;
        inner_states_ = 1;
        for (size_t i = 0; i < s_.tail.size(); ++i)
            if (s_.keep[i + 1]) inner_states_ *= s_.tail[i];
        for (const Piece& p : s_.pieces) {
            max_rows_ = std::max(max_rows_, p.rows);
            total_bytes_ += p.rows * slice_bytes_;
        }
        page_ = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;
    }

    int64_t total_bytes() const { return total_bytes_; }

    // Runs the pipeline; `poll` is called from this thread about every poll_seconds and once at the
    // end; returning false cancels. Writes out[0, out_size).
    StreamResult run(MomentState* out, const Poll& poll, double poll_seconds) {
        StreamResult res;
        const int64_t n = static_cast<int64_t>(s_.pieces.size());
        for (int64_t i = 0; i < s_.out_size; ++i) out[i] = MomentState{};
        if (n == 0) return res;
        // O_NONBLOCK: a FIFO or device must not block the open; it is refused just below.
        fd_ = s_.fd >= 0 ? ::fcntl(s_.fd, F_DUPFD_CLOEXEC, 0)
                         : ::open(s_.path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd_ < 0) return os_error(errno, "cannot open");
        struct FdCloser {
            int& fd;
            ~FdCloser() { if (fd >= 0) ::close(fd), fd = -1; }
        } closer{fd_};
        struct stat st;
        if (::fstat(fd_, &st) != 0) return os_error(errno, "cannot stat");
        if (!S_ISREG(st.st_mode)) return os_error(EINVAL, "not a regular file:");
        int64_t end = 0;
        for (const Piece& p : s_.pieces) end = std::max(end, p.offset + p.rows * slice_bytes_);
        if (static_cast<int64_t>(st.st_size) < end)
            return truncated(end, static_cast<int64_t>(st.st_size));
        ::posix_fadvise(fd_, 0, 0, s_.sequential ? POSIX_FADV_SEQUENTIAL : POSIX_FADV_RANDOM);

        // Workers: one piece each with a 1-thread kernel (buffers stay cache-sized); a single worker
        // with the kernel's own threads when per-piece states would be large (huge kept shapes).
        const int64_t piece_states = (s_.keep[0] ? max_rows_ : 1) * inner_states_;
        const int threads = std::max(1, s_.threads);
        // Each worker holds a piece buffer: more workers than CPUs add memory, not speed, so the
        // buffers stay bounded whatever `threads` asks (the bits never depend on the count).
        const int64_t cpus = std::max(1u, std::thread::hardware_concurrency());
        int workers = static_cast<int>(std::min<int64_t>(std::min<int64_t>(threads, n), cpus));
        // Finished pieces wait in a window of result slots until the pieces before them are merged.
        if (static_cast<int64_t>(sizeof(MomentState)) * piece_states * 4 * workers > (int64_t(64) << 20))
            workers = 1;
        inner_threads_ = workers == 1 ? threads : 1;
        workers_ = workers;
        window_ = workers == 1 ? 1 : 4 * workers;
        try {
            results_.assign(static_cast<size_t>(window_) * static_cast<size_t>(piece_states), MomentState{});
        } catch (const std::bad_alloc&) {
            return os_error(ENOMEM, "cannot allocate piece states for");
        }
        result_ready_.assign(window_, 0);
        result_for_.resize(window_);
        for (int i = 0; i < window_; ++i) result_for_[i] = i;
        merging_ = false;
        release_off_ = release_len_ = 0;
        find_cached_pieces(static_cast<int64_t>(st.st_size));
        reader_thread_ = s_.reader_mode == StreamSpec::ReaderMode::Thread;
        use_map_ = s_.reader_mode == StreamSpec::ReaderMode::Map;
        if (s_.reader_mode == StreamSpec::ReaderMode::Auto) {
            int64_t cached = 0;
            for (int64_t k = 0; k < n; ++k)
                if (was_cached_[k]) cached += s_.pieces[k].rows * slice_bytes_;
            reader_thread_ = 2 * cached < total_bytes_;
            use_map_ = !reader_thread_;
        }
        // A failed map (address space, no free slot) falls back to reading.
        use_map_ = use_map_ && !s_.byteswap && mapped_.map(fd_, end) == 0;
        nslots_ = reader_thread_ ? workers + 2 : workers;
        const int64_t buf_bytes = round_up(std::max<int64_t>(1, max_rows_ * slice_bytes_), page_);
        buffers_.clear();
        for (int i = 0; i < nslots_; ++i) {
            void* p = std::aligned_alloc(static_cast<size_t>(page_), static_cast<size_t>(buf_bytes));
            if (!p) return os_error(ENOMEM, "cannot allocate read buffers");
            buffers_.emplace_back(static_cast<char*>(p), &std::free);
        }
        slot_ready_.assign(nslots_, -1);
        slot_free_for_.resize(nslots_);
        for (int i = 0; i < nslots_; ++i) slot_free_for_[i] = i;
        next_work_ = 0;
        merged_ = 0;
        done_bytes_ = 0;
        cancel_ = false;
        failure_ = StreamResult{};

        std::vector<std::thread> pool;
        if (reader_thread_) pool.emplace_back([this, n] { reader(n); });
        for (int w = 0; w < workers; ++w)
            pool.emplace_back([this, n, out, piece_states, w] { worker(n, out, piece_states, w); });

        bool cancelled = false;
        auto wait = std::chrono::duration<double>(std::max(0.001, poll_seconds));
        for (;;) {
            int64_t done;
            {
                std::unique_lock<std::mutex> lock(mu_);
                driver_cv_.wait_for(lock, wait, [&] { return merged_ == n || failure_.kind != StreamResult::Ok; });
                if (merged_ == n || failure_.kind != StreamResult::Ok) break;
                done = done_bytes_;
            }
            if (!poll(done, total_bytes_)) {
                cancelled = true;
                break;
            }
        }
        {
            std::lock_guard<std::mutex> lock(mu_);
            cancel_ = true;
        }
        wake_all();
        for (auto& t : pool) t.join();
        mapped_.unmap();
        // Second pass: pages still queued on another CPU's LRU list escaped the first DONTNEED.
        for (int64_t k = 0; k < n; ++k)
            if (!was_cached_[k]) {
                int64_t a, l;
                page_range(s_.pieces[k].offset, s_.pieces[k].rows * slice_bytes_, a, l);
                ::posix_fadvise(fd_, a, l, POSIX_FADV_DONTNEED);
            }
        if (failure_.kind != StreamResult::Ok) return failure_;
        if (cancelled) {
            res.kind = StreamResult::Cancelled;
            return res;
        }
        poll(total_bytes_, total_bytes_);
        return res;
    }

private:
    static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

    StreamResult os_error(int err, const std::string& what) const {
        StreamResult r;
        r.kind = StreamResult::OsError;
        r.err = err;
        r.message = what + " " + s_.path + ": " + std::strerror(err);
        return r;
    }

    StreamResult truncated(int64_t need, int64_t have) const {
        StreamResult r;
        r.kind = StreamResult::Truncated;
        r.message = "file " + s_.path + " is truncated: its data needs " + std::to_string(need) +
                    " bytes but the file has " + std::to_string(have);
        return r;
    }

    void fail(StreamResult r) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (failure_.kind == StreamResult::Ok) failure_ = std::move(r);
            cancel_ = true;
        }
        wake_all();
    }

    void wake_all() {
        reader_cv_.notify_all();
        worker_cv_.notify_all();
        driver_cv_.notify_all();
    }

    // Page-aligned range covering [off, off + len).
    void page_range(int64_t off, int64_t len, int64_t& a, int64_t& l) const {
        a = off / page_ * page_;
        l = round_up(off + len, page_) - a;
    }

    // was_cached_[k]: every page of piece k was in the page cache before this run. Decided up
    // front because the kernel's read-ahead (often several MiB) fills later pieces while earlier
    // ones are read. cachestat (Linux 6.5+) counts a piece's cached pages folio by folio; older
    // kernels get mincore on an untouched mapping (a lookup per page), which reads nothing, so a
    // concurrently truncated file cannot fault there; windows of at most 256 MiB bound its vector.
    void find_cached_pieces(int64_t file_size) {
        const int64_t n = static_cast<int64_t>(s_.pieces.size());
        was_cached_.assign(static_cast<size_t>(n), 0);
        if (cached_by_cachestat()) return;
        const int64_t file_end = round_up(file_size, page_);
        std::vector<unsigned char> vec;
        int64_t wa = 0, wb = 0;  // current window [wa, wb), page aligned
        bool have = false;
        for (int64_t k = 0; k < n; ++k) {
            int64_t a, l;
            page_range(s_.pieces[k].offset, s_.pieces[k].rows * slice_bytes_, a, l);
            if (l <= 0) { was_cached_[k] = 1; continue; }
            if (!have || a < wa || a + l > wb) {
                wa = a;
                wb = std::min(file_end, a + std::max<int64_t>(l, int64_t(256) << 20));
                have = wb > wa;
                vec.assign(static_cast<size_t>(std::max<int64_t>(0, (wb - wa) / page_)), 0);
                if (have) {
                    void* p = ::mmap(nullptr, static_cast<size_t>(wb - wa), PROT_READ, MAP_SHARED, fd_, wa);
                    if (p == MAP_FAILED) {
                        have = false;
                    } else {
                        if (::mincore(p, static_cast<size_t>(wb - wa), vec.data()) != 0) have = false;
                        ::munmap(p, static_cast<size_t>(wb - wa));
                    }
                }
                if (!have) continue;  // unknown: treat as not cached (released after use)
            }
            bool all = true;
            for (int64_t i = (a - wa) / page_, e = (a + l - wa) / page_; all && i < e; ++i) all = (vec[i] & 1) != 0;
            was_cached_[k] = all;
        }
    }

    // false when the kernel has no cachestat (or a sandbox forbids it).
    bool cached_by_cachestat() {
#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
        struct Range { uint64_t off, len; };
        struct Stat { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; };
        constexpr long kCachestat = 451;  // same number on x86_64 and arm64
        const int64_t n = static_cast<int64_t>(s_.pieces.size());
        for (int64_t k = 0; k < n; ++k) {
            int64_t a, l;
            page_range(s_.pieces[k].offset, s_.pieces[k].rows * slice_bytes_, a, l);
            if (l <= 0) { was_cached_[k] = 1; continue; }
            Range r{static_cast<uint64_t>(a), static_cast<uint64_t>(l)};
            Stat st{};
            if (::syscall(kCachestat, fd_, &r, &st, 0) != 0) {
                if (k == 0) return false;
                continue;  // unknown: not cached
            }
            was_cached_[k] = static_cast<int64_t>(st.nr_cache) * page_ >= l;
        }
        return true;
#else
        return false;
#endif
    }

    void reader(int64_t n) {
        auto piece_bytes = [&](int64_t k) { return s_.pieces[k].rows * slice_bytes_; };
        for (int64_t k = 0; k < n; ++k) {
            const int slot = static_cast<int>(k % nslots_);
            {
                std::unique_lock<std::mutex> lock(mu_);
                reader_cv_.wait(lock, [&] { return cancel_ || slot_free_for_[slot] == k; });
                if (cancel_) return;
            }
            // Ask for the next piece now so the disk works while this one is copied.
            if (k + 1 < n && !was_cached_[k + 1])
                ::posix_fadvise(fd_, s_.pieces[k + 1].offset, piece_bytes(k + 1), POSIX_FADV_WILLNEED);
            if (!read_piece(k, buffers_[slot].get())) return;
            {
                std::lock_guard<std::mutex> lock(mu_);
                slot_ready_[slot] = k;
            }
            worker_cv_.notify_all();
        }
    }

    // pread of piece k into buf; false (failure recorded) on error, truncation or cancel.
    bool read_piece(int64_t k, char* buf) {
        const int64_t len = s_.pieces[k].rows * slice_bytes_;
        const int64_t off = s_.pieces[k].offset;
        int64_t got = 0;
        while (got < len) {
            const ssize_t r = ::pread(fd_, buf + got, static_cast<size_t>(len - got), off + got);
            if (r < 0) {
                if (errno == EINTR) continue;
                fail(os_error(errno, "cannot read"));
                return false;
            }
            if (r == 0) {
                fail(truncated_now(off + len));
                return false;
            }
            got += r;
        }
        return delay();
    }

    // Sleeps read_delay (tests only); false when cancelled.
    bool delay() {
        if (s_.read_delay > 0) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(s_.read_delay);
            while (std::chrono::steady_clock::now() < until) {
                if (cancel_.load()) return false;
                std::this_thread::sleep_for(std::chrono::milliseconds(2));
            }
        }
        return !cancel_.load();
    }

    StreamResult truncated_now(int64_t need) const {
        struct stat st;
        const int64_t have = ::fstat(fd_, &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
        return truncated(need, have);
    }

    void byteswap(char* p, int64_t bytes) const {
        const int64_t n = bytes / item_;
        switch (item_) {
            case 2: for (int64_t i = 0; i < n; ++i) { uint16_t v; std::memcpy(&v, p + 2 * i, 2); v = __builtin_bswap16(v); std::memcpy(p + 2 * i, &v, 2); } break;
            case 4: for (int64_t i = 0; i < n; ++i) { uint32_t v; std::memcpy(&v, p + 4 * i, 4); v = __builtin_bswap32(v); std::memcpy(p + 4 * i, &v, 4); } break;
            case 8: for (int64_t i = 0; i < n; ++i) { uint64_t v; std::memcpy(&v, p + 8 * i, 8); v = __builtin_bswap64(v); std::memcpy(p + 8 * i, &v, 8); } break;
            default: break;
        }
    }

    void worker(int64_t n, MomentState* out, int64_t piece_states, int index) {
        const int nd = 1 + static_cast<int>(s_.tail.size());
        std::vector<int64_t> shape(nd), strides(nd);
        std::unique_ptr<bool[]> keep(new bool[nd]);
        for (int i = 0; i < nd; ++i) keep[i] = s_.keep[i] != 0;
        for (int i = 1; i < nd; ++i) shape[i] = s_.tail[i - 1];
        int64_t st = item_;
        for (int i = nd; i-- > 1;) strides[i] = st, st *= shape[i];
        strides[0] = st;
        ReduceOptions opt;
        opt.threads = inner_threads_;
        opt.nan_policy = s_.nan_policy;
        for (;;) {
            const int64_t k = next_work_.fetch_add(1);
            if (k >= n) return;
            const Piece& pc = s_.pieces[k];
            const int64_t bytes = pc.rows * slice_bytes_;
            const int slot = reader_thread_ ? static_cast<int>(k % nslots_) : index;
            const int rs = static_cast<int>(k % window_);
            {
                // Result slot rs is free once piece k - window_ has been merged.
                std::unique_lock<std::mutex> lock(mu_);
                worker_cv_.wait(lock, [&] { return cancel_ || result_for_[rs] == k; });
                if (cancel_) return;
            }
            MomentState* local = results_.data() + static_cast<size_t>(rs) * static_cast<size_t>(piece_states);
            char* buf = buffers_[slot].get();
            const char* data = buf;
            const bool mapped = use_map_ && was_cached_[k];
            if (mapped) {
                if (!delay()) return;
                data = mapped_.at(pc.offset);
            } else if (reader_thread_) {
                std::unique_lock<std::mutex> lock(mu_);
                worker_cv_.wait(lock, [&] { return cancel_ || slot_ready_[slot] == k; });
                if (cancel_) return;
            } else {
                const int64_t ahead = k + workers_;
                if (ahead < n && !was_cached_[ahead])
                    ::posix_fadvise(fd_, s_.pieces[ahead].offset, s_.pieces[ahead].rows * slice_bytes_,
                                    POSIX_FADV_WILLNEED);
                if (!read_piece(k, buf)) return;
            }
            if (s_.byteswap) byteswap(buf, bytes);
            shape[0] = pc.rows;
            if (!piece_empty(k)) {
                try {
                    reduce_(data, s_.dtype, nd, shape.data(), strides.data(), keep.get(), local, opt);
                } catch (const std::exception& e) {
                    StreamResult r;
                    r.kind = StreamResult::OsError;
                    r.err = EINVAL;
                    r.message = std::string("kernel failed: ") + e.what();
                    fail(r);
                    return;
                }
            }
            if (mapped) {
                if (mapped_.faulted()) {  // the file shrank under the map: zeros were read
                    fail(truncated_now(pc.offset + bytes));
                    return;
                }
            } else if (!was_cached_[k]) {
                int64_t a, l;
                page_range(pc.offset, bytes, a, l);
                ::posix_fadvise(fd_, a, l, POSIX_FADV_DONTNEED);
            }
            {
                std::unique_lock<std::mutex> lock(mu_);
                if (reader_thread_) {
                    slot_ready_[slot] = -1;
                    slot_free_for_[slot] = k + nslots_;
                    reader_cv_.notify_all();
                }
                result_ready_[rs] = 1;
                if (!merging_) merge_ready(lock, n, out, piece_states);
            }
            worker_cv_.notify_all();
            driver_cv_.notify_all();
        }
    }

    // Drops the page-table entries of merged mapped pieces (the page cache keeps the pages), in
    // batches of 64 MiB: one call, one TLB shootdown per batch instead of per piece.
    void release_mapped(int64_t offset, int64_t len, bool last) {
        constexpr int64_t kBatch = int64_t(64) << 20;
        if (release_len_ > 0 && offset != release_off_ + release_len_) {
            mapped_.release(release_off_, release_len_);
            release_len_ = 0;
        }
        if (release_len_ == 0) release_off_ = offset;
        release_len_ += len;
        if (release_len_ >= kBatch || last) {
            mapped_.release(release_off_, release_len_);
            release_len_ = 0;
        }
    }

    bool piece_empty(int64_t k) const {
        if (s_.pieces[k].rows == 0) return true;
        for (int64_t t : s_.tail)
            if (t == 0) return true;
        return false;
    }

    // Merges finished pieces into `out` strictly in piece order (the result is the same for any
    // number of workers and any finishing order), one merger at a time, outside the lock.
    void merge_ready(std::unique_lock<std::mutex>& lock, int64_t n, MomentState* out, int64_t piece_states) {
        merging_ = true;
        while (merged_ < n && !cancel_) {
            const int64_t m = merged_;
            const int rs = static_cast<int>(m % window_);
            if (!result_ready_[rs] || result_for_[rs] != m) break;
            lock.unlock();
            const Piece& pc = s_.pieces[m];
            if (!piece_empty(m)) {
                const MomentState* local = results_.data() + static_cast<size_t>(rs) * static_cast<size_t>(piece_states);
                const int64_t nstates = (s_.keep[0] ? pc.rows : 1) * inner_states_;
                MomentState* o = out + pc.out_base;
                for (int64_t i = 0; i < nstates; ++i) o[i] = combine(o[i], local[i]);
            }
            if (use_map_ && was_cached_[m]) release_mapped(pc.offset, pc.rows * slice_bytes_, m + 1 == n);
            lock.lock();
            result_ready_[rs] = 0;
            result_for_[rs] = m + window_;
            merged_ = m + 1;
            done_bytes_ += pc.rows * slice_bytes_;
        }
        merging_ = false;
    }

    const StreamSpec& s_;
    ReduceFn reduce_;
    int64_t item_ = 1, slice_bytes_ = 1, inner_states_ = 1, max_rows_ = 0, total_bytes_ = 0, page_ = 4096;
    int fd_ = -1;
    int nslots_ = 3, inner_threads_ = 1, workers_ = 1;
    bool reader_thread_ = true, use_map_ = false, merging_ = false;
    int window_ = 1;
    int64_t release_off_ = 0, release_len_ = 0;
    std::vector<MomentState> results_;
    std::vector<char> result_ready_;
    std::vector<int64_t> result_for_;
    MappedFile mapped_;
    std::vector<std::unique_ptr<char, decltype(&std::free)>> buffers_;
    std::vector<int64_t> slot_ready_, slot_free_for_;
    std::vector<char> was_cached_;
    std::atomic<int64_t> next_work_{0};
    std::mutex mu_;
    std::condition_variable reader_cv_, worker_cv_, driver_cv_;
    int64_t merged_ = 0, done_bytes_ = 0;
    std::atomic<bool> cancel_{false};
    StreamResult failure_;
};

}  // namespace fastmoments::io
