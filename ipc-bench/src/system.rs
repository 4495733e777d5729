//! What the numbers depend on besides the mechanism: the CPU time each
//! process spends, which CPUs the two processes run on, and the machine
//! and kernel settings, printed with every report.

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{Context, Result};
use nix::errno::Errno;

/// User and system CPU time of one process, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user_us: u64,
    pub sys_us: u64,
}

impl CpuTime {
    /// This process's CPU time so far (getrusage(RUSAGE_SELF)). The kernel
    /// keeps the sum exact (scheduler runtime) and splits it between user
    /// and system by the ticks it sampled, so read the sum, not the split,
    /// for short intervals.
    pub fn now() -> CpuTime {
        // SAFETY: rusage is plain data; getrusage fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid out-pointer.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        CpuTime {
            user_us: us(usage.ru_utime),
            sys_us: us(usage.ru_stime),
        }
    }

    /// What was spent since `earlier`.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_us: self.user_us.saturating_sub(earlier.user_us),
            sys_us: self.sys_us.saturating_sub(earlier.sys_us),
        }
    }

    pub fn plus(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user_us: self.user_us + other.user_us,
            sys_us: self.sys_us + other.sys_us,
        }
    }

    pub fn total_us(self) -> u64 {
        self.user_us + self.sys_us
    }

    /// Sent by a forked child to its parent over a pipe.
    pub fn send(self, fd: &OwnedFd) -> Result<()> {
        send_words(fd, &[self.user_us, self.sys_us])
    }

    /// What the child sent, or None if it sent nothing (it failed first).
    pub fn receive(fd: &OwnedFd) -> Result<Option<CpuTime>> {
        Ok(receive_words(fd, 2)?.map(|w| CpuTime {
            user_us: w[0],
            sys_us: w[1],
        }))
    }
}

/// Figures a forked child hands its parent: u64s, little-endian, over a
/// pipe (one write of at most a few words: atomic, under PIPE_BUF).
pub fn send_words(fd: &OwnedFd, words: &[u64]) -> Result<()> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    loop {
        match nix::unistd::write(fd.as_fd(), &bytes) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) => anyhow::bail!("write(result pipe): short write"),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("write(result pipe)"),
        }
    }
}

/// `n` words from the child, or None if it closed the pipe without
/// sending them (it failed first).
pub fn receive_words(fd: &OwnedFd, n: usize) -> Result<Option<Vec<u64>>> {
    let mut bytes = vec![0u8; 8 * n];
    let mut got = 0;
    while got < bytes.len() {
        match nix::unistd::read(fd.as_fd(), &mut bytes[got..]) {
            Ok(0) => return Ok(None),
            Ok(k) => got += k,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("read(result pipe)"),
        }
    }
    Ok(Some(
        bytes
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    ))
}

/// The CPU time of both processes over a timed part.
#[derive(Debug, Clone, Copy, Default)]
pub struct BothCpu {
    /// The parent (receiver of a throughput cell, pinger of a round trip).
    pub parent: CpuTime,
    /// The forked child (sender, echo).
    pub child: CpuTime,
}

impl BothCpu {
    pub fn total(&self) -> CpuTime {
        self.parent.plus(self.child)
    }

    /// Nanoseconds of CPU (user + system, both processes) per event.
    pub fn ns_per(&self, events: u64) -> f64 {
        self.total().total_us() as f64 * 1e3 / events.max(1) as f64
    }
}

// ---------------------------------------------------------------------------
// Pinning the two processes to two CPUs
// ---------------------------------------------------------------------------

/// Where the two processes of a measurement run.
#[derive(Debug, Clone)]
pub enum Pinning {
    /// The parent on `parent`, every forked child on `child`.
    Pinned {
        parent: usize,
        child: usize,
        /// Our affinity before pinning, restored for the C reference (its
        /// child would inherit ours, and share our CPU).
        all: Vec<usize>,
    },
    /// Left to the scheduler, and why.
    Unpinned(String),
}

fn affinity() -> Result<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is an empty set; sched_getaffinity
    // fills at most size_of::<cpu_set_t>() bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        Errno::result(libc::sched_getaffinity(
            0,
            size_of::<libc::cpu_set_t>(),
            &mut set,
        ))
        .context("sched_getaffinity")?;
        Ok(set)
    }
}

fn set_affinity(set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    Errno::result(unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) })
        .context("sched_setaffinity")?;
    Ok(())
}

fn set_of(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is an empty set; CPU_SET writes
    // inside it (every cpu came from CPU_ISSET below CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        set
    }
}

fn only(cpu: usize) -> libc::cpu_set_t {
    set_of(&[cpu])
}

impl Pinning {
    /// Pin this process to the first CPU we may use and plan the second
    /// for the children; unpinned (with the reason) if `wanted` is false
    /// or fewer than two CPUs are allowed.
    pub fn choose(wanted: bool) -> Pinning {
        if !wanted {
            return Pinning::Unpinned("not pinned: --no-pin".into());
        }
        let all = match affinity() {
            Ok(set) => set,
            Err(e) => return Pinning::Unpinned(format!("not pinned: {e:#}")),
        };
        // SAFETY: CPU_ISSET reads inside the set for i < CPU_SETSIZE.
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&i| unsafe { libc::CPU_ISSET(i, &all) })
            .collect();
        if cpus.len() < 2 {
            return Pinning::Unpinned(format!(
                "not pinned: this process may run on {} CPU(s) only ({}), so both processes share it",
                cpus.len(),
                cpus.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        let (parent, child) = (cpus[0], cpus[1]);
        if let Err(e) = set_affinity(&only(parent)) {
            return Pinning::Unpinned(format!("not pinned: {e:#}"));
        }
        Pinning::Pinned {
            parent,
            child,
            all: cpus,
        }
    }

    /// In a forked child: move to the child's CPU. A failure leaves the
    /// child where it is (it shares the parent's CPU), which the report
    /// cannot see, so it is an error.
    pub fn child(&self) -> Result<()> {
        match self {
            Pinning::Pinned { child, .. } => set_affinity(&only(*child)),
            Pinning::Unpinned(_) => Ok(()),
        }
    }

    /// Run `f` with our original affinity (for code that forks its own
    /// child and does not pin it).
    pub fn unpinned_for<T>(&self, f: impl FnOnce() -> T) -> T {
        match self {
            Pinning::Pinned { parent, all, .. } => {
                let _ = set_affinity(&set_of(all));
                let out = f();
                let _ = set_affinity(&only(*parent));
                out
            }
            Pinning::Unpinned(_) => f(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Pinning::Pinned { parent, child, .. } => format!(
                "pinned: the parent on CPU {parent}, each forked child on CPU {child} \
                 (sched_setaffinity); c/reference.c's processes are not pinned, the C twins \
                 of the shared-memory rows pin theirs as the Rust cells do"
            ),
            Pinning::Unpinned(why) => why.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------

fn first_line(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// (name, value) of what the figures depend on besides the mechanisms'
/// own limits: kernel, CPU, CPUs, load, scheduler and memory knobs, the
/// clock source and the CPU's mitigations (they set a system call's cost).
pub fn system_info() -> Vec<(String, String)> {
    let mut info: Vec<(String, String)> = Vec::new();
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname.as_ref().map_or("unknown".into(), |u| {
        format!(
            "{} {} {}",
            u.sysname().to_string_lossy(),
            u.release().to_string_lossy(),
            u.version().to_string_lossy()
        )
    });
    info.push(("kernel".into(), kernel));
    info.push(("CPU model".into(), crate::output::cpu_model()));
    // SAFETY: sysconf takes no pointers.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    info.push(("CPUs online".into(), online.to_string()));
    let allowed = std::thread::available_parallelism().map_or(0, |n| n.get());
    info.push((
        "nproc (CPUs this process may use)".into(),
        allowed.to_string(),
    ));
    if let Some(load) = first_line("/proc/loadavg") {
        info.push(("load average at the start (/proc/loadavg)".into(), load));
    }
    let mut sched: Vec<String> = std::fs::read_dir("/proc/sys/kernel")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    n.starts_with("sched_") || n == "numa_balancing" || n == "timer_migration"
                })
                .collect()
        })
        .unwrap_or_default();
    sched.sort();
    for name in sched {
        if let Some(v) = first_line(&format!("/proc/sys/kernel/{name}")) {
            info.push((format!("kernel.{name}"), v));
        }
    }
    for name in ["overcommit_memory", "swappiness", "max_map_count"] {
        if let Some(v) = first_line(&format!("/proc/sys/vm/{name}")) {
            info.push((format!("vm.{name}"), v));
        }
    }
    for (name, path) in [
        (
            "transparent hugepages",
            "/sys/kernel/mm/transparent_hugepage/enabled",
        ),
        (
            "transparent hugepages, shmem",
            "/sys/kernel/mm/transparent_hugepage/shmem_enabled",
        ),
        (
            "clock source",
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        ),
        (
            "cpufreq governor (cpu0)",
            "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
        ),
    ] {
        info.push((
            name.into(),
            first_line(path).unwrap_or_else(|| "not available".into()),
        ));
    }
    // Mitigations make every system call dearer (page-table switches,
    // buffer clears): list the ones the kernel has on.
    let mut mitigations: Vec<String> = std::fs::read_dir("/sys/devices/system/cpu/vulnerabilities")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let state = first_line(&e.path().to_string_lossy())?;
                    (!state.starts_with("Not affected")).then(|| format!("{name}: {state}"))
                })
                .collect()
        })
        .unwrap_or_default();
    mitigations.sort();
    info.push((
        "CPU vulnerabilities not \"Not affected\"".into(),
        if mitigations.is_empty() {
            "none listed".into()
        } else {
            mitigations.join("; ")
        },
    ));
    info
}

static PINNING: std::sync::OnceLock<Pinning> = std::sync::OnceLock::new();

/// Decide once, at the start of the run.
pub fn set_pinning(pinning: Pinning) {
    let _ = PINNING.set(pinning);
}

/// What was decided (unpinned if nothing was).
pub fn pinning() -> &'static Pinning {
    PINNING.get_or_init(|| Pinning::Unpinned("not pinned".into()))
}
