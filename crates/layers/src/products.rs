//! The matrix products every CPU kernel of this crate calls: float32 through the `gemm` crate,
//! bf16 through [`bf16_gemm`], both counted in [`crate::profile`] as GEMM time and flops.

use std::mem::MaybeUninit;

use crate::bf16_gemm::{self, PackedLhs, View};
use crate::profile::{time, Part};

/// `dst := dst (if accumulate) + lhs · rhs`, each given as (values, row stride, column stride).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    dims: (usize, usize, usize),
    dst: (&mut [f32], usize, usize),
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    accumulate: bool,
    threads: usize,
) {
    let (d, drs, dcs) = dst;
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the product writes only sums into it.
    let d = unsafe { std::slice::from_raw_parts_mut(d.as_mut_ptr().cast(), d.len()) };
    gemm_into((d, drs, dcs), dims, lhs, rhs, accumulate, threads)
}

/// [`gemm`] into `dst`, whose values in the product's reach must be initialised (the `gemm`
/// crate reads an edge tile's destination even when not accumulating).
fn gemm_into(
    (d, drs, dcs): (&mut [MaybeUninit<f32>], usize, usize),
    (m, n, k): (usize, usize, usize),
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    accumulate: bool,
    threads: usize,
) {
    let (l, lrs, lcs) = lhs;
    let (r, rrs, rcs) = rhs;
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    assert!(
        m * n == 0
            || (last(m, n, drs, dcs) < d.len()
                && last(m, k, lrs, lcs) < l.len()
                && last(k, n, rrs, rcs) < r.len()),
        "gemm operands out of bounds"
    );
    crate::profile::gemm_flops(2 * m * n * k);
    let parallelism = match threads {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: the assertion above keeps every index the strides reach inside the slices;
    // `dst` is borrowed mutably, so it aliases neither operand; its values in reach are
    // initialised (the callers' promise), which the crate may read.
    crate::profile::time(Part::Gemm, || unsafe {
        gemm::gemm(
            m,
            n,
            k,
            d.as_mut_ptr().cast::<f32>(),
            dcs as isize,
            drs as isize,
            accumulate,
            l.as_ptr(),
            lcs as isize,
            lrs as isize,
            r.as_ptr(),
            rcs as isize,
            rrs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    })
}

/// [`bf16_gemm::gemm`], counted as GEMM time.
pub(crate) fn bf16_product(
    (m, n, k): (usize, usize, usize),
    dst: (&mut [f32], usize, usize),
    lhs: &PackedLhs,
    rhs: View,
    accumulate: bool,
    threads: usize,
    packed: &mut bf16_gemm::Scratch,
) {
    crate::profile::gemm_flops(2 * m * n * k);
    time(Part::Gemm, || {
        bf16_gemm::gemm((m, n, k), dst, lhs, rhs, accumulate, threads, packed)
    })
}

/// [`bf16_gemm::gemm_packed`] (`dst :=` the product, not accumulated), counted as GEMM time.
pub(crate) fn bf16_product_packed(
    (m, n, k): (usize, usize, usize),
    dst: (&mut [f32], usize, usize),
    lhs: &PackedLhs,
    rhs: (&[u32], bf16_gemm::RhsLayout),
    threads: usize,
    scratch: &mut bf16_gemm::Scratch,
) {
    crate::profile::gemm_flops(2 * m * n * k);
    time(Part::Gemm, || {
        bf16_gemm::gemm_packed((m, n, k), dst, lhs, rhs, false, threads, scratch)
    })
}

/// [`bf16_gemm::gemm_uninit_produced`] (`dst :=` the product), counted as GEMM time (the
/// producer's gathers with it, as the products' own packing is).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn bf16_product_produced(
    (m, n, k): (usize, usize, usize),
    dst: (&mut [MaybeUninit<f32>], usize, usize),
    lhs: &PackedLhs,
    rhs: &dyn bf16_gemm::PackRhs,
    threads: usize,
    scratch: &mut bf16_gemm::Scratch,
) {
    crate::profile::gemm_flops(2 * m * n * k);
    time(Part::Gemm, || {
        bf16_gemm::gemm_uninit_produced((m, n, k), dst, lhs, rhs, threads, scratch)
    })
}

/// [`bf16_gemm::gemm_uninit`] (`dst :=` the product, never read first), counted as GEMM time.
pub(crate) fn bf16_product_uninit(
    (m, n, k): (usize, usize, usize),
    dst: (&mut [MaybeUninit<f32>], usize, usize),
    lhs: &PackedLhs,
    rhs: View,
    threads: usize,
    scratch: &mut bf16_gemm::Scratch,
) {
    crate::profile::gemm_flops(2 * m * n * k);
    time(Part::Gemm, || {
        bf16_gemm::gemm_uninit((m, n, k), dst, lhs, rhs, threads, scratch)
    })
}

/// The left operand of a product used many times: float32 as given, or packed once to bf16.
pub(crate) enum Lhs<'a> {
    F32(View<'a>),
    Bf16(PackedLhs),
}

impl<'a> Lhs<'a> {
    /// `a` (M x K), packed to bf16 when `bf16`.
    pub(crate) fn new(bf16: bool, (m, k): (usize, usize), a: View<'a>) -> Self {
        match bf16 {
            true => Lhs::Bf16(PackedLhs::new(m, k, a)),
            false => Lhs::F32(a),
        }
    }

    /// `dst :=` `self · rhs` into values that may be uninitialised: afterwards every value in
    /// the product's reach (`dst[i·rs + j·cs]`, `i < M`, `j < N`) is. bf16 writes them
    /// directly; float32 zeroes them first (the `gemm` crate reads edge tiles' destination).
    pub(crate) fn product_uninit(
        &self,
        (m, n, k): (usize, usize, usize),
        (d, rs, cs): (&mut [MaybeUninit<f32>], usize, usize),
        rhs: View,
        threads: usize,
        packed: &mut bf16_gemm::Scratch,
    ) {
        match self {
            Lhs::F32(lhs) => {
                for i in 0..m {
                    match cs {
                        1 => d[i * rs..i * rs + n].fill(MaybeUninit::new(0.0)),
                        _ => (0..n).for_each(|j| d[i * rs + j * cs] = MaybeUninit::new(0.0)),
                    }
                }
                gemm_into((d, rs, cs), (m, n, k), *lhs, rhs, false, threads)
            }
            Lhs::Bf16(lhs) => {
                crate::profile::gemm_flops(2 * m * n * k);
                time(Part::Gemm, || {
                    bf16_gemm::gemm_uninit((m, n, k), (d, rs, cs), lhs, rhs, threads, packed)
                })
            }
        }
    }

    /// `dst := dst (if accumulate) + self · rhs`.
    pub(crate) fn product(
        &self,
        dims: (usize, usize, usize),
        dst: (&mut [f32], usize, usize),
        rhs: View,
        accumulate: bool,
        threads: usize,
        packed: &mut bf16_gemm::Scratch,
    ) {
        match self {
            Lhs::F32(lhs) => gemm(dims, dst, *lhs, rhs, accumulate, threads),
            Lhs::Bf16(lhs) => bf16_product(dims, dst, lhs, rhs, accumulate, threads, packed),
        }
    }
}
