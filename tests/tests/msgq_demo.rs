//! End-to-end tests of msgq-demo: real System V and POSIX queues, real
//! processes, selection by type and priority, limits, interop by TEXT.

use common::cleanup::unique_name;
use ipc_tests::{LONG, Output, Proc, SHORT, assert_usage_error, key_file, run};
use nix::sys::signal::Signal;

const MSGQ_DEMO: &str = "msgq-demo";

fn ok(out: &Output) {
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
}

/// The quoted texts a receiver printed, in order.
fn texts(out: &Output) -> Vec<String> {
    out.stdout
        .lines()
        .filter_map(|l| l.split(": \"").nth(1))
        .map(|t| t.trim_end_matches('"').to_string())
        .collect()
}

/// Nothing of ours in ipcs -q for this key file, and no POSIX queue name.
fn assert_no_queue(key: Option<&str>, name: Option<&str>) {
    if let Some(key) = key {
        let out = run(MSGQ_DEMO, &["sysv", "remove", "--key", key], SHORT);
        assert_eq!(
            out.code(),
            1,
            "a queue is left for {key}\n{}",
            out.describe()
        );
    }
    if let Some(name) = name {
        let out = run(MSGQ_DEMO, &["posix", "remove", "--name", name], SHORT);
        assert_eq!(out.code(), 1, "queue {name} is left\n{}", out.describe());
    }
}

#[test]
fn story_runs_both_apis_and_the_client_server() {
    let out = run(MSGQ_DEMO, &["--clients", "4", "--quiet"], LONG);
    ok(&out);
    assert_eq!(out.summary_field("mechanism"), "msgq");
    for expected in [
        "msg_qnum = 6",
        "type 2: \"two-a\"",
        "type 1: \"one-b\"",
        "type 3: \"three-b\"",
        "→ ENOMSG",
        "→ E2BIG",
        "msgrcv(MSG_NOERROR) → 10 bytes",
        "/proc/sys/fs/mqueue: msg_max = ",
        "mq_getattr: 5 messages waiting",
        "mq_receive → EAGAIN",
        "mq_timedreceive(300 ms) → ETIMEDOUT",
        "SI_MESGQ",
        "served 20 requests",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    let posix_order: Vec<String> = texts(&out)
        .into_iter()
        .filter(|t| ["high-a", "high-b", "mid-a", "low-a", "low-b"].contains(&t.as_str()))
        .collect();
    assert_eq!(posix_order, ["high-a", "high-b", "mid-a", "low-a", "low-b"]);
}

#[test]
fn sysv_type_selection_on_a_known_set() {
    let (_dir, key) = key_file("msgq-demo-test");
    for (mtype, words) in [
        ("3", ["c1", "c2"]),
        ("1", ["a1", "a2"]),
        ("2", ["b1", "b2"]),
    ] {
        let mut args = vec!["sysv", "sender", "--key", &key, "--type", mtype];
        args.extend(words);
        ok(&run(MSGQ_DEMO, &args, SHORT));
    }
    // The senders have exited: the six messages wait in the kernel.
    let take = |msgtyp: &str, count: &str| {
        let out = run(
            MSGQ_DEMO,
            &[
                "sysv", "receiver", "--key", &key, "--type", msgtyp, "--count", count, "--keep",
            ],
            SHORT,
        );
        ok(&out);
        texts(&out)
    };
    assert_eq!(take("2", "1"), ["b1"]); // exactly type 2
    assert_eq!(take("-2", "2"), ["a1", "a2"]); // lowest type <= 2 first
    assert_eq!(take("0", "2"), ["c1", "c2"]); // oldest of any type
    // --type=-3 form; then the queue is removed (no --keep).
    let out = run(
        MSGQ_DEMO,
        &["sysv", "receiver", "--key", &key, "--type=-3", "--nowait"],
        SHORT,
    );
    ok(&out);
    assert_eq!(texts(&out), ["b2"]);
    assert!(out.stdout.contains("ENOMSG"));
    assert_no_queue(Some(&key), None);
}

#[test]
fn posix_priority_order_and_fifo_within_a_priority() {
    let name = format!("/{}", unique_name("msgq-test"));
    for (priority, words) in [
        ("1", ["l1", "l2"]),
        ("9", ["h1", "h2"]),
        ("4", ["m1", "m2"]),
    ] {
        let mut args = vec!["posix", "sender", "--name", &name, "--priority", priority];
        args.extend(words);
        ok(&run(MSGQ_DEMO, &args, SHORT));
    }
    let out = run(
        MSGQ_DEMO,
        &["posix", "receiver", "--name", &name, "--timeout", "1"],
        SHORT,
    );
    ok(&out);
    assert_eq!(texts(&out), ["h1", "h2", "m1", "m2", "l1", "l2"]);
    assert!(out.stdout.contains("priority 9: \"h1\""));
    assert!(out.stdout.contains("ETIMEDOUT"));
    assert_no_queue(None, Some(&name));
}

#[test]
fn hundred_thousand_messages_each_api() {
    let (_dir, key) = key_file("msgq-demo-test");
    let name = format!("/{}", unique_name("msgq-test"));
    let runs: [(&[&str], &[&str]); 2] = [
        (
            &[
                "sysv", "receiver", "--key", &key, "--count", "100000", "--quiet",
            ],
            &[
                "sysv", "sender", "--key", &key, "--count", "100000", "--quiet",
            ],
        ),
        (
            &[
                "posix", "receiver", "--name", &name, "--count", "100000", "--quiet",
            ],
            &[
                "posix", "sender", "--name", &name, "--count", "100000", "--quiet",
            ],
        ),
    ];
    for (receiver, sender) in runs {
        let receiver = Proc::spawn(MSGQ_DEMO, receiver);
        let sent = Proc::spawn(MSGQ_DEMO, sender).finish(LONG);
        ok(&sent);
        let out = receiver.finish(LONG);
        ok(&out);
        assert_eq!(out.summary_field("messages"), "100000");
        assert_eq!(out.summary_field("bytes"), "6400000");
        assert_eq!(out.summary_field("errors"), "0");
        assert!(
            out.stdout
                .contains("received=100000 lost=0 duplicated=0 reordered=0 corrupted=0")
        );
    }
    assert_no_queue(Some(&key), Some(&name));
}

#[test]
fn nowait_timeout_and_empty_paths() {
    let (_dir, key) = key_file("msgq-demo-test");
    // No queue yet: a receiver that will not wait says so plainly.
    let out = run(
        MSGQ_DEMO,
        &["sysv", "receiver", "--key", &key, "--nowait"],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("no System V queue for --key"),
        "{}",
        out.describe()
    );
    ok(&run(
        MSGQ_DEMO,
        &["sysv", "sender", "--key", &key, "one"],
        SHORT,
    ));
    let out = run(
        MSGQ_DEMO,
        &["sysv", "receiver", "--key", &key, "--nowait"],
        SHORT,
    );
    ok(&out);
    assert_eq!(texts(&out), ["one"]);
    assert!(out.stdout.contains("ENOMSG"), "{}", out.describe());
    let name = format!("/{}", unique_name("msgq-test"));
    let out = run(
        MSGQ_DEMO,
        &["posix", "receiver", "--name", &name, "--timeout", "1"],
        SHORT,
    );
    ok(&out);
    assert!(out.stdout.contains("ETIMEDOUT"), "{}", out.describe());
    assert_no_queue(Some(&key), Some(&name));
}

#[test]
fn oversize_and_limits_name_the_knob() {
    let (_dir, key) = key_file("msgq-demo-test");
    let out = run(
        MSGQ_DEMO,
        &["sysv", "sender", "--key", &key, "--size", "1000000"],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("/proc/sys/kernel/msgmax"),
        "{}",
        out.describe()
    );
    let name = format!("/{}", unique_name("msgq-test"));
    // A queue with 100-byte messages, then a longer TEXT.
    ok(&run(
        MSGQ_DEMO,
        &[
            "posix",
            "sender",
            "--name",
            &name,
            "--msgsize",
            "100",
            "short",
        ],
        SHORT,
    ));
    let long = "x".repeat(200);
    let out = run(
        MSGQ_DEMO,
        &["posix", "sender", "--name", &name, &long],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("larger than the queue's msgsize, 100 bytes"),
        "{}",
        out.describe()
    );
    let out = run(
        MSGQ_DEMO,
        &[
            "posix",
            "sender",
            "--name",
            &format!("/{}", unique_name("msgq-test")),
            "--maxmsg",
            "1000000",
            "x",
        ],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("/proc/sys/fs/mqueue/msg_max"),
        "{}",
        out.describe()
    );
    ok(&run(
        MSGQ_DEMO,
        &["posix", "remove", "--name", &name],
        SHORT,
    ));
    assert_no_queue(Some(&key), Some(&name));
}

#[test]
fn text_messages_interoperate_and_bytes_are_escaped() {
    let (_dir, key) = key_file("msgq-demo-test");
    ok(&run(
        MSGQ_DEMO,
        &[
            "sysv",
            "sender",
            "--key",
            &key,
            "--",
            "-dash",
            "tab\there",
            "plain",
        ],
        SHORT,
    ));
    let out = run(
        MSGQ_DEMO,
        &["sysv", "receiver", "--key", &key, "--nowait"],
        SHORT,
    );
    ok(&out);
    assert!(
        out.stdout.contains("type 1: \"-dash\""),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("type 1: b\"tab\\there\""),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("type 1: \"plain\""),
        "{}",
        out.describe()
    );
    assert_no_queue(Some(&key), None);
}

#[test]
fn ctrl_c_stops_a_waiting_receiver() {
    let name = format!("/{}", unique_name("msgq-test"));
    let mut receiver = Proc::spawn(MSGQ_DEMO, &["posix", "receiver", "--name", &name]);
    receiver.wait_for_line(|l| l.contains("Ctrl-C to stop"), SHORT);
    receiver.signal(Signal::SIGINT);
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 130, "{}", out.describe());
    // The receiver removes its queue on every way out, Ctrl-C included.
    assert_no_queue(None, Some(&name));
}

#[test]
fn bad_command_lines_exit_2_with_one_line_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "--bogus"),
        (&["--clients", "0"], "--clients"),
        (&["--key", "/tmp"], "--key"),
        (&["sysv"], "name a role"),
        (&["sysv", "sender"], "--key"),
        (
            &["sysv", "sender", "--key", "/k", "--type", "0", "x"],
            "--type",
        ),
        (
            &["sysv", "sender", "--key", "/k", "--type", "-2", "x"],
            "--type",
        ),
        (
            &["sysv", "receiver", "--key", "/k", "--type", "abc"],
            "--type",
        ),
        (
            &["sysv", "receiver", "--key", "/k", "--priority", "3"],
            "--priority",
        ),
        (&["posix", "sender", "--name", "noslash"], "--name"),
        (&["posix", "sender", "--name", "/a/b"], "--name"),
        (&["posix", "sender"], "--name"),
        (
            &["posix", "sender", "--name", "/x", "--priority", "32768"],
            "--priority",
        ),
        (
            &["posix", "receiver", "--name", "/x", "--nowait"],
            "--nowait",
        ),
        (&["posix", "receiver", "--name", "/x", "stray"], "stray"),
        (
            &["posix", "sender", "--name", "/x", "--count", "3", "text"],
            "TEXT",
        ),
        (
            &["posix", "sender", "--name", "/x", "--size", "99999999999"],
            "--size",
        ),
        (&["sysv", "client"], "--key"),
    ];
    for (args, needle) in cases {
        assert_usage_error(MSGQ_DEMO, args, needle);
    }
}
