"""Session commands against the real server: new, open, end, end all, exists,
info, info all, and their error statuses."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from ndb.sessionclient import ResponseError, Session, SessionClient, Status

pytestmark = pytest.mark.asyncio


async def test_create_session_defaults(client: SessionClient) -> None:
    s = await client.create_session()
    assert isinstance(s, Session)
    assert isinstance(s.tkn, int) and 0 < s.tkn < 2**64
    assert s.token == s.tkn and s.isValid
    assert s.name is None and s.shared is False
    info = await client.session_info(s.tkn)
    assert info == {"tkn": s.tkn, "shared": False, "keyCnt": 0, "expires": False}


async def test_tokens_are_distinct_and_not_sequential(client: SessionClient) -> None:
    tkns = [(await client.create_session()).tkn for _ in range(20)]
    assert len(set(tkns)) == 20
    diffs = {b - a for a, b in zip(tkns, tkns[1:])}
    assert len(diffs) > 1


async def test_named_session_not_shared(client: SessionClient, unique: Callable[..., str]) -> None:
    name = unique("plain")
    a = await client.create_session(name=name)
    b = await client.create_session(name=name)  # not registered: the name may repeat
    assert a.name == name and a.tkn != b.tkn
    info = await client.session_info(a.tkn)
    assert info["name"] == name and info["shared"] is False
    with pytest.raises(ResponseError) as e:
        await client.open_session(name)
    assert e.value.st == Status.SessionOpenFail


async def test_shared_session_open_from_another_connection(
    client: SessionClient, server: Any, unique: Callable[..., str]
) -> None:
    name = unique("shared-é")
    s = await client.create_session(name=name, shared=True)
    assert s.shared and s.name == name
    async with SessionClient(server.uri) as other:
        opened = await other.open_session(name)
        assert opened.tkn == s.tkn and opened.name == name and opened.shared
        await other.set({"from": "other"}, opened.tkn)
    assert await client.get("from", s.tkn) == {"from": "other"}
    info = await client.session_info(s.tkn)
    assert info["shared"] is True and info["name"] == name


async def test_shared_name_taken_then_released(
    client: SessionClient, unique: Callable[..., str]
) -> None:
    name = unique("taken")
    s = await client.create_session(name=name, shared=True)
    with pytest.raises(ResponseError) as e:
        await client.create_session(name=name, shared=True)
    assert e.value.st == Status.SessionNewFail and e.value.st_name == "SessionNewFail"
    assert "SH_NEW_RSP" in e.value.response
    await client.end_session(s.tkn)
    with pytest.raises(ResponseError) as e:
        await client.open_session(name)
    assert e.value.st == Status.SessionOpenFail
    again = await client.create_session(name=name, shared=True)
    assert again.tkn != s.tkn


async def test_longest_name(client: SessionClient) -> None:
    name = "é" * 128  # 256 bytes of UTF-8
    s = await client.create_session(name=name, shared=True)
    assert (await client.open_session(name)).tkn == s.tkn
    await client.end_session(s)


async def test_open_session_unknown(client: SessionClient, unique: Callable[..., str]) -> None:
    with pytest.raises(ResponseError) as e:
        await client.open_session(unique("nobody"))
    assert e.value.st == Status.SessionOpenFail
    assert e.value.response["SH_OPEN_RSP"]["st"] == 102


async def test_expiry_settings_in_info(client: SessionClient) -> None:
    s = await client.create_session(60, deleteSession=True, extendOnSetAdd=True)
    info = await client.session_info(s.tkn)
    assert info["expires"] is True
    expiry = info["expiry"]
    assert set(expiry) == {
        "duration",
        "remaining",
        "deleteSession",
        "extendOnSetAdd",
        "extendOnGet",
    }
    assert expiry["duration"] == 60
    assert 0 <= expiry["remaining"] <= 60
    assert (expiry["deleteSession"], expiry["extendOnSetAdd"], expiry["extendOnGet"]) == (
        True,
        True,
        False,
    )


async def test_delete_session_on_expire_alias(client: SessionClient) -> None:
    s = await client.create_session(30, deleteSessionOnExpire=True, extendOnGet=True)
    expiry = (await client.session_info(s.tkn))["expiry"]
    assert expiry["deleteSession"] is True and expiry["extendOnGet"] is True


async def test_expired_session_deleted(client: SessionClient, unique: Callable[..., str]) -> None:
    name = unique("expiring")
    s = await client.create_session(1, deleteSession=True, name=name, shared=True)
    await client.set({"a": 1}, s.tkn)
    await asyncio.sleep(1.6)
    assert await client.session_exists([s.tkn]) == []
    with pytest.raises(ResponseError) as e:
        await client.get("a", s.tkn)
    assert e.value.st == Status.SessionNotExist
    # The name went with the session.
    with pytest.raises(ResponseError) as e:
        await client.open_session(name)
    assert e.value.st == Status.SessionOpenFail
    assert (await client.create_session(name=name, shared=True)).tkn != s.tkn


async def test_expired_session_kept_without_keys(client: SessionClient) -> None:
    s = await client.create_session(1)
    await client.set({"a": 1}, s.tkn)
    await asyncio.sleep(1.6)
    assert await client.session_exists(s.tkn) == [s.tkn]
    assert await client.get("a", s.tkn) == {}
    assert await client.count(s.tkn) == 0


async def test_sliding_expiry(client: SessionClient) -> None:
    """extendOnGet and extendOnSetAdd move the deadline to now + duration: a
    3 s session touched every second is alive after 4 s."""

    async def on_get() -> None:
        s = await client.create_session(3, extendOnGet=True)
        await client.set({"a": 1}, s.tkn)
        for _ in range(4):
            await asyncio.sleep(1)
            assert await client.get("a", s.tkn) == {"a": 1}

    async def on_set_add() -> None:
        s = await client.create_session(3, extendOnSetAdd=True)
        await client.set({"k": -1}, s.tkn)
        for i in range(4):
            await asyncio.sleep(1)
            if i % 2:
                await client.add({f"k{i}": i}, s.tkn)
            else:
                await client.set({f"k{i}": i}, s.tkn)
        expected = {"k": -1, "k0": 0, "k1": 1, "k2": 2, "k3": 3}
        assert await client.get(list(expected), s.tkn) == expected

    await asyncio.gather(on_get(), on_set_add())


async def test_end_session(client: SessionClient) -> None:
    s = await client.create_session()
    await client.set({"k": "v"}, s.tkn)
    await client.end_session(s.tkn)
    assert await client.session_exists([s.tkn]) == []
    with pytest.raises(ResponseError) as e:
        await client.end_session(s.tkn)
    assert e.value.st == Status.SessionNotExist


async def test_session_exists(client: SessionClient) -> None:
    a = await client.create_session()
    b = await client.create_session()
    gone = await client.create_session()
    await client.end_session(gone.tkn)
    # Request order is kept; str tokens and Session objects are accepted.
    assert await client.session_exists([b.tkn, gone.tkn, str(a.tkn), 0, b]) == [b.tkn, a.tkn, b.tkn]
    assert await client.session_exists([]) == []
    assert await client.session_exists(a) == [a.tkn]
    assert await client.session_exists(str(a.tkn)) == [a.tkn]
    assert await client.session_exists((t for t in [a.tkn])) == [a.tkn]


async def test_session_exists_skips_non_tokens(client: SessionClient) -> None:
    a = await client.create_session()
    not_tokens: Any = [-1, "abc", None, 1.5, "-3"]
    assert await client.session_exists([*not_tokens, a.tkn]) == [a.tkn]


# Server bug: a JSON integer beyond u64 (valid JSON) is answered with ERR st 3
# (JsonInvalid) instead of being treated as "not a token".
async def test_session_exists_skips_integer_beyond_u64(client: SessionClient) -> None:
    a = await client.create_session()
    assert await client.session_exists([2**64, a.tkn]) == [a.tkn]


async def test_session_info_errors(client: SessionClient) -> None:
    s = await client.create_session()
    await client.end_session(s.tkn)
    with pytest.raises(ResponseError) as e:
        await client.session_info(s.tkn)
    assert e.value.st == Status.SessionNotExist


async def test_end_all_and_info_all(fresh_server: Any) -> None:
    async with SessionClient(fresh_server.uri) as c:
        assert await c.session_info_all() == {"totalSessions": 0, "totalKeys": 0}
        sessions = [await c.create_session() for _ in range(10)]
        for i, s in enumerate(sessions):
            await c.set({f"k{j}": j for j in range(i)}, s.tkn)
        assert await c.session_info_all() == {"totalSessions": 10, "totalKeys": 45}
        named = await c.create_session(name="all-gone", shared=True)
        assert await c.end_all_sessions() == 11
        assert await c.session_info_all() == {"totalSessions": 0, "totalKeys": 0}
        assert await c.session_exists([s.tkn for s in sessions] + [named.tkn]) == []
        with pytest.raises(ResponseError) as e:
            await c.open_session("all-gone")
        assert e.value.st == Status.SessionOpenFail
        assert await c.end_all_sessions() == 0


@pytest.mark.parametrize(
    "bad_tkn, status",
    [
        (-1, Status.SessionTokenInvalid),
        (2**64, Status.SessionTokenInvalid),
        ("abc", Status.SessionTokenInvalid),
        ("-5", Status.SessionTokenInvalid),
        (1.5, Status.SessionTokenInvalid),
        (None, Status.SessionTokenInvalid),
        (0, Status.SessionNotExist),
        (2**64 - 1, Status.SessionNotExist),
    ],
)
async def test_bad_tokens(client: SessionClient, bad_tkn: Any, status: Status) -> None:
    for call in (client.end_session, client.session_info, client.count, client.keys, client.clear):
        with pytest.raises(ResponseError) as e:
            await call(bad_tkn)
        assert e.value.st == status, (call.__name__, e.value.response)
    assert client.is_open
