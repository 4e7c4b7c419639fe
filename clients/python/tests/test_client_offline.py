"""The client against a scripted fake server and no server at all: request
shapes, argument checks, reply matching, and every way a connection can fail,
including replies the real server must never send; and the version, compare-
and-set and incr calls' requests, return shapes and errors."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, List

import pytest

from ndb.sessionclient import (
    ProtocolError,
    ResponseError,
    Session,
    SessionClient,
    Status,
    Versioned,
    VersionedKeys,
    VersionMismatch,
)
from support import command_of, params_of, rsp

pytestmark = pytest.mark.asyncio


async def recording_server(fake_server: Any, frames: List[str], reply: Any = None) -> str:
    """A fake server that records request frames and answers each with `reply(frame)`
    (default: Ok with an echo of ``tkn``)."""

    async def handler(ws: Any) -> None:
        async for frame in ws:
            frames.append(frame)
            if reply is not None:
                await ws.send(reply(frame))
            else:
                params = params_of(frame)
                body = {"st": 1, "cnt": 0, "contains": [], "exist": [], "tkn": 1}
                body["keys"] = {} if command_of(frame) == "SH_GET" else []
                if "tkn" in params:
                    body["tkn"] = params["tkn"]
                await ws.send(rsp(command_of(frame), **body))

    return await fake_server(handler)


# ------------------------------------------------------------------ request shapes


async def test_create_session_request_shapes(fake_server: Any) -> None:
    frames: List[str] = []
    uri = await recording_server(fake_server, frames, lambda f: rsp("SH_NEW", st=1, tkn=42))
    async with SessionClient(uri) as c:
        s = await c.create_session()
        assert (s.tkn, s.token, s.isValid, s.name, s.shared) == (42, 42, True, None, False)
        await c.create_session(10, True, True, True, name="cart", shared=True)
        await c.create_session(5, deleteSessionOnExpire=True)
        await c.create_session(name="plain")
    assert [json.loads(f) for f in frames] == [
        {"SH_NEW": {}},
        {
            "SH_NEW": {
                "name": "cart",
                "shared": True,
                "expiry": {
                    "duration": 10,
                    "deleteSession": True,
                    "extendOnSetAdd": True,
                    "extendOnGet": True,
                },
            }
        },
        {
            "SH_NEW": {
                "expiry": {
                    "duration": 5,
                    "deleteSession": True,
                    "extendOnSetAdd": False,
                    "extendOnGet": False,
                }
            }
        },
        {"SH_NEW": {"name": "plain"}},
    ]


async def test_create_session_new_parameters_request_shapes(fake_server: Any) -> None:
    """owner, keys and maxLifetime, alone and together; maxLifetime alone makes
    an expiry object without a duration, and with a duration it joins the four
    fields sent today."""
    frames: List[str] = []
    uri = await recording_server(fake_server, frames, lambda f: rsp("SH_NEW", st=1, tkn=7))
    async with SessionClient(uri) as c:
        s = await c.create_session(owner="alice")
        assert (s.tkn, s.isValid, s.owner, s.name, s.shared) == (7, True, "alice", None, False)
        assert repr(s) == "Session(tkn=7, name=None, shared=False, owner='alice')"
        assert s == Session(7)  # the same session, whether or not the handle knows its owner
        await c.create_session(keys={"cart": [], "n": 1})
        await c.create_session(maxLifetime=3600)
        await c.create_session(0, maxLifetime=60)
        await c.create_session(
            30,
            True,
            False,
            True,
            name="dev",
            shared=True,
            owner="alice",
            keys={"k": "v"},
            maxLifetime=86400,
        )
        await c.create_session(keys={})
        # Passed as given: the server owns these checks (41/42).
        await c.create_session(owner=5, maxLifetime=0)  # type: ignore[arg-type]
    assert [json.loads(f) for f in frames] == [
        {"SH_NEW": {"owner": "alice"}},
        {"SH_NEW": {"keys": {"cart": [], "n": 1}}},
        {"SH_NEW": {"expiry": {"maxLifetime": 3600}}},
        {"SH_NEW": {"expiry": {"maxLifetime": 60}}},
        {
            "SH_NEW": {
                "name": "dev",
                "shared": True,
                "owner": "alice",
                "expiry": {
                    "duration": 30,
                    "deleteSession": True,
                    "extendOnSetAdd": False,
                    "extendOnGet": True,
                    "maxLifetime": 86400,
                },
                "keys": {"k": "v"},
            }
        },
        {"SH_NEW": {"keys": {}}},
        {"SH_NEW": {"owner": 5, "expiry": {"maxLifetime": 0}}},
    ]


async def test_old_calls_send_the_same_bytes(fake_server: Any) -> None:
    """A caller that uses none of the new parameters sends, byte for byte, what
    this client sent before they existed (frames recorded from that version)."""
    frames: List[str] = []
    uri = await recording_server(fake_server, frames, lambda f: rsp(command_of(f), st=1, tkn=9))
    async with SessionClient(uri) as c:
        s = await c.create_session()
        assert repr(s) == "Session(tkn=9, name=None, shared=False)" and s.owner is None
        await c.create_session(0)
        await c.create_session(10, True, True, True, name="cart", shared=True)
        await c.create_session(5, deleteSessionOnExpire=True)
        await c.create_session(name="plain")
        await c.session_info(9)
    assert frames == [
        '{"SH_NEW":{}}',
        '{"SH_NEW":{}}',
        '{"SH_NEW":{"name":"cart","shared":true,"expiry":{"duration":10,'
        '"deleteSession":true,"extendOnSetAdd":true,"extendOnGet":true}}}',
        '{"SH_NEW":{"expiry":{"duration":5,"deleteSession":true,'
        '"extendOnSetAdd":false,"extendOnGet":false}}}',
        '{"SH_NEW":{"name":"plain"}}',
        '{"SH_INFO":{"tkn":9}}',
    ]


async def test_touch_and_owner_request_shapes(fake_server: Any) -> None:
    replies = {
        "SH_TOUCH": lambda p: rsp("SH_TOUCH", st=1, tkn=p["tkn"], ttlMs=-1 if p["slide"] else 1500),
        "SH_OWNER_SESSIONS": lambda p: rsp(
            "SH_OWNER_SESSIONS", st=1, owner=p["owner"], tkns=[3, 2**64 - 1]
        ),
        "SH_OWNER_END": lambda p: rsp("SH_OWNER_END", st=1, owner=p["owner"], cnt=2),
    }
    frames: List[str] = []
    uri = await recording_server(
        fake_server, frames, lambda f: replies[command_of(f)](params_of(f))
    )
    async with SessionClient(uri) as c:
        assert await c.touch(5) == -1
        assert await c.touch("6", slide=False) == 1500
        assert await c.touch(Session(7), True) == -1
        assert await c.owner_sessions("alice") == [3, 2**64 - 1]
        assert await c.owner_end("alice") == 2
        assert await c.owner_end("alice", except_tkn=Session(8)) == 2
        assert await c.owner_end("alice", "9") == 2
        assert await c.owner_end("alice", except_tkn="not-a-token") == 2  # the server decides
    assert [json.loads(f) for f in frames] == [
        {"SH_TOUCH": {"tkn": 5, "slide": True}},
        {"SH_TOUCH": {"tkn": 6, "slide": False}},
        {"SH_TOUCH": {"tkn": 7, "slide": True}},
        {"SH_OWNER_SESSIONS": {"owner": "alice"}},
        {"SH_OWNER_END": {"owner": "alice"}},
        {"SH_OWNER_END": {"owner": "alice", "except": 8}},
        {"SH_OWNER_END": {"owner": "alice", "except": 9}},
        {"SH_OWNER_END": {"owner": "alice", "except": "not-a-token"}},
    ]


async def test_session_info_passes_new_fields_through(fake_server: Any) -> None:
    body = {
        "tkn": 4,
        "owner": "alice",
        "shared": False,
        "keyCnt": 0,
        "expires": True,
        "expiry": {
            "duration": 0,
            "remaining": 10,
            "deleteSession": False,
            "extendOnSetAdd": False,
            "extendOnGet": False,
            "maxLifetime": 10,
            "lifetimeRemaining": 10,
        },
    }
    uri = await recording_server(fake_server, [], lambda f: rsp("SH_INFO", st=1, **body))
    async with SessionClient(uri) as c:
        assert await c.session_info(4) == body


async def test_new_calls_raise_status_errors(fake_server: Any) -> None:
    uri = await recording_server(fake_server, [], lambda f: rsp(command_of(f), st=42))
    async with SessionClient(uri) as c:
        for call in (c.touch(1), c.owner_sessions("a" * 300), c.owner_end("a" * 300)):
            with pytest.raises(ResponseError) as e:
                await call
            assert e.value.st == Status.ValueSize
        with pytest.raises(ResponseError):
            await c.create_session(owner="a" * 300)


async def test_tokens_int_str_and_session_go_out_as_numbers(fake_server: Any) -> None:
    frames: List[str] = []
    uri = await recording_server(fake_server, frames)
    big = 2**64 - 1
    async with SessionClient(uri) as c:
        await c.count(big)
        await c.count(str(big))
        await c.count(Session(big))
        await c.count("not-a-token")  # passed through: the server decides
        await c.get("one", 7)
        await c.get(("a", "b"), 7)
        await c.rmv(["a"], 7)
        await c.contains({"a": 1}, 7)  # a mapping's names
    tkns = [params_of(f)["tkn"] for f in frames]
    assert tkns == [big, big, big, "not-a-token", 7, 7, 7, 7]
    assert [params_of(f).get("keys") for f in frames[4:]] == [["one"], ["a", "b"], ["a"], ["a"]]
    assert f'"tkn":{big}' in frames[1]  # a JSON number, not a string


async def test_save_load_statuses(fake_server: Any) -> None:
    replies = {
        "SH_SAVE": rsp("SH_SAVE", st=121, name="d", duration=3, sessions=1, keys=2),
        "SH_LOAD": rsp("SH_LOAD", st=141, name="d", sessions=1, keys=2),
    }
    frames: List[str] = []
    uri = await recording_server(fake_server, frames, lambda f: replies[command_of(f)])
    async with SessionClient(uri) as c:
        assert await c.save("d") == {"name": "d", "duration": 3, "sessions": 1, "keys": 2}
        assert await c.save("d", [1, "2", Session(3)]) == {
            "name": "d",
            "duration": 3,
            "sessions": 1,
            "keys": 2,
        }
        assert await c.save("d", 5) is not None
        assert await c.load("d") == {"name": "d", "sessions": 1, "keys": 2}
    assert [json.loads(f) for f in frames] == [
        {"SH_SAVE": {"name": "d"}},
        {"SH_SAVE": {"name": "d", "tkns": [1, 2, 3]}},
        {"SH_SAVE": {"name": "d", "tkns": [5]}},
        {"SH_LOAD": {"name": "d"}},
    ]


async def test_save_answered_with_ok_is_not_success(fake_server: Any) -> None:
    """SH_SAVE succeeds with 121 and SH_LOAD with 141; plain Ok (1) is not theirs."""
    uri = await recording_server(fake_server, [], lambda f: rsp(command_of(f), st=1))
    async with SessionClient(uri) as c:
        with pytest.raises(ResponseError) as e:
            await c.save("d")
        assert e.value.st == Status.Ok
        with pytest.raises(ResponseError):
            await c.load("d")


# ------------------------------------------------------------- argument checking


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(durationSeconds=-1),
        dict(deleteSession=True),
        dict(extendOnSetAdd=True),
        dict(extendOnGet=True),
        dict(deleteSessionOnExpire=True),
        dict(shared=True),
        dict(name=""),
        dict(name="x" * 257),
        dict(name="é" * 129),  # 258 bytes of UTF-8
        dict(durationSeconds=10, shared=True),
    ],
)
async def test_create_session_value_errors(kwargs: Any) -> None:
    c = SessionClient()  # never opened: checks come before any I/O
    with pytest.raises(ValueError):
        await c.create_session(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(maxLifetime=60, deleteSession=True),
        dict(maxLifetime=60, extendOnGet=True),
        dict(maxLifetime=60, durationSeconds=-1),
        dict(maxLifetime=60, shared=True),
    ],
)
async def test_create_session_value_errors_with_lifetime(kwargs: Any) -> None:
    """A lifetime is not an idle duration: the flags still need durationSeconds."""
    with pytest.raises(ValueError):
        await SessionClient().create_session(**kwargs)


@pytest.mark.parametrize("keys", [["a"], "a", {1: "a"}])
async def test_create_session_keys_type(keys: Any) -> None:
    with pytest.raises(TypeError):
        await SessionClient().create_session(keys=keys)


@pytest.mark.parametrize("slide", [1, "false", None])
async def test_touch_slide_type(slide: Any) -> None:
    with pytest.raises(TypeError):
        await SessionClient().touch(1, slide=slide)


@pytest.mark.parametrize("duration", [1.5, "10", True, None])
async def test_create_session_duration_type(duration: Any) -> None:
    with pytest.raises(TypeError):
        await SessionClient().create_session(duration)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "x" * 129, "ü"])
async def test_dataset_name_value_errors(name: str) -> None:
    c = SessionClient()
    with pytest.raises(ValueError):
        await c.save(name)
    with pytest.raises(ValueError):
        await c.load(name)


async def test_open_session_name_errors() -> None:
    c = SessionClient()
    with pytest.raises(ValueError):
        await c.open_session("")
    with pytest.raises(ValueError):
        await c.open_session("n" * 257)
    with pytest.raises(TypeError):
        await c.open_session(5)  # type: ignore[arg-type]


async def test_key_argument_errors(fake_server: Any) -> None:
    uri = await recording_server(fake_server, [])
    async with SessionClient(uri) as c:
        with pytest.raises(TypeError):
            await c.set(["a"], 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await c.set({1: "a"}, 1)  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            await c.get([1, 2], 1)  # type: ignore[list-item]
        with pytest.raises(TypeError):
            await c.rmv(5, 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await c.count(True)
        with pytest.raises(ValueError):
            await c.set({"f": float("nan")}, 1)
        with pytest.raises(TypeError):
            await c.set({"s": {1, 2}}, 1)
        with pytest.raises(UnicodeEncodeError):
            await c.set({"bad": "\ud800"}, 1)
        # None of that reached the socket or broke it.
        assert await c.count(1) == 0
        await c.set({"ok": 1}, 1)
        assert c.is_open


# ------------------------------------------------------------- replies and errors


async def test_response_error_carries_status_name_and_raw_reply(fake_server: Any) -> None:
    reply = {"SH_GET_RSP": {"st": 100, "tkn": 9, "m": "no session"}}
    uri = await recording_server(fake_server, [], lambda f: json.dumps(reply))
    async with SessionClient(uri) as c:
        with pytest.raises(ResponseError) as e:
            await c.get(["a"], 9)
    err = e.value
    assert err.st == 100 and err.st == Status.SessionNotExist
    assert err.st_name == "SessionNotExist"
    assert err.command == "SH_GET"
    assert err.message == "no session"
    assert err.response == reply
    assert err.body == reply["SH_GET_RSP"]
    assert "SessionNotExist" in str(err)


async def test_unknown_status_value(fake_server: Any) -> None:
    uri = await recording_server(fake_server, [], lambda f: rsp(command_of(f), st=777))
    async with SessionClient(uri) as c:
        with pytest.raises(ResponseError) as e:
            await c.count(1)
    assert e.value.st == 777 and e.value.st_name == "Status<777>"


async def test_err_reply_is_a_response_error(fake_server: Any) -> None:
    uri = await recording_server(
        fake_server, [], lambda f: json.dumps({"ERR": {"st": 3, "m": "bad json"}})
    )
    async with SessionClient(uri) as c:
        with pytest.raises(ResponseError) as e:
            await c.count(1)
        assert e.value.st == Status.JsonInvalid
        assert c.is_open  # ERR is a reply in order; the connection is fine


async def test_pipelining_and_order(fake_server: Any) -> None:
    """The server sees all requests before answering any; each caller still
    gets its own reply."""
    n = 50

    async def handler(ws: Any) -> None:
        frames = [await ws.recv() for _ in range(n)]
        for f in frames:
            p = params_of(f)
            await ws.send(rsp("SH_GET", st=1, tkn=p["tkn"], keys={p["keys"][0]: p["tkn"]}))

    uri = await fake_server(handler)
    async with SessionClient(uri) as c:
        results = await asyncio.gather(*(c.get(f"k{i}", i) for i in range(n)))
    assert results == [{f"k{i}": i} for i in range(n)]


async def test_cancelled_call_does_not_shift_replies(fake_server: Any) -> None:
    release = asyncio.Event()

    async def handler(ws: Any) -> None:
        async for frame in ws:
            p = params_of(frame)
            if p["tkn"] == 1:
                await release.wait()
            await ws.send(rsp("SH_COUNT", st=1, tkn=p["tkn"], cnt=p["tkn"] * 10))

    uri = await fake_server(handler)
    async with SessionClient(uri) as c:
        slow = asyncio.ensure_future(c.count(1))
        await asyncio.sleep(0.05)
        slow.cancel()
        later = asyncio.ensure_future(c.count(2))
        await asyncio.sleep(0.05)
        release.set()
        assert await asyncio.wait_for(later, 5) == 20
        assert await c.count(3) == 30
        assert slow.cancelled()


async def test_pushed_events_between_replies_are_not_taken_for_replies(
    fake_server: Any,
) -> None:
    """A connection that subscribed gets SH_EVENT messages between its answers
    (this client never subscribes its request connection, but a server may
    push anyway): they are set aside by name, and every call still gets its
    own reply."""
    event = json.dumps({"SH_EVENT": {"event": "created", "tkn": 5, "at": 1, "cursor": "c"}})

    async def handler(ws: Any) -> None:
        await ws.send(event)  # before any request
        async for frame in ws:
            p = params_of(frame)
            for _ in range(p["tkn"] % 3):
                await ws.send(event)
            await ws.send(rsp("SH_COUNT", st=1, tkn=p["tkn"], cnt=p["tkn"] * 10))
            await ws.send(event)

    uri = await fake_server(handler)
    async with SessionClient(uri) as c:
        results = await asyncio.gather(*(c.count(i) for i in range(50)))
        assert results == [i * 10 for i in range(50)]
        assert c.is_open


# --------------------------------------------------------------- broken contract


@pytest.mark.parametrize(
    "bad_reply",
    [
        rsp("SH_GET", st=1, tkn=1, keys={}),  # answers another command
        "not json",
        "[1,2]",
        json.dumps({"SH_COUNT_RSP": {"st": 1}, "X": {}}),
        b"\x00binary",
    ],
)
async def test_broken_reply_fails_everything(fake_server: Any, bad_reply: Any) -> None:
    async def handler(ws: Any) -> None:
        await ws.recv()
        await ws.recv()
        await ws.send(bad_reply)
        await ws.wait_closed()

    uri = await fake_server(handler)
    async with SessionClient(uri) as c:
        calls = [asyncio.ensure_future(c.count(1)), asyncio.ensure_future(c.count(2))]
        for call in calls:
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(call, 5)
        assert isinstance(calls[0].exception(), ProtocolError)
        with pytest.raises(ConnectionError):
            await c.count(3)
        assert not c.is_open


async def test_unsolicited_reply_fails_the_connection(fake_server: Any) -> None:
    async def handler(ws: Any) -> None:
        await ws.send(rsp("SH_COUNT", st=1, cnt=0))
        await ws.wait_closed()

    uri = await fake_server(handler)
    async with SessionClient(uri) as c:
        for _ in range(100):
            if not c.is_open:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(ProtocolError):
            await c.count(1)


async def test_server_closing_fails_waiting_calls_and_the_next_call_reconnects(
    fake_server: Any,
) -> None:
    """The calls the server took but never answered fail and are not sent again
    (the client cannot know whether they ran); the next call goes out on a new
    connection."""
    connections: List[List[int]] = []

    async def handler(ws: Any) -> None:
        seen: List[int] = []
        connections.append(seen)
        if len(connections) == 1:
            seen.append(params_of(await ws.recv())["tkn"])
            seen.append(params_of(await ws.recv())["tkn"])
            await ws.close()
            return
        async for frame in ws:
            seen.append(params_of(frame)["tkn"])
            await ws.send(rsp("SH_COUNT", st=1, tkn=params_of(frame)["tkn"], cnt=7))

    uri = await fake_server(handler)
    async with SessionClient(uri) as c:
        calls = [asyncio.ensure_future(c.count(i)) for i in range(2)]
        for call in calls:
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(call, 5)
        assert not c.is_open
        assert await c.count(3) == 7
        assert c.is_open
    assert connections == [[0, 1], [3]]


# ---------------------------------------------------------------- connection life


async def test_call_before_open() -> None:
    with pytest.raises(ConnectionError):
        await SessionClient().count(1)


async def test_open_needs_uri() -> None:
    with pytest.raises(ValueError):
        await SessionClient().open()


async def test_open_refused() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError):
        await SessionClient().open(f"ws://127.0.0.1:{port}/")


async def test_open_not_websocket() -> None:
    async def handle(reader: Any, writer: Any) -> None:
        await reader.read(1000)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionError):
            await SessionClient().open(f"ws://127.0.0.1:{port}/")
    finally:
        srv.close()
        await srv.wait_closed()


async def test_open_twice_close_twice_and_calls_after_close(fake_server: Any) -> None:
    uri = await recording_server(fake_server, [])
    c = SessionClient()
    await c.open(uri)
    assert c.is_open
    with pytest.raises(RuntimeError):
        await c.open(uri)
    await c.close()
    await c.close()
    assert not c.is_open
    with pytest.raises(ConnectionError):
        await c.count(1)


async def test_close_fails_waiting_calls(fake_server: Any) -> None:
    async def handler(ws: Any) -> None:
        async for _ in ws:
            pass  # never answers

    uri = await fake_server(handler)
    c = SessionClient()
    await c.listen(uri)  # the older name of open()
    call = asyncio.ensure_future(c.count(1))
    await asyncio.sleep(0.05)
    await c.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(call, 5)


async def test_context_manager_without_uri(fake_server: Any) -> None:
    uri = await recording_server(fake_server, [])
    async with SessionClient() as c:
        assert not c.is_open
        await c.open(uri)
        await c.count(1)
    assert not c.is_open


# ------------------------------------------------------------------- reconnecting


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def counting_server(port: int, connections: List[List[str]], close_first: int = 0) -> Any:
    """A fake server on `port` that records each connection's frames and answers
    SH_COUNT with ``cnt`` = the connection's number (1, 2, ...). The first
    `close_first` connections are closed by the server after their first frame,
    unanswered."""
    import websockets

    async def handler(ws: Any, *_: Any) -> None:
        seen: List[str] = []
        connections.append(seen)
        number = len(connections)
        try:
            async for frame in ws:
                seen.append(frame)
                if number <= close_first:
                    await ws.close()
                    return
                await ws.send(rsp(command_of(frame), st=1, tkn=params_of(frame)["tkn"], cnt=number))
        except Exception:
            pass

    return await websockets.serve(handler, "127.0.0.1", port)


async def stop(server: Any) -> None:
    server.close()
    await server.wait_closed()


async def test_calls_during_an_outage_share_one_new_connection(fake_server: Any) -> None:
    """The server drops the connection; the many calls made next all go out on
    one new connection, not one each."""
    port = free_port()
    connections: List[List[str]] = []
    srv = await counting_server(port, connections, close_first=1)
    try:
        async with SessionClient(f"ws://127.0.0.1:{port}/") as c:
            with pytest.raises(ConnectionError):
                await c.count(0)
            assert await asyncio.gather(*(c.count(i) for i in range(1, 21))) == [2] * 20
    finally:
        await stop(srv)
    assert len(connections) == 2
    assert [params_of(f)["tkn"] for f in connections[1]] == list(range(1, 21))


async def test_a_call_waits_for_a_server_that_comes_back() -> None:
    """A call made while nobody listens retries with backoff and goes out once
    the server is back on its port; nothing is sent twice."""
    port = free_port()
    connections: List[List[str]] = []
    srv = await counting_server(port, connections)
    c = SessionClient(f"ws://127.0.0.1:{port}/", reconnect_timeout=10)
    await c.open()
    try:
        assert await c.count(1) == 1
        await stop(srv)  # closes the connection too
        for _ in range(100):
            if not c.is_open:
                break
            await asyncio.sleep(0.02)
        call = asyncio.ensure_future(c.count(2))
        await asyncio.sleep(0.5)
        assert not call.done()
        srv = await counting_server(port, connections)
        assert await asyncio.wait_for(call, 5) == 2
        assert c.is_open
    finally:
        await c.close()
        await stop(srv)
    assert [[params_of(f)["tkn"] for f in frames] for frames in connections] == [[1], [2]]


async def test_reconnecting_backs_off_and_gives_up_after_the_timeout() -> None:
    """Against a port that accepts TCP but never speaks WebSocket, a call tries
    a handful of times in its second (not hundreds), then raises."""
    port = free_port()
    connections: List[List[str]] = []
    srv = await counting_server(port, connections, close_first=1)
    attempts = 0

    async def refuse(reader: Any, writer: Any) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()

    c = SessionClient(f"ws://127.0.0.1:{port}/", reconnect_timeout=1.0)
    await c.open()
    try:
        with pytest.raises(ConnectionError):
            await c.count(0)  # the server closes the connection
        await stop(srv)
        tcp = await asyncio.start_server(refuse, "127.0.0.1", port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectionError, match="gave up after 1s"):
            await c.count(1)
        took = loop.time() - started
        tcp.close()
        await tcp.wait_closed()
    finally:
        await c.close()
    assert 0.9 <= took < 5, took
    assert 3 <= attempts <= 12, attempts


async def test_reconnect_timeout_zero_tries_once() -> None:
    port = free_port()
    connections: List[List[str]] = []
    srv = await counting_server(port, connections, close_first=1)
    attempts = 0

    async def refuse(reader: Any, writer: Any) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()

    async with SessionClient(f"ws://127.0.0.1:{port}/", reconnect_timeout=0) as c:
        with pytest.raises(ConnectionError):
            await c.count(0)
        await stop(srv)
        tcp = await asyncio.start_server(refuse, "127.0.0.1", port)
        try:
            for _ in range(2):
                with pytest.raises(ConnectionError):
                    await c.count(1)
        finally:
            tcp.close()
            await tcp.wait_closed()
    assert attempts == 2  # one per call


async def test_reconnect_false_keeps_the_connection_dead() -> None:
    port = free_port()
    connections: List[List[str]] = []
    srv = await counting_server(port, connections, close_first=1)
    try:
        async with SessionClient(f"ws://127.0.0.1:{port}/", reconnect=False) as c:
            with pytest.raises(ConnectionError):
                await c.count(0)
            for _ in range(3):
                with pytest.raises(ConnectionError):
                    await c.count(1)
            assert not c.is_open
    finally:
        await stop(srv)
    assert len(connections) == 1


async def test_close_ends_a_reconnection_in_progress() -> None:
    port = free_port()
    connections: List[List[str]] = []
    srv = await counting_server(port, connections, close_first=1)
    c = SessionClient(f"ws://127.0.0.1:{port}/", reconnect_timeout=None)
    await c.open()
    with pytest.raises(ConnectionError):
        await c.count(0)
    await stop(srv)  # nobody listens: the next call would retry for ever
    waiting = [asyncio.ensure_future(c.count(i)) for i in range(3)]
    await asyncio.sleep(0.3)
    assert not any(w.done() for w in waiting)
    await c.close()
    for w in waiting:
        with pytest.raises(ConnectionError, match="closed by client"):
            await asyncio.wait_for(w, 5)
    with pytest.raises(ConnectionError):
        await c.count(9)


async def test_a_cancelled_caller_does_not_cancel_the_reconnection() -> None:
    port = free_port()
    connections: List[List[str]] = []
    srv = await counting_server(port, connections, close_first=1)
    async with SessionClient(f"ws://127.0.0.1:{port}/", reconnect_timeout=10) as c:
        with pytest.raises(ConnectionError):
            await c.count(0)
        await stop(srv)
        impatient = asyncio.ensure_future(c.count(1))
        patient = asyncio.ensure_future(c.count(2))
        await asyncio.sleep(0.2)
        impatient.cancel()
        srv = await counting_server(port, connections)
        try:
            assert await asyncio.wait_for(patient, 5) == 2
        finally:
            await stop(srv)
    assert impatient.cancelled()
    assert [params_of(f)["tkn"] for f in connections[1]] == [2]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"reconnect": 1}, TypeError),
        ({"reconnect": "yes"}, TypeError),
        ({"reconnect_timeout": -1}, ValueError),
        ({"reconnect_timeout": float("nan")}, ValueError),
    ],
)
async def test_reconnect_argument_errors(kwargs: Any, error: Any) -> None:
    with pytest.raises(error):
        SessionClient("ws://127.0.0.1:1/", **kwargs)


# ------------------------------------------------- versions, compare-and-set, incr


def versioned_reply(version: int = 5) -> Any:
    """A fake server's answer to any command: Ok with the fields each method reads
    and, when the request asked for one, ``version`` (as the real server adds it)."""

    def reply(frame: str) -> str:
        command, p = command_of(frame), params_of(frame)
        body: dict = {"st": 1, "tkn": p.get("tkn", 11)}
        body.update(
            {
                "SH_GET": {"keys": {"a": 1}},
                "SH_COUNT": {"cnt": 3},
                "SH_CONTAINS": {"contains": ["a"]},
                "SH_KEYS": {"keys": ["a", "b"]},
                "SH_CLEAR": {"cnt": 2},
                "SH_CLEAR_SET": {"cnt": 4},
                "SH_TOUCH": {"ttlMs": 1500},
                "SH_INCR": {"key": p.get("key"), "value": 42},
                "SH_INFO": {"shared": False, "keyCnt": 1, "expires": False},
                "SH_OPEN": {"name": p.get("name")},
            }.get(command, {})
        )
        if p.get("withVersion") is True or "ifVersion" in p:
            body["version"] = version
        return rsp(command, **body)

    return reply


async def test_calls_without_version_parameters_send_the_same_bytes(fake_server: Any) -> None:
    """Key commands, touch, info and open without withVersion/ifVersion: the exact
    frames and return values of this client before versions existed."""
    frames: List[str] = []
    uri = await recording_server(fake_server, frames, versioned_reply())
    async with SessionClient(uri) as c:
        assert await c.set({"a": 1}, 9) is None
        assert await c.add({"a": 1}, 9) is None
        assert await c.get(["a"], 9) == {"a": 1}
        assert await c.rmv("a", 9) is None
        assert await c.count(9) == 3
        assert await c.contains(["a"], 9) == ["a"]
        assert await c.keys(9) == ["a", "b"]
        assert await c.clear(9) == 2
        assert await c.clear_set({"b": 2}, 9) == 4
        assert await c.touch(9) == 1500
        assert await c.session_info(9) == {
            "tkn": 9,
            "shared": False,
            "keyCnt": 1,
            "expires": False,
        }
        s = await c.open_session("shop")
        assert s.version is None and repr(s) == "Session(tkn=11, name='shop', shared=True)"
    assert frames == [
        '{"SH_SET":{"tkn":9,"keys":{"a":1}}}',
        '{"SH_ADD":{"tkn":9,"keys":{"a":1}}}',
        '{"SH_GET":{"tkn":9,"keys":["a"]}}',
        '{"SH_RMV":{"tkn":9,"keys":["a"]}}',
        '{"SH_COUNT":{"tkn":9}}',
        '{"SH_CONTAINS":{"tkn":9,"keys":["a"]}}',
        '{"SH_KEYS":{"tkn":9}}',
        '{"SH_CLEAR":{"tkn":9}}',
        '{"SH_CLEAR_SET":{"tkn":9,"keys":{"b":2}}}',
        '{"SH_TOUCH":{"tkn":9,"slide":true}}',
        '{"SH_INFO":{"tkn":9}}',
        '{"SH_OPEN":{"name":"shop"}}',
    ]


async def test_with_version_request_and_return_shapes(fake_server: Any) -> None:
    frames: List[str] = []
    uri = await recording_server(fake_server, frames, versioned_reply(5))
    async with SessionClient(uri) as c:
        s = await c.create_session(withVersion=True)
        assert (s.tkn, s.version) == (11, 5)
        assert repr(s) == "Session(tkn=11, name=None, shared=False, version=5)"
        assert s == Session(11)  # the version is a snapshot, not the session's identity
        opened = await c.open_session("shop", withVersion=True)
        assert (opened.tkn, opened.name, opened.shared, opened.version) == (11, "shop", True, 5)
        assert (await c.session_info(9, withVersion=True))["version"] == 5

        got = await c.get(["a"], 9, withVersion=True)
        assert isinstance(got, VersionedKeys)
        assert (got.keys, got.version) == ({"a": 1}, 5)
        keys, version = got  # unpacks as a pair
        assert (keys, version) == ({"a": 1}, 5)

        assert await c.set({"a": 1}, 9, withVersion=True) == 5
        assert await c.add({"a": 1}, 9, withVersion=True) == 5
        assert await c.rmv(["a"], 9, withVersion=True) == 5
        for result, value in [
            (await c.count(9, withVersion=True), 3),
            (await c.contains("a", 9, withVersion=True), ["a"]),
            (await c.keys(9, withVersion=True), ["a", "b"]),
            (await c.clear(9, withVersion=True), 2),
            (await c.clear_set({}, 9, withVersion=True), 4),
            (await c.touch(9, slide=False, withVersion=True), 1500),
            (await c.incr("n", 9, withVersion=True), 42),
        ]:
            assert isinstance(result, Versioned)
            assert (result.value, result.version) == (value, 5)
            assert tuple(result) == (value, 5)
    sent = [json.loads(f) for f in frames]
    assert sent == [
        {"SH_NEW": {"withVersion": True}},
        {"SH_OPEN": {"name": "shop", "withVersion": True}},
        {"SH_INFO": {"tkn": 9, "withVersion": True}},
        {"SH_GET": {"tkn": 9, "keys": ["a"], "withVersion": True}},
        {"SH_SET": {"tkn": 9, "keys": {"a": 1}, "withVersion": True}},
        {"SH_ADD": {"tkn": 9, "keys": {"a": 1}, "withVersion": True}},
        {"SH_RMV": {"tkn": 9, "keys": ["a"], "withVersion": True}},
        {"SH_COUNT": {"tkn": 9, "withVersion": True}},
        {"SH_CONTAINS": {"tkn": 9, "keys": ["a"], "withVersion": True}},
        {"SH_KEYS": {"tkn": 9, "withVersion": True}},
        {"SH_CLEAR": {"tkn": 9, "withVersion": True}},
        {"SH_CLEAR_SET": {"tkn": 9, "keys": {}, "withVersion": True}},
        {"SH_TOUCH": {"tkn": 9, "slide": False, "withVersion": True}},
        {"SH_INCR": {"tkn": 9, "key": "n", "by": 1, "withVersion": True}},
    ]


async def test_if_version_request_and_return_shapes(fake_server: Any) -> None:
    """ifVersion alone is enough for the writes to return the new version; it goes
    out as given, and withVersion only when asked for too."""
    frames: List[str] = []
    uri = await recording_server(fake_server, frames, versioned_reply(8))
    big = 2**64 - 1
    async with SessionClient(uri) as c:
        assert await c.set({"a": 1}, 9, ifVersion=7) == 8
        assert await c.add({"a": 1}, 9, ifVersion=0) == 8
        assert await c.rmv(["a"], "9", ifVersion=big) == 8
        assert await c.clear(Session(9), ifVersion=7) == Versioned(2, 8)
        assert await c.clear_set({"b": 2}, 9, ifVersion=7) == Versioned(4, 8)
        assert await c.incr("n", 9, -3, ifVersion=7) == Versioned(42, 8)
        assert await c.set({"a": 1}, 9, withVersion=True, ifVersion=7) == 8
    assert [json.loads(f) for f in frames] == [
        {"SH_SET": {"tkn": 9, "keys": {"a": 1}, "ifVersion": 7}},
        {"SH_ADD": {"tkn": 9, "keys": {"a": 1}, "ifVersion": 0}},
        {"SH_RMV": {"tkn": 9, "keys": ["a"], "ifVersion": big}},
        {"SH_CLEAR": {"tkn": 9, "ifVersion": 7}},
        {"SH_CLEAR_SET": {"tkn": 9, "keys": {"b": 2}, "ifVersion": 7}},
        {"SH_INCR": {"tkn": 9, "key": "n", "by": -3, "ifVersion": 7}},
        {"SH_SET": {"tkn": 9, "keys": {"a": 1}, "withVersion": True, "ifVersion": 7}},
    ]
    assert f'"ifVersion":{big}' in frames[2]  # a JSON number, not a string


async def test_incr_request_shapes(fake_server: Any) -> None:
    frames: List[str] = []
    uri = await recording_server(fake_server, frames, versioned_reply())
    async with SessionClient(uri) as c:
        assert await c.incr("n", 9) == 42
        assert await c.incr("n", 9, 5) == 42
        assert await c.incr("n", 9, by=-(2**63)) == 42
        assert await c.incr("n", 9, by=2**63 - 1) == 42
        assert await c.incr("", "9", 0) == 42
    assert [json.loads(f) for f in frames] == [
        {"SH_INCR": {"tkn": 9, "key": "n", "by": 1}},
        {"SH_INCR": {"tkn": 9, "key": "n", "by": 5}},
        {"SH_INCR": {"tkn": 9, "key": "n", "by": -(2**63)}},
        {"SH_INCR": {"tkn": 9, "key": "n", "by": 2**63 - 1}},
        {"SH_INCR": {"tkn": 9, "key": "", "by": 0}},
    ]


@pytest.mark.parametrize(
    "command, call",
    [
        ("SH_SET", lambda c: c.set({"a": 1}, 9, ifVersion=3)),
        ("SH_ADD", lambda c: c.add({"a": 1}, 9, ifVersion=3)),
        ("SH_RMV", lambda c: c.rmv("a", 9, ifVersion=3)),
        ("SH_CLEAR", lambda c: c.clear(9, ifVersion=3)),
        ("SH_CLEAR_SET", lambda c: c.clear_set({}, 9, ifVersion=3)),
        ("SH_INCR", lambda c: c.incr("n", 9, ifVersion=3)),
    ],
)
async def test_version_mismatch_carries_the_current_version(
    fake_server: Any, command: str, call: Any
) -> None:
    reply = {command + "_RSP": {"st": 104, "tkn": 9, "version": 12}}
    uri = await recording_server(fake_server, [], lambda f: json.dumps(reply))
    async with SessionClient(uri) as c:
        with pytest.raises(VersionMismatch) as e:
            await call(c)
        assert c.is_open  # a refused write, not a broken connection
    err = e.value
    assert isinstance(err, ResponseError)
    assert err.version == 12
    assert err.st == 104 and err.st == Status.VersionMismatch
    assert err.st_name == "VersionMismatch" and "VersionMismatch" in str(err)
    assert (err.command, err.response, err.body) == (command, reply, reply[command + "_RSP"])


@pytest.mark.parametrize("version", [None, "12", True, 1.5])
async def test_version_mismatch_without_a_usable_version(fake_server: Any, version: Any) -> None:
    body: dict = {"st": 104, "tkn": 9}
    if version is not None:
        body["version"] = version
    uri = await recording_server(fake_server, [], lambda f: rsp("SH_SET", **body))
    async with SessionClient(uri) as c:
        with pytest.raises(VersionMismatch) as e:
            await c.set({"a": 1}, 9, ifVersion=3)
    assert e.value.version is None


async def test_other_statuses_are_not_version_mismatches(fake_server: Any) -> None:
    """Only 104 is the retryable one: 43/44 keep their names and stay plain ResponseErrors."""
    replies = iter([43, 44, 100])
    uri = await recording_server(
        fake_server, [], lambda f: rsp(command_of(f), st=next(replies), tkn=9, version=4)
    )
    async with SessionClient(uri) as c:
        for st, name in [
            (43, "ValueNotInteger"),
            (44, "IntegerOverflow"),
            (100, "SessionNotExist"),
        ]:
            with pytest.raises(ResponseError) as e:
                await c.incr("n", 9, ifVersion=4)
            assert not isinstance(e.value, VersionMismatch)
            assert e.value.st == st and e.value.st_name == name


async def test_status_values_of_versions_and_incr() -> None:
    assert (Status.ValueNotInteger, Status.IntegerOverflow, Status.VersionMismatch) == (43, 44, 104)


async def test_reply_without_the_version_asked_for(fake_server: Any) -> None:
    """A server from before versions ignores withVersion/ifVersion as unknown
    parameters: the call says so instead of returning a version it never got,
    and the connection stays usable."""
    uri = await recording_server(
        fake_server, [], lambda f: rsp(command_of(f), st=1, tkn=9, keys={}, cnt=1)
    )
    async with SessionClient(uri) as c:
        for call in (
            lambda: c.set({"a": 1}, 9, ifVersion=3),
            lambda: c.get("a", 9, withVersion=True),
            lambda: c.count(9, withVersion=True),
            lambda: c.create_session(withVersion=True),
        ):
            with pytest.raises(ProtocolError, match="without a version"):
                await call()
        assert await c.count(9) == 1
        assert c.is_open


@pytest.mark.parametrize("flag", [1, 0, "true", None])
async def test_with_version_must_be_a_bool(fake_server: Any, flag: Any) -> None:
    frames: List[str] = []
    uri = await recording_server(fake_server, frames)
    async with SessionClient(uri) as c:
        for call in (
            lambda: c.create_session(withVersion=flag),
            lambda: c.open_session("shop", withVersion=flag),
            lambda: c.session_info(9, withVersion=flag),
            lambda: c.touch(9, withVersion=flag),
            lambda: c.get("a", 9, withVersion=flag),
            lambda: c.set({"a": 1}, 9, withVersion=flag),
            lambda: c.add({"a": 1}, 9, withVersion=flag),
            lambda: c.rmv("a", 9, withVersion=flag),
            lambda: c.count(9, withVersion=flag),
            lambda: c.contains("a", 9, withVersion=flag),
            lambda: c.keys(9, withVersion=flag),
            lambda: c.clear(9, withVersion=flag),
            lambda: c.clear_set({}, 9, withVersion=flag),
            lambda: c.incr("n", 9, withVersion=flag),
        ):
            with pytest.raises(TypeError, match="withVersion"):
                await call()
        assert frames == []  # checked before anything was sent


@pytest.mark.parametrize(
    "if_version, error",
    [
        (True, TypeError),
        ("4", TypeError),
        (4.0, TypeError),
        (-1, ValueError),
        (2**64, ValueError),
    ],
)
async def test_if_version_must_be_a_u64(fake_server: Any, if_version: Any, error: Any) -> None:
    frames: List[str] = []
    uri = await recording_server(fake_server, frames)
    async with SessionClient(uri) as c:
        for call in (
            lambda: c.set({"a": 1}, 9, ifVersion=if_version),
            lambda: c.add({"a": 1}, 9, ifVersion=if_version),
            lambda: c.rmv("a", 9, ifVersion=if_version),
            lambda: c.clear(9, ifVersion=if_version),
            lambda: c.clear_set({}, 9, ifVersion=if_version),
            lambda: c.incr("n", 9, ifVersion=if_version),
        ):
            with pytest.raises(error, match="ifVersion"):
                await call()
        assert frames == []


@pytest.mark.parametrize(
    "args, error",
    [
        (("n", 9, 1.0), TypeError),
        (("n", 9, "1"), TypeError),
        (("n", 9, True), TypeError),
        (("n", 9, None), TypeError),
        (("n", 9, 2**63), ValueError),
        (("n", 9, -(2**63) - 1), ValueError),
        ((5, 9), TypeError),
        ((["n"], 9), TypeError),
    ],
)
async def test_incr_argument_errors(fake_server: Any, args: Any, error: Any) -> None:
    frames: List[str] = []
    uri = await recording_server(fake_server, frames)
    async with SessionClient(uri) as c:
        with pytest.raises(error):
            await c.incr(*args)
        assert frames == [] and c.is_open
