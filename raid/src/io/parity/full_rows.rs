//! Runs of whole rows in one request, written with one in-place write per
//! leg instead of one per row and leg.
//!
//! ```text
//!  rows 7, 8, 9 of a 3+1 request:   leg 0   leg 1   leg 2   leg 3
//!                         row 7     d0      d1      d2      P
//!                         row 8     d0      d1      P       d2
//!                         row 9     d0      P       d1      d2
//!  each row: parity, intent (as a single-row write) ─▶ every intent durable
//!  ─▶ leg 0 gets rows 7-9 in one write, leg 1 too, ... ─▶ entries completed
//! ```
//!
//! A leg holds unit after unit of consecutive rows back to back, whatever
//! shard each row puts there, so the units of a run are one contiguous
//! range per leg. Only layouts whose full rows log intents (one parity
//! shard) merge: their entries are a few KiB, while M >= 2 journals every
//! byte and gains little from fewer in-place writes.
//!
//! Crash rule: unchanged from single rows. No byte of a row goes in place
//! before its intent is durable, and an entry is completed only after its
//! in-place writes finished.
//!
//! Locks: the run holds every one of its rows' locks, taken in table order
//! (`row_lock_index`); single-row writers hold one at a time, so nobody
//! waits in a cycle. The run holds its entries' tickets until every row is
//! in place, so it retires its rows' earlier intents before logging any.

use std::collections::HashMap;

use blockvirt::volume::{BlockCheck, Legs};
use blockvirt::{BlockResult, IoBuf, WriteFlags};
use futures::future::join_all;
use metadata::PvId;

use super::{put_leg, Parity, RowWrite};
use crate::geometry::RowSpan;
use crate::journal::Tickets;

/// A row whose intent is durable: its writes for online legs, its tickets.
type Logged = (u64, Vec<(usize, u64, IoBuf)>, Option<Tickets>);

impl Parity {
    /// Splits a request's row spans into what is written together: runs
    /// of consecutive whole rows where full rows log intents, every other
    /// span alone.
    pub(super) fn runs(&self, spans: Vec<RowSpan>) -> Vec<Vec<RowSpan>> {
        let mut runs: Vec<Vec<RowSpan>> = Vec::new();
        for span in spans {
            let joins = self.logs_intents()
                && span.full
                && runs.last().is_some_and(|run| {
                    let last = &run[run.len() - 1];
                    last.full && last.row + 1 == span.row
                });
            match runs.last_mut() {
                Some(run) if joins => run.push(span),
                _ => runs.push(vec![span]),
            }
        }
        runs
    }

    /// Writes whole rows from `first` on, `data` holding their user bytes.
    pub(super) async fn write_full_rows(
        &self,
        legs: &Legs,
        first: u64,
        data: IoBuf,
        flags: WriteFlags,
        check: Option<&dyn BlockCheck>,
    ) -> BlockResult<()> {
        let row_bytes = self.geometry.row_bytes() as usize;
        let rows = first..first + (data.len() / row_bytes) as u64;
        let mut locks: Vec<usize> = rows
            .clone()
            .map(|row| self.row_lock_index(legs, row))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        let mut guards = Vec::with_capacity(locks.len());
        for index in locks {
            guards.push(self.row_locks[index].lock().await);
        }
        // An earlier intent of one of the rows is retired before the run
        // logs anything: a retire waits for every entry logged before it to
        // complete, and the run's own complete only once all are in place.
        let mut stale: Vec<PvId> = rows
            .clone()
            .filter_map(|row| {
                let pvs = self.parity_pvs(legs, row);
                self.journals
                    .has_unretired_intent(&pvs, self.row_key(legs, row))
                    .then_some(pvs)
            })
            .flatten()
            .collect();
        if !stale.is_empty() {
            stale.sort_unstable();
            stale.dedup();
            self.journals.retire(&stale).await?;
        }
        let logs = rows.clone().map(|row| {
            let at = (row - first) as usize * row_bytes;
            self.log_full_row(legs, row, data.slice(at..at + row_bytes), check)
        });
        let mut logged: Vec<Logged> = Vec::new();
        let mut failure = None;
        for result in join_all(logs).await {
            match result {
                Ok(row) => logged.push(row),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        self.put_rows(legs, &logged, flags).await;
        for (_, _, tickets) in logged {
            if let Some(tickets) = tickets {
                self.journals.completed(tickets);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        rows.into_iter()
            .try_for_each(|row| self.check_tolerance(legs, row))
    }

    /// Encodes one whole row's parity and logs its intent (the row's lock
    /// held).
    async fn log_full_row(
        &self,
        legs: &Legs,
        row: u64,
        data: IoBuf,
        check: Option<&dyn BlockCheck>,
    ) -> BlockResult<Logged> {
        self.check_tolerance(legs, row)?;
        let unit = self.unit() as usize;
        let mut writes: Vec<(usize, u64, IoBuf)> = (0..self.k())
            .map(|shard| (shard, 0, data.slice(shard * unit..(shard + 1) * unit)))
            .collect();
        let inputs: Vec<&[u8]> = writes.iter().map(|(_, _, bytes)| &bytes[..]).collect();
        let parity = self.encode(&inputs)?;
        let k = self.k();
        writes.extend(
            parity
                .iter()
                .enumerate()
                .map(|(j, p)| (k + j, 0, IoBuf::copy_from(p))),
        );
        let cols = 0..self.unit();
        let (online, tickets) = self
            .log_row(legs, row, &cols, &writes, RowWrite::FullWithIntent, check)
            .await?;
        Ok((row, online, tickets))
    }

    /// Puts the logged rows in place: per leg, each stretch of consecutive
    /// rows in one write. A leg that fails is marked failed.
    async fn put_rows(&self, legs: &Legs, logged: &[Logged], flags: WriteFlags) {
        // (leg, first row, units in row order)
        let mut stretches: Vec<(usize, u64, Vec<&[u8]>)> = Vec::new();
        let mut open: HashMap<usize, usize> = HashMap::new();
        for (row, online, _) in logged {
            for (shard, _, bytes) in online {
                let leg = self.geometry.shard_leg(*row, *shard);
                match open.get(&leg).map(|&i| &mut stretches[i]) {
                    Some((_, start, units)) if *start + units.len() as u64 == *row => {
                        units.push(&bytes[..]);
                    }
                    _ => {
                        open.insert(leg, stretches.len());
                        stretches.push((leg, *row, vec![&bytes[..]]));
                    }
                }
            }
        }
        let puts = stretches.into_iter().map(|(leg, start, units)| {
            put_leg(legs, leg, start * self.unit(), IoBuf::concat(&units), flags)
        });
        join_all(puts).await;
    }
}
