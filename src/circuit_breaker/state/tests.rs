use super::*;

fn breaker(probes: u32) -> Breaker {
    Breaker::new(
        Config {
            name: "t",
            failure_rate: None,
            slow_calls: None,
            window: WindowConfig::Count(10),
            minimum_calls: 1,
            consecutive_failures: Some(2),
            wait: Wait {
                initial: Duration::from_secs(10),
                multiplier: 2.0,
                max: Duration::from_secs(25),
            },
            half_open_probes: probes,
            key_in_metrics: false,
        },
        None,
        super::Hooks::new(),
    )
}

#[test]
fn the_state_word_packs_kind_probes_and_epoch() {
    let w = (7u64 << EPOCH_SHIFT) | (5 << KIND_BITS) | kind_bits(CircuitState::HalfOpen);
    assert_eq!(kind(w), CircuitState::HalfOpen);
    assert_eq!(probes(w), 5);
    assert_eq!(epoch(w), 7);
}

#[test]
fn exponential_wait_is_capped() {
    let w = breaker(1).cfg.wait;
    assert_eq!(w.for_opening(0), Duration::from_secs(10));
    assert_eq!(w.for_opening(1), Duration::from_secs(20));
    assert_eq!(w.for_opening(2), Duration::from_secs(25));
    assert_eq!(w.for_opening(u32::MAX), Duration::from_secs(25));
}

#[tokio::test(start_paused = true)]
async fn stale_outcomes_are_ignored_and_dropped_probes_give_their_permit_back() {
    let b = breaker(1);
    let stale = b.acquire().unwrap();
    b.record(b.acquire().unwrap(), Outcome::Failure);
    b.record(b.acquire().unwrap(), Outcome::Failure);
    assert_eq!(b.state(), CircuitState::Open);
    // A success from a call admitted while closed does not touch the open circuit.
    b.record(stale, Outcome::Success);
    assert_eq!(b.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    let probe = b.acquire().unwrap();
    assert!(b.acquire().is_err(), "one probe only");
    b.cancel(probe);
    let probe = b.acquire().expect("the dropped probe's permit is back");
    b.record(probe, Outcome::Success);
    assert_eq!(b.state(), CircuitState::Closed);
    assert!(b.now() > 0);
}

#[test]
fn a_success_on_the_inlined_path_ends_a_run_of_failures() {
    // A full count window of 100: successes then take `record`'s inlined path (a count in the
    // thread's stripe, on machines of up to 8 threads: see `striping`), which must still end a run
    // of failures.
    let b = Breaker::new(
        Config {
            window: WindowConfig::Count(100),
            consecutive_failures: Some(3),
            ..breaker(1).cfg
        },
        None,
        super::Hooks::new(),
    );
    for _ in 0..100 {
        b.record(b.acquire().unwrap(), Outcome::Success);
    }
    for _ in 0..5 {
        b.record(b.acquire().unwrap(), Outcome::Failure);
        b.record(b.acquire().unwrap(), Outcome::Failure);
        b.record(b.acquire().unwrap(), Outcome::Success);
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "two failures in a row at most"
        );
    }
    b.record(b.acquire().unwrap(), Outcome::Failure);
    b.record(b.acquire().unwrap(), Outcome::Failure);
    b.record(b.acquire().unwrap(), Outcome::Failure);
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!(
        b.window.counts(0).failures,
        13,
        "every failure reached the ring"
    );
}

#[cfg(feature = "redis")]
mod shared {
    use super::*;
    use crate::backend::{BackendError, ErrorKind};
    use crate::circuit_breaker::store::SyncReply;

    fn half_open_reply(epoch: u64, held: u32) -> SyncReply {
        SyncReply {
            generation: 1,
            epoch,
            state: CircuitState::HalfOpen,
            open_for: None,
            streak: 1,
            reason: 0,
            held,
            calls: 0,
            failures: 0,
            slow: 0,
            run: 0,
            in_state_for: Duration::ZERO,
            contended: false,
        }
    }

    fn unreachable() -> BackendError {
        BackendError::with_kind(ErrorKind::Unreachable, "redis is down", None)
    }

    /// A replica following its store in half-open runs the one probe the store granted it; the
    /// store then stops answering. Its probe's result went to the store: the replica must decide
    /// on it itself, not refuse every call until Redis is back.
    #[tokio::test(start_paused = true)]
    async fn a_probe_reported_to_a_store_that_then_fails_is_decided_locally() {
        for (outcome, after) in [
            (Outcome::Success, CircuitState::Closed),
            (Outcome::Failure, CircuitState::Open),
        ] {
            let signal = Arc::new(crate::circuit_breaker::shared::Signal::new());
            let b = Breaker::new_shared(breaker(1).cfg, None, super::super::Hooks::new(), &signal);
            let synced = b.prepare_sync(1, Duration::from_secs(5));
            b.finish_sync(synced, Ok(half_open_reply(3, 1)));
            assert_eq!(b.state(), CircuitState::HalfOpen);
            let probe = b.acquire().expect("the store granted one probe");
            assert!(b.acquire().is_err(), "one probe only");
            b.record(probe, outcome);
            assert_eq!(b.state(), CircuitState::HalfOpen, "the store decides");
            let failed = b.prepare_sync(1, Duration::from_secs(5));
            b.finish_sync(failed, Err(unreachable()));
            assert_eq!(b.state(), after, "{outcome:?}");
            if after == CircuitState::Closed {
                assert!(b.acquire().is_ok());
            }
        }
    }

    /// A caller between its look at the probe allowance and its claim of a probe while the sync
    /// task gives the replica's unused permits back to the store: both went through, the caller
    /// probing while the store was told the replica held one permit fewer (and granted it to
    /// another replica: n + 1 probes). Now the store is told of every probe in flight.
    #[tokio::test]
    async fn a_probe_claimed_while_unused_permits_are_given_back_is_reported_or_refused() {
        use std::sync::Barrier;
        let signal = Arc::new(crate::circuit_breaker::shared::Signal::new());
        let b = Arc::new(Breaker::new_shared(
            breaker(2).cfg,
            None,
            super::super::Hooks::new(),
            &signal,
        ));
        let synced = b.prepare_sync(1, Duration::from_secs(5));
        let contended = SyncReply {
            contended: true,
            ..half_open_reply(3, 2)
        };
        b.finish_sync(synced, Ok(contended));
        let first = b.acquire().expect("two permits granted");
        let barrier = Arc::new(Barrier::new(2));
        let caller = std::thread::spawn({
            let (b, barrier) = (Arc::clone(&b), Arc::clone(&barrier));
            move || {
                let pause = Arc::clone(&barrier);
                super::super::local::claim_hook::BEFORE_CLAIM.with(|h| {
                    *h.borrow_mut() = Some(Box::new(move || {
                        pause.wait();
                        pause.wait();
                    }));
                });
                b.acquire().ok()
            }
        });
        barrier.wait(); // the caller has looked at the allowance (2 > 1 started)
        let report = b.prepare_sync(1, Duration::from_secs(5));
        barrier.wait(); // it claims now
        let second = caller.join().unwrap();
        let in_flight = 1 + u32::from(second.is_some());
        assert!(
            report.request.held >= in_flight,
            "the store is told {} held, {in_flight} in flight",
            report.request.held
        );
        b.record(first, Outcome::Success);
        if let Some(second) = second {
            b.record(second, Outcome::Success);
        }
    }

    /// Leaving the store with no probe result yet, the replica probes with its own permits.
    #[tokio::test(start_paused = true)]
    async fn a_half_open_replica_left_without_results_probes_on_its_own() {
        let signal = Arc::new(crate::circuit_breaker::shared::Signal::new());
        let b = Breaker::new_shared(breaker(2).cfg, None, super::super::Hooks::new(), &signal);
        let synced = b.prepare_sync(1, Duration::from_secs(5));
        b.finish_sync(synced, Ok(half_open_reply(3, 0)));
        assert!(b.acquire().is_err(), "no permit granted here");
        let failed = b.prepare_sync(1, Duration::from_secs(5));
        b.finish_sync(failed, Err(unreachable()));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let first = b.acquire().expect("its own permits");
        let second = b.acquire().expect("two of them");
        assert!(b.acquire().is_err());
        b.record(first, Outcome::Success);
        b.record(second, Outcome::Success);
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
