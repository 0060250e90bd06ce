//! RESP, the Redis serialization protocol, as cairn speaks it.
//!
//! Two halves, no I/O:
//! - [`decode`]: requests from clients (multibulk arrays of bulk strings, and inline commands),
//!   decoded incrementally from a byte buffer. Every length is capped by [`Limits`]; a request that
//!   breaks a limit is a [`ProtocolError`] whose text is the one Redis sends, after which the
//!   connection is closed exactly as Redis does.
//! - [`reply`]: the reply tree every command produces, and its encoding for RESP2 and RESP3. One
//!   reply value encodes to either protocol: RESP3-only types degrade the way Redis degrades them.

pub mod decode;
pub mod reply;

pub use decode::{
    decode_request, parse_reply, reply_frame_len, Decoded, Decoder, Limits, ProtocolError, Step,
};
pub use reply::{Protocol, Reply};
