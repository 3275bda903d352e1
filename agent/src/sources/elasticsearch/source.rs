//! The HTTP server: `GET /` and `HEAD /` (what client product checks ask), the cluster health
//! checks shippers make before sending, `POST`/`PUT` on `/_bulk` and `/{index}/_bulk`; every
//! answer carries `X-Elastic-Product: Elasticsearch`.
//!
//! A bulk request is answered only once every document it accepted is durable on the bus, as
//! the Loggregator ingress does; a request whose documents could not be forwarded (the agent
//! is stopping) gets 503 and may be retried whole; one refused for want of room in the agent's
//! pending budget gets 429 (`es_rejected_execution_exception`), as Elasticsearch answers when
//! its write queue is full.

use std::io::Read as _;
use std::sync::Arc;
use std::time::Instant;

use crate::config::ElasticsearchSourceConfig;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};
use sluice_common::SluiceError;
use sluice_common::envelope::validate_envelope;
use sluice_common::shutdown::Shutdown;
use sluice_common::tls::TlsMaterial;
use sluice_proto::v2::Envelope;

use super::bulk::{self, Item, Mapping};
use crate::forwarder::{Forwarder, Tenancy, Ticket};
use crate::metrics::AgentMetrics;
use crate::sources::auth::Refused;

const SOURCE: &str = "elasticsearch";
/// The version `GET /` reports: clients check the major version and the product header.
const VERSION: &str = "8.17.0";

struct Shared {
    /// Checks every request's credential, when tokens are required.
    authenticator: Option<Arc<sluice_auth::Authenticator>>,
    forwarder: Arc<Forwarder>,
    metrics: AgentMetrics,
    mapping: Mapping,
    max_body_bytes: usize,
    max_envelope_bytes: usize,
}

/// The `_bulk` source.
pub struct ElasticsearchSource {
    config: ElasticsearchSourceConfig,
    shared: Arc<Shared>,
    tls: Option<TlsMaterial>,
}

impl ElasticsearchSource {
    /// A source feeding `forwarder`.
    pub fn new(
        config: ElasticsearchSourceConfig,
        forwarder: Arc<Forwarder>,
        max_envelope_bytes: usize,
        metrics: AgentMetrics,
        authenticator: Option<Arc<sluice_auth::Authenticator>>,
        tls: &TlsMaterial,
    ) -> ElasticsearchSource {
        let shared = Arc::new(Shared {
            authenticator,
            forwarder,
            metrics,
            mapping: Mapping {
                source_id_field: config.source_id_field.clone(),
            },
            max_body_bytes: config.max_body_bytes,
            max_envelope_bytes,
        });
        let tls = config.tls.then(|| tls.clone());
        ElasticsearchSource {
            config,
            shared,
            tls,
        }
    }

    /// Serves until `shutdown` fires (over HTTPS with `tls = true`).
    pub async fn serve(self, mut shutdown: Shutdown) -> Result<(), SluiceError> {
        let listener =
            sluice_common::listen(self.config.listen, "elasticsearch bulk source").await?;
        sluice_common::serve_http(
            listener,
            self.tls.as_ref(),
            router(self.shared),
            async move { shutdown.wait().await },
        )
        .await
        .map_err(|error| {
            SluiceError::internal(format!("elasticsearch bulk source failed: {error}"))
        })
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(info).head(info))
        .route("/_cluster/health", get(cluster_health))
        .route("/_cat/health", get(cat_health))
        .route("/_bulk", any(bulk_without_index))
        .route("/{index}/_bulk", any(bulk_with_index))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            authenticate,
        ))
        .layer(axum::middleware::map_response(product_header))
        .with_state(shared)
}

/// With `require_token`, every request needs a token with the ingest right (401 or 403 in
/// Elasticsearch's shape otherwise, counted as refusals by reason).
async fn authenticate(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(authenticator) = &shared.authenticator else {
        return next.run(request).await;
    };
    let path = request.uri().path().to_owned();
    match crate::sources::auth::admit_http(Some(authenticator), request) {
        Ok(request) => next.run(request).await,
        Err(refused) => {
            shared.metrics.source_refused(SOURCE, refused.reason());
            let Refused::Unauthenticated(message) = refused else {
                return error(
                    StatusCode::FORBIDDEN,
                    "security_exception",
                    &format!(
                        "action [indices:data/write/bulk] is unauthorized: {}",
                        refused.message()
                    ),
                );
            };
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "security_exception",
                &format!("{message} for REST request [{path}]"),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Basic realm=\"security\", charset=\"UTF-8\", ApiKey, Bearer",
                ),
            );
            response
        }
    }
}

async fn product_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    response
}

async fn info() -> Response {
    axum::Json(json!({
        "name": "sluice",
        "cluster_name": "sluice",
        "cluster_uuid": "c2x1aWNlLXNsdWljZS1zbA",
        "version": {
            "number": VERSION,
            "build_flavor": "default",
            "build_type": "tar",
            "build_hash": "sluice",
            "build_date": "2026-01-01T00:00:00.000Z",
            "build_snapshot": false,
            "lucene_version": "9.12.0",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0"
        },
        "tagline": "You Know, for Search"
    }))
    .into_response()
}

/// What shippers' connection checks ask for (Filebeat, Logstash: `/_cluster/health`; rsyslog's
/// `omelasticsearch`: `/_cat/health`). Sluice takes documents whenever it is up.
async fn cluster_health() -> Response {
    axum::Json(json!({
        "cluster_name": "sluice",
        "status": "green",
        "timed_out": false,
        "number_of_nodes": 1,
        "number_of_data_nodes": 1,
        "active_primary_shards": 1,
        "active_shards": 1,
        "relocating_shards": 0,
        "initializing_shards": 0,
        "unassigned_shards": 0,
        "active_shards_percent_as_number": 100.0
    }))
    .into_response()
}

async fn cat_health() -> Response {
    let seconds = sluice_common::time::now_nanos() / 1_000_000_000;
    let clock = seconds.rem_euclid(86_400);
    format!(
        "{seconds} {:02}:{:02}:{:02} sluice green 1 1 1 1 0 0 0 0 - 100.0%\n",
        clock / 3_600,
        clock % 3_600 / 60,
        clock % 60
    )
    .into_response()
}

/// An error shaped like Elasticsearch's.
fn error(status: StatusCode, kind: &str, reason: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "error": {
                "root_cause": [{"type": kind, "reason": reason}],
                "type": kind,
                "reason": reason,
            },
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "illegal_argument_exception",
        &format!(
            "Sluice serves only GET /, the health checks and POST|PUT /_bulk, /{{index}}/_bulk, \
             not {method} {}",
            uri.path()
        ),
    )
}

async fn bulk_without_index(
    State(shared): State<Arc<Shared>>,
    tenancy: Option<Extension<Tenancy>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    bulk_request(
        shared,
        crate::sources::auth::tenancy_of(tenancy),
        method,
        None,
        headers,
        body,
    )
    .await
}

async fn bulk_with_index(
    State(shared): State<Arc<Shared>>,
    tenancy: Option<Extension<Tenancy>>,
    Path(index): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    bulk_request(
        shared,
        crate::sources::auth::tenancy_of(tenancy),
        method,
        Some(index),
        headers,
        body,
    )
    .await
}

async fn bulk_request(
    shared: Arc<Shared>,
    tenancy: Tenancy,
    method: Method,
    url_index: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    if method != Method::POST && method != Method::PUT {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "illegal_argument_exception",
            &format!("_bulk takes POST or PUT, not {method}"),
        );
    }
    let limit = shared.max_body_bytes;
    // A client that goes away mid-body ends here: nothing of the request was accepted.
    let raw = match axum::body::to_bytes(body, limit).await {
        Ok(raw) => raw,
        Err(read_error) => {
            return if is_length_limit(&read_error) {
                shared.metrics.source_refused(SOURCE, "too_large");
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "content_too_long_exception",
                    &format!("the request body is over the limit of {limit} bytes"),
                )
            } else {
                shared.metrics.source_refused(SOURCE, "incomplete_body");
                error(
                    StatusCode::BAD_REQUEST,
                    "parse_exception",
                    &format!("failed to read the request body: {read_error}"),
                )
            };
        }
    };
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("gzip"));
    let now = sluice_common::time::now_nanos();
    let work = Arc::clone(&shared);
    let parsed = tokio::task::spawn_blocking(move || {
        let body = if gzip {
            gunzip(&raw, work.max_body_bytes)?
        } else {
            raw.to_vec()
        };
        bulk::parse(&body, url_index.as_deref(), &work.mapping, now).map_err(
            |bulk::BulkError(reason)| (StatusCode::BAD_REQUEST, "malformed_action", reason),
        )
    })
    .await;
    let mut items = match parsed {
        Ok(Ok(items)) => items,
        Ok(Err((status, metric, reason))) => {
            shared.metrics.source_refused(SOURCE, metric);
            let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "content_too_long_exception"
            } else {
                "illegal_argument_exception"
            };
            return error(status, kind, &reason);
        }
        Err(join_error) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                &format!("the bulk request could not be processed: {join_error}"),
            );
        }
    };

    let mut envelopes: Vec<Envelope> = Vec::with_capacity(items.len());
    for item in &mut items {
        if let Ok(envelope) = &item.outcome
            && let Err(too_large) = validate_envelope(envelope, 0, shared.max_envelope_bytes)
        {
            item.outcome = Err(bulk::ItemError {
                status: 400,
                kind: "illegal_argument_exception",
                reason: too_large.to_string().replace("envelope 0", "the document"),
                metric: "too_large",
            });
        }
        match &mut item.outcome {
            Ok(envelope) => envelopes.push(std::mem::take(envelope)),
            Err(refused) => shared.metrics.source_refused(SOURCE, refused.metric),
        }
    }
    let accepted = envelopes.len() as u64;
    if !envelopes.is_empty() {
        let (ticket, done) = Ticket::with_tenancy(SOURCE, tenancy);
        let submitted = shared.forwarder.submit(envelopes, &ticket).await;
        drop(ticket);
        let delivered = match submitted {
            Ok(()) => done.await.unwrap_or_else(|_| {
                Err(tonic::Status::unavailable(
                    "the agent stopped before the documents were acknowledged",
                ))
            }),
            Err(status) => Err(status),
        };
        if let Err(status) = delivered {
            // A full pending budget is Elasticsearch's rejected execution (429, which bulk
            // clients and shippers retry); anything else, shards unavailable (503).
            if status.code() == tonic::Code::ResourceExhausted {
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "es_rejected_execution_exception",
                    &format!("the documents were not taken: {}", status.message()),
                );
            }
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_shards_exception",
                &format!(
                    "the documents could not be made durable: {}",
                    status.message()
                ),
            );
        }
        shared.metrics.source_accepted(SOURCE, accepted);
    }
    axum::Json(answer(&items, started)).into_response()
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.to_string().contains("length limit") {
            return true;
        }
        source = current.source();
    }
    false
}

/// Decompresses at most `limit` bytes; more is refused rather than inflated without bound.
fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>, (StatusCode, &'static str, String)> {
    let mut decoder = flate2::read::GzDecoder::new(raw).take(limit as u64 + 1);
    let mut body = Vec::new();
    decoder.read_to_end(&mut body).map_err(|gzip_error| {
        (
            StatusCode::BAD_REQUEST,
            "bad_gzip",
            format!("failed to decompress the gzip body: {gzip_error}"),
        )
    })?;
    if body.len() > limit {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body decompresses to more than {limit} bytes"),
        ));
    }
    Ok(body)
}

/// Elasticsearch's bulk answer: one item per action, in order.
fn answer(items: &[Item], started: Instant) -> Value {
    let mut errors = false;
    let mut sequence = 0_u64;
    let entries: Vec<Value> = items
        .iter()
        .map(|item| {
            let id = item.id.clone().unwrap_or_else(generated_id);
            let body = match &item.outcome {
                Ok(_) => {
                    sequence += 1;
                    json!({
                        "_index": item.index,
                        "_id": id,
                        "_version": 1,
                        "result": "created",
                        "_shards": {"total": 1, "successful": 1, "failed": 0},
                        "_seq_no": sequence - 1,
                        "_primary_term": 1,
                        "status": 201,
                    })
                }
                Err(refused) => {
                    errors = true;
                    json!({
                        "_index": item.index,
                        "_id": id,
                        "status": refused.status,
                        "error": {"type": refused.kind, "reason": refused.reason},
                    })
                }
            };
            let action = item.action.name();
            json!({ action: body })
        })
        .collect();
    json!({
        "took": started.elapsed().as_millis() as u64,
        "errors": errors,
        "items": entries,
    })
}

/// A 20-character id in Elasticsearch's URL-safe alphabet for documents sent without `_id`.
fn generated_id() -> String {
    use std::hash::BuildHasher;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let state = std::collections::hash_map::RandomState::new();
    let high = state.hash_one(sluice_common::time::now_nanos());
    let low = state.hash_one(high);
    let mut bits = (u128::from(high) << 64) | u128::from(low);
    (0..20)
        .map(|_| {
            let character = ALPHABET[(bits & 63) as usize] as char;
            bits >>= 6;
            character
        })
        .collect()
}
