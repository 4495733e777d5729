//! Error types and the one `main` wrapper every demo uses.
//!
//! Demos return `anyhow::Result` and add context that names the syscall and
//! the object, e.g. `.with_context(|| format!("mkfifo({path})"))`, so an
//! error reads `mkfifo(/tmp/x): File exists`. [`run`] turns the outcome into
//! an exit status:
//!
//! | outcome                          | printed                        | status   |
//! |----------------------------------|--------------------------------|----------|
//! | success                          | nothing                        | 0        |
//! | `-h`/`--help` ([`ShowHelp`])     | the usage text, on stdout      | 0        |
//! | bad command line ([`UsageError`])| one line on stderr             | 2        |
//! | stopped by a signal ([`Interrupted`], or any error after a stop signal) | one line on stderr | 128+sig |
//! | anything else                    | the error chain, one line      | 1        |
//!
//! Never a panic or a backtrace: the chain is printed with `{:#}`, which
//! joins the contexts with `: `.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};

/// A mistake on the command line; the message names the option and the fix.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Build a usage error (exit status 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// `-h`/`--help` was given: [`run`] prints the text on stdout and exits 0.
#[derive(Debug)]
pub struct ShowHelp(pub &'static str);

impl fmt::Display for ShowHelp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("help requested")
    }
}

impl std::error::Error for ShowHelp {}

/// The run was stopped by SIGINT (Ctrl-C), SIGTERM or SIGHUP after cleaning up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted(pub Signal);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted by {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// The stop signal received so far, or 0. Written only by the handler that
/// `cleanup::stop_on_signals` installs; it lives here so that [`run`] can
/// give a stopped run its 128+N without depending on `cleanup`.
pub static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Find an error of type `T` anywhere in the chain, also inside an
/// `io::Error` (a `Read`/`Write` adapter can only report through one).
pub fn find_in_chain<T: std::error::Error + 'static>(err: &anyhow::Error) -> Option<&T> {
    err.chain().find_map(|cause| {
        cause.downcast_ref::<T>().or_else(|| {
            cause
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<T>())
        })
    })
}

/// The first error a narration line met writing to stdout, as an errno
/// (0: none). A closed pipe (EPIPE) is not one: the reader chose to stop
/// (`demo | head`). Anything else (a full disk, `/dev/full`, a closed
/// descriptor) is: [`run`] ends a run that otherwise succeeded with exit 1
/// and this error, rather than 0 for output nobody got.
pub static OUTPUT_ERRNO: AtomicI32 = AtomicI32::new(0);

/// Run a demo's body and turn its outcome into the process exit status.
///
/// `program` is the name printed in front of error lines (`pipe-demo: ...`).
pub fn run(program: &str, body: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    // The signal mask survives fork and exec: a launcher that had signals
    // blocked would keep Ctrl-C from ever reaching the demo (it would stay
    // pending) and hide every lesson that needs a signal delivered. Start
    // from the empty mask a shell gives, before any thread inherits it.
    let unblocked = SigSet::empty()
        .thread_set_mask()
        .context("sigprocmask(SIG_SETMASK, empty set)");
    let err = match unblocked.and_then(|()| body()) {
        Ok(()) => match OUTPUT_ERRNO.load(Ordering::SeqCst) {
            0 => return ExitCode::SUCCESS,
            errno => {
                let err = io::Error::from_raw_os_error(errno);
                let _ = writeln!(io::stderr(), "{program}: error: writing to stdout: {err}");
                return ExitCode::FAILURE;
            }
        },
        Err(err) => err,
    };
    // Writes to stdout/stderr may fail (a closed pipe): there is nobody left
    // to tell, so the result is ignored rather than turned into a panic.
    if let Some(help) = err.downcast_ref::<ShowHelp>() {
        let _ = io::stdout().write_all(help.0.as_bytes());
        return ExitCode::SUCCESS;
    }
    let mut stderr = io::stderr().lock();
    // Stopped by Ctrl-C or SIGTERM: whatever failed afterwards (a child that
    // was stopped too, a write that was cut), the run ends as stopped.
    let stopped = Signal::try_from(STOP_SIGNAL.load(Ordering::SeqCst)).ok();
    if let Some(signal) = stopped.filter(|_| find_in_chain::<Interrupted>(&err).is_none()) {
        let _ = writeln!(
            stderr,
            "{program}: stopped by {signal} ({err:#}), cleaned up"
        );
        return ExitCode::from(128 + signal as u8);
    }
    if let Some(bad) = find_in_chain::<UsageError>(&err) {
        let _ = writeln!(stderr, "{program}: {bad} (see '{program} --help')");
        return ExitCode::from(2);
    }
    if let Some(Interrupted(signal)) = find_in_chain::<Interrupted>(&err) {
        let _ = writeln!(stderr, "{program}: stopped by {signal}, cleaned up");
        // The shell convention for "ended because of signal N".
        return ExitCode::from(128 + *signal as u8);
    }
    let _ = writeln!(stderr, "{program}: error: {err:#}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_are_found_under_context() {
        let err = Err::<(), _>(usage("--count expects a whole number, got 'abc'"))
            .context("parsing the command line")
            .unwrap_err();
        let found = find_in_chain::<UsageError>(&err).expect("usage error in chain");
        assert!(found.0.contains("--count"));
        assert_eq!(run("t", || Err(err)), ExitCode::from(2));
    }

    #[test]
    fn interrupted_is_found_inside_io_error() {
        let io = io::Error::other(Interrupted(Signal::SIGTERM));
        let err = anyhow::Error::new(io).context("read(stdin)");
        assert_eq!(
            find_in_chain::<Interrupted>(&err),
            Some(&Interrupted(Signal::SIGTERM))
        );
        assert_eq!(run("t", || Err(err)), ExitCode::from(128 + 15));
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(run("t", || Ok(())), ExitCode::SUCCESS);
        assert_eq!(run("t", || Err(anyhow::anyhow!("boom"))), ExitCode::FAILURE);
        assert_eq!(
            run("t", || Err(ShowHelp("usage\n").into())),
            ExitCode::SUCCESS
        );
    }

    #[test]
    fn chain_is_one_line() {
        let err = Err::<(), _>(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("write(pipe)")
            .unwrap_err();
        let line = format!("{err:#}");
        assert!(!line.contains('\n'));
        assert!(line.starts_with("write(pipe): "));
    }
}
