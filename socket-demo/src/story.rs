//! The story, one terminal: each step shows one property of Unix domain
//! sockets and checks that the kernel did what the narration says.

use std::fs::File;
use std::io::{IoSliceMut, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{PrivateDir, StopOnSignal, unique_name};
use common::frame;
use common::payload;
use common::peer::{Peer, wait_pid};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::sys::socket::{
    Backlog, MsgFlags, SockType, UnixAddr, accept, bind, connect, listen, recv, recvmsg, send,
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

/// Step 2: a path-bound stream server, K client processes, poll.
fn server_step(opts: &Options, clients: u64, dir: &PrivateDir, say: &Narrator) -> Result<u64> {
    let path = dir.path().join("server.sock");
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
    let served = ipc::serve(&listener, &rules, &say.with_role("server"))?;
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

/// Step 4: bind to an abstract name: no file, gone with the last socket.
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

/// Step 5: a server that accepts only one uid, tried by a real client.
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

/// Step 6: open a file, send the descriptor, the child reads it.
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

/// The child of step 6: receive the descriptor and read the file through it.
fn read_passed_file(sock: &std::os::fd::OwnedFd, say: &Narrator) -> Result<()> {
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

/// Step 7: the framed protocol over TCP on loopback.
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
