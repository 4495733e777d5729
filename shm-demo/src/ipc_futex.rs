//! The mechanism, variant 3: the ring synchronised with two counters and
//! the futex system call instead of two semaphores (`shm-demo futex`).
//! Same slots as `ipc_ring.rs`, same header prefix, its own sync kind.
//!
//! A semaphore ring pays one `sem_post` + `sem_wait` pair per slot, and a
//! receiver that falls asleep after every message pays a `FUTEX_WAKE`
//! syscall and a context switch for each one. Here each side publishes a
//! counter with one atomic store, spins a little before it sleeps, and
//! the other side makes the `FUTEX_WAKE` system call only when the sleeper
//! has said, in shared memory, that it sleeps.
//!
//! # The layout, byte by byte
//!
//! Native byte order (little-endian on x86-64 and aarch64), every field
//! naturally aligned; the segment starts page-aligned. Offsets in bytes.
//!
//! ```text
//! offset size  field              written by  meaning
//! ------ ----  -----------------  ----------  ---------------------------------------
//!      0    8  magic              receiver    "IPCSHM01" as a u64, stored LAST (Release)
//!      8    4  version            receiver    2 (ipc_ring::VERSION: same prefix)
//!     12    4  slot_count         receiver    1..=1024
//!     16    4  slot_size          receiver    data bytes per slot, 1..=1048576
//!     20    4  receiver_pid       receiver    i32
//!     24    4  sender_pid         sender      i32, 0 until claimed by CAS 0 -> pid
//!     28    4  sync               receiver    3 = SYNC_FUTEX (1 = POSIX sem_t, 2 = System V)
//!     32    4  sem_id             -           0 (System V only; kept for the common prefix)
//!     36    4  strategy           receiver    1 Spin, 2 SpinYield, 3 SpinFutex (both sides obey)
//!     40   24  reserved           -           0
//!   -- cache line 1: the receiver waits here --------------------------------
//!     64    4  published          sender      u32 futex word: slots published so far (wraps)
//!     68    4  receiver_sleeping  both        u32: 1 = receiver is (about to be) in FUTEX_WAIT
//!                                             on `published`; the sender swaps it back to 0
//!     72    8  sender spins       sender      u64 statistics (informational, never trusted):
//!     80    8  sender yields                  spin iterations, sched_yield calls,
//!     88    8  sender waits                   FUTEX_WAIT calls, FUTEX_WAKE calls,
//!     96    8  sender wakes                   processes those wakes woke
//!    104    8  sender woken
//!    112   16  reserved           -           0
//!   -- cache line 2: the sender waits here ----------------------------------
//!    128    4  released           receiver    u32 futex word: slots released so far (wraps)
//!    132    4  sender_sleeping    both        u32: 1 = sender is (about to be) in FUTEX_WAIT
//!                                             on `released`; the receiver swaps it back to 0
//!    136   40  receiver spins, yields, waits, wakes, woken (u64 each, as above)
//!    176   16  reserved           -           0
//!   -- 192 = HEADER_SPACE: the slots ----------------------------------------
//!    192 + i * stride   slot i, stride = round_up(32 + slot_size, 64):
//!         +0   8  seq           which message this piece belongs to
//!         +8   8  message_len   the whole message's length (<= 64 MiB)
//!        +16   8  offset        where this piece starts in the message
//!        +24   4  piece_len     data bytes in this slot (<= slot_size)
//!        +28   4  flags         1 = END (no more messages; piece_len 0)
//!        +32      data[slot_size]
//! segment length = 192 + slot_count * stride
//! ```
//!
//! # The protocol
//!
//! Each side keeps its own slot index (`next`, 0, 1, ... mod slot_count) and
//! its own copy of its own counter; the peer's counter is only compared.
//! The number of filled slots is `published - released` (wrapping u32
//! arithmetic); anything above `slot_count` is a corrupt segment, refused.
//!
//! - Sender, per slot: wait until `published - released < slot_count`
//!   (Acquire load of `released`); write slot `next` (data, then the slot
//!   header); `published += 1` (Release store); then, SpinFutex only, a
//!   SeqCst fence, and if `receiver_sleeping` is 1, swap it to 0 and
//!   `FUTEX_WAKE(&published, 1)`.
//! - Receiver, per slot: wait until `published != released` (Acquire load
//!   of `published`); check slot `next` in place (every field bounds-checked)
//!   and hand its data out borrowed; when done with it, `released += 1`
//!   (Release store); then the same fence-and-flag wake for the sender on
//!   `sender_sleeping` / `released`.
//! - Waiting (both): check the peer's counter; spin for `SPIN_TIME`; then
//!   Spin: keep spinning; SpinYield: `sched_yield` between checks;
//!   SpinFutex: store 1 in our sleeping flag, SeqCst fence, load the
//!   counter again, and if it still holds the value seen,
//!   `FUTEX_WAIT(&counter, seen, 100 ms)` (shared futex: no
//!   FUTEX_PRIVATE_FLAG); on return store 0 in the flag and look again.
//!   Every 100 ms (TICK) without progress: Ctrl-C, a dead peer, the idle
//!   timeout are checked.
//! - End: the sender publishes one slot with flags = END after its last
//!   message; the receiver releases it and stops.
//! - Statistics: each side stores its own (Relaxed) after each FUTEX_WAKE
//!   it makes; the sender stores its final ones just before it publishes
//!   END (so a receiver that has seen END reads them complete up to END),
//!   the receiver at its end. Nothing depends on them.
//! - A message that fits one slot is lent out in place: the receiver
//!   releases that slot only when the caller is done with it (at the next
//!   receive); a split message's slots are released piece by piece as they
//!   are copied together.
//! - futex(2) answering EFAULT on a futex word of the mapping means its
//!   page is gone (the object was truncated): reported as such.
//! - Setup: the receiver zero-fills, writes the header, stores MAGIC last
//!   (Release); a sender waits (bounded) for MAGIC with Acquire, checks every
//!   field (sync must be 3), claims `sender_pid` by compare-and-swap.
//!
//! Read top to bottom: the layout (`futex_layout`), the syscall wrappers,
//! the wait (`futex_wait`) and the wake (`futex_wake`), `Writer::write`
//! (`futex_send`), `Reader::receive` (`futex_receive`), the loops the demo's
//! roles call. ipc-bench drives `Ring::anonymous` + `Writer` + `Reader`
//! over fork.

use std::borrow::Borrow;
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering, fence};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::check_stop;
use common::payload::{self, CheckReport, Checker, Verdict};
use common::report::Narrator;
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};

use crate::ipc_ring::{INIT_TIMEOUT, MAGIC, MAX_MESSAGE, MAX_SLOT_SIZE, MAX_SLOTS, TICK, VERSION};

/// The sync kind of a futex segment: a POSIX or System V peer, which
/// expects 1 or 2 here, refuses it (and we refuse theirs).
pub const SYNC_FUTEX: u32 = 3;
/// How long a waiter spins (`spin_loop`, the CPU's "pause") before it
/// yields or sleeps. About what one sleep and wake-up costs (tens of
/// microseconds on a VM): a peer that comes back sooner costs neither side
/// a system call, and two sides that each slept after a few looks would
/// take turns waking each other (measured here: 260 000 sleeps for 2 M
/// 64-byte messages with 200 looks; a dozen with 50 µs). An idle waiter
/// spins 50 µs per 100 ms tick: 0.05% of a CPU. Time, not a count of
/// looks: a "pause" lasts 10 to 140 cycles depending on the CPU.
pub const SPIN_TIME: Duration = Duration::from_micros(50);
/// Looks at the counter between two readings of the clock while spinning
/// (`Instant::now` is a vDSO call: cheap, but not free).
pub const SPIN_BATCH: u32 = 64;
/// A slot whose flags say "no more messages".
const FLAG_END: u32 = 1;

/// How a side waits for its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Spin forever: lowest latency, one core at 100% while idle.
    Spin,
    /// Spin, then `sched_yield` between checks: gives the core away, but
    /// stays runnable (still 100% of an idle core).
    SpinYield,
    /// Spin, then sleep in `FUTEX_WAIT` until the peer wakes us: ~0 CPU
    /// while idle. The demo's default.
    SpinFutex,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::Spin, Strategy::SpinYield, Strategy::SpinFutex];

    /// The header's `strategy` word.
    pub fn code(self) -> u32 {
        match self {
            Strategy::Spin => 1,
            Strategy::SpinYield => 2,
            Strategy::SpinFutex => 3,
        }
    }

    pub fn from_code(code: u32) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The command-line word (`--wait`).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Spin => "spin",
            Strategy::SpinYield => "yield",
            Strategy::SpinFutex => "futex",
        }
    }

    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.name() == name)
    }
}

// ANCHOR: futex_layout
/// Bytes 0..64: the prefix every shm-demo segment shares, then `strategy`.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// Stored last by the receiver (Release); a sender that loads MAGIC
    /// (Acquire) sees every field stored before it.
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub slot_count: AtomicU32,
    pub slot_size: AtomicU32,
    pub receiver_pid: AtomicI32,
    /// 0 until a sender claims the segment (compare-and-swap from 0).
    pub sender_pid: AtomicI32,
    /// SYNC_FUTEX.
    pub sync: AtomicU32,
    /// Unused here (System V's semaphore set id in the other variant).
    pub sem_id: AtomicU32,
    /// `Strategy::code` of the ring, chosen by the receiver: both sides
    /// wait the same way, so a Spin ring needs no flags and no fences.
    pub strategy: AtomicU32,
    _reserved: [u64; 3],
    /// Cache line 1 (64..128): what the receiver waits on.
    pub to_receiver: Line,
    /// Cache line 2 (128..192): what the sender waits on.
    pub to_sender: Line,
}

/// One cache line: a counter the peer waits on, its "I sleep" flag, and
/// the statistics of the side that writes the counter. Separate lines, so
/// the sender's stores to `published` do not steal the line holding
/// `released` from the receiver (false sharing).
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Line {
    /// The futex word: `published` (line 1, sender) or `released` (line
    /// 2, receiver): slots so far, wrapping.
    pub counter: AtomicU32,
    /// 1 while the waiter on `counter` is in, or about to enter, FUTEX_WAIT.
    pub sleeping: AtomicU32,
    /// Statistics of the side that writes `counter`.
    pub stats: SharedStats,
}

/// What one side did while waiting and waking, as u64 counters.
#[repr(C)]
#[derive(Debug)]
pub struct SharedStats {
    pub spins: AtomicU64,
    pub yields: AtomicU64,
    pub waits: AtomicU64,
    pub wakes: AtomicU64,
    pub woken: AtomicU64,
}

/// The 32-byte header in front of each slot's data (as in `ipc_ring`).
#[repr(C)]
#[derive(Debug)]
struct SlotHeader {
    seq: AtomicU64,
    message_len: AtomicU64,
    offset: AtomicU64,
    piece_len: AtomicU32,
    flags: AtomicU32,
}

pub const HEADER_SPACE: usize = 192;
const SLOT_HEADER: usize = 32;

const _: () = assert!(size_of::<Header>() == HEADER_SPACE);
const _: () = assert!(size_of::<SlotHeader>() == SLOT_HEADER);
const _: () = assert!(std::mem::offset_of!(Header, strategy) == 36);
const _: () = assert!(std::mem::offset_of!(Header, to_receiver) == 64);
const _: () = assert!(std::mem::offset_of!(Header, to_sender) == 128);
const _: () = assert!(std::mem::offset_of!(Line, stats) == 8);

/// Slot header + data, rounded up to a cache line.
pub fn slot_stride(slot_size: usize) -> usize {
    (SLOT_HEADER + slot_size).div_ceil(64) * 64
}

pub fn segment_len(slot_count: u32, slot_size: u32) -> usize {
    HEADER_SPACE + slot_count as usize * slot_stride(slot_size as usize)
}
// ANCHOR_END: futex_layout

/// What one side did, as plain numbers (`Writer::stats`, `Reader::stats`,
/// or read from the peer's line of the header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Iterations of the spin loop.
    pub spins: u64,
    /// `sched_yield` calls (SpinYield).
    pub yields: u64,
    /// `FUTEX_WAIT` calls (SpinFutex): each one a sleep, unless the
    /// counter had already moved (EAGAIN).
    pub waits: u64,
    /// `FUTEX_WAKE` calls: only when the peer had said it sleeps.
    pub wakes: u64,
    /// Processes those `FUTEX_WAKE` calls woke (the kernel's count).
    pub woken: u64,
}

impl SharedStats {
    fn store(&self, stats: &Stats) {
        // Relaxed: informational numbers, read by the peer for narration.
        self.spins.store(stats.spins, Ordering::Relaxed);
        self.yields.store(stats.yields, Ordering::Relaxed);
        self.waits.store(stats.waits, Ordering::Relaxed);
        self.wakes.store(stats.wakes, Ordering::Relaxed);
        self.woken.store(stats.woken, Ordering::Relaxed);
    }

    pub fn load(&self) -> Stats {
        Stats {
            spins: self.spins.load(Ordering::Relaxed),
            yields: self.yields.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            wakes: self.wakes.load(Ordering::Relaxed),
            woken: self.woken.load(Ordering::Relaxed),
        }
    }
}

// ---------------------------------------------------------------------------
// The mapping
// ---------------------------------------------------------------------------

/// One mapping of a futex segment; `munmap` on drop.
#[derive(Debug)]
pub struct Ring {
    base: NonNull<c_void>,
    len: usize,
    /// Set by `init` (receiver) or `validate` (sender): our own copies,
    /// never re-read from shared memory.
    slot_count: usize,
    slot_size: usize,
    strategy: Strategy,
}

impl Ring {
    /// Take charge of `len` bytes mapped at `base`.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be a live `MAP_SHARED` mapping made by
    /// `mmap`, page-aligned, at least HEADER_SPACE long, unmapped by
    /// nobody but this `Ring`.
    pub unsafe fn new(base: NonNull<c_void>, len: usize) -> Ring {
        assert!(len >= HEADER_SPACE, "mapping too small for a header");
        Ring {
            base,
            len,
            slot_count: 0,
            slot_size: 0,
            strategy: Strategy::SpinFutex,
        }
    }

    /// For ipc-bench: a fresh anonymous MAP_SHARED mapping (shared with
    /// children forked after this call), initialised and published.
    pub fn anonymous(slots: u32, slot_size: u32, strategy: Strategy) -> Result<Ring> {
        check_shape(slots, slot_size)?;
        let len = segment_len(slots, slot_size);
        let size = NonZeroUsize::new(len).context("an empty mapping")?;
        // SAFETY: a fresh mapping at a kernel-chosen address overlaps nothing.
        let base = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .context("mmap(MAP_SHARED|MAP_ANONYMOUS)")?;
        // SAFETY: the mapping just made, `len` bytes, zero-filled.
        let mut ring = unsafe { Ring::new(base, len) };
        ring.init(slots, slot_size, strategy);
        ring.publish();
        Ok(ring)
    }

    pub fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_SPACE long (`new`) and
        // page-aligned; Header holds only atomics (valid for any bits and
        // for memory another process changes).
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    /// Slot `i`: its header and a pointer to its `slot_size` data bytes.
    fn slot(&self, i: usize) -> (&SlotHeader, *mut u8) {
        assert!(i < self.slot_count, "slot index out of range");
        let offset = HEADER_SPACE + i * slot_stride(self.slot_size);
        assert!(offset + slot_stride(self.slot_size) <= self.len);
        // SAFETY: the slot lies inside the mapping (asserted); offsets are
        // multiples of 64, so SlotHeader (atomics) is aligned.
        unsafe {
            let at = self.base.cast::<u8>().as_ptr().add(offset);
            (&*at.cast::<SlotHeader>(), at.add(SLOT_HEADER))
        }
    }

    /// The receiver's side: write the header of a zero-filled mapping
    /// (all but MAGIC: see `publish`).
    pub fn init(&mut self, slots: u32, slot_size: u32, strategy: Strategy) {
        assert_eq!(self.len, segment_len(slots, slot_size));
        self.slot_count = slots as usize;
        self.slot_size = slot_size as usize;
        self.strategy = strategy;
        let h = self.header();
        // Relaxed: nobody looks before MAGIC, stored with Release after these.
        h.version.store(VERSION, Ordering::Relaxed);
        h.slot_count.store(slots, Ordering::Relaxed);
        h.slot_size.store(slot_size, Ordering::Relaxed);
        h.receiver_pid
            .store(std::process::id() as i32, Ordering::Relaxed);
        h.sender_pid.store(0, Ordering::Relaxed);
        h.sync.store(SYNC_FUTEX, Ordering::Relaxed);
        h.sem_id.store(0, Ordering::Relaxed);
        h.strategy.store(strategy.code(), Ordering::Relaxed);
        for line in [&h.to_receiver, &h.to_sender] {
            line.counter.store(0, Ordering::Relaxed);
            line.sleeping.store(0, Ordering::Relaxed);
            line.stats.store(&Stats::default());
        }
    }

    /// Release: a sender that loads MAGIC with Acquire sees all of `init`.
    pub fn publish(&self) {
        self.header().magic.store(MAGIC, Ordering::Release);
    }

    /// Wait (at most `bound`) for the receiver's MAGIC; returns what was seen.
    pub fn wait_published_within(&self, bound: Duration) -> u64 {
        let start = Instant::now();
        loop {
            // Acquire: pairs with `publish`.
            let magic = self.header().magic.load(Ordering::Acquire);
            if magic != 0 || start.elapsed() > bound {
                return magic;
            }
            sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_published(&self) -> u64 {
        self.wait_published_within(INIT_TIMEOUT)
    }

    /// The sender's side: check every header field before believing one,
    /// then take the ring's shape and strategy. `what` names the segment.
    pub fn validate(&mut self, magic: u64, what: &str) -> Result<()> {
        let size = self.len;
        let h = self.header();
        if magic != MAGIC {
            bail!("{what} is not a shm-demo segment (magic {magic:#018x}, expected {MAGIC:#018x})");
        }
        // Relaxed loads: the caller's Acquire load of MAGIC ordered them.
        let version = h.version.load(Ordering::Relaxed);
        if version != VERSION {
            bail!("{what} has layout version {version}; this program reads version {VERSION}");
        }
        // Another known kind first (its shape would not match either, but
        // this says why); an unknown one after the shape, below.
        let sync = h.sync.load(Ordering::Relaxed);
        if sync != SYNC_FUTEX && (1..=2).contains(&sync) {
            bail!(
                "{what} is a {} segment, not a futex one: refusing it (use the matching \
                 variant of shm-demo)",
                sync_name(sync)
            );
        }
        let slots = h.slot_count.load(Ordering::Relaxed);
        let slot_size = h.slot_size.load(Ordering::Relaxed);
        if check_shape(slots, slot_size).is_err() {
            bail!("{what}: header says {slots} slots of {slot_size} bytes: out of range");
        }
        if segment_len(slots, slot_size) != size {
            bail!(
                "{what}: header says {slots} slots of {slot_size} bytes ({} bytes), but the \
                 object is {size} bytes: refusing it",
                segment_len(slots, slot_size)
            );
        }
        if sync != SYNC_FUTEX {
            bail!("{what} has an unknown sync kind {sync}: refusing it");
        }
        let code = h.strategy.load(Ordering::Relaxed);
        let Some(strategy) = Strategy::from_code(code) else {
            bail!("{what}: header names wait strategy {code}, not 1, 2 or 3: refusing it");
        };
        self.slot_count = slots as usize;
        self.slot_size = slot_size as usize;
        self.strategy = strategy;
        Ok(())
    }

    /// Become the one sender: compare-and-swap `sender_pid` from 0 to our
    /// pid (AcqRel: of two racing senders exactly one wins). `Err(holder)`.
    pub fn claim_sender(&self) -> std::result::Result<(), i32> {
        crate::ipc_ring::claim(&self.header().sender_pid)
    }

    /// (slot count, slot size).
    pub fn slots(&self) -> (usize, usize) {
        (self.slot_count, self.slot_size)
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the mapping starts (for the SIGBUS guard).
    pub fn base(&self) -> *const c_void {
        self.base.as_ptr()
    }

    /// The sender's statistics as the sender last stored them.
    pub fn sender_stats(&self) -> Stats {
        self.header().to_receiver.stats.load()
    }

    /// The receiver's statistics as the receiver last stored them.
    pub fn receiver_stats(&self) -> Stats {
        self.header().to_sender.stats.load()
    }
}

// SAFETY: a Ring is a pointer to shared memory that is built for being
// used concurrently: the header is atomics only, and a slot is touched
// only by the side the counters give it to (Writer/Reader). Another thread
// is no different from the other process.
unsafe impl Send for Ring {}
// SAFETY: as for Send.
unsafe impl Sync for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // munmap(2): the pages leave our address space; the object lives on
        // while its name or another mapping does.
        // SAFETY: base/len are what mmap gave (contract of `new`), and no
        // reference into the mapping outlives `self` (all borrow it).
        let _ = unsafe { nix::sys::mman::munmap(self.base, self.len) };
    }
}

fn check_shape(slots: u32, slot_size: u32) -> Result<()> {
    if !(1..=MAX_SLOTS).contains(&slots) || !(1..=MAX_SLOT_SIZE).contains(&slot_size) {
        bail!(
            "{slots} slots of {slot_size} bytes: need 1..={MAX_SLOTS} slots of \
             1..={MAX_SLOT_SIZE} bytes"
        );
    }
    Ok(())
}

/// The header's sync word, named for a refusal.
pub fn sync_name(sync: u32) -> String {
    match sync {
        1 => "POSIX-semaphore (sem_t)".to_string(),
        2 => "System V semaphore".to_string(),
        SYNC_FUTEX => "futex".to_string(),
        other => format!("unknown sync kind {other}"),
    }
}

// ---------------------------------------------------------------------------
// The futex system call (nix has no wrapper)
// ---------------------------------------------------------------------------

/// How a FUTEX_WAIT ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// A FUTEX_WAKE woke us (or a spurious wake-up: look again anyway).
    Woken,
    /// EAGAIN: the word no longer held the expected value; no sleep at all.
    Changed,
    /// ETIMEDOUT: the timeout passed.
    TimedOut,
    /// EINTR: a signal (Ctrl-C: check_stop decides).
    Interrupted,
}

/// `futex(word, FUTEX_WAIT, expected, timeout)`: sleep only if `*word ==
/// expected` — the kernel compares and queues us atomically, which is what
/// closes the lost-wake-up window (see `wait_for`). Without
/// FUTEX_PRIVATE_FLAG: the key is the page itself, so a FUTEX_WAKE from
/// another process mapping the same object finds us.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> Result<Woke> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned u32 (an atomic in our mapping);
    // `ts` lives across the call; FUTEX_WAIT ignores uaddr2 and val3.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == 0 {
        return Ok(Woke::Woken);
    }
    match Errno::last() {
        Errno::EAGAIN => Ok(Woke::Changed),
        Errno::ETIMEDOUT => Ok(Woke::TimedOut),
        Errno::EINTR => Ok(Woke::Interrupted),
        Errno::EFAULT => Err(truncated("FUTEX_WAIT")),
        e => Err(e).context("futex(FUTEX_WAIT)"),
    }
}

/// EFAULT from futex(2): the kernel could not read the futex word. In
/// our mapping that means its page has no memory behind it any more: the
/// object was truncated under us. (A load of ours would be a SIGBUS,
/// which the guard in checks.rs reports; the kernel answers EFAULT.)
fn truncated(op: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "futex({op}): EFAULT: the futex word's page has no memory behind it: another process \
         truncated the segment under us (e.g. truncate -s 0). A mapping cannot stop the object \
         from shrinking; sealed memory can (memfd_create + F_SEAL_SHRINK)"
    )
}

/// `futex(word, FUTEX_WAKE, n)`: wake up to `n` waiters on `word` (in any
/// process mapping it); returns how many were woken.
pub fn futex_wake(word: &AtomicU32, n: u32) -> Result<u64> {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE reads no other
    // pointer (timeout, uaddr2 and val3 are ignored).
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r < 0 {
        return match Errno::last() {
            Errno::EFAULT => Err(truncated("FUTEX_WAKE")),
            e => Err(e).context("futex(FUTEX_WAKE)"),
        };
    }
    Ok(r as u64)
}

// ---------------------------------------------------------------------------
// Waiting and waking
// ---------------------------------------------------------------------------

/// The peer-liveness callback: `Some(reason)` once the peer is gone.
pub type PeerGone<'a> = &'a mut dyn FnMut() -> Option<String>;

// ANCHOR: futex_wait
/// Wait until `ready(value of line.counter)`; returns that value. Spins
/// for SPIN_TIME, then follows `strategy`. Every TICK without progress:
/// Ctrl-C, the peer's death and the idle timeout are checked.
#[allow(clippy::too_many_arguments)]
fn wait_for(
    line: &Line,
    strategy: Strategy,
    stats: &mut Stats,
    idle: Option<Duration>,
    what: &str,
    peer_gone: PeerGone<'_>,
    mut ready: impl FnMut(u32) -> Result<bool>,
) -> Result<u32> {
    // Ctrl-C first, even on a ring that never makes us wait (one load of
    // a static: cheap next to a slot).
    check_stop()?;
    // Acquire: pairs with the peer's Release store of the counter, so the
    // slot contents it wrote before are visible once we see the new value.
    let seen = line.counter.load(Ordering::Acquire);
    if ready(seen)? {
        return Ok(seen);
    }
    let start = Instant::now();
    let mut last_check = start;
    // The spin round starts now, and again after each sleep.
    let mut spin_from = start;
    loop {
        // Spin for SPIN_TIME (Spin and SpinYield then go on one batch at a
        // time: spin_from is not reset for them).
        loop {
            for _ in 0..SPIN_BATCH {
                std::hint::spin_loop(); // "pause": polite to the sibling hyperthread
                stats.spins += 1;
                let seen = line.counter.load(Ordering::Acquire);
                if ready(seen)? {
                    return Ok(seen);
                }
            }
            if spin_from.elapsed() >= SPIN_TIME {
                break;
            }
        }
        match strategy {
            Strategy::Spin => {}
            Strategy::SpinYield => {
                // sched_yield(2): let another runnable thread have the CPU.
                // SAFETY: no arguments, no memory.
                unsafe { libc::sched_yield() };
                stats.yields += 1;
            }
            Strategy::SpinFutex => {
                // The lost-wake-up race, and how it is closed. If we went to
                // sleep right after finding the counter unchanged, the peer
                // could publish and check our flag in between, see "not
                // sleeping", skip the wake, and we would sleep through its
                // message. So: (1) announce "I sleep" first, (2) a SeqCst
                // fence, (3) look at the counter again, (4) FUTEX_WAIT with
                // the value we saw. The peer does the mirror image: store
                // the counter, SeqCst fence, load our flag. The two fences
                // forbid both loads missing both stores (store->load order is
                // the one thing Release/Acquire do not give: Dekker needs
                // SeqCst): either we see its new value in (3) and do not
                // sleep, or it sees our flag and wakes us. And if its wake
                // comes between (3) and (4), FUTEX_WAIT's own compare in the
                // kernel finds the new value and returns at once (EAGAIN).
                line.sleeping.store(1, Ordering::Relaxed); // (1), ordered by the fence
                fence(Ordering::SeqCst); // (2)
                let seen = line.counter.load(Ordering::Acquire); // (3)
                if ready(seen)? {
                    line.sleeping.store(0, Ordering::Relaxed); // no sleep after all
                    return Ok(seen);
                }
                stats.waits += 1;
                let woke = futex_wait(&line.counter, seen, TICK) // (4)
                    .with_context(|| format!("waiting for {what}"))?;
                // Relaxed: only a hint to the peer; the worst case is one
                // FUTEX_WAKE too many, which wakes nobody.
                line.sleeping.store(0, Ordering::Relaxed);
                if woke == Woke::Interrupted {
                    check_stop()?;
                }
                spin_from = Instant::now();
            }
        }
        // Every TICK: the checks that end a wait for a peer that will
        // never come (Instant::now is a vDSO call, no syscall).
        let now = Instant::now();
        if now.duration_since(last_check) >= TICK {
            last_check = now;
            check_stop()?;
            if let Some(reason) = peer_gone() {
                bail!("{reason} while we waited for {what}");
            }
            if let Some(idle) = idle.filter(|&idle| now.duration_since(start) >= idle) {
                bail!(
                    "no progress for {} s: the peer is alive but has not moved {what} (stopped \
                     with Ctrl-Z or SIGSTOP? --timeout sets this limit)",
                    idle.as_secs()
                );
            }
        }
    }
}
// ANCHOR_END: futex_wait

// ANCHOR: futex_wake
/// After publishing `line.counter` (Release): wake the peer, but only if it
/// has said it sleeps. A FUTEX_WAKE is a system call (~1 µs even when
/// nobody waits); a receiver that is busy or spinning needs none, it sees
/// the counter move by itself.
fn wake_sleeper(line: &Line, strategy: Strategy, stats: &mut Stats) -> Result<()> {
    if strategy != Strategy::SpinFutex {
        return Ok(()); // nobody on this ring ever sleeps in the kernel
    }
    // SeqCst fence: our counter store must be ordered before the load of
    // the flag (store->load: the Dekker half of `wait_for`'s handshake).
    fence(Ordering::SeqCst);
    // A plain load first: in the common case (peer awake) no locked
    // instruction. Then swap to 0, so of several publishes while it sleeps
    // only the first pays a FUTEX_WAKE. Relaxed: the fence orders them.
    if line.sleeping.load(Ordering::Relaxed) != 0 && line.sleeping.swap(0, Ordering::Relaxed) != 0 {
        stats.wakes += 1;
        stats.woken += futex_wake(&line.counter, 1)?;
        return Ok(());
    }
    Ok(())
}
// ANCHOR_END: futex_wake

// ---------------------------------------------------------------------------
// Sending and receiving
// ---------------------------------------------------------------------------

/// The sender's side. `R`: anything that lends the Ring (`&Ring`,
/// `Ring`, `Rc<Ring>`).
#[derive(Debug)]
pub struct Writer<R: Borrow<Ring>> {
    ring: R,
    /// Our slot index and our own count of published slots: nothing
    /// shared to trust.
    next: usize,
    published: u32,
    idle: Option<Duration>,
    stats: Stats,
}

impl<R: Borrow<Ring>> Writer<R> {
    /// The caller must be the ring's only writer (the demo's sender won
    /// `claim_sender`; ipc-bench's child is the one writer of its mapping),
    /// starting at the ring's beginning.
    pub fn new(ring: R) -> Writer<R> {
        Writer {
            ring,
            next: 0,
            published: 0,
            idle: None,
            stats: Stats::default(),
        }
    }

    /// Give up a wait after `idle` without progress.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn ring(&self) -> &Ring {
        self.ring.borrow()
    }

    /// Wait for a free slot; returns its index.
    fn claim_slot(&mut self, peer_gone: PeerGone<'_>) -> Result<usize> {
        let ring = self.ring.borrow();
        let (slots, published) = (ring.slot_count as u32, self.published);
        wait_for(
            &ring.header().to_sender,
            ring.strategy,
            &mut self.stats,
            self.idle,
            "a free slot",
            peer_gone,
            |released| {
                let used = published.wrapping_sub(released);
                if used > slots {
                    bail!(
                        "the released counter ({released}) is {used} slots behind our \
                         {published} published, in a ring of {slots}: corrupt segment"
                    );
                }
                Ok(used < slots)
            },
        )?;
        Ok(self.next)
    }

    /// Slot `next` is written: publish it and wake a sleeping receiver.
    fn publish_slot(&mut self) -> Result<()> {
        let wakes_before = self.stats.wakes;
        self.publish_slot_quietly()?;
        if self.stats.wakes != wakes_before {
            // For the receiver's narration (and tools): slow path only.
            let line = &self.ring.borrow().header().to_receiver;
            line.stats.store(&self.stats);
        }
        Ok(())
    }

    // ANCHOR: futex_send
    /// Write message `seq` of `size` bytes (common::payload's checkable
    /// body) straight into the slots: one slot per piece of at most
    /// slot_size bytes, each published as soon as it is written.
    pub fn write(&mut self, seq: u64, size: usize, peer_gone: PeerGone<'_>) -> Result<()> {
        if size > MAX_MESSAGE {
            bail!("a {size}-byte message is over the limit of {MAX_MESSAGE}");
        }
        let mut offset = 0;
        loop {
            let at = self.claim_slot(peer_gone)?;
            let ring = self.ring.borrow();
            let (slot, data) = ring.slot(at);
            let piece = (size - offset).min(ring.slot_size);
            // SAFETY: `data` has slot_size >= piece bytes in the mapping.
            // Until we publish it, this slot is ours alone: we are the only
            // writer, and the receiver reads only published slots (and
            // gave this one back: `released` says so), so the &mut aliases
            // nothing.
            let bytes = unsafe { std::slice::from_raw_parts_mut(data, piece) };
            payload::fill_at(seq, size, offset, bytes);
            // Relaxed: the Release store of `published` orders them.
            slot.seq.store(seq, Ordering::Relaxed);
            slot.message_len.store(size as u64, Ordering::Relaxed);
            slot.offset.store(offset as u64, Ordering::Relaxed);
            slot.piece_len.store(piece as u32, Ordering::Relaxed);
            slot.flags.store(0, Ordering::Relaxed);
            self.publish_slot()?;
            offset += piece;
            if offset >= size {
                return Ok(());
            }
        }
    }
    // ANCHOR_END: futex_send

    /// One last slot says "done", in order behind the last message; the
    /// statistics go into the header for the receiver to report.
    pub fn end(&mut self, peer_gone: PeerGone<'_>) -> Result<()> {
        let at = self.claim_slot(peer_gone)?;
        let ring = self.ring.borrow();
        let (slot, _) = ring.slot(at);
        // Relaxed: the Release store of `published` orders them.
        slot.seq.store(0, Ordering::Relaxed);
        slot.message_len.store(0, Ordering::Relaxed);
        slot.offset.store(0, Ordering::Relaxed);
        slot.piece_len.store(0, Ordering::Relaxed);
        slot.flags.store(FLAG_END, Ordering::Relaxed);
        // Stored before the END slot is published, so a receiver that sees
        // END sees these figures (Release/Acquire of `published`): they
        // count up to the end marker, not the wake it may need itself
        // (stored after, it would race with the receiver's look).
        let line = &ring.header().to_receiver;
        line.stats.store(&self.stats);
        self.publish_slot_quietly()
    }

    /// `publish_slot` without storing the statistics again.
    fn publish_slot_quietly(&mut self) -> Result<()> {
        let ring = self.ring.borrow();
        self.published = self.published.wrapping_add(1);
        self.next = (self.next + 1) % ring.slot_count;
        let line = &ring.header().to_receiver;
        // Release: the slot's bytes, stored before, are visible to a
        // receiver that loads this value with Acquire.
        line.counter.store(self.published, Ordering::Release);
        wake_sleeper(line, ring.strategy, &mut self.stats)
    }
}

/// The receiver's side.
#[derive(Debug)]
pub struct Reader<R: Borrow<Ring>> {
    ring: R,
    next: usize,
    /// Our own count of released slots.
    released: u32,
    /// A slot lent out in place by the last `receive`, released by the next.
    held: bool,
    /// Where a split message is put together.
    message: Vec<u8>,
    idle: Option<Duration>,
    stats: Stats,
}

/// One received message: its sequence number and body, and whether the
/// body is the slot itself (in place) or a copy (a split message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'m> {
    pub seq: u64,
    pub body: &'m [u8],
    pub in_place: bool,
}

impl<R: Borrow<Ring>> Reader<R> {
    pub fn new(ring: R) -> Reader<R> {
        Reader {
            ring,
            next: 0,
            released: 0,
            held: false,
            message: Vec::new(),
            idle: None,
            stats: Stats::default(),
        }
    }

    /// Give up a wait after `idle` without progress.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn ring(&self) -> &Ring {
        self.ring.borrow()
    }

    /// Give slot `next` back to the sender and wake it if it sleeps.
    fn release_slot(&mut self) -> Result<()> {
        let ring = self.ring.borrow();
        self.released = self.released.wrapping_add(1);
        self.next = (self.next + 1) % ring.slot_count;
        let line = &ring.header().to_sender;
        // Release: our reads of the slot happen before the sender, which
        // loads this with Acquire, may overwrite it.
        line.counter.store(self.released, Ordering::Release);
        let wakes_before = self.stats.wakes;
        wake_sleeper(line, ring.strategy, &mut self.stats)?;
        if self.stats.wakes != wakes_before {
            line.stats.store(&self.stats);
        }
        Ok(())
    }

    /// Give back the slot the last `receive` lent out, now rather than at
    /// the next `receive` (the borrow of its body must have ended).
    pub fn release(&mut self) -> Result<()> {
        if self.held {
            self.held = false;
            self.release_slot()?;
        }
        Ok(())
    }

    /// Wait for a published slot; returns its index.
    fn next_filled(&mut self, peer_gone: PeerGone<'_>) -> Result<usize> {
        let ring = self.ring.borrow();
        let (slots, released) = (ring.slot_count as u32, self.released);
        wait_for(
            &ring.header().to_receiver,
            ring.strategy,
            &mut self.stats,
            self.idle,
            "the next message",
            peer_gone,
            |published| {
                let filled = published.wrapping_sub(released);
                if filled > slots {
                    bail!(
                        "the published counter ({published}) is {filled} slots ahead of our \
                         {released} released, in a ring of {slots}: corrupt segment"
                    );
                }
                Ok(filled > 0)
            },
        )?;
        Ok(self.next)
    }

    // ANCHOR: futex_receive
    /// The next message, or `None` after the end marker. A message that
    /// fits one slot is returned IN PLACE: `body` borrows the slot, which
    /// stays ours (unreleased) until the next call (or `release`). A split
    /// message is copied together piece by piece, each slot released as
    /// soon as its piece is copied.
    pub fn receive(&mut self, peer_gone: PeerGone<'_>) -> Result<Option<Received<'_>>> {
        self.release()?; // the slot lent out last time, if any
        self.message.clear();
        let mut current: Option<(u64, usize)> = None; // (seq, length) being assembled
        loop {
            let at = self.next_filled(peer_gone)?;
            let ring = self.ring.borrow();
            let (slot, data) = ring.slot(at);
            // Everything below came from another process: each field is
            // loaded once into a local and checked before use. Relaxed:
            // the Acquire load of `published` (next_filled) ordered them.
            if slot.flags.load(Ordering::Relaxed) & FLAG_END != 0 {
                self.release_slot()?;
                if current.is_some() {
                    bail!("slot {at}: end marker in the middle of a message");
                }
                // The sender stored its final figures before END.
                return Ok(None);
            }
            let seq = slot.seq.load(Ordering::Relaxed);
            let len = slot.message_len.load(Ordering::Relaxed);
            let offset = slot.offset.load(Ordering::Relaxed);
            let piece = slot.piece_len.load(Ordering::Relaxed) as usize;
            if len > MAX_MESSAGE as u64 {
                bail!("slot {at}: message length {len} is over the limit of {MAX_MESSAGE}");
            }
            let len = len as usize;
            if piece > ring.slot_size || piece == 0 && len != 0 {
                bail!(
                    "slot {at}: piece length {piece} does not fit a {}-byte slot",
                    ring.slot_size
                );
            }
            let (want_seq, want_len) = *current.get_or_insert((seq, len));
            if seq != want_seq || len != want_len || offset != self.message.len() as u64 {
                bail!(
                    "slot {at}: piece of message {seq} at offset {offset} does not continue \
                     message {want_seq} (at offset {})",
                    self.message.len()
                );
            }
            if self.message.len() + piece > len {
                bail!("slot {at}: piece runs past the end of its {len}-byte message");
            }
            if offset == 0 && piece == len {
                // The whole message in one slot: lend it out in place.
                // SAFETY: `data` has slot_size >= piece bytes inside the
                // mapping (checked above; the length is our local copy, so
                // a peer changing the field now cannot move the bounds).
                // The slot is ours until we release it (the sender writes
                // only released slots); the borrow ends before the next
                // `receive` or `release`, which are what release it. A
                // hostile writer could still change the bytes under the
                // borrow: the trust boundary of shared memory (main.rs).
                let body = unsafe { std::slice::from_raw_parts(data.cast_const(), piece) };
                self.held = true;
                return Ok(Some(Received {
                    seq,
                    body,
                    in_place: true,
                }));
            }
            // A piece of a split message: copy it out, give the slot back.
            // SAFETY: as above for the bounds; the bytes are read before
            // the slot is released.
            let bytes = unsafe { std::slice::from_raw_parts(data.cast_const(), piece) };
            self.message.extend_from_slice(bytes);
            self.release_slot()?;
            if self.message.len() == len {
                return Ok(Some(Received {
                    seq,
                    body: &self.message,
                    in_place: false,
                }));
            }
        }
    }
    // ANCHOR_END: futex_receive

    /// Store our statistics in the header (for the peer and for tools).
    pub fn store_stats(&self) {
        self.ring
            .borrow()
            .header()
            .to_sender
            .stats
            .store(&self.stats);
    }
}

// ---------------------------------------------------------------------------
// The loops the demo's roles call
// ---------------------------------------------------------------------------

/// The sender's loop: `count` messages, then the end marker. Returns the
/// time it took and what the waits and wakes were.
pub fn send(
    ring: &Ring,
    count: u64,
    size: usize,
    idle: Duration,
    say: &Narrator,
    peer_gone: PeerGone<'_>,
) -> Result<(Duration, Stats)> {
    let mut writer = Writer::new(ring).idle_timeout(idle);
    let pieces = size.div_ceil(ring.slot_size).max(1);
    say.step(format!(
        "writing each message straight into the slots: {pieces} slot(s) per {size}-byte \
         message, waiting by {}",
        ring.strategy.name()
    ));
    let start = Instant::now();
    for seq in 0..count {
        writer.write(seq, size, peer_gone)?;
        say.message(format!("wrote message {seq} ({size} bytes)"));
    }
    writer.end(peer_gone)?;
    Ok((start.elapsed(), writer.stats()))
}

/// The receiver's loop: every message until the end marker, each checked
/// in place. Returns the checker's counts, the time from the first
/// message, and the receiver's statistics.
pub fn receive(
    ring: &Ring,
    expected: Option<u64>,
    idle: Duration,
    say: &Narrator,
    peer_gone: PeerGone<'_>,
) -> Result<(CheckReport, Duration, Stats)> {
    let mut checker = Checker::new(expected);
    let mut reader = Reader::new(ring).idle_timeout(idle);
    let mut start = None;
    while let Some(got) = reader.receive(peer_gone)? {
        start.get_or_insert_with(Instant::now);
        // The check runs on the slot itself (or the copy of a split one).
        let verdict = checker.check_numbered(got.seq, got.body);
        let line = format!(
            "message {} ({} bytes{}): {verdict}",
            got.seq,
            got.body.len(),
            if got.in_place {
                ", in place"
            } else {
                ", copied together"
            }
        );
        if verdict == Verdict::Ok {
            say.message(line)
        } else {
            say.step(line) // a bad message is reported even with --quiet
        }
    }
    reader.store_stats();
    say.step("read the end marker: the sender is done");
    let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
    Ok((checker.report(), elapsed, reader.stats()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc_ring::test_support::{fill_slots, fuzz_cases};

    fn never() -> Option<String> {
        None
    }

    #[test]
    fn layout_matches_the_documented_offsets() {
        assert_eq!(size_of::<Header>(), 192);
        assert_eq!(std::mem::offset_of!(Header, sync), 28);
        assert_eq!(std::mem::offset_of!(Header, to_receiver) + 4, 68);
        assert_eq!(std::mem::offset_of!(Header, to_sender) + 8, 136);
        assert_eq!(segment_len(1, 1), 192 + 64);
        assert_eq!(segment_len(2, 32), 192 + 2 * 64);
        assert_eq!(segment_len(1, 33), 192 + 128);
    }

    #[test]
    fn messages_pass_in_place_and_split_within_one_process() {
        for strategy in Strategy::ALL {
            let ring = Ring::anonymous(4, 64, strategy).unwrap();
            let mut w = Writer::new(&ring);
            let mut r = Reader::new(&ring);
            // Three messages fill three slots; no reader yet.
            for seq in 0..3 {
                w.write(seq, 40, &mut never).unwrap();
            }
            for seq in 0..3 {
                let got = r.receive(&mut never).unwrap().unwrap();
                assert_eq!((got.seq, got.in_place), (seq, true));
                assert_eq!(got.body, payload::make(seq, 40));
            }
            r.release().unwrap();
            // 150 bytes over 64-byte slots: 3 pieces, copied together.
            w.write(7, 150, &mut never).unwrap();
            let got = r.receive(&mut never).unwrap().unwrap();
            assert_eq!((got.seq, got.in_place), (7, false));
            assert_eq!(got.body, payload::make(7, 150));
            w.end(&mut never).unwrap();
            assert!(r.receive(&mut never).unwrap().is_none());
            // Nobody ever slept: no wake was needed.
            assert_eq!(w.stats().wakes + r.stats().wakes, 0);
        }
    }

    #[test]
    fn a_full_ring_with_a_dead_peer_ends_the_wait() {
        let ring = Ring::anonymous(1, 16, Strategy::SpinFutex).unwrap();
        let mut w = Writer::new(&ring);
        w.write(0, 8, &mut never).unwrap();
        let start = Instant::now();
        let err = w
            .write(1, 8, &mut || Some("the receiver exited".into()))
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("the receiver exited"),
            "{err:#}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(w.stats().waits, 1, "one FUTEX_WAIT, woken by its timeout");
    }

    #[test]
    fn a_corrupt_counter_is_refused() {
        let ring = Ring::anonymous(2, 16, Strategy::SpinFutex).unwrap();
        ring.header()
            .to_receiver
            .counter
            .store(1000, Ordering::Relaxed);
        let mut r = Reader::new(&ring);
        let err = r.receive(&mut never).unwrap_err();
        assert!(format!("{err:#}").contains("corrupt"), "{err:#}");
    }

    proptest::proptest! {
        // 64 cases by default (each maps a segment); PROPTEST_CASES
        // raises it for a fuzzing run.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(fuzz_cases()))]

        /// Fuzz: a hostile sender writes anything into the slots and any
        /// value into `published`. The reader returns messages within
        /// bounds, the end, or an error: never a panic, an out-of-bounds
        /// borrow, an unbounded allocation or a hang.
        #[test]
        fn fuzz_reader_survives_any_slot_contents_and_counter(
            slots in 1u32..6,
            slot_size in 1u32..300,
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            published in proptest::prelude::any::<u32>(),
        ) {
            let ring = Ring::anonymous(slots, slot_size, Strategy::SpinFutex).unwrap();
            fill_slots(ring.base, ring.len, HEADER_SPACE, &garbage);
            ring.header().to_receiver.counter.store(published, Ordering::Release);
            let mut reader = Reader::new(&ring);
            // The hostile sender "dies" as soon as the reader would wait.
            let mut gone = || Some("the fuzzer's sender".to_string());
            for _ in 0..100 {
                match reader.receive(&mut gone) {
                    Ok(Some(got)) => {
                        proptest::prop_assert!(got.body.len() <= MAX_MESSAGE);
                        let fits = got.body.len() <= slot_size as usize;
                        proptest::prop_assert!(!got.in_place || fits);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }

        /// Fuzz: any header words; `validate` accepts only a futex header
        /// whose shape matches the object and whose strategy is known.
        #[test]
        fn fuzz_validate_refuses_bad_headers(
            words in proptest::collection::vec(proptest::prelude::any::<u32>(), 6),
        ) {
            let ring = Ring::anonymous(2, 64, Strategy::SpinFutex).unwrap();
            let h = ring.header();
            h.version.store(words[0] % 4, Ordering::Relaxed);
            h.slot_count.store(words[1] % 2000, Ordering::Relaxed);
            h.slot_size.store(words[2] % 200, Ordering::Relaxed);
            h.sync.store(words[3] % 5, Ordering::Relaxed);
            h.strategy.store(words[4] % 5, Ordering::Relaxed);
            let mut ring = ring;
            if ring.validate(MAGIC, "fuzz").is_ok() {
                let (slots, size) = ring.slots();
                proptest::prop_assert_eq!(segment_len(slots as u32, size as u32), ring.len());
                proptest::prop_assert_eq!(ring.header().sync.load(Ordering::Relaxed), SYNC_FUTEX);
            }
            proptest::prop_assert!(ring.validate(u64::from(words[5]), "fuzz").is_err());
        }
    }

    #[test]
    fn a_sleeping_receiver_is_woken_once() {
        let ring = Ring::anonymous(4, 16, Strategy::SpinFutex).unwrap();
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut r = Reader::new(&ring);
                let got = r.receive(&mut never).unwrap().unwrap().seq;
                (got, r.stats())
            });
            // Wait until the reader says it sleeps, then publish.
            while ring.header().to_receiver.sleeping.load(Ordering::SeqCst) == 0 {
                sleep(Duration::from_millis(1));
            }
            let mut w = Writer::new(&ring);
            w.write(5, 8, &mut never).unwrap();
            let (seq, stats) = reader.join().unwrap();
            assert_eq!(seq, 5);
            assert!(stats.waits >= 1);
            assert_eq!(w.stats().wakes, 1);
        });
    }
}
