//! Winograd's minimal filtering F(2x2, 3x3) for stride-1 3x3 convolutions on the CPU
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016; oneDNN's and
//! NNPACK's `winograd` algorithm).
//!
//! Each 2x2 block of output positions (a tile) reads a 4x4 patch `d` of each input channel. With
//! the kernel `g` of each (output, input) channel pair transformed once, `U = G g Gᵀ` (4x4), and
//! each patch `V = Bᵀ d B` (4x4), the tile of output channel `o` is `Y = Aᵀ M A`, where
//! `M[ξ] = Σ_c U[ξ][o][c] · V[ξ][c]` for each of the 16 positions `ξ`: 16 matrix products of
//! (O x C) by (C x tiles), 16 multiplications per tile and channel pair where the direct
//! convolution has 36, so 2.25x fewer.
//!
//! The transforms only add, subtract and halve, so the result differs from the direct
//! convolution's by float32 rounding of those sums (measured: a relative error about 1e-6 of the
//! output's scale, see the tests), and runs stay bit-identical for a given thread count.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::cpu::{bf16_product, gemm, Lhs};
use super::geometry::Geometry;
use crate::bf16_gemm::RhsLayout;
use crate::bf16_gemm::{self, PackedLhs};
use crate::products::bf16_product_packed;
use crate::products::bf16_product_uninit;
use crate::profile::{time, Part};

/// Channels from which F(2x2, 3x3) beats the direct convolution: below them the transforms
/// cost more than the products save.
const MIN_CHANNELS: usize = 16;

/// Half of a core's L2 cache (Zen 4 and 5: 1 MB).
const HALF_L2: usize = 512 << 10;

/// Tiles transformed and multiplied at a time, for C input and O output channels. Where the
/// transformed kernel (16 x O x C) fits half of a core's L2 cache, blocks whose transformed
/// input and products (16 x (C + O) per tile) fit the other half, so that nothing of a block
/// leaves L2; otherwise a block long enough that reading the kernel costs little next to the
/// products.
fn tiles_per_block(c: usize, cout: usize) -> usize {
    if 64 * cout * c <= HALF_L2 {
        (HALF_L2 / (64 * (c + cout))).clamp(16, 1024)
    } else {
        128
    }
}

/// Tiles per block of [`weight_grad`]: as [`tiles_per_block`], but four times as many in bf16
/// where the transformed kernel fits half of L2 (64 channels in and out: 256 tiles), so that
/// each of the 16 products per block (O x C, the tiles deep) sums over more tiles between
/// loading and storing its output and packing its operands. Measured inside a `resnet18-cifar`
/// step at batch 128, 64->64 on 32x32, three interleaved runs: bf16 15.7-19.0 ms per kernel
/// gradient with 64 tiles, 14.4-15.0 with 128, 13.5-14.2 with 256; float32 20.4-24.4 with 64,
/// 24.7-25.7 with 256 (so it keeps 64). Twice as many tiles for 128 and more channels measured
/// level or slower.
fn weight_grad_block(c: usize, cout: usize, bf16: bool) -> usize {
    let block = tiles_per_block(c, cout);
    match bf16 && 64 * cout * c <= HALF_L2 {
        true => (4 * block).min(1024),
        false => block,
    }
}

/// Values from one position's matrix to the next in a block of transformed tiles (16 matrices of
/// `rows` x `tb`, [`transform_input`], [`transform_output_grad`], the products): one cache line
/// more than the matrix, so that the 16 values a tile writes or reads (one per matrix, often a
/// multiple of 4 KB apart otherwise) fall in different sets of the L1 cache.
fn stride(rows: usize, tb: usize) -> usize {
    rows * tb + 16
}

/// The layout in which the input transform packs its (C x `tiles`) bf16 matrices for the
/// products ([`transform_input_packed`]), where the CPU has AVX512-BF16 and C fits one packed
/// panel block (up to 256 channels for blocks of more than 16 tiles, 512 for 16 or fewer);
/// `None` otherwise.
fn packs_input(c: usize, tiles: usize) -> Option<RhsLayout> {
    #[cfg(test)]
    if !tests::PACKED_INPUT.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if avx512() && bf16_gemm::available() {
        return RhsLayout::new(c, tiles);
    }
    None
}

/// Values from one position's packed matrix to the next: one cache line more than the matrix
/// (as [`stride`]).
fn packed_stride(layout: RhsLayout) -> usize {
    layout.len() + 16
}

/// [`transform_input`] packed for the bf16 products as [`packs_input`] lays them out.
fn transform_input_packed(
    geo: &Geometry,
    x: &[f32],
    tiles: std::ops::Range<usize>,
    vp: &mut [u32],
    (ps, layout): (usize, RhsLayout),
) {
    #[cfg(target_arch = "x86_64")]
    if avx512() && bf16_gemm::available() {
        // SAFETY: the CPU has AVX-512F and AVX512-BF16 (checked at run time).
        return unsafe { simd::transform_input_packed(geo, x, tiles, vp, (ps, layout)) };
    }
    transform_input_packed_any(geo, x, tiles, vp, (ps, layout))
}

/// [`transform_input_any`], then packed as [`transform_input_packed`] packs it.
fn transform_input_packed_any(
    geo: &Geometry,
    x: &[f32],
    tiles: std::ops::Range<usize>,
    vp: &mut [u32],
    (ps, layout): (usize, RhsLayout),
) {
    let (c, tb) = (geo.c, tiles.len());
    let vs = stride(c, tb);
    let mut v = vec![0f32; 16 * vs];
    transform_input_any(geo, x, tiles, &mut v);
    for (xi, v) in v.chunks_exact(vs).enumerate() {
        layout.pack((&v[..c * tb], tb, 1), &mut vp[xi * ps..]);
    }
}

/// Whether [`convolve`] runs the convolution of `geo` with `cout` output channels.
pub(super) fn applies(geo: &Geometry, cout: usize) -> bool {
    geo.kh == 3
        && geo.kw == 3
        && geo.stride == 1
        && geo.padding <= 2
        && geo.c >= MIN_CHANNELS
        && cout >= MIN_CHANNELS
}

/// The transformed kernel `U = G g Gᵀ` of `w` (O, C, 3, 3), as 16 matrices (O x C).
pub(super) fn transform_kernel(w: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    transform_kernel_of(cout, cin, |o, c| {
        std::array::from_fn(|t| w[(o * cin + c) * 9 + t])
    })
}

/// [`transform_kernel`] of the kernel whose 3x3 taps (row by row) for output channel `o` and
/// input channel `c` are `taps(o, c)` (a flipped kernel read in place). Output channels side by
/// side across the pool from [`PAR_KERNEL`] pairs of channels: for 64x64 kernels the transform
/// takes tens of microseconds, less than waking the pool (output channels in parallel took 2-3x
/// as long inside `resnet18-seed`'s step); from 128x128 the pool was faster on
/// `resnet18-cifar` and level on `resnet18-seed`.
pub(super) fn transform_kernel_of(
    cout: usize,
    cin: usize,
    taps: impl Fn(usize, usize) -> [f32; 9] + Sync,
) -> Vec<f32> {
    // Not zero-filled first (a pass over up to 16 MB on the calling thread): every value is
    // written below.
    let len = 16 * cout * cin;
    let mut u: Vec<f32> = Vec::with_capacity(len);
    /// `u`'s values, written by output channel from the pool's threads.
    struct Shared(*mut MaybeUninit<f32>);
    // SAFETY: each output channel's values (below) are written by one thread only.
    unsafe impl Sync for Shared {}
    let shared = Shared(u.spare_capacity_mut().as_mut_ptr());
    // One output channel: its taps gathered by tap (`g[t·cin + c]`), then each step of the
    // transform as a pass along the input channels (the same operations per value as one
    // 3x3 at a time, in vector registers), each of the 16 results written as one run.
    let channel = |o: usize| {
        let shared = &shared;
        let mut g = vec![0f32; 9 * cin];
        for c in 0..cin {
            for (t, v) in taps(o, c).into_iter().enumerate() {
                g[t * cin + c] = v;
            }
        }
        // G g: 4x3, `gg[(i·3 + j)·cin + c]`.
        let mut gg = vec![0f32; 12 * cin];
        for j in 0..3 {
            let (a, b, e) = (&g[j * cin..], &g[(3 + j) * cin..], &g[(6 + j) * cin..]);
            let (a, b, e) = (&a[..cin], &b[..cin], &e[..cin]);
            let (rows01, rows23) = gg.split_at_mut(6 * cin);
            let (r0, r1) = rows01.split_at_mut(3 * cin);
            let (r2, r3) = rows23.split_at_mut(3 * cin);
            let at = j * cin..(j + 1) * cin;
            let (r0, r1, r2, r3) = (
                &mut r0[at.clone()],
                &mut r1[at.clone()],
                &mut r2[at.clone()],
                &mut r3[at],
            );
            for c in 0..cin {
                r0[c] = a[c];
                r1[c] = 0.5 * (a[c] + b[c] + e[c]);
                r2[c] = 0.5 * (a[c] - b[c] + e[c]);
                r3[c] = e[c];
            }
        }
        // (G g) Gᵀ: 4x4, row `i` from `gg`'s row `i`.
        for i in 0..4 {
            let row = &gg[i * 3 * cin..(i + 1) * 3 * cin];
            let (a, b, e) = (&row[..cin], &row[cin..2 * cin], &row[2 * cin..]);
            // SAFETY: the 4 runs `((i·4 + j)·cout + o)·cin ..` of `cin` values lie inside `u`'s
            // capacity (16·cout·cin, `o < cout`) and belong to output channel `o` alone.
            let run = |j: usize| unsafe {
                std::slice::from_raw_parts_mut(shared.0.add(((i * 4 + j) * cout + o) * cin), cin)
            };
            let (u0, u1, u2, u3) = (run(0), run(1), run(2), run(3));
            for c in 0..cin {
                u0[c].write(a[c]);
                u1[c].write(0.5 * (a[c] + b[c] + e[c]));
                u2[c].write(0.5 * (a[c] - b[c] + e[c]));
                u3[c].write(e[c]);
            }
        }
    };
    if cout * cin >= PAR_KERNEL {
        (0..cout).into_par_iter().for_each(channel);
    } else {
        (0..cout).for_each(channel);
    }
    // SAFETY: the 16 runs of each output channel, written above, cover all `len` values.
    unsafe { u.set_len(len) };
    u
}

/// Pairs of channels from which [`transform_kernel_of`] shares the output channels across the
/// pool (128 x 128 kernels and larger).
const PAR_KERNEL: usize = 128 * 128;

/// [`convolve`] into a new vector of N·O·OH·OW values, not zero-filled first (a pass over the
/// output saved: `convolve` writes every value).
pub(super) fn convolved(
    geo: &Geometry,
    cout: usize,
    x: &[f32],
    u: &[f32],
    n: usize,
    bf16: bool,
) -> Vec<f32> {
    let len = n * cout * geo.oh * geo.ow;
    let mut out = Vec::with_capacity(len);
    convolve(
        geo,
        cout,
        x,
        u,
        n,
        &mut out.spare_capacity_mut()[..len],
        bf16,
    );
    // SAFETY: `convolve` wrote every one of the `len` values.
    unsafe { out.set_len(len) };
    out
}

/// `out` (N, O, OH, OW) := the convolution of `x` (N, C, H, W) by the kernel whose transform is
/// `u` ([`transform_kernel`]), for the geometry `geo` (3x3, stride 1); with `bf16`, the 16
/// products take bf16 operands (the transformed kernel and input rounded) and sum in float32.
/// Every value of `out` is written (the tiles cover the output, cropped at its edges), so it
/// needs no zero-filling first.
pub(super) fn convolve(
    geo: &Geometry,
    cout: usize,
    x: &[f32],
    u: &[f32],
    n: usize,
    out: &mut [MaybeUninit<f32>],
    bf16: bool,
) {
    let (c, img_len, out_len) = (geo.c, geo.c * geo.h * geo.w, cout * geo.oh * geo.ow);
    // Every chunk of `out` below is written: none may be left out by a short input.
    assert!(
        x.len() == n * img_len && out.len() == n * out_len,
        "winograd: {} input and {} output values for {n} images of {img_len} and {out_len}",
        x.len(),
        out.len()
    );
    let (share, gemm_threads) = shares(n);
    let tiles_per_image = geo.oh.div_ceil(2) * geo.ow.div_ceil(2);
    let block = tiles_per_block(c, cout);
    // The 16 kernels packed side by side (on the calling thread alone they were a serial
    // stretch of every bf16 step).
    let lhs: Vec<Lhs> = (0..16)
        .into_par_iter()
        .map(|xi| {
            Lhs::new(
                bf16,
                (cout, c),
                (&u[xi * cout * c..(xi + 1) * cout * c], c, 1),
            )
        })
        .collect();
    // The packed bf16 kernels, all 16 of them or none (float32 products).
    let bf16_lhs: Vec<&PackedLhs> = lhs
        .iter()
        .filter_map(|l| match l {
            Lhs::Bf16(l) => Some(l),
            Lhs::F32(_) => None,
        })
        .collect();
    out.par_chunks_mut(share * out_len)
        .zip(x.par_chunks(share * img_len))
        .for_each(|(out, x)| {
            let images = out.len() / out_len.max(1);
            let tiles = images * tiles_per_image;
            // bf16 products: the input transform writes the right operands packed, as the
            // products take them, instead of float32 matrices packed again by each product.
            let packed = match bf16_lhs.len() {
                16 => packs_input(c, block.min(tiles)),
                _ => None,
            };
            let mut v = Vec::new();
            let vp_len = packed.map_or(0, |layout| 16 * packed_stride(layout));
            let mut vp_buf = vec![0u32; vp_len + 16];
            let vp = aligned(&mut vp_buf, vp_len);
            // Kept by the thread from call to call: the products write every value the
            // output transform uses (the AVX2 one also loads a few spare values after a
            // matrix into lanes it does not store).
            let mut m_buf = TRANSFORMS.take();
            let m_len = 16 * stride(cout, block.min(tiles));
            if m_buf.len() < m_len + 16 {
                m_buf.resize(m_len + 16, 0.0);
            }
            let m = aligned(&mut m_buf, m_len);
            let mut scratch = bf16_gemm::Scratch::default();
            for first in (0..tiles).step_by(block) {
                let range = first..(first + block).min(tiles);
                let tb = range.len();
                let ms = stride(cout, tb);
                // (A block shorter than the first fits the buffer and a layout too.)
                if let Some(layout) = packed.and(packs_input(c, tb)) {
                    let ps = packed_stride(layout);
                    time(Part::Im2col, || {
                        transform_input_packed(geo, x, range.clone(), vp, (ps, layout))
                    });
                    for (xi, lhs) in bf16_lhs.iter().enumerate() {
                        let dst = (&mut m[xi * ms..xi * ms + cout * tb], tb, 1);
                        let rhs = (&vp[xi * ps..xi * ps + layout.len()], layout);
                        let dims = (cout, tb, c);
                        bf16_product_packed(dims, dst, lhs, rhs, gemm_threads, &mut scratch);
                    }
                } else {
                    let vs = stride(c, tb);
                    v.resize(16 * stride(c, block.min(tiles)), 0.0);
                    time(Part::Im2col, || {
                        transform_input(geo, x, range.clone(), &mut v[..16 * vs])
                    });
                    for xi in 0..16 {
                        let dst = (&mut m[xi * ms..xi * ms + cout * tb], tb, 1);
                        let rhs = (&v[xi * vs..xi * vs + c * tb], tb, 1);
                        lhs[xi].product((cout, tb, c), dst, rhs, false, gemm_threads, &mut scratch);
                    }
                }
                time(Part::Im2col, || {
                    transform_output(geo, cout, &m[..16 * stride(cout, tb)], range, out)
                });
            }
            TRANSFORMS.set(m_buf);
        });
}

/// Images per thread share for a batch of `n`, and threads per product: a fixed share of the
/// images per pool thread, or one share with threaded products for a batch smaller than the
/// pool.
fn shares(n: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads().max(1);
    if n >= threads {
        (n.div_ceil(threads), 1)
    } else {
        (n.max(1), threads)
    }
}

/// dL/dw (O, C, 3, 3) of the convolution of `x` (N, C, H, W) for the output gradient `grad`
/// (N, O, OH, OW): with `dM = A dY Aᵀ` the transformed output gradient of each tile,
/// `dU[ξ][o][c] = Σ_tiles dM[ξ][o] · V[ξ][c]` (16 products of (O x tiles) by (tiles x C)), then
/// `dw = Gᵀ dU G`. Each thread sums a fixed share of the images; the shares are added in order,
/// so the result repeats bit for bit for a given thread count. With `bf16`, the products take
/// bf16 operands and sum in float32.
pub(super) fn weight_grad(
    geo: &Geometry,
    cout: usize,
    x: &[f32],
    grad: &[f32],
    n: usize,
    bf16: bool,
) -> Vec<f32> {
    let (c, img_len, out_len) = (geo.c, geo.c * geo.h * geo.w, cout * geo.oh * geo.ow);
    let (share, gemm_threads) = shares(n);
    let tiles_per_image = geo.oh.div_ceil(2) * geo.ow.div_ceil(2);
    let block = weight_grad_block(c, cout, bf16);
    let partials: Vec<Vec<f32>> = x
        .par_chunks(share * img_len)
        .zip(grad.par_chunks(share * out_len))
        .map(|(x, g)| {
            let tiles = x.len() / img_len.max(1) * tiles_per_image;
            let du_len = 16 * cout * c;
            // bf16: not zero-filled first (up to 16 MB a thread for 512 channels, a `memset`
            // of each call): the first block's products write it, the others add to it. An
            // accumulator loaded from zeros and one started at zero sum the same bits.
            let mut du: Vec<f32> = match bf16 {
                true => Vec::with_capacity(du_len),
                false => vec![0f32; du_len],
            };
            // The transforms' buffer, kept by the thread from call to call (the transforms
            // write every value the products read).
            let mut v = TRANSFORMS.take();
            let v_len = 16 * stride(c, block.min(tiles));
            if v.len() < v_len {
                v.resize(v_len, 0.0);
            }
            // Made at the first block that needs the float32 path (none on AMX, mostly).
            let mut dm = Vec::new();
            let (mut lhs, mut scratch) = (PackedLhs::default(), bf16_gemm::Scratch::default());
            // bf16 on AMX: the 16 transformed gradients written packed, as the products take
            // them ([`transform_output_grad_amx`]).
            let mut packed: Vec<PackedLhs> = match bf16 {
                true => (0..16).map(|_| PackedLhs::default()).collect(),
                false => Vec::new(),
            };
            for first in (0..tiles).step_by(block) {
                let range = first..(first + block).min(tiles);
                let tb = range.len();
                let packed_dm = time(Part::Im2col, || {
                    transform_input(geo, x, range.clone(), &mut v[..16 * stride(c, tb)]);
                    let packed_dm =
                        transform_output_grad_amx(geo, cout, g, range.clone(), &mut packed);
                    if !packed_dm {
                        dm.resize(16 * stride(cout, block.min(tiles)), 0.0);
                        let dm = &mut dm[..16 * stride(cout, tb)];
                        transform_output_grad(geo, cout, g, range, dm);
                    }
                    packed_dm
                });
                for xi in 0..16 {
                    let (vs, ms) = (stride(c, tb), stride(cout, tb));
                    let rhs = (&v[xi * vs..xi * vs + c * tb], 1, tb);
                    let dmx = || (&dm[xi * ms..xi * ms + cout * tb], tb, 1);
                    if bf16 && du.len() < du_len {
                        // The first block: `dU := dM · V`, into the values not yet written.
                        let at = xi * cout * c..(xi + 1) * cout * c;
                        let dst = (&mut du.spare_capacity_mut()[at], c, 1);
                        let lhs = match packed_dm {
                            true => &packed[xi],
                            false => {
                                lhs.pack(cout, tb, dmx());
                                &lhs
                            }
                        };
                        let dims = (cout, c, tb);
                        bf16_product_uninit(dims, dst, lhs, rhs, gemm_threads, &mut scratch);
                        continue;
                    }
                    let dst = (&mut du[xi * cout * c..(xi + 1) * cout * c], c, 1);
                    if packed_dm {
                        bf16_product(
                            (cout, c, tb),
                            dst,
                            &packed[xi],
                            rhs,
                            true,
                            gemm_threads,
                            &mut scratch,
                        );
                    } else if bf16 {
                        lhs.pack(cout, tb, dmx());
                        bf16_product(
                            (cout, c, tb),
                            dst,
                            &lhs,
                            rhs,
                            true,
                            gemm_threads,
                            &mut scratch,
                        );
                    } else {
                        gemm((cout, c, tb), dst, dmx(), rhs, true, gemm_threads);
                    }
                }
                if du.len() < du_len {
                    // SAFETY: the first block's 16 products wrote every value of the 16 (O x C)
                    // matrices (`gemm_uninit`'s promise).
                    unsafe { du.set_len(du_len) };
                }
            }
            TRANSFORMS.set(v);
            // No tiles: no products, a zero gradient.
            du.resize(du_len, 0.0);
            du
        })
        .collect();
    time(Part::Im2col, || kernel_grad(&partials, cout, c))
}

/// The first `len` values of `buf` from a 64-byte boundary (a cache line: the packed operands'
/// and the products' rows are whole lines, which a store or tile load then does not split);
/// `buf` holds 16 values more than `len`.
fn aligned<T>(buf: &mut [T], len: usize) -> &mut [T] {
    let at = buf.as_ptr().align_offset(64).min(buf.len() - len);
    &mut buf[at..at + len]
}

thread_local! {
    /// The float32 transforms' buffer of [`weight_grad`] and the products' of [`convolve`],
    /// kept by each thread between calls: allocated anew, each was zero-filled by `calloc` at
    /// every call (megabytes a thread at 512 channels). Only values written in the same call
    /// are used (the AVX2 output transform loads whole vectors, up to 7 spare values after a
    /// matrix among them, into lanes it discards).
    static TRANSFORMS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// dw (O, C, 3, 3) = `Gᵀ dU G` for each channel pair of `dU` (16, O, C), the sum of the
/// threads' `partials` added in order (the first, plus the second, ...: the same sums on any
/// number of pool threads for a given number of partials). Output channels in parallel: on
/// one thread, the sums and transforms of 512 x 512 channels were a serial stretch of each
/// kernel gradient.
fn kernel_grad(partials: &[Vec<f32>], cout: usize, cin: usize) -> Vec<f32> {
    let mut dw = vec![0f32; cout * cin * 9];
    if partials.is_empty() || cin == 0 {
        return dw;
    }
    dw.par_chunks_mut(cin * 9)
        .enumerate()
        .with_min_len(8)
        .for_each_init(Vec::new, |d16, (o, dw)| {
            // The 16 rows of this output channel, summed over the partials in order.
            d16.resize(16 * cin, 0.0);
            for (xi, row) in d16.chunks_exact_mut(cin).enumerate() {
                let at = (xi * cout + o) * cin;
                row.copy_from_slice(&partials[0][at..at + cin]);
                for p in &partials[1..] {
                    row.iter_mut()
                        .zip(&p[at..at + cin])
                        .for_each(|(a, b)| *a += b);
                }
            }
            kernel_grad_row(d16, cin, dw);
        });
    dw
}

/// `kernel_grad` of one output channel: `d16` its 16 rows of C values, `dw` its (C, 3, 3).
fn kernel_grad_row(d16: &[f32], cin: usize, dw: &mut [f32]) {
    for (c, dw) in dw.chunks_exact_mut(9).enumerate().take(cin) {
        let d: [f32; 16] = std::array::from_fn(|xi| d16[xi * cin + c]);
        // Gᵀ D: 3x4.
        let s: [[f32; 4]; 3] = [
            std::array::from_fn(|j| d[j] + 0.5 * (d[4 + j] + d[8 + j])),
            std::array::from_fn(|j| 0.5 * (d[4 + j] - d[8 + j])),
            std::array::from_fn(|j| 0.5 * (d[4 + j] + d[8 + j]) + d[12 + j]),
        ];
        // (Gᵀ D) G: 3x3.
        for (i, [a, b, e, f]) in s.into_iter().enumerate() {
            dw[i * 3..i * 3 + 3].copy_from_slice(&[
                a + 0.5 * (b + e),
                0.5 * (b - e),
                0.5 * (b + e) + f,
            ]);
        }
    }
}

/// The tile `t` of a run of images: (image, first output row, first output column).
#[inline]
fn tile(geo: &Geometry, t: usize) -> (usize, usize, usize) {
    let (th, tw) = (geo.oh.div_ceil(2), geo.ow.div_ceil(2));
    let (image, rest) = (t / (th * tw), t % (th * tw));
    (image, 2 * (rest / tw), 2 * (rest % tw))
}

/// Tiles transformed side by side, in the lanes of arrays the compiler vectorises.
const LANES: usize = 16;

/// The tiles `tiles` as runs along a tile row of one image: (first tile, image, first output
/// row, first output column, tiles in the run), runs at most [`LANES`] long.
fn runs(geo: &Geometry, tiles: std::ops::Range<usize>) -> Vec<(usize, usize, usize, usize, usize)> {
    runs_of(geo, tiles, LANES)
}

/// [`runs`] at most `lanes` long.
fn runs_of(
    geo: &Geometry,
    tiles: std::ops::Range<usize>,
    lanes: usize,
) -> Vec<(usize, usize, usize, usize, usize)> {
    let tw = geo.ow.div_ceil(2);
    let mut out = Vec::new();
    let mut t = tiles.start;
    while t < tiles.end {
        let (image, oy, ox) = tile(geo, t);
        let len = (tw - ox / 2).min(tiles.end - t).min(lanes);
        out.push((t - tiles.start, image, oy, ox, len));
        t += len;
    }
    out
}

/// The runs of `tiles` ([`runs`]) grouped into spans of at most [`LANES`] consecutive tiles, so
/// that a vector's lanes stay filled when tile rows are short (an 8x8 output has rows of 4
/// tiles: one span is a whole image): (first tile, tiles in the span, its runs as (lane of
/// the run's first tile in the span, image, first output row, first output column, tiles)).
#[cfg(target_arch = "x86_64")]
type Span = (usize, usize, Vec<(usize, usize, usize, usize, usize)>);

#[cfg(target_arch = "x86_64")]
fn spans(geo: &Geometry, tiles: std::ops::Range<usize>) -> Vec<Span> {
    spans_of(geo, tiles, LANES)
}

/// [`spans`] of at most `lanes` tiles (runs at most that long).
#[cfg(target_arch = "x86_64")]
fn spans_of(geo: &Geometry, tiles: std::ops::Range<usize>, lanes: usize) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    for (tl, image, oy, ox, len) in runs_of(geo, tiles, lanes) {
        match out.last_mut() {
            Some((_, total, parts)) if *total + len <= lanes => {
                parts.push((*total, image, oy, ox, len));
                *total += len;
            }
            _ => out.push((tl, len, vec![(0, image, oy, ox, len)])),
        }
    }
    out
}

/// `dst` := the first `dst.len()` values of `src`: a fixed-size copy for a full run of lanes
/// (a few vector moves, where `copy_from_slice` of a run's length calls `memmove`).
#[inline(always)]
fn copy_lanes(dst: &mut [f32], src: &[f32]) {
    if dst.len() == LANES {
        if let (Some(d), Some(s)) = (dst.first_chunk_mut::<LANES>(), src.first_chunk::<LANES>()) {
            *d = *s;
            return;
        }
    }
    dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s);
}

/// `Bᵀ d B` of 4x4 patches given as `d[i][j][lane]`.
#[inline(always)]
fn input_tile(d: &[[[f32; LANES]; 4]; 4]) -> [[f32; LANES]; 16] {
    let lanes = |f: &dyn Fn(usize) -> f32| -> [f32; LANES] { std::array::from_fn(f) };
    let mut t = [[[0f32; LANES]; 4]; 4];
    for j in 0..4 {
        t[0][j] = lanes(&|l| d[0][j][l] - d[2][j][l]);
        t[1][j] = lanes(&|l| d[1][j][l] + d[2][j][l]);
        t[2][j] = lanes(&|l| d[2][j][l] - d[1][j][l]);
        t[3][j] = lanes(&|l| d[1][j][l] - d[3][j][l]);
    }
    let mut v = [[0f32; LANES]; 16];
    for (i, r) in t.iter().enumerate() {
        v[i * 4] = lanes(&|l| r[0][l] - r[2][l]);
        v[i * 4 + 1] = lanes(&|l| r[1][l] + r[2][l]);
        v[i * 4 + 2] = lanes(&|l| r[2][l] - r[1][l]);
        v[i * 4 + 3] = lanes(&|l| r[1][l] - r[3][l]);
    }
    v
}

/// [`transform_input_any`], vectorised for AVX-512 or else AVX2 where the CPU has it (the
/// workspace builds for baseline x86-64, whose vectors are 4 lanes wide).
fn transform_input(geo: &Geometry, x: &[f32], tiles: std::ops::Range<usize>, v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F (checked at run time).
        return unsafe { simd::transform_input(geo, x, tiles, v) };
    } else if crate::avx2::available() {
        // SAFETY: the CPU has AVX2 (checked at run time).
        return unsafe { avx2::transform_input(geo, x, tiles, v) };
    }
    transform_input_any(geo, x, tiles, v)
}

/// [`transform_output_any`], vectorised for AVX-512 or else AVX2 where the CPU has it.
fn transform_output(
    geo: &Geometry,
    cout: usize,
    m: &[f32],
    tiles: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F (checked at run time).
        return unsafe { simd::transform_output(geo, cout, m, tiles, out) };
    } else if crate::avx2::available() {
        // SAFETY: the CPU has AVX2 (checked at run time).
        return unsafe { avx2::transform_output(geo, cout, m, tiles, out) };
    }
    transform_output_any(geo, cout, m, tiles, out)
}

#[cfg(target_arch = "x86_64")]
use crate::avx512::available as avx512;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// `v` (16, C, tiles) := `Bᵀ d B` of each channel's 4x4 patch `d` of the tiles `tiles`.
#[inline(always)]
fn transform_input_any(geo: &Geometry, x: &[f32], tiles: std::ops::Range<usize>, v: &mut [f32]) {
    let (c, h, w, p) = (geo.c, geo.h as isize, geo.w as isize, geo.padding as isize);
    let tb = tiles.len();
    let plane_len = geo.h * geo.w;
    let runs = runs(geo, tiles);
    for ch in 0..c {
        for &(tl, image, oy, ox, len) in &runs {
            let plane = &x[(image * c + ch) * plane_len..(image * c + ch + 1) * plane_len];
            let (y0, x0) = (oy as isize - p, ox as isize - p);
            let mut d = [[[0f32; LANES]; 4]; 4];
            for (i, rows) in d.iter_mut().enumerate() {
                let y = y0 + i as isize;
                if y < 0 || y >= h {
                    continue;
                }
                // The patch row's 2·len + 2 values, zero in the padding.
                let mut line = [0f32; 2 * LANES + 2];
                let lo = (-x0).max(0);
                let hi = (w - x0).min(2 * len as isize + 2);
                if lo < hi {
                    let src = y as usize * geo.w + (x0 + lo) as usize;
                    let n = (hi - lo) as usize;
                    line[lo as usize..hi as usize].copy_from_slice(&plane[src..src + n]);
                }
                for (j, lanes) in rows.iter_mut().enumerate() {
                    *lanes = std::array::from_fn(|l| line[2 * l + j]);
                }
            }
            for (xi, vals) in input_tile(&d).iter().enumerate() {
                let at = xi * stride(c, tb) + ch * tb + tl;
                copy_lanes(&mut v[at..at + len], vals);
            }
        }
    }
}

/// The output tiles `tiles` of `out` (images, O, OH, OW) := `Aᵀ M A` of `m` (16, O, tiles),
/// cropped at the bottom and right edges: every value of those tiles' outputs is written.
#[inline(always)]
fn transform_output_any(
    geo: &Geometry,
    cout: usize,
    m: &[f32],
    tiles: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
) {
    let (oh, ow) = (geo.oh, geo.ow);
    let tb = tiles.len();
    let runs = runs(geo, tiles);
    for o in 0..cout {
        for &(tl, image, oy, ox, len) in &runs {
            let mut mv = [[0f32; LANES]; 16];
            for (xi, lanes) in mv.iter_mut().enumerate() {
                let at = xi * stride(cout, tb) + o * tb + tl;
                copy_lanes(&mut lanes[..len], &m[at..at + len]);
            }
            let lanes = |f: &dyn Fn(usize) -> f32| -> [f32; LANES] { std::array::from_fn(f) };
            // Aᵀ M: 2x4, then (Aᵀ M) A: 2x2.
            let r0: [[f32; LANES]; 4] =
                std::array::from_fn(|j| lanes(&|l| mv[j][l] + mv[4 + j][l] + mv[8 + j][l]));
            let r1: [[f32; LANES]; 4] =
                std::array::from_fn(|j| lanes(&|l| mv[4 + j][l] - mv[8 + j][l] - mv[12 + j][l]));
            let plane = &mut out[(image * cout + o) * oh * ow..(image * cout + o + 1) * oh * ow];
            for (i, [a, b, e, f]) in [r0, r1].iter().enumerate() {
                if oy + i >= oh {
                    break;
                }
                let left = lanes(&|l| a[l] + b[l] + e[l]);
                let right = lanes(&|l| b[l] - e[l] - f[l]);
                let row = &mut plane[(oy + i) * ow..(oy + i + 1) * ow];
                if ox + 2 * len <= ow {
                    let dst = &mut row[ox..ox + 2 * len];
                    for (l, pair) in dst.chunks_exact_mut(2).enumerate() {
                        pair[0].write(left[l]);
                        pair[1].write(right[l]);
                    }
                } else {
                    for l in 0..len {
                        row[ox + 2 * l].write(left[l]);
                        if ox + 2 * l + 1 < ow {
                            row[ox + 2 * l + 1].write(right[l]);
                        }
                    }
                }
            }
        }
    }
}

/// [`transform_output_grad_any`], vectorised for AVX-512 or else AVX2 where the CPU has it.
fn transform_output_grad(
    geo: &Geometry,
    cout: usize,
    g: &[f32],
    tiles: std::ops::Range<usize>,
    dm: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F (checked at run time).
        return unsafe { simd::transform_output_grad(geo, cout, g, tiles, dm) };
    } else if crate::avx2::available() {
        // SAFETY: the CPU has AVX2 (checked at run time).
        return unsafe { avx2::transform_output_grad(geo, cout, g, tiles, dm) };
    }
    transform_output_grad_any(geo, cout, g, tiles, dm)
}

/// [`transform_output_grad`] into `lhs` (16 of them) packed as the kernel gradient's bf16
/// products take their left operands on AMX, in place of float32 matrices the products then
/// round and pack: the same bits (the same rounding instruction as their packing, tested), but
/// for float32 subnormal values in a block's last `tiles % 32` columns, which the packing's
/// scalar rounding of its tail keeps (as bf16 subnormals, or as the smallest normal value for
/// those just under it) and the instruction flushes to zero.
/// False, with nothing written, where the products would not run on AMX
/// ([`PackedLhs::amx_values`]), the CPU lacks the instructions, or a span of tiles would
/// straddle two groups of 32 (tile rows of odd lengths, blocks not whole 32s of tiles).
fn transform_output_grad_amx(
    geo: &Geometry,
    cout: usize,
    g: &[f32],
    tiles: std::ops::Range<usize>,
    lhs: &mut [PackedLhs],
) -> bool {
    #[cfg(test)]
    if !tests::PACKED_GRAD.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let instructions =
            avx512() && bf16_gemm::available() && std::arch::is_x86_feature_detected!("avx512vl");
        if !instructions || lhs.len() != 16 {
            return false;
        }
        if spans(geo, tiles.clone())
            .iter()
            .any(|&(tl, len, _)| tl % 32 + len > 32)
        {
            return false;
        }
        let tb = tiles.len();
        let mut out = Vec::with_capacity(16);
        for l in lhs.iter_mut() {
            match l.amx_values(cout, tb) {
                Some(values) => out.push(values),
                None => return false,
            }
        }
        // SAFETY: the CPU has AVX-512F, BW, VL and BF16 (checked above), and every span lies
        // inside one group of 32 tiles.
        unsafe { simd::transform_output_grad_packed(geo, cout, g, tiles, &mut out) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (geo, cout, g, tiles, lhs);
        false
    }
}

/// `dm` (16, O, tiles) := `A dY Aᵀ` of each output channel's 2x2 gradient tile `dY` of
/// `g` (images, O, OH, OW), zero past the bottom and right edges.
#[inline(always)]
fn transform_output_grad_any(
    geo: &Geometry,
    cout: usize,
    g: &[f32],
    tiles: std::ops::Range<usize>,
    dm: &mut [f32],
) {
    let (oh, ow) = (geo.oh, geo.ow);
    let tb = tiles.len();
    let runs = runs(geo, tiles);
    let lanes = |f: &dyn Fn(usize) -> f32| -> [f32; LANES] { std::array::from_fn(f) };
    for o in 0..cout {
        for &(tl, image, oy, ox, len) in &runs {
            let plane = &g[(image * cout + o) * oh * ow..(image * cout + o + 1) * oh * ow];
            // The tiles' rows: left and right value of each, zero outside.
            let mut y = [[[0f32; LANES]; 2]; 2];
            for (i, row) in y.iter_mut().enumerate() {
                if oy + i >= oh {
                    continue;
                }
                let mut line = [0f32; 2 * LANES];
                let n = (2 * len).min(ow - ox);
                line[..n].copy_from_slice(&plane[(oy + i) * ow + ox..(oy + i) * ow + ox + n]);
                row[0] = lanes(&|l| line[2 * l]);
                row[1] = lanes(&|l| line[2 * l + 1]);
            }
            // dY Aᵀ: 2x4, then A (dY Aᵀ): 4x4.
            let t: [[[f32; LANES]; 4]; 2] = std::array::from_fn(|i| {
                let [a, b] = y[i];
                [
                    a,
                    lanes(&|l| a[l] + b[l]),
                    lanes(&|l| a[l] - b[l]),
                    lanes(&|l| -b[l]),
                ]
            });
            for (j, (&p, &q)) in t[0].iter().zip(&t[1]).enumerate() {
                let rows = [
                    p,
                    lanes(&|l| p[l] + q[l]),
                    lanes(&|l| p[l] - q[l]),
                    lanes(&|l| -q[l]),
                ];
                for (i, vals) in rows.iter().enumerate() {
                    let at = (i * 4 + j) * stride(cout, tb) + o * tb + tl;
                    copy_lanes(&mut dm[at..at + len], vals);
                }
            }
        }
    }
}

/// The transforms in AVX-512 intrinsics: 16 tiles per vector (a span of tile rows when rows are
/// shorter, [`spans`]), the patches' stride-2 columns gathered by permutes from (masked) row
/// loads. The same operations in the same order as the portable versions, so the results are
/// identical bit for bit.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{spans, stride, Geometry, MaybeUninit, PackedLhs, LANES};
    use crate::avx512::{index, load_mask, EVEN, HIGH, LOW, ODD};

    /// `_mm512_permutex2var_epi16` indices: the low 16 values of `a` and `b` interleaved
    /// (`a0, b0, a1, b1, ...`), then the high 16.
    const PAIR_LOW: [i16; 32] = {
        let mut v = [0i16; 32];
        let mut k = 0;
        while k < 32 {
            v[k] = (k / 2) as i16 + if k % 2 == 1 { 32 } else { 0 };
            k += 1;
        }
        v
    };
    const PAIR_HIGH: [i16; 32] = {
        let mut v = PAIR_LOW;
        let mut k = 0;
        while k < 32 {
            v[k] += 16;
            k += 1;
        }
        v
    };

    /// A 16-bit permute's index vector.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline(always)]
    unsafe fn index16(i: &[i16; 32]) -> __m512i {
        _mm512_loadu_si512(i.as_ptr().cast())
    }
    use crate::bf16_gemm::RhsLayout;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn neg(v: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(v),
            _mm512_set1_epi32(i32::MIN),
        ))
    }

    const NEXT0: [i32; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    const NEXT1: [i32; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17];

    /// The lanes `off .. off + len`.
    #[inline(always)]
    fn lanes(off: usize, len: usize) -> u16 {
        (((1u32 << (off + len)) - 1) & !((1u32 << off) - 1)) as u16
    }

    /// Where a span is one whole 8x8 output (the 16 tiles of an image, its first tile first: a
    /// ResNet's 8x8 stage), that image: its plane (and, padded by one, its input's) fits in
    /// four vectors, and the transforms gather each patch value of all 16 tiles by permutes
    /// instead of row by row.
    #[inline(always)]
    fn whole_8x8(
        geo: &Geometry,
        len: usize,
        parts: &[(usize, usize, usize, usize, usize)],
    ) -> Option<usize> {
        match parts.first() {
            Some(&(0, image, 0, 0, _)) if geo.oh == 8 && geo.ow == 8 && len == 16 => Some(image),
            _ => None,
        }
    }

    /// Gathers from an 8x8 plane held in four vectors (rows 2k, 2k + 1 in vector k), as
    /// (indices into vectors 0-1 and, the same, into 2-3; the lanes taken from 2-3; the lanes
    /// inside the plane) for each value `q` of the 16 tiles (tile `t` at tile row `t / 4`,
    /// column `t % 4`): with `patches`, the 16 values of each tile's 4x4 input patch (padding
    /// 1: row `2·(t / 4) + q / 4 - 1`, column `2·(t % 4) + q % 4 - 1`); else its 2x2 outputs
    /// (`q` < 4: row `2·(t / 4) + q / 2`, column `2·(t % 4) + q % 2`).
    type Gather = ([[i32; 16]; 16], [u16; 16], [u16; 16]);

    const fn gather_8x8(patches: bool) -> Gather {
        let (mut idx, mut hi, mut inside) = ([[0i32; 16]; 16], [0u16; 16], [0u16; 16]);
        let mut q = 0;
        while q < 16 {
            let mut t = 0;
            while t < 16 {
                let (ty, tx) = ((t / 4) as isize, (t % 4) as isize);
                let (y, x) = if patches {
                    (2 * ty + (q / 4) as isize - 1, 2 * tx + (q % 4) as isize - 1)
                } else {
                    (2 * ty + (q / 2) as isize, 2 * tx + (q % 2) as isize)
                };
                if (patches || q < 4) && y >= 0 && y < 8 && x >= 0 && x < 8 {
                    let e = (y * 8 + x) as i32;
                    idx[q][t] = e & 31;
                    if e >= 32 {
                        hi[q] |= 1 << t;
                    }
                    inside[q] |= 1 << t;
                }
                t += 1;
            }
            q += 1;
        }
        (idx, hi, inside)
    }

    const PATCHES_8X8: Gather = gather_8x8(true);
    const OUTPUTS_8X8: Gather = gather_8x8(false);

    /// The values `q` of the 16 tiles (lane `t`) from the plane `r` ([`gather_8x8`]).
    #[inline(always)]
    unsafe fn gather(r: &[__m512; 4], (idx, hi, inside): &Gather, q: usize) -> __m512 {
        let i = index(&idx[q]);
        let lo = _mm512_permutex2var_ps(r[0], i, r[1]);
        let up = _mm512_permutex2var_ps(r[2], i, r[3]);
        _mm512_maskz_mov_ps(inside[q], _mm512_mask_blend_ps(hi[q], lo, up))
    }

    /// The 8x8 plane starting at `plane` of `src` in four vectors.
    #[inline(always)]
    unsafe fn plane_8x8(src: &[f32], plane: usize) -> [__m512; 4] {
        let p = &src[plane..plane + 64];
        std::array::from_fn(|k| _mm512_loadu_ps(p.as_ptr().add(16 * k)))
    }

    /// Indices that interleave a tile row's outputs back into an 8x8 plane's vector `k` (rows
    /// 2k, 2k + 1): value `e` is the output at row `e / 8`, column `e % 8` of tile row `k`,
    /// from (left, right) permuted by these (lane `4k + column / 2`, right for odd columns).
    const fn scatter_8x8() -> [[i32; 16]; 4] {
        let mut idx = [[0i32; 16]; 4];
        let mut k = 0;
        while k < 4 {
            let mut e = 0;
            while e < 16 {
                let x = e % 8;
                idx[k][e] = (4 * k + x / 2 + 16 * (x % 2)) as i32;
                e += 1;
            }
            k += 1;
        }
        idx
    }

    const SCATTER_8X8: [[i32; 16]; 4] = scatter_8x8();

    /// Channels ahead whose rows the transforms prefetch: each channel's rows of a block are a
    /// short run (a few cache lines per row) that the hardware prefetcher finds too late.
    const PREFETCH_CHANNELS: usize = 2;

    /// Asks for the columns `x0 .. x1` of the rows `y0 .. y1` of the plane (`w` wide) starting
    /// at `plane` of `src` to be brought into the L1 cache. A hint: no access is made, and an
    /// address outside `src` would only be a wasted hint.
    #[inline(always)]
    unsafe fn prefetch(
        src: &[f32],
        plane: usize,
        w: usize,
        (y0, y1): (usize, usize),
        (x0, x1): (usize, usize),
    ) {
        for y in y0..y1 {
            let row = plane + y * w;
            let mut at = row + x0;
            while at < row + x1 {
                _mm_prefetch::<_MM_HINT_T0>(src.as_ptr().wrapping_add(at).cast());
                at += 16;
            }
            _mm_prefetch::<_MM_HINT_T0>(src.as_ptr().wrapping_add(row + x1).wrapping_sub(1).cast());
        }
    }

    /// One patch row of a run of tiles ([`RunPlan`]): where its three 16-lane loads start in
    /// the image plane (before it at the left edge: those lanes are masked), and their masks.
    #[derive(Clone, Copy)]
    struct RowPlan {
        start: isize,
        masks: [u16; 3],
    }

    /// What [`transform_input`] reads for a run of tiles, the same for every channel: the
    /// image, the run's lanes in the span, its four patch rows (none in the padding), and
    /// the rows and columns to prefetch.
    struct RunPlan {
        image: usize,
        lanes: u16,
        rows: [Option<RowPlan>; 4],
        prefetch: ((usize, usize), (usize, usize)),
    }

    fn run_plans(geo: &Geometry, parts: &[(usize, usize, usize, usize, usize)]) -> Vec<RunPlan> {
        let (h, w, p) = (geo.h as isize, geo.w, geo.padding as isize);
        parts
            .iter()
            .map(|&(off, image, oy, ox, n)| {
                let (y0, x0) = (oy as isize - p, ox as isize - p);
                // Lane `off + k` of each patch column is tile `k` of this run's: column `j` of
                // lane `l` is the row's value `first + 2l + j`.
                let (first, need) = (x0 - 2 * off as isize, 2 * (off + n) as isize + 2);
                let rows = std::array::from_fn(|i| {
                    let y = y0 + i as isize;
                    (y >= 0 && y < h).then(|| RowPlan {
                        start: y * w as isize + first,
                        masks: std::array::from_fn(|k| {
                            load_mask(w, first + 16 * k as isize, need - 16 * k as isize)
                        }),
                    })
                });
                let pu = geo.padding;
                let prefetch = (
                    (
                        oy.saturating_sub(pu),
                        (oy + 4).saturating_sub(pu).min(geo.h),
                    ),
                    (
                        ox.saturating_sub(pu),
                        (ox + 2 * n + 2).saturating_sub(pu).min(geo.w),
                    ),
                );
                RunPlan {
                    image,
                    lanes: lanes(off, n),
                    rows,
                    prefetch,
                }
            })
            .collect()
    }

    /// What the input transforms of a block of tiles plan once for all channels: the spans, and
    /// per span the 8x8 image it covers whole or its runs' plans.
    struct InputPlan {
        spans: Vec<super::Span>,
        plans: Vec<(Option<usize>, Vec<RunPlan>)>,
    }

    impl InputPlan {
        /// The plan of `tiles`, checking that `x` holds their images.
        fn new(geo: &Geometry, x: &[f32], tiles: std::ops::Range<usize>) -> Self {
            let spans = spans(geo, tiles);
            let images = spans.iter().flat_map(|s| &s.2).map(|p| p.1 + 1).max();
            assert!(
                x.len() >= images.unwrap_or(0) * geo.c * geo.h * geo.w,
                "winograd: input shorter than its tiles' images"
            );
            let plans = spans
                .iter()
                .map(|(_, len, parts)| {
                    match whole_8x8(geo, *len, parts).filter(|_| geo.padding == 1) {
                        Some(image) => (Some(image), Vec::new()),
                        None => (None, run_plans(geo, parts)),
                    }
                })
                .collect();
            Self { spans, plans }
        }

        /// `Bᵀ d B` of channel `ch`'s patches of span `s`'s tiles (lane `l`: the span's tile
        /// `l`; lanes past the span's tiles are zero), position `ξ = 4i + j` at `[ξ]`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn patch(&self, geo: &Geometry, x: &[f32], ch: usize, s: usize) -> [__m512; 16] {
            let (c, plane_len) = (geo.c, geo.h * geo.w);
            let (even, odd) = (index(&EVEN), index(&ODD));
            let (next0, next1) = (index(&NEXT0), index(&NEXT1));
            let (whole, runs) = &self.plans[s];
            let mut d = [[_mm512_setzero_ps(); 4]; 4];
            if let Some(image) = *whole {
                if ch + PREFETCH_CHANNELS < c {
                    let next = (image * c + ch + PREFETCH_CHANNELS) * 64;
                    prefetch(x, next, 64, (0, 1), (0, 64));
                }
                let r = plane_8x8(x, (image * c + ch) * 64);
                for (q, v) in d.as_flattened_mut().iter_mut().enumerate() {
                    *v = gather(&r, &PATCHES_8X8, q);
                }
            }
            for run in runs {
                // What a later channel reads here, asked of memory now.
                if ch + PREFETCH_CHANNELS < c {
                    let next = (run.image * c + ch + PREFETCH_CHANNELS) * plane_len;
                    prefetch(x, next, geo.w, run.prefetch.0, run.prefetch.1);
                }
                let plane = ((run.image * c + ch) * plane_len) as isize;
                for (rows, row) in d.iter_mut().zip(&run.rows) {
                    let Some(row) = row else { continue };
                    // SAFETY: the plane lies in `x` (asserted by `new`); the masks keep each
                    // load's lanes inside its row (`load_mask`).
                    let at = x.as_ptr().wrapping_offset(plane + row.start);
                    let a = _mm512_maskz_loadu_ps(row.masks[0], at);
                    let b = _mm512_maskz_loadu_ps(row.masks[1], at.wrapping_add(16));
                    let c = _mm512_maskz_loadu_ps(row.masks[2], at.wrapping_add(32));
                    let e0 = _mm512_permutex2var_ps(a, even, b);
                    let e1 = _mm512_permutex2var_ps(a, odd, b);
                    let cols = [
                        e0,
                        e1,
                        _mm512_permutex2var_ps(e0, next0, c),
                        _mm512_permutex2var_ps(e1, next1, c),
                    ];
                    for (lane, col) in rows.iter_mut().zip(cols) {
                        *lane = _mm512_mask_mov_ps(*lane, run.lanes, col);
                    }
                }
            }
            let t: [[__m512; 4]; 4] = [
                std::array::from_fn(|j| _mm512_sub_ps(d[0][j], d[2][j])),
                std::array::from_fn(|j| _mm512_add_ps(d[1][j], d[2][j])),
                std::array::from_fn(|j| _mm512_sub_ps(d[2][j], d[1][j])),
                std::array::from_fn(|j| _mm512_sub_ps(d[1][j], d[3][j])),
            ];
            let mut out = [_mm512_setzero_ps(); 16];
            for (i, [a, b, e, f]) in t.into_iter().enumerate() {
                out[4 * i] = _mm512_sub_ps(a, e);
                out[4 * i + 1] = _mm512_add_ps(b, e);
                out[4 * i + 2] = _mm512_sub_ps(e, b);
                out[4 * i + 3] = _mm512_sub_ps(b, f);
            }
            out
        }
    }

    /// [`super::transform_input_any`] in AVX-512.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_input(
        geo: &Geometry,
        x: &[f32],
        tiles: std::ops::Range<usize>,
        v: &mut [f32],
    ) {
        let (c, tb) = (geo.c, tiles.len());
        let vs = stride(c, tb);
        assert!(
            tb == 0 || v.len() >= 15 * vs + c * tb,
            "winograd: transform buffer too short"
        );
        let plan = InputPlan::new(geo, x, tiles);
        for ch in 0..c {
            for (s, &(tl, len, _)) in plan.spans.iter().enumerate() {
                let vals = plan.patch(geo, x, ch, s);
                let mask = ((1u32 << len) - 1) as u16;
                let base = v.as_mut_ptr().add(ch * tb + tl);
                for (xi, val) in vals.into_iter().enumerate() {
                    // SAFETY: `ch · tb + tl + len <= c · tb` and the position's matrix starts
                    // at `ξ · vs <= 15 · vs` (`v`'s length asserted above).
                    let at = base.add(xi * vs);
                    if len == LANES {
                        _mm512_storeu_ps(at, val);
                    } else {
                        _mm512_mask_storeu_ps(at, mask, val);
                    }
                }
            }
        }
    }

    /// [`transform_input`] packed for [`crate::bf16_gemm::gemm_packed`] as it is made: the 16
    /// matrices (C x tiles) `ps` values apart in `vp`, each laid out as `layout` says, the
    /// values rounded to bf16 by the instruction the products' vector packing uses
    /// (`vcvtneps2bf16`: nearest even, subnormal values flushed to zero, where the portable
    /// rounding keeps them), two neighbouring channels to a pair (the even one in the low half;
    /// past the last channel, zero).
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    pub(super) unsafe fn transform_input_packed(
        geo: &Geometry,
        x: &[f32],
        tiles: std::ops::Range<usize>,
        vp: &mut [u32],
        (ps, layout): (usize, RhsLayout),
    ) {
        let (c, tb) = (geo.c, tiles.len());
        assert!(
            layout.k == c && layout.n == tb && (tb == 0 || vp.len() >= 15 * ps + layout.len()),
            "winograd: packed transform buffer too short or not laid out for {c}x{tb}"
        );
        let plan = InputPlan::new(geo, x, tiles);
        // Per span, its lanes' stores: a panel holds whole vectors of 16 columns, so a span
        // falls in one panel or straddles two: (offset of lane 0, lanes) for each part.
        let stores: Vec<[(isize, u16); 2]> = plan
            .spans
            .iter()
            .map(|&(tl, len, _)| {
                let first = (layout.nr - tl % layout.nr).min(len);
                let low = (layout.column(tl) as isize, lanes(0, first));
                let high = match first < len {
                    true => (
                        layout.column(tl + first) as isize - first as isize,
                        lanes(first, len - first),
                    ),
                    false => (0, 0),
                };
                [low, high]
            })
            .collect();
        let zero = [_mm512_setzero_ps(); 16];
        // Pairs of the even channel's value (low half) and the odd one's for positions `2j`
        // (`first`) and `2j + 1` (`second`) from the two channels' bf16 values of both
        // positions side by side (`vcvtne2ps2bf16`: position `2j` in the low 16 values).
        let (first, second) = (index16(&PAIR_LOW), index16(&PAIR_HIGH));
        for p in 0..layout.pairs() {
            for (s, parts) in stores.iter().enumerate() {
                // Each channel's 16 positions rounded to bf16 two to a vector as soon as they
                // are made: 8 registers where the float32 values held 16, so that both
                // channels' values stay in registers (32 float32 vectors spilled to the stack).
                let round = |v: [__m512; 16]| -> [__m512i; 8] {
                    std::array::from_fn(|j| {
                        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
                            v[2 * j + 1],
                            v[2 * j],
                        ))
                    })
                };
                let even = round(plan.patch(geo, x, 2 * p, s));
                let odd = round(match 2 * p + 1 < c {
                    true => plan.patch(geo, x, 2 * p + 1, s),
                    false => zero,
                });
                for (xi, pairs) in (0..8).flat_map(|j| {
                    let (e, o) = (even[j], odd[j]);
                    [
                        (2 * j, _mm512_permutex2var_epi16(e, first, o)),
                        (2 * j + 1, _mm512_permutex2var_epi16(e, second, o)),
                    ]
                }) {
                    let row = (xi * ps + p * layout.nr) as isize;
                    for &(at, mask) in parts {
                        if mask != 0 {
                            // SAFETY: the lanes in `mask` land on columns below `tb` of pair
                            // `p` of matrix `ξ`, inside `vp` (asserted above).
                            let dst = vp.as_mut_ptr().wrapping_offset(row + at);
                            _mm512_mask_storeu_epi32(dst.cast(), mask, pairs);
                        }
                    }
                }
            }
        }
    }

    /// [`super::transform_output_any`] in AVX-512.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_output(
        geo: &Geometry,
        cout: usize,
        m: &[f32],
        tiles: std::ops::Range<usize>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let (oh, ow) = (geo.oh, geo.ow);
        let tb = tiles.len();
        let spans = spans(geo, tiles);
        let ms = stride(cout, tb);
        assert!(
            tb == 0 || m.len() >= 15 * ms + cout * tb,
            "winograd: product buffer too short"
        );
        let images = spans.iter().flat_map(|s| &s.2).map(|p| p.1 + 1).max();
        assert!(
            out.len() >= images.unwrap_or(0) * cout * oh * ow,
            "winograd: output shorter than its tiles' images"
        );
        // Per span, the same for every channel: the 8x8 image it covers whole, or the masked
        // stores of its two output rows per run, as (image, row of the tiles, where the low
        // and the high vector's lane 0 falls in the image's plane, their masks): each run's
        // tiles are lanes `off .. off + n`, their outputs the low vector's values from
        // `2·off` and the high one's (tiles 8-15) from `2·off - 16`.
        type Store = (usize, usize, [(isize, u16); 2]);
        let plans: Vec<(Option<usize>, Vec<Store>)> = spans
            .iter()
            .map(|(_, len, parts)| match whole_8x8(geo, *len, parts) {
                Some(image) => (Some(image), Vec::new()),
                None => {
                    let mut stores = Vec::new();
                    for i in 0..2 {
                        for &(off, image, oy, ox, n) in parts {
                            if oy + i >= oh {
                                continue;
                            }
                            let (row, count) =
                                (((oy + i) * ow + ox) as isize, (2 * n).min(ow - ox));
                            let at = |first: isize| {
                                let lo = first.clamp(0, 16);
                                let hi = (first + count as isize).clamp(lo, 16);
                                let mask = match lo < hi {
                                    true => lanes(lo as usize, (hi - lo) as usize),
                                    false => 0,
                                };
                                (row - first, mask)
                            };
                            let first = 2 * off as isize;
                            stores.push((image, i, [at(first), at(first - 16)]));
                        }
                    }
                    (None, stores)
                }
            })
            .collect();
        let (low_idx, high_idx) = (index(&LOW), index(&HIGH));
        for o in 0..cout {
            for ((tl, len, _), (whole, stores)) in spans.iter().zip(&plans) {
                let (tl, len) = (*tl, *len);
                let mask = ((1u32 << len) - 1) as u16;
                // SAFETY: `o · tb + tl + len <= cout · tb` and the matrices start at
                // `xi · ms <= 15 · ms` (`m`'s length asserted above).
                let base = m.as_ptr().add(o * tb + tl);
                let mv: [__m512; 16] =
                    std::array::from_fn(|xi| _mm512_maskz_loadu_ps(mask, base.add(xi * ms)));
                let r0: [__m512; 4] = std::array::from_fn(|j| {
                    _mm512_add_ps(_mm512_add_ps(mv[j], mv[4 + j]), mv[8 + j])
                });
                let r1: [__m512; 4] = std::array::from_fn(|j| {
                    _mm512_sub_ps(_mm512_sub_ps(mv[4 + j], mv[8 + j]), mv[12 + j])
                });
                if let Some(image) = *whole {
                    let [(l0, r0), (l1, r1)] = [r0, r1].map(|[a, b, e, f]| {
                        let left = _mm512_add_ps(_mm512_add_ps(a, b), e);
                        (left, _mm512_sub_ps(_mm512_sub_ps(b, e), f))
                    });
                    let plane = &mut out[(image * cout + o) * 64..(image * cout + o + 1) * 64];
                    for (k, idx) in SCATTER_8X8.iter().enumerate() {
                        let i = index(idx);
                        let top = _mm512_permutex2var_ps(l0, i, r0);
                        let bottom = _mm512_permutex2var_ps(l1, i, r1);
                        let v = _mm512_mask_blend_ps(0xff00, top, bottom);
                        _mm512_storeu_ps(plane.as_mut_ptr().cast::<f32>().add(16 * k), v);
                    }
                    continue;
                }
                // Each tile's left and right value side by side: tiles 0-7, then 8-15.
                let rows: [[__m512; 2]; 2] = [r0, r1].map(|[a, b, e, f]| {
                    let left = _mm512_add_ps(_mm512_add_ps(a, b), e);
                    let right = _mm512_sub_ps(_mm512_sub_ps(b, e), f);
                    [
                        _mm512_permutex2var_ps(left, low_idx, right),
                        _mm512_permutex2var_ps(left, high_idx, right),
                    ]
                });
                for &(image, i, halves) in stores {
                    let plane = ((image * cout + o) * oh * ow) as isize;
                    for (v, (at, mask)) in rows[i].iter().zip(halves) {
                        if mask != 0 {
                            // SAFETY: the plane lies in `out` (asserted above); the mask
                            // keeps the lanes on the run's outputs in its row.
                            let dst = out.as_mut_ptr().cast::<f32>().wrapping_offset(plane + at);
                            _mm512_mask_storeu_ps(dst, mask, *v);
                        }
                    }
                }
            }
        }
    }

    /// [`super::transform_output_grad_any`] in AVX-512.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_output_grad(
        geo: &Geometry,
        cout: usize,
        g: &[f32],
        tiles: std::ops::Range<usize>,
        dm: &mut [f32],
    ) {
        let tb = tiles.len();
        let ms = stride(cout, tb);
        assert!(
            tb == 0 || dm.len() >= 15 * ms + cout * tb,
            "winograd: transform buffer too short"
        );
        let dm = dm.as_mut_ptr();
        output_grad_tiles(geo, cout, g, tiles, |o, tl, len, xi, val| {
            // SAFETY: `o · tb + tl + len <= cout · tb` and the position's matrix starts at
            // `ξ · ms <= 15 · ms` (`dm`'s length asserted above).
            let at = dm.add(o * tb + tl + xi * ms);
            if len == LANES {
                _mm512_storeu_ps(at, val);
            } else {
                _mm512_mask_storeu_ps(at, ((1u32 << len) - 1) as u16, val);
            }
        });
    }

    /// [`transform_output_grad`] written as the kernel gradient's products take their left
    /// operands on AMX: position `ξ`'s (O x tiles) matrix into `out[ξ]`, rounded to bf16
    /// ([`PackedLhs::amx_values`], laid out as [`PackedLhs::amx_index`] says: each span's
    /// tiles are side by side there, one masked store), where the float32 path writes `dm`
    /// and the products then pack it.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW, VL and BF16; every span of `tiles` ([`spans`]) lies inside one
    /// group of 32 tiles (`tl % 32 + len <= 32`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn transform_output_grad_packed(
        geo: &Geometry,
        cout: usize,
        g: &[f32],
        tiles: std::ops::Range<usize>,
        out: &mut [&mut [u16]],
    ) {
        let tb = tiles.len();
        let len = cout.div_ceil(32) * tb.div_ceil(32) * 32 * 32;
        assert!(
            out.len() == 16 && out.iter().all(|v| v.len() == len),
            "winograd: packed gradient operands of the wrong size"
        );
        let out: Vec<*mut u16> = out.iter_mut().map(|v| v.as_mut_ptr()).collect();
        output_grad_tiles(geo, cout, g, tiles, |o, tl, n, xi, val| {
            let bits: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(val));
            // SAFETY: tiles `tl..tl + n` of row `o < cout` lie side by side inside one group
            // (the caller's promise), below `len` (asserted above).
            let at = out[xi].add(PackedLhs::amx_index(tb, o, tl));
            _mm256_mask_storeu_epi16(at.cast(), ((1u32 << n) - 1) as u16, bits);
        });
    }

    /// The body of [`transform_output_grad`]: `store(o, tl, len, ξ, value)` for each output
    /// channel `o`, span of `len` tiles from the block's tile `tl` (lane `l`: tile `tl + l`;
    /// lanes past `len` are zero) and position `ξ = 4i + j`.
    #[inline(always)]
    unsafe fn output_grad_tiles(
        geo: &Geometry,
        cout: usize,
        g: &[f32],
        tiles: std::ops::Range<usize>,
        mut store: impl FnMut(usize, usize, usize, usize, __m512),
    ) {
        let (oh, ow) = (geo.oh, geo.ow);
        let spans = spans(geo, tiles);
        let images = spans.iter().flat_map(|s| &s.2).map(|p| p.1 + 1).max();
        assert!(
            g.len() >= images.unwrap_or(0) * cout * oh * ow,
            "winograd: gradient shorter than its tiles' images"
        );
        // Per span, the same for every channel: the 8x8 image it covers whole, or per run
        // (image, its lanes, per output row in the image: where the two loads start in the
        // plane and their masks (`load_mask`); lane `off + k` is the run's tile `k`, the rows
        // to prefetch).
        type Run = (
            usize,
            u16,
            [Option<(isize, [u16; 2])>; 2],
            (usize, usize),
            (usize, usize),
        );
        let plans: Vec<(Option<usize>, Vec<Run>)> = spans
            .iter()
            .map(|(_, len, parts)| match whole_8x8(geo, *len, parts) {
                Some(image) => (Some(image), Vec::new()),
                None => {
                    let runs = parts.iter().map(|&(off, image, oy, ox, n)| {
                        let x = ox as isize - 2 * off as isize;
                        let count = 2 * (off + n) as isize;
                        let rows = std::array::from_fn(|i| {
                            (oy + i < oh).then(|| {
                                let masks =
                                    [load_mask(ow, x, count), load_mask(ow, x + 16, count - 16)];
                                (((oy + i) * ow) as isize + x, masks)
                            })
                        });
                        let prefetch = ((oy, (oy + 2).min(oh)), (ox, (ox + 2 * n).min(ow)));
                        (image, lanes(off, n), rows, prefetch.0, prefetch.1)
                    });
                    (None, runs.collect())
                }
            })
            .collect();
        let (even, odd) = (index(&EVEN), index(&ODD));
        for o in 0..cout {
            for ((tl, len, _), (whole, runs)) in spans.iter().zip(&plans) {
                let (tl, len) = (*tl, *len);
                let mut y = [[_mm512_setzero_ps(); 2]; 2];
                if let Some(image) = *whole {
                    if o + PREFETCH_CHANNELS < cout {
                        let next = (image * cout + o + PREFETCH_CHANNELS) * 64;
                        prefetch(g, next, 64, (0, 1), (0, 64));
                    }
                    let r = plane_8x8(g, (image * cout + o) * 64);
                    for (q, v) in y.as_flattened_mut().iter_mut().enumerate() {
                        *v = gather(&r, &OUTPUTS_8X8, q);
                    }
                }
                for &(image, mask, rows, prows, pcols) in runs {
                    if o + PREFETCH_CHANNELS < cout {
                        let next = (image * cout + o + PREFETCH_CHANNELS) * oh * ow;
                        prefetch(g, next, ow, prows, pcols);
                    }
                    let plane = ((image * cout + o) * oh * ow) as isize;
                    for (row, plan) in y.iter_mut().zip(rows) {
                        let Some((at, [m0, m1])) = plan else { continue };
                        // SAFETY: the plane lies in `g` (asserted above); the masks keep each
                        // load's lanes inside its row (`load_mask`).
                        let p = g.as_ptr().wrapping_offset(plane + at);
                        let a = _mm512_maskz_loadu_ps(m0, p);
                        let b = _mm512_maskz_loadu_ps(m1, p.wrapping_add(16));
                        row[0] =
                            _mm512_mask_mov_ps(row[0], mask, _mm512_permutex2var_ps(a, even, b));
                        row[1] =
                            _mm512_mask_mov_ps(row[1], mask, _mm512_permutex2var_ps(a, odd, b));
                    }
                }
                let t: [[__m512; 4]; 2] = std::array::from_fn(|i| {
                    let [a, b] = y[i];
                    [a, _mm512_add_ps(a, b), _mm512_sub_ps(a, b), neg(b)]
                });
                for (j, (&p, &q)) in t[0].iter().zip(&t[1]).enumerate() {
                    let rows = [p, _mm512_add_ps(p, q), _mm512_sub_ps(p, q), neg(q)];
                    for (i, val) in rows.into_iter().enumerate() {
                        store(o, tl, len, i * 4 + j, val);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_values::values;

    /// Off: [`packs_input`] says no, and bf16 products pack float32 transforms themselves
    /// (for every thread: the products run on the pool's; the two give the same bits, so other
    /// tests running meanwhile are unaffected).
    pub(super) static PACKED_INPUT: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(true);

    /// Off: [`transform_output_grad_amx`] says no, and the kernel gradient's bf16 products pack
    /// float32 transformed gradients themselves (the same bits either way).
    pub(super) static PACKED_GRAD: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(true);

    /// A convolution to test: its geometry, `n` images of input, the transformed kernel of
    /// `cout` output channels, and a name for messages.
    fn case(
        (n, c, cout, h, w, p): (usize, usize, usize, usize, usize, usize),
    ) -> candle_core::Result<(Geometry, Vec<f32>, Vec<f32>, String)> {
        let geo = Geometry::new(c, h, w, 3, 3, 1, p)?;
        let x = values(n * c * h * w, (c + h) as u32);
        let u = transform_kernel(&values(cout * c * 9, cout as u32), cout, c);
        Ok((geo, x, u, format!("n{n} {c}->{cout} {h}x{w} p{p}")))
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// The buffers each thread keeps between calls ([`TRANSFORMS`]) leave no trace: with
    /// every thread's buffer full of NaN from an earlier call, the forward and the kernel
    /// gradient give the bits they gave with fresh buffers, in float32 and bf16 (the kernel
    /// gradient's first block then writes its sums rather than adding to zeros), batches
    /// larger and smaller than the pool.
    #[test]
    fn kept_buffers_leave_no_trace() -> candle_core::Result<()> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool");
        let fill = |v: Vec<f32>| {
            pool.broadcast(|_| TRANSFORMS.set(v.clone()));
            TRANSFORMS.set(v);
        };
        for shape in [(3, 32, 48, 12, 12, 1), (1, 40, 24, 9, 7, 1)] {
            for bf16 in [false, true] {
                if bf16 && !bf16_gemm::available() {
                    continue;
                }
                let (n, cout) = (shape.0, shape.2);
                let (geo, x, u, name) = case(shape)?;
                let g = values(n * cout * geo.oh * geo.ow, 11);
                let run = || {
                    pool.install(|| {
                        let y = convolved(&geo, cout, &x, &u, n, bf16);
                        (y, weight_grad(&geo, cout, &x, &g, n, bf16))
                    })
                };
                fill(Vec::new());
                let (y, dw) = run();
                fill(vec![f32::NAN; 1 << 20]);
                let (y2, dw2) = run();
                assert!(y.iter().chain(&dw).all(|v| v.is_finite()), "{name}");
                assert_eq!(bits(&y), bits(&y2), "{name} bf16 {bf16}: forward");
                assert_eq!(bits(&dw), bits(&dw2), "{name} bf16 {bf16}: kernel gradient");
            }
        }
        Ok(())
    }

    /// The kernel transform gives `G g Gᵀ` of each channel pair in its place (against float64
    /// matrix products), and reads a flipped kernel's taps in place as the transform of the
    /// flipped copy, with the same bits.
    #[test]
    fn kernel_transform_matches_the_whole_product() {
        const G: [[f64; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        // The last across the pool (PAR_KERNEL pairs and more).
        for (cout, cin) in [
            (1, 1),
            (3, 5),
            (64, 64),
            (17, 130),
            (0, 4),
            (4, 0),
            (130, 128),
        ] {
            let w = values(cout * cin * 9, (cout + 7 * cin) as u32);
            let u = transform_kernel(&w, cout, cin);
            for (o, c, i, j) in (0..cout).flat_map(|o| {
                (0..cin).flat_map(move |c| (0..16).map(move |x| (o, c, x / 4, x % 4)))
            }) {
                let g = |a: usize, b: usize| f64::from(w[(o * cin + c) * 9 + a * 3 + b]);
                let want: f64 = (0..3)
                    .flat_map(|a| (0..3).map(move |b| (a, b)))
                    .map(|(a, b)| G[i][a] * g(a, b) * G[j][b])
                    .sum();
                let got = f64::from(u[((i * 4 + j) * cout + o) * cin + c]);
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{o} {c} {i} {j}"
                );
            }
            let mut flipped = vec![0f32; cin * cout * 9];
            for o in 0..cout {
                for c in 0..cin {
                    for t in 0..9 {
                        flipped[(c * cout + o) * 9 + 8 - t] = w[(o * cin + c) * 9 + t];
                    }
                }
            }
            let in_place = transform_kernel_of(cin, cout, |c, o| {
                std::array::from_fn(|t| w[(o * cin + c) * 9 + 8 - t])
            });
            assert_eq!(
                bits(&in_place),
                bits(&transform_kernel(&flipped, cin, cout)),
                "flipped {cout}->{cin}"
            );
        }
    }

    /// The bf16 convolution with the input transform packing the products' operands gives the
    /// bits of the one whose products pack float32 transforms (for values of normal size: the
    /// products' scalar packing of a panel's last columns keeps subnormal values that the
    /// vector rounding flushes): odd channel counts (a pair half empty), blocks shorter than a
    /// panel and straddling panels, several blocks per share, more than 256 channels.
    #[test]
    fn packed_input_transform_gives_the_same_bits() -> candle_core::Result<()> {
        if !bf16_gemm::available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return Ok(());
        }
        for shape in [
            (2, 16, 16, 32, 32, 1),
            (3, 17, 16, 7, 9, 1),
            (2, 33, 24, 28, 28, 1),
            (4, 64, 64, 8, 8, 1),
            (2, 256, 16, 6, 6, 0),
            (2, 16, 300, 6, 6, 2),
            // More than 256 channels: blocks of 16 tiles or fewer (panels of 16 columns).
            (1, 300, 16, 4, 4, 1),
            // One image per share: blocks of 25 tiles (panels of 32), then 11 (of 16).
            (1, 16, 300, 12, 12, 1),
        ] {
            let (n, c, cout) = (shape.0, shape.1, shape.2);
            let (geo, x, u, name) = case(shape)?;
            assert!(packs_input(c, 16).is_some(), "{name}: not packed");
            let packed = convolved(&geo, cout, &x, &u, n, true);
            PACKED_INPUT.store(false, std::sync::atomic::Ordering::Relaxed);
            let plain = convolved(&geo, cout, &x, &u, n, true);
            PACKED_INPUT.store(true, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(bits(&packed), bits(&plain), "{name}");
        }
        Ok(())
    }

    /// The bf16 kernel gradient with the transformed output gradients written packed for AMX
    /// gives the bits of the one whose products pack float32 transforms (for values of normal
    /// size, see [`transform_output_grad_amx`]): tile rows of 16, 8, 4 (whole 8x8 images) and
    /// 2, output channels short of whole 32s (padding rows), blocks that end inside a group of
    /// 32 tiles, several blocks per share (the packed operands reused, the last block
    /// shorter), and tile rows of odd length (spans that straddle two groups, where a share
    /// holds more than one image or block: the float32 path).
    #[test]
    fn packed_gradient_transform_gives_the_same_bits() -> candle_core::Result<()> {
        if !bf16_gemm::amx_available() {
            eprintln!("skipped: this CPU (or process) has no AMX");
            return Ok(());
        }
        for shape in [
            (2, 16, 32, 32, 32, 1),
            (4, 24, 48, 16, 16, 1),
            (8, 64, 64, 8, 8, 1),
            (16, 32, 20, 4, 4, 1),
            (3, 16, 16, 4, 4, 1),
            (3, 16, 16, 10, 10, 1),
            (1, 16, 40, 12, 12, 0),
            // 1,024 tiles: blocks of 680 (packed, ending inside a group of 32), then 344
            // (misaligned spans: the float32 path).
            (1, 16, 32, 64, 64, 1),
            // Rows of 32 tiles in blocks of 512, all packed: two whole blocks (the operands
            // reused as they are), then a whole block and a shorter one (made anew).
            (1, 32, 32, 64, 64, 1),
            (1, 32, 32, 48, 64, 1),
        ] {
            let (n, cout) = (shape.0, shape.2);
            let (geo, x, _, name) = case(shape)?;
            let grad = values(n * cout * geo.oh * geo.ow, (cout + 3) as u32);
            let packed = weight_grad(&geo, cout, &x, &grad, n, true);
            PACKED_GRAD.store(false, std::sync::atomic::Ordering::Relaxed);
            let plain = weight_grad(&geo, cout, &x, &grad, n, true);
            PACKED_GRAD.store(true, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(bits(&packed), bits(&plain), "{name}");
        }
        // The packed path is taken where the spans allow (rows of 16 tiles), not where one
        // straddles two groups (rows of 5 tiles: spans of 15 from tile 30).
        let (geo, _, _, _) = case((1, 16, 32, 32, 32, 1))?;
        let grad = values(32 * 32 * 32, 5);
        let mut lhs: Vec<PackedLhs> = (0..16).map(|_| PackedLhs::default()).collect();
        assert!(transform_output_grad_amx(&geo, 32, &grad, 0..64, &mut lhs));
        let (geo, _, _, _) = case((1, 16, 32, 10, 10, 1))?;
        assert!(!transform_output_grad_amx(&geo, 32, &grad, 0..50, &mut lhs));
        Ok(())
    }

    /// The packed output-gradient transform's layout, on any CPU with AVX512-BF16 (AMX not
    /// needed): every value is the bf16 rounding of the float32 transform's, at
    /// [`PackedLhs::amx_index`]; every other value (rows past O, columns past the block's
    /// tiles) is left as it was. Blocks at the start, inside and at the end of the images, of
    /// whole and partial groups of 32 tiles, O short of and at whole 32s.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn packed_gradient_transform_layout() -> candle_core::Result<()> {
        if !(bf16_gemm::available() && std::arch::is_x86_feature_detected!("avx512vl")) {
            eprintln!("skipped: this CPU lacks AVX512-BF16 or AVX-512VL");
            return Ok(());
        }
        const UNTOUCHED: u16 = 0xdead;
        // (images, O, OH = OW, tiles): the images' tiles are whole rows of 32, 16, 8, 4 or 2.
        for (n, cout, size, tiles) in [
            (2, 32, 32, 0..512),
            (2, 40, 32, 32..288),
            (3, 20, 16, 0..192),
            (1, 32, 64, 512..1024),
            (8, 48, 8, 16..128),
            (16, 20, 4, 4..64),
            (5, 33, 16, 64..80),
        ] {
            let geo = Geometry::new(16, size, size, 3, 3, 1, 1)?;
            let name = format!("n{n} O{cout} {size}x{size} tiles {tiles:?}");
            let g = values(n * cout * geo.oh * geo.ow, (cout + size) as u32);
            let tb = tiles.len();
            assert!(
                spans(&geo, tiles.clone())
                    .iter()
                    .all(|&(tl, len, _)| tl % 32 + len <= 32),
                "{name}: a span straddles two groups"
            );
            let ms = stride(cout, tb);
            let mut dm = vec![0f32; 16 * ms];
            transform_output_grad(&geo, cout, &g, tiles.clone(), &mut dm);
            let len = cout.div_ceil(32) * tb.div_ceil(32) * 32 * 32;
            let mut out: Vec<Vec<u16>> = (0..16).map(|_| vec![UNTOUCHED; len]).collect();
            let mut views: Vec<&mut [u16]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
            // SAFETY: the CPU has AVX-512F, BW, VL and BF16 and every span lies inside one
            // group of 32 tiles (both checked above).
            unsafe { simd::transform_output_grad_packed(&geo, cout, &g, tiles, &mut views) };
            for (xi, packed) in out.iter().enumerate() {
                let mut expected = vec![UNTOUCHED; len];
                for o in 0..cout {
                    for t in 0..tb {
                        let v = dm[xi * ms + o * tb + t];
                        expected[PackedLhs::amx_index(tb, o, t)] = bf16_gemm::bf16_bits(v) as u16;
                    }
                }
                assert_eq!(packed, &expected, "{name} position {xi}");
            }
        }
        Ok(())
    }

    /// `convolve` writes every value of its output (`convolved` relies on it to skip the
    /// zero-filling pass): into a buffer of NaNs, odd and even sizes, every padding, more
    /// images than one thread's share, float32 and bf16; the same bits as `convolved`.
    #[test]
    fn convolve_writes_every_output_value() -> candle_core::Result<()> {
        for shape in [
            (3, 16, 16, 5, 7, 1),
            (2, 16, 17, 8, 8, 1),
            (5, 17, 16, 9, 6, 0),
            (2, 16, 16, 4, 4, 2),
            (4, 16, 16, 3, 3, 1),
        ] {
            let (n, cout) = (shape.0, shape.2);
            let (geo, x, u, name) = case(shape)?;
            for bf16 in [false, crate::bf16_gemm::available()] {
                let len = n * cout * geo.oh * geo.ow;
                let mut out = vec![MaybeUninit::new(f32::NAN); len];
                convolve(&geo, cout, &x, &u, n, &mut out, bf16);
                // SAFETY: every value was initialised (NaN, or written by `convolve`).
                let out: Vec<f32> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
                let name = format!("{name} bf16 {bf16}");
                assert!(
                    out.iter().all(|v| v.is_finite()),
                    "{name}: values left unwritten"
                );
                let again = convolved(&geo, cout, &x, &u, n, bf16);
                assert_eq!(bits(&out), bits(&again), "{name}");
            }
        }
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    /// Geometries (C, H, W, padding) on which the vector transforms are tested against the
    /// portable ones: image sizes below, at and above one run of tiles, paddings 0 to 2.
    const VECTOR_CASES: [(usize, usize, usize, usize); 13] = [
        (3, 5, 7, 1),
        (2, 32, 32, 1),
        (2, 36, 35, 2),
        (1, 4, 40, 0),
        (2, 2, 2, 1),
        // Rows of 4, 8, 2 and 3 tiles: spans across tile rows and images.
        (2, 8, 8, 1),
        (2, 16, 16, 1),
        (3, 4, 4, 1),
        (2, 6, 6, 1),
        (1, 9, 5, 0),
        // 8x8 outputs from other inputs (the AVX-512 output transforms' 8x8 path, not the
        // input's).
        (2, 6, 6, 2),
        (2, 10, 10, 0),
        // Rows of 7 tiles (the MNIST CNN's 14x14 maps): AVX2 spans of 7.
        (2, 14, 14, 1),
    ];

    #[cfg(target_arch = "x86_64")]
    /// A set of vector transforms: input, output gradient, output.
    type Transforms = (
        unsafe fn(&Geometry, &[f32], std::ops::Range<usize>, &mut [f32]),
        unsafe fn(&Geometry, usize, &[f32], std::ops::Range<usize>, &mut [f32]),
        unsafe fn(&Geometry, usize, &[f32], std::ops::Range<usize>, &mut [MaybeUninit<f32>]),
    );

    #[cfg(target_arch = "x86_64")]
    /// The transforms given equal the portable ones bit for bit on [`VECTOR_CASES`], for
    /// blocks that start and end inside a tile row, writing nothing past the buffer lengths
    /// they assert (a guard after each stays as it was); `also(geo, x, range)` checks more on
    /// each.
    ///
    /// # Safety
    /// The CPU has what `vector`'s functions need.
    unsafe fn equal_the_portable_ones(
        name: &str,
        (input, output_grad, output): Transforms,
        also: impl Fn(&Geometry, &[f32], std::ops::Range<usize>),
    ) -> candle_core::Result<()> {
        for (c, h, w, p) in VECTOR_CASES {
            let (n, cout) = (2, 3);
            let geo = Geometry::new(c, h, w, 3, 3, 1, p)?;
            let tiles = n * geo.oh.div_ceil(2) * geo.ow.div_ceil(2);
            let x = values(n * c * h * w, (h * w) as u32);
            let g = values(n * cout * geo.oh * geo.ow, 7);
            for range in [0..tiles, 1..tiles.min(23), tiles / 3..tiles] {
                let tb = range.len();
                let at = format!("{name} {h}x{w} p{p} {range:?}");
                // The 16 matrices of `rows` x `tb` values, not the spare values after each
                // (which the AVX2 transforms may fill).
                let matrices = |v: &[f32], rows: usize| -> Vec<f32> {
                    let s = stride(rows, tb);
                    (0..16)
                        .flat_map(|xi| v[xi * s..][..rows * tb].to_vec())
                        .collect()
                };
                // The shortest buffer the vector transforms take (8 values past the last
                // matrix), then a guard of 16.
                const GUARD: f32 = -1234.5;
                let shortest = |rows: usize| 15 * stride(rows, tb) + rows * tb + 8;
                let guarded = |v: &[f32], rows: usize| {
                    v[shortest(rows)..]
                        .iter()
                        .all(|g| g.to_bits() == GUARD.to_bits())
                };
                let len = shortest(c) + 16;
                let (mut a, mut b) = (vec![0f32; len], vec![GUARD; len]);
                transform_input_any(&geo, &x, range.clone(), &mut a);
                input(&geo, &x, range.clone(), &mut b[..shortest(c)]);
                assert_eq!(matrices(&a, c), matrices(&b, c), "input {at}");
                assert!(guarded(&b, c), "input {at}: written past its buffer");
                also(&geo, &x, range.clone());
                let len = shortest(cout) + 16;
                let (mut a, mut b) = (vec![0f32; len], vec![GUARD; len]);
                transform_output_grad_any(&geo, cout, &g, range.clone(), &mut a);
                output_grad(&geo, cout, &g, range.clone(), &mut b[..shortest(cout)]);
                assert_eq!(matrices(&a, cout), matrices(&b, cout), "output grad {at}");
                assert!(
                    guarded(&b, cout),
                    "output grad {at}: written past its buffer"
                );
                let m = values(16 * stride(cout, tb), tb as u32);
                let unset = MaybeUninit::new(f32::NAN);
                let (mut a, mut b) = (vec![unset; g.len()], vec![unset; g.len()]);
                let m = &m[..shortest(cout)];
                transform_output_any(&geo, cout, m, range.clone(), &mut a);
                output(&geo, cout, m, range.clone(), &mut b);
                // SAFETY: every value was initialised (NaN, or written by the transforms).
                let bits = |v: &[MaybeUninit<f32>]| -> Vec<u32> {
                    v.iter()
                        .map(|v| unsafe { v.assume_init() }.to_bits())
                        .collect()
                };
                assert_eq!(bits(&a), bits(&b), "output {at}");
            }
        }
        Ok(())
    }

    /// The AVX-512 transforms against the portable ones, bit for bit, and the packed input
    /// transform (AVX512-BF16) against the portable one packed.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx512_transforms_equal_the_portable_ones() -> candle_core::Result<()> {
        if !avx512() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return Ok(());
        }
        let packed = |geo: &Geometry, x: &[f32], range: std::ops::Range<usize>| {
            let Some(layout) = RhsLayout::new(geo.c, range.len()) else {
                return;
            };
            let at = format!("{}x{} p{} {range:?}", geo.h, geo.w, geo.padding);
            let ps = packed_stride(layout);
            let (mut a, mut b) = (vec![0u32; 16 * ps], vec![0u32; 16 * ps]);
            transform_input_packed_any(geo, x, range.clone(), &mut a, (ps, layout));
            assert!(a.iter().any(|&v| v != 0), "packed input {at}");
            if bf16_gemm::available() {
                // SAFETY: the CPU has AVX-512F and AVX512-BF16.
                unsafe { simd::transform_input_packed(geo, x, range, &mut b, (ps, layout)) };
                assert_eq!(a, b, "packed input {at}");
            }
        };
        let vector: Transforms = (
            simd::transform_input,
            simd::transform_output_grad,
            simd::transform_output,
        );
        // SAFETY: the CPU has AVX-512F.
        unsafe { equal_the_portable_ones("avx512", vector, packed) }
    }

    /// The AVX2 transforms against the portable ones, bit for bit (on any CPU with AVX2: those
    /// with AVX-512 run the AVX-512 ones, tested above).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_transforms_equal_the_portable_ones() -> candle_core::Result<()> {
        if !crate::avx2::available() {
            eprintln!("skipped: this CPU lacks AVX2");
            return Ok(());
        }
        let vector: Transforms = (
            avx2::transform_input,
            avx2::transform_output_grad,
            avx2::transform_output,
        );
        // SAFETY: the CPU has AVX2.
        unsafe { equal_the_portable_ones("avx2", vector, |_, _, _| {}) }
    }
}
