//! End-to-end tests of socket-demo: real sockets, real processes, a
//! client written in Python, faulty and dying peers.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::cleanup::PrivateDir;
use common::payload;
use ipc_tests::{LONG, Output, Proc, SHORT, assert_usage_error, demo, run};
use nix::sys::signal::Signal;

const SOCKET_DEMO: &str = "socket-demo";

fn dir() -> PrivateDir {
    PrivateDir::create("socket-demo-test").expect("dir")
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ok(out: &Output) {
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
}

/// Start a server and wait until it listens.
fn server(args: &[&str]) -> Proc {
    let mut proc = Proc::spawn(SOCKET_DEMO, &[&["server"], args].concat());
    proc.wait_for_line(|l| l.contains("listening") || l.contains("bound at"), SHORT);
    proc
}

#[test]
fn the_story_runs_all_seven_steps() {
    let out = run(SOCKET_DEMO, &[], LONG);
    ok(&out);
    assert_eq!(out.summary_field("errors"), "0");
    for expected in [
        "socketpair(AF_UNIX, SOCK_STREAM)",
        "3 clients served by one process",
        "SOCK_STREAM: sent [10, 200, 3] bytes, recv() calls returned [213]",
        "SOCK_DGRAM: sent [10, 200, 3] bytes, recv() calls returned [10, 200, 3]",
        "SOCK_SEQPACKET: sent [10, 200, 3] bytes, recv() calls returned [10, 200, 3]",
        "MSG_TRUNC set",
        "real length: 100",
        "lists it as @socket-demo-",
        "was refused",
        "was served, and exited with status 0",
        "read → \"a file the child never opened\"",
        "the kernel chose port",
        "requests over TCP",
        "removed the private directory",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
}

#[test]
fn eight_clients_times_ten_thousand_requests() {
    let dir = dir();
    let path = dir.path().join("bulk.sock");
    let server = server(&["--path", s(&path), "--clients", "8", "--quiet"]);
    let clients: Vec<Proc> = (0..8)
        .map(|_| {
            Proc::spawn(
                SOCKET_DEMO,
                &["client", "--path", s(&path), "--count", "10000", "--quiet"],
            )
        })
        .collect();
    for client in clients {
        let out = client.finish(LONG);
        ok(&out);
        assert!(
            out.stdout.contains("10000 requests, every reply checked"),
            "{}",
            out.describe()
        );
    }
    let out = server.finish(LONG);
    ok(&out);
    assert_eq!(out.summary_field("messages"), "80000");
    assert_eq!(out.summary_field("errors"), "0");
    assert!(
        out.stdout.contains("8 client(s) served, 0 dropped"),
        "{}",
        out.describe()
    );
    assert!(!path.exists(), "socket file left behind");
}

#[test]
fn a_client_gone_mid_frame_is_dropped_and_the_others_go_on() {
    let dir = dir();
    let path = dir.path().join("fault.sock");
    let server = server(&["--path", s(&path), "--clients", "3"]);
    let good = Proc::spawn(
        SOCKET_DEMO,
        &["client", "--path", s(&path), "--count", "2000", "--quiet"],
    );
    // A faulty client: half a frame header, then gone.
    let mut bad = UnixStream::connect(&path).unwrap();
    bad.write_all(&[7, 0]).unwrap();
    drop(bad);
    // A client killed in the middle of its run.
    let mut doomed = Proc::spawn(
        SOCKET_DEMO,
        &[
            "client",
            "--path",
            s(&path),
            "--count",
            "1000000000",
            "--size",
            "100000",
        ],
    );
    doomed.wait_for_line(|l| l.contains("connected"), SHORT);
    sleep(Duration::from_millis(200));
    doomed.signal(Signal::SIGKILL);
    let _ = doomed.finish(SHORT);
    ok(&good.finish(LONG));
    let out = server.finish(LONG);
    ok(&out);
    assert!(
        out.stdout
            .contains("disconnected in the middle of a request (2 bytes of it arrived)"),
        "{}",
        out.describe()
    );
    // The killed client died either inside a request (dropped) or between
    // two (a clean close): both are fine, as long as all three are counted.
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("client(s) served"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers[0] + numbers[1], 3, "{line}");
    assert!(numbers[1] >= 1, "{line}");
}

#[test]
fn a_python_client_talks_to_the_lines_server() {
    let dir = dir();
    let path = dir.path().join("lines.sock");
    let server = server(&["--path", s(&path), "--lines", "--clients", "1"]);
    let script = "import socket, sys\n\
                  s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
                  s.connect(sys.argv[1])\n\
                  f = s.makefile('rw')\n\
                  for word in ['hello', 'from python']:\n\
                  \x20   f.write(word + '\\n'); f.flush()\n\
                  \x20   print(f.readline().strip())\n";
    let out = Command::new("python3")
        .args(["-c", script, s(&path)])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "echo: hello\necho: from python\n"
    );
    let out = server.finish(SHORT);
    ok(&out);
    assert_eq!(out.summary_field("messages"), "2");
    assert!(
        out.stdout.contains("line \"from python\""),
        "{}",
        out.describe()
    );
}

#[test]
fn peer_credentials_name_the_real_client_pid() {
    let dir = dir();
    let path = dir.path().join("cred.sock");
    let server = server(&["--path", s(&path), "--clients", "1"]);
    let client = run(
        SOCKET_DEMO,
        &["client", "--path", s(&path), "--count", "1"],
        SHORT,
    );
    ok(&client);
    let pid = client
        .stdout
        .split("connected (pid ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .to_string();
    let out = server.finish(SHORT);
    ok(&out);
    assert!(
        out.stdout.contains(&format!("SO_PEERCRED pid {pid} uid ")),
        "client {pid}\n{}",
        out.describe()
    );
}

#[test]
fn a_refused_uid_gets_a_clear_error() {
    let dir = dir();
    let path = dir.path().join("refuse.sock");
    let me = nix::unistd::geteuid().as_raw();
    let other = (me + 1).to_string();
    let server = server(&["--path", s(&path), "--clients", "1", "--allow-uid", &other]);
    let client = run(
        SOCKET_DEMO,
        &["client", "--path", s(&path), "--count", "1"],
        SHORT,
    );
    assert_eq!(client.code(), 1, "{}", client.describe());
    assert!(
        client.stderr.contains("the server went away")
            || client.stderr.contains("closed the connection")
    );
    let out = server.finish(SHORT);
    ok(&out);
    assert!(
        out.stdout.contains(&format!("uid {me} gid")) && out.stdout.contains("uid not allowed")
    );
}

#[test]
fn datagram_and_seqpacket_servers() {
    for kind in ["--dgram", "--seqpacket"] {
        let dir = dir();
        let path = dir.path().join("msg.sock");
        let server = server(&["--path", s(&path), kind, "--clients", "2", "--quiet"]);
        let a = Proc::spawn(
            SOCKET_DEMO,
            &[
                "client",
                "--path",
                s(&path),
                kind,
                "--count",
                "500",
                "--size",
                "3000",
                "--quiet",
            ],
        );
        let b = Proc::spawn(
            SOCKET_DEMO,
            &[
                "client",
                "--path",
                s(&path),
                kind,
                "--count",
                "500",
                "--quiet",
            ],
        );
        ok(&a.finish(LONG));
        ok(&b.finish(LONG));
        let out = server.finish(LONG);
        ok(&out);
        assert_eq!(out.summary_field("messages"), "1000", "{kind}");
        assert_eq!(out.summary_field("errors"), "0", "{kind}");
        assert!(!path.exists(), "{kind}: socket file left behind");
    }
}

#[test]
fn stale_files_are_replaced_live_servers_and_other_files_are_not() {
    let dir = dir();
    let path = dir.path().join("stale.sock");
    // A server killed by SIGKILL leaves its socket file.
    let first = server(&["--path", s(&path)]);
    first.signal(Signal::SIGKILL);
    let _ = first.finish(SHORT);
    assert!(path.exists());
    // While a server is alive, a second one must not take its address. Its
    // test connect() reaches the live server as a client that sends nothing,
    // so the live server waits for 2 clients: that probe and a real one.
    let mut live = server(&["--path", s(&path), "--clients", "2"]);
    let out = run(SOCKET_DEMO, &["server", "--path", s(&path)], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("a server is listening"),
        "{}",
        out.describe()
    );
    assert!(live.running(), "the live server must still be running");
    ok(&run(
        SOCKET_DEMO,
        &["client", "--path", s(&path), "--count", "1"],
        SHORT,
    ));
    let out = live.finish(SHORT);
    ok(&out);
    assert!(
        out.stdout.contains("stale, replacing it"),
        "{}",
        out.describe()
    );
    // A regular file is never removed.
    let file = dir.path().join("file");
    std::fs::write(&file, "keep me").unwrap();
    let out = run(SOCKET_DEMO, &["server", "--path", s(&file)], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(out.stderr.contains("is not a socket"), "{}", out.describe());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn a_server_that_dies_gives_clients_a_clear_error_and_sigterm_cleans_up() {
    let dir = dir();
    let path = dir.path().join("dies.sock");
    let server = server(&["--path", s(&path)]);
    let mut client = Proc::spawn(
        SOCKET_DEMO,
        &[
            "client",
            "--path",
            s(&path),
            "--count",
            "1000000000",
            "--quiet",
        ],
    );
    client.wait_for_line(|l| l.contains("connected"), SHORT);
    sleep(Duration::from_millis(200));
    server.signal(Signal::SIGTERM);
    let out = server.finish(SHORT);
    assert_eq!(out.code(), 143, "{}", out.describe());
    assert!(!path.exists(), "SIGTERM left the socket file");
    let out = client.finish(SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("the server went away")
            || out.stderr.contains("closed the connection (EOF)"),
        "{}",
        out.describe()
    );
}

#[test]
fn bad_command_lines_exit_2_with_one_line_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "--bogus"),
        (&["--clients", "0"], "--clients"),
        (&["--path", "/tmp/x"], "--path"),
        (&["server"], "--path"),
        (&["client", "--count", "3"], "--path"),
        (
            &["server", "--path", "/tmp/x", "--dgram", "--seqpacket"],
            "choose one",
        ),
        (
            &["server", "--path", "/tmp/x", "--dgram", "--lines"],
            "--lines",
        ),
        (&["client", "--tcp", "localhost"], "--tcp"),
        (
            &["client", "--tcp", "127.0.0.1:1", "--path", "/tmp/x"],
            "--path",
        ),
        (
            &["client", "--path", "/tmp/x", "--size", "2000000"],
            "--size",
        ),
        (
            &["client", "--path", "/tmp/x", "--allow-uid", "0"],
            "--allow-uid",
        ),
        (&["server", "--path", "/tmp/x", "--count", "3"], "--count"),
    ];
    for (args, needle) in cases {
        assert_usage_error(SOCKET_DEMO, args, needle);
    }
    let out = run(
        SOCKET_DEMO,
        &["client", "--path", "/nonexistent/x.sock"],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("is the server running?"),
        "{}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------
// Round two: attacks on the release binaries (docs/reliability.md)
// ---------------------------------------------------------------------------

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Start `cmd` (made by `demo` or by hand, in its own process group) with
/// stdout and stderr captured.
fn start(mut cmd: Command) -> Proc {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Proc::start(cmd)
}

/// A demo run as the user `nobody`.
fn as_nobody(args: &[&str]) -> Output {
    let mut cmd = demo(SOCKET_DEMO, args);
    cmd.uid(NOBODY).gid(NOBODY);
    let out = start(cmd).finish(SHORT);
    out.assert_no_panic();
    out
}

fn count_summaries(out: &Output) -> usize {
    out.stdout
        .lines()
        .chain(out.stderr.lines())
        .filter(|l| l.starts_with("summary:"))
        .count()
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn stop(server: Proc) -> Output {
    server.signal(Signal::SIGTERM);
    let out = server.finish(SHORT);
    out.assert_stopped_by(Signal::SIGTERM);
    out
}

/// The largest datagram this machine lets an unprivileged socket send:
/// SO_SNDBUF (twice net.core.wmem_max at most) minus 32.
fn kernel_datagram_limit() -> usize {
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (wmem_max.min(1024 * 1024) * 2 - 32).min(1024 * 1024)
}

#[test]
fn the_story_ends_with_one_summary_and_tells_the_truth_about_tcp() {
    let out = run(SOCKET_DEMO, &[], LONG);
    ok(&out);
    assert_eq!(count_summaries(&out), 1, "{}", out.describe());
    assert!(
        out.stdout.contains("any process of any user on this host")
            && out.stdout.contains("nothing from outside the host"),
        "{}",
        out.describe()
    );
    assert!(
        !out.stdout
            .contains("any machine that can reach the address may connect"),
        "{}",
        out.describe()
    );
}

#[test]
fn seqpacket_and_datagram_messages_up_to_the_kernel_limit_arrive_whole() {
    let limit = kernel_datagram_limit();
    for kind in ["--seqpacket", "--dgram"] {
        let dir = dir();
        let path = dir.path().join("big.sock");
        let server = server(&["--path", s(&path), kind, "--quiet"]);
        for size in ["100000", "300000", "1048576"] {
            let out = run(
                SOCKET_DEMO,
                &[
                    "client",
                    "--path",
                    s(&path),
                    kind,
                    "--count",
                    "3",
                    "--size",
                    size,
                    "--quiet",
                ],
                SHORT,
            );
            if size.parse::<usize>().unwrap() <= limit {
                ok(&out);
                assert_eq!(count_summaries(&out), 1, "{}", out.describe());
            } else {
                // A machine with a small net.core.wmem_max: refused up front,
                // naming the limit and the knob.
                assert_eq!(out.code(), 2, "{kind} {size}\n{}", out.describe());
                assert!(
                    out.stderr.contains("net.core.wmem_max"),
                    "{}",
                    out.describe()
                );
            }
        }
        let out = stop(server);
        assert_eq!(
            out.summary_field("errors"),
            "0",
            "{kind}\n{}",
            out.describe()
        );
        if kind == "--seqpacket" {
            assert!(
                out.stdout
                    .contains("keeps message boundaries itself, so no framing")
                    && !out.stdout.contains("framed messages"),
                "{}",
                out.describe()
            );
        }
    }
}

#[test]
fn a_seqpacket_message_over_the_limit_is_refused_not_truncated() {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, connect, send, setsockopt, socket,
        sockopt,
    };
    let dir = dir();
    let path = dir.path().join("trunc.sock");
    let server = server(&["--path", s(&path), "--seqpacket"]);
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::SndBuf, &(2 * 1024 * 1024)).unwrap();
    // A server that echoes a truncated message and goes on: fail, not hang.
    let limit = nix::sys::time::TimeVal::new(30, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &limit).unwrap();
    connect(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    let too_big = 1024 * 1024 + 1;
    if send(fd.as_raw_fd(), &vec![7u8; too_big], MsgFlags::empty()).is_err() {
        eprintln!("this machine's wmem_max is too small to send {too_big} bytes; skipped");
        drop(stop(server));
        return;
    }
    // The server drops us: EOF, no (truncated) echo.
    let mut sock = std::fs::File::from(fd);
    let mut back = Vec::new();
    let _ = sock.read_to_end(&mut back);
    assert!(back.is_empty(), "got {} bytes back", back.len());
    let out = stop(server);
    assert!(
        out.stdout
            .contains("a message longer than 1048576 bytes (MSG_TRUNC"),
        "{}",
        out.describe()
    );
}

/// A stream client that writes 300 frames of 1 MiB and never reads. Shut
/// the returned socket down to end the writing thread.
fn flood_stream(path: &Path) -> (UnixStream, std::thread::JoinHandle<()>) {
    let hostile = UnixStream::connect(path).unwrap();
    hostile
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = hostile.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let mut frame = (1024 * 1024u32).to_le_bytes().to_vec();
        frame.extend(payload::make(0, 1024 * 1024));
        for _ in 0..300 {
            if writer.write_all(&frame).is_err() {
                break; // dropped by the server, shut down, or our timeout
            }
        }
    });
    (hostile, flood)
}

/// A SEQPACKET client that sends 64 KiB requests until the kernel takes no
/// more for half a second, and never reads.
fn flood_seqpacket(path: &Path) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, connect, send, socket,
    };
    let hostile = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .unwrap();
    connect(hostile.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    let request = payload::make(0, 64 * 1024);
    let (mut full, deadline) = (0, Instant::now() + Duration::from_secs(20));
    while full < 10 && Instant::now() < deadline {
        match send(hostile.as_raw_fd(), &request, MsgFlags::empty()) {
            Ok(_) => full = 0,
            Err(nix::errno::Errno::EAGAIN) => {
                full += 1;
                sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("send: {e}"),
        }
    }
    hostile
}

/// A client that sends and never reads: the server's memory stays bounded
/// and an honest client is served at once.
#[test]
fn a_client_that_never_reads_stalls_only_itself() {
    // Stream: 300 frames of 1 MiB, never a read.
    let dir = dir();
    let path = dir.path().join("slow.sock");
    let server = server(&["--path", s(&path), "--quiet"]);
    let (hostile, flood) = flood_stream(&path);
    sleep(Duration::from_secs(2));
    let rss = rss_kib(server.pid());
    let started = Instant::now();
    let honest = run(
        SOCKET_DEMO,
        &["client", "--path", s(&path), "--count", "200", "--quiet"],
        SHORT,
    );
    let waited = started.elapsed();
    hostile.shutdown(std::net::Shutdown::Both).unwrap();
    flood.join().unwrap();
    let out = stop(server);
    ok(&honest);
    assert!(rss < 40 * 1024, "server RSS {rss} KiB\n{}", out.describe());
    assert!(
        waited < Duration::from_secs(10),
        "honest client waited {waited:?}"
    );

    // SEQPACKET: requests until the kernel takes no more, never a read.
    let path = dir.path().join("slowpacket.sock");
    let server = self::server(&["--path", s(&path), "--seqpacket", "--quiet"]);
    let hostile = flood_seqpacket(&path);
    let started = Instant::now();
    let honest = run(
        SOCKET_DEMO,
        &[
            "client",
            "--path",
            s(&path),
            "--seqpacket",
            "--count",
            "20",
            "--quiet",
        ],
        SHORT,
    );
    let waited = started.elapsed();
    drop(hostile);
    let out = stop(server);
    ok(&honest);
    assert!(
        waited < Duration::from_secs(5),
        "honest client waited {waited:?}\n{}",
        out.describe()
    );
}

/// With `--timeout`, the server drops a client that stops reading.
#[test]
fn a_stalled_client_is_dropped_after_the_servers_timeout() {
    let dir = dir();
    for kind in [None, Some("--seqpacket")] {
        let path = dir.path().join("stalled.sock");
        let mut args = vec!["--path", s(&path), "--timeout", "2"];
        args.extend(kind);
        let mut server = server(&args);
        let hostile: Box<dyn std::any::Any> = if kind.is_none() {
            let (hostile, flood) = flood_stream(&path);
            server.wait_for_line(|l| l.contains("no progress for 2 s"), SHORT);
            hostile.shutdown(std::net::Shutdown::Both).unwrap();
            flood.join().unwrap();
            Box::new(hostile)
        } else {
            let hostile = flood_seqpacket(&path);
            server.wait_for_line(|l| l.contains("no progress for 2 s"), SHORT);
            Box::new(hostile)
        };
        let out = stop(server);
        drop(hostile);
        assert!(
            out.stdout
                .contains("bytes of replies unread (--timeout): dropped"),
            "{kind:?}\n{}",
            out.describe()
        );
    }
}

#[test]
fn a_datagram_client_that_never_reads_does_not_block_the_server() {
    let dir = dir();
    let path = dir.path().join("dgram.sock");
    let server = server(&["--path", s(&path), "--dgram"]);
    // Unconnected, so each reply meets the kernel's per-socket queue limit
    // (net.unix.max_dgram_qlen, 10 by default) and then EAGAIN.
    let hostile = UnixDatagram::bind(dir.path().join("hostile.sock")).unwrap();
    // A server stuck in sendto stops reading: fail, do not hang.
    hostile
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for seq in 0..50 {
        hostile
            .send_to(&payload::make(seq, 64), &path)
            .expect("the server stopped reading its socket");
    }
    let honest = run(
        SOCKET_DEMO,
        &[
            "client",
            "--path",
            s(&path),
            "--dgram",
            "--count",
            "20",
            "--timeout",
            "10",
        ],
        SHORT,
    );
    ok(&honest);
    let out = stop(server);
    assert!(!path.exists(), "SIGTERM left the socket file");
    assert!(out.stdout.contains("reply dropped"), "{}", out.describe());
    let dropped: u64 = out
        .stdout
        .split(" repl(ies) dropped")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(dropped >= 30, "{dropped} dropped\n{}", out.describe());
    drop(hostile);
}

/// The datagram server as a confused deputy: it must not follow a client's
/// reply path to a socket the client may not write to.
#[test]
fn a_datagram_server_replies_only_to_a_socket_the_sender_owns() {
    let dir = dir();
    let path = dir.path().join("deputy.sock");
    let server = server(&["--path", s(&path), "--dgram"]);
    // The victim: a socket only root can reach.
    let vault = PrivateDir::create("socket-demo-vault").unwrap();
    let victim_path = vault.path().join("victim.sock");
    let victim = UnixDatagram::bind(&victim_path).unwrap();
    victim
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();

    // Same user: a request answered, then the reply path swapped for a
    // symlink to the victim.
    let mine = dir.path().join("client.sock");
    let client = UnixDatagram::bind(&mine).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    client.send_to(&payload::make(0, 64), &path).unwrap();
    let mut back = [0u8; 256];
    assert_eq!(client.recv(&mut back).unwrap(), 64);
    std::fs::remove_file(&mine).unwrap();
    std::os::unix::fs::symlink(&victim_path, &mine).unwrap();
    for seq in 1..6 {
        client.send_to(&payload::make(seq, 64), &path).unwrap();
    }
    let mut stolen = [0u8; 256];
    let got = victim.recv(&mut stolen);
    assert!(
        matches!(&got, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the server wrote to the victim: {got:?}"
    );

    // The reply path is a socket of another user than the sender.
    let theirs = dir.path().join("theirs.sock");
    let other = UnixDatagram::bind(&theirs).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    other.send_to(&payload::make(0, 64), &path).unwrap();
    assert!(
        other.recv(&mut back).is_err(),
        "answered a socket it does not own"
    );

    let out = stop(server);
    assert_eq!(
        out.stdout.matches("symlink, refusing to follow it").count(),
        5,
        "{}",
        out.describe()
    );
    assert!(
        out.stdout
            .contains("belongs to uid 65534, not to the sender (SCM_CREDENTIALS uid 0)")
            || !is_root(),
        "{}",
        out.describe()
    );

    // And the attack as the brief saw it: another user, whose request
    // reaches the server because its socket was opened up (chmod 0666), makes
    // its reply path a symlink to a root-only socket.
    if !is_root() {
        return;
    }
    let open_dir = dir.path();
    std::fs::set_permissions(open_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let server_path = open_dir.join("open.sock");
    let server = self::server(&["--path", s(&server_path), "--dgram"]);
    std::fs::set_permissions(&server_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let attacker_dir = PrivateDir::create("socket-demo-attacker").unwrap();
    std::os::unix::fs::chown(attacker_dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let script = "import socket, os, sys\n\
                  srv, mine, target = sys.argv[1:4]\n\
                  s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
                  s.bind(mine)\n\
                  os.unlink(mine); os.symlink(target, mine)\n\
                  for i in range(5): s.sendto(b'attacker-written %d' % i, srv)\n";
    let status = Command::new("python3")
        .args([
            "-c",
            script,
            s(&server_path),
            s(&attacker_dir.path().join("a.sock")),
            s(&victim_path),
        ])
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .expect("python3");
    assert!(status.success());
    let got = victim.recv(&mut stolen);
    assert!(
        matches!(&got, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the server delivered an attacker's datagram to a root-only socket: {got:?}"
    );
    let out = stop(server);
    assert!(
        out.stdout
            .contains("uid 65534): the reply address is a symlink"),
        "{}",
        out.describe()
    );
}

#[test]
fn socket_files_are_0600_whatever_the_umask() {
    let dir = dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    for kind in ["--stream", "--seqpacket", "--dgram"] {
        let path = dir.path().join(format!("umask{kind}.sock"));
        let mut cmd = Command::new("sh");
        let mut args = vec![
            "-c".to_string(),
            "umask 000; exec \"$0\" \"$@\"".to_string(),
            s(&ipc_tests::bin(SOCKET_DEMO)).to_string(),
            "server".to_string(),
            "--path".to_string(),
            s(&path).to_string(),
        ];
        if kind != "--stream" {
            args.push(kind.to_string());
        }
        cmd.args(&args);
        let mut server = start(cmd);
        server.wait_for_line(|l| l.contains("listening") || l.contains("bound at"), SHORT);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600, "{kind}");
        if is_root() {
            let mut client = vec!["client", "--path", s(&path), "--count", "1"];
            if kind != "--stream" {
                client.push(kind);
            }
            let out = as_nobody(&client);
            assert_eq!(
                out.code(),
                1,
                "{kind}: nobody was served\n{}",
                out.describe()
            );
            assert!(
                out.stderr.contains("ermission denied"),
                "{}",
                out.describe()
            );
        }
        drop(stop(server));
    }
}

#[test]
fn another_users_stale_socket_is_left_alone() {
    if !is_root() {
        eprintln!("not root: cannot make a file of another user; skipped");
        return;
    }
    let dir = dir();
    let path = dir.path().join("theirs.sock");
    drop(UnixListener::bind(&path).unwrap()); // a stale socket file
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    for kind in [None, Some("--dgram")] {
        let mut args = vec!["server", "--path", s(&path)];
        args.extend(kind);
        let out = run(SOCKET_DEMO, &args, SHORT);
        assert_eq!(out.code(), 1, "{}", out.describe());
        assert!(
            out.stderr.contains("is a socket file of uid 65534")
                && out.stderr.contains("refusing to remove it"),
            "{}",
            out.describe()
        );
        let meta = std::fs::symlink_metadata(&path).expect("the file must stay");
        assert_eq!(meta.uid(), NOBODY);
    }
}

/// Run the server with RLIMIT_NOFILE set to `limit` and `extra` more
/// descriptors inherited (as from a careless parent).
fn server_with_fd_limit(limit: u64, extra: i32, args: &[&str]) -> Proc {
    let mut cmd = demo(SOCKET_DEMO, &[&["server"], args].concat());
    // SAFETY: between fork and exec only async-signal-safe calls:
    // setrlimit and dup2.
    unsafe {
        cmd.pre_exec(move || {
            let rlim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in 3..3 + extra {
                // A copy of stdin (/dev/null) without FD_CLOEXEC.
                if libc::dup2(0, fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    start(cmd)
}

#[test]
fn out_of_descriptors_the_server_refuses_a_connection_and_goes_on() {
    // --max-clients beyond RLIMIT_NOFILE is refused up front.
    let dir = dir();
    let unused = dir.path().join("unused.sock");
    let out = server_with_fd_limit(1024, 0, &["--path", s(&unused), "--max-clients", "1024"])
        .finish(SHORT);
    assert!(!unused.exists());
    assert_eq!(out.code(), 2, "{}", out.describe());
    assert!(
        out.stderr.contains("RLIMIT_NOFILE is 1024") && out.stderr.contains("--max-clients 1018"),
        "{}",
        out.describe()
    );

    // 20 inherited descriptors: EMFILE comes before --max-clients.
    let path = dir.path().join("emfile.sock");
    let mut server = server_with_fd_limit(64, 20, &["--path", s(&path), "--max-clients", "50"]);
    server.wait_for_line(|l| l.contains("listening"), SHORT);
    let mut conns: Vec<UnixStream> = (0..45)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    server.wait_for_line(
        |l| l.contains("EMFILE") && l.contains("the server goes on"),
        SHORT,
    );
    // The refused connection was closed: EOF, not a hang.
    let last = conns.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(last.read(&mut byte).unwrap(), 0);
    drop(conns);
    let out = run(
        SOCKET_DEMO,
        &["client", "--path", s(&path), "--count", "3"],
        SHORT,
    );
    ok(&out);
    let out = stop(server);
    assert!(
        !out.stderr.contains("accept4: EMFILE"),
        "{}",
        out.describe()
    );
}

/// accept(), failing the test (not hanging it) if no client comes.
fn accept_within(listener: &UnixListener, timeout: Duration) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(timeout)).unwrap();
                return conn;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("no client connected: {e}"),
        }
    }
}

#[test]
fn a_client_gives_up_on_a_server_that_stalls() {
    let dir = dir();
    // A server that accepts and never replies; then one that sends half a
    // frame.
    for half_frame in [false, true] {
        let path = dir.path().join(format!("stall{half_frame}.sock"));
        let listener = UnixListener::bind(&path).unwrap();
        let client = Proc::spawn(
            SOCKET_DEMO,
            &[
                "client",
                "--path",
                s(&path),
                "--count",
                "1",
                "--timeout",
                "2",
            ],
        );
        let mut conn = accept_within(&listener, SHORT);
        if half_frame {
            let mut request = [0u8; 4 + 64];
            conn.read_exact(&mut request).unwrap();
            conn.write_all(&request[..10]).unwrap();
        }
        let started = Instant::now();
        let out = client.finish(SHORT);
        assert_eq!(out.code(), 1, "{}", out.describe());
        assert!(
            out.stderr
                .contains("the server made no progress for 2 s (--timeout)"),
            "{}",
            out.describe()
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        drop(conn);
    }
    // A datagram "server" that never answers.
    let path = dir.path().join("silent.sock");
    let _silent = UnixDatagram::bind(&path).unwrap();
    let out = run(
        SOCKET_DEMO,
        &[
            "client",
            "--path",
            s(&path),
            "--dgram",
            "--count",
            "1",
            "--timeout",
            "2",
        ],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("no progress for 2 s"),
        "{}",
        out.describe()
    );
    assert_usage_error(
        SOCKET_DEMO,
        &["client", "--path", "/tmp/x", "--timeout", "0"],
        "--timeout",
    );
}

// ---------------------------------------------------------------------------
// Round three: lessons the story shows and checks (docs/reliability.md)
// ---------------------------------------------------------------------------

/// The number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> u64 {
    text.split(prefix)
        .nth(1)
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{text}"))
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {prefix:?}"))
}

#[test]
fn the_story_shows_level_and_edge_triggered_epoll_and_serves_with_epoll() {
    let out = run(SOCKET_DEMO, &["--quiet"], LONG);
    ok(&out);
    for expected in [
        "epoll_wait again → 1 ready: told again as long as data waits",
        "90 bytes waiting → 1 ready; read 10 and wait again: 0 ready after",
        "read until EAGAIN: 81 bytes",
        "3 clients served by one epoll loop, edge-triggered",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    // The lost wake-up is shown by a wait that ran its whole bound.
    let waited = number_after(&out.stdout, "0 ready after ");
    assert!(waited >= 190, "waited {waited} ms\n{}", out.describe());
}

#[test]
fn the_story_proves_a_stale_socket_file_dead_before_replacing_it() {
    let out = run(SOCKET_DEMO, &["--quiet"], LONG);
    ok(&out);
    let step: String = out
        .stdout
        .split("== 4. A stale socket file")
        .nth(1)
        .and_then(|rest| rest.split("\n== ").next())
        .unwrap_or_else(|| panic!("no stale-file step\n{}", out.describe()))
        .to_string();
    let order = [
        "closed its socket without unlink(): the file is still there",
        "bind() → EADDRINUSE",
        "connect() → ECONNREFUSED",
        "stale, replacing it",
        "a client connects",
    ];
    let mut at = 0;
    for expected in order {
        let found = step[at..]
            .find(expected)
            .unwrap_or_else(|| panic!("missing {expected:?} (in order) in\n{step}"));
        at += found + expected.len();
    }
}

#[test]
fn the_story_contrasts_so_peercred_with_scm_credentials() {
    let out = run(SOCKET_DEMO, &["--quiet"], LONG);
    ok(&out);
    let story_pid = number_after(&out.stdout, "(parent pid ");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("SO_PEERCRED says pid"))
        .unwrap_or_else(|| panic!("no SO_PASSCRED step\n{}", out.describe()));
    let peercred = number_after(line, "SO_PEERCRED says pid ");
    let sender = number_after(line, "SCM_CREDENTIALS say pid ");
    let child = number_after(line, "(the child ");
    assert_eq!(peercred, story_pid, "{line}");
    assert_eq!(sender, child, "{line}");
    assert_ne!(sender, story_pid, "{line}");
}

#[test]
fn the_story_shows_msg_ctrunc_and_the_descriptor_the_kernel_closed() {
    let out = run(SOCKET_DEMO, &["--quiet"], LONG);
    ok(&out);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("sent two fds with one SCM_RIGHTS"))
        .unwrap_or_else(|| panic!("no MSG_CTRUNC step\n{}", out.describe()));
    assert!(
        line.contains("MSG_CTRUNC set, 1 fd(s) arrived (it reads \"first\")"),
        "{line}"
    );
    let before = number_after(line, "our open fds went from ");
    let after = number_after(line, &format!("from {before} to "));
    assert_eq!(after, before + 1, "{line}");
}

#[test]
fn an_epoll_server_serves_big_and_small_requests_like_the_poll_one() {
    for kind in [None, Some("--seqpacket")] {
        let dir = dir();
        let path = dir.path().join("epoll.sock");
        let mut args = vec!["--path", s(&path), "--epoll", "--clients", "3", "--quiet"];
        args.extend(kind);
        let server = server(&args);
        // Big requests arrive over many reads; an edge-triggered server
        // that did not read until EAGAIN would leave the end of one unread
        // and wait for a wake-up that never comes (the client times out).
        let big_size = if kind.is_some() { "100000" } else { "1048576" };
        let mut clients = Vec::new();
        for (count, size) in [("2000", "64"), ("2000", "3000"), ("30", big_size)] {
            let mut client = vec![
                "client",
                "--path",
                s(&path),
                "--count",
                count,
                "--size",
                size,
                "--timeout",
                "20",
                "--quiet",
            ];
            client.extend(kind);
            clients.push(Proc::spawn(SOCKET_DEMO, &client));
        }
        // SHORT, not LONG: these take a second or two; a server that lost a
        // wake-up makes a big client crawl from one send timeout to the next.
        for client in clients {
            ok(&client.finish(SHORT));
        }
        let out = server.finish(SHORT);
        ok(&out);
        assert_eq!(out.summary_field("messages"), "4030", "{kind:?}");
        assert_eq!(out.summary_field("errors"), "0", "{kind:?}");
        assert!(
            out.stdout.contains("serving with epoll")
                && out.stdout.contains("3 client(s) served, 0 dropped"),
            "{kind:?}\n{}",
            out.describe()
        );
        assert!(!path.exists(), "socket file left behind");
    }
}

#[test]
fn an_epoll_server_is_stalled_by_no_client_that_never_reads() {
    let dir = dir();
    let path = dir.path().join("slow-epoll.sock");
    let mut server = server(&["--path", s(&path), "--epoll", "--timeout", "4", "--quiet"]);
    let (hostile, flood) = flood_stream(&path);
    sleep(Duration::from_secs(1));
    let rss = rss_kib(server.pid());
    let started = Instant::now();
    let honest = run(
        SOCKET_DEMO,
        &["client", "--path", s(&path), "--count", "200", "--quiet"],
        SHORT,
    );
    let waited = started.elapsed();
    ok(&honest);
    assert!(
        waited < Duration::from_secs(10),
        "honest client waited {waited:?}"
    );
    assert!(rss < 40 * 1024, "server RSS {rss} KiB");
    // And the idle timeout drops the client that never reads.
    server.wait_for_line(|l| l.contains("no progress for 4 s"), SHORT);
    hostile.shutdown(std::net::Shutdown::Both).unwrap();
    flood.join().unwrap();
    let out = stop(server);
    assert!(
        out.stdout
            .contains("bytes of replies unread (--timeout): dropped"),
        "{}",
        out.describe()
    );
}

#[test]
fn epoll_is_refused_where_it_does_not_apply() {
    assert_usage_error(
        SOCKET_DEMO,
        &["server", "--path", "/tmp/x", "--dgram", "--epoll"],
        "--epoll",
    );
    assert_usage_error(
        SOCKET_DEMO,
        &["client", "--path", "/tmp/x", "--epoll"],
        "--epoll",
    );
    assert_usage_error(SOCKET_DEMO, &["--epoll"], "--epoll");
}

/// Before: one datagram with SCM_RIGHTS truncated the server's control
/// buffer (room for the credentials only), nix refused to parse it
/// (ENOBUFS) and the datagram server exited 1 ("control messages: ENOBUFS").
#[test]
fn a_datagram_carrying_descriptors_does_not_stop_the_datagram_server() {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    let dir = dir();
    let path = dir.path().join("fds.sock");
    let server = server(&["--path", s(&path), "--dgram"]);
    let fds_of = |pid: nix::unistd::Pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds_of(server.pid());
    let hostile = UnixDatagram::bind(dir.path().join("hostile.sock")).unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    let fds = [file.as_raw_fd(), file.as_raw_fd(), file.as_raw_fd()];
    let request = payload::make(0, 64);
    for _ in 0..3 {
        sendmsg(
            hostile.as_raw_fd(),
            &[std::io::IoSlice::new(&request)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&UnixAddr::new(&path).unwrap()),
        )
        .unwrap();
    }
    let honest = run(
        SOCKET_DEMO,
        &["client", "--path", s(&path), "--dgram", "--count", "5"],
        SHORT,
    );
    ok(&honest);
    // Served after the hostile datagrams: they were read and dealt with.
    let after = fds_of(server.pid());
    let out = stop(server);
    assert_eq!(
        after, before,
        "descriptors passed to the server stayed open"
    );
    assert_eq!(
        out.stdout
            .matches("a datagram without its credentials (control data truncated: MSG_CTRUNC)")
            .count(),
        3,
        "{}",
        out.describe()
    );
    assert_eq!(out.summary_field("messages"), "5", "{}", out.describe());
}
