//! # msgq-demo: message queues, System V and POSIX
//!
//! A message queue keeps discrete messages in the kernel. Unlike a pipe,
//! the boundaries are kept (one send, one receive), the writer need not
//! wait for a reader, and messages outlive the processes that sent them
//! until someone receives them or removes the queue. The two APIs choose
//! differently what comes out next:
//!
//! | property          | System V (`msgget`)                 | POSIX (`mq_open`)                        |
//! |-------------------|-------------------------------------|------------------------------------------|
//! | direction         | any process that may write sends, any that may read receives (one queue, many to many) | the same |
//! | who can talk      | processes that know the key (`ftok` of an agreed path) or the msqid, and pass the 0600 mode | processes that know `/NAME` (`/dev/mqueue/NAME` if mounted) and pass its mode |
//! | message boundaries| kept; each message has a type (a `long`, 1 or more) | kept; each message has a priority (0 to 32767) |
//! | next message      | chosen by type: 0 = oldest, T = oldest of type T, -T = lowest type <= T first | highest priority first, FIFO within one |
//! | persistence       | until `msgctl(IPC_RMID)` or reboot (`ipcs -q`) | until `mq_unlink` or reboot     |
//! | capacity          | `msg_qbytes` bytes (`/proc/sys/kernel/msgmnb`), messages of at most `msgmax` | `mq_maxmsg` messages of `mq_msgsize` (`/proc/sys/fs/mqueue`, RLIMIT_MSGQUEUE) |
//! | blocking          | `msgsnd` waits while full, `msgrcv` while nothing matches; `IPC_NOWAIT` for neither | `mq_send`/`mq_receive` wait while full/empty; `O_NONBLOCK`, or a timed variant |
//! | notification      | none                                | `mq_notify` on empty → non-empty, once   |
//!
//! ## Run it
//!
//! One terminal, the story (it starts the senders, receivers and clients
//! itself, as fresh processes of this program):
//!
//! ```text
//! cargo run -p msgq-demo                      # every step, both APIs, a client-server run
//! cargo run -p msgq-demo -- sysv              # the System V steps only
//! cargo run -p msgq-demo -- posix             # the POSIX steps only
//! ```
//!
//! Two terminals (or one, in turns: a queue keeps messages for a receiver
//! that comes later):
//!
//! ```text
//! touch /tmp/demo.key
//! cargo run -p msgq-demo -- sysv sender --key /tmp/demo.key --type 2 hello world
//! cargo run -p msgq-demo -- sysv receiver --key /tmp/demo.key --type -3 --nowait
//! cargo run -p msgq-demo -- posix sender --name /demo --priority 5 urgent
//! cargo run -p msgq-demo -- posix receiver --name /demo --timeout 2
//! cargo run -p msgq-demo -- sysv server --key /tmp/demo.key            # terminal 1
//! cargo run -p msgq-demo -- sysv client --key /tmp/demo.key --count 3  # terminal 2
//! ```
//!
//! ## What to look for
//!
//! - messages waiting in the kernel after their sender has exited;
//! - the order each `msgtyp` gives, and priority order in POSIX;
//! - `ENOMSG`, `EAGAIN`, `E2BIG` and `MSG_NOERROR`, a timed receive;
//! - `MSG_EXCEPT`: the oldest message *not* of a type;
//! - `msg_qbytes` lowered and raised with `msgctl(IPC_SET)`, and
//!   `/proc/sys/kernel/msgmnb` as the ceiling without CAP_SYS_RESOURCE
//!   (shown as `nobody` in a forked child when the story runs as root);
//! - `mq_notify` announcing a message to a process that is not reading, by
//!   a signal and by a function run in a new thread (`SIGEV_THREAD`), once:
//!   a second message is missed until the process registers again;
//! - `/dev/mqueue/NAME` (QSIZE, NOTIFY, SIGNO, NOTIFY_PID) while a queue
//!   exists, and `EMSGSIZE` for a receive buffer under `mq_msgsize`;
//! - a server and many clients: requests on the server's queue, each
//!   client's replies in a private queue of its own (TLPI's `svmsg_file`
//!   design; `ipc_sysv.rs` says why one queue both ways can deadlock);
//! - a client noticing that its server has gone (`msg_lrpid`, `EIDRM`),
//!   and every wait bounded by `--timeout`.
//!
//! The mechanism is in `src/ipc_sysv.rs` and `src/ipc_posix.rs`, to read
//! side by side; the story's steps in `src/story.rs`; what is neither (the
//! checkable messages, is-it-ours checks, errors that name a limit) in
//! `src/checks.rs`.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `payload`, `peer`,
//! `report`; `nix` features: `fs`, `mqueue`, `poll`, `process`, `signal`,
//! `time`, `user`.
//!
//! Read next: `sem-demo` (semaphores: counting instead of messages).
//! See also: `socket-demo` (datagram sockets, which also keep message
//! boundaries), `signal-demo` (the signals that `mq_notify` sends, queued
//! real-time signals and `sigtimedwait`).

mod checks;
mod ipc_posix;
mod ipc_sysv;
mod story;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use common::cleanup::{stop_on_signals, stop_requested};
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, Interrupted, usage};
use common::payload;
use common::report::{Narrator, Stream};

use crate::checks::{PAYLOAD_TAG, mq_limits};

const HELP: &str = "\
msgq-demo: System V and POSIX message queues

USAGE:
    msgq-demo [--clients K] [--count N] [--size BYTES] [--quiet]
        The story, every step: System V messages waiting in the kernel and
        chosen by type; POSIX priorities, timeouts and mq_notify by signal; K
        clients and one server (the 'sysv server' code) with a private reply
        queue per client; MSG_EXCEPT; msg_qbytes, IPC_SET and msgmnb (as root
        also in a child that becomes nobody); mq_notify by thread, once, and
        re-armed; /dev/mqueue/NAME; EMSGSIZE for a small receive buffer.
    msgq-demo sysv [--clients K] [--count N] [--size BYTES] [--quiet]
        The story's System V steps only, with the same options, numbered from 1.
    msgq-demo posix [--quiet]
        The story's POSIX steps only, numbered from 1. Their messages are fixed
        texts; --clients, --count and --size shape the System V client-server
        step, so this variant does not take them.
    msgq-demo sysv receiver --key PATH [--type T] [--nowait] [--timeout SECS] [--count N] [--keep] [--quiet]
    msgq-demo sysv sender --key PATH [--type T] [--timeout SECS] [--count N] [--size BYTES] [TEXT...]
    msgq-demo sysv remove --key PATH
    msgq-demo sysv server --key PATH [--count N] [--timeout SECS] [--quiet]
    msgq-demo sysv client --key PATH [--count N] [--size BYTES] [--timeout SECS] [--quiet]
    msgq-demo posix receiver --name /NAME [--timeout SECS] [--count N] [--keep] [--quiet]
    msgq-demo posix sender --name /NAME [--priority P] [--timeout SECS] [--count N] [--size BYTES] [TEXT...]
    msgq-demo posix remove --name /NAME

    Either sender or receiver creates the queue if it does not exist (0600),
    so a sender can leave messages before any receiver runs. The receiver
    removes the queue when done, unless --keep. With TEXT the sender sends
    exactly those bytes, one message per argument (after -- they may start
    with a dash); without, N checkable messages of --size bytes.

    The server makes the queue for --key and removes it when it stops; each
    client sends its requests there and gets the replies in a private queue
    of its own (msgget(IPC_PRIVATE)), removed when it exits. Start the
    server first: a client with no server queue exits 1 at once.

    An existing queue is used, read or removed only if it is yours (owner
    and creator your effective uid, also for root) and has mode 0600;
    otherwise it is left alone and the error says whose it is.

OPTIONS:
    --key PATH        System V: an existing file; ftok(PATH, 'Q') is the queue's key
    --name /NAME      POSIX: a slash, then up to 250 characters without a slash
                      (not /. or /..)
    --type T          sysv sender: the messages' type (1 or more, default 1);
                      sysv receiver: msgtyp, 0 = any (default), T > 0 = exactly T,
                      T < 0 = the lowest type <= |T| first (--type -3 or --type=-3)
    --priority P      posix sender: 0 to 32767 (default 0); higher comes out first
    --nowait          sysv receiver: IPC_NOWAIT, stop at ENOMSG instead of waiting
    --timeout SECS    1 to 86400, default 60: the longest a role waits for its peer
                      to make progress. A receiver waits that long for the next
                      message, then stops (an error if --count is not reached yet);
                      a sender waits that long for room in a full queue, a client
                      for each reply, then exit 1. A server waits for requests
                      without limit unless --timeout is given: waiting for clients
                      is what a server is for (Ctrl-C or SIGTERM stops it).
    --maxmsg M        posix, when creating: messages the queue holds (default 10)
    --msgsize BYTES   posix, when creating: largest message (default 8192)
    --count N         messages to send, or to receive before stopping (default 5);
                      server: requests to serve, then stop (default: until stopped);
                      client and story: requests per client
    --size BYTES      bytes per checkable message (default 64; at least 12). At most
                      the mechanism's largest message: for System V msgmax
                      (/proc/sys/kernel/msgmax, 8192 unless raised), less the
                      16-byte request header for a client and the story's
                      client-server step; for POSIX the queue's msgsize (--msgsize)
    --keep            receiver: leave the queue in place when done
    --clients K       story: client processes (default 3; 1 to 32)
    --no-summary      roles: print the closing figures as a narration line instead
                      of a summary: line (the story passes it to the roles it runs,
                      so that the story's own summary is the only one)
    --quiet           no line per message
    -h, --help        this text

    The story bounds every wait: each role it runs must finish within 120 s,
    its server and clients give up after 60 s without progress, an mq_notify
    notification (signal or thread) is awaited at most 10 s, and the child
    that becomes nobody at most 10 s.

EXIT STATUS: 0 success, 1 runtime error (including data errors, a peer
that is gone, a timeout), 2 bad command line, 128+N stopped by signal N
(130 for Ctrl-C; the story too, whatever its children reported).
";

/// Which steps the story runs: `msgq-demo` all, `msgq-demo sysv` or
/// `msgq-demo posix` one API's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Both,
    Sysv,
    Posix,
}

/// Everything the roles take; each role refuses what does not apply.
#[derive(Debug)]
pub struct Options {
    key: Option<PathBuf>,
    name: Option<String>,
    mtype: Option<i64>,
    priority: u32,
    nowait: bool,
    /// The idle timeout (`--timeout`, default 60 s); see HELP.
    timeout: Duration,
    timeout_given: bool,
    maxmsg: usize,
    msgsize: usize,
    count: u64,
    count_given: bool,
    size: usize,
    keep: bool,
    clients: u64,
    no_summary: bool,
    quiet: bool,
    texts: Vec<String>,
}

/// The default idle timeout of a role waiting for its peer.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    error::run("msgq-demo", run)
}

fn run() -> Result<()> {
    let mut args = Args::from_env(HELP)?;
    let api = args.role(&["sysv", "posix"])?;
    let role = match api.as_deref() {
        Some("sysv") => args.role(&["sender", "receiver", "remove", "server", "client"])?,
        Some(_) => args.role(&["sender", "receiver", "remove"])?,
        None => None,
    };
    let opts = parse(&mut args, api.as_deref(), role.as_deref())?;
    stop_on_signals()?;
    let Some(role) = role else {
        let variant = match api.as_deref() {
            None => Variant::Both,
            Some("sysv") => Variant::Sysv,
            Some(_) => Variant::Posix,
        };
        // A story stopped by a signal exits 128+N, whatever its children
        // did meanwhile: a child that got the same Ctrl-C exits 130 (or
        // reports EPIPE), and that is not the story's error.
        return story::story(&opts, variant).map_err(|e| match stop_requested() {
            Some(signal) => Interrupted(signal).into(),
            None => e,
        });
    };
    let say = Narrator::new(role.as_str(), opts.quiet, Stream::Stdout);
    if api.as_deref() == Some("sysv") {
        let key = opts.key.clone().expect("checked by parse");
        match role.as_str() {
            "sender" => ipc_sysv::sender(&opts, &key, &say),
            "receiver" => ipc_sysv::receiver(&opts, &key, &say),
            "server" => ipc_sysv::server(&opts, &key, &say),
            "client" => ipc_sysv::client(&opts, &key, &say),
            _ => ipc_sysv::remove(&key, &say),
        }
    } else {
        let name = opts.name.clone().expect("checked by parse");
        match role.as_str() {
            "sender" => ipc_posix::sender(&opts, &name, &say),
            "receiver" => ipc_posix::receiver(&opts, &name, &say),
            _ => ipc_posix::remove(&name, &say),
        }
    }
}

fn parse(args: &mut Args, api: Option<&str>, role: Option<&str>) -> Result<Options> {
    let limits = mq_limits();
    let mut opts = Options {
        key: None,
        name: None,
        mtype: None,
        priority: 0,
        nowait: false,
        timeout: DEFAULT_TIMEOUT,
        timeout_given: false,
        maxmsg: 10.min(limits.msg_max),
        msgsize: 8192.min(limits.msgsize_max),
        count: DEFAULT_COUNT,
        count_given: false,
        size: DEFAULT_SIZE,
        keep: false,
        clients: 3,
        no_summary: false,
        quiet: false,
        texts: Vec::new(),
    };
    let mut given: Vec<String> = Vec::new();
    let mut only_texts = false;
    while let Some(arg) = args.next() {
        if only_texts || !arg.starts_with('-') {
            opts.texts.push(arg);
            continue;
        }
        match arg.as_str() {
            "--" => only_texts = true,
            "--key" => opts.key = Some(PathBuf::from(args.value("--key")?)),
            // posix_name refuses a name without the slash, with another slash,
            // and "/." or "/.." (the queue directory and its parent).
            "--name" => opts.name = Some(args.posix_name("--name", 250)?),
            "--type" => {
                let text = args.value("--type")?;
                let t: i64 = text.parse().map_err(|_| {
                    usage(format!(
                        "--type expects a whole number (negative allowed), got '{text}'"
                    ))
                })?;
                opts.mtype = Some(t);
            }
            "--priority" => opts.priority = args.number("--priority", 0, 32767)?,
            "--nowait" => opts.nowait = true,
            "--timeout" => {
                opts.timeout = Duration::from_secs(args.number("--timeout", 1, 86_400)?);
                opts.timeout_given = true;
            }
            "--maxmsg" => opts.maxmsg = args.number("--maxmsg", 1, 1_000_000)?,
            "--msgsize" => opts.msgsize = args.number("--msgsize", 1, 64 * 1024 * 1024)?,
            "--count" => {
                opts.count = args.number("--count", 1, MAX_COUNT)?;
                opts.count_given = true;
            }
            "--size" => {
                opts.size = args.number(
                    "--size",
                    PAYLOAD_TAG.len() + payload::MIN_SIZE,
                    64 * 1024 * 1024,
                )?
            }
            "--keep" => opts.keep = true,
            "--clients" => opts.clients = args.number("--clients", 1, 32)?,
            "--no-summary" => opts.no_summary = true,
            "--quiet" => opts.quiet = true,
            other => return Err(args.unknown(other)),
        }
        if arg != "--" {
            given.push(arg);
        }
    }
    // Which options each role takes; anything else is refused.
    let allowed: &[&str] = match (api, role) {
        (None, _) | (Some("sysv"), None) => &["--clients", "--count", "--size", "--quiet"],
        (Some(_), None) => &["--quiet"],
        (Some("sysv"), Some("receiver")) => &[
            "--key",
            "--type",
            "--nowait",
            "--timeout",
            "--count",
            "--keep",
            "--quiet",
            "--no-summary",
        ],
        (Some("sysv"), Some("sender")) => &[
            "--key",
            "--type",
            "--timeout",
            "--count",
            "--size",
            "--quiet",
            "--no-summary",
        ],
        (Some("sysv"), Some("server")) => {
            &["--key", "--count", "--timeout", "--quiet", "--no-summary"]
        }
        (Some("sysv"), Some("client")) => &[
            "--key",
            "--count",
            "--size",
            "--timeout",
            "--quiet",
            "--no-summary",
        ],
        (Some("posix"), Some("receiver")) => &[
            "--name",
            "--timeout",
            "--count",
            "--keep",
            "--quiet",
            "--no-summary",
            "--maxmsg",
            "--msgsize",
        ],
        (Some("posix"), Some("sender")) => &[
            "--name",
            "--priority",
            "--timeout",
            "--count",
            "--size",
            "--quiet",
            "--no-summary",
            "--maxmsg",
            "--msgsize",
        ],
        (Some(_), _) => &["--key", "--name"],
    };
    if let Some(bad) = given.iter().find(|g| !allowed.contains(&g.as_str())) {
        let whom = match (api, role) {
            (Some(api), Some(role)) => format!("'{api} {role}'"),
            (Some(_), None) => {
                return Err(usage(format!(
                    "{bad} is not an option of the POSIX story: its messages are the story's own \
                     texts; --clients, --count and --size shape the System V client-server \
                     step (msgq-demo or msgq-demo sysv)"
                )));
            }
            _ => "the story".to_string(),
        };
        return Err(usage(format!("{bad} is not an option of {whom}")));
    }
    if !opts.texts.is_empty() && role != Some("sender") {
        return Err(usage(format!(
            "unexpected argument '{}': only a sender takes TEXT",
            opts.texts[0]
        )));
    }
    if !opts.texts.is_empty() && (given.iter().any(|g| g == "--count" || g == "--size")) {
        return Err(usage(
            "TEXT arguments are the messages: --count and --size do not apply",
        ));
    }
    match api.filter(|_| role.is_some()) {
        Some("sysv") if opts.key.is_none() => {
            return Err(usage(
                "System V roles need --key PATH, e.g. --key /tmp/demo.key",
            ));
        }
        Some("posix") if opts.name.is_none() => {
            return Err(usage("POSIX roles need --name /NAME, e.g. --name /demo"));
        }
        _ => {}
    }
    if role == Some("sender") && api == Some("sysv") && opts.mtype.is_some_and(|t| t <= 0) {
        return Err(usage(
            "--type for sending must be 1 or more: 0 and negative types only select when receiving",
        ));
    }
    // A client's request (and the story's) is a 16-byte header and the
    // payload, in one System V message of at most msgmax bytes.
    let request_max = ipc_sysv::msgmax().saturating_sub(ipc_sysv::REQUEST_HEADER);
    let client_server = role == Some("client") || (role.is_none() && api != Some("posix"));
    if client_server && opts.size > request_max {
        return Err(usage(format!(
            "--size {} is too large: a request is a {}-byte header plus --size bytes in one \
             System V message, at most msgmax = {} bytes (/proc/sys/kernel/msgmax), so --size \
             is at most {request_max}",
            opts.size,
            ipc_sysv::REQUEST_HEADER,
            ipc_sysv::msgmax()
        )));
    }
    if role == Some("sender")
        && api == Some("posix")
        && opts.size > opts.msgsize
        && opts.texts.is_empty()
    {
        // Caught again by mq_send for an existing queue with another size.
        return Err(usage(format!(
            "--size {} is larger than --msgsize {} (the queue's largest message)",
            opts.size, opts.msgsize
        )));
    }
    Ok(opts)
}
