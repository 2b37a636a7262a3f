// SGD (PyTorch's `torch.optim.SGD`: weight decay, momentum, dampening, Nesterov) over many
// float32 parameter tensors in one launch, in place: each parameter and its gradient are
// read where they are (their addresses in `Tensors`), the momentum buffer is one flat tensor
// in the parameters' order (read from `buf`, written to `new_buf`).
//
// The element-wise operations are those of `optim::sgd::update` as Candle runs them, one
// rounding each and in the same order, so the result is the same bit for bit: a product with
// a scalar is Candle's `affine` kernel, `fma(x, scalar, 0)`; a sum of two tensors is `x + y`
// (`__fadd_rn`, which nothing contracts into an fma).

#define MAX_TENSORS 64

struct Tensors {
    unsigned long long param[MAX_TENSORS];
    unsigned long long grad[MAX_TENSORS];
    // start[j]: tensor j's first position in the flat order; start[count]: the total.
    unsigned long long start[MAX_TENSORS + 1];
    unsigned int count;
};

enum {
    WEIGHT_DECAY = 1,
    MOMENTUM = 2,
    HAS_BUFFER = 4,
    DAMPENING = 8,
    NESTEROV = 16,
};

__device__ __forceinline__ float scaled(float x, float s) { return __fmaf_rn(x, s, 0.0f); }

extern "C" __global__ void sgd_f32(const __grid_constant__ Tensors t, const float *buf,
                                   float *new_buf, float weight_decay, float momentum,
                                   float keep, float neg_lr, unsigned int flags) {
    const unsigned long long total = t.start[t.count];
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        // The tensor holding position i: start[lo] <= i < start[hi], narrowed to hi = lo + 1.
        unsigned int lo = 0, hi = t.count;
        while (hi - lo > 1) {
            unsigned int mid = (lo + hi) / 2;
            if (t.start[mid] <= i) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        float *param = (float *)t.param[lo];
        const float *grad = (const float *)t.grad[lo];
        const unsigned long long at = i - t.start[lo];
        const float p = param[at];
        float d = grad[at];
        if (flags & WEIGHT_DECAY) {
            d = __fadd_rn(d, scaled(p, weight_decay));
        }
        if (flags & MOMENTUM) {
            float b;
            if (!(flags & HAS_BUFFER)) {
                b = d;
            } else if (flags & DAMPENING) {
                b = __fadd_rn(scaled(buf[i], momentum), scaled(d, keep));
            } else {
                b = __fadd_rn(scaled(buf[i], momentum), d);
            }
            new_buf[i] = b;
            d = (flags & NESTEROV) ? __fadd_rn(d, scaled(b, momentum)) : b;
        }
        param[at] = __fadd_rn(p, scaled(d, neg_lr));
    }
}
