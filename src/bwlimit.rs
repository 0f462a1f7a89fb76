//! `--bwlimit`: one token bucket shared by every worker of a run.
//!
//! Tokens are bytes. The bucket refills continuously at `rate` bytes per second up to a small
//! burst; a worker takes tokens for an operation *before* issuing it and, when that leaves the
//! bucket in debt, sleeps until the debt is repaid. Debt is shared, so concurrent takers queue
//! behind each other in time: the total granted by time `t` never exceeds
//! `burst + rate * t`, however many workers there are.
//!
//! Smoothness (the reason this is not HAMMER-style "send a second's worth, then sleep out the
//! second"): the burst and the largest single grant are both about 10 ms of rate
//! ([`Bucket::op_bytes`] tells data paths how big to make their operations), so any window of
//! length `w` sees at most `rate * (w + 20 ms)` bytes: at most 1.2× the limit over 100 ms.
//!
//! Callers should take tokens for the writes of a copy, right before issuing them: an engine
//! handles completions in batches, so reads paced smoothly can still turn into bursts of
//! writes (measured: 100 ms windows at 3.7x the limit when reads were paced). Pacing reads and
//! writes with two buckets kept the windows but lost 12-28 % of the rate: a worker asleep on
//! one side cannot feed the other.
//!
//! The clock is passed in ([`Clock`]), so the arithmetic is tested with a fake clock without
//! sleeping. Must not: do I/O, or know what the bytes are.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Time source and sleeper. [`MonotonicClock`] in production; tests advance a fake one.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn now(&self) -> Duration;
    fn sleep(&self, d: Duration);
}

/// The real clock: `Instant` and `thread::sleep`.
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// How much of the rate may be spent at once after an idle period, and how big one grant should
/// be: 10 ms worth.
const BURST_SECONDS: f64 = 0.010;
/// Floors for tiny rates: never make data paths use operations smaller than one page.
const BURST_MIN_BYTES: f64 = 4096.0;
const OP_MIN_BYTES: u64 = 4096;

#[derive(Debug)]
struct State {
    /// Available bytes; negative = debt that takers are sleeping off.
    tokens: f64,
    /// Clock reading of the last refill.
    last: Duration,
}

/// A shared byte-rate limiter.
#[derive(Debug)]
pub struct Bucket<C: Clock = MonotonicClock> {
    rate: f64,
    burst: f64,
    clock: C,
    state: Mutex<State>,
}

impl Bucket<MonotonicClock> {
    /// A bucket on the real clock. `rate` in bytes per second, at least 1.
    pub fn new(rate: u64) -> Bucket<MonotonicClock> {
        Bucket::with_clock(rate, MonotonicClock::default())
    }
}

impl<C: Clock> Bucket<C> {
    /// A bucket on `clock`, starting full (one burst may go at once).
    pub fn with_clock(rate: u64, clock: C) -> Bucket<C> {
        let rate = rate.max(1) as f64;
        let burst = (rate * BURST_SECONDS).max(BURST_MIN_BYTES);
        let now = clock.now();
        Bucket {
            rate,
            burst,
            clock,
            state: Mutex::new(State {
                tokens: burst,
                last: now,
            }),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// The largest operation a data path should issue under this limit: 10 ms of rate, at least
    /// 4 KiB, a multiple of 4 KiB. Larger grants are allowed, but they make the flow lumpier.
    pub fn op_bytes(&self) -> u64 {
        let b = (self.rate * BURST_SECONDS) as u64;
        (b / OP_MIN_BYTES * OP_MIN_BYTES).max(OP_MIN_BYTES)
    }

    /// Debit `bytes` now and return how long the caller must wait before using them (zero when
    /// the bucket had enough). Never blocks; [`Bucket::take`] is this plus the sleep.
    pub fn reserve(&self, bytes: u64) -> Duration {
        let now = self.clock.now();
        let mut s = self.state.lock().expect("bwlimit state poisoned");
        let elapsed = now.saturating_sub(s.last).as_secs_f64();
        s.last = s.last.max(now);
        s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        s.tokens -= bytes as f64;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / self.rate)
        }
    }

    /// Debit `bytes` and sleep until they may be used.
    pub fn take(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            self.clock.sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A clock that only moves when told to (or when someone "sleeps" on it).
    #[derive(Default)]
    struct FakeClock {
        ns: AtomicU64,
    }

    impl FakeClock {
        fn advance(&self, d: Duration) {
            self.ns.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
        }
        fn set(&self, t: Duration) {
            self.ns.store(t.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for Arc<FakeClock> {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.ns.load(Ordering::SeqCst))
        }
        fn sleep(&self, d: Duration) {
            self.advance(d);
        }
    }

    const MB: u64 = 1 << 20;

    fn bucket(rate: u64) -> (Arc<FakeClock>, Bucket<Arc<FakeClock>>) {
        let clock = Arc::new(FakeClock::default());
        let b = Bucket::with_clock(rate, clock.clone());
        (clock, b)
    }

    #[test]
    fn a_burst_goes_at_once_then_the_rate_applies() {
        let (_, b) = bucket(100 * MB);
        let burst = (100 * MB) as f64 * BURST_SECONDS;
        // The first burst's worth is free.
        assert_eq!(b.reserve(burst as u64), Duration::ZERO);
        // The next 100 MiB takes one second.
        let w = b.reserve(100 * MB);
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn long_idle_refills_only_up_to_the_burst() {
        let (clock, b) = bucket(10 * MB);
        b.take(10 * MB); // drain and pay off
        clock.advance(Duration::from_secs(3600));
        let burst = b.burst as u64;
        assert_eq!(b.reserve(burst), Duration::ZERO);
        // Nothing banked beyond the burst: a further byte already waits.
        assert!(b.reserve(MB) > Duration::from_millis(99));
    }

    #[test]
    fn debt_is_shared_so_concurrent_takers_queue_in_time() {
        let (_, b) = bucket(MB);
        let burst = b.burst as u64;
        assert_eq!(b.reserve(burst), Duration::ZERO);
        // Three takers of 1 MiB at the same instant wait 1 s, 2 s, 3 s.
        for k in 1..=3u64 {
            let w = b.reserve(MB).as_secs_f64();
            assert!((w - k as f64).abs() < 1e-6, "taker {k} waits {w}");
        }
    }

    #[test]
    fn a_clock_that_steps_back_is_ignored() {
        let (clock, b) = bucket(MB);
        clock.set(Duration::from_secs(10));
        b.take(b.burst as u64);
        clock.set(Duration::from_secs(5));
        // No refill from the backward step, and no panic.
        let w = b.reserve(MB);
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn op_bytes_is_ten_ms_of_rate_in_pages() {
        assert_eq!(bucket(50 * MB).1.op_bytes(), 524_288);
        assert_eq!(bucket(1).1.op_bytes(), 4096);
        assert_eq!(bucket(100 * MB).1.op_bytes() % 4096, 0);
    }

    /// Many simulated workers, each looping "take op_bytes, then spend some time on I/O",
    /// driven by an event loop over virtual time. Checks the average and every 100 ms window.
    #[test]
    fn many_workers_keep_the_average_and_every_window() {
        for (rate, workers, io_us) in [
            (50 * MB, 8, 300),
            (50 * MB, 64, 5_000),
            (3 * MB, 4, 10),
            (400 * MB, 16, 50),
        ] {
            let (clock, b) = bucket(rate);
            let op = b.op_bytes();
            // Each worker's next ready time (virtual ns).
            let mut ready = vec![0u64; workers];
            // (release time ns, bytes) of every grant.
            let mut grants: Vec<(u64, u64)> = Vec::new();
            let horizon = 10_000_000_000u64; // 10 s
            loop {
                let (i, &t) = ready
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, t)| **t)
                    .expect("workers");
                if t >= horizon {
                    break;
                }
                clock.set(Duration::from_nanos(t));
                let wait = b.reserve(op).as_nanos() as u64;
                let release = t + wait;
                grants.push((release, op));
                ready[i] = release + io_us * 1000;
            }
            grants.sort_unstable();
            let granted: u64 = grants.iter().filter(|g| g.0 <= horizon).map(|g| g.1).sum();
            let avg = granted as f64 / 10.0;
            let err = (avg - rate as f64).abs() / rate as f64;
            assert!(err < 0.01, "rate {rate} workers {workers}: average off by {err}");
            // Every 100 ms window starting at a release.
            let win = 100_000_000u64;
            let mut j = 0;
            let mut sum = 0u64;
            for k in 0..grants.len() {
                while j < grants.len() && grants[j].0 < grants[k].0 + win {
                    sum += grants[j].1;
                    j += 1;
                }
                let limit = rate as f64 * 0.1;
                assert!(
                    sum as f64 <= 1.25 * limit,
                    "rate {rate} workers {workers}: {sum} bytes in 100 ms ({:.2}x)",
                    sum as f64 / limit
                );
                sum -= grants[k].1;
            }
        }
    }

    #[test]
    fn real_threads_share_one_bucket() {
        // Real threads on the fake clock: sleeping advances the shared fake time, so the sum of
        // grants can be checked against `burst + rate * now` at the end.
        let clock = Arc::new(FakeClock::default());
        let b = Arc::new(Bucket::with_clock(10 * MB, clock.clone()));
        let total = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (b, total) = (b.clone(), total.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let n = b.op_bytes();
                        b.take(n);
                        total.fetch_add(n, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("worker");
        }
        let elapsed = clock.now().as_secs_f64();
        let granted = total.load(Ordering::SeqCst) as f64;
        // Sleeps overlap in real life but add up on this clock, so time can only run ahead of
        // the rate: the bucket never grants more than burst + rate * elapsed.
        assert!(granted <= b.burst + 10.0 * MB as f64 * elapsed + 1.0);
    }
}
