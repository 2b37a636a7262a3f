//! A convolution's columns (`im2col`) gathered from the image straight into the bf16 pairs
//! that the products take, block by block as a product asks for them
//! ([`crate::bf16_gemm::PackRhs`]), instead of written out as float32 columns and packed after.
//!
//! The image-by-image forward of a convolution that is neither Winograd's nor pointwise (a
//! strided 3x3, a 1x1 with stride 2, a 5x5; a 7x7 stem whose input is tracked, the others
//! going to [`super::direct`] on AVX-512 or AVX2) multiplies the kernel (O x C·KH·KW) by the columns
//! of a block of output rows. Before, [`Geometry::im2col_t_rows_strided`] wrote those columns
//! in float32 (`C·KH·KW` rows of the block's positions, a few hundred KB in L2) and the
//! product read them back to round and pair them. Here each pair of rows is gathered with
//! masked vector loads (and, for stride 2, one permute to the even values), rounded by
//! `vcvtneps2bf16` as the products' own packing rounds, and stored in its panel: the same
//! bits, one pass fewer. (The gradients still make float32 columns, with the same planned
//! loads: [`Im2colPacked::write_f32`].)

use std::arch::x86_64::*;
use std::ops::Range;

use super::geometry::Geometry;
use crate::avx512::{index, load_mask, EVEN};
use crate::bf16_gemm::{self, Lines, PackRhs};

/// The columns of output rows `rows` of one image `img` (C, H, W): `C·KH·KW` rows, row
/// `(ch·KH + ki)·KW + kj` the tap `(ki, kj)` of channel `ch`, by `rows.len()·OW` positions,
/// as [`Geometry::im2col_t_rows`] writes them.
pub(super) struct Im2colPacked<'a> {
    geo: &'a Geometry,
    img: &'a [f32],
    rows: Range<usize>,
}

/// A run of at most 16 positions inside one output row: its first column in the block, its
/// length, the output row and column of its first position.
#[derive(Clone, Copy)]
struct Chunk {
    col: usize,
    len: usize,
    oy: usize,
    ox: usize,
}

/// Where one tap's values for a [`Chunk`] lie in a channel's plane (`None`: a padding row, all
/// zero), and the masks of the one or two 16-lane loads from there (lanes outside the image
/// read as zero).
#[derive(Clone, Copy)]
struct Load {
    at: Option<isize>,
    masks: [u16; 2],
}

/// Off: [`Im2colPacked::applies`] says no, and the convolutions pack float32 columns (for
/// every thread; the same bits either way, so tests running meanwhile are unaffected).
impl Load {
    /// The run's 16 values (zero past it and outside the image) from the channel's `plane`:
    /// one masked load, or for stride 2 (`two`) two and the even values' permute (`even`, the
    /// [`EVEN`] index).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `plane` is a channel's plane of the image the load was planned
    /// for ([`Im2colPacked::loads`]), so the masked lanes lie inside its rows.
    #[inline(always)]
    unsafe fn values(self, plane: *const f32, (two, even): (bool, __m512i)) -> __m512 {
        let Some(at) = self.at else {
            return _mm512_setzero_ps();
        };
        let src = plane.wrapping_offset(at);
        let a = _mm512_maskz_loadu_ps(self.masks[0], src);
        match two {
            false => a,
            true => {
                let b = _mm512_maskz_loadu_ps(self.masks[1], src.wrapping_add(16));
                _mm512_permutex2var_ps(a, even, b)
            }
        }
    }
}

#[cfg(test)]
pub(super) static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

impl<'a> Im2colPacked<'a> {
    /// Whether [`Self::new`] gathers the columns of `geo`: this CPU has AVX-512F and
    /// AVX512-BF16 and the stride is 1 or 2.
    /// (In tests, not while [`ENABLED`] is off.)
    pub(super) fn applies(geo: &Geometry) -> bool {
        #[cfg(test)]
        if !ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        Self::can(geo)
    }

    fn can(geo: &Geometry) -> bool {
        geo.stride <= 2 && crate::avx512::available() && bf16_gemm::available()
    }

    /// The packed columns of `rows` of `img`, where this CPU can gather them (`None`
    /// otherwise, or where the rows or the image do not fit the geometry).
    pub(super) fn new(geo: &'a Geometry, img: &'a [f32], rows: Range<usize>) -> Option<Self> {
        let fits = rows.end <= geo.oh && img.len() >= geo.c * geo.h * geo.w;
        (fits && Self::can(geo)).then_some(Self { geo, img, rows })
    }

    /// The runs of positions `g0 .. g0 + gn` of the block, each inside one output row.
    fn chunks(&self, (g0, gn): (usize, usize)) -> Vec<Chunk> {
        let ow = self.geo.ow;
        let mut out = Vec::with_capacity(gn / 16 + gn / ow.max(1) + 2);
        let mut j = g0;
        while j < g0 + gn {
            let (oy, ox) = (self.rows.start + j / ow, j % ow);
            let len = (ow - ox).min(16).min(g0 + gn - j);
            out.push(Chunk {
                col: j - g0,
                len,
                oy,
                ox,
            });
            j += len;
        }
        out
    }

    /// Each tap's [`Load`] for each chunk, tap by tap (`[tap · chunks + chunk]`): the same for
    /// every channel.
    fn loads(&self, chunks: &[Chunk]) -> Vec<Load> {
        let g = self.geo;
        let (s, p, w) = (g.stride as isize, g.padding as isize, g.w);
        let mut out = Vec::with_capacity(g.kh * g.kw * chunks.len());
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                for c in chunks {
                    let y = (c.oy * g.stride + ki) as isize - p;
                    let x = c.ox as isize * s + kj as isize - p;
                    // Values from `x` on that the run reads: every `s`-th of the next.
                    let need = s * (c.len as isize - 1) + 1;
                    out.push(match y >= 0 && y < g.h as isize {
                        true => Load {
                            at: Some(y * w as isize + x),
                            masks: [load_mask(w, x, need), load_mask(w, x + 16, need - 16)],
                        },
                        false => Load {
                            at: None,
                            masks: [0, 0],
                        },
                    });
                }
            }
        }
        out
    }
}

impl PackRhs for Im2colPacked<'_> {
    fn dims(&self) -> (usize, usize) {
        (self.geo.row_len(), self.rows.len() * self.geo.ow)
    }

    fn pack(
        &self,
        (p0, kc, depth): (usize, usize, usize),
        (g0, gn): (usize, usize),
        nr: usize,
        out: &mut Lines,
    ) {
        let g = self.geo;
        let k = g.c * g.kh * g.kw;
        assert!(
            2 * (p0 + kc) <= k + 1
                && kc <= depth
                && g0 + gn <= self.rows.len() * g.ow
                && nr > 0
                && nr.is_multiple_of(16),
            "im2col: pairs {p0}+{kc} (depth {depth}) or columns {g0}+{gn} outside {k} rows of {} positions",
            self.rows.len() * g.ow
        );
        let panels = gn.div_ceil(nr);
        // Not zero-filled first: the pairs below `kc` of the columns below `gn` are all
        // written by the gathers, the rest here; grown only (as `pack_rhs`).
        let len = panels * depth * nr;
        if out.len() < len {
            out.resize(len);
        }
        let out = &mut out[..len];
        let tail = gn - (panels.max(1) - 1) * nr;
        for (panel, block) in out.chunks_exact_mut(depth * nr).enumerate() {
            block[kc * nr..].fill(0);
            if panel + 1 == panels && tail < nr {
                block[..kc * nr]
                    .chunks_exact_mut(nr)
                    .for_each(|p| p[tail..].fill(0));
            }
        }
        let chunks = self.chunks((g0, gn));
        let loads = self.loads(&chunks);
        // SAFETY: the CPU has AVX-512F and AVX512-BF16 (`new`). The loads' masks keep every
        // lane read inside its row of the image (`loads`, `load_mask`); a load's address may
        // lie before the image or past a row (formed with `wrapping_offset`, never
        // dereferenced whole), which is sound because masked-off lanes touch no memory. The
        // image holds all C planes (`new`). The stores land in `out`: pairs below
        // `kc <= depth`, columns below `gn`, and with `nr >= 16` (asserted) a run of at most
        // 16 columns reaches one panel or the start of the next, which exists because the
        // run's last column lies below `gn`.
        unsafe { self.gather(p0, kc, (depth, nr), &chunks, &loads, out) };
    }
}

impl Im2colPacked<'_> {
    /// The float32 columns of these rows, as [`Geometry::im2col_t_rows_strided`] writes them
    /// (row `r` at `out[r · stride ..]`, `stride` at least the rows' positions), with the same
    /// masked loads as the packed gathers, planned once for all channels instead of row by row
    /// (whose per-row work dominated on small maps: 16, 8 and 4 positions a row). The same
    /// values, copied.
    pub(super) fn write_f32(&self, out: &mut [f32], stride: usize) {
        let g = self.geo;
        let (k, len) = (g.row_len(), self.rows.len() * g.ow);
        assert!(
            len <= stride && (k == 0 || out.len() >= (k - 1) * stride + len),
            "im2col: {k} rows of {len} positions {stride} apart do not fit {} values",
            out.len()
        );
        let chunks = self.chunks((0, len));
        let loads = self.loads(&chunks);
        // SAFETY: as in `pack`: AVX-512F (`new`), loads inside the image's rows; every store
        // lands at `r · stride + c.col + lane` with lanes below `c.len`, inside `out`
        // (asserted above).
        unsafe { self.write_f32_with(out, stride, &chunks, &loads) }
    }

    /// [`Self::write_f32`]'s loop.
    ///
    /// # Safety
    /// As [`Self::write_f32`]: AVX-512F, `loads` made by [`Self::loads`] for `chunks`, `out`
    /// long enough.
    #[target_feature(enable = "avx512f")]
    unsafe fn write_f32_with(
        &self,
        out: &mut [f32],
        stride: usize,
        chunks: &[Chunk],
        loads: &[Load],
    ) {
        let g = self.geo;
        let (taps, plane) = (g.kh * g.kw, g.h * g.w);
        let even = index(&EVEN);
        let two = g.stride == 2;
        for r in 0..g.row_len() {
            let (ch, tap) = (r / taps, r % taps);
            let loads = &loads[tap * chunks.len()..(tap + 1) * chunks.len()];
            let src = self.img.as_ptr().wrapping_add(ch * plane);
            let row = out.as_mut_ptr().add(r * stride);
            for (c, &load) in chunks.iter().zip(loads) {
                let v = load.values(src, (two, even));
                _mm512_mask_storeu_ps(row.add(c.col), crate::avx512::first(c.len), v);
            }
        }
    }

    /// The pairs `p0 .. p0 + kc` of every chunk into `out` (panels of `nr` columns, `depth`
    /// pairs deep).
    ///
    /// # Safety
    /// As in [`PackRhs::pack`] above: AVX-512F and AVX512-BF16, `loads` made by
    /// [`Self::loads`] for `chunks`, `out` long enough for the chunks' columns.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn gather(
        &self,
        p0: usize,
        kc: usize,
        (depth, nr): (usize, usize),
        chunks: &[Chunk],
        loads: &[Load],
        out: &mut [u32],
    ) {
        // Where each chunk's lanes go in pair 0 (pair `p` lies `p·nr` further on): the lanes
        // in its panel, and those past the panel's end at the start of the next.
        let stores: Vec<[(isize, u16); 2]> = chunks
            .iter()
            .map(|c| {
                let (panel, off) = (c.col / nr, c.col % nr);
                let first = (nr - off).min(c.len);
                let low = (
                    (panel * depth * nr + off) as isize,
                    crate::avx512::first(first),
                );
                let high = match first < c.len {
                    true => (
                        ((panel + 1) * depth * nr) as isize - first as isize,
                        crate::avx512::first(c.len) & !crate::avx512::first(first),
                    ),
                    false => (0, 0),
                };
                [low, high]
            })
            .collect();
        match self.geo.stride {
            2 => self.gather_with::<true>(p0, kc, nr, loads, &stores, out),
            _ => self.gather_with::<false>(p0, kc, nr, loads, &stores, out),
        }
    }

    /// [`Self::gather`] for stride 2 (`TWO`) or 1, the chunks' stores planned.
    ///
    /// # Safety
    /// As [`Self::gather`], `stores` inside `out` for every pair below `kc`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn gather_with<const TWO: bool>(
        &self,
        p0: usize,
        kc: usize,
        nr: usize,
        loads: &[Load],
        stores: &[[(isize, u16); 2]],
        out: &mut [u32],
    ) {
        let g = self.geo;
        let (taps, plane, k) = (g.kh * g.kw, g.h * g.w, g.c * g.kh * g.kw);
        let chunks = stores.len();
        let even = index(&EVEN);
        // Row `r`'s loads and where its channel's plane starts (`None` past the last row).
        let row = |r: usize| {
            (r < k).then(|| {
                let (ch, tap) = (r / taps, r % taps);
                let loads = &loads[tap * chunks..(tap + 1) * chunks];
                (loads, self.img.as_ptr().wrapping_add(ch * plane))
            })
        };
        // Chunk `c`'s values of a row.
        let values = |row: Option<(&[Load], *const f32)>, c: usize| -> __m512 {
            let Some((loads, plane)) = row else {
                return _mm512_setzero_ps();
            };
            loads[c].values(plane, (TWO, even))
        };
        let dst = out.as_mut_ptr();
        for p in 0..kc {
            let r = 2 * (p0 + p);
            let (even_row, odd_row) = (row(r), row(r + 1));
            for (c, parts) in stores.iter().enumerate() {
                let lo = _mm512_cvtneps_pbh(values(even_row, c));
                let hi = _mm512_cvtneps_pbh(values(odd_row, c));
                let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(lo));
                let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(hi));
                let pairs = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
                for &(at, mask) in parts {
                    if mask != 0 {
                        let to = dst.wrapping_offset(at + (p * nr) as isize);
                        _mm512_mask_storeu_epi32(to.cast(), mask, pairs);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (channels, height, width, kernel, stride, padding): strides 1 and 2, paddings 0 to 3,
    /// kernels 1 to 7, odd sizes and channel counts, maps of 4x4 to 40x40.
    const SHAPES: [(usize, usize, usize, usize, usize, usize); 10] = [
        (3, 11, 13, 3, 2, 1),
        (5, 9, 9, 3, 1, 1),
        (4, 20, 23, 1, 2, 0),
        (3, 30, 31, 7, 2, 3),
        (2, 12, 10, 5, 1, 2),
        (6, 7, 7, 3, 2, 1),
        (8, 40, 40, 3, 2, 1),
        (1, 5, 5, 3, 2, 0),
        (6, 4, 4, 3, 2, 1),
        (2, 8, 8, 3, 1, 1),
    ];

    /// Packs every block of a few geometries both ways, the float32 columns through the
    /// products' own packing and the gathers here, and compares the bits: strides 1 and 2,
    /// paddings 0 to 3, kernels 1, 3, 5 and 7, odd sizes and channel counts (an odd last
    /// row), runs that straddle two panels, blocks of rows that start inside the image,
    /// groups of columns that start inside a row, pairs in several blocks, depths past `kc`.
    #[test]
    fn gives_the_bits_of_the_float32_columns_packed() -> candle_core::Result<()> {
        if !(crate::avx512::available() && bf16_gemm::available()) {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return Ok(());
        }
        for (c, h, w, kk, s, p) in SHAPES {
            let geo = Geometry::new(c, h, w, kk, kk, s, p)?;
            let img: Vec<f32> = crate::test_values::values(c * h * w, (c + w) as u32);
            let k = geo.row_len();
            for rows in [
                0..geo.oh,
                geo.oh / 3..geo.oh,
                1.min(geo.oh - 1)..geo.oh.div_ceil(2),
            ] {
                let len = rows.len() * geo.ow;
                if len == 0 {
                    continue;
                }
                let mut cols = vec![0f32; k * len];
                geo.im2col_t_rows(&img, rows.clone(), &mut cols);
                let packed = Im2colPacked::new(&geo, &img, rows.clone()).expect("packs");
                let kp = k.div_ceil(2);
                let mut ours = Lines::default();
                for nr in [16, 32] {
                    for (p0, kc, depth) in [
                        (0, kp, kp),
                        (0, kp, kp.next_multiple_of(16)),
                        (kp / 2, kp - kp / 2, kp),
                    ] {
                        for (g0, gn) in [(0, len), (len / 3, len - len / 3), (5.min(len - 1), 1)] {
                            // Stale values (NaN pairs) from an earlier, longer block.
                            ours.clear();
                            ours.resize(2 * k * len + 37 * 64);
                            ours.fill(u32::MAX);
                            let stale = ours.len();
                            packed.pack((p0, kc, depth), (g0, gn), nr, &mut ours);
                            let view = (&cols[g0..], len, 1);
                            let theirs =
                                bf16_gemm::pack_rhs_for_tests((k, gn), view, (p0, kc, depth), nr);
                            assert_eq!(ours.len(), stale.max(theirs.len()), "grown only");
                            let (head, past) = ours.split_at(theirs.len());
                            assert!(
                                head == theirs && past.iter().all(|&v| v == u32::MAX),
                                "{c}x{h}x{w} k{kk} s{s} p{p}, rows {rows:?}, nr {nr}, pairs {p0}+{kc} of {depth}, columns {g0}+{gn}"
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The planned float32 columns equal `im2col`'s row by row copies, rows a stride apart.
    #[test]
    fn writes_the_float32_columns_of_im2col() -> candle_core::Result<()> {
        if !crate::avx512::available() || !Im2colPacked::can(&Geometry::new(1, 3, 3, 1, 1, 1, 0)?) {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return Ok(());
        }
        for (c, h, w, kk, s, p) in SHAPES {
            let geo = Geometry::new(c, h, w, kk, kk, s, p)?;
            let img: Vec<f32> = crate::test_values::values(c * h * w, (c + h) as u32);
            let k = geo.row_len();
            for rows in [0..geo.oh, geo.oh / 2..geo.oh] {
                let len = rows.len() * geo.ow;
                let stride = len + 3;
                let (mut ours, mut theirs) =
                    (vec![f32::NAN; k * stride], vec![f32::NAN; k * stride]);
                geo.im2col_t_rows_strided(&img, rows.clone(), &mut theirs, stride);
                let columns = Im2colPacked::new(&geo, &img, rows.clone()).expect("gathers");
                columns.write_f32(&mut ours, stride);
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&ours),
                    bits(&theirs),
                    "{c}x{h}x{w} k{kk} s{s} p{p} rows {rows:?}"
                );
            }
        }
        Ok(())
    }

    /// The image-by-image convolution under bf16 gives the same bits with the columns gathered
    /// packed as with float32 columns packed by the products: strided 3x3 and 1x1, a 7x7
    /// stem, a stride-1 5x5 (Winograd's does not take it), batches smaller and larger than
    /// a pool of two threads (threaded products, each thread gathering its own blocks; images
    /// side by side).
    #[test]
    fn the_convolution_gives_the_same_bits() -> candle_core::Result<()> {
        use candle_core::{Device, Tensor};
        if !(crate::avx512::available() && bf16_gemm::available()) {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return Ok(());
        }
        // (batch, in, out, size, kernel, stride, padding)
        for (n, c, o, hw, kk, s, p) in [
            (3, 16, 32, 17, 3, 2, 1),
            (1, 24, 40, 12, 1, 2, 0),
            (2, 3, 64, 30, 7, 2, 3),
            (2, 20, 24, 11, 5, 1, 2),
            (1, 40, 64, 9, 3, 2, 1),
        ] {
            let dev = Device::Cpu;
            let x = Tensor::from_vec(
                crate::test_values::values(n * c * hw * hw, 3),
                (n, c, hw, hw),
                &dev,
            )?;
            let w = Tensor::from_vec(
                crate::test_values::values(o * c * kk * kk, 5),
                (o, c, kk, kk),
                &dev,
            )?;
            // On a pool of two threads, as the CI machine's: batches of one image run threaded
            // products, larger ones images side by side.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .expect("a pool");
            let conv = || {
                pool.install(|| {
                    let runs = super::super::cpu::GATHERED_RUNS.with(|r| r.get());
                    let after = super::super::bias::After::Nothing;
                    let y = super::super::cpu::conv2d_cpu(&x, &w, after, s, p, true);
                    let gathered = super::super::cpu::GATHERED_RUNS.with(|r| r.get()) > runs;
                    y.map(|y| (y, gathered))
                })
            };
            let what = format!("n{n} {c}->{o} {hw}x{hw} k{kk} s{s} p{p}");
            let (packed, gathered) = conv()?;
            assert!(gathered, "{what}: the columns were not gathered");
            ENABLED.store(false, std::sync::atomic::Ordering::Relaxed);
            let plain = conv();
            ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
            let (plain, gathered) = plain?;
            assert!(!gathered, "{what}: gathered while switched off");
            let bits = crate::test_values::bits;
            assert!(bits(&packed)? == bits(&plain)?, "{what}");
        }
        Ok(())
    }
}
