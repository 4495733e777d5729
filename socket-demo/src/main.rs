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
//! And in `src/server.rs`, the defences a real server needs: back-pressure
//! (a client that never reads stalls only itself), the spare-fd trick for
//! EMFILE, non-blocking datagram replies, and a datagram server that checks
//! the sender's credentials (`SCM_CREDENTIALS`) before it writes to the
//! path the sender named. In this file: socket files made 0600 whatever the
//! umask (`bind_private`), stale files removed only if they are ours, and a
//! client that gives up after `--timeout` (`SO_RCVTIMEO`/`SO_SNDTIMEO`).
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
use nix::sys::stat::{Mode, umask};
use nix::sys::time::TimeVal;
use nix::unistd::{ForkResult, fork, geteuid};

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
                       [--timeout SECS]
        Serve on P until Ctrl-C, or until K clients have come and gone. The
        socket file is created 0600 whatever the umask: only your user (and
        root) can connect.
    socket-demo client --path P [--dgram|--seqpacket|--tcp ADDR] [--lines]
                       [--count N] [--size BYTES] [--timeout SECS]
        Send N requests (checkable messages, or N lines with --lines) and check
        every reply.

OPTIONS:
    --path P          the server's socket file (with --tcp: not used)
    --dgram           SOCK_DGRAM: datagrams; the client binds a path of its own,
                      and the server replies only if that path is a socket file
                      (not a symlink) owned by the sender (SCM_CREDENTIALS)
    --seqpacket       SOCK_SEQPACKET: a connection that keeps message boundaries
    --tcp ADDR        TCP on ADDR (IPv4:port, e.g. 127.0.0.1:0 for the server)
    --lines           stream only: newline-delimited text; the server replies
                      \"echo: LINE\" so any client (python3, socat, nc -U) works
    --clients K       story: client processes (default 3); server: stop after K
    --max-clients M   server: the most clients at once (default 64, or less if
                      RLIMIT_NOFILE is low; at most RLIMIT_NOFILE - 6: one fd
                      per client plus stdio, the listener, a spare and one to
                      refuse a connection with)
    --allow-uid U     server: accept only this uid (repeatable); checked with
                      SO_PEERCRED on Unix sockets
    --count N         requests per client (default 5; 1 to 1000000000)
    --size BYTES      bytes per request (default 64; 8 to 1048576). With --dgram
                      and --seqpacket a message goes whole or not at all, and
                      must fit the send buffer: the client raises SO_SNDBUF as
                      far as net.core.wmem_max allows and refuses a larger size
    --timeout SECS    idle timeout (default 60; 1 to 86400). Client: the longest
                      it waits for the server to make progress (connect to a
                      full backlog, a reply, the rest of a frame) before it
                      gives up with exit 1. Server: it drops a client that
                      stalls that long in the middle of a request or with
                      replies unread. A --dgram client learns that its server
                      has gone only this way: there is no connection to break.
                      Unbounded on purpose: a server waits for clients, and a
                      connected client may stay idle between requests, for as
                      long as it likes (Ctrl-C stops it)
    --no-summary      client: no summary line (the story passes it to its
                      client processes, so that it ends with one summary)
    --quiet           no line per message or client
    -h, --help        this text

EXIT STATUS: 0 success, 1 runtime error (a server or client that left, a
refused connection, data errors), 2 bad command line, 128+N stopped by
signal N (130 for Ctrl-C, 143 for SIGTERM), after removing the socket file.
";

/// Default `--timeout`: how long a peer may make no progress.
const DEFAULT_TIMEOUT: u64 = 60;

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
    max_clients: Option<usize>,
    allowed_uids: Vec<u32>,
    count: u64,
    size: usize,
    timeout: Duration,
    summary: bool,
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
        max_clients: None,
        allowed_uids: Vec::new(),
        count: DEFAULT_COUNT,
        size: DEFAULT_SIZE,
        timeout: Duration::from_secs(DEFAULT_TIMEOUT),
        summary: true,
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
            "--max-clients" => opts.max_clients = Some(args.number("--max-clients", 1, 1024)?),
            "--allow-uid" => opts
                .allowed_uids
                .push(args.number("--allow-uid", 0, u32::MAX)?),
            "--count" => opts.count = args.number("--count", 1, MAX_COUNT)?,
            "--size" => opts.size = args.number("--size", MIN_SIZE, MAX_REQUEST)?,
            "--timeout" => {
                opts.timeout = Duration::from_secs(args.number("--timeout", 1, 86_400)?)
            }
            "--no-summary" => opts.summary = false,
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
            "--timeout",
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
            "--timeout",
            "--no-summary",
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

/// bind() with the umask set to 0177 for the call: the socket file is
/// created 0600 (only our user may connect or send) whatever the umask.
///
/// bind() has no mode argument: it creates the file 0777 & ~umask, so under
/// `umask 000` anyone could connect. The other ways fall short: fchmod() on
/// a socket fd changes the socket's inode in sockfs, not the file; chmod()
/// of the path after bind() leaves a window in which anyone may connect (a
/// datagram socket takes datagrams as soon as it is bound) and follows a
/// symlink swapped in meanwhile; a 0700 directory works (the story uses
/// one), but `--path` names the file itself. umask is per process, which is
/// safe here: socket-demo has one thread.
fn bind_private(fd: &OwnedFd, addr: &UnixAddr) -> nix::Result<()> {
    let old = umask(Mode::from_bits_truncate(0o177));
    let result = bind(fd.as_raw_fd(), addr);
    umask(old);
    result?;
    // Trust, but check: the narration says 0600, so it must be.
    if let Some(path) = addr.path() {
        let mode = nix::sys::stat::lstat(path)?.st_mode & 0o777;
        if mode != 0o600 {
            return Err(Errno::EPERM);
        }
    }
    Ok(())
}

/// Bind a Unix socket at `path`. A socket file already there is replaced
/// only if it is ours (owner == euid, also as root) and nothing answers on
/// it (connect → ECONNREFUSED: a stale file from a dead server); a live
/// server is never hijacked, and anything that is not a socket, or is
/// another user's, is never removed.
fn bind_path(fd: &OwnedFd, kind: Kind, path: &Path, say: &Narrator) -> Result<PathGuard> {
    let addr = UnixAddr::new(path)
        .with_context(|| format!("{}: not a usable socket path (too long?)", path.display()))?;
    match bind_private(fd, &addr) {
        Ok(()) => return Ok(PathGuard::new(path)),
        Err(Errno::EADDRINUSE) => {}
        Err(e) => return Err(e).with_context(|| format!("bind({})", path.display())),
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("lstat({})", path.display()))?;
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket: refusing to replace it; choose another --path",
            path.display()
        );
    }
    let me = geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "{} is a socket file of {}, not ours (uid {me}): refusing to remove it; choose              another --path, or let its owner remove it",
            path.display(),
            user_name(meta.uid())
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
            bind_private(fd, &addr).with_context(|| format!("bind({})", path.display()))?;
            Ok(PathGuard::new(path))
        }
        Err(e) => Err(e).with_context(|| format!("connect({}) to test it", path.display())),
    }
}

/// "uid 65534 (nobody)", for messages about another user's object.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
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

/// A client socket for `opts`, not yet connected, with its timeouts set.
///
/// SO_RCVTIMEO and SO_SNDTIMEO bound every blocking call on it: a recv or
/// send that makes no progress for `--timeout` fails with EAGAIN, and so
/// does a connect to a server whose backlog stays full. That is an idle
/// timeout: each call that moves a byte starts the clock again.
fn client_socket(opts: &Options, own_dir: Option<&PrivateDir>) -> Result<OwnedFd> {
    let fd = if opts.tcp.is_some() {
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
        fd
    } else {
        unix_socket(opts.kind)?
    };
    let timeout = TimeVal::new(opts.timeout.as_secs() as _, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).context("setsockopt(SO_RCVTIMEO)")?;
    setsockopt(&fd, sockopt::SendTimeout, &timeout).context("setsockopt(SO_SNDTIMEO)")?;
    if opts.kind == Kind::Dgram {
        // A datagram client needs an address of its own for the replies;
        // it lives in a private 0700 directory, so nobody can swap it.
        let dir = own_dir.context("a datagram client needs its own directory")?;
        let own = UnixAddr::new(&dir.path().join("client.sock")).context("client address")?;
        bind_private(&fd, &own).context("bind(client address)")?;
    }
    Ok(fd)
}

/// Connect the client socket `fd` to the server `opts` names.
fn connect_client(fd: &OwnedFd, opts: &Options) -> Result<()> {
    if let Some(addr) = opts.tcp {
        return connect_retrying(
            fd.as_raw_fd(),
            &SockaddrIn::from(addr),
            &addr.to_string(),
            opts.timeout,
        );
    }
    let path = opts.path.as_deref().expect("checked by run");
    let addr = UnixAddr::new(path).context("server address")?;
    connect_retrying(
        fd.as_raw_fd(),
        &addr,
        &path.display().to_string(),
        opts.timeout,
    )
}

fn connect_retrying(
    fd: RawFd,
    addr: &dyn nix::sys::socket::SockaddrLike,
    what: &str,
    timeout: Duration,
) -> Result<()> {
    loop {
        check_stop()?;
        match connect(fd, addr) {
            Ok(()) => return Ok(()),
            Err(Errno::EINTR) => continue,
            // SO_SNDTIMEO ran out: a Unix connect waits while the server's
            // backlog is full (EAGAIN), a TCP one for the handshake
            // (EINPROGRESS).
            Err(Errno::EAGAIN | Errno::EINPROGRESS) => bail!(
                "connect({what}): the server did not accept within {} s (--timeout): its \
                 backlog is full and it is not accepting",
                timeout.as_secs()
            ),
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
            server::pass_credentials(&fd)?;
            let _guard = bind_path(&fd, Kind::Dgram, path, &say)?;
            let largest = server::max_message(&fd)?;
            say.step(format!(
                "SOCK_DGRAM bound at {} (mode 0600, whatever the umask): waiting for \
                 datagrams; replies of up to {largest} bytes fit our send buffer",
                path.display()
            ));
            server::serve_dgram(&fd, opts.clients, &say)?
        }
        Kind::Tcp => {
            let rules = rules(opts, false, &say)?;
            let (fd, addr) = listen_tcp(opts.tcp.expect("checked by run"))?;
            say.step(format!(
                "TCP listening on {addr}: {}, and there is no SO_PEERCRED to tell who they are",
                if addr.ip().is_loopback() {
                    "any process of any user on this host (in this network namespace) may \
                     connect; nothing from outside can reach a loopback address"
                } else {
                    "any host that can reach this address and port may connect"
                }
            ));
            server::serve(&fd, &rules, &say)?
        }
        kind => {
            let rules = rules(opts, true, &say)?;
            let path = opts.path.as_deref().expect("checked by run");
            let (fd, _guard) = listen_unix(kind, path, &say)?;
            say.step(format!(
                "{} listening at {} (mode 0600, whatever the umask){}",
                if kind == Kind::SeqPacket {
                    "SOCK_SEQPACKET"
                } else {
                    "SOCK_STREAM"
                },
                path.display(),
                if opts.lines {
                    ": newline-delimited text"
                } else if kind == Kind::SeqPacket {
                    ": one message per request; the socket keeps message boundaries itself, \
                     so no framing"
                } else {
                    ": length-prefixed frames, because a stream has no message boundaries"
                }
            ));
            server::serve(&fd, &rules, &say)?
        }
    };
    finish_server(&served, start.elapsed(), &say)
}

/// The soft RLIMIT_NOFILE: the most descriptors this process may hold.
fn fd_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    Errno::result(rc).context("getrlimit(RLIMIT_NOFILE)")?;
    Ok(limit.rlim_cur)
}

fn rules(opts: &Options, unix: bool, say: &Narrator) -> Result<Rules> {
    // Each client holds one descriptor: more clients than RLIMIT_NOFILE
    // allows would end in accept4 → EMFILE. Refuse such a --max-clients;
    // shrink the default to fit.
    let limit = fd_limit()?;
    let room = limit.saturating_sub(server::FDS_BESIDES_CLIENTS as u64) as usize;
    let max_clients = match opts.max_clients {
        Some(m) if m > room => {
            return Err(usage(format!(
                "--max-clients {m} needs {} file descriptors (one per client, plus {} for stdio, \
                 the listener, a spare and one to refuse with), but RLIMIT_NOFILE is {limit}: \
                 use --max-clients {room} or less, or raise the limit (ulimit -n)",
                m + server::FDS_BESIDES_CLIENTS,
                server::FDS_BESIDES_CLIENTS
            )));
        }
        Some(m) => m,
        None if room < 64 => {
            if room == 0 {
                bail!("RLIMIT_NOFILE is {limit}: too low to serve any client (ulimit -n)");
            }
            say.step(format!(
                "RLIMIT_NOFILE is {limit}: at most {room} clients at once instead of 64"
            ));
            room
        }
        None => 64,
    };
    Ok(Rules {
        protocol: if opts.lines {
            Protocol::Lines
        } else if opts.kind == Kind::SeqPacket {
            Protocol::Messages
        } else {
            Protocol::Frames
        },
        max_clients,
        stop_after: opts.clients,
        allowed_uids: (!opts.allowed_uids.is_empty()).then(|| opts.allowed_uids.clone()),
        unix,
        idle_timeout: opts.timeout,
    })
}

fn finish_server(served: &server::Served, elapsed: Duration, say: &Narrator) -> Result<()> {
    if let Some(signal) = served.stopped {
        say.step(format!("stopped by {signal}"));
    }
    say.step(format!(
        "{} client(s) served, {} dropped, {} refused; {} repl(ies) dropped; requests: {}",
        served.clients, served.dropped, served.refused, served.replies_dropped, served.report
    ));
    say.line(Summary {
        mechanism: "socket",
        messages: served.requests,
        bytes: served.report.bytes,
        errors: served.report.errors(),
        elapsed,
    });
    served.check_stopped()?;
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
    let fd = client_socket(opts, dir.as_ref())?;
    if matches!(opts.kind, Kind::Dgram | Kind::SeqPacket) {
        check_message_size(&fd, opts)?;
    }
    connect_client(&fd, opts)?;
    say.step(format!("connected (pid {})", std::process::id()));
    let start = Instant::now();
    let (messages, bytes) = if opts.lines {
        client_lines(fd, opts, &say)?
    } else {
        client_requests(fd, opts, &say)?
    };
    // Inside the story the client's figures stay narration (the line
    // above): the story ends with the one summary line.
    if opts.summary {
        say.line(Summary {
            mechanism: "socket",
            messages,
            bytes,
            errors: 0,
            elapsed: start.elapsed(),
        });
    }
    Ok(())
}

/// A datagram or SEQPACKET message goes whole or not at all, and must fit
/// the send buffer: refuse a `--size` the kernel would refuse (EMSGSIZE).
fn check_message_size(fd: &OwnedFd, opts: &Options) -> Result<()> {
    let largest = server::max_message(fd)?;
    if opts.size <= largest {
        return Ok(());
    }
    let wmem_max = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .map(|t| t.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    Err(usage(format!(
        "--size {} is larger than the largest {} this socket can send, {largest} bytes (its \
         SO_SNDBUF minus 32; SO_SNDBUF is capped by net.core.wmem_max = {wmem_max}): use \
         --size {largest} or less, or raise net.core.wmem_max (sysctl)",
        opts.size,
        if opts.kind == Kind::Dgram {
            "datagram"
        } else {
            "SEQPACKET message"
        }
    )))
}

/// The error for a call that made no progress within `--timeout`.
fn timed_out(opts: &Options, what: &str, seq: u64) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: the server made no progress for {} s (--timeout) after {seq} replies: giving up",
        opts.timeout.as_secs()
    )
}

/// Send `count` checkable requests and check that each reply echoes it.
fn client_requests(fd: OwnedFd, opts: &Options, say: &Narrator) -> Result<(u64, u64)> {
    let (count, size) = (opts.count, opts.size);
    let framed = matches!(opts.kind, Kind::Stream | Kind::Tcp);
    let mut stream = StopOnSignal(File::from(fd));
    let mut reply = vec![0u8; size + 1];
    for seq in 0..count {
        let request = payload::make(seq, size);
        if framed {
            frame::write_frame(&mut stream, &request)
                .map_err(|e| server_gone(e, opts, "write", seq))?;
            let got = frame::read_frame(&mut stream, MAX_REQUEST)
                .map_err(|e| server_gone(e, opts, "read", seq))?
                .with_context(|| {
                    format!("the server closed the connection (EOF) after {seq} replies")
                })?;
            if got != request {
                bail!("reply {seq} differs from the request");
            }
        } else {
            // SEQPACKET and DGRAM keep boundaries: one send, one request.
            let fd = stream.0.as_raw_fd();
            loop {
                check_stop()?;
                match send(fd, &request, MsgFlags::MSG_NOSIGNAL) {
                    Ok(_) => break,
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => return Err(timed_out(opts, "send", seq)),
                    Err(e) => return Err(server_gone(FrameError::Io(e.into()), opts, "send", seq)),
                }
            }
            let n = recv_reply(fd, &mut reply, opts, seq)?;
            if n == 0 {
                bail!("the server closed the connection (EOF) after {seq} replies");
            }
            if reply[..n] != request[..] {
                bail!("reply {seq} ({n} bytes) differs from the request");
            }
        }
        say.message(format!("request {seq} ({size} bytes): echoed back intact"));
    }
    if opts.kind == Kind::Dgram {
        // No connection to close: an empty datagram says "done".
        send(stream.0.as_raw_fd(), &[], MsgFlags::empty()).context("send(done)")?;
    }
    say.step(format!("{count} requests, every reply checked"));
    Ok((count, count * size as u64))
}

fn server_gone(e: FrameError, opts: &Options, what: &str, seq: u64) -> anyhow::Error {
    match e {
        FrameError::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
            timed_out(opts, what, seq)
        }
        // ECONNREFUSED: a datagram server's socket closed under us.
        FrameError::Io(io)
            if matches!(
                io.raw_os_error(),
                Some(libc::EPIPE | libc::ECONNRESET | libc::ECONNREFUSED)
            ) =>
        {
            anyhow::anyhow!("the server went away after {seq} replies ({io})")
        }
        other => anyhow::Error::new(other).context(format!("request {seq}")),
    }
}

/// One reply message, whole; SO_RCVTIMEO bounds the wait.
fn recv_reply(fd: RawFd, buf: &mut [u8], opts: &Options, seq: u64) -> Result<usize> {
    loop {
        check_stop()?;
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(fd, &mut iov, None, MsgFlags::empty()) {
            // MSG_TRUNC: the reply was longer than our buffer (which is one
            // byte longer than the request): not an echo.
            Ok(msg) if msg.flags.contains(MsgFlags::MSG_TRUNC) => {
                bail!("reply {seq} is longer than the request (MSG_TRUNC)")
            }
            Ok(msg) => return Ok(msg.bytes),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Err(timed_out(opts, "recv", seq)),
            Err(Errno::ECONNRESET) => bail!("the server went away (ECONNRESET)"),
            Err(e) => return Err(e).context("recv"),
        }
    }
}

/// `--lines`: send "line N" lines, print each reply line.
fn client_lines(fd: OwnedFd, opts: &Options, say: &Narrator) -> Result<(u64, u64)> {
    let file = File::from(fd);
    let mut writer = StopOnSignal(file.try_clone().context("dup")?);
    let mut reader = std::io::BufReader::new(StopOnSignal(file));
    let mut bytes = 0;
    let stalled = |e: std::io::Error, what: &str, n: u64| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            timed_out(opts, what, n)
        } else {
            anyhow::Error::new(e).context(what.to_string())
        }
    };
    for n in 0..opts.count {
        let line = format!("line {n}\n");
        writer
            .write_all(line.as_bytes())
            .map_err(|e| stalled(e, "write", n))?;
        let mut reply = String::new();
        let got = std::io::BufRead::read_line(&mut reader, &mut reply)
            .map_err(|e| stalled(e, "read", n))?;
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
    say.step(format!("{} lines, a reply to each", opts.count));
    Ok((opts.count, bytes))
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
        // The story prints the one summary line; its clients narrate.
        "--no-summary".into(),
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
        idle_timeout: Duration::from_secs(DEFAULT_TIMEOUT),
    };
    let served = server::serve(&listener, &rules, &say.with_role("server"))?;
    served.check_stopped()?;
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
        let mut peer = Peer::spawn_self(&[
            "client",
            "--path",
            path_arg,
            "--count",
            "1",
            "--quiet",
            "--no-summary",
        ])?;
        let rules = Rules {
            protocol: Protocol::Frames,
            max_clients: 4,
            stop_after: Some(1),
            allowed_uids: Some(vec![allowed]),
            unix: true,
            idle_timeout: Duration::from_secs(DEFAULT_TIMEOUT),
        };
        let server_say = Narrator::new("server", false, Stream::Stdout);
        let served = server::serve(&listener, &rules, &server_say)?;
        served.check_stopped()?;
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
    // MSG_CTRUNC: the control buffer was too small and descriptors were
    // dropped (the kernel closes them): never assume they all arrived.
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        bail!("the control message was truncated (MSG_CTRUNC): descriptors were lost");
    }
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
        idle_timeout: Duration::from_secs(DEFAULT_TIMEOUT),
    };
    let served = server::serve(&listener, &rules, &say.with_role("server"))?;
    served.check_stopped()?;
    let exit = peer.wait(Some(Duration::from_secs(60)))?;
    if !exit.success() || served.report.errors() > 0 {
        bail!("the TCP client {exit}; {}", served.report);
    }
    say.step(format!(
        "{} requests over TCP, same frames, same checks. What changed: any process of any \
         user on this host (in this network namespace) may connect to 127.0.0.1, and no \
         file mode or 0700 directory guards a port, nor does SO_PEERCRED say who it is \
         (authenticate instead); nothing from outside the host can reach a loopback \
         address, but bind 0.0.0.0 and any machine that can reach it may; TCP_NODELAY \
         keeps small requests from waiting (Nagle); and every byte now goes through the \
         TCP/IP stack",
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
