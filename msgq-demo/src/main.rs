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
//! | named by          | a key (`ftok` of a path)            | `/NAME` (`/dev/mqueue/NAME` if mounted)  |
//! | next message      | chosen by type: 0, =T, or lowest <= T | highest priority first, FIFO within one |
//! | capacity          | `msg_qbytes` bytes (`/proc/sys/kernel/msgmnb`) | `mq_maxmsg` messages of `mq_msgsize` |
//! | notification      | none                                | `mq_notify` on empty → non-empty         |
//! | persistence       | until `IPC_RMID` or reboot (`ipcs -q`) | until `mq_unlink` or reboot           |
//!
//! The code is in `sysv.rs` and `posix.rs`, to read side by side; this file
//! has the command line and the story.
//!
//! ## Run it
//!
//! ```text
//! cargo run -p msgq-demo                      # both APIs and a client-server run
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
//! - `mq_notify` announcing a message to a process that is not reading;
//! - a server and many clients: requests on the server's queue, each
//!   client's replies in a private queue of its own (TLPI's `svmsg_file`
//!   design; `sysv.rs` says why one queue both ways can deadlock);
//! - a client noticing that its server has gone (`msg_lrpid`, `EIDRM`),
//!   and every wait bounded by `--timeout`.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `payload`, `peer`,
//! `report`, `sysv_sem` (for `ftok`).
//! nix features: `fs` (fstat of an mqd), `mqueue`, `signal`, `time`,
//! `user` (geteuid, and the name of a queue's owner).

mod posix;
mod sysv;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{
    MqGuard, PrivateDir, SysvGuard, SysvKind, stop_on_signals, stop_requested, unique_name,
};
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, Interrupted, usage};
use common::payload::{self, Checker, Verdict};
use common::peer::Peer;
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;

const USAGE: &str = "\
msgq-demo: System V and POSIX message queues

USAGE:
    msgq-demo [--clients K] [--count N] [--size BYTES] [--quiet]
        The story: System V messages waiting in the kernel and chosen by type,
        POSIX priorities, timeouts and mq_notify, then K clients and one server
        (the 'sysv server' code) with a private reply queue per client.
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
                      16-byte request header for a client and the story's part 3;
                      for POSIX the queue's msgsize (--msgsize)
    --keep            receiver: leave the queue in place when done
    --clients K       story: client processes (default 3; 1 to 32)
    --no-summary      roles: print the closing figures as a narration line instead
                      of a summary: line (the story passes it to the roles it runs,
                      so that the story's own summary is the only one)
    --quiet           no line per message
    -h, --help        this text

    The story bounds every wait: each role it runs must finish within 120 s,
    its server and clients give up after 60 s without progress, and the
    mq_notify signal is awaited at most 10 s.

EXIT STATUS: 0 success, 1 runtime error (including data errors, a peer
that is gone, a timeout), 2 bad command line, 128+N stopped by signal N
(130 for Ctrl-C; the story too, whatever its children reported).
";

fn main() -> ExitCode {
    error::run("msgq-demo", run)
}

// ---------------------------------------------------------------------------
// What both APIs share: the messages and how a receiver reports them
// ---------------------------------------------------------------------------

/// The first bytes of a demo sender's checkable message; not valid UTF-8,
/// so a text from another program is never mistaken for one.
const PAYLOAD_TAG: &[u8; 4] = b"\xffPL1";

/// A checkable message: the tag, then `payload::make(seq, size - 4)`.
pub fn payload_message(seq: u64, size: usize) -> Vec<u8> {
    let mut message = PAYLOAD_TAG.to_vec();
    message.extend_from_slice(&payload::make(seq, size - PAYLOAD_TAG.len()));
    message
}

/// Bytes as a reader should see them: text as text, the rest escaped.
fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
        _ => format!("b\"{}\"", bytes.escape_ascii()),
    }
}

/// What a receiver has seen: payload messages checked, texts counted.
#[derive(Debug)]
pub struct Tally {
    checker: Checker,
    texts: u64,
    /// Every message's bytes, tags included.
    bytes: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

impl Tally {
    /// A queue may carry texts and demo messages mixed, so "lost" counts
    /// only gaps between the demo messages' sequence numbers.
    pub fn new() -> Tally {
        Tally {
            checker: Checker::new(None),
            texts: 0,
            bytes: 0,
        }
    }

    pub fn received(&self) -> u64 {
        self.checker.report().received + self.texts
    }

    /// Report one message (`label` is its type or priority).
    pub fn account(&mut self, label: &str, bytes: &[u8], say: &Narrator) {
        self.bytes += bytes.len() as u64;
        match bytes.strip_prefix(PAYLOAD_TAG) {
            Some(body) => {
                let verdict = self.checker.check(body);
                let seq = payload::seq_of(body).map_or("?".into(), |s| s.to_string());
                let line = format!("{label}: payload #{seq} ({} bytes): {verdict}", bytes.len());
                if verdict == Verdict::Ok {
                    say.message(line)
                } else {
                    say.step(line)
                }
            }
            None => {
                self.texts += 1;
                say.message(format!("{label}: {}", show(bytes)));
            }
        }
    }

    pub fn finish(
        &self,
        opts: &Options,
        mechanism: &'static str,
        expected: Option<u64>,
        elapsed: Duration,
        say: &Narrator,
    ) -> Result<()> {
        let report = self.checker.report();
        say.step(format!(
            "received {} text message(s); payload messages: {report}",
            self.texts
        ));
        let received = report.received + self.texts;
        figures(
            opts,
            mechanism,
            received,
            self.bytes,
            report.errors(),
            elapsed,
            say,
        );
        if report.errors() > 0 {
            bail!("{} message(s) failed the check ({report})", report.errors());
        }
        if let Some(n) = expected.filter(|&n| received < n) {
            bail!("expected {n} messages, {received} arrived");
        }
        Ok(())
    }
}

/// A role's closing figures: its one `summary:` line, or with
/// `--no-summary` (a role the story runs) a narration line, so that the
/// story's own summary is the only one.
pub fn figures(
    opts: &Options,
    mechanism: &'static str,
    messages: u64,
    bytes: u64,
    errors: u64,
    elapsed: Duration,
    say: &Narrator,
) {
    let figures = Summary {
        mechanism,
        messages,
        bytes,
        errors,
        elapsed,
    };
    if opts.no_summary {
        say.step(format!(
            "moved {messages} message(s), {bytes} bytes, {errors} error(s) in {:.3} s",
            elapsed.as_secs_f64()
        ));
    } else {
        say.line(figures);
    }
}

/// The name of user `uid`, for messages about whose an object is.
pub fn owner_name(uid: libc::uid_t) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

pub fn read_proc_number(path: &str) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// Everything the roles take; each role refuses what does not apply.
#[derive(Debug)]
pub struct Options {
    key: Option<PathBuf>,
    name: Option<String>,
    mtype: Option<i64>,
    priority: u32,
    nowait: bool,
    /// The idle timeout (`--timeout`, default 60 s); see USAGE.
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

fn run() -> Result<()> {
    let mut args = Args::from_env(USAGE)?;
    let api = args.role(&["sysv", "posix"])?;
    let role = match api.as_deref() {
        Some("sysv") => args.role(&["sender", "receiver", "remove", "server", "client"])?,
        Some(_) => args.role(&["sender", "receiver", "remove"])?,
        None => None,
    };
    if api.is_some() && role.is_none() {
        return Err(usage(
            "name a role after the API: sender, receiver or remove",
        ));
    }
    let opts = parse(&mut args, api.as_deref(), role.as_deref())?;
    stop_on_signals()?;
    let Some(role) = role else {
        // A story stopped by a signal exits 128+N, whatever its children
        // did meanwhile: a child that got the same Ctrl-C exits 130 (or
        // reports EPIPE), and that is not the story's error.
        return story(&opts).map_err(|e| match stop_requested() {
            Some(signal) => Interrupted(signal).into(),
            None => e,
        });
    };
    let say = Narrator::new(role.as_str(), opts.quiet, Stream::Stdout);
    if api.as_deref() == Some("sysv") {
        let key = opts.key.clone().expect("checked by parse");
        match role.as_str() {
            "sender" => sysv::sender(&opts, &key, &say),
            "receiver" => sysv::receiver(&opts, &key, &say),
            "server" => sysv::server(&opts, &key, &say),
            "client" => sysv::client(&opts, &key, &say),
            _ => sysv::remove(&key, &say),
        }
    } else {
        let name = opts.name.clone().expect("checked by parse");
        match role.as_str() {
            "sender" => posix::sender(&opts, &name, &say),
            "receiver" => posix::receiver(&opts, &name, &say),
            _ => posix::remove(&name, &say),
        }
    }
}

fn parse(args: &mut Args, api: Option<&str>, role: Option<&str>) -> Result<Options> {
    let limits = posix::limits();
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
            "--name" => opts.name = Some(posix_name(args)?),
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
        (None, _) => &["--clients", "--count", "--size", "--quiet"],
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
    match api {
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
    let request_max = sysv::msgmax().saturating_sub(sysv::REQUEST_HEADER);
    if (role == Some("client") || api.is_none()) && opts.size > request_max {
        return Err(usage(format!(
            "--size {} is too large: a request is a {}-byte header plus --size bytes in one \
             System V message, at most msgmax = {} bytes (/proc/sys/kernel/msgmax), so --size \
             is at most {request_max}",
            opts.size,
            sysv::REQUEST_HEADER,
            sysv::msgmax()
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

/// `--name`, through common's `posix_name`. "/." and "/.." are refused
/// here as well until common does (they would name the queue directory
/// and its parent; mq_open then fails with a misleading EACCES).
fn posix_name(args: &mut Args) -> Result<String> {
    let name = args.posix_name("--name", 250)?;
    if name == "/." || name == "/.." {
        return Err(usage(format!(
            "--name {name:?} is not a valid name: . and .. are directories, not queues; \
             use e.g. /demo"
        )));
    }
    Ok(name)
}

// ---------------------------------------------------------------------------
// The story
// ---------------------------------------------------------------------------

/// How long a role the story runs may take.
const ROLE_LIMIT: Duration = Duration::from_secs(120);

/// A role the story started. Dropped while the story stops on a signal
/// sent to the whole process group (Ctrl-C in a terminal), the child got
/// that signal too and is cleaning up: give it a moment to finish before
/// `Peer`'s drop sends SIGTERM. A second SIGTERM would find its handler
/// already reset (SA_RESETHAND) and kill it halfway, leaving its queue.
struct Role(Peer);

/// How long a stopping story lets a child finish its own cleanup.
const GRACE: Duration = Duration::from_secs(2);

impl Drop for Role {
    fn drop(&mut self) {
        if stop_requested().is_none() {
            return;
        }
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Run this program with `args` and wait for it; its output is part of
/// ours. Roles get `--no-summary`: their figures are narration, and the
/// story's own summary is the run's only one.
fn run_role(args: &[String], say: &Narrator) -> Result<()> {
    let mut args = args.to_vec();
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.insert(at, "--no-summary".into());
    let mut peer = Role(Peer::spawn_self(&args)?);
    let exit = peer.0.wait(Some(ROLE_LIMIT))?;
    if !exit.success() {
        bail!(
            "'msgq-demo {}' (pid {}) {exit}",
            args.join(" "),
            peer.0.pid()
        );
    }
    say.message(format!("pid {} {exit}", peer.0.pid()));
    Ok(())
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn story(opts: &Options) -> Result<()> {
    let say = Narrator::new("parent", opts.quiet, Stream::Stdout);
    let start = Instant::now();
    say.line(format!(
        "msgq-demo: System V and POSIX message queues (parent pid {})",
        std::process::id()
    ));
    let dir = PrivateDir::create("msgq-demo")?;
    let mut moved = sysv_story(&dir, &say)?;
    let part = posix_story(&say)?;
    moved.messages += part.messages;
    moved.bytes += part.bytes;
    let part = client_server(&dir, opts, &say)?;
    moved.messages += part.messages;
    moved.bytes += part.bytes;
    say.line("");
    say.line(Summary {
        mechanism: "msgq",
        messages: moved.messages,
        bytes: moved.bytes,
        errors: 0,
        elapsed: start.elapsed(),
    });
    Ok(())
}

/// A queue for the story: new, or the story stops. `ftok` keys can
/// collide; a queue already there for our key file is not ours to use.
fn new_story_queue(key_path: &std::path::Path, say: &Narrator) -> Result<sysv::Queue> {
    sysv::Queue::create(key_path, say)?.with_context(|| {
        format!(
            "msgget(IPC_CREAT|IPC_EXCL): a queue already has the key of {} (ftok keys can \
             collide): not ours, left alone; run again",
            key_path.display()
        )
    })
}

/// Part 1: messages wait in the kernel; msgtyp chooses; ENOMSG, E2BIG.
fn sysv_story(dir: &PrivateDir, say: &Narrator) -> Result<sysv::Moved> {
    say.line("\n== 1. System V: messages wait in the kernel, and msgrcv chooses by type ==");
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, b"").context("create the key file")?;
    let key = key_path.to_str().context("key path is not UTF-8")?;
    let queue = new_story_queue(&key_path, say)?;
    let _remove = SysvGuard::new(SysvKind::MessageQueue, queue.id);
    let mut moved = sysv::Moved::default();
    let batches: [(&str, &[&str]); 4] = [
        ("3", &["three-a", "three-b"]),
        ("1", &["one-a"]),
        ("2", &["two-a", "two-b"]),
        ("1", &["one-b"]),
    ];
    for (mtype, texts) in batches {
        let mut args = words(&[
            "sysv", "sender", "--key", key, "--type", mtype, "--quiet", "--",
        ]);
        args.extend(words(texts));
        run_role(&args, say)?;
        say.step(format!(
            "a sender process sent {texts:?} as type {mtype} and exited"
        ));
        moved.messages += 2 * texts.len() as u64; // sent, then received below
        moved.bytes += 2 * texts.iter().map(|t| t.len() as u64).sum::<u64>();
    }
    say.step(format!(
        "no sender is left, the messages wait in the kernel: {}",
        queue.describe()
    ));
    for (msgtyp, meaning) in [
        ("2", "exactly type 2"),
        ("-2", "the lowest type <= 2 first"),
        ("0", "whatever is oldest"),
    ] {
        say.step(format!(
            "a receiver process takes {meaning} (--type {msgtyp} --nowait):"
        ));
        run_role(
            &words(&[
                "sysv", "receiver", "--key", key, "--type", msgtyp, "--nowait", "--keep",
            ]),
            say,
        )?;
    }
    match queue.receive(0, 64, libc::IPC_NOWAIT) {
        Err(Errno::ENOMSG) => say.step("msgrcv(IPC_NOWAIT) on the empty queue → ENOMSG"),
        other => bail!("msgrcv(IPC_NOWAIT) on an empty queue: expected ENOMSG, got {other:?}"),
    }
    queue
        .send(1, &[b'x'; 100], false)
        .context("msgsnd(100 bytes)")?;
    match queue.receive(0, 10, 0) {
        Err(Errno::E2BIG) => say.step(
            "msgrcv into a 10-byte buffer, 100-byte message → E2BIG; the message stays in the queue",
        ),
        other => bail!("msgrcv of a too-large message: expected E2BIG, got {other:?}"),
    }
    let (_, cut) = queue
        .receive(0, 10, libc::MSG_NOERROR)
        .context("msgrcv(MSG_NOERROR)")?;
    say.step(format!(
        "msgrcv(MSG_NOERROR) → {} bytes: truncated to the buffer, the rest is discarded",
        cut.len()
    ));
    moved.messages += 2;
    moved.bytes += 100 + cut.len() as u64;
    queue.remove().context("msgctl(IPC_RMID)")?;
    say.step(format!("msgctl(msqid {}, IPC_RMID): removed", queue.id));
    say.step(format!(
        "part 1 moved {} messages, {} bytes",
        moved.messages, moved.bytes
    ));
    Ok(moved)
}

/// Part 2: priorities, getattr, EAGAIN, a timed receive, mq_notify.
fn posix_story(say: &Narrator) -> Result<sysv::Moved> {
    say.line("\n== 2. POSIX: the highest priority first, and a notification ==");
    let l = posix::limits();
    say.step(format!(
        "/proc/sys/fs/mqueue: msg_max = {}, msgsize_max = {}, queues_max = {}",
        l.msg_max, l.msgsize_max, l.queues_max
    ));
    let name = format!("/{}", unique_name("msgq-demo"));
    let queue = posix::Queue::create(&name, 10.min(l.msg_max), 128.min(l.msgsize_max), say)?;
    let _unlink = MqGuard::new(&name);
    let mut moved = sysv::Moved::default();
    let batches: [(&str, &[&str]); 4] = [
        ("1", &["low-a", "low-b"]),
        ("5", &["high-a"]),
        ("3", &["mid-a"]),
        ("5", &["high-b"]),
    ];
    for (priority, texts) in batches {
        let mut args = words(&[
            "posix",
            "sender",
            "--name",
            &name,
            "--priority",
            priority,
            "--quiet",
            "--",
        ]);
        args.extend(words(texts));
        run_role(&args, say)?;
        say.step(format!(
            "a sender process sent {texts:?} at priority {priority} and exited"
        ));
        moved.messages += 2 * texts.len() as u64; // sent, then received below
        moved.bytes += 2 * texts.iter().map(|t| t.len() as u64).sum::<u64>();
    }
    say.step(format!(
        "mq_getattr: {} messages waiting",
        queue.attr()?.curmsgs()
    ));
    say.step("a receiver process takes them all (--timeout 1):");
    run_role(
        &words(&[
            "posix",
            "receiver",
            "--name",
            &name,
            "--timeout",
            "1",
            "--keep",
        ]),
        say,
    )?;

    nix::mqueue::mq_set_nonblock(queue.mqd()).context("mq_setattr(O_NONBLOCK)")?;
    match queue.receive()? {
        None => say.step("O_NONBLOCK, empty queue: mq_receive → EAGAIN"),
        Some(_) => bail!("mq_receive on an empty queue returned a message"),
    }
    nix::mqueue::mq_remove_nonblock(queue.mqd()).context("mq_setattr(0)")?;
    let start = Instant::now();
    if queue.receive_within(Duration::from_millis(300))?.is_some() {
        bail!("mq_timedreceive on an empty queue returned a message");
    }
    say.step(format!(
        "mq_timedreceive(300 ms) → ETIMEDOUT after {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    ));
    let woke = notify(&queue, &name, say)?;
    moved.messages += 2;
    moved.bytes += 2 * woke as u64;
    drop(queue);
    nix::mqueue::mq_unlink(name.as_str()).with_context(|| format!("mq_unlink({name})"))?;
    say.step(format!("mq_unlink({name}): removed"));
    say.step(format!(
        "part 2 moved {} messages, {} bytes",
        moved.messages, moved.bytes
    ));
    Ok(moved)
}
/// mq_notify: a signal when the empty queue gets a message.
/// Returns the announced message's length.
fn notify(queue: &posix::Queue, name: &str, say: &Narrator) -> Result<usize> {
    use nix::sys::signal::{SigEvent, SigSet, SigevNotify, SigmaskHow, Signal, sigprocmask};
    // Block SIGUSR1 first: it then stays pending until sigtimedwait takes
    // it, instead of running a handler (or killing us) at any moment.
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR1);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .context("sigprocmask(SIG_BLOCK, SIGUSR1)")?;
    let event = SigEvent::new(SigevNotify::SigevSignal {
        signal: Signal::SIGUSR1,
        si_value: 0,
    });
    // SAFETY: the descriptor is open; the sigevent is valid for the call.
    Errno::result(unsafe { libc::mq_notify(queue.mqd().as_raw_fd(), &event.sigevent()) })
        .context("mq_notify(SIGEV_SIGNAL, SIGUSR1)")?;
    say.step("mq_notify(SIGUSR1): tell me when this empty queue gets a message");
    run_role(
        &words(&[
            "posix", "sender", "--name", name, "--quiet", "--", "wake up",
        ]),
        say,
    )?;
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::uninit();
    let timeout = libc::timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    // SAFETY: `set` is a valid signal set, `info` a valid out-pointer.
    let got = unsafe { libc::sigtimedwait(set.as_ref(), info.as_mut_ptr(), &timeout) };
    sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None).context("sigprocmask(SIG_UNBLOCK)")?;
    if got != libc::SIGUSR1 {
        bail!("no notification within 10 s: {}", Errno::last());
    }
    // SAFETY: sigtimedwait succeeded, so it filled `info`.
    let code = unsafe { info.assume_init() }.si_code;
    let (_, text) = queue
        .receive()?
        .context("the announced message is missing")?;
    say.step(format!(
        "SIGUSR1 arrived (si_code {}{}); mq_receive → {}: a notification fires once, for the \
         empty → non-empty change, and must be registered again",
        code,
        if code == libc::SI_MESGQ {
            " = SI_MESGQ"
        } else {
            ""
        },
        show(&text)
    ));
    Ok(text.len())
}

/// Part 3: K clients and the server, a private reply queue per client.
fn client_server(dir: &PrivateDir, opts: &Options, say: &Narrator) -> Result<sysv::Moved> {
    say.line(format!(
        "\n== 3. {} clients and a server: requests on one queue, replies in a private queue per client ==",
        opts.clients
    ));
    let key_path = dir.path().join("server-key");
    std::fs::write(&key_path, b"").context("create the key file")?;
    let key = key_path.to_str().context("key path is not UTF-8")?;
    let server_say = say.with_role("server");
    // The same code as 'msgq-demo sysv server', run by this process.
    let server = sysv::server_queue(&key_path, &server_say)?;
    say.step(
        "why not replies typed by client pid on the server's queue? Requests and replies would \
         share its msg_qbytes: once requests fill it, the server blocks sending a reply while \
         the clients block sending requests, and nobody receives: a deadlock. So each client \
         gets its replies in a queue of its own",
    );
    let (count, size) = (opts.count.to_string(), opts.size.to_string());
    let mut clients = Vec::new();
    for _ in 0..opts.clients {
        let mut args = words(&[
            "sysv",
            "client",
            "--key",
            key,
            "--count",
            &count,
            "--size",
            &size,
            "--timeout",
            "60",
            "--no-summary",
        ]);
        if opts.quiet {
            args.push("--quiet".into());
        }
        clients.push(Role(Peer::spawn_self(&args)?));
    }
    let pids: Vec<String> = clients.iter().map(|c| c.0.pid().to_string()).collect();
    say.step(format!(
        "started clients {}: each makes a private queue, sends {} request(s) of {} bytes with \
         its queue's id in them, and checks every reply",
        pids.join(", "),
        opts.count,
        opts.size
    ));
    let total = opts.clients * opts.count;
    let start = Instant::now();
    let moved = sysv::serve(&server, Some(total), Some(DEFAULT_TIMEOUT), &server_say)?;
    for mut client in clients {
        let exit = client.0.wait(Some(DEFAULT_TIMEOUT))?;
        if !exit.success() {
            bail!("client pid {} {exit}", client.0.pid());
        }
    }
    drop(server);
    say.step(format!(
        "served {total} requests in {:.3} s; every client got only its own replies and exited 0; \
         the server's queue and every private queue are removed",
        start.elapsed().as_secs_f64()
    ));
    say.step(format!(
        "part 3 moved {} messages (requests and replies), {} bytes",
        moved.messages, moved.bytes
    ));
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Fuzz: whatever bytes another program puts in a queue, the
        /// receiver's accounting and display never panic, and the byte
        /// count is exact.
        #[test]
        fn fuzz_any_message_is_accounted(messages in proptest::collection::vec(
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), 0..20)) {
            let say = Narrator::new("fuzz", true, Stream::Stderr);
            let mut tally = Tally::new();
            let mut bytes = 0;
            for m in &messages {
                let _ = show(m);
                tally.account("type 1", m, &say);
                bytes += m.len() as u64;
            }
            proptest::prop_assert_eq!(tally.received(), messages.len() as u64);
            proptest::prop_assert_eq!(tally.bytes, bytes);
        }
    }

    #[test]
    fn a_tagged_message_is_checked_and_a_text_is_not() {
        let say = Narrator::new("test", true, Stream::Stderr);
        let mut tally = Tally::new();
        tally.account("type 1", &payload_message(0, 64), &say);
        tally.account("type 1", b"hello", &say);
        let mut bad = payload_message(1, 64);
        bad[20] ^= 1;
        tally.account("type 1", &bad, &say);
        assert_eq!(tally.texts, 1);
        assert_eq!(tally.checker.report().corrupted, 1);
        let mut args = Args::new(["--quiet"]);
        let opts = parse(&mut args, None, None).unwrap();
        assert!(
            tally
                .finish(&opts, "msgq", Some(3), Duration::ZERO, &say)
                .is_err()
        );
        assert_eq!(show(b"plain"), "\"plain\"");
        assert_eq!(show(b"a\x01b"), "b\"a\\x01b\"");
    }
}
