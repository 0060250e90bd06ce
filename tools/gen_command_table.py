#!/usr/bin/env python3
"""Regenerates crates/commands/commands.json from a real redis-server (Redis 7.0 is the reference).

The file holds Redis's own facts about each command: the COMMAND INFO reply (arity, flags, key
positions, key specs, ACL categories, subcommands) and the COMMAND DOCS reply, both as received in
RESP3 so maps and sets keep their kinds. cairn's code reads it; cairn exposes only the commands it
implements.

    python3 tools/gen_command_table.py            # starts redis-server on a free port itself
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def read_reply(f):
    line = f.readline()
    if not line:
        raise EOFError
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+",):
        return {"+": rest.decode()}
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode()
    if kind == b"_":
        return None
    if kind in (b"*", b"~"):
        n = int(rest)
        items = [read_reply(f) for _ in range(n)]
        return items if kind == b"*" else {"~": items}
    if kind == b"%":
        n = int(rest)
        return {"%": [[read_reply(f), read_reply(f)] for _ in range(n)]}
    if kind == b"=":
        n = int(rest)
        return f.read(n + 2)[4:-2].decode()
    if kind == b"#":
        return {"#": rest == b"t"}
    raise RuntimeError(f"unexpected reply kind {kind!r}")


def command(sock_file, sock, *args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    sock.sendall(out)
    return read_reply(sock_file)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    target = os.path.join(here, "..", "crates", "commands", "commands.json")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        f = sock.makefile("rb")
        command(f, sock, "HELLO", "3")
        version = command(f, sock, "INFO", "server")
        infos = command(f, sock, "COMMAND", "INFO")
        docs = command(f, sock, "COMMAND", "DOCS")
        docs = {k: v for k, v in docs["%"]}
        table = []
        for info in sorted(infos, key=lambda i: i[0]):
            name = info[0]
            table.append({"name": name, "info": info, "docs": docs.get(name)})
        ver = [l for l in version.split("\r\n") if l.startswith("redis_version:")][0]
        with open(target, "w") as out:
            out.write('{"source": "%s",\n "commands": [\n' % ver)
            out.write(",\n".join(json.dumps(c, separators=(",", ":")) for c in table))
            out.write("\n]}\n")
        print(f"wrote {len(table)} commands from {ver} to {os.path.normpath(target)}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
