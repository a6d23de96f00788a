//! `sluicegate validate`: checks the configuration, then each selected entry's
//! connectivity, without syncing anything.
//!
//! Per entry: the source is built and its first batch read (the source is
//! reachable, credentials and query accepted), the mapping is tried on that batch,
//! and the sink — built for a dry run — gets that batch: it reads what it compares
//! against (credentials accepted, content type or table and field types checked)
//! and writes nothing. No checkpoint is read or saved, and the read stops after
//! the first batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sluicegate_core::{
    Error, MemoryBudget, ReadRequest, Rejected, Result, RunObserver, Sink, StreamTarget,
};

use crate::sync::{PreparedEntry, PreparedRun};

/// How long the first batch of a source may take.
const FIRST_BATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// What `validate` found for one entry.
pub struct EntryCheck {
    /// The sync key.
    pub key: String,
    /// One line per check (`source: …`, `mapping: …`, `sink: …`).
    pub lines: Vec<String>,
    /// The first failure, if any.
    pub error: Option<Error>,
}

/// Builds the sinks and checks every entry; never writes.
pub async fn check(prepared: PreparedRun) -> Vec<EntryCheck> {
    let mut sinks: BTreeMap<String, std::result::Result<Arc<dyn Sink>, Error>> = BTreeMap::new();
    for (name, sink) in prepared.sinks {
        let built = sink
            .build()
            .await
            .map_err(|e| Error::new(e.kind(), format!("sink '{name}': {e}")));
        sinks.insert(name, built);
    }
    let mut checks = Vec::new();
    for entry in prepared.entries {
        let key = entry.entry.key.clone();
        let mut lines = Vec::new();
        let error = check_entry(entry, &sinks, &mut lines).await.err();
        checks.push(EntryCheck { key, lines, error });
    }
    checks
}

async fn check_entry(
    prepared: PreparedEntry,
    sinks: &BTreeMap<String, std::result::Result<Arc<dyn Sink>, Error>>,
    lines: &mut Vec<String>,
) -> Result<()> {
    let PreparedEntry {
        entry,
        source,
        mapper,
        window,
    } = prepared;
    if let Some(window) = &window {
        lines.push(format!(
            "incremental: reads {} from {} on",
            window.cursor_field, window.start_value
        ));
    }
    if let Some(deletes) = &entry.deletes
        && let Some(mode) = deletes.mode.delete_mode()
    {
        lines.push(format!(
            "deletes: {} after a complete read, at most {:.0}% of the target per run",
            mode.as_str(),
            deletes.max_fraction * 100.0
        ));
    }
    let source = source.build().await?;
    lines.push(if source.splits() {
        "sharding: split across the shards of a sharded run (--shard I/N)".to_owned()
    } else {
        "sharding: read whole by one shard of a sharded run (this source reads in sequence)"
            .to_owned()
    });
    let mut stream = source.read(ReadRequest::new(
        entry.key.clone(),
        MemoryBudget::new(16 << 20),
    ));
    let first = tokio::time::timeout(FIRST_BATCH_TIMEOUT, stream.next())
        .await
        .map_err(|_| {
            Error::new(
                sluicegate_core::ErrorKind::Network,
                format!(
                    "the source gave no first batch within {} s",
                    FIRST_BATCH_TIMEOUT.as_secs()
                ),
            )
        })?;
    drop(stream);
    let mut batch = match first {
        Some(batch) => Some(batch?),
        None => None,
    };
    lines.push(format!(
        "source: {} — reachable, first batch {} records",
        source.describe(),
        batch.as_ref().map_or(0, |b| b.len())
    ));
    if let (Some(mapper), Some(batch)) = (&mapper, batch.as_mut()) {
        let read = batch.len();
        let outcome = mapper.map_batch(batch);
        let mut line = format!(
            "mapping: {} of {read} records mapped, {} filtered out, {} rejected",
            batch.len(),
            outcome.filtered,
            outcome.rejected.len()
        );
        if let Some(first) = outcome.rejected.first() {
            line.push_str(&format!(" (first: {})", first.reason));
        }
        lines.push(line);
    }
    let sink = match sinks.get(&entry.sink) {
        Some(Ok(sink)) => sink,
        Some(Err(e)) => return Err(Error::new(e.kind(), e.to_string())),
        None => return Err(Error::config(format!("no sink named '{}'", entry.sink))),
    };
    // A dry-run write of the first batch: the sink reads what it compares
    // against (credentials, target, field types) and writes nothing.
    let mut target = StreamTarget::new(entry.key.clone(), entry.table(), entry.key_field.clone());
    let first_rejection = Arc::new(FirstRejection::default());
    target.observer = first_rejection.clone();
    let mut writer = sink.open(target).await?;
    let mut line = format!("sink: {} — target '{}'", sink.describe(), entry.table());
    match batch {
        Some(batch) if !batch.is_empty() => {
            let ack = writer.write(batch).await?;
            line.push_str(&format!(
                " accepted a dry-run write of the first batch: {} new, {} changed, {} unchanged, {} rejected",
                ack.inserted, ack.updated, ack.unchanged, ack.failed
            ));
            if let Some(reason) = first_rejection
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
            {
                line.push_str(&format!(" (first: {reason})"));
            }
        }
        _ => line.push_str(" opened (no records to try a dry-run write with)"),
    }
    line.push_str("; nothing written");
    drop(writer);
    lines.push(line);
    Ok(())
}

/// Keeps the reason of the first record the sink rejected.
#[derive(Default)]
struct FirstRejection(std::sync::Mutex<Option<String>>);

impl RunObserver for FirstRejection {
    fn rejected(&self, _sync_key: &str, rejected: Rejected) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(rejected.reason);
    }
}
