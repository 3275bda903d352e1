//! Who may call the API: every route but `/healthz` needs a bearer token when
//! `[query_api.auth]` is on; what a token may do is checked here, before any handler runs.
//!
//! A token's scope (its tenant, its sources) goes on to the handlers as a [`Reader`], and each
//! engine applies it below anything the caller's query can express: a term of the Tantivy
//! query (`sluice_indexer::scope`), the live tail's filter, views under the SQL tables
//! (`sql/scope.rs`). The operator's routes (the loss audit, the archive's files and
//! operations, `/metrics`) show every tenant's figures, so only an unscoped identity (an
//! administrator of the default tenant) may call them.

use std::net::SocketAddr;
use std::sync::Arc;

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

/// The authenticator and the refusals it counts.
#[derive(Clone)]
pub struct Gate {
    authenticator: Arc<Authenticator>,
    refused: Family<Vec<(String, String)>, Counter>,
}

impl Gate {
    /// A gate over `authenticator`, counting into `telemetry`.
    pub fn new(authenticator: Arc<Authenticator>, telemetry: &Telemetry) -> Gate {
        Gate {
            authenticator,
            refused: telemetry.register(
                "sluice_query_auth_refused",
                "Requests refused for their credential (reason: missing, malformed, unknown, expired) or their scope (reason: right, scope)",
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
