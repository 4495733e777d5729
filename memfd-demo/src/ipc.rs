//! The mechanism: a sealed memfd, filled by the sender, handed to the
//! receiver over a Unix socket with `SCM_RIGHTS`, checked in place.
//!
//! Read top to bottom: the object's layout, making and sealing it, the
//! receiver's checks before it maps anything, passing the descriptor, and
//! the two roles. Every system call is at its call site.

use std::io::{IoSlice, IoSliceMut};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{PathGuard, check_stop};
use common::payload::{self, CheckReport, Checker};
use common::report::Narrator;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept, bind, connect, getsockopt, listen, recvmsg, sendmsg, socket, sockopt,
};
use nix::sys::stat::fstat;
use nix::unistd::ftruncate;

/// First bytes of every object this demo makes: a receiver refuses anything
/// else before it believes the header's numbers.
pub const MAGIC: [u8; 8] = *b"MEMFDDM1";
/// magic, then `count: u64` and `size: u64`, little-endian; then `count`
/// messages of `size` bytes back to back.
pub const HEADER: usize = 24;
/// Largest object either side accepts (1 GiB of messages): the receiver
/// maps the whole object, and a peer must not make it map anything at all.
pub const MAX_BYTES: u64 = 1 << 30;

/// The seals a receiver demands before it maps the object:
/// - `F_SEAL_SHRINK`: nobody can truncate it, so no page we read can vanish
///   (no SIGBUS, the fate of a truncated shm segment's readers);
/// - `F_SEAL_GROW`: its size is the size we checked;
/// - `F_SEAL_WRITE`: nobody, the sender included, can change a byte while we
///   check it (the kernel refused this seal while a writable mapping existed).
pub const REQUIRED_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE);

/// The object's size for `count` messages of `size` bytes, if allowed.
pub fn object_len(count: u64, size: usize) -> Option<usize> {
    let body = count.checked_mul(size as u64)?;
    (body <= MAX_BYTES).then_some(HEADER + body as usize)
}

/// A shared mapping, unmapped (`munmap`) on drop.
pub struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    /// `mmap(NULL, len, prot, MAP_SHARED, fd, 0)`: MAP_SHARED, so the pages
    /// are the object's own, seen by every process that maps it.
    pub fn new(fd: BorrowedFd<'_>, len: usize, prot: ProtFlags) -> nix::Result<Mapping> {
        let length = NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        // SAFETY: a fresh mapping chosen by the kernel (no address given), so
        // it overlaps no Rust object; it lives until `drop` unmaps it.
        let ptr = unsafe { mmap(None, length, prot, MapFlags::MAP_SHARED, fd, 0)? };
        Ok(Mapping { ptr, len })
    }

    /// The mapped bytes. Only for a mapping of a sealed (`F_SEAL_WRITE`)
    /// object, or one that this process alone can write.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped readable at `ptr` until drop; the
        // callers' rule above means no other process changes them meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len) }
    }

    /// The mapped bytes, writable: only for a mapping made with PROT_WRITE
    /// of an object no other process has yet.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `bytes`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; no slice into
        // the mapping outlives `self` (they all borrow it).
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`: anonymous memory
/// with a file descriptor and no name in any filesystem. `name` only labels
/// it in `/proc/PID/fd` ("memfd:NAME (deleted)"). MFD_CLOEXEC: not leaked
/// into programs we exec; MFD_ALLOW_SEALING: without it F_ADD_SEALS fails.
pub fn create(name: &str) -> Result<OwnedFd> {
    memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .with_context(|| format!("memfd_create({name})"))
}

// ANCHOR: make_sealed
/// Make the sender's object: size it, write `count` messages, unmap, seal.
pub fn make_sealed(count: u64, size: usize) -> Result<OwnedFd> {
    let len = object_len(count, size).context("object too large")?;
    let fd = create("memfd-demo")?;
    // A new memfd is empty: ftruncate gives it its size (pages are
    // allocated when first touched).
    ftruncate(&fd, len as libc::off_t).with_context(|| format!("ftruncate(memfd, {len})"))?;
    let mut map = Mapping::new(
        fd.as_fd(),
        len,
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
    )
    .context("mmap(memfd, PROT_READ|PROT_WRITE)")?;
    write_messages(map.bytes_mut(), count, size);
    // F_SEAL_WRITE is refused (EBUSY) while any writable shared mapping
    // exists: unmap first.
    drop(map); // munmap(2)
    seal(fd.as_fd(), REQUIRED_SEALS | SealFlag::F_SEAL_SEAL)?;
    Ok(fd)
}

/// Header and messages, written in place in the mapping.
pub fn write_messages(bytes: &mut [u8], count: u64, size: usize) {
    bytes[..8].copy_from_slice(&MAGIC);
    bytes[8..16].copy_from_slice(&count.to_le_bytes());
    bytes[16..24].copy_from_slice(&(size as u64).to_le_bytes());
    for (seq, body) in bytes[HEADER..].chunks_exact_mut(size).enumerate() {
        payload::fill(seq as u64, body);
    }
}

/// `fcntl(F_ADD_SEALS)`. F_SEAL_SEAL, when given, forbids adding more (or,
/// on a receiver's side, nothing changes: seals can never be removed).
pub fn seal(fd: BorrowedFd<'_>, seals: SealFlag) -> Result<()> {
    fcntl(fd, FcntlArg::F_ADD_SEALS(seals))
        .map(drop)
        .with_context(|| format!("fcntl(memfd, F_ADD_SEALS, {seals:?})"))
}
// ANCHOR_END: make_sealed

/// "F_SEAL_SHRINK|F_SEAL_GROW|...", for the narration.
pub fn names(seals: SealFlag) -> String {
    if seals.is_empty() {
        return "no seals".to_string();
    }
    seals
        .iter_names()
        .map(|(name, _)| name)
        .collect::<Vec<_>>()
        .join("|")
}

/// `fcntl(F_GET_SEALS)`: the seals the object has now.
pub fn seals(fd: BorrowedFd<'_>) -> Result<SealFlag> {
    let bits = fcntl(fd, FcntlArg::F_GET_SEALS).context("fcntl(F_GET_SEALS)")?;
    Ok(SealFlag::from_bits_truncate(bits))
}

// ANCHOR: check_seals
/// The receiver's first check, before mapping: the seals it relies on.
/// (Defence a first reading may skip: the reasons are in REQUIRED_SEALS.)
pub fn check_seals(fd: BorrowedFd<'_>) -> Result<SealFlag> {
    let have = seals(fd)?;
    let missing = REQUIRED_SEALS.difference(have);
    if !missing.is_empty() {
        bail!(
            "refused: the object lacks {} (it has {}): its owner could still shrink it under \
             our mapping (SIGBUS) or change bytes while we check them",
            names(missing),
            names(have)
        );
    }
    Ok(have)
}
// ANCHOR_END: check_seals

/// Map a sealed object read-only and check every message in place; the
/// size comes from `fstat` and must match the header before anything else
/// of the header is used. Returns the check and `(count, size)`.
pub fn read_sealed(fd: BorrowedFd<'_>) -> Result<(CheckReport, u64, usize)> {
    let st = fstat(fd).context("fstat(memfd)")?;
    let len = st.st_size as u64;
    if len < HEADER as u64 || len > HEADER as u64 + MAX_BYTES {
        bail!("refused: object of {len} bytes (expected {HEADER} to {HEADER} + {MAX_BYTES})");
    }
    // PROT_READ only: even if a seal were missing we could not write.
    let map =
        Mapping::new(fd, len as usize, ProtFlags::PROT_READ).context("mmap(memfd, PROT_READ)")?;
    let bytes = map.bytes();
    if bytes[..8] != MAGIC {
        bail!("refused: the object does not start with {MAGIC:?}: not a memfd-demo object");
    }
    let count = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let size = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let fits = usize::try_from(size)
        .ok()
        .filter(|&s| s >= payload::MIN_SIZE)
        .and_then(|s| object_len(count, s).map(|l| (s, l)));
    let Some((size, expected)) = fits.filter(|&(_, l)| l as u64 == len) else {
        bail!(
            "refused: the header says {count} messages of {size} bytes, the object has {len} bytes"
        );
    };
    debug_assert_eq!(expected, bytes.len());
    let mut checker = Checker::new(Some(count));
    // In place: the checker reads the mapping itself; no copy out.
    for body in bytes[HEADER..].chunks_exact(size) {
        checker.check(body);
    }
    Ok((checker.report(), count, size))
}

// ANCHOR: send_fd
/// Send `fd` over the connected socket with SCM_RIGHTS: the kernel installs
/// a new descriptor for the same open file in the receiving process. At
/// least one byte of ordinary data must go with it: `note`.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>, note: &[u8]) -> Result<()> {
    let fds = [fd.as_raw_fd()];
    let iov = [IoSlice::new(note)];
    sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("sendmsg(SCM_RIGHTS)")?;
    Ok(())
}
// ANCHOR_END: send_fd

/// Receive one descriptor (and the note beside it). MSG_CTRUNC means the
/// control buffer was too small and the kernel dropped descriptors: refused.
pub fn recv_fd(sock: BorrowedFd<'_>, timeout: Duration) -> Result<(OwnedFd, Vec<u8>)> {
    wait_readable(sock, timeout, "the sender's descriptor")?;
    let mut note = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut note)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("recvmsg(SCM_RIGHTS)")?;
    let mut received = Vec::new();
    for cmsg in msg.cmsgs().context("recvmsg: control messages")? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel just installed these fds in this process
            // for us; nobody else owns them.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let ctrunc = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let n = msg.bytes;
    if ctrunc {
        bail!("recvmsg: MSG_CTRUNC: the control buffer was too small, descriptors were lost");
    }
    if n == 0 {
        bail!("the sender closed the connection without sending a descriptor");
    }
    let mut fds = received.into_iter();
    let (Some(fd), None) = (fds.next(), fds.next()) else {
        bail!("expected exactly one descriptor with the message");
    };
    Ok((fd, note[..n].to_vec()))
}

/// poll() for POLLIN, at most `timeout`; a stop signal ends the wait.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_stop()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no {what} within {} s (--timeout)", timeout.as_secs());
        }
        // Short slices, so a Ctrl-C that arrives between check_stop and
        // poll is still seen promptly.
        let slice = PollTimeout::try_from(left.min(Duration::from_millis(200)))
            .unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, slice) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("poll({what})")),
        }
    }
}

/// What the receiver tells the sender: "checked COUNT errors ERRORS".
fn verdict(report: &CheckReport, count: u64) -> Vec<u8> {
    format!("checked {count} errors {}", report.errors()).into_bytes()
}

/// The receiver: listen at `path`, take one descriptor from one sender,
/// check the seals, map read-only, check every message, answer.
pub fn receiver(
    path: &Path,
    timeout: Duration,
    say: &Narrator,
) -> Result<(CheckReport, u64, usize)> {
    // SOCK_CLOEXEC: the socket is not inherited by programs we might exec.
    let listener = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket(AF_UNIX, SOCK_STREAM)")?;
    let addr = UnixAddr::new(path).with_context(|| format!("socket path {}", path.display()))?;
    // bind creates the socket file; EADDRINUSE if the path exists: we never
    // remove a file we did not make.
    bind(listener.as_raw_fd(), &addr).with_context(|| format!("bind({})", path.display()))?;
    let _socket_file = PathGuard::new(path); // unlink(2) on drop
    // bind's mode follows the umask; before listen nobody can connect, so
    // setting 0600 now closes the window.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("chmod({}, 0600)", path.display()))?;
    listen(&listener, Backlog::new(1).expect("backlog 1")).context("listen")?;
    say.step(format!(
        "bind({}) + chmod 0600 + listen: waiting for a sender",
        path.display()
    ));

    wait_readable(listener.as_fd(), timeout, "sender connecting")?;
    let conn = accept(&listener).context("accept")?;
    // SO_PEERCRED: who is at the other end, as the kernel saw it connect.
    let cred = getsockopt(&conn, sockopt::PeerCredentials).context("getsockopt(SO_PEERCRED)")?;
    if cred.uid() != nix::unistd::geteuid().as_raw() {
        bail!(
            "refused: the sender (pid {}) runs as uid {}, not as us",
            cred.pid(),
            cred.uid()
        );
    }
    let (fd, note) = recv_fd(conn.as_fd(), timeout)?;
    say.step(format!(
        "recvmsg: SCM_RIGHTS gave us fd {} from pid {} ({:?}); readlink /proc/self/fd/{}: {}",
        fd.as_raw_fd(),
        cred.pid(),
        String::from_utf8_lossy(&note),
        fd.as_raw_fd(),
        fd_link(fd.as_fd()),
    ));
    let have = check_seals(fd.as_fd())?;
    say.step(format!(
        "fcntl(F_GET_SEALS) = {}: it can no longer shrink, grow or change",
        names(have)
    ));
    let (report, count, size) = read_sealed(fd.as_fd())?;
    say.step(format!(
        "mmap(PROT_READ, MAP_SHARED) and checked {count} messages of {size} bytes in place: {report}"
    ));
    // One answer back, so the sender knows the outcome.
    nix::unistd::write(&conn, &verdict(&report, count)).context("write(verdict)")?;
    drop(fd); // close(2): with the sender's closed too, the memory is freed
    Ok((report, count, size))
}

/// The sender: make and seal the object, connect to `path` (waiting for
/// the receiver to listen, at most `timeout`), pass it, read the verdict.
/// Returns the number of errors the receiver found.
pub fn sender(
    path: &Path,
    count: u64,
    size: usize,
    timeout: Duration,
    say: &Narrator,
) -> Result<u64> {
    let fd = make_sealed(count, size)?;
    say.step(format!(
        "memfd_create + ftruncate + mmap + {count} messages of {size} bytes + munmap + \
         F_ADD_SEALS({}): fd {} ({})",
        names(seals(fd.as_fd())?),
        fd.as_raw_fd(),
        fd_link(fd.as_fd())
    ));
    let conn = connect_when_listening(path, timeout)?;
    send_fd(
        conn.as_fd(),
        fd.as_fd(),
        format!("{count}x{size}").as_bytes(),
    )?;
    say.step(format!("sendmsg(SCM_RIGHTS) to {}", path.display()));
    // Our copy of the descriptor is no longer needed: the receiver's keeps
    // the memory alive.
    drop(fd); // close(2)
    wait_readable(conn.as_fd(), timeout, "verdict from the receiver")?;
    let mut answer = [0u8; 64];
    let n = match nix::unistd::read(&conn, &mut answer) {
        // A receiver that dies with our message unread resets the connection.
        Err(Errno::ECONNRESET) => {
            bail!("the receiver went away (ECONNRESET) without a verdict: it died before answering")
        }
        other => other.context("read(verdict)")?,
    };
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    let errors = text
        .strip_prefix("checked ")
        .and_then(|rest| rest.split_once(" errors "))
        .filter(|(c, _)| c.parse() == Ok(count))
        .and_then(|(_, e)| e.parse().ok());
    match errors {
        Some(errors) => {
            say.step(format!("the receiver answered: {text}"));
            Ok(errors)
        }
        None if n == 0 => bail!(
            "the receiver closed the connection without a verdict (it refused the object or died)"
        ),
        None => bail!("the receiver answered {text:?}, not 'checked {count} errors N'"),
    }
}

/// connect() to the receiver, retrying while it is not there yet (ENOENT:
/// no socket file; ECONNREFUSED: a file but nobody listening).
pub fn connect_when_listening(path: &Path, timeout: Duration) -> Result<OwnedFd> {
    let addr = UnixAddr::new(path).with_context(|| format!("socket path {}", path.display()))?;
    let deadline = Instant::now() + timeout;
    loop {
        check_stop()?;
        let sock = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("socket(AF_UNIX, SOCK_STREAM)")?;
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => return Ok(sock),
            Err(Errno::ENOENT | Errno::ECONNREFUSED | Errno::EINTR)
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "connect({}): is a receiver listening there? (--timeout {} s)",
                        path.display(),
                        timeout.as_secs()
                    )
                });
            }
        }
    }
}

/// What `/proc/self/fd/N` points at: "/memfd:NAME (deleted)" for a memfd.
pub fn fd_link(fd: BorrowedFd<'_>) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("(readlink: {e})"))
}
