//! # signal-demo: signals, from handlers to signalfd
//!
//! A signal is the kernel's asynchronous notification to a process: a
//! number, a little information about who sent it (and, for real-time
//! signals, one integer), delivered between any two instructions.
//!
//! | property          | signals                                                        |
//! |-------------------|----------------------------------------------------------------|
//! | direction         | one way: sender to target process; a reply is another signal   |
//! | who can talk      | any process allowed to signal the target (same user, or root); the kernel itself (faults, timers, SIGCHLD) |
//! | message boundaries| one signal is one event; its content is its number, the sender's pid and uid, and with `sigqueue` one integer |
//! | persistence       | none: a pending signal dies with its target; nothing to clean up |
//! | capacity          | standard signals (1-31): one pending bit each; real-time signals: a queue of up to `RLIMIT_SIGPENDING` per user |
//! | blocking rules    | sending never blocks (`sigqueue` fails with `EAGAIN` when the queue is full); receiving is a handler that interrupts the code, or a wait (`signalfd`, `poll`) |
//!
//! Its rules are the ones students trip over:
//!
//! | rule              | what happens                                                   |
//! |-------------------|----------------------------------------------------------------|
//! | handler           | runs in the middle of whatever the process was doing: only async-signal-safe calls (an atomic store, `write` to a pipe), never `println!`, locks or allocation |
//! | nesting           | a handler blocks only its own signal (plus `sa_mask`): another signal interrupts it, and its handler runs first |
//! | blocked (masked)  | the signal waits as *pending* until unblocked; pending signals are taken lowest number first |
//! | standard signals  | do not queue: sent 3 times while pending, delivered once (they *coalesce*, and nobody is told) |
//! | real-time signals | `SIGRTMIN..SIGRTMAX` queue, in order, each with its value (`sigqueue`), up to `RLIMIT_SIGPENDING`; past it `sigqueue` fails with `EAGAIN` |
//! | blocking calls    | interrupted with `EINTR`, unless the handler has `SA_RESTART`  |
//! | SIGKILL, SIGSTOP  | cannot be caught, blocked or ignored                           |
//! | signal 0          | `kill(pid, 0)` delivers nothing: it asks "does pid exist, may I signal it?" |
//!
//! ## Run it
//!
//! ```text
//! cargo run -p signal-demo                       # the tour, fifteen steps
//! cargo run -p signal-demo -- receiver           # terminal 1: prints its pid
//! kill -USR1 PID                                 # terminal 2, or:
//! cargo run -p signal-demo -- sender --pid PID --signal RTMIN+1 --value 7 --count 3
//! cargo run -p signal-demo -- sender --pid PID --signal 0     # a probe: is PID there?
//! ```
//!
//! The receiver waits for signals without a time limit (it waits for a
//! person); `--timeout SECS` bounds every wait, and with `--count N` it waits
//! at most 60 s for each signal after the first. Ctrl-C or SIGTERM makes it
//! print its counts and summary, then exit 130 or 143.
//!
//! ## What to look for
//!
//! - who sent each signal (`si_pid`) and how (`si_code`: kill, sigqueue, kernel);
//! - two signals pending at once: SIGUSR2's handler runs *inside* SIGUSR1's,
//!   unless `sa_mask` makes them take turns (lowest number first);
//! - 3 sends of SIGUSR1 while blocked arriving once; 3 of SIGRTMIN+1 arriving 3 times;
//! - `read` failing with `EINTR`, then the same read restarted with `SA_RESTART`;
//! - a zombie in `/proc/PID/stat` until `waitpid`;
//! - SIGSEGV and SIGFPE from real faults, reported by `waitpid`;
//! - the same signals read as records from a `signalfd`, lowest number first;
//! - a flood: a handler's self-pipe overflows and loses records (counted),
//!   a `signalfd` keeps every one queued in the kernel;
//! - `sender --signal USR2 --count 2000`: the receiver counts far fewer;
//! - a wake-up sent between a flag check and `pause()`: lost (pause sleeps
//!   until a timer); the same with `sigsuspend`: kept;
//! - `sigtimedwait` taking a blocked signal with its siginfo, and `EAGAIN`;
//! - five children exiting while SIGCHLD is blocked: one SIGCHLD, and the
//!   handler's `waitpid(-1, WNOHANG)` loop reaps all five; with SIG_IGN no
//!   zombie at all and `waitpid` → `ECHILD`;
//! - SIGBUS from reading a mapping past the end of a truncated file;
//! - signal round trips per second (ping-pong with `sigsuspend`);
//! - a pidfd turning readable when its process exits, then `ESRCH`; as
//!   root, a pid reused in a new pid namespace: `kill(pid, 0)` answers for
//!   the newcomer, the old pidfd says `ESRCH`.
//!
//! The mechanism is in `src/ipc.rs`; the story's steps in `src/story.rs`.
//! (The tour's fork-and-pipe plumbing and the fault-raising helpers are in
//! `src/checks.rs`, which a first reading may skip.)
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `peer`, `report`;
//! `nix` features: `fs`, `mman`, `poll`, `process`, `signal`.
//!
//! Read next: `socket-demo` (Unix domain sockets: a byte stream or
//! datagrams between any two processes, where a signal carries one int).
//! See also: `pipe-demo` for SIGPIPE (a write to a pipe nobody reads),
//! `msgq-demo` for `mq_notify`'s signal (a message queue that signals its
//! reader), `eventfd-demo` (a counter on a descriptor: the wake-up a
//! signal handler's self-pipe imitates); signal(7), sigaction(2),
//! signalfd(2), sigqueue(3), pidfd_open(2).

mod checks;
mod ipc;
mod story;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use common::cli::{Args, MAX_COUNT};
use common::error::{self, usage};
use nix::sys::signal::Signal;

const HELP: &str = "\
signal-demo: signals, from handlers to signalfd

USAGE:
    signal-demo [--quiet]
        The tour, fifteen steps, with forked children: SA_SIGINFO handlers
        and how they nest, blocking and pending, queued real-time signals,
        EINTR vs SA_RESTART, a timer, SIGCHLD and zombies, what cannot be
        caught, hardware faults, signalfd, a flood (self-pipe vs signalfd),
        the wake-up pause() loses and sigsuspend keeps, sigtimedwait,
        SIGCHLD reaping (WNOHANG loop, SIG_IGN), SIGBUS, a ping-pong, and
        pidfds (a reused pid shown in a new pid namespace when root).
    signal-demo receiver [--count N] [--timeout SECS] [--quiet]
        Print this process's pid, then one line per signal handled (SIGUSR1,
        SIGUSR2, SIGHUP, SIGALRM, SIGQUIT, SIGRTMIN..SIGRTMAX), then a count
        per signal and the summary. Ends after N signals with --count. SIGINT
        (Ctrl-C) and SIGTERM ask it to stop: it prints its counts and the
        summary, then exits 130 or 143, like every demo stopped by a signal;
        a second one ends it at once.
    signal-demo sender --pid PID --signal SIG [--value V] [--count N]
                       [--timeout SECS] [--quiet]
        Send SIG to PID N times (default 1): with kill(2), or sigqueue(3) and
        the integer V when --value is given; then the summary. SIG is USR1,
        SIGUSR1, RTMIN+2, RTMAX-1 or a number; 0 only probes (below).

OPTIONS:
    --pid PID       the process to signal (1 or more)
    --signal SIG    the signal. 0 is kill(PID, 0): a probe that delivers
                    nothing; exit 0 if PID exists and we may signal it, 1 if
                    not (ESRCH, EPERM). It cannot tell whether PID is still
                    the process you meant: pids are reused (a pidfd can).
    --value V       an integer sent along with sigqueue(3)
    --count N       signals to send, or to handle before exiting
    --timeout SECS  1..86400. Receiver: the longest it waits for the next
                    signal before it gives up (exit 1). Without it, the first
                    wait has no limit (the receiver waits for a person or a
                    script, as a server waits for its first client); with
                    --count, each later wait is at most 60 s; without --count
                    the receiver waits until it is stopped. Sender: the
                    longest it retries while the receiver's queue of pending
                    signals is full (EAGAIN), default 60.
    --quiet         no line per signal: the steps, the counts, the summary
    -h, --help      this text

COUNTING: standard signals (1-31) coalesce: one sent while the same signal
is still pending merges into it, and neither side is told, so a receiver
may handle fewer than were sent. Real-time signals queue, one delivery each,
up to RLIMIT_SIGPENDING pending signals per user; past that sigqueue fails
with EAGAIN (the sender waits and retries). The receiver's handler counts
every signal with an atomic counter; a record it could not write to its
self-pipe (full) is counted as an error: the signal was handled, who sent
it and its value are lost.

EXIT STATUS: 0 success, 1 runtime error (ESRCH: no such process; EPERM: not
permitted; records lost; --count not reached within the idle timeout; an
expectation of the tour not met), 2 bad command line, 130/143 stopped by
SIGINT/SIGTERM (the receiver prints its summary first).
";

/// The options the two roles share (the tour takes only --quiet).
#[derive(Debug)]
pub struct Options {
    pub count: Option<u64>,
    pub timeout: Option<Duration>,
    pub quiet: bool,
}

fn main() -> ExitCode {
    error::run("signal-demo", run)
}

fn run() -> Result<()> {
    let mut args = Args::from_env(HELP)?;
    let role = args.role(&["receiver", "sender"])?;
    let (mut pid, mut signal, mut value, mut quiet) = (None, None, None, false);
    let (mut count, mut timeout) = (None, None);
    let mut given = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pid" => pid = Some(args.number("--pid", 1u64, i32::MAX as u64)? as i32),
            "--signal" => signal = Some(parse_signal(&args.value("--signal")?)?),
            "--value" => {
                let text = args.value("--value")?;
                value = Some(text.parse::<i32>().map_err(|_| {
                    usage(format!(
                        "--value expects a whole number that fits in 32 bits, got '{text}'"
                    ))
                })?);
            }
            "--count" => count = Some(args.number("--count", 1, MAX_COUNT)?),
            "--timeout" => {
                timeout = Some(Duration::from_secs(args.number(
                    "--timeout",
                    1u64,
                    86_400,
                )?))
            }
            "--quiet" => quiet = true,
            other => return Err(args.unknown(other)),
        }
        given.push(arg);
    }
    let allowed: &[&str] = match role.as_deref() {
        None => &["--quiet"],
        Some("receiver") => &["--count", "--timeout", "--quiet"],
        _ => &[
            "--pid",
            "--signal",
            "--value",
            "--count",
            "--timeout",
            "--quiet",
        ],
    };
    if let Some(bad) = given.iter().find(|g| !allowed.contains(&g.as_str())) {
        let whom = role
            .as_deref()
            .map_or("the tour".to_string(), |r| format!("the {r}"));
        return Err(usage(format!("{bad} is not an option of {whom}")));
    }
    let opts = Options {
        count,
        timeout,
        quiet,
    };
    match role.as_deref() {
        None => story::story(quiet),
        Some("receiver") => ipc::receiver(&opts),
        _ => {
            let pid = pid.ok_or_else(|| usage("the sender needs --pid PID"))?;
            let signo =
                signal.ok_or_else(|| usage("the sender needs --signal SIG, e.g. --signal USR1"))?;
            if signo == 0
                && let Some(bad) = ["--count", "--value", "--timeout"]
                    .iter()
                    .find(|o| given.iter().any(|g| g == *o))
            {
                return Err(usage(format!(
                    "{bad} does not go with --signal 0: a probe sends nothing"
                )));
            }
            ipc::sender(pid, signo, value, &opts)
        }
    }
}

/// "USR1", "SIGUSR1", "RTMIN+2", "RTMAX-1" or a number (0: the probe).
fn parse_signal(text: &str) -> Result<libc::c_int> {
    let bad = || {
        usage(format!(
            "--signal {text:?}: not a signal; try USR1, SIGTERM, RTMIN+2 or a number"
        ))
    };
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let rt = |base: libc::c_int, rest: &str, sign: i32| -> Result<libc::c_int> {
        let n: i32 = if rest.is_empty() {
            0
        } else {
            rest[1..].parse().map_err(|_| bad())?
        };
        let signo = base + sign * n;
        if !(min..=max).contains(&signo) {
            return Err(usage(format!(
                "--signal {text}: out of range; real-time signals run from RTMIN ({min}) to RTMAX ({max})"
            )));
        }
        Ok(signo)
    };
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        if !rest.is_empty() && !rest.starts_with('+') {
            return Err(bad());
        }
        return rt(min, rest, 1);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        if !rest.is_empty() && !rest.starts_with('-') {
            return Err(bad());
        }
        return rt(max, rest, -1);
    }
    if let Ok(n) = text.parse::<i32>() {
        // 0 is not a signal but a probe: kill(pid, 0) checks, delivers nothing.
        if (0..=max).contains(&n) {
            return Ok(n);
        }
        return Err(usage(format!(
            "--signal {n}: signal numbers run from 1 to {max} (0: a probe that sends nothing)"
        )));
    }
    format!("SIG{bare}")
        .parse::<Signal>()
        .map(|s| s as libc::c_int)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::name;

    #[test]
    fn signal_names_parse() {
        assert_eq!(parse_signal("USR1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("sigterm").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("RTMIN+2").unwrap(), libc::SIGRTMIN() + 2);
        assert_eq!(parse_signal("SIGRTMAX-1").unwrap(), libc::SIGRTMAX() - 1);
        assert_eq!(parse_signal("RTMIN").unwrap(), libc::SIGRTMIN());
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("0").unwrap(), 0);
        for bad in ["RTMIN+99", "RTMAX+1", "USR3", "-1", "65", "RTMIN2", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
        assert_eq!(name(libc::SIGRTMIN() + 1), "SIGRTMIN+1");
        assert_eq!(name(libc::SIGUSR1), "SIGUSR1");
    }
}
