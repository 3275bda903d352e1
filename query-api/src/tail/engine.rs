//! The tail itself: history from the index, then the bus, with one cursor across both.
//!
//! A tail reads the bus with a [`Reader`] of its own, outside every consumer group, so it sees
//! every accepted envelope of every doppler, in bus order, and its cursor is a bus position.
//! History (`since=`, `tail=N`) below the positions the indexer has checkpointed (`R`) comes
//! from the index instead, selected by the same filter: everything below `R` is committed
//! there, and everything from `R` on is still on the bus (the bus forgets a record only once
//! every group has checkpointed it). So the switch from history to live is a position, not a
//! time, and neither skips nor repeats an envelope. A resumed tail reads the bus from its
//! cursor, and what the bus has forgotten since comes back from the index as a healed gap.
//!
//! The tail's task reads the bus only as fast as its client takes events (a bounded queue in
//! between), so a slow client costs the ingest path nothing: the reader simply falls behind.
//! If the bus forgets records before the reader gets to them, the reader says so, and the
//! task heals the gap from the index; what the index does not hold (metrics) is reported in
//! the stream as a `dropped` event and counted per tail in `/metrics`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use sluice_bus::dedup::Deduplicator;
use sluice_bus::{Bus, BusRecord, Partition, Positions, ReadEvent, Reader};
use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use sluice_indexer::Searcher;
use sluice_indexer::history::{
    BusPosition, HistoryEntry, HistoryOrder, HistoryRequest, PartitionRange,
};
use sluice_proto::v1::AgentBatch;
use sluice_proto::v2::Envelope;
use tokio::sync::mpsc;
use tracing::warn;

use super::cursor::Cursor;
use super::filter::TailFilter;
use super::hub::{Hub, HubItem, HubReceiver, Left};
use super::metrics::TailMetrics;

/// Envelopes a page of index history holds (whole records; see [`HistoryOrder`]).
const HISTORY_PAGE: usize = 2_000;
/// Batches a tail remembers to drop a second copy of one, as the indexer does.
const DEDUP_BATCHES: usize = 4_096;
/// Records a tail reads from the bus at a time.
const POLL_RECORDS: usize = 256;

/// A tail's limits, from `[query_api.tail]`.
#[derive(Debug, Clone)]
pub struct TailLimits {
    /// Tails open at once, in all.
    pub max_tails: usize,
    /// Tails open at once from one client address.
    pub max_tails_per_client: usize,
    /// Most history envelopes `since=` sends (`tail=N` may ask for up to this many).
    pub max_history: usize,
    /// How often an idle tail sends a heartbeat.
    pub heartbeat: Duration,
    /// Events queued between a tail's bus reader and its client.
    pub queue_events: usize,
    /// Records the shared live reader keeps for tails that are a little behind.
    pub hub_records: usize,
}

/// Where a tail starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// With what arrives from now on.
    Live,
    /// With the matching envelopes stamped at or after this time (ns), then live.
    Since(i64),
    /// With the last `N` matching envelopes, then live.
    Last(usize),
    /// Exactly where an earlier tail's cursor left off.
    Resume(Cursor),
}

/// One delivered envelope and its identity.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Its bus position.
    pub position: BusPosition,
    /// The agent that sent its batch.
    pub agent_id: String,
    /// The batch's sequence number at that agent.
    pub sequence: u64,
    /// The envelope.
    pub envelope: Envelope,
}

/// Envelopes a tail could not deliver: part of bus records the bus forgot before the tail
/// read them and that the index could not give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The partition.
    pub partition: Partition,
    /// The first record offset of the gap.
    pub from: u64,
    /// The first record offset after it.
    pub to: u64,
    /// Envelopes of the gap the index gave back (delivered before this event).
    pub healed: u64,
    /// Envelopes of the gap that are lost to this tail: held by records the index has part
    /// of, but not indexed themselves (metrics), so they could not be checked against the
    /// tail's selectors either. Zero when the selectors take no metrics.
    pub envelopes: u64,
    /// Records of the gap the index holds nothing of, whose contents are unknown.
    pub unknown_records: u64,
    /// Oldest and newest timestamp (ns) of the records that lost envelopes, as far as the
    /// index knows them (its envelopes of those records).
    pub time_range: Option<(i64, i64)>,
}

/// What a tail sends, in order; each carries the cursor to resume after it.
#[derive(Debug, Clone)]
pub enum TailEvent {
    /// The first event: the tail's id (its label in `/metrics`) and where it starts.
    Opened {
        /// The id.
        tail_id: String,
        /// The start.
        cursor: Cursor,
    },
    /// An envelope.
    Envelope {
        /// What is delivered.
        delivered: Box<Delivered>,
        /// The cursor past it.
        cursor: Cursor,
    },
    /// `since=` matched more history than a tail sends: only the newest `sent` came.
    HistoryCut {
        /// Matching envelopes in the index.
        matched: u64,
        /// Sent.
        sent: u64,
        /// The cursor.
        cursor: Cursor,
    },
    /// A gap that could not be healed in full.
    Dropped {
        /// What was lost.
        dropped: Dropped,
        /// The cursor past the gap.
        cursor: Cursor,
    },
    /// Nothing to send for a while; the cursor has moved past what did not match.
    Heartbeat {
        /// The cursor.
        cursor: Cursor,
    },
    /// The last event: why the tail ends.
    Closed {
        /// The reason.
        reason: String,
        /// The cursor to resume from.
        cursor: Cursor,
    },
}

/// Opens tails and keeps their count within the limits.
#[derive(Clone)]
pub struct Tails {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Option<Arc<dyn Bus>>,
    searcher: Arc<Searcher>,
    limits: TailLimits,
    metrics: TailMetrics,
    open: Mutex<HashMap<IpAddr, usize>>,
    next_id: AtomicU64,
    shutdown: Shutdown,
    /// Why tails cannot be served, when the bus is not reachable from this process.
    no_bus_reason: String,
    /// Whether `searcher` holds the index (false when the query API searches remote
    /// indexers, whose history it cannot read yet).
    local_index: bool,
    /// The shared reader of the live edge.
    hub: Option<Hub>,
}

/// A tail's events; the tail's slot is freed when this is dropped.
pub struct TailStream {
    /// Events in order; ends after [`TailEvent::Closed`] or when the tail's task stops.
    pub events: mpsc::Receiver<TailEvent>,
    _slot: Slot,
}

impl futures::Stream for TailStream {
    type Item = TailEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<TailEvent>> {
        self.events.poll_recv(context)
    }
}

struct Slot {
    inner: Arc<Inner>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .inner
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
        self.inner.metrics.active.dec();
    }
}

impl Tails {
    /// Tails over `bus` (none: every tail is refused with `no_bus_reason`), with history from
    /// `searcher`'s index.
    pub fn new(
        bus: Option<Arc<dyn Bus>>,
        no_bus_reason: String,
        searcher: Arc<Searcher>,
        local_index: bool,
        limits: TailLimits,
        metrics: TailMetrics,
        shutdown: Shutdown,
    ) -> Tails {
        let hub = bus
            .as_ref()
            .map(|bus| Hub::new(Arc::clone(bus), limits.hub_records, shutdown.clone()));
        Tails {
            inner: Arc::new(Inner {
                hub,
                bus,
                searcher,
                limits,
                metrics,
                open: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                shutdown,
                no_bus_reason,
                local_index,
            }),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &TailLimits {
        &self.inner.limits
    }

    /// Opens a tail for `client`. Refused when a limit is reached (429), the start is
    /// invalid (400) or the bus cannot be read (503).
    pub async fn open(
        &self,
        client: IpAddr,
        filter: TailFilter,
        start: Start,
    ) -> Result<TailStream, SluiceError> {
        let Some(bus) = self.inner.bus.clone() else {
            return Err(SluiceError::unavailable(self.inner.no_bus_reason.clone()));
        };
        if let Start::Last(count) = start
            && (count == 0 || count > self.inner.limits.max_history)
        {
            return Err(SluiceError::invalid(format!(
                "tail: must be between 1 and {} (query_api.tail.max_history)",
                self.inner.limits.max_history
            )));
        }
        if !self.inner.local_index && !matches!(start, Start::Live) {
            return Err(SluiceError::unavailable(
                "tail history (since=, tail=, a cursor) comes from the index, and this query API searches remote indexers, \
                 whose history it does not read yet: tail live here, or search the history with /api/v1/search",
            ));
        }
        let slot = self.take_slot(client)?;
        let end = bus.end_positions().await?;
        let indexed = bus
            .group_positions(sluice_indexer::pipeline::CONSUMER_GROUP)
            .await?;
        if let Start::Resume(cursor) = &start {
            for partition in cursor.partitions() {
                let position = cursor.get(partition);
                if position.offset > end.next_offset(partition) {
                    return Err(SluiceError::invalid(format!(
                        "cursor: partition {partition} at offset {} is past the bus's end ({}); the cursor is not from this Sluice",
                        position.offset,
                        end.next_offset(partition)
                    )));
                }
            }
        }
        let filter = Arc::new(filter);
        let index_query = filter.index_query(self.inner.searcher.schema())?;
        let tail_id = format!("t{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let (sender, events) = mpsc::channel(self.inner.limits.queue_events.max(1));
        let task = TailTask {
            inner: Arc::clone(&self.inner),
            bus,
            filter,
            index_query: Arc::from(index_query),
            sender,
            cursor: Cursor::default(),
            end,
            indexed,
            since: None,
            dedup: Deduplicator::new(DEDUP_BATCHES),
            dropped_counter: self.inner.metrics.dropped_for(&tail_id),
            unknown_counter: self.inner.metrics.unknown_records_for(&tail_id),
            tail_id,
            last_sent: Instant::now(),
        };
        tokio::spawn(task.run(start));
        Ok(TailStream {
            events,
            _slot: slot,
        })
    }

    fn take_slot(&self, client: IpAddr) -> Result<Slot, SluiceError> {
        let limits = &self.inner.limits;
        let mut open = self
            .inner
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let total: usize = open.values().sum();
        if total >= limits.max_tails {
            self.inner.metrics.refused("total");
            return Err(SluiceError::new(
                sluice_common::ErrorKind::ResourceExhausted,
                format!(
                    "{total} tails are open, the most this query API serves (query_api.tail.max_tails); try again later"
                ),
            ));
        }
        let mine = open.entry(client).or_insert(0);
        if *mine >= limits.max_tails_per_client {
            self.inner.metrics.refused("client");
            return Err(SluiceError::new(
                sluice_common::ErrorKind::ResourceExhausted,
                format!(
                    "{client} has {mine} tails open, the most one client may (query_api.tail.max_tails_per_client)"
                ),
            ));
        }
        *mine += 1;
        self.inner.metrics.active.inc();
        Ok(Slot {
            inner: Arc::clone(&self.inner),
            client,
        })
    }
}

/// The client went away (or the process is stopping): the task ends.
struct Gone;

struct TailTask {
    inner: Arc<Inner>,
    bus: Arc<dyn Bus>,
    filter: Arc<TailFilter>,
    index_query: Arc<dyn tantivy::query::Query>,
    sender: mpsc::Sender<TailEvent>,
    cursor: Cursor,
    /// The bus's end when the tail opened: history (`since=`) ends there.
    end: Positions,
    /// The indexer's checkpointed positions when the tail opened: the index holds everything
    /// below them.
    indexed: Positions,
    /// `since=`: envelopes of records below `end` stamped earlier are not sent.
    since: Option<i64>,
    dedup: Deduplicator,
    tail_id: String,
    dropped_counter: prometheus_client::metrics::counter::Counter,
    unknown_counter: prometheus_client::metrics::counter::Counter,
    last_sent: Instant,
}

impl TailTask {
    async fn run(mut self, start: Start) {
        let outcome = self.serve(start).await;
        self.inner.metrics.forget(&self.tail_id);
        // Either way the tail is over: the client is gone, or was told why.
        let (Ok(()) | Err(Gone)) = outcome;
    }

    async fn serve(&mut self, start: Start) -> Result<(), Gone> {
        let partitions: Vec<Partition> = self.end.0.keys().copied().collect();
        let reader_from = match start {
            Start::Live => {
                self.cursor = Cursor::at(&self.end);
                self.opened().await?;
                self.end.clone()
            }
            Start::Resume(cursor) => {
                self.cursor = cursor;
                for partition in &partitions {
                    let position = self.cursor.get(*partition);
                    self.cursor.set(position);
                }
                self.opened().await?;
                // The bus first, for everything it still holds (metrics too); what it forgot
                // comes back as a gap, healed from the index.
                Positions(
                    partitions
                        .iter()
                        .map(|partition| (*partition, self.cursor.get(*partition).offset))
                        .collect(),
                )
            }
            Start::Since(since) => {
                self.since = Some(since);
                let history = self.newest_history(Some(since), self.inner.limits.max_history)?;
                self.start_at_history(&history.entries);
                self.opened().await?;
                if history.matched > history.entries.len() as u64 {
                    let event = TailEvent::HistoryCut {
                        matched: history.matched,
                        sent: history.entries.len() as u64,
                        cursor: self.cursor.clone(),
                    };
                    self.send(event).await?;
                }
                let merged = merge_by_time(split_by_partition(
                    history.entries.into_iter().map(delivered_of).collect(),
                ));
                for delivered in merged {
                    self.deliver(delivered).await?;
                }
                self.skip_to(&self.indexed.clone());
                self.indexed.clone()
            }
            Start::Last(count) => return self.serve_last(count).await,
        };
        let reader = self.open_reader(&reader_from).await?;
        self.live(reader, VecDeque::new()).await
    }

    /// `tail=N`: the last `count` matching envelopes of the index and of the bus up to its end
    /// when the tail opened, then live.
    async fn serve_last(&mut self, count: usize) -> Result<(), Gone> {
        let history = self.newest_history(None, count)?;
        let mut lists = split_by_partition(history.entries.into_iter().map(delivered_of).collect());
        let mut reader = self.open_reader(&self.indexed.clone()).await?;
        // Read the bus from the indexer's positions to the end it had when the tail opened;
        // what comes after is kept for the live part.
        let mut reached = self.indexed.clone();
        let mut later: VecDeque<ReadEvent> = VecDeque::new();
        let mut drops: Vec<Dropped> = Vec::new();
        while self
            .end
            .0
            .iter()
            .any(|(partition, end)| reached.next_offset(*partition) < *end)
        {
            let events = self.poll(reader.as_mut()).await?;
            for event in events {
                match event {
                    ReadEvent::Record(record)
                        if record.offset < self.end.next_offset(record.partition) =>
                    {
                        let list = lists.entry(record.partition).or_default();
                        for delivered in self.matching(&record) {
                            list.push_back(delivered);
                            if list.len() > count {
                                list.pop_front();
                            }
                        }
                        reached.0.insert(record.partition, record.offset + 1);
                    }
                    ReadEvent::Gap {
                        partition,
                        from,
                        to,
                    } if from < self.end.next_offset(partition) => {
                        let (mut position, mut window, mut healed) =
                            (Some(self.heal_start(partition, from)), 64, 0_u64);
                        while let Some(at) = position {
                            let (page, next) = self.heal_page(at, to, &mut window);
                            healed += page.len() as u64;
                            let list = lists.entry(partition).or_default();
                            for delivered in page {
                                list.push_back(delivered);
                                if list.len() > count {
                                    list.pop_front();
                                }
                            }
                            position = next;
                        }
                        drops.extend(self.gap_census(partition, from, to, healed));
                        reached.0.insert(partition, to);
                    }
                    other => later.push_back(other),
                }
            }
        }
        let mut merged = merge_by_time(lists);
        let excess = merged.len().saturating_sub(count);
        merged.drain(..excess);
        // Each partition's cursor starts at its first envelope sent, or past the range read.
        self.cursor = Cursor::at(&self.end);
        for delivered in merged.iter().rev() {
            self.cursor.set(delivered.position);
        }
        self.opened().await?;
        for dropped in drops {
            self.report_drop(dropped).await?;
        }
        for delivered in merged {
            self.deliver(delivered).await?;
        }
        self.skip_to(&self.end.clone());
        self.live(reader, later).await
    }

    /// The live part: every record from the cursor on, from a reader of the tail's own until
    /// it has caught up, then from the hub while it keeps up (see `hub.rs`).
    async fn live(
        &mut self,
        reader: Box<dyn Reader>,
        mut pending: VecDeque<ReadEvent>,
    ) -> Result<(), Gone> {
        let mut reader = Some(reader);
        // A receiver of the hub, and the bus's end after subscribing: once the own reader is
        // there, the hub has everything that follows.
        let mut joining: Option<(HubReceiver, Positions)> = None;
        loop {
            while let Some(event) = pending.pop_front() {
                self.take_read_event(event).await?;
            }
            // Even while records flow that this tail does not select, its client hears from
            // it (and its cursor moves) every heartbeat interval.
            self.heartbeat_if_due().await?;
            if let Some((_, end)) = &joining
                && end
                    .0
                    .iter()
                    .all(|(partition, end)| self.cursor.get(*partition).offset >= *end)
                && let Some((receiver, _)) = joining.take()
            {
                // The own reader is not needed while the hub serves (a Kafka reader would
                // go on fetching into its buffer).
                drop(reader.take());
                self.follow_hub(receiver).await?;
                // Fell behind the hub's ring: on its own again, from the cursor.
                reader = Some(self.open_reader(&self.cursor_offsets()).await?);
                continue;
            }
            let Some(own) = reader.as_mut() else {
                reader = Some(self.open_reader(&self.cursor_offsets()).await?);
                continue;
            };
            let events = self.poll(own.as_mut()).await?;
            let caught_up = events.len() < POLL_RECORDS;
            pending.extend(events);
            if caught_up
                && joining.is_none()
                && let Some(hub) = self.inner.hub.clone()
            {
                match hub.subscribe(&self.filter.source_ids).await {
                    Ok(receiver) => match self.bus.end_positions().await {
                        Ok(end) => joining = Some((receiver, end)),
                        Err(error) => warn!(%error, "a tail could not read the bus's end"),
                    },
                    Err(error) => warn!(%error, "a tail could not join the live hub"),
                }
            }
        }
    }

    async fn heartbeat_if_due(&mut self) -> Result<(), Gone> {
        if self.last_sent.elapsed() < self.inner.limits.heartbeat {
            return Ok(());
        }
        let event = TailEvent::Heartbeat {
            cursor: self.cursor.clone(),
        };
        self.send(event).await
    }

    /// Delivers what the hub shares until the tail falls behind its ring (returns) or ends
    /// (`Gone`). Woken only for what it selects (or to keep up with the ring), it takes
    /// everything waiting at once.
    async fn follow_hub(&mut self, mut receiver: HubReceiver) -> Result<(), Gone> {
        let mut shutdown = self.inner.shutdown.clone();
        loop {
            loop {
                let shared = match receiver.try_next() {
                    Ok(Some(shared)) => shared,
                    Ok(None) => break,
                    Err(left) => {
                        if left == Left::Lagged {
                            self.inner.metrics.hub_lagged.inc();
                        }
                        return Ok(());
                    }
                };
                match &shared.item {
                    HubItem::Record(record) => {
                        let (partition, offset) = (record.partition, record.offset);
                        if offset < self.cursor.get(partition).offset {
                            continue;
                        }
                        // A batch without the selected sources is skipped undecoded.
                        if record.may_carry(&self.filter.source_ids)
                            && let Some(batch) = record.batch()
                        {
                            for delivered in self.matching_batch(partition, offset, batch) {
                                self.deliver(delivered).await?;
                            }
                        }
                        self.skip_past_offset(partition, offset);
                    }
                    HubItem::Gap {
                        partition,
                        from,
                        to,
                    } => {
                        let event = ReadEvent::Gap {
                            partition: *partition,
                            from: (*from).max(self.cursor.get(*partition).offset),
                            to: *to,
                        };
                        if *to > self.cursor.get(*partition).offset {
                            self.take_read_event(event).await?;
                        }
                    }
                }
            }
            self.heartbeat_if_due().await?;
            let due = self
                .inner
                .limits
                .heartbeat
                .saturating_sub(self.last_sent.elapsed());
            tokio::select! {
                () = shutdown.wait() => {
                    self.close("the query API is shutting down").await;
                    return Err(Gone);
                }
                () = self.sender.closed() => return Err(Gone),
                () = receiver.woken() => {}
                () = tokio::time::sleep(due) => {}
            }
        }
    }

    /// One event of the tail's own reader.
    async fn take_read_event(&mut self, event: ReadEvent) -> Result<(), Gone> {
        match event {
            ReadEvent::Record(record) => {
                for delivered in self.matching(&record) {
                    self.deliver(delivered).await?;
                }
                self.skip_past_offset(record.partition, record.offset);
            }
            ReadEvent::Gap {
                partition,
                from,
                to,
            } => {
                // Page by page, so a long gap holds one page in memory at a time.
                let (mut position, mut window, mut healed) =
                    (Some(self.heal_start(partition, from)), 64, 0_u64);
                while let Some(at) = position {
                    let (page, next) = self.heal_page(at, to, &mut window);
                    healed += page.len() as u64;
                    for delivered in page {
                        self.deliver(delivered).await?;
                    }
                    position = next;
                }
                self.cursor.set(BusPosition {
                    partition,
                    offset: to,
                    index: 0,
                });
                if let Some(dropped) = self.gap_census(partition, from, to, healed) {
                    self.report_drop(dropped).await?;
                }
            }
        }
        Ok(())
    }

    /// The record offsets to read from: each partition's cursor (a reader starts at a record;
    /// envelopes before the cursor's index are skipped as they come).
    fn cursor_offsets(&self) -> Positions {
        let mut positions = Positions::default();
        for partition in self.cursor.partitions() {
            positions
                .0
                .insert(partition, self.cursor.get(partition).offset);
        }
        for partition in self.end.0.keys() {
            positions
                .0
                .entry(*partition)
                .or_insert_with(|| self.cursor.get(*partition).offset);
        }
        positions
    }

    /// One poll of the reader; bus errors are retried (the tail says nothing is lost by them:
    /// the reader's position stays), the process stopping closes the tail.
    async fn poll(&mut self, reader: &mut dyn Reader) -> Result<Vec<ReadEvent>, Gone> {
        let mut shutdown = self.inner.shutdown.clone();
        let wait = self.inner.limits.heartbeat.min(Duration::from_secs(1));
        let polled = tokio::select! {
            () = shutdown.wait() => {
                self.close("the query API is shutting down").await;
                return Err(Gone);
            }
            () = self.sender.closed() => return Err(Gone),
            polled = reader.poll(POLL_RECORDS, wait) => polled,
        };
        match polled {
            Ok(events) => Ok(events),
            Err(error) => {
                warn!(tail = %self.tail_id, %error, "a tail failed to read the bus; retrying");
                tokio::select! {
                    () = shutdown.wait() => {
                        self.close("the query API is shutting down").await;
                        Err(Gone)
                    }
                    () = tokio::time::sleep(Duration::from_millis(500)) => Ok(Vec::new()),
                }
            }
        }
    }

    async fn open_reader(&mut self, from: &Positions) -> Result<Box<dyn Reader>, Gone> {
        match self.bus.reader(from).await {
            Ok(reader) => Ok(reader),
            Err(error) => {
                self.close(&format!("the bus cannot be read: {error}"))
                    .await;
                Err(Gone)
            }
        }
    }

    /// The matching envelopes of `record` still ahead of the cursor.
    fn matching(&mut self, record: &BusRecord) -> Vec<Delivered> {
        match AgentBatch::decode(record.payload.as_ref()) {
            Ok(batch) => self.matching_batch(record.partition, record.offset, &batch),
            Err(error) => {
                warn!(partition = record.partition, offset = record.offset, %error, "a tail skips an undecodable bus record");
                Vec::new()
            }
        }
    }

    /// The matching envelopes of the batch at `partition`/`offset` still ahead of the cursor.
    fn matching_batch(
        &mut self,
        partition: Partition,
        offset: u64,
        batch: &AgentBatch,
    ) -> Vec<Delivered> {
        let place = BusRecord {
            partition,
            offset,
            payload: bytes::Bytes::new(),
        };
        if !self
            .dedup
            .first_time(&batch.agent_id, batch.sequence, &place)
        {
            return Vec::new();
        }
        let before_end = offset < self.end.next_offset(partition);
        let mut out = Vec::new();
        for (index, envelope) in batch.envelopes.iter().enumerate() {
            let position = BusPosition {
                partition,
                offset,
                index: u32::try_from(index).unwrap_or(u32::MAX),
            };
            if !self.cursor.is_ahead(position) {
                continue;
            }
            if before_end && self.since.is_some_and(|since| envelope.timestamp < since) {
                continue;
            }
            if self.filter.matches(envelope) {
                out.push(Delivered {
                    position,
                    agent_id: batch.agent_id.clone(),
                    sequence: batch.sequence,
                    envelope: envelope.clone(),
                });
            }
        }
        out
    }

    /// Where healing the gap `from..to` of `partition` starts: the cursor, or the gap's start.
    fn heal_start(&self, partition: Partition, from: u64) -> BusPosition {
        let position = self.cursor.get(partition);
        if position.offset < from {
            BusPosition {
                partition,
                offset: from,
                index: 0,
            }
        } else {
            position
        }
    }

    /// One page of healing a gap the bus forgot, from the index: the matching envelopes of a
    /// window of records from `position` (before `to`), and where the next page starts. The
    /// window adapts so that a page holds about [`HISTORY_PAGE`] envelopes and each search
    /// touches only its own window (a long gap costs its length once, not once per page).
    fn heal_page(
        &self,
        position: BusPosition,
        to: u64,
        window: &mut u64,
    ) -> (Vec<Delivered>, Option<BusPosition>) {
        let partition = position.partition;
        let end = position.offset.saturating_add(*window).min(to);
        let since = self
            .since
            .filter(|_| position.offset < self.end.next_offset(partition));
        let searcher = Arc::clone(&self.inner.searcher);
        let page = blocking(|| {
            searcher.history(&HistoryRequest {
                query: self.index_query.as_ref(),
                scope: self.filter.scope(),
                start_ns: since,
                ranges: [(
                    partition,
                    PartitionRange {
                        from: position,
                        to: end,
                    },
                )]
                .into_iter()
                .collect(),
                limit: HISTORY_PAGE * 4,
                order: HistoryOrder::OldestByPosition,
            })
        });
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                warn!(tail = %self.tail_id, %error, "a tail failed to read history to heal a gap");
                return (Vec::new(), None);
            }
        };
        let next = match page.next {
            Some(next) => {
                *window = (*window / 2).max(1);
                Some(next)
            }
            None if end < to => Some(BusPosition {
                partition,
                offset: end,
                index: 0,
            }),
            None => None,
        };
        if page.entries.len() < HISTORY_PAGE / 2 {
            *window = window.saturating_mul(2).min(1 << 20);
        }
        self.inner.metrics.healed.inc_by(page.entries.len() as u64);
        (page.entries.into_iter().map(delivered_of).collect(), next)
    }

    /// What of the gap `from..to` of `partition` the index could not give back (after
    /// `healed` envelopes were), if anything.
    fn gap_census(&self, partition: Partition, from: u64, to: u64, healed: u64) -> Option<Dropped> {
        let searcher = Arc::clone(&self.inner.searcher);
        let census = match blocking(|| searcher.census(partition, from, to)) {
            Ok(census) => census,
            Err(error) => {
                warn!(tail = %self.tail_id, %error, "a tail failed to count a gap");
                BTreeMap::new()
            }
        };
        let lost: u64 = if self.filter.may_select_unindexed() {
            census
                .values()
                .map(|record| record.envelopes.saturating_sub(record.indexed))
                .sum()
        } else {
            0
        };
        let unknown_records = (to - from).saturating_sub(census.len() as u64);
        let time_range = census
            .values()
            .filter(|record| record.envelopes > record.indexed)
            .map(|record| record.time_range)
            .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
        (lost > 0 || unknown_records > 0).then_some(Dropped {
            partition,
            from,
            to,
            healed,
            envelopes: lost,
            unknown_records,
            time_range,
        })
    }

    async fn report_drop(&mut self, dropped: Dropped) -> Result<(), Gone> {
        self.dropped_counter.inc_by(dropped.envelopes);
        self.unknown_counter.inc_by(dropped.unknown_records);
        self.inner.metrics.dropped.inc_by(dropped.envelopes);
        self.inner
            .metrics
            .unknown_records
            .inc_by(dropped.unknown_records);
        let event = TailEvent::Dropped {
            dropped,
            cursor: self.cursor.clone(),
        };
        self.send(event).await
    }

    /// The newest `limit` matching envelopes below the indexer's positions.
    fn newest_history(
        &self,
        since: Option<i64>,
        limit: usize,
    ) -> Result<sluice_indexer::history::History, Gone> {
        let ranges: BTreeMap<Partition, PartitionRange> = self
            .indexed
            .0
            .iter()
            .map(|(partition, below)| {
                (
                    *partition,
                    PartitionRange {
                        from: BusPosition {
                            partition: *partition,
                            offset: 0,
                            index: 0,
                        },
                        to: *below,
                    },
                )
            })
            .collect();
        let searcher = Arc::clone(&self.inner.searcher);
        let history = blocking(|| {
            searcher.history(&HistoryRequest {
                query: self.index_query.as_ref(),
                scope: self.filter.scope(),
                start_ns: since,
                ranges,
                limit,
                order: HistoryOrder::NewestByTime,
            })
        });
        match history {
            Ok(history) => Ok(history),
            Err(error) => {
                warn!(tail = %self.tail_id, %error, "a tail failed to read history");
                // The tail goes on without it; the client is told.
                Ok(sluice_indexer::history::History::default())
            }
        }
    }

    /// Starts each partition's cursor at its first history envelope, or at the indexer's
    /// position when it has none.
    fn start_at_history(&mut self, entries: &[HistoryEntry]) {
        self.cursor = Cursor::at(&self.indexed);
        for partition in self.end.0.keys() {
            if !self.indexed.0.contains_key(partition) {
                self.cursor.set(BusPosition {
                    partition: *partition,
                    offset: 0,
                    index: 0,
                });
            }
        }
        for entry in entries.iter().rev() {
            self.cursor.set(entry.position);
        }
    }

    /// Moves every partition's cursor to at least `positions`.
    fn skip_to(&mut self, positions: &Positions) {
        for (partition, offset) in &positions.0 {
            let current = self.cursor.get(*partition);
            if current.offset < *offset {
                self.cursor.set(BusPosition {
                    partition: *partition,
                    offset: *offset,
                    index: 0,
                });
            }
        }
    }

    fn skip_past_offset(&mut self, partition: Partition, offset: u64) {
        let current = self.cursor.get(partition);
        if current.offset <= offset {
            self.cursor.set(BusPosition {
                partition,
                offset: offset + 1,
                index: 0,
            });
        }
    }

    async fn opened(&mut self) -> Result<(), Gone> {
        let event = TailEvent::Opened {
            tail_id: self.tail_id.clone(),
            cursor: self.cursor.clone(),
        };
        self.send(event).await
    }

    async fn deliver(&mut self, delivered: Delivered) -> Result<(), Gone> {
        if !self.cursor.is_ahead(delivered.position) {
            return Ok(());
        }
        self.cursor.advance_past(delivered.position);
        self.inner.metrics.envelopes.inc();
        let event = TailEvent::Envelope {
            delivered: Box::new(delivered),
            cursor: self.cursor.clone(),
        };
        self.send(event).await
    }

    /// Queues `event`, waiting while the client is behind; ends the tail when the client is
    /// gone or the process stops.
    async fn send(&mut self, event: TailEvent) -> Result<(), Gone> {
        let mut shutdown = self.inner.shutdown.clone();
        tokio::select! {
            sent = self.sender.send(event) => {
                sent.map_err(|_| Gone)?;
                self.last_sent = Instant::now();
                Ok(())
            }
            () = shutdown.wait() => {
                self.close("the query API is shutting down").await;
                Err(Gone)
            }
        }
    }

    /// Sends the closing event if there is room for it (a client that is not reading would
    /// not see it anyway).
    async fn close(&mut self, reason: &str) {
        let _ = self.sender.try_send(TailEvent::Closed {
            reason: reason.to_owned(),
            cursor: self.cursor.clone(),
        });
    }
}

/// Runs blocking index work without stalling the runtime's other tasks.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

fn delivered_of(entry: HistoryEntry) -> Delivered {
    Delivered {
        position: entry.position,
        agent_id: entry.agent_id,
        sequence: entry.sequence,
        envelope: entry.envelope,
    }
}

fn split_by_partition(entries: Vec<Delivered>) -> BTreeMap<Partition, VecDeque<Delivered>> {
    let mut lists: BTreeMap<Partition, VecDeque<Delivered>> = BTreeMap::new();
    for entry in entries {
        lists
            .entry(entry.position.partition)
            .or_default()
            .push_back(entry);
    }
    lists
}

/// One sequence of several partitions' envelopes: each partition's in its own (bus) order,
/// interleaved by timestamp.
fn merge_by_time(mut lists: BTreeMap<Partition, VecDeque<Delivered>>) -> Vec<Delivered> {
    let mut merged = Vec::with_capacity(lists.values().map(VecDeque::len).sum());
    loop {
        let next = lists
            .iter()
            .filter_map(|(partition, list)| {
                list.front()
                    .map(|head| (head.envelope.timestamp, *partition))
            })
            .min();
        let Some((_, partition)) = next else {
            return merged;
        };
        if let Some(head) = lists.get_mut(&partition).and_then(VecDeque::pop_front) {
            merged.push(head);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: Partition, offset: u64, timestamp: i64) -> Delivered {
        Delivered {
            position: BusPosition {
                partition,
                offset,
                index: 0,
            },
            agent_id: String::new(),
            sequence: 0,
            envelope: Envelope {
                timestamp,
                ..Default::default()
            },
        }
    }

    #[test]
    fn merging_keeps_each_partitions_order_and_interleaves_by_time() {
        // Partition 1's second envelope is stamped earlier than its first: bus order wins
        // inside a partition.
        let lists = split_by_partition(vec![
            at(0, 0, 10),
            at(0, 1, 30),
            at(1, 0, 20),
            at(1, 1, 5),
            at(1, 2, 40),
        ]);
        let merged: Vec<(Partition, u64)> = merge_by_time(lists)
            .iter()
            .map(|delivered| (delivered.position.partition, delivered.position.offset))
            .collect();
        assert_eq!(merged, vec![(0, 0), (1, 0), (1, 1), (0, 1), (1, 2)]);
    }
}
