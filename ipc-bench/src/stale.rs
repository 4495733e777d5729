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
//!
//! An object counts as stale only if it is owned (and, for System V,
//! created) by our effective uid and the pid in its name is not running;
//! anything else is left alone and reported.

use std::path::Path;

use anyhow::{Context, Result, bail};
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
/// keys; the caller removes it. `IPC_EXCL`: never an existing queue.
pub fn sysv_queue() -> Result<(libc::c_int, libc::key_t)> {
    for slot in 0..C_REFERENCE_SLOT {
        let key = sysv_key(std::process::id(), slot);
        // SAFETY: msgget takes no pointers.
        let id = unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        match Errno::result(id) {
            Ok(id) => return Ok((id, key)),
            Err(Errno::EEXIST) => continue, // in use by our other channel
            Err(e) => return Err(e).with_context(|| format!("msgget(key {key:#010x})")),
        }
    }
    bail!(
        "msgget: all {C_REFERENCE_SLOT} System V keys of pid {} are taken (see ipcs -q)",
        std::process::id()
    )
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
