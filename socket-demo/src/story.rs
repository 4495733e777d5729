//! The story, one terminal: each step shows one property of Unix domain
//! sockets and checks that the kernel did what the narration says.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{PrivateDir, StopOnSignal, unique_name};
use common::frame;
use common::payload;
use common::peer::{Peer, wait_pid};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{
    Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockType, UnixAddr, UnixCredentials,
    accept, bind, connect, getsockopt, listen, recv, recvmsg, send, sendmsg, sockopt,
};
use nix::unistd::{ForkResult, fork};

use crate::ipc::{self, Kind, MAX_REQUEST, Protocol, Rules};
use crate::{DEFAULT_TIMEOUT, Options};

/// The whole story; every step heading is printed here, in order.
pub fn story(opts: &Options) -> Result<()> {
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
    messages += server_step(opts, clients, &dir, &say, Loop::Poll)?;
    say.line("\n== 3. epoll: level- and edge-triggered, and the same server with epoll ==");
    triggers_step(&say)?;
    messages += server_step(opts, clients, &dir, &say, Loop::Epoll)?;
    say.line("\n== 4. A stale socket file: EADDRINUSE, and the connect that proves it dead ==");
    stale_step(&dir, &say)?;
    say.line("\n== 5. Message boundaries: SOCK_DGRAM and SOCK_SEQPACKET ==");
    boundaries_step(&say)?;
    say.line("\n== 6. The abstract namespace: an address with no file ==");
    abstract_step(&say)?;
    say.line("\n== 7. SO_PEERCRED: the kernel says who is connecting ==");
    peercred_step(&dir, &say)?;
    say.line("\n== 8. SO_PASSCRED: credentials on every message, taken when it is sent ==");
    passcred_step(&say)?;
    say.line("\n== 9. SCM_RIGHTS: passing an open file to another process ==");
    rights_step(&dir, &say)?;
    say.line("\n== 10. MSG_CTRUNC: a control buffer too small for the descriptors sent ==");
    ctrunc_step(&dir, &say)?;
    say.line("\n== 11. The same protocol over TCP on 127.0.0.1 ==");
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

/// The errno a call must fail with, or a clear failure of the story.
fn expect_errno<T>(what: &str, result: nix::Result<T>, want: Errno) -> Result<()> {
    match result {
        Err(e) if e == want => Ok(()),
        Err(e) => bail!("{what}: expected {want}, got {e}"),
        Ok(_) => bail!("{what}: expected {want}, but it succeeded"),
    }
}

/// Step 1: parent and child talk both ways over one socketpair.
fn pair_step(opts: &Options, say: &Narrator) -> Result<u64> {
    let (mine, theirs) = ipc::pair(SockType::Stream)?;
    say.step("socketpair(AF_UNIX, SOCK_STREAM): two connected sockets, each readable and writable");
    // SAFETY: socket-demo is single-threaded: the child may call anything.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop(mine); // close(2) the parent's end: EOF comes when the parent closes its copy
            // Echo every frame back on the same socket it came on.
            std::process::exit(ipc::echo_frames(theirs));
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs); // close(2) the child's end here, for the same reason
    let mut sock = StopOnSignal(File::from(mine));
    for seq in 0..opts.count {
        let msg = payload::make(seq, opts.size);
        // Out and back on the same descriptor: a pipe would need two.
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
    drop(sock); // close(2): the child reads EOF and exits
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

/// Which loop a server step uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loop {
    Poll,
    Epoll,
}

/// Step 2 (poll) and the end of step 3 (epoll): a path-bound stream
/// server, K client processes.
fn server_step(
    opts: &Options,
    clients: u64,
    dir: &PrivateDir,
    say: &Narrator,
    how: Loop,
) -> Result<u64> {
    let path = dir.path().join(match how {
        Loop::Poll => "server.sock",
        Loop::Epoll => "epoll.sock",
    });
    let (listener, _guard) = ipc::listen_unix(Kind::Stream, &path, say)?;
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
        "started clients {}; {}",
        pids.join(", "),
        match how {
            Loop::Poll => "poll() watches the listener and every connection",
            Loop::Epoll =>
                "epoll: the listener level-triggered, each connection edge-triggered, every \
                 wake-up read until EAGAIN",
        }
    ));
    let rules = Rules {
        protocol: Protocol::Frames,
        max_clients: 64,
        stop_after: Some(clients),
        allowed_uids: None,
        unix: true,
        idle_timeout: Duration::from_secs(DEFAULT_TIMEOUT),
    };
    let served = match how {
        Loop::Poll => ipc::serve(&listener, &rules, &say.with_role("server"))?,
        Loop::Epoll => ipc::serve_epoll(&listener, &rules, &say.with_role("server"))?,
    };
    served.check_stopped()?;
    for mut peer in peers {
        let exit = peer.wait(Some(Duration::from_secs(60)))?;
        if !exit.success() {
            bail!("client pid {} {exit}", peer.pid());
        }
    }
    say.step(format!(
        "{} clients served by one {}; requests checked: {}",
        served.clients,
        match how {
            Loop::Poll => "process",
            Loop::Epoll => "epoll loop, edge-triggered",
        },
        served.report
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

/// How long a wait that is meant to find nothing lasts: long enough that a
/// wake-up would have come, short enough for the story.
const NOTHING_WAIT_MS: u16 = 200;
/// The bound on a wait that should return at once.
const READY_WAIT_MS: u16 = 5000;

/// Step 3: what level- and edge-triggered epoll tell a reader, and what
/// edge-triggered demands of it: read until EAGAIN.
fn triggers_step(say: &Narrator) -> Result<()> {
    let (tx, rx) = ipc::pair(SockType::Stream)?;
    send(tx.as_raw_fd(), &[b'e'; 100], MsgFlags::empty()).context("send")?;
    let mut buf = [0u8; 256];
    let mut events = [EpollEvent::empty(); 4];

    // Level-triggered, the default: "readable" for as long as data waits.
    let level = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
    level
        .add(rx.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 1))
        .context("epoll_ctl(ADD)")?;
    let first = level
        .wait(&mut events, PollTimeout::from(READY_WAIT_MS))
        .context("epoll_wait")?;
    let n = recv(rx.as_raw_fd(), &mut buf[..10], MsgFlags::MSG_DONTWAIT).context("recv")?;
    let again = level
        .wait(&mut events, PollTimeout::from(READY_WAIT_MS))
        .context("epoll_wait")?;
    say.step(format!(
        "level-triggered: 100 bytes waiting → epoll_wait says {first} ready; read {n}; \
         epoll_wait again → {again} ready: told again as long as data waits"
    ));
    if first != 1 || n != 10 || again != 1 {
        bail!("level-triggered epoll did not report the waiting data again");
    }
    drop(level); // close(2) of the epoll instance

    // Edge-triggered: told when data arrives, once per arrival.
    let edge = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
    edge.add(
        rx.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 1),
    )
    .context("epoll_ctl(ADD, EPOLLET)")?;
    // Data already waiting when the descriptor is added: one wake-up.
    let first = edge
        .wait(&mut events, PollTimeout::from(READY_WAIT_MS))
        .context("epoll_wait")?;
    let n = recv(rx.as_raw_fd(), &mut buf[..10], MsgFlags::MSG_DONTWAIT).context("recv")?;
    let started = Instant::now();
    let again = edge
        .wait(&mut events, PollTimeout::from(NOTHING_WAIT_MS))
        .context("epoll_wait")?;
    let waited = started.elapsed().as_millis();
    say.step(format!(
        "edge-triggered (EPOLLET): 90 bytes waiting → {first} ready; read {n} and wait again: \
         {again} ready after {waited} ms, although 80 bytes wait. That wake-up is spent: a \
         reader that read only part and waits without a timeout sleeps for ever (here the \
         wait was bounded at {NOTHING_WAIT_MS} ms)"
    ));
    if first != 1 || n != 10 || again != 0 {
        bail!("edge-triggered epoll did not behave: {first} then {again} ready");
    }
    // New data is a new edge; then read until EAGAIN, the rule for EPOLLET.
    send(tx.as_raw_fd(), b"!", MsgFlags::empty()).context("send")?;
    let woke = edge
        .wait(&mut events, PollTimeout::from(READY_WAIT_MS))
        .context("epoll_wait")?;
    let mut drained = 0;
    loop {
        match recv(rx.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(Errno::EAGAIN) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("recv"),
        }
    }
    say.step(format!(
        "one more byte arrives: a new edge, {woke} ready; read until EAGAIN: {drained} bytes \
         (the 80 left behind and the new one). Now nothing waits unread, and the next \
         wake-up is the next arrival: with EPOLLET, every wake-up reads until EAGAIN"
    ));
    if woke != 1 || drained != 81 {
        bail!("expected one wake-up and 81 bytes, got {woke} and {drained}");
    }
    Ok(())
}

/// Step 4: a stale socket file. A server that died without unlink(2)
/// leaves its file; the next bind fails, and only a connect tells dead
/// from alive.
fn stale_step(dir: &PrivateDir, say: &Narrator) -> Result<()> {
    let path = dir.path().join("stale.sock");
    let addr = UnixAddr::new(&path).context("socket address")?;
    // A server that binds, listens, and dies as SIGKILL would leave it:
    // its socket closes, but nobody unlinks the file.
    let dead = ipc::unix_socket(Kind::Stream)?;
    ipc::bind_private(&dead, &addr).context("bind(stale.sock)")?;
    listen(&dead, Backlog::new(4).expect("valid backlog")).context("listen")?;
    drop(dead); // close(2): the socket is gone, its file is not
    let left = std::fs::symlink_metadata(&path).is_ok();
    say.step(format!(
        "a server bound {} and closed its socket without unlink(): the file {}",
        path.display(),
        if left { "is still there" } else { "is gone?!" }
    ));
    if !left {
        bail!("the socket file vanished with its socket");
    }
    // The next server's bind: a file is at the path, so EADDRINUSE. bind()
    // never replaces a file, not even a dead socket's.
    let fresh = ipc::unix_socket(Kind::Stream)?;
    expect_errno(
        "bind over a stale file",
        bind(fresh.as_raw_fd(), &addr),
        Errno::EADDRINUSE,
    )?;
    say.step("a new server's bind() → EADDRINUSE, although nobody uses the address");
    // Dead or alive? A live server would accept; a socket file with no
    // socket behind it refuses.
    let probe = ipc::unix_socket(Kind::Stream)?;
    expect_errno(
        "connect to a stale file",
        connect(probe.as_raw_fd(), &addr),
        Errno::ECONNREFUSED,
    )?;
    drop(probe);
    say.step(
        "connect() → ECONNREFUSED: no listener behind the file, so it is stale (a live one \
         would accept, and must not be unlinked)",
    );
    // bind_path does all of it: checks owner and kind, probes, unlinks, binds.
    let _guard = ipc::bind_path(&fresh, Kind::Stream, &path, say)?;
    listen(&fresh, Backlog::new(4).expect("valid backlog")).context("listen")?;
    let client = ipc::unix_socket(Kind::Stream)?;
    connect(client.as_raw_fd(), &addr).context("connect after replacing")?;
    say.step("unlinked, bound again, listening: a client connects");
    Ok(())
}

/// Step 5: boundaries kept by DGRAM and SEQPACKET, lost by STREAM; MSG_TRUNC.
fn boundaries_step(say: &Narrator) -> Result<()> {
    let sizes = [10usize, 200, 3];
    for (kind, name) in [
        (SockType::Stream, "SOCK_STREAM"),
        (SockType::Datagram, "SOCK_DGRAM"),
        (SockType::SeqPacket, "SOCK_SEQPACKET"),
    ] {
        let (a, b) = ipc::pair(kind)?;
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
    let (a, b) = ipc::pair(SockType::Datagram)?;
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

/// Step 6: bind to an abstract name: no file, gone with the last socket.
fn abstract_step(say: &Narrator) -> Result<()> {
    let name = unique_name("socket-demo");
    let addr = UnixAddr::new_abstract(name.as_bytes()).context("abstract address")?;
    let listener = ipc::unix_socket(Kind::Stream)?;
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
    let client = ipc::unix_socket(Kind::Stream)?;
    connect(client.as_raw_fd(), &addr).context("connect(abstract)")?;
    let server = accept(listener.as_fd()).context("accept")?;
    send(client.as_raw_fd(), b"hello", MsgFlags::empty()).context("send")?;
    let mut buf = [0u8; 16];
    let n = recv(server.as_raw_fd(), &mut buf, MsgFlags::empty()).context("recv")?;
    say.step(format!(
        "connect by the same name, accept, recv → {:?}; nothing to unlink: the name goes with the last socket",
        String::from_utf8_lossy(&buf[..n])
    ));
    Ok(())
}

/// Step 7: a server that accepts only one uid, tried by a real client.
fn peercred_step(dir: &PrivateDir, say: &Narrator) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let path = dir.path().join("peercred.sock");
    let (listener, _guard) = ipc::listen_unix(Kind::Stream, &path, say)?;
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
        let served = ipc::serve(&listener, &rules, &server_say)?;
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

/// Step 8: SO_PASSCRED: credentials the kernel attaches to every message,
/// taken when it is sent; SO_PEERCRED: the peer as of connect (or
/// socketpair).
fn passcred_step(say: &Narrator) -> Result<()> {
    let me = std::process::id() as i32;
    // SEQPACKET: one message, one set of credentials, no framing.
    let (ours, theirs) = ipc::pair(SockType::SeqPacket)?;
    // Before anything is sent: a message queued earlier carries none.
    ipc::pass_credentials(&ours)?;
    // SAFETY: single-threaded, as above.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop(ours);
            // The child sends; the kernel attaches the child's pid, uid, gid.
            let sent = send(theirs.as_raw_fd(), b"from the child", MsgFlags::empty());
            std::process::exit(if sent.is_ok() { 0 } else { 1 });
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs); // close(2): if the child fails, our recvmsg sees EOF, not a hang
    // SO_PEERCRED on a socketpair: whoever called socketpair(), i.e. us,
    // although the child holds the other end now.
    let peer = getsockopt(&ours, sockopt::PeerCredentials).context("getsockopt(SO_PEERCRED)")?;
    let mut data = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!(UnixCredentials);
    let msg = recvmsg::<()>(
        ours.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .context("recvmsg(SCM_CREDENTIALS)")?;
    let mut creds = None;
    for cmsg in msg.cmsgs().context("control messages")? {
        if let ControlMessageOwned::ScmCredentials(c) = cmsg {
            creds = Some(c);
        }
    }
    let exit = wait_pid(child, Duration::from_secs(30))?;
    let creds = creds.context("the message came without SCM_CREDENTIALS")?;
    say.step(format!(
        "SO_PEERCRED says pid {} (us, who called socketpair); the message's SCM_CREDENTIALS \
         say pid {} uid {} gid {} (the child {child}, who sent it; it {exit})",
        peer.pid(),
        creds.pid(),
        creds.uid(),
        creds.gid()
    ));
    if peer.pid() != me || creds.pid() != child.as_raw() || !exit.success() {
        bail!(
            "expected SO_PEERCRED pid {me} and SCM_CREDENTIALS pid {child}, got {} and {}",
            peer.pid(),
            creds.pid()
        );
    }
    say.step(
        "SO_PEERCRED is taken once, at connect or socketpair, and passing the descriptor on \
         does not change it; SCM_CREDENTIALS is taken at each send: check that when a \
         socket may change hands",
    );
    Ok(())
}

/// Step 9: open a file, send the descriptor, the child reads it.
fn rights_step(dir: &PrivateDir, say: &Narrator) -> Result<()> {
    let (mine, theirs) = ipc::pair(SockType::Stream)?;
    // SAFETY: single-threaded, as above.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop(mine);
            let code = read_passed_file(&theirs, &say.with_role("child")).map_or(1, |()| 0);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs);
    // Opened after the fork: the child cannot have inherited it.
    let path = dir.path().join("secret.txt");
    std::fs::write(&path, "a file the child never opened\n").context("write the file")?;
    let file = File::open(&path).context("open the file")?;
    ipc::send_fd(&mine, file.as_raw_fd())?;
    say.step(format!(
        "opened {} as fd {} after fork, sent it with sendmsg(SCM_RIGHTS), then closed ours",
        path.display(),
        file.as_raw_fd()
    ));
    drop(file); // close(2): the child's copy keeps the open file alive
    let exit = wait_pid(child, Duration::from_secs(30))?;
    if !exit.success() {
        bail!("the child could not read the passed file: it {exit}");
    }
    Ok(())
}

/// The child of step 9: receive the descriptor and read the file through it.
fn read_passed_file(sock: &OwnedFd, say: &Narrator) -> Result<()> {
    let fd = ipc::receive_fd(sock)?;
    let number = fd.as_raw_fd();
    let mut file = File::from(fd);
    let mut text = String::new();
    file.read_to_string(&mut text).context("read(passed fd)")?;
    say.step(format!(
        "recvmsg → a new fd {number} for the same open file; read → {:?}",
        text.trim_end()
    ));
    Ok(())
}

/// Step 10: MSG_CTRUNC. Two descriptors sent, room for one: the kernel
/// installs what fits, closes the rest, and says so in msg_flags.
fn ctrunc_step(dir: &PrivateDir, say: &Narrator) -> Result<()> {
    let (a, b) = ipc::pair(SockType::Stream)?;
    let first = dir.path().join("first.txt");
    let second = dir.path().join("second.txt");
    std::fs::write(&first, "first\n").context("write first.txt")?;
    std::fs::write(&second, "second\n").context("write second.txt")?;
    let one = File::open(&first).context("open first.txt")?;
    let two = File::open(&second).context("open second.txt")?;
    let fds = [one.as_raw_fd(), two.as_raw_fd()];
    let iov = [IoSlice::new(b"2")];
    sendmsg::<()>(
        a.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("sendmsg(SCM_RIGHTS, two fds)")?;
    drop((one, two)); // close(2) ours: the message holds its own references
    // Room for exactly one descriptor: CMSG_LEN(sizeof(int)) bytes. (The
    // usual CMSG_SPACE rounds the data up to 8 bytes on 64-bit machines,
    // which holds two.)
    // SAFETY: CMSG_LEN only computes a length.
    let room = unsafe { libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) } as usize;
    let before = open_fds()?;
    let (flags, got) = recv_fds_raw(&b, room)?;
    let truncated = flags & libc::MSG_CTRUNC != 0;
    let after = open_fds()?;
    let mut text = String::new();
    if let Some(fd) = got.first() {
        File::from(fd.try_clone().context("dup")?)
            .read_to_string(&mut text)
            .context("read(received fd)")?;
    }
    say.step(format!(
        "sent two fds with one SCM_RIGHTS, received with a {room}-byte control buffer (room \
         for one): MSG_CTRUNC {}, {} fd(s) arrived (it reads {:?}), our open fds went from \
         {before} to {after}: the kernel closed the one that did not fit",
        if truncated { "set" } else { "NOT set" },
        got.len(),
        text.trim_end()
    ));
    if !truncated || got.len() != 1 || after != before + 1 || text != "first\n" {
        bail!("expected MSG_CTRUNC and exactly one descriptor");
    }
    say.step(
        "so a receiver checks MSG_CTRUNC: without it a missing descriptor looks like one that \
         was never sent",
    );
    Ok(())
}

/// recvmsg(2) through libc, with a control buffer of `room` bytes: nix's
/// parser refuses a truncated control buffer (ENOBUFS), and this step is
/// about reading one. Returns msg_flags and the descriptors that arrived.
fn recv_fds_raw(sock: &OwnedFd, room: usize) -> Result<(i32, Vec<OwnedFd>)> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // u64s: a control buffer must be aligned for struct cmsghdr.
    let mut control = [0u64; 8];
    let room = room.min(std::mem::size_of_val(&control));
    // SAFETY: an all-zero msghdr is valid (no name, no buffers) until we
    // fill in its pointers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = room as _;
    // SAFETY: every pointer in msg points to a live buffer of the length
    // it states; MSG_CMSG_CLOEXEC as everywhere in this demo.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    Errno::result(n).context("recvmsg(SCM_RIGHTS)")?;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of
    // well-formed control messages; CMSG_FIRSTHDR/NXTHDR stay inside them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let first = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    // The kernel installed this descriptor for us: ours to close.
                    fds.push(OwnedFd::from_raw_fd(first.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((msg.msg_flags, fds))
}

/// How many descriptors this process has open (/proc/self/fd).
fn open_fds() -> Result<usize> {
    // read_dir holds one descriptor of its own while it runs, the same one
    // each time: the difference between two counts is what matters.
    Ok(std::fs::read_dir("/proc/self/fd")
        .context("read /proc/self/fd")?
        .count())
}

/// Step 11: the framed protocol over TCP on loopback.
fn tcp_step(opts: &Options, say: &Narrator) -> Result<u64> {
    let (listener, addr) = ipc::listen_tcp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
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
    let served = ipc::serve(&listener, &rules, &say.with_role("server"))?;
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
