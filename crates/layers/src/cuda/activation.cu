// ReLU, Tanh and the residual join's relu(a + b), forward and backward, one kernel each, for
// float32 and bf16 (held as its 16 bits, computed in float32 and rounded to nearest even once,
// as PyTorch's bf16 kernels). Compiled to PTX by the build script with the toolkit's nvcc
// (`cuda` feature); launched from `activation_cuda.rs` with one thread per element.
//
// PyTorch's rules: relu keeps NaN (`x <= 0 ? 0 : x`); its gradient (`threshold_backward`) is
// zero where the output is <= 0 and passes elsewhere, NaN included; tanh's gradient is
// `g * (1 - y * y)` from the output y.

typedef unsigned short bf16_bits;

__device__ __forceinline__ float from_bf16(bf16_bits v) {
    return __uint_as_float(((unsigned int)v) << 16);
}

__device__ __forceinline__ bf16_bits to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        // NaN: kept NaN (quiet), with its sign.
        return (bf16_bits)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_bits)(u >> 16);
}

__device__ __forceinline__ float relu_of(float x) { return x <= 0.0f ? 0.0f : x; }

#define UNARY(NAME, EXPR)                                                                    \
    extern "C" __global__ void NAME##_f32(const float *x, float *y, unsigned int n) {        \
        unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;                              \
        if (i < n) {                                                                         \
            float v = x[i];                                                                  \
            y[i] = (EXPR);                                                                   \
        }                                                                                    \
    }                                                                                        \
    extern "C" __global__ void NAME##_bf16(const bf16_bits *x, bf16_bits *y, unsigned int n) { \
        unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;                              \
        if (i < n) {                                                                         \
            float v = from_bf16(x[i]);                                                       \
            y[i] = to_bf16(EXPR);                                                            \
        }                                                                                    \
    }

UNARY(relu, relu_of(v))
UNARY(tanh, tanhf(v))

// relu(a + b): the sum rounded to the dtype first (as `a + b` then relu), then the ReLU.
extern "C" __global__ void add_relu_f32(const float *a, const float *b, float *y, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = relu_of(a[i] + b[i]);
    }
}

extern "C" __global__ void add_relu_bf16(const bf16_bits *a, const bf16_bits *b, bf16_bits *y,
                                         unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        bf16_bits s = to_bf16(from_bf16(a[i]) + from_bf16(b[i]));
        y[i] = from_bf16(s) <= 0.0f ? (bf16_bits)0 : s;
    }
}

// The input gradient from the output y and its gradient g.
extern "C" __global__ void relu_bwd_f32(const float *y, const float *g, float *dx, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        dx[i] = y[i] <= 0.0f ? 0.0f : g[i];
    }
}

extern "C" __global__ void relu_bwd_bf16(const bf16_bits *y, const bf16_bits *g, bf16_bits *dx,
                                         unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        dx[i] = from_bf16(y[i]) <= 0.0f ? (bf16_bits)0 : g[i];
    }
}

extern "C" __global__ void tanh_bwd_f32(const float *y, const float *g, float *dx, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = y[i];
        dx[i] = g[i] * (1.0f - v * v);
    }
}

extern "C" __global__ void tanh_bwd_bf16(const bf16_bits *y, const bf16_bits *g, bf16_bits *dx,
                                         unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = from_bf16(y[i]);
        dx[i] = to_bf16(from_bf16(g[i]) * (1.0f - v * v));
    }
}
