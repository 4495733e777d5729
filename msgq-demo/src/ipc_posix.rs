//! The POSIX mechanism: `mq_open`, `mq_timedsend`, `mq_receive`,
//! `mq_timedreceive`, `mq_getattr`/`mq_setattr`, `mq_notify`, `mq_close`,
//! `mq_unlink`; a sender and a receiver.
//!
//! A queue has a name (`/NAME`, visible as a file under `/dev/mqueue` when
//! that is mounted), a fixed capacity set at creation (`mq_maxmsg` messages
//! of at most `mq_msgsize` bytes, bounded by `/proc/sys/fs/mqueue`), and a
//! priority per message: `mq_receive` returns the highest priority first,
//! oldest first within a priority. There are no types to select by, and a
//! receive buffer must hold `mq_msgsize` bytes whatever the message's size.
//! On Linux an mqd is a file descriptor: `mq_close` on drop; the queue
//! itself stays until `mq_unlink` (here, or by an `MqGuard`'s drop).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{MqGuard, check_stop};
use common::report::Narrator;
use nix::errno::Errno;
use nix::mqueue::{MQ_OFlag, MqAttr, MqdT, mq_getattr, mq_open, mq_receive, mq_unlink};
use nix::sys::signal::{SigEvent, SigevNotify, Signal};
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime};

use crate::Options;
use crate::checks::{Tally, figures, mq_open_error, payload_message, posix_queue_is_ours};

/// An open queue descriptor; `mq_close` on drop. The queue itself stays
/// until `mq_unlink`.
pub struct Queue {
    mqd: MqdT,
    pub name: String,
}

impl Drop for Queue {
    fn drop(&mut self) {
        // mq_close: our descriptor goes, and with it a notification we
        // registered; the queue and its messages stay.
        // SAFETY: the descriptor came from mq_open and is closed once, here.
        unsafe { libc::mq_close(self.mqd.as_raw_fd()) };
    }
}

/// The C library's `struct sigevent` (glibc's and musl's layout) with its
/// SIGEV_THREAD member, which the libc crate leaves out: the notify
/// function and its thread attributes sit where `sigev_notify_thread_id`
/// is; 64 bytes in all.
#[repr(C)]
struct SigeventThread {
    sigev_value: libc::sigval,
    sigev_signo: libc::c_int,
    sigev_notify: libc::c_int,
    function: extern "C" fn(libc::sigval),
    attributes: *mut libc::pthread_attr_t,
    _pad: [u8; SIGEV_THREAD_PAD],
}

const SIGEV_THREAD_PAD: usize = 64 - 3 * size_of::<usize>() - 2 * size_of::<libc::c_int>();
const _: () = assert!(size_of::<SigeventThread>() == size_of::<libc::sigevent>());

impl Queue {
    // ANCHOR: mq_open
    /// Create `name` read-write (0600, with `maxmsg`/`msgsize`); `None` if
    /// a queue of that name exists (EEXIST).
    pub fn create_new(
        name: &str,
        maxmsg: usize,
        msgsize: usize,
        say: &Narrator,
    ) -> Result<Option<Queue>> {
        let attr = MqAttr::new(0, maxmsg as _, msgsize as _, 0);
        let mode = Mode::S_IRUSR | Mode::S_IWUSR;
        // O_EXCL: we never take a queue somebody else prepared for a new one.
        let create = MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDWR;
        match mq_open(name, create, mode, Some(&attr)) {
            Ok(mqd) => {
                let queue = Queue {
                    mqd,
                    name: name.to_string(),
                };
                // mq_open's mode passes through the umask (0277 would give
                // 0400, a queue even we could not write): set it outright.
                // The queue is new, made with O_EXCL: ours to change.
                if let Err(e) = nix::sys::stat::fchmod(&queue.mqd, mode) {
                    let _ = mq_unlink(name); // not left half made
                    return Err(e).with_context(|| format!("fchmod(mqd of {name}, 0600)"));
                }
                say.step(format!(
                    "mq_open({name}, O_CREAT|O_EXCL|O_RDWR, 0600, maxmsg {maxmsg}, msgsize {msgsize}): a new queue"
                ));
                Ok(Some(queue))
            }
            Err(Errno::EEXIST) => Ok(None),
            Err(e) => Err(mq_open_error(name, e, &attr)),
        }
    }
    // ANCHOR_END: mq_open

    /// A new queue, or an error if `name` exists (the story's queues).
    pub fn create(name: &str, maxmsg: usize, msgsize: usize, say: &Narrator) -> Result<Queue> {
        Queue::create_new(name, maxmsg, msgsize, say)?.with_context(|| {
            format!("mq_open({name}, O_CREAT|O_EXCL): the queue exists: not ours, left alone")
        })
    }

    /// Open `name` read-write, creating it (0600, with `maxmsg`/`msgsize`)
    /// if it does not exist; an existing one must be ours ([`Queue::open`]).
    pub fn open_or_create(
        name: &str,
        maxmsg: usize,
        msgsize: usize,
        say: &Narrator,
    ) -> Result<Queue> {
        match Queue::create_new(name, maxmsg, msgsize, say)? {
            Some(queue) => Ok(queue),
            None => {
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
        }
    }

    /// Open an existing queue read-write, and refuse it unless it is ours.
    pub fn open(name: &str) -> Result<Queue> {
        let attr = MqAttr::new(0, 0, 0, 0);
        let mqd = mq_open(name, MQ_OFlag::O_RDWR, Mode::empty(), None)
            .map_err(|e| mq_open_error(name, e, &attr))?;
        let queue = Queue {
            mqd,
            name: name.to_string(),
        };
        queue.check_ours()?;
        Ok(queue)
    }

    /// Defence (a first reading may skip it): a queue this demo did not
    /// just create must be ours (`checks::posix_queue_is_ours`), also for
    /// root, whom mq_open never refuses. The mqd is a file descriptor, so
    /// fstat gives the queue's owner and mode.
    fn check_ours(&self) -> Result<()> {
        let st = nix::sys::stat::fstat(&self.mqd)
            .with_context(|| format!("fstat(mqd of {})", self.name))?;
        posix_queue_is_ours(&self.name, &st)
    }

    /// `mq_getattr`: maxmsg, msgsize, and how many messages wait now.
    pub fn attr(&self) -> Result<MqAttr> {
        mq_getattr(&self.mqd).context("mq_getattr")
    }

    // ANCHOR: mq_send
    /// `mq_timedsend` with a clear message for a message over
    /// `mq_msgsize`; gives up if the queue stays full for `timeout`.
    pub fn send(&self, message: &[u8], priority: u32, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            check_stop()?;
            let left = timeout.saturating_sub(start.elapsed());
            // An absolute CLOCK_REALTIME deadline, as mq_timedsend wants.
            let deadline = clock_gettime(ClockId::CLOCK_REALTIME).context("clock_gettime")?
                + TimeSpec::from_duration(left);
            // SAFETY: the descriptor is open; `message` is valid for its
            // length; `deadline` is a valid timespec. (nix has no mq_timedsend.)
            let rc = unsafe {
                libc::mq_timedsend(
                    self.mqd.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    priority,
                    deadline.as_ref(),
                )
            };
            match Errno::result(rc) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                // A POSIX queue names no receiver: all a sender can tell
                // is that nobody took a message for that long.
                Err(Errno::ETIMEDOUT) => bail!(
                    "mq_timedsend({}): the queue has been full for {} s (--timeout): no \
                     receiver is taking messages",
                    self.name,
                    timeout.as_secs()
                ),
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
    // ANCHOR_END: mq_send

    // ANCHOR: mq_receive
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
    // ANCHOR_END: mq_receive

    /// `mq_receive` into `buf` as it is: a buffer smaller than the queue's
    /// msgsize is refused (EMSGSIZE), however short the waiting message,
    /// and the message stays. Returns its length and priority.
    pub fn receive_into(&self, buf: &mut [u8]) -> nix::Result<(usize, u32)> {
        let mut priority = 0;
        let n = mq_receive(&self.mqd, buf, &mut priority)?;
        Ok((n, priority))
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

    /// `mq_setattr(O_NONBLOCK)` on or off: the only attribute mq_setattr
    /// changes (maxmsg and msgsize are fixed at creation). Non-blocking, an
    /// empty queue's mq_receive returns EAGAIN instead of waiting.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        if on {
            nix::mqueue::mq_set_nonblock(&self.mqd).context("mq_setattr(O_NONBLOCK)")?;
        } else {
            nix::mqueue::mq_remove_nonblock(&self.mqd).context("mq_setattr(0)")?;
        }
        Ok(())
    }

    /// `mq_notify(SIGEV_THREAD)`: when a message arrives in the empty
    /// queue, the C library runs `function` in a new thread of this process
    /// (glibc: the kernel tells a helper thread over a netlink socket).
    /// The same rules as [`Queue::notify_by_signal`]: one registration,
    /// used up by the notification it causes.
    pub fn notify_by_thread(&self, function: extern "C" fn(libc::sigval)) -> Result<()> {
        let event = SigeventThread {
            sigev_value: libc::sigval {
                sival_ptr: std::ptr::null_mut(),
            },
            sigev_signo: 0,
            sigev_notify: libc::SIGEV_THREAD,
            function,
            attributes: std::ptr::null_mut(),
            _pad: [0; SIGEV_THREAD_PAD],
        };
        // SAFETY: the descriptor is open; `event` has the C library's
        // struct sigevent layout (sizes checked below), valid for the call;
        // `function` is a plain extern "C" fn that lives for ever.
        let rc = unsafe {
            libc::mq_notify(
                self.mqd.as_raw_fd(),
                (&raw const event).cast::<libc::sigevent>(),
            )
        };
        Errno::result(rc)
            .map(drop)
            .with_context(|| format!("mq_notify({}, SIGEV_THREAD)", self.name))
    }

    /// `mq_notify(NULL)`: give up our registration (someone else may then
    /// register).
    pub fn notify_cancel(&self) -> Result<()> {
        // SAFETY: the descriptor is open; NULL means "unregister".
        Errno::result(unsafe { libc::mq_notify(self.mqd.as_raw_fd(), std::ptr::null()) })
            .map(drop)
            .with_context(|| format!("mq_notify({}, NULL)", self.name))
    }

    /// `mq_notify(SIGEV_SIGNAL)`: send `signal` to this process when a
    /// message arrives in the queue while it is empty. One process at a
    /// time may register (EBUSY for a second); the registration is used up
    /// by the notification it causes, and is not made at all when a
    /// receiver is already blocked in mq_receive (that receiver gets the
    /// message instead).
    pub fn notify_by_signal(&self, signal: Signal) -> Result<()> {
        let event = SigEvent::new(SigevNotify::SigevSignal {
            signal,
            si_value: 0,
        });
        // SAFETY: the descriptor is open; the sigevent is valid for the call.
        // (nix has no mq_notify.)
        Errno::result(unsafe { libc::mq_notify(self.mqd.as_raw_fd(), &event.sigevent()) })
            .map(drop)
            .with_context(|| format!("mq_notify({}, SIGEV_SIGNAL, {signal})", self.name))
    }
}

pub fn sender(opts: &Options, name: &str, say: &Narrator) -> Result<()> {
    // An existing queue must be ours before we write to it.
    let queue = Queue::open_or_create(name, opts.maxmsg, opts.msgsize, say)?;
    let priority = opts.priority;
    let start = Instant::now();
    let (mut count, mut bytes) = (0u64, 0u64);
    if opts.texts.is_empty() {
        for seq in 0..opts.count {
            let message = payload_message(seq, opts.size);
            queue.send(&message, priority, opts.timeout)?;
            say.message(format!(
                "mq_send(priority {priority}): payload #{seq} ({} bytes)",
                message.len()
            ));
            count += 1;
            bytes += message.len() as u64;
        }
    } else {
        for text in &opts.texts {
            queue.send(text.as_bytes(), priority, opts.timeout)?;
            say.message(format!("mq_send(priority {priority}): {text:?}"));
            count += 1;
            bytes += text.len() as u64;
        }
    }
    say.step(format!(
        "sent {count} message(s) at priority {priority}; {} waiting",
        queue.attr()?.curmsgs()
    ));
    figures(opts, "msgq-posix", count, bytes, 0, start.elapsed(), say);
    Ok(())
}

pub fn receiver(opts: &Options, name: &str, say: &Narrator) -> Result<()> {
    // An existing queue must be ours before we read or unlink it.
    let queue = Queue::open_or_create(name, opts.maxmsg, opts.msgsize, say)?;
    // The guard's drop is mq_unlink, on every way out (an error included)
    // unless --keep.
    let _unlink = (!opts.keep).then(|| MqGuard::new(name));
    let mut tally = Tally::new();
    let start = Instant::now();
    // A POSIX queue names no sender, so a receiver cannot tell that its
    // senders died: silence for --timeout is all it can go by.
    say.step(format!(
        "mq_timedreceive: highest priority first; waiting for messages, giving up after {} s \
         of silence (Ctrl-C to stop)",
        opts.timeout.as_secs()
    ));
    while !opts.count_given || tally.received() < opts.count {
        match queue.receive_within(opts.timeout)? {
            Some((priority, text)) => tally.account(&format!("priority {priority}"), &text, say),
            None => {
                say.step(format!(
                    "mq_timedreceive → ETIMEDOUT: no message for {} s (--timeout)",
                    opts.timeout.as_secs()
                ));
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
        opts,
        "msgq-posix",
        opts.count_given.then_some(opts.count),
        elapsed,
        say,
    )
}

pub fn remove(name: &str, say: &Narrator) -> Result<()> {
    // Root may unlink any queue: check it is ours first. (Another process
    // could swap the name between the check and mq_unlink; only a process
    // of ours, or root, can.)
    drop(Queue::open(name)?);
    match mq_unlink(name) {
        Ok(()) => {
            say.step(format!("mq_unlink({name}): removed"));
            Ok(())
        }
        Err(Errno::ENOENT) => bail!("no POSIX queue named {name}: nothing to remove"),
        Err(e) => Err(e).with_context(|| format!("mq_unlink({name})")),
    }
}
