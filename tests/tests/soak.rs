//! Soak: 1 000 000 messages through each mechanism, every one checked,
//! each under a stated time bound. Kept out of the default run (it takes
//! minutes); run it with
//!
//! ```text
//! cargo test --release -p ipc-tests --test soak -- --ignored --test-threads 1
//! ```

use std::fs::File;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::cleanup::PrivateDir;
use ipc_tests::Proc;

const N: &str = "1000000";

/// Run `first` (waiting for `ready`), then `second`; both must succeed
/// within `bound`, and the receiver must report every message intact.
fn soak(name: &str, first: &[&str], ready: &str, second: &[&str], bound: Duration) -> Duration {
    let start = Instant::now();
    let mut a = Proc::spawn(name, first);
    a.wait_for_line(|l| l.contains(ready), bound);
    let b = Proc::spawn(name, second);
    let (out_b, out_a) = (b.finish(bound), a.finish(bound));
    let took = start.elapsed();
    for out in [&out_a, &out_b] {
        out.assert_clean();
    }
    // The first role is the receiver (or the server) in every case here.
    assert_eq!(
        out_a.summary_field("messages"),
        N,
        "{name}\n{}",
        out_a.describe()
    );
    assert!(
        took < bound,
        "{name}: {took:?} is over the bound of {bound:?}"
    );
    eprintln!("soak: {name} {} in {:.1} s", first[0], took.as_secs_f64());
    took
}

#[test]
#[ignore = "minutes long: run with --ignored (see the file's header)"]
fn a_million_messages_through_each_mechanism() {
    let dir = PrivateDir::create("soak").unwrap();
    let minute = Duration::from_secs(60);

    // pipe: sender | receiver
    let start = Instant::now();
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let receiver = Proc::spawn_with(
        "pipe-demo",
        &["receiver", "--count", N, "--quiet"],
        File::from(r),
        Stdio::piped(),
    );
    let sender = Proc::spawn_with(
        "pipe-demo",
        &["sender", "--count", N, "--quiet"],
        Stdio::null(),
        File::from(w),
    );
    let (sent, received) = (sender.finish(minute), receiver.finish(minute));
    assert_eq!(sent.code(), 0, "{}", sent.describe());
    received.assert_clean();
    assert_eq!(received.summary_field("messages"), N);
    eprintln!("soak: pipe in {:.1} s", start.elapsed().as_secs_f64());

    let fifo = dir.path().join("f");
    let fifo = fifo.to_str().unwrap();
    soak(
        "fifo-demo",
        &["receiver", "--path", fifo, "--count", N, "--quiet"],
        "waits until a writer",
        &["sender", "--path", fifo, "--count", N, "--quiet"],
        minute,
    );

    let key = dir.path().join("key");
    std::fs::write(&key, b"").unwrap();
    let key = key.to_str().unwrap();
    soak(
        "msgq-demo",
        &["sysv", "receiver", "--key", key, "--count", N, "--quiet"],
        "msgrcv(msgtyp",
        &["sysv", "sender", "--key", key, "--count", N, "--quiet"],
        minute,
    );
    let mq = format!("/soak-{}", std::process::id());
    soak(
        "msgq-demo",
        &["posix", "receiver", "--name", &mq, "--count", N, "--quiet"],
        "Ctrl-C to stop",
        &["posix", "sender", "--name", &mq, "--count", N, "--quiet"],
        2 * minute,
    );

    let shm = format!("/soak-{}", std::process::id());
    soak(
        "shm-demo",
        &["receiver", "--name", &shm, "--count", N, "--quiet"],
        "waiting for a sender",
        &["sender", "--name", &shm, "--count", N, "--quiet"],
        2 * minute,
    );
    soak(
        "shm-demo",
        &["sysv", "receiver", "--key", key, "--count", N, "--quiet"],
        "waiting for a sender",
        &["sysv", "sender", "--key", key, "--count", N, "--quiet"],
        2 * minute,
    );

    // A socket carries requests and waits for each reply: a million round trips.
    let sock = dir.path().join("s");
    let sock = sock.to_str().unwrap();
    soak(
        "socket-demo",
        &["server", "--path", sock, "--clients", "1", "--quiet"],
        "listening",
        &["client", "--path", sock, "--count", N, "--quiet"],
        3 * minute,
    );
}
