//! The `history` key (`GET /history`, `pgha ctl history`): the cluster's timeline switches as
//! Patroni records them, `[timeline, switch LSN, reason, timestamp, new leader]` per switch. Made
//! from the new primary's timeline history file, keeping what the key already says of earlier
//! switches; the new leader adds the time and its name to the switch it made.

use crate::ha::Lsn;
use serde_json::{json, Value};

/// The key's entries after a promotion onto `timeline`: one per line of that timeline's history
/// file (`<parent timeline>\t<switch LSN>\t<reason>`), the timestamp and new leader of earlier
/// switches taken from `existing`, and `timestamp` and `leader` given to the switch onto
/// `timeline` when the key does not have them yet. None when the file holds no switch.
pub fn entries(file: &str, existing: &[Value], timeline: u32, timestamp: &str, leader: &str) -> Option<Vec<Value>> {
    let known = |tl: u64| existing.iter().find(|e| e.get(0).and_then(Value::as_u64) == Some(tl));
    let mut out = Vec::new();
    for line in file.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = line.splitn(3, '\t');
        let (Some(tl), Some(lsn)) = (fields.next().and_then(|t| t.trim().parse::<u64>().ok()), fields.next()) else {
            continue;
        };
        let Some(lsn) = Lsn::parse(lsn.trim()) else { continue };
        let reason = fields.next().unwrap_or("").trim();
        let mut entry = vec![json!(tl), json!(lsn.0), json!(reason)];
        match known(tl).and_then(Value::as_array).filter(|e| e.len() > 3) {
            Some(before) => entry.extend(before[3..].iter().cloned()),
            None if tl + 1 == u64::from(timeline) => entry.extend([json!(timestamp), json!(leader)]),
            None => {}
        }
        out.push(Value::Array(entry));
    }
    (!out.is_empty()).then_some(out)
}

/// Whether the key already records the switch onto `timeline`.
pub fn records(existing: &[Value], timeline: u32) -> bool {
    existing.iter().any(|e| e.get(0).and_then(Value::as_u64) == Some(u64::from(timeline) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE_TL3: &str = "1\t0/3000060\tno recovery target specified\n\n2\t0/50000A0\tno recovery target specified\n";

    #[test]
    fn the_new_leader_adds_its_switch_and_keeps_the_earlier_ones() {
        let existing = vec![json!([1, 50331744, "no recovery target specified", "2026-12-01T10:00:00+00:00", "node2"])];
        let e = entries(FILE_TL3, &existing, 3, "2026-12-06T23:00:00.000001+00:00", "node1").unwrap();
        assert_eq!(
            e,
            vec![
                json!([1, 0x3000060u64, "no recovery target specified", "2026-12-01T10:00:00+00:00", "node2"]),
                json!([2, 0x50000A0u64, "no recovery target specified", "2026-12-06T23:00:00.000001+00:00", "node1"]),
            ]
        );
        assert!(records(&e, 3) && records(&e, 2) && !records(&e, 4));
        // Written again (an agent restarted as leader), it stays the same.
        assert_eq!(entries(FILE_TL3, &e, 3, "later", "node3").unwrap(), e);
    }

    #[test]
    fn an_unknown_earlier_switch_keeps_three_fields_and_garbage_lines_are_skipped() {
        let file = "# comment\n1\tnot-an-lsn\tx\n1\t0/3000060\tbefore 2026-01-01\nseven\t0/1\ty\n";
        let e = entries(file, &[], 2, "now", "node2").unwrap();
        assert_eq!(e, vec![json!([1, 0x3000060u64, "before 2026-01-01", "now", "node2"])]);
        let e = entries(FILE_TL3, &[], 3, "now", "node1").unwrap();
        assert_eq!(e[0].as_array().map(Vec::len), Some(3), "{e:?}");
        assert_eq!(e[1].as_array().map(Vec::len), Some(5), "{e:?}");
        assert_eq!(entries("", &[], 2, "now", "n"), None);
    }
}
