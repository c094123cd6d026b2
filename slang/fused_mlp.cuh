// The whole INR forward in one kernel on the tensor cores (CUDA C++): logits of a batch of points.
//
// Inference only (segment, the volume cache, the viewer, refinement's re-cache); training keeps
// the layer-by-layer products of tensor_core.cuh, which store every activation for the backward.
// The prelude of slang/fused_mlp_kernels.slang: copied, with tensor_core.cuh and fourier.h
// inlined, into the generated slang/fused_mlp_prelude.slang (neumours/kernels/tensor_core_prelude.py).
// Tests without a GPU: tests/test_fused_mlp.py compiles it on its own with nvcc (sm_90, its contract
// with Python asserted), tests/test_fused_mlp_emulation.py runs it with g++ on the host emulation of
// the CUDA primitives (slang/cuda_emulation.h), tests/test_codegen.py builds the Slang kernel.
//
// Design (tiny-cuda-nn's fully fused MLP, adapted to width 256): each warp owns 16 points and
// keeps their whole activation row in registers, as mma.sync A fragments. The accumulator
// fragment of an m16n8 product (rows g, g + 8; columns 2t, 2t + 1) is, after bias, ReLU and
// rounding to bf16, exactly the A fragment of the next layer for two adjacent n8 tiles, so the
// activations never leave the registers: no shared memory, no block barrier, warps independent.
// Weights are read from global memory (L1/L2-resident: 0.5 MB for the paper's network) in
// fragment order: the bf16 copy is packed so that lane l of a warp reads the two words of its
// B fragment of (k16 tile, n8 tile) at ((kt * N8 + nt) * 32 + l) * 2, one coalesced 256-byte
// load per warp and mma (packed on the device by pack_fragments of bf16_kernels.slang, whose
// layer table neumours/model/fused.py builds). The spatial head's A fragments are the Fourier features of the
// coordinates made on load (fourier_value of tensor_core.cuh), the modality head's the float32
// patches rounded on load, as the layer-by-layer products make them, so the two paths compute
// the same bf16 products in the same order.
//
// Sizes are run-time arguments that the generated code passes as literals (FusedShape.packed of
// neumours/kernels/fused_mlp.py, unpacked by run_packed below; nvcc folds them);
// register arrays are bounded by MAX_HIDDEN and loops over them are unrolled with guards, so
// every array index is a compile-time constant and the arrays stay in registers. The layer
// table (word offsets of each layer's fragments, float offsets of its padded biases) is
// neumours/kernels/fused_mlp.py's kernel_table, in the order of the network's dense layers: spatial head,
// modality head, hidden layers, output head.
#pragma once

#include "tensor_core.cuh"

namespace neumours_fused {

using neumours_tc::mma_bf16;
using neumours_tc::pack_bf16;
using neumours_tc::fourier_value;

constexpr int WARPS = 4;                   // warps per group
constexpr int THREADS = WARPS * 32;        // threads per group
constexpr int ROWS = 16;                   // points per warp (the m of an m16n8k16 product)
constexpr int POINTS = WARPS * ROWS;       // points per group
constexpr int MAX_HIDDEN = 256;            // largest hidden width (register-resident rows)
constexpr int MAX_HIDDEN_LAYERS = 8;       // most hidden layers (the layer table's length)
constexpr int MAX_CLASSES = 16;            // most output classes
constexpr int HEAD_CHUNK = 16;             // n8 tiles of a head computed per pass over its inputs
constexpr int HIDDEN_CHUNK = 8;            // n8 tiles of a hidden layer accumulated at once
constexpr int MAX_H16 = MAX_HIDDEN / 16;   // A-fragment tiles of a hidden row
constexpr int MAX_H8 = MAX_HIDDEN / 8;     // n8 tiles of a hidden row
constexpr int WORDS_PER_TILE = 64;         // 32 lanes x 2 words: one B fragment of (k16, n8)

// The layer table, from Python (neumours/kernels/fused_mlp.py TABLE): the point count, the
// weight word offset of each layer (spatial, modality, hidden 0 .. L - 1, output head; unused
// entries 0), the bias offset of each, and an entry that is always 0 (read by a branch of the
// Slang kernel that never runs; see fused_mlp_kernels.slang).
enum { T_COUNT = 0, T_WEIGHTS = 1, T_BIASES = T_WEIGHTS + MAX_HIDDEN_LAYERS + 3,
       T_ZERO = T_BIASES + MAX_HIDDEN_LAYERS + 3, T_SIZE = T_ZERO + 1 };

struct alignas(8) U2 { unsigned x, y; };

// Network sizes (docs/method.md): F = 3 + 6K Fourier features, P patch values, heads of S and
// M columns (S + M = H), L hidden layers of width H, C classes.
struct Shape
{
    unsigned f, p, s, m, h, l, c;
};

// B fragment of (k16 tile kt, n8 tile nt) of a layer whose packed fragments start at `words`.
__device__ __forceinline__ void load_b(const unsigned* words, unsigned n8, unsigned kt, unsigned nt, unsigned lane,
                                       unsigned& b0, unsigned& b1)
{
    U2 v = *(const U2*)(words + ((size_t)(kt * n8 + nt) * 32u + lane) * 2u);
    b0 = v.x;
    b1 = v.y;
}

// A fragment of rows (g, g + 8) and k16 tile kt of an input computed by value(row, k)
// (0 outside its width or for rows past the batch).
template<typename Value>
__device__ __forceinline__ void input_fragment(const Value& value, unsigned width, unsigned kt, unsigned t,
                                               unsigned* a)
{
    unsigned k0 = kt * 16u + 2u * t;
    float v[2][4];
#pragma unroll
    for (int r = 0; r < 2; r++)
#pragma unroll
        for (int q = 0; q < 4; q++)
        {
            unsigned k = k0 + (q & 1) + (q >> 1) * 8u;
            v[r][q] = k < width ? value(r, k) : 0.0f;
        }
    a[0] = pack_bf16(v[0][0], v[0][1]);
    a[1] = pack_bf16(v[1][0], v[1][1]);
    a[2] = pack_bf16(v[0][2], v[0][3]);
    a[3] = pack_bf16(v[1][2], v[1][3]);
}

// bias + ReLU of an accumulator tile of output columns n, n + 1 (n = 8 nt + 2t), rounded to bf16
// into the A fragment of the next layer: tile nt is half of k16 tile nt / 2.
__device__ __forceinline__ void to_fragment(const float* acc, const float* bias, unsigned n, unsigned nt,
                                            unsigned (*out)[4], unsigned out_tile)
{
    float b0 = bias[n], b1 = bias[n + 1];
    unsigned lo = pack_bf16(fmaxf(acc[0] + b0, 0.0f), fmaxf(acc[1] + b1, 0.0f));
    unsigned hi = pack_bf16(fmaxf(acc[2] + b0, 0.0f), fmaxf(acc[3] + b1, 0.0f));
    unsigned half = (nt & 1u) * 2u;
    out[out_tile][half] = lo;
    out[out_tile][half + 1] = hi;
}

// One head: columns [column, column + width) of H0 = relu(input W^T + b), K = `inputs` values
// per point made by value(row, k); W's fragments at words, its padded bias at bias.
template<typename Value>
__device__ __forceinline__ void head(const Value& value, unsigned inputs, unsigned width, unsigned column,
                                     const unsigned* words, const float* bias, unsigned lane,
                                     unsigned (*act)[4])
{
    const unsigned t = lane % 4u;
    const unsigned n8 = width / 8u, k16 = (inputs + 15u) / 16u, first = column / 8u;
#pragma unroll
    for (int chunk = 0; chunk < MAX_H8 / HEAD_CHUNK; chunk++)
    {
        if (chunk * HEAD_CHUNK >= (int)n8)
            break;
        float acc[HEAD_CHUNK][4];
#pragma unroll
        for (int j = 0; j < HEAD_CHUNK; j++)
            acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll 1
        for (unsigned kt = 0; kt < k16; kt++)
        {
            unsigned a[4];
            input_fragment(value, inputs, kt, t, a);
#pragma unroll
            for (int j = 0; j < HEAD_CHUNK; j++)
            {
                unsigned nt = chunk * HEAD_CHUNK + j;
                if (nt < n8)
                {
                    unsigned b0, b1;
                    load_b(words, n8, kt, nt, lane, b0, b1);
                    mma_bf16(acc[j], a, b0, b1);
                }
            }
        }
        // Where this head's tiles land in H0 (first + nt) is known at compile time only per
        // value of `first`; the heads start at tile 0 and tile S / 8, so both are walked.
#pragma unroll
        for (int j = 0; j < HEAD_CHUNK; j++)
        {
            unsigned nt = chunk * HEAD_CHUNK + j;
            if (nt >= n8)
                continue;
            unsigned n = 8u * nt + 2u * t;
#pragma unroll
            for (int tile = 0; tile < MAX_H8; tile++)
                if ((unsigned)tile == first + nt)
                    to_fragment(acc[j], bias, n, (unsigned)tile, act, (unsigned)tile / 2u);
        }
    }
}

// One hidden layer: next = relu(act W^T + b) for width h (h / 16 A tiles in, h / 8 n8 tiles out).
__device__ __forceinline__ void hidden(unsigned h, const unsigned* words, const float* bias, unsigned lane,
                                       unsigned (*act)[4], unsigned (*next)[4])
{
    const unsigned t = lane % 4u;
    const unsigned n8 = h / 8u, k16 = h / 16u;
#pragma unroll
    for (int chunk = 0; chunk < MAX_H8 / HIDDEN_CHUNK; chunk++)
    {
        if (chunk * HIDDEN_CHUNK >= (int)n8)
            break;
        float acc[HIDDEN_CHUNK][4];
#pragma unroll
        for (int j = 0; j < HIDDEN_CHUNK; j++)
            acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
        for (int kt = 0; kt < MAX_H16; kt++)
        {
            if ((unsigned)kt >= k16)
                break;
#pragma unroll
            for (int j = 0; j < HIDDEN_CHUNK; j++)
            {
                unsigned nt = chunk * HIDDEN_CHUNK + j;
                if (nt < n8)
                {
                    unsigned b0, b1;
                    load_b(words, n8, kt, nt, lane, b0, b1);
                    mma_bf16(acc[j], act[kt], b0, b1);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < HIDDEN_CHUNK; j++)
        {
            const unsigned nt = chunk * HIDDEN_CHUNK + j;
            if (nt < n8)
                to_fragment(acc[j], bias, 8u * nt + 2u * t, nt, next, nt / 2u);
        }
    }
}

// The group's POINTS points from `group` * POINTS: logits[point * C + class] (float32).
// thread: 0 .. THREADS - 1. table: T_SIZE entries (T_COUNT, then the layer offsets).
template<typename Table>
__device__ __forceinline__ void run_kernel(Shape shape, unsigned group, unsigned thread, const float* coords,
                                           const float* patches, const unsigned* weights, const float* biases,
                                           float* logits, const Table& table)
{
    const unsigned lane = thread % 32u, warp = thread / 32u;
    const unsigned g = lane / 4u, t = lane % 4u;
    const unsigned count = table[T_COUNT];
    const unsigned row0 = group * POINTS + warp * ROWS;
    if (row0 >= count)
        return;   // the whole warp: its 16 points are past the batch
    const unsigned point[2] = {row0 + g, row0 + g + 8u};
    const bool valid[2] = {point[0] < count, point[1] < count};

    unsigned act[MAX_H16][4], next[MAX_H16][4];
#pragma unroll
    for (int i = 0; i < MAX_H16; i++)
#pragma unroll
        for (int q = 0; q < 4; q++)
            act[i][q] = next[i][q] = 0u;

    auto gamma = [&](int r, unsigned k) { return valid[r] ? fourier_value(coords, point[r], k) : 0.0f; };
    auto patch = [&](int r, unsigned k) { return valid[r] ? patches[(size_t)point[r] * shape.p + k] : 0.0f; };
    head(gamma, shape.f, shape.s, 0u, weights + table[T_WEIGHTS], biases + table[T_BIASES], lane, act);
    head(patch, shape.p, shape.m, shape.s, weights + table[T_WEIGHTS + 1], biases + table[T_BIASES + 1], lane, act);

#pragma unroll 1
    for (unsigned layer = 0; layer < shape.l; layer++)
    {
        hidden(shape.h, weights + table[T_WEIGHTS + 2 + layer], biases + table[T_BIASES + 2 + layer], lane, act,
               next);
#pragma unroll
        for (int i = 0; i < MAX_H16; i++)
#pragma unroll
            for (int q = 0; q < 4; q++)
                act[i][q] = next[i][q];
    }

    // Output head: logits = act W^T + b, no ReLU, float32 out.
    const unsigned last = 2u + shape.l;
    const unsigned* words = weights + table[T_WEIGHTS + last];
    const float* bias = biases + table[T_BIASES + last];
    const unsigned n8 = (shape.c + 7u) / 8u, k16 = shape.h / 16u;
#pragma unroll
    for (int nt = 0; nt < MAX_CLASSES / 8; nt++)
    {
        if ((unsigned)nt >= n8)
            break;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int kt = 0; kt < MAX_H16; kt++)
        {
            if ((unsigned)kt >= k16)
                break;
            unsigned b0, b1;
            load_b(words, n8, kt, nt, lane, b0, b1);
            mma_bf16(acc, act[kt], b0, b1);
        }
        const unsigned n = 8u * nt + 2u * t;
#pragma unroll
        for (int r = 0; r < 2; r++)
        {
            if (!valid[r])
                continue;
#pragma unroll
            for (int q = 0; q < 2; q++)
                if (n + q < shape.c)
                    logits[(size_t)point[r] * shape.c + n + q] = acc[2 * r + q] + bias[n + q];
        }
    }
}

// run_kernel as the Slang kernel calls it (Slang's intrinsics take ten arguments at most): the
// sizes packed as f | p << 16, s | m << 16 and h | l << 16 | c << 24, and the dispatch thread index.
template<typename Table>
__device__ __forceinline__ void run_packed(unsigned shape0, unsigned shape1, unsigned shape2, unsigned index,
                                           const float* coords, const float* patches, const unsigned* weights,
                                           const float* biases, float* logits, const Table& table)
{
    Shape shape = {shape0 & 0xFFFFu, shape0 >> 16, shape1 & 0xFFFFu, shape1 >> 16, shape2 & 0xFFFFu,
                   (shape2 >> 16) & 0xFFu, shape2 >> 24};
    run_kernel(shape, index / THREADS, index % THREADS, coords, patches, weights, biases, logits, table);
}

}  // namespace neumours_fused
