//! `GET /v2/read`: the Loggregator RLP Gateway's stream, for the clients Cloud Foundry users
//! already have.
//!
//! Selectors are the gateway's: `source_id` (repeatable; every source when absent) and the
//! envelope types wanted, given as bare parameters (`log`, `counter`, `gauge`, `timer`,
//! `event`; at least one), with `counter.name` and `gauge.name` narrowing counters and gauges.
//! Each `data:` event is a JSON `EnvelopeBatch` in the protobuf JSON mapping; an idle stream
//! sends `event: heartbeat` with the time in Unix seconds, and one the server ends sends
//! `event: closing` with the reason. Readers that give the same `shard_id` (and selectors)
//! split one stream between them: each envelope goes to one of them.
//!
//! Beyond the gateway, every batch carries the tail's cursor as its `id:`, so a reader that
//! reconnects with `Last-Event-ID` misses nothing; a gap the tail could not heal arrives as
//! `event: dropped` (which gateway clients ignore).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use sluice_common::SluiceError;
use sluice_proto::v2::{Envelope, envelope};

use crate::tail::{Start, TailEvent, TailFilter, TailStream, Tails};

/// Envelopes in one `data:` batch at most.
pub const MAX_BATCH: usize = 100;

/// The gateway's envelope types, as they appear in the query.
const TYPES: [&str; 5] = ["log", "counter", "gauge", "timer", "event"];

/// A `/v2/read` request's selection.
pub struct ReadSelection {
    /// What the tail selects (sources and types).
    pub filter: TailFilter,
    /// `counter.name`: counters with one of these names only (all when empty).
    counter_names: Vec<String>,
    /// `gauge.name`: gauges holding every metric of one of these comma lists (all when
    /// empty).
    gauge_names: Vec<Vec<String>>,
    /// The shard's key: `shard_id` and the selectors, so that only readers of one selection
    /// share a stream. Empty for a reader of its own.
    pub shard: String,
    /// `Last-Event-ID`, when reconnecting.
    pub cursor: Option<String>,
}

impl ReadSelection {
    /// The selection of a request's query pairs; refused as the gateway refuses.
    pub fn from_pairs(
        pairs: Vec<(String, String)>,
        searcher: &sluice_indexer::Searcher,
    ) -> Result<ReadSelection, SluiceError> {
        if pairs.is_empty() {
            return Err(SluiceError::invalid(
                "empty query: give source_id and at least one of log, counter, gauge, timer, event",
            ));
        }
        let mut tail_pairs = Vec::new();
        let (mut counter_names, mut gauge_names) = (Vec::new(), Vec::new());
        let mut shard_id = String::new();
        let mut types: Vec<&str> = Vec::new();
        for (key, value) in &pairs {
            match key.as_str() {
                "source_id" => tail_pairs.push(("source_id".to_owned(), value.clone())),
                "shard_id" => shard_id.clone_from(value),
                "deterministic_name" => {}
                "counter.name" | "gauge.name" if value.is_empty() => {
                    return Err(SluiceError::invalid(format!("{key}: give a name")));
                }
                "counter.name" => {
                    counter_names.push(value.clone());
                    types.push("counter");
                }
                "gauge.name" => {
                    gauge_names.push(value.split(',').map(str::to_owned).collect());
                    types.push("gauge");
                }
                kind if let Some(known) = TYPES.iter().find(|known| **known == kind) => {
                    types.push(known);
                }
                _ => {
                    return Err(SluiceError::invalid(format!(
                        "unknown parameter {key:?}: give source_id, log, counter, counter.name, gauge, gauge.name, timer, event, shard_id"
                    )));
                }
            }
        }
        if types.is_empty() {
            return Err(SluiceError::invalid(
                "give at least one envelope type: log, counter, gauge, timer or event",
            ));
        }
        types.sort_unstable();
        types.dedup();
        tail_pairs.extend(
            types
                .iter()
                .map(|kind| ("type".to_owned(), (*kind).to_owned())),
        );
        let shard = if shard_id.is_empty() {
            String::new()
        } else {
            let mut selectors: Vec<String> = pairs
                .iter()
                .filter(|(key, _)| key != "shard_id" && key != "deterministic_name")
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            selectors.sort();
            format!("{shard_id}\n{}", selectors.join("&"))
        };
        Ok(ReadSelection {
            filter: TailFilter::from_pairs(tail_pairs, searcher)?,
            counter_names,
            gauge_names,
            shard,
            cursor: None,
        })
    }

    /// The same selection within `scope`: the filter never selects outside it, and only
    /// readers of one scope share a shard (a shard's stream is one filter's).
    pub fn within(mut self, scope: Option<sluice_common::tenancy::Scope>) -> ReadSelection {
        if !self.shard.is_empty()
            && let Some(scope) = &scope
        {
            self.shard = format!(
                "{}\n{}\n{}",
                scope.tenant,
                scope.sources.join(","),
                self.shard
            );
        }
        self.filter = self.filter.within(scope);
        self
    }

    /// The narrowing by counter and gauge names, applied to what the filter took.
    pub fn narrowing(&self) -> Narrowing {
        Narrowing {
            counter_names: self.counter_names.clone(),
            gauge_names: self.gauge_names.clone(),
        }
    }
}

/// `counter.name` and `gauge.name`.
#[derive(Clone)]
pub struct Narrowing {
    counter_names: Vec<String>,
    gauge_names: Vec<Vec<String>>,
}

impl Narrowing {
    /// Whether `envelope` passes.
    pub fn passes(&self, envelope: &Envelope) -> bool {
        match &envelope.message {
            Some(envelope::Message::Counter(counter)) if !self.counter_names.is_empty() => {
                self.counter_names.contains(&counter.name)
            }
            Some(envelope::Message::Gauge(gauge)) if !self.gauge_names.is_empty() => self
                .gauge_names
                .iter()
                .any(|names| names.iter().all(|name| gauge.metrics.contains_key(name))),
            _ => true,
        }
    }
}

/// One tail read by one or more readers, and an event held back for the next of them.
pub struct ShardStream {
    stream: TailStream,
    held: Option<ReadEvent>,
}

/// A stream several readers share: whichever is ready takes the next events.
pub type SharedStream = Arc<tokio::sync::Mutex<ShardStream>>;

/// Streams shared by shard, alive while a reader holds them.
#[derive(Clone, Default)]
pub struct Shards {
    streams: Arc<Mutex<HashMap<String, Weak<tokio::sync::Mutex<ShardStream>>>>>,
}

fn shared(stream: TailStream) -> SharedStream {
    Arc::new(tokio::sync::Mutex::new(ShardStream { stream, held: None }))
}

impl Shards {
    /// The stream of `selection`: the shard's, opened by its first reader, or one of its own.
    pub async fn stream(
        &self,
        tails: &Tails,
        client: std::net::IpAddr,
        selection: ReadSelection,
    ) -> Result<SharedStream, SluiceError> {
        let start = match &selection.cursor {
            Some(cursor) => Start::Resume(crate::tail::Cursor::parse(cursor)?),
            None => Start::Live,
        };
        if selection.shard.is_empty() || selection.cursor.is_some() {
            return Ok(shared(tails.open(client, selection.filter, start).await?));
        }
        if let Some(existing) = self.lock().get(&selection.shard).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let stream = shared(tails.open(client, selection.filter, start).await?);
        let mut streams = self.lock();
        streams.retain(|_, stream| stream.strong_count() > 0);
        // Two first readers at once: the one registered first wins, the other's tail ends.
        if let Some(existing) = streams.get(&selection.shard).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        streams.insert(selection.shard, Arc::downgrade(&stream));
        Ok(stream)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Weak<tokio::sync::Mutex<ShardStream>>>> {
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What one `/v2/read` reader sends next.
pub enum ReadEvent {
    /// A batch, and the cursor after it.
    Batch(Vec<Envelope>, String),
    /// Nothing for a while.
    Heartbeat,
    /// A gap that could not be healed: its JSON, and the cursor after it.
    Dropped(serde_json::Value, String),
    /// The end, with the reason.
    Closing(String),
}

/// What a tail event is to a reader: an envelope to batch (with the cursor after it), an
/// event of its own, or nothing.
enum Taken {
    Envelope(Option<Envelope>, String),
    Event(ReadEvent),
    Nothing,
}

fn take(event: TailEvent, narrowing: &Narrowing) -> Taken {
    match event {
        TailEvent::Envelope { delivered, cursor } => Taken::Envelope(
            narrowing
                .passes(&delivered.envelope)
                .then_some(delivered.envelope),
            cursor.to_string(),
        ),
        TailEvent::Heartbeat { .. } => Taken::Event(ReadEvent::Heartbeat),
        TailEvent::Dropped { dropped, cursor } => Taken::Event(ReadEvent::Dropped(
            serde_json::json!({
                "count": dropped.envelopes,
                "unknown_records": dropped.unknown_records,
                "healed": dropped.healed,
            }),
            cursor.to_string(),
        )),
        TailEvent::Closed { reason, .. } => Taken::Event(ReadEvent::Closing(reason)),
        TailEvent::Opened { .. } | TailEvent::HistoryCut { .. } => Taken::Nothing,
    }
}

/// The next event for a reader of `stream`: the envelopes that are ready (up to
/// [`MAX_BATCH`]) as one batch. `None` when the stream ended.
pub async fn next(stream: &SharedStream, narrowing: &Narrowing) -> Option<ReadEvent> {
    let mut shard = stream.lock().await;
    if let Some(held) = shard.held.take() {
        return Some(held);
    }
    let mut batch = Vec::new();
    let mut cursor = String::new();
    loop {
        // Wait for the first event; then take what is ready without waiting.
        let event = if batch.is_empty() {
            shard.stream.events.recv().await?
        } else {
            match shard.stream.events.try_recv() {
                Ok(event) => event,
                Err(_) => return Some(ReadEvent::Batch(batch, cursor)),
            }
        };
        match take(event, narrowing) {
            Taken::Envelope(envelope, after) => {
                cursor = after;
                batch.extend(envelope);
                if batch.len() >= MAX_BATCH {
                    return Some(ReadEvent::Batch(batch, cursor));
                }
            }
            Taken::Event(event) if batch.is_empty() => return Some(event),
            Taken::Event(event) => {
                // After the batch, in order.
                shard.held = Some(event);
                return Some(ReadEvent::Batch(batch, cursor));
            }
            Taken::Nothing => {}
        }
    }
}

/// The protobuf JSON of a batch (see `json.rs`).
pub fn batch_data(batch: &[Envelope]) -> String {
    super::json::batch_json(batch).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v2::{Counter, Gauge, GaugeValue};

    fn pairs(query: &str) -> Vec<(String, String)> {
        crate::routes::url_pairs(query).collect()
    }

    #[test]
    fn the_gateways_selectors_are_read_and_its_refusals_kept() {
        let searcher = sluice_indexer::Searcher::new(std::path::Path::new("/nonexistent-sluice"));
        for (query, reason) in [
            ("", "empty query"),
            ("source_id=a", "at least one envelope type"),
            ("source_id=a&log&bogus", "unknown parameter"),
            ("source_id=a&counter.name=", "give a name"),
        ] {
            let error = ReadSelection::from_pairs(pairs(query), &searcher)
                .err()
                .unwrap_or_else(|| panic!("{query:?} was taken"));
            assert!(
                error.message().contains(reason),
                "{query:?}: {}",
                error.message()
            );
        }
        let one = ReadSelection::from_pairs(pairs("source_id=a&log&shard_id=s"), &searcher)
            .expect("taken");
        let same = ReadSelection::from_pairs(pairs("log&shard_id=s&source_id=a"), &searcher)
            .expect("taken");
        let other = ReadSelection::from_pairs(pairs("source_id=a&event&shard_id=s"), &searcher)
            .expect("taken");
        assert_eq!(one.shard, same.shard, "one shard whatever the order");
        assert_ne!(one.shard, other.shard, "other selectors, another stream");
        let alone = ReadSelection::from_pairs(pairs("source_id=a&log"), &searcher).expect("taken");
        assert!(alone.shard.is_empty());

        let narrowed = ReadSelection::from_pairs(
            pairs("source_id=a&counter.name=requests&gauge.name=cpu,memory"),
            &searcher,
        )
        .expect("taken")
        .narrowing();
        let counter = |name: &str| Envelope {
            message: Some(envelope::Message::Counter(Counter {
                name: name.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let gauge = |names: &[&str]| Envelope {
            message: Some(envelope::Message::Gauge(Gauge {
                metrics: names
                    .iter()
                    .map(|name| ((*name).to_owned(), GaugeValue::default()))
                    .collect(),
            })),
            ..Default::default()
        };
        assert!(narrowed.passes(&counter("requests")));
        assert!(!narrowed.passes(&counter("errors")));
        assert!(narrowed.passes(&gauge(&["cpu", "memory", "disk"])));
        assert!(!narrowed.passes(&gauge(&["cpu"])));
    }
}
