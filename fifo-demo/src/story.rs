//! The story, one terminal: the parent makes a FIFO and reads it; the
//! writers are new processes (this program's `sender` role) that find it
//! only by its path. Each step narrates one property of a FIFO and checks
//! that the kernel did what the narration says.

use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{PrivateDir, check_stop};
use common::frame::{self, HEADER_LEN};
use common::peer::Peer;
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::{FileStat, lstat};
use nix::unistd::{Uid, Whence, chown, geteuid, lseek};

use crate::Options;
use crate::checks::{NoReader, Writers, describe, existing_fifo, ms};
use crate::ipc::{Reader, SeqServer, Served, TAG_LEN, create_fifo, open_fifo};

/// How long the story waits for a writer process that should be finishing.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// After a failed step: how long writers may take to end on their own.
const WRITER_GRACE: Duration = Duration::from_secs(1);

pub fn story(opts: &Options) -> Result<()> {
    let say = Narrator::new("parent", opts.quiet, Stream::Stdout);
    say.line(format!(
        "fifo-demo: {} writer(s) x {} messages of {} bytes through one FIFO (parent pid {})",
        opts.writers,
        opts.count,
        opts.size,
        std::process::id()
    ));

    heading(&say, "1. A name in the filesystem");
    // Removed with everything in it when this function returns, also on an
    // error or Ctrl-C.
    let dir = PrivateDir::create("fifo-demo")?;
    let path = dir.path().join("fifo");
    let checked = name_in_the_filesystem(dir.path(), &path, &say)?;

    heading(&say, "2. Opening without waiting");
    open_rules(&path, &checked, &say)?;

    heading(
        &say,
        "3. Meeting by name: each open() waits for the other side",
    );
    let mut writers = Vec::new();
    let read_end = meet_by_name(&path, &checked, opts, &mut writers, &say)?;
    let start = Instant::now();
    let writers_seen = Writers::new(Some(opts.count), &say);
    let mut reader = Reader::new(&path, checked, read_end, opts.timeout, writers_seen);

    // Steps 4 to 6 read from the FIFO; whatever happens in them, the
    // figures are reported and everything is removed below.
    let result = (|| {
        heading(&say, "4. The dummy writer fd: no EOF between writers");
        dummy_writer_fd(opts, &mut reader, &mut writers, &say)?;
        heading(&say, "5. Several writers");
        several_writers(opts, &mut reader, &mut writers, &say)?;
        heading(&say, "6. EOF only after the last writer closes");
        eof_after_the_last_writer(&mut reader, &say)
    })();

    // Writers still running are stopped and reaped (Peer's drop: SIGTERM,
    // then waitpid), then the figures, then the FIFO goes. A writer that
    // is already on its way out (Ctrl-C'd on its own) is first given a
    // moment: a SIGTERM now would be its second stop signal, which kills
    // it in the middle of its last line.
    if result.is_err() {
        let_writers_finish(&mut writers, WRITER_GRACE);
    }
    drop(writers);
    let (total, mut errors) = reader.writers.report(opts.writers);
    let elapsed = start.elapsed();
    drop(reader); // close(2) of the read end and of the dummy

    // Step 7 has figures of its own (narrated); the summary line is the
    // writers' messages above.
    let result = result.and_then(|()| {
        heading(
            &say,
            "7. A server and its clients: one well-known FIFO, a reply FIFO per client",
        );
        let step = server_and_clients(dir.path(), opts, &say);
        if step.is_err() {
            errors += 1;
        }
        step
    });
    drop(dir); // unlink(2) of the FIFOs, rmdir(2) of the directory
    say.step("removed the FIFO and its directory");
    say.line(Summary {
        mechanism: "fifo",
        messages: total.received,
        bytes: total.bytes,
        errors,
        elapsed,
    });
    result?;
    if errors > 0 {
        bail!("{errors} error(s) in the messages ({total})");
    }
    Ok(())
}

fn heading(say: &Narrator, title: &str) {
    say.line(format!("\n== {title} =="));
}

/// Step 1: mkfifo in a private directory; the FIFO is a file of type 'p'.
fn name_in_the_filesystem(dir: &Path, path: &Path, say: &Narrator) -> Result<FileStat> {
    say.step(format!(
        "mkdir({}, 0700): a private directory",
        dir.display()
    ));
    create_fifo(path)?;
    let checked = existing_fifo(path)?.context("the FIFO vanished right after mkfifo")?;
    say.step(format!(
        "mkfifo({}, 0600): {}",
        path.display(),
        describe(&checked)
    ));
    Ok(checked)
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
    drop(reader); // close(2)
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
    // `both` drops here: close(2).
}

/// Step 3: writer 1 blocks in open(O_WRONLY) until our open(O_RDONLY).
fn meet_by_name(
    path: &Path,
    checked: &FileStat,
    opts: &Options,
    writers: &mut Vec<Peer>,
    say: &Narrator,
) -> Result<std::os::fd::OwnedFd> {
    writers.push(spawn_writer(path, opts)?);
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
    let read_end = open_fifo(path, OFlag::O_RDONLY, checked, Some(start + opts.timeout))?;
    say.step(format!(
        "open(O_RDONLY) returned after {}: writer 1's open(O_WRONLY) and mine released \
         each other",
        ms(start.elapsed())
    ));
    Ok(read_end)
}

/// Step 4: serve writer 1; once it has exited, poll shows neither data nor
/// EOF, because the dummy write end is open.
fn dummy_writer_fd(
    opts: &Options,
    reader: &mut Reader<'_>,
    writers: &mut [Peer],
    say: &Narrator,
) -> Result<()> {
    reader.hold_dummy()?;
    say.step(
        "open(O_WRONLY|O_NONBLOCK) → my own write end (the dummy writer fd), at once since \
         I am a reader. read() gives EOF only when no write end is open: while I hold one, \
         a gap between two writers is not the end, so I count end markers instead. (I close \
         it while a writer's bytes flow, so that a writer that dies shows as EOF.)",
    );
    let frame_len = HEADER_LEN + TAG_LEN + opts.size;
    if frame_len <= libc::PIPE_BUF {
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
    reader.serve_until(1)?;
    wait_writer(&mut writers[0], 1, say)?;

    let next = match opts.writers {
        2 => "writer 2 is not started yet".to_string(),
        k if k > 2 => format!("writers 2 to {k} are not started yet"),
        _ => "no other writer is coming (--writers 1)".to_string(),
    };
    let read_fd = reader.fifo.0.get_ref().as_fd();
    let mut fds = [PollFd::new(read_fd, PollFlags::POLLIN)];
    // poll(2) for 200 ms: without the dummy, POLLHUP (EOF) would show now.
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
    Ok(())
}

/// Step 5: writers 2..K, all at once when frames fit in PIPE_BUF (they
/// never interleave), else one after another.
fn several_writers(
    opts: &Options,
    reader: &mut Reader<'_>,
    writers: &mut Vec<Peer>,
    say: &Narrator,
) -> Result<()> {
    let atomic = HEADER_LEN + TAG_LEN + opts.size <= libc::PIPE_BUF;
    if opts.writers == 1 {
        say.step("--writers 1: no more writers (try --writers 4)");
    } else if atomic {
        for n in 2..=opts.writers {
            let writer = spawn_writer(reader.path, opts)?;
            say.step(format!("started writer {n}, pid {}", writer.pid()));
            writers.push(writer);
        }
        reader.fifo.0.restart();
        reader.serve_until(opts.writers)?;
        for (i, writer) in writers.iter_mut().enumerate().skip(1) {
            wait_writer(writer, i + 1, say)?;
        }
    } else {
        for n in 2..=opts.writers {
            let writer = spawn_writer(reader.path, opts)?;
            say.step(format!("started writer {n}, pid {}, alone", writer.pid()));
            writers.push(writer);
            reader.fifo.0.restart();
            reader.serve_until(n)?;
            wait_writer(writers.last_mut().expect("just pushed"), n as usize, say)?;
        }
    }
    Ok(())
}

/// Step 6: close the dummy; with no write end left, read() returns 0.
fn eof_after_the_last_writer(reader: &mut Reader<'_>, say: &Narrator) -> Result<()> {
    reader.dummy = None; // close(2) of the dummy write end
    let mut byte = [0u8; 1];
    let got = loop {
        match reader.fifo.read(&mut byte) {
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

/// Step 7: the parent is a sequence-number server (TLPI's
/// `fifo_seqnum_server`); the clients are new processes. The lessons: the
/// server's own write descriptor (no EOF between clients), replies into
/// FIFOs the clients name, and the server refusing to be a confused deputy.
fn server_and_clients(dir: &Path, opts: &Options, say: &Narrator) -> Result<()> {
    let server_say = say.with_role("server");
    let path = dir.join("server");
    create_fifo(&path)?;
    let checked = existing_fifo(&path)?.context("the FIFO vanished right after mkfifo")?;
    let mut server = SeqServer::open(&path, &checked)?;
    server_say.step(format!(
        "mkfifo({}, 0600), open(O_RDONLY|O_NONBLOCK), then open(O_WRONLY|O_NONBLOCK): my \
         well-known FIFO, and my own write descriptor on it",
        path.display()
    ));

    let mut clients = vec![spawn_client(&path, opts)?];
    say.step(format!(
        "started client 1, pid {}: it makes a reply FIFO in a private 0700 directory, opens \
         it for reading (O_NONBLOCK), and names it in each of its {CLIENT_REQUESTS} requests",
        clients[0].pid()
    ));
    serve(&mut server, CLIENT_REQUESTS, opts.timeout, &server_say)?;
    wait_peer(&mut clients[0], "client 1", say)?;
    // poll(2) for 200 ms: with no client left, only my own write end is open.
    let mut fds = [PollFd::new(server.read_end(), PollFlags::POLLIN)];
    let ready = loop {
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Err(Errno::EINTR) => check_stop()?,
            other => break other.context("poll(server FIFO)")?,
        }
    };
    if ready != 0 {
        bail!(
            "poll(server FIFO) reported {:?} with no client: expected nothing",
            fds[0].revents()
        );
    }
    server_say.step(
        "client 1 has exited and no client has my FIFO open, yet poll(POLLIN, 200 ms) → 0: \
         no EOF, because my own write descriptor is open; I wait for the next client \
         instead of seeing read() → 0 and having to reopen",
    );

    forged_requests(dir, &path, &checked, &mut server, say, &server_say)?;

    for n in 2..=STORY_CLIENTS {
        let client = spawn_client(&path, opts)?;
        say.step(format!("started client {n}, pid {}", client.pid()));
        clients.push(client);
    }
    let all = STORY_CLIENTS * CLIENT_REQUESTS;
    serve(&mut server, all, opts.timeout, &server_say)?;
    for (i, client) in clients.iter_mut().enumerate().skip(1) {
        wait_peer(client, &format!("client {}", i + 1), say)?;
    }
    server_say.step(format!(
        "{} requests from {STORY_CLIENTS} clients answered with the numbers 0 to {}, each \
         once, into each client's own FIFO; each client checked that its numbers grow \
         (exit 0); {} forged requests refused",
        server.replied,
        server.replied - 1,
        server.refused
    ));
    Ok(())
    // `server` drops: close(2) of both ends; the FIFOs go with `dir`.
}

/// Requests a client sends in the story, and clients in all.
const CLIENT_REQUESTS: u64 = 3;
const STORY_CLIENTS: u64 = 3;

/// Serve until `target` replies in all; any refusal fails the step.
fn serve(server: &mut SeqServer<'_>, target: u64, idle: Duration, say: &Narrator) -> Result<()> {
    while server.replied < target {
        if !server.wait_request(Some(idle))? {
            bail!("no request for {} s: a client is stuck", idle.as_secs());
        }
        match server.serve_one()? {
            Served::Replied { client, seq } => say.message(format!(
                "request from pid {client}: replied with sequence number {seq}"
            )),
            Served::Refused(why) => bail!("the server refused a client's request: {why}"),
        }
    }
    Ok(())
}

/// The parent as an attacker of the same uid: requests whose reply path
/// is not a FIFO of the requesting uid that somebody reads. The server
/// must refuse each (a confused deputy would write where it is told) and
/// go on serving.
fn forged_requests(
    dir: &Path,
    path: &Path,
    checked: &FileStat,
    server: &mut SeqServer<'_>,
    say: &Narrator,
    server_say: &Narrator,
) -> Result<()> {
    let precious = dir.join("precious");
    std::fs::write(&precious, "precious\n").context("write(precious)")?;
    let link = dir.join("link");
    std::os::unix::fs::symlink(&precious, &link).context("symlink(link)")?;
    let gone = dir.join("gone");
    create_fifo(&gone)?;
    // Only root can give a FIFO to another user: as root, one owned by
    // nobody, with a reader, so that only the owner check can refuse it.
    let theirs = dir.join("theirs");
    let mut _their_reader = None;
    if geteuid().is_root() {
        create_fifo(&theirs)?;
        chown(&theirs, Some(Uid::from_raw(NOBODY)), None).context("chown(theirs, nobody)")?;
        let their = existing_fifo_of_anyone(&theirs)?;
        _their_reader = Some(open_fifo(
            &theirs,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK,
            &their,
            None,
        )?);
    }
    let p = |path: &Path| path.display().to_string();
    let mut cases: Vec<(Vec<u8>, String, &str)> = vec![
        (
            request(&precious),
            format!("{}, a regular file of mine", p(&precious)),
            "a regular file, not a FIFO",
        ),
        (
            request(&link),
            format!("{}, a symlink to it", p(&link)),
            "a symbolic link, not a FIFO",
        ),
        (
            request(&gone),
            format!("{}, a FIFO nobody reads (a client that left)", p(&gone)),
            "nobody has it open for reading",
        ),
        (
            request(Path::new("reply")),
            "a relative path, 'reply'".into(),
            "not an absolute path",
        ),
    ];
    if geteuid().is_root() {
        cases.push((
            request(&theirs),
            format!("{}, nobody's FIFO, which a reader has open", p(&theirs)),
            "owned by uid 65534",
        ));
    } else {
        say.step("not root: cannot make a FIFO of another user, so that case is skipped");
    }
    let mut attacker = File::from(open_fifo(
        path,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK,
        checked,
        None,
    )?);
    for (payload, what, expected) in &cases {
        say.step(format!("forged request naming {what}"));
        frame::write_frame(&mut attacker, payload).context("write(server FIFO)")?;
        expect_refusal(server, expected, server_say)?;
    }
    say.step("forged request: 'hello\\n', as 'echo hello > FIFO' would send");
    attacker
        .write_all(b"hello\n")
        .context("write(server FIFO)")?;
    expect_refusal(server, "not a request", server_say)?;
    drop(attacker); // close(2)
    let kept = std::fs::read_to_string(&precious).context("read(precious)")?;
    if kept != "precious\n" {
        bail!("{} was changed: {kept:?}", p(&precious));
    }
    say.step(format!(
        "{} still holds \"precious\": the server wrote nowhere it was not allowed to",
        p(&precious)
    ));
    Ok(())
}

/// The uid of user nobody.
const NOBODY: u32 = 65534;

/// lstat of a FIFO the story gave to another user (no owner check).
fn existing_fifo_of_anyone(path: &Path) -> Result<FileStat> {
    lstat(path).with_context(|| format!("lstat({})", path.display()))
}

/// A request as a client sends it: [my pid: u32][reply path].
fn request(reply: &Path) -> Vec<u8> {
    let mut out = std::process::id().to_le_bytes().to_vec();
    out.extend_from_slice(reply.as_os_str().as_bytes());
    out
}

fn expect_refusal(server: &mut SeqServer<'_>, expected: &str, say: &Narrator) -> Result<()> {
    if !server.wait_request(Some(FORGED_WAIT))? {
        bail!("the forged request did not arrive");
    }
    match server.serve_one()? {
        Served::Refused(why) if why.contains(expected) => {
            say.step(format!("refused: {why}"));
            Ok(())
        }
        Served::Refused(why) => bail!("refused for another reason than {expected:?}: {why}"),
        Served::Replied { seq, .. } => {
            bail!("the server replied ({seq}) to a forged request: expected {expected:?}")
        }
    }
}

/// How long the story waits for a request it wrote itself.
const FORGED_WAIT: Duration = Duration::from_secs(5);

fn spawn_client(path: &Path, opts: &Options) -> Result<Peer> {
    let mut args: Vec<OsString> = vec!["client".into(), "--path".into(), path.into()];
    for a in [
        "--count",
        &CLIENT_REQUESTS.to_string(),
        "--timeout",
        &opts.timeout.as_secs().to_string(),
        "--quiet",
        "--no-summary",
    ] {
        args.push(a.into());
    }
    Peer::spawn_self(&args)
}

fn wait_peer(peer: &mut Peer, name: &str, say: &Narrator) -> Result<()> {
    let exit = peer.wait(Some(FINISH_TIMEOUT))?;
    say.step(format!("{name} (pid {}) {exit}", peer.pid()));
    if !exit.success() {
        bail!("{name} (pid {}) {exit}", peer.pid());
    }
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

/// Reap the writers that end within `grace`; the others are left running
/// for `Peer`'s drop to stop.
fn let_writers_finish(writers: &mut [Peer], grace: Duration) {
    let deadline = Instant::now() + grace;
    for writer in writers {
        while matches!(writer.try_wait(), Ok(None)) && Instant::now() < deadline {
            sleep(Duration::from_millis(10));
        }
    }
}

fn wait_writer(writer: &mut Peer, n: usize, say: &Narrator) -> Result<()> {
    wait_peer(writer, &format!("writer {n}"), say)
}
