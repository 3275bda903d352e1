//! The embedded bus: a durable local write-ahead log built on Quickwit's `mrecordlog`.
//!
//! One queue, one partition (0). Appends are written and flushed to the operating system
//! before [`Bus::append`] returns, so they survive a crash of the process (not of the machine:
//! `mrecordlog` does not fsync). Every record stays in memory and on disk until every consumer
//! group known to this WAL has checkpointed past it; the groups and their checkpoints live in
//! `groups.json` beside the log, so a group that is down still holds its records back.
//!
//! Concurrency: the log sits behind one async mutex (appends are serialised, as they are on
//! disk). Consumers copy what they read out from under the lock and wait on a watch channel
//! that every append bumps, so an idle consumer costs nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use mrecordlog::MultiRecordLog;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use crate::metrics::BusMetrics;
use crate::{Bus, BusError, BusEvent, BusRecord, Consumer, Positions, Sharing};

const QUEUE: &str = "envelopes";
const PARTITION: u32 = 0;

/// The embedded write-ahead-log bus.
#[derive(Clone)]
pub struct WalBus {
    shared: Arc<Shared>,
}

struct Shared {
    log: Mutex<MultiRecordLog>,
    /// Bumped to the next offset after every append; consumers wait on it.
    appended: watch::Sender<u64>,
    /// Consumer groups and the offset each has checkpointed up to (exclusive).
    groups: Mutex<BTreeMap<String, u64>>,
    groups_path: PathBuf,
    metrics: BusMetrics,
}

impl WalBus {
    /// Opens (or creates) the WAL in `dir`, replaying what it holds.
    pub async fn open(dir: &Path, metrics: BusMetrics) -> Result<WalBus, BusError> {
        let records_dir = dir.join("records");
        tokio::fs::create_dir_all(&records_dir)
            .await
            .map_err(|error| {
                BusError::Storage(format!(
                    "failed to create wal directory {}: {error}",
                    records_dir.display()
                ))
            })?;
        let mut log = MultiRecordLog::open(&records_dir).await.map_err(|error| {
            BusError::Storage(format!(
                "failed to open wal at {}: {error}",
                records_dir.display()
            ))
        })?;
        if !log.queue_exists(QUEUE) {
            log.create_queue(QUEUE).await.map_err(|error| {
                BusError::Storage(format!("failed to create wal queue: {error}"))
            })?;
        }
        let groups_path = dir.join("groups.json");
        let groups: BTreeMap<String, u64> = match tokio::fs::read_to_string(&groups_path).await {
            Ok(text) => serde_json::from_str(&text).map_err(|error| {
                BusError::Storage(format!("invalid {}: {error}", groups_path.display()))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => {
                return Err(BusError::Storage(format!(
                    "failed to read {}: {error}",
                    groups_path.display()
                )));
            }
        };
        let last_offset = log
            .range(QUEUE, ..)
            .map_err(|error| BusError::Storage(format!("{error:?}")))?
            .last()
            .map(|(offset, _)| offset + 1);
        let next_offset = last_offset
            .unwrap_or(0)
            .max(groups.values().copied().max().unwrap_or(0));
        metrics.wal_disk_bytes.set(log.on_disk_size() as i64);
        for (group, checkpoint) in &groups {
            metrics
                .lag(group)
                .set(next_offset.saturating_sub(*checkpoint) as i64);
        }
        info!(dir = %dir.display(), next_offset, groups = groups.len(), "wal opened");
        let (appended, _) = watch::channel(next_offset);
        Ok(WalBus {
            shared: Arc::new(Shared {
                log: Mutex::new(log),
                appended,
                groups: Mutex::new(groups),
                groups_path,
                metrics,
            }),
        })
    }

    /// Bytes the log occupies on disk.
    pub async fn disk_bytes(&self) -> usize {
        self.shared.log.lock().await.on_disk_size()
    }
}

#[async_trait]
impl Bus for WalBus {
    async fn append(&self, _key: &str, payload: Bytes) -> Result<(), BusError> {
        let length = payload.len() as u64;
        let mut log = self.shared.log.lock().await;
        let result = log.append_record(QUEUE, None, payload).await;
        match result {
            Ok(Some(offset)) => {
                self.shared
                    .metrics
                    .wal_disk_bytes
                    .set(log.on_disk_size() as i64);
                drop(log);
                self.shared.metrics.records_appended.inc();
                self.shared.metrics.bytes_appended.inc_by(length);
                self.shared.appended.send_replace(offset + 1);
                Ok(())
            }
            Ok(None) => Err(BusError::Invalid("empty record".to_owned())),
            Err(error) => {
                self.shared.metrics.append_failures.inc();
                Err(BusError::Storage(format!(
                    "failed to append to wal: {error}"
                )))
            }
        }
    }

    async fn subscribe(
        &self,
        group: &str,
        _member: &str,
        _sharing: Sharing,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let mut groups = self.shared.groups.lock().await;
        if !groups.contains_key(group) {
            // A new group holds back everything still in the log from now on.
            let first_retained = {
                let log = self.shared.log.lock().await;
                log.range(QUEUE, ..)
                    .map_err(|error| BusError::Storage(format!("{error:?}")))?
                    .next()
                    .map(|(offset, _)| offset)
                    .unwrap_or(*self.shared.appended.borrow())
            };
            groups.insert(group.to_owned(), first_retained);
            write_groups(&self.shared.groups_path, &groups).await?;
        }
        Ok(Box::new(WalConsumer {
            shared: Arc::clone(&self.shared),
            group: group.to_owned(),
            next_offset: 0,
            appended: self.shared.appended.subscribe(),
            lag: self.shared.metrics.lag(group),
        }))
    }

    fn kind(&self) -> &'static str {
        "wal"
    }
}

struct WalConsumer {
    shared: Arc<Shared>,
    group: String,
    next_offset: u64,
    appended: watch::Receiver<u64>,
    lag: Gauge,
}

#[async_trait]
impl Consumer for WalConsumer {
    async fn seek(&mut self, positions: &Positions) -> Result<(), BusError> {
        self.next_offset = positions.next_offset(PARTITION);
        Ok(())
    }

    async fn poll(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<BusEvent>, BusError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Mark the current append count as seen *before* reading, so an append that lands
            // between the read and the wait still wakes us.
            self.appended.borrow_and_update();
            let records: Vec<BusRecord> = {
                let log = self.shared.log.lock().await;
                let range = log
                    .range(QUEUE, self.next_offset..)
                    .map_err(|error| BusError::Storage(format!("{error:?}")))?;
                range
                    .take(max_records)
                    .map(|(offset, payload)| BusRecord {
                        partition: PARTITION,
                        offset,
                        payload: Bytes::copy_from_slice(&payload),
                    })
                    .collect()
            };
            if let Some(last) = records.last() {
                if let Some(first) = records.first()
                    && first.offset > self.next_offset
                {
                    warn!(
                        group = %self.group,
                        expected = self.next_offset,
                        found = first.offset,
                        "wal records were released before this group read them"
                    );
                }
                self.next_offset = last.offset + 1;
                return Ok(records.into_iter().map(BusEvent::Record).collect());
            }
            match tokio::time::timeout_at(deadline, self.appended.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(BusError::Unavailable("wal closed".to_owned())),
                Err(_elapsed) => return Ok(Vec::new()),
            }
        }
    }

    async fn checkpoint(&mut self, positions: &Positions) -> Result<(), BusError> {
        let offset = positions.next_offset(PARTITION);
        let mut groups = self.shared.groups.lock().await;
        let previous = groups.get(&self.group).copied().unwrap_or(0);
        if offset <= previous {
            return Ok(());
        }
        groups.insert(self.group.clone(), offset);
        write_groups(&self.shared.groups_path, &groups).await?;
        let appended = *self.shared.appended.borrow();
        self.lag.set(appended.saturating_sub(offset) as i64);
        let releasable = groups.values().copied().min().unwrap_or(0);
        drop(groups);
        if releasable > 0 {
            let mut log = self.shared.log.lock().await;
            log.truncate(QUEUE, releasable - 1)
                .await
                .map_err(|error| BusError::Storage(format!("failed to truncate wal: {error}")))?;
            self.shared
                .metrics
                .wal_disk_bytes
                .set(log.on_disk_size() as i64);
        }
        Ok(())
    }
}

/// Writes the group checkpoints atomically: temporary file, fsync, rename.
async fn write_groups(path: &Path, groups: &BTreeMap<String, u64>) -> Result<(), BusError> {
    let text =
        serde_json::to_vec(groups).map_err(|error| BusError::Storage(format!("{error:?}")))?;
    let temporary = path.with_extension("json.tmp");
    let write = async {
        let mut file = tokio::fs::File::create(&temporary).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &text).await?;
        file.sync_all().await?;
        tokio::fs::rename(&temporary, path).await
    };
    write
        .await
        .map_err(|error| BusError::Storage(format!("failed to write {}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::telemetry::Telemetry;

    async fn open(dir: &Path) -> WalBus {
        WalBus::open(dir, BusMetrics::register(&Telemetry::new()))
            .await
            .expect("open wal")
    }

    async fn poll_all(consumer: &mut Box<dyn Consumer>) -> Vec<BusRecord> {
        consumer
            .poll(1_000, Duration::from_millis(50))
            .await
            .expect("poll")
            .into_iter()
            .map(|event| match event {
                BusEvent::Record(record) => record,
                BusEvent::Rewind { .. } => panic!("the wal never rewinds"),
            })
            .collect()
    }

    #[tokio::test]
    async fn appended_records_survive_reopening_and_are_read_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let bus = open(dir.path()).await;
            let _consumer = bus
                .subscribe("indexer", "test", Sharing::Sole)
                .await
                .expect("subscribe");
            for index in 0..10 {
                bus.append("key", Bytes::from(format!("record {index}")))
                    .await
                    .expect("append");
            }
        }
        let bus = open(dir.path()).await;
        let mut consumer = bus
            .subscribe("indexer", "test", Sharing::Sole)
            .await
            .expect("subscribe");
        let records = poll_all(&mut consumer).await;
        assert_eq!(records.len(), 10);
        assert_eq!(records[3].offset, 3);
        assert_eq!(records[3].payload, Bytes::from("record 3"));
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_append_and_seek_resumes_exactly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = open(dir.path()).await;
        let mut consumer = bus
            .subscribe("retention", "test", Sharing::Sole)
            .await
            .expect("subscribe");
        assert!(poll_all(&mut consumer).await.is_empty());
        let writer = bus.clone();
        let waiter = tokio::spawn(async move { consumer.poll(10, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        writer
            .append("key", Bytes::from_static(b"a"))
            .await
            .expect("append");
        let records = waiter.await.expect("join").expect("poll");
        assert_eq!(records.len(), 1);
        for _ in 0..4 {
            writer
                .append("key", Bytes::from_static(b"b"))
                .await
                .expect("append");
        }
        let mut again = bus
            .subscribe("retention", "test", Sharing::Sole)
            .await
            .expect("subscribe");
        again
            .seek(&Positions([(0, 3)].into_iter().collect()))
            .await
            .expect("seek");
        let offsets: Vec<u64> = poll_all(&mut again)
            .await
            .iter()
            .map(|record| record.offset)
            .collect();
        assert_eq!(offsets, vec![3, 4]);
    }

    #[tokio::test]
    async fn records_are_released_only_after_every_group_checkpointed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = open(dir.path()).await;
        let mut indexer = bus
            .subscribe("indexer", "test", Sharing::Sole)
            .await
            .expect("subscribe");
        let mut retention = bus
            .subscribe("retention", "test", Sharing::Sole)
            .await
            .expect("subscribe");
        for _ in 0..6 {
            bus.append("key", Bytes::from_static(b"x"))
                .await
                .expect("append");
        }
        indexer
            .checkpoint(&Positions([(0, 6)].into_iter().collect()))
            .await
            .expect("checkpoint");
        // Retention has not checkpointed: a fresh reader still sees everything.
        let mut late = bus
            .subscribe("retention", "test", Sharing::Sole)
            .await
            .expect("subscribe");
        assert_eq!(poll_all(&mut late).await.len(), 6);
        retention
            .checkpoint(&Positions([(0, 4)].into_iter().collect()))
            .await
            .expect("checkpoint");
        drop((bus, indexer, retention, late));
        // After a restart, the released records are gone and the checkpoints remain.
        let bus = open(dir.path()).await;
        let mut reader = bus
            .subscribe("retention", "test", Sharing::Sole)
            .await
            .expect("subscribe");
        let offsets: Vec<u64> = poll_all(&mut reader)
            .await
            .iter()
            .map(|record| record.offset)
            .collect();
        assert_eq!(offsets, vec![4, 5]);
    }
}
