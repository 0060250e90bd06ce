//! Where a group's members can be reached, as the log says.
//!
//! Membership itself is raft-rs's conf state (voters and learners by id). What raft does not
//! keep is how to reach a member that joined later: a conf change that adds a node carries its
//! address (opaque bytes, the node layer's business) in its context, and every replica records
//! it when it applies the change. The record is persisted next to the conf state and travels
//! inside snapshots, framed ahead of the state machine's own bytes:
//!
//! `magic "CRGS" | version u8 | count u32 | (id u64, len u32, address)* | state machine bytes`
//!
//! (integers little-endian). Snapshot data without the magic is a bare state machine snapshot
//! from before this framing and restores with no addresses.

use std::collections::BTreeMap;

/// Member id → address, for members added after bootstrap.
pub type Members = BTreeMap<u64, Vec<u8>>;

const MAGIC: &[u8; 4] = b"CRGS";
const VERSION: u8 = 1;
/// The longest address accepted in a conf change or a snapshot.
pub const MAX_ADDRESS: usize = 256;
/// The most members a record may list.
const MAX_MEMBERS: usize = 4096;

/// The member record alone (no magic, no state machine bytes).
pub fn encode(members: &Members) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + members.len() * 32);
    out.extend_from_slice(&(members.len() as u32).to_le_bytes());
    for (id, addr) in members {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(addr.len() as u32).to_le_bytes());
        out.extend_from_slice(addr);
    }
    out
}

/// Parses a member record; returns it and the bytes after it.
pub fn decode(data: &[u8]) -> Result<(Members, &[u8]), String> {
    let take = |data: &mut &[u8], n: usize| -> Result<Vec<u8>, String> {
        if data.len() < n {
            return Err("member record is truncated".into());
        }
        let (head, rest) = data.split_at(n);
        *data = rest;
        Ok(head.to_vec())
    };
    let mut rest = data;
    let count = u32::from_le_bytes(take(&mut rest, 4)?.try_into().expect("4 bytes")) as usize;
    if count > MAX_MEMBERS {
        return Err(format!("member record lists {count} members"));
    }
    let mut members = Members::new();
    for _ in 0..count {
        let id = u64::from_le_bytes(take(&mut rest, 8)?.try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().expect("4 bytes")) as usize;
        if len > MAX_ADDRESS {
            return Err(format!("member {id} has a {len}-byte address"));
        }
        members.insert(id, take(&mut rest, len)?);
    }
    Ok((members, rest))
}

/// Snapshot data: the member record, then the state machine's bytes.
pub fn frame_snapshot(members: &Members, state: &[u8]) -> Vec<u8> {
    let record = encode(members);
    let mut out = Vec::with_capacity(5 + record.len() + state.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&record);
    out.extend_from_slice(state);
    out
}

/// Splits snapshot data into the member record and the state machine's bytes.
pub fn split_snapshot(data: &[u8]) -> Result<(Members, &[u8]), String> {
    match data.strip_prefix(MAGIC.as_slice()) {
        None => Ok((Members::new(), data)),
        Some([VERSION, rest @ ..]) => decode(rest),
        Some(_) => Err("unsupported group snapshot version".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_bare_ones_still_load() {
        let members = Members::from([(4, b"127.0.0.1:17004".to_vec()), (9, vec![])]);
        let framed = frame_snapshot(&members, b"CRSM state");
        let (back, state) = split_snapshot(&framed).unwrap();
        assert_eq!((back, state), (members, b"CRSM state".as_slice()));
        let (none, state) = split_snapshot(b"CRSM bare").unwrap();
        assert_eq!((none.len(), state), (0, b"CRSM bare".as_slice()));
    }

    #[test]
    fn damaged_records_are_refused_not_trusted() {
        let framed = frame_snapshot(&Members::from([(4, b"addr".to_vec())]), b"");
        for cut in 5..framed.len() {
            assert!(split_snapshot(&framed[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = b"CRGS\x01".to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(split_snapshot(&huge).is_err());
        assert!(split_snapshot(b"CRGS\x09").is_err());
    }
}
