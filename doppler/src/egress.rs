//! Live egress: `loggregator.v2.Egress` and the hub that fans batches out to subscribers.
//!
//! Subscribers that share a `shard_id` form a group and split the stream between them (each
//! batch goes to one member, in turn), as in Loggregator; a subscriber with an empty
//! `shard_id` is a group of its own. Each subscriber has a bounded queue. Publishing never
//! waits: when a queue is full, that subscriber's share of the batch is dropped and counted in
//! `sluice_doppler_egress_envelopes_dropped_total`, and ingestion goes on at full speed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures::Stream;
use sluice_proto::v2::egress_server::Egress;
use sluice_proto::v2::{
    EgressBatchRequest, EgressRequest, Envelope, EnvelopeBatch, Selector, envelope, selector,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::metrics::DopplerMetrics;

/// Fans published envelopes out to subscribers.
pub struct Hub {
    groups: RwLock<HashMap<String, ShardGroup>>,
    next_id: AtomicUsize,
    buffer_batches: usize,
    metrics: DopplerMetrics,
}

struct ShardGroup {
    members: Vec<Member>,
    turn: AtomicUsize,
}

struct Member {
    id: usize,
    selectors: Vec<Selector>,
    sender: mpsc::Sender<Vec<Envelope>>,
}

impl Hub {
    /// A hub whose subscribers each buffer up to `buffer_batches` batches.
    pub fn new(buffer_batches: usize, metrics: DopplerMetrics) -> Hub {
        Hub {
            groups: RwLock::new(HashMap::new()),
            next_id: AtomicUsize::new(0),
            buffer_batches,
            metrics,
        }
    }

    /// Adds a subscriber; its envelopes arrive on the returned stream until it is dropped.
    pub fn subscribe(self: &Arc<Self>, shard_id: &str, selectors: Vec<Selector>) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(self.buffer_batches);
        let group_key = if shard_id.is_empty() {
            format!("\0{id}")
        } else {
            shard_id.to_owned()
        };
        {
            let mut groups = self
                .groups
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            groups
                .entry(group_key.clone())
                .or_insert_with(|| ShardGroup {
                    members: Vec::new(),
                    turn: AtomicUsize::new(0),
                })
                .members
                .push(Member {
                    id,
                    selectors,
                    sender,
                });
        }
        self.metrics.egress_subscribers.inc();
        Subscription {
            hub: Arc::clone(self),
            group_key,
            id,
            receiver,
        }
    }

    fn unsubscribe(&self, group_key: &str, id: usize) {
        let mut groups = self
            .groups
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(group) = groups.get_mut(group_key) {
            group.members.retain(|member| member.id != id);
            if group.members.is_empty() {
                groups.remove(group_key);
            }
        }
        self.metrics.egress_subscribers.dec();
    }

    /// Offers `envelopes` to every shard group; never waits.
    pub fn publish(&self, envelopes: &[Envelope]) {
        let groups = self
            .groups
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for group in groups.values() {
            let turn = group.turn.fetch_add(1, Ordering::Relaxed);
            let member = &group.members[turn % group.members.len()];
            let selected: Vec<Envelope> = envelopes
                .iter()
                .filter(|envelope| {
                    member
                        .selectors
                        .iter()
                        .any(|selector| matches(selector, envelope))
                })
                .cloned()
                .collect();
            if selected.is_empty() {
                continue;
            }
            let count = selected.len() as u64;
            match member.sender.try_send(selected) {
                Ok(()) => {
                    self.metrics.egress_envelopes_sent.inc_by(count);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.metrics.egress_envelopes_dropped.inc_by(count);
                }
                // The subscriber is leaving; its Drop unregisters it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

/// Whether `selector` selects `envelope`. An empty `source_id` matches every source, and a
/// selector that names no message type matches every type.
pub fn matches(selector: &Selector, envelope: &Envelope) -> bool {
    if !selector.source_id.is_empty() && selector.source_id != envelope.source_id {
        return false;
    }
    match (&selector.message, &envelope.message) {
        (None, _) => true,
        (Some(selector::Message::Log(_)), Some(envelope::Message::Log(_))) => true,
        (Some(selector::Message::Counter(wanted)), Some(envelope::Message::Counter(counter))) => {
            wanted.name.is_empty() || wanted.name == counter.name
        }
        (Some(selector::Message::Gauge(wanted)), Some(envelope::Message::Gauge(gauge))) => {
            wanted.any.is_empty()
                || wanted
                    .any
                    .iter()
                    .any(|name| gauge.metrics.contains_key(name))
        }
        (Some(selector::Message::Timer(_)), Some(envelope::Message::Timer(_))) => true,
        (Some(selector::Message::Event(_)), Some(envelope::Message::Event(_))) => true,
        _ => false,
    }
}

/// One subscriber's stream of batches; unsubscribes when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    group_key: String,
    id: usize,
    receiver: mpsc::Receiver<Vec<Envelope>>,
}

impl Stream for Subscription {
    type Item = Vec<Envelope>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(context)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.group_key, self.id);
    }
}

/// The `loggregator.v2.Egress` service over a [`Hub`].
pub struct EgressService {
    hub: Arc<Hub>,
}

impl EgressService {
    /// Serves subscriptions from `hub`.
    pub fn new(hub: Arc<Hub>) -> EgressService {
        EgressService { hub }
    }
}

fn check_selectors(selectors: &[Selector]) -> Result<(), Status> {
    if selectors.is_empty() {
        return Err(Status::invalid_argument(
            "selectors are required: name at least one (a selector with an empty source_id and no type selects everything)",
        ));
    }
    Ok(())
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Egress for EgressService {
    type ReceiverStream = BoxStream<Envelope>;
    type BatchedReceiverStream = BoxStream<EnvelopeBatch>;

    async fn receiver(
        &self,
        request: Request<EgressRequest>,
    ) -> Result<Response<Self::ReceiverStream>, Status> {
        let request = request.into_inner();
        check_selectors(&request.selectors)?;
        let subscription = self.hub.subscribe(&request.shard_id, request.selectors);
        let stream = futures::StreamExt::flat_map(subscription, |envelopes| {
            futures::stream::iter(envelopes.into_iter().map(Ok))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn batched_receiver(
        &self,
        request: Request<EgressBatchRequest>,
    ) -> Result<Response<Self::BatchedReceiverStream>, Status> {
        let request = request.into_inner();
        check_selectors(&request.selectors)?;
        let subscription = self.hub.subscribe(&request.shard_id, request.selectors);
        let stream = futures::StreamExt::map(subscription, |envelopes| {
            Ok(EnvelopeBatch { batch: envelopes })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use sluice_common::telemetry::Telemetry;
    use sluice_proto::v2::{Counter, Log, LogSelector};

    fn log(source_id: &str) -> Envelope {
        Envelope {
            source_id: source_id.into(),
            message: Some(envelope::Message::Log(Log::default())),
            ..Default::default()
        }
    }

    fn log_selector(source_id: &str) -> Selector {
        Selector {
            source_id: source_id.into(),
            message: Some(selector::Message::Log(LogSelector {})),
        }
    }

    #[test]
    fn selectors_match_by_source_and_type() {
        let counter = Envelope {
            source_id: "a".into(),
            message: Some(envelope::Message::Counter(Counter {
                name: "requests".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(matches(&log_selector("a"), &log("a")));
        assert!(!matches(&log_selector("a"), &log("b")));
        assert!(!matches(&log_selector("a"), &counter));
        assert!(matches(&Selector::default(), &counter));
        let named = Selector {
            source_id: String::new(),
            message: Some(selector::Message::Counter(
                sluice_proto::v2::CounterSelector {
                    name: "other".into(),
                },
            )),
        };
        assert!(!matches(&named, &counter));
    }

    #[tokio::test]
    async fn a_slow_subscriber_gets_counted_drops_and_never_blocks_publishing() {
        let telemetry = Telemetry::new();
        let metrics = DopplerMetrics::register(&telemetry);
        let hub = Arc::new(Hub::new(2, metrics.clone()));
        let mut slow = hub.subscribe("", vec![log_selector("")]);
        for _ in 0..5 {
            hub.publish(&[log("a"), log("b")]);
        }
        assert_eq!(metrics.egress_envelopes_sent.get(), 4);
        assert_eq!(metrics.egress_envelopes_dropped.get(), 6);
        assert_eq!(slow.next().await.map(|batch| batch.len()), Some(2));
        drop(slow);
        assert_eq!(metrics.egress_subscribers.get(), 0);
    }

    #[tokio::test]
    async fn members_of_a_shard_group_split_the_stream() {
        let metrics = DopplerMetrics::register(&Telemetry::new());
        let hub = Arc::new(Hub::new(16, metrics));
        let mut first = hub.subscribe("shard", vec![log_selector("")]);
        let mut second = hub.subscribe("shard", vec![log_selector("")]);
        let mut alone = hub.subscribe("", vec![log_selector("a")]);
        for _ in 0..4 {
            hub.publish(&[log("a")]);
        }
        drop(hub);
        let mut counts = (0, 0, 0);
        for _ in 0..2 {
            first.next().await.expect("first");
            counts.0 += 1;
            second.next().await.expect("second");
            counts.1 += 1;
        }
        for _ in 0..4 {
            alone.next().await.expect("alone");
            counts.2 += 1;
        }
        assert_eq!(counts, (2, 2, 4));
    }
}
