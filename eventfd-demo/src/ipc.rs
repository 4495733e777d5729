//! The mechanism: an eventfd counter shared by two unrelated processes.
//!
//! An eventfd is a 64-bit counter in the kernel behind a file descriptor.
//! `write(2)` of 8 bytes adds to it; `read(2)` of 8 bytes takes from it
//! (all of it, or 1 with `EFD_SEMAPHORE`) and blocks while it is 0. It has
//! no name: another process gets it only by inheriting it (`fork`) or by
//! receiving a copy over a Unix socket (`SCM_RIGHTS`). That is what the
//! two roles here do:
//!
//! ```text
//! server                                        client
//! socket, bind(PATH), listen
//! accept  <------------------------------------ socket, connect(PATH)
//! recv(hello)  <------------------------------- send(hello)
//! eventfd(EFD_SEMAPHORE)  "events"
//! eventfd(0)              "acks"
//! sendmsg(count, SCM_RIGHTS[events, acks]) ---> recvmsg: two new fds
//! count times:
//!   write(events, 1)  ------------------------> epoll_wait; read(events) -> 1
//!   epoll_wait; read(acks) -> 1  <------------- write(acks, 1)
//! recv(tally) <-------------------------------- send(tally)
//! close                                         close
//! ```
//!
//! An eventfd never tells a reader that the other side has gone: both
//! processes hold the same counter, so it has no "last writer" and no EOF.
//! Each side therefore keeps the socket open and waits on it in the same
//! `epoll` set as the counter: EOF (or ECONNRESET) there means the peer
//! died. Every wait is also bounded by the idle timeout (`--timeout`).

use std::fs::Permissions;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{PathGuard, check_stop, stop_requested};
use common::peer::Peer;
use common::report::Narrator;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept4, bind, connect, getsockopt, listen, recv, recvmsg, send, sendmsg, setsockopt,
    socket, sockopt,
};
use nix::sys::time::TimeVal;
use nix::unistd::geteuid;

/// The client's first message: it proves the connection is a client.
const HELLO: &[u8] = b"hello";

/// Bytes that cross per event: one 8-byte `write(2)` to the counter.
pub const EVENT_BYTES: u64 = 8;

/// What a role needs to know.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's socket file.
    pub path: PathBuf,
    /// Events to post (server) or to expect (client; `None`: as many as
    /// the server announces).
    pub count: Option<u64>,
    /// Idle timeout: the longest we wait for the peer to make progress.
    pub timeout: Duration,
    pub quiet: bool,
}

/// What a role moved.
#[derive(Debug, Clone, Copy)]
pub struct Tally {
    pub events: u64,
}

// ---------------------------------------------------------------------------
// The counter itself: eventfd(2), and its 8-byte read(2) and write(2)
// ---------------------------------------------------------------------------

// ANCHOR: counter
/// `eventfd(0, flags | EFD_CLOEXEC)`: a new counter, starting at 0.
/// EFD_CLOEXEC: a program we exec must not inherit it by accident; the
/// only way in for another program is the copy we send on purpose.
pub fn new_counter(flags: EfdFlags) -> Result<OwnedFd> {
    let efd = EventFd::from_value_and_flags(0, flags | EfdFlags::EFD_CLOEXEC)
        .with_context(|| format!("eventfd(0, {flags:?})"))?;
    // We keep the plain fd and do the 8-byte read/write ourselves below,
    // so that each system call stays visible.
    Ok(OwnedFd::from(efd))
}

/// `write(2)` of exactly 8 bytes (a native-endian u64): adds `n` to the
/// counter and wakes its readers. If the sum would pass 2^64-2 the write
/// blocks until a read makes room (EAGAIN with O_NONBLOCK); `n` =
/// 2^64-1 is EINVAL. A signal that interrupts a blocked write: EINTR,
/// retried unless we were asked to stop.
pub fn counter_write(fd: BorrowedFd<'_>, n: u64) -> nix::Result<()> {
    loop {
        match nix::unistd::write(fd, &n.to_ne_bytes()) {
            // All or nothing: an eventfd never takes part of the 8 bytes.
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) if stop_requested().is_none() => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `read(2)` of exactly 8 bytes: in counter mode returns the whole count
/// and resets it to 0; with EFD_SEMAPHORE returns 1 and subtracts 1. At 0
/// it blocks until somebody writes (EAGAIN with O_NONBLOCK). A buffer
/// shorter than 8 bytes is EINVAL.
pub fn counter_read(fd: BorrowedFd<'_>) -> nix::Result<u64> {
    let mut buf = [0u8; 8];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(_) => return Ok(u64::from_ne_bytes(buf)),
            Err(Errno::EINTR) if stop_requested().is_none() => continue,
            Err(e) => return Err(e),
        }
    }
}
// ANCHOR_END: counter

// ---------------------------------------------------------------------------
// Waiting on the counter and the socket at once: epoll
// ---------------------------------------------------------------------------

/// Tags that tell epoll_wait's answers apart (the `data` of each event).
const COUNTER: u64 = 1;
const SOCKET: u64 = 2;

/// Which fds of the set are ready.
#[derive(Debug, Default, Clone, Copy)]
struct Ready {
    counter: bool,
    socket: bool,
}

// ANCHOR: epoll_set
/// `epoll_create1` + `epoll_ctl(ADD)` for the counter we read and the
/// socket to the peer. EPOLLIN on the counter: readable = count > 0.
/// EPOLLIN|EPOLLRDHUP on the socket: readable, or the peer closed it.
fn epoll_set(counter: &OwnedFd, sock: &OwnedFd) -> Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
    epoll
        .add(counter, EpollEvent::new(EpollFlags::EPOLLIN, COUNTER))
        .context("epoll_ctl(ADD, eventfd)")?;
    epoll
        .add(
            sock,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, SOCKET),
        )
        .context("epoll_ctl(ADD, socket)")?;
    Ok(epoll)
}
// ANCHOR_END: epoll_set

/// `epoll_wait` until the counter or the socket is ready, for at most
/// `timeout` (the idle timeout: no progress from the peer that long is an
/// error). epoll_wait is never restarted after a signal handler: EINTR,
/// then we look at the stop flag and wait for the time that is left.
fn wait_ready(epoll: &Epoll, timeout: Duration, peer: &str) -> Result<Ready> {
    let deadline = Instant::now() + timeout;
    let mut events = [EpollEvent::empty(); 2];
    loop {
        check_stop()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "no progress from the {peer} for {} s (--timeout): giving up",
                timeout.as_secs()
            );
        }
        // At most ~65 s per call (a u16 of milliseconds), then look again.
        let ms = left.as_millis().clamp(1, u16::MAX as u128) as u16;
        match epoll.wait(&mut events, ms) {
            Ok(0) => continue,
            Ok(n) => {
                let mut ready = Ready::default();
                for event in &events[..n] {
                    match event.data() {
                        COUNTER => ready.counter = true,
                        _ => ready.socket = true,
                    }
                }
                return Ok(ready);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        }
    }
}

/// The socket became readable while we waited for the counter: the peer
/// closed it (EOF, it exited or was killed) or reset it, or it broke the
/// protocol. Any of these ends the run with one clear line.
fn peer_left(sock: &OwnedFd, peer: &str, done: u64, count: u64) -> anyhow::Error {
    let mut byte = [0u8; 8];
    // recv(2) without waiting: the socket is readable, this cannot block.
    match recv(sock.as_raw_fd(), &mut byte, MsgFlags::MSG_DONTWAIT) {
        Ok(0) => {
            anyhow::anyhow!("the {peer} left (EOF on the socket) after {done} of {count} events")
        }
        Err(Errno::ECONNRESET) => anyhow::anyhow!(
            "the {peer} left (ECONNRESET on the socket) after {done} of {count} events"
        ),
        Ok(n) => anyhow::anyhow!(
            "the {peer} sent an unexpected {n}-byte message after {done} of {count} events"
        ),
        Err(e) => anyhow::Error::new(e).context(format!("recv(socket to the {peer})")),
    }
}

// ---------------------------------------------------------------------------
// The server: makes the counters, hands them over, posts the events
// ---------------------------------------------------------------------------

/// `socket` + `bind(path)` + `listen`: where a client connects.
/// SOCK_SEQPACKET: connected like a stream (close gives the peer EOF), but
/// each `sendmsg` arrives as one whole record together with its fds.
pub fn listen_at(path: &Path, say: &Narrator) -> Result<(OwnedFd, PathGuard)> {
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket(AF_UNIX, SOCK_SEQPACKET)")?;
    let addr = UnixAddr::new(path).with_context(|| {
        format!(
            "{}: not a usable socket path (at most 107 bytes)",
            path.display()
        )
    })?;
    // bind(2) creates the socket file; EADDRINUSE if the name exists.
    match bind(listener.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::EADDRINUSE) => {
            remove_stale_socket(path, &addr, say)?;
            bind(listener.as_raw_fd(), &addr)
                .with_context(|| format!("bind({})", path.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("bind({})", path.display())),
    }
    // Drop: unlink(2) of the socket file, also after an error or Ctrl-C.
    let guard = PathGuard::new(path);
    // connect(2) needs write permission on the file: 0600 lets only our
    // user in (bind gave it a mode decided by the umask).
    std::fs::set_permissions(path, Permissions::from_mode(0o600))
        .with_context(|| format!("chmod({}, 0600)", path.display()))?;
    // listen(2), backlog 1: we serve one client.
    listen(&listener, Backlog::new(1).context("backlog")?).context("listen")?;
    say.step(format!(
        "socket(AF_UNIX, SOCK_SEQPACKET) + bind({}) + chmod 0600 + listen",
        path.display()
    ));
    Ok((listener, guard))
}

/// Serve one client on `listener`: pass it the counters, post the events.
///
/// The wait for the client to connect is bounded only when `peer` is given
/// (the story, which started the client itself: it gives up when that
/// process ends or after `timeout`); the server role waits for a client as
/// long as it takes, until Ctrl-C, as a server does.
pub fn serve(
    listener: &OwnedFd,
    opts: &Options,
    mut peer: Option<&mut Peer>,
    say: &Narrator,
) -> Result<Tally> {
    let count = opts.count.unwrap_or(common::cli::DEFAULT_COUNT);
    let sock = loop {
        let sock = wait_for_client(listener, opts.timeout, peer.as_deref_mut(), say)?;
        // SO_PEERCRED: the kernel says who connected (pid, uid at connect).
        let cred =
            getsockopt(&sock, sockopt::PeerCredentials).context("getsockopt(SO_PEERCRED)")?;
        if cred.uid() != geteuid().as_raw() {
            say.step(format!(
                "a process of uid {} (pid {}) connected; only our uid {} may: closing it",
                cred.uid(),
                cred.pid(),
                geteuid()
            ));
            continue; // drop(sock): close(2)
        }
        // The client speaks first. A connection that closes without its
        // hello is not a client: e.g. another server testing whether this
        // address is in use (see remove_stale_socket). Wait for the next.
        wait_readable(&sock, opts.timeout, "client")?;
        let mut hello = [0u8; 8];
        // recv(2): one SOCK_SEQPACKET record; 0 = EOF.
        let n = loop {
            match recv(sock.as_raw_fd(), &mut hello, MsgFlags::empty()) {
                Ok(n) => break n,
                Err(Errno::ECONNRESET) => break 0,
                Err(Errno::EINTR) => check_stop()?,
                Err(e) => return Err(e).context("recv(hello)"),
            }
        };
        if n == 0 {
            say.step("a connection closed without a word (not a client): waiting for the next");
            continue;
        }
        if hello[..n] != *HELLO {
            bail!("the client's first message is not {HELLO:?}: not an eventfd-demo client");
        }
        say.step(format!(
            "accept → a client, pid {} (SO_PEERCRED), uid {} like us; it says {:?}",
            cred.pid(),
            cred.uid(),
            String::from_utf8_lossy(HELLO)
        ));
        break sock;
    };

    // Two counters: "events" (we write, the client reads) in semaphore
    // mode, so that each read takes exactly one event; "acks" (the client
    // writes, we read) in counter mode.
    let events = new_counter(EfdFlags::EFD_SEMAPHORE)?;
    let acks = new_counter(EfdFlags::empty())?;
    say.step(format!(
        "eventfd(0, EFD_SEMAPHORE|EFD_CLOEXEC) → fd {} (events), eventfd(0, EFD_CLOEXEC) → fd {} (acks)",
        events.as_raw_fd(),
        acks.as_raw_fd()
    ));

    // sendmsg(2) with SCM_RIGHTS: the kernel installs new fds in the
    // client for the same two counters (not copies of a value: the same
    // kernel objects). The 8 data bytes carry the count; a message with
    // fds must carry at least one byte anyway. MSG_NOSIGNAL: a client that
    // is gone is an EPIPE error, not a SIGPIPE.
    let announce = count.to_le_bytes();
    let fds = [events.as_raw_fd(), acks.as_raw_fd()];
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&announce)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => break,
            Err(Errno::EINTR) => check_stop()?,
            Err(Errno::EPIPE | Errno::ECONNRESET) => {
                bail!("the client left before it got the counters (sendmsg: EPIPE)")
            }
            Err(e) => return Err(e).context("sendmsg(SCM_RIGHTS)"),
        }
    }
    say.step(format!(
        "sendmsg(count={count}, SCM_RIGHTS [fd {}, fd {}]) → the client",
        events.as_raw_fd(),
        acks.as_raw_fd()
    ));

    let epoll = epoll_set(&acks, &sock)?;
    let mut acked = 0u64;
    while acked < count {
        // write(2): events += 1; the client's epoll_wait wakes.
        counter_write(events.as_fd(), 1).context("write(events eventfd)")?;
        say.message(format!("posted event {}", acked + 1));
        // Wait for the client to take it and say so on the acks counter.
        loop {
            let ready = wait_ready(&epoll, opts.timeout, "client")?;
            if ready.counter {
                // read(2): the acks so far (1), and acks back to 0.
                let n = counter_read(acks.as_fd()).context("read(acks eventfd)")?;
                if n != 1 {
                    bail!("the acks counter held {n}: the client acknowledged events it never got");
                }
                acked += 1;
                break;
            }
            if ready.socket {
                return Err(peer_left(&sock, "client", acked, count));
            }
        }
    }
    say.step(format!(
        "{acked} events posted, each one taken and acknowledged before the next"
    ));

    // The client's answer: how many events it counted, as one record.
    let ready = wait_ready(&epoll, opts.timeout, "client")?;
    if !ready.socket {
        bail!("the client acknowledged more events than were posted");
    }
    let mut answer = [0u8; 8];
    // recv(2): one SOCK_SEQPACKET record; 0 = EOF.
    let n = loop {
        match recv(sock.as_raw_fd(), &mut answer, MsgFlags::empty()) {
            Ok(n) => break n,
            Err(Errno::EINTR) => check_stop()?,
            Err(e) => return Err(e).context("recv(tally)"),
        }
    };
    if n != answer.len() {
        bail!("the client left without saying how many events it counted");
    }
    let counted = u64::from_le_bytes(answer);
    if counted != count {
        bail!("the client counted {counted} events; we posted {count}");
    }
    say.step(format!(
        "the client answers: it counted {counted} events, exactly what we posted"
    ));
    drop(sock); // close(2): the client sees EOF
    // close(2) our fds for the counters: each lives on while the client
    // still holds its own fd for it, and is freed with the last one.
    drop(epoll);
    drop(events);
    drop(acks);
    Ok(Tally { events: acked })
}

/// Wait for a connection on `listener` (see [`serve`] for when this is
/// bounded), then `accept4(SOCK_CLOEXEC)` it.
fn wait_for_client(
    listener: &OwnedFd,
    timeout: Duration,
    mut peer: Option<&mut Peer>,
    say: &Narrator,
) -> Result<OwnedFd> {
    let deadline = Instant::now() + timeout;
    say.step(match peer {
        Some(_) => "waiting for the client to connect".to_string(),
        None => "waiting for a client to connect (as long as it takes; Ctrl-C to stop)".to_string(),
    });
    loop {
        check_stop()?;
        if let Some(peer) = peer.as_deref_mut() {
            if let Some(exit) = peer.try_wait()? {
                bail!("the client {exit} before it connected");
            }
            if Instant::now() >= deadline {
                bail!(
                    "no client connected within {} s (--timeout)",
                    timeout.as_secs()
                );
            }
        }
        // poll(2) on the listening socket: readable = a connection waits.
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, 200u16) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(e).context("poll(listening socket)"),
        }
    }
    // accept4(2): the connected socket; SOCK_CLOEXEC as for every fd here.
    accept4(listener, SockFlag::SOCK_CLOEXEC).context("accept4")
}

// ---------------------------------------------------------------------------
// The client: receives the counters, reads the events
// ---------------------------------------------------------------------------

/// Connect to the server at `opts.path`, receive the two counters, take
/// every event and acknowledge it, then tell the server the count.
pub fn client(opts: &Options, say: &Narrator) -> Result<Tally> {
    let path = &opts.path;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket(AF_UNIX, SOCK_SEQPACKET)")?;
    // SO_SNDTIMEO bounds connect(2) too: it blocks while the server's
    // backlog is full (it is busy with another client).
    let limit = TimeVal::new(opts.timeout.as_secs() as _, 0);
    setsockopt(&sock, sockopt::SendTimeout, &limit).context("setsockopt(SO_SNDTIMEO)")?;
    let addr = UnixAddr::new(path.as_path())
        .with_context(|| format!("{}: not a usable socket path", path.display()))?;
    loop {
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => check_stop()?,
            Err(Errno::ENOENT) => bail!(
                "connect({}): no such socket: start 'eventfd-demo server --path {}' first",
                path.display(),
                path.display()
            ),
            Err(Errno::ECONNREFUSED) => bail!(
                "connect({}): ECONNREFUSED: nobody is listening there (a server that died?)",
                path.display()
            ),
            Err(Errno::EACCES) => bail!(
                "connect({}): EACCES: the socket file (mode 0600) or its directory belongs \
                 to another user",
                path.display()
            ),
            Err(Errno::EAGAIN) => bail!(
                "connect({}): the server stayed busy with another client for {} s (--timeout)",
                path.display(),
                opts.timeout.as_secs()
            ),
            Err(e) => return Err(e).with_context(|| format!("connect({})", path.display())),
        }
    }
    let before = eventfds_open()?;
    say.step(format!(
        "connect({}) → connected; eventfds open in this process: {before}; send(\"hello\")",
        path.display()
    ));

    // send(2) our hello: the server hands counters only to a connection
    // that speaks first.
    loop {
        match send(sock.as_raw_fd(), HELLO, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => break,
            Err(Errno::EINTR) => check_stop()?,
            Err(Errno::EPIPE | Errno::ECONNRESET) => {
                bail!("the server closed the connection at once (busy with another client?)")
            }
            Err(e) => return Err(e).context("send(hello)"),
        }
    }

    // Wait (bounded) for the server's one record, then recvmsg(2) it with
    // room for two fds. MSG_CMSG_CLOEXEC: the new fds close on exec too.
    wait_readable(&sock, opts.timeout, "server")?;
    let mut announce = [0u8; 8];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let (bytes, flags, received) = loop {
        let mut iov = [IoSliceMut::new(&mut announce)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                // MSG_CTRUNC: the control buffer was too small (or we hit
                // our fd limit) and the kernel dropped the fds that did not
                // fit. nix then refuses to list even those that did arrive:
                // they stay open until we exit, which we do at once below.
                if let Ok(cmsgs) = msg.cmsgs() {
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::ScmRights(list) = cmsg {
                            fds.extend(list);
                        }
                    }
                }
                // SAFETY: the kernel just installed these fds for us, and
                // nothing else refers to them: each becomes owned once, so
                // each is closed, also when we refuse it.
                let owned: Vec<OwnedFd> = fds
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                    .collect();
                break (msg.bytes, msg.flags, owned);
            }
            Err(Errno::EINTR) => check_stop()?,
            Err(Errno::ECONNRESET) => bail!("the server left before sending the counters"),
            Err(e) => return Err(e).context("recvmsg"),
        }
    };
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        bail!("recvmsg: MSG_CTRUNC: the kernel dropped descriptors that did not fit");
    }
    if bytes == 0 {
        bail!("the server left before sending the counters (EOF)");
    }
    if bytes != announce.len() || received.len() != 2 {
        bail!(
            "the server sent {bytes} bytes and {} fds; expected 8 bytes and 2 fds",
            received.len()
        );
    }
    // Received fds are somebody else's until proven otherwise: both must
    // be eventfds before we read or write them.
    for fd in &received {
        let kind = fd_kind(fd.as_raw_fd())?;
        if kind != "anon_inode:[eventfd]" {
            bail!(
                "the server passed fd {} which is {kind}, not an eventfd",
                fd.as_raw_fd()
            );
        }
    }
    let mut received = received.into_iter();
    let (events, acks) = (received.next().unwrap(), received.next().unwrap());
    let count = u64::from_le_bytes(announce);
    if let Some(want) = opts.count
        && want != count
    {
        bail!("the server posts {count} events, but --count {want} was asked for");
    }
    say.step(format!(
        "recvmsg → {count} events to come, and SCM_RIGHTS fds {} and {} (no MSG_CTRUNC), \
         both anon_inode:[eventfd]; eventfds open now: {}",
        events.as_raw_fd(),
        acks.as_raw_fd(),
        eventfds_open()?
    ));

    let epoll = epoll_set(&events, &sock)?;
    let mut got = 0u64;
    while got < count {
        let ready = wait_ready(&epoll, opts.timeout, "server")?;
        if ready.counter {
            // read(2) in EFD_SEMAPHORE mode: returns 1, events -= 1.
            let n = counter_read(events.as_fd()).context("read(events eventfd)")?;
            if n != 1 {
                bail!(
                    "an EFD_SEMAPHORE read returned {n}, not 1: not the counter we were promised"
                );
            }
            got += 1;
            say.message(format!("event {got}: read → 1"));
            // write(2): acks += 1, which wakes the server for the next one.
            counter_write(acks.as_fd(), 1).context("write(acks eventfd)")?;
            continue;
        }
        if ready.socket {
            return Err(peer_left(&sock, "server", got, count));
        }
    }
    // Exactly `count`: the server posts only after our ack, so nothing may
    // be left on the counter. poll(2) with timeout 0 asks without waiting.
    let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, 0u16).context("poll(events eventfd)")? != 0 {
        bail!("events are still pending after {count}: the server posted more than announced");
    }
    say.step(format!(
        "counted {got} of {count} events, none left on the counter; send({got}) tells the server"
    ));
    // send(2) the tally as one record; the server checks it.
    loop {
        match send(sock.as_raw_fd(), &got.to_le_bytes(), MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => break,
            Err(Errno::EINTR) => check_stop()?,
            Err(Errno::EPIPE | Errno::ECONNRESET) => {
                bail!("the server left before hearing our count ({got} events)")
            }
            Err(e) => return Err(e).context("send(tally)"),
        }
    }
    drop(epoll); // close(2)
    drop(events); // close(2): the counter is freed once the server has closed its fd too
    drop(acks); // close(2)
    Ok(Tally { events: got })
}

/// `poll(2)` until `sock` is readable, within `timeout`.
fn wait_readable(sock: &OwnedFd, timeout: Duration, peer: &str) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_stop()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "no progress from the {peer} for {} s (--timeout): giving up",
                timeout.as_secs()
            );
        }
        let ms = left.as_millis().clamp(1, u16::MAX as u128) as u16;
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => return Err(e).context("poll(socket)"),
        }
    }
}

// ---------------------------------------------------------------------------
// Checks a first reading may skip
// ---------------------------------------------------------------------------

/// What an fd refers to, as `/proc/self/fd` shows it: an eventfd is
/// `anon_inode:[eventfd]` (it has no file name of its own).
pub fn fd_kind(fd: RawFd) -> Result<String> {
    let link = format!("/proc/self/fd/{fd}");
    let target = std::fs::read_link(&link).with_context(|| format!("readlink({link})"))?;
    Ok(target.to_string_lossy().into_owned())
}

/// How many eventfds this process has open (from `/proc/self/fd`).
pub fn eventfds_open() -> Result<usize> {
    let dir = std::fs::read_dir("/proc/self/fd").context("opendir(/proc/self/fd)")?;
    Ok(dir
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.as_os_str() == "anon_inode:[eventfd]")
        .count())
}

/// `bind` found something at `path`. Replace it only if it is a socket
/// file of ours that nobody listens on (a server that died without
/// cleaning up: connect → ECONNREFUSED); a live server, another user's
/// socket, or anything that is not a socket is left alone.
fn remove_stale_socket(path: &Path, addr: &UnixAddr, say: &Narrator) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("lstat({})", path.display()))?;
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket: refusing to replace it; choose another --path",
            path.display()
        );
    }
    if meta.uid() != geteuid().as_raw() {
        bail!(
            "{} is a socket of uid {}, not ours: leaving it alone; choose another --path",
            path.display(),
            meta.uid()
        );
    }
    // Non-blocking: a live server with a full backlog answers EAGAIN at
    // once instead of making us wait.
    let probe = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("socket(AF_UNIX)")?;
    match connect(probe.as_raw_fd(), addr) {
        Ok(()) | Err(Errno::EAGAIN) => bail!(
            "a server is listening on {}: refusing to take over its address",
            path.display()
        ),
        Err(Errno::ECONNREFUSED) => {
            say.step(format!(
                "{} is our socket file but nobody listens (connect → ECONNREFUSED): \
                 left by a server that died; replacing it",
                path.display()
            ));
            std::fs::remove_file(path).with_context(|| format!("unlink({})", path.display()))
        }
        Err(Errno::EPROTOTYPE) => bail!(
            "{} is a socket of another type (not SOCK_SEQPACKET): another program's; \
             choose another --path",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("connect({}) to test it", path.display())),
    }
}
