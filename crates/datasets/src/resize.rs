//! Bilinear resizing exactly as Pillow does it for 8-bit images (`Image.resize(..., BILINEAR)`,
//! what torchvision's `Resize` and `RandomResizedCrop` call on PIL images): a separable
//! triangle filter widened when shrinking (antialiasing), fixed-point coefficients, two
//! passes (in Pillow 13's order: [`resize_bilinear`]), each rounded to u8.

use crate::U8Image;

/// Fixed-point precision of Pillow's 8-bit coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, number of taps, and the fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

/// The triangle (bilinear) filter with support 1.
fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing `in_size` to `out_size`.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, w) in k.iter_mut().enumerate().take(xmax) {
            *w = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (x, out) in row.iter_mut().enumerate().take(xmax) {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            *out = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        bounds,
        ksize,
        weights,
    }
}

/// Pillow's `clip8`: drop the fraction, clamp to u8.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes every channel of `img` to `out_h` x `out_w`, in Pillow 13's order of the passes:
/// the vertical pass first where the height loses more than twice as many rows as the width
/// loses columns (portraits taller than about 2:1 resized to a short side), else the
/// horizontal pass first, over only the rows the vertical pass reads. Each pass rounds to u8,
/// so the order changes pixels.
pub fn resize_bilinear(img: &U8Image, out_h: usize, out_w: usize) -> U8Image {
    let (c, h, w) = img.shape();
    if (h, w) == (out_h, out_w) {
        return img.clone();
    }
    let vert = coeffs(h, out_h);
    let horiz = (w != out_w).then(|| coeffs(w, out_w));
    let need_v = h != out_h;
    let vertical_first = h > out_h && (h - out_h) as i64 > (w as i64 - out_w as i64) * 2;
    let mut out = U8Image::zeros(c, out_h, out_w);
    for ch in 0..c {
        let src = img.plane(ch);
        let dst = &mut out.data[ch * out_h * out_w..(ch + 1) * out_h * out_w];
        match (&horiz, vertical_first) {
            (Some(hz), true) => {
                let mut rows = vec![0u8; out_h * w];
                vertical_pass(src, w, 0, &vert, &mut rows);
                horizontal_pass(&rows, w, 0..out_h, hz, dst);
            }
            (Some(hz), false) => {
                // The horizontal pass only computes the rows the vertical pass reads.
                let first_row = vert.bounds[0].0;
                let last_row = vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1;
                let mut rows = vec![0u8; (last_row - first_row) * out_w];
                horizontal_pass(src, w, first_row..last_row, hz, &mut rows);
                match need_v {
                    true => vertical_pass(&rows, out_w, first_row, &vert, dst),
                    false => dst.copy_from_slice(&rows[..out_h * out_w]),
                }
            }
            (None, _) => vertical_pass(src, w, 0, &vert, dst),
        }
    }
    out
}

/// Pillow's horizontal pass over the `rows` of `src` (rows `w` wide), into `dst` (one row of
/// `hz`'s output width per row).
fn horizontal_pass(
    src: &[u8],
    w: usize,
    rows: std::ops::Range<usize>,
    hz: &Coeffs,
    dst: &mut [u8],
) {
    let half = 1i32 << (PRECISION_BITS - 1);
    let out_w = hz.bounds.len();
    for (y, out) in rows.zip(dst.chunks_exact_mut(out_w)) {
        let line = &src[y * w..(y + 1) * w];
        for (xx, px) in out.iter_mut().enumerate() {
            let (xmin, n) = hz.bounds[xx];
            let k = &hz.weights[xx * hz.ksize..xx * hz.ksize + n];
            let acc = line[xmin..xmin + n]
                .iter()
                .zip(k)
                .fold(half, |a, (&p, &kw)| a + i32::from(p) * kw);
            *px = clip8(acc);
        }
    }
}

/// Pillow's vertical pass over `rows` (`row_w` wide, the first being row `row_offset` of the
/// image), into `dst` (one row per output row of `vt`).
fn vertical_pass(rows: &[u8], row_w: usize, row_offset: usize, vt: &Coeffs, dst: &mut [u8]) {
    let half = 1i32 << (PRECISION_BITS - 1);
    for (yy, line) in dst.chunks_exact_mut(row_w).enumerate() {
        let (ymin, n) = vt.bounds[yy];
        let k = &vt.weights[yy * vt.ksize..yy * vt.ksize + n];
        for (xx, px) in line.iter_mut().enumerate() {
            let acc = k.iter().enumerate().fold(half, |a, (y, &kw)| {
                a + i32::from(rows[(ymin + y - row_offset) * row_w + xx]) * kw
            });
            *px = clip8(acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() {
        let img = U8Image::new(1, 7, 9, vec![200; 63]).unwrap();
        for (h, w) in [(3, 4), (14, 18), (7, 4), (2, 9)] {
            let out = resize_bilinear(&img, h, w);
            assert_eq!(out.shape(), (1, h, w));
            assert!(out.data.iter().all(|&p| p == 200));
        }
    }

    #[test]
    fn halving_averages_pairs_like_pillow() {
        // Pillow 13: Image.frombytes("L", (4, 1), bytes([0, 100, 200, 50]))
        //     .resize((2, 1), Image.BILINEAR) gives [71, 121].
        let img = U8Image::new(1, 1, 4, vec![0, 100, 200, 50]).unwrap();
        let out = resize_bilinear(&img, 1, 2);
        assert_eq!(out.data, vec![71, 121]);
    }

    #[test]
    fn upscaling_interpolates() {
        let img = U8Image::new(1, 1, 2, vec![0, 100]).unwrap();
        let out = resize_bilinear(&img, 1, 4);
        assert_eq!(out.data, vec![0, 25, 75, 100]);
    }

    /// Pillow 13 `resize(.., BILINEAR)` of the 17x13 grey image `(37x + 91y + xy % 7) % 256`.
    const PILLOW_7X5: [u8; 35] = [
        101, 132, 125, 110, 138, 125, 109, 121, 114, 128, 127, 115, 135, 126, 132, 128, 111, 124,
        129, 113, 126, 146, 141, 127, 113, 126, 127, 117, 119, 139, 122, 117, 121, 125, 121,
    ];
    /// As above, resized to 9 wide and 20 high.
    const PILLOW_9X20: [u8; 180] = [
        24, 86, 155, 152, 40, 112, 181, 98, 56, 67, 130, 158, 110, 84, 157, 147, 93, 100, 123, 164,
        152, 74, 136, 186, 109, 99, 146, 165, 84, 102, 133, 155, 79, 110, 159, 128, 122, 78, 123,
        161, 119, 80, 149, 153, 103, 50, 112, 166, 165, 67, 135, 189, 116, 84, 109, 160, 91, 105,
        125, 157, 88, 108, 142, 158, 139, 75, 113, 161, 126, 76, 138, 156, 195, 72, 104, 166, 177,
        59, 129, 191, 139, 106, 107, 157, 95, 111, 120, 156, 94, 110, 90, 147, 148, 70, 106, 160,
        133, 70, 123, 147, 193, 75, 92, 163, 180, 61, 117, 179, 189, 128, 101, 152, 101, 115, 113,
        153, 96, 175, 103, 142, 158, 71, 100, 157, 143, 63, 86, 137, 195, 86, 91, 160, 184, 72,
        105, 129, 184, 138, 98, 146, 113, 120, 107, 163, 157, 182, 102, 133, 162, 77, 91, 149, 171,
        127, 84, 131, 193, 94, 90, 151, 183, 80, 107, 113, 138, 117, 97, 139, 122, 123, 97, 94,
        156, 139, 38, 111, 182, 85, 64, 128,
    ];

    /// The grey `w` x `h` test pattern the Pillow values above were computed on.
    fn pattern(w: usize, h: usize) -> U8Image {
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| ((x * 37 + y * 91 + (x * y) % 7) % 256) as u8))
            .collect();
        U8Image::new(1, h, w, data).unwrap()
    }

    #[test]
    fn matches_pillow_down_and_up() {
        let img = pattern(17, 13);
        assert_eq!(resize_bilinear(&img, 5, 7).data, PILLOW_7X5);
        assert_eq!(resize_bilinear(&img, 20, 9).data, PILLOW_9X20);
    }

    /// A portrait resized to a short side: Pillow 13 runs the vertical pass first where the
    /// height loses more than twice as many rows as the width loses columns (Pillow 13.0.0's
    /// values; 6 of these 28 differ with the horizontal pass first, as Pillow 12 ran it).
    const PILLOW_13_4X7_OF_9X31: [u8; 28] = [
        110, 120, 128, 122, 133, 130, 120, 118, 136, 136, 123, 127, 135, 136, 124, 134, 128, 129,
        137, 137, 131, 136, 130, 130, 138, 125, 127, 137,
    ];

    #[test]
    fn a_tall_image_runs_the_vertical_pass_first_as_pillow_13() {
        assert_eq!(
            resize_bilinear(&pattern(9, 31), 7, 4).data,
            PILLOW_13_4X7_OF_9X31
        );
    }
}
