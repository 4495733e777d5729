//! # sem-demo: semaphores between processes
//!
//! A semaphore is a counter with two operations: *post* adds one, *wait*
//! takes one, and a wait on zero sleeps until someone posts. With the
//! counter starting at 1 it is a lock (mutual exclusion); starting at 0 it
//! is a signal ("I am done, you may go"). Shared memory has no rules of its
//! own, so semaphores are what make it safe.
//!
//! Two families. A POSIX semaphore is a `sem_t` in *user memory*: post and
//! wait are atomic instructions in the process itself, and the kernel is
//! entered (a futex call) only to put a waiter to sleep or to wake one. A
//! System V semaphore is a kernel object: every `semop` is a system call.
//!
//! | property      | POSIX named (`sem_open`) | POSIX unnamed (`sem_init`)   | System V set (`semget`)      |
//! |---------------|--------------------------|------------------------------|------------------------------|
//! | lives in      | file `/dev/shm/sem.NAME`, mapped by each opener | your (shared) memory | the kernel, by key/id |
//! | post / wait   | atomics; futex to sleep or wake | atomics; futex to sleep or wake | a system call each |
//! | who can use it| anyone who can open it   | processes mapping the memory | anyone with the key and mode |
//! | per call      | one semaphore            | one semaphore                | several, atomically          |
//! | crash of holder | stays taken            | stays taken                  | undone with `SEM_UNDO`       |
//! | persistence   | until `sem_unlink`       | as long as the memory        | until `IPC_RMID`             |
//! | largest value | `SEM_VALUE_MAX` (2^31-1) | `SEM_VALUE_MAX`              | `SEMVMX` (32767)             |
//!
//! `sem_open("/x")` is the file `/dev/shm/sem.x`: the same directory as
//! `shm_open`'s segments, so `shm_open("/sem.x")` names the very same file.
//! sem-demo therefore checks a semaphore (and a counter segment) it did not
//! create before using or removing it: owner, size, and a magic number.
//!
//! ## Run it
//!
//! ```text
//! cargo run -p sem-demo                          # the whole story, seven steps
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
//! - updates lost without a lock (the workers start together at a
//!   barrier), none with one, and what the lock costs;
//! - a semaphore at 0 ordering two processes; `EAGAIN` and `ETIMEDOUT`;
//! - several System V semaphores changed in one atomic `semop`;
//! - System V's initialisation race: a post lost between `semget` and
//!   `SETVAL`, then the order that cannot lose it (`sem_otime`);
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
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{
    ShmGuard, SysvGuard, SysvKind, check_stop, stop_on_signals, stop_requested, sysv_remove,
    unique_name,
};
use common::cli::{Args, MAX_COUNT};
use common::error::{self, Interrupted, usage};
use common::peer::{PeerExit, alive};
use common::psem::{self, NamedSem, OpenError, SharedSem, Wait};
use common::report::{Narrator, Stream, Summary};
use common::sysv_sem::{SEMVMX, SemSet, ftok};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap, shm_open, shm_unlink};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, Uid, User, fork, ftruncate, geteuid, getpid, getppid};

const USAGE: &str = "\
sem-demo: semaphores for mutual exclusion and signalling between processes

USAGE:
    sem-demo [--workers K] [--iterations N] [--quiet]
        The whole story: a race without a lock, a POSIX named and an unnamed
        semaphore as locks, a semaphore as a signal, System V sets, System V's
        initialisation race, and a lock holder killed by SIGKILL.
    sem-demo worker --name /NAME [--iterations N] [--timeout SECS]
        Add 1 to a shared counter N times under the lock /NAME (created with
        value 1 if absent; the counter lives in shared memory /NAME.counter).
    sem-demo wait --name /NAME [--timeout SECS] [--value V]
        Take one from /NAME, waiting at most SECS (default: until Ctrl-C, as
        this role waits for you to post from another terminal); creates it
        with value V (default 0) if absent.
    sem-demo post --name /NAME
        Add one to /NAME.
    sem-demo remove --name /NAME
        sem_unlink /NAME (and its counter, if any).
    sem-demo sysv worker|wait|post|remove --key PATH [...]
        The same with a System V semaphore set found by ftok(PATH), which must
        be an existing file.

    /NAME is the file /dev/shm/sem.NAME (its counter /dev/shm/NAME.counter),
    beside shm_open's segments. A semaphore, counter or set that sem-demo did
    not just create is used or removed only if it belongs to you (your
    effective uid, also as root) and has the right size and magic number.

OPTIONS:
    --workers K       story: worker processes (default 4; 1 to 64)
    --iterations N    increments per worker (default 100000; 1 to 1000000000)
    --name /NAME      a slash, then up to 240 characters without a slash
    --key PATH        System V: an existing file whose ftok() key names the set
    --timeout SECS    wait: give up after SECS seconds (1 to 86400);
                      worker: the longest wait for the lock (default 60)
    --value V         wait: initial value if it creates the semaphore
                      (POSIX 0 to SEM_VALUE_MAX = 2147483647; System V 0 to
                      SEMVMX = 32767, the kernel's limit)
    --quiet           only the steps and the summary
    -h, --help        this text

EXIT STATUS: 0 success, 1 runtime error (a wait that timed out, lost updates
under a lock, an object that is not ours), 2 bad command line, 128+N stopped
by signal N (130 for Ctrl-C).
";

/// How long any one lock acquisition may take before we suspect a dead
/// holder (POSIX) or look for a stop request.
const LOCK_TICK: Duration = Duration::from_millis(100);
/// A lock taken with no holder recorded for this long has lost its holder.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);
/// A worker that cannot get the lock for this long gives up (the default
/// of a role's --timeout, the story's workers' bound).
const LOCK_PATIENCE: Duration = Duration::from_secs(60);
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
/// How long a process that found an object being created waits for its
/// creator to finish (System V: the first semop; POSIX: size and magic).
const INIT_PATIENCE: Duration = Duration::from_secs(5);
/// A stopped child gets this long to exit by itself before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(1);
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
        Lock::Posix(_) => 1,
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

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, so
/// workers can stamp shared memory with it.
fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
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

/// A forked child of the story. One that is dropped before it was reaped
/// (the parent failed, or was stopped) is stopped and reaped: no child
/// outlives a step of the story.
struct Child {
    pid: Pid,
    reaped: bool,
    /// How it ended, once reaped (a pid can be waited for only once).
    exit: Option<PeerExit>,
}

/// Fork a child that runs `work` and exits: 0 if it succeeded, 128+N if a
/// stop signal N ended it, 1 for any other error (printed on stderr).
fn fork_child(work: impl FnOnce() -> Result<()>) -> Result<Child> {
    let parent = getpid();
    // SAFETY: sem-demo is single-threaded: the child may do anything.
    match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            let code = child_main(parent, work);
            // exit, not return: the rest of main belongs to the parent.
            std::process::exit(code);
        }
        ForkResult::Parent { child } => Ok(Child {
            pid: child,
            reaped: false,
            exit: None,
        }),
    }
}

fn child_main(parent: Pid, work: impl FnOnce() -> Result<()>) -> i32 {
    let say = Narrator::new(format!("child {}", getpid()), false, Stream::Stderr);
    // If the parent dies (SIGKILL, a second Ctrl-C), the kernel sends us
    // SIGKILL: no worker outlives the story. The parent may already have
    // died before this call, and then no signal will ever come: getppid()
    // no longer names it (we were re-parented), so we leave at once.
    if let Err(e) = set_pdeathsig(Signal::SIGKILL) {
        say.step(format!("prctl(PR_SET_PDEATHSIG): {e}"));
        return 1;
    }
    if getppid() != parent {
        return 1;
    }
    // A panic must not unwind out of here: above us is the parent's code,
    // whose destructors would remove the parent's semaphores.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    match result {
        Err(_) => 101,
        Ok(Ok(())) => 0,
        Ok(Err(e)) => match error::find_in_chain::<Interrupted>(&e) {
            Some(Interrupted(signal)) => 128 + *signal as i32,
            None => {
                say.step(format!("error: {e:#}"));
                1
            }
        },
    }
}

impl Child {
    /// Has it ended? Reaps it if so.
    fn try_wait(&mut self) -> Result<Option<PeerExit>> {
        if self.reaped {
            return Ok(self.exit);
        }
        let exit = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => PeerExit::Exited(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => PeerExit::Killed(signal),
            // Still running (or stopped, continued: not an end).
            Ok(_) | Err(Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("waitpid({})", self.pid)),
        };
        self.reaped = true;
        self.exit = Some(exit);
        Ok(Some(exit))
    }

    /// Wait for it to end, at most `timeout` (then SIGKILL). A stop signal
    /// ends the wait at once with `Interrupted`; dropping the child then
    /// stops it.
    fn wait(&mut self, timeout: Duration) -> Result<PeerExit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_wait()? {
                return Ok(exit);
            }
            check_stop()?;
            if Instant::now() >= deadline {
                stop_all(std::slice::from_mut(self), Signal::SIGKILL);
                return Ok(PeerExit::TimedOut);
            }
            sleep(Duration::from_millis(2));
        }
    }
}

/// Stop every child not yet reaped: send `signal` to all, give them
/// STOP_GRACE together to end by themselves, then SIGKILL the rest (a
/// SIGSTOPped child handles nothing, but SIGKILL ends it too); reap all.
fn stop_all(children: &mut [Child], signal: Signal) {
    for child in children.iter().filter(|c| !c.reaped) {
        let _ = kill(child.pid, signal);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        let mut running = false;
        for child in children.iter_mut().filter(|c| !c.reaped) {
            running |= matches!(child.try_wait(), Ok(None));
        }
        if !running {
            return;
        }
        sleep(Duration::from_millis(2));
    }
    for child in children.iter_mut().filter(|c| !c.reaped) {
        let _ = kill(child.pid, Signal::SIGKILL);
        let _ = waitpid(child.pid, None);
        child.reaped = true;
        child.exit = Some(PeerExit::Killed(Signal::SIGKILL));
    }
}

/// The signal to pass on to children we stop: the one that stopped us
/// (`kill PARENT` reaches only the parent, not its children), else SIGTERM.
fn stop_signal() -> Signal {
    stop_requested().unwrap_or(Signal::SIGTERM)
}

impl Drop for Child {
    fn drop(&mut self) {
        stop_all(std::slice::from_mut(self), stop_signal());
    }
}

/// The story's workers; dropping them stops all those still running at
/// once (one grace period for all, not one each).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        stop_all(&mut self.0, stop_signal());
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
    let race = run_workers(shared, opts.workers, opts.iterations, &say, || {
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

    say.line("\n== 2. A POSIX named semaphore as a lock ==");
    let name = format!("/{}", unique_name("sem-demo"));
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
    let named_run = run_workers(shared, opts.workers, opts.iterations, &say, || {
        increment(shared, Lock::Posix(sem), opts.iterations)
    })?;
    let named_count = shared.counter.load(Ordering::Relaxed);
    say.step(format!(
        "sem_wait / increment / sem_post: expected {expected}, got {named_count} ({:.1} ns per \
         increment, the lock included)",
        named_run.per_increment
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
    let unnamed_run = run_workers(shared, opts.workers, opts.iterations, &say, || {
        increment(shared, Lock::Posix(unnamed), opts.iterations)
    })?;
    let unnamed_count = shared.counter.load(Ordering::Relaxed);
    say.step(format!(
        "expected {expected}, got {unnamed_count} ({:.1} ns per increment; without a lock \
         {:.1} ns, wrong)",
        unnamed_run.per_increment, race.per_increment
    ));

    say.line("\n== 4. A semaphore as a signal: ordering two processes ==");
    signalling(shared, &say)?;

    say.line("\n== 5. System V semaphore sets: several counters, one atomic semop ==");
    sysv_sets(&say)?;

    say.line("\n== 6. System V's initialisation race: semget, then SETVAL ==");
    sysv_init_race(shared, &say)?;

    say.line("\n== 7. The crash hazard: a lock holder killed by SIGKILL ==");
    crash_sysv(&say)?;
    crash_posix(shared, unnamed, &say)?;
    // SAFETY: every process that used them has exited.
    unsafe {
        let _ = unnamed.destroy();
    }

    let locked_lost = expected.saturating_sub(named_count) + expected.saturating_sub(unnamed_count);
    say.line("");
    say.line(Summary {
        mechanism: "sem",
        messages: 2 * expected,
        bytes: 0,
        errors: locked_lost,
        elapsed: named_run.took + unnamed_run.took,
    });
    if locked_lost > 0 {
        bail!("{locked_lost} updates lost even under a lock");
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.3} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
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
    match done
        .wait_for(Duration::from_millis(50))
        .context("sem_timedwait")?
    {
        Wait::TimedOut => say.step("sem_timedwait(50 ms) → ETIMEDOUT: no post yet"),
        Wait::Interrupted => check_stop()?,
        Wait::Acquired => bail!("sem_timedwait(50 ms) on a semaphore at 0 succeeded"),
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

/// Take one from semaphore `index` of `set`, waiting at most `patience`
/// in ticks that look for a stop request.
fn sysv_take(set: SemSet, index: u16, undo: bool, patience: Duration) -> Result<bool> {
    let start = Instant::now();
    while start.elapsed() < patience {
        check_stop()?;
        if let Wait::Acquired = set
            .op(index, -1, undo, LOCK_TICK)
            .context("semtimedop(-1)")?
        {
            return Ok(true);
        }
    }
    Ok(false)
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
        if sysv_take(set, 2, false, Duration::from_secs(60))? {
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
    let exit = child.wait(WORKERS_TIMEOUT)?;
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
        set.op(0, 1, false, LOCK_TICK).context("semop(+1)")?;
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
    match set
        .op(0, -1, false, Duration::from_millis(200))
        .context("semtimedop(-1)")?
    {
        Wait::TimedOut => {}
        Wait::Interrupted => check_stop()?,
        Wait::Acquired => bail!("the post survived SETVAL"),
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
        set.op(0, 1, false, LOCK_TICK).context("semop(+1)")?;
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
    if !sysv_take(set, 0, false, Duration::from_secs(5))? {
        bail!("could not take the posted semaphore");
    }
    say.step(format!(
        "the child saw sem_otime != 0 and posted: GETVAL = {value}, and our wait takes it at once. \
         sem-demo's sysv roles work this way"
    ));
    Ok(())
}

/// Wait (at most INIT_PATIENCE) until the creator of `set` made its first
/// semop (`sem_otime != 0`); `waiting` runs once if we have to wait.
fn wait_initialised(set: SemSet, waiting: impl FnOnce()) -> Result<bool> {
    let start = Instant::now();
    let mut waiting = Some(waiting);
    loop {
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

/// Step 7, System V: SEM_UNDO gives the lock back.
fn crash_sysv(say: &Narrator) -> Result<()> {
    let set = SemSet::create_initialised(libc::IPC_PRIVATE, 0o600, &[1])
        .context("semget(IPC_PRIVATE, 1) + initialisation")?;
    let _remove = SysvGuard::new(SysvKind::SemaphoreSet, set.id);
    say.step(
        "System V: a set with one semaphore at 1; the child takes it with semop(-1, SEM_UNDO)",
    );
    kill_holder(
        || sysv_take(set, 0, true, Duration::from_secs(30)).unwrap_or(false),
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
    match lock
        .wait_for(Duration::from_millis(200))
        .context("sem_timedwait")?
    {
        Wait::TimedOut => say.step(format!(
            "sem_getvalue = {}; sem_timedwait(200 ms) → ETIMEDOUT: still taken. POSIX \
             semaphores have no undo: a plain sem_wait would block forever here",
            lock.value()?
        )),
        Wait::Interrupted => check_stop()?,
        Wait::Acquired => bail!("the dead holder's POSIX lock was free"),
    }
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

/// Take `lock`; while it is taken, check every tick whether the holder
/// (whose pid is in `holder`) still lives. If it died, take the lock over.
/// Returns whether the lock was recovered from a dead holder.
///
/// A holder killed between its sem_wait and recording its pid leaves the
/// lock taken with no pid: after ORPHAN_GRACE (far longer than any critical
/// section here) that counts as a dead holder too. Robust pthread mutexes
/// (`PTHREAD_MUTEX_ROBUST`, `EOWNERDEAD`) close that gap in the kernel;
/// semaphores know nothing of owners, so this is the best a waiter can do.
///
/// A holder that lives but never posts (stopped with SIGSTOP, or stuck)
/// cannot be told from a slow one: after `patience` we give up.
fn lock_or_recover(
    lock: SharedSem,
    holder: &AtomicI32,
    patience: Duration,
    say: &Narrator,
) -> Result<bool> {
    let me = std::process::id() as i32;
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

/// The counter object of `sem-demo worker --name /NAME` (POSIX shared
/// memory `/NAME.counter`) and `sem-demo sysv worker` (a System V segment).
#[repr(C)]
struct Counter {
    /// COUNTER_MAGIC once its creator has set it up: what tells our
    /// counter from another program's object under the same name.
    magic: AtomicU64,
    value: AtomicU64,
    holder: AtomicI32,
}

const COUNTER_MAGIC: u64 = u64::from_le_bytes(*b"semdemo1");

/// "nobody (uid 65534)".
fn whose(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

fn me() -> String {
    whose(geteuid().as_raw())
}

/// Wait (at most INIT_PATIENCE) for a counter's creator to write the
/// magic, then check it. Skippable on a first reading: hardening.
fn check_magic(counter: &Counter, what: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        match counter.magic.load(Ordering::Acquire) {
            COUNTER_MAGIC => return Ok(()),
            0 if start.elapsed() < INIT_PATIENCE => {}
            0 => bail!(
                "{what} was never set up (no magic number after {} s): its creator died half-way? \
                 'sem-demo remove' (or 'sem-demo sysv remove') removes it",
                INIT_PATIENCE.as_secs()
            ),
            other => bail!(
                "{what} is not a sem-demo counter (magic {other:#018x}): another program's \
                 object under the same name, refusing to use it"
            ),
        }
        check_stop()?;
        sleep(Duration::from_millis(5));
    }
}

/// A named shared-memory object holding a Counter; unmapped on drop.
struct CounterMap {
    base: NonNull<libc::c_void>,
    len: usize,
}

impl CounterMap {
    /// Create the counter `name`, or open an existing one after checking
    /// that it is ours and a counter. Never truncates an existing object.
    fn open_or_create(name: &str, say: &Narrator) -> Result<CounterMap> {
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
        // Removed again if any step below fails: a failed create leaves
        // nothing.
        let guard = ShmGuard::new(name);
        // The mode given to shm_open passed through the umask: set it.
        fchmod(&fd, Mode::S_IRUSR | Mode::S_IWUSR).with_context(|| format!("fchmod({name})"))?;
        // Growing from 0 zero-fills.
        ftruncate(&fd, len as libc::off_t).with_context(|| format!("ftruncate({name})"))?;
        let map = CounterMap::map(&fd, len)?;
        // Last, with Release: a worker that sees the magic sees a counter.
        map.get().magic.store(COUNTER_MAGIC, Ordering::Release);
        std::mem::forget(guard); // complete: it stays for the other workers
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

    /// Before `shm_unlink`: is `name` there, ours, and a counter (also a
    /// half-made one, size 0 or no magic yet, left by a killed worker)?
    /// Ok(false): there is none. Skippable on a first reading: hardening.
    fn check_for_removal(name: &str) -> Result<bool> {
        use std::io::Read;
        let path = format!("/dev/shm{name}");
        let fd = match shm_open(name, OFlag::O_RDONLY, Mode::empty()) {
            Err(Errno::ENOENT) => return Ok(false),
            other => other.with_context(|| format!("shm_open({name}, O_RDONLY)"))?,
        };
        let st = fstat(&fd).with_context(|| format!("fstat({path})"))?;
        if st.st_uid != geteuid().as_raw() {
            bail!(
                "{path} belongs to {}, not to you, {}: sem-demo leaves it alone",
                whose(st.st_uid),
                me()
            );
        }
        let len = size_of::<Counter>() as libc::off_t;
        let mut magic = [0u8; 8];
        let ok = st.st_mode & libc::S_IFMT == libc::S_IFREG
            && (st.st_size == 0
                || (st.st_size == len
                    && std::fs::File::from(fd).read_exact(&mut magic).is_ok()
                    && matches!(u64::from_ne_bytes(magic), 0 | COUNTER_MAGIC)));
        if !ok {
            bail!(
                "{path} is not a sem-demo counter ({} bytes): another program's object under the \
                 same name, left alone",
                st.st_size
            );
        }
        Ok(true)
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

    fn get(&self) -> &Counter {
        // SAFETY: page-aligned mapping of size_of::<Counter>() bytes; all
        // fields are atomics.
        unsafe { self.base.cast::<Counter>().as_ref() }
    }
}

impl Drop for CounterMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in map(); nothing borrows it now.
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
            "sem_open({name}): permission denied (EACCES): {} belongs to another user (mode 0600)",
            psem::sem_path(name)
        ),
        Errno::ELOOP => anyhow::anyhow!(
            "{} is a symbolic link, not a semaphore: refusing to follow it",
            psem::sem_path(name)
        ),
        e => anyhow::Error::new(e).context(format!("sem_open({name})")),
    }
}

/// Explain why an existing semaphore was refused.
fn refused(name: &str, e: OpenError) -> anyhow::Error {
    match e {
        OpenError::Sys(e) => open_hint(name, e),
        OpenError::Foreign { path, uid } => anyhow::anyhow!(
            "{path} belongs to {}, not to you, {}: sem-demo only uses its own semaphores, so it \
             leaves this one alone",
            whose(uid),
            me()
        ),
        e @ OpenError::NotASemaphore { .. } => anyhow::anyhow!("{e}"),
    }
}

/// Open `name`, creating it with `value` if it does not exist yet.
/// Returns whether we created it.
fn open_or_create(name: &str, value: u32, say: &Narrator) -> Result<(NamedSem, bool)> {
    let path = psem::sem_path(name);
    // Created, or removed, by someone else between our two calls: try again.
    for _ in 0..3 {
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

fn worker_role(name: &str, iterations: u64, patience: Duration, say: &Narrator) -> Result<()> {
    let (sem, created) = open_or_create(name, 1, say)?;
    let counter = match CounterMap::open_or_create(&counter_name(name), say) {
        Ok(counter) => counter,
        Err(e) => {
            if created {
                // A failed create leaves nothing: not even the semaphore.
                let _ = psem::unlink(name);
            }
            return Err(e);
        }
    };
    let shared = counter.get();
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

fn wait_role(name: &str, timeout: Option<Duration>, value: u32, say: &Narrator) -> Result<()> {
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
    let sem = NamedSem::open_own(name).map_err(|e| refused(name, e))?;
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
    // Checked first: sem_unlink would remove anyone's file (as root).
    let sem = NamedSem::open_own(name).map_err(|e| match e {
        OpenError::Sys(Errno::ENOENT) => anyhow::anyhow!("sem_unlink({name}): no such semaphore"),
        e => refused(name, e),
    })?;
    drop(sem);
    psem::unlink(name).with_context(|| format!("sem_unlink({name})"))?;
    say.step(format!(
        "sem_unlink({name}): removed {}",
        psem::sem_path(name)
    ));
    let counter = counter_name(name);
    if !CounterMap::check_for_removal(&counter)? {
        return Ok(());
    }
    shm_unlink(counter.as_str()).with_context(|| format!("shm_unlink({counter})"))?;
    say.step(format!("shm_unlink({counter}): removed the worker counter"));
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

/// Refuse a set that is not ours or not sem-demo's shape (one semaphore).
/// Skippable on a first reading: hardening.
fn check_set(set: SemSet, key: libc::key_t) -> Result<()> {
    let st = set.stat().context("semctl(IPC_STAT)")?;
    if st.uid != geteuid().as_raw() {
        bail!(
            "semid {} (key {key:#010x}) belongs to {}, not to you, {}: sem-demo leaves it alone",
            set.id,
            whose(st.uid),
            me()
        );
    }
    if st.nsems != 1 {
        bail!(
            "semid {} (key {key:#010x}) has {} semaphores, sem-demo's sets have 1: another \
             program's set under the same key, refusing to use it",
            set.id,
            st.nsems
        );
    }
    Ok(())
}

/// Create the set for `path` with `value`, race-free, or open the existing
/// one once its creator has initialised it.
/// Returns whether we created it.
fn sysv_open_or_create(path: &Path, value: u16, say: &Narrator) -> Result<(SemSet, bool)> {
    let key = sysv_key(path)?;
    match SemSet::create_initialised(key, 0o600, &[value]) {
        Ok(set) => {
            say.step(format!(
                "semget({key:#010x}, 1, IPC_CREAT|IPC_EXCL|0600) = semid {}; SETVAL 0, then a \
                 first semop(+{value}): it sets sem_otime, which tells other processes the set \
                 is ready (a post before that would be wiped by a SETVAL)",
                set.id
            ));
            Ok((set, true))
        }
        Err(Errno::EEXIST) => Ok((sysv_open(path, say)?, false)),
        Err(Errno::ERANGE) => bail!("semop(+{value}): ERANGE, over SEMVMX ({SEMVMX})"),
        Err(e) => Err(e).context("semget(IPC_CREAT|IPC_EXCL) + initialisation"),
    }
}

/// The existing set for `path`: ours, one semaphore, initialised.
fn sysv_open(path: &Path, say: &Narrator) -> Result<SemSet> {
    let set = sysv_find(path)?;
    let key = sysv_key(path)?;
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

fn sysv_find(path: &Path) -> Result<SemSet> {
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

/// `shmctl(IPC_STAT)`: (owner uid, size).
fn shm_owner_size(id: libc::c_int) -> Result<(u32, usize)> {
    // SAFETY: an all-zero shmid_ds is a valid value (integers only).
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one shmid_ds through the valid pointer.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) })
        .context("shmctl(IPC_STAT)")?;
    Ok((ds.shm_perm.uid, ds.shm_segsz))
}

/// Refuse a segment that is not ours or not a Counter's size.
fn check_segment(id: libc::c_int) -> Result<()> {
    let (uid, size) = shm_owner_size(id)?;
    if uid != geteuid().as_raw() {
        bail!(
            "shmid {id} belongs to {}, not to you, {}: sem-demo leaves it alone",
            whose(uid),
            me()
        );
    }
    if size != size_of::<Counter>() {
        bail!(
            "shmid {id} is {size} bytes, where sem-demo's counter is {}: another program's \
             segment under the same key, refusing to use it",
            size_of::<Counter>()
        );
    }
    Ok(())
}

/// The System V counter: a shared memory segment with the set's key.
struct SysvCounter {
    base: NonNull<libc::c_void>,
    id: libc::c_int,
}

impl SysvCounter {
    fn open_or_create(key: libc::key_t, say: &Narrator) -> Result<SysvCounter> {
        let len = size_of::<Counter>();
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
        // Removed again if attaching fails, when we made it.
        let guard = created.then(|| SysvGuard::new(SysvKind::SharedMemory, id));
        // SAFETY: attach at a kernel-chosen address.
        let base = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        let base = match NonNull::new(base).filter(|_| base as isize != -1) {
            Some(base) => base,
            None => return Err(Errno::last()).context("shmat"),
        };
        let counter = SysvCounter { base, id };
        if created {
            // A new segment is zero-filled; the magic, last, says "ready".
            counter.get().magic.store(COUNTER_MAGIC, Ordering::Release);
            std::mem::forget(guard);
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

    fn get(&self) -> &Counter {
        // SAFETY: the attachment is page-aligned and size_of::<Counter>()
        // long (made or checked so); all fields are atomics.
        unsafe { self.base.cast::<Counter>().as_ref() }
    }
}

impl Drop for SysvCounter {
    fn drop(&mut self) {
        // SAFETY: `base` came from shmat; nothing borrows it now.
        unsafe { libc::shmdt(self.base.as_ptr()) };
    }
}

fn sysv_role(role: &str, path: &Path, opts: &RoleOptions, say: &Narrator) -> Result<()> {
    match role {
        "worker" => {
            let (set, created) = sysv_open_or_create(path, 1, say)?;
            let counter = match SysvCounter::open_or_create(sysv_key(path)?, say) {
                Ok(counter) => counter,
                Err(e) => {
                    if created {
                        // A failed create leaves nothing: not even the set.
                        let _ = set.remove();
                    }
                    return Err(e);
                }
            };
            let value = &counter.get().value;
            let start = Instant::now();
            for _ in 0..opts.iterations {
                // SEM_UNDO: if we die holding the lock, the kernel releases it.
                if !sysv_take(set, 0, true, opts.patience)? {
                    // GETPID: the last process to change the value, the
                    // holder if the lock is held (its SEM_UNDO would have
                    // given the lock back had it died).
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
                        opts.patience.as_secs()
                    );
                }
                let v = value.load(Ordering::Relaxed);
                value.store(v + 1, Ordering::Relaxed);
                set.op(0, 1, true, LOCK_TICK)
                    .context("semop(+1, SEM_UNDO)")?;
            }
            say.step(format!(
                "{} increments under semid {} (SEM_UNDO) in {}; the counter (shmid {}) is now {}",
                opts.iterations,
                set.id,
                secs(start.elapsed()),
                counter.id,
                value.load(Ordering::Relaxed)
            ));
            Ok(())
        }
        "wait" => {
            let value = u16::try_from(opts.value).unwrap_or(SEMVMX);
            let (set, _) = sysv_open_or_create(path, value, say)?;
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
            let set = sysv_open(path, say)?;
            match set.op(0, 1, false, LOCK_TICK) {
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
        _ => {
            let key = sysv_key(path)?;
            let set = sysv_find(path)?;
            // Checked first: as root, IPC_RMID would remove anyone's set.
            // Not initialised is fine: removing a half-made set is the cure.
            check_set(set, key)?;
            sysv_remove(SysvKind::SemaphoreSet, set.id).context("semctl(IPC_RMID)")?;
            say.step(format!("semctl(semid {}, IPC_RMID): removed", set.id));
            // SAFETY: shmget takes no pointers.
            let id = unsafe { libc::shmget(key, 0, 0) };
            if id >= 0 {
                check_segment(id)?;
                sysv_remove(SysvKind::SharedMemory, id).context("shmctl(IPC_RMID)")?;
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
    /// worker: the longest wait for the lock (--timeout, default 60 s).
    patience: Duration,
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
            "sysv needs a role: worker, wait, post or remove (the story runs System V in steps 5 to 7)",
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
        patience: LOCK_PATIENCE,
        value: 0,
    };
    // What the kernel accepts as a semaphore's value: System V's SEMVMX
    // (ERANGE above it), POSIX's SEM_VALUE_MAX (EINVAL above it).
    let value_max = if sysv {
        u32::from(SEMVMX)
    } else {
        psem::value_max()
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
                let t = Duration::from_secs(args.number("--timeout", 1, 86_400)?);
                opts.timeout = Some(t);
                opts.patience = t;
            }
            "--value" => opts.value = args.number("--value", 0, value_max)?,
            other => return Err(args.unknown(other)),
        }
        given.push(arg);
    }
    // Options that do not apply are refused, not ignored.
    let allowed: &[&str] = match role.as_deref() {
        None => &["--workers", "--iterations", "--quiet"],
        Some("worker") => &["--name", "--key", "--iterations", "--timeout"],
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
        "worker" => worker_role(&name, opts.iterations, opts.patience, &say),
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
