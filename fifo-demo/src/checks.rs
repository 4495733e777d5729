//! What a first reading of `ipc.rs` may skip: the checks of a path before
//! it is trusted, the guard that removes the receiver's FIFO, the error
//! types the story expects, the per-writer bookkeeping, small helpers.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::cleanup::Registration;
use common::frame::FrameError;
use common::payload::{self, CheckReport, Checker, Verdict};
use common::report::Narrator;
use nix::errno::Errno;
use nix::sys::stat::{FileStat, SFlag, lstat};
use nix::unistd::geteuid;

use crate::MAX_WRITERS;
use crate::ipc::{END_LEN, TAG_LEN};

/// Longest line accepted in `--lines` mode: a writer that sends no newline
/// cannot make the receiver buffer without end.
pub const MAX_LINE: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// The path: checked before use (opened without following symlinks in ipc.rs)
// ---------------------------------------------------------------------------

/// What is at `path`: `None` if nothing, the FIFO's status if it is a FIFO
/// of ours, an error for anything else. Nothing is ever removed or replaced
/// here: a wrong `--path` must not cost the user a file.
pub fn existing_fifo(path: &Path) -> Result<Option<FileStat>> {
    // lstat, not stat: look at the name itself, not where a symlink points.
    let st = match lstat(path) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("lstat({})", path.display())),
    };
    let p = path.display();
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFLNK {
        bail!("{p} is a symbolic link: refusing to follow it; choose another --path");
    }
    if kind != SFlag::S_IFIFO {
        bail!(
            "{p} is {}, not a FIFO: refusing to use or replace it; choose another --path",
            kind_name(kind)
        );
    }
    let me = geteuid().as_raw();
    if st.st_uid != me {
        bail!(
            "{p} is a FIFO owned by uid {}, not by you (uid {me}): refusing to use it, \
             and leaving it in place; choose another --path",
            st.st_uid
        );
    }
    Ok(Some(st))
}

/// "a regular file", "a directory", ... for a file type from `st_mode`.
pub fn kind_name(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        _ => "not a FIFO",
    }
}

/// Removes the receiver's FIFO on drop (every way out, Ctrl-C included),
/// but only if the name still is the FIFO we checked: a file someone put
/// there since is not ours to delete. SIGKILL runs no drop: the next
/// receiver finds the FIFO and takes it over.
#[derive(Debug)]
pub struct FifoGuard {
    path: PathBuf,
    id: (u64, u64),
    /// A second Ctrl-C (which ends the process at once, with no drop)
    /// unlinks the path too: see `common::cleanup`.
    _entry: Registration,
}

impl FifoGuard {
    pub fn new(path: &Path, st: &FileStat) -> Self {
        FifoGuard {
            path: path.to_path_buf(),
            id: (st.st_dev, st.st_ino),
            _entry: Registration::unlink(path),
        }
    }
}

impl Drop for FifoGuard {
    fn drop(&mut self) {
        if let Ok(st) = lstat(&self.path)
            && (st.st_dev, st.st_ino) == self.id
        {
            // unlink(2): the name goes; processes that have it open keep it.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `open(O_WRONLY|O_NONBLOCK)` failed with ENXIO: nobody has the FIFO open
/// for reading. A type of its own, so the story can expect it.
#[derive(Debug)]
pub struct NoReader(pub PathBuf);

impl std::fmt::Display for NoReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.0.display();
        write!(
            f,
            "open({p}, O_WRONLY|O_NONBLOCK) failed with ENXIO: no process has the FIFO open \
             for reading; start 'fifo-demo receiver --path {p}' first"
        )
    }
}

impl std::error::Error for NoReader {}

/// A blocking open() of the FIFO found no peer before its deadline.
#[derive(Debug)]
pub struct OpenTimeout(pub PathBuf);

impl std::fmt::Display for OpenTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "open({}): nobody opened the other end in time (--timeout): is a receiver \
             running? A FIFO left by a killed receiver has none",
            self.0.display()
        )
    }
}

impl std::error::Error for OpenTimeout {}

// ---------------------------------------------------------------------------
// The receiver's bookkeeping: a checker per writer, end markers
// ---------------------------------------------------------------------------

/// One writer as the reader sees it.
#[derive(Debug)]
struct Writer {
    checker: Checker,
    /// The count from its end marker, once that arrived.
    sent: Option<u64>,
}

/// Every writer the reader has heard from, by pid.
pub struct Writers<'a> {
    writers: BTreeMap<u32, Writer>,
    /// Frames too short to carry a writer pid, or bad end markers.
    untagged: u64,
    /// Writers whose end marker arrived.
    pub finished: u64,
    /// Messages per writer, if known.
    expected: Option<u64>,
    say: &'a Narrator,
}

impl<'a> Writers<'a> {
    pub fn new(expected: Option<u64>, say: &'a Narrator) -> Self {
        Writers {
            writers: BTreeMap::new(),
            untagged: 0,
            finished: 0,
            expected,
            say,
        }
    }

    /// Writers that have sent frames but no end marker yet.
    pub fn mid_stream(&self) -> Vec<u32> {
        let open = self.writers.iter().filter(|(_, w)| w.sent.is_none());
        open.map(|(pid, _)| *pid).collect()
    }

    fn writer(&mut self, pid: u32) -> Result<&mut Writer> {
        if !self.writers.contains_key(&pid) {
            if self.writers.len() as u64 >= MAX_WRITERS {
                bail!("more than {MAX_WRITERS} writers: refusing to track more");
            }
            self.say
                .step(format!("first message from writer pid {pid}"));
        }
        let expected = self.expected;
        Ok(self.writers.entry(pid).or_insert_with(|| Writer {
            checker: Checker::new(expected),
            sent: None,
        }))
    }

    /// A data frame: [writer pid: u32][checkable body].
    pub fn data(&mut self, message: &[u8]) -> Result<()> {
        let Some((tag, body)) = message.split_first_chunk::<TAG_LEN>() else {
            self.untagged += 1;
            self.say
                .step("a frame too short to carry a writer pid: corrupted");
            return Ok(());
        };
        let pid = u32::from_le_bytes(*tag);
        let say = self.say;
        let writer = self.writer(pid)?;
        let verdict = writer.checker.check(body);
        let line = || {
            let seq = payload::seq_of(body).map_or("?".into(), |s| s.to_string());
            format!(
                "writer {pid}: message {seq} ({} bytes): {verdict}",
                body.len()
            )
        };
        // Every bad message is shown, even with --quiet.
        if verdict != Verdict::Ok {
            say.step(line());
        } else {
            say.message(line());
        }
        Ok(())
    }

    /// An end marker's payload: [writer pid: u32][count: u64].
    pub fn end(&mut self, payload: &[u8]) {
        let Some((pid, count)) = parse_end(payload) else {
            self.untagged += 1;
            self.say.step("an end marker of the wrong size: corrupted");
            return;
        };
        let Ok(writer) = self.writer(pid) else {
            self.untagged += 1;
            return;
        };
        if writer.sent.is_some() {
            self.untagged += 1;
            self.say
                .step(format!("writer {pid}: a second end marker: corrupted"));
            return;
        }
        writer.sent = Some(count);
        self.finished += 1;
        self.say.step(format!(
            "writer {pid}: end marker: it sent {count} message(s); {} writer(s) done",
            self.finished
        ));
    }

    /// Every writer's figures, narrated, and their sum. A writer's end
    /// marker says how many it sent: what did not arrive of those is lost.
    pub fn report(&self, wanted: u64) -> (CheckReport, u64) {
        let mut total = CheckReport {
            corrupted: self.untagged,
            received: self.untagged,
            ..CheckReport::default()
        };
        for (pid, writer) in &self.writers {
            let mut report = writer.checker.report();
            if let Some(sent) = writer.sent {
                let arrived = report.received - report.duplicated - report.corrupted;
                report.lost = report.lost.max(sent.saturating_sub(arrived));
            }
            let end = if writer.sent.is_some() {
                ""
            } else {
                " (no end marker: cut off)"
            };
            self.say.step(format!("writer {pid}: {report}{end}"));
            total.merge(&report);
        }
        // Writers that never came, or never finished, are errors too.
        let unfinished = wanted.saturating_sub(self.finished);
        let never_came = wanted.saturating_sub(self.writers.len() as u64);
        if let Some(n) = self.expected {
            total.lost += never_came * n;
        }
        self.say.step(format!(
            "checked, {} writer(s): {total}; {unfinished} of {wanted} without an end marker",
            self.writers.len()
        ));
        (total, total.errors() + unfinished)
    }
}

fn parse_end(payload: &[u8]) -> Option<(u32, u64)> {
    let bytes: &[u8; END_LEN] = payload.try_into().ok()?;
    let (pid, count) = bytes.split_at(4);
    Some((
        u32::from_le_bytes(pid.try_into().ok()?),
        u64::from_le_bytes(count.try_into().ok()?),
    ))
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// One line without its newline; `None` at EOF. A last line without a
/// newline still counts. Lines over MAX_LINE are an error.
pub fn read_line(input: &mut impl BufRead) -> Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let got = input
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if got == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_LINE {
        bail!(
            "a line is longer than {MAX_LINE} bytes: is the writer sending frames? (then drop --lines)"
        );
    }
    Ok(Some(line))
}

/// The 4 length bytes of a frame refused as too long, if they are
/// printable text: a writer sending lines (`echo hello > P`) to a receiver
/// that expects frames. Any 4 printable ASCII bytes read as a length are
/// over 500 MB, so such a header is always refused as too long.
pub fn text_in_header(e: &FrameError) -> Option<String> {
    let FrameError::TooLong { len, .. } = e else {
        return None;
    };
    let bytes = u32::try_from(*len).ok()?.to_le_bytes();
    let text = |b: &u8| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    bytes
        .iter()
        .all(text)
        .then(|| String::from_utf8_lossy(&bytes).escape_debug().to_string())
}

/// The FIFO's `ls -l` facts, for the story's first step.
pub fn describe(st: &FileStat) -> String {
    format!(
        "type FIFO ('p' in ls -l), mode {:04o}, owner uid {}, size {} (data never touches the disk)",
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_size
    )
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
