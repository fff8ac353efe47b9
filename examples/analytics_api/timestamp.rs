//! Timestamps as the reference services' clients send them: RFC 3339 with or without an offset (none
//! means UTC), a date alone (midnight UTC), or unix seconds (an integer or a decimal, as a JSON
//! number or a string). Anything else is refused with a message naming the accepted forms; a time
//! outside the years 0000 to 9999 is refused as out of range.
//!
//! Shared with `examples/grpc_analytics` (included by path), which takes the same range.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

/// The forms a timestamp may take, as the 422 answer says them.
pub(crate) const ACCEPTED: &str = "an RFC 3339 date-time (\"2025-01-01T10:00:00Z\"; without an \
     offset, as in \"2025-01-01T10:00:00\", it is UTC), a date (\"2025-01-01\", midnight UTC) or unix \
     seconds (1735725600 or 1735725600.5, as a number or a string)";

/// The earliest timestamp taken: 0000-01-01T00:00:00Z, in unix seconds.
pub(crate) const MIN_SECS: i64 = -62_167_219_200;
/// The latest whole second taken: 9999-12-31T23:59:59Z, in unix seconds.
pub(crate) const MAX_SECS: i64 = 253_402_300_799;

/// What is wrong with a timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimestampError {
    /// Not one of the [`ACCEPTED`] forms.
    Unreadable,
    /// Readable, but before 0000-01-01 or after 9999-12-31.
    OutOfRange,
}

impl TimestampError {
    /// The message a client is answered.
    pub(crate) fn message(self) -> String {
        match self {
            Self::Unreadable => format!("Input should be {ACCEPTED}"),
            Self::OutOfRange => format!(
                "Timestamp out of range: it must be from 0000-01-01T00:00:00Z to \
                 9999-12-31T23:59:59Z (unix seconds {MIN_SECS} to {MAX_SECS})"
            ),
        }
    }
}

/// `t` if it is within the years 0000 to 9999.
pub(crate) fn in_range(t: DateTime<Utc>) -> Result<DateTime<Utc>, TimestampError> {
    if (MIN_SECS..=MAX_SECS).contains(&t.timestamp()) {
        Ok(t)
    } else {
        Err(TimestampError::OutOfRange)
    }
}

/// A timestamp from a JSON value: a string in any accepted form, or a number of unix seconds.
pub(crate) fn from_json(v: &Value) -> Result<DateTime<Utc>, TimestampError> {
    match v {
        Value::String(s) => parse(s),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                from_unix(i, 0)
            } else if n.is_u64() {
                Err(TimestampError::OutOfRange)
            } else {
                n.as_f64()
                    .map_or(Err(TimestampError::Unreadable), from_unix_f64)
            }
        }
        _ => Err(TimestampError::Unreadable),
    }
}

/// A timestamp from text in any accepted form.
pub(crate) fn parse(s: &str) -> Result<DateTime<Utc>, TimestampError> {
    let s = s.trim();
    if is_decimal(s) {
        return match s.parse::<i64>() {
            Ok(i) => from_unix(i, 0),
            Err(_) => s
                .parse::<f64>()
                .map_or(Err(TimestampError::Unreadable), from_unix_f64),
        };
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return in_range(t.with_timezone(&Utc));
    }
    // The same with a space for the `T`, or a lowercase `t`/`z`.
    if let Ok(t) = DateTime::parse_from_rfc3339(&s.replacen(' ', "T", 1).to_ascii_uppercase()) {
        return in_range(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return in_range(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return in_range(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    Err(TimestampError::Unreadable)
}

/// Whether `s` is a decimal number: an optional sign, digits, and optionally a point and digits.
fn is_decimal(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    !whole.is_empty()
        && !fraction.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// `secs` seconds and `nanos` nanoseconds after the unix epoch, within the range.
pub(crate) fn from_unix(secs: i64, nanos: u32) -> Result<DateTime<Utc>, TimestampError> {
    if !(MIN_SECS..=MAX_SECS).contains(&secs) {
        return Err(TimestampError::OutOfRange);
    }
    DateTime::from_timestamp(secs, nanos).ok_or(TimestampError::Unreadable)
}

fn from_unix_f64(secs: f64) -> Result<DateTime<Utc>, TimestampError> {
    if !secs.is_finite() {
        return Err(TimestampError::Unreadable);
    }
    let whole = secs.floor();
    if whole < MIN_SECS as f64 || whole > MAX_SECS as f64 {
        return Err(TimestampError::OutOfRange);
    }
    let nanos = (((secs - whole) * 1e9).round() as u32).min(999_999_999);
    from_unix(whole as i64, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_form() {
        let ten = "2025-01-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap();
        for s in [
            "2025-01-01T10:00:00Z",
            "2025-01-01T11:00:00+01:00",
            "2025-01-01T10:00:00",
            "2025-01-01 10:00:00",
            "2025-01-01T10:00",
            "1735725600",
            "1735725600.0",
        ] {
            assert_eq!(parse(s), Ok(ten), "{s}");
        }
        assert_eq!(
            parse("2025-01-01"),
            Ok("2025-01-01T00:00:00Z".parse().unwrap())
        );
        assert_eq!(parse("253402300800"), Err(TimestampError::OutOfRange));
        assert_eq!(
            parse("0000-01-01"),
            Ok(DateTime::from_timestamp(MIN_SECS, 0).unwrap())
        );
        assert_eq!(parse("yesterday"), Err(TimestampError::Unreadable));
        assert_eq!(
            from_json(&serde_json::json!(1e300)),
            Err(TimestampError::OutOfRange)
        );
    }
}
