//! The indexing pipeline: consume → decode and index → commit and checkpoint.
//!
//! The async consumer task polls the bus and sends records over a bounded channel to the
//! indexing thread (Tantivy's writes and commits block, so they stay off the async runtime).
//! The thread commits every `commit_interval`, writes `checkpoint.json`, and reports the
//! committed positions back; only then does the consumer checkpoint the bus. When the channel
//! is full the consumer stops polling: backpressure, not memory growth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use std::ops::Bound;

use crate::config::IndexerConfig;
use sluice_bus::dedup::Deduplicator;
use sluice_bus::{Bus, BusEvent, BusRecord, Positions, Sharing};
use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use sluice_common::telemetry::Telemetry;
use sluice_common::time::Hour;
use sluice_proto::v1::AgentBatch;
use tantivy::query::{BooleanQuery, RangeQuery, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{Index, IndexWriter, TantivyDocument, Term};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::metrics::IndexerMetrics;
use crate::patterns::{Templates, templates_path};
use crate::schema::Origin;
use crate::store::IndexStore;

/// How often the indexer looks for hours to expire.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(10);

/// The bus consumer group of indexers.
pub const CONSUMER_GROUP: &str = "indexer";

/// Recent batches remembered to drop a second copy of one (see [`Deduplicator`]).
const DEDUP_CAPACITY: usize = 100_000;

enum StageInput {
    Records(Vec<BusRecord>),
    /// Drop the data of `partition` from offset `to` on (see [`BusEvent::Rewind`]).
    Rewind {
        partition: u32,
        to: u64,
    },
    /// Sent every commit interval so an idle indexer still commits on time.
    Tick,
}

/// Runs the indexer until `shutdown` fires, then commits what it holds. `sharing` says whether
/// it shares the bus partitions with other indexers or reads them all.
///
/// A failure (a disk that is full, an index that cannot be written) does not end it: what it
/// had not committed is dropped, and after a pause (1 s, doubling up to 30 s) it starts again
/// from its last commit, re-reading the rest from the bus, which keeps every record until the
/// indexer checkpoints it. Meanwhile the bus fills and pushes back on dopplers and agents, so
/// nothing acknowledged is lost, and the indexer catches up by itself once the cause is gone.
pub async fn run(
    config: IndexerConfig,
    bus: Arc<dyn Bus>,
    sharing: Sharing,
    telemetry: Telemetry,
    mut shutdown: Shutdown,
) -> Result<(), SluiceError> {
    let metrics = IndexerMetrics::register(&telemetry);
    let mut pause = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let error = match run_once(&config, &bus, sharing, &metrics, shutdown.clone()).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if started.elapsed() > Duration::from_secs(60) {
            pause = Duration::from_secs(1);
        }
        metrics.restarts.inc();
        warn!(%error, pause_ms = pause.as_millis() as u64, "the indexer failed; starting again from its last commit");
        tokio::select! {
            () = shutdown.wait() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

async fn run_once(
    config: &IndexerConfig,
    bus: &Arc<dyn Bus>,
    sharing: Sharing,
    metrics: &IndexerMetrics,
    mut shutdown: Shutdown,
) -> Result<(), SluiceError> {
    let metrics = metrics.clone();
    let store = IndexStore::new(&config.dir);
    std::fs::create_dir_all(&config.dir).map_err(|error| {
        SluiceError::internal(format!(
            "failed to create index directory {}: {error}",
            config.dir.display()
        ))
    })?;
    let checkpoint_path = config.dir.join("checkpoint.json");
    let resume = read_checkpoint(&checkpoint_path)?;
    let member = member_id(&config.dir)?;
    let mut consumer = bus.subscribe(CONSUMER_GROUP, &member, sharing).await?;
    consumer.seek(&resume).await?;
    info!(dir = %config.dir.display(), resume = %resume.to_json(), "indexer starting");

    let (input, stage_input) = mpsc::channel::<StageInput>(16);
    let (committed_sender, mut committed) = watch::channel(resume.clone());
    let stage = IndexingStage {
        store,
        hours: BTreeMap::new(),
        consumed: resume.clone(),
        checkpointed: resume,
        checkpoint_path,
        commit_interval: config.commit_interval,
        writer_memory_bytes: config.writer_memory_bytes,
        close_idle_writer_after: config.close_idle_writer_after,
        max_open_writers: config.max_open_writers,
        last_commit: Instant::now(),
        last_size_update: Instant::now(),
        max_age: config.max_age,
        max_disk_bytes: config.max_disk_bytes,
        last_expiry: None,
        metrics,
        committed: committed_sender,
        dedup: Deduplicator::new(DEDUP_CAPACITY),
        templates: Templates::load(&templates_path(&config.dir))?,
        templates_path: templates_path(&config.dir),
    };
    let thread = std::thread::Builder::new()
        .name("sluice-indexer".to_owned())
        .spawn(move || stage.run(stage_input))
        .map_err(|error| {
            SluiceError::internal(format!("failed to start the indexing thread: {error}"))
        })?;

    let mut ticker = tokio::time::interval(config.commit_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome: Result<(), SluiceError> = loop {
        tokio::select! {
            () = shutdown.wait() => break Ok(()),
            _ = ticker.tick() => {
                if input.send(StageInput::Tick).await.is_err() {
                    break Err(SluiceError::internal("the indexing thread stopped"));
                }
            }
            changed = committed.changed() => {
                if changed.is_err() {
                    break Err(SluiceError::internal("the indexing thread stopped"));
                }
                let positions = committed.borrow_and_update().clone();
                if let Err(error) = consumer.checkpoint(&positions).await {
                    warn!(error = %error, "failed to checkpoint the bus; records are kept longer");
                }
            }
            polled = consumer.poll(1_000, Duration::from_millis(250)) => {
                match polled {
                    Ok(events) => {
                        if forward(&input, events).await.is_err() {
                            break Err(SluiceError::internal("the indexing thread stopped"));
                        }
                    }
                    Err(error) => {
                        warn!(error = %error, "failed to read the bus, retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    };
    // Closing the channel makes the thread commit everything and return.
    drop(input);
    let joined = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|error| {
            SluiceError::internal(format!("failed to join the indexing thread: {error}"))
        })?;
    let stage_result = joined.map_err(|_| SluiceError::internal("the indexing thread panicked"))?;
    let final_positions = committed.borrow().clone();
    if let Err(error) = consumer.checkpoint(&final_positions).await {
        warn!(error = %error, "failed to checkpoint the bus at shutdown");
    }
    consumer.close().await;
    // The thread's own error says more than "the thread stopped".
    stage_result.and(outcome)
}

/// Hands polled events to the indexing thread in order: runs of records as one message.
async fn forward(
    input: &mpsc::Sender<StageInput>,
    events: Vec<BusEvent>,
) -> Result<(), mpsc::error::SendError<StageInput>> {
    let mut records = Vec::new();
    for event in events {
        match event {
            BusEvent::Record(record) => records.push(record),
            BusEvent::Rewind { partition, to } => {
                if !records.is_empty() {
                    input
                        .send(StageInput::Records(std::mem::take(&mut records)))
                        .await?;
                }
                input.send(StageInput::Rewind { partition, to }).await?;
            }
        }
    }
    if !records.is_empty() {
        input.send(StageInput::Records(records)).await?;
    }
    Ok(())
}

/// This indexer's durable name in its consumer group, kept in `<dir>/member-id`.
fn member_id(dir: &Path) -> Result<String, SluiceError> {
    use std::hash::{BuildHasher, Hasher};
    let path = dir.join("member-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(SluiceError::internal(format!(
                "failed to read {}: {error}",
                path.display()
            )));
        }
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    let id = format!("indexer-{:016x}", hasher.finish());
    write_atomically(&path, id.as_bytes())?;
    Ok(id)
}

/// Reads `checkpoint.json`; a missing file means "from the beginning".
pub fn read_checkpoint(path: &Path) -> Result<Positions, SluiceError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Positions::from_json(&text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Positions::default()),
        Err(error) => Err(SluiceError::internal(format!(
            "failed to read {}: {error}",
            path.display()
        ))),
    }
}

fn write_checkpoint(path: &Path, positions: &Positions) -> Result<(), SluiceError> {
    write_atomically(path, positions.to_json().as_bytes())
}

/// Writes a small file atomically: temporary file, fsync, rename.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), SluiceError> {
    use std::io::Write;
    let temporary = path.with_extension("tmp");
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.map_err(|error| {
        SluiceError::internal(format!("failed to write {}: {error}", path.display()))
    })
}

struct HourState {
    index: Index,
    writer: Option<IndexWriter<TantivyDocument>>,
    /// The positions stored in this hour's last commit payload.
    committed: Positions,
    dirty: bool,
    last_write: Instant,
}

impl HourState {
    /// The hour's writer, opened on first use.
    fn writer(
        &mut self,
        hour: Hour,
        memory_bytes: usize,
    ) -> Result<&IndexWriter<TantivyDocument>, SluiceError> {
        if self.writer.is_none() {
            let writer = self
                .index
                .writer_with_num_threads(1, memory_bytes)
                .map_err(|error| {
                    SluiceError::internal(format!(
                        "failed to open index writer for {}: {error}",
                        hour.partition_name()
                    ))
                })?;
            self.writer = Some(writer);
        }
        self.writer
            .as_ref()
            .ok_or_else(|| SluiceError::internal("index writer vanished"))
    }
}

/// Commits `state`'s writer with `payload` (the JSON of `positions`), which then become the
/// hour's committed positions.
fn commit_hour(
    hour: Hour,
    state: &mut HourState,
    payload: &str,
    positions: &Positions,
) -> Result<(), SluiceError> {
    let Some(writer) = state.writer.as_mut() else {
        return Ok(());
    };
    let failed = |error: tantivy::TantivyError| {
        SluiceError::internal(format!(
            "failed to commit index partition {}: {error}",
            hour.partition_name()
        ))
    };
    let mut prepared = writer.prepare_commit().map_err(failed)?;
    prepared.set_payload(payload);
    prepared.commit().map_err(failed)?;
    state.committed = positions.clone();
    state.dirty = false;
    Ok(())
}

struct IndexingStage {
    store: IndexStore,
    hours: BTreeMap<Hour, HourState>,
    /// Positions after the last record handed to the writers.
    consumed: Positions,
    /// Positions in `checkpoint.json`.
    checkpointed: Positions,
    checkpoint_path: PathBuf,
    commit_interval: Duration,
    writer_memory_bytes: usize,
    close_idle_writer_after: Duration,
    max_open_writers: usize,
    last_commit: Instant,
    last_size_update: Instant,
    /// Expiry: hours past this age go.
    max_age: Option<Duration>,
    /// Expiry: past this many bytes the oldest hours go.
    max_disk_bytes: Option<u64>,
    last_expiry: Option<Instant>,
    metrics: IndexerMetrics,
    committed: watch::Sender<Positions>,
    dedup: Deduplicator,
    /// The pattern templates seen, saved at each commit before the checkpoint.
    templates: Templates,
    templates_path: PathBuf,
}

impl IndexingStage {
    fn run(mut self, mut input: mpsc::Receiver<StageInput>) -> Result<(), SluiceError> {
        while let Some(message) = input.blocking_recv() {
            match message {
                StageInput::Records(records) => {
                    for record in &records {
                        self.index_record(record)?;
                    }
                }
                StageInput::Rewind { partition, to } => self.rewind(partition, to)?,
                StageInput::Tick => {}
            }
            if self.last_commit.elapsed() >= self.commit_interval {
                self.commit()?;
            }
            if self
                .last_expiry
                .is_none_or(|last| last.elapsed() >= EXPIRY_INTERVAL)
            {
                self.expire()?;
            }
        }
        self.commit()?;
        self.templates.save(&self.templates_path, true)
    }

    /// Deletes the hours past `max_age`, then, past `max_disk_bytes`, the oldest others but
    /// the newest, each counted and logged. What an open writer of a deleted hour had not
    /// committed goes with it.
    fn expire(&mut self) -> Result<(), SluiceError> {
        self.last_expiry = Some(Instant::now());
        if self.max_age.is_none() && self.max_disk_bytes.is_none() {
            return Ok(());
        }
        let hours = self.store.list()?;
        let now = sluice_common::time::now_nanos();
        let mut doomed: Vec<(Hour, &'static str)> = Vec::new();
        if let Some(max_age) = self.max_age {
            let cutoff = now.saturating_sub(i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX));
            doomed.extend(
                hours
                    .iter()
                    .filter(|hour| hour.end_nanos() <= cutoff)
                    .map(|hour| (*hour, "age")),
            );
        }
        if let Some(limit) = self.max_disk_bytes {
            let mut total = self.store.disk_bytes();
            for (hour, _) in &doomed {
                total = total.saturating_sub(self.store.hour_bytes(*hour));
            }
            let candidates: Vec<Hour> = hours
                .iter()
                .take(hours.len().saturating_sub(1))
                .filter(|hour| !doomed.iter().any(|(doomed, _)| doomed == *hour))
                .copied()
                .collect();
            for hour in candidates {
                if total <= limit {
                    break;
                }
                total = total.saturating_sub(self.store.hour_bytes(hour));
                doomed.push((hour, "disk"));
            }
        }
        for (hour, reason) in doomed {
            let documents = match self.hours.remove(&hour) {
                Some(state) => {
                    let count = state
                        .index
                        .reader()
                        .map_or(0, |reader| reader.searcher().num_docs());
                    // Its writer (and what it had not committed) goes first.
                    drop(state);
                    count
                }
                None => self
                    .store
                    .open(hour)
                    .ok()
                    .and_then(|index| index.reader().ok())
                    .map_or(0, |reader| reader.searcher().num_docs()),
            };
            self.store.delete(hour)?;
            let labels = vec![("reason".to_owned(), reason.to_owned())];
            self.metrics.hours_deleted.get_or_create(&labels).inc();
            self.metrics
                .documents_deleted
                .get_or_create(&labels)
                .inc_by(documents);
            if reason == "disk" {
                warn!(hour = %hour.partition_name(), documents, limit = self.max_disk_bytes, "deleted an index hour: the index is past indexer.max_disk_bytes");
            } else {
                info!(hour = %hour.partition_name(), documents, "deleted an index hour past indexer.max_age");
            }
        }
        Ok(())
    }

    fn hour_state(&mut self, hour: Hour) -> Result<&mut HourState, SluiceError> {
        if !self.hours.contains_key(&hour) {
            let index = self.store.open_or_create(hour)?;
            let metas = index.load_metas().map_err(|error| {
                SluiceError::internal(format!(
                    "failed to read index partition {}: {error}",
                    hour.partition_name()
                ))
            })?;
            let committed = match metas.payload {
                Some(payload) => Positions::from_json(&payload)?,
                None => Positions::default(),
            };
            self.hours.insert(
                hour,
                HourState {
                    index,
                    writer: None,
                    committed,
                    dirty: false,
                    last_write: Instant::now(),
                },
            );
        }
        self.hours
            .get_mut(&hour)
            .ok_or_else(|| SluiceError::internal("hour state vanished"))
    }

    fn index_record(&mut self, record: &BusRecord) -> Result<(), SluiceError> {
        if self.consumed.contains(record) {
            // Delivered again after a rebalance; this indexer already holds it.
            self.metrics.records_redelivered.inc();
            return Ok(());
        }
        let batch = match AgentBatch::decode(record.payload.as_ref()) {
            Ok(batch) => batch,
            Err(error) => {
                self.metrics.records_undecodable.inc();
                warn!(partition = record.partition, offset = record.offset, error = %error, "skipping undecodable bus record");
                self.consumed.advance_past(record);
                return Ok(());
            }
        };
        if !self
            .dedup
            .first_time(&batch.agent_id, batch.sequence, record)
        {
            self.metrics.batches_duplicate.inc();
            self.consumed.advance_past(record);
            return Ok(());
        }
        if let Some(patterns) = &batch.patterns {
            self.templates.learn(&patterns.templates);
        }
        let fields = self.store.fields().clone();
        let writer_memory_bytes = self.writer_memory_bytes;
        let (mut indexed, mut already, mut skipped) = (0_u64, 0_u64, 0_u64);
        // Hours this record has written to: their writers hold part of it and must not be
        // committed before the whole record is in.
        let mut touched: Vec<Hour> = Vec::new();
        for (index, envelope) in batch.envelopes.iter().enumerate() {
            let origin = Origin {
                agent_id: &batch.agent_id,
                sequence: batch.sequence,
                partition: record.partition,
                offset: record.offset,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                batch_envelopes: u32::try_from(batch.envelopes.len()).unwrap_or(u32::MAX),
                pattern_id: batch.pattern_of(index),
            };
            let Some(document) = fields.document(envelope, origin) else {
                skipped += 1;
                continue;
            };
            let hour = Hour::of_nanos(envelope.timestamp);
            if self.hour_state(hour)?.committed.contains(record) {
                already += 1;
                continue;
            }
            if !touched.contains(&hour) {
                self.make_room_for(hour, &touched)?;
                touched.push(hour);
            }
            let state = self.hour_state(hour)?;
            let writer = state.writer(hour, writer_memory_bytes)?;
            writer.add_document(document).map_err(|error| {
                SluiceError::internal(format!(
                    "failed to index into {}: {error}",
                    hour.partition_name()
                ))
            })?;
            state.dirty = true;
            state.last_write = Instant::now();
            indexed += 1;
        }
        self.metrics.documents_indexed.inc_by(indexed);
        self.metrics.documents_already_indexed.inc_by(already);
        self.metrics.envelopes_not_indexed.inc_by(skipped);
        self.consumed.advance_past(record);
        Ok(())
    }

    /// Before `hour` opens a writer: when `max_open_writers` are open already, commits and
    /// closes the one written least recently that holds no part of the record being indexed
    /// (`touched`). Its commit payload is the positions before that record, which is exactly
    /// what it holds. When every open writer holds part of the record, none can be closed,
    /// and the record briefly takes more writers (bounded by a batch's envelopes).
    fn make_room_for(&mut self, hour: Hour, touched: &[Hour]) -> Result<(), SluiceError> {
        let is_open = |state: &HourState| state.writer.is_some();
        if self.hours.get(&hour).is_some_and(is_open) {
            return Ok(());
        }
        let open = self.hours.values().filter(|state| is_open(state)).count();
        if open < self.max_open_writers {
            return Ok(());
        }
        let victim = self
            .hours
            .iter()
            .filter(|(candidate, state)| is_open(state) && !touched.contains(candidate))
            .min_by_key(|(_, state)| state.last_write)
            .map(|(candidate, _)| *candidate);
        let Some(victim) = victim else {
            return Ok(());
        };
        let payload = self.consumed.to_json();
        if let Some(state) = self.hours.get_mut(&victim) {
            if state.dirty {
                commit_hour(victim, state, &payload, &self.consumed)?;
                self.metrics.commits.inc();
            }
            state.writer = None;
        }
        self.metrics.writers_evicted.inc();
        Ok(())
    }

    /// Drops every document of `partition` at offset `to` or later, from the writers and from
    /// committed hours alike, and commits: another member of the group owns those records now.
    fn rewind(&mut self, partition: u32, to: u64) -> Result<(), SluiceError> {
        if self.consumed.next_offset(partition) <= to {
            return Ok(());
        }
        self.dedup.rewind(partition, to);
        let fields = self.store.fields().clone();
        let writer_memory_bytes = self.writer_memory_bytes;
        let mut dropped = 0_u64;
        for hour in self.store.list()? {
            if !self.hours.contains_key(&hour) {
                // A closed hour holds such documents only if its last commit got that far.
                let metas = self.store.open(hour)?.load_metas().map_err(|error| {
                    SluiceError::internal(format!(
                        "failed to read index partition {}: {error}",
                        hour.partition_name()
                    ))
                })?;
                let committed = metas
                    .payload
                    .as_deref()
                    .map(Positions::from_json)
                    .transpose()?
                    .unwrap_or_default();
                if committed.next_offset(partition) <= to {
                    continue;
                }
            }
            let state = self.hour_state(hour)?;
            if state.committed.next_offset(partition) <= to && !state.dirty {
                continue;
            }
            let query = BooleanQuery::intersection(vec![
                Box::new(TermQuery::new(
                    Term::from_field_u64(fields.bus_partition, u64::from(partition)),
                    IndexRecordOption::Basic,
                )),
                Box::new(RangeQuery::new(
                    Bound::Included(Term::from_field_u64(fields.bus_offset, to)),
                    Bound::Unbounded,
                )),
            ]);
            dropped += state
                .index
                .reader()
                .map(|reader| {
                    reader
                        .searcher()
                        .search(&query, &tantivy::collector::Count)
                        .unwrap_or(0) as u64
                })
                .unwrap_or(0);
            let writer = state.writer(hour, writer_memory_bytes)?;
            writer.delete_query(Box::new(query)).map_err(|error| {
                SluiceError::internal(format!(
                    "failed to drop documents from {}: {error}",
                    hour.partition_name()
                ))
            })?;
            state
                .committed
                .0
                .insert(partition, to.min(state.committed.next_offset(partition)));
            state.dirty = true;
        }
        info!(
            partition,
            to,
            committed_documents = dropped,
            "another indexer took this partition over; dropped its documents from the offset it starts at"
        );
        self.consumed.0.insert(partition, to);
        self.metrics.rewinds.inc();
        self.metrics.documents_rewound.inc_by(dropped);
        self.commit()
    }

    /// Commits every hour with new documents (payload: the consumed positions), then the
    /// checkpoint file, then reports the positions so the bus may release them.
    fn commit(&mut self) -> Result<(), SluiceError> {
        self.last_commit = Instant::now();
        let payload = self.consumed.to_json();
        for (hour, state) in &mut self.hours {
            if !state.dirty || state.writer.is_none() {
                continue;
            }
            commit_hour(*hour, state, &payload, &self.consumed)?;
            self.metrics.commits.inc();
        }
        // Templates before the checkpoint (at most every few seconds, and at shutdown).
        self.templates.save(&self.templates_path, false)?;
        if self.consumed != self.checkpointed {
            write_checkpoint(&self.checkpoint_path, &self.consumed)?;
            self.checkpointed = self.consumed.clone();
            self.committed.send_replace(self.consumed.clone());
        }
        // Close writers (and forget hours) that have been idle for a while: their threads and
        // memory budget go back; a late envelope reopens them.
        let idle_after = self.close_idle_writer_after;
        self.hours
            .retain(|_, state| state.dirty || state.last_write.elapsed() < idle_after);
        // Everything is committed now: a rewind may have opened writers past the limit;
        // close the least recently written of them.
        let mut open: Vec<(Instant, Hour)> = self
            .hours
            .iter()
            .filter(|(_, state)| state.writer.is_some())
            .map(|(hour, state)| (state.last_write, *hour))
            .collect();
        open.sort();
        let excess = open.len().saturating_sub(self.max_open_writers);
        for (_, hour) in open.into_iter().take(excess) {
            if let Some(state) = self.hours.get_mut(&hour) {
                state.writer = None;
            }
        }
        self.metrics.open_writers.set(
            self.hours
                .values()
                .filter(|state| state.writer.is_some())
                .count() as i64,
        );
        if self.last_size_update.elapsed() >= Duration::from_secs(10)
            || self.metrics.partitions.get() == 0
        {
            self.last_size_update = Instant::now();
            self.metrics
                .index_bytes
                .set(i64::try_from(self.store.disk_bytes()).unwrap_or(i64::MAX));
            self.metrics.partitions.set(
                self.store
                    .list()
                    .map(|hours| hours.len() as i64)
                    .unwrap_or(0),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{SearchRequest, Searcher};
    use bytes::Bytes;
    use sluice_bus::metrics::BusMetrics;
    use sluice_bus::wal::{WalBus, WalSettings};
    use sluice_common::shutdown::ShutdownTrigger;
    use sluice_proto::v2::{Envelope, Log, envelope};

    fn batch(sequence: u64, timestamps: &[i64]) -> Bytes {
        let envelopes = timestamps
            .iter()
            .map(|timestamp| Envelope {
                timestamp: *timestamp,
                source_id: "app".into(),
                message: Some(envelope::Message::Log(Log {
                    payload: format!("replayed line {sequence}").into_bytes(),
                    r#type: 0,
                })),
                ..Default::default()
            })
            .collect();
        Bytes::from(
            AgentBatch {
                agent_id: "agent".into(),
                sequence,
                envelopes,
                patterns: None,
            }
            .encode_to_vec(),
        )
    }

    fn config(dir: &Path) -> IndexerConfig {
        IndexerConfig {
            dir: dir.join("index"),
            commit_interval: Duration::from_millis(100),
            writer_memory_bytes: 15_000_000,
            close_idle_writer_after: Duration::from_secs(60),
            max_open_writers: 4,
            listen: None,
            max_age: None,
            max_disk_bytes: None,
        }
    }

    /// Threads of this process that are Tantivy indexing workers (one per open writer).
    fn tantivy_indexing_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("thrd-tantivy-in"))
            .count()
    }

    /// Regression: one writer (a thread and up to `writer_memory_bytes`) stayed open per
    /// distinct hour written, so envelopes spread over many hours opened thousands of threads.
    /// Now at most `max_open_writers` are open; the others are committed and closed, and no
    /// document is lost or indexed twice on the way, a record spanning several hours included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn regression_envelopes_over_many_hours_keep_the_open_writers_bounded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let telemetry = Telemetry::new();
        let bus = WalBus::open(
            &dir.path().join("wal"),
            WalSettings::default(),
            BusMetrics::register(&telemetry),
        )
        .await
        .expect("wal");
        let hour = sluice_common::time::NANOS_PER_HOUR;
        let base = 480_000 * hour;
        for sequence in 1..=40_u64 {
            let at = base + (sequence as i64 % 20) * 7 * hour + sequence as i64;
            bus.append("app", batch(sequence, &[at]))
                .await
                .expect("append");
        }
        // One record over six hours, and then the first hour again.
        let spread: Vec<i64> = (0..6).map(|step| base + step * 3 * hour + 99).collect();
        bus.append("app", batch(41, &spread)).await.expect("append");
        bus.append("app", batch(42, &[base + 5]))
            .await
            .expect("append");
        let (trigger, shutdown) = ShutdownTrigger::new();
        let task = tokio::spawn(run(
            config(dir.path()),
            Arc::new(bus.clone()),
            Sharing::Sole,
            telemetry.clone(),
            shutdown,
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        while total(dir.path()) < 47 {
            assert!(
                Instant::now() < deadline,
                "indexed {} of 47",
                total(dir.path())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Writers stay open until idle (60 s here): what is open now is what the limit allows.
        let threads = tantivy_indexing_threads();
        let text = telemetry.encode();
        trigger.fire();
        task.await.expect("join").expect("indexer ran");
        assert!(
            threads <= 6,
            "{threads} tantivy indexing threads open\n{text}"
        );
        assert!(text.contains("sluice_indexer_open_writers 4\n"), "{text}");
        let evicted = text
            .lines()
            .find_map(|line| line.strip_prefix("sluice_indexer_writers_evicted_total "))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(evicted >= 16, "{evicted} writers evicted\n{text}");
        assert_eq!(total(dir.path()), 47, "every document exactly once");
    }

    async fn index_everything(dir: &Path, bus: &WalBus, telemetry: &Telemetry) {
        let (trigger, shutdown) = ShutdownTrigger::new();
        let task = tokio::spawn(run(
            config(dir),
            Arc::new(bus.clone()),
            Sharing::Sole,
            telemetry.clone(),
            shutdown,
        ));
        tokio::time::sleep(Duration::from_millis(600)).await;
        trigger.fire();
        task.await.expect("join").expect("indexer ran");
    }

    fn total(dir: &Path) -> u64 {
        let request = SearchRequest {
            scope: None,
            query: "replayed".into(),
            start_ns: None,
            end_ns: None,
            limit: 10,
            histogram_interval_ns: None,
        };
        Searcher::new(&dir.join("index"))
            .search(&request)
            .expect("search")
            .total
    }

    /// A crash after the hour indexes committed but before `checkpoint.json` was written makes
    /// the indexer replay records those hours already hold; their commit payloads must make it
    /// skip them, not index them twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn regression_replay_after_a_crash_before_the_checkpoint_does_not_duplicate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = WalBus::open(
            &dir.path().join("wal"),
            WalSettings::default(),
            BusMetrics::register(&Telemetry::new()),
        )
        .await
        .expect("wal");
        // Another group that never checkpoints keeps the records in the WAL for the replay.
        let _holder = bus
            .subscribe("retention", "test", Sharing::Sole)
            .await
            .expect("subscribe");
        let hour = sluice_common::time::NANOS_PER_HOUR;
        // Two records, each spanning two hours.
        bus.append("app", batch(1, &[10 * hour + 1, 11 * hour + 1]))
            .await
            .expect("append");
        bus.append("app", batch(2, &[10 * hour + 2, 11 * hour + 2]))
            .await
            .expect("append");
        index_everything(dir.path(), &bus, &Telemetry::new()).await;
        assert_eq!(total(dir.path()), 4);

        // Simulate the crash: the partitions committed, the checkpoint never landed.
        std::fs::remove_file(dir.path().join("index/checkpoint.json")).expect("remove checkpoint");
        bus.append("app", batch(3, &[11 * hour + 3]))
            .await
            .expect("append");
        let telemetry = Telemetry::new();
        index_everything(dir.path(), &bus, &telemetry).await;
        assert_eq!(
            total(dir.path()),
            5,
            "replayed records were skipped, the new one indexed"
        );
        assert!(
            telemetry
                .encode()
                .contains("sluice_indexer_documents_already_indexed_total 4")
        );
    }

    /// Metric-only traffic before any log line must not stop the indexer (it once failed to
    /// write its checkpoint because no partition had created the directory).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn regression_metrics_only_traffic_checkpoints_without_partitions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = WalBus::open(
            &dir.path().join("wal"),
            WalSettings::default(),
            BusMetrics::register(&Telemetry::new()),
        )
        .await
        .expect("wal");
        let counter = AgentBatch {
            agent_id: "agent".into(),
            sequence: 1,
            envelopes: vec![Envelope {
                timestamp: 1,
                message: Some(envelope::Message::Counter(Default::default())),
                ..Default::default()
            }],
            patterns: None,
        };
        bus.append("app", Bytes::from(counter.encode_to_vec()))
            .await
            .expect("append");
        index_everything(dir.path(), &bus, &Telemetry::new()).await;
        let checkpoint =
            read_checkpoint(&dir.path().join("index/checkpoint.json")).expect("checkpoint");
        assert_eq!(checkpoint.next_offset(0), 1);
    }

    /// A bus that hands out a fixed script of events, for rebalance cases the WAL never has.
    struct ScriptedBus(std::sync::Mutex<Vec<BusEvent>>);

    struct ScriptedConsumer(Vec<BusEvent>);

    #[async_trait::async_trait]
    impl sluice_bus::Consumer for ScriptedConsumer {
        async fn seek(&mut self, _positions: &Positions) -> Result<(), sluice_bus::BusError> {
            Ok(())
        }
        async fn poll(
            &mut self,
            _max: usize,
            max_wait: Duration,
        ) -> Result<Vec<BusEvent>, sluice_bus::BusError> {
            if self.0.is_empty() {
                tokio::time::sleep(max_wait).await;
            }
            Ok(std::mem::take(&mut self.0))
        }
        async fn checkpoint(&mut self, _positions: &Positions) -> Result<(), sluice_bus::BusError> {
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl Bus for ScriptedBus {
        async fn append(&self, _key: &str, _payload: Bytes) -> Result<(), sluice_bus::BusError> {
            Ok(())
        }
        async fn subscribe(
            &self,
            _group: &str,
            _member: &str,
            _sharing: Sharing,
        ) -> Result<Box<dyn sluice_bus::Consumer>, sluice_bus::BusError> {
            let script = std::mem::take(&mut *self.0.lock().expect("script"));
            Ok(Box::new(ScriptedConsumer(script)))
        }
        fn kind(&self) -> &'static str {
            "scripted"
        }
    }

    fn record(partition: u32, offset: u64, sequence: u64, timestamps: &[i64]) -> BusEvent {
        BusEvent::Record(BusRecord {
            partition,
            offset,
            payload: batch(sequence, timestamps),
        })
    }

    async fn run_script(dir: &Path, script: Vec<BusEvent>, telemetry: &Telemetry) {
        let (trigger, shutdown) = ShutdownTrigger::new();
        let bus = Arc::new(ScriptedBus(std::sync::Mutex::new(script)));
        let task = tokio::spawn(run(
            config(dir),
            bus,
            Sharing::Sole,
            telemetry.clone(),
            shutdown,
        ));
        tokio::time::sleep(Duration::from_millis(600)).await;
        trigger.fire();
        task.await.expect("join").expect("indexer ran");
    }

    /// When another indexer takes a partition over, this one drops the partition's documents
    /// from the offset the other starts at (committed ones and ones still in the writer), keeps
    /// everything else, and skips records delivered again below what it consumed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rewind_drops_exactly_the_partitions_documents_from_its_offset() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hour = sluice_common::time::NANOS_PER_HOUR;
        // First run: partition 0 offsets 0..4 (two hours), partition 1 offset 0; all committed.
        let first = vec![
            record(0, 0, 1, &[10 * hour + 1]),
            record(0, 1, 2, &[10 * hour + 2, 11 * hour + 2]),
            record(0, 2, 3, &[11 * hour + 3]),
            record(0, 3, 4, &[11 * hour + 4]),
            record(1, 0, 5, &[10 * hour + 5]),
        ];
        run_script(dir.path(), first, &Telemetry::new()).await;
        assert_eq!(total(dir.path()), 6);

        // Second run: partition 0 moved to another indexer at offset 2; a record of partition 1
        // comes again (skipped) and then a new one; partition 0 offset 4 reaches the writer
        // before its rewind and must go too.
        let telemetry = Telemetry::new();
        let second = vec![
            record(1, 0, 5, &[10 * hour + 5]),
            record(1, 1, 6, &[10 * hour + 6]),
            record(0, 4, 7, &[11 * hour + 7]),
            BusEvent::Rewind {
                partition: 0,
                to: 2,
            },
        ];
        run_script(dir.path(), second, &telemetry).await;
        // Left: partition 0 offsets 0 and 1 (3 documents), partition 1 offsets 0 and 1.
        assert_eq!(total(dir.path()), 5);
        let text = telemetry.encode();
        assert!(text.contains("sluice_indexer_rewinds_total 1"), "{text}");
        assert!(
            text.contains("sluice_indexer_documents_rewound_total 2"),
            "{text}"
        );
        assert!(
            text.contains("sluice_indexer_records_redelivered_total 1"),
            "{text}"
        );
        let checkpoint =
            read_checkpoint(&dir.path().join("index/checkpoint.json")).expect("checkpoint");
        assert_eq!(checkpoint.next_offset(0), 2);
        assert_eq!(checkpoint.next_offset(1), 2);
    }

    /// A batch an agent retried on another doppler reaches the bus twice; the indexer keeps
    /// one copy. After a rewind, the batches it let through from there are new again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_reaches_the_bus_twice_is_indexed_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hour = sluice_common::time::NANOS_PER_HOUR;
        let telemetry = Telemetry::new();
        let script = vec![
            record(0, 0, 1, &[10 * hour + 1]),
            record(0, 1, 2, &[10 * hour + 2]),
            record(0, 2, 1, &[10 * hour + 1]),
            BusEvent::Rewind {
                partition: 0,
                to: 1,
            },
            record(0, 1, 2, &[10 * hour + 2]),
        ];
        run_script(dir.path(), script, &telemetry).await;
        assert_eq!(total(dir.path()), 2);
        assert!(
            telemetry
                .encode()
                .contains("sluice_indexer_batches_duplicate_total 1")
        );
    }
}
