//! PostgreSQL's data page checksum (src/include/storage/checksum_impl.h): an FNV-1a variant
//! over 32 parallel lanes, two rounds of zeroes, XOR-folded and mixed with the block number.
//! Used to verify heap/index pages while a backup reads them. Pure: no I/O.

/// PostgreSQL's page size (BLCKSZ); PostgreSQL 15 as packaged by Debian uses 8 KiB.
pub const PAGE_SIZE: usize = 8192;
/// Pages per 1 GiB relation segment file: block numbers continue across `.1`, `.2`, ...
pub const PAGES_PER_SEGMENT: u32 = (1024 * 1024 * 1024 / PAGE_SIZE) as u32;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const CHECKSUM_BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C, 0xF8D4474F,
    0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC,
    0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6,
    0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

#[inline(always)]
fn round(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// pg_checksum_block: the raw 32-bit checksum of a whole page (with pd_checksum as stored).
fn checksum_block(page: &[u8; PAGE_SIZE], zero_checksum_field: bool) -> u32 {
    let mut sums = CHECKSUM_BASE_OFFSETS;
    let rows = PAGE_SIZE / (4 * N_SUMS);
    for i in 0..rows {
        let row = &page[i * 4 * N_SUMS..(i + 1) * 4 * N_SUMS];
        for j in 0..N_SUMS {
            let mut v = u32::from_le_bytes([row[4 * j], row[4 * j + 1], row[4 * j + 2], row[4 * j + 3]]);
            // pd_checksum is bytes 8..10 of the page: lane 2 of row 0, low half (little-endian).
            if zero_checksum_field && i == 0 && j == 2 {
                v &= 0xFFFF_0000;
            }
            sums[j] = round(sums[j], v);
        }
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            *s = round(*s, 0);
        }
    }
    sums.iter().fold(0, |acc, s| acc ^ s)
}

/// pg_checksum_page: the 16-bit checksum PostgreSQL stores in pd_checksum for block `blkno`.
pub fn page_checksum(page: &[u8; PAGE_SIZE], blkno: u32) -> u16 {
    let checksum = checksum_block(page, true) ^ blkno;
    ((checksum % 65535) + 1) as u16
}

/// The checksum stored in the page header (pd_checksum).
pub fn stored_checksum(page: &[u8; PAGE_SIZE]) -> u16 {
    u16::from_le_bytes([page[8], page[9]])
}

/// A new page (all zeroes, pd_upper == 0) has no checksum yet and is valid.
fn is_new_page(page: &[u8; PAGE_SIZE]) -> bool {
    let pd_upper = u16::from_le_bytes([page[14], page[15]]);
    pd_upper == 0 && page.iter().all(|b| *b == 0)
}

/// The page LSN (pd_lsn), used to skip pages being written during the backup: WAL replay will
/// restore them from a full-page image.
pub fn page_lsn(page: &[u8; PAGE_SIZE]) -> u64 {
    let hi = u32::from_le_bytes([page[0], page[1], page[2], page[3]]) as u64;
    let lo = u32::from_le_bytes([page[4], page[5], page[6], page[7]]) as u64;
    (hi << 32) | lo
}

/// Checks every whole page of `data`, the bytes of a relation file starting at page
/// `first_blkno`; returns the block numbers of pages whose checksum is wrong. Pages changed
/// after `backup_start_lsn` are skipped (they may be torn; WAL replay rewrites them).
pub fn corrupt_pages(data: &[u8], first_blkno: u32, backup_start_lsn: u64) -> Vec<u32> {
    let mut bad = Vec::new();
    for (i, chunk) in data.chunks_exact(PAGE_SIZE).enumerate() {
        let Ok(page) = <&[u8; PAGE_SIZE]>::try_from(chunk) else { continue };
        if is_new_page(page) || page_lsn(page) >= backup_start_lsn {
            continue;
        }
        let blkno = first_blkno.wrapping_add(i as u32);
        if page_checksum(page, blkno) != stored_checksum(page) {
            bad.push(blkno);
        }
    }
    bad
}

/// Whether the file at this data-directory path holds checksummed relation pages
/// (`base/<db>/<relfilenode>[.N]`, `global/<relfilenode>`, `pg_tblspc/...`), and the first block
/// number of the file (segment `.N` starts at N × 131072).
pub fn relation_file(rel_path: &str) -> Option<u32> {
    let in_relation_dir = rel_path.starts_with("base/") || rel_path.starts_with("global/");
    if !in_relation_dir {
        return None;
    }
    let name = rel_path.rsplit('/').next()?;
    let (stem, segment) = match name.split_once('.') {
        Some((stem, seg)) => (stem, seg.parse::<u32>().ok()?),
        None => (name, 0),
    };
    // Forks (_fsm, _vm, _init) are checksummed too.
    let node =
        stem.split_once('_').map_or(stem, |(n, fork)| if ["fsm", "vm", "init"].contains(&fork) { n } else { "" });
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    segment.checked_mul(PAGES_PER_SEGMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_recognised() {
        assert_eq!(relation_file("base/5/16384"), Some(0));
        assert_eq!(relation_file("base/5/16384.2"), Some(2 * PAGES_PER_SEGMENT));
        assert_eq!(relation_file("base/5/16384_fsm"), Some(0));
        assert_eq!(relation_file("global/1262_vm"), Some(0));
        assert_eq!(relation_file("global/pg_control"), None);
        assert_eq!(relation_file("base/5/PG_VERSION"), None);
        assert_eq!(relation_file("base/5/pg_filenode.map"), None);
        assert_eq!(relation_file("pg_xact/0000"), None);
    }

    #[test]
    fn a_new_page_is_valid_and_a_flipped_byte_is_not() {
        let mut page = [0u8; PAGE_SIZE];
        assert!(corrupt_pages(&page, 0, u64::MAX).is_empty());
        // A fake but well-formed page: header fields set, checksum computed like PostgreSQL does.
        page[12..14].copy_from_slice(&24u16.to_le_bytes());
        page[14..16].copy_from_slice(&8000u16.to_le_bytes());
        page[100] = 42;
        let c = page_checksum(&page, 7);
        page[8..10].copy_from_slice(&c.to_le_bytes());
        assert!(corrupt_pages(&page, 7, u64::MAX).is_empty());
        assert_eq!(corrupt_pages(&page, 6, u64::MAX), vec![6], "the block number is part of the checksum");
        page[4000] ^= 1;
        assert_eq!(corrupt_pages(&page, 7, u64::MAX), vec![7]);
        assert!(corrupt_pages(&page, 7, 0).is_empty(), "pages newer than the backup start are skipped");
    }
}
