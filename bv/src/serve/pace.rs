//! Keeps a maintenance job at its LV's `--maxrecoveryrate`.
//!
//! Before a job copies or checks an extent, it books the time that
//! extent's bytes take at the rate: the extent starts when the extents
//! before it have had theirs (or now, if that is past). So a job moves at
//! most the rate over any stretch of extents, and extents in flight
//! together start one after another instead of in one burst. The job reads
//! the rate from the LV's record at each extent, so `lvchange
//! --maxrecoveryrate` changes a running job from its next extent on; 0
//! lets it run unpaced. A job waits before it takes the extent's lock,
//! so client I/O never waits on the pacing.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct Pace {
    /// When the time booked so far runs out; `None` while unpaced.
    booked_until: Mutex<Option<Instant>>,
}

impl Pace {
    /// Waits for the turn of `bytes` at `rate` bytes per second (0: at
    /// once).
    pub async fn wait(&self, bytes: u64, rate: u64) {
        let start = {
            let mut booked = self.booked_until.lock();
            if rate == 0 {
                *booked = None;
                return;
            }
            let now = Instant::now();
            let start = booked.filter(|until| *until > now).unwrap_or(now);
            *booked = Some(start + Duration::from_secs_f64(bytes as f64 / rate as f64));
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[tokio::test(start_paused = true)]
    async fn each_extent_starts_once_those_before_had_their_time() {
        let pace = Pace::default();
        let begin = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..5 {
            pace.wait(4 * MIB, 2 * MIB).await;
            starts.push(Instant::now() - begin);
        }
        let expected: Vec<Duration> = (0..5).map(|i| Duration::from_secs(2 * i)).collect();
        assert_eq!(starts, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn extents_in_flight_together_start_one_after_another() {
        let pace = Pace::default();
        let begin = Instant::now();
        let starts = futures::future::join_all((0..4).map(|_| async {
            pace.wait(MIB, 4 * MIB).await;
            Instant::now() - begin
        }))
        .await;
        let expected: Vec<Duration> = (0..4).map(|i| Duration::from_millis(250 * i)).collect();
        assert_eq!(starts, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_applies_from_the_next_extent_and_zero_unpaces() {
        let pace = Pace::default();
        let begin = Instant::now();
        pace.wait(8 * MIB, MIB).await;
        // Booked 8 s; a faster rate does not shorten what was booked.
        pace.wait(8 * MIB, 8 * MIB).await;
        assert_eq!(Instant::now() - begin, Duration::from_secs(8));
        pace.wait(8 * MIB, 8 * MIB).await;
        assert_eq!(Instant::now() - begin, Duration::from_secs(9));
        // Unlimited: no wait, and nothing booked is left over.
        pace.wait(8 * MIB, 0).await;
        pace.wait(8 * MIB, 0).await;
        assert_eq!(Instant::now() - begin, Duration::from_secs(9));
        pace.wait(MIB, MIB).await;
        assert_eq!(Instant::now() - begin, Duration::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn time_a_job_spent_elsewhere_counts_towards_its_turn() {
        let pace = Pace::default();
        let begin = Instant::now();
        pace.wait(4 * MIB, MIB).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        pace.wait(4 * MIB, MIB).await;
        assert_eq!(Instant::now() - begin, Duration::from_secs(10));
    }
}
