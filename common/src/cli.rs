//! A tiny command-line parser for the options every demo shares.
//!
//! No extra dependency and no derive magic: a demo's `main` reads the
//! arguments in a plain `match`, so a student sees every option:
//!
//! ```
//! # use common::cli::Args;
//! # fn parse() -> anyhow::Result<()> {
//! let mut args = Args::new(["--count", "10", "--quiet"]);
//! let (mut count, mut quiet) = (5, false);
//! while let Some(arg) = args.next() {
//!     match arg.as_str() {
//!         "--count" => count = args.number("--count", 1, 1_000_000)?,
//!         "--quiet" => quiet = true,
//!         other => return Err(args.unknown(other)),
//!     }
//! }
//! # assert_eq!((count, quiet), (10, true));
//! # Ok(()) }
//! # parse().unwrap();
//! ```
//!
//! The same words mean the same in every demo: `--count N` messages,
//! `--size BYTES` per message, `--quiet` (no line per message), `-h/--help`.
//! Every mistake becomes a [`UsageError`](crate::error::UsageError) (exit 2)
//! whose text names the option.

use std::collections::VecDeque;
use std::ffi::OsString;

use crate::error::{ShowHelp, usage};

/// Default number of messages for a demo run.
pub const DEFAULT_COUNT: u64 = 5;
/// Default message size in bytes.
pub const DEFAULT_SIZE: usize = 64;
/// Largest `--count` any demo accepts: enough for a long run, small enough
/// that counters and byte totals cannot overflow.
pub const MAX_COUNT: u64 = 1_000_000_000;

/// The remaining command-line arguments.
#[derive(Debug)]
pub struct Args {
    rest: VecDeque<String>,
    help: &'static str,
}

impl Args {
    /// The process's arguments without the program name; `help` is the text
    /// printed for `-h`/`--help`.
    pub fn from_env(help: &'static str) -> anyhow::Result<Args> {
        let mut rest = VecDeque::new();
        for arg in std::env::args_os().skip(1) {
            rest.push_back(utf8(arg)?);
        }
        Ok(Args { rest, help })
    }

    /// Arguments from a list (for tests and examples).
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Args {
        Args {
            rest: args.into_iter().map(Into::into).collect(),
            help: "",
        }
    }

    /// If the first argument is one of `roles` (`sender`, `receiver`, ...),
    /// take it. An option or nothing leaves the role empty (the one-terminal
    /// scenario); any other word is a usage error.
    pub fn role(&mut self, roles: &[&str]) -> anyhow::Result<Option<String>> {
        match self.rest.front() {
            Some(first) if !first.starts_with('-') => {
                if roles.contains(&first.as_str()) {
                    Ok(self.rest.pop_front())
                } else {
                    Err(usage(format!(
                        "unknown role '{first}': expected one of {}",
                        roles.join(", ")
                    )))
                }
            }
            _ => Ok(None),
        }
    }

    /// The next argument. `--name=value` is split so that the value is
    /// returned by the following [`value`](Self::value) call.
    /// `-h`/`--help` anywhere stops parsing with the help text.
    #[allow(clippy::should_implement_trait)] // fallible by design; not an Iterator
    pub fn next(&mut self) -> Option<String> {
        let arg = self.rest.pop_front()?;
        // (No let-chain here: this file also builds in edition 2021.)
        if let Some((name, value)) = arg.split_once('=').filter(|_| arg.starts_with("--")) {
            self.rest.push_front(value.to_string());
            return Some(name.to_string());
        }
        Some(arg)
    }

    /// `Err` carrying the help text if `arg` is `-h` or `--help`.
    fn check_help(&self, arg: &str) -> anyhow::Result<()> {
        if arg == "-h" || arg == "--help" {
            return Err(ShowHelp(self.help).into());
        }
        Ok(())
    }

    /// The value that follows `option`.
    pub fn value(&mut self, option: &str) -> anyhow::Result<String> {
        match self.rest.pop_front() {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(usage(format!("{option} needs a value, got an empty one"))),
            None => Err(usage(format!("{option} needs a value"))),
        }
    }

    /// The whole number that follows `option`, which must lie in `min..=max`.
    pub fn number<T>(&mut self, option: &str, min: T, max: T) -> anyhow::Result<T>
    where
        T: TryFrom<u64> + TryInto<u64> + Copy,
    {
        let text = self.value(option)?;
        // u64 holds every u32/usize here, so these conversions cannot fail.
        let (min, max) = (
            min.try_into().unwrap_or(u64::MAX),
            max.try_into().unwrap_or(u64::MAX),
        );
        let n: u64 = match text.parse() {
            Ok(n) => n,
            // All digits but no u64 holds it: say "too large", not "not a number".
            Err(_) if text.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(usage(format!(
                    "{option} {text} is too large: the most is {max}"
                )));
            }
            Err(_) => {
                return Err(usage(format!(
                    "{option} expects a whole number from {min} to {max}, got '{text}'"
                )));
            }
        };
        if n < min || n > max {
            return Err(usage(format!(
                "{option} must be from {min} to {max}, got {n}"
            )));
        }
        T::try_from(n).map_err(|_| usage(format!("{option} {n} does not fit this machine")))
    }

    /// The POSIX IPC name that follows `option` (`--name`): a slash, then
    /// 1 to `max` characters with no other slash (shm, mq and named
    /// semaphores all take this form; `max` leaves room for what a demo
    /// adds to the name within NAME_MAX).
    pub fn posix_name(&mut self, option: &str, max: usize) -> anyhow::Result<String> {
        let name = self.value(option)?;
        let rest = name.strip_prefix('/').unwrap_or("");
        if rest.is_empty() || rest.contains('/') || rest.len() > max || rest.contains('\0') {
            return Err(usage(format!(
                "{option} {name:?} is not a valid name: use a slash then up to {max} characters \
                 without a slash, e.g. /demo"
            )));
        }
        // Linux keeps these objects as files (/dev/shm/NAME, /dev/mqueue/NAME):
        // "/." and "/.." would name the directory itself or its parent.
        if rest == "." || rest == ".." {
            return Err(usage(format!(
                "{option} {name:?} is not a valid name: '.' and '..' name directories, \
                 not objects; use e.g. /demo"
            )));
        }
        Ok(name)
    }

    /// A usage error for an argument nobody recognised.
    pub fn unknown(&self, arg: &str) -> anyhow::Error {
        if let Err(help) = self.check_help(arg) {
            return help;
        }
        if arg.starts_with('-') {
            usage(format!("unknown option '{arg}'"))
        } else {
            usage(format!("unexpected argument '{arg}'"))
        }
    }
}

fn utf8(arg: OsString) -> anyhow::Result<String> {
    arg.into_string()
        .map_err(|raw| usage(format!("argument {raw:?} is not valid UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{UsageError, find_in_chain};

    fn usage_text(err: anyhow::Error) -> String {
        find_in_chain::<UsageError>(&err)
            .expect("a usage error")
            .0
            .clone()
    }

    #[test]
    fn numbers_and_flags() {
        let mut args = Args::new(["--count", "7", "--size=128", "--quiet"]);
        assert_eq!(args.next().as_deref(), Some("--count"));
        assert_eq!(args.number("--count", 1u64, 10).unwrap(), 7);
        assert_eq!(args.next().as_deref(), Some("--size"));
        assert_eq!(args.number("--size", 8usize, 4096).unwrap(), 128);
        assert_eq!(args.next().as_deref(), Some("--quiet"));
        assert_eq!(args.next(), None);
    }

    #[test]
    fn bad_numbers_name_the_option() {
        for (text, want) in [
            ("abc", "expects a whole number"),
            ("-5", "expects a whole number"),
            ("1.5", "expects a whole number"),
            ("99999999999999999999", "too large"),
            ("0", "must be from 1 to 10"),
            ("11", "must be from 1 to 10"),
            ("", "needs a value"),
        ] {
            let mut args = Args::new([text]);
            let msg = usage_text(args.number("--count", 1u64, 10).unwrap_err());
            assert!(msg.contains("--count"), "{msg}");
            assert!(msg.contains(want), "{text}: {msg}");
        }
        let mut args = Args::new(Vec::<String>::new());
        let msg = usage_text(args.number("--size", 8usize, 16).unwrap_err());
        assert_eq!(msg, "--size needs a value");
    }

    #[test]
    fn roles() {
        let mut args = Args::new(["sender", "--count", "3"]);
        assert_eq!(
            args.role(&["sender", "receiver"]).unwrap().as_deref(),
            Some("sender")
        );
        let mut args = Args::new(["--count", "3"]);
        assert_eq!(args.role(&["sender"]).unwrap(), None);
        let mut args = Args::new(["sendr"]);
        let msg = usage_text(args.role(&["sender", "receiver"]).unwrap_err());
        assert!(msg.contains("'sendr'") && msg.contains("sender, receiver"));
    }

    #[test]
    fn posix_names() {
        assert_eq!(
            Args::new(["/demo"]).posix_name("--name", 250).unwrap(),
            "/demo"
        );
        for bad in ["demo", "/", "/a/b", &format!("/{}", "x".repeat(11))] {
            let msg = usage_text(Args::new([bad]).posix_name("--name", 10).unwrap_err());
            assert!(
                msg.starts_with("--name ") && msg.contains("up to 10 characters"),
                "{bad}: {msg}"
            );
        }
        for bad in ["/.", "/.."] {
            let msg = usage_text(Args::new([bad]).posix_name("--name", 10).unwrap_err());
            assert!(msg.contains("name directories"), "{bad}: {msg}");
        }
        assert_eq!(
            Args::new(["/..x"]).posix_name("--name", 10).unwrap(),
            "/..x"
        );
    }

    #[test]
    fn help_and_unknown() {
        let args = Args::new(Vec::<String>::new());
        assert!(args.unknown("--help").downcast_ref::<ShowHelp>().is_some());
        assert!(args.unknown("-h").downcast_ref::<ShowHelp>().is_some());
        assert_eq!(
            usage_text(args.unknown("--bogus")),
            "unknown option '--bogus'"
        );
        assert_eq!(usage_text(args.unknown("x")), "unexpected argument 'x'");
    }
}
