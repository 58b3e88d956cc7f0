//! Block digests for the checksum resync: keyed, 128-bit, at two fixed-offset levels.
//!
//! After a lost tracker or a split brain, the two sites compare their copies of a disk by
//! digest and ship only the blocks that differ. Three choices shape the digests:
//!
//! - **128 bits, not a 32-bit checksum.** A differing block goes unnoticed only when its
//!   digests collide. With a 32-bit digest that is 2^-32 per block, and a 1 TiB disk has
//!   2^28 blocks of 4 KiB: if every block differed, the chance that at least one of them is
//!   missed is 1 - (1 - 2^-32)^(2^28) ≈ 6 %, and a missed block is silent corruption on the
//!   replica. At 2^-128 per block the same sum is negligible for any disk that will exist.
//! - **Keyed with a fresh secret per session.** An unkeyed hash (CRC, plain xxh3) lets
//!   anyone who can write to the disk — a tenant of the VM on it — choose data whose digest
//!   equals the digest of what the other site holds, and so keep a block from being resynced.
//!   Each resync session draws a new random [`Key`] and both sites use it; neither the disk's
//!   content nor a peer that did not see the key can aim for a collision, and digests from one
//!   session say nothing about another. Two algorithms: [`Algo::Xxh3`] (xxh3-128 with a
//!   192-byte random secret — fast, and its secret makes collisions unpredictable without
//!   being a cryptographic MAC) and [`Algo::Blake3`] (keyed BLAKE3 truncated to 128 bits — a
//!   real PRF, for when the peer itself is not trusted to be honest about its digests).
//! - **Two levels at fixed offsets.** A *fine* digest covers one [`FINE`] block (4 KiB); a
//!   *coarse* digest covers one [`COARSE`] block (1 MiB) and is the hash of its 256 fine
//!   digests. The sites first compare coarse digests (16 bytes per MiB on the wire) and
//!   fetch fine digests only inside the coarse blocks that differ. Offsets are fixed rather
//!   than content-defined (rsync's rolling hash) because a block device never shifts data:
//!   a block that changed, changed in place.
//!
//! Every hash input ends with a one-byte tag, `b'F'` for a fine digest and `b'C'` for a
//! coarse one, so a 4096-byte block can never be confused with 256 concatenated digests.
//! The tag is fed to a streaming hasher after the block, so the block is never copied.

use std::fmt;
use std::str::FromStr;

use xxhash_rust::xxh3::Xxh3;

/// Bytes covered by one fine digest.
pub const FINE: usize = 4096;
/// Bytes covered by one coarse digest: [`FINE_PER_COARSE`] fine blocks.
pub const COARSE: usize = 1 << 20;
/// Fine blocks per coarse block.
pub const FINE_PER_COARSE: usize = COARSE / FINE;
/// Bytes in a digest.
pub const DIGEST_LEN: usize = 16;
/// Bytes of an [`Algo::Xxh3`] secret.
pub const XXH3_SECRET_LEN: usize = 192;
/// Bytes of an [`Algo::Blake3`] key.
pub const BLAKE3_KEY_LEN: usize = blake3::KEY_LEN;

/// A block or coarse-block digest.
pub type Digest = [u8; DIGEST_LEN];

/// Domain-separation tag appended to a fine block.
const TAG_FINE: u8 = b'F';
/// Domain-separation tag appended to a coarse block's fine digests.
const TAG_COARSE: u8 = b'C';

/// The keyed hash behind a [`Key`]. Its byte ([`Algo::as_u8`]) travels in the resync
/// handshake; its name (`"xxh3"`, `"blake3"`) is what config and the CLI accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// xxh3-128 with a 192-byte random secret. Wire byte 0.
    Xxh3,
    /// BLAKE3 keyed hash with a 32-byte random key, truncated to 128 bits. Wire byte 1.
    Blake3,
}

impl Algo {
    /// The algorithm's wire byte: 0 for xxh3, 1 for blake3.
    #[must_use]
    pub fn as_u8(self) -> u8 {
        match self {
            Algo::Xxh3 => 0,
            Algo::Blake3 => 1,
        }
    }

    /// The algorithm with wire byte `b`, if there is one.
    #[must_use]
    pub fn from_u8(b: u8) -> Option<Algo> {
        match b {
            0 => Some(Algo::Xxh3),
            1 => Some(Algo::Blake3),
            _ => None,
        }
    }

    /// Bytes of key material the algorithm takes ([`XXH3_SECRET_LEN`] or [`BLAKE3_KEY_LEN`]).
    #[must_use]
    pub fn key_len(self) -> usize {
        match self {
            Algo::Xxh3 => XXH3_SECRET_LEN,
            Algo::Blake3 => BLAKE3_KEY_LEN,
        }
    }

    /// The algorithm's name, as [`FromStr`] accepts it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Algo::Xxh3 => "xxh3",
            Algo::Blake3 => "blake3",
        }
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algo {
    type Err = String;

    fn from_str(s: &str) -> Result<Algo, String> {
        match s {
            "xxh3" => Ok(Algo::Xxh3),
            "blake3" => Ok(Algo::Blake3),
            _ => Err(format!(
                "unknown digest algorithm {s:?}: expected \"xxh3\" or \"blake3\""
            )),
        }
    }
}

/// Key material, one variant per [`Algo`].
#[derive(Clone)]
enum Secret {
    /// The secret, and a fresh hasher already holding it: cloning that per block measured
    /// ~20 % faster than `Xxh3::with_secret` (and than copying the block to append the tag
    /// for the one-shot function). Boxed: together they are ~700 bytes.
    Xxh3 {
        secret: Box<[u8; XXH3_SECRET_LEN]>,
        hasher: Box<Xxh3>,
    },
    Blake3([u8; BLAKE3_KEY_LEN]),
}

impl Secret {
    fn xxh3(secret: Box<[u8; XXH3_SECRET_LEN]>) -> Secret {
        let hasher = Box::new(Xxh3::with_secret(*secret));
        Secret::Xxh3 { secret, hasher }
    }
}

/// A resync session's digest key: the algorithm and its secret. Both sites must use the
/// same key for their digests to be comparable; draw a new one per session with
/// [`Key::random`]. `Debug` never prints the secret.
#[derive(Clone)]
pub struct Key {
    secret: Secret,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("algo", &self.algo())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Key {
    /// A fresh key for `algo` from the operating system's random source.
    ///
    /// # Errors
    /// The random source failed.
    pub fn random(algo: Algo) -> std::io::Result<Key> {
        let secret = match algo {
            Algo::Xxh3 => {
                let mut s = Box::new([0u8; XXH3_SECRET_LEN]);
                getrandom::fill(&mut s[..])?;
                Secret::xxh3(s)
            }
            Algo::Blake3 => {
                let mut k = [0u8; BLAKE3_KEY_LEN];
                getrandom::fill(&mut k)?;
                Secret::Blake3(k)
            }
        };
        Ok(Key { secret })
    }

    /// The key for `algo` with exactly these bytes (as [`Key::as_bytes`] gave them).
    ///
    /// # Errors
    /// `bytes` is not exactly [`Algo::key_len`] long.
    pub fn from_bytes(algo: Algo, bytes: &[u8]) -> Result<Key, String> {
        let wrong_len = || {
            format!(
                "{algo} digest key must be exactly {} bytes, got {}",
                algo.key_len(),
                bytes.len()
            )
        };
        let secret = match algo {
            Algo::Xxh3 => Secret::xxh3(Box::new(bytes.try_into().map_err(|_| wrong_len())?)),
            Algo::Blake3 => Secret::Blake3(bytes.try_into().map_err(|_| wrong_len())?),
        };
        Ok(Key { secret })
    }

    /// The key's algorithm.
    #[must_use]
    pub fn algo(&self) -> Algo {
        match self.secret {
            Secret::Xxh3 { .. } => Algo::Xxh3,
            Secret::Blake3(_) => Algo::Blake3,
        }
    }

    /// The secret, to send to the peer inside the authenticated session.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.secret {
            Secret::Xxh3 { secret, .. } => &secret[..],
            Secret::Blake3(k) => k,
        }
    }

    /// The fine digest of one block: `H(block ‖ b'F')`. A block is [`FINE`] bytes except the
    /// last of a disk whose size is not a multiple of it, which is shorter (but not empty);
    /// other lengths are hashed the same way but never compared by the resync.
    #[must_use]
    pub fn fine(&self, block: &[u8]) -> Digest {
        self.tagged(block, TAG_FINE)
    }

    /// The coarse digest of one coarse block from its fine digests, in order:
    /// `H(fine_0 ‖ … ‖ fine_n ‖ b'C')`. Up to [`FINE_PER_COARSE`] of them; fewer for the
    /// last coarse block of a disk.
    #[must_use]
    pub fn coarse(&self, fines: &[Digest]) -> Digest {
        self.tagged(fines.as_flattened(), TAG_COARSE)
    }

    /// Digests of `data`, which starts at a coarse boundary of the caller's choosing:
    /// appends one fine digest per [`FINE`] bytes (the last may cover fewer) to `fine_out`
    /// and one coarse digest per [`COARSE`] bytes (the last may cover fewer), computed from
    /// that piece's fine digests, to `coarse_out`. Empty `data` appends nothing.
    pub fn digest(&self, data: &[u8], fine_out: &mut Vec<Digest>, coarse_out: &mut Vec<Digest>) {
        fine_out.reserve(data.len().div_ceil(FINE));
        coarse_out.reserve(data.len().div_ceil(COARSE));
        for piece in data.chunks(COARSE) {
            let first = fine_out.len();
            fine_out.extend(piece.chunks(FINE).map(|block| self.fine(block)));
            coarse_out.push(self.coarse(&fine_out[first..]));
        }
    }

    /// `H(body ‖ tag)`, streaming so that `body` is not copied.
    fn tagged(&self, body: &[u8], tag: u8) -> Digest {
        match &self.secret {
            Secret::Xxh3 { hasher, .. } => {
                let mut h = Xxh3::clone(hasher);
                h.update(body);
                h.update(&[tag]);
                // The canonical xxHash representation of a 128-bit hash is big-endian.
                h.digest128().to_be_bytes()
            }
            Secret::Blake3(key) => {
                let mut h = blake3::Hasher::new_keyed(key);
                h.update(body);
                h.update(&[tag]);
                // The first 16 bytes of the output, which are the first 16 of `finalize()`.
                let mut out = [0u8; DIGEST_LEN];
                h.finalize_xof().fill(&mut out);
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(d: &Digest) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Secret bytes 0, 1, 2, … (192 of them for xxh3, 32 for blake3).
    fn fixed_key(algo: Algo) -> Key {
        let bytes: Vec<u8> = (0..algo.key_len())
            .map(|i| u8::try_from(i).unwrap())
            .collect();
        Key::from_bytes(algo, &bytes).unwrap()
    }

    /// Deterministic, non-repeating-looking test data: byte i is a mix of i.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                let x = u32::try_from(i).unwrap().wrapping_mul(2_654_435_761);
                (x >> 24).to_le_bytes()[0]
            })
            .collect()
    }

    const ALGOS: [Algo; 2] = [Algo::Xxh3, Algo::Blake3];

    #[test]
    fn golden_values() {
        // Input: 1 MiB + 4096 + 100 bytes of `pattern`, i.e. one full coarse block and a
        // second coarse block of one full and one short fine block.
        let data = pattern(COARSE + FINE + 100);
        let golden: [(Algo, [&str; 5]); 2] = [
            (
                Algo::Xxh3,
                [
                    "3264584ab766ba2bb9eb39bdb21ecc59",
                    "6e38a99f7a0deeef54b73863675627cf",
                    "53a2f7233b448c0072f6396aa62f288c",
                    "d0b85e51005e879e473fa38423d61099",
                    "f3b8768d18de30aa0efbf319b008a691",
                ],
            ),
            (
                Algo::Blake3,
                [
                    "755cc8b5fbfed0cec005d9367aacc992",
                    "bc04e9e95d22cbe2a5af0f74ef34d6f1",
                    "647f8de542daa6c4b1a54187cd7dc1a7",
                    "910bf09d3f1b769b3251999eddbd5b95",
                    "482505edfcd541c3be5cc79be3c7c3ad",
                ],
            ),
        ];
        for (algo, [fine0, fine_last, coarse0, coarse1, fine_short]) in golden {
            let key = fixed_key(algo);
            let (mut fines, mut coarses) = (Vec::new(), Vec::new());
            key.digest(&data, &mut fines, &mut coarses);
            assert_eq!(fines.len(), FINE_PER_COARSE + 2, "{algo}");
            assert_eq!(coarses.len(), 2, "{algo}");
            let got = [
                hex(&fines[0]),
                hex(&fines[FINE_PER_COARSE + 1]),
                hex(&coarses[0]),
                hex(&coarses[1]),
                hex(&key.fine(b"sitrep")),
            ];
            assert_eq!(
                got,
                [fine0, fine_last, coarse0, coarse1, fine_short],
                "{algo}"
            );
        }
    }

    #[test]
    fn streaming_equals_one_shot_of_tagged_input() {
        // The tag is fed separately; the result must be H(block ‖ tag) as documented.
        for len in [1, 15, 16, 17, 128, 129, 240, 241, 1000, FINE - 1, FINE] {
            let block = pattern(len);
            let mut tagged = block.clone();
            tagged.push(b'F');
            let x = fixed_key(Algo::Xxh3);
            let want = xxhash_rust::xxh3::xxh3_128_with_secret(&tagged, x.as_bytes());
            assert_eq!(x.fine(&block), want.to_be_bytes(), "xxh3 len {len}");
            let b = fixed_key(Algo::Blake3);
            let key: [u8; 32] = b.as_bytes().try_into().unwrap();
            let want = blake3::keyed_hash(&key, &tagged);
            assert_eq!(
                b.fine(&block)[..],
                want.as_bytes()[..16],
                "blake3 len {len}"
            );
        }
    }

    #[test]
    fn every_single_byte_change_in_a_block_is_detected() {
        let block = pattern(FINE);
        for algo in ALGOS {
            let key = fixed_key(algo);
            let base = key.fine(&block);
            let mut changed = block.clone();
            for i in 0..FINE {
                let orig = block[i];
                let set = if orig == 0 { 0xff } else { 0 };
                for new in [orig ^ 1, orig ^ 0x80, set] {
                    changed[i] = new;
                    assert_ne!(
                        key.fine(&changed),
                        base,
                        "{algo}: byte {i} {orig:#x}->{new:#x}"
                    );
                }
                changed[i] = orig;
            }
            assert_eq!(key.fine(&changed), base);
        }
    }

    #[test]
    fn zero_block_differs_from_one_nonzero_byte() {
        for algo in ALGOS {
            let key = fixed_key(algo);
            let zero = vec![0u8; FINE];
            let z = key.fine(&zero);
            for i in [0, 1, 7, 2048, FINE - 1] {
                let mut one = zero.clone();
                one[i] = 1;
                assert_ne!(key.fine(&one), z, "{algo} at {i}");
            }
            // A short zero block is not the same as a full one either.
            assert_ne!(key.fine(&zero[..FINE - 1]), z, "{algo}");
        }
    }

    #[test]
    fn tags_separate_fine_from_coarse() {
        for algo in ALGOS {
            let key = fixed_key(algo);
            let fines = vec![[7u8; DIGEST_LEN]; FINE_PER_COARSE];
            assert_ne!(key.coarse(&fines), key.fine(fines.as_flattened()), "{algo}");
        }
    }

    #[test]
    fn different_keys_give_different_digests() {
        let block = pattern(FINE);
        for algo in ALGOS {
            let a = fixed_key(algo);
            let mut bytes = a.as_bytes().to_vec();
            bytes[0] ^= 1;
            let b = Key::from_bytes(algo, &bytes).unwrap();
            let r1 = Key::random(algo).unwrap();
            let r2 = Key::random(algo).unwrap();
            assert_eq!(r1.algo(), algo);
            assert_eq!(r1.as_bytes().len(), algo.key_len());
            assert_ne!(r1.as_bytes(), r2.as_bytes());
            let ds = [&a, &b, &r1, &r2].map(|k| k.fine(&block));
            for i in 0..ds.len() {
                for j in i + 1..ds.len() {
                    assert_ne!(ds[i], ds[j], "{algo}: keys {i} and {j}");
                }
            }
        }
        // The same key bytes under the two algorithms do not give the same digest.
        let x = fixed_key(Algo::Xxh3);
        let b = Key::from_bytes(Algo::Blake3, &x.as_bytes()[..32]).unwrap();
        assert_ne!(x.fine(&block), b.fine(&block));
    }

    #[test]
    fn from_bytes_checks_length() {
        for algo in ALGOS {
            let n = algo.key_len();
            for len in [0, 1, n - 1, n + 1, 1000] {
                let err = Key::from_bytes(algo, &vec![0u8; len]).unwrap_err();
                assert!(
                    err.contains(&format!("exactly {n} bytes, got {len}")),
                    "{err}"
                );
                assert!(err.contains(algo.name()), "{err}");
            }
            let k = Key::from_bytes(algo, &vec![9u8; n]).unwrap();
            assert_eq!(k.algo(), algo);
            assert_eq!(k.as_bytes(), &vec![9u8; n][..]);
        }
        assert_eq!(
            Key::from_bytes(Algo::Xxh3, &[0u8; 32]).unwrap_err(),
            "xxh3 digest key must be exactly 192 bytes, got 32"
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let k = Key::from_bytes(Algo::Blake3, &[0xab; 32]).unwrap();
        let s = format!("{k:?}");
        assert_eq!(s, "Key { algo: Blake3, secret: \"<redacted>\" }");
        assert!(!s.contains("171") && !s.to_lowercase().contains("ab,"));
    }

    #[test]
    fn algo_names_and_bytes_round_trip() {
        for algo in ALGOS {
            assert_eq!(Algo::from_u8(algo.as_u8()), Some(algo));
            assert_eq!(algo.to_string().parse::<Algo>(), Ok(algo));
            let json = serde_json::to_string(&algo).unwrap();
            assert_eq!(json, format!("\"{algo}\""));
            assert_eq!(serde_json::from_str::<Algo>(&json).unwrap(), algo);
        }
        assert_eq!(Algo::Xxh3.as_u8(), 0);
        assert_eq!(Algo::Blake3.as_u8(), 1);
        assert_eq!(Algo::from_u8(2), None);
        assert!("XXH3".parse::<Algo>().is_err());
        assert!("crc32".parse::<Algo>().unwrap_err().contains("crc32"));
    }

    #[test]
    fn digest_of_empty_data_appends_nothing() {
        let key = fixed_key(Algo::Xxh3);
        let (mut f, mut c) = (vec![[1u8; 16]], vec![[2u8; 16]]);
        key.digest(&[], &mut f, &mut c);
        assert_eq!((f.len(), c.len()), (1, 1));
    }

    /// `digest` computed the slow way: fine digests of each block, grouped by coarse block.
    fn model(key: &Key, data: &[u8]) -> (Vec<Digest>, Vec<Digest>) {
        let fines: Vec<Digest> = data.chunks(FINE).map(|b| key.fine(b)).collect();
        let coarses = fines
            .chunks(FINE_PER_COARSE)
            .map(|g| key.coarse(g))
            .collect();
        (fines, coarses)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn digest_matches_grouped_fine_digests(
            blake in any::<bool>(),
            mib in 0usize..3,
            tail in prop_oneof![Just(0usize), 1usize..FINE, 1usize..(2 * FINE + 7)],
            seed in any::<u8>(),
            prefix in 0usize..2,
        ) {
            let algo = if blake { Algo::Blake3 } else { Algo::Xxh3 };
            let key = fixed_key(algo);
            let mut data = pattern(mib * COARSE + tail);
            for b in data.iter_mut().step_by(997) {
                *b ^= seed;
            }
            // Output vectors that already hold digests are appended to, not cleared.
            let mut fines = vec![[0xeeu8; DIGEST_LEN]; prefix];
            let mut coarses = vec![[0xddu8; DIGEST_LEN]; prefix];
            key.digest(&data, &mut fines, &mut coarses);
            let (want_f, want_c) = model(&key, &data);
            prop_assert_eq!(fines.len(), prefix + data.len().div_ceil(FINE));
            prop_assert_eq!(coarses.len(), prefix + data.len().div_ceil(COARSE));
            prop_assert_eq!(&fines[prefix..], &want_f[..]);
            prop_assert_eq!(&coarses[prefix..], &want_c[..]);
        }
    }
}
