//! Overlapping writes into one extent of a redundant LV, one at a time.
//!
//! Two writes to the same block in flight together may reach the copies
//! of a mirror in different orders, leaving copies that disagree with each
//! other and with the checksum recorded last. Writes that overlap wait for
//! each other; the rest run concurrently. Guests rarely overlap writes in
//! flight, so the wait is rare.

use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(super) struct WriteRanges {
    /// Byte ranges `[start, end)` of the writes in flight.
    busy: Mutex<Vec<(u64, u64)>>,
    freed: Notify,
}

/// Holds a range until dropped.
pub(super) struct RangeGuard<'a> {
    ranges: &'a WriteRanges,
    range: (u64, u64),
}

impl WriteRanges {
    /// Waits until no write in flight overlaps `[start, end)`, then holds it.
    pub async fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            {
                let mut busy = self.busy.lock();
                if !busy.iter().any(|&(s, e)| s < end && start < e) {
                    busy.push((start, end));
                    return RangeGuard {
                        ranges: self,
                        range: (start, end),
                    };
                }
                // Registered before the lock is let go: no wake-up is missed.
                freed.as_mut().enable();
            }
            freed.await;
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self.ranges.busy.lock();
        if let Some(i) = busy.iter().position(|r| *r == self.range) {
            busy.swap_remove(i);
        }
        drop(busy);
        self.ranges.freed.notify_waiters();
    }
}
