//! Instructions per call under callgrind, for the `instructions` bench and the default-features
//! bench (`benches/default_features`): the binary runs itself as a child under
//! `valgrind --tool=callgrind`, which counts only inside [`rampart_measured_calls`].
//!
//! A child is told its row and call count by `RAMPART_INSTRUCTIONS_CHILD=<row>:<n>`; it sets the
//! row up, warms it up, and hands `n` calls to [`rampart_measured_calls`]. Instructions per call
//! are `(I(2N) - I(N)) / N`, so whatever the loop costs once cancels out.

use std::process::Command;

/// Runs `n` calls of one scenario.
pub(crate) type Run = Box<dyn FnMut(u64)>;

/// The measured loop: the only function callgrind counts in (`--toggle-collect`).
#[inline(never)]
pub(crate) fn rampart_measured_calls(run: &mut dyn FnMut(u64), n: u64) {
    run(n);
}

/// The row and call count this process was started with as a child, if it was.
pub(crate) fn child_spec() -> Option<(String, u64)> {
    let spec = std::env::var("RAMPART_INSTRUCTIONS_CHILD").ok()?;
    let (name, n) = spec.rsplit_once(':').expect("name:n");
    Some((name.to_owned(), n.parse().expect("a number of calls")))
}

/// Instructions per call of row `name`: `(I(2N) - I(N)) / N`.
pub(crate) fn per_call(name: &str, n: u64) -> f64 {
    let one = count(name, n);
    let two = count(name, 2 * n);
    two.saturating_sub(one) as f64 / n as f64
}

/// Instructions counted by callgrind in the measured loop of `name` with `n` calls.
fn count(name: &str, n: u64) -> u64 {
    let exe = std::env::current_exe().expect("the bench binary's path");
    let out = std::env::temp_dir().join(format!(
        "rampart-callgrind-{}-{}.out",
        std::process::id(),
        name.replace('/', "-")
    ));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--collect-atstart=no")
        .arg("--toggle-collect=*rampart_measured_calls*")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .env("RAMPART_INSTRUCTIONS_CHILD", format!("{name}:{n}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("valgrind runs (apt-get install valgrind)");
    assert!(status.success(), "callgrind run of {name} failed: {status}");
    let text = std::fs::read_to_string(&out).expect("callgrind's output");
    let _ = std::fs::remove_file(&out);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("an instruction total in callgrind's output")
}
