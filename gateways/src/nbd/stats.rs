//! Server-wide counts of the NBD server: connections and requests in
//! flight, for the server's metrics.
//!
//! Plain atomics moved by guards (a connection's lifetime, a request's
//! hold on its slot), so a count can never be left behind by an early
//! return or a panic, and reading them takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counts of one [`NbdServer`](super::NbdServer), from
/// [`NbdServer::stats`](super::NbdServer::stats).
#[derive(Debug, Default)]
pub struct NbdStats {
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    requests_in_flight: AtomicU64,
}

impl NbdStats {
    /// TCP connections open now (in the handshake or transmitting).
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// TCP connections accepted since the server started.
    pub fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Ordering::Relaxed)
    }

    /// Requests read and not yet answered (running, or their reply not yet
    /// written to the socket).
    pub fn requests_in_flight(&self) -> u64 {
        self.requests_in_flight.load(Ordering::Relaxed)
    }

    /// Counts a new connection until the guard drops.
    pub(crate) fn connection(self: &Arc<Self>) -> Tally {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        Tally {
            stats: self.clone(),
            kind: Kind::Connection,
        }
    }

    /// Counts a request in flight until the guard drops.
    pub(crate) fn request(self: &Arc<Self>) -> Tally {
        self.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        Tally {
            stats: self.clone(),
            kind: Kind::Request,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Connection,
    Request,
}

/// Holds one count of [`NbdStats`]; dropping it gives the count back.
#[derive(Debug)]
pub(crate) struct Tally {
    stats: Arc<NbdStats>,
    kind: Kind,
}

impl Drop for Tally {
    fn drop(&mut self) {
        let gauge = match self.kind {
            Kind::Connection => &self.stats.connections_open,
            Kind::Request => &self.stats.requests_in_flight,
        };
        gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_give_their_counts_back_and_totals_stay() {
        let stats = Arc::new(NbdStats::default());
        let first = stats.connection();
        let second = stats.connection();
        let request = stats.request();
        assert_eq!(stats.connections_open(), 2);
        assert_eq!(stats.requests_in_flight(), 1);
        drop(request);
        drop(first);
        assert_eq!(stats.connections_open(), 1);
        assert_eq!(stats.requests_in_flight(), 0);
        drop(second);
        assert_eq!(stats.connections_open(), 0);
        assert_eq!(stats.connections_accepted(), 2);
    }
}
