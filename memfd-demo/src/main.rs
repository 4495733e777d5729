//! # memfd-demo: sealed memory passed over a Unix socket
//!
//! `memfd_create` makes anonymous memory that has a file descriptor but no
//! name in any filesystem. Its owner sizes it, fills it, then *seals* it
//! (`fcntl(F_ADD_SEALS)`): no shrinking, no growing, no writing, for anyone,
//! forever. The descriptor goes to another process over a Unix socket with
//! `SCM_RIGHTS`; that process checks the seals (`F_GET_SEALS`) and the size
//! before it maps a byte, and then can trust what it maps not to change or
//! vanish under it. This is how Wayland, systemd and Android hand out
//! buffers.
//!
//! | property          | sealed memfd                                                |
//! |-------------------|-------------------------------------------------------------|
//! | direction         | any: whoever holds a descriptor maps it; sealed: read-only  |
//! | who can talk      | processes that are given the descriptor (fork, or SCM_RIGHTS over a Unix socket) |
//! | message boundaries| none: memory; the layout is yours (here a header, then messages) |
//! | persistence       | until the last descriptor and mapping go: nothing to unlink, nothing left after SIGKILL |
//! | capacity          | memory (and RLIMIT / cgroup limits); not /dev/shm's size     |
//! | blocking          | none: memory does not block; the socket hand-off does        |
//!
//! ## Run it
//!
//! One terminal, the whole story (the receiver is a fresh process, started
//! by the story, unrelated to the sealed object until it is passed):
//!
//! ```text
//! cargo run -p memfd-demo
//! cargo run -p memfd-demo -- --count 1000 --size 4096
//! ```
//!
//! Two terminals:
//!
//! ```text
//! cargo build -p memfd-demo
//! target/debug/memfd-demo receiver --path /tmp/memfd.sock              # terminal 1
//! target/debug/memfd-demo sender --path /tmp/memfd.sock --count 100    # terminal 2
//! ```
//!
//! ## What to look for
//!
//! - `/proc/self/fd/N` → `/memfd:memfd-demo (deleted)` and `st_nlink = 0`:
//!   there is no name anywhere, so nothing can leak;
//! - `F_SEAL_WRITE` refused with `EBUSY` while a writable mapping exists;
//! - after sealing, `ftruncate`, `write` and a writable `mmap` fail with
//!   `EPERM`, where a truncated shm segment kills its reader with SIGBUS;
//! - the receiver refusing an unsealed object, and one whose size does not
//!   match its header;
//! - `F_SEAL_FUTURE_WRITE`: the owner keeps writing through its mapping,
//!   nobody can get a new writable one;
//! - the summary line: `errors=0` means every message was checked in place.
//!
//! The mechanism is in `src/ipc.rs`; the story's steps in `src/story.rs`.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `payload`, `peer`,
//! `report`; `nix` features: `fs`, `mman`, `poll`, `process`, `signal`, `socket`, `uio`, `user`.
//!
//! Read next: `docs/comparison.md`, every mechanism side by side (this is
//! the last demo in the README's reading order).
//! See also: `shm-demo` (the named shared memory this improves on),
//! `socket-demo` (SCM_RIGHTS and SO_PEERCRED on their own), `eventfd-demo`
//! (the wake-up that pairs with shared memory).

mod ipc;
mod story;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use common::cleanup::stop_on_signals;
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, usage};
use common::payload::MIN_SIZE;
use common::report::{Narrator, Stream, Summary};

const HELP: &str = "\
memfd-demo: sealed memfd shared memory passed to another process over a Unix socket

usage:
  memfd-demo [--count N] [--size BYTES] [--timeout SECS] [--quiet]
      the whole story in one terminal
  memfd-demo receiver --path SOCKET [--timeout SECS] [--quiet]
      listen at SOCKET (a new path), take one sealed memfd from one sender,
      check its seals and size, map it read-only, check every message
  memfd-demo sender --path SOCKET [--count N] [--size BYTES] [--timeout SECS] [--quiet]
      make a memfd with N messages of BYTES, seal it, pass it to the receiver

options:
  --count N        messages in the object (default 5)
  --size BYTES     bytes per message, 8 or more (default 64); count x size
                   is at most 1 GiB: the receiver maps the whole object
  --timeout SECS   idle timeout: the longest a role waits for its peer (to
                   connect, listen, send or answer), 1 to 86400 (default 60)
  --quiet          steps and summary only (this demo has no per-message lines)
  --no-summary     leave out the summary line (the story uses it for the
                   receiver it starts, and prints one summary for the run)
  -h, --help       this text

The receiver refuses a path that exists (it never removes a file it did not
make), an object without F_SEAL_SHRINK, F_SEAL_GROW and F_SEAL_WRITE, a size
that does not match the object's header, and a sender of another uid.
";

/// Options of every mode.
#[derive(Debug)]
pub struct Options {
    pub count: u64,
    pub size: usize,
    pub timeout: Duration,
    pub quiet: bool,
    pub summary: bool,
    pub path: Option<PathBuf>,
}

fn main() -> ExitCode {
    error::run("memfd-demo", || {
        let mut args = Args::from_env(HELP)?;
        let role = args.role(&["receiver", "sender"])?;
        let opts = parse(&mut args, role.as_deref())?;
        stop_on_signals()?;
        match role.as_deref() {
            None => story::story(&opts),
            Some("receiver") => receiver(&opts),
            Some(_) => sender(&opts),
        }
    })
}

fn parse(args: &mut Args, role: Option<&str>) -> Result<Options> {
    let mut opts = Options {
        count: DEFAULT_COUNT,
        size: DEFAULT_SIZE,
        timeout: Duration::from_secs(60),
        quiet: false,
        summary: true,
        path: None,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--count" if role != Some("receiver") => {
                opts.count = args.number("--count", 1, MAX_COUNT)?
            }
            "--size" if role != Some("receiver") => {
                opts.size = args.number("--size", MIN_SIZE, ipc::MAX_BYTES as usize)?
            }
            "--timeout" => {
                opts.timeout = Duration::from_secs(args.number("--timeout", 1, 86_400)?)
            }
            "--quiet" => opts.quiet = true,
            "--no-summary" if role.is_some() => opts.summary = false,
            "--path" if role.is_some() => opts.path = Some(PathBuf::from(args.value("--path")?)),
            other => return Err(args.unknown(other)),
        }
    }
    if ipc::object_len(opts.count, opts.size).is_none() {
        return Err(usage(format!(
            "--count {} x --size {} is over 1 GiB, the most one object may hold",
            opts.count, opts.size
        )));
    }
    if role.is_some() && opts.path.is_none() {
        return Err(usage("--path SOCKET is needed: where the receiver listens"));
    }
    Ok(opts)
}

fn receiver(opts: &Options) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, Stream::Stdout);
    let path = opts.path.as_deref().expect("checked in parse");
    let start = std::time::Instant::now();
    let (report, count, size) = ipc::receiver(path, opts.timeout, &say)?;
    finish(opts, &say, count, size, report.errors(), start.elapsed())
}

fn sender(opts: &Options) -> Result<()> {
    let say = Narrator::new("sender", opts.quiet, Stream::Stdout);
    let path = opts.path.as_deref().expect("checked in parse");
    let start = std::time::Instant::now();
    let errors = ipc::sender(path, opts.count, opts.size, opts.timeout, &say)?;
    finish(opts, &say, opts.count, opts.size, errors, start.elapsed())
}

/// The summary line (unless --no-summary), and exit 1 if a message failed.
pub fn finish(
    opts: &Options,
    say: &Narrator,
    count: u64,
    size: usize,
    errors: u64,
    elapsed: Duration,
) -> Result<()> {
    if opts.summary {
        say.line(Summary {
            mechanism: "memfd",
            messages: count,
            bytes: count * size as u64,
            errors,
            elapsed,
        });
    }
    if errors > 0 {
        // Errors count each kind of fault (lost, duplicated, reordered,
        // corrupted), so they can outnumber the messages.
        anyhow::bail!("the check of {count} messages found {errors} error(s)");
    }
    Ok(())
}
