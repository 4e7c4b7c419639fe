"""Session events against the real server (docs/PROTOCOL.md, "Events"): every
kind with and without keys, the filters, resuming after the stream's
connection drops, what a small ring loses (on a resume: 160; while
connected: a pushed ``lost``), a cursor from before a restart, the statuses
of bad parameters, and pushed events on a connection that also carries
requests."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List, Optional

import pytest

from ndb import Event, EventStream, ResponseError, Session, SessionClient, Status

pytestmark = pytest.mark.asyncio

_U64 = 2**64 - 1


def shard_of(tkn: int, shards: int = 2) -> int:
    """The shard that holds `tkn` (docs/PROTOCOL.md, "Tokens": SplitMix64's finalizer)."""
    x = tkn
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _U64
    x ^= x >> 31
    return x % shards


def shard_of_owner(owner: str, shards: int = 2) -> int:
    """The shard that holds every session of `owner` (FNV-1a of it, mixed as tokens are)."""
    h = 0xCBF29CE484222325
    for byte in owner.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & _U64
    return shard_of(h, shards)


def owner_on(shard: int) -> str:
    """An owner whose sessions live on `shard`. (A session without an owner is
    made on the shard its connection is served by.)"""
    return next(f"owner-{i}" for i in range(100) if shard_of_owner(f"owner-{i}") == shard)


class Collector:
    """Iterates a stream in a task of its own and keeps every event, so that a
    test can wait for events without cancelling the iteration (a cancelled
    iteration ends the stream)."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.events: List[Event] = []
        self.error: Optional[BaseException] = None
        self._arrived = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async for event in self.stream:
                self.events.append(event)
                self._arrived.set()
        except Exception as e:
            self.error = e
            self._arrived.set()

    async def until(self, done: Callable[[List[Event]], bool], timeout: float = 20) -> List[Event]:
        deadline = time.monotonic() + timeout
        while not done(self.events):
            if self.error is not None:
                raise self.error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"events so far: {self.events}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return list(self.events)

    async def count(self, n: int, timeout: float = 20) -> List[Event]:
        return await self.until(lambda events: len(events) >= n, timeout)

    async def quiet(self, period: float = 0.5) -> List[Event]:
        """Every event once none has arrived for `period` seconds."""
        while True:
            seen = len(self.events)
            await asyncio.sleep(period)
            if len(self.events) == seen:
                if self.error is not None:
                    raise self.error
                return list(self.events)


def by_session(events: List[Event]) -> Dict[Optional[int], List[Event]]:
    """Events per token, in arrival order (the order the server promises)."""
    out: Dict[Optional[int], List[Event]] = {}
    for e in events:
        out.setdefault(e.tkn, []).append(e)
    return out


def kinds(events: List[Event]) -> List[str]:
    return [e.event for e in events]


# ------------------------------------------------------------------ every kind


async def test_every_kind_with_and_without_keys(fresh_server: Any) -> None:
    started = int(time.time() * 1000)
    async with SessionClient(fresh_server.uri) as c:
        async with c.events(withKeys=True) as keyed, c.events() as plain:
            with_keys, without = Collector(keyed), Collector(plain)
            a = await c.create_session(name="a", owner="ann", keys={"x": 1})
            await c.end_session(a)
            idle = await c.create_session(1, deleteSession=True, keys={"cart": [1]})
            life = await c.create_session(maxLifetime=1, keys={"l": 1})
            cleared = await c.create_session(1, deleteSession=False, keys={"k": 2})
            bobs = await c.create_session(owner="bob", keys={"o": 1})
            assert await c.owner_end("bob") == 1
            await with_keys.until(
                lambda evs: sum(e.event in ("expired", "keysExpired") for e in evs) == 3
            )
            last = await c.create_session(keys={"f": 1})
            assert await c.end_all_sessions() == 2  # `last` and `cleared`
            total = 2 + 2 + 2 + 3 + 2 + 2
            await with_keys.count(total)
            await without.count(total)
            keyed_events = await with_keys.quiet(1.5)  # cleared has no keys left: no second event
            plain_events = await without.quiet(0.1)
    ended = int(time.time() * 1000)
    assert len(keyed_events) == len(plain_events) == total

    for events, withKeys in ((keyed_events, True), (plain_events, False)):
        per = by_session(events)
        assert set(per) == {s.tkn for s in (a, idle, life, cleared, bobs, last)}
        assert kinds(per[a.tkn]) == ["created", "ended"]
        assert kinds(per[idle.tkn]) == ["created", "expired"]
        assert kinds(per[life.tkn]) == ["created", "expired"]
        assert kinds(per[cleared.tkn]) == ["created", "keysExpired", "ended"]
        assert kinds(per[bobs.tkn]) == ["created", "ended"]
        assert kinds(per[last.tkn]) == ["created", "ended"]
        for e in events:
            assert started <= e.at <= ended, e  # type: ignore[operator]
            assert isinstance(e.cursor, str) and e.cursor
            assert e.lost is None and e.keys_truncated is False
            assert e.raw["event"] == e.event
            if e.event == "created" or not withKeys:
                assert e.keys is None and "keys" not in e.raw, e
            if e.event in ("expired", "keysExpired"):
                created = per[e.tkn][0]
                assert e.deadline is not None and created.at is not None
                # Due a second after creation, sent by the background expiry soon after.
                assert 900 <= e.deadline - created.at <= 1100, e
                assert 0 <= e.at - e.deadline < 1000, e  # type: ignore[operator]
            else:
                assert e.deadline is None and e.reason is None
        assert len({e.cursor for e in events}) == total
        assert (per[a.tkn][0].name, per[a.tkn][0].owner) == ("a", "ann")
        assert (per[a.tkn][1].name, per[a.tkn][1].owner) == ("a", "ann")
        assert [e.owner for e in per[bobs.tkn]] == ["bob", "bob"]
        assert all(e.name is None and e.owner is None for e in per[idle.tkn])
        assert per[idle.tkn][1].reason == "idle"
        assert per[life.tkn][1].reason == "lifetime"
        assert per[cleared.tkn][1].reason is None  # only `expired` has one

    keys = {(e.tkn, e.event): e.keys for e in keyed_events if e.event != "created"}
    assert keys == {
        (a.tkn, "ended"): {"x": 1},
        (idle.tkn, "expired"): {"cart": [1]},
        (life.tkn, "expired"): {"l": 1},
        (cleared.tkn, "keysExpired"): {"k": 2},
        (cleared.tkn, "ended"): {},  # its keys were cleared by then
        (bobs.tkn, "ended"): {"o": 1},
        (last.tkn, "ended"): {"f": 1},
    }


async def test_keys_too_big_for_an_event_are_truncated(make_server: Any) -> None:
    srv = make_server("--max-payload", "65536")
    async with SessionClient(srv.uri) as c:
        async with c.events(["ended"], withKeys=True) as stream:
            events = Collector(stream)
            s = await c.create_session()
            for i in range(8):  # each set fits in a message; all eight do not
                await c.set({f"k{i}": "v" * 10_000}, s)
            await c.end_session(s)
            [e] = await events.count(1)
    assert e.keys_truncated is True and e.raw["keysTruncated"] is True
    assert e.keys and len(e.keys) < 8
    assert all(e.keys[k] == "v" * 10_000 for k in e.keys)  # whole keys only


# --------------------------------------------------------------------- filters


async def test_filters(fresh_server: Any) -> None:
    async with SessionClient(fresh_server.uri) as c:
        async with (
            c.events(["ended"]) as only_ended,
            c.events(owner="ann") as anns,
            c.events(["created", "expired"], owner="ann") as both,
            c.events("created") as one_kind,
        ):
            streams = [Collector(s) for s in (only_ended, anns, both, one_kind)]
            ann_ended = await c.create_session(owner="ann")
            await c.end_session(ann_ended)
            ann_expires = await c.create_session(1, deleteSession=True, owner="ann")
            bob_ended = await c.create_session(owner="bob")
            await c.end_session(bob_ended)
            bob_expires = await c.create_session(1, deleteSession=True, owner="bob")
            nobody = await c.create_session()
            await c.end_session(nobody)
            await streams[1].count(4)
            await streams[2].count(3)
            quiet = await asyncio.gather(*(s.quiet(1.2) for s in streams))
            got = [{(e.event, e.tkn) for e in events} for events in quiet]
    assert got[0] == {("ended", s.tkn) for s in (ann_ended, bob_ended, nobody)}
    assert got[1] == {
        ("created", ann_ended.tkn),
        ("ended", ann_ended.tkn),
        ("created", ann_expires.tkn),
        ("expired", ann_expires.tkn),
    }
    assert got[2] == {
        ("created", ann_ended.tkn),
        ("created", ann_expires.tkn),
        ("expired", ann_expires.tkn),
    }
    assert got[3] == {
        ("created", s.tkn) for s in (ann_ended, ann_expires, bob_ended, bob_expires, nobody)
    }


@pytest.mark.parametrize(
    "kwargs, st",
    [
        ({"events": 5}, Status.ValueTypeInvalid),
        ({"events": [1]}, Status.ValueTypeInvalid),
        ({"events": ["nope"]}, Status.ValueSize),
        ({"events": ["lost"]}, Status.ValueSize),
        ({"events": ["ended", "ended"]}, Status.ValueSize),
        ({"events": []}, Status.ValueSize),
        ({"owner": 5}, Status.ValueTypeInvalid),
        ({"owner": ""}, Status.ValueSize),
        ({"owner": "o" * 257}, Status.ValueSize),
        ({"withKeys": "yes"}, Status.ValueTypeInvalid),
        ({"withKeys": None}, Status.ValueTypeInvalid),
        ({"after": 5}, Status.ValueTypeInvalid),
        ({"after": "garbage"}, Status.ValueSize),
        ({"after": "0123456789abcdef"}, Status.ValueSize),
    ],
)
async def test_bad_parameters(client: SessionClient, kwargs: Dict[str, Any], st: Status) -> None:
    """The client sends them as given; the server refuses them, and the stream
    raises the refusal from `start` (here: entering `async with`)."""
    stream = client.events(**kwargs)
    with pytest.raises(ResponseError) as e:
        async with stream:
            raise AssertionError("subscribed with bad parameters")
    assert e.value.st == st and e.value.command == "SH_SUBSCRIBE", e.value.body
    assert stream.closed
    with pytest.raises(ResponseError) as e:  # the same from a plain loop
        async for _ in client.events(**kwargs):
            raise AssertionError("subscribed with bad parameters")
    assert e.value.st == st


async def test_a_cursor_for_another_number_of_shards_is_refused(client: SessionClient) -> None:
    async with client.events() as stream:
        cursor = stream.cursor
    assert cursor is not None and cursor.count(".") == 2  # instance and one position per shard
    with pytest.raises(ResponseError) as e:
        async with client.events(after=cursor + ".0"):
            pass
    assert e.value.st == Status.ValueSize
    async with client.events(after=cursor) as resumed:  # its own is fine
        assert resumed.cursor is not None


# -------------------------------------------------------------------- resuming


async def test_resume_after_the_connection_drops_gets_exactly_the_missed_events(
    fresh_server: Any,
) -> None:
    """The stream's connection is cut while events pour in and the consumer is
    not reading; the stream resumes from the last event it handed out: every
    event arrives once, none twice, no loss reported. Sessions on both shards,
    so the cursor holds two positions that move apart."""
    client = SessionClient(fresh_server.uri)
    await client.open()

    async def sessions(n: int) -> List[Session]:
        made = []
        for i in range(n):
            s = await client.create_session(owner=owner_on(i % 2))
            await client.end_session(s)
            made.append(s)
        return made

    async with client, client.events() as stream:
        events = stream.__aiter__()
        before = await sessions(10)
        got = [await asyncio.wait_for(events.__anext__(), 10) for _ in range(5)]
        old = stream._sub
        assert old is not None
        # Cut the connection under it, as a network failure would: events the
        # client had read but not handed out go with it.
        old.conn._ws.transport.abort()
        after = await sessions(10)
        while len(got) < 40:
            got.append(await asyncio.wait_for(events.__anext__(), 10))
        assert stream._sub is not old  # it did reconnect
        following = asyncio.ensure_future(events.__anext__())
        done, _ = await asyncio.wait({following}, timeout=0.5)
        assert not done, following.result()  # nothing more: no event came twice
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(following, 5)  # closing the stream ended the loop
    assert "lost" not in kinds(got)
    expected = {s.tkn: ["created", "ended"] for s in before + after}
    assert {t: kinds(es) for t, es in by_session(got).items()} == expected


async def test_a_small_ring_reports_exactly_what_a_resume_lost(make_server: Any) -> None:
    """300 sessions made and ended while the stream was away, on a server that
    keeps 100 events per shard: the resume is answered 160 with 400 lost (600
    events, 200 kept), yielded as one `lost` event, then the `ended` events
    the rings kept."""
    srv = make_server("--event-retention", "100")
    async with SessionClient(srv.uri) as c:
        async with c.events(["ended"]) as stream:
            cursor = stream.cursor
        ring: Dict[int, List[Event]] = {0: [], 1: []}
        for i in range(300):  # one at a time: each shard's order is the order made
            s = await c.create_session(owner=owner_on(i % 2))
            await c.end_session(s)
            ring[shard_of(s.tkn)] += [Event("created", s.tkn), Event("ended", s.tkn)]
        kept = {e.tkn for shard in ring.values() for e in shard[-100:] if e.event == "ended"}
        async with c.events(["ended"], after=cursor) as late:
            collector = Collector(late)
            await collector.count(1 + len(kept))
            got = await collector.quiet()
    assert min(len(shard) for shard in ring.values()) > 100  # both rings overflowed
    assert (got[0].event, got[0].lost, got[0].raw["st"]) == ("lost", 400, 160)
    assert got[0].cursor == got[0].raw["cursor"]
    assert all(e.event == "ended" for e in got[1:])
    assert {e.tkn for e in got[1:]} == kept and len(got) == 1 + len(kept)


async def test_a_stalled_subscriber_is_told_what_it_lost(make_server: Any) -> None:
    """A consumer that stops reading while events pour in: the client stops
    reading the socket, the server stops sending, the rings move on, and when
    it reads again it is told how many it lost: got + lost is everything."""
    srv = make_server("--event-retention", "100", "--max-output-buffer", "65536")
    total, big = 2000, "x" * 10_000
    async with SessionClient(srv.uri) as c:
        async with c.events(["ended"], withKeys=True) as stream:  # subscribed, not read
            for _ in range(total // 100):
                made = await asyncio.gather(
                    *(c.create_session(keys={"v": big}) for _ in range(100))
                )
                await asyncio.gather(*(c.end_session(s) for s in made))
            events = await Collector(stream).quiet(1.5)
    lost = [e for e in events if e.event == "lost"]
    ended = [e for e in events if e.event == "ended"]
    assert len(lost) + len(ended) == len(events)
    assert lost and all(e.lost and e.lost > 0 and e.tkn is None for e in lost)
    assert len(ended) + sum(e.lost for e in lost) == total  # type: ignore[misc]
    assert all(e.keys == {"v": big} for e in ended)
    assert len({e.tkn for e in ended}) == len(ended)


async def test_after_a_server_restart_the_stream_reports_an_unknown_loss(
    restartable_server: Any,
) -> None:
    async with SessionClient(restartable_server.uri, reconnect_timeout=30) as c:
        async with c.events() as stream:
            events = Collector(stream)
            before = await c.create_session()
            await events.count(1)
            restartable_server.restart()
            for _ in range(250):  # let the request connection notice too
                if not c.is_open:
                    break
                await asyncio.sleep(0.02)
            after = await c.create_session()  # on the new server
            got = await events.count(3)
            got = await events.quiet()
    assert [(e.event, e.tkn, e.lost) for e in got] == [
        ("created", before.tkn, None),
        ("lost", None, -1),
        ("created", after.tkn, None),
    ]
    assert got[1].raw["st"] == Status.EventsLost and got[1].cursor == got[1].raw["cursor"]
    # A cursor of the new server's instance from here on.
    assert got[2].cursor.split(".")[0] != got[0].cursor.split(".")[0]  # type: ignore[union-attr]


# ------------------------------------------------------------ one connection


async def test_events_pushed_between_answers_are_not_taken_for_answers(
    fresh_server: Any,
) -> None:
    """A hand-written request: this client's request connection subscribes,
    so every SH_NEW's `created` event comes between the answers. Each call
    still gets its own answer."""
    async with SessionClient(fresh_server.uri) as c:
        await c._conn.request("SH_SUBSCRIBE", {"withKeys": True})
        made = await asyncio.gather(*(c.create_session(keys={"i": i}) for i in range(200)))
        got = await asyncio.gather(*(c.get("i", s) for s in made))
        assert got == [{"i": i} for i in range(200)]
        assert await c.end_all_sessions() == 200  # 200 `ended` events, with keys, too
        assert await c.session_info_all() == {"totalSessions": 0, "totalKeys": 0}
        assert await c._conn.request("SH_UNSUBSCRIBE", {}) == {"st": 1}
        assert c.is_open


async def test_leaving_the_loop_closes_the_stream_connection(fresh_server: Any) -> None:
    async with SessionClient(fresh_server.uri) as c:
        assert (await c.server_info())["connections"] == 1
        stream = c.events("created")

        async def make_once_subscribed() -> List[Session]:
            while stream.cursor is None:  # set by the subscription's answer
                await asyncio.sleep(0.01)
            assert (await c.server_info())["connections"] == 2
            return [await c.create_session() for _ in range(3)]

        maker = asyncio.ensure_future(make_once_subscribed())
        got = []
        async for event in stream:  # no `async with`, no aclose: the loop alone
            got.append(event.tkn)
            if len(got) == 2:
                break
        made = await maker
        assert got == [s.tkn for s in made[:2]]
        for _ in range(250):
            if (await c.server_info())["connections"] == 1:
                break
            await asyncio.sleep(0.02)
        assert (await c.server_info())["connections"] == 1
        assert stream.closed
