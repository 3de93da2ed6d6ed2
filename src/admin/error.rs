//! The admin API's one error type: every refusal is an HTTP status with a JSON body
//! `{"error": "..."}`. Messages never carry a presented token (the auth code never puts one
//! in), and store failures are reported without internals beyond the store's own message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::approval::model::Refused;
use crate::approval::ApprovalError;

/// A refused or failed API call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no token, or not a token of this instance.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: the token's role may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        let status = match &r {
            Refused::NotFound(_) => StatusCode::NOT_FOUND,
            Refused::Forbidden(_) => StatusCode::FORBIDDEN,
            Refused::Conflict(_) => StatusCode::CONFLICT,
            Refused::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, r.to_string())
    }
}

impl From<ApprovalError> for ApiError {
    fn from(e: ApprovalError) -> Self {
        match e {
            ApprovalError::Refused(r) => r.into(),
            // The store is the part that failed, not the request: retrying later may work.
            ApprovalError::Store(m) => {
                tracing::error!(error = %m, "admin API: state store failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("state store: {m}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_their_statuses() {
        let cases = [
            (Refused::NotFound("hold 9".into()), StatusCode::NOT_FOUND),
            (Refused::Forbidden("no".into()), StatusCode::FORBIDDEN),
            (Refused::Conflict("again".into()), StatusCode::CONFLICT),
            (Refused::Invalid("bad".into()), StatusCode::BAD_REQUEST),
        ];
        for (r, status) in cases {
            assert_eq!(ApiError::from(ApprovalError::Refused(r)).status, status);
        }
        let store = ApiError::from(ApprovalError::Store("disk full".into()));
        assert_eq!(store.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            ApiError::from(Refused::NotFound("hold 9".into())).message,
            "hold 9 not found"
        );
    }
}
