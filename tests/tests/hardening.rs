//! Hostile input and hostile conditions across all demos: every numeric
//! option given nonsense, another user knocking on our objects, and a
//! storm of handled signals during transfers.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::cleanup::{PrivateDir, unique_name};
use ipc_tests::{LONG, Output, Proc, SHORT, assert_usage_error, demo, run};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

// ---------------------------------------------------------------------------
// Every numeric option, every kind of nonsense
// ---------------------------------------------------------------------------

/// (demo, the words before the option, the option, whether 0 is valid,
/// whether a negative number is valid)
const NUMERIC: &[(&str, &[&str], &str, bool, bool)] = &[
    ("pipe-demo", &[], "--count", false, false),
    ("pipe-demo", &[], "--size", false, false),
    ("pipe-demo", &["sender"], "--size", false, false),
    ("pipe-demo", &["receiver"], "--count", false, false),
    ("fifo-demo", &[], "--writers", false, false),
    ("fifo-demo", &[], "--size", false, false),
    (
        "fifo-demo",
        &["receiver", "--path", "/tmp/x"],
        "--count",
        false,
        false,
    ),
    (
        "fifo-demo",
        &["sender", "--path", "/tmp/x"],
        "--size",
        false,
        false,
    ),
    ("shm-demo", &[], "--slots", false, false),
    ("shm-demo", &[], "--slot-size", false, false),
    (
        "shm-demo",
        &["receiver", "--name", "/x"],
        "--count",
        false,
        false,
    ),
    (
        "shm-demo",
        &["sender", "--name", "/x"],
        "--size",
        false,
        false,
    ),
    ("shm-demo", &["sysv"], "--count", false, false),
    ("sem-demo", &[], "--workers", false, false),
    ("sem-demo", &[], "--iterations", false, false),
    (
        "sem-demo",
        &["wait", "--name", "/x"],
        "--timeout",
        false,
        false,
    ),
    (
        "sem-demo",
        &["wait", "--name", "/x"],
        "--value",
        true,
        false,
    ),
    ("msgq-demo", &[], "--clients", false, false),
    (
        "msgq-demo",
        &["sysv", "receiver", "--key", "/k"],
        "--count",
        false,
        false,
    ),
    (
        "msgq-demo",
        &["sysv", "receiver", "--key", "/k"],
        "--type",
        true,
        true,
    ),
    (
        "msgq-demo",
        &["posix", "sender", "--name", "/x"],
        "--priority",
        true,
        false,
    ),
    (
        "msgq-demo",
        &["posix", "sender", "--name", "/x"],
        "--maxmsg",
        false,
        false,
    ),
    (
        "msgq-demo",
        &["posix", "sender", "--name", "/x"],
        "--msgsize",
        false,
        false,
    ),
    (
        "msgq-demo",
        &["posix", "receiver", "--name", "/x"],
        "--timeout",
        false,
        false,
    ),
    (
        "signal-demo",
        &["sender", "--signal", "USR1"],
        "--pid",
        false,
        false,
    ),
    (
        "signal-demo",
        &["sender", "--pid", "1", "--signal", "USR1"],
        "--count",
        false,
        false,
    ),
    (
        "signal-demo",
        &["sender", "--pid", "1", "--signal", "USR1"],
        "--value",
        true,
        true,
    ),
    ("socket-demo", &[], "--clients", false, false),
    (
        "socket-demo",
        &["server", "--path", "/tmp/x"],
        "--max-clients",
        false,
        false,
    ),
    (
        "socket-demo",
        &["server", "--path", "/tmp/x"],
        "--allow-uid",
        true,
        false,
    ),
    (
        "socket-demo",
        &["client", "--path", "/tmp/x"],
        "--size",
        false,
        false,
    ),
    ("ipc-bench", &[], "--count", false, false),
    ("ipc-bench", &[], "--rounds", false, false),
];

#[test]
fn every_numeric_option_refuses_nonsense_with_exit_2() {
    for (name, before, option, zero_ok, negative_ok) in NUMERIC {
        let mut values = vec!["", "abc", "1.5", "0x10", "99999999999999999999"];
        if !zero_ok {
            values.push("0");
        }
        if !negative_ok {
            values.push("-1");
        }
        for value in values {
            let mut args: Vec<&str> = before.to_vec();
            args.extend([*option, value]);
            assert_usage_error(name, &args, option);
        }
        // The option with no value at all.
        let mut args: Vec<&str> = before.to_vec();
        args.push(option);
        assert_usage_error(name, &args, &format!("{option} needs a value"));
    }
}

// ---------------------------------------------------------------------------
// Another user
// ---------------------------------------------------------------------------

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Run a demo as `nobody`, with its output captured.
fn as_nobody(name: &str, args: &[&str]) -> Output {
    let mut cmd = demo(name, args);
    cmd.uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = Proc::start(cmd).finish(SHORT);
    out.assert_no_panic();
    out
}

fn refused(out: &Output, what: &str, words: &[&str]) {
    assert_eq!(out.code(), 1, "{what}\n{}", out.describe());
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        words.iter().any(|w| last.contains(w)),
        "{what}: expected one of {words:?}\n{}",
        out.describe()
    );
}

fn mode_of(path: &str) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn objects_are_private_and_another_user_is_refused_clearly() {
    if !is_root() {
        eprintln!("not root: cannot run a process as another user; skipped");
        return;
    }
    let denied = ["Permission denied", "EACCES", "permission denied"];

    // POSIX shared memory, 0600.
    let shm = format!("/{}", unique_name("perm-shm"));
    let mut receiver = Proc::spawn("shm-demo", &["receiver", "--name", &shm]);
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    assert_eq!(mode_of(&format!("/dev/shm{shm}")), 0o600);
    refused(
        &as_nobody("shm-demo", &["sender", "--name", &shm]),
        "shm",
        &denied,
    );
    receiver.signal(Signal::SIGTERM);
    let _ = receiver.finish(SHORT);

    // A POSIX named semaphore, 0600.
    let sem = format!("/{}", unique_name("perm-sem"));
    let mut waiter = Proc::spawn("sem-demo", &["wait", "--name", &sem, "--timeout", "60"]);
    waiter.wait_for_line(|l| l.contains("waiting at most"), SHORT);
    assert_eq!(mode_of(&format!("/dev/shm/sem.{}", &sem[1..])), 0o600);
    refused(
        &as_nobody("sem-demo", &["post", "--name", &sem]),
        "sem",
        &["belongs to another user"],
    );
    waiter.signal(Signal::SIGTERM);
    let _ = waiter.finish(SHORT);
    assert_eq!(
        run("sem-demo", &["remove", "--name", &sem], SHORT).code(),
        0
    );

    // A POSIX message queue, 0600.
    let mq = format!("/{}", unique_name("perm-mq"));
    assert_eq!(
        run(
            "msgq-demo",
            &["posix", "sender", "--name", &mq, "hi"],
            SHORT
        )
        .code(),
        0
    );
    // Only where the mqueue filesystem is mounted there (the directory
    // alone may exist empty).
    let mounted = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(1) == Some("/dev/mqueue"))
    });
    if mounted {
        assert_eq!(mode_of(&format!("/dev/mqueue{mq}")), 0o600);
    }
    refused(
        &as_nobody("msgq-demo", &["posix", "sender", "--name", &mq, "x"]),
        "mq",
        &["belongs to another user"],
    );
    assert_eq!(
        run("msgq-demo", &["posix", "remove", "--name", &mq], SHORT).code(),
        0
    );

    // A System V queue and a System V segment, keyed by a file nobody can read.
    let dir = PrivateDir::create("perm-key").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, b"").unwrap();
    let key = key.to_str().unwrap();
    assert_eq!(
        run("msgq-demo", &["sysv", "sender", "--key", key, "hi"], SHORT).code(),
        0
    );
    refused(
        &as_nobody("msgq-demo", &["sysv", "sender", "--key", key, "x"]),
        "sysv msg",
        &["belongs to another user"],
    );
    assert_eq!(
        run("msgq-demo", &["sysv", "remove", "--key", key], SHORT).code(),
        0
    );
    let mut receiver = Proc::spawn("shm-demo", &["sysv", "receiver", "--key", key]);
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    refused(
        &as_nobody("shm-demo", &["sysv", "sender", "--key", key]),
        "sysv shm",
        &denied,
    );
    receiver.signal(Signal::SIGTERM);
    let _ = receiver.finish(SHORT);

    // A FIFO and a socket file, inside private 0700 directories.
    let private = PrivateDir::create("perm-private").unwrap();
    assert_eq!(mode_of(private.path().to_str().unwrap()), 0o700);
    let fifo = private.path().join("f");
    let fifo = fifo.to_str().unwrap();
    let mut receiver = Proc::spawn("fifo-demo", &["receiver", "--path", fifo]);
    receiver.wait_for_line(|l| l.contains("waits until a writer"), SHORT);
    assert_eq!(mode_of(fifo), 0o600);
    refused(
        &as_nobody("fifo-demo", &["sender", "--path", fifo]),
        "fifo",
        &denied,
    );
    receiver.signal(Signal::SIGTERM);
    let _ = receiver.finish(SHORT);
    let sock = private.path().join("s");
    let sock = sock.to_str().unwrap();
    let mut server = Proc::spawn("socket-demo", &["server", "--path", sock]);
    server.wait_for_line(|l| l.contains("listening"), SHORT);
    refused(
        &as_nobody("socket-demo", &["client", "--path", sock, "--count", "1"]),
        "socket",
        &denied,
    );
    server.signal(Signal::SIGTERM);
    let _ = server.finish(SHORT);

    // Signals to another user's process.
    let mut receiver = Proc::spawn("signal-demo", &["receiver"]);
    let line = receiver.wait_for_line(|l| l.starts_with("[receiver] pid "), SHORT);
    let pid = line["[receiver] pid ".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    refused(
        &as_nobody(
            "signal-demo",
            &["sender", "--pid", &pid, "--signal", "USR1"],
        ),
        "signal",
        &["EPERM"],
    );
    receiver.signal(Signal::SIGTERM);
    let _ = receiver.finish(SHORT);
}

// ---------------------------------------------------------------------------
// A storm of handled signals: every EINTR path, no message lost
// ---------------------------------------------------------------------------

/// Send SIGWINCH (which the demos handle and then ignore) to `pids` every
/// 200 µs until stopped.
fn storm(pids: Vec<Pid>) -> (Arc<AtomicBool>, thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = thread::spawn(move || {
        let mut sent = 0;
        while !flag.load(Ordering::Relaxed) {
            for &pid in &pids {
                if kill(pid, Signal::SIGWINCH).is_ok() {
                    sent += 1;
                }
            }
            thread::sleep(Duration::from_micros(200));
        }
        sent
    });
    (stop, handle)
}

/// Run `first` then `second` (each waiting for its ready line) under a
/// storm; both must succeed and the receiver must have every message.
fn stormy(
    name: &str,
    first: &[&str],
    ready: &str,
    second: &[&str],
    receiver_is_first: bool,
    count: &str,
) {
    let mut a = Proc::spawn(name, first);
    a.wait_for_line(|l| l.contains(ready), SHORT);
    let b = Proc::spawn(name, second);
    let (stop, handle) = storm(vec![a.pid(), b.pid()]);
    let (out_b, out_a) = (b.finish(LONG), a.finish(LONG));
    stop.store(true, Ordering::Relaxed);
    let sent = handle.join().unwrap();
    assert!(sent > 100, "{name}: only {sent} signals were sent");
    for out in [&out_a, &out_b] {
        out.assert_no_panic();
        assert_eq!(
            out.code(),
            0,
            "{name} under {sent} SIGWINCH\n{}",
            out.describe()
        );
    }
    let receiver = if receiver_is_first { &out_a } else { &out_b };
    assert_eq!(
        receiver.summary_field("messages"),
        count,
        "{name}\n{}",
        receiver.describe()
    );
    assert_eq!(
        receiver.summary_field("errors"),
        "0",
        "{name}\n{}",
        receiver.describe()
    );
}

#[test]
fn an_eintr_storm_loses_nothing() {
    let n = "20000";
    let dir = PrivateDir::create("storm").unwrap();
    let fifo = dir.path().join("f");
    let fifo = fifo.to_str().unwrap();
    stormy(
        "fifo-demo",
        &["receiver", "--path", fifo, "--count", n, "--quiet"],
        "waits until a writer",
        &["sender", "--path", fifo, "--count", n, "--quiet"],
        true,
        n,
    );
    let shm = format!("/{}", unique_name("storm-shm"));
    stormy(
        "shm-demo",
        &["receiver", "--name", &shm, "--count", n, "--quiet"],
        "waiting for a sender",
        &["sender", "--name", &shm, "--count", n, "--quiet"],
        true,
        n,
    );
    let key = dir.path().join("key");
    std::fs::write(&key, b"").unwrap();
    let key = key.to_str().unwrap();
    stormy(
        "shm-demo",
        &["sysv", "receiver", "--key", key, "--count", n, "--quiet"],
        "waiting for a sender",
        &["sysv", "sender", "--key", key, "--count", n, "--quiet"],
        true,
        n,
    );
    stormy(
        "msgq-demo",
        &["sysv", "receiver", "--key", key, "--count", n, "--quiet"],
        "msgrcv(msgtyp",
        &["sysv", "sender", "--key", key, "--count", n, "--quiet"],
        true,
        n,
    );
    let mq = format!("/{}", unique_name("storm-mq"));
    stormy(
        "msgq-demo",
        &["posix", "receiver", "--name", &mq, "--count", n, "--quiet"],
        "Ctrl-C to stop",
        &["posix", "sender", "--name", &mq, "--count", n, "--quiet"],
        true,
        n,
    );
    let sock = dir.path().join("s");
    let sock = sock.to_str().unwrap();
    stormy(
        "socket-demo",
        &["server", "--path", sock, "--clients", "1", "--quiet"],
        "listening",
        &["client", "--path", sock, "--count", n, "--quiet"],
        true,
        n,
    );

    // And a shell pipe.
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let receiver = Proc::spawn_with(
        "pipe-demo",
        &["receiver", "--count", n, "--quiet"],
        File::from(read_end),
        Stdio::piped(),
    );
    let sender = Proc::spawn_with(
        "pipe-demo",
        &["sender", "--count", n, "--quiet"],
        Stdio::null(),
        File::from(write_end),
    );
    let (stop, handle) = storm(vec![receiver.pid(), sender.pid()]);
    let (sent_out, received) = (sender.finish(LONG), receiver.finish(LONG));
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    assert_eq!(sent_out.code(), 0, "{}", sent_out.describe());
    assert_eq!(received.code(), 0, "{}", received.describe());
    assert_eq!(received.summary_field("messages"), n);
    assert_eq!(received.summary_field("errors"), "0");
}

// ---------------------------------------------------------------------------
// Hostile datagrams and frames from a hand-made peer
// ---------------------------------------------------------------------------

#[test]
fn servers_survive_garbage_from_hostile_peers() {
    use std::io::Write;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    let dir = PrivateDir::create("hostile").unwrap();
    // A datagram server: garbage from a bound peer is checked and flagged,
    // garbage from an unbound one cannot be answered and is ignored; the
    // server goes on and serves a real client.
    let path = dir.path().join("dgram.sock");
    let p = path.to_str().unwrap();
    let mut server = Proc::spawn(
        "socket-demo",
        &["server", "--path", p, "--dgram", "--clients", "2"],
    );
    server.wait_for_line(|l| l.contains("bound at"), SHORT);
    let me = dir.path().join("hostile.sock");
    let hostile = UnixDatagram::bind(&me).unwrap();
    hostile
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    for junk in [&b"x"[..], &[0xff; 7][..], &[0u8; 4000][..]] {
        hostile.send_to(junk, &path).unwrap();
        let mut back = [0u8; 8192];
        let n = hostile.recv(&mut back).unwrap();
        assert_eq!(&back[..n], junk, "the server echoes what it got");
    }
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"from nowhere", &path)
        .unwrap();
    hostile.send_to(&[], &path).unwrap(); // "done"
    assert_eq!(
        run(
            "socket-demo",
            &["client", "--path", p, "--dgram", "--count", "20"],
            SHORT
        )
        .code(),
        0
    );
    let out = server.finish(SHORT);
    out.assert_no_panic();
    // The junk counts as failed checks, so the server's run is not clean.
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(out.stdout.contains("corrupted"), "{}", out.describe());
    assert!(
        out.stdout.contains("no address to reply to; ignored"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("2 client(s) served"),
        "{}",
        out.describe()
    );

    // A stream server: a frame header claiming 4 GiB is refused before any
    // allocation, that client is dropped, the next is served.
    let path = dir.path().join("stream.sock");
    let p = path.to_str().unwrap();
    let mut server = Proc::spawn("socket-demo", &["server", "--path", p, "--clients", "2"]);
    server.wait_for_line(|l| l.contains("listening"), SHORT);
    let mut liar = UnixStream::connect(&path).unwrap();
    liar.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert_eq!(
        run(
            "socket-demo",
            &["client", "--path", p, "--count", "20"],
            SHORT
        )
        .code(),
        0
    );
    let out = server.finish(SHORT);
    drop(liar);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout
            .contains("frame length 4294967295 is over the limit"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("1 client(s) served, 1 dropped"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_worker_stopped_or_killed_does_not_stop_the_others() {
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL] {
        let name = format!("/{}", unique_name("worker"));
        let mut doomed = Proc::spawn(
            "sem-demo",
            &["worker", "--name", &name, "--iterations", "1000000000"],
        );
        doomed.wait_for_line(|l| l.contains("sem_open("), SHORT);
        let other = Proc::spawn(
            "sem-demo",
            &["worker", "--name", &name, "--iterations", "20000"],
        );
        thread::sleep(Duration::from_millis(200));
        doomed.signal(signal);
        doomed.finish(SHORT).assert_stopped_by(signal);
        // The survivor finishes its own work: the lock was released, or it
        // takes it over from the dead holder.
        let out = other.finish(SHORT);
        out.assert_no_panic();
        assert_eq!(out.code(), 0, "{signal:?}\n{}", out.describe());
        assert_eq!(
            run("sem-demo", &["remove", "--name", &name], SHORT).code(),
            0
        );
    }
}
