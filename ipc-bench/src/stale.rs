//! Names a killed run can be found by, and the clean-up of what one left.
//!
//! A process killed by SIGKILL runs no destructor: its System V queue, its
//! POSIX queue and its private directory (with a FIFO inside) stay. So
//! every named object ipc-bench makes carries the pid of the run that made
//! it, and each run first removes those of runs that are gone:
//!
//! - System V message queues: key `0x69PPPPPS`, 0x69 ('i') in the top
//!   byte, then the pid times 4 plus a slot 0..3 (a pid is below 2^22,
//!   `PID_MAX_LIMIT`). `IPC_PRIVATE` would make a queue nobody can ever
//!   find again by key.
//! - POSIX message queues: `/ipc-bench-PID-N` (`/dev/mqueue/ipc-bench-PID-N`).
//! - The private directory: `<runtime dir>/ipc-bench-PID-N`.
//! - When another user holds our keys (anybody may create a queue under
//!   any key, and ours are predictable), an `IPC_PRIVATE` queue, its id
//!   recorded as `sysv-msq-ID` in the private directory: the run that
//!   finds the directory of a dead run removes the queues it recorded, if
//!   they are still the ones it made (key IPC_PRIVATE, created and owned
//!   by us, created just before the record was written).
//!
//! An object counts as stale only if it is owned (and, for System V,
//! created) by our effective uid and the pid in its name is not running;
//! anything else is left alone and reported.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use common::peer::alive;
use nix::errno::Errno;
use nix::unistd::geteuid;

/// The top byte of every System V key ipc-bench uses.
const KEY_TAG: u32 = 0x69;
/// Slots 0..3 per pid: a run holds at most two queues at once (a round
/// trip); slot 3 is the C reference's.
pub const C_REFERENCE_SLOT: u32 = 3;

/// The System V key for `slot` of process `pid`.
pub fn sysv_key(pid: u32, slot: u32) -> libc::key_t {
    ((KEY_TAG << 24) | ((pid & 0x3f_ffff) << 2) | (slot & 3)) as libc::key_t
}

/// The pid a key of ours was made by, or None if it is not one of ours.
fn key_pid(key: libc::key_t) -> Option<u32> {
    let key = key as u32;
    (key >> 24 == KEY_TAG).then_some((key >> 2) & 0x3f_ffff)
}

/// A new System V message queue (mode 0600) under one of this process's
/// keys; the caller removes it. `IPC_EXCL`: never an existing queue. If
/// every key is taken (by our other channel, or by someone squatting
/// them), an `IPC_PRIVATE` queue recorded in `dir`: then the second value
/// is the record, which the caller removes after the queue.
pub fn sysv_queue(dir: &Path) -> Result<(libc::c_int, Option<PathBuf>)> {
    for slot in 0..C_REFERENCE_SLOT {
        let key = sysv_key(std::process::id(), slot);
        // SAFETY: msgget takes no pointers.
        let id = unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        match Errno::result(id) {
            Ok(id) => return Ok((id, None)),
            // In use by our other channel, or by a queue not ours.
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e).with_context(|| format!("msgget(key {key:#010x})")),
        }
    }
    use std::os::unix::fs::OpenOptionsExt;
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        crate::progress(&format!(
            "the System V keys of pid {} (0x69PPPPPS) are taken; using IPC_PRIVATE queues, \
             each recorded in {} so that the next run removes it if this one is killed",
            std::process::id(),
            dir.display()
        ))
    });
    // IPC_PRIVATE: always a new queue, with no key anybody can take first.
    // SAFETY: msgget takes no pointers.
    let id = Errno::result(unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) })
        .context("msgget(IPC_PRIVATE)")?;
    let record = dir.join(format!("{PRIVATE_RECORD}{id}"));
    // Written after the queue exists (the clean-up compares the times);
    // if it cannot be written, nobody could find the queue: remove it.
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&record)
    {
        let _ = common::cleanup::sysv_remove(common::cleanup::SysvKind::MessageQueue, id);
        return Err(e).with_context(|| format!("create {}", record.display()));
    }
    Ok((id, Some(record)))
}

/// Is `key` of ours free? (The C reference makes its queue under it.)
pub fn key_free(key: libc::key_t) -> bool {
    // SAFETY: msgget takes no pointers.
    let id = unsafe { libc::msgget(key, 0) };
    Errno::result(id) == Err(Errno::ENOENT)
}

/// A file in the private directory that names an IPC_PRIVATE queue.
const PRIVATE_RECORD: &str = "sysv-msq-";
/// A file in the private directory that names a POSIX queue of ours.
const MQ_RECORD: &str = "posix-mq-";

/// Note POSIX queue `name` ("/ipc-bench-PID-N") in `dir`; the guard
/// removes the note (drop it after the queue's own guard).
pub fn record_posix_queue(dir: &Path, name: &str) -> Result<common::cleanup::PathGuard> {
    let record = dir.join(format!("{MQ_RECORD}{}", name.trim_start_matches('/')));
    std::fs::write(&record, b"").with_context(|| format!("create {}", record.display()))?;
    Ok(common::cleanup::PathGuard::new(record))
}

/// The POSIX queues a dead run recorded in `dir`, for systems where
/// /dev/mqueue is not mounted (posix_queues cannot list them there):
/// removed if the name is a queue of that run's and it is ours.
fn recorded_posix_queues(dir: &Path, pid: u32, said: &mut Vec<String>) {
    use nix::mqueue::{MQ_OFlag, mq_open, mq_unlink};
    use nix::sys::stat::Mode;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let euid = geteuid().as_raw();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|n| n.strip_prefix(MQ_RECORD)) else {
            continue;
        };
        if name_pid(name) != Some(pid) {
            continue; // not the name of a queue of that run
        }
        let mq = format!("/{name}");
        // Open it only to ask who owns it (an mqd_t is a descriptor).
        let Ok(mqd) = mq_open(mq.as_str(), MQ_OFlag::O_RDONLY, Mode::empty(), None) else {
            continue; // removed already (or not ours to open)
        };
        let owner = nix::sys::stat::fstat(&mqd).map(|st| st.st_uid);
        // An MqdT has no Drop: mq_close, or the descriptor stays open.
        let _ = nix::mqueue::mq_close(mqd);
        match owner {
            Ok(uid) if uid == euid => match mq_unlink(mq.as_str()) {
                Ok(()) => said.push(format!(
                    "removed POSIX queue {mq} left by ipc-bench pid {pid}, which is gone"
                )),
                Err(e) => said.push(format!("could not remove POSIX queue {mq}: mq_unlink: {e}")),
            },
            Ok(uid) => said.push(format!(
                "left alone POSIX queue {mq} (named like ipc-bench pid {pid}'s): owned by uid {uid}, not by us (uid {euid})"
            )),
            Err(_) => {}
        }
    }
}

/// The pid in `ipc-bench-PID-N`, exactly that shape, or None.
fn name_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("ipc-bench-")?;
    let (pid, n) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Is the run `pid` gone? Our own pid counts as gone: nothing of ours
/// exists yet when this runs, so an object with our pid was left by an
/// earlier process that had the same pid.
fn gone(pid: u32) -> bool {
    pid == std::process::id() || !alive(pid as i32)
}

/// Remove what dead runs left; returns one line per object removed or left
/// alone, for the progress output.
pub fn clean_up(runtime_dir: &Path) -> Vec<String> {
    let mut said = Vec::new();
    sysv_queues(&mut said);
    posix_queues(&mut said);
    directories(runtime_dir, &mut said);
    said
}

fn sysv_queues(said: &mut Vec<String>) {
    // /proc/sysvipc/msg lists every queue: key msqid perms ... (decimal).
    let Ok(table) = std::fs::read_to_string("/proc/sysvipc/msg") else {
        return;
    };
    let euid = geteuid().as_raw();
    for line in table.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(Ok(key)), Some(Ok(id))) = (
            fields.next().map(str::parse::<libc::key_t>),
            fields.next().map(str::parse::<libc::c_int>),
        ) else {
            continue;
        };
        let Some(pid) = key_pid(key) else { continue };
        if !gone(pid) {
            continue;
        }
        // SAFETY: msqid_ds is plain data; IPC_STAT fills it.
        let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid out-pointer for IPC_STAT.
        if unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } != 0 {
            continue; // removed meanwhile, or not ours to read
        }
        let (uid, cuid) = (ds.msg_perm.uid, ds.msg_perm.cuid);
        if uid != euid || cuid != euid {
            said.push(format!(
                "left alone System V queue id {id} (key {key:#010x}, the key of ipc-bench pid {pid}): \
                 owned by uid {uid}, created by uid {cuid}, not by us (uid {euid})"
            ));
            continue;
        }
        match common::cleanup::sysv_remove(common::cleanup::SysvKind::MessageQueue, id) {
            Ok(()) => said.push(format!(
                "removed System V queue id {id} (key {key:#010x}) left by ipc-bench pid {pid}, which is gone"
            )),
            Err(e) => said.push(format!(
                "could not remove System V queue id {id} (key {key:#010x}): msgctl(IPC_RMID): {e}"
            )),
        }
    }
}

fn posix_queues(said: &mut Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    // The mqueue filesystem shows every queue as a file; if it is not
    // mounted there is no way to list queues.
    let Ok(entries) = std::fs::read_dir("/dev/mqueue") else {
        return;
    };
    let euid = geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name_pid(name) else { continue };
        if !gone(pid) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.uid() != euid {
            said.push(format!(
                "left alone POSIX queue /{name} (named like ipc-bench pid {pid}'s): owned by uid {}, not by us (uid {euid})",
                meta.uid()
            ));
            continue;
        }
        let mq = format!("/{name}");
        match nix::mqueue::mq_unlink(mq.as_str()) {
            Ok(()) => said.push(format!(
                "removed POSIX queue {mq} left by ipc-bench pid {pid}, which is gone"
            )),
            Err(e) => said.push(format!("could not remove POSIX queue {mq}: mq_unlink: {e}")),
        }
    }
}

fn directories(runtime_dir: &Path, said: &mut Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(runtime_dir) else {
        return;
    };
    let euid = geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name_pid(name) else { continue };
        if !gone(pid) {
            continue;
        }
        // symlink_metadata: a symlink planted under our name is not a
        // directory of ours, and is not followed.
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != euid {
            said.push(format!(
                "left alone {} (named like ipc-bench pid {pid}'s directory): {}",
                path.display(),
                if meta.is_dir() {
                    format!("owned by uid {}, not by us (uid {euid})", meta.uid())
                } else {
                    "not a directory".to_string()
                }
            ));
            continue;
        }
        private_queues(&path, pid, said);
        recorded_posix_queues(&path, pid, said);
        // remove_dir_all does not follow symlinks inside the directory.
        match std::fs::remove_dir_all(&path) {
            Ok(()) => said.push(format!(
                "removed directory {} left by ipc-bench pid {pid}, which is gone",
                path.display()
            )),
            Err(e) => said.push(format!("could not remove {}: {e}", path.display())),
        }
    }
}

/// The IPC_PRIVATE queues a dead run recorded in its directory `dir`:
/// removed if each is still the queue it made.
fn private_queues(dir: &Path, pid: u32, said: &mut Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let table = std::fs::read_to_string("/proc/sysvipc/msg").unwrap_or_default();
    let euid = geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PRIVATE_RECORD))
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        // symlink_metadata: the record itself, a regular file of ours.
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !meta.is_file() || meta.uid() != euid {
            continue;
        }
        // /proc/sysvipc/msg: key msqid perms ... (decimal); the key tells
        // an IPC_PRIVATE queue (0) from one made under a key.
        let key = table.lines().skip(1).find_map(|line| {
            let mut f = line.split_whitespace();
            let key = f.next()?.parse::<libc::key_t>().ok()?;
            (f.next()?.parse::<libc::c_int>().ok()? == id).then_some(key)
        });
        let Some(key) = key else {
            continue; // gone already (removed before the run was killed)
        };
        // SAFETY: msqid_ds is plain data; IPC_STAT fills it.
        let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid out-pointer for IPC_STAT.
        if unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } != 0 {
            continue;
        }
        let (uid, cuid, made) = (ds.msg_perm.uid, ds.msg_perm.cuid, ds.msg_ctime as i64);
        // The queue was made just before its record (same second or the
        // one before); a later queue that got the same id is not it.
        let recorded = meta.mtime();
        let ours = key == libc::IPC_PRIVATE
            && uid == euid
            && cuid == euid
            && (recorded - 2..=recorded).contains(&made);
        if !ours {
            said.push(format!(
                "left alone System V queue id {id} (recorded by ipc-bench pid {pid}): key {key:#x}, \
                 owned by uid {uid}, created by uid {cuid} at {made}, the record written at \
                 {recorded}: not the queue that run made"
            ));
            continue;
        }
        match common::cleanup::sysv_remove(common::cleanup::SysvKind::MessageQueue, id) {
            Ok(()) => said.push(format!(
                "removed System V queue id {id} (IPC_PRIVATE) left by ipc-bench pid {pid}, which is gone"
            )),
            Err(e) => said.push(format!(
                "could not remove System V queue id {id}: msgctl(IPC_RMID): {e}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_pid() {
        for pid in [1, 12345, 4_194_303] {
            for slot in 0..=C_REFERENCE_SLOT {
                let key = sysv_key(pid, slot);
                assert!(key > 0, "{key:#x}");
                assert_eq!(key_pid(key), Some(pid));
            }
        }
        assert_eq!(key_pid(0x1234_5678), None);
        assert_eq!(key_pid(libc::IPC_PRIVATE), None);
    }

    #[test]
    fn names_carry_the_pid() {
        assert_eq!(name_pid("ipc-bench-123-0"), Some(123));
        assert_eq!(name_pid("ipc-bench-test-123-0"), None);
        assert_eq!(name_pid("ipc-bench-123"), None);
        assert_eq!(name_pid("ipc-bench-123-x"), None);
        assert_eq!(name_pid("ipc-bench--1"), None);
    }
}
