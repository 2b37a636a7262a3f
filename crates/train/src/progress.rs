//! Progress output: a bar with loss, accuracy, images/s and ETA on a terminal; one plain line
//! per epoch otherwise (logs, CI).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the running loss and accuracy are brought from the device and shown: reading
/// them waits for the device, so a pass does it at most this often (and at its end).
pub const REFRESH: Duration = Duration::from_millis(250);

/// Reports batches of one phase (training or testing) of one epoch.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    refreshed: Instant,
    images: usize,
}

impl Progress {
    /// Starts a phase of `batches` batches; `label` is shown in front of the bar
    /// (for example `epoch 3/16 train`). Draws nothing unless stdout is a terminal.
    pub fn start(label: String, batches: usize) -> Self {
        let shown = std::io::stdout().is_terminal() && !crate::distributed::quiet();
        let bar = shown.then(|| {
            let style =
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
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
        }
    }

    /// Records a finished batch of `images` images.
    pub fn batch(&mut self, images: usize) {
        self.images += images;
        if let Some(bar) = &self.bar {
            bar.inc(1);
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
    pub fn show(&self, loss: f64, accuracy: f64) {
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
    let _ = writeln!(std::io::stderr().lock(), "{line}");
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
