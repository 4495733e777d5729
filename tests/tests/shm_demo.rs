//! End-to-end tests of shm-demo: real segments in /dev/shm, real processes,
//! peers killed mid-transfer, hostile segment contents.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::cleanup::{SysvGuard, SysvKind, unique_name};
use ipc_tests::{LONG, Output, Proc, SHORT, assert_usage_error, bin, demo, key_file, run};
use nix::sys::signal::Signal;

const SHM_DEMO: &str = "shm-demo";

fn dev_shm(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm{name}"))
}

fn assert_ok(out: &Output) {
    out.assert_clean();
    assert_eq!(out.summary_field("mechanism"), "shm");
}

/// The name a story run created, from its shm_open line.
fn story_name(out: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.contains("shm_open(/"))
        .expect("shm_open line");
    let start = line.find("shm_open(").unwrap() + "shm_open(".len();
    line[start..].split(',').next().unwrap().to_string()
}

#[test]
fn default_run_tells_the_whole_story_and_leaves_nothing() {
    let out = run(SHM_DEMO, &[], SHORT);
    assert_ok(&out);
    assert_eq!(out.summary_field("messages"), "5");
    for expected in [
        "O_CREAT|O_EXCL|O_RDWR, 0600",
        "mmap(PROT_READ|PROT_WRITE, MAP_SHARED)",
        "sem_init(empty, pshared=1, 8)",
        "sem_init(full, pshared=1, 0)",
        "bytes, mode 0600",
        "header checked",
        "no intermediate buffer",
        "[receiver] message 4 (64 bytes): ok",
        "read the end marker",
        "no such file, gone",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    assert!(!dev_shm(&story_name(&out.stdout)).exists());
}

#[test]
fn hundred_thousand_small_messages() {
    let out = run(
        SHM_DEMO,
        &["--count", "100000", "--size", "64", "--quiet"],
        LONG,
    );
    assert_ok(&out);
    assert_eq!(out.summary_field("messages"), "100000");
    assert_eq!(out.summary_field("bytes"), "6400000");
}

#[test]
fn ten_thousand_messages_of_64_kib_split_over_slots() {
    let out = run(
        SHM_DEMO,
        &["--count", "10000", "--size", "65536", "--quiet"],
        LONG,
    );
    assert_ok(&out);
    assert_eq!(out.summary_field("bytes"), "655360000");
    assert!(
        out.stdout.contains("16 slot(s) per 65536-byte message"),
        "{}",
        out.describe()
    );
}

#[test]
fn every_size_from_one_byte_to_beyond_a_slot() {
    for size in [1, 2, 7, 8, 9, 63, 64, 65, 255, 256, 257, 1000] {
        let size = size.to_string();
        let args = [
            "--count",
            "7",
            "--size",
            &size,
            "--slot-size",
            "64",
            "--slots",
            "2",
            "--quiet",
        ];
        let out = run(SHM_DEMO, &args, SHORT);
        assert_ok(&out);
        assert_eq!(out.summary_field("messages"), "7", "size {size}");
    }
}

#[test]
fn two_processes_meet_by_name() {
    let name = format!("/{}", unique_name("shm-test"));
    let mut receiver = Proc::spawn(SHM_DEMO, &["receiver", "--name", &name, "--count", "50"]);
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    assert!(dev_shm(&name).exists());
    let sent = run(
        SHM_DEMO,
        &["sender", "--name", &name, "--count", "50", "--size", "5000"],
        SHORT,
    );
    assert_ok(&sent);
    let received = receiver.finish(SHORT);
    assert_ok(&received);
    assert_eq!(received.summary_field("messages"), "50");
    assert_eq!(received.summary_field("bytes"), "250000");
    assert!(!dev_shm(&name).exists());
}

/// A receiver and a sender in the middle of a long transfer.
fn mid_transfer() -> (String, Proc, Proc) {
    let name = format!("/{}", unique_name("shm-test"));
    let mut receiver = Proc::spawn(SHM_DEMO, &["receiver", "--name", &name, "--quiet"]);
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    let mut sender = Proc::spawn(
        SHM_DEMO,
        &[
            "sender",
            "--name",
            &name,
            "--count",
            "1000000000",
            "--quiet",
        ],
    );
    sender.wait_for_line(|l| l.contains("writing each message"), SHORT);
    sleep(Duration::from_millis(300));
    (name, receiver, sender)
}

#[test]
fn sender_killed_mid_transfer_is_noticed_within_5_s() {
    let (name, receiver, sender) = mid_transfer();
    sender.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    let out = receiver.finish(SHORT);
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "took {:?}",
        killed_at.elapsed()
    );
    let _ = sender.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("the sender (pid "),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains(") exited"), "{}", out.describe());
    assert!(!dev_shm(&name).exists(), "segment left behind");
}

#[test]
fn receiver_killed_mid_transfer_is_noticed_and_its_segment_removed() {
    let (name, receiver, sender) = mid_transfer();
    receiver.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    let out = sender.finish(SHORT);
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "took {:?}",
        killed_at.elapsed()
    );
    let _ = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("the receiver (pid "),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("died without cleaning up"),
        "{}",
        out.describe()
    );
    assert!(!dev_shm(&name).exists(), "segment left behind");
}

#[test]
fn ctrl_c_removes_the_segment() {
    // A receiver waiting for a sender that never comes.
    let name = format!("/{}", unique_name("shm-test"));
    let mut receiver = Proc::spawn(SHM_DEMO, &["receiver", "--name", &name]);
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    receiver.signal(Signal::SIGINT);
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 130, "{}", out.describe());
    assert!(!dev_shm(&name).exists());

    // The story, mid-transfer: its sender is stopped, its segment removed.
    for (signal, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let mut story = Proc::spawn(SHM_DEMO, &["--count", "1000000000", "--quiet"]);
        let line = story.wait_for_line(|l| l.contains("shm_open(/"), SHORT);
        let name = story_name(&line);
        story.wait_for_line(|l| l.contains("writing each message"), SHORT);
        sleep(Duration::from_millis(200));
        story.signal(signal);
        let out = story.finish(SHORT); // also: the sender is gone
        out.assert_no_panic();
        assert_eq!(out.code(), code, "{}", out.describe());
        assert!(!dev_shm(&name).exists(), "{name} left behind");
    }
}

#[test]
fn a_stale_segment_from_a_killed_run_is_replaced() {
    let name = format!("/{}", unique_name("shm-test"));
    let mut first = Proc::spawn(SHM_DEMO, &["receiver", "--name", &name]);
    first.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    first.signal(Signal::SIGKILL); // no cleanup at all
    let _ = first.finish(SHORT);
    assert!(dev_shm(&name).exists(), "SIGKILL leaves the segment");

    let mut second = Proc::spawn(SHM_DEMO, &["receiver", "--name", &name, "--count", "3"]);
    second.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    assert_ok(&run(
        SHM_DEMO,
        &["sender", "--name", &name, "--count", "3"],
        SHORT,
    ));
    let out = second.finish(SHORT);
    assert_ok(&out);
    assert!(
        out.stdout.contains("is gone: stale, removing it"),
        "{}",
        out.describe()
    );
    assert!(!dev_shm(&name).exists());
}

/// Removes a file the test put in /dev/shm, whatever happens.
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn plant(name: &str, bytes: &[u8]) -> Planted {
    let path = dev_shm(name);
    std::fs::write(&path, bytes).unwrap();
    Planted(path)
}

#[test]
fn corrupted_headers_are_refused_and_left_alone() {
    // Garbage, the right size for a default segment.
    let garbage = format!("/{}", unique_name("shm-test"));
    let _g = plant(&garbage, &vec![0xA5u8; 33408]);
    // Our magic and version, but sizes that do not match the object.
    let lying = format!("/{}", unique_name("shm-test"));
    let mut header = vec![0u8; 33408];
    header[..8].copy_from_slice(b"IPCSHM01");
    header[8..12].copy_from_slice(&2u32.to_le_bytes()); // version
    header[12..16].copy_from_slice(&1000u32.to_le_bytes()); // slots
    header[16..20].copy_from_slice(&1_048_576u32.to_le_bytes()); // slot size
    let _l = plant(&lying, &header);
    // Too short to hold a header at all.
    let tiny = format!("/{}", unique_name("shm-test"));
    let _t = plant(&tiny, b"IPCSHM01");

    for (name, why) in [
        (
            &garbage,
            "is not a shm-demo segment (magic 0xa5a5a5a5a5a5a5a5",
        ),
        (&lying, "header says 1000 slots of 1048576 bytes"),
        (&tiny, "is 8 bytes: not a shm-demo segment"),
    ] {
        let out = run(SHM_DEMO, &["sender", "--name", name], SHORT);
        assert_eq!(out.code(), 1, "{}", out.describe());
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", out.describe());
        assert!(lines[0].contains(why), "{}", lines[0]);
        assert!(dev_shm(name).exists(), "the sender removed {name}");
    }
    // The receiver will not remove something that is not ours either.
    let out = run(SHM_DEMO, &["receiver", "--name", &garbage], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("is not a shm-demo segment: refusing to remove it")
    );
    assert_eq!(
        std::fs::read(dev_shm(&garbage)).unwrap(),
        vec![0xA5u8; 33408]
    );
}

#[test]
fn sender_without_receiver_is_told_what_to_start() {
    let name = format!("/{}", unique_name("shm-test"));
    let out = run(SHM_DEMO, &["sender", "--name", &name], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains(&format!("start 'shm-demo receiver --name {name}' first"))
    );
}

#[test]
fn bad_command_lines_exit_2_with_one_line_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "--bogus"),
        (&["--count", "0"], "--count"),
        (&["--size", "0"], "--size"),
        (&["--size", "67108865"], "--size"),
        (&["--slots", "1025"], "--slots"),
        (&["--slots", "-1"], "--slots"),
        (&["--slot-size", "0"], "--slot-size"),
        (&["--slot-size", "99999999999999999999"], "--slot-size"),
        (&["--name", "/x"], "--name"),
        (&["receiver"], "--name"),
        (&["receiver", "--name", "noslash"], "--name"),
        (&["receiver", "--name", "/a/b"], "--name"),
        (&["receiver", "--name", "/x", "--size", "9"], "--size"),
        (&["sender", "--name", "/x", "--slots", "2"], "--slots"),
        (&["snd"], "snd"),
        (&["--timeout", "0"], "--timeout"),
        (&["--timeout", "86401"], "--timeout"),
        (&["sysv", "--timeout", "x"], "--timeout"),
    ];
    for (args, needle) in cases {
        assert_usage_error(SHM_DEMO, args, needle);
    }
}

// ---------------------------------------------------------------------------
// The System V variant
// ---------------------------------------------------------------------------

/// Lines of `ipcs -m -s` that mention `key` (as printed in a ftok line).
fn ipcs_lines_with(key: &str) -> Vec<String> {
    let out = std::process::Command::new("ipcs")
        .args(["-m", "-s"])
        .output()
        .expect("ipcs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(key))
        .map(str::to_string)
        .collect()
}

/// The System V objects a run announced ("shmid N", "semid N") that `ipcs`
/// still lists. By id, not by key: `ftok` keys of two tests' key files can
/// collide, and another test's objects under the same key are not ours.
fn announced_ids_left(out: &str) -> Vec<String> {
    let mut ids: Vec<(&str, String)> = Vec::new();
    for kind in ["shmid", "semid"] {
        for (at, _) in out.match_indices(&format!("{kind} ")) {
            let digits: String = out[at + kind.len() + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if !digits.is_empty() {
                ids.push((kind, digits));
            }
        }
    }
    let listed = std::process::Command::new("ipcs")
        .args(["-m", "-s"])
        .output()
        .expect("ipcs");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| {
            let id = l.split_whitespace().nth(1).unwrap_or("");
            l.starts_with("0x") && ids.iter().any(|(_, n)| n == id)
        })
        .map(str::to_string)
        .collect()
}

/// The key a System V run announced: "ftok(...) = 0x5300000d: ...".
fn announced_key(out: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.contains("ftok("))
        .expect("ftok line");
    line.split(" = ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn sysv_story_shows_nattch_undo_and_rmid_and_leaves_nothing() {
    let out = run(SHM_DEMO, &["sysv"], SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("mechanism"), "shm-sysv");
    assert_eq!(out.summary_field("errors"), "0");
    for expected in [
        "IPC_CREAT|IPC_EXCL|0600) = shmid",
        "shmat: attached; shmid",
        "shm_nattch = 1",
        "shm_nattch = 2",
        "semop(scratch, +1, SEM_UNDO): scratch = 1",
        "semctl(GETVAL, scratch) = 0",
        "key 0x00000000",
        "marked for removal (SHM_DEST)",
        "the last detach: shmid",
        "no such segment, gone",
        "for semid",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    assert!(
        announced_ids_left(&out.stdout).is_empty(),
        "left in ipcs: {:?}",
        announced_ids_left(&out.stdout)
    );
}

#[test]
fn sysv_two_processes_and_bulk_sizes() {
    let (_dir, key) = key_file("shm-demo-test");
    let mut receiver = Proc::spawn(
        SHM_DEMO,
        &[
            "sysv", "receiver", "--key", &key, "--count", "300", "--quiet",
        ],
    );
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    let args = [
        "sysv", "sender", "--key", &key, "--count", "300", "--size", "10000", "--quiet",
    ];
    let sent = run(SHM_DEMO, &args, LONG);
    assert_eq!(sent.code(), 0, "{}", sent.describe());
    let out = receiver.finish(LONG);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("bytes"), "3000000");
    assert_eq!(out.summary_field("errors"), "0");
    let announced = announced_key(&out.stdout);
    assert!(ipcs_lines_with(&announced).is_empty());
}

#[test]
fn sysv_peers_killed_mid_transfer_leave_nothing_in_ipcs() {
    for victim in ["sender", "receiver"] {
        let (_dir, key) = key_file("shm-demo-test");
        let mut receiver = Proc::spawn(SHM_DEMO, &["sysv", "receiver", "--key", &key, "--quiet"]);
        let ftok = receiver.wait_for_line(|l| l.contains("ftok("), SHORT);
        let announced = announced_key(&ftok);
        receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
        let mut sender = Proc::spawn(
            SHM_DEMO,
            &[
                "sysv",
                "sender",
                "--key",
                &key,
                "--count",
                "1000000000",
                "--quiet",
            ],
        );
        sender.wait_for_line(|l| l.contains("writing each message"), SHORT);
        sleep(Duration::from_millis(300));
        let (killed, survivor) = if victim == "sender" {
            (sender, receiver)
        } else {
            (receiver, sender)
        };
        killed.signal(Signal::SIGKILL);
        let at = Instant::now();
        let out = survivor.finish(SHORT);
        assert!(
            at.elapsed() < Duration::from_secs(5),
            "{victim}: took {:?}",
            at.elapsed()
        );
        let _ = killed.finish(SHORT);
        out.assert_no_panic();
        assert_eq!(out.code(), 1, "{victim} killed\n{}", out.describe());
        assert!(
            out.stderr.contains(&format!("the {victim} (pid ")),
            "{}",
            out.describe()
        );
        assert!(
            ipcs_lines_with(&announced).is_empty(),
            "{victim} killed: {:?}",
            ipcs_lines_with(&announced)
        );
    }
}

#[test]
fn sysv_stale_objects_are_replaced_and_options_checked() {
    let (_dir, key) = key_file("shm-demo-test");
    let mut first = Proc::spawn(SHM_DEMO, &["sysv", "receiver", "--key", &key]);
    first.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    first.signal(Signal::SIGKILL);
    let _ = first.finish(SHORT);
    let mut second = Proc::spawn(
        SHM_DEMO,
        &["sysv", "receiver", "--key", &key, "--count", "2"],
    );
    second.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    assert_eq!(
        run(
            SHM_DEMO,
            &["sysv", "sender", "--key", &key, "--count", "2"],
            SHORT
        )
        .code(),
        0
    );
    let out = second.finish(SHORT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout.contains("is gone: stale, removing it"),
        "{}",
        out.describe()
    );
    assert!(ipcs_lines_with(&announced_key(&out.stdout)).is_empty());

    let missing = format!("{key}.missing");
    let out = run(SHM_DEMO, &["sysv", "receiver", "--key", &missing], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("--key must name an existing file"),
        "{}",
        out.describe()
    );
    let out = run(SHM_DEMO, &["sysv", "sender", "--key", &key], SHORT);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("start 'shm-demo sysv receiver --key"),
        "{}",
        out.describe()
    );
    for (args, needle) in [
        (&["sysv", "receiver"][..], "--key"),
        (&["sysv", "sender", "--name", "/x"][..], "--name"),
        (&["sysv", "--key", "/tmp"][..], "--key"),
        (&["receiver", "--key", "/tmp"][..], "--key"),
    ] {
        assert_usage_error(SHM_DEMO, args, needle);
    }
}

#[test]
fn sysv_ctrl_c_removes_both_objects() {
    let (_dir, key) = key_file("shm-demo-test");
    let mut receiver = Proc::spawn(SHM_DEMO, &["sysv", "receiver", "--key", &key]);
    let announced = announced_key(&receiver.wait_for_line(|l| l.contains("ftok("), SHORT));
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    assert_eq!(
        ipcs_lines_with(&announced).len(),
        2,
        "a segment and a semaphore set"
    );
    receiver.signal(Signal::SIGINT);
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 130, "{}", out.describe());
    assert!(ipcs_lines_with(&announced).is_empty());
}

// ---------------------------------------------------------------------------
// Round two: attacks on the release binaries (docs/reliability.md)
// ---------------------------------------------------------------------------

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

const NOBODY: u32 = 65534;

/// Start shm-demo as `nobody`, output captured.
fn spawn_as_nobody(args: &[&str]) -> Proc {
    let mut cmd = demo(SHM_DEMO, args);
    cmd.uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Proc::start(cmd)
}

/// Write `bytes` at `offset` of /dev/shm/NAME, as a hostile peer would.
fn scribble(name: &str, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(dev_shm(name))
        .expect("open the segment");
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(bytes).unwrap();
}

/// Where the header keeps the receiver's pid (after magic, version, slot
/// count and slot size).
const RECEIVER_PID_AT: u64 = 20;

/// Ends a test with exit 1 and one stderr line containing every word:
/// never a signal (SIGBUS, SIGABRT), never a panic.
fn assert_clean_failure(out: &Output, words: &[&str]) {
    out.assert_no_panic();
    assert_eq!(out.code(), 1, "{}", out.describe());
    for word in words {
        assert!(
            out.stderr.contains(word),
            "missing {word:?}\n{}",
            out.describe()
        );
    }
}

#[test]
fn a_second_sender_or_receiver_is_refused_and_the_first_transfer_is_unharmed() {
    let name = format!("/{}", unique_name("shm-test"));
    let mut receiver = Proc::spawn(
        SHM_DEMO,
        &["receiver", "--name", &name, "--count", "200000", "--quiet"],
    );
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    let args = ["sender", "--name", &name, "--count", "200000", "--quiet"];
    let mut first = Proc::spawn(SHM_DEMO, &args);
    first.wait_for_line(|l| l.contains("writing each message"), SHORT);
    let second = run(SHM_DEMO, &args, SHORT);
    assert_clean_failure(
        &second,
        &["already has a sender (pid ", "one sender per segment"],
    );
    let again = run(SHM_DEMO, &["receiver", "--name", &name], SHORT);
    assert_clean_failure(&again, &["is in use by a receiver"]);
    assert_ok(&first.finish(LONG));
    let out = receiver.finish(LONG);
    assert_ok(&out);
    assert_eq!(
        out.summary_field("messages"),
        "200000",
        "{}",
        out.describe()
    );
    assert!(!dev_shm(&name).exists());

    // The same for System V.
    let (_dir, key) = key_file("shm-demo-test");
    let mut receiver = Proc::spawn(
        SHM_DEMO,
        &[
            "sysv", "receiver", "--key", &key, "--count", "100000", "--quiet",
        ],
    );
    let announced = announced_key(&receiver.wait_for_line(|l| l.contains("ftok("), SHORT));
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    let args = [
        "sysv", "sender", "--key", &key, "--count", "100000", "--quiet",
    ];
    let mut first = Proc::spawn(SHM_DEMO, &args);
    first.wait_for_line(|l| l.contains("writing each message"), SHORT);
    assert_clean_failure(&run(SHM_DEMO, &args, SHORT), &["already has a sender"]);
    assert_eq!(first.finish(LONG).code(), 0);
    let out = receiver.finish(LONG);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("errors"), "0", "{}", out.describe());
    assert!(ipcs_lines_with(&announced).is_empty());
}

#[test]
fn truncating_the_segment_mid_transfer_is_a_clear_error_not_a_bus_error() {
    let (name, receiver, sender) = mid_transfer();
    // The attack: shrink the object both processes have mapped.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dev_shm(&name))
        .unwrap()
        .set_len(0)
        .unwrap();
    for out in [receiver.finish(SHORT), sender.finish(SHORT)] {
        assert_clean_failure(&out, &["SIGBUS", "truncated", "F_SEAL_SHRINK"]);
    }
    assert!(!dev_shm(&name).exists(), "the 0-byte object was left");
}

/// Run shm-demo with `args` in a mount namespace whose /dev/shm is a
/// 1 MiB tmpfs (root only).
fn in_tiny_dev_shm(args: &[&str]) -> Output {
    in_tiny_dev_shm_sh(&format!(
        "exec {} {}",
        bin(SHM_DEMO).display(),
        args.join(" ")
    ))
}

/// Run a shell script in a mount namespace with a 1 MiB /dev/shm.
fn in_tiny_dev_shm_sh(script: &str) -> Output {
    let script = format!("mount -t tmpfs -o size=1m tmpfs /dev/shm && {script}");
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = Proc::start(cmd).finish(SHORT);
    out.assert_no_panic();
    out
}

#[test]
fn a_full_dev_shm_is_enospc_naming_its_size_not_sigbus() {
    if !is_root() {
        eprintln!("not root: cannot mount a tmpfs; skipped");
        return;
    }
    // 8 slots of 1 MiB do not fit in 1 MiB: the story and the receiver
    // say so at once (before, ftruncate succeeded and the first touch of
    // a missing page was a SIGBUS in whichever process touched it).
    for args in [
        &["--slot-size", "1048576", "--quiet"][..],
        &["receiver", "--name", "/tiny", "--slot-size", "1048576"][..],
    ] {
        let out = in_tiny_dev_shm(args);
        assert_clean_failure(
            &out,
            &[
                "posix_fallocate",
                "ENOSPC",
                "/dev/shm is 1.0 MiB",
                "--shm-size",
            ],
        );
    }
    // What fits, works.
    let out = in_tiny_dev_shm(&["--slots", "2", "--slot-size", "262144", "--size", "300000"]);
    assert_ok(&out);
    // Even when /dev/shm fills up after the receiver started: its pages
    // were reserved (du shows all 513 KiB at once), so the sender's first
    // touch of each slot finds one.
    let b = bin(SHM_DEMO).display().to_string();
    let out = in_tiny_dev_shm_sh(&format!(
        "{b} receiver --name /tiny --slots 2 --slot-size 262144 --count 20 --quiet & \
         until [ \"$(du -k /dev/shm/tiny | cut -f1)\" -ge 513 ] 2>/dev/null; do sleep 0.05; done; \
         dd if=/dev/zero of=/dev/shm/filler bs=64k 2>/dev/null; \
         {b} sender --name /tiny --size 300000 --count 20 --quiet; s=$?; \
         wait $!; r=$?; exit $((s + r))"
    ));
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(
        out.stdout.matches("errors=0").count(),
        2,
        "{}",
        out.describe()
    );
}

#[test]
fn another_users_segment_is_neither_removed_nor_written() {
    if !is_root() {
        eprintln!("not root: cannot run a process as another user; skipped");
        return;
    }
    // nobody's receiver, killed: a segment of nobody's, with our header and
    // a dead pid in it.
    let name = format!("/{}", unique_name("shm-test"));
    let _cleanup = Planted(dev_shm(&name));
    let mut theirs = spawn_as_nobody(&["receiver", "--name", &name]);
    theirs.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    theirs.signal(Signal::SIGKILL);
    let _ = theirs.finish(SHORT);
    let before = std::fs::read(dev_shm(&name)).expect("nobody's segment");

    let out = run(SHM_DEMO, &["receiver", "--name", &name], SHORT);
    assert_clean_failure(
        &out,
        &["belongs to uid 65534 (nobody)", "refusing to remove"],
    );
    let out = run(SHM_DEMO, &["sender", "--name", &name], SHORT);
    assert_clean_failure(
        &out,
        &["belongs to uid 65534 (nobody)", "refusing to write"],
    );
    assert_eq!(std::fs::read(dev_shm(&name)).unwrap(), before, "changed");

    // The same for System V: nobody's segment under our key, creator dead.
    let (dir, key) = key_file("shm-demo-test");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut theirs = spawn_as_nobody(&["sysv", "receiver", "--key", &key]);
    let announced = announced_key(&theirs.wait_for_line(|l| l.contains("ftok("), SHORT));
    theirs.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    theirs.signal(Signal::SIGKILL);
    let _ = theirs.finish(SHORT);
    let left = ipcs_lines_with(&announced);
    let _remove: Vec<SysvGuard> = ipcs_ids(&announced);
    assert_eq!(left.len(), 2, "{left:?}");
    let out = run(SHM_DEMO, &["sysv", "receiver", "--key", &key], SHORT);
    assert_clean_failure(
        &out,
        &["belongs to uid 65534 (nobody)", "refusing to remove"],
    );
    let out = run(SHM_DEMO, &["sysv", "sender", "--key", &key], SHORT);
    assert_clean_failure(
        &out,
        &["belongs to uid 65534 (nobody)", "refusing to write"],
    );
    assert_eq!(
        ipcs_lines_with(&announced),
        left,
        "nobody's objects changed"
    );
}

/// Guards that remove the segment and set listed under `key` in ipcs.
fn ipcs_ids(key: &str) -> Vec<SysvGuard> {
    let out = Command::new("ipcs").args(["-m", "-s"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut kind = SysvKind::SharedMemory;
    let mut guards = Vec::new();
    for line in text.lines() {
        if line.contains("Semaphore") {
            kind = SysvKind::SemaphoreSet;
        }
        if line.starts_with(key) {
            let id = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            guards.push(SysvGuard::new(kind, id));
        }
    }
    guards
}

#[test]
fn sysv_receiver_leaves_a_foreign_semaphore_set_alone() {
    let (_dir, key) = key_file("shm-demo-test");
    let k = common::sysv_sem::ftok(std::path::Path::new(&key), b'S').unwrap();
    // A foreign program's 1-semaphore set under our key; then a 3-semaphore
    // set that is ours by shape but tied to no segment of ours.
    for nsems in [1, 3] {
        // SAFETY: semget takes no pointers.
        let id = unsafe { libc::semget(k, nsems, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        assert!(id >= 0, "semget: {}", std::io::Error::last_os_error());
        let _remove = SysvGuard::new(SysvKind::SemaphoreSet, id);
        let out = run(SHM_DEMO, &["sysv", "receiver", "--key", &key], SHORT);
        assert_clean_failure(
            &out,
            &[
                "a semaphore set with this key already exists",
                "refusing to remove it",
            ],
        );
        if nsems == 1 {
            assert!(
                out.stderr.contains("has 1 semaphore(s)"),
                "{}",
                out.describe()
            );
        }
        // Still there, untouched.
        // SAFETY: GETVAL takes no fourth argument.
        let value = unsafe { libc::semctl(id, 0, libc::GETVAL) };
        assert_eq!(value, 0, "set {id} removed");
        // And the receiver removed its own new segment on the way out.
        assert_eq!(ipcs_lines_with(&format!("{k:#010x}")).len(), 1);
    }
}

/// A receiver and a sender mid-transfer, the sender with its stdout lines.
fn hostile_pair(timeout: &str) -> (String, Proc, Proc) {
    let name = format!("/{}", unique_name("shm-test"));
    let mut receiver = Proc::spawn(
        SHM_DEMO,
        &["receiver", "--name", &name, "--quiet", "--timeout", timeout],
    );
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    let mut sender = Proc::spawn(
        SHM_DEMO,
        &[
            "sender",
            "--name",
            &name,
            "--count",
            "1000000000",
            "--quiet",
            "--timeout",
            timeout,
        ],
    );
    sender.wait_for_line(|l| l.contains("writing each message"), SHORT);
    sleep(Duration::from_millis(300));
    (name, receiver, sender)
}

#[test]
fn a_hostile_header_never_aborts_hangs_or_leaks() {
    // Garbage over both sem_t: glibc would abort (ENOSYS from the futex
    // call built from the garbage); we refuse to pass it on.
    let (name, receiver, sender) = hostile_pair("60");
    scribble(&name, 32, &[0xA5; 72]);
    let outs = [receiver.finish(SHORT), sender.finish(SHORT)];
    for out in &outs {
        // The first to look refuses the sem_t; its peer may instead see
        // that one exit first. Either way: exit 1, a sentence, no abort.
        assert_clean_failure(out, &[]);
        assert!(!out.stderr.contains("futex facility"), "{}", out.describe());
    }
    assert!(
        outs.iter()
            .any(|o| o.stderr.contains("overwritten by another process")),
        "{}\n{}",
        outs[0].describe(),
        outs[1].describe()
    );
    assert!(!dev_shm(&name).exists());

    // A forged receiver pid before the sender comes: refused.
    let name = format!("/{}", unique_name("shm-test"));
    let mut receiver = Proc::spawn(SHM_DEMO, &["receiver", "--name", &name]);
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    scribble(&name, RECEIVER_PID_AT, &1i32.to_le_bytes());
    let out = run(SHM_DEMO, &["sender", "--name", &name], SHORT);
    assert_clean_failure(
        &out,
        &["pid 1, named as the receiver", "refusing to trust it"],
    );
    receiver.signal(Signal::SIGTERM);
    let _ = receiver.finish(SHORT);
    assert!(!dev_shm(&name).exists());

    // Forged to 1 mid-transfer, then the receiver killed: the sender
    // watches the real receiver (a pidfd), notices, and cleans up.
    let (name, receiver, sender) = hostile_pair("60");
    scribble(&name, RECEIVER_PID_AT, &1i32.to_le_bytes());
    receiver.signal(Signal::SIGKILL);
    let at = Instant::now();
    let out = sender.finish(SHORT);
    assert!(
        at.elapsed() < Duration::from_secs(5),
        "took {:?}",
        at.elapsed()
    );
    let _ = receiver.finish(SHORT);
    assert_clean_failure(&out, &["the receiver (pid ", ") exited"]);
    assert!(!dev_shm(&name).exists(), "segment left behind");
}

#[test]
fn a_stopped_peer_ends_the_wait_after_the_idle_timeout() {
    for victim in ["sender", "receiver"] {
        let (name, receiver, sender) = hostile_pair("2");
        let (stopped, waiting) = if victim == "sender" {
            (sender, receiver)
        } else {
            (receiver, sender)
        };
        stopped.signal(Signal::SIGSTOP);
        let at = Instant::now();
        let out = waiting.finish(SHORT);
        assert!(
            at.elapsed() < Duration::from_secs(20),
            "took {:?}",
            at.elapsed()
        );
        assert_clean_failure(&out, &["no progress for 2 s"]);
        stopped.signal(Signal::SIGCONT);
        stopped.signal(Signal::SIGTERM);
        let _ = stopped.finish(SHORT);
        assert!(!dev_shm(&name).exists(), "{victim} stopped: segment left");
    }
}

#[test]
fn an_abort_signal_still_removes_the_segment() {
    // The SIGABRT path of the fault handler (glibc's abort on a broken
    // sem_t ends there too): a sentence, our object removed, 128 + 6.
    let name = format!("/{}", unique_name("shm-test"));
    let mut receiver = Proc::spawn(SHM_DEMO, &["receiver", "--name", &name]);
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    receiver.signal(Signal::SIGABRT);
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 134, "{}", out.describe());
    assert!(
        out.stderr.contains("stopped by SIGABRT"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("(ours) on the way out"),
        "{}",
        out.describe()
    );
    assert!(!dev_shm(&name).exists());
}

/// The lines of the story step whose heading starts with `title`, up to
/// the next heading.
fn story_step<'a>(stdout: &'a str, title: &str) -> Vec<&'a str> {
    let heading = format!("== {title}");
    let lines: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with(&heading))
        .skip(1)
        .take_while(|l| !l.starts_with("== "))
        .filter(|l| !l.is_empty())
        .collect();
    assert!(!lines.is_empty(), "no step {title:?} in\n{stdout}");
    lines
}

/// The number just after `before` in `line` (e.g. "waited 151 ms").
fn number_after(line: &str, before: &str) -> u64 {
    let at = line
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} in {line}"))
        + before.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a number after {before:?} in {line}"))
}

/// The scratch objects a step names ("/shm-demo-PID-N"), all gone after the run.
fn assert_scratch_gone(lines: &[&str]) {
    for line in lines {
        for word in line.split(['(', ',', ' ', ')']) {
            if word.starts_with("/shm-demo-") {
                assert!(!dev_shm(word).exists(), "{word} left in /dev/shm");
            }
        }
    }
}

#[test]
fn the_story_tells_the_initialisation_race_and_shows_the_wait_and_its_bound() {
    let out = run(SHM_DEMO, &["--quiet"], SHORT);
    assert_ok(&out);
    let lines = story_step(&out.stdout, "2. The initialisation race");
    let all = lines.join("\n");
    for expected in [
        "O_CREAT|O_EXCL|O_RDWR, 0600) made a new object",
        "a second shm_open with O_CREAT|O_EXCL: EEXIST",
        "fstat says 0 bytes",
        "reads magic 0x0000000000000000",
        "stores MAGIC last with Release ordering",
        "found 1 slot of 64 bytes",
        "is not a shm-demo segment (magic 0x0000000000000000",
    ] {
        assert!(all.contains(expected), "missing {expected:?}\n{all}");
    }
    // The opener really waited for the late MAGIC (150 ms) ...
    let waited = lines.iter().find(|l| l.contains("it waited")).unwrap();
    assert!(number_after(waited, "it waited ") >= 150, "{waited}");
    // ... and gave up after its bound, not before and not never.
    let refused = lines.iter().find(|l| l.contains("it refuses")).unwrap();
    let gave_up = number_after(refused, "after ");
    assert!((200..5000).contains(&gave_up), "{refused}");
    assert_scratch_gone(&lines);
}

#[test]
fn the_story_shows_a_check_in_place_undone_by_the_peer_and_a_copy_that_holds() {
    let out = run(SHM_DEMO, &["--quiet"], SHORT);
    assert_ok(&out);
    let lines = story_step(&out.stdout, "5. Checking in place or copying out");
    let all = lines.join("\n");
    for expected in [
        "checked in place: message 7 (64 bytes",
        "passed its check; then the peer rewrote it",
        "0xee 0xee 0xee..., not the bytes we checked",
        "copied out first",
        "what we checked is what we use",
    ] {
        assert!(all.contains(expected), "missing {expected:?}\n{all}");
    }
    assert_scratch_gone(&lines);
}

#[test]
fn the_story_shows_shm_unlink_while_mapped_the_name_gone_the_memory_alive() {
    let out = run(SHM_DEMO, &["--quiet"], SHORT);
    assert_ok(&out);
    let lines = story_step(&out.stdout, "6. shm_unlink while mapped");
    let all = lines.join("\n");
    let first = lines[0];
    let name = &first[first.find("shm_unlink(").unwrap() + "shm_unlink(".len()..]
        .split(')')
        .next()
        .unwrap()
        .to_string();
    for expected in [
        format!("while mapped: /dev/shm{name}: no such file, gone"),
        "the mapping still reads MAGIC (0x31304d4853435049)".to_string(),
        format!("/proc/self/maps shows it as /dev/shm{name} (deleted)"),
        "Nobody can shm_open it any more (ENOENT)".to_string(),
        "munmap, the last mapping: gone from /proc/self/maps".to_string(),
    ] {
        assert!(all.contains(&expected), "missing {expected:?}\n{all}");
    }
    assert_scratch_gone(&lines);
}

// ---------------------------------------------------------------------------
// The futex variant (`shm-demo futex`)
// ---------------------------------------------------------------------------

fn assert_futex_ok(out: &Output) {
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("errors"), "0", "{}", out.describe());
    assert_eq!(out.summary_field("mechanism"), "shm-futex");
}

/// The counts line of a futex run: (receiver's FUTEX_WAITs, sender's
/// FUTEX_WAKEs, slots published).
fn futex_counts(stdout: &str) -> (u64, u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.contains("the receiver slept "))
        .unwrap_or_else(|| panic!("no counts line in\n{stdout}"));
    (
        number_after(line, "the receiver slept "),
        number_after(line, "the sender made "),
        number_after(line, " messages in "),
    )
}

#[test]
fn futex_story_tells_every_step_and_leaves_nothing() {
    let out = run(SHM_DEMO, &["futex"], SHORT);
    assert_futex_ok(&out);
    assert_eq!(out.summary_field("messages"), "5");
    let name = story_name(&out.stdout);
    for expected in [
        "192-byte header",
        "published (offset 64",
        "released (offset 128",
        "No sem_init and no sem_destroy",
        "sync kind futex",
        "[receiver] message 4 (64 bytes, in place): ok",
        "read the end marker",
        "no such file, gone",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.describe()
        );
    }
    // Step 2: glibc's sem_t, looked into (on 64-bit glibc: this machine).
    let sem = story_step(&out.stdout, "2.").join("\n");
    for expected in [
        "value 1, nwaiters 0",
        "value 0, nwaiters 1",
        "blocked in system call",
        "value 0, nwaiters 0",
        "FUTEX_WAKE only when nwaiters is not 0",
    ] {
        assert!(sem.contains(expected), "step 2 lacks {expected:?}\n{sem}");
    }
    // Step 4: the counts, and what always holds about them.
    let (_, wakes, slots) = futex_counts(&out.stdout);
    assert_eq!(slots, 5, "one slot per 64-byte message");
    assert!(wakes <= slots, "{}", out.describe());
    // Step 5: the skipped wake and the one wake.
    let skip = story_step(&out.stdout, "5.").join("\n");
    assert!(skip.contains("made 0 FUTEX_WAKE calls"), "{skip}");
    assert!(skip.contains("made 0 FUTEX_WAIT calls"), "{skip}");
    assert!(
        skip.contains("made 1 FUTEX_WAKE call, which woke 1"),
        "{skip}"
    );
    assert!(skip.contains("EAGAIN"), "{skip}");
    // Step 6: both rings measured.
    let race = story_step(&out.stdout, "6.").join("\n");
    assert!(race.contains("Semaphore ring: "), "{race}");
    assert!(race.contains("Futex ring: "), "{race}");
    // Step 7: the idle waiter's measured CPU, well under a tenth.
    let idle = story_step(&out.stdout, "7.");
    let line = idle
        .iter()
        .find(|l| l.contains("by spin-then-futex used "))
        .unwrap_or_else(|| panic!("{idle:#?}"));
    let ms: f64 = line
        .split("used ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a CPU figure in {line}"));
    assert!(ms < 100.0, "{line}");
    assert!(!dev_shm(&name).exists(), "{name} left behind");
}

#[test]
fn futex_story_moves_bulk_split_and_every_wait_strategy() {
    let out = run(
        SHM_DEMO,
        &["futex", "--count", "100000", "--size", "64", "--quiet"],
        LONG,
    );
    assert_futex_ok(&out);
    assert_eq!(out.summary_field("messages"), "100000");
    let (_, wakes, slots) = futex_counts(&out.stdout);
    assert_eq!(slots, 100_000);
    assert!(wakes <= slots);
    // Split over slots: copied together, checked.
    let out = run(
        SHM_DEMO,
        &[
            "futex",
            "--count",
            "300",
            "--size",
            "10000",
            "--slot-size",
            "4096",
            "--slots",
            "2",
        ],
        LONG,
    );
    assert_futex_ok(&out);
    assert!(
        out.stdout
            .contains("[receiver] message 299 (10000 bytes, copied together): ok"),
        "{}",
        out.describe()
    );
    // Spin and yield never sleep, so nobody ever wakes anybody.
    for wait in ["spin", "yield"] {
        let out = run(
            SHM_DEMO,
            &["futex", "--wait", wait, "--count", "20000", "--quiet"],
            LONG,
        );
        assert_futex_ok(&out);
        let (waits, wakes, _) = futex_counts(&out.stdout);
        assert_eq!((waits, wakes), (0, 0), "{wait}: {}", out.describe());
        assert!(out.stdout.contains(&format!("waiting by {wait}")));
    }
}

#[test]
fn futex_roles_meet_by_name_and_a_sender_first_is_told_what_to_start() {
    let name = format!("/{}", unique_name("shm-test"));
    // Sender first: nothing to open yet; it says what to start, leaves nothing.
    let early = run(SHM_DEMO, &["futex", "sender", "--name", &name], SHORT);
    assert_clean_failure(
        &early,
        &[&format!(
            "start 'shm-demo futex receiver --name {name}' first"
        )],
    );
    assert!(!dev_shm(&name).exists());
    // Then the receiver, then the sender: sizes in and beyond one slot.
    for size in ["64", "5000"] {
        let mut receiver = Proc::spawn(
            SHM_DEMO,
            &[
                "futex",
                "receiver",
                "--name",
                &name,
                "--count",
                "50",
                "--slot-size",
                "1024",
            ],
        );
        receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
        assert!(dev_shm(&name).exists());
        let sent = run(
            SHM_DEMO,
            &[
                "futex", "sender", "--name", &name, "--count", "50", "--size", size,
            ],
            SHORT,
        );
        assert_futex_ok(&sent);
        let received = receiver.finish(SHORT);
        assert_futex_ok(&received);
        assert_eq!(received.summary_field("messages"), "50");
        let bytes = 50 * size.parse::<u64>().unwrap();
        assert_eq!(received.summary_field("bytes"), bytes.to_string());
        assert!(!dev_shm(&name).exists());
    }
}

/// A futex receiver and sender in the middle of a long transfer.
fn futex_mid_transfer(timeout: &str) -> (String, Proc, Proc) {
    let name = format!("/{}", unique_name("shm-test"));
    let mut receiver = Proc::spawn(
        SHM_DEMO,
        &[
            "futex",
            "receiver",
            "--name",
            &name,
            "--quiet",
            "--timeout",
            timeout,
        ],
    );
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    let mut sender = Proc::spawn(
        SHM_DEMO,
        &[
            "futex",
            "sender",
            "--name",
            &name,
            "--count",
            "1000000000",
            "--quiet",
            "--timeout",
            timeout,
        ],
    );
    sender.wait_for_line(|l| l.contains("writing each message"), SHORT);
    sleep(Duration::from_millis(300));
    (name, receiver, sender)
}

#[test]
fn futex_peer_killed_mid_transfer_is_noticed_within_5_s() {
    for victim in ["sender", "receiver"] {
        let (name, receiver, sender) = futex_mid_transfer("60");
        let (killed, survivor) = if victim == "sender" {
            (sender, receiver)
        } else {
            (receiver, sender)
        };
        killed.signal(Signal::SIGKILL);
        let at = Instant::now();
        let out = survivor.finish(SHORT);
        assert!(
            at.elapsed() < Duration::from_secs(5),
            "{victim} killed: took {:?}",
            at.elapsed()
        );
        let _ = killed.finish(SHORT);
        assert_clean_failure(&out, &[&format!("the {victim} (pid "), ") exited"]);
        if victim == "receiver" {
            assert!(
                out.stdout.contains("died without cleaning up"),
                "{}",
                out.describe()
            );
        }
        assert!(!dev_shm(&name).exists(), "{victim} killed: segment left");
    }
}

#[test]
fn futex_stopped_peer_ends_the_wait_after_the_idle_timeout() {
    let (name, receiver, sender) = futex_mid_transfer("2");
    sender.signal(Signal::SIGSTOP);
    let at = Instant::now();
    let out = receiver.finish(SHORT);
    assert!(at.elapsed() < Duration::from_secs(20), "{:?}", at.elapsed());
    assert_clean_failure(&out, &["no progress for 2 s"]);
    sender.signal(Signal::SIGCONT);
    sender.signal(Signal::SIGTERM);
    let _ = sender.finish(SHORT);
    assert!(!dev_shm(&name).exists());
}

#[test]
fn futex_truncated_segment_is_a_clear_error_not_a_bus_error() {
    let (name, receiver, sender) = futex_mid_transfer("60");
    std::fs::OpenOptions::new()
        .write(true)
        .open(dev_shm(&name))
        .unwrap()
        .set_len(0)
        .unwrap();
    // Touching the lost page is a SIGBUS (reported by the guard); the
    // futex system call on it answers EFAULT (reported too): either way a
    // sentence that names the truncation, exit 1, nothing left.
    for out in [receiver.finish(SHORT), sender.finish(SHORT)] {
        assert_clean_failure(&out, &["truncated", "F_SEAL_SHRINK"]);
    }
    assert!(!dev_shm(&name).exists(), "the 0-byte object was left");
}

#[test]
fn futex_and_semaphore_peers_refuse_each_others_segments() {
    // A POSIX-semaphore sender on a futex segment: refused, nothing
    // claimed, and a futex sender then goes through.
    let name = format!("/{}", unique_name("shm-test"));
    let mut receiver = Proc::spawn(
        SHM_DEMO,
        &["futex", "receiver", "--name", &name, "--count", "3"],
    );
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    let wrong = run(
        SHM_DEMO,
        &["sender", "--name", &name, "--count", "3"],
        SHORT,
    );
    assert_clean_failure(
        &wrong,
        &["is a futex segment", "POSIX-semaphore (sem_t) variant"],
    );
    let right = run(
        SHM_DEMO,
        &["futex", "sender", "--name", &name, "--count", "3"],
        SHORT,
    );
    assert_futex_ok(&right);
    assert_futex_ok(&receiver.finish(SHORT));
    assert!(!dev_shm(&name).exists());

    // And the other way round.
    let mut receiver = Proc::spawn(SHM_DEMO, &["receiver", "--name", &name, "--count", "3"]);
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    let wrong = run(
        SHM_DEMO,
        &["futex", "sender", "--name", &name, "--count", "3"],
        SHORT,
    );
    assert_clean_failure(
        &wrong,
        &["is a POSIX-semaphore (sem_t) segment, not a futex one"],
    );
    assert_ok(&run(
        SHM_DEMO,
        &["sender", "--name", &name, "--count", "3"],
        SHORT,
    ));
    assert_ok(&receiver.finish(SHORT));
    assert!(!dev_shm(&name).exists());
}

#[test]
fn futex_ctrl_c_removes_the_segment() {
    let name = format!("/{}", unique_name("shm-test"));
    let mut receiver = Proc::spawn(SHM_DEMO, &["futex", "receiver", "--name", &name]);
    receiver.wait_for_line(|l| l.contains("waiting for a sender"), SHORT);
    receiver.signal(Signal::SIGINT);
    let out = receiver.finish(SHORT);
    out.assert_no_panic();
    assert_eq!(out.code(), 130, "{}", out.describe());
    assert!(!dev_shm(&name).exists());

    // Mid-transfer, both roles: the receiver asleep or spinning in its
    // wait, the sender too (a full ring); both end with 130, nothing left.
    // (A ring that keeps flowing never waits a whole tick: the stop
    // request must be seen anyway, at once.)
    let (name, receiver, sender) = futex_mid_transfer("60");
    receiver.signal(Signal::SIGINT);
    sender.signal(Signal::SIGINT);
    let at = Instant::now();
    for out in [receiver.finish(SHORT), sender.finish(SHORT)] {
        out.assert_no_panic();
        assert_eq!(out.code(), 130, "{}", out.describe());
    }
    assert!(at.elapsed() < Duration::from_secs(3), "{:?}", at.elapsed());
    assert!(!dev_shm(&name).exists());

    // The story, mid-transfer: its sender is stopped, its segment removed.
    for (signal, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let mut story = Proc::spawn(SHM_DEMO, &["futex", "--count", "1000000000", "--quiet"]);
        let line = story.wait_for_line(|l| l.contains("shm_open(/"), SHORT);
        let name = story_name(&line);
        story.wait_for_line(|l| l.contains("writing each message"), SHORT);
        sleep(Duration::from_millis(200));
        story.signal(signal);
        let at = Instant::now();
        let out = story.finish(SHORT);
        out.assert_no_panic();
        assert_eq!(out.code(), code, "{}", out.describe());
        assert!(at.elapsed() < Duration::from_secs(5), "{:?}", at.elapsed());
        assert!(!dev_shm(&name).exists(), "{name} left behind");
    }
}

#[test]
fn futex_bad_command_lines_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["futex", "--wait", "sleep"], "--wait"),
        (&["futex", "--wait"], "--wait"),
        (&["--wait", "spin"], "--wait"),
        (
            &["futex", "sender", "--name", "/x", "--wait", "spin"],
            "--wait",
        ),
        (
            &["futex", "sender", "--name", "/x", "--slots", "2"],
            "--slots",
        ),
        (&["futex", "receiver"], "--name"),
        (
            &["futex", "receiver", "--name", "/x", "--size", "9"],
            "--size",
        ),
        (&["futex", "--name", "/x"], "--name"),
        (&["futex", "--key", "/k"], "--key"),
        (&["futex", "--count", "0"], "--count"),
        (&["futex", "snd"], "snd"),
    ];
    for (args, needle) in cases {
        assert_usage_error(SHM_DEMO, args, needle);
    }
}
