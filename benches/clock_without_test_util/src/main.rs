//! Instructions per clock read, `std`'s `Instant::now` and tokio's, inside a runtime (as a server
//! runs), with and without tokio's `test-util` feature: the crate's benches get `test-util` through
//! the dev-dependencies (feature unification), which adds tokio's paused-clock check to every read;
//! an application without it does not pay that. A package of its own, so that `test-util` is off.
//!
//! Run with (from this folder; needs valgrind):
//!
//! ```sh
//! sh run.sh
//! ```
use std::hint::black_box;

#[inline(never)]
fn measured_std(n: u64) {
    for _ in 0..n {
        black_box(std::time::Instant::now());
    }
}

#[inline(never)]
fn measured_tokio(n: u64) {
    for _ in 0..n {
        black_box(tokio::time::Instant::now());
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: clock-without-test-util <reads>");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let _entered = rt.enter();
    measured_std(n);
    measured_tokio(n);
}
