// slang/fused_mlp.cuh's kernel body on the CPU, through slang/cuda_emulation.h, for
// tests/test_fused_mlp_emulation.py (loaded with ctypes). Build:
//   g++ -std=c++17 -O2 -fno-strict-aliasing -pthread -shared -fPIC -DNEUMOURS_CUDA_EMULATION -I slang fused_probe.cpp
#include "cuda_emulation.h"
#include "fused_mlp.cuh"

namespace {

struct Table
{
    const unsigned* v;
    unsigned operator[](int i) const { return v[i]; }
};

}  // namespace

// The dispatch of fused_mlp_kernels.slang's fused_mlp: `groups` groups of THREADS threads, the sizes
// packed as the Slang kernel packs them (SHAPE0 .. SHAPE2).
extern "C" void emulated_fused_mlp(unsigned shape0, unsigned shape1, unsigned shape2, unsigned groups,
                                   const float* coords, const float* patches, const unsigned* weights,
                                   const float* biases, float* logits, const unsigned* table)
{
    Table t = {table};
    neumours_emu::launch(dim3(groups), dim3(neumours_fused::THREADS), [&] {
        neumours_fused::run_packed(shape0, shape1, shape2, blockIdx.x * neumours_fused::THREADS + threadIdx.x,
                                   coords, patches, weights, biases, logits, t);
    });
}

// A deliberate fault of the emulator (neumours_emu::Fault), for the test that must fail.
extern "C" void emulated_fault(int fault)
{
    neumours_emu::fault = fault;
}
