//! memfd-demo end to end: the story's lessons, the two roles in two
//! processes, hostile senders the receiver must refuse, peers that die or
//! never come, Ctrl-C, bad command lines, and nothing left behind.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cleanup::PrivateDir;
use ipc_tests::{Proc, SHORT, assert_usage_error, run};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, connect, sendmsg, socket,
};
use nix::unistd::{ftruncate, write};

const DEMO: &str = "memfd-demo";

fn socket_path(dir: &PrivateDir) -> PathBuf {
    dir.path().join("memfd.sock")
}

/// Connect to a receiver at `path`, waiting for it to listen.
fn connect_to(path: &Path) -> OwnedFd {
    let addr = UnixAddr::new(path).unwrap();
    let deadline = Instant::now() + SHORT;
    loop {
        let sock = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => return sock,
            Err(e) if Instant::now() > deadline => panic!("connect({}): {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn send(sock: &OwnedFd, fd: &OwnedFd) {
    let fds = [fd.as_raw_fd()];
    sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &[IoSlice::new(b"hostile")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

/// A memfd laid out like the demo's (magic, count, size, then `have` real
/// messages' worth of bytes), with the given seals.
fn forged(count_in_header: u64, have: u64, seals: SealFlag) -> OwnedFd {
    let fd = memfd_create("forged", MFdFlags::MFD_ALLOW_SEALING).unwrap();
    let len = 24 + have as usize * 64;
    ftruncate(&fd, len as libc::off_t).unwrap();
    let mut header = b"MEMFDDM1".to_vec();
    header.extend(count_in_header.to_le_bytes());
    header.extend(64u64.to_le_bytes());
    write(&fd, &header).unwrap();
    if !seals.is_empty() {
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
    }
    fd
}

fn assert_no_socket_left(path: &Path) {
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn story_shows_every_lesson() {
    let out = run(DEMO, &[], SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    for lesson in [
        "→ /memfd:memfd-demo (deleted); fstat: st_nlink = 0",
        "F_ADD_SEALS(F_SEAL_WRITE) → EBUSY",
        "F_GET_SEALS = F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE",
        "ftruncate smaller → EPERM, ftruncate larger → EPERM, write → EPERM",
        "was killed by SIGBUS",
        "the same ftruncate(0) on a sealed memfd → EPERM",
        "[receiver] recvmsg: SCM_RIGHTS gave us fd",
        "checked 5 messages of 64 bytes in place: received=5 lost=0",
        "an unsealed memfd: refused: the object lacks F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE",
        "refused: the header says 3 messages of 64 bytes, the object has 152 bytes",
        "pread sees \"after!\"",
        "/memfd:memfd-demo-victim (deleted)",
        "it was killed by SIGKILL",
    ] {
        assert!(
            out.stdout.contains(lesson),
            "missing {lesson:?}\n{}",
            out.describe()
        );
    }
    assert_eq!(out.stdout.matches("summary:").count(), 1, "{}", out.stdout);
    assert_eq!(out.summary_field("errors"), "0");
    assert_eq!(out.summary_field("messages"), "5");
}

#[test]
fn story_with_many_large_messages() {
    let out = run(
        DEMO,
        &["--count", "2000", "--size", "65536", "--quiet"],
        SHORT,
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("messages"), "2000");
    assert_eq!(out.summary_field("bytes"), (2000u64 * 65536).to_string());
    assert_eq!(out.summary_field("errors"), "0");
}

#[test]
fn two_roles_in_two_processes_either_order() {
    for sender_first in [false, true] {
        let dir = PrivateDir::create("memfd-demo-test").unwrap();
        let path = socket_path(&dir);
        let p = path.to_str().unwrap();
        let start_receiver = || Proc::spawn(DEMO, &["receiver", "--path", p]);
        let start_sender = || {
            Proc::spawn(
                DEMO,
                &["sender", "--path", p, "--count", "300", "--size", "4096"],
            )
        };
        let (receiver, sender) = if sender_first {
            let s = start_sender();
            std::thread::sleep(Duration::from_millis(300));
            (start_receiver(), s)
        } else {
            let r = start_receiver();
            (r, start_sender())
        };
        let s = sender.finish(SHORT);
        let r = receiver.finish(SHORT);
        assert_eq!(s.code(), 0, "{}", s.describe());
        assert_eq!(r.code(), 0, "{}", r.describe());
        assert_eq!(r.summary_field("messages"), "300");
        assert_eq!(r.summary_field("errors"), "0");
        assert_eq!(s.summary_field("errors"), "0");
        assert!(
            s.stdout
                .contains("the receiver answered: checked 300 errors 0"),
            "{}",
            s.describe()
        );
        assert_no_socket_left(&path);
    }
}

#[test]
fn hostile_senders_are_refused() {
    type Attack = Box<dyn Fn(&OwnedFd)>;
    let cases: [(&str, Attack); 4] = [
        (
            "lacks F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE",
            Box::new(|sock| send(sock, &forged(2, 2, SealFlag::empty()))),
        ),
        (
            "lacks F_SEAL_WRITE",
            Box::new(|sock| {
                send(
                    sock,
                    &forged(2, 2, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
                )
            }),
        ),
        (
            "the header says 1000 messages of 64 bytes, the object has 152 bytes",
            Box::new(|sock| {
                let all = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
                send(sock, &forged(1000, 2, all))
            }),
        ),
        (
            "closed the connection without sending a descriptor",
            Box::new(|sock| drop(sock.try_clone().unwrap())),
        ),
    ];
    for (want, attack) in cases {
        let dir = PrivateDir::create("memfd-demo-test").unwrap();
        let path = socket_path(&dir);
        let receiver = Proc::spawn(DEMO, &["receiver", "--path", path.to_str().unwrap()]);
        let sock = connect_to(&path);
        attack(&sock);
        drop(sock);
        let out = receiver.finish(SHORT);
        assert_eq!(out.code(), 1, "{want}\n{}", out.describe());
        assert!(out.stderr.contains(want), "{want}\n{}", out.describe());
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
        assert_no_socket_left(&path);
    }
}

#[test]
fn receiver_gives_up_after_its_timeout_and_refuses_a_path_that_exists() {
    let dir = PrivateDir::create("memfd-demo-test").unwrap();
    let path = socket_path(&dir);
    let started = Instant::now();
    let out = run(
        DEMO,
        &[
            "receiver",
            "--path",
            path.to_str().unwrap(),
            "--timeout",
            "1",
        ],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("no sender connecting within 1 s"),
        "{}",
        out.describe()
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_no_socket_left(&path);

    std::fs::write(&path, b"somebody's file").unwrap();
    let out = run(DEMO, &["receiver", "--path", path.to_str().unwrap()], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(out.stderr.contains("bind("), "{}", out.describe());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"somebody's file",
        "not ours: left alone"
    );
}

#[test]
fn sender_notices_a_receiver_killed_before_its_verdict() {
    let dir = PrivateDir::create("memfd-demo-test").unwrap();
    let path = socket_path(&dir);
    let p = path.to_str().unwrap();
    let mut receiver = Proc::spawn(DEMO, &["receiver", "--path", p]);
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    // Stopped: the kernel still queues the connection and the descriptor,
    // but nobody answers; then it dies without a word.
    receiver.signal(Signal::SIGSTOP);
    let mut sender = Proc::spawn(DEMO, &["sender", "--path", p]);
    sender.wait_for_line(|l| l.contains("sendmsg(SCM_RIGHTS)"), SHORT);
    receiver.signal(Signal::SIGKILL);
    let started = Instant::now();
    let out = sender.finish(SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("without a verdict"),
        "{}",
        out.describe()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    receiver.finish(SHORT).assert_stopped_by(Signal::SIGKILL);
    // The receiver's socket file stays after SIGKILL (no destructor ran);
    // the private directory of this test removes it.
}

#[test]
fn ctrl_c_stops_each_role_and_leaves_nothing() {
    let dir = PrivateDir::create("memfd-demo-test").unwrap();
    let path = socket_path(&dir);
    let p = path.to_str().unwrap();
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let mut receiver = Proc::spawn(DEMO, &["receiver", "--path", p]);
        receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
        receiver.signal(signal);
        receiver.finish(SHORT).assert_stopped_by(signal);
        assert_no_socket_left(&path);
        // A sender waiting for a receiver that is not there yet.
        let sender = Proc::spawn(DEMO, &["sender", "--path", p]);
        std::thread::sleep(Duration::from_millis(300));
        sender.signal(signal);
        sender.finish(SHORT).assert_stopped_by(signal);
    }
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let mut story = Proc::spawn(DEMO, &[]);
        story.wait_for_line(|l| l.contains("== 4."), SHORT);
        story.signal(signal);
        story.finish(SHORT).assert_stopped_by(signal);
    }
}

#[test]
fn bad_command_lines() {
    for (args, needle) in [
        (&["--bogus"][..], "--bogus"),
        (&["--size", "4"], "--size"),
        (&["--count", "0"], "--count"),
        (&["--count", "100000", "--size", "100000"], "1 GiB"),
        (&["--timeout", "0"], "--timeout"),
        (&["receiver"], "--path"),
        (&["sender", "--count", "3"], "--path"),
        (&["receiver", "--path", "/tmp/x", "--count", "3"], "--count"),
        (&["nonsense"], "unknown role"),
    ] {
        assert_usage_error(DEMO, args, needle);
    }
    let help = run(DEMO, &["--help"], SHORT);
    assert_eq!(help.code(), 0);
    assert!(help.stdout.contains("memfd-demo receiver --path SOCKET"));
}
