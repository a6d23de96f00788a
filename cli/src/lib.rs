#![doc = include_str!("../README.md")]

pub mod args;
pub mod config_file;
pub mod cute;
pub mod lock;
pub mod metrics;
pub mod observer;
pub mod pg_state;
pub mod progress;
pub mod redrive;
pub mod report;
pub mod scriban;
pub mod state;
pub mod sync;
pub mod tuning;
pub mod validate;

use std::process::ExitCode;

use clap::Parser;
use sluicegate_core::{Error, ErrorKind, Registry};

use crate::args::{CacheAction, Cli, Command, StateAction, SyncArgs};
use crate::config_file::ConfigFile;

/// Exit code of a run that completed.
pub const EXIT_OK: u8 = 0;
/// Exit code of a run in which a sync failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code of a configuration or usage error (nothing was synced).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code of a run in which every sync completed but some records were
/// rejected (they are in the dead-letter file).
pub const EXIT_PARTIAL: u8 = 3;

/// Runs the `sluicegate` command line with the adapters in `registry`.
///
/// A binary that adds its own adapters registers them and calls this:
///
/// ```no_run
/// let mut registry = sluicegate_core::Registry::new();
/// sluicegate_adapters_http::register(&mut registry);
/// // my_adapter::register(&mut registry);
/// std::process::exit(sluicegate_cli::main_with(registry).into());
/// ```
pub fn main_with(registry: Registry) -> u8 {
    let cli = Cli::parse();
    let debug = matches!(
        &cli.command,
        Command::SyncApi(args) | Command::Redrive(args) if args.verbosity() == args::Verbosity::Debug
    );
    init_logging(cli.log_format, if debug { "debug" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    match cli.command {
        Command::SyncApi(args) => runtime.block_on(sync_api(&registry, args, false)),
        Command::Redrive(args) => runtime.block_on(sync_api(&registry, args, true)),
        Command::Validate { keys, config } => runtime.block_on(validate(&registry, keys, config)),
        Command::Cache {
            action: CacheAction::Clear { config },
        } => clear_cache(&config),
        Command::State { action } => state_command(action),
    }
}

static ALLOCATOR_RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Registers how the binary's allocator returns freed memory to the operating
/// system; the memory monitor calls it under memory pressure. (The `sluicegate`
/// binary purges jemalloc's arenas; without a registration nothing is called.)
pub fn set_allocator_release(release: fn()) {
    let _ = ALLOCATOR_RELEASE.set(release);
}

/// The registered allocator release, if any.
pub(crate) fn allocator_release() -> Option<fn()> {
    ALLOCATOR_RELEASE.get().copied()
}

/// Runs `main_with` and converts its code for `main`.
pub fn exit_code(code: u8) -> ExitCode {
    ExitCode::from(code)
}

/// Logs to stderr; `SLUICEGATE_LOG` overrides the `default` filter. Colours only
/// on a terminal, and never with `NO_COLOR` set.
fn init_logging(format: args::LogFormat, default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICEGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false);
    let _ = match format {
        args::LogFormat::Text => builder.try_init(),
        args::LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn clear_cache(config: &std::path::Path) -> u8 {
    let dir = config_file::base_dir_of(config)
        .join(".sluicegate")
        .join("http-cache");
    match sluicegate_adapters_http::clear_file_cache(&dir) {
        Ok(n) => {
            println!("removed {n} cached responses from {}", dir.display());
            EXIT_OK
        }
        Err(e) => {
            print_error(&e, None);
            EXIT_FAILED
        }
    }
}

/// The PostgreSQL state the configuration file names, if it names one.
fn pg_state(
    args: &args::StateArgs,
) -> Result<Option<std::sync::Arc<pg_state::PgStateStore>>, Error> {
    if !args.config.exists() {
        return Ok(None);
    }
    match ConfigFile::load(&args.config)?.state {
        pg_state::StateConfig::Sqlite => Ok(None),
        pg_state::StateConfig::Postgres(pg) => {
            Ok(Some(std::sync::Arc::new(pg_state::PgStateStore::connect(
                &pg,
                &sluicegate_core::template_scope_from_env(),
                true,
            )?)))
        }
    }
}

/// Prints saved checkpoints and high-water marks.
fn show_state(checkpoints: Vec<state::SavedCheckpoint>, marks: Vec<state::SavedMark>, place: &str) {
    if checkpoints.is_empty() {
        println!("no checkpoints in {place}: every sync starts from the beginning");
    }
    for c in checkpoints {
        println!(
            "{}  {}  {}  (committed {} UTC)",
            c.sync_key, c.stream, c.position, c.committed_at
        );
    }
    if !marks.is_empty() {
        println!("incremental high-water marks:");
    }
    for m in marks {
        let mut line = format!(
            "{}  {}  last {}",
            m.sync_key,
            m.stream,
            m.last_value
                .as_deref()
                .unwrap_or("none (no complete run yet)")
        );
        if let Some(progress) = &m.progress {
            line.push_str(&format!(
                "; an interrupted run wrote up to {progress} (its next run reads the same window)"
            ));
        }
        println!("{line}  (updated {} UTC)", m.updated_at);
    }
}

fn forgot(key: &str, (checkpoints, marks): (usize, usize)) {
    println!(
        "{key}: forgot {checkpoints} checkpoint(s) and {marks} high-water mark(s); \
         its next run starts from the beginning"
    );
}

/// `state show` and `state reset`, on the SQLite file or the PostgreSQL
/// state the configuration names.
fn state_command(action: StateAction) -> u8 {
    let result = match action {
        StateAction::Show(args) => match pg_state(&args) {
            Ok(Some(store)) => store
                .list()
                .and_then(|c| Ok((c, store.marks()?)))
                .map(|(c, m)| show_state(c, m, "the PostgreSQL state")),
            Ok(None) => state::SqliteStateStore::open(&args.dir()).and_then(|store| {
                show_state(
                    store.list()?,
                    store.marks()?,
                    &store.path().display().to_string(),
                );
                Ok(())
            }),
            Err(e) => Err(e),
        },
        StateAction::Reset { keys, state } => match pg_state(&state) {
            Ok(Some(store)) => (|| {
                // Not while a key runs: its next commit would undo the reset.
                let keys = if keys.is_empty() { store.keys()? } else { keys };
                let locks = keys
                    .iter()
                    .map(|key| store.lock(key))
                    .collect::<Result<Vec<_>, Error>>()?;
                for key in &keys {
                    forgot(key, store.clear_key(key)?);
                }
                drop(locks);
                Ok(())
            })(),
            Ok(None) if keys.is_empty() => lock::lock_all(&state.dir())
                // Not while any key runs: its next commit would write into a new file.
                .and_then(|_locks| state::move_aside(&state.dir()))
                .map(|aside| match aside {
                    Some(aside) => println!(
                        "moved the state file to {}; every sync starts from the beginning",
                        aside.display()
                    ),
                    None => println!("no state file in {}", state.dir().display()),
                }),
            Ok(None) => {
                let dir = state.dir();
                state::SqliteStateStore::open(&dir).and_then(|store| {
                    for key in &keys {
                        // Not while that key runs: its next commit would undo the reset.
                        let _lock = lock::lock(&dir, key)?;
                        forgot(key, store.clear_key(key)?);
                    }
                    Ok(())
                })
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            print_error(&e, None);
            EXIT_FAILED
        }
    }
}

fn print_error(err: &Error, hint: Option<String>) {
    eprintln!("error: {err}");
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
}

/// Loads the configuration (with `cute` entries from the space where needed)
/// and validates the entries `args` selects, before any other I/O.
async fn load_prepared(
    registry: &Registry,
    args: &SyncArgs,
) -> Result<(ConfigFile, sync::PreparedRun), Error> {
    let mut config = ConfigFile::load(&args.config)?;
    let keys = if args.all {
        Vec::new()
    } else {
        args.keys.clone()
    };
    cute::add_missing(&mut config, &keys, !args.apply).await?;
    let entries = config.select(&keys)?;
    if entries.is_empty() {
        return Err(Error::config(format!(
            "{}: has no sync entries",
            config.path.display()
        )));
    }
    let prepared = sync::prepare(registry, &config, &entries, args)?;
    Ok((config, prepared))
}

/// `validate`: the configuration first (exit code 2 on a mistake), then each
/// entry's connectivity (exit code 1 when one fails).
async fn validate(registry: &Registry, keys: Vec<String>, config_path: std::path::PathBuf) -> u8 {
    // A dry run's arguments for these keys: what `prepare` reads (no writes).
    let mut argv = vec![
        std::ffi::OsString::from("sluicegate"),
        "sync-api".into(),
        "--config".into(),
        config_path.into_os_string(),
    ];
    if keys.is_empty() {
        argv.push("--all".into());
    }
    for key in keys {
        argv.extend(["--key".into(), key.into()]);
    }
    let Ok(Cli {
        command: Command::SyncApi(args),
        ..
    }) = Cli::try_parse_from(argv)
    else {
        eprintln!("error: cannot read the configuration path or keys");
        return EXIT_CONFIG;
    };
    let (config, prepared) = match load_prepared(registry, &args).await {
        Ok(loaded) => loaded,
        Err(e) => {
            print_error(&e, None);
            return EXIT_CONFIG;
        }
    };
    println!("{}: configuration ok", config.path.display());
    let mut failed = 0;
    for check in validate::check(prepared).await {
        match &check.error {
            None => println!("{}: ok", check.key),
            Some(_) => println!("{}: FAILED", check.key),
        }
        for line in &check.lines {
            println!("  {line}");
        }
        if let Some(e) = &check.error {
            failed += 1;
            println!("  error: {e}");
        }
    }
    if failed > 0 {
        eprintln!(
            "error: {failed} entr{} failed validation",
            if failed == 1 { "y" } else { "ies" }
        );
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// `sync-api`, or with `redrive` the same entries fed from the dead-letter file.
async fn sync_api(registry: &Registry, args: SyncArgs, redrive: bool) -> u8 {
    let (config, prepared) = match load_prepared(registry, &args).await {
        Ok(loaded) => loaded,
        Err(e) => {
            print_error(&e, None);
            return EXIT_CONFIG;
        }
    };
    match sync::run(prepared, &args, &config, redrive).await {
        Ok(outcome) if outcome.failures.is_empty() && outcome.rejected == 0 => EXIT_OK,
        Ok(outcome) if outcome.failures.is_empty() => EXIT_PARTIAL,
        Ok(outcome) => {
            for (_, err) in &outcome.failures {
                print_error(err, sync::hint(err, &args));
            }
            EXIT_FAILED
        }
        Err(e) => {
            let code = if e.kind() == ErrorKind::Config {
                EXIT_CONFIG
            } else {
                EXIT_FAILED
            };
            print_error(&e, sync::hint(&e, &args));
            code
        }
    }
}
