//! # shm-demo: shared memory with semaphores
//!
//! Shared memory maps the same physical pages into two address spaces:
//! what one process stores, the other can load, with no copy through the
//! kernel. That makes it the fastest IPC, and the one with no rules of its
//! own: the kernel does not order, count or protect anything. The programs
//! must synchronise themselves, here with two semaphores in the classic
//! bounded-buffer (producer/consumer) scheme.
//!
//! | property          | POSIX shared memory (`shm_open` + `mmap`)                |
//! |-------------------|-----------------------------------------------------------|
//! | direction         | any: both sides may read and write (here one way)         |
//! | who can talk      | processes that can open the name (`/dev/shm/NAME`, 0600)  |
//! | message boundaries| none: you design the layout (here: header + ring of slots)|
//! | persistence       | the name stays until `shm_unlink`, even with no process   |
//! | capacity          | whatever size you `ftruncate` it to                       |
//! | blocking          | none: loads and stores never wait; semaphores do          |
//!
//! The segment this demo builds:
//!
//! ```text
//! +--------------------------------------------------------------+
//! | header: magic, version, slot count, slot size, receiver pid, |
//! |         sender pid, sem_t empty (free slots),                 |
//! |         sem_t full (filled slots)                             |
//! +--------------------------------------------------------------+
//! | slot 0: seq, message length, offset, piece length, flags,    |
//! |         data[slot size]                                       |
//! | slot 1 ...                                                    |
//! +--------------------------------------------------------------+
//! ```
//!
//! The sender waits on `empty`, writes the next slot, posts `full`; the
//! receiver waits on `full`, reads the next slot, posts `empty`. Each side
//! keeps its own slot index, so no index is shared (nor trusted). A message
//! larger than a slot is split over several slots and put back together.
//!
//! ## Run it
//!
//! ```text
//! cargo run -p shm-demo                                 # the whole story
//! cargo run -p shm-demo -- --count 10000 --size 65536 --quiet
//! cargo run -p shm-demo -- receiver --name /demo        # terminal 1
//! cargo run -p shm-demo -- sender --name /demo --count 10   # terminal 2
//! ```
//!
//! ## What to look for
//!
//! - why each semaphore is there, and what would break without it;
//! - the segment as a file under `/dev/shm`, and gone after the run;
//! - the sender writing straight into the slots: no intermediate buffer;
//! - a peer killed mid-transfer noticed within a second, never a hang.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `payload`, `peer`,
//! `psem`, `report`.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{ShmGuard, check_stop, stop_on_signals, unique_name};
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, usage};
use common::payload::{self, Checker, Verdict};
use common::peer::{Peer, alive};
use common::psem::{SharedSem, Wait};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::ftruncate;

const USAGE: &str = "\
shm-demo: shared memory as a bounded buffer, synchronised with semaphores

USAGE:
    shm-demo [--count N] [--size BYTES] [--slots K] [--slot-size BYTES] [--quiet]
        The whole story in one terminal: this process creates the segment
        and receives; a sender process started from this program writes.
    shm-demo receiver --name /NAME [--count N] [--slots K] [--slot-size BYTES] [--quiet]
        Create the segment /NAME (removed on exit) and receive until the
        sender says it is done.
    shm-demo sender --name /NAME [--count N] [--size BYTES] [--quiet]
        Open the receiver's segment /NAME and send N messages.

OPTIONS:
    --name /NAME       the segment's name: a slash, then up to 250 characters
                       without a slash (it appears as /dev/shm/NAME)
    --count N          messages to send or expect (default 5; 1 to 1000000000)
    --size BYTES       bytes per message (default 64; 1 to 67108864); a message
                       larger than a slot is split over several slots
    --slots K          slots in the ring (default 8; 1 to 1024)
    --slot-size BYTES  data bytes per slot (default 4096; 1 to 1048576)
    --quiet            no line per message, only the steps and the summary
    -h, --help         this text

EXIT STATUS: 0 success, 1 runtime error (including data errors and a peer
that died), 2 bad command line, 128+N stopped by signal N (130 for Ctrl-C).
";

/// "IPCSHM01": the first 8 bytes of every segment this demo makes.
const MAGIC: u64 = u64::from_le_bytes(*b"IPCSHM01");
/// Bumped whenever the layout changes, so old and new programs refuse
/// each other's segments instead of misreading them.
const VERSION: u32 = 1;
const MAX_SLOTS: u32 = 1024;
const MAX_SLOT_SIZE: u32 = 1024 * 1024;
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const DEFAULT_SLOTS: u32 = 8;
const DEFAULT_SLOT_SIZE: u32 = 4096;
/// A slot whose piece says "no more messages".
const FLAG_END: u32 = 1;
/// How long one semaphore wait lasts before we check that the peer lives.
const TICK: Duration = Duration::from_millis(100);
/// How long a sender waits for a receiver that is still initialising.
const INIT_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The layout. Everything another process writes is an atomic or sits in an
// UnsafeCell (the semaphores), so a `&Header` never promises that memory
// does not change under us.
// ---------------------------------------------------------------------------

#[repr(C)]
struct Header {
    /// Written last by the receiver (Release): a sender that reads MAGIC
    /// (Acquire) sees every field stored before it.
    magic: AtomicU64,
    version: AtomicU32,
    slot_count: AtomicU32,
    slot_size: AtomicU32,
    receiver_pid: AtomicI32,
    /// 0 until a sender attaches.
    sender_pid: AtomicI32,
    _reserved: AtomicU32,
    /// Counts free slots. The sender waits on it before writing a slot, so
    /// it never overwrites a message the receiver has not read yet.
    empty: UnsafeCell<libc::sem_t>,
    /// Counts filled slots. The receiver waits on it before reading a slot,
    /// so it never reads a slot the sender has not finished writing.
    full: UnsafeCell<libc::sem_t>,
}

#[repr(C)]
struct SlotHeader {
    /// Which message this piece belongs to.
    seq: AtomicU64,
    /// The whole message's length.
    message_len: AtomicU64,
    /// Where this piece starts within the message.
    offset: AtomicU64,
    /// Bytes of data in this slot (at most the slot size).
    piece_len: AtomicU32,
    flags: AtomicU32,
}

const fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Header, then slots, each on a 64-byte (cache line) boundary, so two
/// slots never share a cache line that both processes write.
const HEADER_SPACE: usize = round_up(size_of::<Header>(), 64);

fn slot_stride(slot_size: usize) -> usize {
    round_up(size_of::<SlotHeader>() + slot_size, 64)
}

fn segment_len(slot_count: u32, slot_size: u32) -> usize {
    HEADER_SPACE + slot_count as usize * slot_stride(slot_size as usize)
}

/// One mapping of a segment; unmapped on drop.
struct Segment {
    base: NonNull<c_void>,
    len: usize,
    slot_count: usize,
    slot_size: usize,
    /// (device, inode) of the object, to recognise it again by name.
    identity: (u64, u64),
}

impl Segment {
    /// mmap `len` bytes of `fd`, shared: stores become visible to every
    /// process that maps the same object (MAP_PRIVATE would copy on write).
    fn map(fd: &OwnedFd, len: usize) -> Result<Segment> {
        let size = NonZeroUsize::new(len).context("empty segment")?;
        // SAFETY: a fresh mapping chosen by the kernel (addr None) cannot
        // overlap any Rust object; we only access it through `Segment`.
        let base = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }
        .context("mmap(MAP_SHARED)")?;
        let st = fstat(fd.as_fd()).context("fstat")?;
        Ok(Segment {
            base,
            len,
            slot_count: 0,
            slot_size: 0,
            identity: (st.st_dev, st.st_ino),
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: `len >= HEADER_SPACE` (checked by both constructors'
        // callers before mapping), the mapping is page-aligned, and Header
        // holds only atomics and UnsafeCells, valid for any bit pattern
        // and for memory other processes change.
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    /// The slot header and data pointer of slot `i`.
    fn slot(&self, i: usize) -> (&SlotHeader, *mut u8) {
        assert!(i < self.slot_count, "slot index out of range");
        let offset = HEADER_SPACE + i * slot_stride(self.slot_size);
        // SAFETY: i < slot_count and the mapping is segment_len(...) long,
        // so the slot lies inside it; offsets are multiples of 64, so the
        // header is aligned; SlotHeader is all atomics.
        unsafe {
            let at = self.base.cast::<u8>().as_ptr().add(offset);
            (&*at.cast::<SlotHeader>(), at.add(size_of::<SlotHeader>()))
        }
    }

    fn empty(&self) -> SharedSem {
        // SAFETY: the receiver sem_init'ed it before publishing MAGIC; the
        // mapping outlives every use (the SharedSem is used only while
        // `self` is borrowed by the send/receive loop).
        unsafe { SharedSem::attach(self.header().empty.get()) }
    }

    fn full(&self) -> SharedSem {
        // SAFETY: as for `empty`.
        unsafe { SharedSem::attach(self.header().full.get()) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned, and no reference
        // into the mapping outlives `self` (they all borrow it).
        let _ = unsafe { munmap(self.base, self.len) };
    }
}

// ---------------------------------------------------------------------------
// Names and stale segments
// ---------------------------------------------------------------------------

/// POSIX says a portable name is "/" then characters without "/".
fn check_name(name: &str) -> Result<()> {
    let rest = name.strip_prefix('/').unwrap_or("");
    if rest.is_empty() || rest.contains('/') || rest.len() > 250 || rest.contains('\0') {
        return Err(usage(format!(
            "--name {name:?} is not a valid name: use a slash then up to 250 characters \
             without a slash, e.g. /demo"
        )));
    }
    Ok(())
}

/// The receiver's segment: created, mapped, initialised. Dropping it
/// destroys the semaphores (only once the peer is known to be finished),
/// unmaps and unlinks.
struct OwnedSegment {
    segment: Segment,
    _unlink: ShmGuard,
    /// Set once no other process can be waiting on the semaphores.
    peer_done: bool,
}

impl Drop for OwnedSegment {
    fn drop(&mut self) {
        if self.peer_done {
            // SAFETY: the peer has finished or died: nobody waits on these,
            // and we use them no more.
            unsafe {
                let _ = self.segment.empty().destroy();
                let _ = self.segment.full().destroy();
            }
        }
        // Then the Segment unmaps, then the ShmGuard unlinks the name.
    }
}

fn dev_shm_line(name: &str) -> String {
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

fn create_segment(name: &str, slots: u32, slot_size: u32, say: &Narrator) -> Result<OwnedSegment> {
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
    // A new object has size 0; ftruncate gives it its size (zero-filled).
    ftruncate(fd.as_fd(), len as libc::off_t)
        .with_context(|| format!("ftruncate({name}, {len})"))?;
    let mut segment = Segment::map(&fd, len)?;
    // The mapping keeps the object alive; the descriptor is not needed.
    drop(fd);
    segment.slot_count = slots as usize;
    segment.slot_size = slot_size as usize;
    say.step(format!(
        "ftruncate to {len} bytes, mmap(PROT_READ|PROT_WRITE, MAP_SHARED): {slots} slots \
         of {slot_size} bytes after a {HEADER_SPACE}-byte header"
    ));

    let header = segment.header();
    header.version.store(VERSION, Ordering::Relaxed);
    header.slot_count.store(slots, Ordering::Relaxed);
    header.slot_size.store(slot_size, Ordering::Relaxed);
    header
        .receiver_pid
        .store(std::process::id() as i32, Ordering::Relaxed);
    header.sender_pid.store(0, Ordering::Relaxed);
    // SAFETY: both sem_t live inside our new mapping, aligned (repr(C)
    // header at a page boundary) and not yet visible to anyone (no MAGIC).
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
    // Publish: a sender that sees MAGIC (Acquire) sees all of the above.
    header.magic.store(MAGIC, Ordering::Release);
    say.step(format!("seen from outside: {}", dev_shm_line(name)));
    Ok(OwnedSegment {
        segment,
        _unlink: unlink,
        peer_done: false,
    })
}

/// A segment already exists under our name. If it is one of ours whose
/// receiver is gone (a crashed or killed run), remove it; anything else is
/// refused and left alone.
fn remove_if_stale(name: &str, say: &Narrator) -> Result<()> {
    let verdict = match inspect_existing(name) {
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

/// The receiver pid of an existing segment of ours, `None` if it is not ours.
fn inspect_existing(name: &str) -> Result<Option<i32>> {
    let fd = shm_open(name, OFlag::O_RDONLY, Mode::empty())
        .with_context(|| format!("shm_open({name}, O_RDONLY)"))?;
    let size = fstat(fd.as_fd()).context("fstat")?.st_size as usize;
    if size < HEADER_SPACE {
        return Ok(None);
    }
    let segment = Segment::map_read_only(&fd)?;
    let header = segment.header();
    if header.magic.load(Ordering::Acquire) != MAGIC {
        return Ok(None);
    }
    Ok(Some(header.receiver_pid.load(Ordering::Relaxed)))
}

impl Segment {
    /// Map just the header, read-only, to look at a segment we may not own.
    fn map_read_only(fd: &OwnedFd) -> Result<Segment> {
        let size = NonZeroUsize::new(HEADER_SPACE).expect("header size is not zero");
        // SAFETY: as in `map`; a read-only mapping is never written.
        let base = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }
        .context("mmap(PROT_READ)")?;
        Ok(Segment {
            base,
            len: HEADER_SPACE,
            slot_count: 0,
            slot_size: 0,
            identity: (0, 0),
        })
    }
}

/// The sender's side: open the receiver's segment and check its header
/// before trusting a single field of it.
fn open_segment(name: &str, say: &Narrator) -> Result<Segment> {
    let fd = match shm_open(name, OFlag::O_RDWR, Mode::empty()) {
        Err(Errno::ENOENT) => bail!(
            "no shared memory named {name}: start 'shm-demo receiver --name {name}' first; \
             it creates the segment"
        ),
        other => other.with_context(|| format!("shm_open({name}, O_RDWR)"))?,
    };
    let st = fstat(fd.as_fd()).with_context(|| format!("fstat({name})"))?;
    let size = usize::try_from(st.st_size).unwrap_or(0);
    let largest = segment_len(MAX_SLOTS, MAX_SLOT_SIZE);
    if size < HEADER_SPACE || size > largest {
        bail!("{name} is {size} bytes: not a shm-demo segment (refusing to map it)");
    }
    let mut segment = Segment::map(&fd, size)?;
    drop(fd);
    let header = segment.header();
    // The receiver publishes MAGIC last; give one that is still starting a
    // moment before deciding the segment is not ours.
    let start = Instant::now();
    let magic = loop {
        let magic = header.magic.load(Ordering::Acquire);
        if magic != 0 || start.elapsed() > INIT_TIMEOUT {
            break magic;
        }
        sleep(Duration::from_millis(10));
    };
    if magic != MAGIC {
        bail!("{name} is not a shm-demo segment (magic {magic:#018x}, expected {MAGIC:#018x})");
    }
    let version = header.version.load(Ordering::Relaxed);
    if version != VERSION {
        bail!("{name} has layout version {version}; this program reads version {VERSION}");
    }
    let slots = header.slot_count.load(Ordering::Relaxed);
    let slot_size = header.slot_size.load(Ordering::Relaxed);
    if !(1..=MAX_SLOTS).contains(&slots) || !(1..=MAX_SLOT_SIZE).contains(&slot_size) {
        bail!("{name}: header says {slots} slots of {slot_size} bytes: out of range, refusing it");
    }
    if segment_len(slots, slot_size) != size {
        bail!(
            "{name}: header says {slots} slots of {slot_size} bytes ({} bytes), but the object \
             is {size} bytes: refusing it",
            segment_len(slots, slot_size)
        );
    }
    segment.slot_count = slots as usize;
    segment.slot_size = slot_size as usize;
    say.step(format!(
        "shm_open({name}, O_RDWR) + mmap(MAP_SHARED): header checked (magic, version {VERSION}, \
         {slots} slots of {slot_size} bytes, {size} bytes in all)"
    ));
    Ok(segment)
}

// ---------------------------------------------------------------------------
// Waiting without hanging
// ---------------------------------------------------------------------------

/// Wait on `sem`; every TICK without success, ask `peer_gone` whether the
/// other side has died (it then names the reason) and stop if so.
fn wait_on(
    sem: SharedSem,
    what: &str,
    peer_gone: &mut dyn FnMut() -> Option<String>,
) -> Result<()> {
    loop {
        check_stop()?;
        match sem
            .wait_for(TICK)
            .with_context(|| format!("sem_timedwait({what})"))?
        {
            Wait::Acquired => return Ok(()),
            Wait::Interrupted => continue, // check_stop decides
            Wait::TimedOut => {
                if let Some(reason) = peer_gone() {
                    bail!("{reason} while we waited on the {what} semaphore");
                }
            }
        }
    }
}

/// "Gone" check for the pid another process stored in the header.
fn pid_gone(role: &str, pid: &AtomicI32) -> Option<String> {
    let pid = pid.load(Ordering::Relaxed);
    (pid != 0 && !alive(pid)).then(|| format!("the {role} (pid {pid}) exited"))
}

// ---------------------------------------------------------------------------
// sender
// ---------------------------------------------------------------------------

fn send(segment: &Segment, count: u64, size: usize, say: &Narrator) -> Result<Duration> {
    let header = segment.header();
    header
        .sender_pid
        .store(std::process::id() as i32, Ordering::Relaxed);
    let (empty, full) = (segment.empty(), segment.full());
    let mut peer_gone = || pid_gone("receiver", &header.receiver_pid);
    let mut next = 0usize; // our own slot index: nothing shared to trust
    let pieces = size.div_ceil(segment.slot_size).max(1);
    say.step(format!(
        "writing each message straight into the slots (no intermediate buffer): \
         {pieces} slot(s) per {size}-byte message"
    ));
    let start = Instant::now();
    for seq in 0..count {
        let mut offset = 0;
        loop {
            wait_on(empty, "empty", &mut peer_gone)?;
            let (slot, data) = segment.slot(next);
            let piece = (size - offset).min(segment.slot_size);
            // SAFETY: `data` has slot_size >= piece bytes inside the
            // mapping; between our wait on `empty` and our post on `full`
            // this slot is ours alone (the receiver only reads slots, and
            // only after `full`), so a &mut to it aliases nothing.
            let bytes = unsafe { std::slice::from_raw_parts_mut(data, piece) };
            payload::fill_at(seq, size, offset, bytes);
            slot.seq.store(seq, Ordering::Relaxed);
            slot.message_len.store(size as u64, Ordering::Relaxed);
            slot.offset.store(offset as u64, Ordering::Relaxed);
            slot.piece_len.store(piece as u32, Ordering::Relaxed);
            slot.flags.store(0, Ordering::Relaxed);
            // sem_post is a full memory barrier: the receiver's sem_wait
            // that takes this post sees every byte written above.
            full.post().context("sem_post(full)")?;
            next = (next + 1) % segment.slot_count;
            offset += piece;
            if offset >= size {
                break;
            }
        }
        say.message(format!("wrote message {seq} ({size} bytes)"));
    }
    // One last slot says "done", in order behind the last message.
    wait_on(empty, "empty", &mut peer_gone)?;
    let (slot, _) = segment.slot(next);
    slot.piece_len.store(0, Ordering::Relaxed);
    slot.flags.store(FLAG_END, Ordering::Relaxed);
    full.post().context("sem_post(full)")?;
    Ok(start.elapsed())
}

fn sender(opts: &Options) -> Result<()> {
    let name = opts.name.as_deref().expect("checked by parse_options");
    let say = Narrator::new("sender", opts.quiet, Stream::Stdout);
    let segment = open_segment(name, &say)?;
    let elapsed = match send(&segment, opts.count, opts.size, &say) {
        Ok(elapsed) => elapsed,
        Err(e) => {
            // A receiver killed by SIGKILL ran no cleanup: its segment
            // would stay in /dev/shm. The survivor removes it.
            if pid_gone("receiver", &segment.header().receiver_pid).is_some() {
                remove_orphan(name, segment.identity, &say);
            }
            return Err(e);
        }
    };
    say.step("wrote the end marker; unmapping (the receiver owns the name and removes it)");
    say.line(Summary {
        mechanism: "shm",
        messages: opts.count,
        bytes: opts.count * opts.size as u64,
        errors: 0,
        elapsed,
    });
    Ok(())
}

/// Unlink `name` if it still names the object we mapped (a new receiver
/// may already have made a new segment under the same name).
fn remove_orphan(name: &str, identity: (u64, u64), say: &Narrator) {
    let same = shm_open(name, OFlag::O_RDONLY, Mode::empty())
        .ok()
        .and_then(|fd| fstat(fd.as_fd()).ok())
        .is_some_and(|st| (st.st_dev, st.st_ino) == identity);
    if same && shm_unlink(name).is_ok() {
        say.step(format!(
            "the receiver died without cleaning up: shm_unlink({name}) done for it"
        ));
    }
}

// ---------------------------------------------------------------------------
// receiver
// ---------------------------------------------------------------------------

/// Read messages until the end marker; returns the checker's counts.
fn receive(
    segment: &Segment,
    expected: Option<u64>,
    say: &Narrator,
    peer_gone: &mut dyn FnMut() -> Option<String>,
) -> Result<(payload::CheckReport, Duration)> {
    let full = segment.full();
    let empty = segment.empty();
    let mut checker = Checker::new(expected);
    let mut next = 0usize;
    let mut message: Vec<u8> = Vec::new();
    let mut current: Option<(u64, usize)> = None; // (seq, length) being assembled
    let mut start = None;
    loop {
        wait_on(full, "full", peer_gone)?;
        start.get_or_insert_with(Instant::now);
        let (slot, data) = segment.slot(next);
        let at = next;
        next = (next + 1) % segment.slot_count;
        if slot.flags.load(Ordering::Relaxed) & FLAG_END != 0 {
            empty.post().context("sem_post(empty)")?;
            if current.is_some() {
                bail!("slot {at}: end marker in the middle of a message");
            }
            say.step("read the end marker: the sender is done");
            break;
        }
        // Everything below came from another process: check before use.
        let seq = slot.seq.load(Ordering::Relaxed);
        let len = slot.message_len.load(Ordering::Relaxed);
        let offset = slot.offset.load(Ordering::Relaxed);
        let piece = slot.piece_len.load(Ordering::Relaxed) as usize;
        if len > MAX_MESSAGE as u64 {
            bail!("slot {at}: message length {len} is over the limit of {MAX_MESSAGE}");
        }
        let len = len as usize;
        if piece > segment.slot_size || piece == 0 && len != 0 {
            bail!(
                "slot {at}: piece length {piece} does not fit a {}-byte slot",
                segment.slot_size
            );
        }
        let (want_seq, want_len) = *current.get_or_insert((seq, len));
        if seq != want_seq || len != want_len || offset != message.len() as u64 {
            bail!(
                "slot {at}: piece of message {seq} at offset {offset} does not continue \
                 message {want_seq} (at offset {})",
                message.len()
            );
        }
        if message.len() + piece > len {
            bail!("slot {at}: piece runs past the end of its {len}-byte message");
        }
        // Copy the piece out with a raw copy (no reference into memory the
        // sender may write); checks then run on our private copy.
        message.reserve(piece);
        // SAFETY: `data` has at least slot_size >= piece readable bytes in
        // the mapping; `message` has room for `piece` more bytes (reserve),
        // and the regions cannot overlap (private heap vs shared mapping).
        unsafe {
            std::ptr::copy_nonoverlapping(data, message.as_mut_ptr().add(message.len()), piece);
            message.set_len(message.len() + piece);
        }
        // The slot's contents are in our copy: give it back to the sender.
        empty.post().context("sem_post(empty)")?;
        if message.len() == len {
            let verdict = checker.check_numbered(seq, &message);
            let line = format!("message {seq} ({len} bytes): {verdict}");
            // A bad message is reported even with --quiet.
            if verdict == Verdict::Ok {
                say.message(line)
            } else {
                say.step(line)
            }
            message.clear();
            current = None;
        }
    }
    let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
    Ok((checker.report(), elapsed))
}

fn finish_receiving(report: payload::CheckReport, elapsed: Duration, say: &Narrator) -> Result<()> {
    say.step(format!("checked: {report}"));
    say.line(Summary {
        mechanism: "shm",
        messages: report.received,
        bytes: report.bytes,
        errors: report.errors(),
        elapsed,
    });
    if report.errors() > 0 {
        bail!("{} message(s) failed the check ({report})", report.errors());
    }
    Ok(())
}

fn receiver(opts: &Options) -> Result<()> {
    let name = opts.name.as_deref().expect("checked by parse_options");
    let say = Narrator::new("receiver", opts.quiet, Stream::Stdout);
    let mut owned = create_segment(name, opts.slots, opts.slot_size, &say)?;
    say.step(format!(
        "waiting for a sender: shm-demo sender --name {name}"
    ));
    let header = owned.segment.header();
    let mut peer_gone = || pid_gone("sender", &header.sender_pid);
    let outcome = receive(
        &owned.segment,
        opts.count_given.then_some(opts.count),
        &say,
        &mut peer_gone,
    );
    // Normal end or a dead sender: nobody can be waiting on the semaphores.
    // (After Ctrl-C a live sender might be, so they are left to vanish
    // with the memory instead of being destroyed under it.)
    owned.peer_done = match &outcome {
        Ok(_) => true,
        Err(_) => pid_gone("sender", &header.sender_pid).is_some(),
    };
    let (report, elapsed) = outcome?;
    finish_receiving(report, elapsed, &say)?;
    drop(owned);
    say.step(format!(
        "sem_destroy, munmap, shm_unlink({name}): {}",
        dev_shm_line(name)
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// The story
// ---------------------------------------------------------------------------

fn story(opts: &Options) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, Stream::Stdout);
    let name = format!("/{}", unique_name("shm-demo"));
    say.line(format!(
        "shm-demo: {} messages of {} bytes through {} slots of {} bytes (receiver pid {})",
        opts.count,
        opts.size,
        opts.slots,
        opts.slot_size,
        std::process::id()
    ));
    say.line("\n== 1. Create the segment and its semaphores ==");
    let mut owned = create_segment(&name, opts.slots, opts.slot_size, &say)?;

    say.line("\n== 2. Start the sender: a separate program that opens the segment by name ==");
    let mut args = vec![
        "sender".to_string(),
        "--name".into(),
        name.clone(),
        "--count".into(),
        opts.count.to_string(),
        "--size".into(),
        opts.size.to_string(),
    ];
    if opts.quiet {
        args.push("--quiet".into());
    }
    let mut sender = Peer::spawn_self(&args)?;
    say.step(format!("started the sender, pid {}", sender.pid()));

    say.line("\n== 3. The bounded buffer: wait(full), read, post(empty) ==");
    let mut peer_gone = || match sender.try_wait() {
        Ok(Some(exit)) => Some(format!("the sender (pid {}) {exit}", sender.pid())),
        Ok(None) => None,
        Err(e) => Some(format!("{e:#}")),
    };
    let outcome = receive(&owned.segment, Some(opts.count), &say, &mut peer_gone);
    // Whatever happened, the sender is finished after this: waited for, or
    // stopped and reaped by Peer's drop.
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
    finish_receiving(report, elapsed, &say)
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

struct Options {
    name: Option<String>,
    count: u64,
    count_given: bool,
    size: usize,
    slots: u32,
    slot_size: u32,
    quiet: bool,
}

fn main() -> ExitCode {
    error::run("shm-demo", run)
}

fn run() -> Result<()> {
    let mut args = Args::from_env(USAGE)?;
    let role = args.role(&["sender", "receiver"])?;
    let opts = parse_options(&mut args, role.as_deref())?;
    // Ctrl-C/SIGTERM interrupt sem_timedwait (EINTR); the roles then return
    // and the segment's guard unlinks it.
    stop_on_signals()?;
    match role.as_deref() {
        None => story(&opts),
        Some("receiver") => receiver(&opts),
        _ => sender(&opts),
    }
}

fn parse_options(args: &mut Args, role: Option<&str>) -> Result<Options> {
    let mut opts = Options {
        name: None,
        count: DEFAULT_COUNT,
        count_given: false,
        size: DEFAULT_SIZE,
        slots: DEFAULT_SLOTS,
        slot_size: DEFAULT_SLOT_SIZE,
        quiet: false,
    };
    let mut given = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => {
                let name = args.value("--name")?;
                check_name(&name)?;
                opts.name = Some(name);
            }
            "--count" => {
                opts.count = args.number("--count", 1, MAX_COUNT)?;
                opts.count_given = true;
            }
            "--size" => opts.size = args.number("--size", 1, MAX_MESSAGE)?,
            "--slots" => opts.slots = args.number("--slots", 1, MAX_SLOTS)?,
            "--slot-size" => opts.slot_size = args.number("--slot-size", 1, MAX_SLOT_SIZE)?,
            "--quiet" => opts.quiet = true,
            other => return Err(args.unknown(other)),
        }
        given.push(arg);
    }
    let has = |option: &str| given.iter().any(|g| g == option);
    match role {
        None if opts.name.is_some() => {
            return Err(usage(
                "--name is for the sender and receiver roles; the story picks its own",
            ));
        }
        Some(role) if opts.name.is_none() => {
            return Err(usage(format!(
                "the {role} needs --name /NAME, e.g. --name /demo"
            )));
        }
        Some("receiver") if has("--size") => {
            return Err(usage(
                "--size is set by the sender; the receiver takes any size",
            ));
        }
        Some("sender") if has("--slots") || has("--slot-size") => {
            return Err(usage(
                "--slots/--slot-size are set by the receiver, which creates the segment",
            ));
        }
        _ => {}
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_bounded() {
        assert_eq!(HEADER_SPACE % 64, 0);
        assert_eq!(slot_stride(1) % 64, 0);
        assert!(slot_stride(4096) >= 4096 + size_of::<SlotHeader>());
        // The largest segment fits comfortably in usize and under 2 GiB.
        assert!(segment_len(MAX_SLOTS, MAX_SLOT_SIZE) < 2 << 30);
    }

    #[test]
    fn names() {
        assert!(check_name("/demo").is_ok());
        for bad in ["demo", "/", "/a/b", "", &format!("/{}", "x".repeat(251))] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
