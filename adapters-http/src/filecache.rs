//! The response cache behind `--use-filecache`: successful responses stored on
//! disk, keyed by method, full URL and body, replayed while younger than the TTL,
//! the oldest removed when the cache grows past its size. Files are owner-only:
//! responses may hold private data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sluicegate_core::{Error, ErrorKind, Result};

/// A directory of cached responses.
#[derive(Debug, Clone)]
pub(crate) struct FileCache {
    dir: PathBuf,
    ttl: Duration,
    max_bytes: u64,
}

/// FNV-1a, 64 bits: stable across runs and builds (the key is a file name).
fn fnv1a(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("file cache: cannot {what} {}", path.display()),
    )
    .with_source(e)
}

/// A cached response: where its body is, and its headers.
pub(crate) struct Hit {
    pub(crate) body: PathBuf,
    pub(crate) headers: HeaderMap,
}

impl FileCache {
    pub(crate) fn new(dir: PathBuf, ttl: Duration, max_bytes: u64) -> Self {
        Self {
            dir,
            ttl,
            max_bytes,
        }
    }

    /// The cache key of a request.
    pub(crate) fn key(method: &str, url: &str, body: &[u8]) -> String {
        let parts: [&[u8]; 3] = [method.as_bytes(), url.as_bytes(), body];
        format!(
            "{:016x}{:016x}",
            fnv1a(0, &parts),
            fnv1a(0x5bd1_e995, &parts)
        )
    }

    fn body_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.body"))
    }

    fn headers_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.headers.json"))
    }

    /// The cached response for `key`, if present and fresh.
    pub(crate) fn lookup(&self, key: &str) -> Option<Hit> {
        let body = self.body_path(key);
        let headers_path = self.headers_path(key);
        let modified = std::fs::metadata(&headers_path).ok()?.modified().ok()?;
        if SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default()
            > self.ttl
            || !body.exists()
        {
            return None;
        }
        let text = std::fs::read_to_string(&headers_path).ok()?;
        let pairs: Vec<(String, String)> = serde_json::from_str(&text).ok()?;
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                headers.append(k, v);
            }
        }
        Some(Hit { body, headers })
    }

    /// Starts storing a response for `key`; nothing is visible until `commit`.
    pub(crate) fn writer(&self, key: &str, headers: &HeaderMap) -> Result<CacheWriter> {
        create_private_dir(&self.dir)?;
        let tmp = self
            .dir
            .join(format!("{key}.{}.partial", std::process::id()));
        let file = private_file(&tmp)?;
        let pairs: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "set-cookie" | "authorization"))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        Ok(CacheWriter {
            cache: self.clone(),
            key: key.to_owned(),
            tmp,
            file: std::io::BufWriter::new(file),
            headers: serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into()),
        })
    }

    /// Removes the oldest responses while the cache is larger than its cap.
    fn enforce_cap(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut bodies: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "body"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = bodies.iter().map(|b| b.1).sum();
        bodies.sort();
        for (_, len, path) in bodies {
            if total <= self.max_bytes {
                break;
            }
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(path.with_extension("headers.json"));
            total = total.saturating_sub(len);
        }
    }
}

/// Writes one response into the cache.
pub(crate) struct CacheWriter {
    cache: FileCache,
    key: String,
    tmp: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    headers: String,
}

impl CacheWriter {
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.file
            .write_all(chunk)
            .map_err(|e| io("write", &self.tmp, e))
    }

    /// Makes the stored response visible.
    pub(crate) fn commit(mut self) -> Result<()> {
        self.file.flush().map_err(|e| io("write", &self.tmp, e))?;
        let body = self.cache.body_path(&self.key);
        std::fs::rename(&self.tmp, &body).map_err(|e| io("store", &body, e))?;
        let headers = self.cache.headers_path(&self.key);
        let mut f = private_file(&headers)?;
        f.write_all(self.headers.as_bytes())
            .map_err(|e| io("write", &headers, e))?;
        self.cache.enforce_cap();
        Ok(())
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        // Never committed (an error mid-body): leave nothing behind.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("protect", dir, e))?;
    }
    Ok(())
}

fn private_file(path: &Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| io("create", path, e))
}

/// Removes every cached response under `dir`; returns how many were removed.
pub fn clear_file_cache(dir: &Path) -> Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("read", dir, e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "body") {
            removed += 1;
        }
        std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_replays_expires_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(dir.path().join("c"), Duration::from_secs(60), 10);
        let key = FileCache::key("GET", "http://x/a?p=1", b"");
        assert_ne!(key, FileCache::key("GET", "http://x/a?p=2", b""));
        assert_ne!(key, FileCache::key("POST", "http://x/a?p=1", b"x"));
        assert!(cache.lookup(&key).is_none());
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static("<http://x/a?p=2>; rel=next"),
        );
        h.insert("set-cookie", HeaderValue::from_static("secret"));
        let mut w = cache.writer(&key, &h).unwrap();
        w.write(b"hello").unwrap();
        w.commit().unwrap();
        let hit = cache.lookup(&key).unwrap();
        assert_eq!(std::fs::read(&hit.body).unwrap(), b"hello");
        assert_eq!(hit.headers["link"], "<http://x/a?p=2>; rel=next");
        assert!(
            hit.headers.get("set-cookie").is_none(),
            "cookies are not cached"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&hit.body).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }

        // A second response pushes the total over 10 bytes: the oldest goes.
        let key2 = FileCache::key("GET", "http://x/b", b"");
        let mut w = cache.writer(&key2, &HeaderMap::new()).unwrap();
        w.write(b"world!!").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        w.commit().unwrap();
        assert!(cache.lookup(&key2).is_some());
        assert!(
            cache.lookup(&key).is_none(),
            "evicted to stay under the cap"
        );

        let expired = FileCache::new(dir.path().join("c"), Duration::ZERO, 1000);
        std::thread::sleep(Duration::from_millis(5));
        assert!(expired.lookup(&key2).is_none());
        assert_eq!(clear_file_cache(&dir.path().join("c")).unwrap(), 1);
    }

    #[test]
    fn an_unfinished_response_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(dir.path().to_path_buf(), Duration::from_secs(60), 1000);
        let mut w = cache.writer("k", &HeaderMap::new()).unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
