"""Versions, compare-and-set and increments against the real server
(docs/PROTOCOL.md, "Versions, compare-and-set, increments"): where a version
starts and when it moves, withVersion on every command that takes it,
ifVersion right and wrong, optimistic-concurrency loops and increments from
several connections at once, incr's edge cases, and the statuses of bad input."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Callable, Dict, List

import pytest
import pytest_asyncio

from ndb.sessionclient import (
    ResponseError,
    Session,
    SessionClient,
    Status,
    Versioned,
    VersionedKeys,
    VersionMismatch,
)

pytestmark = pytest.mark.asyncio

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)


async def raw(client: SessionClient, command: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Send a request the API never builds (its checks are ahead of the wire),
    to see what the server itself answers."""
    return await client._conn.request(command, params)


async def version(client: SessionClient, tkn: Any) -> int:
    return (await client.session_info(tkn, withVersion=True))["version"]


@contextlib.asynccontextmanager
async def connections(uri: str, n: int) -> AsyncIterator[List[SessionClient]]:
    """n clients, each on a connection of its own."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(SessionClient(uri)) for _ in range(n)]


@pytest_asyncio.fixture
async def session(client: SessionClient) -> Session:
    return await client.create_session()


# ------------------------------------------------------------- where versions go


async def test_a_new_session_is_at_version_1(
    client: SessionClient, server: Any, unique: Callable[..., str]
) -> None:
    plain = await client.create_session(withVersion=True)
    filled = await client.create_session(keys={"a": 1, "b": [2]}, withVersion=True)
    name = unique("versioned")
    shared = await client.create_session(name=name, shared=True, withVersion=True)
    assert (plain.version, filled.version, shared.version) == (1, 1, 1)
    for s in (plain, filled, shared):
        assert await version(client, s) == 1
    assert (await client.create_session()).version is None  # not asked: not known
    async with SessionClient(server.uri) as other:
        opened = await other.open_session(name, withVersion=True)
        assert (opened.tkn, opened.version) == (shared.tkn, 1)
        await other.set({"k": 1}, opened)
        assert (await other.open_session(name, withVersion=True)).version == 2
    assert (await client.open_session(name)).version is None


async def test_each_changing_write_moves_the_version_by_one(
    client: SessionClient, session: Session
) -> None:
    t = session.tkn
    assert await client.set({"a": 1}, t, withVersion=True) == 2
    assert await client.set({"a": 1}, t, withVersion=True) == 3  # same value: still a write
    assert await client.set({"p": 1, "q": 2}, t, withVersion=True) == 4  # one request, one step
    assert await client.set({}, t, withVersion=True) == 4  # no key: no change
    assert await client.add({"a": 2}, t, withVersion=True) == 4  # every key existed
    assert await client.add({"a": 2, "b": 1}, t, withVersion=True) == 5
    assert await client.rmv(["absent"], t, withVersion=True) == 5
    assert await client.rmv(["b", "absent"], t, withVersion=True) == 6
    assert await client.incr("n", t, 0, withVersion=True) == Versioned(0, 6)
    assert await client.incr("n", t, withVersion=True) == Versioned(1, 7)
    assert await client.clear_set({"x": 1}, t, withVersion=True) == Versioned(4, 8)
    assert await client.clear(t, withVersion=True) == Versioned(1, 9)
    assert await client.clear(t, withVersion=True) == Versioned(0, 9)  # nothing to remove
    assert await client.clear_set({}, t, withVersion=True) == Versioned(0, 9)
    assert await client.clear_set({"y": 1}, t, withVersion=True) == Versioned(0, 10)
    # Calls without the new arguments return what they always did, and still count.
    assert await client.set({"z": 1}, t) is None
    assert await client.incr("n", t) == 1
    assert await version(client, t) == 12


async def test_reads_touch_and_refused_writes_leave_the_version(
    client: SessionClient, session: Session
) -> None:
    t = session.tkn
    await client.set({"a": 1, "s": "text"}, t)
    got = await client.get(["a", "absent"], t, withVersion=True)
    assert isinstance(got, VersionedKeys) and got == ({"a": 1}, 2)
    assert await client.count(t, withVersion=True) == Versioned(2, 2)
    assert await client.contains(["s", "x", "a"], t, withVersion=True) == Versioned(["s", "a"], 2)
    names = await client.keys(t, withVersion=True)
    assert isinstance(names, Versioned) and (sorted(names.value), names.version) == (["a", "s"], 2)
    assert await client.touch(t, withVersion=True) == Versioned(-1, 2)
    assert await client.touch(t, slide=False, withVersion=True) == Versioned(-1, 2)
    info = await client.session_info(t, withVersion=True)
    assert info == {"tkn": t, "shared": False, "keyCnt": 2, "expires": False, "version": 2}
    with pytest.raises(ResponseError) as e:
        await client.incr("s", t)  # refused: not an integer
    assert e.value.st == Status.ValueNotInteger
    assert await version(client, t) == 2


async def test_response_bodies_hold_exactly_the_listed_fields(
    client: SessionClient, session: Session
) -> None:
    """Existing clients compare some bodies whole: version only when asked for."""
    t = session.tkn
    assert await raw(client, "SH_SET", {"tkn": t, "keys": {"a": 1}}) == {"st": 1, "tkn": t}
    assert await raw(client, "SH_SET", {"tkn": t, "keys": {"a": 2}, "ifVersion": 2}) == {
        "st": 1,
        "tkn": t,
        "version": 3,
    }
    assert await raw(client, "SH_GET", {"tkn": t, "keys": ["a"], "withVersion": True}) == {
        "st": 1,
        "tkn": t,
        "keys": {"a": 2},
        "version": 3,
    }
    assert await raw(client, "SH_INCR", {"tkn": t, "key": "n"}) == {
        "st": 1,
        "tkn": t,
        "key": "n",
        "value": 1,
    }
    assert await raw(client, "SH_INCR", {"tkn": t, "key": "n", "withVersion": True}) == {
        "st": 1,
        "tkn": t,
        "key": "n",
        "value": 2,
        "version": 5,
    }
    assert await raw(client, "SH_COUNT", {"tkn": t, "withVersion": False}) == {
        "st": 1,
        "tkn": t,
        "cnt": 2,
    }


async def test_the_version_survives_save_and_load(persist_server: Any) -> None:
    async with SessionClient(persist_server.uri) as c:
        s = await c.create_session(keys={"a": 1})
        for i in range(3):
            await c.set({"a": i}, s)
        assert await version(c, s) == 4
        await c.save("versions")
        await c.end_session(s)
        await c.load("versions")
        assert await c.get("a", s, withVersion=True) == ({"a": 2}, 4)
        assert await c.incr("n", s, withVersion=True) == Versioned(1, 5)


async def test_keys_cleared_by_idle_expiry_move_the_version(client: SessionClient) -> None:
    """deleteSession=False: the keys go at the deadline and the session stays, one
    version further on; asking for the count and the version in one command sees
    both together."""
    s = await client.create_session(2, deleteSession=False)
    await client.set({"a": 1, "b": 2}, s)
    assert await version(client, s) == 2
    for _ in range(100):
        cnt, v = await client.count(s, withVersion=True)
        if cnt == 0:
            break
        await asyncio.sleep(0.05)
    assert (cnt, v) == (0, 3)


# ---------------------------------------------------------------- compare-and-set


WRITES = {
    # name: (call with ifVersion, what it returns on success at version 2, keys after)
    "set": (
        lambda c, t, v: c.set({"a": 9}, t, ifVersion=v),
        2,
        {"a": 9, "n": 5},
    ),
    "add": (
        lambda c, t, v: c.add({"a": 9, "b": 1}, t, ifVersion=v),
        2,
        {"a": 1, "b": 1, "n": 5},
    ),
    "rmv": (lambda c, t, v: c.rmv(["a"], t, ifVersion=v), 2, {"n": 5}),
    "clear": (lambda c, t, v: c.clear(t, ifVersion=v), Versioned(2, 2), {}),
    "clear_set": (
        lambda c, t, v: c.clear_set({"b": 2}, t, ifVersion=v),
        Versioned(2, 2),
        {"b": 2},
    ),
    "incr": (
        lambda c, t, v: c.incr("n", t, -7, ifVersion=v),
        Versioned(-2, 2),
        {"a": 1, "n": -2},
    ),
}


@pytest.mark.parametrize("write", list(WRITES))
async def test_if_version_right_and_wrong(client: SessionClient, write: str) -> None:
    call, success, after = WRITES[write]
    s = await client.create_session(keys={"a": 1, "n": 5})  # version 1
    for wrong in (0, 2, 2**64 - 1):
        with pytest.raises(VersionMismatch) as e:
            await call(client, s.tkn, wrong)
        assert e.value.version == 1
        assert e.value.st == Status.VersionMismatch and e.value.command == "SH_" + write.upper()
        assert e.value.body == {"st": 104, "tkn": s.tkn, "version": 1}  # exactly these
        assert await client.get(["a", "b", "n"], s, withVersion=True) == ({"a": 1, "n": 5}, 1)
    assert await call(client, s.tkn, 1) == success
    assert await client.get(["a", "b", "n"], s, withVersion=True) == (after, 2)
    with pytest.raises(VersionMismatch) as e:  # the version it just had is stale now
        await call(client, s.tkn, 1)
    assert e.value.version == 2


async def test_a_refused_compare_and_set_does_not_slide_the_deadline(client: SessionClient) -> None:
    s = await client.create_session(60, extendOnSetAdd=True)
    await asyncio.sleep(1.2)
    before = await client.touch(s, slide=False)
    assert before <= 59_000
    with pytest.raises(VersionMismatch):
        await client.set({"a": 1}, s, ifVersion=5)
    assert await client.touch(s, slide=False) <= before
    assert await client.set({"a": 1}, s, ifVersion=1) == 2
    assert await client.touch(s, slide=False) > before + 900  # the write that ran slid it


async def test_same_version_many_writers_exactly_one_wins(server: Any, session: Session) -> None:
    async with connections(server.uri, 6) as clients:
        v = (await clients[0].get([], session, withVersion=True)).version
        results = await asyncio.gather(
            *(c.set({"winner": i}, session, ifVersion=v) for i, c in enumerate(clients)),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
        assert len(winners) == 1 and results[winners[0]] == v + 1
        for r in results:
            if isinstance(r, BaseException):
                assert isinstance(r, VersionMismatch) and r.version == v + 1, r
        got = await clients[0].get("winner", session, withVersion=True)
        assert got == ({"winner": winners[0]}, v + 1)


async def test_optimistic_loop_from_concurrent_clients_loses_no_update(
    server: Any, client: SessionClient
) -> None:
    """Each client adds 1 to a shared counter with read, compute, write-if-unchanged,
    retrying on VersionMismatch. All first reads happen before any write, so the
    first round is sure to collide; the total must still be exact."""
    n_clients, per_client = 5, 20
    s = await client.create_session(keys={"counter": 0})
    first_reads = 0
    everyone_read = asyncio.Event()
    retries = 0

    async def worker(c: SessionClient) -> None:
        nonlocal first_reads, retries
        for i in range(per_client):
            while True:
                got = await c.get(["counter"], s.tkn, withVersion=True)
                if i == 0 and not everyone_read.is_set():
                    first_reads += 1
                    if first_reads == n_clients:
                        everyone_read.set()
                    await everyone_read.wait()
                try:
                    await c.set({"counter": got.keys["counter"] + 1}, s.tkn, ifVersion=got.version)
                    break
                except VersionMismatch as e:
                    assert e.version is not None and e.version > got.version
                    retries += 1

    async with connections(server.uri, n_clients) as clients:
        await asyncio.gather(*(worker(c) for c in clients))
    total = n_clients * per_client
    assert await client.get("counter", s, withVersion=True) == ({"counter": total}, 1 + total)
    assert retries >= n_clients - 1


# ---------------------------------------------------------------------- increments


async def test_incr_absent_key_negative_and_zero(client: SessionClient, session: Session) -> None:
    t = session.tkn
    assert await client.incr("n", t) == 1  # absent counts as 0, and is created
    assert await client.get("n", t) == {"n": 1}
    assert await client.incr("n", t, 41) == 42
    assert await client.incr("n", t, by=-50) == -8
    assert await client.incr("m", t, -3) == -3
    v = await version(client, t)
    assert await client.incr("n", t, 0, withVersion=True) == Versioned(-8, v)
    assert await client.incr("absent", t, 0, withVersion=True) == Versioned(0, v)
    assert await client.contains(["absent"], t) == []  # by 0 creates nothing
    got = await client.get(["n", "m"], t)
    assert got == {"n": -8, "m": -3} and all(type(x) is int for x in got.values())


async def test_incr_an_integer_written_by_set(client: SessionClient, session: Session) -> None:
    await client.set({"a": 41, "big": 2**62, "low": I64_MIN + 1}, session)
    assert await client.incr("a", session) == 42
    assert await client.incr("big", session) == 2**62 + 1  # beyond a double's integers
    assert await client.incr("low", session, -1) == I64_MIN
    assert await client.get(["a", "big", "low"], session) == {
        "a": 42,
        "big": 2**62 + 1,
        "low": I64_MIN,
    }


@pytest.mark.parametrize(
    "start, by, end",
    [
        (I64_MAX - 1, 1, I64_MAX),
        (0, I64_MIN, I64_MIN),
        (0, I64_MAX, I64_MAX),
        (I64_MAX, I64_MIN, -1),
        (-1, -I64_MAX, I64_MIN),
    ],
)
async def test_incr_up_to_the_edges(
    client: SessionClient, session: Session, start: int, by: int, end: int
) -> None:
    await client.set({"n": start}, session)
    assert await client.incr("n", session, by) == end
    assert await client.get("n", session) == {"n": end}


@pytest.mark.parametrize(
    "start, by",
    [(I64_MAX, 1), (I64_MIN, -1), (1, I64_MAX), (-2, I64_MIN), (I64_MAX, I64_MAX)],
)
async def test_incr_overflow_changes_nothing(
    client: SessionClient, session: Session, start: int, by: int
) -> None:
    v = await client.set({"n": start}, session, withVersion=True)
    with pytest.raises(ResponseError) as e:
        await client.incr("n", session, by, withVersion=True)
    assert e.value.st == Status.IntegerOverflow and e.value.st_name == "IntegerOverflow"
    assert not isinstance(e.value, VersionMismatch)
    assert "version" not in e.value.body  # only 104 among the errors carries it
    assert await client.get("n", session, withVersion=True) == ({"n": start}, v)


@pytest.mark.parametrize(
    "value",
    ["5", "", 1.0, 1.5, 1e20, True, False, None, [1], {"a": 1}, 2**63, I64_MIN - 1, 2**64 - 1],
)
async def test_incr_on_a_value_that_is_not_a_64_bit_integer(
    client: SessionClient, session: Session, value: Any
) -> None:
    v = await client.set({"n": value}, session, withVersion=True)
    for by in (1, 0, -1):
        with pytest.raises(ResponseError) as e:
            await client.incr("n", session, by)
        assert e.value.st == Status.ValueNotInteger and e.value.st_name == "ValueNotInteger"
    got = await client.get("n", session, withVersion=True)
    assert got == ({"n": value}, v) and type(got.keys["n"]) is type(value)


async def test_concurrent_increments_are_atomic(server: Any, session: Session) -> None:
    """Each increment sees a value of its own: n clients doing m increments at
    once get every value from 1 to n*m exactly once."""
    n_clients, per_client = 5, 40
    async with connections(server.uri, n_clients) as clients:
        seen = await asyncio.gather(
            *(c.incr("hits", session) for c in clients for _ in range(per_client))
        )
        total = n_clients * per_client
        assert sorted(seen) == list(range(1, total + 1))
        assert await clients[0].get("hits", session, withVersion=True) == (
            {"hits": total},
            1 + total,
        )


async def test_incr_slides_an_extend_on_set_add_session(client: SessionClient) -> None:
    s = await client.create_session(60, extendOnSetAdd=True)
    await asyncio.sleep(1.2)
    before = await client.touch(s, slide=False)
    assert before <= 59_000
    await client.incr("n", s)
    assert await client.touch(s, slide=False) > before + 900


async def test_incr_at_the_memory_limit(make_server: Any) -> None:
    """Refused (150, nothing changed) when it would grow the store; an increment
    that keeps the number's width still runs."""
    srv = make_server("--max-memory", "200000")
    async with SessionClient(srv.uri) as c:
        s = await c.create_session(keys={"n": 10})
        with pytest.raises(ResponseError) as e:
            for i in range(1000):
                await c.set({f"k{i}": "x" * 1000}, s)
        assert e.value.st == Status.MemoryLimit
        with pytest.raises(ResponseError) as e:  # top up with small keys to the brim
            for i in range(10000):
                await c.set({f"s{i}": 1}, s)
        assert e.value.st == Status.MemoryLimit
        v = await version(c, s)
        with pytest.raises(ResponseError) as e:
            await c.incr("a_new_key_longer_than_any_of_the_fillers", s)
        assert e.value.st == Status.MemoryLimit
        assert await c.contains(["a_new_key_longer_than_any_of_the_fillers"], s) == []
        assert await version(c, s) == v
        assert await c.incr("n", s, withVersion=True) == Versioned(11, v + 1)


# ------------------------------------------------------------ statuses, check order


async def test_unknown_session_and_invalid_token(client: SessionClient) -> None:
    s = await client.create_session()
    await client.end_session(s)
    for call in (
        lambda: client.incr("n", s),
        lambda: client.get("a", s, withVersion=True),
        lambda: client.set({"a": 1}, s, ifVersion=1),  # the session is checked before 104
        lambda: client.incr("n", s, ifVersion=7),
    ):
        with pytest.raises(ResponseError) as e:
            await call()
        assert e.value.st == Status.SessionNotExist and not isinstance(e.value, VersionMismatch)
    with pytest.raises(ResponseError) as e:
        await client.incr("n", "not-a-token")
    assert e.value.st == Status.SessionTokenInvalid


async def test_version_mismatch_comes_before_the_writes_own_checks(
    client: SessionClient, session: Session
) -> None:
    await client.set({"s": "text", "big": I64_MAX}, session)
    with pytest.raises(VersionMismatch) as e:
        await client.incr("s", session, ifVersion=1)  # would be 43
    assert e.value.version == 2
    with pytest.raises(VersionMismatch):
        await client.incr("big", session, ifVersion=1)  # would be 44
    with pytest.raises(ResponseError) as e:
        await client.incr("s", session, ifVersion=2)
    assert e.value.st == Status.ValueNotInteger
    assert await version(client, session) == 2


@pytest.mark.parametrize(
    "command, params, st",
    [
        ("SH_INCR", {}, Status.ParamMissing),  # no key
        ("SH_INCR", {"key": 5}, Status.ValueTypeInvalid),
        ("SH_INCR", {"key": "n", "by": 1.0}, Status.ValueTypeInvalid),
        ("SH_INCR", {"key": "n", "by": "1"}, Status.ValueTypeInvalid),
        ("SH_INCR", {"key": "n", "by": 2**63}, Status.ValueTypeInvalid),
        ("SH_INCR", {"key": "n", "by": I64_MIN - 1}, Status.ValueTypeInvalid),
        ("SH_GET", {"keys": [], "withVersion": "yes"}, Status.ValueTypeInvalid),
        ("SH_COUNT", {"withVersion": 1}, Status.ValueTypeInvalid),
        ("SH_SET", {"keys": {}, "ifVersion": -1}, Status.ValueTypeInvalid),
        ("SH_SET", {"keys": {}, "ifVersion": "1"}, Status.ValueTypeInvalid),
        ("SH_SET", {"keys": {}, "ifVersion": 1.0}, Status.ValueTypeInvalid),
        ("SH_SET", {"keys": {}, "ifVersion": 2**64}, Status.ValueTypeInvalid),
        # ifVersion only where it guards a write.
        ("SH_GET", {"keys": [], "ifVersion": 1}, Status.ValueTypeInvalid),
        ("SH_COUNT", {"ifVersion": 1}, Status.ValueTypeInvalid),
        ("SH_TOUCH", {"ifVersion": 1}, Status.ValueTypeInvalid),
        ("SH_INFO", {"ifVersion": 1}, Status.ValueTypeInvalid),
        ("SH_END", {"ifVersion": 1}, Status.ValueTypeInvalid),
    ],
)
async def test_parameters_the_server_refuses(
    client: SessionClient, session: Session, command: str, params: Dict[str, Any], st: Status
) -> None:
    """The client checks these before sending; the server must refuse them too.
    Parameters are checked before the session: an ended session gets the same."""
    ended = await client.create_session()
    await client.end_session(ended)
    for tkn in (session.tkn, ended.tkn):
        with pytest.raises(ResponseError) as e:
            await raw(client, command, {"tkn": tkn, **params})
        assert e.value.st == st, (command, params, e.value.body)
    assert await client.session_exists(session) == [session.tkn]  # SH_END refused: still there
    assert await version(client, session) == 1


async def test_if_version_is_refused_by_commands_without_a_session(fresh_server: Any) -> None:
    """A command that ifVersion cannot guard must not run as if it were not there.
    A server of its own: if SH_END_ALL ran, it would end every session on it."""
    async with SessionClient(fresh_server.uri) as c:
        kept = await c.create_session(name="kept", shared=True, owner="olga")
        statuses = {}
        for command, params in [
            ("SH_END_ALL", {}),
            ("SH_OWNER_END", {"owner": "olga"}),
            ("SH_NEW", {}),
            ("SH_OPEN", {"name": "kept"}),
            ("SH_EXISTS", {"tkns": [kept.tkn]}),
            ("SH_INFO_ALL", {}),
        ]:
            try:
                statuses[command] = (await raw(c, command, {**params, "ifVersion": 1}))["st"]
            except ResponseError as e:
                statuses[command] = e.st
        assert statuses == dict.fromkeys(statuses, Status.ValueTypeInvalid)
        assert await c.session_exists(kept) == [kept.tkn]
