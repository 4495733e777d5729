//! End-to-end tests of signal-demo: real signals between real processes.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ipc_tests::{Proc, SHORT, assert_usage_error, demo, run};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SIGNAL_DEMO: &str = "signal-demo";

/// Start a receiver and return it with its pid, read from its first line.
fn receiver(args: &[&str]) -> (Proc, String) {
    let mut proc = Proc::spawn(SIGNAL_DEMO, &[&["receiver"], args].concat());
    let line = proc.wait_for_line(|l| l.starts_with("[receiver] pid "), SHORT);
    let pid = line["[receiver] pid ".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (proc, pid)
}

#[test]
fn the_tour_shows_every_rule_and_leaves_no_zombie() {
    let out = run(SIGNAL_DEMO, &[], SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("mechanism"), "signal");
    for expected in [
        "handled SIGUSR1 (10) from pid ",
        "via kill (SI_USER)",
        "sigpending: SIGUSR1 is pending",
        "sent 3 times, handled 1 time(s)",
        "value 1",
        "sent 3 times, handled 3 times, values [1, 2, 3]",
        "read() → EINTR after",
        "SA_RESTART made the kernel resume the read",
        "setitimer(ITIMER_REAL, 300 ms)",
        "via a child that exited (CLD_EXITED)",
        "state: Z (zombie)",
        "it exited with status 7",
        "sigaction(SIGKILL, SIG_IGN) → EINVAL",
        "sigaction(SIGSTOP, SIG_IGN) → EINVAL",
        "kill(", // SIGTERM and SIGKILL lines follow
        "waitpid says it exited with status 0",
        "waitpid says it was killed by SIGKILL",
        "reads address 0: waitpid says it was killed by SIGSEGV",
        "divides an integer by zero: waitpid says it was killed by SIGFPE",
        "read(signalfd) → SIGRTMIN+2 (",
        "value 42",
        "no zombie left",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
}

/// The receiver says what SIGHUP, SIGQUIT, SIGINT and SIGTERM conventionally
/// mean as it handles each.
#[test]
fn receiver_says_what_hup_quit_int_and_term_conventionally_mean() {
    let (proc, pid) = receiver(&["--count", "2"]);
    let status = Command::new("sh")
        .args(["-c", "kill -HUP \"$1\" && kill -QUIT \"$1\"", "sh", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let out = proc.finish(SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout
            .contains("a daemon would reload its configuration"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout
            .contains("quit (its default action also dumps core)"),
        "{}",
        out.describe()
    );
    for (signal, meaning, code) in [
        ("-INT", "Ctrl-C, interrupt from the keyboard", 130),
        ("-TERM", "the polite request to end, kill's default", 143),
    ] {
        let (proc, pid) = receiver(&[]);
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
        let out = proc.finish(SHORT);
        assert_eq!(out.code(), code, "{}", out.describe());
        assert!(out.stdout.contains(meaning), "{signal}: {}", out.describe());
    }
}

#[test]
fn receiver_counts_signals_from_the_shell_and_from_the_sender() {
    let (proc, pid) = receiver(&["--count", "4"]);
    let status = Command::new("sh")
        .args(["-c", "kill -USR1 \"$1\" && kill -HUP \"$1\"", "sh", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    // Four different signals: none can merge with another while pending.
    let sent = run(
        SIGNAL_DEMO,
        &["sender", "--pid", &pid, "--signal", "USR2"],
        SHORT,
    );
    assert_eq!(sent.code(), 0, "{}", sent.describe());
    let sent = run(
        SIGNAL_DEMO,
        &[
            "sender",
            "--pid",
            &pid,
            "--signal",
            "SIGRTMIN+1",
            "--value",
            "9",
        ],
        SHORT,
    );
    assert_eq!(sent.code(), 0, "{}", sent.describe());
    let out = proc.finish(SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("messages"), "4");
    assert!(
        out.stdout.contains("SIGUSR1 (10) from pid"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("SIGHUP (1)") && out.stdout.contains("would reload"));
    assert!(
        out.stdout.contains("via sigqueue (SI_QUEUE), value 9"),
        "{}",
        out.describe()
    );
}

#[test]
fn real_time_signals_queue_with_their_values_in_order() {
    let (proc, pid) = receiver(&["--count", "5"]);
    for value in ["1", "2", "3", "4", "5"] {
        let sent = run(
            SIGNAL_DEMO,
            &[
                "sender", "--pid", &pid, "--signal", "RTMIN+3", "--value", value,
            ],
            SHORT,
        );
        assert_eq!(sent.code(), 0, "{}", sent.describe());
    }
    let out = proc.finish(SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let values: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("SIGRTMIN+3") && l.contains("via sigqueue"))
        .filter_map(|l| l.rsplit("value ").next())
        .collect();
    assert_eq!(values, ["1", "2", "3", "4", "5"], "{}", out.describe());
}

#[test]
fn sigint_and_sigterm_stop_the_receiver_with_its_summary_and_128_plus_n() {
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let (proc, pid) = receiver(&[]);
        let sent = run(
            SIGNAL_DEMO,
            &["sender", "--pid", &pid, "--signal", "USR1"],
            SHORT,
        );
        assert_eq!(sent.code(), 0, "{}", sent.describe());
        // The sender ends with a summary too: a signal is a message.
        assert_eq!(sent.summary_field("mechanism"), "signal");
        assert_eq!(sent.summary_field("messages"), "1");
        // No wait needed: kill() queued the SIGUSR1 before the sender exited,
        // and the kernel delivers every pending signal before the
        // receiver's code runs on, lowest number (SIGINT) first.
        proc.signal(signal);
        let out = proc.finish(SHORT);
        out.assert_stopped_by(signal);
        let name = format!("{signal:?}");
        assert!(
            out.stdout.contains(&format!("{name} (")) && out.stdout.contains("asked to stop"),
            "{}",
            out.describe()
        );
        // The stop request is not a message; the SIGUSR1 is.
        assert_eq!(out.summary_field("messages"), "1", "{}", out.describe());
        assert_eq!(out.summary_field("errors"), "0");
    }
}

#[test]
fn bad_input_and_missing_processes() {
    let cases: &[(&[&str], &str)] = &[
        (&["sender", "--pid", "1", "--signal", "FOO"], "not a signal"),
        (
            &["sender", "--pid", "1", "--signal", "RTMIN+99"],
            "out of range",
        ),
        (&["sender", "--pid", "1", "--signal", "65"], "--signal"),
        (&["sender", "--pid", "1", "--signal", "-1"], "--signal"),
        (
            &["sender", "--pid", "1", "--signal", "0", "--count", "2"],
            "--count",
        ),
        (&["receiver", "--timeout", "0"], "--timeout"),
        (&["receiver", "--timeout", "86401"], "--timeout"),
        (
            &["sender", "--pid", "1", "--signal", "USR1", "--timeout", "x"],
            "--timeout",
        ),
        (&["--timeout", "3"], "--timeout"),
        (&["sender", "--pid", "abc", "--signal", "USR1"], "--pid"),
        (&["sender", "--pid", "-5", "--signal", "USR1"], "--pid"),
        (&["sender", "--signal", "USR1"], "--pid"),
        (&["sender", "--pid", "1"], "--signal"),
        (
            &["sender", "--pid", "1", "--signal", "USR1", "--value", "x"],
            "--value",
        ),
        (&["receiver", "--pid", "1"], "--pid"),
        (&["--count", "3"], "--count"),
        (&["listener"], "listener"),
    ];
    for (args, needle) in cases {
        assert_usage_error(SIGNAL_DEMO, args, needle);
    }
    // A pid nobody has: pid_max is at most 2^22 on Linux.
    let out = run(
        SIGNAL_DEMO,
        &["sender", "--pid", "2147483647", "--signal", "USR1"],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(out.stderr.contains("ESRCH"), "{}", out.describe());
}

/// Step 1 is the same on every run: with two signals pending at once,
/// SIGUSR2's handler runs first, on top of SIGUSR1's (whose frame the
/// kernel set up first: lowest number first); with sa_mask they take turns,
/// lowest number first, the order step 8's signalfd reads. Step 9 floods a
/// self-pipe (records lost, counted) and a signalfd (none lost).
#[test]
fn nested_handlers_are_explained_the_same_way_on_every_run() {
    for _ in 0..5 {
        let out = run(SIGNAL_DEMO, &["--quiet"], SHORT);
        assert_eq!(out.code(), 0, "{}", out.describe());
        let step1: Vec<&str> = out
            .stdout
            .lines()
            .skip_while(|l| !l.starts_with("== 1."))
            .take_while(|l| !l.starts_with("== 2."))
            .filter(|l| l.contains("'s handler: started at tick"))
            .collect();
        assert_eq!(step1.len(), 4, "{}", out.describe());
        // Without sa_mask: SIGUSR2 first, on top of SIGUSR1's handler.
        assert!(
            step1[0].contains("SIGUSR2's handler")
                && step1[0].contains("it ran on top of SIGUSR1's handler"),
            "{}",
            out.describe()
        );
        assert!(step1[1].contains("SIGUSR1's handler") && step1[1].contains("the main code"));
        // With sa_mask: SIGUSR1 first, then SIGUSR2, neither inside the other.
        assert!(step1[2].contains("SIGUSR1's handler") && step1[2].contains("the main code"));
        assert!(step1[3].contains("SIGUSR2's handler") && step1[3].contains("the main code"));
        for expected in [
            "SIGUSR2's handler ran first, inside SIGUSR1's",
            "stacked SIGUSR2's frame on top",
            "one after the other: SIGUSR1's handler first, then SIGUSR2's",
            "in the order SIGUSR1 (10), SIGTERM (15), SIGRTMIN+2 (36): lowest signal number first",
            "did not fit and were dropped",
            "records, values 1..=500 in order",
        ] {
            assert!(
                out.stdout.contains(expected),
                "missing {expected:?}\n{}",
                out.describe()
            );
        }
    }
}

#[test]
fn receiver_and_sender_say_that_standard_signals_coalesce() {
    let (proc, pid) = receiver(&["--quiet"]);
    let sent = run(
        SIGNAL_DEMO,
        &[
            "sender", "--pid", &pid, "--signal", "USR2", "--count", "2000", "--quiet",
        ],
        SHORT,
    );
    assert_eq!(sent.code(), 0, "{}", sent.describe());
    assert_eq!(sent.summary_field("messages"), "2000");
    assert!(
        sent.stdout.contains("merges into it (coalesces)"),
        "{}",
        sent.describe()
    );
    proc.signal(Signal::SIGTERM);
    let out = proc.finish(SHORT);
    out.assert_stopped_by(Signal::SIGTERM);
    let handled: u64 = out.summary_field("messages").parse().unwrap();
    assert!((1..=2000).contains(&handled), "{}", out.describe());
    assert!(
        out.stdout.contains("standard signals coalesce"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("SIGUSR2 (12): handled "));
}

#[test]
fn signal_0_probes_and_delivers_nothing() {
    let (proc, pid) = receiver(&[]);
    let out = run(
        SIGNAL_DEMO,
        &["sender", "--pid", &pid, "--signal", "0"],
        SHORT,
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    for expected in ["kill(", "delivered nothing", "pid is reused", "pidfd"] {
        assert!(
            out.stdout.contains(expected),
            "{expected}\n{}",
            out.describe()
        );
    }
    // A probe moves no message: no summary line.
    assert!(!out.stdout.contains("summary:"), "{}", out.describe());
    proc.signal(Signal::SIGTERM);
    let out = proc.finish(SHORT);
    out.assert_stopped_by(Signal::SIGTERM);
    assert_eq!(out.summary_field("messages"), "0", "{}", out.describe());
    let gone = run(
        SIGNAL_DEMO,
        &["sender", "--pid", "2147483647", "--signal", "0"],
        SHORT,
    );
    assert_eq!(gone.code(), 1, "{}", gone.describe());
    assert!(gone.stderr.contains("ESRCH"), "{}", gone.describe());
}

/// A receiver whose stdout is a pipe this test does not read yet: its main
/// loop blocks printing, its handler goes on writing records until the
/// self-pipe is full. Returns the receiver and the read end of its stdout,
/// past its first line.
fn stalled_receiver(args: &[&str]) -> (Proc, BufReader<std::fs::File>) {
    let (read, write) = nix::unistd::pipe().unwrap();
    let mut cmd = demo(SIGNAL_DEMO, &[&["receiver"], args].concat());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped());
    // start() consumes cmd, and with it our copy of the write end.
    let proc = Proc::start(cmd);
    // The first line comes once the handlers are installed; read it in a
    // thread, so that a receiver that never prints fails the test instead
    // of hanging it (dropping `proc` kills it, which ends the read).
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut out = BufReader::new(std::fs::File::from(read));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let _ = tx.send((line, out));
    });
    let (line, out) = rx.recv_timeout(SHORT).expect("the receiver's first line");
    assert!(line.starts_with("[receiver] pid "), "{line}");
    (proc, out)
}

/// Wait until `pid` is blocked in write(1, ...), from /proc/PID/syscall
/// (the syscall number, then its arguments).
fn wait_blocked_writing_stdout(pid: Pid) {
    let want = format!("{} 0x1 ", libc::SYS_write);
    let deadline = Instant::now() + SHORT;
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if now.starts_with(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "not blocked in write(1): {now}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Read what is left of the receiver's stdout, in a thread (the receiver
/// may only finish once its output drains).
fn drain(out: BufReader<std::fs::File>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut out = out;
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        rest
    })
}

fn flood(pid: &str, count: &str) {
    let sent = run(
        SIGNAL_DEMO,
        &[
            "sender", "--pid", pid, "--signal", "RTMIN+1", "--value", "7", "--count", count,
            "--quiet",
        ],
        SHORT,
    );
    assert_eq!(sent.code(), 0, "{}", sent.describe());
    assert_eq!(sent.summary_field("messages"), count);
}

fn field(stdout: &str, key: &str) -> u64 {
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary\n{stdout}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn records_lost_to_a_full_self_pipe_are_counted_and_sigterm_is_never_lost() {
    let (proc, out) = stalled_receiver(&[]);
    let pid = proc.pid().to_string();
    // 6000 > 64 KiB of stdout lines + 1632 records in the self-pipe.
    flood(&pid, "6000");
    // Once its main loop is stuck printing, a second flood fills the
    // self-pipe for sure: the SIGTERM after it finds no room for its record.
    wait_blocked_writing_stdout(proc.pid());
    flood(&pid, "2000");
    proc.signal(Signal::SIGTERM);
    let rest = drain(out);
    let out = proc.finish(SHORT);
    let stdout = rest.join().unwrap();
    out.assert_stopped_by(Signal::SIGTERM);
    assert_eq!(field(&stdout, "messages"), 8000, "{stdout}");
    let errors = field(&stdout, "errors");
    let printed = stdout.lines().filter(|l| l.contains("value 7")).count() as u64;
    // Every handled signal is either printed or counted as an error.
    assert!(errors > 0, "{stdout}");
    assert_eq!(printed + errors, 8000, "{stdout}");
    assert!(
        stdout.contains("NOT recorded: the self-pipe was full"),
        "{stdout}"
    );
    assert!(stdout.contains("a stop request is never lost"), "{stdout}");
}

#[test]
fn a_receiver_with_count_finishes_even_when_records_are_lost() {
    let (proc, out) = stalled_receiver(&["--count", "3000"]);
    let pid = proc.pid().to_string();
    flood(&pid, "3000");
    let rest = drain(out);
    let out = proc.finish(SHORT);
    let stdout = rest.join().unwrap();
    assert_eq!(out.code(), 1, "{}\n{stdout}", out.describe());
    assert!(
        out.stderr.contains("lost their record"),
        "{}",
        out.describe()
    );
    assert_eq!(field(&stdout, "messages"), 3000, "{stdout}");
    assert!(field(&stdout, "errors") > 0, "{stdout}");
}

/// Set RLIMIT_SIGPENDING of process `pid`: the kernel checks the target's
/// limit when a signal is queued. (It counts the pending signals of all of
/// root's processes, so a low limit also keeps a flood from filling the
/// queue other processes on this machine share.)
fn limit_sigpending(pid: Pid, n: libc::rlim_t) {
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: a valid pid, resource and rlimit; the old value is not wanted.
    let rc = unsafe {
        libc::prlimit(
            pid.as_raw(),
            libc::RLIMIT_SIGPENDING,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn the_sender_waits_out_a_full_queue_of_a_stopped_receiver() {
    let (proc, pid) = receiver(&["--count", "600", "--quiet"]);
    // The receiver's RLIMIT_SIGPENDING decides how many signals may wait
    // for it: make it small, then stop it so they pile up.
    limit_sigpending(proc.pid(), 200);
    proc.signal(Signal::SIGSTOP);
    let mut sender = Proc::spawn(
        SIGNAL_DEMO,
        &[
            "sender",
            "--pid",
            &pid,
            "--signal",
            "RTMIN+2",
            "--value",
            "3",
            "--count",
            "600",
            "--timeout",
            "50",
            "--quiet",
        ],
    );
    thread::sleep(Duration::from_millis(1500));
    assert!(sender.running(), "the sender gave up on a full queue");
    proc.signal(Signal::SIGCONT);
    let sent = sender.finish(SHORT);
    assert_eq!(sent.code(), 0, "{}", sent.describe());
    assert!(
        sent.stdout.contains("queue was full"),
        "{}",
        sent.describe()
    );
    assert_eq!(sent.summary_field("messages"), "600");
    let out = proc.finish(SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("messages"), "600");
    assert_eq!(out.summary_field("errors"), "0");
}

#[test]
fn the_receiver_gives_up_after_its_idle_timeout() {
    // No signal at all, --timeout 1.
    let started = Instant::now();
    let out = run(SIGNAL_DEMO, &["receiver", "--timeout", "1"], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("no signal for 1s"),
        "{}",
        out.describe()
    );
    assert_eq!(out.summary_field("messages"), "0");
    assert!(started.elapsed() < Duration::from_secs(30));
    // One of five, then silence.
    let (proc, pid) = receiver(&["--count", "5", "--timeout", "1"]);
    let sent = run(
        SIGNAL_DEMO,
        &["sender", "--pid", &pid, "--signal", "USR1"],
        SHORT,
    );
    assert_eq!(sent.code(), 0, "{}", sent.describe());
    let out = proc.finish(SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(out.stderr.contains("1 of 5 arrived"), "{}", out.describe());
    assert!(out.stderr.contains("coalesce"), "{}", out.describe());
}

#[test]
fn a_sender_killed_or_stopped_mid_run() {
    // Killed: the receiver with --count notices the silence and reports.
    let (proc, pid) = receiver(&["--count", "1000000000", "--timeout", "2", "--quiet"]);
    // A sender faster than the receiver backs off at this many pending.
    limit_sigpending(proc.pid(), 2000);
    let mut sender = Proc::spawn(
        SIGNAL_DEMO,
        &[
            "sender",
            "--pid",
            &pid,
            "--signal",
            "RTMIN+1",
            "--value",
            "1",
            "--count",
            "1000000000",
            "--quiet",
        ],
    );
    thread::sleep(Duration::from_millis(300));
    assert!(sender.running());
    sender.signal(Signal::SIGKILL);
    sender.finish(SHORT).assert_stopped_by(Signal::SIGKILL);
    let out = proc.finish(SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("no signal for 2s"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("of 1000000000 arrived"),
        "{}",
        out.describe()
    );
    // Ctrl-C: the sender stops between two sends, reports, exits 130.
    let (proc, pid) = receiver(&["--quiet"]);
    let sender = Proc::spawn(
        SIGNAL_DEMO,
        &[
            "sender",
            "--pid",
            &pid,
            "--signal",
            "USR1",
            "--count",
            "1000000000",
            "--quiet",
        ],
    );
    thread::sleep(Duration::from_millis(300));
    sender.signal(Signal::SIGINT);
    let sent = sender.finish(SHORT);
    sent.assert_stopped_by(Signal::SIGINT);
    let n: u64 = sent.summary_field("messages").parse().unwrap();
    assert!(n > 0 && n < 1_000_000_000, "{}", sent.describe());
    // The receiver is still there, unharmed.
    assert_eq!(kill(Pid::from_raw(pid.parse().unwrap()), None), Ok(()));
    proc.signal(Signal::SIGTERM);
    proc.finish(SHORT).assert_stopped_by(Signal::SIGTERM);
}

#[test]
fn a_second_ctrl_c_ends_a_receiver_stuck_printing() {
    use std::os::unix::process::ExitStatusExt;
    let (proc, out) = stalled_receiver(&[]);
    let pid = proc.pid().to_string();
    flood(&pid, "6000");
    wait_blocked_writing_stdout(proc.pid());
    // The first Ctrl-C asks; the loop cannot act on it while stdout is full.
    proc.signal(Signal::SIGINT);
    thread::sleep(Duration::from_millis(300));
    wait_blocked_writing_stdout(proc.pid());
    // The second gets the default action (SA_RESETHAND): the end, at once.
    proc.signal(Signal::SIGINT);
    let out_thread = drain(out);
    let done = proc.finish(SHORT);
    let _ = out_thread.join();
    assert_eq!(
        done.status.signal(),
        Some(libc::SIGINT),
        "{}",
        done.describe()
    );
}

/// The lines of one step of the tour, from its heading to the next one.
fn step<'a>(stdout: &'a str, number: &str) -> Vec<&'a str> {
    let heading = format!("== {number}. ");
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(&heading))
        .skip(1)
        .take_while(|l| !l.starts_with("== "))
        .collect()
}

fn assert_step_says(stdout: &str, number: &str, expected: &[&str]) {
    let lines = step(stdout, number).join("\n");
    for e in expected {
        assert!(
            lines.contains(e),
            "step {number}: missing {e:?}\n{lines}\n---\n{stdout}"
        );
    }
}

/// Steps 10 to 14 show their lessons on every run (3 runs): the wake-up
/// sent between the flag check and pause() is lost (pause sleeps until the
/// SIGALRM bound), the same one with sigsuspend is kept; sigtimedwait
/// takes a blocked signal with its siginfo, then times out with EAGAIN;
/// five exits while SIGCHLD is blocked make one SIGCHLD, whose WNOHANG
/// loop reaps all five; SIG_IGN leaves no zombie and waitpid says ECHILD;
/// a truncated file's mapping raises SIGBUS; the ping-pong gives a rate;
/// a pidfd sees its process exit, then says ESRCH, also when its pid has
/// been reused (made to happen in a new pid namespace) and kill(pid, 0)
/// answers for the newcomer.
#[test]
fn the_tour_shows_sigsuspend_sigtimedwait_reaping_sigbus_ping_pong_and_pidfds() {
    for _ in 0..3 {
        let out = run(SIGNAL_DEMO, &["--quiet"], SHORT);
        assert_eq!(out.code(), 0, "{}", out.describe());
        assert_eq!(out.summary_field("errors"), "0");
        let stdout = &out.stdout;
        assert_step_says(
            stdout,
            "10",
            &[
                "In the window before pause(), kill(self, SIGUSR1): the handler ran at once",
                "SIGALRM bound ended it: the wake-up was lost",
                "in the window: not handled, pending (blocked)",
                "woken by the handler of that very SIGUSR1, no SIGALRM needed",
            ],
        );
        assert_step_says(
            stdout,
            "11",
            &[
                "via sigqueue (SI_QUEUE), value 77: accepted synchronously, no handler ran",
                "with nothing pending → EAGAIN after",
            ],
        );
        assert_step_says(
            stdout,
            "12",
            &[
                "SIGCHLD is pending: one bit for five exits",
                "the SIGCHLD handler ran 1 time(s) for 5 exits",
                "loop reaped 5; zombies left: 0",
                "no zombie, /proc/",
                "→ ECHILD",
            ],
        );
        assert_step_says(stdout, "13", &["waitpid says it was killed by SIGBUS"]);
        let pong = step(stdout, "14").join("\n");
        let rate = pong
            .split("about ")
            .nth(1)
            .and_then(|r| r.split(" round trips per second").next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("step 14 names no rate\n{stdout}"));
        assert!(rate > 0, "{pong}");
        assert!(pong.contains("10000 round trips of SIGUSR1"), "{pong}");
        // As root: the pid reuse is made to happen in a new pid namespace.
        assert_step_says(
            stdout,
            "15",
            &[
                "poll: not readable, it runs",
                "poll(pidfd, POLLIN) → readable: it has exited",
                "pidfd_send_signal on the same pidfd now → ESRCH",
                ": A's number, reused",
                "0) → success: it answers for B, not the A you meant",
                "SIGKILL) → ESRCH: the pidfd cannot reach the newcomer",
            ],
        );
    }
}

/// Not root: no new pid namespace, so step 15 tells the pid-reuse race in
/// words instead of failing; the rest of the tour runs the same.
#[test]
fn the_tour_as_another_user_tells_the_pid_reuse_race_in_words() {
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let mut cmd = demo(SIGNAL_DEMO, &["--quiet"]);
    cmd.uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = Proc::start(cmd).finish(SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("errors"), "0");
    assert_step_says(
        &out.stdout,
        "15",
        &[
            "pidfd_send_signal on the same pidfd now → ESRCH",
            "not shown here: a new pid namespace and its ns_last_pid need root",
        ],
    );
}
