//! End-to-end tests of eventfd-demo: the story's lessons, the two roles in
//! two processes, peers that die, Ctrl-C, stale socket files, and command
//! lines that must be refused.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::cleanup::PrivateDir;
use ipc_tests::{LONG, Output, Proc, SHORT, assert_usage_error, run};
use nix::sys::signal::{Signal, killpg};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

const DEMO: &str = "eventfd-demo";

fn test_dir() -> PrivateDir {
    PrivateDir::create("eventfd-demo-test").expect("test dir")
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn assert_ok(out: &Output, events: u64) {
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("mechanism"), "eventfd");
    assert_eq!(out.summary_field("errors"), "0", "{}", out.describe());
    assert_eq!(out.summary_field("messages"), events.to_string());
    assert_eq!(out.summary_field("bytes"), (8 * events).to_string());
}

/// The story's private directory, from its `mkdir(...)` line.
fn story_dir(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("[parent] mkdir("))
        .unwrap_or_else(|| panic!("no mkdir line\n{stdout}"));
    PathBuf::from(&line["[parent] mkdir(".len()..line.find(", 0700)").unwrap()])
}

/// The one summary line, and it comes last.
fn assert_one_summary_last(out: &Output) {
    let summaries = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("summary:"))
        .count();
    assert_eq!(summaries, 1, "{}", out.describe());
    let last = out.stdout.lines().rev().find(|l| !l.trim().is_empty());
    assert!(
        last.is_some_and(|l| l.starts_with("summary: mechanism=eventfd ")),
        "{}",
        out.describe()
    );
}

#[test]
fn story_shows_every_rule_and_leaves_nothing() {
    let out = run(DEMO, &[], SHORT);
    assert_ok(&out, 5);
    assert_one_summary_last(&out);
    for expected in [
        // 1. counter mode, between parent and forked child
        "[child] write(fd, 4)",
        "[parent] read(fd) → 10: four writes added up",
        "poll(fd, POLLIN, 0) → not readable: that read reset the counter to 0",
        "read(fd, buf, 4) → EINVAL",
        // 2. EFD_SEMAPHORE
        "[child] write(fd, 3)",
        "read(fd) → 1; the counter is now 2",
        "read(fd) → 1; the counter is now 0",
        "read(fd) → EAGAIN: all three taken, one per read",
        // 3. blocking rules
        "eventfd(0, EFD_NONBLOCK), read(fd) → EAGAIN at once",
        "the child is asleep in read(2)",
        "[child] read(fd) returned 7 after",
        // 4. overflow
        "write(fd, 2^64-2 = 18446744073709551614) → accepted",
        "write(fd, 1) → EAGAIN: the sum would pass 2^64-2",
        "write(fd, 2^64-1) → EINVAL",
        "the child is asleep in write(2)",
        "read(fd) → 1: the child's write went through",
        // 5. epoll
        "level-triggered",
        "epoll_wait → the pipe: read → \"ping\"",
        "epoll_wait → the eventfd: read → 1",
        "epoll_wait → the pipe: read → 0 (EOF)",
        "sem_wait blocks on the semaphore alone",
        // 6. SCM_RIGHTS to a fresh process
        "not a fork, so it inherits no counter of ours",
        "(SO_PEERCRED)",
        "[client] connect(",
        "eventfds open in this process: 0",
        "SCM_RIGHTS fds",
        "(no MSG_CTRUNC), both anon_inode:[eventfd]; eventfds open now: 2",
        "[client] event 5: read → 1",
        "[client] counted 5 of 5 events, none left on the counter",
        "the client answers: it counted 5 events, exactly what we posted",
        "removed the socket file and the private directory",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    let dir = story_dir(&out.stdout);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn story_takes_count_size_and_quiet() {
    let out = run(DEMO, &["--count", "300", "--size", "8", "--quiet"], SHORT);
    assert_ok(&out, 300);
    assert_one_summary_last(&out);
    assert!(out.stdout.contains("it counted 300 events"));
    assert!(
        !out.stdout.contains("posted event") && !out.stdout.contains("[client] event "),
        "--quiet printed per-event lines\n{}",
        out.describe()
    );
    assert!(!story_dir(&out.stdout).exists());
}

#[test]
fn story_survives_a_storm_of_eintr() {
    // SIGWINCH interrupts every blocked call (the tests' DEMO_EINTR_ON_SIGWINCH
    // hook): epoll_wait, the children's blocked read and write, poll, accept.
    let mut story = Proc::spawn(DEMO, &["--count", "2000", "--quiet"]);
    let pgid = story.pid();
    let deadline = Instant::now() + LONG;
    while story.running() && Instant::now() < deadline {
        let _ = killpg(pgid, Signal::SIGWINCH);
        sleep(Duration::from_millis(2));
    }
    let out = story.finish(SHORT);
    assert_ok(&out, 2000);
    assert!(!story_dir(&out.stdout).exists());
}

#[test]
fn server_and_client_in_two_processes() {
    let dir = test_dir();
    let sock = dir.path().join("two.sock");
    let mut server = Proc::spawn(DEMO, &["server", "--path", s(&sock), "--count", "50"]);
    server.wait_for_line(|l| l.contains("waiting for a client"), SHORT);
    // The server's wait for its first client is deliberately unbounded.
    sleep(Duration::from_millis(300));
    assert!(server.running());
    let mode = std::fs::metadata(&sock).expect("socket file").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    // No --count: the client takes the number the server announces.
    let client = run(DEMO, &["client", "--path", s(&sock)], SHORT);
    assert_ok(&client, 50);
    assert!(client.stdout.contains("recvmsg → 50 events to come"));
    assert!(client.stdout.contains("[client] event 50: read → 1"));
    let served = server.finish(SHORT);
    assert_ok(&served, 50);
    assert!(served.stdout.contains("[server] posted event 50"));
    assert!(!sock.exists(), "the server left its socket file");
}

#[test]
fn a_client_expecting_another_count_is_refused_and_both_say_so() {
    let dir = test_dir();
    let sock = dir.path().join("count.sock");
    let mut server = Proc::spawn(DEMO, &["server", "--path", s(&sock), "--count", "4"]);
    server.wait_for_line(|l| l.contains("waiting for a client"), SHORT);
    let client = run(DEMO, &["client", "--path", s(&sock), "--count", "5"], SHORT);
    assert_eq!(client.code(), 1, "{}", client.describe());
    assert!(
        client
            .stderr
            .contains("the server posts 4 events, but --count 5"),
        "{}",
        client.describe()
    );
    let served = server.finish(SHORT);
    assert_eq!(served.code(), 1, "{}", served.describe());
    assert!(
        served.stderr.contains("the client left"),
        "{}",
        served.describe()
    );
    assert!(!sock.exists());
}

#[test]
fn bad_command_lines_are_refused_with_one_line() {
    for (args, needle) in [
        (&["--count", "0"][..], "--count"),
        (&["--count", "abc"], "--count"),
        (&["--count", "1000000001"], "--count"),
        (&["--size", "64"], "8 is the only size"),
        (&["--timeout", "0"], "--timeout"),
        (&["--timeout", "86401"], "--timeout"),
        (&["--timeout"], "--timeout needs a value"),
        (&["server"], "need --path"),
        (&["client", "--count", "3"], "need --path"),
        (
            &["--path", "/tmp/x.sock"],
            "--path is not an option of the story",
        ),
        (
            &["server", "--path", "/tmp/x.sock", "--no-summary"],
            "--no-summary is not an option of the server",
        ),
        (&["bogus"], "unknown role 'bogus'"),
        (&["--bogus"], "unknown option '--bogus'"),
        (&["client", "--path"], "--path needs a value"),
    ] {
        assert_usage_error(DEMO, args, needle);
    }
    let help = run(DEMO, &["--help"], SHORT);
    assert_eq!(help.code(), 0);
    assert!(help.stdout.contains("--timeout SECS"));
}

#[test]
fn another_user_cannot_connect_to_the_0600_socket() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("setpriv needs root: skipped");
        return;
    }
    let dir = test_dir();
    // Let others through the directory, so that only the socket's own
    // mode (0600) stands in their way.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let sock = dir.path().join("mine.sock");
    let mut server = Proc::spawn(DEMO, &["server", "--path", s(&sock), "--count", "1"]);
    server.wait_for_line(|l| l.contains("waiting for a client"), SHORT);
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(ipc_tests::bin(DEMO))
        .args(["client", "--path", s(&sock)])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let out = Proc::start(cmd).finish(SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("EACCES: the socket file (mode 0600)"),
        "{}",
        out.describe()
    );
    // The server never saw it, and still serves its own user.
    assert!(server.running());
    let client = run(DEMO, &["client", "--path", s(&sock)], SHORT);
    assert_ok(&client, 1);
    assert_ok(&server.finish(SHORT), 1);
}

/// A hostile server: accepts one client, reads its hello, then passes
/// `fds` (not what an eventfd-demo server passes) with a count of 5.
fn fake_server(
    dir: &Path,
    fds: Vec<std::os::fd::OwnedFd>,
) -> (PathBuf, std::thread::JoinHandle<()>) {
    use nix::sys::socket::{
        Backlog, ControlMessage, MsgFlags, accept, bind, listen, recv, sendmsg,
    };
    let sock = dir.join("fake.sock");
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(listener.as_raw_fd(), &UnixAddr::new(&sock).unwrap()).expect("bind");
    listen(&listener, Backlog::new(1).unwrap()).expect("listen");
    let handle = std::thread::spawn(move || {
        let conn = accept(&listener).expect("accept");
        let mut hello = [0u8; 8];
        recv(conn.as_raw_fd(), &mut hello, MsgFlags::empty()).expect("recv hello");
        let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        sendmsg::<()>(
            conn.as_raw_fd(),
            &[std::io::IoSlice::new(&5u64.to_le_bytes())],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        // Keep the connection until the client has looked.
        let _ = recv(conn.as_raw_fd(), &mut hello, MsgFlags::empty());
        drop(conn);
    });
    (sock, handle)
}

#[test]
fn a_client_refuses_descriptors_that_are_not_two_eventfds() {
    // A pipe instead of eventfds: checked in /proc/self/fd before any use.
    let dir = test_dir();
    let (r, w) = nix::unistd::pipe().unwrap();
    let (sock, server) = fake_server(dir.path(), vec![r, w]);
    let out = run(DEMO, &["client", "--path", s(&sock)], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("which is pipe:[") && out.stderr.contains("not an eventfd"),
        "{}",
        out.describe()
    );
    server.join().unwrap();

    // Three fds where the client has room for two: the kernel truncates
    // the control data and says so with MSG_CTRUNC.
    let dir = test_dir();
    let fds = (0..3)
        .map(|_| std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
        .collect();
    let (sock, server) = fake_server(dir.path(), fds);
    let out = run(DEMO, &["client", "--path", s(&sock)], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(out.stderr.contains("MSG_CTRUNC"), "{}", out.describe());
    server.join().unwrap();
}

#[test]
fn a_client_without_a_server_says_what_to_do() {
    let dir = test_dir();
    let sock = dir.path().join("nobody.sock");
    let out = run(DEMO, &["client", "--path", s(&sock)], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.describe());
    assert!(lines[0].contains("start 'eventfd-demo server --path"));
}

/// A server and a client moving many events; returns both once the
/// client has received its counters.
fn busy_pair(dir: &Path) -> (Proc, Proc, PathBuf) {
    let sock = dir.join("busy.sock");
    let mut server = Proc::spawn(
        DEMO,
        &[
            "server",
            "--path",
            s(&sock),
            "--count",
            "1000000000",
            "--quiet",
        ],
    );
    server.wait_for_line(|l| l.contains("waiting for a client"), SHORT);
    let mut client = Proc::spawn(DEMO, &["client", "--path", s(&sock), "--quiet"]);
    client.wait_for_line(|l| l.contains("SCM_RIGHTS fds"), SHORT);
    sleep(Duration::from_millis(200));
    assert!(server.running() && client.running());
    (server, client, sock)
}

#[test]
fn the_server_notices_a_killed_client() {
    let dir = test_dir();
    let (server, client, sock) = busy_pair(dir.path());
    client.signal(Signal::SIGKILL);
    let started = Instant::now();
    let out = server.finish(SHORT);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("the client left (EOF on the socket) after"),
        "{}",
        out.describe()
    );
    assert!(!sock.exists(), "the server left its socket file");
    client.finish(SHORT).assert_stopped_by(Signal::SIGKILL);
}

#[test]
fn the_client_notices_a_killed_server() {
    let dir = test_dir();
    let (server, client, _sock) = busy_pair(dir.path());
    server.signal(Signal::SIGKILL);
    let started = Instant::now();
    let out = client.finish(SHORT);
    assert!(started.elapsed() < Duration::from_secs(10));
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    // The eventfd itself never says so: the client holds it too. The
    // socket does.
    assert!(
        out.stderr
            .contains("the server left (EOF on the socket) after"),
        "{}",
        out.describe()
    );
    server.finish(SHORT).assert_stopped_by(Signal::SIGKILL);
}

#[test]
fn a_client_that_goes_silent_is_timed_out() {
    let dir = test_dir();
    let sock = dir.path().join("silent.sock");
    let mut server = Proc::spawn(DEMO, &["server", "--path", s(&sock), "--timeout", "1"]);
    server.wait_for_line(|l| l.contains("waiting for a client"), SHORT);
    // A client that connects, takes nothing and never acknowledges.
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    connect(fd.as_raw_fd(), &UnixAddr::new(&sock).unwrap()).expect("connect");
    let out = server.finish(SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("no progress from the client for 1 s (--timeout)"),
        "{}",
        out.describe()
    );
    assert!(!sock.exists());
    drop(fd);
}

#[test]
fn ctrl_c_stops_a_waiting_server_and_removes_its_socket() {
    let dir = test_dir();
    let sock = dir.path().join("ctrl-c.sock");
    let mut server = Proc::spawn(DEMO, &["server", "--path", s(&sock)]);
    server.wait_for_line(|l| l.contains("waiting for a client"), SHORT);
    assert!(sock.exists());
    server.signal(Signal::SIGINT);
    let out = server.finish(SHORT);
    out.assert_stopped_by(Signal::SIGINT);
    assert!(out.stderr.contains("stopped by SIGINT, cleaned up"));
    assert!(!sock.exists(), "socket file left behind after Ctrl-C");
}

#[test]
fn ctrl_c_in_the_story_leaves_nothing_and_exits_130() {
    // Once to the whole group, as a terminal does; once to the story
    // alone (its client must then be stopped by the story itself); and
    // SIGTERM.
    for (signal, group) in [
        (Signal::SIGINT, true),
        (Signal::SIGINT, false),
        (Signal::SIGTERM, false),
    ] {
        let mut story = Proc::spawn(DEMO, &["--count", "1000000000", "--quiet"]);
        let mkdir = story.wait_for_line(|l| l.starts_with("[parent] mkdir("), SHORT);
        let dir = story_dir(&mkdir);
        story.wait_for_line(|l| l.contains("sendmsg(count="), SHORT);
        sleep(Duration::from_millis(200));
        if group {
            killpg(story.pid(), signal).expect("killpg");
        } else {
            story.signal(signal);
        }
        // finish() also checks that no process of the group is left.
        let out = story.finish(SHORT);
        out.assert_stopped_by(signal);
        assert!(
            !dir.exists(),
            "{signal:?} (group: {group}): {} left behind\n{}",
            dir.display(),
            out.describe()
        );
    }
}

#[test]
fn a_stale_socket_file_of_ours_is_replaced_anything_else_is_refused() {
    let dir = test_dir();
    // A socket file nobody listens on: what a SIGKILLed server leaves.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let mut server = Proc::spawn(DEMO, &["server", "--path", s(&stale), "--count", "2"]);
    server.wait_for_line(|l| l.contains("waiting for a client"), SHORT);
    let client = run(DEMO, &["client", "--path", s(&stale), "--quiet"], SHORT);
    assert_ok(&client, 2);
    let served = server.finish(SHORT);
    assert_ok(&served, 2);
    assert!(
        served
            .stdout
            .contains("left by a server that died; replacing it")
    );
    assert!(!stale.exists());

    // A regular file is never removed.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"keep me").unwrap();
    let out = run(DEMO, &["server", "--path", s(&file)], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("is not a socket: refusing to replace it")
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // A live server's socket is not taken over.
    let live = dir.path().join("live.sock");
    let mut first = Proc::spawn(DEMO, &["server", "--path", s(&live)]);
    first.wait_for_line(|l| l.contains("waiting for a client"), SHORT);
    let second = run(DEMO, &["server", "--path", s(&live)], SHORT);
    assert_eq!(second.code(), 1, "{}", second.describe());
    assert!(second.stderr.contains("a server is listening on"));
    assert!(live.exists());
    // The probe that found it alive was only a connection that closed:
    // the live server shrugs it off and keeps waiting.
    first.wait_for_line(|l| l.contains("a connection closed without a word"), SHORT);
    assert!(first.running());
    first.signal(Signal::SIGTERM);
    first.finish(SHORT).assert_stopped_by(Signal::SIGTERM);
    assert!(!live.exists());
}

#[test]
fn ctrl_c_while_a_forked_child_is_blocked_leaves_no_process() {
    // Steps 3 and 4 leave a child asleep in read(2) or write(2) for a
    // while, step 5 a child feeding the epoll loop: Ctrl-C to the group
    // (the child gets it too) or to the story alone (the story must kill
    // its child), then finish() checks that the whole group is gone.
    for trigger in [
        "a child reads it while it is 0",
        "a child writes 1 more",
        "epoll_create1 + epoll_ctl(ADD)",
    ] {
        for group in [true, false] {
            let mut story = Proc::spawn(DEMO, &[]);
            story.wait_for_line(|l| l.contains(trigger), SHORT);
            sleep(Duration::from_millis(100));
            if group {
                killpg(story.pid(), Signal::SIGINT).expect("killpg");
            } else {
                story.signal(Signal::SIGINT);
            }
            let out = story.finish(SHORT);
            assert_eq!(
                out.code(),
                130,
                "{trigger} (group: {group})\n{}",
                out.describe()
            );
            out.assert_no_panic();
        }
    }
}

#[test]
fn a_second_ctrl_c_still_leaves_nothing() {
    // The second SIGINT ends the story at once; common::cleanup's handler
    // removes the socket file and the directory and stops the client.
    for gap in [20, 300] {
        let mut story = Proc::spawn(DEMO, &["--count", "1000000000", "--quiet"]);
        let mkdir = story.wait_for_line(|l| l.starts_with("[parent] mkdir("), SHORT);
        let dir = story_dir(&mkdir);
        story.wait_for_line(|l| l.contains("sendmsg(count="), SHORT);
        killpg(story.pid(), Signal::SIGINT).expect("killpg");
        sleep(Duration::from_millis(gap));
        let _ = killpg(story.pid(), Signal::SIGINT);
        let out = story.finish(SHORT);
        out.assert_no_panic();
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.code() == Some(130) || out.status.signal() == Some(libc::SIGINT),
            "gap {gap} ms\n{}",
            out.describe()
        );
        assert!(!dir.exists(), "gap {gap} ms: {} left", dir.display());
    }
}
