//! Distinct users, counted the way Redis counts them (`PFADD`, `PFCOUNT`): its HyperLogLog, with the
//! same 64-bit hash of the same text (the id's decimal digits), the same 16,384 registers and the
//! same estimator. A memory store and a Redis store given the same ids answer the same counts, and
//! a sketch holds at most 16 KiB however many ids it has seen.
//!
//! Small sets count nearly exactly, as in Redis (a register then holds about one id; two ids that
//! share one count once: 60 ids come out 59 about one time in nine); past a few thousand ids a
//! count is an estimate, with a standard error of 0.81%. The hash is Redis's own, public and
//! unkeyed: crafted ids can skew a count, in memory as in Redis, but not its cost.
//!
//! Written here rather than taken from a crate: no crate counts as Redis does, and counting as Redis
//! does keeps the two stores' answers the same (the tests hold them to it).

use std::fmt;

/// The register index takes the hash's low `P` bits (Redis's `HLL_P`).
const P: u32 = 14;
const REGISTERS: usize = 1 << P;
/// The bits left above the index (Redis's `HLL_Q`): a rank is 1 to `Q + 1`.
const Q: u32 = 64 - P;
/// A sparse sketch keeps at most this many registers as (index, rank) entries (4 bytes each); one
/// more and it turns dense (one byte per register).
const SPARSE_MAX: usize = 2048;
/// Redis's `HLL_ALPHA_INF`: 1 / (2 ln 2).
const ALPHA_INF: f64 = 0.721_347_520_444_481_7;
/// Redis's seed for MurmurHash64A in its HyperLogLog.
const SEED: u64 = 0xadc8_3b19;

/// The most bytes one sketch holds, sparse or dense.
pub(crate) const MAX_SKETCH_BYTES: usize = if SPARSE_MAX * 4 > REGISTERS {
    SPARSE_MAX * 4
} else {
    REGISTERS
};

/// A HyperLogLog sketch of a set of user ids.
#[derive(Clone, Default)]
pub(crate) struct Sketch {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    /// The registers that are not zero, by index: `index << 8 | rank`, sorted.
    Sparse(Vec<u32>),
    /// Every register, one byte each.
    Dense(Box<[u8]>),
}

impl Default for Repr {
    fn default() -> Self {
        Self::Sparse(Vec::new())
    }
}

impl fmt::Debug for Sketch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sketch")
            .field("dense", &matches!(self.repr, Repr::Dense(_)))
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// The hash Redis's `PFADD` takes of `user`'s decimal digits.
pub(crate) fn hash(user: u64) -> u64 {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = user;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    murmur_hash_64a(&digits[at..], SEED)
}

/// MurmurHash2, 64-bit version (Austin Appleby's `MurmurHash64A`, little-endian, as Redis has it).
fn murmur_hash_64a(key: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let mut h = seed ^ (key.len() as u64).wrapping_mul(M);
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let mut k = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate() {
            h ^= u64::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// The register a hash falls in, and its rank there (1 + the zeros above the index bits).
fn register(hash: u64) -> (usize, u8) {
    let index = (hash & (REGISTERS as u64 - 1)) as usize;
    let rank = ((hash >> P) | (1 << Q)).trailing_zeros() + 1;
    (index, rank as u8)
}

impl Sketch {
    /// Adds the user whose [`hash`] is `hash`.
    pub(crate) fn insert_hash(&mut self, hash: u64) {
        let (index, rank) = register(hash);
        self.set_max(index, rank);
    }

    fn set_max(&mut self, index: usize, rank: u8) {
        match &mut self.repr {
            Repr::Dense(registers) => {
                registers[index] = registers[index].max(rank);
            }
            Repr::Sparse(entries) => {
                let entry = ((index as u32) << 8) | u32::from(rank);
                match entries.binary_search_by_key(&index, |e| (e >> 8) as usize) {
                    Ok(i) => entries[i] = entries[i].max(entry),
                    Err(i) => {
                        entries.insert(i, entry);
                        if entries.len() > SPARSE_MAX {
                            self.densify();
                        }
                    }
                }
            }
        }
    }

    fn densify(&mut self) {
        if let Repr::Sparse(entries) = &self.repr {
            let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
            for e in entries {
                registers[(e >> 8) as usize] = (e & 0xff) as u8;
            }
            self.repr = Repr::Dense(registers);
        }
    }

    /// Adds every user of `other` (the union, as `PFMERGE` makes it).
    pub(crate) fn merge(&mut self, other: &Sketch) {
        match (&mut self.repr, &other.repr) {
            (Repr::Dense(mine), Repr::Dense(theirs)) => {
                for (r, t) in mine.iter_mut().zip(theirs.iter()) {
                    *r = (*r).max(*t);
                }
            }
            (_, Repr::Sparse(theirs)) => {
                for e in theirs {
                    self.set_max((e >> 8) as usize, (e & 0xff) as u8);
                }
            }
            (Repr::Sparse(_), Repr::Dense(_)) => {
                let mine = std::mem::replace(self, other.clone());
                self.merge(&mine);
            }
        }
    }

    /// The estimated number of distinct users: what `PFCOUNT` answers for the same ids.
    pub(crate) fn count(&self) -> u64 {
        // How many registers hold each rank (rank 0: empty).
        let mut histogram = [0u32; Q as usize + 2];
        match &self.repr {
            Repr::Dense(registers) => {
                for &r in registers.iter() {
                    histogram[usize::from(r)] += 1;
                }
            }
            Repr::Sparse(entries) => {
                histogram[0] = (REGISTERS - entries.len()) as u32;
                for e in entries {
                    histogram[(e & 0xff) as usize] += 1;
                }
            }
        }
        estimate(&histogram)
    }

    /// The bytes the sketch holds: at most [`MAX_SKETCH_BYTES`] besides its own size.
    pub(crate) fn bytes(&self) -> usize {
        let held = match &self.repr {
            Repr::Sparse(entries) => entries.capacity() * 4,
            Repr::Dense(registers) => registers.len(),
        };
        debug_assert!(held <= MAX_SKETCH_BYTES, "{held} bytes");
        std::mem::size_of::<Self>() + held
    }
}

/// The estimated number of distinct users in the union of `sketches` (0 for none).
pub(crate) fn union_count<'a>(sketches: impl IntoIterator<Item = &'a Sketch>) -> u64 {
    let mut sketches = sketches.into_iter();
    let Some(first) = sketches.next() else {
        return 0;
    };
    match sketches.next() {
        None => first.count(),
        Some(second) => {
            let mut union = first.clone();
            union.merge(second);
            for s in sketches {
                union.merge(s);
            }
            union.count()
        }
    }
}

/// The cardinality from the registers' histogram: Otmar Ertl's estimator ("New cardinality
/// estimation algorithms for HyperLogLog sketches", 2017), computed in the order Redis computes
/// it, so that the rounded result is the same.
fn estimate(histogram: &[u32; Q as usize + 2]) -> u64 {
    let m = REGISTERS as f64;
    let mut z = m * tau((m - f64::from(histogram[Q as usize + 1])) / m);
    for &n in histogram[1..=Q as usize].iter().rev() {
        z += f64::from(n);
        z *= 0.5;
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    (ALPHA_INF * m * m / z).round() as u64
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x) * (1.0 - x) * y;
        if z == previous {
            return z / 3.0;
        }
    }
}
