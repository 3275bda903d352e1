//! The embedded bus: a durable write-ahead log on local disk, one process only.
//!
//! One partition (0). Records live in segment files (`<dir>/segments`, format in
//! [`segment`]), never in memory: the log holds whatever consumers have not checkpointed, up
//! to a disk budget (`bus.wal.max_disk_bytes`), however long a consumer is stuck. Past the
//! budget, or when the disk is full, appends are refused with [`BusError::Full`], which the
//! doppler answers with `RESOURCE_EXHAUSTED`: agents hold their bounded pending batches and
//! retry, pushing back on their own clients, until consumers catch up or space returns.
//!
//! Durability (`bus.wal.durability`): `fsync` (the default) answers an append once its group
//! of records is written and `fdatasync`ed, so an acknowledged batch survives a power loss;
//! `flush` answers once it is written to the operating system (surviving a crash of the
//! process, not of the machine) and syncs every `sync_interval`. Offsets are assigned here,
//! rise monotonically, and are visible to consumers only once synced, so they never move
//! backwards, power loss or not. The writer runs on its own thread ([`writer`]).
//!
//! Every record stays until every consumer group known to this WAL has checkpointed past
//! it; the groups and their checkpoints live in `groups.json` beside the log, so a group that
//! is down still holds its records back. Whole segments are deleted once released.
//!
//! A WAL written by earlier versions (Quickwit's `mrecordlog`, in `<dir>/records`) is moved
//! into segments, with its offsets, the first time it is opened ([`legacy`]).

mod legacy;
mod recent;
pub mod segment;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tracing::{info, warn};

use self::recent::Recent;
use self::segment::{Cursor, SegmentMap};
use self::writer::{Request, Writer};
use crate::metrics::BusMetrics;
use crate::{Bus, BusError, BusEvent, BusRecord, Consumer, Positions, ReadEvent, Reader, Sharing};

const PARTITION: u32 = 0;

/// Payload bytes one poll returns at most (besides its record count).
const MAX_POLL_BYTES: usize = 32 * 1024 * 1024;

/// When an appended record counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written and synced to the disk (per group of records) before the append returns.
    Fsync,
    /// Written to the operating system before the append returns; synced every `interval`.
    Flush {
        /// Time between syncs.
        interval: Duration,
    },
}

/// How the WAL keeps its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalSettings {
    /// Largest record.
    pub max_record_bytes: usize,
    /// Bytes the log may hold on disk; appends past it are refused until consumers catch up.
    pub max_disk_bytes: u64,
    /// A new segment starts once the current one holds this many bytes.
    pub segment_bytes: u64,
    /// When an append counts as stored.
    pub durability: Durability,
    /// Payload bytes of the latest records kept in memory for readers that keep up.
    pub read_cache_bytes: usize,
}

impl Default for WalSettings {
    fn default() -> WalSettings {
        WalSettings {
            max_record_bytes: 16 * 1024 * 1024,
            max_disk_bytes: 8 * 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            durability: Durability::Fsync,
            read_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The embedded write-ahead-log bus.
#[derive(Clone)]
pub struct WalBus {
    shared: Arc<Shared>,
}

/// What the writer thread, the consumers and the bus share.
struct State {
    segments: std::sync::Mutex<SegmentMap>,
    /// Bytes of every segment on disk.
    disk_bytes: AtomicU64,
    /// The offset after the last record readers may see; consumers wait on it.
    committed: watch::Sender<u64>,
    /// The latest records, for readers at the head of the log.
    recent: Recent,
    metrics: BusMetrics,
}

impl State {
    fn lock_segments(&self) -> std::sync::MutexGuard<'_, SegmentMap> {
        self.segments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Shared {
    state: Arc<State>,
    requests: mpsc::Sender<Request>,
    /// Consumer groups and the offset each has checkpointed up to (exclusive).
    groups: Mutex<BTreeMap<String, u64>>,
    groups_path: PathBuf,
    settings: WalSettings,
}

impl WalBus {
    /// Opens (or creates) the WAL in `dir`, checking and recovering what it holds. Must be
    /// called inside a Tokio runtime (flush mode starts a timer task there).
    pub async fn open(
        dir: &Path,
        settings: WalSettings,
        metrics: BusMetrics,
    ) -> Result<WalBus, BusError> {
        if settings.max_disk_bytes < 2 * settings.segment_bytes
            || settings.segment_bytes < settings.max_record_bytes as u64
        {
            return Err(BusError::Invalid(format!(
                "wal limits do not nest: max_disk_bytes ({}) must be at least twice segment_bytes ({}), which must be at least max_record_bytes ({})",
                settings.max_disk_bytes, settings.segment_bytes, settings.max_record_bytes
            )));
        }
        let dir = dir.to_path_buf();
        let groups_path = dir.join("groups.json");
        let groups = read_groups(&groups_path).await?;
        let opened = {
            let dir = dir.clone();
            let floor = groups.values().copied().max().unwrap_or(0);
            tokio::task::spawn_blocking(move || open_log(&dir, settings, floor))
                .await
                .map_err(|error| BusError::Storage(format!("wal open task failed: {error}")))??
        };
        let OpenedLog {
            segments,
            file,
            segment_first,
            segment_bytes,
            next_offset,
            disk_bytes,
            cut_bytes,
        } = opened;
        metrics.wal_recovered_cut_bytes.inc_by(cut_bytes);
        metrics
            .wal_disk_bytes
            .set(i64::try_from(disk_bytes).unwrap_or(i64::MAX));
        metrics
            .wal_budget_bytes
            .set(i64::try_from(settings.max_disk_bytes).unwrap_or(i64::MAX));
        for (group, checkpoint) in &groups {
            metrics
                .lag(group)
                .set(next_offset.saturating_sub(*checkpoint) as i64);
        }
        info!(dir = %dir.display(), next_offset, disk_bytes, segments = segments.len(), groups = groups.len(), durability = ?settings.durability, "wal opened");
        let (committed, _) = watch::channel(next_offset);
        let state = Arc::new(State {
            segments: std::sync::Mutex::new(segments),
            disk_bytes: AtomicU64::new(disk_bytes),
            committed,
            recent: Recent::new(settings.read_cache_bytes),
            metrics,
        });
        let (requests, receiver) = mpsc::channel(writer::MAX_GROUP);
        let writer = Writer {
            dir: dir.join("segments"),
            settings,
            state: Arc::clone(&state),
            file,
            segment_first,
            segment_bytes,
            next_offset,
            unsynced: false,
            last_sync: Instant::now(),
        };
        std::thread::Builder::new()
            .name("sluice-wal".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(|error| {
                BusError::Storage(format!("failed to start the wal writer: {error}"))
            })?;
        if let Durability::Flush { interval } = settings.durability {
            tokio::spawn(writer::sync_timer(requests.downgrade(), interval));
        }
        Ok(WalBus {
            shared: Arc::new(Shared {
                state,
                requests,
                groups: Mutex::new(groups),
                groups_path,
                settings,
            }),
        })
    }

    /// Bytes the log occupies on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.state.disk_bytes.load(Ordering::Acquire)
    }
}

/// The log as found on disk, ready for the writer.
struct OpenedLog {
    segments: SegmentMap,
    file: std::fs::File,
    segment_first: u64,
    segment_bytes: u64,
    next_offset: u64,
    disk_bytes: u64,
    cut_bytes: u64,
}

/// Recovers the segments (moving a legacy log in first) and opens the last for appending.
/// `floor` is the highest group checkpoint: offsets never restart below it.
fn open_log(dir: &Path, settings: WalSettings, floor: u64) -> Result<OpenedLog, BusError> {
    let segments_dir = dir.join("segments");
    std::fs::create_dir_all(&segments_dir).map_err(|error| {
        BusError::Storage(format!(
            "failed to create wal directory {}: {error}",
            segments_dir.display()
        ))
    })?;
    legacy::migrate(dir, &segments_dir)?;
    let max_payload = settings
        .max_record_bytes
        .max(legacy::MAX_LEGACY_RECORD_BYTES);
    let (mut segments, cut_bytes) = segment::recover(&segments_dir, max_payload)?;
    let disk_end = segments
        .values()
        .next_back()
        .map_or(0, |info| info.visible_end);
    let next_offset = disk_end.max(floor);
    let reuse_last = segments
        .values()
        .next_back()
        .filter(|info| {
            info.visible_end == next_offset && info.visible_bytes < settings.segment_bytes
        })
        .cloned();
    let (file, segment_first, segment_bytes) = match reuse_last {
        Some(info) => {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .read(true)
                .open(&info.path)
                .map_err(|error| {
                    BusError::Storage(format!("failed to open {}: {error}", info.path.display()))
                })?;
            (file, info.first_offset, info.visible_bytes)
        }
        None => {
            let (file, info) = writer::create_segment(&segments_dir, next_offset)?;
            segments.insert(next_offset, info);
            (file, next_offset, 0)
        }
    };
    let disk_bytes = segments.values().map(|info| info.visible_bytes).sum();
    Ok(OpenedLog {
        segments,
        file,
        segment_first,
        segment_bytes,
        next_offset,
        disk_bytes,
        cut_bytes,
    })
}

async fn read_groups(path: &Path) -> Result<BTreeMap<String, u64>, BusError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|error| BusError::Storage(format!("invalid {}: {error}", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(error) => Err(BusError::Storage(format!(
            "failed to read {}: {error}",
            path.display()
        ))),
    }
}

#[async_trait]
impl Bus for WalBus {
    async fn append(&self, _key: &str, payload: Bytes) -> Result<(), BusError> {
        let length = payload.len() as u64;
        let (reply, answer) = oneshot::channel();
        let metrics = &self.shared.state.metrics;
        self.shared
            .requests
            .send(Request::Append { payload, reply })
            .await
            .map_err(|_| BusError::Unavailable("the wal writer stopped".to_owned()))?;
        match answer.await {
            Ok(Ok(_offset)) => {
                metrics.records_appended.inc();
                metrics.bytes_appended.inc_by(length);
                Ok(())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => {
                metrics.append_failures.inc();
                Err(BusError::Unavailable(
                    "the wal writer stopped before answering".to_owned(),
                ))
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
            let first_retained = self
                .shared
                .state
                .lock_segments()
                .values()
                .next()
                .map_or(*self.shared.state.committed.borrow(), |info| {
                    info.first_offset
                });
            groups.insert(group.to_owned(), first_retained);
            write_groups(&self.shared.groups_path, &groups).await?;
        }
        // Until it seeks, a consumer starts where its group has checkpointed.
        let start = groups.get(group).copied().unwrap_or(0);
        Ok(Box::new(WalConsumer {
            group: group.to_owned(),
            tail: Tail {
                shared: Arc::clone(&self.shared),
                cursor: Some(Cursor::at(start)),
                committed: self.shared.state.committed.subscribe(),
            },
            lag: self.shared.state.metrics.lag(group),
        }))
    }

    fn kind(&self) -> &'static str {
        "wal"
    }

    async fn reader(&self, from: &Positions) -> Result<Box<dyn Reader>, BusError> {
        Ok(Box::new(WalReader {
            tail: Tail {
                shared: Arc::clone(&self.shared),
                cursor: Some(Cursor::at(from.next_offset(PARTITION))),
                committed: self.shared.state.committed.subscribe(),
            },
        }))
    }

    async fn end_positions(&self) -> Result<Positions, BusError> {
        let end = *self.shared.state.committed.borrow();
        Ok(Positions([(PARTITION, end)].into_iter().collect()))
    }

    async fn group_positions(&self, group: &str) -> Result<Positions, BusError> {
        let groups = self.shared.groups.lock().await;
        Ok(Positions(
            groups
                .get(group)
                .map(|offset| (PARTITION, *offset))
                .into_iter()
                .collect(),
        ))
    }
}

/// A cursor over the log that waits for new records: what consumers and readers share.
struct Tail {
    shared: Arc<Shared>,
    /// Taken while a read runs on a blocking thread.
    cursor: Option<Cursor>,
    committed: watch::Receiver<u64>,
}

impl Tail {
    /// Up to `max_records` records from the cursor on, waiting up to `max_wait` for the first,
    /// and the offsets skipped because they were released before the cursor reached them.
    ///
    /// Cancel-safe: a read in progress keeps the cursor on its blocking thread only while it
    /// runs; if the poll is dropped meanwhile the cursor is found again by offset.
    async fn read(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<segment::Read, BusError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Mark the current commit as seen *before* reading, so a commit that lands
            // between the read and the wait still wakes us.
            let committed = *self.committed.borrow_and_update();
            let mut cursor = self.cursor.take().unwrap_or_default();
            let next_offset = cursor.next_offset;
            if let Some(entries) =
                self.shared
                    .state
                    .recent
                    .read(next_offset, committed, max_records, MAX_POLL_BYTES)
                && let Some(last) = entries.last()
            {
                cursor.follow(last.offset + 1, last.segment_first, last.end);
                self.cursor = Some(cursor);
                self.shared.state.metrics.wal_read("memory", entries.len());
                return Ok(segment::Read {
                    records: entries
                        .into_iter()
                        .map(|entry| (entry.offset, entry.payload))
                        .collect(),
                    skipped: None,
                });
            }
            if next_offset < committed {
                let state = Arc::clone(&self.shared.state);
                let max_payload = self
                    .shared
                    .settings
                    .max_record_bytes
                    .max(legacy::MAX_LEGACY_RECORD_BYTES);
                // If this poll is dropped while the read runs, the next one starts a fresh
                // cursor at the same offset (records are delivered once the read returns).
                self.cursor = Some(Cursor::at(next_offset));
                let (cursor, read) = tokio::task::spawn_blocking(move || {
                    let read =
                        cursor.read(&state.segments, max_records, MAX_POLL_BYTES, max_payload);
                    (cursor, read)
                })
                .await
                .map_err(|error| BusError::Storage(format!("wal read task failed: {error}")))?;
                let read = read?;
                self.cursor = Some(cursor);
                self.shared
                    .state
                    .metrics
                    .wal_read("disk", read.records.len());
                if !read.records.is_empty() || read.skipped.is_some() {
                    return Ok(read);
                }
            } else {
                self.cursor = Some(cursor);
            }
            match tokio::time::timeout_at(deadline, self.committed.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(BusError::Unavailable("wal closed".to_owned())),
                Err(_elapsed) => return Ok(segment::Read::default()),
            }
        }
    }
}

fn record(offset: u64, payload: Bytes) -> BusRecord {
    BusRecord {
        partition: PARTITION,
        offset,
        payload,
    }
}

/// A reader of the WAL outside every group (see [`Bus::reader`]).
struct WalReader {
    tail: Tail,
}

#[async_trait]
impl Reader for WalReader {
    async fn poll(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<ReadEvent>, BusError> {
        let read = self.tail.read(max_records, max_wait).await?;
        let gap = read.skipped.map(|(from, to)| ReadEvent::Gap {
            partition: PARTITION,
            from,
            to,
        });
        Ok(gap
            .into_iter()
            .chain(
                read.records
                    .into_iter()
                    .map(|(offset, payload)| ReadEvent::Record(record(offset, payload))),
            )
            .collect())
    }
}

struct WalConsumer {
    group: String,
    tail: Tail,
    lag: Gauge,
}

#[async_trait]
impl Consumer for WalConsumer {
    async fn seek(&mut self, positions: &Positions) -> Result<(), BusError> {
        self.tail
            .cursor
            .get_or_insert_with(Cursor::default)
            .reset(positions.next_offset(PARTITION));
        Ok(())
    }

    async fn poll(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<BusEvent>, BusError> {
        let read = self.tail.read(max_records, max_wait).await?;
        if let Some((wanted, found)) = read.skipped {
            warn!(group = %self.group, expected = wanted, found, "wal records were released before this group read them");
        }
        Ok(read
            .records
            .into_iter()
            .map(|(offset, payload)| BusEvent::Record(record(offset, payload)))
            .collect())
    }

    async fn checkpoint(&mut self, positions: &Positions) -> Result<(), BusError> {
        let offset = positions.next_offset(PARTITION);
        let mut groups = self.tail.shared.groups.lock().await;
        let previous = groups.get(&self.group).copied().unwrap_or(0);
        if offset <= previous {
            return Ok(());
        }
        groups.insert(self.group.clone(), offset);
        let committed = *self.tail.shared.state.committed.borrow();
        self.lag.set(committed.saturating_sub(offset) as i64);
        let releasable = groups.values().copied().min().unwrap_or(0);
        // Release first, then record the checkpoint: on a full disk, writing `groups.json`
        // needs the room that releasing makes. Releasing on the in-memory checkpoint is safe:
        // every consumer resumes from its own durable positions, which are past it.
        self.release(releasable).await?;
        write_groups(&self.tail.shared.groups_path, &groups).await
    }
}

impl WalConsumer {
    /// Deletes every segment whose records all lie below `releasable` (never the last, which
    /// the writer appends to).
    async fn release(&self, releasable: u64) -> Result<(), BusError> {
        let doomed: Vec<(PathBuf, u64)> = {
            let mut segments = self.tail.shared.state.lock_segments();
            let firsts: Vec<u64> = segments.keys().copied().collect();
            let mut doomed = Vec::new();
            for pair in firsts.windows(2) {
                let [first, next_first] = [pair[0], pair[1]];
                if next_first > releasable {
                    break;
                }
                if let Some(info) = segments.remove(&first) {
                    doomed.push((info.path, info.visible_bytes));
                }
            }
            doomed
        };
        if doomed.is_empty() {
            return Ok(());
        }
        let freed: u64 = doomed.iter().map(|(_, bytes)| bytes).sum();
        let state = &self.tail.shared.state;
        let total = state.disk_bytes.fetch_sub(freed, Ordering::AcqRel) - freed;
        state
            .metrics
            .wal_disk_bytes
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        tokio::task::spawn_blocking(move || {
            for (path, _) in doomed {
                // A reader may still have it open; the file goes once it closes it.
                if let Err(error) = std::fs::remove_file(&path) {
                    warn!(segment = %path.display(), error = %error, "failed to delete a released wal segment");
                }
            }
        })
        .await
        .map_err(|error| BusError::Storage(format!("wal release task failed: {error}")))
    }
}

/// Writes the group checkpoints atomically: temporary file, fsync, rename.
async fn write_groups(path: &Path, groups: &BTreeMap<String, u64>) -> Result<(), BusError> {
    let text =
        serde_json::to_vec(groups).map_err(|error| BusError::Storage(format!("{error:?}")))?;
    let temporary = path.with_extension("json.tmp");
    let write = async {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
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
        WalBus::open(
            dir,
            WalSettings::default(),
            BusMetrics::register(&Telemetry::new()),
        )
        .await
        .expect("open wal")
    }

    /// A sole consumer of `group`.
    async fn sole_consumer(bus: &WalBus, group: &str) -> Box<dyn Consumer> {
        bus.subscribe(group, "test", Sharing::Sole)
            .await
            .expect("subscribe")
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
            let _consumer = sole_consumer(&bus, "indexer").await;
            for index in 0..10 {
                bus.append("key", Bytes::from(format!("record {index}")))
                    .await
                    .expect("append");
            }
        }
        let bus = open(dir.path()).await;
        let mut consumer = sole_consumer(&bus, "indexer").await;
        let records = poll_all(&mut consumer).await;
        assert_eq!(records.len(), 10);
        assert_eq!(records[3].offset, 3);
        assert_eq!(records[3].payload, Bytes::from("record 3"));
    }

    /// Readers that keep up are served from memory, one that fell behind the cache from disk,
    /// and a reader that moves between the two (across segment rolls) sees every record once,
    /// in order, whichever source served it.
    #[tokio::test]
    async fn readers_move_between_the_memory_cache_and_the_segment_files_without_a_seam() {
        let dir = tempfile::tempdir().expect("temp dir");
        let telemetry = Telemetry::new();
        let metrics = BusMetrics::register(&telemetry);
        let bus = WalBus::open(
            dir.path(),
            WalSettings {
                max_record_bytes: 1024,
                segment_bytes: 4 * 1024,
                max_disk_bytes: 1024 * 1024,
                // About 20 records of 100 bytes.
                read_cache_bytes: 2_000,
                ..WalSettings::default()
            },
            metrics.clone(),
        )
        .await
        .expect("open");
        let mut consumer = sole_consumer(&bus, "indexer").await;
        let payload = |index: usize| Bytes::from(format!("{index:0>100}"));
        let mut seen = Vec::new();
        let mut next = 0;
        // Rounds of appends larger and smaller than the cache, read in between.
        for round in [5_usize, 50, 3, 120, 19, 1, 64] {
            for _ in 0..round {
                bus.append("key", payload(next)).await.expect("append");
                next += 1;
            }
            loop {
                let records = consumer
                    .poll(7, Duration::from_millis(10))
                    .await
                    .expect("poll");
                if records.is_empty() {
                    break;
                }
                for event in records {
                    let BusEvent::Record(record) = event else {
                        panic!("the wal never rewinds");
                    };
                    seen.push((record.offset, record.payload));
                }
            }
        }
        assert_eq!(seen.len(), next);
        for (index, (offset, data)) in seen.iter().enumerate() {
            assert_eq!(*offset, index as u64);
            assert_eq!(*data, payload(index));
        }
        let read = |from: &str| {
            metrics
                .wal_records_read
                .get_or_create(&vec![("from".to_owned(), from.to_owned())])
                .get()
        };
        assert!(read("memory") > 0, "no read was served from memory");
        assert!(read("disk") > 0, "no read went to disk");
        assert_eq!(read("memory") + read("disk"), next as u64);
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_append_and_seek_resumes_exactly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = open(dir.path()).await;
        let mut consumer = sole_consumer(&bus, "retention").await;
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
        let mut again = sole_consumer(&bus, "retention").await;
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
        let mut indexer = sole_consumer(&bus, "indexer").await;
        let mut retention = sole_consumer(&bus, "retention").await;
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
        let mut late = sole_consumer(&bus, "retention").await;
        assert_eq!(poll_all(&mut late).await.len(), 6);
        retention
            .checkpoint(&Positions([(0, 4)].into_iter().collect()))
            .await
            .expect("checkpoint");
        drop((bus, indexer, retention, late));
        // After a restart, the released records are gone and the checkpoints remain.
        let bus = open(dir.path()).await;
        let mut reader = sole_consumer(&bus, "retention").await;
        let offsets: Vec<u64> = poll_all(&mut reader)
            .await
            .iter()
            .map(|record| record.offset)
            .collect();
        assert_eq!(offsets, vec![4, 5]);
    }

    /// A reader belongs to no group: it reads from any offset, holds nothing back (the
    /// groups' checkpoints alone release segments), waits for appends, and reports the
    /// records released before it reached them as a gap instead of skipping them silently.
    #[tokio::test]
    async fn a_reader_holds_nothing_back_and_reports_released_records_as_a_gap() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = WalBus::open(
            dir.path(),
            settings(64 * 1024, 1024),
            BusMetrics::register(&Telemetry::new()),
        )
        .await
        .expect("open");
        let mut indexer = sole_consumer(&bus, "indexer").await;
        for index in 0..40 {
            bus.append(
                "key",
                Bytes::from(format!("record {index:03} {}", "x".repeat(90))),
            )
            .await
            .expect("append");
        }
        assert_eq!(
            bus.end_positions().await.expect("end"),
            Positions([(0, 40)].into_iter().collect())
        );
        let mut early = bus
            .reader(&Positions([(0, 2)].into_iter().collect()))
            .await
            .expect("reader");
        let first = early.poll(3, Duration::from_secs(5)).await.expect("poll");
        let offsets: Vec<u64> = first
            .iter()
            .map(|event| match event {
                ReadEvent::Record(record) => record.offset,
                ReadEvent::Gap { .. } => panic!("nothing was released yet"),
            })
            .collect();
        assert_eq!(offsets, vec![2, 3, 4]);

        // The only group checkpoints past most of the log: segments go although the reader
        // has not read them.
        indexer
            .checkpoint(&Positions([(0, 30)].into_iter().collect()))
            .await
            .expect("checkpoint");
        assert_eq!(
            bus.group_positions("indexer").await.expect("group"),
            Positions([(0, 30)].into_iter().collect())
        );
        let mut events = Vec::new();
        while !events
            .iter()
            .any(|event| matches!(event, ReadEvent::Record(record) if record.offset == 39))
        {
            events.extend(early.poll(100, Duration::from_secs(5)).await.expect("poll"));
        }
        // Whatever the reader still had open it reads to its end; then the gap; then the
        // rest, every offset once, in order.
        let mut expected = 5;
        let mut gaps = Vec::new();
        for event in &events {
            match event {
                ReadEvent::Record(record) => {
                    assert_eq!(record.offset, expected);
                    expected += 1;
                }
                ReadEvent::Gap {
                    partition,
                    from,
                    to,
                } => {
                    assert_eq!((*partition, *from), (0, expected));
                    gaps.push((*from, *to));
                    expected = *to;
                }
            }
        }
        assert_eq!(expected, 40);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(
            gaps[0].1 <= 30,
            "released only below the checkpoint: {gaps:?}"
        );

        // Live: a waiting reader wakes on the next append.
        let writer = bus.clone();
        let waiter = tokio::spawn(async move { early.poll(10, Duration::from_secs(10)).await });
        writer
            .append("key", Bytes::from_static(b"live"))
            .await
            .expect("append");
        let live = waiter.await.expect("join").expect("poll");
        assert!(
            matches!(&live[..], [ReadEvent::Record(record)] if record.offset == 40 && record.payload == Bytes::from_static(b"live"))
        );
    }

    fn settings(max_disk_bytes: u64, segment_bytes: u64) -> WalSettings {
        WalSettings {
            max_record_bytes: 1024,
            max_disk_bytes,
            segment_bytes,
            durability: Durability::Fsync,
            // These tests are about the segment files: every read goes to disk.
            read_cache_bytes: 0,
        }
    }

    /// Regression: the WAL kept every unreleased record in memory, so a stuck consumer grew
    /// the process without bound. Records now live in segment files only, up to a disk
    /// budget: past it appends are refused with `Full` (retryable), and once the consumers
    /// checkpoint, whole segments are deleted and appends succeed again.
    #[tokio::test]
    async fn regression_a_stuck_consumer_fills_the_disk_budget_not_memory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let telemetry = Telemetry::new();
        let bus = WalBus::open(
            dir.path(),
            settings(64 * 1024, 8 * 1024),
            BusMetrics::register(&telemetry),
        )
        .await
        .expect("open");
        let mut consumer = sole_consumer(&bus, "indexer").await;
        let record = Bytes::from(vec![b'r'; 1000]);
        let mut stored = 0_u64;
        let refusal = loop {
            match bus.append("key", record.clone()).await {
                Ok(()) => stored += 1,
                Err(error) => break error,
            }
            assert!(stored < 1_000, "the budget never refused an append");
        };
        assert!(matches!(refusal, BusError::Full(_)), "{refusal:?}");
        assert_eq!(
            sluice_common::SluiceError::from(refusal).kind(),
            sluice_common::ErrorKind::ResourceExhausted
        );
        // 1,016 bytes a record within a 64 KiB budget.
        assert_eq!(stored, 64 * 1024 / 1_016);
        assert!(bus.disk_bytes() <= 64 * 1024);
        let segments = std::fs::read_dir(dir.path().join("segments"))
            .expect("segments")
            .count();
        assert!(segments >= 7, "{segments} segment files");
        let text = telemetry.encode();
        assert!(
            text.contains("sluice_bus_wal_refused_records_total{reason=\"budget\"} 1"),
            "{text}"
        );
        // The consumer catches up: segments go, and there is room again.
        let records = poll_all(&mut consumer).await;
        assert_eq!(records.len() as u64, stored);
        consumer
            .checkpoint(&Positions([(0, stored)].into_iter().collect()))
            .await
            .expect("checkpoint");
        assert!(
            bus.disk_bytes() < 16 * 1024,
            "{} bytes left",
            bus.disk_bytes()
        );
        bus.append("key", record.clone()).await.expect("room again");
        let next = poll_all(&mut consumer).await;
        assert_eq!(
            next.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![stored]
        );
    }

    /// Regression: positions were picked by the log at append and could move backwards after
    /// losing a tail. Offsets are now assigned by the WAL, never below a group's checkpoint,
    /// and a torn tail is cut at the last whole record: after a crash that tore the last
    /// record, reopening resumes at the next offset of what survived, and later appends never
    /// reuse a checkpointed offset.
    #[tokio::test]
    async fn regression_offsets_never_move_backwards_after_a_torn_tail() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let bus = open(dir.path()).await;
            let mut consumer = sole_consumer(&bus, "indexer").await;
            for index in 0..5 {
                bus.append("key", Bytes::from(format!("record {index}")))
                    .await
                    .expect("append");
            }
            consumer
                .checkpoint(&Positions([(0, 5)].into_iter().collect()))
                .await
                .expect("checkpoint");
        }
        // Tear the last record in two, as a power loss mid-write would.
        let segment = std::fs::read_dir(dir.path().join("segments"))
            .expect("segments")
            .map(|entry| entry.expect("entry").path())
            .max()
            .expect("a segment");
        let length = std::fs::metadata(&segment).expect("size").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .and_then(|file| file.set_len(length - 3))
            .expect("tear");
        let bus = open(dir.path()).await;
        bus.append("key", Bytes::from_static(b"after the crash"))
            .await
            .expect("append");
        let mut reader = sole_consumer(&bus, "retention").await;
        let records = poll_all(&mut reader).await;
        let last = records.last().expect("records");
        assert_eq!(last.payload, Bytes::from_static(b"after the crash"));
        assert!(
            last.offset >= 5,
            "offset {} reused a checkpointed one",
            last.offset
        );
        let offsets: Vec<u64> = records.iter().map(|record| record.offset).collect();
        assert!(
            offsets.windows(2).all(|pair| pair[0] < pair[1]),
            "{offsets:?}"
        );
    }

    /// With `flush`, an append returns once written, and consumers see it after the next
    /// sync; with `fsync`, at once.
    #[tokio::test]
    async fn flush_mode_makes_records_visible_at_the_next_sync() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = WalBus::open(
            dir.path(),
            WalSettings {
                durability: Durability::Flush {
                    interval: Duration::from_millis(50),
                },
                ..WalSettings::default()
            },
            BusMetrics::register(&Telemetry::new()),
        )
        .await
        .expect("open");
        let mut consumer = sole_consumer(&bus, "indexer").await;
        bus.append("key", Bytes::from_static(b"a"))
            .await
            .expect("append");
        let records = consumer
            .poll(10, Duration::from_secs(5))
            .await
            .expect("poll");
        assert_eq!(records.len(), 1);
    }

    /// Compatibility: a WAL written by the previous format (mrecordlog in `records/`) is moved
    /// into segments with its offsets, its group checkpoints kept.
    #[tokio::test]
    async fn a_legacy_wal_is_migrated_with_its_offsets() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            std::fs::create_dir_all(dir.path().join("records")).expect("dir");
            let mut log = mrecordlog::MultiRecordLog::open(&dir.path().join("records"))
                .await
                .expect("legacy log");
            log.create_queue("envelopes").await.expect("queue");
            for index in 0..7 {
                log.append_record("envelopes", None, Bytes::from(format!("old {index}")))
                    .await
                    .expect("append");
            }
            log.truncate("envelopes", 2).await.expect("release 0..=2");
            std::fs::write(dir.path().join("groups.json"), r#"{"indexer":3}"#).expect("groups");
        }
        let bus = open(dir.path()).await;
        assert!(!dir.path().join("records").exists());
        let mut consumer = sole_consumer(&bus, "indexer").await;
        consumer
            .seek(&Positions([(0, 3)].into_iter().collect()))
            .await
            .expect("seek");
        bus.append("key", Bytes::from_static(b"new"))
            .await
            .expect("append");
        let records = poll_all(&mut consumer).await;
        let seen: Vec<(u64, String)> = records
            .iter()
            .map(|record| {
                (
                    record.offset,
                    String::from_utf8_lossy(&record.payload).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (3, "old 3".to_owned()),
                (4, "old 4".to_owned()),
                (5, "old 5".to_owned()),
                (6, "old 6".to_owned()),
                (7, "new".to_owned()),
            ]
        );
    }

    /// Compatibility: a segment written by this version (committed under `tests/fixtures`)
    /// is read by every later one.
    #[tokio::test]
    async fn the_committed_segment_fixture_reads_back() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal-v1");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("segments")).expect("dir");
        for name in ["groups.json", "segments/00000000000000000010.wal"] {
            std::fs::copy(fixture.join(name), dir.path().join(name)).expect("copy fixture");
        }
        let bus = open(dir.path()).await;
        let mut consumer = sole_consumer(&bus, "indexer").await;
        consumer
            .seek(&Positions([(0, 10)].into_iter().collect()))
            .await
            .expect("seek");
        let records = poll_all(&mut consumer).await;
        let seen: Vec<(u64, Bytes)> = records
            .into_iter()
            .map(|record| (record.offset, record.payload))
            .collect();
        assert_eq!(
            seen,
            vec![
                (10, Bytes::from_static(b"fixture record 10")),
                (11, Bytes::from_static(b"fixture record 11")),
                (12, Bytes::from_static(b"fixture record 12")),
            ]
        );
    }
}
