//! Checks that change process-wide state, so they run in a process of their
//! own rather than among the threads of the test harness.
//!
//! A second stop signal removes every object a guard holds, then ends the
//! process by that signal, even while the process is stuck. This binary runs itself again as the victim: the victim makes one object
//! of each kind, says so on stdout, then sleeps in a call that the first
//! signal does not end. The parent sends SIGINT twice and checks that the
//! victim died of SIGINT and that every object is gone.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cleanup::{
    MqGuard, PathGuard, PrivateDir, ShmGuard, SysvGuard, SysvKind, stop_on_signals, unique_name,
};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

fn main() {
    if std::env::var_os("SECOND_SIGNAL_VICTIM").is_some() {
        victim();
    }
    for gap in [Duration::from_millis(5), Duration::from_millis(200)] {
        parent(gap);
    }
    private_dir_ignores_the_umask();
    any_error_after_a_stop_signal_exits_128_plus_n();
    println!("process_wide: 4 passed, 0 failed");
}

/// A run that fails after Ctrl-C (a child stopped too, a write cut short)
/// ends as stopped: 130, not 1.
fn any_error_after_a_stop_signal_exits_128_plus_n() {
    use std::process::ExitCode;
    use std::sync::atomic::Ordering;
    let fail = || Err(anyhow::anyhow!("the child exited with status 130"));
    assert_eq!(common::error::run("t", fail), ExitCode::FAILURE);
    common::error::STOP_SIGNAL.store(libc::SIGINT, Ordering::SeqCst);
    assert_eq!(common::error::run("t", fail), ExitCode::from(130));
    assert_eq!(common::error::run("t", || Ok(())), ExitCode::SUCCESS);
    common::error::STOP_SIGNAL.store(0, Ordering::SeqCst);
}

/// `mkdir(path, 0700)` is masked by the umask; the mode is then set exactly.
fn private_dir_ignores_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o777));
    let dir = PrivateDir::create("common-umask").unwrap();
    nix::sys::stat::umask(old);
    let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "private directory under umask 777");
}

fn victim() -> ! {
    stop_on_signals().unwrap();
    let dir = PrivateDir::create("common-second-signal").unwrap();
    // A file inside the directory that no guard knows about: the handler
    // empties the directory before removing it.
    std::fs::write(dir.path().join("key"), b"").unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let _fifo = PathGuard::new(&fifo);
    let shm = format!("/{}", unique_name("common-second-signal"));
    drop(
        nix::sys::mman::shm_open(
            shm.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .unwrap(),
    );
    let _shm = ShmGuard::new(&shm);
    let mq = format!("/{}", unique_name("common-second-signal"));
    let mq_ok = nix::mqueue::mq_open(
        mq.as_str(),
        nix::mqueue::MQ_OFlag::O_CREAT
            | nix::mqueue::MQ_OFlag::O_EXCL
            | nix::mqueue::MQ_OFlag::O_RDONLY,
        Mode::S_IRUSR | Mode::S_IWUSR,
        None,
    )
    .is_ok();
    let _mq = mq_ok.then(|| MqGuard::new(&mq));
    // SAFETY: msgget takes no pointers; IPC_PRIVATE always makes a new queue.
    let id = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
    assert!(id >= 0);
    let _queue = SysvGuard::new(SysvKind::MessageQueue, id);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} {} {} {}",
        dir.path().display(),
        shm,
        if mq_ok { mq.as_str() } else { "-" },
        id
    )
    .unwrap();
    out.flush().unwrap();
    drop(out);
    // Stuck: the first signal interrupts each sleep, but this loop ignores
    // it, as a demo blocked in a call that is never interrupted would.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn parent(gap: Duration) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("SECOND_SIGNAL_VICTIM", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [dir, shm, mq, id] = fields[..] else {
        panic!("victim said {line:?}")
    };
    assert!(Path::new(dir).exists() && Path::new(&format!("/dev/shm{shm}")).exists());
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    std::thread::sleep(gap);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the victim did not end after a second SIGINT");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(!Path::new(dir).exists(), "{dir} left behind");
    assert!(
        !Path::new(&format!("/dev/shm{shm}")).exists(),
        "{shm} left behind"
    );
    if mq != "-" {
        let gone = nix::mqueue::mq_unlink(mq) == Err(nix::errno::Errno::ENOENT);
        assert!(gone, "{mq} left behind");
    }
    let id: i32 = id.parse().unwrap();
    // SAFETY: IPC_RMID reads no buffer; the id is gone if the victim removed it.
    let rc = unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    assert_eq!(rc, -1, "System V queue {id} left behind");
}
