//! TensorBoard event files (`events.out.tfevents.*`), the format TensorBoard's own reader
//! parses: a sequence of records, each a little-endian u64 length, its masked CRC-32C, an
//! `Event` protocol buffer and the buffer's masked CRC-32C (TensorFlow's `TFRecord`). Scalars
//! and PNG images, as `torch.utils.tensorboard.SummaryWriter.add_scalar` / `add_image` write
//! them; `tensorboard --logdir runs` shows every run side by side.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use prost::Message;

use crate::rundir::EVENTS_PREFIX;

/// `tensorflow.Event` (the fields written here).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// `"brain.Event:2"` in the first record of a file.
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    /// The values of this step.
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// One value per tag.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value`: a scalar or an image under a tag.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The name TensorBoard groups by (`test/acc`).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// A scalar.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    /// An encoded image.
    #[prost(message, optional, tag = "4")]
    pub image: Option<Image>,
}

/// `tensorflow.Summary.Image`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    /// Height in pixels.
    #[prost(int32, tag = "1")]
    pub height: i32,
    /// Width in pixels.
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 1 grey, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    /// The PNG file's bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// TFRecord's checksum: CRC-32C, rotated right by 15 bits, plus a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Appends events to one new `events.out.tfevents.<seconds>.<host>.<pid>` file in a directory.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

/// The host name an event file's name holds (`localhost` where none is set).
pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl EventWriter {
    /// Creates the next event file in `dir` and writes its version record.
    ///
    /// Errors: the file cannot be created or written (named).
    pub fn create(dir: &Path) -> Result<Self> {
        let host = host();
        let stem = format!(
            "{EVENTS_PREFIX}{}.{host}.{}",
            now() as u64,
            std::process::id()
        );
        // A second writer in the same second and process (a resumed run) gets `.1`, `.2`, ...
        let mut n = 0;
        let (path, file) = loop {
            let name = if n == 0 {
                stem.clone()
            } else {
                format!("{stem}.{n}")
            };
            let path = dir.join(name);
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        };
        let mut writer = Self {
            path,
            file: BufWriter::new(file),
        };
        writer.write(&Event {
            wall_time: now(),
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        Ok(writer)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records scalar `value` under `tag` at `step` (`SummaryWriter.add_scalar`).
    ///
    /// # Errors
    /// The event file cannot be written.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        self.scalar_at(tag, step, value, now())
    }

    /// [`EventWriter::scalar`] stamped `wall_time` (seconds since the Unix epoch: when the
    /// value was computed, as `add_scalar(..., walltime=...)`).
    pub fn scalar_at(&mut self, tag: &str, step: i64, value: f64, wall_time: f64) -> Result<()> {
        self.summary_at(
            step,
            Value {
                tag: tag.into(),
                simple_value: Some(value as f32),
                image: None,
            },
            wall_time,
        )
    }

    /// Records the PNG file `png` under `tag` at `step` (`SummaryWriter.add_image`).
    ///
    /// Errors: `png` cannot be read or is no PNG image (named).
    pub fn png(&mut self, tag: &str, step: i64, png: &Path) -> Result<()> {
        let bytes = std::fs::read(png).with_context(|| format!("cannot read {}", png.display()))?;
        let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .with_context(|| format!("{} is not a PNG image", png.display()))?;
        let image = Image {
            height: decoded.height() as i32,
            width: decoded.width() as i32,
            colorspace: i32::from(decoded.color().channel_count()),
            encoded_image_string: bytes,
        };
        self.summary(
            step,
            Value {
                tag: tag.into(),
                simple_value: None,
                image: Some(image),
            },
        )
    }

    /// Writes buffered records to the file, and the file to the disk (a run commits its epoch
    /// after its events: they must not be lost in a crash that keeps the epoch).
    ///
    /// # Errors
    /// The event file cannot be written.
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .and_then(|()| layers::file::sync_file(self.file.get_ref()))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn summary(&mut self, step: i64, value: Value) -> Result<()> {
        self.summary_at(step, value, now())
    }

    fn summary_at(&mut self, step: i64, value: Value, wall_time: f64) -> Result<()> {
        self.write(&Event {
            wall_time,
            step,
            file_version: None,
            summary: Some(Summary { value: vec![value] }),
        })
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc(&data).to_le_bytes());
        self.file
            .write_all(&record)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Reads every event of an event file, checking both checksums of every record.
///
/// Errors: the file cannot be read, a record is cut short, a checksum does not match, or a
/// record is no `Event` (each with the record's offset).
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let (events, damage) = read_records(path)?;
    match damage {
        Some(e) => Err(e),
        None => Ok(events),
    }
}

/// The events of an event file as TensorBoard shows them: those before the first record that
/// is cut short or damaged (a process killed while it wrote its last record leaves one).
///
/// Errors: the file cannot be read.
pub fn read_events_until_damage(path: &Path) -> Result<Vec<Event>> {
    Ok(read_records(path)?.0)
}

/// The events before the first damaged record, and that record's damage.
fn read_records(path: &Path) -> Result<(Vec<Event>, Option<anyhow::Error>)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut events = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        match read_record(path, &bytes, at) {
            Ok((event, next)) => {
                events.push(event);
                at = next;
            }
            Err(e) => return Ok((events, Some(e))),
        }
    }
    Ok((events, None))
}

/// The record at `at` of `bytes` (the file `path`), and where the next begins.
fn read_record(path: &Path, bytes: &[u8], at: usize) -> Result<(Event, usize)> {
    let field = |from: usize, n: usize| -> Result<&[u8]> {
        bytes
            .get(from..from.saturating_add(n))
            .with_context(|| format!("{}: record at {at} is cut short", path.display()))
    };
    let len_bytes = field(at, 8)?;
    let stored = u32::from_le_bytes(field(at + 8, 4)?.try_into()?);
    if stored != masked_crc(len_bytes) {
        bail!(
            "{}: length checksum of the record at {at} does not match",
            path.display()
        );
    }
    let len = usize::try_from(u64::from_le_bytes(len_bytes.try_into()?))?;
    let data = field(at + 12, len)?;
    let stored = u32::from_le_bytes(field(at + 12 + len, 4)?.try_into()?);
    if stored != masked_crc(data) {
        bail!(
            "{}: data checksum of the record at {at} does not match",
            path.display()
        );
    }
    let event = Event::decode(data)
        .with_context(|| format!("{}: record at {at} is no Event", path.display()))?;
    Ok((event, at + 16 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_checksums_and_corruption_is_named() -> Result<()> {
        // TFRecord's masked CRC of an empty string, as TensorFlow computes it.
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        let dir = tempfile::tempdir()?;
        let png = dir.path().join("x.png");
        image::RgbImage::from_pixel(3, 2, image::Rgb([9, 8, 7])).save(&png)?;
        let mut writer = EventWriter::create(dir.path())?;
        writer.scalar("train/loss", 5, 0.25)?;
        writer.png("confusion", 5, &png)?;
        writer.flush()?;
        let path = writer.path().to_path_buf();
        assert!(path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(EVENTS_PREFIX)));
        let events = read_events(&path)?;
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        let value = &events[1].summary.as_ref().expect("summary").value[0];
        assert_eq!(
            (value.tag.as_str(), value.simple_value, events[1].step),
            ("train/loss", Some(0.25), 5)
        );
        let image = events[2].summary.as_ref().expect("summary").value[0]
            .image
            .clone();
        assert_eq!(
            image.map(|i| (i.height, i.width, i.colorspace)),
            Some((2, 3, 3))
        );

        let mut bytes = std::fs::read(&path)?;
        let last = bytes.len() - 20;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes)?;
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        // As TensorBoard reads it: the records before the damaged one; the same for a file
        // cut inside its last record (a process killed while writing it).
        assert_eq!(read_events_until_damage(&path)?.len(), 2);
        std::fs::write(&path, &bytes[..last])?;
        assert!(read_events(&path).is_err());
        assert_eq!(read_events_until_damage(&path)?.len(), 2);
        Ok(())
    }
}
