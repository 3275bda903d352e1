//! The WAL's files: segments of framed records, and how they are checked and read back.
//!
//! A segment is `<dir>/segments/<first offset, 20 digits>.wal`, a sequence of records:
//!
//! ```text
//! payload length  u32 LE
//! crc32           u32 LE   over the offset bytes, then the payload
//! offset          u64 LE   the record's position, assigned by the WAL and never reused
//! payload         length bytes
//! ```
//!
//! Offsets rise through a segment and from one segment to the next (with gaps allowed). Only
//! the last segment is ever written to; the others are complete and fsynced before the next
//! one starts. On open every segment is scanned; a torn or corrupt tail (a crash mid-write) is
//! cut off at the last whole record.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use tracing::warn;

use crate::BusError;

/// Bytes of a record's header.
pub const HEADER_BYTES: u64 = 16;

/// What a segment holds, as far as readers may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Its file.
    pub path: PathBuf,
    /// Offset of its first record (or of the first it will hold).
    pub first_offset: u64,
    /// Bytes readers may read: whole records, durable as the durability setting promises.
    pub visible_bytes: u64,
    /// Offset after its last visible record (`first_offset` while it holds none).
    pub visible_end: u64,
}

/// Every segment by first offset.
pub type SegmentMap = BTreeMap<u64, SegmentInfo>;

/// The file name of the segment starting at `first_offset`.
pub fn segment_path(dir: &Path, first_offset: u64) -> PathBuf {
    dir.join(format!("{first_offset:020}.wal"))
}

/// Appends the framed record to `into`.
pub fn encode(offset: u64, payload: &[u8], into: &mut Vec<u8>) {
    let length = u32::try_from(payload.len()).expect("records are at most max_record_bytes");
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    hasher.update(payload);
    into.extend_from_slice(&length.to_le_bytes());
    into.extend_from_slice(&hasher.finalize().to_le_bytes());
    into.extend_from_slice(&offset.to_le_bytes());
    into.extend_from_slice(payload);
}

/// Bytes a record of `payload_len` takes on disk.
pub fn framed_len(payload_len: usize) -> u64 {
    HEADER_BYTES + payload_len as u64
}

/// A record read back.
#[derive(Debug)]
pub struct Frame {
    /// Its offset.
    pub offset: u64,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Where the next record starts in the file.
    pub end: u64,
}

/// Why a record could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The file ends inside the record (or exactly where it would start).
    Truncated,
    /// Its length is impossible or its checksum does not match.
    Corrupt(String),
    /// The read failed.
    Io(std::io::Error),
}

/// Reads the record at `position`. Payloads longer than `max_payload` are corrupt: the WAL
/// never writes them.
pub fn read_frame(file: &File, position: u64, max_payload: usize) -> Result<Frame, FrameError> {
    let mut header = [0_u8; HEADER_BYTES as usize];
    read_exactly(file, &mut header, position)?;
    let [
        l0,
        l1,
        l2,
        l3,
        c0,
        c1,
        c2,
        c3,
        o0,
        o1,
        o2,
        o3,
        o4,
        o5,
        o6,
        o7,
    ] = header;
    let length = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    let offset = u64::from_le_bytes([o0, o1, o2, o3, o4, o5, o6, o7]);
    if length > max_payload {
        return Err(FrameError::Corrupt(format!(
            "record at byte {position} claims {length} bytes, more than the limit of {max_payload}"
        )));
    }
    let mut payload = vec![0_u8; length];
    read_exactly(file, &mut payload, position + HEADER_BYTES)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    hasher.update(&payload);
    if hasher.finalize() != crc {
        return Err(FrameError::Corrupt(format!(
            "record at byte {position} fails its checksum"
        )));
    }
    Ok(Frame {
        offset,
        payload,
        end: position + HEADER_BYTES + length as u64,
    })
}

fn read_exactly(file: &File, buffer: &mut [u8], position: u64) -> Result<(), FrameError> {
    file.read_exact_at(buffer, position)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(error),
        })
}

fn storage(what: &str, path: &Path, error: impl std::fmt::Display) -> BusError {
    BusError::Storage(format!("failed to {what} {}: {error}", path.display()))
}

/// Scans every segment in `dir`, cutting off a torn or corrupt tail, and returns them with
/// the number of bytes cut.
pub fn recover(dir: &Path, max_payload: usize) -> Result<(SegmentMap, u64), BusError> {
    let mut firsts = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|error| storage("list", dir, error))?;
    for entry in entries {
        let entry = entry.map_err(|error| storage("list", dir, error))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".wal"))
            .and_then(|number| number.parse::<u64>().ok())
        else {
            continue;
        };
        firsts.push(first);
    }
    firsts.sort_unstable();
    let mut segments = SegmentMap::new();
    let mut cut = 0;
    let mut floor = 0;
    for first in firsts {
        let path = segment_path(dir, first);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|error| storage("open", &path, error))?;
        let size = file
            .metadata()
            .map_err(|error| storage("read the size of", &path, error))?
            .len();
        let mut position = 0;
        let mut end = first.max(floor);
        while position < size {
            match read_frame(&file, position, max_payload) {
                Ok(frame) if frame.offset >= end => {
                    end = frame.offset + 1;
                    position = frame.end;
                }
                Ok(frame) => {
                    warn!(segment = %path.display(), position, offset = frame.offset, expected = end, "wal record out of order; cutting the segment here");
                    break;
                }
                Err(FrameError::Truncated) => break,
                Err(FrameError::Corrupt(reason)) => {
                    warn!(segment = %path.display(), reason, "corrupt wal record; cutting the segment here");
                    break;
                }
                Err(FrameError::Io(error)) => return Err(storage("read", &path, error)),
            }
        }
        if position < size {
            warn!(segment = %path.display(), kept = position, cut = size - position, "wal segment had a torn tail (a crash mid-write); cut it off");
            file.set_len(position)
                .and_then(|()| file.sync_all())
                .map_err(|error| storage("truncate", &path, error))?;
            cut += size - position;
        }
        floor = end;
        segments.insert(
            first,
            SegmentInfo {
                path,
                first_offset: first,
                visible_bytes: position,
                visible_end: end,
            },
        );
    }
    Ok((segments, cut))
}

/// Where a consumer is in the log: the next offset it wants and, once found, the segment
/// and byte it is at.
#[derive(Debug, Default)]
pub struct Cursor {
    /// The next offset to deliver.
    pub next_offset: u64,
    open: Option<OpenSegment>,
    /// Where `next_offset` lies on disk, when known without the file open: (segment, byte).
    hint: Option<(u64, u64)>,
}

#[derive(Debug)]
struct OpenSegment {
    first_offset: u64,
    file: File,
    position: u64,
}

/// What one read found.
#[derive(Debug, Default)]
pub struct Read {
    /// Records, in offset order.
    pub records: Vec<(u64, Bytes)>,
    /// Set when the cursor's offset had been released already and it moved on to the first
    /// retained record: (wanted, found).
    pub skipped: Option<(u64, u64)>,
}

impl Cursor {
    /// A cursor at `next_offset`.
    pub fn at(next_offset: u64) -> Cursor {
        Cursor {
            next_offset,
            open: None,
            hint: None,
        }
    }

    /// Moves the cursor past records delivered from elsewhere (the in-memory cache): the next
    /// is `next_offset`, at byte `position` of the segment starting at `segment_first`.
    pub fn follow(&mut self, next_offset: u64, segment_first: u64, position: u64) {
        self.next_offset = next_offset;
        match &mut self.open {
            Some(open) if open.first_offset == segment_first => open.position = position,
            _ => {
                self.open = None;
                self.hint = Some((segment_first, position));
            }
        }
    }

    /// Reads up to `max_records` records (stopping past `max_bytes` of payload) that readers
    /// may see, from the cursor on.
    pub fn read(
        &mut self,
        segments: &std::sync::Mutex<SegmentMap>,
        max_records: usize,
        max_bytes: usize,
        max_payload: usize,
    ) -> Result<Read, BusError> {
        let mut read = Read::default();
        let mut bytes = 0;
        while read.records.len() < max_records && bytes < max_bytes {
            // What readers may see of the segment the cursor is in, and where the next
            // segment starts, looked up afresh each step: the writer moves both.
            let (visible_bytes, next_first) = {
                let map = segments
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if self.open.is_none() {
                    let Some(info) = locate(&map, self.next_offset) else {
                        break;
                    };
                    if info.first_offset > self.next_offset {
                        read.skipped
                            .get_or_insert((self.next_offset, info.first_offset));
                        self.next_offset = info.first_offset;
                    }
                    let file = File::open(&info.path)
                        .map_err(|error| storage("open", &info.path, error))?;
                    let position = match self.hint.take() {
                        Some((first, position)) if first == info.first_offset => position,
                        _ => 0,
                    };
                    self.open = Some(OpenSegment {
                        first_offset: info.first_offset,
                        file,
                        position,
                    });
                }
                let Some(open) = &self.open else { break };
                let visible = map
                    .get(&open.first_offset)
                    .map_or(open.position, |info| info.visible_bytes);
                let next_first = map
                    .range(open.first_offset + 1..)
                    .next()
                    .map(|(first, _)| *first);
                (visible, next_first)
            };
            let Some(open) = self.open.as_mut() else {
                break;
            };
            if open.position >= visible_bytes {
                match next_first {
                    // This segment is complete (only the last one grows): go on to the next.
                    Some(first) => {
                        // The segments in between were released while this one was read.
                        if first > self.next_offset {
                            read.skipped.get_or_insert((self.next_offset, first));
                        }
                        self.next_offset = self.next_offset.max(first);
                        self.open = None;
                        continue;
                    }
                    None => break,
                }
            }
            let frame = read_frame(&open.file, open.position, max_payload).map_err(|error| {
                BusError::Storage(format!(
                    "failed to read the wal at byte {} of segment {}: {error:?}",
                    open.position, open.first_offset
                ))
            })?;
            open.position = frame.end;
            if frame.offset < self.next_offset {
                continue;
            }
            self.next_offset = frame.offset + 1;
            bytes += frame.payload.len();
            read.records
                .push((frame.offset, Bytes::from(frame.payload)));
        }
        Ok(read)
    }

    /// Forgets the open segment: the next read looks the offset up again.
    pub fn reset(&mut self, next_offset: u64) {
        self.next_offset = next_offset;
        self.open = None;
        self.hint = None;
    }
}

/// The segment holding `offset`: the last one starting at or before it, or the first one when
/// `offset` was released already.
fn locate(map: &SegmentMap, offset: u64) -> Option<&SegmentInfo> {
    map.range(..=offset)
        .next_back()
        .or_else(|| map.iter().next())
        .map(|(_, info)| info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_at_the_last_whole_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = segment_path(dir.path(), 5);
        let mut bytes = Vec::new();
        for offset in 5..9 {
            encode(offset, format!("record {offset}").as_bytes(), &mut bytes);
        }
        let whole = bytes.len() as u64;
        // A fifth record, half written.
        let mut torn = Vec::new();
        encode(9, b"record 9", &mut torn);
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(&path, &bytes).expect("write");
        let (segments, cut) = recover(dir.path(), 1024).expect("recover");
        assert_eq!(cut, (torn.len() / 2) as u64);
        let info = &segments[&5];
        assert_eq!((info.visible_bytes, info.visible_end), (whole, 9));
        assert_eq!(std::fs::metadata(&path).expect("size").len(), whole);

        // A flipped byte in the last record: cut there too.
        let mut damaged = std::fs::read(&path).expect("read");
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        std::fs::write(&path, &damaged).expect("write");
        let (segments, _) = recover(dir.path(), 1024).expect("recover");
        assert_eq!(segments[&5].visible_end, 8);

        let mut cursor = Cursor::at(0);
        let read = cursor
            .read(&std::sync::Mutex::new(segments), 100, 1 << 20, 1024)
            .expect("read");
        let offsets: Vec<u64> = read.records.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(offsets, vec![5, 6, 7]);
        assert_eq!(read.skipped, Some((0, 5)));
    }
}
