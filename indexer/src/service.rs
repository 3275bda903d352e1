//! `sluice.v1.IndexSearch`: this indexer's partitions, searched for a query API in another
//! process, over mutual TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use sluice_common::tls::TlsMaterial;
use sluice_proto::v1 as wire;
use sluice_proto::v1::index_search_server::{IndexSearch, IndexSearchServer};
use tonic::{Request, Response, Status};

use crate::search::{SearchHit, SearchRequest, SearchResponse, Searcher};

/// Largest `limit` a remote search may ask for.
pub const MAX_LIMIT: u32 = 100_000;

/// The service over one index directory.
pub struct SearchService {
    searcher: Arc<Searcher>,
}

impl SearchService {
    /// A service searching `searcher`'s directory.
    pub fn new(searcher: Arc<Searcher>) -> SearchService {
        SearchService { searcher }
    }
}

#[tonic::async_trait]
impl IndexSearch for SearchService {
    async fn search(
        &self,
        request: Request<wire::SearchRequest>,
    ) -> Result<Response<wire::SearchResponse>, Status> {
        let request = request.into_inner();
        if request.limit == 0 || request.limit > MAX_LIMIT {
            return Err(Status::invalid_argument(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        let request = SearchRequest {
            query: request.query,
            start_ns: request.start_ns,
            end_ns: request.end_ns,
            limit: request.limit as usize,
            histogram_interval_ns: request.histogram_interval_ns,
        };
        let searcher = Arc::clone(&self.searcher);
        let response = tokio::task::spawn_blocking(move || searcher.search(&request))
            .await
            .map_err(|error| Status::internal(format!("search task failed: {error}")))??;
        Ok(Response::new(to_wire(response)))
    }
}

/// The wire form of a search answer.
pub fn to_wire(response: SearchResponse) -> wire::SearchResponse {
    wire::SearchResponse {
        total: response.total,
        hits: response
            .hits
            .into_iter()
            .map(|hit| wire::SearchHit {
                timestamp: hit.timestamp,
                source_id: hit.source_id,
                instance_id: hit.instance_id,
                log_type: hit.log_type,
                message: hit.message,
                invalid_utf8: hit.invalid_utf8,
                tags: hit.tags.into_iter().collect(),
            })
            .collect(),
        partitions_searched: u32::try_from(response.partitions_searched).unwrap_or(u32::MAX),
        took_ms: response.took_ms,
        histogram: response
            .histogram
            .unwrap_or_default()
            .into_iter()
            .map(|bucket| wire::HistogramBucket {
                start_ns: bucket.start_ns,
                count: bucket.count,
            })
            .collect(),
    }
}

/// A hit from its wire form.
pub fn hit_from_wire(hit: wire::SearchHit) -> SearchHit {
    SearchHit {
        timestamp: hit.timestamp,
        time: sluice_common::time::format_rfc3339_nanos(hit.timestamp),
        source_id: hit.source_id,
        instance_id: hit.instance_id,
        log_type: hit.log_type,
        message: hit.message,
        invalid_utf8: hit.invalid_utf8,
        tags: hit.tags.into_iter().collect(),
    }
}

/// Serves the search service on `listen` until `shutdown` fires.
pub async fn serve(
    listen: SocketAddr,
    searcher: Arc<Searcher>,
    tls: TlsMaterial,
    mut shutdown: Shutdown,
) -> Result<(), SluiceError> {
    let listener = sluice_common::listen(listen, "index search service").await?;
    tonic::transport::Server::builder()
        .tls_config(tls.server_config())
        .map_err(|error| SluiceError::invalid(format!("invalid tls configuration: {error}")))?
        .add_service(
            IndexSearchServer::new(SearchService::new(searcher))
                .max_encoding_message_size(256 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(sluice_common::grpc_incoming(listener), async move {
            shutdown.wait().await
        })
        .await
        .map_err(|error| SluiceError::internal(format!("index search service failed: {error}")))
}
