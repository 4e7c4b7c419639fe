//! Reading the change log back: listing segments, and reading one shard's
//! segments of one generation into records, with the torn-tail and
//! corruption rules of `docs/PERSISTENCE.md`, "Recovery".
//!
//! Owns only reading (and, for a torn tail or `--log-repair`, truncating)
//! segment files; what the records mean is `recovery`'s job.
//!
//! A bad record (it does not decode, or its sequence number is not the next
//! one) is a torn tail only when nothing valid follows it: it is in the
//! shard's last segment and no later offset holds a record with a plausible
//! sequence number. The writer fsyncs a segment before it starts the next,
//! so a crash can only cut the last one; anything else is damage, and
//! replaying past it would apply later changes without earlier ones.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::record::{LogRecord, RECORD_HEAD_LEN, decode};
use super::segment::{SEGMENT_HEADER_LEN, SegmentHeader, parse_segment_file_name};
use crate::persist::PersistError;
use crate::persist::format::le_u64;

/// How far past the last good sequence number a record found while looking
/// past a bad one may be and still count as "a valid record follows"
/// (anything further is taken for garbage that happened to checksum).
const PLAUSIBLE_SEQ_SPAN: u64 = 1 << 32;

/// One segment file, as its name describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    pub path: PathBuf,
    pub generation: u64,
    pub shard: u32,
    pub first_seq: u64,
}

/// Every segment in `log_dir`, ordered by generation, shard and first
/// sequence number. Names that are not segment names are ignored; a missing
/// directory is an empty log.
pub fn list_segments(log_dir: &Path) -> Result<Vec<SegmentFile>, PersistError> {
    let listing = |e| PersistError::io(log_dir, "listing the change log", e);
    let entries = match fs::read_dir(log_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(listing(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(listing)?;
        let Some((generation, shard, first_seq)) =
            entry.file_name().to_str().and_then(parse_segment_file_name)
        else {
            continue;
        };
        if entry.file_type().map_err(listing)?.is_file() {
            out.push(SegmentFile {
                path: entry.path(),
                generation,
                shard,
                first_seq,
            });
        }
    }
    out.sort_by_key(|s| (s.generation, s.shard, s.first_seq));
    Ok(out)
}

/// Segments grouped by (generation, shard), each group in log order.
pub fn group_segments(segments: Vec<SegmentFile>) -> BTreeMap<(u64, u32), Vec<SegmentFile>> {
    let mut groups: BTreeMap<(u64, u32), Vec<SegmentFile>> = BTreeMap::new();
    for s in segments {
        groups.entry((s.generation, s.shard)).or_default().push(s);
    }
    for group in groups.values_mut() {
        group.sort_by_key(|s| s.first_seq);
    }
    groups
}

/// What one shard's log holds after a position.
#[derive(Debug, Default)]
pub struct ShardReplay {
    /// Records with a sequence number above the position, in order (empty
    /// from [`read_shard_with`], which hands them out as it reads).
    pub records: Vec<LogRecord>,
    /// How many records above the position were read.
    pub applied: u64,
    /// The last good sequence number in the log (0: no record at all).
    pub last_seq: u64,
    /// The shard count from the segment headers (None: no readable header).
    pub shards: Option<u32>,
    /// Torn tails and repairs, each a sentence for the operator.
    pub warnings: Vec<String>,
}

/// Where reading stopped on something bad.
struct Bad {
    /// Index of the segment in the group.
    segment: usize,
    /// Byte offset in it (0 or the header length when the segment itself is
    /// at fault: then the whole segment goes).
    offset: usize,
    /// The sequence number that should have been there.
    expected: u64,
    reason: String,
    /// Whether the whole segment is at fault (bad header, a gap before it).
    whole_segment: bool,
}

/// Reads one shard's segments of one generation (`segments` in log order,
/// as [`group_segments`] gives them) and returns the records after
/// `after_seq`.
///
/// A torn tail ends the shard's replay with a warning, and is truncated so
/// the log is clean for what comes next. Corruption before the tail is an
/// error, unless `repair`: then the segment is truncated there, the shard's
/// later segments deleted, and replay ends there with a warning. If any
/// record after `after_seq` exists, the first one returned is
/// `after_seq + 1`, else it is an error (a segment is missing, or no
/// snapshot covers the records before the log's start).
pub fn read_shard(
    segments: &[SegmentFile],
    after_seq: u64,
    repair: bool,
) -> Result<ShardReplay, PersistError> {
    let mut records = Vec::new();
    let mut replay = read_shard_with(segments, after_seq, repair, &mut |r| records.push(r))?;
    replay.records = records;
    Ok(replay)
}

/// [`read_shard`], handing each record after `after_seq` to `apply` as it
/// is read, so a long log never sits in memory decoded (one segment's
/// bytes at a time). On an error, what was handed out already is to be
/// thrown away.
pub fn read_shard_with(
    segments: &[SegmentFile],
    after_seq: u64,
    repair: bool,
    apply: &mut dyn FnMut(LogRecord),
) -> Result<ShardReplay, PersistError> {
    let mut replay = ShardReplay::default();
    let mut first_applied = None;
    // Records after the position must all be here, from the first on.
    if let Some(first) = segments.first()
        && first.first_seq > after_seq.saturating_add(1)
    {
        return Err(PersistError::log(
            &first.path,
            None,
            format!(
                "the log of shard {} in generation {} begins at record {}, but replay needs record {} next: a segment is missing, or no snapshot covers the records before {}",
                first.shard,
                first.generation,
                first.first_seq,
                after_seq + 1,
                first.first_seq
            ),
        ));
    }
    // The sequence number the next record must have; None before the first
    // segment's header.
    let mut expected: Option<u64> = None;
    let mut bad = None;
    'segments: for (k, segment) in segments.iter().enumerate() {
        let last = k + 1 == segments.len();
        let bytes =
            fs::read(&segment.path).map_err(|e| PersistError::io(&segment.path, "reading", e))?;
        let want = expected.unwrap_or(segment.first_seq);
        let header = match check_header(segment, &bytes, replay.shards) {
            Ok(h) => h,
            Err(reason) => {
                // `settle` tells a header cut short in the last segment (a
                // crash right after creating it) from a damaged one.
                bad = Some(Bad {
                    segment: k,
                    offset: 0,
                    expected: want,
                    reason,
                    whole_segment: true,
                });
                break 'segments;
            }
        };
        replay.shards = Some(header.shards);
        if let Some(want) = expected
            && header.first_seq != want
        {
            bad = Some(Bad {
                segment: k,
                offset: 0,
                expected: want,
                reason: format!(
                    "the segment starts at record {}, the one before it ended at {} (a gap)",
                    header.first_seq,
                    want - 1
                ),
                whole_segment: true,
            });
            break;
        }
        let mut next = header.first_seq;
        let mut at = SEGMENT_HEADER_LEN;
        while at < bytes.len() {
            let failure = match decode(&bytes[at..]) {
                Ok((record, len)) if record.seq == next => {
                    if record.seq > after_seq {
                        first_applied.get_or_insert(record.seq);
                        replay.applied += 1;
                        apply(record);
                    }
                    next += 1;
                    at += len;
                    continue;
                }
                Ok((record, _)) => format!(
                    "record {} where record {next} was expected (a gap)",
                    record.seq
                ),
                // Zeros the writer laid ahead of its records: the log
                // ends here (a crash leaves them; a clean close drops them).
                Err(_) if last && bytes[at..].iter().all(|&b| b == 0) => break,
                Err(e) => e.to_string(),
            };
            bad = Some(Bad {
                segment: k,
                offset: at,
                expected: next,
                reason: failure,
                whole_segment: false,
            });
            break 'segments;
        }
        expected = Some(next);
    }
    replay.last_seq = match (&bad, expected) {
        (Some(b), _) => b.expected - 1,
        (None, Some(next)) => next - 1,
        (None, None) => 0,
    };
    if let Some(bad) = bad {
        settle(segments, bad, repair, &mut replay)?;
    }
    if let Some(first) = first_applied
        && first != after_seq + 1
    {
        let path = &segments[0].path;
        return Err(PersistError::log(
            path,
            None,
            format!(
                "the log of shard {} in generation {} continues at record {}, but replay needs record {} next: a segment is missing, or no snapshot covers the records before {}",
                segments[0].shard,
                segments[0].generation,
                first,
                after_seq + 1,
                first
            ),
        ));
    }
    Ok(replay)
}

/// The segment's header, checked against its name and the shard count of
/// the segments before it.
fn check_header(
    segment: &SegmentFile,
    bytes: &[u8],
    shards: Option<u32>,
) -> Result<SegmentHeader, String> {
    let header = SegmentHeader::decode(bytes)?;
    if (header.generation, header.shard, header.first_seq)
        != (segment.generation, segment.shard, segment.first_seq)
    {
        return Err(format!(
            "the header says generation {}, shard {}, first record {}; the file name disagrees",
            header.generation, header.shard, header.first_seq
        ));
    }
    if let Some(shards) = shards
        && header.shards != shards
    {
        return Err(format!(
            "the header says {} shards, the segment before it {shards}",
            header.shards
        ));
    }
    Ok(header)
}

/// Decides whether `bad` is a torn tail or corruption, and truncates (or
/// refuses) accordingly.
fn settle(
    segments: &[SegmentFile],
    bad: Bad,
    repair: bool,
    replay: &mut ShardReplay,
) -> Result<(), PersistError> {
    let segment = &segments[bad.segment];
    let path = &segment.path;
    let len = fs::metadata(path)
        .map_err(|e| PersistError::io(path, "checking", e))?
        .len();
    let last = bad.segment + 1 == segments.len();
    let torn = last
        && if bad.whole_segment {
            // Only a header cut short can be a crash's doing.
            len < SEGMENT_HEADER_LEN as u64
        } else {
            let bytes = fs::read(path).map_err(|e| PersistError::io(path, "reading", e))?;
            !valid_record_follows(&bytes, bad.offset, bad.expected - 1)
        };
    if !torn && !repair {
        return Err(PersistError::log(
            path,
            Some(bad.offset as u64),
            format!(
                "corrupt where record {} was expected ({}), and the log goes on after it, so this is not a write cut short by a crash; start with --log-repair to truncate the log there, losing what follows",
                bad.expected, bad.reason
            ),
        ));
    }
    let later = &segments[bad.segment + 1..];
    let cut_whole = bad.whole_segment;
    if cut_whole {
        fs::remove_file(path).map_err(|e| PersistError::io(path, "removing", e))?;
    } else {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| PersistError::io(path, "opening to truncate", e))?;
        file.set_len(bad.offset as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| PersistError::io(path, "truncating", e))?;
    }
    let mut dropped = len - if cut_whole { 0 } else { bad.offset as u64 };
    for s in later {
        dropped += fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(&s.path).map_err(|e| PersistError::io(&s.path, "removing", e))?;
    }
    if let Some(dir) = path.parent() {
        super::writer::sync_dir(dir).map_err(|reason| PersistError::log(dir, None, reason))?;
    }
    let what = if cut_whole {
        "removed the segment".to_string()
    } else {
        format!("truncated it at byte {}", bad.offset)
    };
    replay.warnings.push(if torn {
        format!(
            "change log {}: torn tail where record {} was expected ({}), a write cut short by a crash; {what}, dropping {dropped} bytes; replay of shard {} ends at record {}",
            path.display(),
            bad.expected,
            bad.reason,
            segment.shard,
            bad.expected - 1
        )
    } else {
        format!(
            "change log {}: --log-repair: corrupt at byte {} where record {} was expected ({}); {what} and removed {} later segment(s), dropping {dropped} bytes; replay of shard {} ends at record {}",
            path.display(),
            bad.offset,
            bad.expected,
            bad.reason,
            later.len(),
            segment.shard,
            bad.expected - 1
        )
    });
    Ok(())
}

/// Whether any offset after `bad` holds a record that decodes with a
/// sequence number plausibly after `last_good`. The sequence number is
/// checked before the CRC, so garbage is passed over cheaply.
fn valid_record_follows(bytes: &[u8], bad: usize, last_good: u64) -> bool {
    let limit = last_good.saturating_add(PLAUSIBLE_SEQ_SPAN);
    let mut at = bad + 1;
    while at + RECORD_HEAD_LEN <= bytes.len() {
        let seq = le_u64(&bytes[at + 8..at + 16]);
        if seq > last_good && seq < limit && decode(&bytes[at..]).is_ok() {
            return true;
        }
        at += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::log::record::{ChangeBuffer, seal};
    use crate::persist::log::segment::segment_file_name;
    use crate::persist::test_support::TempDir;

    /// Writes a segment of shard 0 (of 1), generation 1, holding records
    /// `first..first + n` (each a Deadline of token seq).
    fn segment(dir: &Path, first: u64, n: u64) -> (PathBuf, Vec<usize>) {
        let mut buf = ChangeBuffer::new(first);
        for seq in first..first + n {
            buf.deadline(seq, 1_000 + seq);
        }
        let header = SegmentHeader {
            generation: 1,
            shard: 0,
            shards: 1,
            first_seq: first,
        };
        let mut bytes = header.encode().to_vec();
        let mut starts = Vec::new();
        if let Some(mut batch) = buf.take(None) {
            seal(&mut batch.bytes);
            let mut at = 0;
            while at < batch.bytes.len() {
                starts.push(SEGMENT_HEADER_LEN + at);
                at += decode(&batch.bytes[at..]).unwrap().1;
            }
            bytes.extend_from_slice(&batch.bytes);
        }
        let path = dir.join(segment_file_name(1, 0, first));
        fs::write(&path, bytes).unwrap();
        (path, starts)
    }

    fn read(dir: &Path, after: u64, repair: bool) -> Result<ShardReplay, PersistError> {
        let groups = group_segments(list_segments(dir).unwrap());
        match groups.get(&(1, 0)) {
            Some(segs) => read_shard(segs, after, repair),
            None => Ok(ShardReplay::default()),
        }
    }

    fn seqs(r: &ShardReplay) -> Vec<u64> {
        r.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn listing_ignores_other_names_and_a_missing_directory() {
        let dir = TempDir::new("log-list");
        assert!(list_segments(&dir.path().join("none")).unwrap().is_empty());
        segment(dir.path(), 4, 2);
        segment(dir.path(), 1, 3);
        fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        fs::write(dir.path().join("g1-s0-1.log"), b"x").unwrap();
        let list = list_segments(dir.path()).unwrap();
        assert_eq!(list.iter().map(|s| s.first_seq).collect::<Vec<_>>(), [1, 4]);
        let r = read(dir.path(), 2, false).unwrap();
        assert_eq!(seqs(&r), [3, 4, 5]);
        assert_eq!((r.last_seq, r.shards), (5, Some(1)));
        assert!(r.warnings.is_empty());
        // A position at or past the end: nothing to replay, no error.
        assert!(read(dir.path(), 9, false).unwrap().records.is_empty());
    }

    #[test]
    fn a_cut_anywhere_in_the_last_record_is_a_torn_tail() {
        let dir = TempDir::new("log-torn");
        segment(dir.path(), 1, 3);
        let (path, starts) = segment(dir.path(), 4, 3);
        let whole = fs::read(&path).unwrap();
        let last = *starts.last().unwrap();
        for cut in last..whole.len() {
            fs::write(&path, &whole[..cut]).unwrap();
            let r = read(dir.path(), 0, false).unwrap();
            assert_eq!(seqs(&r), [1, 2, 3, 4, 5], "cut at {cut}");
            if cut == last {
                assert!(r.warnings.is_empty());
            } else {
                assert!(r.warnings[0].contains("torn tail"), "{:?}", r.warnings);
            }
            assert_eq!(fs::metadata(&path).unwrap().len(), last as u64);
        }
        // Zeros after the records (the writer lays them ahead) end the log
        // quietly; a record cut short before them is a torn tail.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0u8; 300]);
        fs::write(&path, &zeros).unwrap();
        let r = read(dir.path(), 0, false).unwrap();
        assert_eq!(r.last_seq, 6);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let mut cut_then_zeros = whole[..whole.len() - 3].to_vec();
        cut_then_zeros.extend_from_slice(&[0u8; 300]);
        fs::write(&path, &cut_then_zeros).unwrap();
        let r = read(dir.path(), 0, false).unwrap();
        assert_eq!(r.last_seq, 5);
        assert!(r.warnings[0].contains("torn tail"), "{:?}", r.warnings);
        fs::write(&path, &whole).unwrap();
        // A last segment whose header was cut short goes.
        let (p7, _) = segment(dir.path(), 7, 1);
        fs::write(&p7, &fs::read(&p7).unwrap()[..20]).unwrap();
        let r = read(dir.path(), 0, false).unwrap();
        assert_eq!(r.last_seq, 6);
        assert!(!p7.exists());
    }

    #[test]
    fn damage_before_the_tail_is_an_error_unless_repaired() {
        let dir = TempDir::new("log-corrupt");
        let (path, starts) = segment(dir.path(), 1, 5);
        let (later, _) = segment(dir.path(), 6, 2);
        let mut bytes = fs::read(&path).unwrap();
        bytes[starts[2] + 30] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let err = read(dir.path(), 0, false).unwrap_err().to_string();
        assert!(
            err.contains("--log-repair")
                && err.contains(&format!("byte {}", starts[2]))
                && err.contains("record 3")
                && err.contains("g0000000001-s0000-00000000000000000001.log"),
            "{err}"
        );
        let r = read(dir.path(), 0, true).unwrap();
        assert_eq!(seqs(&r), [1, 2]);
        assert!(
            r.warnings[0].contains("1 later segment"),
            "{:?}",
            r.warnings
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), starts[2] as u64);
        assert!(!later.exists());
        // Clean now.
        let r = read(dir.path(), 0, false).unwrap();
        assert_eq!((r.last_seq, r.warnings.len()), (2, 0));
    }

    #[test]
    fn a_damaged_record_followed_by_a_good_one_in_the_last_segment_is_corruption() {
        let dir = TempDir::new("log-corrupt-last");
        let (path, starts) = segment(dir.path(), 1, 4);
        let mut bytes = fs::read(&path).unwrap();
        bytes[starts[1] + 4] ^= 0x80;
        fs::write(&path, &bytes).unwrap();
        let err = read(dir.path(), 0, false).unwrap_err().to_string();
        assert!(err.contains("--log-repair"), "{err}");
    }

    #[test]
    fn gaps_and_missing_segments_are_errors() {
        let dir = TempDir::new("log-gap");
        segment(dir.path(), 1, 3);
        segment(dir.path(), 5, 3);
        let err = read(dir.path(), 0, false).unwrap_err().to_string();
        assert!(
            err.contains("a gap") && err.contains("--log-repair"),
            "{err}"
        );

        let dir = TempDir::new("log-missing");
        segment(dir.path(), 5, 3);
        let err = read(dir.path(), 0, false).unwrap_err().to_string();
        assert!(
            err.contains("no snapshot covers the records before 5"),
            "{err}"
        );
        assert_eq!(seqs(&read(dir.path(), 4, false).unwrap()), [5, 6, 7]);
        assert_eq!(seqs(&read(dir.path(), 6, false).unwrap()), [7]);
    }
}
