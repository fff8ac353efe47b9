//! End-to-end tests of `examples/analytics_api`: the app built in-process (or, in `process`, the
//! example binary itself), served on a loopback port, driven by a real HTTP client.

#[path = "../common/mod.rs"]
mod common;

#[path = "../../examples/analytics_api/app/mod.rs"]
#[allow(dead_code)]
mod app;
#[path = "../../examples/analytics_api/config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../../examples/analytics_api/dashboard.rs"]
#[allow(dead_code)]
mod dashboard;
#[path = "../../examples/common/deadline.rs"]
mod deadline;
#[path = "../../examples/analytics_api/dependency.rs"]
#[allow(dead_code)]
mod dependency;
#[path = "../../examples/analytics_api/docs.rs"]
#[allow(dead_code)]
mod docs;
#[path = "../../examples/analytics_api/errors.rs"]
#[allow(dead_code)]
mod errors;
#[path = "../../examples/analytics_api/external.rs"]
#[allow(dead_code)]
mod external;
#[path = "../../examples/analytics_api/input.rs"]
#[allow(dead_code)]
mod input;
#[path = "../../examples/common/serve.rs"]
#[allow(dead_code)]
mod serve;
#[path = "../../examples/common/setup.rs"]
#[allow(dead_code)]
mod setup;
#[path = "../../examples/analytics_api/storage/mod.rs"]
#[allow(dead_code)]
mod storage;
#[path = "../../examples/analytics_api/telemetry.rs"]
#[allow(dead_code)]
mod telemetry;
#[path = "../../examples/analytics_api/tiers.rs"]
#[allow(dead_code)]
mod tiers;
#[path = "../../examples/analytics_api/timestamp.rs"]
#[allow(dead_code)]
mod timestamp;

mod api;
mod contract_000;
mod contract_001;
mod contract_002;
mod contract_003;
mod dashboard_api;
mod distinct_users;
mod external_api;
mod process;
mod redis_storage;
mod server;
mod surface;
mod tiers_api;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use common::http::{Served, serve};

/// A time of day the tests move by hand.
#[derive(Clone)]
pub(crate) struct ManualTime(Arc<Mutex<DateTime<Utc>>>);

impl ManualTime {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Mutex::new(Utc::now())))
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }

    pub(crate) fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap() += by;
    }

    pub(crate) fn clock(&self) -> app::Clock {
        let this = self.clone();
        Arc::new(move || this.now())
    }
}

/// The configuration the environment `vars` give.
pub(crate) fn config(vars: &[(&str, &str)]) -> config::Config {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config::Config::from_lookup(|k| vars.get(k).cloned()).unwrap()
}

/// The API-key tiers the environment `vars` give.
pub(crate) fn tiers(vars: &[(&str, &str)]) -> tiers::Tiers {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tiers::Tiers::from_lookup(|k| vars.get(k).cloned()).unwrap()
}

/// An app served on loopback, with its state and its time of day.
pub(crate) struct TestApp {
    pub(crate) http: Served,
    pub(crate) state: app::AppState,
    pub(crate) time: ManualTime,
}

impl std::ops::Deref for TestApp {
    type Target = Served;

    fn deref(&self) -> &Served {
        &self.http
    }
}

/// Serves the app for `vars`, in memory.
pub(crate) async fn start(vars: &[(&str, &str)]) -> TestApp {
    start_on(vars, Arc::new(storage::Storage::default())).await
}

/// Serves the app for `vars`, keeping its data in `storage`.
pub(crate) async fn start_on(vars: &[(&str, &str)], storage: Arc<storage::Storage>) -> TestApp {
    telemetry::prometheus();
    let time = ManualTime::new();
    let (router, state) = app::build(&config(vars), &tiers(vars), storage, time.clock()).unwrap();
    TestApp {
        http: serve(router, true).await,
        state,
        time,
    }
}

pub(crate) const JSON: (&str, &str) = ("content-type", "application/json");

/// A metric submission body.
pub(crate) fn metric(value: f64) -> String {
    format!(r#"{{"timestamp":"2026-02-21T12:00:00Z","value":{value},"type":"cpu_usage"}}"#)
}

/// An event submission body.
pub(crate) fn event(user: u64, kind: &str, platform: &str) -> String {
    format!(
        r#"{{"user_id":{user},"event_type":"{kind}","timestamp":1690000000,"payload":{{"platform":"{platform}"}}}}"#
    )
}
