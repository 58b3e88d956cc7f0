//! Helpers shared by the proto test files.
#![allow(dead_code, clippy::unwrap_used)] // each test file uses a subset

/// A frame assembled from the documented layout: len, kind, flags, raw_len, crc, payload.
pub(crate) fn by_hand(kind: u16, flags: u16, raw_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = header_only(u32::try_from(payload.len()).unwrap(), kind, flags, raw_len);
    f.truncate(12);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&f);
    crc.update(payload);
    f.extend_from_slice(&crc.finalize().to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// A 16-byte header with a zero crc.
pub(crate) fn header_only(len: u32, kind: u16, flags: u16, raw_len: u32) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&flags.to_le_bytes());
    f.extend_from_slice(&raw_len.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f
}

/// `n` pseudo-random (incompressible) bytes from `seed`.
pub(crate) fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()[7]
        })
        .collect()
}

/// `n` mostly-zero bytes with a little noise: compresses very well.
pub(crate) fn zeroish(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    for (i, b) in random(n / 64 + 1, seed).into_iter().enumerate() {
        v[(i * 64) % n] = b;
    }
    v
}

/// A Data payload (offset prefix + data), raw.
pub(crate) fn data_payload(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut p = offset.to_le_bytes().to_vec();
    p.extend_from_slice(data);
    p
}
