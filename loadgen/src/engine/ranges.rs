//! A set of sequence numbers kept as sorted, disjoint, inclusive ranges.
//!
//! A device's record of what it received (live, or by sync) is a set of inbox
//! `seq`s. Seqs arrive almost in order, so the set is a handful of ranges
//! however many messages flow: memory grows with the holes (a reconnect, a
//! dropped frame), not with the traffic. That is what keeps a device's state
//! flat over a long run while the audit stays exact per (message, device).

/// Sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    /// Index of the first range whose end is at or past `x - 1` (the one `x`
    /// could join or fall into).
    fn slot(&self, x: u64) -> usize {
        self.0.partition_point(|&(_, hi)| hi.saturating_add(1) < x)
    }

    pub fn contains(&self, x: u64) -> bool {
        self.0
            .get(self.0.partition_point(|&(_, hi)| hi < x))
            .is_some_and(|&(lo, _)| lo <= x)
    }

    /// Adds `x`; false if it was already there. Appending at the end (the
    /// usual case) is O(1); elsewhere a binary search and at most one shift.
    pub fn insert(&mut self, x: u64) -> bool {
        if let Some(last) = self.0.last_mut() {
            if x == last.1 + 1 {
                last.1 = x;
                return true;
            }
            if x > last.1 + 1 {
                self.0.push((x, x));
                return true;
            }
        } else {
            self.0.push((x, x));
            return true;
        }
        let i = self.slot(x);
        let (lo, hi) = self.0[i];
        if lo <= x && x <= hi {
            return false;
        }
        if x + 1 == lo {
            self.0[i].0 = x;
        } else if x == hi + 1 {
            self.0[i].1 = x;
            // It may now touch the next range.
            if i + 1 < self.0.len() && self.0[i + 1].0 == x + 1 {
                self.0[i].1 = self.0[i + 1].1;
                self.0.remove(i + 1);
            }
        } else {
            self.0.insert(i, (x, x));
        }
        true
    }

    /// The end of the range holding `x`, if one does.
    pub fn run_end(&self, x: u64) -> Option<u64> {
        let i = self.0.partition_point(|&(_, hi)| hi < x);
        self.0.get(i).filter(|&&(lo, _)| lo <= x).map(|&(_, hi)| hi)
    }

    pub fn max(&self) -> Option<u64> {
        self.0.last().map(|&(_, hi)| hi)
    }

    /// Number of ranges (what the set costs in memory).
    pub fn ranges(&self) -> usize {
        self.0.len()
    }

    /// Bytes the set holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<(u64, u64)>()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_arrivals_stay_one_range() {
        let mut s = RangeSet::default();
        for x in 1..=10_000 {
            assert!(s.insert(x));
        }
        assert_eq!(s.ranges(), 1);
        assert!(s.contains(1) && s.contains(10_000) && !s.contains(10_001) && !s.contains(0));
        assert!(!s.insert(5), "a repeat is reported");
    }

    #[test]
    fn holes_split_and_filling_them_merges() {
        let mut s = RangeSet::default();
        for x in [1, 2, 3, 7, 8, 5] {
            s.insert(x);
        }
        assert_eq!(s.ranges(), 3);
        assert!(!s.contains(4) && !s.contains(6));
        assert_eq!(s.run_end(1), Some(3));
        assert_eq!(s.run_end(4), None);
        s.insert(4);
        s.insert(6);
        assert_eq!(s.ranges(), 1);
        assert_eq!(s.run_end(1), Some(8));
        assert_eq!(s.max(), Some(8));
        // Below the first range.
        let mut t = RangeSet::default();
        t.insert(10);
        t.insert(3);
        t.insert(9);
        assert_eq!(t.0, vec![(3, 3), (9, 10)]);
    }
}
