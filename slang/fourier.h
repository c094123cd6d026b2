// The Fourier feature gamma(p) of docs/method.md, written once for both languages that
// compute it: Slang (encoding.slang: the encoding kernels and the fp32 matrix product)
// and CUDA C++ (tensor_core.cuh: the bf16 tensor-core product). The C++ prelude cannot
// import a Slang module, so both include this file; the includer first defines
//   FOURIER_FN        the functions' qualifiers (Slang: public; CUDA: __device__ inline)
//   FOURIER_UINT      a 32-bit unsigned type
//   FOURIER_AS_UINT   float -> its bits,  FOURIER_AS_FLOAT  bits -> float
//   FOURIER_FMOD      the floating-point remainder
// Each language then evaluates sin and cos of pi times the reduced argument its own way
// (Slang: sin/cos of PI * r, with hand-written derivatives; CUDA: sincospif(r)).
//
//   gamma(p) = [p, sin(pi*1*p), cos(pi*1*p), ..., sin(pi*K*p), cos(pi*K*p)]
// with p in [-1, 1]^3 and every sin/cos block holding the 3 axes: 3 + 6K numbers.
#ifndef NEUMOURS_FOURIER_H
#define NEUMOURS_FOURIER_H

// k * x - 2n for an integer n, exactly up to the final sum: x is split into a high part
// with 12 significant bits and the exact remainder, so that k * hi and k * (x - hi) are
// exact in fp32 for integer k < 2^11 and the fmod by 2 is exact. The highest
// frequencies (|pi*k*x| up to ~200 for K = 64) keep fp32 precision this way.
FOURIER_FN float fourier_reduce(float x, float k)
{
    float hi = FOURIER_AS_FLOAT(FOURIER_AS_UINT(x) & 0xFFFFF000u);
    return FOURIER_FMOD(k * hi, 2.0f) + k * (x - hi);
}

// Feature j >= 3 of gamma(p) is sin(pi k p[axis]) (slot < 3) or cos(pi k p[axis]) (slot >= 3)
// of frequency k = block + 1, with block = (j - 3) / 6, slot = (j - 3) - 6 block and
// axis = slot mod 3. Features 0..2 are p itself.
FOURIER_FN FOURIER_UINT fourier_block(FOURIER_UINT j)
{
    return (j - 3u) / 6u;
}

FOURIER_FN FOURIER_UINT fourier_slot(FOURIER_UINT j, FOURIER_UINT block)
{
    return (j - 3u) - 6u * block;
}

FOURIER_FN FOURIER_UINT fourier_axis(FOURIER_UINT slot)
{
    return slot < 3u ? slot : slot - 3u;
}

#endif
