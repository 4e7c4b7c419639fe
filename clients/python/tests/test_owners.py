"""Owners, lifetimes, touch and create-with-keys against the real server
(the "Owners, lifetimes, touch, create-with-keys" section of the protocol
extensions): create_session's owner/keys/maxLifetime, touch, owner_sessions,
owner_end, what session_info reports, and the statuses of bad inputs."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict

import pytest

from ndb.sessionclient import ResponseError, SessionClient, Status

pytestmark = pytest.mark.asyncio


async def raw(client: SessionClient, command: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Send a request the API never builds (its checks are ahead of the wire),
    to see what the server itself answers."""
    return await client._conn.request(command, params)


async def created_in_order(client: SessionClient, n: int, **kwargs: Any) -> list:
    """n sessions, each created after the last was answered, a few ms apart so
    that "oldest first" does not hinge on sessions created in the same millisecond."""
    tkns = []
    for _ in range(n):
        tkns.append((await client.create_session(**kwargs)).tkn)
        await asyncio.sleep(0.005)
    return tkns


# ------------------------------------------------------------------ create_session


async def test_create_with_owner_keys_and_lifetime(
    client: SessionClient, unique: Callable[..., str]
) -> None:
    owner = unique("alice")
    keys = {"user": "alice", "cart": [1, 2], "n": 2**63, "nested": {"a": None}}
    s = await client.create_session(
        60, extendOnGet=True, owner=owner, keys=keys, maxLifetime=3600
    )
    assert s.isValid and s.owner == owner and s.name is None and not s.shared
    assert await client.get(list(keys), s.tkn) == keys
    info = await client.session_info(s.tkn)
    assert info["owner"] == owner and info["keyCnt"] == len(keys) and info["expires"] is True
    expiry = info["expiry"]
    assert (expiry["duration"], expiry["extendOnGet"], expiry["maxLifetime"]) == (60, True, 3600)
    assert 3590 <= expiry["lifetimeRemaining"] <= 3600
    assert 0 < expiry["remaining"] <= 60


async def test_create_with_each_new_parameter_alone(
    client: SessionClient, unique: Callable[..., str]
) -> None:
    owner = unique("owner")
    s = await client.create_session(owner=owner)
    info = await client.session_info(s)
    assert info == {"tkn": s.tkn, "owner": owner, "shared": False, "keyCnt": 0, "expires": False}
    assert await client.touch(s) == -1

    s = await client.create_session(keys={"a": 1, "b": "two"})
    assert s.owner is None and await client.count(s) == 2
    info = await client.session_info(s)
    assert "owner" not in info and info["expires"] is False

    s = await client.create_session(maxLifetime=120)
    info = await client.session_info(s)
    assert info["expires"] is True and "owner" not in info
    assert info["expiry"]["maxLifetime"] == 120
    assert 110 <= info["expiry"]["lifetimeRemaining"] <= 120


async def test_longest_owner_and_named_shared_with_owner(
    client: SessionClient, unique: Callable[..., str]
) -> None:
    owner = "é" * 128  # 256 bytes of UTF-8
    s = await client.create_session(owner=owner, keys={"k": 1})
    assert (await client.session_info(s))["owner"] == owner
    assert s.tkn in await client.owner_sessions(owner)
    assert await client.owner_end(owner) >= 1

    name, owner = unique("shop"), unique("bob")
    s = await client.create_session(name=name, shared=True, owner=owner)
    opened = await client.open_session(name)
    assert opened.tkn == s.tkn
    info = await client.session_info(opened)
    assert (info["name"], info["shared"], info["owner"]) == (name, True, owner)


async def test_refused_create_sets_no_keys(fresh_server: Any) -> None:
    """keys come with the creation or not at all."""
    async with SessionClient(fresh_server.uri) as c:
        name = "taken"
        await c.create_session(name=name, shared=True)
        with pytest.raises(ResponseError) as e:
            await c.create_session(name=name, shared=True, keys={"a": 1, "b": 2})
        assert e.value.st == Status.SessionNewFail
        with pytest.raises(ResponseError) as e:
            await c.create_session(owner="x" * 257, keys={"a": 1})
        assert e.value.st == Status.ValueSize
        assert await c.session_info_all() == {"totalSessions": 1, "totalKeys": 0}


# ---------------------------------------------------------------- owner commands


async def test_owner_sessions_across_two_connections(
    client: SessionClient, server: Any, unique: Callable[..., str]
) -> None:
    owner, other_owner = unique("carol"), unique("dave")
    first = await created_in_order(client, 1, owner=owner)
    async with SessionClient(server.uri) as phone:
        later = await created_in_order(phone, 3, owner=owner, keys={"device": "phone"})
        await phone.create_session(owner=other_owner)
        expected = first + later
        assert await phone.owner_sessions(owner) == expected
        assert await client.owner_sessions(owner) == expected
        await phone.end_session(later[0])
    expected.remove(later[0])
    assert await client.owner_sessions(owner) == expected
    assert len(await client.owner_sessions(other_owner)) == 1
    assert await client.owner_sessions(unique("nobody")) == []


async def test_owner_end_everywhere(
    client: SessionClient, server: Any, unique: Callable[..., str]
) -> None:
    owner, bystander = unique("erin"), unique("frank")
    mine = await created_in_order(client, 2, owner=owner, keys={"k": 1})
    async with SessionClient(server.uri) as laptop:
        mine += await created_in_order(laptop, 2, owner=owner, maxLifetime=600)
        theirs = (await laptop.create_session(owner=bystander)).tkn
        unowned = (await laptop.create_session()).tkn
        assert await laptop.owner_end(owner) == 4
    assert await client.session_exists(mine) == []
    assert await client.owner_sessions(owner) == []
    assert await client.session_exists([theirs, unowned]) == [theirs, unowned]
    assert await client.owner_end(owner) == 0
    assert await client.owner_end(unique("nobody")) == 0


async def test_owner_end_everywhere_but_here(
    client: SessionClient, server: Any, unique: Callable[..., str]
) -> None:
    owner = unique("grace")
    tkns = await created_in_order(client, 3, owner=owner)
    async with SessionClient(server.uri) as other:
        here = (await other.create_session(owner=owner)).tkn
        tkns.append(here)
        assert await other.owner_end(owner, except_tkn=here) == 3
        assert await other.owner_sessions(owner) == [here]
        # The kept session is untouched; ending again with the same exception ends nothing.
        assert await other.owner_end(owner, except_tkn=str(here)) == 0
        assert await client.session_exists(tkns) == [here]
        # A token that is not one of the owner's sessions keeps nothing.
        stranger = (await other.create_session()).tkn
        assert await other.owner_end(owner, except_tkn=stranger) == 1
        assert await other.session_exists([here, stranger]) == [stranger]


# ------------------------------------------------------------------------- touch


async def test_touch_without_expiry(client: SessionClient) -> None:
    s = await client.create_session()
    assert await client.touch(s.tkn) == -1
    assert await client.touch(s.tkn, slide=False) == -1
    assert await client.touch(str(s.tkn)) == -1
    assert await client.session_info(s) == {
        "tkn": s.tkn,
        "shared": False,
        "keyCnt": 0,
        "expires": False,
    }


async def test_touch_reports_and_slides(client: SessionClient) -> None:
    s = await client.create_session(10)
    first = await client.touch(s.tkn, slide=False)
    assert 0 < first <= 10_000
    await asyncio.sleep(1.2)
    waited = await client.touch(s.tkn, slide=False)
    assert 0 < waited <= first - 1000  # not moved by asking
    slid = await client.touch(s.tkn)
    assert waited < slid <= 10_000  # moved to now + duration


async def test_touch_keeps_alive_and_asking_does_not(client: SessionClient) -> None:
    """A 1 s session touched every 0.4 s outlives its duration; one only
    asked about expires on time. Neither has an extend flag."""

    async def touched() -> None:
        s = await client.create_session(1, deleteSession=True)
        for _ in range(5):
            await asyncio.sleep(0.4)
            assert 0 < await client.touch(s) <= 1000
        assert await client.session_exists(s) == [s.tkn]

    async def asked() -> None:
        s = await client.create_session(1, deleteSession=True)
        await asyncio.sleep(0.4)
        assert 0 < await client.touch(s, slide=False) <= 600
        await asyncio.sleep(1.2)
        assert await client.session_exists(s) == []
        with pytest.raises(ResponseError) as e:
            await client.touch(s)
        assert e.value.st == Status.SessionNotExist

    await asyncio.gather(touched(), asked())


async def test_touch_errors(client: SessionClient) -> None:
    for bad, status in [(0, Status.SessionNotExist), ("abc", Status.SessionTokenInvalid)]:
        with pytest.raises(ResponseError) as e:
            await client.touch(bad)
        assert e.value.st == status and e.value.command == "SH_TOUCH"


# ------------------------------------------------------------- lifetimes, duration 0


async def test_duration_zero_without_lifetime_never_expires(client: SessionClient) -> None:
    # The client sends no expiry for durationSeconds=0; the wire's duration 0 is the same.
    for tkn in [
        (await client.create_session(0)).tkn,
        (await raw(client, "SH_NEW", {"expiry": {"duration": 0}}))["tkn"],
    ]:
        assert await client.touch(tkn) == -1
        assert (await client.session_info(tkn))["expires"] is False


async def test_lifetime_is_a_hard_deadline(client: SessionClient) -> None:
    """maxLifetime ends the session whatever the idle settings say: with no
    idle deadline (duration 0, sent or not), with sliding touches and gets,
    and with deleteSession false (keys cleared at each idle deadline first)."""

    async def only_lifetime(sent_duration_zero: bool) -> None:
        if sent_duration_zero:
            body = await raw(client, "SH_NEW", {"expiry": {"duration": 0, "maxLifetime": 1}})
            tkn = body["tkn"]
        else:
            tkn = (await client.create_session(0, maxLifetime=1)).tkn
        info = await client.session_info(tkn)
        assert info["expires"] is True and info["expiry"]["maxLifetime"] == 1
        assert 0 < await client.touch(tkn) <= 1000
        await asyncio.sleep(1.6)
        assert await client.session_exists(tkn) == []

    async def sliding_capped() -> None:
        s = await client.create_session(10, extendOnGet=True, keys={"a": 1}, maxLifetime=1)
        assert 0 < await client.touch(s) <= 1000  # the slide stops at the lifetime
        for _ in range(3):
            await asyncio.sleep(0.3)
            assert await client.get("a", s) == {"a": 1}
            assert await client.touch(s) <= 1000
        await asyncio.sleep(1.0)
        assert await client.session_exists(s) == []

    async def keys_cleared_then_ended() -> None:
        s = await client.create_session(1, keys={"a": 1}, maxLifetime=2)
        await asyncio.sleep(1.4)
        assert await client.session_exists(s) == [s.tkn]
        assert await client.count(s) == 0
        await asyncio.sleep(1.2)
        assert await client.session_exists(s) == []

    await asyncio.gather(
        only_lifetime(False), only_lifetime(True), sliding_capped(), keys_cleared_then_ended()
    )


async def test_ended_by_lifetime_leaves_owner_list(
    client: SessionClient, unique: Callable[..., str]
) -> None:
    owner = unique("henry")
    short = (await client.create_session(owner=owner, maxLifetime=1)).tkn
    await asyncio.sleep(0.005)
    long = (await client.create_session(owner=owner, maxLifetime=600)).tkn
    assert await client.owner_sessions(owner) == [short, long]
    await asyncio.sleep(1.6)
    assert await client.owner_sessions(owner) == [long]


# -------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs, status",
    [
        (dict(owner=""), Status.ValueSize),
        (dict(owner="x" * 257), Status.ValueSize),
        (dict(owner="é" * 128 + "x"), Status.ValueSize),  # 257 bytes
        (dict(owner=5), Status.ValueTypeInvalid),
        (dict(owner=["a"]), Status.ValueTypeInvalid),
        (dict(maxLifetime=0), Status.ValueSize),
        (dict(maxLifetime=2**32), Status.ValueSize),
        (dict(maxLifetime=-1), Status.ValueSize),
        (dict(maxLifetime=1.5), Status.ValueTypeInvalid),
        (dict(maxLifetime="60"), Status.ValueTypeInvalid),
        (dict(durationSeconds=10, maxLifetime=0), Status.ValueSize),
    ],
)
async def test_create_session_refused(client: SessionClient, kwargs: Any, status: Status) -> None:
    with pytest.raises(ResponseError) as e:
        await client.create_session(**kwargs)
    assert e.value.st == status and e.value.command == "SH_NEW", e.value.response
    assert client.is_open


@pytest.mark.parametrize(
    "expiry",
    [{}, {"deleteSession": True}, {"extendOnGet": True, "extendOnSetAdd": False}],
)
async def test_expiry_without_duration_or_lifetime(client: SessionClient, expiry: Any) -> None:
    with pytest.raises(ResponseError) as e:
        await raw(client, "SH_NEW", {"expiry": expiry})
    assert e.value.st == Status.ParamMissing


@pytest.mark.parametrize(
    "owner, status",
    [("", Status.ValueSize), ("x" * 257, Status.ValueSize), (7, Status.ValueTypeInvalid)],
)
async def test_owner_commands_refuse_bad_owner(
    client: SessionClient, owner: Any, status: Status
) -> None:
    for call in (client.owner_sessions, client.owner_end):
        with pytest.raises(ResponseError) as e:
            await call(owner)
        assert e.value.st == status, (call.__name__, e.value.response)


@pytest.mark.parametrize("bad", ["abc", -1, 1.5, "-3", 2**64])
async def test_owner_end_except_not_a_token(
    client: SessionClient, unique: Callable[..., str], bad: Any
) -> None:
    owner = unique("ivan")
    s = await client.create_session(owner=owner)
    with pytest.raises(ResponseError) as e:
        await client.owner_end(owner, except_tkn=bad)
    assert e.value.st == Status.SessionTokenInvalid, e.value.response
    assert await client.owner_sessions(owner) == [s.tkn]  # nothing was ended


# ------------------------------------------------------------------- persistence


async def test_owner_and_lifetime_survive_save_and_load(persist_server: Any) -> None:
    async with SessionClient(persist_server.uri) as c:
        a = (await c.create_session(owner="olga", keys={"k": 1})).tkn
        await asyncio.sleep(0.005)
        b = (await c.create_session(30, owner="olga", maxLifetime=600)).tkn
        await c.save("owners")
        assert await c.end_all_sessions() == 2
        assert await c.load("owners") == {"name": "owners", "sessions": 2, "keys": 1}
        assert await c.owner_sessions("olga") == [a, b]
        info = await c.session_info(b)
        assert info["owner"] == "olga" and info["expiry"]["maxLifetime"] == 600
        assert 0 < info["expiry"]["lifetimeRemaining"] <= 600
        assert await c.owner_end("olga", except_tkn=a) == 1
