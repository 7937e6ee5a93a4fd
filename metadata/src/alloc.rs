//! Physical-extent allocation: which PEs are in use, and where the next
//! extent goes.
//!
//! Each PV has a bitmap of used PEs. A new extent takes one PE on each of
//! `legs` distinct PVs, choosing the PVs with the most free PEs (ties to the
//! lower id) and, within a PV, the lowest free PE. Spreading by free space
//! balances the PVs of a VG, so consecutive extents land on different disks
//! and I/O spreads across them.
//!
//! The allocator is memory only. The service rebuilds it at open from the
//! durable extent map and reservations, so it can never disagree with them.

use std::collections::BTreeMap;

use crate::model::{PeAddr, Placement, PvId};

#[derive(Debug, Clone)]
struct PvSpace {
    pe_count: u64,
    used: Vec<u64>,
    free: u64,
    /// No free PE below this index.
    search_from: u64,
}

impl PvSpace {
    fn new(pe_count: u64) -> Self {
        PvSpace {
            pe_count,
            used: vec![0; pe_count.div_ceil(64) as usize],
            free: pe_count,
            search_from: 0,
        }
    }

    fn is_used(&self, pe: u64) -> bool {
        self.used[(pe / 64) as usize] & (1 << (pe % 64)) != 0
    }

    fn set(&mut self, pe: u64, used: bool) {
        let word = &mut self.used[(pe / 64) as usize];
        if used {
            *word |= 1 << (pe % 64);
        } else {
            *word &= !(1 << (pe % 64));
        }
    }

    fn lowest_free(&self) -> Option<u64> {
        (self.search_from..self.pe_count).find(|&pe| !self.is_used(pe))
    }
}

#[derive(Debug, Clone, Default)]
pub struct PeAllocator {
    pvs: BTreeMap<PvId, PvSpace>,
}

impl PeAllocator {
    pub fn add_pv(&mut self, pv: PvId, pe_count: u64) {
        let previous = self.pvs.insert(pv, PvSpace::new(pe_count));
        assert!(previous.is_none(), "PV {pv} added to the allocator twice");
    }

    /// Forgets a PV; it must have no PE in use.
    pub fn remove_pv(&mut self, pv: PvId) {
        if let Some(space) = self.pvs.remove(&pv) {
            assert_eq!(
                space.free, space.pe_count,
                "PV {pv} removed with PEs in use"
            );
        }
    }

    /// Marks a PE as used (loading durable state). False if it already was,
    /// or does not exist: the caller treats that as corrupt metadata.
    pub fn mark_used(&mut self, addr: PeAddr) -> bool {
        match self.pvs.get_mut(&addr.pv) {
            Some(space) if addr.pe < space.pe_count && !space.is_used(addr.pe) => {
                space.set(addr.pe, true);
                space.free -= 1;
                true
            }
            _ => false,
        }
    }

    /// Returns a PE to the free pool.
    pub fn free(&mut self, addr: PeAddr) {
        let space = self
            .pvs
            .get_mut(&addr.pv)
            .unwrap_or_else(|| panic!("free of PE on unknown PV {}", addr.pv));
        assert!(
            addr.pe < space.pe_count && space.is_used(addr.pe),
            "double free of {addr:?}"
        );
        space.set(addr.pe, false);
        space.free += 1;
        space.search_from = space.search_from.min(addr.pe);
    }

    /// Allocates one PE on each of `legs` distinct PVs among `candidates`.
    /// `None` (and nothing allocated) when fewer than `legs` PVs have room.
    pub fn allocate(&mut self, candidates: &[PvId], legs: usize) -> Option<Placement> {
        let mut ranked: Vec<(u64, PvId)> = candidates
            .iter()
            .filter_map(|pv| self.pvs.get(pv).map(|s| (s.free, *pv)))
            .filter(|&(free, _)| free > 0)
            .collect();
        if ranked.len() < legs {
            return None;
        }
        // Most free first; ties to the lower id.
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut placement = Vec::with_capacity(legs);
        for &(_, pv) in ranked.iter().take(legs) {
            let space = self.pvs.get_mut(&pv).expect("ranked PV exists");
            let pe = space
                .lowest_free()
                .expect("a PV with free > 0 has a free PE");
            space.set(pe, true);
            space.free -= 1;
            space.search_from = pe + 1;
            placement.push(PeAddr { pv, pe });
        }
        Some(placement)
    }

    pub fn free_pes(&self, pv: PvId) -> u64 {
        self.pvs.get(&pv).map_or(0, |s| s.free)
    }

    pub fn pe_count(&self, pv: PvId) -> u64 {
        self.pvs.get(&pv).map_or(0, |s| s.pe_count)
    }

    /// How many whole extents of `legs` legs could still be placed.
    pub fn placeable(&self, candidates: &[PvId], legs: usize) -> u64 {
        if legs == 1 {
            return candidates.iter().map(|pv| self.free_pes(*pv)).sum();
        }
        // Greedy as `allocate` does it, on a copy of the free counts.
        let mut free: Vec<u64> = candidates.iter().map(|pv| self.free_pes(*pv)).collect();
        let mut count = 0;
        loop {
            free.sort_unstable_by(|a, b| b.cmp(a));
            if free.len() < legs || free[legs - 1] == 0 {
                return count;
            }
            free.iter_mut().take(legs).for_each(|f| *f -= 1);
            count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Allocate { legs: usize },
        Free { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1usize..=3).prop_map(|legs| Op::Allocate { legs }),
            2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        ]
    }

    proptest! {
        /// Against a model (a set of used PEs): allocations never hand out a
        /// used PE, legs sit on distinct PVs, allocation fails only when the
        /// model says it must, and free counts always agree.
        #[test]
        fn allocator_matches_model(
            sizes in prop::collection::vec(0u64..20, 1..5),
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let mut alloc = PeAllocator::default();
            let pvs: Vec<PvId> = (1..=sizes.len() as u64).collect();
            for (pv, &count) in pvs.iter().zip(&sizes) {
                alloc.add_pv(*pv, count);
            }
            let mut used: BTreeSet<PeAddr> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Allocate { legs } => {
                        let with_room = pvs.iter().zip(&sizes)
                            .filter(|(pv, &count)| used.iter().filter(|a| a.pv == **pv).count() < count as usize)
                            .count();
                        let placeable = alloc.placeable(&pvs, legs);
                        match alloc.allocate(&pvs, legs) {
                            Some(placement) => {
                                prop_assert!(placeable > 0);
                                prop_assert_eq!(placement.len(), legs);
                                let distinct: BTreeSet<PvId> = placement.iter().map(|a| a.pv).collect();
                                prop_assert_eq!(distinct.len(), legs);
                                for addr in placement {
                                    prop_assert!(addr.pe < sizes[(addr.pv - 1) as usize]);
                                    prop_assert!(used.insert(addr), "{:?} handed out twice", addr);
                                }
                            }
                            None => {
                                prop_assert!(with_room < legs);
                                prop_assert_eq!(placeable, 0);
                            }
                        }
                    }
                    Op::Free { pick } => {
                        if !used.is_empty() {
                            let addr = *used.iter().nth(pick % used.len()).unwrap();
                            used.remove(&addr);
                            alloc.free(addr);
                        }
                    }
                }
                for (pv, &count) in pvs.iter().zip(&sizes) {
                    let in_use = used.iter().filter(|a| a.pv == *pv).count() as u64;
                    prop_assert_eq!(alloc.free_pes(*pv), count - in_use);
                }
            }
        }
    }

    #[test]
    fn spreads_over_the_emptiest_pvs() {
        let mut alloc = PeAllocator::default();
        alloc.add_pv(1, 4);
        alloc.add_pv(2, 4);
        let first = alloc.allocate(&[1, 2], 1).unwrap();
        let second = alloc.allocate(&[1, 2], 1).unwrap();
        assert_ne!(
            first[0].pv, second[0].pv,
            "consecutive extents go to different PVs"
        );
    }

    #[test]
    fn mark_used_rejects_duplicates_and_unknown_pes() {
        let mut alloc = PeAllocator::default();
        alloc.add_pv(1, 2);
        assert!(alloc.mark_used(PeAddr { pv: 1, pe: 0 }));
        assert!(!alloc.mark_used(PeAddr { pv: 1, pe: 0 }));
        assert!(!alloc.mark_used(PeAddr { pv: 1, pe: 2 }));
        assert!(!alloc.mark_used(PeAddr { pv: 9, pe: 0 }));
        assert_eq!(alloc.free_pes(1), 1);
    }
}
