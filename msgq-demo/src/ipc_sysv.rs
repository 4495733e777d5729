//! The System V mechanism: `ftok`, `msgget`, `msgsnd`, `msgrcv`, `msgctl`;
//! a sender and a receiver, then a server and its clients.
//!
//! A queue is found by a key (`ftok` of an agreed path) and keeps discrete
//! messages, each with a positive `long` type. `msgrcv`'s `msgtyp` chooses:
//!
//! - `0`: the oldest message, whatever its type (plain FIFO);
//! - `> 0`: the oldest message of exactly that type (with `MSG_EXCEPT`:
//!   the oldest of any *other* type);
//! - `< 0`: the oldest message of the *lowest* type `<= |msgtyp|`.
//!
//! A queue holds at most `msg_qbytes` bytes (`/proc/sys/kernel/msgmnb` when
//! made; `msgctl(IPC_SET)` changes it); a message is at most `msgmax` bytes.
//! Nothing is removed on drop: outliving its processes is what a queue is
//! for; `msgctl(IPC_RMID)` removes it (here, or by a `SysvGuard`'s drop).
//! nix has no System V IPC, so the calls are made through `libc` here.
//!
//! Read top to bottom: the queue's calls, the sender and receiver, then the
//! client-server design. The liveness checks in the wait loops (the peer's
//! pid from `IPC_STAT`) are a defence a first reading may skip.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{SysvGuard, SysvKind, check_stop};
use common::peer::{PidTracker, PidWatch, Ticker, alive, pidfd_note};
use common::report::Narrator;
use nix::errno::Errno;

use crate::Options;
use crate::checks::{
    Moved, Tally, figures, is_private_queue_of_ours, payload_message, read_proc_number,
    sysv_queue_is_ours,
};

/// The `ftok` project byte for msgq-demo's queues.
const PROJECT: u8 = b'Q';

/// The largest message the kernel takes (`/proc/sys/kernel/msgmax`).
pub fn msgmax() -> usize {
    read_proc_number("/proc/sys/kernel/msgmax").unwrap_or(8192)
}

// ANCHOR: ftok
/// `ftok(path, 'Q')`: a key from an existing file's inode and device plus
/// one byte, so unrelated processes agree on a queue by naming a path.
/// (Two files can give the same key: `ftok` keys may collide.)
pub fn key_of(path: &Path) -> Result<libc::key_t> {
    let hint = || {
        format!(
            "ftok({}, 'Q'): --key must name an existing file both sides can see, \
             e.g. touch /tmp/demo.key",
            path.display()
        )
    };
    let c_path = CString::new(path.as_os_str().as_bytes()).with_context(hint)?;
    // SAFETY: c_path is a valid NUL-terminated string for the call.
    let key = unsafe { libc::ftok(c_path.as_ptr(), libc::c_int::from(PROJECT)) };
    if key == -1 {
        return Err(Errno::last()).with_context(hint);
    }
    Ok(key)
}
// ANCHOR_END: ftok

/// An open queue, by id (`msqid`). Nothing happens on drop.
#[derive(Debug, Clone, Copy)]
pub struct Queue {
    pub id: libc::c_int,
}

/// `msgsnd`/`msgrcv` flags, named. No flag: block until there is room
/// (msgsnd) or a matching message (msgrcv).
pub const WAIT: libc::c_int = 0;
/// Do not block: msgsnd fails with EAGAIN, msgrcv with ENOMSG.
pub const IPC_NOWAIT: libc::c_int = libc::IPC_NOWAIT;
/// msgrcv: truncate a message longer than the buffer instead of E2BIG.
pub const MSG_NOERROR: libc::c_int = libc::MSG_NOERROR;
/// msgrcv with `msgtyp > 0`: the oldest message whose type is *not*
/// `msgtyp` (Linux; in C it needs `_GNU_SOURCE`).
pub const MSG_EXCEPT: libc::c_int = libc::MSG_EXCEPT;

impl Queue {
    /// `msgget(key, IPC_CREAT | IPC_EXCL | 0600)`, or the existing queue
    /// if it is ours (see [`Queue::open`]).
    pub fn open_or_create(path: &Path, say: &Narrator) -> Result<Queue> {
        if let Some(queue) = Queue::create(path, say)? {
            return Ok(queue);
        }
        let queue = Queue::open(path)?;
        say.step(format!(
            "msgget({:#010x}, 0) = msqid {}: the existing queue (yours, mode 0600)",
            key_of(path)?,
            queue.id
        ));
        Ok(queue)
    }

    // ANCHOR: msgget
    /// `msgget(key, IPC_CREAT | IPC_EXCL | 0600)`: a new queue, or `None`
    /// if one exists for the key (EEXIST).
    pub fn create(path: &Path, say: &Narrator) -> Result<Option<Queue>> {
        let key = key_of(path)?;
        // IPC_EXCL: never take over a queue somebody else made for the key;
        // 0600: only our uid may send to it or receive from it.
        // SAFETY: msgget takes no pointers.
        let id = unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        if id >= 0 {
            say.step(format!(
                "msgget({key:#010x}, IPC_CREAT|IPC_EXCL|0600) = msqid {id}: a new queue"
            ));
            return Ok(Some(Queue { id }));
        }
        match Errno::last() {
            Errno::EEXIST => Ok(None),
            e => Err(e).context("msgget(IPC_CREAT|IPC_EXCL)"),
        }
    }
    // ANCHOR_END: msgget

    /// `msgget(IPC_PRIVATE, IPC_CREAT | 0600)`: always a new queue, with no
    /// key: only its id, passed on by whoever made it, reaches it. (No
    /// allocation: a forked child may call it.)
    pub fn create_private() -> nix::Result<Queue> {
        // SAFETY: msgget takes no pointers.
        let id =
            Errno::result(unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) })?;
        Ok(Queue { id })
    }

    /// `msgget(key, 0)`: the existing queue, with a plain message if none,
    /// and refused unless it is ours.
    pub fn open(path: &Path) -> Result<Queue> {
        Queue::find(path)?.with_context(|| {
            format!(
                "no System V queue for --key {}: a sender or receiver creates it",
                path.display()
            )
        })
    }

    /// Like [`Queue::open`], but `None` if no queue has the key (ENOENT).
    pub fn find(path: &Path) -> Result<Option<Queue>> {
        let key = key_of(path)?;
        // SAFETY: msgget takes no pointers.
        let queue = match Errno::result(unsafe { libc::msgget(key, 0) }) {
            Ok(id) => Queue { id },
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::EACCES) => {
                bail!("msgget: permission denied (EACCES): the queue belongs to another user")
            }
            Err(e) => return Err(e).context("msgget(key, 0)"),
        };
        queue.check_ours(&format!("for --key {}", path.display()))?;
        Ok(Some(queue))
    }

    /// Defence (a first reading may skip it): a queue this demo did not
    /// just create must be ours (`checks::sysv_queue_is_ours`), also for
    /// root, who may read and remove any queue.
    pub fn check_ours(&self, what: &str) -> Result<()> {
        match self.stat() {
            Ok(ds) => sysv_queue_is_ours(self.id, &ds, what),
            // IPC_STAT needs read permission: not ours.
            Err(Errno::EACCES) => bail!(
                "msgctl(msqid {}, IPC_STAT): permission denied (EACCES): the queue {what} \
                 belongs to another user",
                self.id
            ),
            Err(e) => Err(e).with_context(|| format!("msgctl(msqid {}, IPC_STAT)", self.id)),
        }
    }

    // ANCHOR: msgsnd_msgrcv
    /// `msgsnd`: append a message of type `mtype` (1 or more). Blocks while
    /// the queue has no room for it (`msg_qbytes` bytes in all), unless
    /// `flags` is [`IPC_NOWAIT`] (then EAGAIN).
    pub fn send(&self, mtype: i64, text: &[u8], flags: libc::c_int) -> nix::Result<()> {
        // The kernel's layout (struct msgbuf): a `long` type, then the bytes.
        let mut buf = Vec::with_capacity(size_of::<libc::c_long>() + text.len());
        buf.extend_from_slice(&(mtype as libc::c_long).to_ne_bytes());
        buf.extend_from_slice(text);
        // SAFETY: `buf` starts with a long followed by text.len() bytes,
        // and msgsz counts only the bytes after the long.
        let rc = unsafe { libc::msgsnd(self.id, buf.as_ptr().cast(), text.len(), flags) };
        Errno::result(rc).map(drop)
    }

    /// `msgrcv`: take a message chosen by `msgtyp` (see the module docs),
    /// at most `max` bytes. Blocks until one matches, unless `flags` has
    /// [`IPC_NOWAIT`] (then ENOMSG); a longer message fails with E2BIG and
    /// stays in the queue, unless `flags` has [`MSG_NOERROR`] (then it is
    /// cut to `max`). Returns its type and bytes.
    pub fn receive(
        &self,
        msgtyp: i64,
        max: usize,
        flags: libc::c_int,
    ) -> nix::Result<(i64, Vec<u8>)> {
        let head = size_of::<libc::c_long>();
        let mut buf = vec![0u8; head + max];
        // SAFETY: `buf` has room for a long plus `max` bytes, as msgsz says.
        let n = unsafe {
            libc::msgrcv(
                self.id,
                buf.as_mut_ptr().cast(),
                max,
                msgtyp as libc::c_long,
                flags,
            )
        };
        let n = Errno::result(n)? as usize;
        let mtype = libc::c_long::from_ne_bytes(buf[..head].try_into().expect("long-sized"));
        buf.drain(..head);
        buf.truncate(n.min(max));
        Ok((mtype, buf))
    }
    // ANCHOR_END: msgsnd_msgrcv

    /// `msgctl(IPC_STAT)`.
    pub fn stat(&self) -> nix::Result<libc::msqid_ds> {
        let mut ds = std::mem::MaybeUninit::<libc::msqid_ds>::uninit();
        // SAFETY: IPC_STAT fills the msqid_ds we point to.
        Errno::result(unsafe { libc::msgctl(self.id, libc::IPC_STAT, ds.as_mut_ptr()) })?;
        // SAFETY: the call succeeded, so the kernel filled it in.
        Ok(unsafe { ds.assume_init() })
    }

    pub fn describe(&self) -> String {
        match self.stat() {
            Ok(ds) => format!(
                "msgctl(IPC_STAT): msg_qnum = {}, msg_qbytes = {}, msg_lspid = {}, msg_lrpid = {}",
                ds.msg_qnum, ds.msg_qbytes, ds.msg_lspid, ds.msg_lrpid
            ),
            Err(e) => format!("msgctl(IPC_STAT): {e}"),
        }
    }

    /// `msgctl(IPC_SET)`: give the queue room for `bytes` bytes. Its owner
    /// may lower `msg_qbytes`, and raise it up to `/proc/sys/kernel/msgmnb`;
    /// above that only a process with CAP_SYS_RESOURCE may (else EPERM).
    /// (No allocation: a forked child may call it.)
    pub fn set_qbytes(&self, bytes: u64) -> nix::Result<()> {
        // IPC_SET writes msg_perm.uid/gid/mode and msg_qbytes from the
        // struct: start from IPC_STAT's values so only msg_qbytes changes.
        let mut ds = self.stat()?;
        ds.msg_qbytes = bytes as _;
        // SAFETY: `ds` is a valid msqid_ds, read by the kernel.
        Errno::result(unsafe { libc::msgctl(self.id, libc::IPC_SET, &mut ds) }).map(drop)
    }

    /// `msgctl(IPC_RMID)`: the queue and any messages in it are gone at
    /// once; a process blocked on it wakes with EIDRM.
    pub fn remove(&self) -> nix::Result<()> {
        // SAFETY: IPC_RMID reads no buffer.
        Errno::result(unsafe { libc::msgctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) })
            .map(drop)
    }
}

/// `msgsnd` with a clear message for the errors a user can cause; gives up
/// after `timeout` on a full queue nobody empties. `receiver` watches the
/// queue's last receiver through a pidfd, so a reused pid cannot pass for it.
fn send_checked(
    queue: &Queue,
    mtype: i64,
    text: &[u8],
    timeout: Duration,
    receiver: &mut PidTracker,
) -> Result<()> {
    let start = Instant::now();
    loop {
        check_stop()?;
        // WAIT: block while the queue is full (the ticker wakes us to look).
        match queue.send(mtype, text, WAIT) {
            Ok(()) => return Ok(()),
            // The ticker's EINTR: we are blocked on a full queue. If its
            // last receiver has died, nobody will make room.
            Err(Errno::EINTR) => {
                let Ok(ds) = queue.stat() else { continue };
                let full = ds.__msg_cbytes + text.len() as u64 > ds.msg_qbytes;
                if full && ds.msg_lrpid > 0 && !receiver.alive(ds.msg_lrpid) {
                    return Err(ReceiverGone(ds.msg_lrpid).into());
                }
                if start.elapsed() >= timeout {
                    bail!(
                        "msgsnd: the queue has been full for {} s (--timeout) and no receiver \
                         made room",
                        timeout.as_secs()
                    );
                }
            }
            Err(Errno::EINVAL) if text.len() > msgmax() => bail!(
                "msgsnd: a {}-byte message is larger than msgmax, {} bytes \
                 (/proc/sys/kernel/msgmax)",
                text.len(),
                msgmax()
            ),
            Err(Errno::EIDRM | Errno::EINVAL) => bail!("msgsnd: the queue was removed"),
            // msgget(key, 0) asks for no permission; the check comes here.
            Err(Errno::EACCES) => bail!(
                "msgsnd: permission denied (EACCES): the queue belongs to another user (mode 0600)"
            ),
            Err(e) => return Err(e).context("msgsnd"),
        }
    }
}

/// The queue is full and the last process that received from it is dead.
#[derive(Debug)]
struct ReceiverGone(libc::pid_t);

impl std::fmt::Display for ReceiverGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "msgsnd: the queue is full and its last receiver (pid {}) has exited: nobody will make room",
            self.0
        )
    }
}

impl std::error::Error for ReceiverGone {}

/// How often blocked msgsnd/msgrcv wake (peer::Ticker) to look at the
/// queue's last sender or receiver pid, or at a deadline: a queue does not
/// tell a waiting process that its peer died; the pids in
/// `msgctl(IPC_STAT)` are all there is.
const TICK: Duration = Duration::from_millis(250);

pub fn sender(opts: &Options, path: &Path, say: &Narrator) -> Result<()> {
    // A command-line mistake against this kernel's limit: exit 2, like any
    // other option out of range.
    if opts.size > msgmax() {
        return Err(common::error::usage(format!(
            "--size {} is larger than msgmax, {} bytes (/proc/sys/kernel/msgmax): use at most {}",
            opts.size,
            msgmax(),
            msgmax()
        )));
    }
    let queue = Queue::open_or_create(path, say)?;
    let _ticker = Ticker::start(TICK)?;
    note_pidfd(say);
    let mut receiver = PidTracker::new();
    let mtype = opts.mtype.unwrap_or(1);
    let start = Instant::now();
    let (mut count, mut bytes) = (0u64, 0u64);
    let sent = (|| -> Result<()> {
        if opts.texts.is_empty() {
            for seq in 0..opts.count {
                let message = payload_message(seq, opts.size);
                send_checked(&queue, mtype, &message, opts.timeout, &mut receiver)?;
                say.message(format!(
                    "msgsnd(type {mtype}): payload #{seq} ({} bytes)",
                    message.len()
                ));
                count += 1;
                bytes += message.len() as u64;
            }
        } else {
            for text in &opts.texts {
                send_checked(&queue, mtype, text.as_bytes(), opts.timeout, &mut receiver)?;
                say.message(format!("msgsnd(type {mtype}): {text:?}"));
                count += 1;
                bytes += text.len() as u64;
            }
        }
        Ok(())
    })();
    if let Err(e) = sent {
        // The receiver that would have removed the queue is dead: its
        // messages will never be read. Remove it, so no later run sees them.
        if e.is::<ReceiverGone>() && queue.remove().is_ok() {
            say.step(format!("removed msqid {} for the dead receiver", queue.id));
        }
        return Err(e);
    }
    say.step(format!(
        "sent {count} message(s) of type {mtype}; {}",
        queue.describe()
    ));
    figures(opts, "msgq-sysv", count, bytes, 0, start.elapsed(), say);
    Ok(())
}

pub fn receiver(opts: &Options, path: &Path, say: &Narrator) -> Result<()> {
    // A waiting receiver may create the queue for senders to come; one
    // that will not wait has nothing to do without an existing queue.
    // Either way an existing queue must be ours before we read or remove it.
    let queue = if opts.nowait {
        Queue::open(path)?
    } else {
        Queue::open_or_create(path, say)?
    };
    // The guard's drop is msgctl(IPC_RMID), on every way out (an error
    // included) unless --keep: a receiver that stops is done with the queue.
    let _remove = (!opts.keep).then(|| SysvGuard::new(SysvKind::MessageQueue, queue.id));
    let msgtyp = opts.mtype.unwrap_or(0);
    let flags = if opts.nowait { IPC_NOWAIT } else { WAIT };
    let mut tally = Tally::new();
    // The queue's last sender, watched through a pidfd once first seen.
    let mut sender = PidTracker::new();
    note_pidfd(say);
    let start = Instant::now();
    say.step(format!(
        "msgrcv(msgtyp {msgtyp}{}): {}{}",
        if opts.nowait { ", IPC_NOWAIT" } else { "" },
        match msgtyp {
            0 => "the oldest message of any type".to_string(),
            t if t > 0 => format!("the oldest message of type {t}"),
            t => format!("the oldest message of the lowest type <= {}", -t),
        },
        if opts.nowait {
            String::new()
        } else {
            format!(
                "; giving up after {} s without a message",
                opts.timeout.as_secs()
            )
        }
    ));
    let _ticker = Ticker::start(TICK)?;
    let mut last = Instant::now();
    while !opts.count_given || tally.received() < opts.count {
        check_stop()?;
        match queue.receive(msgtyp, msgmax(), flags) {
            Ok((mtype, text)) => {
                last = Instant::now();
                tally.account(&format!("type {mtype}"), &text, say)
            }
            // The ticker's EINTR. A queue may rightly wait for senders to
            // come; but with --count we expect more, and if the queue is
            // empty and its last sender has died, nothing more will come
            // from it.
            Err(Errno::EINTR) => {
                let Ok(ds) = queue.stat() else { continue };
                if opts.count_given
                    && ds.msg_qnum == 0
                    && ds.msg_lspid > 0
                    && !sender.alive(ds.msg_lspid)
                {
                    bail!(
                        "the queue is empty and its last sender (pid {}) has exited: {} of {} \
                         messages arrived",
                        ds.msg_lspid,
                        tally.received(),
                        opts.count
                    );
                }
                if last.elapsed() >= opts.timeout {
                    // With --count, finish() below reports the shortfall.
                    say.step(format!(
                        "no message for {} s (--timeout): stopping",
                        opts.timeout.as_secs()
                    ));
                    break;
                }
            }
            Err(Errno::ENOMSG) => {
                say.step("ENOMSG: no matching message, and IPC_NOWAIT says not to wait");
                break;
            }
            Err(Errno::EIDRM | Errno::EINVAL) => {
                bail!("msgrcv: the queue was removed while we waited")
            }
            Err(Errno::EACCES) => bail!(
                "msgrcv: permission denied (EACCES): the queue belongs to another user (mode 0600)"
            ),
            Err(e) => return Err(e).context("msgrcv"),
        }
    }
    let elapsed = start.elapsed();
    if opts.keep {
        say.step(format!(
            "--keep: leaving msqid {} in place; {}",
            queue.id,
            queue.describe()
        ));
    } else {
        say.step(format!(
            "msgctl(msqid {}, IPC_RMID): the queue is gone",
            queue.id
        ));
    }
    tally.finish(
        opts,
        "msgq-sysv",
        opts.count_given.then_some(opts.count),
        elapsed,
        say,
    )
}

pub fn remove(path: &Path, say: &Narrator) -> Result<()> {
    // Root may remove any queue: check it is ours first.
    let queue = Queue::open(path)?;
    let left = queue.stat().map(|ds| ds.msg_qnum).unwrap_or(0);
    queue.remove().context("msgctl(IPC_RMID)")?;
    say.step(format!(
        "msgctl(msqid {}, IPC_RMID): removed, with {left} message(s) still in it",
        queue.id
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// Client and server (the design of TLPI's svmsg_file)
// ---------------------------------------------------------------------------
//
// The server's queue, found by --key, carries requests only. Each client
// makes a private queue for its replies (msgget(IPC_PRIVATE)) and puts its
// id in every request; the server answers into that queue.
//
// Why not one queue both ways, replies typed by client pid? A queue holds
// at most msg_qbytes bytes, requests and replies together. Once requests
// fill it, the server blocks in msgsnd of a reply while every client
// blocks in msgsnd of its next request: nobody is left to msgrcv, and all
// wait for ever. One client that stops reading its replies does the same
// on its own. With a private queue per client, the server never waits for
// a client: it replies with IPC_NOWAIT and drops a reply that does not fit.

/// A request's first bytes: the tag, the client's reply msqid (i32,
/// little-endian) and the request's sequence number (u64); then the
/// payload for the server to send back.
const REQUEST_TAG: &[u8; 4] = b"RQ01";
pub const REQUEST_HEADER: usize = 16;
/// Replies go into the client's private queue with this type.
const REPLY_TYPE: i64 = 1;

fn request(reply_queue: libc::c_int, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = REQUEST_TAG.to_vec();
    bytes.extend_from_slice(&reply_queue.to_le_bytes());
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// Parse a request from another process: every length checked, no panic.
fn parse_request(bytes: &[u8]) -> Option<(libc::c_int, u64, &[u8])> {
    let rest = bytes.strip_prefix(REQUEST_TAG)?;
    let qid = libc::c_int::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(rest.get(4..12)?.try_into().ok()?);
    Some((qid, seq, rest.get(12..)?))
}

/// The server's queue; its guard's drop removes it (`msgctl(IPC_RMID)`),
/// with any requests still in it.
pub struct ServerQueue {
    pub queue: Queue,
    _remove: SysvGuard,
}

/// Make the server's queue for `path`, or take over one a dead server left
/// (it is ours and nobody receives from it); refuse a live server's.
pub fn server_queue(path: &Path, say: &Narrator) -> Result<ServerQueue> {
    let queue = match Queue::create(path, say)? {
        Some(queue) => queue,
        None => {
            let queue = Queue::open(path)?;
            let ds = queue.stat().context("msgctl(IPC_STAT)")?;
            if alive(ds.msg_lrpid) {
                bail!(
                    "msqid {} for --key {} is in use: pid {} receives from it (another server?)",
                    queue.id,
                    path.display(),
                    ds.msg_lrpid
                );
            }
            // A server killed by SIGKILL removes nothing; its queue, and
            // the requests in it, wait for the next server.
            let last = match ds.msg_lrpid {
                0 => "nobody has received from it yet".to_string(),
                pid => format!("its last receiver, pid {pid}, has exited"),
            };
            say.step(format!(
                "msgget = msqid {}: a queue of yours left by an earlier process ({last}), with {} \
                 message(s) in it: taking it over",
                queue.id, ds.msg_qnum
            ));
            queue
        }
    };
    // The guard's drop is msgctl(IPC_RMID): the server's queue goes with it.
    let _remove = SysvGuard::new(SysvKind::MessageQueue, queue.id);
    // msgrcv records the receiver's pid in msg_lrpid, which clients read
    // to tell whether a server is alive. One message to ourselves puts our
    // pid there before the first request.
    let me = i64::from(std::process::id());
    queue
        .send(me, b"server started", IPC_NOWAIT)
        .context("msgsnd(to ourselves)")?;
    queue
        .receive(me, 64, IPC_NOWAIT)
        .context("msgrcv(from ourselves)")?;
    say.step(format!(
        "msgrcv of one message to myself: msg_lrpid = {me}, so clients can see a live server"
    ));
    Ok(ServerQueue { queue, _remove })
}

/// Defence (a first reading may skip it): is `id` a client's reply queue
/// we may write to or remove? A forged request could name any queue.
fn check_client_queue(id: libc::c_int) -> Result<libc::msqid_ds, String> {
    let ds = (Queue { id })
        .stat()
        .map_err(|e| format!("msqid {id}: {}", e.desc()))?;
    is_private_queue_of_ours(id, &ds)?;
    Ok(ds)
}

/// Clients seen by a server (reply msqid → pid, and that client watched
/// through a pidfd from its first request on, so that its pid, reused
/// after it died, does not keep its queue alive). A client killed by
/// SIGKILL cannot remove its private queue; the server removes the queues
/// of dead clients when it notices, and when it stops.
struct Clients<'a> {
    seen: HashMap<libc::c_int, (i64, PidTracker)>,
    say: &'a Narrator,
}

impl Clients<'_> {
    /// Note a request from `pid` naming reply queue `qid`; has that client
    /// exited (its queue then removed if still its own)?
    fn seen_dead(&mut self, qid: libc::c_int, pid: i64) -> bool {
        let entry = self
            .seen
            .entry(qid)
            .or_insert_with(|| (pid, PidTracker::new()));
        // The same msqid from another client: the old one's queue was
        // removed and the id reused.
        if entry.0 != pid {
            *entry = (pid, PidTracker::new());
        }
        remove_if_dead(&mut entry.1, qid, pid, self.say)
    }
}

/// Is client `pid` gone? Then remove its queue `qid`, if still its own.
fn remove_if_dead(client: &mut PidTracker, qid: libc::c_int, pid: i64, say: &Narrator) -> bool {
    // A type that is no pid (too large) cannot be a live client.
    if client.alive(i32::try_from(pid).unwrap_or(0)) {
        return false;
    }
    // Still its queue? Private, ours, and read last by that client (or
    // never read): then nobody will ever read it again.
    if let Ok(ds) = check_client_queue(qid)
        && (ds.msg_lrpid == 0 || i64::from(ds.msg_lrpid) == pid)
        && (Queue { id: qid }).remove().is_ok()
    {
        say.step(format!(
            "client pid {pid} has exited without removing its queue: removed msqid {qid}"
        ));
    }
    true
}

impl Drop for Clients<'_> {
    fn drop(&mut self) {
        for (&qid, (pid, client)) in &mut self.seen {
            remove_if_dead(client, qid, *pid, self.say);
        }
    }
}

/// The server role: make the queue, serve, remove the queue.
pub fn server(opts: &Options, path: &Path, say: &Narrator) -> Result<()> {
    let queue = server_queue(path, say)?;
    let start = Instant::now();
    let limit = opts.count_given.then_some(opts.count);
    let timeout = opts.timeout_given.then_some(opts.timeout);
    let moved = serve(&queue, limit, timeout, say)?;
    say.step(format!(
        "msgctl(msqid {}, IPC_RMID): my queue is gone",
        queue.queue.id
    ));
    figures(
        opts,
        "msgq-sysv",
        moved.messages,
        moved.bytes,
        0,
        start.elapsed(),
        say,
    );
    Ok(())
}

/// Answer requests: each reply carries the request's payload back to the
/// client's private queue. Stops after `limit` replies (if given), or with
/// an error after `timeout` without a request (if given). Without a
/// timeout the wait for requests is unbounded: a server waits for clients
/// for as long as it runs, until Ctrl-C or SIGTERM.
pub fn serve(
    server: &ServerQueue,
    limit: Option<u64>,
    timeout: Option<Duration>,
    say: &Narrator,
) -> Result<Moved> {
    let queue = server.queue;
    let mut clients = Clients {
        seen: HashMap::new(),
        say,
    };
    say.step(format!(
        "waiting for requests on msqid {} (msgrcv blocks{}; Ctrl-C to stop){}",
        queue.id,
        match timeout {
            Some(t) => format!(", at most {} s without a request", t.as_secs()),
            None => ", for as long as no client comes".into(),
        },
        limit.map_or(String::new(), |n| format!(": serving {n} request(s)"))
    ));
    // Only a timeout needs waking up: Ctrl-C and SIGTERM interrupt msgrcv
    // themselves (their handler has no SA_RESTART).
    let _ticker = timeout
        .map(|_| Ticker::start(Duration::from_secs(1)))
        .transpose()?;
    let mut moved = Moved::default();
    let mut served = 0u64;
    let mut last = Instant::now();
    while limit.is_none_or(|n| served < n) {
        check_stop()?;
        // msgtyp 0: the oldest request, whoever sent it (its type is the
        // client's pid). Blocks until one comes.
        let (pid, bytes) = match queue.receive(0, msgmax(), WAIT) {
            Ok(got) => got,
            Err(Errno::EINTR) => {
                if let Some(t) = timeout.filter(|t| last.elapsed() >= *t) {
                    bail!(
                        "no request for {} s (--timeout): served {served}{}",
                        t.as_secs(),
                        limit.map_or(String::new(), |n| format!(" of {n} requests"))
                    );
                }
                continue;
            }
            Err(Errno::EIDRM | Errno::EINVAL) => bail!("msgrcv: my queue was removed"),
            Err(e) => return Err(e).context("msgrcv(server queue)"),
        };
        last = Instant::now();
        moved.messages += 1;
        moved.bytes += bytes.len() as u64;
        let Some((qid, seq, body)) = parse_request(&bytes) else {
            say.step(format!(
                "a {}-byte message of type {pid} is not a request: dropped",
                bytes.len()
            ));
            continue;
        };
        if clients.seen_dead(qid, pid) {
            say.step(format!(
                "request {seq} from pid {pid}: the client has exited, no reply"
            ));
            continue;
        }
        if let Err(why) = check_client_queue(qid) {
            say.step(format!(
                "request {seq} from pid {pid} names {why}: not replying"
            ));
            continue;
        }
        // IPC_NOWAIT: a client that does not read must not stop the server.
        match (Queue { id: qid }).send(REPLY_TYPE, body, IPC_NOWAIT) {
            Ok(()) => {
                served += 1;
                moved.messages += 1;
                moved.bytes += body.len() as u64;
                say.message(format!(
                    "request {seq} from pid {pid} → reply into its queue msqid {qid}"
                ));
            }
            Err(Errno::EAGAIN) => say.step(format!(
                "request {seq} from pid {pid}: its queue msqid {qid} is full, reply dropped"
            )),
            Err(Errno::EIDRM | Errno::EINVAL) => say.step(format!(
                "request {seq} from pid {pid}: its queue msqid {qid} is gone, reply dropped"
            )),
            Err(e) => return Err(e).with_context(|| format!("msgsnd(msqid {qid})")),
        }
    }
    say.step(format!("served {served} request(s)"));
    Ok(moved)
}

/// The server, if a live process receives from its queue: watched through
/// a pidfd (`pidfd_open`) from now on.
fn server_pid(ds: &libc::msqid_ds) -> Option<PidWatch> {
    PidWatch::open(ds.msg_lrpid).ok().filter(PidWatch::alive)
}

/// Say once when this kernel has no pidfds (Linux before 5.3).
fn note_pidfd(say: &Narrator) {
    if let Some(note) = pidfd_note() {
        say.step(note);
    }
}

/// Why a client gives up on its server.
fn server_trouble(
    server: &Queue,
    waited: Duration,
    timeout: Duration,
    seen: &mut Option<PidWatch>,
) -> Result<()> {
    let ds = match server.stat() {
        Ok(ds) => ds,
        Err(Errno::EIDRM | Errno::EINVAL) => bail!(
            "the server's queue msqid {} was removed: the server has stopped",
            server.id
        ),
        Err(e) => return Err(e).context("msgctl(server queue, IPC_STAT)"),
    };
    // The first live receiver we see is the server (it receives one
    // message from itself at start); once it has gone, nobody will answer.
    // A pidfd from then on: a reused pid does not pass for the server.
    match seen {
        None => *seen = server_pid(&ds),
        Some(server) if !server.alive() => bail!(
            "the server (pid {}) has exited without answering",
            server.pid()
        ),
        Some(_) => {}
    }
    if waited >= timeout {
        bail!(
            "no reply within {} s (--timeout): no server is answering on msqid {}",
            timeout.as_secs(),
            server.id
        );
    }
    Ok(())
}

/// The client role: `--count` requests of `--size` bytes, each answered
/// into our private queue and checked.
pub fn client(opts: &Options, path: &Path, say: &Narrator) -> Result<()> {
    // Several clients may share a terminal: name each by its pid.
    let say = &say.with_role(format!("client {}", std::process::id()));
    // The server makes its queue: none means no server (yet).
    let server = Queue::find(path)?.with_context(|| {
        format!(
            "no server for --key {}: its queue does not exist; start one first with \
             'msgq-demo sysv server --key {}'",
            path.display(),
            path.display()
        )
    })?;
    // IPC_PRIVATE: a new queue that only its id (passed in our requests)
    // can reach.
    let mine = Queue::create_private().context("msgget(IPC_PRIVATE)")?;
    let id = mine.id;
    // The guard's drop is msgctl(IPC_RMID), on every way out: nobody else
    // reads this queue.
    let _remove = SysvGuard::new(SysvKind::MessageQueue, id);
    say.step(format!(
        "msgget(IPC_PRIVATE, 0600) = msqid {id}: my private queue for replies, removed when I exit"
    ));
    note_pidfd(say);
    let ds = server.stat().context("msgctl(server queue, IPC_STAT)")?;
    let mut seen = server_pid(&ds);
    if let Some(watch) = &seen {
        say.step(format!(
            "server pid {} serves msqid {}; waiting at most {} s for each reply",
            watch.pid(),
            server.id,
            opts.timeout.as_secs()
        ));
    } else {
        say.step(format!(
            "waiting for a server: nobody receives from msqid {} yet; giving up after {} s \
             (--timeout)",
            server.id,
            opts.timeout.as_secs()
        ));
    }
    let me = i64::from(std::process::id());
    let _ticker = Ticker::start(TICK)?;
    let start = Instant::now();
    let mut moved = Moved::default();
    let result = (|| -> Result<()> {
        for seq in 0..opts.count {
            let body = payload_message(seq, opts.size);
            let asked = Instant::now();
            // Our requests' type is our pid: the server takes any type
            // (msgtyp 0), and we can take an unanswered one back.
            loop {
                check_stop()?;
                match server.send(me, &request(id, seq, &body), WAIT) {
                    Ok(()) => break,
                    Err(Errno::EINTR) => {
                        server_trouble(&server, asked.elapsed(), opts.timeout, &mut seen)?
                    }
                    Err(Errno::EIDRM | Errno::EINVAL) => {
                        bail!("the server's queue was removed: the server has stopped")
                    }
                    Err(e) => return Err(e).context("msgsnd(request)"),
                }
            }
            let reply = loop {
                check_stop()?;
                match mine.receive(0, msgmax(), WAIT) {
                    Ok(got) => break got,
                    Err(Errno::EINTR) => {
                        // The reply may have come just as the server left.
                        if let Ok(got) = mine.receive(0, msgmax(), IPC_NOWAIT) {
                            break got;
                        }
                        server_trouble(&server, asked.elapsed(), opts.timeout, &mut seen)?
                    }
                    Err(e) => return Err(e).context("msgrcv(my queue)"),
                }
            };
            if reply != (REPLY_TYPE, body.clone()) {
                bail!(
                    "reply {seq}: type {}, {} bytes, not the type {REPLY_TYPE} echo of my request",
                    reply.0,
                    reply.1.len()
                );
            }
            moved.messages += 1;
            moved.bytes += body.len() as u64;
            say.message(format!(
                "request {seq} → reply in my queue ({} bytes, checked)",
                body.len()
            ));
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Leave nothing behind: take back an unanswered request (its type
        // is our pid), so that a later server does not answer a dead client.
        if let Ok((_, bytes)) = server.receive(me, msgmax(), IPC_NOWAIT) {
            say.step(format!(
                "took my unanswered request back from msqid {} ({} bytes)",
                server.id,
                bytes.len()
            ));
        }
        return Err(e);
    }
    say.step(format!(
        "{} request(s), every reply my own, in {:.3} s",
        opts.count,
        start.elapsed().as_secs_f64()
    ));
    figures(
        opts,
        "msgq-sysv",
        moved.messages,
        moved.bytes,
        0,
        start.elapsed(),
        say,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_short_ones_are_refused() {
        let bytes = request(42, 7, b"body");
        assert_eq!(parse_request(&bytes), Some((42, 7, &b"body"[..])));
        for n in 0..REQUEST_HEADER {
            assert_eq!(parse_request(&bytes[..n]), None);
        }
        assert_eq!(parse_request(b"XXXXXXXXXXXXXXXXXXXX"), None);
    }
}
