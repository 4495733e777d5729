//! The story, one terminal: each step shows one property of a sealed memfd
//! and checks that the kernel did what the narration says.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{PrivateDir, ShmGuard};
use common::peer::{Peer, PeerExit, wait_pid};
use common::report::{Narrator, Stream};
use nix::errno::Errno;
use nix::fcntl::{OFlag, SealFlag};
use nix::sys::mman::{ProtFlags, shm_open};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{Mode, fstat};
use nix::sys::uio::pread;
use nix::unistd::{ForkResult, fork, ftruncate, pipe, read, write};

use crate::Options;
use crate::ipc::{self, Mapping, REQUIRED_SEALS};

pub fn story(opts: &Options) -> Result<()> {
    let say = Narrator::new("parent", opts.quiet, Stream::Stdout);
    say.line(format!(
        "memfd-demo: {} messages of {} bytes in a sealed memfd, passed to another process \
         (parent pid {})",
        opts.count,
        opts.size,
        std::process::id()
    ));
    heading(&say, "1. Memory with a descriptor and no name");
    no_name(&say)?;
    heading(&say, "2. Fill it, then seal it");
    seals(&say)?;
    heading(
        &say,
        "3. What the seals prevent: a truncated shm segment kills its reader",
    );
    truncation(&say)?;
    heading(
        &say,
        "4. Passed to an unrelated process with SCM_RIGHTS, checked in place",
    );
    let start = Instant::now();
    let errors = handoff(opts, &say)?;
    let elapsed = start.elapsed();
    heading(&say, "5. What the receiver refuses");
    refusals(&say)?;
    heading(
        &say,
        "6. F_SEAL_FUTURE_WRITE: the owner keeps writing, nobody else can",
    );
    future_write(&say)?;
    heading(&say, "7. SIGKILL leaves nothing behind");
    sigkill(&say)?;
    crate::finish(opts, &say, opts.count, opts.size, errors, elapsed)
}

fn heading(say: &Narrator, title: &str) {
    say.line(format!("\n== {title} =="));
}

/// The errno a call must fail with, or a clear failure of the story.
fn expect_errno<T>(what: &str, result: nix::Result<T>, want: Errno) -> Result<()> {
    match result {
        Err(e) if e == want => Ok(()),
        Err(e) => bail!("{what}: expected {want}, got {e}"),
        Ok(_) => bail!("{what}: expected {want}, but it succeeded"),
    }
}

/// In a forked child that is meant to die: SIGBUS would write a core file
/// where core dumps are on (RLIMIT_CORE 0 stops that), and the child must
/// not outlive a parent that is killed (PR_SET_PDEATHSIG).
fn no_core_dump_and_die_with_parent() {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass; prctl(PR_SET_PDEATHSIG)
    // takes a signal number. Both only affect this process.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}

fn no_name(say: &Narrator) -> Result<()> {
    let fd = ipc::create("memfd-demo")?;
    let link = ipc::fd_link(fd.as_fd());
    let st = fstat(&fd).context("fstat(memfd)")?;
    say.step(format!(
        "memfd_create(\"memfd-demo\", MFD_CLOEXEC|MFD_ALLOW_SEALING) = fd {}; \
         /proc/self/fd/{} → {link}; fstat: st_nlink = {}, size {}",
        fd.as_raw_fd(),
        fd.as_raw_fd(),
        st.st_nlink,
        st.st_size
    ));
    if !link.starts_with("/memfd:memfd-demo") || st.st_nlink != 0 {
        bail!(
            "expected a /memfd: link with no name (st_nlink 0), got {link}, {}",
            st.st_nlink
        );
    }
    say.step(
        "no directory holds it (st_nlink 0), so there is nothing to unlink and nothing in /dev/shm; \
         the name is only a label for /proc",
    );
    drop(fd); // close(2): the last reference, so the kernel frees it now
    Ok(())
}

fn seals(say: &Narrator) -> Result<()> {
    let (count, size) = (4, 64);
    let len = ipc::object_len(count, size).expect("small");
    let fd = ipc::create("memfd-demo")?;
    ftruncate(&fd, len as libc::off_t).context("ftruncate(memfd)")?;
    let mut map = Mapping::new(
        fd.as_fd(),
        len,
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
    )
    .context("mmap(memfd)")?;
    ipc::write_messages(map.bytes_mut(), count, size);
    say.step(format!(
        "ftruncate({len}) + mmap(PROT_READ|PROT_WRITE, MAP_SHARED): wrote {count} messages in place"
    ));
    expect_errno(
        "F_SEAL_WRITE with a writable mapping",
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE),
        ),
        Errno::EBUSY,
    )?;
    say.step(
        "F_ADD_SEALS(F_SEAL_WRITE) → EBUSY: a writable shared mapping still exists, so unmap first",
    );
    drop(map); // munmap(2)
    ipc::seal(fd.as_fd(), REQUIRED_SEALS | SealFlag::F_SEAL_SEAL)?;
    say.step(format!(
        "munmap, then F_ADD_SEALS; F_GET_SEALS = {}",
        ipc::names(ipc::seals(fd.as_fd())?)
    ));
    let fd_ = fd.as_fd();
    expect_errno("ftruncate smaller", ftruncate(fd_, 10), Errno::EPERM)?;
    expect_errno(
        "ftruncate larger",
        ftruncate(fd_, 2 * len as libc::off_t),
        Errno::EPERM,
    )?;
    expect_errno("write", write(fd_, b"x"), Errno::EPERM)?;
    expect_errno(
        "mmap(PROT_WRITE)",
        Mapping::new(fd_, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE).map(drop),
        Errno::EPERM,
    )?;
    expect_errno(
        "a new seal after F_SEAL_SEAL",
        nix::fcntl::fcntl(
            fd_,
            nix::fcntl::FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_FUTURE_WRITE),
        ),
        Errno::EPERM,
    )?;
    say.step(
        "then ftruncate smaller → EPERM, ftruncate larger → EPERM, write → EPERM, \
         mmap(PROT_WRITE, MAP_SHARED) → EPERM, F_ADD_SEALS → EPERM (F_SEAL_SEAL): \
         for us too, the owner; seals are never removed",
    );
    let (report, _, _) = ipc::read_sealed(fd_)?;
    say.step(format!("mmap(PROT_READ) still works: {report}"));
    Ok(())
}

/// A child maps a shm segment; the parent truncates it; the child's next
/// touch of the mapping is SIGBUS. Then the same truncation on a sealed
/// memfd fails with EPERM, and its readers are safe.
fn truncation(say: &Narrator) -> Result<()> {
    let name = format!("/{}", common::cleanup::unique_name("memfd-demo-shm"));
    let shm = shm_open(
        name.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .with_context(|| format!("shm_open({name})"))?;
    let _guard = ShmGuard::new(&name); // shm_unlink(3) on drop
    ftruncate(&shm, 4096).with_context(|| format!("ftruncate({name})"))?;
    let (go_r, go_w) = pipe().context("pipe")?;
    let (ready_r, ready_w) = pipe().context("pipe")?;
    // SAFETY: this process is single-threaded here (the story starts no
    // threads), so the child may run ordinary code until it exits.
    let child = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(go_w);
            drop(ready_r);
            no_core_dump_and_die_with_parent();
            let code = (|| -> Result<()> {
                let map = Mapping::new(shm.as_fd(), 4096, ProtFlags::PROT_READ)?;
                let _ = map.bytes()[0]; // fault the page in while it exists
                write(&ready_w, b"m")?;
                let mut b = [0u8; 1];
                read(&go_r, &mut b)?;
                // The object is 0 bytes now: this read has no page behind it.
                let byte = std::hint::black_box(map.bytes()[100]);
                write(&ready_w, &[byte])?;
                Ok(())
            })();
            // SAFETY: _exit ends the child without running the parent's
            // destructors (guards) a second time.
            unsafe { libc::_exit(if code.is_ok() { 0 } else { 1 }) };
        }
        ForkResult::Parent { child } => child,
    };
    drop(go_r);
    drop(ready_w);
    let mut b = [0u8; 1];
    ipc::wait_readable(
        ready_r.as_fd(),
        Duration::from_secs(30),
        "the child's mapping",
    )?;
    read(&ready_r, &mut b).context("read(child ready)")?;
    ftruncate(&shm, 0).with_context(|| format!("ftruncate({name}, 0)"))?;
    write(&go_w, b"g").context("write(go)")?;
    let exit = wait_pid(child, Duration::from_secs(30))?;
    say.step(format!(
        "shm_open({name}) 4096 bytes; a child maps it; the parent ftruncates it to 0; \
         the child reads its mapping: {} {exit}",
        child
    ));
    if exit != PeerExit::Killed(Signal::SIGBUS) {
        bail!("expected the child to be killed by SIGBUS, it {exit}");
    }
    say.step(
        "SIGBUS: the page under the mapping is gone. Whoever can open a shm segment can do this \
         to every reader of it",
    );
    let sealed = ipc::make_sealed(1, 64)?;
    expect_errno("ftruncate(sealed, 0)", ftruncate(&sealed, 0), Errno::EPERM)?;
    say.step("the same ftruncate(0) on a sealed memfd → EPERM: a reader of it cannot get SIGBUS this way");
    Ok(())
}

fn handoff(opts: &Options, say: &Narrator) -> Result<u64> {
    let dir = PrivateDir::create("memfd-demo")?; // mkdir 0700; removed on drop
    let path = dir.path().join("memfd.sock");
    let timeout = opts.timeout.as_secs().to_string();
    let mut receiver = Peer::spawn_self(&[
        "receiver".as_ref(),
        "--path".as_ref(),
        path.as_os_str(),
        "--timeout".as_ref(),
        timeout.as_ref(),
        "--no-summary".as_ref(),
    ])?;
    say.step(format!(
        "started a receiver process (pid {}): it has no descriptor of ours, only the socket path",
        receiver.pid()
    ));
    let sender = say.with_role("sender");
    let errors = ipc::sender(&path, opts.count, opts.size, opts.timeout, &sender)?;
    let exit = receiver.wait(Some(opts.timeout))?;
    if !exit.success() {
        bail!("the receiver (pid {}) {exit}", receiver.pid());
    }
    say.step(
        "the memory never had a name: it went from our descriptor to the receiver's, and was \
         freed when the last descriptor closed",
    );
    Ok(errors)
}

fn refusals(say: &Narrator) -> Result<()> {
    let unsealed = ipc::create("memfd-demo")?;
    let len = ipc::object_len(2, 64).expect("small");
    ftruncate(&unsealed, len as libc::off_t).context("ftruncate")?;
    let Err(why) = ipc::check_seals(unsealed.as_fd()) else {
        bail!("an unsealed object passed the receiver's check");
    };
    say.step(format!("an unsealed memfd: {why}"));
    // Sealed, but its header claims more than it holds.
    let liar = ipc::create("memfd-demo")?;
    ftruncate(&liar, len as libc::off_t).context("ftruncate")?;
    {
        let mut map = Mapping::new(
            liar.as_fd(),
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        )?;
        ipc::write_messages(map.bytes_mut(), 2, 64);
        map.bytes_mut()[8..16].copy_from_slice(&3u64.to_le_bytes());
    } // munmap(2)
    ipc::seal(liar.as_fd(), REQUIRED_SEALS)?;
    ipc::check_seals(liar.as_fd())?;
    let Err(why) = ipc::read_sealed(liar.as_fd()) else {
        bail!("an object smaller than its header says passed the receiver's check");
    };
    say.step(format!(
        "sealed, but the header says 3 messages in room for 2: {why}"
    ));
    say.step("both refused before a message is read: the size is fstat's, not the peer's word");
    Ok(())
}

fn future_write(say: &Narrator) -> Result<()> {
    let fd = ipc::create("memfd-demo")?;
    ftruncate(&fd, 4096).context("ftruncate")?;
    let mut mine = Mapping::new(
        fd.as_fd(),
        4096,
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
    )?;
    mine.bytes_mut()[..6].copy_from_slice(b"before");
    match nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_FUTURE_WRITE),
    ) {
        Ok(_) => {}
        Err(Errno::EINVAL) => {
            say.step(
                "F_SEAL_FUTURE_WRITE is not known to this kernel (it came in Linux 5.1): skipped",
            );
            return Ok(());
        }
        Err(e) => return Err(e).context("fcntl(F_ADD_SEALS, F_SEAL_FUTURE_WRITE)"),
    }
    let fd_: BorrowedFd<'_> = fd.as_fd();
    expect_errno(
        "a new mmap(PROT_WRITE)",
        Mapping::new(fd_, 4096, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE).map(drop),
        Errno::EPERM,
    )?;
    expect_errno("write", write(fd_, b"x"), Errno::EPERM)?;
    mine.bytes_mut()[..6].copy_from_slice(b"after!");
    let mut seen = [0u8; 6];
    pread(fd_, &mut seen, 0).context("pread")?;
    say.step(format!(
        "with a writable mapping open, F_ADD_SEALS(F_SEAL_FUTURE_WRITE): a new writable mmap → EPERM, \
         write → EPERM, yet our old mapping still writes: pread sees {:?}",
        String::from_utf8_lossy(&seen)
    ));
    if &seen != b"after!" {
        bail!("the owner's mapping should still write, pread saw {seen:?}");
    }
    say.step(
        "so a producer can keep filling a buffer that consumers can only read; but a consumer then \
         cannot trust bytes to stay put while it reads them, which is why our receiver wants F_SEAL_WRITE",
    );
    Ok(())
}

fn sigkill(say: &Narrator) -> Result<()> {
    let (ready_r, ready_w) = pipe().context("pipe")?;
    // SAFETY: single-threaded here (see `truncation`).
    let child = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(ready_r);
            no_core_dump_and_die_with_parent();
            let code = (|| -> Result<()> {
                let fd = ipc::create("memfd-demo-victim")?;
                ftruncate(&fd, 1 << 20)?;
                let mut map = Mapping::new(
                    fd.as_fd(),
                    1 << 20,
                    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                )?;
                map.bytes_mut().fill(7); // really allocate the pages
                write(&ready_w, &(fd.as_raw_fd() as u32).to_le_bytes())?;
                loop {
                    // Wait to be killed; bounded by the parent's SIGKILL.
                    std::thread::sleep(Duration::from_secs(1));
                }
            })();
            // SAFETY: as in `truncation`.
            unsafe { libc::_exit(if code.is_ok() { 0 } else { 1 }) };
        }
        ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    let mut raw = [0u8; 4];
    let got = ipc::wait_readable(
        ready_r.as_fd(),
        Duration::from_secs(30),
        "the child's memfd",
    )
    .and_then(|()| read(&ready_r, &mut raw).context("read"));
    if got.as_ref().is_ok_and(|&n| n == 4) {
        let fd = u32::from_le_bytes(raw);
        let link = std::fs::read_link(format!("/proc/{child}/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        say.step(format!(
            "a child (pid {child}) made a 1 MiB memfd and touched every page: /proc/{child}/fd/{fd} → {link}"
        ));
        if !link.starts_with("/memfd:memfd-demo-victim") {
            let _ = kill(child, Signal::SIGKILL);
            let _ = wait_pid(child, Duration::from_secs(30));
            bail!("expected /proc/{child}/fd/{fd} to be a memfd, it is {link:?}");
        }
    }
    let _ = kill(child, Signal::SIGKILL);
    let exit = wait_pid(child, Duration::from_secs(30))?;
    got?;
    say.step(format!(
        "kill(SIGKILL): it {exit}, ran no destructor and removed nothing, yet nothing is left: \
         the memory went with its last descriptor, and it never had a name in /dev/shm"
    ));
    Ok(())
}
