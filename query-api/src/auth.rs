//! Who may call the API: every route but `/healthz` needs a bearer token when
//! `[query_api.auth]` is on; what a token may do is checked here, before any handler runs.
//!
//! Tokens narrowed to a tenant other than the default one, or to some sources, are refused on
//! every data route: records carry no tenant yet and the engines do not yet filter by source
//! scope, so refusing is the only answer that cannot leak.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_auth::{Authenticator, Identity, Right};
use sluice_common::telemetry::Telemetry;

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
    if identity.is_narrowed() {
        return gate.refuse(
            "scope",
            StatusCode::FORBIDDEN,
            format!(
                "token {} is narrowed (tenant {:?}, sources {:?}); this query API does not yet filter reads by such scopes, so it refuses them",
                identity.token_id, identity.tenant, identity.sources
            ),
        );
    }
    request.extensions_mut().insert(identity);
    next.run(request).await
}
