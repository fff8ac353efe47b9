//! `/api/v1`: dashboard summaries and history, sensors and modules. Live figures (active users,
//! rejected requests, metric history) come from storage; projects, sensors and modules from a small
//! built-in dataset, dated relative to the time the service started so it stays current.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::AppState;
use crate::storage::{Series, StorageError};

/// An `/api/v1` error: `{"error": ...}` with a status.
#[derive(Debug)]
pub(crate) struct V1Error {
    status: StatusCode,
    message: String,
}

impl V1Error {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<StorageError> for V1Error {
    /// The cause is logged, not answered.
    fn from(e: StorageError) -> Self {
        tracing::warn!(error = %e, "storage failed; answering 503");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: crate::app::STORAGE_UNAVAILABLE.to_owned(),
        }
    }
}

impl IntoResponse for V1Error {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

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
    upcoming_release_date: DateTime<Utc>,
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
                upcoming_release_date: self.epoch + ChronoDuration::days(release),
            })
            .collect()
    }
}

/// `GET /api/v1/metrics/summary`.
pub(crate) async fn summary(State(state): State<AppState>) -> Result<Response, V1Error> {
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

/// `GET /api/v1/metrics/history?type=activeUsers|apiRejections|<metric type>&interval=1m|5m|1h`.
pub(crate) async fn history(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, V1Error> {
    let Query(q) =
        query.map_err(|e| V1Error::bad_request(format!("invalid query: {}", e.body_text())))?;
    let name = q
        .metric_type
        .or(q.metric)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| V1Error::bad_request("missing query parameter `type` (or `metric`)"))?;
    let interval_name = q
        .interval
        .ok_or_else(|| V1Error::bad_request("missing query parameter `interval` (1m, 5m or 1h)"))?;
    let interval = match interval_name.as_str() {
        "1m" => 60,
        "5m" => 300,
        "1h" => 3600,
        other => {
            return Err(V1Error::bad_request(format!(
                "invalid query parameter `interval`: {other:?} is not one of 1m, 5m, 1h"
            )));
        }
    };
    let points = match q.points {
        None => 24,
        Some(p) => match p.parse::<usize>() {
            Ok(n) if (1..=MAX_POINTS).contains(&n) => n,
            _ => {
                return Err(V1Error::bad_request(format!(
                    "invalid query parameter `points`: {p:?} is not a whole number from 1 to {MAX_POINTS}"
                )));
            }
        },
    };
    let series = match name.as_str() {
        "activeUsers" => Series::ActiveUsers,
        "apiRejections" => Series::ApiRejections,
        other if crate::storage::valid_metric_type(other) => Series::Metric(other.to_owned()),
        other => {
            return Err(V1Error::bad_request(format!(
                "invalid query parameter `type`: {other:?} is not activeUsers, apiRejections or a metric type"
            )));
        }
    };
    if series == Series::ApiRejections {
        state.flush_rejections().await?;
    }
    let points = state
        .storage
        .history(&series, interval, points, state.now())
        .await?;
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
