//! What a demo inherits from whoever started it, besides its arguments:
//! the signal mask, TMPDIR, resource limits. A demo started from a
//! launcher, a CI harness or a script behaves as one started from a shell,
//! or says clearly what is in its way.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use common::cleanup::{PrivateDir, unique_name};
use ipc_tests::{Proc, SHORT, demo, with_rlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// Start a demo with every signal that can be blocked blocked, as a
/// launcher might leave it: the mask survives fork and exec.
fn with_all_signals_blocked(name: &str, args: &[&str]) -> Proc {
    let mut cmd = demo(name, args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let all = SigSet::all();
    // SAFETY: between fork and exec the closure only calls sigprocmask,
    // which is async-signal-safe, on a set built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None)
                .map_err(std::io::Error::from)
        });
    }
    Proc::start(cmd)
}

/// The stories whose lessons need a signal delivered: SIGPIPE to a writer
/// with no reader, SIGUSR1 and friends to the signal tour's children.
#[test]
fn stories_that_need_signals_work_under_an_inherited_blocked_mask() {
    for name in ["pipe-demo", "signal-demo"] {
        with_all_signals_blocked(name, &[])
            .finish(SHORT)
            .assert_clean();
    }
}

/// Ctrl-C still stops a receiver and removes its object: a blocked SIGINT
/// would stay pending for ever and leave /dev/shm/NAME behind.
#[test]
fn ctrl_c_reaches_a_demo_started_with_signals_blocked() {
    let name = format!("/{}", unique_name("env-test"));
    let mut receiver = with_all_signals_blocked("shm-demo", &["receiver", "--name", &name]);
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    let object = Path::new("/dev/shm").join(&name[1..]);
    assert!(object.exists());
    receiver.signal(Signal::SIGINT);
    let out = receiver.finish(SHORT);
    out.assert_stopped_by(Signal::SIGINT);
    assert!(!object.exists(), "{} was left behind", object.display());
}

/// A relative TMPDIR: the FIFO story's server acts only on absolute reply
/// paths, so the private directories must be absolute whatever TMPDIR says.
#[test]
fn a_relative_tmpdir_is_taken_from_the_working_directory() {
    let base = PrivateDir::create("env-test").unwrap();
    std::fs::create_dir(base.path().join("rel")).unwrap();
    let mut cmd = demo("fifo-demo", &[]);
    cmd.current_dir(base.path())
        .env("TMPDIR", "rel")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = Proc::start(cmd).finish(SHORT);
    out.assert_clean();
    let made = base.path().join("rel").display().to_string();
    assert!(
        out.stdout.contains(&format!("mkdir({made}/fifo-demo-")),
        "the private directory is not under {made}:\n{}",
        out.describe()
    );
    let left: Vec<_> = std::fs::read_dir(base.path().join("rel"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// Step 9 of the signal tour queues 500 signals to a child that reads none
/// until the end: below that RLIMIT_SIGPENDING the tour says so, exit 1,
/// instead of two processes waiting for each other.
#[test]
fn a_pending_signal_limit_too_small_for_the_flood_is_named() {
    let mut cmd = demo("signal-demo", &["--quiet"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    with_rlimit(&mut cmd, libc::RLIMIT_SIGPENDING, 499);
    let out = Proc::start(cmd).finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("RLIMIT_SIGPENDING is 499") && out.stderr.contains("ulimit -i"),
        "{}",
        out.describe()
    );
}
