//! The byte-accounted memory budget shared by a whole run.
//!
//! A source acquires a [`MemoryLease`] for the bytes of a page *before* it fetches
//! or decodes it, corrects the lease once it knows the decoded size, and hands the
//! lease to the [`Batch`](crate::Batch) that carries the records. The lease returns
//! its bytes when the batch is dropped, after the sink has written it. When the
//! budget is full, [`MemoryBudget::acquire`] waits: that is the backpressure that
//! keeps a run's memory flat whatever the size of the dataset.
//!
//! In [`WhenFull::Fail`] mode (the classic, read-everything-first mode) a full
//! budget is an [`ErrorKind::MemoryLimit`] error instead of a wait, because nothing
//! would ever free memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, ErrorKind, Result};

/// Bytes are accounted exactly but reserved in units of this size, so that budgets
/// of many gigabytes fit the semaphore's `u32` permit counts.
const UNIT: usize = 1024;

/// What [`MemoryBudget::acquire`] does when the budget cannot hold a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait until other leases are released (streaming backpressure).
    Wait,
    /// Fail with [`ErrorKind::MemoryLimit`] (classic mode: nothing would free memory).
    Fail,
}

/// A byte budget shared by every stage of a run. Cheap to clone.
///
/// A source acquires a [`MemoryLease`] for the bytes of a page *before* it fetches
/// or decodes it, corrects the lease once it knows the decoded size, and hands the
/// lease to the [`Batch`](crate::Batch) that carries the records. The lease returns
/// its bytes when the batch is dropped, after the sink has written it. When the
/// budget is full, [`MemoryBudget::acquire`] waits: that is the backpressure that
/// keeps a run's memory flat whatever the size of the dataset.
///
/// In [`WhenFull::Fail`] mode (the classic, read-everything-first mode) a full
/// budget is an [`ErrorKind::MemoryLimit`] error instead of a wait, because nothing
/// would ever free memory.
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    semaphore: Arc<Semaphore>,
    capacity: usize,
    capacity_units: u32,
    when_full: WhenFull,
    in_use: AtomicUsize,
    peak: AtomicUsize,
    waits: AtomicU64,
    wait_nanos: AtomicU64,
}

/// Figures of a budget at one moment, for progress and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetSnapshot {
    /// Budget size in bytes.
    pub capacity: usize,
    /// Bytes currently leased.
    pub in_use: usize,
    /// Highest number of bytes leased at once so far.
    pub peak: usize,
    /// How many acquisitions had to wait for memory (backpressure events).
    pub waits: u64,
    /// Total time spent waiting for memory.
    pub wait_time: Duration,
}

impl MemoryBudget {
    /// A budget of `capacity` bytes that applies backpressure when full.
    pub fn new(capacity: usize) -> Self {
        Self::with_policy(capacity, WhenFull::Wait)
    }

    /// A budget of `capacity` bytes with the given full-budget policy.
    pub fn with_policy(capacity: usize, when_full: WhenFull) -> Self {
        let capacity = capacity.max(UNIT);
        let capacity_units = u32::try_from(capacity.div_ceil(UNIT)).unwrap_or(u32::MAX);
        Self {
            inner: Arc::new(Inner {
                semaphore: Arc::new(Semaphore::new(capacity_units as usize)),
                capacity,
                capacity_units,
                when_full,
                in_use: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                waits: AtomicU64::new(0),
                wait_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// A budget of `mb` mebibytes that applies backpressure when full.
    pub fn from_mb(mb: u64) -> Self {
        Self::new(usize::try_from(mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX))
    }

    /// A budget so large it never blocks; for tests and tools that do not need bounds.
    pub fn unlimited() -> Self {
        Self::new(usize::MAX / 2)
    }

    /// The budget size in bytes.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// The policy applied when the budget is full.
    pub fn when_full(&self) -> WhenFull {
        self.inner.when_full
    }

    /// Bytes currently leased.
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::Relaxed)
    }

    /// The current figures.
    pub fn snapshot(&self) -> BudgetSnapshot {
        BudgetSnapshot {
            capacity: self.inner.capacity,
            in_use: self.inner.in_use.load(Ordering::Relaxed),
            peak: self.inner.peak.load(Ordering::Relaxed),
            waits: self.inner.waits.load(Ordering::Relaxed),
            wait_time: Duration::from_nanos(self.inner.wait_nanos.load(Ordering::Relaxed)),
        }
    }

    /// A lease of zero bytes on this budget, to grow later with [`MemoryLease::resize`].
    pub fn empty_lease(&self) -> MemoryLease {
        MemoryLease {
            budget: self.inner.clone(),
            permit: None,
            bytes: 0,
        }
    }

    /// Leases `bytes`, waiting while the budget is full (or failing, in
    /// [`WhenFull::Fail`] mode).
    ///
    /// A request larger than the whole budget is clamped to the budget: it waits
    /// until every other lease is gone and then proceeds alone, so one oversized
    /// page slows the run down instead of deadlocking it.
    pub async fn acquire(&self, bytes: usize) -> Result<MemoryLease> {
        let mut lease = self.empty_lease();
        lease.resize(bytes).await?;
        Ok(lease)
    }

    /// Leases `bytes` only if that is possible without waiting.
    pub fn try_acquire(&self, bytes: usize) -> Option<MemoryLease> {
        let units = self.inner.units_for(bytes);
        let permit = if units == 0 {
            None
        } else {
            Some(
                self.inner
                    .semaphore
                    .clone()
                    .try_acquire_many_owned(units)
                    .ok()?,
            )
        };
        self.inner.add_in_use(bytes);
        Some(MemoryLease {
            budget: self.inner.clone(),
            permit,
            bytes,
        })
    }
}

impl Inner {
    fn units_for(&self, bytes: usize) -> u32 {
        let units = bytes.div_ceil(UNIT);
        u32::try_from(units)
            .unwrap_or(u32::MAX)
            .min(self.capacity_units)
    }

    fn add_in_use(&self, bytes: usize) {
        let now = self.in_use.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn sub_in_use(&self, bytes: usize) {
        self.in_use.fetch_sub(bytes, Ordering::Relaxed);
    }

    async fn reserve(self: &Arc<Self>, units: u32, bytes: usize) -> Result<OwnedSemaphorePermit> {
        if let Ok(permit) = self.semaphore.clone().try_acquire_many_owned(units) {
            return Ok(permit);
        }
        match self.when_full {
            WhenFull::Fail => Err(Error::new(
                ErrorKind::MemoryLimit,
                format!(
                    "memory budget of {} exhausted: {} more needed while {} are held",
                    format_bytes(self.capacity),
                    format_bytes(bytes),
                    format_bytes(self.in_use.load(Ordering::Relaxed)),
                ),
            )),
            WhenFull::Wait => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let permit = self
                    .semaphore
                    .clone()
                    .acquire_many_owned(units)
                    .await
                    .map_err(|_| Error::new(ErrorKind::Cancelled, "memory budget closed"))?;
                let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.wait_nanos.fetch_add(waited, Ordering::Relaxed);
                Ok(permit)
            }
        }
    }
}

/// Bytes held on a [`MemoryBudget`]; released when dropped.
///
/// Leases travel inside [`Batch`](crate::Batch)es, so the memory of data in flight
/// is always accounted for, wherever the batch is.
pub struct MemoryLease {
    budget: Arc<Inner>,
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl MemoryLease {
    /// The bytes this lease accounts for.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Changes the leased size: growing waits for memory like
    /// [`MemoryBudget::acquire`]; shrinking returns the difference at once.
    pub async fn resize(&mut self, bytes: usize) -> Result<()> {
        let want = self.budget.units_for(bytes);
        let have = self.permit.as_ref().map_or(0, |p| p.num_permits());
        let have = u32::try_from(have).unwrap_or(u32::MAX);
        if want > have {
            let extra = self
                .budget
                .reserve(want - have, bytes - self.bytes.min(bytes))
                .await?;
            match &mut self.permit {
                Some(permit) => permit.merge(extra),
                None => self.permit = Some(extra),
            }
        } else if want < have {
            if let Some(permit) = &mut self.permit {
                drop(permit.split((have - want) as usize));
            }
            if want == 0 {
                self.permit = None;
            }
        }
        if bytes >= self.bytes {
            self.budget.add_in_use(bytes - self.bytes);
        } else {
            self.budget.sub_in_use(self.bytes - bytes);
        }
        self.bytes = bytes;
        Ok(())
    }

    /// Grows the lease to `bytes` without waiting (a no-op if `bytes` is not
    /// larger): what the budget has free is taken, and the rest is accounted
    /// (in use, and its peak, may pass the capacity until the lease shrinks or
    /// is dropped) without holding anyone back. For the consumer of batches,
    /// whose batch may be what a waiting producer's memory comes back from:
    /// waiting there could wait forever.
    pub fn grow_now(&mut self, bytes: usize) {
        if bytes <= self.bytes {
            return;
        }
        let want = self.budget.units_for(bytes);
        let have = self.permit.as_ref().map_or(0, |p| p.num_permits());
        let have = u32::try_from(have).unwrap_or(u32::MAX);
        let free = u32::try_from(self.budget.semaphore.available_permits()).unwrap_or(u32::MAX);
        let take = want.saturating_sub(have).min(free);
        if take > 0
            && let Ok(extra) = self.budget.semaphore.clone().try_acquire_many_owned(take)
        {
            match &mut self.permit {
                Some(permit) => permit.merge(extra),
                None => self.permit = Some(extra),
            }
        }
        self.budget.add_in_use(bytes - self.bytes);
        self.bytes = bytes;
    }

    /// Grows the lease to `bytes` only when the budget has that much free now
    /// (`true`, also when `bytes` is not larger); `false` leaves it as it was.
    /// For work that is worth doing only within the budget, such as a
    /// writer's preparation of a batch ahead of its turn.
    pub fn try_grow(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        let want = self.budget.units_for(bytes);
        let have = self.permit.as_ref().map_or(0, |p| p.num_permits());
        let have = u32::try_from(have).unwrap_or(u32::MAX);
        if want > have {
            let Ok(extra) = self
                .budget
                .semaphore
                .clone()
                .try_acquire_many_owned(want - have)
            else {
                return false;
            };
            match &mut self.permit {
                Some(permit) => permit.merge(extra),
                None => self.permit = Some(extra),
            }
        }
        self.budget.add_in_use(bytes - self.bytes);
        self.bytes = bytes;
        true
    }

    /// Shrinks the lease without waiting (a no-op if `bytes` is not smaller).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes >= self.bytes {
            return;
        }
        let want = self.budget.units_for(bytes);
        if let Some(permit) = &mut self.permit {
            let have = permit.num_permits();
            if (want as usize) < have {
                drop(permit.split(have - want as usize));
            }
        }
        if want == 0 {
            self.permit = None;
        }
        self.budget.sub_in_use(self.bytes - bytes);
        self.bytes = bytes;
    }

    /// Moves `bytes` of this lease (at most all of it) into a new lease on the
    /// same budget; nothing is acquired or released.
    pub fn split(&mut self, bytes: usize) -> MemoryLease {
        let bytes = bytes.min(self.bytes);
        let keep_units = self.budget.units_for(self.bytes - bytes) as usize;
        let permit = match &mut self.permit {
            Some(permit) if permit.num_permits() > keep_units => {
                permit.split(permit.num_permits() - keep_units)
            }
            _ => None,
        };
        if keep_units == 0 {
            self.permit = None;
        }
        self.bytes -= bytes;
        MemoryLease {
            budget: self.budget.clone(),
            permit,
            bytes,
        }
    }

    /// A zero-byte lease on the same budget.
    pub(crate) fn empty_twin(&self) -> MemoryLease {
        MemoryLease {
            budget: self.budget.clone(),
            permit: None,
            bytes: 0,
        }
    }

    /// Moves the bytes of `other` into this lease (both must come from the same
    /// budget, otherwise an [`ErrorKind::Contract`] error is returned and `other`
    /// is released).
    pub fn merge(&mut self, mut other: MemoryLease) -> Result<()> {
        if !Arc::ptr_eq(&self.budget, &other.budget) {
            return Err(Error::new(
                ErrorKind::Contract,
                "cannot merge memory leases of different budgets",
            ));
        }
        if let Some(theirs) = other.permit.take() {
            match &mut self.permit {
                Some(permit) => permit.merge(theirs),
                None => self.permit = Some(theirs),
            }
        }
        self.bytes += other.bytes;
        other.bytes = 0;
        Ok(())
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        self.budget.sub_in_use(self.bytes);
    }
}

impl std::fmt::Debug for MemoryLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLease")
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// Formats a byte count for humans: `512 B`, `3.2 KiB`, `48.0 MiB`, `1.5 GiB`.
pub fn format_bytes(bytes: usize) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn growing_now_never_waits_and_gives_everything_back() {
        let budget = MemoryBudget::new(10 * UNIT);
        let mut held = budget.acquire(6 * UNIT).await.unwrap();
        let mut consumer = budget.acquire(3 * UNIT).await.unwrap();
        // 1 unit is free, 7 more are needed: it is taken, and all accounted at once.
        consumer.grow_now(10 * UNIT);
        assert_eq!(consumer.bytes(), 10 * UNIT);
        assert_eq!(budget.in_use(), 16 * UNIT, "past the capacity, not waiting");
        assert!(
            budget.try_acquire(UNIT).is_none(),
            "the free units were taken"
        );
        consumer.grow_now(UNIT);
        assert_eq!(consumer.bytes(), 10 * UNIT, "growing never shrinks");
        let part = consumer.split(4 * UNIT);
        drop(part);
        drop(consumer);
        assert_eq!(budget.in_use(), 6 * UNIT);
        held.shrink_to(0);
        assert_eq!(budget.in_use(), 0);
        let all = budget.try_acquire(10 * UNIT);
        assert!(all.is_some(), "every permit came back");
    }

    #[tokio::test]
    async fn trying_to_grow_takes_only_what_is_free() {
        let budget = MemoryBudget::new(10 * UNIT);
        let held = budget.acquire(6 * UNIT).await.unwrap();
        let mut lease = budget.acquire(2 * UNIT).await.unwrap();
        assert!(!lease.try_grow(7 * UNIT), "5 more units needed, 2 free");
        assert_eq!(
            lease.bytes(),
            2 * UNIT,
            "a refusal leaves the lease as it was"
        );
        assert_eq!(budget.in_use(), 8 * UNIT);
        assert!(lease.try_grow(4 * UNIT));
        assert_eq!((lease.bytes(), budget.in_use()), (4 * UNIT, 10 * UNIT));
        assert!(budget.try_acquire(1).is_none(), "the budget is full now");
        assert!(lease.try_grow(UNIT), "not larger: nothing to take");
        assert_eq!(lease.bytes(), 4 * UNIT);
        drop(held);
        drop(lease);
        assert_eq!(budget.in_use(), 0);
        assert!(
            budget.try_acquire(10 * UNIT).is_some(),
            "every permit came back"
        );
    }

    #[tokio::test]
    async fn acquire_blocks_when_full_and_resumes_on_release() {
        let budget = MemoryBudget::new(10 * UNIT);
        let first = budget.acquire(8 * UNIT).await.unwrap();
        assert_eq!(budget.in_use(), 8 * UNIT);

        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(4 * UNIT).await.map(|l| l.bytes()) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "must wait while the budget is full");

        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released memory must wake the waiter")
            .unwrap()
            .unwrap();
        assert_eq!(got, 4 * UNIT);
        let snap = budget.snapshot();
        assert_eq!(snap.waits, 1);
        assert_eq!(snap.peak, 8 * UNIT);
        assert_eq!(snap.in_use, 0, "the waiter's lease was dropped");
    }

    #[tokio::test]
    async fn fail_policy_errors_instead_of_waiting() {
        let budget = MemoryBudget::with_policy(4 * UNIT, WhenFull::Fail);
        let _held = budget.acquire(3 * UNIT).await.unwrap();
        let err = budget.acquire(2 * UNIT).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MemoryLimit);
        assert!(
            err.to_string()
                .contains("memory budget of 4.0 KiB exhausted")
        );
    }

    #[tokio::test]
    async fn oversized_request_is_clamped_instead_of_deadlocking() {
        let budget = MemoryBudget::new(4 * UNIT);
        let lease = budget.acquire(100 * UNIT).await.unwrap();
        assert_eq!(lease.bytes(), 100 * UNIT);
        assert!(
            budget.try_acquire(1).is_none(),
            "the clamped lease holds it all"
        );
        drop(lease);
        assert!(budget.try_acquire(4 * UNIT).is_some());
    }

    #[tokio::test]
    async fn resize_and_merge_keep_accounting_exact() {
        let budget = MemoryBudget::new(64 * UNIT);
        let mut a = budget.acquire(10 * UNIT).await.unwrap();
        a.resize(20 * UNIT).await.unwrap();
        assert_eq!(budget.in_use(), 20 * UNIT);
        a.shrink_to(5 * UNIT);
        assert_eq!(budget.in_use(), 5 * UNIT);
        let b = budget.acquire(7 * UNIT).await.unwrap();
        a.merge(b).unwrap();
        assert_eq!(a.bytes(), 12 * UNIT);
        assert_eq!(budget.in_use(), 12 * UNIT);
        // 52 units are free again: a request for all of them must not wait.
        assert!(budget.try_acquire(52 * UNIT).is_some());
        drop(a);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.try_acquire(64 * UNIT).is_some());
    }

    #[tokio::test]
    async fn merging_leases_of_other_budgets_is_refused() {
        let one = MemoryBudget::new(8 * UNIT);
        let two = MemoryBudget::new(8 * UNIT);
        let mut a = one.acquire(UNIT).await.unwrap();
        let b = two.acquire(UNIT).await.unwrap();
        assert_eq!(a.merge(b).unwrap_err().kind(), ErrorKind::Contract);
        assert_eq!(two.in_use(), 0, "the refused lease is released");
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(48 * 1024 * 1024), "48.0 MiB");
    }
}
