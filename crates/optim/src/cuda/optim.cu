// The optimizers' steps over many float32 parameter tensors in one launch, in place: each
// parameter and its gradient are read where they are (their addresses in `Tensors`), the
// optimizer's state is flat tensors in the parameters' order (read from `in0`/`in1`, written
// to `out0`/`out1`). SGD (PyTorch's `torch.optim.SGD`: weight decay, momentum, dampening,
// Nesterov) and Adam / AdamW (`torch.optim.Adam`, `AdamW`).
//
// The element-wise operations are PyTorch's single-tensor ones (`torch.optim.SGD`, `Adam`) in
// their order, each rounded by itself (`__fadd_rn` and the like, which nothing contracts into an
// fma): the CPU's fused step rounding twice (`optim::fused`, `Rounding::Twice`) bit for bit,
// and Candle's tensor operations (`optim::sgd::update`, `optim::adam::tensor_step`) but for the
// sign of zeros (Candle's product with a scalar, `fma(x, s, 0)`, turns a -0 into +0).

#define MAX_TENSORS 64

struct Tensors {
    unsigned long long param[MAX_TENSORS];
    unsigned long long grad[MAX_TENSORS];
    // start[j]: tensor j's first position in the flat order; start[count]: the total.
    unsigned long long start[MAX_TENSORS + 1];
    unsigned int count;
};

struct Scalars {
    float v[8];
};

__device__ __forceinline__ float scaled(float x, float s) { return __fmul_rn(x, s); }

// `update(i, param, grad)` for every flat position i of the tensors (a grid-stride loop):
// `param` is the address of i's parameter value, `grad` its gradient.
template <typename Update>
__device__ __forceinline__ void for_each(const Tensors &t, Update update) {
    const unsigned long long total = t.start[t.count];
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        // The tensor holding i: start[lo] <= i < start[hi], narrowed to hi = lo + 1.
        unsigned int lo = 0, hi = t.count;
        while (hi - lo > 1) {
            unsigned int mid = (lo + hi) / 2;
            if (t.start[mid] <= i) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        const unsigned long long at = i - t.start[lo];
        update(i, (float *)t.param[lo] + at, ((const float *)t.grad[lo])[at]);
    }
}

enum {
    SGD_WEIGHT_DECAY = 1,
    SGD_MOMENTUM = 2,
    SGD_HAS_BUFFER = 4,
    SGD_DAMPENING = 8,
    SGD_NESTEROV = 16,
};

// v: weight decay, momentum, 1 - dampening, -lr. in0: the momentum buffer (with
// SGD_HAS_BUFFER), out0: the new one (with SGD_MOMENTUM).
extern "C" __global__ void sgd_f32(const __grid_constant__ Tensors t, const float *in0,
                                   const float *in1, float *out0, float *out1,
                                   const __grid_constant__ Scalars s, unsigned int flags) {
    for_each(t, [&](unsigned long long i, float *param, float d) {
        const float p = *param;
        if (flags & SGD_WEIGHT_DECAY) {
            d = __fadd_rn(d, scaled(p, s.v[0]));
        }
        if (flags & SGD_MOMENTUM) {
            float b;
            if (!(flags & SGD_HAS_BUFFER)) {
                b = d;
            } else if (flags & SGD_DAMPENING) {
                b = __fadd_rn(scaled(in0[i], s.v[1]), scaled(d, s.v[2]));
            } else {
                b = __fadd_rn(scaled(in0[i], s.v[1]), d);
            }
            out0[i] = b;
            d = (flags & SGD_NESTEROV) ? __fadd_rn(d, scaled(b, s.v[1])) : b;
        }
        *param = __fadd_rn(p, scaled(d, s.v[3]));
    });
}

enum {
    ADAM_WEIGHT_DECAY = 1,
    ADAM_DECOUPLED = 2,
    ADAM_HAS_MOMENTS = 4,
};

// v: weight decay (Adam) or 1 - lr * weight decay (AdamW), 1 - beta1, beta2, 1 - beta2,
// sqrt(bias correction 2), eps, -lr / bias correction 1. in0, in1: exp_avg, exp_avg_sq (with
// ADAM_HAS_MOMENTS; zeros before the first step); out0, out1: the new ones.
extern "C" __global__ void adam_f32(const __grid_constant__ Tensors t, const float *in0,
                                    const float *in1, float *out0, float *out1,
                                    const __grid_constant__ Scalars s, unsigned int flags) {
    for_each(t, [&](unsigned long long i, float *param, float g) {
        float p = *param;
        if (flags & ADAM_WEIGHT_DECAY) {
            if (flags & ADAM_DECOUPLED) {
                p = scaled(p, s.v[0]);
            } else {
                g = __fadd_rn(g, scaled(p, s.v[0]));
            }
        }
        const bool has = (flags & ADAM_HAS_MOMENTS) != 0;
        float avg = has ? in0[i] : 0.0f;
        float sq = has ? in1[i] : 0.0f;
        // PyTorch's lerp (Lerp.h): from the nearer end.
        avg = s.v[1] < 0.5f ? __fadd_rn(avg, scaled(__fsub_rn(g, avg), s.v[1]))
                            : __fsub_rn(g, scaled(__fsub_rn(g, avg), __fsub_rn(1.0f, s.v[1])));
        sq = __fadd_rn(scaled(sq, s.v[2]), __fmul_rn(scaled(g, s.v[3]), g));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(sq), s.v[4]), s.v[5]);
        out0[i] = avg;
        out1[i] = sq;
        *param = __fadd_rn(p, __fdiv_rn(scaled(avg, s.v[6]), denom));
    });
}
