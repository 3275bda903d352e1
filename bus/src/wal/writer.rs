//! The WAL's one writer: a thread that appends records in groups (group commit), keeps the
//! disk budget, starts new segments and makes records visible to readers once durable.
//!
//! Appenders send their payload with a reply channel. The thread takes everything queued (up
//! to [`MAX_GROUP`] records), assigns offsets, writes the group with one `write`, then, with
//! [`Durability::Fsync`], one `fdatasync` for the whole group before it answers any of them.
//! With [`Durability::Flush`] it answers after the write and syncs every `interval`.
//! Either way readers see a record only once it is synced, so no consumer ever holds an
//! offset that a power loss could take back, and offsets never move backwards.
//!
//! A record that would take the log past its disk budget, or that the disk has no room for,
//! is refused with [`BusError::Full`] (the doppler answers `RESOURCE_EXHAUSTED`; agents hold
//! their batches and retry), and a failed write is cut off again, so the log stays whole.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::recent::Entry;
use super::segment::{self, SegmentInfo};
use super::{Durability, State, WalSettings};
use crate::BusError;

/// Records written (and synced) together at most.
pub const MAX_GROUP: usize = 1_024;

/// A request to the writer.
pub enum Request {
    /// Append `payload`; the reply carries its offset.
    Append {
        /// The record.
        payload: Bytes,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<u64, BusError>>,
    },
    /// Sync now if anything is unsynced (the flush-mode timer).
    Sync,
}

/// The writer thread's state.
pub struct Writer {
    pub(super) dir: PathBuf,
    pub(super) settings: WalSettings,
    pub(super) state: Arc<State>,
    pub(super) file: File,
    pub(super) segment_first: u64,
    /// Bytes written to the current segment (visible or not yet).
    pub(super) segment_bytes: u64,
    pub(super) next_offset: u64,
    /// Written but not yet synced (flush mode).
    pub(super) unsynced: bool,
    pub(super) last_sync: Instant,
}

impl Writer {
    /// Serves requests until every sender is gone, then syncs a last time.
    pub fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        while let Some(first) = requests.blocking_recv() {
            let mut appends = Vec::new();
            let mut sync_asked = false;
            let mut next = Some(first);
            while let Some(request) = next {
                match request {
                    Request::Append { payload, reply } => appends.push((payload, reply)),
                    Request::Sync => sync_asked = true,
                }
                next = if appends.len() < MAX_GROUP {
                    requests.try_recv().ok()
                } else {
                    None
                };
            }
            self.write_group(appends);
            if let Durability::Flush { interval } = self.settings.durability
                && self.unsynced
                && (sync_asked || self.last_sync.elapsed() >= interval)
            {
                self.sync();
            }
        }
        if self.unsynced {
            self.sync();
        }
        info!(next_offset = self.next_offset, "wal writer stopped");
    }

    fn write_group(&mut self, appends: Vec<(Bytes, oneshot::Sender<Result<u64, BusError>>)>) {
        if appends.is_empty() {
            return;
        }
        let state = Arc::clone(&self.state);
        let metrics = &state.metrics;
        let budget = self.settings.max_disk_bytes;
        let used = self.state.disk_bytes.load(Ordering::Acquire);
        let mut buffer = Vec::new();
        let mut accepted = Vec::with_capacity(appends.len());
        // What the read cache gets once the group is written: offset, payload, end in `buffer`.
        let mut written_records = Vec::with_capacity(appends.len());
        let mut offset = self.next_offset;
        for (payload, reply) in appends {
            if payload.len() > self.settings.max_record_bytes {
                metrics.wal_refused("too_large");
                let _ = reply.send(Err(BusError::TooLarge(format!(
                    "a record of {} bytes is over bus.max_record_bytes ({})",
                    payload.len(),
                    self.settings.max_record_bytes
                ))));
                continue;
            }
            let framed = segment::framed_len(payload.len());
            if used + buffer.len() as u64 + framed > budget {
                metrics.wal_refused("budget");
                let _ = reply.send(Err(BusError::Full(format!(
                    "the wal holds {used} bytes that consumers have not checkpointed, its budget is {budget} bytes (bus.wal.max_disk_bytes); retry once they catch up"
                ))));
                continue;
            }
            segment::encode(offset, &payload, &mut buffer);
            written_records.push((offset, payload, buffer.len() as u64));
            accepted.push((offset, reply));
            offset += 1;
        }
        if accepted.is_empty() {
            return;
        }
        if self.segment_bytes >= self.settings.segment_bytes
            && let Err(error) = self.roll()
        {
            error!(error = %error, "failed to start a new wal segment");
            fail_all(accepted, &error, metrics);
            return;
        }
        let before = self.segment_bytes;
        let started = Instant::now();
        let written = self.file.write_all(&buffer).and_then(|()| {
            if self.settings.durability == Durability::Fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        metrics
            .wal_write_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(io_error) = written {
            // Cut the group off again so the segment ends on a whole record; the group is
            // refused, and the next one tries afresh (space may have come back).
            let cut = self.file.set_len(before);
            let disk_full = io_error.kind() == std::io::ErrorKind::StorageFull;
            let error = if disk_full {
                metrics.wal_refused("disk_full");
                BusError::Full(format!(
                    "the wal's disk is full ({io_error}); retry once space is freed"
                ))
            } else {
                metrics.wal_refused("io");
                BusError::Storage(format!("failed to write the wal: {io_error}"))
            };
            warn!(error = %error, cut_back = cut.is_ok(), "wal write failed; the group is refused");
            fail_all(accepted, &error, metrics);
            return;
        }
        self.state.recent.push(
            written_records
                .into_iter()
                .map(|(offset, payload, end)| Entry {
                    offset,
                    segment_first: self.segment_first,
                    end: before + end,
                    payload,
                })
                .collect(),
        );
        self.segment_bytes += buffer.len() as u64;
        self.next_offset = offset;
        let total = self
            .state
            .disk_bytes
            .fetch_add(buffer.len() as u64, Ordering::AcqRel)
            + buffer.len() as u64;
        metrics
            .wal_disk_bytes
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        match self.settings.durability {
            Durability::Fsync => self.publish(),
            Durability::Flush { .. } => self.unsynced = true,
        }
        for (offset, reply) in accepted {
            let _ = reply.send(Ok(offset));
        }
    }

    /// Syncs the current segment, then lets readers see everything written.
    fn sync(&mut self) {
        if let Err(error) = self.file.sync_data() {
            // The page cache still holds the records; readers get them, but a power loss now
            // may take them (flush mode promises no more).
            error!(error = %error, "failed to sync the wal");
        }
        self.publish();
    }

    fn publish(&mut self) {
        {
            let mut segments = self.state.lock_segments();
            if let Some(info) = segments.get_mut(&self.segment_first) {
                info.visible_bytes = self.segment_bytes;
                info.visible_end = self.next_offset;
            }
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        self.state.committed.send_replace(self.next_offset);
    }

    /// Closes the current segment (synced and visible) and starts the next at `next_offset`.
    fn roll(&mut self) -> Result<(), BusError> {
        self.sync();
        let (file, info) = create_segment(&self.dir, self.next_offset)?;
        self.file = file;
        self.segment_first = info.first_offset;
        self.segment_bytes = 0;
        self.state.lock_segments().insert(info.first_offset, info);
        Ok(())
    }
}

fn fail_all(
    accepted: Vec<(u64, oneshot::Sender<Result<u64, BusError>>)>,
    error: &BusError,
    metrics: &crate::metrics::BusMetrics,
) {
    metrics.append_failures.inc_by(accepted.len() as u64);
    for (_, reply) in accepted {
        let _ = reply.send(Err(error.clone()));
    }
}

/// Creates the empty segment starting at `first_offset` (and syncs the directory, so the
/// file survives a power loss).
pub fn create_segment(
    dir: &std::path::Path,
    first_offset: u64,
) -> Result<(File, SegmentInfo), BusError> {
    let path = segment::segment_path(dir, first_offset);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&path)
        .map_err(|error| {
            BusError::Storage(format!(
                "failed to create wal segment {}: {error}",
                path.display()
            ))
        })?;
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| {
            BusError::Storage(format!(
                "failed to sync wal directory {}: {error}",
                dir.display()
            ))
        })?;
    let info = SegmentInfo {
        path,
        first_offset,
        visible_bytes: 0,
        visible_end: first_offset,
    };
    Ok((file, info))
}

/// Asks the writer to sync every `interval` (flush mode) until the log is dropped.
pub async fn sync_timer(requests: mpsc::WeakSender<Request>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(sender) = requests.upgrade() else {
            return;
        };
        // A full queue means the writer is busy and syncs on its own once the interval passed.
        let _ = sender.try_send(Request::Sync);
    }
}
