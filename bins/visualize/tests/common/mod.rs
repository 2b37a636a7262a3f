//! Running the binary and checking the pictures it writes.

#![allow(dead_code)] // each test file uses a different subset of the helpers

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};

use image::RgbImage;

/// Runs `visualize args` (no backtraces) and returns what it did, whatever its status.
pub fn command(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_visualize"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("cannot start the visualize binary")
}

/// Runs `visualize args`, expects success and returns its standard output.
pub fn visualize(args: &[&str]) -> String {
    let out = command(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "visualize {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// Runs `visualize args`, expects success and returns its standard error.
pub fn visualize_stderr(args: &[&str]) -> String {
    let out = command(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "visualize {args:?} failed:\n{stderr}");
    stderr
}

/// Runs `visualize args`, expects failure and returns its standard error.
pub fn visualize_fails(args: &[&str]) -> String {
    let out = command(args);
    assert!(
        !out.status.success(),
        "visualize {args:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Opens a PNG the binary wrote: it must exist and decode.
pub fn open_png(path: &Path) -> RgbImage {
    assert!(path.is_file(), "{} was not written", path.display());
    image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
        .to_rgb8()
}

/// Fails unless the picture has many colours and more than a little ink on white.
pub fn assert_not_blank(img: &RgbImage, what: &str) {
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 8,
        "{what} has only {} colours",
        colours.len()
    );
    let ink = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    let total = (img.width() * img.height()) as usize;
    assert!(
        ink * 10 > total,
        "{what}: only {ink} of {total} pixels are not white"
    );
}

/// The pixels of the `w` x `h` box at `(x, y)`.
pub fn region(img: &RgbImage, (x, y): (u32, u32), (w, h): (u32, u32)) -> Vec<[u8; 3]> {
    let mut out = Vec::with_capacity((w * h) as usize);
    for yy in y..y + h {
        for xx in x..x + w {
            out.push(img.get_pixel(xx, yy).0);
        }
    }
    out
}

/// viz's grid layout (documented on `viz::save_image_grid`): the figure size and the top-left
/// corner of every slot, for `n` tiles of `tile_w` x `tile_h`, `cols` columns, one caption line
/// and a title.
pub struct Grid {
    /// Nearest-neighbour upscaling factor.
    pub scale: u32,
    /// Figure width and height.
    pub size: (u32, u32),
    /// Top-left pixel of each tile's image.
    pub origins: Vec<(u32, u32)>,
}

impl Grid {
    /// The layout of a titled grid of captioned (one line) tiles.
    pub fn new(tile_w: u32, tile_h: u32, n: u32, cols: u32) -> Grid {
        let scale = 96u32.div_ceil(tile_w.max(tile_h)).max(1);
        let cols = cols.min(n);
        let rows = n.div_ceil(cols);
        let (slot_w, slot_h) = ((tile_w * scale).max(96), tile_h * scale);
        let band = 18 + 4;
        let title = 40;
        let width = 24 + cols * slot_w + 10 * (cols - 1);
        let height = 24 + title + rows * (slot_h + band) + 10 * (rows - 1);
        let origins = (0..n)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                let x = 12 + c * (slot_w + 10) + (slot_w - tile_w * scale) / 2;
                let y = 12 + title + r * (slot_h + band + 10);
                (x, y)
            })
            .collect();
        Grid {
            scale,
            size: (width, height),
            origins,
        }
    }

    /// The colour of source pixel `(x, y)` of tile `i`, read from the upscaled picture.
    pub fn pixel(&self, img: &RgbImage, i: usize, (x, y): (u32, u32)) -> [u8; 3] {
        let (ox, oy) = self.origins[i];
        img.get_pixel(ox + x * self.scale, oy + y * self.scale).0
    }
}

/// `CNN_SHARED_DIR`, or `None` after printing the skip line.
pub fn shared_dir() -> Option<std::path::PathBuf> {
    match std::env::var_os("CNN_SHARED_DIR") {
        Some(dir) => Some(dir.into()),
        None => {
            eprintln!("skipped: CNN_SHARED_DIR not set");
            None
        }
    }
}
