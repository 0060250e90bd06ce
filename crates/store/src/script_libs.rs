//! The libraries Redis gives Lua scripts besides Lua's own: `bit` (LuaBitOp's functions on
//! 32-bit integers) and `cjson` (JSON text to Lua values and back, as lua-cjson maps them).
//! (`struct` and `cmsgpack` are not here yet.)

use mlua::{Lua, MultiValue, Table, Value};

pub fn install(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.raw_set("bit", bit(lua)?)?;
    globals.raw_set("cjson", cjson(lua)?)?;
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
            .ok_or_else(|| mlua::Error::RuntimeError("bad argument (number expected)".into()))?,
        _ => {
            return Err(mlua::Error::RuntimeError(
                "bad argument (number expected)".into(),
            ))
        }
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
            let parsed: serde_json::Value =
                serde_json::from_slice(&text.as_bytes()).map_err(|e| {
                    mlua::Error::RuntimeError(format!(
                        "Expected value but found invalid token: {e}"
                    ))
                })?;
            decode(lua, &parsed, &null, 0)
        })?,
    )?;
    Ok(t)
}

/// lua-cjson's number format (`%.14g`).
fn number(n: f64, out: &mut String) -> mlua::Result<()> {
    if !n.is_finite() {
        return Err(mlua::Error::RuntimeError(
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
        return Err(mlua::Error::RuntimeError(
            "Cannot serialise, excessive nesting".into(),
        ));
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
                            return Err(mlua::Error::RuntimeError(
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
            return Err(mlua::Error::RuntimeError(format!(
                "Cannot serialise {}: type not supported",
                other.type_name()
            )))
        }
    }
    Ok(())
}

fn decode(lua: &Lua, v: &serde_json::Value, null: &Value, depth: usize) -> mlua::Result<Value> {
    if depth > JSON_DEPTH {
        return Err(mlua::Error::RuntimeError(
            "Found too many nested data structures".into(),
        ));
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
