"""Event streams against scripted fake servers: what SH_SUBSCRIBE carries, how
pushed events become `Event` objects, resuming from the last cursor after a
drop (status 160 and refused cursors turned into ``lost`` events), closing,
and reading only as fast as the consumer takes events."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Tuple

import pytest

from ndb import Event, EventStream, ProtocolError, ResponseError, SessionClient, Status
from support import command_of, params_of, rsp

pytestmark = pytest.mark.asyncio

Script = Callable[[Any, List[Any]], Awaitable[None]]


def pushed(kind: str, cursor: str, **fields: Any) -> str:
    return json.dumps({"SH_EVENT": {"event": kind, "cursor": cursor, **fields}})


def created(tkn: int, cursor: str) -> str:
    return pushed("created", cursor, tkn=tkn, at=1764430000000 + tkn)


class Replayed:
    """A server-side connection whose first frame was read already: `recv` and
    iteration give it back first. Everything else goes to the connection."""

    def __init__(self, ws: Any, first: Any) -> None:
        self._ws = ws
        self._first = [first]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    async def recv(self) -> Any:
        return self._first.pop() if self._first else await self._ws.recv()

    async def __aiter__(self) -> AsyncIterator[Any]:
        while self._first:
            yield self._first.pop()
        async for frame in self._ws:
            yield frame


async def scripted(fake_server: Any, *scripts: Script) -> Tuple[str, List[List[Any]]]:
    """A fake server whose n-th subscribing connection runs scripts[n] (the last
    one for any later connection). A connection is counted once it sends its
    first frame, so the client's idle request connection takes no script.
    Returns the uri and, per subscribing connection, what its script recorded
    (the parameters of each request, and "closed" once the client closed)."""
    seen: List[List[Any]] = []

    async def handler(ws: Any) -> None:
        try:
            first = await ws.recv()
        except Exception:
            return  # closed without a word: the request connection of a test
        record: List[Any] = []
        seen.append(record)
        script = scripts[min(len(seen), len(scripts)) - 1]
        await script(Replayed(ws, first), record)

    return await fake_server(handler), seen


async def subscribe(ws: Any, record: List[Any], **answer: Any) -> Dict[str, Any]:
    """Take the SH_SUBSCRIBE the client must send first, and answer it."""
    frame = await ws.recv()
    assert command_of(frame) == "SH_SUBSCRIBE", frame
    record.append(params_of(frame))
    await ws.send(rsp("SH_SUBSCRIBE", **({"st": 1, "cursor": "c0"} | answer)))
    return params_of(frame)


async def until_closed(ws: Any, record: List[Any]) -> None:
    """Hold the connection open until the client closes it; record that it did."""
    try:
        async for frame in ws:
            record.append(params_of(frame))
    finally:
        record.append("closed")


async def take(events: AsyncIterator[Event], n: int, timeout: float = 5) -> List[Event]:
    return [await asyncio.wait_for(events.__anext__(), timeout) for _ in range(n)]


async def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


# ------------------------------------------------------------------ subscribing


async def test_subscribe_request_shapes(fake_server: Any) -> None:
    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record)
        await ws.send(created(1, "c1"))
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, script)
    async with SessionClient(uri) as c:
        for stream in (
            c.events(),
            c.events("expired"),
            c.events(["created", "ended"], owner="ann"),
            c.events(("keysExpired", "expired"), withKeys=True),
            c.events({"created"}, after="c42"),
            c.events(events=[], owner="", withKeys="yes", after=5),  # the server's to refuse
            c.events(withKeys=False, owner=None, after=None),
        ):
            async with stream:
                [event] = await take(stream.__aiter__(), 1)
                assert (event.event, event.tkn, stream.cursor) == ("created", 1, "c1")
    await wait_for(lambda: all(r[-1] == "closed" for r in seen))
    assert [r[0] for r in seen] == [
        {},
        {"events": ["expired"]},
        {"events": ["created", "ended"], "owner": "ann"},
        {"events": ["keysExpired", "expired"], "withKeys": True},
        {"events": ["created"], "after": "c42"},
        {"events": [], "owner": "", "withKeys": "yes", "after": 5},
        {},
    ]
    assert all(len(r) == 2 for r in seen)  # SH_SUBSCRIBE and nothing else, then closed


async def test_a_stream_uses_a_connection_of_its_own(fake_server: Any) -> None:
    """Requests and events never share a connection: the request connection
    never subscribes, the stream's sends nothing but SH_SUBSCRIBE."""
    commands: List[List[str]] = []

    async def handler(ws: Any) -> None:
        mine: List[str] = []
        commands.append(mine)
        async for frame in ws:
            mine.append(command_of(frame))
            if command_of(frame) == "SH_SUBSCRIBE":
                await ws.send(rsp("SH_SUBSCRIBE", st=1, cursor="c0"))
                for i in range(1, 4):
                    await ws.send(created(i, f"c{i}"))
            else:
                await ws.send(rsp(command_of(frame), st=1, tkn=params_of(frame)["tkn"], cnt=1))

    uri = await fake_server(handler)
    async with SessionClient(uri) as c:
        assert await c.count(1) == 1
        async with c.events() as stream:
            events = stream.__aiter__()
            got = await take(events, 1)
            assert await asyncio.gather(*(c.count(i) for i in range(5))) == [1] * 5
            got += await take(events, 2)
        assert [e.tkn for e in got] == [1, 2, 3]
    assert commands == [["SH_COUNT"] * 6, ["SH_SUBSCRIBE"]]


async def test_nothing_is_sent_before_the_iteration_starts(fake_server: Any) -> None:
    uri, seen = await scripted(fake_server, until_closed)
    async with SessionClient(uri) as c:
        stream = c.events("created")
        await asyncio.sleep(0.1)
        assert seen == [] and stream.cursor is None
        await stream.aclose()
    assert seen == []


async def test_refused_subscription_raises_and_closes(fake_server: Any) -> None:
    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, st=42, m="events: unknown event name")
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, script)
    async with SessionClient(uri) as c:
        stream = c.events(["nope"])
        with pytest.raises(ResponseError) as e:
            async for _ in stream:
                pass
        assert e.value.st == Status.ValueSize and e.value.command == "SH_SUBSCRIBE"
        assert stream.closed
        await wait_for(lambda: seen[0][-1] == "closed")
    assert len(seen) == 1  # a refusal is not retried


async def test_start_subscribes_before_the_iteration(fake_server: Any) -> None:
    """`start` (and entering `async with`) subscribes at once, only once; a loss
    it learns of is the first thing the iteration hands out."""

    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, st=160, lost=3, cursor="c5")
        await ws.send(created(6, "c6"))
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, script)
    async with SessionClient(uri) as c:
        stream = c.events(after="c1")
        await stream.start()
        assert seen == [[{"after": "c1"}]] and stream.cursor == "c5"
        await stream.start()
        async with stream:  # entering subscribes no more
            got = await take(stream.__aiter__(), 2)
        assert [(e.event, e.lost, e.tkn) for e in got] == [("lost", 3, None), ("created", None, 6)]
    await wait_for(lambda: seen[0][-1] == "closed")
    assert len(seen) == 1 and len(seen[0]) == 2
    with pytest.raises(ConnectionError, match="closed"):
        await stream.start()


async def test_a_refused_start_raises_and_closes(fake_server: Any) -> None:
    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, st=41)
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, script)
    async with SessionClient(uri) as c:
        with pytest.raises(ResponseError) as e:
            async with c.events(owner=5):  # type: ignore[arg-type]
                raise AssertionError("entered a refused subscription")
        assert e.value.st == Status.ValueTypeInvalid
        await wait_for(lambda: seen[0][-1] == "closed")


# ----------------------------------------------------------------------- events


async def test_pushed_events_become_event_objects(fake_server: Any) -> None:
    bodies = [
        {"event": "created", "tkn": 7, "name": "n", "owner": "ann", "at": 1000, "cursor": "c1"},
        {
            "event": "expired",
            "tkn": 7,
            "name": "n",
            "owner": "ann",
            "at": 2003,
            "deadline": 2000,
            "reason": "idle",
            "keys": {"cart": [1, 2]},
            "cursor": "c2",
        },
        {
            "event": "keysExpired",
            "tkn": 8,
            "at": 3001,
            "deadline": 3000,
            "keys": {"a": 1},
            "keysTruncated": True,
            "cursor": "c3",
        },
        {"event": "ended", "tkn": 2**64 - 1, "at": 4000, "cursor": "c4", "future": [1]},
        {"event": "lost", "lost": 12, "cursor": "c20"},
    ]

    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record)
        for body in bodies:
            await ws.send(json.dumps({"SH_EVENT": body}))
        await until_closed(ws, record)

    uri, _ = await scripted(fake_server, script)
    async with SessionClient(uri) as c:
        async with c.events(withKeys=True) as stream:
            events = stream.__aiter__()
            assert stream.cursor == "c0"  # `async with` subscribed: the answer's cursor
            got = await take(events, 5)
            assert stream.cursor == "c20"
    assert got[0] == Event("created", tkn=7, name="n", owner="ann", at=1000, cursor="c1")
    assert got[1] == Event(
        "expired",
        tkn=7,
        name="n",
        owner="ann",
        at=2003,
        deadline=2000,
        reason="idle",
        keys={"cart": [1, 2]},
        cursor="c2",
    )
    assert got[2] == Event(
        "keysExpired",
        tkn=8,
        at=3001,
        deadline=3000,
        keys={"a": 1},
        keys_truncated=True,
        cursor="c3",
    )
    assert got[3] == Event("ended", tkn=2**64 - 1, at=4000, cursor="c4")
    assert got[3].raw["future"] == [1]  # fields this client does not know stay reachable
    assert got[4] == Event("lost", lost=12, cursor="c20")
    assert [e.raw for e in got] == bodies
    assert got[0].keys is None and got[0].keys_truncated is False and got[0].lost is None


async def test_event_fields_of_the_wrong_type_are_none() -> None:
    e = Event.from_body({"event": "ended", "tkn": True, "at": "1", "keys": [1], "cursor": 5})
    assert (e.tkn, e.at, e.keys, e.cursor) == (None, None, None, None)


# -------------------------------------------------------------------- resuming


async def test_resume_after_a_drop_from_the_last_cursor(fake_server: Any) -> None:
    async def first(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, cursor="c0")
        await ws.send(created(1, "c1"))
        await ws.send(created(2, "c2"))
        await ws.close()

    async def second(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, cursor="c2")
        await ws.send(created(3, "c3"))
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, first, second)
    async with SessionClient(uri) as c:
        async with c.events(["created"], owner="ann", withKeys=True) as stream:
            got = await take(stream.__aiter__(), 3)
            assert stream.cursor == "c3"
    assert [e.tkn for e in got] == [1, 2, 3]
    assert not any(e.event == "lost" for e in got)
    filters = {"events": ["created"], "owner": "ann", "withKeys": True}
    assert seen[0][0] == filters
    assert seen[1][0] == {**filters, "after": "c2"}  # the same filters, from the last cursor


async def test_a_drop_before_any_event_resumes_from_the_subscription_cursor(
    fake_server: Any,
) -> None:
    """Events that happen between the subscription and the drop are not
    skipped: the answer's cursor is kept even before the first event."""

    async def first(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, cursor="start")
        await ws.close()

    async def second(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, cursor="start")
        await ws.send(created(1, "c1"))
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, first, second)
    async with SessionClient(uri) as c:
        async with c.events() as stream:
            [event] = await take(stream.__aiter__(), 1)
    assert event.tkn == 1
    assert seen[1][0] == {"after": "start"}


@pytest.mark.parametrize("lost", [5, -1])
async def test_status_160_becomes_a_lost_event(fake_server: Any, lost: int) -> None:
    async def first(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record)
        await ws.send(created(1, "c1"))
        await ws.close()

    async def second(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, st=160, lost=lost, cursor="c9")
        await ws.send(created(10, "c10"))
        await ws.close()

    async def third(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, cursor="c10")
        await ws.send(created(11, "c11"))
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, first, second, third)
    async with SessionClient(uri) as c:
        async with c.events() as stream:
            got = await take(stream.__aiter__(), 4)
    assert [(e.event, e.tkn, e.lost, e.cursor) for e in got] == [
        ("created", 1, None, "c1"),
        ("lost", None, lost, "c9"),
        ("created", 10, None, "c10"),
        ("created", 11, None, "c11"),
    ]
    assert got[1].raw == {"st": 160, "lost": lost, "cursor": "c9"}
    # Each resume starts where the last one left: the loss is reported once.
    assert [r[0].get("after") for r in seen] == [None, "c1", "c10"]


async def test_status_160_on_the_first_subscription_with_after(fake_server: Any) -> None:
    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, st=160, lost=-1, cursor="new")
        await ws.send(created(1, "c1"))
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, script)
    async with SessionClient(uri) as c:
        async with c.events(after="from-yesterday") as stream:
            got = await take(stream.__aiter__(), 2)
    assert [(e.event, e.lost) for e in got] == [("lost", -1), ("created", None)]
    assert seen[0][0] == {"after": "from-yesterday"}


async def test_a_cursor_the_server_no_longer_reads_becomes_lost_unknown(
    fake_server: Any,
) -> None:
    """Restarted with another number of shards, the server refuses (42) a
    cursor it handed out: the stream reports an unknown loss and goes on from
    the server's present."""

    async def first(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record)
        await ws.send(created(1, "c1"))
        await ws.close()

    async def second(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, st=42, m="after: not a cursor of this server")
        frame = await ws.recv()
        record.append(params_of(frame))
        await ws.send(rsp("SH_SUBSCRIBE", st=1, cursor="fresh"))
        await ws.send(created(2, "c2"))
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, first, second)
    async with SessionClient(uri) as c:
        async with c.events("created") as stream:
            got = await take(stream.__aiter__(), 3)
    assert [(e.event, e.tkn, e.lost, e.cursor) for e in got] == [
        ("created", 1, None, "c1"),
        ("lost", None, -1, "fresh"),
        ("created", 2, None, "c2"),
    ]
    assert got[1].raw["st"] == 42
    assert seen[1][:2] == [{"events": ["created"], "after": "c1"}, {"events": ["created"]}]


async def test_a_refused_cursor_from_the_caller_is_an_error(fake_server: Any) -> None:
    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record, st=42)
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, script)
    async with SessionClient(uri) as c:
        with pytest.raises(ResponseError) as e:
            async for _ in c.events(after="garbage"):
                pass
    assert e.value.st == Status.ValueSize
    assert len(seen) == 1 and len(seen[0]) == 2  # not sent again without `after`


async def test_a_stream_waits_for_the_server_to_come_back(fake_server: Any) -> None:
    import websockets

    from test_client_offline import free_port

    port = free_port()
    record: List[Any] = []

    async def first(ws: Any, *_: Any) -> None:
        await subscribe(ws, record, cursor="c0")
        await ws.send(created(1, "c1"))
        await until_closed(ws, record)  # until the server goes

    async def second(ws: Any, *_: Any) -> None:
        await subscribe(ws, record, cursor="c1")
        await ws.send(created(2, "c2"))
        await until_closed(ws, record)

    srv = await websockets.serve(first, "127.0.0.1", port)
    async with SessionClient(f"ws://127.0.0.1:{port}/", reconnect_timeout=10) as c:
        async with c.events() as stream:
            events = stream.__aiter__()
            assert [e.tkn for e in await take(events, 1)] == [1]
            srv.close()
            await srv.wait_closed()
            following = asyncio.ensure_future(events.__anext__())
            await asyncio.sleep(0.5)  # nobody listens: retrying
            assert not following.done()
            srv = await websockets.serve(second, "127.0.0.1", port)
            try:
                assert (await asyncio.wait_for(following, 5)).tkn == 2
            finally:
                await stream.aclose()
                srv.close()
                await srv.wait_closed()
    assert [r.get("after") for r in record if isinstance(r, dict)] == [None, "c1"]


async def test_a_stream_gives_up_after_the_reconnect_timeout(fake_server: Any) -> None:
    import websockets

    from test_client_offline import free_port

    port = free_port()

    async def script(ws: Any, *_: Any) -> None:
        await subscribe(ws, [], cursor="c0")
        await ws.send(created(1, "c1"))
        await until_closed(ws, [])  # until the server goes

    srv = await websockets.serve(script, "127.0.0.1", port)
    async with SessionClient(f"ws://127.0.0.1:{port}/", reconnect_timeout=0.5) as c:
        stream = c.events()
        events = stream.__aiter__()
        await take(events, 1)
        srv.close()
        await srv.wait_closed()
        with pytest.raises(ConnectionError, match="gave up"):
            await asyncio.wait_for(events.__anext__(), 10)
        assert stream.cursor == "c1" and stream.closed  # where a new stream would resume


async def test_reconnect_false_ends_the_stream_on_a_drop(fake_server: Any) -> None:
    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record)
        await ws.send(created(1, "c1"))
        await ws.close()

    uri, seen = await scripted(fake_server, script)
    async with SessionClient(uri, reconnect=False) as c:
        stream = c.events()
        got: List[Event] = []
        with pytest.raises(ConnectionError, match="event connection lost"):
            async for event in stream:
                got.append(event)
    assert [e.tkn for e in got] == [1] and len(seen) == 1


async def test_subscriptions_dropped_at_once_are_retried_with_backoff(
    fake_server: Any,
) -> None:
    """A server that answers the subscription and hangs up before any event, again
    and again, is tried a handful of times a second, not in a tight loop."""

    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record)
        await ws.close()

    uri, seen = await scripted(fake_server, script)
    async with SessionClient(uri) as c:
        stream = c.events()
        consumer = asyncio.ensure_future(stream.__aiter__().__anext__())
        await asyncio.sleep(1.0)
        assert not consumer.done()
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(consumer, 5)
    assert 3 <= len(seen) <= 12, len(seen)


async def test_a_broken_event_connection_is_not_resumed(fake_server: Any) -> None:
    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record)
        await ws.send(created(1, "c1"))
        await ws.send(json.dumps({"SH_EVENT": [1]}))  # not an object
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, script)
    async with SessionClient(uri) as c:
        got: List[Event] = []
        with pytest.raises(ProtocolError, match="malformed event"):
            async for event in c.events():
                got.append(event)
    assert [e.tkn for e in got] == [1] and len(seen) == 1


# --------------------------------------------------------------------- closing


async def test_breaking_out_of_the_loop_closes_the_connection(fake_server: Any) -> None:
    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record)
        for i in range(1, 4):
            await ws.send(created(i, f"c{i}"))
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, script)
    async with SessionClient(uri) as c:
        got = []
        async for event in c.events():  # no `async with`, no aclose: just break
            got.append(event.tkn)
            if len(got) == 2:
                break
        await wait_for(lambda: seen[0][-1] == "closed")
        assert got == [1, 2]
        assert not c._streams  # the client no longer holds it


async def test_aclose_ends_a_waiting_loop(fake_server: Any) -> None:
    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record)
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, script)
    async with SessionClient(uri) as c:
        stream = c.events()
        got: List[Event] = []

        async def consume() -> None:
            async for event in stream:
                got.append(event)

        consumer = asyncio.ensure_future(consume())
        await wait_for(lambda: bool(seen) and len(seen[0]) == 1)
        await stream.aclose()
        await asyncio.wait_for(consumer, 5)  # ends without an error
        await wait_for(lambda: seen[0][-1] == "closed")
        await stream.aclose()  # idempotent
    assert got == []


async def test_closing_the_client_ends_its_streams(fake_server: Any) -> None:
    async def script(ws: Any, record: List[Any]) -> None:
        await subscribe(ws, record)
        await until_closed(ws, record)

    uri, seen = await scripted(fake_server, script)
    c = SessionClient(uri)
    await c.open()
    streams = [c.events(), c.events("ended")]

    async def consume(stream: EventStream) -> int:
        return len([e async for e in stream])

    consumers = [asyncio.ensure_future(consume(s)) for s in streams]
    await wait_for(lambda: len(seen) == 2 and all(len(r) == 1 for r in seen))
    await c.close()
    assert await asyncio.wait_for(asyncio.gather(*consumers), 5) == [0, 0]
    await wait_for(lambda: all(r[-1] == "closed" for r in seen))
    with pytest.raises(ConnectionError, match="closed by client"):
        async for _ in c.events():
            pass


async def test_a_stream_is_iterated_once(fake_server: Any) -> None:
    uri, _ = await scripted(fake_server, until_closed)
    async with SessionClient(uri) as c:
        stream = c.events()
        stream.__aiter__()
        with pytest.raises(RuntimeError, match="iterated once"):
            stream.__aiter__()
        await stream.aclose()


async def test_events_need_a_uri(fake_server: Any) -> None:
    with pytest.raises(ConnectionError, match="open"):
        async for _ in SessionClient().events():
            pass


# ------------------------------------------------------------------ flow control


async def test_a_paused_consumer_stops_the_reading(fake_server: Any) -> None:
    """The client reads events only as fast as they are taken (so the server,
    which writes only as fast as the client reads, holds them back): while the
    consumer pauses, the server gets only as far as the buffers on the way
    allow; then every event still arrives, in order."""
    n, payload = 2000, "x" * 20_000
    sent = 0

    async def script(ws: Any, record: List[Any]) -> None:
        nonlocal sent
        await subscribe(ws, record)
        for i in range(1, n + 1):
            await ws.send(pushed("ended", f"c{i}", tkn=i, keys={"big": payload}))
            sent = i
        await until_closed(ws, record)

    uri, _ = await scripted(fake_server, script)
    # No permessage-deflate: 20 kB of "x" would shrink to nothing on the wire
    # and fit in the socket buffers however many there are.
    async with SessionClient(uri, compression=None) as c:
        async with c.events(withKeys=True) as stream:
            events = stream.__aiter__()
            await take(events, 1)
            await asyncio.sleep(1.0)  # the consumer pauses
            assert sent < n * 3 // 4, sent  # 40 MB would have been read into memory
            rest = await take(events, n - 1, timeout=10)
    assert [e.tkn for e in rest] == list(range(2, n + 1))
