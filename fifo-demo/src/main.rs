//! # fifo-demo: named pipes (FIFOs)
//!
//! A FIFO is a pipe with a name in the filesystem. `mkfifo` creates the
//! name; any process allowed to open it can then read or write, so
//! processes that are not related meet by path. The data never touches the
//! disk: it goes through the same kernel buffer as an anonymous pipe.
//!
//! | property          | FIFO (named pipe)                                          |
//! |-------------------|------------------------------------------------------------|
//! | direction         | one way (open it twice, or use two FIFOs, for replies)     |
//! | who can talk      | any processes that can open the path (mode 0600: only you) |
//! | message boundaries| none: a byte stream, so messages are framed (`frame`)     |
//! | persistence       | the name stays until unlinked; the data only while open    |
//! | capacity          | 64 KiB by default on Linux, as for a pipe                  |
//! | blocking          | open(O_RDONLY) waits for a writer and open(O_WRONLY) for a reader; read gives 0 (EOF) once the last writer closes; write gives `EPIPE` once no reader is left |
//!
//! ## Run it
//!
//! One terminal, the whole story (the parent reads; the writers are
//! processes started from this program's own executable, not forked):
//!
//! ```text
//! cargo run -p fifo-demo
//! cargo run -p fifo-demo -- --writers 4 --count 1000 --quiet
//! ```
//!
//! Two terminals (or three: a receiver serves `--writers K` senders, one
//! after another or at once):
//!
//! ```text
//! cargo run -p fifo-demo -- receiver --path /tmp/demo.fifo
//! cargo run -p fifo-demo -- sender --path /tmp/demo.fifo --count 10
//! ```
//!
//! With shell tools, in `--lines` mode:
//!
//! ```text
//! fifo-demo receiver --path /tmp/demo.fifo --lines &   echo hello > /tmp/demo.fifo
//! cat /tmp/demo.fifo &   printf 'one\ntwo\n' | fifo-demo sender --path /tmp/demo.fifo --lines
//! ```
//!
//! ## What to look for
//!
//! - which `open` waits for whom, and the non-blocking variants (`ENXIO`);
//! - why opening with `O_RDWR` never waits, and why that is a trick;
//! - the dummy writer fd: a reader that holds a write end of its own sees
//!   no EOF between two writers, so it must know by other means when it is
//!   done (here: one end marker per writer);
//! - several writers whose frames never interleave, because each frame is
//!   one `write` of at most `PIPE_BUF` bytes;
//! - EOF only when the *last* writer closes; `EPIPE` when the reader left;
//! - the FIFO and its directory gone afterwards, also after Ctrl-C, and a
//!   FIFO left by a killed receiver taken over and removed by the next one.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `frame`, `payload`,
//! `peer`, `report`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use common::cleanup::{PrivateDir, StopOnSignal, check_stop, stop_on_signals, stop_requested};
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, Interrupted, usage};
use common::frame::{self, Frame, FrameError, HEADER_LEN, Idle, MAX_FRAME};
use common::payload::{self, CheckReport, Checker, MIN_SIZE, Verdict};
use common::peer::{Peer, Ticker};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, lstat};
use nix::unistd::{Whence, geteuid, lseek, mkfifo};

const USAGE: &str = "\
fifo-demo: named pipes (FIFOs) between unrelated processes

USAGE:
    fifo-demo [--count N] [--size BYTES] [--writers K] [--timeout SECS] [--quiet]
        The whole story in one terminal: mkfifo in a private directory, the
        open() rules, K writer processes meeting the parent by name, the
        dummy writer fd, EOF.
    fifo-demo receiver --path P [--count N] [--writers K] [--timeout SECS] [--lines] [--quiet]
        Create the FIFO P (or take over a FIFO of yours left there), open it
        for reading, and check framed messages until K writers have sent
        their end marker; remove P on exit.
    fifo-demo sender --path P [--count N] [--size BYTES] [--timeout SECS] [--nonblock] [--lines] [--quiet]
        Open the FIFO P for writing, send N framed messages and the end marker.

OPTIONS:
    --path P        the FIFO's path (sender and receiver)
    --count N       messages per writer to send or expect (default 5; 1 to 1000000000)
    --size BYTES    bytes per message (default 64; 8 to 16777212: the 16 MiB
                    frame limit less the 4-byte writer pid in every frame)
    --writers K     writers: the story starts K (default 2: the parent shows
                    the gap between the first and the others); the receiver
                    waits for K end markers (default 1); 1 to 64
    --timeout SECS  idle timeout (default 60; 1 to 86400): the longest a
                    role waits for its peer to make progress before it gives
                    up with exit 1: a sender for a reader to open the FIFO
                    and for room in it; a receiver, once a first writer came,
                    for the next bytes or the next of its K writers
    --lines         newline-delimited text instead of frames: the receiver
                    prints each line, the sender forwards its stdin; works
                    with 'echo hi > P' and 'cat P'. Text has no end marker:
                    the receiver stops at EOF (the last writer closing), so
                    a cut-off text stream cannot be told from a finished one
    --nonblock      sender: open with O_NONBLOCK, failing (ENXIO) at once
                    if no reader has the FIFO open
    --no-summary    roles: print the figures as a narration line instead of
                    the summary line (the story starts its writers so, and
                    prints the run's one summary line itself)
    --quiet         no line per message, only the steps and the summary
    -h, --help      this text

FRAMES: every message is a frame (u32 little-endian length, then the
writer's pid as u32, then the checkable body). A sender ends with an END
MARKER: the length 0xFFFFFFFF, then a 12-byte frame holding its pid and how
many messages it sent. A receiver that reaches EOF before a writer's end
marker reports that writer's stream as cut off (exit 1), with or without
--count.

WAITS WITHOUT A TIME LIMIT: the receiver's first open(O_RDONLY), which
waits for a first writer (a server waits for its clients; Ctrl-C stops it).
Every other wait is bounded by --timeout, or in the story by a deadline.

EXIT STATUS: 0 success, 1 runtime error (including data errors, a cut-off
stream, a timeout and a peer that died), 2 bad command line, 128+N stopped
by signal N (130 for Ctrl-C), for the story too, whatever its writers did.
";

/// Each frame's payload starts with the writer's pid (u32, little-endian),
/// then the checkable body, so the receiver keeps one checker per writer.
const TAG_LEN: usize = 4;
/// The end marker's payload: the writer's pid (u32) and its count (u64).
const END_LEN: usize = 12;
/// Most writers the story starts and the receiver tracks.
const MAX_WRITERS: u64 = 64;
/// Longest line accepted in `--lines` mode: a writer that sends no newline
/// cannot make the receiver buffer without end.
const MAX_LINE: usize = 1024 * 1024;
/// How long the story waits for a writer process that should be finishing.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Default idle timeout (`--timeout`).
const DEFAULT_TIMEOUT: u64 = 60;
/// How often blocked calls wake (a SIGALRM tick) to look at the clock: a
/// blocked open(), read() or write() has no timeout of its own.
const TICK: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    error::run("fifo-demo", run)
}

struct Options {
    path: Option<PathBuf>,
    count: u64,
    count_given: bool,
    size: usize,
    writers: u64,
    writers_given: bool,
    timeout: Duration,
    lines: bool,
    nonblock: bool,
    no_summary: bool,
    quiet: bool,
}

fn run() -> Result<()> {
    let mut args = Args::from_env(USAGE)?;
    let role = args.role(&["sender", "receiver"])?;
    let opts = parse_options(&mut args, role.as_deref())?;
    // Ctrl-C/SIGTERM end blocked calls (open, read, write) with EINTR, so
    // each role can remove what it created before exiting.
    stop_on_signals()?;
    // A SIGALRM every second interrupts blocked calls too (EINTR), so that
    // each wait can look at its deadline; see frame::Idle.
    let _ticker = Ticker::start(TICK)?;
    let result = match role.as_deref() {
        None => story(&opts),
        Some("receiver") => receiver(&opts),
        _ => sender(&opts),
    };
    // Stopped by a signal: that is the outcome (exit 128+N), whatever
    // error the stop caused on the way out (an EPIPE, a writer's exit 130).
    match stop_requested() {
        Some(signal) => Err(Interrupted(signal).into()),
        None => result,
    }
}

fn parse_options(args: &mut Args, role: Option<&str>) -> Result<Options> {
    let mut opts = Options {
        path: None,
        count: DEFAULT_COUNT,
        count_given: false,
        size: DEFAULT_SIZE,
        // The story's default shows the gap between two writers.
        writers: if role.is_none() { 2 } else { 1 },
        writers_given: false,
        timeout: Duration::from_secs(DEFAULT_TIMEOUT),
        lines: false,
        nonblock: false,
        no_summary: false,
        quiet: false,
    };
    let mut size_given = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--path" => opts.path = Some(PathBuf::from(args.value("--path")?)),
            "--count" => {
                opts.count = args.number("--count", 1, MAX_COUNT)?;
                opts.count_given = true;
            }
            "--size" => {
                opts.size = args.number("--size", MIN_SIZE, MAX_FRAME - TAG_LEN)?;
                size_given = true;
            }
            "--writers" => {
                opts.writers = args.number("--writers", 1, MAX_WRITERS)?;
                opts.writers_given = true;
            }
            "--timeout" => {
                opts.timeout = Duration::from_secs(args.number("--timeout", 1, 86_400)?);
            }
            "--lines" => opts.lines = true,
            "--nonblock" => opts.nonblock = true,
            "--no-summary" => opts.no_summary = true,
            "--quiet" => opts.quiet = true,
            other => return Err(args.unknown(other)),
        }
    }
    // Options that do not apply to a role are refused, not ignored.
    let not_for = |option: &str, what: &str| usage(format!("{option} is not an option {what}"));
    match role {
        None => {
            if opts.path.is_some() {
                return Err(not_for("--path", "of the story (it makes its own FIFO)"));
            }
            if opts.lines || opts.nonblock || opts.no_summary {
                return Err(not_for(
                    "--lines/--nonblock/--no-summary",
                    "of the story; use the roles",
                ));
            }
        }
        Some(role) => {
            if opts.path.is_none() {
                return Err(usage(format!(
                    "the {role} needs --path P, e.g. --path /tmp/demo.fifo"
                )));
            }
            if role == "receiver" && (size_given || opts.nonblock) {
                return Err(not_for("--size/--nonblock", "of the receiver"));
            }
            if role == "receiver" && opts.lines && opts.writers_given {
                return Err(usage(
                    "--lines reads text until EOF, which has no end markers to count: \
                     --writers does not apply",
                ));
            }
            if role == "sender" && opts.writers_given {
                return Err(not_for(
                    "--writers",
                    "of the sender (start several senders)",
                ));
            }
            if role == "sender" && opts.lines && (opts.count_given || size_given) {
                return Err(usage(
                    "--lines forwards stdin line by line: --count and --size do not apply",
                ));
            }
        }
    }
    Ok(opts)
}

// ---------------------------------------------------------------------------
// The path: checked before use, opened without following symlinks
// ---------------------------------------------------------------------------

/// What is at `path`: `None` if nothing, the FIFO's status if it is a FIFO
/// of ours, an error for anything else. Nothing is ever removed or replaced
/// here: a wrong `--path` must not cost the user a file.
fn existing_fifo(path: &Path) -> Result<Option<FileStat>> {
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
        let what = match kind {
            SFlag::S_IFREG => "a regular file",
            SFlag::S_IFDIR => "a directory",
            SFlag::S_IFSOCK => "a socket",
            _ => "not a FIFO",
        };
        bail!("{p} is {what}, not a FIFO: refusing to use or replace it; choose another --path");
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

/// open(2) the FIFO checked by [`existing_fifo`], retrying EINTR until a
/// stop signal or `give_up`, and make sure the opened file is the one we
/// checked. Without `give_up` a blocking open waits as long as it takes.
fn open_fifo(
    path: &Path,
    flags: OFlag,
    checked: &FileStat,
    give_up: Option<Instant>,
) -> Result<OwnedFd> {
    // O_NOFOLLOW: if someone swapped the name for a symlink since lstat,
    // open fails (ELOOP) instead of opening whatever the link points to.
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let p = path.display();
    let fd = loop {
        check_stop()?;
        match open(path, flags, Mode::empty()) {
            Ok(fd) => break fd,
            // A signal (Ctrl-C, or the one-second tick) interrupted the wait
            // for the other side: give up, or wait again.
            Err(Errno::EINTR) => {
                if give_up.is_some_and(|t| Instant::now() >= t) {
                    return Err(OpenTimeout(path.to_path_buf()).into());
                }
            }
            Err(Errno::ENXIO) => return Err(NoReader(path.to_path_buf()).into()),
            Err(Errno::ELOOP) => bail!("open({p}): it became a symbolic link: refusing it"),
            Err(e) => return Err(e).with_context(|| format!("open({p})")),
        }
    };
    // fstat the open descriptor: the same device and inode as the FIFO we
    // checked, so nobody swapped the name between lstat and open.
    let st = fstat(fd.as_fd()).with_context(|| format!("fstat({p})"))?;
    if (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino) {
        bail!("{p} was replaced between lstat and open: refusing it");
    }
    Ok(fd)
}

/// `open(O_WRONLY|O_NONBLOCK)` failed with ENXIO: nobody has the FIFO open
/// for reading. A type of its own, so the story can expect it.
#[derive(Debug)]
struct NoReader(PathBuf);

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
struct OpenTimeout(PathBuf);

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

fn create_fifo(path: &Path) -> Result<()> {
    // 0600: only this user may open it. mkfifo fails with EEXIST rather
    // than replace anything.
    mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR)
        .with_context(|| format!("mkfifo({}, 0600)", path.display()))
}

/// Removes the receiver's FIFO on drop (every way out, Ctrl-C included),
/// but only if the name still is the FIFO we checked: a file someone put
/// there since is not ours to delete. SIGKILL runs no drop: the next
/// receiver finds the FIFO and takes it over.
#[derive(Debug)]
struct FifoGuard {
    path: PathBuf,
    id: (u64, u64),
}

impl FifoGuard {
    fn new(path: &Path, st: &FileStat) -> Self {
        FifoGuard {
            path: path.to_path_buf(),
            id: (st.st_dev, st.st_ino),
        }
    }
}

impl Drop for FifoGuard {
    fn drop(&mut self) {
        if let Ok(st) = lstat(&self.path)
            && (st.st_dev, st.st_ino) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn describe(st: &FileStat) -> String {
    format!(
        "type FIFO ('p' in ls -l), mode {:04o}, owner uid {}, size {} (data never touches the disk)",
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_size
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------
// The receiving side: the read end, the dummy writer fd, a checker per writer
// ---------------------------------------------------------------------------

/// One writer as the reader sees it.
#[derive(Debug)]
struct Writer {
    checker: Checker,
    /// The count from its end marker, once that arrived.
    sent: Option<u64>,
}

/// The reader of framed messages from K writers (the story's parent and
/// the receiver role both use it).
///
/// **The dummy writer fd.** read() on a FIFO returns 0 (EOF) as soon as no
/// process has it open for writing. Between two writers (one closed, the
/// next not yet opened) that is true for a moment, and a reader that stops
/// at EOF misses every later writer. The classic answer (Kerrisk, TLPI
/// 44.8): the reader opens the FIFO for writing too, never writes, and so
/// never sees EOF; it must then know by other means when it is done. Here:
/// every writer ends with an end marker, and the reader stops after K.
///
/// While a writer is mid-stream, though, the reader *wants* EOF: it is how
/// a writer that dies is noticed at once. So it holds the dummy only while
/// it waits for a writer: it polls until bytes arrive, closes the dummy,
/// reads, and opens it again after that writer's end marker (EOF is
/// decided at read() time, so a writer that closed just before cannot slip
/// in an EOF while we hold the dummy).
struct Server<'a> {
    path: &'a Path,
    checked: FileStat,
    fifo: StopOnSignal<Idle<File>>,
    dummy: Option<OwnedFd>,
    writers: BTreeMap<u32, Writer>,
    /// Frames too short to carry a writer pid, or bad end markers.
    untagged: u64,
    finished: u64,
    /// Messages per writer, if known.
    expected: Option<u64>,
    quiet: bool,
    say: &'a Narrator,
}

impl<'a> Server<'a> {
    fn new(
        path: &'a Path,
        checked: FileStat,
        read_end: OwnedFd,
        opts: &Options,
        expected: Option<u64>,
        say: &'a Narrator,
    ) -> Self {
        Server {
            path,
            checked,
            fifo: StopOnSignal(Idle::new(File::from(read_end), opts.timeout)),
            dummy: None,
            writers: BTreeMap::new(),
            untagged: 0,
            finished: 0,
            expected,
            quiet: opts.quiet,
            say,
        }
    }

    /// Open the dummy write end. O_NONBLOCK: we hold a read end, so this
    /// cannot fail with ENXIO, and it must not wait for anything.
    fn hold_dummy(&mut self) -> Result<()> {
        if self.dummy.is_none() {
            let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK;
            self.dummy = Some(open_fifo(self.path, flags, &self.checked, None)?);
        }
        Ok(())
    }

    /// A writer has sent frames but no end marker yet.
    fn mid_stream(&self) -> Vec<u32> {
        let open = self.writers.iter().filter(|(_, w)| w.sent.is_none());
        open.map(|(pid, _)| *pid).collect()
    }

    /// Read until `target` writers have sent their end marker.
    fn serve_until(&mut self, target: u64) -> Result<()> {
        let p = self.path.display();
        while self.finished < target {
            if self.mid_stream().is_empty() {
                self.hold_dummy()?;
                self.wait_for_bytes()?;
            }
            // Bytes from a writer: from now on its death must show as EOF.
            self.dummy = None;
            match frame::read_frame_or_end(&mut self.fifo, MAX_FRAME) {
                Ok(Some(Frame::Data(message))) => self.data(&message)?,
                Ok(Some(Frame::End(payload))) => self.end(&payload),
                Ok(None) => bail!(
                    "read({p}) returned 0 (EOF) before the end marker of writer(s) {:?}: \
                     they stopped mid-stream (killed or interrupted)",
                    self.mid_stream()
                ),
                // (An empty list: the bytes came from a writer that sent no
                // whole tagged frame, so its pid is unknown.)
                Err(e) => {
                    let from = if self.mid_stream().is_empty() {
                        format!("writer {} of {target}", self.finished + 1)
                    } else {
                        format!("writer(s) {:?}", self.mid_stream())
                    };
                    return Err(
                        anyhow::Error::new(e).context(format!("read({p}), reading from {from}"))
                    );
                }
            }
        }
        // After the last end marker too: the story goes on reading.
        self.apply_dummy_rule()
    }

    /// Wait until the FIFO has bytes to read, at most the idle timeout.
    /// poll, not read: read() would consume the bytes before we could
    /// close the dummy.
    fn wait_for_bytes(&mut self) -> Result<()> {
        let p = self.path.display();
        loop {
            check_stop()?;
            let mut fds = [PollFd::new(
                self.fifo.0.get_ref().as_fd(),
                PollFlags::POLLIN,
            )];
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                // Nothing yet (or the tick interrupted us): look at the clock.
                Ok(0) | Err(Errno::EINTR) => {
                    self.fifo.0.check().with_context(|| {
                        format!("poll({p}), waiting for writer {}", self.finished + 1)
                    })?;
                }
                Ok(_) => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("poll({p})")),
            }
        }
    }

    /// The dummy rule above: held between writers, closed during one.
    fn apply_dummy_rule(&mut self) -> Result<()> {
        if self.mid_stream().is_empty() {
            self.hold_dummy()
        } else {
            self.dummy = None;
            Ok(())
        }
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

    fn data(&mut self, message: &[u8]) -> Result<()> {
        let Some((tag, body)) = message.split_first_chunk::<TAG_LEN>() else {
            self.untagged += 1;
            self.say
                .step("a frame too short to carry a writer pid: corrupted");
            return Ok(());
        };
        let pid = u32::from_le_bytes(*tag);
        let quiet = self.quiet;
        let writer = self.writer(pid)?;
        let verdict = writer.checker.check(body);
        if verdict != Verdict::Ok || !quiet {
            let seq = payload::seq_of(body).map_or("?".into(), |s| s.to_string());
            self.say.step(format!(
                "writer {pid}: message {seq} ({} bytes): {verdict}",
                body.len()
            ));
        }
        Ok(())
    }

    fn end(&mut self, payload: &[u8]) {
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
    fn report(&self, wanted: u64) -> (CheckReport, u64) {
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

/// The end marker's payload: [pid: u32][count: u64], little-endian.
fn end_payload(count: u64) -> [u8; END_LEN] {
    let mut out = [0u8; END_LEN];
    out[..4].copy_from_slice(&std::process::id().to_le_bytes());
    out[4..].copy_from_slice(&count.to_le_bytes());
    out
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
// The story
// ---------------------------------------------------------------------------

fn story(opts: &Options) -> Result<()> {
    let say = Narrator::new("parent", opts.quiet, Stream::Stdout);
    say.line(format!(
        "fifo-demo: {} writer(s) x {} messages of {} bytes through one FIFO (parent pid {})",
        opts.writers,
        opts.count,
        opts.size,
        std::process::id()
    ));

    say.line("\n== 1. A name in the filesystem ==");
    // Removed with everything in it when this function returns, also on an
    // error or Ctrl-C.
    let dir = PrivateDir::create("fifo-demo")?;
    say.step(format!(
        "mkdir({}, 0700): a private directory",
        dir.path().display()
    ));
    let path = dir.path().join("fifo");
    create_fifo(&path)?;
    let checked = existing_fifo(&path)?.context("the FIFO vanished right after mkfifo")?;
    say.step(format!(
        "mkfifo({}, 0600): {}",
        path.display(),
        describe(&checked)
    ));

    say.line("\n== 2. Opening without waiting ==");
    open_rules(&path, &checked, &say)?;

    say.line("\n== 3. Meeting by name: each open() waits for the other side ==");
    let mut writers = Vec::new();
    writers.push(spawn_writer(&path, opts)?);
    say.step(format!(
        "started writer 1, pid {}: a new program from current_exe(), not a fork; it finds \
         the FIFO only by its path, and its open(O_WRONLY) waits for a reader",
        writers[0].pid()
    ));
    // Give the writer time to get into its blocking open(O_WRONLY), so that
    // our open is the one that releases it.
    sleep(Duration::from_millis(200));
    let p = path.display();
    say.step(format!(
        "open({p}, O_RDONLY): waits until a writer opens the FIFO"
    ));
    let start = Instant::now();
    let read_end = open_fifo(&path, OFlag::O_RDONLY, &checked, Some(start + opts.timeout))?;
    say.step(format!(
        "open(O_RDONLY) returned after {}: writer 1's open(O_WRONLY) and mine released \
         each other",
        ms(start.elapsed())
    ));

    let mut server = Server::new(&path, checked, read_end, opts, Some(opts.count), &say);
    let result = story_writers(opts, &mut server, &mut writers, &say);
    // Whatever happened: writers still running are stopped and reaped
    // (Peer's drop), then the figures, then the FIFO goes.
    drop(writers);
    let (total, errors) = server.report(opts.writers);
    drop(server);
    drop(dir);
    say.step("removed the FIFO and its directory");
    say.line(Summary {
        mechanism: "fifo",
        messages: total.received,
        bytes: total.bytes,
        errors,
        elapsed: start.elapsed(),
    });
    result?;
    if errors > 0 {
        bail!("{errors} error(s) in the messages ({total})");
    }
    Ok(())
}

/// Steps 4 to 6, with the FIFO open for reading.
fn story_writers(
    opts: &Options,
    server: &mut Server<'_>,
    writers: &mut Vec<Peer>,
    say: &Narrator,
) -> Result<()> {
    say.line("\n== 4. The dummy writer fd: no EOF between writers ==");
    server.hold_dummy()?;
    say.step(
        "open(O_WRONLY|O_NONBLOCK) → my own write end (the dummy writer fd), at once since \
         I am a reader. read() gives EOF only when no write end is open: while I hold one, \
         a gap between two writers is not the end, so I count end markers instead. (I close \
         it while a writer's bytes flow, so that a writer that dies shows as EOF.)",
    );
    let frame_len = HEADER_LEN + TAG_LEN + opts.size;
    let atomic = frame_len <= libc::PIPE_BUF;
    if atomic {
        say.step(format!(
            "each frame is {frame_len} bytes, at most PIPE_BUF ({}): one write() that the \
             kernel never splits, so frames of different writers never interleave",
            libc::PIPE_BUF
        ));
    } else {
        say.step(format!(
            "each frame is {frame_len} bytes, more than PIPE_BUF ({}): the kernel may split \
             such a write, and pieces of two writers' frames would interleave; so the \
             writers take turns, one after another",
            libc::PIPE_BUF
        ));
    }
    server.serve_until(1)?;
    wait_writer(&mut writers[0], 1, say)?;

    let next = match opts.writers {
        2 => "writer 2 is not started yet".to_string(),
        k if k > 2 => format!("writers 2 to {k} are not started yet"),
        _ => "no other writer is coming (--writers 1)".to_string(),
    };
    let read_fd = server.fifo.0.get_ref().as_fd();
    let mut fds = [PollFd::new(read_fd, PollFlags::POLLIN)];
    let ready = loop {
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Err(Errno::EINTR) => check_stop()?,
            other => break other.context("poll(FIFO)")?,
        }
    };
    if ready != 0 {
        bail!(
            "poll(FIFO) reported {:?} with no writer: expected nothing",
            fds[0].revents()
        );
    }
    say.step(format!(
        "writer 1 has exited, so its write end is closed, and {next}: the only write end \
         left is my dummy. poll(POLLIN, 200 ms) → 0: nothing to read and no EOF. Without \
         the dummy, read() would return 0 (EOF) now, and a reader that stops at EOF would \
         miss every later writer"
    ));

    say.line("\n== 5. Several writers ==");
    if opts.writers == 1 {
        say.step("--writers 1: no more writers (try --writers 4)");
    } else if atomic {
        for n in 2..=opts.writers {
            let writer = spawn_writer(server.path, opts)?;
            say.step(format!("started writer {n}, pid {}", writer.pid()));
            writers.push(writer);
        }
        server.fifo.0.restart();
        server.serve_until(opts.writers)?;
        for (i, writer) in writers.iter_mut().enumerate().skip(1) {
            wait_writer(writer, i + 1, say)?;
        }
    } else {
        for n in 2..=opts.writers {
            let writer = spawn_writer(server.path, opts)?;
            say.step(format!("started writer {n}, pid {}, alone", writer.pid()));
            writers.push(writer);
            server.fifo.0.restart();
            server.serve_until(n)?;
            wait_writer(writers.last_mut().expect("just pushed"), n as usize, say)?;
        }
    }

    say.line("\n== 6. EOF only after the last writer closes ==");
    server.dummy = None;
    let mut byte = [0u8; 1];
    let got = loop {
        match server.fifo.read(&mut byte) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => break other.context("read(FIFO)")?,
        }
    };
    if got != 0 {
        bail!("read(FIFO) after the last end marker returned {got} byte(s): expected EOF");
    }
    say.step(
        "closed my dummy write end; every writer has exited, so no write end is open: \
         read() → 0 (EOF)",
    );
    Ok(())
}

/// Start one writer: this program's sender role, on the story's FIFO.
fn spawn_writer(path: &Path, opts: &Options) -> Result<Peer> {
    let mut args: Vec<OsString> = vec!["sender".into(), "--path".into(), path.into()];
    for a in [
        "--count",
        &opts.count.to_string(),
        "--size",
        &opts.size.to_string(),
        "--timeout",
        &opts.timeout.as_secs().to_string(),
        "--quiet",
        // The story prints the run's one summary line.
        "--no-summary",
    ] {
        args.push(a.into());
    }
    Peer::spawn_self(&args)
}

fn wait_writer(writer: &mut Peer, n: usize, say: &Narrator) -> Result<()> {
    let exit = writer.wait(Some(FINISH_TIMEOUT))?;
    say.step(format!("writer {n} (pid {}) {exit}", writer.pid()));
    if !exit.success() {
        bail!("writer {n} (pid {}) {exit}", writer.pid());
    }
    Ok(())
}

/// Step 2: the open() variants that return at once, and lseek.
fn open_rules(path: &Path, checked: &FileStat, say: &Narrator) -> Result<()> {
    let p = path.display();
    match open_fifo(path, OFlag::O_WRONLY | OFlag::O_NONBLOCK, checked, None) {
        Err(e) if e.is::<NoReader>() => say.step(format!(
            "open({p}, O_WRONLY|O_NONBLOCK) → ENXIO: no reader yet, and a non-blocking \
             writer does not wait for one"
        )),
        Err(e) => return Err(e),
        Ok(_) => bail!("open(O_WRONLY|O_NONBLOCK) succeeded with no reader: expected ENXIO"),
    }
    let reader = open_fifo(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK, checked, None)?;
    say.step(format!(
        "open({p}, O_RDONLY|O_NONBLOCK) → opened at once: a non-blocking reader does not wait"
    ));
    drop(reader);
    let both = open_fifo(path, OFlag::O_RDWR, checked, None)?;
    say.step(format!(
        "open({p}, O_RDWR) → opened at once: this process is its own reader and writer, so \
         neither side waits. A trick: POSIX leaves it undefined, and a reader that also holds \
         a write end never sees EOF"
    ));
    match lseek(both.as_fd(), 0, Whence::SeekSet) {
        Err(Errno::ESPIPE) => say.step(
            "lseek(fd, 0, SEEK_SET) → ESPIPE: a FIFO is a stream, with no position to seek to",
        ),
        other => bail!("lseek on a FIFO: expected ESPIPE, got {other:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// sender
// ---------------------------------------------------------------------------

fn sender(opts: &Options) -> Result<()> {
    let path = opts.path.as_deref().expect("checked by parse_options");
    let p = path.display();
    // The pid in the label: the receiver names writers by pid.
    let role = format!("sender pid {}", std::process::id());
    let say = Narrator::new(role, opts.quiet, Stream::Stdout);
    let checked = existing_fifo(path)?.with_context(|| {
        format!("no FIFO at {p}: start 'fifo-demo receiver --path {p}' first; it creates the FIFO")
    })?;
    let fd = if opts.nonblock {
        let fd = open_fifo(path, OFlag::O_WRONLY | OFlag::O_NONBLOCK, &checked, None)?;
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(OFlag::empty())).context("fcntl(F_SETFL, 0)")?;
        say.step(format!(
            "open({p}, O_WRONLY|O_NONBLOCK) → opened at once: a reader has it open \
             (then cleared O_NONBLOCK so that writes wait when the FIFO is full)"
        ));
        fd
    } else {
        say.step(format!(
            "open({p}, O_WRONLY): waits until a reader opens the FIFO (at most {} s)",
            opts.timeout.as_secs()
        ));
        let start = Instant::now();
        let fd = open_fifo(path, OFlag::O_WRONLY, &checked, Some(start + opts.timeout))?;
        say.step(format!(
            "open(O_WRONLY) returned after {}: a reader has it open",
            ms(start.elapsed())
        ));
        fd
    };
    // Idle: a write that waits for room longer than --timeout (a reader
    // that stopped reading) fails instead of waiting forever.
    let mut fifo = StopOnSignal(Idle::new(File::from(fd), opts.timeout));
    let start = Instant::now();
    let (messages, bytes) = if opts.lines {
        forward_lines(&mut fifo, path, &say)?
    } else {
        send_frames(&mut fifo, path, opts.count, opts.size, &say)?;
        // One write() of 20 bytes: atomic, so it never mixes with another
        // writer's frame.
        frame::write_end(&mut fifo, &end_payload(opts.count))
            .map_err(|e| write_error(e, path, opts.count))?;
        say.step(format!(
            "sent the end marker (length 0xFFFFFFFF, my pid, count {}): the receiver can \
             tell that I finished from a stream cut off",
            opts.count
        ));
        (opts.count, opts.count * opts.size as u64)
    };
    let summary = Summary {
        mechanism: "fifo",
        messages,
        bytes,
        errors: 0,
        elapsed: start.elapsed(),
    };
    if opts.no_summary {
        say.step(format!("sent: {}", figures(&summary)));
    } else {
        say.line(summary);
    }
    Ok(())
}

fn empty_summary(start: Instant) -> Summary {
    Summary {
        mechanism: "fifo",
        messages: 0,
        bytes: 0,
        errors: 1,
        elapsed: start.elapsed(),
    }
}

/// The summary's figures without the `summary:` word, for a narration line.
fn figures(summary: &Summary) -> String {
    let line = summary.to_string();
    line.strip_prefix("summary: ").unwrap_or(&line).to_string()
}

/// Send `count` frames tagged with our pid: [pid][payload body].
fn send_frames(
    fifo: &mut StopOnSignal<Idle<File>>,
    path: &Path,
    count: u64,
    size: usize,
    say: &Narrator,
) -> Result<()> {
    let mut message = vec![0u8; TAG_LEN + size];
    message[..TAG_LEN].copy_from_slice(&std::process::id().to_le_bytes());
    for seq in 0..count {
        check_stop()?;
        payload::fill(seq, &mut message[TAG_LEN..]);
        frame::write_frame(fifo, &message).map_err(|e| write_error(e, path, seq))?;
        say.message(format!("sent message {seq} ({size} bytes)"));
    }
    Ok(())
}

fn write_error(e: FrameError, path: &Path, sent: u64) -> anyhow::Error {
    match e {
        FrameError::Io(io) if io.kind() == ErrorKind::BrokenPipe => anyhow!(
            "write({}) failed with EPIPE after {sent} messages: the receiver closed the FIFO \
             (it exited or was killed)",
            path.display()
        ),
        other => anyhow::Error::new(other)
            .context(format!("write({}) after {sent} messages", path.display())),
    }
}

/// `--lines`: copy stdin to the FIFO, one write() per line.
fn forward_lines(
    fifo: &mut StopOnSignal<Idle<File>>,
    path: &Path,
    say: &Narrator,
) -> Result<(u64, u64)> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("dup(stdin)")?;
    let mut input = BufReader::new(StopOnSignal(File::from(stdin)));
    let (mut lines, mut bytes) = (0u64, 0u64);
    while let Some(line) = read_line(&mut input).context("read(stdin)")? {
        let mut out = line;
        out.push(b'\n');
        // write_all on the unbuffered File: one write() per line, atomic
        // for lines up to PIPE_BUF bytes.
        std::io::Write::write_all(fifo, &out)
            .map_err(|e| write_error(FrameError::Io(e), path, lines))?;
        lines += 1;
        bytes += out.len() as u64;
        say.message(format!("sent line {lines} ({} bytes)", out.len()));
    }
    say.step("stdin reached EOF: closing the FIFO");
    Ok((lines, bytes))
}

/// One line without its newline; `None` at EOF. A last line without a
/// newline still counts. Lines over MAX_LINE are an error.
fn read_line(input: &mut impl BufRead) -> Result<Option<Vec<u8>>> {
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

// ---------------------------------------------------------------------------
// receiver
// ---------------------------------------------------------------------------

fn receiver(opts: &Options) -> Result<()> {
    let path = opts.path.as_deref().expect("checked by parse_options");
    let p = path.display();
    let say = Narrator::new("receiver", opts.quiet, Stream::Stdout);
    let checked = match existing_fifo(path)? {
        Some(st) => {
            // Ours (owner == euid, checked above): most likely left by a
            // receiver killed with SIGKILL, which runs no cleanup. Taking it
            // over means removing it at the end, as if we had made it.
            say.step(format!(
                "{p} is already a FIFO of yours (left by an earlier run that was killed, or \
                 made with mkfifo): taking it over; I remove it when I exit"
            ));
            st
        }
        None => {
            create_fifo(path)?;
            say.step(format!(
                "mkfifo({p}, 0600): created; I remove it when I exit"
            ));
            existing_fifo(path)?.context("the FIFO vanished right after mkfifo")?
        }
    };
    // Removes the FIFO on every way out of this function, Ctrl-C included.
    let _guard = FifoGuard::new(path, &checked);
    say.step(format!(
        "open({p}, O_RDONLY): waits until a writer opens the FIFO (no time limit: a server \
         waits for its first client; Ctrl-C stops it)"
    ));
    let start = Instant::now();
    let fd = open_fifo(path, OFlag::O_RDONLY, &checked, None)?;
    say.step(format!(
        "open(O_RDONLY) returned after {}: a writer has opened it",
        ms(start.elapsed())
    ));
    let (summary, result) = if opts.lines {
        receive_lines(
            StopOnSignal(Idle::new(File::from(fd), opts.timeout)),
            opts,
            &say,
        )
    } else {
        receive_frames(path, checked, fd, opts, &say)
    };
    drop(_guard);
    say.step(format!("removed {p}"));
    if opts.no_summary {
        say.step(format!("received: {}", figures(&summary)));
    } else {
        say.line(summary);
    }
    result
}

fn receive_frames(
    path: &Path,
    checked: FileStat,
    fd: OwnedFd,
    opts: &Options,
    say: &Narrator,
) -> (Summary, Result<()>) {
    let expected = opts.count_given.then_some(opts.count);
    let mut server = Server::new(path, checked, fd, opts, expected, say);
    let start = Instant::now();
    if let Err(e) = server.hold_dummy() {
        return (empty_summary(start), Err(e));
    }
    say.step(format!(
        "opened it for writing too (the dummy writer fd): no EOF between writers, so I \
         stop after {} end marker(s), waiting at most {} s for each next writer",
        opts.writers,
        opts.timeout.as_secs()
    ));
    let mut result = server.serve_until(opts.writers);
    let (total, errors) = server.report(opts.writers);
    let summary = Summary {
        mechanism: "fifo",
        messages: total.received,
        bytes: total.bytes,
        errors,
        elapsed: start.elapsed(),
    };
    if result.is_ok() && errors > 0 {
        result = Err(anyhow!("{errors} error(s) in the messages ({total})"));
    }
    (summary, result)
}

/// `--lines`: print each line until EOF; no end marker in plain text.
fn receive_lines(
    fifo: StopOnSignal<Idle<File>>,
    opts: &Options,
    say: &Narrator,
) -> (Summary, Result<()>) {
    let mut input = BufReader::new(fifo);
    let (mut lines, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    let result = loop {
        match read_line(&mut input).context("read(FIFO)") {
            Ok(Some(line)) => {
                lines += 1;
                bytes += line.len() as u64 + 1;
                say.message(format!("line {lines}: {}", String::from_utf8_lossy(&line)));
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = result {
        let summary = Summary {
            mechanism: "fifo",
            messages: lines,
            bytes,
            errors: 1,
            elapsed: start.elapsed(),
        };
        return (summary, Err(e));
    }
    say.step("read() returned 0 (EOF): the last writer has closed its end");
    let lost = if opts.count_given {
        opts.count.saturating_sub(lines)
    } else {
        0
    };
    let summary = Summary {
        mechanism: "fifo",
        messages: lines,
        bytes,
        errors: lost,
        elapsed: start.elapsed(),
    };
    let result = if opts.count_given && lines != opts.count {
        Err(anyhow!("expected {} lines, got {lines}", opts.count))
    } else {
        Ok(())
    };
    (summary, result)
}
