//! The fault matrix: for every demo with two roles, SIGINT, SIGTERM and
//! SIGKILL to each role in the middle of a transfer. The victim exits as
//! documented (130, 143, or killed); the survivor notices within 5 s and
//! exits as documented; afterwards nothing is left, either removed by the
//! survivor or reported as stale and recovered by the next run.
//! docs/reliability.md has the same matrix with its results.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::cleanup::{PrivateDir, unique_name};
use ipc_tests::{Proc, SHORT, key_file, run};
use nix::sys::signal::Signal;

const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL];
const BIG: &str = "1000000000";

/// What the survivor does when its peer is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Survivor {
    /// Notices and exits with this status within 5 s.
    Exits(i32),
    /// Keeps waiting, by design (the mechanism names no peer); the test
    /// then stops it with SIGTERM.
    Waits,
}

fn s(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

struct Scenario {
    demo: &'static str,
    /// The role that waits first (receiver, server) and its ready line.
    first: Vec<String>,
    first_ready: &'static str,
    /// The role that connects second and its "transferring" line.
    second: Vec<String>,
    second_ready: &'static str,
    /// Expected survivor behaviour when the first / second role is stopped.
    when_first_dies: fn(Signal) -> Survivor,
    when_second_dies: fn(Signal) -> Survivor,
}

/// Run one cell: start both roles, stop `victim_is_first ? first : second`
/// with `signal`, check both outcomes.
fn cell(sc: &Scenario, victim_is_first: bool, signal: Signal) {
    let what = format!(
        "{} {:?}, victim {}",
        sc.demo,
        signal,
        if victim_is_first { "first" } else { "second" }
    );
    let mut first = Proc::spawn(
        sc.demo,
        &sc.first.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    first.wait_for_line(|l| l.contains(sc.first_ready), SHORT);
    let mut second = Proc::spawn(
        sc.demo,
        &sc.second.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    second.wait_for_line(|l| l.contains(sc.second_ready), SHORT);
    sleep(Duration::from_millis(300)); // mid-transfer
    let (victim, survivor) = if victim_is_first {
        (first, second)
    } else {
        (second, first)
    };
    victim.signal(signal);
    let killed_at = Instant::now();
    victim.finish(SHORT).assert_stopped_by(signal);
    let expected = if victim_is_first {
        (sc.when_first_dies)(signal)
    } else {
        (sc.when_second_dies)(signal)
    };
    match expected {
        Survivor::Exits(code) => {
            let out = survivor.finish(SHORT);
            let took = killed_at.elapsed();
            out.assert_no_panic();
            assert_eq!(out.code(), code, "{what}: survivor\n{}", out.describe());
            assert!(
                took < Duration::from_secs(5),
                "{what}: the survivor took {took:?}"
            );
            if code == 1 {
                let last = out.stderr.lines().last().unwrap_or_default();
                assert!(
                    last.contains("error:"),
                    "{what}: one clear error line\n{}",
                    out.describe()
                );
            }
        }
        Survivor::Waits => {
            let mut survivor = survivor;
            sleep(Duration::from_secs(1));
            assert!(
                survivor.running(),
                "{what}: expected the survivor to keep waiting"
            );
            survivor.signal(Signal::SIGTERM);
            survivor.finish(SHORT).assert_stopped_by(Signal::SIGTERM);
        }
    }
}

fn matrix(sc: &Scenario, after: impl Fn(bool, Signal)) {
    for victim_is_first in [true, false] {
        for signal in SIGNALS {
            cell(sc, victim_is_first, signal);
            after(victim_is_first, signal);
        }
    }
}

#[test]
fn fifo_matrix() {
    let dir = PrivateDir::create("fault-fifo").unwrap();
    let path = dir.path().join("matrix.fifo");
    let p = s(&path);
    let sc = Scenario {
        demo: "fifo-demo",
        first: strings(&["receiver", "--path", &p, "--count", BIG, "--quiet"]),
        first_ready: "waits until a writer opens",
        second: strings(&["sender", "--path", &p, "--count", BIG, "--quiet"]),
        second_ready: "returned after",
        // The sender gets EPIPE; the receiver sees EOF with messages lost.
        when_first_dies: |_| Survivor::Exits(1),
        when_second_dies: |_| Survivor::Exits(1),
    };
    matrix(&sc, |victim_is_first, signal| {
        if victim_is_first && signal == Signal::SIGKILL {
            // A receiver killed outright leaves its FIFO: the next run
            // finds it, says so, takes it over and removes it.
            assert!(path.exists());
            let mut again = Proc::spawn("fifo-demo", &["receiver", "--path", &p, "--count", "3"]);
            again.wait_for_line(|l| l.contains("waits until a writer"), SHORT);
            assert_eq!(
                run(
                    "fifo-demo",
                    &["sender", "--path", &p, "--count", "3"],
                    SHORT
                )
                .code(),
                0
            );
            let out = again.finish(SHORT);
            assert_eq!(out.code(), 0, "{}", out.describe());
            assert!(out.stdout.contains("left by an earlier run"));
        }
        assert!(!path.exists(), "FIFO left after {signal:?}");
    });
}

fn dev_shm(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm{name}"))
}

#[test]
fn shm_posix_matrix() {
    let name = format!("/{}", unique_name("fault-shm"));
    let sc = Scenario {
        demo: "shm-demo",
        first: strings(&["receiver", "--name", &name, "--quiet"]),
        first_ready: "waiting for a sender",
        second: strings(&["sender", "--name", &name, "--count", BIG, "--quiet"]),
        second_ready: "writing each message",
        when_first_dies: |_| Survivor::Exits(1),
        when_second_dies: |_| Survivor::Exits(1),
    };
    // The receiver removes its segment on INT/TERM; a sender that outlives
    // a SIGKILLed receiver removes it for it.
    matrix(&sc, |_, signal| {
        assert!(!dev_shm(&name).exists(), "segment left after {signal:?}")
    });
}

/// `ipcs` lines for a key, as printed in a demo's ftok line.
fn ipcs_has(key: &str) -> bool {
    let out = std::process::Command::new("ipcs").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with(key))
}

#[test]
fn shm_sysv_matrix() {
    let (_dir, key) = key_file("fault-shm-sysv");
    // The ftok key in ipcs's format, from a demo's own narration.
    let mut probe = Proc::spawn("shm-demo", &["sysv", "receiver", "--key", &key]);
    let line = probe.wait_for_line(|l| l.contains("ftok("), SHORT);
    let ipc_key = line
        .split(" = ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    probe.signal(Signal::SIGTERM);
    let _ = probe.finish(SHORT);
    let sc = Scenario {
        demo: "shm-demo",
        first: strings(&["sysv", "receiver", "--key", &key, "--quiet"]),
        first_ready: "waiting for a sender",
        second: strings(&["sysv", "sender", "--key", &key, "--count", BIG, "--quiet"]),
        second_ready: "writing each message",
        when_first_dies: |_| Survivor::Exits(1),
        when_second_dies: |_| Survivor::Exits(1),
    };
    matrix(&sc, |_, signal| {
        assert!(
            !ipcs_has(&ipc_key),
            "{ipc_key} left in ipcs after {signal:?}"
        )
    });
}

#[test]
fn socket_matrix() {
    let dir = PrivateDir::create("fault-socket").unwrap();
    let path = dir.path().join("matrix.sock");
    let p = s(&path);
    let sc = Scenario {
        demo: "socket-demo",
        first: strings(&["server", "--path", &p, "--clients", "1", "--quiet"]),
        first_ready: "listening",
        second: strings(&["client", "--path", &p, "--count", BIG, "--quiet"]),
        second_ready: "connected",
        // Clients see ECONNRESET or EOF; a server outlives its clients (it
        // drops one that goes away and, with --clients 1, finishes).
        when_first_dies: |_| Survivor::Exits(1),
        when_second_dies: |_| Survivor::Exits(0),
    };
    matrix(&sc, |victim_is_first, signal| {
        if victim_is_first && signal == Signal::SIGKILL {
            // The stale socket file is replaced by the next server.
            assert!(path.exists());
            let mut again = Proc::spawn("socket-demo", &["server", "--path", &p, "--clients", "1"]);
            again.wait_for_line(|l| l.contains("listening"), SHORT);
            assert_eq!(
                run(
                    "socket-demo",
                    &["client", "--path", &p, "--count", "1"],
                    SHORT
                )
                .code(),
                0
            );
            let out = again.finish(SHORT);
            assert_eq!(out.code(), 0, "{}", out.describe());
            assert!(
                out.stdout.contains("stale, replacing it"),
                "{}",
                out.describe()
            );
        }
        assert!(!path.exists(), "socket file left after {signal:?}");
    });
}

#[test]
fn msgq_sysv_matrix() {
    let (_dir, key) = key_file("fault-msgq");
    let sc = Scenario {
        demo: "msgq-demo",
        first: strings(&["sysv", "receiver", "--key", &key, "--count", BIG, "--quiet"]),
        first_ready: "msgrcv(msgtyp",
        second: strings(&["sysv", "sender", "--key", &key, "--count", BIG, "--quiet"]),
        second_ready: "msgget(",
        // The queue names its last sender and receiver (msg_lspid,
        // msg_lrpid): both sides notice a dead peer through them.
        when_first_dies: |_| Survivor::Exits(1),
        when_second_dies: |_| Survivor::Exits(1),
    };
    matrix(&sc, |_, signal| {
        let out = run("msgq-demo", &["sysv", "remove", "--key", &key], SHORT);
        assert_eq!(
            out.code(),
            1,
            "a queue was left after {signal:?}\n{}",
            out.describe()
        );
    });
}

#[test]
fn msgq_posix_matrix() {
    let name = format!("/{}", unique_name("fault-mq"));
    let sc = Scenario {
        demo: "msgq-demo",
        first: strings(&[
            "posix", "receiver", "--name", &name, "--count", BIG, "--quiet",
        ]),
        first_ready: "Ctrl-C to stop",
        second: strings(&[
            "posix", "sender", "--name", &name, "--count", BIG, "--quiet",
        ]),
        second_ready: "mq_open(",
        // A POSIX queue records no pids: neither side can tell that the
        // other died. A receiver waits for senders to come (as a queue
        // should); a sender whose receiver is gone fills the queue and
        // waits for one to come. Both stop on Ctrl-C/SIGTERM.
        when_first_dies: |_| Survivor::Waits,
        when_second_dies: |_| Survivor::Waits,
    };
    matrix(&sc, |victim_is_first, signal| {
        if victim_is_first && signal == Signal::SIGKILL {
            // Nobody removed it: `remove` does, as the docs say.
            assert_eq!(
                run("msgq-demo", &["posix", "remove", "--name", &name], SHORT).code(),
                0
            );
        }
        let out = run("msgq-demo", &["posix", "remove", "--name", &name], SHORT);
        assert_eq!(
            out.code(),
            1,
            "queue {name} left after {signal:?}\n{}",
            out.describe()
        );
    });
}

#[test]
fn pipe_matrix() {
    // sender | receiver through a pipe made here.
    for victim_is_sender in [true, false] {
        for signal in SIGNALS {
            let what = format!(
                "pipe {signal:?}, victim {}",
                if victim_is_sender {
                    "sender"
                } else {
                    "receiver"
                }
            );
            let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            let mut receiver = Proc::spawn_with(
                "pipe-demo",
                &["receiver", "--count", BIG, "--quiet"],
                File::from(read_end),
                Stdio::piped(),
            );
            let sender = Proc::spawn_with(
                "pipe-demo",
                &["sender", "--count", BIG, "--quiet"],
                Stdio::null(),
                File::from(write_end),
            );
            receiver.wait_for_line(|l| l.contains("reading frames"), SHORT);
            sleep(Duration::from_millis(300));
            let (victim, survivor) = if victim_is_sender {
                (sender, receiver)
            } else {
                (receiver, sender)
            };
            victim.signal(signal);
            victim.finish(SHORT).assert_stopped_by(signal);
            let out = survivor.finish(SHORT);
            out.assert_no_panic();
            // The receiver: EOF with messages lost (or a cut frame): 1.
            // The sender: EPIPE means the reader left, like `yes | head`: 0.
            let code = if victim_is_sender { 1 } else { 0 };
            assert_eq!(out.code(), code, "{what}: survivor\n{}", out.describe());
        }
    }
}
