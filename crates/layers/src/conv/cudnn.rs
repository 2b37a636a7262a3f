//! The convolution on CUDA through cuDNN: forward, input gradient and weight gradient, as
//! `torch.nn.Conv2d` runs them with `torch.backends.cudnn.benchmark = True`.
//!
//! For each convolution (shape, dtype, padding, stride, dilation, groups, TF32 or not, and the
//! byte alignment of its operands' addresses, as PyTorch's cache key) the descriptors are made
//! once and kept, and each of the three directions times cuDNN's candidate algorithms on its
//! first call (`cudnnFind*AlgorithmEx`, on the call's own tensors) and keeps the fastest. The
//! scratch space is one buffer per thread and device, grown when an algorithm needs more. When
//! an algorithm cannot run (its scratch space cannot be allocated, or cuDNN refuses at run
//! time what its search accepted), the next fastest is tried and kept, as PyTorch's
//! `AlgoIterator::try_all` does.
//!
//! Precision as PyTorch's: float32 with FMA kernels only (`CUDNN_FMA_MATH`, TF32 off) unless
//! TF32 is on ([`autocast::tf32`](crate::autocast::tf32), Candle's flag for float32 products:
//! `CUDNN_DEFAULT_MATH`, which lets cuDNN use TF32 tensor cores); bf16 and f16 on tensor cores
//! (`CUDNN_TENSOR_OP_MATH`) with float32 sums. One flag for both: PyTorch has two, and its
//! `torch.backends.cudnn.allow_tf32` is on by default where `torch.backends.cuda.matmul.
//! allow_tf32` is off, so float32 here is PyTorch with both off. Set `LAYERS_CUDNN_LOG` to see each choice.
//!
//! A channels-last input ([`memory_format`](crate::memory_format)) runs cuDNN's NHWC kernels,
//! as PyTorch's `channels_last` convolutions: the input, output and both of their gradients
//! stay (N, H, W, C) in memory, and the kernel is handed to cuDNN as (O, KH, KW, C / groups)
//! (a copy of the weight each call, and one of its gradient back to (O, C / groups, KH, KW)).
//! Where cuDNN has no NHWC algorithm for a direction (or refuses the search), that direction
//! copies its operands to NCHW, runs the NCHW kernels and copies the result back
//! ([`cudnn_nhwc_kernels`] forces this everywhere); it says so once per convolution, thread
//! and device.

use std::collections::HashMap;
use std::ffi::c_void;

use candle_core::cuda::cudarc::cudnn::sys;
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut, SyncOnDrop};
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor,
};
use candle_nn::Conv2dConfig;

use super::ranked::{Attempt, Exhausted, Ranked};
use crate::cudnn::{check, data_type, Buffer, ConvDesc, FilterDesc, Handle, TensorDesc, Workspace};
use crate::memory_format;

type FwdAlgo = sys::cudnnConvolutionFwdAlgo_t;
type DataAlgo = sys::cudnnConvolutionBwdDataAlgo_t;
type FilterAlgo = sys::cudnnConvolutionBwdFilterAlgo_t;

const FWD_ALGOS: [FwdAlgo; 8] = [
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
];

const DATA_ALGOS: [DataAlgo; 6] = [
    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
];

const FILTER_ALGOS: [FilterAlgo; 7] = [
    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
];

/// The most scratch memory the algorithm search offers the candidates (and no more than half
/// of what is free): an algorithm needing more is not tried.
const MAX_SEARCH_WORKSPACE: usize = 2 << 30;

const FLOAT: sys::cudnnDataType_t = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;

const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

/// Whether the cuDNN convolution takes `xs`: a CUDA tensor in f32, bf16 or f16.
pub(super) fn supports(xs: &Tensor) -> bool {
    xs.device().is_cuda() && data_type(xs.dtype()).is_some()
}

/// `F.conv2d(xs, weight, None, stride, padding, dilation, groups)` through cuDNN, with its
/// backward (both gradients) through cuDNN as well. `xs` (N, C, H, W) and `weight`
/// (O, C / groups, KH, KW) of one dtype, on one CUDA device. A channels-last `xs` gives a
/// channels-last output (cuDNN's NHWC kernels); any other is made contiguous.
pub(super) fn conv2d(xs: &Tensor, weight: &Tensor, cfg: &Conv2dConfig) -> Result<Tensor> {
    let nhwc = memory_format::nhwc(xs)?;
    let conv = Conv::of(xs, weight, cfg, nhwc.is_some())?;
    let weight = weight.contiguous()?;
    match nhwc {
        Some(x) => memory_format::from_nhwc(&x.apply_op2(&weight, Forward(conv))?),
        None => xs.contiguous()?.apply_op2(&weight, Forward(conv)),
    }
}

/// One convolution as cuDNN sees it: the key of everything cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Conv {
    dtype: DType,
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    /// Padding, stride, dilation, groups.
    params: [usize; 4],
    /// TF32 allowed for float32 (fixed when the forward runs; the backward uses the same).
    tf32: bool,
    /// Input and output (and their gradients) (N, H, W, C) in memory, the kernel given to
    /// cuDNN as (O, KH, KW, C / groups); `x` and `y` stay the logical (N, C, H, W).
    nhwc: bool,
    /// The byte alignment (1 to 16) of the call's two operands' device addresses, as PyTorch's
    /// `ConvolutionParams` keys its algorithm cache (`getAlignment`): an algorithm timed on
    /// aligned operands may be unable to run on a view that starts off a 16-byte boundary.
    /// Set by [`run`] for each call (the output is always a fresh, aligned allocation).
    alignment: [u8; 2],
}

impl Conv {
    fn of(xs: &Tensor, weight: &Tensor, cfg: &Conv2dConfig, nhwc: bool) -> Result<Self> {
        let (n, c, h, w) = xs.dims4()?;
        let (o, cg, kh, kw) = weight.dims4()?;
        let (p, s, d, g) = (cfg.padding, cfg.stride, cfg.dilation, cfg.groups);
        if xs.dtype() != weight.dtype() || !xs.device().same_device(weight.device()) {
            candle_core::bail!(
                "cudnn conv2d: input {:?} on {:?} and kernel {:?} on {:?} differ",
                xs.dtype(),
                xs.device().location(),
                weight.dtype(),
                weight.device().location()
            )
        }
        if s == 0 || d == 0 || g == 0 || cg * g != c || o % g != 0 {
            candle_core::bail!(
                "cudnn conv2d: input {:?} and kernel {:?} do not fit stride {s}, dilation {d}, {g} groups",
                xs.dims(),
                weight.dims()
            )
        }
        let (span_h, span_w) = (d * (kh.max(1) - 1) + 1, d * (kw.max(1) - 1) + 1);
        if kh == 0 || kw == 0 || h + 2 * p < span_h || w + 2 * p < span_w {
            candle_core::bail!(
                "cudnn conv2d: kernel {kh}x{kw} (dilation {d}, padding {p}) does not fit a {h}x{w} input"
            )
        }
        let (oh, ow) = ((h + 2 * p - span_h) / s + 1, (w + 2 * p - span_w) / s + 1);
        // cuDNN's 4-D descriptors count in int32 (PyTorch splits the batch instead).
        for (what, dims) in [("input", [n, c, h, w]), ("output", [n, o, oh, ow])] {
            if dims.iter().product::<usize>() > i32::MAX as usize {
                candle_core::bail!(
                    "cudnn conv2d: the {what} (N, C, H, W) = {dims:?} holds more than 2^31 - 1 \
                     values, cuDNN's limit for one call: use a smaller batch"
                )
            }
        }
        Ok(Self {
            dtype: xs.dtype(),
            x: [n, c, h, w],
            w: [o, cg, kh, kw],
            y: [n, o, oh, ow],
            params: [p, s, d, g],
            tf32: candle_core::cuda::gemm_reduced_precision_f32(),
            nhwc,
            alignment: [16; 2],
        })
    }

    /// The shape in which the input, the output or one of their gradients, of logical dims
    /// `dims`, is held: (N, H, W, C) when NHWC. (The kernel is always handed over as
    /// (O, C / groups, KH, KW).)
    fn held(&self, dims: [usize; 4]) -> [usize; 4] {
        match self.nhwc {
            true => [dims[0], dims[2], dims[3], dims[1]],
            false => dims,
        }
    }

    /// The kernel as cuDNN's NHWC kernels read it, (O, KH, KW, C / groups).
    fn krsc(&self) -> [usize; 4] {
        let [o, c, kh, kw] = self.w;
        [o, kh, kw, c]
    }

    fn cudnn_type(&self) -> Result<sys::cudnnDataType_t> {
        data_type(self.dtype).ok_or_else(|| {
            candle_core::Error::Msg(format!("cuDNN: no {:?} convolutions", self.dtype))
        })
    }

    /// The math type the search starts from (PyTorch's choice for the same case).
    fn math(&self) -> sys::cudnnMathType_t {
        use sys::cudnnMathType_t::*;
        match (self.dtype, self.tf32) {
            (DType::F32, false) => CUDNN_FMA_MATH,
            (DType::F32, true) => CUDNN_DEFAULT_MATH,
            _ => CUDNN_TENSOR_OP_MATH,
        }
    }

    /// Whether a search result with math type `math` keeps this convolution's precision:
    /// float32 without TF32 takes no tensor-core kernel.
    fn allows(&self, math: sys::cudnnMathType_t) -> bool {
        use sys::cudnnMathType_t::*;
        self.math() != CUDNN_FMA_MATH
            || !matches!(
                math,
                CUDNN_TENSOR_OP_MATH | CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
            )
    }

    /// The math type to run a search result with math type `math` in: float32 without TF32
    /// runs in `CUDNN_FMA_MATH` even when cuDNN reports `CUDNN_DEFAULT_MATH`, which would
    /// allow TF32 on Ampere and later (PyTorch asserts the same, `ASSERT_CORRECT_PRECISION`).
    fn run_math(&self, math: sys::cudnnMathType_t) -> sys::cudnnMathType_t {
        match self.math() {
            sys::cudnnMathType_t::CUDNN_FMA_MATH => sys::cudnnMathType_t::CUDNN_FMA_MATH,
            _ => math,
        }
    }

    fn len(dims: [usize; 4]) -> usize {
        dims.iter().product()
    }
}

/// The alignment PyTorch's `getAlignment` gives a contiguous operand: the largest power of two
/// up to 16 dividing its device address.
fn alignment(storage: &CudaStorage, layout: &Layout) -> Result<u8> {
    let stream = storage.device.cuda_stream();
    let (ptr, _read) = crate::cudnn::read_ptr(storage, layout, &stream, "convolution operand")?;
    Ok(match ptr as usize {
        0 => 16,
        address => 1u8 << address.trailing_zeros().min(4),
    })
}

/// The algorithms one direction may run and the one in use, and its descriptor (math type set
/// to that algorithm's).
struct Chosen<A> {
    desc: ConvDesc,
    ranked: Ranked<Candidate<A>>,
}

/// An algorithm the search timed that ran and keeps the precision, the math type to run it in
/// and the scratch bytes it needs.
#[derive(Clone, Copy)]
struct Candidate<A> {
    algo: A,
    math: sys::cudnnMathType_t,
    workspace: usize,
}

/// A direction's algorithm, or why cuDNN has none for it (kept, so that the search is not
/// repeated).
type Choice<A> = std::result::Result<A, String>;

/// Why a search found no algorithm, and whether another call may find one: the search had
/// less scratch memory than it asked for, or a candidate could not allocate. Such a refusal
/// is not kept.
struct Refusal {
    why: String,
    transient: bool,
}

/// Everything kept for one [`Conv`].
struct Plan {
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    forward: Option<Choice<Chosen<FwdAlgo>>>,
    data: Option<Choice<Chosen<DataAlgo>>>,
    filter: Option<Choice<Chosen<FilterAlgo>>>,
}

/// The plans of one thread on one device.
#[derive(Default)]
pub(crate) struct Cache {
    plans: HashMap<Conv, Plan>,
}

impl Cache {
    fn plan(&mut self, conv: &Conv) -> Result<&mut Plan> {
        use std::collections::hash_map::Entry;
        Ok(match self.plans.entry(*conv) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let t = conv.cudnn_type()?;
                e.insert(Plan {
                    x: TensorDesc::new(t, conv.x, conv.nhwc)?,
                    w: FilterDesc::new(t, conv.w, conv.nhwc)?,
                    y: TensorDesc::new(t, conv.y, conv.nhwc)?,
                    forward: None,
                    data: None,
                    filter: None,
                })
            }
        })
    }
}

/// Scratch memory for one algorithm search, freed after it: `wanted` bytes, at most
/// [`MAX_SEARCH_WORKSPACE`] and half of what is free (the driver's free memory and the pool's
/// unused part). Without it (nothing wanted, or the
/// allocation failed) the search tries the algorithms that need none.
fn search_scratch(device: &CudaDevice, wanted: usize) -> Option<CudaSlice<u8>> {
    // The memory pool keeps what steps freed (`cuda_memory::keep_freed_memory`): free for
    // this allocation too, though the driver does not count it.
    let free = candle_core::cuda::cudarc::driver::result::mem_get_info()
        .map(|(free, _)| (free + crate::cuda_memory::pool_spare_bytes(device)) / 2)
        .unwrap_or(0);
    let bytes = wanted.min(MAX_SEARCH_WORKSPACE).min(free);
    // SAFETY: cuDNN's scratch space; nothing reads it before cuDNN writes it.
    (bytes > 0)
        .then(|| unsafe { device.alloc::<u8>(bytes) }.ok())
        .flatten()
}

fn log_choices() -> bool {
    static LOG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOG.get_or_init(|| std::env::var_os("LAYERS_CUDNN_LOG").is_some())
}

/// The search scratch's address and length (null and 0 without one), and its stream guard.
fn scratch_ptr<'a>(
    scratch: &'a mut Option<CudaSlice<u8>>,
    stream: &'a CudaStream,
) -> (*mut c_void, usize, Option<SyncOnDrop<'a>>) {
    match scratch {
        Some(s) => {
            let len = s.len();
            let (ptr, guard) = s.device_ptr_mut(stream);
            (ptr as *mut c_void, len, Some(guard))
        }
        None => (std::ptr::null_mut(), 0, None),
    }
}

/// cuDNN's status, time (ms), workspace bytes and math type of one timed algorithm.
type Timing<A> = (A, sys::cudnnStatus_t, f32, usize, sys::cudnnMathType_t);

/// `cudnnFind*AlgorithmEx` into the results and their count, with the scratch given.
type Find<'a, P> = &'a dyn Fn(&mut [P], &mut i32, *mut c_void, usize) -> sys::cudnnStatus_t;

/// What one direction's algorithm search calls, `P` being its cuDNN perf-result struct.
struct Search<'a, A, P> {
    what: &'a str,
    algos: &'a [A],
    /// `cudnnGet*WorkspaceSize` of one algorithm.
    size: &'a dyn Fn(A, &mut usize) -> sys::cudnnStatus_t,
    find: Find<'a, P>,
    timing: fn(&P) -> Timing<A>,
}

impl<A: Copy + std::fmt::Debug, P: Copy> Search<'_, A, P> {
    /// Times the candidates with as much scratch as the hungriest one asks for (within
    /// [`search_scratch`]'s limits) and keeps those that succeeded and keep the precision,
    /// fastest first (cuDNN's order), the fastest in use, its math type set on `desc`;
    /// `Ok(Err(_))` when none did (or, for NHWC, when the search itself was refused).
    fn choose(
        &self,
        conv: &Conv,
        desc: ConvDesc,
        device: &CudaDevice,
        stream: &CudaStream,
    ) -> Result<std::result::Result<Chosen<A>, Refusal>> {
        let success = sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
        let wanted = self.algos.iter().filter_map(|&a| {
            let mut bytes = 0;
            ((self.size)(a, &mut bytes) == success).then_some(bytes)
        });
        let wanted = wanted.max().unwrap_or(0);
        let mut scratch = search_scratch(device, wanted);
        let mut transient =
            scratch.as_ref().map_or(0, |s| s.len()) < wanted.min(MAX_SEARCH_WORKSPACE);
        let (ws, ws_len, _guard) = scratch_ptr(&mut scratch, stream);
        // SAFETY: `P` is one of cuDNN's perf-result structs, plain data whose all-zero value
        // is valid (every enum field has a variant 0).
        let mut results: Vec<P> = vec![unsafe { std::mem::zeroed() }; self.algos.len()];
        let mut count = 0;
        let found = (self.find)(&mut results, &mut count, ws, ws_len);
        // cuDNN refused the whole NHWC search (the problem as asked, or memory for it): the
        // NCHW kernels stand in. Other codes (a misaligned pointer, a stream mismatch, a failed
        // execution) stay errors, as at run time.
        let refused = crate::cudnn::is_refusal(found) || crate::cudnn::is_out_of_memory(found);
        if found != success && conv.nhwc && refused {
            return Ok(Err(Refusal {
                why: format!(
                    "cuDNN's {} algorithm search for {:?} input {:?} held channels-last (NHWC), kernel {:?}, padding/stride/dilation/groups {:?} failed: {found:?}",
                    self.what, conv.dtype, conv.x, conv.w, conv.params
                ),
                transient: transient || crate::cudnn::is_out_of_memory(found),
            }));
        }
        check(found, &format!("{} algorithm search", self.what))?;
        let count = count.clamp(0, results.len() as i32) as usize;
        let mut tried = Vec::new();
        let mut usable = Vec::new();
        for (algo, status, ms, memory, math) in results[..count].iter().map(self.timing) {
            transient |= crate::cudnn::is_out_of_memory(status);
            if status != success || !conv.allows(math) {
                tried.push(format!("{algo:?}: {status:?} {math:?}"));
                continue;
            }
            // The size under the math type the algorithm runs in.
            desc.set_math(conv.run_math(math))?;
            let mut bytes = 0;
            let size = (self.size)(algo, &mut bytes);
            if size != success {
                tried.push(format!("{algo:?}: workspace size {size:?}"));
                continue;
            }
            if log_choices() && usable.is_empty() {
                eprintln!(
                    "cudnn {} {:?} x{:?} w{:?} p/s/d/g{:?} tf32={} nhwc={} align={:?}: {algo:?} {math:?} {ms:.3} ms, {memory} B",
                    self.what, conv.dtype, conv.x, conv.w, conv.params, conv.tf32, conv.nhwc, conv.alignment
                );
            }
            usable.push(Candidate {
                algo,
                math: conv.run_math(math),
                workspace: bytes.max(memory),
            });
        }
        if let Some(ranked) = Ranked::new(usable) {
            desc.set_math(ranked.current().math)?;
            return Ok(Ok(Chosen { desc, ranked }));
        }
        let why = format!(
            "cuDNN found no usable {} algorithm for {:?} input {:?}{}, kernel {:?}, padding/stride/dilation/groups {:?} (tried: {})",
            self.what,
            conv.dtype,
            conv.x,
            if conv.nhwc { " held channels-last (NHWC)" } else { "" },
            conv.w,
            conv.params,
            tried.join(", ")
        );
        if conv.nhwc && !transient {
            // Once per convolution and direction (on each thread and device): the refusal is
            // kept in its plan.
            eprintln!("{why}; it runs cuDNN's NCHW kernels on NCHW copies instead");
        }
        Ok(Err(Refusal { why, transient }))
    }
}

/// Device addresses of one call's three tensors: two read, one written.
struct Ptrs {
    a: *const c_void,
    b: *const c_void,
    out: *mut c_void,
}

impl Plan {
    /// The forward's algorithm, chosen on the first call (y from x = `p.a` and w = `p.b`).
    fn forward(
        &mut self,
        h: &Handle,
        conv: &Conv,
        device: &CudaDevice,
        stream: &CudaStream,
        p: &Ptrs,
    ) -> Result<Choice<&Chosen<FwdAlgo>>> {
        let searched = if self.forward.is_none() {
            let desc = ConvDesc::new(conv.params, FLOAT, conv.math())?;
            let (h, x, w, y, d, p) = (h.0, self.x.0, self.w.0, self.y.0, desc.0, p);
            // SAFETY (both): a live handle and descriptors that describe the contiguous
            // tensors behind the pointers; `perf` holds as many results as are requested, the
            // scratch is `ws_len` bytes.
            let size = move |algo, bytes: &mut usize| unsafe {
                sys::cudnnGetConvolutionForwardWorkspaceSize(h, x, w, d, y, algo, bytes)
            };
            let find = |perf: &mut [sys::cudnnConvolutionFwdAlgoPerf_t], n: &mut i32, ws, len| unsafe {
                sys::cudnnFindConvolutionForwardAlgorithmEx(
                    h,
                    x,
                    p.a,
                    w,
                    p.b,
                    d,
                    y,
                    p.out,
                    perf.len() as i32,
                    n,
                    perf.as_mut_ptr(),
                    ws,
                    len,
                )
            };
            let search = Search {
                what: "forward",
                algos: &FWD_ALGOS,
                size: &size,
                find: &find,
                timing: |r| (r.algo, r.status, r.time, r.memory, r.mathType),
            };
            Some(search.choose(conv, desc, device, stream)?)
        } else {
            None
        };
        kept(&mut self.forward, searched, "forward")
    }

    /// The input gradient's algorithm, chosen on the first call (dx from w = `p.a` and
    /// dy = `p.b`).
    fn data(
        &mut self,
        h: &Handle,
        conv: &Conv,
        device: &CudaDevice,
        stream: &CudaStream,
        p: &Ptrs,
    ) -> Result<Choice<&Chosen<DataAlgo>>> {
        let searched = if self.data.is_none() {
            let desc = ConvDesc::new(conv.params, FLOAT, conv.math())?;
            let (h, x, w, y, d, p) = (h.0, self.x.0, self.w.0, self.y.0, desc.0, p);
            // SAFETY (both): as in `forward`.
            let size = move |algo, bytes: &mut usize| unsafe {
                sys::cudnnGetConvolutionBackwardDataWorkspaceSize(h, w, y, d, x, algo, bytes)
            };
            let find = |perf: &mut [sys::cudnnConvolutionBwdDataAlgoPerf_t],
                        n: &mut i32,
                        ws,
                        len| unsafe {
                sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                    h,
                    w,
                    p.a,
                    y,
                    p.b,
                    d,
                    x,
                    p.out,
                    perf.len() as i32,
                    n,
                    perf.as_mut_ptr(),
                    ws,
                    len,
                )
            };
            let search = Search {
                what: "input-gradient",
                algos: &DATA_ALGOS,
                size: &size,
                find: &find,
                timing: |r| (r.algo, r.status, r.time, r.memory, r.mathType),
            };
            Some(search.choose(conv, desc, device, stream)?)
        } else {
            None
        };
        kept(&mut self.data, searched, "input-gradient")
    }

    /// The weight gradient's algorithm, chosen on the first call (dw from x = `p.a` and
    /// dy = `p.b`).
    fn filter(
        &mut self,
        h: &Handle,
        conv: &Conv,
        device: &CudaDevice,
        stream: &CudaStream,
        p: &Ptrs,
    ) -> Result<Choice<&Chosen<FilterAlgo>>> {
        let searched = if self.filter.is_none() {
            let desc = ConvDesc::new(conv.params, FLOAT, conv.math())?;
            let (h, x, w, y, d, p) = (h.0, self.x.0, self.w.0, self.y.0, desc.0, p);
            // SAFETY (both): as in `forward`.
            let size = move |algo, bytes: &mut usize| unsafe {
                sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(h, x, y, d, w, algo, bytes)
            };
            let find = |perf: &mut [sys::cudnnConvolutionBwdFilterAlgoPerf_t],
                        n: &mut i32,
                        ws,
                        len| unsafe {
                sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                    h,
                    x,
                    p.a,
                    y,
                    p.b,
                    d,
                    w,
                    p.out,
                    perf.len() as i32,
                    n,
                    perf.as_mut_ptr(),
                    ws,
                    len,
                )
            };
            let search = Search {
                what: "weight-gradient",
                algos: &FILTER_ALGOS,
                size: &size,
                find: &find,
                timing: |r| (r.algo, r.status, r.time, r.memory, r.mathType),
            };
            Some(search.choose(conv, desc, device, stream)?)
        } else {
            None
        };
        kept(&mut self.filter, searched, "weight-gradient")
    }
}

/// The algorithm in `slot` once `searched` (a search's result, when one ran) is kept there; a
/// refusal another call may overturn is returned but not kept.
fn kept<'a, A>(
    slot: &'a mut Option<Choice<Chosen<A>>>,
    searched: Option<std::result::Result<Chosen<A>, Refusal>>,
    what: &str,
) -> Result<Choice<&'a Chosen<A>>> {
    match searched {
        Some(Ok(chosen)) => *slot = Some(Ok(chosen)),
        Some(Err(r)) if r.transient => return Ok(Err(r.why)),
        Some(Err(r)) => *slot = Some(Err(r.why)),
        None => {}
    }
    match slot {
        Some(Ok(chosen)) => Ok(Ok(chosen)),
        Some(Err(why)) => Ok(Err(why.clone())),
        None => candle_core::bail!("cuDNN: no {what} search"),
    }
}

/// Which of the three products a [`run`] computes.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// y from x and w.
    Forward,
    /// dx from w and dy.
    Data,
    /// dw from x and dy.
    Filter,
}

/// Runs one direction of `conv` on the contiguous operands `a` and `b` (see [`Direction`]),
/// returning the new output's storage.
fn run(
    conv: &Conv,
    direction: Direction,
    (a, al): (&CudaStorage, &Layout),
    (b, bl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    let conv = &Conv {
        alignment: [alignment(a, al)?, alignment(b, bl)?],
        ..*conv
    };
    // The operands' and the result's shapes as held (NHWC or not), and which is the kernel.
    let (a_dims, b_dims, out_dims) = match direction {
        Direction::Forward => (conv.held(conv.x), conv.w, conv.held(conv.y)),
        Direction::Data => (conv.w, conv.held(conv.y), conv.held(conv.x)),
        Direction::Filter => (conv.held(conv.x), conv.held(conv.y), conv.w),
    };
    // The descriptors come from `conv`: the operands must be what they describe.
    for (s, l, dims) in [(a, al, a_dims), (b, bl, b_dims)] {
        if s.dtype() != conv.dtype || l.shape().dims() != dims {
            candle_core::bail!(
                "cudnn conv2d {direction:?}: operand {:?} {:?}, expected {:?} {dims:?}",
                s.dtype(),
                l.shape(),
                conv.dtype
            )
        }
    }
    if !conv.nhwc {
        return run_held(conv, direction, (a, al), (b, bl), out_dims)?
            .map_err(candle_core::Error::Msg);
    }
    if nhwc_kernels() && !refused(&a.device, conv, direction)? {
        if let Ok(done) = run_nhwc(conv, direction, (a, al), (b, bl), out_dims)? {
            return Ok(done);
        }
    }
    via_nchw(conv, direction, (a, al), (b, bl))
}

/// Whether cuDNN refused `direction` of `conv` before (kept in its plan on this thread).
fn refused(device: &CudaDevice, conv: &Conv, direction: Direction) -> Result<bool> {
    crate::cudnn::with_state(device, |state| {
        Ok(state
            .conv
            .plans
            .get(conv)
            .is_some_and(|plan| match direction {
                Direction::Forward => matches!(plan.forward, Some(Err(_))),
                Direction::Data => matches!(plan.data, Some(Err(_))),
                Direction::Filter => matches!(plan.filter, Some(Err(_))),
            }))
    })
}

/// [`run`] with cuDNN's NHWC kernels: the kernel reordered to (O, KH, KW, C / groups) for
/// cuDNN, and the kernel gradient computed in that order and reordered back. `Ok(Err(why))`
/// when cuDNN has no NHWC algorithm for it.
fn run_nhwc(
    conv: &Conv,
    direction: Direction,
    (a, al): (&CudaStorage, &Layout),
    (b, bl): (&CudaStorage, &Layout),
    out_dims: [usize; 4],
) -> Result<Choice<(CudaStorage, Shape)>> {
    use candle_core::backend::BackendStorage;
    let krsc = Layout::contiguous(Shape::from_dims(&conv.krsc()));
    let reordered = match direction {
        Direction::Forward => Some(to_krsc(conv, b, bl)?),
        Direction::Data => Some(to_krsc(conv, a, al)?),
        Direction::Filter => None,
    };
    let ((a, al), (b, bl)) = match (&reordered, direction) {
        (Some(k), Direction::Forward) => ((a, al), (k, &krsc)),
        (Some(k), _) => ((k, &krsc), (b, bl)),
        (None, _) => ((a, al), (b, bl)),
    };
    let (out, shape) = match run_held(conv, direction, (a, al), (b, bl), out_dims)? {
        Ok(done) => done,
        Err(why) => return Ok(Err(why)),
    };
    match direction {
        Direction::Filter => {
            // (O, KH, KW, C / groups) read as (O, C / groups, KH, KW): copied in that order.
            let mut ockk = Buffer::uninit(&out.device, conv.dtype, Conv::len(conv.w))?
                .into_storage(out.device.clone());
            out.copy_strided_src(&mut ockk, 0, &krsc.permute(&[0, 3, 1, 2])?)?;
            Ok(Ok((ockk, Shape::from_dims(&conv.w))))
        }
        _ => Ok(Ok((out, shape))),
    }
}

/// [`run`] of an NHWC convolution through cuDNN's NCHW kernels, for one cuDNN has no NHWC
/// algorithm for (or all of them while [`cudnn_nhwc_kernels`] is off): the NHWC operands
/// copied to NCHW, and an NHWC result copied back from NCHW.
fn via_nchw(
    conv: &Conv,
    direction: Direction,
    (a, al): (&CudaStorage, &Layout),
    (b, bl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    let plain = Conv {
        nhwc: false,
        ..*conv
    };
    // `(s, l)` held as (N, H, W, C) from `l`'s start, or (N, C, H, W) held as (N, H, W, C)
    // in the other direction: copied in the order of `permutation` into a new contiguous
    // storage, returned with its layout.
    let reorder = |s: &CudaStorage, l: &Layout, permutation: &[usize]| {
        let permuted = l.permute(permutation)?;
        let mut out = Buffer::uninit(&s.device, conv.dtype, l.shape().elem_count())?
            .into_storage(s.device.clone());
        s.copy_strided_src(&mut out, 0, &permuted)?;
        Ok::<_, candle_core::Error>((out, Layout::contiguous(permuted.shape())))
    };
    const TO_NCHW: [usize; 4] = [0, 3, 1, 2];
    const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
    let (a_held, b_held, out_dims) = match direction {
        Direction::Forward => (true, false, conv.y),
        Direction::Data => (false, true, conv.x),
        Direction::Filter => (true, true, conv.w),
    };
    let a_copy = a_held.then(|| reorder(a, al, &TO_NCHW)).transpose()?;
    let b_copy = b_held.then(|| reorder(b, bl, &TO_NCHW)).transpose()?;
    let (a, al) = a_copy.as_ref().map_or((a, al), |(s, l)| (s, l));
    let (b, bl) = b_copy.as_ref().map_or((b, bl), |(s, l)| (s, l));
    let (out, shape) = run_held(&plain, direction, (a, al), (b, bl), out_dims)?.map_err(|why| {
        candle_core::Error::Msg(format!(
            "{why} (in place of NHWC kernels, for a channels-last input)"
        ))
    })?;
    match direction {
        Direction::Filter => Ok((out, shape)),
        _ => {
            let (nhwc, layout) = reorder(&out, &Layout::contiguous(shape), &TO_NHWC)?;
            Ok((nhwc, layout.shape().clone()))
        }
    }
}

thread_local! {
    static NHWC_KERNELS: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn nhwc_kernels() -> bool {
    NHWC_KERNELS.with(|k| k.get())
}

/// Whether channels-last convolutions on this thread use cuDNN's NHWC kernels (the default,
/// `true`) or, with `false`, copy their NHWC operands to NCHW, run cuDNN's NCHW kernels and
/// copy the result back: what a convolution cuDNN has no NHWC algorithm for does (it says so
/// once on standard error). The results are the same up to the kernels' rounding; this is for
/// tests and measurements. Returns a guard that restores the previous setting when dropped.
#[must_use = "the setting lasts while the guard lives"]
pub fn cudnn_nhwc_kernels(allowed: bool) -> NhwcKernels {
    NhwcKernels(NHWC_KERNELS.with(|k| k.replace(allowed)))
}

/// The guard of [`cudnn_nhwc_kernels`]: restores the previous setting when dropped.
pub struct NhwcKernels(bool);

impl Drop for NhwcKernels {
    fn drop(&mut self) {
        NHWC_KERNELS.with(|k| k.set(self.0));
    }
}

/// The kernel `(w, wl)`, (O, C / groups, KH, KW), copied to a new (O, KH, KW, C / groups)
/// storage.
fn to_krsc(conv: &Conv, w: &CudaStorage, wl: &Layout) -> Result<CudaStorage> {
    use candle_core::backend::BackendStorage;
    let mut krsc =
        Buffer::uninit(&w.device, conv.dtype, Conv::len(conv.w))?.into_storage(w.device.clone());
    w.copy_strided_src(&mut krsc, 0, &wl.permute(&[0, 2, 3, 1])?)?;
    Ok(krsc)
}

/// [`run`] on operands held as the descriptors describe them (the kernel as (O, KH, KW,
/// C / groups) for NHWC), giving the result held as `out_dims`.
fn run_held(
    conv: &Conv,
    direction: Direction,
    (a, al): (&CudaStorage, &Layout),
    (b, bl): (&CudaStorage, &Layout),
    out_dims: [usize; 4],
) -> Result<Choice<(CudaStorage, Shape)>> {
    crate::cudnn::with_state(&a.device, |state| {
        let crate::cudnn::State {
            handle,
            stream,
            device,
            workspace,
            conv: cache,
            ..
        } = state;
        let (stream, device): (&CudaStream, &CudaDevice) = (stream, device);
        let plan = cache.plan(conv)?;
        let mut out = Buffer::uninit(device, conv.dtype, Conv::len(out_dims))?;
        {
            let (pa, _ga) = crate::cudnn::read_ptr(a, al, stream, "convolution operand")?;
            let (pb, _gb) = crate::cudnn::read_ptr(b, bl, stream, "convolution operand")?;
            let (po, _go) = out.write_ptr(stream);
            let p = Ptrs {
                a: pa,
                b: pb,
                out: po,
            };
            let (one, zero) = (
                &ONE as *const f32 as *const c_void,
                &ZERO as *const f32 as *const c_void,
            );
            let h = &*handle;
            // SAFETY (the three calls): live handle and descriptors that describe the
            // contiguous tensors behind the pointers (checked dtypes, shapes from `conv`), a
            // workspace of at least the algorithm's size (`launch` gives it), float scaling
            // factors (float, half and bf16 data).
            let (xd, wd, yd) = (plan.x.0, plan.w.0, plan.y.0);
            let launched = match direction {
                Direction::Forward => {
                    if let Err(why) = plan.forward(h, conv, device, stream, &p)? {
                        return Ok(Err(why));
                    }
                    let call = |algo, desc, ws, ws_len| unsafe {
                        sys::cudnnConvolutionForward(
                            h.0, one, xd, p.a, wd, p.b, desc, algo, ws, ws_len, zero, yd, p.out,
                        )
                    };
                    let slot = &mut plan.forward;
                    launch(conv, "forward", slot, workspace, device, stream, call)?
                }
                Direction::Data => {
                    if let Err(why) = plan.data(h, conv, device, stream, &p)? {
                        return Ok(Err(why));
                    }
                    let call = |algo, desc, ws, ws_len| unsafe {
                        sys::cudnnConvolutionBackwardData(
                            h.0, one, wd, p.a, yd, p.b, desc, algo, ws, ws_len, zero, xd, p.out,
                        )
                    };
                    let slot = &mut plan.data;
                    launch(
                        conv,
                        "input-gradient",
                        slot,
                        workspace,
                        device,
                        stream,
                        call,
                    )?
                }
                Direction::Filter => {
                    if let Err(why) = plan.filter(h, conv, device, stream, &p)? {
                        return Ok(Err(why));
                    }
                    let call = |algo, desc, ws, ws_len| unsafe {
                        sys::cudnnConvolutionBackwardFilter(
                            h.0, one, xd, p.a, yd, p.b, desc, algo, ws, ws_len, zero, wd, p.out,
                        )
                    };
                    let slot = &mut plan.filter;
                    launch(
                        conv,
                        "weight-gradient",
                        slot,
                        workspace,
                        device,
                        stream,
                        call,
                    )?
                }
            };
            if let Err(why) = launched {
                return Ok(Err(why));
            }
        }
        Ok(Ok((
            out.into_storage(device.clone()),
            Shape::from_dims(&out_dims),
        )))
    })
}

/// Runs one direction with the algorithm in use in `slot` (searched already), or, when it
/// cannot run, with the next ones in turn ([`Ranked::try_all`], as PyTorch's
/// `AlgoIterator::try_all`): its scratch space could not be allocated, or cuDNN refused at run
/// time what its search accepted (other errors are errors at once, where PyTorch moves on after
/// any cuDNN error: an execution failure is no reason to try another algorithm). `call`
/// launches cuDNN's function with an algorithm, the
/// descriptor and the scratch space. `Ok(Err(why))` when none ran on NHWC operands: the caller
/// runs cuDNN's NCHW kernels on NCHW copies, for good when none was refused for memory (the
/// refusal is kept in `slot`). On NCHW operands that is an error naming every algorithm tried.
fn launch<A: Copy + std::fmt::Debug>(
    conv: &Conv,
    what: &str,
    slot: &mut Option<Choice<Chosen<A>>>,
    workspace: &mut Workspace,
    device: &CudaDevice,
    stream: &CudaStream,
    call: impl Fn(A, sys::cudnnConvolutionDescriptor_t, *mut c_void, usize) -> sys::cudnnStatus_t,
) -> Result<Choice<()>> {
    let Some(Ok(Chosen { desc, ranked })) = slot else {
        candle_core::bail!("cuDNN: no {what} algorithm chosen")
    };
    let success = sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
    let outcome = ranked.try_all(|c: &Candidate<A>, switched| {
        // Every call (a host call): after the candidates ran out for memory, the fastest is
        // tried again with the descriptor holding the last one's math type.
        if let Err(e) = desc.set_math(c.math) {
            return Attempt::Fail(e);
        }
        if switched && log_choices() {
            eprintln!(
                "cudnn {what} {:?} x{:?} w{:?}: moved on to {:?} {:?}, {} B",
                conv.dtype, conv.x, conv.w, c.algo, c.math, c.workspace
            );
        }
        let (ws, ws_len, _guard) = match workspace.get(device, stream, c.workspace) {
            Ok(w) => w,
            Err(e) => {
                return Attempt::Next {
                    why: format!(
                        "{:?}: its {} bytes of scratch space could not be allocated ({e})",
                        c.algo, c.workspace
                    ),
                    memory: true,
                }
            }
        };
        let status = call(c.algo, desc.0, ws, ws_len);
        let memory = crate::cudnn::is_out_of_memory(status);
        if status != success && (memory || crate::cudnn::is_refusal(status)) {
            return Attempt::Next {
                why: format!("{:?}: {status:?}", c.algo),
                memory,
            };
        }
        match check(status, &format!("convolution {what}")) {
            Ok(()) => Attempt::Done(()),
            Err(e) => Attempt::Fail(e),
        }
    });
    let (tried, memory) = match outcome {
        Ok(()) => return Ok(Ok(())),
        Err(Exhausted::Fail(e)) => return Err(e),
        Err(Exhausted::None { tried, memory }) => (tried, memory),
    };
    let why = format!(
        "cuDNN could run none of its {what} algorithms for {:?} input {:?}{}, kernel {:?}, padding/stride/dilation/groups {:?} (tried: {tried})",
        conv.dtype,
        conv.x,
        if conv.nhwc { " held channels-last (NHWC)" } else { "" },
        conv.w,
        conv.params,
    );
    if !conv.nhwc {
        candle_core::bail!("{why}")
    }
    if !memory {
        eprintln!("{why}; it runs cuDNN's NCHW kernels on NCHW copies instead");
        *slot = Some(Err(why.clone()));
    }
    Ok(Err(why))
}

fn no_cpu(name: &str) -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("{name} runs on CUDA tensors only")
}

/// The convolution: (x, w) -> y, differentiable in both.
struct Forward(Conv);

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        run(&self.0, Direction::Forward, (x, xl), (w, wl))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The images entering the first layer need no gradient: skip its input gradient.
        let gx = match x.track_op() {
            true => Some(w.apply_op2_no_bwd(&grad, &Backward(self.0, Direction::Data))?),
            false => None,
        };
        let gw = match w.track_op() {
            true => Some(x.apply_op2_no_bwd(&grad, &Backward(self.0, Direction::Filter))?),
            false => None,
        };
        Ok((gx, gw))
    }
}

/// One gradient of the convolution: (w, dy) -> dx or (x, dy) -> dw.
struct Backward(Conv, Direction);

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        match self.1 {
            Direction::Data => "cudnn-conv2d-input-grad",
            _ => "cudnn-conv2d-weight-grad",
        }
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        al: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        run(&self.0, self.1, (a, al), (dy, dyl))
    }
}
