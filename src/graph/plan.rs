//! The memory plan: tensors that live during a step share buffers when their lifetimes do not overlap.
//!
//! Every transient tensor (inputs, activations, their gradients, saved statistics) has a lifetime
//! [first step, last step] over the compiled step list. Tensors are placed, in order of first use, into slots
//! (storage buffers): a slot is free for a tensor when its last occupant's lifetime ended strictly before the
//! tensor's begins, so two tensors used by the same step never share a buffer (wgpu refuses one buffer bound both
//! read-only and writable in a dispatch). Among free slots the smallest that fits is taken, else the largest
//! free one grows, else a new slot is opened.

/// A tensor's need: bytes and the steps in which it is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub bytes: u64,
    pub first: usize,
    pub last: usize,
}

/// Which slot each tensor got, and each slot's size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotPlan {
    pub slot_of: Vec<usize>,
    pub slot_bytes: Vec<u64>,
}

impl SlotPlan {
    /// Bytes of all slots together.
    pub fn total_bytes(&self) -> u64 {
        self.slot_bytes.iter().sum()
    }
}

/// Assign slots to `lifetimes` (indexed like the result's `slot_of`).
pub fn assign_slots(lifetimes: &[Lifetime]) -> SlotPlan {
    let mut order: Vec<usize> = (0..lifetimes.len()).collect();
    order.sort_by_key(|&i| (lifetimes[i].first, std::cmp::Reverse(lifetimes[i].bytes)));
    let mut plan = SlotPlan { slot_of: vec![usize::MAX; lifetimes.len()], slot_bytes: Vec::new() };
    // Last step of each slot's latest occupant.
    let mut busy_until: Vec<usize> = Vec::new();
    for i in order {
        let t = lifetimes[i];
        let free: Vec<usize> = (0..busy_until.len()).filter(|&s| busy_until[s] < t.first).collect();
        let fitting =
            free.iter().copied().filter(|&s| plan.slot_bytes[s] >= t.bytes).min_by_key(|&s| plan.slot_bytes[s]);
        let slot = match fitting.or_else(|| free.iter().copied().max_by_key(|&s| plan.slot_bytes[s])) {
            Some(s) => s,
            None => {
                plan.slot_bytes.push(0);
                busy_until.push(0);
                plan.slot_bytes.len() - 1
            }
        };
        plan.slot_bytes[slot] = plan.slot_bytes[slot].max(t.bytes);
        busy_until[slot] = t.last;
        plan.slot_of[i] = slot;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lt(bytes: u64, first: usize, last: usize) -> Lifetime {
        Lifetime { bytes, first, last }
    }

    #[test]
    fn disjoint_lifetimes_share_and_overlapping_ones_do_not() {
        // a: steps 0-1, b: 1-2, c: 2-3, d: 3-4. a and c can share, b and d can share.
        let ts = [lt(100, 0, 1), lt(100, 1, 2), lt(100, 2, 3), lt(100, 3, 4)];
        let p = assign_slots(&ts);
        assert_eq!(p.slot_bytes.len(), 2);
        assert_eq!(p.slot_of[0], p.slot_of[2]);
        assert_eq!(p.slot_of[1], p.slot_of[3]);
        assert_ne!(p.slot_of[0], p.slot_of[1]);
        assert_eq!(p.total_bytes(), 200);
    }

    #[test]
    fn a_slot_grows_to_its_largest_tenant_and_no_two_live_tensors_share() {
        let ts = [lt(10, 0, 0), lt(50, 1, 3), lt(30, 2, 2), lt(80, 4, 5), lt(5, 4, 4)];
        let p = assign_slots(&ts);
        for i in 0..ts.len() {
            assert!(p.slot_bytes[p.slot_of[i]] >= ts[i].bytes);
            for j in 0..ts.len() {
                let overlap = ts[i].first <= ts[j].last && ts[j].first <= ts[i].last;
                if i != j && overlap {
                    assert_ne!(p.slot_of[i], p.slot_of[j], "{i} and {j} are live together");
                }
            }
        }
        assert!(p.total_bytes() < ts.iter().map(|t| t.bytes).sum::<u64>());
    }
}
