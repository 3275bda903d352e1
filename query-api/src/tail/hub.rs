//! One reader of the live edge of the bus for every tail that keeps up.
//!
//! A tail at the live edge does not need a reader of its own: the hub reads the bus once and
//! shares each record through a bounded ring (`capacity` records). A tail that falls further
//! behind than the ring is told so (it lagged) and goes back to a reader of its own from its
//! cursor, which loses nothing; once that reader has caught up with the bus's end as it was
//! after the tail subscribed again, it switches back.
//!
//! Most tails select a few sources, and most records carry none of them. So the hub reads
//! only each record's source ids first (a partial decode that skips every other field and
//! copies nothing), decodes the whole batch once, lazily, for the first tail that selects
//! one of its sources, and wakes a tail only for what it selects (and for gaps). A tail that
//! selects nothing for a while is woken once the ring has moved half its length past what it
//! took last, takes everything waiting at once (skipping it is moving its cursor), and so
//! never lags for want of being woken. A hundred idle tails of a busy bus thus cost one read
//! per record, a lookup per record and tail, and a wakeup per half ring.
//!
//! The hub runs while any tail listens and stops when the last one leaves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use sluice_bus::{Bus, BusError, Partition, ReadEvent};
use sluice_common::shutdown::Shutdown;
use sluice_proto::v1::AgentBatch;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::{Mutex, Notify, broadcast};
use tracing::warn;

/// What the hub shares, numbered in the order it read them.
#[derive(Debug)]
pub struct Shared {
    /// The hub's own count of what it shared (1 for the first).
    pub seq: u64,
    /// The record or gap.
    pub item: HubItem,
}

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

/// One tail listening to the hub: what it selects, how to wake it, what it took last.
#[derive(Debug)]
struct Listener {
    /// Sources selected; every source when empty.
    sources: Vec<String>,
    wake: Notify,
    /// `seq` of the last item the tail took.
    taken: AtomicU64,
}

/// The tails listening, for the hub to wake.
type Listeners = Arc<std::sync::Mutex<Vec<Arc<Listener>>>>;

struct Running {
    sender: broadcast::Sender<Arc<Shared>>,
    listeners: Listeners,
    /// `seq` of the last item sent.
    sent: Arc<AtomicU64>,
}

/// The shared live reader.
#[derive(Clone)]
pub struct Hub {
    bus: Arc<dyn Bus>,
    capacity: usize,
    running: Arc<Mutex<Option<Running>>>,
    shutdown: Shutdown,
}

/// Why a tail stopped taking from the hub.
#[derive(Debug, PartialEq, Eq)]
pub enum Left {
    /// It fell further behind than the ring holds.
    Lagged,
    /// The hub stopped.
    Stopped,
}

/// A tail's subscription to the hub.
pub struct HubReceiver {
    receiver: broadcast::Receiver<Arc<Shared>>,
    listener: Arc<Listener>,
    listeners: Listeners,
}

impl HubReceiver {
    /// Waits until the hub has something this tail selects, or enough it does not select
    /// that the tail should take it before the ring moves past it.
    pub async fn woken(&self) {
        self.listener.wake.notified().await;
    }

    /// The next item waiting, if any.
    pub fn try_next(&mut self) -> Result<Option<Arc<Shared>>, Left> {
        match self.receiver.try_recv() {
            Ok(shared) => {
                self.listener.taken.store(shared.seq, Ordering::Release);
                Ok(Some(shared))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Lagged(_)) => Err(Left::Lagged),
            Err(TryRecvError::Closed) => Err(Left::Stopped),
        }
    }
}

impl Drop for HubReceiver {
    fn drop(&mut self) {
        let mut listeners = self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        listeners.retain(|listener| !Arc::ptr_eq(listener, &self.listener));
    }
}

impl Hub {
    /// A hub over `bus` whose ring holds `capacity` records.
    pub fn new(bus: Arc<dyn Bus>, capacity: usize, shutdown: Shutdown) -> Hub {
        Hub {
            bus,
            capacity: capacity.max(16),
            running: Arc::new(Mutex::new(None)),
            shutdown,
        }
    }

    /// Listens from now on for a tail selecting `sources` (every source when empty); the hub
    /// starts if it is not running. What it shared before is not seen: a tail subscribes,
    /// then reads on its own until it has reached the bus's end as it was after subscribing,
    /// and only then switches.
    pub async fn subscribe(&self, sources: &[String]) -> Result<HubReceiver, BusError> {
        let mut slot = self.running.lock().await;
        if slot.is_none() {
            let end = self.bus.end_positions().await?;
            let reader = self.bus.reader(&end).await?;
            let (sender, _) = broadcast::channel(self.capacity);
            let running = Running {
                sender,
                listeners: Arc::new(std::sync::Mutex::new(Vec::new())),
                sent: Arc::new(AtomicU64::new(0)),
            };
            tokio::spawn(run(
                reader,
                running.sender.clone(),
                Arc::clone(&running.listeners),
                Arc::clone(&running.sent),
                self.capacity as u64,
                Arc::clone(&self.running),
                self.shutdown.clone(),
            ));
            *slot = Some(running);
        }
        let Some(running) = slot.as_ref() else {
            return Err(BusError::Storage(
                "the live tail hub did not start".to_owned(),
            ));
        };
        let listener = Arc::new(Listener {
            sources: sources.to_vec(),
            wake: Notify::new(),
            taken: AtomicU64::new(running.sent.load(Ordering::Acquire)),
        });
        let receiver = running.sender.subscribe();
        running
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::clone(&listener));
        Ok(HubReceiver {
            receiver,
            listener,
            listeners: Arc::clone(&running.listeners),
        })
    }
}

async fn run(
    mut reader: Box<dyn sluice_bus::Reader>,
    sender: broadcast::Sender<Arc<Shared>>,
    listeners: Listeners,
    sent: Arc<AtomicU64>,
    capacity: u64,
    slot: Arc<Mutex<Option<Running>>>,
    mut shutdown: Shutdown,
) {
    let mut seq = 0_u64;
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
                    seq += 1;
                    let shared = Arc::new(Shared { seq, item });
                    // No receiver: the check below stops the hub.
                    let _ = sender.send(Arc::clone(&shared));
                    sent.store(seq, Ordering::Release);
                    wake(&listeners, &shared, capacity);
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

/// Wakes the listeners that select what was just shared, and those the ring is about to
/// leave behind.
fn wake(listeners: &Listeners, shared: &Shared, capacity: u64) {
    let listeners = listeners
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for listener in listeners.iter() {
        let selected = match &shared.item {
            HubItem::Record(record) => record.may_carry(&listener.sources),
            HubItem::Gap { .. } => true,
        };
        let behind = shared.seq - listener.taken.load(Ordering::Acquire).min(shared.seq);
        if selected || behind >= capacity / 2 {
            listener.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;

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
            patterns: None,
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

    fn woken(listener: &Listener) -> bool {
        let notified = listener.wake.notified();
        tokio::pin!(notified);
        // A stored wakeup completes the first poll.
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        notified.as_mut().poll(&mut context).is_ready()
    }

    #[test]
    fn a_tail_is_woken_for_what_it_selects_and_before_the_ring_leaves_it_behind() {
        let listener = Arc::new(Listener {
            sources: vec!["web".to_owned()],
            wake: Notify::new(),
            taken: AtomicU64::new(0),
        });
        let listeners: Listeners = Arc::new(std::sync::Mutex::new(vec![Arc::clone(&listener)]));
        let record = |seq: u64, source: &str| Shared {
            seq,
            item: HubItem::Record(HubRecord::new(
                0,
                seq,
                Bytes::from(batch_of(&[source]).encode_to_vec()),
            )),
        };
        // Records of other sources do not wake it while the ring is far from leaving it.
        for seq in 1..32 {
            wake(&listeners, &record(seq, "api"), 64);
        }
        assert!(!woken(&listener), "not woken for what it does not select");
        // Half a ring past what it took last: woken, so it skips them before they are gone.
        wake(&listeners, &record(32, "api"), 64);
        assert!(woken(&listener), "woken half a ring behind");
        listener.taken.store(32, Ordering::Release);
        wake(&listeners, &record(33, "api"), 64);
        assert!(!woken(&listener));
        // What it selects wakes it at once, and so does a gap.
        wake(&listeners, &record(34, "web"), 64);
        assert!(woken(&listener), "woken for its source");
        let gap = Shared {
            seq: 35,
            item: HubItem::Gap {
                partition: 0,
                from: 1,
                to: 2,
            },
        };
        wake(&listeners, &gap, 64);
        assert!(woken(&listener), "woken for a gap");
    }

    #[test]
    fn a_record_that_is_not_a_batch_is_not_skipped_and_decodes_to_nothing() {
        let record = HubRecord::new(0, 0, Bytes::from_static(&[0xff, 0xff, 0xff]));
        assert!(record.may_carry(&["web".to_owned()]));
        assert_eq!(record.batch(), None);
    }
}
