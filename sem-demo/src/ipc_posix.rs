//! The POSIX mechanism: a named semaphore (`sem_open`) used as a lock over
//! a counter in POSIX shared memory, and as a signal (`wait` / `post`).
//!
//! Read top to bottom: the counter's layout, opening or creating the
//! semaphore, taking and giving back the lock (with the recovery from a
//! dead holder that POSIX semaphores need), the counter's shared memory,
//! then the four roles. The calls go through `common::psem`, one small
//! function per libc call: `NamedSem::create` is `sem_open(O_CREAT|O_EXCL)`,
//! `wait_for` is `sem_timedwait`, `try_wait` is `sem_trywait`, `post` is
//! `sem_post`, `value` is `sem_getvalue`, `psem::unlink` is `sem_unlink`,
//! and dropping a `NamedSem` is `sem_close` (or `munmap`, for one
//! `open_own` mapped itself). The story's unnamed semaphores (`sem_init`,
//! `sem_destroy`) are in `story.rs`, steps 3 and 4.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::check_stop;
use common::peer::PidTracker;
use common::psem::{self, NamedSem, OpenError, SharedSem, Wait};
use common::report::Narrator;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::{ftruncate, geteuid};

use crate::checks::{check_magic, counter_removable, me, open_hint, refused, secs, whose};
use crate::{INIT_PATIENCE, LOCK_TICK};

/// A lock taken with no holder recorded for this long has lost its holder.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// The counter object of `sem-demo worker --name /NAME` (POSIX shared
/// memory `/NAME.counter`) and `sem-demo sysv worker` (a System V segment).
#[repr(C)]
pub struct Counter {
    /// COUNTER_MAGIC once its creator has set it up: what tells our
    /// counter from another program's object under the same name.
    pub magic: AtomicU64,
    pub value: AtomicU64,
    /// Pid of the process holding the POSIX lock, 0 if none: what lets a
    /// waiter tell a slow holder from a dead one (System V needs none).
    pub holder: AtomicI32,
}

pub const COUNTER_MAGIC: u64 = u64::from_le_bytes(*b"semdemo1");

// ---------------------------------------------------------------------------
// The semaphore
// ---------------------------------------------------------------------------

// ANCHOR: sem_open
/// Open `name`, creating it with `value` if it does not exist yet.
/// Returns whether we created it.
pub fn open_or_create(name: &str, value: u32, say: &Narrator) -> Result<(NamedSem, bool)> {
    let path = psem::sem_path(name);
    // Created, or removed, by someone else between our two calls: try again.
    for _ in 0..3 {
        // sem_open(name, O_CREAT|O_EXCL, 0600, value): O_EXCL, so we either
        // make a new semaphore with our value or learn that one exists
        // (without it we would silently share somebody's, whatever its value).
        match NamedSem::create(name, 0o600, value) {
            Ok(sem) => {
                // sem_open's mode passed through the umask; the file is
                // ours and new, in a sticky directory nobody else may
                // rename in.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("chmod({path}, 0600)"))?;
                say.step(format!(
                    "sem_open({name}, O_CREAT|O_EXCL, 0600, {value}): created {path}"
                ));
                return Ok((sem, true));
            }
            // sem_open(name, 0) gives no descriptor to check, so open_own does
            // its two steps itself: open(/dev/shm/sem.NAME), fstat (ours, one
            // sem_t), mmap(MAP_SHARED).
            Err(Errno::EEXIST) => match NamedSem::open_own(name) {
                Ok(sem) => {
                    say.step(format!(
                        "sem_open({name}): the existing semaphore ({path}: yours, one sem_t)"
                    ));
                    return Ok((sem, false));
                }
                Err(OpenError::Sys(Errno::ENOENT)) => continue,
                Err(e) => return Err(refused(name, e)),
            },
            Err(e) => return Err(open_hint(name, e)),
        }
    }
    bail!("{path} keeps appearing and disappearing: somebody else is using the name")
}
// ANCHOR_END: sem_open

// ANCHOR: lock
/// Take `lock`; while it is taken, check every tick whether the holder
/// (whose pid is in `holder`) still lives. If it died, take the lock over.
/// Returns whether the lock was recovered from a dead holder.
///
/// A holder killed between its sem_wait and recording its pid leaves the
/// lock taken with no pid: after ORPHAN_GRACE (far longer than any critical
/// section here) that counts as a dead holder too. Robust pthread mutexes
/// (`PTHREAD_MUTEX_ROBUST`, `EOWNERDEAD`, shown in story step 7) close that
/// gap in the kernel; semaphores know nothing of owners, so this is the
/// best a waiter can do.
///
/// A holder that lives but never posts (stopped with SIGSTOP, or stuck)
/// cannot be told from a slow one: after `patience` we give up.
pub fn lock_or_recover(
    lock: SharedSem,
    holder: &AtomicI32,
    patience: Duration,
    say: &Narrator,
) -> Result<bool> {
    let me = std::process::id() as i32;
    // The recorded holder, watched through a pidfd once first seen: if it
    // dies and its pid goes to another process, kill(pid, 0) would say
    // "alive" and we would wait out our patience behind a dead holder.
    let mut holder_process = PidTracker::new();
    let mut unowned_since: Option<Instant> = None;
    let start = Instant::now();
    loop {
        check_stop()?;
        if start.elapsed() > patience {
            bail!(
                "could not get the lock in {} s: holder pid {} is alive but does not post \
                 (stopped, or stuck?)",
                patience.as_secs(),
                holder.load(Ordering::Relaxed)
            );
        }
        // sem_timedwait, one tick at most: a plain sem_wait would sleep
        // forever behind a dead holder, and not see a Ctrl-C either.
        match lock.wait_for(LOCK_TICK).context("sem_timedwait")? {
            Wait::Acquired => {
                holder.store(me, Ordering::Relaxed);
                return Ok(false);
            }
            // Interrupted by a signal handler, or a tick gone: either way
            // look at the holder now (a storm of signals must not keep us
            // from ever noticing that it died).
            Wait::Interrupted | Wait::TimedOut => {}
        }
        // Still taken: is its holder alive? Skippable on a first reading:
        // the recovery a semaphore needs because it knows no owner.
        let pid = holder.load(Ordering::Relaxed);
        let dead = if pid != 0 {
            unowned_since = None;
            !holder_process.alive(pid)
        } else {
            // Taken (value 0) with nobody recorded as holder: start or
            // continue the grace period.
            let taken = lock.value().context("sem_getvalue")? == 0; // sem_getvalue
            let since = *unowned_since.get_or_insert_with(Instant::now);
            taken && since.elapsed() > ORPHAN_GRACE
        };
        // Compare-exchange, so that of several waiters only one takes over.
        // The count stays 0: the lock passes straight to us.
        if dead
            && holder
                .compare_exchange(pid, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let who = if pid == 0 {
                format!("no holder recorded for {ORPHAN_GRACE:?}: it died before writing its pid")
            } else {
                format!("holder pid {pid} has exited")
            };
            say.step(format!("{who}: taking the lock over"));
            return Ok(true);
        }
    }
}

/// Give back a lock taken with [`lock_or_recover`]: post first, then clear
/// our pid only if it is still ours (a new holder may already have written
/// its own).
pub fn unlock(lock: SharedSem, holder: &AtomicI32) -> Result<()> {
    // sem_post: +1, waking one waiter (a futex wake only if one sleeps).
    lock.post().context("sem_post")?;
    let me = std::process::id() as i32;
    let _ = holder.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
    Ok(())
}
// ANCHOR_END: lock

// ---------------------------------------------------------------------------
// The counter it protects: POSIX shared memory /NAME.counter
// ---------------------------------------------------------------------------

/// A named shared-memory object holding a Counter; unmapped on drop.
pub struct CounterMap {
    base: NonNull<libc::c_void>,
    len: usize,
}

impl CounterMap {
    /// Create the counter `name`, or open an existing one after checking
    /// that it is ours and a counter. Never truncates an existing object.
    pub fn open_or_create(name: &str, say: &Narrator) -> Result<CounterMap> {
        let len = size_of::<Counter>();
        // O_EXCL: we either make a new object or learn that one exists;
        // without it we would resize (and so destroy) somebody's segment.
        let fd = match shm_open(
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        ) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => return CounterMap::open_own(name, say),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("shm_open({name}, O_CREAT|O_EXCL|O_RDWR, 0600)"));
            }
        };
        let made = (|| {
            // The mode given to shm_open passed through the umask: set it.
            fchmod(&fd, Mode::S_IRUSR | Mode::S_IWUSR)
                .with_context(|| format!("fchmod({name})"))?;
            // Growing from 0 zero-fills.
            ftruncate(&fd, len as libc::off_t).with_context(|| format!("ftruncate({name})"))?;
            CounterMap::map(&fd, len)
        })();
        // A failed create leaves nothing: shm_unlink. (Not a guard that we
        // forget on success: a forgotten guard stays armed for a second
        // Ctrl-C, which would remove a counter the other workers use.)
        let map = match made {
            Ok(map) => map,
            Err(e) => {
                let _ = shm_unlink(name);
                return Err(e);
            }
        };
        drop(fd); // close(2): the mapping stays
        // Last, with Release: a worker that sees the magic sees a counter.
        map.get().magic.store(COUNTER_MAGIC, Ordering::Release);
        say.step(format!(
            "shm_open({name}, O_CREAT|O_EXCL|O_RDWR, 0600), ftruncate({len}): created the counter"
        ));
        Ok(map)
    }

    /// An existing counter, checked: a regular file of ours, exactly one
    /// Counter long, with our magic. A creator between its shm_open and
    /// its ftruncate (size 0) or its magic store gets INIT_PATIENCE.
    fn open_own(name: &str, say: &Narrator) -> Result<CounterMap> {
        let path = format!("/dev/shm{name}");
        // No O_CREAT: glibc's shm_open adds O_NOFOLLOW and O_CLOEXEC.
        let fd = shm_open(name, OFlag::O_RDWR, Mode::empty())
            .with_context(|| format!("shm_open({name}, O_RDWR)"))?;
        let len = size_of::<Counter>();
        let start = Instant::now();
        loop {
            let st = fstat(&fd).with_context(|| format!("fstat({path})"))?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                bail!("{path} is not a regular file: refusing to use it");
            }
            if st.st_uid != geteuid().as_raw() {
                bail!(
                    "{path} belongs to {}, not to you, {}: sem-demo leaves it alone",
                    whose(st.st_uid),
                    me()
                );
            }
            if st.st_size == len as libc::off_t {
                break;
            }
            if st.st_size == 0 && start.elapsed() > INIT_PATIENCE {
                bail!(
                    "{path} is still empty after {} s: a worker died between its shm_open and \
                     its ftruncate? 'sem-demo remove --name {}' removes it",
                    INIT_PATIENCE.as_secs(),
                    name.trim_end_matches(".counter")
                );
            }
            if st.st_size != 0 {
                bail!(
                    "{path} is {} bytes, where sem-demo's counter is {len}: another program's \
                     shared memory under the same name (a shm-demo segment?), refusing to use it",
                    st.st_size
                );
            }
            check_stop()?;
            sleep(Duration::from_millis(5));
        }
        let map = CounterMap::map(&fd, len)?;
        check_magic(map.get(), &path)?;
        say.step(format!(
            "shm_open({name}, O_RDWR): the existing counter ({path}: yours, {len} bytes, magic ok)"
        ));
        Ok(map)
    }

    fn map(fd: &std::os::fd::OwnedFd, len: usize) -> Result<CounterMap> {
        let size = NonZeroUsize::new(len).expect("nonzero");
        // SAFETY: a new mapping at a kernel-chosen address of an object
        // exactly `len` bytes long (made or checked so by the caller).
        let base = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .context("mmap(MAP_SHARED)")?;
        Ok(CounterMap { base, len })
    }

    pub fn get(&self) -> &Counter {
        // SAFETY: page-aligned mapping of size_of::<Counter>() bytes; all
        // fields are atomics.
        unsafe { self.base.cast::<Counter>().as_ref() }
    }
}

impl Drop for CounterMap {
    /// munmap(2): the segment itself stays (the other workers use it)
    /// until `remove` unlinks it.
    fn drop(&mut self) {
        // SAFETY: the mapping made in map(); nothing borrows it now.
        let _ = unsafe { munmap(self.base, self.len) };
    }
}

pub fn counter_name(name: &str) -> String {
    format!("{name}.counter")
}

// ---------------------------------------------------------------------------
// The roles
// ---------------------------------------------------------------------------

// ANCHOR: worker
/// `worker`: `iterations` increments of the counter `/NAME.counter`, each
/// under the lock `/NAME` (both created if absent).
pub fn worker(name: &str, iterations: u64, patience: Duration, say: &Narrator) -> Result<()> {
    let (sem, created) = open_or_create(name, 1, say)?;
    let counter = match CounterMap::open_or_create(&counter_name(name), say) {
        Ok(counter) => counter,
        Err(e) => {
            if created {
                // A failed create leaves nothing: not even the semaphore.
                let _ = psem::unlink(name); // sem_unlink(3)
            }
            return Err(e);
        }
    };
    let shared = counter.get();
    if let Some(note) = common::peer::pidfd_note() {
        say.step(note); // Linux before 5.3: holders checked by pid only
    }
    let start = Instant::now();
    let mut recovered = 0;
    for _ in 0..iterations {
        if lock_or_recover(sem.sem(), &shared.holder, patience, say)? {
            recovered += 1;
        }
        let value = shared.value.load(Ordering::Relaxed);
        shared.value.store(value + 1, Ordering::Relaxed);
        unlock(sem.sem(), &shared.holder)?;
    }
    say.step(format!(
        "{iterations} increments under {name} in {}; the counter is now {} (recovered the lock \
         from a dead holder {recovered} time(s)); 'sem-demo remove --name {name}' removes both",
        secs(start.elapsed()),
        shared.value.load(Ordering::Relaxed)
    ));
    Ok(())
}
// ANCHOR_END: worker

/// `wait`: take one from `/NAME` (created with `value` if absent).
pub fn wait(name: &str, timeout: Option<Duration>, value: u32, say: &Narrator) -> Result<()> {
    let (sem, _) = open_or_create(name, value, say)?;
    let start = Instant::now();
    say.step(format!(
        "sem_timedwait({name}): value {}, waiting{}",
        sem.sem().value()?,
        timeout.map_or(" until a post or Ctrl-C".to_string(), |t| format!(
            " at most {} s",
            t.as_secs()
        ))
    ));
    loop {
        check_stop()?;
        // sem_timedwait in ticks: each one looks for Ctrl-C and --timeout.
        match sem.sem().wait_for(LOCK_TICK).context("sem_timedwait")? {
            Wait::Acquired => break,
            Wait::Interrupted | Wait::TimedOut => {}
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            bail!(
                "sem_timedwait({name}): ETIMEDOUT after {}: nobody posted",
                secs(start.elapsed())
            );
        }
    }
    say.step(format!(
        "acquired after {}; value now {}",
        secs(start.elapsed()),
        sem.sem().value()?
    ));
    Ok(())
}

/// `post`: add one to `/NAME`.
pub fn post(name: &str, say: &Narrator) -> Result<()> {
    let sem = NamedSem::open_own(name).map_err(|e| refused(name, e))?;
    // sem_post: never blocks; EOVERFLOW at SEM_VALUE_MAX.
    sem.sem()
        .post()
        .with_context(|| format!("sem_post({name})"))?;
    say.step(format!(
        "sem_post({name}): value now {}",
        sem.sem().value()?
    ));
    Ok(())
}

/// `remove`: `sem_unlink` the semaphore and `shm_unlink` its counter.
pub fn remove(name: &str, say: &Narrator) -> Result<()> {
    // Checked first: sem_unlink would remove anyone's file (as root).
    let sem = NamedSem::open_own(name).map_err(|e| match e {
        OpenError::Sys(Errno::ENOENT) => anyhow::anyhow!("sem_unlink({name}): no such semaphore"),
        e => refused(name, e),
    })?;
    drop(sem); // munmap: open_own mapped the file itself
    // sem_unlink: the name goes now; processes that have it open keep
    // their semaphore until they close it.
    psem::unlink(name).with_context(|| format!("sem_unlink({name})"))?;
    say.step(format!(
        "sem_unlink({name}): removed {}",
        psem::sem_path(name)
    ));
    let counter = counter_name(name);
    if !counter_removable(&counter)? {
        return Ok(());
    }
    // shm_unlink(3): the counter's name, checked just above.
    shm_unlink(counter.as_str()).with_context(|| format!("shm_unlink({counter})"))?;
    say.step(format!("shm_unlink({counter}): removed the worker counter"));
    Ok(())
}
