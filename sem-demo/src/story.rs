//! The story, one terminal: each step shows one property of semaphores
//! between processes and checks that the kernel did what the narration
//! says. Every step heading is printed from [`story`], in order; each step
//! is one function.
//!
//! The workers are forked children: they inherit one `MAP_SHARED` page
//! ([`Shared`]) that holds the counter they race on, the starting barrier
//! and the unnamed semaphores (`sem_init` with `pshared = 1`).

use std::cell::UnsafeCell;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{SysvGuard, SysvKind, check_stop, unique_name};
use common::peer::PeerExit;
use common::psem::{self, NamedSem, SharedSem, Wait};
use common::report::{Narrator, Stream, Summary};
use common::sysv_sem::SemSet;
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use nix::sys::signal::{Signal, kill};
use nix::time::{ClockId, clock_gettime};

use crate::checks::{Workers, fork_child, now_ns, secs};
use crate::ipc_posix::{lock_or_recover, unlock};
use crate::ipc_sysv::{self, Undo, semop, semops, wait_initialised};
use crate::{INIT_PATIENCE, LOCK_PATIENCE, LOCK_TICK, StoryOptions};

/// How long the story waits for its worker processes.
const WORKERS_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the story's workers wait at the starting barrier for the
/// others to arrive.
const BARRIER_PATIENCE: Duration = Duration::from_secs(30);
/// The story's workers do their increments in this many rounds, each
/// started at a barrier.
const ROUNDS: u64 = 20;
/// How long the last worker at the barrier waits to see another one
/// running at the same time before it says go anyway.
const BEAT_PATIENCE: Duration = Duration::from_millis(200);

pub fn story(opts: &StoryOptions) -> Result<()> {
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
    let race = race(shared, opts, &say)?;

    say.line("\n== 2. A POSIX named semaphore as a lock ==");
    let named = named_lock(shared, opts, &say)?;

    say.line("\n== 3. An unnamed semaphore inside the shared memory ==");
    let (unnamed_lock, unnamed) = unnamed_lock(shared, opts, &race, &say)?;

    say.line("\n== 4. A semaphore as a signal: ordering two processes ==");
    signalling(shared, &say)?;

    say.line("\n== 5. System V semaphore sets: several counters, one atomic semop ==");
    sysv_sets(&say)?;

    say.line("\n== 6. System V's initialisation race: semget, then SETVAL ==");
    sysv_init_race(shared, &say)?;

    say.line("\n== 7. The crash hazard: a lock holder killed by SIGKILL ==");
    crash(shared, unnamed_lock, &say)?;

    say.line("\n== 8. Which clock a timeout counts on: sem_timedwait and sem_clockwait ==");
    clocks(&say)?;

    say.line("\n== 9. A counting semaphore: a pool of N resources ==");
    pool(shared, opts, &say)?;

    let locked_lost = expected.saturating_sub(named.count) + expected.saturating_sub(unnamed.count);
    say.line("");
    say.line(Summary {
        mechanism: "sem",
        messages: 2 * expected,
        bytes: 0,
        errors: locked_lost,
        elapsed: named.run.took + unnamed.run.took,
    });
    if locked_lost > 0 {
        bail!("{locked_lost} updates lost even under a lock");
    }
    Ok(())
}

/// `sem-demo sysv`: the System V half of the story, the same way the POSIX
/// steps run in [`story`]: the race, a System V semaphore as the lock, the
/// set, its initialisation race, and a holder killed under SEM_UNDO.
pub fn story_sysv(opts: &StoryOptions) -> Result<()> {
    let say = Narrator::new("parent", opts.quiet, Stream::Stdout);
    say.line(format!(
        "sem-demo sysv: {} worker processes x {} increments of one shared counter, System V \
         semaphores (parent pid {}); `sem-demo` runs both families side by side",
        opts.workers,
        opts.iterations,
        std::process::id()
    ));
    let page = SharedPage::new()?;
    let shared = page.get();

    say.line("\n== 1. The race: no lock ==");
    race(shared, opts, &say)?;

    say.line("\n== 2. A System V semaphore as a lock: semop -1 and +1 with SEM_UNDO ==");
    let locked = sysv_lock(shared, opts, &say)?;

    say.line("\n== 3. System V semaphore sets: several counters, one atomic semop ==");
    sysv_sets(&say)?;

    say.line("\n== 4. System V's initialisation race: semget, then SETVAL ==");
    sysv_init_race(shared, &say)?;

    say.line("\n== 5. The crash hazard: a lock holder killed by SIGKILL ==");
    crash_sysv(&say)?;

    let locked_expected = opts.workers * (opts.iterations / 10).max(1);
    let lost = locked_expected.saturating_sub(locked.count);
    say.line("");
    say.line(Summary {
        mechanism: "sem-sysv",
        messages: locked_expected,
        bytes: 0,
        errors: lost,
        elapsed: locked.run.took,
    });
    if lost > 0 {
        bail!("{lost} updates lost even under a lock");
    }
    Ok(())
}

/// The System V story's step 2: the workers' increments under semaphore 0
/// of a one-semaphore set, each taken with SEM_UNDO (a worker killed while
/// holding it gives it back).
fn sysv_lock(shared: &Shared, opts: &StoryOptions, say: &Narrator) -> Result<Counted> {
    // A tenth of the increments: every semop is a system call, and a
    // contended one a sleep and a wake-up (tens of µs each here).
    let iterations = (opts.iterations / 10).max(1);
    let expected = opts.workers * iterations;
    // semget(IPC_PRIVATE): a new set nobody else can find; then value 1 and
    // a first semop, so sem_otime says it is ready (step 4 shows why).
    let set = SemSet::create_initialised(libc::IPC_PRIVATE, 0o600, &[1])
        .context("semget(IPC_PRIVATE, 1) + initialisation")?;
    let _remove = SysvGuard::new(SysvKind::SemaphoreSet, set.id); // semctl(IPC_RMID) on drop
    say.step(format!(
        "semget(IPC_PRIVATE, 1, 0600) = semid {}, value 1: a lock the forked workers inherit by id",
        set.id
    ));
    shared.counter.store(0, Ordering::Relaxed);
    let run = run_workers(shared, opts.workers, iterations, say, || {
        increment(shared, Lock::Sysv(set), iterations)
    })?;
    let count = shared.counter.load(Ordering::Relaxed);
    say.step(format!(
        "semop(-1, SEM_UNDO) / increment / semop(+1, SEM_UNDO), {iterations} increments per \
         worker (a tenth): expected {expected}, got {count} \
         ({:.1} ns per increment: every semop is a system call, where a POSIX semaphore enters \
         the kernel only to sleep or wake)",
        run.per_increment
    ));
    Ok(Counted { count, run })
}

/// What a locked step counted, and how long it took.
struct Counted {
    count: u64,
    run: Run,
}

/// Step 1: the workers increment the shared counter with no lock, and
/// updates are lost.
fn race(shared: &Shared, opts: &StoryOptions, say: &Narrator) -> Result<Run> {
    let expected = opts.workers * opts.iterations;
    let race = run_workers(shared, opts.workers, opts.iterations, say, || {
        increment(shared, Lock::None, opts.iterations)
    })?;
    let actual = shared.counter.load(Ordering::Relaxed);
    let lost = expected.saturating_sub(actual);
    say.step(format!(
        "the workers waited for each other at a barrier, then ran at once: expected {expected}, \
         got {actual}: {lost} updates lost ({:.1} ns per increment)",
        race.per_increment
    ));
    if lost > 0 {
        say.step("each lost update is two workers loading the same value and both storing value+1");
    } else {
        say.step(format!(
            "no update was lost this time. The race is still there, but it shows only while two \
             workers run at the same instant, and {} core(s) busy with other programs (or one \
             worker) may let each run its increments alone. Run again, or raise --iterations",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ));
    }
    Ok(race)
}

/// Step 2: the same increments under a named semaphore: none lost.
fn named_lock(shared: &Shared, opts: &StoryOptions, say: &Narrator) -> Result<Counted> {
    let expected = opts.workers * opts.iterations;
    let name = format!("/{}", unique_name("sem-demo"));
    // sem_open(name, O_CREAT|O_EXCL, 0600, 1): a new semaphore at 1, a lock.
    let named = NamedSem::create(&name, 0o600, 1)
        .with_context(|| format!("sem_open({name}, O_CREAT|O_EXCL, 0600, 1)"))?;
    // The name is removed on every way out; the workers keep their handle.
    let _unlink = psem::NameGuard::new(&name); // sem_unlink(3) on drop
    say.step(format!(
        "sem_open({name}, O_CREAT|O_EXCL, 0600, 1): value 1, a lock. It lives in the file {}: \
         a sem_t that every process opening the name maps, in the same directory as shm_open's \
         segments (shm_open(\"/sem.{}\") is this very file)",
        psem::sem_path(&name),
        &name[1..]
    ));
    say.step(
        "post and wait are atomic instructions on that memory; the kernel is entered (futex) \
         only to put a waiter to sleep or to wake one",
    );
    shared.counter.store(0, Ordering::Relaxed);
    let sem = named.sem();
    let run = run_workers(shared, opts.workers, opts.iterations, say, || {
        increment(shared, Lock::Posix(sem), opts.iterations)
    })?;
    let count = shared.counter.load(Ordering::Relaxed);
    say.step(format!(
        "sem_wait / increment / sem_post: expected {expected}, got {count} ({:.1} ns per \
         increment, the lock included)",
        run.per_increment
    ));
    drop(named); // sem_close(3): our mapping of the file goes
    psem::unlink(&name).with_context(|| format!("sem_unlink({name})"))?;
    say.step(format!("sem_close, sem_unlink({name}): the name is gone"));
    Ok(Counted { count, run })
}

/// Step 3: the same under an unnamed semaphore in the shared page. Returns
/// the semaphore too: step 7 uses it again.
fn unnamed_lock(
    shared: &Shared,
    opts: &StoryOptions,
    race: &Run,
    say: &Narrator,
) -> Result<(SharedSem, Counted)> {
    let expected = opts.workers * opts.iterations;
    // sem_init(lock, pshared = 1, 1): pshared, because the sem_t is used by
    // several processes (0 would be for the threads of one).
    // SAFETY: `lock` lies in our shared page (aligned, sem_t-sized), which
    // outlives every use; no other process uses it until we fork.
    let unnamed = unsafe { SharedSem::init(shared.lock.get(), 1) }.context("sem_init(lock)")?;
    say.step("sem_init(lock, pshared=1, 1): a sem_t in the MAP_SHARED page the workers inherit");
    shared.counter.store(0, Ordering::Relaxed);
    let run = run_workers(shared, opts.workers, opts.iterations, say, || {
        increment(shared, Lock::Posix(unnamed), opts.iterations)
    })?;
    let count = shared.counter.load(Ordering::Relaxed);
    say.step(format!(
        "expected {expected}, got {count} ({:.1} ns per increment; without a lock \
         {:.1} ns, wrong)",
        run.per_increment, race.per_increment
    ));
    Ok((unnamed, Counted { count, run }))
}

/// Step 4: the child does something, then posts; the parent's wait cannot
/// return before that post, so the child's step happens first.
fn signalling(shared: &Shared, say: &Narrator) -> Result<()> {
    // SAFETY: `signal` lies in the shared page; nobody else uses it yet.
    let done = unsafe { SharedSem::init(shared.signal.get(), 0) }.context("sem_init(signal)")?;
    say.step("sem_init(signal, pshared=1, 0): value 0, so a wait blocks until a post");
    shared.counter.store(0, Ordering::Relaxed);
    let mut child = fork_child(|| {
        // The "first step" takes a while (in small sleeps, to see a stop).
        for _ in 0..30 {
            check_stop()?;
            sleep(Duration::from_millis(10));
        }
        shared.counter.store(42, Ordering::Relaxed);
        done.post().context("sem_post")
    })?;
    say.step(format!(
        "forked pid {}: it works 300 ms, stores 42, then posts",
        child.pid
    ));
    say.step(format!(
        "sem_getvalue = {}",
        done.value().context("sem_getvalue")?
    ));
    if done.try_wait().context("sem_trywait")? {
        bail!("sem_trywait succeeded on a semaphore at 0");
    }
    say.step("sem_trywait → EAGAIN: the value is 0 and trywait never waits");
    match wait_all_of(done, Duration::from_millis(50))? {
        Wait::Acquired => bail!("sem_timedwait(50 ms) on a semaphore at 0 succeeded"),
        _ => say.step("sem_timedwait(50 ms) → ETIMEDOUT: no post yet"),
    }
    let start = Instant::now();
    // Wait for the post, looking at the child every tick: if it died
    // before posting, no post will ever come.
    loop {
        match done.wait_for(LOCK_TICK).context("sem_timedwait")? {
            Wait::Acquired => break,
            Wait::Interrupted | Wait::TimedOut => check_stop()?,
        }
        if let Some(exit) = child.try_wait()? {
            // It may have posted just before it exited.
            if done.try_wait().context("sem_trywait")? {
                break;
            }
            bail!("the child {exit} without posting");
        }
        if start.elapsed() > LOCK_PATIENCE {
            bail!("no post in {LOCK_PATIENCE:?}");
        }
    }
    let seen = shared.counter.load(Ordering::Relaxed);
    say.step(format!(
        "sem_timedwait returned after {:.0} ms, with the child's post; the counter reads {seen}: \
         the child's store happened before our load",
        start.elapsed().as_secs_f64() * 1e3
    ));
    let exit = child.wait(WORKERS_TIMEOUT)?;
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
    let set = SemSet::create_initialised(libc::IPC_PRIVATE, 0o600, &[1, 2, 0])
        .context("semget(IPC_PRIVATE, 3) + initialisation")?;
    let _remove = SysvGuard::new(SysvKind::SemaphoreSet, set.id);
    say.step(format!(
        "semget(IPC_PRIVATE, 3, 0600) = semid {}, initialised to [1, 2, 0]",
        set.id
    ));
    // A child that waits on semaphore 2, so GETNCNT has something to count.
    let mut child = fork_child(|| {
        if ipc_sysv::take(set, 2, Undo::Keep, Duration::from_secs(60))? {
            Ok(())
        } else {
            bail!("semaphore 2 was not posted in 60 s")
        }
    })?;
    let start = Instant::now();
    while set.waiting(2).context("semctl(GETNCNT)")? == 0
        && start.elapsed() < Duration::from_secs(30)
    {
        check_stop()?;
        sleep(Duration::from_millis(5));
    }
    say.step(format!(
        "child pid {} waits on semaphore 2: semctl(GETNCNT, 2) = {}",
        child.pid,
        set.waiting(2)?
    ));
    // One call, two changes: both happen, or (if either would go below 0)
    // neither, and the caller waits. Two separate calls could interleave
    // with another process's and deadlock.
    semops(set, &[(0, -1), (1, -1)], Undo::Keep, Duration::from_secs(5))
        .context("semop([0: -1, 1: -1])")?;
    say.step(format!(
        "semop([0: -1, 1: -1]) in one call: values now [{}, {}, {}], GETPID(0) = {} (us)",
        set.value(0)?,
        set.value(1)?,
        set.value(2)?,
        set.last_pid(0)?
    ));
    semop(set, 2, 1, Undo::Keep, Duration::from_secs(5)).context("semop([2: +1])")?;
    let exit = child.wait(WORKERS_TIMEOUT)?;
    say.step(format!(
        "semop([2: +1]) woke the child, which {exit}; GETPID(2) = {}",
        set.last_pid(2)?
    ));
    if !exit.success() {
        bail!("the waiting child {exit}");
    }
    nowait_and_zero_waiters(set, say)?;
    say.step(format!("semctl(IPC_RMID) for semid {}", set.id));
    Ok(())
}

/// Step 5, continued: `IPC_NOWAIT` fails at once where a semop would
/// sleep, and a process waiting for zero (`sem_op` 0) is counted by
/// `GETZCNT`. The set's values are [0, 1, 0] here.
fn nowait_and_zero_waiters(set: SemSet, say: &Narrator) -> Result<()> {
    let start = Instant::now();
    if ipc_sysv::semop_nowait(set, 0, -1).context("semop([0: -1], IPC_NOWAIT)")? {
        bail!("semop([0: -1], IPC_NOWAIT) took from a semaphore at 0");
    }
    say.step(format!(
        "semop([0: -1], IPC_NOWAIT) → EAGAIN after {}: semaphore 0 is 0, and IPC_NOWAIT never \
         sleeps (System V's sem_trywait)",
        secs(start.elapsed())
    ));
    // A child that waits until semaphore 1 (now 1) becomes 0: sem_op 0.
    let mut child = fork_child(|| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            check_stop()?;
            if let Wait::Acquired =
                semop(set, 1, 0, Undo::Keep, LOCK_TICK).context("semtimedop([1: 0])")?
            {
                return Ok(());
            }
        }
        bail!("semaphore 1 did not reach 0 in 60 s")
    })?;
    let start = Instant::now();
    while ipc_sysv::zero_waiters(set, 1).context("semctl(GETZCNT)")? == 0 {
        check_stop()?;
        if let Some(exit) = child.try_wait()? {
            bail!("the child {exit} before it waited for zero");
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the child did not wait for zero in 30 s");
        }
        sleep(Duration::from_millis(5));
    }
    let (zcnt, ncnt) = (ipc_sysv::zero_waiters(set, 1)?, set.waiting(1)?);
    say.step(format!(
        "child pid {} waits for semaphore 1 (value {}) to become 0, semop([1: 0]): \
         semctl(GETZCNT, 1) = {zcnt}, semctl(GETNCNT, 1) = {ncnt}",
        child.pid,
        set.value(1)?
    ));
    semop(set, 1, -1, Undo::Keep, Duration::from_secs(5)).context("semop([1: -1])")?;
    let exit = child.wait(WORKERS_TIMEOUT)?;
    if !exit.success() {
        bail!("the child waiting for zero {exit}");
    }
    say.step(format!(
        "semop([1: -1]): semaphore 1 is 0, which wakes the child waiting for zero; it {exit}. \
         A \"wait for zero\" is how one process waits until all the others are done"
    ));
    Ok(())
}

/// Step 6: the System V initialisation race, first lost, then avoided.
///
/// A set is created by `semget` and given its values by `semctl(SETVAL)`:
/// two calls. Another process that finds the set by its key between them
/// sees a set of zeros and may use it; the creator's SETVAL then wipes
/// what it did. Here the other process is our child, sent in exactly in
/// that window so that the loss shows on every run.
fn sysv_init_race(shared: &Shared, say: &Narrator) -> Result<()> {
    // The bad order.
    let set = SemSet::create(libc::IPC_PRIVATE, 1, 0o600).context("semget(IPC_PRIVATE, 1)")?;
    let guard = SysvGuard::new(SysvKind::SemaphoreSet, set.id);
    say.step(format!(
        "bad order: semget(IPC_CREAT|IPC_EXCL) = semid {}; our SETVAL (to 0, a signal) comes \
         next. In that window a second process finds the set by its key and posts \
         \"I am ready\" (here our child, sent in on purpose)",
        set.id
    ));
    let mut child = fork_child(|| {
        semop(set, 0, 1, Undo::Keep, LOCK_TICK).context("semop(+1)")?;
        Ok(())
    })?;
    let exit = child.wait(WORKERS_TIMEOUT)?;
    if !exit.success() {
        bail!("the posting child {exit}");
    }
    say.step(format!(
        "the child's semop(+1): GETVAL = {}",
        set.value(0).context("semctl(GETVAL)")?
    ));
    set.set_value(0, 0).context("semctl(SETVAL, 0)")?;
    let after = set.value(0).context("semctl(GETVAL)")?;
    if let Wait::Acquired = semop_all_of(set, 0, -1, Duration::from_millis(200))? {
        bail!("the post survived SETVAL");
    }
    say.step(format!(
        "our semctl(SETVAL, 0): GETVAL = {after}. The post is lost: a wait for it times out \
         (semtimedop(-1, 200 ms) → EAGAIN), and without a timeout it would never return"
    ));
    drop(guard);

    // The good order (TLPI's svsem_good_init).
    let set = SemSet::create(libc::IPC_PRIVATE, 1, 0o600).context("semget(IPC_PRIVATE, 1)")?;
    let _guard = SysvGuard::new(SysvKind::SemaphoreSet, set.id);
    shared.child_waiting.store(0, Ordering::Relaxed);
    say.step(format!(
        "good order: semget = semid {}. This time the second process first waits until \
         sem_otime (the time of the last semop, 0 until the first) is set",
        set.id
    ));
    let mut child = fork_child(|| {
        if !wait_initialised(set, || shared.child_waiting.store(1, Ordering::Release))? {
            bail!("the set was not initialised in {INIT_PATIENCE:?}");
        }
        semop(set, 0, 1, Undo::Keep, LOCK_TICK).context("semop(+1)")?;
        Ok(())
    })?;
    let start = Instant::now();
    while shared.child_waiting.load(Ordering::Acquire) == 0 {
        check_stop()?;
        if let Some(exit) = child.try_wait()? {
            bail!("the waiting child {exit}");
        }
        if start.elapsed() > INIT_PATIENCE {
            bail!("the child did not start waiting in {INIT_PATIENCE:?}");
        }
        sleep(Duration::from_millis(1));
    }
    say.step("the child: semctl(IPC_STAT) → sem_otime = 0: not initialised yet, so it waits");
    set.initialise(&[0])
        .context("semctl(SETVAL, 0) + the first semop")?;
    say.step(format!(
        "we: semctl(SETVAL, 0), then a first semop (sem_op 0: wait for zero, done at once), \
         which sets sem_otime = {}: the set is ready",
        set.stat().context("semctl(IPC_STAT)")?.otime
    ));
    let exit = child.wait(WORKERS_TIMEOUT)?;
    if !exit.success() {
        bail!("the posting child {exit}");
    }
    let value = set.value(0).context("semctl(GETVAL)")?;
    if value != 1 {
        bail!("the post after initialisation was lost (GETVAL = {value})");
    }
    if !ipc_sysv::take(set, 0, Undo::Keep, Duration::from_secs(5))? {
        bail!("could not take the posted semaphore");
    }
    say.step(format!(
        "the child saw sem_otime != 0 and posted: GETVAL = {value}, and our wait takes it at once. \
         sem-demo's sysv roles work this way"
    ));
    Ok(())
}

/// `sem_timedwait` for all of `timeout`, however many signal handlers
/// interrupt it: after each EINTR, a stop request is looked for and the
/// wait goes on for the time left. Never `Wait::Interrupted`.
fn wait_all_of(sem: SharedSem, timeout: Duration) -> Result<Wait> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sem.wait_for(left).context("sem_timedwait")? {
            Wait::Interrupted => check_stop()?,
            done => return Ok(done),
        }
    }
}

/// The same for a System V `semtimedop` without SEM_UNDO.
fn semop_all_of(set: SemSet, index: u16, delta: i16, timeout: Duration) -> Result<Wait> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match semop(set, index, delta, Undo::Keep, left).context("semtimedop")? {
            Wait::Interrupted => check_stop()?,
            done => return Ok(done),
        }
    }
}

/// Fork a child that takes a lock with `acquire` and then waits to be
/// killed; SIGKILL it once it holds the lock. `held` tells when it does.
fn kill_holder(acquire: impl Fn() -> bool, held: impl Fn() -> bool, say: &Narrator) -> Result<()> {
    let mut child = fork_child(|| {
        if !acquire() {
            bail!("could not take the lock");
        }
        // Holding the lock until the parent's SIGKILL (or a stop).
        loop {
            check_stop()?;
            sleep(Duration::from_millis(10));
        }
    })?;
    let start = Instant::now();
    while !held() {
        check_stop()?;
        if let Some(exit) = child.try_wait()? {
            bail!("the child {exit} before taking the lock");
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the child did not take the lock");
        }
        sleep(Duration::from_millis(5));
    }
    kill(child.pid, Signal::SIGKILL).context("kill(SIGKILL)")?;
    let exit = child.wait(WORKERS_TIMEOUT)?;
    say.step(format!(
        "child pid {} took the lock; SIGKILL: it {exit}, holding it",
        child.pid
    ));
    if exit != PeerExit::Killed(Signal::SIGKILL) {
        bail!("the lock holder {exit}, expected SIGKILL");
    }
    Ok(())
}

/// Step 7: a lock holder killed by SIGKILL, three times: System V's
/// SEM_UNDO gives the lock back, a POSIX semaphore stays taken until a
/// waiter sees the holder is dead, a robust mutex tells the next locker.
fn crash(shared: &Shared, unnamed_lock: SharedSem, say: &Narrator) -> Result<()> {
    crash_sysv(say)?;
    crash_posix(shared, unnamed_lock, say)?;
    // sem_destroy(3). SAFETY: every process that used it has exited.
    unsafe {
        let _ = unnamed_lock.destroy();
    }
    crash_robust(shared, say)
}

/// Step 7, System V: SEM_UNDO gives the lock back.
fn crash_sysv(say: &Narrator) -> Result<()> {
    let set = SemSet::create_initialised(libc::IPC_PRIVATE, 0o600, &[1])
        .context("semget(IPC_PRIVATE, 1) + initialisation")?;
    let _remove = SysvGuard::new(SysvKind::SemaphoreSet, set.id);
    say.step(
        "System V: a set with one semaphore at 1; the child takes it with semop(-1, SEM_UNDO)",
    );
    kill_holder(
        || ipc_sysv::take(set, 0, Undo::SemUndo, Duration::from_secs(30)).unwrap_or(false),
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

/// Step 7, POSIX: no undo; recovery by timed wait plus a liveness check.
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
    if let Wait::Acquired = wait_all_of(lock, Duration::from_millis(200))? {
        bail!("the dead holder's POSIX lock was free");
    }
    say.step(format!(
        "sem_getvalue = {}; sem_timedwait(200 ms) → ETIMEDOUT: still taken. POSIX \
         semaphores have no undo: a plain sem_wait would block forever here",
        lock.value()?
    ));
    let recovered = lock_or_recover(lock, &shared.holder, LOCK_PATIENCE, say)?;
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

/// A pthread call's result: pthread functions return the error number
/// itself (0 for success), they do not set errno.
fn pthread(rc: libc::c_int, call: &str) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(rc)).context(call.to_string())
    }
}

/// Now + `timeout` on `clock`, as an absolute deadline.
fn deadline_on(clock: ClockId, timeout: Duration) -> Result<libc::timespec> {
    let now = clock_gettime(clock).context("clock_gettime")?;
    let sum = Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32) + timeout;
    Ok(libc::timespec {
        tv_sec: sum.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(sum.subsec_nanos() as i32),
    })
}

/// `pthread_mutex_timedlock`, at most `timeout`: its deadline is absolute,
/// on CLOCK_REALTIME, like sem_timedwait's. Returns the error number: 0
/// (locked), EOWNERDEAD (locked, its holder died), ETIMEDOUT, ...
fn lock_within(mutex: *mut libc::pthread_mutex_t, timeout: Duration) -> Result<libc::c_int> {
    let deadline = deadline_on(ClockId::CLOCK_REALTIME, timeout)?;
    // SAFETY: an initialised mutex in the shared page; a valid timespec.
    Ok(unsafe { libc::pthread_mutex_timedlock(mutex, &deadline) })
}

/// Step 7, the kernel-assisted answer to a dead lock holder: a robust,
/// process-shared pthread mutex. A mutex, unlike a semaphore, has an
/// owner (its thread id is in the lock word); with PTHREAD_MUTEX_ROBUST,
/// glibc keeps the mutexes a thread holds on a list the kernel knows of
/// (set_robust_list(2)), and when the thread dies, however it dies, the
/// kernel marks each one "owner died" and wakes a waiter.
fn crash_robust(shared: &Shared, say: &Narrator) -> Result<()> {
    let mutex = shared.robust.get();
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    // SAFETY: `attr` is initialised by pthread_mutexattr_init before any
    // other use; `mutex` lies in the shared page, which outlives it, and no
    // other process uses it before we fork.
    unsafe {
        pthread(
            libc::pthread_mutexattr_init(attr.as_mut_ptr()),
            "pthread_mutexattr_init",
        )?;
        // PROCESS_SHARED: used by several processes through the MAP_SHARED
        // page (the default, PRIVATE, is for the threads of one process).
        pthread(
            libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED),
            "pthread_mutexattr_setpshared(PTHREAD_PROCESS_SHARED)",
        )?;
        // ROBUST: a holder's death is reported to the next locker.
        pthread(
            libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST),
            "pthread_mutexattr_setrobust(PTHREAD_MUTEX_ROBUST)",
        )?;
        let init = libc::pthread_mutex_init(mutex, attr.as_ptr());
        libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
        pthread(init, "pthread_mutex_init")?;
    }
    say.step(
        "the kernel-assisted answer: pthread_mutex_init with PTHREAD_PROCESS_SHARED and \
         PTHREAD_MUTEX_ROBUST, in the MAP_SHARED page. A mutex has an owner, which a \
         semaphore has not",
    );
    shared.robust_holder.store(0, Ordering::Relaxed);
    kill_holder(
        || {
            let locked = lock_within(mutex, Duration::from_secs(30)).is_ok_and(|rc| rc == 0);
            if locked {
                let me = std::process::id() as i32;
                shared.robust_holder.store(me, Ordering::Release);
            }
            locked
        },
        || shared.robust_holder.load(Ordering::Acquire) != 0,
        say,
    )?;
    let start = Instant::now();
    match lock_within(mutex, Duration::from_secs(5))? {
        libc::EOWNERDEAD => {}
        0 => bail!("pthread_mutex_timedlock returned 0: the dead holder's death was not reported"),
        rc => return Err(Errno::from_raw(rc)).context("pthread_mutex_timedlock"),
    }
    say.step(format!(
        "pthread_mutex_timedlock → EOWNERDEAD after {}: as the holder died, the kernel \
         walked its robust list, marked the mutex \"owner died\" and let us have it. No pid \
         in shared memory, no liveness polling, no grace period. We hold it, but the data it guards may be half-updated",
        secs(start.elapsed())
    ));
    // Here a program checks and repairs the data; there is none.
    // SAFETY: we hold the mutex (EOWNERDEAD locks it).
    let rc = unsafe { libc::pthread_mutex_consistent(mutex) };
    pthread(rc, "pthread_mutex_consistent")?;
    // SAFETY: we hold the mutex.
    let rc = unsafe { libc::pthread_mutex_unlock(mutex) };
    pthread(rc, "pthread_mutex_unlock")?;
    match lock_within(mutex, Duration::from_secs(5))? {
        0 => {}
        rc => return Err(Errno::from_raw(rc)).context("pthread_mutex_timedlock, again"),
    }
    say.step(
        "pthread_mutex_consistent (the data checked), pthread_mutex_unlock, and the next \
         pthread_mutex_timedlock → 0: an ordinary mutex again. Unlocked without \
         pthread_mutex_consistent it would have become ENOTRECOVERABLE, for everyone, for good",
    );
    // SAFETY: we hold it; nobody else uses it any more (the child is dead).
    unsafe {
        pthread(libc::pthread_mutex_unlock(mutex), "pthread_mutex_unlock")?;
        libc::pthread_mutex_destroy(mutex);
    }
    Ok(())
}

// glibc 2.30 has sem_clockwait(3); the libc crate does not declare it.
unsafe extern "C" {
    fn sem_clockwait(
        sem: *mut libc::sem_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// Step 8: a timed wait's deadline is a time on one clock. sem_timedwait
/// reads it on CLOCK_REALTIME, the wall clock, which can be set;
/// sem_clockwait(CLOCK_MONOTONIC) on the clock that only counts forward.
fn clocks(say: &Narrator) -> Result<()> {
    const WAIT: Duration = Duration::from_millis(300);
    // A semaphore at 0 that only we use (pshared 0): every wait times out.
    let mut memory = Box::new(std::mem::MaybeUninit::<libc::sem_t>::uninit());
    let sem = memory.as_mut_ptr();
    // SAFETY: the box is aligned sem_t memory that outlives every use.
    Errno::result(unsafe { libc::sem_init(sem, 0, 0) }).context("sem_init")?;
    // Each wait must end in ETIMEDOUT. A signal handler's EINTR: look for a
    // stop request, then wait again for the same absolute deadline.
    let timed_out = |wait: &dyn Fn() -> libc::c_int, call: &str| -> Result<()> {
        loop {
            match Errno::result(wait()) {
                Err(Errno::ETIMEDOUT) => return Ok(()),
                Err(Errno::EINTR) => check_stop()?,
                Ok(_) => bail!("{call} took from a semaphore at 0"),
                Err(e) => return Err(e).context(call.to_string()),
            }
        }
    };
    // The stopwatch starts before the deadline is read off the clock, so a
    // pause between the two (a loaded machine) cannot make the wait look
    // shorter than it was.
    let start = Instant::now();
    let wall = deadline_on(ClockId::CLOCK_REALTIME, WAIT)?;
    // SAFETY: an initialised semaphore and a valid timespec.
    let wait = || unsafe { libc::sem_timedwait(sem, &wall) };
    timed_out(&wait, "sem_timedwait")?;
    let by_wall = start.elapsed();
    let start = Instant::now();
    let mono = deadline_on(ClockId::CLOCK_MONOTONIC, WAIT)?;
    // SAFETY: as above; CLOCK_MONOTONIC is a clock sem_clockwait accepts.
    let wait = || unsafe { sem_clockwait(sem, libc::CLOCK_MONOTONIC, &mono) };
    timed_out(&wait, "sem_clockwait(CLOCK_MONOTONIC)")?;
    let by_mono = start.elapsed();
    if by_mono < WAIT {
        bail!("sem_clockwait(CLOCK_MONOTONIC) timed out after {by_mono:?}, before its deadline");
    }
    say.step(format!(
        "sem_timedwait(CLOCK_REALTIME now + {} ms) → ETIMEDOUT after {}; \
         sem_clockwait(CLOCK_MONOTONIC, its now + {} ms) → ETIMEDOUT after {}: the same wait, \
         while nobody sets the clock",
        WAIT.as_millis(),
        secs(by_wall),
        WAIT.as_millis(),
        secs(by_mono)
    ));
    // The monotonic deadline handed to sem_timedwait: read on the wall
    // clock, that many seconds after 1970 is long past.
    let start = Instant::now();
    // SAFETY: as above.
    let wait = || unsafe { libc::sem_timedwait(sem, &mono) };
    timed_out(&wait, "sem_timedwait")?;
    let mixed = start.elapsed();
    if mixed >= WAIT {
        bail!("sem_timedwait with a CLOCK_MONOTONIC deadline waited {mixed:?}, not 0");
    }
    say.step(format!(
        "a deadline is a time on one clock: sem_timedwait given the CLOCK_MONOTONIC deadline \
         ({} s since boot) reads it as a wall-clock time in January 1970, long past: ETIMEDOUT \
         at once ({})",
        mono.tv_sec,
        secs(mixed)
    ));
    say.step(
        "so a clock change (narrated, not made: it needs CAP_SYS_TIME and disturbs every \
         program): set back by an hour (date -s, an NTP step) during a sem_timedwait, the wait \
         lasts an hour longer; set forward, it times out at once with no time passed. \
         sem_clockwait(CLOCK_MONOTONIC) and System V's semtimedop (a relative timeout, which \
         the kernel counts on the monotonic clock) do not notice. This demo's waits use \
         sem_timedwait in 100 ms ticks: a clock set back would stretch one tick by as much",
    );
    // SAFETY: nobody waits on it; it is not used again.
    unsafe { libc::sem_destroy(sem) };
    drop(memory);
    Ok(())
}

/// Step 9: the pool's size.
const POOL: u32 = 2;
/// Step 9: each worker uses a pooled resource this many times ...
const POOL_ROUNDS: u64 = 20;
/// ... for this long each time.
const POOL_HOLD: Duration = Duration::from_millis(2);

/// Step 9: a semaphore that counts N free resources: a wait takes one
/// (sleeping while none is free), a post gives it back. The users count
/// themselves in shared memory, so the claim "never more than N" is
/// checked by the users, not taken on trust.
fn pool(shared: &Shared, opts: &StoryOptions, say: &Narrator) -> Result<()> {
    // SAFETY: `pool` lies in the shared page, which outlives every use; no
    // other process uses it until we fork.
    let pool = unsafe { SharedSem::init(shared.pool.get(), POOL) }.context("sem_init(pool)")?;
    say.step(format!(
        "sem_init(pool, pshared=1, {POOL}): a counting semaphore, one count per free resource; \
         {} workers each take a resource {POOL_ROUNDS} times and hold it {} ms",
        opts.workers,
        POOL_HOLD.as_millis()
    ));
    shared.in_use.store(0, Ordering::Relaxed);
    shared.max_in_use.store(0, Ordering::Relaxed);
    shared.pool_empty.store(0, Ordering::Relaxed);
    run_workers(shared, opts.workers, POOL_ROUNDS, say, || {
        use_pool(shared, pool)
    })?;
    // SAFETY: every worker has exited.
    unsafe {
        let _ = pool.destroy();
    }
    let most = shared.max_in_use.load(Ordering::Acquire);
    let empty = shared.pool_empty.load(Ordering::Acquire);
    if most > POOL {
        bail!("{most} workers used the pool of {POOL} at once");
    }
    say.step(format!(
        "{} uses, never more than {POOL} at once (the most at one time: {most}, counted by the \
         users in shared memory); {empty} times a worker found the pool empty (sem_trywait → \
         EAGAIN) and slept in sem_timedwait until another gave a resource back",
        opts.workers * POOL_ROUNDS
    ));
    if opts.workers <= u64::from(POOL) {
        say.step(format!(
            "with --workers {} the pool never runs short: the limit shows with more than {POOL}",
            opts.workers
        ));
    } else if most < POOL {
        say.step(
            "this time no two workers held a resource at the same moment (the machine's cores \
             were busy elsewhere); the limit held all the same",
        );
    }
    Ok(())
}

/// A worker of step 9: take a resource, use it, give it back.
fn use_pool(shared: &Shared, pool: SharedSem) -> Result<()> {
    barrier(shared, 1)?;
    for _ in 0..POOL_ROUNDS {
        check_stop()?;
        // sem_trywait first, only to count how often the pool was empty.
        if !pool.try_wait().context("sem_trywait(pool)")? {
            shared.pool_empty.fetch_add(1, Ordering::AcqRel);
            take(pool)?;
        }
        let now = shared.in_use.fetch_add(1, Ordering::AcqRel) + 1;
        shared.max_in_use.fetch_max(now, Ordering::AcqRel);
        sleep(POOL_HOLD); // using the resource
        shared.in_use.fetch_sub(1, Ordering::AcqRel);
        pool.post().context("sem_post(pool)")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The workers, their shared page and their barrier
// ---------------------------------------------------------------------------

/// One page shared by the parent and its forked workers.
#[repr(C)]
struct Shared {
    /// The counter the workers increment.
    counter: AtomicU64,
    /// Pid of the process holding the POSIX lock, 0 if none: what lets a
    /// waiter tell a slow holder from a dead one.
    holder: AtomicI32,
    /// The starting barrier: how many workers there are, how many have
    /// arrived, a beat every waiting worker keeps bumping, and "go".
    workers: AtomicU32,
    ready: AtomicU32,
    beat: AtomicU64,
    go: AtomicU32,
    /// CLOCK_MONOTONIC at "go" and when the last worker finished, in ns.
    started_ns: AtomicU64,
    finished_ns: AtomicU64,
    /// Time the workers spent in their increment loops (not at barriers),
    /// summed over all of them, in ns.
    busy_ns: AtomicU64,
    /// Increments the workers have made so far, summed at each round's end.
    done: AtomicU64,
    /// Step 6: the child saw the set not yet initialised and is waiting.
    child_waiting: AtomicU32,
    /// An unnamed semaphore used as a lock (steps 3 and 7).
    lock: UnsafeCell<libc::sem_t>,
    /// An unnamed semaphore used as a signal (step 4).
    signal: UnsafeCell<libc::sem_t>,
    /// Step 7: pid of the robust mutex's holder, 0 until the child has it.
    robust_holder: AtomicI32,
    /// A process-shared robust pthread mutex (step 7).
    robust: UnsafeCell<libc::pthread_mutex_t>,
    /// Step 9: how many workers use a pooled resource right now, the most
    /// at one time, and how often a worker found the pool empty.
    in_use: AtomicU32,
    max_in_use: AtomicU32,
    pool_empty: AtomicU64,
    /// A counting semaphore: the pool's free resources (step 9).
    pool: UnsafeCell<libc::sem_t>,
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
    /// Semaphore 0 of a System V set, taken with SEM_UNDO.
    Sysv(SemSet),
}

/// The story's worker: `iterations` increments of `counter`, in rounds
/// that start at a barrier. Without a lock it is a read-modify-write in two steps,
/// which another process can slip between: two workers read 41, both store
/// 42, and one increment is lost.
fn increment(shared: &Shared, lock: Lock, iterations: u64) -> Result<()> {
    // Stamped however the loop ends (the parent reads it only on success).
    struct Finished<'a>(&'a AtomicU64);
    impl Drop for Finished<'_> {
        fn drop(&mut self) {
            self.0.fetch_max(now_ns(), Ordering::AcqRel);
        }
    }
    let _finished = Finished(&shared.finished_ns);
    // Rounds give the race more chances to show; a lock needs only one.
    let rounds = match lock {
        Lock::None => iterations.min(ROUNDS),
        Lock::Posix(_) | Lock::Sysv(_) => 1,
    };
    let mut made: u64 = 0;
    for round in 0..rounds {
        barrier(shared, round as u32 + 1)?;
        // The increments split evenly over the rounds.
        let this_round = iterations / rounds + u64::from(round < iterations % rounds);
        let busy = Instant::now();
        for _ in 0..this_round {
            // A Ctrl-C is noticed within a few thousand increments, not
            // after all of them (the check is one load, outside the window).
            if made.is_multiple_of(4096) {
                check_stop()?;
            }
            made += 1;
            match lock {
                Lock::Posix(sem) => take(sem)?,
                Lock::Sysv(set) => take_sysv(set)?,
                Lock::None => {}
            }
            // Deliberately a load then a store, not fetch_add: this is what
            // `counter += 1` on plain shared memory does.
            let value = shared.counter.load(Ordering::Relaxed);
            shared.counter.store(value + 1, Ordering::Relaxed);
            match lock {
                Lock::Posix(sem) => sem.post().context("sem_post")?,
                // +1 with SEM_UNDO: the undo entry of the -1 is cancelled.
                Lock::Sysv(set) => {
                    semop(set, 0, 1, Undo::SemUndo, LOCK_TICK).context("semop(+1, SEM_UNDO)")?;
                }
                Lock::None => {}
            }
        }
        let ns = u64::try_from(busy.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shared.busy_ns.fetch_add(ns, Ordering::AcqRel);
        shared.done.fetch_add(this_round, Ordering::AcqRel);
    }
    Ok(())
}

/// The barrier that starts round `round` (1, 2, ...). Forked one after
/// another, each worker would finish its 100000 increments (well under a
/// millisecond) before the next one even exists, and nothing would
/// overlap. So the workers wait for each other, spinning (a semaphore would
/// wake them one by one, microseconds apart). The last to arrive says go,
/// but only once it has seen another worker's beat move: that worker is
/// running on another core at this very moment, so at least two start at
/// the same instant. On one core, or with the cores busy with other
/// programs, no such moment may come soon: after BEAT_PATIENCE it says go
/// anyway. Twenty rounds give twenty such chances (the locked steps use one).
fn barrier(shared: &Shared, round: u32) -> Result<()> {
    let workers = shared.workers.load(Ordering::Acquire);
    let arrived = shared.ready.fetch_add(1, Ordering::AcqRel) + 1;
    if arrived == workers * round {
        // Once an update has been lost (the counter is behind the count of
        // increments done), the lesson is made: later rounds start at once.
        let lost = shared.counter.load(Ordering::Acquire) < shared.done.load(Ordering::Acquire);
        let start = Instant::now();
        while workers > 1 && !lost && !other_running(shared) && start.elapsed() < BEAT_PATIENCE {}
        if round == 1 {
            shared.started_ns.store(now_ns(), Ordering::Release);
        }
        shared.go.store(round, Ordering::Release);
    }
    let start = Instant::now();
    let mut spins: u64 = 0;
    while shared.go.load(Ordering::Acquire) < round {
        shared.beat.fetch_add(1, Ordering::AcqRel);
        std::hint::spin_loop();
        spins += 1;
        if spins.is_multiple_of(65536) {
            check_stop()?;
            if start.elapsed() > BARRIER_PATIENCE {
                bail!("the other workers did not arrive within {BARRIER_PATIENCE:?}");
            }
        }
    }
    Ok(())
}

/// Is another worker running on another core right now? Its beat moves
/// within a few microseconds. (A beat that moved while *we* were not
/// running, our time slice given to that worker on our own core, took
/// much longer: that proves nothing.)
fn other_running(shared: &Shared) -> bool {
    let seen = shared.beat.load(Ordering::Acquire);
    let start = Instant::now();
    for _ in 0..1000 {
        std::hint::spin_loop();
        if shared.beat.load(Ordering::Acquire) != seen {
            return start.elapsed() < Duration::from_micros(20);
        }
    }
    false
}

/// Take a POSIX semaphore, waiting at most LOCK_PATIENCE.
/// semop(-1, SEM_UNDO) on semaphore 0, in ticks so a stop is seen.
fn take_sysv(set: SemSet) -> Result<()> {
    let start = Instant::now();
    loop {
        match semop(set, 0, -1, Undo::SemUndo, LOCK_TICK).context("semop(-1, SEM_UNDO)")? {
            Wait::Acquired => return Ok(()),
            Wait::Interrupted | Wait::TimedOut => check_stop()?,
        }
        if start.elapsed() > LOCK_PATIENCE {
            bail!("could not get the lock in {LOCK_PATIENCE:?}");
        }
    }
}

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

/// How long a run of the workers took.
struct Run {
    /// From the first "go" to the last worker done.
    took: Duration,
    /// Time in the increment loops (barriers left out) per increment, in
    /// ns: what one increment costs, with or without a lock.
    per_increment: f64,
}

/// Fork `workers` children running `work` (`iterations` increments, which
/// start at the barrier), wait for all.
fn run_workers(
    shared: &Shared,
    workers: u64,
    iterations: u64,
    say: &Narrator,
    work: impl Fn() -> Result<()>,
) -> Result<Run> {
    shared.workers.store(workers as u32, Ordering::Relaxed);
    shared.ready.store(0, Ordering::Relaxed);
    shared.go.store(0, Ordering::Relaxed);
    shared.finished_ns.store(0, Ordering::Relaxed);
    shared.busy_ns.store(0, Ordering::Relaxed);
    shared.done.store(0, Ordering::Relaxed);
    let mut running = Workers(Vec::new());
    for _ in 0..workers {
        running.0.push(fork_child(&work)?);
    }
    let children = &mut running.0;
    let list: Vec<String> = children.iter().map(|c| c.pid.to_string()).collect();
    say.message(format!(
        "forked {workers} workers: pids {}; each waits at the barrier",
        list.join(", ")
    ));
    // All at once, not one after the other: a worker that fails is seen
    // at once (and the others are stopped), not after the ones before it.
    let deadline = Instant::now() + WORKERS_TIMEOUT;
    let mut failed = Vec::new();
    while children.iter().any(|c| !c.reaped) && failed.is_empty() {
        check_stop()?;
        for child in children.iter_mut().filter(|c| !c.reaped) {
            if let Some(exit) = child.try_wait()?
                && !exit.success()
            {
                failed.push(format!("worker {} {exit}", child.pid));
            }
        }
        if Instant::now() >= deadline {
            failed.push(format!("the workers did not finish in {WORKERS_TIMEOUT:?}"));
        }
        sleep(Duration::from_millis(2));
    }
    let ns = shared
        .finished_ns
        .load(Ordering::Acquire)
        .saturating_sub(shared.started_ns.load(Ordering::Acquire));
    let took = Duration::from_nanos(ns);
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    let increments = (workers * iterations).max(1);
    let per_increment = shared.busy_ns.load(Ordering::Acquire) as f64 / increments as f64;
    Ok(Run {
        took,
        per_increment,
    })
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
