//! Progress output: a bar with loss, accuracy, images/s and ETA on a terminal; one plain line
//! per epoch otherwise (logs, CI).

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Reports batches of one phase (training or testing) of one epoch.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
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
        Self {
            bar,
            started: Instant::now(),
            images: 0,
        }
    }

    /// Records a finished batch of `images` images and the running loss and accuracy (percent).
    pub fn batch(&mut self, images: usize, loss: f64, accuracy: f64) {
        self.images += images;
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "loss {loss:.4} acc {accuracy:.2}% {:.0} img/s",
                self.images_per_second()
            ));
            bar.inc(1);
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

/// Writes one line to stdout, like `println!`, but never panics: once stdout is closed (output
/// piped into `head`, say), the lines are dropped and the program goes on.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if crate::distributed::quiet() {
        return;
    }
    let _ = writeln!(std::io::stdout().lock(), "{line}");
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
