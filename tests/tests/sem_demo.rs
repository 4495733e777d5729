//! End-to-end tests of sem-demo: real semaphores, forked workers, killed
//! lock holders, and the roles between separate processes.

use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use common::cleanup::{PrivateDir, unique_name};
use ipc_tests::{LONG, Proc, SHORT, assert_usage_error, run};
use nix::sys::signal::Signal;

const SEM_DEMO: &str = "sem-demo";

/// Nothing of `name` left: neither the semaphore nor the worker counter.
fn assert_gone(name: &str) {
    for path in [
        format!("/dev/shm/sem.{}", &name[1..]),
        format!("/dev/shm{name}.counter"),
    ] {
        assert!(!Path::new(&path).exists(), "{path} left behind");
    }
}

/// The number in "... the counter is now N ..." lines.
fn counters(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.split("is now ").nth(1))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn story_shows_the_race_the_locks_the_signal_the_sets_and_the_crash() {
    let out = run(SEM_DEMO, &[], LONG);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("mechanism"), "sem");
    assert_eq!(out.summary_field("errors"), "0");
    // The unlocked run is reported honestly: got + lost adds up, whatever
    // the race did this time.
    let race = out
        .stdout
        .lines()
        .find(|l| l.contains("updates lost in"))
        .expect("race line");
    let numbers: Vec<u64> = race
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers[0], 400_000, "{race}");
    assert_eq!(numbers[1] + numbers[2], 400_000, "{race}");
    // Both locked runs are exact (the unlocked one may also be, by luck).
    assert!(
        out.stdout
            .contains("sem_wait / increment / sem_post: expected 400000, got 400000 in"),
        "{}",
        out.describe()
    );
    let unnamed = out
        .stdout
        .lines()
        .find(|l| l.contains("the race without a lock took"))
        .unwrap();
    assert!(
        unnamed.contains("expected 400000, got 400000 in"),
        "{unnamed}"
    );
    for expected in [
        "sem_open(/sem-demo-",
        "O_CREAT|O_EXCL, 0600, 1)",
        "sem_trywait → EAGAIN",
        "sem_timedwait(50 ms) → ETIMEDOUT",
        "the counter reads 42",
        "semctl(GETNCNT, 2) = 1",
        "semop([0: -1, 1: -1]) in one call: values now [0, 1, 0]",
        "semctl(GETVAL) = 1: the kernel undid the dead child's -1",
        "ETIMEDOUT: still taken",
        "taking the lock over",
        "the lock is free again, value 1",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    let name = out
        .stdout
        .split("sem_open(")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("named semaphore");
    assert_gone(name);
}

#[test]
fn workers_in_separate_processes_count_exactly_then_remove() {
    let name = format!("/{}", unique_name("sem-test"));
    let a = Proc::spawn(
        SEM_DEMO,
        &["worker", "--name", &name, "--iterations", "40000"],
    );
    let b = Proc::spawn(
        SEM_DEMO,
        &["worker", "--name", &name, "--iterations", "40000"],
    );
    let (a, b) = (a.finish(LONG), b.finish(LONG));
    for out in [&a, &b] {
        out.assert_no_panic();
        assert_eq!(out.code(), 0, "{}", out.describe());
    }
    let mut seen = counters(&a.stdout);
    seen.extend(counters(&b.stdout));
    assert_eq!(
        seen.iter().max(),
        Some(&80_000),
        "{}\n{}",
        a.describe(),
        b.describe()
    );
    let removed = run(SEM_DEMO, &["remove", "--name", &name], SHORT);
    assert_eq!(removed.code(), 0, "{}", removed.describe());
    assert!(removed.stdout.contains("removed the worker counter"));
    assert_gone(&name);
}

#[test]
fn a_killed_posix_worker_does_not_block_the_next_one() {
    let name = format!("/{}", unique_name("sem-test"));
    let mut first = Proc::spawn(
        SEM_DEMO,
        &["worker", "--name", &name, "--iterations", "1000000000"],
    );
    first.wait_for_line(|l| l.contains("sem_open("), SHORT);
    sleep(Duration::from_millis(300));
    first.signal(Signal::SIGKILL); // maybe while holding the lock
    let _ = first.finish(SHORT);
    // Either the lock was free, or the next worker recovers it from the
    // dead holder: it must finish either way, not hang.
    let out = run(
        SEM_DEMO,
        &["worker", "--name", &name, "--iterations", "1000"],
        SHORT,
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(run(SEM_DEMO, &["remove", "--name", &name], SHORT).code(), 0);
    assert_gone(&name);
}

#[test]
fn wait_and_post_order_two_processes_and_wait_times_out() {
    let name = format!("/{}", unique_name("sem-test"));
    let mut waiter = Proc::spawn(SEM_DEMO, &["wait", "--name", &name, "--timeout", "60"]);
    waiter.wait_for_line(|l| l.contains("waiting at most 60 s"), SHORT);
    sleep(Duration::from_millis(200));
    assert!(waiter.running(), "the wait returned before any post");
    let posted = run(SEM_DEMO, &["post", "--name", &name], SHORT);
    assert_eq!(posted.code(), 0, "{}", posted.describe());
    let out = waiter.finish(SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(out.stdout.contains("acquired after"));

    let out = run(
        SEM_DEMO,
        &["wait", "--name", &name, "--timeout", "1"],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(out.stderr.contains("ETIMEDOUT"), "{}", out.describe());
    // Created with --value 2 by the next wait? No: it exists, so --value is
    // not applied; one post makes the next wait succeed.
    assert_eq!(run(SEM_DEMO, &["post", "--name", &name], SHORT).code(), 0);
    assert_eq!(
        run(
            SEM_DEMO,
            &["wait", "--name", &name, "--timeout", "5"],
            SHORT
        )
        .code(),
        0
    );
    assert_eq!(run(SEM_DEMO, &["remove", "--name", &name], SHORT).code(), 0);
    assert_gone(&name);

    // A fresh one created with --value 1 can be taken at once.
    let fresh = format!("/{}", unique_name("sem-test"));
    let out = run(
        SEM_DEMO,
        &["wait", "--name", &fresh, "--value", "1", "--timeout", "5"],
        SHORT,
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(
        run(SEM_DEMO, &["remove", "--name", &fresh], SHORT).code(),
        0
    );
}

#[test]
fn ctrl_c_ends_a_wait() {
    let name = format!("/{}", unique_name("sem-test"));
    let mut waiter = Proc::spawn(SEM_DEMO, &["wait", "--name", &name]);
    waiter.wait_for_line(|l| l.contains("until a post or Ctrl-C"), SHORT);
    waiter.signal(Signal::SIGINT);
    let out = waiter.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 130, "{}", out.describe());
    assert_eq!(run(SEM_DEMO, &["remove", "--name", &name], SHORT).code(), 0);
    assert_gone(&name);
}

#[test]
fn sysv_workers_recover_by_sem_undo_and_remove_leaves_nothing() {
    let dir = PrivateDir::create("sem-demo-test").unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, b"").unwrap();
    let key = key.to_str().unwrap();
    let mut first = Proc::spawn(
        SEM_DEMO,
        &["sysv", "worker", "--key", key, "--iterations", "1000000000"],
    );
    let line = first.wait_for_line(|l| l.contains("semget("), SHORT);
    let ipc_key = line
        .split("semget(")
        .nth(1)
        .unwrap()
        .split([',', ')'])
        .next()
        .unwrap()
        .to_string();
    sleep(Duration::from_millis(300));
    first.signal(Signal::SIGKILL); // SEM_UNDO releases the lock if held
    let _ = first.finish(SHORT);
    let out = run(
        SEM_DEMO,
        &["sysv", "worker", "--key", key, "--iterations", "2000"],
        SHORT,
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    let removed = run(SEM_DEMO, &["sysv", "remove", "--key", key], SHORT);
    assert_eq!(removed.code(), 0, "{}", removed.describe());
    let ipcs = std::process::Command::new("ipcs")
        .args(["-s", "-m"])
        .output()
        .unwrap();
    let ipcs = String::from_utf8_lossy(&ipcs.stdout);
    assert!(
        !ipcs.lines().any(|l| l.starts_with(&ipc_key)),
        "{ipc_key} left:\n{ipcs}"
    );
}

#[test]
fn missing_semaphores_get_a_hint() {
    let name = format!("/{}", unique_name("sem-test"));
    let out = run(SEM_DEMO, &["post", "--name", &name], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains(&format!("create it with 'sem-demo wait --name {name}'"))
    );
    let out = run(SEM_DEMO, &["remove", "--name", &name], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    let dir = PrivateDir::create("sem-demo-test").unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, b"").unwrap();
    let out = run(
        SEM_DEMO,
        &["sysv", "post", "--key", key.to_str().unwrap()],
        SHORT,
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("create it with 'sem-demo sysv wait"),
        "{}",
        out.describe()
    );
    let out = run(SEM_DEMO, &["sysv", "post", "--key", "/no/such/file"], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("--key must name an existing file"),
        "{}",
        out.describe()
    );
}

#[test]
fn bad_command_lines_exit_2_with_one_line_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--workers", "0"], "--workers"),
        (&["--workers", "65"], "--workers"),
        (&["--iterations", "x"], "--iterations"),
        (&["--iterations", "99999999999999999999"], "--iterations"),
        (&["--name", "/x"], "--name"),
        (&["worker"], "--name"),
        (&["worker", "--name", "x"], "--name"),
        (&["worker", "--name", "/a/b"], "--name"),
        (&["wait", "--name", "/x", "--timeout", "0"], "--timeout"),
        (&["wait", "--name", "/x", "--value", "-1"], "--value"),
        (
            &["wait", "--name", "/x", "--value", "2147483648"],
            "--value",
        ),
        (&["post", "--name", "/x", "--timeout", "3"], "--timeout"),
        (&["sysv"], "sysv needs a role"),
        (&["sysv", "post"], "--key"),
        (&["sysv", "post", "--name", "/x"], "--name"),
        (&["post", "--key", "/tmp"], "--key"),
        (&["bogus"], "bogus"),
    ];
    for (args, needle) in cases {
        assert_usage_error(SEM_DEMO, args, needle);
    }
}
