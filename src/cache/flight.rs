//! Single-flight: concurrent misses on one key make one inner call; the others wait for it.
//!
//! A [`Flight`] is the call in progress for a key. The first miss becomes its leader (it holds a
//! [`FlightGuard`]); later misses on the key are its waiters. The leader ends the flight with an
//! [`Outcome`], which every waiter then receives. A leader dropped before it finishes (a cancelled
//! request) ends the flight as [`Outcome::Abandoned`] from the guard's `Drop`, so waiters never
//! hang: one of them leads a new flight.
//!
//! Flights are only touched on misses, so a plain mutex around the map is enough; the map is
//! sharded to keep misses on different keys from queueing on one lock.

use std::any::Any;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use hashbrown::HashMap;

use super::key::CacheKey;

const SHARDS: usize = 16;

/// How a flight ended, as seen by its waiters. Entries and errors travel untyped (an `Arc` cast,
/// no allocation) so that the map does not depend on the response type.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// Serve this entry (a `CacheEntry<V>`), marked with this status.
    Entry(Arc<dyn Any + Send + Sync>, super::CacheStatus),
    /// Nothing to share (an error, or a response that may not be stored): each waiter calls the
    /// inner service itself, unless `failed` (the leader's call failed: an error, or a response
    /// the mode calls a failure) and the waiter holds a stale entry it may serve on error.
    CallThrough { failed: bool },
    /// A shared error (an `E` in an `Arc`), for layers set to share errors.
    Error(Arc<dyn Any + Send + Sync>),
    /// The leader was dropped before it finished: lead a new flight.
    Abandoned,
}

struct State {
    outcome: Option<Outcome>,
    /// One slot per waiter that has been polled; `None` once it is gone or woken.
    wakers: Vec<Option<Waker>>,
}

/// One call in progress for one key.
pub(crate) struct Flight {
    state: Mutex<State>,
}

impl Flight {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The outcome, once there is one; registers (or refreshes) the waiter's waker in `slot`
    /// otherwise.
    pub(crate) fn poll_outcome(
        &self,
        cx: &mut Context<'_>,
        slot: &mut Option<usize>,
    ) -> Poll<Outcome> {
        let mut state = self.lock();
        if let Some(outcome) = &state.outcome {
            return Poll::Ready(outcome.clone());
        }
        match *slot {
            Some(i) => match &mut state.wakers[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            },
            None => {
                *slot = Some(state.wakers.len());
                state.wakers.push(Some(cx.waker().clone()));
            }
        }
        Poll::Pending
    }

    /// A waiter is gone: forget its waker.
    pub(crate) fn leave(&self, slot: usize) {
        if let Some(w) = self.lock().wakers.get_mut(slot) {
            *w = None;
        }
    }

    fn finish(&self, outcome: Outcome) {
        let wakers = {
            let mut state = self.lock();
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }
}

type Shard = Mutex<HashMap<CacheKey, Arc<Flight>, crate::hash::RandomState>>;

/// The flights in progress, by key.
pub(crate) struct Flights {
    shards: Box<[Shard]>,
    hasher: crate::hash::RandomState,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("in_progress", &self.len())
            .finish()
    }
}

/// What joining a key's flight made of the caller.
pub(crate) enum Joined {
    Leader(FlightGuard),
    Waiter(Arc<Flight>),
}

impl Flights {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: crate::hash::RandomState::default(),
        })
    }

    fn shard(
        &self,
        key: &CacheKey,
    ) -> MutexGuard<'_, HashMap<CacheKey, Arc<Flight>, crate::hash::RandomState>> {
        let i = (self.hasher.hash_one(key) >> 48) as usize % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Leads the flight for `key` if there is none, or joins the one in progress.
    pub(crate) fn join(self: &Arc<Self>, key: &CacheKey) -> Joined {
        let mut shard = self.shard(key);
        if let Some(flight) = shard.get(key) {
            return Joined::Waiter(Arc::clone(flight));
        }
        let flight = Arc::new(Flight {
            state: Mutex::new(State {
                outcome: None,
                wakers: Vec::new(),
            }),
        });
        shard.insert(key.clone(), Arc::clone(&flight));
        Joined::Leader(FlightGuard {
            flights: Arc::clone(self),
            key: key.clone(),
            flight,
            finished: false,
        })
    }

    /// Leads the flight for `key` only if there is none in progress.
    pub(crate) fn lead(self: &Arc<Self>, key: &CacheKey) -> Option<FlightGuard> {
        match self.join(key) {
            Joined::Leader(guard) => Some(guard),
            Joined::Waiter(_) => None,
        }
    }

    /// Detaches the flights whose key matches: they run on for their current waiters, but later
    /// misses start new ones (after an invalidation, nobody should wait for a call that may have
    /// read the old data).
    pub(crate) fn detach(&self, matches: impl Fn(&CacheKey) -> bool) {
        for shard in self.shards.iter() {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|k, _| !matches(k));
        }
    }

    /// [`detach`](Self::detach) for one key: a look in its shard, not a walk of every shard's
    /// table (whose capacity is the most flights it ever held at once).
    pub(crate) fn detach_key(&self, key: &CacheKey) {
        self.shard(key).remove(key);
    }

    /// Flights in progress (a snapshot).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// The leader's hold on a flight. Finishing it wakes the waiters; dropping it unfinished ends the
/// flight as [`Outcome::Abandoned`].
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: CacheKey,
    flight: Arc<Flight>,
    finished: bool,
}

impl FlightGuard {
    pub(crate) fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Ends the flight: removes it from the map (if an invalidation has not already detached it)
    /// and hands `outcome` to its waiters.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        {
            let mut shard = self.flights.shard(&self.key);
            if shard
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                shard.remove(&self.key);
            }
        }
        self.flight.finish(outcome);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.end(Outcome::Abandoned);
    }
}

impl std::fmt::Debug for FlightGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightGuard")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_many_waiters_and_abandonment_wakes_them() {
        let flights = Flights::new();
        let key = CacheKey::from("k");
        let Joined::Leader(guard) = flights.join(&key) else {
            panic!("first is the leader")
        };
        let Joined::Waiter(flight) = flights.join(&key) else {
            panic!("second waits")
        };
        let mut slot = None;
        let mut cx = Context::from_waker(Waker::noop());
        assert!(flight.poll_outcome(&mut cx, &mut slot).is_pending());
        assert!(flight.poll_outcome(&mut cx, &mut slot).is_pending());
        assert_eq!(slot, Some(0), "one slot per waiter, however often polled");
        assert_eq!(flights.len(), 1);
        drop(guard);
        assert!(matches!(
            flight.poll_outcome(&mut cx, &mut slot),
            Poll::Ready(Outcome::Abandoned)
        ));
        assert_eq!(flights.len(), 0);
        assert!(flights.lead(&key).is_some(), "a new flight can start");
    }

    #[test]
    fn a_detached_flight_does_not_remove_its_successor() {
        let flights = Flights::new();
        let key = CacheKey::from("k");
        let old = flights.lead(&key).unwrap();
        flights.detach(|_| true);
        let new = flights.lead(&key).expect("detached: a new flight starts");
        old.finish(Outcome::CallThrough { failed: false });
        assert_eq!(flights.len(), 1, "the new flight is still registered");
        assert!(matches!(flights.join(&key), Joined::Waiter(_)));
        drop(new);
    }

    #[test]
    fn detaching_a_key_detaches_its_flight_only() {
        let flights = Flights::new();
        let (key, other) = (CacheKey::from("k"), CacheKey::from("k2"));
        let old = flights.lead(&key).unwrap();
        let kept = flights.lead(&other).unwrap();
        flights.detach_key(&key);
        assert!(
            matches!(flights.join(&other), Joined::Waiter(_)),
            "other key kept"
        );
        let new = flights.lead(&key).expect("detached: a new flight starts");
        old.finish(Outcome::CallThrough { failed: false });
        assert_eq!(flights.len(), 2, "the new flight and the other key's");
        drop((new, kept));
    }
}
