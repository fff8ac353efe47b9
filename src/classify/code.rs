//! gRPC status codes, typed.

use std::fmt;

/// A gRPC status code (the `grpc-status` of a response), as gRPC defines them.
///
/// Converts from and to `i32` (`GrpcCode::from_i32`, `TryFrom<i32>`, `i32::from`) and, with the
/// `tonic` feature, from and to `tonic::Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum GrpcCode {
    /// `OK` (0).
    Ok = 0,
    /// `CANCELLED` (1).
    Cancelled = 1,
    /// `UNKNOWN` (2).
    Unknown = 2,
    /// `INVALID_ARGUMENT` (3).
    InvalidArgument = 3,
    /// `DEADLINE_EXCEEDED` (4).
    DeadlineExceeded = 4,
    /// `NOT_FOUND` (5).
    NotFound = 5,
    /// `ALREADY_EXISTS` (6).
    AlreadyExists = 6,
    /// `PERMISSION_DENIED` (7).
    PermissionDenied = 7,
    /// `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted = 8,
    /// `FAILED_PRECONDITION` (9).
    FailedPrecondition = 9,
    /// `ABORTED` (10).
    Aborted = 10,
    /// `OUT_OF_RANGE` (11).
    OutOfRange = 11,
    /// `UNIMPLEMENTED` (12).
    Unimplemented = 12,
    /// `INTERNAL` (13).
    Internal = 13,
    /// `UNAVAILABLE` (14).
    Unavailable = 14,
    /// `DATA_LOSS` (15).
    DataLoss = 15,
    /// `UNAUTHENTICATED` (16).
    Unauthenticated = 16,
}

/// Every code, in order of value.
const ALL: [GrpcCode; 17] = [
    GrpcCode::Ok,
    GrpcCode::Cancelled,
    GrpcCode::Unknown,
    GrpcCode::InvalidArgument,
    GrpcCode::DeadlineExceeded,
    GrpcCode::NotFound,
    GrpcCode::AlreadyExists,
    GrpcCode::PermissionDenied,
    GrpcCode::ResourceExhausted,
    GrpcCode::FailedPrecondition,
    GrpcCode::Aborted,
    GrpcCode::OutOfRange,
    GrpcCode::Unimplemented,
    GrpcCode::Internal,
    GrpcCode::Unavailable,
    GrpcCode::DataLoss,
    GrpcCode::Unauthenticated,
];

impl GrpcCode {
    /// The code with this value, if gRPC defines one (0 to 16).
    pub const fn from_i32(code: i32) -> Option<Self> {
        if code >= 0 && code < ALL.len() as i32 {
            Some(ALL[code as usize])
        } else {
            None
        }
    }

    /// Its value.
    pub const fn as_i32(self) -> i32 {
        self as i32
    }

    /// gRPC's name for it: `UNAVAILABLE`, `RESOURCE_EXHAUSTED`, ...
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Cancelled => "CANCELLED",
            Self::Unknown => "UNKNOWN",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::Aborted => "ABORTED",
            Self::OutOfRange => "OUT_OF_RANGE",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::Internal => "INTERNAL",
            Self::Unavailable => "UNAVAILABLE",
            Self::DataLoss => "DATA_LOSS",
            Self::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<GrpcCode> for i32 {
    fn from(code: GrpcCode) -> Self {
        code.as_i32()
    }
}

/// The error of `GrpcCode::try_from(i32)`: the value is not a gRPC status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownCode(pub i32);

impl fmt::Display for UnknownCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown grpc status code {}", self.0)
    }
}

impl std::error::Error for UnknownCode {}

impl TryFrom<i32> for GrpcCode {
    type Error = UnknownCode;

    fn try_from(code: i32) -> Result<Self, UnknownCode> {
        Self::from_i32(code).ok_or(UnknownCode(code))
    }
}

#[cfg(feature = "tonic")]
impl From<tonic::Code> for GrpcCode {
    fn from(code: tonic::Code) -> Self {
        // tonic's codes are gRPC's, 0 to 16.
        Self::from_i32(code as i32).unwrap_or(Self::Unknown)
    }
}

#[cfg(feature = "tonic")]
impl From<GrpcCode> for tonic::Code {
    fn from(code: GrpcCode) -> Self {
        tonic::Code::from_i32(code.as_i32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_names() {
        for (i, code) in ALL.iter().enumerate() {
            assert_eq!(code.as_i32(), i as i32);
            assert_eq!(GrpcCode::from_i32(i as i32), Some(*code));
        }
        assert_eq!(GrpcCode::from_i32(17), None);
        assert_eq!(GrpcCode::try_from(-1), Err(UnknownCode(-1)));
        assert_eq!(GrpcCode::Unavailable.to_string(), "UNAVAILABLE");
        assert_eq!(i32::from(GrpcCode::ResourceExhausted), 8);
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn tonic_codes_convert_both_ways() {
        for code in ALL {
            let t = tonic::Code::from(code);
            assert_eq!(t as i32, code.as_i32());
            assert_eq!(GrpcCode::from(t), code);
        }
    }
}
