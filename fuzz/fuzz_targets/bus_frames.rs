//! The cluster bus's decoders: a BATCH payload, and CHUNK payloads reassembled into a snapshot
//! message (the input split into chunk payloads at 0xff bytes). Malformed input is an error,
//! never a panic or an allocation beyond the limits.
#![no_main]

use cairn_replication::bus::{decode_batch, Reassembly};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_batch(data);
    let mut chunks = Reassembly::default();
    for payload in data.split(|&b| b == 0xff).take(64) {
        if chunks.add(payload).is_err() {
            break;
        }
    }
});
