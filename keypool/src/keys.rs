//! Keys unique by construction: a keyed permutation of a sequence.
//!
//! A key is the base62 spelling, `length` characters wide, of `P(seq)`,
//! where `seq` counts up from 0 and `P` is a permutation of `0..62^length`
//! chosen by a 128-bit secret: a balanced Feistel network over the smallest
//! even number of bits that covers the domain, with cycle walking to stay
//! inside it (a value that lands outside is permuted again until it does,
//! which is still a permutation of the domain). Distinct sequence numbers
//! therefore give distinct keys, so generation needs no existence check,
//! and consecutive numbers give keys that look unrelated.
//!
//! Keys are identifiers, not secrets: the round function is a fast mixer,
//! not a cipher, so do not use a key as proof of anything.

/// Base62 digits in ASCII order, so keys sort like their numbers.
const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Feistel rounds; four make a pseudo-random permutation, six mix more.
const ROUNDS: usize = 6;

/// Shortest and longest key lengths supported (62^10 < 2^60 keeps the
/// arithmetic in u64 with room for the Feistel halves).
pub const MIN_LENGTH: u8 = 4;
pub const MAX_LENGTH: u8 = 10;

/// One keyspace: a key length and the secret that orders it.
#[derive(Clone)]
pub struct KeySpace {
    length: u8,
    domain: u64,
    half_bits: u32,
    round_keys: [u64; ROUNDS],
}

impl std::fmt::Debug for KeySpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySpace")
            .field("length", &self.length)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl KeySpace {
    /// The keyspace of `length`-character keys ordered by `secret`.
    /// `None` when `length` is outside [`MIN_LENGTH`]`..=`[`MAX_LENGTH`].
    pub fn new(length: u8, secret: [u8; 16]) -> Option<KeySpace> {
        if !(MIN_LENGTH..=MAX_LENGTH).contains(&length) {
            return None;
        }
        let domain = 62u64.pow(u32::from(length));
        // Smallest even bit count whose range covers the domain.
        let bits = 64 - (domain - 1).leading_zeros();
        let half_bits = bits.div_ceil(2);
        let a = u64::from_le_bytes(secret[..8].try_into().ok()?);
        let b = u64::from_le_bytes(secret[8..].try_into().ok()?);
        let mut state = a ^ b.rotate_left(32);
        let round_keys = std::array::from_fn(|i| {
            state = splitmix(state ^ if i % 2 == 0 { a } else { b });
            state
        });
        Some(KeySpace {
            length,
            domain,
            half_bits,
            round_keys,
        })
    }

    pub fn length(&self) -> u8 {
        self.length
    }

    /// How many keys this space holds: 62^length.
    pub fn size(&self) -> u64 {
        self.domain
    }

    /// The key for sequence number `seq`; `None` past the end of the space.
    pub fn key(&self, seq: u64) -> Option<String> {
        if seq >= self.domain {
            return None;
        }
        let mut x = self.permute(seq);
        while x >= self.domain {
            x = self.permute(x);
        }
        Some(self.spell(x))
    }

    fn permute(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for k in self.round_keys {
            let next = left ^ (splitmix(right ^ k) & mask);
            left = right;
            right = next;
        }
        (left << self.half_bits) | right
    }

    fn spell(&self, mut n: u64) -> String {
        let mut buf = vec![b'0'; usize::from(self.length)];
        for slot in buf.iter_mut().rev() {
            *slot = DIGITS[(n % 62) as usize];
            n /= 62;
        }
        // Every byte comes from DIGITS, so this is ASCII.
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// SplitMix64's finaliser: a fast, well-mixed 64-bit function.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const SECRET: [u8; 16] = *b"0123456789abcdef";

    /// A tiny space, checked exhaustively through the same code path: the
    /// permutation of 62^length is tested by shrinking the domain.
    fn small(domain: u64) -> KeySpace {
        let mut space = KeySpace::new(4, SECRET).unwrap();
        space.domain = domain;
        let bits = 64 - (domain - 1).leading_zeros();
        space.half_bits = bits.div_ceil(2);
        space
    }

    #[test]
    fn every_sequence_number_maps_to_a_distinct_value_in_the_domain() {
        for domain in [2, 62, 1_000, 3_844, 65_536, 238_328] {
            let space = small(domain);
            let mut seen = HashSet::new();
            for seq in 0..domain {
                let mut x = space.permute(seq);
                while x >= space.domain {
                    x = space.permute(x);
                }
                assert!(x < domain);
                assert!(seen.insert(x), "domain {domain}: {seq} collides");
            }
            assert_eq!(seen.len() as u64, domain);
        }
    }

    #[test]
    fn keys_are_fixed_width_base62_and_distinct() {
        let space = KeySpace::new(7, SECRET).unwrap();
        assert_eq!(space.size(), 3_521_614_606_208);
        let keys: Vec<String> = (0..100_000).map(|s| space.key(s).unwrap()).collect();
        assert!(keys
            .iter()
            .all(|k| k.len() == 7 && k.bytes().all(|b| b.is_ascii_alphanumeric())));
        let distinct: HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        assert!(space.key(space.size()).is_none());
        assert!(space.key(space.size() - 1).is_some());
    }

    #[test]
    fn consecutive_keys_look_unrelated_and_depend_on_the_secret() {
        let space = KeySpace::new(7, SECRET).unwrap();
        let (a, b) = (space.key(0).unwrap(), space.key(1).unwrap());
        let shared = a.bytes().zip(b.bytes()).filter(|(x, y)| x == y).count();
        assert!(shared < 4, "{a} and {b}");
        let other = KeySpace::new(7, *b"fedcba9876543210").unwrap();
        assert_ne!(space.key(0), other.key(0));
        // The first characters spread over the alphabet, not one value.
        let firsts: HashSet<u8> = (0..1_000)
            .map(|s| space.key(s).unwrap().as_bytes()[0])
            .collect();
        assert!(firsts.len() > 40, "{} first characters", firsts.len());
    }

    #[test]
    fn lengths_outside_the_supported_range_are_refused() {
        assert!(KeySpace::new(MIN_LENGTH - 1, SECRET).is_none());
        assert!(KeySpace::new(MAX_LENGTH + 1, SECRET).is_none());
        assert_eq!(
            KeySpace::new(MAX_LENGTH, SECRET).unwrap().size(),
            839_299_365_868_340_224
        );
    }
}
