//! End-to-end tests of fifo-demo: real FIFOs, separate processes, shell
//! tools, signals, and paths that must be refused.

use std::fs::File;
use std::os::unix::fs::{OpenOptionsExt, symlink};
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
    out.assert_clean();
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

/// Exactly one summary line, and it is the last line of stdout.
fn assert_one_summary_at_the_end(out: &Output) {
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(all.matches("summary:").count(), 1, "{}", out.describe());
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("summary: "), "{}", out.describe());
}

#[test]
fn default_run_tells_the_whole_story_and_leaves_nothing() {
    let out = run(FIFO_DEMO, &[], SHORT);
    assert_ok(&out);
    // Two writers by default: the parent shows the gap between them.
    assert_eq!(out.summary_field("messages"), "10");
    for expected in [
        "mode 0600",
        "O_WRONLY|O_NONBLOCK) → ENXIO",
        "O_RDONLY|O_NONBLOCK) → opened at once",
        "O_RDWR) → opened at once",
        "lseek(fd, 0, SEEK_SET) → ESPIPE",
        "not a fork",
        "[parent] open(O_RDONLY) returned after",
        "the dummy writer fd",
        "writer 1 has exited, so its write end is closed, and writer 2 is not started yet",
        "poll(POLLIN, 200 ms) → 0: nothing to read and no EOF",
        "at most PIPE_BUF",
        "end marker: it sent 5 message(s); 2 writer(s) done",
        "read() → 0 (EOF)",
        "[parent] checked, 2 writer(s): received=10 lost=0",
        "removed the FIFO and its directory",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    assert_one_summary_at_the_end(&out);
    let dir = story_dir(&out.stdout);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn story_with_any_number_of_writers_ends_every_time() {
    // Before the fix the first writer's close could reach the reader before
    // the others opened: EOF, the reader left, a late writer hung forever
    // in open(O_WRONLY). Now: every writer count, count and size, every run.
    for writers in 1..=6u32 {
        for (count, size) in [("1", "8"), ("200", "64"), ("20", "10000")] {
            let w = writers.to_string();
            let out = run(
                FIFO_DEMO,
                &["--writers", &w, "--count", count, "--size", size, "--quiet"],
                LONG,
            );
            assert_ok(&out);
            let total = u64::from(writers) * count.parse::<u64>().unwrap();
            assert_eq!(out.summary_field("messages"), total.to_string());
            assert_one_summary_at_the_end(&out);
            assert!(!story_dir(&out.stdout).exists());
        }
    }
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
            l.starts_with("[parent] writer ")
                && l.ends_with("received=10000 lost=0 duplicated=0 reordered=0 corrupted=0")
        })
        .count();
    assert_eq!(per_writer, 4, "{}", out.describe());
    assert!(!story_dir(&out.stdout).exists());
}

#[test]
fn frames_over_pipe_buf_are_announced_as_not_atomic() {
    // Such frames could interleave, so the writers take turns: the run
    // succeeds, and the output says why.
    let out = run(
        FIFO_DEMO,
        &[
            "--writers",
            "3",
            "--size",
            "10000",
            "--count",
            "20",
            "--quiet",
        ],
        SHORT,
    );
    assert_ok(&out);
    assert!(
        out.stdout.contains("more than PIPE_BUF") && out.stdout.contains("take turns"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("started writer 3, pid "),
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
    // A FIFO of ours already there is taken over and removed at the end.
    assert!(
        received
            .stdout
            .contains("taking it over; I remove it when I exit"),
        "{}",
        received.describe()
    );
    assert!(!path.exists());
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

/// A long story run, with the first writer's pid and the private directory.
fn long_story(writers: &str) -> (Proc, Pid, PathBuf) {
    let mut proc = Proc::spawn(
        FIFO_DEMO,
        &[
            "--writers",
            writers,
            "--count",
            "1000000000",
            "--size",
            "1024",
            "--quiet",
        ],
    );
    let mkdir = proc.wait_for_line(|l| l.starts_with("[parent] mkdir("), SHORT);
    let dir = story_dir(&mkdir);
    let line = proc.wait_for_line(|l| l.contains("started writer 1, pid "), SHORT);
    let pid = line
        .split("pid ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    let pid = Pid::from_raw(pid.parse().expect("writer pid"));
    proc.wait_for_line(|l| l.contains("first message from writer"), SHORT);
    sleep(Duration::from_millis(300)); // mid-transfer
    (proc, pid, dir)
}

#[test]
fn story_writer_interrupted_mid_transfer_fails_the_story_cleanly() {
    let (proc, writer, dir) = long_story("1");
    kill(writer, Signal::SIGINT).unwrap();
    let out = proc.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("before the end marker of writer(s)"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("stopped by SIGINT"),
        "the writer's line\n{}",
        out.describe()
    );
    assert_one_summary_at_the_end(&out);
    assert_ne!(out.summary_field("errors"), "0");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn story_parent_interrupted_stops_the_writers_and_removes_everything() {
    for (signal, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let (proc, _writer, dir) = long_story("1");
        proc.signal(signal);
        let out = proc.finish(SHORT);
        out.assert_no_panic();
        assert_eq!(out.code(), code, "{}", out.describe());
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn story_stopped_by_a_signal_to_the_whole_group_exits_128_plus_n() {
    // A terminal's Ctrl-C reaches the parent and every writer at once;
    // whatever the writers then report (EPIPE, exit 130), the story says
    // 130. Before the fix about 3 runs in 8 exited 1.
    for round in 0..6 {
        let signal = if round % 2 == 0 {
            Signal::SIGINT
        } else {
            Signal::SIGTERM
        };
        let mut proc = Proc::spawn(
            FIFO_DEMO,
            &["--writers", "4", "--count", "1000000", "--quiet"],
        );
        let mkdir = proc.wait_for_line(|l| l.starts_with("[parent] mkdir("), SHORT);
        let dir = story_dir(&mkdir);
        proc.wait_for_line(|l| l.contains("started writer 4, pid "), SHORT);
        sleep(Duration::from_millis(100 * (round + 1)));
        nix::sys::signal::killpg(proc.pid(), signal).unwrap();
        let out = proc.finish(SHORT);
        out.assert_stopped_by(signal);
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
        out.stderr.contains("stream ended inside a frame")
            || out.stderr.contains("before the end marker"),
        "{}",
        out.describe()
    );
    assert!(!path.exists());
}

#[test]
fn receiver_killed_gives_the_sender_epipe_and_the_next_one_removes_the_stale_fifo() {
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
        out.stdout.contains("left by an earlier run") && out.stdout.contains("taking it over"),
        "{}",
        out.describe()
    );
    // Before the fix the stale FIFO was "reused, and left in place" forever.
    assert!(!path.exists(), "the stale FIFO was left behind again");
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
        (&["--timeout", "0"], "--timeout"),
        (&["--timeout", "86401"], "--timeout"),
        (&["--timeout", "x"], "--timeout"),
        (&["--count", "0"], "--count"),
        (&["--count", "1000000001"], "--count"),
        (&["--no-summary"], "--no-summary"),
        (
            &["receiver", "--path", "/tmp/x", "--lines", "--writers", "2"],
            "--writers",
        ),
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

#[test]
fn receiver_serves_writers_that_do_not_overlap() {
    // TLPI's dummy writer fd: the first sender's close is not EOF for a
    // receiver that holds a write end of its own. Before the fix the first
    // close ended the receiver and the second sender found no reader.
    let dir = test_dir();
    let path = dir.path().join("serial.fifo");
    let mut receiver = Proc::spawn(
        FIFO_DEMO,
        &["receiver", "--path", s(&path), "--writers", "2", "--quiet"],
    );
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    for _ in 0..2 {
        let sent = run(
            FIFO_DEMO,
            &[
                "sender",
                "--path",
                s(&path),
                "--count",
                "7",
                "--timeout",
                "10",
            ],
            SHORT,
        );
        assert_ok(&sent);
        assert_one_summary_at_the_end(&sent);
        sleep(Duration::from_millis(500)); // nobody has the FIFO open for writing now
    }
    let out = receiver.finish(SHORT);
    assert_ok(&out);
    assert_eq!(out.summary_field("messages"), "14");
    assert!(
        out.stdout.contains("the dummy writer fd"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("2 writer(s) done"),
        "{}",
        out.describe()
    );
    assert_one_summary_at_the_end(&out);
    assert!(!path.exists());
}

#[test]
fn receiver_without_count_reports_a_sender_cut_off() {
    // Ctrl-C'd mid-transfer, the sender sends no end marker: before the
    // fix the receiver called the EOF a success (exit 0, errors=0).
    let dir = test_dir();
    let path = dir.path().join("cut-off.fifo");
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
    sleep(Duration::from_millis(200));
    sender.signal(Signal::SIGINT);
    sender.finish(SHORT).assert_stopped_by(Signal::SIGINT);
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert_ne!(out.summary_field("errors"), "0", "{}", out.describe());
    assert!(
        out.stderr.contains("before the end marker of writer(s)"),
        "{}",
        out.describe()
    );
    assert!(!path.exists());
}

#[test]
fn receiver_gives_up_on_a_live_writer_that_sends_half_a_frame() {
    let dir = test_dir();
    let path = dir.path().join("half.fifo");
    let mut receiver = Proc::spawn(
        FIFO_DEMO,
        &["receiver", "--path", s(&path), "--timeout", "2"],
    );
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    // A writer that stays alive with a frame half sent: 64 bytes announced,
    // 3 given.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut writer, &[64, 0, 0, 0, b'a', b'b', b'c']).unwrap();
    let started = std::time::Instant::now();
    let out = receiver.finish(SHORT);
    drop(writer);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("no progress for 2 s (--timeout)"),
        "{}",
        out.describe()
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_one_summary_at_the_end(&out);
    assert!(!path.exists());
}

#[test]
fn sender_gives_up_on_a_fifo_nobody_reads() {
    // A FIFO left by a killed receiver: before the fix open(O_WRONLY)
    // waited forever.
    let dir = test_dir();
    let path = dir.path().join("no-reader.fifo");
    mkfifo_0600(&path);
    let out = run(
        FIFO_DEMO,
        &["sender", "--path", s(&path), "--timeout", "1"],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("nobody opened the other end in time (--timeout)"),
        "{}",
        out.describe()
    );
}

#[test]
fn sender_gives_up_on_a_receiver_that_stops_reading() {
    let dir = test_dir();
    let path = dir.path().join("stopped.fifo");
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
            "--timeout",
            "2",
            "--quiet",
        ],
    );
    receiver.wait_for_line(|l| l.contains("first message from writer"), SHORT);
    receiver.signal(Signal::SIGSTOP); // alive, but reads no more: the FIFO fills
    let out = sender.finish(SHORT);
    receiver.signal(Signal::SIGCONT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("no progress for 2 s (--timeout)"),
        "{}",
        out.describe()
    );
    // The receiver then sees the writer gone mid-stream.
    let received = receiver.finish(SHORT);
    assert_eq!(received.code(), 1, "{}", received.describe());
    assert!(!path.exists());
}

#[test]
fn help_names_the_end_marker_and_the_unbounded_waits() {
    let out = run(FIFO_DEMO, &["--help"], SHORT);
    assert_eq!(out.code(), 0);
    for expected in [
        "END\nMARKER: the length 0xFFFFFFFF",
        "0xFFFFFFFF",
        "--timeout SECS",
        "WAITS WITHOUT A TIME LIMIT",
    ] {
        assert!(
            out.stdout.contains(expected),
            "{expected:?}\n{}",
            out.stdout
        );
    }
}

#[test]
fn a_writer_that_dies_inside_its_first_frame_is_noticed_at_once() {
    // The dummy writer fd must not hide this writer's EOF: the receiver
    // closes it as soon as bytes arrive.
    let dir = test_dir();
    let path = dir.path().join("first-frame.fifo");
    let mut receiver = Proc::spawn(FIFO_DEMO, &["receiver", "--path", s(&path)]);
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    receiver.wait_for_line(|l| l.contains("the dummy writer fd"), SHORT);
    std::io::Write::write_all(&mut writer, &[64, 0, 0, 0, b'a', b'b', b'c']).unwrap();
    sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    drop(writer); // the writer is gone
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("stream ended inside a frame"),
        "{}",
        out.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}: the default --timeout, not EOF",
        started.elapsed()
    );
    assert!(!path.exists());
}

#[test]
fn a_second_stop_signal_still_removes_the_receivers_fifo() {
    // The second of two stop signals ends the process at once, in its
    // handler, with no destructor: only objects entered in common::cleanup's
    // table are removed then. Before the fix the receiver's FIFO was not in
    // it and stayed behind. SIGSTOP holds both signals pending, so that
    // they arrive back to back when the receiver continues.
    let dir = test_dir();
    let path = dir.path().join("twice.fifo");
    let mut receiver = Proc::spawn(FIFO_DEMO, &["receiver", "--path", s(&path)]);
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    assert!(path.exists());
    receiver.signal(Signal::SIGSTOP);
    sleep(Duration::from_millis(100));
    receiver.signal(Signal::SIGINT);
    receiver.signal(Signal::SIGTERM);
    receiver.signal(Signal::SIGCONT);
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    // Killed by the signal (no exit status) or, if the first handler's
    // cleanup won the race, exit 130/143: either way, nothing is left.
    assert!(
        !path.exists(),
        "FIFO left behind after two stop signals\n{}",
        out.describe()
    );
}

#[test]
fn text_sent_to_a_frame_receiver_is_answered_with_a_hint_to_use_lines() {
    // `echo hello > P` puts "hell" where a frame length belongs: before,
    // only "frame length 1819043176 is over the limit".
    let dir = test_dir();
    let path = dir.path().join("text.fifo");
    let mut receiver = Proc::spawn(FIFO_DEMO, &["receiver", "--path", s(&path)]);
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    let status = Command::new("sh")
        .args(["-c", "echo hello > \"$1\"", "sh", s(&path)])
        .status()
        .expect("sh");
    assert!(status.success());
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.describe());
    assert!(
        lines[0].contains("the text \"hell\"") && lines[0].contains("--lines"),
        "{}",
        out.describe()
    );
    assert!(!path.exists());

    // A length that is not text gets no such hint.
    let mut receiver = Proc::spawn(FIFO_DEMO, &["receiver", "--path", s(&path)]);
    receiver.wait_for_line(|l| l.contains("waits until a writer opens"), SHORT);
    let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut writer, &[0x00, 0x00, 0x00, 0x7f]).unwrap();
    let out = receiver.finish(SHORT);
    drop(writer);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("is over the limit") && !out.stderr.contains("--lines"),
        "{}",
        out.describe()
    );
    assert!(!path.exists());
}

// ---------------------------------------------------------------------------
// server and client: a well-known FIFO, a private reply FIFO per client
// ---------------------------------------------------------------------------

#[test]
fn story_server_keeps_its_fifo_across_clients_and_refuses_forged_reply_paths() {
    let out = run(FIFO_DEMO, &["--quiet"], SHORT);
    assert_ok(&out);
    let mut expected = vec![
        "== 7. A server and its clients",
        "[server] client 1 has exited and no client has my FIFO open, yet poll(POLLIN, 200 ms) → 0",
        "because my own write descriptor is open",
        "precious: it is a regular file, not a FIFO: refused",
        "link: it is a symbolic link, not a FIFO: refused",
        "gone: nobody has it open for reading",
        "names reply: not an absolute path",
        "[server] refused: not a request: frame length 1819043176",
        "still holds \"precious\"",
        "9 requests from 3 clients answered with the numbers 0 to 8, each once",
    ];
    if nix::unistd::geteuid().is_root() {
        expected.push("theirs: a FIFO owned by uid 65534, not by uid 0");
        expected.push("6 forged requests refused");
    } else {
        expected.push("5 forged requests refused");
    }
    for line in expected {
        assert!(
            out.stdout.contains(line),
            "missing {line:?}\n{}",
            out.describe()
        );
    }
    // Each client printed its figures as narration, not a summary line.
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("[client pid ")
                && l.contains("received: mechanism=fifo messages=3"))
            .count(),
        3,
        "{}",
        out.describe()
    );
    assert_one_summary_at_the_end(&out);
    assert_eq!(out.summary_field("messages"), "10");
    assert!(!story_dir(&out.stdout).exists());
}

/// The private directories clients announced (`mkdir(DIR, 0700)`).
fn client_dirs(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter(|l| l.starts_with("[client pid "))
        .filter_map(|l| l.split("mkdir(").nth(1))
        .map(|rest| PathBuf::from(&rest[..rest.find(", 0700)").unwrap()]))
        .collect()
}

#[test]
fn server_answers_concurrent_client_processes_each_number_once() {
    let dir = test_dir();
    let path = dir.path().join("seq.fifo");
    let mut server = Proc::spawn(FIFO_DEMO, &["server", "--path", s(&path), "--count", "40"]);
    server.wait_for_line(|l| l.contains("my own write"), SHORT);
    let clients: Vec<Proc> = (0..4)
        .map(|_| {
            Proc::spawn(
                FIFO_DEMO,
                &[
                    "client",
                    "--path",
                    s(&path),
                    "--count",
                    "10",
                    "--timeout",
                    "30",
                ],
            )
        })
        .collect();
    let mut numbers = Vec::new();
    for client in clients {
        let out = client.finish(SHORT);
        assert_ok(&out);
        assert_eq!(out.summary_field("messages"), "10");
        let mine: Vec<u64> = out
            .stdout
            .lines()
            .filter_map(|l| l.split("gave me sequence number ").nth(1))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(mine.len(), 10, "{}", out.describe());
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        numbers.extend(mine);
        for private in client_dirs(&out.stdout) {
            assert!(!private.exists(), "{} left behind", private.display());
        }
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (0..40).collect::<Vec<u64>>(), "each number once");
    let out = server.finish(SHORT);
    assert_ok(&out);
    assert_eq!(out.summary_field("messages"), "40");
    assert_one_summary_at_the_end(&out);
    assert!(!path.exists(), "the server left its FIFO");
}

/// A request as a client sends it: a frame of [pid: u32][reply path].
fn forged_request(reply: &Path) -> Vec<u8> {
    let bytes = reply.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&(4 + bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&std::process::id().to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

#[test]
fn server_is_no_confused_deputy_and_goes_on_serving() {
    let dir = test_dir();
    let path = dir.path().join("deputy.fifo");
    let mut server = Proc::spawn(FIFO_DEMO, &["server", "--path", s(&path), "--count", "2"]);
    server.wait_for_line(|l| l.contains("my own write"), SHORT);
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "precious").unwrap();
    let link = dir.path().join("link");
    symlink(&precious, &link).unwrap();
    let theirs = dir.path().join("theirs");
    let mut cases = vec![
        (precious.clone(), "it is a regular file, not a FIFO"),
        (link.clone(), "it is a symbolic link, not a FIFO"),
        (PathBuf::from("/dev/null"), "not a FIFO"),
    ];
    // Nobody's FIFO with a reader (us): only the owner check stops a root
    // server from writing into it.
    let mut their_reader = None;
    if nix::unistd::geteuid().is_root() {
        mkfifo_0600(&theirs);
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        their_reader = Some(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&theirs)
                .unwrap(),
        );
        cases.push((theirs.clone(), "owned by uid 65534"));
    }
    let mut attacker = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (reply, why) in &cases {
        std::io::Write::write_all(&mut attacker, &forged_request(reply)).unwrap();
        let line = server.wait_for_line(|l| l.contains("refused:"), SHORT);
        assert!(line.contains(why), "{why:?}: {line}");
    }
    // Half a request, then a real client: the server drops the garbage.
    std::io::Write::write_all(&mut attacker, &[200, 0, 0]).unwrap();
    server.wait_for_line(|l| l.contains("refused: not a request"), SHORT);
    drop(attacker);
    let client = run(
        FIFO_DEMO,
        &["client", "--path", s(&path), "--count", "2"],
        SHORT,
    );
    assert_ok(&client);
    let out = server.finish(SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("messages"), "2");
    assert_eq!(
        out.summary_field("errors"),
        (cases.len() + 1).to_string(),
        "{}",
        out.describe()
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious");
    if let Some(reader) = their_reader {
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &reader, &mut got);
        assert!(got.is_empty(), "the server wrote into nobody's FIFO");
    }
    assert!(!path.exists());
}

#[test]
fn a_client_without_a_server_or_whose_server_dies_exits_1_and_leaves_nothing() {
    let dir = test_dir();
    let path = dir.path().join("nosrv.fifo");
    // No FIFO at all.
    let out = run(FIFO_DEMO, &["client", "--path", s(&path)], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("start 'fifo-demo server"),
        "{}",
        out.describe()
    );
    // A FIFO nobody serves (left by a killed server): ENXIO at once.
    mkfifo_0600(&path);
    let out = run(FIFO_DEMO, &["client", "--path", s(&path)], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("ENXIO: no server reads it"),
        "{}",
        out.describe()
    );
    for private in client_dirs(&out.stdout) {
        assert!(!private.exists(), "{} left behind", private.display());
    }
    std::fs::remove_file(&path).unwrap();

    // A server that stops answering, then is killed: the client sees
    // POLLERR on its write end of the server's FIFO, long before --timeout.
    let mut server = Proc::spawn(FIFO_DEMO, &["server", "--path", s(&path)]);
    server.wait_for_line(|l| l.contains("my own write"), SHORT);
    server.signal(Signal::SIGSTOP);
    let mut client = Proc::spawn(
        FIFO_DEMO,
        &[
            "client",
            "--path",
            s(&path),
            "--count",
            "1",
            "--timeout",
            "60",
        ],
    );
    let mkdir = client.wait_for_line(|l| l.contains("mkdir("), SHORT);
    sleep(Duration::from_millis(500));
    assert!(client.running(), "the client did not wait for its reply");
    let started = std::time::Instant::now();
    server.signal(Signal::SIGKILL);
    let _ = server.finish(SHORT);
    let out = client.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("POLLERR") && out.stderr.contains("the server exited or was killed"),
        "{}",
        out.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    for private in client_dirs(&mkdir) {
        assert!(!private.exists(), "{} left behind", private.display());
    }
    // SIGKILL left the server's FIFO: the next server takes it over.
    assert!(path.exists());
    let out = run(
        FIFO_DEMO,
        &["server", "--path", s(&path), "--timeout", "1"],
        SHORT,
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(out.stdout.contains("taking it over"), "{}", out.describe());
    assert!(
        out.stdout
            .contains("no request for 1 s (--timeout): stopping")
    );
    assert!(!path.exists());
}

#[test]
fn a_client_gives_up_on_a_stopped_server_and_a_server_stops_on_ctrl_c() {
    let dir = test_dir();
    let path = dir.path().join("stopped.fifo");
    let mut server = Proc::spawn(FIFO_DEMO, &["server", "--path", s(&path)]);
    server.wait_for_line(|l| l.contains("my own write"), SHORT);
    server.signal(Signal::SIGSTOP);
    let out = run(
        FIFO_DEMO,
        &["client", "--path", s(&path), "--timeout", "2"],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("no reply to request 0 within 2 s (--timeout)"),
        "{}",
        out.describe()
    );
    server.signal(Signal::SIGCONT);
    // The request the client left is answered into nothing: refused, and
    // the server goes on; Ctrl-C then stops it and removes its FIFO.
    server.wait_for_line(|l| l.contains("refused:"), SHORT);
    server.signal(Signal::SIGINT);
    let out = server.finish(SHORT);
    out.assert_stopped_by(Signal::SIGINT);
    assert!(!path.exists());
}

#[test]
fn server_and_client_refuse_options_of_the_other_roles() {
    for (args, needle) in [
        (&["server", "--path", "/tmp/x", "--size", "9"][..], "--size"),
        (
            &["client", "--path", "/tmp/x", "--writers", "2"][..],
            "--writers",
        ),
        (&["client", "--path", "/tmp/x", "--lines"][..], "--lines"),
        (&["server"][..], "--path"),
        (
            &["client", "--count", "0", "--path", "/tmp/x"][..],
            "--count",
        ),
    ] {
        assert_usage_error(FIFO_DEMO, args, needle);
    }
}
