//! The libraries Redis gives Lua scripts besides Lua's own: `bit` (LuaBitOp's functions on
//! 32-bit integers), `cjson` (JSON text to Lua values and back, as lua-cjson maps them),
//! `cmsgpack` (MessagePack, as lua-cmsgpack encodes it) and `struct` (binary packing, as
//! Roberto Ierusalimschy's struct library does it).

use mlua::{Lua, MultiValue, Table, Value};

pub fn install(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.raw_set("bit", bit(lua)?)?;
    globals.raw_set("cjson", cjson(lua)?)?;
    globals.raw_set("cmsgpack", cmsgpack(lua)?)?;
    globals.raw_set("struct", structlib(lua)?)?;
    Ok(())
}

/// A number as LuaBitOp normalizes it: to a signed 32-bit integer, modulo 2^32.
fn tobit(v: &Value) -> mlua::Result<i32> {
    let n = match v {
        Value::Integer(i) => *i as f64,
        Value::Number(n) => *n,
        Value::String(s) => s
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .ok_or_else(|| lib_error("bad argument (number expected)".into()))?,
        _ => return Err(lib_error("bad argument (number expected)".into())),
    };
    // LuaBitOp adds 2^52+2^51 and takes the low word: round to nearest, then wrap.
    let wrapped = n.round_ties_even().rem_euclid(4_294_967_296.0);
    Ok(wrapped as u32 as i32)
}

fn bit(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let all = |args: &MultiValue| -> mlua::Result<Vec<i32>> { args.iter().map(tobit).collect() };
    t.raw_set("tobit", lua.create_function(|_, v: Value| tobit(&v))?)?;
    t.raw_set("bnot", lua.create_function(|_, v: Value| Ok(!tobit(&v)?))?)?;
    t.raw_set(
        "band",
        lua.create_function(move |_, a: MultiValue| {
            Ok(all(&a)?.into_iter().fold(-1, |x, y| x & y))
        })?,
    )?;
    t.raw_set(
        "bor",
        lua.create_function(move |_, a: MultiValue| {
            Ok(all(&a)?.into_iter().fold(0, |x, y| x | y))
        })?,
    )?;
    t.raw_set(
        "bxor",
        lua.create_function(move |_, a: MultiValue| {
            Ok(all(&a)?.into_iter().fold(0, |x, y| x ^ y))
        })?,
    )?;
    let shift = |f: fn(u32, u32) -> u32| {
        move |_: &Lua, (x, n): (Value, Value)| -> mlua::Result<i32> {
            Ok(f(tobit(&x)? as u32, (tobit(&n)? & 31) as u32) as i32)
        }
    };
    t.raw_set("lshift", lua.create_function(shift(|x, n| x << n))?)?;
    t.raw_set("rshift", lua.create_function(shift(|x, n| x >> n))?)?;
    t.raw_set(
        "arshift",
        lua.create_function(shift(|x, n| ((x as i32) >> n) as u32))?,
    )?;
    t.raw_set("rol", lua.create_function(shift(|x, n| x.rotate_left(n)))?)?;
    t.raw_set("ror", lua.create_function(shift(|x, n| x.rotate_right(n)))?)?;
    t.raw_set(
        "bswap",
        lua.create_function(|_, v: Value| Ok((tobit(&v)? as u32).swap_bytes() as i32))?,
    )?;
    t.raw_set(
        "tohex",
        lua.create_function(|_, (v, n): (Value, Option<Value>)| {
            let x = tobit(&v)? as u32;
            let n = match n {
                Some(n) => tobit(&n)?,
                None => 8,
            };
            let (upper, digits) = if n < 0 { (true, -n) } else { (false, n) };
            let digits = digits.clamp(1, 8) as usize;
            let text = format!("{x:08x}");
            let text = text[8 - digits..].to_string();
            Ok(if upper { text.to_uppercase() } else { text })
        })?,
    )?;
    Ok(t)
}

/// The most nesting cjson encodes or decodes (lua-cjson's default is 1000; Redis keeps it).
const JSON_DEPTH: usize = 1000;

fn cjson(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    // cjson.null: a value distinct from every other, as lua-cjson's light userdata is.
    let null = Value::LightUserData(mlua::LightUserData(std::ptr::null_mut()));
    t.raw_set("null", null.clone())?;
    t.raw_set(
        "encode",
        lua.create_function(|_, v: Value| {
            let mut out = String::new();
            encode(&v, &mut out, 0)?;
            Ok(out)
        })?,
    )?;
    t.raw_set(
        "decode",
        lua.create_function(move |lua, text: mlua::LuaString| {
            let parsed: serde_json::Value = serde_json::from_slice(&text.as_bytes())
                .map_err(|e| lib_error(format!("Expected value but found invalid token: {e}")))?;
            decode(lua, &parsed, &null, 0)
        })?,
    )?;
    Ok(t)
}

/// lua-cjson's number format (`%.14g`).
fn number(n: f64, out: &mut String) -> mlua::Result<()> {
    if !n.is_finite() {
        return Err(lib_error(
            "Cannot serialise number: must not be NaN or Inf".into(),
        ));
    }
    if n.fract() == 0.0 && n.abs() < 1e14 {
        out.push_str(&(n as i64).to_string());
    } else {
        let s = format!("{}", (format!("{n:.13e}").parse::<f64>().unwrap_or(n)));
        out.push_str(&s);
    }
    Ok(())
}

fn encode(v: &Value, out: &mut String, depth: usize) -> mlua::Result<()> {
    if depth > JSON_DEPTH {
        return Err(lib_error("Cannot serialise, excessive nesting".into()));
    }
    match v {
        Value::Nil => out.push_str("null"),
        Value::LightUserData(u) if u.0.is_null() => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(i) => out.push_str(&i.to_string()),
        Value::Number(n) => number(*n, out)?,
        Value::String(s) => {
            let text = String::from_utf8_lossy(&s.as_bytes()).to_string();
            out.push_str(&serde_json::to_string(&text).unwrap_or_default());
        }
        Value::Table(t) => {
            // An array when its keys are exactly 1..n (lua-cjson also allows some holes).
            let n = t.raw_len();
            let count = t.pairs::<Value, Value>().count();
            if count == n && (n > 0 || count == 0) {
                if n == 0 {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('[');
                for i in 1..=n {
                    if i > 1 {
                        out.push(',');
                    }
                    encode(&t.raw_get::<Value>(i)?, out, depth + 1)?;
                }
                out.push(']');
            } else {
                out.push('{');
                let mut first = true;
                for pair in t.pairs::<Value, Value>() {
                    let (k, v) = pair?;
                    let key = match &k {
                        Value::String(s) => String::from_utf8_lossy(&s.as_bytes()).to_string(),
                        Value::Integer(i) => i.to_string(),
                        Value::Number(n) => {
                            let mut s = String::new();
                            number(*n, &mut s)?;
                            s
                        }
                        _ => {
                            return Err(lib_error(
                                "Cannot serialise table: table key must be a number or string"
                                    .into(),
                            ))
                        }
                    };
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&serde_json::to_string(&key).unwrap_or_default());
                    out.push(':');
                    encode(&v, out, depth + 1)?;
                }
                out.push('}');
            }
        }
        other => {
            return Err(lib_error(format!(
                "Cannot serialise {}: type not supported",
                other.type_name()
            )))
        }
    }
    Ok(())
}

fn decode(lua: &Lua, v: &serde_json::Value, null: &Value, depth: usize) -> mlua::Result<Value> {
    if depth > JSON_DEPTH {
        return Err(lib_error("Found too many nested data structures".into()));
    }
    Ok(match v {
        serde_json::Value::Null => null.clone(),
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, decode(lua, item, null, depth + 1)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(map) => {
            let t = lua.create_table()?;
            for (k, item) in map {
                t.raw_set(lua.create_string(k)?, decode(lua, item, null, depth + 1)?)?;
            }
            Value::Table(t)
        }
    })
}

fn runtime(m: &str) -> mlua::Error {
    lib_error(m.to_string())
}

/// An error raised by a library function: it reaches the script with the position of the
/// script's line that called it, as `luaL_error` writes it (see `script::lib_error_text`).
#[derive(Debug)]
pub(crate) struct LibError(pub String);

impl std::fmt::Display for LibError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LibError {}

fn lib_error(m: String) -> mlua::Error {
    mlua::Error::external(LibError(m))
}

/// The deepest nesting lua-cmsgpack encodes (deeper tables become nil).
const MSGPACK_DEPTH: usize = 16;

fn cmsgpack(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "pack",
        lua.create_function(|lua, args: MultiValue| {
            if args.is_empty() {
                return Err(runtime("MessagePack pack needs input."));
            }
            let mut out = Vec::new();
            for v in args.iter() {
                mp_encode(v, &mut out, 0)?;
            }
            lua.create_string(&out)
        })?,
    )?;
    t.raw_set(
        "unpack",
        lua.create_function(|lua, s: mlua::LuaString| {
            let bytes = s.as_bytes();
            let mut pos = 0;
            let mut out = Vec::new();
            while pos < bytes.len() {
                out.push(mp_decode(lua, &bytes, &mut pos, 0)?);
            }
            Ok(MultiValue::from_iter(out))
        })?,
    )?;
    let limited = |lua: &Lua, s: mlua::LuaString, limit: i64, offset: i64| {
        let bytes = s.as_bytes();
        let mut pos = usize::try_from(offset).map_err(|_| runtime("Offset must be positive"))?;
        let mut out = Vec::new();
        while pos < bytes.len() && (limit <= 0 || (out.len() as i64) < limit) {
            out.push(mp_decode(lua, &bytes, &mut pos, 0)?);
        }
        let next = if pos >= bytes.len() { -1 } else { pos as i64 };
        let mut values = vec![Value::Integer(next)];
        values.extend(out);
        Ok(MultiValue::from_iter(values))
    };
    t.raw_set(
        "unpack_one",
        lua.create_function(move |lua, (s, offset): (mlua::LuaString, Option<i64>)| {
            limited(lua, s, 1, offset.unwrap_or(0))
        })?,
    )?;
    t.raw_set(
        "unpack_limit",
        lua.create_function(
            move |lua, (s, limit, offset): (mlua::LuaString, i64, Option<i64>)| {
                limited(lua, s, limit, offset.unwrap_or(0))
            },
        )?,
    )?;
    Ok(t)
}

fn mp_int(n: i64, out: &mut Vec<u8>) {
    if n >= 0 {
        let u = n as u64;
        if u <= 0x7f {
            out.push(u as u8);
        } else if u <= 0xff {
            out.extend_from_slice(&[0xcc, u as u8]);
        } else if u <= 0xffff {
            out.push(0xcd);
            out.extend_from_slice(&(u as u16).to_be_bytes());
        } else if u <= 0xffff_ffff {
            out.push(0xce);
            out.extend_from_slice(&(u as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&u.to_be_bytes());
        }
    } else if n >= -32 {
        out.push(n as i8 as u8);
    } else if n >= -128 {
        out.extend_from_slice(&[0xd0, n as i8 as u8]);
    } else if n >= -32768 {
        out.push(0xd1);
        out.extend_from_slice(&(n as i16).to_be_bytes());
    } else if n >= -2_147_483_648 {
        out.push(0xd2);
        out.extend_from_slice(&(n as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn mp_len(len: usize, fix: u8, fix_max: usize, codes: [u8; 3], out: &mut Vec<u8>) {
    if len <= fix_max {
        out.push(fix | len as u8);
    } else if codes[0] != 0 && len <= 0xff {
        out.extend_from_slice(&[codes[0], len as u8]);
    } else if len <= 0xffff {
        out.push(codes[1]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(codes[2]);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

fn mp_encode(v: &Value, out: &mut Vec<u8>, depth: usize) -> mlua::Result<()> {
    match v {
        Value::Nil => out.push(0xc0),
        Value::Boolean(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Integer(i) => mp_int(*i, out),
        Value::Number(n) => {
            if n.fract() == 0.0 && n.is_finite() && n.abs() < 9.2e18 {
                mp_int(*n as i64, out);
            } else if (*n as f32) as f64 == *n || n.is_nan() {
                out.push(0xca);
                out.extend_from_slice(&(*n as f32).to_be_bytes());
            } else {
                out.push(0xcb);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        Value::String(s) => {
            let b = s.as_bytes();
            mp_len(b.len(), 0xa0, 31, [0xd9, 0xda, 0xdb], out);
            out.extend_from_slice(&b);
        }
        Value::Table(t) if depth < MSGPACK_DEPTH => {
            let n = t.raw_len();
            let count = t.pairs::<Value, Value>().count();
            if count == n && n > 0 {
                mp_len(n, 0x90, 15, [0, 0xdc, 0xdd], out);
                for i in 1..=n {
                    mp_encode(&t.raw_get::<Value>(i)?, out, depth + 1)?;
                }
            } else {
                mp_len(count, 0x80, 15, [0, 0xde, 0xdf], out);
                for pair in t.pairs::<Value, Value>() {
                    let (k, v) = pair?;
                    mp_encode(&k, out, depth + 1)?;
                    mp_encode(&v, out, depth + 1)?;
                }
            }
        }
        _ => out.push(0xc0),
    }
    Ok(())
}

fn mp_decode(lua: &Lua, b: &[u8], pos: &mut usize, depth: usize) -> mlua::Result<Value> {
    if depth > 1000 {
        return Err(runtime("Bad data format in input."));
    }
    let mut take = |n: usize| -> mlua::Result<&[u8]> {
        let s = b
            .get(*pos..pos.saturating_add(n))
            .ok_or_else(|| runtime("Missing bytes in input."))?;
        *pos += n;
        Ok(s)
    };
    let c = take(1)?[0];
    let be = |s: &[u8]| s.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x));
    let v = match c {
        0x00..=0x7f => Value::Integer(i64::from(c)),
        0xe0..=0xff => Value::Integer(i64::from(c as i8)),
        0xc0 => Value::Nil,
        0xc2 => Value::Boolean(false),
        0xc3 => Value::Boolean(true),
        0xcc => Value::Integer(be(take(1)?) as i64),
        0xcd => Value::Integer(be(take(2)?) as i64),
        0xce => Value::Integer(be(take(4)?) as i64),
        0xcf => Value::Number(be(take(8)?) as f64),
        0xd0 => Value::Integer(i64::from(take(1)?[0] as i8)),
        0xd1 => Value::Integer(i64::from(be(take(2)?) as u16 as i16)),
        0xd2 => Value::Integer(i64::from(be(take(4)?) as u32 as i32)),
        0xd3 => Value::Integer(be(take(8)?) as i64),
        0xca => Value::Number(f64::from(f32::from_bits(be(take(4)?) as u32))),
        0xcb => Value::Number(f64::from_bits(be(take(8)?))),
        0xa0..=0xbf | 0xd9 | 0xda | 0xdb | 0xc4 | 0xc5 | 0xc6 => {
            let n = match c {
                0xa0..=0xbf => usize::from(c & 0x1f),
                0xd9 | 0xc4 => be(take(1)?) as usize,
                0xda | 0xc5 => be(take(2)?) as usize,
                _ => be(take(4)?) as usize,
            };
            Value::String(lua.create_string(take(n)?)?)
        }
        0x90..=0x9f | 0xdc | 0xdd => {
            let n = match c {
                0x90..=0x9f => usize::from(c & 0x0f),
                0xdc => be(take(2)?) as usize,
                _ => be(take(4)?) as usize,
            };
            let t = lua.create_table()?;
            for i in 1..=n {
                t.raw_set(i, mp_decode(lua, b, pos, depth + 1)?)?;
            }
            Value::Table(t)
        }
        0x80..=0x8f | 0xde | 0xdf => {
            let n = match c {
                0x80..=0x8f => usize::from(c & 0x0f),
                0xde => be(take(2)?) as usize,
                _ => be(take(4)?) as usize,
            };
            let t = lua.create_table()?;
            for _ in 0..n {
                let k = mp_decode(lua, b, pos, depth + 1)?;
                let v = mp_decode(lua, b, pos, depth + 1)?;
                if k != Value::Nil {
                    t.raw_set(k, v)?;
                }
            }
            Value::Table(t)
        }
        _ => return Err(runtime("Bad data format in input.")),
    };
    Ok(v)
}

/// One item of a struct format: its code and its size argument, if any.
fn struct_items(fmt: &[u8]) -> mlua::Result<Vec<(u8, Option<usize>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < fmt.len() {
        let c = fmt[i];
        i += 1;
        let start = i;
        while i < fmt.len() && fmt[i].is_ascii_digit() {
            i += 1;
        }
        let n = if i > start {
            Some(
                std::str::from_utf8(&fmt[start..i])
                    .ok()
                    .and_then(|d| d.parse::<usize>().ok())
                    .filter(|&n| n <= 1 << 20)
                    .ok_or_else(|| runtime("integral size out of limits"))?,
            )
        } else {
            None
        };
        out.push((c, n));
    }
    Ok(out)
}

/// Struct's state while walking a format: byte order and alignment.
struct Layout {
    little: bool,
    align: usize,
}

impl Layout {
    fn new() -> Layout {
        Layout {
            little: cfg!(target_endian = "little"),
            align: 1,
        }
    }

    /// The padding before an item of `size` at `pos`.
    fn pad(&self, size: usize, pos: usize) -> usize {
        let a = size.min(self.align);
        if a <= 1 || !a.is_power_of_two() {
            0
        } else {
            (a - pos % a) % a
        }
    }
}

/// Size of an integer item, or None when the code is not one.
fn int_size(c: u8, n: Option<usize>) -> Option<(usize, bool)> {
    Some(match c {
        b'b' => (1, true),
        b'B' => (1, false),
        b'h' => (2, true),
        b'H' => (2, false),
        b'l' => (8, true),
        b'L' | b'T' => (8, false),
        b'i' => (n.unwrap_or(4), true),
        b'I' => (n.unwrap_or(4), false),
        _ => return None,
    })
}

fn structlib(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "pack",
        lua.create_function(|lua, args: MultiValue| {
            let mut args = args.into_iter();
            let fmt = match args.next() {
                Some(Value::String(s)) => s.as_bytes().to_vec(),
                _ => return Err(runtime("bad argument #1 to 'pack' (string expected)")),
            };
            let mut layout = Layout::new();
            let mut out: Vec<u8> = Vec::new();
            let mut next_arg = |what: &str| {
                args.next()
                    .ok_or_else(|| runtime(&format!("bad argument to 'pack' ({what} expected)")))
            };
            for (c, n) in struct_items(&fmt)? {
                match c {
                    b' ' => {}
                    b'<' => layout.little = true,
                    b'>' => layout.little = false,
                    b'=' => layout.little = cfg!(target_endian = "little"),
                    b'!' => layout.align = n.unwrap_or(8),
                    b'x' => out.push(0),
                    b'f' | b'd' => {
                        let v = match next_arg("number")? {
                            Value::Integer(i) => i as f64,
                            Value::Number(x) => x,
                            _ => return Err(runtime("bad argument to 'pack' (number expected)")),
                        };
                        let size = if c == b'f' { 4 } else { 8 };
                        out.resize(out.len() + layout.pad(size, out.len()), 0);
                        let bytes = if c == b'f' {
                            let f = v as f32;
                            if layout.little {
                                f.to_le_bytes().to_vec()
                            } else {
                                f.to_be_bytes().to_vec()
                            }
                        } else if layout.little {
                            v.to_le_bytes().to_vec()
                        } else {
                            v.to_be_bytes().to_vec()
                        };
                        out.extend_from_slice(&bytes);
                    }
                    b'c' | b's' => {
                        let s = match next_arg("string")? {
                            Value::String(s) => s.as_bytes().to_vec(),
                            Value::Integer(i) => i.to_string().into_bytes(),
                            _ => return Err(runtime("bad argument to 'pack' (string expected)")),
                        };
                        if c == b's' {
                            out.extend_from_slice(&s);
                            out.push(0);
                        } else {
                            let len = n.unwrap_or(1);
                            let len = if len == 0 { s.len() } else { len };
                            if s.len() < len {
                                return Err(runtime("bad argument to 'pack' (string too short)"));
                            }
                            out.extend_from_slice(&s[..len]);
                        }
                    }
                    _ => {
                        let Some((size, _)) = int_size(c, n) else {
                            return Err(runtime(&format!("invalid format option '{}'", c as char)));
                        };
                        if !(1..=8).contains(&size) {
                            return Err(runtime("integral size out of limits"));
                        }
                        let v = match next_arg("number")? {
                            Value::Integer(i) => i,
                            Value::Number(x) => x as i64,
                            _ => return Err(runtime("bad argument to 'pack' (number expected)")),
                        };
                        out.resize(out.len() + layout.pad(size, out.len()), 0);
                        let bytes = v.to_le_bytes();
                        let mut field = bytes[..size].to_vec();
                        if !layout.little {
                            field.reverse();
                        }
                        out.extend_from_slice(&field);
                    }
                }
            }
            lua.create_string(&out)
        })?,
    )?;
    t.raw_set(
        "unpack",
        lua.create_function(
            |lua, (fmt, data, init): (mlua::LuaString, mlua::LuaString, Option<i64>)| {
                let fmt = fmt.as_bytes().to_vec();
                let data = data.as_bytes().to_vec();
                let mut pos = usize::try_from(init.unwrap_or(1) - 1)
                    .map_err(|_| runtime("offset must be 1 or greater"))?;
                let mut layout = Layout::new();
                let mut out = Vec::new();
                let short = || runtime("bad argument #2 to 'unpack' (data string too short)");
                let mut last_int: Option<i64> = None;
                for (c, n) in struct_items(&fmt)? {
                    match c {
                        b' ' => {}
                        b'<' => layout.little = true,
                        b'>' => layout.little = false,
                        b'=' => layout.little = cfg!(target_endian = "little"),
                        b'!' => layout.align = n.unwrap_or(8),
                        b'x' => pos += 1,
                        b'f' | b'd' => {
                            let size = if c == b'f' { 4 } else { 8 };
                            pos += layout.pad(size, pos);
                            let mut b = data.get(pos..pos + size).ok_or_else(short)?.to_vec();
                            if !layout.little {
                                b.reverse();
                            }
                            let v = if c == b'f' {
                                f64::from(f32::from_le_bytes(b.try_into().expect("4 bytes")))
                            } else {
                                f64::from_le_bytes(b.try_into().expect("8 bytes"))
                            };
                            out.push(Value::Number(v));
                            pos += size;
                        }
                        b's' => {
                            let end = data[pos.min(data.len())..]
                                .iter()
                                .position(|&b| b == 0)
                                .ok_or_else(|| runtime("unfinished string in data"))?;
                            out.push(Value::String(lua.create_string(&data[pos..pos + end])?));
                            pos += end + 1;
                        }
                        b'c' => {
                            let len = match n {
                                Some(0) => usize::try_from(last_int.take().unwrap_or(0))
                                    .map_err(|_| short())?,
                                Some(k) => k,
                                None => 1,
                            };
                            let s = data.get(pos..pos + len).ok_or_else(short)?;
                            out.push(Value::String(lua.create_string(s)?));
                            pos += len;
                        }
                        _ => {
                            let Some((size, signed)) = int_size(c, n) else {
                                return Err(runtime(&format!(
                                    "invalid format option '{}'",
                                    c as char
                                )));
                            };
                            if !(1..=8).contains(&size) {
                                return Err(runtime("integral size out of limits"));
                            }
                            pos += layout.pad(size, pos);
                            let mut b = data.get(pos..pos + size).ok_or_else(short)?.to_vec();
                            if !layout.little {
                                b.reverse();
                            }
                            let mut full = [0u8; 8];
                            full[..size].copy_from_slice(&b);
                            let mut v = u64::from_le_bytes(full);
                            if signed && size < 8 && v & (1 << (size * 8 - 1)) != 0 {
                                v |= u64::MAX << (size * 8);
                            }
                            let v = v as i64;
                            last_int = Some(v);
                            out.push(if signed || size < 8 {
                                Value::Integer(v)
                            } else {
                                Value::Number(v as u64 as f64)
                            });
                            pos += size;
                        }
                    }
                }
                out.push(Value::Integer(pos as i64 + 1));
                Ok(MultiValue::from_iter(out))
            },
        )?,
    )?;
    t.raw_set(
        "size",
        lua.create_function(|_, fmt: mlua::LuaString| {
            let mut layout = Layout::new();
            let mut size = 0usize;
            for (c, n) in struct_items(&fmt.as_bytes())? {
                let item = match c {
                    b' ' | b'<' | b'>' | b'=' => 0,
                    b'!' => {
                        layout.align = n.unwrap_or(8);
                        0
                    }
                    b'x' => 1,
                    b'f' => 4,
                    b'd' => 8,
                    b'c' => n.unwrap_or(1),
                    b's' => return Err(runtime("options 's' has no fixed size")),
                    _ => match int_size(c, n) {
                        Some((s, _)) => s,
                        None => {
                            return Err(runtime(&format!("invalid format option '{}'", c as char)))
                        }
                    },
                };
                if matches!(c, b'f' | b'd') || int_size(c, n).is_some() {
                    size += layout.pad(item, size);
                }
                size += item;
            }
            Ok(size as i64)
        })?,
    )?;
    Ok(t)
}
