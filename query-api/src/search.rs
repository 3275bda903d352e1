//! Search: in this process's index directory, or fanned out to every indexer's search service
//! in parallel and merged newest first under one limit.
//!
//! Totals are exact when every indexer answered. When one did not (down, unreachable, or past
//! `query_api.indexer_timeout`), the answer still comes, with `partial: true` and the indexer
//! named under `indexers.unavailable`, never as a silently smaller count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_common::tls::TlsMaterial;
use sluice_common::{ErrorKind, SluiceError};
use sluice_indexer::histogram::{self, Bucket, Counts, MAX_BUCKETS};
use sluice_indexer::service::hit_from_wire;
use sluice_indexer::{SearchHit, SearchRequest, Searcher};
use sluice_proto::v1 as wire;
use sluice_proto::v1::index_search_client::IndexSearchClient;
use tonic::transport::Channel;

/// Where searches run.
#[derive(Clone)]
pub enum SearchBackend {
    /// The index directory of this process's indexer.
    Local(Arc<Searcher>),
    /// Remote indexers' search services.
    Remote {
        /// `(address, client)` per indexer.
        indexers: Vec<(String, IndexSearchClient<Channel>)>,
        /// Per-indexer deadline.
        timeout: Duration,
    },
}

/// An indexer that did not answer.
#[derive(Debug, Clone, Serialize)]
pub struct Unavailable {
    /// Its address.
    pub indexer: String,
    /// Why.
    pub error: String,
}

/// How the indexers answered a fanned-out search.
#[derive(Debug, Clone, Serialize)]
pub struct IndexersReport {
    /// Indexers asked.
    pub queried: usize,
    /// Indexers that answered.
    pub responded: usize,
    /// Indexers that did not.
    pub unavailable: Vec<Unavailable>,
}

/// The API's answer to a search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchAnswer {
    /// Exact number of matching lines (over the indexers that answered).
    pub total: u64,
    /// Up to `limit` hits, newest first.
    pub hits: Vec<SearchHit>,
    /// Hour partitions searched, summed over indexers.
    pub partitions_searched: usize,
    /// Milliseconds spent.
    pub took_ms: u64,
    /// Matches per bucket, oldest first, when asked for (`histogram=<interval>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histogram: Option<Vec<Bucket>>,
    /// Whether an indexer did not answer, so `total` and `hits` may miss lines.
    pub partial: bool,
    /// Per-indexer outcome, when the search was fanned out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indexers: Option<IndexersReport>,
    /// Which hours the index answered and which the archive did (see `crate::cold`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<crate::cold::Sources>,
}

impl SearchBackend {
    /// The backend for `indexers` (remote) or `local` when the list is empty.
    pub fn new(
        indexers: &[String],
        timeout: Duration,
        tls: &TlsMaterial,
        local: Arc<Searcher>,
    ) -> Result<SearchBackend, SluiceError> {
        if indexers.is_empty() {
            return Ok(SearchBackend::Local(local));
        }
        let clients = indexers
            .iter()
            .map(|address| {
                let channel = tls.channel(address, "query_api.indexers", Duration::from_secs(2))?;
                Ok((
                    address.clone(),
                    IndexSearchClient::new(channel).max_decoding_message_size(256 * 1024 * 1024),
                ))
            })
            .collect::<Result<Vec<_>, SluiceError>>()?;
        Ok(SearchBackend::Remote {
            indexers: clients,
            timeout,
        })
    }

    /// Runs `request`.
    pub async fn search(&self, request: SearchRequest) -> Result<SearchAnswer, SluiceError> {
        match self {
            SearchBackend::Local(searcher) => {
                let searcher = Arc::clone(searcher);
                let response = tokio::task::spawn_blocking(move || searcher.search(&request))
                    .await
                    .map_err(|error| {
                        SluiceError::internal(format!("search task failed: {error}"))
                    })??;
                Ok(SearchAnswer {
                    total: response.total,
                    hits: response.hits,
                    partitions_searched: response.partitions_searched,
                    took_ms: response.took_ms,
                    histogram: response.histogram,
                    partial: false,
                    indexers: None,
                    sources: None,
                })
            }
            SearchBackend::Remote { indexers, timeout } => {
                fan_out(indexers, *timeout, request).await
            }
        }
    }
}

async fn fan_out(
    indexers: &[(String, IndexSearchClient<Channel>)],
    timeout: Duration,
    request: SearchRequest,
) -> Result<SearchAnswer, SluiceError> {
    let started = Instant::now();
    let wire_request = wire::SearchRequest {
        query: request.query.clone(),
        start_ns: request.start_ns,
        end_ns: request.end_ns,
        limit: u32::try_from(request.limit).unwrap_or(u32::MAX),
        histogram_interval_ns: request.histogram_interval_ns,
        scope: sluice_indexer::service::scope_to_wire(request.scope.as_ref()),
    };
    let (answers, unavailable) = ask_indexers(indexers, timeout, "search", |mut client| {
        let wire_request = wire_request.clone();
        async move { client.search(wire_request).await }
    })
    .await?;
    let mut answer = SearchAnswer {
        total: 0,
        hits: Vec::new(),
        partitions_searched: 0,
        took_ms: 0,
        histogram: None,
        partial: false,
        indexers: None,
        sources: None,
    };
    let mut counts = request.histogram_interval_ns.map(|_| Counts::new());
    for response in answers {
        answer.total += response.total;
        answer.partitions_searched += response.partitions_searched as usize;
        answer
            .hits
            .extend(response.hits.into_iter().map(hit_from_wire));
        if let Some(counts) = &mut counts {
            histogram::merge_into(
                counts,
                response
                    .histogram
                    .into_iter()
                    .map(|bucket| (bucket.start_ns, bucket.count))
                    .collect(),
            );
        }
    }
    // Newest first across indexers; ties keep a stable order.
    answer
        .hits
        .sort_by_key(|hit| std::cmp::Reverse(hit.timestamp));
    answer.hits.truncate(request.limit);
    if let Some(counts) = &counts {
        if counts.len() > MAX_BUCKETS {
            return Err(SluiceError::invalid(format!(
                "the histogram would have more than {MAX_BUCKETS} buckets; use a wider interval \
                 or a narrower time range"
            )));
        }
        answer.histogram = Some(histogram::buckets(counts));
    }
    answer.partial = !unavailable.is_empty();
    answer.indexers = Some(IndexersReport {
        queried: indexers.len(),
        responded: indexers.len() - unavailable.len(),
        unavailable,
    });
    answer.took_ms = started.elapsed().as_millis() as u64;
    Ok(answer)
}

/// Asks every indexer at once (`ask` makes the call on a client), each within `timeout`:
/// the answers, and the indexers that did not give one. A request every indexer refuses as
/// invalid is the caller's mistake and fails as such; so does no indexer answering at all.
pub(crate) async fn ask_indexers<T, F, Fut>(
    indexers: &[(String, IndexSearchClient<Channel>)],
    timeout: Duration,
    what: &str,
    ask: F,
) -> Result<(Vec<T>, Vec<Unavailable>), SluiceError>
where
    F: Fn(IndexSearchClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let asks = indexers.iter().map(|(address, client)| {
        let call = ask(client.clone());
        async move { (address.clone(), tokio::time::timeout(timeout, call).await) }
    });
    let outcomes = futures::future::join_all(asks).await;
    let mut answers = Vec::new();
    let mut unavailable = Vec::new();
    for (indexer, outcome) in outcomes {
        match outcome {
            Ok(Ok(response)) => answers.push(response.into_inner()),
            Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                return Err(SluiceError::new(
                    ErrorKind::InvalidArgument,
                    status.message().to_owned(),
                ));
            }
            Ok(Err(status)) => unavailable.push(Unavailable {
                indexer,
                error: format!("{:?}: {}", status.code(), status.message()),
            }),
            Err(_elapsed) => unavailable.push(Unavailable {
                indexer,
                error: format!("did not answer within {} ms", timeout.as_millis()),
            }),
        }
    }
    if unavailable.len() == indexers.len() {
        let reasons: Vec<String> = unavailable
            .iter()
            .map(|failure| format!("{}: {}", failure.indexer, failure.error))
            .collect();
        return Err(SluiceError::unavailable(format!(
            "no indexer answered the {what} ({})",
            reasons.join("; ")
        )));
    }
    Ok((answers, unavailable))
}
