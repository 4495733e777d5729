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
//! | direction     | none: a counter that any user posts or waits on | the same | the same             |
//! | who can talk  | anyone who can open the name | processes mapping the memory | anyone with the key and mode |
//! | message boundaries | none: no data, only a count | none                 | none                         |
//! | lives in      | file `/dev/shm/sem.NAME`, mapped by each opener | your (shared) memory | the kernel, by key/id |
//! | post / wait   | atomics; futex to sleep or wake | atomics; futex to sleep or wake | a system call each |
//! | per call      | one semaphore            | one semaphore                | several, atomically          |
//! | crash of holder | stays taken            | stays taken                  | undone with `SEM_UNDO`       |
//! | persistence   | until `sem_unlink`       | as long as the memory        | until `IPC_RMID`             |
//! | capacity (largest value) | `SEM_VALUE_MAX` (2^31-1) | `SEM_VALUE_MAX` | `SEMVMX` (32767)             |
//! | blocking      | wait on 0 sleeps (`sem_timedwait`: until a deadline; `sem_trywait`: `EAGAIN`); post never blocks | the same | `semop` sleeps while it cannot apply (`IPC_NOWAIT`: `EAGAIN`; `semtimedop`: a timeout) |
//!
//! `sem_open("/x")` is the file `/dev/shm/sem.x`: the same directory as
//! `shm_open`'s segments, so `shm_open("/sem.x")` names the very same file.
//! sem-demo therefore checks a semaphore (and a counter segment) it did not
//! create before using or removing it: owner, size, and a magic number.
//!
//! ## Run it
//!
//! One terminal, the whole story (its workers are forked children, which
//! inherit the shared page that holds the unnamed semaphores):
//!
//! ```text
//! cargo run -p sem-demo                          # the whole story, nine steps
//! cargo run -p sem-demo -- --workers 8 --iterations 10000
//! ```
//!
//! Two (or more) terminals, unrelated processes meeting by name or key:
//!
//! ```text
//! cargo build -p sem-demo
//! target/debug/sem-demo worker --name /demo      # in several terminals at once
//! target/debug/sem-demo wait --name /demo-go --timeout 30   # terminal 1
//! target/debug/sem-demo post --name /demo-go                # terminal 2
//! target/debug/sem-demo remove --name /demo
//! touch /tmp/demo.key
//! target/debug/sem-demo sysv worker --key /tmp/demo.key     # System V, by ftok(PATH)
//! target/debug/sem-demo sysv remove --key /tmp/demo.key
//! ```
//!
//! `sem-demo sysv` with no role runs the System V half of the story on its
//! own (the race, a System V semaphore as the lock, a set, its
//! initialisation race, a holder killed under SEM_UNDO), as `shm-demo sysv`
//! and `msgq-demo sysv` do; `sem-demo` tells both families side by side.
//!
//! ## What to look for
//!
//! - updates lost without a lock (the workers start together at a
//!   barrier), none with one, and what the lock costs;
//! - a semaphore at 0 ordering two processes; `EAGAIN` and `ETIMEDOUT`;
//! - several System V semaphores changed in one atomic `semop`;
//!   `IPC_NOWAIT` failing with `EAGAIN`; `GETNCNT` and `GETZCNT` counting
//!   the processes that wait for a rise and for zero;
//! - System V's initialisation race: a post lost between `semget` and
//!   `SETVAL`, then the order that cannot lose it (`sem_otime`);
//! - a lock holder killed by SIGKILL: given back by `SEM_UNDO`, stuck with
//!   POSIX until a timed wait notices the holder is dead, and handed on
//!   with `EOWNERDEAD` by a robust process-shared pthread mutex;
//! - which clock a timeout counts on: `sem_timedwait`'s wall clock,
//!   `sem_clockwait(CLOCK_MONOTONIC)`, and what a clock change would do;
//! - a counting semaphore at N: never more than N users of a pool at once.
//!
//! The mechanism is in `src/ipc_posix.rs` (POSIX: `sem_open`, `sem_init`,
//! `sem_timedwait`, `sem_post`, `sem_unlink`) and `src/ipc_sysv.rs`
//! (System V: `semget`, `semctl`, `semop`); the story's steps in
//! `src/story.rs`; forked children and the owner and shape checks in
//! `src/checks.rs`.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `peer`, `psem`,
//! `report`, `sysv_sem`; `nix` features: `fs`, `mman`, `poll`, `process`,
//! `signal`, `time`, `user`.
//!
//! Read next: `shm-demo` (shared memory, synchronised with these semaphores).
//! See also: `eventfd-demo` for an fd-based counter (one you can `poll`),
//! `msgq-demo` (a queue that carries data where a semaphore carries a count).

mod checks;
mod ipc_posix;
mod ipc_sysv;
mod story;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use common::cleanup::stop_on_signals;
use common::cli::{Args, MAX_COUNT};
use common::error::{self, usage};
use common::psem;
use common::report::{Narrator, Stream};
use common::sysv_sem::SEMVMX;

const USAGE: &str = "\
sem-demo: semaphores for mutual exclusion and signalling between processes

USAGE:
    sem-demo [--workers K] [--iterations N] [--quiet]
        The whole story: a race without a lock, a POSIX named and an unnamed
        semaphore as locks, a semaphore as a signal, System V sets (IPC_NOWAIT,
        GETZCNT), System V's initialisation race, a lock holder killed by
        SIGKILL (SEM_UNDO, POSIX, a robust mutex), the clock of a timeout, and
        a counting semaphore guarding a pool.
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
        sem_unlink /NAME (and its counter, if any). A semaphore that worker
        or wait created stays after they end, so that other terminals can go
        on using it: remove is how it goes.
    sem-demo sysv [--workers K] [--iterations N] [--quiet]
        The System V half of the story on its own, as 'shm-demo sysv' and
        'msgq-demo sysv' do: the race, a System V semaphore as the lock
        (semop with SEM_UNDO), a set, its initialisation race, a holder killed.
    sem-demo sysv worker|wait|post|remove --key PATH [...]
        The roles with a System V semaphore set found by ftok(PATH), which
        must be an existing file.

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

/// How long any one lock acquisition waits before we suspect a dead holder
/// (POSIX) or look for a stop request.
pub const LOCK_TICK: Duration = Duration::from_millis(100);
/// A worker that cannot get the lock for this long gives up (the default
/// of a role's --timeout, the story's workers' bound).
pub const LOCK_PATIENCE: Duration = Duration::from_secs(60);
/// How long a process that found an object being created waits for its
/// creator to finish (System V: the first semop; POSIX: size and magic).
pub const INIT_PATIENCE: Duration = Duration::from_secs(5);

/// The story's options (no role).
#[derive(Debug)]
pub struct StoryOptions {
    pub workers: u64,
    pub iterations: u64,
    pub quiet: bool,
}

/// A role's options (`worker`, `wait`, `post`, `remove`, POSIX or System V).
#[derive(Debug)]
pub struct RoleOptions {
    pub name: Option<String>,
    pub key: Option<PathBuf>,
    pub iterations: u64,
    /// wait: give up after this long (None: until a post or Ctrl-C).
    pub timeout: Option<Duration>,
    /// worker: the longest wait for the lock (--timeout, default 60 s).
    pub patience: Duration,
    pub value: u32,
}

fn main() -> ExitCode {
    error::run("sem-demo", run)
}

fn run() -> Result<()> {
    let mut args = Args::from_env(USAGE)?;
    const ROLES: [&str; 4] = ["worker", "wait", "post", "remove"];
    let first = args.role(&["worker", "wait", "post", "remove", "sysv"])?;
    let sysv = first.as_deref() == Some("sysv");
    let role = if sysv { args.role(&ROLES)? } else { first };
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
        // Like every variant with no role (`shm-demo sysv`, `msgq-demo sysv`):
        // a story, here the System V half of the one `sem-demo` tells.
        return if sysv {
            story::story_sysv(&story_opts)
        } else {
            story::story(&story_opts)
        };
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
        return match role.as_str() {
            "worker" => ipc_sysv::worker(&key, opts.iterations, opts.patience, &say),
            "wait" => ipc_sysv::wait(&key, opts.timeout, opts.value, &say),
            "post" => ipc_sysv::post(&key, &say),
            _ => ipc_sysv::remove(&key, &say),
        };
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
        "worker" => ipc_posix::worker(&name, opts.iterations, opts.patience, &say),
        "wait" => ipc_posix::wait(&name, opts.timeout, opts.value, &say),
        "post" => ipc_posix::post(&name, &say),
        _ => ipc_posix::remove(&name, &say),
    }
}
