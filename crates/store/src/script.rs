//! Lua scripts (EVAL, EVAL_RO) on Lua 5.1, as Redis 7 runs them, inside the deterministic
//! state machine: a script is part of a log entry and runs when the entry is applied, on every
//! replica, so everything it may depend on comes from the store and the entry.
//!
//! - **Sandbox.** Only the libraries Redis gives scripts are there (base without file access,
//!   table, string, math, coroutine, `bit`, `cjson`, `cmsgpack`, `struct`, `redis`); the global table is read-only
//!   (Redis's errors for new and unknown globals); `loadstring` refuses bytecode.
//! - **Determinism.** No clock. `math.random` draws from the entry's seed, so every replica
//!   draws the same numbers (Redis 7 seeds it per process, so it is not deterministic there).
//! - **Bounds.** A script runs at most [`MAX_INSTRUCTIONS`] Lua VM instructions (counted, so
//!   every replica stops it at the same point) and its Lua heap is capped. A script stopped
//!   keeps what it wrote before, as a Redis script that fails midway does, and answers `-BUSY`.
//! - **Replies.** Values go between Redis replies and Lua as Redis converts them (RESP2, or
//!   RESP3 after `redis.setresp(3)`), and errors read as Redis's do, with the script's sha and
//!   line.

use crate::exec::Ctx;
use cairn_resp::{Protocol, Reply};
use mlua::{
    Function, HookTriggers, Lua, LuaOptions, LuaString, MultiValue, StdLib, Table, Value, VmState,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// The most Lua VM instructions one script runs (counted in steps of [`HOOK_EVERY`]).
pub const MAX_INSTRUCTIONS: u64 = 20_000_000;
const HOOK_EVERY: u32 = 10_000;
/// The Lua heap's limit (all scripts of a thread together).
const MEMORY_LIMIT: usize = 512 * 1024 * 1024;
/// Compiled scripts kept per thread.
const MAX_COMPILED: usize = 1024;
/// Nesting of reply arrays converted either way.
const MAX_DEPTH: usize = 64;

pub const VERSION: &str = "7.0.15";
const VERSION_NUM: i64 = 0x07_00_0f;

/// What a script's shebang (`#!lua flags=...`) asks for.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ScriptFlags {
    pub no_writes: bool,
    /// Lines the shebang took (the body compiles with it commented out).
    pub shebang: bool,
}

/// Parses a script's shebang line, with Redis's errors.
pub fn shebang(body: &[u8]) -> Result<ScriptFlags, Reply> {
    if !body.starts_with(b"#!") {
        return Ok(ScriptFlags::default());
    }
    let line_end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
    let line = String::from_utf8_lossy(&body[..line_end]).to_string();
    let mut words = line[2..].split(' ').filter(|w| !w.is_empty());
    if words.next() != Some("lua") {
        return Err(Reply::error(format!(
            "ERR Unexpected engine in script shebang: {line}"
        )));
    }
    let mut flags = ScriptFlags {
        shebang: true,
        ..ScriptFlags::default()
    };
    for word in words {
        let Some(list) = word.strip_prefix("flags=") else {
            return Err(Reply::error(format!(
                "ERR Unknown lua shebang option: {word}"
            )));
        };
        for flag in list.split(',').filter(|f| !f.is_empty()) {
            match flag {
                "no-writes" => flags.no_writes = true,
                "allow-oom" | "allow-stale" | "no-cluster" | "allow-cross-slot-keys" => {}
                other => {
                    return Err(Reply::error(format!(
                        "ERR Unexpected flag in script shebang: {other}"
                    )))
                }
            }
        }
    }
    Ok(flags)
}

/// SHA-1 of `data` in lower-case hex (`redis.sha1hex`, script ids).
pub fn sha1hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles `body` the way EVAL would: Redis's error on a syntax error.
pub fn check_compiles(body: &[u8]) -> Result<(), Reply> {
    let flags = shebang(body)?;
    with_engine(|e| e.compiled(body, flags).map(|_| ()))
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

fn with_engine<R>(f: impl FnOnce(&mut Engine) -> R) -> R {
    ENGINE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let engine = slot.get_or_insert_with(|| Engine::new().expect("the Lua engine starts"));
        f(engine)
    })
}

/// One Lua state per thread, reused by the scripts that thread runs (they cannot leave
/// anything behind: the globals are read-only).
struct Engine {
    lua: Lua,
    compiled: HashMap<String, Function>,
    /// Where `redis.call`/`pcall` find this run's dispatcher.
    slot: Table,
    /// `xpcall` and the message handler that adds the failing line.
    xpcall: Function,
    handler: Function,
    /// Instruction steps left in this run; set when a run was stopped.
    steps_left: Rc<Cell<u64>>,
    stopped: Rc<Cell<bool>>,
    /// The protocol `redis.call` replies come to the script in (`redis.setresp`).
    resp3: Rc<Cell<bool>>,
    /// `math.random`'s state for this run.
    random: Rc<Cell<u64>>,
    /// Functions (FUNCTION LOAD, FCALL): the functions a library's code registered in this
    /// run, and the environments library code runs in (loading: no `redis.call`; running: the
    /// whole `redis` API, no KEYS/ARGV).
    registered: Table,
    load_env: Table,
    run_env: Table,
    /// `f, handler, keys, args` → `xpcall(function() return f(keys, args) end, handler)`.
    call_with: Function,
}

/// Lua's `%.14g` for numbers given as command arguments.
fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        return format!("{}", n as i64);
    }
    let text = format!("{n:.14e}");
    // Shortest of %.14g: Lua formats through printf; this keeps 14 significant digits.
    let parsed: f64 = text.parse().unwrap_or(n);
    let plain = format!("{parsed}");
    if plain.len() <= 20 {
        plain
    } else {
        text
    }
}

impl Engine {
    fn new() -> mlua::Result<Engine> {
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH,
            LuaOptions::default(),
        )?;
        lua.set_memory_limit(MEMORY_LIMIT)?;
        let globals = lua.globals();
        // No file or module access, no environments to escape the read-only globals through.
        for name in [
            "dofile", "loadfile", "require", "module", "print", "getfenv", "setfenv", "newproxy",
        ] {
            globals.raw_set(name, Value::Nil)?;
        }
        // loadstring and load compile text only (Redis refuses bytecode too).
        let plain_loadstring: Function = globals.get("loadstring")?;
        let guarded =
            lua.create_function(move |_, (code, name): (LuaString, Option<String>)| {
                if code.as_bytes().first() == Some(&0x1b) {
                    return Ok((
                        Value::Nil,
                        Some("loading bytecode is not allowed".to_string()),
                    ));
                }
                let r: (Value, Option<String>) = plain_loadstring.call((code, name))?;
                Ok(r)
            })?;
        globals.raw_set("loadstring", guarded.clone())?;
        globals.raw_set("load", guarded)?;

        let steps_left = Rc::new(Cell::new(0));
        let stopped = Rc::new(Cell::new(false));
        let resp3 = Rc::new(Cell::new(false));
        let random = Rc::new(Cell::new(1u64));

        let redis = lua.create_table()?;
        let slot = lua.create_table()?;
        // redis.call and redis.pcall are Rust functions, as Redis's are C ones: Lua keeps the
        // script's frame under them (a Lua wrapper would be tail-called and hide the line).
        // Each run puts its dispatcher (which borrows the store) in `slot.f`.
        let call_slot = slot.clone();
        redis.raw_set(
            "call",
            lua.create_function(move |_, args: MultiValue| {
                let f: Function = call_slot.raw_get("f")?;
                let (ok, v): (bool, Value) = f.call(args)?;
                if ok {
                    return Ok(v);
                }
                let err = match &v {
                    Value::Table(t) => t.raw_get::<LuaString>("err")?.to_string_lossy(),
                    _ => "ERR unknown error".into(),
                };
                Err(mlua::Error::external(RaisedReply(err)))
            })?,
        )?;
        let pcall_slot = slot.clone();
        redis.raw_set(
            "pcall",
            lua.create_function(move |_, args: MultiValue| {
                let f: Function = pcall_slot.raw_get("f")?;
                let (_, v): (bool, Value) = f.call(args)?;
                Ok(v)
            })?,
        )?;
        redis.raw_set(
            "error_reply",
            lua.create_function(|lua, e: LuaString| {
                // Redis's rule: a leading '-' goes; a message of one word gets the code ERR.
                let text = e.to_string_lossy();
                let text = text.strip_prefix('-').unwrap_or(&text);
                let text = if text.contains(' ') {
                    text.to_string()
                } else {
                    format!("ERR {text}")
                };
                let t = lua.create_table()?;
                t.raw_set("err", text)?;
                Ok(t)
            })?,
        )?;
        redis.raw_set(
            "status_reply",
            lua.create_function(|lua, s: LuaString| {
                let t = lua.create_table()?;
                t.raw_set("ok", s)?;
                Ok(t)
            })?,
        )?;
        redis.raw_set(
            "sha1hex",
            lua.create_function(|_, s: LuaString| Ok(sha1hex(&s.as_bytes())))?,
        )?;
        redis.raw_set("log", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
        let r3 = resp3.clone();
        redis.raw_set(
            "setresp",
            lua.create_function(move |_, v: i64| match v {
                2 | 3 => {
                    r3.set(v == 3);
                    Ok(())
                }
                _ => Err(mlua::Error::RuntimeError(
                    "RESP version must be 2 or 3.".into(),
                )),
            })?,
        )?;
        redis.raw_set("set_repl", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
        redis.raw_set(
            "replicate_commands",
            lua.create_function(|_, _: MultiValue| Ok(true))?,
        )?;
        redis.raw_set(
            "breakpoint",
            lua.create_function(|_, _: MultiValue| Ok(false))?,
        )?;
        redis.raw_set("debug", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
        for (name, v) in [
            ("REPL_NONE", 0),
            ("REPL_AOF", 1),
            ("REPL_SLAVE", 2),
            ("REPL_REPLICA", 2),
            ("REPL_ALL", 3),
            ("LOG_DEBUG", 0),
            ("LOG_VERBOSE", 1),
            ("LOG_NOTICE", 2),
            ("LOG_WARNING", 3),
        ] {
            redis.raw_set(name, v)?;
        }
        redis.raw_set("REDIS_VERSION", VERSION)?;
        redis.raw_set("REDIS_VERSION_NUM", VERSION_NUM)?;
        globals.raw_set("redis", redis)?;

        // math.random from the entry's seed (xorshift64*), Lua 5.1's argument rules.
        let math: Table = globals.get("math")?;
        let rnd = random.clone();
        math.raw_set(
            "random",
            lua.create_function(move |_, args: MultiValue| {
                let mut x = rnd.get();
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                rnd.set(x);
                let r = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
                let nums: Vec<f64> = args
                    .iter()
                    .map(|v| match v {
                        Value::Integer(i) => Ok(*i as f64),
                        Value::Number(n) => Ok(*n),
                        _ => Err(mlua::Error::RuntimeError(
                            "bad argument to 'random' (number expected)".into(),
                        )),
                    })
                    .collect::<mlua::Result<_>>()?;
                match nums.as_slice() {
                    [] => Ok(r),
                    [m] if *m >= 1.0 => Ok((r * m.floor()).floor() + 1.0),
                    [m, n] if m <= n => Ok((r * (n - m + 1.0)).floor() + m),
                    [_] | [_, _] => Err(mlua::Error::RuntimeError(
                        "bad argument to 'random' (interval is empty)".into(),
                    )),
                    _ => Err(mlua::Error::RuntimeError(
                        "wrong number of arguments".into(),
                    )),
                }
            })?,
        )?;
        math.raw_set(
            "randomseed",
            lua.create_function(|_, _: MultiValue| Ok(()))?,
        )?;
        crate::script_libs::install(&lua)?;

        // Read-only globals, with Redis's words.
        let meta = lua.create_table()?;
        meta.raw_set("__newindex", readonly_newindex(&lua)?)?;
        meta.raw_set(
            "__index",
            lua.create_function(|lua, (_, key): (Value, Value)| -> mlua::Result<()> {
                let name = match key {
                    Value::String(s) => s.to_string_lossy(),
                    _ => "?".to_string(),
                };
                Err(missing_global(lua, &name))
            })?,
        )?;
        globals.set_metatable(Some(meta))?;

        let left = steps_left.clone();
        let stop = stopped.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                let n = left.get();
                if n == 0 {
                    stop.set(true);
                    return Err(mlua::Error::RuntimeError(
                        "script stopped: instruction limit".into(),
                    ));
                }
                left.set(n - 1);
                Ok(VmState::Continue)
            },
        )?;

        let xpcall: Function = globals.get("xpcall")?;
        let handler = lua.create_function(|lua, err: Value| {
            // The error as a table {err=...}, with the script line it was raised on.
            let raised = match &err {
                Value::Error(e) => raised_reply(e),
                _ => None,
            };
            // A library's error (cmsgpack, struct, ...) reads as luaL_error writes it: with the
            // position of the script's line that called it.
            let lib = match &err {
                Value::Error(e) => lib_error_text(e),
                _ => None,
            };
            let err = match lib {
                Some(text) => {
                    let at = user_frame(lua)
                        .map(|f| format!("{}:{}: ", f.short_src, f.line))
                        .unwrap_or_default();
                    Value::String(lua.create_string(format!("{at}{text}"))?)
                }
                None => err,
            };
            let t = match &err {
                _ if raised.is_some() => {
                    let t = lua.create_table()?;
                    t.raw_set("err", raised.unwrap_or_default())?;
                    t
                }
                Value::Table(t) if t.raw_get::<Value>("err").is_ok_and(|v| !v.is_nil()) => {
                    t.clone()
                }
                other => {
                    let text = match other {
                        Value::String(s) => s.to_string_lossy(),
                        Value::Error(e) => lua_error_text(e),
                        v => v.to_string().unwrap_or_default(),
                    };
                    let t = lua.create_table()?;
                    t.raw_set("err", format!("ERR {text}"))?;
                    t
                }
            };
            if let Some(f) = user_frame(lua) {
                t.raw_set("source", f.source)?;
                t.raw_set("line", f.line)?;
            }
            Ok(t)
        })?;
        let registered = lua.create_table()?;
        let (load_env, run_env) = function_envs(&lua, &registered)?;
        let call_with: Function = lua
            .load("local f, h, k, a = ... return xpcall(function() return f(k, a) end, h)")
            .set_name("=cairn")
            .into_function()?;
        Ok(Engine {
            lua,
            compiled: HashMap::new(),
            slot,
            xpcall,
            handler,
            steps_left,
            stopped,
            resp3,
            random,
            registered,
            load_env,
            run_env,
            call_with,
        })
    }

    /// The compiled function of `body`, compiling it on first use.
    fn compiled(&mut self, body: &[u8], flags: ScriptFlags) -> Result<(String, Function), Reply> {
        let sha = sha1hex(body);
        if let Some(f) = self.compiled.get(&sha) {
            return Ok((sha, f.clone()));
        }
        // The shebang stays as a comment, so that line numbers are the script's own.
        let mut source = Vec::with_capacity(body.len() + 2);
        if flags.shebang {
            source.extend_from_slice(b"--");
        }
        source.extend_from_slice(body);
        let f = self
            .lua
            .load(&source[..])
            .set_name("@user_script")
            .set_mode(mlua::chunk::ChunkMode::Text)
            .into_function()
            .map_err(|e| {
                let text = match &e {
                    mlua::Error::SyntaxError { message, .. } => message.clone(),
                    other => lua_error_text(other),
                };
                Reply::error(format!("ERR Error compiling script (new function): {text}"))
            })?;
        if self.compiled.len() >= MAX_COMPILED {
            self.compiled.clear();
        }
        self.compiled.insert(sha.clone(), f.clone());
        Ok((sha, f))
    }
}

/// An error reply `redis.call` raises: it reaches the client as it is, with the script's line.
#[derive(Debug)]
struct RaisedReply(String);

impl std::fmt::Display for RaisedReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedReply {}

/// The reply `redis.call` raised, if that is what `e` is (through the callback layers).
fn raised_reply(e: &mlua::Error) -> Option<String> {
    match e {
        mlua::Error::CallbackError { cause, .. } => raised_reply(cause),
        mlua::Error::ExternalError(inner) => {
            inner.downcast_ref::<RaisedReply>().map(|r| r.0.clone())
        }
        _ => None,
    }
}

/// A library error's own text, if that is what `e` is (through the callback layers).
fn lib_error_text(e: &mlua::Error) -> Option<String> {
    match e {
        mlua::Error::CallbackError { cause, .. } => lib_error_text(cause),
        mlua::Error::ExternalError(inner) => inner
            .downcast_ref::<crate::script_libs::LibError>()
            .map(|r| r.0.clone()),
        _ => None,
    }
}

/// `chunk:line: ` of the Lua code that called the running Rust function, as `luaL_where`
/// writes it (empty when that is not Lua code).
/// The innermost stack frame that runs the user's script or library (chunks named
/// `@user_...`), searched through at most 64 levels.
struct UserFrame {
    source: String,
    short_src: String,
    line: usize,
}

fn user_frame(lua: &Lua) -> Option<UserFrame> {
    for level in 1..64 {
        let found = lua.inspect_stack(level, |d| {
            let src = d.source();
            (
                src.source.map(|s| s.to_string()),
                src.short_src.map(|s| s.to_string()),
                d.current_line(),
            )
        })?;
        if let (Some(source), Some(short_src), Some(line)) = found {
            if source.starts_with("@user_") {
                return Some(UserFrame {
                    source,
                    short_src,
                    line,
                });
            }
        }
    }
    None
}

fn position(lua: &Lua) -> String {
    lua.inspect_stack(1, |d| {
        let src = d.source().short_src.map(|s| s.to_string());
        (src, d.current_line())
    })
    .and_then(|(s, l)| Some(format!("{}:{}: ", s?, l?)))
    .unwrap_or_default()
}

/// A Lua error's own message (without mlua's "runtime error: " decoration).
fn lua_error_text(e: &mlua::Error) -> String {
    match e {
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::CallbackError { cause, .. } => lua_error_text(cause),
        mlua::Error::MemoryError(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Runs a script: EVAL's `args` (`EVAL body numkeys key... arg...`), read-only when asked.
pub fn eval(ctx: &mut Ctx, args: &[Vec<u8>], read_only: bool) -> Reply {
    let Ok(numkeys) = crate::exec::int_arg(&args[2]) else {
        return Reply::error("ERR value is not an integer or out of range");
    };
    if numkeys < 0 {
        return Reply::error("ERR Number of keys can't be negative");
    }
    if numkeys as u64 > (args.len() - 3) as u64 {
        return Reply::error("ERR Number of keys can't be greater than number of args");
    }
    let split = 3 + numkeys as usize;
    if let Some(rest) = args[1].strip_prefix(FUNCTION_MARK) {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let name = String::from_utf8_lossy(&rest[..end]).to_string();
        let code = rest.get(end + 1..).unwrap_or_default();
        let seed = ctx.rng.next_u64();
        return with_engine(|engine| {
            let ran = engine.run_function(
                ctx,
                &name,
                code,
                (&args[3..split], &args[split..]),
                read_only,
                seed,
            );
            failure_reply(ran, &name)
        });
    }
    let flags = match shebang(&args[1]) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let read_only = read_only || flags.no_writes;
    let seed = ctx.rng.next_u64();
    with_engine(|engine| {
        let (sha, f) = match engine.compiled(&args[1], flags) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let ran = engine.run(ctx, &f, &args[3..split], &args[split..], read_only, seed);
        failure_reply(ran, &sha)
    })
}

/// A run's reply; a failure as Redis words it (`script:` names the sha, or the function).
fn failure_reply(ran: Result<Reply, Failure>, script: &str) -> Reply {
    match ran {
        Ok(reply) => reply,
        Err(Failure::Stopped) => Reply::error(format!(
            "BUSY script {script} ran past its limit of {MAX_INSTRUCTIONS} Lua instructions and \
             was stopped (what it wrote before stays)"
        )),
        Err(Failure::Plain(err)) => Reply::Error(err.into()),
        Err(Failure::Raised { err, at }) => {
            let at = at.map_or_else(String::new, |(s, l)| format!(", on {s}:{l}"));
            Reply::error(format!("{err} script: {script}{at}."))
        }
        Err(Failure::Internal(e)) => Reply::error(format!("ERR script failed: {e}")),
    }
}

enum Failure {
    Stopped,
    Raised {
        err: String,
        at: Option<(String, i64)>,
    },
    Internal(String),
    /// An error reply as it is (a library that would not compile or register).
    Plain(String),
}

impl Engine {
    fn run(
        &mut self,
        ctx: &mut Ctx,
        f: &Function,
        keys: &[Vec<u8>],
        argv: &[Vec<u8>],
        read_only: bool,
        seed: u64,
    ) -> Result<Reply, Failure> {
        let internal = |e: mlua::Error| Failure::Internal(lua_error_text(&e));
        let lua = &self.lua;
        let globals = lua.globals();
        globals
            .raw_set("KEYS", lua_list(lua, keys).map_err(internal)?)
            .map_err(internal)?;
        globals
            .raw_set("ARGV", lua_list(lua, argv).map_err(internal)?)
            .map_err(internal)?;
        let outcome = self.with_dispatch(ctx, read_only, seed, |e| {
            e.xpcall.call((f.clone(), e.handler.clone()))
        });
        let _ = globals.raw_set("KEYS", Value::Nil);
        let _ = globals.raw_set("ARGV", Value::Nil);
        self.finish(outcome)
    }

    /// Runs `call` with this run's budget, random state and `redis.call` dispatcher (which
    /// borrows the store for the run's length).
    fn with_dispatch(
        &self,
        ctx: &mut Ctx,
        read_only: bool,
        seed: u64,
        call: impl FnOnce(&Self) -> mlua::Result<MultiValue>,
    ) -> mlua::Result<MultiValue> {
        self.steps_left
            .set(MAX_INSTRUCTIONS / u64::from(HOOK_EVERY));
        self.stopped.set(false);
        self.resp3.set(false);
        self.random.set(seed | 1);
        let resp3 = self.resp3.clone();
        self.lua.scope(|scope| {
            let dispatch = scope.create_function_mut(|lua, args: MultiValue| {
                let reply = call_from_script(ctx, &args, read_only, resp3.get());
                let ok = !matches!(reply, Reply::Error(_));
                let v = to_lua(lua, &reply, resp3.get(), 0)?;
                Ok((ok, v))
            })?;
            self.slot.raw_set("f", dispatch)?;
            let result = call(self);
            self.slot.raw_set("f", Value::Nil)?;
            result
        })
    }

    /// A run's outcome (xpcall's values) as the reply, or how it failed.
    fn finish(&self, outcome: mlua::Result<MultiValue>) -> Result<Reply, Failure> {
        if self.stopped.get() {
            return Err(Failure::Stopped);
        }
        let values: Vec<Value> = outcome
            .map_err(|e| Failure::Internal(lua_error_text(&e)))?
            .into_iter()
            .collect();
        match values.first() {
            Some(Value::Boolean(true)) => {
                let v = values.get(1).cloned().unwrap_or(Value::Nil);
                // Lua's booleans become RESP3 booleans only for a script that chose RESP3.
                let script_proto = if self.resp3.get() {
                    Protocol::Resp3
                } else {
                    Protocol::Resp2
                };
                Ok(from_lua(&v, script_proto, 0))
            }
            _ => {
                let Some(Value::Table(t)) = values.get(1) else {
                    return Err(Failure::Internal("an error without a description".into()));
                };
                let err = match t.raw_get::<Value>("err") {
                    Ok(Value::String(s)) => s.to_string_lossy(),
                    _ => "ERR unknown error".into(),
                };
                let source: Option<String> = t.raw_get("source").ok();
                let line: Option<i64> = t.raw_get("line").ok();
                Err(Failure::Raised {
                    err,
                    at: source.zip(line),
                })
            }
        }
    }
}

/// A Lua list of strings (KEYS, ARGV, a function's keys and args).
fn lua_list(lua: &Lua, items: &[Vec<u8>]) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(items.len(), 0)?;
    for (i, item) in items.iter().enumerate() {
        t.raw_set(i + 1, lua.create_string(item)?)?;
    }
    Ok(t)
}

/// `redis.call`'s work: the command's reply (an error reply for what a script may not run).
fn call_from_script(ctx: &mut Ctx, args: &MultiValue, read_only: bool, resp3: bool) -> Reply {
    let mut argv: Vec<Vec<u8>> = Vec::with_capacity(args.len());
    for a in args.iter() {
        match a {
            Value::String(s) => argv.push(s.as_bytes().to_vec()),
            Value::Integer(i) => argv.push(i.to_string().into_bytes()),
            Value::Number(n) => argv.push(number_text(*n).into_bytes()),
            _ => {
                return Reply::error(
                    "ERR Lua redis lib command arguments must be strings or integers",
                )
            }
        }
    }
    if argv.is_empty() {
        return Reply::error("ERR Please specify at least one argument for this redis lib call");
    }
    let table = crate::commands();
    let spec = match table.lookup(&argv) {
        cairn_commands::Lookup::Found(spec) => spec.clone(),
        cairn_commands::Lookup::Error(Reply::Error(e)) if e.starts_with("ERR unknown command") => {
            return Reply::error("ERR Unknown Redis command called from script")
        }
        cairn_commands::Lookup::Error(_) => {
            return Reply::error("ERR Wrong number of args calling Redis command from script")
        }
    };
    if spec.flags.contains(cairn_commands::Flags::NOSCRIPT) {
        return Reply::error("ERR This Redis command is not allowed from script");
    }
    if read_only && spec.is_write() {
        return Reply::error("ERR Write commands are not allowed from read-only scripts.");
    }
    let Some(handler) = crate::cmd::handler(&spec.name) else {
        return match spec.name.as_str() {
            "ping" => Reply::Status("PONG".into()),
            _ => Reply::error("ERR This Redis command is not allowed from script"),
        };
    };
    // A key of a slot this shard does not hold would be read as missing, or written where it
    // does not belong.
    if !ctx.ks.served().is_all() {
        for i in spec.key_positions(&argv) {
            let slot = crate::slot::key_slot(&argv[i]);
            if !ctx.ks.serves(slot) {
                return Reply::error(
                    "ERR Script attempted to access a key of another shard that it did not \
                     declare (pass every key in KEYS)",
                );
            }
        }
    }
    // Blocking commands do not block in scripts; their store forms never do. The reply is
    // shaped for the script's protocol (`redis.setresp`), not the client's.
    let client = ctx.proto;
    ctx.proto = if resp3 {
        Protocol::Resp3
    } else {
        Protocol::Resp2
    };
    let reply = handler(ctx, &argv);
    ctx.proto = client;
    reply
}

/// A Redis reply as the script sees it.
fn to_lua(lua: &Lua, reply: &Reply, resp3: bool, depth: usize) -> mlua::Result<Value> {
    if depth > MAX_DEPTH {
        return Err(mlua::Error::RuntimeError("reply nested too deeply".into()));
    }
    let table_of = |key: &str, v: Value| -> mlua::Result<Value> {
        let t = lua.create_table()?;
        t.raw_set(key, v)?;
        Ok(Value::Table(t))
    };
    let list = |items: &[Reply]| -> mlua::Result<Value> {
        let t = lua.create_table_with_capacity(items.len(), 0)?;
        for (i, item) in items.iter().enumerate() {
            t.raw_set(i + 1, to_lua(lua, item, resp3, depth + 1)?)?;
        }
        Ok(Value::Table(t))
    };
    Ok(match reply {
        Reply::Int(n) => Value::Integer(*n as mlua::Integer),
        Reply::Bulk(b) | Reply::Verbatim(_, b) => Value::String(lua.create_string(b)?),
        Reply::Status(s) => table_of("ok", Value::String(lua.create_string(s.as_bytes())?))?,
        Reply::Error(e) => table_of("err", Value::String(lua.create_string(e.as_bytes())?))?,
        Reply::Nil | Reply::NilArray if resp3 => Value::Nil,
        Reply::Nil | Reply::NilArray => Value::Boolean(false),
        Reply::Array(items) | Reply::Push(items) | Reply::Several(items) => list(items)?,
        Reply::Set(items) if resp3 => {
            let t = lua.create_table()?;
            for item in items {
                t.raw_set(to_lua(lua, item, resp3, depth + 1)?, true)?;
            }
            table_of("set", Value::Table(t))?
        }
        Reply::Set(items) => list(items)?,
        Reply::Map(pairs) if resp3 => {
            let t = lua.create_table()?;
            for (k, v) in pairs {
                t.raw_set(
                    to_lua(lua, k, resp3, depth + 1)?,
                    to_lua(lua, v, resp3, depth + 1)?,
                )?;
            }
            table_of("map", Value::Table(t))?
        }
        Reply::Map(pairs) => {
            let flat: Vec<Reply> = pairs
                .iter()
                .flat_map(|(k, v)| [k.clone(), v.clone()])
                .collect();
            list(&flat)?
        }
        Reply::Double(d) if resp3 => table_of("double", Value::Number(*d))?,
        Reply::Double(_) => {
            let bytes = reply.to_bytes(Protocol::Resp2);
            match cairn_resp::parse_reply(&bytes) {
                Some(Reply::Bulk(b)) => Value::String(lua.create_string(b)?),
                _ => Value::Nil,
            }
        }
        Reply::Bool(b) if resp3 => Value::Boolean(*b),
        Reply::Bool(b) => Value::Integer(i64::from(*b) as mlua::Integer),
    })
}

/// A script's value as a reply to the client.
fn from_lua(v: &Value, proto: Protocol, depth: usize) -> Reply {
    if depth > MAX_DEPTH {
        return Reply::error("ERR reached lua stack limit");
    }
    match v {
        Value::Nil => Reply::Nil,
        Value::Boolean(false) => Reply::Nil,
        Value::Boolean(true) if proto == Protocol::Resp3 => Reply::Bool(true),
        Value::Boolean(true) => Reply::Int(1),
        Value::Integer(i) => Reply::Int(*i),
        Value::Number(n) => Reply::Int(*n as i64),
        Value::String(s) => Reply::Bulk(s.as_bytes().to_vec()),
        Value::Table(t) => {
            if let Ok(Value::String(e)) = t.raw_get::<Value>("err") {
                return Reply::Error(e.to_string_lossy().into());
            }
            if let Ok(Value::String(s)) = t.raw_get::<Value>("ok") {
                return Reply::Status(s.to_string_lossy().into());
            }
            // RESP3 types, which a RESP2 client gets in RESP2's shapes.
            {
                if let Ok(Value::Table(m)) = t.raw_get::<Value>("map") {
                    let mut pairs = Vec::new();
                    for (k, v) in m.pairs::<Value, Value>().flatten() {
                        pairs.push((
                            from_lua(&k, proto, depth + 1),
                            from_lua(&v, proto, depth + 1),
                        ));
                    }
                    return Reply::Map(pairs);
                }
                if let Ok(Value::Table(s)) = t.raw_get::<Value>("set") {
                    let items = s
                        .pairs::<Value, Value>()
                        .flatten()
                        .map(|(k, _)| from_lua(&k, proto, depth + 1))
                        .collect();
                    return Reply::Set(items);
                }
                if let Ok(n) = t.raw_get::<f64>("double") {
                    return Reply::Double(n);
                }
            }
            let mut items = Vec::new();
            for i in 1.. {
                match t.raw_get::<Value>(i) {
                    Ok(Value::Nil) | Err(_) => break,
                    Ok(v) => items.push(from_lua(&v, proto, depth + 1)),
                }
            }
            Reply::Array(items)
        }
        _ => Reply::Nil,
    }
}

/// What an EVAL body starts with when it stands for FCALL: the function's name on that line,
/// its library's code after it (the node that took FCALL puts the code in the entry, as
/// EVALSHA's body).
pub const FUNCTION_MARK: &[u8] = b"#!cairn-function ";

/// The EVAL body that runs function `name` of a library whose code is `code`.
pub fn function_body(name: &str, code: &[u8]) -> Vec<u8> {
    let mut out = FUNCTION_MARK.to_vec();
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(code);
    out
}

/// A function a library registered.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionInfo {
    pub name: String,
    pub flags: Vec<String>,
    pub description: Option<String>,
}

/// A library as FUNCTION LOAD reads it: its name and functions, in registration order.
#[derive(Clone, Debug, PartialEq)]
pub struct LibraryInfo {
    pub name: String,
    pub functions: Vec<FunctionInfo>,
}

const FUNCTION_FLAGS: &[&str] = &[
    "no-writes",
    "allow-oom",
    "allow-stale",
    "no-cluster",
    "allow-cross-slot-keys",
];

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The library's name from its `#!lua name=<name>` line, with Redis's errors.
fn library_name(code: &[u8]) -> Result<String, String> {
    if !code.starts_with(b"#!") {
        return Err("ERR Missing library metadata".into());
    }
    let end = code.iter().position(|&b| b == b'\n').unwrap_or(code.len());
    let line = String::from_utf8_lossy(&code[2..end]).to_string();
    let mut words = line.split(' ').filter(|w| !w.is_empty());
    let engine = words.next().unwrap_or_default();
    if engine != "lua" {
        return Err(format!("ERR Engine '{engine}' not found"));
    }
    let mut name = None;
    for word in words {
        match word.strip_prefix("name=") {
            Some(n) => name = Some(n.to_string()),
            None => return Err(format!("ERR Invalid metadata value given: {word}")),
        }
    }
    let name = name.ok_or("ERR Library name was not given")?;
    if !valid_name(&name) {
        return Err("ERR Library names can only contain letters, numbers, or underscores(_) and must be at least one character long".into());
    }
    Ok(name)
}

/// The environments of library code: loading (register_function and logging only from the
/// `redis` API) and running (all of it). Both read the read-only globals.
fn function_envs(lua: &Lua, registered: &Table) -> mlua::Result<(Table, Table)> {
    let globals = lua.globals();
    let full: Table = globals.raw_get("redis")?;
    let reg = registered.clone();
    let register = lua.create_function(move |lua, args: MultiValue| -> mlua::Result<()> {
        let bad = |m: &str| Err(mlua::Error::RuntimeError(m.to_string()));
        let (name, callback, flags, description): (Value, Value, Value, Value) =
            match args.len() {
                1 => {
                    let Some(Value::Table(t)) = args.front() else {
                        return bad("calling redis.register_function with a single argument is only applicable to Lua table (representing named arguments).");
                    };
                    for pair in t.pairs::<Value, Value>() {
                        let (k, _) = pair?;
                        let known = matches!(&k, Value::String(s) if matches!(s.to_string_lossy().as_str(), "function_name" | "callback" | "flags" | "description"));
                        if !known {
                            return bad("unknown argument given to redis.register_function");
                        }
                    }
                    (
                        t.raw_get("function_name")?,
                        t.raw_get("callback")?,
                        t.raw_get("flags")?,
                        t.raw_get("description")?,
                    )
                }
                2 => (
                    args[0].clone(),
                    args[1].clone(),
                    Value::Nil,
                    Value::Nil,
                ),
                _ => return bad("wrong number of arguments to redis.register_function"),
            };
        let Value::String(name) = name else {
            return bad("function_name argument given to redis.register_function must be a string");
        };
        let name = name.to_string_lossy();
        let Value::Function(callback) = callback else {
            return bad("callback argument given to redis.register_function must be a function");
        };
        if !valid_name(&name) {
            return bad("Function names can only contain letters, numbers, or underscores(_) and must be at least one character long");
        }
        let mut flag_list = Vec::new();
        match flags {
            Value::Nil => {}
            Value::Table(t) => {
                for f in t.sequence_values::<Value>() {
                    match f? {
                        Value::String(s) if FUNCTION_FLAGS.contains(&s.to_string_lossy().as_str()) => {
                            flag_list.push(s.to_string_lossy())
                        }
                        _ => return bad("unknown flag given"),
                    }
                }
            }
            _ => return bad("flags argument to redis.register_function must be a table representing function flags"),
        }
        let description = match description {
            Value::Nil => None,
            Value::String(s) => Some(s.to_string_lossy()),
            _ => return bad("description argument given to redis.register_function must be a string"),
        };
        if reg.raw_get::<Value>(name.as_str())? != Value::Nil {
            return bad("Function already exists in the library");
        }
        let entry = lua.create_table()?;
        entry.raw_set("callback", callback)?;
        entry.raw_set("flags", flag_list.join(","))?;
        if let Some(d) = description {
            entry.raw_set("description", d)?;
        }
        entry.raw_set("order", reg.raw_len() + 1)?;
        reg.raw_set(name.as_str(), entry)?;
        let order: Table = match reg.raw_get::<Value>("__order")? {
            Value::Table(t) => t,
            _ => {
                let t = lua.create_table()?;
                reg.raw_set("__order", t.clone())?;
                t
            }
        };
        order.raw_set(order.raw_len() + 1, name)?;
        Ok(())
    })?;
    let load_redis = lua.create_table()?;
    load_redis.raw_set("register_function", register.clone())?;
    for key in [
        "log",
        "setresp",
        "LOG_DEBUG",
        "LOG_VERBOSE",
        "LOG_NOTICE",
        "LOG_WARNING",
        "REDIS_VERSION",
        "REDIS_VERSION_NUM",
    ] {
        load_redis.raw_set(key, full.raw_get::<Value>(key)?)?;
    }
    let run_redis = lua.create_table()?;
    for pair in full.pairs::<Value, Value>() {
        let (k, v) = pair?;
        run_redis.raw_set(k, v)?;
    }
    run_redis.raw_set("register_function", register)?;
    let env = |redis: Table| -> mlua::Result<Table> {
        let env = lua.create_table()?;
        let meta = lua.create_table()?;
        let g = globals.clone();
        meta.raw_set(
            "__index",
            lua.create_function(move |lua, (_, key): (Value, Value)| {
                if let Value::String(s) = &key {
                    if s.as_bytes().as_ref() == b"redis" {
                        return Ok(Value::Table(redis.clone()));
                    }
                    // KEYS and ARGV are EVAL's, not a function's.
                    let name = s.to_string_lossy();
                    let v: Value = if name == "KEYS" || name == "ARGV" {
                        Value::Nil
                    } else {
                        g.raw_get(key.clone())?
                    };
                    if v != Value::Nil {
                        return Ok(v);
                    }
                    return Err(missing_global(lua, &name));
                }
                Ok(Value::Nil)
            })?,
        )?;
        meta.raw_set("__newindex", readonly_newindex(lua)?)?;
        env.set_metatable(Some(meta))?;
        Ok(env)
    };
    Ok((env(load_redis)?, env(run_redis)?))
}

/// The `__newindex` of a read-only table (the globals, a function's environment): Redis's
/// words, with the script's position.
fn readonly_newindex(lua: &Lua) -> mlua::Result<Function> {
    lua.create_function(|lua, _: MultiValue| -> mlua::Result<()> {
        Err(mlua::Error::RuntimeError(format!(
            "{}Attempt to modify a readonly table",
            position(lua)
        )))
    })
}

/// Redis's error for reading a global that was never set.
fn missing_global(lua: &Lua, name: &str) -> mlua::Error {
    mlua::Error::RuntimeError(format!(
        "{}Script attempted to access nonexistent global variable '{name}'",
        position(lua)
    ))
}

impl Engine {
    /// Compiles library code in `env`, its `#!lua` line kept as a comment.
    fn library_chunk(&mut self, code: &[u8], env: &Table, key: String) -> Result<Function, String> {
        if let Some(f) = self.compiled.get(&key) {
            return Ok(f.clone());
        }
        let mut source = b"--".to_vec();
        source.extend_from_slice(code);
        let f = self
            .lua
            .load(&source[..])
            .set_name("@user_function")
            .set_mode(mlua::chunk::ChunkMode::Text)
            .set_environment(env.clone())
            .into_function()
            .map_err(|e| {
                let text = match &e {
                    mlua::Error::SyntaxError { message, .. } => message.clone(),
                    other => lua_error_text(other),
                };
                format!("ERR Error compiling function: {text}")
            })?;
        if self.compiled.len() >= MAX_COMPILED {
            self.compiled.clear();
        }
        self.compiled.insert(key, f.clone());
        Ok(f)
    }

    /// Runs library code once, collecting what it registers (in `self.registered`).
    fn register(&mut self, chunk: &Function) -> Result<(), String> {
        let old: Vec<Value> = self
            .registered
            .pairs::<Value, Value>()
            .flatten()
            .map(|(k, _)| k)
            .collect();
        for k in old {
            let _ = self.registered.raw_set(k, Value::Nil);
        }
        self.steps_left
            .set(MAX_INSTRUCTIONS / u64::from(HOOK_EVERY));
        self.stopped.set(false);
        let result: mlua::Result<MultiValue> =
            self.xpcall.call((chunk.clone(), self.handler.clone()));
        match result {
            Ok(values) if matches!(values.front(), Some(Value::Boolean(true))) => Ok(()),
            Ok(values) => {
                let err = match values.get(1) {
                    Some(Value::Table(t)) => t
                        .raw_get::<LuaString>("err")
                        .map(|s| s.to_string_lossy())
                        .unwrap_or_default(),
                    _ => "ERR unknown error".into(),
                };
                Err(format!("ERR Error registering functions: {err}"))
            }
            Err(e) => Err(format!(
                "ERR Error registering functions: {}",
                lua_error_text(&e)
            )),
        }
    }
}

/// FUNCTION LOAD's reading of a library: its name and functions, or Redis's error text.
pub fn load_library(code: &[u8]) -> Result<LibraryInfo, String> {
    let name = library_name(code)?;
    with_engine(|e| {
        let env = e.load_env.clone();
        let chunk = e.library_chunk(code, &env, format!("load:{}", sha1hex(code)))?;
        e.register(&chunk)?;
        let order: Vec<String> = match e.registered.raw_get::<Value>("__order") {
            Ok(Value::Table(t)) => t
                .sequence_values::<LuaString>()
                .filter_map(|s| s.ok().map(|s| s.to_string_lossy()))
                .collect(),
            _ => Vec::new(),
        };
        if order.is_empty() {
            return Err("ERR No functions registered".into());
        }
        let mut functions = Vec::new();
        for f in order {
            let t: Table = e
                .registered
                .raw_get(f.as_str())
                .map_err(|x| x.to_string())?;
            let flags: String = t.raw_get("flags").unwrap_or_default();
            functions.push(FunctionInfo {
                name: f,
                flags: flags
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                description: t.raw_get("description").ok(),
            });
        }
        Ok(LibraryInfo { name, functions })
    })
}

impl Engine {
    /// FCALL: runs library code to register its functions, then function `name`.
    fn run_function(
        &mut self,
        ctx: &mut Ctx,
        name: &str,
        code: &[u8],
        (keys, argv): (&[Vec<u8>], &[Vec<u8>]),
        read_only: bool,
        seed: u64,
    ) -> Result<Reply, Failure> {
        let internal = |e: mlua::Error| Failure::Internal(lua_error_text(&e));
        let env = self.run_env.clone();
        let chunk = self
            .library_chunk(code, &env, format!("run:{}", sha1hex(code)))
            .map_err(Failure::Plain)?;
        self.register(&chunk).map_err(Failure::Plain)?;
        let f: Function = match self.registered.raw_get::<Value>(name) {
            Ok(Value::Table(t)) => t.raw_get("callback").map_err(internal)?,
            _ => return Ok(Reply::error("ERR Function not found")),
        };
        let lua = &self.lua;
        let (k, a) = (
            lua_list(lua, keys).map_err(internal)?,
            lua_list(lua, argv).map_err(internal)?,
        );
        let outcome = self.with_dispatch(ctx, read_only, seed, |e| {
            e.call_with
                .call((f.clone(), e.handler.clone(), k.clone(), a.clone()))
        });
        self.finish(outcome)
    }
}
