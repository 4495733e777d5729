//! Hardening that is not the mechanism: what a real server and client
//! must check around the calls in `ipc.rs`. A first reading may skip it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use common::error::usage;
use common::frame::FrameError;
use common::payload::CheckReport;
use common::report::Narrator;
use nix::errno::Errno;
use nix::sys::socket::{UnixAddr, UnixCredentials, connect};
use nix::unistd::geteuid;

use crate::Options;
use crate::ipc::{self, FDS_BESIDES_CLIENTS, Kind};

/// Before `bind_path` removes the file at `path` (bind gave EADDRINUSE):
/// Ok only if it is a socket file, ours (owner == euid, also as root), and
/// dead: connect() to it fails with ECONNREFUSED, which is what a socket
/// file whose server has gone gives. A live server is never hijacked, and
/// anything else is never removed.
pub fn stale_and_ours(kind: Kind, path: &Path, addr: &UnixAddr, say: &Narrator) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("lstat({})", path.display()))?;
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket: refusing to replace it; choose another --path",
            path.display()
        );
    }
    let me = geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "{} is a socket file of {}, not ours (uid {me}): refusing to remove it; choose \
             another --path, or let its owner remove it",
            path.display(),
            user_name(meta.uid())
        );
    }
    // A test connect: a live server accepts it (and sees a client that
    // closes at once), a dead one cannot.
    let probe = ipc::unix_socket(kind)?;
    match connect(probe.as_raw_fd(), addr) {
        Ok(()) => bail!(
            "a server is listening on {}: refusing to take over its address",
            path.display()
        ),
        Err(Errno::ECONNREFUSED) => {
            say.step(format!(
                "{} is a socket file nobody listens on (connect → ECONNREFUSED): stale, replacing it",
                path.display()
            ));
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("connect({}) to test it", path.display())),
    }
}

/// "uid 65534 (nobody)", for messages about another user's object.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// The soft RLIMIT_NOFILE: the most descriptors this process may hold.
fn fd_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    Errno::result(rc).context("getrlimit(RLIMIT_NOFILE)")?;
    Ok(limit.rlim_cur)
}

/// The most clients a server takes at once: `--max-clients`, or 64, but
/// never more than RLIMIT_NOFILE has descriptors for.
pub fn max_clients(opts: &Options, say: &Narrator) -> Result<usize> {
    // Each client holds one descriptor: more clients than RLIMIT_NOFILE
    // allows would end in accept4 → EMFILE. Refuse such a --max-clients;
    // shrink the default to fit.
    let limit = fd_limit()?;
    let room = limit.saturating_sub(FDS_BESIDES_CLIENTS as u64) as usize;
    let max_clients = match opts.max_clients {
        Some(m) if m > room => {
            return Err(usage(format!(
                "--max-clients {m} needs {} file descriptors (one per client, plus {} for stdio, \
                 the listener, a spare and one to refuse with), but RLIMIT_NOFILE is {limit}: \
                 use --max-clients {room} or less, or raise the limit (ulimit -n)",
                m + FDS_BESIDES_CLIENTS,
                FDS_BESIDES_CLIENTS
            )));
        }
        Some(m) => m,
        None if room < 64 => {
            if room == 0 {
                bail!("RLIMIT_NOFILE is {limit}: too low to serve any client (ulimit -n)");
            }
            say.step(format!(
                "RLIMIT_NOFILE is {limit}: at most {room} clients at once instead of 64"
            ));
            room
        }
        None => 64,
    };
    Ok(max_clients)
}

/// A datagram or SEQPACKET message goes whole or not at all, and must fit
/// the send buffer: refuse a `--size` the kernel would refuse (EMSGSIZE).
pub fn check_message_size(fd: &OwnedFd, opts: &Options) -> Result<()> {
    let largest = ipc::max_message(fd)?;
    if opts.size <= largest {
        return Ok(());
    }
    let wmem_max = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .map(|t| t.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    Err(usage(format!(
        "--size {} is larger than the largest {} this socket can send, {largest} bytes (its \
         SO_SNDBUF minus 32; SO_SNDBUF is capped by net.core.wmem_max = {wmem_max}): use \
         --size {largest} or less, or raise net.core.wmem_max (sysctl)",
        opts.size,
        if opts.kind == Kind::Dgram {
            "datagram"
        } else {
            "SEQPACKET message"
        }
    )))
}

/// The error for a call that made no progress within `--timeout`.
pub fn timed_out(opts: &Options, what: &str, seq: u64) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: the server made no progress for {} s (--timeout) after {seq} replies: giving up",
        opts.timeout.as_secs()
    )
}

/// A client's I/O error, in words: timed out, the server gone, or else.
pub fn server_gone(e: FrameError, opts: &Options, what: &str, seq: u64) -> anyhow::Error {
    match e {
        FrameError::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
            timed_out(opts, what, seq)
        }
        // ECONNREFUSED: a datagram server's socket closed under us.
        FrameError::Io(io)
            if matches!(
                io.raw_os_error(),
                Some(libc::EPIPE | libc::ECONNRESET | libc::ECONNREFUSED)
            ) =>
        {
            anyhow::anyhow!("the server went away after {seq} replies ({io})")
        }
        other => anyhow::Error::new(other).context(format!("request {seq}")),
    }
}

/// The reply address of a datagram must be a socket file owned by the
/// sender, and not a symlink.
///
/// Why: sendto() to a path follows symlinks and needs only write access to
/// the socket file at the moment of sending. Without this check a client
/// binds a path, sends a request, swaps its path for a symlink to a socket
/// only we may write to, and our echo delivers its bytes there: we would be
/// a confused deputy, lending the client our permissions.
///
/// What remains racy: between this lstat and the sendto the client can
/// still swap the name (there is no "sendto this inode"). This check only
/// narrows the window. The real boundary is that our socket is 0600 in the
/// first place: then only our own user can send us anything, and it could
/// write to every socket we can reach anyway.
pub fn reply_path_is_senders(path: &Path, creds: &UnixCredentials) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("lstat: {e}"))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err("the reply address is a symlink, refusing to follow it".into());
    }
    if !kind.is_socket() {
        return Err("the reply address is not a socket file".into());
    }
    if meta.uid() != creds.uid() {
        return Err(format!(
            "the socket file there belongs to uid {}, not to the sender (SCM_CREDENTIALS uid {})",
            meta.uid(),
            creds.uid()
        ));
    }
    Ok(())
}

/// Most datagram clients tracked at once.
pub const MAX_DGRAM_CLIENTS: usize = 1024;

/// One report for a server's run, from each client's.
pub fn total(reports: Vec<CheckReport>) -> CheckReport {
    let mut total = CheckReport::default();
    for report in &reports {
        total.merge(report);
    }
    total
}
