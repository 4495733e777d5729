//! The mechanism: Unix domain sockets, readable top to bottom.
//!
//! 1. Making sockets: `socket`, `bind` (a 0600 file whatever the umask),
//!    `listen`, and TCP's `bind` to an address and port for comparison.
//! 2. The server role: one process, many clients, no threads. `poll` says
//!    which sockets are ready; each is read or written without blocking,
//!    and each client has its own input and output buffers. 2b: the same
//!    server with `epoll`, edge-triggered: every wake-up reads until EAGAIN.
//! 3. The datagram server: no connections; each datagram names its sender,
//!    and the kernel attaches the sender's credentials (`SCM_CREDENTIALS`).
//! 4. The client role: `connect`, then requests and checked replies.
//! 5. Passing an open file: `sendmsg`/`recvmsg` with `SCM_RIGHTS`.
//!
//! Stream sockets (Unix or TCP) carry frames (`common::frame`), because a
//! stream has no message boundaries; the bytes of a frame may arrive over
//! several reads, so each client has an input buffer that collects them
//! (`frame::split_frame`). SEQPACKET keeps boundaries itself: one recv, one
//! request, no framing. In `--lines` mode a stream server speaks
//! newline-delimited text instead, so any client (Python, socat, nc) can
//! talk to it.
//!
//! Back-pressure: a reply the kernel cannot take now waits in that client's
//! output queue, and while the queue holds [`OUTPUT_HIGH`] bytes or more the
//! server stops reading that client's requests (POLLIN off, POLLOUT on). A
//! client that sends and never reads therefore stalls only itself: its
//! requests wait in *its* socket buffer, the server's memory stays bounded,
//! and every other client is served. Nothing in the loop blocks or sleeps.
//!
//! Checks that are not the mechanism (stale socket files, descriptor
//! limits, reply paths a stranger names, error wording) are in `checks.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Write};
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{PathGuard, PrivateDir, StopOnSignal, check_stop, stop_requested};
use common::error::Interrupted;
use common::frame::{self, FrameError};
use common::payload::{self, CheckReport, Checker, Verdict};
use common::report::Narrator;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    SockaddrIn, SockaddrLike, UnixAddr, UnixCredentials, accept4, bind, connect, getsockname,
    getsockopt, listen, recv, recvmsg, send, sendmsg, sendto, setsockopt, socket, socketpair,
    sockopt,
};
use nix::sys::stat::{Mode, umask};
use nix::sys::time::TimeVal;

use crate::{Options, checks};

// ---------------------------------------------------------------------------
// Kinds of socket, limits, and the server's bookkeeping
// ---------------------------------------------------------------------------

/// The socket types this demo speaks; the command line picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `SOCK_STREAM` on a Unix socket: bytes, framed by us.
    Stream,
    /// `SOCK_SEQPACKET`: a connection that keeps message boundaries.
    SeqPacket,
    /// `SOCK_DGRAM`: no connection, each datagram addressed.
    Dgram,
    /// `SOCK_STREAM` over TCP on an IPv4 address, for comparison.
    Tcp,
}

/// Largest request a server accepts: a peer cannot make it buffer more.
pub const MAX_REQUEST: usize = 1024 * 1024;
/// Longest line in `--lines` mode.
const MAX_LINE: usize = 64 * 1024;
/// Bytes a stream server reads from one client per turn: a turn is short,
/// so one busy client cannot starve the others.
const CHUNK: usize = 64 * 1024;
/// Stop reading a client's requests while this many bytes of its replies
/// wait to be sent. A client's memory is then bounded by one request (at
/// most MAX_REQUEST + CHUNK of input) and OUTPUT_HIGH + one reply of output.
pub const OUTPUT_HIGH: usize = 64 * 1024;
/// File descriptors a server needs besides one per client: stdin, stdout,
/// stderr, the listener, the spare kept for EMFILE, one to refuse with.
pub const FDS_BESIDES_CLIENTS: usize = 6;

/// How the server reads and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Length-prefixed frames; the reply echoes each request.
    Frames,
    /// One request per message (SEQPACKET); the reply echoes it.
    Messages,
    /// Newline-delimited text; the reply to "x" is "echo: x".
    Lines,
}

/// What the server enforces and when it stops.
#[derive(Debug)]
pub struct Rules {
    pub protocol: Protocol,
    pub max_clients: usize,
    /// Stop after this many clients have come and gone (None: until Ctrl-C).
    pub stop_after: Option<u64>,
    /// Only these uids may talk (Unix sockets; None: anyone).
    pub allowed_uids: Option<Vec<u32>>,
    /// Unix sockets report the peer's credentials; TCP has none.
    pub unix: bool,
    /// Drop a client that is in the middle of a request, or has replies
    /// waiting, and makes no progress for this long. A client idle between
    /// requests is left alone.
    pub idle_timeout: Duration,
}

/// What the server did.
#[derive(Debug, Default)]
pub struct Served {
    /// Requests answered, checkable or not (`--lines`).
    pub requests: u64,
    pub clients: u64,
    pub dropped: u64,
    pub refused: u64,
    /// Datagram server: replies not sent (the client's queue or our send
    /// buffer was full, or its address failed the checks).
    pub replies_dropped: u64,
    pub report: CheckReport,
    /// The server stopped on this signal (Ctrl-C is how a server ends): its
    /// figures are still reported, then it exits 128+N.
    pub stopped: Option<Signal>,
}

impl Served {
    /// Count a client that is leaving (its requests, closed or dropped) and
    /// return its check; a client that closed is narrated. Both servers,
    /// poll and epoll, end a client this way.
    fn count_out(&mut self, client: &Client, dropped: bool, say: &Narrator) -> CheckReport {
        // A dropped client's answered requests count too: they moved.
        self.requests += client.requests;
        let report = client.checker.report();
        if dropped {
            self.dropped += 1;
        } else {
            self.clients += 1;
            say.message(format!(
                "{} closed after {} request(s): {report}",
                client.label, client.requests
            ));
        }
        report
    }

    /// `Err(Interrupted)` if a signal stopped the server.
    pub fn check_stopped(&self) -> Result<()> {
        match self.stopped {
            Some(signal) => Err(Interrupted(signal).into()),
            None => Ok(()),
        }
    }
}

struct Client {
    fd: OwnedFd,
    /// Its number, also its key in the epoll server's interest list.
    id: u64,
    label: String,
    input: Vec<u8>,
    /// Replies not yet sent, one entry per reply (SEQPACKET sends each as
    /// one message, so they must stay apart); `sent` bytes of the first
    /// have gone (streams may take part of one).
    output: VecDeque<Vec<u8>>,
    sent: usize,
    /// Bytes in `output`, minus `sent`.
    queued: usize,
    /// The client closed its side; we still owe it `output`.
    eof: bool,
    last_progress: Instant,
    checker: Checker,
    requests: u64,
}

impl Client {
    /// Waiting on the client: half a request in, or replies it has not read.
    fn owes_us(&self) -> bool {
        !self.input.is_empty() || self.queued > 0
    }

    /// Owes us, and made no progress for `idle` (`--timeout`).
    fn stalled(&self, idle: Duration) -> bool {
        self.owes_us() && self.last_progress.elapsed() >= idle
    }

    fn stall_error(&self, idle: Duration) -> anyhow::Error {
        anyhow::anyhow!(
            "no progress for {} s with {} (--timeout)",
            idle.as_secs(),
            if self.queued > 0 {
                format!("{} bytes of replies unread", self.queued)
            } else {
                format!("{} bytes of a request", self.input.len())
            }
        )
    }
}

// ---------------------------------------------------------------------------
// 1. Making sockets
// ---------------------------------------------------------------------------

/// The socket type for a kind: how the kernel keeps (or not) boundaries.
fn sock_type(kind: Kind) -> SockType {
    match kind {
        Kind::Stream | Kind::Tcp => SockType::Stream,
        Kind::SeqPacket => SockType::SeqPacket,
        Kind::Dgram => SockType::Datagram,
    }
}

/// A blocking Unix socket. SOCK_CLOEXEC: a child we start must not
/// inherit it (a forgotten copy keeps a connection open: no EOF).
pub fn unix_socket(kind: Kind) -> Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        sock_type(kind),
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket(AF_UNIX)")
}

// ANCHOR: bind_private
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
pub fn bind_private(fd: &OwnedFd, addr: &UnixAddr) -> nix::Result<()> {
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
// ANCHOR_END: bind_private

/// Bind a Unix socket at `path`, and return the guard that unlinks the
/// socket file on drop (`unlink(2)`: a socket file outlives its socket).
///
/// A socket file already there is replaced only if it is ours (owner ==
/// euid, also as root) and nothing answers on it (connect → ECONNREFUSED: a
/// stale file from a dead server); a live server is never hijacked, and
/// anything that is not a socket, or is another user's, is never removed.
pub fn bind_path(fd: &OwnedFd, kind: Kind, path: &Path, say: &Narrator) -> Result<PathGuard> {
    let addr = UnixAddr::new(path)
        .with_context(|| format!("{}: not a usable socket path (too long?)", path.display()))?;
    match bind_private(fd, &addr) {
        Ok(()) => return Ok(PathGuard::new(path)),
        // EADDRINUSE: something is at the path already; bind() never
        // replaces a file, whatever it is.
        Err(Errno::EADDRINUSE) => {}
        Err(e) => return Err(e).with_context(|| format!("bind({})", path.display())),
    }
    // Ours, a socket, and dead? (checks.rs; a first reading may skip it.)
    checks::stale_and_ours(kind, path, &addr, say)?;
    std::fs::remove_file(path).with_context(|| format!("unlink({})", path.display()))?;
    bind_private(fd, &addr).with_context(|| format!("bind({})", path.display()))?;
    Ok(PathGuard::new(path))
}

// ANCHOR: listen
/// A listening Unix (stream or seqpacket) socket at `path`, and the guard
/// that unlinks its file.
pub fn listen_unix(kind: Kind, path: &Path, say: &Narrator) -> Result<(OwnedFd, PathGuard)> {
    // SOCK_NONBLOCK: poll says when a client is waiting; an accept that
    // finds none after all (it gave up meanwhile) returns EAGAIN instead of
    // stopping the whole server.
    let fd = socket(
        AddressFamily::Unix,
        sock_type(kind),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("socket(AF_UNIX)")?;
    let guard = bind_path(&fd, kind, path, say)?;
    // listen(): from now on connect() succeeds and queues the connection
    // (up to the backlog, 64) until we accept it; a connect to a full
    // backlog waits.
    listen(&fd, Backlog::new(64).expect("valid backlog")).context("listen")?;
    Ok((fd, guard))
}
// ANCHOR_END: listen

/// A listening TCP socket on `addr` (port 0: the kernel picks one).
pub fn listen_tcp(addr: SocketAddrV4) -> Result<(OwnedFd, SocketAddrV4)> {
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

// ---------------------------------------------------------------------------
// 2. The server role: one poll loop, many clients
// ---------------------------------------------------------------------------

/// `socket-demo server`: make the socket `opts` asks for and serve on it.
/// The socket file's guard unlinks it when this returns (Ctrl-C included).
pub fn server(opts: &Options, say: &Narrator) -> Result<Served> {
    let served = match opts.kind {
        Kind::Dgram => {
            let path = opts.path.as_deref().expect("checked by parse");
            let fd = unix_socket(Kind::Dgram)?;
            pass_credentials(&fd)?;
            let _guard = bind_path(&fd, Kind::Dgram, path, say)?;
            let largest = max_message(&fd)?;
            say.step(format!(
                "SOCK_DGRAM bound at {} (mode 0600, whatever the umask): waiting for \
                 datagrams; replies of up to {largest} bytes fit our send buffer",
                path.display()
            ));
            serve_dgram(&fd, opts.clients, say)?
        }
        Kind::Tcp => {
            let rules = rules(opts, false, say)?;
            let (fd, addr) = listen_tcp(opts.tcp.expect("checked by parse"))?;
            say.step(format!(
                "TCP listening on {addr}: {}, and there is no SO_PEERCRED to tell who they are",
                if addr.ip().is_loopback() {
                    "any process of any user on this host (in this network namespace) may \
                     connect; nothing from outside can reach a loopback address"
                } else {
                    "any host that can reach this address and port may connect"
                }
            ));
            serve_with(opts, &fd, &rules, say)?
        }
        kind => {
            let rules = rules(opts, true, say)?;
            let path = opts.path.as_deref().expect("checked by parse");
            let (fd, _guard) = listen_unix(kind, path, say)?;
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
            serve_with(opts, &fd, &rules, say)?
        }
    };
    Ok(served)
}

/// The poll loop, or with `--epoll` the epoll one (same clients, same
/// replies; section 2b).
fn serve_with(opts: &Options, fd: &OwnedFd, rules: &Rules, say: &Narrator) -> Result<Served> {
    if opts.epoll {
        say.step("serving with epoll: clients edge-triggered (EPOLLET), read until EAGAIN");
        serve_epoll(fd, rules, say)
    } else {
        serve(fd, rules, say)
    }
}

/// The server's rules from the command line.
fn rules(opts: &Options, unix: bool, say: &Narrator) -> Result<Rules> {
    Ok(Rules {
        protocol: if opts.lines {
            Protocol::Lines
        } else if opts.kind == Kind::SeqPacket {
            Protocol::Messages
        } else {
            Protocol::Frames
        },
        // At most what RLIMIT_NOFILE allows: one descriptor per client.
        max_clients: checks::max_clients(opts, say)?,
        stop_after: opts.clients,
        allowed_uids: (!opts.allowed_uids.is_empty()).then(|| opts.allowed_uids.clone()),
        unix,
        idle_timeout: opts.timeout,
    })
}

// ANCHOR: poll_loop
/// Serve connections on the listening socket `listener` (non-blocking):
/// the poll loop. Each turn: build the list of descriptors and the events
/// each waits for, poll, serve the clients that are ready, accept one new
/// connection if the listener is readable.
pub fn serve(listener: &OwnedFd, rules: &Rules, say: &Narrator) -> Result<Served> {
    let mut clients: Vec<Client> = Vec::new();
    let mut served = Served::default();
    let mut next_id = 0;
    let mut reports = Vec::new();
    // One buffer for every recv: a SEQPACKET request may be MAX_REQUEST
    // bytes and must arrive whole in one call.
    let mut buf = vec![0u8; MAX_REQUEST];
    // The spare descriptor: see `accept_one`.
    let mut spare = open_spare();
    loop {
        if let Some(signal) = stop_requested() {
            served.stopped = Some(signal);
            break;
        }
        if rules
            .stop_after
            .is_some_and(|n| served.clients + served.dropped + served.refused >= n)
            && clients.is_empty()
        {
            break;
        }
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        for c in &clients {
            // Back-pressure: no new requests from a client while its
            // replies pile up; POLLOUT says when it has read some.
            let mut events = PollFlags::empty();
            if !c.eof && c.queued < OUTPUT_HIGH {
                events |= PollFlags::POLLIN;
            }
            if c.queued > 0 {
                events |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.fd.as_fd(), events));
        }
        // poll(): sleep until a socket is ready. A short timeout so Ctrl-C
        // (stop_requested above) and the idle timeout are never far away.
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);

        // Clients first (indices shift when one is removed), then accept.
        let mut gone = Vec::new(); // (index, dropped?)
        for (i, client) in clients.iter_mut().enumerate() {
            let events = ready[i + 1];
            let outcome = if events.is_empty() {
                if client.stalled(rules.idle_timeout) {
                    Err(client.stall_error(rules.idle_timeout))
                } else {
                    continue;
                }
            } else {
                handle(client, events, &mut buf, rules, say)
            };
            match outcome {
                Ok(true) => {}
                Ok(false) => gone.push((i, false)),
                Err(e) => {
                    say.step(format!(
                        "{}: {e:#}: dropped; the server goes on",
                        client.label
                    ));
                    gone.push((i, true));
                }
            }
        }
        for (i, dropped) in gone.into_iter().rev() {
            let client = clients.remove(i);
            reports.push(served.count_out(&client, dropped, say));
            drop(client); // close(2) of its socket: the client sees EOF
        }
        // POLLIN on a listening socket: a connection waits in the backlog.
        if ready[0].contains(PollFlags::POLLIN) {
            accept_one(
                listener,
                rules,
                say,
                &mut clients,
                &mut served,
                &mut next_id,
                &mut spare,
            )?;
        }
    }
    served.report = checks::total(reports);
    Ok(served)
}
// ANCHOR_END: poll_loop

/// A descriptor held in reserve for the EMFILE trick in `accept_one`.
fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

/// accept() one waiting connection: a new socket for that client alone,
/// while the listener goes on listening.
fn accept_one(
    listener: &OwnedFd,
    rules: &Rules,
    say: &Narrator,
    clients: &mut Vec<Client>,
    served: &mut Served,
    next_id: &mut u64,
    spare: &mut Option<File>,
) -> Result<()> {
    // accept4 sets the new socket's flags in the same call: SOCK_NONBLOCK,
    // so no recv or send on it ever stops the loop; SOCK_CLOEXEC.
    let fd = match accept4(
        listener.as_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    ) {
        Ok(fd) => fd,
        // The client gave up between poll and accept: nothing to do.
        Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => return Ok(()),
        // A first reading may skip this branch.
        Err(e @ (Errno::EMFILE | Errno::ENFILE)) => {
            // Out of descriptors. The connection stays in the backlog, so
            // the listener stays readable and poll would return at once,
            // forever. The trick: close the spare fd kept for this moment,
            // accept the connection (the client gets EOF, not a hang), close
            // it, and take the spare back.
            drop(spare.take());
            let refused = accept4(listener.as_fd(), SockFlag::SOCK_CLOEXEC);
            let accepted = refused.is_ok();
            drop(refused); // closes it: the client sees EOF
            *spare = open_spare();
            if accepted {
                served.refused += 1;
                say.step(format!(
                    "accept4: {e}: out of file descriptors ({} clients open): closed the \
                     spare fd, accepted the connection and closed it at once, reopened the \
                     spare; the server goes on",
                    clients.len()
                ));
            }
            return Ok(());
        }
        Err(e) => return Err(e).context("accept4"),
    };
    *next_id += 1;
    let id = *next_id;
    // SO_PEERCRED: the kernel tells who is at the other end of a Unix
    // socket (as of connect); the client cannot lie about it.
    let label = if rules.unix {
        let creds = getsockopt(&fd, sockopt::PeerCredentials).context("getsockopt(SO_PEERCRED)")?;
        let uid = creds.uid();
        if rules
            .allowed_uids
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(&uid))
        {
            say.step(format!(
                "client {id}: SO_PEERCRED pid {} uid {uid} gid {}: uid not allowed {:?}, closing the connection",
                creds.pid(),
                creds.gid(),
                rules.allowed_uids.as_deref().unwrap_or_default()
            ));
            served.refused += 1;
            drop(fd); // close(2): the client reads EOF
            return Ok(());
        }
        say.message(format!(
            "client {id} connected: SO_PEERCRED pid {} uid {uid} gid {}",
            creds.pid(),
            creds.gid()
        ));
        format!("client {id} (pid {})", creds.pid())
    } else {
        say.message(format!("client {id} connected"));
        format!("client {id}")
    };
    if clients.len() >= rules.max_clients {
        say.step(format!(
            "{label}: already {} clients, the most this server takes: closing it",
            clients.len()
        ));
        served.refused += 1;
        drop(fd); // close(2): the client reads EOF
        return Ok(());
    }
    if rules.protocol == Protocol::Messages {
        // A SEQPACKET reply is one message, sent whole: the send buffer
        // must hold it (see `max_message`).
        max_message(&fd)?;
    }
    clients.push(Client {
        fd,
        id,
        label,
        input: Vec::new(),
        output: VecDeque::new(),
        sent: 0,
        queued: 0,
        eof: false,
        last_progress: Instant::now(),
        checker: Checker::new(None),
        requests: 0,
    });
    Ok(())
}

/// Send what the client can take, answer what is buffered, read more if
/// its replies are not piling up. Ok(false): the client is done.
fn handle(
    client: &mut Client,
    events: PollFlags,
    buf: &mut [u8],
    rules: &Rules,
    say: &Narrator,
) -> Result<bool> {
    flush(client)?;
    requests(client, rules, say)?;
    let readable = events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR);
    // `requests` stopped either for lack of a whole request or because the
    // replies reached OUTPUT_HIGH: read only in the first case.
    if readable && !client.eof && client.queued < OUTPUT_HIGH {
        let got = if rules.protocol == Protocol::Messages {
            recv_message(client, buf)?
        } else {
            recv_some(client, &mut buf[..CHUNK])?
        };
        match got {
            None => {} // EAGAIN: nothing after all
            Some(0) => {
                if !client.input.is_empty() {
                    bail!(
                        "disconnected in the middle of a request ({} bytes of it arrived)",
                        client.input.len()
                    );
                }
                client.eof = true;
            }
            Some(n) => {
                client.last_progress = Instant::now();
                if rules.protocol == Protocol::Messages {
                    // SEQPACKET: this recv was exactly one request.
                    answer(client, buf[..n].to_vec(), rules, say)?;
                } else {
                    client.input.extend_from_slice(&buf[..n]);
                    requests(client, rules, say)?;
                }
            }
        }
    }
    flush(client)?;
    // Done once it closed and has every reply (a client may shut down its
    // writing side and still read).
    Ok(!(client.eof && client.queued == 0))
}

// ---------------------------------------------------------------------------
// 2b. The same server with epoll, edge-triggered
// ---------------------------------------------------------------------------

/// The epoll key of the listening socket (clients are keyed by their id,
/// which starts at 1).
const LISTENER: u64 = 0;
/// Most reads one client gets in one turn of the epoll loop. Reading until
/// EAGAIN is what edge-triggered epoll demands, but a client that keeps
/// sending would then hold the loop: past this many reads its turn ends
/// and it goes on the `unfinished` list, served again next turn without
/// waiting for a wake-up (none would come for data already there).
const TURN_READS: usize = 16;

/// How one edge-triggered turn of a client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Every read and write stopped at EAGAIN: the next wake-up will come.
    Waiting,
    /// Cut short after TURN_READS with data maybe still waiting: no wake-up
    /// will come for it, so the loop must come back by itself.
    Unfinished,
    /// The client closed and has all its replies.
    Done,
}

/// The poll server's loop with epoll instead (`server --epoll`, and the
/// story's step 3). The kernel keeps the interest list: a client is added
/// once, not rebuilt into an array each turn, and `epoll_wait` returns only
/// the descriptors that are ready, so a turn costs what is ready, not what
/// is connected.
///
/// Clients are edge-triggered (`EPOLLET`): a wake-up comes when data
/// arrives or buffer room frees up, not while data waits. So each wake-up
/// must read until EAGAIN, and write until EAGAIN or nothing is left;
/// whatever is left unread waits for a wake-up that never comes (the
/// story shows it). The listener stays level-triggered: `accept_one`
/// takes one connection a turn and is told again while more wait.
pub fn serve_epoll(listener: &OwnedFd, rules: &Rules, say: &Narrator) -> Result<Served> {
    let mut clients: Vec<Client> = Vec::new();
    let mut served = Served::default();
    let mut next_id = LISTENER;
    let mut reports = Vec::new();
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut spare = open_spare();
    // epoll_create1: a descriptor for the interest list (closed on drop).
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
    epoll
        .add(
            listener.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, LISTENER),
        )
        .context("epoll_ctl(EPOLL_CTL_ADD, listener)")?;
    let mut unfinished: Vec<u64> = Vec::new();
    let mut events = [EpollEvent::empty(); 64];
    loop {
        if let Some(signal) = stop_requested() {
            served.stopped = Some(signal);
            break;
        }
        if rules
            .stop_after
            .is_some_and(|n| served.clients + served.dropped + served.refused >= n)
            && clients.is_empty()
        {
            break;
        }
        // epoll_wait: only the ready descriptors. No wait at all while a
        // client's turn was cut short; else 100 ms, so that Ctrl-C and the
        // idle timeout are never far away.
        let timeout = if unfinished.is_empty() {
            PollTimeout::from(100u16)
        } else {
            PollTimeout::ZERO
        };
        let n = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        let mut ready = std::mem::take(&mut unfinished);
        let mut accept_now = false;
        for event in &events[..n] {
            match event.data() {
                LISTENER => accept_now = true,
                id if !ready.contains(&id) => ready.push(id),
                _ => {}
            }
        }

        let mut gone = Vec::new(); // (index, dropped?)
        for (i, client) in clients.iter_mut().enumerate() {
            let outcome = if ready.contains(&client.id) {
                drain(client, &mut buf, rules, say)
            } else if client.stalled(rules.idle_timeout) {
                Err(client.stall_error(rules.idle_timeout))
            } else {
                continue;
            };
            match outcome {
                Ok(Turn::Waiting) => {}
                Ok(Turn::Unfinished) => unfinished.push(client.id),
                Ok(Turn::Done) => gone.push((i, false)),
                Err(e) => {
                    say.step(format!(
                        "{}: {e:#}: dropped; the server goes on",
                        client.label
                    ));
                    gone.push((i, true));
                }
            }
        }
        for (i, dropped) in gone.into_iter().rev() {
            let client = clients.remove(i);
            reports.push(served.count_out(&client, dropped, say));
            // EPOLL_CTL_DEL, then close(2). (Closing alone takes a
            // descriptor off the list only if no copy of it is open.)
            epoll
                .delete(client.fd.as_fd())
                .context("epoll_ctl(EPOLL_CTL_DEL)")?;
            drop(client); // close(2): the client sees EOF
        }
        if accept_now {
            let before = clients.len();
            accept_one(
                listener,
                rules,
                say,
                &mut clients,
                &mut served,
                &mut next_id,
                &mut spare,
            )?;
            if clients.len() > before {
                let client = clients.last().expect("just accepted");
                // Edge-triggered, for reading and writing, registered once.
                // Data that came before this call still gives one wake-up.
                let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET;
                epoll
                    .add(client.fd.as_fd(), EpollEvent::new(interest, client.id))
                    .context("epoll_ctl(EPOLL_CTL_ADD, client)")?;
            }
        }
    }
    served.report = checks::total(reports);
    Ok(served)
}

/// One edge-triggered turn: send, answer and read until the socket says
/// EAGAIN both ways (or the replies pile up, and EPOLLOUT will come when
/// the client reads them), at most TURN_READS reads.
fn drain(client: &mut Client, buf: &mut [u8], rules: &Rules, say: &Narrator) -> Result<Turn> {
    for _ in 0..TURN_READS {
        flush(client)?;
        requests(client, rules, say)?;
        flush(client)?;
        if client.queued >= OUTPUT_HIGH {
            // flush stopped at EAGAIN with replies left: the client's
            // buffer is full, and EPOLLOUT comes when it reads. Back-
            // pressure, as in the poll server: no reading meanwhile.
            return Ok(Turn::Waiting);
        }
        if client.eof {
            // Done once every reply is out; else EPOLLOUT comes back.
            return Ok(if client.queued == 0 {
                Turn::Done
            } else {
                Turn::Waiting
            });
        }
        let got = if rules.protocol == Protocol::Messages {
            recv_message(client, buf)?
        } else {
            recv_some(client, &mut buf[..CHUNK])?
        };
        match got {
            // EAGAIN: all read; the next data brings the next wake-up.
            None => return Ok(Turn::Waiting),
            Some(0) => {
                if !client.input.is_empty() {
                    bail!(
                        "disconnected in the middle of a request ({} bytes of it arrived)",
                        client.input.len()
                    );
                }
                client.eof = true;
            }
            Some(n) => {
                client.last_progress = Instant::now();
                if rules.protocol == Protocol::Messages {
                    answer(client, buf[..n].to_vec(), rules, say)?;
                } else {
                    client.input.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    Ok(Turn::Unfinished)
}

/// One recv of up to `buf.len()` bytes of a stream. None: EAGAIN.
fn recv_some(client: &Client, buf: &mut [u8]) -> Result<Option<usize>> {
    loop {
        // recv() takes what has arrived, up to buf.len(): part of a frame,
        // or several; 0 means EOF (the client closed or shut down writing).
        match recv(client.fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => bail!("the connection was reset (ECONNRESET)"),
            Err(e) => return Err(e).context("recv"),
        }
    }
}

/// One SEQPACKET message, whole. None: EAGAIN.
fn recv_message(client: &Client, buf: &mut [u8]) -> Result<Option<usize>> {
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(
            client.fd.as_raw_fd(),
            &mut iov,
            None,
            MsgFlags::MSG_DONTWAIT,
        ) {
            // MSG_TRUNC in msg_flags: the message was longer than the
            // buffer and the kernel threw the rest away. Without this check
            // a request over the buffer's size is silently cut short.
            Ok(msg) if msg.flags.contains(MsgFlags::MSG_TRUNC) => bail!(
                "a message longer than {MAX_REQUEST} bytes (MSG_TRUNC: the kernel cut it to {})",
                msg.bytes
            ),
            Ok(msg) => return Ok(Some(msg.bytes)),
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => bail!("the connection was reset (ECONNRESET)"),
            Err(e) => return Err(e).context("recvmsg"),
        }
    }
}

/// Answer every complete request in the input buffer, until the replies
/// waiting reach OUTPUT_HIGH (the rest waits until the client reads).
fn requests(client: &mut Client, rules: &Rules, say: &Narrator) -> Result<()> {
    while client.queued < OUTPUT_HIGH {
        let request = match rules.protocol {
            Protocol::Messages => return Ok(()), // never buffered
            Protocol::Lines => {
                let Some(end) = client.input.iter().position(|&b| b == b'\n') else {
                    if client.input.len() > MAX_LINE {
                        bail!("a line longer than {MAX_LINE} bytes");
                    }
                    return Ok(());
                };
                let line: Vec<u8> = client.input.drain(..=end).collect();
                line[..line.len() - 1].to_vec()
            }
            Protocol::Frames => match frame::split_frame(&client.input, MAX_REQUEST) {
                Ok(Some((payload, used))) => {
                    let request = client.input[payload].to_vec();
                    client.input.drain(..used);
                    request
                }
                Ok(None) => return Ok(()),
                Err(e @ FrameError::TooLong { .. }) => bail!("{e}"),
                Err(e) => return Err(e.into()),
            },
        };
        answer(client, request, rules, say)?;
    }
    Ok(())
}

/// Check a request and queue its reply.
fn answer(client: &mut Client, request: Vec<u8>, rules: &Rules, say: &Narrator) -> Result<()> {
    client.requests += 1;
    let reply = match rules.protocol {
        Protocol::Lines => {
            let text = String::from_utf8_lossy(&request).into_owned();
            say.message(format!("{}: line {text:?}", client.label));
            format!("echo: {text}\n").into_bytes()
        }
        Protocol::Frames | Protocol::Messages => {
            let verdict = client.checker.check(&request);
            if verdict != Verdict::Ok {
                say.step(format!(
                    "{}: request {}: {verdict}",
                    client.label, client.requests
                ));
            }
            if rules.protocol == Protocol::Frames {
                let mut reply = Vec::with_capacity(frame::HEADER_LEN + request.len());
                reply.extend_from_slice(&(request.len() as u32).to_le_bytes());
                reply.extend_from_slice(&request);
                reply
            } else {
                // SEQPACKET: the reply goes out as one message, as it came.
                request
            }
        }
    };
    client.queued += reply.len();
    client.output.push_back(reply);
    Ok(())
}

/// Send as much of the output queue as the socket takes now; never wait.
fn flush(client: &mut Client) -> Result<()> {
    while let Some(reply) = client.output.front() {
        // MSG_NOSIGNAL: a client that left gives EPIPE, not a SIGPIPE.
        // MSG_DONTWAIT: a full socket gives EAGAIN, and POLLOUT tells when
        // to try again; the loop never blocks on one client.
        match send(
            client.fd.as_raw_fd(),
            &reply[client.sent..],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => {
                // A stream may take part of a reply; a SEQPACKET send is
                // all or nothing (EAGAIN), so its boundary is kept.
                client.sent += n;
                client.queued -= n;
                client.last_progress = Instant::now();
                if client.sent == reply.len() {
                    client.output.pop_front();
                    client.sent = 0;
                }
            }
            Err(Errno::EAGAIN) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(Errno::EPIPE | Errno::ECONNRESET) => bail!("left before reading its replies"),
            Err(Errno::EMSGSIZE) => bail!(
                "a reply of {} bytes is larger than this socket can send (EMSGSIZE)",
                reply.len()
            ),
            Err(e) => return Err(e).context("send"),
        }
    }
    Ok(())
}

/// Raise SO_SNDBUF as far as the kernel allows and return the largest
/// message (datagram or SEQPACKET record) this socket can then send.
///
/// A Unix datagram or SEQPACKET message is sent whole or not at all, and
/// the kernel refuses one longer than the send buffer minus 32 bytes
/// (EMSGSIZE). The default buffer (net.core.wmem_default, often 208 KiB)
/// is far below our 1 MiB requests; setsockopt(SO_SNDBUF) may raise it up
/// to net.core.wmem_max, and the kernel doubles the value asked for (the
/// extra half pays for its bookkeeping).
pub fn max_message(fd: &OwnedFd) -> Result<usize> {
    setsockopt(fd, sockopt::SndBuf, &MAX_REQUEST).context("setsockopt(SO_SNDBUF)")?;
    let sndbuf = getsockopt(fd, sockopt::SndBuf).context("getsockopt(SO_SNDBUF)")?;
    Ok(sndbuf.saturating_sub(32).min(MAX_REQUEST))
}

// ---------------------------------------------------------------------------
// 3. The datagram server: no connections, credentials on every datagram
// ---------------------------------------------------------------------------

/// SO_PASSCRED: every datagram then arrives with the sender's pid, uid and
/// gid (SCM_CREDENTIALS), filled in by the kernel at send time. Datagram
/// sockets have no connection, so there is no SO_PEERCRED to ask. Set it
/// before bind(): a datagram sent before it carries no credentials.
pub fn pass_credentials(socket: &OwnedFd) -> Result<()> {
    setsockopt(socket, sockopt::PassCred, &true).context("setsockopt(SO_PASSCRED)")
}

/// A datagram server: one socket, no connections. Each datagram says who
/// sent it (the client's bound address), and the reply goes back there.
/// An empty datagram means "this client is done". The socket must have had
/// [`pass_credentials`] before it was bound.
pub fn serve_dgram(socket: &OwnedFd, stop_after: Option<u64>, say: &Narrator) -> Result<Served> {
    let mut served = Served::default();
    // One checker per client address: each client numbers its own requests.
    let mut checkers: HashMap<PathBuf, Checker> = HashMap::new();
    // Addresses already told about a dropped reply (one line each, not one
    // per reply).
    let mut warned: HashSet<PathBuf> = HashSet::new();
    let mut reports = Vec::new();
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        if let Some(signal) = stop_requested() {
            served.stopped = Some(signal);
            break;
        }
        if stop_after.is_some_and(|n| served.clients >= n) {
            break;
        }
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e).context("poll"),
        }
        // recvmsg: the datagram, the sender's address (msg_name) and the
        // control messages (the credentials) in one call; room for one
        // SCM_CREDENTIALS message.
        let mut space = nix::cmsg_space!(UnixCredentials);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<UnixAddr>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(e) => return Err(e).context("recvmsg"),
        };
        let (n, flags, from) = (msg.bytes, msg.flags, msg.address);
        let mut creds = None;
        // MSG_CTRUNC first: nix will not parse a truncated control buffer
        // (ENOBUFS), and a datagram that carries descriptors (SCM_RIGHTS)
        // truncates ours, which has room for the credentials alone; the
        // kernel closes the descriptors that did not fit. Treated below as
        // a datagram without credentials, not as the server's end.
        if !flags.contains(MsgFlags::MSG_CTRUNC) {
            for cmsg in msg.cmsgs().context("control messages")? {
                match cmsg {
                    ControlMessageOwned::ScmCredentials(c) => creds = Some(c),
                    ControlMessageOwned::ScmRights(fds) => {
                        for fd in fds {
                            // SAFETY: the kernel installed it for us just
                            // now; nobody else owns it. Dropped: close(2).
                            drop(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                    _ => {}
                }
            }
        }
        let Some((from, path)) = sender_path(from) else {
            say.step(
                "a datagram from an unbound socket (or an abstract name, which has no owner to \
                 check): there is no address to reply to; ignored",
            );
            continue;
        };
        // MSG_CTRUNC: the control buffer was too small and control data
        // (here: the credentials) was cut. MSG_TRUNC: the datagram was
        // longer than our buffer and its end is gone.
        let creds = match creds {
            Some(creds) if !flags.contains(MsgFlags::MSG_CTRUNC) => creds,
            _ => {
                say.step(format!(
                    "{}: a datagram without its credentials{}: cannot tell who sent it; ignored",
                    path.display(),
                    if flags.contains(MsgFlags::MSG_CTRUNC) {
                        " (control data truncated: MSG_CTRUNC)"
                    } else {
                        ""
                    }
                ));
                served.replies_dropped += 1;
                continue;
            }
        };
        if flags.contains(MsgFlags::MSG_TRUNC) {
            say.step(format!(
                "{}: a datagram longer than {MAX_REQUEST} bytes (MSG_TRUNC: the kernel cut it \
                 to {n}): counted as corrupted, no reply",
                path.display()
            ));
            reports.push(CheckReport {
                received: 1,
                corrupted: 1,
                ..CheckReport::default()
            });
            served.replies_dropped += 1;
            continue;
        }
        if n == 0 {
            served.clients += 1;
            if let Some(checker) = checkers.remove(&path) {
                reports.push(checker.report());
            }
            warned.remove(&path);
            say.message(format!("{}: done", path.display()));
            continue;
        }
        if !checkers.contains_key(&path) && checkers.len() >= checks::MAX_DGRAM_CLIENTS {
            say.step(format!(
                "{}: more than {} clients at once; ignored",
                path.display(),
                checks::MAX_DGRAM_CLIENTS
            ));
            continue;
        }
        // Before writing to a path a stranger named, check what is there.
        if let Err(why) = checks::reply_path_is_senders(&path, &creds) {
            say.step(format!(
                "{} (pid {} uid {}): {why}: no reply",
                path.display(),
                creds.pid(),
                creds.uid()
            ));
            served.replies_dropped += 1;
            continue;
        }
        let verdict = checkers
            .entry(path.clone())
            .or_insert_with(|| Checker::new(None))
            .check(&buf[..n]);
        if verdict != Verdict::Ok {
            say.step(format!("datagram of {n} bytes: {verdict}"));
        }
        served.requests += 1;
        // MSG_DONTWAIT: never wait for one client. A full queue at the
        // client (it has not read its last net.unix.max_dgram_qlen replies)
        // or a full send buffer here gives EAGAIN, and the reply is dropped:
        // a blocking sendto would stop the server for everyone.
        let why = match sendto(socket.as_raw_fd(), &buf[..n], &from, MsgFlags::MSG_DONTWAIT) {
            Ok(_) => continue,
            Err(Errno::EAGAIN) => {
                "cannot take a reply now (EAGAIN: it has not read its earlier replies, or our \
                 send buffer is full)"
            }
            // The client went away between its request and our reply.
            Err(Errno::ECONNREFUSED | Errno::ENOENT) => "has gone (ECONNREFUSED)",
            Err(Errno::EMSGSIZE) => "is sent a reply larger than our send buffer (EMSGSIZE)",
            Err(Errno::EACCES | Errno::EPERM) => "is not writable by this server (EACCES)",
            Err(e) => return Err(e).context(format!("sendto({})", path.display())),
        };
        served.replies_dropped += 1;
        let line = format!("{}: {why}: reply dropped", path.display());
        // Bounded like `checkers`: a flood of addresses cannot grow it.
        if warned.len() < checks::MAX_DGRAM_CLIENTS && warned.insert(path) {
            say.step(format!("{line} (the next ones are counted, not narrated)"));
        } else {
            say.message(line);
        }
    }
    reports.extend(checkers.values().map(Checker::report));
    served.report = checks::total(reports);
    Ok(served)
}

/// The path a datagram came from, if its sender bound one. An unbound
/// sender leaves the address empty (msg_namelen 0), an autobound one has an
/// abstract name: neither can be answered by path.
fn sender_path(addr: Option<UnixAddr>) -> Option<(UnixAddr, PathBuf)> {
    let addr = addr?;
    // Check the length first: nix's path() asserts on an empty address.
    if addr.len() as usize <= std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    let path = addr.path()?.to_path_buf();
    Some((addr, path))
}

// ---------------------------------------------------------------------------
// 4. The client role: connect, then requests and checked replies
// ---------------------------------------------------------------------------

/// `socket-demo client`: connect and send `--count` requests, checking
/// every reply. Returns messages, bytes, and the time since connect.
pub fn client(opts: &Options, say: &Narrator) -> Result<(u64, u64, Duration)> {
    // A datagram client binds an address of its own, for the replies, in
    // a private 0700 directory; its guard removes both on drop.
    let dir = if opts.kind == Kind::Dgram {
        Some(PrivateDir::create("socket-demo-client")?)
    } else {
        None
    };
    let fd = client_socket(opts, dir.as_ref())?;
    if matches!(opts.kind, Kind::Dgram | Kind::SeqPacket) {
        // A message goes whole or not at all (checks.rs).
        checks::check_message_size(&fd, opts)?;
    }
    connect_client(&fd, opts)?;
    say.step(format!("connected (pid {})", std::process::id()));
    let start = Instant::now();
    let (messages, bytes) = if opts.lines {
        client_lines(fd, opts, say)?
    } else {
        client_requests(fd, opts, say)?
    };
    Ok((messages, bytes, start.elapsed()))
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
    let path = opts.path.as_deref().expect("checked by parse");
    let addr = UnixAddr::new(path).context("server address")?;
    connect_retrying(
        fd.as_raw_fd(),
        &addr,
        &path.display().to_string(),
        opts.timeout,
    )
}

/// connect(), retried after EINTR only: every other failure is one clear
/// line. SO_SNDTIMEO (set in `client_socket`) bounds the wait.
fn connect_retrying(
    fd: RawFd,
    addr: &dyn SockaddrLike,
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

/// Send `count` checkable requests and check that each reply echoes it.
fn client_requests(fd: OwnedFd, opts: &Options, say: &Narrator) -> Result<(u64, u64)> {
    let (count, size) = (opts.count, opts.size);
    let framed = matches!(opts.kind, Kind::Stream | Kind::Tcp);
    let mut stream = StopOnSignal(File::from(fd));
    let mut reply = vec![0u8; size + 1];
    for seq in 0..count {
        let request = payload::make(seq, size);
        if framed {
            // write_frame: write(2) of a 4-byte length, then the request,
            // looping over short writes; read_frame: read(2) until the
            // whole reply frame is in (common::frame).
            frame::write_frame(&mut stream, &request)
                .map_err(|e| checks::server_gone(e, opts, "write", seq))?;
            let got = frame::read_frame(&mut stream, MAX_REQUEST)
                .map_err(|e| checks::server_gone(e, opts, "read", seq))?
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
                    Err(Errno::EAGAIN) => return Err(checks::timed_out(opts, "send", seq)),
                    Err(e) => {
                        return Err(checks::server_gone(
                            FrameError::Io(e.into()),
                            opts,
                            "send",
                            seq,
                        ));
                    }
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
            Err(Errno::EAGAIN) => return Err(checks::timed_out(opts, "recv", seq)),
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
            checks::timed_out(opts, what, n)
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
// 5. socketpair, and passing an open file (SCM_RIGHTS)
// ---------------------------------------------------------------------------

// ANCHOR: socketpair
/// socketpair(): two sockets already connected to each other, no address,
/// no file; each end reads and writes. Shared by fork, or passed on.
pub fn pair(kind: SockType) -> Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, kind, None, SockFlag::SOCK_CLOEXEC)
        .with_context(|| format!("socketpair(AF_UNIX, {kind:?})"))
}
// ANCHOR_END: socketpair

/// The echo child of the story's first step: every frame back on the same
/// socket it came on, until EOF. Returns the child's exit status.
pub fn echo_frames(sock: OwnedFd) -> i32 {
    let mut sock = StopOnSignal(File::from(sock));
    loop {
        match frame::read_frame(&mut sock, MAX_REQUEST) {
            Ok(Some(msg)) => {
                if frame::write_frame(&mut sock, &msg).is_err() {
                    return 1;
                }
            }
            Ok(None) => return 0, // EOF at a frame boundary: the parent closed its end
            Err(_) => return 1,
        }
    }
}

// ANCHOR: scm_rights
/// sendmsg() with an SCM_RIGHTS control message: the kernel installs a
/// copy of `fd` (the same open file: same offset, same flags) in whichever
/// process receives the message. Our own `fd` stays ours to close.
pub fn send_fd(sock: &OwnedFd, fd: RawFd) -> Result<()> {
    let fds = [fd];
    let iov = [IoSlice::new(b"F")]; // at least one byte of data must go along
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("sendmsg(SCM_RIGHTS)")?;
    Ok(())
}

/// recvmsg() with room for one descriptor: the new descriptor the kernel
/// made for us, for the open file the sender passed.
pub fn receive_fd(sock: &OwnedFd) -> Result<OwnedFd> {
    let mut data = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut data)];
    // The control buffer: room for one SCM_RIGHTS message of one fd.
    let mut space = nix::cmsg_space!([RawFd; 1]);
    // MSG_CMSG_CLOEXEC: the received fd gets FD_CLOEXEC at once, as if we
    // had opened it with O_CLOEXEC.
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
    // SAFETY: the kernel just created this descriptor for us; nothing
    // else owns it, and OwnedFd closes it (close(2)) on drop.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
// ANCHOR_END: scm_rights

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_longer_than_sun_path_are_refused() {
        let long = format!("/tmp/{}", "x".repeat(200));
        assert!(UnixAddr::new(long.as_str()).is_err());
    }
}
