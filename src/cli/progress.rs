//! Progress on stderr for a person watching: on a terminal one line redrawn in place (`\r`),
//! otherwise plain lines a log can keep, and nothing with `--quiet`. Uploads
//! ([`UploadProgress`]) and the layers of a build ([`LayerProgress`]) draw through the same
//! [`ProgressLine`]; each writes to any writer, so tests read what a person would see.

use std::io::{IsTerminal, Stderr, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::size;
use crate::build::BuildProgress;
use crate::registry::Progress;

/// What starts every progress line, as every note of the command line.
const PREFIX: &str = "imagebuild: ";

/// How progress reaches its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A terminal: one line, redrawn with `\r`, ended when the work is done.
    Terminal,
    /// A file or a pipe: whole lines, few enough for a log.
    Plain,
    /// `--quiet`: nothing.
    Quiet,
}

impl ProgressMode {
    /// The mode for stderr: `Quiet` when asked, else whether stderr is a terminal.
    pub fn for_stderr(quiet: bool) -> Self {
        match (quiet, std::io::stderr().is_terminal()) {
            (true, _) => Self::Quiet,
            (false, true) => Self::Terminal,
            (false, false) => Self::Plain,
        }
    }

    /// How long a line stands before a running count replaces it: a terminal redraws often, a
    /// log gets a line every two seconds at most.
    fn interval(self) -> Duration {
        match self {
            Self::Terminal => Duration::from_millis(200),
            Self::Plain | Self::Quiet => Duration::from_secs(2),
        }
    }
}

/// One line of progress, written in a [`ProgressMode`] to `W` (stderr, or a `Vec<u8>` in tests).
pub struct ProgressLine<W: Write = Stderr> {
    mode: ProgressMode,
    /// How long a line stands before [`ProgressLine::update`] replaces it.
    interval: Duration,
    state: Mutex<LineState<W>>,
}

struct LineState<W> {
    out: W,
    /// When the last line was written (at first, when the work started).
    shown_at: Instant,
    /// The text last written.
    last: Option<String>,
    /// Characters of the terminal's line not yet ended by a newline (0: none).
    open_width: usize,
}

impl ProgressLine {
    /// A progress line on stderr.
    pub fn stderr(mode: ProgressMode) -> Self {
        Self::new(mode, std::io::stderr())
    }
}

impl<W: Write> ProgressLine<W> {
    pub fn new(mode: ProgressMode, out: W) -> Self {
        Self {
            mode,
            interval: mode.interval(),
            state: Mutex::new(LineState {
                out,
                shown_at: Instant::now(),
                last: None,
                open_width: 0,
            }),
        }
    }

    /// A running count: shows `text()` unless a line was shown less than the mode's interval
    /// ago (`text` is not even made then).
    pub fn update(&self, text: impl FnOnce() -> String) {
        if self.mode == ProgressMode::Quiet {
            return;
        }
        self.with_state(|state| {
            if state.shown_at.elapsed() >= self.interval {
                state.write(self.mode, &text(), false);
            }
        });
    }

    /// An event worth a line of its own (a finished layer): shown now, in every mode.
    pub fn show(&self, text: &str) {
        self.with_state(|state| state.write(self.mode, text, false));
    }

    /// A state only worth seeing in place (a plan, before anything is done): shown now on a
    /// terminal, not written to a log.
    pub fn redraw(&self, text: &str) {
        if self.mode == ProgressMode::Terminal {
            self.show(text);
        }
    }

    /// The last line: the terminal's line ends with it; a log gets it unless it is the line
    /// last written.
    pub fn finish(&self, text: &str) {
        self.with_state(|state| {
            if state.last.as_deref() != Some(text) {
                state.write(self.mode, text, true);
            } else {
                state.end_line();
            }
        });
    }

    fn with_state(&self, work: impl FnOnce(&mut LineState<W>)) {
        // A panic elsewhere while drawing leaves nothing worth protecting: draw on.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        work(&mut state);
    }
}

impl<W: Write> Drop for ProgressLine<W> {
    /// Ends a terminal's line left open (the work failed), so an error starts a line of its own.
    fn drop(&mut self) {
        self.with_state(LineState::end_line);
    }
}

impl<W: Write> LineState<W> {
    /// Writes `text` as the mode shows it; `end` ends a terminal's line after it.
    fn write(&mut self, mode: ProgressMode, text: &str, end: bool) {
        let width = PREFIX.len() + text.chars().count();
        // Progress is a courtesy to the person watching: a failed write to stderr must not
        // fail the command, which reports its result elsewhere.
        let _ = match mode {
            ProgressMode::Terminal => {
                // Spaces over the rest of a longer line drawn before.
                let pad = self.open_width.saturating_sub(width);
                let newline = if end { "\n" } else { "" };
                write!(self.out, "\r{PREFIX}{text}{:pad$}{newline}", "")
            }
            ProgressMode::Plain => writeln!(self.out, "{PREFIX}{text}"),
            ProgressMode::Quiet => return,
        };
        let _ = self.out.flush();
        self.open_width = match (mode, end) {
            (ProgressMode::Terminal, false) => width,
            _ => 0,
        };
        self.shown_at = Instant::now();
        self.last = Some(text.to_owned());
    }

    fn end_line(&mut self) {
        if self.open_width > 0 {
            let _ = writeln!(self.out);
            let _ = self.out.flush();
            self.open_width = 0;
        }
    }
}

/// An upload's progress: bytes sent of the most it may send (the image's size; blobs the
/// registry already holds are not sent, so an upload may end below it).
pub struct UploadProgress<W: Write = Stderr> {
    line: ProgressLine<W>,
    sent: AtomicU64,
    total: u64,
    started: Instant,
}

impl<W: Write> UploadProgress<W> {
    pub fn new(line: ProgressLine<W>, total: u64) -> Self {
        Self {
            line,
            sent: AtomicU64::new(0),
            total,
            started: Instant::now(),
        }
    }

    /// The last line, once the upload is done.
    pub fn finish(&self) {
        self.line.finish(&self.text());
    }

    /// `uploaded 12.0 MiB of 279.4 MiB (3.1 MiB/s)`.
    fn text(&self) -> String {
        let sent = self.sent.load(Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (sent as f64 / seconds) as u64;
        format!(
            "uploaded {} of {} ({}/s)",
            size::binary(sent),
            size::binary(self.total),
            size::binary(rate)
        )
    }
}

impl<W: Write + Send> Progress for UploadProgress<W> {
    fn add(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
        self.line.update(|| self.text());
    }

    fn rewind(&self, bytes: u64) {
        // Never fails: the closure always gives a value.
        let _ = self
            .sent
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sent| {
                Some(sent.saturating_sub(bytes))
            });
    }
}

/// The layers of a build: how many are ready of how many planned, their bytes of tar, and how
/// many the registry already held.
pub struct LayerProgress<W: Write = Stderr> {
    line: ProgressLine<W>,
    counts: Mutex<LayerCounts>,
}

#[derive(Debug, Default)]
struct LayerCounts {
    /// Layers and bytes of tar the build plans, once it has said.
    planned: Option<(usize, u64)>,
    done: usize,
    done_bytes: u64,
    reused: usize,
}

impl LayerCounts {
    /// `layers 3/14 (96.0 MiB of 519.0 MiB, 2 reused)`.
    fn text(&self) -> String {
        let (of_layers, of_bytes) = match self.planned {
            Some((layers, bytes)) => (format!("/{layers}"), format!(" of {}", size::binary(bytes))),
            None => (String::new(), String::new()),
        };
        let reused = match self.reused {
            0 => String::new(),
            n => format!(", {n} reused"),
        };
        format!(
            "layers {}{of_layers} ({}{of_bytes}{reused})",
            self.done,
            size::binary(self.done_bytes)
        )
    }

    fn reported(&self) -> bool {
        self.planned.is_some() || self.done > 0
    }
}

impl<W: Write> LayerProgress<W> {
    pub fn new(line: ProgressLine<W>) -> Self {
        Self {
            line,
            counts: Mutex::default(),
        }
    }

    /// The last line, once the layers are ready (nothing when the build reported none).
    pub fn finish(&self) {
        self.with_counts(|counts, line| {
            if counts.reported() {
                line.finish(&counts.text());
            }
        });
    }

    /// Runs `work` on the counts and the line; the counts stay locked while the line is drawn,
    /// so layers ready at once are shown in the order they were counted.
    fn with_counts(&self, work: impl FnOnce(&mut LayerCounts, &ProgressLine<W>)) {
        // Counts are plain numbers; a panic elsewhere cannot leave them half-changed.
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        work(&mut counts, &self.line);
    }
}

impl<W: Write + Send> BuildProgress for LayerProgress<W> {
    fn layers_planned(&self, layers: usize, bytes: u64) {
        self.with_counts(|counts, line| {
            counts.planned = Some((layers, bytes));
            line.redraw(&counts.text());
        });
    }

    /// Counts the layer; `index` is not shown, as layers may be ready out of order.
    fn layer_done(&self, _index: usize, tar_bytes: u64, reused: bool) {
        self.with_counts(|counts, line| {
            counts.done += 1;
            counts.done_bytes += tar_bytes;
            counts.reused += usize::from(reused);
            line.show(&counts.text());
        });
    }
}

#[cfg(test)]
mod tests;
