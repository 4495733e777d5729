//! The one-terminal stories, POSIX (`posix`) and System V (`sysv`). Each
//! prints every step heading from its one function, in order; each step is
//! a function that narrates and checks its own claim (a claim the kernel
//! does not bear out ends the story with an error, not a false sentence).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{PrivateDir, ShmGuard, SysvKind, check_stop, sysv_remove, unique_name};
use common::payload::{self, CheckReport};
use common::peer::Peer;
use common::report::{Narrator, Stream};
use nix::errno::Errno;
use nix::fcntl::{OFlag, posix_fallocate};
use nix::sys::mman::{ProtFlags, shm_open};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::ftruncate;

use crate::Options;
use crate::ipc_posix::{self, dev_shm_line};
use crate::ipc_sysv::{self, describe};
use shm_demo::checks;
use shm_demo::ipc_ring::{self as ring, INIT_TIMEOUT, MAGIC, SYNC_POSIX, Segment, Sem};

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
        "2. The initialisation race: one creator (O_EXCL), openers wait for MAGIC",
    );
    initialisation_race(&say)?;

    heading(
        &say,
        "3. Start the sender: a separate program that opens the segment by name",
    );
    let sender = start_sender(opts, &["sender", "--name", &name], &say)?;

    heading(&say, "4. The bounded buffer: wait(full), read, post(empty)");
    // SAFETY: create sem_init'ed both; `owned` outlives them.
    let sems = unsafe { owned.segment.posix_sems() };
    let outcome = transfer(opts, &owned.segment, sems, sender, &say);
    // Whatever happened, the sender is finished now (waited for, or stopped
    // and reaped when transfer dropped it): the semaphores can go.
    owned.peer_done = true;
    let (report, elapsed) = outcome?;

    heading(
        &say,
        "5. Checking in place or copying out: what a hostile peer can do to each",
    );
    in_place_or_copied(&say)?;

    heading(
        &say,
        "6. shm_unlink while mapped: the name goes, the memory stays",
    );
    unlink_while_mapped(&say)?;

    heading(&say, "7. Clean up");
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
    let key_path = free_key_file(&dir, &say)?;
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

/// A scratch object for one lesson: `shm_open(O_CREAT|O_EXCL|O_RDWR)`,
/// mode 0600 exactly, `len` bytes. The guard's `Drop` is its `shm_unlink`.
fn scratch_object(len: usize) -> Result<(String, OwnedFd, ShmGuard)> {
    let name = format!("/{}", unique_name("shm-demo"));
    let mode = Mode::S_IRUSR | Mode::S_IWUSR;
    let fd = shm_open(
        name.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        mode,
    )
    .with_context(|| format!("shm_open({name}, O_CREAT|O_EXCL|O_RDWR, 0600)"))?;
    let guard = ShmGuard::new(name.as_str());
    fchmod(fd.as_fd(), mode).with_context(|| format!("fchmod({name}, 0600)"))?;
    if len > 0 {
        size_scratch(&fd, &name, len)?;
    }
    Ok((name, fd, guard))
}

/// `ftruncate` to `len`, then `posix_fallocate`: on a full /dev/shm an
/// ENOSPC now, not a SIGBUS at the first touch (see ipc_posix::create).
fn size_scratch(fd: &OwnedFd, name: &str, len: usize) -> Result<()> {
    ftruncate(fd.as_fd(), len as libc::off_t)
        .with_context(|| format!("ftruncate({name}, {len})"))?;
    posix_fallocate(fd.as_fd(), 0, len as libc::off_t)
        .with_context(|| format!("posix_fallocate({name}, {len})"))
}

/// Step 2: who creates, who waits, and how an opener knows the segment is
/// ready. Shown on a scratch object, with this process playing both the
/// creator and an opener that comes too early.
fn initialisation_race(say: &Narrator) -> Result<()> {
    check_stop()?;
    let (name, fd, _unlink) = scratch_object(0)?;
    // Exactly one creator: a second O_CREAT|O_EXCL on the name fails.
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    match shm_open(name.as_str(), flags, Mode::S_IRUSR | Mode::S_IWUSR) {
        Err(Errno::EEXIST) => {}
        Err(e) => bail!("a second shm_open({name}, O_CREAT|O_EXCL): expected EEXIST, got {e}"),
        Ok(_) => bail!("a second shm_open({name}, O_CREAT|O_EXCL) succeeded: two creators"),
    }
    say.step(format!(
        "the creator: shm_open({name}, O_CREAT|O_EXCL|O_RDWR, 0600) made a new object; a second \
         shm_open with O_CREAT|O_EXCL: EEXIST. Exactly one process creates; every other one \
         opens without O_CREAT, as the sender does"
    ));
    // An opener that comes now finds an object of 0 bytes.
    let opener_fd = shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty())
        .with_context(|| format!("shm_open({name}, O_RDWR)"))?;
    let size = fstat(opener_fd.as_fd()).context("fstat")?.st_size;
    if size != 0 {
        bail!("{name} is {size} bytes before ftruncate: expected 0");
    }
    say.step(format!(
        "an opener that comes now: shm_open({name}, O_RDWR) works, but fstat says {size} bytes: \
         nothing to map yet (the sender refuses anything smaller than a header)"
    ));
    let len = ring::segment_len(1, 64);
    size_scratch(&fd, &name, len)?;
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let mut creator = ipc_posix::map(&fd, len, rw)?;
    let mut opener = ipc_posix::map(&opener_fd, len, rw)?;
    drop((fd, opener_fd)); // close(2) both: the mappings keep the object
    let early = opener.header().magic.load(Ordering::Acquire);
    if early != 0 {
        bail!("a new object's header should be zeros, but magic is {early:#x}");
    }
    say.step(format!(
        "after ftruncate({len}) the opener can map it, but reads magic {early:#018x}: zeros, \
         the header is not written yet. Trusting it now would mean trusting zeros"
    ));
    // The creator writes every field, then MAGIC last with Release; it is
    // slow here on purpose (a thread stands for it), and the opener waits.
    creator.init_header(1, 64, SYNC_POSIX);
    let creator_magic = &creator.header().magic;
    let start = Instant::now();
    let (magic, waited) = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(150));
            creator_magic.store(MAGIC, Ordering::Release);
        });
        let magic = opener.wait_published();
        (magic, start.elapsed())
    });
    checks::validate(&mut opener, magic, &name, SYNC_POSIX)
        .context("the opener, after MAGIC appeared")?;
    let (slots, slot_size) = opener.slots();
    say.step(format!(
        "the creator writes the header, then stores MAGIC last with Release ordering (150 ms \
         late here); the opener loads it with Acquire until it appears: it waited {} ms, then \
         found {slots} slot of {slot_size} bytes. Acquire seeing MAGIC means seeing every \
         field stored before it",
        waited.as_millis()
    ));
    // A creator that dies before its last store: the opener must not wait
    // forever. The same object with MAGIC cleared stands for it.
    creator.header().magic.store(0, Ordering::Release);
    let bound = Duration::from_millis(200);
    let start = Instant::now();
    let magic = opener.wait_published_within(bound);
    let gave_up = start.elapsed();
    let Err(refused) = checks::validate(&mut opener, magic, &name, SYNC_POSIX) else {
        bail!("an object without MAGIC was accepted");
    };
    say.step(format!(
        "a creator killed before its last store leaves MAGIC 0: the opener's wait is bounded \
         ({} ms here, {} s in the sender), after {} ms it refuses: {refused:#}",
        bound.as_millis(),
        INIT_TIMEOUT.as_secs(),
        gave_up.as_millis()
    ));
    drop((creator, opener)); // munmap(2) both; then _unlink's Drop: shm_unlink(3)
    Ok(())
}

/// `len` bytes of a mapping as atomics: loads and stores that are sound
/// while another process (or mapping) writes the same bytes.
fn shared_bytes(segment: &Segment, len: usize) -> &[AtomicU8] {
    assert!(
        len <= ring::HEADER_SPACE,
        "scratch segments are one header long"
    );
    // SAFETY: the mapping is at least HEADER_SPACE bytes (segment_len) and
    // lives as long as `segment`; AtomicU8 is valid for any byte and for
    // memory that others change.
    unsafe { std::slice::from_raw_parts(segment.base().cast::<AtomicU8>(), len) }
}

/// Step 5: a check on bytes in shared memory says nothing about the same
/// bytes a moment later (time of check to time of use, TOCTOU); a copy
/// checked in private memory cannot change. Shown with two mappings of one
/// object: through the second, this process plays the hostile peer, at
/// the worst moment. A real peer needs only to hit it once.
fn in_place_or_copied(say: &Narrator) -> Result<()> {
    check_stop()?;
    const SIZE: usize = 64;
    let len = ring::segment_len(1, 64);
    let (name, fd, _unlink) = scratch_object(len)?;
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let ours = ipc_posix::map(&fd, len, rw)?;
    let theirs = ipc_posix::map(&fd, len, rw)?;
    drop(fd); // close(2)
    let (mine, peer) = (shared_bytes(&ours, SIZE), shared_bytes(&theirs, SIZE));
    let expected = payload::make(7, SIZE);
    let write = |bytes: &[u8]| {
        for (to, &b) in peer.iter().zip(bytes) {
            to.store(b, Ordering::Relaxed);
        }
    };
    let read =
        |from: &[AtomicU8]| -> Vec<u8> { from.iter().map(|b| b.load(Ordering::Relaxed)).collect() };
    let hostile = vec![0xEE; SIZE];

    // In place: check the shared bytes, then use the shared bytes.
    write(&expected);
    let checked_ok = read(mine) == expected;
    write(&hostile); // the peer, between the check and the use
    let used = read(mine);
    if !checked_ok || used == expected {
        bail!("in place: the check should pass and the use see the peer's bytes");
    }
    say.step(format!(
        "checked in place: message 7 ({SIZE} bytes in {name}) passed its check; then the peer \
         rewrote it; then we used it: {:#04x} {:#04x} {:#04x}..., not the bytes we checked. \
         The check proved nothing about what was used",
        used[0], used[1], used[2]
    ));
    // Copied out: one copy into private memory, then check and use the copy.
    write(&expected);
    let copy = read(mine); // the copy-out: Reader::read does this per slot
    let checked_ok = copy == expected;
    write(&hostile); // the peer, at the same moment
    if !checked_ok || copy != expected || read(mine) == expected {
        bail!("copied out: the copy should pass its check and stay as checked");
    }
    say.step(
        "copied out first: the same peer, at the same moment, changed the shared bytes, not \
         our copy: what we checked is what we use. The ring's Reader does this (one copy per \
         slot, each length loaded once), memfd-demo instead seals the memory (F_SEAL_WRITE) \
         so that checking in place is safe there",
    );
    drop((ours, theirs)); // munmap(2) both; then _unlink's Drop: shm_unlink(3)
    Ok(())
}

/// Is `/dev/shm{name}` in our `/proc/self/maps`, and marked `(deleted)`?
fn mapped_as(name: &str) -> Result<Option<String>> {
    let maps = std::fs::read_to_string("/proc/self/maps").context("read /proc/self/maps")?;
    let path = format!("/dev/shm{name}");
    Ok(maps
        .lines()
        .find(|line| line.split_whitespace().nth(5) == Some(path.as_str()))
        .map(|line| {
            let at = line.find("/dev/shm").unwrap_or(0);
            line[at..].to_string()
        }))
}

/// Step 6: `shm_unlink` removes the name at once; the memory stays, and
/// stays shared, until the last mapping goes.
fn unlink_while_mapped(say: &Narrator) -> Result<()> {
    check_stop()?;
    let len = ring::segment_len(1, 64);
    let (name, fd, unlink) = scratch_object(len)?;
    let segment = ipc_posix::map(&fd, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
    drop(fd); // close(2): only the mapping holds the object now
    let magic = &segment.header().magic;
    magic.store(MAGIC, Ordering::Release);
    drop(unlink); // shm_unlink(3) (ShmGuard's Drop): the name goes now
    let path = format!("/dev/shm{name}");
    if Path::new(&path).exists() {
        bail!("{path} is still there after shm_unlink");
    }
    say.step(format!(
        "wrote MAGIC into {name}, then shm_unlink({name}) while mapped: {}",
        dev_shm_line(&name)
    ));
    match shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()) {
        Err(Errno::ENOENT) => {}
        other => bail!("shm_open({name}) after shm_unlink: expected ENOENT, got {other:?}"),
    }
    let before = magic.load(Ordering::Acquire);
    magic.store(!MAGIC, Ordering::Release);
    let after = magic.load(Ordering::Acquire);
    let Some(line) = mapped_as(&name)? else {
        bail!("the unlinked object is not in /proc/self/maps while mapped");
    };
    if before != MAGIC || after != !MAGIC || !line.ends_with("(deleted)") {
        bail!("the mapping should still read and write, and show as (deleted): {line}");
    }
    say.step(format!(
        "the mapping still reads MAGIC ({before:#018x}) and takes a new store ({after:#018x}); \
         /proc/self/maps shows it as {line}. Nobody can shm_open it any more (ENOENT): the \
         name goes at once, the memory when the last mapping does"
    ));
    drop(segment); // munmap(2): the last mapping, so the memory is freed now
    if let Some(line) = mapped_as(&name)? {
        bail!("still mapped after munmap: {line}");
    }
    say.step(
        "munmap, the last mapping: gone from /proc/self/maps; with no name and no mapping \
         left, the kernel frees the object",
    );
    Ok(())
}

/// Step 7: destroy the semaphores, unmap, unlink; the name is gone.
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
    sysv_remove(SysvKind::SharedMemory, id).context("shmctl(IPC_RMID)")?;
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

/// How many key files the story tries before it says someone is taking
/// System V keys ahead of it.
const KEY_TRIES: u32 = 4096;

/// A key file in `dir` whose `ftok` key has neither a segment nor a set
/// yet. A key is the file's inode (low 16 bits), device and 'S': easy to
/// predict, so another user can create objects at the keys we will get
/// next. A taken key is never ours: we make another file (a new inode, so a
/// new key) and try again. (Hardening: a first reading may skip it.)
fn free_key_file(dir: &PrivateDir, say: &Narrator) -> Result<std::path::PathBuf> {
    let path = dir.path().join("key");
    for attempt in 0..KEY_TRIES {
        std::fs::write(&path, b"").with_context(|| format!("create {}", path.display()))?;
        let key = ipc_sysv::key_of(&path)?;
        let free =
            |rc: libc::c_int| rc == -1 && nix::errno::Errno::last() == nix::errno::Errno::ENOENT;
        // SAFETY: shmget takes no pointers; flags 0 only looks the key up.
        let no_segment = free(unsafe { libc::shmget(key, 0, 0) });
        // SAFETY: semget takes no pointers; flags 0 only looks the key up.
        let no_set = free(unsafe { libc::semget(key, 0, 0) });
        if no_segment && no_set {
            if attempt > 0 {
                say.step(format!(
                    "{attempt} key(s) were taken by objects that are not ours (ftok keys are \
                     predictable: see ipcs -m -s -c); {key:#010x} is free"
                ));
            }
            return Ok(path);
        }
        // Unlink, so the next file gets a new inode and with it a new key.
        std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    }
    anyhow::bail!(
        "{KEY_TRIES} key files in a row gave keys that already have a System V segment or set \
         of someone else: another user is taking keys ahead of us (see ipcs -m -s -c)"
    )
}
