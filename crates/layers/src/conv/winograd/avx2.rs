//! Winograd's transforms in AVX2 for CPUs without AVX-512 (AMD Zen 1 to 3, Intel's client
//! cores and its servers before Skylake-SP): 8 tiles per vector, where the AVX-512 ones
//! ([`super::simd`]) take 16 and the portable ones ([`super::transform_input_any`] and its
//! siblings) leave the compiler baseline x86-64's 4-lane vectors and scalar gathers.
//!
//! A span of up to 8 consecutive tiles ([`super::spans_of`]) fills a vector's lanes; its runs
//! (a tile row's part) are blended in where a span crosses a tile row. The patches' stride-2
//! columns come from row loads split into their even and odd values (`vshufps`, `vpermpd`).
//! Loads from the image planes (the input, the output's gradient) are masked (`vmaskmovps`) to
//! the row's values, so the padding reads as zero; stores into the output plane are masked
//! where a row ends, so nothing outside the run's outputs is written there. The (16, C, tiles)
//! buffers are written and read as whole vectors, a span of fewer than 8 tiles too: the lanes
//! past it fall on values written later in the same call or on the spare values after each
//! matrix ([`super::stride`]), and the buffers must hold 8 values past the last matrix. The
//! same operations in the same order as the portable versions: the results are identical bit
//! for bit (tested).

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::{spans_of, stride, Geometry};
use crate::avx2::{even_odd, interleave, mask, LANES};

/// The lanes of an 8-lane load from column `x` of a row of `w` values that lie inside the row.
#[inline(always)]
unsafe fn row_mask(w: usize, x: isize) -> __m256i {
    mask(|k| (0..w as isize).contains(&(x + k)))
}

/// The lanes `off .. off + n`, as a blend's mask.
#[inline(always)]
unsafe fn lanes(off: usize, n: usize) -> __m256 {
    _mm256_castsi256_ps(mask(|k| (off as isize..(off + n) as isize).contains(&k)))
}

/// `-v`, by its sign bit (as the portable `-v`).
#[inline(always)]
unsafe fn neg(v: __m256) -> __m256 {
    _mm256_xor_ps(v, _mm256_set1_ps(-0.0))
}

/// A span's run of tiles as its loads see it: its image, its lanes in the span, and per
/// row (of the input's patches or the gradient's outputs; none past the image's edge) where
/// lane 0's first value lies in the image's plane and the loads' masks.
struct Run<const R: usize, const L: usize> {
    image: usize,
    lanes: __m256,
    rows: [Option<(isize, [__m256i; L])>; R],
}

/// Per span of a block's tiles (first tile, tiles), its runs: the same for every channel.
type Plan<const R: usize, const L: usize> = Vec<(usize, usize, Vec<Run<R, L>>)>;

/// [`super::transform_input_any`] in AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transform_input(
    geo: &Geometry,
    x: &[f32],
    tiles: std::ops::Range<usize>,
    v: &mut [f32],
) {
    let (c, tb) = (geo.c, tiles.len());
    let (h, w, p) = (geo.h as isize, geo.w, geo.padding as isize);
    let plane_len = geo.h * geo.w;
    let vs = stride(c, tb);
    assert!(
        tb == 0 || v.len() >= 15 * vs + c * tb + LANES,
        "winograd: transform buffer too short"
    );
    let spans = spans_of(geo, tiles, LANES);
    let images = spans.iter().flat_map(|s| &s.2).map(|p| p.1 + 1).max();
    assert!(
        x.len() >= images.unwrap_or(0) * c * plane_len,
        "winograd: input shorter than its tiles' images"
    );
    // Lane `off + k` of each patch column `j` is the run's tile `k`: the row's value at
    // column `first + 2·(off + k) + j`, with `first = x0 - 2·off`; columns 0 and 1 from the
    // loads at `first` and `first + 8`, 2 and 3 from those at `first + 2` and `first + 10`.
    let plan: Plan<4, 4> = spans
        .into_iter()
        .map(|(tl, len, parts)| {
            let runs = parts.iter().map(|&(off, image, oy, ox, n)| {
                let (y0, x0) = (oy as isize - p, ox as isize - p);
                let first = x0 - 2 * off as isize;
                let rows = std::array::from_fn(|i| {
                    let y = y0 + i as isize;
                    (0..h).contains(&y).then(|| {
                        let masks = [0, 8, 2, 10].map(|d| row_mask(w, first + d));
                        (y * w as isize + first, masks)
                    })
                });
                Run {
                    image,
                    lanes: lanes(off, n),
                    rows,
                }
            });
            (tl, len, runs.collect())
        })
        .collect();
    for ch in 0..c {
        for (tl, _, runs) in &plan {
            let mut d = [[_mm256_setzero_ps(); 4]; 4];
            let whole = runs.len() == 1;
            for run in runs {
                let plane = ((run.image * c + ch) * plane_len) as isize;
                for (cols, row) in d.iter_mut().zip(&run.rows) {
                    let Some((start, [m0, m1, m2, m3])) = *row else {
                        continue;
                    };
                    // SAFETY: the plane lies in `x` (asserted above); the masks keep each
                    // load's lanes inside its row.
                    let at = x.as_ptr().wrapping_offset(plane + start);
                    let (e0, e1) = even_odd(
                        _mm256_maskload_ps(at, m0),
                        _mm256_maskload_ps(at.wrapping_add(8), m1),
                    );
                    let (e2, e3) = even_odd(
                        _mm256_maskload_ps(at.wrapping_add(2), m2),
                        _mm256_maskload_ps(at.wrapping_add(10), m3),
                    );
                    for (lane, col) in cols.iter_mut().zip([e0, e1, e2, e3]) {
                        *lane = match whole {
                            true => col,
                            false => _mm256_blendv_ps(*lane, col, run.lanes),
                        };
                    }
                }
            }
            // Bᵀ d B, as `super::input_tile`.
            let t: [[__m256; 4]; 4] = [
                std::array::from_fn(|j| _mm256_sub_ps(d[0][j], d[2][j])),
                std::array::from_fn(|j| _mm256_add_ps(d[1][j], d[2][j])),
                std::array::from_fn(|j| _mm256_sub_ps(d[2][j], d[1][j])),
                std::array::from_fn(|j| _mm256_sub_ps(d[1][j], d[3][j])),
            ];
            let base = v.as_mut_ptr().add(ch * tb + tl);
            for (i, [a, b, e, f]) in t.into_iter().enumerate() {
                let vals = [
                    _mm256_sub_ps(a, e),
                    _mm256_add_ps(b, e),
                    _mm256_sub_ps(e, b),
                    _mm256_sub_ps(b, f),
                ];
                for (j, val) in vals.into_iter().enumerate() {
                    // SAFETY: `ch · tb + tl + 8 <= c · tb + 8` and the position's matrix
                    // starts at `ξ · vs <= 15 · vs` (`v`'s length asserted above). A span of
                    // fewer than 8 tiles writes whole vectors too (a masked store costs
                    // more): the lanes past its tiles land on the next span's, the next
                    // channel's first ones or, past the last, the matrix's spare values,
                    // all written (or unused) after this.
                    _mm256_storeu_ps(base.add((4 * i + j) * vs), val);
                }
            }
        }
    }
}

/// [`super::transform_output_any`] in AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transform_output(
    geo: &Geometry,
    cout: usize,
    m: &[f32],
    tiles: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
) {
    let (oh, ow) = (geo.oh, geo.ow);
    let tb = tiles.len();
    let spans = spans_of(geo, tiles, LANES);
    let ms = stride(cout, tb);
    assert!(
        tb == 0 || m.len() >= 15 * ms + cout * tb + LANES,
        "winograd: product buffer too short"
    );
    let images = spans.iter().flat_map(|s| &s.2).map(|p| p.1 + 1).max();
    assert!(
        out.len() >= images.unwrap_or(0) * cout * oh * ow,
        "winograd: output shorter than its tiles' images"
    );
    // Per span, the stores of its runs' two output rows: (image, row of the tiles, for the
    // vectors of tiles 0-3 and 4-7 (each tile's left and right value side by side) where their
    // lane 0 falls in the image's plane, the mask of the lanes to store and whether that is
    // all of them; none where it is none). A run's tiles are lanes `off .. off + n`: its
    // outputs the values `2·off .. 2·off + count` of the two vectors, `count` cropped at the
    // right edge.
    type Store = (usize, usize, [Option<(isize, __m256i, bool)>; 2]);
    let plans: Vec<(usize, usize, Vec<Store>)> = spans
        .into_iter()
        .map(|(tl, len, parts)| {
            let mut stores = Vec::new();
            for i in 0..2 {
                for &(off, image, oy, ox, n) in &parts {
                    if oy + i >= oh {
                        continue;
                    }
                    let (row, count) = (((oy + i) * ow + ox) as isize, (2 * n).min(ow - ox));
                    let half = |k: isize| {
                        let first = 2 * off as isize - 8 * k;
                        let inside = |l: isize| (first..first + count as isize).contains(&l);
                        let full = (0..8).all(inside);
                        (0..8)
                            .any(inside)
                            .then(|| (row - first, mask(inside), full))
                    };
                    stores.push((image, i, [half(0), half(1)]));
                }
            }
            (tl, len, stores)
        })
        .collect();
    for o in 0..cout {
        for (tl, _, stores) in &plans {
            // SAFETY: `o · tb + tl + 8 <= cout · tb + 8` and the matrices start at
            // `xi · ms <= 15 · ms` (`m`'s length asserted above); the lanes past a span's
            // tiles are not stored.
            let base = m.as_ptr().add(o * tb + tl);
            let mv: [__m256; 16] = std::array::from_fn(|xi| _mm256_loadu_ps(base.add(xi * ms)));
            // Aᵀ M: 2x4, then (Aᵀ M) A: 2x2, as `super::transform_output_any`.
            let r0: [__m256; 4] =
                std::array::from_fn(|j| _mm256_add_ps(_mm256_add_ps(mv[j], mv[4 + j]), mv[8 + j]));
            let r1: [__m256; 4] = std::array::from_fn(|j| {
                _mm256_sub_ps(_mm256_sub_ps(mv[4 + j], mv[8 + j]), mv[12 + j])
            });
            let rows: [[__m256; 2]; 2] = [r0, r1].map(|[a, b, e, f]| {
                let left = _mm256_add_ps(_mm256_add_ps(a, b), e);
                let right = _mm256_sub_ps(_mm256_sub_ps(b, e), f);
                // Each tile's left and right value side by side: tiles 0-3, then 4-7.
                interleave(left, right)
            });
            for &(image, i, halves) in stores {
                let plane = ((image * cout + o) * oh * ow) as isize;
                for (v, half) in rows[i].iter().zip(halves) {
                    let Some((at, mask, full)) = half else {
                        continue;
                    };
                    // SAFETY: the plane lies in `out` (asserted above); the mask keeps the
                    // lanes on the run's outputs in its row.
                    let dst = out.as_mut_ptr().cast::<f32>().wrapping_offset(plane + at);
                    match full {
                        true => _mm256_storeu_ps(dst, *v),
                        false => _mm256_maskstore_ps(dst, mask, *v),
                    }
                }
            }
        }
    }
}

/// [`super::transform_output_grad_any`] in AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transform_output_grad(
    geo: &Geometry,
    cout: usize,
    g: &[f32],
    tiles: std::ops::Range<usize>,
    dm: &mut [f32],
) {
    let (oh, ow) = (geo.oh, geo.ow);
    let tb = tiles.len();
    let ms = stride(cout, tb);
    assert!(
        tb == 0 || dm.len() >= 15 * ms + cout * tb + LANES,
        "winograd: transform buffer too short"
    );
    let spans = spans_of(geo, tiles, LANES);
    let images = spans.iter().flat_map(|s| &s.2).map(|p| p.1 + 1).max();
    assert!(
        g.len() >= images.unwrap_or(0) * cout * oh * ow,
        "winograd: gradient shorter than its tiles' images"
    );
    // Lane `off + k` is the run's tile `k`: its left and right gradient the row's values at
    // columns `x + 2·(off + k)` and the next, `x = ox - 2·off`, from the loads at `x` and
    // `x + 8`.
    let plan: Plan<2, 2> = spans
        .into_iter()
        .map(|(tl, len, parts)| {
            let runs = parts.iter().map(|&(off, image, oy, ox, n)| {
                let x = ox as isize - 2 * off as isize;
                let rows = std::array::from_fn(|i| {
                    (oy + i < oh).then(|| {
                        let masks = [row_mask(ow, x), row_mask(ow, x + 8)];
                        (((oy + i) * ow) as isize + x, masks)
                    })
                });
                Run {
                    image,
                    lanes: lanes(off, n),
                    rows,
                }
            });
            (tl, len, runs.collect())
        })
        .collect();
    for o in 0..cout {
        for (tl, _, runs) in &plan {
            let mut y = [[_mm256_setzero_ps(); 2]; 2];
            let whole = runs.len() == 1;
            for run in runs {
                let plane = ((run.image * cout + o) * oh * ow) as isize;
                for (row, plan) in y.iter_mut().zip(&run.rows) {
                    let Some((at, [m0, m1])) = *plan else {
                        continue;
                    };
                    // SAFETY: the plane lies in `g` (asserted above); the masks keep each
                    // load's lanes inside its row.
                    let p = g.as_ptr().wrapping_offset(plane + at);
                    let (a, b) = even_odd(
                        _mm256_maskload_ps(p, m0),
                        _mm256_maskload_ps(p.wrapping_add(8), m1),
                    );
                    for (lane, val) in row.iter_mut().zip([a, b]) {
                        *lane = match whole {
                            true => val,
                            false => _mm256_blendv_ps(*lane, val, run.lanes),
                        };
                    }
                }
            }
            // dY Aᵀ: 2x4, then A (dY Aᵀ): 4x4, as `super::transform_output_grad_any`.
            let t: [[__m256; 4]; 2] = std::array::from_fn(|i| {
                let [a, b] = y[i];
                [a, _mm256_add_ps(a, b), _mm256_sub_ps(a, b), neg(b)]
            });
            let base = dm.as_mut_ptr().add(o * tb + tl);
            for (j, (&p, &q)) in t[0].iter().zip(&t[1]).enumerate() {
                let rows = [p, _mm256_add_ps(p, q), _mm256_sub_ps(p, q), neg(q)];
                for (i, val) in rows.into_iter().enumerate() {
                    // SAFETY: `o · tb + tl + 8 <= cout · tb + 8` and the position's matrix
                    // starts at `ξ · ms <= 15 · ms` (`dm`'s length asserted above); whole
                    // vectors, as in `transform_input`.
                    _mm256_storeu_ps(base.add((i * 4 + j) * ms), val);
                }
            }
        }
    }
}
