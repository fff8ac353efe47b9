//! Who was active in the last five minutes, in memory: exactly, as the Redis store counts them, but
//! with each count kept as it changes. The dashboard's summary reads one number per platform (at
//! most [`MAX_PLATFORMS`] + 1) instead of walking every active user under the store's lock, and
//! expiry drops what expired, oldest first, instead of sweeping every user each second.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;

use super::{MAX_PLATFORMS, OTHER};

/// The second each key was last active, and the keys by that second (oldest expire first).
#[derive(Debug)]
struct LastSeen<K> {
    last: HashMap<K, i64>,
    by_second: BTreeMap<i64, HashSet<K>>,
}

impl<K> Default for LastSeen<K> {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
            by_second: BTreeMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> LastSeen<K> {
    /// Records `key` active at `t` (of two times, the later counts); answers whether it was not
    /// active before.
    fn touch(&mut self, key: K, t: i64) -> bool {
        match self.last.get_mut(&key) {
            Some(last) if *last >= t => false,
            Some(last) => {
                let old = std::mem::replace(last, t);
                if let Some(keys) = self.by_second.get_mut(&old) {
                    keys.remove(&key);
                    if keys.is_empty() {
                        self.by_second.remove(&old);
                    }
                }
                self.by_second.entry(t).or_default().insert(key);
                false
            }
            None => {
                self.last.insert(key, t);
                self.by_second.entry(t).or_default().insert(key);
                true
            }
        }
    }

    /// Forgets the keys last active at or before `since`, passing each to `gone`.
    fn expire(&mut self, since: i64, mut gone: impl FnMut(K)) {
        while let Some(oldest) = self.by_second.first_entry() {
            if *oldest.key() > since {
                break;
            }
            for key in oldest.remove() {
                self.last.remove(&key);
                gone(key);
            }
        }
        // A map keeps the room its largest size took: give a flood's back once it has expired.
        if self.last.capacity() > 4096 && self.last.len() < self.last.capacity() / 4 {
            self.last.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.last.len()
    }
}

/// Users active since the last [`expire`](Self::expire), overall and by platform.
#[derive(Debug, Default)]
pub(super) struct ActiveUsers {
    users: LastSeen<u64>,
    /// Keyed by the platform's place in `labels`.
    platform_users: LastSeen<(u16, u64)>,
    /// The platforms users are counted on: those told apart, and [`OTHER`] once one is not.
    labels: Vec<String>,
    /// How many users are active on each platform of `labels`.
    per_platform: Vec<u64>,
    /// The platforms told apart (at most [`MAX_PLATFORMS`]; later ones count as [`OTHER`]).
    told_apart: HashSet<String>,
}

impl ActiveUsers {
    /// Records `user` active on `platform` at `t` (seconds).
    pub(super) fn record(&mut self, user: u64, platform: &str, t: i64) {
        self.users.touch(user, t);
        let label = if self.told_apart.contains(platform) {
            platform
        } else if self.told_apart.len() < MAX_PLATFORMS {
            self.told_apart.insert(platform.to_owned());
            platform
        } else {
            OTHER
        };
        let place = match self.labels.iter().position(|l| l == label) {
            Some(place) => place,
            None => {
                self.labels.push(label.to_owned());
                self.per_platform.push(0);
                self.labels.len() - 1
            }
        };
        let key = (
            u16::try_from(place).expect("at most MAX_PLATFORMS + 1 platforms"),
            user,
        );
        if self.platform_users.touch(key, t) {
            self.per_platform[place] += 1;
        }
    }

    /// Forgets the users last active at or before `since` (seconds).
    pub(super) fn expire(&mut self, since: i64) {
        self.users.expire(since, drop);
        let per_platform = &mut self.per_platform;
        self.platform_users
            .expire(since, |(place, _)| per_platform[usize::from(place)] -= 1);
    }

    /// The users active, and those active on each platform (platforms with none left out).
    pub(super) fn counts(&self) -> (u64, BTreeMap<String, u64>) {
        let by_platform = self
            .labels
            .iter()
            .zip(&self.per_platform)
            .filter(|(_, n)| **n > 0)
            .map(|(label, n)| (label.clone(), *n))
            .collect();
        (self.users.len() as u64, by_platform)
    }
}
