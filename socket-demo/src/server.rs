//! One server process, many clients, no threads: `poll` tells which sockets
//! are ready, and each is read or written without blocking.
//!
//! Stream sockets (Unix or TCP) carry frames (`common::frame`), because a
//! stream has no message boundaries; the bytes of a frame may arrive over
//! several reads, so each client has an input buffer that collects them
//! (`frame::split_frame`). SEQPACKET keeps boundaries itself: one recv, one
//! request, no framing. Datagram sockets have no connections at all (see
//! `serve_dgram`). In `--lines` mode a stream server speaks
//! newline-delimited text instead, so any client (Python, socat, nc) can
//! talk to it.
//!
//! Back-pressure: a reply the kernel cannot take now waits in that client's
//! output queue, and while the queue holds [`OUTPUT_HIGH`] bytes or more the
//! server stops reading that client's requests (POLLIN off, POLLOUT on). A
//! client that sends and never reads therefore stalls only itself: its
//! requests wait in *its* socket buffer, the server's memory stays bounded,
//! and every other client is served. Nothing in the loop blocks or sleeps.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::stop_requested;
use common::error::Interrupted;
use common::frame::{self, FrameError};
use common::payload::{CheckReport, Checker, Verdict};
use common::report::Narrator;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockFlag, SockaddrLike, UnixAddr, UnixCredentials, accept4,
    getsockopt, recv, recvmsg, send, sendto, setsockopt, sockopt,
};

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
}

/// Serve connections on the listening socket `listener` (non-blocking).
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
        // A short timeout so Ctrl-C (check_stop above) and the idle
        // timeout are never far away.
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
                if client.owes_us() && client.last_progress.elapsed() >= rules.idle_timeout {
                    Err(anyhow::anyhow!(
                        "no progress for {} s with {} (--timeout)",
                        rules.idle_timeout.as_secs(),
                        if client.queued > 0 {
                            format!("{} bytes of replies unread", client.queued)
                        } else {
                            format!("{} bytes of a request", client.input.len())
                        }
                    ))
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
            // A dropped client's answered requests count too: they moved.
            served.requests += client.requests;
            let report = client.checker.report();
            if dropped {
                served.dropped += 1;
            } else {
                served.clients += 1;
                say.message(format!(
                    "{} closed after {} request(s): {report}",
                    client.label, client.requests
                ));
            }
            reports.push(report);
        }
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
    served.report = total(reports);
    Ok(served)
}

/// A descriptor held in reserve for the EMFILE trick in `accept_one`.
fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

fn accept_one(
    listener: &OwnedFd,
    rules: &Rules,
    say: &Narrator,
    clients: &mut Vec<Client>,
    served: &mut Served,
    next_id: &mut u64,
    spare: &mut Option<File>,
) -> Result<()> {
    let fd = match accept4(
        listener.as_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    ) {
        Ok(fd) => fd,
        Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => return Ok(()),
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
        return Ok(());
    }
    if rules.protocol == Protocol::Messages {
        // A SEQPACKET reply is one message, sent whole: the send buffer
        // must hold it (see `max_message`).
        max_message(&fd)?;
    }
    clients.push(Client {
        fd,
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

/// One recv of up to `buf.len()` bytes of a stream. None: EAGAIN.
fn recv_some(client: &Client, buf: &mut [u8]) -> Result<Option<usize>> {
    loop {
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
        for cmsg in msg.cmsgs().context("control messages")? {
            if let ControlMessageOwned::ScmCredentials(c) = cmsg {
                creds = Some(c);
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
        if !checkers.contains_key(&path) && checkers.len() >= MAX_DGRAM_CLIENTS {
            say.step(format!(
                "{}: more than {MAX_DGRAM_CLIENTS} clients at once; ignored",
                path.display()
            ));
            continue;
        }
        // Before writing to a path a stranger named, check what is there.
        if let Err(why) = reply_path_is_senders(&path, &creds) {
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
        if warned.len() < MAX_DGRAM_CLIENTS && warned.insert(path) {
            say.step(format!("{line} (the next ones are counted, not narrated)"));
        } else {
            say.message(line);
        }
    }
    reports.extend(checkers.values().map(Checker::report));
    served.report = total(reports);
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

/// The reply address of a datagram must be a socket file owned by the
/// sender, and not a symlink.
///
/// Why: sendto() to a path follows symlinks and needs only write access to
/// the socket file at the moment of sending. Without this check a client
/// binds a path, sends a request, swaps its path for a symlink to a socket
/// only we may write to, and our echo delivers its bytes there: we would be
/// a confused deputy, lending the client our permissions.
///
/// What remains racy: between this lstat and the sendto the client can
/// still swap the name (there is no "sendto this inode"). This check only
/// narrows the window. The real boundary is that our socket is 0600 in the
/// first place: then only our own user can send us anything, and it could
/// write to every socket we can reach anyway.
fn reply_path_is_senders(path: &Path, creds: &UnixCredentials) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("lstat: {e}"))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err("the reply address is a symlink, refusing to follow it".into());
    }
    if !kind.is_socket() {
        return Err("the reply address is not a socket file".into());
    }
    if meta.uid() != creds.uid() {
        return Err(format!(
            "the socket file there belongs to uid {}, not to the sender (SCM_CREDENTIALS uid {})",
            meta.uid(),
            creds.uid()
        ));
    }
    Ok(())
}

/// Most datagram clients tracked at once.
const MAX_DGRAM_CLIENTS: usize = 1024;

fn total(reports: Vec<CheckReport>) -> CheckReport {
    let mut total = CheckReport::default();
    for report in &reports {
        total.merge(report);
    }
    total
}
