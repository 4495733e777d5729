//! The one-terminal story: every step's heading is printed from
//! [`story`], in order; each step is a function that narrates and checks
//! its own claim (a claim the kernel does not bear out stops the story with
//! an error). `msgq-demo` runs every step; `msgq-demo sysv` the System V
//! steps, `msgq-demo posix` the POSIX steps, numbered in the order they run.

use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{MqGuard, PrivateDir, SysvGuard, SysvKind, unique_name};
use common::peer::Peer;
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;

use crate::checks::{Moved, mq_limits, read_proc_number, show};
use crate::{DEFAULT_TIMEOUT, Options, Variant, ipc_posix, ipc_sysv};

/// How long a role the story runs may take.
const ROLE_LIMIT: Duration = Duration::from_secs(120);

/// The story's steps, in order, for `variant`.
pub fn story(opts: &Options, variant: Variant) -> Result<()> {
    let say = Narrator::new("parent", opts.quiet, Stream::Stdout);
    let start = Instant::now();
    let (what, mechanism) = match variant {
        Variant::Both => ("System V and POSIX message queues", "msgq"),
        Variant::Sysv => ("System V message queues", "msgq-sysv"),
        Variant::Posix => ("POSIX message queues", "msgq-posix"),
    };
    say.line(format!(
        "msgq-demo: {what} (parent pid {})",
        std::process::id()
    ));
    let (sysv, posix) = (variant != Variant::Posix, variant != Variant::Sysv);
    let dir = PrivateDir::create("msgq-demo")?;
    let mut step = Steps { n: 0, say: &say };
    let mut moved = Moved::default();
    if sysv {
        let n = step.heading("System V: messages wait in the kernel, and msgrcv chooses by type");
        moved.add(sysv_by_type(&dir, n, &say)?);
    }
    if posix {
        let n = step.heading("POSIX: the highest priority first, and a notification");
        moved.add(posix_by_priority(n, &say)?);
    }
    if sysv {
        let n = step.heading(&format!(
            "{} clients and a server: requests on one queue, replies in a private queue per client",
            opts.clients
        ));
        moved.add(client_server(&dir, opts, n, &say)?);
        step.heading("System V: MSG_EXCEPT takes the oldest message NOT of a type");
        moved.add(msg_except(&dir, &say)?);
        step.heading("System V: msg_qbytes, raised with IPC_SET up to /proc/sys/kernel/msgmnb");
        moved.add(qbytes(&dir, &say)?);
    }
    if posix {
        step.heading("POSIX: mq_notify by thread, once: a second message is missed until re-armed");
        moved.add(notify_by_thread(&say)?);
        step.heading("POSIX: what /dev/mqueue/NAME shows while a queue exists");
        moved.add(dev_mqueue(&say)?);
        step.heading("POSIX: a receive buffer smaller than mq_msgsize → EMSGSIZE");
        moved.add(small_buffer(&say)?);
    }
    say.line("");
    say.line(Summary {
        mechanism,
        messages: moved.messages,
        bytes: moved.bytes,
        errors: 0,
        elapsed: start.elapsed(),
    });
    Ok(())
}

/// Numbers the headings in the order they are printed.
struct Steps<'a> {
    n: u32,
    say: &'a Narrator,
}

impl Steps<'_> {
    fn heading(&mut self, title: &str) -> u32 {
        self.n += 1;
        self.say.line(format!("\n== {}. {title} ==", self.n));
        self.n
    }
}

/// Run this program with `args` and wait for it; its output is part of
/// ours. Roles get `--no-summary`: their figures are narration, and the
/// story's own summary is the run's only one. (After Ctrl-C, `Peer`'s drop
/// gives the child 2 s to finish its own cleanup before it sends SIGTERM.)
fn run_role(args: &[String], say: &Narrator) -> Result<()> {
    let mut args = args.to_vec();
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.insert(at, "--no-summary".into());
    let mut peer = Peer::spawn_self(&args)?;
    let exit = peer.wait(Some(ROLE_LIMIT))?;
    if !exit.success() {
        bail!("'msgq-demo {}' (pid {}) {exit}", args.join(" "), peer.pid());
    }
    say.message(format!("pid {} {exit}", peer.pid()));
    Ok(())
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Texts sent and then received: each counts twice.
fn sent_and_received(texts: &[&str]) -> Moved {
    Moved {
        messages: 2 * texts.len() as u64,
        bytes: 2 * texts.iter().map(|t| t.len() as u64).sum::<u64>(),
    }
}

/// A queue for the story: new, or the story stops. `ftok` keys can
/// collide; a queue already there for our key file is not ours to use.
fn new_story_queue(key_path: &Path, say: &Narrator) -> Result<ipc_sysv::Queue> {
    ipc_sysv::Queue::create(key_path, say)?.with_context(|| {
        format!(
            "msgget(IPC_CREAT|IPC_EXCL): a queue already has the key of {} (ftok keys can \
             collide): not ours, left alone; run again",
            key_path.display()
        )
    })
}

/// How many key files the story tries before it says someone is taking
/// System V keys ahead of it.
const KEY_TRIES: u32 = 4096;

/// A new key file in the story's private directory whose `ftok` key has no
/// queue yet. A key is the file's inode (low 16 bits), device and 'Q': easy
/// to predict, so another user can create queues at the keys we will get
/// next. A taken key is never ours to use: we make another file (a new
/// inode, so a new key) and try again. (Hardening: a first reading may skip
/// the loop.)
fn key_file(dir: &PrivateDir, name: &str, say: &Narrator) -> Result<std::path::PathBuf> {
    let path = dir.path().join(name);
    for attempt in 0..KEY_TRIES {
        std::fs::write(&path, b"")
            .with_context(|| format!("create the key file {}", path.display()))?;
        let key = ipc_sysv::key_of(&path)?;
        // SAFETY: msgget takes no pointers; flags 0 only looks the key up.
        if unsafe { libc::msgget(key, 0) } == -1
            && nix::errno::Errno::last() == nix::errno::Errno::ENOENT
        {
            if attempt > 0 {
                say.step(format!(
                    "{attempt} key(s) were taken by queues that are not ours (ftok keys are \
                     predictable: see ipcs -q -c); {key:#010x} is free"
                ));
            }
            return Ok(path);
        }
        // Unlink, so the next file gets a new inode and with it a new key.
        std::fs::remove_file(&path)
            .with_context(|| format!("remove the key file {}", path.display()))?;
    }
    anyhow::bail!(
        "{KEY_TRIES} key files in a row gave keys that already have a System V queue of \
         someone else: another user is taking keys ahead of us (see ipcs -q -c)"
    )
}

/// Messages wait in the kernel after their senders exit; msgtyp chooses;
/// ENOMSG, E2BIG, MSG_NOERROR.
fn sysv_by_type(dir: &PrivateDir, n: u32, say: &Narrator) -> Result<Moved> {
    let key_path = key_file(dir, "key", say)?;
    let key = key_path.to_str().context("key path is not UTF-8")?;
    let queue = new_story_queue(&key_path, say)?;
    // The guard's drop is msgctl(IPC_RMID) if a step fails.
    let _remove = SysvGuard::new(SysvKind::MessageQueue, queue.id);
    let mut moved = Moved::default();
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
        moved.add(sent_and_received(texts)); // received below
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
    match queue.receive(0, 64, ipc_sysv::IPC_NOWAIT) {
        Err(Errno::ENOMSG) => say.step("msgrcv(IPC_NOWAIT) on the empty queue → ENOMSG"),
        other => bail!("msgrcv(IPC_NOWAIT) on an empty queue: expected ENOMSG, got {other:?}"),
    }
    queue
        .send(1, &[b'x'; 100], ipc_sysv::IPC_NOWAIT)
        .context("msgsnd(100 bytes)")?;
    // IPC_NOWAIT in these steps: a claim that fails must not block.
    match queue.receive(0, 10, ipc_sysv::IPC_NOWAIT) {
        Err(Errno::E2BIG) => say.step(
            "msgrcv into a 10-byte buffer, 100-byte message → E2BIG; the message stays in the queue",
        ),
        other => bail!("msgrcv of a too-large message: expected E2BIG, got {other:?}"),
    }
    let (_, cut) = queue
        .receive(0, 10, ipc_sysv::IPC_NOWAIT | ipc_sysv::MSG_NOERROR)
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
        "part {n} moved {} messages, {} bytes",
        moved.messages, moved.bytes
    ));
    Ok(moved)
}

/// Priorities, mq_getattr, EAGAIN, a timed receive, mq_notify by signal.
fn posix_by_priority(n: u32, say: &Narrator) -> Result<Moved> {
    let l = mq_limits();
    say.step(format!(
        "/proc/sys/fs/mqueue: msg_max = {}, msgsize_max = {}, queues_max = {}",
        l.msg_max, l.msgsize_max, l.queues_max
    ));
    let name = format!("/{}", unique_name("msgq-demo"));
    let queue = ipc_posix::Queue::create(&name, 10.min(l.msg_max), 128.min(l.msgsize_max), say)?;
    // The guard's drop is mq_unlink if a step fails.
    let _unlink = MqGuard::new(&name);
    let mut moved = Moved::default();
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
        moved.add(sent_and_received(texts)); // received below
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
    queue.set_nonblocking(true)?;
    match queue.receive()? {
        None => say.step("O_NONBLOCK, empty queue: mq_receive → EAGAIN"),
        Some(_) => bail!("mq_receive on an empty queue returned a message"),
    }
    queue.set_nonblocking(false)?;
    let start = Instant::now();
    if queue.receive_within(Duration::from_millis(300))?.is_some() {
        bail!("mq_timedreceive on an empty queue returned a message");
    }
    say.step(format!(
        "mq_timedreceive(300 ms) → ETIMEDOUT after {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    ));
    let woke = notify_by_signal(&queue, &name, say)?;
    moved.messages += 2;
    moved.bytes += 2 * woke as u64;
    drop(queue); // mq_close(3)
    nix::mqueue::mq_unlink(name.as_str()).with_context(|| format!("mq_unlink({name})"))?;
    say.step(format!("mq_unlink({name}): removed"));
    say.step(format!(
        "part {n} moved {} messages, {} bytes",
        moved.messages, moved.bytes
    ));
    Ok(moved)
}

/// mq_notify: a signal when the empty queue gets a message.
/// Returns the announced message's length.
fn notify_by_signal(queue: &ipc_posix::Queue, name: &str, say: &Narrator) -> Result<usize> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
    // Block SIGUSR1 first: it then stays pending until sigtimedwait takes
    // it, instead of running a handler (or killing us) at any moment.
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR1);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .context("sigprocmask(SIG_BLOCK, SIGUSR1)")?;
    queue.notify_by_signal(Signal::SIGUSR1)?;
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
        .receive_within(Duration::from_secs(1))?
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

/// K clients and the server, a private reply queue per client.
fn client_server(dir: &PrivateDir, opts: &Options, n: u32, say: &Narrator) -> Result<Moved> {
    let key_path = key_file(dir, "server-key", say)?;
    let key = key_path.to_str().context("key path is not UTF-8")?;
    let server_say = say.with_role("server");
    // The same code as 'msgq-demo sysv server', run by this process.
    let server = ipc_sysv::server_queue(&key_path, &server_say)?;
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
        clients.push(Peer::spawn_self(&args)?);
    }
    let pids: Vec<String> = clients.iter().map(|c| c.pid().to_string()).collect();
    say.step(format!(
        "started clients {}: each makes a private queue, sends {} request(s) of {} bytes with \
         its queue's id in them, and checks every reply",
        pids.join(", "),
        opts.count,
        opts.size
    ));
    let total = opts.clients * opts.count;
    let start = Instant::now();
    let moved = ipc_sysv::serve(&server, Some(total), Some(DEFAULT_TIMEOUT), &server_say)?;
    for mut client in clients {
        let exit = client.wait(Some(DEFAULT_TIMEOUT))?;
        if !exit.success() {
            bail!("client pid {} {exit}", client.pid());
        }
    }
    drop(server); // msgctl(IPC_RMID) of the server's queue
    say.step(format!(
        "served {total} requests in {:.3} s; every client got only its own replies and exited 0; \
         the server's queue and every private queue are removed",
        start.elapsed().as_secs_f64()
    ));
    say.step(format!(
        "part {n} moved {} messages (requests and replies), {} bytes",
        moved.messages, moved.bytes
    ));
    Ok(moved)
}

/// One msgrcv of the MSG_EXCEPT step: msgtyp, flags, what it means, and
/// the (type, text) it must return (None: ENOMSG).
type Receive = (i64, libc::c_int, &'static str, Option<(i64, &'static str)>);

/// MSG_EXCEPT: with msgtyp T > 0, the oldest message of any type but T.
fn msg_except(dir: &PrivateDir, say: &Narrator) -> Result<Moved> {
    use ipc_sysv::{IPC_NOWAIT, MSG_EXCEPT};
    let key_path = key_file(dir, "except-key", say)?;
    let queue = new_story_queue(&key_path, say)?;
    // The guard's drop is msgctl(IPC_RMID) if a step fails.
    let _remove = SysvGuard::new(SysvKind::MessageQueue, queue.id);
    let sent: [(i64, &str); 4] = [(1, "one-a"), (1, "one-b"), (2, "two-a"), (3, "three-a")];
    for (mtype, text) in sent {
        queue
            .send(mtype, text.as_bytes(), IPC_NOWAIT)
            .context("msgsnd")?;
    }
    say.step(format!(
        "msgsnd, in this order: {}",
        sent.map(|(t, m)| format!("type {t} {m:?}")).join(", ")
    ));
    // The claims: what each msgrcv must return, in order.
    let expected: [Receive; 5] = [
        (
            1,
            IPC_NOWAIT | MSG_EXCEPT,
            "the oldest NOT of type 1",
            Some((2, "two-a")),
        ),
        (1, IPC_NOWAIT | MSG_EXCEPT, "again", Some((3, "three-a"))),
        (
            1,
            IPC_NOWAIT | MSG_EXCEPT,
            "again: only type 1 is left",
            None,
        ),
        (
            1,
            IPC_NOWAIT,
            "without MSG_EXCEPT: the oldest of type 1",
            Some((1, "one-a")),
        ),
        (0, IPC_NOWAIT, "msgtyp 0: the oldest", Some((1, "one-b"))),
    ];
    let mut moved = Moved::default();
    for (msgtyp, flags, meaning, want) in expected {
        // IPC_NOWAIT throughout: a claim that fails must not block.
        let flag_names = if flags & MSG_EXCEPT != 0 {
            "IPC_NOWAIT|MSG_EXCEPT"
        } else {
            "IPC_NOWAIT"
        };
        let call = format!("msgrcv(msgtyp {msgtyp}, {flag_names})");
        match (queue.receive(msgtyp, 64, flags), want) {
            (Ok((mtype, text)), Some((t, m))) if mtype == t && text == m.as_bytes() => {
                say.step(format!("{call}, {meaning} → type {mtype} {m:?}"));
                moved.messages += 2; // sent above, received here
                moved.bytes += 2 * text.len() as u64;
            }
            (Err(Errno::ENOMSG), None) => say.step(format!("{call}, {meaning} → ENOMSG")),
            (got, want) => bail!("{call}: expected {want:?}, got {got:?}"),
        }
    }
    queue.remove().context("msgctl(IPC_RMID)")?;
    say.step(format!(
        "msgctl(msqid {}, IPC_RMID): removed. MSG_EXCEPT is Linux's (in C: #define _GNU_SOURCE)",
        queue.id
    ));
    Ok(moved)
}

/// msg_qbytes: what a queue may hold. Its owner may lower it and raise it
/// up to msgmnb; above that only CAP_SYS_RESOURCE (root) may.
fn qbytes(dir: &PrivateDir, say: &Narrator) -> Result<Moved> {
    use ipc_sysv::IPC_NOWAIT;
    let msgmnb =
        read_proc_number("/proc/sys/kernel/msgmnb").context("read /proc/sys/kernel/msgmnb")? as u64;
    let key_path = key_file(dir, "qbytes-key", say)?;
    let queue = new_story_queue(&key_path, say)?;
    // The guard's drop is msgctl(IPC_RMID) if a step fails.
    let _remove = SysvGuard::new(SysvKind::MessageQueue, queue.id);
    let qbytes_now =
        || -> Result<u64> { Ok(queue.stat().context("msgctl(IPC_STAT)")?.msg_qbytes as u64) };
    let start = qbytes_now()?;
    if start != msgmnb {
        bail!("a new queue's msg_qbytes is {start}, not msgmnb = {msgmnb}");
    }
    say.step(format!(
        "a new queue's msg_qbytes = {start}: /proc/sys/kernel/msgmnb when it was made"
    ));
    let mut moved = Moved::default();
    // Lower it: two 600-byte messages no longer fit.
    queue
        .set_qbytes(1000)
        .context("msgctl(IPC_SET, msg_qbytes 1000)")?;
    queue
        .send(1, &[b'q'; 600], IPC_NOWAIT)
        .context("msgsnd(600 bytes)")?;
    match queue.send(1, &[b'q'; 600], IPC_NOWAIT) {
        Err(Errno::EAGAIN) => say.step(
            "IPC_SET msg_qbytes = 1000 (the owner may lower it): one 600-byte message fits, \
             a second one → EAGAIN (IPC_NOWAIT; without it msgsnd would wait for room)",
        ),
        other => bail!("msgsnd of 1200 bytes into msg_qbytes 1000: expected EAGAIN, got {other:?}"),
    }
    queue
        .receive(0, 600, IPC_NOWAIT)
        .context("msgrcv(600 bytes)")?;
    moved.messages += 2;
    moved.bytes += 1200;
    queue
        .set_qbytes(msgmnb)
        .context("msgctl(IPC_SET, msg_qbytes = msgmnb)")?;
    // Above msgmnb: allowed only with CAP_SYS_RESOURCE.
    let above = 2 * msgmnb;
    let me = nix::unistd::geteuid();
    match queue.set_qbytes(above) {
        Err(Errno::EPERM) => {
            say.step(format!(
                "IPC_SET msg_qbytes = {above}, over msgmnb = {msgmnb} → EPERM: this process \
                 (uid {me}) lacks CAP_SYS_RESOURCE{}, so msgmnb is its ceiling, also for the \
                 queue's owner",
                if me.is_root() {
                    " (see CapEff in /proc/self/status: a container may drop it, even for root)"
                } else {
                    ""
                }
            ));
        }
        Ok(()) => {
            let now = qbytes_now()?;
            if now != above {
                bail!("IPC_SET msg_qbytes = {above}, but IPC_STAT says {now}");
            }
            // Filling a queue of a raised msgmnb could take much memory.
            let held = if msgmnb <= 1 << 20 {
                fill(&queue, msgmnb)?
            } else {
                0
            };
            say.step(format!(
                "IPC_SET msg_qbytes = {above}, over msgmnb = {msgmnb}: allowed, this process has \
                 CAP_SYS_RESOURCE; {}",
                match held {
                    0 => "(msgmnb is over 1 MiB here: not filled)".to_string(),
                    held => format!("{held} bytes of messages now wait in it, more than msgmnb"),
                }
            ));
            moved.messages += 2 * (held / 1000);
            moved.bytes += 2 * held;
        }
        Err(e) => return Err(e).context("msgctl(IPC_SET)"),
    }
    if me.is_root() {
        as_nobody(msgmnb, say)?;
    } else {
        say.step(
            "(run as root, the story also forks a child that becomes nobody and is refused the \
             same way for a queue of its own)",
        );
    }
    queue.remove().context("msgctl(IPC_RMID)")?;
    say.step(format!("msgctl(msqid {}, IPC_RMID): removed", queue.id));
    Ok(moved)
}

/// Fill `queue` with 1000-byte messages (IPC_NOWAIT) until it is full,
/// check it holds more than `msgmnb`, and empty it. Returns the bytes held.
fn fill(queue: &ipc_sysv::Queue, msgmnb: u64) -> Result<u64> {
    use ipc_sysv::IPC_NOWAIT;
    let mut held = 0u64;
    // At most one message past what msg_qbytes (2 x msgmnb) allows.
    for _ in 0..=(2 * msgmnb / 1000) {
        match queue.send(1, &[b'f'; 1000], IPC_NOWAIT) {
            Ok(()) => held += 1000,
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(e).context("msgsnd(1000 bytes)"),
        }
    }
    let cbytes = queue.stat().context("msgctl(IPC_STAT)")?.__msg_cbytes;
    if cbytes != held || held <= msgmnb {
        bail!("the raised queue holds {cbytes} bytes ({held} sent), not more than msgmnb {msgmnb}");
    }
    while queue.receive(0, 1000, IPC_NOWAIT).is_ok() {}
    Ok(held)
}

/// As root: a forked child drops to `nobody` and owns a queue of its own;
/// msgmnb stops it. Narrates why not when that cannot be shown.
fn as_nobody(msgmnb: u64, say: &Narrator) -> Result<()> {
    use nix::unistd::{ForkResult, User, fork};
    let Ok(Some(nobody)) = User::from_name("nobody") else {
        say.step("there is no user 'nobody' here: the unprivileged side is not shown");
        return Ok(());
    };
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    // SAFETY: the child makes only async-signal-safe calls (raw system
    // calls, no allocation) and ends with _exit: safe even if this process
    // has other threads.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let code = unprivileged_qbytes(uid, gid, msgmnb);
            // SAFETY: _exit ends the child at once, running no destructor
            // of the parent's objects.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            let exit = common::peer::wait_pid(child, Duration::from_secs(10))?;
            let why = match exit {
                common::peer::PeerExit::Exited(0) => {
                    say.step(format!(
                        "a forked child became nobody (setuid {uid}) and made a queue of its own: \
                         IPC_SET to msgmnb/2 and back to msgmnb = {msgmnb} allowed, to msgmnb + 1 \
                         → EPERM: without CAP_SYS_RESOURCE, /proc/sys/kernel/msgmnb is the \
                         ceiling even for the queue's owner"
                    ));
                    return Ok(());
                }
                common::peer::PeerExit::Exited(1) => {
                    say.step("the child could not become nobody (setuid refused): not shown");
                    return Ok(());
                }
                common::peer::PeerExit::Exited(2) => "msgget(IPC_PRIVATE) failed",
                common::peer::PeerExit::Exited(3) => "lowering msg_qbytes failed",
                common::peer::PeerExit::Exited(4) => "raising msg_qbytes to msgmnb failed",
                common::peer::PeerExit::Exited(5) => "raising msg_qbytes over msgmnb succeeded",
                common::peer::PeerExit::Exited(_) => "over msgmnb failed, but not with EPERM",
                _ => "it did not exit on its own",
            };
            bail!("the child that became nobody (pid {child}): {why}")
        }
    }
}

/// In the forked child, as `nobody`: 0 if msg_qbytes may go down and up
/// to `msgmnb` but not over it (EPERM); else which stage went otherwise.
/// Async-signal-safe only: raw system calls, nothing allocated.
fn unprivileged_qbytes(uid: libc::uid_t, gid: libc::gid_t, msgmnb: u64) -> i32 {
    // SAFETY: plain system calls on values on our stack.
    unsafe {
        // Ctrl-C to the group must not stop us between msgget and
        // IPC_RMID: nobody's queue would be left. We take milliseconds.
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        // Groups first, then the gid, then the uid (after setuid we could
        // no longer change the others).
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return 1;
        }
    }
    let Ok(queue) = ipc_sysv::Queue::create_private() else {
        return 2;
    };
    let code = match (
        queue.set_qbytes(msgmnb / 2),
        queue.set_qbytes(msgmnb),
        queue.set_qbytes(msgmnb + 1),
    ) {
        (Ok(()), Ok(()), Err(Errno::EPERM)) => 0,
        (Err(_), _, _) => 3,
        (_, Err(_), _) => 4,
        (_, _, Ok(())) => 5,
        (_, _, Err(_)) => 6,
    };
    let _ = queue.remove();
    code
}

/// How many times `on_message` has run, and the thread it last ran in.
static NOTIFIED: AtomicU32 = AtomicU32::new(0);
static NOTIFIED_TID: AtomicI32 = AtomicI32::new(0);

/// The SIGEV_THREAD function: runs in a thread the C library starts for
/// the notification. It only records that it ran, and where.
extern "C" fn on_message(_: libc::sigval) {
    // SAFETY: gettid has no preconditions.
    NOTIFIED_TID.store(unsafe { libc::gettid() }, Ordering::SeqCst);
    NOTIFIED.fetch_add(1, Ordering::SeqCst);
}

/// Wait (at most `limit`) until `on_message` has run `count` times.
fn notified_within(count: u32, limit: Duration) -> Result<bool> {
    let start = Instant::now();
    while NOTIFIED.load(Ordering::SeqCst) < count {
        common::cleanup::check_stop()?;
        if start.elapsed() >= limit {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(true)
}

/// mq_notify(SIGEV_THREAD): a function run in a new thread; one-shot, so
/// a second message is missed until the process registers again.
fn notify_by_thread(say: &Narrator) -> Result<Moved> {
    let name = format!("/{}", unique_name("msgq-demo-notify"));
    let queue = ipc_posix::Queue::create(&name, 10.min(mq_limits().msg_max), 128, say)?;
    // The guard's drop is mq_unlink if a step fails.
    let _unlink = MqGuard::new(&name);
    let base = NOTIFIED.load(Ordering::SeqCst);
    let send = |text: &str| {
        run_role(
            &words(&["posix", "sender", "--name", &name, "--quiet", "--", text]),
            say,
        )
    };
    let take = |want: &str| -> Result<()> {
        match queue.receive_within(Duration::from_secs(1))? {
            Some((_, text)) if text == want.as_bytes() => Ok(()),
            other => bail!("mq_receive: expected {want:?}, got {other:?}"),
        }
    };
    queue.notify_by_thread(on_message)?;
    say.step(
        "mq_notify(SIGEV_THREAD, on_message): run on_message when this empty queue gets a message",
    );
    send("first")?;
    if !notified_within(base + 1, Duration::from_secs(10))? {
        bail!("no SIGEV_THREAD notification within 10 s of \"first\"");
    }
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let tid = NOTIFIED_TID.load(Ordering::SeqCst);
    if tid == me {
        bail!("on_message ran in the main thread (tid {me}), not in a thread of its own");
    }
    take("first")?;
    say.step(format!(
        "a sender process sent \"first\": on_message ran in thread {tid}, not in this main \
         thread {me}; mq_receive → \"first\""
    ));
    send("second")?;
    let waited = Duration::from_millis(500);
    if notified_within(base + 2, waited)? {
        bail!("\"second\" was announced without a new mq_notify");
    }
    let waiting = queue.attr()?.curmsgs();
    if waiting != 1 {
        bail!("expected \"second\" waiting in the queue, mq_getattr says {waiting} messages");
    }
    say.step(format!(
        "a sender process sent \"second\": nothing ran within {} ms, and mq_getattr shows 1 \
         message waiting: missed, because the first notification used up the registration",
        waited.as_millis()
    ));
    queue.notify_by_thread(on_message)?;
    if notified_within(base + 2, Duration::from_millis(200))? {
        bail!("mq_notify on a non-empty queue announced the message already there");
    }
    take("second")?;
    say.step(
        "mq_notify again, then empty the queue (mq_receive → \"second\"): registering announces \
         nothing for a message already there, only the next empty → non-empty change, so a \
         notified process re-registers first and then drains",
    );
    send("third")?;
    if !notified_within(base + 2, Duration::from_secs(10))? {
        bail!("no notification for \"third\" within 10 s, after re-registering");
    }
    take("third")?;
    say.step(format!(
        "a sender process sent \"third\": caught after re-arming (on_message ran in thread {}); \
         mq_receive → \"third\"",
        NOTIFIED_TID.load(Ordering::SeqCst)
    ));
    drop(queue); // mq_close(3)
    nix::mqueue::mq_unlink(name.as_str()).with_context(|| format!("mq_unlink({name})"))?;
    say.step(format!("mq_unlink({name}): removed"));
    Ok(sent_and_received(&["first", "second", "third"]))
}

/// Where the mqueue filesystem is mounted, if it is (/proc/self/mounts).
fn mqueue_mount() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"mqueue")).then(|| fields[1].to_string())
    })
}

/// One "KEY:value" field of a /dev/mqueue/NAME file.
fn field(text: &str, key: &str) -> Option<u64> {
    text.split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix(':')?.parse().ok())
}

/// /dev/mqueue/NAME: QSIZE (bytes waiting), NOTIFY (how), SIGNO, NOTIFY_PID.
fn dev_mqueue(say: &Narrator) -> Result<Moved> {
    use nix::sys::signal::Signal;
    let Some(mount) = mqueue_mount() else {
        say.step(
            "no mqueue filesystem is mounted here, so there is no file to read (root could: \
             mkdir -p /dev/mqueue && mount -t mqueue none /dev/mqueue); the queues exist anyway",
        );
        return Ok(Moved::default());
    };
    let name = format!("/{}", unique_name("msgq-demo-file"));
    let queue = ipc_posix::Queue::create(&name, 10.min(mq_limits().msg_max), 128, say)?;
    // The guard's drop is mq_unlink if a step fails.
    let _unlink = MqGuard::new(&name);
    let path = format!("{mount}{name}");
    let texts = ["hello", "queue"];
    for text in texts {
        queue.send(text.as_bytes(), 0, Duration::from_secs(1))?;
    }
    // Registered on a non-empty queue: no signal comes until it has been
    // emptied and gets a message again, which this step never lets happen.
    queue.notify_by_signal(Signal::SIGUSR1)?;
    let Ok(text) = std::fs::read_to_string(&path) else {
        say.step(format!(
            "{mount} is mounted, but shows no {name}: that mount belongs to another IPC \
             namespace's queues (a container's, or a test's)"
        ));
        queue.notify_cancel()?;
        drop(queue); // mq_close(3)
        nix::mqueue::mq_unlink(name.as_str()).with_context(|| format!("mq_unlink({name})"))?;
        return Ok(Moved::default());
    };
    let line = text.trim();
    say.step(format!("cat {path}: {line}"));
    let bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();
    let me = u64::from(std::process::id());
    let want = [
        ("QSIZE", bytes),
        ("NOTIFY", libc::SIGEV_SIGNAL as u64),
        ("SIGNO", Signal::SIGUSR1 as u64),
        ("NOTIFY_PID", me),
    ];
    for (key, value) in want {
        if field(line, key) != Some(value) {
            bail!("{path}: expected {key}:{value}, read {line:?}");
        }
    }
    say.step(format!(
        "QSIZE:{bytes} is the bytes of the {} waiting messages (not counting the kernel's \
         bookkeeping), NOTIFY:0 is SIGEV_SIGNAL (2 would be SIGEV_THREAD; 0 also when nobody is registered), \
         SIGNO:{} is SIGUSR1, NOTIFY_PID:{me} is this process, the one registered",
        texts.len(),
        Signal::SIGUSR1 as i32
    ));
    queue.notify_cancel()?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    if field(&text, "NOTIFY_PID") != Some(0) {
        bail!("{path} after mq_notify(NULL): expected NOTIFY_PID:0, read {text:?}");
    }
    say.step(format!(
        "mq_notify(NULL): {path} now says NOTIFY_PID:0, nobody is registered"
    ));
    for text in texts {
        match queue.receive_within(Duration::from_secs(1))? {
            Some((_, got)) if got == text.as_bytes() => {}
            other => bail!("mq_receive: expected {text:?}, got {other:?}"),
        }
    }
    drop(queue); // mq_close(3)
    nix::mqueue::mq_unlink(name.as_str()).with_context(|| format!("mq_unlink({name})"))?;
    if std::path::Path::new(&path).exists() {
        bail!("{path} is still there after mq_unlink");
    }
    say.step(format!(
        "mq_unlink({name}): {path} is gone (rm {path} would have removed the queue too)"
    ));
    Ok(sent_and_received(&texts))
}

/// EMSGSIZE: mq_receive wants a buffer of mq_msgsize, whatever the message.
fn small_buffer(say: &Narrator) -> Result<Moved> {
    let name = format!("/{}", unique_name("msgq-demo-size"));
    let msgsize = 128;
    let queue = ipc_posix::Queue::create(&name, 10.min(mq_limits().msg_max), msgsize, say)?;
    // The guard's drop is mq_unlink if a step fails.
    let _unlink = MqGuard::new(&name);
    queue.send(b"tiny", 0, Duration::from_secs(1))?;
    // Non-blocking: if the message were not there, fail instead of waiting.
    queue.set_nonblocking(true)?;
    let mut small = vec![0u8; msgsize - 1];
    match queue.receive_into(&mut small) {
        Err(Errno::EMSGSIZE) => {}
        other => bail!(
            "mq_receive into {} bytes: expected EMSGSIZE, got {other:?}",
            small.len()
        ),
    }
    let waiting = queue.attr()?.curmsgs();
    if waiting != 1 {
        bail!("after EMSGSIZE: expected the message still waiting, mq_getattr says {waiting}");
    }
    say.step(format!(
        "mq_send \"tiny\" (4 bytes); mq_receive into a {}-byte buffer → EMSGSIZE: the buffer \
         must hold mq_msgsize = {msgsize} bytes, however short the message; it stays in the \
         queue (mq_getattr: {waiting} waiting). System V's msgrcv fails (E2BIG) only when the \
         message itself is too long",
        small.len()
    ));
    let mut buf = vec![0u8; msgsize];
    let (n, _) = queue
        .receive_into(&mut buf)
        .context("mq_receive(mq_msgsize bytes)")?;
    if &buf[..n] != b"tiny" {
        bail!("mq_receive: expected \"tiny\", got {}", show(&buf[..n]));
    }
    say.step(format!(
        "mq_receive into {msgsize} bytes (mq_getattr's mq_msgsize) → {}",
        show(&buf[..n])
    ));
    drop(queue); // mq_close(3)
    nix::mqueue::mq_unlink(name.as_str()).with_context(|| format!("mq_unlink({name})"))?;
    say.step(format!("mq_unlink({name}): removed"));
    Ok(sent_and_received(&["tiny"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The root-with-CAP_SYS_RESOURCE path of the msg_qbytes step cannot
    /// run where that capability is missing; its fill check can, on a
    /// queue whose msg_qbytes was lowered instead.
    #[test]
    fn fill_holds_up_to_msg_qbytes_and_empties_the_queue() {
        let queue = ipc_sysv::Queue::create_private().unwrap();
        let _remove = SysvGuard::new(SysvKind::MessageQueue, queue.id);
        queue.set_qbytes(5000).unwrap();
        assert_eq!(fill(&queue, 2500).unwrap(), 5000);
        assert_eq!(queue.stat().unwrap().msg_qnum, 0);
        // Not more than "msgmnb": an error, not a claim.
        queue.set_qbytes(2000).unwrap();
        assert!(fill(&queue, 2500).is_err());
    }
}
