//! Shared pieces of the ipc-examples demos.
//!
//! A demo's `main` looks like this, and each line is one module:
//!
//! ```text
//! error::run("x-demo", || {                 // error:   exit 0 / 1 / 2 / 128+N, one line on stderr
//!     let mut args = Args::from_env(HELP)?; // cli:     --count, --size, --quiet, --help
//!     stop_on_signals()?;                   // cleanup: Ctrl-C becomes an orderly stop
//!     let _dir = PrivateDir::create("x")?;  // cleanup: guards remove named objects on drop
//!     let mut peer = Peer::spawn_self(..)?; // peer:    the other role, stopped and reaped on drop
//!     let say = Narrator::new(..);          // report:  "[role] step" lines, the summary line
//!     write_frame(..) / read_frame(..)      // frame:   messages over a byte stream
//!     payload::fill(..) / Checker::check(..)// payload: bodies the receiver checks itself
//! })
//! ```
//!
//! | module | main items | uses | nix features |
//! |--------|------------|------|--------------|
//! | [`error`] | [`run`](error::run), [`UsageError`](error::UsageError), [`Interrupted`](error::Interrupted) | – | `signal` |
//! | [`cli`] | [`Args`](cli::Args): `next`, `value`, `number`, `posix_name`, `unknown` | `error` | – |
//! | [`cleanup`] | [`stop_on_signals`](cleanup::stop_on_signals), [`check_stop`](cleanup::check_stop), [`StopOnSignal`](cleanup::StopOnSignal); guards [`PrivateDir`](cleanup::PrivateDir), [`PathGuard`](cleanup::PathGuard), [`ShmGuard`](cleanup::ShmGuard), [`MqGuard`](cleanup::MqGuard), [`SysvGuard`](cleanup::SysvGuard) | `error` | `signal` |
//! | [`peer`] | [`Peer`](peer::Peer), [`PeerExit`](peer::PeerExit), [`PidWatch`](peer::PidWatch), [`PidTracker`](peer::PidTracker), [`pidfd_note`](peer::pidfd_note), [`alive`](peer::alive), [`wait_pid`](peer::wait_pid), [`Ticker`](peer::Ticker) | `cleanup` | `poll`, `process`, `signal` |
//! | [`report`] | [`Narrator`](report::Narrator), [`Summary`](report::Summary) | `error` | – |
//! | [`payload`] | [`fill`](payload::fill), [`Checker`](payload::Checker), [`CheckReport`](payload::CheckReport) | – | – |
//! | [`frame`] | [`write_frame`](frame::write_frame), [`read_frame`](frame::read_frame), [`split_frame`](frame::split_frame) | `cleanup` | – |
//! | [`psem`] | POSIX semaphores over `libc`: [`SharedSem`](psem::SharedSem) (`sem_init` in shared memory), [`NamedSem`](psem::NamedSem) (`sem_open`) | `cleanup` | `time` |
//! | [`sysv_sem`] | System V semaphore sets over `libc`: [`SemSet`](sysv_sem::SemSet), [`ftok`](sysv_sem::ftok) | `cleanup`, `psem` | – |
//!
//! Each module is one file that depends only on `nix`, `libc`, `anyhow` and
//! the modules in its "uses" column (and theirs), which it names as
//! `crate::MODULE`. So a demo copied into coursework takes the modules its
//! header lists into a crate named `common` of its own, unchanged, and they
//! build there in edition 2021 as well as 2024 (`tools/copy-demo.sh`).
//!
//! Where a guard's `Drop` removes an object, the guard says which call does
//! it (`unlink`, `shm_unlink`, `mq_unlink`, `IPC_RMID`); the same objects are
//! also removed by a second Ctrl-C (see [`cleanup`]).

pub mod cleanup;
pub mod cli;
pub mod error;
pub mod frame;
pub mod payload;
pub mod peer;
pub mod psem;
pub mod report;
pub mod sysv_sem;
