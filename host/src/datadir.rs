//! The data dir on disk: created private, checked at start.
//!
//! It holds the audit signing key, the database (unredacted idempotency
//! answers, pending approvals' arguments) and compiled artifacts, so it is
//! created `0700` and its files `0600`; a dir or file that others may read
//! is reported at start (not silently changed: the operator may share it on
//! purpose).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Create `dir` (and missing parents) readable by its owner only.
pub fn create(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| Error::internal(format!("cannot create data dir {}: {e}", dir.display())))
}

/// Create `path` empty, readable by its owner only, unless it exists.
/// (SQLite gives the files it adds beside a database, `-wal` and `-shm`,
/// the database file's permissions.)
pub fn create_private_file(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::internal(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

/// The data dir and the files directly in it that group or others may
/// access, with their modes.
pub fn too_open(dir: &Path) -> Vec<(PathBuf, u32)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| m.permissions().mode() & 0o777)
        };
        let mut out = Vec::new();
        if let Some(m) = mode(dir).filter(|m| m & 0o077 != 0) {
            out.push((dir.to_path_buf(), m));
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if let Some(m) = mode(&path).filter(|m| m & 0o077 != 0) {
                    out.push((path, m));
                }
            }
        }
        out
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Vec::new()
    }
}

/// Log a warning for each path [`too_open`] finds.
pub fn warn_if_open(dir: &Path) {
    for (path, mode) in too_open(dir) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "data dir path is readable by group or others; it holds secrets (chmod 700 the dir, 600 its files)"
        );
    }
}
