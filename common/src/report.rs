//! What a demo prints: narration lines and the one summary line.
//!
//! Narration: `[role] what happened`, one line per step, plus one line per
//! message unless `--quiet`. The summary is the same in every demo, so runs
//! of different mechanisms line up:
//!
//! ```text
//! summary: mechanism=pipe messages=1000 bytes=4096000 errors=0 seconds=0.012 MB/s=341.3
//! ```
//!
//! Rust ignores SIGPIPE, so printing to a closed stdout (`demo | head -3`)
//! fails with `EPIPE`, and `println!` would panic. Lines here are written
//! with `write_all` and `EPIPE` is ignored: the reader has gone, and the
//! demo finishes its work (and its cleanup) without an audience. Any other
//! error writing stdout (a full disk, a closed descriptor) is kept in
//! [`OUTPUT_ERRNO`](crate::error::OUTPUT_ERRNO), and the run exits 1.

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

/// Where a narrator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    /// For roles whose stdout carries the data (`pipe-demo sender`).
    Stderr,
}

/// Prints `[role] ...` lines.
#[derive(Debug, Clone)]
pub struct Narrator {
    role: String,
    quiet: bool,
    stream: Stream,
}

impl Narrator {
    pub fn new(role: impl Into<String>, quiet: bool, stream: Stream) -> Self {
        Narrator {
            role: role.into(),
            quiet,
            stream,
        }
    }

    /// The same narrator under another role name (e.g. a forked child).
    pub fn with_role(&self, role: impl Into<String>) -> Self {
        Narrator {
            role: role.into(),
            ..self.clone()
        }
    }

    /// One step of the story: always printed.
    pub fn step(&self, text: impl fmt::Display) {
        self.line(format_args!("[{}] {text}", self.role));
    }

    /// One line per message: left out with `--quiet`.
    pub fn message(&self, text: impl fmt::Display) {
        if !self.quiet {
            self.step(text);
        }
    }

    /// A line without the role prefix (headings, the summary).
    pub fn line(&self, text: impl fmt::Display) {
        let line = format!("{text}\n");
        // One write_all per line plus a flush: nothing stays buffered, so a
        // fork() cannot duplicate half-printed output into the child, and
        // lines from two processes sharing the terminal do not interleave
        // within a line.
        match self.stream {
            Stream::Stdout => {
                // (No let-chain: a copied demo's `common` is edition 2021.)
                let failed = write_line(&mut io::stdout().lock(), &line).err();
                if let Some(e) = failed.filter(|e| e.kind() != io::ErrorKind::BrokenPipe) {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    // The first error is the one to report.
                    let _ = crate::error::OUTPUT_ERRNO.compare_exchange(
                        0,
                        errno,
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                    );
                }
            }
            // Nobody to tell about a failed write to stderr.
            Stream::Stderr => {
                let _ = write_line(&mut io::stderr().lock(), &line);
            }
        }
    }
}

fn write_line(out: &mut impl Write, line: &str) -> io::Result<()> {
    out.write_all(line.as_bytes())?;
    out.flush()
}

/// The final line of every demo run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub mechanism: &'static str,
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Summary {
    /// Throughput in megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        self.bytes as f64 / seconds / 1e6
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "summary: mechanism={} messages={} bytes={} errors={} seconds={:.3} MB/s={:.1}",
            self.mechanism,
            self.messages,
            self.bytes,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.mb_per_s()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_format() {
        let s = Summary {
            mechanism: "pipe",
            messages: 1000,
            bytes: 4_096_000,
            errors: 0,
            elapsed: Duration::from_millis(12),
        };
        assert_eq!(
            s.to_string(),
            "summary: mechanism=pipe messages=1000 bytes=4096000 errors=0 seconds=0.012 MB/s=341.3"
        );
    }

    #[test]
    fn zero_time_does_not_divide_by_zero() {
        let s = Summary {
            mechanism: "pipe",
            messages: 0,
            bytes: 0,
            errors: 0,
            elapsed: Duration::ZERO,
        };
        assert!(s.mb_per_s().is_finite());
    }
}
