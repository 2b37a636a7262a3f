// What our CUDA kernels use of CUDA, for compiling their source as C++ and running it on the
// CPU, one thread at a time (ptx-build's `host`, for tests without a GPU). A kernel becomes a
// plain `extern "C"` function; before each call, `cuda_host_thread` sets the thread's
// `gridDim.x`, `blockDim.x`, `blockIdx.x` and `threadIdx.x` (thread-local, so test threads do
// not meet). The `_rn` intrinsics are the IEEE operations they name, never contracted into
// FMAs, as on the GPU; here nothing else is contracted either (`-ffp-contract=off`), while nvcc
// may contract a plain `a * b + c` into an FMA, so only kernels written with the intrinsics
// give the GPU's bits exactly. Atomics are plain updates, the threads running in turn.

#pragma once
#include <math.h>
#include <stddef.h>
#include <string.h>

struct cuda_host_uint3 {
    unsigned int x, y, z;
};

inline thread_local cuda_host_uint3 threadIdx{0, 0, 0};
inline thread_local cuda_host_uint3 blockIdx{0, 0, 0};
inline thread_local cuda_host_uint3 blockDim{1, 1, 1};
inline thread_local cuda_host_uint3 gridDim{1, 1, 1};

// Weak: every crate's library defines it, the same function on the same variables.
extern "C" __attribute__((weak)) void cuda_host_thread(unsigned int grid, unsigned int block,
                                                       unsigned int b, unsigned int t) {
    gridDim.x = grid;
    blockDim.x = block;
    blockIdx.x = b;
    threadIdx.x = t;
}

#define __global__
#define __device__
#define __forceinline__ inline
#define __grid_constant__

static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }

static inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline unsigned int atomicAdd(unsigned int *at, unsigned int v) {
    unsigned int old = *at;
    *at = old + v;
    return old;
}
