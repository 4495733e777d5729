//! # eventfd-demo: a counter in the kernel, shared through file descriptors
//!
//! `eventfd(2)` makes a 64-bit counter in the kernel and returns a file
//! descriptor for it. Writing 8 bytes adds to the counter; reading 8 bytes
//! takes from it and blocks while it is 0. It carries no data, only "how
//! many times did something happen": a wake-up, a doorbell, a semaphore.
//! Because it is a file descriptor it works with `poll`/`epoll` next to
//! pipes and sockets, which a semaphore cannot.
//!
//! | property     | eventfd |
//! |--------------|---------|
//! | direction    | any holder may add (write) and take (read); one counter, so a reply needs a second eventfd |
//! | who can talk | processes that hold the fd: inherited over `fork`, or received over a Unix socket (`SCM_RIGHTS`); it has no name |
//! | boundaries   | none: writes add up into one number; a read takes the sum (or 1 with `EFD_SEMAPHORE`) |
//! | persistence  | until the last fd for it is closed; nothing to clean up after a crash |
//! | capacity     | one u64 counter, 0 to 2^64-2 |
//! | blocking     | read blocks at 0, write blocks if the sum would pass 2^64-2; `EFD_NONBLOCK`: `EAGAIN` instead; `poll`/`epoll`: readable when > 0 |
//!
//! ## Run it
//!
//! ```text
//! cargo run -p eventfd-demo                                            # the story, six steps
//! cargo run -p eventfd-demo -- server --path /tmp/efd.sock --count 10  # terminal 1
//! cargo run -p eventfd-demo -- client --path /tmp/efd.sock             # terminal 2
//! ```
//!
//! ## What to look for
//!
//! - four `write`s of 1, 2, 3, 4 and one `read` → 10, then the counter is 0;
//! - with `EFD_SEMAPHORE` each `read` → 1 until `EAGAIN`;
//! - `EAGAIN` on a zero counter with `EFD_NONBLOCK`; a child asleep in
//!   `read(2)` (as `/proc/PID/syscall` shows) until a `write` wakes it;
//! - 2^64-2 is the most it holds: one more is `EAGAIN` (or a blocked
//!   writer), and writing 2^64-1 is `EINVAL`;
//! - one `epoll_wait` woken by a pipe and by the eventfd in turn;
//! - the eventfd sent with `SCM_RIGHTS` (no `MSG_CTRUNC`) to a program
//!   that never had it, and every event counted there exactly.
//!
//! The mechanism is in `src/ipc.rs`; the story that shows each rule is in
//! `src/story.rs`.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `peer`, `report`;
//! `nix` features: `event`, `poll`, `process`, `signal`, `socket`, `uio`, `user`.
//!
//! Read next: memfd-demo (a sealed memfd passed the same way).
//! See also: socket-demo for SCM_RIGHTS, sem-demo for the semaphores eventfd replaces.

mod ipc;
mod story;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::cleanup::{stop_on_signals, stop_requested};
use common::cli::{Args, MAX_COUNT};
use common::error::{self, Interrupted, usage};
use common::report::{Narrator, Stream, Summary};

const USAGE: &str = "\
eventfd-demo: eventfd counters between processes, with epoll

USAGE:
    eventfd-demo [--count N] [--timeout SECS] [--quiet]
        The story: counter and semaphore modes, the blocking rules, overflow,
        epoll on an eventfd and a pipe, then N events to an unrelated process
        that received the eventfd over a Unix socket (SCM_RIGHTS).
    eventfd-demo server --path SOCK [--count N] [--timeout SECS] [--quiet]
        Listen on SOCK, pass two eventfds to the first client that connects,
        post N events, each one taken and acknowledged before the next.
    eventfd-demo client --path SOCK [--count N] [--timeout SECS] [--quiet]
        Connect to SOCK, receive the eventfds, take every event, check the count.

OPTIONS:
    --path SOCK      the server's socket file: the server creates it (mode 0600)
                     and removes it; the client connects to it
    --count N        events (default 5; 1 to 1000000000). The client checks it
                     against what the server announces; without --count it
                     takes the server's number
    --size 8         an event is always one 8-byte write: 8 is the only size
    --timeout SECS   idle timeout (default 60; 1 to 86400): the longest a role
                     waits for its peer to make progress before it gives up
                     (exit 1). The server's wait for its first client is not
                     bounded: a server waits until somebody comes, or Ctrl-C
    --quiet          no line per event
    --no-summary     client only: no summary line (the story passes it, so that
                     its own summary is the run's one)
    -h, --help       this text

EXIT STATUS: 0 success, 1 runtime error (the peer left, a timeout, a wrong
count), 2 bad command line, 128+N stopped by signal N (130 for Ctrl-C), after
removing the socket file.
";

fn main() -> ExitCode {
    error::run("eventfd-demo", run)
}

fn run() -> Result<()> {
    let mut args = Args::from_env(USAGE)?;
    let role = args.role(&["server", "client"])?;
    let mut path: Option<PathBuf> = None;
    let mut count: Option<u64> = None;
    let mut timeout = Duration::from_secs(60);
    let mut quiet = false;
    let mut summary = true;
    let mut given: Vec<String> = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--path" => path = Some(PathBuf::from(args.value("--path")?)),
            "--count" => count = Some(args.number("--count", 1, MAX_COUNT)?),
            "--size" => {
                let size = args.value("--size")?;
                if size != "8" {
                    return Err(usage(format!(
                        "--size {size}: an eventfd carries a count, not a payload; every \
                         event is one 8-byte write, so 8 is the only size"
                    )));
                }
            }
            "--timeout" => timeout = Duration::from_secs(args.number("--timeout", 1, 86_400)?),
            "--quiet" => quiet = true,
            "--no-summary" => summary = false,
            other => return Err(args.unknown(other)),
        }
        given.push(arg);
    }
    let allowed: &[&str] = match role.as_deref() {
        None => &["--count", "--size", "--timeout", "--quiet"],
        Some("server") => &["--path", "--count", "--size", "--timeout", "--quiet"],
        _ => &[
            "--path",
            "--count",
            "--size",
            "--timeout",
            "--quiet",
            "--no-summary",
        ],
    };
    if let Some(bad) = given.iter().find(|g| !allowed.contains(&g.as_str())) {
        let whom = role
            .as_deref()
            .map_or("the story".to_string(), |r| format!("the {r}"));
        return Err(usage(format!("{bad} is not an option of {whom}")));
    }
    if role.is_some() && path.is_none() {
        return Err(usage(
            "the server and the client need --path SOCK (e.g. --path /tmp/efd.sock)",
        ));
    }
    let opts = ipc::Options {
        path: path.unwrap_or_default(),
        count,
        timeout,
        quiet,
    };
    stop_on_signals()?;
    let result = match role.as_deref() {
        None => story::story(&opts),
        Some("server") => server_role(&opts),
        _ => client_role(&opts, summary),
    };
    // Whatever failed after Ctrl-C (a peer that then left, an EINTR) was
    // caused by the stop: report the stop, so the exit status is 128+N.
    match (result, stop_requested()) {
        (Err(_), Some(signal)) => Err(Interrupted(signal).into()),
        (result, _) => result,
    }
}

fn server_role(opts: &ipc::Options) -> Result<()> {
    let say = Narrator::new("server", opts.quiet, Stream::Stdout);
    let start = Instant::now();
    let (listener, socket_file) = ipc::listen_at(&opts.path, &say)?;
    let tally = ipc::serve(&listener, opts, None, &say)?;
    drop(listener); // close(2)
    drop(socket_file); // unlink(2) of the socket file
    say.step(format!("removed {}", opts.path.display()));
    say.line(Summary {
        mechanism: "eventfd",
        messages: tally.events,
        bytes: tally.events * ipc::EVENT_BYTES,
        errors: 0,
        elapsed: start.elapsed(),
    });
    Ok(())
}

fn client_role(opts: &ipc::Options, summary: bool) -> Result<()> {
    let say = Narrator::new("client", opts.quiet, Stream::Stdout);
    let start = Instant::now();
    let tally = ipc::client(opts, &say)?;
    if summary {
        say.line(Summary {
            mechanism: "eventfd",
            messages: tally.events,
            bytes: tally.events * ipc::EVENT_BYTES,
            errors: 0,
            elapsed: start.elapsed(),
        });
    }
    Ok(())
}
