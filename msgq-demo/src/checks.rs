//! What is not the mechanism: the demo's checkable messages, how a receiver
//! reports what it got, the closing figures, and the defences (is this
//! queue ours? which limit did mq_open hit?) that `ipc_sysv.rs` and
//! `ipc_posix.rs` call in one line each. A first reading may skip this file.

use std::time::Duration;

use anyhow::{Result, bail};
use common::payload::{self, Checker, Verdict};
use common::report::{Narrator, Summary};
use nix::errno::Errno;
use nix::mqueue::MqAttr;

use crate::Options;

// ---------------------------------------------------------------------------
// Messages and what a receiver saw
// ---------------------------------------------------------------------------

/// The first bytes of a demo sender's checkable message; not valid UTF-8,
/// so a text from another program is never mistaken for one.
pub const PAYLOAD_TAG: &[u8; 4] = b"\xffPL1";

/// A checkable message: the tag, then `payload::make(seq, size - 4)`.
pub fn payload_message(seq: u64, size: usize) -> Vec<u8> {
    let mut message = PAYLOAD_TAG.to_vec();
    message.extend_from_slice(&payload::make(seq, size - PAYLOAD_TAG.len()));
    message
}

/// Bytes as a reader should see them: text as text, the rest escaped.
pub fn show(bytes: &[u8]) -> String {
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

    /// The receiver's closing lines; an error if a message failed its
    /// check or fewer than `expected` arrived.
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

/// What a role or a story step moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub messages: u64,
    pub bytes: u64,
}

impl Moved {
    pub fn add(&mut self, other: Moved) {
        self.messages += other.messages;
        self.bytes += other.bytes;
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
    if opts.no_summary {
        say.step(format!(
            "moved {messages} message(s), {bytes} bytes, {errors} error(s) in {:.3} s",
            elapsed.as_secs_f64()
        ));
    } else {
        say.line(Summary {
            mechanism,
            messages,
            bytes,
            errors,
            elapsed,
        });
    }
}

pub fn read_proc_number(path: &str) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------------------
// Is it ours? (an object the demo did not just create is someone else's
// until proven otherwise, even for root, who may read and remove any queue)
// ---------------------------------------------------------------------------

/// The name of user `uid`, for messages about whose an object is.
pub fn owner_name(uid: libc::uid_t) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// A System V queue (its `msgctl(IPC_STAT)`) is ours if its owner and
/// creator are our effective uid and its mode is the 0600 this demo gives
/// its queues. Otherwise: leave it alone, and say whose it is.
pub fn sysv_queue_is_ours(id: libc::c_int, ds: &libc::msqid_ds, what: &str) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let perm = ds.msg_perm;
    if perm.uid != me || perm.cuid != me {
        let creator = if perm.cuid == perm.uid {
            String::new()
        } else {
            format!(", created by {}", owner_name(perm.cuid))
        };
        bail!(
            "msqid {id} {what} belongs to {}{creator}, not to you, {}: leaving it alone",
            owner_name(perm.uid),
            owner_name(me)
        );
    }
    let mode = perm.mode & 0o777;
    if mode != 0o600 {
        bail!(
            "msqid {id} {what} has mode {mode:04o}, not the 0600 this demo gives its queues: \
             not one of ours, leaving it alone"
        );
    }
    Ok(())
}

/// A reply queue named in a request (from another process: a forged one
/// could name any queue, someone else's if we are root) must be private
/// (key IPC_PRIVATE), ours, and 0600.
pub fn is_private_queue_of_ours(id: libc::c_int, ds: &libc::msqid_ds) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    let perm = ds.msg_perm;
    if perm.__key != libc::IPC_PRIVATE || perm.uid != me || perm.cuid != me {
        return Err(format!(
            "msqid {id} is not a private queue of yours (key {:#x}, owner {})",
            perm.__key,
            owner_name(perm.uid)
        ));
    }
    if perm.mode & 0o777 != 0o600 {
        return Err(format!("msqid {id} has mode {:04o}", perm.mode & 0o777));
    }
    Ok(())
}

/// A POSIX queue (the `fstat` of its mqd: on Linux an mqd is a file
/// descriptor) is ours if it has our effective uid and mode 0600.
pub fn posix_queue_is_ours(name: &str, st: &libc::stat) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != me {
        bail!(
            "POSIX queue {name} belongs to {}, not to you, {}: leaving it alone",
            owner_name(st.st_uid),
            owner_name(me)
        );
    }
    let mode = st.st_mode & 0o777;
    if mode != 0o600 {
        bail!(
            "POSIX queue {name} has mode {mode:04o}, not the 0600 this demo gives its queues: \
             not one of ours, leaving it alone"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Which limit? (errors that name the knob to turn)
// ---------------------------------------------------------------------------

/// The kernel's limits for POSIX queues an unprivileged process creates.
#[derive(Debug)]
pub struct MqLimits {
    pub msg_max: usize,
    pub msgsize_max: usize,
    pub queues_max: usize,
}

pub fn mq_limits() -> MqLimits {
    let read = |knob: &str, default| {
        read_proc_number(&format!("/proc/sys/fs/mqueue/{knob}")).unwrap_or(default)
    };
    MqLimits {
        msg_max: read("msg_max", 10),
        msgsize_max: read("msgsize_max", 8192),
        queues_max: read("queues_max", 256),
    }
}

/// `mq_open`'s error, with the limit or the fix it points to.
pub fn mq_open_error(name: &str, e: Errno, attr: &MqAttr) -> anyhow::Error {
    let l = mq_limits();
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
        // EMFILE has two causes: the bytes of all this user's queues would
        // pass RLIMIT_MSGQUEUE (the usual one: the default is 819200), or
        // this process has RLIMIT_NOFILE descriptors open (an mqd is one).
        Errno::EMFILE => {
            let (soft, hard) = rlimit(libc::RLIMIT_MSGQUEUE);
            // The kernel charges maxmsg * msgsize plus its bookkeeping
            // (about 100 bytes a message).
            let need = attr.maxmsg() as u64 * (attr.msgsize() as u64 + 100);
            anyhow::anyhow!(
                "mq_open({name}): EMFILE: the limit RLIMIT_MSGQUEUE, {} for all your queues \
                 together, has no room for this one (maxmsg {} x msgsize {}, about {need} \
                 bytes with the kernel's bookkeeping); see it with 'ulimit -q' or 'prlimit \
                 --msgqueue', raise it with 'ulimit -q BYTES' (up to the hard limit, {}), or \
                 ask for less with --maxmsg/--msgsize. (EMFILE also means RLIMIT_NOFILE open \
                 descriptors, 'ulimit -n', if that is reached.)",
                show_limit(soft),
                attr.maxmsg(),
                attr.msgsize(),
                show_limit(hard)
            )
        }
        Errno::ENOSPC => anyhow::anyhow!(
            "mq_open({name}): ENOSPC: the system already has its most queues, \
             /proc/sys/fs/mqueue/queues_max = {} (root may raise it)",
            l.queues_max
        ),
        e => anyhow::Error::new(e).context(format!("mq_open({name})")),
    }
}

/// A resource limit's (soft, hard) values.
fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the rlimit we point to.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return (0, 0);
    }
    (limit.rlim_cur, limit.rlim_max)
}

fn show_limit(bytes: u64) -> String {
    if bytes == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::cli::Args;
    use common::report::Stream;

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
        let opts = crate::parse(&mut args, None, None).unwrap();
        assert!(
            tally
                .finish(&opts, "msgq", Some(3), Duration::ZERO, &say)
                .is_err()
        );
        assert_eq!(show(b"plain"), "\"plain\"");
        assert_eq!(show(b"a\x01b"), "b\"a\\x01b\"");
    }
}
