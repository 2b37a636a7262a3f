//! The matrix products every CPU kernel of this crate calls: float32 through the `gemm` crate,
//! bf16 through [`bf16_gemm`], both counted in [`crate::profile`] as GEMM time and flops.

use crate::bf16_gemm::{self, PackedLhs, View};
use crate::profile::{time, Part};

/// `dst := dst (if accumulate) + lhs · rhs`, each given as (pointer, row stride, column stride).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: (&mut [f32], usize, usize),
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    accumulate: bool,
    threads: usize,
) {
    let (d, drs, dcs) = dst;
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
    // SAFETY: the assertion above keeps every index the strides reach inside the slices, and
    // `dst` is borrowed mutably, so it aliases neither operand.
    crate::profile::time(Part::Gemm, || unsafe {
        gemm::gemm(
            m,
            n,
            k,
            d.as_mut_ptr(),
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
