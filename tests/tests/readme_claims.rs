//! What README.md promises of every demo, checked on the real binaries:
//! each story and each role that moves messages ends with one summary
//! line in the same format, and the shared options mean the same
//! everywhere. (Exit 130 on Ctrl-C, for every story: `ctrl_c.rs`.)

use ipc_tests::{SHORT, run};

/// Every story, as a newcomer runs it (`cargo run -p X [-- variant]`).
const STORIES: &[(&str, &[&str])] = &[
    ("pipe-demo", &[]),
    ("fifo-demo", &[]),
    ("signal-demo", &[]),
    ("msgq-demo", &[]),
    ("sem-demo", &[]),
    ("sem-demo", &["sysv"]),
    ("shm-demo", &[]),
    ("shm-demo", &["sysv"]),
    ("shm-demo", &["futex"]),
    ("socket-demo", &[]),
    ("eventfd-demo", &[]),
    ("memfd-demo", &[]),
];

/// The stories that move messages: they take --count, --size and --quiet.
/// (eventfd-demo takes them too, but its only size is 8: an eventfd's
/// counter; `eventfd_demo::story_takes_count_size_and_quiet`.)
const MOVERS: &[(&str, &[&str])] = &[
    ("pipe-demo", &[]),
    ("fifo-demo", &[]),
    ("msgq-demo", &[]),
    ("shm-demo", &[]),
    ("shm-demo", &["sysv"]),
    ("shm-demo", &["futex"]),
    ("socket-demo", &[]),
    ("memfd-demo", &[]),
];

/// "summary: mechanism=... messages=N bytes=N errors=N seconds=S MB/s=R"
fn assert_one_summary_last(what: &str, stdout: &str) {
    let summaries: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("summary:"))
        .collect();
    assert_eq!(
        summaries.len(),
        1,
        "{what}: exactly one summary line, got {summaries:#?}"
    );
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    assert_eq!(
        last,
        Some(summaries[0]),
        "{what}: the summary line comes last"
    );
    let keys: Vec<&str> = summaries[0]["summary: ".len()..]
        .split(' ')
        .map(|kv| kv.split_once('=').map_or("", |(k, _)| k))
        .collect();
    assert_eq!(
        keys,
        [
            "mechanism",
            "messages",
            "bytes",
            "errors",
            "seconds",
            "MB/s"
        ],
        "{what}: {}",
        summaries[0]
    );
}

#[test]
fn every_story_ends_with_one_summary_line() {
    for (demo, variant) in STORIES {
        let mut args = variant.to_vec();
        args.push("--quiet");
        let out = run(demo, &args, SHORT);
        assert_eq!(out.code(), 0, "{demo} {args:?}\n{}", out.describe());
        assert_one_summary_last(&format!("{demo} {args:?}"), &out.stdout);
        assert_eq!(out.summary_field("errors"), "0", "{demo} {args:?}");
    }
}

#[test]
fn stories_that_move_messages_take_count_size_and_quiet() {
    for (demo, variant) in MOVERS {
        let mut args = variant.to_vec();
        args.extend(["--count", "3", "--size", "100", "--quiet"]);
        let out = run(demo, &args, SHORT);
        assert_eq!(out.code(), 0, "{demo} {args:?}\n{}", out.describe());
        assert_one_summary_last(&format!("{demo} {args:?}"), &out.stdout);
        assert_eq!(out.summary_field("errors"), "0", "{demo} {args:?}");
    }
}

/// The roles that move messages end with one summary line too, with and
/// without --quiet: the receiver that makes the object and the sender.
#[test]
fn roles_that_move_messages_end_with_one_summary_line() {
    let dir = common::cleanup::PrivateDir::create("readme-claims").unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, b"").unwrap();
    let key = key.to_str().unwrap().to_string();
    let shm = format!("/{}", common::cleanup::unique_name("shm-demo-test"));
    let fifo = dir.path().join("fifo").to_str().unwrap().to_string();
    let sock = dir.path().join("memfd.sock").to_str().unwrap().to_string();
    type Pair<'a> = (&'a str, Vec<&'a str>, Vec<&'a str>);
    let pairs: Vec<Pair> = vec![
        (
            "shm-demo",
            vec!["receiver", "--name", &shm],
            vec!["sender", "--name", &shm],
        ),
        (
            "shm-demo",
            vec!["futex", "receiver", "--name", &shm],
            vec!["futex", "sender", "--name", &shm],
        ),
        (
            "shm-demo",
            vec!["sysv", "receiver", "--key", &key],
            vec!["sysv", "sender", "--key", &key],
        ),
        (
            "fifo-demo",
            vec!["receiver", "--path", &fifo, "--count", "10"],
            vec!["sender", "--path", &fifo],
        ),
        (
            "memfd-demo",
            vec!["receiver", "--path", &sock],
            vec!["sender", "--path", &sock],
        ),
    ];
    for quiet in [false, true] {
        for (demo, receiver, sender) in &pairs {
            let mut receiver = receiver.clone();
            let mut sender = sender.clone();
            sender.extend(["--count", "10"]);
            if quiet {
                receiver.push("--quiet");
                sender.push("--quiet");
            }
            let mut first = ipc_tests::Proc::spawn(demo, &receiver);
            // Ready: the object exists and the role waits for its peer.
            let ready = |l: &str| {
                ["waiting", "waits until a writer", "listen"]
                    .iter()
                    .any(|w| l.contains(w))
            };
            first.wait_for_line(ready, SHORT);
            let second = run(demo, &sender, SHORT);
            let first = first.finish(SHORT);
            for (role, out) in [(&receiver, &first), (&sender, &second)] {
                let what = format!("{demo} {role:?}");
                assert_eq!(out.code(), 0, "{what}\n{}", out.describe());
                assert_one_summary_last(&what, &out.stdout);
                assert_eq!(out.summary_field("errors"), "0", "{what}");
            }
        }
    }
}

/// Output that cannot be written is a runtime error: every story with its
/// stdout on /dev/full (ENOSPC on every write) exits 1 and says why on
/// stderr, instead of 0 for a run nobody could read.
#[test]
fn a_story_whose_output_cannot_be_written_exits_1() {
    for (demo, variant) in STORIES {
        let mut args = variant.to_vec();
        args.push("--quiet");
        let mut cmd = ipc_tests::demo(demo, &args);
        cmd.stdout(std::fs::File::create("/dev/full").unwrap())
            .stderr(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null());
        let out = ipc_tests::Proc::start(cmd).finish(SHORT);
        assert_eq!(out.code(), 1, "{demo} {args:?}\n{}", out.describe());
        assert!(
            out.stderr
                .contains("writing to stdout: No space left on device"),
            "{demo} {args:?}\n{}",
            out.describe()
        );
    }
}

/// Every relative link in the README, the Chinese README and docs/ names a
/// file that exists (demos' files move; the docs must follow).
#[test]
fn every_relative_link_in_the_docs_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = file.parent().unwrap().join(target);
            if !resolved.exists() {
                broken.push(format!(
                    "{}: {target}",
                    file.strip_prefix(root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to files that do not exist:\n{}",
        broken.join("\n")
    );
}
