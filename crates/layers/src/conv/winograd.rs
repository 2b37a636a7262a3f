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

use rayon::prelude::*;

use super::geometry::Geometry;
use crate::profile::{time, Part};

/// Channels from which F(2x2, 3x3) beats the direct convolution: below them the transforms
/// cost more than the products save.
const MIN_CHANNELS: usize = 16;

/// Tiles transformed and multiplied at a time, for C input and O output channels. Where the
/// transformed kernel (16 x O x C) fits half of a core's L2 cache, blocks whose transformed
/// input and products (16 x (C + O) per tile) fit the other half, so that nothing of a block
/// leaves L2; otherwise a block long enough that reading the kernel costs little next to the
/// products.
fn tiles_per_block(c: usize, cout: usize) -> usize {
    const HALF_L2: usize = 512 << 10;
    if 64 * cout * c <= HALF_L2 {
        (HALF_L2 / (64 * (c + cout))).clamp(16, 1024)
    } else {
        128
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
    let mut u = vec![0f32; 16 * cout * cin];
    for o in 0..cout {
        for c in 0..cin {
            let g = &w[(o * cin + c) * 9..(o * cin + c + 1) * 9];
            // G g: 4x3.
            let mut t = [[0f32; 3]; 4];
            for j in 0..3 {
                let (a, b, e) = (g[j], g[3 + j], g[6 + j]);
                t[0][j] = a;
                t[1][j] = 0.5 * (a + b + e);
                t[2][j] = 0.5 * (a - b + e);
                t[3][j] = e;
            }
            // (G g) Gᵀ: 4x4.
            for (i, &[a, b, e]) in t.iter().enumerate() {
                let row = [a, 0.5 * (a + b + e), 0.5 * (a - b + e), e];
                for (j, v) in row.into_iter().enumerate() {
                    u[((i * 4 + j) * cout + o) * cin + c] = v;
                }
            }
        }
    }
    u
}

/// `out` (N, O, OH, OW) := the convolution of `x` (N, C, H, W) by the kernel whose transform is
/// `u` ([`transform_kernel`]), for the geometry `geo` (3x3, stride 1). `gemm(dims, dst, lhs,
/// rhs, threads)` overwrites `dst` with the product `lhs · rhs`, each given as (values, row
/// stride, column stride).
pub(super) fn convolve(
    geo: &Geometry,
    cout: usize,
    x: &[f32],
    u: &[f32],
    n: usize,
    out: &mut [f32],
    gemm: impl Fn(
            (usize, usize, usize),
            (&mut [f32], usize, usize),
            (&[f32], usize, usize),
            (&[f32], usize, usize),
            usize,
        ) + Sync,
) {
    let (c, img_len, out_len) = (geo.c, geo.c * geo.h * geo.w, cout * geo.oh * geo.ow);
    let threads = rayon::current_num_threads().max(1);
    // A fixed share of the images per thread; a batch smaller than the pool runs as one
    // share with threaded products.
    let (share, gemm_threads) = if n >= threads {
        (n.div_ceil(threads), 1)
    } else {
        (n.max(1), threads)
    };
    let tiles_per_image = geo.oh.div_ceil(2) * geo.ow.div_ceil(2);
    let block = tiles_per_block(c, cout);
    out.par_chunks_mut(share * out_len)
        .zip(x.par_chunks(share * img_len))
        .for_each(|(out, x)| {
            let images = out.len() / out_len.max(1);
            let tiles = images * tiles_per_image;
            let mut v = vec![0f32; 16 * c * block.min(tiles)];
            let mut m = vec![0f32; 16 * cout * block.min(tiles)];
            for first in (0..tiles).step_by(block) {
                let range = first..(first + block).min(tiles);
                let tb = range.len();
                time(Part::Im2col, || {
                    transform_input(geo, x, range.clone(), &mut v[..16 * c * tb])
                });
                for xi in 0..16 {
                    gemm(
                        (cout, tb, c),
                        (&mut m[xi * cout * tb..(xi + 1) * cout * tb], tb, 1),
                        (&u[xi * cout * c..(xi + 1) * cout * c], c, 1),
                        (&v[xi * c * tb..(xi + 1) * c * tb], tb, 1),
                        gemm_threads,
                    );
                }
                time(Part::Im2col, || {
                    transform_output(geo, cout, &m[..16 * cout * tb], range, out)
                });
            }
        });
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
    let tw = geo.ow.div_ceil(2);
    let mut out = Vec::new();
    let mut t = tiles.start;
    while t < tiles.end {
        let (image, oy, ox) = tile(geo, t);
        let len = (tw - ox / 2).min(tiles.end - t).min(LANES);
        out.push((t - tiles.start, image, oy, ox, len));
        t += len;
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

/// [`transform_input_any`], vectorised for AVX-512 where the CPU has it (the workspace builds
/// for baseline x86-64, whose vectors are 4 lanes wide).
fn transform_input(geo: &Geometry, x: &[f32], tiles: std::ops::Range<usize>, v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F (checked at run time).
        return unsafe { transform_input_avx512(geo, x, tiles, v) };
    }
    transform_input_any(geo, x, tiles, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn transform_input_avx512(
    geo: &Geometry,
    x: &[f32],
    tiles: std::ops::Range<usize>,
    v: &mut [f32],
) {
    transform_input_any(geo, x, tiles, v)
}

/// [`transform_output_any`], vectorised for AVX-512 where the CPU has it.
fn transform_output(
    geo: &Geometry,
    cout: usize,
    m: &[f32],
    tiles: std::ops::Range<usize>,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F (checked at run time).
        return unsafe { transform_output_avx512(geo, cout, m, tiles, out) };
    }
    transform_output_any(geo, cout, m, tiles, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn transform_output_avx512(
    geo: &Geometry,
    cout: usize,
    m: &[f32],
    tiles: std::ops::Range<usize>,
    out: &mut [f32],
) {
    transform_output_any(geo, cout, m, tiles, out)
}

/// Whether this CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

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
                let at = (xi * c + ch) * tb + tl;
                copy_lanes(&mut v[at..at + len], vals);
            }
        }
    }
}

/// The output tiles `tiles` of `out` (images, O, OH, OW) := `Aᵀ M A` of `m` (16, O, tiles),
/// cropped at the bottom and right edges.
#[inline(always)]
fn transform_output_any(
    geo: &Geometry,
    cout: usize,
    m: &[f32],
    tiles: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let (oh, ow) = (geo.oh, geo.ow);
    let tb = tiles.len();
    let runs = runs(geo, tiles);
    for o in 0..cout {
        for &(tl, image, oy, ox, len) in &runs {
            let mut mv = [[0f32; LANES]; 16];
            for (xi, lanes) in mv.iter_mut().enumerate() {
                let at = (xi * cout + o) * tb + tl;
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
                        pair[0] = left[l];
                        pair[1] = right[l];
                    }
                } else {
                    for l in 0..len {
                        row[ox + 2 * l] = left[l];
                        if ox + 2 * l + 1 < ow {
                            row[ox + 2 * l + 1] = right[l];
                        }
                    }
                }
            }
        }
    }
}
