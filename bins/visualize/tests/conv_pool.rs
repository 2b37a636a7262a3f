//! `visualize conv` and `visualize pool`: printed numbers, the figures, options and errors.

mod common;

use common::{assert_not_blank, open_png, region, visualize, visualize_fails};

/// viz's panel cell side for matrices whose largest side is `s` (`clamp(720 / s, 6, 56)`).
fn cell(s: u32) -> u32 {
    (720 / s).clamp(6, 56)
}

#[test]
fn conv_prints_the_tutorial_matrices_and_the_size_rule() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let stdout = visualize(&["conv", "--out", out]);
    for block in [
        "input (5x5):\n[[1, 0, 0, 1, 0],\n [0, 1, 1, 0, 1],\n [1, 0, 1, 0, 1],\n [0, 1, 0, 1, 0],\n [1, 0, 1, 0, 1]]",
        "kernel (3x3):\n[[1, 0, 1],\n [0, 1, 0],\n [1, 0, 1]]",
        "result (3x3):\n[[4, 2, 2],\n [1, 4, 2],\n [5, 0, 5]]",
        "(H + 2p - k) / s + 1",
        "height: (5 + 2*0 - 3) / 1 + 1 = 3",
        "width:  (5 + 2*0 - 3) / 1 + 1 = 3",
    ] {
        assert!(stdout.contains(block), "missing {block:?} in:\n{stdout}");
    }
}

#[test]
fn conv_png_has_three_grey_panels_that_show_the_data() {
    let dir = tempfile::tempdir().unwrap();
    visualize(&["conv", "--out", dir.path().to_str().unwrap()]);
    let img = open_png(&dir.path().join("conv.png"));
    assert_not_blank(&img, "conv.png");
    // Documented layout: slots max(cols * cell, 120) for the short titles, 32 apart, margin 16,
    // title band 32.
    let c = cell(5);
    assert_eq!(c, 56);
    let slots = [5 * c, 3 * c, 3 * c];
    let width = 32 + slots.iter().sum::<u32>() + 32 * 2;
    assert_eq!(img.dimensions(), (width, 64 + 5 * c));
    let lefts = [16, 16 + slots[0] + 32, 16 + slots[0] + slots[1] + 64];
    let top = 48;
    // A corner of cell (r, col) of panel p, away from the printed number.
    let at = |p: usize, r: u32, col: u32| img.get_pixel(lefts[p] + col * c + 3, top + r * c + 3).0;
    assert_eq!(at(0, 0, 0), [255; 3], "input 1 is white");
    assert_eq!(at(0, 0, 1), [0; 3], "input 0 is black");
    assert_eq!(at(1, 0, 2), [255; 3], "kernel 1 is white");
    assert_eq!(
        at(0, 0, 2),
        [0; 3],
        "input (0, 2) = 0 differs from kernel (0, 2) = 1"
    );
    assert_eq!(at(2, 2, 0), [255; 3], "result maximum 5 is white");
    assert_eq!(at(2, 2, 1), [0; 3], "result minimum 0 is black");
    assert_eq!(at(2, 0, 0), [204; 3], "result 4 of 0..5 is 80% grey");
    assert_eq!(at(2, 1, 0), [51; 3], "result 1 of 0..5 is 20% grey");
    let square = (3 * c, 3 * c);
    let input = region(&img, (lefts[0], top), square);
    let kernel = region(&img, (lefts[1], top), square);
    let result = region(&img, (lefts[2], top), square);
    assert_ne!(input, kernel);
    assert_ne!(kernel, result);
}

#[test]
fn conv_takes_a_file_input_inline_kernel_stride_and_padding() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "1 2 3\n4 5 6\n7 8 9\n").unwrap();
    let out = dir.path().join("figures");
    let at_input = format!("@{}", input.display());
    let stdout = visualize(&[
        "conv",
        "--input",
        &at_input,
        "--kernel",
        "1,1;1,1",
        "--stride",
        "2",
        "--padding",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("height: (3 + 2*1 - 2) / 2 + 1 = 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("result (2x2):\n[[ 1,  5],\n [11, 28]]"),
        "{stdout}"
    );
    let img = open_png(&out.join("conv.png"));
    // The padded 5x5 input, the 2x2 kernel and the result: cell 56, slots 280, 120, 120.
    assert_eq!(img.height(), 64 + 5 * 56);
    assert!(img.width() >= 32 + 280 + 120 + 120 + 64);
    assert_not_blank(&img, "padded conv.png");

    let file_flag = visualize(&[
        "conv",
        "--input-file",
        input.to_str().unwrap(),
        "--kernel",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        file_flag.contains("result (3x3):\n[[1, 2, 3],\n [4, 5, 6],\n [7, 8, 9]]"),
        "{file_flag}"
    );
}

#[test]
fn conv_rejects_bad_matrices_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let ragged = visualize_fails(&["conv", "--kernel", "1,0;0", "--out", out]);
    assert!(
        ragged.contains("bad --kernel") && ragged.contains("ragged matrix"),
        "{ragged}"
    );
    let word = visualize_fails(&["conv", "--input", "1,a;0,1", "--out", out]);
    assert!(word.contains("\"a\" in row 1 is not a number"), "{word}");
    let hex = visualize_fails(&["pool", "--input", "0x10,1;1,1", "--out", out]);
    assert!(hex.contains("\"0x10\" in row 1 is not a number"), "{hex}");
    let nan = visualize_fails(&["conv", "--input", "1,2;NaN,1", "--out", out]);
    assert!(
        nan.contains("\"NaN\" in row 2 is not a finite number"),
        "{nan}"
    );
    let big = visualize_fails(&["conv", "--input", "1,2;3,4", "--out", out]);
    assert!(
        big.contains("kernel height 3 is larger than the padded input height 2"),
        "{big}"
    );
    let missing = visualize_fails(&["conv", "--kernel", "@/nonexistent/k.txt", "--out", out]);
    assert!(missing.contains("/nonexistent/k.txt"), "{missing}");
    // A device is refused, named, not read until memory runs out.
    let device = visualize_fails(&["conv", "--input-file", "/dev/zero", "--out", out]);
    assert!(
        device.contains("/dev/zero: not a matrix file (a device or socket)"),
        "{device}"
    );
    let zero_stride = visualize_fails(&["conv", "--stride", "0", "--out", out]);
    assert!(zero_stride.contains("--stride"), "{zero_stride}");
    // Finite numbers whose result overflows float32: refused, not drawn as inf.
    let overflow = visualize_fails(&[
        "conv",
        "--input",
        "1e38,1e38;1e38,1e38",
        "--kernel",
        "1e38",
        "--out",
        out,
    ]);
    assert!(
        overflow.contains("the convolution's result overflows float32: inf at row 1, column 1"),
        "{overflow}"
    );
    let overflow = visualize_fails(&[
        "pool",
        "--input",
        "3e38,3e38;3e38,3e38",
        "--kernel",
        "2",
        "--out",
        out,
    ]);
    assert!(
        overflow.contains("the average pooling's result overflows float32"),
        "{overflow}"
    );
    // A matrix too large to draw is said before the matrices are printed (they were printed
    // first, and the drawing failed after).
    let large = dir.path().join("large.txt");
    let row = vec!["0"; 1300].join(" ");
    std::fs::write(&large, vec![row; 1300].join("\n")).unwrap();
    let too_large = visualize_fails(&[
        "conv",
        "--input-file",
        large.to_str().unwrap(),
        "--kernel",
        "1",
        "--out",
        out,
    ]);
    assert!(
        too_large.contains("cannot draw conv.png")
            && too_large.contains("the picture would be")
            && too_large.contains("matrices of up to 1300 rows or columns"),
        "{too_large}"
    );
    assert!(!dir.path().join("conv.png").exists());
    assert!(!dir.path().join("pool.png").exists());
}

#[test]
fn pool_prints_max_and_average_and_draws_viridis_panels() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = visualize(&["pool", "--out", dir.path().to_str().unwrap()]);
    for block in [
        "input (4x4):\n[[ 1,  2,  3,  4],",
        "max pool 2x2, stride 2, padding 0:\n[[ 6,  8],\n [14, 16]]",
        "average pool 2x2, stride 2, padding 0:\n[[ 3.5,  5.5],\n [11.5, 13.5]]",
        "height: (4 + 2*0 - 2) / 2 + 1 = 2",
    ] {
        assert!(stdout.contains(block), "missing {block:?} in:\n{stdout}");
    }
    let path = dir.path().join("pool.png");
    let img = open_png(&path);
    assert_not_blank(&img, "pool.png");
    let c = cell(4);
    assert_eq!(img.height(), 64 + 4 * c);
    assert!(img.width() >= 32 + 4 * c + 120 + 120 + 64);
    let corner = |r: u32, col: u32| img.get_pixel(16 + col * c + 3, 48 + r * c + 3).0;
    assert_eq!(corner(0, 0), [68, 1, 84], "1 is viridis' dark purple");
    assert_eq!(corner(3, 3), [253, 231, 37], "16 is viridis' yellow");
    assert_ne!(corner(1, 2), corner(2, 1), "7 and 10 differ");

    // The very figure viz draws from the expected numbers: titles, values and colours.
    let panel = |title: &str, rows: usize, values: &[f32]| viz::Panel {
        title: title.into(),
        rows,
        cols: rows,
        values: values.to_vec(),
    };
    let expected_path = dir.path().join("expected.png");
    let counting: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    viz::save_panels_shared(
        &expected_path,
        &[
            panel("input", 4, &counting),
            panel("max pool 2x2", 2, &[6., 8., 14., 16.]),
            panel("average pool 2x2", 2, &[3.5, 5.5, 11.5, 13.5]),
        ],
        viz::ColorMap::Viridis,
    )
    .unwrap();
    assert!(
        open_png(&expected_path) == img,
        "pool.png differs from viz's own figure"
    );
}

#[test]
fn pool_options_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let stdout = visualize(&["pool", "--kernel", "3", "--stride", "1", "--out", out]);
    assert!(
        stdout.contains("max pool 3x3, stride 1, padding 0:\n[[11, 12],\n [15, 16]]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("average pool 3x3, stride 1, padding 0:\n[[ 6,  7],\n [10, 11]]"),
        "{stdout}"
    );
    let inline = visualize(&["pool", "--input", "1,5;3,2", "--out", out]);
    assert!(
        inline.contains("[[5]]") && inline.contains("[[2.75]]"),
        "{inline}"
    );
    // Negative numbers are values, not flags, without `--input=`.
    let negative = visualize(&["pool", "--input", "-1,-5;-3,-2", "--out", out]);
    assert!(
        negative.contains("[[-1]]") && negative.contains("[[-2.75]]"),
        "{negative}"
    );
    let kernel = visualize(&[
        "conv", "--input", "-1,0;0,1", "--kernel", "-1", "--out", out,
    ]);
    assert!(kernel.contains("[[ 1,  0],\n [ 0, -1]]"), "{kernel}");
    let small = visualize_fails(&["pool", "--input", "1,2,3", "--out", out]);
    assert!(small.contains("smaller than the kernel"), "{small}");
    let padding = visualize_fails(&["pool", "--padding", "2", "--out", out]);
    assert!(padding.contains("at most half the kernel"), "{padding}");
    // Implicit padding, said: the corner's average counts three zeros (PyTorch's 0.25).
    let padded = visualize(&[
        "pool",
        "--input",
        "1,-2,3;4,5,-6;7,8,9",
        "--kernel",
        "2",
        "--stride",
        "1",
        "--padding",
        "1",
        "--out",
        out,
    ]);
    assert!(
        padded.contains("average pooling with zeros that count in each window's mean")
            && padded.contains("[[ 0.25, -0.25,  0.25,  0.75],"),
        "{padded}"
    );
    assert!(!stdout.contains("padding 0: max pooling pads"), "{stdout}");
}

/// A picture that cannot be written whole (here past a 4 KB file-size limit, `ulimit -f`) is an
/// error naming it, with status 1, and leaves the picture there before it as it was: pictures
/// are written to a temporary and renamed, as a run's files are.
#[test]
fn a_failed_write_keeps_the_picture_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    visualize(&["conv", "--out", out]);
    let before = std::fs::read(dir.path().join("conv.png")).unwrap();
    assert!(before.len() > 4096, "{} bytes", before.len());
    let failed = std::process::Command::new("sh")
        .args(["-c", "ulimit -f 4 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_visualize"))
        .args(["conv", "--stride", "2", "--out", out])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{:?}: {err}", failed.status);
    assert!(
        err.contains("conv.png") && err.contains("File too large"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.path().join("conv.png")).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["conv.png"], "a temporary was left");
}
