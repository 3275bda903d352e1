//! Who may call the API: every route but `/healthz` needs a bearer token when
//! `[query_api.auth]` is on; what a token may do is checked here, before any handler runs.
//!
//! A token's scope (its tenant, its sources) goes on to the handlers as a [`Reader`], and each
//! engine applies it below anything the caller's query can express: a term of the Tantivy
//! query (`sluice_indexer::scope`), the live tail's filter, views under the SQL tables
//! (`sql/scope.rs`). The operator's routes (the loss audit, the archive's files and
//! operations, `/metrics`) show every tenant's figures, so only an unscoped identity (an
//! administrator of the default tenant) may call them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_auth::{Authenticator, Identity, Right};
use sluice_common::telemetry::Telemetry;
use sluice_common::tenancy::Scope;

/// The authenticator, each token's request rate, and the refusals it counts.
#[derive(Clone)]
pub struct Gate {
    authenticator: Arc<Authenticator>,
    rate: Arc<RateLimit>,
    refused: Family<Vec<(String, String)>, Counter>,
}

/// A token bucket per token id: `per_second` on average, `burst` at once. Only valid tokens
/// get a bucket, so there are at most as many as the token file holds.
struct RateLimit {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimit {
    /// Takes one request of `token_id` if its bucket has room.
    fn admit(&self, token_id: &str) -> bool {
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (level, last) = buckets
            .entry(token_id.to_owned())
            .or_insert((self.burst, now));
        *level =
            (*level + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *level >= 1.0 {
            *level -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Gate {
    /// A gate over `authenticator` letting each token make `(per second, burst)` requests,
    /// counting into `telemetry`.
    pub fn new(
        authenticator: Arc<Authenticator>,
        (per_second, burst): (f64, u32),
        telemetry: &Telemetry,
    ) -> Gate {
        Gate {
            authenticator,
            rate: Arc::new(RateLimit {
                per_second,
                burst: f64::from(burst),
                buckets: Mutex::new(HashMap::new()),
            }),
            refused: telemetry.register(
                "sluice_query_auth_refused",
                "Requests refused for their credential (reason: missing, malformed, unknown, expired), their scope (reason: right, scope) or their token's rate (reason: rate)",
                Family::default(),
            ),
        }
    }

    fn refuse(&self, reason: &str, status: StatusCode, message: String) -> Response {
        self.refused
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
        let mut response =
            (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
        }
        response
    }
}

/// Routes whose answers cover every tenant.
fn operators_only(path: &str) -> bool {
    path == "/metrics" || path == "/api/v1/audit" || path.starts_with("/api/v1/archive/")
}

/// The right a route needs: operating the archive is admin work, the rest is reading.
fn needed(method: &Method, path: &str) -> Right {
    let operates = matches!(path, "/api/v1/archive/compact" | "/api/v1/archive/expire");
    if operates && method == Method::POST {
        Right::Admin
    } else {
        Right::Read
    }
}

/// The middleware: authenticates, checks the right and scope, and hands the identity on.
pub async fn authorize(
    State(gate): State<Option<Gate>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(gate) = gate else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_owned(), |info| info.0.to_string());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or("\u{0}"));
    let identity: Identity = match gate.authenticator.authenticate(authorization, &peer) {
        Ok(identity) => identity,
        Err(refusal) => {
            return gate.refuse(
                refusal.reason(),
                StatusCode::UNAUTHORIZED,
                refusal.message().to_owned(),
            );
        }
    };
    if !gate.rate.admit(&identity.token_id) {
        let mut response = gate.refuse(
            "rate",
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "token {} is over its rate of {} requests a second (query_api.auth.requests_per_second, request_burst); retry shortly",
                identity.token_id, gate.rate.per_second
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let right = needed(request.method(), request.uri().path());
    if !identity.can(right) {
        tracing::warn!(token_id = %identity.token_id, path = request.uri().path(), right = right.name(), "refused: the token lacks the right");
        return gate.refuse(
            "right",
            StatusCode::FORBIDDEN,
            format!(
                "token {} lacks the {} right",
                identity.token_id,
                right.name()
            ),
        );
    }
    if identity.scope().is_some() && operators_only(request.uri().path()) {
        tracing::warn!(token_id = %identity.token_id, path = request.uri().path(), "refused: an operator's route for a scoped token");
        return gate.refuse(
            "scope",
            StatusCode::FORBIDDEN,
            format!(
                "token {} is scoped to tenant {:?}{}; {} covers every tenant and takes an administrator of the default tenant",
                identity.token_id,
                identity.tenant,
                if identity.sources.is_empty() {
                    String::new()
                } else {
                    format!(", sources {:?}", identity.sources)
                },
                request.uri().path()
            ),
        );
    }
    request.extensions_mut().insert(identity);
    next.run(request).await
}

/// What the caller may read, for the handlers: `scope` is `None` when authentication is off or
/// the caller is the operator, who sees every tenant.
#[derive(Debug, Clone, Default)]
pub struct Reader {
    /// The records the caller may see.
    pub scope: Option<Scope>,
}

impl<S: Send + Sync> FromRequestParts<S> for Reader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Reader, Self::Rejection> {
        Ok(Reader {
            scope: parts.extensions.get::<Identity>().and_then(Identity::scope),
        })
    }
}
