//! The one-terminal stories, POSIX (`posix`) and System V (`sysv`). Each
//! prints every step heading from its one function, in order; each step is
//! a function that narrates and checks its own claim (a claim the kernel
//! does not bear out ends the story with an error, not a false sentence).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::cleanup::{PrivateDir, unique_name};
use common::payload::CheckReport;
use common::peer::Peer;
use common::report::{Narrator, Stream};
use nix::errno::Errno;

use crate::Options;
use crate::ipc_posix::{self, dev_shm_line};
use crate::ipc_sysv::{self, describe};
use shm_demo::checks;
use shm_demo::ipc_ring::{self as ring, Segment, Sem};

/// `shm-demo` with no role: POSIX shared memory, receiver here, sender a
/// fresh process of this program.
pub fn posix(opts: &Options) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, Stream::Stdout);
    let name = format!("/{}", unique_name("shm-demo"));
    say.line(format!(
        "shm-demo: {} messages of {} bytes through {} slots of {} bytes, POSIX shared memory \
         (receiver pid {})",
        opts.count,
        opts.size,
        opts.slots,
        opts.slot_size,
        std::process::id()
    ));
    heading(&say, "1. Create the segment and its semaphores");
    let mut owned = posix_create(opts, &name, &say)?;

    heading(
        &say,
        "2. Start the sender: a separate program that opens the segment by name",
    );
    let sender = start_sender(opts, &["sender", "--name", &name], &say)?;

    heading(&say, "3. The bounded buffer: wait(full), read, post(empty)");
    // SAFETY: create sem_init'ed both; `owned` outlives them.
    let sems = unsafe { owned.segment.posix_sems() };
    let outcome = transfer(opts, &owned.segment, sems, sender, &say);
    // Whatever happened, the sender is finished now (waited for, or stopped
    // and reaped when transfer dropped it): the semaphores can go.
    owned.peer_done = true;
    let (report, elapsed) = outcome?;

    heading(&say, "4. Clean up");
    posix_clean_up(owned, &name, &say)?;
    say.line("");
    ring::finish_receiving(ipc_posix::MECHANISM, report, elapsed, &say)
}

/// `shm-demo sysv`: the same with System V shared memory and semaphores.
pub fn sysv(opts: &Options) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, Stream::Stdout);
    say.line(format!(
        "shm-demo sysv: {} messages of {} bytes through {} slots of {} bytes, System V shared \
         memory (receiver pid {})",
        opts.count,
        opts.size,
        opts.slots,
        opts.slot_size,
        std::process::id()
    ));
    heading(&say, "1. Create the segment and the semaphore set");
    // The key file lives in a private directory, removed at the end.
    let dir = PrivateDir::create("shm-demo-sysv")?;
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, b"").with_context(|| format!("create {}", key_path.display()))?;
    let owned = ipc_sysv::create(&key_path, opts.slots, opts.slot_size, &say)?;

    heading(
        &say,
        "2. Start the sender: it finds both objects by the same key",
    );
    let key_arg = key_path.to_str().context("key path is not UTF-8")?;
    let sender = start_sender(opts, &["sysv", "sender", "--key", key_arg], &say)?;

    heading(
        &say,
        "3. The bounded buffer: semop(full, -1), read, semop(empty, +1)",
    );
    let (report, elapsed) = transfer(
        opts,
        &owned.segment,
        ipc_sysv::sems(owned.set),
        sender,
        &say,
    )?;

    heading(&say, "4. What the kernel kept track of");
    sysv_kernel_records(owned, &say)?;
    drop(dir);
    say.line("");
    ring::finish_receiving(ipc_sysv::MECHANISM, report, elapsed, &say)
}

fn heading(say: &Narrator, title: &str) {
    say.line(format!("\n== {title} =="));
}

// ---------------------------------------------------------------------------
// Steps both stories share
// ---------------------------------------------------------------------------

/// Step 2: the sender, a fresh process of this program with `role` words.
/// It prints no summary line: the story ends with the run's one summary.
fn start_sender(opts: &Options, role: &[&str], say: &Narrator) -> Result<Peer> {
    let mut args = opts.sender_args(role);
    args.push("--no-summary".into());
    let sender = Peer::spawn_self(&args)?;
    // A SIGBUS here stops the sender too (checks.rs).
    checks::stop_child_too(sender.pid());
    say.step(format!("started the sender, pid {}", sender.pid()));
    Ok(sender)
}

/// Step 3: receive every message from the sender child and check it; then
/// reap the child, which must have succeeded. On an error the child is
/// stopped and reaped when `sender` drops here.
fn transfer(
    opts: &Options,
    segment: &Segment,
    sems: (Sem, Sem),
    mut sender: Peer,
    say: &Narrator,
) -> Result<(CheckReport, Duration)> {
    let pid = sender.pid();
    // The child is ours: its exit is seen directly (waitpid), no pidfd.
    let mut peer_gone = || match sender.try_wait() {
        Ok(Some(exit)) => Some(format!("the sender (pid {pid}) {exit}")),
        Ok(None) => None,
        Err(e) => Some(format!("{e:#}")),
    };
    let (report, elapsed) = ring::receive(
        segment,
        sems,
        Some(opts.count),
        opts.timeout,
        say,
        &mut peer_gone,
    )?;
    let exit = sender.wait(Some(Duration::from_secs(60)))?;
    say.step(format!("the sender (pid {pid}) {exit}"));
    if !exit.success() {
        bail!("the sender (pid {pid}) {exit}");
    }
    Ok((report, elapsed))
}

// ---------------------------------------------------------------------------
// POSIX steps
// ---------------------------------------------------------------------------

/// Step 1: create the segment (ipc_posix::create narrates each call), and
/// the hazard that remains.
fn posix_create(opts: &Options, name: &str, say: &Narrator) -> Result<ipc_posix::Owned> {
    let owned = ipc_posix::create(name, opts.slots, opts.slot_size, say)?;
    if !Path::new(&format!("/dev/shm{name}")).exists() {
        bail!("shm_open({name}) succeeded, but /dev/shm{name} does not exist");
    }
    say.step(format!(
        "a hazard no check can prevent: whoever can open /dev/shm{name} can truncate it while \
         it is mapped, and the next access past the new end is a SIGBUS, not an error code \
         (this demo then says so, removes its object and exits 1). The cure is memory nobody \
         can shrink: memfd_create + fcntl(F_ADD_SEALS, F_SEAL_SHRINK), its fd passed over a Unix socket (SCM_RIGHTS, see socket-demo)"
    ));
    Ok(owned)
}

/// Step 4: destroy the semaphores, unmap, unlink; the name is gone.
fn posix_clean_up(owned: ipc_posix::Owned, name: &str, say: &Narrator) -> Result<()> {
    drop(owned); // sem_destroy ×2, munmap(2), shm_unlink(3): see ipc_posix::Owned
    say.step(format!(
        "sem_destroy(empty), sem_destroy(full), munmap, shm_unlink({name})"
    ));
    say.step(format!("seen from outside: {}", dev_shm_line(name)));
    if Path::new(&format!("/dev/shm{name}")).exists() {
        bail!("/dev/shm{name} is still there after shm_unlink");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// System V steps
// ---------------------------------------------------------------------------

/// Step 4: the kernel's records after the sender left: the attach count,
/// the undone SEM_UNDO, IPC_RMID as a mark until the last detach.
fn sysv_kernel_records(owned: ipc_sysv::Owned, say: &Narrator) -> Result<()> {
    let id = owned.shm.id();
    let after_sender = describe(id);
    say.step(format!("after the sender's shmdt: {after_sender}"));
    if !after_sender.contains("shm_nattch = 1") {
        bail!("the sender has detached, yet the kernel does not count 1 attach: {after_sender}");
    }
    let scratch = owned
        .set
        .value(ipc_sysv::SCRATCH)
        .context("semctl(GETVAL)")?;
    say.step(format!(
        "semctl(GETVAL, scratch) = {scratch}: the sender's +1 with SEM_UNDO was undone when it exited \
         (with SEM_UNDO on `full`, its unread messages would have vanished the same way)"
    ));
    if scratch != 0 {
        bail!("the sender's SEM_UNDO +1 was not undone at its exit (scratch = {scratch})");
    }
    // IPC_RMID while we are still attached: only a mark, until the last detach.
    common::cleanup::sysv_remove(common::cleanup::SysvKind::SharedMemory, id)
        .context("shmctl(IPC_RMID)")?;
    let marked = describe(id);
    say.step(format!("shmctl(IPC_RMID) while still attached: {marked}"));
    if !marked.contains("SHM_DEST") {
        bail!("IPC_RMID while attached should only mark the segment: {marked}");
    }
    let ipc_sysv::Owned {
        segment,
        shm,
        set,
        set_guard,
    } = owned;
    drop(segment); // shmdt(2): the last detach, so the kernel removes it now
    let detached = describe(id);
    say.step(format!("shmdt, the last detach: {detached}"));
    if !detached.contains("gone") {
        bail!("the last detach of a segment marked for removal left it: {detached}");
    }
    drop((shm, set_guard)); // IPC_RMID (already done for the segment), semctl(IPC_RMID)
    let gone = matches!(
        set.value(ipc_sysv::EMPTY),
        Err(Errno::EINVAL | Errno::EIDRM)
    );
    say.step(format!(
        "semctl(IPC_RMID) for semid {}: {}",
        set.id,
        if gone { "gone" } else { "still there?" }
    ));
    if !gone {
        bail!("semid {} is still there after semctl(IPC_RMID)", set.id);
    }
    Ok(())
}
