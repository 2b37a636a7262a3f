//! Geometric operations on u8 CHW images and torchvision's parameter rules for them.

use crate::{Rng, U8Image};

/// Copies the `height` x `width` window whose top-left corner is at (`top`, `left`) of `img`
/// (may lie partly outside), filling outside pixels with 0: pad-with-zeros-then-crop in one step.
pub fn crop_fill(img: &U8Image, top: isize, left: isize, height: usize, width: usize) -> U8Image {
    let (c, h, w) = img.shape();
    if (top, left, height, width) == (0, 0, h, w) {
        return img.clone();
    }
    let mut out = U8Image::zeros(c, height, width);
    // Destination columns that map inside the source.
    let x0 = (-left).clamp(0, width as isize) as usize;
    let x1 = (w as isize - left).clamp(0, width as isize) as usize;
    if x0 >= x1 {
        return out;
    }
    let src_x0 = (x0 as isize + left) as usize;
    for ch in 0..c {
        let src = img.plane(ch);
        let dst = &mut out.data[ch * height * width..(ch + 1) * height * width];
        for (y, row) in dst.chunks_exact_mut(width).enumerate() {
            let sy = y as isize + top;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            let start = sy as usize * w + src_x0;
            row[x0..x1].copy_from_slice(&src[start..start + (x1 - x0)]);
        }
    }
    out
}

/// Mirrors every row in place (torchvision's `hflip`).
pub fn hflip(img: &mut U8Image) {
    let w = img.width;
    for row in img.data.chunks_exact_mut(w) {
        row.reverse();
    }
}

/// Python's `round()` (half to even) of a non-negative value, as an integer.
pub fn py_round(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// torchvision's `center_crop` window: top-left corner (negative means zero padding).
pub fn center_crop_origin(h: usize, w: usize, crop_h: usize, crop_w: usize) -> (isize, isize) {
    // torchvision first pads (crop - size) // 2 before and the rest after, then crops at
    // round((padded - crop) / 2), which is 0 along a padded dimension.
    let origin = |size: usize, crop: usize| -> isize {
        if crop > size {
            -(((crop - size) / 2) as isize)
        } else {
            py_round((size - crop) as f64 / 2.0) as isize
        }
    };
    (origin(h, crop_h), origin(w, crop_w))
}

/// torchvision's `Resize(size)` output for an int size: the shorter side becomes `size`, the
/// longer `int(size * long / short)`.
pub fn shorter_side_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if w <= h {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// torchvision's `RandomResizedCrop.get_params`: `(top, left, height, width)` of a crop of
/// random area fraction in `scale` and random aspect ratio (log-uniform) in `ratio`, with ten
/// tries before falling back to a central crop.
pub fn random_resized_crop_params(
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(log_lo, log_hi).exp();
        let cw = py_round((target_area * aspect).sqrt());
        let ch = py_round((target_area / aspect).sqrt());
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.below((h - ch + 1) as u64) as usize;
            let left = rng.below((w - cw + 1) as u64) as usize;
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (lo, hi) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (ch, cw) = if in_ratio < lo {
        (py_round(w as f64 / lo), w)
    } else if in_ratio > hi {
        (h, py_round(h as f64 * hi))
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(c: usize, h: usize, w: usize) -> U8Image {
        U8Image::new(c, h, w, (0..c * h * w).map(|v| v as u8).collect()).unwrap()
    }

    #[test]
    fn crop_fill_pads_with_zeros() {
        let img = ramp(1, 2, 2); // [[0, 1], [2, 3]]
        let out = crop_fill(&img, -1, -1, 3, 3);
        assert_eq!(out.data, vec![0, 0, 0, 0, 0, 1, 0, 2, 3]);
        let out = crop_fill(&img, 1, 1, 2, 2);
        assert_eq!(out.data, vec![3, 0, 0, 0]);
        let out = crop_fill(&img, 0, 5, 2, 2);
        assert_eq!(out.data, vec![0; 4]);
    }

    #[test]
    fn hflip_mirrors_rows_of_every_channel() {
        let mut img = ramp(2, 1, 3);
        hflip(&mut img);
        assert_eq!(img.data, vec![2, 1, 0, 5, 4, 3]);
    }

    #[test]
    fn center_crop_matches_torchvision_rounding() {
        // round(1 / 2.0) == 0 and round(3 / 2.0) == 2 in Python.
        assert_eq!(center_crop_origin(5, 7, 4, 4), (0, 2));
        assert_eq!(center_crop_origin(4, 4, 4, 4), (0, 0));
        // Crop bigger than the image: padded (crop - size) // 2 before.
        assert_eq!(center_crop_origin(2, 3, 5, 3), (-1, 0));
    }

    #[test]
    fn resize_shorter_side() {
        assert_eq!(shorter_side_size(375, 500, 256), (256, 341));
        assert_eq!(shorter_side_size(500, 375, 256), (341, 256));
        assert_eq!(shorter_side_size(32, 32, 36), (36, 36));
    }

    #[test]
    fn random_resized_crop_stays_inside_and_respects_ranges() {
        let mut rng = Rng::new(9);
        for _ in 0..1000 {
            let (top, left, ch, cw) =
                random_resized_crop_params(60, 80, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(ch > 0 && cw > 0 && top + ch <= 60 && left + cw <= 80);
            let frac = (ch * cw) as f64 / 4800.0;
            assert!((0.06..=1.0).contains(&frac), "area fraction {frac}");
        }
        // Impossible scale: falls back to the central crop clipped to the ratio range.
        let params = random_resized_crop_params(10, 100, (2.0, 3.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!(params, (0, 43, 10, 13));
    }
}
