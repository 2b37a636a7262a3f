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
/// The pixels are PIL's after `Image.open(f).convert("RGB")` (or `"L"`), torchvision's loader:
/// a JPEG decoded by libjpeg-turbo as PIL decodes it (`libjpeg_pixels`), alpha dropped, grey
/// from RGB by ITU-R 601-2 as PIL rounds it (`(19595 R + 38470 G + 7471 B + 2^15) >> 16`),
/// 16-bit RGB and 16-bit grey with alpha by their high byte, 16-bit grey clipped at 255 (PIL's
/// `I;16`), a PPM or PGM of another maxval than 255 scaled as PIL scales it.
///
/// Errors: an empty file, a format other than those, a file that is not complete, or an image
/// with no pixels (a width or height of 0, which a PNM header can declare). libjpeg's errors
/// reach Rust as an unwind that is caught here: a program built with `panic = "abort"` stops at
/// a JPEG libjpeg refuses, where others get this error.
///
/// The file must be complete: a JPEG must reach its end-of-image marker through whole segments
/// and scans, a PNG its `IEND` chunk through whole chunks, a WebP its RIFF size, a TIFF's
/// strips or tiles must lie inside the file. Decoders fill a cut-off JPEG (also inside a TIFF)
/// or PNG with grey instead of failing; PIL refuses it ("image file is truncated"), and so
/// does this. The BMP and binary PNM decoders fail on a cut-off file themselves (tested on
/// every cut); a plain-text (ASCII) PNM cut inside its last number reads as PIL reads it.
pub fn decode_image(bytes: &[u8], mode: ColorMode) -> Result<U8Image> {
    ensure!(!bytes.is_empty(), "the file is empty (0 bytes)");
    let format = image::guess_format(bytes)
        .with_context(|| format!("unsupported image format (not {FORMATS})"))?;
    // A 16-bit grey PNG with a tRNS chunk: the decoder gives it an alpha channel, PIL keeps
    // it `I;16` (the transparency in its `info`), clipped at 255 by `convert`.
    let mut grey16_transparency = false;
    match format {
        ImageFormat::Jpeg => check_jpeg(bytes)?,
        ImageFormat::Png => grey16_transparency = check_png(bytes)?,
        ImageFormat::Tiff => check_tiff(bytes)?,
        ImageFormat::WebP => check_webp(bytes)?,
        ImageFormat::Bmp | ImageFormat::Pnm => {}
        other => bail!("unsupported image format {other:?} (not {FORMATS})"),
    }
    // A plain PNM as its values and nothing else (the decoder refuses comments among them),
    // its header as the decoder reads it (for the size check too).
    let plain = match format {
        ImageFormat::Pnm => plain_pnm(bytes)?,
        _ => None,
    };
    let bytes = plain.as_deref().unwrap_or(bytes);
    // PIL's `DecompressionBombError`: more than twice `Image.MAX_IMAGE_PIXELS` pixels, whatever
    // their depth (a grey image that fits the decoder's memory limit is refused too).
    let mut header = image::ImageReader::new(std::io::Cursor::new(bytes));
    header.set_format(format);
    if let Ok((w, h)) = header.into_dimensions() {
        if u64::from(w) * u64::from(h) > MAX_PIXELS {
            bail!("{}", too_large(bytes, format));
        }
    }
    let libjpeg = match format {
        ImageFormat::Jpeg => libjpeg_pixels(bytes)?,
        _ => None,
    };
    let (width, height, pixels) = match libjpeg {
        Some(decoded) => decoded,
        None => {
            let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
            reader.limits(decoder_limits());
            let img = match reader.decode() {
                Ok(img) => img,
                Err(image::ImageError::Limits(_)) => bail!("{}", too_large(bytes, format)),
                Err(e) => return Err(e).context("corrupt or unsupported image data"),
            };
            let (width, height) = (img.width() as usize, img.height() as usize);
            let img = match format {
                ImageFormat::Pnm => pnm_levels_as_pil(bytes, img),
                _ => img,
            };
            (width, height, pil_pixels(img, grey16_transparency))
        }
    };
    ensure!(
        width > 0 && height > 0,
        "the image has no pixels: it is {width}x{height} (width x height)"
    );
    match (mode, pixels) {
        (ColorMode::Rgb, Pixels::Rgb(rgb)) => U8Image::from_hwc(3, height, width, &rgb),
        (ColorMode::Rgb, Pixels::Grey(grey)) => {
            let rgb: Vec<u8> = grey.iter().flat_map(|&l| [l, l, l]).collect();
            U8Image::from_hwc(3, height, width, &rgb)
        }
        (ColorMode::Gray, Pixels::Grey(grey)) => U8Image::from_hwc(1, height, width, &grey),
        (ColorMode::Gray, Pixels::Rgb(rgb)) => {
            let grey: Vec<u8> = rgb.chunks_exact(3).map(pil_luma).collect();
            U8Image::from_hwc(1, height, width, &grey)
        }
    }
}

/// The most pixels an image may have: PIL's `DecompressionBombError` threshold,
/// `2 * Image.MAX_IMAGE_PIXELS`.
const MAX_PIXELS: u64 = 178_956_970;

/// The most bytes the decoder may hold at once: [`MAX_PIXELS`] at 8 bytes a pixel (16-bit
/// RGBA), so that every image PIL decodes fits (the `image` crate's default, 512 MiB, refused a
/// 12000x12000 RGBA PNG that PIL reads), while a file whose header does not say its size
/// still cannot take memory without bound.
const MAX_DECODER_BYTES: u64 = MAX_PIXELS * 8;

fn decoder_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODER_BYTES);
    limits
}

/// Why an image over [`MAX_PIXELS`], or one the decoder refused for its memory limit
/// ([`MAX_DECODER_BYTES`]), was not read, with its size where the header gives it. PIL refuses
/// such images too: over 178,956,970 pixels is its `DecompressionBombError`.
fn too_large(bytes: &[u8], format: ImageFormat) -> String {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes));
    reader.set_format(format);
    let size = match reader.into_dimensions() {
        Ok((w, h)) => format!("{w}x{h} pixels: "),
        Err(_) => String::new(),
    };
    format!(
        "the image is too large to decode ({size}over 178,956,970 pixels, or more memory than \
         8 bytes a pixel of that; PIL refuses images over 178,956,970 pixels as decompression \
         bombs); resize it first"
    )
}

/// A JPEG's (width, height, pixels) as PIL decodes it: with libjpeg-turbo's decoder (mozjpeg's
/// copy of it) and PIL's settings, libjpeg's defaults (the accurate integer IDCT, "fancy"
/// chroma upsampling), YCbCr and RGB-coded colour to RGB, greyscale to grey, CMYK and YCCK to
/// CMYK made RGB as PIL makes it ([`cmyk_to_rgb`]). `None` for other colour spaces (libjpeg
/// reads none other from a JFIF or Adobe file), which the `image` crate decodes. The pure-Rust decoder differs
/// from libjpeg in its IDCT, upsampling and colour conversion: up to 8 levels on a fifth of the
/// values of CIFAR-10's JPEGs, where this is PIL's to the bit.
///
/// # Errors
/// Data libjpeg refuses (its message given); its warnings (corrupt data it decodes past) are
/// passed over, as PIL passes them over.
fn libjpeg_pixels(bytes: &[u8]) -> Result<Option<(usize, usize, Pixels)>> {
    use mozjpeg::ColorSpace;
    enum Read {
        Decoded(usize, usize, Pixels),
        OtherColours,
        TooLarge,
    }
    // libjpeg's fatal errors unwind (mozjpeg's error manager), without a panic message.
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<_> {
        let jpeg = mozjpeg::Decompress::new_mem(bytes)?;
        let (width, height) = jpeg.size();
        // The header as libjpeg reads it, which decodes: PIL's pixel limit again, should the
        // `image` crate's reader have refused the header above.
        if width as u64 * height as u64 > MAX_PIXELS {
            return Ok(Read::TooLarge);
        }
        let pixels = match jpeg.color_space() {
            // YCbCr, and RGB-coded colour (Adobe transform 0: PIL's rawmode "RGB").
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB => {
                let mut rgb = jpeg.rgb()?;
                let values = rgb.read_scanlines::<u8>()?;
                rgb.finish()?;
                Pixels::Rgb(values)
            }
            ColorSpace::JCS_GRAYSCALE => {
                let mut grey = jpeg.grayscale()?;
                let values = grey.read_scanlines::<u8>()?;
                grey.finish()?;
                Pixels::Grey(values)
            }
            // PIL's "CMYK;I" (Adobe's inverted polarity, whichever way the file says; YCCK
            // made CMYK by libjpeg), then `convert("RGB")`'s `cmyk2rgb`.
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
                let mut cmyk = jpeg.to_colorspace(ColorSpace::JCS_CMYK)?;
                let values = cmyk.read_scanlines::<[u8; 4]>()?;
                cmyk.finish()?;
                let mut rgb = Vec::with_capacity(values.len() * 3);
                rgb.extend(values.iter().flat_map(|&p| cmyk_to_rgb(p)));
                Pixels::Rgb(rgb)
            }
            _ => return Ok(Read::OtherColours),
        };
        let (Pixels::Rgb(values) | Pixels::Grey(values)) = &pixels;
        // A short read leaves fewer values than the whole image's.
        let channels = if matches!(pixels, Pixels::Rgb(_)) {
            3
        } else {
            1
        };
        if values.len() != width * height * channels {
            return Err(std::io::Error::other(format!(
                "{} of its {height} rows decoded",
                values.len() / (width * channels).max(1)
            )));
        }
        Ok(Read::Decoded(width, height, pixels))
    });
    match decoded {
        Ok(Ok(Read::Decoded(width, height, pixels))) => Ok(Some((width, height, pixels))),
        Ok(Ok(Read::OtherColours)) => Ok(None),
        Ok(Ok(Read::TooLarge)) => bail!("{}", too_large(bytes, ImageFormat::Jpeg)),
        Ok(Err(e)) => Err(e).context("corrupt or unsupported JPEG data"),
        Err(unwound) => {
            let why = unwound
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| unwound.downcast_ref::<&str>().copied())
                .unwrap_or("libjpeg stopped");
            bail!("corrupt or unsupported JPEG data ({why})")
        }
    }
}

/// A pixel libjpeg decoded as CMYK, as PIL makes it RGB: its JPEG rawmode `CMYK;I` inverts the
/// four values, then `cmyk2rgb` (`Convert.c`) takes each of R, G, B as `(255 - K) - (C (255 -
/// K)) / 255`, the product rounded as PIL's `MULDIV255`.
fn cmyk_to_rgb(raw: [u8; 4]) -> [u8; 3] {
    let [c, m, y, k] = raw.map(|v| 255 - u32::from(v));
    let nk = 255 - k;
    let muldiv255 = |a: u32| {
        let t = a * nk + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| (nk - muldiv255(v)) as u8)
}

/// 8-bit pixels as PIL holds them after opening a file: grey (`L`, also from `I;16`) or RGB.
enum Pixels {
    Grey(Vec<u8>),
    Rgb(Vec<u8>),
}

/// `img` as PIL would hold it, alpha dropped (as `convert("RGB")` / `convert("L")` drop it):
/// 16-bit RGB and grey with alpha by their high byte (PIL's `RGB;16B` and `LA;16B` raw modes),
/// 16-bit grey clipped at 255 (PIL's `I;16` to `L` or `RGB`), also where its alpha comes from
/// a PNG's tRNS chunk (`grey16_transparency`: PIL keeps such a PNG `I;16`).
fn pil_pixels(img: image::DynamicImage, grey16_transparency: bool) -> Pixels {
    use image::DynamicImage as D;
    match img {
        D::ImageLuma8(grey) => Pixels::Grey(grey.into_raw()),
        D::ImageLumaA8(grey) => Pixels::Grey(grey.pixels().map(|p| p[0]).collect()),
        D::ImageLuma16(grey) => Pixels::Grey(grey.pixels().map(|p| clip(p[0])).collect()),
        D::ImageLumaA16(grey) if grey16_transparency => {
            Pixels::Grey(grey.pixels().map(|p| clip(p[0])).collect())
        }
        D::ImageLumaA16(grey) => Pixels::Grey(grey.pixels().map(|p| high(p[0])).collect()),
        D::ImageRgb16(rgb) => Pixels::Rgb(rgb.into_raw().iter().map(|&v| high(v)).collect()),
        D::ImageRgba16(rgba) => Pixels::Rgb(
            rgba.pixels()
                .flat_map(|p| [high(p[0]), high(p[1]), high(p[2])])
                .collect(),
        ),
        other => Pixels::Rgb(other.into_rgb8().into_raw()),
    }
}

/// A PPM (`P3`, `P6`) or PGM (`P2`, `P5`) whose maxval is not 255 with PIL's 8-bit levels:
/// `round(v / maxval * 255)` in double precision, ties to even (Python's `round`), at most 255
/// (Pillow's `PpmDecoder`), where the `image` crate scales to its sample type's top in single
/// precision, ties away from zero (and a 16-bit PPM then gave its high byte); a PGM of maxval
/// over 255 is PIL's 16-bit `I`, `round(v / maxval * 65535)`, clipped at 255 by `convert`
/// (65535 is read as it is). A value above maxval in a binary file saturates, as in PIL (a
/// plain file's is refused: [`plain_pnm`]). Other images, and a header the decoder refused after all, are returned as they
/// are.
fn pnm_levels_as_pil(bytes: &[u8], img: image::DynamicImage) -> image::DynamicImage {
    use image::codecs::pnm::{PnmDecoder, PnmSubtype};
    use image::DynamicImage as D;
    let Ok(decoder) = PnmDecoder::new(std::io::Cursor::new(bytes)) else {
        return img;
    };
    let max = decoder.header().maximal_sample();
    let colour = match decoder.subtype() {
        PnmSubtype::Pixmap(_) if max != 255 => true,
        PnmSubtype::Graymap(_) if max != 255 && max != 65535 => false,
        _ => return img,
    };
    // PIL's top: 255 for RGB and 8-bit grey; a grey of maxval over 255 is its 16-bit `I`,
    // clipped at 255 by `convert`.
    let pil_top = match !colour && max > 255 {
        true => 65535.0,
        false => 255.0,
    };
    let (width, height) = (img.width(), img.height());
    // What the `image` crate made of each value 0..=max, and PIL's level for it; values above
    // maxval saturate in both (at the sample type's top, at 255).
    let top: u32 = if max > 255 { 65535 } else { 255 };
    let mut levels = vec![255u8; top as usize + 1];
    let factor = top as f32 / max as f32;
    for v in 0..=max {
        let decoded = ((v as f32 * factor).round() as u32).min(top);
        levels[decoded as usize] = ((f64::from(v) / f64::from(max)) * pil_top)
            .round_ties_even()
            .min(255.0) as u8;
    }
    let level = |decoded: u16| levels[usize::from(decoded).min(top as usize)];
    let pixels: Option<Vec<u8>> = match (&img, colour) {
        (D::ImageRgb8(rgb), true) => Some(rgb.as_raw().iter().map(|&v| level(v.into())).collect()),
        (D::ImageRgb16(rgb), true) => Some(rgb.as_raw().iter().map(|&v| level(v)).collect()),
        (D::ImageLuma8(grey), false) => {
            Some(grey.as_raw().iter().map(|&v| level(v.into())).collect())
        }
        (D::ImageLuma16(grey), false) => Some(grey.as_raw().iter().map(|&v| level(v)).collect()),
        _ => None,
    };
    match (pixels, colour) {
        (Some(p), true) => image::RgbImage::from_raw(width, height, p).map_or(img, D::ImageRgb8),
        (Some(p), false) => image::GrayImage::from_raw(width, height, p).map_or(img, D::ImageLuma8),
        (None, _) => img,
    }
}

/// A plain (ASCII) PGM or PPM (`P2`, `P3`) as its header and values alone, one space apart,
/// as Pillow 13 reads it (`PpmPlainDecoder`), where the decoder here differed: a comment (`#`
/// to the end of the line) in the header ends a token; among the values it is deleted with its
/// line's end (so `50#c` and `100` on the next line read as 50100, as in Pillow; the decoder
/// here refused any comment there); a token of more than 10 characters is refused ("Token too
/// long found in data"), and so is a value above the maxval ("Channel value too large for this
/// mode", where the decoder here saturated it). `None` for other files and for headers that
/// do not parse (the decoder names what is wrong with them).
fn plain_pnm(bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    let (channels, magic) = match bytes.get(..2) {
        Some(b"P2") => (1, "P2"),
        Some(b"P3") => (3, "P3"),
        _ => return Ok(None),
    };
    let kind = if channels == 1 {
        "PGM (P2)"
    } else {
        "PPM (P3)"
    };
    // Python's `bytes.split()` whitespace.
    let space = |b: u8| b.is_ascii_whitespace() || b == 0x0b;
    let line_end = |b: &u8| matches!(b, b'\n' | b'\r');
    // The header: width, height, maxval; a comment ends a token.
    let mut at = 2;
    let mut header = [0u64; 3];
    for field in &mut header {
        loop {
            match bytes.get(at) {
                Some(&b) if space(b) => at += 1,
                Some(b'#') => {
                    at += bytes[at..]
                        .iter()
                        .position(line_end)
                        .unwrap_or(bytes.len() - at)
                }
                _ => break,
            }
        }
        let len = bytes[at..]
            .iter()
            .position(|&b| space(b) || b == b'#')
            .unwrap_or(bytes.len() - at);
        match plain_number(&bytes[at..at + len]) {
            Some(v) => *field = v,
            None => return Ok(None),
        }
        at += len;
    }
    let [width, height, maxval] = header;
    // The values: each comment deleted with its line's end, then split at whitespace.
    let mut data = Vec::with_capacity(bytes.len() - at);
    let mut rest = &bytes[at..];
    while let Some(hash) = rest.iter().position(|&b| b == b'#') {
        data.extend_from_slice(&rest[..hash]);
        rest = match rest[hash..].iter().position(line_end) {
            Some(end) => &rest[hash + end + 1..],
            None => &[],
        };
    }
    data.extend_from_slice(rest);
    let mut values = format!("{magic}\n{width} {height}\n{maxval}\n").into_bytes();
    let samples = width.saturating_mul(height).saturating_mul(channels);
    let tokens = data.split(|&b| space(b)).filter(|t| !t.is_empty());
    for (i, token) in (0..samples).zip(tokens) {
        let (shown, pixel) = (String::from_utf8_lossy(token), i / channels);
        if token.len() > 10 {
            bail!(
                "a plain (ASCII) {kind} holds a token of more than 10 characters, {shown} \
                 (sample {i}, pixel {pixel}): PIL refuses it (\"Token too long found in data\")"
            );
        }
        if token.iter().all(u8::is_ascii_digit) && plain_number(token).is_none_or(|v| v > maxval) {
            bail!(
                "a plain (ASCII) {kind} holds the value {shown} above its maxval {maxval} \
                 (sample {i}, pixel {pixel}): PIL refuses it (\"Channel value too large for \
                 this mode\")"
            );
        }
        values.extend_from_slice(token);
        values.push(b' ');
    }
    Ok(Some(values))
}

/// A decimal number of a plain PNM (digits only, at most a `u64`).
fn plain_number(token: &[u8]) -> Option<u64> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// A 16-bit grey value as PIL converts `I;16` to 8 bits: clipped at 255.
fn clip(v: u16) -> u8 {
    v.min(255) as u8
}

/// A 16-bit colour value's high byte.
fn high(v: u16) -> u8 {
    (v >> 8) as u8
}

/// PIL's RGB to `L` (`rgb2l`: ITU-R 601-2 luma in 16.16 fixed point, rounded).
fn pil_luma(rgb: &[u8]) -> u8 {
    let [r, g, b] = [rgb[0], rgb[1], rgb[2]].map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
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
    let truncated = || {
        anyhow::anyhow!(
            "image file is truncated: the JPEG's {} bytes end before its end-of-image marker",
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
                return Err(truncated());
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
            return Err(truncated());
        };
        let length = usize::from(u16::from_be_bytes([hi, lo]));
        ensure!(
            length >= 2,
            "corrupt JPEG: segment length {length} at byte {at}"
        );
        at = at
            .checked_add(length)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(truncated)?;
        if marker == 0xda {
            at = skip_scan(bytes, at).ok_or_else(truncated)?;
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

/// A WebP file holds its RIFF chunk whole: the size in its header (plus the 8 bytes before it)
/// fits in the file, as libwebp (and so PIL) requires.
fn check_webp(bytes: &[u8]) -> Result<()> {
    let Some(size) = bytes.get(4..8) else {
        bail!("image file is truncated: a WebP of {} bytes", bytes.len());
    };
    let riff = u64::from(u32::from_le_bytes([size[0], size[1], size[2], size[3]])) + 8;
    ensure!(
        riff <= bytes.len() as u64,
        "image file is truncated: the WebP's RIFF header claims {riff} bytes, the file has {}",
        bytes.len()
    );
    Ok(())
}

/// Every strip or tile of a TIFF's first image lies inside the file.
fn check_tiff(bytes: &[u8]) -> Result<()> {
    use tiff::tags::Tag;
    let mut decoder =
        tiff::decoder::Decoder::new(std::io::Cursor::new(bytes)).context("corrupt TIFF")?;
    let kinds = [
        ("strip", Tag::StripOffsets, Tag::StripByteCounts),
        ("tile", Tag::TileOffsets, Tag::TileByteCounts),
    ];
    for (kind, offsets, counts) in kinds {
        let Some(offsets) = decoder.find_tag(offsets).context("corrupt TIFF")? else {
            continue;
        };
        let counts = decoder
            .find_tag(counts)
            .context("corrupt TIFF")?
            .with_context(|| format!("corrupt TIFF: {kind} offsets without byte counts"))?;
        let offsets = offsets.into_u64_vec().context("corrupt TIFF")?;
        let counts = counts.into_u64_vec().context("corrupt TIFF")?;
        for (at, count) in offsets.into_iter().zip(counts) {
            ensure!(
                at.checked_add(count)
                    .is_some_and(|end| end <= bytes.len() as u64),
                "image file is truncated: the TIFF's {kind} at byte {at} of {count} bytes ends \
                 past the file's {} bytes",
                bytes.len()
            );
        }
    }
    Ok(())
}

/// The PNG signature.
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// Walks the PNG's chunks (length, type, data, CRC) up to `IEND`. Returns whether the PNG is
/// 16-bit grey (IHDR's bit depth 16, colour type 0) with a tRNS chunk.
fn check_png(bytes: &[u8]) -> Result<bool> {
    ensure!(
        bytes.starts_with(&PNG_SIGNATURE),
        "PNG without its signature"
    );
    let mut at = PNG_SIGNATURE.len();
    let (mut grey16, mut transparency) = (false, false);
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
        match &head[4..8] {
            b"IEND" => return Ok(grey16 && transparency),
            // Width, height, bit depth, colour type, ...
            b"IHDR" => grey16 = bytes.get(at + 16..at + 18) == Some(&[16, 0]),
            b"tRNS" => transparency = true,
            _ => {}
        }
        at = end;
    }
}
