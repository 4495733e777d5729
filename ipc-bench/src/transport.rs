//! Every mechanism behind one small interface: a sending end that turns
//! (seq, size) into a checkable message and sends it, and a receiving end
//! that hands back what arrived. Channels are made before `fork`; each
//! process then keeps one end.
//!
//! Blocking calls are woken every 100 ms by a watchdog timer (SIGALRM
//! without SA_RESTART): on EINTR each end calls [`still_ok`], which fails if
//! the peer died or the cell's deadline passed, so a benchmark never hangs.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{MqGuard, PathGuard, SysvGuard, SysvKind, unique_name};
use common::payload;
use common::peer::{Ticker, alive};
use common::psem::SharedSem;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, SockaddrIn, accept, bind, connect,
    getsockname, listen, recv, send, setsockopt, socket, socketpair, sockopt,
};
use nix::sys::stat::Mode;
use nix::unistd::{Pid, read, write};
use shm_demo::ring::{self, Detach, Reader, Segment, Sem, Writer};

/// The mechanisms, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mech {
    Pipe,
    Fifo,
    UnixStream,
    UnixDgram,
    SysvMsg,
    PosixMq,
    ShmSem,
    ShmSpsc,
    Tcp,
    Signal,
}

pub const ALL: [Mech; 10] = [
    Mech::Pipe,
    Mech::Fifo,
    Mech::UnixStream,
    Mech::UnixDgram,
    Mech::SysvMsg,
    Mech::PosixMq,
    Mech::ShmSem,
    Mech::ShmSpsc,
    Mech::Tcp,
    Mech::Signal,
];

impl Mech {
    pub fn name(self) -> &'static str {
        match self {
            Mech::Pipe => "pipe",
            Mech::Fifo => "fifo",
            Mech::UnixStream => "unix-stream",
            Mech::UnixDgram => "unix-dgram",
            Mech::SysvMsg => "sysv-msg",
            Mech::PosixMq => "posix-mq",
            Mech::ShmSem => "shm-sem",
            Mech::ShmSpsc => "shm-spsc",
            Mech::Tcp => "tcp",
            Mech::Signal => "signal",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mech::Pipe => "anonymous pipe, framed",
            Mech::Fifo => "named pipe (FIFO), framed",
            Mech::UnixStream => "socketpair(AF_UNIX, SOCK_STREAM), framed",
            Mech::UnixDgram => "socketpair(AF_UNIX, SOCK_DGRAM), one datagram per message",
            Mech::SysvMsg => "System V message queue",
            Mech::PosixMq => "POSIX message queue",
            Mech::ShmSem => "shared memory ring + 2 POSIX semaphores (shm-demo's ring)",
            Mech::ShmSpsc => "shared memory lock-free SPSC byte ring, spin then yield",
            Mech::Tcp => "TCP over 127.0.0.1, TCP_NODELAY, framed",
            Mech::Signal => "sigqueue(SIGRTMIN+1) with the sequence number as value",
        }
    }

    pub fn parse(name: &str) -> Option<Mech> {
        ALL.into_iter().find(|m| m.name() == name)
    }
}

/// What a receiving end hands back.
pub enum Msg<'a> {
    /// A body whose first 8 bytes are its sequence number.
    Body(&'a [u8]),
    /// A body with its sequence number carried beside it.
    Numbered(u64, &'a [u8]),
    /// Only a number (a signal's value).
    Value(u64),
}

pub trait Tx {
    /// Called in the sending process after fork, with the receiver's pid.
    fn after_fork(&mut self, _peer: Pid) -> Result<()> {
        Ok(())
    }
    fn send(&mut self, seq: u64, size: usize) -> Result<()>;
    /// Tell the receiver there is no more.
    fn end(&mut self) -> Result<()>;
}

pub trait Rx {
    fn after_fork(&mut self, _peer: Pid) -> Result<()> {
        Ok(())
    }
    /// The next message, or None after the sender's end.
    fn recv(&mut self) -> Result<Option<Msg<'_>>>;
}

/// Both ends of a one-way channel, plus what must outlive them.
pub struct Channel {
    pub tx: Box<dyn Tx>,
    pub rx: Box<dyn Rx>,
    /// How the size was carried, if not as one message ("split into ...").
    pub note: Option<String>,
    pub cleanup: Vec<Box<dyn std::any::Any>>,
}

// ---------------------------------------------------------------------------
// The watchdog
// ---------------------------------------------------------------------------

static PEER: AtomicI32 = AtomicI32::new(0);
/// Deadline as milliseconds since START (0: none).
static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Set what `still_ok` checks, and wake blocked calls every 100 ms so they
/// check it; the wake-ups last as long as the returned ticker.
pub fn watch(peer: Pid, deadline: Duration) -> Result<Ticker> {
    PEER.store(peer.as_raw(), Ordering::Relaxed);
    let ms = (epoch().elapsed() + deadline).as_millis() as u64;
    DEADLINE_MS.store(ms, Ordering::Relaxed);
    Ticker::start(Duration::from_millis(100))
}

/// Fails if the peer died or the deadline passed.
pub fn still_ok() -> Result<()> {
    common::cleanup::check_stop()?;
    let peer = PEER.load(Ordering::Relaxed);
    if peer > 0 && !alive(peer) {
        bail!("the peer process (pid {peer}) died");
    }
    let deadline = DEADLINE_MS.load(Ordering::Relaxed);
    if deadline > 0 && epoch().elapsed().as_millis() as u64 > deadline {
        bail!("no progress before the deadline: a hang");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Byte streams: pipe, FIFO, Unix stream, TCP
// ---------------------------------------------------------------------------

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match read(fd.as_fd(), &mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => bail!("the stream ended inside a frame"),
            Ok(n) => got += n,
            Err(Errno::EINTR) => still_ok()?,
            Err(e) => return Err(e).context("read"),
        }
    }
    Ok(true)
}

fn write_full(fd: &OwnedFd, mut buf: &[u8]) -> Result<()> {
    while !buf.is_empty() {
        match write(fd.as_fd(), buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => still_ok()?,
            Err(e) => return Err(e).context("write"),
        }
    }
    Ok(())
}

/// A descriptor opened only after fork (a FIFO's open waits for the peer).
enum Lazy {
    Open(OwnedFd),
    Path(std::path::PathBuf, OFlag),
}

impl Lazy {
    fn fd(&mut self) -> Result<&OwnedFd> {
        if let Lazy::Path(path, flags) = self {
            let fd = loop {
                match nix::fcntl::open(path.as_path(), *flags | OFlag::O_CLOEXEC, Mode::empty()) {
                    Ok(fd) => break fd,
                    Err(Errno::EINTR) => still_ok()?,
                    Err(e) => return Err(e).context("open(FIFO)"),
                }
            };
            *self = Lazy::Open(fd);
        }
        match self {
            Lazy::Open(fd) => Ok(fd),
            Lazy::Path(..) => unreachable!("opened above"),
        }
    }
}

/// Frames over a byte stream: [len u32][body], one buffer reused.
struct StreamTx {
    fd: Lazy,
    buf: Vec<u8>,
}

impl Tx for StreamTx {
    fn send(&mut self, seq: u64, size: usize) -> Result<()> {
        self.buf.resize(4 + size, 0);
        self.buf[..4].copy_from_slice(&(size as u32).to_le_bytes());
        payload::fill(seq, &mut self.buf[4..]);
        let fd = self.fd.fd()?;
        write_full(fd, &self.buf)
    }

    fn end(&mut self) -> Result<()> {
        // Closing the only write end gives the reader EOF.
        self.fd.fd()?;
        self.fd = Lazy::Path(Default::default(), OFlag::empty());
        Ok(())
    }
}

struct StreamRx {
    fd: Lazy,
    buf: Vec<u8>,
}

impl Rx for StreamRx {
    fn recv(&mut self) -> Result<Option<Msg<'_>>> {
        let mut header = [0u8; 4];
        let fd = self.fd.fd()?;
        if !read_full(fd, &mut header)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(header) as usize;
        if len > crate::MAX_SIZE {
            bail!("frame length {len} over the limit");
        }
        self.buf.resize(len, 0);
        if !read_full(fd, &mut self.buf)? {
            bail!("the stream ended inside a frame");
        }
        Ok(Some(Msg::Body(&self.buf)))
    }
}

fn stream_pair(write: Lazy, read: Lazy) -> (Box<dyn Tx>, Box<dyn Rx>) {
    (
        Box::new(StreamTx {
            fd: write,
            buf: Vec::new(),
        }),
        Box::new(StreamRx {
            fd: read,
            buf: Vec::new(),
        }),
    )
}

// ---------------------------------------------------------------------------
// Datagrams
// ---------------------------------------------------------------------------

struct DgramTx {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Tx for DgramTx {
    fn send(&mut self, seq: u64, size: usize) -> Result<()> {
        self.buf.resize(size, 0);
        payload::fill(seq, &mut self.buf);
        loop {
            match send(self.fd.as_raw_fd(), &self.buf, MsgFlags::empty()) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => still_ok()?,
                Err(e) => return Err(e).context("send(datagram)"),
            }
        }
    }

    fn end(&mut self) -> Result<()> {
        send(self.fd.as_raw_fd(), &[], MsgFlags::empty()).context("send(end)")?;
        Ok(())
    }
}

struct DgramRx {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Rx for DgramRx {
    fn recv(&mut self) -> Result<Option<Msg<'_>>> {
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(Msg::Body(&self.buf[..n]))),
                Err(Errno::EINTR) => still_ok()?,
                Err(e) => return Err(e).context("recv(datagram)"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Message queues: messages over the queue's limit are split into pieces
// ---------------------------------------------------------------------------

struct SysvTx {
    id: libc::c_int,
    piece: usize,
    buf: Vec<u8>,
}

fn msgsnd(id: libc::c_int, mtype: libc::c_long, text: &[u8], buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    buf.extend_from_slice(&mtype.to_ne_bytes());
    buf.extend_from_slice(text);
    loop {
        // SAFETY: `buf` is a long followed by text.len() bytes.
        let rc = unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), 0) };
        match Errno::result(rc) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => still_ok()?,
            Err(e) => return Err(e).context("msgsnd"),
        }
    }
}

impl Tx for SysvTx {
    fn send(&mut self, seq: u64, size: usize) -> Result<()> {
        let mut body = vec![0u8; size];
        payload::fill(seq, &mut body);
        for chunk in body.chunks(self.piece) {
            msgsnd(self.id, 1, chunk, &mut self.buf)?;
        }
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        msgsnd(self.id, 2, &[], &mut self.buf)
    }
}

struct SysvRx {
    id: libc::c_int,
    size: usize,
    piece: usize,
    raw: Vec<u8>,
    message: Vec<u8>,
}

impl Rx for SysvRx {
    fn recv(&mut self) -> Result<Option<Msg<'_>>> {
        self.message.clear();
        let head = size_of::<libc::c_long>();
        while self.message.len() < self.size {
            self.raw.resize(head + self.piece, 0);
            // msgtyp 0: the oldest message, a piece or the end marker.
            // SAFETY: `raw` has room for a long plus `piece` bytes.
            let n =
                unsafe { libc::msgrcv(self.id, self.raw.as_mut_ptr().cast(), self.piece, 0, 0) };
            let n = match Errno::result(n) {
                Ok(n) => n as usize,
                Err(Errno::EINTR) => {
                    still_ok()?;
                    continue;
                }
                Err(e) => return Err(e).context("msgrcv"),
            };
            let mtype = libc::c_long::from_ne_bytes(self.raw[..head].try_into().expect("long"));
            if mtype == 2 {
                if !self.message.is_empty() {
                    bail!("end marker inside a message");
                }
                return Ok(None);
            }
            self.message.extend_from_slice(&self.raw[head..head + n]);
        }
        Ok(Some(Msg::Body(&self.message)))
    }
}

struct MqTx {
    mqd: nix::mqueue::MqdT,
    piece: usize,
}

impl Tx for MqTx {
    fn send(&mut self, seq: u64, size: usize) -> Result<()> {
        let mut body = vec![0u8; size];
        payload::fill(seq, &mut body);
        for chunk in body.chunks(self.piece) {
            loop {
                match nix::mqueue::mq_send(&self.mqd, chunk, 0) {
                    Ok(()) => break,
                    Err(Errno::EINTR) => still_ok()?,
                    Err(e) => return Err(e).context("mq_send"),
                }
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        // An empty message at a higher priority would overtake the data;
        // priority 0 like the rest keeps it last.
        nix::mqueue::mq_send(&self.mqd, &[], 0).context("mq_send(end)")
    }
}

struct MqRx {
    mqd: nix::mqueue::MqdT,
    size: usize,
    piece: usize,
    raw: Vec<u8>,
    message: Vec<u8>,
}

impl Rx for MqRx {
    fn recv(&mut self) -> Result<Option<Msg<'_>>> {
        self.message.clear();
        while self.message.len() < self.size {
            self.raw.resize(self.piece, 0);
            let mut priority = 0;
            let n = match nix::mqueue::mq_receive(&self.mqd, &mut self.raw, &mut priority) {
                Ok(n) => n,
                Err(Errno::EINTR) => {
                    still_ok()?;
                    continue;
                }
                Err(e) => return Err(e).context("mq_receive"),
            };
            if n == 0 {
                if !self.message.is_empty() {
                    bail!("end marker inside a message");
                }
                return Ok(None);
            }
            self.message.extend_from_slice(&self.raw[..n]);
        }
        Ok(Some(Msg::Body(&self.message)))
    }
}

// ---------------------------------------------------------------------------
// shm-demo's ring with POSIX semaphores, in an anonymous shared mapping
// ---------------------------------------------------------------------------

struct RingShared {
    segment: Segment,
}

impl RingShared {
    fn sems(&self) -> (Sem, Sem) {
        // SAFETY: `new_ring` sem_init'ed both before any fork; the segment
        // lives as long as this Rc.
        unsafe { self.segment.posix_sems() }
    }
}

/// `len` bytes of zero-filled memory that a forked child shares with us
/// (MAP_SHARED | MAP_ANONYMOUS), at an address the kernel picks. The
/// caller unmaps it.
pub fn shared_anonymous(len: usize) -> Result<NonNull<c_void>> {
    let size = NonZeroUsize::new(len).context("an empty mapping")?;
    // SAFETY: a fresh mapping at a kernel-chosen address overlaps nothing.
    unsafe {
        mmap_anonymous(
            None,
            size,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
        )
    }
    .context("mmap(MAP_SHARED|MAP_ANONYMOUS)")
}

fn new_ring(slots: u32, slot_size: u32) -> Result<Rc<RingShared>> {
    let len = ring::segment_len(slots, slot_size);
    let base = shared_anonymous(len)?;
    // SAFETY: the mapping just made, `len` bytes.
    let mut segment = unsafe { Segment::new(base, len, Detach::Munmap) };
    segment.init_header(slots, slot_size, ring::SYNC_POSIX);
    let header = segment.header();
    // SAFETY: both sem_t lie in the new mapping, aligned, unused so far.
    unsafe {
        SharedSem::init(header.empty.get(), slots).context("sem_init(empty)")?;
        SharedSem::init(header.full.get(), 0).context("sem_init(full)")?;
    }
    segment.publish();
    Ok(Rc::new(RingShared { segment }))
}

fn peer_gone() -> Option<String> {
    still_ok().err().map(|e| format!("{e:#}"))
}

struct RingTx {
    shared: Rc<RingShared>,
    next_writer: Option<usize>,
}

impl Tx for RingTx {
    fn send(&mut self, seq: u64, size: usize) -> Result<()> {
        // A Writer borrows the segment; it is rebuilt per call with the slot
        // index carried over, so this end can own the Rc.
        let mut writer = Writer::new(&self.shared.segment, self.shared.sems());
        writer.resume_at(self.next_writer.unwrap_or(0));
        writer.write(seq, size, &mut peer_gone)?;
        self.next_writer = Some(writer.position());
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        let mut writer = Writer::new(&self.shared.segment, self.shared.sems());
        writer.resume_at(self.next_writer.unwrap_or(0));
        writer.end(&mut peer_gone)
    }
}

struct RingRx {
    shared: Rc<RingShared>,
    position: usize,
    message: Vec<u8>,
}

impl Rx for RingRx {
    fn recv(&mut self) -> Result<Option<Msg<'_>>> {
        let mut reader = Reader::new(&self.shared.segment, self.shared.sems());
        reader.resume_at(self.position);
        let got = reader.read(&mut self.message, &mut peer_gone)?;
        self.position = reader.position();
        Ok(got.map(|seq| Msg::Numbered(seq, &self.message)))
    }
}

// ---------------------------------------------------------------------------
// A lock-free single-producer/single-consumer byte ring
// ---------------------------------------------------------------------------

/// Capacity of the SPSC ring's data area.
const SPSC_CAPACITY: usize = 8 * 1024 * 1024;
/// A record header that says "the rest of the ring is padding: go to 0".
const WRAP: u32 = u32::MAX;
/// A record header that says "no more messages".
const END: u32 = u32::MAX - 1;

/// Head (written by the producer) and tail (by the consumer), each on its
/// own cache line so the two cores do not fight over one line.
#[repr(C, align(64))]
struct Index(AtomicU64);

#[repr(C)]
struct SpscHeader {
    head: Index,
    tail: Index,
}

struct SpscShared {
    base: NonNull<c_void>,
    len: usize,
}

impl SpscShared {
    fn header(&self) -> &SpscHeader {
        // SAFETY: the mapping starts with a SpscHeader (atomics only).
        unsafe { self.base.cast::<SpscHeader>().as_ref() }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data area follows the header inside the mapping.
        unsafe { self.base.cast::<u8>().as_ptr().add(size_of::<SpscHeader>()) }
    }
}

impl Drop for SpscShared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new_spsc; nothing borrows it now.
        let _ = unsafe { munmap(self.base, self.len) };
    }
}

fn new_spsc() -> Result<Rc<SpscShared>> {
    let len = size_of::<SpscHeader>() + SPSC_CAPACITY;
    // Zero-filled: head = tail = 0.
    let base = shared_anonymous(len)?;
    Ok(Rc::new(SpscShared { base, len }))
}

/// Spin, then yield the CPU; check the watchdog now and then.
fn wait_until(mut ready: impl FnMut() -> bool) -> Result<()> {
    let mut spins = 0u64;
    while !ready() {
        spins += 1;
        if spins < 1000 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
            if spins.is_multiple_of(4096) {
                still_ok()?;
            }
        }
    }
    Ok(())
}

struct SpscTx {
    shared: Rc<SpscShared>,
    head: u64,
}

impl SpscTx {
    /// Reserve `need` contiguous bytes; returns their offset in the data area.
    fn reserve(&mut self, need: usize) -> Result<usize> {
        let cap = SPSC_CAPACITY as u64;
        let mut at = (self.head % cap) as usize;
        if at + need > SPSC_CAPACITY {
            // Not enough room before the end: a WRAP record, then start at 0.
            let pad = SPSC_CAPACITY - at;
            let head = self.head;
            let tail = &self.shared.header().tail.0;
            wait_until(|| head + pad as u64 + need as u64 - tail.load(Ordering::Acquire) <= cap)?;
            if pad >= 4 {
                // SAFETY: `at + 4 <= capacity`, and these bytes are free.
                unsafe {
                    self.shared
                        .data()
                        .add(at)
                        .cast::<u32>()
                        .write_unaligned(WRAP)
                };
            }
            self.head += pad as u64;
            at = 0;
        }
        let head = self.head;
        let tail = &self.shared.header().tail.0;
        wait_until(|| head + need as u64 - tail.load(Ordering::Acquire) <= cap)?;
        Ok(at)
    }

    fn publish(&mut self, used: usize) {
        self.head += used as u64;
        // Release: the consumer's Acquire load of head sees the bytes.
        self.shared
            .header()
            .head
            .0
            .store(self.head, Ordering::Release);
    }
}

impl Tx for SpscTx {
    fn send(&mut self, seq: u64, size: usize) -> Result<()> {
        let need = (4 + size).next_multiple_of(8);
        let at = self.reserve(need)?;
        // SAFETY: `reserve` made `need` bytes at `at` free: the consumer
        // reads them only after our Release store of head, and we are the
        // only producer.
        unsafe {
            let record = self.shared.data().add(at);
            record.cast::<u32>().write_unaligned(size as u32);
            payload::fill(seq, std::slice::from_raw_parts_mut(record.add(4), size));
        }
        self.publish(need);
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        let at = self.reserve(8)?;
        // SAFETY: as in send.
        unsafe {
            self.shared
                .data()
                .add(at)
                .cast::<u32>()
                .write_unaligned(END)
        };
        self.publish(8);
        Ok(())
    }
}

struct SpscRx {
    shared: Rc<SpscShared>,
    tail: u64,
    pending: usize,
}

impl Rx for SpscRx {
    fn recv(&mut self) -> Result<Option<Msg<'_>>> {
        let cap = SPSC_CAPACITY as u64;
        // Give back the previous message's bytes only now: the caller
        // checked them in place, while the producer could not reuse them.
        if self.pending > 0 {
            self.tail += self.pending as u64;
            self.shared
                .header()
                .tail
                .0
                .store(self.tail, Ordering::Release);
            self.pending = 0;
        }
        loop {
            let tail = self.tail;
            let head = &self.shared.header().head.0;
            wait_until(|| head.load(Ordering::Acquire) >= tail + 4)?;
            let at = (self.tail % cap) as usize;
            let left = SPSC_CAPACITY - at;
            if left < 4 {
                self.tail += left as u64; // padding too short for a marker
                continue;
            }
            // SAFETY: head >= tail + 4, so these 4 bytes are published.
            let len = unsafe { self.shared.data().add(at).cast::<u32>().read_unaligned() };
            match len {
                WRAP => {
                    self.tail += left as u64;
                    continue;
                }
                END => return Ok(None),
                len => {
                    let len = len as usize;
                    let need = (4 + len).next_multiple_of(8);
                    if len > crate::MAX_SIZE || need > left {
                        bail!("corrupt record length {len} at offset {at}");
                    }
                    let tail = self.tail;
                    wait_until(|| head.load(Ordering::Acquire) >= tail + need as u64)?;
                    self.pending = need;
                    // SAFETY: the record's bytes are published (head) and
                    // stay untouched until we advance tail on the next call.
                    let body =
                        unsafe { std::slice::from_raw_parts(self.shared.data().add(at + 4), len) };
                    return Ok(Some(Msg::Body(body)));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Signals: a real-time signal per message, the value is the number
// ---------------------------------------------------------------------------

pub fn block_signals(signals: &[libc::c_int]) -> Result<()> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        Errno::result(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))
        .context("sigprocmask")?;
    }
    Ok(())
}

struct SignalTx {
    signo: libc::c_int,
    end: libc::c_int,
    peer: Pid,
}

fn sigqueue(pid: Pid, signo: libc::c_int, value: u64) -> Result<()> {
    loop {
        let sigval = libc::sigval {
            sival_ptr: value as usize as *mut c_void,
        };
        // SAFETY: sigqueue takes the sigval by value.
        match Errno::result(unsafe { libc::sigqueue(pid.as_raw(), signo, sigval) }) {
            Ok(_) => return Ok(()),
            // The receiver's queue of pending real-time signals is full
            // (RLIMIT_SIGPENDING): wait for it to take some.
            Err(Errno::EAGAIN) => {
                std::thread::yield_now();
                still_ok()?;
            }
            Err(Errno::EINTR) => still_ok()?,
            Err(e) => return Err(e).context("sigqueue"),
        }
    }
}

impl Tx for SignalTx {
    fn after_fork(&mut self, peer: Pid) -> Result<()> {
        self.peer = peer;
        Ok(())
    }

    fn send(&mut self, seq: u64, _size: usize) -> Result<()> {
        sigqueue(self.peer, self.signo, seq)
    }

    fn end(&mut self) -> Result<()> {
        sigqueue(self.peer, self.end, 0)
    }
}

struct SignalRx {
    signo: libc::c_int,
    end: libc::c_int,
}

impl Rx for SignalRx {
    fn recv(&mut self) -> Result<Option<Msg<'_>>> {
        // SAFETY: sigset_t is plain data initialised by sigemptyset; `info`
        // is a valid out-pointer; the signals are blocked, so they wait for
        // sigtimedwait instead of running a handler.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, self.signo);
            libc::sigaddset(&mut set, self.end);
            let timeout = libc::timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            loop {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let got = libc::sigtimedwait(&set, &mut info, &timeout);
                if got == self.end {
                    return Ok(None);
                }
                if got == self.signo {
                    return Ok(Some(Msg::Value(info.si_value().sival_ptr as usize as u64)));
                }
                still_ok()?;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Making channels
// ---------------------------------------------------------------------------

/// The limits that decide how a size is carried.
fn msgmax() -> usize {
    std::fs::read_to_string("/proc/sys/kernel/msgmax")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8192)
}

fn mq_msgsize_max() -> usize {
    std::fs::read_to_string("/proc/sys/fs/mqueue/msgsize_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8192)
}

/// A one-way channel of `mech` for messages of `size` bytes, or the reason
/// it cannot carry that size. `dir` is a private directory for names.
/// `signals` picks the real-time signal pair (two channels at once need two).
pub fn channel(
    mech: Mech,
    size: usize,
    dir: &Path,
    signals: (libc::c_int, libc::c_int),
) -> Result<std::result::Result<Channel, String>> {
    let mut note = None;
    let mut cleanup: Vec<Box<dyn std::any::Any>> = Vec::new();
    let (tx, rx): (Box<dyn Tx>, Box<dyn Rx>) = match mech {
        Mech::Pipe => {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
            stream_pair(Lazy::Open(w), Lazy::Open(r))
        }
        Mech::Fifo => {
            let path = dir.join(unique_name("fifo"));
            nix::unistd::mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR).context("mkfifo")?;
            cleanup.push(Box::new(PathGuard::new(&path)));
            stream_pair(
                Lazy::Path(path.clone(), OFlag::O_WRONLY),
                Lazy::Path(path, OFlag::O_RDONLY),
            )
        }
        Mech::UnixStream => {
            let (a, b) = socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .context("socketpair")?;
            stream_pair(Lazy::Open(a), Lazy::Open(b))
        }
        Mech::Tcp => {
            let listener = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .context("socket")?;
            bind(listener.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0))
                .context("bind(127.0.0.1:0)")?;
            listen(&listener, Backlog::new(1).expect("backlog")).context("listen")?;
            let addr: SockaddrIn = getsockname(listener.as_raw_fd()).context("getsockname")?;
            let client = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .context("socket")?;
            connect(client.as_raw_fd(), &addr).context("connect")?;
            let server = accept(listener.as_fd()).context("accept")?;
            for fd in [&client, &server] {
                setsockopt(fd, sockopt::TcpNoDelay, &true).context("TCP_NODELAY")?;
            }
            stream_pair(Lazy::Open(client), Lazy::Open(server))
        }
        Mech::UnixDgram => {
            let (a, b) = socketpair(
                AddressFamily::Unix,
                SockType::Datagram,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .context("socketpair")?;
            // Ask for buffers big enough for the largest datagram; the
            // kernel caps them at net.core.wmem_max / rmem_max.
            let want = (2 * size + 4096).min(i32::MAX as usize);
            let _ = setsockopt(&a, sockopt::SndBuf, &want);
            let _ = setsockopt(&b, sockopt::RcvBuf, &want);
            let sndbuf = nix::sys::socket::getsockopt(&a, sockopt::SndBuf).unwrap_or(0);
            // A datagram must fit in the send buffer (less bookkeeping).
            if size + 1024 > sndbuf {
                return Ok(Err(format!(
                    "n/a: a datagram must fit the socket buffer ({sndbuf} bytes; net.core.wmem_max)"
                )));
            }
            (
                Box::new(DgramTx {
                    fd: a,
                    buf: Vec::new(),
                }),
                Box::new(DgramRx {
                    fd: b,
                    buf: vec![0u8; size + 1],
                }),
            )
        }
        Mech::SysvMsg => {
            // SAFETY: msgget takes no pointers.
            let id =
                Errno::result(unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) })
                    .context("msgget")?;
            cleanup.push(Box::new(SysvGuard::new(SysvKind::MessageQueue, id)));
            let piece = msgmax().min(size.max(1));
            if size > msgmax() {
                note = Some(format!("split into {} B messages (msgmax)", msgmax()));
            }
            (
                Box::new(SysvTx {
                    id,
                    piece,
                    buf: Vec::new(),
                }),
                Box::new(SysvRx {
                    id,
                    size,
                    piece,
                    raw: Vec::new(),
                    message: Vec::new(),
                }),
            )
        }
        Mech::PosixMq => {
            let name = format!("/{}", unique_name("ipc-bench"));
            let piece = mq_msgsize_max().min(size.max(1));
            let attr = nix::mqueue::MqAttr::new(0, 10, piece as _, 0);
            let flags = nix::mqueue::MQ_OFlag::O_CREAT
                | nix::mqueue::MQ_OFlag::O_EXCL
                | nix::mqueue::MQ_OFlag::O_RDWR;
            let tx = nix::mqueue::mq_open(
                name.as_str(),
                flags,
                Mode::S_IRUSR | Mode::S_IWUSR,
                Some(&attr),
            )
            .context("mq_open")?;
            cleanup.push(Box::new(MqGuard::new(&name)));
            let rx = nix::mqueue::mq_open(
                name.as_str(),
                nix::mqueue::MQ_OFlag::O_RDWR,
                Mode::empty(),
                None,
            )
            .context("mq_open")?;
            if size > piece {
                note = Some(format!("split into {piece} B messages (msgsize_max)"));
            }
            (
                Box::new(MqTx { mqd: tx, piece }),
                Box::new(MqRx {
                    mqd: rx,
                    size,
                    piece,
                    raw: Vec::new(),
                    message: Vec::new(),
                }),
            )
        }
        Mech::ShmSem => {
            let slot = 64 * 1024;
            let shared = new_ring(16, slot as u32)?;
            if size > slot {
                note = Some(format!("split into {} KiB slots", slot / 1024));
            }
            (
                Box::new(RingTx {
                    shared: shared.clone(),
                    next_writer: None,
                }),
                Box::new(RingRx {
                    shared,
                    position: 0,
                    message: Vec::new(),
                }),
            )
        }
        Mech::ShmSpsc => {
            let shared = new_spsc()?;
            (
                Box::new(SpscTx {
                    shared: shared.clone(),
                    head: 0,
                }),
                Box::new(SpscRx {
                    shared,
                    tail: 0,
                    pending: 0,
                }),
            )
        }
        Mech::Signal => {
            block_signals(&[signals.0, signals.1])?;
            (
                Box::new(SignalTx {
                    signo: signals.0,
                    end: signals.1,
                    peer: Pid::from_raw(0),
                }),
                Box::new(SignalRx {
                    signo: signals.0,
                    end: signals.1,
                }),
            )
        }
    };
    Ok(Ok(Channel {
        tx,
        rx,
        note,
        cleanup,
    }))
}
