//! How bytes are stored: zstd frames (with zstd's own content checksum) and SHA-256 of the raw
//! bytes. WAL objects carry a small header with the raw SHA-256 and size, so a duplicate push
//! is checked by reading 48 bytes. Pure: no I/O.

use sha2::{Digest, Sha256};

/// Magic at the start of every stored WAL object.
pub const WAL_MAGIC: &[u8; 8] = b"PGHAWAL1";
/// Bytes of the WAL object header: magic, SHA-256, raw size (u64 LE).
pub const WAL_HEADER_LEN: usize = 8 + 32 + 8;

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// zstd-compresses `raw` at `level` with a content checksum in the frame.
pub fn compress(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.include_checksum(true)?;
    c.compress(raw)
}

/// Decompresses a frame made by `compress`, expecting exactly `size` bytes.
pub fn decompress(stored: &[u8], size: usize) -> Result<Vec<u8>, String> {
    let out = zstd::bulk::decompress(stored, size.max(1)).map_err(|e| format!("zstd: {e}"))?;
    if out.len() != size {
        return Err(format!("decompressed to {} bytes, expected {size}", out.len()));
    }
    Ok(out)
}

/// A stored WAL object: header + zstd frame.
pub fn encode_wal(raw: &[u8], level: i32) -> std::io::Result<(Vec<u8>, [u8; 32])> {
    let sum = sha256(raw);
    let body = compress(raw, level)?;
    let mut out = Vec::with_capacity(WAL_HEADER_LEN + body.len());
    out.extend_from_slice(WAL_MAGIC);
    out.extend_from_slice(&sum);
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    Ok((out, sum))
}

/// The SHA-256 and raw size recorded in a WAL object's header.
pub fn wal_header(stored: &[u8]) -> Result<([u8; 32], u64), String> {
    if stored.len() < WAL_HEADER_LEN || &stored[..8] != WAL_MAGIC {
        return Err("not a pgha WAL object (bad header)".to_string());
    }
    let mut sum = [0u8; 32];
    sum.copy_from_slice(&stored[8..40]);
    let mut size = [0u8; 8];
    size.copy_from_slice(&stored[40..48]);
    Ok((sum, u64::from_le_bytes(size)))
}

/// Decodes and checks a stored WAL object.
pub fn decode_wal(stored: &[u8]) -> Result<Vec<u8>, String> {
    let (sum, size) = wal_header(stored)?;
    let size = usize::try_from(size).map_err(|_| "size does not fit in memory".to_string())?;
    let raw = decompress(&stored[WAL_HEADER_LEN..], size)?;
    if sha256(&raw) != sum {
        return Err(format!("SHA-256 mismatch: header says {}, content is {}", hex(&sum), hex(&sha256(&raw))));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn wal_objects_round_trip_and_any_flipped_byte_is_caught(
            raw in prop::collection::vec(any::<u8>(), 0..4000), flip in any::<prop::sample::Index>(), level in 1i32..4
        ) {
            let (stored, _) = encode_wal(&raw, level).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let decoded = decode_wal(&stored);
            prop_assert_eq!(decoded.as_deref(), Ok(&raw[..]));
            let mut bad = stored.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 0x40;
            prop_assert!(decode_wal(&bad).is_err());
        }
    }
}
