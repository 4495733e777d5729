//! System V message queues: `msgget`, `msgsnd`, `msgrcv`, `msgctl`.
//!
//! A queue is found by a key (`ftok` of an agreed path) and keeps discrete
//! messages, each with a positive `long` type. `msgrcv`'s `msgtyp` chooses:
//!
//! - `0`: the oldest message, whatever its type (plain FIFO);
//! - `> 0`: the oldest message of exactly that type;
//! - `< 0`: the oldest message of the *lowest* type `<= |msgtyp|`.
//!
//! nix has no System V IPC, so the calls are made through `libc` here.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{SysvGuard, SysvKind, check_stop, sysv_remove};
use common::peer::{Ticker, alive};
use common::report::Narrator;
use common::sysv_sem::ftok;
use nix::errno::Errno;

use crate::{Options, Tally, payload_message};

/// The `ftok` project byte for msgq-demo's queues.
const PROJECT: u8 = b'Q';
/// The largest message the kernel takes (`/proc/sys/kernel/msgmax`).
pub fn msgmax() -> usize {
    crate::read_proc_number("/proc/sys/kernel/msgmax").unwrap_or(8192)
}

/// An open queue, by id. Removed explicitly (`remove`), never on drop:
/// outliving its processes is what a queue is for.
#[derive(Debug, Clone, Copy)]
pub struct Queue {
    pub id: libc::c_int,
}

pub fn key_of(path: &Path) -> Result<libc::key_t> {
    ftok(path, PROJECT).with_context(|| {
        format!(
            "ftok({}, 'Q'): --key must name an existing file both sides can see, \
             e.g. touch /tmp/demo.key",
            path.display()
        )
    })
}

impl Queue {
    /// `msgget(key, IPC_CREAT | IPC_EXCL | 0600)`, or the existing queue.
    pub fn open_or_create(path: &Path, say: &Narrator) -> Result<Queue> {
        let key = key_of(path)?;
        // SAFETY: msgget takes no pointers.
        let id = unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        if id >= 0 {
            say.step(format!(
                "msgget({key:#010x}, IPC_CREAT|IPC_EXCL|0600) = msqid {id}: a new queue"
            ));
            return Ok(Queue { id });
        }
        if Errno::last() != Errno::EEXIST {
            return Err(Errno::last()).context("msgget(IPC_CREAT|IPC_EXCL)");
        }
        let queue = Queue::open(path)?;
        say.step(format!(
            "msgget({key:#010x}, 0) = msqid {}: the existing queue",
            queue.id
        ));
        Ok(queue)
    }

    /// `msgget(key, 0)`: the existing queue, with a plain message if none.
    pub fn open(path: &Path) -> Result<Queue> {
        let key = key_of(path)?;
        // SAFETY: msgget takes no pointers.
        match Errno::result(unsafe { libc::msgget(key, 0) }) {
            Ok(id) => Ok(Queue { id }),
            Err(Errno::ENOENT) => bail!(
                "no System V queue for --key {}: a sender or receiver creates it",
                path.display()
            ),
            Err(Errno::EACCES) => {
                bail!("msgget: permission denied (EACCES): the queue belongs to another user")
            }
            Err(e) => Err(e).context("msgget(key, 0)"),
        }
    }

    /// `msgsnd`: append a message of type `mtype`. Blocks while the queue
    /// is full (more than `msg_qbytes` bytes), unless `nowait`.
    pub fn send(&self, mtype: i64, text: &[u8], nowait: bool) -> nix::Result<()> {
        // The kernel's layout: a `long` type, then the bytes.
        let mut buf = Vec::with_capacity(size_of::<libc::c_long>() + text.len());
        buf.extend_from_slice(&(mtype as libc::c_long).to_ne_bytes());
        buf.extend_from_slice(text);
        let flags = if nowait { libc::IPC_NOWAIT } else { 0 };
        // SAFETY: `buf` starts with a long followed by text.len() bytes,
        // and msgsz counts only the bytes after the long.
        let rc = unsafe { libc::msgsnd(self.id, buf.as_ptr().cast(), text.len(), flags) };
        Errno::result(rc).map(drop)
    }

    /// `msgrcv`: take a message chosen by `msgtyp` (see the module docs),
    /// at most `max` bytes. Returns its type and bytes.
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

    /// `msgctl(IPC_RMID)`: the queue and any messages in it are gone.
    pub fn remove(&self) -> nix::Result<()> {
        sysv_remove(SysvKind::MessageQueue, self.id)
    }
}

/// `msgsnd` with a clear message for the errors a user can cause.
fn send_checked(queue: &Queue, mtype: i64, text: &[u8]) -> Result<()> {
    loop {
        check_stop()?;
        match queue.send(mtype, text, false) {
            Ok(()) => return Ok(()),
            // The ticker's EINTR: we are blocked on a full queue. If its
            // last receiver has died, nobody will make room.
            Err(Errno::EINTR) => {
                let Ok(ds) = queue.stat() else { continue };
                let full = ds.__msg_cbytes + text.len() as u64 > ds.msg_qbytes;
                if full && ds.msg_lrpid > 0 && !alive(ds.msg_lrpid) {
                    return Err(ReceiverGone(ds.msg_lrpid).into());
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
/// queue's last sender or receiver pid: a queue does not tell a waiting
/// process that its peer died; the pids in `msgctl(IPC_STAT)` are all there is.
const TICK: Duration = Duration::from_millis(250);

pub fn sender(opts: &Options, path: &Path, say: &Narrator) -> Result<()> {
    if opts.size > msgmax() {
        bail!(
            "--size {} is larger than msgmax, {} bytes (/proc/sys/kernel/msgmax)",
            opts.size,
            msgmax()
        );
    }
    let queue = Queue::open_or_create(path, say)?;
    let _ticker = Ticker::start(TICK)?;
    let mtype = opts.mtype.unwrap_or(1);
    let start = Instant::now();
    let (mut count, mut bytes) = (0u64, 0u64);
    let sent = (|| -> Result<()> {
        if opts.texts.is_empty() {
            for seq in 0..opts.count {
                let message = payload_message(seq, opts.size);
                send_checked(&queue, mtype, &message)?;
                say.message(format!(
                    "msgsnd(type {mtype}): payload #{seq} ({} bytes)",
                    message.len()
                ));
                count += 1;
                bytes += message.len() as u64;
            }
        } else {
            for text in &opts.texts {
                send_checked(&queue, mtype, text.as_bytes())?;
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
    crate::summary("msgq-sysv", count, bytes, 0, start.elapsed(), say);
    Ok(())
}

pub fn receiver(opts: &Options, path: &Path, say: &Narrator) -> Result<()> {
    // A waiting receiver may create the queue for senders to come; one
    // that will not wait has nothing to do without an existing queue.
    let queue = if opts.nowait {
        Queue::open(path)?
    } else {
        Queue::open_or_create(path, say)?
    };
    // Removed on every way out (an error included) unless --keep: a
    // receiver that stops is done with the queue.
    let _remove = (!opts.keep).then(|| SysvGuard::new(SysvKind::MessageQueue, queue.id));
    let msgtyp = opts.mtype.unwrap_or(0);
    let flags = if opts.nowait { libc::IPC_NOWAIT } else { 0 };
    let mut tally = Tally::new();
    let start = Instant::now();
    say.step(format!(
        "msgrcv(msgtyp {msgtyp}{}): {}",
        if opts.nowait { ", IPC_NOWAIT" } else { "" },
        match msgtyp {
            0 => "the oldest message of any type".to_string(),
            t if t > 0 => format!("the oldest message of type {t}"),
            t => format!("the oldest message of the lowest type <= {}", -t),
        }
    ));
    let _ticker = Ticker::start(TICK)?;
    while !opts.count_given || tally.received() < opts.count {
        check_stop()?;
        match queue.receive(msgtyp, msgmax(), flags) {
            Ok((mtype, text)) => tally.account(&format!("type {mtype}"), &text, say),
            // The ticker's EINTR. A queue may rightly wait for senders to
            // come; but with --count we expect more, and if the queue is
            // empty and its last sender has died, nothing more will come
            // from it.
            Err(Errno::EINTR) => {
                let Ok(ds) = queue.stat() else { continue };
                if opts.count_given && ds.msg_qnum == 0 && ds.msg_lspid > 0 && !alive(ds.msg_lspid)
                {
                    bail!(
                        "the queue is empty and its last sender (pid {}) has exited: {} of {} \
                         messages arrived",
                        ds.msg_lspid,
                        tally.received(),
                        opts.count
                    );
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
        "msgq-sysv",
        opts.count_given.then_some(opts.count),
        elapsed,
        say,
    )
}

pub fn remove(path: &Path, say: &Narrator) -> Result<()> {
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
// Client and server over one queue
// ---------------------------------------------------------------------------

/// Requests go to the server as type 1; each reply goes back with the
/// client's pid as its type, so a client's msgrcv(type = own pid) gets
/// only its own replies, though all share one queue.
pub const REQUEST_TYPE: i64 = 1;

/// A request: "PID SEQ"; the reply: "PID SEQ answered".
pub fn client(opts: &Options, path: &Path, say: &Narrator) -> Result<()> {
    let queue = Queue::open(path)?;
    let me = i64::from(std::process::id());
    let start = Instant::now();
    for seq in 0..opts.count {
        send_checked(&queue, REQUEST_TYPE, format!("{me} {seq}").as_bytes())?;
        let (mtype, reply) = loop {
            check_stop()?;
            match queue.receive(me, 256, 0) {
                Ok(got) => break got,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).context("msgrcv(own pid)"),
            }
        };
        let want = format!("{me} {seq} answered");
        if mtype != me || reply != want.as_bytes() {
            bail!(
                "reply {seq}: type {mtype}, {:?}; expected type {me}, {want:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        say.message(format!("request {seq} → reply of type {mtype}: {want:?}"));
    }
    say.step(format!(
        "{} requests, every reply my own, in {:.3} s",
        opts.count,
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Serve `total` requests: read type 1, answer with the client's pid as type.
pub fn serve(queue: &Queue, total: u64, say: &Narrator, deadline: Duration) -> Result<u64> {
    let start = Instant::now();
    let mut served = 0;
    while served < total {
        check_stop()?;
        if start.elapsed() > deadline {
            bail!("served {served} of {total} requests in {deadline:?}: a client is missing");
        }
        let (_, request) = match queue.receive(REQUEST_TYPE, 256, libc::IPC_NOWAIT) {
            Ok(got) => got,
            Err(Errno::ENOMSG) => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("msgrcv(type 1)"),
        };
        let text = String::from_utf8_lossy(&request).into_owned();
        let client: i64 = text
            .split(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .filter(|p| *p > 0)
            .context(
                // A malformed request cannot be answered: there is no type to send it to.
                "a request without a valid client pid",
            )?;
        send_checked(queue, client, format!("{text} answered").as_bytes())?;
        say.message(format!("request {text:?} → reply of type {client}"));
        served += 1;
    }
    Ok(served)
}
