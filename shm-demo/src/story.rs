//! The one-terminal stories, POSIX (`posix`), System V (`sysv`) and the
//! futex ring (`futex`, at the end of the file). Each
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
use shm_demo::ipc_futex as futex;
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

/// Has the story's sender child ended? The child is ours: its exit is seen
/// directly (waitpid), no pidfd.
fn sender_gone(sender: &mut Peer) -> Option<String> {
    let pid = sender.pid();
    match sender.try_wait() {
        Ok(Some(exit)) => Some(format!("the sender (pid {pid}) {exit}")),
        Ok(None) => None,
        Err(e) => Some(format!("{e:#}")),
    }
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
    let mut peer_gone = || sender_gone(&mut sender);
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

// ---------------------------------------------------------------------------
// The futex story (`shm-demo futex`)
// ---------------------------------------------------------------------------

/// `shm-demo futex`: POSIX shared memory synchronised with two counters
/// and the futex system call; receiver here, sender a fresh process.
pub fn futex(opts: &Options) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, Stream::Stdout);
    let name = format!("/{}", unique_name("shm-demo"));
    say.line(format!(
        "shm-demo futex: {} messages of {} bytes through {} slots of {} bytes, POSIX shared \
         memory synchronised with futexes, waiting by {} (receiver pid {})",
        opts.count,
        opts.size,
        opts.slots,
        opts.slot_size,
        opts.wait.name(),
        std::process::id()
    ));
    heading(
        &say,
        "1. Create the segment: two counters and two \"I sleep\" flags, no semaphores",
    );
    let owned = ipc_posix::futex_create(&name, opts.slots, opts.slot_size, opts.wait, &say)?;
    if !Path::new(&format!("/dev/shm{name}")).exists() {
        bail!("shm_open({name}) succeeded, but /dev/shm{name} does not exist");
    }

    heading(
        &say,
        "2. Underneath sem_wait and sem_post: a futex word and a waiter count",
    );
    sem_underneath(&say)?;

    heading(
        &say,
        "3. Start the sender: a separate program that opens the segment by name",
    );
    let sender = start_sender(opts, &["futex", "sender", "--name", &name], &say)?;

    heading(
        &say,
        "4. Messages move: spin, then FUTEX_WAIT; FUTEX_WAKE only for a sleeper",
    );
    let (report, elapsed) = futex_transfer(opts, &owned.ring, sender, &say)?;

    heading(
        &say,
        "5. Why the sender skips the wake: a receiver that is awake needs none",
    );
    skip_the_wake(&say)?;

    heading(
        &say,
        "6. One sem_post + sem_wait per slot: the semaphore ring against the futex ring",
    );
    semaphores_against_futexes(&say)?;

    heading(
        &say,
        "7. Idle cost: a waiter asleep in FUTEX_WAIT uses no CPU",
    );
    idle_cost(&say)?;

    heading(&say, "8. Clean up");
    drop(owned); // munmap(2), shm_unlink(3): see ipc_posix::FutexOwned
    say.step(format!(
        "munmap, shm_unlink({name}) (nothing to destroy: a futex is only a u32); seen from \
         outside: {}",
        dev_shm_line(&name)
    ));
    if Path::new(&format!("/dev/shm{name}")).exists() {
        bail!("/dev/shm{name} is still there after shm_unlink");
    }
    say.line("");
    ring::finish_receiving(ipc_posix::FUTEX_MECHANISM, report, elapsed, &say)
}

/// The calling thread's CPU time (user + system) and voluntary context
/// switches (times it blocked), from getrusage(RUSAGE_THREAD).
fn thread_usage() -> Result<(Duration, u64)> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage(2) fills the rusage we own; RUSAGE_THREAD: this
    // thread only. (nix has getrusage only behind a feature these demos do
    // not use.)
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    Errno::result(rc).context("getrusage(RUSAGE_THREAD)")?;
    // SAFETY: getrusage succeeded, so it wrote the whole struct.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Ok((
        time(usage.ru_utime) + time(usage.ru_stime),
        usage.ru_nvcsw as u64,
    ))
}

fn gettid() -> i32 {
    // SAFETY: gettid(2) takes nothing and cannot fail.
    unsafe { libc::gettid() }
}

/// The system call thread `tid` of this process is blocked in, from
/// /proc/self/task/TID/syscall (its first field; "running" if it runs).
/// `Err` if the kernel does not offer that file.
fn blocked_in(tid: i32) -> std::io::Result<Option<i64>> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))?;
    Ok(text.split_whitespace().next().and_then(|n| n.parse().ok()))
}

/// Wait (at most 10 s) until `ready()` and thread `tid` is blocked in
/// futex(2). Returns how that was seen, for the narration.
fn until_asleep(tid: i32, what: &str, ready: &dyn Fn() -> bool) -> Result<String> {
    let start = Instant::now();
    loop {
        check_stop()?;
        if ready() {
            match blocked_in(tid) {
                Ok(Some(nr)) if nr == libc::SYS_futex => {
                    return Ok(format!(
                        "/proc/self/task/{tid}/syscall says it is blocked in system call {nr} \
                         (futex)"
                    ));
                }
                Ok(_) => {}
                // No such file on this kernel: the flag (or count) is all we see.
                Err(_) => return Ok(format!("(/proc/self/task/{tid}/syscall is not available)")),
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{what} did not fall asleep in futex(2) within 10 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The calls' cost: `n` runs of `f`, in nanoseconds per run.
fn nanos_each(n: u32, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    for _ in 0..n {
        f()?;
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(n))
}

/// A sem_t handed to a helper thread. A semaphore is made to be used by
/// several threads (and processes) at once.
struct ThreadSem(common::psem::SharedSem);
// SAFETY: sem_post/sem_timedwait are thread-safe on an initialised sem_t,
// which outlives the thread (scoped) here.
unsafe impl Send for ThreadSem {}

/// Step 2: glibc's sem_t, looked into. On 64-bit glibc (2.21 and later)
/// its first 8 bytes are one word: the value in the low 32 bits (also the
/// futex word) and the number of waiters in the high 32 bits (glibc's
/// nptl/sem_waitcommon.c and sem_post.c). sem_wait takes a token with a
/// compare-and-swap; with none, it adds itself to nwaiters and sleeps in
/// FUTEX_WAIT on the value word. sem_post adds a token with a
/// compare-and-swap and calls FUTEX_WAKE only if nwaiters is not 0.
fn sem_underneath(say: &Narrator) -> Result<()> {
    check_stop()?;
    if !(cfg!(target_env = "gnu") && cfg!(target_pointer_width = "64")) {
        say.step(
            "this C library is not 64-bit glibc: its sem_t layout is not known here, so this \
             step does not look inside one",
        );
        return Ok(());
    }
    let mut raw: Box<libc::sem_t> = Box::new(
        // SAFETY: sem_t is plain bytes; zeros are overwritten by sem_init.
        unsafe { std::mem::zeroed() },
    );
    let ptr: *mut libc::sem_t = &mut *raw;
    // SAFETY: `ptr` is an aligned sem_t that outlives every use below
    // (threads are scoped); pshared = 1 as in the ring.
    let sem = unsafe { common::psem::SharedSem::init(ptr, 0) }.context("sem_init")?;
    // SAFETY: the sem_t's first 8 bytes, aligned; an atomic load is sound
    // while glibc changes them in another thread.
    let data = unsafe { &*ptr.cast::<std::sync::atomic::AtomicU64>() };
    let look = || {
        let d = data.load(Ordering::SeqCst);
        (d as u32, (d >> 32) as u32) // (value, nwaiters)
    };
    let (value, waiters) = look();
    if (value, waiters) != (0, 0) {
        bail!("a fresh sem_t(0) reads value {value}, nwaiters {waiters}: not glibc's layout");
    }
    sem.post().context("sem_post")?;
    let (value, waiters) = look();
    if (value, waiters) != (1, 0) {
        bail!("after sem_post with no waiter: value {value}, nwaiters {waiters}, expected 1, 0");
    }
    say.step(format!(
        "a sem_t is one 64-bit word here: value (low 32 bits, also the futex word) and \
         nwaiters (high 32 bits). sem_init(0), then sem_post with nobody waiting: value \
         {value}, nwaiters {waiters}: glibc's sem_post adds the token with a compare-and-swap \
         and calls FUTEX_WAKE only when nwaiters is not 0, so this post made no system call"
    ));
    let pair = nanos_each(100_000, || {
        sem.post().context("sem_post")?;
        match sem
            .wait_for(Duration::from_secs(1))
            .context("sem_timedwait")?
        {
            common::psem::Wait::Acquired => Ok(()),
            other => bail!("sem_timedwait with a token there: {other:?}"),
        }
    })?;
    let word = std::sync::atomic::AtomicU32::new(0);
    let wake = nanos_each(100_000, || futex::futex_wake(&word, 1).map(drop))?;
    say.step(format!(
        "measured: a sem_post + sem_wait pair that finds the token costs {pair:.0} ns (two \
         atomic instructions, no system call); a FUTEX_WAKE system call that wakes nobody \
         costs {wake:.0} ns by itself"
    ));
    // Take the token back, then let a thread wait on the empty semaphore.
    let _ = sem.try_wait().context("sem_trywait")?;
    let waiter = ThreadSem(sem);
    let (sleeping, woke) = std::thread::scope(|scope| -> Result<(String, (u32, u32))> {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = scope.spawn(move || {
            let waiter = waiter;
            let _ = tid_tx.send(gettid());
            waiter.0.wait_for(Duration::from_secs(30))
        });
        let tid = tid_rx.recv().context("the waiting thread did not start")?;
        let sleeping = until_asleep(tid, "the sem_wait thread", &|| look() == (0, 1));
        // Whatever happened, post once so the thread ends.
        let _ = sem.post();
        let outcome = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the waiter panicked"))?;
        match outcome.context("sem_timedwait in the thread")? {
            common::psem::Wait::Acquired => {}
            other => bail!("the sem_wait thread ended with {other:?}, not the token"),
        }
        Ok((sleeping?, look()))
    })?;
    say.step(format!(
        "a thread calls sem_wait on the empty semaphore: value 0, nwaiters 1 (it counted \
         itself in), and {sleeping}: FUTEX_WAIT on the value word, expecting 0"
    ));
    if woke != (0, 0) {
        bail!(
            "after the post and the wake: value {}, nwaiters {}",
            woke.0,
            woke.1
        );
    }
    say.step(
        "sem_post: value 1 with nwaiters 1, so it called FUTEX_WAKE; the thread woke, took \
         the token and counted itself out: value 0, nwaiters 0. That is the price the \
         semaphore ring pays whenever a side sleeps: one FUTEX_WAKE, one wake-up, one \
         context switch",
    );
    // SAFETY: the thread is joined; nobody uses the semaphore any more.
    unsafe { sem.destroy() }.context("sem_destroy")?;
    drop(raw);
    Ok(())
}

/// Step 4: receive every message from the sender child, each checked in
/// place; then reap the child and show the waits and wakes.
fn futex_transfer(
    opts: &Options,
    ring: &futex::Ring,
    mut sender: Peer,
    say: &Narrator,
) -> Result<(CheckReport, Duration)> {
    let pid = sender.pid();
    let mut peer_gone = || sender_gone(&mut sender);
    let (report, elapsed, _) =
        futex::receive(ring, Some(opts.count), opts.timeout, say, &mut peer_gone)?;
    let exit = sender.wait(Some(Duration::from_secs(60)))?;
    say.step(format!("the sender (pid {pid}) {exit}"));
    if !exit.success() {
        bail!("the sender (pid {pid}) {exit}");
    }
    ipc_posix::futex_counts(ring, report.received, say);
    let (sent, got) = (ring.sender_stats(), ring.receiver_stats());
    let published = ring.header().to_receiver.counter.load(Ordering::Relaxed);
    // What always holds, whatever the timing: at most one wake per
    // published slot, none that woke more than it was asked to.
    if sent.wakes >= u64::from(published) || sent.woken > sent.wakes {
        bail!(
            "{} FUTEX_WAKE calls (waking {}) for {published} slots: more than one per slot",
            sent.wakes,
            sent.woken
        );
    }
    if ring.strategy() != futex::Strategy::SpinFutex
        && (sent.waits, sent.wakes, got.waits, got.wakes) != (0, 0, 0, 0)
    {
        bail!("a {} ring made futex calls", ring.strategy().name());
    }
    say.step(format!(
        "a semaphore ring makes one sem_post per slot ({published} here); this ring made {} \
         FUTEX_WAKE calls: only when the receiver had said \"I sleep\". How many depends on \
         timing (a loaded machine makes the receiver sleep more often); never more than one \
         per slot",
        sent.wakes
    ));
    Ok((report, elapsed))
}

/// Step 5: on a scratch ring (two threads of this process: a shared futex
/// is keyed by the page, the same between threads as between processes),
/// a sender writing to a receiver that is busy makes no FUTEX_WAKE; one
/// writing to a receiver asleep makes exactly one.
fn skip_the_wake(say: &Narrator) -> Result<()> {
    check_stop()?;
    let ring = futex::Ring::anonymous(4, 64, futex::Strategy::SpinFutex)?;
    let mut never = || None;
    let mut writer = futex::Writer::new(&ring);
    let mut reader = futex::Reader::new(&ring);
    // (a) The receiver is busy elsewhere (here: not reading at all).
    for seq in 0..4 {
        writer.write(seq, 64, &mut never)?;
    }
    let flag = &ring.header().to_receiver.sleeping;
    if writer.stats().wakes != 0 {
        bail!("a sender whose receiver never slept made a FUTEX_WAKE call");
    }
    for seq in 0..4 {
        let got = reader
            .receive(&mut never)?
            .context("end marker too early")?;
        if got.seq != seq || got.body != payload::make(seq, 64) || !got.in_place {
            bail!("scratch ring: message {seq} came back wrong");
        }
    }
    reader.release()?;
    if reader.stats().waits != 0 {
        bail!("a receiver that found 4 messages waiting still called FUTEX_WAIT");
    }
    say.step(
        "4 messages written while the receiver was busy (not waiting): its sleeping flag \
         stayed 0, so the sender made 0 FUTEX_WAKE calls; the receiver then found all 4 \
         in place and made 0 FUTEX_WAIT calls. Neither side entered the kernel",
    );
    // (b) The receiver is asleep. A thread receives on the empty ring; we
    // publish once it says so and the kernel shows it blocked in futex(2).
    // (Its FUTEX_WAIT lasts one 100 ms tick at a time; if a tick ends
    // just as we publish, it sees the message without a wake: try again.)
    let mut attempt = 0;
    let (seen, wakes, woken, waits) = loop {
        attempt += 1;
        check_stop()?;
        let before = writer.stats();
        let outcome = std::thread::scope(|scope| -> Result<(String, futex::Stats, u64)> {
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            let reader = &mut reader;
            let thread = scope.spawn(move || -> Result<(u64, futex::Stats)> {
                let _ = tid_tx.send(gettid());
                let waits_before = reader.stats();
                let mut never = || None;
                let got = reader.receive(&mut never)?.context("end marker")?.seq;
                reader.release()?;
                let after = reader.stats();
                Ok((
                    got,
                    futex::Stats {
                        waits: after.waits - waits_before.waits,
                        ..after
                    },
                ))
            });
            let tid = tid_rx
                .recv()
                .context("the receiving thread did not start")?;
            let seen = until_asleep(tid, "the receiving thread", &|| {
                flag.load(Ordering::SeqCst) == 1
            });
            // Publish in any case, so the thread ends.
            writer.write(100 + attempt, 64, &mut never)?;
            let (seq, stats) = thread
                .join()
                .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))??;
            if seq != 100 + attempt {
                bail!("the sleeping receiver got message {seq}");
            }
            Ok((seen?, stats, seq))
        })?;
        let (seen, stats, _) = outcome;
        let after = writer.stats();
        let (wakes, woken) = (after.wakes - before.wakes, after.woken - before.woken);
        if wakes > 1 || woken > wakes {
            bail!("one message to a sleeping receiver took {wakes} FUTEX_WAKE calls");
        }
        if (wakes, woken) == (1, 1) || attempt == 5 {
            break (seen, wakes, woken, stats.waits);
        }
    };
    if (wakes, woken) != (1, 1) {
        bail!(
            "5 times the sleeping receiver was not woken by a FUTEX_WAKE (its 100 ms tick \
             ended each time just as the message came?)"
        );
    }
    say.step(format!(
        "then the receiver waits on the empty ring: it spun for {} µs, stored 1 in its flag, \
         looked once more, and {seen}. One message: the sender saw the flag, swapped it to 0 \
         and made {wakes} FUTEX_WAKE call, which woke {woken} (the receiver called FUTEX_WAIT \
         {waits} time(s)){}",
        futex::SPIN_TIME.as_micros(),
        if attempt > 1 {
            format!(" [attempt {attempt}: before, a 100 ms tick ended just as we published]")
        } else {
            String::new()
        }
    ));
    say.step(
        "why the flag: the sender cannot know otherwise whether the receiver sleeps, and a \
         FUTEX_WAKE for a receiver that is awake is a system call for nothing. Why it is \
         safe: the receiver stores its flag, then (SeqCst fence) looks at the counter again \
         before it sleeps; the sender stores the counter, then (SeqCst fence) looks at the \
         flag. One of them always sees the other's store, and FUTEX_WAIT itself refuses to \
         sleep if the counter moved in between (EAGAIN): no wake-up is ever lost",
    );
    writer.end(&mut never)?;
    if reader.receive(&mut never)?.is_some() {
        bail!("scratch ring: a message after the last one");
    }
    Ok(())
}

/// One run of `count` 64-byte messages from a forked child through
/// `write`, read here by `read`: the reading thread's (wall time, blocks).
fn forked_run(
    count: u64,
    write: &dyn Fn(u64, futex::PeerGone<'_>) -> Result<()>,
    read: &mut dyn FnMut(futex::PeerGone<'_>) -> Result<u64>,
) -> Result<(Duration, u64)> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork, getppid};
    let parent = nix::unistd::getpid();
    // SAFETY: the story has no other threads at this point (earlier
    // helpers were scoped and joined), so the child may run Rust code; it
    // leaves with _exit, running no destructor of the parent's objects.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let mut parent_gone = || (getppid() != parent).then(|| "the story exited".into());
            let code = (0..count).try_for_each(|seq| write(seq, &mut parent_gone));
            // SAFETY: _exit ends the child without running atexit handlers
            // or the destructors of objects the parent owns.
            unsafe { libc::_exit(i32::from(code.is_err())) }
        }
        ForkResult::Parent { child } => {
            let mut reaped = None;
            let mut child_gone = || {
                if reaped.is_none() {
                    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) => return None,
                        other => reaped = Some(other),
                    }
                }
                Some(format!("the writing child (pid {child}) exited"))
            };
            let (_, blocks_before) = thread_usage()?;
            let start = Instant::now();
            let got = read(&mut child_gone);
            let elapsed = start.elapsed();
            let (_, blocks_after) = thread_usage()?;
            let status = match reaped {
                Some(status) => status,
                None => {
                    if got.is_err() {
                        // We stopped reading (Ctrl-C, an error): the child
                        // would wait for us forever on a full ring.
                        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    }
                    waitpid(child, None)
                }
            };
            let got = got?;
            match status {
                Ok(WaitStatus::Exited(_, 0)) => {}
                other => bail!("the writing child ended with {other:?}"),
            }
            if got != count {
                bail!("read {got} of {count} messages");
            }
            Ok((elapsed, blocks_after - blocks_before))
        }
    }
}

/// Step 6: the same 64-byte messages through the semaphore ring and the
/// futex ring, a forked child writing, this process reading. What is
/// measured: the time, and how often the reader blocked (voluntary
/// context switches, getrusage). Both figures depend on the machine and
/// its load; the story prints them and asserts only that all arrived.
fn semaphores_against_futexes(say: &Narrator) -> Result<()> {
    check_stop()?;
    const COUNT: u64 = 20_000;
    const SLOTS: u32 = 8;
    // The semaphore ring, as ipc-bench builds it: an anonymous MAP_SHARED
    // mapping shared with the child, two sem_t with pshared = 1.
    let len = ring::segment_len(SLOTS, 64);
    let map = nix::sys::mman::MapFlags::MAP_SHARED;
    let size = std::num::NonZeroUsize::new(len).context("empty ring")?;
    // SAFETY: a fresh mapping at a kernel-chosen address overlaps nothing.
    let raw = unsafe {
        nix::sys::mman::mmap_anonymous(
            None,
            size,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            map,
        )
    }
    .context("mmap(MAP_SHARED|MAP_ANONYMOUS)")?;
    // SAFETY: the mapping just made, `len` bytes; the Segment unmaps it.
    let mut segment = unsafe { Segment::new(raw, len, ring::Detach::Munmap) };
    segment.init_header(SLOTS, 64, SYNC_POSIX);
    // SAFETY: both sem_t lie in the new mapping, unused so far.
    unsafe {
        common::psem::SharedSem::init(segment.header().empty.get(), SLOTS)
            .context("sem_init(empty)")?;
        common::psem::SharedSem::init(segment.header().full.get(), 0).context("sem_init(full)")?;
    }
    segment.publish();
    // SAFETY: initialised just above; `segment` outlives both runs.
    let sems = unsafe { segment.posix_sems() };
    let (sem_time, sem_blocks) = forked_run(
        COUNT,
        &|seq, gone| {
            let mut writer = ring::Writer::new(&segment, sems);
            writer.resume_at((seq % u64::from(SLOTS)) as usize);
            writer.write(seq, 64, gone)
        },
        &mut |gone| {
            let mut reader = ring::Reader::new(&segment, sems);
            let mut message = Vec::new();
            let mut checker = payload::Checker::new(Some(COUNT));
            for _ in 0..COUNT {
                let seq = reader
                    .read(&mut message, gone)?
                    .context("no end marker here")?;
                checker.check_numbered(seq, &message);
            }
            let report = checker.report();
            if report.errors() > 0 {
                bail!("semaphore ring: {report}");
            }
            Ok(report.received)
        },
    )?;
    // The futex ring, same shape.
    let fring = futex::Ring::anonymous(SLOTS, 64, futex::Strategy::SpinFutex)?;
    let writer = std::cell::RefCell::new(futex::Writer::new(&fring));
    let (fx_time, fx_blocks) = forked_run(
        COUNT,
        &|seq, gone| writer.borrow_mut().write(seq, 64, gone),
        &mut |gone| {
            let mut reader = futex::Reader::new(&fring);
            let mut checker = payload::Checker::new(Some(COUNT));
            for _ in 0..COUNT {
                let got = reader.receive(gone)?.context("no end marker here")?;
                checker.check_numbered(got.seq, got.body);
            }
            reader.release()?;
            reader.store_stats();
            let report = checker.report();
            if report.errors() > 0 {
                bail!("futex ring: {report}");
            }
            Ok(report.received)
        },
    )?;
    let per = |t: Duration| t.as_nanos() as f64 / COUNT as f64;
    let share = |n: u64| 100.0 * n as f64 / COUNT as f64;
    let (got, sent) = (fring.receiver_stats(), fring.sender_stats());
    say.step(format!(
        "{COUNT} messages of 64 bytes, a forked child writing, this process reading, {SLOTS} \
         slots. Semaphore ring: {:.0} ns per message; the reader blocked {sem_blocks} times \
         ({:.1} per 100 messages; voluntary context switches, getrusage). Futex ring: {:.0} ns \
         per message; the reader blocked {fx_blocks} times ({:.1} per 100 messages) in {} \
         FUTEX_WAIT calls, and the writer made {} FUTEX_WAKE calls",
        per(sem_time),
        share(sem_blocks),
        per(fx_time),
        share(fx_blocks),
        got.waits,
        sent.wakes
    ));
    let ratio = per(fx_time) / per(sem_time);
    // What this run showed decides the sentence: on a loaded machine a
    // spinning reader loses its CPU too, and then sleeps as often.
    let this_run = if ratio < 1.0 {
        format!(
            "on this run the futex ring took {ratio:.2} times the semaphore ring's time per \
             message, and its reader blocked {fx_blocks} times against {sem_blocks}"
        )
    } else {
        format!(
            "on this run the futex ring was not faster ({ratio:.2} times the semaphore ring's \
             time per message): its reader blocked {fx_blocks} times against {sem_blocks}, so \
             here the spin rarely caught the next message (another process on the cores, or \
             a writer descheduled mid-spin, makes a spinning reader sleep too)"
        )
    };
    say.step(format!(
        "{this_run}. Why a semaphore ring is slow at small messages: every slot costs a \
         sem_post + sem_wait pair, and a reader that empties the ring faster than the writer \
         fills it falls asleep in sem_wait again and again: then a message costs the writer a \
         FUTEX_WAKE system call and the reader a wake-up and a context switch (microseconds, \
         for 64 bytes that take nanoseconds to copy). The futex ring's reader spins for {} µs \
         before it sleeps: a message that arrives meanwhile costs neither side a system call",
        futex::SPIN_TIME.as_micros()
    ));
    drop(segment); // munmap(2) (no sem_destroy needed for memory that goes now)
    Ok(())
}

/// Step 7: a waiter with nothing to wait for, for about a second: asleep
/// in FUTEX_WAIT it costs (almost) no CPU; spinning it costs a core.
/// getrusage(RUSAGE_THREAD) in the waiting thread itself measures it.
fn idle_cost(say: &Narrator) -> Result<()> {
    check_stop()?;
    let idle_wait =
        |strategy: futex::Strategy, wait: Duration| -> Result<(Duration, Duration, futex::Stats)> {
            let ring = futex::Ring::anonymous(2, 64, strategy)?;
            std::thread::scope(|scope| {
                let thread = scope.spawn(|| -> Result<(Duration, Duration, futex::Stats)> {
                    let mut reader = futex::Reader::new(&ring);
                    let mut never = || None;
                    let (cpu_before, _) = thread_usage()?;
                    let start = Instant::now();
                    let got = reader.receive(&mut never)?;
                    let waited = start.elapsed();
                    let (cpu_after, _) = thread_usage()?;
                    if got.is_some() {
                        bail!("the idle ring delivered a message");
                    }
                    Ok((waited, cpu_after - cpu_before, reader.stats()))
                });
                // Idle for `wait` (in short naps, so Ctrl-C is not kept
                // waiting), then the end marker.
                let until = Instant::now() + wait;
                while Instant::now() < until && common::cleanup::stop_requested().is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let mut never = || None;
                futex::Writer::new(&ring).end(&mut never)?;
                thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("the waiting thread panicked"))?
            })
        };
    let (waited, cpu, stats) = idle_wait(futex::Strategy::SpinFutex, Duration::from_secs(1))?;
    // What always holds: asleep, it runs only at its 100 ms ticks.
    if cpu > waited / 10 {
        bail!(
            "a futex waiter used {:.1} ms of CPU in {:.2} s: more than a tenth",
            cpu.as_secs_f64() * 1e3,
            waited.as_secs_f64()
        );
    }
    say.step(format!(
        "a receiver waiting {:.2} s on an empty ring by spin-then-futex used {:.3} ms of CPU \
         ({:.3}% of the time, getrusage): {} FUTEX_WAIT calls (one per 100 ms tick, when it \
         looks at Ctrl-C and its peer), {} spin iterations in all",
        waited.as_secs_f64(),
        cpu.as_secs_f64() * 1e3,
        100.0 * cpu.as_secs_f64() / waited.as_secs_f64(),
        stats.waits,
        stats.spins
    ));
    let (waited, cpu, stats) = idle_wait(futex::Strategy::Spin, Duration::from_millis(300))?;
    let (ywaited, ycpu, ystats) =
        idle_wait(futex::Strategy::SpinYield, Duration::from_millis(300))?;
    say.step(format!(
        "for comparison, {:.2} s of spinning used {:.0} ms of CPU ({:.0}%, {} spin \
         iterations), and {:.2} s of spin-then-sched_yield {:.0} ms ({:.0}%, {} yields): a \
         waiter that never sleeps stays runnable all the time and burns whatever CPU the \
         scheduler gives it (on an idle core, all of it; less when other work shares the \
         cores), where the futex waiter ran only at its ticks",
        waited.as_secs_f64(),
        cpu.as_secs_f64() * 1e3,
        100.0 * cpu.as_secs_f64() / waited.as_secs_f64(),
        stats.spins,
        ywaited.as_secs_f64(),
        ycpu.as_secs_f64() * 1e3,
        100.0 * ycpu.as_secs_f64() / ywaited.as_secs_f64(),
        ystats.yields
    ));
    Ok(())
}
