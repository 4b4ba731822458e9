//! This node's cache of compiled artifacts.
//!
//! An artifact is native code, so where it is kept decides who can run code
//! in the host. Artifacts are never read from the database (whoever can
//! write it, every replica's database user included, could plant one); each
//! node keeps its own, compiled by itself:
//!
//! * `<dir>/<engine fingerprint>/<component sha256>.cwasm`: keyed by what
//!   the code depends on, so an engine with other settings, another
//!   wasmtime, or other bytes never finds a stale file;
//! * directories 0700, files 0600 (only the host's user can plant one), and
//!   a file found otherwise (a symlink, another user's, writable by others)
//!   is deleted, never loaded;
//! * written to a temporary file, fsynced, then renamed into place, never
//!   modified after: a reader sees a whole artifact or none;
//! * bounded: past `max_bytes` in total, the least recently used files (by
//!   modification time, refreshed on use) are deleted. Loaded tools map
//!   their files, so deleting one under them is harmless.

use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Suffix of artifact files.
const SUFFIX: &str = "cwasm";

/// A temporary file older than this belongs to a writer that died.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// One node's artifact files for one engine.
#[derive(Debug)]
pub struct ArtifactCache {
    /// `<root>/<fingerprint>`.
    dir: PathBuf,
    /// Holds one directory per engine fingerprint.
    root: PathBuf,
    max_bytes: u64,
}

impl ArtifactCache {
    /// Open (creating) the cache under `root` for an engine with
    /// `fingerprint` (`Runtime::compatibility`).
    pub fn open(root: &Path, fingerprint: &str, max_bytes: u64) -> Result<ArtifactCache> {
        if fingerprint.is_empty() || !fingerprint.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::internal(format!(
                "engine fingerprint `{fingerprint}` is not a directory name"
            )));
        }
        let dir = root.join(fingerprint);
        for d in [root, dir.as_path()] {
            private_dir(d)?;
        }
        Ok(ArtifactCache {
            dir,
            root: root.to_path_buf(),
            max_bytes,
        })
    }

    /// Where the artifact of the component with `digest` is kept.
    fn path(&self, digest: &str) -> Result<PathBuf> {
        if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::internal(format!(
                "`{digest}` is not a SHA-256 digest"
            )));
        }
        Ok(self.dir.join(format!("{digest}.{SUFFIX}")))
    }

    /// The artifact file of `digest`, if this node has one; marks it used.
    ///
    /// Only a file this cache could have written is used: a regular file
    /// (not a symlink to something else), owned by the user the host runs
    /// as, writable by no one else. Anything else there (planted while the
    /// directory was open to others, or left by a mistaken `chmod`) is
    /// deleted and the component compiled again.
    pub fn get(&self, digest: &str) -> Result<Option<PathBuf>> {
        let path = self.path(digest)?;
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", &path, e)),
        };
        if let Err(why) = self.trusted(&meta) {
            tracing::warn!(
                path = %path.display(),
                "artifact cache: not using a file this host did not write ({why}); compiling again"
            );
            let removed = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| io("removing", &path, e))?;
            return Ok(None);
        }
        // Recently used files are evicted last.
        if let Ok(f) = File::open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(Some(path))
    }

    /// Whether a file found in the cache is one it wrote (see [`Self::get`]).
    fn trusted(&self, meta: &fs::Metadata) -> std::result::Result<(), &'static str> {
        if !meta.is_file() {
            return Err("not a regular file");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: geteuid has no preconditions and cannot fail.
            let host = unsafe { libc::geteuid() };
            if meta.uid() != host {
                return Err("another user's file");
            }
            if meta.mode() & 0o022 != 0 {
                return Err("writable by other users");
            }
        }
        Ok(())
    }

    /// Keep `artifact` as the artifact of `digest`; returns its path. Then
    /// evicts least recently used files past the size bound (never this
    /// one).
    pub fn put(&self, digest: &str, artifact: &[u8]) -> Result<PathBuf> {
        let path = self.path(digest)?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let temp = self.dir.join(format!(
            ".{digest}.{}.{}.tmp",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut f = private_file(&temp)?;
            f.write_all(artifact)?;
            f.sync_all()?;
            fs::rename(&temp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(io("writing", &path, e));
        }
        self.evict(&path);
        Ok(path)
    }

    /// Forget the artifact of `digest` (it failed to load).
    pub fn remove(&self, digest: &str) {
        if let Ok(path) = self.path(digest) {
            let _ = fs::remove_file(path);
        }
    }

    /// Delete least recently used artifacts (of every engine: files of
    /// engines no longer running are never used again) until the total is
    /// under the bound; also temporary files of dead writers.
    fn evict(&self, keep: &Path) {
        let mut files = Vec::new();
        let Ok(engines) = fs::read_dir(&self.root) else {
            return;
        };
        for engine in engines.flatten() {
            let Ok(entries) = fs::read_dir(engine.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".tmp") {
                    if modified.elapsed().is_ok_and(|age| age > STALE_TEMP) {
                        let _ = fs::remove_file(&path);
                    }
                    continue;
                }
                if meta.is_file() && name.ends_with(SUFFIX) {
                    files.push((modified, meta.len(), path));
                }
            }
        }
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

/// Create `dir` if needed, owner-only.
fn private_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("creating", dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io("securing", dir, e))
    }
    #[cfg(not(unix))]
    fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))
}

/// Create a new file, owner-only.
fn private_file(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::internal(format!("artifact cache: {what} {}: {e}", path.display()))
}
