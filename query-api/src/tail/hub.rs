//! One reader of the live edge of the bus for every tail that keeps up.
//!
//! A tail at the live edge does not need a reader of its own: the hub reads the bus once,
//! decodes each record once and broadcasts it (a bounded ring, `capacity` records). A tail
//! that falls further behind than the ring is told so (it lagged) and goes back to a reader
//! of its own from its cursor, which loses nothing; once that reader has caught up with the
//! bus's end as it was after the tail subscribed again, it switches back. So a hundred tails
//! of a busy bus cost one read per record, plus each tail's selection.
//!
//! Most tails select a few sources, and most records carry none of them. So the hub reads
//! only each record's source ids first (a partial decode that skips every other field and
//! copies nothing) and decodes the whole batch once, lazily, for the first tail whose
//! sources it carries; a tail whose sources a record lacks skips it without decoding it.
//!
//! The hub runs while any tail listens and stops when the last one leaves.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use sluice_bus::{Bus, BusError, Partition, ReadEvent};
use sluice_common::shutdown::Shutdown;
use sluice_proto::v1::AgentBatch;
use tokio::sync::{Mutex, broadcast};
use tracing::warn;

/// What the hub broadcasts.
#[derive(Debug)]
pub enum HubItem {
    /// A record.
    Record(HubRecord),
    /// Records the bus forgot before the hub read them (see [`ReadEvent::Gap`]).
    Gap {
        /// The partition.
        partition: Partition,
        /// The first offset missed.
        from: u64,
        /// The first offset read again.
        to: u64,
    },
}

/// A record as the hub shares it: its distinct source ids at once, the batch on demand.
#[derive(Debug)]
pub struct HubRecord {
    /// The partition.
    pub partition: Partition,
    /// The offset.
    pub offset: u64,
    payload: Bytes,
    /// The distinct source ids of the batch's envelopes, sorted; `None` when the record is
    /// not an `AgentBatch` (then [`HubRecord::batch`] is `None` too).
    sources: Option<Vec<Bytes>>,
    batch: OnceLock<Option<AgentBatch>>,
}

impl HubRecord {
    fn new(partition: Partition, offset: u64, payload: Bytes) -> HubRecord {
        let sources = BatchSources::decode(payload.clone()).ok().map(|batch| {
            let mut sources: Vec<Bytes> = batch
                .envelopes
                .into_iter()
                .map(|envelope| envelope.source_id)
                .collect();
            sources.sort_unstable();
            sources.dedup();
            sources
        });
        HubRecord {
            partition,
            offset,
            payload,
            sources,
            batch: OnceLock::new(),
        }
    }

    /// Whether the batch may hold an envelope of one of `selected` (every source when
    /// empty). `false` means it certainly holds none.
    pub fn may_carry(&self, selected: &[String]) -> bool {
        match &self.sources {
            Some(sources) if !selected.is_empty() => selected.iter().any(|source| {
                sources
                    .binary_search_by(|candidate| candidate.as_ref().cmp(source.as_bytes()))
                    .is_ok()
            }),
            _ => true,
        }
    }

    /// The batch, decoded by the first tail that asks (`None` when it is not an
    /// `AgentBatch`).
    pub fn batch(&self) -> Option<&AgentBatch> {
        self.batch
            .get_or_init(|| {
                self.sources
                    .as_ref()
                    .and_then(|_| AgentBatch::decode(self.payload.clone()).ok())
            })
            .as_ref()
    }
}

/// An `AgentBatch` with nothing but its envelopes' source ids (field numbers of
/// `sluice.v1.AgentBatch` and `loggregator.v2.Envelope`; prost skips the other fields, and
/// decoding from `Bytes` shares the ids instead of copying them).
#[derive(Clone, PartialEq, prost::Message)]
struct BatchSources {
    #[prost(message, repeated, tag = "3")]
    envelopes: Vec<EnvelopeSource>,
}

/// An envelope's source id alone.
#[derive(Clone, PartialEq, prost::Message)]
struct EnvelopeSource {
    #[prost(bytes = "bytes", tag = "2")]
    source_id: Bytes,
}

/// The shared live reader.
#[derive(Clone)]
pub struct Hub {
    bus: Arc<dyn Bus>,
    capacity: usize,
    sender: Arc<Mutex<Option<broadcast::Sender<Arc<HubItem>>>>>,
    shutdown: Shutdown,
}

impl Hub {
    /// A hub over `bus` whose ring holds `capacity` records.
    pub fn new(bus: Arc<dyn Bus>, capacity: usize, shutdown: Shutdown) -> Hub {
        Hub {
            bus,
            capacity: capacity.max(16),
            sender: Arc::new(Mutex::new(None)),
            shutdown,
        }
    }

    /// Listens from now on (the hub starts if it is not running). What it broadcast before
    /// is not seen: a tail subscribes, then reads on its own until it has reached the bus's
    /// end as it was after subscribing, and only then switches.
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Arc<HubItem>>, BusError> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_ref() {
            return Ok(sender.subscribe());
        }
        let end = self.bus.end_positions().await?;
        let reader = self.bus.reader(&end).await?;
        let (sender, receiver) = broadcast::channel(self.capacity);
        *slot = Some(sender.clone());
        tokio::spawn(run(
            reader,
            sender,
            Arc::clone(&self.sender),
            self.shutdown.clone(),
        ));
        Ok(receiver)
    }
}

async fn run(
    mut reader: Box<dyn sluice_bus::Reader>,
    sender: broadcast::Sender<Arc<HubItem>>,
    slot: Arc<Mutex<Option<broadcast::Sender<Arc<HubItem>>>>>,
    mut shutdown: Shutdown,
) {
    loop {
        let polled = tokio::select! {
            () = shutdown.wait() => break,
            polled = reader.poll(512, Duration::from_millis(500)) => polled,
        };
        match polled {
            Ok(events) => {
                for event in events {
                    let item = match event {
                        ReadEvent::Record(record) => HubItem::Record(HubRecord::new(
                            record.partition,
                            record.offset,
                            record.payload,
                        )),
                        ReadEvent::Gap {
                            partition,
                            from,
                            to,
                        } => HubItem::Gap {
                            partition,
                            from,
                            to,
                        },
                    };
                    // No receiver: the check below stops the hub.
                    let _ = sender.send(Arc::new(item));
                }
            }
            Err(error) => {
                warn!(%error, "the live tail hub failed to read the bus; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        // The last tail left: stop reading. Decided under the lock subscribers take, so none
        // subscribes to a hub that is stopping.
        let mut current = slot.lock().await;
        if sender.receiver_count() == 0 {
            *current = None;
            return;
        }
    }
    *slot.lock().await = None;
}

#[cfg(test)]
mod tests {
    use sluice_proto::v2::Envelope;

    use super::*;

    fn batch_of(sources: &[&str]) -> AgentBatch {
        AgentBatch {
            agent_id: "agent".to_owned(),
            sequence: 7,
            envelopes: sources
                .iter()
                .map(|source| Envelope {
                    source_id: (*source).to_owned(),
                    instance_id: "0".to_owned(),
                    timestamp: 1,
                    ..Envelope::default()
                })
                .collect(),
        }
    }

    #[test]
    fn a_record_says_which_sources_it_carries_without_decoding_the_batch() {
        let batch = batch_of(&["web", "api", "web"]);
        let record = HubRecord::new(0, 3, Bytes::from(batch.encode_to_vec()));
        assert_eq!(
            record.sources.as_deref(),
            Some(&[Bytes::from_static(b"api"), Bytes::from_static(b"web")][..])
        );
        assert!(
            record.batch.get().is_none(),
            "nothing decoded the batch yet"
        );
        assert!(record.may_carry(&["web".to_owned()]));
        assert!(record.may_carry(&["worker".to_owned(), "api".to_owned()]));
        assert!(!record.may_carry(&["worker".to_owned()]));
        assert!(
            !record.may_carry(&["we".to_owned()]),
            "a prefix is not a source"
        );
        assert!(
            record.may_carry(&[]),
            "no source selector selects every source"
        );
        assert_eq!(record.batch(), Some(&batch));
    }

    #[test]
    fn a_record_that_is_not_a_batch_is_not_skipped_and_decodes_to_nothing() {
        let record = HubRecord::new(0, 0, Bytes::from_static(&[0xff, 0xff, 0xff]));
        assert!(record.may_carry(&["web".to_owned()]));
        assert_eq!(record.batch(), None);
    }
}
