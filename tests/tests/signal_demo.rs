//! End-to-end tests of signal-demo: real signals between real processes.

use std::process::Command;

use ipc_tests::{Proc, SHORT, assert_usage_error, run};

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
        .filter(|l| l.contains("SIGRTMIN+3"))
        .filter_map(|l| l.rsplit("value ").next())
        .collect();
    assert_eq!(values, ["1", "2", "3", "4", "5"], "{}", out.describe());
}

#[test]
fn sigterm_ends_the_receiver_with_a_summary_and_status_0() {
    let (proc, pid) = receiver(&[]);
    let sent = run(
        SIGNAL_DEMO,
        &["sender", "--pid", &pid, "--signal", "TERM"],
        SHORT,
    );
    assert_eq!(sent.code(), 0, "{}", sent.describe());
    let out = proc.finish(SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(out.stdout.contains("SIGTERM (15)") && out.stdout.contains("shutting down"));
    assert_eq!(out.summary_field("messages"), "1");
}

#[test]
fn bad_input_and_missing_processes() {
    let cases: &[(&[&str], &str)] = &[
        (&["sender", "--pid", "1", "--signal", "FOO"], "not a signal"),
        (
            &["sender", "--pid", "1", "--signal", "RTMIN+99"],
            "out of range",
        ),
        (&["sender", "--pid", "1", "--signal", "0"], "--signal"),
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
