"""Packaging: the names the docs promise, and what an install ships."""

from __future__ import annotations

import importlib.metadata
import inspect
from pathlib import Path

import pytest

import ndb
from ndb import sessionclient
from ndb.sessionclient import SessionClient

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

METHODS = [
    "open",
    "close",
    "create_session",
    "open_session",
    "end_session",
    "end_all_sessions",
    "session_exists",
    "session_info",
    "session_info_all",
    "touch",
    "owner_sessions",
    "owner_end",
    "set",
    "add",
    "get",
    "rmv",
    "count",
    "contains",
    "keys",
    "clear",
    "clear_set",
    "incr",
    "save",
    "load",
    "server_info",
]


def test_api_names_and_docs() -> None:
    for name in METHODS:
        method = getattr(SessionClient, name)
        assert inspect.iscoroutinefunction(method), name
        assert method.__doc__, name
    for name in ["set", "add", "get", "rmv", "count", "contains", "keys", "clear", "clear_set"]:
        # The token is the last argument a caller can pass by position.
        params = inspect.signature(getattr(SessionClient, name)).parameters.values()
        positional = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        assert positional[-1] == "tkn", name
    # withVersion on every command that takes it, ifVersion on the writes: keyword-only
    # (positional calls keep their meaning) and off by default.
    versioned = {
        "create_session": False,
        "open_session": False,
        "session_info": False,
        "touch": False,
        "get": False,
        "count": False,
        "contains": False,
        "keys": False,
        "set": True,
        "add": True,
        "rmv": True,
        "clear": True,
        "clear_set": True,
        "incr": True,
    }
    for name, writes in versioned.items():
        params = inspect.signature(getattr(SessionClient, name)).parameters
        assert params["withVersion"].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params["withVersion"].default is False, name
        assert ("ifVersion" in params) is writes, name
        if writes:
            assert params["ifVersion"].kind is inspect.Parameter.KEYWORD_ONLY, name
            assert params["ifVersion"].default is None, name
    for name in ["end_session", "session_exists", "owner_end", "save"]:
        assert "withVersion" not in inspect.signature(getattr(SessionClient, name)).parameters
    incr = inspect.signature(SessionClient.incr).parameters
    assert list(incr)[:4] == ["self", "key", "tkn", "by"] and incr["by"].default == 1
    params = inspect.signature(SessionClient.create_session).parameters
    assert list(params)[1:8] == [
        "durationSeconds",
        "deleteSession",
        "extendOnSetAdd",
        "extendOnGet",
        "name",
        "shared",
        "deleteSessionOnExpire",
    ]
    # The new parameters are keyword-only, so positional calls keep their meaning.
    for name in ["owner", "keys", "maxLifetime"]:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default is None, name
    assert list(inspect.signature(SessionClient.owner_end).parameters) == [
        "self",
        "owner",
        "except_tkn",
    ]
    assert ndb.SessionClient is SessionClient and sessionclient.ResponseError is ndb.ResponseError
    for name in ["Versioned", "VersionedKeys", "VersionMismatch"]:
        assert name in ndb.__all__ and getattr(ndb, name) is getattr(sessionclient, name), name
    assert issubclass(ndb.VersionMismatch, ndb.ResponseError)
    # Events: a plain method returning the stream (so `async for` works on the call),
    # every parameter but the kinds keyword-only; reconnect settings keyword-only.
    from ndb import events

    assert not inspect.iscoroutinefunction(SessionClient.events) and SessionClient.events.__doc__
    params = inspect.signature(SessionClient.events).parameters
    assert list(params) == ["self", "events", "owner", "withKeys", "after"]
    assert [params[n].default for n in ["events", "owner", "withKeys", "after"]] == [
        None,
        None,
        False,
        None,
    ]
    for name in ["owner", "withKeys", "after"]:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    for name in ["Event", "EventStream"]:
        assert name in ndb.__all__ and getattr(ndb, name) is getattr(events, name), name
    init = inspect.signature(SessionClient.__init__).parameters
    assert init["reconnect"].kind is inspect.Parameter.KEYWORD_ONLY
    assert (init["reconnect"].default, init["reconnect_timeout"].default) == (True, 5.0)
    assert ndb.Status.EventsLost == 160


def test_py_typed_in_source() -> None:
    assert (PACKAGE_ROOT / "src" / "ndb" / "py.typed").is_file()


def test_installed_distribution() -> None:
    # The build leaves src/ndb.egg-info behind, and conftest puts src/ on the
    # path; look only at installed copies, outside this source tree.
    installed = [
        d
        for d in importlib.metadata.distributions()
        if d.metadata["Name"] == "ndb"
        and PACKAGE_ROOT not in Path(str(d.locate_file(""))).resolve().parents
        and Path(str(d.locate_file(""))).resolve() != PACKAGE_ROOT
    ]
    if not installed:
        pytest.skip("ndb is not installed (pip install ./clients/python)")
    dist = installed[0]
    files = {str(f).replace("\\", "/") for f in dist.files or []}
    assert "ndb/py.typed" in files
    assert "ndb/sessionclient.py" in files
    assert any(r.startswith("websockets") for r in dist.requires or [])
