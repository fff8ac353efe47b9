//! Where a cache key lives in Redis: its slot, its names (entry, lock, index, counter), and the
//! tokens of fill locks.

/// Where one cache key lives: its slot and the key's digest.
pub(super) struct Place<'a> {
    pub(super) id: u16,
    /// `<head><slot>}:`
    pub(super) slot: &'a [u8],
    pub(super) hex: [u8; 40],
}

impl Place<'_> {
    pub(super) fn name(&self, kind: &[u8]) -> Vec<u8> {
        let mut n = Vec::with_capacity(self.slot.len() + kind.len() + self.hex.len());
        n.extend_from_slice(self.slot);
        n.extend_from_slice(kind);
        n.extend_from_slice(&self.hex);
        n
    }

    pub(super) fn entry(&self) -> Vec<u8> {
        self.name(b"e:")
    }

    pub(super) fn lock(&self) -> Vec<u8> {
        self.name(b"l:")
    }
}

/// A slot's own names.
pub(super) struct SlotNames {
    pub(super) seq: Vec<u8>,
    pub(super) idx: Vec<u8>,
    pub(super) exp: Vec<u8>,
    /// The weight of each entry the slot holds (a hash by cache key).
    pub(super) sizes: Vec<u8>,
    /// The sum of those weights.
    pub(super) bytes: Vec<u8>,
    pub(super) entry_head: Vec<u8>,
}

/// The most bytes one slot of a cache holds: its share of the layer's `max_bytes` (at least 1).
pub(super) fn slot_budget(max_bytes: u64, slots: u16) -> u64 {
    (max_bytes / u64::from(slots.max(1))).max(1)
}

/// The epoch of a caller's clock, as seconds of wall time (any fixed instant well after 1970
/// would do).
pub(super) const CUSTOM_EPOCH_SECS: u64 = 1_600_000_000;

/// A SHA-1 digest in lowercase hex, as Lua's `redis.sha1hex` writes it.
pub(super) fn hex(digest: &[u8; 20]) -> [u8; 40] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 40];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

/// `<head><slot>}:` for every slot.
pub(super) fn slot_heads(head: &[u8], slots: u16) -> Box<[Box<[u8]>]> {
    (0..slots)
        .map(|slot| {
            [head, slot.to_string().as_bytes(), b"}:"]
                .concat()
                .into_boxed_slice()
        })
        .collect()
}

/// The `ZRANGEBYLEX` bounds of the keys starting with `prefix`: `[prefix` up to the first string
/// after every such key (the prefix with its last byte below `0xff` incremented, and what follows
/// dropped), or to the end.
pub(super) fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (b"-".to_vec(), b"+".to_vec());
    }
    let mut min = Vec::with_capacity(prefix.len() + 1);
    min.push(b'[');
    min.extend_from_slice(prefix);
    let max = match prefix.iter().rposition(|&b| b != 0xff) {
        Some(i) => {
            let mut max = Vec::with_capacity(i + 2);
            max.push(b'(');
            max.extend_from_slice(&prefix[..i]);
            max.push(prefix[i] + 1);
            max
        }
        None => b"+".to_vec(),
    };
    (min, max)
}

/// A lock token: a random part (what Redis holds) and the slot's invalidation counter when the
/// lock was taken, modulo 2^32 (what the fill script checks).
pub(super) fn token(random: u32, seq: u64) -> u64 {
    (u64::from(random) << 32) | (seq & 0xffff_ffff)
}

pub(super) fn token_parts(token: u64) -> (String, String) {
    ((token >> 32).to_string(), (token & 0xffff_ffff).to_string())
}
