//! The mechanism: a FIFO made with `mkfifo`, opened by unrelated processes
//! by its path, written by senders and read by one receiver.
//!
//! Read top to bottom: making the FIFO and the `open()` blocking rules; the
//! sender (open for writing, frames, the end marker); the receiver (mkfifo
//! or take over, open for reading, the dummy writer fd, EOF); `--lines`;
//! then a server and its clients (a well-known FIFO for requests, a reply
//! FIFO per client, and the checks that keep the server from writing
//! wherever a request says).
//! Every system call is at its call site: `open`, `mkfifo`, `fcntl`,
//! `poll`, and `read`/`write` through `std::fs::File` (a `File` reads and
//! writes any descriptor; dropping it or an `OwnedFd` is `close(2)`).

use std::fs::File;
use std::io::{BufReader, ErrorKind, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use common::cleanup::{PrivateDir, StopOnSignal, check_stop};
use common::frame::{self, Frame, FrameError, Idle, MAX_FRAME};
use common::payload;
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, lstat};
use nix::unistd::{geteuid, mkfifo};

use crate::Options;
use crate::checks::{
    FifoGuard, NoReader, OpenTimeout, Writers, existing_fifo, kind_name, ms, read_line,
    text_in_header,
};

/// Each frame's payload starts with the writer's pid (u32, little-endian),
/// then the checkable body, so the receiver keeps one checker per writer.
pub const TAG_LEN: usize = 4;
/// The end marker's payload: the writer's pid (u32) and its count (u64).
pub const END_LEN: usize = 12;

// ---------------------------------------------------------------------------
// The FIFO: mkfifo, and open() with its blocking rules
// ---------------------------------------------------------------------------

// ANCHOR: mkfifo
/// mkfifo(3): a new name of type FIFO ('p' in `ls -l`).
pub fn create_fifo(path: &Path) -> Result<()> {
    // 0600: only this user may open it. mkfifo fails with EEXIST rather
    // than replace anything.
    mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR)
        .with_context(|| format!("mkfifo({}, 0600)", path.display()))
}
// ANCHOR_END: mkfifo

// ANCHOR: open_fifo
/// open(2) the FIFO checked by [`existing_fifo`], retrying EINTR until a
/// stop signal or `give_up`, and make sure the opened file is the one we
/// checked. Without `give_up` a blocking open waits as long as it takes.
///
/// The blocking rules: `O_RDONLY` waits until some process opens the FIFO
/// for writing, `O_WRONLY` until one opens it for reading; with
/// `O_NONBLOCK` a reader returns at once and a writer fails with `ENXIO`.
pub fn open_fifo(
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
    // (A first reading may skip this.) fstat the open descriptor: the same
    // device and inode as the FIFO we checked, so nobody swapped the name
    // between lstat and open.
    let st = fstat(fd.as_fd()).with_context(|| format!("fstat({p})"))?;
    if (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino) {
        bail!("{p} was replaced between lstat and open: refusing it");
    }
    Ok(fd)
}
// ANCHOR_END: open_fifo

// ---------------------------------------------------------------------------
// sender
// ---------------------------------------------------------------------------

/// Open the FIFO for writing, send `--count` frames and the end marker (or
/// forward stdin with `--lines`).
pub fn sender(opts: &Options) -> Result<()> {
    let path = opts.path.as_deref().expect("checked by parse_options");
    let p = path.display();
    // The pid in the label: the receiver names writers by pid.
    let role = format!("sender pid {}", std::process::id());
    let say = Narrator::new(role, opts.quiet, Stream::Stdout);
    let checked = existing_fifo(path)?.with_context(|| {
        format!("no FIFO at {p}: start 'fifo-demo receiver --path {p}' first; it creates the FIFO")
    })?;
    let fd = if opts.nonblock {
        // O_NONBLOCK: fail with ENXIO at once if no process reads the FIFO.
        let fd = open_fifo(path, OFlag::O_WRONLY | OFlag::O_NONBLOCK, &checked, None)?;
        // Clear O_NONBLOCK again, so that a write waits when the FIFO is full.
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
        // Blocks until some process opens the FIFO for reading.
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
    crate::print_summary(opts, &say, "sent", summary);
    Ok(())
    // `fifo` drops here: close(2) of the write end. The receiver sees EOF
    // once every writer has closed.
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
        // One write(2) of header and payload: a frame of at most PIPE_BUF
        // bytes is never split, so writers' frames never interleave.
        frame::write_frame(fifo, &message).map_err(|e| write_error(e, path, seq))?;
        say.message(format!("sent message {seq} ({size} bytes)"));
    }
    Ok(())
}

/// `EPIPE` is how a writer learns that the reader left (Rust ignores
/// SIGPIPE, which would otherwise have killed us).
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

/// The end marker's payload: [pid: u32][count: u64], little-endian.
fn end_payload(count: u64) -> [u8; END_LEN] {
    let mut out = [0u8; END_LEN];
    out[..4].copy_from_slice(&std::process::id().to_le_bytes());
    out[4..].copy_from_slice(&count.to_le_bytes());
    out
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
        fifo.write_all(&out)
            .map_err(|e| write_error(FrameError::Io(e), path, lines))?;
        lines += 1;
        bytes += out.len() as u64;
        say.message(format!("sent line {lines} ({} bytes)", out.len()));
    }
    say.step("stdin reached EOF: closing the FIFO");
    Ok((lines, bytes))
}

// ---------------------------------------------------------------------------
// receiver
// ---------------------------------------------------------------------------

/// Make the FIFO (or take over one of ours left by a killed receiver),
/// open it for reading, and check framed messages until `--writers` end
/// markers (or print lines until EOF with `--lines`); remove it on exit.
pub fn receiver(opts: &Options) -> Result<()> {
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
    // Removes the FIFO (unlink) on every way out of this function, Ctrl-C
    // included.
    let guard = FifoGuard::new(path, &checked);
    say.step(format!(
        "open({p}, O_RDONLY): waits until a writer opens the FIFO (no time limit: a server \
         waits for its first client; Ctrl-C stops it)"
    ));
    let start = Instant::now();
    // Blocks until some process opens the FIFO for writing.
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
    drop(guard); // unlink(2) of the FIFO (the read end was closed above)
    say.step(format!("removed {p}"));
    crate::print_summary(opts, &say, "received", summary);
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
    let mut reader = Reader::new(path, checked, fd, opts.timeout, Writers::new(expected, say));
    let start = Instant::now();
    if let Err(e) = reader.hold_dummy() {
        return (failed(start), Err(e));
    }
    say.step(format!(
        "opened it for writing too (the dummy writer fd): no EOF between writers, so I \
         stop after {} end marker(s), waiting at most {} s for each next writer",
        opts.writers,
        opts.timeout.as_secs()
    ));
    let mut result = reader.serve_until(opts.writers);
    let (total, errors) = reader.writers.report(opts.writers);
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
    // `reader` drops here: close(2) of the read end and of the dummy.
}

fn failed(start: Instant) -> Summary {
    Summary {
        mechanism: "fifo",
        messages: 0,
        bytes: 0,
        errors: 1,
        elapsed: start.elapsed(),
    }
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
pub struct Reader<'a> {
    pub path: &'a Path,
    checked: FileStat,
    /// The read end. Idle: a read that waits longer than the idle timeout
    /// fails; StopOnSignal: Ctrl-C ends a blocked read.
    pub fifo: StopOnSignal<Idle<File>>,
    /// The dummy write end, while held (`None` is closed).
    pub dummy: Option<OwnedFd>,
    /// One payload checker per writer pid, and the end markers.
    pub writers: Writers<'a>,
}

impl<'a> Reader<'a> {
    pub fn new(
        path: &'a Path,
        checked: FileStat,
        read_end: OwnedFd,
        timeout: Duration,
        writers: Writers<'a>,
    ) -> Self {
        Reader {
            path,
            checked,
            fifo: StopOnSignal(Idle::new(File::from(read_end), timeout)),
            dummy: None,
            writers,
        }
    }

    // ANCHOR: dummy_writer
    /// Open the dummy write end. O_NONBLOCK: we hold a read end, so this
    /// cannot fail with ENXIO, and it must not wait for anything.
    pub fn hold_dummy(&mut self) -> Result<()> {
        if self.dummy.is_none() {
            let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK;
            self.dummy = Some(open_fifo(self.path, flags, &self.checked, None)?);
        }
        Ok(())
    }
    // ANCHOR_END: dummy_writer

    /// Read until `target` writers have sent their end marker.
    pub fn serve_until(&mut self, target: u64) -> Result<()> {
        let p = self.path.display();
        while self.writers.finished < target {
            if self.writers.mid_stream().is_empty() {
                self.hold_dummy()?;
                self.wait_for_bytes()?;
            }
            // Bytes from a writer: from now on its death must show as EOF.
            self.dummy = None; // close(2) of the dummy write end
            // read(2) a 4-byte length, then the payload (or an end marker).
            match frame::read_frame_or_end(&mut self.fifo, MAX_FRAME) {
                Ok(Some(Frame::Data(message))) => self.writers.data(&message)?,
                Ok(Some(Frame::End(payload))) => self.writers.end(&payload),
                // read() returned 0: no write end is open any more.
                Ok(None) => bail!(
                    "read({p}) returned 0 (EOF) before the end marker of writer(s) {:?}: \
                     they stopped mid-stream (killed or interrupted)",
                    self.writers.mid_stream()
                ),
                // (An empty list: the bytes came from a writer that sent no
                // whole tagged frame, so its pid is unknown.)
                Err(e) => {
                    let from = if self.writers.mid_stream().is_empty() {
                        format!("writer {} of {target}", self.writers.finished + 1)
                    } else {
                        format!("writer(s) {:?}", self.writers.mid_stream())
                    };
                    // (A first reading may skip this.) `echo hello > P`
                    // sends "hell" where a length belongs: say so.
                    if let Some(text) = text_in_header(&e) {
                        bail!(
                            "read({p}), reading from {from}: {e}: those 4 length bytes are \
                             the text \"{text}\", so the writer sends lines (like 'echo hello \
                             > {p}'), not frames: for text, run the receiver with --lines"
                        );
                    }
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
                        format!(
                            "poll({p}), waiting for writer {}",
                            self.writers.finished + 1
                        )
                    })?;
                }
                Ok(_) => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("poll({p})")),
            }
        }
    }

    /// The dummy rule above: held between writers, closed during one.
    fn apply_dummy_rule(&mut self) -> Result<()> {
        if self.writers.mid_stream().is_empty() {
            self.hold_dummy()
        } else {
            self.dummy = None; // close(2)
            Ok(())
        }
    }
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
        // read(2) until a newline; Ok(None) is read() returning 0 (EOF).
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

// ---------------------------------------------------------------------------
// server and client: one well-known FIFO in, a private reply FIFO per client
// ---------------------------------------------------------------------------
//
// A FIFO cannot answer one of its writers: every reader sees every writer's
// bytes. So each client makes a reply FIFO of its own and names it in its
// request; the server opens that name for writing, writes one reply and
// closes it (Kerrisk, TLPI 44.8, `fifo_seqnum_server`). Here the server
// hands out sequence numbers, each number once.

/// Longest reply path a request may name: a request (4-byte length,
/// 4-byte pid, the path) stays one write of at most PIPE_BUF bytes, which
/// the kernel never splits or mixes with another client's request.
pub const MAX_REPLY_PATH: usize = 1024;
const MAX_REQUEST: usize = TAG_LEN + MAX_REPLY_PATH;
/// A reply's payload: [server pid: u32][sequence number: u64].
const REPLY_LEN: usize = 12;

/// What the server did with one request.
#[derive(Debug)]
pub enum Served {
    Replied {
        client: u32,
        seq: u64,
    },
    /// Not answered, and why (the server goes on serving).
    Refused(String),
}

/// The server's end of its well-known FIFO.
pub struct SeqServer<'a> {
    pub path: &'a Path,
    /// The read end, O_NONBLOCK: read only after poll says a request is
    /// there, so that no client (not even one that sends half a request)
    /// can make the server wait.
    requests: File,
    /// The server's own write descriptor on its FIFO, never written: while
    /// it is open, the last client closing is not EOF (read() never returns
    /// 0), so the server waits for the next client instead.
    _own_writer: OwnedFd,
    next_seq: u64,
    pub replied: u64,
    pub refused: u64,
}

impl<'a> SeqServer<'a> {
    /// Open the FIFO at `path` (checked by [`existing_fifo`]) as its server.
    pub fn open(path: &'a Path, checked: &FileStat) -> Result<Self> {
        // O_NONBLOCK: a plain open(O_RDONLY) would wait for a first client;
        // we want our own write end first, and no read ever to block.
        let read_end = open_fifo(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK, checked, None)?;
        // Our own write end: at once, since we are a reader now.
        let own = open_fifo(path, OFlag::O_WRONLY | OFlag::O_NONBLOCK, checked, None)?;
        Ok(SeqServer {
            path,
            requests: File::from(read_end),
            _own_writer: own,
            next_seq: 0,
            replied: 0,
            refused: 0,
        })
    }

    /// The read end, for a story that checks what poll reports on it.
    pub fn read_end(&self) -> std::os::fd::BorrowedFd<'_> {
        self.requests.as_fd()
    }

    /// Wait until a request is there: `false` if none came within `idle`
    /// (`None`: as long as it takes; Ctrl-C ends the wait).
    pub fn wait_request(&self, idle: Option<Duration>) -> Result<bool> {
        let give_up = idle.map(|d| Instant::now() + d);
        loop {
            check_stop()?;
            let mut fds = [PollFd::new(self.requests.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(0) | Err(Errno::EINTR) => {
                    if give_up.is_some_and(|t| Instant::now() >= t) {
                        return Ok(false);
                    }
                }
                Ok(_) => return Ok(true),
                Err(e) => return Err(e).with_context(|| format!("poll({})", self.path.display())),
            }
        }
    }

    /// Read one request and answer it, or refuse it.
    pub fn serve_one(&mut self) -> Result<Served> {
        let p = self.path.display();
        // read(2) one frame: a whole request, since each is one atomic write.
        let request = match frame::read_frame(&mut &self.requests, MAX_REQUEST) {
            Ok(Some(request)) => request,
            Ok(None) => bail!("read({p}) returned 0 (EOF) while I hold a write end of my own"),
            Err(FrameError::Io(e)) if e.kind() != ErrorKind::WouldBlock => {
                return Err(e).with_context(|| format!("read({p})"));
            }
            // (A first reading may skip this.) Not a request: drop what is
            // buffered, so that the next request starts at a frame boundary
            // (a request queued behind the garbage is lost with it; its
            // client gives up after --timeout).
            Err(e) => {
                let hint = match text_in_header(&e) {
                    Some(text) => format!(" (text: \"{text}\")"),
                    None => String::new(),
                };
                let e = match e {
                    // The frame stopped short: a request is one atomic
                    // write, so this one did not come from a client.
                    FrameError::Io(_) => "a frame cut short".to_string(),
                    e => e.to_string(),
                };
                let dropped = self.drain();
                return Ok(self.refuse(format!(
                    "not a request: {e}{hint}; dropped {dropped} more byte(s)"
                )));
            }
        };
        let Some((pid, path)) = request.split_first_chunk::<TAG_LEN>() else {
            return Ok(self.refuse("a request too short to carry a pid".into()));
        };
        let client = u32::from_le_bytes(*pid);
        let reply_path = Path::new(std::ffi::OsStr::from_bytes(path));
        let fd = match open_reply_fifo(reply_path) {
            Ok(fd) => fd,
            Err(why) => {
                return Ok(self.refuse(format!(
                    "request from pid {client} names {}: {why}",
                    reply_path.display()
                )));
            }
        };
        let mut reply = [0u8; REPLY_LEN];
        reply[..4].copy_from_slice(&std::process::id().to_le_bytes());
        reply[4..].copy_from_slice(&self.next_seq.to_le_bytes());
        // One write(2) of 16 bytes on a non-blocking descriptor: all or
        // nothing (at most PIPE_BUF), and EAGAIN instead of a wait if the
        // client's FIFO is full: a client that never reads cannot stall us.
        let written = frame::write_frame(&mut File::from(fd), &reply);
        // (The File is dropped right there: close(2) of the reply FIFO.)
        match written {
            Ok(()) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.replied += 1;
                Ok(Served::Replied { client, seq })
            }
            Err(e) => {
                let why = match e {
                    FrameError::Io(e) if e.kind() == ErrorKind::WouldBlock => {
                        "EAGAIN: its FIFO is full (a client that does not read)".to_string()
                    }
                    FrameError::Io(e) if e.kind() == ErrorKind::BrokenPipe => {
                        "EPIPE: the client closed it".to_string()
                    }
                    FrameError::Io(e) => e.to_string(),
                    e => e.to_string(),
                };
                Ok(self.refuse(format!(
                    "write({}) failed with {why}: reply to pid {client} dropped",
                    reply_path.display()
                )))
            }
        }
    }

    fn refuse(&mut self, why: String) -> Served {
        self.refused += 1;
        Served::Refused(why)
    }

    /// Read and drop whatever is buffered (the read end is non-blocking).
    fn drain(&mut self) -> usize {
        let mut buf = [0u8; 4096];
        let mut dropped = 0;
        loop {
            match std::io::Read::read(&mut self.requests, &mut buf) {
                Ok(0) => return dropped,
                Ok(n) => dropped += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return dropped, // EAGAIN: empty now
            }
        }
    }
}

/// Open a client's reply FIFO for writing, without becoming a confused
/// deputy: the client chooses the path, and the server (perhaps root) must
/// not write where the client itself may not, or open something that acts
/// when opened.
fn open_reply_fifo(path: &Path) -> std::result::Result<OwnedFd, String> {
    if !path.is_absolute() {
        return Err("not an absolute path".into());
    }
    // lstat first: a symlink, a regular file or a device node (opening
    // some, like /dev/watchdog, has effects) is refused before any open.
    let st = lstat(path).map_err(|e| format!("lstat: {e}"))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFIFO {
        return Err(format!("it is {}, not a FIFO: refused", kind_name(kind)));
    }
    // O_NONBLOCK: never wait for a client: ENXIO at once if nobody has the
    // FIFO open for reading (the client left).
    // O_NOFOLLOW: if the name became a symlink since lstat, ELOOP.
    // No O_CREAT, no O_TRUNC: the server never creates or empties a file.
    let flags = OFlag::O_WRONLY
        | OFlag::O_NONBLOCK
        | OFlag::O_NOFOLLOW
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENXIO) => return Err("nobody has it open for reading (the client left?)".into()),
        Err(Errno::ELOOP) => return Err("it became a symbolic link: refused".into()),
        Err(e) => return Err(format!("open: {e}")),
    };
    // fstat the descriptor, not the name: what we opened is what we check.
    let st = fstat(fd.as_fd()).map_err(|e| format!("fstat: {e}"))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFIFO {
        return Err(format!(
            "it became {}, not a FIFO: refused",
            kind_name(kind)
        ));
    }
    // A FIFO carries no credentials: nothing says who wrote a request. Only
    // our uid can write our 0600 FIFO, so the requesting uid is ours, and
    // the reply FIFO must be owned by it: a FIFO of another user (which a
    // server running as root could open) is refused.
    let me = geteuid().as_raw();
    if st.st_uid != me {
        return Err(format!(
            "a FIFO owned by uid {}, not by uid {me}, the only uid that can send me requests: refused",
            st.st_uid
        ));
    }
    Ok(fd)
}

/// Serve requests on the FIFO at `--path` until Ctrl-C, `--count` replies
/// or (only if given) `--timeout` seconds without a request.
pub fn server(opts: &Options) -> Result<()> {
    let path = opts.path.as_deref().expect("checked by parse_options");
    let p = path.display();
    let say = Narrator::new("server", opts.quiet, Stream::Stdout);
    let checked = match existing_fifo(path)? {
        Some(st) => {
            say.step(format!(
                "{p} is already a FIFO of yours (left by a killed server?): taking it over; \
                 I remove it when I exit"
            ));
            st
        }
        None => {
            create_fifo(path)?;
            say.step(format!(
                "mkfifo({p}, 0600): my well-known FIFO; only your uid can send me requests"
            ));
            existing_fifo(path)?.context("the FIFO vanished right after mkfifo")?
        }
    };
    let guard = FifoGuard::new(path, &checked); // unlink(2) on every way out
    let mut server = SeqServer::open(path, &checked)?;
    say.step(format!(
        "open({p}, O_RDONLY|O_NONBLOCK), then open({p}, O_WRONLY|O_NONBLOCK): my own write \
         descriptor, so that the last client closing is not EOF; waiting for requests ({})",
        match opts.timeout_given {
            true => format!("at most {} s between two", opts.timeout.as_secs()),
            false => "no time limit: a server waits for its clients; Ctrl-C stops it".into(),
        }
    ));
    let start = Instant::now();
    let idle = opts.timeout_given.then_some(opts.timeout);
    while !(opts.count_given && server.replied >= opts.count) {
        if !server.wait_request(idle)? {
            say.step(format!(
                "no request for {} s (--timeout): stopping",
                opts.timeout.as_secs()
            ));
            break;
        }
        match server.serve_one()? {
            Served::Replied { client, seq } => say.message(format!(
                "request from pid {client}: replied with sequence number {seq}"
            )),
            Served::Refused(why) => say.step(format!("refused: {why}")),
        }
    }
    let (replied, refused) = (server.replied, server.refused);
    drop(server); // close(2) of the read end and of my own write end
    drop(guard); // unlink(2)
    say.step(format!(
        "removed {p}; replied to {replied}, refused {refused}"
    ));
    let summary = Summary {
        mechanism: "fifo",
        messages: replied,
        bytes: replied * REPLY_LEN as u64,
        errors: refused,
        elapsed: start.elapsed(),
    };
    crate::print_summary(opts, &say, "served", summary);
    Ok(())
}

/// Make a reply FIFO in a private directory, send `--count` requests to
/// the server at `--path`, and check that the numbers it hands out grow.
pub fn client(opts: &Options) -> Result<()> {
    let path = opts.path.as_deref().expect("checked by parse_options");
    let p = path.display();
    let say = Narrator::new(
        format!("client pid {}", std::process::id()),
        opts.quiet,
        Stream::Stdout,
    );
    let checked = existing_fifo(path)?.with_context(|| {
        format!("no FIFO at {p}: start 'fifo-demo server --path {p}' first; it creates the FIFO")
    })?;
    // The reply FIFO in a private 0700 directory: no other user can open
    // it, replace it, or put a symlink in its place. Removed (with the
    // FIFO) when `dir` drops.
    let dir = PrivateDir::create("fifo-demo-client")?;
    let reply_path = dir.path().join("reply");
    create_fifo(&reply_path)?;
    let reply_checked =
        existing_fifo(&reply_path)?.context("the reply FIFO vanished right after mkfifo")?;
    say.step(format!(
        "mkdir({}, 0700), mkfifo(reply, 0600): my reply FIFO, named in every request",
        dir.path().display()
    ));
    // O_NONBLOCK: returns at once. It must be open before the request goes
    // out: the server opens it with O_NONBLOCK and gets ENXIO otherwise.
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK;
    let replies = File::from(open_fifo(&reply_path, flags, &reply_checked, None)?);
    // My own write end, as the receiver's dummy: the server closes the
    // reply FIFO after each reply, and without it poll would report POLLHUP
    // (EOF) between two replies instead of waiting.
    let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK;
    let _own = open_fifo(&reply_path, flags, &reply_checked, None)?;
    // ENXIO at once if no server reads its FIFO.
    let to_server =
        open_fifo(path, OFlag::O_WRONLY | OFlag::O_NONBLOCK, &checked, None).map_err(|e| {
            match e.downcast_ref::<NoReader>() {
                Some(_) => anyhow!(
                    "open({p}, O_WRONLY|O_NONBLOCK) failed with ENXIO: no server reads it; start \
                 'fifo-demo server --path {p}' first"
                ),
                None => e,
            }
        })?;
    // Back to blocking writes (a full server FIFO makes us wait, at most
    // --timeout, see Idle).
    fcntl(to_server.as_fd(), FcntlArg::F_SETFL(OFlag::empty())).context("fcntl(F_SETFL, 0)")?;
    let mut requests = StopOnSignal(Idle::new(File::from(to_server), opts.timeout));
    let mut request = std::process::id().to_le_bytes().to_vec();
    request.extend_from_slice(reply_path.as_os_str().as_bytes());
    if request.len() > MAX_REQUEST {
        bail!(
            "the reply path {} is over {MAX_REPLY_PATH} bytes",
            reply_path.display()
        );
    }
    let start = Instant::now();
    let mut last: Option<(u32, u64)> = None;
    for n in 0..opts.count {
        // One write(2): a request never mixes with another client's.
        frame::write_frame(&mut requests, &request).map_err(|e| write_error(e, path, n))?;
        wait_reply(&replies, requests.0.get_ref(), path, opts.timeout, n)?;
        let reply = frame::read_frame(&mut &replies, REPLY_LEN)
            .with_context(|| format!("read({}), reply {n}", reply_path.display()))?
            .context("EOF on my reply FIFO while I hold a write end of my own")?;
        let (server, seq) = parse_reply(&reply)?;
        // (A first reading may skip this.) Other clients get numbers in
        // between, so mine only grow; and they all come from one server.
        if let Some((first_server, previous)) = last
            && (server != first_server || seq <= previous)
        {
            bail!(
                "reply {n}: number {seq} from server pid {server} after {previous} from \
                 pid {first_server}: expected a larger number from the same server"
            );
        }
        last = Some((server, seq));
        say.message(format!(
            "request {n}: server pid {server} gave me sequence number {seq}"
        ));
    }
    let summary = Summary {
        mechanism: "fifo",
        messages: opts.count,
        bytes: opts.count * REPLY_LEN as u64,
        errors: 0,
        elapsed: start.elapsed(),
    };
    crate::print_summary(opts, &say, "received", summary);
    Ok(())
    // Drops: close(2) of every descriptor; `dir` unlinks the reply FIFO
    // and removes the directory.
}

/// Wait for a reply on `replies`, at most `timeout`. The server's FIFO is
/// polled too: poll on a write end reports POLLERR once no process has it
/// open for reading, i.e. the server exited or was killed.
fn wait_reply(
    replies: &File,
    to_server: &File,
    path: &Path,
    timeout: Duration,
    n: u64,
) -> Result<()> {
    let give_up = Instant::now() + timeout;
    loop {
        check_stop()?;
        let mut fds = [
            PollFd::new(replies.as_fd(), PollFlags::POLLIN),
            PollFd::new(to_server.as_fd(), PollFlags::empty()),
        ];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => {
                let ready = |fd: &PollFd| fd.revents().unwrap_or(PollFlags::empty());
                if ready(&fds[0]).contains(PollFlags::POLLIN) {
                    return Ok(());
                }
                if ready(&fds[0]).contains(PollFlags::POLLHUP) {
                    bail!(
                        "poll(reply FIFO) → POLLHUP: no write end open, which cannot happen \
                         while I hold my own"
                    );
                }
                if ready(&fds[1]).contains(PollFlags::POLLERR) {
                    bail!(
                        "poll({}) → POLLERR: no process reads it any more, the server exited \
                         or was killed; no reply to request {n}",
                        path.display()
                    );
                }
            }
            Err(e) => return Err(e).context("poll(reply FIFO, server FIFO)"),
        }
        if Instant::now() >= give_up {
            bail!(
                "no reply to request {n} within {} s (--timeout): is the server stopped?",
                timeout.as_secs()
            );
        }
    }
}

fn parse_reply(reply: &[u8]) -> Result<(u32, u64)> {
    let bytes: &[u8; REPLY_LEN] = reply
        .try_into()
        .map_err(|_| anyhow!("a reply of {} bytes: expected {REPLY_LEN}", reply.len()))?;
    let (pid, seq) = bytes.split_at(4);
    Ok((
        u32::from_le_bytes(pid.try_into().expect("4 bytes")),
        u64::from_le_bytes(seq.try_into().expect("8 bytes")),
    ))
}
