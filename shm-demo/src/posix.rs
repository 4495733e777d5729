//! The POSIX variant: `shm_open` + `ftruncate` + `mmap` for the memory,
//! `sem_init(pshared = 1)` semaphores inside it, `shm_unlink` to remove it.
//! The object is a file in `/dev/shm`, named `/NAME`.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::cleanup::{ShmGuard, unique_name};
use common::peer::{Peer, alive};
use common::psem::SharedSem;
use common::report::Narrator;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, shm_open, shm_unlink};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::ftruncate;

use crate::Options;
use shm_demo::ring::{
    self, Detach, HEADER_SPACE, MAX_SLOT_SIZE, MAX_SLOTS, SYNC_POSIX, Segment, pid_gone,
    segment_len,
};

const MECHANISM: &str = "shm";

/// mmap `len` bytes of `fd`, shared: stores become visible to every process
/// that maps the same object (MAP_PRIVATE would copy on write instead).
fn map(fd: &OwnedFd, len: usize, prot: ProtFlags) -> Result<Segment> {
    let size = NonZeroUsize::new(len).context("empty segment")?;
    // SAFETY: a fresh mapping chosen by the kernel (addr None) overlaps no
    // Rust object; from here on it is reached only through the Segment.
    let base = unsafe { mmap(None, size, prot, MapFlags::MAP_SHARED, fd.as_fd(), 0) }
        .context("mmap(MAP_SHARED)")?;
    // SAFETY: `base..base+len` is the mapping mmap just made.
    Ok(unsafe { Segment::new(base, len, Detach::Munmap) })
}

/// (device, inode) of an open object, to recognise it again by name.
fn identity(fd: &OwnedFd) -> Result<(u64, u64)> {
    let st = fstat(fd.as_fd()).context("fstat")?;
    Ok((st.st_dev, st.st_ino))
}

/// What `ls -l /dev/shm/NAME` would say.
pub fn dev_shm_line(name: &str) -> String {
    let path = format!("/dev/shm{name}");
    match std::fs::metadata(&path) {
        Ok(meta) => {
            use std::os::unix::fs::MetadataExt;
            format!(
                "{path}: {} bytes, mode {:04o}, owner uid {}",
                meta.len(),
                meta.mode() & 0o7777,
                meta.uid()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!("{path}: no such file, gone"),
        Err(e) => format!("{path}: {e}"),
    }
}

/// The receiver's segment. Dropping it destroys the semaphores (only once
/// the peer is known to be finished), unmaps, and unlinks the name.
struct Owned {
    segment: Segment,
    _unlink: ShmGuard,
    /// Set once no other process can be waiting on the semaphores.
    peer_done: bool,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.peer_done {
            // SAFETY: the receiver sem_init'ed both; the peer has finished
            // or died, so nobody waits on them, and we use them no more.
            unsafe {
                let header = self.segment.header();
                let _ = SharedSem::attach(header.empty.get()).destroy();
                let _ = SharedSem::attach(header.full.get()).destroy();
            }
        }
        // Then the Segment unmaps, then the ShmGuard unlinks the name.
    }
}

fn create(name: &str, slots: u32, slot_size: u32, say: &Narrator) -> Result<Owned> {
    let len = segment_len(slots, slot_size);
    // O_EXCL: fail rather than reuse a segment someone else made.
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let mode = Mode::S_IRUSR | Mode::S_IWUSR;
    let fd = match shm_open(name, flags, mode) {
        Err(Errno::EEXIST) => {
            remove_if_stale(name, say)?;
            shm_open(name, flags, mode)
        }
        other => other,
    }
    .with_context(|| format!("shm_open({name}, O_CREAT|O_EXCL, 0600)"))?;
    let unlink = ShmGuard::new(name);
    say.step(format!(
        "shm_open({name}, O_CREAT|O_EXCL|O_RDWR, 0600): a new, empty object"
    ));
    // A new object has size 0; ftruncate gives it its size, zero-filled.
    ftruncate(fd.as_fd(), len as libc::off_t)
        .with_context(|| format!("ftruncate({name}, {len})"))?;
    let mut segment = map(&fd, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
    // The mapping keeps the object alive; the descriptor is not needed.
    drop(fd);
    say.step(format!(
        "ftruncate to {len} bytes, mmap(PROT_READ|PROT_WRITE, MAP_SHARED): {slots} slots \
         of {slot_size} bytes after a {HEADER_SPACE}-byte header"
    ));
    segment.init_header(slots, slot_size, SYNC_POSIX);
    let header = segment.header();
    // SAFETY: both sem_t lie inside our new mapping, aligned (repr(C)
    // header at a page boundary), and nobody else uses them yet (no MAGIC).
    unsafe {
        SharedSem::init(header.empty.get(), slots).context("sem_init(empty)")?;
        SharedSem::init(header.full.get(), 0).context("sem_init(full)")?;
    }
    say.step(format!(
        "sem_init(empty, pshared=1, {slots}): counts free slots; the sender waits on it, \
         so it never overwrites a slot the receiver has not read"
    ));
    say.step(
        "sem_init(full, pshared=1, 0): counts filled slots; the receiver waits on it, so it \
         never reads a slot the sender is still writing. pshared=1: the semaphores live in \
         the shared segment and work between processes",
    );
    segment.publish();
    say.step(format!("seen from outside: {}", dev_shm_line(name)));
    Ok(Owned {
        segment,
        _unlink: unlink,
        peer_done: false,
    })
}

/// A segment already exists under our name. If it is one of ours whose
/// receiver is gone (a crashed or killed run), remove it; anything else is
/// refused and left alone.
fn remove_if_stale(name: &str, say: &Narrator) -> Result<()> {
    let verdict = match owner_of(name) {
        Ok(Some(owner)) if alive(owner) => {
            bail!(
                "shared memory {name} is in use by a receiver, pid {owner}: choose another --name"
            )
        }
        Ok(Some(owner)) => format!("left by a run whose receiver (pid {owner}) is gone"),
        Ok(None) => bail!(
            "shared memory {name} exists and is not a shm-demo segment: refusing to remove it; \
             choose another --name (or remove /dev/shm{name} yourself)"
        ),
        Err(e) => return Err(e.context(format!("inspecting the existing {name}"))),
    };
    say.step(format!(
        "shared memory {name} already exists, {verdict}: stale, removing it"
    ));
    shm_unlink(name).with_context(|| format!("shm_unlink({name})"))
}

/// The receiver pid of an existing segment of ours, `None` if not ours.
fn owner_of(name: &str) -> Result<Option<i32>> {
    let fd = shm_open(name, OFlag::O_RDONLY, Mode::empty())
        .with_context(|| format!("shm_open({name}, O_RDONLY)"))?;
    let size = fstat(fd.as_fd()).context("fstat")?.st_size;
    if size < HEADER_SPACE as i64 {
        return Ok(None);
    }
    // Just the header, read-only: we may not own this.
    let segment = map(&fd, HEADER_SPACE, ProtFlags::PROT_READ)?;
    let header = segment.header();
    if header.magic.load(std::sync::atomic::Ordering::Acquire) != ring::MAGIC {
        return Ok(None);
    }
    Ok(Some(
        header
            .receiver_pid
            .load(std::sync::atomic::Ordering::Relaxed),
    ))
}

/// The sender's side: open the receiver's segment and check its header
/// before trusting a single field of it.
fn open(name: &str, say: &Narrator) -> Result<(Segment, (u64, u64))> {
    let fd = match shm_open(name, OFlag::O_RDWR, Mode::empty()) {
        Err(Errno::ENOENT) => bail!(
            "no shared memory named {name}: start 'shm-demo receiver --name {name}' first; \
             it creates the segment"
        ),
        other => other.with_context(|| format!("shm_open({name}, O_RDWR)"))?,
    };
    let size = usize::try_from(fstat(fd.as_fd()).context("fstat")?.st_size).unwrap_or(0);
    if size < HEADER_SPACE || size > segment_len(MAX_SLOTS, MAX_SLOT_SIZE) {
        bail!("{name} is {size} bytes: not a shm-demo segment (refusing to map it)");
    }
    let id = identity(&fd)?;
    let mut segment = map(&fd, size, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
    segment.validate(name, SYNC_POSIX)?;
    let (slots, slot_size) = segment.slots();
    say.step(format!(
        "shm_open({name}, O_RDWR) + mmap(MAP_SHARED): header checked (magic, version, \
         {slots} slots of {slot_size} bytes, {size} bytes in all)"
    ));
    Ok((segment, id))
}

/// Unlink `name` if it still names the object we mapped (a new receiver
/// may already have made a new segment under the same name).
fn remove_orphan(name: &str, id: (u64, u64), say: &Narrator) {
    let same = shm_open(name, OFlag::O_RDONLY, Mode::empty())
        .ok()
        .and_then(|fd| identity(&fd).ok())
        .is_some_and(|other| other == id);
    if same && shm_unlink(name).is_ok() {
        say.step(format!(
            "the receiver died without cleaning up: shm_unlink({name}) done for it"
        ));
    }
}

pub fn sender(opts: &Options, name: &str) -> Result<()> {
    let say = Narrator::new("sender", opts.quiet, common::report::Stream::Stdout);
    let (segment, id) = open(name, &say)?;
    // SAFETY: validate() checked the header says SYNC_POSIX, so the
    // receiver sem_init'ed both before publishing; `segment` outlives them.
    let sems = unsafe { segment.posix_sems() };
    let elapsed = match ring::send(&segment, sems, opts.count, opts.size, &say) {
        Ok(elapsed) => elapsed,
        Err(e) => {
            // A receiver killed by SIGKILL ran no cleanup: its segment
            // would stay in /dev/shm. The survivor removes it.
            if pid_gone("receiver", &segment.header().receiver_pid).is_some() {
                remove_orphan(name, id, &say);
            }
            return Err(e);
        }
    };
    say.step("wrote the end marker; unmapping (the receiver owns the name and removes it)");
    ring::sender_summary(MECHANISM, opts.count, opts.size, elapsed, &say);
    Ok(())
}

pub fn receiver(opts: &Options, name: &str) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, common::report::Stream::Stdout);
    let mut owned = create(name, opts.slots, opts.slot_size, &say)?;
    say.step(format!(
        "waiting for a sender: shm-demo sender --name {name}"
    ));
    let header = owned.segment.header();
    let mut peer_gone = || pid_gone("sender", &header.sender_pid);
    // SAFETY: we sem_init'ed both in create(); `owned` outlives them.
    let sems = unsafe { owned.segment.posix_sems() };
    let expected = opts.count_given.then_some(opts.count);
    let outcome = ring::receive(&owned.segment, sems, expected, &say, &mut peer_gone);
    // Normal end or a dead sender: nobody can be waiting on the semaphores.
    // (After Ctrl-C a live sender might be, so they are left to vanish with
    // the memory rather than be destroyed under a waiter.)
    owned.peer_done = match &outcome {
        Ok(_) => true,
        Err(_) => pid_gone("sender", &header.sender_pid).is_some(),
    };
    let (report, elapsed) = outcome?;
    ring::finish_receiving(MECHANISM, report, elapsed, &say)?;
    drop(owned);
    say.step(format!(
        "sem_destroy, munmap, shm_unlink({name}): {}",
        dev_shm_line(name)
    ));
    Ok(())
}

pub fn story(opts: &Options) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, common::report::Stream::Stdout);
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
    say.line("\n== 1. Create the segment and its semaphores ==");
    let mut owned = create(&name, opts.slots, opts.slot_size, &say)?;

    say.line("\n== 2. Start the sender: a separate program that opens the segment by name ==");
    let mut sender = Peer::spawn_self(&opts.sender_args(&["sender", "--name", &name]))?;
    say.step(format!("started the sender, pid {}", sender.pid()));

    say.line("\n== 3. The bounded buffer: wait(full), read, post(empty) ==");
    let mut peer_gone = || match sender.try_wait() {
        Ok(Some(exit)) => Some(format!("the sender (pid {}) {exit}", sender.pid())),
        Ok(None) => None,
        Err(e) => Some(format!("{e:#}")),
    };
    // SAFETY: we sem_init'ed both in create(); `owned` outlives them.
    let sems = unsafe { owned.segment.posix_sems() };
    let outcome = ring::receive(&owned.segment, sems, Some(opts.count), &say, &mut peer_gone);
    // Whatever happened, the sender is finished after this: waited for, or
    // stopped and reaped by Peer's drop. Then the semaphores can go.
    let exit = match &outcome {
        Ok(_) => Some(sender.wait(Some(Duration::from_secs(60)))?),
        Err(_) => None,
    };
    let pid = sender.pid();
    drop(sender);
    owned.peer_done = true;
    let (report, elapsed) = outcome?;
    if let Some(exit) = exit {
        say.step(format!("the sender (pid {pid}) {exit}"));
        if !exit.success() {
            bail!("the sender (pid {pid}) {exit}");
        }
    }

    say.line("\n== 4. Clean up ==");
    drop(owned);
    say.step(format!(
        "sem_destroy(empty), sem_destroy(full), munmap, shm_unlink({name})"
    ));
    say.step(format!("seen from outside: {}", dev_shm_line(&name)));
    say.line("");
    ring::finish_receiving(MECHANISM, report, elapsed, &say)
}
