//! The source suite.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use sluicegate_core::{
    Batch, MemoryBudget, Position, ReadRequest, Result, Source, WhenFull, approx_record_size,
};

/// A source under test and what a full read of it yields.
pub struct SourceCase {
    /// Names the case in failure messages.
    pub name: String,
    /// The source; it is read several times.
    pub source: Arc<dyn Source>,
    /// Records a full read yields.
    pub expected_records: usize,
    /// Whether batches carry positions a read can resume from.
    pub resumable: bool,
    /// The budget of the backpressure check, in bytes; it should be well below
    /// the size of the whole read (default 64 KiB).
    pub small_budget: usize,
}

impl SourceCase {
    /// A resumable case with the default small budget.
    pub fn new(name: impl Into<String>, source: Arc<dyn Source>, expected_records: usize) -> Self {
        Self {
            name: name.into(),
            source,
            expected_records,
            resumable: true,
            small_budget: 64 * 1024,
        }
    }

    /// Marks the source as one whose reads cannot resume.
    #[must_use]
    pub fn not_resumable(mut self) -> Self {
        self.resumable = false;
        self
    }

    /// Sets the budget of the backpressure check.
    #[must_use]
    pub fn small_budget(mut self, bytes: usize) -> Self {
        self.small_budget = bytes;
        self
    }

    fn request(&self, budget: &MemoryBudget, resume: Option<Position>) -> ReadRequest {
        let mut request = ReadRequest::new(format!("testkit {}", self.name), budget.clone());
        request.resume_from = resume;
        request
    }

    fn fail(&self, check: &str, what: impl std::fmt::Display) -> ! {
        panic!("{}: {check}: {what}", self.name)
    }
}

/// How long a released source may go without a batch before the suite calls it stalled.
const STALL: Duration = Duration::from_secs(30);

/// One batch's records (as JSON values) and position.
type ReadBatch = (Vec<Value>, Option<Position>);

async fn read_all(case: &SourceCase, resume: Option<Position>, check: &str) -> Vec<ReadBatch> {
    let budget = MemoryBudget::new(256 << 20);
    let mut stream = case.source.read(case.request(&budget, resume));
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap_or_else(|e| case.fail(check, format!("the read failed: {e}")));
        leases_cover_records(case, &batch, check);
        let records = batch.records().iter().cloned().map(Value::Object).collect();
        out.push((records, batch.position().cloned()));
    }
    out
}

fn leases_cover_records(case: &SourceCase, batch: &Batch, check: &str) {
    let size: usize = batch.records().iter().map(approx_record_size).sum();
    if batch.bytes() < size {
        case.fail(
            check,
            format!(
                "a batch of {} records holds a lease of {} bytes, less than their {size} bytes",
                batch.len(),
                batch.bytes()
            ),
        );
    }
}

/// Runs every source check; panics with the case name, the check and what was wrong.
pub async fn check_source(case: SourceCase) {
    let all = reads_everything(&case).await;
    let total_bytes: usize = all
        .iter()
        .flat_map(|(records, _)| records)
        .map(|r| r.as_object().map_or(0, approx_record_size))
        .sum();
    is_lazy(&case).await;
    stays_within_a_small_budget(&case, total_bytes).await;
    stops_when_dropped(&case).await;
    if case.resumable {
        resumes_where_a_batch_ended(&case, &all).await;
    }
}

async fn reads_everything(case: &SourceCase) -> Vec<ReadBatch> {
    let check = "a full read";
    let all = read_all(case, None, check).await;
    let n: usize = all.iter().map(|(r, _)| r.len()).sum();
    if n != case.expected_records {
        case.fail(
            check,
            format!("yielded {n} records, expected {}", case.expected_records),
        );
    }
    // The last batch may go without one: nothing follows it.
    let before_last = &all[..all.len().saturating_sub(1)];
    if case.resumable
        && before_last
            .iter()
            .any(|(r, p)| !r.is_empty() && p.is_none())
    {
        case.fail(
            check,
            "a batch of a resumable source (not the last) has no position",
        );
    }
    all
}

async fn is_lazy(case: &SourceCase) {
    let budget = MemoryBudget::new(1 << 20);
    let stream = case.source.read(case.request(&budget, None));
    tokio::time::sleep(Duration::from_millis(50)).await;
    if budget.snapshot().peak != 0 {
        case.fail("laziness", "memory was leased before the stream was polled");
    }
    drop(stream);
}

async fn stays_within_a_small_budget(case: &SourceCase, total_bytes: usize) {
    let check = "backpressure";
    if total_bytes < 2 * case.small_budget {
        case.fail(
            check,
            format!(
                "the data ({total_bytes} bytes) must be at least twice the small budget ({}); \
                 lower it with SourceCase::small_budget or read more records",
                case.small_budget
            ),
        );
    }
    let budget = MemoryBudget::with_policy(case.small_budget, WhenFull::Wait);
    let mut stream = case.source.read(case.request(&budget, None));
    let mut held: Vec<Batch> = Vec::new();
    let mut records = 0usize;
    // Hold every batch: the source must stop sending, within the budget.
    loop {
        match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            Ok(Some(Ok(batch))) => {
                records += batch.len();
                held.push(batch);
            }
            Ok(Some(Err(e))) => case.fail(check, format!("the read failed: {e}")),
            Ok(None) | Err(_) => break,
        }
        // One batch larger than the whole budget is allowed (it waits for
        // everything else to be released); several may not exceed it.
        if held.len() > 1 && budget.in_use() > case.small_budget {
            case.fail(
                check,
                format!(
                    "{} bytes leased by {} held batches, over the budget of {}",
                    budget.in_use(),
                    held.len(),
                    case.small_budget
                ),
            );
        }
    }
    if records >= case.expected_records {
        case.fail(
            check,
            format!(
                "all {records} records ({total_bytes} bytes) arrived while the consumer held them \
                 on a budget of {}: the source does not wait for memory",
                case.small_budget
            ),
        );
    }
    held.clear();
    // Released, it goes on to the end (a source that waits for memory it
    // holds itself never does).
    loop {
        let next = tokio::time::timeout(STALL, stream.next()).await;
        let Ok(next) = next else {
            case.fail(
                check,
                format!(
                    "no batch for {STALL:?} after the consumer released everything \
                     ({records} records so far, {} bytes leased): the source waits for \
                     memory it holds itself",
                    budget.in_use()
                ),
            );
        };
        let Some(batch) = next else { break };
        let batch = batch.unwrap_or_else(|e| case.fail(check, format!("the read failed: {e}")));
        records += batch.len();
    }
    if records != case.expected_records {
        case.fail(
            check,
            format!(
                "yielded {records} records under a small budget, expected {}",
                case.expected_records
            ),
        );
    }
}

async fn stops_when_dropped(case: &SourceCase) {
    let check = "cancellation by drop";
    let budget = MemoryBudget::new(case.small_budget);
    let mut stream = case.source.read(case.request(&budget, None));
    match stream.next().await {
        Some(Ok(batch)) => drop(batch),
        Some(Err(e)) => case.fail(check, format!("the read failed: {e}")),
        None => return,
    }
    drop(stream);
    // Whatever the source was doing ends; nothing stays leased.
    let mut settled = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if budget.in_use() == 0 {
            settled = true;
            break;
        }
    }
    if !settled {
        case.fail(
            check,
            format!(
                "{} bytes still leased after the stream was dropped",
                budget.in_use()
            ),
        );
    }
    let peak = budget.snapshot().peak;
    tokio::time::sleep(Duration::from_millis(100)).await;
    if budget.in_use() != 0 || budget.snapshot().peak != peak {
        case.fail(
            check,
            "the source kept leasing memory after its stream was dropped",
        );
    }
}

async fn resumes_where_a_batch_ended(case: &SourceCase, all: &[ReadBatch]) {
    let check = "resume from a checkpoint";
    let candidates: Vec<usize> = (0..all.len().saturating_sub(1))
        .filter(|&i| all[i].1.is_some())
        .collect();
    let Some(&middle) = candidates.get(candidates.len() / 2) else {
        return; // a single batch: nothing to resume into
    };
    let position = all[middle].1.clone();
    let expected: Vec<Value> = all[middle + 1..]
        .iter()
        .flat_map(|(r, _)| r.clone())
        .collect();
    let resumed: Vec<Value> = read_all(case, position.clone(), check)
        .await
        .into_iter()
        .flat_map(|(r, _)| r)
        .collect();
    if resumed != expected {
        case.fail(
            check,
            format!(
                "resuming after batch {} (position {}) yielded {} records, expected the {} after it{}",
                middle + 1,
                position.map(|p| p.to_string()).unwrap_or_default(),
                resumed.len(),
                expected.len(),
                if resumed.len() == expected.len() { " (in the same order)" } else { "" }
            ),
        );
    }
}

/// Checks that a read of a failing source ends with one error: a one-line,
/// non-empty message (adapters add what failed and where).
pub async fn check_failing_source(name: &str, source: Arc<dyn Source>) -> sluicegate_core::Error {
    let budget = MemoryBudget::new(1 << 20);
    let mut stream = source.read(ReadRequest::new(format!("testkit {name}"), budget));
    let mut error = None;
    while let Some(item) = stream.next().await {
        let item: Result<Batch> = item;
        if let Err(e) = item {
            error = Some(e);
            break;
        }
    }
    let Some(error) = error else {
        panic!("{name}: errors: the read ended without an error");
    };
    let text = error.to_string();
    if text.trim().is_empty() || text.contains('\n') {
        panic!("{name}: errors: the message must be one non-empty line: {text:?}");
    }
    if stream.next().await.is_some() {
        panic!("{name}: errors: the stream went on after its error");
    }
    error
}
