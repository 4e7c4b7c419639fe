"""Server-level behaviour through the real binary: SV_INFO, persistence being
off, many concurrent calls on one client, the server dying mid-call, and
the client reconnecting to a server restarted on its port."""

from __future__ import annotations

import asyncio
import random
from typing import Any, Callable

import pytest

from ndb.sessionclient import ResponseError, SessionClient, Status

pytestmark = pytest.mark.asyncio


async def test_server_info(fresh_server: Any) -> None:
    async with SessionClient(fresh_server.uri) as c:
        s = await c.create_session()
        await c.set({"a": 1, "b": 2}, s.tkn)
        for _ in range(3):
            with pytest.raises(ResponseError):
                await c.count(0)  # SessionNotExist, counted by the server
        info = await c.server_info()
    assert set(info) == {
        "serverVersion",
        "persistEnabled",
        "shards",
        "sessions",
        "keys",
        "connections",
        "uptimeSeconds",
        "memoryUsed",
        "maxMemory",
        "sessionNotExist",
    }
    assert isinstance(info["serverVersion"], str) and info["serverVersion"]
    assert info["persistEnabled"] is False
    assert info["shards"] == 2
    assert (info["sessions"], info["keys"]) == (1, 2)
    assert info["connections"] >= 1
    assert isinstance(info["uptimeSeconds"], int) and info["uptimeSeconds"] >= 0
    assert isinstance(info["memoryUsed"], int) and info["memoryUsed"] > 0
    assert info["maxMemory"] == 0
    assert info["sessionNotExist"] == 3


async def test_memory_limit(make_server: Any) -> None:
    srv = make_server("--max-memory", "200000")
    async with SessionClient(srv.uri) as c:
        assert (await c.server_info())["maxMemory"] == 200000
        s = await c.create_session()
        with pytest.raises(ResponseError) as e:
            for i in range(1000):
                await c.set({f"k{i}": "x" * 1000}, s.tkn)
        assert e.value.st == Status.MemoryLimit and e.value.st_name == "MemoryLimit"
        stored = await c.count(s.tkn)
        assert 0 < stored < 1000
        assert f"k{stored}" not in await c.keys(s.tkn)  # the refused write changed nothing
        with pytest.raises(ResponseError) as e:  # top up with small keys to the brim
            for i in range(10000):
                await c.set({f"s{i}": 1}, s.tkn)
        assert e.value.st == Status.MemoryLimit
        stored = await c.count(s.tkn)
        with pytest.raises(ResponseError) as e:
            await c.create_session(name="n" * 256)
        assert e.value.st == Status.MemoryLimit
        for call in (
            lambda: c.add({"new": "x" * 1000}, s.tkn),
            lambda: c.clear_set({f"c{i}": "y" * 1000 for i in range(400)}, s.tkn),
        ):
            with pytest.raises(ResponseError) as e:
                await call()
            assert e.value.st == Status.MemoryLimit
        assert await c.count(s.tkn) == stored
        # Reads and deletes keep working, and deleting makes room again.
        assert len(await c.get(await c.keys(s.tkn), s.tkn)) == stored
        assert await c.clear(s.tkn) == stored
        await c.set({"fits": "again"}, s.tkn)
        assert c.is_open


async def test_save_and_load_disabled(client: SessionClient) -> None:
    s = await client.create_session()
    for call in (lambda: client.save("snap"), lambda: client.save("snap", [s.tkn])):
        with pytest.raises(ResponseError) as e:
            await call()
        assert e.value.st == Status.CommandDisabled == 14
        assert e.value.st_name == "CommandDisabled"
        assert e.value.response["SH_SAVE_RSP"]["st"] == 14
    with pytest.raises(ResponseError) as e:
        await client.load("snap")
    assert e.value.st == Status.CommandDisabled
    assert e.value.response["SH_LOAD_RSP"]["st"] == 14
    assert client.is_open


async def test_1000_concurrent_gets_on_one_client(client: SessionClient) -> None:
    # Sessions on both shards, so replies come from different threads and
    # must still be put back in request order.
    sessions = [await client.create_session() for _ in range(8)]
    for i, s in enumerate(sessions):
        await client.set({f"k{j}": [i, j] for j in range(20)}, s.tkn)
    plan = [(random.randrange(8), random.randrange(21)) for _ in range(1000)]
    results = await asyncio.gather(*(client.get((f"k{j}",), sessions[i].tkn) for i, j in plan))
    assert len(results) == 1000
    for (i, j), got in zip(plan, results):
        assert got == ({f"k{j}": [i, j]} if j < 20 else {})


async def test_concurrent_mixed_commands_and_errors(client: SessionClient) -> None:
    s = await client.create_session()
    gone = await client.create_session()
    await client.end_session(gone.tkn)

    async def one(i: int) -> Any:
        kind = i % 4
        if kind == 0:
            await client.set({f"m{i}": i}, s.tkn)
            return (await client.get(f"m{i}", s.tkn))[f"m{i}"]
        if kind == 1:
            return await client.session_exists([s.tkn, gone.tkn])
        if kind == 2:
            try:
                await client.count(gone.tkn)
            except ResponseError as e:
                return e.st
        return await client.contains(["nope"], s.tkn)

    results = await asyncio.gather(*(one(i) for i in range(400)))
    for i, r in enumerate(results):
        assert r == [i, [s.tkn], Status.SessionNotExist, []][i % 4]
    assert await client.count(s.tkn) == 100


async def test_many_clients_at_once(server: Any, unique: Callable[..., str]) -> None:
    name = unique("crowd")
    async with SessionClient(server.uri) as owner:
        s = await owner.create_session(name=name, shared=True)

        async def visitor(i: int) -> None:
            async with SessionClient(server.uri) as c:
                tkn = (await c.open_session(name)).tkn
                await c.set({f"v{i}": i}, tkn)

        await asyncio.gather(*(visitor(i) for i in range(20)))
        assert await owner.count(s.tkn) == 20


async def test_server_killed_while_calls_wait(fresh_server: Any) -> None:
    # A short reconnect_timeout: the later call tries to reach the dead server that long.
    client = SessionClient(fresh_server.uri, reconnect_timeout=0.5)
    await client.open()
    s = await client.create_session()
    await client.set({"a": 1}, s.tkn)

    fresh_server.stop()  # paused: requests are sent but never answered
    waiting = [asyncio.ensure_future(client.get("a", s.tkn)) for _ in range(5)]
    await asyncio.sleep(0.3)
    assert not any(w.done() for w in waiting)

    fresh_server.kill()  # the kernel closes its sockets
    for w in waiting:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(w, 10)
    with pytest.raises(ConnectionError):
        await client.count(s.tkn)
    assert not client.is_open
    await client.close()


async def test_server_killed_under_load(fresh_server: Any) -> None:
    client = SessionClient(fresh_server.uri)
    await client.open()
    s = await client.create_session()
    await client.set({"a": "x" * 1000}, s.tkn)

    async def hammer() -> int:
        n = 0
        while True:
            await client.get("a", s.tkn)
            n += 1

    workers = [asyncio.ensure_future(hammer()) for _ in range(20)]
    await asyncio.sleep(0.3)
    fresh_server.kill()
    for w in workers:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(w, 10)
    await client.close()


async def heard_the_loss(client: SessionClient) -> None:
    """Wait until the client has seen its connection close. (A call made before
    that is sent on the dead socket and fails: the client cannot tell.)"""
    for _ in range(250):
        if not client.is_open:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the client never noticed the server was gone")


async def test_calls_reconnect_after_a_server_restart(restartable_server: Any) -> None:
    """The server restarts under an open client: the next call opens a new
    connection by itself and reaches the new server (whose memory is empty)."""
    async with SessionClient(restartable_server.uri) as c:
        s = await c.create_session(keys={"a": 1})
        restartable_server.restart()
        await heard_the_loss(c)
        with pytest.raises(ResponseError) as e:
            await c.get("a", s)
        assert e.value.st == Status.SessionNotExist  # a new server answered
        assert c.is_open
        t = await c.create_session(keys={"b": 2})
        assert await c.get("b", t) == {"b": 2}
        assert (await c.server_info())["sessions"] == 1


async def test_a_call_while_the_server_is_down_waits_for_it(restartable_server: Any) -> None:
    async with SessionClient(restartable_server.uri, reconnect_timeout=30) as c:
        await c.create_session()
        restartable_server.kill()
        await heard_the_loss(c)
        call = asyncio.ensure_future(c.create_session(name="after-restart", shared=True))
        await asyncio.sleep(0.5)
        assert not call.done()  # retrying with backoff, not failed
        restartable_server.start()
        s = await asyncio.wait_for(call, 20)
        assert (await c.open_session("after-restart")).tkn == s.tkn
        assert (await c.server_info())["sessions"] == 1


async def test_a_call_in_flight_at_the_loss_fails_and_is_not_sent_again(
    restartable_server: Any,
) -> None:
    """Requests the old server took but never answered raise ConnectionError;
    the client does not send them to the new server behind the caller's back."""
    async with SessionClient(restartable_server.uri) as c:
        await c.create_session()
        restartable_server.stop()  # takes the requests, answers nothing
        in_flight = [
            asyncio.ensure_future(c.create_session(name=f"once-{i}", shared=True)) for i in range(3)
        ]
        await asyncio.sleep(0.3)
        assert not any(f.done() for f in in_flight)
        restartable_server.restart()
        for f in in_flight:
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(f, 10)
        assert (await c.server_info())["sessions"] == 0
        for i in range(3):
            with pytest.raises(ResponseError) as e:
                await c.open_session(f"once-{i}")
            assert e.value.st == Status.SessionOpenFail
        await c.create_session(name="once-0", shared=True)  # sent when asked again


async def test_calls_fail_after_the_reconnect_timeout_and_work_once_it_is_back(
    restartable_server: Any,
) -> None:
    async with SessionClient(restartable_server.uri, reconnect_timeout=0.5) as c:
        await c.create_session()
        restartable_server.kill()
        await heard_the_loss(c)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectionError):
            await c.create_session()
        assert 0.4 < loop.time() - started < 5
        restartable_server.start()
        await c.create_session()
        assert (await c.server_info())["sessions"] == 1


async def test_message_over_max_payload_closes_connection(fresh_server: Any) -> None:
    """The server closes with 1009 on a frame over maxPayload (1 MiB by default):
    the call raises ConnectionError, and the next one goes out on a new
    connection (the server itself is fine)."""
    async with SessionClient(fresh_server.uri) as c:
        s = await c.create_session()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(c.set({"big": "x" * (2 * 1024 * 1024)}, s.tkn), 10)
        assert await c.count(s.tkn) == 0
    async with SessionClient(fresh_server.uri, reconnect=False) as c:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(c.set({"big": "x" * (2 * 1024 * 1024)}, s.tkn), 10)
        with pytest.raises(ConnectionError):
            await c.count(s.tkn)


async def test_save_and_load_with_persistence(persist_server: Any) -> None:
    async with SessionClient(persist_server.uri) as c:
        assert (await c.server_info())["persistEnabled"] is True
        a = await c.create_session(name="kept", shared=True)
        b = await c.create_session(60, extendOnGet=True)
        await c.set({"x": 1, "y": [2]}, a.tkn)
        await c.set({"z": 3.5}, b.tkn)

        saved = await c.save("snap")
        assert set(saved) == {"name", "duration", "sessions", "keys"}
        assert (saved["name"], saved["sessions"], saved["keys"]) == ("snap", 2, 3)
        only_b = await c.save("only-b", [b.tkn])
        assert (only_b["sessions"], only_b["keys"]) == (1, 1)

        assert await c.end_all_sessions() == 2
        loaded = await c.load("snap")
        assert loaded == {"name": "snap", "sessions": 2, "keys": 3}
        assert await c.get(("x", "y"), a.tkn) == {"x": 1, "y": [2]}
        assert await c.get("z", b.tkn) == {"z": 3.5}
        assert (await c.open_session("kept")).tkn == a.tkn
        info = await c.session_info(b.tkn)
        assert info["expires"] and info["expiry"]["extendOnGet"] is True

        with pytest.raises(ResponseError) as e:
            await c.load("never-saved")
        assert e.value.st == Status.LoadError and e.value.st_name == "LoadError"


async def test_keepalive_pings_are_answered(fresh_server: Any) -> None:
    async with SessionClient(fresh_server.uri, ping_interval=0.2, ping_timeout=1) as c:
        s = await c.create_session()
        await asyncio.sleep(1.5)  # several pings; an unanswered one would close the socket
        assert await c.count(s.tkn) == 0
        assert c.is_open


async def test_frozen_server_detected_by_keepalive(fresh_server: Any) -> None:
    """A server that keeps its socket open but answers nothing still cannot
    make a call hang: the keepalive ping times out and the call fails."""
    async with SessionClient(fresh_server.uri, ping_interval=0.2, ping_timeout=0.5) as c:
        s = await c.create_session()
        fresh_server.stop()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(c.count(s.tkn), 10)
        assert not c.is_open
