"""The C++ half of the CUDA emulator (yoso_np.testing.emulator), as source strings like raw_kernels' CUDA sources.

HEADER goes in front of a kernel source, which is then compiled unchanged with every memory access instrumented
(GCC's -fsanitize=kernel-address with outline checks: each load and store calls __asan_{load,store}N_noabort, which
RUNTIME implements as a bounds and race check). RUNTIME, compiled without instrumentation, runs a launch: a team of
real OS threads per worker, one per thread of the block, a barrier for __syncthreads(), the block's dynamic shared
memory. Each worker loads its own copy of the library, so the blocks running at the same time on different cores
each have their own shared memory (the source's `extern __shared__ T name[]` is one global symbol per copy).
"""

SHARED_MAX = 48 * 1024  # CUDA's default limit of dynamic shared memory per block (more needs an opt-in)

HEADER = r"""
// ---- yoso_np CUDA emulator shim: what the CUDA source expects from nvcc/NVRTC, for g++ ----
struct uint3 { unsigned int x, y, z; };
typedef uint3 dim3;
struct __EmuCtx { uint3 threadIdx, blockIdx, blockDim, gridDim; unsigned long long params[64]; };
extern "C" __thread __EmuCtx __emu_ctx;
#define threadIdx (__emu_ctx.threadIdx)
#define blockIdx (__emu_ctx.blockIdx)
#define blockDim (__emu_ctx.blockDim)
#define gridDim (__emu_ctx.gridDim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ __attribute__((always_inline)) inline
#define __shared__
extern "C" void __emu_syncthreads();
extern "C" float __emu_atomic_add_f32(float* address, float value);
extern "C" int __emu_atomic_add_i32(int* address, int value);
extern "C" unsigned int __emu_atomic_add_u32(unsigned int* address, unsigned int value);
inline void __syncthreads() { __emu_syncthreads(); }
inline float atomicAdd(float* address, float value) { return __emu_atomic_add_f32(address, value); }
inline int atomicAdd(int* address, int value) { return __emu_atomic_add_i32(address, value); }
inline unsigned int atomicAdd(unsigned int* address, unsigned int value) { return __emu_atomic_add_u32(address, value); }
// ---- the CUDA source follows unchanged ----
#line 1 "kernel.cu"
"""

# After the source: per kernel, a launch entry and a signature string (for checking what a launch passes). The runtime
# copies the arguments, one 8-byte slot each, into the thread's context before the kernel starts; the entry reads
# them from there with the kernel's own parameter types.
FOOTER_HEAD = r"""
#include <type_traits>
#include <utility>
extern "C" int __emu_run(const void* launch, void (*thunk)(void*), void* kernel);
extern "C" const unsigned long long* __emu_params();
namespace __emu {
template <class... A, std::size_t... I> void call(void (*kernel)(A...), std::index_sequence<I...>) {
    const unsigned long long* slots = __emu_params();
    kernel(*reinterpret_cast<const A*>(slots + I)...);
}
template <class... A> void thunk(void* kernel) {
    call(reinterpret_cast<void (*)(A...)>(kernel), std::index_sequence_for<A...>{});
}
template <class... A> int run(void (*kernel)(A...), const void* launch) {
    return __emu_run(launch, &thunk<A...>, reinterpret_cast<void*>(kernel));
}
template <class T> constexpr char kind() {
    return std::is_pointer<T>::value ? 'p' : std::is_same<T, bool>::value ? 'b'
         : std::is_floating_point<T>::value ? 'f' : std::is_signed<T>::value ? 'i' : 'u';
}
template <class... A> const char* signature(void (*)(A...)) {  // e.g. "p8 i4 f4 "
    static const char s[sizeof...(A) + 1][3] = {{kind<std::remove_cv_t<A>>(), char('0' + sizeof(A)), ' '}..., {}};
    return &s[0][0];
}
}
"""
FOOTER_KERNEL = r"""
extern "C" int __emu_run_{name}(const void* launch) {{ return __emu::run(&{name}, launch); }}
extern "C" const char* __emu_signature_{name}() {{ return __emu::signature(&{name}); }}
"""

# The dynamic shared memory: one buffer per library copy, and every `extern __shared__` name of the source an alias
# of it (a separate translation unit, so the aliases need not match the linkage the source declared them with).
SHARED_UNIT = r"""
extern "C" {{
alignas(256) unsigned char __emu_shared_mem[{size}];
{aliases}
}}
"""
SHARED_ALIAS = 'extern unsigned char {name}[{size}] __attribute__((alias("__emu_shared_mem")));'

RUNTIME = r"""
#include <linux/futex.h>
#include <pthread.h>
#include <setjmp.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <climits>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

struct uint3 { unsigned int x, y, z; };
constexpr int MAX_PARAMS = 64;
struct __EmuCtx { uint3 threadIdx, blockIdx, blockDim, gridDim; unsigned long long params[MAX_PARAMS]; };
extern "C" __thread __EmuCtx __emu_ctx;
__thread __EmuCtx __emu_ctx;
extern "C" unsigned char __emu_shared_mem[];

namespace {
constexpr std::size_t SHARED_MAX = SHARED_MAX_BYTES;
constexpr std::uintptr_t SHARED_SLACK = 1 << 16;  // accesses this close to the buffer are reported as shared ones

struct Launch {  // filled by yoso_np/testing/emulator.py (ctypes), all 64-bit
    std::int64_t grid[3], block[3], shared_bytes, first_block, block_step, n_ranges;
    const std::uint64_t* ranges;  // n_ranges pairs [lo, hi): the allocations behind the array arguments
    const char* kernel;
    std::int64_t n_params;
    const unsigned long long* params;  // the arguments' bytes, one 8-byte slot each
};

struct ThreadState {  // zero-initialised, as every __thread variable
    bool in_kernel;
    unsigned tid;
    std::uintptr_t stack_lo, stack_hi;
    jmp_buf exit;
};
__thread ThreadState self;

const Launch* launch = nullptr;
std::atomic<bool> aborted{false};
std::mutex error_mutex;
bool has_error = false;
char error_text[2048];

// barrier of the block's threads (a futex on `generation`: a mutex and condition variable made every barrier of
// 256 threads cost milliseconds of lock convoys); `epoch` counts the barriers passed (the race check's clock)
int barrier_size = 0;
std::atomic<int> arrived{0}, arrived_kinds{0};
std::atomic<std::uint32_t> generation{0};
std::atomic<std::uint64_t> epoch{1};
enum { SYNC = 1, EXIT = 2, START = 4 };

void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t value) {
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_PRIVATE, value, nullptr, nullptr, 0);
}
void futex_wake(std::atomic<std::uint32_t>* word) {
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

// race check: per 4-byte word of shared memory, who wrote and read it since the last barrier
// bits 63-32 epoch, 31-20 writer, 19-8 reader (thread ids; NONE, MANY), bit 0 the writes were atomic
constexpr unsigned NONE = 0xFFF, MANY = 0xFFE;
std::atomic<std::uint64_t> shadow[SHARED_MAX / 4];

void wake_all() {  // after an abort: nobody waits any more
    generation.fetch_add(1);
    futex_wake(&generation);
}

void record(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void record(const char* fmt, ...) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!has_error) {
        has_error = true;
        const uint3& t = __emu_ctx.threadIdx;
        const uint3& b = __emu_ctx.blockIdx;
        int n = std::snprintf(error_text, sizeof error_text, "%s, block (%u, %u, %u), thread (%u, %u, %u): ",
                              launch ? launch->kernel : "?", b.x, b.y, b.z, t.x, t.y, t.z);
        va_list args;
        va_start(args, fmt);
        std::vsnprintf(error_text + n, sizeof error_text - n, fmt, args);
        va_end(args);
    }
    aborted.store(true);
}

[[noreturn]] void leave_kernel() { longjmp(self.exit, 1); }

[[noreturn]] void fault() {
    wake_all();
    leave_kernel();
}

// false once the launch is aborted (an error anywhere): then nobody waits any more
bool barrier(int kind) {
    if (aborted.load()) return false;
    const std::uint32_t now = generation.load();
    arrived_kinds.fetch_or(kind);
    if (arrived.fetch_add(1) + 1 == barrier_size) {
        const int kinds = arrived_kinds.exchange(0);
        if ((kinds & SYNC) && (kinds & EXIT))
            record("__syncthreads() was reached by some threads of the block while others had returned "
                   "(a barrier in divergent code: undefined behaviour in CUDA)");
        arrived.store(0);
        epoch.fetch_add(1);
        generation.fetch_add(1);
        futex_wake(&generation);
    } else {
        for (int spin = 0; generation.load() == now && !aborted.load(); ++spin)
            if (spin > 100) futex_wait(&generation, now);
    }
    return !aborted.load();
}

const char* kind_name(int kind) { return kind == 0 ? "read" : kind == 1 ? "wrote" : "atomically updated"; }

void race_check(std::size_t offset, std::size_t size, int kind) {
    const std::uint64_t now = epoch.load() & 0xFFFFFFFFu;
    const unsigned t = self.tid;
    for (std::size_t w = offset / 4; w <= (offset + size - 1) / 4; ++w) {
        std::uint64_t old = shadow[w].load(), next;
        do {
            unsigned writer = NONE, reader = NONE, atomic = 0;
            if ((old >> 32) == now) {
                writer = (old >> 20) & 0xFFF;
                reader = (old >> 8) & 0xFFF;
                atomic = old & 1;
            }
            const bool other_writer = writer != NONE && writer != t;
            const bool other_reader = reader != NONE && reader != t;
            const char* hazard = nullptr;
            if (kind == 0 && other_writer) hazard = atomic ? "atomically updated" : "wrote";
            if (kind == 1 && (other_writer || other_reader))
                hazard = other_writer ? (atomic ? "atomically updated" : "wrote") : "read";
            if (kind == 2 && ((other_writer && !atomic) || other_reader)) hazard = other_reader ? "read" : "wrote";
            if (hazard) {
                unsigned other = (kind == 0 || other_writer) ? writer : reader;
                char who[32];
                if (other == MANY) std::snprintf(who, sizeof who, "other threads");
                else std::snprintf(who, sizeof who, "thread %u", other);
                record("data race on shared memory: %s bytes [%zu, %zu) which %s %s since the last __syncthreads() "
                       "(a missing __syncthreads()?)", kind_name(kind), offset, offset + size, who, hazard);
                fault();
            }
            if (kind == 0) reader = (reader == NONE || reader == t) ? t : MANY;
            if (kind == 1) { writer = t; atomic = 0; }
            if (kind == 2) { writer = (writer == NONE || writer == t) ? t : MANY; atomic = 1; }
            next = (now << 32) | (std::uint64_t(writer) << 20) | (std::uint64_t(reader) << 8) | atomic;
        } while (!shadow[w].compare_exchange_weak(old, next));
    }
}

// kind: 0 read, 1 write, 2 atomic read-modify-write
void check(const void* p, std::size_t size, int kind) {
    if (!self.in_kernel) return;
    if (aborted.load(std::memory_order_relaxed)) leave_kernel();
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p);
    if (size <= 16 && (size & (size - 1)) == 0 && a % size) {
        record("misaligned %zu-byte access (%s) at address %#zx", size, kind_name(kind), (std::size_t)a);
        fault();
    }
    const std::uintptr_t shared = reinterpret_cast<std::uintptr_t>(__emu_shared_mem);
    if (a + size > shared - SHARED_SLACK && a < shared + SHARED_MAX + SHARED_SLACK) {
        const std::size_t bytes = (std::size_t)launch->shared_bytes;
        if (a < shared || a + size > shared + bytes) {
            record("%s shared memory bytes [%lld, %lld), outside the launch's dynamic shared memory [0, %zu)",
                   kind == 0 ? "read" : "wrote", (long long)(a - shared), (long long)(a + size - shared), bytes);
            fault();
        }
        race_check(a - shared, size, kind);
        return;
    }
    if (a >= self.stack_lo && a + size <= self.stack_hi) return;
    const std::uintptr_t ctx = reinterpret_cast<std::uintptr_t>(&__emu_ctx);
    if (a >= ctx && a + size <= ctx + sizeof(__EmuCtx)) return;
    for (std::int64_t r = 0; r < launch->n_ranges; ++r)
        if (a >= launch->ranges[2 * r] && a + size <= launch->ranges[2 * r + 1]) return;
    long long nearest = -1, distance = 0;
    for (std::int64_t r = 0; r < launch->n_ranges; ++r) {
        long long d = a < launch->ranges[2 * r] ? (long long)(launch->ranges[2 * r] - a)
                                                : (long long)(a + size - launch->ranges[2 * r + 1]);
        if (nearest < 0 || d < distance) { nearest = r; distance = d; }
    }
    record("%s %zu bytes at %#zx, outside every array argument (the nearest is argument %lld of the launch, "
           "%lld bytes away)", kind == 0 ? "read" : "wrote", size, (std::size_t)a, nearest, distance);
    fault();
}

// ---- a launch: one OS thread per thread of the block, started for the launch and joined at its end (threads
// kept between launches piled up to thousands across modules; starting 256 costs a few milliseconds)
void (*job_thunk)(void*) = nullptr;
void* job_data = nullptr;

void run_blocks(unsigned tid) {
    const Launch& L = *launch;
    const unsigned bx = L.block[0], by = L.block[1];
    __emu_ctx.blockDim = {(unsigned)L.block[0], (unsigned)L.block[1], (unsigned)L.block[2]};
    __emu_ctx.gridDim = {(unsigned)L.grid[0], (unsigned)L.grid[1], (unsigned)L.grid[2]};
    __emu_ctx.threadIdx = {tid % bx, tid / bx % by, tid / (bx * by)};
    std::memcpy(__emu_ctx.params, L.params, 8 * L.n_params);
    self.tid = tid;
    const std::int64_t blocks = L.grid[0] * L.grid[1] * L.grid[2];
    for (std::int64_t b = L.first_block; b < blocks; b += L.block_step) {
        __emu_ctx.blockIdx = {(unsigned)(b % L.grid[0]), (unsigned)(b / L.grid[0] % L.grid[1]),
                              (unsigned)(b / (L.grid[0] * L.grid[1]))};
        if (tid == 0) std::memset(__emu_shared_mem, 0xFF, L.shared_bytes);  // uninitialised: NaN floats, -1 ints
        if (!barrier(START)) return;
        if (setjmp(self.exit) == 0) {
            self.in_kernel = true;
            job_thunk(job_data);
        }
        self.in_kernel = false;
        if (!barrier(EXIT)) return;
    }
}

void* thread_main(void* arg) {
    const unsigned tid = (unsigned)(std::uintptr_t)arg;
    pthread_attr_t attr;
    void* stack;
    std::size_t stack_size;
    pthread_getattr_np(pthread_self(), &attr);
    pthread_attr_getstack(&attr, &stack, &stack_size);
    pthread_attr_destroy(&attr);
    self.stack_lo = reinterpret_cast<std::uintptr_t>(stack);
    self.stack_hi = self.stack_lo + stack_size;
    run_blocks(tid);
    return nullptr;
}

std::mutex run_mutex;
}  // namespace

extern "C" const unsigned long long* __emu_params() { return __emu_ctx.params; }

extern "C" void __emu_syncthreads() {
    if (!barrier(SYNC)) leave_kernel();
}

template <class T, class Bits> T atomic_add(T* address, T value) {
    check(address, sizeof(T), 2);
    Bits* bits = reinterpret_cast<Bits*>(address);
    Bits old = __atomic_load_n(bits, __ATOMIC_RELAXED), next;
    T sum;
    do {
        T current;
        std::memcpy(&current, &old, sizeof(T));
        sum = current + value;
        std::memcpy(&next, &sum, sizeof(T));
    } while (!__atomic_compare_exchange_n(bits, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    T previous;
    std::memcpy(&previous, &old, sizeof(T));
    return previous;
}
extern "C" float __emu_atomic_add_f32(float* a, float v) { return atomic_add<float, std::uint32_t>(a, v); }
extern "C" int __emu_atomic_add_i32(int* a, int v) { return atomic_add<int, std::uint32_t>(a, v); }
extern "C" unsigned __emu_atomic_add_u32(unsigned* a, unsigned v) { return atomic_add<unsigned, std::uint32_t>(a, v); }

#define ACCESS(size)                                                                   \
    extern "C" void __asan_load##size##_noabort(void* p) { check(p, size, 0); }       \
    extern "C" void __asan_store##size##_noabort(void* p) { check(p, size, 1); }
ACCESS(1) ACCESS(2) ACCESS(4) ACCESS(8) ACCESS(16)
extern "C" void __asan_loadN_noabort(void* p, std::size_t size) { check(p, size, 0); }
extern "C" void __asan_storeN_noabort(void* p, std::size_t size) { check(p, size, 1); }
extern "C" void __asan_handle_no_return() {}

// 0: done; 1: an error (read it with __emu_error); 2: a thread could not be started
extern "C" int __emu_run(const void* launch_arg, void (*thunk)(void*), void* data) {
    std::lock_guard<std::mutex> serial(run_mutex);
    launch = static_cast<const Launch*>(launch_arg);
    const int threads = (int)(launch->block[0] * launch->block[1] * launch->block[2]);
    has_error = false;
    aborted.store(false);
    barrier_size = threads;
    arrived.store(0);
    arrived_kinds.store(0);
    job_thunk = thunk;
    job_data = data;
    std::vector<pthread_t> team(threads);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    int started = 0;
    for (; started < threads; ++started)
        if (pthread_create(&team[started], &attr, thread_main, (void*)(std::uintptr_t)started)) break;
    pthread_attr_destroy(&attr);
    if (started < threads) {  // the started ones wait at the first barrier: release them, then report
        aborted.store(true);
        wake_all();
    }
    for (int i = 0; i < started; ++i) pthread_join(team[i], nullptr);
    return started < threads ? 2 : has_error ? 1 : 0;
}

extern "C" const char* __emu_error() { return error_text; }
extern "C" std::uintptr_t __emu_shared_address() { return reinterpret_cast<std::uintptr_t>(__emu_shared_mem); }
"""
