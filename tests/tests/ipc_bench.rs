//! ipc-bench: the quick run produces every row with no check failure, its
//! JSON parses and holds every mechanism, bad options are refused.

use common::cleanup::PrivateDir;
use ipc_tests::{LONG, SHORT, assert_usage_error, run};

const BENCH: &str = "ipc-bench";
const MECHANISMS: [&str; 10] = [
    "pipe",
    "fifo",
    "unix-stream",
    "unix-dgram",
    "sysv-msg",
    "posix-mq",
    "shm-sem",
    "shm-spsc",
    "tcp",
    "signal",
];

#[test]
fn quick_run_has_every_row_and_valid_json_and_svg() {
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
        assert!(measured >= 1, "{m}");
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
}

#[test]
fn a_subset_of_mechanisms_and_sizes() {
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
