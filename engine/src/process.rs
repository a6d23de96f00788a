//! Process memory as the operating system sees it (resident set size).
//!
//! The budget accounts the bytes of data in flight; this module reads what the
//! whole process really uses, for progress lines and reports. On Linux it reads
//! `/proc/self/status`; elsewhere it returns `None`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
