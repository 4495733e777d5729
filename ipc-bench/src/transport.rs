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
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{MqGuard, PathGuard, SysvGuard, SysvKind, unique_name};
use common::payload;
use common::peer::{PidWatch, Ticker};
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
use shm_demo::ipc_futex::{self as futex, Strategy};
use shm_demo::ipc_ring::{self as ring, Detach, Reader, Segment, Sem, Writer};

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
    ShmFutex,
    ShmFutexYield,
    ShmFutexSpin,
    ShmMemfd,
    ShmSpsc,
    Tcp,
    Signal,
    Eventfd,
}

pub const ALL: [Mech; 15] = [
    Mech::Pipe,
    Mech::Fifo,
    Mech::UnixStream,
    Mech::UnixDgram,
    Mech::SysvMsg,
    Mech::PosixMq,
    Mech::ShmSem,
    Mech::ShmFutex,
    Mech::ShmFutexYield,
    Mech::ShmFutexSpin,
    Mech::ShmMemfd,
    Mech::ShmSpsc,
    Mech::Tcp,
    Mech::Signal,
    Mech::Eventfd,
];

/// The mechanisms whose idle receiver is measured: every waiting strategy
/// of the shared-memory rings, and a pipe (a receiver blocked in the
/// kernel) for reference.
pub const IDLE: [Mech; 6] = [
    Mech::ShmFutexSpin,
    Mech::ShmFutexYield,
    Mech::ShmFutex,
    Mech::ShmSem,
    Mech::ShmSpsc,
    Mech::Pipe,
];

/// The shared-memory rings and their references, in the order of the
/// "cost of waiting" comparison.
pub const WAITING: [Mech; 7] = [
    Mech::ShmFutexSpin,
    Mech::ShmFutexYield,
    Mech::ShmFutex,
    Mech::ShmSem,
    Mech::ShmSpsc,
    Mech::Pipe,
    Mech::Eventfd,
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
            Mech::ShmFutex => "shm-futex",
            Mech::ShmFutexYield => "shm-futex-yield",
            Mech::ShmFutexSpin => "shm-futex-spin",
            Mech::ShmMemfd => "shm-memfd",
            Mech::ShmSpsc => "shm-spsc",
            Mech::Tcp => "tcp",
            Mech::Signal => "signal",
            Mech::Eventfd => "eventfd",
        }
    }

    /// How a waiting side of this mechanism waits.
    pub fn waiting(self) -> &'static str {
        match self {
            Mech::ShmFutexSpin => "pure spin",
            Mech::ShmFutexYield | Mech::ShmSpsc => "spin, then sched_yield",
            Mech::ShmFutex | Mech::ShmMemfd => "spin, then FUTEX_WAIT",
            Mech::ShmSem => "POSIX semaphores (sem_wait)",
            Mech::Signal => "sigtimedwait",
            Mech::Eventfd => "blocking read(eventfd)",
            Mech::SysvMsg => "blocking msgrcv",
            Mech::PosixMq => "blocking mq_receive",
            _ => "blocking read/recv in the kernel",
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
            Mech::ShmFutex => "shm-demo's futex ring: spin, then sleep in FUTEX_WAIT",
            Mech::ShmFutexYield => "shm-demo's futex ring, waiting by spin then sched_yield",
            Mech::ShmFutexSpin => "shm-demo's futex ring, waiting by pure spin",
            Mech::ShmMemfd => "shm-demo's futex ring (spin, then FUTEX_WAIT) in a sealed memfd",
            Mech::ShmSpsc => "shared memory lock-free SPSC byte ring, spin then yield",
            Mech::Tcp => "TCP over 127.0.0.1, TCP_NODELAY, framed",
            Mech::Signal => "sigqueue(SIGRTMIN+1) with the sequence number as value",
            Mech::Eventfd => "two eventfds, one per direction: a counter and a wake-up",
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
    /// Bytes the channel can hold in flight (its kernel buffers or its
    /// ring): the warm-up moves at least twice this much before timing, so
    /// every page of the ring has been touched and every buffer has grown.
    pub buffer: usize,
    /// For shm-sem's slots: messages after which a stream of them has used
    /// every slot. The round-trip warm-up sends at least this many, or the
    /// timed rounds would take the first touch of slots not yet used.
    /// (shm-spsc's ends touch every page after fork instead.)
    pub cycle: u64,
    pub cleanup: Vec<Box<dyn std::any::Any>>,
}

// ---------------------------------------------------------------------------
// The watchdog
// ---------------------------------------------------------------------------

/// The watched peer: a pidfd where the kernel has them (Linux 5.3+).
static PEER: std::sync::Mutex<Option<PidWatch>> = std::sync::Mutex::new(None);
/// Set the first time `still_ok` finds the peer gone.
static GONE_ONCE: AtomicBool = AtomicBool::new(false);
/// Deadline as milliseconds since START (0: none).
static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Set what `still_ok` checks, and wake blocked calls every 100 ms so they
/// check it; the wake-ups last as long as the returned ticker.
pub fn watch(peer: Pid, deadline: Duration) -> Result<Ticker> {
    let watch = PidWatch::open(peer.as_raw())?;
    if let Some(note) = watch.fallback() {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| crate::progress(note));
    }
    *PEER.lock().unwrap_or_else(|e| e.into_inner()) = Some(watch);
    GONE_ONCE.store(false, Ordering::Relaxed);
    let ms = (epoch().elapsed() + deadline).as_millis() as u64;
    DEADLINE_MS.store(ms, Ordering::Relaxed);
    Ticker::start(Duration::from_millis(100))
}

/// Fails if the peer died or the deadline passed.
pub fn still_ok() -> Result<()> {
    common::cleanup::check_stop()?;
    if let Some(peer) = PEER.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        && !peer.alive()
    {
        // The peer may have sent its last message and exited between our
        // EINTR and this look: what it sent is still queued. So the first
        // time, let the caller try again (a queued message comes at once);
        // only a second tick (100 ms later) with the peer still gone fails.
        if GONE_ONCE.swap(true, Ordering::Relaxed) {
            bail!("the peer process (pid {}) died", peer.pid());
        }
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
        // A full receive queue blocks the end marker like any datagram, so
        // the watchdog's tick can interrupt it too.
        loop {
            match send(self.fd.as_raw_fd(), &[], MsgFlags::empty()) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => still_ok()?,
                Err(e) => return Err(e).context("send(end)"),
            }
        }
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
    /// The message, then each piece with its type: both reused, so the
    /// timed loop allocates nothing (as the C reference).
    body: Vec<u8>,
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
        let mut body = std::mem::take(&mut self.body);
        body.resize(size, 0);
        payload::fill(seq, &mut body);
        for chunk in body.chunks(self.piece) {
            msgsnd(self.id, 1, chunk, &mut self.buf)?;
        }
        self.body = body;
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

/// An open queue descriptor, closed on drop. (nix's `MqdT` has no Drop,
/// and on Linux a queue descriptor is a file descriptor: every cell opens
/// two, so without this each leaked a pair, and an error path left the
/// descriptors that the clean-up itself needs to look at the queue.)
struct Mqd(nix::mqueue::MqdT);

impl Drop for Mqd {
    fn drop(&mut self) {
        // SAFETY: the descriptor came from mq_open and is closed once, here.
        unsafe { libc::mq_close(self.0.as_raw_fd()) };
    }
}

struct MqTx {
    mqd: Mqd,
    piece: usize,
    /// Reused: the timed loop allocates nothing.
    body: Vec<u8>,
}

impl Tx for MqTx {
    fn send(&mut self, seq: u64, size: usize) -> Result<()> {
        self.body.resize(size, 0);
        payload::fill(seq, &mut self.body);
        for chunk in self.body.chunks(self.piece) {
            loop {
                match nix::mqueue::mq_send(&self.mqd.0, chunk, 0) {
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
        loop {
            match nix::mqueue::mq_send(&self.mqd.0, &[], 0) {
                Ok(()) => return Ok(()),
                // A full queue blocks it, and the watchdog's tick interrupts.
                Err(Errno::EINTR) => still_ok()?,
                Err(e) => return Err(e).context("mq_send(end)"),
            }
        }
    }
}

struct MqRx {
    mqd: Mqd,
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
            let n = match nix::mqueue::mq_receive(&self.mqd.0, &mut self.raw, &mut priority) {
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

/// A memfd of `len` bytes whose size can never change again, and our
/// mapping of it. `memfd_create`: memory with a descriptor and no name;
/// `ftruncate`: its size; `F_ADD_SEALS` SHRINK|GROW|SEAL: nobody (not even
/// we) can shrink it under a mapping (which would SIGBUS the other side)
/// or grow it, and no seal can be added or removed later. Not
/// F_SEAL_WRITE: the ring is written all the time.
fn sealed_memfd(len: usize) -> Result<(NonNull<c_void>, OwnedFd)> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(
        c"ipc-bench-ring",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .context("memfd_create(ipc-bench-ring)")?;
    nix::unistd::ftruncate(&fd, len as libc::off_t)
        .with_context(|| format!("ftruncate(memfd, {len})"))?;
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )
    .context("fcntl(memfd, F_ADD_SEALS)")?;
    let base = map_fd(&fd, len)?;
    Ok((base, fd))
}

/// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)`.
fn map_fd(fd: &OwnedFd, len: usize) -> Result<NonNull<c_void>> {
    let size = NonZeroUsize::new(len).context("an empty mapping")?;
    // SAFETY: a fresh mapping at a kernel-chosen address overlaps nothing.
    unsafe {
        nix::sys::mman::mmap(
            None,
            size,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    }
    .context("mmap(memfd, MAP_SHARED)")
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
// shm-demo's futex ring: two counters, spin, then FUTEX_WAIT (or not)
// ---------------------------------------------------------------------------

/// The futex ring's memfd (shm-memfd only) and the process that made it.
type Memfd = Option<(Rc<OwnedFd>, u32)>;

/// The same shape as shm-sem's ring, so the two compare slot for slot;
/// in an anonymous mapping, or (`memfd`) in a sealed memfd.
fn new_futex_ring(strategy: Strategy, memfd: bool) -> Result<(Rc<futex::Ring>, Memfd)> {
    if !memfd {
        let ring = futex::Ring::anonymous(SHM_SEM_SLOTS, SHM_SEM_SLOT_SIZE, strategy)?;
        return Ok((Rc::new(ring), None));
    }
    let len = futex::segment_len(SHM_SEM_SLOTS, SHM_SEM_SLOT_SIZE);
    let (base, fd) = sealed_memfd(len)?;
    // SAFETY: the MAP_SHARED mapping just made, `len` bytes, page-aligned,
    // zero-filled (a new memfd reads as zeros).
    let mut ring = unsafe { futex::Ring::new(base, len) };
    ring.init(SHM_SEM_SLOTS, SHM_SEM_SLOT_SIZE, strategy);
    ring.publish();
    Ok((Rc::new(ring), Some((Rc::new(fd), std::process::id()))))
}

/// In the process that did not make the memfd: a mapping of our own, its
/// header checked as shm-demo's sender checks a segment it opened, in
/// place of the one inherited over fork. None: keep the one we have.
fn mapped_here(memfd: &Memfd) -> Result<Option<Rc<futex::Ring>>> {
    let Some((fd, creator)) = memfd else {
        return Ok(None);
    };
    if *creator == std::process::id() {
        return Ok(None);
    }
    // The seals fix the size: what we map is what the maker sized.
    let len = nix::sys::stat::fstat(fd.as_ref())
        .context("fstat(memfd)")?
        .st_size as usize;
    let base = map_fd(fd, len)?;
    // SAFETY: the MAP_SHARED mapping just made, `len` bytes.
    let mut ring = unsafe { futex::Ring::new(base, len) };
    let magic = ring.wait_published();
    ring.validate(magic, "the memfd")?;
    Ok(Some(Rc::new(ring)))
}

struct FutexTx {
    writer: futex::Writer<Rc<futex::Ring>>,
    memfd: Memfd,
}

impl Tx for FutexTx {
    fn after_fork(&mut self, _peer: Pid) -> Result<()> {
        if let Some(ring) = mapped_here(&self.memfd)? {
            // The inherited mapping goes with the old Writer.
            self.writer = futex::Writer::new(ring);
        }
        Ok(())
    }

    fn send(&mut self, seq: u64, size: usize) -> Result<()> {
        self.writer.write(seq, size, &mut peer_gone)
    }

    fn end(&mut self) -> Result<()> {
        self.writer.end(&mut peer_gone)
    }
}

struct FutexRx {
    reader: futex::Reader<Rc<futex::Ring>>,
    memfd: Memfd,
}

impl Rx for FutexRx {
    fn after_fork(&mut self, _peer: Pid) -> Result<()> {
        if let Some(ring) = mapped_here(&self.memfd)? {
            self.reader = futex::Reader::new(ring);
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<Msg<'_>>> {
        // A message that fits a slot is checked in place, in the slot.
        Ok(self
            .reader
            .receive(&mut peer_gone)?
            .map(|got| Msg::Numbered(got.seq, got.body)))
    }
}

// ---------------------------------------------------------------------------
// A lock-free single-producer/single-consumer byte ring
// ---------------------------------------------------------------------------

/// Capacity of the SPSC ring's data area for messages up to half of
/// it; larger messages get a ring of twice their record (see
/// [`spsc_capacity`]).
pub const SPSC_CAPACITY: usize = 8 * 1024 * 1024;
/// A record header that says "the rest of the ring is padding: go to 0".
const WRAP: u32 = u32::MAX;
/// A record header that says "no more messages".
const END: u32 = u32::MAX - 1;

/// Bytes one message of `size` takes in the ring: a u32 length, the body,
/// padding to 8 bytes.
fn spsc_record(size: usize) -> usize {
    (4 + size).next_multiple_of(8)
}

/// The ring's capacity for messages of `size` bytes. A record must be
/// contiguous, so a writer at offset `at` with too little room before the
/// end pads to the end and starts again at 0: that needs
/// `pad + record <= capacity` with `pad < record`, which always holds only
/// if the capacity is at least twice the record. A smaller ring would wait
/// forever for room that can never come.
pub fn spsc_capacity(size: usize) -> usize {
    SPSC_CAPACITY.max((2 * spsc_record(size)).next_multiple_of(4096))
}

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
    /// Bytes in the data area.
    cap: usize,
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

    /// Read one byte of every page of the data area, so that this process
    /// takes its page faults now rather than in a timed message or round
    /// trip. (A read fault on a shared writable mapping maps the page
    /// writable: the producer's later stores take no fault either.) Atomic
    /// loads: the peer may be doing the same at the same time.
    fn touch_every_page(&self) {
        let mut sum = 0u8;
        for offset in (0..self.cap).step_by(4096) {
            // SAFETY: `offset < cap`, inside the data area; AtomicU8 has
            // the size and alignment of u8.
            let byte = unsafe { &*self.data().add(offset).cast::<AtomicU8>() };
            sum = sum.wrapping_add(byte.load(Ordering::Relaxed));
        }
        std::hint::black_box(sum);
    }
}

impl Drop for SpscShared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new_spsc; nothing borrows it now.
        let _ = unsafe { munmap(self.base, self.len) };
    }
}

fn new_spsc(cap: usize) -> Result<Rc<SpscShared>> {
    let len = size_of::<SpscHeader>() + cap;
    // Zero-filled: head = tail = 0.
    let base = shared_anonymous(len)?;
    Ok(Rc::new(SpscShared { base, len, cap }))
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
        let capacity = self.shared.cap;
        let cap = capacity as u64;
        let mut at = (self.head % cap) as usize;
        if at + need > capacity {
            // Not enough room before the end: a WRAP record, then start at 0.
            let pad = capacity - at;
            if pad + need > capacity {
                // No amount of waiting frees more than the whole ring.
                bail!(
                    "a {need}-byte record cannot fit a {capacity}-byte ring after {pad} bytes of padding"
                );
            }
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
    fn after_fork(&mut self, _peer: Pid) -> Result<()> {
        self.shared.touch_every_page();
        Ok(())
    }

    fn send(&mut self, seq: u64, size: usize) -> Result<()> {
        let need = spsc_record(size);
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
    fn after_fork(&mut self, _peer: Pid) -> Result<()> {
        self.shared.touch_every_page();
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<Msg<'_>>> {
        let capacity = self.shared.cap;
        let cap = capacity as u64;
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
            let left = capacity - at;
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
// eventfd: a counter in the kernel; a write adds, a read takes it all
// ---------------------------------------------------------------------------

/// The value that says "no more": far above any sequence number + 1.
const EVENT_END: u64 = 1 << 62;

struct EventTx {
    fd: OwnedFd,
}

impl EventTx {
    /// write(2) of 8 bytes adds the value to the counter and wakes a reader.
    fn add(&self, value: u64) -> Result<()> {
        loop {
            match write(self.fd.as_fd(), &value.to_ne_bytes()) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => still_ok()?,
                Err(e) => return Err(e).context("write(eventfd)"),
            }
        }
    }
}

impl Tx for EventTx {
    fn send(&mut self, seq: u64, _size: usize) -> Result<()> {
        // + 1: adding 0 would wake nobody. One value in flight at a time
        // (a round trip), so the reader gets exactly this one.
        self.add(seq + 1)
    }

    fn end(&mut self) -> Result<()> {
        self.add(EVENT_END)
    }
}

struct EventRx {
    fd: OwnedFd,
}

impl Rx for EventRx {
    fn recv(&mut self) -> Result<Option<Msg<'_>>> {
        let mut bytes = [0u8; 8];
        loop {
            // read(2) blocks while the counter is 0, then returns it and
            // resets it to 0.
            match read(self.fd.as_fd(), &mut bytes) {
                Ok(8) => break,
                Ok(n) => bail!("read(eventfd): {n} bytes, not 8"),
                Err(Errno::EINTR) => still_ok()?,
                Err(e) => return Err(e).context("read(eventfd)"),
            }
        }
        match u64::from_ne_bytes(bytes) {
            EVENT_END => Ok(None),
            0 => bail!("read(eventfd) returned a zero counter"),
            v => Ok(Some(Msg::Value(v - 1))),
        }
    }
}

// ---------------------------------------------------------------------------
// Making channels
// ---------------------------------------------------------------------------

/// A number from `/proc/sys/<name>` (the first, for a list).
pub fn limit(name: &str) -> Option<usize> {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
}

/// The limits that decide how a size is carried.
fn msgmax() -> usize {
    limit("kernel/msgmax").unwrap_or(8192)
}

fn mq_msgsize_max() -> usize {
    limit("fs/mqueue/msgsize_max").unwrap_or(8192)
}

/// Messages a POSIX queue holds (`mq_maxmsg`); 10 is also the default
/// ceiling (`fs.mqueue.msg_max`) for unprivileged users.
pub const MQ_MAXMSG: usize = 10;
/// The slot rings' geometry (shm-sem, the futex rows, shm-memfd): 128 slots
/// of 64 KiB, 8 MiB like the SPSC ring, so the strategies compare on the
/// same depth (shm-demo's own default is 8 x 4 KiB; bigger slots carry a
/// 64 KiB message whole, and with 16 slots the futex ring at 64 KiB ran at
/// a quarter of its 128-slot speed: the sides kept waiting for each other).
pub const SHM_SEM_SLOTS: u32 = 128;
pub const SHM_SEM_SLOT_SIZE: u32 = 64 * 1024;
/// A pipe's default capacity (16 pages).
pub const PIPE_DEFAULT: usize = 65536;

fn pipe_capacity(fd: &OwnedFd) -> usize {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETPIPE_SZ).map_or(PIPE_DEFAULT, |n| n as usize)
}

/// SO_SNDBUF of one end plus SO_RCVBUF of the other, as the kernel set them.
fn socket_buffers(tx: &OwnedFd, rx: &OwnedFd) -> usize {
    let snd = nix::sys::socket::getsockopt(tx, sockopt::SndBuf).unwrap_or(0);
    let rcv = nix::sys::socket::getsockopt(rx, sockopt::RcvBuf).unwrap_or(0);
    snd + rcv
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
    let (mut buffer, mut cycle) = (0, 0);
    let mut cleanup: Vec<Box<dyn std::any::Any>> = Vec::new();
    let (tx, rx): (Box<dyn Tx>, Box<dyn Rx>) = match mech {
        Mech::Pipe => {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
            buffer = pipe_capacity(&w);
            stream_pair(Lazy::Open(w), Lazy::Open(r))
        }
        Mech::Fifo => {
            let path = dir.join(unique_name("fifo"));
            nix::unistd::mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR).context("mkfifo")?;
            cleanup.push(Box::new(PathGuard::new(&path)));
            // Opened only after fork; a FIFO gets a pipe's default capacity.
            buffer = PIPE_DEFAULT;
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
            buffer = socket_buffers(&a, &b);
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
            buffer = socket_buffers(&client, &server);
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
                    "n/a: a datagram must fit the sender's socket buffer: SO_SNDBUF asked \
                     for {want}, the kernel capped it at net.core.wmem_max = {} and doubled \
                     it to {sndbuf} bytes",
                    limit("net/core/wmem_max").unwrap_or(0)
                )));
            }
            buffer = socket_buffers(&a, &b);
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
            // A key with our pid in it, not IPC_PRIVATE: if we are killed,
            // the next run can find the queue and remove it (stale.rs).
            // (IPC_PRIVATE, recorded in `dir`, if someone holds our keys.)
            let (id, record) = crate::stale::sysv_queue(dir)?;
            // Dropped in order: the queue first, then its record.
            cleanup.push(Box::new(SysvGuard::new(SysvKind::MessageQueue, id)));
            if let Some(record) = record {
                cleanup.push(Box::new(PathGuard::new(record)));
            }
            buffer = limit("kernel/msgmnb").unwrap_or(16384);
            let piece = msgmax().min(size.max(1));
            if size > msgmax() {
                note = Some(format!("split into {} B messages (msgmax)", msgmax()));
            }
            (
                Box::new(SysvTx {
                    id,
                    piece,
                    body: Vec::new(),
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
            let attr = nix::mqueue::MqAttr::new(0, MQ_MAXMSG as _, piece as _, 0);
            buffer = MQ_MAXMSG * piece;
            let flags = nix::mqueue::MQ_OFlag::O_CREAT
                | nix::mqueue::MQ_OFlag::O_EXCL
                | nix::mqueue::MQ_OFlag::O_RDWR;
            // EMFILE here is not about descriptors: the queue's bytes
            // would take this user over RLIMIT_MSGQUEUE, a budget every
            // process of the user shares. Other programs' queues come and
            // go, so wait a little before calling the cell n/a.
            let mut tries = 0;
            let tx = loop {
                match nix::mqueue::mq_open(
                    name.as_str(),
                    flags,
                    Mode::S_IRUSR | Mode::S_IWUSR,
                    Some(&attr),
                ) {
                    Ok(mqd) => break Mqd(mqd),
                    Err(Errno::EMFILE) if tries < 100 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(Errno::EMFILE) => {
                        return Ok(Err(format!(
                            "n/a: mq_open: EMFILE: a queue of {MQ_MAXMSG} x {piece} bytes would take \
                             this user over RLIMIT_MSGQUEUE ({} bytes, shared by all its \
                             processes' queues) for 10 s",
                            msgqueue_limit()
                        )));
                    }
                    Err(e) => return Err(e).context("mq_open"),
                }
            };
            cleanup.push(Box::new(MqGuard::new(&name)));
            // Found by the next run if we are killed, even where the
            // mqueue filesystem is not mounted and queues cannot be listed.
            cleanup.push(Box::new(crate::stale::record_posix_queue(dir, &name)?));
            let rx = Mqd(nix::mqueue::mq_open(
                name.as_str(),
                nix::mqueue::MQ_OFlag::O_RDWR,
                Mode::empty(),
                None,
            )
            .context("mq_open")?);
            if size > piece {
                note = Some(format!("split into {piece} B messages (msgsize_max)"));
            }
            (
                Box::new(MqTx {
                    mqd: tx,
                    piece,
                    body: Vec::new(),
                }),
                Box::new(MqRx {
                    mqd: rx,
                    size,
                    piece,
                    raw: Vec::new(),
                    message: Vec::new(),
                }),
            )
        }
        Mech::ShmFutex | Mech::ShmFutexYield | Mech::ShmFutexSpin | Mech::ShmMemfd => {
            let slot = SHM_SEM_SLOT_SIZE as usize;
            let strategy = match mech {
                Mech::ShmFutexYield => Strategy::SpinYield,
                Mech::ShmFutexSpin => Strategy::Spin,
                _ => Strategy::SpinFutex,
            };
            let (ring, memfd) = new_futex_ring(strategy, mech == Mech::ShmMemfd)?;
            buffer = ring.len();
            cycle = u64::from(SHM_SEM_SLOTS).div_ceil(size.div_ceil(slot).max(1) as u64);
            if size > slot {
                note = Some(format!("split into {} KiB slots", slot / 1024));
            }
            (
                Box::new(FutexTx {
                    writer: futex::Writer::new(ring.clone()),
                    memfd: memfd.clone(),
                }),
                Box::new(FutexRx {
                    reader: futex::Reader::new(ring),
                    memfd,
                }),
            )
        }
        Mech::ShmSem => {
            let slot = SHM_SEM_SLOT_SIZE as usize;
            let shared = new_ring(SHM_SEM_SLOTS, SHM_SEM_SLOT_SIZE)?;
            buffer = ring::segment_len(SHM_SEM_SLOTS, SHM_SEM_SLOT_SIZE);
            cycle = u64::from(SHM_SEM_SLOTS).div_ceil(size.div_ceil(slot).max(1) as u64);
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
            let shared = new_spsc(spsc_capacity(size))?;
            // Both ends touch every page after fork (touch_every_page):
            // walking 8 MiB with 64-byte round trips would take 116 K rounds.
            buffer = shared.cap;
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
        Mech::Eventfd => {
            let efd = nix::sys::eventfd::EventFd::from_value_and_flags(
                0,
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
            )
            .context("eventfd(0, EFD_CLOEXEC)")?;
            let end = |what| {
                efd.as_fd()
                    .try_clone_to_owned()
                    .with_context(|| format!("dup(eventfd) for the {what}"))
            };
            (
                Box::new(EventTx { fd: end("sender")? }),
                Box::new(EventRx {
                    fd: end("receiver")?,
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
        buffer,
        cycle,
        cleanup,
    }))
}

// ---------------------------------------------------------------------------
// What the tables do not show: each mechanism's configuration here
// ---------------------------------------------------------------------------

/// The kernel limits the configurations below depend on, read now.
pub fn kernel_limits() -> Vec<(&'static str, String)> {
    let sysctl = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/{name}"))
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into())
    };
    let mut limits: Vec<(&'static str, String)> = [
        ("fs.pipe-max-size", "fs/pipe-max-size"),
        ("net.core.wmem_default", "net/core/wmem_default"),
        ("net.core.rmem_default", "net/core/rmem_default"),
        ("net.core.wmem_max", "net/core/wmem_max"),
        ("net.core.rmem_max", "net/core/rmem_max"),
        ("net.unix.max_dgram_qlen", "net/unix/max_dgram_qlen"),
        ("net.ipv4.tcp_wmem", "net/ipv4/tcp_wmem"),
        ("net.ipv4.tcp_rmem", "net/ipv4/tcp_rmem"),
        ("kernel.msgmax", "kernel/msgmax"),
        ("kernel.msgmnb", "kernel/msgmnb"),
        ("fs.mqueue.msg_max", "fs/mqueue/msg_max"),
        ("fs.mqueue.msgsize_max", "fs/mqueue/msgsize_max"),
    ]
    .into_iter()
    .map(|(name, path)| (name, sysctl(path)))
    .collect();
    limits.push(("RLIMIT_SIGPENDING", sigpending()));
    limits.push(("RLIMIT_MSGQUEUE", msgqueue_limit()));
    limits
}

/// The soft RLIMIT_MSGQUEUE: bytes of POSIX queues one user may have.
fn msgqueue_limit() -> String {
    // SAFETY: rlimit is plain data; getrlimit fills it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MSGQUEUE, &mut lim) } != 0 {
        return "unknown".into();
    }
    lim.rlim_cur.to_string()
}

/// The soft RLIMIT_SIGPENDING (nix's `resource` feature is not in the
/// workspace, so libc).
fn sigpending() -> String {
    // SAFETY: rlimit is plain data; getrlimit fills it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_SIGPENDING, &mut lim) } != 0 {
        return "unknown".into();
    }
    lim.rlim_cur.to_string()
}

/// SO_SNDBUF and SO_RCVBUF of a fresh socket pair of `kind`, as the kernel
/// sets them by default.
pub fn default_buffers(kind: SockType) -> (usize, usize) {
    socketpair(AddressFamily::Unix, kind, None, SockFlag::SOCK_CLOEXEC).map_or((0, 0), |(a, b)| {
        (
            nix::sys::socket::getsockopt(&a, sockopt::SndBuf).unwrap_or(0),
            nix::sys::socket::getsockopt(&b, sockopt::RcvBuf).unwrap_or(0),
        )
    })
}

/// How `mech` is set up in this benchmark, with the values that matter.
pub fn configuration(mech: Mech) -> String {
    let sys = |name: &str| limit(name).map_or("unknown".into(), |v| v.to_string());
    match mech {
        Mech::Pipe => format!(
            "pipe2() between the parent and a forked child; capacity {PIPE_DEFAULT} bytes \
             (the default: not raised towards fs.pipe-max-size); 4-byte length + body per message"
        ),
        Mech::Fifo => format!(
            "mkfifo() in a private 0700 directory, opened by the parent and a forked child \
             (related here, though a FIFO also joins unrelated processes); capacity {PIPE_DEFAULT} \
             bytes; framed like the pipe"
        ),
        Mech::UnixStream => {
            let (snd, rcv) = default_buffers(SockType::Stream);
            format!(
                "socketpair(AF_UNIX, SOCK_STREAM), inherited over fork; default buffers \
                 (SO_SNDBUF {snd}, SO_RCVBUF {rcv} bytes); framed like the pipe"
            )
        }
        Mech::UnixDgram => {
            let wmem = limit("net/core/wmem_max").unwrap_or(0);
            format!(
                "socketpair(AF_UNIX, SOCK_DGRAM), one datagram per message; SO_SNDBUF/SO_RCVBUF \
                 asked for 2 x size + 4096, which the kernel caps at net.core.wmem_max/rmem_max \
                 ({wmem}) and doubles, so the largest message here is 2 x {wmem} - 1024 = {} \
                 bytes (with the kernel's default wmem_max of 212992 it would be 424960, and \
                 the 1 MiB cells would be n/a)",
                (2 * wmem).saturating_sub(1024)
            )
        }
        Mech::SysvMsg => format!(
            "msgget(key 0x69PPPPPS, 0600), one queue per measurement; a message may hold \
             kernel.msgmax = {} bytes and the queue kernel.msgmnb = {} bytes: larger messages \
             go as several System V messages of msgmax bytes, each its own msgsnd/msgrcv",
            sys("kernel/msgmax"),
            sys("kernel/msgmnb")
        ),
        Mech::PosixMq => format!(
            "mq_open(/ipc-bench-PID-N, O_CREAT|O_EXCL, 0600), mq_maxmsg {MQ_MAXMSG}, mq_msgsize \
             the message size up to fs.mqueue.msgsize_max = {}: larger messages go in pieces \
             of that size",
            sys("fs/mqueue/msgsize_max")
        ),
        Mech::ShmSem => format!(
            "shm-demo's ring with {SHM_SEM_SLOTS} slots of {} KiB (shm-demo itself defaults to \
             8 x 4 KiB; a 64 KiB slot carries a 64 KiB message whole, larger ones span slots) \
             and two unnamed POSIX semaphores (sem_init, pshared = 1) in the segment; the segment \
             is an anonymous MAP_SHARED mapping inherited over fork, not a shm_open name as in \
             shm-demo; the receiver copies each slot out before checking it",
            SHM_SEM_SLOT_SIZE / 1024
        ),
        Mech::ShmSpsc => format!(
            "a lock-free single-producer/single-consumer byte ring of {} MiB (for messages over \
             {} MiB: twice their record) in an anonymous MAP_SHARED mapping inherited over fork \
             (not named: only related processes share it as set up here); head and tail \
             atomics on their own cache lines; a waiting side spins 1000 times, then calls \
             sched_yield; the receiver checks each message in place; no system call per message unless a side \
             waits",
            SPSC_CAPACITY >> 20,
            SPSC_CAPACITY >> 21
        ),
        Mech::ShmFutex | Mech::ShmFutexYield | Mech::ShmFutexSpin => format!(
            "shm-demo's futex ring (shm-demo futex): {SHM_SEM_SLOTS} slots of {} KiB, as \
             shm-sem, synchronised by two u32 counters (published, released) in the header \
             instead of semaphores, in an anonymous MAP_SHARED mapping inherited over fork; \
             a waiting side looks for {} µs (spin loop hints, the clock read every {} looks), \
             then {}; a message that fits \
             a slot is checked in place, a larger one is copied out piece by piece",
            SHM_SEM_SLOT_SIZE / 1024,
            futex::SPIN_TIME.as_micros(),
            futex::SPIN_BATCH,
            match mech {
                Mech::ShmFutex =>
                    "stores 1 in its sleeping flag and sleeps in FUTEX_WAIT \
                    (the other side makes FUTEX_WAKE only when that flag is set)",
                Mech::ShmFutexYield => "calls sched_yield between looks (never sleeps)",
                _ => "keeps spinning (never yields or sleeps)",
            }
        ),
        Mech::ShmMemfd => format!(
            "shm-futex's ring ({SHM_SEM_SLOTS} slots of {} KiB, spin then FUTEX_WAIT), but the \
             segment is a memfd (memfd_create, ftruncate, F_ADD_SEALS SHRINK|GROW|SEAL) that \
             each process maps itself: the forked child maps the inherited descriptor with \
             mmap(MAP_SHARED) and checks the header as shm-demo's sender checks a segment it \
             opened; compare with shm-futex, whose anonymous MAP_SHARED mapping is shmem \
             like /dev/shm's",
            SHM_SEM_SLOT_SIZE / 1024
        ),
        Mech::Eventfd => "two eventfds (eventfd(0, EFD_CLOEXEC), inherited over fork), one per \
             direction: the pinger writes the round's number + 1 (an 8-byte write adds to the \
             counter and wakes the reader), the echo reads it (an 8-byte read takes the counter \
             and resets it) and writes it back on the other; no payload, so only round trips \
             are measured, each two wake-ups"
            .to_string(),
        Mech::Tcp => {
            let list = |name: &str| {
                std::fs::read_to_string(format!("/proc/sys/{name}"))
                    .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_else(|_| "unknown".into())
            };
            format!(
                "TCP over 127.0.0.1, TCP_NODELAY, default buffers (autotuned within \
                 net.ipv4.tcp_wmem = {} and tcp_rmem = {}); framed like the pipe",
                list("net/ipv4/tcp_wmem"),
                list("net/ipv4/tcp_rmem")
            )
        }
        Mech::Signal => format!(
            "sigqueue(SIGRTMIN+1) per message with the sequence number as its value, taken \
             with sigtimedwait (blocked, no handler); one integer per signal whatever the size, \
             so only the first size is measured; when RLIMIT_SIGPENDING ({}) signals are \
             pending, sigqueue fails with EAGAIN and the sender yields and retries",
            sigpending()
        ),
    }
}
