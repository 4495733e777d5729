//! Writing an output file without being tricked into writing another.
//!
//! `std::fs::write(PATH)` opens PATH with `O_CREAT|O_TRUNC` and follows a
//! symlink: in a world-writable directory (`/tmp`) anybody can plant
//! `PATH -> /home/you/.bashrc` and have it overwritten. So: refuse a PATH
//! that is a symlink or not ours, write a new temporary file in the same
//! directory (`O_CREAT|O_EXCL|O_NOFOLLOW`: never an existing file or a
//! link), set its mode explicitly, then `rename` it over PATH. `rename`
//! replaces the directory entry itself and never follows a link, so even a
//! symlink planted after the check is replaced, not written through.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use common::cleanup::unique_name;
use nix::unistd::geteuid;

/// Fails unless PATH is absent, or a regular file of ours; its directory
/// must exist.
pub fn check_target(path: &Path) -> Result<()> {
    let dir = directory(path);
    if !dir.is_dir() {
        bail!(
            "cannot write {}: {} is not a directory",
            path.display(),
            dir.display()
        );
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("lstat({})", path.display())),
    };
    if meta.file_type().is_symlink() {
        bail!(
            "refusing to write {}: it is a symbolic link (remove it, or choose another path)",
            path.display()
        );
    }
    if !meta.is_file() {
        bail!("refusing to write {}: not a regular file", path.display());
    }
    let euid = geteuid().as_raw();
    if meta.uid() != euid {
        bail!(
            "refusing to replace {}: it belongs to uid {}, not to us (uid {euid})",
            path.display(),
            meta.uid()
        );
    }
    Ok(())
}

/// The directory PATH's name lives in.
fn directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Replace PATH with `contents`, mode 0644, as described above.
pub fn write_replacing(path: &Path, contents: &[u8]) -> Result<()> {
    check_target(path)?;
    let name = path
        .file_name()
        .with_context(|| format!("{}: no file name", path.display()))?;
    let temp = directory(path).join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        unique_name("ipc-bench")
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true) // O_CREAT|O_EXCL
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o644)
        .open(&temp)
        .with_context(|| format!("open({}, O_CREAT|O_EXCL|O_NOFOLLOW)", temp.display()))?;
    let written = (|| -> Result<()> {
        // The umask may have taken bits off the 0644 asked for above.
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("fchmod({}, 0644)", temp.display()))?;
        file.write_all(contents)
            .with_context(|| format!("write({})", temp.display()))?;
        file.sync_all()
            .with_context(|| format!("fsync({})", temp.display()))?;
        std::fs::rename(&temp, path)
            .with_context(|| format!("rename({}, {})", temp.display(), path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}
