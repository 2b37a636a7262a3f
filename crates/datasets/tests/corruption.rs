//! Damaged files are refused with the file (or archive member) named: truncated images, any
//! corruption of a `.tar.gz`, `.tar` or `.gz` container, and headers whose sizes cannot exist.

mod common;

use common::*;
use datasets::{cifar10, decode_image, image_folder, mnist, read_archive, ColorMode};
use datasets::{FolderOptions, Split, Storage};
use std::path::Path;
use tempfile::tempdir;

/// A 32x32 JPEG (quality 75, as the CIFAR-10 copy in the shared data).
fn jpeg_32() -> Vec<u8> {
    let mut bytes = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 75);
    pattern_rgb(32, 32, 7).write_with_encoder(encoder).unwrap();
    bytes
}

/// A 32x32 PNG.
fn png_32() -> Vec<u8> {
    let mut bytes = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    pattern_rgb(32, 32, 7).write_with_encoder(encoder).unwrap();
    bytes
}

/// A 32x32 image in `format` (lossless for all but JPEG).
fn encoded_32(format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    pattern_rgb(32, 32, 7).write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

#[test]
fn every_truncation_of_an_image_file_is_refused() {
    use image::ImageFormat::{Bmp, Pnm, Tiff, WebP};
    let formats = [
        ("JPEG", jpeg_32()),
        ("PNG", png_32()),
        ("BMP", encoded_32(Bmp)),
        ("PPM", encoded_32(Pnm)),
        ("TIFF", encoded_32(Tiff)),
        ("WebP", encoded_32(WebP)),
    ];
    for (format, bytes) in formats {
        decode_image(&bytes, ColorMode::Rgb).unwrap();
        for cut in 0..bytes.len() {
            let result = decode_image(&bytes[..cut], ColorMode::Rgb);
            assert!(
                result.is_err(),
                "{format} cut at {cut} of {} decoded",
                bytes.len()
            );
        }
    }
}

/// A 2x2 RGB TIFF with its directory first and its strip last, as cameras and GDAL write them
/// (image's encoder puts the directory last): pixels 0, 1, ..., 11.
fn tiff_directory_first() -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend(8u32.to_le_bytes());
    let (bits_at, data_at) = (8 + 2 + 9 * 12 + 4, 8 + 2 + 9 * 12 + 4 + 6);
    let entries: [(u16, u16, u32); 9] = [
        (256, 3, 2),       // ImageWidth
        (257, 3, 2),       // ImageLength
        (258, 3, bits_at), // BitsPerSample: 3 values, at bits_at
        (259, 3, 1),       // Compression: none
        (262, 3, 2),       // PhotometricInterpretation: RGB
        (273, 4, data_at), // StripOffsets
        (277, 3, 3),       // SamplesPerPixel
        (278, 3, 2),       // RowsPerStrip
        (279, 4, 12),      // StripByteCounts
    ];
    tiff.extend(9u16.to_le_bytes());
    for (tag, kind, value) in entries {
        tiff.extend(tag.to_le_bytes());
        tiff.extend(kind.to_le_bytes());
        tiff.extend(if tag == 258 { 3u32 } else { 1 }.to_le_bytes());
        tiff.extend(value.to_le_bytes());
    }
    tiff.extend(0u32.to_le_bytes());
    for _ in 0..3 {
        tiff.extend(8u16.to_le_bytes());
    }
    assert_eq!(tiff.len(), data_at as usize);
    tiff.extend(0u8..12);
    tiff
}

/// A TIFF whose strip data is cut, and a WebP shorter than its RIFF header says, are called
/// truncated by the checks before decoding (a JPEG strip or a lossy WebP would otherwise be
/// filled in by the decoder).
#[test]
fn a_cut_tiff_strip_or_webp_chunk_is_called_truncated() {
    let tiff = tiff_directory_first();
    let whole = decode_image(&tiff, ColorMode::Rgb).unwrap();
    assert_eq!(whole.data, [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]);
    for cut in tiff.len() - 12..tiff.len() {
        let msg = format!(
            "{:#}",
            decode_image(&tiff[..cut], ColorMode::Rgb).unwrap_err()
        );
        assert!(
            msg.contains("truncated") && msg.contains("strip"),
            "cut at {cut}: {msg}"
        );
    }
    let webp = encoded_32(image::ImageFormat::WebP);
    for cut in 12..webp.len() {
        let msg = format!(
            "{:#}",
            decode_image(&webp[..cut], ColorMode::Rgb).unwrap_err()
        );
        assert!(
            msg.contains("truncated") && msg.contains("RIFF"),
            "cut at {cut}: {msg}"
        );
    }
}

#[test]
fn a_truncated_jpeg_or_png_is_called_truncated() {
    for (format, bytes) in [("JPEG", jpeg_32()), ("PNG", png_32())] {
        let msg = format!(
            "{:#}",
            decode_image(&bytes[..bytes.len() / 2], ColorMode::Rgb).unwrap_err()
        );
        assert!(msg.contains("truncated"), "{format}: {msg}");
    }
}

#[test]
fn bytes_after_the_end_of_a_jpeg_are_allowed() {
    let mut bytes = jpeg_32();
    let whole = decode_image(&bytes, ColorMode::Rgb).unwrap();
    bytes.extend_from_slice(b"camera trailer");
    assert_eq!(decode_image(&bytes, ColorMode::Rgb).unwrap(), whole);
}

/// A PNM header may declare a width or height of 0, which the decoder accepts: such an image is
/// refused, by itself and in a folder (read ahead into memory or batch by batch), naming the
/// file. It used to panic in the resize, or in the loader's thread, where the epoch then ended
/// early as if complete.
#[test]
fn an_image_with_no_pixels_is_refused_naming_the_file() {
    for header in [&b"P6\n0 5\n255\n"[..], b"P5\n7 0\n255\n", b"P5\n0 0\n255\n"] {
        let msg = format!("{:#}", decode_image(header, ColorMode::Rgb).unwrap_err());
        assert!(msg.contains("no pixels"), "{msg}");
    }
    let dir = tempdir().unwrap();
    let tree = dir.path().join("tree");
    for split in ["train", "test"] {
        for class in ["a", "b"] {
            let dir = tree.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("1.png"), png_32()).unwrap();
        }
    }
    // The first file of its class: the one a folder read into memory takes its shape from.
    let empty = tree.join("train").join("b").join("0.ppm");
    std::fs::write(&empty, b"P6\n0 5\n255\n").unwrap();
    let memory = FolderOptions {
        storage: Storage::Memory,
        ..FolderOptions::default()
    };
    let msg = chain(&image_folder(&tree, &memory).unwrap_err());
    assert!(
        msg.contains(&empty.display().to_string()) && msg.contains("no pixels"),
        "{msg}"
    );
    let lazy = image_folder(&tree, &FolderOptions::default()).unwrap();
    let index = (0..lazy.train.len())
        .find(|&i| lazy.train.image(i).is_err())
        .expect("the empty image fails");
    let msg = chain(&lazy.train.image(index).unwrap_err());
    assert!(msg.contains("0.ppm") && msg.contains("no pixels"), "{msg}");
}

/// A train/test ImageFolder of 32x32 JPEGs, one of them cut in half inside its scan data.
fn folder_with_truncated_jpeg(root: &Path) -> std::path::PathBuf {
    for split in ["train", "test"] {
        for class in ["a", "b"] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("0.jpg"), jpeg_32()).unwrap();
        }
    }
    let jpeg = jpeg_32();
    let cut = root.join("train").join("b").join("1.jpg");
    std::fs::write(&cut, &jpeg[..jpeg.len() / 2]).unwrap();
    cut
}

#[test]
fn truncated_jpeg_in_a_folder_or_archive_names_the_file() {
    let dir = tempdir().unwrap();
    let tree = dir.path().join("tree");
    let cut = folder_with_truncated_jpeg(&tree);
    let memory = FolderOptions {
        storage: Storage::Memory,
        ..FolderOptions::default()
    };
    let msg = chain(&image_folder(&tree, &memory).unwrap_err());
    assert!(
        msg.contains(&cut.display().to_string()) && msg.contains("truncated"),
        "{msg}"
    );
    let lazy = image_folder(&tree, &FolderOptions::default()).unwrap();
    let msg = chain(&lazy.train.image(lazy.train.len() - 1).unwrap_err());
    assert!(msg.contains("1.jpg") && msg.contains("truncated"), "{msg}");

    let archive = dir.path().join("jpegs.tar.gz");
    tar_gz(&tree, &archive, "jpegs");
    let msg = chain(&image_folder(&archive, &memory).unwrap_err());
    assert!(
        msg.contains("jpegs.tar.gz:jpegs/train/b/1.jpg") && msg.contains("truncated"),
        "{msg}"
    );
}

/// The gzip header fields no reader checks (RFC 1952): FLG's FTEXT hint (byte 3, bit 0), MTIME
/// (bytes 4-7), XFL (byte 8) and OS (byte 9). `gzip -t` accepts any value there too; a flip
/// anywhere else changes the deflate data, the CRC-32 or the length, which the trailer catches.
fn unchecked_gzip_bit(offset: usize, bit: u8) -> bool {
    (offset == 3 && bit == 0) || (4..=9).contains(&offset)
}

/// The whole decompressed content of a gzip file, checked against its CRC-32 and length.
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(bytes), &mut out).unwrap();
    out
}

/// Every single-bit flip (all bits of the first and last 16 bytes, one bit per byte elsewhere)
/// and every truncation of `file` must make `load` fail naming `needle`, with one exception: a
/// flip that leaves the content as it was may pass, giving exactly `original`. That is a flip in
/// the gzip header's unchecked fields, or one in the deflate encoding's slack: the padding bits of
/// a stored block, the distance of a back-reference inside a run of equal bytes (the tar's zero
/// padding), the code length of an unused symbol. For those the test proves the decompressed
/// stream bit-identical (its CRC-32 and length verified); `gzip -t` accepts them as well.
fn corrupt_everywhere<T: PartialEq + std::fmt::Debug>(
    file: &Path,
    needle: &str,
    original: &T,
    load: impl Fn() -> anyhow::Result<T>,
) {
    let bytes = std::fs::read(file).unwrap();
    let n = bytes.len();
    let mut flips = Vec::new();
    for offset in 0..n {
        if offset < 16 || offset + 16 >= n {
            flips.extend((0..8).map(|bit| (offset, bit)));
        } else {
            flips.push((offset, (offset % 8) as u8));
        }
    }
    let mut passed = 0;
    for (offset, bit) in flips {
        let mut bad = bytes.clone();
        bad[offset] ^= 1 << bit;
        std::fs::write(file, &bad).unwrap();
        match load() {
            Err(err) => assert!(chain(&err).contains(needle), "flip {offset}:{bit}: {err:#}"),
            Ok(data) => {
                assert_eq!(&data, original, "flip {offset}:{bit} altered the data");
                assert!(
                    unchecked_gzip_bit(offset, bit) || gunzip(&bad) == gunzip(&bytes),
                    "flip {offset}:{bit} changed the decompressed stream yet passed"
                );
                passed += 1;
            }
        }
    }
    eprintln!(
        "{}: {passed} flips left the content unchanged",
        file.display()
    );
    for cut in 0..n {
        std::fs::write(file, &bytes[..cut]).unwrap();
        let err = load()
            .err()
            .unwrap_or_else(|| panic!("cut at {cut} of {n} passed"));
        assert!(chain(&err).contains(needle), "cut at {cut}: {err:#}");
    }
    std::fs::write(file, &bytes).unwrap();
}

/// Every label and pixel of both halves.
fn contents(split: &Split) -> Vec<(usize, Vec<u8>)> {
    [&split.train, &split.test]
        .iter()
        .flat_map(|ds| (0..ds.len()).map(|i| (ds.label(i), ds.image(i).unwrap().data)))
        .collect()
}

/// A `cifar-10-binary.tar.gz` with `per_batch` records in each of the six batches.
fn write_cifar_archive(path: &Path, per_batch: usize) {
    let dir = tempdir().unwrap();
    let bin = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&bin).unwrap();
    for i in 1..=5 {
        std::fs::write(
            bin.join(format!("data_batch_{i}.bin")),
            cifar_records(per_batch),
        )
        .unwrap();
    }
    std::fs::write(bin.join("test_batch.bin"), cifar_records(per_batch)).unwrap();
    tar_gz(&bin, path, "cifar-10-batches-bin");
}

#[test]
fn every_corruption_of_a_cifar_tar_gz_is_an_error_naming_it() {
    let dir = tempdir().unwrap();
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    write_cifar_archive(&archive, 1);
    let original = contents(&cifar10(Some(&archive)).unwrap());
    corrupt_everywhere(&archive, "cifar-10-binary.tar.gz", &original, || {
        Ok(contents(&cifar10(Some(&archive))?))
    });
}

#[test]
fn data_after_the_gzip_stream_is_an_error() {
    let dir = tempdir().unwrap();
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    write_cifar_archive(&archive, 1);
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes.extend_from_slice(b"junk");
    std::fs::write(&archive, &bytes).unwrap();
    let msg = chain(&cifar10(Some(&archive)).unwrap_err());
    assert!(msg.contains("cifar-10-binary.tar.gz"), "{msg}");
}

#[test]
fn every_truncation_of_a_plain_tar_is_an_error_naming_it() {
    let dir = tempdir().unwrap();
    let tree = write_folder(
        &dir.path().join("tree"),
        &["train", "test"],
        &["a", "b"],
        1,
        3,
        2,
    );
    let tar_path = dir.path().join("set.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    builder.append_dir_all("set", &tree).unwrap();
    builder.into_inner().unwrap();
    let bytes = std::fs::read(&tar_path).unwrap();
    let whole = read_archive(&tar_path).unwrap().len();
    assert_eq!(whole, 4 + 7, "4 images and 7 directories");
    // Everything up to the end of the second zero block of the end-of-archive marker counts;
    // after it comes the record padding that tar ignores.
    let end = bytes.len() - bytes.iter().rev().position(|&b| b != 0).unwrap();
    let marker_end = end.div_ceil(512) * 512 + 1024;
    for cut in 0..marker_end {
        std::fs::write(&tar_path, &bytes[..cut]).unwrap();
        let err = read_archive(&tar_path)
            .err()
            .unwrap_or_else(|| panic!("cut at {cut} of {} passed", bytes.len()));
        assert!(chain(&err).contains("set.tar"), "cut at {cut}: {err:#}");
    }
    std::fs::write(&tar_path, &bytes[..end.div_ceil(512) * 512 + 700]).unwrap();
    let msg = chain(&read_archive(&tar_path).unwrap_err());
    assert!(msg.contains("end-of-archive"), "{msg}");
}

#[test]
fn a_tar_member_claiming_gigabytes_is_refused_without_allocating_them() {
    let dir = tempdir().unwrap();
    let path = dir.path().join("huge.tar");
    let mut header = tar::Header::new_gnu();
    header.set_path("train/a/0.png").unwrap();
    header.set_size(1 << 31);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(&png_32());
    std::fs::write(&path, &bytes).unwrap();
    let msg = chain(&read_archive(&path).unwrap_err());
    assert!(
        msg.contains("huge.tar") && msg.contains("train/a/0.png") && msg.contains("cut short"),
        "{msg}"
    );
}

#[test]
fn every_corruption_of_a_gz_idx_file_is_an_error_naming_it() {
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 3, 2, true);
    let load = || Ok(contents(&mnist(Some(dir.path()))?));
    let original = load().unwrap();
    for file in ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        corrupt_everywhere(&dir.path().join(file), file, &original, load);
    }
}

/// Writes an IDX file with the given magic and dimensions and `data` after the header.
fn write_idx(path: &Path, magic: u32, dims: &[u32], data: &[u8]) {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn idx_dimensions_past_usize_are_an_error_naming_the_file() {
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 3, 2, false);
    let images = dir.path().join("train-images-idx3-ubyte");
    write_idx(&images, 0x803, &[u32::MAX; 3], &[0; 64]);
    let msg = chain(&mnist(Some(dir.path())).unwrap_err());
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("impossible IDX header"),
        "{msg}"
    );
    write_idx(&images, 0x803, &[u32::MAX, u32::MAX, 1], &[0; 64]);
    let msg = chain(&mnist(Some(dir.path())).unwrap_err());
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("truncated"),
        "{msg}"
    );
}

/// A PNG whose header (with a valid CRC) claims `width` x `height` pixels, and no image data.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    png_claiming(width, height, None)
}

/// A PNG whose header claims `width` x `height` RGB pixels, with an `IDAT` chunk holding `idat`
/// (when given) and nothing more.
fn png_claiming(width: u32, height: u32, idat: Option<&[u8]>) -> Vec<u8> {
    png_of_colour(2, width, height, idat)
}

/// [`png_claiming`] with PNG colour type `colour` (0 grey, 2 RGB).
fn png_of_colour(colour: u8, width: u32, height: u32, idat: Option<&[u8]>) -> Vec<u8> {
    png_of(8, colour, width, height, idat)
}

/// [`png_of_colour`] at `depth` bits a sample.
fn png_of(depth: u8, colour: u8, width: u32, height: u32, idat: Option<&[u8]>) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        bytes.extend_from_slice(kind);
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, colour, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    if let Some(idat) = idat {
        chunk(b"IDAT", idat);
    }
    chunk(b"IEND", &[]);
    bytes
}

/// A 16-bit RGBA image under PIL's pixel limit whose pixels take over 512 MiB (the `image`
/// crate's default limit, which refused it): decoded, as PIL decodes it. 8200x8200 pixels of
/// 8 bytes, 538 MB.
#[test]
fn images_pil_decodes_fit_the_decoders_memory() {
    use std::io::Write;
    let (w, h) = (8200u32, 8200u32);
    let pixel = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xff, 0xff];
    let mut row = vec![0u8]; // filter type 0
    for _ in 0..w {
        row.extend_from_slice(&pixel);
    }
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    for _ in 0..h {
        zlib.write_all(&row).unwrap();
    }
    let png = png_of(16, 6, w, h, Some(&zlib.finish().unwrap()));
    let img = decode_image(&png, ColorMode::Rgb).expect("PIL decodes it");
    assert_eq!(img.shape(), (3, h as usize, w as usize));
    let plane = (w * h) as usize;
    for at in [0, plane / 2 + 17, plane - 1] {
        let rgb = [img.data[at], img.data[plane + at], img.data[2 * plane + at]];
        assert_eq!(rgb, [0x12, 0x56, 0x9a], "pixel {at}: the high bytes");
    }
}

#[test]
fn image_dimensions_past_memory_are_an_error() {
    for (w, h) in [(u32::MAX >> 1, u32::MAX >> 1), (1 << 20, 1 << 20), (0, 5)] {
        let result = decode_image(&png_header_only(w, h), ColorMode::Rgb);
        assert!(result.is_err(), "{w}x{h}");
    }
    // Past the decoder's memory limit (PIL's decompression-bomb threshold): named by its size.
    // (A zlib stream of no bytes as its data: the decoder checks the size before the data.)
    let empty_zlib = [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];
    let bomb = png_claiming(30000, 30000, Some(&empty_zlib));
    let msg = chain(&decode_image(&bomb, ColorMode::Rgb).unwrap_err());
    assert!(
        msg.contains("too large to decode (30000x30000 pixels"),
        "{msg}"
    );
    // Over PIL's pixel count though its grey bytes (381 MiB) fit the decoder's memory limit:
    // refused as PIL refuses it, before decoding.
    let grey_bomb = png_of_colour(0, 20000, 20000, Some(&empty_zlib));
    let msg = chain(&decode_image(&grey_bomb, ColorMode::Rgb).unwrap_err());
    assert!(
        msg.contains("too large to decode (20000x20000 pixels"),
        "{msg}"
    );
    let dir = tempdir().unwrap();
    let root = write_folder(dir.path(), &["train", "test"], &["a", "b"], 1, 4, 4);
    let huge = root.join("train").join("a").join("huge.png");
    std::fs::write(&huge, png_header_only(1 << 20, 1 << 20)).unwrap();
    let memory = FolderOptions {
        storage: Storage::Memory,
        ..FolderOptions::default()
    };
    let msg = chain(&image_folder(&root, &memory).unwrap_err());
    assert!(msg.contains("huge.png"), "{msg}");
}
