//! The on-disk record frame shared by log segments and the small metadata files, and the scan that
//! tells a crash-torn tail from real corruption. Owns bytes only: it opens no file and knows
//! nothing of Raft entries.
//!
//! A record is `len_and_flag: u32 LE | crc32: u32 LE | payload`. The low 31 bits of the first word
//! are the payload length; the top bit marks the first record of an append batch (every batch is
//! written with one `write` and made durable with one `fdatasync` before the next begins). The
//! CRC covers the first word and the payload, so a damaged length is caught as well.

/// Bytes before the payload: length-and-flag word, then the CRC.
pub(crate) const HEADER_LEN: usize = 8;

/// Top bit of the first word: this record starts an append batch.
const BATCH_START: u32 = 1 << 31;

/// Largest payload the frame can describe.
pub(crate) const MAX_PAYLOAD_LEN: usize = (BATCH_START - 1) as usize;

/// Append one record to `out`. The caller guarantees `payload.len() <= MAX_PAYLOAD_LEN`.
pub(crate) fn encode(payload: &[u8], batch_start: bool, out: &mut Vec<u8>) {
    let mut word = (payload.len() as u32) & !BATCH_START;
    if batch_start {
        word |= BATCH_START;
    }
    let word = word.to_le_bytes();
    out.extend_from_slice(&word);
    out.extend_from_slice(&checksum(&word, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn checksum(word: &[u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(word);
    hasher.update(payload);
    hasher.finalize()
}

/// One intact record found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    /// Byte offset of the record header in the buffer.
    pub offset: u64,
    /// Where the payload lies in the buffer.
    pub payload_start: usize,
    pub payload_end: usize,
}

/// How a scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte belongs to an intact record.
    Clean,
    /// The bytes from `offset` on are the remains of an append that a crash interrupted: no
    /// intact batch starts after them, so they were never reported durable. Cut them off.
    TornTail { offset: u64, reason: String },
    /// The record at `offset` is damaged although later data was written after it was made
    /// durable (or the buffer may not have a torn tail at all). Never cut automatically.
    Corrupt { offset: u64, reason: String },
}

/// Checks the record at `pos`; `Ok(Found)` if it is intact, else why not.
fn record_at(buf: &[u8], pos: usize, max_payload: usize) -> Result<(Found, bool), String> {
    let rest = &buf[pos..];
    if rest.len() < HEADER_LEN {
        return Err(format!("{} byte(s) left, too few for a record header", rest.len()));
    }
    let word: [u8; 4] = [rest[0], rest[1], rest[2], rest[3]];
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let raw = u32::from_le_bytes(word);
    let batch_start = raw & BATCH_START != 0;
    let len = (raw & !BATCH_START) as usize;
    if len == 0 || len > max_payload {
        return Err(format!("implausible record length {len}"));
    }
    if rest.len() - HEADER_LEN < len {
        return Err(format!(
            "record of {len} bytes runs past the end of the data ({} bytes left)",
            rest.len() - HEADER_LEN
        ));
    }
    let payload = &rest[HEADER_LEN..HEADER_LEN + len];
    if checksum(&word, payload) != crc {
        return Err("checksum mismatch".to_string());
    }
    let start = pos + HEADER_LEN;
    Ok((Found { offset: pos as u64, payload_start: start, payload_end: start + len }, batch_start))
}

/// Reads every record of `buf` in order and says how the data ends.
///
/// With `may_have_torn_tail` (the newest segment only), a damaged record is a torn tail when no
/// intact batch-start record follows it anywhere: everything after it belongs to the one batch
/// that was being written when the process died. Otherwise a damaged record is corruption.
pub(crate) fn scan(buf: &[u8], max_payload: usize, may_have_torn_tail: bool) -> (Vec<Found>, ScanEnd) {
    let mut found = Vec::new();
    let mut pos = 0usize;
    while pos < buf.len() {
        match record_at(buf, pos, max_payload) {
            Ok((record, _)) => {
                pos = record.payload_end;
                found.push(record);
            }
            Err(reason) => {
                let end = if !may_have_torn_tail {
                    ScanEnd::Corrupt { offset: pos as u64, reason }
                } else if let Some(later) = next_batch_start(buf, pos + 1, max_payload) {
                    ScanEnd::Corrupt {
                        offset: pos as u64,
                        reason: format!("{reason}, yet an intact later batch starts at byte offset {later}"),
                    }
                } else {
                    ScanEnd::TornTail { offset: pos as u64, reason }
                };
                return (found, end);
            }
        }
    }
    (found, ScanEnd::Clean)
}

/// The offset of the first intact batch-start record at or after `from`, if any.
fn next_batch_start(buf: &[u8], from: usize, max_payload: usize) -> Option<u64> {
    (from..buf.len().saturating_sub(HEADER_LEN - 1)).find_map(|pos| match record_at(buf, pos, max_payload) {
        Ok((record, true)) => Some(record.offset),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[&[u8]], out: &mut Vec<u8>) {
        for (i, payload) in records.iter().enumerate() {
            encode(payload, i == 0, out);
        }
    }

    #[test]
    fn intact_records_scan_clean() {
        let mut buf = Vec::new();
        batch(&[b"one", b"two"], &mut buf);
        batch(&[b"three"], &mut buf);
        let (found, end) = scan(&buf, 1024, true);
        assert_eq!(end, ScanEnd::Clean);
        let payloads: Vec<&[u8]> = found.iter().map(|f| &buf[f.payload_start..f.payload_end]).collect();
        assert_eq!(payloads, vec![&b"one"[..], b"two", b"three"]);
    }

    #[test]
    fn cut_inside_the_last_batch_is_a_torn_tail() {
        let mut buf = Vec::new();
        batch(&[b"one"], &mut buf);
        let durable = buf.len();
        batch(&[b"two", b"three"], &mut buf);
        let two_end = durable + HEADER_LEN + 3;
        for cut in durable + 1..buf.len() {
            let (found, end) = scan(&buf[..cut], 1024, true);
            assert_eq!(found.len(), if cut >= two_end { 2 } else { 1 }, "cut at {cut}");
            if cut == two_end {
                assert_eq!(end, ScanEnd::Clean);
            } else {
                assert!(matches!(end, ScanEnd::TornTail { .. }), "cut at {cut}: {end:?}");
            }
        }
    }

    #[test]
    fn damage_before_a_later_batch_is_corruption() {
        let mut buf = Vec::new();
        batch(&[b"one", b"two"], &mut buf);
        batch(&[b"three"], &mut buf);
        buf[HEADER_LEN] ^= 0xff;
        let (found, end) = scan(&buf, 1024, true);
        assert!(found.is_empty());
        assert!(matches!(end, ScanEnd::Corrupt { offset: 0, .. }), "{end:?}");
    }

    #[test]
    fn damaged_non_start_record_within_the_last_batch_is_torn() {
        // A crash can persist a later page of the unsynced batch but not an earlier one.
        let mut buf = Vec::new();
        batch(&[b"one"], &mut buf);
        let second = buf.len();
        batch(&[b"two", b"three"], &mut buf);
        buf[second + HEADER_LEN] = 0;
        let (found, end) = scan(&buf, 1024, true);
        assert_eq!(found.len(), 1);
        assert_eq!(end, ScanEnd::TornTail { offset: second as u64, reason: "checksum mismatch".to_string() });
    }

    #[test]
    fn zero_filled_tail_is_torn_and_any_damage_is_corrupt_without_tail_allowance() {
        let mut buf = Vec::new();
        batch(&[b"one"], &mut buf);
        buf.extend_from_slice(&[0u8; 4096]);
        assert!(matches!(scan(&buf, 1024, true).1, ScanEnd::TornTail { offset, .. } if offset == 11));
        assert!(matches!(scan(&buf, 1024, false).1, ScanEnd::Corrupt { offset, .. } if offset == 11));
    }
}
