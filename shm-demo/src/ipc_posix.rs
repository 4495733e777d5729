//! The mechanism, part 2 of 3: POSIX shared memory. `shm_open` +
//! `ftruncate` + `posix_fallocate` + `mmap` for the memory, two
//! `sem_init(pshared = 1)` semaphores inside it, `sem_destroy`, `munmap`
//! and `shm_unlink` to remove it. The object is a file in `/dev/shm`,
//! named `/NAME`. The ring that runs in it is `ipc_ring.rs` (part 1).
//!
//! Read top to bottom: `create` (the receiver makes the object), `open`
//! (the sender finds it), then the two roles. Where a `Drop` unmaps or
//! unlinks, the line says so. The checks (owner, header, SIGBUS) are in
//! `checks.rs`; each call site says which one it makes.

use std::ffi::{CString, c_void};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use common::cleanup::ShmGuard;
use common::psem::SharedSem;
use common::report::Narrator;
use nix::errno::Errno;
use nix::fcntl::{OFlag, posix_fallocate};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, shm_open, shm_unlink};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::ftruncate;

use crate::Options;
use shm_demo::checks::{self, Cleanup, MapsId, check_owner, maps_segment};
use shm_demo::ipc_futex::{self as futex, Ring, Strategy};
use shm_demo::ipc_ring::{
    self as ring, Detach, HEADER_SPACE, MAX_SLOT_SIZE, MAX_SLOTS, SYNC_POSIX, Segment, segment_len,
};

pub const MECHANISM: &str = "shm";

/// mmap `len` bytes of `fd`, shared: stores become visible to every process
/// that maps the same object (MAP_PRIVATE would copy on write instead).
/// The Segment's `Drop` is the `munmap(2)`.
pub fn map(fd: &OwnedFd, len: usize, prot: ProtFlags) -> Result<Segment> {
    let base = map_raw(fd, len, prot)?;
    // SAFETY: `base..base+len` is the mapping mmap just made.
    Ok(unsafe { Segment::new(base, len, Detach::Munmap) })
}

/// The same for the futex ring (`ipc_futex::Ring`'s `Drop` is the munmap).
pub fn map_futex(fd: &OwnedFd, len: usize, prot: ProtFlags) -> Result<Ring> {
    if len < futex::HEADER_SPACE {
        bail!("a {len}-byte object is too small for a futex segment's header");
    }
    let base = map_raw(fd, len, prot)?;
    // SAFETY: `base..base+len` is the mapping mmap just made, long enough.
    Ok(unsafe { Ring::new(base, len) })
}

fn map_raw(fd: &OwnedFd, len: usize, prot: ProtFlags) -> Result<NonNull<c_void>> {
    let size = NonZeroUsize::new(len).context("empty segment")?;
    // SAFETY: a fresh mapping chosen by the kernel (addr None) overlaps no
    // Rust object; from here on it is reached only through its owner.
    unsafe { mmap(None, size, prot, MapFlags::MAP_SHARED, fd.as_fd(), 0) }
        .context("mmap(MAP_SHARED)")
}

/// (device, inode) of an open object, to recognise it again by name and
/// in a process's /proc/PID/maps.
pub fn identity(fd: &OwnedFd) -> Result<MapsId> {
    let st = fstat(fd.as_fd()).context("fstat")?;
    Ok(MapsId::File {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// The size, total and free, of the tmpfs behind /dev/shm.
// The casts matter where c_ulong and fsblkcnt_t are 32-bit.
#[allow(clippy::unnecessary_cast)]
fn dev_shm_space() -> String {
    match nix::sys::statvfs::statvfs("/dev/shm") {
        Ok(fs) => {
            let unit = fs.fragment_size() as u64;
            let mib = |blocks: u64| (blocks * unit) as f64 / (1024.0 * 1024.0);
            format!(
                "/dev/shm is {:.1} MiB, {:.1} MiB free",
                mib(fs.blocks() as u64),
                mib(fs.blocks_available() as u64)
            )
        }
        Err(e) => format!("statvfs(/dev/shm): {e}"),
    }
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

/// The receiver's segment. Dropping it does, in this order:
/// `sem_destroy` of both semaphores (only once the peer is known to be
/// finished: see `peer_done`), `munmap` (the `segment` field's `Drop`),
/// `shm_unlink(NAME)` (the `ShmGuard`'s `Drop`). Rust drops fields in
/// declaration order, which is why `segment` comes before `_unlink`.
pub struct Owned {
    pub segment: Segment,
    /// Device and inode: how a sender's /proc/PID/maps names it.
    pub id: MapsId,
    _unlink: ShmGuard,
    /// Set once no other process can be waiting on the semaphores.
    pub peer_done: bool,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.peer_done {
            // sem_destroy(3) each: a semaphore someone still waits on must
            // not be destroyed (undefined), hence only once the peer is done.
            // SAFETY: the receiver sem_init'ed both; the peer has finished
            // or died, so nobody waits on them, and we use them no more.
            unsafe {
                let header = self.segment.header();
                let _ = SharedSem::attach(header.empty.get()).destroy();
                let _ = SharedSem::attach(header.full.get()).destroy();
            }
        }
        // Then the fields drop: munmap(2) (Segment), shm_unlink(3) (ShmGuard).
    }
}

// ANCHOR: shm_create
/// The receiver's side: make the object, size it, reserve its pages, map
/// it, put the semaphores in it, and publish the header (MAGIC last).
pub fn create(name: &str, slots: u32, slot_size: u32, say: &Narrator) -> Result<Owned> {
    let len = segment_len(slots, slot_size);
    let (fd, unlink) = create_object(name, len, say)?;
    let id = identity(&fd)?;
    let mut segment = map(&fd, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
    // The mapping keeps the object alive; the descriptor is not needed.
    drop(fd); // close(2)
    // SIGBUS guard (checks.rs): a truncation by another process ends with a
    // message and our object removed, not "Bus error".
    guard_segment(name, segment.base(), len, Some(id))?;
    say.step(format!(
        "ftruncate to {len} bytes, posix_fallocate (the pages are reserved now: on a full \
         /dev/shm this fails with ENOSPC instead of a SIGBUS later), mmap(PROT_READ|PROT_WRITE, \
         MAP_SHARED): {slots} slots of {slot_size} bytes after a {HEADER_SPACE}-byte header"
    ));
    segment.init_header(slots, slot_size, SYNC_POSIX);
    let header = segment.header();
    // sem_init(3) with pshared = 1: the sem_t lives in the shared mapping,
    // so both processes' sem_post/sem_timedwait act on the same counter.
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
    // MAGIC last, with Release: a sender that sees it sees the rest.
    segment.publish();
    say.step(format!("seen from outside: {}", dev_shm_line(name)));
    Ok(Owned {
        segment,
        id,
        _unlink: unlink,
        peer_done: false,
    })
}

/// Both rings' first steps: make the object `name` (exactly one creator),
/// give it its size and reserve its pages. The guard unlinks it on drop.
fn create_object(name: &str, len: usize, say: &Narrator) -> Result<(OwnedFd, ShmGuard)> {
    // shm_open(3) with O_CREAT|O_EXCL: exactly one process creates the
    // object; a second gets EEXIST instead of sharing a half-made one.
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let mode = Mode::S_IRUSR | Mode::S_IWUSR;
    let fd = match shm_open(name, flags, mode) {
        Err(Errno::EEXIST) => {
            // Left by a killed run? Removed only if provably ours and
            // abandoned (a first reading may skip remove_if_stale).
            remove_if_stale(name, say)?;
            shm_open(name, flags, mode)
        }
        other => other,
    }
    .with_context(|| format!("shm_open({name}, O_CREAT|O_EXCL, 0600)"))?;
    // From here until Owned drops, the guard's Drop is shm_unlink(3).
    let unlink = ShmGuard::new(name);
    // fchmod(2): the mode given to shm_open is filtered by the umask: set it exactly.
    fchmod(fd.as_fd(), mode).with_context(|| format!("fchmod({name}, 0600)"))?;
    say.step(format!(
        "shm_open({name}, O_CREAT|O_EXCL|O_RDWR, 0600): a new, empty object"
    ));
    // ftruncate(2): a new object has size 0; this gives it its size, zero-filled.
    ftruncate(fd.as_fd(), len as libc::off_t)
        .with_context(|| format!("ftruncate({name}, {len})"))?;
    // posix_fallocate(3): ftruncate only sets the size; tmpfs finds a page
    // when it is first touched, and if /dev/shm is full by then the touch
    // is a SIGBUS, not an error code. This reserves every page now, or fails.
    match posix_fallocate(fd.as_fd(), 0, len as libc::off_t) {
        Ok(()) => {}
        Err(Errno::ENOSPC) => bail!(
            "posix_fallocate({name}, {len} bytes): ENOSPC, no space left: {}. Use fewer or \
             smaller slots (--slots, --slot-size), or a larger /dev/shm (Docker gives a \
             container 64 MiB: docker run --shm-size=256m ...)",
            dev_shm_space()
        ),
        Err(e) => return Err(e).with_context(|| format!("posix_fallocate({name}, {len})")),
    }
    Ok((fd, unlink))
}
// ANCHOR_END: shm_create

/// Arm the SIGBUS handler for this mapping; `ours` (the receiver): the
/// object it may unlink on the way out.
fn guard_segment(name: &str, base: *const c_void, len: usize, ours: Option<MapsId>) -> Result<()> {
    let cleanup = match ours {
        Some(MapsId::File { dev, ino }) => Cleanup::Unlink {
            path: CString::new(format!("/dev/shm{name}")).context("name with a NUL byte")?,
            dev,
            ino,
        },
        _ => Cleanup::Nothing,
    };
    checks::guard(&format!("/dev/shm{name}"), base, len, cleanup)
}

/// A segment already exists under our name. If it is one of ours (our
/// uid, our shape) whose receiver is gone (a crashed or killed run),
/// remove it; anything else is refused and left alone. Hardening: a first
/// reading may skip it.
fn remove_if_stale(name: &str, say: &Narrator) -> Result<()> {
    let fd = shm_open(name, OFlag::O_RDONLY, Mode::empty())
        .with_context(|| format!("shm_open({name}, O_RDONLY)"))?;
    check_owner(name, &fd, "remove")?; // ours? (checks.rs)
    let not_ours = || {
        anyhow::anyhow!(
            "shared memory {name} exists and is not a shm-demo segment: refusing to remove it; \
             choose another --name (or remove /dev/shm{name} yourself)"
        )
    };
    let size = usize::try_from(fstat(fd.as_fd()).context("fstat")?.st_size).unwrap_or(0);
    if size < HEADER_SPACE {
        return Err(not_ours());
    }
    // Just the header, read-only: it is ours to read, not yet to change.
    // (Truncated under us meanwhile, reading it would be a SIGBUS: armed.)
    let segment = map(&fd, HEADER_SPACE, ProtFlags::PROT_READ)?;
    guard_segment(name, segment.base(), HEADER_SPACE, None)?;
    let header = segment.header();
    let slots = header.slot_count.load(Ordering::Relaxed);
    let slot_size = header.slot_size.load(Ordering::Relaxed);
    // Either ring (both share these first bytes): its own length.
    let expected = match header.sync.load(Ordering::Relaxed) {
        futex::SYNC_FUTEX => futex::segment_len(slots, slot_size),
        _ => segment_len(slots, slot_size),
    };
    if header.magic.load(Ordering::Acquire) != ring::MAGIC
        || header.version.load(Ordering::Relaxed) != ring::VERSION
        || !(1..=MAX_SLOTS).contains(&slots)
        || !(1..=MAX_SLOT_SIZE).contains(&slot_size)
        || expected != size
    {
        return Err(not_ours());
    }
    // In use means: the receiver the header names still maps this very
    // object (its /proc/PID/maps says so), not just "that pid runs".
    let owner = header.receiver_pid.load(Ordering::Relaxed);
    if maps_segment(owner, identity(&fd)?).unwrap_or(true) {
        bail!("shared memory {name} is in use by a receiver, pid {owner}: choose another --name");
    }
    say.step(format!(
        "shared memory {name} already exists, ours, and its receiver (pid {owner}, which \
         no longer maps it) is gone: stale, removing it"
    ));
    // shm_unlink(3): the name goes; the memory goes with the last mapping.
    shm_unlink(name).with_context(|| format!("shm_unlink({name})"))
}

/// The sender's side: open the receiver's segment and check its owner and
/// header before trusting a single field of it.
pub fn open(name: &str, say: &Narrator) -> Result<(Segment, MapsId)> {
    let (fd, size) = open_object(name, "")?;
    let id = identity(&fd)?;
    let mut segment = map(&fd, size, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
    drop(fd); // close(2): the mapping keeps the object
    guard_segment(name, segment.base(), size, None)?; // SIGBUS guard (checks.rs)
    // The initialisation race: the receiver may still be filling the
    // header; wait (bounded) for its MAGIC, stored last.
    let magic = segment.wait_published();
    // Every header field checked before one is believed (checks.rs).
    checks::validate(&mut segment, magic, name, SYNC_POSIX)?;
    let (slots, slot_size) = segment.slots();
    say.step(format!(
        "shm_open({name}, O_RDWR) + mmap(MAP_SHARED): header checked (magic, version, \
         {slots} slots of {slot_size} bytes, {size} bytes in all)"
    ));
    Ok((segment, id))
}

/// Both rings' sender: open the receiver's object, check its owner and
/// size. `variant`: the receiver's command word ("" or "futex ").
fn open_object(name: &str, variant: &str) -> Result<(OwnedFd, usize)> {
    // shm_open(3) without O_CREAT: the receiver's object or ENOENT.
    let fd = match shm_open(name, OFlag::O_RDWR, Mode::empty()) {
        Err(Errno::ENOENT) => bail!(
            "no shared memory named {name}: start 'shm-demo {variant}receiver --name {name}' \
             first; it creates the segment"
        ),
        other => other.with_context(|| format!("shm_open({name}, O_RDWR)"))?,
    };
    check_owner(name, &fd, "write into")?; // ours? (checks.rs)
    // fstat(2): the object's real size, which bounds what we map (the
    // futex layout is the longer of the two).
    let size = usize::try_from(fstat(fd.as_fd()).context("fstat")?.st_size).unwrap_or(0);
    if size < HEADER_SPACE || size > futex::segment_len(MAX_SLOTS, MAX_SLOT_SIZE) {
        bail!("{name} is {size} bytes: not a shm-demo segment (refusing to map it)");
    }
    Ok((fd, size))
}

/// Unlink `name` if it still names the object we mapped (a new receiver
/// may already have made a new segment under the same name).
fn remove_orphan(name: &str, id: MapsId, say: &Narrator) {
    let same = shm_open(name, OFlag::O_RDONLY, Mode::empty())
        .ok()
        .and_then(|fd| identity(&fd).ok())
        .is_some_and(|other| other == id);
    // shm_unlink(3) for the dead receiver, which ran no cleanup.
    if same && shm_unlink(name).is_ok() {
        say.step(format!(
            "the receiver died without cleaning up: shm_unlink({name}) done for it"
        ));
    }
}

pub fn sender(opts: &Options, name: &str) -> Result<()> {
    let say = Narrator::new("sender", opts.quiet, common::report::Stream::Stdout);
    let (segment, id) = open(name, &say)?;
    let receiver_pid = segment.header().receiver_pid.load(Ordering::Relaxed);
    // The receiver must map this segment; then a pidfd watches it, and
    // the compare-and-swap claim makes us the one sender.
    let receiver = ring::attach_as_sender(&segment.header().sender_pid, receiver_pid, id, &say)?;
    // SAFETY: validate checked the header says SYNC_POSIX, so the
    // receiver sem_init'ed both before publishing; `segment` outlives them.
    let sems = unsafe { segment.posix_sems() };
    let mut peer_gone = || receiver.gone();
    let sent = ring::send(
        &segment,
        sems,
        opts.count,
        opts.size,
        opts.timeout,
        &say,
        &mut peer_gone,
    );
    let elapsed = match sent {
        Ok(elapsed) => elapsed,
        Err(e) => {
            // A receiver killed by SIGKILL ran no cleanup: its segment
            // would stay in /dev/shm. The survivor removes it.
            if receiver.gone().is_some() {
                remove_orphan(name, id, &say);
            }
            return Err(e);
        }
    };
    say.step("wrote the end marker; unmapping (the receiver owns the name and removes it)");
    drop(segment); // munmap(2) (Segment's Drop)
    ring::sender_summary(
        MECHANISM,
        opts.count,
        opts.size,
        elapsed,
        &say,
        opts.summary,
    );
    Ok(())
}

pub fn receiver(opts: &Options, name: &str) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, common::report::Stream::Stdout);
    let mut owned = create(name, opts.slots, opts.slot_size, &say)?;
    say.step(format!(
        "waiting for a sender: shm-demo sender --name {name}"
    ));
    let sender = ring::wait_for_sender(&owned.segment.header().sender_pid, owned.id, &say)?;
    let mut peer_gone = || sender.gone();
    // SAFETY: we sem_init'ed both in create(); `owned` outlives them.
    let sems = unsafe { owned.segment.posix_sems() };
    let expected = opts.count_given.then_some(opts.count);
    let outcome = ring::receive(
        &owned.segment,
        sems,
        expected,
        opts.timeout,
        &say,
        &mut peer_gone,
    );
    // Normal end or a dead sender: nobody can be waiting on the semaphores.
    // (After Ctrl-C or a timeout a live sender might be, so they are left
    // to vanish with the memory rather than be destroyed under a waiter.)
    owned.peer_done = match &outcome {
        Ok(_) => true,
        Err(_) => sender.gone().is_some(),
    };
    let (report, elapsed) = outcome?;
    drop(owned); // sem_destroy ×2, munmap(2), shm_unlink(3): see Owned
    say.step(format!(
        "sem_destroy, munmap, shm_unlink({name}): {}",
        dev_shm_line(name)
    ));
    // Last: the summary line ends the output.
    ring::finish_receiving(MECHANISM, report, elapsed, &say)
}

// ---------------------------------------------------------------------------
// The same object with the futex ring (`shm-demo futex`): no semaphores,
// two counters and the futex system call (the ring is `ipc_futex.rs`).
// ---------------------------------------------------------------------------

pub const FUTEX_MECHANISM: &str = "shm-futex";

/// The receiver's futex segment. Dropping it: `munmap` (the `ring`
/// field's `Drop`), then `shm_unlink(NAME)` (the `ShmGuard`'s `Drop`).
/// Nothing to destroy first: a futex is only an aligned u32 in memory;
/// the kernel keeps a wait queue for it only while someone sleeps on it.
pub struct FutexOwned {
    pub ring: Ring,
    pub id: MapsId,
    _unlink: ShmGuard,
}

/// The receiver's side: make the object, map it, write the header with
/// both counters at 0, and publish it (MAGIC last).
pub fn futex_create(
    name: &str,
    slots: u32,
    slot_size: u32,
    strategy: Strategy,
    say: &Narrator,
) -> Result<FutexOwned> {
    let len = futex::segment_len(slots, slot_size);
    let (fd, unlink) = create_object(name, len, say)?;
    let id = identity(&fd)?;
    let mut ring = map_futex(&fd, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
    drop(fd); // close(2): the mapping keeps the object
    guard_segment(name, ring.base(), len, Some(id))?; // SIGBUS guard (checks.rs)
    say.step(format!(
        "ftruncate to {len} bytes, posix_fallocate, mmap(PROT_READ|PROT_WRITE, MAP_SHARED): \
         {slots} slots of {slot_size} bytes after a {}-byte header",
        futex::HEADER_SPACE
    ));
    ring.init(slots, slot_size, strategy);
    say.step(format!(
        "the header's futex words: published (offset 64, the sender counts the slots it \
         filled) and released (offset 128, the receiver counts the slots it gave back), \
         both 0, each with an \"I sleep\" flag beside it; wait strategy {}. No sem_init and \
         no sem_destroy: a futex is just an aligned u32 in shared memory",
        strategy.name()
    ));
    ring.publish(); // MAGIC last, with Release
    say.step(format!("seen from outside: {}", dev_shm_line(name)));
    Ok(FutexOwned {
        ring,
        id,
        _unlink: unlink,
    })
}

/// The sender's side: open the receiver's futex segment and check its
/// owner and header before trusting a field of it.
pub fn futex_open(name: &str, say: &Narrator) -> Result<(Ring, MapsId)> {
    let (fd, size) = open_object(name, "futex ")?;
    let id = identity(&fd)?;
    let mut ring = map_futex(&fd, size, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
    drop(fd); // close(2): the mapping keeps the object
    guard_segment(name, ring.base(), size, None)?; // SIGBUS guard (checks.rs)
    // The initialisation race, as in `open`: wait (bounded) for MAGIC.
    let magic = ring.wait_published();
    ring.validate(magic, name)?; // every header field checked (ipc_futex.rs)
    let (slots, slot_size) = ring.slots();
    say.step(format!(
        "shm_open({name}, O_RDWR) + mmap(MAP_SHARED): header checked (magic, version, sync \
         kind futex, {slots} slots of {slot_size} bytes, {size} bytes in all, wait strategy {})",
        ring.strategy().name()
    ));
    Ok((ring, id))
}

/// What the waits and wakes were, as measured on this run.
pub fn futex_counts(ring: &Ring, messages: u64, say: &Narrator) {
    let (sender, receiver) = (ring.sender_stats(), ring.receiver_stats());
    // The sender's figures as it stored them just before its end marker.
    let published = ring.header().to_receiver.counter.load(Ordering::Relaxed);
    say.step(format!(
        "the receiver slept {} times (FUTEX_WAIT calls; {} spin iterations, {} sched_yield \
         calls); the sender made {} FUTEX_WAKE calls (waking {}) for its {messages} messages \
         in {} slots (up to its end marker)",
        receiver.waits,
        receiver.spins,
        receiver.yields,
        sender.wakes,
        sender.woken,
        published.wrapping_sub(1)
    ));
    say.step(format!(
        "the other way: the sender slept {} times on a full ring; the receiver made {} \
         FUTEX_WAKE calls (waking {})",
        sender.waits, receiver.wakes, receiver.woken
    ));
}

pub fn futex_sender(opts: &Options, name: &str) -> Result<()> {
    let say = Narrator::new("sender", opts.quiet, common::report::Stream::Stdout);
    let (ring, id) = futex_open(name, &say)?;
    let receiver_pid = ring.header().receiver_pid.load(Ordering::Relaxed);
    // The receiver must map this segment (then a pidfd watches it), and
    // the compare-and-swap claim makes us the one sender.
    let receiver = ring::attach_as_sender(&ring.header().sender_pid, receiver_pid, id, &say)?;
    let mut peer_gone = || receiver.gone();
    let sent = futex::send(
        &ring,
        opts.count,
        opts.size,
        opts.timeout,
        &say,
        &mut peer_gone,
    );
    let (elapsed, stats) = match sent {
        Ok(done) => done,
        Err(e) => {
            // A SIGKILLed receiver ran no cleanup: remove its segment.
            if receiver.gone().is_some() {
                remove_orphan(name, id, &say);
            }
            return Err(e);
        }
    };
    say.step(format!(
        "wrote the end marker; this side slept {} times on a full ring and made {} \
         FUTEX_WAKE calls, the end marker's included (one each time it found the \
         receiver's \"I sleep\" flag set)",
        stats.waits, stats.wakes
    ));
    drop(ring); // munmap(2) (Ring's Drop); the receiver removes the name
    ring::sender_summary(
        FUTEX_MECHANISM,
        opts.count,
        opts.size,
        elapsed,
        &say,
        opts.summary,
    );
    Ok(())
}

pub fn futex_receiver(opts: &Options, name: &str) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, common::report::Stream::Stdout);
    let owned = futex_create(name, opts.slots, opts.slot_size, opts.wait, &say)?;
    say.step(format!(
        "waiting for a sender: shm-demo futex sender --name {name}"
    ));
    let sender = ring::wait_for_sender(&owned.ring.header().sender_pid, owned.id, &say)?;
    let mut peer_gone = || sender.gone();
    let expected = opts.count_given.then_some(opts.count);
    let (report, elapsed, _) =
        futex::receive(&owned.ring, expected, opts.timeout, &say, &mut peer_gone)?;
    futex_counts(&owned.ring, report.received, &say);
    drop(owned); // munmap(2), shm_unlink(3): see FutexOwned
    say.step(format!(
        "munmap, shm_unlink({name}): {}",
        dev_shm_line(name)
    ));
    // Last: the summary line ends the output.
    ring::finish_receiving(FUTEX_MECHANISM, report, elapsed, &say)
}
