//! # socket-demo: Unix domain sockets, the general-purpose IPC
//!
//! A socket is an endpoint of a two-way channel. Unix domain sockets
//! connect processes on one machine through the kernel, with the same API
//! as network sockets: full-duplex, between related or unrelated
//! processes, as a byte stream or as messages, and able to carry open file
//! descriptors and the peer's identity.
//!
//! | property          | Unix domain socket                                          |
//! |-------------------|-------------------------------------------------------------|
//! | direction         | both ways on one descriptor (full duplex)                   |
//! | who can talk      | `socketpair`: related processes; a path: whoever may write the socket file (here 0600 in a 0700 directory); an abstract name: anyone in the network namespace; TCP: any process of any user, and beyond |
//! | message boundaries| `SOCK_STREAM`: none, frame your messages; `SOCK_SEQPACKET` and `SOCK_DGRAM`: kept, one send is one receive |
//! | persistence       | the connection lives as long as its sockets; a socket *file* stays after its server dies (stale) until someone unlinks it; an abstract name goes with its last socket |
//! | capacity          | the socket buffers (`SO_SNDBUF`, capped by `net.core.wmem_max`); a datagram or SEQPACKET message must fit the send buffer whole |
//! | blocking          | `recv` waits for data, `send` for buffer room, `connect` for a backlog slot, `accept` for a client; `O_NONBLOCK`/`MSG_DONTWAIT` turn each wait into `EAGAIN`, `poll` says when to try again |
//!
//! | type              | boundaries | connection | like              |
//! |-------------------|------------|------------|-------------------|
//! | `SOCK_STREAM`     | none: frame your messages | yes | TCP, a pipe both ways |
//! | `SOCK_SEQPACKET`  | kept       | yes        | a stream of records |
//! | `SOCK_DGRAM`      | kept       | no: each datagram is addressed | UDP, but reliable and ordered |
//!
//! Addresses: a path (a socket file, here in a private 0700 directory), the
//! abstract namespace (Linux: a name with no file), or nothing at all
//! (`socketpair`).
//!
//! ## Run it
//!
//! One terminal, the whole story (it forks children for the socketpair and
//! starts fresh client processes for the servers):
//!
//! ```text
//! cargo run -p socket-demo
//! cargo run -p socket-demo -- --clients 8 --count 1000 --size 4096
//! ```
//!
//! Two terminals (or three):
//!
//! ```text
//! cargo build -p socket-demo
//! target/debug/socket-demo server --path /tmp/demo.sock                 # terminal 1
//! target/debug/socket-demo client --path /tmp/demo.sock --count 10      # terminal 2
//! target/debug/socket-demo server --path /tmp/demo.sock --lines         # or a text server, and
//! python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.connect("/tmp/demo.sock"); s.sendall(b"hi\n"); print(s.recv(99))'
//! ```
//!
//! ## What to look for
//!
//! - one `socketpair` doing what took two pipes;
//! - one process serving many clients with `poll`, frames over a stream;
//! - `epoll`: level-triggered reports waiting data again, edge-triggered
//!   only once, so its reader must read until `EAGAIN` (a bounded wait
//!   shows the wake-up that never comes); the same server with `epoll`;
//! - a stale socket file: `bind` → `EADDRINUSE`, `connect` → `ECONNREFUSED`
//!   proves nobody is behind it, and only then is it replaced;
//! - datagram boundaries kept, and a too-long one truncated (`MSG_TRUNC`);
//! - an address with no file; the kernel vouching for the peer: `SO_PEERCRED`
//!   (taken at connect or socketpair) against `SCM_CREDENTIALS` (taken at
//!   each send, with `SO_PASSCRED`);
//! - an open file passed to a process that never opened it (`SCM_RIGHTS`),
//!   and `MSG_CTRUNC` when the control buffer has room for fewer
//!   descriptors than were sent (the kernel closes the rest);
//! - what changes over TCP;
//! - the summary line: `errors=0` means every reply was checked.
//!
//! The defences a real server needs are in `src/ipc.rs` where they must
//! stay inline (back-pressure: a client that never reads stalls only
//! itself; the spare-fd trick for EMFILE; non-blocking datagram replies;
//! socket files made 0600 whatever the umask; a client that gives up after
//! `--timeout`), and in `src/checks.rs` where they need not (stale socket
//! files removed only if they are ours and dead, `RLIMIT_NOFILE`, a
//! datagram reply path checked against the sender's `SCM_CREDENTIALS`).
//!
//! The mechanism is in `src/ipc.rs`; the story's steps in `src/story.rs`.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `frame`, `payload`,
//! `peer`, `report`; `nix` features: `event`, `fs`, `net`, `poll`,
//! `process`, `signal`, `socket`, `uio`, `user`.
//!
//! Read next: `msgq-demo` (messages with types and priorities, kept by the
//! kernel with no connection at all).
//! See also: `eventfd-demo` and `memfd-demo` (SCM_RIGHTS in use: an eventfd
//! and a sealed memfd passed over a Unix socket), `pipe-demo` (socketpair's
//! one-way cousin).

mod checks;
mod ipc;
mod story;

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use common::cleanup::stop_on_signals;
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, usage};
use common::payload::MIN_SIZE;
use common::report::{Narrator, Stream, Summary};

use ipc::{Kind, MAX_REQUEST};

const USAGE: &str = "\
socket-demo: Unix domain sockets, the general-purpose IPC

USAGE:
    socket-demo [--clients K] [--count N] [--size BYTES] [--quiet]
        The story: socketpair, a stream server with K client processes served
        with poll, then with epoll (level- and edge-triggered), a stale socket
        file, datagrams and seqpackets, the abstract namespace, SO_PEERCRED
        and SO_PASSCRED, SCM_RIGHTS and MSG_CTRUNC, and the same protocol over
        TCP.
    socket-demo server --path P [--dgram|--seqpacket|--tcp ADDR] [--lines]
                       [--epoll] [--clients K] [--max-clients M] [--allow-uid U]...
                       [--timeout SECS]
        Serve on P until Ctrl-C, or until K clients have come and gone. The
        socket file is created 0600 whatever the umask: only your user (and
        root) can connect.
    socket-demo client --path P [--dgram|--seqpacket|--tcp ADDR] [--lines]
                       [--count N] [--size BYTES] [--timeout SECS]
        Send N requests (checkable messages, or N lines with --lines) and check
        every reply.

OPTIONS:
    --path P          the server's socket file (with --tcp: not used)
    --dgram           SOCK_DGRAM: datagrams; the client binds a path of its own,
                      and the server replies only if that path is a socket file
                      (not a symlink) owned by the sender (SCM_CREDENTIALS)
    --seqpacket       SOCK_SEQPACKET: a connection that keeps message boundaries
    --tcp ADDR        TCP on ADDR (IPv4:port, e.g. 127.0.0.1:0 for the server)
    --lines           stream only: newline-delimited text; the server replies
                      \"echo: LINE\" so any client (python3, socat, nc -U) works
    --epoll           server: wait with epoll, edge-triggered, instead of poll
                      (not with --dgram); same protocol, same replies
    --clients K       story: client processes (default 3); server: stop after K
    --max-clients M   server: the most clients at once (default 64, or less if
                      RLIMIT_NOFILE is low; at most RLIMIT_NOFILE - 6: one fd
                      per client plus stdio, the listener, a spare and one to
                      refuse a connection with)
    --allow-uid U     server: accept only this uid (repeatable); checked with
                      SO_PEERCRED on Unix sockets
    --count N         requests per client (default 5; 1 to 1000000000)
    --size BYTES      bytes per request (default 64; 8 to 1048576). With --dgram
                      and --seqpacket a message goes whole or not at all, and
                      must fit the send buffer: the client raises SO_SNDBUF as
                      far as net.core.wmem_max allows and refuses a larger size
    --timeout SECS    idle timeout (default 60; 1 to 86400). Client: the longest
                      it waits for the server to make progress (connect to a
                      full backlog, a reply, the rest of a frame) before it
                      gives up with exit 1. Server: it drops a client that
                      stalls that long in the middle of a request or with
                      replies unread. A --dgram client learns that its server
                      has gone only this way: there is no connection to break.
                      Unbounded on purpose: a server waits for clients, and a
                      connected client may stay idle between requests, for as
                      long as it likes (Ctrl-C stops it)
    --no-summary      client: no summary line (the story passes it to its
                      client processes, so that it ends with one summary)
    --quiet           no line per message or client
    -h, --help        this text

EXIT STATUS: 0 success, 1 runtime error (a server or client that left, a
refused connection, data errors), 2 bad command line, 128+N stopped by
signal N (130 for Ctrl-C, 143 for SIGTERM), after removing the socket file.
";

/// Default `--timeout`: how long a peer may make no progress.
pub const DEFAULT_TIMEOUT: u64 = 60;

fn main() -> ExitCode {
    error::run("socket-demo", || {
        let mut args = Args::from_env(USAGE)?;
        let role = args.role(&["server", "client"])?;
        let opts = parse(&mut args, role.as_deref())?;
        stop_on_signals()?;
        match role.as_deref() {
            None => story::story(&opts),
            Some("server") => server(&opts),
            _ => client(&opts),
        }
    })
}

/// Options of every mode.
#[derive(Debug)]
pub struct Options {
    pub path: Option<PathBuf>,
    pub kind: Kind,
    pub tcp: Option<SocketAddrV4>,
    pub lines: bool,
    pub epoll: bool,
    pub clients: Option<u64>,
    pub max_clients: Option<usize>,
    pub allowed_uids: Vec<u32>,
    pub count: u64,
    pub size: usize,
    pub timeout: Duration,
    pub summary: bool,
    pub quiet: bool,
}

fn parse(args: &mut Args, role: Option<&str>) -> Result<Options> {
    let mut opts = Options {
        path: None,
        kind: Kind::Stream,
        tcp: None,
        lines: false,
        epoll: false,
        clients: None,
        max_clients: None,
        allowed_uids: Vec::new(),
        count: DEFAULT_COUNT,
        size: DEFAULT_SIZE,
        timeout: Duration::from_secs(DEFAULT_TIMEOUT),
        summary: true,
        quiet: false,
    };
    let mut given: Vec<String> = Vec::new();
    let mut kinds = 0;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--path" => opts.path = Some(PathBuf::from(args.value("--path")?)),
            "--dgram" => {
                opts.kind = Kind::Dgram;
                kinds += 1;
            }
            "--seqpacket" => {
                opts.kind = Kind::SeqPacket;
                kinds += 1;
            }
            "--tcp" => {
                let text = args.value("--tcp")?;
                let addr: SocketAddrV4 = text.parse().map_err(|_| {
                    usage(format!(
                        "--tcp expects an IPv4 address and port like 127.0.0.1:7000, got '{text}'"
                    ))
                })?;
                opts.tcp = Some(addr);
                opts.kind = Kind::Tcp;
                kinds += 1;
            }
            "--lines" => opts.lines = true,
            "--epoll" => opts.epoll = true,
            "--clients" => opts.clients = Some(args.number("--clients", 1, 64)?),
            "--max-clients" => opts.max_clients = Some(args.number("--max-clients", 1, 1024)?),
            "--allow-uid" => opts
                .allowed_uids
                .push(args.number("--allow-uid", 0, u32::MAX)?),
            "--count" => opts.count = args.number("--count", 1, MAX_COUNT)?,
            "--size" => opts.size = args.number("--size", MIN_SIZE, MAX_REQUEST)?,
            "--timeout" => {
                opts.timeout = Duration::from_secs(args.number("--timeout", 1, 86_400)?)
            }
            "--no-summary" => opts.summary = false,
            "--quiet" => opts.quiet = true,
            other => return Err(args.unknown(other)),
        }
        given.push(arg);
    }
    let allowed: &[&str] = match role {
        None => &["--clients", "--count", "--size", "--quiet"],
        Some("server") => &[
            "--path",
            "--dgram",
            "--seqpacket",
            "--tcp",
            "--lines",
            "--epoll",
            "--clients",
            "--max-clients",
            "--allow-uid",
            "--timeout",
            "--quiet",
        ],
        _ => &[
            "--path",
            "--dgram",
            "--seqpacket",
            "--tcp",
            "--lines",
            "--count",
            "--size",
            "--timeout",
            "--no-summary",
            "--quiet",
        ],
    };
    if let Some(bad) = given.iter().find(|g| !allowed.contains(&g.as_str())) {
        let whom = role.map_or("the story".to_string(), |r| format!("the {r}"));
        return Err(usage(format!("{bad} is not an option of {whom}")));
    }
    if kinds > 1 {
        return Err(usage("choose one of --dgram, --seqpacket and --tcp"));
    }
    if opts.lines && opts.kind != Kind::Stream && opts.kind != Kind::Tcp {
        return Err(usage(
            "--lines is for stream sockets (the default, or --tcp)",
        ));
    }
    if opts.epoll && opts.kind == Kind::Dgram {
        return Err(usage(
            "--epoll is for servers with connections (stream, --seqpacket, --tcp); a datagram \
             server has one socket to wait on",
        ));
    }
    if role.is_some() && opts.kind != Kind::Tcp && opts.path.is_none() {
        return Err(usage(
            "the server and the client need --path P (or --tcp ADDR)",
        ));
    }
    if opts.kind == Kind::Tcp && given.iter().any(|g| g == "--path") {
        return Err(usage(
            "--path is for Unix sockets; with --tcp the address is ADDR",
        ));
    }
    Ok(opts)
}

/// `socket-demo server`: serve until Ctrl-C or `--clients` have come and gone.
fn server(opts: &Options) -> Result<()> {
    let say = Narrator::new("server", opts.quiet, Stream::Stdout);
    let start = Instant::now();
    let served = ipc::server(opts, &say)?;
    finish_server(&served, start.elapsed(), &say)
}

fn finish_server(served: &ipc::Served, elapsed: Duration, say: &Narrator) -> Result<()> {
    if let Some(signal) = served.stopped {
        say.step(format!("stopped by {signal}"));
    }
    say.step(format!(
        "{} client(s) served, {} dropped, {} refused; {} repl(ies) dropped; requests: {}",
        served.clients, served.dropped, served.refused, served.replies_dropped, served.report
    ));
    say.line(Summary {
        mechanism: "socket",
        messages: served.requests,
        bytes: served.report.bytes,
        errors: served.report.errors(),
        elapsed,
    });
    served.check_stopped()?;
    if served.report.errors() > 0 {
        bail!("{} request(s) failed the check", served.report.errors());
    }
    Ok(())
}

/// `socket-demo client`: send `--count` requests and check every reply.
fn client(opts: &Options) -> Result<()> {
    let say = Narrator::new("client", opts.quiet, Stream::Stdout);
    let (messages, bytes, elapsed) = ipc::client(opts, &say)?;
    // Inside the story the client's figures stay narration: the story ends
    // with the one summary line.
    if opts.summary {
        say.line(Summary {
            mechanism: "socket",
            messages,
            bytes,
            errors: 0,
            elapsed,
        });
    }
    Ok(())
}
