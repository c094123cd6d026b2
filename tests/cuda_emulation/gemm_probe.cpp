// slang/tensor_core.cuh's kernel body on the CPU, through slang/cuda_emulation.h, for
// tests/test_cuda_emulation.py (loaded with ctypes). Build:
//   g++ -std=c++17 -O2 -fno-strict-aliasing -pthread -shared -fPIC -DNEUMOURS_CUDA_EMULATION -I slang gemm_probe.cpp
#include "cuda_emulation.h"
#include "tensor_core.cuh"

namespace {

struct Scalars
{
    const unsigned* v;
    unsigned operator[](int i) const { return v[i]; }
};

}  // namespace

// The dispatch of tensor_core_kernels.slang's tensor_gemm: `groups` (x, y, z) of THREADS threads.
extern "C" void emulated_tensor_gemm(unsigned flags, unsigned groups_x, unsigned groups_y, unsigned groups_z,
                                     const void* a, const void* b, const float* bias, const void* mask, void* c,
                                     float* colsum, const unsigned* scalars)
{
    Scalars s = {scalars};
    neumours_emu::launch(dim3(groups_x, groups_y, groups_z), dim3(neumours_tc::THREADS), [&] {
        neumours_tc::run_kernel(flags, blockIdx, threadIdx.x, a, b, bias, mask, c, colsum, s);
    });
}

// A deliberate fault of the emulator (neumours_emu::Fault), for the tests that must fail.
extern "C" void emulated_fault(int fault)
{
    neumours_emu::fault = fault;
}

// One warp-wide collective with 32 lanes: each lane's value after __shfl_xor_sync by `lane_mask`,
// and after __shfl_sync from lane `source` (out: 64 floats).
extern "C" void emulated_shuffles(int lane_mask, int source, float* out)
{
    neumours_emu::launch(dim3(1), dim3(32), [&] {
        float v = 100.0f + threadIdx.x;
        out[threadIdx.x] = __shfl_xor_sync(0xFFFFFFFFu, v, lane_mask);
        out[32 + threadIdx.x] = __shfl_sync(0xFFFFFFFFu, v, source);
    });
}

// Odd lanes return before a shuffle that even lanes call: the emulator must abort, naming it.
extern "C" void emulated_divergent_shuffle()
{
    neumours_emu::launch(dim3(1), dim3(32), [] {
        if (threadIdx.x % 2)
            return;
        (void)__shfl_xor_sync(0xFFFFFFFFu, 1.0f, 1);
    });
}

// neumours_tc::pack_bf16 (cvt.rn.bf16x2.f32) of value pairs (lo[i], hi[i]) into out[i].
extern "C" void emulated_pack_bf16(const float* lo, const float* hi, unsigned* out, int count)
{
    for (int i = 0; i < count; i++)
        out[i] = neumours_tc::pack_bf16(lo[i], hi[i]);
}

// sincospif of x[i] into s[i], c[i].
extern "C" void emulated_sincospif(const float* x, float* s, float* c, int count)
{
    for (int i = 0; i < count; i++)
        sincospif(x[i], &s[i], &c[i]);
}

// Lane 5 gives ldmatrix a row address 2 bytes off 16-byte alignment: the emulator must abort.
extern "C" void emulated_misaligned_ldmatrix()
{
    neumours_emu::launch(dim3(1), dim3(32), [] {
        __shared__ __align__(16) unsigned short tile[32 * 8 + 8];
        unsigned r[4];
        neumours_tc::ldmatrix_x4(tile + threadIdx.x * 8 + (threadIdx.x == 5 ? 1 : 0), r);
    });
}
