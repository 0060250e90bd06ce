//! Incremental request decoding with limits.
//!
//! A request is decoded from the front of a buffer. "Not all of it has arrived yet" is the normal
//! [`Decoded::Incomplete`] answer, not an error: the caller reads more and tries again. Nothing is
//! allocated until a whole request is in the buffer (the first pass only measures), so a client
//! announcing a huge array or bulk costs nothing until it actually sends the bytes, and the query
//! buffer limit of the connection bounds that.

use crate::reply::Reply;

/// Limits on what one request may be. Defaults are Redis 7's.
#[derive(Clone, Debug)]
pub struct Limits {
    /// `proto-max-bulk-len`: the longest single argument.
    pub max_bulk_len: usize,
    /// The most arguments one multibulk request may announce.
    pub max_multibulk_len: usize,
    /// The longest inline request line (and the longest `*`/`$` header line).
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: i32::MAX as usize,
            max_inline_len: 64 * 1024,
        }
    }
}

/// A request the client got wrong. The text is what follows `-ERR ` on the wire, as Redis words it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(msg: &str) -> Self {
        ProtocolError(msg.to_string())
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// The outcome of decoding from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole request: its arguments, and how many bytes of the buffer it used.
    Request { args: Vec<Vec<u8>>, consumed: usize },
    /// Bytes that form no command (`*0`, `*-1`, an empty inline line): skip them.
    Empty { consumed: usize },
    /// More bytes are needed.
    Incomplete,
}

/// Decodes one request from the front of `buf`.
pub fn decode_request(buf: &[u8], limits: &Limits) -> Result<Decoded, ProtocolError> {
    match buf.first() {
        None => Ok(Decoded::Incomplete),
        Some(b'*') => decode_multibulk(buf, limits),
        Some(_) => decode_inline(buf, limits),
    }
}

/// Finds the end of the line starting at `start`: the index of its `\r`.
fn find_crlf(buf: &[u8], start: usize) -> Option<usize> {
    let rest = buf.get(start..)?;
    let mut from = 0;
    while let Some(pos) = rest[from..].iter().position(|&b| b == b'\r') {
        let at = from + pos;
        match rest.get(at + 1) {
            Some(b'\n') => return Some(start + at),
            Some(_) => from = at + 1,
            None => return None,
        }
    }
    None
}

/// Parses a decimal integer as Redis's `string2ll` does: optional `-`, digits, no `+`, no spaces.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let (neg, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || (digits[0] == b'0' && digits.len() > 1) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = (d - b'0') as i64;
        v = v.checked_mul(10)?;
        v = if neg {
            v.checked_sub(digit)?
        } else {
            v.checked_add(digit)?
        };
    }
    if neg && v == 0 {
        return None;
    }
    Some(v)
}

fn decode_multibulk(buf: &[u8], limits: &Limits) -> Result<Decoded, ProtocolError> {
    let Some(end) = find_crlf(buf, 0) else {
        if buf.len() > limits.max_inline_len {
            return Err(ProtocolError::new("too big mbulk count string"));
        }
        return Ok(Decoded::Incomplete);
    };
    let count = parse_i64(&buf[1..end])
        .filter(|&n| n <= limits.max_multibulk_len as i64 && n <= i32::MAX as i64)
        .ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
    let mut pos = end + 2;
    if count <= 0 {
        return Ok(Decoded::Empty { consumed: pos });
    }
    let count = count as usize;
    // First pass: measure. Nothing is allocated for a request that has not fully arrived.
    let mut lens_ok = 0usize;
    while lens_ok < count {
        let Some(&first) = buf.get(pos) else {
            return Ok(Decoded::Incomplete);
        };
        if first != b'$' {
            return Err(ProtocolError(format!(
                "expected '$', got '{}'",
                first as char
            )));
        }
        let Some(end) = find_crlf(buf, pos) else {
            if buf.len() - pos > limits.max_inline_len {
                return Err(ProtocolError::new("too big bulk count string"));
            }
            return Ok(Decoded::Incomplete);
        };
        let len = parse_i64(&buf[pos + 1..end])
            .filter(|&n| n >= 0 && n as u64 <= limits.max_bulk_len as u64)
            .ok_or_else(|| ProtocolError::new("invalid bulk length"))? as usize;
        pos = end + 2;
        if buf.len() < pos + len + 2 {
            return Ok(Decoded::Incomplete);
        }
        // Redis does not check the two bytes after a bulk; it just skips them.
        pos += len + 2;
        lens_ok += 1;
    }
    // Second pass: build.
    let mut args = Vec::with_capacity(count);
    let mut p = end + 2;
    for _ in 0..count {
        let e = find_crlf(buf, p).expect("measured in the first pass");
        let len = parse_i64(&buf[p + 1..e]).expect("measured in the first pass") as usize;
        p = e + 2;
        args.push(buf[p..p + len].to_vec());
        p += len + 2;
    }
    debug_assert_eq!(p, pos);
    Ok(Decoded::Request {
        args,
        consumed: pos,
    })
}

/// A request decoder that keeps its place across reads.
///
/// A multibulk request's arguments are kept as each one completes, so a request that arrives in
/// many reads is parsed once, not re-measured on every read (which would be quadratic for a
/// 10M-argument request). [`Decoder::pending_bytes`] tells how much such a partial request holds,
/// so the connection can count it against its query-buffer limit.
#[derive(Default)]
pub struct Decoder {
    pending: Option<Pending>,
}

struct Pending {
    remaining: usize,
    args: Vec<Vec<u8>>,
    bytes: usize,
}

/// One decoding step's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Request(Vec<Vec<u8>>),
    /// Bytes that form no command were skipped.
    Empty,
    /// More input is needed (bytes may still have been consumed).
    NeedMore,
}

impl Decoder {
    /// Bytes held by a partially received request.
    pub fn pending_bytes(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| {
            p.bytes + p.args.capacity() * std::mem::size_of::<Vec<u8>>()
        })
    }

    /// Decodes from the front of `buf`; returns the outcome and how many bytes were consumed.
    pub fn step(&mut self, buf: &[u8], limits: &Limits) -> Result<(Step, usize), ProtocolError> {
        let mut pos = 0;
        if self.pending.is_none() {
            match buf.first() {
                None => return Ok((Step::NeedMore, 0)),
                Some(b'*') => {}
                Some(_) => {
                    return Ok(match decode_inline(buf, limits)? {
                        Decoded::Request { args, consumed } => (Step::Request(args), consumed),
                        Decoded::Empty { consumed } => (Step::Empty, consumed),
                        Decoded::Incomplete => (Step::NeedMore, 0),
                    })
                }
            }
            let Some(end) = find_crlf(buf, 0) else {
                if buf.len() > limits.max_inline_len {
                    return Err(ProtocolError::new("too big mbulk count string"));
                }
                return Ok((Step::NeedMore, 0));
            };
            let count = parse_i64(&buf[1..end])
                .filter(|&n| n <= limits.max_multibulk_len as i64 && n <= i32::MAX as i64)
                .ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
            pos = end + 2;
            if count <= 0 {
                return Ok((Step::Empty, pos));
            }
            let count = count as usize;
            // Never trust the announced count for allocation.
            self.pending = Some(Pending {
                remaining: count,
                args: Vec::with_capacity(count.min(1024)),
                bytes: 0,
            });
        }
        let p = self.pending.as_mut().expect("set above");
        while p.remaining > 0 {
            let Some(&first) = buf.get(pos) else {
                return Ok((Step::NeedMore, pos));
            };
            if first != b'$' {
                self.pending = None;
                return Err(ProtocolError(format!(
                    "expected '$', got '{}'",
                    first as char
                )));
            }
            let Some(end) = find_crlf(buf, pos) else {
                if buf.len() - pos > limits.max_inline_len {
                    self.pending = None;
                    return Err(ProtocolError::new("too big bulk count string"));
                }
                return Ok((Step::NeedMore, pos));
            };
            let Some(len) = parse_i64(&buf[pos + 1..end])
                .filter(|&n| n >= 0 && n as u64 <= limits.max_bulk_len as u64)
            else {
                self.pending = None;
                return Err(ProtocolError::new("invalid bulk length"));
            };
            let start = end + 2;
            let len = len as usize;
            if buf.len() < start + len + 2 {
                return Ok((Step::NeedMore, pos));
            }
            p.args.push(buf[start..start + len].to_vec());
            p.bytes += len;
            p.remaining -= 1;
            pos = start + len + 2;
        }
        let done = self.pending.take().expect("set above");
        Ok((Step::Request(done.args), pos))
    }
}

fn decode_inline(buf: &[u8], limits: &Limits) -> Result<Decoded, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline_len {
            return Err(ProtocolError::new("too big inline request"));
        }
        return Ok(Decoded::Incomplete);
    };
    if nl > limits.max_inline_len {
        return Err(ProtocolError::new("too big inline request"));
    }
    let line = if nl > 0 && buf[nl - 1] == b'\r' {
        &buf[..nl - 1]
    } else {
        &buf[..nl]
    };
    let args =
        split_args(line).ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))?;
    if args.is_empty() {
        return Ok(Decoded::Empty { consumed: nl + 1 });
    }
    Ok(Decoded::Request {
        args,
        consumed: nl + 1,
    })
}

/// Splits an inline command line into arguments the way redis-cli users expect: whitespace
/// separates, double quotes allow escapes (`\n`, `\xHH`, ...), single quotes allow only `\'`.
/// `None` means the quotes do not balance.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                let c = *line.get(i)?;
                if c == b'\\' && i + 3 < line.len() && line[i + 1] == b'x' {
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        cur.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < line.len() {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if c == b'"' {
                    // A closing quote must be followed by a space or the end.
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
                i += 1;
            } else if in_sq {
                let c = *line.get(i)?;
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    cur.push(b'\'');
                    i += 2;
                    continue;
                }
                if c == b'\'' {
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                }
                cur.push(c);
                i += 1;
            } else {
                match line.get(i) {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') if cur.is_empty() => in_dq = true,
                    Some(b'\'') if cur.is_empty() => in_sq = true,
                    Some(&c) => cur.push(c),
                }
                i += 1;
            }
        }
        args.push(cur);
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(b: &[u8]) -> Result<Decoded, ProtocolError> {
        decode_request(b, &Limits::default())
    }

    #[test]
    fn multibulk_whole_and_partial() {
        let req = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        for cut in 0..req.len() {
            assert_eq!(
                dec(&req[..cut]).unwrap(),
                Decoded::Incomplete,
                "cut at {cut}"
            );
        }
        assert_eq!(
            dec(req).unwrap(),
            Decoded::Request {
                args: vec![b"GET".to_vec(), b"k".to_vec()],
                consumed: req.len()
            }
        );
    }

    #[test]
    fn errors_match_redis() {
        assert_eq!(dec(b"*x\r\n").unwrap_err().0, "invalid multibulk length");
        assert_eq!(dec(b"*1\r\n+a\r\n").unwrap_err().0, "expected '$', got '+'");
        assert_eq!(
            dec(b"*1\r\n$2147483648\r\n").unwrap_err().0,
            "invalid bulk length"
        );
        assert_eq!(dec(b"*1\r\n$-1\r\n").unwrap_err().0, "invalid bulk length");
        assert_eq!(
            dec(b"\"abc\r\n").unwrap_err().0,
            "unbalanced quotes in request"
        );
        let long = vec![b'a'; 70_000];
        assert_eq!(dec(&long).unwrap_err().0, "too big inline request");
    }

    #[test]
    fn huge_announced_count_allocates_nothing_until_sent() {
        assert_eq!(
            dec(b"*10000000\r\n$1\r\na\r\n").unwrap(),
            Decoded::Incomplete
        );
    }

    #[test]
    fn decoder_resumes_across_reads() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        // Feed one byte at a time, the worst split a client can make.
        let mut d = Decoder::default();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for &b in req.iter() {
            buf.push(b);
            loop {
                let (step, used) = d.step(&buf, &Limits::default()).unwrap();
                buf.drain(..used);
                match step {
                    Step::Request(args) => got.push(args),
                    Step::Empty => {}
                    Step::NeedMore => break,
                }
            }
        }
        assert_eq!(
            got,
            vec![
                vec![b"SET".to_vec(), b"k".to_vec(), b"hello".to_vec()],
                vec![b"PING".to_vec()]
            ]
        );
        assert!(buf.is_empty());
        assert_eq!(d.pending_bytes(), 0);
    }

    #[test]
    fn inline_quotes() {
        let Decoded::Request { args, .. } = dec(b"set \"a b\" 'c\\'d' \"\\x41\\n\"\r\n").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            args,
            vec![
                b"set".to_vec(),
                b"a b".to_vec(),
                b"c'd".to_vec(),
                b"A\n".to_vec()
            ]
        );
        assert_eq!(dec(b"\r\n").unwrap(), Decoded::Empty { consumed: 2 });
        assert_eq!(dec(b"*0\r\n").unwrap(), Decoded::Empty { consumed: 4 });
    }

    #[test]
    fn parse_i64_is_strict() {
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"-",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = dec(&bytes);
        }

        #[test]
        fn roundtrips_any_args(args in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20), 1..8)) {
            let mut wire = format!("*{}\r\n", args.len()).into_bytes();
            for a in &args {
                wire.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                wire.extend_from_slice(a);
                wire.extend_from_slice(b"\r\n");
            }
            let n = wire.len();
            proptest::prop_assert_eq!(dec(&wire).unwrap(), Decoded::Request { args, consumed: n });
        }
    }
}

/// The length of the first complete reply frame in `buf` (RESP2 or RESP3), `None` if it has not
/// fully arrived. Used to relay a reply without parsing it (a follower proxying to its leader).
pub fn reply_frame_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, ProtocolError> {
    let mut pos = 0;
    // Frames still to read, innermost last.
    let mut pending: Vec<usize> = vec![1];
    while let Some(left) = pending.last_mut() {
        if *left == 0 {
            pending.pop();
            continue;
        }
        *left -= 1;
        let Some(end) = find_crlf(buf, pos) else {
            if buf.len() - pos > limits.max_inline_len {
                return Err(ProtocolError::new("too big reply line"));
            }
            return Ok(None);
        };
        // A line is a type byte and its header: an empty one is no reply (found by fuzzing:
        // it used to panic here).
        if end == pos {
            return Err(ProtocolError::new("empty reply line"));
        }
        let kind = buf[pos];
        let header = &buf[pos + 1..end];
        pos = end + 2;
        let count =
            || parse_i64(header).ok_or_else(|| ProtocolError::new("invalid length in reply"));
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
            b'$' | b'=' | b'!' => {
                let n = count()?;
                if n >= 0 {
                    if n as u64 > limits.max_bulk_len as u64 {
                        return Err(ProtocolError::new("invalid bulk length"));
                    }
                    if buf.len() < pos + n as usize + 2 {
                        return Ok(None);
                    }
                    pos += n as usize + 2;
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = count()?;
                if n > 0 {
                    let items = if kind == b'%' || kind == b'|' {
                        n.saturating_mul(2)
                    } else {
                        n
                    };
                    if items as u64 > limits.max_multibulk_len as u64 {
                        return Err(ProtocolError::new("invalid multibulk length"));
                    }
                    if pending.len() > 512 {
                        return Err(ProtocolError::new("reply nested too deeply"));
                    }
                    pending.push(items as usize);
                }
            }
            other => {
                return Err(ProtocolError(format!(
                    "unknown reply type '{}'",
                    other as char
                )))
            }
        }
    }
    Ok(Some(pos))
}

#[cfg(test)]
mod reply_frame_tests {
    use super::*;

    #[test]
    fn measures_whole_replies_only() {
        let l = Limits::default();
        let cases: &[&[u8]] = &[
            b"+OK\r\n",
            b"$3\r\nabc\r\n",
            b"$-1\r\n",
            b"*2\r\n$1\r\na\r\n:5\r\n",
            b"%1\r\n$1\r\nk\r\n*1\r\n,1.5\r\n",
            b"*0\r\n",
            b"*-1\r\n",
            b"*2\r\n*1\r\n+x\r\n_\r\n",
        ];
        for c in cases {
            let mut with_next = c.to_vec();
            with_next.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(
                reply_frame_len(&with_next, &l).unwrap(),
                Some(c.len()),
                "{:?}",
                String::from_utf8_lossy(c)
            );
            for cut in 0..c.len() {
                assert_eq!(
                    reply_frame_len(&c[..cut], &l).unwrap(),
                    None,
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(c)
                );
            }
        }
        assert!(reply_frame_len(b"?what\r\n", &l).is_err());
        // Lines with no type byte, alone or inside an array (the fuzzer's first find).
        assert!(reply_frame_len(b"\r\n", &l).is_err());
        assert!(reply_frame_len(b"*2\r\n:1\r\n\r\n", &l).is_err());
    }
}

/// Parses one complete reply frame (from [`reply_frame_len`]) into a [`Reply`]: the kinds a
/// node merges when it answers a keyless command from every shard (integers, bulk strings,
/// arrays, statuses, errors, nils). Other RESP3 kinds give None.
pub fn parse_reply(frame: &[u8]) -> Option<Reply> {
    let (reply, used) = parse_reply_at(frame, 0, 0)?;
    (used == frame.len()).then_some(reply)
}

/// Nesting deeper than this is refused (frames come from our own nodes; still bounded).
const MAX_REPLY_DEPTH: usize = 8;

fn parse_reply_at(buf: &[u8], pos: usize, depth: usize) -> Option<(Reply, usize)> {
    if depth > MAX_REPLY_DEPTH {
        return None;
    }
    let end = find_crlf(buf, pos)?;
    // A line with no type byte is no reply (found by fuzzing: it used to panic here).
    if end == pos {
        return None;
    }
    let header = &buf[pos + 1..end];
    let next = end + 2;
    let text = || String::from_utf8_lossy(header).into_owned();
    match *buf.get(pos)? {
        b'+' => Some((Reply::Status(text().into()), next)),
        b'-' => Some((Reply::Error(text().into()), next)),
        b':' => Some((Reply::Int(parse_i64(header)?), next)),
        b'_' => Some((Reply::Nil, next)),
        b'$' => match parse_i64(header)? {
            -1 => Some((Reply::Nil, next)),
            n if n >= 0 => {
                let n = n as usize;
                let body = buf.get(next..next.checked_add(n)?)?;
                (buf.get(next + n..next + n + 2)? == b"\r\n")
                    .then(|| (Reply::Bulk(body.to_vec()), next + n + 2))
            }
            _ => None,
        },
        b'*' => match parse_i64(header)? {
            -1 => Some((Reply::NilArray, next)),
            n if n >= 0 => {
                let mut items = Vec::new();
                let mut at = next;
                for _ in 0..n {
                    let (item, after) = parse_reply_at(buf, at, depth + 1)?;
                    items.push(item);
                    at = after;
                }
                Some((Reply::Array(items), at))
            }
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod parse_reply_tests {
    use super::*;
    use crate::Protocol;

    #[test]
    fn lines_without_a_type_byte_are_no_reply() {
        assert_eq!(parse_reply(b"\r\n"), None);
        assert_eq!(parse_reply(b"\r\n\n\n"), None);
        assert_eq!(parse_reply(b"*1\r\n\r\n"), None);
    }

    #[test]
    fn replies_round_trip_through_encode_and_parse() {
        let replies = [
            Reply::OK,
            Reply::error("ERR nope"),
            Reply::Int(-42),
            Reply::Bulk(b"a\r\nb".to_vec()),
            Reply::Nil,
            Reply::NilArray,
            Reply::Array(vec![
                Reply::Bulk(b"17".to_vec()),
                Reply::Array(vec![Reply::Bulk(b"k1".to_vec()), Reply::Bulk(vec![])]),
            ]),
        ];
        for r in replies {
            let bytes = r.to_bytes(Protocol::Resp2);
            assert_eq!(parse_reply(&bytes), Some(r.clone()), "{r:?}");
        }
        assert_eq!(parse_reply(b"_\r\n"), Some(Reply::Nil));
        // Truncated, trailing bytes, unknown kinds and absurd nesting are refused.
        assert_eq!(parse_reply(b"$5\r\nab\r\n"), None);
        assert_eq!(parse_reply(b":1\r\n:2\r\n"), None);
        assert_eq!(parse_reply(b"%1\r\n"), None);
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert_eq!(parse_reply(deep.as_bytes()), None);
    }
}
