//! The `sluicegate` binary: registers the in-tree adapters and runs the CLI.

use std::process::ExitCode;

use sluicegate_core::Registry;

/// jemalloc with one arena: records are decoded on the async workers and freed
/// on the sink's blocking thread, and with glibc's per-thread arenas (or
/// jemalloc's default of four per core) every thread's arena grows to the
/// run's peak. One arena plus half-second decay keeps the resident set close to
/// what the memory budget accounts (measured in bench/RESULTS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol at start-up (`_RJEM_MALLOC_CONF`
/// in the environment still overrides it).
// Exporting the symbol jemalloc looks up needs an unsafe attribute; it is a
// plain, NUL-terminated byte string.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 46] = b"narenas:1,dirty_decay_ms:500,muzzy_decay_ms:0\0";

/// DuckDB carries its own jemalloc, which by default keeps several arenas; one
/// arena with a short decay saves about 10 MB of resident memory on string-heavy
/// tables (measured on the example's customers). Set before DuckDB allocates
/// anything; a value already in the environment wins.
const DUCKDB_MALLOC_CONF: &str = "narenas:1,dirty_decay_ms:500,muzzy_decay_ms:0";

/// Makes jemalloc return every arena's unused dirty pages to the operating
/// system at once (instead of after the decay time). The memory monitor calls
/// it when memory is over its threshold.
fn purge_allocator() {
    // `MALLCTL_ARENAS_ALL` (4096) addresses every arena.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is a NUL-terminated string, and `purge` takes and
    // returns no value, so every pointer passed is null with length 0.
    #[allow(unsafe_code)]
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        tracing::debug!(rc, "jemalloc purge failed");
    }
}

fn main() -> ExitCode {
    sluicegate_cli::set_allocator_release(purge_allocator);
    if std::env::var_os("DUCKDB_JE_MALLOC_CONF").is_none() {
        // SAFETY: still single-threaded: no runtime or DuckDB thread exists yet,
        // so nothing can read the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("DUCKDB_JE_MALLOC_CONF", DUCKDB_MALLOC_CONF);
        }
    }
    let mut registry = Registry::new();
    sluicegate_adapters_http::register(&mut registry);
    sluicegate_adapters_db::register(&mut registry);
    sluicegate_sinks_duckdb::register(&mut registry);
    sluicegate_sinks_postgres::register(&mut registry);
    sluicegate_sinks_cms::register(&mut registry);
    sluicegate_cli::exit_code(sluicegate_cli::main_with(registry))
}
