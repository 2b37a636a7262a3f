//! The unit every dataset yields and every transform works on.

use anyhow::{ensure, Context, Result};

/// A CHW u8 image: `data[c * height * width + y * width + x]`, like a PyTorch `uint8` tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct U8Image {
    /// Number of channels (1 for grey, 3 for RGB).
    pub channels: usize,
    /// Number of rows.
    pub height: usize,
    /// Number of columns.
    pub width: usize,
    /// `channels * height * width` bytes, channel-major.
    pub data: Vec<u8>,
}

impl U8Image {
    /// Wraps CHW bytes, checking that their number matches the shape.
    ///
    /// # Errors
    /// A side or the channel count is 0, or the number of bytes is not
    /// `channels * height * width` (or that product overflows).
    pub fn new(channels: usize, height: usize, width: usize, data: Vec<u8>) -> Result<Self> {
        let needed = byte_count(channels, height, width)?;
        ensure!(
            data.len() == needed,
            "image of shape {channels}x{height}x{width} needs {needed} bytes, got {}",
            data.len()
        );
        Ok(Self {
            channels,
            height,
            width,
            data,
        })
    }

    /// An all-zero (black) image.
    pub fn zeros(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
            data: vec![0; channels * height * width],
        }
    }

    /// Converts interleaved HWC bytes (as image decoders produce them) to CHW.
    ///
    /// # Errors
    /// As [`U8Image::new`].
    pub fn from_hwc(channels: usize, height: usize, width: usize, hwc: &[u8]) -> Result<Self> {
        let needed = byte_count(channels, height, width)?;
        ensure!(
            hwc.len() == needed,
            "HWC buffer of shape {height}x{width}x{channels} needs {needed} bytes, got {}",
            hwc.len()
        );
        if channels == 1 {
            return Self::new(1, height, width, hwc.to_vec());
        }
        let plane = height * width;
        let mut data = vec![0u8; channels * plane];
        for (p, pixel) in hwc.chunks_exact(channels).enumerate() {
            for (c, &value) in pixel.iter().enumerate() {
                data[c * plane + p] = value;
            }
        }
        Ok(Self {
            channels,
            height,
            width,
            data,
        })
    }

    /// The `(channels, height, width)` triple.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    /// Number of pixels in one channel.
    pub fn plane_len(&self) -> usize {
        self.height * self.width
    }

    /// The pixels of channel `c`, row-major.
    pub fn plane(&self, c: usize) -> &[u8] {
        let n = self.plane_len();
        &self.data[c * n..(c + 1) * n]
    }
}

/// `channels * height * width`, or an error when it does not fit in memory.
fn byte_count(channels: usize, height: usize, width: usize) -> Result<usize> {
    ensure!(
        channels > 0 && height > 0 && width > 0,
        "an image of shape {channels}x{height}x{width} (CxHxW) has no pixels"
    );
    channels
        .checked_mul(height)
        .and_then(|n| n.checked_mul(width))
        .with_context(|| format!("image shape {channels}x{height}x{width} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwc_to_chw() {
        // 1x2 RGB image: pixel 0 = (1,2,3), pixel 1 = (4,5,6).
        let img = U8Image::from_hwc(3, 1, 2, &[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(img.data, vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(img.plane(1), &[2, 5]);
    }

    #[test]
    fn wrong_length_is_an_error() {
        assert!(U8Image::new(3, 2, 2, vec![0; 11]).is_err());
        assert!(U8Image::from_hwc(3, 2, 2, &[0; 13]).is_err());
    }
}
