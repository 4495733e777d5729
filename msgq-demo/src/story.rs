//! The one-terminal story: every step's heading is printed from
//! [`story`], in order; each step is a function that narrates and checks
//! its own claim (a claim the kernel does not bear out stops the story with
//! an error). `msgq-demo` runs every step; `msgq-demo sysv` the System V
//! steps, `msgq-demo posix` the POSIX steps, numbered in the order they run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{MqGuard, PrivateDir, SysvGuard, SysvKind, unique_name};
use common::peer::Peer;
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;

use crate::checks::{Moved, mq_limits, show};
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

/// A new key file in the story's private directory.
fn key_file(dir: &PrivateDir, name: &str) -> Result<std::path::PathBuf> {
    let path = dir.path().join(name);
    std::fs::write(&path, b"")
        .with_context(|| format!("create the key file {}", path.display()))?;
    Ok(path)
}

/// Messages wait in the kernel after their senders exit; msgtyp chooses;
/// ENOMSG, E2BIG, MSG_NOERROR.
fn sysv_by_type(dir: &PrivateDir, n: u32, say: &Narrator) -> Result<Moved> {
    let key_path = key_file(dir, "key")?;
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
        .send(1, &[b'x'; 100], ipc_sysv::WAIT)
        .context("msgsnd(100 bytes)")?;
    match queue.receive(0, 10, ipc_sysv::WAIT) {
        Err(Errno::E2BIG) => say.step(
            "msgrcv into a 10-byte buffer, 100-byte message → E2BIG; the message stays in the queue",
        ),
        other => bail!("msgrcv of a too-large message: expected E2BIG, got {other:?}"),
    }
    let (_, cut) = queue
        .receive(0, 10, ipc_sysv::MSG_NOERROR)
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

/// K clients and the server, a private reply queue per client.
fn client_server(dir: &PrivateDir, opts: &Options, n: u32, say: &Narrator) -> Result<Moved> {
    let key_path = key_file(dir, "server-key")?;
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
