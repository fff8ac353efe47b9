//! `RateLimit` values built once and shared: a policy's table of the values it has sent, looked up
//! without a lock and cloned by copying pointers.
//!
//! A value depends only on the limit's name, the requests remaining and the seconds to reset, and a
//! limiter sends few distinct ones: a key with a small quota cycles through a few dozen, a limiter
//! far from its limit sends `r=<limit - 1>;t=<1 emission interval>` again and again. The first time
//! a triple is seen its value is formatted, checked, and kept with `'static` bytes; every later
//! response with the same triple gets a clone of it (two pointers, no reference count, no
//! allocation, no validation). Everything is bounded: a policy's table has [`SLOTS`] slots, each
//! filled once and never replaced; at most [`MAX_TABLES`] tables and [`MAX_ENTRIES`] values for
//! the whole process (about 4 MiB at most); a triple whose slots are taken, or past those caps, is built
//! per response as before (`super::ValueBuf`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderValue;

/// Slots in one policy's table (a power of two). A triple may sit in its slot or its neighbour
/// (the index with the lowest bit flipped).
pub(crate) const SLOTS: usize = 256;
/// Tables the process may allocate (each `SLOTS` pointers, 4 KiB): one per policy that has sent a
/// value. Policies past it build their values per response.
pub(crate) const MAX_TABLES: usize = 256;
/// Values the process may keep, across every table (each at most about 200 bytes with its text).
pub(crate) const MAX_ENTRIES: usize = 16_384;

static TABLES_LEFT: AtomicUsize = AtomicUsize::new(MAX_TABLES);
static ENTRIES_LEFT: AtomicUsize = AtomicUsize::new(MAX_ENTRIES);

/// Takes one from a budget; `false` when it is spent.
fn take(budget: &AtomicUsize) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// One kept value and the triple it was built from.
struct Entry {
    name: &'static str,
    remaining: u32,
    reset: u64,
    value: HeaderValue,
}

impl Entry {
    #[inline]
    fn is(&self, name: &'static str, remaining: u32, reset: u64) -> bool {
        // The same `'static` text (address and length): names are leaked once per limit, so this
        // is the name's identity; a second copy of the same text only misses.
        std::ptr::eq(self.name, name) && self.remaining == remaining && self.reset == reset
    }
}

/// A table's slots: an array, so the index (a hash's top bits) needs no bounds check.
type Slots = [OnceLock<&'static Entry>; SLOTS];

/// A policy's table of kept `RateLimit` values (empty, and unallocated, until its first value).
#[derive(Default)]
pub(crate) struct Prebuilt {
    slots: OnceLock<Box<Slots>>,
}

impl std::fmt::Debug for Prebuilt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self
            .slots
            .get()
            .map_or(0, |s| s.iter().filter(|e| e.get().is_some()).count());
        f.debug_struct("Prebuilt").field("kept", &kept).finish()
    }
}

/// The slot of a triple (the next one is its second choice).
#[inline]
fn index(name: &'static str, remaining: u32, reset: u64) -> usize {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let h = (name.as_ptr() as usize as u64) ^ (u64::from(remaining) << 32) ^ reset.wrapping_mul(K);
    // The top bits: always below `SLOTS`.
    (h.wrapping_mul(K) >> (64 - SLOTS.trailing_zeros())) as usize
}

impl Prebuilt {
    /// The `RateLimit` value `"<name>";r=<remaining>;t=<reset>`, kept or built now and kept; `None`
    /// when the triple's slots hold other triples or a cap is reached (the caller builds it).
    #[inline]
    pub(crate) fn get(
        &self,
        name: &'static str,
        remaining: u32,
        reset: u64,
    ) -> Option<HeaderValue> {
        let slots = match self.slots.get() {
            Some(slots) => slots,
            None => self.allocate()?,
        };
        let i = index(name, remaining, reset);
        for slot in [&slots[i], &slots[i ^ 1]] {
            let entry = match slot.get() {
                Some(entry) => entry,
                None => fill(slot, name, remaining, reset)?,
            };
            if entry.is(name, remaining, reset) {
                return Some(entry.value.clone());
            }
        }
        None
    }

    /// This policy's table, allocated now if the process-wide cap allows.
    #[cold]
    fn allocate(&self) -> Option<&Slots> {
        if !take(&TABLES_LEFT) {
            return None;
        }
        let mut made = false;
        let slots = self.slots.get_or_init(|| {
            made = true;
            Box::new(std::array::from_fn(|_| OnceLock::new()))
        });
        if !made {
            // Another thread allocated it first: give the budget back.
            TABLES_LEFT.fetch_add(1, Ordering::Relaxed);
        }
        Some(slots)
    }
}

/// Fills an empty slot with the triple's value (if the cap allows); another thread may fill it
/// first, with the same triple or another: the caller compares.
#[cold]
fn fill(
    slot: &OnceLock<&'static Entry>,
    name: &'static str,
    remaining: u32,
    reset: u64,
) -> Option<&'static Entry> {
    if !take(&ENTRIES_LEFT) {
        return None;
    }
    let mut made = false;
    let entry = *slot.get_or_init(|| {
        made = true;
        let text: &'static str =
            Box::leak(format!("\"{name}\";r={remaining};t={reset}").into_boxed_str());
        // Names are checked when the layer is built: letters, digits and -_.: only.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from_static(text.as_bytes()))
            .expect("a checked name and digits are a valid header value");
        Box::leak(Box::new(Entry {
            name,
            remaining,
            reset,
            value,
        }))
    });
    if !made {
        ENTRIES_LEFT.fetch_add(1, Ordering::Relaxed);
    }
    Some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str, r: u32, t: u64) -> String {
        format!("\"{name}\";r={r};t={t}")
    }

    #[test]
    fn a_kept_value_is_the_formatted_text_and_is_shared() {
        let table = Prebuilt::default();
        let name: &'static str = "kept";
        let a = table
            .get(name, 9, 6)
            .expect("an empty table keeps the value");
        assert_eq!(a.as_bytes(), text(name, 9, 6).as_bytes());
        let b = table.get(name, 9, 6).expect("kept");
        // The same `'static` bytes: the second is a clone of the first, not a new value.
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        assert_eq!(
            table.get(name, 9, 7).expect("another triple").as_bytes(),
            text(name, 9, 7).as_bytes()
        );
    }

    #[test]
    fn two_names_with_one_table_never_share_a_value() {
        let table = Prebuilt::default();
        let (a, b): (&'static str, &'static str) = ("first", "second");
        for r in 0..40 {
            for (name, t) in [(a, 3), (b, 3)] {
                if let Some(v) = table.get(name, r, t) {
                    assert_eq!(v.as_bytes(), text(name, r, t).as_bytes());
                }
            }
        }
    }

    #[test]
    fn a_full_table_answers_none_or_the_right_value() {
        let table = Prebuilt::default();
        let name: &'static str = "full";
        let mut none = 0;
        for r in 0..(4 * SLOTS as u32) {
            match table.get(name, r, 1) {
                Some(v) => assert_eq!(v.as_bytes(), text(name, r, 1).as_bytes()),
                None => none += 1,
            }
        }
        // At most `SLOTS` values are kept, so at least the rest were left to the caller.
        assert!(none >= 3 * SLOTS, "{none} left to the caller");
        let kept = table.slots.get().expect("allocated").iter();
        assert!(kept.filter(|e| e.get().is_some()).count() <= SLOTS);
    }

    /// Many threads, random triples from a small space (so they collide and race to fill slots):
    /// every value returned is byte-for-byte the formatted text of the triple asked.
    #[test]
    fn concurrent_lookups_never_return_another_triples_value() {
        use std::sync::Arc;
        let table = Arc::new(Prebuilt::default());
        let names: [&'static str; 3] = ["a", "bb", "policy-3"];
        let threads: Vec<_> = (0..8u64)
            .map(|seed| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    let mut hits = 0u32;
                    for _ in 0..20_000 {
                        // xorshift64
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let name = names[(x % 3) as usize];
                        let r = ((x >> 8) % 300) as u32;
                        let t = (x >> 20) % 4;
                        if let Some(v) = table.get(name, r, t) {
                            assert_eq!(v.as_bytes(), text(name, r, t).as_bytes());
                            hits += 1;
                        }
                    }
                    hits
                })
            })
            .collect();
        let hits: u32 = threads
            .into_iter()
            .map(|t| t.join().expect("no panic"))
            .sum();
        assert!(hits > 0, "some lookups were answered from the table");
    }
}
