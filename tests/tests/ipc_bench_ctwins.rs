//! ipc-bench's C twins of the shared-memory rows (ipc-bench/c/shm_twins.c:
//! shm-sem, shm-spsc and the futex ring's three rows): they carry every
//! size the Rust rows do and put a Rust ÷ C figure beside
//! each; a twin whose sending child is killed fails the run instead of
//! hanging it, a twin's child whose parent is killed ends by itself, and
//! Ctrl-C during a twin stops the run as a stop.
//! No figure is compared with another: only that each exists.

use std::time::{Duration, Instant};

use ipc_tests::{LONG, Proc, SHORT, run};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BENCH: &str = "ipc-bench";
/// The rows with a C twin (shm-memfd, the futex ring in a sealed memfd, has none).
const TWINNED: [&str; 5] = [
    "shm-sem",
    "shm-spsc",
    "shm-futex",
    "shm-futex-yield",
    "shm-futex-spin",
];

/// The section of the Markdown output whose title starts with `title`.
fn section(out: &ipc_tests::Output, title: &str) -> String {
    out.stdout
        .split("\n## ")
        .find(|s| s.starts_with(title))
        .unwrap_or_else(|| panic!("no section {title:?}\n{}", out.describe()))
        .to_string()
}

#[test]
fn the_shm_rows_have_a_rust_over_c_figure_at_small_whole_and_split_sizes() {
    // 64 B; 64 KiB, one whole shm-sem slot; 192 KiB, split over three.
    let out = run(
        BENCH,
        &[
            "--quick",
            "--mechanisms",
            "shm-sem,shm-spsc,shm-futex,shm-futex-yield,shm-futex-spin",
            "--sizes",
            "64,65536,196608",
            "--count",
            "300",
            "--rounds",
            "20",
        ],
        LONG,
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(!out.stderr.contains("C twin"), "{}", out.describe());
    let table = section(&out, "Against the same workload written in C");
    for mech in TWINNED {
        for size in ["64 B", "64 KiB", "192 KiB"] {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| {mech} | {size} |")))
                .unwrap_or_else(|| panic!("no {mech} {size} row\n{}", out.describe()));
            // | mech | size | Rust MB/s | C MB/s | Rust ÷ C |
            let figures: Vec<f64> = row
                .split('|')
                .skip(3)
                .take(3)
                .map(|f| f.trim().parse().unwrap_or(-1.0))
                .collect();
            // Rust and C both measured; the ratio is theirs (rounded: a
            // debug build's Rust can be 0.00 of C).
            assert!(figures.len() == 3, "{row}\n{}", out.describe());
            let (rust, c, ratio) = (figures[0], figures[1], figures[2]);
            assert!(
                rust > 0.0 && c > 0.0 && (ratio - rust / c).abs() <= 0.005 + 0.03 * ratio,
                "{row}\n{}",
                out.describe()
            );
            let progress = format!("{size}: C reference");
            assert!(
                out.stderr
                    .lines()
                    .any(|l| l.contains(mech) && l.contains(&progress) && l.contains("Rust ÷ C")),
                "{mech} {size}\n{}",
                out.describe()
            );
        }
    }
    // The split cells say how they were carried; the C twins split them
    // the same way.
    for mech in ["shm-sem", "shm-futex", "shm-futex-yield", "shm-futex-spin"] {
        assert!(
            out.stdout
                .contains(&format!("{mech} at 192 KiB: split into 64 KiB slots")),
            "{mech}\n{}",
            out.describe()
        );
    }
}

/// The pid of a running (not zombie) child of `parent` whose name is
/// `comm`: the C twins' children rename themselves "ctwin-shm-...".
fn child_named(parent: Pid, comm: &str) -> Option<Pid> {
    // "PID (comm) STATE PPID ...": comm may hold spaces, so split at the
    // last ')'.
    let stat = |pid: i32| -> Option<(String, String, i32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1.to_string();
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.to_string();
        Some((name, state, fields.next()?.parse().ok()?))
    };
    // The kernel's list of a thread's children (CONFIG_PROC_CHILDREN),
    // else every process.
    let children = format!("/proc/{parent}/task/{parent}/children");
    let candidates: Vec<i32> = match std::fs::read_to_string(children) {
        Ok(list) => list
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
            .collect(),
    };
    candidates
        .into_iter()
        .find(|&pid| {
            stat(pid).is_some_and(|(name, state, ppid)| {
                name == comm && state != "Z" && ppid == parent.as_raw()
            })
        })
        .map(Pid::from_raw)
}

/// The name a twin's child gives itself (the futex rows share one twin).
fn twin_comm(mech: &str) -> String {
    let twin = if mech.starts_with("shm-futex") {
        "shm-futex"
    } else {
        mech
    };
    format!("ctwin-{twin}")
}

/// Start a run of one `mech` cell long enough to catch its C twin (the
/// Rust cell comes first, then the twin with the same count), and wait
/// until the twin's child runs. Returns the run and that child.
fn run_until_twin(mech: &str, size: &str, count: &str) -> (Proc, Pid) {
    let mut proc = Proc::spawn(
        BENCH,
        &[
            "--quick",
            "--mechanisms",
            mech,
            "--sizes",
            size,
            "--count",
            count,
            "--rounds",
            "10",
        ],
    );
    let comm = twin_comm(mech);
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(child) = child_named(proc.pid(), &comm) {
            return (proc, child);
        }
        if !proc.running() {
            let out = proc.finish(SHORT);
            panic!(
                "{mech}: the run ended before its C twin was seen: raise the count\n{}",
                out.describe()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{mech}: no C twin within {LONG:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Killing the twin's sending child mid-run: the parent notices within its
/// bounded waits and the run fails with a message naming the twin.
fn killed_child_fails_the_run(mech: &str, size: &str, count: &str) {
    let (proc, child) = run_until_twin(mech, size, count);
    kill(child, Signal::SIGKILL).expect("kill the twin's child");
    let out = proc.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains(&format!("the C twin of {mech} at {size} bytes failed")),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("the sending process"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_killed_shm_sem_twin_child_fails_the_run_without_a_hang() {
    killed_child_fails_the_run("shm-sem", "64", "1000000");
}

#[test]
fn a_killed_shm_spsc_twin_child_fails_the_run_without_a_hang() {
    killed_child_fails_the_run("shm-spsc", "64", "3000000");
}

#[test]
fn a_killed_shm_futex_twin_child_fails_the_run_without_a_hang() {
    // The strategy that sleeps in FUTEX_WAIT: its bounded wait notices.
    killed_child_fails_the_run("shm-futex", "64", "1000000");
}

#[test]
fn ctrl_c_during_a_twin_stops_the_run_as_a_stop() {
    // A terminal's Ctrl-C reaches the whole group: ipc-bench and the
    // twin's child. The twin asks ipc-bench's stop flag where the Rust ring
    // calls check_stop (shm-sem: at every wait), so the cell ends there,
    // without its C figure, and the run exits 128 + SIGINT.
    let (proc, _child) = run_until_twin("shm-sem", "64", "1000000");
    nix::sys::signal::killpg(proc.pid(), Signal::SIGINT).expect("SIGINT the group");
    let out = proc.finish(SHORT);
    out.assert_stopped_by(Signal::SIGINT);
    assert!(!out.stderr.contains(": C reference"), "{}", out.describe());
    assert!(!out.stderr.contains("the C twin of"), "{}", out.describe());
}

/// Killing ipc-bench itself while a twin runs: the twin's child sees its
/// parent gone (getppid changes) and exits; `finish` checks that nothing of
/// the process group is left. The private directory the killed run left is
/// removed by the next run, as any killed run's.
fn killed_parent_ends_the_child(mech: &str, size: &str, count: &str) {
    let (proc, child) = run_until_twin(mech, size, count);
    let pid = proc.pid();
    proc.signal(Signal::SIGKILL);
    let out = proc.finish(SHORT);
    assert!(out.status.code().is_none(), "{}", out.describe());
    assert!(
        kill(child, None).is_err(),
        "{mech}: the twin's child {child} outlived its parent"
    );
    let mine = format!("ipc-bench-{pid}-");
    let left = || -> Vec<String> {
        std::fs::read_dir(common::cleanup::runtime_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&mine))
                    .collect()
            })
            .unwrap_or_default()
    };
    let sweep = run(
        BENCH,
        &[
            "--quick",
            "--mechanisms",
            "pipe",
            "--sizes",
            "64",
            "--count",
            "2",
            "--rounds",
            "10",
        ],
        SHORT,
    );
    assert_eq!(sweep.code(), 0, "{}", sweep.describe());
    assert_eq!(left(), Vec::<String>::new(), "{}", sweep.describe());
}

#[test]
fn a_killed_parent_ends_the_shm_sem_twin_child() {
    killed_parent_ends_the_child("shm-sem", "64", "1000000");
}

#[test]
fn a_killed_parent_ends_the_shm_spsc_twin_child() {
    killed_parent_ends_the_child("shm-spsc", "64", "3000000");
}

#[test]
fn a_killed_parent_ends_the_shm_futex_twin_child() {
    killed_parent_ends_the_child("shm-futex", "64", "1000000");
}
