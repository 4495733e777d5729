//! Helpers for the end-to-end tests: run the real demo binaries as a user
//! would, with a deadline on everything, and check what they leave behind.
//!
//! Every demo process is started in a process group of its own, so a test
//! can signal it and its forked children together and can check at the end
//! that none of them is still running. Any wait past its deadline kills the
//! group and fails the test instead of hanging CI.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::{self, JoinHandle, sleep};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Deadline for a short demo run. Generous: CI's two cores may be loaded.
pub const SHORT: Duration = Duration::from_secs(60);
/// Deadline for the bulk transfers.
pub const LONG: Duration = Duration::from_secs(180);

/// The path of a workspace binary, building the workspace's binaries once.
///
/// `cargo test` builds only the test targets; the demos' own executables
/// are built here, with the same profile, into the same target directory.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // This test runs from <target>/<profile>/deps/<test>-<hash>.
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("test binary lives in <target>/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--workspace", "--bins", "--quiet"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
        profile_dir
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Make `cmd` start with resource limit `resource` (soft and hard) at
/// `value`, as `ulimit` would in a shell.
pub fn with_rlimit(cmd: &mut Command, resource: libc::__rlimit_resource_t, value: u64) {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: between fork and exec the closure only calls setrlimit,
    // which is async-signal-safe, on a struct copied into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(resource, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A command for a demo binary, in a new process group.
pub fn demo(name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin(name));
    // The demos' opt-in test hook: SIGWINCH interrupts blocked calls, so a
    // signal storm can exercise every EINTR path (common::cleanup).
    cmd.args(args)
        .process_group(0)
        .env("DEMO_EINTR_ON_SIGWINCH", "1");
    cmd
}

/// What a finished process printed and how it ended.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The exit code; fails the test if a signal ended the process.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("ended by a signal: {:?}\n{}", self.status, self.describe()))
    }

    /// Stdout and stderr, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// The last `summary:` line (a run that prints its peer's summary too
    /// ends with its own), parsed into `key=value` pairs.
    pub fn summary(&self) -> Vec<(String, String)> {
        let line = self
            .stdout
            .lines()
            .chain(self.stderr.lines())
            .rfind(|l| l.starts_with("summary: "))
            .unwrap_or_else(|| panic!("no summary line\n{}", self.describe()));
        line["summary: ".len()..]
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// One field of the summary line.
    pub fn summary_field(&self, key: &str) -> String {
        self.summary()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("summary has no {key}\n{}", self.describe()))
    }

    /// Fails the test unless the process ended the way `signal` should end
    /// a demo: 130 after SIGINT, 143 after SIGTERM (cleaned up), killed by
    /// SIGKILL.
    pub fn assert_stopped_by(&self, signal: Signal) {
        self.assert_no_panic();
        match signal {
            Signal::SIGKILL => assert!(
                self.status.code().is_none(),
                "{signal:?}\n{}",
                self.describe()
            ),
            Signal::SIGINT => assert_eq!(self.code(), 130, "{}", self.describe()),
            _ => assert_eq!(self.code(), 143, "{}", self.describe()),
        }
    }

    /// Fails the test unless the run ended well: exit 0, no panic, and a
    /// summary line with errors=0.
    pub fn assert_clean(&self) {
        self.assert_no_panic();
        assert_eq!(self.code(), 0, "{}", self.describe());
        assert_eq!(self.summary_field("errors"), "0", "{}", self.describe());
    }

    /// Fails the test if the process panicked anywhere.
    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked at") && !self.stdout.contains("panicked at"),
            "a process panicked\n{}",
            self.describe()
        );
    }
}

/// A running demo process and its group.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pgid: Pid,
    lines: Option<Receiver<String>>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    seen: Vec<String>,
}

impl Proc {
    /// Start `cmd` (made by [`demo`]), capturing stdout and stderr unless
    /// the caller already redirected them.
    pub fn start(mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().expect("spawn demo");
        let pgid = Pid::from_raw(child.id() as i32);
        let (tx, rx) = channel();
        let stdout = child.stdout.take().map(|out: ChildStdout| {
            thread::spawn(move || {
                let mut all = String::new();
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    all.push_str(&line);
                    all.push('\n');
                    let _ = tx.send(line);
                }
                all
            })
        });
        let stderr = child.stderr.take().map(|mut err: ChildStderr| {
            thread::spawn(move || {
                let mut all = Vec::new();
                let _ = err.read_to_end(&mut all);
                String::from_utf8_lossy(&all).into_owned()
            })
        });
        Proc {
            child,
            pgid,
            lines: Some(rx),
            stdout,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Spawn a demo with no stdin and stdout and stderr captured.
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        Proc::spawn_with(name, args, Stdio::null(), Stdio::piped())
    }

    /// Spawn a demo with the given stdin and stdout (e.g. pipe ends made by
    /// the test: `File::from(fd)`); stderr is captured, and stdout too when
    /// it is `Stdio::piped()`.
    pub fn spawn_with(
        name: &str,
        args: &[&str],
        stdin: impl Into<Stdio>,
        stdout: impl Into<Stdio>,
    ) -> Proc {
        let mut cmd = demo(name, args);
        cmd.stdin(stdin).stdout(stdout).stderr(Stdio::piped());
        Proc::start(cmd)
    }

    pub fn pid(&self) -> Pid {
        self.pgid
    }

    /// True while the demo process has not exited.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Wait until a stdout line satisfies `want`; returns it.
    pub fn wait_for_line(&mut self, want: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let rx = self.lines.as_ref().expect("stdout captured");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill_group();
                    panic!(
                        "no expected line within {timeout:?}; saw:\n{}",
                        self.seen.join("\n")
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "stdout closed before the expected line; saw:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Send `signal` to the demo process only.
    pub fn signal(&self, signal: Signal) {
        kill(self.pgid, signal).expect("kill");
    }

    fn kill_group(&self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }

    /// Wait for the process to exit within `timeout`, then check that its
    /// whole group (forked children included) is gone. Either deadline
    /// passing kills the group and fails the test.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill_group();
                let _ = self.child.wait();
                let out = self.collect_output();
                panic!("timed out after {timeout:?}: a hang\n{out}");
            }
            sleep(Duration::from_millis(10));
        };
        let strays = wait_group_gone(self.pgid, Duration::from_secs(10));
        if !strays {
            self.kill_group();
        }
        let out = self.collect_output_parts();
        let output = Output {
            status,
            stdout: out.0,
            stderr: out.1,
        };
        assert!(
            strays,
            "processes of the demo's group were left running\n{}",
            output.describe()
        );
        output
    }

    fn collect_output_parts(&mut self) -> (String, String) {
        // Dropping the receiver lets the stdout thread run to the end even
        // if nobody reads the lines; it keeps its own full copy.
        self.lines = None;
        let join = |h: Option<JoinHandle<String>>| h.map(|h| h.join().unwrap_or_default());
        (
            join(self.stdout.take()).unwrap_or_default(),
            join(self.stderr.take()).unwrap_or_default(),
        )
    }

    fn collect_output(&mut self) -> String {
        let (o, e) = self.collect_output_parts();
        format!("--- stdout ---\n{o}\n--- stderr ---\n{e}")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A test that failed half-way must not leave processes behind.
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill_group();
            let _ = self.child.wait();
        }
    }
}

/// True once no process of group `pgid` exists (zombies are reaped by
/// their new parent soon after their parent exits), false at the deadline.
pub fn wait_group_gone(pgid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        // Signal 0 checks existence without sending anything.
        if killpg(pgid, None) == Err(Errno::ESRCH) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10));
    }
}

/// An empty file in a fresh private directory, to give `ftok` a path
/// (System V keys); the directory goes when the guard is dropped.
pub fn key_file(prefix: &str) -> (common::cleanup::PrivateDir, String) {
    let dir = common::cleanup::PrivateDir::create(prefix).expect("private dir");
    let path = dir.path().join("key");
    std::fs::write(&path, b"").expect("key file");
    let path = path.to_str().expect("UTF-8 path").to_string();
    (dir, path)
}

/// Run a demo that must refuse its command line: exit 2, exactly one line
/// on stderr, containing `needle` (usually the option's name), no panic.
pub fn assert_usage_error(name: &str, args: &[&str], needle: &str) -> Output {
    let out = run(name, args, SHORT);
    assert_eq!(out.code(), 2, "{name} {args:?}\n{}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{name} {args:?}\n{}", out.describe());
    assert!(lines[0].contains(needle), "{name} {args:?}: {}", lines[0]);
    out
}

/// Run a demo to completion with captured output and no stdin.
pub fn run(name: &str, args: &[&str], timeout: Duration) -> Output {
    let out = Proc::spawn(name, args).finish(timeout);
    out.assert_no_panic();
    out
}
