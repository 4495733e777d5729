//! End-to-end tests of socket-demo: real sockets, real processes, a
//! client written in Python, faulty and dying peers.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use common::cleanup::PrivateDir;
use ipc_tests::{LONG, Output, Proc, SHORT, assert_usage_error, run};
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
