//! Checks that are not the mechanism: what a standard stream is, and
//! refusing one that cannot carry the demo's frames.

use std::os::fd::BorrowedFd;

use anyhow::{Context, Result};
use common::error::usage;
use common::report::Narrator;
use nix::sys::stat::{SFlag, fstat};
use nix::unistd::isatty;

/// The sender's stdout must not be a terminal: the frames are binary.
pub fn stdout_is_not_a_terminal(stdout: BorrowedFd<'_>, say: &Narrator) -> Result<()> {
    if isatty(stdout).unwrap_or(false) {
        return Err(usage(
            "stdout is a terminal, and the messages are binary: pipe them into a receiver, \
             e.g. 'pipe-demo sender | pipe-demo receiver'",
        ));
    }
    say.step(format!("stdout is {}", describe_fd(stdout)));
    Ok(())
}

/// The receiver's stdin must be a pipe (`fstat`: `S_IFIFO`).
pub fn stdin_is_a_pipe(stdin: BorrowedFd<'_>) -> Result<()> {
    let stat = fstat(stdin).context("fstat(stdin)")?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
        return Err(usage(format!(
            "stdin is {}, not a pipe: feed it from a sender, \
             e.g. 'pipe-demo sender | pipe-demo receiver'",
            describe_fd(stdin)
        )));
    }
    Ok(())
}

/// What kind of file a descriptor refers to, for messages.
pub fn describe_fd(fd: BorrowedFd<'_>) -> &'static str {
    let Ok(stat) = fstat(fd) else {
        return "not an open file";
    };
    match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFIFO => "a pipe",
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFCHR if isatty(fd).unwrap_or(false) => "a terminal",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFDIR => "a directory",
        _ => "not a pipe",
    }
}
