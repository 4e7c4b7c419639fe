//! Change-log segment files: their names and their header.
//!
//! Each shard appends to its own segments in `<persist>/log/`. A segment is
//! named after its log generation, its shard and the sequence number of its
//! first record, so a directory listing orders them; its 40-byte header
//! repeats those and the shard count of the generation (records are routed
//! by token with it). See `docs/PERSISTENCE.md`, "Change log".

use crate::persist::format::{le_u32, le_u64};

/// The change log's directory under the persist root.
pub const LOG_DIR: &str = "log";
/// First 8 bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"NDBLOG\0\0";
/// The segment (and record) format this code writes and reads.
pub const LOG_FORMAT_VERSION: u32 = 1;
/// Magic, format version, shard, shards, reserved, generation, first seq.
pub const SEGMENT_HEADER_LEN: usize = 8 + 4 + 4 + 4 + 4 + 8 + 8;

/// What a segment's header says.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The log generation: a new one begins with every recovery checkpoint.
    pub generation: u64,
    pub shard: u32,
    /// The shard count of the server that wrote the generation.
    pub shards: u32,
    /// The sequence number of the segment's first record.
    pub first_seq: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        h[..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8..12].copy_from_slice(&LOG_FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.shard.to_le_bytes());
        h[16..20].copy_from_slice(&self.shards.to_le_bytes());
        // 20..24 reserved, 0.
        h[24..32].copy_from_slice(&self.generation.to_le_bytes());
        h[32..40].copy_from_slice(&self.first_seq.to_le_bytes());
        h
    }

    /// The header at the start of `bytes`, or why it is not one.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < SEGMENT_HEADER_LEN {
            return Err(format!(
                "{} bytes is too short for a segment header",
                bytes.len()
            ));
        }
        if bytes[..8] != SEGMENT_MAGIC {
            return Err("not a nemesisdb change-log segment (bad magic)".into());
        }
        let version = le_u32(&bytes[8..12]);
        if version != LOG_FORMAT_VERSION {
            return Err(format!(
                "log format version {version}, this server reads {LOG_FORMAT_VERSION}"
            ));
        }
        let header = SegmentHeader {
            shard: le_u32(&bytes[12..16]),
            shards: le_u32(&bytes[16..20]),
            generation: le_u64(&bytes[24..32]),
            first_seq: le_u64(&bytes[32..40]),
        };
        if header.shards == 0 || header.shard >= header.shards || header.first_seq == 0 {
            return Err(format!("impossible header {header:?}"));
        }
        Ok(header)
    }

    /// The file name this segment has in the log directory.
    pub fn file_name(&self) -> String {
        segment_file_name(self.generation, self.shard, self.first_seq)
    }
}

/// `g<generation>-s<shard>-<first seq>.log`, zero-padded so names sort in
/// log order.
pub fn segment_file_name(generation: u64, shard: u32, first_seq: u64) -> String {
    format!("g{generation:010}-s{shard:04}-{first_seq:020}.log")
}

/// (generation, shard, first seq) of a segment file name; None for any
/// other name (ignored by the log).
pub fn parse_segment_file_name(name: &str) -> Option<(u64, u32, u64)> {
    let rest = name.strip_prefix('g')?.strip_suffix(".log")?;
    let mut parts = rest.split('-');
    let generation = parts.next()?;
    let shard = parts.next()?.strip_prefix('s')?;
    let first = parts.next()?;
    if parts.next().is_some()
        || generation.len() != 10
        || shard.len() != 4
        || first.len() != 20
        || ![generation, shard, first]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some((
        generation.parse().ok()?,
        shard.parse().ok()?,
        first.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_name_round_trip() {
        let h = SegmentHeader {
            generation: 3,
            shard: 1,
            shards: 2,
            first_seq: 12_345,
        };
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        assert_eq!(h.file_name(), "g0000000003-s0001-00000000000000012345.log");
        assert_eq!(
            parse_segment_file_name(&h.file_name()),
            Some((3, 1, 12_345))
        );
    }

    #[test]
    fn other_names_and_bad_headers_are_refused() {
        for name in [
            "g0000000003-s0001-00000000000000012345.log.tmp",
            "g3-s1-12345.log",
            "g0000000003-s0001-0000000000000001234x.log",
            "g0000000003-s0001-00000000000000012345-1.log",
            "metadata.json",
        ] {
            assert_eq!(parse_segment_file_name(name), None, "{name}");
        }
        let good = SegmentHeader {
            generation: 1,
            shard: 0,
            shards: 1,
            first_seq: 1,
        }
        .encode();
        assert!(SegmentHeader::decode(&good[..39]).is_err());
        let mut bad = good;
        bad[0] ^= 1;
        assert!(SegmentHeader::decode(&bad).is_err());
        let mut bad = good;
        bad[8] = 2;
        assert!(SegmentHeader::decode(&bad).is_err());
        let mut bad = good;
        bad[12] = 1; // shard 1 of 1
        assert!(SegmentHeader::decode(&bad).is_err());
    }
}
