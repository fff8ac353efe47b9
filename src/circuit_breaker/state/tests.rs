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
