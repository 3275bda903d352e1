//! One reader of the live edge of the bus for every tail that keeps up.
//!
//! A tail at the live edge does not need a reader of its own: the hub reads the bus once,
//! decodes each record once and broadcasts it (a bounded ring, `capacity` records). A tail
//! that falls further behind than the ring is told so (it lagged) and goes back to a reader
//! of its own from its cursor, which loses nothing; once that reader has caught up with the
//! bus's end as it was after the tail subscribed again, it switches back. So a hundred tails
//! of a busy bus cost one read and one decode per record, plus each tail's selection.
//!
//! The hub runs while any tail listens and stops when the last one leaves.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use sluice_bus::{Bus, BusError, Partition, ReadEvent};
use sluice_common::shutdown::Shutdown;
use sluice_proto::v1::AgentBatch;
use tokio::sync::{Mutex, broadcast};
use tracing::warn;

/// What the hub broadcasts.
#[derive(Debug)]
pub enum HubItem {
    /// A record, decoded (`None` when it is not an `AgentBatch`).
    Record {
        /// The partition.
        partition: Partition,
        /// The offset.
        offset: u64,
        /// The batch.
        batch: Option<AgentBatch>,
    },
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
                        ReadEvent::Record(record) => HubItem::Record {
                            partition: record.partition,
                            offset: record.offset,
                            batch: AgentBatch::decode(record.payload.as_ref()).ok(),
                        },
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
