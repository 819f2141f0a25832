//! WAL positions and file names: LSNs, timelines, segment names (`TTTTTTTTXXXXXXXXYYYYYYYY`),
//! timeline history files (`TTTTTTTT.history`) and their contents. Pure: no I/O.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A WAL position (log sequence number), written by PostgreSQL as `X/Y` in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an LSN: expected two hex numbers like 0/3000028");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return Err(bad());
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A segment number: the LSN divided by the segment size.
pub type SegNo = u64;

/// The default (and by far most common) WAL segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

fn segments_per_xlogid(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

/// The segment holding `lsn`.
pub fn segno_of(lsn: Lsn, segment_size: u64) -> SegNo {
    lsn.0 / segment_size
}

/// The file name of segment `segno` on `timeline`.
pub fn segment_name(timeline: u32, segno: SegNo, segment_size: u64) -> String {
    let per = segments_per_xlogid(segment_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// What kind of file PostgreSQL archives under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFile {
    /// A full WAL segment.
    Segment { timeline: u32, segno: SegNo },
    /// A timeline history file, `TTTTTTTT.history`.
    History { timeline: u32 },
    /// A backup history file (`...XXXX.000000D8.backup`) or a partial segment (`.partial`).
    Other { timeline: u32 },
}

impl WalFile {
    /// Classifies an archived file name (`%f`); None for anything PostgreSQL never archives.
    pub fn parse(name: &str, segment_size: u64) -> Option<WalFile> {
        let hex = |s: &str| s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if let Some(tl) = name.strip_suffix(".history") {
            if hex(tl) {
                return Some(WalFile::History { timeline: u32::from_str_radix(tl, 16).ok()? });
            }
            return None;
        }
        if name.len() < 24 || !name.is_char_boundary(24) || !name[..24].bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
        if name.len() == 24 {
            let log = u64::from_str_radix(&name[8..16], 16).ok()?;
            let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
            let per = segments_per_xlogid(segment_size);
            if seg >= per {
                return None;
            }
            return Some(WalFile::Segment { timeline, segno: log * per + seg });
        }
        let rest = &name[24..];
        let valid_rest = rest == ".partial"
            || (rest.len() == 16 && rest.starts_with('.') && rest.ends_with(".backup") && hex(&rest[1..9]));
        valid_rest.then_some(WalFile::Other { timeline })
    }

    pub fn timeline(&self) -> u32 {
        match *self {
            WalFile::Segment { timeline, .. } | WalFile::History { timeline } | WalFile::Other { timeline } => timeline,
        }
    }
}

/// One line of a timeline history file: `parent` ended (and the next timeline began) at `switch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineSwitch {
    pub parent: u32,
    pub switch: Lsn,
}

/// Parses `TTTTTTTT.history`: one `parentTLI<TAB>switchpoint<TAB>reason` line per ancestor,
/// oldest first. Comment and blank lines are skipped.
pub fn parse_history(text: &str) -> Result<Vec<TimelineSwitch>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let bad = || format!("line {}: `{line}` is not `timeline<TAB>lsn<TAB>reason`", n + 1);
        let parent = fields.next().and_then(|f| f.parse::<u32>().ok()).ok_or_else(bad)?;
        let switch = fields.next().and_then(|f| f.parse::<Lsn>().ok()).ok_or_else(bad)?;
        out.push(TimelineSwitch { parent, switch });
    }
    Ok(out)
}

/// Reads the system identifier and segment size from the long header of a segment's first page.
pub fn segment_header(first_page: &[u8]) -> Option<(u64, u32)> {
    const XLP_LONG_HEADER: u16 = 0x0002;
    if first_page.len() < 40 {
        return None;
    }
    let info = u16::from_le_bytes([first_page[2], first_page[3]]);
    if info & XLP_LONG_HEADER == 0 {
        return None;
    }
    let sysid = u64::from_le_bytes(first_page[24..32].try_into().ok()?);
    let seg_size = u32::from_le_bytes(first_page[32..36].try_into().ok()?);
    Some((sysid, seg_size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        let s = DEFAULT_SEGMENT_SIZE;
        assert_eq!(segment_name(1, 3, s), "000000010000000000000003");
        let lsn: Lsn = "1/3000028".parse().unwrap_or_default();
        assert_eq!(segment_name(2, segno_of(lsn, s), s), "000000020000000100000003");
        assert_eq!(
            WalFile::parse("000000020000000100000003", s),
            Some(WalFile::Segment { timeline: 2, segno: 256 + 3 })
        );
        assert_eq!(WalFile::parse("0000000A.history", s), Some(WalFile::History { timeline: 10 }));
        assert_eq!(WalFile::parse("000000010000000000000002.00000028.backup", s), Some(WalFile::Other { timeline: 1 }));
        assert_eq!(WalFile::parse("000000010000000000000002.partial", s), Some(WalFile::Other { timeline: 1 }));
        assert_eq!(WalFile::parse("../etc/passwd", s), None);
        assert_eq!(WalFile::parse("0000000100000000000001000", s), None);
        assert_eq!(WalFile::parse("000000010000000000000100", s), None, "only 256 segments per xlogid at 16 MiB");
    }

    #[test]
    fn history_parses() {
        let h = parse_history("1\t0/3000000\tno recovery target specified\n\n2\t0/5000A0\tat restore point\n");
        assert_eq!(
            h,
            Ok(vec![
                TimelineSwitch { parent: 1, switch: Lsn(0x300_0000) },
                TimelineSwitch { parent: 2, switch: Lsn(0x50_00A0) }
            ])
        );
        assert!(parse_history("x\ty\n").is_err());
    }

    proptest! {
        #[test]
        fn lsn_text_round_trips(v in any::<u64>()) {
            let l = Lsn(v);
            prop_assert_eq!(l.to_string().parse::<Lsn>(), Ok(l));
        }

        #[test]
        fn segment_names_round_trip(tl in 1u32..1000, segno in 0u64..1_000_000, shift in 20u32..31) {
            let size = 1u64 << shift;
            let name = segment_name(tl, segno, size);
            prop_assert_eq!(WalFile::parse(&name, size), Some(WalFile::Segment { timeline: tl, segno }));
        }
    }
}
