//! End-to-end tests of pipe-demo: the real binary, real pipes, real signals.

use std::fs::File;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use common::{frame, payload};
use ipc_tests::{LONG, Output, Proc, SHORT, assert_usage_error, run};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

const PIPE_DEMO: &str = "pipe-demo";

/// A pipe for a test. O_CLOEXEC matters: tests run in parallel threads, and
/// a child spawned by another test must not inherit our write end, or our
/// receiver would wait for EOF until that unrelated child exits.
fn cloexec_pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2")
}

fn assert_ok(out: &Output) {
    out.assert_clean();
    assert_eq!(out.summary_field("mechanism"), "pipe");
}

#[test]
fn default_run_tells_the_whole_story() {
    let out = run(PIPE_DEMO, &[], SHORT);
    assert_ok(&out);
    assert_eq!(out.summary_field("messages"), "5");
    assert_eq!(out.summary_field("bytes"), "320");
    for expected in [
        "fork() → child pid",
        "[child] got message 4 (64 bytes): ok",
        "[parent] reply: ack 4 ok",
        "[child] read() returned 0 (EOF)",
        "the child exited with status 0",
        "write() → EPIPE",
        "the child was killed by SIGPIPE",
        "fcntl(F_GETPIPE_SZ) = ",
        "the same as F_GETPIPE_SZ",
        "PIPE_BUF = ",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    assert!(out.stderr.is_empty(), "{}", out.describe());
}

#[test]
fn options_change_the_workload_and_quiet_drops_message_lines() {
    let out = run(
        PIPE_DEMO,
        &["--count", "300", "--size", "5000", "--quiet"],
        SHORT,
    );
    assert_ok(&out);
    assert_eq!(out.summary_field("messages"), "300");
    assert_eq!(out.summary_field("bytes"), "1500000");
    assert!(!out.stdout.contains("sent message"), "{}", out.describe());
    assert!(
        out.stdout.contains("received=300 lost=0"),
        "{}",
        out.describe()
    );
}

/// `sender | receiver` through a pipe made here, as a shell would.
fn shell_pipe(sender_args: &[&str], receiver_args: &[&str]) -> (Output, Output) {
    let (read_end, write_end) = cloexec_pipe();
    let sender_args = [&["sender"], sender_args].concat();
    let receiver_args = [&["receiver"], receiver_args].concat();
    let sender = Proc::spawn_with(
        PIPE_DEMO,
        &sender_args,
        Stdio::null(),
        File::from(write_end),
    );
    let receiver = Proc::spawn_with(
        PIPE_DEMO,
        &receiver_args,
        File::from(read_end),
        Stdio::piped(),
    );
    // Our copies of the ends went into the Commands, which `spawn_with`
    // consumed and dropped: only the two demos hold the pipe now, so the
    // receiver sees EOF when the sender exits.
    let sent = sender.finish(LONG);
    let received = receiver.finish(LONG);
    sent.assert_no_panic();
    received.assert_no_panic();
    (sent, received)
}

/// `count` messages of `size` bytes through `sender | receiver`, all checked.
fn transfer(count: &str, size: &str) {
    let (sent, received) = shell_pipe(
        &["--count", count, "--size", size, "--quiet"],
        &["--count", count, "--quiet"],
    );
    assert_eq!(sent.code(), 0, "{}", sent.describe());
    assert_ok(&received);
    assert_eq!(received.summary_field("messages"), count);
    let bytes = count.parse::<u64>().unwrap() * size.parse::<u64>().unwrap();
    assert_eq!(received.summary_field("bytes"), bytes.to_string());
    let clean = format!("received={count} lost=0 duplicated=0 reordered=0 corrupted=0");
    assert!(received.stdout.contains(&clean), "{}", received.describe());
}

#[test]
fn shell_pipe_carries_100_000_small_messages() {
    transfer("100000", "64");
}

#[test]
fn shell_pipe_carries_1000_messages_of_64_kib() {
    transfer("1000", "65536");
}

#[test]
fn receiver_reports_each_kind_of_bad_message() {
    // Play a faulty sender: a duplicate, a late message, corrupted bytes,
    // and message 4 never sent. The receiver must not trust any of it.
    let (read_end, write_end) = cloexec_pipe();
    let receiver = Proc::spawn_with(
        PIPE_DEMO,
        &["receiver", "--count", "6"],
        File::from(read_end),
        Stdio::piped(),
    );
    let mut pipe = File::from(write_end);
    let mut corrupt = payload::make(3, 64);
    corrupt[30] ^= 0xff;
    for body in [
        payload::make(0, 64),
        payload::make(2, 64),
        payload::make(1, 64), // late
        payload::make(1, 64), // again
        corrupt,
        payload::make(5, 64),
    ] {
        frame::write_frame(&mut pipe, &body).expect("write frame");
    }
    frame::write_end(&mut pipe, &6u64.to_le_bytes()).expect("write end marker");
    drop(pipe);
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stdout
            .contains("received=6 lost=2 duplicated=1 reordered=1 corrupted=1"),
        "{}",
        out.describe()
    );
    assert_eq!(out.summary_field("errors"), "5");
    assert!(
        out.stderr.contains("failed the check"),
        "{}",
        out.describe()
    );
}

#[test]
fn receiver_reports_a_frame_cut_short() {
    let (read_end, write_end) = cloexec_pipe();
    let receiver = Proc::spawn_with(
        PIPE_DEMO,
        &["receiver"],
        File::from(read_end),
        Stdio::piped(),
    );
    let mut whole = Vec::new();
    frame::write_frame(&mut whole, &payload::make(0, 64)).unwrap();
    let mut pipe = File::from(write_end);
    pipe.write_all(&whole[..20]).unwrap();
    drop(pipe);
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("stream ended inside a frame (16 of 64 bytes)"),
        "{}",
        out.describe()
    );
}

#[test]
fn sender_stops_quietly_when_the_reader_leaves() {
    // Like `pipe-demo sender | head -c 100`.
    let (read_end, write_end) = cloexec_pipe();
    let sender = Proc::spawn_with(
        PIPE_DEMO,
        &["sender", "--count", "1000000", "--quiet"],
        Stdio::null(),
        File::from(write_end),
    );
    let mut head = [0u8; 100];
    File::from(read_end).read_exact(&mut head).unwrap(); // then closed: the reader left
    let out = sender.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(out.stderr.contains("EPIPE"), "{}", out.describe());
    assert!(!out.stderr.contains("error:"), "{}", out.describe());
}

#[test]
fn pipeline_runs_two_real_commands() {
    let out = run(
        PIPE_DEMO,
        &["pipeline", "printf a\\nb\\nc\\n", "wc -l"],
        SHORT,
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout.lines().any(|l| l.trim() == "3"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout
            .contains("'printf a\\nb\\nc\\n' exited with status 0"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("'wc -l' exited with status 0"),
        "{}",
        out.describe()
    );
    // The bytes never pass through pipe-demo: no summary line, as the help says.
    assert!(!out.stdout.contains("summary:"), "{}", out.describe());
    let help = run(PIPE_DEMO, &["--help"], SHORT);
    assert!(help.stdout.contains("prints no summary line"));
}

#[test]
fn pipeline_gives_the_first_command_default_sigpipe() {
    // `yes` never ends by itself: only SIGPIPE (default action) stops it.
    let out = run(PIPE_DEMO, &["pipeline", "yes", "head -n 2"], SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout.contains("'yes' was killed by SIGPIPE"),
        "{}",
        out.describe()
    );
}

#[test]
fn pipeline_with_a_missing_command_fails_cleanly() {
    for args in [
        ["pipeline", "no-such-command-xyz --flag", "wc -l"],
        ["pipeline", "echo hi", "no-such-command-xyz"],
    ] {
        let out = run(PIPE_DEMO, &args, SHORT); // also checks no process is left
        assert_eq!(out.code(), 1, "{}", out.describe());
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", out.describe());
        assert!(
            lines[0].contains("execvp(\"no-such-command-xyz\")"),
            "{}",
            out.describe()
        );
        assert!(lines[0].contains("command not found"), "{}", out.describe());
    }
}

#[test]
fn bad_command_lines_exit_2_with_one_line_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "--bogus"),
        (&["--count", "abc"], "--count"),
        (&["--count"], "--count needs a value"),
        (&["--count", ""], "--count"),
        (&["--count", "0"], "--count"),
        (&["--count", "-3"], "--count"),
        (&["--count", "99999999999999999999"], "--count"),
        (&["--size", "16777217"], "--size"),
        (&["--size", "99999999999999999999999"], "--size"),
        (&["--size", "4"], "--size"),
        (&["--timeout", "0"], "--timeout"),
        (&["--timeout", "86401"], "--timeout"),
        (&["receiver", "--timeout", "x"], "--timeout"),
        (&["sender", "--size", "x"], "--size"),
        (&["receiver", "--size", "64"], "--size"),
        (&["sendr"], "sendr"),
        (&["pipeline", "ls"], "exactly two commands"),
        (&["pipeline", "ls", "", "wc"], "empty"),
    ];
    for (args, needle) in cases {
        let out = assert_usage_error(PIPE_DEMO, args, needle);
        assert!(out.stdout.is_empty(), "{args:?}\n{}", out.describe());
    }
}

#[test]
fn receiver_refuses_stdin_that_is_not_a_pipe() {
    let file = std::env::current_exe().unwrap(); // any regular file
    for (stdin, what) in [
        (Stdio::null(), "a character device"),
        (Stdio::from(File::open(&file).unwrap()), "a regular file"),
    ] {
        let out = Proc::spawn_with(PIPE_DEMO, &["receiver"], stdin, Stdio::piped()).finish(SHORT);
        out.assert_no_panic();
        assert_eq!(out.code(), 2, "{}", out.describe());
        assert!(
            out.stderr.contains(&format!("stdin is {what}, not a pipe")),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn help_is_printed_on_stdout() {
    let out = run(PIPE_DEMO, &["--help"], SHORT);
    assert_eq!(out.code(), 0);
    assert!(out.stdout.contains("USAGE:") && out.stdout.contains("pipe-demo pipeline"));
    let out = run(PIPE_DEMO, &["sender", "-h"], SHORT);
    assert_eq!(out.code(), 0);
    assert!(out.stdout.contains("USAGE:"));
}

/// Start a long default run and return it with the forked child's pid.
fn long_run() -> (Proc, Pid) {
    let mut proc = Proc::spawn(
        PIPE_DEMO,
        &["--count", "1000000000", "--size", "4096", "--quiet"],
    );
    let line = proc.wait_for_line(|l| l.contains("fork() → child pid"), SHORT);
    let pid: i32 = line.rsplit(' ').next().unwrap().parse().expect("child pid");
    // Let the transfer get going, so the fault lands mid-stream.
    std::thread::sleep(Duration::from_millis(300));
    (proc, Pid::from_raw(pid))
}

#[test]
fn a_child_killed_mid_stream_is_reported_not_waited_for() {
    let (proc, child) = long_run();
    nix::sys::signal::kill(child, Signal::SIGKILL).unwrap();
    let out = proc.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stdout.contains("was killed by SIGKILL"),
        "{}",
        out.describe()
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pipe-demo: error: the child (pid "),
        "{}",
        out.describe()
    );
    assert!(last.contains("was killed by SIGKILL"), "{}", out.describe());
}

#[test]
fn ctrl_c_and_sigterm_stop_the_run_cleanly() {
    for (signal, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let (proc, _child) = long_run();
        proc.signal(signal);
        let out = proc.finish(SHORT); // also checks the child is gone
        out.assert_no_panic();
        assert_eq!(out.code(), code, "{}", out.describe());
        assert!(
            out.stderr
                .contains(&format!("stopped by {signal}, cleaned up")),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn receiver_stops_on_sigint_while_blocked_in_read() {
    // A writer that never writes: the receiver sits in read() until Ctrl-C.
    let (read_end, write_end) = cloexec_pipe();
    let mut receiver = Proc::spawn_with(
        PIPE_DEMO,
        &["receiver"],
        File::from(read_end),
        Stdio::piped(),
    );
    receiver.wait_for_line(|l| l.contains("reading frames up to the end marker"), SHORT);
    std::thread::sleep(Duration::from_millis(200));
    receiver.signal(Signal::SIGINT);
    let out = receiver.finish(SHORT);
    drop(write_end);
    out.assert_no_panic();
    assert_eq!(out.code(), 130, "{}", out.describe());
    assert!(
        out.stderr.contains("stopped by SIGINT"),
        "{}",
        out.describe()
    );
}

/// Exactly one summary line in everything the process printed.
fn assert_one_summary(out: &Output) {
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(all.matches("summary:").count(), 1, "{}", out.describe());
}

#[test]
fn every_role_and_the_story_print_one_summary_line() {
    let out = run(PIPE_DEMO, &["--quiet"], SHORT);
    assert_ok(&out);
    assert_one_summary(&out);
    let (sent, received) = shell_pipe(&["--count", "9"], &[]);
    assert_one_summary(&sent);
    assert_one_summary(&received);
    assert_ok(&received);
    assert!(
        received
            .stdout
            .contains("end marker: the sender says it sent 9 messages"),
        "{}",
        received.describe()
    );
}

#[test]
fn receiver_without_count_reports_a_sender_cut_off() {
    // EOF with no end marker: before the fix a sender Ctrl-C'd half-way
    // left a receiver that said exit 0, errors=0.
    let (read_end, write_end) = cloexec_pipe();
    let mut receiver = Proc::spawn_with(
        PIPE_DEMO,
        &["receiver", "--quiet"],
        File::from(read_end),
        Stdio::piped(),
    );
    let sender = Proc::spawn_with(
        PIPE_DEMO,
        &["sender", "--count", "1000000000", "--quiet"],
        Stdio::null(),
        File::from(write_end),
    );
    receiver.wait_for_line(|l| l.contains("reading frames"), SHORT);
    std::thread::sleep(Duration::from_millis(300));
    sender.signal(Signal::SIGINT);
    sender.finish(SHORT).assert_stopped_by(Signal::SIGINT);
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert_ne!(out.summary_field("errors"), "0", "{}", out.describe());
    assert!(
        out.stderr.contains("before the end marker"),
        "{}",
        out.describe()
    );

    // Whole frames and then EOF, no marker: cut off too.
    let (read_end, write_end) = cloexec_pipe();
    let receiver = Proc::spawn_with(
        PIPE_DEMO,
        &["receiver"],
        File::from(read_end),
        Stdio::piped(),
    );
    let mut pipe = File::from(write_end);
    for seq in 0..3 {
        frame::write_frame(&mut pipe, &payload::make(seq, 64)).unwrap();
    }
    drop(pipe);
    let out = receiver.finish(SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("after 3 messages but before the end marker"),
        "{}",
        out.describe()
    );
}

#[test]
fn receiver_counts_what_the_end_marker_says_was_sent() {
    // The marker says 4, two arrived: two lost, even without --count.
    let (read_end, write_end) = cloexec_pipe();
    let receiver = Proc::spawn_with(
        PIPE_DEMO,
        &["receiver"],
        File::from(read_end),
        Stdio::piped(),
    );
    let mut pipe = File::from(write_end);
    for seq in 0..2 {
        frame::write_frame(&mut pipe, &payload::make(seq, 64)).unwrap();
    }
    frame::write_end(&mut pipe, &4u64.to_le_bytes()).unwrap();
    drop(pipe);
    let out = receiver.finish(SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert_eq!(out.summary_field("errors"), "2", "{}", out.describe());
    assert!(
        out.stdout.contains("received=2 lost=2"),
        "{}",
        out.describe()
    );
}

#[test]
fn receiver_gives_up_on_a_live_sender_that_sends_half_a_frame() {
    let (read_end, write_end) = cloexec_pipe();
    let receiver = Proc::spawn_with(
        PIPE_DEMO,
        &["receiver", "--timeout", "2"],
        File::from(read_end),
        Stdio::piped(),
    );
    let mut whole = Vec::new();
    frame::write_frame(&mut whole, &payload::make(0, 64)).unwrap();
    let mut pipe = File::from(write_end);
    pipe.write_all(&whole[..20]).unwrap(); // and keep the write end open
    let started = std::time::Instant::now();
    let out = receiver.finish(SHORT);
    drop(pipe);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("no progress for 2 s (--timeout)"),
        "{}",
        out.describe()
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_one_summary(&out);
}

#[test]
fn sender_gives_up_on_a_reader_that_never_reads() {
    let (read_end, write_end) = cloexec_pipe();
    let sender = Proc::spawn_with(
        PIPE_DEMO,
        &["sender", "--count", "1000000", "--timeout", "2", "--quiet"],
        Stdio::null(),
        File::from(write_end),
    );
    let out = sender.finish(SHORT); // we hold the read end and read nothing
    drop(read_end);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("no progress for 2 s (--timeout)"),
        "{}",
        out.describe()
    );
}

#[test]
fn story_gives_up_on_a_stopped_child() {
    // The forked child stops (SIGSTOP): the parent waits for its reply at
    // most --timeout, then fails and kills and reaps the child.
    let mut proc = Proc::spawn(
        PIPE_DEMO,
        &["--count", "1000000000", "--timeout", "2", "--quiet"],
    );
    let line = proc.wait_for_line(|l| l.contains("fork() → child pid"), SHORT);
    let pid: i32 = line.rsplit(' ').next().unwrap().parse().expect("child pid");
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let out = proc.finish(SHORT); // also checks the child is gone
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("no progress for 2 s (--timeout)"),
        "{}",
        out.describe()
    );
}

/// The default story's stdout, checked to end well.
fn story() -> Output {
    let out = run(PIPE_DEMO, &["--quiet"], SHORT);
    assert_ok(&out);
    out
}

/// The index of the first line of `out` that contains `needle`.
fn line_of(out: &Output, needle: &str) -> usize {
    out.stdout
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("missing {needle:?}\n{}", out.describe()))
}

#[test]
fn story_shows_a_reader_hang_on_a_forgotten_write_end_then_eof_once_closed() {
    let out = story();
    let hang = line_of(
        &out,
        "poll(read end, 1000 ms) → timed out: no data and no EOF",
    );
    let fixed = line_of(
        &out,
        "closed my write end: poll → POLLHUP, and read() → 0 (EOF)",
    );
    assert!(
        line_of(&out, "wrote \"hello\" and exited") < hang && hang < fixed,
        "{}",
        out.describe()
    );
}

#[test]
fn story_waits_for_several_children_by_eof() {
    let out = story();
    let eof = line_of(&out, "[parent] read() → 0 (EOF) after ");
    for n in 1..=3 {
        let done = line_of(&out, &format!("[child {n}] done after {} ms", n * 100));
        assert!(done < eof, "child {n} after the EOF\n{}", out.describe());
    }
    // The EOF came no earlier than the last child's close, at 300 ms.
    let line = out.stdout.lines().nth(eof).unwrap();
    let ms: u64 = line
        .split("after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"));
    assert!(ms >= 300, "{line}");
}

#[test]
fn story_shows_two_writes_coming_out_of_one_read_and_frames_restoring_them() {
    let out = story();
    let merged = line_of(
        &out,
        "write(\"hello\"), write(\"world\"), then one read() of up to 64 bytes → 10 bytes \"helloworld\"",
    );
    let framed = line_of(&out, "read_frame → [\"hello\", \"world\"]");
    assert!(merged < framed, "{}", out.describe());
}

#[test]
fn story_resizes_a_pipe_and_is_refused_above_pipe_max_size() {
    let out = story();
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .unwrap()
        .unwrap();
    line_of(
        &out,
        &format!(
            "a new pipe: F_GETPIPE_SZ = {} bytes = 16 pages of {page} bytes",
            16 * page
        ),
    );
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size").unwrap();
    let max: u64 = max.trim().parse().unwrap();
    line_of(&out, &format!("/proc/sys/fs/pipe-max-size = {max}"));
    line_of(&out, "fcntl(F_SETPIPE_SZ, 100000) → F_GETPIPE_SZ = ");
    // Unprivileged (the story itself, or the child of root that becomes
    // nobody): asking above pipe-max-size is refused.
    let refused = format!(
        "fcntl(F_SETPIPE_SZ, {}) → EPERM (Operation not permitted)",
        2 * max
    );
    line_of(&out, &refused);

    if nix::unistd::geteuid().is_root() {
        // And the story run by an unprivileged user, directly.
        use std::os::unix::process::CommandExt;
        let mut cmd = ipc_tests::demo(PIPE_DEMO, &["--quiet"]);
        cmd.uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = Proc::start(cmd).finish(SHORT);
        out.assert_no_panic();
        assert_ok(&out);
        let eperm = line_of(&out, &refused);
        assert!(
            out.stdout
                .lines()
                .nth(eperm)
                .unwrap()
                .contains("needs CAP_SYS_RESOURCE"),
            "{}",
            out.describe()
        );
        assert!(
            !out.stdout.contains("setuid()s to uid"),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn story_runs_the_conversation_through_std_process_command() {
    let out = story();
    line_of(
        &out,
        "pipe2(O_CLOEXEC) twice (FD_CLOEXEC on our ends: true, true)",
    );
    line_of(&out, "we hold 1 and 1 descriptor(s) of the two pipes");
    line_of(
        &out,
        "it said \"[receiver] checked: received=5 lost=0 duplicated=0 reordered=0 corrupted=0\"; \
         wait() (waitpid) → exited with status 0",
    );
    // The receiver's own summary line stays inside the story: one in all.
    assert_one_summary(&out);
}

#[test]
fn ctrl_c_in_the_later_steps_stops_the_story_and_its_children() {
    // Step 3 waits 1 s in poll(); step 4 waits for three sleeping children.
    for trigger in ["wrote \"hello\" and exited", "forked 3 children"] {
        let mut proc = Proc::spawn(PIPE_DEMO, &["--quiet"]);
        proc.wait_for_line(|l| l.contains(trigger), SHORT);
        proc.signal(Signal::SIGINT);
        let out = proc.finish(SHORT); // also checks no child is left
        out.assert_no_panic();
        assert_eq!(out.code(), 130, "{trigger}\n{}", out.describe());
        assert!(
            out.stderr.contains("stopped by SIGINT, cleaned up"),
            "{trigger}\n{}",
            out.describe()
        );
    }
}
