// oneDNN convolutions for `layers::conv::onednn` (feature `onednn`), behind a small C ABI.
//
// The Rust side passes plain NCHW float32 tensors (OIHW for the kernel). Each convolution shape
// gets its primitives once (forward, backward-data, backward-weights, and the reorders between
// NCHW and the primitive's blocked layout), cached by shape and shared by all threads (oneDNN's
// primitives may run concurrently); the blocked buffers and the scratchpad belong to the calling
// thread, shared by all shapes, and grow to the largest. The Rust side splits a batch over
// rayon's threads and runs each part with one OpenMP thread.
//
// Written against the oneDNN 2.x C++ API (Debian's libdnnl-dev 2.6 here); the primitive
// descriptors are built through 3.x's constructors where `DNNL_VERSION_MAJOR >= 3`.

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <memory>
#include <mutex>
#include <vector>

// libgomp's (oneDNN's OpenMP runtime here), declared rather than included so that the shim
// builds with any C++ compiler, without `-fopenmp`.
extern "C" void omp_set_num_threads(int);
extern "C" int omp_get_max_threads(void);

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

extern "C" {
/// One convolution: input (n, c, h, w), kernel (o, c, kh, kw), output (n, o, oh, ow).
struct CnnDnnlConv {
    int64_t n, c, h, w, o, kh, kw, oh, ow, stride, pad;
    /// 1: the products in bf16 (operands rounded to nearest even, sums in float32).
    int32_t bf16;
    /// 1: Winograd F(4x4, 3x3) where oneDNN has it (float32, 3x3, stride 1).
    int32_t winograd;
};
}

namespace {

engine &eng() {
    static engine e(engine::kind::cpu, 0);
    return e;
}

/// A growable buffer of one thread, shared by every shape, page-aligned with a spare
/// page at the end. (With std::vector's 16-byte alignment, oneDNN 2.6's Winograd backward
/// crashed now and then; it runs on these buffers, in its own layouts.)
struct Buffer {
    void *data = nullptr;
    size_t size = 0;
    Buffer() = default;
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;
    ~Buffer() { std::free(data); }
    void *get(size_t n) {
        if (size < n) {
            size_t grown = (n + 4095) / 4096 * 4096;
            void *fresh = std::aligned_alloc(4096, grown + 4096);
            if (!fresh) throw std::bad_alloc();
            std::free(data);
            data = fresh;
            size = grown;
        }
        return data;
    }
};

/// A reorder from one layout to another, with its scratchpad taken from the caller (a
/// library-managed one may not move between threads, and reorders run on any of rayon's).
struct Reorder {
    reorder::primitive_desc pd;
    reorder r;
    Reorder() = default;
    Reorder(const memory::desc &from, const memory::desc &to) {
        primitive_attr attr;
        attr.set_scratchpad_mode(scratchpad_mode::user);
        pd = reorder::primitive_desc(eng(), from, eng(), to, attr);
        r = reorder(pd);
    }
};

/// The primitive's operand in its own layout, with the reorders to and from the user's NCHW.
struct Operand {
    memory::desc user, inner;
    bool same = true;
    Reorder to_inner, to_user;
    void init(const memory::desc &u, const memory::desc &p, bool in, bool out) {
        user = u;
        inner = p;
        same = (u == p);
        if (!same && in) to_inner = Reorder(u, p);
        if (!same && out) to_user = Reorder(p, u);
    }
};

struct Entry {
    convolution_forward::primitive_desc fpd;
    convolution_forward fwd;
    convolution_backward_data::primitive_desc dpd;
    convolution_backward_data bwd_data;
    convolution_backward_weights::primitive_desc wpd;
    convolution_backward_weights bwd_weights;
    // Forward: src, wei in, dst out. Backward data: diff_dst, wei in, diff_src out.
    // Backward weights: src, diff_dst in, diff_wei out.
    Operand f_src, f_wei, f_dst, d_ddst, d_wei, d_dsrc, w_src, w_ddst, w_dwei;
    /// Reorders of a range of output channels of the kernel into the forward's (pass 0) or
    /// the backward-data's (1) layout, by (pass, first channel, end), built on first use.
    std::mutex ranges_lock;
    std::map<std::array<int64_t, 3>, std::unique_ptr<Reorder>> ranges;
};

/// Guards `cache` (lookups and insertions; the entries, never removed, run outside it).
std::mutex lock;
/// Built primitives by shape, precision, algorithm and thread count (oneDNN splits the work
/// when it builds them); a null entry marks a shape oneDNN has no kernel for.
std::map<std::array<int64_t, 14>, std::unique_ptr<Entry>> cache;
thread_local Buffer buf_src, buf_wei, buf_dst, buf_scratch, buf_reorder_scratch;

/// Runs `r` from `from` to `to` with this thread's reorder scratchpad.
void run_reorder(stream &st, const Reorder &r, memory &from, memory &to) {
    auto sd = r.pd.scratchpad_desc();
    memory pad(sd, eng(), buf_reorder_scratch.get(sd.get_size() + 1));
    r.r.execute(st, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}, {DNNL_ARG_SCRATCHPAD, pad}});
}

std::unique_ptr<Entry> make(const CnnDnnlConv &s) {
    auto e = std::make_unique<Entry>();
    dt d = s.bf16 ? dt::bf16 : dt::f32;
    // Rows and columns past the last window (a 1x1 stride-2 kernel on an even size) are
    // never read: oneDNN sees the input without them (negative right padding is not allowed),
    // through a strided view of the user's tensor; their gradient stays zero.
    int64_t pr_h = (s.oh - 1) * s.stride + s.kh - s.h - s.pad;
    int64_t pr_w = (s.ow - 1) * s.stride + s.kw - s.w - s.pad;
    int64_t eh = pr_h < 0 ? s.h + pr_h : s.h, ew = pr_w < 0 ? s.w + pr_w : s.w;
    memory::dims src{s.n, s.c, eh, ew}, wei{s.o, s.c, s.kh, s.kw}, dst{s.n, s.o, s.oh, s.ow};
    memory::dims strides{s.stride, s.stride}, pl{s.pad, s.pad};
    memory::dims pr{std::max<int64_t>(pr_h, 0), std::max<int64_t>(pr_w, 0)};
    auto sd = memory::desc(src, d, tag::any), wd = memory::desc(wei, d, tag::any),
         dd = memory::desc(dst, d, tag::any);
    // bf16 products give float32 weight gradients directly.
    auto dwd = memory::desc(wei, dt::f32, tag::any);
    primitive_attr attr;
    attr.set_scratchpad_mode(scratchpad_mode::user);
    auto build = [&](algorithm alg) {
#if DNNL_VERSION_MAJOR >= 3
        e->fpd = convolution_forward::primitive_desc(eng(), prop_kind::forward_training, alg, sd,
                                                     wd, dd, strides, pl, pr, attr);
        e->dpd = convolution_backward_data::primitive_desc(eng(), alg, sd, wd, dd, strides, pl,
                                                           pr, e->fpd, attr);
        e->wpd = convolution_backward_weights::primitive_desc(
            eng(), alg, sd, s.bf16 ? dwd : wd, dd, strides, pl, pr, e->fpd, attr);
#else
        e->fpd = convolution_forward::primitive_desc(
            convolution_forward::desc(prop_kind::forward_training, alg, sd, wd, dd, strides, pl,
                                      pr),
            attr, eng());
        e->dpd = convolution_backward_data::primitive_desc(
            convolution_backward_data::desc(alg, sd, wd, dd, strides, pl, pr), attr, eng(),
            e->fpd);
        e->wpd = convolution_backward_weights::primitive_desc(
            convolution_backward_weights::desc(alg, sd, s.bf16 ? dwd : wd, dd, strides, pl, pr),
            attr, eng(), e->fpd);
#endif
    };
    bool built = false;
    if (s.winograd && !s.bf16) {
        try {
            build(algorithm::convolution_winograd);
            built = true;
        } catch (const dnnl::error &) {
        }
    }
    if (!built) build(algorithm::convolution_direct);
    e->fwd = convolution_forward(e->fpd);
    e->bwd_data = convolution_backward_data(e->dpd);
    e->bwd_weights = convolution_backward_weights(e->wpd);
    auto us = memory::desc(src, dt::f32, memory::dims{s.c * s.h * s.w, s.h * s.w, s.w, 1}), uw = memory::desc(wei, dt::f32, tag::oihw),
         ud = memory::desc(dst, dt::f32, tag::nchw);
    e->f_src.init(us, e->fpd.src_desc(), true, false);
    e->f_wei.init(uw, e->fpd.weights_desc(), true, false);
    e->f_dst.init(ud, e->fpd.dst_desc(), false, true);
    e->d_ddst.init(ud, e->dpd.diff_dst_desc(), true, false);
    e->d_wei.init(uw, e->dpd.weights_desc(), true, false);
    e->d_dsrc.init(us, e->dpd.diff_src_desc(), false, true);
    e->w_src.init(us, e->wpd.src_desc(), true, false);
    e->w_ddst.init(ud, e->wpd.diff_dst_desc(), true, false);
    e->w_dwei.init(uw, e->wpd.diff_weights_desc(), false, true);
    return e;
}

/// The primitives of `s`, built on first use; null where oneDNN has no kernel for it.
Entry *entry(const CnnDnnlConv &s) {
    if (std::getenv("CNN_ONEDNN_TRACE"))
        std::fprintf(stderr, "dnnl n%ld c%ld %ldx%ld o%ld k%ld s%ld p%ld bf16 %d\n", (long)s.n,
                     (long)s.c, (long)s.h, (long)s.w, (long)s.o, (long)s.kh, (long)s.stride,
                     (long)s.pad, s.bf16);
    std::array<int64_t, 14> key{s.n,  s.c,  s.h,      s.w,   s.o,    s.kh,       s.kw,
                                s.oh, s.ow, s.stride, s.pad, s.bf16, s.winograd, omp_get_max_threads()};
    auto found = cache.find(key);
    if (found != cache.end()) return found->second.get();
    std::unique_ptr<Entry> made;
    try {
        made = make(s);
    } catch (const dnnl::error &ex) {
        if (ex.status != dnnl_unimplemented) throw;
    }
    return (cache[key] = std::move(made)).get();
}

/// `entry`, for a shape `cnn_dnnl_prepare` accepted.
Entry &ready(const CnnDnnlConv &s) {
    Entry *e;
    {
        std::lock_guard<std::mutex> g(lock);
        e = entry(s);
    }
    if (!e) throw std::runtime_error("oneDNN has no convolution for this shape");
    return *e;
}

/// The kernel's operand of pass 0 (forward) or 1 (backward data).
Operand &kernel_operand(Entry &e, int32_t pass) { return pass == 0 ? e.f_wei : e.d_wei; }

/// The output channels of one block of the kernel's layout for `pass` (1 when not blocked by
/// them); 0 where ranges of its output channels cannot be reordered apart: a layout that is not
/// a plain blocked one (Winograd's), or one padded in any dimension (channels rounded up to
/// its blocks: oneDNN has no sub-memory of a padded dimension).
int64_t kernel_block(Entry &e, int32_t pass) {
    const memory::desc &d = kernel_operand(e, pass).inner;
    int64_t block = 1;
#if DNNL_VERSION_MAJOR >= 3
    if (d.get_format_kind() != memory::format_kind::blocked || d.get_dims() != d.get_padded_dims())
        return 0;
    auto blks = d.get_inner_blks();
    auto idxs = d.get_inner_idxs();
    for (size_t i = 0; i < blks.size(); ++i)
        if (idxs[i] == 0) block *= blks[i];
#else
    if (d.data.format_kind != dnnl_blocked) return 0;
    for (int i = 0; i < d.data.ndims; ++i)
        if (d.data.padded_dims[i] != d.data.dims[i]) return 0;
    const auto &b = d.data.format_desc.blocking;
    for (int i = 0; i < b.inner_nblks; ++i)
        if (b.inner_idxs[i] == 0) block *= b.inner_blks[i];
#endif
    return block;
}

/// The user's tensor as the primitive wants it: itself, or a reorder into `buf`.
memory input(stream &st, Operand &op, const void *ptr, Buffer &buf) {
    memory user(op.user, eng(), const_cast<void *>(ptr));
    if (op.same) return user;
    memory inner(op.inner, eng(), buf.get(op.inner.get_size()));
    run_reorder(st, op.to_inner, user, inner);
    return inner;
}

/// The kernel for the primitives: `wei` reordered by the caller beforehand (see
/// `cnn_dnnl_kernel`), or reordered here into `buf`.
memory kernel(stream &st, Operand &op, const float *wei, const void *ready, Buffer &buf) {
    if (ready && !op.same) return memory(op.inner, eng(), const_cast<void *>(ready));
    return input(st, op, wei, buf);
}

/// Where the primitive writes: the user's tensor, or `buf` (then [`output_done`] reorders).
memory output(Operand &op, void *ptr, Buffer &buf) {
    if (op.same) return memory(op.user, eng(), ptr);
    return memory(op.inner, eng(), buf.get(op.inner.get_size()));
}

void output_done(stream &st, Operand &op, memory &inner, void *ptr) {
    if (op.same) return;
    memory user(op.user, eng(), ptr);
    run_reorder(st, op.to_user, inner, user);
}

memory scratch(const primitive_desc_base &pd) {
    auto sd = pd.scratchpad_desc();
    return memory(sd, eng(), buf_scratch.get(sd.get_size() + 1));
}

int fail(const char *what, const std::exception &ex, char *err, size_t len) {
    std::snprintf(err, len, "oneDNN %s: %s", what, ex.what());
    return 2;
}

int unknown(const char *what, char *err, size_t len) {
    std::snprintf(err, len, "oneDNN %s: an unknown C++ exception", what);
    return 2;
}

}  // namespace

extern "C" {

/// 1 where oneDNN dispatches to Intel AMX's bf16 tiles on this CPU (its effective ISA, which
/// counts the operating system's permission and ONEDNN_MAX_CPU_ISA), else 0.
int32_t cnn_dnnl_amx_bf16(void) {
    const unsigned amx = dnnl_cpu_isa_avx512_core_amx;
    return (static_cast<unsigned>(dnnl_get_effective_cpu_isa()) & amx) == amx ? 1 : 0;
}

/// Threads for oneDNN's OpenMP regions, from the calling thread on.
void cnn_dnnl_set_threads(int32_t n) {
    if (n > 0) omp_set_num_threads(n);
}

/// Builds (or finds) the primitives of `s`. 0: ready; 1: oneDNN has no implementation (the
/// message says why); 2: another error.
int32_t cnn_dnnl_prepare(const CnnDnnlConv *s, char *err, size_t len) {
    std::lock_guard<std::mutex> g(lock);
    try {
        if (entry(*s)) return 0;
        std::snprintf(err, len, "oneDNN has no convolution for this shape");
        return 1;
    } catch (const std::exception &ex) {
        return fail("convolution set-up", ex, err, len);
    } catch (...) {
        return unknown("convolution set-up", err, len);
    }
}

/// Bytes of the kernel in the layout of pass 0 (forward) or 1 (backward data), and in `block`
/// the output channels of one block of that layout; 0 where the primitive reads the user's
/// OIHW float32 kernel itself or where `cnn_dnnl_kernel` cannot reorder ranges of it
/// (`kernel_block`); -1 on an error.
int64_t cnn_dnnl_kernel_size(const CnnDnnlConv *s, int32_t pass, int64_t *block) {
    try {
        Entry &e = ready(*s);
        Operand &op = kernel_operand(e, pass);
        *block = kernel_block(e, pass);
        return op.same || *block < 1 ? 0 : static_cast<int64_t>(op.inner.get_size());
    } catch (...) {
        return -1;
    }
}

/// Output channels `o0..o1` (whole blocks of the layout) of the OIHW float32 kernel `wei`
/// reordered into `dst`, the kernel in the layout of pass 0 (forward) or 1 (backward data) of
/// `bytes` (`cnn_dnnl_kernel_size`'s, checked): the threads of a batch's parts each reorder a
/// range, once, and every part's primitive reads the whole (instead of each thread reordering
/// all of it).
int32_t cnn_dnnl_kernel(const CnnDnnlConv *s, int32_t pass, const float *wei, void *dst,
                        int64_t bytes, int64_t o0, int64_t o1, char *err, size_t len) {
    try {
        Entry &e = ready(*s);
        Operand &op = kernel_operand(e, pass);
        bool same_size = bytes == static_cast<int64_t>(op.inner.get_size());
        if (op.same || kernel_block(e, pass) < 1 || !same_size)
            throw std::runtime_error("the kernel's layout is not the one its size was asked for");
        if (o0 >= o1) return 0;
        memory::dims dims{o1 - o0, s->c, s->kh, s->kw}, at{o0, 0, 0, 0};
        auto from_d = op.user.submemory_desc(dims, at), to_d = op.inner.submemory_desc(dims, at);
        Reorder *r;
        {
            std::lock_guard<std::mutex> g(e.ranges_lock);
            auto &slot = e.ranges[{pass, o0, o1}];
            if (!slot) slot = std::make_unique<Reorder>(from_d, to_d);
            r = slot.get();
        }
        stream st(eng());
        memory from(from_d, eng(), const_cast<float *>(wei)), to(to_d, eng(), dst);
        run_reorder(st, *r, from, to);
        st.wait();
        return 0;
    } catch (const std::exception &ex) {
        return fail("kernel reorder", ex, err, len);
    } catch (...) {
        return unknown("kernel reorder", err, len);
    }
}

/// dst (n, o, oh, ow) = conv(src (n, c, h, w), wei (o, c, kh, kw)); the kernel from
/// `wei_ready` where not null (`cnn_dnnl_kernel`, pass 0), else reordered from `wei`.
int32_t cnn_dnnl_forward(const CnnDnnlConv *s, const float *src, const float *wei,
                         const void *wei_ready, float *dst, char *err, size_t len) {
    try {
        Entry &e = ready(*s);
        stream st(eng());
        memory S = input(st, e.f_src, src, buf_src);
        memory W = kernel(st, e.f_wei, wei, wei_ready, buf_wei);
        memory D = output(e.f_dst, dst, buf_dst);
        e.fwd.execute(st, {{DNNL_ARG_SRC, S},
                           {DNNL_ARG_WEIGHTS, W},
                           {DNNL_ARG_DST, D},
                           {DNNL_ARG_SCRATCHPAD, scratch(e.fpd)}});
        output_done(st, e.f_dst, D, dst);
        st.wait();
        return 0;
    } catch (const std::exception &ex) {
        return fail("convolution forward", ex, err, len);
    } catch (...) {
        return unknown("convolution forward", err, len);
    }
}

/// diff_src (n, c, h, w) from diff_dst (n, o, oh, ow) and wei (from `wei_ready` where not null,
/// as `cnn_dnnl_kernel` pass 1 wrote it), if diff_src is not null; diff_wei
/// (o, c, kh, kw) from diff_dst and src, if diff_wei is not null. The caller zeroes diff_src:
/// rows and columns no window reaches (a 1x1 stride-2 kernel on an even size) are not written.
int32_t cnn_dnnl_backward(const CnnDnnlConv *s, const float *src, const float *wei,
                          const void *wei_ready, const float *diff_dst, float *diff_src,
                          float *diff_wei, char *err, size_t len) {
    try {
        Entry &e = ready(*s);
        stream st(eng());
        // The output gradient in the primitives' layout, reordered once when both want the same.
        memory G;
        bool shared = e.d_ddst.inner == e.w_ddst.inner;
        if (diff_src) {
            G = input(st, e.d_ddst, diff_dst, buf_dst);
            memory W = kernel(st, e.d_wei, wei, wei_ready, buf_wei);
            memory DS = output(e.d_dsrc, diff_src, buf_src);
            e.bwd_data.execute(st, {{DNNL_ARG_DIFF_DST, G},
                                    {DNNL_ARG_WEIGHTS, W},
                                    {DNNL_ARG_DIFF_SRC, DS},
                                    {DNNL_ARG_SCRATCHPAD, scratch(e.dpd)}});
            output_done(st, e.d_dsrc, DS, diff_src);
        }
        if (diff_wei) {
            memory G2 = (diff_src && shared) ? G : input(st, e.w_ddst, diff_dst, buf_dst);
            memory S = input(st, e.w_src, src, buf_src);
            memory DW = output(e.w_dwei, diff_wei, buf_wei);
            e.bwd_weights.execute(st, {{DNNL_ARG_DIFF_DST, G2},
                                       {DNNL_ARG_SRC, S},
                                       {DNNL_ARG_DIFF_WEIGHTS, DW},
                                       {DNNL_ARG_SCRATCHPAD, scratch(e.wpd)}});
            output_done(st, e.w_dwei, DW, diff_wei);
        }
        st.wait();
        return 0;
    } catch (const std::exception &ex) {
        return fail("convolution backward", ex, err, len);
    } catch (...) {
        return unknown("convolution backward", err, len);
    }
}

/// The implementation oneDNN chose for the forward of `s` (for benchmarks and tests).
int32_t cnn_dnnl_impl(const CnnDnnlConv *s, char *out, size_t len) {
    try {
        std::snprintf(out, len, "%s", ready(*s).fpd.impl_info_str());
        return 0;
    } catch (const std::exception &ex) {
        return fail("convolution set-up", ex, out, len);
    } catch (...) {
        return unknown("convolution set-up", out, len);
    }
}
}
