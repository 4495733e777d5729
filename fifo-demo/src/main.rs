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
//! One terminal, the whole story (a receiver process started from this
//! program's own executable, not forked):
//!
//! ```text
//! cargo run -p fifo-demo
//! cargo run -p fifo-demo -- --writers 4 --count 1000 --quiet
//! ```
//!
//! Two terminals:
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
//! - several writers whose frames never interleave, because each frame is
//!   one `write` of at most `PIPE_BUF` bytes;
//! - EOF only when the *last* writer closes; `EPIPE` when the reader left;
//! - the FIFO and its directory gone afterwards, also after Ctrl-C.
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
use common::cleanup::{PathGuard, PrivateDir, StopOnSignal, check_stop, stop_on_signals};
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, usage};
use common::frame::{self, FrameError, HEADER_LEN, MAX_FRAME};
use common::payload::{self, CheckReport, Checker, MIN_SIZE, Verdict};
use common::peer::Peer;
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, lstat};
use nix::unistd::{Whence, geteuid, lseek, mkfifo};

const USAGE: &str = "\
fifo-demo: named pipes (FIFOs) between unrelated processes

USAGE:
    fifo-demo [--count N] [--size BYTES] [--writers K] [--quiet]
        The whole story in one terminal: mkfifo in a private directory, the
        open() rules, a receiver process and K writers meeting by name, EOF.
    fifo-demo receiver --path P [--count N] [--writers K] [--lines] [--quiet]
        Create the FIFO P if absent (and remove it on exit), open it for
        reading, check framed messages until every writer has closed.
    fifo-demo sender --path P [--count N] [--size BYTES] [--nonblock] [--lines] [--quiet]
        Open the FIFO P for writing and send N framed messages.

OPTIONS:
    --path P        the FIFO's path (sender and receiver)
    --count N       messages per writer to send or expect (default 5; 1 to 1000000000)
    --size BYTES    bytes per message (default 64; 8 to 16777212)
    --writers K     story: K writer processes at once; receiver: K writers
                    expected (default 1; 1 to 64)
    --lines         newline-delimited text instead of frames: the receiver
                    prints each line, the sender forwards its stdin; works
                    with 'echo hi > P' and 'cat P'
    --nonblock      sender: open with O_NONBLOCK, failing (ENXIO) at once
                    if no reader has the FIFO open
    --quiet         no line per message, only the steps and the summary
    -h, --help      this text

EXIT STATUS: 0 success, 1 runtime error (including data errors and a peer
that died), 2 bad command line, 128+N stopped by signal N (130 for Ctrl-C).
";

/// Each frame's payload starts with the writer's pid (u32, little-endian),
/// then the checkable body, so the receiver keeps one checker per writer.
const TAG_LEN: usize = 4;
/// Most writers the story starts and the receiver tracks.
const MAX_WRITERS: u64 = 64;
/// Longest line accepted in `--lines` mode: a writer that sends no newline
/// cannot make the receiver buffer without end.
const MAX_LINE: usize = 1024 * 1024;
/// How long the story waits for a process that should be finishing.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

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
    lines: bool,
    nonblock: bool,
    quiet: bool,
}

fn run() -> Result<()> {
    let mut args = Args::from_env(USAGE)?;
    let role = args.role(&["sender", "receiver"])?;
    let opts = parse_options(&mut args, role.as_deref())?;
    // Ctrl-C/SIGTERM end blocked calls (open, read, write) with EINTR, so
    // each role can remove what it created before exiting.
    stop_on_signals()?;
    match role.as_deref() {
        None => story(&opts),
        Some("receiver") => receiver(&opts),
        _ => sender(&opts),
    }
}

fn parse_options(args: &mut Args, role: Option<&str>) -> Result<Options> {
    let mut opts = Options {
        path: None,
        count: DEFAULT_COUNT,
        count_given: false,
        size: DEFAULT_SIZE,
        writers: 1,
        writers_given: false,
        lines: false,
        nonblock: false,
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
            "--lines" => opts.lines = true,
            "--nonblock" => opts.nonblock = true,
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
            if opts.lines || opts.nonblock {
                return Err(not_for("--lines/--nonblock", "of the story; use the roles"));
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
            "{p} is a FIFO owned by uid {}, not by you (uid {me}): refusing to use it",
            st.st_uid
        );
    }
    Ok(Some(st))
}

/// open(2) the FIFO checked by [`existing_fifo`], retrying EINTR until a
/// stop signal, and make sure the opened file is the one we checked.
fn open_fifo(path: &Path, flags: OFlag, checked: &FileStat) -> Result<OwnedFd> {
    // O_NOFOLLOW: if someone swapped the name for a symlink since lstat,
    // open fails (ELOOP) instead of opening whatever the link points to.
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let p = path.display();
    let fd = loop {
        check_stop()?;
        match open(path, flags, Mode::empty()) {
            Ok(fd) => break fd,
            // A signal interrupted the wait for the other side; check_stop
            // above decides whether to give up or wait again.
            Err(Errno::EINTR) => continue,
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

fn create_fifo(path: &Path) -> Result<()> {
    // 0600: only this user may open it. mkfifo fails with EEXIST rather
    // than replace anything.
    mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR)
        .with_context(|| format!("mkfifo({}, 0600)", path.display()))
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
    let mut args: Vec<OsString> = vec!["receiver".into(), "--path".into(), path.clone().into()];
    for a in [
        "--count",
        &opts.count.to_string(),
        "--writers",
        &opts.writers.to_string(),
    ] {
        args.push(a.into());
    }
    if opts.quiet {
        args.push("--quiet".into());
    }
    let mut receiver = Peer::spawn_self(&args)?;
    say.step(format!(
        "started the receiver, pid {}: a new program from current_exe(), not a fork; \
         it finds the FIFO only by its path",
        receiver.pid()
    ));
    // Give the receiver time to get into its blocking open(O_RDONLY), so its
    // wait for a writer is visible in its narration.
    sleep(Duration::from_millis(200));
    let fd = open_when_reader(&path, &checked, &mut receiver, &say)?;
    let mut fifo = StopOnSignal(File::from(fd));

    say.line("\n== 4. Writing: every frame is one write() ==");
    let frame_len = HEADER_LEN + TAG_LEN + opts.size;
    if frame_len <= libc::PIPE_BUF {
        say.step(format!(
            "each frame is {frame_len} bytes, at most PIPE_BUF ({}): one write() that the \
             kernel never splits, so frames of different writers never interleave",
            libc::PIPE_BUF
        ));
    } else {
        say.step(format!(
            "each frame is {frame_len} bytes, more than PIPE_BUF ({}): the kernel may split such \
             a write, and with several writers the pieces can interleave; the receiver would \
             then find corrupted or truncated frames",
            libc::PIPE_BUF
        ));
    }
    let mut senders = Vec::new();
    for _ in 1..opts.writers {
        let mut args: Vec<OsString> = vec!["sender".into(), "--path".into(), path.clone().into()];
        for a in [
            "--count",
            &opts.count.to_string(),
            "--size",
            &opts.size.to_string(),
            "--quiet",
        ] {
            args.push(a.into());
        }
        let sender = Peer::spawn_self(&args)?;
        say.step(format!("started writer pid {}", sender.pid()));
        senders.push(sender);
    }
    let start = Instant::now();
    send_frames(&mut fifo, &path, opts.count, opts.size, &say)?;
    say.step(format!(
        "sent {} messages as writer pid {}",
        opts.count,
        std::process::id()
    ));

    say.line("\n== 5. EOF only after the last writer closes ==");
    drop(fifo);
    if senders.is_empty() {
        say.step("closed my write end, the only one: the receiver's next read() returns 0 (EOF)");
    } else {
        say.step(format!(
            "closed my write end; the receiver sees EOF only when the other {} writer(s) close too",
            senders.len()
        ));
    }
    let mut failed = Vec::new();
    for mut sender in senders {
        let exit = sender.wait(None)?;
        say.step(format!("writer pid {} {exit}", sender.pid()));
        if !exit.success() {
            failed.push(format!("writer pid {} {exit}", sender.pid()));
        }
    }
    let elapsed = start.elapsed();
    let exit = receiver.wait(Some(FINISH_TIMEOUT))?;
    say.step(format!("receiver pid {} {exit}", receiver.pid()));
    if !exit.success() {
        failed.push(format!("the receiver (pid {}) {exit}", receiver.pid()));
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    drop(dir);
    say.step("removed the FIFO and its directory");
    let messages = opts.count * opts.writers;
    say.line(Summary {
        mechanism: "fifo",
        messages,
        bytes: messages * opts.size as u64,
        errors: 0,
        elapsed,
    });
    Ok(())
}

/// Step 2: the open() variants that return at once, and lseek.
fn open_rules(path: &Path, checked: &FileStat, say: &Narrator) -> Result<()> {
    let p = path.display();
    match open_fifo(path, OFlag::O_WRONLY | OFlag::O_NONBLOCK, checked) {
        Err(e) if e.is::<NoReader>() => say.step(format!(
            "open({p}, O_WRONLY|O_NONBLOCK) → ENXIO: no reader yet, and a non-blocking \
             writer does not wait for one"
        )),
        Err(e) => return Err(e),
        Ok(_) => bail!("open(O_WRONLY|O_NONBLOCK) succeeded with no reader: expected ENXIO"),
    }
    let reader = open_fifo(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK, checked)?;
    say.step(format!(
        "open({p}, O_RDONLY|O_NONBLOCK) → opened at once: a non-blocking reader does not wait"
    ));
    drop(reader);
    let both = open_fifo(path, OFlag::O_RDWR, checked)?;
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

/// Open the write end once the receiver is reading. A plain blocking open
/// would wait forever if the receiver failed to start; polling with
/// O_NONBLOCK lets us check between tries that it is still alive.
fn open_when_reader(
    path: &Path,
    checked: &FileStat,
    receiver: &mut Peer,
    say: &Narrator,
) -> Result<OwnedFd> {
    let start = Instant::now();
    let mut tries = 0;
    let fd = loop {
        tries += 1;
        match open_fifo(path, OFlag::O_WRONLY | OFlag::O_NONBLOCK, checked) {
            Ok(fd) => break fd,
            Err(e) if e.is::<NoReader>() => {} // no reader yet
            Err(e) => return Err(e),
        }
        if let Some(exit) = receiver.try_wait()? {
            bail!("the receiver {exit} before opening the FIFO");
        }
        if start.elapsed() > FINISH_TIMEOUT {
            bail!("the receiver did not open the FIFO within {FINISH_TIMEOUT:?}");
        }
        sleep(Duration::from_millis(10));
    };
    // Now that a reader exists, make writes block normally again: a full
    // FIFO should make us wait, not fail with EAGAIN.
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(OFlag::empty())).context("fcntl(F_SETFL, 0)")?;
    say.step(format!(
        "open(O_WRONLY|O_NONBLOCK) succeeded on try {tries} after {}: the receiver is blocked \
         in open(O_RDONLY), which counts as a reader; our open now releases it",
        ms(start.elapsed())
    ));
    Ok(fd)
}

// ---------------------------------------------------------------------------
// sender
// ---------------------------------------------------------------------------

fn sender(opts: &Options) -> Result<()> {
    let path = opts.path.as_deref().expect("checked by parse_options");
    let p = path.display();
    let say = Narrator::new("sender", opts.quiet, Stream::Stdout);
    let checked = existing_fifo(path)?.with_context(|| {
        format!("no FIFO at {p}: start 'fifo-demo receiver --path {p}' first; it creates the FIFO")
    })?;
    let fd = if opts.nonblock {
        let fd = open_fifo(path, OFlag::O_WRONLY | OFlag::O_NONBLOCK, &checked)?;
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(OFlag::empty())).context("fcntl(F_SETFL, 0)")?;
        say.step(format!(
            "open({p}, O_WRONLY|O_NONBLOCK) → opened at once: a reader has it open \
             (then cleared O_NONBLOCK so that writes wait when the FIFO is full)"
        ));
        fd
    } else {
        say.step(format!(
            "open({p}, O_WRONLY): waits until a reader opens the FIFO"
        ));
        let start = Instant::now();
        let fd = open_fifo(path, OFlag::O_WRONLY, &checked)?;
        say.step(format!(
            "open(O_WRONLY) returned after {}: a reader has it open",
            ms(start.elapsed())
        ));
        fd
    };
    let mut fifo = StopOnSignal(File::from(fd));
    let start = Instant::now();
    let (messages, bytes) = if opts.lines {
        forward_lines(&mut fifo, path, &say)?
    } else {
        send_frames(&mut fifo, path, opts.count, opts.size, &say)?;
        (opts.count, opts.count * opts.size as u64)
    };
    say.line(Summary {
        mechanism: "fifo",
        messages,
        bytes,
        errors: 0,
        elapsed: start.elapsed(),
    });
    Ok(())
}

/// Send `count` frames tagged with our pid: [pid][payload body].
fn send_frames(
    fifo: &mut StopOnSignal<File>,
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
        other => anyhow::Error::new(other).context(format!("write({})", path.display())),
    }
}

/// `--lines`: copy stdin to the FIFO, one write() per line.
fn forward_lines(fifo: &mut StopOnSignal<File>, path: &Path, say: &Narrator) -> Result<(u64, u64)> {
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
    // The guard removes the FIFO on every way out of this function, Ctrl-C
    // included, but only if we created it.
    let mut _guard = None;
    let checked = match existing_fifo(path)? {
        Some(st) => {
            say.step(format!(
                "{p} is already a FIFO of yours (made by the peer, or left by an earlier run \
                 that was killed): reusing it, and leaving it in place"
            ));
            st
        }
        None => {
            create_fifo(path)?;
            _guard = Some(PathGuard::new(path));
            say.step(format!(
                "mkfifo({p}, 0600): created; I remove it when I exit"
            ));
            existing_fifo(path)?.context("the FIFO vanished right after mkfifo")?
        }
    };
    say.step(format!(
        "open({p}, O_RDONLY): waits until a writer opens the FIFO"
    ));
    let start = Instant::now();
    let fd = open_fifo(path, OFlag::O_RDONLY, &checked)?;
    say.step(format!(
        "open(O_RDONLY) returned after {}: a writer has opened it",
        ms(start.elapsed())
    ));
    let fifo = StopOnSignal(File::from(fd));
    if opts.lines {
        receive_lines(fifo, opts, &say)
    } else {
        receive_frames(fifo, opts, &say)
    }
}

fn receive_frames(mut fifo: StopOnSignal<File>, opts: &Options, say: &Narrator) -> Result<()> {
    let expected = opts.count_given.then_some(opts.count);
    let mut writers: BTreeMap<u32, Checker> = BTreeMap::new();
    let mut untagged = 0u64;
    let start = Instant::now();
    let result = loop {
        let message = match frame::read_frame(&mut fifo, MAX_FRAME) {
            Ok(Some(message)) => message,
            Ok(None) => {
                say.step("read() returned 0 (EOF): the last writer has closed its end");
                break Ok(());
            }
            Err(e) => break Err(anyhow::Error::new(e).context("read(FIFO)")),
        };
        let Some((tag, body)) = message.split_first_chunk::<TAG_LEN>() else {
            untagged += 1;
            say.step("a frame too short to carry a writer pid: corrupted");
            continue;
        };
        let pid = u32::from_le_bytes(*tag);
        if !writers.contains_key(&pid) {
            if writers.len() as u64 >= MAX_WRITERS {
                break Err(anyhow!(
                    "more than {MAX_WRITERS} writers: refusing to track more"
                ));
            }
            say.step(format!("first message from writer pid {pid}"));
        }
        let checker = writers.entry(pid).or_insert_with(|| Checker::new(expected));
        let verdict = checker.check(body);
        if verdict != Verdict::Ok || !opts.quiet {
            let seq = payload::seq_of(body).map_or("?".into(), |s| s.to_string());
            say.step(format!(
                "writer {pid}: message {seq} ({} bytes): {verdict}",
                body.len()
            ));
        }
    };

    let mut total = CheckReport {
        corrupted: untagged,
        received: untagged,
        ..CheckReport::default()
    };
    for (pid, checker) in &writers {
        let report = checker.report();
        say.step(format!("writer {pid}: {report}"));
        total.merge(&report);
    }
    // A writer that never showed up lost all its messages.
    let mut missing_writers = 0;
    if opts.writers_given && (writers.len() as u64) < opts.writers {
        missing_writers = opts.writers - writers.len() as u64;
        total.lost += missing_writers * opts.count;
    }
    say.step(format!("checked, {} writer(s): {total}", writers.len()));
    say.line(Summary {
        mechanism: "fifo",
        messages: total.received,
        bytes: total.bytes,
        errors: total.errors(),
        elapsed: start.elapsed(),
    });
    result?;
    if missing_writers > 0 {
        bail!("expected {} writers, saw {}", opts.writers, writers.len());
    }
    if total.errors() > 0 {
        bail!("{} message(s) failed the check ({total})", total.errors());
    }
    Ok(())
}

fn receive_lines(fifo: StopOnSignal<File>, opts: &Options, say: &Narrator) -> Result<()> {
    let mut input = BufReader::new(fifo);
    let (mut lines, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    while let Some(line) = read_line(&mut input).context("read(FIFO)")? {
        lines += 1;
        bytes += line.len() as u64 + 1;
        say.message(format!("line {lines}: {}", String::from_utf8_lossy(&line)));
    }
    say.step("read() returned 0 (EOF): the last writer has closed its end");
    let lost = if opts.count_given {
        opts.count.saturating_sub(lines)
    } else {
        0
    };
    say.line(Summary {
        mechanism: "fifo",
        messages: lines,
        bytes,
        errors: lost,
        elapsed: start.elapsed(),
    });
    if opts.count_given && lines != opts.count {
        bail!("expected {} lines, got {lines}", opts.count);
    }
    Ok(())
}
