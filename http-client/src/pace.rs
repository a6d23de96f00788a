//! Pacing requests to a rate limit: each request gets a slot, slots are spaced
//! evenly at a little under the limit (a server counts arrivals, and requests do
//! not arrive exactly as sent), and a "slow down" answer pauses every caller.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The share of the rate limit used: close enough to use it fully, far enough
/// to stay under it when arrivals bunch up.
const HEADROOM: f64 = 0.95;

/// Spaces requests evenly at a rate limit. Share it (`Arc<Pacer>`) between every
/// task that calls the same service.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
    fixed: bool,
    /// How many processes share the service's limit (the shards of a job):
    /// each uses its part.
    share: u32,
}

#[derive(Debug)]
struct State {
    next: Instant,
    interval: Duration,
    limit: u32,
}

fn interval_for(limit: u32) -> Duration {
    Duration::from_secs_f64(1.0 / (f64::from(limit.max(1)) * HEADROOM))
}

impl Pacer {
    /// A pacer at `limit` requests per second. A `fixed` limit is kept even when
    /// the service announces another one ([`Pacer::learn`]).
    pub fn new(limit: u32, fixed: bool) -> Self {
        Self {
            state: Mutex::new(State {
                next: Instant::now(),
                interval: interval_for(limit),
                limit,
            }),
            fixed,
            share: 1,
        }
    }

    /// This process's part of a limit `n` processes share (the shards of a
    /// job calling one service): the limit, given or learned, divided by `n`.
    #[must_use]
    pub fn shared_by(self, n: u32) -> Self {
        let share = n.max(1);
        {
            let mut s = self.lock();
            s.interval = interval_for((s.limit / share).max(1));
        }
        Self { share, ..self }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current limit, in requests per second.
    pub fn limit(&self) -> u32 {
        self.lock().limit
    }

    /// Waits for this request's slot; returns how long it waited.
    pub async fn wait(&self) -> Duration {
        let slot = {
            let mut s = self.lock();
            let now = Instant::now();
            let slot = s.next.max(now);
            s.next = slot + s.interval;
            slot
        };
        let waited = slot.saturating_duration_since(Instant::now());
        tokio::time::sleep_until(slot).await;
        waited
    }

    /// Adopts the limit the service announces (unless the limit is fixed).
    pub fn learn(&self, limit: u32) {
        if self.fixed || limit == 0 {
            return;
        }
        let mut s = self.lock();
        if s.limit != limit {
            tracing::debug!(limit, "adopting the announced rate limit");
            s.limit = limit;
            s.interval = interval_for((limit / self.share).max(1));
        }
    }

    /// Holds every request back for `pause` (after a "too many requests").
    pub fn pause(&self, pause: Duration) {
        let mut s = self.lock();
        let until = Instant::now() + pause;
        if s.next < until {
            s.next = until;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shards_use_their_part_of_a_shared_limit() {
        let pacer = Pacer::new(40, false).shared_by(4);
        let start = Instant::now();
        for _ in 0..11 {
            pacer.wait().await;
        }
        // 10 requests a second (at 95%): the 11th starts after about 1.05 s.
        let took = start.elapsed().as_secs_f64();
        assert!((1.0..1.1).contains(&took), "{took}");
        pacer.learn(80);
        assert_eq!(
            pacer.limit(),
            80,
            "the service's limit is what it announces"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn spaces_requests_and_pauses() {
        let pacer = Pacer::new(10, true);
        let start = Instant::now();
        for _ in 0..20 {
            pacer.wait().await;
        }
        let took = start.elapsed();
        // 19 intervals of 1/(10 × 0.95) s.
        assert!(
            took >= Duration::from_millis(1990) && took <= Duration::from_millis(2010),
            "{took:?}"
        );
        pacer.pause(Duration::from_secs(3));
        let before = Instant::now();
        pacer.wait().await;
        assert!(before.elapsed() >= Duration::from_millis(2990));
        pacer.learn(100);
        assert_eq!(pacer.limit(), 10, "a fixed limit stays");
    }
}
