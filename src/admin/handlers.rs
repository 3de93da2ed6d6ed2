//! One function per admin route. Each authenticates and checks the role the action needs
//! in its first extractor ([`Authenticated`], [`Approver`], [`AdminRole`]), so a call
//! without a valid token is 401 and one without the role 403 whatever else is wrong with
//! it; then it reads the path and body, calls [`Approvals`](crate::approval::Approvals), and answers with
//! the record as JSON. The store applies the finer rules (no self-approval, approver
//! groups, one approval per approver, state transitions) and its refusals map to statuses in
//! [`ApiError`].

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::auth::{AdminRole, Approver, Authenticated};
use super::{AdminState, ApiError};
use crate::approval::model::{HoldStatus, NewTicket, TicketStatus};

type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body read strictly: bad JSON, a wrong type or an unknown field is a 400
/// with a JSON error (axum's own `Json` answers some of those in plain text, or 415/422).
/// An empty body reads as `{}`, so `POST .../approve` needs no body at all.
pub(super) struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(Body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
    }
}

/// Query parameters read strictly (unknown parameters are a 400, in JSON).
pub(super) struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
    }
}

/// The `{id}` segment of the path.
pub(super) struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| Id(p.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

impl Id {
    /// Hold and review ids are numbers.
    fn number(&self, what: &str) -> ApiResult<u64> {
        self.0
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{what} ids are numbers, not {:?}", self.0)))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CommentBody {
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReasonBody {
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OptionalReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatusParam {
    #[serde(default)]
    status: Option<String>,
}

/// A comment that is only whitespace is no comment.
fn comment(c: Option<String>) -> Option<String> {
    c.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Denials, rejections and revocations must say why.
fn reason(r: String) -> ApiResult<String> {
    let r = r.trim();
    if r.is_empty() {
        Err(ApiError::bad_request("reason must not be empty"))
    } else {
        Ok(r.to_owned())
    }
}

// ---- health ----

pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 when every check passes, else 503 naming the first that failed in `error` and each
/// check's outcome in `checks`. No authentication: load balancers call it.
pub(super) async fn readyz(State(state): State<AdminState>) -> Response {
    let r = state.readiness();
    let policy = r.policy();
    let (upstream, store) = tokio::join!(r.upstream(), async {
        // A read by key proves the store answers; id 0 is never assigned.
        state
            .approvals()
            .hold(0)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let mut checks = vec![("policy", policy), ("upstream", upstream), ("store", store)];
    if let Some(audit) = r.audit_check() {
        checks.push(("audit", audit));
    }
    let failed = checks
        .iter()
        .find_map(|(name, c)| c.as_ref().err().map(|e| format!("{name}: {e}")));
    let detail: serde_json::Map<String, serde_json::Value> = checks
        .iter()
        .map(|(name, c)| {
            let v = match c {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.clone(),
            };
            (name.to_string(), serde_json::Value::String(v))
        })
        .collect();
    match failed {
        None => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready", "checks": detail })),
        )
            .into_response(),
        Some(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "not ready", "error": error, "checks": detail })),
        )
            .into_response(),
    }
}

// ---- tickets ----

pub(super) async fn list_tickets(
    Authenticated(_): Authenticated,
    State(state): State<AdminState>,
    Params(p): Params<StatusParam>,
) -> ApiResult<Response> {
    let status = match p.status.as_deref() {
        None | Some("all") => None,
        Some(s) => Some(TicketStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status {s:?} is not one of pending, approved, rejected, revoked, expired, all"
            ))
        })?),
    };
    let mut tickets = state.approvals().tickets().await?;
    if let Some(s) = status {
        tickets.retain(|t| t.status == s);
    }
    Ok(Json(tickets).into_response())
}

pub(super) async fn create_ticket(
    Approver(actor): Approver,
    State(state): State<AdminState>,
    Body(new): Body<NewTicket>,
) -> ApiResult<Response> {
    let ticket = state.approvals().create_ticket(new, &actor).await?;
    Ok((StatusCode::CREATED, Json(ticket)).into_response())
}

pub(super) async fn get_ticket(
    Authenticated(_): Authenticated,
    State(state): State<AdminState>,
    Id(id): Id,
) -> ApiResult<Response> {
    match state.approvals().ticket(&id).await? {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(ApiError::not_found(format!("ticket {id} not found"))),
    }
}

pub(super) async fn approve_ticket(
    Approver(actor): Approver,
    State(state): State<AdminState>,
    Id(id): Id,
    Body(b): Body<CommentBody>,
) -> ApiResult<Response> {
    let t = state
        .approvals()
        .approve_ticket(&id, &actor, comment(b.comment))
        .await?;
    Ok(Json(t).into_response())
}

pub(super) async fn reject_ticket(
    Approver(actor): Approver,
    State(state): State<AdminState>,
    Id(id): Id,
    Body(b): Body<ReasonBody>,
) -> ApiResult<Response> {
    let t = state
        .approvals()
        .reject_ticket(&id, &actor, reason(b.reason)?)
        .await?;
    Ok(Json(t).into_response())
}

pub(super) async fn revoke_ticket(
    AdminRole(actor): AdminRole,
    State(state): State<AdminState>,
    Id(id): Id,
    Body(b): Body<ReasonBody>,
) -> ApiResult<Response> {
    let t = state
        .approvals()
        .revoke_ticket(&id, &actor, reason(b.reason)?)
        .await?;
    Ok(Json(t).into_response())
}

// ---- holds ----

pub(super) async fn list_holds(
    Authenticated(_): Authenticated,
    State(state): State<AdminState>,
    Params(p): Params<StatusParam>,
) -> ApiResult<Response> {
    let status = match p.status.as_deref() {
        None | Some("all") => None,
        Some(s) => Some(HoldStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status {s:?} is not one of pending, approved, denied, expired, withdrawn, all"
            ))
        })?),
    };
    Ok(Json(state.approvals().holds(status).await?).into_response())
}

pub(super) async fn get_hold(
    Authenticated(_): Authenticated,
    State(state): State<AdminState>,
    id: Id,
) -> ApiResult<Response> {
    let n = id.number("hold")?;
    match state.approvals().hold(n).await? {
        Some(h) => Ok(Json(h).into_response()),
        None => Err(ApiError::not_found(format!("hold {n} not found"))),
    }
}

pub(super) async fn approve_hold(
    Approver(actor): Approver,
    State(state): State<AdminState>,
    id: Id,
    Body(b): Body<CommentBody>,
) -> ApiResult<Response> {
    let n = id.number("hold")?;
    let h = state
        .approvals()
        .approve_hold(n, &actor, comment(b.comment))
        .await?;
    Ok(Json(h).into_response())
}

pub(super) async fn deny_hold(
    Approver(actor): Approver,
    State(state): State<AdminState>,
    id: Id,
    Body(b): Body<ReasonBody>,
) -> ApiResult<Response> {
    let n = id.number("hold")?;
    let h = state
        .approvals()
        .deny_hold(n, &actor, reason(b.reason)?)
        .await?;
    Ok(Json(h).into_response())
}

pub(super) async fn revoke_hold(
    AdminRole(actor): AdminRole,
    State(state): State<AdminState>,
    id: Id,
    Body(b): Body<OptionalReasonBody>,
) -> ApiResult<Response> {
    let n = id.number("hold")?;
    let why = match b.reason {
        Some(r) => reason(r)?,
        None => format!("revoked by administrator {}", actor.name),
    };
    let h = state.approvals().revoke_hold(n, &actor, why).await?;
    Ok(Json(h).into_response())
}

// ---- break-glass reviews ----

pub(super) async fn list_reviews(
    Authenticated(_): Authenticated,
    State(state): State<AdminState>,
    Params(p): Params<StatusParam>,
) -> ApiResult<Response> {
    let (pending_only, reviewed_only) = match p.status.as_deref() {
        None | Some("pending") => (true, false),
        Some("all") => (false, false),
        Some("reviewed") => (false, true),
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "status {s:?} is not one of pending, reviewed, all"
            )))
        }
    };
    let mut reviews = state.approvals().reviews(pending_only).await?;
    if reviewed_only {
        reviews.retain(|r| r.reviewed_at.is_some());
    }
    Ok(Json(reviews).into_response())
}

pub(super) async fn mark_reviewed(
    Approver(actor): Approver,
    State(state): State<AdminState>,
    id: Id,
    Body(b): Body<CommentBody>,
) -> ApiResult<Response> {
    let n = id.number("review")?;
    let r = state
        .approvals()
        .mark_reviewed(n, &actor, comment(b.comment))
        .await?;
    Ok(Json(r).into_response())
}

// ---- everything else ----

/// Unknown paths: 401 without a token (so the API's shape is not open to anonymous
/// probing), 404 with one.
pub(super) async fn no_route(
    auth: Result<Authenticated, ApiError>,
    uri: axum::http::Uri,
) -> ApiError {
    match auth {
        Err(e) => e,
        Ok(_) => ApiError::not_found(format!("no such endpoint: {}", uri.path())),
    }
}

pub(super) async fn wrong_method(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed here"),
    )
}
