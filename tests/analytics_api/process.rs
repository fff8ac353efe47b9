//! The example as users run it: the `analytics_api` binary that `cargo test` builds, configured by
//! environment variables, answering on its port, refusing a bad variable by name, and draining on
//! SIGTERM.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The example binary, next to this test's (`target/<profile>/examples/analytics_api`).
pub(crate) fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    dir.join("examples")
        .join(format!("analytics_api{}", std::env::consts::EXE_SUFFIX))
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example binary running on a free loopback port with `vars` (and nothing else from this
/// process's environment), killed when dropped; its stderr goes to a file.
pub(crate) struct Running {
    child: std::process::Child,
    log: PathBuf,
    pub(crate) http: crate::common::http::Served,
}

impl Running {
    /// What it has logged so far.
    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

impl std::ops::Deref for Running {
    type Target = crate::common::http::Served;

    fn deref(&self) -> &Self::Target {
        &self.http
    }
}

/// Starts the example binary with `vars` and waits (up to 20 s) until `/health` answers.
pub(crate) async fn run_example(vars: &[(&str, &str)]) -> Running {
    let port = free_port();
    let log = std::env::temp_dir().join(format!(
        "rampart-analytics-api-{}-{port}.log",
        std::process::id()
    ));
    let out = std::fs::File::create(&log).expect("create the log file");
    let child = Command::new(example_binary())
        .env_clear()
        .env("BIND", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .envs(vars.iter().copied())
        // Logs go to stdout, errors to stderr: both into the file, through one descriptor.
        .stdout(out.try_clone().expect("share the log file"))
        .stderr(out)
        .spawn()
        .expect("run the example binary (built by `cargo build --examples`)");
    let running = Running {
        child,
        log,
        http: crate::common::http::connect(([127, 0, 0, 1], port).into()),
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://127.0.0.1:{port}/health").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.get(uri.clone()).await {
            Ok(_) => return running,
            Err(e) if Instant::now() > deadline => panic!("the example never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Runs the example binary with `vars` alone, expecting it to stop at start-up (within 10 s) with
/// exit status 1; its stderr.
pub(crate) fn start_up_error(vars: &[(&str, &str)]) -> String {
    use std::io::Read;
    let mut child = Command::new(example_binary())
        .env_clear()
        .env("BIND", "127.0.0.1")
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the example binary (built by `cargo build --examples`)");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the example started with {vars:?}; it should have refused them");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    err
}

#[test]
fn a_bad_variable_stops_start_up_naming_it() {
    let out = Command::new(example_binary())
        .env_clear()
        .env("RATE_LIMIT_WINDOW_SECONDS", "soon")
        .output()
        .expect("run the example binary (built by `cargo test`)");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"invalid RATE_LIMIT_WINDOW_SECONDS="soon""#),
        "{err}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn the_binary_serves_on_its_port_and_drains_on_sigterm() {
    let port = free_port();
    let mut child = Command::new(example_binary())
        .env_clear()
        .env("BIND", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("EXTERNAL_SERVICE_LATENCY_MS", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the example binary");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://127.0.0.1:{port}/health").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let res = loop {
        match client.get(uri.clone()).await {
            Ok(res) => break res,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                let _ = child.kill();
                panic!("the example never answered: {e}");
            }
        }
    };
    assert_eq!(res.status(), http::StatusCode::OK);

    // SIGTERM: graceful shutdown, exit status 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the example did not stop within 10 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A deployment carried over from a reference: its `REDIS_HOST` / `REDIS_PORT` / `REDIS_DB` (or
/// 003's `REDIS_ADDR`) name the Redis the example uses (it started in memory, silently, before),
/// a bad one is refused by name, and the references' variables this example does not read are
/// named in a warning with the one to set instead.
#[tokio::test]
async fn the_references_redis_variables_are_used_and_unread_ones_are_named() {
    let get = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let url = |vars| {
        crate::config::Config::from_lookup_on(get(vars), 0)
            .unwrap()
            .redis_url
    };
    assert_eq!(url(&[]), None);
    assert_eq!(
        url(&[("REDIS_HOST", "redis")]).as_deref(),
        Some("redis://redis:6379/0")
    );
    assert_eq!(
        url(&[
            ("REDIS_HOST", "10.0.0.5"),
            ("REDIS_PORT", "6380"),
            ("REDIS_DB", "2")
        ])
        .as_deref(),
        Some("redis://10.0.0.5:6380/2")
    );
    assert_eq!(
        url(&[("REDIS_HOST", "::1")]).as_deref(),
        Some("redis://[::1]:6379/0")
    );
    assert_eq!(
        url(&[("REDIS_ADDR", "cache:6379")]).as_deref(),
        Some("redis://cache:6379")
    );
    assert_eq!(
        url(&[("REDIS_URL", "redis://a:1/3"), ("REDIS_HOST", "b")]).as_deref(),
        Some("redis://a:1/3"),
        "REDIS_URL wins"
    );
    for (vars, var) in [
        (
            &[("REDIS_HOST", "r"), ("REDIS_PORT", "x")][..],
            "REDIS_PORT",
        ),
        (&[("REDIS_HOST", "r"), ("REDIS_DB", "-1")][..], "REDIS_DB"),
        (&[("REDIS_HOST", "a@b")][..], "REDIS_HOST"),
        (&[("REDIS_ADDR", "cache")][..], "REDIS_ADDR"),
    ] {
        let err = start_up_error(vars);
        assert!(err.contains(var), "{vars:?}: {err}");
    }
    // Unread variables are named, with what to set instead, and the service starts.
    let running = run_example(&[("CB_FAILURE_THRESHOLD", "3"), ("CACHE_TTL", "60")]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = running.logs();
        if logs.contains("CB_FAILURE_THRESHOLD is set but not read")
            && logs.contains("set CIRCUIT_BREAKER_FAILURE_THRESHOLD instead")
            && logs.contains("CACHE_TTL is set but not read")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no warning logged: {logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A body budget no client's share could take a whole body from (an eighth of it below
/// `MAX_BODY_BYTES`) is refused at start-up: every body that large would be a 503.
#[test]
fn a_body_budget_below_eight_bodies_is_refused() {
    let err = start_up_error(&[("MAX_BUFFERED_BODY_BYTES", "100000")]);
    assert!(err.contains("MAX_BUFFERED_BODY_BYTES"), "{err}");
    let err = start_up_error(&[
        ("MAX_BUFFERED_BODY_BYTES", "800000"),
        ("MAX_BODY_BYTES", "200000"),
    ]);
    assert!(err.contains("MAX_BUFFERED_BODY_BYTES"), "{err}");
}
