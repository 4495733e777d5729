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
    // A --size over this kernel's msgmax is a command-line mistake: exit 2.
    assert_eq!(out.code(), 2, "{}", out.describe());
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
        // `sysv` and `posix` alone run their part of the story (below);
        // a role that is not one, or an option the variant lacks, is refused.
        (&["sysv", "bogus"], "unknown role"),
        (&["posix", "bogus"], "unknown role"),
        (&["posix", "--count", "3"], "the POSIX story"),
        (&["posix", "--clients", "2"], "the POSIX story"),
        (&["sysv", "--key", "/k"], "--key"),
        (&["sysv", "--size", "9000"], "--size"),
        // Over this kernel's msgmax (8192 here): a usage error too.
        (
            &[
                "sysv", "sender", "--key", "/k", "--count", "1", "--size", "9000",
            ],
            "msgmax",
        ),
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
        (&["sysv", "server"], "--key"),
        (&["posix", "sender", "--name", "/.", "x"], "--name"),
        (&["posix", "receiver", "--name", "/.."], "--name"),
        (&["posix", "remove", "--name", "/."], "--name"),
        (&["--size", "9000"], "--size"),
        (&["--timeout", "5"], "--timeout"),
        (
            &["sysv", "client", "--key", "/k", "--size", "100000"],
            "--size",
        ),
        (
            &["sysv", "server", "--key", "/k", "--size", "100"],
            "--size",
        ),
        (
            &["sysv", "client", "--key", "/k", "--timeout", "0"],
            "--timeout",
        ),
    ];
    for (args, needle) in cases {
        assert_usage_error(MSGQ_DEMO, args, needle);
    }
}

// ---------------------------------------------------------------------------
// Round two: the server role, exit status on Ctrl-C, someone else's queues,
// limits named, one summary line, bounded waits
// ---------------------------------------------------------------------------

/// Every System V queue id a run printed ("msqid N").
fn msqids(text: &str) -> Vec<i32> {
    let mut ids: Vec<i32> = text
        .split("msqid ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// True if System V queue `id` still exists.
fn msqid_exists(id: i32) -> bool {
    let mut ds = std::mem::MaybeUninit::<libc::msqid_ds>::uninit();
    // SAFETY: IPC_STAT writes one msqid_ds into the buffer we point to.
    let rc = unsafe { libc::msgctl(id, libc::IPC_STAT, ds.as_mut_ptr()) };
    rc == 0 || nix::errno::Errno::last() == nix::errno::Errno::EACCES
}

/// The queues a run made itself ("... = msqid N"), not those it named.
fn own_msqids(text: &str) -> Vec<i32> {
    msqids(text)
        .into_iter()
        .filter(|id| text.contains(&format!("= msqid {id}")))
        .collect()
}

fn assert_msqids_gone(out_text: &str) {
    for id in msqids(out_text) {
        assert!(!msqid_exists(id), "msqid {id} was left behind\n{out_text}");
    }
}

const NOBODY: u32 = 65534;

fn as_nobody(args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = ipc_tests::demo(MSGQ_DEMO, args);
    cmd.uid(NOBODY)
        .gid(NOBODY)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = Proc::start(cmd).finish(SHORT);
    out.assert_no_panic();
    out
}

fn last_error(out: &Output) -> String {
    out.stderr.lines().last().unwrap_or_default().to_string()
}

#[test]
fn sysv_server_serves_clients_and_clients_without_a_server_exit_1() {
    let (_dir, key) = key_file("msgq-demo-test");
    // A client first: no server queue, so it says so at once.
    let out = run(MSGQ_DEMO, &["sysv", "client", "--key", &key], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        last_error(&out).contains("no server for --key") && out.stderr.contains("sysv server"),
        "{}",
        out.describe()
    );
    assert_msqids_gone(&out.stdout);
    assert_no_queue(Some(&key), None);

    let mut server = Proc::spawn(MSGQ_DEMO, &["sysv", "server", "--key", &key]);
    server.wait_for_line(|l| l.contains("waiting for requests"), SHORT);
    let clients: Vec<Proc> = (0..3)
        .map(|_| {
            Proc::spawn(
                MSGQ_DEMO,
                &[
                    "sysv", "client", "--key", &key, "--count", "50", "--size", "200",
                ],
            )
        })
        .collect();
    let mut private = Vec::new();
    for client in clients {
        let out = client.finish(SHORT);
        ok(&out);
        assert_eq!(out.summary_field("messages"), "50");
        assert_eq!(out.summary_field("bytes"), "10000");
        assert_eq!(out.stdout.matches("summary:").count(), 1);
        assert!(out.stdout.contains("(200 bytes, checked)"));
        private.extend(own_msqids(&out.stdout));
    }
    // Each client removed its private queue.
    assert_eq!(private.len(), 3);
    for id in private {
        assert!(!msqid_exists(id), "private msqid {id} left");
    }
    // Ctrl-C: the server stops promptly (msgrcv returns EINTR) and
    // removes its queue.
    server.signal(Signal::SIGINT);
    let out = server.finish(SHORT);
    out.assert_stopped_by(Signal::SIGINT);
    assert!(
        out.stdout.contains("reply into its queue"),
        "{}",
        out.describe()
    );
    assert_no_queue(Some(&key), None);
}

#[test]
fn a_client_whose_server_dies_or_never_answers_exits_1_and_leaves_nothing() {
    let (_dir, key) = key_file("msgq-demo-test");
    for signal in [Signal::SIGKILL, Signal::SIGTERM, Signal::SIGINT] {
        let mut server = Proc::spawn(MSGQ_DEMO, &["sysv", "server", "--key", &key, "--quiet"]);
        server.wait_for_line(|l| l.contains("waiting for requests"), SHORT);
        let mut client = Proc::spawn(
            MSGQ_DEMO,
            &[
                "sysv",
                "client",
                "--key",
                &key,
                "--count",
                "1000000000",
                "--quiet",
            ],
        );
        client.wait_for_line(|l| l.contains("serves msqid"), SHORT);
        std::thread::sleep(std::time::Duration::from_millis(300));
        server.signal(signal);
        let killed = std::time::Instant::now();
        server.finish(SHORT).assert_stopped_by(signal);
        let out = client.finish(SHORT);
        assert!(
            killed.elapsed() < std::time::Duration::from_secs(5),
            "{signal:?}: the client took {:?}",
            killed.elapsed()
        );
        assert_eq!(out.code(), 1, "{signal:?}\n{}", out.describe());
        let last = last_error(&out);
        assert!(
            last.contains("the server (pid") || last.contains("the server has stopped"),
            "{signal:?}: {}",
            out.describe()
        );
        let private = own_msqids(&out.stdout);
        assert_eq!(private.len(), 1, "{}", out.describe());
        assert!(!msqid_exists(private[0]), "{signal:?}: private queue left");
        if signal == Signal::SIGKILL {
            // A killed server removes nothing; its queue holds no request
            // of the client, and the remove role takes it away.
            let out = run(MSGQ_DEMO, &["sysv", "remove", "--key", &key], SHORT);
            ok(&out);
            assert!(
                out.stdout.contains("with 0 message(s)"),
                "{}",
                out.describe()
            );
        }
        assert_no_queue(Some(&key), None);
    }

    // A queue with no live receiver (left by a sender): the client says it
    // is waiting for a server, gives up after --timeout, takes its request
    // back and removes its private queue.
    ok(&run(
        MSGQ_DEMO,
        &["sysv", "sender", "--key", &key, "--quiet", "hi"],
        SHORT,
    ));
    let started = std::time::Instant::now();
    let out = run(
        MSGQ_DEMO,
        &["sysv", "client", "--key", &key, "--timeout", "1"],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        out.stdout.contains("waiting for a server"),
        "{}",
        out.describe()
    );
    assert!(
        last_error(&out).contains("no reply within 1 s"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("took my unanswered request back"));
    // Only the sender's message is left in the queue.
    let private = own_msqids(&out.stdout);
    assert_eq!(private.len(), 1, "{}", out.describe());
    assert!(!msqid_exists(private[0]));
    let rest = run(
        MSGQ_DEMO,
        &["sysv", "receiver", "--key", &key, "--nowait"],
        SHORT,
    );
    ok(&rest);
    assert_eq!(texts(&rest), ["hi"]);
    assert_no_queue(Some(&key), None);
}

#[test]
fn a_server_removes_the_private_queue_of_a_client_killed_by_sigkill() {
    let (_dir, key) = key_file("msgq-demo-test");
    let mut server = Proc::spawn(MSGQ_DEMO, &["sysv", "server", "--key", &key, "--quiet"]);
    server.wait_for_line(|l| l.contains("waiting for requests"), SHORT);
    let mut client = Proc::spawn(
        MSGQ_DEMO,
        &[
            "sysv",
            "client",
            "--key",
            &key,
            "--count",
            "1000000000",
            "--quiet",
        ],
    );
    let line = client.wait_for_line(|l| l.contains("IPC_PRIVATE"), SHORT);
    let private = msqids(&line)[0];
    std::thread::sleep(std::time::Duration::from_millis(300));
    client.signal(Signal::SIGKILL);
    client.finish(SHORT).assert_stopped_by(Signal::SIGKILL);
    assert!(msqid_exists(private), "nothing removed it yet");
    server.signal(Signal::SIGTERM);
    let out = server.finish(SHORT);
    out.assert_stopped_by(Signal::SIGTERM);
    assert!(
        out.stdout.contains(&format!(
            "without removing its queue: removed msqid {private}"
        )),
        "{}",
        out.describe()
    );
    assert!(!msqid_exists(private));
    assert_no_queue(Some(&key), None);
}

#[test]
fn a_second_server_for_a_key_in_use_is_refused() {
    let (_dir, key) = key_file("msgq-demo-test");
    let mut server = Proc::spawn(MSGQ_DEMO, &["sysv", "server", "--key", &key]);
    server.wait_for_line(|l| l.contains("waiting for requests"), SHORT);
    let out = run(MSGQ_DEMO, &["sysv", "server", "--key", &key], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(last_error(&out).contains("is in use"), "{}", out.describe());
    // The refused server removed nothing: a client is still served.
    let out = run(
        MSGQ_DEMO,
        &["sysv", "client", "--key", &key, "--count", "2"],
        SHORT,
    );
    ok(&out);
    server.signal(Signal::SIGTERM);
    server.finish(SHORT).assert_stopped_by(Signal::SIGTERM);
    assert_no_queue(Some(&key), None);
    // A server with --count and --timeout: bounded, exit 1 when idle.
    let out = run(
        MSGQ_DEMO,
        &[
            "sysv",
            "server",
            "--key",
            &key,
            "--count",
            "3",
            "--timeout",
            "1",
        ],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        last_error(&out).contains("no request for 1 s"),
        "{}",
        out.describe()
    );
    assert_no_queue(Some(&key), None);
}

/// Signal the story's whole process group, as Ctrl-C in a terminal does.
fn signal_story_at(args: &[&str], ready: &str, signal: Signal) {
    let mut story = Proc::spawn(MSGQ_DEMO, args);
    story.wait_for_line(|l| l.contains(ready), LONG);
    nix::sys::signal::killpg(story.pid(), signal).expect("killpg");
    let out = story.finish(SHORT);
    out.assert_stopped_by(signal);
    assert!(
        last_error(&out).contains(&format!("stopped by {signal:?}")),
        "{}",
        out.describe()
    );
    assert_msqids_gone(&out.stdout);
    for name in out
        .stdout
        .split("mq_open(")
        .skip(1)
        .filter_map(|rest| rest.split([',', ')']).next())
    {
        assert_no_queue(None, Some(name));
    }
}

#[test]
fn ctrl_c_stops_the_story_with_130_whatever_its_children_report() {
    // While a child role runs (the POSIX receiver waits 1 s for more),
    // while the parent serves in part 3, and while clients wait.
    signal_story_at(&[], "a receiver process takes them all", Signal::SIGINT);
    signal_story_at(&[], "mq_getattr", Signal::SIGINT);
    // SIGTERM to the group, then common's Peer drop sends each client a
    // second SIGTERM: the story must let them clean up first, or their
    // private queues are left (several runs: it was a race).
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGTERM,
        Signal::SIGTERM,
    ] {
        signal_story_at(
            &["--count", "1000000", "--quiet", "--clients", "4"],
            "started clients",
            signal,
        );
    }
}

#[test]
fn the_story_ends_with_one_summary_line_and_takes_count_size_quiet() {
    let out = run(
        MSGQ_DEMO,
        &["--clients", "2", "--count", "3", "--size", "100"],
        LONG,
    );
    ok(&out);
    assert_eq!(
        out.stdout.matches("summary:").count(),
        1,
        "{}",
        out.describe()
    );
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("summary: mechanism=msgq ")
    );
    assert!(
        out.stdout.contains("(100 bytes, checked)"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("served 6 requests"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("part 3 moved 12 messages"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("deadlock"), "{}", out.describe());
    assert_msqids_gone(&out.stdout);
    // --quiet: still one summary, no line per message.
    let out = run(MSGQ_DEMO, &["--quiet", "--size", "8176"], LONG);
    ok(&out);
    assert_eq!(out.stdout.matches("summary:").count(), 1);
    assert!(!out.stdout.contains("checked)"), "{}", out.describe());
    // Over the mechanism's limit: refused, naming msgmax.
    let out = assert_usage_error(MSGQ_DEMO, &["--size", "8177"], "--size");
    assert!(out.stderr.contains("msgmax"), "{}", out.describe());
}

#[test]
fn another_users_queues_are_left_alone_even_by_root() {
    use std::os::unix::fs::PermissionsExt;
    // A key file nobody can reach, and nobody's queues for it.
    let dir = common::cleanup::PrivateDir::create("msgq-demo-test").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, b"").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key = key.to_str().unwrap();
    let name = format!("/{}", unique_name("msgq-test"));
    ok(&as_nobody(&["sysv", "sender", "--key", key, "theirs"]));
    ok(&as_nobody(&["posix", "sender", "--name", &name, "theirs"]));
    let attempts: [&[&str]; 8] = [
        &["sysv", "receiver", "--key", key, "--nowait"],
        &["sysv", "receiver", "--key", key, "--timeout", "1"],
        &["sysv", "sender", "--key", key, "mine"],
        &["sysv", "remove", "--key", key],
        &["sysv", "server", "--key", key, "--timeout", "1"],
        &["sysv", "client", "--key", key, "--timeout", "1"],
        &["posix", "receiver", "--name", &name, "--timeout", "1"],
        &["posix", "remove", "--name", &name],
    ];
    for args in attempts {
        let out = run(MSGQ_DEMO, args, SHORT);
        assert_eq!(out.code(), 1, "{args:?}\n{}", out.describe());
        let last = last_error(&out);
        assert!(
            last.contains("belongs to nobody") && last.contains("leaving it alone"),
            "{args:?}: {}",
            out.describe()
        );
    }
    let out = run(
        MSGQ_DEMO,
        &["posix", "sender", "--name", &name, "mine"],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    // Untouched: nobody still finds their one message in each.
    let out = as_nobody(&["sysv", "receiver", "--key", key, "--nowait"]);
    ok(&out);
    assert_eq!(texts(&out), ["theirs"]);
    let out = as_nobody(&["posix", "receiver", "--name", &name, "--timeout", "1"]);
    ok(&out);
    assert_eq!(texts(&out), ["theirs"]);
    assert_no_queue(Some(key), Some(&name));
}

#[test]
fn rlimit_msgqueue_is_named_when_mq_open_runs_out_of_it() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("prlimit is not installed: skipped");
        return;
    }
    let name = format!("/{}", unique_name("msgq-test"));
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--msgqueue=10000")
        .arg(ipc_tests::bin(MSGQ_DEMO))
        .args(["posix", "sender", "--name", &name, "hi"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let out = Proc::start(cmd).finish(SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    let last = last_error(&out);
    assert!(
        last.contains("RLIMIT_MSGQUEUE")
            && last.contains("10000 bytes")
            && last.contains("ulimit -q"),
        "{}",
        out.describe()
    );
    assert!(!last.contains("queues_max"), "{}", out.describe());
    assert_no_queue(None, Some(&name));
}

#[test]
fn every_wait_is_bounded_by_timeout() {
    let (_dir, key) = key_file("msgq-demo-test");
    let name = format!("/{}", unique_name("msgq-test"));
    // Receivers: silence for --timeout ends the run; with --count short of
    // N that is an error.
    let out = run(
        MSGQ_DEMO,
        &["sysv", "receiver", "--key", &key, "--timeout", "1"],
        SHORT,
    );
    ok(&out);
    assert!(
        out.stdout.contains("no message for 1 s"),
        "{}",
        out.describe()
    );
    let out = run(
        MSGQ_DEMO,
        &[
            "sysv",
            "receiver",
            "--key",
            &key,
            "--timeout",
            "1",
            "--count",
            "3",
        ],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(last_error(&out).contains("expected 3 messages, 0 arrived"));
    let out = run(
        MSGQ_DEMO,
        &[
            "posix",
            "receiver",
            "--name",
            &name,
            "--timeout",
            "1",
            "--count",
            "3",
        ],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    // Senders on a full queue nobody reads: exit 1 after --timeout.
    let out = run(
        MSGQ_DEMO,
        &[
            "sysv",
            "sender",
            "--key",
            &key,
            "--size",
            "8192",
            "--count",
            "3",
            "--timeout",
            "1",
            "--quiet",
        ],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        last_error(&out).contains("full for 1 s"),
        "{}",
        out.describe()
    );
    let out = run(
        MSGQ_DEMO,
        &[
            "posix",
            "sender",
            "--name",
            &name,
            "--maxmsg",
            "1",
            "--timeout",
            "1",
            "a",
            "b",
        ],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        last_error(&out).contains("full for 1 s"),
        "{}",
        out.describe()
    );
    ok(&run(MSGQ_DEMO, &["sysv", "remove", "--key", &key], SHORT));
    ok(&run(
        MSGQ_DEMO,
        &["posix", "remove", "--name", &name],
        SHORT,
    ));
    assert_no_queue(Some(&key), Some(&name));
    // The help says which waits are bounded and which are not, and why.
    let help = run(MSGQ_DEMO, &["--help"], SHORT);
    ok(&help);
    for needle in [
        "--timeout SECS",
        "default 60",
        "A server waits for requests",
        "without limit unless --timeout is given",
        "The story bounds every wait",
    ] {
        assert!(help.stdout.contains(needle), "help lacks {needle:?}");
    }
}

#[test]
fn a_server_refuses_forged_requests_and_survives_garbage() {
    let (_dir, key) = key_file("msgq-demo-test");
    let (_dir2, other_key) = key_file("msgq-demo-test");
    let mut server = Proc::spawn(MSGQ_DEMO, &["sysv", "server", "--key", &key]);
    let line = server.wait_for_line(|l| l.contains("a new queue"), SHORT);
    let server_id = msqids(&line)[0];
    server.wait_for_line(|l| l.contains("waiting for requests"), SHORT);
    // Garbage: a text of type 5.
    ok(&run(
        MSGQ_DEMO,
        &["sysv", "sender", "--key", &key, "--type", "5", "junk"],
        SHORT,
    ));
    server.wait_for_line(|l| l.contains("not a request: dropped"), SHORT);
    // A forged request naming a keyed queue (not a client's private one).
    let out = run(
        MSGQ_DEMO,
        &["sysv", "sender", "--key", &other_key, "theirs"],
        SHORT,
    );
    ok(&out);
    let victim = own_msqids(&out.stdout)[0];
    let mut message = (std::process::id() as libc::c_long).to_ne_bytes().to_vec();
    message.extend_from_slice(b"RQ01");
    message.extend_from_slice(&victim.to_le_bytes());
    message.extend_from_slice(&0u64.to_le_bytes());
    message.extend_from_slice(b"forged reply");
    let len = message.len() - size_of::<libc::c_long>();
    // SAFETY: `message` is a long type followed by `len` bytes.
    let rc = unsafe { libc::msgsnd(server_id, message.as_ptr().cast(), len, 0) };
    assert_eq!(rc, 0, "msgsnd: {}", std::io::Error::last_os_error());
    server.wait_for_line(
        |l| l.contains(&format!("names msqid {victim} is not a private queue")),
        SHORT,
    );
    // The server goes on serving real clients.
    let out = run(
        MSGQ_DEMO,
        &["sysv", "client", "--key", &key, "--count", "3"],
        SHORT,
    );
    ok(&out);
    server.signal(Signal::SIGTERM);
    server.finish(SHORT).assert_stopped_by(Signal::SIGTERM);
    // The victim got nothing.
    let out = run(
        MSGQ_DEMO,
        &["sysv", "receiver", "--key", &other_key, "--nowait"],
        SHORT,
    );
    ok(&out);
    assert_eq!(texts(&out), ["theirs"]);
    assert_no_queue(Some(&key), None);
    assert_no_queue(Some(&other_key), None);
}

#[test]
fn sysv_and_posix_without_a_role_run_their_part_of_the_story() {
    // `msgq-demo sysv` / `msgq-demo posix`: the story's steps of one API,
    // numbered from 1, one summary line last, nothing left behind.
    let out = run(
        MSGQ_DEMO,
        &["sysv", "--clients", "2", "--count", "2", "--quiet"],
        LONG,
    );
    ok(&out);
    assert_eq!(out.summary_field("mechanism"), "msgq-sysv");
    assert_eq!(out.stdout.matches("summary:").count(), 1);
    for expected in [
        "== 1. System V",
        "type 2: \"two-a\"",
        "→ E2BIG",
        "== 2. 2 clients and a server",
        "served 4 requests",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    assert!(!out.stdout.contains("mq_open("), "{}", out.describe());
    assert_msqids_gone(&out.stdout);
    let out = run(MSGQ_DEMO, &["posix", "--quiet"], LONG);
    ok(&out);
    assert_eq!(out.summary_field("mechanism"), "msgq-posix");
    assert_eq!(out.stdout.matches("summary:").count(), 1);
    for expected in ["== 1. POSIX", "mq_getattr: 5 messages waiting", "SI_MESGQ"] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    assert!(!out.stdout.contains("msgget("), "{}", out.describe());
    let posix_order: Vec<String> = texts(&out)
        .into_iter()
        .filter(|t| ["high-a", "high-b", "mid-a", "low-a", "low-b"].contains(&t.as_str()))
        .collect();
    assert_eq!(posix_order, ["high-a", "high-b", "mid-a", "low-a", "low-b"]);
    for name in out
        .stdout
        .split("mq_open(")
        .skip(1)
        .filter_map(|rest| rest.split([',', ')']).next())
    {
        assert_no_queue(None, Some(name));
    }
}

// ---------------------------------------------------------------------------
// Round three: the story's lessons of MSG_EXCEPT, msg_qbytes/msgmnb,
// mq_notify by thread and its re-arm, /dev/mqueue/NAME, EMSGSIZE
// ---------------------------------------------------------------------------

/// Lines of `out` that contain every one of `needles`, at least one.
fn assert_line(out: &Output, needles: &[&str]) {
    assert!(
        out.stdout
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n))),
        "no line with all of {needles:?}\n{}",
        out.describe()
    );
}

fn sysv_story() -> Output {
    let out = run(
        MSGQ_DEMO,
        &["sysv", "--clients", "1", "--count", "1", "--quiet"],
        LONG,
    );
    ok(&out);
    assert_msqids_gone(&out.stdout);
    out
}

fn posix_story() -> Output {
    let out = run(MSGQ_DEMO, &["posix", "--quiet"], LONG);
    ok(&out);
    for name in out
        .stdout
        .split("mq_open(")
        .skip(1)
        .filter_map(|rest| rest.split([',', ')']).next())
    {
        assert_no_queue(None, Some(name));
    }
    out
}

#[test]
fn story_msg_except_takes_the_oldest_message_not_of_the_type() {
    let out = sysv_story();
    assert_line(
        &out,
        &[
            "msgrcv(msgtyp 1, IPC_NOWAIT|MSG_EXCEPT)",
            "→ type 2 \"two-a\"",
        ],
    );
    assert_line(
        &out,
        &[
            "msgrcv(msgtyp 1, IPC_NOWAIT|MSG_EXCEPT)",
            "→ type 3 \"three-a\"",
        ],
    );
    assert_line(
        &out,
        &["msgrcv(msgtyp 1, IPC_NOWAIT|MSG_EXCEPT)", "→ ENOMSG"],
    );
    assert_line(
        &out,
        &["msgrcv(msgtyp 1, IPC_NOWAIT)", "→ type 1 \"one-a\""],
    );
}

/// Whether this process (and so a demo it starts) has CAP_SYS_RESOURCE.
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    // CAP_SYS_RESOURCE is capability 24 (linux/capability.h).
    u64::from_str_radix(hex, 16).unwrap() & (1 << 24) != 0
}

#[test]
fn story_ipc_set_changes_msg_qbytes_and_msgmnb_is_the_ceiling_without_cap_sys_resource() {
    let msgmnb = std::fs::read_to_string("/proc/sys/kernel/msgmnb").unwrap();
    let msgmnb = msgmnb.trim();
    let out = sysv_story();
    assert_line(&out, &["msg_qbytes = ", msgmnb, "/proc/sys/kernel/msgmnb"]);
    assert_line(&out, &["IPC_SET msg_qbytes = 1000", "→ EAGAIN"]);
    if has_cap_sys_resource() {
        assert_line(
            &out,
            &[
                "allowed, this process has CAP_SYS_RESOURCE",
                "more than msgmnb",
            ],
        );
    } else {
        assert_line(
            &out,
            &["→ EPERM: this process (uid", "lacks CAP_SYS_RESOURCE"],
        );
    }
    if nix::unistd::geteuid().is_root() {
        // The unprivileged side, shown by a forked child that became nobody.
        assert_line(
            &out,
            &["became nobody (setuid 65534)", "to msgmnb + 1 → EPERM"],
        );
    }
    // Run by nobody itself: its own queue, EPERM over msgmnb, no child.
    let out = as_nobody(&["sysv", "--clients", "1", "--count", "1", "--quiet"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_line(
        &out,
        &["→ EPERM: this process (uid 65534) lacks CAP_SYS_RESOURCE"],
    );
    assert_line(&out, &["run as root, the story also forks a child"]);
    assert_msqids_gone(&out.stdout);
}

#[test]
fn story_mq_notify_by_thread_misses_a_second_message_until_re_armed() {
    let out = posix_story();
    assert_line(&out, &["mq_notify(SIGEV_THREAD, on_message)"]);
    assert_line(
        &out,
        &[
            "\"first\": on_message ran in thread",
            "not in this main thread",
        ],
    );
    assert_line(
        &out,
        &[
            "\"second\": nothing ran within 500 ms",
            "1 message waiting: missed",
        ],
    );
    assert_line(
        &out,
        &["mq_notify again, then empty the queue", "→ \"second\""],
    );
    assert_line(&out, &["\"third\": caught after re-arming"]);
}

#[test]
fn story_reads_dev_mqueue_name_while_the_queue_exists() {
    let out = posix_story();
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("mqueue"));
    if !mounted {
        assert_line(&out, &["no mqueue filesystem is mounted here"]);
        return;
    }
    let parent = out
        .stdout
        .split("(parent pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap()
        .to_string();
    assert_line(
        &out,
        &[
            "cat ",
            "QSIZE:10 ",
            "NOTIFY:0 ",
            "SIGNO:10 ",
            &format!("NOTIFY_PID:{parent}"),
        ],
    );
    assert_line(&out, &["mq_notify(NULL):", "NOTIFY_PID:0"]);
    assert_line(&out, &["mq_unlink(", "is gone"]);
}

#[test]
fn story_mq_receive_into_a_buffer_smaller_than_msgsize_is_emsgsize() {
    let out = posix_story();
    assert_line(
        &out,
        &["mq_receive into a 127-byte buffer → EMSGSIZE", "1 waiting"],
    );
    assert_line(&out, &["mq_receive into 128 bytes", "→ \"tiny\""]);
}

/// The POSIX story in fresh IPC and mount namespaces, after `prepare`
/// (a shell line) has run there.
fn posix_story_in_namespaces(prepare: &str) -> Output {
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--ipc",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!("{prepare}; exec \"$0\" posix --quiet"),
    ])
    .arg(ipc_tests::bin(MSGQ_DEMO))
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let out = Proc::start(cmd).finish(LONG);
    out.assert_no_panic();
    ok(&out);
    out
}

#[test]
fn story_says_plainly_when_dev_mqueue_is_another_namespaces_or_not_mounted() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("unshare needs CAP_SYS_ADMIN; CI runs as root: skipped");
        return;
    }
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("mqueue"));
    // A new IPC namespace: the mount still shows the old one's queues.
    let out = posix_story_in_namespaces("true");
    if mounted {
        assert_line(&out, &["is mounted, but shows no", "another IPC namespace"]);
    } else {
        assert_line(&out, &["no mqueue filesystem is mounted here"]);
    }
    // No mqueue mount at all.
    let out = posix_story_in_namespaces(
        "awk '$3 == \"mqueue\" { print $2 }' /proc/self/mounts | xargs -r -n1 umount",
    );
    assert_line(&out, &["no mqueue filesystem is mounted here"]);
    assert!(!out.stdout.contains("QSIZE:"), "{}", out.describe());
}

#[test]
fn a_umask_does_not_change_a_new_posix_queues_mode() {
    // mq_open's mode passes through the umask: with 0277 a new queue was
    // 0400, and the demo then refused its own queue ("has mode 0400").
    let name = format!("/{}", unique_name("msgq-test"));
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "umask 0277; exec \"$0\" \"$@\""])
        .arg(ipc_tests::bin(MSGQ_DEMO))
        .args(["posix", "sender", "--name", &name, "hi"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = Proc::start(cmd).finish(SHORT);
    ok(&out);
    let out = run(
        MSGQ_DEMO,
        &["posix", "receiver", "--name", &name, "--timeout", "1"],
        SHORT,
    );
    ok(&out);
    assert_eq!(texts(&out), ["hi"]);
    assert_no_queue(None, Some(&name));
}

/// The pid-reuse race a pidfd closes, made to happen: in a new pid
/// namespace (where ns_last_pid says which pid comes next) the server is
/// SIGKILLed and its pid handed to an unrelated `sleep`. A client that
/// checked the server with kill(pid, 0) would take the sleep for the
/// server and wait out its --timeout (60 s); watching it through a pidfd,
/// it gives up within a tick.
#[test]
fn a_client_is_not_fooled_when_its_dead_servers_pid_is_reused() {
    if !nix::unistd::geteuid().is_root() {
        // unshare and ns_last_pid need CAP_SYS_ADMIN; CI runs as root.
        eprintln!("pid reuse: not root, skipped");
        return;
    }
    const SCRIPT: &str = r#"
set -u
demo=$1 dir=$2 key=$2/key
: > "$key"
"$demo" sysv server --key "$key" --quiet > "$dir/server" 2>&1 &
server=$!
for _ in $(seq 1200); do grep -q "waiting for requests" "$dir/server" && break; sleep 0.05; done
"$demo" sysv client --key "$key" --count 1000000000 --quiet --timeout 60 > "$dir/client" 2>&1 &
client=$!
for _ in $(seq 1200); do grep -q "serves msqid" "$dir/client" && break; sleep 0.05; done
sleep 0.3
# From here to the sleep below, nothing forks: the sleep gets the next pid.
kill -KILL "$server"
wait "$server"
echo $((server - 1)) > /proc/sys/kernel/ns_last_pid || { echo "=== no ns_last_pid"; exit 0; }
sleep 120 &
reused=$!
echo "=== server $server, reused by $reused"
start=$(date +%s%N)
wait "$client"
status=$?
echo "=== client exit $status after $(( ($(date +%s%N) - start) / 1000000 )) ms"
kill "$reused"
cat "$dir/client"
"#;
    let dir = common::cleanup::PrivateDir::create("msgq-demo-test").unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount",
        "--mount-proc",
        "--ipc",
        "bash",
        "-c",
        SCRIPT,
        "reuse",
    ])
    .arg(ipc_tests::bin(MSGQ_DEMO))
    .arg(dir.path())
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let out = Proc::start(cmd).finish(LONG);
    assert_eq!(out.code(), 0, "{}", out.describe());
    if out.stdout.contains("=== no ns_last_pid") {
        eprintln!("pid reuse: ns_last_pid not writable here, skipped");
        return;
    }
    let line = |prefix: &str| -> Vec<String> {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line\n{}", out.describe()))
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let pids = line("=== server ");
    assert_eq!(
        pids[0],
        pids[1],
        "the pid was not reused\n{}",
        out.describe()
    );
    let exit = line("=== client exit ");
    assert_eq!(exit[0], "1", "{}", out.describe());
    let ms: u64 = exit[1].parse().unwrap();
    assert!(ms < 10_000, "the client waited {ms} ms\n{}", out.describe());
    assert!(
        out.stdout
            .contains(&format!("the server (pid {}) has exited", pids[0])),
        "{}",
        out.describe()
    );
}
