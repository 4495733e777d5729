//! # ipc-bench: every mechanism, one workload, one table
//!
//! Throughput (one way, sender and receiver in separate processes) at
//! several message sizes, round-trip latency of 64-byte messages, and the
//! CPU time both processes spend per message and per round trip, for
//! every mechanism the demos show; then what a receiver that waits for
//! nothing costs under each waiting strategy of the shared-memory rings
//! (spin, spin then yield, spin then futex, semaphores; a pipe for
//! reference). Every message received is checked with
//! `common::payload` — a wrong byte aborts the run — so nothing is fast
//! because it is wrong. Reference rows measured in the same run put the
//! numbers in proportion: `memcpy` bandwidth, the cost of generating and
//! checking the payload itself, and a raw shared-memory spin ping-pong.
//!
//! Every measurement is warmed up first (untimed messages, then a pause
//! for the channel to drain), so the first touch of a fresh ring's pages
//! is not timed; each throughput is the median of its runs, shown with the
//! lowest and highest; the two processes are pinned to two CPUs where
//! there are two (`--no-pin`: not); the output states how each mechanism
//! is set up, the kernel limits it depends on, and the machine: kernel,
//! CPU, CPUs, load, scheduler and memory knobs.
//!
//! ```text
//! cargo run --release -p ipc-bench                       # two to three minutes on 2 cores
//! cargo run --release -p ipc-bench -- --quick --json out.json --svg chart.svg
//! cargo run --release -p ipc-bench -- --mechanisms pipe,shm-spsc --sizes 64,65536
//! ipc-bench/regenerate-docs.sh                           # every figure in the docs
//! ```
//!
//! Progress goes to stderr, the Markdown tables to stdout.

mod ctwins;
mod docs;
mod files;
mod output;
mod stale;
mod system;
mod transport;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{PrivateDir, stop_on_signals, unique_name};
use common::cli::Args;
use common::error::{self, usage};
use common::payload::{self, Checker, Verdict};
use common::peer::{PidWatch, wait_pid};
use nix::fcntl::OFlag;
use nix::unistd::{ForkResult, Pid, fork, getppid, pipe2, read, write};

use system::{BothCpu, CpuTime};
use transport::{ALL, Channel, Mech, Msg};

const USAGE: &str = "\
ipc-bench: one benchmark for every IPC mechanism

USAGE:
    ipc-bench [--mechanisms LIST] [--sizes LIST] [--count N] [--rounds N]
              [--quick] [--no-pin] [--json PATH] [--svg PATH]
    ipc-bench --docs ROOT [--quick]

OPTIONS:
    --mechanisms LIST  comma-separated, from: pipe, fifo, unix-stream, unix-dgram,
                       sysv-msg, posix-mq, shm-sem, shm-futex, shm-futex-yield,
                       shm-futex-spin, shm-memfd, shm-spsc, tcp, signal, eventfd
                       (default: all)
    --sizes LIST       message sizes in bytes, comma-separated, 1 to 16777216
                       (default: 64,4096,65536,1048576)
    --count N          messages per throughput measurement, 2 or more (default:
                       64 MiB worth, at least 16 and at most 200000; --quick: 2 MiB
                       worth); timed from the first to the last, after the warm-up
    --rounds N         round trips per latency measurement (default 20000; --quick 500)
    --quick            a short run with every row (7 s on two idle CPUs; about
                       20 s on one, where the spinning rows share it)
    --no-pin           leave both processes to the scheduler (default: the parent
                       on one CPU, its forked child on another, where two exist)
    --json PATH        also write the results as JSON
    --svg PATH         also draw them as an SVG chart
    --docs ROOT        regenerate the repository's figures from this run:
                       ROOT/docs/bench-results.md, bench.json, bench.svg,
                       bench-waiting.svg, and the marked (<!-- bench:begin/end -->)
                       parts of README.md, docs/README.zh-CN.md and docs/comparison.md
    -h, --help         this text

Every throughput cell first moves untimed warm-up messages (twice what the
channel holds, at least 16), so no first-touch page fault is timed; round
trips warm up too. Objects a killed run left (System V queues keyed
0x69PPPPPS, /dev/mqueue/ipc-bench-PID-N, <tmp>/ipc-bench-PID-N, and the
IPC_PRIVATE queues recorded there when another user held those keys) are
removed by the next run if they are ours and PID is gone. Output files are written
to a temporary file and renamed into place; a symlink at PATH is refused.

Each throughput is the median of 3 runs (1 with --quick), shown with the lowest
and highest; each round trip gives p50, p99 and p99.9. CPU time is
user + system of both processes over the timed part (getrusage). The idle
section shows what a receiver that waits for nothing costs (2 s; --quick 0.5 s).
Every report names the kernel, the CPU, the CPUs used and the kernel knobs.

Build with --release for meaningful numbers; a debug build says so in its output.
";

/// Largest message size accepted.
pub const MAX_SIZE: usize = 16 * 1024 * 1024;
/// How long one measurement may take before it counts as a hang.
const CELL_DEADLINE: Duration = Duration::from_secs(300);
/// The round-trip message size.
const PING_SIZE: usize = 64;

fn main() -> ExitCode {
    error::run("ipc-bench", run)
}

#[derive(Debug)]
pub struct Config {
    pub mechs: Vec<Mech>,
    pub sizes: Vec<usize>,
    count: Option<u64>,
    budget: u64,
    rounds: u64,
    warmup: u64,
    /// Throughput runs per cell; the median counts, with the lowest and
    /// highest beside it.
    pub repeats: u32,
    /// Pin the two processes to two CPUs (--no-pin: do not).
    pin: bool,
    /// How long an idle receiver waits for nothing.
    pub idle: Duration,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
    /// --docs ROOT: rewrite the repository's figures from this run.
    docs: Option<PathBuf>,
    pub quick: bool,
    pub command: String,
}

/// One throughput measurement.
#[derive(Debug, Clone)]
pub enum Cell {
    Measured {
        messages: u64,
        bytes: u64,
        seconds: f64,
        /// Untimed messages sent first.
        warm: u64,
        /// Page faults the receiver took while timed (first touches of a
        /// ring would show here; the warm-up keeps it near 0).
        faults: u64,
        note: Option<String>,
        /// CPU time of both processes over the timed messages.
        cpu: Option<BothCpu>,
        /// Lowest and highest msg/s of the runs this one is the median of,
        /// and how many runs there were.
        spread: (f64, f64),
        runs: u32,
    },
    NotApplicable(String),
}

impl Cell {
    pub fn mb_per_s(&self) -> Option<f64> {
        match self {
            Cell::Measured { bytes, seconds, .. } => Some(*bytes as f64 / seconds.max(1e-9) / 1e6),
            Cell::NotApplicable(_) => None,
        }
    }

    pub fn msg_per_s(&self) -> Option<f64> {
        match self {
            Cell::Measured {
                messages, seconds, ..
            } => Some(*messages as f64 / seconds.max(1e-9)),
            Cell::NotApplicable(_) => None,
        }
    }

    /// Nanoseconds of CPU (user + system, both processes) per message.
    pub fn cpu_ns(&self) -> Option<f64> {
        match self {
            Cell::Measured {
                messages,
                cpu: Some(cpu),
                ..
            } => Some(cpu.ns_per(*messages)),
            _ => None,
        }
    }

    /// (lowest, highest) MB/s over the runs.
    pub fn mb_range(&self) -> Option<(f64, f64)> {
        match self {
            Cell::Measured {
                messages,
                bytes,
                spread: (lo, hi),
                ..
            } => {
                let per = *bytes as f64 / (*messages).max(1) as f64 / 1e6;
                Some((lo * per, hi * per))
            }
            Cell::NotApplicable(_) => None,
        }
    }

    /// The median of `runs` by msg/s, carrying the lowest and highest.
    fn median_of(mut runs: Vec<Cell>) -> Option<Cell> {
        let rate = |c: &Cell| c.msg_per_s().unwrap_or(0.0);
        runs.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
        let (lo, hi) = (rate(runs.first()?), rate(runs.last()?));
        let n = runs.len() as u32;
        let mut median = runs.swap_remove((runs.len() - 1) / 2);
        if let Cell::Measured { spread, runs, .. } = &mut median {
            *spread = (lo, hi);
            *runs = n;
        }
        Some(median)
    }
}

/// Round-trip times in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    pub rounds: u64,
    /// Untimed round trips before them.
    pub warmup: u64,
    /// Page faults of the timing process during the timed rounds.
    pub faults: u64,
    pub median: u64,
    pub p99: u64,
    pub p999: u64,
    /// CPU time of both processes over the timed rounds.
    pub cpu: Option<BothCpu>,
}

impl Latency {
    /// Nanoseconds of CPU (user + system, both processes) per round trip.
    pub fn cpu_ns(&self) -> Option<f64> {
        self.cpu.map(|c| c.ns_per(self.rounds))
    }
}

impl Latency {
    /// Percentiles of the per-round-trip times (all samples kept, sorted:
    /// the histogram at one-nanosecond resolution).
    fn from_samples(mut samples: Vec<u64>, warmup: u64) -> Latency {
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        Latency {
            rounds: samples.len() as u64,
            warmup,
            faults: 0,
            median: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            cpu: None,
        }
    }
}

/// A receiver that waited for nothing.
#[derive(Debug, Clone)]
pub struct Idle {
    pub mech: Mech,
    /// How long it waited, by its own clock.
    pub seconds: f64,
    pub cpu: CpuTime,
}

impl Idle {
    /// Percent of one CPU.
    pub fn percent(&self) -> f64 {
        self.cpu.total_us() as f64 / 1e4 / self.seconds.max(1e-9)
    }
}

#[derive(Debug)]
pub struct Results {
    pub throughput: Vec<(Mech, Vec<(usize, Cell)>)>,
    /// (mechanism, size, Rust MB/s, C MB/s) where the C reference carries it.
    pub versus_c: Vec<(Mech, usize, f64, f64)>,
    pub latency: Vec<(Mech, Latency)>,
    pub memcpy: Vec<(usize, f64)>,
    pub check: Vec<(usize, f64)>,
    pub spin: Latency,
    /// (name, value) of every kernel limit a configuration depends on.
    pub limits: Vec<(&'static str, String)>,
    /// (name, value): kernel, CPU, CPUs, load, scheduler and memory knobs.
    pub system: Vec<(String, String)>,
    /// Where the two processes ran.
    pub pinning: String,
    /// What a receiver waiting for nothing costs, per waiting strategy.
    pub idle: Vec<Idle>,
    /// How long the measurements took.
    pub seconds: f64,
}

fn run() -> Result<()> {
    let config = parse()?;
    MAIN_PID.get_or_init(Pid::this);
    stop_on_signals()?;
    // Refuse a bad output path now, not after a minute of measuring.
    for path in config.json.iter().chain(&config.svg) {
        files::check_target(path)?;
    }
    if let Some(root) = &config.docs {
        docs::check(root)?;
    }
    // Before making anything: remove what runs killed by SIGKILL left.
    for line in stale::clean_up(&common::cleanup::runtime_dir()) {
        progress(&line);
    }
    let dir = PrivateDir::create("ipc-bench")?;
    if cfg!(debug_assertions) {
        progress("a debug build: numbers are far below what the mechanisms can do; use --release");
    }
    // Read before we load the machine ourselves (the load average).
    let system = system::system_info();
    system::set_pinning(system::Pinning::choose(config.pin));
    progress(&system::pinning().describe());
    let started = Instant::now();

    progress("reference: memcpy and payload fill+check bandwidth");
    let mut memcpy = Vec::new();
    let mut check = Vec::new();
    for &size in &config.sizes {
        memcpy.push((size, memcpy_bandwidth(size, config.budget)));
        check.push((size, check_bandwidth(size, config.budget / 4)));
    }
    progress("reference: raw shared-memory spin ping-pong");
    let spin = spin_ping_pong(config.rounds, config.warmup)?;

    let mut throughput = Vec::new();
    let mut versus_c = Vec::new();
    let mut latency = Vec::new();
    for &mech in &config.mechs {
        let mut row = Vec::new();
        for &size in &config.sizes {
            // The median of `repeats`, Rust and C taking turns: one run on
            // a busy 2-core machine can land both processes on one CPU or
            // not; the median with the lowest and highest shows how much
            // that moved the figure.
            let count = config
                .count
                .unwrap_or_else(|| messages_for(size, config.budget));
            let mut runs = Vec::new();
            let mut c_runs: Vec<f64> = Vec::new();
            let na = not_measured(mech, size, size == config.sizes[0]);
            if na.is_none() {
                for _ in 0..config.repeats {
                    let run = throughput_cell(mech, size, count, &dir)
                        .with_context(|| format!("{} at {size} bytes", mech.name()))?;
                    if let Some(count) = cell_count(mech, &run)
                        && let Some(c) = c_reference(mech, size, count)?
                    {
                        c_runs.push(c);
                    }
                    let not_applicable = matches!(run, Cell::NotApplicable(_));
                    runs.push(run);
                    if not_applicable {
                        break;
                    }
                }
            }
            let cell = match na {
                Some(why) => Cell::NotApplicable(why),
                None => Cell::median_of(runs).expect("at least one run"),
            };
            let c_median = (!c_runs.is_empty()).then(|| {
                c_runs.sort_by(f64::total_cmp);
                c_runs[(c_runs.len() - 1) / 2]
            });
            match &cell {
                Cell::Measured { .. } => progress(&format!(
                    "{:<12} {:>8}: {:>10.1} MB/s {:>12.0} msg/s, CPU {}/msg",
                    mech.name(),
                    output::size_label(size),
                    cell.mb_per_s().unwrap_or(0.0),
                    cell.msg_per_s().unwrap_or(0.0),
                    cell.cpu_ns().map_or("?".into(), output::cpu_label)
                )),
                Cell::NotApplicable(why) => progress(&format!(
                    "{:<12} {:>8}: {why}",
                    mech.name(),
                    output::size_label(size)
                )),
            }
            if let (Some(rust), Some(c)) = (cell.mb_per_s(), c_median) {
                progress(&format!(
                    "{:<12} {:>8}: C reference {c:>10.1} MB/s (Rust ÷ C = {:.2})",
                    mech.name(),
                    output::size_label(size),
                    rust / c
                ));
                versus_c.push((mech, size, rust, c));
            }
            row.push((size, cell));
        }
        throughput.push((mech, row));
        let lat = latency_of(mech, config.rounds, config.warmup, &dir)
            .with_context(|| format!("{} round trips", mech.name()))?;
        progress(&format!(
            "{:<12} round trip: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, CPU {}/round trip",
            mech.name(),
            lat.median as f64 / 1e3,
            lat.p99 as f64 / 1e3,
            lat.p999 as f64 / 1e3,
            lat.cpu_ns().map_or("?".into(), output::cpu_label)
        ));
        latency.push((mech, lat));
    }
    let mut idle = Vec::new();
    for &mech in transport::IDLE.iter().filter(|m| config.mechs.contains(m)) {
        let measured =
            idle_of(mech, config.idle, &dir).with_context(|| format!("{} idle", mech.name()))?;
        progress(&format!(
            "{:<12} idle receiver: {:.1}% of a CPU over {:.1} s ({})",
            mech.name(),
            measured.percent(),
            measured.seconds,
            mech.waiting()
        ));
        idle.push(measured);
    }
    let results = Results {
        throughput,
        versus_c,
        latency,
        memcpy,
        check,
        spin,
        limits: transport::kernel_limits(),
        system,
        pinning: system::pinning().describe(),
        idle,
        seconds: started.elapsed().as_secs_f64(),
    };
    // Files first: a full or closed stdout must not cost the results.
    if let Some(path) = &config.json {
        files::write_replacing(path, output::json(&config, &results).as_bytes())?;
        progress(&format!("wrote {}", path.display()));
    }
    if let Some(path) = &config.svg {
        files::write_replacing(path, output::svg(&config, &results).as_bytes())?;
        progress(&format!("wrote {}", path.display()));
    }
    if let Some(root) = &config.docs {
        for path in docs::write(root, &config, &results)? {
            progress(&format!("wrote {}", path.display()));
        }
    }
    progress(&format!("done in {:.1} s", started.elapsed().as_secs_f64()));
    to_stdout(&output::markdown(&config, &results))
}

/// Write the tables to stdout. Rust ignores SIGPIPE, so a reader that left
/// (`ipc-bench | head -3`, `| true`) gives EPIPE: their choice, so we end
/// quietly. Any other failure (`> /dev/full`) is a real error: one line,
/// exit 1. (`print!` would panic in both cases.)
fn to_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e).context("write(stdout)"),
    }
}

/// A progress line on stderr; a closed or full stderr loses it, nothing more.
fn progress(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("[bench] {line}\n").as_bytes());
}

fn parse() -> Result<Config> {
    let mut args = Args::from_env(USAGE)?;
    let mut config = Config {
        mechs: ALL.to_vec(),
        sizes: vec![64, 4096, 65536, 1 << 20],
        count: None,
        budget: 64 << 20,
        rounds: 20_000,
        warmup: 1000,
        repeats: 3,
        pin: true,
        idle: Duration::from_secs(2),
        json: None,
        svg: None,
        docs: None,
        quick: false,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let (mut rounds, mut quick, mut subset) = (None, false, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mechanisms" => {
                subset = Some("--mechanisms");
                let list = args.value("--mechanisms")?;
                config.mechs = list
                    .split(',')
                    .map(|name| {
                        Mech::parse(name.trim()).ok_or_else(|| {
                            let known: Vec<&str> = ALL.iter().map(|m| m.name()).collect();
                            usage(format!(
                                "--mechanisms: unknown mechanism '{name}'; known: {}",
                                known.join(", ")
                            ))
                        })
                    })
                    .collect::<Result<_>>()?;
            }
            "--sizes" => {
                subset = Some("--sizes");
                let list = args.value("--sizes")?;
                config.sizes = list
                    .split(',')
                    .map(|text| match text.trim().parse::<usize>() {
                        Ok(n) if (1..=MAX_SIZE).contains(&n) => Ok(n),
                        Ok(n) => Err(usage(format!(
                            "--sizes: {n} is out of range: sizes run from 1 to {MAX_SIZE}"
                        ))),
                        Err(_) => Err(usage(format!(
                            "--sizes: '{text}' is not a whole number of bytes"
                        ))),
                    })
                    .collect::<Result<_>>()?;
            }
            "--count" => {
                subset = Some("--count");
                // At least 2: the clock starts at the first timed message.
                config.count = Some(args.number("--count", 2, 100_000_000)?);
            }
            "--rounds" => {
                subset = Some("--rounds");
                rounds = Some(args.number("--rounds", 10, 10_000_000)?);
            }
            "--docs" => config.docs = Some(PathBuf::from(args.value("--docs")?)),
            "--quick" => quick = true,
            "--no-pin" => config.pin = false,
            "--json" => config.json = Some(PathBuf::from(args.value("--json")?)),
            "--svg" => config.svg = Some(PathBuf::from(args.value("--svg")?)),
            other => return Err(args.unknown(other)),
        }
    }
    if let (Some(_), Some(option)) = (&config.docs, subset) {
        return Err(usage(format!(
            "--docs runs every mechanism at the default sizes and counts; {option} would \
             make the docs quote a different run"
        )));
    }
    if quick {
        config.quick = true;
        config.budget = 2 << 20;
        config.rounds = 500;
        config.warmup = 50;
        config.repeats = 1;
        config.idle = Duration::from_millis(500);
    }
    if let Some(r) = rounds {
        config.rounds = r;
        config.warmup = (r / 20).max(1);
    }
    Ok(config)
}

/// Messages per throughput cell: `budget` bytes' worth, within bounds.
fn messages_for(size: usize, budget: u64) -> u64 {
    (budget / size as u64).clamp(16, 200_000)
}

// ---------------------------------------------------------------------------
// Reference rows
// ---------------------------------------------------------------------------

unsafe extern "C" {
    /// c/reference.c: the same workload in C, after `warm` untimed
    /// messages; seconds, -1 failure, -2 n/a. `key` and `mq_name` name its
    /// System V and POSIX queues.
    fn ipc_c_throughput(
        mech: libc::c_int,
        size: usize,
        warm: u64,
        count: u64,
        key: libc::c_int,
        mq_name: *const libc::c_char,
    ) -> f64;
}

/// (warm-up, timed) messages of a cell the C reference can repeat.
fn cell_count(mech: Mech, cell: &Cell) -> Option<(u64, u64)> {
    match cell {
        Cell::Measured {
            messages,
            warm,
            note,
            ..
        } if note.is_none() || ctwins::carries_split(mech) => Some((*warm, *messages)),
        // split or n/a: reference.c sends whole messages only
        _ => None,
    }
}

/// MB/s of the C reference for `mech` at `size`, if it has that mechanism.
fn c_reference(mech: Mech, size: usize, (warm, count): (u64, u64)) -> Result<Option<f64>> {
    let code = match mech {
        Mech::Pipe => 0,
        Mech::UnixStream => 1,
        Mech::UnixDgram => 2,
        Mech::SysvMsg => 3,
        Mech::PosixMq => 4,
        Mech::Tcp => 5,
        // The shared-memory rings' twins (c/shm_twins.c), if any.
        _ => return ctwins::reference(mech, size, (warm, count)),
    };
    // Named like ours, so that a run killed meanwhile is cleaned up later.
    let key = stale::sysv_key(std::process::id(), stale::C_REFERENCE_SLOT);
    if mech == Mech::SysvMsg && !stale::key_free(key) {
        // Someone holds it: the C function would fail on IPC_EXCL, and an
        // IPC_PRIVATE queue made in C could not be recorded for clean-up.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            progress(&format!(
                "sysv-msg: no C reference: its System V key {key:#010x} is taken"
            ))
        });
        return Ok(None);
    }
    let name = std::ffi::CString::new(format!("/{}", unique_name("ipc-bench")))
        .expect("no NUL in the name");
    let call = || {
        // SAFETY: the C function forks (we are single-threaded), uses only
        // its own descriptors and buffers, reads `name` (a C string that
        // outlives the call), removes its queues and reaps its child
        // before returning.
        unsafe { ipc_c_throughput(code, size, warm, count, key, name.as_ptr()) }
    };
    // Its child inherits our affinity: unpinned, the two are not stuck on
    // one CPU.
    let seconds = system::pinning().unpinned_for(call);
    if seconds == -2.0 {
        return Ok(None);
    }
    if seconds < 0.0 {
        bail!("the C reference for {} at {size} bytes failed", mech.name());
    }
    // Timed like the Rust cells: from the first timed message to the last.
    Ok(Some(
        ((count - 1) * size as u64) as f64 / seconds.max(1e-9) / 1e6,
    ))
}

fn memcpy_bandwidth(size: usize, budget: u64) -> f64 {
    let src = payload::make(0, size);
    let mut dst = vec![0u8; size];
    let rounds = (budget / size as u64).max(16);
    dst.copy_from_slice(&src); // untimed: the first touch of `dst`
    let start = Instant::now();
    for _ in 0..rounds {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    (rounds * size as u64) as f64 / start.elapsed().as_secs_f64().max(1e-9) / 1e6
}

/// What the checked workload costs by itself: generate each message, then
/// check it, in one process with no IPC at all.
fn check_bandwidth(size: usize, budget: u64) -> f64 {
    let mut buf = vec![0u8; size];
    let mut checker = Checker::new(None);
    let rounds = (budget / size as u64).max(16);
    payload::fill(u64::MAX, &mut buf); // untimed: the first touch of `buf`
    let start = Instant::now();
    for seq in 0..rounds {
        payload::fill(seq, &mut buf);
        std::hint::black_box(checker.check_numbered(seq, &buf));
    }
    (rounds * size as u64) as f64 / start.elapsed().as_secs_f64().max(1e-9) / 1e6
}

/// Room for `rounds` samples, every page of it written now: pushing into
/// untouched capacity would take page faults between timed rounds.
fn sample_buffer(rounds: u64) -> Vec<u64> {
    let mut samples = vec![u64::MAX; rounds as usize];
    samples.clear(); // keeps the touched capacity
    samples
}

/// Two processes bouncing a counter through two cache lines of a shared
/// page, spinning: the floor for any round trip through memory.
fn spin_ping_pong(rounds: u64, warmup: u64) -> Result<Latency> {
    #[repr(C, align(64))]
    struct Line(AtomicU64);
    let page = SharedPage::new(2 * size_of::<Line>())?;
    // SAFETY: the page holds two 64-byte-aligned Lines (atomics only).
    let (ping, pong) = unsafe {
        let base = page.base.cast::<Line>().as_ptr();
        (&(*base).0, &(*base.add(1)).0)
    };
    let me = std::process::id() as i32;
    // SAFETY: ipc-bench is single-threaded: the child may call anything.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            // A pidfd for the parent: if it dies, a new process that gets
            // its pid cannot keep us spinning (see common::peer::PidWatch).
            // If it died before this line, we were given to another parent.
            let parent = match PidWatch::open(me) {
                Ok(watch) if getppid().as_raw() == me => watch,
                _ => std::process::exit(1),
            };
            if system::pinning().child().is_err() {
                std::process::exit(1);
            }
            let mut expect = 1;
            loop {
                let mut spins = 0u64;
                let got = loop {
                    let v = ping.load(Ordering::Acquire);
                    if v >= expect {
                        break v;
                    }
                    spins += 1;
                    if spins.is_multiple_of(1 << 24) && !parent.alive() {
                        std::process::exit(1);
                    }
                    std::hint::spin_loop();
                };
                if got == u64::MAX {
                    std::process::exit(0);
                }
                pong.store(got, Ordering::Release);
                expect = got + 1;
            }
        }
        ForkResult::Parent { child } => child,
    };
    let mut samples = sample_buffer(rounds);
    let deadline = Instant::now() + CELL_DEADLINE;
    for i in 1..=(warmup + rounds) {
        let start = Instant::now();
        ping.store(i, Ordering::Release);
        let mut spins = 0u64;
        while pong.load(Ordering::Acquire) != i {
            spins += 1;
            if spins.is_multiple_of(1 << 20) && Instant::now() > deadline {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = wait_pid(child, Duration::from_secs(10));
                bail!("the spin ping-pong partner stopped answering");
            }
            std::hint::spin_loop();
        }
        if i > warmup {
            samples.push(start.elapsed().as_nanos() as u64);
        }
    }
    ping.store(u64::MAX, Ordering::Release);
    let exit = wait_pid(child, Duration::from_secs(30))?;
    if !exit.success() {
        bail!("the spin ping-pong partner {exit}");
    }
    Ok(Latency::from_samples(samples, warmup))
}

struct SharedPage {
    base: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

impl SharedPage {
    fn new(len: usize) -> Result<SharedPage> {
        let len = len.next_multiple_of(4096);
        let base = transport::shared_anonymous(len)?;
        Ok(SharedPage { base, len })
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(); nothing borrows it now.
        let _ = unsafe { nix::sys::mman::munmap(self.base, self.len) };
    }
}

// ---------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------

/// The sequence number of a received message, checking its bytes.
fn check(checker: &mut Checker, msg: &Msg<'_>, expected: u64) -> Result<u64> {
    let (seq, verdict) = match msg {
        // Every channel here is first in, first out, so the message must be
        // exactly message `expected`: this also covers bodies under 8 bytes,
        // too short to carry their own number.
        Msg::Body(body) => (expected, checker.check_numbered(expected, body)),
        Msg::Numbered(seq, body) => (*seq, checker.check_numbered(*seq, body)),
        Msg::Value(v) => (
            *v,
            if *v == expected {
                Verdict::Ok
            } else {
                Verdict::Corrupted("wrong value")
            },
        ),
    };
    if verdict != Verdict::Ok || seq != expected {
        bail!(
            "message {expected}: {verdict} (sequence number {seq}): a check failed, so the run stops"
        );
    }
    Ok(seq)
}

/// A pipe for "go" and the child's result.
fn control() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).context("pipe2")
}

fn signals(first: i32) -> (libc::c_int, libc::c_int) {
    (libc::SIGRTMIN() + first, libc::SIGRTMIN() + first + 1)
}

/// Untimed messages before a throughput measurement: twice what the
/// channel holds in flight, so every buffer has grown and every slot of a
/// ring has been used (at least 16, at most 10 000: for small messages the
/// kernel's per-message overhead fills a buffer long before its bytes do;
/// the SPSC ring's ends touch each of its pages after fork instead).
/// Without it, a fresh ring's first-touch page faults were timed:
/// shm-spsc at 64 KiB measured 2.2 GB/s with 32 messages and 22 GB/s with
/// 16 K.
pub fn warm_messages(buffer: usize, size: usize) -> u64 {
    ((2 * buffer).div_ceil(size) as u64).clamp(MIN_WARM, MAX_WARM)
}

/// The fewest and the most warm-up messages of a cell.
const MIN_WARM: u64 = 16;
const MAX_WARM: u64 = 10_000;

/// One-way throughput: the child sends `warm` messages, waits for "go",
/// then sends `count` more; we receive and check every one. The pause
/// before "go" lets the channel drain, so the timed messages start with an
/// empty (but warm) channel. The clock runs from the arrival of the first
/// timed message to the last, over `count - 1` messages: waking the sender
/// from its wait for "go" (tens of µs on a VM) is not the mechanism's cost.
fn throughput_cell(mech: Mech, size: usize, count: u64, dir: &PrivateDir) -> Result<Cell> {
    let Channel {
        tx,
        rx,
        note,
        buffer,
        cleanup,
        ..
    } = match transport::channel(mech, size, dir.path(), signals(1))? {
        Ok(channel) => channel,
        Err(reason) => return Ok(Cell::NotApplicable(reason)),
    };
    let warm = warm_messages(buffer, size);
    let (go_read, go_write) = control()?;
    let (cpu_read, cpu_write) = control()?;
    // SAFETY: ipc-bench is single-threaded: the child may call anything.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop((rx, go_write, cpu_read));
            let code = match sender(tx, go_read, cpu_write, warm, count, size) {
                Ok(()) => 0,
                Err(e) => {
                    progress(&format!("sender: {e:#}"));
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    };
    drop((tx, go_read, cpu_write));
    let outcome = receiver(rx, go_write, child, warm, count);
    let exit = wait_pid(child, Duration::from_secs(60))?;
    drop(cleanup);
    let (seconds, faults, parent_cpu) = outcome?;
    if !exit.success() {
        bail!("the sending process {exit}");
    }
    let cpu = CpuTime::receive(&cpu_read)?.map(|child| BothCpu {
        parent: parent_cpu,
        child,
    });
    let timed = count - 1;
    Ok(Cell::Measured {
        messages: timed,
        bytes: timed * if mech == Mech::Signal { 0 } else { size as u64 },
        seconds,
        warm,
        faults,
        note,
        cpu,
        spread: (0.0, 0.0),
        runs: 1,
    })
}

/// Why `mech` has no throughput at `size`, if it has none at all.
fn not_measured(mech: Mech, size: usize, first: bool) -> Option<String> {
    let _ = size;
    match mech {
        Mech::Signal if !first => {
            Some("n/a: a signal carries one integer, whatever the size".into())
        }
        Mech::Eventfd => Some(
            "n/a: an eventfd is a counter that wakes a waiter, not a channel for messages: \
             only its round trip (two wake-ups) is measured"
                .into(),
        ),
        _ => None,
    }
}

/// Minor plus major page faults of this process so far.
fn page_faults() -> u64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    (usage.ru_minflt + usage.ru_majflt) as u64
}

/// The pid of the benchmark's main process: every child is forked by it.
static MAIN_PID: std::sync::OnceLock<Pid> = std::sync::OnceLock::new();

/// The start of a forked child: on its own CPU, watching its parent (by
/// pidfd, opened on the pid we were forked by: if that process died first,
/// the open fails or getppid names whoever adopted us).
fn child_start() -> Result<(Pid, common::peer::Ticker)> {
    let parent = *MAIN_PID.get_or_init(getppid);
    system::pinning().child()?;
    let ticker = transport::watch(parent, CELL_DEADLINE)?;
    if getppid() != parent {
        bail!("the parent process died before the measurement started");
    }
    Ok((parent, ticker))
}

fn sender(
    mut tx: Box<dyn transport::Tx>,
    go: OwnedFd,
    cpu: OwnedFd,
    warm: u64,
    count: u64,
    size: usize,
) -> Result<()> {
    let (parent, _ticker) = child_start()?;
    tx.after_fork(parent)?;
    for seq in 0..warm {
        tx.send(seq, size)?;
    }
    wait_go(&go)?;
    let start = CpuTime::now();
    for seq in warm..warm + count {
        tx.send(seq, size)?;
    }
    tx.end()?;
    CpuTime::now().since(start).send(&cpu)
}

fn wait_go(go: &OwnedFd) -> Result<()> {
    let mut byte = [0u8];
    loop {
        match read(go.as_fd(), &mut byte) {
            Ok(1) => return Ok(()),
            Ok(_) => bail!("the receiver went away before starting"),
            Err(nix::errno::Errno::EINTR) => transport::still_ok()?,
            Err(e) => return Err(e).context("read(go)"),
        }
    }
}

fn receiver(
    mut rx: Box<dyn transport::Rx>,
    go: OwnedFd,
    child: Pid,
    warm: u64,
    count: u64,
) -> Result<(f64, u64, CpuTime)> {
    rx.after_fork(child)?;
    let _ticker = transport::watch(child, CELL_DEADLINE)?;
    let mut checker = Checker::new(Some(warm + count));
    let mut received = 0;
    let mut next = |rx: &mut Box<dyn transport::Rx>, received: &mut u64| -> Result<bool> {
        match rx.recv()? {
            Some(msg) => {
                check(&mut checker, &msg, *received)?;
                *received += 1;
                Ok(true)
            }
            None => Ok(false),
        }
    };
    while received < warm {
        if !next(&mut rx, &mut received)? {
            bail!("the sender ended during the warm-up, after {received} of {warm} messages");
        }
    }
    write(go.as_fd(), b"g").context("write(go)")?;
    let mut start = None;
    while next(&mut rx, &mut received)? {
        start.get_or_insert_with(|| (Instant::now(), page_faults(), CpuTime::now()));
    }
    let (seconds, faults, cpu) = start.map_or((0.0, 0, CpuTime::default()), |(t, f, c)| {
        (
            t.elapsed().as_secs_f64(),
            page_faults() - f,
            CpuTime::now().since(c),
        )
    });
    if received != warm + count {
        bail!(
            "received {} of {count} messages after the warm-up",
            received - warm
        );
    }
    Ok((seconds, faults, cpu))
}

/// Round trips of 64-byte messages: we send on channel A, the child
/// answers on channel B with the same sequence number.
fn latency_of(mech: Mech, rounds: u64, warmup: u64, dir: &PrivateDir) -> Result<Latency> {
    let a =
        transport::channel(mech, PING_SIZE, dir.path(), signals(1))?.map_err(anyhow::Error::msg)?;
    let b =
        transport::channel(mech, PING_SIZE, dir.path(), signals(3))?.map_err(anyhow::Error::msg)?;
    // Walk shm-sem's slots once before timing (see Channel::cycle).
    let warmup = warmup.max(a.cycle.max(b.cycle));
    let (cpu_read, cpu_write) = control()?;
    // SAFETY: single-threaded, as above.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop((a.tx, b.rx, cpu_read));
            let code = match echo(a.rx, b.tx, warmup, cpu_write) {
                Ok(()) => 0,
                Err(e) => {
                    progress(&format!("echo: {e:#}"));
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    };
    let (mut ping, mut pong) = (a.tx, b.rx);
    drop((a.rx, b.tx, cpu_write));
    let outcome = (|| -> Result<(Vec<u64>, u64, CpuTime)> {
        ping.after_fork(child)?;
        pong.after_fork(child)?;
        let _ticker = transport::watch(child, CELL_DEADLINE)?;
        let mut checker = Checker::new(None);
        let mut samples = sample_buffer(rounds);
        let mut faults = 0;
        let mut cpu = CpuTime::default();
        for i in 0..(warmup + rounds) {
            if i == warmup {
                faults = page_faults();
                cpu = CpuTime::now();
            }
            let start = Instant::now();
            ping.send(i, PING_SIZE)?;
            let msg = pong.recv()?.context("the echo process ended early")?;
            check(&mut checker, &msg, i)?;
            if i >= warmup {
                samples.push(start.elapsed().as_nanos() as u64);
            }
        }
        faults = page_faults() - faults;
        let cpu = CpuTime::now().since(cpu);
        ping.end()?;
        if pong.recv()?.is_some() {
            bail!("an extra reply after the end");
        }
        Ok((samples, faults, cpu))
    })();
    let exit = wait_pid(child, Duration::from_secs(60))?;
    drop((a.cleanup, b.cleanup));
    let (samples, faults, parent_cpu) = outcome?;
    if !exit.success() {
        bail!("the echo process {exit}");
    }
    let mut latency = Latency::from_samples(samples, warmup);
    latency.faults = faults;
    latency.cpu = CpuTime::receive(&cpu_read)?.map(|child| BothCpu {
        parent: parent_cpu,
        child,
    });
    Ok(latency)
}

/// Answer every message; time our CPU from the first timed round (after
/// `warmup` echoes) to the end.
fn echo(
    mut rx: Box<dyn transport::Rx>,
    mut tx: Box<dyn transport::Tx>,
    warmup: u64,
    cpu: OwnedFd,
) -> Result<()> {
    let (parent, _ticker) = child_start()?;
    rx.after_fork(parent)?;
    tx.after_fork(parent)?;
    let mut checker = Checker::new(None);
    let mut expected = 0;
    let mut start = CpuTime::now();
    loop {
        if expected == warmup {
            start = CpuTime::now();
        }
        let Some(msg) = rx.recv()? else { break };
        let seq = check(&mut checker, &msg, expected)?;
        tx.send(seq, PING_SIZE)?;
        expected += 1;
    }
    tx.end()?;
    CpuTime::now().since(start).send(&cpu)
}

/// A receiver that waits `wait` for a message that never comes (the
/// sender only ends the channel then): the CPU a waiting strategy burns
/// while nothing happens. A spinning receiver takes a whole CPU; one that
/// sleeps in the kernel, next to nothing (the watchdog still wakes it every
/// 100 ms to check its peer).
fn idle_of(mech: Mech, wait: Duration, dir: &PrivateDir) -> Result<Idle> {
    let Channel {
        tx, rx, cleanup, ..
    } = transport::channel(mech, PING_SIZE, dir.path(), signals(1))?.map_err(anyhow::Error::msg)?;
    let (cpu_read, cpu_write) = control()?;
    // SAFETY: single-threaded, as above.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop((tx, cpu_read));
            let code = match idle_receiver(rx, cpu_write) {
                Ok(()) => 0,
                Err(e) => {
                    progress(&format!("idle receiver: {e:#}"));
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    };
    drop((rx, cpu_write));
    let outcome = (|| -> Result<()> {
        let mut tx = tx;
        tx.after_fork(child)?;
        let _ticker = transport::watch(child, CELL_DEADLINE)?;
        // Sleep through `wait` (the ticker interrupts the sleep; sleep
        // resumes until the time is up).
        std::thread::sleep(wait);
        tx.end()
    })();
    let exit = wait_pid(child, Duration::from_secs(60))?;
    drop(cleanup);
    outcome?;
    if !exit.success() {
        bail!("the idle receiver {exit}");
    }
    let words =
        system::receive_words(&cpu_read, 3)?.context("the idle receiver sent no figures")?;
    Ok(Idle {
        mech,
        cpu: CpuTime {
            user_us: words[0],
            sys_us: words[1],
        },
        seconds: words[2] as f64 / 1e6,
    })
}

fn idle_receiver(mut rx: Box<dyn transport::Rx>, out: OwnedFd) -> Result<()> {
    let (parent, _ticker) = child_start()?;
    rx.after_fork(parent)?;
    let (cpu, wall) = (CpuTime::now(), Instant::now());
    if rx.recv()?.is_some() {
        bail!("a message came, but none was sent");
    }
    let (spent, waited) = (CpuTime::now().since(cpu), wall.elapsed());
    system::send_words(
        &out,
        &[spent.user_us, spent.sys_us, waited.as_micros() as u64],
    )
}
