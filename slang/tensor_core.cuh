// bf16 tensor-core GEMM of Neumours (CUDA C++): C[m, n] = sum_k A(m, k) B(n, k), fp32 accumulation.
//
// The prelude of slang/tensor_core_kernels.slang: copied, with fourier.h inlined, into the generated
// slang/tensor_core_prelude.slang (neumours/kernels/tensor_core_prelude.py; NVRTC gets no include
// path from slangpy), and compiled on its own by tests/test_tensor_core_header.py.
// The contract with Python (operand sources, layouts, epilogues, block shapes, k slice,
// threads per group, the order of the scalar table) is neumours/kernels/tensor_gemm.py's;
// that test checks every value below against it. The Fourier feature is slang/fourier.h's,
// shared with slang/encoding.slang.
//
// Why CUDA C++ and not linalg.CoopMat: Slang 2026.12's CUDA CoopMat loads redistribute
// every fragment through ~16 warp shuffles (a tiled product capped near 20 TFLOP/s on an
// H200); ldmatrix moves the same fragment in one instruction. 256 threads, 8 warps, a
// BM x BN block of C, k in slices of 32 staged in double-buffered shared memory (register
// prefetch of the next slice while the tensor cores work on this one), fragments by
// ldmatrix(.trans), products by mma.sync.m16n8k16 bf16 with fp32 accumulators.
#pragma once

namespace neumours_tc {

#define FOURIER_FN __device__ __forceinline__
#define FOURIER_UINT unsigned
#define FOURIER_AS_UINT __float_as_uint
#define FOURIER_AS_FLOAT __uint_as_float
#define FOURIER_FMOD fmodf
#include "fourier.h"
#undef FOURIER_FN
#undef FOURIER_UINT
#undef FOURIER_AS_UINT
#undef FOURIER_AS_FLOAT
#undef FOURIER_FMOD

enum { SRC_BF16 = 0, SRC_F32 = 1, SRC_FOURIER = 2 };
enum { LAYOUT_K = 0, LAYOUT_ROWS = 1 };
enum { EPI_STORE = 0, EPI_RELU_GRAD = 1, EPI_ACCUMULATE = 2 };
enum { TILES_WIDE = 0, TILES_NARROW = 1 };
constexpr int BK = 32;                           // k per staged slice
constexpr int THREADS = 256;                     // threads per group: 8 warps
constexpr int WIDE_BM = 128, WIDE_BN = 128;      // block of C per group (TILES_WIDE)
constexpr int NARROW_BM = 256, NARROW_BN = 16;   // block of C per group (TILES_NARROW)
constexpr unsigned NO_ONES = 0xFFFFFFFFu;

// 16 bytes: 8 bf16 values (a chunk) or 4 floats. Our own type, so the code does not
// depend on how the generated code's prelude defines the vector types.
struct alignas(16) U4 { unsigned x, y, z, w; };
struct alignas(16) F4 { float x, y, z, w; };
__device__ __forceinline__ U4 zero_u4() { U4 r = {0u, 0u, 0u, 0u}; return r; }

// The PTX primitives. Shared memory is passed as pointers (their 32-bit shared addresses are
// taken inside the asm branch). With NEUMOURS_CUDA_EMULATION (a host test build that includes
// slang/cuda_emulation.h first) the same functions run on the CPU instead.
#ifdef NEUMOURS_CUDA_EMULATION
__device__ __forceinline__ void ldmatrix_x4(const unsigned short* row, unsigned* r)
{
    neumours_emu::ldmatrix_x4(row, r, false);
}

__device__ __forceinline__ void ldmatrix_x4_trans(const unsigned short* row, unsigned* r)
{
    neumours_emu::ldmatrix_x4(row, r, true);
}

__device__ __forceinline__ void cp_async16(void* shared, const void* global)
{
    neumours_emu::cp_async16(shared, global);
}

__device__ __forceinline__ void cp_async_wait()
{
    neumours_emu::cp_async_wait();
}

__device__ __forceinline__ void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    neumours_emu::mma_bf16(c, a, b0, b1);
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
    return neumours_emu::pack_bf16(lo, hi);
}
#else
__device__ __forceinline__ unsigned smem_address(const void* p)
{
    return (unsigned)__cvta_generic_to_shared(p);
}

// Lane i gives the address of row i % 8 of matrix i / 8 (in shared memory).
__device__ __forceinline__ void ldmatrix_x4(const unsigned short* row, unsigned* r)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(const unsigned short* row, unsigned* r)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(row)));
}

// 16 bytes global -> shared without passing through registers (sm_80), completing at cp_async_wait.
__device__ __forceinline__ void cp_async16(void* shared, const void* global)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" : : "r"(smem_address(shared)), "l"(global));
}

__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_all;\n" : :);
}

__device__ __forceinline__ void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats to a bf16 pair (round to nearest even): lo in the low half.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
    unsigned d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}
#endif

__device__ __forceinline__ float bf16_to_float(unsigned short h)
{
    return __uint_as_float(((unsigned)h) << 16);
}

// Feature j of gamma(p) for the point at coords[3 * point]: fourier.h's order and
// argument reduction, sin and cos by sincospif.
__device__ __forceinline__ float fourier_value(const float* coords, unsigned point, unsigned j)
{
    if (j < 3)
        return coords[3 * point + j];
    unsigned block = fourier_block(j);
    unsigned slot = fourier_slot(j, block);
    float s, c;
    sincospif(fourier_reduce(coords[3 * point + fourier_axis(slot)], float(block + 1)), &s, &c);
    return slot < 3 ? s : c;
}

// One operand of the product, as its chunks are read: a chunk is 8 values
// contiguous in memory, at (major, minor .. minor + 7) of a matrix stored
// value(major, minor) = base[offset + major * ld + minor].
struct Operand
{
    const void* base;
    unsigned source;        // SRC_*
    unsigned offset, ld;
    unsigned major_valid, minor_valid;   // SRC_FOURIER: the point is `major`, the feature `minor`
};

__device__ __forceinline__ U4 load_chunk(const Operand& op, unsigned major, unsigned minor)
{
    U4 out = zero_u4();
    if (major >= op.major_valid || minor >= op.minor_valid)
        return out;
    bool full = minor + 8 <= op.minor_valid;
    float v[8];
    if (op.source == SRC_BF16)
    {
        const unsigned short* p = (const unsigned short*)op.base + op.offset + (size_t)major * op.ld + minor;
        if (full)
            return *(const U4*)p;
        unsigned short h[8];
#pragma unroll
        for (int i = 0; i < 8; i++)
            h[i] = minor + i < op.minor_valid ? p[i] : (unsigned short)0;
        out.x = h[0] | ((unsigned)h[1] << 16);
        out.y = h[2] | ((unsigned)h[3] << 16);
        out.z = h[4] | ((unsigned)h[5] << 16);
        out.w = h[6] | ((unsigned)h[7] << 16);
        return out;
    }
    if (op.source == SRC_F32)
    {
        const float* p = (const float*)op.base + op.offset + (size_t)major * op.ld + minor;
        if (full)
        {
            F4 x0 = *(const F4*)p;
            F4 x1 = *(const F4*)(p + 4);
            v[0] = x0.x; v[1] = x0.y; v[2] = x0.z; v[3] = x0.w;
            v[4] = x1.x; v[5] = x1.y; v[6] = x1.z; v[7] = x1.w;
        }
        else
        {
#pragma unroll
            for (int i = 0; i < 8; i++)
                v[i] = minor + i < op.minor_valid ? p[i] : 0.0f;
        }
    }
    else
    {
#pragma unroll
        for (int i = 0; i < 8; i++)
            v[i] = minor + i < op.minor_valid ? fourier_value((const float*)op.base, major, minor + i) : 0.0f;
    }
    out.x = pack_bf16(v[0], v[1]);
    out.y = pack_bf16(v[2], v[3]);
    out.z = pack_bf16(v[4], v[5]);
    out.w = pack_bf16(v[6], v[7]);
    return out;
}

// The virtual column of ones of operand B (row n == ones of B(n, k)) for bias gradients.
__device__ __forceinline__ U4 overlay_ones(U4 chunk, unsigned layout, unsigned ones, unsigned major,
                                              unsigned minor, unsigned k_valid)
{
    if (ones == NO_ONES)
        return chunk;
    const unsigned ONE = 0x3F80u;   // bf16 1.0
    unsigned short h[8];
    h[0] = chunk.x & 0xFFFFu; h[1] = chunk.x >> 16; h[2] = chunk.y & 0xFFFFu; h[3] = chunk.y >> 16;
    h[4] = chunk.z & 0xFFFFu; h[5] = chunk.z >> 16; h[6] = chunk.w & 0xFFFFu; h[7] = chunk.w >> 16;
    if (layout == LAYOUT_K)   // major = n, minor = k
    {
        if (major != ones)
            return chunk;
#pragma unroll
        for (int i = 0; i < 8; i++)
            h[i] = minor + i < k_valid ? (unsigned short)ONE : (unsigned short)0;
    }
    else                      // major = k, minor = n
    {
        if (major >= k_valid || ones < minor || ones >= minor + 8)
            return chunk;
        h[ones - minor] = (unsigned short)ONE;
    }
    chunk.x = h[0] | ((unsigned)h[1] << 16);
    chunk.y = h[2] | ((unsigned)h[3] << 16);
    chunk.z = h[4] | ((unsigned)h[5] << 16);
    chunk.w = h[6] | ((unsigned)h[7] << 16);
    return chunk;
}

struct Epilogue
{
    unsigned kind, relu;
    const float* bias; unsigned bias_offset;           // EPI_STORE, or null
    const unsigned short* mask; unsigned mask_offset, mask_ld;   // EPI_RELU_GRAD: H (bf16) > 0
    void* c; unsigned c_offset, c_ld, c_bf16;
    unsigned ones, bias_out_offset;                    // EPI_ACCUMULATE: column `ones` -> bias gradient
    float* colsum; unsigned colsum_split, colsum_offset, colsum_offset_hi;   // EPI_RELU_GRAD, or null
};

// Shared-memory tile of one operand: LAYOUT_K stores [rows][BK + 8] (k contiguous),
// LAYOUT_ROWS stores [BK][rows + 8] (rows contiguous); 8 values of padding keep the
// 8 row addresses of an ldmatrix in distinct banks.
template<int ROWS>
struct Tile
{
    static constexpr int K_STRIDE = BK + 8;
    static constexpr int ROW_STRIDE = ROWS + 8;
    static constexpr int ELEMENTS = ROWS * K_STRIDE > BK * ROW_STRIDE ? ROWS * K_STRIDE : BK * ROW_STRIDE;
    static constexpr int CHUNKS = ROWS * BK / 8;

    // Chunk c of the tile: (major, minor) relative to the tile origin, and its smem element index.
    static __device__ __forceinline__ void chunk_place(int c, unsigned layout, unsigned& major, unsigned& minor,
                                                       int& index)
    {
        if (layout == LAYOUT_K)
        {
            int r = c / (BK / 8), kk = (c % (BK / 8)) * 8;
            major = r; minor = kk; index = r * K_STRIDE + kk;
        }
        else
        {
            int kk = c / (ROWS / 8), r = (c % (ROWS / 8)) * 8;
            major = kk; minor = r; index = kk * ROW_STRIDE + r;
        }
    }
};

// A (m, k) fragment of 16 x 16 at (row, k) of a tile, as mma's row-major A operand.
template<int ROWS>
__device__ __forceinline__ void load_a_fragment(const unsigned short* tile, unsigned layout, int row, int k,
                                                unsigned lane, unsigned* r)
{
    if (layout == LAYOUT_K)
        ldmatrix_x4(tile + (row + (lane % 16)) * Tile<ROWS>::K_STRIDE + k + (lane / 16) * 8, r);
    else
    {
        unsigned j = lane / 8;
        ldmatrix_x4_trans(tile + (k + (lane % 8) + (j / 2) * 8) * Tile<ROWS>::ROW_STRIDE + row + (j % 2) * 8, r);
    }
}

// B (n, k) fragments of 16 x 16 at (row, k): r[0], r[1] for rows row .. row + 7, r[2], r[3] for row + 8 .. 15.
template<int ROWS>
__device__ __forceinline__ void load_b_fragment(const unsigned short* tile, unsigned layout, int row, int k,
                                                unsigned lane, unsigned* r)
{
    unsigned j = lane / 8, i = lane % 8;
    if (layout == LAYOUT_K)
        ldmatrix_x4(tile + (row + i + (j / 2) * 8) * Tile<ROWS>::K_STRIDE + k + (j % 2) * 8, r);
    else
        ldmatrix_x4_trans(tile + (k + i + (j % 2) * 8) * Tile<ROWS>::ROW_STRIDE + row + (j / 2) * 8, r);
}

__device__ __forceinline__ void store_pair(const Epilogue& e, unsigned m, unsigned n, float v0, float v1,
                                           unsigned size_n)
{
    size_t index = (size_t)e.c_offset + (size_t)m * e.c_ld + n;
    if (e.c_bf16)
    {
        unsigned short* c = (unsigned short*)e.c;
        if (n + 1 < size_n)
            *(unsigned*)(c + index) = pack_bf16(v0, v1);
        else
            c[index] = (unsigned short)(pack_bf16(v0, 0.0f) & 0xFFFFu);
    }
    else
    {
        float* c = (float*)e.c;
        c[index] = v0;
        if (n + 1 < size_n)
            c[index + 1] = v1;
    }
}

// BM x BN block of C per group of 256 threads (8 warps of WM x WN), k in steps of BK.
template<int BM, int BN, int WM, int WN>
__device__ __forceinline__ void gemm(unsigned group_m, unsigned group_n, unsigned group_k, unsigned thread,
                                     Operand a, unsigned a_layout, Operand b, unsigned b_layout, Epilogue e,
                                     unsigned size_m, unsigned size_n, unsigned size_k, unsigned k_chunk)
{
    constexpr int WARPS_N = BN / WN;
    constexpr int FM = WM / 16, FN = WN / 8;   // mma tiles per warp
    constexpr int A_LOADS = (Tile<BM>::CHUNKS + THREADS - 1) / THREADS;
    constexpr int B_LOADS = (Tile<BN>::CHUNKS + THREADS - 1) / THREADS;
    static_assert((BM / WM) * (BN / WN) == 8, "8 warps per group");
    __shared__ __align__(16) unsigned short tile_a[2][Tile<BM>::ELEMENTS];
    __shared__ __align__(16) unsigned short tile_b[2][Tile<BN>::ELEMENTS];

    const unsigned lane = thread % 32, warp = thread / 32;
    const unsigned warp_m = warp / WARPS_N, warp_n = warp % WARPS_N;
    const unsigned m0 = group_m * BM, n0 = group_n * BN;   // group_n varies fastest: A tiles are shared in L2
    const unsigned k_begin = group_k * k_chunk;
    const unsigned k_end = min(size_k, k_begin + k_chunk);
    // Operand bounds: rows and the k range of this group (split-K: k_end, not size_k).
    if (a_layout == LAYOUT_K) { a.major_valid = size_m; a.minor_valid = k_end; }
    else { a.major_valid = k_end; a.minor_valid = size_m; }
    unsigned rows_b = e.ones == NO_ONES ? size_n : size_n - 1;
    if (b_layout == LAYOUT_K) { b.major_valid = rows_b; b.minor_valid = k_end; }
    else { b.major_valid = k_end; b.minor_valid = rows_b; }

    float acc[FM][FN][4];
#pragma unroll
    for (int i = 0; i < FM; i++)
#pragma unroll
        for (int j = 0; j < FN; j++)
#pragma unroll
            for (int q = 0; q < 4; q++)
                acc[i][j][q] = 0.0f;

    U4 ra[A_LOADS], rb[B_LOADS];
    // fetch(k0, stage): bf16 chunks go to shared memory directly, into the stage nobody
    // reads now: asynchronously (cp.async) where the chunk lies wholly inside its operand,
    // element by element at edges and the column of ones. Float32 and Fourier chunks are
    // converted into registers and written by commit(stage) after this stage's products.
    auto fetch = [&](unsigned k0, int stage) {
#pragma unroll
        for (int i = 0; i < A_LOADS; i++)
        {
            int c = thread + i * THREADS;
            if (c >= Tile<BM>::CHUNKS)
                continue;
            unsigned major, minor; int index;
            Tile<BM>::chunk_place(c, a_layout, major, minor, index);
            if (a_layout == LAYOUT_K) { major += m0; minor += k0; } else { major += k0; minor += m0; }
            if (a.source != SRC_BF16)
                ra[i] = load_chunk(a, major, minor);
            else if (major < a.major_valid && minor + 8 <= a.minor_valid)
                cp_async16(&tile_a[stage][index],
                           (const unsigned short*)a.base + a.offset + (size_t)major * a.ld + minor);
            else
                *(U4*)&tile_a[stage][index] = load_chunk(a, major, minor);
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; i++)
        {
            int c = thread + i * THREADS;
            if (c >= Tile<BN>::CHUNKS)
                continue;
            unsigned major, minor; int index;
            Tile<BN>::chunk_place(c, b_layout, major, minor, index);
            if (b_layout == LAYOUT_K) { major += n0; minor += k0; } else { major += k0; minor += n0; }
            if (b.source != SRC_BF16)
                rb[i] = overlay_ones(load_chunk(b, major, minor), b_layout, e.ones, major, minor, k_end);
            else if (major < b.major_valid && minor + 8 <= b.minor_valid)
                cp_async16(&tile_b[stage][index],
                           (const unsigned short*)b.base + b.offset + (size_t)major * b.ld + minor);
            else
                *(U4*)&tile_b[stage][index] =
                    overlay_ones(load_chunk(b, major, minor), b_layout, e.ones, major, minor, k_end);
        }
    };
    // The chunks fetch() left in registers (float32 and Fourier operands), into shared memory.
    auto commit = [&](int stage) {
        if (a.source != SRC_BF16)
        {
#pragma unroll
            for (int i = 0; i < A_LOADS; i++)
            {
                int c = thread + i * THREADS;
                unsigned major, minor; int index;
                Tile<BM>::chunk_place(c < Tile<BM>::CHUNKS ? c : 0, a_layout, major, minor, index);
                if (c < Tile<BM>::CHUNKS)
                    *(U4*)&tile_a[stage][index] = ra[i];
            }
        }
        if (b.source != SRC_BF16)
        {
#pragma unroll
            for (int i = 0; i < B_LOADS; i++)
            {
                int c = thread + i * THREADS;
                unsigned major, minor; int index;
                Tile<BN>::chunk_place(c < Tile<BN>::CHUNKS ? c : 0, b_layout, major, minor, index);
                if (c < Tile<BN>::CHUNKS)
                    *(U4*)&tile_b[stage][index] = rb[i];
            }
        }
    };

    if (k_begin < k_end)
    {
        fetch(k_begin, 0);
        commit(0);
        cp_async_wait();
        __syncthreads();
        int stage = 0;
        for (unsigned k0 = k_begin; k0 < k_end; k0 += BK)
        {
            bool more = k0 + BK < k_end;
            if (more)
                fetch(k0 + BK, stage ^ 1);   // loads in flight during the products below
#pragma unroll
            for (int kk = 0; kk < BK; kk += 16)
            {
                unsigned fa[FM][4], fb[FN / 2][4];
#pragma unroll
                for (int i = 0; i < FM; i++)
                    load_a_fragment<BM>(tile_a[stage], a_layout, warp_m * WM + i * 16, kk, lane, fa[i]);
#pragma unroll
                for (int j = 0; j < FN / 2; j++)
                    load_b_fragment<BN>(tile_b[stage], b_layout, warp_n * WN + j * 16, kk, lane, fb[j]);
#pragma unroll
                for (int i = 0; i < FM; i++)
#pragma unroll
                    for (int j = 0; j < FN; j++)
                        mma_bf16(acc[i][j], fa[i], fb[j / 2][(j % 2) * 2], fb[j / 2][(j % 2) * 2 + 1]);
            }
            if (more)
                commit(stage ^ 1);
            cp_async_wait();
            __syncthreads();
            stage ^= 1;
        }
    }

    // Epilogue: thread (g, t) of the warp holds rows g and g + 8, columns 2t and 2t + 1 of each tile.
    const unsigned g = lane / 4, t = lane % 4;
    float colsum[FN][2];
#pragma unroll
    for (int j = 0; j < FN; j++)
        colsum[j][0] = colsum[j][1] = 0.0f;
#pragma unroll
    for (int i = 0; i < FM; i++)
#pragma unroll
        for (int j = 0; j < FN; j++)
#pragma unroll
            for (int h = 0; h < 2; h++)
            {
                unsigned m = m0 + warp_m * WM + i * 16 + g + h * 8;
                unsigned n = n0 + warp_n * WN + j * 8 + 2 * t;
                float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                if (m >= size_m || n >= size_n)
                    continue;
                bool second = n + 1 < size_n;
                if (e.kind == EPI_ACCUMULATE)
                {
                    float* c = (float*)e.c;
                    atomicAdd(c + (n == e.ones ? e.bias_out_offset + m : e.c_offset + (size_t)m * e.c_ld + n), v0);
                    if (second)
                        atomicAdd(c + (n + 1 == e.ones ? e.bias_out_offset + m
                                                       : e.c_offset + (size_t)m * e.c_ld + n + 1), v1);
                    continue;
                }
                if (e.kind == EPI_RELU_GRAD)
                {
                    const unsigned short* hm = e.mask + e.mask_offset + (size_t)m * e.mask_ld + n;
                    v0 = bf16_to_float(hm[0]) > 0.0f ? v0 : 0.0f;
                    v1 = second && bf16_to_float(hm[1]) > 0.0f ? v1 : 0.0f;
                    colsum[j][0] += v0;
                    colsum[j][1] += v1;
                }
                else
                {
                    if (e.bias != nullptr)
                    {
                        v0 += e.bias[e.bias_offset + n];
                        v1 += second ? e.bias[e.bias_offset + n + 1] : 0.0f;
                    }
                    if (e.relu)
                    {
                        v0 = fmaxf(v0, 0.0f);
                        v1 = fmaxf(v1, 0.0f);
                    }
                }
                store_pair(e, m, n, v0, v1, size_n);
            }
    if (e.kind == EPI_RELU_GRAD && e.colsum != nullptr)
    {
        // Column sums over the warp's rows: lanes that share t hold the same columns.
#pragma unroll
        for (int j = 0; j < FN; j++)
#pragma unroll
            for (int q = 0; q < 2; q++)
            {
                float s = colsum[j][q];
                s += __shfl_xor_sync(0xFFFFFFFFu, s, 4);
                s += __shfl_xor_sync(0xFFFFFFFFu, s, 8);
                s += __shfl_xor_sync(0xFFFFFFFFu, s, 16);
                unsigned n = n0 + warp_n * WN + j * 8 + 2 * t + q;
                if (g == 0 && n < size_n)
                    atomicAdd(e.colsum + (n < e.colsum_split ? e.colsum_offset + n
                                                             : e.colsum_offset_hi + n - e.colsum_split), s);
            }
    }
}

// Indices into the kernel's scalar table (TensorGemmParams.scalars of tensor_core_kernels.slang,
// filled in this order by neumours/kernels/tensor_gemm.py SCALARS). S_ZERO is always 0: the
// kernel's never-taken branch that makes Slang compile for sm_80 reads it.
enum
{
    S_A_OFFSET, S_A_LD, S_B_OFFSET, S_B_LD, S_BIAS_OFFSET, S_MASK_OFFSET, S_MASK_LD, S_C_OFFSET, S_C_LD,
    S_ONES_COLUMN, S_BIAS_OUT_OFFSET, S_COLSUM_SPLIT, S_COLSUM_OFFSET, S_COLSUM_OFFSET_HI, S_SIZE_M, S_SIZE_N,
    S_SIZE_K, S_K_CHUNK, S_ZERO, S_COUNT
};

// Compile-time switches packed in `flags` (a literal in the generated code, so
// nvcc keeps one path): the first bit of each field, as FLAGS of tensor_core_kernels.slang
// packs them (2 bits for sources and the epilogue, 1 for the rest).
enum
{
    FLAG_TILES = 0, FLAG_A_SOURCE = 1, FLAG_A_LAYOUT = 3, FLAG_B_SOURCE = 4, FLAG_B_LAYOUT = 6, FLAG_EPILOGUE = 7,
    FLAG_RELU = 9, FLAG_HAS_BIAS = 10, FLAG_C_BF16 = 11, FLAG_HAS_COLSUM = 12
};

template<typename Group, typename Scalars>
__device__ __forceinline__ void run_kernel(unsigned flags, const Group& group, unsigned thread, const void* a,
                                           const void* b, const float* bias, const void* mask, void* c,
                                           float* colsum, const Scalars& s)
{
    Operand oa = {a, (flags >> FLAG_A_SOURCE) & 3u, s[S_A_OFFSET], s[S_A_LD], 0u, 0u};
    Operand ob = {b, (flags >> FLAG_B_SOURCE) & 3u, s[S_B_OFFSET], s[S_B_LD], 0u, 0u};
    Epilogue e = {(flags >> FLAG_EPILOGUE) & 3u, (flags >> FLAG_RELU) & 1u,
                  ((flags >> FLAG_HAS_BIAS) & 1u) ? bias : nullptr, s[S_BIAS_OFFSET],
                  (const unsigned short*)mask, s[S_MASK_OFFSET], s[S_MASK_LD], c, s[S_C_OFFSET], s[S_C_LD],
                  (flags >> FLAG_C_BF16) & 1u, s[S_ONES_COLUMN], s[S_BIAS_OUT_OFFSET],
                  ((flags >> FLAG_HAS_COLSUM) & 1u) ? colsum : nullptr, s[S_COLSUM_SPLIT], s[S_COLSUM_OFFSET],
                  s[S_COLSUM_OFFSET_HI]};
    unsigned a_layout = (flags >> FLAG_A_LAYOUT) & 1u, b_layout = (flags >> FLAG_B_LAYOUT) & 1u;
    if (((flags >> FLAG_TILES) & 1u) == TILES_WIDE)
        gemm<WIDE_BM, WIDE_BN, 64, 32>(group.y, group.x, group.z, thread, oa, a_layout, ob, b_layout, e,
                                       s[S_SIZE_M], s[S_SIZE_N], s[S_SIZE_K], s[S_K_CHUNK]);
    else
        gemm<NARROW_BM, NARROW_BN, 32, 16>(group.y, group.x, group.z, thread, oa, a_layout, ob, b_layout, e,
                                           s[S_SIZE_M], s[S_SIZE_N], s[S_SIZE_K], s[S_K_CHUNK]);
}

}  // namespace neumours_tc
