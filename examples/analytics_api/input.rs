//! Request bodies, read as the reference services read them (pydantic's lax mode): a timestamp in
//! any of the forms `timestamp.rs` takes, a number or a numeric string for `value`, fields the
//! service does not know ignored. Every problem is reported at once, each naming its field, in a 422
//! (`errors.rs`); nothing about a refused body reaches the rate limiter or the storage.

use serde_json::{Map, Value};

use crate::app::Event;
use crate::errors::FieldError;
use crate::storage::{Metric, valid_metric_type};
use crate::timestamp;

/// What a body of `Self` must be; the fields' problems otherwise.
pub(crate) trait FromBody: Sized {
    fn from_body(body: &Value) -> Result<Self, Vec<FieldError>>;
}

/// The rule for metric types, event types and platforms, as a 422 says it.
pub(crate) const TYPE_RULE: &str = "1 to 100 characters, none of them a control character";

fn object(body: &Value) -> Result<&Map<String, Value>, Vec<FieldError>> {
    body.as_object().ok_or_else(|| {
        vec![FieldError::new(
            "model_attributes_type",
            &["body"],
            "Input should be a valid dictionary or object",
        )]
    })
}

/// Collects each field's result, keeping every error.
struct Fields<'a> {
    body: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    fn required<T>(
        &mut self,
        name: &str,
        read: impl FnOnce(&'a Value) -> Result<T, FieldError>,
    ) -> Option<T> {
        match self.body.get(name) {
            None => {
                self.errors.push(FieldError::missing(&["body", name]));
                None
            }
            Some(v) => self.check(read(v)),
        }
    }

    fn check<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        result.map_err(|e| self.errors.push(e)).ok()
    }
}

fn timestamp_field(name: &str, v: &Value) -> Result<chrono::DateTime<chrono::Utc>, FieldError> {
    timestamp::from_json(v).map_err(|e| {
        let kind = match e {
            timestamp::TimestampError::Unreadable => "datetime_parsing",
            timestamp::TimestampError::OutOfRange => "datetime_range",
        };
        FieldError::new(kind, &["body", name], e.message())
    })
}

/// A type-like string: [`TYPE_RULE`].
pub(crate) fn type_field(loc: &[&str], v: &Value) -> Result<String, FieldError> {
    let Value::String(s) = v else {
        return Err(FieldError::new(
            "string_type",
            loc,
            "Input should be a valid string",
        ));
    };
    if valid_metric_type(s) {
        Ok(s.clone())
    } else {
        Err(FieldError::new(
            "string_pattern_mismatch",
            loc,
            format!("String should be {TYPE_RULE}"),
        ))
    }
}

impl FromBody for Metric {
    fn from_body(body: &Value) -> Result<Self, Vec<FieldError>> {
        let mut f = Fields {
            body: object(body)?,
            errors: Vec::new(),
        };
        let timestamp = f.required("timestamp", |v| timestamp_field("timestamp", v));
        let value = f.required("value", |v| {
            let n = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match n {
                Some(n) if n.is_finite() => Ok(n),
                Some(_) => Err(FieldError::new(
                    "finite_number",
                    &["body", "value"],
                    "Input should be a finite number",
                )),
                None => Err(FieldError::new(
                    "float_parsing",
                    &["body", "value"],
                    "Input should be a valid number (a JSON number, or a string holding one)",
                )),
            }
        });
        let metric_type = f.required("type", |v| type_field(&["body", "type"], v));
        match (timestamp, value, metric_type) {
            (Some(timestamp), Some(value), Some(metric_type)) if f.errors.is_empty() => {
                Ok(Metric {
                    timestamp,
                    value,
                    metric_type,
                })
            }
            _ => Err(f.errors),
        }
    }
}

impl FromBody for Event {
    fn from_body(body: &Value) -> Result<Self, Vec<FieldError>> {
        let mut f = Fields {
            body: object(body)?,
            errors: Vec::new(),
        };
        let user_id = f.required("user_id", |v| {
            let n = match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            n.ok_or_else(|| {
                FieldError::new(
                    "int_parsing",
                    &["body", "user_id"],
                    "Input should be a whole number from 0 to 18446744073709551615",
                )
            })
        });
        let event_type = f.required("event_type", |v| type_field(&["body", "event_type"], v));
        let timestamp = f.required("timestamp", |v| timestamp_field("timestamp", v));
        let payload = match body.get("payload") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => Some(p.clone()),
            Some(_) => f.check(Err(FieldError::new(
                "dict_type",
                &["body", "payload"],
                "Input should be a valid dictionary (an object)",
            ))),
        };
        let platform = match payload.as_ref().and_then(|p| p.get("platform")) {
            None | Some(Value::Null) => None,
            Some(p) => f.check(type_field(&["body", "payload", "platform"], p)),
        };
        match (user_id, event_type, timestamp) {
            (Some(user_id), Some(event_type), Some(timestamp)) if f.errors.is_empty() => {
                Ok(Event {
                    user_id,
                    event_type,
                    timestamp,
                    platform,
                })
            }
            _ => Err(f.errors),
        }
    }
}
