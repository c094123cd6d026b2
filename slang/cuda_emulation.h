// Host emulation of the CUDA primitives that slang/tensor_core.cuh uses, so that its device
// code compiles with g++ and runs on the CPU (test only: tests/test_cuda_emulation.py).
//
// Include it before the header and define NEUMOURS_CUDA_EMULATION: the header's primitives
// (ldmatrix, mma.sync, cvt.rn.bf16x2, cp.async) then call the functions of neumours_emu
// below instead of their inline PTX. Every CUDA thread is one std::thread; the blocks of a
// launch run one after another, so __shared__ is function-static storage. Warp collectives
// (ldmatrix, mma, shuffles) exchange their operands through a per-warp buffer and a barrier,
// and need all 32 lanes of the warp to call them in the same order, as on the hardware; a
// divergent call aborts with a message. Layouts are those of the PTX ISA ("Warp-level matrix
// load instruction: ldmatrix", "Matrix Fragments for mma.m16n8k16 with floating point type").
// Numbers: products of bf16 values are exact, an mma sums its 16 products in double and adds
// them to the fp32 accumulator with one rounding; sincospif is computed in double. It checks
// what the code computes, not how fast: it is no performance model.
//
// C++17, pthreads: g++ -std=c++17 -pthread -fno-strict-aliasing -DNEUMOURS_CUDA_EMULATION -I slang
// (-fno-strict-aliasing: device code reads shared memory through other types, as CUDA allows).
#pragma once

#include <cmath>
#include <math.h>
#include <condition_variable>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct uint3 { unsigned x, y, z; };
struct dim3
{
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Per CUDA thread (each is a std::thread): set by neumours_emu::launch.
inline thread_local uint3 blockIdx = {0, 0, 0};
inline thread_local uint3 threadIdx = {0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace neumours_emu {

constexpr int WARP = 32;

[[noreturn]] inline void fail(const char* what)
{
    std::fprintf(stderr, "neumours_emu: %s (block %u %u %u, thread %u %u %u)\n", what, blockIdx.x, blockIdx.y,
                 blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    std::fflush(stderr);
    std::abort();
}

// Deliberate faults for the tests that prove the checks can fail (0: none).
enum Fault { FAULT_NONE = 0, FAULT_MMA_A_SWAP = 1, FAULT_LDMATRIX_NO_TRANS = 2 };
inline int fault = FAULT_NONE;

// Waits longer than this without the barrier completing: a deadlock (threads that never arrive).
constexpr auto STALL = std::chrono::seconds(120);

// A reusable barrier of the threads still running; a thread that returns leaves it.
class Barrier
{
public:
    void reset(int count)
    {
        live_ = count;
        arrived_ = 0;
    }
    // Returns the number of threads that took part.
    int wait(const char* what)
    {
        std::unique_lock<std::mutex> lock(mutex_);
        unsigned long generation = generation_;
        if (++arrived_ == live_)
            return release();
        if (!cv_.wait_for(lock, STALL, [&] { return generation_ != generation; }))
            fail(what);
        return last_;
    }
    // A thread returned; returns how many threads were waiting here when it left.
    int leave()
    {
        std::unique_lock<std::mutex> lock(mutex_);
        live_--;
        int waiting = arrived_;
        if (arrived_ > 0 && arrived_ == live_)
            release();
        return waiting;
    }

private:
    int release()
    {
        last_ = arrived_;
        arrived_ = 0;
        generation_++;
        cv_.notify_all();
        return last_;
    }
    std::mutex mutex_;
    std::condition_variable cv_;
    unsigned long generation_ = 0;
    int live_ = 0, arrived_ = 0, last_ = 0;
};

// What a lane posts to a warp collective: which collective, and its operands.
enum Kind { K_NONE, K_LDMATRIX, K_LDMATRIX_TRANS, K_MMA, K_SHFL, K_SYNCWARP };
struct Slot
{
    int kind;
    const unsigned short* address;   // ldmatrix: this lane's row
    unsigned a[4], b[2];             // mma
    unsigned value;                  // shuffles (32 bits)
};

struct Warp
{
    Barrier barrier;
    Slot slots[2][WARP];   // double-buffered: collective i uses slots[i % 2]
};

struct Block
{
    Barrier barrier;
    std::vector<std::unique_ptr<Warp>> warps;
};

struct ThreadState
{
    Block* block = nullptr;
    Warp* warp = nullptr;
    unsigned lane = 0;
    unsigned long collectives = 0;   // warp collectives this thread has called
};
inline thread_local ThreadState self;

// One warp collective of kind `kind`: posts this lane's slot, waits for the 32 lanes, checks
// they all called the same collective, and returns the 32 slots. The slots of collective i
// are rewritten at collective i + 2 only, after every lane has passed collective i + 1, so
// one barrier per collective suffices.
inline const Slot* exchange(int kind, const Slot& mine, const char* name)
{
    if (self.warp == nullptr)
        fail("a warp collective outside neumours_emu::launch");
    Slot* slots = self.warp->slots[self.collectives++ % 2];
    slots[self.lane] = mine;
    slots[self.lane].kind = kind;
    int taking_part = self.warp->barrier.wait("a warp collective waited 120 s: lanes diverged or deadlocked");
    if (taking_part != WARP)
        fail("a warp collective without all 32 lanes (some returned): control flow diverged in the warp");
    for (int i = 0; i < WARP; i++)
        if (slots[i].kind != kind)
        {
            std::fprintf(stderr, "neumours_emu: lane %d called another collective than %s\n", i, name);
            fail("warp collectives in different orders: control flow diverged in the warp");
        }
    return slots;
}

inline unsigned bf16_pair(unsigned short lo, unsigned short hi) { return lo | ((unsigned)hi << 16); }

// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16: lane i gives the address of row i % 8 of
// matrix i / 8; register j of lane L receives from matrix j the elements (row L / 4, columns
// 2 (L % 4), + 1), or with .trans (rows 2 (L % 4), + 1, column L / 4): low half first.
inline void ldmatrix_x4(const void* row, unsigned* r, bool trans)
{
    if ((std::uintptr_t)row % 16 != 0)
        fail("ldmatrix: a row address that is not 16-byte aligned");
    Slot mine{};
    mine.address = (const unsigned short*)row;
    const Slot* slots = exchange(trans ? K_LDMATRIX_TRANS : K_LDMATRIX, mine, "ldmatrix");
    if (fault == FAULT_LDMATRIX_NO_TRANS)
        trans = false;
    unsigned g = self.lane / 4, t = self.lane % 4;
    unsigned out[4];
    for (int j = 0; j < 4; j++)
    {
        if (trans)
            out[j] = bf16_pair(slots[8 * j + 2 * t].address[g], slots[8 * j + 2 * t + 1].address[g]);
        else
            out[j] = bf16_pair(slots[8 * j + g].address[2 * t], slots[8 * j + g].address[2 * t + 1]);
    }
    // Every lane has read the shared memory before any lane goes on (it may write there next).
    self.warp->barrier.wait("ldmatrix waited 120 s after reading: lanes diverged or deadlocked");
    for (int j = 0; j < 4; j++)
        r[j] = out[j];
}

inline float bf16_bits_to_float(unsigned short h)
{
    unsigned u = (unsigned)h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Element (row, col) of an m16n8k16 fragment, from the 32 lanes' registers (PTX ISA, bf16):
// A (16 x 16, row-major): register i of lane 4 g + t holds rows g (i = 0, 2) or g + 8 (i = 1, 3),
// columns 2t, 2t + 1 (i = 0, 1) or 2t + 8, 2t + 9 (i = 2, 3).
inline float mma_a(const Slot* slots, unsigned row, unsigned k)
{
    unsigned reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    if (fault == FAULT_MMA_A_SWAP && (reg == 1 || reg == 2))
        reg = 3 - reg;
    unsigned word = slots[4 * (row % 8) + (k % 8) / 2].a[reg];
    return bf16_bits_to_float((unsigned short)(k % 2 ? word >> 16 : word & 0xFFFFu));
}

// B (16 x 8, k x n): register i of lane 4 g + t holds k = 2t, 2t + 1 (i = 0) or 2t + 8, 2t + 9
// (i = 1) of column n = g.
inline float mma_b(const Slot* slots, unsigned k, unsigned n)
{
    unsigned word = slots[4 * n + (k % 8) / 2].b[k >= 8 ? 1 : 0];
    return bf16_bits_to_float((unsigned short)(k % 2 ? word >> 16 : word & 0xFFFFu));
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with C = D: lane 4 g + t holds
// c0, c1 = D(g, 2t), D(g, 2t + 1) and c2, c3 = D(g + 8, 2t), D(g + 8, 2t + 1).
inline void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    Slot mine{};
    for (int i = 0; i < 4; i++)
        mine.a[i] = a[i];
    mine.b[0] = b0;
    mine.b[1] = b1;
    const Slot* slots = exchange(K_MMA, mine, "mma");
    unsigned g = self.lane / 4, t = self.lane % 4;
    for (int q = 0; q < 4; q++)
    {
        unsigned row = g + (q >= 2 ? 8 : 0), col = 2 * t + q % 2;
        double sum = 0.0;
        for (unsigned k = 0; k < 16; k++)
            sum += (double)mma_a(slots, row, k) * (double)mma_b(slots, k, col);
        c[q] = (float)((double)c[q] + sum);
    }
}

// cvt.rn.f32 -> bf16: round to nearest, ties to even; a NaN stays a (quiet) NaN.
inline unsigned short float_to_bf16(float f)
{
    unsigned u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)
        return (unsigned short)((u >> 16) | 0x0040u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// cvt.rn.bf16x2.f32 d, hi, lo: lo in the low half of d.
inline unsigned pack_bf16(float lo, float hi) { return bf16_pair(float_to_bf16(lo), float_to_bf16(hi)); }

// cp.async of 16 bytes: copied at once (its wait is then nothing to do).
inline void cp_async16(void* shared, const void* global)
{
    if ((std::uintptr_t)shared % 16 != 0 || (std::uintptr_t)global % 16 != 0)
        fail("cp.async of 16 bytes: an address that is not 16-byte aligned");
    std::memcpy(shared, global, 16);
}
inline void cp_async_wait() {}

inline unsigned shuffle(unsigned value, unsigned mask, unsigned source_lane)
{
    if (mask != 0xFFFFFFFFu)
        fail("a shuffle with a partial lane mask (only full warps are emulated)");
    Slot mine{};
    mine.value = value;
    const Slot* slots = exchange(K_SHFL, mine, "shuffle");
    return slots[source_lane % WARP].value;
}

template<typename T> unsigned to_word(T v)
{
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    unsigned u;
    std::memcpy(&u, &v, 4);
    return u;
}
template<typename T> T from_word(unsigned u)
{
    T v;
    std::memcpy(&v, &u, 4);
    return v;
}

// Runs body() once per thread of each block of `grid`, blocks one after another (x fastest),
// each with one std::thread per thread of `block` (a multiple of 32), blockIdx, threadIdx,
// blockDim and gridDim set. __shared__ variables are shared by all blocks (one at a time).
template<typename F>
void launch(dim3 grid, dim3 block, F&& body)
{
    unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads % WARP != 0 || threads > 1024)
        fail("launch: threads per block must be a multiple of 32, at most 1024");
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++)
            {
                Block state;
                state.barrier.reset((int)threads);
                for (unsigned w = 0; w < threads / WARP; w++)
                {
                    state.warps.emplace_back(new Warp());
                    state.warps.back()->barrier.reset(WARP);
                }
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned linear = 0; linear < threads; linear++)
                    pool.emplace_back([&, linear] {
                        blockIdx = {bx, by, bz};
                        threadIdx = {linear % block.x, (linear / block.x) % block.y, linear / (block.x * block.y)};
                        blockDim = block;
                        gridDim = grid;
                        self.block = &state;
                        self.warp = state.warps[linear / WARP].get();
                        self.lane = linear % WARP;
                        self.collectives = 0;
                        body();
                        if (self.warp->barrier.leave() > 0)
                            fail("a thread returned while lanes of its warp wait in a collective");
                        state.barrier.leave();
                        self = ThreadState();
                    });
                for (auto& t : pool)
                    t.join();
            }
}

}  // namespace neumours_emu

// The CUDA built-ins, as device code calls them.
inline void __syncthreads()
{
    if (neumours_emu::self.block == nullptr)
        neumours_emu::fail("__syncthreads outside neumours_emu::launch");
    neumours_emu::self.block->barrier.wait("__syncthreads waited 120 s: a thread never arrived");
}

inline void __syncwarp(unsigned mask = 0xFFFFFFFFu)
{
    if (mask != 0xFFFFFFFFu)
        neumours_emu::fail("__syncwarp with a partial lane mask (only full warps are emulated)");
    neumours_emu::exchange(neumours_emu::K_SYNCWARP, neumours_emu::Slot{}, "__syncwarp");
}

template<typename T> T __shfl_sync(unsigned mask, T value, int source_lane, int width = 32)
{
    if (width != 32)
        neumours_emu::fail("__shfl_sync with width != 32 is not emulated");
    return neumours_emu::from_word<T>(
        neumours_emu::shuffle(neumours_emu::to_word(value), mask, (unsigned)source_lane));
}

template<typename T> T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32)
{
    if (width != 32)
        neumours_emu::fail("__shfl_xor_sync with width != 32 is not emulated");
    return neumours_emu::from_word<T>(
        neumours_emu::shuffle(neumours_emu::to_word(value), mask, neumours_emu::self.lane ^ (unsigned)lane_mask));
}

template<typename T> T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32)
{
    if (width != 32)
        neumours_emu::fail("__shfl_down_sync with width != 32 is not emulated");
    unsigned lane = neumours_emu::self.lane;
    unsigned source = lane + delta < 32 ? lane + delta : lane;
    return neumours_emu::from_word<T>(neumours_emu::shuffle(neumours_emu::to_word(value), mask, source));
}

inline float atomicAdd(float* address, float value)
{
    unsigned old = __atomic_load_n((unsigned*)address, __ATOMIC_RELAXED);
    for (;;)
    {
        unsigned next = neumours_emu::to_word(neumours_emu::from_word<float>(old) + value);
        if (__atomic_compare_exchange_n((unsigned*)address, &old, next, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
            return neumours_emu::from_word<float>(old);
    }
}
inline unsigned atomicAdd(unsigned* address, unsigned value)
{
    return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}
inline int atomicAdd(int* address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST); }

inline float __uint_as_float(unsigned u) { return neumours_emu::from_word<float>(u); }
inline unsigned __float_as_uint(float f) { return neumours_emu::to_word(f); }
inline float __int_as_float(int i) { return neumours_emu::from_word<float>((unsigned)i); }
inline int __float_as_int(float f) { return (int)neumours_emu::to_word(f); }

// sin(pi x) and cos(pi x) in double, rounded to float: x = n / 2 + f exactly (|f| <= 1/4),
// so that sin(pi) is 0 and cos(pi / 2) is 0, as CUDA's.
inline void sincospif(float x, float* s, float* c)
{
    double r = std::fmod((double)x, 2.0);
    double n = std::nearbyint(2.0 * r);
    double f = r - 0.5 * n;
    const double pi = 3.14159265358979323846;
    double sf = std::sin(pi * f), cf = std::cos(pi * f);
    switch (((long)n % 4 + 4) % 4)
    {
    case 0: *s = (float)sf; *c = (float)cf; break;
    case 1: *s = (float)cf; *c = (float)-sf; break;
    case 2: *s = (float)-sf; *c = (float)-cf; break;
    default: *s = (float)-cf; *c = (float)sf; break;
    }
}

inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
