//! The POSIX variant: `shm_open` + `ftruncate` + `mmap` for the memory,
//! `sem_init(pshared = 1)` semaphores inside it, `shm_unlink` to remove it.
//! The object is a file in `/dev/shm`, named `/NAME`.

use std::ffi::CString;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::cleanup::{ShmGuard, unique_name};
use common::peer::Peer;
use common::psem::SharedSem;
use common::report::Narrator;
use nix::errno::Errno;
use nix::fcntl::{OFlag, posix_fallocate};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, shm_open, shm_unlink};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::{Uid, ftruncate};

use crate::Options;
use crate::sigbus::{self, Cleanup};
use shm_demo::ring::{
    self, Detach, HEADER_SPACE, MAX_SLOT_SIZE, MAX_SLOTS, MapsId, SYNC_POSIX, Segment,
    maps_segment, segment_len,
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

/// (device, inode) of an open object, to recognise it again by name and
/// in a process's /proc/PID/maps.
fn identity(fd: &OwnedFd) -> Result<MapsId> {
    let st = fstat(fd.as_fd()).context("fstat")?;
    Ok(MapsId::File {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// "uid 65534 (nobody)", for refusals.
pub fn who(uid: u32) -> String {
    match nix::unistd::User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// An object we did not just create is someone else's until its owner is
/// us: refuse it otherwise (also as root, who could open anything).
fn check_owner(name: &str, fd: &OwnedFd, doing: &str) -> Result<()> {
    let owner = fstat(fd.as_fd()).context("fstat")?.st_uid;
    let me = Uid::effective().as_raw();
    if owner != me {
        bail!(
            "shared memory {name} belongs to {}, not to you ({}): refusing to {doing} it; \
             choose another --name",
            who(owner),
            who(me)
        );
    }
    Ok(())
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

/// The receiver's segment. Dropping it destroys the semaphores (only once
/// the peer is known to be finished), unmaps, and unlinks the name.
struct Owned {
    segment: Segment,
    /// Device and inode: how a sender's /proc/PID/maps names it.
    id: MapsId,
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
    // The mode given to shm_open is filtered by the umask: set it exactly.
    fchmod(fd.as_fd(), mode).with_context(|| format!("fchmod({name}, 0600)"))?;
    say.step(format!(
        "shm_open({name}, O_CREAT|O_EXCL|O_RDWR, 0600): a new, empty object"
    ));
    // A new object has size 0; ftruncate gives it its size, zero-filled.
    ftruncate(fd.as_fd(), len as libc::off_t)
        .with_context(|| format!("ftruncate({name}, {len})"))?;
    // ftruncate only sets the size: tmpfs finds a page when it is first
    // touched, and if /dev/shm is full by then the touch is a SIGBUS, not
    // an error code. posix_fallocate reserves every page now, or fails.
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
    let id = identity(&fd)?;
    let mut segment = map(&fd, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
    // The mapping keeps the object alive; the descriptor is not needed.
    drop(fd);
    // From here a truncation by another process is a SIGBUS: end with a
    // message and remove our object (see sigbus.rs).
    guard_segment(name, &segment, len, Some(id))?;
    say.step(format!(
        "ftruncate to {len} bytes, posix_fallocate (the pages are reserved now: on a full \
         /dev/shm this fails with ENOSPC instead of a SIGBUS later), mmap(PROT_READ|PROT_WRITE, \
         MAP_SHARED): {slots} slots of {slot_size} bytes after a {HEADER_SPACE}-byte header"
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
        id,
        _unlink: unlink,
        peer_done: false,
    })
}

/// Arm the SIGBUS handler for this mapping; `ours` (the receiver): the
/// object it may unlink on the way out.
fn guard_segment(name: &str, segment: &Segment, len: usize, ours: Option<MapsId>) -> Result<()> {
    let cleanup = match ours {
        Some(MapsId::File { dev, ino }) => Cleanup::Unlink {
            path: CString::new(format!("/dev/shm{name}")).context("name with a NUL byte")?,
            dev,
            ino,
        },
        _ => Cleanup::Nothing,
    };
    sigbus::guard(&format!("/dev/shm{name}"), segment.base(), len, cleanup)
}

/// A segment already exists under our name. If it is one of ours (our
/// uid, our shape) whose receiver is gone (a crashed or killed run),
/// remove it; anything else is refused and left alone.
fn remove_if_stale(name: &str, say: &Narrator) -> Result<()> {
    let fd = shm_open(name, OFlag::O_RDONLY, Mode::empty())
        .with_context(|| format!("shm_open({name}, O_RDONLY)"))?;
    check_owner(name, &fd, "remove")?;
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
    guard_segment(name, &segment, HEADER_SPACE, None)?;
    let header = segment.header();
    let slots = header.slot_count.load(Ordering::Relaxed);
    let slot_size = header.slot_size.load(Ordering::Relaxed);
    if header.magic.load(Ordering::Acquire) != ring::MAGIC
        || header.version.load(Ordering::Relaxed) != ring::VERSION
        || !(1..=MAX_SLOTS).contains(&slots)
        || !(1..=MAX_SLOT_SIZE).contains(&slot_size)
        || segment_len(slots, slot_size) != size
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
    shm_unlink(name).with_context(|| format!("shm_unlink({name})"))
}

/// The sender's side: open the receiver's segment and check its owner and
/// header before trusting a single field of it.
fn open(name: &str, say: &Narrator) -> Result<(Segment, MapsId)> {
    let fd = match shm_open(name, OFlag::O_RDWR, Mode::empty()) {
        Err(Errno::ENOENT) => bail!(
            "no shared memory named {name}: start 'shm-demo receiver --name {name}' first; \
             it creates the segment"
        ),
        other => other.with_context(|| format!("shm_open({name}, O_RDWR)"))?,
    };
    check_owner(name, &fd, "write into")?;
    let size = usize::try_from(fstat(fd.as_fd()).context("fstat")?.st_size).unwrap_or(0);
    if size < HEADER_SPACE || size > segment_len(MAX_SLOTS, MAX_SLOT_SIZE) {
        bail!("{name} is {size} bytes: not a shm-demo segment (refusing to map it)");
    }
    let id = identity(&fd)?;
    let mut segment = map(&fd, size, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
    guard_segment(name, &segment, size, None)?;
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
fn remove_orphan(name: &str, id: MapsId, say: &Narrator) {
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
    let receiver_pid = segment.header().receiver_pid.load(Ordering::Relaxed);
    let receiver = ring::attach_as_sender(&segment, receiver_pid, id, &say)?;
    // SAFETY: validate() checked the header says SYNC_POSIX, so the
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
    ring::sender_summary(MECHANISM, opts.count, opts.size, elapsed, &say);
    Ok(())
}

pub fn receiver(opts: &Options, name: &str) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, common::report::Stream::Stdout);
    let mut owned = create(name, opts.slots, opts.slot_size, &say)?;
    say.step(format!(
        "waiting for a sender: shm-demo sender --name {name}"
    ));
    let sender = ring::wait_for_sender(&owned.segment, owned.id, &say)?;
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
    say.step(format!(
        "a hazard no check can prevent: whoever can open /dev/shm{name} can truncate it while \
         it is mapped, and the next access past the new end is a SIGBUS, not an error code \
         (this demo then says so, removes its object and exits 1). The cure is memory nobody \
         can shrink: memfd_create + fcntl(F_ADD_SEALS, F_SEAL_SHRINK), its fd passed over a Unix socket (SCM_RIGHTS, see socket-demo)"
    ));

    say.line("\n== 2. Start the sender: a separate program that opens the segment by name ==");
    let mut sender = Peer::spawn_self(&opts.sender_args(&["sender", "--name", &name]))?;
    sigbus::stop_child_too(sender.pid());
    say.step(format!("started the sender, pid {}", sender.pid()));

    say.line("\n== 3. The bounded buffer: wait(full), read, post(empty) ==");
    let mut peer_gone = || match sender.try_wait() {
        Ok(Some(exit)) => Some(format!("the sender (pid {}) {exit}", sender.pid())),
        Ok(None) => None,
        Err(e) => Some(format!("{e:#}")),
    };
    // SAFETY: we sem_init'ed both in create(); `owned` outlives them.
    let sems = unsafe { owned.segment.posix_sems() };
    let outcome = ring::receive(
        &owned.segment,
        sems,
        Some(opts.count),
        opts.timeout,
        &say,
        &mut peer_gone,
    );
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
