//! End-to-end tests of fifo-demo: real FIFOs, separate processes, shell
//! tools, signals, and paths that must be refused.

use std::fs::File;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use common::cleanup::PrivateDir;
use ipc_tests::{LONG, Output, Proc, SHORT, assert_usage_error, run};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

const FIFO_DEMO: &str = "fifo-demo";

/// A private directory for one test's paths, removed when the test ends.
fn test_dir() -> PrivateDir {
    PrivateDir::create("fifo-demo-test").expect("test dir")
}

fn mkfifo_0600(path: &Path) {
    nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn assert_ok(out: &Output) {
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("errors"), "0", "{}", out.describe());
    assert_eq!(out.summary_field("mechanism"), "fifo");
}

/// The private directory a story run announced in its `mkdir(...)` line.
fn story_dir(out: &str) -> PathBuf {
    let line = out
        .lines()
        .find(|l| l.starts_with("[parent] mkdir("))
        .expect("mkdir line");
    PathBuf::from(&line["[parent] mkdir(".len()..line.find(", 0700)").unwrap()])
}

#[test]
fn default_run_tells_the_whole_story_and_leaves_nothing() {
    let out = run(FIFO_DEMO, &[], SHORT);
    assert_ok(&out);
    assert_eq!(out.summary_field("messages"), "5");
    for expected in [
        "mode 0600",
        "O_WRONLY|O_NONBLOCK) → ENXIO",
        "O_RDONLY|O_NONBLOCK) → opened at once",
        "O_RDWR) → opened at once",
        "lseek(fd, 0, SEEK_SET) → ESPIPE",
        "not a fork",
        "[receiver] open(O_RDONLY) returned after",
        "at most PIPE_BUF",
        "[receiver] read() returned 0 (EOF)",
        "[receiver] checked, 1 writer(s): received=5 lost=0",
        "receiver pid",
        "removed the FIFO and its directory",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    // Both summaries: the receiver's and the parent's.
    assert_eq!(out.stdout.matches("summary: mechanism=fifo").count(), 2);
    let dir = story_dir(&out.stdout);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn four_writers_never_interleave() {
    let out = run(
        FIFO_DEMO,
        &["--writers", "4", "--count", "10000", "--quiet"],
        LONG,
    );
    assert_ok(&out);
    assert_eq!(out.summary_field("messages"), "40000");
    let per_writer = out
        .stdout
        .lines()
        .filter(|l| {
            l.starts_with("[receiver] writer ")
                && l.ends_with("received=10000 lost=0 duplicated=0 reordered=0 corrupted=0")
        })
        .count();
    assert_eq!(per_writer, 4, "{}", out.describe());
    assert!(!story_dir(&out.stdout).exists());
}

#[test]
fn frames_over_pipe_buf_are_announced_as_not_atomic() {
    // One writer cannot interleave with itself: the run still succeeds, and
    // the output says what would change with several writers.
    let out = run(
        FIFO_DEMO,
        &["--size", "10000", "--count", "20", "--quiet"],
        SHORT,
    );
    assert_ok(&out);
    assert!(
        out.stdout.contains("more than PIPE_BUF"),
        "{}",
        out.describe()
    );
}

#[test]
fn reader_waits_for_a_writer_in_a_separate_process() {
    let dir = test_dir();
    let path = dir.path().join("meet.fifo");
    let mut receiver = Proc::spawn(
        FIFO_DEMO,
        &["receiver", "--path", s(&path), "--count", "100"],
    );
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    sleep(Duration::from_millis(300));
    assert!(
        receiver.running(),
        "open(O_RDONLY) returned without a writer"
    );
    let sender = Proc::spawn(
        FIFO_DEMO,
        &["sender", "--path", s(&path), "--count", "100", "--quiet"],
    );
    let sent = sender.finish(SHORT);
    assert_ok(&sent);
    let received = receiver.finish(SHORT);
    assert_ok(&received);
    assert_eq!(received.summary_field("messages"), "100");
    assert!(received.stdout.contains("created; I remove it when I exit"));
    assert!(!path.exists(), "the receiver left its FIFO behind");
}

#[test]
fn writer_waits_for_a_reader() {
    let dir = test_dir();
    let path = dir.path().join("wait.fifo");
    mkfifo_0600(&path);
    let mut sender = Proc::spawn(FIFO_DEMO, &["sender", "--path", s(&path), "--count", "5"]);
    sender.wait_for_line(|l| l.contains("waits until a reader opens"), SHORT);
    sleep(Duration::from_millis(300));
    assert!(sender.running(), "open(O_WRONLY) returned without a reader");
    let receiver = Proc::spawn(FIFO_DEMO, &["receiver", "--path", s(&path), "--count", "5"]);
    assert_ok(&sender.finish(SHORT));
    let received = receiver.finish(SHORT);
    assert_ok(&received);
    // The FIFO was ours, not the receiver's: it is reused and left alone.
    assert!(
        received
            .stdout
            .contains("reusing it, and leaving it in place")
    );
    assert!(path.exists());
}

#[test]
fn nonblocking_writer_without_reader_gets_enxio() {
    let dir = test_dir();
    let path = dir.path().join("lonely.fifo");
    mkfifo_0600(&path);
    let out = run(
        FIFO_DEMO,
        &["sender", "--path", s(&path), "--nonblock"],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.describe());
    assert!(lines[0].contains("ENXIO") && lines[0].contains("start 'fifo-demo receiver"));
}

#[test]
fn shell_echo_reaches_the_receiver_in_lines_mode() {
    let dir = test_dir();
    let path = dir.path().join("lines.fifo");
    let mut receiver = Proc::spawn(FIFO_DEMO, &["receiver", "--path", s(&path), "--lines"]);
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    let status = Command::new("sh")
        .args([
            "-c",
            // One open for both lines: a second `> P` after the receiver
            // has gone would create a regular file at P.
            "{ echo hello; echo 'second line'; } > \"$1\"",
            "sh",
            s(&path),
        ])
        .status()
        .expect("sh");
    assert!(status.success());
    let out = receiver.finish(SHORT);
    assert_ok(&out);
    // echo's close is the last writer leaving: EOF ends the receiver.
    assert!(
        out.stdout.contains("[receiver] line 1: hello"),
        "{}",
        out.describe()
    );
    assert!(!path.exists());
}

#[test]
fn shell_cat_shows_what_the_sender_forwards() {
    let dir = test_dir();
    let path = dir.path().join("cat.fifo");
    mkfifo_0600(&path);
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "one\ntwo\nthree\n").unwrap();
    let cat = Command::new("sh")
        .args(["-c", "cat \"$1\"", "sh", s(&path)])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh");
    let sender = Proc::spawn_with(
        FIFO_DEMO,
        &["sender", "--path", s(&path), "--lines"],
        File::open(&input).unwrap(),
        Stdio::piped(),
    );
    assert_ok(&sender.finish(SHORT));
    let shown = cat.wait_with_output().expect("cat");
    assert!(shown.status.success());
    assert_eq!(String::from_utf8_lossy(&shown.stdout), "one\ntwo\nthree\n");
}

#[test]
fn receiver_stopped_by_sigint_removes_its_fifo() {
    let dir = test_dir();
    let path = dir.path().join("ctrl-c.fifo");
    let mut receiver = Proc::spawn(FIFO_DEMO, &["receiver", "--path", s(&path)]);
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    assert!(path.exists());
    sleep(Duration::from_millis(100));
    receiver.signal(Signal::SIGINT);
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 130, "{}", out.describe());
    assert!(out.stderr.contains("stopped by SIGINT, cleaned up"));
    assert!(!path.exists(), "FIFO left behind after Ctrl-C");
}

/// A long story run, with the receiver's pid and the private directory.
fn long_story() -> (Proc, Pid, PathBuf) {
    let mut proc = Proc::spawn(
        FIFO_DEMO,
        &["--count", "1000000000", "--size", "1024", "--quiet"],
    );
    let mkdir = proc.wait_for_line(|l| l.starts_with("[parent] mkdir("), SHORT);
    let dir = story_dir(&mkdir);
    let line = proc.wait_for_line(|l| l.contains("started the receiver, pid "), SHORT);
    let pid = line
        .split("pid ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    let pid = Pid::from_raw(pid.parse().expect("receiver pid"));
    proc.wait_for_line(|l| l.contains("one write()"), SHORT);
    sleep(Duration::from_millis(300)); // mid-transfer
    (proc, pid, dir)
}

#[test]
fn story_receiver_interrupted_mid_transfer_fails_the_writer_cleanly() {
    let (proc, receiver, dir) = long_story();
    kill(receiver, Signal::SIGINT).unwrap();
    let out = proc.finish(SHORT); // the receiver is gone too: the group is empty
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(out.stderr.contains("EPIPE"), "{}", out.describe());
    assert!(
        out.stderr.contains("stopped by SIGINT"),
        "receiver's line\n{}",
        out.describe()
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn story_parent_interrupted_stops_the_receiver_and_removes_everything() {
    for (signal, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let (proc, _receiver, dir) = long_story();
        proc.signal(signal);
        let out = proc.finish(SHORT);
        out.assert_no_panic();
        assert_eq!(out.code(), code, "{}", out.describe());
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn sender_killed_mid_frame_is_reported_by_the_receiver() {
    let dir = test_dir();
    let path = dir.path().join("cut.fifo");
    let mut receiver = Proc::spawn(
        FIFO_DEMO,
        &["receiver", "--path", s(&path), "--count", "1000", "--quiet"],
    );
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    // 1 MB frames through a 64 KiB FIFO: the writer is nearly always in
    // the middle of one.
    let sender = Proc::spawn(
        FIFO_DEMO,
        &[
            "sender",
            "--path",
            s(&path),
            "--count",
            "1000",
            "--size",
            "1000000",
            "--quiet",
        ],
    );
    sleep(Duration::from_millis(300));
    kill(sender.pid(), Signal::SIGKILL).unwrap();
    let killed = sender.finish(SHORT);
    assert!(killed.status.code().is_none(), "{}", killed.describe());
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("stream ended inside a frame") || out.stderr.contains("lost="),
        "{}",
        out.describe()
    );
    assert!(!path.exists());
}

#[test]
fn receiver_killed_gives_the_sender_epipe_and_the_stale_fifo_is_reused() {
    let dir = test_dir();
    let path = dir.path().join("stale.fifo");
    let mut receiver = Proc::spawn(FIFO_DEMO, &["receiver", "--path", s(&path), "--quiet"]);
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    let sender = Proc::spawn(
        FIFO_DEMO,
        &[
            "sender",
            "--path",
            s(&path),
            "--count",
            "1000000000",
            "--quiet",
        ],
    );
    receiver.wait_for_line(|l| l.contains("first message from writer"), SHORT);
    receiver.signal(Signal::SIGKILL); // runs no destructor: the FIFO stays
    let _ = receiver.finish(SHORT);
    let sent = sender.finish(SHORT);
    sent.assert_no_panic();
    assert_eq!(sent.code(), 1, "{}", sent.describe());
    assert!(
        sent.stderr.contains("failed with EPIPE after"),
        "{}",
        sent.describe()
    );
    assert!(path.exists(), "SIGKILL leaves the FIFO");

    // The next run finds the stale FIFO, says so, and works.
    let mut receiver = Proc::spawn(FIFO_DEMO, &["receiver", "--path", s(&path), "--count", "3"]);
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    assert_ok(&run(
        FIFO_DEMO,
        &["sender", "--path", s(&path), "--count", "3"],
        SHORT,
    ));
    let out = receiver.finish(SHORT);
    assert_ok(&out);
    assert!(
        out.stdout.contains("left by an earlier run"),
        "{}",
        out.describe()
    );
}

#[test]
fn paths_that_are_not_our_fifo_are_refused_and_left_untouched() {
    let dir = test_dir();
    let file = dir.path().join("file");
    std::fs::write(&file, "precious").unwrap();
    let link = dir.path().join("link");
    symlink(&file, &link).unwrap();
    let subdir = dir.path().join("subdir");
    std::fs::create_dir(&subdir).unwrap();
    for (path, what) in [
        (&file, "is a regular file"),
        (&link, "is a symbolic link"),
        (&subdir, "is a directory"),
    ] {
        for role in ["receiver", "sender"] {
            let out = run(FIFO_DEMO, &[role, "--path", s(path)], SHORT);
            assert_eq!(out.code(), 1, "{role} {what}\n{}", out.describe());
            let lines: Vec<&str> = out.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{}", out.describe());
            assert!(lines[0].contains(what), "{}", lines[0]);
        }
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(subdir.is_dir());
}

#[test]
fn another_users_fifo_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: cannot make a FIFO owned by another user; skipped");
        return;
    }
    let dir = test_dir();
    let path = dir.path().join("theirs.fifo");
    mkfifo_0600(&path);
    let nobody = nix::unistd::Uid::from_raw(65534);
    nix::unistd::chown(&path, Some(nobody), None).unwrap();
    for role in ["receiver", "sender"] {
        let out = run(FIFO_DEMO, &[role, "--path", s(&path)], SHORT);
        assert_eq!(out.code(), 1, "{}", out.describe());
        assert!(
            out.stderr.contains("owned by uid 65534, not by you"),
            "{}",
            out.describe()
        );
    }
    assert!(path.exists(), "someone else's FIFO must not be removed");
}

#[test]
fn bad_command_lines_exit_2_with_one_line_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "--bogus"),
        (&["--count", "x"], "--count"),
        (&["--size", "7"], "--size"),
        (&["--size", "16777213"], "--size"),
        (&["--writers", "0"], "--writers"),
        (&["--writers", "65"], "--writers"),
        (&["--path", "/tmp/x"], "--path"),
        (&["--lines"], "--lines"),
        (&["receiver"], "--path"),
        (&["sender", "--count", "3"], "--path"),
        (&["receiver", "--path"], "--path needs a value"),
        (&["receiver", "--path", "/tmp/x", "--size", "9"], "--size"),
        (
            &["sender", "--path", "/tmp/x", "--writers", "2"],
            "--writers",
        ),
        (
            &["sender", "--path", "/tmp/x", "--lines", "--count", "2"],
            "--lines",
        ),
        (&["talker"], "talker"),
    ];
    for (args, needle) in cases {
        assert_usage_error(FIFO_DEMO, args, needle);
    }
}
