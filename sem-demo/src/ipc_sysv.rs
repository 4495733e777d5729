//! The System V mechanism: a set of one semaphore, found by a key that
//! `ftok(PATH)` makes, used as a lock (with `SEM_UNDO`) over a counter in a
//! System V shared memory segment, and as a signal (`wait` / `post`).
//!
//! Read top to bottom: the key, `semop` with its undo flag, creating a set
//! without the initialisation race (`sem_otime`), opening someone's set,
//! the counter segment, then the four roles. The calls go through
//! `common::sysv_sem`, one small function per libc call: `SemSet::create`
//! is `semget(IPC_CREAT|IPC_EXCL)`, `SemSet::open` is `semget(key, 0, 0)`,
//! `set_value` is `semctl(SETVAL)`, `value` is `semctl(GETVAL)`, `stat` is
//! `semctl(IPC_STAT)`, `last_pid` is `semctl(GETPID)`, `waiting` is
//! `semctl(GETNCNT)`, `op`/`ops` are `semtimedop`.

use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{SysvKind, check_stop, sysv_remove};
use common::peer::alive;
use common::psem::Wait;
use common::report::Narrator;
use common::sysv_sem::{SEMVMX, SemSet, ftok};
use nix::errno::Errno;

use crate::checks::{check_magic, check_segment, check_set, secs};
use crate::ipc_posix::{COUNTER_MAGIC, Counter};
use crate::{INIT_PATIENCE, LOCK_TICK};

/// ftok project byte for sem-demo's System V objects.
const PROJECT: u8 = b'M';

/// The key for `--key PATH`: `ftok` mixes the file's inode and device with
/// one byte, so unrelated processes agree on a key by naming one file.
pub fn key(path: &Path) -> Result<libc::key_t> {
    ftok(path, PROJECT).with_context(|| {
        format!(
            "ftok({}, 'M'): --key must name an existing file, e.g. touch /tmp/demo.key",
            path.display()
        )
    })
}

/// `sem_flg` of a semop: does the kernel keep an undo record of it?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// `SEM_UNDO`: when this process exits, however it dies (SIGKILL too),
    /// the kernel reverses this change. A lock taken this way is given back.
    SemUndo,
    /// `0`: the change outlives us (a post meant for another process, a
    /// set's initial value).
    Keep,
}

/// `semtimedop(semid, [{index, delta, sem_flg}], timeout)`: add `delta` to
/// one semaphore; a negative delta waits while the value is too low, at
/// most `timeout` (EAGAIN, as `Wait::TimedOut`), and EINTR comes back as
/// `Wait::Interrupted`, so the caller can look for Ctrl-C.
pub fn semop(
    set: SemSet,
    index: u16,
    delta: i16,
    undo: Undo,
    timeout: Duration,
) -> nix::Result<Wait> {
    set.op(index, delta, undo == Undo::SemUndo, timeout)
}

/// The same with several `(index, delta)` changes in one call: the kernel
/// applies all of them at once or none (and waits until it can).
pub fn semops(
    set: SemSet,
    changes: &[(u16, i16)],
    undo: Undo,
    timeout: Duration,
) -> nix::Result<Wait> {
    set.ops(changes, undo == Undo::SemUndo, timeout)
}

/// `semop(semid, [{index, delta, IPC_NOWAIT}], 1)`: apply the change now
/// or fail with `EAGAIN`, never sleeping (System V's `sem_trywait`).
/// Ok(false): `EAGAIN`, the change would have had to wait.
pub fn semop_nowait(set: SemSet, index: u16, delta: i16) -> nix::Result<bool> {
    let mut op = libc::sembuf {
        sem_num: index,
        sem_op: delta,
        sem_flg: libc::IPC_NOWAIT as libc::c_short,
    };
    // SAFETY: `op` is one valid sembuf, alive for the call.
    match Errno::result(unsafe { libc::semop(set.id, &mut op, 1) }) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `semctl(semid, index, GETZCNT)`: how many processes wait for semaphore
/// `index` to become zero (a `sem_op` of 0), beside GETNCNT's count of
/// those waiting for it to rise.
pub fn zero_waiters(set: SemSet, index: u16) -> nix::Result<i32> {
    // SAFETY: GETZCNT takes no fourth argument.
    Errno::result(unsafe { libc::semctl(set.id, libc::c_int::from(index), libc::GETZCNT) })
}

// ANCHOR: semop_undo
/// Take one from semaphore `index` of `set`, waiting at most `patience`
/// in ticks that look for a stop request. Ok(false): not in time.
pub fn take(set: SemSet, index: u16, undo: Undo, patience: Duration) -> Result<bool> {
    let start = Instant::now();
    while start.elapsed() < patience {
        check_stop()?;
        if let Wait::Acquired = semop(set, index, -1, undo, LOCK_TICK).context("semtimedop(-1)")? {
            return Ok(true);
        }
    }
    Ok(false)
}
// ANCHOR_END: semop_undo

// ANCHOR: sysv_init
/// Create the set for `path` with `value`, free of the initialisation
/// race, or open the existing one once its creator has initialised it.
/// Returns whether we created it.
///
/// The race: `semget` creates a set of zeros and `semctl(SETVAL)` gives it
/// its value, in two calls. A process that finds the set by its key in
/// between and posts has its post wiped by our SETVAL. The cure (TLPI's
/// `svsem_good_init`): SETVAL, then a first `semop`, which sets the set's
/// `sem_otime`; the others wait until `sem_otime != 0` ([`open`]).
pub fn open_or_create(path: &Path, value: u16, say: &Narrator) -> Result<(SemSet, bool)> {
    let key = key(path)?;
    // semget(key, 1, IPC_CREAT|IPC_EXCL|0600): EXCL, so we either make the
    // set (and must initialise it) or learn that someone else did.
    let set = match SemSet::create(key, 1, 0o600) {
        Ok(set) => set,
        Err(Errno::EEXIST) => return Ok((open(path, say)?, false)),
        Err(e) => return Err(e).context("semget(IPC_CREAT|IPC_EXCL|0600)"),
    };
    // semctl(SETVAL, 0), then the first semop adds the value (no SEM_UNDO:
    // the value must outlive us). For a value of 0 the semop is "wait for
    // zero", done at once, and it still sets sem_otime.
    let delta = i16::try_from(value).map_err(|_| Errno::ERANGE);
    let first = set
        .set_value(0, 0)
        .and_then(|()| semop(set, 0, delta?, Undo::Keep, Duration::from_secs(1)));
    if !matches!(first, Ok(Wait::Acquired)) {
        // A failed create leaves nothing: semctl(IPC_RMID).
        let _ = set.remove();
    }
    match first {
        Ok(Wait::Acquired) => {}
        // Every value is 0 before it, so nothing can make it wait.
        Ok(_) => bail!("semop(+{value}): the first semop could not complete"),
        Err(Errno::ERANGE) => bail!("semop(+{value}): ERANGE, over SEMVMX ({SEMVMX})"),
        Err(e) => return Err(e).context("semctl(SETVAL, 0) + the first semop"),
    }
    say.step(format!(
        "semget({key:#010x}, 1, IPC_CREAT|IPC_EXCL|0600) = semid {}; SETVAL 0, then a \
         first semop(+{value}): it sets sem_otime, which tells other processes the set \
         is ready (a post before that would be wiped by a SETVAL)",
        set.id
    ));
    Ok((set, true))
}
// ANCHOR_END: sysv_init

/// The existing set for `path`: ours, one semaphore, initialised.
pub fn open(path: &Path, say: &Narrator) -> Result<SemSet> {
    let set = find(path)?;
    let key = key(path)?;
    // Ours, one semaphore? Skippable on a first reading: hardening.
    check_set(set, key)?;
    if !wait_initialised(set, || {
        say.step(format!(
            "semid {}: sem_otime = 0, its creator has not made its first semop yet: waiting \
             (at most {} s)",
            set.id,
            INIT_PATIENCE.as_secs()
        ))
    })? {
        bail!(
            "semid {} exists but was never initialised (sem_otime = 0 after {} s): its creator \
             died, or is stopped, between semget and its first semop. 'sem-demo sysv remove \
             --key {}' removes it",
            set.id,
            INIT_PATIENCE.as_secs(),
            path.display()
        );
    }
    say.step(format!(
        "semget({key:#010x}) = semid {}: the existing set (yours, one semaphore, sem_otime set)",
        set.id
    ));
    Ok(set)
}

/// The set for `path`, unchecked, or a hint how to create one.
fn find(path: &Path) -> Result<SemSet> {
    let key = key(path)?;
    // semget(key, 0, 0): the existing set, by key.
    SemSet::open(key).map_err(|e| match e {
        Errno::ENOENT => anyhow::anyhow!(
            "no System V semaphore set for --key {p}: create it with 'sem-demo sysv wait --key {p}' \
             or 'sem-demo sysv worker --key {p}'",
            p = path.display()
        ),
        e => anyhow::Error::new(e).context("semget(key, 0, 0)"),
    })
}

/// Wait (at most INIT_PATIENCE) until the creator of `set` made its first
/// semop (`sem_otime != 0`); `waiting` runs once if we have to wait.
pub fn wait_initialised(set: SemSet, waiting: impl FnOnce()) -> Result<bool> {
    let start = Instant::now();
    let mut waiting = Some(waiting);
    loop {
        // semctl(IPC_STAT): sem_otime, 0 until the creator's first semop.
        if set.initialised().context("semctl(IPC_STAT)")? {
            return Ok(true);
        }
        if let Some(tell) = waiting.take() {
            tell();
        }
        check_stop()?;
        if start.elapsed() > INIT_PATIENCE {
            return Ok(false);
        }
        sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// The counter it protects: a System V segment with the set's key
// ---------------------------------------------------------------------------

/// The System V counter: a shared memory segment with the set's key.
pub struct SysvCounter {
    base: NonNull<libc::c_void>,
    pub id: libc::c_int,
}

impl SysvCounter {
    pub fn open_or_create(key: libc::key_t, say: &Narrator) -> Result<SysvCounter> {
        let len = size_of::<Counter>();
        // shmget(IPC_CREAT|IPC_EXCL): a new segment, or EEXIST, never
        // somebody's segment taken over unnoticed.
        // SAFETY: shmget takes no pointers.
        let id = unsafe { libc::shmget(key, len, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        let (id, created) = match Errno::result(id) {
            Ok(id) => (id, true),
            Err(Errno::EEXIST) => {
                // SAFETY: shmget takes no pointers.
                let id = Errno::result(unsafe { libc::shmget(key, 0, 0) })
                    .context("shmget(key, 0, 0)")?;
                check_segment(id)?;
                (id, false)
            }
            Err(e) => return Err(e).context("shmget(key, IPC_CREAT|IPC_EXCL|0600)"),
        };
        // shmat(2): map the segment at a kernel-chosen address.
        // SAFETY: attach at a kernel-chosen address.
        let base = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        let base = match NonNull::new(base).filter(|_| base as isize != -1) {
            Some(base) => base,
            None => {
                let e = Errno::last();
                if created {
                    // A failed create leaves nothing: shmctl(IPC_RMID).
                    let _ = sysv_remove(SysvKind::SharedMemory, id);
                }
                return Err(e).context("shmat");
            }
        };
        let counter = SysvCounter { base, id };
        if created {
            // A new segment is zero-filled; the magic, last, says "ready".
            counter.get().magic.store(COUNTER_MAGIC, Ordering::Release);
            say.step(format!(
                "shmget(key, {len}, IPC_CREAT|IPC_EXCL|0600) = shmid {id}: created the counter"
            ));
        } else {
            check_magic(counter.get(), &format!("shmid {id}"))?;
            say.step(format!(
                "shmget(key) = shmid {id}: the existing counter (yours, {len} bytes, magic ok)"
            ));
        }
        Ok(counter)
    }

    pub fn get(&self) -> &Counter {
        // SAFETY: the attachment is page-aligned and size_of::<Counter>()
        // long (made or checked so); all fields are atomics.
        unsafe { self.base.cast::<Counter>().as_ref() }
    }
}

impl Drop for SysvCounter {
    /// shmdt(2): detach; the segment stays until `sysv remove`.
    fn drop(&mut self) {
        // SAFETY: `base` came from shmat; nothing borrows it now.
        unsafe { libc::shmdt(self.base.as_ptr()) };
    }
}

// ---------------------------------------------------------------------------
// The roles
// ---------------------------------------------------------------------------

/// `sysv worker`: `iterations` increments of the counter segment, each
/// under the set's lock taken with `SEM_UNDO` (both created if absent).
pub fn worker(path: &Path, iterations: u64, patience: Duration, say: &Narrator) -> Result<()> {
    let (set, created) = open_or_create(path, 1, say)?;
    let counter = match SysvCounter::open_or_create(key(path)?, say) {
        Ok(counter) => counter,
        Err(e) => {
            if created {
                // A failed create leaves nothing: not even the set.
                let _ = set.remove(); // semctl(IPC_RMID)
            }
            return Err(e);
        }
    };
    let value = &counter.get().value;
    let start = Instant::now();
    for _ in 0..iterations {
        // semop(-1, SEM_UNDO): if we die holding the lock, the kernel
        // releases it.
        if !take(set, 0, Undo::SemUndo, patience)? {
            // semctl(GETPID): the last process to change the value, the
            // holder if the lock is held (its SEM_UNDO would have given
            // the lock back had it died).
            let last = set.last_pid(0).unwrap_or(0);
            let why = if alive(last) {
                format!(
                    "its holder (pid {last}) is alive but does not give it back (stopped, or stuck?)"
                )
            } else {
                format!(
                    "the value is 0 and the last process to change it (pid {last}) is gone: \
                     nobody holds it. A set made by 'sysv wait' (value 0) used as a lock? \
                     'sem-demo sysv remove --key {}' and start again",
                    path.display()
                )
            };
            bail!(
                "semop(semid {}, -1): could not get the lock in {} s: {why}",
                set.id,
                patience.as_secs()
            );
        }
        let v = value.load(Ordering::Relaxed);
        value.store(v + 1, Ordering::Relaxed);
        // semop(+1, SEM_UNDO): the give-back cancels the take's undo record.
        semop(set, 0, 1, Undo::SemUndo, LOCK_TICK).context("semop(+1, SEM_UNDO)")?;
    }
    say.step(format!(
        "{} increments under semid {} (SEM_UNDO) in {}; the counter (shmid {}) is now {}",
        iterations,
        set.id,
        secs(start.elapsed()),
        counter.id,
        value.load(Ordering::Relaxed)
    ));
    Ok(())
}

/// `sysv wait`: take one (created with `value` if absent).
pub fn wait(path: &Path, timeout: Option<Duration>, value: u32, say: &Narrator) -> Result<()> {
    let value = u16::try_from(value).unwrap_or(SEMVMX);
    let (set, _) = open_or_create(path, value, say)?;
    let start = Instant::now();
    loop {
        check_stop()?;
        // semtimedop(-1) in ticks, no SEM_UNDO: what we take is consumed.
        if let Wait::Acquired =
            semop(set, 0, -1, Undo::Keep, LOCK_TICK).context("semtimedop(-1)")?
        {
            break;
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            bail!(
                "semtimedop(semid {}): timed out after {}: nobody posted",
                set.id,
                secs(start.elapsed())
            );
        }
    }
    say.step(format!(
        "acquired after {}; value now {}",
        secs(start.elapsed()),
        set.value(0)? // semctl(GETVAL)
    ));
    Ok(())
}

/// `sysv post`: add one, once the set's creator has initialised it.
pub fn post(path: &Path, say: &Narrator) -> Result<()> {
    let set = open(path, say)?;
    // semop(+1), no SEM_UNDO: the post is for another process and must
    // outlive us. ERANGE at SEMVMX.
    match semop(set, 0, 1, Undo::Keep, LOCK_TICK) {
        Ok(_) => {}
        Err(Errno::ERANGE) => bail!(
            "semop(semid {}, +1): ERANGE, the value is already SEMVMX ({SEMVMX})",
            set.id
        ),
        Err(e) => return Err(e).context("semop(+1)"),
    }
    say.step(format!(
        "semop(semid {}, +1): value now {}",
        set.id,
        set.value(0)?
    ));
    Ok(())
}

/// `sysv remove`: `IPC_RMID` the set and the counter segment.
pub fn remove(path: &Path, say: &Narrator) -> Result<()> {
    let key = key(path)?;
    let set = find(path)?;
    // Checked first: as root, IPC_RMID would remove anyone's set.
    // Not initialised is fine: removing a half-made set is the cure.
    check_set(set, key)?;
    // semctl(IPC_RMID): gone at once; a waiter's semop fails with EIDRM.
    sysv_remove(SysvKind::SemaphoreSet, set.id).context("semctl(IPC_RMID)")?;
    say.step(format!("semctl(semid {}, IPC_RMID): removed", set.id));
    // SAFETY: shmget takes no pointers.
    let id = unsafe { libc::shmget(key, 0, 0) };
    if id >= 0 {
        check_segment(id)?;
        // shmctl(IPC_RMID): the segment goes once the last process detaches.
        sysv_remove(SysvKind::SharedMemory, id).context("shmctl(IPC_RMID)")?;
        say.step(format!(
            "shmctl(shmid {id}, IPC_RMID): removed the worker counter"
        ));
    }
    Ok(())
}
