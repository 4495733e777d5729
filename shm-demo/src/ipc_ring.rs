//! The mechanism, part 1 of 3: the ring both variants share. The segment's
//! layout, its mapping (`munmap`/`shmdt` in `Segment`'s `Drop`), the two
//! semaphores' roles, and the send and receive loops. `ipc_posix.rs` and
//! `ipc_sysv.rs` (parts 2 and 3) differ only in how they make, find and
//! remove the memory and the semaphores. `ipc-bench` runs this same ring
//! (see `lib.rs`); what exists only for it says so.
//!
//! Read top to bottom: the layout, `Segment` (publish with MAGIC last, the
//! sender's claim), the semaphores, `Writer::write` (wait(empty), write,
//! post(full)), `Reader::read` (wait(full), copy out, post(empty)), and the
//! loops the roles call. The checks that guard it are in `checks.rs`.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::check_stop;
use common::payload::{self, CheckReport, Checker, Verdict};
use common::psem::{SharedSem, Wait};
use common::report::{Narrator, Summary};
use common::sysv_sem::SemSet;

use crate::checks::{self, MapsId, PeerWatch};

/// "IPCSHM01": the first 8 bytes of every segment this demo makes.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IPCSHM01");
/// Bumped whenever the layout changes, so old and new programs refuse
/// each other's segments instead of misreading them.
pub const VERSION: u32 = 2;
pub const MAX_SLOTS: u32 = 1024;
pub const MAX_SLOT_SIZE: u32 = 1024 * 1024;
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Which semaphores guard the ring, stored in the header so a POSIX sender
/// never uses a System V segment's (unused) `sem_t` fields, or the reverse.
pub const SYNC_POSIX: u32 = 1;
pub const SYNC_SYSV: u32 = 2;
/// A slot whose piece says "no more messages".
const FLAG_END: u32 = 1;
/// How long one semaphore wait lasts before we check that the peer lives.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a sender waits for a receiver that is still initialising.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The layout. Everything another process writes is an atomic or sits in an
// UnsafeCell (the semaphores), so a `&Header` never promises that memory
// does not change under us.
// ---------------------------------------------------------------------------

#[repr(C)]
pub struct Header {
    /// Written last by the receiver (Release): a sender that reads MAGIC
    /// (Acquire) sees every field stored before it.
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub slot_count: AtomicU32,
    pub slot_size: AtomicU32,
    pub receiver_pid: AtomicI32,
    /// 0 until a sender claims the segment with a compare-and-swap from 0
    /// (`Segment::claim_sender`): one sender per segment.
    pub sender_pid: AtomicI32,
    /// SYNC_POSIX or SYNC_SYSV.
    pub sync: AtomicU32,
    /// System V variant: the id of the semaphore set that guards this
    /// segment, so nobody takes (or removes) another set under the same key.
    pub sem_id: AtomicI32,
    /// POSIX variant: counts free slots. The sender waits on it before
    /// writing a slot, so it never overwrites a message not yet read.
    pub empty: UnsafeCell<libc::sem_t>,
    /// POSIX variant: counts filled slots. The receiver waits on it before
    /// reading a slot, so it never reads one the sender is still writing.
    pub full: UnsafeCell<libc::sem_t>,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("magic", &self.magic)
            .field("slot_count", &self.slot_count)
            .field("slot_size", &self.slot_size)
            .field("receiver_pid", &self.receiver_pid)
            .field("sender_pid", &self.sender_pid)
            .finish_non_exhaustive()
    }
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
pub const HEADER_SPACE: usize = round_up(size_of::<Header>(), 64);

fn slot_stride(slot_size: usize) -> usize {
    round_up(size_of::<SlotHeader>() + slot_size, 64)
}

pub fn segment_len(slot_count: u32, slot_size: u32) -> usize {
    HEADER_SPACE + slot_count as usize * slot_stride(slot_size as usize)
}

/// How a mapping is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// POSIX: `munmap(base, len)`.
    Munmap,
    /// System V: `shmdt(base)`.
    Shmdt,
}

/// One mapping of a segment; unmapped (or detached) on drop.
#[derive(Debug)]
pub struct Segment {
    base: NonNull<c_void>,
    pub(crate) len: usize,
    detach: Detach,
    /// The ring's shape: set by `init_header` (receiver) or by
    /// `checks::validate` (sender) once the header passed its checks.
    pub(crate) slot_count: usize,
    pub(crate) slot_size: usize,
}

impl Segment {
    /// Take charge of `len` bytes mapped at `base`.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be a live shared mapping made by `mmap`
    /// (`Detach::Munmap`) or `shmat` (`Detach::Shmdt`), page-aligned, not
    /// accessed through anything but this `Segment` in this process.
    pub unsafe fn new(base: NonNull<c_void>, len: usize, detach: Detach) -> Segment {
        Segment {
            base,
            len,
            detach,
            slot_count: 0,
            slot_size: 0,
        }
    }

    pub fn header(&self) -> &Header {
        assert!(self.len >= HEADER_SPACE, "mapping too small for a header");
        // SAFETY: the mapping is at least HEADER_SPACE long (checked above)
        // and page-aligned; Header holds only atomics and UnsafeCells,
        // valid for any bit pattern and for memory others change.
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    /// The slot header and data pointer of slot `i`.
    fn slot(&self, i: usize) -> (&SlotHeader, *mut u8) {
        assert!(i < self.slot_count, "slot index out of range");
        let offset = HEADER_SPACE + i * slot_stride(self.slot_size);
        assert!(offset + slot_stride(self.slot_size) <= self.len);
        // SAFETY: the slot lies inside the mapping (asserted); offsets are
        // multiples of 64, so the header is aligned; SlotHeader is atomics.
        unsafe {
            let at = self.base.cast::<u8>().as_ptr().add(offset);
            (&*at.cast::<SlotHeader>(), at.add(size_of::<SlotHeader>()))
        }
    }

    /// The receiver's side: write a fresh header for `slots` slots of
    /// `slot_size` bytes (the semaphores are the caller's business), and
    /// publish it by storing MAGIC last.
    pub fn init_header(&mut self, slots: u32, slot_size: u32, sync: u32) {
        assert_eq!(self.len, segment_len(slots, slot_size));
        self.slot_count = slots as usize;
        self.slot_size = slot_size as usize;
        let header = self.header();
        header.version.store(VERSION, Ordering::Relaxed);
        header.slot_count.store(slots, Ordering::Relaxed);
        header.slot_size.store(slot_size, Ordering::Relaxed);
        header
            .receiver_pid
            .store(std::process::id() as i32, Ordering::Relaxed);
        header.sender_pid.store(0, Ordering::Relaxed);
        header.sync.store(sync, Ordering::Relaxed);
    }

    /// Publish: a sender that sees MAGIC (Acquire) sees all stored before.
    pub fn publish(&self) {
        self.header().magic.store(MAGIC, Ordering::Release);
    }

    /// The sender's side: become the segment's one sender, atomically. A
    /// compare-and-swap from 0 to our pid: of two senders that try at the
    /// same moment exactly one succeeds; the other gets `Err(holder)`.
    /// (A plain store would let both believe they own the slots, and two
    /// writers interleave pieces: duplicates, reordering, corruption.)
    pub fn claim_sender(&self) -> std::result::Result<(), i32> {
        claim(&self.header().sender_pid)
    }

    /// The sender's side of the initialisation race. The receiver creates
    /// the object (O_EXCL: exactly one creator), sizes it, fills the header
    /// and stores MAGIC last with Release ordering; a sender may open it in
    /// between and find zeros. So it waits for MAGIC with Acquire ordering
    /// (then it also sees every field stored before MAGIC), but not forever:
    /// after INIT_TIMEOUT the zero it still sees is refused by
    /// `checks::validate`. Returns the magic it saw.
    pub fn wait_published(&self) -> u64 {
        self.wait_published_within(INIT_TIMEOUT)
    }

    /// `wait_published` with another bound (the story shows the bound
    /// with a short one).
    pub fn wait_published_within(&self, bound: Duration) -> u64 {
        let header = self.header();
        let start = Instant::now();
        loop {
            let magic = header.magic.load(Ordering::Acquire);
            if magic != 0 || start.elapsed() > bound {
                return magic;
            }
            sleep(Duration::from_millis(10));
        }
    }

    pub fn slots(&self) -> (usize, usize) {
        (self.slot_count, self.slot_size)
    }

    /// Where the mapping starts (for the SIGBUS handler's "is it ours?").
    pub fn base(&self) -> *const c_void {
        self.base.as_ptr()
    }

    /// The POSIX semaphores in the header.
    ///
    /// # Safety
    ///
    /// The receiver has `sem_init`ed both (the header says SYNC_POSIX), and
    /// they are used only while `self` stays mapped.
    pub unsafe fn posix_sems(&self) -> (Sem, Sem) {
        let header = self.header();
        let (empty, full) = (header.empty.get(), header.full.get());
        // SAFETY: per this function's contract.
        unsafe {
            (
                Sem::Posix(SharedSem::attach(empty), empty),
                Sem::Posix(SharedSem::attach(full), full),
            )
        }
    }
}

/// The compare-and-swap of `Segment::claim_sender`, on any header's
/// `sender_pid` word: 0 -> our pid, or `Err(holder)`.
pub fn claim(sender_pid: &AtomicI32) -> std::result::Result<(), i32> {
    let me = std::process::id() as i32;
    sender_pid
        .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
        .map(drop)
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: base/len are what mmap/shmat gave us, and no reference
        // into the mapping outlives `self` (they all borrow it).
        unsafe {
            match self.detach {
                // munmap(2): the pages leave our address space; the object
                // itself lives on while its name or another mapping does.
                Detach::Munmap => {
                    let _ = nix::sys::mman::munmap(self.base, self.len);
                }
                // shmdt(2): the kernel's shm_nattch drops by one; a segment
                // marked IPC_RMID goes at the last detach.
                Detach::Shmdt => {
                    libc::shmdt(self.base.as_ptr());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The two semaphores, whichever API provides them
// ---------------------------------------------------------------------------

/// SEM_UNDO or not, for a System V `semop`: named, not a bare `bool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// No undo: right for the ring's counters, which pass from one process
    /// to the other (an undo at the sender's exit would take back messages
    /// not yet read).
    No,
    /// SEM_UNDO: the kernel reverses this change when the process exits.
    /// Right for a lock the same process takes and gives back; the System V
    /// story shows it on a scratch semaphore.
    SemUndo,
}

/// `semtimedop(2)` on semaphore `index` of `set`: add `delta`, waiting at
/// most `timeout` if that would make it negative. (common's `SemSet::op`
/// takes SEM_UNDO as a bool; this names it.)
pub fn semop(
    set: SemSet,
    index: u16,
    delta: i16,
    undo: Undo,
    timeout: Duration,
) -> nix::Result<Wait> {
    set.op(index, delta, undo == Undo::SemUndo, timeout)
}

/// One counting semaphore of the ring.
#[derive(Debug, Clone, Copy)]
pub enum Sem {
    /// A `sem_t` inside the segment (and its address, for `check_sem_t`).
    Posix(SharedSem, *mut libc::sem_t),
    /// Semaphore `index` of a System V set. Never with SEM_UNDO: these
    /// counts pass from one process to the other (see `Undo`).
    SysV(SemSet, u16),
}

impl Sem {
    fn post(self) -> Result<()> {
        match self {
            Sem::Posix(sem, raw) => {
                checks::check_sem_t(raw)?; // not scribbled on (checks.rs)
                // sem_post(3): +1, and wake one waiter in any process.
                sem.post().context("sem_post")
            }
            Sem::SysV(set, i) => loop {
                // semop(2) +1: never waits; no SEM_UNDO (see `Undo`).
                match semop(set, i, 1, Undo::No, TICK).context("semop(+1)")? {
                    Wait::Acquired => return Ok(()),
                    // +1 never waits, but a signal can still interrupt it.
                    Wait::Interrupted | Wait::TimedOut => check_stop()?,
                }
            },
        }
    }

    fn wait_for(self, timeout: Duration) -> Result<Wait> {
        match self {
            Sem::Posix(sem, raw) => {
                checks::check_sem_t(raw)?; // not scribbled on (checks.rs)
                // sem_timedwait(3): -1, or sleep until a post or the timeout.
                sem.wait_for(timeout).context("sem_timedwait")
            }
            // semtimedop(2) -1: the same, in the kernel; no SEM_UNDO.
            Sem::SysV(set, i) => semop(set, i, -1, Undo::No, timeout).context("semtimedop(-1)"),
        }
    }
}

/// Wait on `sem`; every TICK without success, ask `peer_gone` whether the
/// other side has died (it then names the reason) and stop if so. A peer
/// that lives but makes no progress (stopped with Ctrl-Z or SIGSTOP, or
/// stuck) is given up on after `idle` (the --timeout), if set.
fn wait_on(
    sem: Sem,
    what: &str,
    idle: Option<Duration>,
    peer_gone: &mut dyn FnMut() -> Option<String>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        check_stop()?;
        match sem
            .wait_for(TICK)
            .with_context(|| format!("waiting on {what}"))?
        {
            Wait::Acquired => return Ok(()),
            Wait::Interrupted => continue, // check_stop decides
            Wait::TimedOut => {
                // Liveness (checks.rs): a dead peer ends the wait now.
                if let Some(reason) = peer_gone() {
                    bail!("{reason} while we waited on the {what} semaphore");
                }
                if let Some(idle) = idle.filter(|&idle| start.elapsed() >= idle) {
                    bail!(
                        "no progress for {} s: the peer is alive but has not posted the {what} \
                         semaphore (stopped with Ctrl-Z or SIGSTOP? --timeout sets this limit)",
                        idle.as_secs()
                    );
                }
            }
        }
    }
}

/// The sender's two checks before it writes a byte: the receiver the
/// header names really maps this segment (then watch it through a pidfd),
/// and nobody else is sending into it (claim it with a compare-and-swap).
/// `receiver_pid`: from the header (POSIX) or the kernel's shm_cpid (System V).
/// `sender_pid`: the header's word (both layouts have one; the futex ring
/// in `ipc_futex.rs` uses this too).
pub fn attach_as_sender(
    sender_pid: &AtomicI32,
    receiver_pid: i32,
    id: MapsId,
    say: &Narrator,
) -> Result<PeerWatch> {
    let receiver = PeerWatch::attach("receiver", receiver_pid, id)?;
    if let Err(holder) = claim(sender_pid) {
        bail!(
            "this segment already has a sender (pid {holder}): one sender per segment, since \
             two writers would fill the same slots; this one leaves it alone"
        );
    }
    say.step(format!(
        "claimed the segment: sender_pid 0 -> {} by compare-and-swap (a second sender is \
         refused); receiver pid {} maps it (/proc/{}/maps), watched through a pidfd",
        std::process::id(),
        receiver.pid(),
        receiver.pid()
    ));
    Ok(receiver)
}

/// The receiver's wait for a sender to claim the segment. Deliberately
/// without a time limit: like a server, the receiver in terminal 1 waits
/// until you start the sender in terminal 2 (Ctrl-C ends it). Once the
/// claim appears, the claimed pid must map the segment: then it is watched
/// through a pidfd, and every later wait has the idle --timeout.
pub fn wait_for_sender(sender_pid: &AtomicI32, id: MapsId, say: &Narrator) -> Result<PeerWatch> {
    loop {
        check_stop()?;
        let pid = sender_pid.load(Ordering::Acquire);
        if pid != 0 {
            let sender = PeerWatch::attach_or_gone("sender", pid, id);
            say.step(match sender.gone() {
                None => format!(
                    "a sender claimed the segment: pid {pid}, which maps it (/proc/{pid}/maps); \
                     watching it through a pidfd"
                ),
                Some(_) => format!(
                    "a sender claimed the segment: pid {pid}, which does not map it (now): \
                     finished already, or a forged claim; reading what the ring holds"
                ),
            });
            return Ok(sender);
        }
        std::thread::sleep(TICK);
    }
}

// ---------------------------------------------------------------------------
// sending and receiving
// ---------------------------------------------------------------------------

/// The sender's side of the ring, one message at a time.
#[derive(Debug)]
pub struct Writer<'a> {
    segment: &'a Segment,
    empty: Sem,
    full: Sem,
    /// Our own slot index: nothing shared to trust.
    next: usize,
    /// The idle timeout of each wait on `empty`; `None`: no limit.
    idle: Option<Duration>,
}

impl<'a> Writer<'a> {
    /// Start writing. The caller must be the segment's only writer: the
    /// demo's sender has won `Segment::claim_sender`; ipc-bench's forked
    /// child is the one writer of its anonymous mapping.
    pub fn new(segment: &'a Segment, (empty, full): (Sem, Sem)) -> Writer<'a> {
        Writer {
            segment,
            empty,
            full,
            next: 0,
            idle: None,
        }
    }

    /// Give up a wait on `empty` after `idle` without progress.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    // ANCHOR: ring_write
    /// Write message `seq` of `size` bytes: for each slot it needs,
    /// wait(empty), write the piece, post(full).
    pub fn write(
        &mut self,
        seq: u64,
        size: usize,
        peer_gone: &mut dyn FnMut() -> Option<String>,
    ) -> Result<()> {
        let segment = self.segment;
        let mut offset = 0;
        loop {
            wait_on(self.empty, "empty", self.idle, peer_gone)?;
            let (slot, data) = segment.slot(self.next);
            let piece = (size - offset).min(segment.slot_size);
            // SAFETY: `data` has slot_size >= piece bytes inside the
            // mapping; between our wait on `empty` and our post on `full`
            // this slot is ours alone: we are the only writer (the claim,
            // see `new`) and the receiver only reads slots, and only after
            // `full`, so a &mut to it aliases nothing.
            let bytes = unsafe { std::slice::from_raw_parts_mut(data, piece) };
            payload::fill_at(seq, size, offset, bytes);
            slot.seq.store(seq, Ordering::Relaxed);
            slot.message_len.store(size as u64, Ordering::Relaxed);
            slot.offset.store(offset as u64, Ordering::Relaxed);
            slot.piece_len.store(piece as u32, Ordering::Relaxed);
            slot.flags.store(0, Ordering::Relaxed);
            // What makes these plain stores safe to read in the other
            // process: POSIX lists sem_post/sem_timedwait (and semop) among
            // the calls that synchronise memory. Concretely the ring needs
            // release/acquire, not a full barrier: every store above happens
            // before the receiver's wait that takes this post returns.
            self.full.post()?;
            self.next = (self.next + 1) % segment.slot_count;
            offset += piece;
            if offset >= size {
                return Ok(());
            }
        }
    }
    // ANCHOR_END: ring_write

    /// The slot the next write goes to. Only for ipc-bench, which rebuilds
    /// a Writer per message and carries the index over.
    pub fn position(&self) -> usize {
        self.next
    }

    /// Continue at `slot` (from `position` of an earlier Writer). Only for
    /// ipc-bench.
    pub fn resume_at(&mut self, slot: usize) {
        self.next = slot % self.segment.slot_count;
    }

    /// One last slot says "done", in order behind the last message.
    pub fn end(&mut self, peer_gone: &mut dyn FnMut() -> Option<String>) -> Result<()> {
        wait_on(self.empty, "empty", self.idle, peer_gone)?;
        let (slot, _) = self.segment.slot(self.next);
        slot.piece_len.store(0, Ordering::Relaxed);
        slot.flags.store(FLAG_END, Ordering::Relaxed);
        self.full.post()
    }
}

/// The receiver's side of the ring, one message at a time.
#[derive(Debug)]
pub struct Reader<'a> {
    segment: &'a Segment,
    empty: Sem,
    full: Sem,
    next: usize,
    /// The idle timeout of each wait on `full`; `None`: no limit.
    idle: Option<Duration>,
}

impl<'a> Reader<'a> {
    pub fn new(segment: &'a Segment, (empty, full): (Sem, Sem)) -> Reader<'a> {
        Reader {
            segment,
            empty,
            full,
            next: 0,
            idle: None,
        }
    }

    /// Give up a wait on `full` after `idle` without progress.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// The slot the next read comes from. Only for ipc-bench (see Writer).
    pub fn position(&self) -> usize {
        self.next
    }

    /// Continue at `slot` (from `position` of an earlier Reader). Only for
    /// ipc-bench.
    pub fn resume_at(&mut self, slot: usize) {
        self.next = slot % self.segment.slot_count;
    }

    // ANCHOR: ring_read
    /// Read the next whole message into `message` and return its sequence
    /// number, or `None` at the end marker. Each slot: wait(full), check
    /// and copy the piece out, post(empty).
    pub fn read(
        &mut self,
        message: &mut Vec<u8>,
        peer_gone: &mut dyn FnMut() -> Option<String>,
    ) -> Result<Option<u64>> {
        let segment = self.segment;
        message.clear();
        let mut current: Option<(u64, usize)> = None; // (seq, length) being assembled
        loop {
            wait_on(self.full, "full", self.idle, peer_gone)?;
            let (slot, data) = segment.slot(self.next);
            let at = self.next;
            self.next = (self.next + 1) % segment.slot_count;
            if slot.flags.load(Ordering::Relaxed) & FLAG_END != 0 {
                self.empty.post()?;
                if current.is_some() {
                    bail!("slot {at}: end marker in the middle of a message");
                }
                return Ok(None);
            }
            // Everything below came from another process: check before use
            // (inline, since the copy depends on it; a first reading may
            // skip the checks down to the copy).
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
            // Copy the piece out with a raw copy (no reference into memory
            // the sender may write); checks then run on our private copy.
            message.reserve(piece);
            // SAFETY: `data` has at least slot_size >= piece readable bytes
            // in the mapping; `message` has room for `piece` more bytes
            // (reserve), and the regions cannot overlap (private heap vs
            // shared mapping).
            unsafe {
                let end = message.as_mut_ptr().add(message.len());
                std::ptr::copy_nonoverlapping(data, end, piece);
                message.set_len(message.len() + piece);
            }
            // The slot's contents are in our copy: give it back.
            self.empty.post()?;
            if message.len() == len {
                return Ok(Some(seq));
            }
        }
    }
    // ANCHOR_END: ring_read
}

/// The sender's loop: `count` messages, then the end marker. Returns the
/// time it took.
pub fn send(
    segment: &Segment,
    sems: (Sem, Sem),
    count: u64,
    size: usize,
    idle: Duration,
    say: &Narrator,
    peer_gone: &mut dyn FnMut() -> Option<String>,
) -> Result<Duration> {
    let mut writer = Writer::new(segment, sems).idle_timeout(idle);
    let pieces = size.div_ceil(segment.slot_size).max(1);
    say.step(format!(
        "writing each message straight into the slots (no intermediate buffer): \
         {pieces} slot(s) per {size}-byte message"
    ));
    let start = Instant::now();
    for seq in 0..count {
        writer.write(seq, size, peer_gone)?;
        say.message(format!("wrote message {seq} ({size} bytes)"));
    }
    writer.end(peer_gone)?;
    Ok(start.elapsed())
}

/// The receiver's loop: every message until the end marker, each checked.
/// Returns the checker's counts and the time from the first message.
pub fn receive(
    segment: &Segment,
    sems: (Sem, Sem),
    expected: Option<u64>,
    idle: Duration,
    say: &Narrator,
    peer_gone: &mut dyn FnMut() -> Option<String>,
) -> Result<(CheckReport, Duration)> {
    let mut checker = Checker::new(expected);
    let mut reader = Reader::new(segment, sems).idle_timeout(idle);
    let mut message = Vec::new();
    let mut start = None;
    while let Some(seq) = reader.read(&mut message, peer_gone)? {
        start.get_or_insert_with(Instant::now);
        let verdict = checker.check_numbered(seq, &message);
        let line = format!("message {seq} ({} bytes): {verdict}", message.len());
        // A bad message is reported even with --quiet.
        if verdict == Verdict::Ok {
            say.message(line)
        } else {
            say.step(line)
        }
    }
    say.step("read the end marker: the sender is done");
    let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
    Ok((checker.report(), elapsed))
}

/// The receiver's last lines; an error if any message failed its check.
pub fn finish_receiving(
    mechanism: &'static str,
    report: CheckReport,
    elapsed: Duration,
    say: &Narrator,
) -> Result<()> {
    say.step(format!("checked: {report}"));
    say.line(Summary {
        mechanism,
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

/// The sender's summary line; with `summary` false (the sender a story
/// starts, which prints the run's one summary itself) a narration line.
pub fn sender_summary(
    mechanism: &'static str,
    count: u64,
    size: usize,
    elapsed: Duration,
    say: &Narrator,
    summary: bool,
) {
    if !summary {
        say.step(format!(
            "sent {count} messages, {} bytes, in {:.3} s",
            count * size as u64,
            elapsed.as_secs_f64()
        ));
        return;
    }
    say.line(Summary {
        mechanism,
        messages: count,
        bytes: count * size as u64,
        errors: 0,
        elapsed,
    });
}

/// Test helpers both rings' fuzz tests use (this ring and `ipc_futex.rs`'s).
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Overwrite every byte after the first `header` bytes (slot headers
    /// and data) of the `len`-byte mapping at `base` with `garbage`,
    /// repeated.
    pub(crate) fn fill_slots(base: NonNull<c_void>, len: usize, header: usize, garbage: &[u8]) {
        if garbage.is_empty() {
            return;
        }
        for i in 0..len - header {
            // SAFETY: test-only: `header + i` is inside the mapping, and
            // nothing else reads or writes it meanwhile.
            unsafe {
                let at = base.cast::<u8>().as_ptr().add(header + i);
                at.write(garbage[i % garbage.len()]);
            }
        }
    }

    /// 64 fuzz cases by default (each maps a segment); PROPTEST_CASES
    /// raises it for a fuzzing run.
    pub(crate) fn fuzz_cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(64)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{fill_slots, fuzz_cases};
    use super::*;
    use std::num::NonZeroUsize;

    /// A segment in anonymous shared memory, header initialised and
    /// published, POSIX semaphores ready, as a receiver would make it.
    fn segment(slots: u32, slot_size: u32) -> Segment {
        let len = segment_len(slots, slot_size);
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address.
        let base = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                NonZeroUsize::new(len).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
            )
        }
        .unwrap();
        // SAFETY: the mapping just made.
        let mut segment = unsafe { Segment::new(base, len, Detach::Munmap) };
        segment.init_header(slots, slot_size, SYNC_POSIX);
        let header = segment.header();
        // SAFETY: both sem_t are inside the mapping, unused so far.
        unsafe {
            SharedSem::init(header.empty.get(), slots).unwrap();
            SharedSem::init(header.full.get(), 0).unwrap();
        }
        segment.publish();
        segment
    }

    proptest::proptest! {
        // 64 cases by default (each maps a segment); PROPTEST_CASES
        // raises it for a fuzzing run.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(fuzz_cases()))]

        /// Fuzz: a hostile sender fills the slots with anything and posts
        /// `full` as often as it likes. The reader returns messages within
        /// bounds, the end, or an error: never a panic, an out-of-bounds
        /// access, an unbounded allocation or a hang.
        #[test]
        fn fuzz_reader_survives_any_slot_contents(
            slots in 1u32..6,
            slot_size in 1u32..300,
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            posts in 0u32..64,
        ) {
            let segment = segment(slots, slot_size);
            fill_slots(segment.base, segment.len, HEADER_SPACE, &garbage);
            // SAFETY: initialised by `segment` above.
            let (empty, full) = unsafe { segment.posix_sems() };
            for _ in 0..posts {
                full.post().unwrap();
            }
            let mut reader = Reader::new(&segment, (empty, full));
            let mut message = Vec::new();
            // The hostile sender "dies" as soon as the reader would wait.
            let mut gone = || Some("the fuzzer's sender".to_string());
            for _ in 0..100 {
                match reader.read(&mut message, &mut gone) {
                    Ok(Some(_)) => proptest::prop_assert!(message.len() <= MAX_MESSAGE),
                    Ok(None) | Err(_) => break,
                }
            }
        }

        /// Fuzz: any header bytes; `validate` accepts only what it can map.
        #[test]
        fn fuzz_validate_refuses_bad_headers(words in proptest::collection::vec(proptest::prelude::any::<u32>(), 8)) {
            let mut segment = segment(2, 64);
            let header = segment.header();
            header.version.store(words[0] % 3, Ordering::Relaxed);
            header.slot_count.store(words[1] % 2000, Ordering::Relaxed);
            header.slot_size.store(words[2], Ordering::Relaxed);
            header.sync.store(words[3] % 4, Ordering::Relaxed);
            if words[4] % 2 == 0 {
                // Never 0: that means "still initialising", and
                // wait_published would wait for it.
                header.magic.store(u64::from(words[5]) | 1 << 40, Ordering::Relaxed);
            }
            let magic = segment.wait_published();
            if checks::validate(&mut segment, magic, "fuzz", SYNC_POSIX).is_ok() {
                let (slots, size) = segment.slots();
                proptest::prop_assert_eq!(segment_len(slots as u32, size as u32), segment.len);
            }
        }
    }

    #[test]
    fn one_sender_wins_the_claim() {
        let segment = segment(2, 64);
        assert_eq!(segment.claim_sender(), Ok(()));
        let me = std::process::id() as i32;
        // A second claim, even our own, finds the slot taken.
        assert_eq!(segment.claim_sender(), Err(me));
    }

    #[test]
    fn a_scribbled_sem_t_is_refused_before_glibc_sees_it() {
        let segment = segment(2, 64);
        // SAFETY: initialised by `segment` above.
        let (empty, full) = unsafe { segment.posix_sems() };
        full.post().unwrap();
        assert!(empty.wait_for(TICK).is_ok());
        // What a hostile peer does: garbage over the `full` sem_t.
        let header = segment.header();
        // SAFETY: test-only: the sem_t lies inside the mapping and nobody
        // else uses it; it is not used again except through the check.
        unsafe {
            header
                .full
                .get()
                .cast::<u8>()
                .write_bytes(0xA5, size_of::<libc::sem_t>())
        };
        if cfg!(target_env = "gnu") {
            let err = full.post().unwrap_err();
            assert!(format!("{err:#}").contains("overwritten"), "{err:#}");
            assert!(full.wait_for(TICK).is_err());
        }
    }

    #[test]
    fn layout_is_aligned_and_bounded() {
        assert_eq!(HEADER_SPACE % 64, 0);
        assert_eq!(slot_stride(1) % 64, 0);
        assert!(slot_stride(4096) >= 4096 + size_of::<SlotHeader>());
        // The largest segment fits comfortably under 2 GiB.
        assert!(segment_len(MAX_SLOTS, MAX_SLOT_SIZE) < 2 << 30);
    }
}
