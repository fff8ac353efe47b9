//! Half-open admits exactly N probes, however many callers race for them; the rest are refused at
//! once, not queued. Repeated many times on a two-thread runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Barrier, Semaphore};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::circuit_breaker::error::CircuitOpen;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};

const CALLERS: usize = 100;
const PROBES: u32 = 3;
const ROUNDS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_n_probes_under_100_concurrent_callers() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_millis(5))
        .half_open_probes(PROBES)
        .build()
        .unwrap();
    let handle = layer.handle();
    let fail = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    // Probes wait at this gate until every other caller has been refused, so all the admitted
    // probes are in flight at once and none can free a slot early.
    let gate = Arc::new(Semaphore::new(0));
    let upstream = {
        let (fail, calls, gate) = (fail.clone(), calls.clone(), gate.clone());
        tower::service_fn(move |()| {
            let (fail, calls, gate) = (fail.clone(), calls.clone(), gate.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if fail.load(Ordering::SeqCst) {
                    return Err::<(), BoxError>(Box::new(std::io::Error::other("down")));
                }
                gate.acquire().await.unwrap().forget();
                Ok(())
            }
        })
    };
    let svc = layer.layer(upstream);

    for round in 0..ROUNDS {
        fail.store(true, Ordering::SeqCst);
        let _ = svc.clone().oneshot(()).await;
        assert_eq!(handle.state(), CircuitState::Open, "round {round}");
        tokio::time::sleep(Duration::from_millis(6)).await;
        fail.store(false, Ordering::SeqCst);
        let before = calls.load(Ordering::SeqCst);

        let barrier = Arc::new(Barrier::new(CALLERS));
        let refused = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (mut svc, barrier, refused) = (svc.clone(), barrier.clone(), refused.clone());
                // Called inline: through a generic helper bounded by `Error = BoxError`, rustc
                // cannot prove the spawned task `Send` (rust-lang/rust#64552; tower's own layers too).
                tokio::spawn(async move {
                    barrier.wait().await;
                    match svc.ready().await.unwrap().call(()).await {
                        Ok(()) => true,
                        Err(e) => {
                            let open = e.downcast_ref::<CircuitOpen>().expect("only refusals fail");
                            assert_eq!(open.state(), CircuitState::HalfOpen);
                            refused.fetch_add(1, Ordering::SeqCst);
                            false
                        }
                    }
                })
            })
            .collect();
        // Refusals are immediate: all but the probes come back without the gate opening.
        let expected_refusals = CALLERS - PROBES as usize;
        tokio::time::timeout(Duration::from_secs(10), async {
            while refused.load(Ordering::SeqCst) < expected_refusals {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "round {round}: only {} refusals",
                refused.load(Ordering::SeqCst)
            )
        });
        assert_eq!(
            calls.load(Ordering::SeqCst) - before,
            PROBES as usize,
            "round {round}"
        );
        gate.add_permits(PROBES as usize);
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        assert_eq!(admitted, PROBES as usize, "round {round}");
        assert_eq!(
            refused.load(Ordering::SeqCst),
            expected_refusals,
            "round {round}"
        );
        assert_eq!(
            handle.state(),
            CircuitState::Closed,
            "round {round}: probes succeeded"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_permit_back_and_cancelled_calls_count_nothing() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (svc, mut upstream) = tower_test::mock::pair::<(), ()>();
    let mut svc = layer.layer(svc);
    upstream.allow(100);

    // A closed-state call dropped before its response counts as nothing.
    let fut = svc.ready().await.unwrap().call(());
    let _request = upstream.next_request().await.unwrap();
    drop(fut);
    assert_eq!(handle.snapshot().calls(), 0);

    let fut = svc.ready().await.unwrap().call(());
    let (_, respond) = upstream.next_request().await.unwrap();
    respond.send_error("down");
    assert!(fut.await.is_err());
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(1)).await;

    let probe = svc.ready().await.unwrap().call(());
    let _probe_request = upstream.next_request().await.unwrap();
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(())
            .await
            .unwrap_err()
            .is::<CircuitOpen>()
    );
    drop(probe);
    // The permit is back: another probe goes through and closes the circuit.
    let probe = svc.ready().await.unwrap().call(());
    let (_, respond) = upstream.next_request().await.unwrap();
    respond.send_response(());
    probe.await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}
