//! Another user takes the System V keys a story will get next: `ftok` keys
//! are the key file's inode (low 16 bits), device (low 8 bits) and a
//! project byte, and on a tmpfs a new file's inode is the last one plus one.
//! The story must not use those objects, and must still run: it takes
//! another key file.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use ipc_tests::{Output, Proc, SHORT};

/// A 0700 directory on a tmpfs (/dev/shm), where new inodes count up one by
/// one, as on a tmpfs /tmp: the squatter's best case. Removed on drop.
struct TmpfsDir(PathBuf);

impl TmpfsDir {
    fn new() -> TmpfsDir {
        let path = Path::new("/dev/shm").join(common::cleanup::unique_name("squat-test"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap();
        TmpfsDir(path)
    }
}

impl Drop for TmpfsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test at a time: both make files on /dev/shm, and a story skipping
/// taken keys makes hundreds, which would move the other's next inodes.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run the calling thread (and the processes it starts) on CPU 0 only. Some
/// kernels hand out tmpfs inode numbers in batches per CPU: the squatter's guess
/// of the next ones holds for files made on the same CPU.
fn on_cpu0() {
    // SAFETY: an all-zero cpu_set_t is an empty set; CPU_SET and
    // sched_setaffinity read and write only the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Create System V objects at the `ftok` keys of the next `ahead` files made
/// on `dir`'s filesystem, for `project`; returns their ids, to remove.
fn squat(
    dir: &Path,
    project: u8,
    ahead: u64,
    make: impl Fn(libc::key_t) -> libc::c_int,
) -> Vec<libc::c_int> {
    on_cpu0();
    let probe = dir.join("probe");
    std::fs::write(&probe, b"").unwrap();
    let meta = std::fs::metadata(&probe).unwrap();
    std::fs::remove_file(&probe).unwrap();
    let mut ids = Vec::new();
    for k in 1..=ahead {
        let ino = ((meta.ino() + k) & 0xffff) as u32;
        let dev = (meta.dev() & 0xff) as u32;
        let id = make(((u32::from(project) << 24) | (dev << 16) | ino) as libc::key_t);
        if id >= 0 {
            ids.push(id);
        }
    }
    assert!(
        ids.len() as u64 > ahead / 2,
        "could not squat the next keys"
    );
    ids
}

/// Run a story with `dir` as its temp dir (where its key files go), on
/// CPU 0 like the squatter (a child inherits this thread's affinity).
fn story(demo: &str, args: &[&str], dir: &Path) -> Output {
    on_cpu0();
    let mut cmd = ipc_tests::demo(demo, args);
    cmd.env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Proc::start(cmd).finish(SHORT)
}

#[test]
fn the_msgq_story_takes_another_key_when_its_next_keys_are_taken() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TmpfsDir::new();
    // SAFETY: msgget takes no pointers.
    let ids = squat(&dir.0, b'Q', 400, |key| unsafe {
        libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600)
    });
    let out = story("msgq-demo", &["sysv", "--quiet"], &dir.0);
    for id in &ids {
        // SAFETY: IPC_RMID reads no buffer.
        unsafe { libc::msgctl(*id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout
            .contains("were taken by queues that are not ours"),
        "{}",
        out.describe()
    );
    assert_eq!(out.summary_field("errors"), "0");
}

#[test]
fn the_shm_sysv_story_takes_another_key_when_its_next_keys_are_taken() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TmpfsDir::new();
    // SAFETY: semget takes no pointers.
    let ids = squat(&dir.0, b'S', 400, |key| unsafe {
        libc::semget(key, 1, libc::IPC_CREAT | libc::IPC_EXCL | 0o600)
    });
    let out = story("shm-demo", &["sysv", "--quiet"], &dir.0);
    for id in &ids {
        // SAFETY: IPC_RMID takes no fourth argument.
        unsafe { libc::semctl(*id, 0, libc::IPC_RMID) };
    }
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout
            .contains("were taken by objects that are not ours"),
        "{}",
        out.describe()
    );
    assert_eq!(out.summary_field("errors"), "0");
}
