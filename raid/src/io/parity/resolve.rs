//! Resolving a column (a 4 KiB block at one offset of every shard of a
//! row): data blocks that match their checksums are trusted; parity is
//! recomputed from them. Data blocks that fail are rebuilt from the rest
//! of the row, leaving out in turn the shards no checksum covers (parity,
//! and data of chunks not written, whose bytes still count in parity), and
//! accepted only if the result matches the checksums. In a resync (after an unclean shutdown
//! or a failed write) data that fails its checksum is adopted when the
//! row vouches for it (written before the crash, its checksum not
//! committed): a present block that a rebuilt block proves the row sound
//! around, or a lost block rebuilt from K shards that every further
//! survivor agrees with. Anything else is unrecoverable, and the read fails rather
//! than guess: outside a resync a row can agree with a bad block only
//! because rot was read into its parity. A block known bad (a write had
//! to encode parity from it though nothing vouched for it) is never
//! adopted.
//!
//! A read or a leg rebuild wants one shard's block, not the column: where
//! the column as a whole is beyond repair, a data block is still served
//! when a rebuild of it from some choice of survivors matches its own
//! checksum (`rebuild_block`), whatever its neighbours hold. A leg
//! rebuild that still finds a column beyond repair writes it as it stands
//! (`rebuild_as_it_stands`), so one lost block does not keep the whole
//! extent degraded.

use blockvirt::volume::BlockCheck;
use blockvirt::IoBufMut;

use super::Parity;
use crate::io::verify::BLOCK;

/// What a column's shards say, once resolved.
pub(super) enum Verdict {
    /// The right content of every shard; the shards that held wrong bytes
    /// (to rewrite); the data shards whose content stands although it
    /// fails its checksum (adopted: the row vouches for it).
    Good {
        shards: Vec<Vec<u8>>,
        wrong: Vec<usize>,
        adopted: Vec<usize>,
    },
    Unrecoverable,
}

impl Parity {
    /// Resolves the 4 KiB column at `at` within `column` (see module doc).
    pub(super) fn resolve(
        &self,
        column: &[Option<IoBufMut>],
        row: u64,
        in_unit: u64,
        at: usize,
        check: Option<&dyn BlockCheck>,
        adopt: bool,
    ) -> Verdict {
        let (k, n) = (self.k(), self.shards());
        let block = |shard: usize| column[shard].as_ref().map(|b| &b[at..at + BLOCK]);
        let offset = |shard: usize| self.data_offset(row, shard, in_unit + at as u64);
        let matches =
            |shard: usize, data: &[u8]| check.is_none_or(|c| c.matches(offset(shard), data));
        let covered = |shard: usize| check.is_some_and(|c| c.covers(offset(shard)));
        let known_bad = |shard: usize| check.is_some_and(|c| c.known_bad(offset(shard)));
        let present: Vec<bool> = (0..n).map(|s| column[s].is_some()).collect();
        let missing: Vec<usize> = (0..k).filter(|&s| !present[s]).collect();
        let suspects: Vec<usize> = (0..k)
            .filter(|&s| block(s).is_some_and(|b| !matches(s, b)))
            .collect();
        let parity_present: Vec<usize> = (k..n).filter(|&s| present[s]).collect();
        // Present shards no checksum vouches for: parity, and data blocks
        // of chunks not written (they read as zeroes, but their bytes still
        // count in parity). Either may be bad unseen; left out in turn.
        let unchecked: Vec<usize> = parity_present
            .iter()
            .copied()
            .chain((0..k).filter(|&s| present[s] && !covered(s)))
            .collect();
        let encode = |data: &[Vec<u8>]| -> Option<Vec<Vec<u8>>> {
            let mut parity = vec![vec![0u8; BLOCK]; n - k];
            let inputs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let mut outputs: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
            self.codec.encode(&inputs, &mut outputs).ok()?;
            Some(parity)
        };
        let differing_parity = |parity: &[Vec<u8>]| -> Vec<usize> {
            (k..n)
                .filter(|&s| block(s).is_some_and(|b| b != parity[s - k].as_slice()))
                .collect()
        };

        if missing.is_empty() {
            let data: Vec<Vec<u8>> = (0..k)
                .map(|s| block(s).expect("present").to_vec())
                .collect();
            let Some(parity) = encode(&data) else {
                return Verdict::Unrecoverable;
            };
            let wrong = differing_parity(&parity);
            if suspects.is_empty() {
                // Data vouched for: parity follows from it.
                return Verdict::Good {
                    shards: data.into_iter().chain(parity).collect(),
                    wrong,
                    adopted: Vec::new(),
                };
            }
            if adopt
                && !parity_present.is_empty()
                && wrong.is_empty()
                && !suspects.iter().any(|&s| known_bad(s))
            {
                // The row is consistent with the suspects as they are.
                return Verdict::Good {
                    shards: data.into_iter().chain(parity).collect(),
                    wrong,
                    adopted: suspects,
                };
            }
        }
        // Rebuild what is missing, with the suspects rebuilt too or taken as
        // they are, leaving out unchecked shards in turn in case one is bad.
        let m = n - k;
        let mut tried: Vec<Vec<usize>> = Vec::new();
        // Every suspect rebuilt first. In a resync, fewer in turn (the
        // most first), the rest kept as they are: an unfinished write's
        // blocks next to one that rotted, which the row rebuilds to match
        // its checksum.
        let mut rebuild_sets = if adopt {
            subsets(&suspects, m.saturating_sub(missing.len()))
        } else {
            vec![Vec::new(), suspects.clone()]
        };
        rebuild_sets.reverse();
        for rebuilt_suspects in rebuild_sets {
            let base: Vec<usize> = missing.iter().chain(&rebuilt_suspects).copied().collect();
            if base.len() > m {
                continue;
            }
            for excluded in subsets(&unchecked, m - base.len()) {
                let erased: Vec<usize> = base.iter().chain(&excluded).copied().collect();
                if tried.contains(&erased) {
                    continue;
                }
                tried.push(erased.clone());
                let survivors: Vec<bool> =
                    (0..n).map(|s| present[s] && !erased.contains(&s)).collect();
                if survivors.iter().filter(|s| **s).count() < k {
                    continue;
                }
                let mut shards: Vec<Vec<u8>> = (0..n)
                    .map(|s| {
                        if survivors[s] {
                            block(s).expect("present").to_vec()
                        } else {
                            vec![0u8; BLOCK]
                        }
                    })
                    .collect();
                let mut slices: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
                if self.codec.reconstruct(&mut slices, &survivors).is_err() {
                    continue;
                }
                let rebuilt: Vec<usize> = erased.iter().copied().filter(|&s| s < k).collect();
                let unvouched: Vec<usize> = rebuilt
                    .iter()
                    .copied()
                    .filter(|&s| !matches(s, &shards[s]))
                    .collect();
                // A present block rebuilt to something else its checksum
                // does not know either is not outvoted, however many shards
                // agree: parity updated by delta from an unverified read of
                // it (a chunk not yet written) agrees with the rot.
                if unvouched.iter().any(|&s| present[s]) {
                    continue;
                }
                let Some(parity) = encode(&shards[..k]) else {
                    continue;
                };
                // Blocks that fail their checksums stand only in a resync
                // (written before the crash, their checksums not
                // committed), and only where the row vouches for them: a
                // rebuilt block proved the row sound against a real
                // checksum, or more shards than the rebuild needed all
                // agree. A lost block rebuilt to something its checksum
                // does not know needs the latter. The shards left out
                // may be among those that disagree (with M >= 2, a rotten
                // parity block next to an unfinished write): K+1 shards
                // that agree still check each other.
                let kept: Vec<usize> = suspects
                    .iter()
                    .copied()
                    .filter(|s| !erased.contains(s))
                    .collect();
                let proven = rebuilt
                    .iter()
                    .any(|&s| covered(s) && !unvouched.contains(&s));
                let agree = survivors.iter().filter(|s| **s).count() > k
                    && (k..n).all(|s| !survivors[s] || block(s) == Some(&parity[s - k][..]));
                let vouched = (kept.is_empty() || adopt && (proven || agree))
                    && (unvouched.is_empty() || adopt && agree);
                if !vouched {
                    continue;
                }
                let adopted: Vec<usize> = kept.into_iter().chain(unvouched).collect();
                if adopted.iter().any(|&s| known_bad(s)) {
                    continue;
                }
                let mut wrong: Vec<usize> = suspects
                    .iter()
                    .copied()
                    .filter(|s| erased.contains(s))
                    .collect();
                wrong.extend(
                    excluded
                        .iter()
                        .copied()
                        .filter(|&s| s < k && block(s) != Some(&shards[s][..])),
                );
                wrong.extend(differing_parity(&parity));
                shards.truncate(k);
                shards.extend(parity);
                return Verdict::Good {
                    shards,
                    wrong,
                    adopted,
                };
            }
        }
        Verdict::Unrecoverable
    }

    /// One data block the column as a whole cannot vouch for (another of
    /// its blocks fails its checksum too, a torn write's or rot's): rebuilt
    /// from each choice of survivors in turn and kept only if it matches
    /// its own checksum. A read wants this block alone, and its checksum
    /// proves it whatever its neighbours hold. `None` where no checksum
    /// covers it or no choice matches.
    pub(super) fn rebuild_block(
        &self,
        column: &[Option<IoBufMut>],
        row: u64,
        in_unit: u64,
        at: usize,
        shard: usize,
        check: &dyn BlockCheck,
    ) -> Option<Vec<u8>> {
        let (k, n) = (self.k(), self.shards());
        let offset = self.data_offset(row, shard, in_unit + at as u64);
        if !check.covers(offset) {
            return None;
        }
        let block = |s: usize| column[s].as_ref().map(|b| &b[at..at + BLOCK]);
        if let Some(own) = block(shard).filter(|b| check.matches(offset, b)) {
            return Some(own.to_vec());
        }
        let others: Vec<usize> = (0..n)
            .filter(|&s| s != shard && block(s).is_some())
            .collect();
        for excluded in subsets(&others, n - k - 1) {
            let survivors: Vec<bool> = (0..n)
                .map(|s| s != shard && block(s).is_some() && !excluded.contains(&s))
                .collect();
            if survivors.iter().filter(|s| **s).count() < k {
                continue;
            }
            let mut shards: Vec<Vec<u8>> = (0..n)
                .map(|s| match block(s) {
                    Some(b) if survivors[s] => b.to_vec(),
                    _ => vec![0u8; BLOCK],
                })
                .collect();
            let mut slices: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
            if self.codec.reconstruct(&mut slices, &survivors).is_ok()
                && check.matches(offset, &shards[shard])
            {
                return Some(shards.swap_remove(shard));
            }
        }
        None
    }

    /// A block of a column beyond repair, for a leg being rebuilt: what the
    /// row holds as it stands, the missing shards reconstructed from the
    /// present ones, damage and all. The new leg then agrees with the rest
    /// of its row and the rebuild can finish, as md's and ZFS's do around
    /// blocks already lost. The data blocks that fail their checksums are
    /// marked known bad: they fail every read as before, and no resync may
    /// adopt what parity now agrees with. `None` with fewer than K shards.
    pub(super) fn rebuild_as_it_stands(
        &self,
        column: &[Option<IoBufMut>],
        row: u64,
        in_unit: u64,
        at: usize,
        shard: usize,
        check: Option<&dyn BlockCheck>,
    ) -> Option<Vec<u8>> {
        let k = self.k();
        let present: Vec<bool> = column.iter().map(Option::is_some).collect();
        if present.iter().filter(|p| **p).count() < k {
            return None;
        }
        let mut shards: Vec<Vec<u8>> = column
            .iter()
            .map(|c| {
                c.as_ref()
                    .map_or_else(|| vec![0u8; BLOCK], |b| b[at..at + BLOCK].to_vec())
            })
            .collect();
        let mut slices: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
        self.codec.reconstruct(&mut slices, &present).ok()?;
        if let Some(check) = check {
            for (s, block) in shards.iter().enumerate().take(k) {
                let offset = self.data_offset(row, s, in_unit + at as u64);
                if !check.matches(offset, block) {
                    check.mark_known_bad(offset);
                }
            }
        }
        Some(shards.swap_remove(shard))
    }
}

/// Subsets of `items` with at most `max` members, smallest first.
pub(super) fn subsets(items: &[usize], max: usize) -> Vec<Vec<usize>> {
    let mut subsets = vec![Vec::new()];
    for size in 1..=max.min(items.len()) {
        let mut indexes: Vec<usize> = (0..size).collect();
        loop {
            subsets.push(indexes.iter().map(|&i| items[i]).collect());
            let Some(i) = (0..size)
                .rev()
                .find(|&i| indexes[i] != i + items.len() - size)
            else {
                break;
            };
            indexes[i] += 1;
            for j in i + 1..size {
                indexes[j] = indexes[j - 1] + 1;
            }
        }
    }
    subsets
}
