//! OTLP receivers: gRPC (`LogsService/Export`, `MetricsService/Export`, plaintext like an
//! OpenTelemetry Collector's default) and HTTP/protobuf (`POST /v1/logs`, `/v1/metrics`,
//! gzip bodies). An export is answered once its envelopes are durable; refused records are
//! reported in the answer's `partial_success` and counted.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::OtlpSourceConfig;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message as _;
use sluice_common::SluiceError;
use sluice_common::envelope::validate_envelope;
use sluice_common::shutdown::Shutdown;
use sluice_common::tls::TlsMaterial;
use sluice_proto::opentelemetry::proto::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use sluice_proto::opentelemetry::proto::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use sluice_proto::opentelemetry::proto::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use sluice_proto::opentelemetry::proto::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use tonic::{Request, Status};

use super::mapping::{self, Mapped, Mapping};
use crate::forwarder::{Forwarder, Tenancy, Ticket};
use crate::metrics::AgentMetrics;
use crate::sources::auth::Refused;

const SOURCE: &str = "otlp";

struct Shared {
    /// Checks every export's token, when tokens are required.
    authenticator: Option<Arc<sluice_auth::Authenticator>>,
    forwarder: Arc<Forwarder>,
    metrics: AgentMetrics,
    mapping: Mapping,
    max_message_bytes: usize,
    max_envelope_bytes: usize,
}

/// The OTLP source.
pub struct OtlpSource {
    config: OtlpSourceConfig,
    shared: Arc<Shared>,
    tls: Option<TlsMaterial>,
}

impl OtlpSource {
    /// A source feeding `forwarder`.
    pub fn new(
        config: OtlpSourceConfig,
        forwarder: Arc<Forwarder>,
        max_envelope_bytes: usize,
        metrics: AgentMetrics,
        authenticator: Option<Arc<sluice_auth::Authenticator>>,
        tls: &TlsMaterial,
    ) -> OtlpSource {
        let shared = Arc::new(Shared {
            authenticator,
            forwarder,
            metrics,
            mapping: Mapping {
                source_id_attribute: config.source_id_attribute.clone(),
                quantiles: config.histogram_quantiles.clone(),
            },
            max_message_bytes: config.max_message_bytes,
            max_envelope_bytes,
        });
        let tls = config.tls.then(|| tls.clone());
        OtlpSource {
            config,
            shared,
            tls,
        }
    }

    /// Serves gRPC and HTTP until `shutdown` fires.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), SluiceError> {
        let grpc = serve_grpc(
            self.config.grpc_listen,
            Arc::clone(&self.shared),
            self.tls.clone(),
            shutdown.clone(),
        );
        let http = serve_http(
            self.config.http_listen,
            Arc::clone(&self.shared),
            self.tls,
            shutdown,
        );
        let (grpc, http) = tokio::join!(grpc, http);
        grpc.and(http)
    }
}

async fn serve_grpc(
    listen: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsMaterial>,
    mut shutdown: Shutdown,
) -> Result<(), SluiceError> {
    let listener = sluice_common::listen(listen, "otlp source (grpc)").await?;
    let limit = shared.max_message_bytes;
    let receiver = Receiver(shared);
    let router = tonic::transport::Server::builder()
        .add_service(
            LogsServiceServer::new(receiver.clone())
                .max_decoding_message_size(limit)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .add_service(
            MetricsServiceServer::new(receiver)
                .max_decoding_message_size(limit)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        );
    let stopped = async move { shutdown.wait().await };
    let served = match tls {
        // Exporters authenticate with tokens, not certificates: none is asked for.
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls.incoming_open(listener), stopped)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(sluice_common::grpc_incoming(listener), stopped)
                .await
        }
    };
    served.map_err(|error| SluiceError::internal(format!("otlp grpc source failed: {error}")))
}

async fn serve_http(
    listen: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsMaterial>,
    mut shutdown: Shutdown,
) -> Result<(), SluiceError> {
    let listener = sluice_common::listen(listen, "otlp source (http)").await?;
    let router = Router::new()
        .route("/v1/logs", post(http_logs))
        .route("/v1/metrics", post(http_metrics))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            http_authenticate,
        ))
        .with_state(shared);
    sluice_common::serve_http(listener, tls.as_ref(), router, async move {
        shutdown.wait().await
    })
    .await
    .map_err(|error| SluiceError::internal(format!("otlp http source failed: {error}")))
}

/// Forwards what a mapping kept and waits until it is durable; counts what it refused.
/// Returns how many records were refused and the first reason.
async fn deliver(
    shared: &Shared,
    tenancy: Tenancy,
    mut mapped: Mapped,
) -> Result<(i64, String), Status> {
    let mut kept = Vec::with_capacity(mapped.envelopes.len());
    for envelope in mapped.envelopes.drain(..) {
        match validate_envelope(&envelope, 0, shared.max_envelope_bytes) {
            Ok(()) => kept.push(envelope),
            Err(error) => mapped.refused.push((
                "too_large",
                error.to_string().replace("envelope 0", "a record"),
            )),
        }
    }
    for (reason, _) in &mapped.refused {
        shared.metrics.source_refused(SOURCE, reason);
    }
    let refused = i64::try_from(mapped.refused.len()).unwrap_or(i64::MAX);
    let message = mapped
        .refused
        .first()
        .map(|(_, message)| message.clone())
        .unwrap_or_default();
    if kept.is_empty() {
        return Ok((refused, message));
    }
    let count = kept.len() as u64;
    let (ticket, done) = Ticket::with_tenancy(SOURCE, tenancy);
    shared.forwarder.submit(kept, &ticket).await?;
    drop(ticket);
    done.await.unwrap_or_else(|_| {
        Err(Status::unavailable(
            "the agent stopped before the records were acknowledged",
        ))
    })?;
    shared.metrics.source_accepted(SOURCE, count);
    Ok((refused, message))
}

/// With `require_token`, an OTLP/HTTP export needs a token with the ingest right: 401 or 403
/// otherwise, counted, before the body is read.
async fn http_authenticate(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match crate::sources::auth::admit_http(shared.authenticator.as_deref(), request) {
        Ok(request) => next.run(request).await,
        Err(refused) => {
            shared.metrics.source_refused(SOURCE, refused.reason());
            let status = match refused {
                Refused::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                Refused::Forbidden(_) => StatusCode::FORBIDDEN,
            };
            plain(status, refused.message())
        }
    }
}

/// The same for an OTLP/gRPC export: `UNAUTHENTICATED` or `PERMISSION_DENIED`.
fn grpc_authenticate<T>(shared: &Shared, request: &Request<T>) -> Result<Tenancy, Status> {
    if shared.authenticator.is_none() {
        return Ok(Tenancy::default_tenant());
    }
    let peer = request
        .remote_addr()
        .map_or_else(|| "-".to_owned(), |address| address.to_string());
    let authorization = request
        .metadata()
        .get("authorization")
        .map(|value| value.to_str().unwrap_or("\u{0}"));
    crate::sources::auth::check(shared.authenticator.as_deref(), authorization, &peer).map_err(
        |refused| {
            shared.metrics.source_refused(SOURCE, refused.reason());
            match refused {
                Refused::Unauthenticated(_) => Status::unauthenticated(refused.message()),
                Refused::Forbidden(_) => Status::permission_denied(refused.message()),
            }
        },
    )
}

#[derive(Clone)]
struct Receiver(Arc<Shared>);

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, Status> {
        let tenancy = grpc_authenticate(&self.0, &request)?;
        let mapped = mapping::logs(
            request.get_ref(),
            &self.0.mapping,
            sluice_common::time::now_nanos(),
        );
        let (rejected, message) = deliver(&self.0, tenancy, mapped).await?;
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
        let tenancy = grpc_authenticate(&self.0, &request)?;
        let mapped = mapping::metrics(
            request.get_ref(),
            &self.0.mapping,
            sluice_common::time::now_nanos(),
        );
        let (rejected, message) = deliver(&self.0, tenancy, mapped).await?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: rejected,
                error_message: message,
            }),
        }))
    }
}

fn plain(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

/// Reads an OTLP/HTTP body: protobuf only, gzip allowed, capped before and after inflating.
async fn read_body(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/x-protobuf") {
        shared
            .metrics
            .source_refused(SOURCE, "unsupported_media_type");
        return Err(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {content_type:?}: Sluice takes OTLP/HTTP as application/x-protobuf"
            ),
        ));
    }
    let limit = shared.max_message_bytes;
    let raw = axum::body::to_bytes(body, limit).await.map_err(|error| {
        shared.metrics.source_refused(SOURCE, "too_large");
        plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body could not be read within {limit} bytes: {error}"),
        )
    })?;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(raw.to_vec());
    }
    match inflate_capped(&raw, limit) {
        Ok(inflated) => Ok(inflated),
        Err(Inflate::Bad(error)) => {
            shared.metrics.source_refused(SOURCE, "bad_gzip");
            Err(plain(
                StatusCode::BAD_REQUEST,
                format!("failed to decompress the body: {error}"),
            ))
        }
        Err(Inflate::TooLarge) => {
            shared.metrics.source_refused(SOURCE, "too_large");
            Err(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body decompresses to more than {limit} bytes"),
            ))
        }
    }
}

/// Why a gzip body was not inflated.
#[derive(Debug)]
pub enum Inflate {
    /// Not gzip, or damaged.
    Bad(std::io::Error),
    /// It inflates to more than the limit (reading stopped there).
    TooLarge,
}

/// Inflates a gzip body, reading at most `limit + 1` bytes of output: never more memory
/// than the limit, whatever the body claims.
pub fn inflate_capped(raw: &[u8], limit: usize) -> Result<Vec<u8>, Inflate> {
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(raw)
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(Inflate::Bad)?;
    if inflated.len() > limit {
        return Err(Inflate::TooLarge);
    }
    Ok(inflated)
}

fn protobuf(message: &impl prost::Message) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        message.encode_to_vec(),
    )
        .into_response()
}

/// The OTLP/HTTP status for a failed export: 429 when the agent's pending budget is full and
/// 503 when the path is away, both of which OTLP exporters retry (with backoff); 400 only for
/// what retrying cannot fix. (A full budget used to answer 400, which exporters drop.)
fn failure(status: Status) -> Response {
    let code = match status.code() {
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    plain(code, status.message().to_owned())
}

async fn http_logs(
    State(shared): State<Arc<Shared>>,
    tenancy: Option<Extension<Tenancy>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(&shared, &headers, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let Ok(request) = ExportLogsServiceRequest::decode(bytes.as_slice()) else {
        shared.metrics.source_refused(SOURCE, "malformed_protobuf");
        return plain(
            StatusCode::BAD_REQUEST,
            "the body is not an ExportLogsServiceRequest".to_owned(),
        );
    };
    let mapped = mapping::logs(&request, &shared.mapping, sluice_common::time::now_nanos());
    match deliver(&shared, crate::sources::auth::tenancy_of(tenancy), mapped).await {
        Ok((rejected, message)) => protobuf(&ExportLogsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: message,
            }),
        }),
        Err(status) => failure(status),
    }
}

async fn http_metrics(
    State(shared): State<Arc<Shared>>,
    tenancy: Option<Extension<Tenancy>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(&shared, &headers, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let Ok(request) = ExportMetricsServiceRequest::decode(bytes.as_slice()) else {
        shared.metrics.source_refused(SOURCE, "malformed_protobuf");
        return plain(
            StatusCode::BAD_REQUEST,
            "the body is not an ExportMetricsServiceRequest".to_owned(),
        );
    };
    let mapped = mapping::metrics(&request, &shared.mapping, sluice_common::time::now_nanos());
    match deliver(&shared, crate::sources::auth::tenancy_of(tenancy), mapped).await {
        Ok((rejected, message)) => protobuf(&ExportMetricsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: rejected,
                error_message: message,
            }),
        }),
        Err(status) => failure(status),
    }
}
