//! The mechanism, part 3 of 3: System V shared memory. `shmget` + `shmat`
//! for the memory, a System V semaphore set (`semget`, `semctl`, `semop`)
//! for the two counters, `shmdt` and `shmctl`/`semctl(IPC_RMID)` to remove
//! them. The objects have no file name: they are found by a key (`ftok` of
//! an agreed path) and listed by `ipcs -m -s`. The ring that runs in the
//! segment is `ipc_ring.rs` (part 1), the same as for POSIX.
//!
//! Why no SEM_UNDO on the ring's semaphores: SEM_UNDO makes the kernel
//! reverse a process's semaphore changes when it exits. That suits a lock,
//! which the same process takes and gives back. Our counters pass from one
//! process to the other: with SEM_UNDO on the sender's posts of `full`, the
//! kernel would take back, at the sender's exit, every message it wrote
//! that the receiver had not read yet. The sender shows the undo on a
//! third, scratch semaphore instead (`Undo::SemUndo`).
//!
//! Read top to bottom: `create` (the receiver), `open` (the sender), the
//! two roles. Where a `Drop` detaches or removes, the line says so. The
//! owner and shape checks are marked as such; a first reading may skip them.

use std::ffi::c_void;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::cleanup::{SysvGuard, SysvKind, sysv_remove};
use common::peer::alive;
use common::report::{Narrator, Stream};
use common::sysv_sem::{SemSet, ftok};
use nix::errno::Errno;
use nix::unistd::Uid;

use crate::Options;
use shm_demo::checks::{self, Cleanup, MapsId, who};
use shm_demo::ipc_ring::{
    self as ring, Detach, HEADER_SPACE, MAX_SLOT_SIZE, MAX_SLOTS, SYNC_SYSV, Segment, Sem, Undo,
    segment_len, semop,
};

pub const MECHANISM: &str = "shm-sysv";
/// The `ftok` project byte: one path can key several unrelated objects.
const PROJECT: u8 = b'S';
/// The set's semaphores: the ring's two counters and a scratch one.
pub const EMPTY: u16 = 0;
const FULL: u16 = 1;
pub const SCRATCH: u16 = 2;
/// How many semaphores our set has: a set of another size is not ours.
const NSEMS: u16 = 3;
/// `shm_perm.mode` bit for "removed, waiting for the last detach".
const SHM_DEST: u16 = 0o1000;

/// ftok(3): a key from the path's inode and device and the project byte,
/// so both sides derive the same key without agreeing on a number.
pub fn key_of(path: &Path) -> Result<libc::key_t> {
    ftok(path, PROJECT).with_context(|| {
        format!(
            "ftok({}, 'S'): --key must name an existing file both sides can see, \
             e.g. touch /tmp/demo.key",
            path.display()
        )
    })
}

/// `shmctl(IPC_STAT)`: the kernel's record of a segment.
fn shm_stat(id: libc::c_int) -> nix::Result<libc::shmid_ds> {
    let mut ds = std::mem::MaybeUninit::<libc::shmid_ds>::uninit();
    // SAFETY: IPC_STAT fills the shmid_ds we point to.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_STAT, ds.as_mut_ptr()) })?;
    // SAFETY: the call succeeded, so the kernel initialised it.
    Ok(unsafe { ds.assume_init() })
}

/// `semctl(IPC_STAT)`: the kernel's record of a semaphore set.
fn sem_stat(id: libc::c_int) -> nix::Result<libc::semid_ds> {
    let mut ds = std::mem::MaybeUninit::<libc::semid_ds>::uninit();
    // SAFETY: IPC_STAT takes a `struct semid_ds *` as the variadic fourth
    // argument (the `buf` member of union semun) and fills it.
    Errno::result(unsafe { libc::semctl(id, 0, libc::IPC_STAT, ds.as_mut_ptr()) })?;
    // SAFETY: the call succeeded, so the kernel initialised it.
    Ok(unsafe { ds.assume_init() })
}

/// Is semaphore set `id` ours: our key, our uid, our number of
/// semaphores? `Err` says whose or what it is instead. Hardening: a first
/// reading may skip it.
fn check_set(id: libc::c_int, key: libc::key_t) -> Result<()> {
    let ds = sem_stat(id).with_context(|| format!("semctl({id}, IPC_STAT)"))?;
    let me = Uid::effective().as_raw();
    if ds.sem_perm.__key != key {
        bail!("semid {id} is not under our key {key:#010x}");
    }
    // The creator too: an owner can hand a set to us with IPC_SET (uid 0
    // for root), yet its creator may still change or remove it at will.
    if ds.sem_perm.uid != me || ds.sem_perm.cuid != me {
        bail!(
            "the semaphore set semid {id} belongs to {} and was created by {}, not by you ({})",
            who(ds.sem_perm.uid),
            who(ds.sem_perm.cuid),
            who(me)
        );
    }
    if ds.sem_nsems != libc::c_ulong::from(NSEMS) {
        bail!(
            "the semaphore set semid {id} has {} semaphore(s), ours have {NSEMS}: not a \
             shm-demo set",
            ds.sem_nsems
        );
    }
    Ok(())
}

/// What `ipcs -m` would say about segment `id`.
pub fn describe(id: libc::c_int) -> String {
    match shm_stat(id) {
        Ok(ds) => {
            let removed = if ds.shm_perm.mode & SHM_DEST != 0 {
                ", marked for removal (SHM_DEST)"
            } else {
                ""
            };
            format!(
                "shmid {id}: key {:#010x}, {} bytes, mode {:04o}, shm_nattch = {}{removed}",
                ds.shm_perm.__key,
                ds.shm_segsz,
                ds.shm_perm.mode & 0o777,
                ds.shm_nattch
            )
        }
        Err(Errno::EINVAL | Errno::EIDRM) => format!("shmid {id}: no such segment, gone"),
        Err(e) => format!("shmid {id}: shmctl(IPC_STAT): {e}"),
    }
}

/// `shmat(2)`: map segment `id` (its size is `len`) at an address the
/// kernel picks; `shm_nattch` counts it. The Segment's `Drop` is the `shmdt(2)`.
fn attach(id: libc::c_int, len: usize) -> Result<Segment> {
    // SAFETY: a null address lets the kernel choose a free range, which
    // overlaps no Rust object.
    let base = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if base as isize == -1 {
        return Err(Errno::last()).with_context(|| format!("shmat({id})"));
    }
    let base = NonNull::new(base.cast::<c_void>()).context("shmat returned null")?;
    // SAFETY: `base` is the attachment just made, `len` the segment's size
    // (the caller's shmget size or IPC_STAT's shm_segsz).
    Ok(unsafe { Segment::new(base, len, Detach::Shmdt) })
}

pub fn sems(set: SemSet) -> (Sem, Sem) {
    (Sem::SysV(set, EMPTY), Sem::SysV(set, FULL))
}

/// The receiver's objects. Dropping it does, in field order (Rust drops
/// fields in declaration order): `shmdt` (Segment's `Drop`),
/// `shmctl(IPC_RMID)` of the segment (`shm`'s `Drop`), `semctl(IPC_RMID)`
/// of the set (`set_guard`'s `Drop`).
pub struct Owned {
    pub segment: Segment,
    pub shm: SysvGuard,
    pub set: SemSet,
    pub set_guard: SysvGuard,
}

// ANCHOR: shmget
/// The receiver's side: the segment, the semaphore set, the header.
pub fn create(key_path: &Path, slots: u32, slot_size: u32, say: &Narrator) -> Result<Owned> {
    let key = key_of(key_path)?;
    say.step(format!(
        "ftok({}, 'S') = {key:#010x}: the key both sides derive from the path",
        key_path.display()
    ));
    let len = segment_len(slots, slot_size);
    // shmget(2) with IPC_CREAT|IPC_EXCL: exactly one creator per key; the
    // kernel zero-fills the segment and records us as its creator (shm_cpid).
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    // SAFETY: shmget takes no pointers.
    let mut id = unsafe { libc::shmget(key, len, flags) };
    if id == -1 && Errno::last() == Errno::EEXIST {
        // Left by a killed run? Removed only if provably ours and
        // abandoned (a first reading may skip remove_if_stale).
        remove_if_stale(key, say)?;
        // SAFETY: as above.
        id = unsafe { libc::shmget(key, len, flags) };
    }
    let id = Errno::result(id)
        .with_context(|| format!("shmget({key:#x}, {len}, IPC_CREAT|IPC_EXCL|0600)"))?;
    // From here until Owned drops, this guard's Drop is shmctl(IPC_RMID).
    let shm = SysvGuard::new(SysvKind::SharedMemory, id);
    say.step(format!(
        "shmget(key, {len}, IPC_CREAT|IPC_EXCL|0600) = shmid {id}"
    ));
    // semget(2) with IPC_CREAT|IPC_EXCL: a new set of three semaphores.
    let set = match SemSet::create(key, NSEMS, 0o600) {
        // A set under the key, but no segment of ours names it (a stale
        // segment's set went with it in remove_if_stale): someone else's,
        // or ours from a run killed at the wrong moment. Either way we
        // cannot tell, so it is left alone.
        Err(Errno::EEXIST) => {
            let what = match SemSet::open(key) {
                Ok(old) => match check_set(old.id, key) {
                    Ok(()) => format!(
                        "semid {}, owned by you, {NSEMS} semaphores, but no segment of ours \
                         names it (if it is debris of yours: ipcrm -s {})",
                        old.id, old.id
                    ),
                    Err(e) => format!("{e:#}"),
                },
                Err(e) => format!("semget: {e}"),
            };
            bail!(
                "a semaphore set with this key already exists ({what}): refusing to remove it; \
                 choose another --key"
            );
        }
        other => other,
    }
    .context("semget(key, 3, IPC_CREAT|IPC_EXCL|0600)")?;
    // This guard's Drop is semctl(IPC_RMID).
    let set_guard = SysvGuard::new(SysvKind::SemaphoreSet, set.id);
    // semctl(2) SETVAL: a new set's values are unspecified until set.
    set.set_value(EMPTY, slots as i32)
        .context("semctl(SETVAL, empty)")?;
    set.set_value(FULL, 0).context("semctl(SETVAL, full)")?;
    set.set_value(SCRATCH, 0)
        .context("semctl(SETVAL, scratch)")?;
    say.step(format!(
        "semget(key, 3, ...) = semid {}; semctl(SETVAL): empty = {slots} (free slots), \
         full = 0 (filled slots), scratch = 0. The ring's semop calls use no SEM_UNDO: \
         these counts pass between processes, and an undo at exit would take back \
         messages not yet read",
        set.id
    ));
    let mut segment = attach(id, len)?;
    // SIGBUS guard (checks.rs): a fault ends with IPC_RMID of both objects.
    checks::guard(
        &format!("shmid {id}"),
        segment.base(),
        len,
        Cleanup::SysV {
            shmid: id,
            semid: set.id,
        },
    )?;
    say.step(format!("shmat: attached; {}", describe(id)));
    segment.init_header(slots, slot_size, SYNC_SYSV);
    // The tie between the two objects: a sender (or a later receiver
    // cleaning up) takes only this set, not any set under the key.
    segment.header().sem_id.store(set.id, Ordering::Relaxed);
    // MAGIC last, with Release: a sender that sees it sees the rest.
    segment.publish();
    Ok(Owned {
        segment,
        shm,
        set,
        set_guard,
    })
}
// ANCHOR_END: shmget

/// A segment exists under our key. If it is ours (our uid, our header),
/// unattached, and its creator is gone, it is stale: remove it and the set
/// its header names. Anything else is refused and left alone. Hardening:
/// a first reading may skip it.
fn remove_if_stale(key: libc::key_t, say: &Narrator) -> Result<()> {
    // SAFETY: shmget takes no pointers.
    let id = Errno::result(unsafe { libc::shmget(key, 0, 0) }).context("shmget(key, 0, 0)")?;
    let ds = shm_stat(id).context("shmctl(IPC_STAT)")?;
    let me = Uid::effective().as_raw();
    if ds.shm_perm.uid != me || ds.shm_perm.cuid != me {
        bail!(
            "a System V segment with this key (shmid {id}) belongs to {} and was created by {}, \
             not by you ({}): refusing to remove it; choose another --key",
            who(ds.shm_perm.uid),
            who(ds.shm_perm.cuid),
            who(me)
        );
    }
    // shm_nattch and shm_cpid are the kernel's records, not the header's.
    if ds.shm_nattch > 0 || alive(ds.shm_cpid) {
        bail!(
            "a System V segment with this key is in use (shmid {id}, creator pid {}, {} \
             attached): choose another --key",
            ds.shm_cpid,
            ds.shm_nattch
        );
    }
    // Ours: our magic and version, and the set it names (if any).
    let ours = (ds.shm_segsz >= HEADER_SPACE).then(|| {
        // SAFETY: read-only attach of a segment at a kernel-chosen address.
        let base = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
        NonNull::new(base.cast::<c_void>())
            .filter(|_| base as isize != -1)
            .and_then(|base| {
                // SAFETY: the attachment just made, at least HEADER_SPACE
                // long (shm_segsz checked above); only loads happen on it.
                let segment = unsafe { Segment::new(base, HEADER_SPACE, Detach::Shmdt) };
                let header = segment.header();
                (header.magic.load(Ordering::Acquire) == ring::MAGIC
                    && header.version.load(Ordering::Relaxed) == ring::VERSION)
                    .then(|| header.sem_id.load(Ordering::Relaxed))
            })
    });
    let Some(Some(sem_id)) = ours else {
        bail!(
            "a System V segment with this key (shmid {id}) is not a shm-demo segment: refusing to remove it"
        );
    };
    say.step(format!(
        "shmid {id} has our key, nobody attached, and its creator (pid {}) is gone: stale, removing it",
        ds.shm_cpid
    ));
    sysv_remove(SysvKind::SharedMemory, id).context("shmctl(IPC_RMID)")?;
    // Only the set the header names, and only if it is still ours.
    match check_set(sem_id, key) {
        Ok(()) => {
            sysv_remove(SysvKind::SemaphoreSet, sem_id).context("semctl(IPC_RMID)")?;
            say.step(format!("and its semaphore set, semid {sem_id}"));
        }
        Err(e) => say.step(format!(
            "its header names semid {sem_id}, left alone: {e:#}"
        )),
    }
    Ok(())
}

/// The sender's side: find the objects by key and check owner and header.
/// Returns the segment, its id and creator pid (the kernel's record), and
/// the set.
fn open(key_path: &Path, say: &Narrator) -> Result<(Segment, libc::c_int, i32, SemSet)> {
    let key = key_of(key_path)?;
    let p = key_path.display();
    // shmget(2) without IPC_CREAT: the receiver's segment, or ENOENT.
    // SAFETY: shmget takes no pointers.
    let id = match Errno::result(unsafe { libc::shmget(key, 0, 0) }) {
        Err(Errno::ENOENT) => bail!(
            "no System V segment for --key {p}: start 'shm-demo sysv receiver --key {p}' first"
        ),
        other => other.context("shmget(key, 0, 0)")?,
    };
    // shmctl(2) IPC_STAT: owner and size from the kernel, not the segment.
    let ds = shm_stat(id).context("shmctl(IPC_STAT)")?;
    let me = Uid::effective().as_raw();
    if ds.shm_perm.uid != me || ds.shm_perm.cuid != me {
        bail!(
            "the System V segment shmid {id} belongs to {} and was created by {}, not by you \
             ({}): refusing to write into it",
            who(ds.shm_perm.uid),
            who(ds.shm_perm.cuid),
            who(me)
        );
    }
    let size = ds.shm_segsz;
    if size < HEADER_SPACE || size > segment_len(MAX_SLOTS, MAX_SLOT_SIZE) {
        bail!("shmid {id} is {size} bytes: not a shm-demo segment (refusing to attach it)");
    }
    let mut segment = attach(id, size)?;
    // SIGBUS guard (checks.rs): the segment is the receiver's to remove.
    checks::guard(
        &format!("shmid {id}"),
        segment.base(),
        size,
        Cleanup::Nothing,
    )?;
    // The initialisation race: wait (bounded) for the MAGIC stored last.
    let magic = segment.wait_published();
    // Every header field checked before one is believed (checks.rs).
    checks::validate(&mut segment, magic, &format!("shmid {id}"), SYNC_SYSV)?;
    // The set the header names, if it is under our key, ours and our shape.
    let sem_id = segment.header().sem_id.load(Ordering::Relaxed);
    check_set(sem_id, key)
        .with_context(|| format!("the header of shmid {id} names semid {sem_id}"))?;
    let set = SemSet { id: sem_id };
    let (slots, slot_size) = segment.slots();
    say.step(format!(
        "shmget + shmat: header checked ({slots} slots of {slot_size} bytes, semid {sem_id}); {}",
        describe(id)
    ));
    Ok((segment, id, ds.shm_cpid, set))
}

pub fn sender(opts: &Options, key_path: &Path) -> Result<()> {
    let say = Narrator::new("sender", opts.quiet, Stream::Stdout);
    let (segment, id, creator, set) = open(key_path, &say)?;
    // The receiver is the segment's creator, as the kernel recorded it:
    // it must map this segment, a pidfd then watches it, and the
    // compare-and-swap claim makes us the one sender.
    let receiver = ring::attach_as_sender(
        &segment.header().sender_pid,
        creator,
        MapsId::SysV { shmid: id },
        &say,
    )?;
    // The lesson of SEM_UNDO, on a semaphore the ring does not use:
    // semop(2) +1 with SEM_UNDO, which the kernel reverses at our exit.
    semop(set, SCRATCH, 1, Undo::SemUndo, Duration::from_secs(1))
        .context("semop(scratch, +1, SEM_UNDO)")?;
    say.step(format!(
        "semop(scratch, +1, SEM_UNDO): scratch = {}; the kernel will undo this +1 when I exit",
        set.value(SCRATCH).context("semctl(GETVAL)")?
    ));
    let mut peer_gone = || receiver.gone();
    let sent = ring::send(
        &segment,
        sems(set),
        opts.count,
        opts.size,
        opts.timeout,
        &say,
        &mut peer_gone,
    );
    let elapsed = match sent {
        Ok(elapsed) => elapsed,
        Err(e) => {
            // A receiver killed by SIGKILL removed nothing; ids are never
            // reused while the objects exist, so removing by id is safe.
            if receiver.gone().is_some() {
                drop(segment); // shmdt(2)
                let _ = sysv_remove(SysvKind::SharedMemory, id);
                let _ = sysv_remove(SysvKind::SemaphoreSet, set.id);
                say.step("the receiver died without cleaning up: IPC_RMID done for it");
            }
            return Err(e);
        }
    };
    drop(segment); // shmdt(2) (Segment's Drop): shm_nattch drops by one
    say.step(format!("wrote the end marker; shmdt: {}", describe(id)));
    ring::sender_summary(
        MECHANISM,
        opts.count,
        opts.size,
        elapsed,
        &say,
        opts.summary,
    );
    Ok(())
}

pub fn receiver(opts: &Options, key_path: &Path) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, Stream::Stdout);
    let owned = create(key_path, opts.slots, opts.slot_size, &say)?;
    say.step(format!(
        "waiting for a sender: shm-demo sysv sender --key {}",
        key_path.display()
    ));
    let id = owned.shm.id();
    let sender = ring::wait_for_sender(
        &owned.segment.header().sender_pid,
        MapsId::SysV { shmid: id },
        &say,
    )?;
    let mut peer_gone = || sender.gone();
    let expected = opts.count_given.then_some(opts.count);
    let (report, elapsed) = ring::receive(
        &owned.segment,
        sems(owned.set),
        expected,
        opts.timeout,
        &say,
        &mut peer_gone,
    )?;
    drop(owned); // shmdt(2), shmctl(IPC_RMID), semctl(IPC_RMID): see Owned
    say.step(format!(
        "shmdt, IPC_RMID for the segment and the set: {}",
        describe(id)
    ));
    // Last: the summary line ends the output.
    ring::finish_receiving(MECHANISM, report, elapsed, &say)
}
