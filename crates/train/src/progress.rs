//! Progress output: a bar with loss, accuracy, images/s and ETA on a terminal; otherwise (logs,
//! CI, `nohup`) one plain line on stderr every [`PLAIN_EVERY`] while a phase runs, as tqdm
//! writes to a file, besides the epoch lines on stdout.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the running loss and accuracy are brought from the device and shown: reading
/// them waits for the device, so a pass does it at most this often (and at its end).
pub const REFRESH: Duration = Duration::from_millis(250);

/// How often a phase without a bar (stdout not a terminal) says how far it is, on stderr.
pub const PLAIN_EVERY: Duration = Duration::from_secs(60);

/// Reports batches of one phase (training or testing) of one epoch.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    refreshed: Instant,
    images: usize,
    /// Without a bar: the label, the batches done of how many, when the last plain line was
    /// written, and the last running loss and accuracy shown (`None` where the phase shows
    /// none, or no bar is drawn).
    plain: Option<Plain>,
}

struct Plain {
    label: String,
    done: usize,
    batches: usize,
    said: Instant,
    figures: Option<(f64, f64)>,
}

impl Progress {
    /// Starts a phase of `batches` batches; `label` is shown in front of the bar
    /// (for example `epoch 3/16 train`). Draws nothing unless stdout is a terminal.
    pub fn start(label: String, batches: usize) -> Self {
        let shown = std::io::stdout().is_terminal() && !crate::distributed::quiet();
        let plain = (!shown && !crate::distributed::quiet()).then(|| Plain {
            label: label.clone(),
            done: 0,
            batches,
            said: Instant::now(),
            figures: None,
        });
        let bar = shown.then(|| {
            let style =
                ProgressStyle::with_template("{prefix} [{wide_bar}] {pos}/{len} {msg} ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            ProgressBar::new(batches as u64)
                .with_style(style)
                .with_prefix(label)
        });
        let now = Instant::now();
        Self {
            bar,
            started: now,
            refreshed: now,
            images: 0,
            plain,
        }
    }

    /// Records a finished batch of `images` images.
    pub fn batch(&mut self, images: usize) {
        self.images += images;
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        let rate = self.images_per_second();
        let elapsed = self.started.elapsed();
        if let Some(plain) = &mut self.plain {
            plain.done += 1;
            if plain.said.elapsed() >= PLAIN_EVERY && plain.done < plain.batches {
                plain.said = Instant::now();
                crate::warn!("{}", plain.line(rate, elapsed));
            }
        }
    }

    /// Whether [`REFRESH`] has passed since the phase started or this last said yes: then the
    /// caller reads the running figures (waiting for the device) and shows them with
    /// [`Progress::show`]. Time-based whether or not a bar is drawn, so that a non-finite loss
    /// is found within about that time.
    pub fn due(&mut self) -> bool {
        let due = self.refreshed.elapsed() >= REFRESH;
        if due {
            self.refreshed = Instant::now();
        }
        due
    }

    /// Shows the running loss and accuracy (percent) with the images per second so far.
    pub fn show(&mut self, loss: f64, accuracy: f64) {
        if let Some(plain) = &mut self.plain {
            plain.figures = Some((loss, accuracy));
        }
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "loss {loss:.4} acc {accuracy:.2}% {:.0} img/s",
                self.images_per_second()
            ));
        }
    }

    /// Images per second so far.
    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Plain {
    /// `epoch 3/16 train: 120/391 batches, loss 1.2345 acc 45.60%, 745 img/s, about 36 s left`
    /// after `elapsed` at `rate` images per second.
    fn line(&self, rate: f64, elapsed: Duration) -> String {
        let left = elapsed.as_secs_f64() / self.done.max(1) as f64
            * self.batches.saturating_sub(self.done) as f64;
        format!(
            "{}: {}/{} batches{}, {rate:.0} img/s, about {} left",
            self.label,
            self.done,
            self.batches,
            self.figures.map_or(String::new(), |(loss, acc)| format!(
                ", loss {loss:.4} acc {acc:.2}%"
            )),
            duration_text(left)
        )
    }
}

/// `s` seconds as `42 s`, `3 min 20 s` or `2 h 5 min`.
fn duration_text(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// The first error met writing to stdout other than a closed pipe (a full disk, an I/O
/// error), kept for [`stdout_written`] to report when the program ends.
static STDOUT_FAILED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Keeps `result`'s error for [`stdout_written`], unless stdout was closed by its reader
/// (`| head`), which is no failure.
fn note_stdout(result: std::io::Result<()>) {
    if let Err(e) = result {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = STDOUT_FAILED.set(e.to_string());
        }
    }
}

/// Writes one line to stdout, like `println!`, but never panics: once stdout is closed (output
/// piped into `head`, say), the lines are dropped and the program goes on. Another write error
/// (stdout redirected to a full disk) does not stop the work either, but [`stdout_written`]
/// reports it when the program ends.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if crate::distributed::quiet() {
        return;
    }
    note_stdout(writeln!(std::io::stdout().lock(), "{line}"));
}

/// The end of a program: `result` itself if it is an error, else an error if a line could not
/// be written to stdout for another reason than a closed pipe, so that output lost to a full
/// disk does not end with status 0 (as `println!`'s panic or coreutils' exit status 1 would
/// tell). The work itself is done by then: a run's files are complete.
///
/// # Errors
/// `result`'s error; or stdout could not be written (named with the system's reason).
pub fn stdout_written<T>(result: anyhow::Result<T>) -> anyhow::Result<T> {
    use std::io::Write;
    let value = result?;
    note_stdout(std::io::stdout().lock().flush());
    match STDOUT_FAILED.get() {
        Some(why) => anyhow::bail!(
            "standard output could not be written ({why}): lines printed there are missing \
             (the work itself is done; files written are complete)"
        ),
        None => Ok(value),
    }
}

/// `println!` through [`say`]: a closed stdout ends the printing, not the run.
///
/// ```
/// train::say!("epoch {}/{}", 1, 16);
/// ```
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::progress::say(format_args!($($arg)*))
    };
}

/// Writes one line to stderr, like `eprintln!`, but never panics: once stderr is closed (the
/// output piped into `tee` or `head`, and that process gone), the line is dropped.
pub fn warn(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    // One write: stderr is unbuffered, and a line written in pieces can be cut by another
    // process's output on the same stream (mpirun's, another rank's).
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("{line}\n").as_bytes());
}

/// `eprintln!` through [`warn`]: a closed stderr drops the line instead of panicking.
///
/// ```
/// train::warn!("cannot remove {}; delete it when you like", "runs/x");
/// ```
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::progress::warn(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain line of a phase without a bar: where it is, the running figures if shown,
    /// the speed and the time left at that pace.
    #[test]
    fn plain_lines_say_where_the_phase_is() {
        let mut plain = Plain {
            label: "epoch 3/16 train".into(),
            done: 120,
            batches: 391,
            said: Instant::now(),
            figures: None,
        };
        assert_eq!(
            plain.line(745.2, Duration::from_secs(60)),
            "epoch 3/16 train: 120/391 batches, 745 img/s, about 2 min 16 s left"
        );
        plain.figures = Some((1.23456, 45.6));
        assert_eq!(
            plain.line(745.0, Duration::from_secs(60)),
            "epoch 3/16 train: 120/391 batches, loss 1.2346 acc 45.60%, 745 img/s, about 2 min \
             16 s left"
        );
        assert_eq!(duration_text(42.4), "42 s");
        assert_eq!(duration_text(7500.0), "2 h 5 min");
    }
}
