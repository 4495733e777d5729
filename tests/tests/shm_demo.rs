//! End-to-end tests of shm-demo: real segments in /dev/shm, real processes,
//! peers killed mid-transfer, hostile segment contents.

use std::path::PathBuf;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::cleanup::unique_name;
use ipc_tests::{LONG, Output, Proc, SHORT, assert_usage_error, key_file, run};
use nix::sys::signal::Signal;

const SHM_DEMO: &str = "shm-demo";

fn dev_shm(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm{name}"))
}

fn assert_ok(out: &Output) {
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.summary_field("errors"), "0", "{}", out.describe());
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
    header[8..12].copy_from_slice(&1u32.to_le_bytes()); // version
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
    let key = announced_key(&out.stdout);
    assert!(
        ipcs_lines_with(&key).is_empty(),
        "left in ipcs: {:?}",
        ipcs_lines_with(&key)
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
