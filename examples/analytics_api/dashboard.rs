//! `/api/v1`: dashboard summaries and history, sensors and modules. Live figures (active users,
//! rejected requests, metric history) come from storage; projects, sensors and modules from a small
//! built-in dataset, dated relative to the time the service started so it stays current.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::AppState;
use crate::errors::ApiError;
use crate::storage::Series;

/// A project of the built-in dataset.
struct Project {
    created_days_ago: i64,
    live: bool,
}

/// A sensor of the built-in dataset.
struct Sensor {
    kind: &'static str,
    online: bool,
}

const PROJECTS: &[Project] = &[
    Project {
        created_days_ago: 1,
        live: true,
    },
    Project {
        created_days_ago: 3,
        live: false,
    },
    Project {
        created_days_ago: 6,
        live: true,
    },
    Project {
        created_days_ago: 12,
        live: true,
    },
    Project {
        created_days_ago: 40,
        live: true,
    },
    Project {
        created_days_ago: 95,
        live: false,
    },
];

const SENSORS: &[Sensor] = &[
    Sensor {
        kind: "temperature",
        online: true,
    },
    Sensor {
        kind: "temperature",
        online: true,
    },
    Sensor {
        kind: "temperature",
        online: false,
    },
    Sensor {
        kind: "humidity",
        online: true,
    },
    Sensor {
        kind: "humidity",
        online: true,
    },
    Sensor {
        kind: "pressure",
        online: true,
    },
    Sensor {
        kind: "pressure",
        online: false,
    },
    Sensor {
        kind: "co2",
        online: true,
    },
];

/// A deployed module and its next release.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Module {
    module_name: &'static str,
    current_version: &'static str,
    last_deployed_at: DateTime<Utc>,
    upcoming_version: &'static str,
    /// A day (`YYYY-MM-DD`), as the reference service gives it.
    upcoming_release_date: NaiveDate,
}

/// `(name, current, days since deployed, upcoming, days until release)`.
const MODULES: &[(&str, &str, i64, &str, i64)] = &[
    ("ingestion", "2.4.1", 3, "2.5.0", 11),
    ("analytics-engine", "1.9.0", 17, "2.0.0", 30),
    ("dashboard", "3.2.5", 1, "3.3.0", 6),
    ("alerting", "0.8.2", 45, "0.9.0", 14),
];

/// The built-in dataset, dated from `epoch` (the service's start).
#[derive(Clone, Debug)]
pub(crate) struct Dataset {
    epoch: DateTime<Utc>,
}

impl Dataset {
    pub(crate) fn new(epoch: DateTime<Utc>) -> Self {
        Self { epoch }
    }

    fn new_projects_last_7_days(&self, now: DateTime<Utc>) -> usize {
        PROJECTS
            .iter()
            .filter(|p| {
                self.epoch - ChronoDuration::days(p.created_days_ago)
                    > now - ChronoDuration::days(7)
            })
            .count()
    }

    fn live_projects() -> usize {
        PROJECTS.iter().filter(|p| p.live).count()
    }

    fn sensors(online: bool) -> usize {
        SENSORS.iter().filter(|s| s.online == online).count()
    }

    pub(crate) fn type_breakdown() -> BTreeMap<&'static str, u32> {
        let mut out = BTreeMap::new();
        for s in SENSORS {
            *out.entry(s.kind).or_default() += 1;
        }
        out
    }

    pub(crate) fn modules(&self) -> Vec<Module> {
        MODULES
            .iter()
            .map(|&(name, current, deployed, upcoming, release)| Module {
                module_name: name,
                current_version: current,
                last_deployed_at: self.epoch - ChronoDuration::days(deployed),
                upcoming_version: upcoming,
                upcoming_release_date: (self.epoch + ChronoDuration::days(release)).date_naive(),
            })
            .collect()
    }
}

/// `GET /api/v1/metrics/summary`.
pub(crate) async fn summary(State(state): State<AppState>) -> Result<Response, ApiError> {
    let now = state.now();
    // This instance's rejections not yet written to a shared store count too.
    state.flush_rejections().await?;
    let activity = state.storage.activity(now).await?;
    Ok(Json(json!({
        "activeUsers": activity.active_users,
        "activeUsersByPlatform": activity.by_platform,
        "apiRejectedCount": activity.rejected,
        "newProjectsLast7Days": state.dataset.new_projects_last_7_days(now),
        "totalLiveProjects": Dataset::live_projects(),
        "sensorsOnline": Dataset::sensors(true),
        "sensorsOffline": Dataset::sensors(false),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    #[serde(rename = "type")]
    metric_type: Option<String>,
    metric: Option<String>,
    interval: Option<String>,
    points: Option<String>,
}

/// The most points one history request may ask for.
pub(crate) const MAX_POINTS: usize = 288;

/// An interval in Go's duration syntax (`5m`, `1h`, `1h30m`, `90s`), as the reference service takes
/// it, in seconds: whole minutes from 1 to 60 (the history is kept by the minute).
fn interval_seconds(text: &str) -> Option<i64> {
    let mut rest = text;
    let mut nanos = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let (unit, scale) = [
            ("ns", 1.0),
            ("us", 1e3),
            ("µs", 1e3),
            ("ms", 1e6),
            ("s", 1e9),
            ("m", 60e9),
            ("h", 3600e9),
        ]
        .into_iter()
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())?;
        rest = &rest[unit.len()..];
        nanos += number * scale;
    }
    let minutes = nanos / 60e9;
    (minutes.fract() == 0.0 && (1.0..=60.0).contains(&minutes)).then_some(minutes as i64 * 60)
}

/// `GET /api/v1/metrics/history?metric=activeUsers|apiRejections|<metric type>&interval=<Go
/// duration>` (or `type=` for `metric=`; `points`, 24 by default): counts as whole numbers, a
/// metric type's averages as numbers.
pub(crate) async fn history(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let name = q
        .metric
        .or(q.metric_type)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("query param 'metric' is required"))?;
    let interval_name = q
        .interval
        .filter(|i| !i.is_empty())
        .ok_or_else(|| ApiError::bad_request("query param 'interval' is required"))?;
    let interval = interval_seconds(&interval_name).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid query param 'interval': {interval_name:?} is not a duration of whole minutes \
             from 1m to 1h (5m, 15m, 1h)"
        ))
    })?;
    let points = match q.points {
        None => 24,
        Some(p) => match p.parse::<usize>() {
            Ok(n) if (1..=MAX_POINTS).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid query param 'points': {p:?} is not a whole number from 1 to {MAX_POINTS}"
                )));
            }
        },
    };
    let series = match name.as_str() {
        "activeUsers" => Series::ActiveUsers,
        "apiRejections" => Series::ApiRejections,
        other if crate::storage::valid_metric_type(other) => Series::Metric(other.to_owned()),
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid query param 'metric': {other:?} is not activeUsers, apiRejections or a metric type"
            )));
        }
    };
    if series == Series::ApiRejections {
        state.flush_rejections().await?;
    }
    let counts = !matches!(series, Series::Metric(_));
    let points: Vec<_> = state
        .storage
        .history(&series, interval, points, state.now())
        .await?
        .into_iter()
        .map(|p| {
            // Counts are whole numbers (the reference's clients read integers); averages are
            // numbers, an empty interval's `0.0` (never `-0.0`).
            let value = if counts {
                json!(p.value.round() as u64)
            } else {
                json!(p.value + 0.0)
            };
            json!({ "timestamp": p.timestamp, "value": value })
        })
        .collect();
    Ok(Json(json!({
        "metricType": name,
        "interval": interval_name,
        "points": points,
    }))
    .into_response())
}

/// `GET /api/v1/sensors/type-breakdown` (served through the cache).
pub(crate) async fn type_breakdown() -> Json<BTreeMap<&'static str, u32>> {
    Json(Dataset::type_breakdown())
}

/// `GET /api/v1/modules`.
pub(crate) async fn modules(State(state): State<AppState>) -> Json<Vec<Module>> {
    Json(state.dataset.modules())
}
