//! The Kafka bus: batches in one topic, keyed by source_id so one source keeps its order.
//!
//! Producer: idempotent, `acks=all`, zstd-compressed; [`Bus::append`] returns when the broker
//! has the record, so a doppler acknowledges its agent only then. While the broker is away,
//! sends wait (up to `message.timeout.ms`, five minutes by default) and the waiting pushes back
//! on the agents through their bounded pending limits instead of dropping anything.
//!
//! Consumers: a sole consumer ([`Sharing::Sole`]: `sluice up`, retention) assigns itself every
//! partition and resumes where its data ends, with no group membership (a crashed process
//! leaves nothing behind in the group to wait for). Shared consumers ([`Sharing::Shared`]:
//! indexers) are the members of one consumer group and share the partitions (Kafka's group
//! protocol, round-robin assignment). Exactly once into each member's data rests on three rules:
//!
//! - A member commits the group offset of a partition only for data that is durable, only while
//!   it owns the partition, and before the partition is revoked from it.
//! - On every assignment a member records a *stint* (`group, partition, member, start offset`)
//!   in the one-partition topic `<topic>-stints` before it reads the partition. A partition it
//!   owned before and still holds data of starts where its own data ends when nobody took the
//!   partition over in between; otherwise it starts at the group's offset.
//! - When another member took a partition over from this one (a stint of another member after
//!   this member's latest), this member drops its data of the partition from the offset where
//!   the other member started ([`BusEvent::Rewind`]): whatever it wrote past its last commit,
//!   say because it was killed between writing and committing, is read again by the new owner.
//!   Without a recorded takeover yet, it drops from the group's offset, where the new owner
//!   starts.
//!
//! The stints are needed because a crash between a member's durable write and its offset
//! commit leaves that member's data past the group's offset, and only the log says whether
//! someone else has read those records since. [`stints`] keeps the log bounded: members fold
//! it into snapshots, so a join reads only what came since the last one.
//!
//! librdkafka blocks: rebalance callbacks run inside the consumer's poll and do network I/O
//! (committed offsets, the stint log: up to about a minute), and closing a consumer can take
//! as long. So each consumer is polled by a thread of its own ([`poller`]), which hands the
//! records and rebalance events it took to the async side through a channel; commits run on
//! blocking threads, and dropping a consumer closes it on a thread of its own. The async
//! runtime never waits on librdkafka.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::RawKafkaConfig;
use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

mod reader;
pub mod stints;

use crate::metrics::BusMetrics;
use crate::{Bus, BusError, BusEvent, Consumer, Partition, Positions, Reader, Sharing};

/// The Kafka bus.
#[derive(Clone)]
pub struct KafkaBus {
    producer: FutureProducer,
    settings: Arc<RawKafkaConfig>,
    partitions: Arc<Vec<i32>>,
    metrics: BusMetrics,
}

/// Room above `max_record_bytes` for Kafka's record and batch headers (the key among them).
const KAFKA_FRAMING_BYTES: usize = 64 * 1024;

fn client_config(settings: &RawKafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    for (key, value) in &settings.client {
        config.set(key, value);
    }
    config
}

fn storage(context: &str) -> impl Fn(KafkaError) -> BusError + '_ {
    move |error| BusError::Storage(format!("{context}: {error}"))
}

impl KafkaBus {
    /// Connects, creates the topic if it is missing, and learns its partitions.
    ///
    /// `max_record_bytes` is the largest record the producer sends (its `message.max.bytes`,
    /// with room for the protocol's own framing) and the `max.message.bytes` of the topic when
    /// Sluice creates it; a larger record is refused with [`BusError::TooLarge`].
    pub async fn open(
        settings: &RawKafkaConfig,
        max_record_bytes: usize,
        metrics: BusMetrics,
    ) -> Result<KafkaBus, BusError> {
        let request_limit = (max_record_bytes + KAFKA_FRAMING_BYTES).to_string();
        let admin: AdminClient<DefaultClientContext> = client_config(settings)
            .create()
            .map_err(storage("failed to create a kafka admin client"))?;
        let topic = NewTopic::new(
            &settings.topic,
            settings.partitions,
            TopicReplication::Fixed(settings.replication),
        )
        .set("max.message.bytes", &request_limit);
        let stints_name = stints_topic(&settings.topic);
        // Compacted, never expired by time: what is still needed is never dropped, and what
        // a snapshot covers goes (see `stints`).
        let stints = NewTopic::new(
            &stints_name,
            1,
            TopicReplication::Fixed(settings.replication),
        )
        .set("cleanup.policy", "compact");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic, &stints], &options)
            .await
            .map_err(storage("failed to create the kafka topic"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BusError::Storage(format!(
                        "failed to create kafka topic {name}: {code}"
                    )));
                }
            }
        }
        let producer: FutureProducer = client_config(settings)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "zstd")
            .set("message.max.bytes", &request_limit)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "300000")
            .create()
            .map_err(storage("failed to create a kafka producer"))?;
        let partitions = partitions_of(&producer, &settings.topic).await?;
        info!(brokers = %settings.brokers, topic = %settings.topic, partitions = partitions.len(), "kafka bus opened");
        Ok(KafkaBus {
            producer,
            settings: Arc::new(settings.clone()),
            partitions: Arc::new(partitions),
            metrics,
        })
    }
}

/// The topic's partitions, waiting a little for a freshly created topic to appear.
async fn partitions_of(producer: &FutureProducer, topic: &str) -> Result<Vec<i32>, BusError> {
    let topic_name = topic.to_owned();
    for _ in 0..50 {
        let producer = producer.clone();
        let name = topic_name.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(5))
        })
        .await
        .map_err(|error| BusError::Unavailable(format!("metadata task failed: {error}")))?
        .map_err(storage("failed to read kafka metadata"))?;
        if let Some(found) = metadata
            .topics()
            .iter()
            .find(|entry| entry.name() == topic_name)
        {
            let partitions: Vec<i32> = found
                .partitions()
                .iter()
                .map(|partition| partition.id())
                .collect();
            if !partitions.is_empty() {
                return Ok(partitions);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(BusError::Unavailable(format!(
        "kafka topic {topic_name} has no partitions"
    )))
}

#[async_trait]
impl Bus for KafkaBus {
    async fn append(&self, key: &str, payload: Bytes) -> Result<(), BusError> {
        let record = FutureRecord::to(&self.settings.topic)
            .key(key)
            .payload(payload.as_ref());
        match self
            .producer
            .send(record, Timeout::After(Duration::from_secs(60)))
            .await
        {
            Ok(_) => {
                self.metrics.records_appended.inc();
                self.metrics.bytes_appended.inc_by(payload.len() as u64);
                Ok(())
            }
            Err((error, _)) => {
                self.metrics.append_failures.inc();
                let message = format!("failed to produce to kafka: {error}");
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
                    Err(BusError::TooLarge(message))
                } else {
                    Err(BusError::Storage(message))
                }
            }
        }
    }

    async fn subscribe(
        &self,
        group: &str,
        member: &str,
        sharing: Sharing,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let group_id = format!("{}-{group}", self.settings.group_prefix);
        let stint_producer: BaseProducer = client_config(&self.settings)
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            .create()
            .map_err(storage(
                "failed to create a kafka producer for the stint log",
            ))?;
        let ownership = Arc::new(Ownership {
            topic: self.settings.topic.clone(),
            stints_topic: stints_topic(&self.settings.topic),
            group: group_id.clone(),
            member: member.to_owned(),
            settings: Arc::clone(&self.settings),
            producer: stint_producer,
            state: Mutex::new(OwnershipState::default()),
        });
        let consumer: BaseConsumer<GroupContext> = client_config(&self.settings)
            .set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "roundrobin")
            .create_with_context(GroupContext(Arc::clone(&ownership)))
            .map_err(storage("failed to create a kafka consumer"))?;
        let consumer = Arc::new(consumer);
        let (fetches, fetched, poll_thread) =
            poller::start(Arc::clone(&consumer), Arc::clone(&ownership))?;
        Ok(Box::new(KafkaConsumer {
            consumer: Some(consumer),
            ownership,
            subscribed: false,
            sole: (sharing == Sharing::Sole).then(|| Arc::clone(&self.partitions)),
            pending: Vec::new(),
            fetches: Some(fetches),
            fetched,
            fetch_outstanding: false,
            poll_thread: Some(poll_thread),
        }))
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn reader(&self, from: &Positions) -> Result<Box<dyn Reader>, BusError> {
        reader::start(&self.settings, &self.partitions, from)
    }

    async fn end_positions(&self) -> Result<Positions, BusError> {
        let producer = self.producer.clone();
        let topic = self.settings.topic.clone();
        let partitions = Arc::clone(&self.partitions);
        tokio::task::spawn_blocking(move || {
            let mut positions = Positions::default();
            for partition in partitions.iter() {
                let (_, high) = producer
                    .client()
                    .fetch_watermarks(&topic, *partition, Duration::from_secs(10))
                    .map_err(storage("failed to read the kafka topic's end"))?;
                positions.0.insert(
                    partition_key(*partition),
                    u64::try_from(high).unwrap_or_default(),
                );
            }
            Ok(positions)
        })
        .await
        .map_err(|error| BusError::Unavailable(format!("watermark task failed: {error}")))?
    }

    async fn group_positions(&self, group: &str) -> Result<Positions, BusError> {
        let group_id = format!("{}-{group}", self.settings.group_prefix);
        // Asking for a group's offsets does not join it: this consumer never subscribes.
        let consumer: BaseConsumer = client_config(&self.settings)
            .set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(storage("failed to create a kafka client for group offsets"))?;
        let mut list = TopicPartitionList::new();
        for partition in self.partitions.iter() {
            list.add_partition(&self.settings.topic, *partition);
        }
        tokio::task::spawn_blocking(move || {
            let committed = consumer
                .committed_offsets(list, Duration::from_secs(10))
                .map_err(storage("failed to read the group's kafka offsets"))?;
            let mut positions = Positions::default();
            for element in committed.elements() {
                if let Some(offset) = offset_value(element.offset()) {
                    positions
                        .0
                        .insert(partition_key(element.partition()), offset);
                }
            }
            Ok(positions)
        })
        .await
        .map_err(|error| BusError::Unavailable(format!("group offsets task failed: {error}")))?
    }
}

/// The single-partition topic where members record the offset at which they took over a
/// partition (see the module documentation).
fn stints_topic(topic: &str) -> String {
    format!("{topic}-stints")
}

#[derive(Default)]
struct OwnershipState {
    /// Positions of the member's durable data (from `seek` and every `checkpoint`).
    durable: Positions,
    /// Partitions assigned now.
    assigned: BTreeSet<i32>,
    /// Partitions this member has been assigned since it started.
    held: BTreeSet<i32>,
    /// Events raised by rebalances, delivered before the next records.
    events: Vec<BusEvent>,
    /// An assignment could not be prepared: leave and rejoin the group.
    rejoin: bool,
}

/// What the rebalance callbacks need: shared by the consumer and its context.
struct Ownership {
    topic: String,
    stints_topic: String,
    group: String,
    member: String,
    settings: Arc<RawKafkaConfig>,
    producer: BaseProducer,
    state: Mutex<OwnershipState>,
}

fn offset_value(offset: Offset) -> Option<u64> {
    match offset {
        Offset::Offset(value) => u64::try_from(value).ok(),
        _ => None,
    }
}

fn partition_key(partition: i32) -> Partition {
    u32::try_from(partition).unwrap_or_default()
}

impl Ownership {
    fn state(&self) -> std::sync::MutexGuard<'_, OwnershipState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stint_log(&self) -> stints::StintLog<'_> {
        stints::StintLog {
            topic: &self.stints_topic,
            group: &self.group,
            settings: &self.settings,
            producer: &self.producer,
        }
    }

    /// Chooses where each newly assigned partition starts, records the stints, and raises
    /// rewinds for whatever of this member's data another member holds or will read.
    fn prepare_assignment(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        offered: &TopicPartitionList,
    ) -> Result<TopicPartitionList, BusError> {
        let assigned: BTreeSet<i32> = offered
            .elements()
            .iter()
            .map(|element| element.partition())
            .collect();
        let (durable, held) = {
            let state = self.state();
            (state.durable.clone(), state.held.clone())
        };
        let mut concerned: BTreeSet<i32> = assigned.clone();
        concerned.extend(held.iter().copied());
        concerned.extend(
            durable
                .0
                .iter()
                .filter(|(_, next)| **next > 0)
                .filter_map(|(partition, _)| i32::try_from(*partition).ok()),
        );

        let mut query = TopicPartitionList::new();
        for partition in &concerned {
            query.add_partition(&self.topic, *partition);
        }
        let committed = consumer
            .committed_offsets(query, Duration::from_secs(10))
            .map_err(storage("failed to read the group's committed offsets"))?;
        let committed_at = |partition: i32| {
            committed
                .find_partition(&self.topic, partition)
                .and_then(|element| offset_value(element.offset()))
        };
        let stints = self.stint_log().read()?.state;

        let mut assignment = TopicPartitionList::new();
        let mut new_stints = Vec::new();
        let mut rewinds = Vec::new();
        for partition in concerned {
            let data = durable.next_offset(partition_key(partition));
            // This member's latest stint, and the first of another member after it.
            let (my_start, taken_over_at) = stints.view(partition, &self.member);
            let group_offset = committed_at(partition);
            if assigned.contains(&partition) {
                let start = match taken_over_at {
                    Some(other) => {
                        rewinds.push(BusEvent::Rewind {
                            partition: partition_key(partition),
                            to: other.min(data),
                        });
                        group_offset.unwrap_or(other)
                    }
                    None => data.max(group_offset.unwrap_or(0)),
                };
                assignment
                    .add_partition_offset(
                        &self.topic,
                        partition,
                        Offset::Offset(i64::try_from(start).unwrap_or(i64::MAX)),
                    )
                    .map_err(storage("failed to build a kafka assignment"))?;
                new_stints.push(stints::Stint {
                    group: self.group.clone(),
                    partition,
                    member: self.member.clone(),
                    start,
                });
            } else {
                // Another member reads this partition now: from where it took over, or (when it
                // has not recorded that yet) from the group's offset.
                let to = taken_over_at.or(group_offset).or(my_start).unwrap_or(0);
                rewinds.push(BusEvent::Rewind {
                    partition: partition_key(partition),
                    to,
                });
            }
        }
        self.stint_log().write(&new_stints)?;
        let starts: Vec<(i32, u64)> = new_stints
            .iter()
            .map(|stint| (stint.partition, stint.start))
            .collect();
        let rewound: Vec<(Partition, u64)> = rewinds
            .iter()
            .filter_map(|event| match event {
                BusEvent::Rewind { partition, to } => Some((*partition, *to)),
                BusEvent::Record(_) => None,
            })
            .collect();
        info!(group = %self.group, member = %self.member, partitions = ?assigned, starts = ?starts, rewinds = ?rewound, "kafka partitions assigned");
        let mut state = self.state();
        state.assigned = assigned.clone();
        state.held.extend(assigned.iter().copied());
        state.events.extend(rewinds);
        drop(state);
        Ok(assignment)
    }

    /// Before partitions go to another member: commit what is durable of them.
    fn commit_revoked(&self, consumer: &BaseConsumer<GroupContext>, revoked: &TopicPartitionList) {
        let durable = self.state().durable.clone();
        let mut list = TopicPartitionList::new();
        for element in revoked.elements() {
            let next = durable.next_offset(partition_key(element.partition()));
            if next > 0 {
                let _ = list.add_partition_offset(
                    &self.topic,
                    element.partition(),
                    Offset::Offset(i64::try_from(next).unwrap_or(i64::MAX)),
                );
            }
        }
        if list.count() > 0
            && let Err(error) = consumer.commit(&list, CommitMode::Sync)
        {
            warn!(error = %error, group = %self.group, "failed to commit offsets of revoked partitions; their new owner re-reads them");
        }
        let mut state = self.state();
        state.assigned.clear();
        info!(group = %self.group, member = %self.member, "kafka partitions revoked");
    }
}

/// The consumer context: runs the group's rebalances through [`Ownership`].
struct GroupContext(Arc<Ownership>);

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        offered: &mut TopicPartitionList,
    ) {
        // This does network I/O for up to about a minute: it must run on the poll thread,
        // never on an async runtime's worker.
        debug_assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "a kafka rebalance callback ran on the async runtime"
        );
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match self.0.prepare_assignment(consumer, offered) {
                    Ok(assignment) => {
                        if let Err(error) = consumer.assign(&assignment) {
                            warn!(error = %error, "failed to assign kafka partitions; rejoining the group");
                            self.0.state().rejoin = true;
                        }
                    }
                    Err(error) => {
                        warn!(error = %error, "failed to prepare a kafka assignment; rejoining the group");
                        let _ = consumer.unassign();
                        self.0.state().rejoin = true;
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.0.commit_revoked(consumer, offered);
                let _ = consumer.unassign();
            }
            other => {
                warn!(error = ?other, "kafka rebalance failed");
                let _ = consumer.unassign();
                self.0.state().assigned.clear();
            }
        }
    }
}

struct KafkaConsumer {
    consumer: Option<Arc<BaseConsumer<GroupContext>>>,
    ownership: Arc<Ownership>,
    subscribed: bool,
    /// For a sole consumer, the partitions it assigns itself (no group membership).
    sole: Option<Arc<Vec<i32>>>,
    /// Events taken from librdkafka by the poll under way. They live here rather than in the
    /// poll's future, so a poll dropped at an await point (a `select!` picking another branch)
    /// leaves them for the next poll instead of losing them.
    pending: Vec<BusEvent>,
    /// Requests to the poller thread.
    fetches: Option<std::sync::mpsc::Sender<poller::Fetch>>,
    /// What the poller thread took, in order.
    fetched: poller::Answered,
    /// A fetch was asked for and its answer has not been taken yet (it may arrive after a
    /// poll was dropped; the next poll takes it).
    fetch_outstanding: bool,
    /// The poller thread, joined before the consumer closes (it holds the consumer too).
    poll_thread: Option<std::thread::JoinHandle<()>>,
}

impl KafkaConsumer {
    fn consumer(&self) -> Result<&Arc<BaseConsumer<GroupContext>>, BusError> {
        self.consumer
            .as_ref()
            .ok_or_else(|| BusError::Unavailable("kafka consumer closed".to_owned()))
    }

    fn subscribe_if_needed(&mut self) -> Result<(), BusError> {
        let rejoin = std::mem::take(&mut self.ownership.state().rejoin);
        let consumer = Arc::clone(self.consumer()?);
        if rejoin {
            consumer.unsubscribe();
            self.subscribed = false;
        }
        if self.subscribed {
            return Ok(());
        }
        match &self.sole {
            Some(partitions) => {
                // Every partition, where the data ends, else at the group's offset.
                let durable = self.ownership.state().durable.clone();
                let mut list = TopicPartitionList::new();
                for partition in partitions.iter() {
                    let offset = match durable.0.get(&partition_key(*partition)) {
                        Some(next) => Offset::Offset(i64::try_from(*next).unwrap_or(i64::MAX)),
                        None => Offset::Stored,
                    };
                    list.add_partition_offset(&self.ownership.topic, *partition, offset)
                        .map_err(storage("failed to build a kafka assignment"))?;
                }
                consumer
                    .assign(&list)
                    .map_err(storage("failed to assign kafka partitions"))?;
                self.ownership.state().assigned = partitions.iter().copied().collect();
                info!(group = %self.ownership.group, partitions = partitions.len(), "reading every kafka partition as the group's only consumer");
            }
            None => consumer
                .subscribe(&[self.ownership.topic.as_str()])
                .map_err(storage("failed to subscribe to the kafka topic"))?,
        }
        self.subscribed = true;
        Ok(())
    }

    /// Moves the events the rebalance callbacks raised into `pending`, in order.
    fn take_events(&mut self) {
        self.pending.append(&mut self.ownership.state().events);
    }
}

/// The thread that polls one consumer, so that librdkafka's blocking (rebalance callbacks
/// included) never happens on the async runtime.
mod poller {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::message::Message as _;
    use tokio::sync::mpsc;

    use super::{GroupContext, Ownership};
    use crate::{BusError, BusEvent, BusRecord};

    /// One request: up to `max_records`, waiting up to `max_wait` for the first.
    pub struct Fetch {
        pub max_records: usize,
        pub max_wait: Duration,
    }

    type Answers = mpsc::UnboundedSender<Result<Vec<BusEvent>, BusError>>;
    /// Where the async side takes the answers.
    pub type Answered = mpsc::UnboundedReceiver<Result<Vec<BusEvent>, BusError>>;

    /// Starts the thread; it stops when the request sender is dropped.
    pub fn start(
        consumer: Arc<BaseConsumer<GroupContext>>,
        ownership: Arc<Ownership>,
    ) -> Result<
        (
            std::sync::mpsc::Sender<Fetch>,
            Answered,
            std::thread::JoinHandle<()>,
        ),
        BusError,
    > {
        let (requests, incoming) = std::sync::mpsc::channel::<Fetch>();
        let (answers, answered) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("sluice-kafka-poll".to_owned())
            .spawn(move || serve(&consumer, &ownership, &incoming, &answers))
            .map_err(|error| {
                BusError::Unavailable(format!("failed to start the kafka poll thread: {error}"))
            })?;
        Ok((requests, answered, thread))
    }

    fn serve(
        consumer: &BaseConsumer<GroupContext>,
        ownership: &Ownership,
        incoming: &std::sync::mpsc::Receiver<Fetch>,
        answers: &Answers,
    ) {
        while let Ok(fetch) = incoming.recv() {
            let answer = fetch_once(consumer, ownership, &fetch);
            if answers.send(answer).is_err() {
                return;
            }
        }
    }

    /// Polls once (rebalance callbacks run in here, on this thread); events the callbacks
    /// raise come before the records that follow them.
    fn fetch_once(
        consumer: &BaseConsumer<GroupContext>,
        ownership: &Ownership,
        fetch: &Fetch,
    ) -> Result<Vec<BusEvent>, BusError> {
        let mut events = Vec::new();
        let mut wait = fetch.max_wait;
        loop {
            let polled = consumer.poll(wait);
            events.append(&mut ownership.state().events);
            match polled {
                None => break,
                Some(Err(error)) => {
                    if events.is_empty() {
                        return Err(BusError::Unavailable(format!(
                            "failed to read kafka: {error}"
                        )));
                    }
                    break;
                }
                Some(Ok(message)) => {
                    events.push(BusEvent::Record(BusRecord {
                        partition: u32::try_from(message.partition()).unwrap_or_default(),
                        offset: u64::try_from(message.offset()).unwrap_or_default(),
                        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                    }));
                }
            }
            // Take what is already fetched, without waiting for more.
            wait = Duration::ZERO;
            if events.len() >= fetch.max_records {
                break;
            }
        }
        Ok(events)
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn seek(&mut self, positions: &Positions) -> Result<(), BusError> {
        self.ownership.state().durable = positions.clone();
        Ok(())
    }

    async fn poll(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<BusEvent>, BusError> {
        // Cancel safety: what the poller thread took waits in its channel until a poll takes
        // it (a poll dropped at the await below leaves it there for the next one), and the
        // rebalance events are in `self.pending` or the ownership state until returned.
        self.subscribe_if_needed()?;
        self.take_events();
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        if !self.fetch_outstanding {
            let fetches = self
                .fetches
                .as_ref()
                .ok_or_else(|| BusError::Unavailable("kafka consumer closed".to_owned()))?;
            fetches
                .send(poller::Fetch {
                    max_records,
                    max_wait,
                })
                .map_err(|_| BusError::Unavailable("the kafka poll thread stopped".to_owned()))?;
            self.fetch_outstanding = true;
        }
        // The thread answers within `max_wait` plus whatever a rebalance callback takes; a
        // later answer is taken by the next poll.
        match tokio::time::timeout(max_wait, self.fetched.recv()).await {
            Err(_elapsed) => {}
            Ok(None) => {
                return Err(BusError::Unavailable(
                    "the kafka poll thread stopped".to_owned(),
                ));
            }
            Ok(Some(answer)) => {
                self.fetch_outstanding = false;
                let events = answer?;
                self.pending.extend(events);
            }
        }
        Ok(std::mem::take(&mut self.pending))
    }

    async fn checkpoint(&mut self, positions: &Positions) -> Result<(), BusError> {
        let assigned = {
            let mut state = self.ownership.state();
            for (partition, next) in &positions.0 {
                state.durable.0.insert(*partition, *next);
            }
            state.assigned.clone()
        };
        let mut list = TopicPartitionList::new();
        for (partition, next) in &positions.0 {
            let Ok(partition) = i32::try_from(*partition) else {
                continue;
            };
            // Only the owner commits a partition: a member that lost it must not move the
            // offset its new owner works from.
            if assigned.contains(&partition) && *next > 0 {
                list.add_partition_offset(
                    &self.ownership.topic,
                    partition,
                    Offset::Offset(i64::try_from(*next).unwrap_or(i64::MAX)),
                )
                .map_err(storage("failed to build a kafka commit"))?;
            }
        }
        if list.count() == 0 {
            return Ok(());
        }
        let consumer = Arc::clone(self.consumer()?);
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|error| BusError::Unavailable(format!("commit task failed: {error}")))?
            .map_err(storage("failed to commit kafka offsets"))
    }

    async fn close(mut self: Box<Self>) {
        // The poll thread ends with its request channel (after a poll under way returns).
        self.fetches.take();
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        // Closing commits the revoked partitions and leaves the group; it can block in
        // librdkafka, so it runs on its own thread and is waited for a bounded time.
        let (done, finished) = tokio::sync::oneshot::channel();
        let poll_thread = self.poll_thread.take();
        let spawned = std::thread::Builder::new()
            .name("sluice-kafka-close".to_owned())
            .spawn(move || {
                // The poll thread lets go of its handle once its poll under way returns; then
                // this is the last one and dropping it closes the consumer.
                if let Some(thread) = poll_thread {
                    let _ = thread.join();
                }
                drop(consumer);
                let _ = done.send(());
            });
        if spawned.is_ok()
            && tokio::time::timeout(Duration::from_secs(10), finished)
                .await
                .is_err()
        {
            warn!(
                "the kafka consumer did not close within 10 s; its partitions move when the group notices"
            );
        }
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        self.fetches.take();
        if let Some(consumer) = self.consumer.take() {
            // Closing can block in librdkafka; never on the async runtime.
            let poll_thread = self.poll_thread.take();
            let _ = std::thread::Builder::new()
                .name("sluice-kafka-close".to_owned())
                .spawn(move || {
                    if let Some(thread) = poll_thread {
                        let _ = thread.join();
                    }
                    drop(consumer);
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_settings() -> RawKafkaConfig {
        let mut settings: RawKafkaConfig =
            toml::from_str("brokers = \"127.0.0.1:1\"").expect("settings");
        settings
            .client
            .insert("security.protocol".to_owned(), "sasl_ssl".to_owned());
        settings
            .client
            .insert("sasl.mechanisms".to_owned(), "SCRAM-SHA-512".to_owned());
        settings
            .client
            .insert("sasl.username".to_owned(), "sluice".to_owned());
        settings
            .client
            .insert("sasl.password".to_owned(), "secret".to_owned());
        settings
    }

    /// Built with `kafka-tls`, TLS and SASL settings are accepted by librdkafka.
    #[cfg(feature = "kafka-tls")]
    #[test]
    fn tls_and_sasl_settings_are_accepted_with_the_kafka_tls_feature() {
        let producer: Result<BaseProducer, KafkaError> = client_config(&tls_settings()).create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    /// Built without it, they are refused when the client starts, saying why.
    #[cfg(not(feature = "kafka-tls"))]
    #[test]
    fn tls_settings_are_refused_without_the_kafka_tls_feature_saying_why() {
        let producer: Result<BaseProducer, KafkaError> = client_config(&tls_settings()).create();
        let error = producer.err().expect("refused").to_string();
        assert!(
            error.contains("OpenSSL") || error.contains("ssl"),
            "{error}"
        );
    }
}
