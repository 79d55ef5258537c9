// Read-only memory map of part of a file that survives the file being truncated under it.
//
// Reading a mapped page past the end of a file that shrank raises SIGBUS. A process-wide SIGBUS
// handler checks the faulting address against the live MappedFile ranges: inside one, it maps
// anonymous zero pages over the rest of that range (so the faulting load restarts and finishes)
// and marks the range as faulted; the owner then reports the truncation instead of a result.
// Faults elsewhere go to the handler that was installed before (Python's faulthandler, for
// example) or to the default action. The handler is (re)installed on each map, so a handler set
// later by someone else still chains to it. (The JVM treats its mapped files the same way.)
#pragma once
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>

namespace fastmoments::io {

namespace sigbus_detail {

constexpr int kSlots = 64;

struct Registry {
    std::atomic<uintptr_t> begin[kSlots];
    std::atomic<uintptr_t> end[kSlots];
    std::atomic<int> faulted[kSlots];
    struct sigaction previous;
    std::atomic<bool> have_previous{false};
    uintptr_t page = 4096;
    std::mutex install_mu;
};

inline Registry& registry() {
    static Registry r{};  // zero-initialised atomics: every slot free
    return r;
}

inline void handler(int sig, siginfo_t* info, void* context) {
    Registry& r = registry();
    const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
    const uintptr_t page = r.page;
    for (int i = 0; i < kSlots; ++i) {
        const uintptr_t b = r.begin[i].load(std::memory_order_acquire);
        const uintptr_t e = r.end[i].load(std::memory_order_acquire);
        if (b == 0 || addr < b || addr >= e) continue;
        // Flag first: another thread may read the zeros as soon as they are mapped.
        r.faulted[i].store(1, std::memory_order_release);
        const uintptr_t from = addr & ~(page - 1);
        void* z = ::mmap(reinterpret_cast<void*>(from), e - from, PROT_READ,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (z != MAP_FAILED) return;  // the load restarts and reads zeros
        break;
    }
    // Not ours: hand it on.
    if (r.have_previous.load(std::memory_order_acquire)) {
        const struct sigaction& p = r.previous;
        if (p.sa_flags & SA_SIGINFO) {
            if (p.sa_sigaction) {
                p.sa_sigaction(sig, info, context);
                return;
            }
        } else if (p.sa_handler != SIG_DFL && p.sa_handler != SIG_IGN) {
            p.sa_handler(sig);
            return;
        }
    }
    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(SIGBUS, &dfl, nullptr);  // the fault repeats and takes the default action
}

// Puts `handler` first in line for SIGBUS, remembering whichever handler was there.
inline bool install() {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.install_mu);
    struct sigaction cur;
    if (::sigaction(SIGBUS, nullptr, &cur) != 0) return false;
    const long page = ::sysconf(_SC_PAGESIZE);
    if (page > 0) r.page = static_cast<uintptr_t>(page);
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == &handler) return true;
    r.have_previous.store(false, std::memory_order_release);
    r.previous = cur;
    r.have_previous.store(true, std::memory_order_release);
    struct sigaction mine;
    std::memset(&mine, 0, sizeof mine);
    mine.sa_sigaction = &handler;
    mine.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&mine.sa_mask);
    return ::sigaction(SIGBUS, &mine, nullptr) == 0;
}

}  // namespace sigbus_detail

class MappedFile {
public:
    MappedFile() = default;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    ~MappedFile() { unmap(); }

    // Maps file bytes [0, length) read-only at an address aligned like the file offset to 2 MiB
    // (so page-cache huge pages can be mapped whole). Returns errno, or 0 on success.
    int map(int fd, int64_t length) {
        unmap();
        if (length <= 0) return EINVAL;
        if (!sigbus_detail::install()) return errno ? errno : EINVAL;
        sigbus_detail::Registry& r = sigbus_detail::registry();
        for (int i = 0; i < sigbus_detail::kSlots && slot_ < 0; ++i) {
            uintptr_t expected = 0;
            // Claim the slot with a placeholder so the handler never matches a half-set range.
            if (r.begin[i].compare_exchange_strong(expected, 1)) slot_ = i;
        }
        if (slot_ < 0) return EBUSY;
        const size_t len = static_cast<size_t>(length);
        constexpr size_t kHuge = size_t(2) << 20;
        void* reserve = ::mmap(nullptr, len + kHuge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (reserve == MAP_FAILED) return release_slot(errno);
        const uintptr_t lo = reinterpret_cast<uintptr_t>(reserve);
        const uintptr_t at = (lo + kHuge - 1) & ~(kHuge - 1);
        void* p = ::mmap(reinterpret_cast<void*>(at), len, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
        if (p == MAP_FAILED) {
            const int err = errno;
            ::munmap(reserve, len + kHuge);
            return release_slot(err);
        }
        if (at > lo) ::munmap(reserve, at - lo);
        const uintptr_t tail = at + len;
        const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
        const uintptr_t tail_page = (tail + page - 1) & ~(page - 1);
        if (lo + len + kHuge > tail_page) ::munmap(reinterpret_cast<void*>(tail_page), lo + len + kHuge - tail_page);
        base_ = static_cast<char*>(p);
        length_ = len;
#ifdef MADV_HUGEPAGE
        ::madvise(base_, len, MADV_HUGEPAGE);
#endif
        r.faulted[slot_].store(0, std::memory_order_relaxed);
        r.end[slot_].store(reinterpret_cast<uintptr_t>(base_) + len, std::memory_order_release);
        r.begin[slot_].store(reinterpret_cast<uintptr_t>(base_), std::memory_order_release);
        return 0;
    }

    const char* at(int64_t offset) const { return base_ + offset; }
    bool mapped() const { return base_ != nullptr; }

    // True once a read found part of the range gone (the file was truncated): what was read from
    // the range since mapping it may contain zeros instead of data.
    bool faulted() const {
        return slot_ >= 0 && sigbus_detail::registry().faulted[slot_].load(std::memory_order_acquire) != 0;
    }

    // Page-table entries for [offset, offset + len) are dropped (the page cache keeps the pages).
    void release(int64_t offset, int64_t len) const {
        const int64_t page = ::sysconf(_SC_PAGESIZE);
        int64_t a = offset / page * page;
        int64_t b = std::min<int64_t>(static_cast<int64_t>(length_), (offset + len) / page * page);
        if (b > a) ::madvise(base_ + a, static_cast<size_t>(b - a), MADV_DONTNEED);
    }

    void unmap() {
        if (slot_ >= 0) {
            sigbus_detail::Registry& r = sigbus_detail::registry();
            r.end[slot_].store(0, std::memory_order_release);
            r.begin[slot_].store(0, std::memory_order_release);
            slot_ = -1;
        }
        if (base_) ::munmap(base_, length_);
        base_ = nullptr;
        length_ = 0;
    }

private:
    int release_slot(int err) {
        sigbus_detail::registry().begin[slot_].store(0, std::memory_order_release);
        slot_ = -1;
        return err;
    }

    char* base_ = nullptr;
    size_t length_ = 0;
    int slot_ = -1;
};

}  // namespace fastmoments::io
