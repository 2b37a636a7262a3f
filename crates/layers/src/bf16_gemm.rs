//! A bfloat16 matrix product on AVX512-BF16 (`vdpbf16ps`), for autocast's products on the CPU.
//!
//! Both operands are float32 rounded to bf16 (nearest, ties to even, as
//! `tensor.to(torch.bfloat16)`; float32 subnormals to a zero of their sign, as the
//! `vcvtneps2bf16` instruction of the vector packing rounds them) while they are packed; each
//! product of two bf16 values is exact in float32 and the sums are float32, as in oneDNN's bf16
//! kernels, which PyTorch's CPU autocast runs. `vdpbf16ps` adds
//! the products of a pair of neighbouring `k` in one instruction and treats subnormal bf16
//! operands as zero, so the result differs from a float32 GEMM over the same rounded operands
//! by the order of the sums (a few float32 ulps) and in subnormals.
//!
//! Layout (GotoBLAS's): the left operand (M x K) packed once into tiles of [`MR`] rows, a
//! `u32` per row and pair of `k` (`k` even in the low half); the right operand (K x N) packed a
//! block of `k` pairs at a time into panels of 16 or 32 columns, so that one panel
//! stays in the L1 cache while every row tile passes over it. The register tile is
//! [`MR`] x (16 x NV) float32 accumulators.
//!
//! On a CPU with Intel AMX (`AMX-BF16`: Sapphire Rapids and later Xeons), the products run on
//! its tiles instead ([`Kernel::Amx`], `tdpbf16ps`, the instruction oneDNN's bf16 kernels and
//! so PyTorch's CPU autocast run there): the left operand packed into tiles of [`AMX_MR`] rows,
//! each row's pairs side by side sixteen at a time (one 16 x 64-byte tile row each); the right
//! operand's panels as above, which are already the tiles' pair layout, sixteen pairs deep per
//! step (zero pairs past K). The accumulator tile is [`AMX_MR`] x (16 x NV) float32 in two or
//! four tile registers. The products and float32 sums are those of `vdpbf16ps` (subnormal
//! operands and results as zero), summed in a different order.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Rows of the left operand per tile (and per register tile).
pub(crate) const MR: usize = 8;

/// Rows of the left operand per tile of [`Kernel::Amx`]: two 16-row tile registers.
pub(crate) const AMX_MR: usize = 32;

/// Which instructions run a product.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AVX512-BF16's `vdpbf16ps` on vector registers.
    #[default]
    Avx512,
    /// Intel AMX's `tdpbf16ps` on tile registers.
    Amx,
}

impl Kernel {
    /// The fastest on this CPU: [`Kernel::Amx`] where [`amx_available`], else [`Kernel::Avx512`].
    pub(crate) fn best() -> Self {
        if amx_available() {
            Kernel::Amx
        } else {
            Kernel::Avx512
        }
    }

    /// The kernel for a left operand of `m` rows: [`Kernel::best`], but AVX512-BF16's under 16
    /// rows, where most of an AMX tile's 32 rows would be padding (and the products' row tiles
    /// would leave the pool's other threads idle).
    fn for_rows(m: usize) -> Self {
        match Self::best() {
            Kernel::Amx if m < 16 => Kernel::Avx512,
            best => best,
        }
    }

    /// Rows of the left operand per tile.
    fn rows(self) -> usize {
        match self {
            Kernel::Avx512 => MR,
            Kernel::Amx => AMX_MR,
        }
    }
}

/// Bytes of one packed right-operand panel block, kept in L1 (32 KB per core on the machines
/// measured).
const PANEL_BYTES: usize = 16 << 10;

// AMX's steps take sixteen pairs: the blocks of both panel widths are whole steps.
const _: () = assert!(
    (PANEL_BYTES / (4 * 32)).is_multiple_of(16) && (PANEL_BYTES / (4 * 16)).is_multiple_of(16)
);

/// Pairs of `k` per block on AMX's tiles ([`amx_tiles_from`]): each accumulator tile is loaded
/// and stored once per block, so the blocks are deeper than [`PANEL_BYTES`]' (a 64 KB panel
/// block of 32 columns, read from L2 by the tile loads). Against 128 pairs, ResNet-50's
/// convolutions at 224x224 (batch 16, bf16, forward and both gradients) took about 5% less
/// time.
const AMX_PAIRS: usize = 512;
const _: () = assert!(AMX_PAIRS.is_multiple_of(16) && AMX_PAIRS >= PANEL_BYTES / (4 * 16));

/// Bytes of packed right-operand panels that every row tile of [`amx_tiles_from`] passes over
/// before the next panels: the row tiles go over a few panels, not over one, so that each
/// accumulator store continues the rows the previous ones wrote (a 1x1 convolution `64 -> 256`
/// on 56x56 at batch 16 took 7.4-7.9 ms with one panel at a time, whose 256 rows of output were
/// written 128 bytes per row per panel, and 2.6-2.8 ms this way); small enough to stay in L2.
const AMX_GROUP_BYTES: usize = 256 << 10;

/// Whether this CPU runs `vdpbf16ps` (AVX512-BF16 with AVX-512F).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU runs AMX's bf16 tiles ([`available`] too, `AMX-BF16`, tile state kept by the
/// OS: [`crate::autocast::cpu_has_amx_bf16`]) and Linux let this process use them
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, asked once, for every thread).
pub(crate) fn amx_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AMX.get_or_init(|| {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            available()
                && crate::autocast::cpu_has_amx_bf16()
                // SAFETY: arch_prctl with an integer request and argument touches no memory of
                // ours; it fails (non-zero) where the kernel refuses.
                && unsafe {
                    libc::syscall(
                        libc::SYS_arch_prctl,
                        ARCH_REQ_XCOMP_PERM,
                        XFEATURE_XTILEDATA,
                    )
                } == 0
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// The bf16 bits of `v`, rounded to nearest, ties to even; NaN stays NaN (quiet).
#[inline]
pub(crate) fn bf16_bits(v: f32) -> u32 {
    let x = v.to_bits();
    if x & 0x7fff_ffff > 0x7f80_0000 {
        (x >> 16) | 0x40
    } else {
        x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16
    }
}

/// Two neighbouring `k` as one packed pair: the even one in the low half.
#[inline]
fn pair(even: f32, odd: f32) -> u32 {
    packed_bits(even) | (packed_bits(odd) << 16)
}

/// `v` as the packing rounds it: [`bf16_bits`], but a float32 subnormal as a zero of its sign,
/// as the vector packing's `vcvtneps2bf16` gives it, so that every value of a packed operand
/// has the same bits whichever path packed it. `vdpbf16ps` takes a bf16 subnormal as zero
/// anyway; this changes only the products of float32 values just below the smallest normal
/// one (from `0x007f8000`), which [`bf16_bits`] rounds up to the smallest normal bf16.
#[inline]
fn packed_bits(v: f32) -> u32 {
    if v.is_subnormal() {
        (v.to_bits() >> 16) & 0x8000
    } else {
        bf16_bits(v)
    }
}

/// Pair `p` of a row of `k` values read at stride `cs` (the odd one zero past `k`).
#[inline]
fn strided_pair(row: &[f32], cs: usize, k: usize, p: usize) -> u32 {
    let odd = if 2 * p + 1 < k {
        row[(2 * p + 1) * cs]
    } else {
        0.0
    };
    pair(row[2 * p * cs], odd)
}

/// Values of a left operand from which [`PackedLhs::pack`] shares its tiles across the pool.
const PAR_PACK: usize = 64 * 1024;

/// A matrix given as (values, row stride, column stride).
pub(crate) type View<'a> = (&'a [f32], usize, usize);

/// The left operand (M x K) in bf16, packed into tiles of [`MR`] rows: `data[(t·KP + p)·MR + i]`
/// holds row `t·MR + i`, columns `2p` and `2p + 1` (zero past M or K). For [`Kernel::Amx`],
/// tiles of [`AMX_MR`] rows, sixteen pairs of each row side by side: `data[((t·G + g)·AMX_MR +
/// i)·16 + q]` holds row `t·AMX_MR + i`, pair `16g + q` (`G = ⌈KP/16⌉`; zero past M or K).
#[derive(Debug, Default, Clone)]
pub(crate) struct PackedLhs {
    m: usize,
    k: usize,
    kernel: Kernel,
    data: Lines,
    /// Tests: [`Kernel::Amx`]'s steps in plain Rust even on a CPU with AMX.
    #[cfg(test)]
    emulate: bool,
}

impl PackedLhs {
    /// `a` (M x K) packed ([`PackedLhs::pack`]).
    pub(crate) fn new(m: usize, k: usize, a: View) -> Self {
        let mut packed = Self::default();
        packed.pack(m, k, a);
        packed
    }

    /// Packs `a` (M x K) for the kernel that runs its products fastest ([`Kernel::best`], from
    /// 16 rows) in place of what this held, reusing its buffer.
    pub(crate) fn pack(&mut self, m: usize, k: usize, a: View) {
        self.pack_for(Kernel::for_rows(m), m, k, a)
    }

    /// Packs `a` (M x K) for `kernel`.
    fn pack_for(&mut self, kernel: Kernel, m: usize, k: usize, (a, rs, cs): View) {
        self.m = m;
        self.k = k;
        self.kernel = kernel;
        let kp = k.div_ceil(2);
        let tile_len = match kernel {
            Kernel::Avx512 => kp * MR,
            Kernel::Amx => kp.div_ceil(16) * 16 * AMX_MR,
        };
        // Every value is written below (rows past M, and pairs past K on AMX, as zeros): no
        // zero-filling pass first.
        self.data
            .resize_overwritten(m.div_ceil(kernel.rows()) * tile_len);
        if m * k == 0 {
            return;
        }
        assert!(
            (m - 1) * rs + (k - 1) * cs < a.len(),
            "bf16 gemm: lhs out of bounds"
        );
        if kernel == Kernel::Amx {
            return self.pack_amx((a, rs, cs), tile_len);
        }
        // Tiles side by side across the pool when there is enough to share ([`each_tile`]).
        let pack_tile = |run: &mut Vec<u32>, (t, tile): (usize, &mut [u32])| {
            let rows = MR.min(m - t * MR);
            // Rows along `k` (stride 1): sixteen pairs of every row at a time, transposed in
            // registers (rows past M as zeros).
            #[cfg(target_arch = "x86_64")]
            if cs == 1 && available() {
                let first = &a[t * MR * rs..];
                // SAFETY: the CPU has AVX512-BF16 (checked); rows `< rows` hold `k` values from
                // `i · rs`, inside `a` (asserted above); the tile holds `kp` pairs of MR rows.
                unsafe { pack_lhs_tile_avx512(first, rs, rows, k, tile) };
                return;
            }
            if rows < MR {
                tile.chunks_exact_mut(MR).for_each(|p| p[rows..].fill(0));
            }
            run.resize(if cs == 1 { kp } else { 0 }, 0);
            for i in 0..rows {
                let row = &a[(t * MR + i) * rs..];
                if cs == 1 {
                    pair_run(&row[..k], run);
                    run.iter()
                        .enumerate()
                        .for_each(|(p, v)| tile[p * MR + i] = *v);
                    continue;
                }
                for p in 0..kp {
                    tile[p * MR + i] = strided_pair(row, cs, k, p);
                }
            }
        };
        each_tile(&mut self.data, tile_len, m * k, pack_tile);
    }

    /// [`PackedLhs::pack_for`] [`Kernel::Amx`] into `data` (sized, `a`'s bounds checked):
    /// each row's pairs made as a run, then laid out sixteen at a time.
    fn pack_amx(&mut self, (a, rs, cs): View, tile_len: usize) {
        let (m, k) = (self.m, self.k);
        let kp = k.div_ceil(2);
        let groups = kp.div_ceil(16);
        let pack_tile = |run: &mut Vec<u32>, (t, tile): (usize, &mut [u32])| {
            let rows = AMX_MR.min(m - t * AMX_MR);
            // A transposed operand (rows of stride 1: a kernel read as Wᵀ): each pair of
            // columns' values for the tile's rows lie side by side, paired sixteen at a time
            // ([`pack_rows`]) and then laid out row by row, instead of two reads a column's
            // stride apart per value.
            if rs == 1 && cs != 1 {
                run.resize(16 * AMX_MR, 0);
                for g in 0..groups {
                    for q in 0..16 {
                        let (p, dst) = (16 * g + q, &mut run[q * AMX_MR..(q + 1) * AMX_MR]);
                        let first = t * AMX_MR;
                        match 2 * p < k {
                            true => {
                                let r0 = &a[2 * p * cs + first..][..rows];
                                let r1 =
                                    (2 * p + 1 < k).then(|| &a[(2 * p + 1) * cs + first..][..rows]);
                                pack_rows(r0, r1, &mut dst[..rows]);
                                dst[rows..].fill(0);
                            }
                            false => dst.fill(0),
                        }
                    }
                    let block = &mut tile[g * AMX_MR * 16..(g + 1) * AMX_MR * 16];
                    for (i, row) in block.chunks_exact_mut(16).enumerate() {
                        for (q, v) in row.iter_mut().enumerate() {
                            *v = run[q * AMX_MR + i];
                        }
                    }
                }
                return;
            }
            run.resize(16 * groups, 0);
            for i in 0..AMX_MR {
                if i < rows {
                    let row = &a[(t * AMX_MR + i) * rs..];
                    if cs == 1 {
                        pair_run(&row[..k], &mut run[..kp]);
                    } else {
                        for (p, v) in run[..kp].iter_mut().enumerate() {
                            *v = strided_pair(row, cs, k, p);
                        }
                    }
                    run[kp..].fill(0);
                } else if i == rows {
                    run.fill(0);
                }
                for (g, pairs) in run.chunks_exact(16).enumerate() {
                    let at = (g * AMX_MR + i) * 16;
                    tile[at..at + 16].copy_from_slice(pairs);
                }
            }
        };
        each_tile(&mut self.data, tile_len, m * k, pack_tile);
    }

    fn pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    /// For a producer that writes the left operand (M x K) packed for [`Kernel::Amx`] itself
    /// (Winograd's kernel gradient, [`Self::amx_index`]): makes this that operand, every value
    /// zero where M or K differ from the last call's (else as the producer left them), and hands
    /// its values as bf16 bits. `None` where the products would not run on AMX
    /// ([`Kernel::for_rows`]).
    pub(crate) fn amx_values(&mut self, m: usize, k: usize) -> Option<&mut [u16]> {
        if Kernel::for_rows(m) != Kernel::Amx || m * k == 0 {
            return None;
        }
        let len = m.div_ceil(AMX_MR) * k.div_ceil(32) * 16 * AMX_MR;
        if (self.m, self.k, self.kernel) != (m, k, Kernel::Amx) || self.data.len() != len {
            self.data.clear();
            self.data.resize(len);
            (self.m, self.k, self.kernel) = (m, k, Kernel::Amx);
        }
        // SAFETY: `u32` values viewed as twice as many `u16` (alignment 4 >= 2, every bit
        // pattern valid both ways); the borrow of `self.data` lasts as long as the slice.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast::<u16>(), 2 * len)
        })
    }

    /// Where [`Self::amx_values`] holds value (`i`, `p`) of an AMX-packed operand `k` deep:
    /// the 32 values of a row's sixteen pairs are side by side (the pair's even value in the
    /// low half, so first on this little-endian CPU), rows of a tile 32 apart.
    pub(crate) fn amx_index(k: usize, i: usize, p: usize) -> usize {
        let groups = k.div_ceil(32);
        ((i / AMX_MR * groups + p / 32) * AMX_MR + i % AMX_MR) * 32 + p % 32
    }
}

/// `pack_tile(run, (t, tile))` for every tile `t` of `tile_len` values of `data`, with a buffer
/// `run` per thread: across the pool from [`PAR_PACK`] `values` of the operand (a large kernel
/// packed once per call would otherwise run on the calling thread alone), else on this thread.
fn each_tile(
    data: &mut [u32],
    tile_len: usize,
    values: usize,
    pack_tile: impl Fn(&mut Vec<u32>, (usize, &mut [u32])) + Sync + Send,
) {
    if values >= PAR_PACK {
        data.par_chunks_exact_mut(tile_len)
            .enumerate()
            .for_each_init(Vec::new, pack_tile);
    } else {
        let mut run = Vec::new();
        let tiles = data.chunks_exact_mut(tile_len).enumerate();
        tiles.for_each(|t| pack_tile(&mut run, t));
    }
}

/// A growable run of `u32` values (packed bf16 pairs) that starts at a 64-byte boundary: the
/// products' operands are read in rows of 64 bytes (an AMX tile row, a vector), which a
/// `Vec`'s 16-byte alignment from `malloc` splits across two cache lines each.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    buf: Vec<u32>,
    at: usize,
    len: usize,
}

impl Lines {
    /// Values from a 64-byte boundary of `buf`.
    fn offset(buf: &[u32]) -> usize {
        buf.as_ptr().align_offset(64).min(15)
    }

    /// `len` values: those held kept, new ones zero. The buffer at least doubles when it
    /// grows, as a `Vec`'s capacity does (a run of small growths copies each value a few times
    /// at most).
    pub(crate) fn resize(&mut self, len: usize) {
        if self.buf.len() < len + 15 {
            let mut buf = vec![0u32; len.max(2 * self.buf.len()) + 15];
            let at = Self::offset(&buf);
            let keep = self.len.min(len);
            buf[at..at + keep].copy_from_slice(&self.buf[self.at..self.at + keep]);
            (self.buf, self.at) = (buf, at);
        } else if len > self.len {
            self.buf[self.at + self.len..self.at + len].fill(0);
        }
        self.len = len;
    }

    /// `len` values for a caller that writes every one of them before it reads any: those past
    /// the current length are left as the buffer holds them (values of earlier calls) instead
    /// of being zero-filled, where the buffer is large enough; as [`Self::resize`] where it
    /// grows.
    pub(crate) fn resize_overwritten(&mut self, len: usize) {
        match self.buf.len() < len + 15 {
            true => self.resize(len),
            false => self.len = len,
        }
    }

    /// No values (the buffer kept).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
}

impl Clone for Lines {
    /// The same values, from a 64-byte boundary of a buffer of its own.
    fn clone(&self) -> Self {
        let mut copy = Lines::default();
        copy.resize(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl std::ops::Deref for Lines {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &self.buf[self.at..self.at + self.len]
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [u32] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

/// Reusable buffers of [`gemm`]: the packed right-operand block and an edge tile.
#[derive(Debug, Default, Clone)]
pub(crate) struct Scratch {
    rhs: Lines,
    tile: Vec<f32>,
}

/// Columns of a register tile, in 16-lane vectors, for `n` columns: two (8 x 32
/// accumulators), the fastest per column even with padding (measured at 40 to 160 columns
/// against one and three), or one for 16 columns and fewer.
fn vectors_for(n: usize) -> usize {
    if n <= 16 {
        1
    } else {
        2
    }
}

/// Where [`gemm_packed`] finds each value of a right operand (K x N) packed once by its
/// producer (Winograd's input transform): panels of `nr` columns ([`vectors_for`]), each all
/// `kp = ⌈K/2⌉` pairs deep, pair `p` of column `j` at `p · nr + column(j)`. Values of the last
/// panel's columns past N may be anything finite: no product reads them into `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RhsLayout {
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) nr: usize,
}

impl RhsLayout {
    /// The layout of a K x N operand; `None` where K is too deep for one panel block in L1
    /// ([`PANEL_BYTES`]; more than 256 rows for N > 16) or the operand is empty.
    pub(crate) fn new(k: usize, n: usize) -> Option<Self> {
        let nr = 16 * vectors_for(n);
        let fits = k.div_ceil(2) <= (PANEL_BYTES / (4 * nr)).max(1);
        (fits && k * n > 0).then_some(Self { n, k, nr })
    }

    /// Pairs per column.
    pub(crate) fn pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    /// Values (`u32` pairs) of the packed operand.
    pub(crate) fn len(&self) -> usize {
        self.n.div_ceil(self.nr) * self.pairs() * self.nr
    }

    /// Where pair 0 of column `j` lies (pair `p` lies `p · nr` further on).
    pub(crate) fn column(&self, j: usize) -> usize {
        j / self.nr * self.pairs() * self.nr + j % self.nr
    }

    /// `b` (K x N, as (values, row stride, column stride)) packed into `out` as laid out here,
    /// one value at a time (the portable reference of the producers that pack as they go).
    pub(crate) fn pack(&self, (b, rs, cs): View, out: &mut [u32]) {
        for p in 0..self.pairs() {
            for j in 0..self.n {
                let odd = match 2 * p + 1 < self.k {
                    true => b[(2 * p + 1) * rs + j * cs],
                    false => 0.0,
                };
                out[p * self.nr + self.column(j)] = pair(b[2 * p * rs + j * cs], odd);
            }
        }
    }
}

/// Packs rows `2·p0 .. 2·(p0 + kc)` of `b` (K x N) into panels of `nr` columns, `depth >= kc`
/// pairs deep, the first `⌈N/nr⌉·depth·nr` values of `out` (grown where shorter, the values
/// past them left as they were): `out[(panel·depth + p)·nr + j]` = the pair of rows `2(p0 + p)`, `2(p0 + p) + 1`
/// at column `panel·nr + j` (zero past K or N, and for `p >= kc`).
fn pack_rhs(
    (k, n): (usize, usize),
    (b, rs, cs): View,
    (p0, kc, depth): (usize, usize, usize),
    nr: usize,
    out: &mut Lines,
) {
    let panels = n.div_ceil(nr);
    // Every value is written below (columns past N and pairs past `kc` as zeros): no
    // zero-filling pass first, and the buffer only grows (a shorter group after a longer one
    // zero-filled the longer one's panels again when it grew back).
    let len = panels * depth * nr;
    if out.len() < len {
        out.resize(len);
    }
    let out = &mut out[..len];
    // With rows of stride 1, each column's pairs lie side by side: a column's run at a time.
    let by_column = rs == 1 && cs != 1;
    let mut run = vec![0u32; if by_column { kc } else { 0 }];
    let end = (2 * (p0 + kc)).min(k);
    for (panel, block) in out.chunks_exact_mut(depth * nr).enumerate() {
        let (block, pad) = block.split_at_mut(kc * nr);
        pad.fill(0);
        let col0 = panel * nr;
        let cols = nr.min(n - col0);
        if cols < nr {
            block.chunks_exact_mut(nr).for_each(|p| p[cols..].fill(0));
        }
        if by_column {
            // Sixteen columns by sixteen pairs at a time, transposed in registers; the columns
            // after the last whole sixteen one at a time.
            let len = end - 2 * p0;
            let groups = if available() { cols / 16 } else { 0 };
            #[cfg(target_arch = "x86_64")]
            if groups > 0 {
                // SAFETY: `groups` is non-zero only on a CPU with AVX512-BF16; the columns read
                // lie below `col0 + cols <= n`, each from `2·p0` to `end <= k` (inside `b`: the
                // caller asserted its bounds); the block holds `kc >= ⌈len/2⌉` pairs of
                // `nr >= 16 · groups` columns.
                unsafe {
                    pack_columns_avx512(&b[col0 * cs + 2 * p0..], cs, groups, len, nr, block)
                };
            }
            let run = &mut run[..len.div_ceil(2)];
            for j in 16 * groups..cols {
                let c = (col0 + j) * cs;
                pair_run(&b[c + 2 * p0..c + end], run);
                run.iter()
                    .enumerate()
                    .for_each(|(p, v)| block[p * nr + j] = *v);
            }
            continue;
        }
        // Contiguous rows: packed below, several panels at a time.
        if cs == 1 {
            continue;
        }
        for p in 0..kc {
            let (even, odd) = (2 * (p0 + p), 2 * (p0 + p) + 1);
            let dst = &mut block[p * nr..p * nr + cols];
            for (j, d) in dst.iter_mut().enumerate() {
                let c = (col0 + j) * cs;
                let o = if odd < k { b[odd * rs + c] } else { 0.0 };
                *d = pair(b[even * rs + c], o);
            }
        }
    }
    if by_column || cs != 1 {
        return;
    }
    // Contiguous rows: [`ROW_PANELS`] panels at a time, each pair of rows read along those
    // panels' columns (runs of up to 4 KB, which the prefetchers follow) rather than one
    // panel's 32 values of every row in turn (hundreds of rows, a cache miss each).
    for (group, blocks) in out.chunks_mut(ROW_PANELS * depth * nr).enumerate() {
        let col0 = group * ROW_PANELS * nr;
        let cols = (ROW_PANELS * nr).min(n - col0);
        for p in 0..kc {
            let (even, odd) = (2 * (p0 + p), 2 * (p0 + p) + 1);
            let ahead = 2 * (p0 + p + PREFETCH_PAIRS) + 1;
            if ahead < (2 * (p0 + kc)).min(k) {
                prefetch(&b[(ahead - 1) * rs + col0..(ahead - 1) * rs + col0 + cols]);
                prefetch(&b[ahead * rs + col0..ahead * rs + col0 + cols]);
            }
            let r0 = &b[even * rs + col0..even * rs + col0 + cols];
            let r1 = (odd < k).then(|| &b[odd * rs + col0..odd * rs + col0 + cols]);
            for (i, block) in blocks.chunks_exact_mut(depth * nr).enumerate() {
                let (from, to) = (i * nr, ((i + 1) * nr).min(cols));
                let dst = &mut block[p * nr..p * nr + to - from];
                pack_rows(&r0[from..to], r1.map(|r| &r[from..to]), dst);
            }
        }
    }
}

/// [`pack_rhs`] into a new vector, for tests of the producers that must give its bits.
#[cfg(test)]
pub(crate) fn pack_rhs_for_tests(
    (k, n): (usize, usize),
    b: View,
    (p0, kc, depth): (usize, usize, usize),
    nr: usize,
) -> Vec<u32> {
    let mut out = Lines::default();
    pack_rhs((k, n), b, (p0, kc, depth), nr, &mut out);
    out.to_vec()
}

/// Panels [`pack_rhs`] packs side by side from contiguous rows, and that a product on
/// AVX512-BF16 packs and multiplies at a time from a float32 operand (up to 512 KB packed, kept
/// in L2; on AMX's tiles, [`amx_tiles_from`] packs a group of [`AMX_GROUP_BYTES`] at a time).
/// A 1x1 convolution 256 -> 64 on 56x56 images (forward, bf16, batch 16) took 4.3 ms packed a
/// panel at a time, 3.4 with 32 panels.
const ROW_PANELS: usize = 32;

/// Pairs of rows ahead that [`pack_rhs`] asks the cache for while it packs contiguous rows:
/// each pair of rows is a new run of up to 4 KB in each row, whose first lines the hardware
/// prefetchers reach late. On Zen 5 (one thread, 1x1 convolution 256 -> 64 on 56x56, batch
/// 16, bf16 forward) the packing's samples fell by half and the product took 5.3 ms against
/// 6.6 (1, 2, 8 and 16 pairs ahead gained less).
const PREFETCH_PAIRS: usize = 4;

/// Asks for `run`'s cache lines (a hint: no fault, no effect on the values).
#[inline]
fn prefetch(run: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for c in (0..run.len()).step_by(16) {
        // SAFETY: `c` lies inside `run`; a prefetch reads nothing into the program.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(run.as_ptr().add(c).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = run;
}

/// `out[p]` = the pair (`src[2p]`, `src[2p + 1]` or 0), sixteen pairs at a time.
fn pair_run(src: &[f32], out: &mut [u32]) {
    assert_eq!(out.len(), src.len().div_ceil(2), "pair_run: lengths");
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX512-BF16 (checked); the lengths agree (asserted).
        return unsafe { pair_run_avx512(src, out) };
    }
    for p in 0..out.len() {
        let odd = src.get(2 * p + 1).copied().unwrap_or(0.0);
        out[p] = pair(src[2 * p], odd);
    }
}

/// [`pair_run`] in AVX512-BF16: 32 values at a time, the last fewer than 32 through masked
/// loads (zeros past the run, as the odd value past an odd-length run) and a masked store.
///
/// # Safety
/// The CPU has AVX512-BF16; `out.len() == src.len().div_ceil(2)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pair_run_avx512(src: &[f32], out: &mut [u32]) {
    let (chunks, outs) = (src.chunks_exact(32), out.chunks_exact_mut(16));
    let tail = chunks.remainder();
    for (s, o) in chunks.zip(outs) {
        let first = _mm512_loadu_ps(s.as_ptr());
        let second = _mm512_loadu_ps(s.as_ptr().add(16));
        // The low half comes from the second argument: values 0..16, then 16..32, in order.
        let v = _mm512_cvtne2ps_pbh(second, first);
        _mm512_storeu_si512(
            o.as_mut_ptr().cast(),
            std::mem::transmute::<__m512bh, __m512i>(v),
        );
    }
    if tail.is_empty() {
        return;
    }
    let (r, at) = (tail.len(), 16 * (src.len() / 32));
    let (lo, hi) = (
        crate::avx512::first(r.min(16)),
        crate::avx512::first(r.saturating_sub(16)),
    );
    let pairs = pairs16_masked(tail.as_ptr(), lo, hi);
    let keep = crate::avx512::first(r.div_ceil(2));
    _mm512_mask_storeu_epi32(out.as_mut_ptr().add(at).cast(), keep, pairs);
}

/// `dst[j]` = the pair (`r0[j]`, `r1[j]` or 0), sixteen at a time (the last fewer than sixteen
/// masked).
fn pack_rows(r0: &[f32], r1: Option<&[f32]>, dst: &mut [u32]) {
    assert!(
        r0.len() >= dst.len() && r1.is_none_or(|r| r.len() >= dst.len()),
        "pack_rows: rows shorter than the pairs"
    );
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX512-BF16 (checked); the rows hold `dst.len()` values
        // (asserted).
        return unsafe { pack_rows_avx512(r0, r1, dst) };
    }
    for j in 0..dst.len() {
        dst[j] = pair(r0[j], r1.map_or(0.0, |r| r[j]));
    }
}

/// [`pack_rows`] in AVX512-BF16.
///
/// # Safety
/// The CPU has AVX512-BF16; `r0` and `r1` hold at least `dst.len()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pack_rows_avx512(r0: &[f32], r1: Option<&[f32]>, dst: &mut [u32]) {
    // Sixteen values of `row` from `j` (those in `keep`; the others read as zero, never read
    // from memory), rounded, one to each 32-bit lane's low half. Plain loads for a whole
    // sixteen (masked ones took twice as long on Zen 5, as `pairs16_masked` found).
    let halves = |row: &[f32], j: usize, keep: u16| {
        let v = match keep {
            0xffff => _mm512_loadu_ps(row.as_ptr().add(j)),
            _ => _mm512_maskz_loadu_ps(keep, row.as_ptr().add(j)),
        };
        _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
            _mm512_cvtneps_pbh(v),
        ))
    };
    for j in (0..dst.len()).step_by(16) {
        // The last fewer than sixteen masked, loads and store.
        let keep = crate::avx512::first((dst.len() - j).min(16));
        let lo = halves(r0, j, keep);
        let v = match r1 {
            Some(r1) => _mm512_or_si512(lo, _mm512_slli_epi32::<16>(halves(r1, j, keep))),
            None => lo,
        };
        _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(j).cast(), keep, v);
    }
}

/// `N` rows (a multiple of 4) of 32-bit values interleaved by 32 bits, then by 64 bits: within
/// each 128-bit lane `l`, `u[4g + j]` holds column `4l + j` of rows `4g .. 4g + 4`. The first
/// two steps of a transposition ([`transpose16`], [`pack_lhs_tile_avx512`]'s eight rows).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn rows_by_fours<const N: usize>(r: &[__m512i; N]) -> [__m512i; N] {
    let t: [__m512i; N] = std::array::from_fn(|q| {
        let (a, b) = (r[q & !1], r[q | 1]);
        if q % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    std::array::from_fn(|q| {
        let (g, j) = (q / 4, q % 4);
        let (a, b) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
        if j % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    })
}

/// Transposes a 16 x 16 matrix of 32-bit values held as 16 rows: afterwards `r[j]` lane `i` is
/// what `r[i]` lane `j` was.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(r: &mut [__m512i; 16]) {
    let u = rows_by_fours(r);
    // The 4 x 4 matrix of 128-bit lanes of each column group `j` transposed.
    for j in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x44>(u[j], u[4 + j]);
        let v1 = _mm512_shuffle_i32x4::<0xee>(u[j], u[4 + j]);
        let v2 = _mm512_shuffle_i32x4::<0x44>(u[8 + j], u[12 + j]);
        let v3 = _mm512_shuffle_i32x4::<0xee>(u[8 + j], u[12 + j]);
        r[j] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
        r[4 + j] = _mm512_shuffle_i32x4::<0xdd>(v0, v2);
        r[8 + j] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
        r[12 + j] = _mm512_shuffle_i32x4::<0xdd>(v1, v3);
    }
}

/// [`PackedLhs`]'s tile from `rows` (at most MR) rows of `a` (row `i` from `i · rs`, `k` values
/// along it): `tile[p · MR + i]` for every pair `p < ⌈k/2⌉`, rows from `rows` on as zeros.
/// Sixteen pairs of the eight rows at a time (the last sixteen read with masked loads, zeros
/// past `k`), transposed in registers as eight rows: 24 shuffles and 8 extractions per
/// sixteen pairs, where a 16 x 16 transposition of the eight rows and eight zero rows took 64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_lhs_tile_avx512(a: &[f32], rs: usize, rows: usize, k: usize, tile: &mut [u32]) {
    debug_assert!(rows <= MR && tile.len() >= k.div_ceil(2) * MR);
    debug_assert!(rows == 0 || k == 0 || (rows - 1) * rs + k <= a.len());
    // Qwords of two registers (`lo`: rows 0-3, `hi`: rows 4-7 of four pairs, one per 128-bit
    // lane): pairs of lanes 0 and 1, then of lanes 2 and 3, each pair's eight rows together.
    let first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    let second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    for f in 0..k.div_ceil(32) {
        let (lo, hi) = masks32(k - 32 * f);
        let mut v = [_mm512_setzero_si512(); MR];
        for (i, v) in v.iter_mut().enumerate().take(rows) {
            *v = pairs16_masked(a.as_ptr().add(i * rs + 32 * f), lo, hi);
        }
        // `u[4g + j]`: rows 4g to 4g + 3 of pair `4l + j` in each 128-bit lane `l`.
        let u = rows_by_fours(&v);
        let pairs = (k - 32 * f).min(32).div_ceil(2);
        for j in 0..4 {
            let a = _mm512_permutex2var_epi64(u[j], first, u[4 + j]);
            let b = _mm512_permutex2var_epi64(u[j], second, u[4 + j]);
            let halves = [
                _mm512_castsi512_si256(a),
                _mm512_extracti64x4_epi64::<1>(a),
                _mm512_castsi512_si256(b),
                _mm512_extracti64x4_epi64::<1>(b),
            ];
            // Lane `l` of `u[j]` is pair `4l + j` of these sixteen.
            for (l, half) in halves.into_iter().enumerate() {
                let p = 4 * l + j;
                if p < pairs {
                    let dst = tile.as_mut_ptr().add((16 * f + p) * MR);
                    _mm256_storeu_si256(dst.cast(), half);
                }
            }
        }
    }
}

/// Load masks of the first `len` (or 32) of 32 values, as two sixteens.
#[cfg(target_arch = "x86_64")]
#[inline]
fn masks32(len: usize) -> (__mmask16, __mmask16) {
    let lo = if len >= 16 { 0xffff } else { (1u16 << len) - 1 };
    let hi = if len >= 32 {
        0xffff
    } else if len > 16 {
        (1u16 << (len - 16)) - 1
    } else {
        0
    };
    (lo, hi)
}

/// The 32 values from `src` the masks keep (zeros for the others, which are never read: no
/// fault past them) as 16 pairs (`src[2p]` in the low half of pair `p`), rounded as
/// [`pair_run`].
///
/// # Safety
/// The values the masks keep lie inside one allocation; the CPU has AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pairs16_masked(src: *const f32, lo: __mmask16, hi: __mmask16) -> __m512i {
    // Plain loads when the masks keep all 32 (masked ones took twice as long there on Zen 5,
    // as if the prefetchers did not follow them); `src + 16` may lie past the allocation when
    // `hi` keeps nothing: never dereferenced then.
    let (first, second) = if lo & hi == 0xffff {
        (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16)))
    } else {
        (
            _mm512_maskz_loadu_ps(lo, src),
            _mm512_maskz_loadu_ps(hi, src.wrapping_add(16)),
        )
    };
    std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(second, first))
}

/// `groups` sixteens of columns of `b` (column `j` from `j · cs`, `len` values along `k`), all
/// `⌈len/2⌉` pairs of each, into a panel block of `nr` columns: `block[p · nr + j]`. Sixteen
/// pairs of sixteen columns at a time, transposed in registers; the last sixteen pairs read
/// with masked loads (zeros past `len`), where they went one column at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_columns_avx512(
    b: &[f32],
    cs: usize,
    groups: usize,
    len: usize,
    nr: usize,
    block: &mut [u32],
) {
    debug_assert!(groups == 0 || len == 0 || (16 * groups - 1) * cs + len <= b.len());
    debug_assert!(block.len() >= len.div_ceil(2) * nr && 16 * groups <= nr);
    for g in 0..groups {
        for f in 0..len.div_ceil(32) {
            let (lo, hi) = masks32(len - 32 * f);
            let mut r: [__m512i; 16] = std::array::from_fn(|j| {
                pairs16_masked(b.as_ptr().add((16 * g + j) * cs + 32 * f), lo, hi)
            });
            transpose16(&mut r);
            let pairs = (len - 32 * f).min(32).div_ceil(2);
            for (p, v) in r.iter().enumerate().take(pairs) {
                let dst = block.as_mut_ptr().add((16 * f + p) * nr + 16 * g);
                _mm512_storeu_si512(dst.cast(), *v);
            }
        }
    }
}

/// One register tile: `c` (MR x 16·NV, row stride `rs`) := `c` (if `load`) + the product of
/// `kc` pairs of the packed tile `a` and panel `b`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile<const NV: usize>(
    kc: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    rs: usize,
    load: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    if load {
        for (i, row) in acc.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(c.add(i * rs + 16 * j));
            }
        }
    }
    for p in 0..kc {
        let mut bv = [_mm512_setzero_ps(); NV];
        for (j, v) in bv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(b.add((p * NV + j) * 16).cast());
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_castsi512_ps(_mm512_set1_epi32(*a.add(p * MR + i) as i32));
            for (j, v) in row.iter_mut().enumerate() {
                *v = _mm512_dpbf16_ps(
                    *v,
                    std::mem::transmute::<__m512, __m512bh>(av),
                    std::mem::transmute::<__m512, __m512bh>(bv[j]),
                );
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            _mm512_storeu_ps(c.add(i * rs + 16 * j), *v);
        }
    }
}

/// [`tile`] in plain Rust, for other architectures (where [`available`] is false).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const NV: usize>(
    kc: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    rs: usize,
    load: bool,
) {
    let bf = |v: u32| f32::from_bits(v << 16);
    for i in 0..MR {
        for j in 0..16 * NV {
            let mut acc = if load { *c.add(i * rs + j) } else { 0.0 };
            for p in 0..kc {
                let (x, y) = (*a.add(p * MR + i), *b.add(p * NV * 16 + j));
                acc += bf(x >> 16) * bf(y >> 16);
                acc += bf(x & 0xffff) * bf(y & 0xffff);
            }
            *c.add(i * rs + j) = acc;
        }
    }
}

/// The right operand of a product: float32 to pack as it goes, packed already, or packed
/// block by block by its producer.
#[derive(Clone, Copy)]
enum Rhs<'a> {
    View(View<'a>),
    Packed(&'a [u32], RhsLayout),
    // Only x86-64's convolutions produce their operands.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Produced(&'a dyn PackRhs),
}

/// A right operand (K x N) that writes its own packed blocks as a product asks for them, where
/// making the values costs no more than reading them (a convolution's columns, gathered from
/// the image straight into bf16 pairs instead of written as float32 and packed after).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) trait PackRhs: Sync {
    /// The operand's (K, N).
    fn dims(&self) -> (usize, usize);

    /// With `pairs` = `(p0, kc, depth)` and `columns` = `(g0, gn)`: writes pairs
    /// `p0 .. p0 + kc` (rows `2·p0 .. 2·(p0 + kc)`, the odd row past K zero) of columns
    /// `g0 .. g0 + gn` into `out`, as [`pack_rhs`] lays them out: panels of `nr` columns, each
    /// `depth >= kc` pairs deep, `out[(panel·depth + p)·nr + j]` the pair of column
    /// `g0 + panel·nr + j`; zero for `p >= kc` and past column `g0 + gn`; `out` grown where
    /// shorter than its panels, the values past them left as they were. Every value must have
    /// the bits [`pack_rhs`] would give the float32 operand.
    fn pack(
        &self,
        pairs: (usize, usize, usize),
        columns: (usize, usize),
        nr: usize,
        out: &mut Lines,
    );
}

/// `dst` (M x N) := `dst` (if `accumulate`) + `lhs` · `rhs` (K x N), in bf16 products with
/// float32 sums, on `threads` threads (row tiles split between them).
///
/// Panics if [`available`] is false or a view is out of bounds.
pub(crate) fn gemm(
    dims: (usize, usize, usize),
    dst: (&mut [f32], usize, usize),
    lhs: &PackedLhs,
    rhs: View,
    accumulate: bool,
    threads: usize,
    scratch: &mut Scratch,
) {
    let dst = (as_uninit(dst.0), dst.1, dst.2);
    product(
        dims,
        dst,
        lhs,
        view(dims, rhs),
        accumulate,
        threads,
        scratch,
    )
}

/// [`gemm`] into a destination that may be uninitialised (`dst :=` the product, never read):
/// afterwards every value `dst[i·rs + j·cs]`, `i < M`, `j < N`, is initialised (a
/// convolution's output needs no zero-filling pass first).
///
/// Panics as [`gemm`] does.
pub(crate) fn gemm_uninit(
    dims: (usize, usize, usize),
    dst: (&mut [MaybeUninit<f32>], usize, usize),
    lhs: &PackedLhs,
    rhs: View,
    threads: usize,
    scratch: &mut Scratch,
) {
    product(dims, dst, lhs, view(dims, rhs), false, threads, scratch)
}

/// `rhs` (K x N) as a product's right operand, its bounds checked.
fn view((_, n, k): (usize, usize, usize), rhs: View) -> Rhs {
    let (r, rrs, rcs) = rhs;
    assert!(
        n * k == 0 || (k - 1) * rrs + (n - 1) * rcs < r.len(),
        "bf16 gemm: operands out of bounds"
    );
    Rhs::View(rhs)
}

/// `d` as values that may be uninitialised: the products write only initialised values into
/// it, so it stays initialised.
fn as_uninit(d: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout; nothing writes an uninitialised value
    // through the result (the products write only sums), so `d` stays valid for `f32`.
    unsafe { std::slice::from_raw_parts_mut(d.as_mut_ptr().cast(), d.len()) }
}

/// [`gemm`] with a right operand packed by its producer as `layout` says (the same bits as
/// [`gemm`] of the float32 values it was packed from, rounded the same way: the same products,
/// summed in the same order).
///
/// Panics if [`available`] is false, `rhs` is shorter than the layout or the layout is not the
/// operand's.
pub(crate) fn gemm_packed(
    dims: (usize, usize, usize),
    dst: (&mut [f32], usize, usize),
    lhs: &PackedLhs,
    (rhs, layout): (&[u32], RhsLayout),
    accumulate: bool,
    threads: usize,
    scratch: &mut Scratch,
) {
    let (_, n, k) = dims;
    assert!(
        RhsLayout::new(k, n) == Some(layout) && rhs.len() >= layout.len(),
        "bf16 gemm: packed rhs {layout:?} ({} values) is not a {k}x{n} operand's",
        rhs.len()
    );
    let rhs = Rhs::Packed(rhs, layout);
    let dst = (as_uninit(dst.0), dst.1, dst.2);
    product(dims, dst, lhs, rhs, accumulate, threads, scratch)
}

/// [`gemm_uninit`] of a right operand that packs its own blocks ([`PackRhs`]): the same bits
/// as [`gemm_uninit`] of the float32 operand it stands for.
///
/// Panics as [`gemm`] does.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn gemm_uninit_produced(
    dims: (usize, usize, usize),
    dst: (&mut [MaybeUninit<f32>], usize, usize),
    lhs: &PackedLhs,
    rhs: &dyn PackRhs,
    threads: usize,
    scratch: &mut Scratch,
) {
    let (_, n, k) = dims;
    assert!(
        rhs.dims() == (k, n),
        "bf16 gemm: a produced {:?} right operand is not {k}x{n}",
        rhs.dims()
    );
    product(dims, dst, lhs, Rhs::Produced(rhs), false, threads, scratch)
}

/// The product into `dst`, which may be uninitialised unless `accumulate`: a value is read
/// only where `accumulate` or after this product wrote it (its first block of `k` pairs
/// writes every value of `dst` it reaches).
fn product(
    (m, n, k): (usize, usize, usize),
    dst: (&mut [MaybeUninit<f32>], usize, usize),
    lhs: &PackedLhs,
    rhs: Rhs,
    accumulate: bool,
    threads: usize,
    scratch: &mut Scratch,
) {
    #[cfg(target_arch = "x86_64")]
    assert!(available(), "bf16 gemm: this CPU lacks AVX512-BF16");
    assert!(
        lhs.m == m && lhs.k == k,
        "bf16 gemm: packed lhs is {}x{}, not {m}x{k}",
        lhs.m,
        lhs.k
    );
    let (d, drs, dcs) = dst;
    if m * n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| (0..n).for_each(|j| d[i * drs + j * dcs] = MaybeUninit::new(0.0)));
        }
        return;
    }
    assert!(
        (m - 1) * drs + (n - 1) * dcs < d.len(),
        "bf16 gemm: operands out of bounds"
    );
    let mr = lhs.kernel.rows();
    let tiles = m.div_ceil(mr);
    let rows_apart = dcs * (n - 1) < drs;
    if threads <= 1 || tiles < 2 || !rows_apart {
        gemm_tiles(
            (m, n, k),
            0..tiles,
            (d, drs, dcs),
            lhs,
            rhs,
            accumulate,
            scratch,
        );
        return;
    }
    // Row tiles in `threads` contiguous shares; with rows apart, each share owns its rows of
    // `dst`.
    let share = tiles.div_ceil(threads);
    let mut parts = Vec::new();
    let mut rest = d;
    let mut start = 0;
    while start < tiles {
        let end = (start + share).min(tiles);
        let rows_end = (end * mr).min(m);
        let (part, tail) = if end == tiles {
            (rest, &mut [][..])
        } else {
            rest.split_at_mut((rows_end - start * mr) * drs)
        };
        parts.push((start..end, part));
        rest = tail;
        start = end;
    }
    parts.into_par_iter().for_each(|(range, part)| {
        let mut scratch = Scratch::default();
        let first_row = range.start * mr;
        // `part` starts at row `first_row`; shift the tile numbers to it.
        gemm_tiles_from(
            (m, n, k),
            range,
            first_row,
            (part, drs, dcs),
            lhs,
            rhs,
            accumulate,
            &mut scratch,
        );
    });
}

fn gemm_tiles(
    dims: (usize, usize, usize),
    tiles: std::ops::Range<usize>,
    dst: (&mut [MaybeUninit<f32>], usize, usize),
    lhs: &PackedLhs,
    rhs: Rhs,
    accumulate: bool,
    scratch: &mut Scratch,
) {
    gemm_tiles_from(dims, tiles, 0, dst, lhs, rhs, accumulate, scratch)
}

/// The row tiles `tiles` of the product, `dst` starting at row `first_row`.
#[allow(clippy::too_many_arguments)]
fn gemm_tiles_from(
    (m, n, k): (usize, usize, usize),
    tiles: std::ops::Range<usize>,
    first_row: usize,
    (d, drs, dcs): (&mut [MaybeUninit<f32>], usize, usize),
    lhs: &PackedLhs,
    rhs: Rhs,
    accumulate: bool,
    scratch: &mut Scratch,
) {
    if lhs.kernel == Kernel::Amx {
        let (tiles, dst) = ((tiles, first_row), (d, drs, dcs));
        return amx_tiles_from((m, n, k), tiles, dst, lhs, rhs, accumulate, scratch);
    }
    let nv = vectors_for(n);
    let nr = 16 * nv;
    let kp = lhs.pairs();
    let kc_max = (PANEL_BYTES / (4 * nr)).max(1);
    scratch.tile.resize(MR * nr, 0.0);
    let mut p0 = 0;
    loop {
        let kc = kc_max.min(kp - p0);
        let load = accumulate || p0 > 0;
        // A float32 operand is packed [`ROW_PANELS`] panels at a time, each group multiplied
        // while it is still in the L2 cache.
        let (group, groups) = match rhs {
            Rhs::View(_) | Rhs::Produced(_) => (ROW_PANELS * nr, n.div_ceil(ROW_PANELS * nr)),
            Rhs::Packed(..) => (n, 1),
        };
        for g in 0..groups {
            let g0 = g * group;
            let blocks = match rhs {
                Rhs::View((b, rs, cs)) => {
                    let gn = group.min(n - g0);
                    let view = (&b[g0 * cs..], rs, cs);
                    pack_rhs((k, gn), view, (p0, kc, kc), nr, &mut scratch.rhs);
                    &scratch.rhs[..gn.div_ceil(nr) * kc * nr]
                }
                Rhs::Produced(producer) => {
                    let gn = group.min(n - g0);
                    producer.pack((p0, kc, kc), (g0, gn), nr, &mut scratch.rhs);
                    &scratch.rhs[..gn.div_ceil(nr) * kc * nr]
                }
                // One block of every pair (the layout's promise, checked by `gemm_packed`).
                Rhs::Packed(packed, layout) => &packed[..layout.len()],
            };
            for (panel, block) in blocks.chunks_exact(kc * nr).enumerate() {
                let col0 = g0 + panel * nr;
                let cols = nr.min(n - col0);
                for t in tiles.clone() {
                    let row0 = t * MR - first_row;
                    let rows = MR.min(m - t * MR);
                    let a = lhs.data[(t * kp + p0) * MR..].as_ptr();
                    let (dst, at, buf) = ((&mut *d, drs, dcs), (row0, col0), &mut scratch.tile);
                    on_block(dst, at, (rows, cols), (MR, nr), buf, load, |c, rs| {
                        // SAFETY: `available()` was asserted; `a` has `kc` pairs of MR rows left in
                        // the packed tile, `block` `kc` pairs of `nr` columns; `c` reaches MR rows
                        // of `nr` values at stride `rs` ([`on_block`]).
                        unsafe {
                            match nv {
                                1 => tile::<1>(kc, a, block.as_ptr(), c, rs, load),
                                _ => tile::<2>(kc, a, block.as_ptr(), c, rs, load),
                            }
                        }
                    });
                }
            }
        }
        p0 += kc;
        if p0 >= kp {
            break;
        }
    }
}

/// Runs `kernel` on the accumulators of one tile: `mr` rows by `nr` columns of `dst` from
/// (`row0`, `col0`), of which `rows` x `cols` lie inside the product. `kernel` gets (pointer,
/// row stride): straight into `dst` where the tile is whole and its rows are contiguous, else
/// the scratch `tile` (`mr · nr` values), filled from `dst` first when `load` (the rows and
/// columns outside the product are then stale sums, never stored) and copied back after.
/// `dst`'s values in the tile must be initialised when `load` (the kernel reads them then).
fn on_block(
    (d, drs, dcs): (&mut [MaybeUninit<f32>], usize, usize),
    (row0, col0): (usize, usize),
    (rows, cols): (usize, usize),
    (mr, nr): (usize, usize),
    tile: &mut [f32],
    load: bool,
    kernel: impl FnOnce(*mut f32, usize),
) {
    if dcs == 1 && rows == mr && cols == nr {
        return kernel(d[row0 * drs + col0..].as_mut_ptr().cast(), drs);
    }
    // The copies run along `dst`'s contiguous direction where it has one: a row's `cols`
    // values at once where its columns are contiguous (a partial tile), else column by column
    // (for a transposed destination, `drs == 1`, each column's `rows` values contiguous; row
    // by row, every value lay a whole column from the last, one cache line touched per value).
    let at = |i: usize, j: usize| (row0 + i) * drs + (col0 + j) * dcs;
    if load {
        if dcs == 1 {
            for i in 0..rows {
                let src = &d[at(i, 0)..at(i, 0) + cols];
                for (t, v) in tile[i * nr..i * nr + cols].iter_mut().zip(src) {
                    // SAFETY: with `load`, the tile's values are initialised (the caller's
                    // promise).
                    *t = unsafe { v.assume_init() };
                }
            }
        } else {
            for j in 0..cols {
                for i in 0..rows {
                    // SAFETY: as above.
                    tile[i * nr + j] = unsafe { d[at(i, j)].assume_init() };
                }
            }
        }
    }
    kernel(tile.as_mut_ptr(), nr);
    if dcs == 1 {
        for i in 0..rows {
            let dst = &mut d[at(i, 0)..at(i, 0) + cols];
            for (o, &v) in dst.iter_mut().zip(&tile[i * nr..i * nr + cols]) {
                *o = MaybeUninit::new(v);
            }
        }
        return;
    }
    for j in 0..cols {
        for i in 0..rows {
            d[at(i, j)] = MaybeUninit::new(tile[i * nr + j]);
        }
    }
}

/// [`gemm_tiles_from`] on AMX's tiles ([`Kernel::Amx`]; `lhs` packed for it): the row tiles
/// `tiles.0` of the product, `dst` starting at row `tiles.1`. In tests on a CPU without AMX,
/// the same steps in plain Rust ([`amx_tile_any`]).
fn amx_tiles_from(
    (m, n, k): (usize, usize, usize),
    (tiles, first_row): (std::ops::Range<usize>, usize),
    (d, drs, dcs): (&mut [MaybeUninit<f32>], usize, usize),
    lhs: &PackedLhs,
    rhs: Rhs,
    accumulate: bool,
    scratch: &mut Scratch,
) {
    let hardware = amx_available();
    #[cfg(not(test))]
    assert!(hardware, "bf16 gemm: this CPU or process lacks AMX");
    #[cfg(test)]
    let hardware = hardware && !lhs.emulate;
    let nv = vectors_for(n);
    let nr = 16 * nv;
    let kp = lhs.pairs();
    let groups = kp.div_ceil(16);
    // Whole steps of sixteen.
    let kc_max = AMX_PAIRS;
    scratch.tile.resize(AMX_MR * nr, 0.0);
    // SAFETY: `amx_available()` asked Linux for the tiles.
    #[cfg(target_arch = "x86_64")]
    let _tiles = hardware.then(|| unsafe { Tiles::configure() });
    let mut p0 = 0;
    loop {
        let kc = kc_max.min(kp - p0);
        // Whole steps of sixteen pairs, zero past `kc` (the left operand is zero there too).
        let depth = kc.next_multiple_of(16);
        let load = accumulate || p0 > 0;
        // Groups of panels of about AMX_GROUP_BYTES, a float32 operand packed a group at a
        // time, while the row tiles pass over it.
        let per_group = (AMX_GROUP_BYTES / (4 * depth * nr)).max(1);
        for g0 in (0..n).step_by(per_group * nr) {
            let gn = (per_group * nr).min(n - g0);
            let blocks = match rhs {
                Rhs::View((b, rs, cs)) => {
                    let view = (&b[g0 * cs..], rs, cs);
                    pack_rhs((k, gn), view, (p0, kc, depth), nr, &mut scratch.rhs);
                    &scratch.rhs[..gn.div_ceil(nr) * depth * nr]
                }
                Rhs::Produced(producer) => {
                    producer.pack((p0, kc, depth), (g0, gn), nr, &mut scratch.rhs);
                    &scratch.rhs[..gn.div_ceil(nr) * depth * nr]
                }
                // One block of every pair (the layout's promise, checked by `gemm_packed`).
                Rhs::Packed(packed, layout) => {
                    debug_assert_eq!((layout.pairs(), p0), (kc, 0));
                    let panels = &packed[g0 * kc..][..gn.div_ceil(nr) * kc * nr];
                    if depth == kc {
                        panels
                    } else {
                        // Each panel copied, its pairs past `kc` zero, in one buffer sized
                        // once (grown only, as the packed blocks' is).
                        let len = gn.div_ceil(nr) * depth * nr;
                        if scratch.rhs.len() < len {
                            scratch.rhs.resize(len);
                        }
                        let padded = &mut scratch.rhs[..len];
                        for (panel, to) in panels
                            .chunks_exact(kc * nr)
                            .zip(padded.chunks_exact_mut(depth * nr))
                        {
                            let (values, pad) = to.split_at_mut(kc * nr);
                            values.copy_from_slice(panel);
                            pad.fill(0);
                        }
                        &scratch.rhs[..len]
                    }
                }
            };
            for t in tiles.clone() {
                let row0 = t * AMX_MR - first_row;
                let rows = AMX_MR.min(m - t * AMX_MR);
                let a = lhs.data[(t * groups + p0 / 16) * 16 * AMX_MR..].as_ptr();
                for (panel, block) in blocks.chunks_exact(depth * nr).enumerate() {
                    let col0 = g0 + panel * nr;
                    let cols = nr.min(n - col0);
                    let (dst, at, buf) = ((&mut *d, drs, dcs), (row0, col0), &mut scratch.tile);
                    on_block(dst, at, (rows, cols), (AMX_MR, nr), buf, load, |c, rs| {
                        // SAFETY: the tiles are configured on this thread (with `hardware`); `a`
                        // has `depth / 16` steps of AMX_MR rows by sixteen pairs left in the
                        // packed tile (`p0 + depth <= 16·groups`), `block` `depth` pairs of `nr`
                        // columns; `c` reaches AMX_MR rows of `nr` values at stride `rs`
                        // ([`on_block`]).
                        unsafe {
                            let b = block.as_ptr();
                            match nv {
                                1 => amx_step::<1>(hardware, depth / 16, a, b, (c, rs), load),
                                _ => amx_step::<2>(hardware, depth / 16, a, b, (c, rs), load),
                            }
                        }
                    });
                }
            }
        }
        p0 += kc;
        if p0 >= kp {
            break;
        }
    }
}

/// [`amx_tile`] on the tiles where `hardware`, else in plain Rust ([`amx_tile_any`]).
///
/// # Safety
/// As [`amx_tile`].
unsafe fn amx_step<const NV: usize>(
    hardware: bool,
    steps: usize,
    a: *const u32,
    b: *const u32,
    c: (*mut f32, usize),
    load: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if hardware {
        return amx_tile::<NV>(steps, a, b, c, load);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = hardware;
    amx_tile_any::<NV>(steps, a, b, c, load)
}

/// [`amx_tile`] in plain Rust: the same operands read in the same layouts, each pair's two
/// products added in order (no flushing of subnormals). Only tests run it, on CPUs without
/// AMX, where [`Kernel::best`] never packs for AMX.
///
/// # Safety
/// As [`amx_tile`], without the tiles.
unsafe fn amx_tile_any<const NV: usize>(
    steps: usize,
    a: *const u32,
    b: *const u32,
    (c, rs): (*mut f32, usize),
    load: bool,
) {
    let bf = |v: u32| f32::from_bits(v << 16);
    for i in 0..AMX_MR {
        for j in 0..16 * NV {
            let mut acc = if load { *c.add(i * rs + j) } else { 0.0 };
            for g in 0..steps {
                for q in 0..16 {
                    let x = *a.add((g * AMX_MR + i) * 16 + q);
                    let y = *b.add((g * 16 + q) * 16 * NV + j);
                    acc += bf(x & 0xffff) * bf(y & 0xffff);
                    acc += bf(x >> 16) * bf(y >> 16);
                }
            }
            *c.add(i * rs + j) = acc;
        }
    }
}

/// This thread's AMX tile registers configured for [`amx_tile`] (palette 1, eight tiles of 16
/// rows by 64 bytes) until dropped (`tilerelease`), on the thread that configured them (not
/// `Send`).
#[cfg(target_arch = "x86_64")]
struct Tiles(std::marker::PhantomData<*const ()>);

#[cfg(target_arch = "x86_64")]
impl Tiles {
    /// # Safety
    /// The CPU has AMX and Linux granted this process the tiles ([`amx_available`]).
    unsafe fn configure() -> Self {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut config = Config([0; 64]);
        config.0[0] = 1;
        for t in 0..8 {
            config.0[16 + 2 * t] = 64;
            config.0[48 + t] = 16;
        }
        std::arch::asm!(
            "ldtilecfg [{}]",
            in(reg) config.0.as_ptr(),
            options(nostack, readonly, preserves_flags)
        );
        Tiles(std::marker::PhantomData)
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured (`configure`); releasing them touches no memory.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
    }
}

/// One accumulator tile on AMX: `c` (AMX_MR x 16·NV, row stride `rs`) := `c` (if `load`) + the
/// product of `steps` sixteens of pairs of the packed tile `a` ([`PackedLhs`]'s AMX layout) and
/// panel `b` (16·NV columns). Tiles 0-3 accumulate (rows 0-15 and 16-31, by columns 0-15 and
/// 16-31), 4-5 hold the left operand's two row halves, 6-7 the panel's column halves.
///
/// # Safety
/// The tiles are configured ([`Tiles`]); `a` holds `steps · 16 · AMX_MR` values, `b` `steps ·
/// 16` rows of `16·NV` values, `c` AMX_MR rows of `16·NV` values at stride `rs`.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_tile<const NV: usize>(
    steps: usize,
    a: *const u32,
    b: *const u32,
    (c, rs): (*mut f32, usize),
    load: bool,
) {
    use std::arch::asm;
    let (cs, bs, lhs_stride) = (4 * rs, 64 * NV, 64usize);
    let (c0, c2) = (c, c.add(16 * rs));
    // Unused (and maybe past `c`'s end) where NV is 1.
    let (c1, c3) = (c0.wrapping_add(16), c2.wrapping_add(16));
    match (load, NV) {
        (true, 1) => asm!(
            "tileloadd tmm0, [{c0} + {s}*1]",
            "tileloadd tmm2, [{c2} + {s}*1]",
            c0 = in(reg) c0, c2 = in(reg) c2, s = in(reg) cs,
            options(nostack, readonly, preserves_flags)
        ),
        (true, _) => asm!(
            "tileloadd tmm0, [{c0} + {s}*1]",
            "tileloadd tmm1, [{c1} + {s}*1]",
            "tileloadd tmm2, [{c2} + {s}*1]",
            "tileloadd tmm3, [{c3} + {s}*1]",
            c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) cs,
            options(nostack, readonly, preserves_flags)
        ),
        (false, _) => asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem, preserves_flags)
        ),
    }
    for g in 0..steps {
        let (a0, b0) = (a.add(g * 16 * AMX_MR), b.add(g * 16 * 16 * NV));
        let (a1, b1) = (a0.add(16 * 16), b0.add(16));
        if NV == 1 {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0,
                sa = in(reg) lhs_stride, sb = in(reg) bs,
                options(nostack, readonly, preserves_flags)
            );
        } else {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                sa = in(reg) lhs_stride, sb = in(reg) bs,
                options(nostack, readonly, preserves_flags)
            );
        }
    }
    if NV == 1 {
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c2} + {s}*1], tmm2",
            c0 = in(reg) c0, c2 = in(reg) c2, s = in(reg) cs,
            options(nostack, preserves_flags)
        );
    } else {
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) cs,
            options(nostack, preserves_flags)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Lines` starts at a 64-byte boundary however it grows, keeps its values, zero-fills new
    /// ones (also after shrinking), and its clone does too.
    #[test]
    fn lines_are_aligned_and_keep_their_values() {
        let mut l = Lines::default();
        for (step, len) in [5usize, 40, 3, 1000, 17, 4096, 0, 64]
            .into_iter()
            .enumerate()
        {
            let old: Vec<u32> = l.to_vec();
            l.resize(len);
            assert_eq!(l.len(), len);
            assert_eq!(l.as_ptr() as usize % 64, 0, "length {len}");
            let keep = old.len().min(len);
            assert_eq!(&l[..keep], &old[..keep], "length {len}");
            assert!(l[keep..].iter().all(|&v| v == 0), "length {len}");
            l.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (i + 7 * step) as u32 | 1);
            let c = l.clone();
            assert_eq!((c.as_ptr() as usize % 64, &c[..]), (0, &l[..]));
        }
        l.clear();
        l.resize(3);
        assert_eq!(&l[..], &[0, 0, 0]);
        // Growing a little at a time reallocates a few times, not at every step.
        let mut moves = 0;
        for len in 4..5000 {
            let at = l.as_ptr();
            l.resize(len);
            moves += usize::from(l.as_ptr() != at);
        }
        assert!(moves <= 12, "{moves} reallocations");
    }

    fn round(v: f32) -> f32 {
        f32::from_bits(bf16_bits(v) << 16)
    }

    /// The product in f64 of the bf16-rounded operands.
    fn reference((m, n, k): (usize, usize, usize), a: View, b: View) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| {
                        round(a.0[i * a.1 + p * a.2]) as f64 * round(b.0[p * b.1 + j * b.2]) as f64
                    })
                    .sum();
            }
        }
        c
    }

    use crate::test_values::values;

    /// Both kernels, AMX's on its tiles where the CPU has them and its steps in plain Rust
    /// ([`amx_tile_any`]: the layouts and edges, not the instructions) everywhere: (kernel,
    /// emulated).
    fn kernels() -> Vec<(Kernel, bool)> {
        if !amx_available() {
            eprintln!("AMX's kernel in plain Rust only: this CPU (or process) lacks AMX-BF16");
            return vec![(Kernel::Avx512, false), (Kernel::Amx, true)];
        }
        vec![
            (Kernel::Avx512, false),
            (Kernel::Amx, false),
            (Kernel::Amx, true),
        ]
    }

    /// `a` (M x K) packed for `kernel`, its products in plain Rust where `emulate`.
    fn packed((kernel, emulate): (Kernel, bool), m: usize, k: usize, a: View) -> PackedLhs {
        let mut packed = PackedLhs {
            emulate,
            ..PackedLhs::default()
        };
        packed.pack_for(kernel, m, k, a);
        packed
    }

    /// A run's pairs and two rows' pairs in AVX512-BF16 (the vector loops, then the masked
    /// tails) have the bits of `pair` one by one: every length from 0 to 70 (odd ones end on a zero), subnormals,
    /// infinities, NaN and values that round up; nothing written past the run's pairs.
    #[test]
    fn pair_runs_have_the_bits_of_the_pairs_one_by_one() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return;
        }
        let special = [
            1e-40f32,
            -3e-39,
            f32::INFINITY,
            f32::NAN,
            1.0 + 1.0 / 256.0,
            -0.0,
            65504.5,
        ];
        for len in 0..=70usize {
            let mut src = values(len, len as u32 + 11);
            // The special values at the start (the vector loop's, or the tail's for a short
            // run) and in the last 31 (the masked tail's).
            for (i, v) in special.iter().enumerate() {
                for at in [i * 5, len.saturating_sub(1 + i * 4)] {
                    if at < len {
                        src[at] = *v;
                    }
                }
            }
            let pairs = len.div_ceil(2);
            let mut out = vec![0xdead_beefu32; pairs + 3];
            super::pair_run(&src, &mut out[..pairs]);
            let want: Vec<u32> = (0..pairs)
                .map(|p| pair(src[2 * p], src.get(2 * p + 1).copied().unwrap_or(0.0)))
                .collect();
            assert_eq!(&out[..pairs], &want[..], "length {len}");
            assert!(
                out[pairs..].iter().all(|&v| v == 0xdead_beef),
                "length {len}"
            );
            // Two rows paired value by value, with and without the second row.
            let r1: Vec<f32> = src.iter().rev().copied().collect();
            for second in [Some(&r1[..]), None] {
                let mut out = vec![0xdead_beefu32; len + 3];
                super::pack_rows(&src, second, &mut out[..len]);
                let want: Vec<u32> = (0..len)
                    .map(|j| pair(src[j], second.map_or(0.0, |r| r[j])))
                    .collect();
                assert_eq!(&out[..len], &want[..], "rows of {len}");
                assert!(
                    out[len..].iter().all(|&v| v == 0xdead_beef),
                    "rows of {len}"
                );
            }
        }
    }

    #[test]
    fn rounding_matches_half() {
        for v in [
            0.0f32,
            -0.0,
            1.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            2.718_281_7,
            -2.7e-3,
            1e38,
            f32::INFINITY,
            f32::MIN_POSITIVE,
            1.0 + f32::EPSILON,
        ] {
            assert_eq!(
                bf16_bits(v) as u16,
                half::bf16::from_f32(v).to_bits(),
                "{v}"
            );
        }
        assert!(f32::from_bits(bf16_bits(f32::NAN) << 16).is_nan());
    }

    /// Float32 subnormals in `v` (every seventh value from the third): the largest one, which
    /// rounds to the smallest normal bf16 unless flushed, others of both signs.
    fn subnormals(v: &mut [f32]) {
        let bits = [0x007f_ffff, 0x807f_8000, 0x0000_0001, 0x8040_0000];
        for (i, x) in v.iter_mut().skip(2).step_by(7).enumerate() {
            *x = f32::from_bits(bits[i % bits.len()]);
        }
    }

    /// Both packed operands against the pairs written out one by one (the vector packers
    /// transpose sixteen by sixteen, or eight rows; every edge of those blocks here, a NaN and
    /// subnormals, which every path flushes to zero as `vcvtneps2bf16` does).
    #[test]
    fn packed_operands_equal_the_pairs_one_by_one() {
        if !available() {
            eprintln!("no AVX512-BF16 on this CPU: only the portable packing is checked");
        }
        let at = |v: &[f32], i: usize, len: usize| if i < len { v[i] } else { 0.0 };
        // Buffers reused from case to case, as in a product: nothing stale may remain.
        let mut packed = PackedLhs::default();
        for kernel in [Kernel::Avx512, Kernel::Amx] {
            for (rows, k) in [
                (1, 1),
                (8, 32),
                (13, 33),
                (16, 64),
                (9, 100),
                (24, 257),
                (3, 31),
                (40, 70),
                // A last sixteen pairs whole (the first 16 values), or of one or two pairs past it.
                (5, 16),
                (7, 48),
                (6, 50),
                // Tiles packed across the pool (PAR_PACK values and more).
                (70, 1000),
            ] {
                // Rows along `k` (two row strides), and `k` along rows (the transposed view).
                for stride in [k, k + 5, 0] {
                    let transposed = stride == 0;
                    let len = if transposed { rows * k } else { rows * stride };
                    let mut a = values(len, (rows + k) as u32);
                    let last = a.len() - 1;
                    subnormals(&mut a);
                    a[stride.min(last)] = f32::NAN;
                    let view = match transposed {
                        true => (&a[..], 1, rows),
                        false => (&a[..], stride, 1),
                    };
                    packed.pack_for(kernel, rows, k, view);
                    let kp = k.div_ceil(2);
                    let (mr, groups) = (kernel.rows(), kp.div_ceil(16));
                    // Pairs per row as laid out: past K up to a whole sixteen on AMX.
                    let depth = match kernel {
                        Kernel::Avx512 => kp,
                        Kernel::Amx => 16 * groups,
                    };
                    let tiles = rows.div_ceil(mr);
                    assert_eq!(packed.data.len(), tiles * depth * mr);
                    for t in 0..tiles {
                        for p in 0..depth {
                            for i in 0..mr {
                                let row = t * mr + i;
                                let want = if row < rows && p < kp {
                                    let r: Vec<f32> = match transposed {
                                        true => (0..k).map(|c| a[c * rows + row]).collect(),
                                        false => a[row * stride..row * stride + k].to_vec(),
                                    };
                                    pair(r[2 * p], at(&r, 2 * p + 1, k))
                                } else {
                                    0
                                };
                                let at = match kernel {
                                    Kernel::Avx512 => (t * kp + p) * MR + i,
                                    Kernel::Amx => {
                                        ((t * groups + p / 16) * AMX_MR + i) * 16 + p % 16
                                    }
                                };
                                assert_eq!(
                                    packed.data[at], want,
                                    "{kernel:?} lhs {rows}x{k} stride {stride}: tile {t} pair {p} row {i}"
                                );
                            }
                        }
                    }
                }
            }
        }
        let mut out = Lines::default();
        for (k, n) in [
            (1, 1),
            (32, 16),
            (33, 17),
            (64, 32),
            (100, 40),
            (257, 15),
            (70, 48),
            // Rows packed [`ROW_PANELS`] panels at a time: several groups, a part one last.
            (33, 2 * 32 * ROW_PANELS + 45),
        ] {
            // Columns along `k` (the by-column packing), and rows along `n` (row stride n + 2).
            for by_rows in [false, true] {
                let stride = if by_rows { n + 2 } else { k + 3 };
                let mut b = values(stride * if by_rows { k } else { n }, (n + 3 * k) as u32);
                let last = b.len() - 1;
                subnormals(&mut b);
                b[(stride + 1).min(last)] = f32::NAN;
                let (rs, cs) = if by_rows { (stride, 1) } else { (1, stride) };
                for nr in [16, 32] {
                    let kp = k.div_ceil(2);
                    let blocks = [(0, kp), (0, kp.min(20)), (kp / 3, kp - kp / 3)];
                    for ((p0, kc), pad) in blocks.into_iter().flat_map(|b| [(b, false), (b, true)])
                    {
                        // AMX's blocks: whole sixteens of pairs, zero past `kc`.
                        let depth = if pad { kc.next_multiple_of(16) } else { kc };
                        // Stale values past a longer block's end stay as they were.
                        let before = out.clone();
                        pack_rhs((k, n), (&b, rs, cs), (p0, kc, depth), nr, &mut out);
                        let len = n.div_ceil(nr) * depth * nr;
                        assert_eq!(out.len(), len.max(before.len()));
                        assert!(out[len..] == before[len.min(before.len())..]);
                        for panel in 0..n.div_ceil(nr) {
                            for p in 0..depth {
                                for j in 0..nr {
                                    let col = panel * nr + j;
                                    let even = 2 * (p0 + p);
                                    let want = if col < n && p < kc {
                                        let c: Vec<f32> =
                                            (0..k).map(|r| b[r * rs + col * cs]).collect();
                                        pair(c[even], at(&c, even + 1, k))
                                    } else {
                                        0
                                    };
                                    let got = out[(panel * depth + p) * nr + j];
                                    assert_eq!(got, want, "rhs {k}x{n} by rows {by_rows} nr {nr} from {p0}: panel {panel} pair {p} column {j}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_prepacked_operand_gives_the_bits_of_the_float32_one() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return;
        }
        // One panel or several, a last panel part full, odd K, K at the deepest one block holds.
        for &(m, n, k) in &[
            (8, 16, 2),
            (13, 37, 9),
            (16, 100, 64),
            (9, 8, 511),
            (24, 70, 256),
            (70, 40, 100),
            // The float32 operand packed and multiplied [`ROW_PANELS`] panels at a time (two
            // groups, the last part full) against the one prepacked whole: the same bits.
            (9, 32 * ROW_PANELS + 77, 200),
            // On AMX, the panels in groups of [`AMX_GROUP_BYTES`]: three (the last part full),
            // and two of panels padded to a whole step.
            (13, 1200, 256),
            (9, 4200, 9),
        ] {
            let layout = RhsLayout::new(k, n).expect("fits one block");
            let b = values(k * n, (n + k) as u32);
            let mut packed = vec![0u32; layout.len()];
            layout.pack((&b, n, 1), &mut packed);
            let a = values(m * k, 3);
            for (kernel, threads) in kernels().into_iter().flat_map(|k| [(k, 1), (k, 2)]) {
                let lhs = self::packed(kernel, m, k, (&a, k, 1));
                let (mut want, mut got) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                let mut scratch = Scratch::default();
                gemm(
                    (m, n, k),
                    (&mut want, n, 1),
                    &lhs,
                    (&b, n, 1),
                    false,
                    threads,
                    &mut scratch,
                );
                gemm_packed(
                    (m, n, k),
                    (&mut got, n, 1),
                    &lhs,
                    (&packed, layout),
                    false,
                    threads,
                    &mut scratch,
                );
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{kernel:?} {m}x{n}x{k} threads {threads}"
                );
                // The tiles and the plain Rust steps: the same products, sums in other orders.
                if kernel.0 == Kernel::Amx && !kernel.1 {
                    let emulated = self::packed((Kernel::Amx, true), m, k, (&a, k, 1));
                    let mut plain = vec![f32::NAN; m * n];
                    let dst = (&mut plain[..], n, 1);
                    gemm(
                        (m, n, k),
                        dst,
                        &emulated,
                        (&b, n, 1),
                        false,
                        threads,
                        &mut scratch,
                    );
                    for (i, (p, g)) in plain.iter().zip(&got).enumerate() {
                        let tol = 1e-5 * (k as f32).sqrt() * (1.0 + g.abs());
                        assert!((p - g).abs() <= tol, "{m}x{n}x{k} [{i}]: {p} against {g}");
                    }
                }
            }
        }
        // Too deep for one block: no layout.
        assert_eq!(RhsLayout::new(258, 40), None);
        assert!(RhsLayout::new(258, 16).is_some());
    }

    #[test]
    fn products_match_the_rounded_operands_in_every_layout_and_edge() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return;
        }
        // Odd K, edges in M and N, K blocks, both operand layouts, accumulation, threads; one
        // scratch for all, as a layer reuses it: nothing stale may remain.
        let mut scratch = Scratch::default();
        for &(m, n, k) in &[
            (1, 1, 1),
            (8, 156, 54),
            (8, 16, 2),
            (13, 37, 9),
            (64, 160, 576),
            (17, 100, 1001),
            (70, 16, 300),
            (9, 48, 3),
            (96, 64, 40),
            // A last block of one pair after 128 (panels of 32 columns).
            (33, 40, 258),
            // Two K blocks of a float32 operand packed and multiplied a group of
            // [`ROW_PANELS`] panels at a time: two groups, the last one part of a group.
            (9, 32 * ROW_PANELS + 77, 300),
            // On AMX: three K blocks of up to [`AMX_PAIRS`] (the last of three pairs), the
            // first two's panels in three groups of [`AMX_GROUP_BYTES`] (the last part full);
            // a shallow operand in two groups.
            (40, 301, 4 * AMX_PAIRS + 6),
            (33, 4200, 9),
            // Two K blocks on panels of 16 columns.
            (40, 16, 2 * AMX_PAIRS + 2),
        ] {
            for (transposed_a, transposed_b) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                for (kernel, threads) in kernels().into_iter().flat_map(|k| [(k, 1), (k, 2)]) {
                    let a = values(m * k, (m + 3 * k) as u32);
                    let b = values(k * n, (n + 7 * k) as u32);
                    let av = if transposed_a {
                        (&a[..], 1, m)
                    } else {
                        (&a[..], k, 1)
                    };
                    let bv = if transposed_b {
                        (&b[..], 1, k)
                    } else {
                        (&b[..], n, 1)
                    };
                    let want = reference((m, n, k), av, bv);
                    let lhs = packed(kernel, m, k, av);
                    let mut c = values(m * n, 5);
                    let before = c.clone();
                    gemm(
                        (m, n, k),
                        (&mut c, n, 1),
                        &lhs,
                        bv,
                        true,
                        threads,
                        &mut scratch,
                    );
                    for (i, (got, (w, c0))) in c.iter().zip(want.iter().zip(&before)).enumerate() {
                        let w = w + *c0 as f64;
                        let tol = 1e-5 * (k as f64).sqrt() + 1e-6 * w.abs();
                        assert!(
                            (*got as f64 - w).abs() < tol,
                            "{kernel:?} {m}x{n}x{k} {transposed_a} {transposed_b} [{i}]: {got} vs {w}"
                        );
                    }
                    // Overwriting, into a transposed destination.
                    let mut ct = vec![f32::NAN; m * n];
                    gemm(
                        (m, n, k),
                        (&mut ct, 1, m),
                        &lhs,
                        bv,
                        false,
                        threads,
                        &mut scratch,
                    );
                    for i in 0..m {
                        for j in 0..n {
                            let w = want[i * n + j];
                            assert!(
                                (ct[j * m + i] as f64 - w).abs()
                                    < 1e-5 * (k as f64).sqrt() + 1e-6 * w.abs()
                            );
                        }
                    }
                    // Adding into a transposed destination whose rows are also spread out
                    // (each value two apart, the columns 2m apart): the edge tiles' loads and
                    // stores column by column, the values between untouched.
                    let start = values(2 * m * n, 9);
                    let mut cp = start.clone();
                    gemm(
                        (m, n, k),
                        (&mut cp, 2, 2 * m),
                        &lhs,
                        bv,
                        true,
                        threads,
                        &mut scratch,
                    );
                    for i in 0..m {
                        for j in 0..n {
                            let at = 2 * i + 2 * m * j;
                            let w = want[i * n + j] + start[at] as f64;
                            let tol = 1e-5 * (k as f64).sqrt() + 1e-6 * w.abs();
                            assert!(
                                (cp[at] as f64 - w).abs() < tol,
                                "{kernel:?} {m}x{n}x{k} spread [{i}, {j}]: {} vs {w}",
                                cp[at]
                            );
                            assert_eq!(cp[at + 1].to_bits(), start[at + 1].to_bits());
                        }
                    }
                    // Into values that may be uninitialised (NaN sentinels here, and past the
                    // product): the bits of overwriting, every value in reach written, none
                    // past it.
                    let mut u = vec![MaybeUninit::new(f32::NAN); m * n + 3];
                    gemm_uninit((m, n, k), (&mut u, 1, m), &lhs, bv, threads, &mut scratch);
                    // SAFETY: every value of `u` was initialised (NaN), and stays so.
                    let u: Vec<f32> = u.iter().map(|v| unsafe { v.assume_init() }).collect();
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&u[..m * n]),
                        bits(&ct),
                        "{kernel:?} {m}x{n}x{k} uninit"
                    );
                    assert!(u[m * n..].iter().all(|v| v.is_nan()));
                }
            }
        }
    }
}
