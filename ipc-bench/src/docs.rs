//! `--docs ROOT`: every benchmark figure the repository quotes, from one run.
//!
//! Writes `docs/bench-results.md`, `docs/bench.json` and `docs/bench.svg`
//! whole, and replaces the text between `<!-- bench:begin NAME -->` and
//! `<!-- bench:end NAME -->` in README.md, docs/README.zh-CN.md and
//! docs/comparison.md; everything outside the markers is left as it is.
//! The sentences generated here say only what the numbers of this run
//! show: comparisons are computed, not written in advance.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::output::{machine, size_label};
use crate::transport::{ALL, Mech};
use crate::{Cell, Config, Results};

/// The one command that regenerates everything, from the repository root.
pub const COMMAND: &str = "ipc-bench/regenerate-docs.sh";

/// (file under ROOT, regions it must hold)
const REGIONS: [(&str, &[&str]); 3] = [
    ("README.md", &["readme"]),
    ("docs/README.zh-CN.md", &["readme-zh"]),
    (
        "docs/comparison.md",
        &[
            "comparison-top",
            "comparison-measured",
            "comparison-waiting",
        ],
    ),
];

/// The files written whole, under ROOT/docs.
const WHOLE: [&str; 4] = [
    "bench-results.md",
    "bench.json",
    "bench.svg",
    "bench-waiting.svg",
];

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- bench:begin {name} -->"),
        format!("<!-- bench:end {name} -->"),
    )
}

/// Fails unless every file exists, holds each of its regions exactly once,
/// and can be replaced: checked before the run, not after a minute of it.
pub fn check(root: &Path) -> Result<()> {
    for (file, regions) in REGIONS {
        let path = root.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--docs: read {}", path.display()))?;
        for region in regions {
            span(&text, region).with_context(|| format!("--docs: {}", path.display()))?;
        }
        crate::files::check_target(&path)?;
    }
    for file in WHOLE {
        crate::files::check_target(&root.join("docs").join(file))?;
    }
    Ok(())
}

/// Byte range of the text between region `name`'s markers.
fn span(text: &str, name: &str) -> Result<std::ops::Range<usize>> {
    let (begin, end) = markers(name);
    let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
        bail!("no {begin} ... {end} markers");
    };
    if text.matches(&begin).count() != 1 || text.matches(&end).count() != 1 || e < b {
        bail!("the markers of region {name} must appear once each, begin before end");
    }
    Ok(b + begin.len()..e)
}

fn replace(text: &str, name: &str, content: &str) -> Result<String> {
    let range = span(text, name)?;
    Ok(format!(
        "{}\n{}\n{}",
        &text[..range.start],
        content.trim_end(),
        &text[range.end..]
    ))
}

/// Write everything; returns the paths written.
pub fn write(root: &Path, config: &Config, r: &Results) -> Result<Vec<PathBuf>> {
    let docs = root.join("docs");
    let mut written = Vec::new();
    let mut put = |path: PathBuf, text: String| -> Result<()> {
        crate::files::write_replacing(&path, text.as_bytes())?;
        written.push(path);
        Ok(())
    };
    put(docs.join("bench-results.md"), results_file(config, r))?;
    put(docs.join("bench.json"), crate::output::json(config, r))?;
    put(docs.join("bench.svg"), crate::output::svg(config, r))?;
    put(
        docs.join("bench-waiting.svg"),
        crate::output::svg_waiting(config, r),
    )?;
    let generated: [(&str, String); 5] = [
        ("readme", readme(config, r)),
        ("readme-zh", readme_zh(config, r)),
        ("comparison-top", comparison_top(config)),
        ("comparison-measured", comparison_measured(config, r)),
        ("comparison-waiting", comparison_waiting(config, r)),
    ];
    for (file, regions) in REGIONS {
        let path = root.join(file);
        let mut text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        for region in regions {
            let content = &generated
                .iter()
                .find(|(n, _)| n == region)
                .expect("every region has a generator")
                .1;
            text =
                replace(&text, region, content).with_context(|| format!("{}", path.display()))?;
        }
        put(path, text)?;
    }
    Ok(written)
}

/// "a quick run, not for publishing" when it was one.
fn run_kind(config: &Config) -> &'static str {
    if config.quick {
        " (**a --quick run: too short to publish; regenerate without --quick**)"
    } else {
        ""
    }
}

fn results_file(config: &Config, r: &Results) -> String {
    let table = crate::output::markdown(config, r);
    let body = table
        .strip_prefix("# ipc-bench results\n")
        .unwrap_or(&table);
    format!(
        "# ipc-bench results\n\n\
         Generated by `{COMMAND}` (from the repository root; it runs \
         `cargo run --release -p ipc-bench -- --docs .`), which rewrites this file, \
         [bench.json](bench.json), [bench.svg](bench.svg), \
         [bench-waiting.svg](bench-waiting.svg) and the marked parts of \
         [README.md](../README.md), [README.zh-CN.md](README.zh-CN.md) and \
         [comparison.md](comparison.md) from one run. These figures: {}, in {:.0} s{}. \
         Run it on a quiet machine: other load moves every figure.\n{body}",
        machine(),
        r.seconds,
        run_kind(config)
    )
}

// ---------------------------------------------------------------------------
// Looking numbers up
// ---------------------------------------------------------------------------

fn cell(r: &Results, mech: Mech, size: usize) -> Option<&Cell> {
    r.throughput
        .iter()
        .find(|(m, _)| *m == mech)
        .and_then(|(_, row)| row.iter().find(|(s, _)| *s == size))
        .map(|(_, c)| c)
}

fn mb(r: &Results, mech: Mech, size: usize) -> Option<f64> {
    cell(r, mech, size).and_then(Cell::mb_per_s)
}

fn msgs(r: &Results, mech: Mech, size: usize) -> Option<f64> {
    cell(r, mech, size).and_then(Cell::msg_per_s)
}

fn split(r: &Results, mech: Mech, size: usize) -> bool {
    matches!(
        cell(r, mech, size),
        Some(Cell::Measured { note: Some(_), .. })
    )
}

fn lat(r: &Results, mech: Mech) -> Option<&crate::Latency> {
    r.latency.iter().find(|(m, _)| *m == mech).map(|(_, l)| l)
}

fn reference(list: &[(usize, f64)], size: usize) -> Option<f64> {
    list.iter().find(|(s, _)| *s == size).map(|(_, v)| *v)
}

fn limit(r: &Results, name: &str) -> String {
    r.limits
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("unknown".into(), |(_, v)| v.clone())
}

/// 1720 or 34.4
fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// 1.91 M, 245 k
fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn us(ns: u64) -> String {
    let v = ns as f64 / 1e3;
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

// ---------------------------------------------------------------------------
// The READMEs
// ---------------------------------------------------------------------------

/// English and Chinese words of the README table: (name, who can talk,
/// boundaries), the mechanism's properties, not this benchmark's set-up.
fn words(mech: Mech, zh: bool) -> (&'static str, &'static str, &'static str) {
    match (mech, zh) {
        (Mech::Pipe, false) => ("pipe", "related", "no"),
        (Mech::Pipe, true) => ("管道", "有亲缘关系的进程", "无"),
        (Mech::Fifo, false) => ("FIFO", "unrelated, by path", "no"),
        (Mech::Fifo, true) => ("有名管道（FIFO）", "无亲缘关系，按路径", "无"),
        (Mech::UnixStream, false) => ("Unix stream socket", "related or unrelated", "no"),
        (Mech::UnixStream, true) => ("Unix 流套接字", "有或无亲缘关系", "无"),
        (Mech::UnixDgram, false) => ("Unix datagram socket", "related or unrelated", "yes"),
        (Mech::UnixDgram, true) => ("Unix 数据报套接字", "有或无亲缘关系", "有"),
        (Mech::SysvMsg, false) => ("System V message queue", "unrelated, by key", "yes (typed)"),
        (Mech::SysvMsg, true) => ("System V 消息队列", "无亲缘关系，按键值", "有（带类型）"),
        (Mech::PosixMq, false) => (
            "POSIX message queue",
            "unrelated, by name",
            "yes (priority)",
        ),
        (Mech::PosixMq, true) => ("POSIX 消息队列", "无亲缘关系，按名字", "有（带优先级）"),
        (Mech::ShmSem, false) => (
            "shared memory + POSIX semaphores",
            "unrelated, by name ¹",
            "you decide",
        ),
        (Mech::ShmSem, true) => (
            "共享内存 + POSIX 信号量",
            "无亲缘关系，按名字 ¹",
            "自行设计",
        ),
        (Mech::ShmSpsc, false) => (
            "shared memory, lock-free ring",
            "unrelated, by name ¹",
            "you decide",
        ),
        (Mech::ShmSpsc, true) => (
            "共享内存，无锁环形缓冲区",
            "无亲缘关系，按名字 ¹",
            "自行设计",
        ),
        (Mech::ShmMemfd, false) => (
            "the futex ring in a sealed memfd",
            "any process given the fd (inherited, or passed over a Unix socket)",
            "you decide",
        ),
        (Mech::ShmMemfd, true) => (
            "密封 memfd 中的 futex 环形缓冲区",
            "获得该文件描述符的任何进程（继承，或经 Unix 套接字传递）",
            "自行设计",
        ),
        (Mech::ShmFutex, false) => (
            "shared memory, futex ring (spin, then sleep)",
            "unrelated, by name ¹",
            "you decide",
        ),
        (Mech::ShmFutex, true) => (
            "共享内存，futex 环形缓冲区（先自旋后睡眠）",
            "无亲缘关系，按名字 ¹",
            "自行设计",
        ),
        (Mech::ShmFutexYield, false) => (
            "the same, spin then `sched_yield`",
            "unrelated, by name ¹",
            "you decide",
        ),
        (Mech::ShmFutexYield, true) => (
            "同上，先自旋后 `sched_yield`",
            "无亲缘关系，按名字 ¹",
            "自行设计",
        ),
        (Mech::ShmFutexSpin, false) => {
            ("the same, pure spin", "unrelated, by name ¹", "you decide")
        }
        (Mech::ShmFutexSpin, true) => ("同上，纯自旋", "无亲缘关系，按名字 ¹", "自行设计"),
        (Mech::Eventfd, false) => (
            "eventfd",
            "related, or any process given the fd",
            "no data: a counter",
        ),
        (Mech::Eventfd, true) => (
            "eventfd",
            "有亲缘关系，或获得该描述符的任何进程",
            "无数据：一个计数器",
        ),
        (Mech::Tcp, false) => (
            "TCP on 127.0.0.1",
            "any local process of any user (other hosts only if bound to a non-loopback address)",
            "no",
        ),
        (Mech::Tcp, true) => (
            "TCP（127.0.0.1）",
            "本机任何用户的任何进程（绑定非回环地址时才可跨主机）",
            "无",
        ),
        (Mech::Signal, false) => (
            "signals (`sigqueue`)",
            "any process you may signal",
            "one int each",
        ),
        (Mech::Signal, true) => ("信号（`sigqueue`）", "任何有权发信号的进程", "每次一个整数"),
    }
}

fn readme_rows(r: &Results, zh: bool) -> String {
    let mut out = String::new();
    for mech in ALL {
        let (name, who, bounds) = words(mech, zh);
        let small = msgs(r, mech, 64).map_or("–".into(), rate);
        let big = match (mech, mb(r, mech, 65536)) {
            (Mech::Signal, _) | (_, None) => "–".to_string(),
            (_, Some(v)) if split(r, mech, 65536) => {
                format!("{}{}", num(v), if zh { "（拆分）" } else { " (split)" })
            }
            (_, Some(v)) => num(v),
        };
        let p99 = lat(r, mech).map_or("–".into(), |l| format!("{} µs", us(l.p99)));
        let cpu = cell(r, mech, 64)
            .and_then(Cell::cpu_ns)
            .map_or("–".into(), crate::output::cpu_label);
        let _ = writeln!(
            out,
            "| {name} | {who} | {bounds} | {small} | {big} | {cpu} | {p99} |"
        );
    }
    out
}

fn readme(config: &Config, r: &Results) -> String {
    format!(
        "`ipc-bench` runs one checked workload through every mechanism and prints one \
         table (`cargo run --release -p ipc-bench`, {:.0} s in the run below). One run of \
         `{COMMAND}` on {}{} gave (full results, each mechanism's configuration and the \
         method: [docs/bench-results.md](docs/bench-results.md), \
         [docs/comparison.md](docs/comparison.md)):\n\n\
         | mechanism | who can talk | boundaries | 64 B msg/s | 64 KiB MB/s | CPU per 64 B msg | round trip p99 |\n\
         |---|---|---|---:|---:|---:|---:|\n{}\n\
         ¹ In the benchmark every pair is a parent and its forked child, and the \
         shared-memory rows marked ¹ use an anonymous mapping inherited over `fork`, not a \
         name; messages are checked, and each measurement is warmed up first. Figures are \
         the median of {} runs; {}. \
         \"(split)\": the queue's per-message limit (`msgmax`, `msgsize_max`: {} bytes \
         here) cuts each 64 KiB message into pieces. \"CPU per 64 B msg\": user + system \
         time of both processes per message, which shows what a spinning waiter costs \
         ([the cost of waiting](docs/comparison.md#the-cost-of-waiting)).\n\n\
         ![throughput and round-trip latency by mechanism](docs/bench.svg)",
        r.seconds,
        machine(),
        run_kind(config),
        readme_rows(r, false),
        config.repeats,
        pinned_en(r),
        limit(r, "kernel.msgmax"),
    )
}

fn readme_zh(config: &Config, r: &Results) -> String {
    let quick = if config.quick {
        "（**--quick 快速运行：时间太短，不宜发布；请去掉 --quick 重新生成**）"
    } else {
        ""
    };
    format!(
        "`ipc-bench` 让同一份带校验的负载走过每一种机制，并输出一张表\
         （`cargo run --release -p ipc-bench`，下面这次运行用了 {:.0} 秒）。\
         在 {} 上运行一次 `{COMMAND}`{quick}得到（完整结果、每种机制的配置和方法见 \
         [bench-results.md](bench-results.md) 与 [comparison.md](comparison.md)，英文）：\n\n\
         | 机制 | 谁能通信 | 消息边界 | 64 B 消息/秒 | 64 KiB MB/s | 每条 64 B 消息的 CPU 时间 | 往返延迟 p99 |\n\
         |---|---|---|---:|---:|---:|---:|\n{}\n\
         ¹ 基准测试中每一对进程都是父进程与它 fork 出的子进程；标 ¹ 的共享内存行使用经 `fork` \
         继承的匿名映射，而不是按名字打开。每条消息都经过校验，每次测量前都先预热。\
         数字取 {} 次运行的中位数；{}。\
         “（拆分）”：队列的单条消息上限（`msgmax`、`msgsize_max`，这里为 {} 字节）\
         把每条 64 KiB 消息切成几段。“每条 64 B 消息的 CPU 时间”：两个进程的用户态与内核态 \
         CPU 时间之和除以消息数，可以看出忙等（自旋）式的等待要花多少 CPU\
         （见 [等待的代价](comparison.md#the-cost-of-waiting)，英文）。\n\n\
         ![各机制的吞吐量与往返延迟](bench.svg)",
        r.seconds,
        machine(),
        readme_rows(r, true),
        config.repeats,
        pinned_zh(r),
        limit(r, "kernel.msgmax"),
    )
}

/// Where the two processes ran, for the READMEs' footnotes.
fn pinned_en(r: &Results) -> String {
    if r.pinning.starts_with("pinned") {
        "the two processes were pinned to two CPUs (`sched_setaffinity`)".into()
    } else {
        format!(
            "the two processes were left to the scheduler ({})",
            r.pinning
        )
    }
}

fn pinned_zh(r: &Results) -> String {
    if r.pinning.starts_with("pinned") {
        "两个进程分别绑定在两个 CPU 上（`sched_setaffinity`）".into()
    } else {
        format!("两个进程未绑定 CPU，由调度器安排（{}）", r.pinning)
    }
}

// ---------------------------------------------------------------------------
// docs/comparison.md
// ---------------------------------------------------------------------------

fn comparison_top(config: &Config) -> String {
    format!(
        "The measured figures below come from one run of `{COMMAND}` (from the repository \
         root) on {}{}; that command regenerates them, with \
         [bench-results.md](bench-results.md), [bench.json](bench.json), \
         [bench.svg](bench.svg) and the tables of both READMEs. Run it on a quiet machine.",
        machine(),
        run_kind(config)
    )
}

fn comparison_measured(config: &Config, r: &Results) -> String {
    let mut out = String::new();
    let sizes = &config.sizes;
    let _ = writeln!(
        out,
        "## Measured\n\n{}, {:.0} s; {}. Full output, with each mechanism's configuration, \
         the kernel limits it depends on and the machine's scheduler and memory knobs: \
         [bench-results.md](bench-results.md), [bench.json](bench.json).\n\n\
         ![throughput and latency by mechanism](bench.svg)\n",
        machine(),
        r.seconds,
        r.pinning
    );
    let mut header = String::from("| mechanism |");
    let mut rule = String::from("|---|");
    for &s in sizes {
        let _ = write!(header, " {} |", size_label(s));
        rule.push_str("---:|");
    }
    let _ = writeln!(
        out,
        "{header} CPU/msg at {} | round trip p50 / p99 / p99.9 | CPU/round trip |\n{rule}---:|---:|---:|",
        size_label(sizes[0])
    );
    for (mech, row) in &r.throughput {
        let mut line = format!("| {} |", mech.name());
        for (i, (size, c)) in row.iter().enumerate() {
            let text = match c {
                Cell::Measured { .. } if *mech == Mech::Signal => {
                    format!("{} signals/s", rate(c.msg_per_s().unwrap_or(0.0)))
                }
                Cell::Measured { note: Some(_), .. } => {
                    format!("{} ¹", num(c.mb_per_s().unwrap_or(0.0)))
                }
                Cell::Measured { .. } => num(c.mb_per_s().unwrap_or(0.0)),
                Cell::NotApplicable(_) if *mech == Mech::Signal && i > 0 => "–".into(),
                Cell::NotApplicable(_) => format!("n/a ({})", size_label(*size)),
            };
            let _ = write!(line, " {text} |");
        }
        let l = lat(r, *mech);
        let cpu = |v: Option<f64>| v.map_or("–".into(), crate::output::cpu_label);
        let _ = writeln!(
            line,
            " {} | {} | {} |",
            cpu(row.first().and_then(|(_, c)| c.cpu_ns())),
            l.map_or("–".into(), |l| format!(
                "{} / {} / {} µs",
                us(l.median),
                us(l.p99),
                us(l.p999)
            )),
            cpu(l.and_then(crate::Latency::cpu_ns))
        );
        out.push_str(&line);
    }
    for (label, list) in [
        ("*memcpy, one process*", &r.memcpy),
        ("*generate + check, no IPC*", &r.check),
    ] {
        let mut line = format!("| {label} |");
        for (_, v) in list.iter() {
            let _ = write!(line, " {} |", num(*v));
        }
        let _ = writeln!(line, " | | |");
        out.push_str(&line);
    }
    let _ = writeln!(
        out,
        "| *raw spin ping-pong* |{} | {} / {} / {} µs | |",
        " |".repeat(sizes.len()),
        us(r.spin.median),
        us(r.spin.p99),
        us(r.spin.p999)
    );
    let _ = writeln!(
        out,
        "\nMB/s, one way, the median of {} run(s) (the lowest and highest are in \
         [bench-results.md](bench-results.md)), every message generated by the sender and checked \
         by the receiver, after an untimed warm-up. CPU: user + system time of both processes \
         over the timed part (getrusage), per message or per round trip. ¹ split: System V queues into \
         `kernel.msgmax` = {} byte messages, POSIX queues into `fs.mqueue.msgsize_max` = {} \
         byte messages, shm-sem and the futex rings over their {} KiB slots. n/a: see the notes in \
         [bench-results.md](bench-results.md).\n",
        config.repeats,
        limit(r, "kernel.msgmax"),
        limit(r, "fs.mqueue.msgsize_max"),
        crate::transport::SHM_SEM_SLOT_SIZE / 1024
    );
    out.push_str(&shows(r));
    out.push_str(&targets(r));
    out
}

/// "What this run shows": only comparisons computed from it.
fn shows(r: &Results) -> String {
    let mut out = String::from("## What this run shows\n\n");
    // 64 B: per-message costs.
    let mut small: Vec<(Mech, f64)> = ALL
        .iter()
        .filter_map(|&m| msgs(r, m, 64).map(|v| (m, v)))
        .collect();
    small.sort_by(|a, b| b.1.total_cmp(&a.1));
    let list = |v: &[(Mech, f64)], f: &dyn Fn(f64) -> String| {
        v.iter()
            .map(|(m, x)| format!("{} {}", m.name(), f(*x)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "- **64 B messages per second**, fastest first: {}. At this size the bytes cost \
         little (generating and checking 64 B in one process runs at {} MB/s); what \
         differs is the work per message: a kernel-mediated mechanism makes at least one \
         system call to send and one to receive, shm-spsc none unless a side has to wait \
         (then `sched_yield`), shm-sem a `sem_post` and a `sem_wait` that enter the kernel \
         when the other side sleeps. This benchmark does not count system calls or \
         wake-ups; `strace -c -f` on a run does.",
        list(&small, &|v| rate(v)),
        reference(&r.check, 64).map_or("–".into(), num)
    );
    // 64 KiB: bytes.
    let mut big: Vec<(Mech, f64)> = ALL
        .iter()
        .filter(|&&m| m != Mech::Signal)
        .filter_map(|&m| mb(r, m, 65536).map(|v| (m, v)))
        .collect();
    big.sort_by(|a, b| b.1.total_cmp(&a.1));
    let memcpy = reference(&r.memcpy, 65536);
    let check = reference(&r.check, 65536);
    let mut para = format!(
        "- **64 KiB, MB/s**, fastest first: {}.",
        list(&big, &|v| num(v))
    );
    if let (Some(pipe), Some(stream)) = (mb(r, Mech::Pipe, 65536), mb(r, Mech::UnixStream, 65536)) {
        let (hi, lo) = (pipe.max(stream), pipe.min(stream));
        let (snd, rcv) = crate::transport::default_buffers(nix::sys::socket::SockType::Stream);
        let _ = write!(
            para,
            " A pipe and a Unix stream socket both copy each byte twice (into the kernel \
             and out of it), and here they move {} and {} MB/s{}: the number of copies \
             does not decide the rate by itself (the pipe holds {} bytes; the socket pair \
             has a {}-byte send and a {}-byte receive buffer).",
            num(pipe),
            num(stream),
            if hi / lo >= 1.25 {
                format!(", a factor of {:.1}", hi / lo)
            } else {
                String::new()
            },
            crate::transport::PIPE_DEFAULT,
            snd,
            rcv
        );
    }
    if let (Some(spsc), Some(memcpy), Some(check)) = (mb(r, Mech::ShmSpsc, 65536), memcpy, check) {
        let _ = write!(
            para,
            " The lock-free ring moves {} MB/s, {:.2}× memcpy at that size ({} MB/s: one \
             process copying the same 64 KiB again and again) and {:.2}× the rate at which one process \
             generates and then checks the same bytes with no IPC ({} MB/s); in the ring the \
             sender generates while the receiver checks, on two CPUs. How the rest divides \
             between moving cache lines from one CPU to the other and the check itself, \
             this benchmark does not measure.",
            num(spsc),
            spsc / memcpy,
            num(memcpy),
            spsc / check,
            num(check)
        );
    }
    let _ = writeln!(out, "{para}");
    // Splitting.
    if let (Some(sysv), Some(mq)) = (mb(r, Mech::SysvMsg, 65536), mb(r, Mech::PosixMq, 65536)) {
        let _ = writeln!(
            out,
            "- **Queues split big messages.** A System V message holds at most \
             `kernel.msgmax` = {} bytes and a queue `kernel.msgmnb` = {} bytes; a POSIX \
             message at most `fs.mqueue.msgsize_max` = {} bytes, {} to a queue here. So each \
             64 KiB message is several queue messages, each with its own pair of system \
             calls: {} MB/s (System V) and {} MB/s (POSIX) at 64 KiB.",
            limit(r, "kernel.msgmax"),
            limit(r, "kernel.msgmnb"),
            limit(r, "fs.mqueue.msgsize_max"),
            crate::transport::MQ_MAXMSG,
            num(sysv),
            num(mq)
        );
    }
    // Round trips.
    // Those that wait only in the kernel: every ring spins first.
    let spins = |m: Mech| {
        matches!(
            m,
            Mech::ShmSpsc
                | Mech::ShmFutex
                | Mech::ShmFutexYield
                | Mech::ShmFutexSpin
                | Mech::ShmMemfd
        )
    };
    let blocking: Vec<(Mech, &crate::Latency)> = r
        .latency
        .iter()
        .filter(|(m, _)| !spins(*m))
        .map(|(m, l)| (*m, l))
        .collect();
    if let (Some(lo), Some(hi), Some(spsc)) = (
        blocking.iter().min_by_key(|(_, l)| l.median),
        blocking.iter().max_by_key(|(_, l)| l.median),
        lat(r, Mech::ShmSpsc),
    ) {
        let _ = writeln!(
            out,
            "- **Round trips.** Where the receiver blocks in the kernel until the message \
             comes, the median round trip of a 64 B message runs from {} µs ({}) to {} µs \
             ({}), p99 from {} to {} µs. The lock-free ring, whose waiting side spins and then yields instead of sleeping, \
             takes {} µs ({:.1}× the raw spin ping-pong, {} µs), at the price of a CPU busy \
             while it waits. Here {}; to see what sharing one CPU changes, run \
             `taskset -c 0 ipc-bench`.",
            us(lo.1.median),
            lo.0.name(),
            us(hi.1.median),
            hi.0.name(),
            us(blocking.iter().map(|(_, l)| l.p99).min().unwrap_or(0)),
            us(blocking.iter().map(|(_, l)| l.p99).max().unwrap_or(0)),
            us(spsc.median),
            spsc.median as f64 / r.spin.median.max(1) as f64,
            us(r.spin.median),
            r.pinning
        );
    }
    // Rust and C.
    if let Some((median, low, high, n)) = versus(r) {
        let _ = writeln!(
            out,
            "- **Rust itself.** `ipc-bench/c/reference.c` runs the same workload written \
             directly against the system calls in C (same framing, payload, checks and \
             warm-up) beside the Rust transports it has: over {n} pairs the median Rust ÷ C \
             is {median:.2}, the lowest {low:.2}, the highest {high:.2}."
        );
    }
    out.push('\n');
    out
}

/// (median, lowest, highest, pairs) of Rust ÷ C.
fn versus(r: &Results) -> Option<(f64, f64, f64, usize)> {
    let mut ratios: Vec<f64> = r.versus_c.iter().map(|(_, _, rust, c)| rust / c).collect();
    ratios.sort_by(f64::total_cmp);
    Some((
        *ratios.get(ratios.len() / 2)?,
        *ratios.first()?,
        *ratios.last()?,
        ratios.len(),
    ))
}

fn met(yes: bool) -> &'static str {
    if yes { "**met**" } else { "**not met**" }
}

fn targets(r: &Results) -> String {
    let mut out = String::from("### Against the targets\n\n");
    if let (Some(spsc), Some(memcpy)) = (mb(r, Mech::ShmSpsc, 65536), reference(&r.memcpy, 65536)) {
        let _ = writeln!(
            out,
            "- *The lock-free ring at 64 KiB reaches at least half of memcpy bandwidth*: {} \
             ({} MB/s is {:.2}× memcpy's {} MB/s).",
            met(spsc >= memcpy / 2.0),
            num(spsc),
            spsc / memcpy,
            num(memcpy)
        );
    }
    if let Some(spsc) = lat(r, Mech::ShmSpsc) {
        let ratio = spsc.median as f64 / r.spin.median.max(1) as f64;
        let _ = writeln!(
            out,
            "- *Its round trip is within 3× of the raw spin ping-pong*: {} ({:.1}×: {} µs vs {} µs).",
            met(ratio <= 3.0),
            ratio,
            us(spsc.median),
            us(r.spin.median)
        );
    }
    if let Some((median, low, _, n)) = versus(r) {
        // Computed: the rows that had no C figure in this run.
        let without: Vec<&str> = r
            .throughput
            .iter()
            .map(|(m, _)| *m)
            .filter(|m| !r.versus_c.iter().any(|(c, ..)| c == m))
            .map(Mech::name)
            .collect();
        let _ = writeln!(
            out,
            "- *No mechanism more than 20% slower than the same written in C*: {} on the \
             median of {n} pairs ({median:.2}); {} on every pair (lowest {low:.2}).{}",
            met(median >= 0.8),
            if low >= 0.8 { "met" } else { "not met" },
            if without.is_empty() {
                String::new()
            } else {
                format!(" No C figure in this run: {}.", without.join(", "))
            }
        );
    }
    out
}

// ---------------------------------------------------------------------------
// docs/comparison.md: the cost of waiting
// ---------------------------------------------------------------------------

fn idle_of(r: &Results, mech: Mech) -> Option<f64> {
    r.idle
        .iter()
        .find(|i| i.mech == mech)
        .map(crate::Idle::percent)
}

fn comparison_waiting(config: &Config, r: &Results) -> String {
    let mut out = String::from("## The cost of waiting\n\n");
    let _ = writeln!(
        out,
        "A shared-memory ring moves data without a system call, but a side that finds it \
         empty (or full) must wait for the other, and how it waits decides what a message \
         costs. shm-demo's futex ring runs here three ways: **pure spin** (shm-futex-spin: look \
         again and again), **spin, then `sched_yield`** (shm-futex-yield: give the CPU away \
         between looks, but stay runnable), and **spin, then sleep** (shm-futex: after {} µs of looks, \
         say so in shared memory and sleep in `FUTEX_WAIT`; the other side calls `FUTEX_WAKE` \
         only when it sees that flag). Beside them: shm-demo's ring with POSIX semaphores \
         (shm-sem: `sem_post` and `sem_wait` per slot), the lock-free SPSC ring (shm-spsc, spin \
         then yield), and two mechanisms whose receiver blocks in the kernel: a pipe and an \
         eventfd pair. {}, {}; idle receivers waited {:.1} s.\n",
        shm_demo::ipc_futex::SPIN_TIME.as_micros(),
        machine(),
        r.pinning,
        r.idle.first().map_or(0.0, |i| i.seconds)
    );
    out.push_str(&crate::output::waiting_rows(config, r));
    let _ = writeln!(
        out,
        "\nCPU/msg: user + system time of both processes per message at {}; CPU/round trip: \
         the same per 64 B round trip; idle CPU: the receiver's share of one CPU while \
         nothing comes (a blocked receiver still wakes every 100 ms for ipc-bench's \
         watchdog).\n\n![round trip, CPU per round trip and idle CPU by waiting strategy](bench-waiting.svg)\n",
        size_label(config.sizes[0])
    );
    out.push_str("### What this run shows\n\n");
    let pct = |m: Mech| idle_of(r, m).map_or("–".into(), |v| format!("{v:.1}%"));
    let _ = writeln!(
        out,
        "- **Waiting for nothing.** Over {:.1} s with no message, the receiver used {} of a \
         CPU spinning, {} spinning and yielding (`sched_yield` returns at once when nothing \
         else wants the CPU, so the loop keeps it busy), {} with the futex, {} in `sem_wait` \
         and {} in a pipe's `read`.",
        r.idle.first().map_or(0.0, |i| i.seconds),
        pct(Mech::ShmFutexSpin),
        pct(Mech::ShmFutexYield),
        pct(Mech::ShmFutex),
        pct(Mech::ShmSem),
        pct(Mech::Pipe)
    );
    let p50 = |m: Mech| lat(r, m).map_or("–".into(), |l| format!("{} µs", us(l.median)));
    let rt_cpu = |m: Mech| {
        lat(r, m)
            .and_then(crate::Latency::cpu_ns)
            .map_or("–".into(), crate::output::cpu_label)
    };
    let _ = writeln!(
        out,
        "- **A round trip** (p50, and CPU per round trip of both processes): pure spin {} \
         ({}), spin then yield {} ({}), spin then futex {} ({}), semaphores {} ({}), pipe {} \
         ({}), eventfd {} ({}; {} per wake-up, two wake-ups a round trip); the raw spin \
         ping-pong, two cache lines and nothing else, {}.",
        p50(Mech::ShmFutexSpin),
        rt_cpu(Mech::ShmFutexSpin),
        p50(Mech::ShmFutexYield),
        rt_cpu(Mech::ShmFutexYield),
        p50(Mech::ShmFutex),
        rt_cpu(Mech::ShmFutex),
        p50(Mech::ShmSem),
        rt_cpu(Mech::ShmSem),
        p50(Mech::Pipe),
        rt_cpu(Mech::Pipe),
        p50(Mech::Eventfd),
        rt_cpu(Mech::Eventfd),
        lat(r, Mech::Eventfd)
            .and_then(crate::Latency::cpu_ns)
            .map_or("–".into(), |ns| crate::output::cpu_label(ns / 2.0)),
        format_args!("{} µs", us(r.spin.median))
    );
    // memfd against the same ring in an anonymous mapping, size by size.
    // Whether the two rows' lowest–highest ranges overlap: if they do, this
    // run cannot tell the two apart at that size.
    let range = |m: Mech, size: usize| cell(r, m, size).and_then(Cell::mb_range);
    let mut apart = 0;
    let ratios: Vec<String> = config
        .sizes
        .iter()
        .filter_map(|&size| {
            let (m, a) = (mb(r, Mech::ShmMemfd, size)?, mb(r, Mech::ShmFutex, size)?);
            let overlap = match (range(Mech::ShmMemfd, size), range(Mech::ShmFutex, size)) {
                (Some((ml, mh)), Some((al, ah))) => ml <= ah && al <= mh,
                _ => false,
            };
            apart += usize::from(!overlap);
            Some(format!(
                "{} {:.2}×{}",
                size_label(size),
                m / a,
                if overlap { " (ranges overlap)" } else { "" }
            ))
        })
        .collect();
    if !ratios.is_empty() {
        let _ = writeln!(
            out,
            "- **memfd against an anonymous mapping.** shm-memfd is shm-futex's ring in a \
             sealed memfd that each process maps itself; shm-futex's anonymous `MAP_SHARED` \
             mapping is shmem, the memory behind `/dev/shm`, so once mapped both are pages \
             of the same kind. shm-memfd ÷ shm-futex MB/s here: {}. {}",
            ratios.join(", "),
            if apart == 0 {
                "At every size the lowest–highest ranges of the two rows overlap: this run \
                 cannot tell them apart."
                    .to_string()
            } else {
                format!(
                    "At {apart} of {} sizes the ranges of the two rows do not overlap: on this \
                     run's machine that difference is larger than the spread of the runs \
                     (lowest–highest per cell in [bench-results.md](bench-results.md)); a \
                     loaded machine moves whole cells, so compare on a quiet one before \
                     reading it as memfd's cost.",
                    ratios.len()
                )
            }
        );
    }
    out.push('\n');
    out.push_str(&futex_targets(r));
    out
}

/// Issue 17's targets for the futex ring, computed from this run.
fn futex_targets(r: &Results) -> String {
    let mut out = String::from("### Against the targets (the futex ring)\n\n");
    if let (Some(f), Some(p)) = (msgs(r, Mech::ShmFutex, 64), msgs(r, Mech::Pipe, 64)) {
        let _ = writeln!(
            out,
            "- *At least 5× the pipe's messages per second at 64 B*: {} ({:.1}×: {} vs {} msg/s).",
            met(f >= 5.0 * p),
            f / p,
            rate(f),
            rate(p)
        );
    }
    if let (Some(f), Some(p)) = (mb(r, Mech::ShmFutex, 65536), mb(r, Mech::Pipe, 65536)) {
        let _ = writeln!(
            out,
            "- *At least 10× the pipe's MB/s at 64 KiB*: {} ({:.1}×: {} vs {} MB/s).",
            met(f >= 10.0 * p),
            f / p,
            num(f),
            num(p)
        );
    }
    let twins: Vec<f64> = r
        .versus_c
        .iter()
        .filter(|(m, ..)| *m == Mech::ShmFutex)
        .map(|(_, _, rust, c)| rust / c)
        .collect();
    if twins.is_empty() {
        let _ = writeln!(
            out,
            "- *Within 0.8× of its C twin at every size*: not measured in this run (no C \
             twin of the futex ring ran)."
        );
    } else {
        let low = twins.iter().copied().fold(f64::INFINITY, f64::min);
        let _ = writeln!(
            out,
            "- *Within 0.8× of its C twin at every size*: {} (Rust ÷ C lowest {low:.2} over {} sizes).",
            met(low >= 0.8),
            twins.len()
        );
    }
    if let Some(f) = lat(r, Mech::ShmFutex) {
        let ratio = f.median as f64 / r.spin.median.max(1) as f64;
        let _ = writeln!(
            out,
            "- *64 B round trip p50 within 3× of the raw spin ping-pong*: {} ({ratio:.1}×: {} µs vs {} µs).",
            met(ratio <= 3.0),
            us(f.median),
            us(r.spin.median)
        );
    }
    if let Some(idle) = r.idle.iter().find(|i| i.mech == Mech::ShmFutex) {
        let _ = writeln!(
            out,
            "- *An idle futex receiver under 2% of a CPU*: {} ({:.2}% over {:.1} s).",
            met(idle.percent() < 2.0),
            idle.percent(),
            idle.seconds
        );
    }
    out
}
