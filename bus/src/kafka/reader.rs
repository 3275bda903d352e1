//! Readers of the Kafka topic outside every consumer group (see [`crate::Bus::reader`]).
//!
//! A reader assigns itself every partition at the offsets it was given and never commits.
//! librdkafka blocks, so a thread of its own polls the consumer and hands records to the async
//! side through a bounded channel: a reader that is not polled stops fetching (the broker
//! keeps the records) instead of buffering without end. The thread ends, and the consumer
//! closes, when the reader is dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{client_config, storage};
use crate::config::RawKafkaConfig;
use crate::{BusError, BusRecord, Partition, Positions, ReadEvent, Reader};

/// Events a reader's thread may have fetched ahead of its poller.
const READ_AHEAD: usize = 1024;

/// How long the thread waits in one librdkafka poll before checking whether it should stop.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// Starts a reader of `partitions` of the topic, each at its offset in `from` (0 when not
/// named; an offset the broker no longer holds moves to the earliest it holds, reported as a
/// gap).
pub fn start(
    settings: &RawKafkaConfig,
    partitions: &[i32],
    from: &Positions,
) -> Result<Box<dyn Reader>, BusError> {
    // No group membership and no commits: the group id only satisfies librdkafka.
    let consumer: BaseConsumer = client_config(settings)
        .set("group.id", format!("{}-tail-reader", settings.group_prefix))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // A tail is read by a person waiting for the next line: the broker answers a fetch
        // as soon as it has one record instead of collecting for up to 500 ms.
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(storage("failed to create a kafka reader"))?;
    let mut assignment = TopicPartitionList::new();
    let mut expected = BTreeMap::new();
    for partition in partitions {
        let key = Partition::try_from(*partition).unwrap_or_default();
        let offset = from.next_offset(key);
        expected.insert(key, offset);
        assignment
            .add_partition_offset(
                &settings.topic,
                *partition,
                Offset::Offset(i64::try_from(offset).unwrap_or(i64::MAX)),
            )
            .map_err(storage("failed to build a kafka assignment"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(storage("failed to assign the kafka reader its partitions"))?;
    let (events, received) = mpsc::channel(READ_AHEAD);
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("sluice-kafka-read".to_owned())
        .spawn(move || fetch(&consumer, expected, &events, &stopping))
        .map_err(|error| {
            BusError::Unavailable(format!("failed to start a kafka reader thread: {error}"))
        })?;
    Ok(Box::new(KafkaReader { received, stop }))
}

/// The thread: polls until the reader goes, reporting jumps past the expected offset as gaps.
fn fetch(
    consumer: &BaseConsumer,
    mut expected: BTreeMap<Partition, u64>,
    events: &mpsc::Sender<Result<ReadEvent, BusError>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Acquire) {
        let event = match consumer.poll(POLL_SLICE) {
            None => continue,
            // librdkafka retries by itself; the error is reported and polling goes on.
            Some(Err(error)) => Err(BusError::Unavailable(format!(
                "failed to read kafka: {error}"
            ))),
            Some(Ok(message)) => {
                let partition = Partition::try_from(message.partition()).unwrap_or_default();
                let offset = u64::try_from(message.offset()).unwrap_or_default();
                let next = expected.entry(partition).or_insert(offset);
                if offset > *next
                    && events
                        .blocking_send(Ok(ReadEvent::Gap {
                            partition,
                            from: *next,
                            to: offset,
                        }))
                        .is_err()
                {
                    return;
                }
                *next = offset + 1;
                Ok(ReadEvent::Record(BusRecord {
                    partition,
                    offset,
                    payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                }))
            }
        };
        if events.blocking_send(event).is_err() {
            return;
        }
    }
}

struct KafkaReader {
    received: mpsc::Receiver<Result<ReadEvent, BusError>>,
    stop: Arc<AtomicBool>,
}

#[async_trait]
impl Reader for KafkaReader {
    async fn poll(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<ReadEvent>, BusError> {
        let first = match tokio::time::timeout(max_wait, self.received.recv()).await {
            Err(_elapsed) => return Ok(Vec::new()),
            Ok(None) => {
                return Err(BusError::Unavailable(
                    "the kafka reader thread stopped".to_owned(),
                ));
            }
            Ok(Some(event)) => event?,
        };
        let mut events = vec![first];
        while events.len() < max_records {
            match self.received.try_recv() {
                Ok(Ok(event)) => events.push(event),
                // An error after records waits for the next poll: the records go first.
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "kafka reader");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(events)
    }
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
