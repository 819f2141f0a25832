//! WAL continuity: which archived segments a backup needs to be restored to any point up to the
//! newest archived WAL, across timeline switches (via history files), and where the chain breaks.
//! Pure: built from a listing of the archive, no I/O.

use crate::wal_name::{segment_name, segno_of, Lsn, SegNo, TimelineSwitch, WalFile};
use std::collections::{BTreeMap, BTreeSet};

/// What the archive holds.
#[derive(Debug, Clone, Default)]
pub struct WalIndex {
    pub segment_size: u64,
    pub segments: BTreeMap<u32, BTreeSet<SegNo>>,
    /// Parsed history file of each timeline > 1.
    pub histories: BTreeMap<u32, Vec<TimelineSwitch>>,
}

/// One timeline's stretch of a recovery path: segments `begin..=end` (end None: open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stretch {
    pub timeline: u32,
    pub begin: SegNo,
    pub end: Option<SegNo>,
}

/// The outcome of walking the archive from a backup forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuity {
    /// The timeline recovery with recovery_target_timeline = latest ends on.
    pub timeline: u32,
    /// Last segment (timeline, segno) reachable without a gap.
    pub last: Option<(u32, SegNo)>,
    /// First missing segment file name and the next segment present after the gap, if any.
    pub gap: Option<Gap>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub first_missing: String,
    pub last_missing: String,
    /// The segment after the gap (WAL exists again from here, unusable from this backup).
    pub resumes_at: Option<String>,
}

impl WalIndex {
    pub fn add(&mut self, file: WalFile) {
        if let WalFile::Segment { timeline, segno } = file {
            self.segments.entry(timeline).or_default().insert(segno);
        }
    }

    /// The stretches of timelines leading to `target`, oldest first.
    pub fn path_to(&self, target: u32) -> Vec<Stretch> {
        let history = self.histories.get(&target).cloned().unwrap_or_default();
        let mut out = Vec::new();
        let mut begin = 0;
        for h in &history {
            let switch_seg = segno_of(h.switch, self.segment_size);
            out.push(Stretch { timeline: h.parent, begin, end: switch_seg.checked_sub(1) });
            begin = switch_seg;
        }
        out.push(Stretch { timeline: target, begin, end: None });
        out
    }

    /// The newest timeline whose history passes through `timeline` after `lsn`.
    pub fn latest_timeline_from(&self, timeline: u32, lsn: Lsn) -> u32 {
        let mut best = timeline;
        for (&tl, history) in &self.histories {
            let descends = history.iter().any(|h| h.parent == timeline && h.switch > lsn);
            if descends && tl > best {
                best = tl;
            }
        }
        best
    }

    /// Walks from segment `start` on `timeline` to the newest segment of the latest timeline.
    pub fn check(&self, timeline: u32, start_lsn: Lsn) -> Continuity {
        let target = self.latest_timeline_from(timeline, start_lsn);
        let path: Vec<Stretch> =
            self.path_to(target).into_iter().filter(|s| s.end.is_none_or(|e| e >= s.begin)).collect();
        let tl_for = |seg: SegNo| path.iter().rev().find(|s| s.begin <= seg).map(|s| s.timeline);
        let newest = path
            .iter()
            .filter_map(|s| {
                let set = self.segments.get(&s.timeline)?;
                set.range(s.begin..=s.end.unwrap_or(SegNo::MAX)).next_back().copied()
            })
            .max();
        let start = segno_of(start_lsn, self.segment_size);
        let has = |seg: SegNo| tl_for(seg).is_some_and(|tl| self.segments.get(&tl).is_some_and(|s| s.contains(&seg)));
        let name = |seg: SegNo| segment_name(tl_for(seg).unwrap_or(target), seg, self.segment_size);
        let mut last = None;
        let Some(newest) = newest.filter(|n| *n >= start) else {
            return Continuity {
                timeline: target,
                last: None,
                gap: Some(Gap { first_missing: name(start), last_missing: name(start), resumes_at: None }),
            };
        };
        let mut seg = start;
        while seg <= newest {
            if !has(seg) {
                let mut end = seg;
                while end < newest && !has(end + 1) {
                    end += 1;
                }
                let resumes_at = (end < newest).then(|| name(end + 1));
                return Continuity {
                    timeline: target,
                    last,
                    gap: Some(Gap { first_missing: name(seg), last_missing: name(end), resumes_at }),
                };
            }
            last = Some((tl_for(seg).unwrap_or(target), seg));
            seg += 1;
        }
        Continuity { timeline: target, last, gap: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal_name::DEFAULT_SEGMENT_SIZE as S;
    use proptest::prelude::*;

    fn index(segs: &[(u32, SegNo)], histories: &[(u32, Vec<(u32, u64)>)]) -> WalIndex {
        let mut w = WalIndex { segment_size: S, ..Default::default() };
        for &(timeline, segno) in segs {
            w.add(WalFile::Segment { timeline, segno });
        }
        for (tl, h) in histories {
            w.histories.insert(
                *tl,
                h.iter().map(|&(parent, seg)| TimelineSwitch { parent, switch: Lsn(seg * S + 100) }).collect(),
            );
        }
        w
    }

    #[test]
    fn follows_a_promotion_to_the_new_timeline() {
        // Timeline 2 branched in segment 5: 1..=4 on timeline 1, 5.. on timeline 2.
        let w = index(&[(1, 2), (1, 3), (1, 4), (1, 5), (2, 5), (2, 6)], &[(2, vec![(1, 5)])]);
        let c = w.check(1, Lsn(2 * S + 40));
        assert_eq!(c.timeline, 2);
        assert_eq!(c.gap, None);
        assert_eq!(c.last, Some((2, 6)));
    }

    #[test]
    fn names_the_gap() {
        let w = index(&[(1, 2), (1, 3), (1, 5), (1, 6)], &[]);
        let c = w.check(1, Lsn(2 * S));
        assert_eq!(c.last, Some((1, 3)));
        let gap = c.gap.unwrap_or_else(|| panic!("no gap found"));
        assert_eq!(gap.first_missing, "000000010000000000000004");
        assert_eq!(gap.resumes_at.as_deref(), Some("000000010000000000000005"));
    }

    #[test]
    fn a_timeline_that_branched_before_the_backup_is_not_followed() {
        let w = index(&[(1, 2), (1, 3), (1, 4), (2, 1), (2, 2)], &[(2, vec![(1, 1)])]);
        let c = w.check(1, Lsn(3 * S));
        assert_eq!((c.timeline, c.gap, c.last), (1, None, Some((1, 4))));
    }

    proptest! {
        #[test]
        fn removing_any_needed_segment_is_reported(n in 2u64..30, removed in any::<prop::sample::Index>()) {
            let all: Vec<(u32, SegNo)> = (1..=n).map(|s| (1, s)).collect();
            prop_assert_eq!(index(&all, &[]).check(1, Lsn(S)).gap, None);
            let r = 1 + removed.index(n as usize) as u64;
            let kept: Vec<_> = all.iter().copied().filter(|&(_, s)| s != r).collect();
            let c = index(&kept, &[]).check(1, Lsn(S));
            if r == n {
                // The newest segment is simply not there yet: nothing after it to miss.
                prop_assert_eq!(c.gap, None);
                prop_assert_eq!(c.last, Some((1, n - 1)));
            } else {
                let gap = c.gap.ok_or_else(|| TestCaseError::fail("gap not found"))?;
                prop_assert_eq!(gap.first_missing, segment_name(1, r, S));
            }
        }
    }
}
