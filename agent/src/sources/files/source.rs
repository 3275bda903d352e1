//! Following files: every 250 ms the globs are expanded, new files are opened, and every open
//! file's new bytes are cut into records, forwarded, and, once a doppler has them on the bus,
//! checkpointed (`<state_dir>/files-checkpoints.json`, by device and inode, with a fingerprint
//! of the file's first bytes). So a restart resumes each file where its durable records end:
//! nothing is sent twice or skipped. A checkpoint whose fingerprint does not match the file
//! now at that inode (the inode was reused by a new file while the agent was down) is not
//! used: the new file is read from its start, as Filebeat and Vector do.
//!
//! A checkpoint never passes a line that was not acknowledged: when a batch of lines fails,
//! the file is read again from the end of its last acknowledged line, and the lines are sent
//! again. Lines refused for good ([`MAX_REFUSALS`] times in a row at the same offset) are
//! skipped, counted in `sluice_agent_source_records_rejected_total{source="files"}`.
//!
//! Rotation: a file renamed away (rotation by rename) keeps being read through its open handle
//! until it is drained, while the new file at the path is picked up from its start; a file
//! whose size drops below the position read (copytruncate) is read again from its start.
//! Files present when the agent starts with no checkpoint begin at their end
//! (`start_at = "end"`, the default) or start (`"beginning"`); files that appear later are read
//! from their start.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{FileInputConfig, StartAt};
use regex::Regex;
use serde::{Deserialize, Serialize};
use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use sluice_proto::v2::{Envelope, Log, envelope};
use tracing::{debug, info, warn};

use super::reader::{self, Record};
use crate::forwarder::{Forwarder, Ticket};
use crate::metrics::AgentMetrics;

const SOURCE: &str = "files";
const POLL: Duration = Duration::from_millis(250);
/// A last line without its newline is taken as complete after this long without new bytes;
/// so is an open multiline record.
const IDLE_FLUSH: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 1024 * 1024;

/// Device and inode: a file's identity across renames.
type Identity = (u64, u64);

/// Bytes at a file's start whose digest tells a file from another that got its inode later.
const FINGERPRINT_BYTES: u64 = 1024;

/// Lines refused this many times in a row, at the same offset, are skipped (counted).
pub const MAX_REFUSALS: u32 = 3;

/// A followed file's durable position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Where the file was last seen.
    pub path: PathBuf,
    /// End of its last acknowledged record.
    pub offset: u64,
    /// SHA-256 (hex) of its first `fingerprint_bytes` bytes; absent in checkpoints written
    /// before fingerprints, which are trusted as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// How many bytes the fingerprint covers (fewer than [`FINGERPRINT_BYTES`] for a file
    /// that was that short).
    #[serde(default)]
    pub fingerprint_bytes: u64,
}

/// The digest of the first `length` bytes of `file`, or `None` when it has fewer.
pub fn fingerprint(file: &File, length: u64) -> Option<String> {
    let mut head = vec![0_u8; usize::try_from(length).ok()?];
    file.read_exact_at(&mut head, 0).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &head);
    Some(
        digest
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect(),
    )
}

/// Where to start reading a file of `size` bytes just found at an identity: its checkpoint's
/// offset when the checkpoint is really of this file (`head` computes this file's
/// fingerprint over so many bytes), else its start, or its end for a file that was there
/// before the agent started with `start_at = "end"`.
pub fn resume_offset(
    checkpoint: Option<&Checkpoint>,
    size: u64,
    head: impl Fn(u64) -> Option<String>,
    present_at_start: bool,
    start_at: StartAt,
) -> u64 {
    match checkpoint {
        Some(checkpoint) if checkpoint.offset > size => 0,
        Some(checkpoint) => match &checkpoint.fingerprint {
            None => checkpoint.offset,
            Some(expected) if head(checkpoint.fingerprint_bytes).as_ref() == Some(expected) => {
                checkpoint.offset
            }
            // Another file has this inode now.
            Some(_) => 0,
        },
        None if present_at_start && start_at == StartAt::End => size,
        None => 0,
    }
}

struct Tracked {
    input: usize,
    path: PathBuf,
    file: File,
    /// Where the unread bytes start (everything before is in `buffer` or forwarded).
    read_offset: u64,
    /// End of the last record a doppler acknowledged: where reading starts over after a
    /// failure.
    acknowledged: u64,
    /// Failures in a row of the lines starting at `acknowledged`.
    refusals: u32,
    /// File offset of `buffer[0]`.
    buffer_start: u64,
    buffer: Vec<u8>,
    /// An open multiline record waiting for its continuations.
    pending: Option<Record>,
    last_growth: Instant,
    /// No longer at its path (renamed or deleted): dropped once drained.
    moved: bool,
}

struct Input {
    config: FileInputConfig,
    multiline: Option<Regex>,
}

/// The tailed files source.
pub struct FilesSource {
    inputs: Vec<Input>,
    forwarder: Arc<Forwarder>,
    metrics: AgentMetrics,
    checkpoint_path: PathBuf,
}

impl FilesSource {
    /// A source for `inputs`, keeping its checkpoints in `state_dir`.
    pub fn new(
        inputs: Vec<FileInputConfig>,
        state_dir: &Path,
        forwarder: Arc<Forwarder>,
        metrics: AgentMetrics,
    ) -> Result<FilesSource, SluiceError> {
        let inputs = inputs
            .into_iter()
            .map(|config| {
                let multiline = config
                    .multiline_start
                    .as_deref()
                    .map(Regex::new)
                    .transpose()
                    .map_err(|error| {
                        SluiceError::invalid(format!("agent.files: multiline_start: {error}"))
                    })?;
                Ok(Input { config, multiline })
            })
            .collect::<Result<Vec<_>, SluiceError>>()?;
        Ok(FilesSource {
            inputs,
            forwarder,
            metrics,
            checkpoint_path: state_dir.join("files-checkpoints.json"),
        })
    }

    /// Follows the files until `shutdown` fires.
    pub async fn serve(self, mut shutdown: Shutdown) -> Result<(), SluiceError> {
        let mut checkpoints = self.load_checkpoints();
        let mut tracked: HashMap<Identity, Tracked> = HashMap::new();
        let mut first_scan = true;
        info!(
            inputs = self.inputs.len(),
            checkpoints = checkpoints.len(),
            "files source following"
        );
        loop {
            self.scan(&mut tracked, &checkpoints, first_scan);
            first_scan = false;
            let identities: Vec<Identity> = tracked.keys().copied().collect();
            for identity in identities {
                let Some(file) = tracked.get_mut(&identity) else {
                    continue;
                };
                match self.pump(file).await {
                    Ok(Some(offset)) => {
                        let fingerprint_bytes = offset.min(FINGERPRINT_BYTES);
                        checkpoints.insert(
                            identity_key(identity),
                            Checkpoint {
                                path: file.path.clone(),
                                offset,
                                fingerprint: fingerprint(&file.file, fingerprint_bytes),
                                fingerprint_bytes,
                            },
                        );
                        self.save_checkpoints(&checkpoints);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        warn!(path = %file.path.display(), error = %error, "failed to read a followed file");
                    }
                }
                let drained = file.moved
                    && file.buffer.is_empty()
                    && file.pending.is_none()
                    && file.file.metadata().map(|m| m.len()).unwrap_or(0) <= file.read_offset;
                if drained {
                    debug!(path = %file.path.display(), "finished a rotated file");
                    tracked.remove(&identity);
                }
            }
            tokio::select! {
                () = shutdown.wait() => return Ok(()),
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    fn load_checkpoints(&self) -> BTreeMap<String, Checkpoint> {
        std::fs::read(&self.checkpoint_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save_checkpoints(&self, checkpoints: &BTreeMap<String, Checkpoint>) {
        let temporary = self.checkpoint_path.with_extension("json.tmp");
        let written = serde_json::to_vec(checkpoints)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                if let Some(parent) = temporary.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&temporary, bytes)
            })
            .and_then(|()| std::fs::rename(&temporary, &self.checkpoint_path));
        if let Err(error) = written {
            warn!(error = %error, "failed to write the files checkpoints");
        }
    }

    /// Opens files that match and are not followed yet; marks followed files no longer at
    /// their path.
    fn scan(
        &self,
        tracked: &mut HashMap<Identity, Tracked>,
        checkpoints: &BTreeMap<String, Checkpoint>,
        first_scan: bool,
    ) {
        let mut present: HashMap<Identity, PathBuf> = HashMap::new();
        for (index, input) in self.inputs.iter().enumerate() {
            for pattern in &input.config.paths {
                let Ok(paths) = glob::glob(pattern) else {
                    continue;
                };
                for path in paths.flatten() {
                    let Ok(metadata) = std::fs::metadata(&path) else {
                        continue;
                    };
                    if !metadata.is_file() {
                        continue;
                    }
                    let identity = (metadata.dev(), metadata.ino());
                    present.insert(identity, path.clone());
                    if tracked.contains_key(&identity) {
                        continue;
                    }
                    let Ok(file) = File::open(&path) else {
                        continue;
                    };
                    let size = metadata.len();
                    let offset = resume_offset(
                        checkpoints.get(&identity_key(identity)),
                        size,
                        |length| fingerprint(&file, length),
                        first_scan,
                        input.config.start_at,
                    );
                    debug!(path = %path.display(), offset, "following a file");
                    tracked.insert(
                        identity,
                        Tracked {
                            input: index,
                            path,
                            file,
                            read_offset: offset,
                            acknowledged: offset,
                            refusals: 0,
                            buffer_start: offset,
                            buffer: Vec::new(),
                            pending: None,
                            last_growth: Instant::now(),
                            moved: false,
                        },
                    );
                }
            }
        }
        for (identity, file) in tracked.iter_mut() {
            match present.get(identity) {
                Some(path) => file.path = path.clone(),
                None => file.moved = true,
            }
        }
    }

    /// Reads what is new in one file and forwards its complete records; returns the offset to
    /// checkpoint once they are durable.
    async fn pump(&self, file: &mut Tracked) -> Result<Option<u64>, String> {
        let input = &self.inputs[file.input];
        let size = file
            .file
            .metadata()
            .map_err(|error| error.to_string())?
            .len();
        if size < file.read_offset {
            // Truncated (copytruncate): the file starts over.
            debug!(path = %file.path.display(), "file truncated; reading it from its start");
            file.restart_at(0);
        }
        let mut grew = false;
        while file.read_offset < size {
            let want = ((size - file.read_offset) as usize).min(READ_CHUNK);
            let mut chunk = vec![0_u8; want];
            let read = file
                .file
                .read_at(&mut chunk, file.read_offset)
                .map_err(|error| error.to_string())?;
            if read == 0 {
                break;
            }
            file.buffer.extend_from_slice(&chunk[..read]);
            file.read_offset += read as u64;
            grew = true;
            if file.buffer.len() >= READ_CHUNK {
                break;
            }
        }
        if grew {
            file.last_growth = Instant::now();
        }
        let idle = file.last_growth.elapsed() >= IDLE_FLUSH;
        let (records, used) = reader::cut(
            &file.buffer,
            file.buffer_start,
            input.config.max_line_bytes,
            idle,
        );
        file.buffer.drain(..used);
        file.buffer_start += used as u64;
        let records = match &input.multiline {
            Some(start) => {
                let (done, open) = reader::join(file.pending.take(), records, start, idle);
                file.pending = open;
                done
            }
            None => records,
        };
        let Some(last) = records.last() else {
            return Ok(None);
        };
        let offset = last.end_offset;
        let path = file.path.display().to_string();
        let now = sluice_common::time::now_nanos();
        let envelopes: Vec<Envelope> = records
            .into_iter()
            .map(|record| {
                let mut tags = HashMap::from([("file".to_owned(), path.clone())]);
                if let Some((part, count)) = record.part {
                    tags.insert("split".to_owned(), format!("{part}/{count}"));
                }
                Envelope {
                    timestamp: now,
                    source_id: input.config.source_id.clone(),
                    tags,
                    message: Some(envelope::Message::Log(Log {
                        payload: record.text.into_bytes(),
                        r#type: 0,
                    })),
                    ..Default::default()
                }
            })
            .collect();
        let count = envelopes.len() as u64;
        let (ticket, done) = Ticket::new(SOURCE);
        if let Err(status) = self.forwarder.submit_waiting(envelopes, &ticket).await {
            file.restart_at(file.acknowledged);
            return Err(status.message().to_owned());
        }
        drop(ticket);
        match done.await {
            Ok(Ok(())) => {
                self.metrics.source_accepted(SOURCE, count);
                file.acknowledged = offset;
                file.refusals = 0;
                Ok(Some(offset))
            }
            Ok(Err(status)) => {
                file.refusals += 1;
                if file.refusals >= MAX_REFUSALS {
                    // Refused every time: skip these lines, counted, rather than stall the file.
                    self.metrics.source_refused_many(SOURCE, "refused", count);
                    file.acknowledged = offset;
                    file.refusals = 0;
                    return Err(format!(
                        "{count} lines refused {MAX_REFUSALS} times ({}); skipped",
                        status.message()
                    ));
                }
                file.restart_at(file.acknowledged);
                Err(format!(
                    "lines not acknowledged: {}; reading them again",
                    status.message()
                ))
            }
            Err(_) => {
                file.restart_at(file.acknowledged);
                Err("the agent stopped before the lines were acknowledged".to_owned())
            }
        }
    }
}

impl Tracked {
    /// Forgets everything read past `offset`, so reading continues from there.
    fn restart_at(&mut self, offset: u64) {
        self.read_offset = offset;
        self.buffer_start = offset;
        self.buffer.clear();
        self.pending = None;
        self.acknowledged = self.acknowledged.min(offset);
    }
}

fn identity_key((device, inode): Identity) -> String {
    format!("{device}:{inode}")
}
