//! Memory as the operating system sees it: the process's resident set size,
//! and the figures of the control group it runs in when that group has a
//! memory limit (a container).
//!
//! The budget accounts the bytes of data in flight; this module reads what the
//! whole process really uses. On Linux it reads `/proc/self/status` and the
//! cgroup's files (v1 or v2); elsewhere it returns `None`. A run reads them
//! through one [`MemorySampler`], which the memory monitor, the progress
//! display, the metrics endpoint and the report share.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Memory figures of the current process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessMemory {
    /// Resident set size now.
    pub rss: u64,
    /// Highest resident set size since the process started (the kernel's high
    /// water mark, so short peaks between samples are not missed).
    pub peak_rss: u64,
    /// Virtual memory size now.
    pub virtual_size: u64,
}

/// Reads the current process's memory figures, where the platform allows.
///
/// The budget accounts the bytes of data in flight; this module reads what the
/// whole process really uses, for progress lines and reports. On Linux it reads
/// `/proc/self/status`; elsewhere it returns `None`.
pub fn process_memory() -> Option<ProcessMemory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status(&status)
}

fn parse_status(status: &str) -> Option<ProcessMemory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(ProcessMemory {
        rss: field("VmRSS:")?,
        peak_rss: field("VmHWM:")?,
        virtual_size: field("VmSize:").unwrap_or(0),
    })
}

/// The memory figures of the control group (cgroup) the process runs in, when
/// it or one of its parents has a memory limit: the limit a container sets.
/// Usage is what the kernel charges to the group (page cache included), which
/// is what its out-of-memory killer compares with the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupMemory {
    /// Bytes charged to the group now.
    pub usage: u64,
    /// The group's memory limit (the smallest on its path), in bytes.
    pub limit: u64,
}

/// Where the process's cgroup keeps its memory figures: the file with its
/// usage, and the files with the limits of it and its parents.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupFiles {
    usage: PathBuf,
    limits: Vec<PathBuf>,
}

/// Reads the memory figures of the process's cgroup; `None` when it has no
/// memory limit or the platform has no cgroups.
pub fn cgroup_memory() -> Option<CgroupMemory> {
    static FILES: OnceLock<Option<CgroupFiles>> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        cgroup_files(Path::new("/sys/fs/cgroup"), &own)
    });
    read_cgroup(files.as_ref()?)
}

/// The files of the memory controller for `own` (the text of
/// `/proc/self/cgroup`) under `mount`: cgroup v1's `memory` hierarchy if there
/// is one, else the unified (v2) hierarchy.
fn cgroup_files(mount: &Path, own: &str) -> Option<CgroupFiles> {
    let entry = |pick: &dyn Fn(&str) -> bool| {
        own.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            pick(controllers).then(|| path.trim_start_matches('/').to_owned())
        })
    };
    let (root, path, usage, limit) =
        if let Some(path) = entry(&|c| c.split(',').any(|c| c == "memory")) {
            let root = mount.join("memory");
            (root, path, "memory.usage_in_bytes", "memory.limit_in_bytes")
        } else {
            let path = entry(&|c| c.is_empty())?;
            (mount.to_path_buf(), path, "memory.current", "memory.max")
        };
    let own_dir = root.join(&path);
    if !own_dir.join(usage).exists() {
        return None;
    }
    let limits = own_dir
        .ancestors()
        .take_while(|dir| dir.starts_with(&root))
        .map(|dir| dir.join(limit))
        .filter(|file| file.exists())
        .collect();
    Some(CgroupFiles {
        usage: own_dir.join(usage),
        limits,
    })
}

fn read_cgroup(files: &CgroupFiles) -> Option<CgroupMemory> {
    // cgroup v1 writes "no limit" as a huge number (close to i64::MAX, rounded
    // to a page), v2 as `max`.
    const NO_LIMIT: u64 = 1 << 62;
    let number =
        |file: &Path| -> Option<u64> { std::fs::read_to_string(file).ok()?.trim().parse().ok() };
    let limit = files
        .limits
        .iter()
        .filter_map(|file| number(file))
        .filter(|&limit| limit < NO_LIMIT)
        .min()?;
    Some(CgroupMemory {
        usage: number(&files.usage)?,
        limit,
    })
}

/// One reading of the memory figures: the process's, and its control group's
/// when that has a memory limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemorySample {
    /// The process's figures.
    pub process: ProcessMemory,
    /// The container's figures, when the process runs under a memory limit.
    pub cgroup: Option<CgroupMemory>,
}

impl MemorySample {
    /// A sample of a resident set alone (its peak too), from a probe that
    /// knows nothing else.
    pub fn of_rss(rss: u64) -> Self {
        Self {
            process: ProcessMemory {
                rss,
                peak_rss: rss,
                virtual_size: 0,
            },
            cgroup: None,
        }
    }
}

type SampleProbe = Box<dyn Fn() -> Option<MemorySample> + Send + Sync>;

/// The run's one reader of memory figures.
///
/// [`sample`](Self::sample) reads them now (the memory monitor does, on its
/// interval); [`latest`](Self::latest) returns the last reading while it is
/// younger than [`MemorySampler::FRESH`], and reads afresh otherwise. So the
/// progress display, the metrics endpoint and the report, however often they
/// ask, add at most one reading per [`FRESH`](Self::FRESH) between the
/// monitor's, and all show the same figures.
#[derive(Clone)]
pub struct MemorySampler {
    inner: Arc<SamplerInner>,
}

struct SamplerInner {
    probe: SampleProbe,
    last: Mutex<Option<(Instant, MemorySample)>>,
    reads: AtomicU64,
}

impl MemorySampler {
    /// How long a reading serves [`latest`](Self::latest).
    pub const FRESH: Duration = Duration::from_millis(200);

    /// A sampler of this process (and its cgroup).
    pub fn new() -> Self {
        Self::with_probe(|| {
            Some(MemorySample {
                process: process_memory()?,
                cgroup: cgroup_memory(),
            })
        })
    }

    /// A sampler reading its figures from `probe` (tests, or another source of
    /// the figures).
    pub fn with_probe(probe: impl Fn() -> Option<MemorySample> + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(SamplerInner {
                probe: Box::new(probe),
                last: Mutex::new(None),
                reads: AtomicU64::new(0),
            }),
        }
    }

    /// Reads the figures now; `None` where the platform has none.
    pub fn sample(&self) -> Option<MemorySample> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        let sample = (self.inner.probe)()?;
        *self.last() = Some((Instant::now(), sample));
        Some(sample)
    }

    /// The last reading if it is younger than [`FRESH`](Self::FRESH), else a
    /// new one.
    pub fn latest(&self) -> Option<MemorySample> {
        let last = *self.last();
        match last {
            Some((at, sample)) if at.elapsed() < Self::FRESH => Some(sample),
            _ => self.sample(),
        }
    }

    /// How many times the figures were read.
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(Ordering::Relaxed)
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Option<(Instant, MemorySample)>> {
        self.inner
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for MemorySampler {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemorySampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySampler")
            .field("last", &*self.last())
            .field("reads", &self.reads())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_smallest_limit_on_the_path_in_v1_and_v2() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path();
        let write = |rel: &str, text: &str| {
            let file = mount.join(rel);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        };
        // v1: the job's group has no limit of its own; its parent has one.
        write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        write("memory/jobs/memory.limit_in_bytes", "536870912\n");
        write(
            "memory/jobs/one/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write("memory/jobs/one/memory.usage_in_bytes", "104857600\n");
        let own = "9:name=systemd:/\n4:memory:/jobs/one\n0::/\n";
        let files = cgroup_files(mount, own).unwrap();
        assert_eq!(
            read_cgroup(&files),
            Some(CgroupMemory {
                usage: 100 << 20,
                limit: 512 << 20
            })
        );
        // v2: `max` is no limit; without any limit there are no figures.
        write("app/memory.max", "max\n");
        write("app/memory.current", "4096\n");
        let files = cgroup_files(mount, "0::/app\n").unwrap();
        assert_eq!(read_cgroup(&files), None);
        write("app/memory.max", "268435456\n");
        assert_eq!(
            read_cgroup(&files),
            Some(CgroupMemory {
                usage: 4096,
                limit: 256 << 20
            })
        );
        // A group whose files are not there (another mount namespace).
        assert_eq!(cgroup_files(mount, "0::/elsewhere\n"), None);
    }

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tx\nVmPeak:\t  900 kB\nVmSize:\t  800 kB\nVmHWM:\t   300 kB\nVmRSS:\t   200 kB\n";
        let mem = parse_status(text).unwrap();
        assert_eq!(mem.rss, 200 * 1024);
        assert_eq!(mem.peak_rss, 300 * 1024);
        assert_eq!(mem.virtual_size, 800 * 1024);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let mem = process_memory().expect("linux exposes /proc/self/status");
        assert!(mem.rss > 0 && mem.peak_rss >= mem.rss);
    }

    #[test]
    fn the_sampler_shares_a_fresh_reading_and_reads_again_when_it_is_old() {
        let n = Arc::new(AtomicU64::new(0));
        let counter = n.clone();
        let sampler = MemorySampler::with_probe(move || {
            Some(MemorySample::of_rss(
                counter.fetch_add(1, Ordering::Relaxed) + 1,
            ))
        });
        assert_eq!(
            sampler.latest().unwrap().process.rss,
            1,
            "nothing read yet: reads"
        );
        let shared = sampler.clone();
        assert_eq!(shared.latest().unwrap().process.rss, 1, "fresh: shared");
        assert_eq!(sampler.sample().unwrap().process.rss, 2, "sample reads now");
        assert_eq!(shared.latest().unwrap().process.rss, 2);
        assert_eq!(sampler.reads(), 2);
        std::thread::sleep(MemorySampler::FRESH + Duration::from_millis(20));
        assert_eq!(shared.latest().unwrap().process.rss, 3, "old: read again");
    }

    #[test]
    fn the_default_sampler_reads_this_process() {
        let sample = MemorySampler::new()
            .latest()
            .expect("linux exposes /proc/self/status");
        assert!(sample.process.rss > 0 && sample.process.peak_rss >= sample.process.rss);
    }
}
