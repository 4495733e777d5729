//! Ctrl-C in the middle of every story, once (an orderly stop) and twice
//! back to back (the second ends the demo at once): either way the story
//! exits 130, no process of it survives, and no named object is left.
//!
//! Each story runs in fresh IPC and mount namespaces (`unshare`, so root
//! only) with its own `/dev/shm`, `/dev/mqueue` and temp dir: whatever is
//! found there afterwards was left by that story, and the check cannot be
//! confused by other tests running at the same time. A bash holder starts
//! the story in a session of its own, waits for it and its children to be
//! gone, then lists what is left before the namespaces go away.

use std::time::Duration;

use ipc_tests::{Proc, bin};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

const HOLDER: &str = r#"
set -u
mount -t tmpfs -o size=256m,mode=1777 tmpfs /dev/shm || exit 90
mkdir -p /dev/mqueue && mount -t mqueue mqueue /dev/mqueue || exit 91
# The temp dir inside that tmpfs, not a tmpfs over /tmp: the binaries may
# live under /tmp (a clone of the repository there).
mkdir -m 1777 /dev/shm/.tmp && export TMPDIR=/dev/shm/.tmp || exit 92
cd /
# A non-interactive shell starts background commands with SIGINT ignored;
# a terminal's foreground job has it at its default: restore that.
setsid env --default-signal=INT,QUIT "$@" </dev/null &
pgid=$!
echo "=== pgid $pgid"
wait "$pgid"
status=$?
for _ in $(seq 400); do
  kill -0 -- "-$pgid" 2>/dev/null || break
  sleep 0.05
done
if kill -0 -- "-$pgid" 2>/dev/null; then
  echo "=== still running: $(pgrep -g "$pgid" | tr '\n' ' ')"
  kill -KILL -- "-$pgid"
fi
echo "=== status $status"
for left in /dev/shm/* /dev/mqueue/* /dev/shm/.tmp/*; do
  [ -e "$left" ] && echo "=== left $left"
done
ipcs -q -m -s | awk '/^0x/ { print "=== left System V id " $2 " (" $1 ")" }'
echo "=== end"
"#;

/// Run `demo args` as a story, wait for a stdout line containing
/// `trigger` (objects exist by then), send SIGINT to its process group
/// (as a terminal's Ctrl-C does), a second one `gap` later if given, and
/// check that nothing survives.
fn interrupt(demo: &str, args: &[&str], trigger: &str, gap: Option<Duration>) {
    if !nix::unistd::geteuid().is_root() {
        // unshare needs CAP_SYS_ADMIN; CI runs as root.
        eprintln!("second_signal: not root, skipped");
        return;
    }
    let exe = bin(demo);
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--ipc",
        "--mount",
        "--propagation",
        "private",
        "bash",
        "-c",
        HOLDER,
        "holder",
    ])
    .arg(&exe)
    .args(args)
    .env_remove("XDG_RUNTIME_DIR")
    .env_remove("TMPDIR")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut holder = Proc::start(cmd);
    let pgid_line = holder.wait_for_line(|l| l.starts_with("=== pgid "), Duration::from_secs(60));
    let pgid: i32 = pgid_line["=== pgid ".len()..].trim().parse().unwrap();
    holder.wait_for_line(|l| l.contains(trigger), Duration::from_secs(60));
    let group = Pid::from_raw(pgid);
    let _ = killpg(group, Signal::SIGINT);
    if let Some(gap) = gap {
        std::thread::sleep(gap);
        let _ = killpg(group, Signal::SIGINT);
    }
    let out = holder.finish(Duration::from_secs(90));
    let report: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("=== "))
        .collect();
    assert!(
        report.contains(&"=== end"),
        "{demo}: the holder did not finish\n{}",
        out.describe()
    );
    let bad: Vec<&&str> = report
        .iter()
        .filter(|l| l.starts_with("=== left") || l.starts_with("=== still running"))
        .collect();
    assert!(
        bad.is_empty(),
        "{demo} {args:?}: SIGINT (second after {gap:?}) left {bad:?}\n{}",
        out.describe()
    );
    let status = report
        .iter()
        .find_map(|l| l.strip_prefix("=== status "))
        .unwrap();
    assert_eq!(
        status,
        "130",
        "{demo}: a story stopped by SIGINT ends with 130 (128 + 2)\n{}",
        out.describe()
    );
}

fn both_gaps(demo: &str, args: &[&str], trigger: &str) {
    for gap in [
        None,
        Some(Duration::from_millis(20)),
        Some(Duration::from_millis(300)),
    ] {
        interrupt(demo, args, trigger, gap);
    }
}

#[test]
fn pipe_story() {
    both_gaps("pipe-demo", &["--count", "5000000", "--quiet"], "fork()");
}

#[test]
fn fifo_story() {
    both_gaps(
        "fifo-demo",
        &["--writers", "4", "--count", "2000000", "--quiet"],
        "mkfifo(",
    );
}

#[test]
fn signal_story() {
    both_gaps("signal-demo", &[], "sigprocmask");
}

#[test]
fn msgq_story() {
    both_gaps("msgq-demo", &[], "msgget(");
}

#[test]
fn sem_story() {
    both_gaps(
        "sem-demo",
        &["--iterations", "2000000", "--quiet"],
        "sem_open(",
    );
}

#[test]
fn shm_posix_story() {
    both_gaps(
        "shm-demo",
        &["--count", "50000000", "--quiet"],
        "sem_init(full",
    );
}

#[test]
fn shm_sysv_story() {
    both_gaps(
        "shm-demo",
        &["sysv", "--count", "50000000", "--quiet"],
        "shmget(",
    );
}

#[test]
fn shm_futex_story() {
    both_gaps("shm-demo", &["futex", "--quiet"], "published (offset 64");
}

#[test]
fn shm_futex_story_mid_transfer() {
    both_gaps(
        "shm-demo",
        &["futex", "--count", "50000000", "--quiet"],
        "writing each message",
    );
}

#[test]
fn socket_story() {
    both_gaps("socket-demo", &["--count", "20000", "--quiet"], "bind(");
}

#[test]
fn memfd_story() {
    both_gaps(
        "memfd-demo",
        &["--count", "10000", "--size", "65536", "--quiet"],
        "== 4.",
    );
}

#[test]
fn eventfd_story() {
    both_gaps(
        "eventfd-demo",
        &["--count", "1000000000", "--quiet"],
        "sendmsg(count=",
    );
}

/// A story killed by SIGKILL runs no destructor and cannot stop its peers;
/// the kernel does (`PR_SET_PDEATHSIG` in `common::peer`): the peer it
/// started gets SIGTERM and ends, instead of waiting out its --timeout.
#[test]
fn a_story_killed_by_sigkill_leaves_no_peer_running() {
    // memfd-demo's step 4 starts its receiver, which listens, then fills
    // ~1 GB before it connects: killed in between, the receiver would wait
    // for a sender for the whole --timeout.
    let mut story = ipc_tests::Proc::spawn(
        "memfd-demo",
        &[
            "--count",
            "15000",
            "--size",
            "65536",
            "--quiet",
            "--timeout",
            "600",
        ],
    );
    story.wait_for_line(
        |l| l.contains("started a receiver process"),
        Duration::from_secs(60),
    );
    let pid = story.pid().as_raw();
    story.signal(Signal::SIGKILL);
    // finish() also fails unless every process of the story's group is gone
    // within 10 s: the receiver too, though its own timeout is 600 s.
    let out = story.finish(Duration::from_secs(60));
    assert!(out.status.code().is_none(), "{}", out.describe());
    // What SIGKILL left: the story's private directory (the receiver removed
    // its socket file when SIGTERM stopped it). Ours to remove.
    let prefix = format!("memfd-demo-{pid}-");
    for entry in std::fs::read_dir(common::cleanup::runtime_dir())
        .unwrap()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let dir = entry.path();
            assert!(
                !dir.join("memfd.sock").exists(),
                "the receiver was stopped without removing its socket file"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
