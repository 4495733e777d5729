//! # socket-demo: Unix domain sockets, the general-purpose IPC
//!
//! A socket is an endpoint of a two-way channel. Unix domain sockets
//! connect processes on one machine through the kernel, with the same API
//! as network sockets: full-duplex, between related or unrelated
//! processes, as a byte stream or as messages, and able to carry open file
//! descriptors and the peer's identity.
//!
//! | type              | boundaries | connection | like              |
//! |-------------------|------------|------------|-------------------|
//! | `SOCK_STREAM`     | none: frame your messages | yes | TCP, a pipe both ways |
//! | `SOCK_SEQPACKET`  | kept       | yes        | a stream of records |
//! | `SOCK_DGRAM`      | kept       | no: each datagram is addressed | UDP, but reliable and ordered |
//!
//! Addresses: a path (a socket file, here in a private 0700 directory), the
//! abstract namespace (Linux: a name with no file), or nothing at all
//! (`socketpair`).
//!
//! ## Run it
//!
//! ```text
//! cargo run -p socket-demo                          # the whole story, seven steps
//! cargo run -p socket-demo -- server --path /tmp/demo.sock --lines   # terminal 1
//! python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.connect("/tmp/demo.sock"); s.sendall(b"hi\n"); print(s.recv(99))'
//! cargo run -p socket-demo -- client --path /tmp/demo.sock --count 10   # against a framed server
//! ```
//!
//! ## What to look for
//!
//! - one `socketpair` doing what took two pipes;
//! - one process serving many clients with `poll`, frames over a stream;
//! - datagram boundaries kept, and a too-long one truncated (`MSG_TRUNC`);
//! - an address with no file; the kernel vouching for the peer (`SO_PEERCRED`);
//! - an open file passed to a process that never opened it (`SCM_RIGHTS`);
//! - what changes over TCP.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `frame`, `payload`,
//! `peer`, `report`.

mod server;

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{
    PathGuard, PrivateDir, StopOnSignal, check_stop, stop_on_signals, unique_name,
};
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, usage};
use common::frame::{self, FrameError};
use common::payload::{self, MIN_SIZE};
use common::peer::{Peer, wait_pid};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    SockaddrIn, UnixAddr, bind, connect, getsockname, listen, recv, recvmsg, send, sendmsg,
    setsockopt, socket, socketpair, sockopt,
};
use nix::unistd::{ForkResult, fork};

use server::{MAX_REQUEST, Protocol, Rules};

const USAGE: &str = "\
socket-demo: Unix domain sockets, the general-purpose IPC

USAGE:
    socket-demo [--clients K] [--count N] [--size BYTES] [--quiet]
        The story: socketpair, a stream server with K client processes served
        with poll, datagrams and seqpackets, the abstract namespace,
        SO_PEERCRED, SCM_RIGHTS, and the same protocol over TCP.
    socket-demo server --path P [--dgram|--seqpacket|--tcp ADDR] [--lines]
                       [--clients K] [--max-clients M] [--allow-uid U]...
        Serve on P until Ctrl-C, or until K clients have come and gone.
    socket-demo client --path P [--dgram|--seqpacket|--tcp ADDR] [--lines]
                       [--count N] [--size BYTES]
        Send N requests (checkable messages, or N lines with --lines) and check
        every reply.

OPTIONS:
    --path P          the server's socket file (with --tcp: not used)
    --dgram           SOCK_DGRAM: datagrams; the client binds a path of its own
    --seqpacket       SOCK_SEQPACKET: a connection that keeps message boundaries
    --tcp ADDR        TCP on ADDR (IPv4:port, e.g. 127.0.0.1:0 for the server)
    --lines           stream only: newline-delimited text; the server replies
                      \"echo: LINE\" so any client (python3, socat, nc -U) works
    --clients K       story: client processes (default 3); server: stop after K
    --max-clients M   server: the most clients at once (default 64)
    --allow-uid U     server: accept only this uid (repeatable); checked with
                      SO_PEERCRED on Unix sockets
    --count N         requests per client (default 5; 1 to 1000000000)
    --size BYTES      bytes per request (default 64; 8 to 1048576)
    --quiet           no line per message or client
    -h, --help        this text

EXIT STATUS: 0 success, 1 runtime error (a server or client that left, a
refused connection, data errors), 2 bad command line, 128+N stopped by
signal N (130 for Ctrl-C, 143 for SIGTERM), after removing the socket file.
";

/// How long a client waits for one reply before calling the server dead.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    error::run("socket-demo", run)
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    SeqPacket,
    Dgram,
    Tcp,
}

#[derive(Debug)]
struct Options {
    path: Option<PathBuf>,
    kind: Kind,
    tcp: Option<SocketAddrV4>,
    lines: bool,
    clients: Option<u64>,
    max_clients: usize,
    allowed_uids: Vec<u32>,
    count: u64,
    size: usize,
    quiet: bool,
}

fn run() -> Result<()> {
    let mut args = Args::from_env(USAGE)?;
    let role = args.role(&["server", "client"])?;
    let mut opts = Options {
        path: None,
        kind: Kind::Stream,
        tcp: None,
        lines: false,
        clients: None,
        max_clients: 64,
        allowed_uids: Vec::new(),
        count: DEFAULT_COUNT,
        size: DEFAULT_SIZE,
        quiet: false,
    };
    let mut given: Vec<String> = Vec::new();
    let mut kinds = 0;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--path" => opts.path = Some(PathBuf::from(args.value("--path")?)),
            "--dgram" => {
                opts.kind = Kind::Dgram;
                kinds += 1;
            }
            "--seqpacket" => {
                opts.kind = Kind::SeqPacket;
                kinds += 1;
            }
            "--tcp" => {
                let text = args.value("--tcp")?;
                let addr: SocketAddrV4 = text.parse().map_err(|_| {
                    usage(format!(
                        "--tcp expects an IPv4 address and port like 127.0.0.1:7000, got '{text}'"
                    ))
                })?;
                opts.tcp = Some(addr);
                opts.kind = Kind::Tcp;
                kinds += 1;
            }
            "--lines" => opts.lines = true,
            "--clients" => opts.clients = Some(args.number("--clients", 1, 64)?),
            "--max-clients" => opts.max_clients = args.number("--max-clients", 1, 1024)?,
            "--allow-uid" => opts
                .allowed_uids
                .push(args.number("--allow-uid", 0, u32::MAX)?),
            "--count" => opts.count = args.number("--count", 1, MAX_COUNT)?,
            "--size" => opts.size = args.number("--size", MIN_SIZE, MAX_REQUEST)?,
            "--quiet" => opts.quiet = true,
            other => return Err(args.unknown(other)),
        }
        given.push(arg);
    }
    let allowed: &[&str] = match role.as_deref() {
        None => &["--clients", "--count", "--size", "--quiet"],
        Some("server") => &[
            "--path",
            "--dgram",
            "--seqpacket",
            "--tcp",
            "--lines",
            "--clients",
            "--max-clients",
            "--allow-uid",
            "--quiet",
        ],
        _ => &[
            "--path",
            "--dgram",
            "--seqpacket",
            "--tcp",
            "--lines",
            "--count",
            "--size",
            "--quiet",
        ],
    };
    if let Some(bad) = given.iter().find(|g| !allowed.contains(&g.as_str())) {
        let whom = role
            .as_deref()
            .map_or("the story".to_string(), |r| format!("the {r}"));
        return Err(usage(format!("{bad} is not an option of {whom}")));
    }
    if kinds > 1 {
        return Err(usage("choose one of --dgram, --seqpacket and --tcp"));
    }
    if opts.lines && opts.kind != Kind::Stream && opts.kind != Kind::Tcp {
        return Err(usage(
            "--lines is for stream sockets (the default, or --tcp)",
        ));
    }
    if role.is_some() && opts.kind != Kind::Tcp && opts.path.is_none() {
        return Err(usage(
            "the server and the client need --path P (or --tcp ADDR)",
        ));
    }
    if opts.kind == Kind::Tcp && given.iter().any(|g| g == "--path") {
        return Err(usage(
            "--path is for Unix sockets; with --tcp the address is ADDR",
        ));
    }
    stop_on_signals()?;
    match role.as_deref() {
        None => story(&opts),
        Some("server") => server_role(&opts),
        _ => client_role(&opts),
    }
}

// ---------------------------------------------------------------------------
// Making sockets
// ---------------------------------------------------------------------------

fn sock_type(kind: Kind) -> SockType {
    match kind {
        Kind::Stream | Kind::Tcp => SockType::Stream,
        Kind::SeqPacket => SockType::SeqPacket,
        Kind::Dgram => SockType::Datagram,
    }
}

fn unix_socket(kind: Kind) -> Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        sock_type(kind),
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket(AF_UNIX)")
}

/// Bind a Unix socket at `path`. A socket file already there is replaced
/// only if nothing answers on it (connect → ECONNREFUSED: a stale file from
/// a dead server); a live server is never hijacked, and anything that is
/// not a socket is never removed.
fn bind_path(fd: &OwnedFd, kind: Kind, path: &Path, say: &Narrator) -> Result<PathGuard> {
    let addr = UnixAddr::new(path)
        .with_context(|| format!("{}: not a usable socket path (too long?)", path.display()))?;
    match bind(fd.as_raw_fd(), &addr) {
        Ok(()) => return Ok(PathGuard::new(path)),
        Err(Errno::EADDRINUSE) => {}
        Err(e) => return Err(e).with_context(|| format!("bind({})", path.display())),
    }
    use std::os::unix::fs::FileTypeExt;
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("lstat({})", path.display()))?;
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket: refusing to replace it; choose another --path",
            path.display()
        );
    }
    let probe = unix_socket(kind)?;
    match connect(probe.as_raw_fd(), &addr) {
        Ok(()) => bail!(
            "a server is listening on {}: refusing to take over its address",
            path.display()
        ),
        Err(Errno::ECONNREFUSED) => {
            say.step(format!(
                "{} is a socket file nobody listens on (connect → ECONNREFUSED): stale, replacing it",
                path.display()
            ));
            std::fs::remove_file(path).with_context(|| format!("unlink({})", path.display()))?;
            bind(fd.as_raw_fd(), &addr).with_context(|| format!("bind({})", path.display()))?;
            Ok(PathGuard::new(path))
        }
        Err(e) => Err(e).with_context(|| format!("connect({}) to test it", path.display())),
    }
}

/// A listening Unix (stream or seqpacket) socket at `path`, non-blocking.
fn listen_unix(kind: Kind, path: &Path, say: &Narrator) -> Result<(OwnedFd, PathGuard)> {
    let fd = socket(
        AddressFamily::Unix,
        sock_type(kind),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("socket(AF_UNIX)")?;
    let guard = bind_path(&fd, kind, path, say)?;
    listen(&fd, Backlog::new(64).expect("valid backlog")).context("listen")?;
    Ok((fd, guard))
}

/// A listening TCP socket on `addr` (port 0: the kernel picks one).
fn listen_tcp(addr: SocketAddrV4) -> Result<(OwnedFd, SocketAddrV4)> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("socket(AF_INET)")?;
    // SO_REUSEADDR: a restarted server can bind while old connections
    // linger in TIME_WAIT.
    setsockopt(&fd, sockopt::ReuseAddr, &true).context("setsockopt(SO_REUSEADDR)")?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).with_context(|| format!("bind({addr})"))?;
    listen(&fd, Backlog::new(64).expect("valid backlog")).context("listen")?;
    let bound: SockaddrIn = getsockname(fd.as_raw_fd()).context("getsockname")?;
    Ok((fd, SocketAddrV4::new(bound.ip(), bound.port())))
}

/// A connected client socket for `opts` (blocking).
fn connect_client(opts: &Options, own_dir: Option<&PrivateDir>) -> Result<OwnedFd> {
    if let Some(addr) = opts.tcp {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("socket(AF_INET)")?;
        // TCP_NODELAY: send small requests at once; Nagle's algorithm would
        // hold them back waiting for more to send.
        setsockopt(&fd, sockopt::TcpNoDelay, &true).context("setsockopt(TCP_NODELAY)")?;
        connect_retrying(fd.as_raw_fd(), &SockaddrIn::from(addr), &addr.to_string())?;
        return Ok(fd);
    }
    let path = opts.path.as_deref().expect("checked by run");
    let fd = unix_socket(opts.kind)?;
    if opts.kind == Kind::Dgram {
        // A datagram client needs an address of its own for the replies.
        let dir = own_dir.context("a datagram client needs its own directory")?;
        let own = UnixAddr::new(&dir.path().join("client.sock")).context("client address")?;
        bind(fd.as_raw_fd(), &own).context("bind(client address)")?;
    }
    let addr = UnixAddr::new(path).context("server address")?;
    connect_retrying(fd.as_raw_fd(), &addr, &path.display().to_string())?;
    Ok(fd)
}

fn connect_retrying(
    fd: RawFd,
    addr: &dyn nix::sys::socket::SockaddrLike,
    what: &str,
) -> Result<()> {
    loop {
        check_stop()?;
        match connect(fd, addr) {
            Ok(()) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(Errno::ENOENT) => bail!("connect({what}): no such socket: is the server running?"),
            Err(Errno::ECONNREFUSED) => {
                bail!("connect({what}): ECONNREFUSED: nobody is listening there")
            }
            Err(e) => return Err(e).with_context(|| format!("connect({what})")),
        }
    }
}

// ---------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------

fn server_role(opts: &Options) -> Result<()> {
    let say = Narrator::new("server", opts.quiet, Stream::Stdout);
    let start = Instant::now();
    let served = match opts.kind {
        Kind::Dgram => {
            let path = opts.path.as_deref().expect("checked by run");
            let fd = unix_socket(Kind::Dgram)?;
            let _guard = bind_path(&fd, Kind::Dgram, path, &say)?;
            say.step(format!(
                "SOCK_DGRAM bound at {}: waiting for datagrams",
                path.display()
            ));
            server::serve_dgram(&fd, opts.clients, &say)?
        }
        Kind::Tcp => {
            let (fd, addr) = listen_tcp(opts.tcp.expect("checked by run"))?;
            say.step(format!(
                "TCP listening on {addr}: anyone who can reach this address may connect, and \
                 there is no SO_PEERCRED to tell who they are"
            ));
            server::serve(&fd, &rules(opts, false), &say)?
        }
        kind => {
            let path = opts.path.as_deref().expect("checked by run");
            let (fd, _guard) = listen_unix(kind, path, &say)?;
            say.step(format!(
                "{} listening at {}{}",
                if kind == Kind::SeqPacket {
                    "SOCK_SEQPACKET"
                } else {
                    "SOCK_STREAM"
                },
                path.display(),
                if opts.lines {
                    ", newline-delimited text"
                } else {
                    ", framed messages"
                }
            ));
            server::serve(&fd, &rules(opts, true), &say)?
        }
    };
    finish_server(&served, start.elapsed(), &say)
}

fn rules(opts: &Options, unix: bool) -> Rules {
    Rules {
        protocol: if opts.lines {
            Protocol::Lines
        } else if opts.kind == Kind::SeqPacket {
            Protocol::Messages
        } else {
            Protocol::Frames
        },
        max_clients: opts.max_clients,
        stop_after: opts.clients,
        allowed_uids: (!opts.allowed_uids.is_empty()).then(|| opts.allowed_uids.clone()),
        unix,
    }
}

fn finish_server(served: &server::Served, elapsed: Duration, say: &Narrator) -> Result<()> {
    say.step(format!(
        "{} client(s) served, {} dropped, {} refused; requests: {}",
        served.clients, served.dropped, served.refused, served.report
    ));
    say.line(Summary {
        mechanism: "socket",
        messages: served.requests,
        bytes: served.report.bytes,
        errors: served.report.errors(),
        elapsed,
    });
    if served.report.errors() > 0 {
        bail!("{} request(s) failed the check", served.report.errors());
    }
    Ok(())
}

fn client_role(opts: &Options) -> Result<()> {
    let say = Narrator::new("client", opts.quiet, Stream::Stdout);
    let dir = if opts.kind == Kind::Dgram {
        Some(PrivateDir::create("socket-demo-client")?)
    } else {
        None
    };
    let fd = connect_client(opts, dir.as_ref())?;
    say.step(format!("connected (pid {})", std::process::id()));
    let start = Instant::now();
    let (messages, bytes) = if opts.lines {
        client_lines(fd, opts.count, &say)?
    } else {
        client_requests(fd, opts.kind, opts.count, opts.size, &say)?
    };
    say.line(Summary {
        mechanism: "socket",
        messages,
        bytes,
        errors: 0,
        elapsed: start.elapsed(),
    });
    Ok(())
}

/// Send `count` checkable requests and check that each reply echoes it.
fn client_requests(
    fd: OwnedFd,
    kind: Kind,
    count: u64,
    size: usize,
    say: &Narrator,
) -> Result<(u64, u64)> {
    let framed = matches!(kind, Kind::Stream | Kind::Tcp);
    let mut stream = StopOnSignal(File::from(fd));
    let mut reply = vec![0u8; size + 1];
    for seq in 0..count {
        let request = payload::make(seq, size);
        if framed {
            frame::write_frame(&mut stream, &request).map_err(|e| server_gone(e, seq))?;
            let got = frame::read_frame(&mut stream, MAX_REQUEST)
                .map_err(|e| server_gone(e, seq))?
                .with_context(|| {
                    format!("the server closed the connection (EOF) after {seq} replies")
                })?;
            if got != request {
                bail!("reply {seq} differs from the request");
            }
        } else {
            // SEQPACKET and DGRAM keep boundaries: one send, one request.
            let fd = stream.0.as_raw_fd();
            send(fd, &request, MsgFlags::MSG_NOSIGNAL)
                .map_err(|e| server_gone(FrameError::Io(e.into()), seq))?;
            let n = recv_within(fd, &mut reply, REPLY_TIMEOUT)?;
            if n == 0 {
                bail!("the server closed the connection (EOF) after {seq} replies");
            }
            if reply[..n] != request[..] {
                bail!("reply {seq} ({n} bytes) differs from the request");
            }
        }
        say.message(format!("request {seq} ({size} bytes): echoed back intact"));
    }
    if kind == Kind::Dgram {
        // No connection to close: an empty datagram says "done".
        send(stream.0.as_raw_fd(), &[], MsgFlags::empty()).context("send(done)")?;
    }
    say.step(format!("{count} requests, every reply checked"));
    Ok((count, count * size as u64))
}

fn server_gone(e: FrameError, seq: u64) -> anyhow::Error {
    match e {
        FrameError::Io(io) if matches!(io.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
            anyhow::anyhow!("the server went away after {seq} replies ({io})")
        }
        other => anyhow::Error::new(other).context(format!("request {seq}")),
    }
}

/// recv with a deadline, so a server that hangs does not hang us.
fn recv_within(fd: RawFd, buf: &mut [u8], timeout: Duration) -> Result<usize> {
    let start = Instant::now();
    loop {
        check_stop()?;
        // SAFETY: borrowing a raw fd that `fd`'s owner keeps open.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let mut fds = [nix::poll::PollFd::new(
            borrowed,
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)) {
            Ok(0) | Err(Errno::EINTR) => {
                if start.elapsed() > timeout {
                    bail!("no reply within {timeout:?}");
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => return Err(e).context("poll"),
        }
        match recv(fd, buf, MsgFlags::empty()) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(Errno::ECONNRESET) => bail!("the server went away (ECONNRESET)"),
            Err(e) => return Err(e).context("recv"),
        }
    }
}

/// `--lines`: send "line N" lines, print each reply line.
fn client_lines(fd: OwnedFd, count: u64, say: &Narrator) -> Result<(u64, u64)> {
    let file = File::from(fd);
    let mut writer = StopOnSignal(file.try_clone().context("dup")?);
    let mut reader = std::io::BufReader::new(StopOnSignal(file));
    let mut bytes = 0;
    for n in 0..count {
        let line = format!("line {n}\n");
        writer.write_all(line.as_bytes()).context("write")?;
        let mut reply = String::new();
        let got = std::io::BufRead::read_line(&mut reader, &mut reply).context("read")?;
        if got == 0 {
            bail!("the server closed the connection after {n} lines");
        }
        say.message(format!(
            "sent {:?}, got {:?}",
            line.trim_end(),
            reply.trim_end()
        ));
        bytes += line.len() as u64;
    }
    Ok((count, bytes))
}

// ---------------------------------------------------------------------------
// The story
// ---------------------------------------------------------------------------

fn story(opts: &Options) -> Result<()> {
    let say = Narrator::new("parent", opts.quiet, Stream::Stdout);
    let start = Instant::now();
    let clients = opts.clients.unwrap_or(3);
    say.line(format!(
        "socket-demo: {clients} clients x {} requests of {} bytes (parent pid {})",
        opts.count,
        opts.size,
        std::process::id()
    ));
    let dir = PrivateDir::create("socket-demo")?;
    say.line("\n== 1. socketpair: one full-duplex channel where pipes needed two ==");
    let mut messages = pair_step(opts, &say)?;
    say.line(format!(
        "\n== 2. A stream server and {clients} client processes, one poll loop ==",
    ));
    messages += server_step(opts, clients, &dir, &say)?;
    say.line("\n== 3. Message boundaries: SOCK_DGRAM and SOCK_SEQPACKET ==");
    boundaries_step(&say)?;
    say.line("\n== 4. The abstract namespace: an address with no file ==");
    abstract_step(&say)?;
    say.line("\n== 5. SO_PEERCRED: the kernel says who is connecting ==");
    peercred_step(&dir, &say)?;
    say.line("\n== 6. SCM_RIGHTS: passing an open file to another process ==");
    rights_step(&dir, &say)?;
    say.line("\n== 7. The same protocol over TCP on 127.0.0.1 ==");
    messages += tcp_step(opts, &say)?;
    drop(dir);
    say.step("removed the private directory and every socket file in it");
    say.line("");
    say.line(Summary {
        mechanism: "socket",
        messages,
        bytes: messages * opts.size as u64,
        errors: 0,
        elapsed: start.elapsed(),
    });
    Ok(())
}

fn client_args(opts: &Options, target: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["client".into()];
    args.extend(target.iter().map(|s| s.to_string()));
    args.extend([
        "--count".into(),
        opts.count.to_string(),
        "--size".into(),
        opts.size.to_string(),
    ]);
    if opts.quiet {
        args.push("--quiet".into());
    }
    args
}

/// Step 1: parent and child talk both ways over one socketpair.
fn pair_step(opts: &Options, say: &Narrator) -> Result<u64> {
    let (mine, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair(AF_UNIX, SOCK_STREAM)")?;
    say.step("socketpair(AF_UNIX, SOCK_STREAM): two connected sockets, each readable and writable");
    // SAFETY: socket-demo is single-threaded: the child may call anything.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop(mine);
            // Echo every frame back on the same socket it came on.
            let mut sock = StopOnSignal(File::from(theirs));
            let code = loop {
                match frame::read_frame(&mut sock, MAX_REQUEST) {
                    Ok(Some(msg)) => {
                        if frame::write_frame(&mut sock, &msg).is_err() {
                            break 1;
                        }
                    }
                    Ok(None) => break 0,
                    Err(_) => break 1,
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs);
    let mut sock = StopOnSignal(File::from(mine));
    for seq in 0..opts.count {
        let msg = payload::make(seq, opts.size);
        frame::write_frame(&mut sock, &msg).context("write(socketpair)")?;
        let back = frame::read_frame(&mut sock, MAX_REQUEST)
            .context("read(socketpair)")?
            .context("the child closed the socket")?;
        if back != msg {
            bail!("echo {seq} differs");
        }
        say.message(format!(
            "sent message {seq} and read it back on the same fd"
        ));
    }
    drop(sock);
    let exit = wait_pid(child, Duration::from_secs(30))?;
    say.step(format!(
        "{} messages out and back through one fd per process; child pid {child} {exit} at EOF",
        opts.count
    ));
    if !exit.success() {
        bail!("the echo child {exit}");
    }
    Ok(opts.count)
}

/// Step 2: a path-bound stream server, K client processes, poll.
fn server_step(opts: &Options, clients: u64, dir: &PrivateDir, say: &Narrator) -> Result<u64> {
    let path = dir.path().join("server.sock");
    let (listener, _guard) = listen_unix(Kind::Stream, &path, say)?;
    say.step(format!(
        "socket + bind({}) + listen: in a private 0700 directory, so only we can connect",
        path.display()
    ));
    let path_arg = path.to_str().context("path is not UTF-8")?;
    let mut peers = Vec::new();
    for _ in 0..clients {
        peers.push(Peer::spawn_self(&client_args(opts, &["--path", path_arg]))?);
    }
    let pids: Vec<String> = peers.iter().map(|p| p.pid().to_string()).collect();
    say.step(format!(
        "started clients {}; poll() watches the listener and every connection",
        pids.join(", ")
    ));
    let rules = Rules {
        protocol: Protocol::Frames,
        max_clients: 64,
        stop_after: Some(clients),
        allowed_uids: None,
        unix: true,
    };
    let served = server::serve(&listener, &rules, &say.with_role("server"))?;
    for mut peer in peers {
        let exit = peer.wait(Some(Duration::from_secs(60)))?;
        if !exit.success() {
            bail!("client pid {} {exit}", peer.pid());
        }
    }
    say.step(format!(
        "{} clients served by one process; requests checked: {}",
        served.clients, served.report
    ));
    if served.report.errors() > 0 || served.clients != clients {
        bail!(
            "the server step failed: {} clients, {}",
            served.clients,
            served.report
        );
    }
    Ok(served.report.received)
}

/// Step 3: boundaries kept by DGRAM and SEQPACKET, lost by STREAM; MSG_TRUNC.
fn boundaries_step(say: &Narrator) -> Result<()> {
    let sizes = [10usize, 200, 3];
    for (kind, name) in [
        (SockType::Stream, "SOCK_STREAM"),
        (SockType::Datagram, "SOCK_DGRAM"),
        (SockType::SeqPacket, "SOCK_SEQPACKET"),
    ] {
        let (a, b) = socketpair(AddressFamily::Unix, kind, None, SockFlag::SOCK_CLOEXEC)
            .context("socketpair")?;
        for size in sizes {
            send(a.as_raw_fd(), &vec![b'x'; size], MsgFlags::empty()).context("send")?;
        }
        drop(a); // the reader's last recv returns 0 on connection types
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        for _ in 0..sizes.len() {
            match recv(b.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(Errno::EAGAIN) => break,
                Ok(n) => got.push(n),
                Err(e) => return Err(e).context("recv"),
            }
        }
        say.step(format!(
            "{name}: sent {sizes:?} bytes, recv() calls returned {got:?}{}",
            if got == sizes {
                ": boundaries kept"
            } else {
                ": one stream of bytes, boundaries lost"
            }
        ));
    }
    // A datagram longer than the receive buffer: the rest is discarded, and
    // recvmsg reports it with MSG_TRUNC in msg_flags.
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair")?;
    send(a.as_raw_fd(), &[b'y'; 100], MsgFlags::empty()).context("send")?;
    let mut small = [0u8; 16];
    let mut iov = [IoSliceMut::new(&mut small)];
    let msg = recvmsg::<()>(b.as_raw_fd(), &mut iov, None, MsgFlags::empty()).context("recvmsg")?;
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
    say.step(format!(
        "a 100-byte datagram into a 16-byte buffer: recvmsg returned {} bytes, MSG_TRUNC {}: the other 84 are gone",
        msg.bytes,
        if truncated { "set" } else { "NOT set" }
    ));
    if !truncated || msg.bytes != 16 {
        bail!("expected a truncated datagram");
    }
    send(a.as_raw_fd(), &[b'z'; 100], MsgFlags::empty()).context("send")?;
    let n = recv(b.as_raw_fd(), &mut small, MsgFlags::MSG_TRUNC).context("recv(MSG_TRUNC)")?;
    say.step(format!(
        "recv(MSG_TRUNC) instead returns the datagram's real length: {n}"
    ));
    Ok(())
}

/// Step 4: bind to an abstract name: no file, gone with the last socket.
fn abstract_step(say: &Narrator) -> Result<()> {
    let name = unique_name("socket-demo");
    let addr = UnixAddr::new_abstract(name.as_bytes()).context("abstract address")?;
    let listener = unix_socket(Kind::Stream)?;
    bind(listener.as_raw_fd(), &addr).context("bind(abstract)")?;
    listen(&listener, Backlog::new(4).expect("valid backlog")).context("listen")?;
    let listed = std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .any(|l| l.ends_with(&format!("@{name}")));
    say.step(format!(
        "bind(\"\\0{name}\"): no file anywhere; /proc/net/unix lists it as @{name}: {}",
        if listed { "yes" } else { "not found" }
    ));
    let client = unix_socket(Kind::Stream)?;
    connect(client.as_raw_fd(), &addr).context("connect(abstract)")?;
    let server = nix::sys::socket::accept(listener.as_fd()).context("accept")?;
    send(client.as_raw_fd(), b"hello", MsgFlags::empty()).context("send")?;
    let mut buf = [0u8; 16];
    let n = recv(server.as_raw_fd(), &mut buf, MsgFlags::empty()).context("recv")?;
    say.step(format!(
        "connect by the same name, accept, recv → {:?}; nothing to unlink: the name goes with the last socket",
        String::from_utf8_lossy(&buf[..n])
    ));
    Ok(())
}

/// Step 5: a server that accepts only one uid, tried by a real client.
fn peercred_step(dir: &PrivateDir, say: &Narrator) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let path = dir.path().join("peercred.sock");
    let (listener, _guard) = listen_unix(Kind::Stream, &path, say)?;
    let path_arg = path.to_str().context("path is not UTF-8")?;
    for allowed in [me.wrapping_add(1), me] {
        let mut peer =
            Peer::spawn_self(&["client", "--path", path_arg, "--count", "1", "--quiet"])?;
        let rules = Rules {
            protocol: Protocol::Frames,
            max_clients: 4,
            stop_after: Some(1),
            allowed_uids: Some(vec![allowed]),
            unix: true,
        };
        let server_say = Narrator::new("server", false, Stream::Stdout);
        let served = server::serve(&listener, &rules, &server_say)?;
        let exit = peer.wait(Some(Duration::from_secs(60)))?;
        let outcome = if served.refused == 1 {
            "refused"
        } else {
            "served"
        };
        say.step(format!(
            "only uid {allowed} allowed; our client (pid {}, uid {me}) was {outcome}, and {exit}",
            peer.pid()
        ));
        let expected_refusal = allowed != me;
        if expected_refusal != (served.refused == 1) || expected_refusal == exit.success() {
            bail!(
                "SO_PEERCRED check did not behave: refused {}, client {exit}",
                served.refused
            );
        }
    }
    Ok(())
}

/// Step 6: open a file, send the descriptor, the child reads it.
fn rights_step(dir: &PrivateDir, say: &Narrator) -> Result<()> {
    let (mine, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair")?;
    // SAFETY: single-threaded, as above.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop(mine);
            std::process::exit(receive_fd(&theirs, &say.with_role("child")).map_or(1, |()| 0));
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs);
    // Opened after the fork: the child cannot have inherited it.
    let path = dir.path().join("secret.txt");
    std::fs::write(&path, "a file the child never opened\n").context("write the file")?;
    let file = File::open(&path).context("open the file")?;
    let fds = [file.as_raw_fd()];
    let iov = [IoSlice::new(b"F")]; // at least one byte of data must go along
    sendmsg::<()>(
        mine.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("sendmsg(SCM_RIGHTS)")?;
    say.step(format!(
        "opened {} as fd {} after fork, sent it with sendmsg(SCM_RIGHTS), then closed ours",
        path.display(),
        file.as_raw_fd()
    ));
    drop(file);
    let exit = wait_pid(child, Duration::from_secs(30))?;
    if !exit.success() {
        bail!("the child could not read the passed file: it {exit}");
    }
    Ok(())
}

fn receive_fd(sock: &OwnedFd, say: &Narrator) -> Result<()> {
    let mut data = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("recvmsg")?;
    let mut received = None;
    for cmsg in msg.cmsgs().context("control messages")? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            received = fds.first().copied();
        }
    }
    let fd = received.context("no descriptor arrived")?;
    // SAFETY: the kernel just created this descriptor for us; we own it.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let mut text = String::new();
    file.read_to_string(&mut text).context("read(passed fd)")?;
    say.step(format!(
        "recvmsg → a new fd {fd} for the same open file; read → {:?}",
        text.trim_end()
    ));
    Ok(())
}

/// Step 7: the framed protocol over TCP on loopback.
fn tcp_step(opts: &Options, say: &Narrator) -> Result<u64> {
    let (listener, addr) = listen_tcp(SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0))?;
    say.step(format!(
        "socket(AF_INET) + bind(127.0.0.1:0) + listen: the kernel chose port {}; the address is \
         an IP and a port, not a file",
        addr.port()
    ));
    let addr_arg = addr.to_string();
    let mut peer = Peer::spawn_self(&client_args(opts, &["--tcp", &addr_arg]))?;
    let rules = Rules {
        protocol: Protocol::Frames,
        max_clients: 4,
        stop_after: Some(1),
        allowed_uids: None,
        unix: false,
    };
    let served = server::serve(&listener, &rules, &say.with_role("server"))?;
    let exit = peer.wait(Some(Duration::from_secs(60)))?;
    if !exit.success() || served.report.errors() > 0 {
        bail!("the TCP client {exit}; {}", served.report);
    }
    say.step(format!(
        "{} requests over TCP, same frames, same checks. What changed: any machine that can \
         reach the address may connect, so SO_PEERCRED and the 0700 directory no longer \
         protect us (authenticate instead); TCP_NODELAY keeps small requests from waiting \
         (Nagle); and every byte now goes through the TCP/IP stack",
        served.report.received
    ));
    Ok(served.report.received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_longer_than_sun_path_are_refused() {
        let long = format!("/tmp/{}", "x".repeat(200));
        assert!(UnixAddr::new(long.as_str()).is_err());
    }
}
