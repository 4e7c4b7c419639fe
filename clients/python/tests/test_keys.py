"""Key commands against the real server: set, add, get, rmv, count, contains,
keys, clear, clear_set, values of every JSON kind, and unknown sessions."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from ndb.sessionclient import ResponseError, Session, SessionClient, Status

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def session(client: SessionClient) -> Session:
    return await client.create_session()


VALUES = {
    "str": "value1",
    "empty": "",
    "unicode": "pizza 🍕 ünïcödé",
    "int": 42,
    "neg": -7,
    "u64max": 2**64 - 1,
    "i64min": -(2**63),
    "float": 1.5,
    "float_whole": 1.0,
    "true": True,
    "false": False,
    "null": None,
    "list": [1, "two", [3], {"four": 4}],
    "obj": {"nested": {"deep": [True, None]}},
    "empty_obj": {},
    "empty_list": [],
}


async def test_set_get_every_json_kind(client: SessionClient, session: Session) -> None:
    await client.set(VALUES, session.tkn)
    got = await client.get(VALUES.keys(), session.tkn)
    assert got == VALUES
    for k, v in VALUES.items():
        assert type(got[k]) is type(v), k  # ints stay ints, floats stay floats


async def test_quick_start_shape(client: SessionClient, session: Session) -> None:
    await client.set({"key1": "value1"}, session.tkn)
    assert await client.get(("key1", "k2"), session.tkn) == {"key1": "value1"}


async def test_set_overwrites_and_get_single_key(client: SessionClient, session: Session) -> None:
    await client.set({"a": 1, "b": 2}, session.tkn)
    await client.set({"a": "one"}, session.tkn)
    assert await client.get("a", session.tkn) == {"a": "one"}
    assert await client.get(["b", "a", "nope"], session.tkn) == {"a": "one", "b": 2}
    assert await client.get([], session.tkn) == {}


async def test_unicode_key_names(client: SessionClient, session: Session) -> None:
    await client.set({"ключ": 1, "キー": 2, "": 3}, session.tkn)
    assert await client.get(["ключ", "キー", ""], session.tkn) == {"ключ": 1, "キー": 2, "": 3}


async def test_tokens_as_strings(client: SessionClient, session: Session) -> None:
    tkn = str(session.tkn)
    await client.set({"s": 1}, tkn)
    assert await client.get("s", tkn) == {"s": 1}
    assert await client.count(tkn) == 1
    assert await client.count(session) == 1


async def test_add_keeps_existing(client: SessionClient, session: Session) -> None:
    await client.set({"a": 1}, session.tkn)
    await client.add({"a": 2, "b": 3}, session.tkn)
    assert await client.get(("a", "b"), session.tkn) == {"a": 1, "b": 3}


async def test_rmv(client: SessionClient, session: Session) -> None:
    await client.set({"a": 1, "b": 2, "c": 3}, session.tkn)
    await client.rmv(("a", "missing"), session.tkn)
    await client.rmv("b", session.tkn)
    assert await client.get(("a", "b", "c"), session.tkn) == {"c": 3}


async def test_count(client: SessionClient, session: Session) -> None:
    assert await client.count(session.tkn) == 0
    await client.set({f"k{i}": i for i in range(25)}, session.tkn)
    assert await client.count(session.tkn) == 25


async def test_contains_in_request_order(client: SessionClient, session: Session) -> None:
    await client.set({"a": 1, "b": 2, "c": 3}, session.tkn)
    assert await client.contains(("c", "x", "a"), session.tkn) == ["c", "a"]
    assert await client.contains("b", session.tkn) == ["b"]
    assert await client.contains([], session.tkn) == []


async def test_keys(client: SessionClient, session: Session) -> None:
    assert await client.keys(session.tkn) == []
    await client.set({"a": 1, "b": 2, "c": 3}, session.tkn)
    assert sorted(await client.keys(session.tkn)) == ["a", "b", "c"]


async def test_clear(client: SessionClient, session: Session) -> None:
    await client.set({"a": 1, "b": 2}, session.tkn)
    assert await client.clear(session.tkn) == 2
    assert await client.count(session.tkn) == 0
    assert await client.clear(session.tkn) == 0
    assert await client.session_exists(session.tkn) == [session.tkn]


async def test_clear_set(client: SessionClient, session: Session) -> None:
    await client.set({"a": 1, "b": 2, "c": 3}, session.tkn)
    assert await client.clear_set({"x": 9, "a": "new"}, session.tkn) == 3
    assert await client.get(("a", "b", "c", "x"), session.tkn) == {"a": "new", "x": 9}
    assert await client.clear_set({}, session.tkn) == 2
    assert await client.count(session.tkn) == 0


async def test_sessions_are_isolated(client: SessionClient) -> None:
    a = await client.create_session()
    b = await client.create_session()
    await client.set({"k": "a"}, a.tkn)
    await client.set({"k": "b"}, b.tkn)
    assert await client.get("k", a.tkn) == {"k": "a"}
    assert await client.get("k", b.tkn) == {"k": "b"}
    await client.clear(a.tkn)
    assert await client.get("k", b.tkn) == {"k": "b"}


async def test_large_values(client: SessionClient, session: Session) -> None:
    big = "x" * 300_000
    many = {f"key{i}": i for i in range(5000)}
    await client.set({"big": big}, session.tkn)
    await client.set(many, session.tkn)
    assert (await client.get("big", session.tkn))["big"] == big
    assert await client.get(many.keys(), session.tkn) == many


def _calls(client: SessionClient, tkn: Any) -> Any:
    return {
        "set": lambda: client.set({"a": 1}, tkn),
        "add": lambda: client.add({"a": 1}, tkn),
        "get": lambda: client.get(("a",), tkn),
        "rmv": lambda: client.rmv(("a",), tkn),
        "count": lambda: client.count(tkn),
        "contains": lambda: client.contains(("a",), tkn),
        "keys": lambda: client.keys(tkn),
        "clear": lambda: client.clear(tkn),
        "clear_set": lambda: client.clear_set({"a": 1}, tkn),
    }


CALLS = ["set", "add", "get", "rmv", "count", "contains", "keys", "clear", "clear_set"]


@pytest.mark.parametrize("call", CALLS)
async def test_unknown_session(client: SessionClient, call: str) -> None:
    s = await client.create_session()
    await client.end_session(s.tkn)
    with pytest.raises(ResponseError) as e:
        await _calls(client, s.tkn)[call]()
    assert e.value.st == Status.SessionNotExist
    assert e.value.st_name == "SessionNotExist"
    assert next(iter(e.value.response)) == e.value.command + "_RSP"
    assert client.is_open


@pytest.mark.parametrize("call", CALLS)
async def test_invalid_token(client: SessionClient, call: str) -> None:
    with pytest.raises(ResponseError) as e:
        await _calls(client, "not-a-token")[call]()
    assert e.value.st == Status.SessionTokenInvalid
