//! Lua scripting (EVAL, EVALSHA, EVAL_RO, SCRIPT) compared with a real redis-server, reply by
//! reply in RESP2 and RESP3: on a standalone node, and on a 3-node cluster with three shards,
//! where scripts whose keys are in several shards run as cross-shard transactions. Then what
//! Redis cannot be compared on: a runaway script is stopped at the same instruction on every
//! replica, and a script loaded through one node runs through every node.

mod common;

use common::{redis_or_skip, Cairn};
use std::time::{Duration, Instant};

/// A function library: a writing function, a read-only one with a description, and three that
/// fail in the ways Redis words differently from scripts.
const LIB: &str = "#!lua name=mylib
redis.register_function('f1', function(keys, args) return redis.call('incr', keys[1]) end)
redis.register_function{function_name='f2', callback=function(keys, args) return args[1] end, flags={'no-writes'}, description='second'}
redis.register_function('e1', function(keys, args) error('boom') end)
redis.register_function('e2', function(keys, args) return redis.call('nosuchcmd') end)
redis.register_function('e3', function(keys, args) return KEYS end)";

const LIB_ONE: &str = "#!lua name=onelib
redis.register_function{function_name='only', callback=function(keys, args) return args[1] end, flags={'no-writes'}, description='the only one'}";
const LIB_TWO: &str = "#!lua name=twolib
redis.register_function('second', function(keys, args) return #args end)";

/// (script, keys, args) of EVAL calls whose replies must equal Redis's.
fn cases() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)> {
    let none = Vec::new;
    vec![
        ("return 1", none(), none()),
        ("return 3.99", none(), none()),
        ("return -3.99", none(), none()),
        ("return 'text'", none(), none()),
        ("return true", none(), none()),
        ("return false", none(), none()),
        ("return nil", none(), none()),
        ("return {1, 2, 'a', {ok='fine'}, {err='bad'}, false, true, 3.7}", none(), none()),
        ("return {1, 2, nil, 4}", none(), none()),
        ("return {1, {2, {3, {4}}}}", none(), none()),
        ("return {double=3.5}", none(), none()),
        ("return {KEYS[1], ARGV[1], #KEYS, #ARGV}", vec!["k1"], vec!["a1", "a2"]),
        ("return redis.call('set', KEYS[1], ARGV[1])", vec!["k1"], vec!["v1"]),
        ("return redis.call('get', KEYS[1])", vec!["k1"], none()),
        // (Every key a script touches is declared: on shards, an undeclared key of another
        // shard is refused, as Redis Cluster refuses a non-local one.)
        ("return redis.call('get', KEYS[1])", vec!["nosuch"], none()),
        ("return redis.call('incr', KEYS[1])", vec!["k1"], none()),
        ("return redis.pcall('incr', KEYS[1])", vec!["k1"], none()),
        ("local r = redis.pcall('incr', KEYS[1]) return type(r)", vec!["k1"], none()),
        ("return redis.call('set', KEYS[1], 1.5)", vec!["k1"], none()),
        ("return redis.call('set', KEYS[1], {})", vec!["k1"], none()),
        ("return redis.call()", none(), none()),
        ("return redis.call('get')", none(), none()),
        ("return redis.call('nosuch')", none(), none()),
        ("return redis.call('multi')", none(), none()),
        ("return redis.call('ping')", none(), none()),
        (
            "redis.call('rpush', KEYS[1], 'a', 'b') return redis.call('lrange', KEYS[1], 0, -1)",
            vec!["l1"],
            none(),
        ),
        ("return redis.call('hset', KEYS[1], 'f', 'v', 'g', 'w')", vec!["h1"], none()),
        ("return redis.call('hgetall', KEYS[1])", vec!["h1"], none()),
        ("redis.setresp(3) return redis.call('hgetall', KEYS[1])", vec!["h1"], none()),
        ("redis.setresp(3) return redis.call('get', KEYS[1])", vec!["nosuch"], none()),
        ("return redis.setresp(4)", none(), none()),
        ("return redis.call('zadd', KEYS[1], 1, 'a', 2, 'b')", vec!["z1"], none()),
        ("return redis.call('zrange', KEYS[1], 0, -1, 'withscores')", vec!["z1"], none()),
        ("redis.setresp(3) return redis.call('zscore', KEYS[1], 'a')", vec!["z1"], none()),
        ("return redis.call('zscore', KEYS[1], 'b')", vec!["z1"], none()),
        ("return x", none(), none()),
        ("x = 1", none(), none()),
        ("return os", none(), none()),
        ("return io", none(), none()),
        ("return debug", none(), none()),
        ("return type(loadstring)", none(), none()),
        ("return {loadstring(string.dump(function() return 1 end))}", none(), none()),
        ("error('boom')", none(), none()),
        ("error({err='MY boom'})", none(), none()),
        ("local function f() error('deep') end f()", none(), none()),
        ("return pcall(error, 'x')", none(), none()),
        ("return redis.error_reply('E1')", none(), none()),
        ("return redis.status_reply('S1')", none(), none()),
        ("return redis.sha1hex('abc')", none(), none()),
        ("return redis.REDIS_VERSION_NUM", none(), none()),
        ("return 1 +", none(), none()),
        ("return bit.band(7, 3)", none(), none()),
        ("return bit.tohex(255)", none(), none()),
        ("return bit.tohex(255, -4)", none(), none()),
        ("return bit.lshift(1, 31)", none(), none()),
        ("return {bit.bxor(5, 3), bit.bnot(0), bit.arshift(-16, 2), bit.rol(1, 33)}", none(), none()),
        ("return cjson.encode({1, 2, {a=1}})", none(), none()),
        ("return cjson.encode({a='x'})", none(), none()),
        ("return cjson.encode({})", none(), none()),
        (
            "local t = cjson.decode('[1,2.5,\"x\",null,{\"a\":[]}]') return {t[1], t[3], type(t[4]), type(t[5].a)}",
            none(),
            none(),
        ),
        ("return cmsgpack.pack({1, 2, 3})", none(), none()),
        ("return cmsgpack.pack('abc', 1.5, -5, 300, -200, 70000, true, false)", none(), none()),
        ("return cmsgpack.pack(string.rep('x', 40), 0.1, {a = 1})", none(), none()),
        ("return {cmsgpack.unpack(cmsgpack.pack(1, 'x', {1, 2}, -1000000))}", none(), none()),
        ("return {cmsgpack.unpack_one(cmsgpack.pack(7, 8))}", none(), none()),
        ("return {cmsgpack.unpack_limit(cmsgpack.pack(7, 8, 9), 2)}", none(), none()),
        ("return cmsgpack.unpack('\\193')", none(), none()),
        ("return struct.pack('>I2', 3)", none(), none()),
        ("return struct.pack('<i4h', -2, 7)", none(), none()),
        ("return {struct.unpack('>I2', struct.pack('>I2', 513))}", none(), none()),
        ("return {struct.unpack('<bBhH', struct.pack('<bBhH', -1, 255, -300, 60000))}", none(), none()),
        ("return {struct.unpack('c3s', 'abcdef' .. string.char(0))}", none(), none()),
        ("return struct.size('>i4hb')", none(), none()),
        ("return struct.size('!4 b i')", none(), none()),
        ("return {struct.unpack('!4 b i', struct.pack('!4 b i', 1, 2))}", none(), none()),
        ("return struct.pack('d', 1.5) == struct.pack('<d', 1.5)", none(), none()),
        ("return string.format('%d-%s', 5, 'x')", none(), none()),
        ("return table.concat({'a', 'b'}, ',')", none(), none()),
        ("return select('#', 1, 2, 3)", none(), none()),
        ("return unpack({1, 2, 3})", none(), none()),
        ("local t = {} for i = 1, 5 do t[i] = i * i end return t", none(), none()),
        ("#!lua flags=no-writes\nreturn redis.call('set', KEYS[1], 'v')", vec!["k"], none()),
        ("#!lua flags=no-writes\nreturn redis.call('get', KEYS[1])", vec!["k"], none()),
        ("#!lua flags=bogus\nreturn 1", none(), none()),
        ("#!python\nreturn 1", none(), none()),
        ("#!lua name=x\nreturn 1", none(), none()),
        // Keys in different shards on the cluster (a: 15495, b: 3300, c: 7365): one script, one
        // atomic step over all three.
        (
            "redis.call('set', KEYS[1], ARGV[1]) redis.call('set', KEYS[2], ARGV[1]) \
             redis.call('incr', KEYS[3]) return redis.call('mget', KEYS[1], KEYS[2], KEYS[3])",
            vec!["a", "b", "c"],
            vec!["7"],
        ),
        (
            "local v = redis.call('get', KEYS[1]) redis.call('del', KEYS[1]) \
             return redis.call('rpush', KEYS[2], v)",
            vec!["a", "c2"],
            none(),
        ),
        ("return redis.call('exists', KEYS[1], KEYS[2], KEYS[3])", vec!["a", "b", "c"], none()),
    ]
}

fn eval_args<'a>(script: &'a str, keys: &'a [&'a str], args: &'a [&'a str]) -> Vec<Vec<u8>> {
    let mut out = vec![
        b"EVAL".to_vec(),
        script.as_bytes().to_vec(),
        keys.len().to_string().into_bytes(),
    ];
    out.extend(keys.iter().map(|k| k.as_bytes().to_vec()));
    out.extend(args.iter().map(|a| a.as_bytes().to_vec()));
    out
}

/// Sends every case to both and compares the replies as bytes.
fn compare(a: &mut common::Raw, b: &mut common::Raw, proto: &str, what: &str) {
    for (script, keys, args) in cases() {
        let argv = eval_args(script, &keys, &args);
        let refs: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
        let ra = a.cmd(&refs);
        let rb = b.cmd(&refs);
        assert_eq!(
            String::from_utf8_lossy(&ra),
            String::from_utf8_lossy(&rb),
            "{what}, {proto}: reply to {script:?} {keys:?} {args:?} differs (left cairn, right redis)"
        );
    }
    // Other argument errors, EVALSHA, EVAL_RO and SCRIPT.
    for line in [
        vec!["EVAL", "return 1", "-1"],
        vec!["EVAL", "return 1", "5", "a"],
        vec!["EVAL", "return 1", "x"],
        vec!["EVALSHA", "ffffffffffffffffffffffffffffffffffffffff", "0"],
        vec!["EVALSHA", "abc", "0"],
        vec!["SCRIPT", "LOAD", "return 'loaded'"],
        vec!["EVALSHA", "b534286061d4b9e4026607613b95c06c06015ae8", "0"],
        vec![
            "EVALSHA_RO",
            "B534286061D4B9E4026607613B95C06C06015AE8",
            "0",
        ],
        vec![
            "SCRIPT",
            "EXISTS",
            "b534286061d4b9e4026607613b95c06c06015ae8",
            "ffffffffffffffffffffffffffffffffffffffff",
        ],
        vec!["SCRIPT", "LOAD", "return +"],
        vec!["SCRIPT", "KILL"],
        vec!["SCRIPT", "FLUSH", "BAD"],
        vec![
            "EVAL_RO",
            "return redis.call('set', KEYS[1], 'v')",
            "1",
            "k1",
        ],
        vec!["EVAL_RO", "return redis.call('get', KEYS[1])", "1", "k1"],
        vec!["MULTI"],
        vec!["EVAL", "return redis.call('incr', KEYS[1])", "1", "m1"],
        vec!["EVALSHA", "b534286061d4b9e4026607613b95c06c06015ae8", "0"],
        vec!["EVALSHA", "ffffffffffffffffffffffffffffffffffffffff", "0"],
        vec!["EXEC"],
        vec!["SCRIPT", "FLUSH"],
        vec!["EVALSHA", "b534286061d4b9e4026607613b95c06c06015ae8", "0"],
        // Functions.
        vec!["FUNCTION", "FLUSH"],
        vec!["FUNCTION", "LOAD", LIB],
        vec!["FUNCTION", "LOAD", LIB],
        vec!["FUNCTION", "LOAD", "REPLACE", LIB],
        vec![
            "FUNCTION",
            "LOAD",
            "redis.register_function('x', function() return 1 end)",
        ],
        vec![
            "FUNCTION",
            "LOAD",
            "#!lua name=other\nredis.register_function('f1', function() return 1 end)",
        ],
        vec!["FUNCTION", "LOAD", "#!lua name=empty\nlocal x = 1"],
        vec!["FUNCTION", "LOAD", "#!lua name=bad\nreturn +"],
        vec![
            "FUNCTION",
            "LOAD",
            "#!lua name=b@d\nredis.register_function('f', function() return 1 end)",
        ],
        vec![
            "FUNCTION",
            "LOAD",
            "#!python name=p\nredis.register_function('f', function() return 1 end)",
        ],
        vec!["FCALL", "f1", "1", "fk"],
        vec!["FCALL", "f1", "1", "fk"],
        vec!["FCALL", "f2", "0", "hello"],
        vec!["FCALL_RO", "f1", "1", "fk"],
        vec!["FCALL_RO", "f2", "0", "hi"],
        vec!["FCALL", "nosuch", "0"],
        vec!["FCALL", "f1", "5", "a"],
        vec!["FCALL", "e1", "0"],
        vec!["FCALL", "e2", "0"],
        vec!["FCALL", "e3", "0"],
        vec!["FUNCTION", "STATS"],
        // (Redis lists a library's functions in its hash table's order: lists are compared
        // with one function per library.)
        vec!["FUNCTION", "DELETE", "mylib"],
        vec!["FUNCTION", "LOAD", LIB_ONE],
        vec!["FUNCTION", "LOAD", LIB_TWO],
        vec!["FUNCTION", "LIST"],
        vec!["FUNCTION", "LIST", "WITHCODE"],
        vec!["FUNCTION", "LIST", "LIBRARYNAME", "one*"],
        vec!["FUNCTION", "LIST", "LIBRARYNAME", "zz*"],
        vec!["FUNCTION", "LIST", "BOGUS"],
        vec!["FUNCTION", "STATS"],
        vec!["FUNCTION", "KILL"],
        vec!["FUNCTION", "DELETE", "nosuch"],
        vec!["FUNCTION", "DELETE", "onelib"],
        vec!["FCALL", "only", "0", "x"],
        vec!["FCALL", "second", "0", "x"],
        vec!["FUNCTION", "FLUSH", "BAD"],
        vec!["FUNCTION", "FLUSH"],
        vec!["FUNCTION", "STATS"],
    ] {
        let refs: Vec<&[u8]> = line.iter().map(|s| s.as_bytes()).collect();
        let ra = a.cmd(&refs);
        let rb = b.cmd(&refs);
        if line.starts_with(&["FUNCTION", "LIST"]) {
            // Libraries come in Redis's hash table order: compared as a set.
            assert_eq!(
                common::parse(&ra).sorted(false),
                common::parse(&rb).sorted(false),
                "{what}, {proto}: reply to {line:?} differs (left cairn, right redis)"
            );
            continue;
        }
        assert_eq!(
            String::from_utf8_lossy(&ra),
            String::from_utf8_lossy(&rb),
            "{what}, {proto}: reply to {line:?} differs (left cairn, right redis)"
        );
    }
}

#[test]
fn scripts_answer_as_redis_does_standalone_and_across_shards() {
    let Some(redis) = redis_or_skip("scripting differential") else {
        return;
    };
    let single = Cairn::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster = common::start_cluster_with(3, &dirs, 3);
    common::wait_writable(&cluster);
    let node = cluster[1].as_ref().unwrap();
    for (what, cairn) in [("standalone", &single), ("3 shards", node)] {
        for proto in ["HELLO 2", "HELLO 3"] {
            let (mut a, mut b) = (cairn.raw(), redis.raw());
            for c in [&mut a, &mut b] {
                c.cmd_str("FLUSHALL");
                c.cmd_str("SCRIPT FLUSH");
                c.cmd_str(proto);
            }
            compare(&mut a, &mut b, proto, what);
        }
    }
    // The scripts over three shards ran as cross-shard transactions.
    let info = String::from_utf8_lossy(&node.raw().cmd_str("INFO stats")).to_string();
    let stat = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    // Three scripts over several shards per protocol, two of which write.
    assert!(
        stat("cross_shard_runs:") >= 6 && stat("cross_shard_committed:") >= 4,
        "scripts over shards did not run across shards: {info}"
    );
}

/// A script that never ends is stopped at its instruction limit, on every replica at the same
/// point: the writes it made before stay, the same everywhere, and the shard serves on.
#[test]
fn a_runaway_script_is_stopped_alike_on_every_replica() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster = common::start_cluster(3, &dirs);
    common::wait_writable(&cluster);
    let mut c = cluster[0].as_ref().unwrap().raw();
    let started = Instant::now();
    let reply = c.cmd(&[
        b"EVAL",
        b"local n = 0 while true do n = n + 1 if n % 1000000 == 0 then redis.call('incr', KEYS[1]) end end",
        b"1",
        b"spins",
    ]);
    let text = String::from_utf8_lossy(&reply).to_string();
    assert!(text.starts_with("-BUSY"), "{text}");
    println!(
        "runaway script stopped after {:?}: {text}",
        started.elapsed()
    );
    assert_eq!(c.cmd_str("PING"), b"+PONG\r\n");
    let spins = c.cmd_str("GET spins");
    assert!(
        spins.starts_with(b"$"),
        "the writes before the stop stay: {spins:?}"
    );
    // Every replica applied the same entry to the same point.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let digests: Vec<Vec<u8>> = cluster
            .iter()
            .map(|n| n.as_ref().unwrap().raw().cmd_str("DEBUG DIGEST"))
            .collect();
        if digests.iter().all(|d| d == &digests[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas differ: {digests:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SCRIPT LOAD through one node; EVALSHA through each of the others finds it.
#[test]
fn a_script_loaded_through_one_node_runs_through_every_node() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster = common::start_cluster_with(3, &dirs, 3);
    common::wait_writable(&cluster);
    let sha = cluster[0]
        .as_ref()
        .unwrap()
        .raw()
        .cmd_str("SCRIPT LOAD return(redis.call('incr',KEYS[1]))");
    let sha = String::from_utf8_lossy(&sha)
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(sha.len(), 40, "{sha}");
    for (i, node) in cluster.iter().enumerate() {
        let reply =
            node.as_ref()
                .unwrap()
                .raw()
                .cmd(&[b"EVALSHA", sha.as_bytes(), b"1", b"counter"]);
        assert_eq!(
            reply,
            format!(":{}\r\n", i + 1).into_bytes(),
            "node {}",
            i + 1
        );
    }
}

/// FUNCTION LOAD through one node of a cluster: the library is the meta group's, so FCALL runs
/// through every node, and FUNCTION LIST is the same everywhere.
#[test]
fn a_library_loaded_through_one_node_is_called_through_every_node() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster = common::start_cluster_with(3, &dirs, 3);
    common::wait_writable(&cluster);
    let loaded = cluster[2]
        .as_ref()
        .unwrap()
        .raw()
        .cmd(&[b"FUNCTION", b"LOAD", LIB.as_bytes()]);
    assert_eq!(loaded, b"$5\r\nmylib\r\n".to_vec());
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, node) in cluster.iter().enumerate() {
        let mut c = node.as_ref().unwrap().raw();
        loop {
            let reply = c.cmd(&[b"FCALL", b"f1", b"1", b"fn-counter"]);
            if reply.starts_with(b":") {
                assert_eq!(
                    reply,
                    format!(":{}\r\n", i + 1).into_bytes(),
                    "node {}",
                    i + 1
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: {:?}",
                i + 1,
                String::from_utf8_lossy(&reply)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let lists: Vec<Vec<u8>> = cluster
        .iter()
        .map(|n| n.as_ref().unwrap().raw().cmd_str("FUNCTION LIST WITHCODE"))
        .collect();
    assert!(lists.iter().all(|l| l == &lists[0]), "{lists:?}");
}

/// FUNCTION DUMP's payload (cairn's own format) restores what was dumped, under each policy.
#[test]
fn function_dump_restores_under_every_policy() {
    let node = Cairn::start();
    let mut c = node.raw();
    let load = c.cmd(&[b"FUNCTION", b"LOAD", LIB_ONE.as_bytes()]);
    assert_eq!(load, b"$6\r\nonelib\r\n".to_vec());
    let dump = c.cmd_str("FUNCTION DUMP");
    let payload = match common::parse(&dump) {
        common::Frame::Bulk(_, Some(p)) => p,
        other => panic!("{other:?}"),
    };
    // APPEND over the same library: refused, nothing changed.
    let again = c.cmd(&[b"FUNCTION", b"RESTORE", &payload]);
    assert_eq!(again, b"-ERR Library 'onelib' already exists\r\n".to_vec());
    assert_eq!(c.cmd_str("FUNCTION FLUSH"), b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"FUNCTION", b"RESTORE", &payload]),
        b"+OK\r\n".to_vec()
    );
    assert_eq!(c.cmd_str("FCALL only 0 hi"), b"$2\r\nhi\r\n".to_vec());
    assert_eq!(
        c.cmd(&[b"FUNCTION", b"RESTORE", &payload, b"REPLACE"]),
        b"+OK\r\n".to_vec()
    );
    assert_eq!(
        c.cmd(&[b"FUNCTION", b"LOAD", LIB_TWO.as_bytes()]),
        b"$6\r\ntwolib\r\n".to_vec()
    );
    // FLUSH policy: only what the payload holds is left.
    assert_eq!(
        c.cmd(&[b"FUNCTION", b"RESTORE", &payload, b"FLUSH"]),
        b"+OK\r\n".to_vec()
    );
    assert_eq!(
        c.cmd_str("FCALL second 0"),
        b"-ERR Function not found\r\n".to_vec()
    );
    let mut damaged = payload.clone();
    damaged[10] ^= 1;
    assert_eq!(
        c.cmd(&[b"FUNCTION", b"RESTORE", &damaged]),
        b"-ERR payload version or checksum are wrong\r\n".to_vec()
    );
    assert_eq!(
        c.cmd(&[b"FUNCTION", b"RESTORE", &payload, b"BOGUS"]),
        b"-ERR Wrong restore policy given, value should be either FLUSH, APPEND or REPLACE.\r\n"
            .to_vec()
    );
}
