//! Shared pieces of the ipc-examples demos.
//!
//! Each module is one file that depends only on `nix`, `libc` and `anyhow`
//! (and, for `cleanup`, on `error`), so a demo copied into coursework takes
//! its `src/` plus the modules its header lists.
//!
//! - [`error`]: error types and the `main` wrapper (exit status 1 or 2).
//! - [`cli`]: a tiny parser for the shared options.
//! - [`frame`]: length-prefixed messages over a byte stream.
//! - [`payload`]: message bodies a receiver can check without trusting the sender.
//! - [`cleanup`]: Ctrl-C handling and guards that remove named kernel objects.
//! - [`peer`]: start, wait for and describe the other process; is it alive?
//! - [`psem`]: POSIX semaphores (`sem_init`, `sem_timedwait`, ...) over `libc`.
//! - [`report`]: narration lines and the summary line.
//! - [`sysv_sem`]: System V semaphore sets (`semget`, `semctl`, `semop`) over `libc`.

pub mod cleanup;
pub mod cli;
pub mod error;
pub mod frame;
pub mod payload;
pub mod peer;
pub mod psem;
pub mod report;
pub mod sysv_sem;
