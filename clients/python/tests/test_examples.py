"""The README's examples run against the real server, imported and as scripts."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ndb.sessionclient import ResponseError, SessionClient, Versioned

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.asyncio
async def test_quickstart(server: Any) -> None:
    assert await load("quickstart").main(server.uri) == {
        "key1": "value1",
        "key2": 2,
        "key3": [1, 2, 3],
    }


@pytest.mark.asyncio
async def test_pizza_delivery(server: Any) -> None:
    result = await load("pizza_delivery").main(server.uri)
    assert result["history"] == ["ordered", "baking", "boxed", "out for delivery", "delivered"]
    assert result["exists"] == []
    async with SessionClient(server.uri) as c:
        assert await c.session_exists(result["token"]) == []
        with pytest.raises(ResponseError):
            await c.open_session(result["order"])  # the name went with the session


@pytest.mark.asyncio
async def test_shopping_basket(server: Any) -> None:
    result = await load("shopping_basket").main(server.uri, 3)
    assert result["before"] == {
        "apples": 6,
        "bread": 1,
        "coffee": {"beans": "arabica", "grams": 500},
    }
    assert result["after"] == {} and result["count"] == 0
    assert result["alive"] is True


@pytest.mark.asyncio
async def test_expiring_carts(server: Any) -> None:
    result = await load("expiring_carts").main(server.uri, 1)
    assert result == {"saved": {"ann": ["tea", "scones"], "carl": ["kettle"]}, "left": []}


@pytest.mark.parametrize(
    "script, args",
    [
        ("quickstart.py", []),
        ("pizza_delivery.py", []),
        ("shopping_basket.py", ["2"]),
        ("expiring_carts.py", ["1"]),
    ],
)
def test_examples_run_as_scripts(server: Any, script: str, args: list) -> None:
    env = dict(os.environ)
    src = str(EXAMPLES.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script), server.uri, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_readme_quick_start_runs(server: Any) -> None:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    code = readme.split("```py\n", 1)[1].split("```", 1)[0]
    assert "ws://127.0.0.1:1987/" in code
    env = dict(os.environ)
    env["PYTHONPATH"] = str(EXAMPLES.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", code.replace("ws://127.0.0.1:1987/", server.uri)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'key1': 'value1'}"


@pytest.mark.asyncio
async def test_readme_log_out_everywhere_runs(server: Any) -> None:
    """The README's owner example, run as the body of a coroutine given its free names."""
    import asyncio
    import uuid

    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    code = readme.split("Log out everywhere (or everywhere but here):\n\n```py\n", 1)[1]
    code = code.split("```", 1)[0]
    body = "".join(f"    {line}\n" for line in code.splitlines())
    namespace: dict = {}
    exec(f"async def example(client, user_id, roles):\n{body}    return locals()\n", namespace)
    user = f"user-{uuid.uuid4().hex[:12]}"
    async with SessionClient(server.uri) as client:
        phone = await client.create_session(owner=user)
        await asyncio.sleep(0.005)
        result = await namespace["example"](client, user, ["admin"])
        session = result["session"]
        assert session.owner == user and await client.session_exists([phone, session]) == []
    assert result["devices"] == [phone.tkn, session.tkn]
    assert 0 < result["ttl_ms"] <= 1_800_000
    assert result["ended"] == 1  # the last call: the session the first one kept


def readme_block(after: str) -> str:
    """The first ```py block of the README after the line `after`."""
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    return readme.split(after + "\n\n```py\n", 1)[1].split("```", 1)[0]


@pytest.mark.asyncio
async def test_readme_compare_and_set_loop_runs(server: Any) -> None:
    """The README's add_to_cart, run from several connections at once: every
    item lands in the cart, each with its own version step."""
    import asyncio
    from collections import Counter

    namespace: dict = {}
    exec(
        readme_block("writer got in between. Add to a cart that other connections write too:"),
        namespace,
    )
    add_to_cart = namespace["add_to_cart"]
    n_clients, per_client = 4, 5
    clients = [SessionClient(server.uri) for _ in range(n_clients)]
    for c in clients:
        await c.open()
    try:
        s = await clients[0].create_session()
        await asyncio.gather(
            *(
                add_to_cart(c, s.tkn, f"item-{i}-{j}")
                for i, c in enumerate(clients)
                for j in range(per_client)
            )
        )
        got = await clients[0].get(["cart"], s.tkn, withVersion=True)
    finally:
        for c in clients:
            await c.close()
    expected = [f"item-{i}-{j}" for i in range(n_clients) for j in range(per_client)]
    assert Counter(got.keys["cart"]) == Counter(expected)
    assert got.version == 1 + len(expected)


@pytest.mark.asyncio
async def test_readme_incr_example_runs(server: Any) -> None:
    code = readme_block("connections never loses one: no compare-and-set loop is needed.")
    body = "".join(f"    {line}\n" for line in code.splitlines())
    namespace: dict = {}
    exec(f"async def example(client, session):\n{body}    return locals()\n", namespace)
    async with SessionClient(server.uri) as client:
        session = await client.create_session(keys={"credit": 20})
        result = await namespace["example"](client, session)
        assert (result["failed"], result["credit"]) == (1, 15)
        assert await client.incr("failedLogins", session, withVersion=True) == Versioned(2, 4)


@pytest.mark.asyncio
async def test_readme_events_example_runs(fresh_server: Any) -> None:
    """The README's cart saver, run until it saved the carts that expired:
    not the one checked out, not a session without a cart. Cancelling it
    closes its subscription's connection."""
    import asyncio

    namespace: dict = {}
    exec(readme_block("whose session expires, keys and all:"), namespace)
    saved: dict = {}

    async def save(tkn: int, owner: str, cart: list) -> None:
        saved[tkn] = (owner, cart)

    async with SessionClient(fresh_server.uri) as client:
        saver = asyncio.ensure_future(namespace["save_expiring_carts"](client, save))
        ann = await client.create_session(1, deleteSession=True, owner="ann", keys={"cart": [1]})
        bob = await client.create_session(1, deleteSession=True, owner="bob", keys={"cart": [2]})
        await client.create_session(1, deleteSession=True, keys={"other": 3})
        await client.end_session(bob)  # checked out: ended, not expired
        for _ in range(500):
            if saved or saver.done():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the session without a cart expires too, unsaved
        assert (await client.server_info())["connections"] == 2
        saver.cancel()
        await asyncio.gather(saver, return_exceptions=True)
        assert saved == {ann.tkn: ("ann", [1])}
        for _ in range(250):
            if (await client.server_info())["connections"] == 1:
                break
            await asyncio.sleep(0.02)
        assert (await client.server_info())["connections"] == 1
