//! ImageFolder layouts, class order, splits, archives and CHW decoding.

mod common;

use common::*;
use datasets::{cifar10, decode_image, image_folder, ColorMode, FolderOptions, Storage};
use tempfile::tempdir;

fn opts(storage: Storage) -> FolderOptions {
    FolderOptions {
        storage,
        ..FolderOptions::default()
    }
}

#[test]
fn decoded_png_is_chw_with_known_pixels() {
    // 3 wide, 2 high: H and W differ, so a swapped permutation would show.
    let img = pattern_rgb(3, 2, 5);
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let out = decode_image(png.get_ref(), ColorMode::Rgb).unwrap();
    assert_eq!(out.shape(), (3, 2, 3));
    for y in 0..2 {
        for x in 0..3 {
            let at = |c: usize| out.data[c * 6 + y * 3 + x];
            assert_eq!((at(0), at(1), at(2)), (5 + x as u8, 5 + 10 * y as u8, 105));
        }
    }
    let grey = decode_image(png.get_ref(), ColorMode::Gray).unwrap();
    assert_eq!(grey.shape(), (1, 2, 3));
}

/// PPM and PGM files of another maxval than 255 have PIL's levels (Pillow 13.0's values,
/// printed by `Image.open(f).convert("RGB")`): `round(v / maxval * 255)` with ties to even
/// (30 of 100 is 76, 10 of 100 is 26), where the `image` crate rounded ties up and a 16-bit PPM
/// gave its high byte (65407 of 65535 is 255 in both, 383 is 1 here and 1 there, 32768 128).
#[test]
fn pnm_levels_of_another_maxval_are_pils() {
    let file = |magic: &str, w: usize, max: u32, values: &[u32], two: bool| {
        let mut bytes = format!("{magic}\n{w} 1\n{max}\n").into_bytes();
        for v in values {
            match (magic, two) {
                ("P2" | "P3", _) => bytes.extend(format!("{v} ").bytes()),
                (_, true) => bytes.extend((*v as u16).to_be_bytes()),
                (_, false) => bytes.push(*v as u8),
            }
        }
        bytes
    };
    let percent = [0, 1, 2, 10, 30, 50, 70, 90, 99, 100, 33, 67];
    let of_100 = [0, 3, 5, 26, 76, 128, 178, 230, 252, 255, 84, 171];
    let per_mille: Vec<u32> = percent.iter().map(|v| v * 10).collect();
    let sixteen = [
        0, 1, 127, 128, 255, 256, 383, 384, 32767, 32768, 65407, 65535,
    ];
    let of_sixteen = [0, 0, 0, 0, 1, 1, 1, 1, 127, 128, 255, 255];
    let sevenths = [0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6];
    let of_7 = [0, 36, 73, 109, 146, 182, 219, 255, 109, 146, 182, 219];
    // A 16-bit grey: PIL's `I`, `round(v / maxval * 65535)`, clipped at 255.
    let eight = [0, 1, 2, 3, 4, 5, 6, 7];
    let of_1542 = [0, 42, 85, 128, 170, 212, 255, 255];
    let of_510 = [0, 128, 255, 255, 255, 255, 255, 255];
    let cases: [(Vec<u8>, &[u8], bool); 8] = [
        (file("P6", 4, 100, &percent, false), &of_100, true),
        (file("P6", 4, 1000, &per_mille, true), &of_100, true),
        (file("P3", 4, 1000, &per_mille, false), &of_100, true),
        (file("P6", 4, 65535, &sixteen, true), &of_sixteen, true),
        (file("P5", 12, 100, &percent, false), &of_100, false),
        (file("P2", 12, 7, &sevenths, false), &of_7, false),
        (file("P5", 8, 1542, &eight, true), &of_1542, false),
        (file("P2", 8, 510, &eight, false), &of_510, false),
    ];
    for (bytes, want, rgb) in cases {
        let img = decode_image(&bytes, ColorMode::Rgb).unwrap();
        // (3, 1, W) planes: the first plane's values in pixel order, or each pixel's three.
        let n = want.len();
        let got: Vec<u8> = match rgb {
            true => (0..n)
                .map(|i| img.data[(i % 3) * (n / 3) + i / 3])
                .collect(),
            false => img.data[..n].to_vec(),
        };
        let head = String::from_utf8_lossy(&bytes[..12]).into_owned();
        assert_eq!(got, want, "{head:?}");
    }
}

/// A plain (ASCII) PGM or PPM as Pillow 13 reads it: a value above the maxval refused, naming
/// it ("Channel value too large for this mode: 300"; it saturated), a token of more than 10
/// characters refused ("Token too long found in data"), a comment among the values deleted
/// with its line's end (`50 # x` then ` 100` reads 50 and 100; `50#c` then `100` reads 50100,
/// refused above maxval 255, as by Pillow; the decoder refused any comment there); a binary
/// file's value above the maxval saturates, as in PIL (Pillow's levels: 128 and 255 for 50 and
/// 200 of 100); a header of `+`-signed numbers (which Pillow reads) is sized-checked as read.
#[test]
fn a_plain_pnm_is_read_as_pil_reads_it() {
    for (bytes, said) in [
        (
            &b"P3\n2 1\n255\n0 0 0 300 0 0\n"[..],
            "the value 300 above its maxval 255 (sample 3, pixel 1)",
        ),
        (
            b"P2\n2 1\n100\n50 101\n",
            "the value 101 above its maxval 100 (sample 1",
        ),
        (
            b"P2 # a comment 999\n2 1 100\n# 999\n50 12345678901\n",
            "Token too long",
        ),
        (b"P2\n2 1\n255\n00000000001 1\n", "Token too long"),
        (
            b"P2\n2 1\n255\n50#c\n100 7\n",
            "the value 50100 above its maxval 255",
        ),
    ] {
        let err = format!("{:#}", decode_image(bytes, ColorMode::Gray).unwrap_err());
        assert!(err.contains(said), "{err}");
    }
    for bytes in [
        &b"P2\n2 1\n100\n# c 999\n50 # x 999\n 100\n"[..],
        b"P2\r\n2 1\r\n100 # m\r50\r\n100",
        b"P5\n2 1\n100\n\x32\xc8",
    ] {
        let img = decode_image(bytes, ColorMode::Gray).unwrap();
        assert_eq!(img.data, [128, 255]);
    }
    let bomb = b"P2\n+40000 +35000\n255\n0\n";
    let err = format!("{:#}", decode_image(bomb, ColorMode::Gray).unwrap_err());
    assert!(
        err.contains("40000x35000 pixels: over 178,956,970"),
        "{err}"
    );
}

/// The pixels are PIL's (Pillow 13.0, `Image.open(f).convert("RGB")` and `.convert("L")`, the
/// values below printed by it): grey from RGB rounded as its `rgb2l`, 16-bit RGB and 16-bit
/// grey with alpha by the high byte, 16-bit grey clipped at 255.
#[test]
fn pixels_are_pils_after_convert() {
    let png = |img: image::DynamicImage| {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        bytes.into_inner()
    };
    let triples: [[u8; 3]; 8] = [
        [0, 0, 0],
        [255, 255, 255],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [12, 200, 99],
        [128, 128, 127],
        [1, 2, 3],
    ];
    let rgb = image::RgbImage::from_fn(8, 1, |x, _| image::Rgb(triples[x as usize]));
    let grey = decode_image(&png(rgb.into()), ColorMode::Gray).unwrap();
    assert_eq!(grey.data, [0, 255, 76, 150, 29, 132, 128, 2]);

    let values: [u16; 7] = [0, 255, 256, 300, 0x80ff, 0x8100, 65535];
    let rgb16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(7, 1, |x, _| {
        image::Rgb([values[x as usize]; 3])
    });
    let rgb16 = png(image::DynamicImage::ImageRgb16(rgb16));
    let expected = [0, 0, 1, 1, 128, 129, 255];
    assert_eq!(
        decode_image(&rgb16, ColorMode::Rgb).unwrap().data[..7],
        expected
    );
    assert_eq!(
        decode_image(&rgb16, ColorMode::Gray).unwrap().data,
        expected
    );
    let grey16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(7, 1, |x, _| {
        image::Luma([values[x as usize]])
    });
    let grey16 = png(image::DynamicImage::ImageLuma16(grey16));
    // The same with a tRNS chunk (transparent grey 300) after IHDR: the decoder makes it grey
    // with alpha, PIL keeps it `I;16` and clips (Pillow 13: `convert("RGB")` and `convert("L")`
    // give the clipped values).
    let ihdr_end = 8 + 4 + 4 + 13 + 4;
    let mut trns = vec![0, 0, 0, 2];
    trns.extend(b"tRNS");
    trns.extend(300u16.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&trns[4..]);
    trns.extend(crc.sum().to_be_bytes());
    let grey16_trns = [&grey16[..ihdr_end], &trns, &grey16[ihdr_end..]].concat();
    let clipped = [0, 255, 255, 255, 255, 255, 255];
    for grey16 in [&grey16, &grey16_trns] {
        assert_eq!(decode_image(grey16, ColorMode::Gray).unwrap().data, clipped);
        assert_eq!(
            decode_image(grey16, ColorMode::Rgb).unwrap().data[7..14],
            clipped
        );
    }
    // 16-bit grey with alpha (PNG colour type 4): PIL reads it as `LA;16B`, the high byte.
    let grey_alpha16 = image::ImageBuffer::<image::LumaA<u16>, _>::from_fn(7, 1, |x, _| {
        image::LumaA([values[x as usize], 65535])
    });
    let grey_alpha16 = png(image::DynamicImage::ImageLumaA16(grey_alpha16));
    assert_eq!(
        decode_image(&grey_alpha16, ColorMode::Gray).unwrap().data,
        expected
    );
    assert_eq!(
        decode_image(&grey_alpha16, ColorMode::Rgb).unwrap().data[7..14],
        expected
    );
}

/// JPEGs decode to Pillow's pixels exactly (`tests/data`: written and decoded by Pillow 13.0 on
/// libjpeg-turbo 3.2.0), colour 4:2:0, greyscale, progressive 4:2:2, RGB-coded, CMYK (with and
/// without Adobe's marker: PIL inverts both) and YCCK, as RGB and as grey.
#[test]
fn jpegs_decode_to_pils_pixels() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for name in [
        "pil-420",
        "pil-grey",
        "pil-progressive",
        "pil-rgb",
        "pil-cmyk",
        "pil-cmyk-noadobe",
        "pil-ycck",
    ] {
        let jpeg = std::fs::read(data.join(format!("{name}.jpg"))).unwrap();
        for (mode, ext, channels) in [(ColorMode::Rgb, "rgb", 3), (ColorMode::Gray, "l", 1)] {
            let pil = std::fs::read(data.join(format!("{name}.{ext}"))).unwrap();
            let ours = decode_image(&jpeg, mode).unwrap();
            assert_eq!(ours.shape(), (channels, 16, 16), "{name}");
            // Ours is CHW, PIL's HWC.
            let hwc: Vec<u8> = (0..16 * 16)
                .flat_map(|p| (0..channels).map(move |c| (c, p)))
                .map(|(c, p)| ours.data[c * 256 + p])
                .collect();
            let differing = hwc.iter().zip(&pil).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "{name} as {ext}: {differing} values differ");
        }
    }
}

/// torchvision's other image types (`IMG_EXTENSIONS`) decode to the PNG's pixels, and an
/// ImageFolder takes each of its extensions, in any case.
#[test]
fn bmp_ppm_pgm_tiff_and_webp_decode_and_count_in_a_folder() {
    use image::ImageFormat::{Bmp, Png, Pnm, Tiff, WebP};
    let img = pattern_rgb(5, 3, 9);
    let encode = |format| {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    };
    let png = encode(Png);
    let rgb = decode_image(&png, ColorMode::Rgb).unwrap();
    let grey = decode_image(&png, ColorMode::Gray).unwrap();
    // A binary PGM (P5) of that grey, as PIL writes one.
    let encode_pgm = || {
        use image::codecs::pnm::{PnmEncoder, PnmSubtype, SampleEncoding};
        let mut bytes = Vec::new();
        let encoder =
            PnmEncoder::new(&mut bytes).with_subtype(PnmSubtype::Graymap(SampleEncoding::Binary));
        image::GrayImage::from_raw(5, 3, grey.data.clone())
            .unwrap()
            .write_with_encoder(encoder)
            .unwrap();
        bytes
    };
    let dir = tempdir().unwrap();
    let files = [
        ("bmp", encode(Bmp)),
        ("ppm", encode(Pnm)),
        ("TIF", encode(Tiff)),
        ("tiff", encode(Tiff)),
        ("webp", encode(WebP)),
    ];
    for (ext, bytes) in &files {
        assert_eq!(decode_image(bytes, ColorMode::Rgb).unwrap(), rgb, "{ext}");
        assert_eq!(decode_image(bytes, ColorMode::Gray).unwrap(), grey, "{ext}");
        let path = dir.path().join(format!("a/{ext}.{ext}"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let pgm = encode_pgm();
    assert!(pgm.starts_with(b"P5"), "a binary PGM");
    assert_eq!(decode_image(&pgm, ColorMode::Gray).unwrap(), grey);
    save_png(&img, &dir.path().join("b/y.png"));
    std::fs::write(dir.path().join("b/x.pgm"), &pgm).unwrap();
    std::fs::write(dir.path().join("b/z.PGM"), &pgm).unwrap();
    let split = image_folder(dir.path(), &opts(Storage::Memory)).unwrap();
    assert_eq!(split.train.classes(), ["a", "b"]);
    assert_eq!(split.train.len() + split.test.len(), files.len() + 3);
}

#[test]
fn train_test_folders_sorted_classes_and_labels() {
    let dir = tempdir().unwrap();
    write_folder(
        dir.path(),
        &["train", "test"],
        &["zebra", "Ant", "cat"],
        3,
        4,
        2,
    );
    // Upper-case extension and a nested folder count; hidden and non-image files do not.
    save_png(
        &pattern_rgb(4, 2, 200),
        &dir.path().join("train/cat/sub/x.PNG"),
    );
    std::fs::write(dir.path().join("train/cat/readme.txt"), "no").unwrap();
    save_png(
        &pattern_rgb(4, 2, 0),
        &dir.path().join("train/cat/.hidden.png"),
    );
    for storage in [Storage::Files, Storage::Memory] {
        let split = image_folder(dir.path(), &opts(storage)).unwrap();
        assert_eq!(split.train.classes(), ["Ant", "cat", "zebra"]);
        assert_eq!(split.test.classes(), split.train.classes());
        assert_eq!((split.train.len(), split.test.len()), (10, 9));
        let labels: Vec<usize> = (0..10).map(|i| split.train.label(i)).collect();
        assert_eq!(labels, [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]);
        // "cat" files: 000, 001, 002 then sub/x.PNG (os.walk order: folder, then subfolders).
        assert_eq!(split.train.image(6).unwrap().data[0], 200);
        // "Ant" was written as label 1 -> base 20; its first image's red at (0, 0) is 20.
        let first = split.train.image(0).unwrap();
        assert_eq!(first.shape(), (3, 2, 4));
        assert_eq!(first.data[0], 20);
    }
}

#[test]
fn val_folder_is_the_test_split_and_class_sets_must_match() {
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &["train"], &["a", "b"], 2, 4, 4);
    write_folder(dir.path(), &["val"], &["b"], 1, 4, 4);
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains(&format!(
            "val{}a: missing or empty class folder",
            std::path::MAIN_SEPARATOR
        )),
        "{msg}"
    );
    write_folder(dir.path(), &["val"], &["a"], 1, 4, 4);
    let split = image_folder(dir.path(), &FolderOptions::default()).unwrap();
    assert_eq!(split.test.len(), 2);
    assert_eq!(
        split.test.label(1),
        1,
        "val's class b keeps its train label"
    );
    write_folder(dir.path(), &["val"], &["c"], 1, 4, 4);
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(msg.contains("c: class folder not among"), "{msg}");
}

#[test]
fn class_folders_only_split_by_seeded_fraction() {
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &[""], &["a", "b"], 10, 4, 4);
    let options = FolderOptions {
        test_fraction: 0.3,
        split_seed: 7,
        ..FolderOptions::default()
    };
    let split = image_folder(dir.path(), &options).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (14, 6));
    let test_labels: Vec<usize> = (0..6).map(|i| split.test.label(i)).collect();
    assert_eq!(test_labels, [0, 0, 0, 1, 1, 1], "stratified, in order");
    let again = image_folder(dir.path(), &options).unwrap();
    for i in 0..6 {
        assert_eq!(split.test.image(i).unwrap(), again.test.image(i).unwrap());
    }
    let other = image_folder(
        dir.path(),
        &FolderOptions {
            split_seed: 8,
            ..options.clone()
        },
    )
    .unwrap();
    let picks = |s: &datasets::Split| -> Vec<u8> {
        (0..6).map(|i| s.test.image(i).unwrap().data[0]).collect()
    };
    assert_ne!(
        picks(&split),
        picks(&other),
        "another seed draws other samples"
    );
}

#[test]
fn archive_matches_directory() {
    let dir = tempdir().unwrap();
    let tree = dir.path().join("tree");
    write_folder(&tree, &["train", "test"], &["b", "a"], 2, 3, 5);
    let archive = dir.path().join("tree.tar.gz");
    tar_gz(&tree, &archive, "wrapped");
    for storage in [Storage::Files, Storage::Memory] {
        let from_dir = image_folder(&tree, &opts(storage)).unwrap();
        let from_tar = image_folder(&archive, &opts(storage)).unwrap();
        assert_eq!(from_tar.train.classes(), ["a", "b"]);
        assert_eq!(from_tar.train.len(), from_dir.train.len());
        for i in 0..from_dir.train.len() {
            assert_eq!(from_tar.train.label(i), from_dir.train.label(i));
            assert_eq!(
                from_tar.train.image(i).unwrap(),
                from_dir.train.image(i).unwrap()
            );
        }
    }
}

/// A `.tar` of `members`: (path, link target or `None` for a file, bytes), each a regular file,
/// a symbolic link, (`hard:` before the target) a hard link, (`fifo:`) a named pipe or
/// (`contiguous:`) a contiguous file, with the path written as given.
fn raw_tar(path: &std::path::Path, members: &[(&[u8], Option<&str>, &[u8])]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, link, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_mode(0o644);
        match link {
            None => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
            }
            Some("fifo:") => {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_size(0);
            }
            Some("contiguous:") => {
                header.set_entry_type(tar::EntryType::Continuous);
                header.set_size(bytes.len() as u64);
            }
            Some(target) => {
                let (kind, target) = match target.strip_prefix("hard:") {
                    Some(t) => (tar::EntryType::Link, t),
                    None => (tar::EntryType::Symlink, *target),
                };
                header.set_entry_type(kind);
                header.set_link_name(target).unwrap();
                header.set_size(0);
            }
        }
        header.set_cksum();
        builder.append(&header, *bytes).unwrap();
    }
    builder.into_inner().unwrap();
}

/// An archive reads as the folder walk reads the tree `tar -x` leaves: hard and symbolic links
/// to files (also through another link) as those files, a member given twice as its last copy.
/// Links used to be dropped and a repeated member counted twice.
#[test]
fn an_archive_reads_as_its_extracted_tree() {
    let dir = tempdir().unwrap();
    let png = |k: u8| {
        let mut bytes = std::io::Cursor::new(Vec::new());
        pattern_rgb(4, 4, k)
            .write_to(&mut bytes, image::ImageFormat::Png)
            .unwrap();
        bytes.into_inner()
    };
    let (a0, a1, b0, old) = (png(1), png(2), png(3), png(9));
    let archive = dir.path().join("links.tar");
    raw_tar(
        &archive,
        &[
            (b"train/a/0.png", None, &a0),
            (b"train/a/1.png", None, &old),
            (b"train/a/1.png", None, &a1),
            (b"train/a/2.png", Some("0.png"), b""),
            (b"train/a/3.png", Some("hard:train/a/0.png"), b""),
            (b"train/a/4.png", Some("3.png"), b""),
            (b"test/a/0.png", Some("../../train/a/1.png"), b""),
            // A link, then a file of its name: the file, as extracted.
            (b"train/a/5.png", Some("1.png"), b""),
            (b"train/a/5.png", None, &b0),
            (b"train/b/0.png", None, &b0),
            (b"test/b/0.png", None, &b0),
        ],
    );
    let split = image_folder(&archive, &opts(Storage::Memory)).unwrap();
    assert_eq!(split.train.len(), 7, "a: 0, 1 (once), 2, 3, 4 and 5; b: 0");
    let decoded = |bytes: &[u8]| decode_image(bytes, ColorMode::Rgb).unwrap();
    for (i, want) in [&a0, &a1, &a0, &a0, &a0, &b0, &b0].into_iter().enumerate() {
        assert_eq!(
            split.train.image(i).unwrap(),
            decoded(want),
            "training image {i}"
        );
    }
    assert_eq!(split.test.len(), 2);
    assert_eq!(split.test.image(0).unwrap(), decoded(&a1));
}

/// A pipe member named as an image is refused, named, as a pipe in a folder is (extracted, it
/// would block the read); one named otherwise is skipped, as other files are.
#[test]
fn a_pipe_member_named_as_an_image_is_refused() {
    let dir = tempdir().unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    pattern_rgb(4, 4, 1)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let png = png.into_inner();
    let archive = dir.path().join("pipes.tar");
    let members: [(&[u8], Option<&str>, &[u8]); 5] = [
        (b"train/a/0.png", None, &png),
        (b"train/b/0.png", None, &png),
        (b"test/a/0.png", None, &png),
        (b"test/b/0.png", None, &png),
        (b"train/a/notes.fifo", Some("fifo:"), b""),
    ];
    raw_tar(&archive, &members);
    let read = |archive: &std::path::Path| image_folder(archive, &opts(Storage::Memory));
    assert_eq!(read(&archive).unwrap().train.len(), 2);
    // A hidden one is skipped, as in a folder; a contiguous file (type '7') is a file.
    let mut more = members.to_vec();
    more.push((b"./train/.cache/1.jpg", Some("fifo:"), b""));
    more.push((b"train/b/1.png", Some("contiguous:"), &png));
    raw_tar(&archive, &more);
    assert_eq!(read(&archive).unwrap().train.len(), 3);
    let mut with_image = members.to_vec();
    with_image.push((b"train/a/1.jpg", Some("fifo:"), b""));
    raw_tar(&archive, &with_image);
    let err = chain(&image_folder(&archive, &opts(Storage::Memory)).expect_err("refused"));
    assert!(
        err.contains("pipes.tar")
            && err.contains("member train/a/1.jpg: named as an image but not a regular file"),
        "{err}"
    );
}

/// A tree with symbolic links, and its archive as `tar` stores them (links as links): the same
/// data, or the same refusal (a linked folder whose target the walk already entered is empty).
#[test]
fn an_archive_of_links_and_its_tree_agree() {
    use std::os::unix::fs::symlink;
    for (folder_link, hidden) in [(false, false), (true, false), (false, true)] {
        let dir = tempdir().unwrap();
        let tree = dir.path().join("tree");
        write_folder(&tree, &["train"], &["a"], 2, 4, 4);
        if hidden {
            // train/b is a link to a hidden folder, which the walk enters through it alone.
            write_folder(&tree, &[".store"], &["b"], 2, 4, 4);
            symlink("../.store/b", tree.join("train/b")).unwrap();
        } else {
            write_folder(&tree, &["train"], &["b"], 2, 4, 4);
        }
        std::fs::create_dir_all(tree.join("test/a")).unwrap();
        symlink("000.png", tree.join("train/a/002.png")).unwrap();
        symlink("../../train/a/001.png", tree.join("test/a/000.png")).unwrap();
        symlink("/nowhere/at/all", tree.join("train/b/notes")).unwrap();
        if folder_link {
            symlink("../train/b", tree.join("test/b")).unwrap();
        } else {
            write_folder(&tree, &["test"], &["b"], 1, 4, 4);
        }
        let archive = dir.path().join("tree.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        builder.follow_symlinks(false);
        builder.append_dir_all("tree", &tree).unwrap();
        builder.into_inner().unwrap();
        let from_tree = image_folder(&tree, &opts(Storage::Memory));
        let from_tar = image_folder(&archive, &opts(Storage::Memory));
        match (from_tree, from_tar) {
            (Ok(t), Ok(a)) => {
                assert!(!folder_link);
                for (t, a) in [(&t.train, &a.train), (&t.test, &a.test)] {
                    assert_eq!(t.len(), a.len());
                    assert_eq!(t.classes(), a.classes());
                    for i in 0..t.len() {
                        assert_eq!(t.label(i), a.label(i));
                        assert_eq!(t.image(i).unwrap(), a.image(i).unwrap());
                    }
                }
                assert_eq!(a.train.len(), 5);
            }
            (Err(_), Err(_)) => assert!(folder_link),
            (t, a) => panic!(
                "the tree gave {:?}, the archive {:?}",
                t.map(|s| s.train.len()),
                a.map(|s| s.train.len())
            ),
        }
    }
}

/// A class folder that holds no image but other files is there once extracted: refused as an
/// empty class by the folder walk, and so in the archive (as `tar cf x.tar */*` makes it, with
/// no folder members).
#[test]
fn a_class_folder_of_notes_alone_is_refused_in_an_archive_too() {
    let dir = tempdir().unwrap();
    let tree = dir.path().join("tree");
    write_folder(&tree, &["train", "test"], &["a", "b"], 2, 4, 4);
    std::fs::create_dir_all(tree.join("train/notes")).unwrap();
    std::fs::write(tree.join("train/notes/readme.txt"), "notes").unwrap();
    let from_tree = chain(&image_folder(&tree, &opts(Storage::Memory)).unwrap_err());
    let png = std::fs::read(tree.join("train/a/000.png")).unwrap();
    let archive = dir.path().join("notes.tar");
    raw_tar(
        &archive,
        &[
            (b"train/a/0.png", None, &png),
            (b"train/b/0.png", None, &png),
            (b"train/notes/readme.txt", None, b"notes"),
            (b"test/a/0.png", None, &png),
            (b"test/b/0.png", None, &png),
        ],
    );
    let from_tar = chain(&image_folder(&archive, &opts(Storage::Memory)).unwrap_err());
    for msg in [from_tree, from_tar] {
        assert!(msg.contains("notes"), "{msg}");
    }
}

/// Members that `tar -x` would not put where their names say, or whose names two class folders
/// could share, are refused naming the member.
#[test]
fn archive_members_that_cannot_be_classes_are_refused() {
    let dir = tempdir().unwrap();
    let png = {
        let mut bytes = std::io::Cursor::new(Vec::new());
        pattern_rgb(4, 4, 1)
            .write_to(&mut bytes, image::ImageFormat::Png)
            .unwrap();
        bytes.into_inner()
    };
    let cases: [(&[u8], Option<&str>, &str); 4] = [
        (b"train/cat/../dog/0.png", None, "\"..\""),
        (b"train/caf\xe9/0.png", None, "not UTF-8"),
        (
            b"train/cat/1.png",
            Some("/etc/cat.png"),
            "a place outside it",
        ),
        (b"train/cat/1.png", Some("2.png"), "train/cat/2.png"),
    ];
    for (name, link, needle) in cases {
        let archive = dir.path().join("bad.tar");
        raw_tar(
            &archive,
            &[
                (b"train/cat/0.png", None, &png),
                (b"train/dog/0.png", None, &png),
                (name, link, if link.is_some() { b"" } else { &png }),
            ],
        );
        let msg = chain(&image_folder(&archive, &opts(Storage::Memory)).unwrap_err());
        let shown = String::from_utf8_lossy(name);
        assert!(
            msg.contains(&*shown) && msg.contains(needle) && !msg.contains("corrupt"),
            "{msg}"
        );
    }
    // Such names on files that are no images are skipped, as the walk skips those files.
    let archive = dir.path().join("notes.tar");
    raw_tar(
        &archive,
        &[
            (b"train/cat/0.png", None, &png),
            (b"train/dog/0.png", None, &png),
            (b"test/cat/0.png", None, &png),
            (b"test/dog/0.png", None, &png),
            (b"train/../README", None, b"notes"),
            (b"train/caf\xe9.txt", None, b"notes"),
        ],
    );
    let split = image_folder(&archive, &opts(Storage::Memory)).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (2, 2));
}

/// A class folder whose name is not UTF-8 is refused: read lossily, `caf\xe9` and `caf\xe8`
/// were one class.
#[test]
fn a_class_folder_named_in_another_encoding_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempdir().unwrap();
    let tree = dir.path().join("tree");
    write_folder(&tree, &[""], &["dog"], 2, 4, 4);
    let odd = tree.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    save_png(&pattern_rgb(4, 4, 1), &odd.join("0.png"));
    let msg = chain(&image_folder(&tree, &opts(Storage::Files)).unwrap_err());
    assert!(
        msg.contains(&odd.display().to_string()) && msg.contains("not UTF-8"),
        "{msg}"
    );
}

#[test]
fn cifar_from_folder_tree_archive_and_binary() {
    let dir = tempdir().unwrap();
    let classes = datasets::CIFAR10_CLASSES;
    let tree = dir.path().join("tree");
    write_folder(&tree, &["train", "test"], &classes, 1, 32, 32);
    let split = cifar10(Some(&tree)).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (10, 10));
    assert_eq!(split.train.classes(), classes);
    let archive = dir.path().join("cifar10-jpeg.tar.gz");
    tar_gz(&tree, &archive, "cifar10");
    let from_tar = cifar10(Some(&archive)).unwrap();
    assert_eq!(
        from_tar.test.image(3).unwrap(),
        split.test.image(3).unwrap()
    );
    // A directory holding the archive finds it.
    std::fs::remove_dir_all(&tree).unwrap();
    assert_eq!(cifar10(Some(dir.path())).unwrap().train.len(), 10);

    // Binary batches: directly, in cifar-10-batches-bin/, and as the official archive.
    let bin = dir.path().join("bin").join("cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for k in 1..=5 {
        std::fs::write(bin.join(format!("data_batch_{k}.bin")), cifar_records(3)).unwrap();
    }
    std::fs::write(bin.join("test_batch.bin"), cifar_records(2)).unwrap();
    let split = cifar10(Some(&dir.path().join("bin"))).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (15, 2));
    let img = split.test.image(1).unwrap();
    assert_eq!(img.shape(), (3, 32, 32));
    assert_eq!(img.data[1024 + 5], (1 + 7 + 5) as u8, "G plane, pixel 5");
    assert_eq!(split.test.label(1), 1);
    let official = dir.path().join("cifar-10-binary.tar.gz");
    tar_gz(&bin, &official, "cifar-10-batches-bin");
    let from_tar = cifar10(Some(&official)).unwrap();
    assert_eq!(from_tar.train.len(), 15);
    assert_eq!(from_tar.test.image(1).unwrap(), img);
}

/// CIFAR-10 is recognised by its batches, its archive or its ten class folders; other class
/// folders are not CIFAR-10.
#[test]
fn cifar10_is_told_from_other_class_folders() {
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("own");
    for class in ["cat", "dog", "fox"] {
        std::fs::create_dir_all(own.join("train").join(class)).unwrap();
    }
    assert!(!datasets::is_cifar10(&own));
    let cifar = dir.path().join("cifar");
    for class in datasets::CIFAR10_CLASSES {
        std::fs::create_dir_all(cifar.join("train").join(class)).unwrap();
    }
    assert!(datasets::is_cifar10(&cifar));
    // CIFAR-10's class names without train/ and test/: no layout of CIFAR-10 that it reads,
    // so somebody's own folder (torchvision's ImageFolder of it).
    let flat = dir.path().join("flat");
    for class in datasets::CIFAR10_CLASSES {
        std::fs::create_dir_all(flat.join(class)).unwrap();
    }
    assert!(!datasets::is_cifar10(&flat));
    // train/ + test/ of CIFAR-10's class names holding images of another size: read as
    // CIFAR-10, refused, and the way to read it as one's own folder said.
    let sized = dir.path().join("sized");
    for split in ["train", "test"] {
        for class in datasets::CIFAR10_CLASSES {
            let at = sized.join(split).join(class);
            std::fs::create_dir_all(&at).unwrap();
            pattern_rgb(50, 40, 3).save(at.join("0.png")).unwrap();
        }
    }
    assert!(datasets::is_cifar10(&sized));
    let msg = format!(
        "{:#}",
        match cifar10(Some(&sized)) {
            Ok(_) => panic!("read as CIFAR-10 at 40x50"),
            Err(e) => e,
        }
    );
    assert!(
        msg.contains("wrong image size (3, 40, 50)") && msg.contains("finetune-resnet50 --folder"),
        "{msg}"
    );
    let bin = dir.path().join("bin").join("cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("test_batch.bin"), b"").unwrap();
    assert!(datasets::is_cifar10(&dir.path().join("bin")));
    // Ten folders of 32x32 images, one of them not CIFAR-10's (`frog` renamed `toad`): the
    // labels would follow the names' order (horse 6, ship 7), so it is refused, naming both.
    let renamed = dir.path().join("renamed");
    for split in ["train", "test"] {
        for class in datasets::CIFAR10_CLASSES {
            let class = if class == "frog" { "toad" } else { class };
            let at = renamed.join(split).join(class);
            std::fs::create_dir_all(&at).unwrap();
            pattern_rgb(32, 32, 3).save(at.join("0.png")).unwrap();
        }
    }
    let msg = match cifar10(Some(&renamed)) {
        Ok(_) => panic!("read as CIFAR-10 with a toad class"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        msg.contains(r#"["frog"] are missing"#)
            && msg.contains(r#"["toad"] are no CIFAR-10 class"#),
        "{msg}"
    );
}
