//! What is not the mechanism: names and descriptions of signals for the
//! narration, the tour's parent <-> child plumbing (fork, and two pipes to
//! say "ready" and "go"), looking at /proc for zombies, and the helpers
//! that raise real hardware faults. A first reading may skip this file.

use std::fs::File;
use std::io::Write;
use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::report::Narrator;
use nix::fcntl::{OFlag, open};
use nix::sys::mman::{MapFlags, ProtFlags, mmap};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Pid, fork, ftruncate, pipe2};

use crate::ipc::{Record, read_retrying, readable};

/// How long the tour waits for any one thing a child should do promptly.
pub const PROMPTLY: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

pub fn name(signo: libc::c_int) -> String {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if (min..=max).contains(&signo) {
        return if signo == min {
            "SIGRTMIN".into()
        } else {
            format!("SIGRTMIN+{}", signo - min)
        };
    }
    Signal::try_from(signo).map_or(format!("signal {signo}"), |s| s.as_str().to_string())
}

/// Where a signal came from, from its si_code.
pub fn origin(signo: i32, code: i32) -> &'static str {
    if signo == libc::SIGCHLD {
        return match code {
            libc::CLD_EXITED => "a child that exited (CLD_EXITED)",
            libc::CLD_KILLED => "a child killed by a signal (CLD_KILLED)",
            libc::CLD_DUMPED => "a child that dumped core (CLD_DUMPED)",
            _ => "a child that stopped or continued",
        };
    }
    match code {
        libc::SI_USER => "kill (SI_USER)",
        libc::SI_QUEUE => "sigqueue (SI_QUEUE)",
        libc::SI_TIMER => "a POSIX timer (SI_TIMER)",
        libc::SI_MESGQ => "a message queue (SI_MESGQ)",
        libc::SI_TKILL => "tkill/raise (SI_TKILL)",
        libc::SI_KERNEL => "the kernel (SI_KERNEL): a terminal key or a timer",
        _ => "the kernel, for a reason of its own",
    }
}

pub fn describe(r: &Record) -> String {
    let mut line = format!(
        "{} ({}) from pid {} uid {}, via {}",
        name(r.signo),
        r.signo,
        r.pid,
        r.uid,
        origin(r.signo, r.code)
    );
    if r.code == libc::SI_QUEUE {
        line.push_str(&format!(", value {}", r.value));
    }
    line
}

pub fn sigpending_limit() -> String {
    match sigpending_rlimit() {
        None => "unknown".into(),
        Some(libc::RLIM_INFINITY) => "unlimited".into(),
        Some(n) => n.to_string(),
    }
}

/// RLIMIT_SIGPENDING's soft limit (`ulimit -i`), if getrlimit answers.
pub fn sigpending_rlimit() -> Option<libc::rlim_t> {
    // SAFETY: getrlimit fills the struct we pass.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid resource and a valid pointer.
    (unsafe { libc::getrlimit(libc::RLIMIT_SIGPENDING, &mut limit) } == 0).then_some(limit.rlim_cur)
}
// ---------------------------------------------------------------------------
// Parent ↔ child: two pipes to say "ready" and "go"
// ---------------------------------------------------------------------------

/// One end of a two-way byte channel between the tour's parent and child.
pub struct Link {
    pub to: File,
    pub from: File,
}

/// Make the two pipes before fork; each side then takes its `Link`.
pub fn link_pair() -> Result<(Link, Link)> {
    let (a_read, a_write) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let (b_read, b_write) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    Ok((
        Link {
            to: File::from(a_write),
            from: File::from(b_read),
        },
        Link {
            to: File::from(b_write),
            from: File::from(a_read),
        },
    ))
}

impl Link {
    pub fn tell(&mut self, tag: u8) -> Result<()> {
        self.to.write_all(&[tag]).context("write(link)")
    }

    /// Wait for `tag`, at most PROMPTLY.
    pub fn hear(&mut self, tag: u8) -> Result<()> {
        if !readable(&self.from, PROMPTLY)? {
            bail!(
                "no word from the other process within {PROMPTLY:?} (waiting for {:?})",
                tag as char
            );
        }
        let mut got = [0u8];
        read_retrying(&mut self.from, &mut got).context("the other process closed the link")?;
        if got[0] != tag {
            bail!(
                "expected {:?} from the other process, got {:?}",
                tag as char,
                got[0] as char
            );
        }
        Ok(())
    }
}

/// Fork a child that runs `body` (as "[child]") with its end of a new
/// link and exits 0 or 1; returns its pid and our end.
pub fn fork_with_link(
    say: &Narrator,
    body: fn(&mut Link, &Narrator) -> Result<()>,
) -> Result<(Pid, Link)> {
    let (parent_side, mut child_side) = link_pair()?;
    // SAFETY: signal-demo is single-threaded: the child may call anything.
    match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop(parent_side);
            let say = say.with_role("child");
            let code = match body(&mut child_side, &say) {
                Ok(()) => 0,
                Err(e) => {
                    say.step(format!("error: {e:#}"));
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(child_side);
            Ok((child, parent_side))
        }
    }
}
pub fn proc_state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Our children in state Z, from /proc/*/stat (field 4 is the parent pid).
pub fn zombie_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let mut fields = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace())
                .into_iter()
                .flatten();
            let state = fields.next();
            let ppid = fields.next();
            state == Some("Z") && ppid == Some(me.as_str())
        })
        .collect()
}

/// Load from address 0, in assembly: a null read in Rust would be undefined
/// behaviour the compiler may remove; the CPU's page fault is what we want.
pub fn read_address_zero() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: deliberately faults; this child process dies of SIGSEGV here.
    unsafe {
        std::arch::asm!("mov {v}, qword ptr [{a}]", a = in(reg) 0usize, v = out(reg) _, options(nostack, readonly));
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: raise takes no pointers.
    unsafe {
        libc::raise(libc::SIGSEGV);
    }
}

/// Divide by zero with the CPU's `idiv`: Rust's own `/` checks for zero and
/// panics before the CPU could trap.
pub fn divide_by_zero() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: deliberately traps (#DE); this child process dies of SIGFPE.
    unsafe {
        std::arch::asm!(
            "cqo",
            "idiv {d}",
            d = in(reg) 0i64,
            inout("rax") 1i64 => _,
            out("rdx") _,
            options(nostack, nomem)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: raise takes no pointers.
    unsafe {
        libc::raise(libc::SIGFPE);
    }
}

/// Step 13, in a child that is meant to die: map two pages of a file,
/// shrink the file to one page under the mapping, then read the second
/// page. The mapping is still there (no SIGSEGV), but no file page is
/// behind it: the kernel sends SIGBUS.
pub fn touch_past_the_end(say: &Narrator) -> Result<()> {
    // No core file for a death on purpose (RLIMIT_CORE 0), and no child
    // that outlives a parent killed meanwhile (PR_SET_PDEATHSIG).
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid resource and rlimit; prctl takes plain integers.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    // SAFETY: sysconf takes no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    // O_TMPFILE: a file with no name in the temp directory's filesystem,
    // so nothing is left behind whatever happens; it goes with its last fd.
    let file = open(
        &std::env::temp_dir(),
        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .context("open(O_TMPFILE) in the temp directory")?;
    ftruncate(&file, 2 * page as libc::off_t).context("ftruncate(2 pages)")?;
    let len = NonZeroUsize::new(2 * page).context("page size")?;
    // SAFETY: a new shared mapping of our own file; nothing else uses it.
    let base = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            &file,
            0,
        )
    }
    .context("mmap")?
    .cast::<u8>();
    // SAFETY: offset `page` is inside the 2-page mapping, backed by the file.
    unsafe { base.add(page).write_volatile(1) };
    say.step(format!(
        "open(O_TMPFILE), ftruncate to 2 pages ({} bytes), mmap(MAP_SHARED) both, write to page \
         2: fine; now ftruncate(1 page) under the mapping, and read page 2",
        2 * page
    ));
    ftruncate(&file, page as libc::off_t).context("ftruncate(1 page)")?;
    // SAFETY: deliberately faults: the address is mapped, but the file no
    // longer has a page there; this child dies of SIGBUS here.
    let byte = unsafe { base.add(page).read_volatile() };
    bail!("read page 2 after the truncation without SIGBUS (got {byte})")
}
