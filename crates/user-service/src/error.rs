//! The one place that maps the user directory's errors to a gRPC status and
//! to an HTTP status with a JSON body.
//!
//! Every handler, gRPC or HTTP, returns [`UserError`]; the two protocols only
//! differ in how the same variant is spelled on the wire:
//!
//! | variant            | gRPC code          | HTTP |
//! |--------------------|--------------------|------|
//! | `InvalidArgument`  | `INVALID_ARGUMENT` | 400  |
//! | `NotFound`         | `NOT_FOUND`        | 404  |
//! | `AlreadyExists`    | `ALREADY_EXISTS`   | 409  |
//! | `DeadlineExceeded` | `DEADLINE_EXCEEDED`| 504  |
//! | `Unavailable`      | `UNAVAILABLE`      | 503  |
//! | `Internal`         | `INTERNAL`         | 500  |
//!
//! A caller's mistake is never `Internal`: only a fault of this service (a
//! query the schema does not support) is, and its details stay in the log.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::StatusCode;
use tonic::Code;

/// Why a user directory operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// The request is malformed; `field` names the offending field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The request field, as named in the proto and the JSON body.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No user has this id.
    #[error("user {0:?} not found")]
    NotFound(String),
    /// A user with this id exists already.
    #[error("user {0:?} already exists")]
    AlreadyExists(String),
    /// The request ran out of time (the caller's deadline or the server's default).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The database cannot be reached (or is not ready yet); retrying later may work.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A fault of this service; the message sent to the caller is generic.
    #[error("internal error: {0}")]
    Internal(String),
}

impl UserError {
    /// Shorthand for [`UserError::InvalidArgument`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        UserError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// The gRPC status code of this error.
    pub fn code(&self) -> Code {
        match self {
            UserError::InvalidArgument { .. } => Code::InvalidArgument,
            UserError::NotFound(_) => Code::NotFound,
            UserError::AlreadyExists(_) => Code::AlreadyExists,
            UserError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            UserError::Unavailable(_) => Code::Unavailable,
            UserError::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            UserError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            UserError::NotFound(_) => StatusCode::NOT_FOUND,
            UserError::AlreadyExists(_) => StatusCode::CONFLICT,
            UserError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            UserError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            UserError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The offending field of an `InvalidArgument`.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            UserError::InvalidArgument { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The message shown to the caller: internal details are logged, not sent.
    pub fn public_message(&self) -> String {
        match self {
            UserError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        }
    }
}

impl From<UserError> for tonic::Status {
    fn from(error: UserError) -> Self {
        tonic::Status::new(error.code(), error.public_message())
    }
}

/// The JSON error body of the HTTP gateway:
/// `{"error": {"code": "NOT_FOUND", "message": "...", "field": null}}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorDetail {
    /// The gRPC code name (`INVALID_ARGUMENT`, `NOT_FOUND`, …), the same on both protocols.
    pub code: String,
    /// Human-readable, names the field for validation errors.
    pub message: String,
    /// The offending field of a validation error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl IntoResponse for UserError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: code_name(self.code()).to_string(),
                message: self.public_message(),
                field: self.field().map(str::to_string),
            },
        };
        (self.http_status(), Json(body)).into_response()
    }
}

/// The canonical upper-case name of a gRPC code, as the gRPC spec writes it
/// (`NOT_FOUND`); used in metric labels and JSON error bodies.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_matching_grpc_and_http_codes() {
        let cases = [
            (
                UserError::invalid("age", "too old"),
                Code::InvalidArgument,
                400,
            ),
            (UserError::NotFound("u-1".into()), Code::NotFound, 404),
            (
                UserError::AlreadyExists("u-1".into()),
                Code::AlreadyExists,
                409,
            ),
            (
                UserError::DeadlineExceeded("slow".into()),
                Code::DeadlineExceeded,
                504,
            ),
            (
                UserError::Unavailable("down".into()),
                Code::Unavailable,
                503,
            ),
            (UserError::Internal("bug".into()), Code::Internal, 500),
        ];
        for (error, code, http) in cases {
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(error.http_status().as_u16(), http, "{error}");
            assert_eq!(tonic::Status::from(error).code(), code);
        }
    }

    #[test]
    fn validation_messages_name_the_field() {
        let status = tonic::Status::from(UserError::invalid("email", "missing @"));
        assert_eq!(status.message(), "invalid email: missing @");
    }

    #[test]
    fn internal_details_are_not_sent_to_the_caller() {
        let status = tonic::Status::from(UserError::Internal("relation users missing".into()));
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn code_names_follow_the_grpc_spec() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }
}
