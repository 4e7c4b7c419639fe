#!/usr/bin/env python3
"""Bytes of resident memory per session, with and without an owner.

Starts the release server (one shard, loopback, a free port) once per
variant, creates N sessions the way `loadtest --workload populate` fills
them (keys `user` and `cart`, a 3600 s expiry), here in one `SH_NEW` with
`keys`, and prints the RSS growth divided by N. The `owner` variant gives
every 5 consecutive sessions one owner, as logout-all does.

Usage: scripts/memory-per-session.py [--sessions N] [--bin PATH]
Needs the `websockets` package (the Python client's tests install it).
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time

BATCH = 2000


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def populate(port, sessions, with_owner):
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        for start in range(0, sessions, BATCH):
            for i in range(start, min(start + BATCH, sessions)):
                params = {
                    "keys": {"user": f"u{i:012d}", "cart": [1, 2, 3]},
                    "expiry": {"duration": 3600, "deleteSession": True},
                }
                if with_owner:
                    params["owner"] = f"user-{i // 5:09d}"
                await ws.send(json.dumps({"SH_NEW": params}))
            for _ in range(start, min(start + BATCH, sessions)):
                reply = json.loads(await ws.recv())
                if reply["SH_NEW_RSP"]["st"] != 1:
                    raise RuntimeError(f"SH_NEW failed: {reply}")


def measure(binary, sessions, with_owner):
    server = subprocess.Popen(
        [binary, "--port", "0", "--shards", "1"],
        # The caller's RUST_LOG could hide the line we wait for.
        env={k: v for k, v in os.environ.items() if k != "RUST_LOG"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Start-up lines (the config summary) come before this one.
        found = None
        while found is None:
            line = server.stdout.readline()
            if not line:
                raise RuntimeError("the server exited before listening")
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        port = int(found.group(1))
        time.sleep(0.2)
        before = rss_kib(server.pid)
        started = time.monotonic()
        asyncio.run(populate(port, sessions, with_owner))
        took = time.monotonic() - started
        time.sleep(0.5)
        after = rss_kib(server.pid)
        return before, after, took
    finally:
        server.terminate()
        server.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=1_000_000)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--bin", default=os.path.join(root, "target/release/nemesisdb"))
    args = parser.parse_args()
    print(f"| variant | RSS before MiB | RSS after MiB | bytes per session | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, with_owner in [("no owner", False), ("owner (5 sessions each)", True)]:
        before, after, took = measure(args.bin, args.sessions, with_owner)
        per = (after - before) * 1024 / args.sessions
        print(f"| {name} | {before / 1024:.1f} | {after / 1024:.1f} | {per:.0f} | {took:.1f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
