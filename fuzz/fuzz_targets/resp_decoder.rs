//! The RESP request decoder, fed the input in two pieces (as a socket may deliver it), and the
//! reply-side scanners a node uses on other nodes' replies. Nothing may panic, and a request
//! decoded from the pieces must be the one decoded from the whole.
#![no_main]

use cairn_resp::decode::{decode_request, parse_reply, reply_frame_len, Decoder, Limits, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bulk_len: 1 << 20,
        ..Limits::default()
    };
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut decoder = Decoder::default();
    let mut requests = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    'pieces: for piece in [&data[..split], &data[split..]] {
        buf.extend_from_slice(piece);
        let mut pos = 0;
        for _ in 0..10_000 {
            match decoder.step(&buf[pos..], &limits) {
                Ok((Step::Request(args), used)) => {
                    pos += used;
                    requests.push(args);
                }
                Ok((Step::Empty, used)) => pos += used,
                Ok((Step::NeedMore, used)) => {
                    pos += used;
                    break;
                }
                Err(_) => break 'pieces,
            }
        }
        buf.drain(..pos);
    }
    // The one-shot decoder agrees on the first request of a multibulk input.
    if let (Some(first), Ok(cairn_resp::decode::Decoded::Request { args, .. })) =
        (requests.first(), decode_request(data, &limits))
    {
        if data.first() == Some(&b'*') {
            assert_eq!(first, &args);
        }
    }
    let _ = reply_frame_len(data, &limits);
    let _ = parse_reply(data);
});
