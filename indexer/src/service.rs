//! `sluice.v1.IndexSearch`: this indexer's partitions, searched for a query API in another
//! process, over mutual TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use sluice_common::tenancy::Scope;
use sluice_common::tls::TlsMaterial;
use sluice_proto::v1 as wire;
use sluice_proto::v1::index_search_server::{IndexSearch, IndexSearchServer};
use tonic::{Request, Response, Status};

use crate::patterns::{PatternCount, PatternsRequest, PatternsResponse, Template};
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
            scope: scope_from_wire(request.scope),
        };
        let searcher = Arc::clone(&self.searcher);
        let response = tokio::task::spawn_blocking(move || searcher.search(&request))
            .await
            .map_err(|error| Status::internal(format!("search task failed: {error}")))??;
        Ok(Response::new(to_wire(response)))
    }

    async fn patterns(
        &self,
        request: Request<wire::PatternsRequest>,
    ) -> Result<Response<wire::PatternsResponse>, Status> {
        let request = request.into_inner();
        let request = PatternsRequest {
            query: request.query,
            start_ns: request.start_ns,
            end_ns: request.end_ns,
            step_ns: request.step_ns,
            scope: scope_from_wire(request.scope),
        };
        let searcher = Arc::clone(&self.searcher);
        let response = tokio::task::spawn_blocking(move || searcher.patterns(&request))
            .await
            .map_err(|error| Status::internal(format!("pattern task failed: {error}")))??;
        Ok(Response::new(patterns_to_wire(response)))
    }
}

/// A reader's scope off the wire.
pub fn scope_from_wire(scope: Option<wire::ReaderScope>) -> Option<Scope> {
    scope.map(|scope| Scope {
        tenant: scope.tenant,
        sources: scope.sources,
    })
}

/// A reader's scope on the wire.
pub fn scope_to_wire(scope: Option<&Scope>) -> Option<wire::ReaderScope> {
    scope.map(|scope| wire::ReaderScope {
        tenant: scope.tenant.clone(),
        sources: scope.sources.clone(),
    })
}

/// The wire form of a search answer.
pub fn to_wire(response: SearchResponse) -> wire::SearchResponse {
    wire::SearchResponse {
        total: response.total,
        hits: response.hits.into_iter().map(hit_to_wire).collect(),
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
        pattern_id: hit.pattern_id,
    }
}

/// The wire form of a hit.
pub fn hit_to_wire(hit: SearchHit) -> wire::SearchHit {
    wire::SearchHit {
        timestamp: hit.timestamp,
        source_id: hit.source_id,
        instance_id: hit.instance_id,
        log_type: hit.log_type,
        message: hit.message,
        invalid_utf8: hit.invalid_utf8,
        tags: hit.tags.into_iter().collect(),
        pattern_id: hit.pattern_id,
    }
}

/// The wire form of a pattern count.
pub fn patterns_to_wire(response: PatternsResponse) -> wire::PatternsResponse {
    wire::PatternsResponse {
        total: response.total,
        unpatterned: response.unpatterned,
        patterns: response
            .patterns
            .into_iter()
            .map(|pattern| wire::PatternCount {
                id: pattern.id,
                count: pattern.count,
                first_ns: pattern.first_ns,
                steps: pattern
                    .steps
                    .into_iter()
                    .map(|(start_ns, count)| wire::HistogramBucket { start_ns, count })
                    .collect(),
                example: pattern.example.map(hit_to_wire),
            })
            .collect(),
        templates: response
            .templates
            .into_iter()
            .map(|template| wire::PatternTemplate {
                id: template.id,
                source_id: template.source_id,
                template: template.template,
                merged: template.merged,
                first_seen: template.first_seen,
            })
            .collect(),
        partitions_searched: u32::try_from(response.partitions_searched).unwrap_or(u32::MAX),
        took_ms: response.took_ms,
    }
}

/// A pattern count from its wire form.
pub fn patterns_from_wire(response: wire::PatternsResponse) -> PatternsResponse {
    PatternsResponse {
        total: response.total,
        unpatterned: response.unpatterned,
        patterns: response
            .patterns
            .into_iter()
            .map(|pattern| PatternCount {
                id: pattern.id,
                count: pattern.count,
                first_ns: pattern.first_ns,
                steps: pattern
                    .steps
                    .into_iter()
                    .map(|bucket| (bucket.start_ns, bucket.count))
                    .collect(),
                example: pattern.example.map(hit_from_wire),
            })
            .collect(),
        templates: response.templates.iter().map(Template::from).collect(),
        partitions_searched: response.partitions_searched as usize,
        took_ms: response.took_ms,
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
        .add_service(
            IndexSearchServer::new(SearchService::new(searcher))
                .max_encoding_message_size(256 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(tls.incoming(listener), async move { shutdown.wait().await })
        .await
        .map_err(|error| SluiceError::internal(format!("index search service failed: {error}")))
}
