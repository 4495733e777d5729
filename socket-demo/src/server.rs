//! One server process, many clients, no threads: `poll` tells which sockets
//! are ready, and each is read or written without blocking.
//!
//! Stream sockets (Unix or TCP) carry frames (`common::frame`), because a
//! stream has no message boundaries; the bytes of a frame may arrive over
//! several reads, so each client has an input buffer that collects them
//! (`frame::split_frame`). SEQPACKET keeps boundaries: one recv, one
//! request. Datagram sockets have no connections at all (see `serve_dgram`).
//! In `--lines` mode a stream server speaks newline-delimited text instead,
//! so any client (Python, socat, nc) can talk to it.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::check_stop;
use common::frame::{self, FrameError};
use common::payload::{CheckReport, Checker, Verdict};
use common::report::Narrator;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    MsgFlags, SockFlag, UnixAddr, accept4, getsockopt, recv, recvfrom, send, sendto, sockopt,
};

/// Largest request a server accepts: a peer cannot make it buffer more.
pub const MAX_REQUEST: usize = 1024 * 1024;
/// Longest line in `--lines` mode.
const MAX_LINE: usize = 64 * 1024;

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
}

/// What the server did.
#[derive(Debug, Default)]
pub struct Served {
    /// Requests answered, checkable or not (`--lines`).
    pub requests: u64,
    pub clients: u64,
    pub dropped: u64,
    pub refused: u64,
    pub report: CheckReport,
}

struct Client {
    fd: OwnedFd,
    label: String,
    input: Vec<u8>,
    output: Vec<u8>,
    checker: Checker,
    requests: u64,
}

/// Serve connections on the listening socket `listener` (non-blocking).
pub fn serve(listener: &OwnedFd, rules: &Rules, say: &Narrator) -> Result<Served> {
    let mut clients: Vec<Client> = Vec::new();
    let mut served = Served::default();
    let mut next_id = 0;
    let mut reports = Vec::new();
    loop {
        check_stop()?;
        if rules
            .stop_after
            .is_some_and(|n| served.clients + served.dropped + served.refused >= n)
            && clients.is_empty()
        {
            break;
        }
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        for c in &clients {
            let mut events = PollFlags::POLLIN;
            if !c.output.is_empty() {
                events |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.fd.as_fd(), events));
        }
        // A short timeout so Ctrl-C (check_stop above) is never far away.
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
            if events.is_empty() {
                continue;
            }
            match handle(client, events, rules, say) {
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
            if dropped {
                served.dropped += 1;
            } else {
                served.clients += 1;
                served.requests += client.requests;
                let report = client.checker.report();
                say.message(format!(
                    "{} closed after {} request(s): {report}",
                    client.label, client.requests
                ));
                reports.push(report);
            }
        }
        if ready[0].contains(PollFlags::POLLIN) {
            accept_one(
                listener,
                rules,
                say,
                &mut clients,
                &mut served,
                &mut next_id,
            )?;
        }
    }
    served.report = total(reports);
    Ok(served)
}

fn accept_one(
    listener: &OwnedFd,
    rules: &Rules,
    say: &Narrator,
    clients: &mut Vec<Client>,
    served: &mut Served,
    next_id: &mut u64,
) -> Result<()> {
    let fd = match accept4(
        listener.as_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    ) {
        Ok(fd) => fd,
        Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => return Ok(()),
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
    clients.push(Client {
        fd,
        label,
        input: Vec::new(),
        output: Vec::new(),
        checker: Checker::new(None),
        requests: 0,
    });
    Ok(())
}

/// Read what is there, answer complete requests, write what fits.
/// Ok(false): the client is done (closed cleanly).
fn handle(client: &mut Client, events: PollFlags, rules: &Rules, say: &Narrator) -> Result<bool> {
    if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match recv(client.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) => {
                    if !client.input.is_empty() {
                        bail!(
                            "disconnected in the middle of a request ({} bytes of it arrived)",
                            client.input.len()
                        );
                    }
                    flush(client)?;
                    return Ok(false);
                }
                Ok(n) => {
                    if rules.protocol == Protocol::Messages {
                        // SEQPACKET: this recv was exactly one request.
                        answer(client, buf[..n].to_vec(), rules, say)?;
                    } else {
                        client.input.extend_from_slice(&buf[..n]);
                        requests(client, rules, say)?;
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(Errno::ECONNRESET) => bail!("the connection was reset (ECONNRESET)"),
                Err(e) => return Err(e).context("recv"),
            }
        }
    }
    flush(client)?;
    Ok(true)
}

/// Take every complete request out of the input buffer.
fn requests(client: &mut Client, rules: &Rules, say: &Narrator) -> Result<()> {
    loop {
        let request = match rules.protocol {
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
            _ => match frame::split_frame(&client.input, MAX_REQUEST) {
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
}

/// Check a request and queue its reply.
fn answer(client: &mut Client, request: Vec<u8>, rules: &Rules, say: &Narrator) -> Result<()> {
    client.requests += 1;
    match rules.protocol {
        Protocol::Lines => {
            let text = String::from_utf8_lossy(&request).into_owned();
            say.message(format!("{}: line {text:?}", client.label));
            client
                .output
                .extend_from_slice(format!("echo: {text}\n").as_bytes());
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
                let header = (request.len() as u32).to_le_bytes();
                client.output.extend_from_slice(&header);
                client.output.extend_from_slice(&request);
            } else {
                // One send per reply keeps the boundary; SEQPACKET sends
                // are whole or fail, so no output buffer is needed.
                send_whole(&client.fd, &request)?;
            }
        }
    }
    Ok(())
}

fn send_whole(fd: &OwnedFd, message: &[u8]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match send(fd.as_raw_fd(), message, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("send"),
        }
    }
}

/// Write as much of the output buffer as the socket takes now.
fn flush(client: &mut Client) -> Result<()> {
    while !client.output.is_empty() {
        // MSG_NOSIGNAL: a client that left gives EPIPE, not a SIGPIPE.
        match send(
            client.fd.as_raw_fd(),
            &client.output,
            MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => {
                client.output.drain(..n);
            }
            Err(Errno::EAGAIN) => return Ok(()), // full: POLLOUT will say when
            Err(Errno::EINTR) => continue,
            Err(Errno::EPIPE | Errno::ECONNRESET) => bail!("left before reading its replies"),
            Err(e) => return Err(e).context("send"),
        }
    }
    Ok(())
}

/// A datagram server: one socket, no connections. Each datagram says who
/// sent it (the client's bound address), and the reply goes back there.
/// An empty datagram means "this client is done".
pub fn serve_dgram(socket: &OwnedFd, stop_after: Option<u64>, say: &Narrator) -> Result<Served> {
    let mut served = Served::default();
    // One checker per client address: each client numbers its own requests.
    let mut checkers: HashMap<PathBuf, Checker> = HashMap::new();
    let mut reports = Vec::new();
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        check_stop()?;
        if stop_after.is_some_and(|n| served.clients >= n) {
            break;
        }
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let (n, from) = match recvfrom::<UnixAddr>(socket.as_raw_fd(), &mut buf) {
            Ok(got) => got,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(e) => return Err(e).context("recvfrom"),
        };
        let Some((from, path)) = from.and_then(|a| a.path().map(|p| (a, p.to_path_buf()))) else {
            say.step("a datagram from an unbound socket: there is no address to reply to; ignored");
            continue;
        };
        if n == 0 {
            served.clients += 1;
            if let Some(checker) = checkers.remove(&path) {
                reports.push(checker.report());
            }
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
        let verdict = checkers
            .entry(path)
            .or_insert_with(|| Checker::new(None))
            .check(&buf[..n]);
        if verdict != Verdict::Ok {
            say.step(format!("datagram of {n} bytes: {verdict}"));
        }
        served.requests += 1;
        match sendto(socket.as_raw_fd(), &buf[..n], &from, MsgFlags::empty()) {
            Ok(_) => {}
            // The client went away between its request and our reply.
            Err(Errno::ECONNREFUSED | Errno::ENOENT) => served.dropped += 1,
            Err(e) => return Err(e).context("sendto"),
        }
    }
    reports.extend(checkers.values().map(Checker::report));
    served.report = total(reports);
    Ok(served)
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
