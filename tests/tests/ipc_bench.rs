//! ipc-bench: the quick run produces every row with no check failure, its
//! JSON parses and holds every mechanism, bad options are refused.

use common::cleanup::PrivateDir;
use std::os::unix::process::CommandExt;

use ipc_tests::{LONG, SHORT, assert_usage_error, run};

/// Every ipc-bench run removes stale objects of dead runs when it starts, so
/// the test that SIGKILLs runs and checks what they left runs alone.
static SWEEP: std::sync::RwLock<()> = std::sync::RwLock::new(());

const BENCH: &str = "ipc-bench";
const MECHANISMS: [&str; 15] = [
    "pipe",
    "fifo",
    "unix-stream",
    "unix-dgram",
    "sysv-msg",
    "posix-mq",
    "shm-sem",
    "shm-futex",
    "shm-futex-yield",
    "shm-futex-spin",
    "shm-memfd",
    "shm-spsc",
    "tcp",
    "signal",
    "eventfd",
];

/// The idle receivers measured (every waiting strategy of the rings, and a
/// pipe for reference).
const IDLE: [&str; 6] = [
    "shm-futex-spin",
    "shm-futex-yield",
    "shm-futex",
    "shm-sem",
    "shm-spsc",
    "pipe",
];

#[test]
fn quick_run_has_every_row_and_valid_json_and_svg() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    let dir = PrivateDir::create("ipc-bench-test").unwrap();
    let json = dir.path().join("out.json");
    let svg = dir.path().join("out.svg");
    let out = run(
        BENCH,
        &[
            "--quick",
            "--json",
            json.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ],
        LONG,
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    let section = |title: &str| {
        out.stdout
            .split("\n## ")
            .find(|s| s.starts_with(title))
            .unwrap_or_else(|| panic!("no section {title:?}\n{}", out.describe()))
            .to_string()
    };
    let (throughput, latency) = (section("Throughput"), section("Round trip"));
    for mech in MECHANISMS {
        // One throughput row and one latency row each.
        for table in [&throughput, &latency] {
            let rows = table
                .lines()
                .filter(|l| l.starts_with(&format!("| {mech} |")))
                .count();
            assert_eq!(rows, 1, "{mech}\n{}", out.describe());
        }
    }
    for reference in [
        "*memcpy (one process)*",
        "*payload fill + check, no IPC*",
        "*raw shared-memory spin*",
    ] {
        assert!(
            out.stdout.contains(reference),
            "missing {reference}\n{}",
            out.describe()
        );
    }
    assert!(!out.stderr.contains("check failed"), "{}", out.describe());
    // The C reference ran beside the Rust transports it has.
    assert!(
        out.stdout
            .contains("## Against the same workload written in C"),
        "{}",
        out.describe()
    );
    for mech in ["pipe", "unix-stream", "tcp"] {
        assert!(
            out.stdout.contains(&format!("| {mech} | 64 B |")),
            "{mech} vs C\n{}",
            out.describe()
        );
    }

    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    let mechs = parsed["mechanisms"].as_array().expect("mechanisms");
    let names: Vec<&str> = mechs.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, MECHANISMS);
    for m in mechs {
        let cells = m["throughput"].as_array().unwrap();
        assert_eq!(cells.len(), 4, "{m}");
        let measured = cells.iter().filter(|c| c["mb_s"].is_number()).count();
        // An eventfd carries no messages: round trips only.
        assert!(measured >= 1 || m["name"] == "eventfd", "{m}");
        assert!(m["round_trip"]["median_ns"].as_u64().unwrap() > 0, "{m}");
    }
    assert!(parsed["spin_round_trip"]["median_ns"].as_u64().unwrap() > 0);
    let versus = parsed["versus_c"].as_array().expect("versus_c");
    assert!(
        versus
            .iter()
            .all(|v| v["c_mb_s"].as_f64().unwrap() > 0.0 && v["rust_mb_s"].as_f64().unwrap() > 0.0)
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("shm-spsc"));

    // CPU per message beside every throughput, CPU per round trip beside
    // every latency, in the JSON...
    for m in mechs {
        let name = m["name"].as_str().unwrap();
        for cell in m["throughput"].as_array().unwrap() {
            if cell["mb_s"].is_number() {
                assert!(cell["cpu_ns_per_message"].as_f64().unwrap() > 0.0, "{m}");
                assert!(cell["cpu"]["parent_user_us"].is_u64(), "{m}");
                assert!(cell["cpu"]["child_sys_us"].is_u64(), "{m}");
                // The median of the runs, between their lowest and highest.
                let (lo, mid, hi) = (
                    cell["msg_s_min"].as_f64().unwrap(),
                    cell["msg_s"].as_f64().unwrap(),
                    cell["msg_s_max"].as_f64().unwrap(),
                );
                assert!(
                    lo <= mid + 1.0 && mid <= hi + 1.0,
                    "{name}: {lo} {mid} {hi}"
                );
                assert!(cell["runs"].as_u64().unwrap() >= 1);
            }
        }
        let rt = &m["round_trip"];
        for p in ["p50_ns", "p99_ns", "p999_ns"] {
            assert!(rt[p].as_u64().unwrap() > 0, "{name} {p}");
        }
        assert!(rt["p50_ns"].as_u64() <= rt["p99_ns"].as_u64());
        assert!(rt["p99_ns"].as_u64() <= rt["p999_ns"].as_u64());
        assert!(
            rt["cpu_ns_per_round_trip"].as_f64().unwrap() > 0.0,
            "{name}"
        );
    }
    // ... and in the tables.
    for title in [
        "CPU per message, user + system of both processes",
        "A receiver waiting for nothing",
        "The cost of waiting",
        "System",
    ] {
        section(title);
    }
    assert!(
        throughput.contains("CPU/msg at the first size"),
        "{throughput}"
    );
    assert!(latency.contains("CPU per round trip"), "{latency}");
    // Idle receivers: one figure each, in the JSON and the table.
    let idle = parsed["idle"].as_array().expect("idle");
    let names: Vec<&str> = idle.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, IDLE);
    for i in idle {
        assert!(i["seconds"].as_f64().unwrap() > 0.0, "{i}");
        assert!(i["cpu_percent"].is_number(), "{i}");
    }
    let idle_table = section("A receiver waiting for nothing");
    for mech in IDLE {
        assert!(
            idle_table
                .lines()
                .any(|l| l.starts_with(&format!("| {mech} |")) && l.contains('%')),
            "{mech}\n{idle_table}"
        );
    }
    // Where the processes ran, and the machine, in text and JSON.
    assert!(
        out.stdout.contains("CPUs: pinned") || out.stdout.contains("CPUs: not pinned"),
        "{}",
        out.describe()
    );
    let system = section("System");
    for what in ["| kernel |", "| CPU model |", "| nproc", "| kernel.sched_"] {
        assert!(system.contains(what), "{what}\n{system}");
    }
    for what in ["kernel", "CPU model", "CPUs online"] {
        assert!(parsed["system"][what].is_string(), "{what}");
    }
    assert!(parsed["pinning"].is_string());
    assert!(parsed["kernel_limits"]["fs.pipe-max-size"].is_string());
    // eventfd: round trips only; shm-memfd: every size.
    let by_name = |n: &str| mechs.iter().find(|m| m["name"] == n).unwrap();
    let eventfd = by_name("eventfd");
    assert!(
        eventfd["throughput"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["na"].as_str().is_some_and(|w| w.contains("counter")))
    );
    assert!(eventfd["round_trip"]["p50_ns"].as_u64().unwrap() > 0);
    assert!(eventfd["cpu_ns_per_wake_up"].as_f64().unwrap() > 0.0);
    assert!(latency.contains("of CPU per wake-up"), "{latency}");
    let memfd = by_name("shm-memfd");
    assert!(
        memfd["throughput"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["mb_s"].as_f64().is_some_and(|v| v > 0.0)),
        "{memfd}"
    );
    assert!(
        memfd["configuration"]
            .as_str()
            .unwrap()
            .contains("F_ADD_SEALS")
    );
}

/// Run ipc-bench allowed on CPU 0 only, as `taskset -c 0` would.
fn on_one_cpu(args: &[&str]) -> ipc_tests::Output {
    let mut cmd = std::process::Command::new(ipc_tests::bin(BENCH));
    cmd.args(args)
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: between fork and exec only sched_setaffinity (a system call
    // on a set on our stack) runs.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
    ipc_tests::Proc::start(cmd).finish(SHORT)
}

#[test]
fn the_output_says_whether_the_processes_were_pinned() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    let args = [
        "--mechanisms",
        "pipe,shm-futex",
        "--sizes",
        "64",
        "--count",
        "16",
        "--rounds",
        "10",
    ];
    // One CPU allowed: nothing to pin to, and the output says so.
    let out = on_one_cpu(&args);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout
            .contains("CPUs: not pinned: this process may run on 1 CPU(s) only"),
        "{}",
        out.describe()
    );
    // --no-pin: left to the scheduler, said so.
    let mut no_pin = args.to_vec();
    no_pin.push("--no-pin");
    let out = run(BENCH, &no_pin, SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout.contains("CPUs: not pinned: --no-pin"),
        "{}",
        out.describe()
    );
    // Two or more CPUs: pinned, to two different ones.
    if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
        let out = run(BENCH, &args, SHORT);
        assert_eq!(out.code(), 0, "{}", out.describe());
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("CPUs: "))
            .unwrap_or_else(|| panic!("{}", out.describe()));
        assert!(
            line.starts_with("CPUs: pinned: the parent on CPU "),
            "{line}"
        );
        let cpus: Vec<&str> = line
            .split("CPU ")
            .skip(1)
            .map(|s| s.split(|c: char| !c.is_ascii_digit()).next().unwrap())
            .collect();
        assert_eq!(cpus.len(), 2, "{line}");
        assert_ne!(cpus[0], cpus[1], "{line}");
    }
}

#[test]
fn a_subset_of_mechanisms_and_sizes() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    let out = run(
        BENCH,
        &[
            "--mechanisms",
            "pipe,shm-spsc",
            "--sizes",
            "1,100",
            "--count",
            "50",
            "--rounds",
            "20",
        ],
        SHORT,
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout.contains("| mechanism | 1 B | 100 B |"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("| pipe |") && out.stdout.contains("| shm-spsc |"));
    assert!(!out.stdout.contains("| tcp |"));
}

#[test]
fn bad_options_exit_2_with_a_clear_message() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    let cases: &[(&[&str], &str)] = &[
        (
            &["--mechanisms", "pipe,carrier-pigeon"],
            "unknown mechanism 'carrier-pigeon'",
        ),
        (&["--sizes", "0"], "--sizes: 0 is out of range"),
        (&["--sizes", "64,99999999999"], "out of range"),
        (&["--sizes", "big"], "not a whole number"),
        (&["--count", "0"], "--count"),
        (&["--rounds", "x"], "--rounds"),
        (&["--bogus"], "--bogus"),
    ];
    for (args, needle) in cases {
        assert_usage_error(BENCH, args, needle);
    }
}

/// `--help` lists exactly the mechanisms `--mechanisms` accepts (the ones an
/// unknown name's error lists as known), and those are every row.
#[test]
fn help_lists_exactly_the_mechanisms_the_parser_knows() {
    let help = run(BENCH, &["--help"], SHORT);
    assert_eq!(help.code(), 0, "{}", help.describe());
    let listed: Vec<&str> = help
        .stdout
        .split("from:")
        .nth(1)
        .and_then(|rest| rest.split("(default").next())
        .expect("--mechanisms ... from: LIST (default")
        .split([',', ' ', '\n'])
        .filter(|w| !w.is_empty())
        .collect();
    let refused = assert_usage_error(BENCH, &["--mechanisms", "bogus"], "known:");
    let known: Vec<&str> = refused
        .stderr
        .split("known:")
        .nth(1)
        .unwrap()
        .split(" (see")
        .next()
        .unwrap()
        .split([',', ' '])
        .filter(|w| !w.is_empty())
        .collect();
    assert_eq!(listed, known, "--help against the parser");
    assert_eq!(listed, MECHANISMS, "--help against the rows");
}

// ---------------------------------------------------------------------------
// Round two: sizes, warm-up, configuration, output files, stdout, stale objects
// ---------------------------------------------------------------------------

/// A short run of `mechanisms` at `sizes`; `extra` adds options.
fn short_run(mechanisms: &str, sizes: &str, extra: &[&str]) -> ipc_tests::Output {
    let mut args = vec![
        "--mechanisms",
        mechanisms,
        "--sizes",
        sizes,
        "--count",
        "2",
        "--rounds",
        "10",
    ];
    args.extend_from_slice(extra);
    run(BENCH, &args, LONG)
}

/// The throughput row of `mech` in the Markdown output.
fn row<'a>(out: &'a ipc_tests::Output, mech: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.starts_with(&format!("| {mech} |")))
        .unwrap_or_else(|| panic!("no row for {mech}\n{}", out.describe()))
}

#[test]
fn every_mechanism_runs_or_says_na_above_the_spsc_ring_size() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    // 9000000 bytes is over the lock-free ring's 8 MiB: it used to wait
    // for room that never came, until the 300 s deadline.
    let out = short_run(&MECHANISMS.join(","), "9000000", &["--quick"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    for mech in MECHANISMS {
        let cell = row(&out, mech)
            .split('|')
            .nth(2)
            .unwrap()
            .trim()
            .to_string();
        let measured = cell.chars().next().is_some_and(|c| c.is_ascii_digit());
        if !measured {
            // n/a cells carry a numbered note that says why.
            assert!(
                cell.starts_with("n/a ["),
                "{mech}: {cell}\n{}",
                out.describe()
            );
            let note = cell.trim_start_matches("n/a ").to_string();
            assert!(
                out.stdout
                    .lines()
                    .any(|l| l.starts_with(&note) && l.contains(mech) && l.len() > 30),
                "{mech}: no reason for {note}\n{}",
                out.describe()
            );
        }
    }
    assert!(
        row(&out, "shm-spsc")
            .split('|')
            .nth(2)
            .unwrap()
            .trim()
            .starts_with(|c: char| c.is_ascii_digit()),
        "{}",
        out.describe()
    );
}

#[test]
fn the_largest_size_runs_through_the_lock_free_ring() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    let out = short_run("shm-spsc", &(16 << 20).to_string(), &[]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(row(&out, "shm-spsc").contains('×'), "{}", out.describe());
}

#[test]
fn no_first_touch_page_fault_is_timed() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    // Each cell maps a fresh ring; without a warm-up the receiver's first
    // touch of each page of it was timed (shm-spsc at 64 KiB read 2.2 GB/s
    // with 32 messages and 22 GB/s with 16 K).
    let dir = PrivateDir::create("ipc-bench-test").unwrap();
    let json = dir.path().join("faults.json");
    let out = run(
        BENCH,
        &[
            "--mechanisms",
            "shm-spsc,shm-sem,pipe",
            "--sizes",
            "4096,65536",
            "--count",
            "64",
            "--rounds",
            "2000",
            "--json",
            json.to_str().unwrap(),
        ],
        LONG,
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    for m in parsed["mechanisms"].as_array().unwrap() {
        for cell in m["throughput"].as_array().unwrap() {
            let warm = cell["warm_up_messages"].as_u64().expect("warm_up_messages");
            assert!(warm >= 16, "{m}");
            let faults = cell["timed_receiver_page_faults"]
                .as_u64()
                .expect("timed_receiver_page_faults");
            assert!(
                faults <= 4,
                "{} at {}: {faults} faults timed",
                m["name"],
                cell["size"]
            );
        }
        // Round trips: a 64-byte message walks a fresh page of the ring
        // every 56 rounds, a fault the timed rounds must not take.
        let faults = m["round_trip"]["timed_page_faults"]
            .as_u64()
            .expect("timed_page_faults");
        assert!(
            faults <= 4,
            "{} round trips: {faults} faults timed",
            m["name"]
        );
    }
    assert!(out.stdout.contains("warm-up"), "{}", out.describe());
}

#[test]
fn the_output_states_each_configuration_and_the_kernel_limits() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    let out = short_run(&MECHANISMS.join(","), "64", &["--quick"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let config = out
        .stdout
        .split("\n## ")
        .find(|s| s.starts_with("Configuration"))
        .unwrap_or_else(|| panic!("no configuration section\n{}", out.describe()));
    let line = |mech: &str| {
        config
            .lines()
            .find(|l| l.starts_with(&format!("| {mech} |")))
            .unwrap_or_else(|| panic!("no configuration of {mech}\n{config}"))
            .to_string()
    };
    for mech in MECHANISMS {
        line(mech);
    }
    assert!(line("shm-sem").contains("128 slots of 64 KiB"), "{config}");
    assert!(line("shm-sem").contains("8 x 4 KiB"), "{config}");
    for mech in ["shm-sem", "shm-spsc"] {
        assert!(
            line(mech).contains("anonymous MAP_SHARED mapping inherited over fork"),
            "{config}"
        );
    }
    assert!(line("unix-dgram").contains("net.core.wmem_max"), "{config}");
    assert!(line("sysv-msg").contains("kernel.msgmax"), "{config}");
    for limit in [
        "net.core.wmem_max",
        "kernel.msgmax",
        "kernel.msgmnb",
        "fs.mqueue.msgsize_max",
        "RLIMIT_SIGPENDING",
    ] {
        assert!(
            config.contains(&format!("| `{limit}` |")),
            "{limit}\n{config}"
        );
    }
}

#[test]
fn a_symlink_at_the_output_path_is_refused_and_its_target_untouched() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    use std::os::unix::fs::PermissionsExt;
    // A world-writable directory, like /tmp: anybody may plant a link.
    let dir = PrivateDir::create("ipc-bench-test").unwrap();
    let public = dir.path().join("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    for option in ["--json", "--svg"] {
        let link = public.join(format!("out{option}"));
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let out = run(
            BENCH,
            &[
                "--mechanisms",
                "pipe",
                "--sizes",
                "64",
                "--count",
                "16",
                "--rounds",
                "10",
                option,
                link.to_str().unwrap(),
            ],
            SHORT,
        );
        assert_eq!(out.code(), 1, "{option}\n{}", out.describe());
        assert!(out.stderr.contains("symbolic link"), "{}", out.describe());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }
    // A plain path is written through a temporary file, 0644 whatever the
    // umask, and leaves no temporary file behind.
    let path = public.join("ok.json");
    let out = ipc_tests::Proc::start({
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "umask 077; exec \"$0\" \"$@\""])
            .arg(ipc_tests::bin(BENCH))
            .args(["--mechanisms", "pipe", "--sizes", "64", "--count", "16"])
            .args(["--rounds", "10", "--json", path.to_str().unwrap()])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    })
    .finish(SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let names: Vec<_> = std::fs::read_dir(&public)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn a_closed_or_full_stdout_ends_quietly_or_with_one_line() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    use std::process::Stdio;
    let args = [
        "--mechanisms",
        "pipe",
        "--sizes",
        "64",
        "--count",
        "16",
        "--rounds",
        "10",
    ];
    // `ipc-bench | true`: the reader is gone before the tables come.
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end);
    let out =
        ipc_tests::Proc::spawn_with(BENCH, &args, Stdio::null(), std::fs::File::from(write_end))
            .finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(!out.stderr.contains("error"), "{}", out.describe());
    // `ipc-bench > /dev/full`: a real write error, one line, exit 1.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = ipc_tests::Proc::spawn_with(BENCH, &args, Stdio::null(), full).finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{}", out.describe());
    assert!(errors[0].contains("stdout"), "{}", out.describe());
}

/// A POSIX queue descriptor is closed with its cell: nix's `MqdT` has no
/// Drop, and each cell leaked two. With 16 descriptors allowed a run of
/// every size ran out after a few cells ("pipe2: EMFILE"), and its clean-up,
/// which opens a queue to check it is still ours, then left two queues.
#[test]
fn posix_queue_descriptors_are_closed_with_their_cell() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    use std::process::Stdio;
    let mut cmd = ipc_tests::demo(
        BENCH,
        &[
            "--mechanisms",
            "posix-mq",
            "--sizes",
            "64,4096,65536,1048576",
            "--count",
            "4",
            "--rounds",
            "10",
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ipc_tests::with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 16);
    let proc = ipc_tests::Proc::start(cmd);
    let pid = proc.pid().as_raw() as u32;
    let out = proc.finish(LONG);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
    let (sysv, posix, dirs) = left_by(pid);
    assert!(
        sysv.is_empty() && posix.is_empty() && dirs.is_empty(),
        "left: {sysv:?} {posix:?} {dirs:?}"
    );
}

/// System V queues whose key carries `pid` (ipc-bench's keys: 0x69PPPPPS).
fn sysv_queues_of(pid: u32) -> Vec<i32> {
    let table = std::fs::read_to_string("/proc/sysvipc/msg").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let key: i64 = f.next()?.parse().ok()?;
            let id: i32 = f.next()?.parse().ok()?;
            let key = key as u32;
            (key >> 24 == 0x69 && (key >> 2) & 0x3f_ffff == pid).then_some(id)
        })
        .collect()
}

/// What ipc-bench pid `pid` left: System V queue ids, POSIX queue names,
/// private directories.
fn left_by(pid: u32) -> (Vec<i32>, Vec<String>, Vec<std::path::PathBuf>) {
    let prefix = format!("ipc-bench-{pid}-");
    let names = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    let dirs = names(&common::cleanup::runtime_dir());
    // POSIX queues: listed in /dev/mqueue where the mqueue filesystem is
    // mounted, and recorded in the run's private directory everywhere.
    let mut posix: Vec<String> = names(std::path::Path::new("/dev/mqueue"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for dir in &dirs {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_prefix("posix-mq-")
                && !posix.iter().any(|p| p == name)
            {
                posix.push(name.to_string());
            }
        }
    }
    (sysv_queues_of(pid), posix, dirs)
}

/// Does POSIX queue /NAME exist? (Asked by name: /dev/mqueue may not be
/// mounted.)
fn posix_queue_exists(name: &str) -> bool {
    use nix::mqueue::{MQ_OFlag, mq_close, mq_open};
    match mq_open(
        format!("/{name}").as_str(),
        MQ_OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
        None,
    ) {
        Ok(mqd) => {
            let _ = mq_close(mqd);
            true
        }
        Err(e) => e != nix::errno::Errno::ENOENT,
    }
}

/// Start a long throughput run of `mech`, wait until its queue exists,
/// then SIGKILL it (and its forked child): it leaves its objects.
fn killed_during(mech: &str) -> u32 {
    use std::time::{Duration, Instant};
    let proc = ipc_tests::Proc::spawn(
        BENCH,
        &[
            "--quick",
            "--mechanisms",
            mech,
            "--sizes",
            "64",
            "--count",
            "100000000",
        ],
    );
    let pid = proc.pid().as_raw() as u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (sysv, posix, _) = left_by(pid);
        if !sysv.is_empty() || !posix.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{mech}: no queue appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::killpg(proc.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let out = proc.finish(SHORT);
    assert!(out.status.code().is_none(), "{}", out.describe());
    let (sysv, posix, dirs) = left_by(pid);
    assert!(!dirs.is_empty(), "pid {pid}: its private directory is left");
    assert!(
        !sysv.is_empty() || !posix.is_empty(),
        "pid {pid} left no queue"
    );
    for name in &posix {
        assert!(posix_queue_exists(name), "{name}");
    }
    pid
}

#[test]
fn objects_left_by_a_killed_run_are_found_and_removed_by_the_next() {
    // Alone: any other run would sweep the killed runs' objects first.
    let _alone = SWEEP.write().unwrap_or_else(|e| e.into_inner());
    // Each killed run leaves its queue and private directory (checked in
    // killed_during); the second run already removes what the first left.
    let dead = [killed_during("sysv-msg"), killed_during("posix-mq")];
    let dead_queues = left_by(dead[1]).1;
    assert!(!dead_queues.is_empty());
    // A queue named like a dead run's but owned by another user stays.
    let foreign = format!("/dev/mqueue/ipc-bench-{}-99", dead[1]);
    let made = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg("touch")
        .arg(&foreign)
        .status()
        .is_ok_and(|s| s.success());
    let out = short_run("pipe", "64", &[]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    for name in &dead_queues {
        assert!(
            name.ends_with("-99") || !posix_queue_exists(name),
            "{name} left\n{}",
            out.describe()
        );
    }
    for pid in dead {
        let (sysv, posix, dirs) = left_by(pid);
        assert!(sysv.is_empty(), "pid {pid}: {sysv:?}\n{}", out.describe());
        assert!(dirs.is_empty(), "pid {pid}: {dirs:?}\n{}", out.describe());
        let foreign_left = usize::from(made && pid == dead[1]);
        assert_eq!(posix.len(), foreign_left, "pid {pid}: {posix:?}");
    }
    let said = |text: String| assert!(out.stderr.contains(&text), "{text}\n{}", out.describe());
    said(format!("removed POSIX queue /ipc-bench-{}-", dead[1]));
    said(format!("left by ipc-bench pid {}, which is gone", dead[1]));
    if made {
        said(format!("left alone POSIX queue /ipc-bench-{}-99", dead[1]));
        let _ = std::fs::remove_file(&foreign);
    }
}

/// The repository root (the tests crate lives in ROOT/tests).
fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn docs_regenerates_every_marked_region_and_nothing_else() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    let dir = PrivateDir::create("ipc-bench-test").unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("docs")).unwrap();
    let page = |name: &str| {
        format!(
            "# keep this\n\n<!-- bench:begin {name} -->\nold figures\n<!-- bench:end {name} -->\n\nand this\n"
        )
    };
    std::fs::write(root.join("README.md"), page("readme")).unwrap();
    std::fs::write(root.join("docs/README.zh-CN.md"), page("readme-zh")).unwrap();
    std::fs::write(
        root.join("docs/comparison.md"),
        format!(
            "{}{}{}",
            page("comparison-top"),
            page("comparison-measured"),
            page("comparison-waiting")
        ),
    )
    .unwrap();
    // A subset would make the docs quote a run they do not describe.
    assert_usage_error(
        BENCH,
        &["--docs", root.to_str().unwrap(), "--mechanisms", "pipe"],
        "--docs",
    );
    let out = run(BENCH, &["--docs", root.to_str().unwrap(), "--quick"], LONG);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    for file in ["README.md", "docs/README.zh-CN.md", "docs/comparison.md"] {
        let text = read(file);
        assert!(!text.contains("old figures"), "{file}\n{text}");
        assert!(
            text.starts_with("# keep this") && text.contains("and this"),
            "{file}\n{text}"
        );
        assert!(
            text.contains("--quick"),
            "{file} must say it was a quick run"
        );
    }
    let readme = read("README.md");
    for mech in [
        "pipe",
        "FIFO",
        "TCP on 127.0.0.1",
        "shared memory, lock-free ring",
    ] {
        assert!(readme.contains(&format!("| {mech} |")), "{mech}\n{readme}");
    }
    assert!(read("docs/README.zh-CN.md").contains("| 管道 |"));
    let comparison = read("docs/comparison.md");
    assert!(
        comparison.contains("ipc-bench/regenerate-docs.sh"),
        "{comparison}"
    );
    assert!(
        comparison.contains("### Against the targets"),
        "{comparison}"
    );
    // Each region exactly once, its text replaced, the text between
    // regions kept: a page of three regions keeps its three frames.
    assert_eq!(comparison.matches("# keep this").count(), 3, "{comparison}");
    assert_eq!(comparison.matches("and this").count(), 3, "{comparison}");
    for section in [
        "## The cost of waiting",
        "### Against the targets (the futex ring)",
        "bench-waiting.svg",
        "shm-futex-spin",
        "memfd against an anonymous mapping",
    ] {
        assert!(comparison.contains(section), "{section}\n{comparison}");
    }
    let readme = read("README.md");
    assert!(readme.contains("CPU per 64 B msg"), "{readme}");
    for row in ["| eventfd |", "| the futex ring in a sealed memfd |"] {
        assert!(readme.contains(row), "{row}\n{readme}");
    }
    let zh = read("docs/README.zh-CN.md");
    assert!(zh.contains("每条 64 B 消息的 CPU 时间"), "{zh}");
    assert!(
        zh.contains("| eventfd |") && zh.contains("密封 memfd"),
        "{zh}"
    );
    let waiting = read("docs/bench-waiting.svg");
    assert!(waiting.starts_with("<svg") && waiting.contains("shm-futex"));
    let results = read("docs/bench-results.md");
    assert!(results.contains("ipc-bench/regenerate-docs.sh"));
    assert!(results.contains("## Configuration"));
    assert!(results.contains("## System") && results.contains("CPUs: "));
    let _: serde_json::Value = serde_json::from_str(&read("docs/bench.json")).unwrap();
    assert!(read("docs/bench.svg").starts_with("<svg"));
    // A file without its markers is refused before any measuring.
    std::fs::write(root.join("README.md"), "no markers\n").unwrap();
    let out = run(BENCH, &["--docs", root.to_str().unwrap(), "--quick"], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("bench:begin readme"),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains("reference:"), "{}", out.describe());
}

#[test]
fn the_repository_docs_hold_the_generated_regions() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    let root = repo_root();
    for (file, regions) in [
        ("README.md", &["readme"][..]),
        ("docs/README.zh-CN.md", &["readme-zh"][..]),
        (
            "docs/comparison.md",
            &[
                "comparison-top",
                "comparison-measured",
                "comparison-waiting",
            ][..],
        ),
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for region in regions {
            for marker in ["begin", "end"] {
                let m = format!("<!-- bench:{marker} {region} -->");
                assert_eq!(text.matches(&m).count(), 1, "{file}: {m}");
            }
        }
    }
    for file in ["docs/bench-results.md", "docs/comparison.md"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let head: String = text.lines().take(8).collect::<Vec<_>>().join("\n");
        assert!(
            head.contains("ipc-bench/regenerate-docs.sh"),
            "{file}: {head}"
        );
    }
    // Every figure comes from a run with warm-up and a stated configuration.
    let results = std::fs::read_to_string(root.join("docs/bench-results.md")).unwrap();
    assert!(results.contains("warm-up") && results.contains("## Configuration"));
    let json = std::fs::read_to_string(root.join("docs/bench.json")).unwrap();
    assert!(json.contains("warm_up_messages") && json.contains("kernel_limits"));
}

#[test]
fn comparison_says_unnamed_semaphores_work_between_unrelated_processes() {
    let _shared = SWEEP.read().unwrap_or_else(|e| e.into_inner());
    // shm-demo puts an unnamed semaphore (sem_init, pshared = 1) in a
    // segment that unrelated processes open by name.
    let text = std::fs::read_to_string(repo_root().join("docs/comparison.md")).unwrap();
    assert!(!text.contains("related (unnamed)"), "the old claim is back");
    let row = text
        .lines()
        .find(|l| l.starts_with("| **who can talk** |"))
        .expect("who can talk row");
    assert!(row.contains("pshared"), "{row}");
}

// ---------------------------------------------------------------------------
// System V keys another user holds
// ---------------------------------------------------------------------------

/// A command for ipc-bench that, between fork and exec, creates queues
/// under all four System V keys of its own pid (the pid ipc-bench will
/// have) and gives them to uid 65534 (nobody): another user squatting the
/// keys, as anybody can, for they are predictable.
fn squatted(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(ipc_tests::bin(BENCH));
    cmd.args(args)
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: between fork and exec only system calls run (getpid, msgget,
    // msgctl on a msqid_ds on our stack): async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let pid = libc::getpid() as u32;
            for slot in 0..4u32 {
                let key = ((0x69 << 24) | ((pid & 0x3f_ffff) << 2) | slot) as libc::key_t;
                let id = libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600);
                if id >= 0 {
                    let mut ds: libc::msqid_ds = std::mem::zeroed();
                    libc::msgctl(id, libc::IPC_STAT, &mut ds);
                    ds.msg_perm.uid = 65534;
                    libc::msgctl(id, libc::IPC_SET, &mut ds);
                }
            }
            Ok(())
        });
    }
    cmd
}

/// IPC_PRIVATE queues (key 0 in /proc/sysvipc/msg) that process `pid`
/// sent to or received from last: every queue an ipc-bench run makes is
/// used by the run's own process (it receives, or sends the pings), and
/// other programs' private queues on a shared machine are not counted.
fn private_queues_used_by(pid: u32) -> Vec<i32> {
    std::fs::read_to_string("/proc/sysvipc/msg")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            // key msqid perms cbytes qnum lspid lrpid ...
            let f: Vec<&str> = l.split_whitespace().collect();
            let key: i64 = f.first()?.parse().ok()?;
            let id: i32 = f.get(1)?.parse().ok()?;
            let lspid: u32 = f.get(5)?.parse().ok()?;
            let lrpid: u32 = f.get(6)?.parse().ok()?;
            (key == 0 && (lspid == pid || lrpid == pid)).then_some(id)
        })
        .collect()
}

fn queue_exists(id: i32) -> bool {
    // SAFETY: msqid_ds is plain data; IPC_STAT fills it.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid out-pointer.
    unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) == 0 }
}

fn remove_queues(ids: &[i32]) {
    for &id in ids {
        // SAFETY: IPC_RMID reads no buffer.
        unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

#[test]
fn sysv_msg_is_measured_when_another_user_holds_our_keys() {
    // Alone: no other run sweeps the squatter's queues meanwhile.
    let _alone = SWEEP.write().unwrap_or_else(|e| e.into_inner());
    let proc = ipc_tests::Proc::start(squatted(&[
        "--mechanisms",
        "sysv-msg",
        "--sizes",
        "64,4096",
        "--count",
        "32",
        "--rounds",
        "20",
    ]));
    let pid = proc.pid().as_raw() as u32;
    let out = proc.finish(SHORT);
    let squatters = sysv_queues_of(pid);
    // The squatter's queues are not ours: still there, untouched.
    assert_eq!(squatters.len(), 4, "{squatters:?}\n{}", out.describe());
    remove_queues(&squatters);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stderr.contains("are taken; using IPC_PRIVATE queues"),
        "{}",
        out.describe()
    );
    // Measured at both sizes and round trips, with no C reference (its key
    // is held too).
    let cells: Vec<&str> = row(&out, "sysv-msg").split('|').collect();
    for cell in &cells[2..4] {
        assert!(
            cell.trim().starts_with(|c: char| c.is_ascii_digit()),
            "{cell}\n{}",
            out.describe()
        );
    }
    assert!(
        out.stderr.contains("sysv-msg: no C reference"),
        "{}",
        out.describe()
    );
    // Every IPC_PRIVATE queue it made is gone.
    let left = private_queues_used_by(pid);
    assert!(left.is_empty(), "left {left:?}\n{}", out.describe());
}

#[test]
fn a_killed_runs_private_queue_is_removed_by_the_next_run() {
    use std::time::{Duration, Instant};
    let _alone = SWEEP.write().unwrap_or_else(|e| e.into_inner());
    let proc = ipc_tests::Proc::start(squatted(&[
        "--quick",
        "--mechanisms",
        "sysv-msg",
        "--sizes",
        "64",
        "--count",
        "100000000",
    ]));
    let pid = proc.pid().as_raw() as u32;
    // Wait for its IPC_PRIVATE queue's record in its private directory.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (dir, id) = loop {
        let (_, _, dirs) = left_by(pid);
        let found = dirs.iter().find_map(|d| {
            std::fs::read_dir(d).ok()?.flatten().find_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_prefix("sysv-msq-")?.parse::<i32>().ok()?;
                Some((d.clone(), id))
            })
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no IPC_PRIVATE queue was recorded"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    nix::sys::signal::killpg(proc.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let out = proc.finish(SHORT);
    assert!(out.status.code().is_none(), "{}", out.describe());
    let squatters = sysv_queues_of(pid);
    assert!(queue_exists(id), "the killed run's queue {id} is left");
    // A record of a queue that run did not make (made after the record was
    // written: another program's, under an id that came free) stays.
    // SAFETY: msgget takes no pointers.
    let other = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
    assert!(other >= 0);
    let fake = dir.join(format!("sysv-msq-{other}"));
    std::fs::write(&fake, b"").unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&fake)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let next = short_run("pipe", "64", &[]);
    let other_left = queue_exists(other);
    remove_queues(&[other]);
    remove_queues(&squatters);
    assert_eq!(next.code(), 0, "{}", next.describe());
    assert!(
        !queue_exists(id),
        "queue {id} was not removed\n{}",
        next.describe()
    );
    assert!(
        next.stderr.contains(&format!(
            "removed System V queue id {id} (IPC_PRIVATE) left by ipc-bench pid {pid}"
        )),
        "{}",
        next.describe()
    );
    assert!(other_left, "a queue the run did not make was removed");
    assert!(
        next.stderr
            .contains(&format!("left alone System V queue id {other}")),
        "{}",
        next.describe()
    );
    // The squatter's queues (keys of the dead pid, another owner) stay.
    assert!(
        next.stderr.contains("owned by uid 65534"),
        "{}",
        next.describe()
    );
    assert!(!dir.exists(), "{}", next.describe());
}
