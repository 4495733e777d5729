//! # sem-demo: semaphores between processes
//!
//! A semaphore is a counter the kernel keeps for you: *post* adds one,
//! *wait* takes one, and a wait on zero sleeps until someone posts. With
//! the counter starting at 1 it is a lock (mutual exclusion); starting at 0
//! it is a signal ("I am done, you may go"). Shared memory has no rules of
//! its own, so semaphores are what make it safe.
//!
//! | property      | POSIX named (`sem_open`) | POSIX unnamed (`sem_init`)   | System V set (`semget`)      |
//! |---------------|--------------------------|------------------------------|------------------------------|
//! | lives in      | `/dev/shm/sem.NAME`      | your (shared) memory         | the kernel, by key/id        |
//! | who can use it| anyone who can open it   | processes mapping the memory | anyone with the key and mode |
//! | per call      | one semaphore            | one semaphore                | several, atomically          |
//! | crash of holder | stays taken            | stays taken                  | undone with `SEM_UNDO`       |
//! | persistence   | until `sem_unlink`       | as long as the memory        | until `IPC_RMID`             |
//!
//! ## Run it
//!
//! ```text
//! cargo run -p sem-demo                          # the whole story, six steps
//! cargo run -p sem-demo -- --workers 8 --iterations 10000
//! cargo run -p sem-demo -- worker --name /demo   # in several terminals at once
//! cargo run -p sem-demo -- wait --name /demo-go --timeout 30   # terminal 1
//! cargo run -p sem-demo -- post --name /demo-go                # terminal 2
//! cargo run -p sem-demo -- remove --name /demo
//! ```
//!
//! `sysv worker|post|wait|remove --key PATH` do the same with a System V
//! set found by `ftok(PATH)`.
//!
//! ## What to look for
//!
//! - updates lost without a lock, none with one, and what the lock costs;
//! - a semaphore at 0 ordering two processes; `EAGAIN` and `ETIMEDOUT`;
//! - several System V semaphores changed in one atomic `semop`;
//! - a lock holder killed by SIGKILL: given back by `SEM_UNDO`, stuck with
//!   POSIX until a timed wait notices the holder is dead.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `peer`, `psem`,
//! `report`, `sysv_sem`.

use std::cell::UnsafeCell;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{SysvGuard, SysvKind, check_stop, stop_on_signals, sysv_remove, unique_name};
use common::cli::{Args, MAX_COUNT};
use common::error::{self, usage};
use common::peer::{PeerExit, alive, wait_pid};
use common::psem::{self, NamedSem, SharedSem, Wait};
use common::report::{Narrator, Stream, Summary};
use common::sysv_sem::{SemSet, ftok};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap, shm_open, shm_unlink};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Pid, fork, ftruncate};

const USAGE: &str = "\
sem-demo: semaphores for mutual exclusion and signalling between processes

USAGE:
    sem-demo [--workers K] [--iterations N] [--quiet]
        The whole story: a race without a lock, a POSIX named and an unnamed
        semaphore as locks, a semaphore as a signal, System V sets, and a lock
        holder killed by SIGKILL.
    sem-demo worker --name /NAME [--iterations N]
        Add 1 to a shared counter N times under the lock /NAME (created with
        value 1 if absent; the counter lives in shared memory /NAME.counter).
    sem-demo wait --name /NAME [--timeout SECS] [--value V]
        Take one from /NAME, waiting at most SECS (default: until Ctrl-C);
        creates it with value V (default 0) if absent.
    sem-demo post --name /NAME
        Add one to /NAME.
    sem-demo remove --name /NAME
        sem_unlink /NAME (and its counter, if any).
    sem-demo sysv worker|wait|post|remove --key PATH [...]
        The same with a System V semaphore set found by ftok(PATH), which must
        be an existing file.

OPTIONS:
    --workers K       story: worker processes (default 4; 1 to 64)
    --iterations N    increments per worker (default 100000; 1 to 1000000000)
    --name /NAME      a slash, then up to 250 characters without a slash
    --key PATH        System V: an existing file whose ftok() key names the set
    --timeout SECS    wait: give up after SECS seconds (1 to 86400)
    --value V         wait: initial value if it creates the semaphore (0 to SEM_VALUE_MAX)
    --quiet           only the steps and the summary
    -h, --help        this text

EXIT STATUS: 0 success, 1 runtime error (a wait that timed out, lost updates
under a lock), 2 bad command line, 128+N stopped by signal N (130 for Ctrl-C).
";

/// How long any one lock acquisition may take before we suspect a dead
/// holder (POSIX) or give up (the story's workers).
const LOCK_TICK: Duration = Duration::from_millis(100);
/// A lock taken with no holder recorded for this long has lost its holder.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);
/// A worker that cannot get the lock for this long reports it.
const LOCK_PATIENCE: Duration = Duration::from_secs(60);
/// How long the story waits for its worker processes.
const WORKERS_TIMEOUT: Duration = Duration::from_secs(300);
/// ftok project byte for sem-demo's System V objects.
const PROJECT: u8 = b'M';

fn main() -> ExitCode {
    error::run("sem-demo", run)
}

// ---------------------------------------------------------------------------
// Memory shared by the story's forked processes
// ---------------------------------------------------------------------------

/// One page shared by the parent and its forked workers.
#[repr(C)]
struct Shared {
    /// The counter the workers increment.
    counter: AtomicU64,
    /// Pid of the process holding the POSIX lock, 0 if none: what lets a
    /// waiter tell a slow holder from a dead one.
    holder: AtomicI32,
    /// An unnamed semaphore used as a lock (steps 3 and 6).
    lock: UnsafeCell<libc::sem_t>,
    /// An unnamed semaphore used as a signal (step 4).
    signal: UnsafeCell<libc::sem_t>,
}

/// An anonymous MAP_SHARED mapping: after fork, parent and children see the
/// same page (MAP_PRIVATE would give each a copy-on-write copy).
struct SharedPage {
    base: NonNull<libc::c_void>,
    len: usize,
}

impl SharedPage {
    fn new() -> Result<SharedPage> {
        let len = size_of::<Shared>().next_multiple_of(4096);
        let size = NonZeroUsize::new(len).expect("nonzero");
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address
        // overlaps nothing; it is zero-filled, valid for Shared's atomics.
        let base = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .context("mmap(MAP_SHARED|MAP_ANONYMOUS)")?;
        Ok(SharedPage { base, len })
    }

    fn get(&self) -> &Shared {
        // SAFETY: the mapping is page-aligned and at least size_of::<Shared>()
        // long; Shared is atomics and UnsafeCells, valid for shared mutation.
        unsafe { self.base.cast::<Shared>().as_ref() }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in new(); nothing borrows it now.
        let _ = unsafe { munmap(self.base, self.len) };
    }
}

/// How a worker protects its increment.
#[derive(Clone, Copy)]
enum Lock {
    None,
    Posix(SharedSem),
}

/// The story's worker: `iterations` increments of `counter`. Without a lock
/// it is a read-modify-write in two steps, which another process can slip
/// between: two workers read 41, both store 42, and one increment is lost.
fn increment(shared: &Shared, lock: Lock, iterations: u64) -> Result<()> {
    for _ in 0..iterations {
        if let Lock::Posix(sem) = lock {
            take(sem)?;
        }
        // Deliberately a load then a store, not fetch_add: this is what
        // `counter += 1` on plain shared memory does.
        let value = shared.counter.load(Ordering::Relaxed);
        shared.counter.store(value + 1, Ordering::Relaxed);
        if let Lock::Posix(sem) = lock {
            sem.post().context("sem_post")?;
        }
    }
    Ok(())
}

/// Take a POSIX semaphore, waiting at most LOCK_PATIENCE.
fn take(sem: SharedSem) -> Result<()> {
    let start = Instant::now();
    loop {
        match sem.wait_for(LOCK_TICK).context("sem_timedwait")? {
            Wait::Acquired => return Ok(()),
            Wait::Interrupted | Wait::TimedOut => check_stop()?,
        }
        if start.elapsed() > LOCK_PATIENCE {
            bail!("could not get the lock in {LOCK_PATIENCE:?}");
        }
    }
}

/// Fork `workers` children running `work`, wait for all, return the time.
fn run_workers(workers: u64, say: &Narrator, work: impl Fn() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    let mut pids = Vec::new();
    for _ in 0..workers {
        // SAFETY: sem-demo is single-threaded: the child may do anything.
        match unsafe { fork() }.context("fork()")? {
            ForkResult::Child => {
                let code = match work() {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("sem-demo worker {}: {e:#}", std::process::id());
                        1
                    }
                };
                // exit, not return: the rest of main belongs to the parent.
                std::process::exit(code);
            }
            ForkResult::Parent { child } => pids.push(child),
        }
    }
    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    say.message(format!(
        "forked {workers} workers: pids {}",
        list.join(", ")
    ));
    let mut failed = Vec::new();
    for pid in pids {
        let exit = wait_pid(pid, WORKERS_TIMEOUT)?;
        if !exit.success() {
            failed.push(format!("worker {pid} {exit}"));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(start.elapsed())
}

// ---------------------------------------------------------------------------
// The story
// ---------------------------------------------------------------------------

struct StoryOptions {
    workers: u64,
    iterations: u64,
    quiet: bool,
}

fn story(opts: &StoryOptions) -> Result<()> {
    let say = Narrator::new("parent", opts.quiet, Stream::Stdout);
    let expected = opts.workers * opts.iterations;
    say.line(format!(
        "sem-demo: {} worker processes x {} increments of one shared counter (parent pid {})",
        opts.workers,
        opts.iterations,
        std::process::id()
    ));
    let page = SharedPage::new()?;
    let shared = page.get();

    say.line("\n== 1. The race: no lock ==");
    let took = run_workers(opts.workers, &say, || {
        increment(shared, Lock::None, opts.iterations)
    })?;
    let actual = shared.counter.load(Ordering::Relaxed);
    let lost = expected - actual;
    say.step(format!(
        "expected {expected}, got {actual}: {lost} updates lost in {}",
        secs(took)
    ));
    if lost == 0 {
        say.step(
            "no update was lost this time; the race is still there (two loads of the same value \
             make one store overwrite the other): run again or raise --iterations",
        );
    } else {
        say.step("each lost update is two workers loading the same value and both storing value+1");
    }

    say.line("\n== 2. A POSIX named semaphore as a lock ==");
    let name = format!("/{}", unique_name("sem-demo"));
    let named = NamedSem::create(&name, 0o600, 1)
        .with_context(|| format!("sem_open({name}, O_CREAT|O_EXCL, 0600, 1)"))?;
    // The name is removed on every way out; the workers keep their handle.
    let _unlink = NamedUnlink(name.clone());
    say.step(format!(
        "sem_open({name}, O_CREAT|O_EXCL, 0600, 1): value 1, a lock; it lives at /dev/shm/sem.{}",
        &name[1..]
    ));
    shared.counter.store(0, Ordering::Relaxed);
    let sem = named.sem();
    let named_took = run_workers(opts.workers, &say, || {
        increment(shared, Lock::Posix(sem), opts.iterations)
    })?;
    let named_count = shared.counter.load(Ordering::Relaxed);
    say.step(format!(
        "sem_wait / increment / sem_post: expected {expected}, got {named_count} in {}",
        secs(named_took)
    ));
    drop(named);
    psem::unlink(&name).with_context(|| format!("sem_unlink({name})"))?;
    say.step(format!("sem_close, sem_unlink({name}): the name is gone"));

    say.line("\n== 3. An unnamed semaphore inside the shared memory ==");
    // SAFETY: `lock` lies in our shared page (aligned, sem_t-sized), which
    // outlives every use; no other process uses it until we fork.
    let unnamed = unsafe { SharedSem::init(shared.lock.get(), 1) }.context("sem_init(lock)")?;
    say.step("sem_init(lock, pshared=1, 1): a sem_t in the MAP_SHARED page the workers inherit");
    shared.counter.store(0, Ordering::Relaxed);
    let unnamed_took = run_workers(opts.workers, &say, || {
        increment(shared, Lock::Posix(unnamed), opts.iterations)
    })?;
    let unnamed_count = shared.counter.load(Ordering::Relaxed);
    say.step(format!(
        "expected {expected}, got {unnamed_count} in {} (the race without a lock took {})",
        secs(unnamed_took),
        secs(took)
    ));

    say.line("\n== 4. A semaphore as a signal: ordering two processes ==");
    signalling(shared, &say)?;

    say.line("\n== 5. System V semaphore sets: several counters, one atomic semop ==");
    sysv_sets(&say)?;

    say.line("\n== 6. The crash hazard: a lock holder killed by SIGKILL ==");
    crash_sysv(&say)?;
    crash_posix(shared, unnamed, &say)?;
    // SAFETY: every process that used them has exited.
    unsafe {
        let _ = unnamed.destroy();
    }

    let locked_lost = (expected - named_count) + (expected - unnamed_count);
    say.line("");
    say.line(Summary {
        mechanism: "sem",
        messages: 2 * expected,
        bytes: 0,
        errors: locked_lost,
        elapsed: named_took + unnamed_took,
    });
    if locked_lost > 0 {
        bail!("{locked_lost} updates lost even under a lock");
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Removes a named semaphore's name on drop.
struct NamedUnlink(String);

impl Drop for NamedUnlink {
    fn drop(&mut self) {
        let _ = psem::unlink(&self.0);
    }
}

/// Step 4: the child does something, then posts; the parent's wait cannot
/// return before that post, so the child's step happens first.
fn signalling(shared: &Shared, say: &Narrator) -> Result<()> {
    // SAFETY: `signal` lies in the shared page; nobody else uses it yet.
    let done = unsafe { SharedSem::init(shared.signal.get(), 0) }.context("sem_init(signal)")?;
    say.step("sem_init(signal, pshared=1, 0): value 0, so a wait blocks until a post");
    shared.counter.store(0, Ordering::Relaxed);
    // SAFETY: single-threaded, as in run_workers.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            sleep(Duration::from_millis(300)); // the "first step" takes a while
            shared.counter.store(42, Ordering::Relaxed);
            let code = i32::from(done.post().is_err());
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    };
    say.step(format!(
        "forked pid {child}: it works 300 ms, stores 42, then posts"
    ));
    say.step(format!(
        "sem_getvalue = {}",
        done.value().context("sem_getvalue")?
    ));
    if done.try_wait().context("sem_trywait")? {
        bail!("sem_trywait succeeded on a semaphore at 0");
    }
    say.step("sem_trywait → EAGAIN: the value is 0 and trywait never waits");
    match done
        .wait_for(Duration::from_millis(50))
        .context("sem_timedwait")?
    {
        Wait::TimedOut => say.step("sem_timedwait(50 ms) → ETIMEDOUT: no post yet"),
        other => bail!("sem_timedwait(50 ms) on a semaphore at 0: {other:?}"),
    }
    let start = Instant::now();
    take(done)?;
    let seen = shared.counter.load(Ordering::Relaxed);
    say.step(format!(
        "sem_timedwait returned after {:.0} ms, with the child's post; the counter reads {seen}: \
         the child's store happened before our load",
        start.elapsed().as_secs_f64() * 1e3
    ));
    let exit = wait_pid(child, WORKERS_TIMEOUT)?;
    if seen != 42 || !exit.success() {
        bail!("the signal did not order the two processes (counter {seen}, child {exit})");
    }
    // SAFETY: the only other user has exited.
    unsafe {
        let _ = done.destroy();
    }
    Ok(())
}

/// Step 5: GETVAL/SETVAL/GETNCNT/GETPID and a multi-semaphore semop.
fn sysv_sets(say: &Narrator) -> Result<()> {
    let set = SemSet::create(libc::IPC_PRIVATE, 3, 0o600).context("semget(IPC_PRIVATE, 3)")?;
    let _remove = SysvGuard::new(SysvKind::SemaphoreSet, set.id);
    for (i, value) in [(0, 1), (1, 2), (2, 0)] {
        set.set_value(i, value).context("semctl(SETVAL)")?;
    }
    say.step(format!(
        "semget(IPC_PRIVATE, 3, 0600) = semid {}; semctl(SETVAL): [1, 2, 0]",
        set.id
    ));
    // A child that waits on semaphore 2, so GETNCNT has something to count.
    // SAFETY: single-threaded, as in run_workers.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            let ok = matches!(
                set.op(2, -1, false, Duration::from_secs(60)),
                Ok(Wait::Acquired)
            );
            std::process::exit(i32::from(!ok));
        }
        ForkResult::Parent { child } => child,
    };
    let start = Instant::now();
    while set.waiting(2).context("semctl(GETNCNT)")? == 0
        && start.elapsed() < Duration::from_secs(30)
    {
        sleep(Duration::from_millis(5));
    }
    say.step(format!(
        "child pid {child} waits on semaphore 2: semctl(GETNCNT, 2) = {}",
        set.waiting(2)?
    ));
    // One call, two changes: both happen, or (if either would go below 0)
    // neither, and the caller waits. Two separate calls could interleave
    // with another process's and deadlock.
    set.ops(&[(0, -1), (1, -1)], false, Duration::from_secs(5))
        .context("semop([0: -1, 1: -1])")?;
    say.step(format!(
        "semop([0: -1, 1: -1]) in one call: values now [{}, {}, {}], GETPID(0) = {} (us)",
        set.value(0)?,
        set.value(1)?,
        set.value(2)?,
        set.last_pid(0)?
    ));
    set.op(2, 1, false, Duration::from_secs(5))
        .context("semop([2: +1])")?;
    let exit = wait_pid(child, WORKERS_TIMEOUT)?;
    say.step(format!(
        "semop([2: +1]) woke the child, which {exit}; GETPID(2) = {}",
        set.last_pid(2)?
    ));
    if !exit.success() {
        bail!("the waiting child {exit}");
    }
    say.step(format!("semctl(IPC_RMID) for semid {}", set.id));
    Ok(())
}

/// Fork a child that takes a lock with `acquire` and then sleeps forever;
/// SIGKILL it once it holds the lock. `held` tells when it does.
fn kill_holder(acquire: impl Fn() -> bool, held: impl Fn() -> bool, say: &Narrator) -> Result<Pid> {
    // SAFETY: single-threaded, as in run_workers.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            if !acquire() {
                std::process::exit(1);
            }
            loop {
                sleep(Duration::from_secs(1)); // holding the lock
            }
        }
        ForkResult::Parent { child } => child,
    };
    let start = Instant::now();
    while !held() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = kill(child, Signal::SIGKILL);
            let _ = wait_pid(child, WORKERS_TIMEOUT);
            bail!("the child did not take the lock");
        }
        sleep(Duration::from_millis(5));
    }
    kill(child, Signal::SIGKILL).context("kill(SIGKILL)")?;
    let exit = wait_pid(child, WORKERS_TIMEOUT)?;
    say.step(format!(
        "child pid {child} took the lock; SIGKILL: it {exit}, holding it"
    ));
    if exit != PeerExit::Killed(Signal::SIGKILL) {
        bail!("the lock holder {exit}, expected SIGKILL");
    }
    Ok(child)
}

/// Step 6, System V: SEM_UNDO gives the lock back.
fn crash_sysv(say: &Narrator) -> Result<()> {
    let set = SemSet::create(libc::IPC_PRIVATE, 1, 0o600).context("semget(IPC_PRIVATE, 1)")?;
    let _remove = SysvGuard::new(SysvKind::SemaphoreSet, set.id);
    set.set_value(0, 1).context("semctl(SETVAL)")?;
    say.step(
        "System V: a set with one semaphore at 1; the child takes it with semop(-1, SEM_UNDO)",
    );
    kill_holder(
        || {
            matches!(
                set.op(0, -1, true, Duration::from_secs(30)),
                Ok(Wait::Acquired)
            )
        },
        || set.value(0).is_ok_and(|v| v == 0),
        say,
    )?;
    let value = set.value(0).context("semctl(GETVAL)")?;
    say.step(format!(
        "semctl(GETVAL) = {value}: the kernel undid the dead child's -1, so the lock is free again"
    ));
    if value != 1 {
        bail!("SEM_UNDO did not restore the lock (value {value})");
    }
    Ok(())
}

/// Step 6, POSIX: no undo; recovery by timed wait plus a liveness check.
fn crash_posix(shared: &Shared, lock: SharedSem, say: &Narrator) -> Result<()> {
    say.step("POSIX: the child takes the unnamed lock (value 1 → 0) and records its pid as holder");
    shared.holder.store(0, Ordering::Relaxed);
    kill_holder(
        || {
            let ok = take(lock).is_ok();
            shared
                .holder
                .store(std::process::id() as i32, Ordering::Relaxed);
            ok
        },
        || shared.holder.load(Ordering::Relaxed) != 0,
        say,
    )?;
    match lock
        .wait_for(Duration::from_millis(200))
        .context("sem_timedwait")?
    {
        Wait::TimedOut => say.step(format!(
            "sem_getvalue = {}; sem_timedwait(200 ms) → ETIMEDOUT: still taken. POSIX \
             semaphores have no undo: a plain sem_wait would block forever here",
            lock.value()?
        )),
        other => bail!("the dead holder's POSIX lock was free: {other:?}"),
    }
    let recovered = lock_or_recover(lock, &shared.holder, say)?;
    if !recovered {
        bail!("expected to recover the lock from its dead holder");
    }
    // Now ours; a real program would check the data the dead holder may
    // have left half-updated before going on.
    unlock(lock, &shared.holder)?;
    say.step(format!(
        "sem_post: the lock is free again, value {}",
        lock.value()?
    ));
    Ok(())
}

/// Take `lock`; while it is taken, check every tick whether the holder
/// (whose pid is in `holder`) still lives. If it died, take the lock over.
/// Returns whether the lock was recovered from a dead holder.
///
/// A holder killed between its sem_wait and recording its pid leaves the
/// lock taken with no pid: after ORPHAN_GRACE (far longer than any critical
/// section here) that counts as a dead holder too. Robust pthread mutexes
/// (`PTHREAD_MUTEX_ROBUST`, `EOWNERDEAD`) close that gap in the kernel;
/// semaphores know nothing of owners, so this is the best a waiter can do.
fn lock_or_recover(lock: SharedSem, holder: &AtomicI32, say: &Narrator) -> Result<bool> {
    let me = std::process::id() as i32;
    let mut unowned_since: Option<Instant> = None;
    loop {
        check_stop()?;
        match lock.wait_for(LOCK_TICK).context("sem_timedwait")? {
            Wait::Acquired => {
                holder.store(me, Ordering::Relaxed);
                return Ok(false);
            }
            Wait::Interrupted => continue,
            Wait::TimedOut => {}
        }
        let pid = holder.load(Ordering::Relaxed);
        let dead = if pid != 0 {
            unowned_since = None;
            !alive(pid)
        } else {
            // Taken (value 0) with nobody recorded as holder: start or
            // continue the grace period.
            let taken = lock.value().context("sem_getvalue")? == 0;
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
                format!("holder pid {pid} is dead (kill(pid, 0) → ESRCH, or a zombie)")
            };
            say.step(format!("{who}: taking the lock over"));
            return Ok(true);
        }
    }
}

/// Give back a lock taken with [`lock_or_recover`]: post first, then clear
/// our pid only if it is still ours (a new holder may already have written
/// its own).
fn unlock(lock: SharedSem, holder: &AtomicI32) -> Result<()> {
    lock.post().context("sem_post")?;
    let me = std::process::id() as i32;
    let _ = holder.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
    Ok(())
}

// ---------------------------------------------------------------------------
// Roles for several terminals
// ---------------------------------------------------------------------------

/// The counter object of `sem-demo worker --name /NAME`.
#[repr(C)]
struct Counter {
    value: AtomicU64,
    holder: AtomicI32,
}

/// A named shared-memory object holding a Counter; unmapped on drop.
struct CounterMap {
    base: NonNull<libc::c_void>,
    len: usize,
}

impl CounterMap {
    fn open_or_create(name: &str) -> Result<CounterMap> {
        let fd = shm_open(
            name,
            OFlag::O_CREAT | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .with_context(|| format!("shm_open({name}, O_CREAT|O_RDWR, 0600)"))?;
        let len = size_of::<Counter>();
        // Growing from 0 zero-fills; a second worker's ftruncate to the same
        // size changes nothing.
        ftruncate(&fd, len as libc::off_t).with_context(|| format!("ftruncate({name})"))?;
        let size = NonZeroUsize::new(len).expect("nonzero");
        // SAFETY: a new mapping at a kernel-chosen address of an object at
        // least `len` long (just truncated to it).
        let base = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .context("mmap(MAP_SHARED)")?;
        Ok(CounterMap { base, len })
    }

    fn get(&self) -> &Counter {
        // SAFETY: page-aligned mapping of size_of::<Counter>() bytes; all
        // fields are atomics.
        unsafe { self.base.cast::<Counter>().as_ref() }
    }
}

impl Drop for CounterMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in open_or_create; nothing borrows it now.
        let _ = unsafe { munmap(self.base, self.len) };
    }
}

fn counter_name(name: &str) -> String {
    format!("{name}.counter")
}

fn open_hint(name: &str, e: Errno) -> anyhow::Error {
    match e {
        Errno::ENOENT => anyhow::anyhow!(
            "sem_open({name}): no such semaphore; create it with 'sem-demo wait --name {name}' \
             or 'sem-demo worker --name {name}'"
        ),
        Errno::EACCES => anyhow::anyhow!(
            "sem_open({name}): permission denied (EACCES): it belongs to another user (mode 0600)"
        ),
        e => anyhow::Error::new(e).context(format!("sem_open({name})")),
    }
}

/// Open `name`, creating it with `value` if it does not exist yet.
fn open_or_create(name: &str, value: u32, say: &Narrator) -> Result<NamedSem> {
    match NamedSem::create(name, 0o600, value) {
        Ok(sem) => {
            say.step(format!(
                "sem_open({name}, O_CREAT|O_EXCL, 0600, {value}): created"
            ));
            Ok(sem)
        }
        Err(Errno::EEXIST) => {
            let sem = NamedSem::open(name).map_err(|e| open_hint(name, e))?;
            say.step(format!("sem_open({name}): opened the existing semaphore"));
            Ok(sem)
        }
        Err(e) => Err(open_hint(name, e)),
    }
}

fn worker_role(name: &str, iterations: u64, say: &Narrator) -> Result<()> {
    let sem = open_or_create(name, 1, say)?;
    let counter = CounterMap::open_or_create(&counter_name(name))?;
    let shared = counter.get();
    let start = Instant::now();
    let mut recovered = 0;
    for _ in 0..iterations {
        if lock_or_recover(sem.sem(), &shared.holder, say)? {
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

fn wait_role(name: &str, timeout: Option<Duration>, value: u32, say: &Narrator) -> Result<()> {
    let sem = open_or_create(name, value, say)?;
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

fn post_role(name: &str, say: &Narrator) -> Result<()> {
    let sem = NamedSem::open(name).map_err(|e| open_hint(name, e))?;
    sem.sem()
        .post()
        .with_context(|| format!("sem_post({name})"))?;
    say.step(format!(
        "sem_post({name}): value now {}",
        sem.sem().value()?
    ));
    Ok(())
}

fn remove_role(name: &str, say: &Narrator) -> Result<()> {
    match psem::unlink(name) {
        Ok(()) => say.step(format!("sem_unlink({name}): removed")),
        Err(Errno::ENOENT) => bail!("sem_unlink({name}): no such semaphore"),
        Err(e) => return Err(e).with_context(|| format!("sem_unlink({name})")),
    }
    if shm_unlink(counter_name(name).as_str()).is_ok() {
        say.step(format!(
            "shm_unlink({}): removed the worker counter",
            counter_name(name)
        ));
    }
    Ok(())
}

// --- the same roles with a System V set of one semaphore -------------------

fn sysv_key(path: &Path) -> Result<libc::key_t> {
    ftok(path, PROJECT).with_context(|| {
        format!(
            "ftok({}, 'M'): --key must name an existing file, e.g. touch /tmp/demo.key",
            path.display()
        )
    })
}

fn sysv_open_or_create(path: &Path, value: i32, say: &Narrator) -> Result<SemSet> {
    let key = sysv_key(path)?;
    match SemSet::create(key, 1, 0o600) {
        Ok(set) => {
            set.set_value(0, value).context("semctl(SETVAL)")?;
            say.step(format!(
                "semget({key:#010x}, 1, IPC_CREAT|IPC_EXCL|0600) = semid {}; SETVAL {value}",
                set.id
            ));
            Ok(set)
        }
        Err(Errno::EEXIST) => {
            let set = SemSet::open(key).context("semget(key, 0, 0)")?;
            say.step(format!(
                "semget({key:#010x}) = semid {}: the existing set",
                set.id
            ));
            Ok(set)
        }
        Err(e) => Err(e).context("semget(IPC_CREAT|IPC_EXCL)"),
    }
}

fn sysv_open(path: &Path) -> Result<SemSet> {
    let key = sysv_key(path)?;
    SemSet::open(key).map_err(|e| match e {
        Errno::ENOENT => anyhow::anyhow!(
            "no System V semaphore set for --key {p}: create it with 'sem-demo sysv wait --key {p}' \
             or 'sem-demo sysv worker --key {p}'",
            p = path.display()
        ),
        e => anyhow::Error::new(e).context("semget(key, 0, 0)"),
    })
}

fn sysv_role(role: &str, path: &Path, opts: &RoleOptions, say: &Narrator) -> Result<()> {
    match role {
        "worker" => {
            let set = sysv_open_or_create(path, 1, say)?;
            // The counter: a System V shared memory segment with the same key.
            let key = sysv_key(path)?;
            // SAFETY: shmget takes no pointers.
            let id = Errno::result(unsafe {
                libc::shmget(key, size_of::<AtomicU64>(), libc::IPC_CREAT | 0o600)
            })
            .context("shmget(key, 8, IPC_CREAT|0600)")?;
            // SAFETY: attach at a kernel-chosen address.
            let base = unsafe { libc::shmat(id, std::ptr::null(), 0) };
            if base as isize == -1 {
                return Err(Errno::last()).context("shmat");
            }
            // SAFETY: the segment is at least 8 bytes, page-aligned, zero-filled
            // when new; only accessed atomically.
            let value = unsafe { &*base.cast::<AtomicU64>() };
            let start = Instant::now();
            for _ in 0..opts.iterations {
                // SEM_UNDO: if we die holding the lock, the kernel releases it.
                loop {
                    check_stop()?;
                    match set
                        .op(0, -1, true, LOCK_TICK)
                        .context("semop(-1, SEM_UNDO)")?
                    {
                        Wait::Acquired => break,
                        Wait::Interrupted | Wait::TimedOut => {}
                    }
                }
                let v = value.load(Ordering::Relaxed);
                value.store(v + 1, Ordering::Relaxed);
                set.op(0, 1, true, LOCK_TICK)
                    .context("semop(+1, SEM_UNDO)")?;
            }
            let total = value.load(Ordering::Relaxed);
            // SAFETY: `base` came from shmat above; `value` is not used after.
            unsafe { libc::shmdt(base) };
            say.step(format!(
                "{} increments under semid {} (SEM_UNDO) in {}; the counter (shmid {id}) is now {total}",
                opts.iterations,
                set.id,
                secs(start.elapsed())
            ));
            Ok(())
        }
        "wait" => {
            let set = sysv_open_or_create(path, opts.value as i32, say)?;
            let start = Instant::now();
            loop {
                check_stop()?;
                if let Wait::Acquired = set.op(0, -1, false, LOCK_TICK).context("semtimedop(-1)")? {
                    break;
                }
                if opts.timeout.is_some_and(|t| start.elapsed() >= t) {
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
                set.value(0)?
            ));
            Ok(())
        }
        "post" => {
            let set = sysv_open(path)?;
            set.op(0, 1, false, LOCK_TICK).context("semop(+1)")?;
            say.step(format!(
                "semop(semid {}, +1): value now {}",
                set.id,
                set.value(0)?
            ));
            Ok(())
        }
        _ => {
            let set = sysv_open(path)?;
            sysv_remove(SysvKind::SemaphoreSet, set.id).context("semctl(IPC_RMID)")?;
            say.step(format!("semctl(semid {}, IPC_RMID): removed", set.id));
            let key = sysv_key(path)?;
            // SAFETY: shmget takes no pointers.
            let id = unsafe { libc::shmget(key, 0, 0) };
            if id >= 0 && sysv_remove(SysvKind::SharedMemory, id).is_ok() {
                say.step(format!(
                    "shmctl(shmid {id}, IPC_RMID): removed the worker counter"
                ));
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

struct RoleOptions {
    name: Option<String>,
    key: Option<PathBuf>,
    iterations: u64,
    timeout: Option<Duration>,
    value: u32,
}

fn run() -> Result<()> {
    let mut args = Args::from_env(USAGE)?;
    const ROLES: [&str; 4] = ["worker", "wait", "post", "remove"];
    let first = args.role(&["worker", "wait", "post", "remove", "sysv"])?;
    let sysv = first.as_deref() == Some("sysv");
    let role = if sysv { args.role(&ROLES)? } else { first };
    if sysv && role.is_none() {
        return Err(usage(
            "sysv needs a role: worker, wait, post or remove (the story runs System V in step 5 and 6)",
        ));
    }
    let mut story_opts = StoryOptions {
        workers: 4,
        iterations: 100_000,
        quiet: false,
    };
    let mut opts = RoleOptions {
        name: None,
        key: None,
        iterations: 100_000,
        timeout: None,
        value: 0,
    };
    let mut given: Vec<String> = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--workers" => story_opts.workers = args.number("--workers", 1, 64)?,
            "--iterations" => {
                let n = args.number("--iterations", 1, MAX_COUNT)?;
                story_opts.iterations = n;
                opts.iterations = n;
            }
            "--quiet" => story_opts.quiet = true,
            // 240 leaves room for the ".counter" suffix and the "sem."
            // prefix within NAME_MAX (255).
            "--name" => opts.name = Some(args.posix_name("--name", 240)?),
            "--key" => opts.key = Some(PathBuf::from(args.value("--key")?)),
            "--timeout" => {
                opts.timeout = Some(Duration::from_secs(args.number("--timeout", 1, 86_400)?))
            }
            "--value" => opts.value = args.number("--value", 0, psem::value_max())?,
            other => return Err(args.unknown(other)),
        }
        given.push(arg);
    }
    // Options that do not apply are refused, not ignored.
    let allowed: &[&str] = match role.as_deref() {
        None => &["--workers", "--iterations", "--quiet"],
        Some("worker") => &["--name", "--key", "--iterations"],
        Some("wait") => &["--name", "--key", "--timeout", "--value"],
        _ => &["--name", "--key"],
    };
    if let Some(bad) = given.iter().find(|g| !allowed.contains(&g.as_str())) {
        let whom = role
            .as_deref()
            .map_or("the story".to_string(), |r| format!("the {r} role"));
        return Err(usage(format!("{bad} is not an option of {whom}")));
    }
    stop_on_signals()?;
    let Some(role) = role else {
        return story(&story_opts);
    };
    let say = Narrator::new(role.as_str(), false, Stream::Stdout);
    if sysv {
        if opts.name.is_some() {
            return Err(usage(
                "--name is for POSIX semaphores; System V roles take --key PATH",
            ));
        }
        let key = opts.key.clone().ok_or_else(|| {
            usage(format!(
                "sysv {role} needs --key PATH, e.g. --key /tmp/demo.key"
            ))
        })?;
        return sysv_role(&role, &key, &opts, &say);
    }
    if opts.key.is_some() {
        return Err(usage(
            "--key is for System V sets ('sem-demo sysv ...'); POSIX roles take --name /NAME",
        ));
    }
    let name = opts.name.clone().ok_or_else(|| {
        usage(format!(
            "the {role} role needs --name /NAME, e.g. --name /demo"
        ))
    })?;
    match role.as_str() {
        "worker" => worker_role(&name, opts.iterations, &say),
        "wait" => wait_role(&name, opts.timeout, opts.value, &say),
        "post" => post_role(&name, &say),
        _ => remove_role(&name, &say),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_page_holds_the_layout() {
        let page = SharedPage::new().unwrap();
        assert!(page.len >= size_of::<Shared>());
        assert_eq!(page.get().counter.load(Ordering::Relaxed), 0);
    }
}
