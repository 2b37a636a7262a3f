//! Encoded image bytes (JPEG, PNG, BMP, PPM/PGM, TIFF, WebP: torchvision's `IMG_EXTENSIONS`) to
//! CHW u8 images, refusing truncated files.

use crate::U8Image;
use anyhow::{bail, ensure, Context, Result};
use image::ImageFormat;

/// The colour layout a decoded image is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorMode {
    /// Three channels, as torchvision's default loader (`PIL.Image.convert("RGB")`).
    Rgb,
    /// One channel (MNIST-style grey).
    Gray,
}

/// The formats [`decode_image`] reads, as its errors name them.
const FORMATS: &str = "JPEG, PNG, BMP, PPM/PGM, TIFF or WebP";

/// Decodes a JPEG, PNG, BMP, PPM/PGM (any PNM), TIFF or WebP image held in `bytes` into a CHW
/// image in `mode`. The format is read from the bytes, not from the file name.
///
/// The file must be complete: a JPEG must reach its end-of-image marker through whole segments
/// and scans, a PNG its `IEND` chunk through whole chunks. Decoders fill a cut-off JPEG or PNG
/// with grey instead of failing; PIL refuses it ("image file is truncated"), and so does this.
/// The other formats' decoders fail on a cut-off file themselves (tested on every cut).
pub fn decode_image(bytes: &[u8], mode: ColorMode) -> Result<U8Image> {
    let format = image::guess_format(bytes)
        .with_context(|| format!("unsupported image format (not {FORMATS})"))?;
    match format {
        ImageFormat::Jpeg => check_jpeg(bytes)?,
        ImageFormat::Png => check_png(bytes)?,
        ImageFormat::Bmp | ImageFormat::Pnm | ImageFormat::Tiff | ImageFormat::WebP => {}
        other => bail!("unsupported image format {other:?} (not {FORMATS})"),
    }
    let img = image::load_from_memory_with_format(bytes, format)
        .context("corrupt or unsupported image data")?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    match mode {
        ColorMode::Rgb => U8Image::from_hwc(3, height, width, img.into_rgb8().as_raw()),
        ColorMode::Gray => U8Image::from_hwc(1, height, width, img.into_luma8().as_raw()),
    }
}

/// Decodes the image in `bytes`, naming `name` (a file) in any error.
pub fn decode_named(bytes: &[u8], mode: ColorMode, name: &str) -> Result<U8Image> {
    decode_image(bytes, mode).with_context(|| format!("cannot decode image {name}"))
}

/// JPEG markers that stand alone (no length field): TEM and RST0-7 (SOI and EOI are handled
/// where they may occur).
fn standalone(marker: u8) -> bool {
    marker == 0x01 || (0xd0..=0xd7).contains(&marker)
}

/// Walks the JPEG's marker segments and entropy-coded scans up to the end-of-image marker.
/// Bytes after EOI are allowed (cameras append data); a file that ends before it is truncated.
fn check_jpeg(bytes: &[u8]) -> Result<()> {
    ensure!(
        bytes.starts_with(&[0xff, 0xd8]),
        "JPEG without a start-of-image marker"
    );
    let truncated = |at: usize| {
        anyhow::anyhow!(
            "image file is truncated: the JPEG ends at byte {} before its end-of-image marker \
             (cut at byte {at})",
            bytes.len()
        )
    };
    let mut at = 2;
    loop {
        // Fill bytes (0xff) may precede a marker.
        while bytes.get(at) == Some(&0xff) && bytes.get(at + 1) == Some(&0xff) {
            at += 1;
        }
        let (Some(&0xff), Some(&marker)) = (bytes.get(at), bytes.get(at + 1)) else {
            if at >= bytes.len() {
                return Err(truncated(at));
            }
            bail!("corrupt JPEG: expected a marker at byte {at}");
        };
        at += 2;
        match marker {
            0xd9 => return Ok(()),
            m if standalone(m) => continue,
            0x00 | 0xd8 => bail!("corrupt JPEG: unexpected marker 0xff{marker:02x} at byte {at}"),
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(at), bytes.get(at + 1)) else {
            return Err(truncated(at));
        };
        let length = usize::from(u16::from_be_bytes([hi, lo]));
        ensure!(
            length >= 2,
            "corrupt JPEG: segment length {length} at byte {at}"
        );
        at = at
            .checked_add(length)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| truncated(at))?;
        if marker == 0xda {
            at = skip_scan(bytes, at).ok_or_else(|| truncated(bytes.len()))?;
        }
    }
}

/// The offset of the first marker after the entropy-coded data starting at `at` (stuffed
/// `0xff00` bytes and restart markers belong to the data), or `None` if the data runs to the end.
fn skip_scan(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at += bytes.get(at..)?.iter().position(|&b| b == 0xff)?;
        match bytes.get(at + 1)? {
            0x00 | 0xd0..=0xd7 | 0xff => at += 1,
            _ => return Some(at),
        }
    }
}

/// The PNG signature.
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// Walks the PNG's chunks (length, type, data, CRC) up to `IEND`.
fn check_png(bytes: &[u8]) -> Result<()> {
    ensure!(
        bytes.starts_with(&PNG_SIGNATURE),
        "PNG without its signature"
    );
    let mut at = PNG_SIGNATURE.len();
    loop {
        let Some(head) = bytes.get(at..at + 8) else {
            bail!(
                "image file is truncated: the PNG ends at byte {} before its IEND chunk",
                bytes.len()
            );
        };
        let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| (at + 12).checked_add(l))
            .filter(|&end| end <= bytes.len());
        let Some(end) = end else {
            bail!(
                "image file is truncated: PNG chunk {} at byte {at} claims {length} bytes but the \
                 file ends at byte {}",
                String::from_utf8_lossy(&head[4..8]),
                bytes.len()
            );
        };
        if &head[4..8] == b"IEND" {
            return Ok(());
        }
        at = end;
    }
}
