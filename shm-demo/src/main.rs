//! # shm-demo: shared memory with semaphores, or with futexes
//!
//! Shared memory maps the same physical pages into two address spaces:
//! what one process stores, the other can load, with no copy through the
//! kernel. That makes it the fastest IPC, and the one with no rules of its
//! own: the kernel does not order, count or protect anything. The programs
//! must synchronise themselves, here with two semaphores in the classic
//! bounded-buffer (producer/consumer) scheme, or (`shm-demo futex`) with
//! two counters in the segment and the futex system call underneath them.
//!
//! | property          | POSIX shared memory (`shm_open` + `mmap`)                |
//! |-------------------|-----------------------------------------------------------|
//! | direction         | any: both sides may read and write (here one way)         |
//! | who can talk      | processes that can open the name (`/dev/shm/NAME`, 0600)  |
//! | message boundaries| none: you design the layout (here: header + ring of slots)|
//! | persistence       | the name stays until `shm_unlink`, even with no process   |
//! | capacity          | whatever size you `ftruncate` it to                       |
//! | blocking          | none: loads and stores never wait; semaphores do          |
//! | waking (futex)    | FUTEX_WAIT/FUTEX_WAKE on a u32 in the segment, shared     |
//!
//! The segment this demo builds:
//!
//! ```text
//! +--------------------------------------------------------------+
//! | header: magic, version, slot count, slot size, receiver pid, |
//! |         sender pid (claimed once, by compare-and-swap),       |
//! |         sync kind, System V semid,                            |
//! |         sem_t empty (free slots), sem_t full (filled slots)   |
//! +--------------------------------------------------------------+
//! | slot 0: seq, message length, offset, piece length, flags,    |
//! |         data[slot size]                                       |
//! | slot 1 ...                                                    |
//! +--------------------------------------------------------------+
//! ```
//!
//! The sender waits on `empty`, writes the next slot, posts `full`; the
//! receiver waits on `full`, reads the next slot, posts `empty`. Each side
//! keeps its own slot index, so no index is shared (nor trusted). A message
//! larger than a slot is split over several slots and put back together.
//!
//! The same ring also runs on System V shared memory (`shm-demo sysv`):
//! `shmget`/`shmat` and a System V semaphore set instead of `shm_open`/
//! `mmap` and `sem_t`.
//!
//! The third variant (`shm-demo futex`) keeps the slots and drops the
//! semaphores: the sender counts the slots it published, the receiver the
//! slots it released (two u32 in the header, each on its own cache line);
//! a side with nothing to do spins briefly, then sets its "I sleep" flag
//! and sleeps in `FUTEX_WAIT` on the other's counter; the other side makes
//! the `FUTEX_WAKE` system call only when that flag is set. The receiver
//! checks each message in place in its slot (no copy out). The layout,
//! byte by byte, is at the top of `src/ipc_futex.rs`.
//!
//! ## Run it
//!
//! ```text
//! cargo run -p shm-demo                                 # the whole story
//! cargo run -p shm-demo -- --count 10000 --size 65536 --quiet
//! cargo run -p shm-demo -- receiver --name /demo        # terminal 1
//! cargo run -p shm-demo -- sender --name /demo --count 10   # terminal 2
//! cargo run -p shm-demo -- sysv                         # System V story
//! touch /tmp/demo.key
//! cargo run -p shm-demo -- sysv receiver --key /tmp/demo.key      # terminal 1
//! cargo run -p shm-demo -- sysv sender --key /tmp/demo.key        # terminal 2
//! cargo run -p shm-demo -- futex                        # futex story
//! cargo run -p shm-demo -- futex receiver --name /demo  # terminal 1
//! cargo run -p shm-demo -- futex sender --name /demo    # terminal 2
//! ```
//!
//! ## What to look for
//!
//! - why each semaphore is there, and what would break without it;
//! - the segment as a file under `/dev/shm`, and gone after the run;
//! - the sender writing straight into the slots: no intermediate buffer;
//! - one sender per segment: it claims `sender_pid` with a compare-and-swap
//!   from 0, so a second sender is refused instead of interleaving pieces;
//! - `posix_fallocate` after `ftruncate`: on tmpfs `ftruncate` reserves no
//!   memory, and a full `/dev/shm` (Docker's default is 64 MiB) would show
//!   up as a SIGBUS at the first touch of a page, not as an error code;
//! - a peer killed mid-transfer noticed within a second, a stopped one
//!   after the idle `--timeout`, never a hang;
//! - the initialisation race (step 2): one creator thanks to `O_EXCL`, an
//!   opener that comes early finds 0 bytes, then zeros, and waits (with a
//!   bound) for the MAGIC stored last with Release ordering;
//! - a check in place undone by the peer a moment later (TOCTOU), and a
//!   copy checked in private memory that holds (step 5);
//! - `shm_unlink` while mapped (step 6): the name leaves `/dev/shm` at
//!   once, the memory stays readable and writable until the last `munmap`;
//! - futex story: glibc's `sem_t` looked into (a value word that is the
//!   futex, and a waiter count: `sem_post` makes a `FUTEX_WAKE` only when
//!   someone waits); the counts of FUTEX_WAIT and FUTEX_WAKE calls of each
//!   run; a wake skipped because the receiver was awake; the semaphore ring
//!   against the futex ring at 64-byte messages; a sleeping waiter's CPU
//!   time (about 0) against a spinning one's (a core).
//!
//! ## Trust boundary
//!
//! Shared memory has no protection inside it: any process that can write
//! the segment (its owner, or root) can change any byte at any moment. The
//! demo checks what it can: the object's owner and shape before using or
//! removing it, every field and index before use, the `sem_t`s before
//! handing them to glibc (which aborts on garbage there), the peer's pid
//! against the peer's own `/proc/PID/maps` (then a pidfd watches it), and
//! every wait is bounded. What no check can prevent: a writer that garbles
//! messages (the receiver reports them), rewrites a `sem_t` between our
//! check and glibc's use, or truncates the object (SIGBUS: reported, ours
//! removed, exit 1). Against a peer you do not trust, use sealed memory
//! (`memfd_create` + `F_SEAL_SHRINK`/`F_SEAL_WRITE`, the fd passed with
//! `SCM_RIGHTS` as socket-demo shows) or
//! keep the synchronisation in the kernel (the System V variant's
//! semaphores live there, not in the segment).
//!
//! ## The files
//!
//! The mechanism is in `src/ipc_posix.rs` and `src/ipc_sysv.rs`, with the
//! ring both run in `src/ipc_ring.rs`: these three are the mechanism files,
//! to read side by side (the ring: layout, send and receive loops; the
//! other two: making, finding and removing the objects). The futex ring
//! is `src/ipc_futex.rs` (layout, wait, wake, send, receive); its roles
//! are at the end of `src/ipc_posix.rs`, on the same kind of object. The
//! story's steps are in `src/story.rs`; the checks and hardening (header,
//! `sem_t`, liveness, owner, SIGBUS) in `src/checks.rs`, which a first
//! reading may skip. `src/lib.rs` exists for ipc-bench, which measures the
//! same rings.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `payload`, `peer`,
//! `psem`, `report`, `sysv_sem`; `nix` features: `fs`, `mman`, `poll`,
//! `process`, `signal`, `time`, `user`.
//!
//! Read next: `eventfd-demo` (a counter in the kernel that wakes a waiter:
//! the usual partner of shared memory).
//! See also: `sem-demo` for the semaphores this demo uses, on their own;
//! `memfd-demo` for sealed memory that cannot be truncated under you.

mod ipc_posix;
mod ipc_sysv;
mod story;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use common::cleanup::stop_on_signals;
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, usage};

use shm_demo::ipc_futex::Strategy;
use shm_demo::ipc_ring::{MAX_MESSAGE, MAX_SLOT_SIZE, MAX_SLOTS};

const HELP: &str = "\
shm-demo: shared memory as a bounded buffer, synchronised with semaphores (or, with
`futex`, with two counters and the futex system call)

USAGE:
    shm-demo [--count N] [--size BYTES] [--slots K] [--slot-size BYTES] [--timeout SECS] [--quiet]
        The whole story in one terminal: this process creates the segment
        and receives; a sender process started from this program writes.
    shm-demo receiver --name /NAME [--count N] [--slots K] [--slot-size BYTES] [--quiet]
        Create the segment /NAME (removed on exit) and receive until the
        sender says it is done.
    shm-demo sender --name /NAME [--count N] [--size BYTES] [--quiet] [--no-summary]
        Open the receiver's segment /NAME and send N messages.
    shm-demo sysv [receiver|sender --key PATH] [options]
        The same with System V shared memory and a System V semaphore set,
        found by ftok(PATH): PATH must be an existing file.
    shm-demo futex [receiver|sender --name /NAME] [options] [--wait HOW]
        The same POSIX shared memory without semaphores: two counters in
        the segment, FUTEX_WAIT to sleep, FUTEX_WAKE only for a sleeper;
        the receiver checks each message in place in its slot.

OPTIONS:
    --name /NAME       the segment's name: a slash, then up to 250 characters
                       without a slash (it appears as /dev/shm/NAME)
    --key PATH         System V roles: the file whose ftok() key names the objects
    --count N          messages to send or expect (default 5; 1 to 1000000000)
    --size BYTES       bytes per message (default 64; 1 to 67108864); a message
                       larger than a slot is split over several slots
    --slots K          slots in the ring (default 8; 1 to 1024)
    --slot-size BYTES  data bytes per slot (default 4096; 1 to 1048576)
    --timeout SECS     idle timeout: give up (exit 1) when the peer makes no
                       progress for SECS seconds, e.g. it was stopped with
                       Ctrl-Z (default 60; 1 to 86400). One wait has no limit
                       on purpose: the receiver role waiting for its first
                       sender, as a server waits for its first client (Ctrl-C
                       ends it). A dead peer is noticed within 0.1 s anyway.
    --wait HOW         futex variant, story and receiver: how a side with
                       nothing to do waits: spin (never sleeps), yield (spin,
                       then sched_yield), futex (spin, then FUTEX_WAIT; the
                       default). The sender follows the receiver's choice
    --quiet            no line per message, only the steps and the summary
    --no-summary       sender only: its figures as a narration line, not a
                       summary line (the story starts its sender so, and
                       prints the run's one summary itself)
    -h, --help         this text

ONE SENDER, ONE RECEIVER: the sender claims the segment with a compare-and-
swap on the header's sender_pid; a second sender is refused (exit 1), and
the first transfer goes on unharmed.

/dev/shm IS A TMPFS OF LIMITED SIZE (Docker: 64 MiB unless --shm-size): the
receiver reserves the segment's pages with posix_fallocate, so a full
/dev/shm is an ENOSPC error naming its size, not a SIGBUS in mid-transfer.
If another process truncates the object while it is mapped, the next access
is a SIGBUS: both sides then say so, remove what is theirs and exit 1.

TRUST: whoever can write the segment (its owner, root) can corrupt it. Every
field read from it is checked, the peer's pid is confirmed in its own
/proc/PID/maps and watched through a pidfd, and every wait is bounded; but a
hostile writer can still garble messages (reported as errors) or end the
transfer. For a peer you do not trust, use sealed memfds (memfd_create +
F_SEAL_SHRINK, passed with SCM_RIGHTS as socket-demo shows).

EXIT STATUS: 0 success, 1 runtime error (including data errors and a peer
that died), 2 bad command line, 128+N stopped by signal N (130 for Ctrl-C).
";

const DEFAULT_SLOTS: u32 = 8;
const DEFAULT_SLOT_SIZE: u32 = 4096;
/// Seconds without progress from the peer before a role gives up.
const DEFAULT_TIMEOUT: u64 = 60;

/// The command line, shared by both variants and all roles.
#[derive(Debug)]
pub struct Options {
    name: Option<String>,
    key: Option<PathBuf>,
    count: u64,
    count_given: bool,
    size: usize,
    slots: u32,
    slot_size: u32,
    timeout: Duration,
    quiet: bool,
    /// false with --no-summary (the sender a story starts).
    summary: bool,
    /// The futex variant's wait strategy (--wait), set by the receiver.
    wait: Strategy,
}

/// Which synchronisation the ring uses: the first word of the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// POSIX shared memory, two `sem_t` in it (no word).
    Posix,
    /// System V shared memory and a System V semaphore set (`sysv`).
    Sysv,
    /// POSIX shared memory, two futex counters in it (`futex`).
    Futex,
}

impl Options {
    /// Arguments for a sender process started by a story: `role` words,
    /// then this run's --count, --size and --quiet.
    fn sender_args(&self, role: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = role.iter().map(|s| s.to_string()).collect();
        args.extend(["--count".into(), self.count.to_string()]);
        args.extend(["--size".into(), self.size.to_string()]);
        args.extend(["--timeout".into(), self.timeout.as_secs().to_string()]);
        if self.quiet {
            args.push("--quiet".into());
        }
        args
    }
}

fn main() -> ExitCode {
    error::run("shm-demo", run)
}

fn run() -> Result<()> {
    let mut args = Args::from_env(HELP)?;
    let first = args.role(&["sender", "receiver", "sysv", "futex"])?;
    let variant = match first.as_deref() {
        Some("sysv") => Variant::Sysv,
        Some("futex") => Variant::Futex,
        _ => Variant::Posix,
    };
    let role = if variant == Variant::Posix {
        first
    } else {
        args.role(&["sender", "receiver"])?
    };
    let opts = parse_options(&mut args, variant, role.as_deref())?;
    // Ctrl-C/SIGTERM interrupt the semaphore waits (EINTR); the roles then
    // return, and their guards remove what they created.
    stop_on_signals()?;
    // parse_options made sure a role has its --name or --key.
    let name = opts.name.as_deref().unwrap_or_default();
    let key = opts.key.as_deref().unwrap_or(std::path::Path::new(""));
    match (variant, role.as_deref()) {
        (Variant::Posix, None) => story::posix(&opts),
        (Variant::Posix, Some("receiver")) => ipc_posix::receiver(&opts, name),
        (Variant::Posix, _) => ipc_posix::sender(&opts, name),
        (Variant::Sysv, None) => story::sysv(&opts),
        (Variant::Sysv, Some("receiver")) => ipc_sysv::receiver(&opts, key),
        (Variant::Sysv, _) => ipc_sysv::sender(&opts, key),
        (Variant::Futex, None) => story::futex(&opts),
        (Variant::Futex, Some("receiver")) => ipc_posix::futex_receiver(&opts, name),
        (Variant::Futex, _) => ipc_posix::futex_sender(&opts, name),
    }
}

fn parse_options(args: &mut Args, variant: Variant, role: Option<&str>) -> Result<Options> {
    let sysv = variant == Variant::Sysv;
    let mut opts = Options {
        name: None,
        key: None,
        count: DEFAULT_COUNT,
        count_given: false,
        size: DEFAULT_SIZE,
        slots: DEFAULT_SLOTS,
        slot_size: DEFAULT_SLOT_SIZE,
        timeout: Duration::from_secs(DEFAULT_TIMEOUT),
        quiet: false,
        summary: true,
        wait: Strategy::SpinFutex,
    };
    let mut given = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => opts.name = Some(args.posix_name("--name", 250)?),
            "--key" => opts.key = Some(PathBuf::from(args.value("--key")?)),
            "--count" => {
                opts.count = args.number("--count", 1, MAX_COUNT)?;
                opts.count_given = true;
            }
            "--size" => opts.size = args.number("--size", 1, MAX_MESSAGE)?,
            "--slots" => opts.slots = args.number("--slots", 1, MAX_SLOTS)?,
            "--slot-size" => opts.slot_size = args.number("--slot-size", 1, MAX_SLOT_SIZE)?,
            "--timeout" => {
                opts.timeout = Duration::from_secs(args.number("--timeout", 1, 86400)?);
            }
            "--quiet" => opts.quiet = true,
            "--wait" if variant == Variant::Futex => {
                let word = args.value("--wait")?;
                opts.wait = Strategy::from_name(&word).ok_or_else(|| {
                    usage(format!("--wait takes spin, yield or futex, not {word:?}"))
                })?;
            }
            "--no-summary" if role == Some("sender") => opts.summary = false,
            other => return Err(args.unknown(other)),
        }
        given.push(arg);
    }
    // Options that do not apply are refused, not ignored.
    let has = |option: &str| given.iter().any(|g| g == option);
    let (needed, other) = if sysv {
        ("--key", "--name")
    } else {
        ("--name", "--key")
    };
    if has(other) {
        let variant = if sysv {
            "System V (it uses --key PATH)"
        } else {
            "POSIX (it uses --name /NAME)"
        };
        return Err(usage(format!(
            "{other} is not an option of the {variant} variant"
        )));
    }
    match role {
        None if has(needed) => {
            return Err(usage(format!(
                "{needed} is for the sender and receiver roles; the story picks its own"
            )));
        }
        Some(role) if !has(needed) => {
            let example = if sysv {
                "--key /tmp/demo.key"
            } else {
                "--name /demo"
            };
            return Err(usage(format!("the {role} needs {needed}, e.g. {example}")));
        }
        Some("receiver") if has("--size") => {
            return Err(usage(
                "--size is set by the sender; the receiver takes any size",
            ));
        }
        Some("sender") if has("--slots") || has("--slot-size") || has("--wait") => {
            return Err(usage(
                "--slots/--slot-size/--wait are set by the receiver, which creates the segment",
            ));
        }
        _ => {}
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_take_their_own_naming_option() {
        let parse = |words: &[&str], sysv, role| {
            let variant = if sysv { Variant::Sysv } else { Variant::Posix };
            parse_options(&mut Args::new(words.iter().copied()), variant, role)
        };
        assert!(parse(&["--key", "/k"], true, Some("sender")).is_ok());
        assert!(parse(&["--name", "/n"], true, Some("sender")).is_err());
        assert!(parse(&["--key", "/k"], false, Some("sender")).is_err());
        assert!(parse(&[], true, Some("receiver")).is_err());
        assert!(parse(&["--key", "/k"], true, None).is_err());
        let opts = parse(&["--count", "3", "--size", "9", "--quiet"], false, None).unwrap();
        assert_eq!(
            opts.sender_args(&["sender"]),
            [
                "sender",
                "--count",
                "3",
                "--size",
                "9",
                "--timeout",
                "60",
                "--quiet"
            ]
        );
    }
}
