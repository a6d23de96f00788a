//! The sink suite.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use sluicegate_core::{
    Batch, BatchAck, MemoryBudget, Record, Rejected, RunObserver, Sink, Stage, StreamTarget,
};

/// Counts the records a sink holds in a table, for sinks whose writers do not
/// report `WriterSummary::total_rows`.
pub type CountFn = Arc<dyn Fn(String) -> BoxFuture<'static, u64> + Send + Sync>;

/// A sink under test.
pub struct SinkCase {
    /// Names the case in failure messages.
    pub name: String,
    /// The sink, built for writing.
    pub sink: Arc<dyn Sink>,
    /// The same sink built for a dry run (`BuildContext::dry_run`).
    pub dry_run_sink: Arc<dyn Sink>,
    /// A table (collection, content type) that starts empty.
    pub table: String,
    /// The record field that identifies records.
    pub key_field: String,
    /// Makes record `id` at `version`: the key derives from `id` only, the
    /// content from both, so a new version of a record is a changed record.
    pub make: Arc<dyn Fn(u64, u64) -> Record + Send + Sync>,
    /// Whether the sink compares content and reports rewrites as unchanged.
    pub compares_content: bool,
    /// A record the sink must reject (reported as failed), if it has such records.
    pub invalid: Option<Record>,
    /// How to count the table's records when the writer's summary does not.
    pub count: Option<CountFn>,
    /// Records in the first batch (default 12).
    pub records: u64,
}

impl SinkCase {
    /// A case for a sink that reports `total_rows` and does not compare content.
    pub fn new(
        name: impl Into<String>,
        sink: Arc<dyn Sink>,
        dry_run_sink: Arc<dyn Sink>,
        table: impl Into<String>,
        key_field: impl Into<String>,
        make: impl Fn(u64, u64) -> Record + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            sink,
            dry_run_sink,
            table: table.into(),
            key_field: key_field.into(),
            make: Arc::new(make),
            compares_content: false,
            invalid: None,
            count: None,
            records: 12,
        }
    }

    /// The sink compares content: rewriting a record unchanged is reported as such.
    #[must_use]
    pub fn compares_content(mut self) -> Self {
        self.compares_content = true;
        self
    }

    /// A record the sink must reject.
    #[must_use]
    pub fn invalid(mut self, record: Record) -> Self {
        self.invalid = Some(record);
        self
    }

    /// Counts records this way instead of by the writer's summary.
    #[must_use]
    pub fn count_with(mut self, count: CountFn) -> Self {
        self.count = Some(count);
        self
    }

    fn fail(&self, check: &str, what: impl std::fmt::Display) -> ! {
        panic!("{}: {check}: {what}", self.name)
    }
}

#[derive(Default)]
struct Rejections(Mutex<Vec<Rejected>>);

impl RunObserver for Rejections {
    fn rejected(&self, _sync_key: &str, rejected: Rejected) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(rejected);
    }
}

/// Writes `batches` through a new writer of `sink`; returns the summed acks and
/// the table's count afterwards. With `relieve`, the writer is asked to relieve
/// memory before each batch after the first (what a run under memory pressure does).
async fn write(
    case: &SinkCase,
    sink: &Arc<dyn Sink>,
    batches: Vec<Vec<Record>>,
    observer: Arc<Rejections>,
    check: &str,
    relieve: bool,
) -> (BatchAck, u64) {
    let mut target = StreamTarget::new(
        format!("testkit-{}", case.table),
        case.table.clone(),
        Some(case.key_field.clone()),
    );
    target.observer = observer;
    let mut writer = sink
        .open(target)
        .await
        .unwrap_or_else(|e| case.fail(check, format!("open failed: {e}")));
    let budget = MemoryBudget::unlimited();
    let mut total = BatchAck::default();
    for (i, records) in batches.into_iter().enumerate() {
        if relieve
            && i > 0
            && let Some(ext) = writer.extension()
        {
            ext.relieve_memory()
                .await
                .unwrap_or_else(|e| case.fail(check, format!("relieve_memory failed: {e}")));
        }
        let lease = budget.acquire(1024).await.expect("an unlimited budget");
        let ack = writer
            .write(Batch::new(records, lease))
            .await
            .unwrap_or_else(|e| case.fail(check, format!("write failed: {e}")));
        total.add(&ack);
    }
    let summary = writer
        .finish()
        .await
        .unwrap_or_else(|e| case.fail(check, format!("finish failed: {e}")));
    let count = match (&case.count, summary.total_rows) {
        (Some(count), _) => count(case.table.clone()).await,
        (None, Some(n)) => n,
        (None, None) => case.fail(
            check,
            "the writer reports no total_rows; give the case a count function (SinkCase::count_with)",
        ),
    };
    (total, count)
}

/// Runs every sink check; panics with the case name, the check and what was wrong.
pub async fn check_sink(case: SinkCase) {
    let first: Vec<Record> = (0..case.records).map(|i| (case.make)(i, 0)).collect();
    let obs = Arc::new(Rejections::default());
    check_dry_run(&case, &first, &obs).await;
    check_new_records(&case, &first, &obs).await;
    check_same_again(&case, &first, &obs).await;
    check_relieving(&case, &first, &obs).await;
    check_changes_and_duplicates(&case, &obs).await;
    check_invalid_record(&case).await;
}

/// A dry run plans inserts of the new records and writes nothing.
async fn check_dry_run(case: &SinkCase, first: &[Record], obs: &Arc<Rejections>) {
    let n = case.records;
    let check = "a dry run";
    let (ack, count) = write(
        case,
        &case.dry_run_sink,
        vec![first.to_vec()],
        obs.clone(),
        check,
        false,
    )
    .await;
    if count != 0 {
        case.fail(
            check,
            format!("the table holds {count} records after a dry run"),
        );
    }
    if ack.inserted != n {
        case.fail(
            check,
            format!("planned {} inserts of {n} new records", ack.inserted),
        );
    }
}

/// New records are inserted, all of them.
async fn check_new_records(case: &SinkCase, first: &[Record], obs: &Arc<Rejections>) {
    let n = case.records;
    let check = "new records";
    let (ack, count) = write(
        case,
        &case.sink,
        vec![first.to_vec()],
        obs.clone(),
        check,
        false,
    )
    .await;
    if (ack.rows, ack.inserted, ack.failed) != (n, n, 0) {
        case.fail(check, format!("{n} new records acknowledged as {ack:?}"));
    }
    if count != n {
        case.fail(
            check,
            format!("the table holds {count} records, expected {n}"),
        );
    }
}

/// The same records again insert nothing (unchanged where the sink compares content).
async fn check_same_again(case: &SinkCase, first: &[Record], obs: &Arc<Rejections>) {
    let n = case.records;
    let check = "the same records again";
    let (ack, count) = write(
        case,
        &case.sink,
        vec![first.to_vec()],
        obs.clone(),
        check,
        false,
    )
    .await;
    if ack.inserted != 0 || count != n {
        case.fail(
            check,
            format!("acknowledged as {ack:?}; the table holds {count}, expected {n}"),
        );
    }
    if case.compares_content && ack.unchanged != n {
        case.fail(
            check,
            format!("{} of {n} reported unchanged", ack.unchanged),
        );
    }
    if !case.compares_content && ack.updated + ack.unchanged != n {
        case.fail(
            check,
            format!("{n} rewritten records acknowledged as {ack:?}"),
        );
    }
}

/// The same records again, in two batches with memory relieved between them.
async fn check_relieving(case: &SinkCase, first: &[Record], obs: &Arc<Rejections>) {
    let n = case.records;
    let check = "the same records again, relieving memory between batches";
    let half = usize::try_from(n / 2).unwrap_or(usize::MAX);
    let halves = vec![first[..half].to_vec(), first[half..].to_vec()];
    let (ack, count) = write(case, &case.sink, halves, obs.clone(), check, true).await;
    if ack.inserted != 0 || ack.rows != n || count != n {
        case.fail(
            check,
            format!("acknowledged as {ack:?}; the table holds {count}, expected {n}"),
        );
    }
}

/// A change, a new key and a duplicate key in one batch: the last record of a key wins.
async fn check_changes_and_duplicates(case: &SinkCase, obs: &Arc<Rejections>) {
    let n = case.records;
    let check = "changes, a new key and a duplicate key in one batch";
    let mut batch: Vec<Record> = (1..n).map(|i| (case.make)(i, 0)).collect();
    batch.push((case.make)(0, 1)); // record 0 changed
    batch.push((case.make)(n, 0)); // a new key
    batch.push((case.make)(n, 1)); // the same key again: the last one wins
    let (ack, count) = write(case, &case.sink, vec![batch], obs.clone(), check, false).await;
    if ack.duplicates != 1 || ack.inserted != 1 || count != n + 1 {
        case.fail(
            check,
            format!(
                "acknowledged as {ack:?}; the table holds {count}, expected {}",
                n + 1
            ),
        );
    }
    if case.compares_content && (ack.updated, ack.unchanged) != (1, n - 1) {
        case.fail(
            check,
            format!("expected 1 update and {} unchanged, got {ack:?}", n - 1),
        );
    }
    if case.compares_content {
        // The duplicate rule: the last record of a key wins, so writing it again
        // changes nothing, and writing the first one again is a change.
        let check = "the last duplicate won";
        let (ack, _) = write(
            case,
            &case.sink,
            vec![vec![(case.make)(n, 1)]],
            obs.clone(),
            check,
            false,
        )
        .await;
        if ack.unchanged != 1 {
            case.fail(
                check,
                format!("the last of two records with one key is not what the sink holds: writing it again was acknowledged as {ack:?}"),
            );
        }
    }
}

/// An invalid record fails alone, at the write stage, with a reason.
async fn check_invalid_record(case: &SinkCase) {
    let n = case.records;
    if let Some(invalid) = case.invalid.clone() {
        let check = "an invalid record";
        let obs = Arc::new(Rejections::default());
        let batch = vec![invalid, (case.make)(n + 1, 0)];
        let (ack, count) = write(case, &case.sink, vec![batch], obs.clone(), check, false).await;
        if (ack.failed, ack.inserted) != (1, 1) || count != n + 2 {
            case.fail(
                check,
                format!(
                    "acknowledged as {ack:?}; the table holds {count}, expected {}",
                    n + 2
                ),
            );
        }
        let rejected = obs
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match rejected.as_slice() {
            [r] if r.stage == Stage::Write && !r.reason.trim().is_empty() => {}
            other => case.fail(
                check,
                format!(
                    "expected one rejection at the write stage with a reason, got {}",
                    other.len()
                ),
            ),
        }
    }
}
