//! Moving a WAL written by Sluice before segment files (Quickwit's `mrecordlog`, in
//! `<dir>/records`, queue `envelopes`) into segments, keeping every record's offset, so the
//! consumers' checkpoints and the positions in their commits stay true.
//!
//! Done once, at open, before anything else reads the log: the records are written to a
//! segment under a temporary name, synced, renamed into place, and only then is the old log
//! removed. A crash in between leaves the old log whole, and the next open does it again.

use std::io::Write as _;
use std::path::Path;

use tracing::info;

use super::segment;
use crate::BusError;

const LEGACY_QUEUE: &str = "envelopes";

/// The old WAL took records of any size the doppler took (64 MiB by default then).
pub const MAX_LEGACY_RECORD_BYTES: usize = 64 * 1024 * 1024;

fn storage(what: &str, path: &Path, error: impl std::fmt::Debug) -> BusError {
    BusError::Storage(format!("failed to {what} {}: {error:?}", path.display()))
}

/// Moves `<dir>/records` into `segments_dir`, if it is there.
pub fn migrate(dir: &Path, segments_dir: &Path) -> Result<(), BusError> {
    let legacy_dir = dir.join("records");
    if !legacy_dir.is_dir() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|error| storage("start a runtime to read", &legacy_dir, error))?;
    let records: Vec<(u64, Vec<u8>)> = runtime.block_on(async {
        let log = mrecordlog::MultiRecordLog::open(&legacy_dir)
            .await
            .map_err(|error| storage("open the legacy wal", &legacy_dir, error))?;
        if !log.queue_exists(LEGACY_QUEUE) {
            return Ok(Vec::new());
        }
        let range = log
            .range(LEGACY_QUEUE, ..)
            .map_err(|error| storage("read the legacy wal", &legacy_dir, error))?;
        Ok::<_, BusError>(
            range
                .map(|(offset, payload)| (offset, payload.into_owned()))
                .collect(),
        )
    })?;
    if let Some((first, _)) = records.first() {
        let mut bytes = Vec::new();
        for (offset, payload) in &records {
            segment::encode(*offset, payload, &mut bytes);
        }
        let path = segment::segment_path(segments_dir, *first);
        let temporary = path.with_extension("wal.migrating");
        let written = std::fs::File::create(&temporary)
            .and_then(|mut file| {
                file.write_all(&bytes)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temporary, &path))
            .and_then(|()| std::fs::File::open(segments_dir)?.sync_all());
        written.map_err(|error| storage("write the migrated wal segment", &path, error))?;
    }
    std::fs::remove_dir_all(&legacy_dir)
        .map_err(|error| storage("remove the migrated legacy wal", &legacy_dir, error))?;
    info!(
        records = records.len(),
        first_offset = records.first().map(|(offset, _)| *offset),
        "moved the legacy wal into segments"
    );
    Ok(())
}
