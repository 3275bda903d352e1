//! The Kafka bus: batches in one topic, keyed by source_id so one source keeps its order.
//!
//! Producer: idempotent, `acks=all`, zstd-compressed; [`Bus::append`] returns when the broker
//! has the record, so a doppler acknowledges its agent only then. While the broker is away,
//! sends wait (up to `message.timeout.ms`, five minutes by default) and the waiting pushes back
//! on the agents through their bounded pending limits instead of dropping anything.
//!
//! Consumer: assigns itself every partition of the topic and starts each at the position the
//! caller's data says (see [`Consumer::seek`]), or at the group's committed offset, or at the
//! beginning. Group offsets are committed only by [`Consumer::checkpoint`], that is after the
//! data is durable downstream. One consumer per group: sharing partitions between several
//! indexers (group rebalancing) is not done yet.
//!
//! librdkafka can block for a long time while closing a consumer; dropping one hands it to a
//! thread of its own so the async runtime never waits on it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::config::RawKafkaConfig;
use tracing::info;

use crate::metrics::BusMetrics;
use crate::{Bus, BusError, BusRecord, Consumer, Positions};

/// The Kafka bus.
#[derive(Clone)]
pub struct KafkaBus {
    producer: FutureProducer,
    settings: Arc<RawKafkaConfig>,
    partitions: Arc<Vec<i32>>,
    metrics: BusMetrics,
}

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
    pub async fn open(settings: &RawKafkaConfig, metrics: BusMetrics) -> Result<KafkaBus, BusError> {
        let admin: AdminClient<DefaultClientContext> = client_config(settings)
            .create()
            .map_err(storage("failed to create a kafka admin client"))?;
        let topic = NewTopic::new(&settings.topic, settings.partitions, TopicReplication::Fixed(settings.replication));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(storage("failed to create the kafka topic"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(BusError::Storage(format!("failed to create kafka topic {name}: {code}"))),
            }
        }
        let producer: FutureProducer = client_config(settings)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "zstd")
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
        let metadata = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&name), Duration::from_secs(5)))
            .await
            .map_err(|error| BusError::Unavailable(format!("metadata task failed: {error}")))?
            .map_err(storage("failed to read kafka metadata"))?;
        if let Some(found) = metadata.topics().iter().find(|entry| entry.name() == topic_name) {
            let partitions: Vec<i32> = found.partitions().iter().map(|partition| partition.id()).collect();
            if !partitions.is_empty() {
                return Ok(partitions);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(BusError::Unavailable(format!("kafka topic {topic_name} has no partitions")))
}

#[async_trait]
impl Bus for KafkaBus {
    async fn append(&self, key: &str, payload: Bytes) -> Result<(), BusError> {
        let record = FutureRecord::to(&self.settings.topic).key(key).payload(payload.as_ref());
        match self.producer.send(record, Timeout::After(Duration::from_secs(60))).await {
            Ok(_) => {
                self.metrics.records_appended.inc();
                self.metrics.bytes_appended.inc_by(payload.len() as u64);
                Ok(())
            }
            Err((error, _)) => {
                self.metrics.append_failures.inc();
                Err(BusError::Storage(format!("failed to produce to kafka: {error}")))
            }
        }
    }

    async fn subscribe(&self, group: &str) -> Result<Box<dyn Consumer>, BusError> {
        let consumer: StreamConsumer = client_config(&self.settings)
            .set("group.id", format!("{}-{group}", self.settings.group_prefix))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(storage("failed to create a kafka consumer"))?;
        let mut kafka_consumer = KafkaConsumer {
            consumer: Some(consumer),
            topic: self.settings.topic.clone(),
            partitions: Arc::clone(&self.partitions),
        };
        kafka_consumer.assign(&Positions::default())?;
        Ok(Box::new(kafka_consumer))
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}

struct KafkaConsumer {
    consumer: Option<StreamConsumer>,
    topic: String,
    partitions: Arc<Vec<i32>>,
}

impl KafkaConsumer {
    fn consumer(&self) -> Result<&StreamConsumer, BusError> {
        self.consumer
            .as_ref()
            .ok_or_else(|| BusError::Unavailable("kafka consumer closed".to_owned()))
    }

    /// Assigns every partition: at `positions` where given, else at the group's offset.
    fn assign(&mut self, positions: &Positions) -> Result<(), BusError> {
        let mut list = TopicPartitionList::new();
        for partition in self.partitions.iter() {
            let offset = match u32::try_from(*partition).ok().and_then(|index| positions.0.get(&index)) {
                Some(next) => Offset::Offset(i64::try_from(*next).unwrap_or(i64::MAX)),
                None => Offset::Stored,
            };
            list.add_partition_offset(&self.topic, *partition, offset)
                .map_err(storage("failed to build a kafka assignment"))?;
        }
        self.consumer()?
            .assign(&list)
            .map_err(storage("failed to assign kafka partitions"))
    }
}

fn record(message: &rdkafka::message::BorrowedMessage<'_>) -> BusRecord {
    BusRecord {
        partition: u32::try_from(message.partition()).unwrap_or_default(),
        offset: u64::try_from(message.offset()).unwrap_or_default(),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn seek(&mut self, positions: &Positions) -> Result<(), BusError> {
        self.assign(positions)
    }

    async fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<Vec<BusRecord>, BusError> {
        let consumer = self.consumer()?;
        let mut records = Vec::new();
        match tokio::time::timeout(max_wait, consumer.recv()).await {
            Err(_elapsed) => return Ok(records),
            Ok(Err(error)) => return Err(BusError::Unavailable(format!("failed to read kafka: {error}"))),
            Ok(Ok(message)) => records.push(record(&message)),
        }
        // Take what is already fetched, without waiting for more.
        while records.len() < max_records {
            match tokio::time::timeout(Duration::from_millis(1), consumer.recv()).await {
                Ok(Ok(message)) => records.push(record(&message)),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok(records)
    }

    async fn checkpoint(&mut self, positions: &Positions) -> Result<(), BusError> {
        let mut list = TopicPartitionList::new();
        for (partition, next) in &positions.0 {
            list.add_partition_offset(
                &self.topic,
                i32::try_from(*partition).unwrap_or(i32::MAX),
                Offset::Offset(i64::try_from(*next).unwrap_or(i64::MAX)),
            )
            .map_err(storage("failed to build a kafka commit"))?;
        }
        if list.count() == 0 {
            return Ok(());
        }
        self.consumer()?
            .commit(&list, CommitMode::Async)
            .map_err(storage("failed to commit kafka offsets"))
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            // Closing can block in librdkafka; never on the async runtime.
            let _ = std::thread::Builder::new()
                .name("sluice-kafka-close".to_owned())
                .spawn(move || drop(consumer));
        }
    }
}
