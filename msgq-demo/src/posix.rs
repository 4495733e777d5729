//! POSIX message queues: `mq_open`, `mq_send`, `mq_receive`,
//! `mq_timedreceive`, `mq_getattr`, `mq_notify`, `mq_unlink`.
//!
//! A queue has a name (`/NAME`, visible under `/dev/mqueue` when that is
//! mounted), a fixed capacity set at creation (`mq_maxmsg` messages of at
//! most `mq_msgsize` bytes, bounded by `/proc/sys/fs/mqueue`), and a
//! priority per message: `mq_receive` returns the highest priority first,
//! oldest first within a priority. There are no types to select by.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::check_stop;
use common::report::Narrator;
use nix::errno::Errno;
use nix::mqueue::{MQ_OFlag, MqAttr, MqdT, mq_getattr, mq_open, mq_receive, mq_send, mq_unlink};
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime};

use crate::{Options, Tally, payload_message, read_proc_number};

/// The kernel's limits for queues an unprivileged process creates.
#[derive(Debug)]
pub struct Limits {
    pub msg_max: usize,
    pub msgsize_max: usize,
    pub queues_max: usize,
}

pub fn limits() -> Limits {
    let read = |knob: &str, default| {
        read_proc_number(&format!("/proc/sys/fs/mqueue/{knob}")).unwrap_or(default)
    };
    Limits {
        msg_max: read("msg_max", 10),
        msgsize_max: read("msgsize_max", 8192),
        queues_max: read("queues_max", 256),
    }
}

/// An open queue descriptor; `mq_close` on drop. The queue itself stays
/// until `mq_unlink`.
pub struct Queue {
    mqd: MqdT,
    pub name: String,
}

impl Drop for Queue {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor came from mq_open and is closed once, here.
        unsafe { libc::mq_close(self.mqd.as_raw_fd()) };
    }
}

fn open_error(name: &str, e: Errno, attr: &MqAttr) -> anyhow::Error {
    let l = limits();
    match e {
        Errno::EINVAL if attr.maxmsg() as usize > l.msg_max => anyhow::anyhow!(
            "mq_open({name}): --maxmsg {} is more than this system allows, {} \
             (/proc/sys/fs/mqueue/msg_max)",
            attr.maxmsg(),
            l.msg_max
        ),
        Errno::EINVAL if attr.msgsize() as usize > l.msgsize_max => anyhow::anyhow!(
            "mq_open({name}): --msgsize {} is more than this system allows, {} \
             (/proc/sys/fs/mqueue/msgsize_max)",
            attr.msgsize(),
            l.msgsize_max
        ),
        Errno::EACCES => anyhow::anyhow!(
            "mq_open({name}): permission denied (EACCES): the queue belongs to another user"
        ),
        Errno::ENOENT => {
            anyhow::anyhow!("no POSIX queue named {name}: a sender or receiver creates it")
        }
        Errno::EMFILE | Errno::ENOSPC => anyhow::anyhow!(
            "mq_open({name}): {e}: too many queues (/proc/sys/fs/mqueue/queues_max is {})",
            l.queues_max
        ),
        e => anyhow::Error::new(e).context(format!("mq_open({name})")),
    }
}

impl Queue {
    /// Open `name` read-write, creating it (0600, with `maxmsg`/`msgsize`)
    /// if it does not exist.
    pub fn open_or_create(
        name: &str,
        maxmsg: usize,
        msgsize: usize,
        say: &Narrator,
    ) -> Result<Queue> {
        let attr = MqAttr::new(0, maxmsg as _, msgsize as _, 0);
        let mode = Mode::S_IRUSR | Mode::S_IWUSR;
        let create = MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDWR;
        match mq_open(name, create, mode, Some(&attr)) {
            Ok(mqd) => {
                say.step(format!(
                    "mq_open({name}, O_CREAT|O_EXCL|O_RDWR, 0600, maxmsg {maxmsg}, msgsize {msgsize}): a new queue"
                ));
                Ok(Queue {
                    mqd,
                    name: name.to_string(),
                })
            }
            Err(Errno::EEXIST) => {
                let queue = Queue::open(name)?;
                let attr = queue.attr()?;
                say.step(format!(
                    "mq_open({name}, O_RDWR): the existing queue (maxmsg {}, msgsize {}, {} waiting)",
                    attr.maxmsg(),
                    attr.msgsize(),
                    attr.curmsgs()
                ));
                Ok(queue)
            }
            Err(e) => Err(open_error(name, e, &attr)),
        }
    }

    /// Open an existing queue read-write.
    pub fn open(name: &str) -> Result<Queue> {
        let attr = MqAttr::new(0, 0, 0, 0);
        let mqd = mq_open(name, MQ_OFlag::O_RDWR, Mode::empty(), None)
            .map_err(|e| open_error(name, e, &attr))?;
        Ok(Queue {
            mqd,
            name: name.to_string(),
        })
    }

    pub fn attr(&self) -> Result<MqAttr> {
        mq_getattr(&self.mqd).context("mq_getattr")
    }

    pub fn mqd(&self) -> &MqdT {
        &self.mqd
    }

    /// `mq_send` with a clear message for a message over `mq_msgsize`.
    pub fn send(&self, message: &[u8], priority: u32) -> Result<()> {
        loop {
            check_stop()?;
            match mq_send(&self.mqd, message, priority) {
                Ok(()) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(Errno::EMSGSIZE) => bail!(
                    "mq_send({}): a {}-byte message is larger than the queue's msgsize, {} bytes \
                     (set at creation with --msgsize; at most /proc/sys/fs/mqueue/msgsize_max)",
                    self.name,
                    message.len(),
                    self.attr().map(|a| a.msgsize()).unwrap_or(0)
                ),
                Err(e) => return Err(e).with_context(|| format!("mq_send({})", self.name)),
            }
        }
    }

    /// `mq_receive` into a buffer of the queue's msgsize (a smaller buffer
    /// is refused with EMSGSIZE). `None` on EAGAIN (non-blocking, empty).
    pub fn receive(&self) -> Result<Option<(u32, Vec<u8>)>> {
        let size = self.attr()?.msgsize() as usize;
        let mut buf = vec![0u8; size];
        let mut priority = 0;
        loop {
            check_stop()?;
            match mq_receive(&self.mqd, &mut buf, &mut priority) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some((priority, buf)));
                }
                Err(Errno::EAGAIN) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).with_context(|| format!("mq_receive({})", self.name)),
            }
        }
    }

    /// `mq_timedreceive`: `None` when nothing arrived within `timeout`.
    /// Waits in short slices so that Ctrl-C is noticed between them.
    pub fn receive_within(&self, timeout: Duration) -> Result<Option<(u32, Vec<u8>)>> {
        let size = self.attr()?.msgsize() as usize;
        let mut buf = vec![0u8; size];
        let mut priority = 0;
        let start = Instant::now();
        loop {
            check_stop()?;
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            // An absolute CLOCK_REALTIME deadline, as mq_timedreceive wants.
            let now = clock_gettime(ClockId::CLOCK_REALTIME).context("clock_gettime")?;
            let deadline = now + TimeSpec::from_duration(left);
            match nix::mqueue::mq_timedreceive(&self.mqd, &mut buf, &mut priority, &deadline) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some((priority, buf)));
                }
                Err(Errno::ETIMEDOUT) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).with_context(|| format!("mq_timedreceive({})", self.name)),
            }
        }
    }
}

pub fn sender(opts: &Options, name: &str, say: &Narrator) -> Result<()> {
    let queue = Queue::open_or_create(name, opts.maxmsg, opts.msgsize, say)?;
    let priority = opts.priority;
    let start = Instant::now();
    let (mut count, mut bytes) = (0u64, 0u64);
    if opts.texts.is_empty() {
        for seq in 0..opts.count {
            let message = payload_message(seq, opts.size);
            queue.send(&message, priority)?;
            say.message(format!(
                "mq_send(priority {priority}): payload #{seq} ({} bytes)",
                message.len()
            ));
            count += 1;
            bytes += message.len() as u64;
        }
    } else {
        for text in &opts.texts {
            queue.send(text.as_bytes(), priority)?;
            say.message(format!("mq_send(priority {priority}): {text:?}"));
            count += 1;
            bytes += text.len() as u64;
        }
    }
    say.step(format!(
        "sent {count} message(s) at priority {priority}; {} waiting",
        queue.attr()?.curmsgs()
    ));
    crate::summary("msgq-posix", count, bytes, 0, start.elapsed(), say);
    Ok(())
}

pub fn receiver(opts: &Options, name: &str, say: &Narrator) -> Result<()> {
    let queue = Queue::open_or_create(name, opts.maxmsg, opts.msgsize, say)?;
    // Unlinked on every way out (an error included) unless --keep.
    let _unlink = (!opts.keep).then(|| common::cleanup::MqGuard::new(name));
    let mut tally = Tally::new();
    let start = Instant::now();
    match opts.timeout {
        Some(t) => say.step(format!(
            "mq_timedreceive: highest priority first, giving up after {} s of silence",
            t.as_secs()
        )),
        None => {
            say.step("mq_receive: highest priority first; waiting for messages (Ctrl-C to stop)")
        }
    }
    while !opts.count_given || tally.received() < opts.count {
        let got = match opts.timeout {
            Some(t) => queue.receive_within(t)?,
            None => queue.receive()?,
        };
        match got {
            Some((priority, text)) => tally.account(&format!("priority {priority}"), &text, say),
            None => {
                say.step("mq_timedreceive → ETIMEDOUT: no message within the timeout");
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    if opts.keep {
        say.step(format!(
            "--keep: leaving {name} in place, {} message(s) in it",
            queue.attr()?.curmsgs()
        ));
    } else {
        say.step(format!("mq_close, mq_unlink({name}): the queue is gone"));
    }
    tally.finish(
        "msgq-posix",
        opts.count_given.then_some(opts.count),
        elapsed,
        say,
    )
}

pub fn remove(name: &str, say: &Narrator) -> Result<()> {
    match mq_unlink(name) {
        Ok(()) => {
            say.step(format!("mq_unlink({name}): removed"));
            Ok(())
        }
        Err(Errno::ENOENT) => bail!("no POSIX queue named {name}: nothing to remove"),
        Err(e) => Err(e).with_context(|| format!("mq_unlink({name})")),
    }
}
