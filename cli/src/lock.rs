//! One run per sync key at a time: an exclusive lock on `<state dir>/<key>.lock`,
//! held while that key syncs with `--apply`. Two runs of one key would interleave
//! their writes and overwrite each other's checkpoints; the second is refused
//! instead. The operating system releases the lock when the process ends, however
//! it ends (`kill -9` included), so a crashed run never blocks the next one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use sluicegate_core::{Error, ErrorKind, Result};

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the lock of `key` in `dir` (created owner-only if missing), or says
/// which process holds it.
pub fn lock(dir: &Path, key: &str) -> Result<RunLock> {
    crate::state::create_private_dir(dir)?;
    lock_file(dir.join(format!("{}.lock", file_safe(key))), key)
}

/// Takes the lock of every key that has a lock file in `dir` (every key that
/// ever ran with this state), or says which key is running. What `state reset`
/// of the whole state holds while it moves the file aside.
pub fn lock_all(dir: &Path) -> Result<Vec<RunLock>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Checkpoint,
                format!("cannot list {}: {e}", dir.display()),
            ));
        }
    };
    let mut held = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "lock") {
            let key = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            held.push(lock_file(path, &key)?);
        }
    }
    Ok(held)
}

fn lock_file(path: PathBuf, key: &str) -> Result<RunLock> {
    let io = |action: &str, path: &Path, e: std::io::Error| {
        Error::new(
            ErrorKind::Checkpoint,
            format!("cannot {action} {}: {e}", path.display()),
        )
    };
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .map_err(|e| io("open the lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => {
            // Who holds it, for the message of a refused run.
            let _ = file.set_len(0);
            let _ = write!(file, "{}", std::process::id());
            let _ = file.flush();
            Ok(RunLock { _file: file, path })
        }
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.rewind();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::from("another process"),
                pid => format!("process {pid}"),
            };
            Err(Error::new(
                ErrorKind::Checkpoint,
                format!(
                    "sync '{key}' is already running ({holder} holds {}); wait for it to finish or stop it, \
                     then run again: it resumes from the last checkpoint",
                    path.display()
                ),
            ))
        }
        Err(TryLockError::Error(e)) => Err(io("lock", &path, e)),
    }
}

/// A sync key or stream name as a readable, safe file name: ASCII letters,
/// digits, `-` and `_` kept, anything else `_`. Names the lock files.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_of_a_key_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = lock(&state, "shop/products").unwrap();
        assert!(first.path().ends_with("shop_products.lock"));
        let err = lock(&state, "shop/products").unwrap_err().to_string();
        assert!(
            err.contains("sync 'shop/products' is already running")
                && err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        // Another key is independent.
        let other = lock(&state, "orders").unwrap();
        drop(first);
        let again = lock(&state, "shop/products").unwrap();
        // The whole state is held by nobody else only when no key runs.
        let err = lock_all(&state).unwrap_err().to_string();
        assert!(err.contains("is already running"), "{err}");
        drop((again, other));
        assert_eq!(lock_all(&state).unwrap().len(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&state).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "the state directory is owner-only");
        }
    }
}
