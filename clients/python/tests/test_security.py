"""TLS, users and roles (issue #19; docs/EXTENSIONS "Authentication and
TLS") through the real binary: ``wss://`` verified against a CA of the
tests' own, a CA that signed nothing of the server's, mutual TLS, Basic
credentials in the upgrade for each role, ``SV_AUTH`` (`authenticate`),
reconnections and event streams that keep authenticating, and ``/metrics``
behind Basic auth over https. The first tests need no server: what the
client sends in its upgrades, and that a 401 is never retried.

Certificates are made once per module by the ``openssl`` command-line tool
in a temporary directory: a CA, a server certificate for ``localhost`` and
127.0.0.1 signed by it, a client certificate signed by it, and a second CA
with a client certificate of its own. Nothing is written in the repository.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest

from ndb import AuthenticationError, Event, EventStream, ResponseError, SessionClient, Status
from ndb.connection import HEADERS_KWARG
from support import Scrape, command_of, eventually, rsp

pytestmark = pytest.mark.asyncio

# name -> (role, password). The passwords hold a colon (Basic splits at the
# first one only) and non-ASCII (Basic credentials are UTF-8).
USERS: Dict[str, Tuple[str, str]] = {
    "ann": ("admin", "ann's secret"),
    "apu": ("app", "app:pass word"),
    "rita": ("read", "réad-only"),
}


def password(user: str) -> str:
    return USERS[user][1]


def write_users(path: Path, users: Dict[str, Tuple[str, str]]) -> Path:
    """A users file as the server reads it: only each password's SHA-256."""
    entries = [
        {
            "name": name,
            "passwordSha256": hashlib.sha256(secret.encode("utf-8")).hexdigest(),
            "role": role,
        }
        for name, (role, secret) in users.items()
    ]
    path.write_text(json.dumps(entries))
    return path


# ------------------------------------------------------------ certificates


class Pki(NamedTuple):
    """PEM files made for the module (see the module doc)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path
    users: Path

    def tls_args(self, client_ca: Optional[Path] = None) -> Tuple[str, ...]:
        args = ("--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key))
        if client_ca is not None:
            args += ("--tls-client-ca", str(client_ca))
        return args

    def users_args(self, users: Optional[Path] = None) -> Tuple[str, ...]:
        return ("--users", str(users or self.users))

    def context(self, cafile: Optional[Path] = None) -> ssl.SSLContext:
        """What a client verifies the server with: our CA (or `cafile`)."""
        return ssl.create_default_context(cafile=str(cafile or self.ca))


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


# P-256 keys: quick to make, and both rustls and Python's ssl take them.
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def make_ca(dir: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-new", *NEW_KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-days", "2", "-subj", f"/CN=ndb test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=dir,
    )  # fmt: skip


def make_leaf(dir: Path, name: str, ca: str, extensions: str) -> None:
    """A key and a certificate for it signed by `ca`, with `extensions` (v3
    with key identifiers: strict verifiers ask for them)."""
    (dir / f"{name}.ext").write_text(
        extensions + "\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    openssl(
        "req", "-new", *NEW_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN={name}",
        cwd=dir,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
        cwd=dir,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command-line tool is not installed")
    dir = tmp_path_factory.mktemp("pki")
    make_ca(dir, "ca")
    make_ca(dir, "other-ca")
    server_names = "subjectAltName=DNS:localhost,IP:127.0.0.1"
    make_leaf(dir, "server", "ca", f"extendedKeyUsage=serverAuth\n{server_names}")
    make_leaf(dir, "client", "ca", "extendedKeyUsage=clientAuth")
    make_leaf(dir, "other-client", "other-ca", "extendedKeyUsage=clientAuth")
    return Pki(
        ca=dir / "ca.pem",
        server_cert=dir / "server.pem",
        server_key=dir / "server.key",
        client_cert=dir / "client.pem",
        client_key=dir / "client.key",
        other_ca=dir / "other-ca.pem",
        other_client_cert=dir / "other-client.pem",
        other_client_key=dir / "other-client.key",
        users=write_users(dir / "users.json", USERS),
    )


# ----------------------------------------------------------------- helpers


def as_user(name: str) -> Dict[str, str]:
    """`SessionClient` keyword arguments for one of `USERS`."""
    return {"user": name, "password": password(name)}


async def first_event(stream: EventStream) -> Event:
    async for event in stream:
        return event
    raise AssertionError("the stream ended without an event")


async def heard_the_loss(client: SessionClient) -> None:
    """Wait until the client has seen its connection close."""
    for _ in range(250):
        if not client.is_open:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the client never noticed its connection was closed")


class HttpAnswer(NamedTuple):
    status: int
    headers: Dict[str, str]
    body: bytes


def https_get(
    server: Any, path: str, context: ssl.SSLContext, auth: Optional[Tuple[str, str]] = None
) -> HttpAnswer:
    """GET `path` over https with urllib, with Basic credentials if `auth`."""
    request = urllib.request.Request(f"https://{server.host}:{server.port}{path}")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode("utf-8")).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return HttpAnswer(answer.status, dict(answer.headers.items()), answer.read())
    except urllib.error.HTTPError as e:
        return HttpAnswer(e.code, dict(e.headers.items()), e.read())


def scrape(server: Any, context: ssl.SSLContext) -> Scrape:
    answer = https_get(server, "/metrics", context, ("rita", password("rita")))
    assert answer.status == 200, answer
    return Scrape(answer.body.decode("utf-8"))


# ------------------------------------------------------ without a server


async def test_what_the_constructor_checks() -> None:
    with pytest.raises(ValueError, match="both user and password"):
        SessionClient("ws://127.0.0.1:1/", user="ann")
    with pytest.raises(ValueError, match="both user and password"):
        SessionClient("ws://127.0.0.1:1/", password="x")
    with pytest.raises(TypeError, match="user must be a str"):
        SessionClient("ws://127.0.0.1:1/", user=b"ann", password="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="password must be a str"):
        SessionClient("ws://127.0.0.1:1/", user="ann", password=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="':'"):
        SessionClient("ws://127.0.0.1:1/", user="a:b", password="x")
    with pytest.raises(TypeError, match="SSLContext"):
        SessionClient("wss://127.0.0.1:1/", ssl=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Authorization"):
        SessionClient(
            "ws://127.0.0.1:1/",
            user="ann",
            password="x",
            **{HEADERS_KWARG: {"authorization": "Bearer t"}},
        )
    # An ssl context is for wss://: said at open(), before anything connects.
    client = SessionClient("ws://127.0.0.1:1/", ssl=ssl.create_default_context())
    with pytest.raises(ValueError, match="wss://"):
        await client.open()
    client = SessionClient()
    with pytest.raises(TypeError):
        await client.authenticate("ann", 1)  # type: ignore[arg-type]


def legacy_websockets() -> bool:
    """Whether ``websockets.connect``/``serve`` are the legacy API (websockets < 14),
    whose server hooks the fake servers below do not speak."""
    return HEADERS_KWARG != "additional_headers"


async def test_credentials_go_in_every_upgrade(fake_server: Any) -> None:
    if legacy_websockets():
        pytest.skip("the fake server uses the asyncio API of websockets >= 14")
    seen: List[Tuple[Optional[str], Optional[str]]] = []

    async def handler(ws: Any) -> None:
        headers = ws.request.headers
        seen.append((headers.get("Authorization"), headers.get("X-Tenant")))
        command = command_of(await ws.recv())
        if command == "SH_SUBSCRIBE":
            await ws.send(rsp(command, st=1, cursor="0"))
            await ws.wait_closed()
            return
        await ws.send(rsp(command, st=1, tkn=len(seen)))
        await ws.close()  # every connection answers once: the client must reconnect

    uri = await fake_server(handler)
    expected = "Basic " + base64.b64encode("apu:app:pass word".encode()).decode()
    async with SessionClient(uri, **as_user("apu"), **{HEADERS_KWARG: {"X-Tenant": "t1"}}) as c:
        for i in range(1, 4):
            assert (await c.create_session()).tkn == i
            await heard_the_loss(c)
        # An event stream's own connection sends them too.
        stream = c.events()
        await stream.start()
        await stream.aclose()
    assert seen == [(expected, "t1")] * 4


async def test_a_401_on_reconnect_is_raised_at_once_not_retried(fake_server: Any) -> None:
    """Credentials refused once are refused again: with reconnect_timeout=None a
    call would wait for ever if the client retried them; it raises at once,
    and each later call makes one attempt of its own."""
    if legacy_websockets():
        pytest.skip("the fake server uses the asyncio API of websockets >= 14")
    upgrades: List[str] = []

    def process_request(connection: Any, request: Any) -> Any:
        upgrades.append(request.path)
        if len(upgrades) > 1:
            return connection.respond(401, "who are you?\n")
        return None

    async def handler(ws: Any) -> None:
        await ws.recv()
        await ws.send(rsp("SH_NEW", st=1, tkn=1))
        await ws.close()

    uri = await fake_server(handler, process_request=process_request)
    async with SessionClient(uri, reconnect_timeout=None, **as_user("ann")) as c:
        await c.create_session()
        await heard_the_loss(c)
        for attempts in (2, 3):
            with pytest.raises(AuthenticationError) as e:
                await asyncio.wait_for(c.create_session(), 10)
            assert "authentication failed" in str(e.value) and "401" in str(e.value)
            assert isinstance(e.value, ConnectionError)
            assert len(upgrades) == attempts
        # A wrong pair at open() is the same error.
        with pytest.raises(AuthenticationError):
            await SessionClient(uri, **as_user("ann")).open()


# --------------------------------------------------------------------- TLS


async def test_wss_round_trip(make_server: Any, pki: Pki) -> None:
    srv = make_server(*pki.tls_args())
    assert srv.uri.startswith("wss://")
    async with SessionClient(srv.uri, ssl=pki.context()) as c:
        s = await c.create_session(keys={"a": 1})
        await c.set({"b": [2, "two"]}, s.tkn)
        assert await c.get(["a", "b", "c"], s.tkn) == {"a": 1, "b": [2, "two"]}
        await c.end_session(s.tkn)
        assert await c.session_exists(s.tkn) == []
        assert (await c.server_info())["shards"] == 2
    # The certificate names localhost too.
    async with SessionClient(f"wss://localhost:{srv.port}/", ssl=pki.context()) as c:
        assert (await c.create_session()).isValid


async def test_a_certificate_from_an_unknown_ca_does_not_verify(make_server: Any, pki: Pki) -> None:
    srv = make_server(*pki.tls_args())
    for context in (pki.context(pki.other_ca), None):  # None: the system's CAs
        client = SessionClient(srv.uri, ssl=context)
        with pytest.raises(ConnectionError) as e:
            await asyncio.wait_for(client.open(), 10)
        assert not isinstance(e.value, AuthenticationError)
        assert "TLS certificate did not verify" in str(e.value), e.value
        assert isinstance(e.value.__cause__, ssl.SSLCertVerificationError)
        await client.close()
    # Plain WebSocket to a TLS port fails too, and does not hang.
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(SessionClient(f"ws://127.0.0.1:{srv.port}/").open(), 10)


async def test_mutual_tls(make_server: Any, pki: Pki) -> None:
    srv = make_server(*pki.tls_args(client_ca=pki.ca))
    with_cert = pki.context()
    with_cert.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    async with SessionClient(srv.uri, ssl=with_cert) as c:
        s = await c.create_session(keys={"k": "v"})
        assert await c.get("k", s) == {"k": "v"}

    foreign_cert = pki.context()
    foreign_cert.load_cert_chain(str(pki.other_client_cert), str(pki.other_client_key))
    # No client certificate; one that the server's CA did not sign.
    for context in (pki.context(), foreign_cert):
        client = SessionClient(srv.uri, ssl=context)
        with pytest.raises(ConnectionError) as e:
            await asyncio.wait_for(client.open(), 10)
        assert not isinstance(e.value, AuthenticationError), e.value
        assert "client certificate" in str(e.value), e.value
        await client.close()


# ------------------------------------------------------------------- users


async def test_each_role_in_the_upgrade(make_server: Any, pki: Pki) -> None:
    srv = make_server(*pki.tls_args(), *pki.users_args())
    tls = pki.context()
    async with SessionClient(srv.uri, ssl=tls, **as_user("apu")) as app, SessionClient(
        srv.uri, ssl=tls, **as_user("rita")
    ) as read, SessionClient(srv.uri, ssl=tls, **as_user("ann")) as admin:
        # app: sessions and keys, not the server-wide commands.
        s = await app.create_session(10, name="cart", shared=True)
        await app.set({"item": "tea", "n": 1}, s.tkn)
        assert await app.incr("n", s.tkn) == 2
        for call in (app.end_all_sessions, app.server_info, app.session_info_all):
            with pytest.raises(ResponseError) as e:
                await call()
            assert e.value.st == Status.NotPermitted == 16
            assert e.value.st_name == "NotPermitted"
        assert app.is_open  # a refusal is an answer, not a hang-up

        # read: reads, and touch that does not slide.
        assert await read.get(["item", "n"], s.tkn) == {"item": "tea", "n": 2}
        assert (await read.open_session("cart")).tkn == s.tkn
        assert await read.count(s.tkn) == 2
        assert 0 < await read.touch(s.tkn, slide=False) <= 10_000
        for write in (
            lambda: read.set({"item": "coffee"}, s.tkn),
            lambda: read.create_session(),
            lambda: read.touch(s.tkn),
            lambda: read.end_session(s.tkn),
        ):
            with pytest.raises(ResponseError) as e:
                await write()
            assert e.value.st == Status.NotPermitted
        assert await read.get("item", s.tkn) == {"item": "tea"}  # nothing changed

        # admin: everything.
        info = await admin.server_info()
        assert (info["sessions"], info["shards"]) == (1, 2)
        assert await admin.end_all_sessions() == 1
        assert await app.session_exists(s.tkn) == []


async def test_a_wrong_password_is_an_authentication_error(make_server: Any, pki: Pki) -> None:
    srv = make_server(*pki.tls_args(), *pki.users_args())
    for user, secret in (("ann", "wrong"), ("ann", ""), ("nobody", "ann's secret")):
        started = time.monotonic()
        with pytest.raises(AuthenticationError) as e:
            async with SessionClient(srv.uri, ssl=pki.context(), user=user, password=secret):
                pass
        assert time.monotonic() - started < 5  # one attempt, no retrying
        assert isinstance(e.value, ConnectionError)
        assert "authentication failed" in str(e.value) and "401" in str(e.value)


async def test_sv_auth_before_anything_else(make_server: Any, pki: Pki) -> None:
    srv = make_server(*pki.users_args())  # plain ws: users do not need TLS
    async with SessionClient(srv.uri) as c:
        with pytest.raises(ResponseError) as e:
            await c.create_session()
        assert e.value.st == Status.AuthRequired == 15
        assert e.value.st_name == "AuthRequired"
        assert e.value.command == "SH_NEW"
        assert c.is_open
        assert await c.authenticate("apu", password("apu")) == "app"
        s = await c.create_session(keys={"a": 1})
        with pytest.raises(ResponseError) as e:
            await c.server_info()
        assert e.value.st == Status.NotPermitted
        # Authenticating again switches the role on the same connection.
        assert await c.authenticate("rita", password("rita")) == "read"
        with pytest.raises(ResponseError) as e:
            await c.set({"a": 2}, s.tkn)
        assert e.value.st == Status.NotPermitted
        assert await c.authenticate("ann", password("ann")) == "admin"
        assert (await c.server_info())["sessions"] == 1

    # Over Basic credentials too: the later identity wins.
    async with SessionClient(srv.uri, **as_user("rita")) as c:
        assert await c.authenticate("ann", password("ann")) == "admin"
        assert await c.end_all_sessions() == 1


async def test_a_failed_sv_auth_closes_the_connection(make_server: Any, pki: Pki) -> None:
    srv = make_server(*pki.users_args())
    for user, secret in (("apu", "wrong"), ("nobody", password("apu"))):
        async with SessionClient(srv.uri, reconnect=False) as c:
            with pytest.raises(ResponseError) as e:
                await c.authenticate(user, secret)
            assert e.value.st == Status.AuthFailed == 17
            assert e.value.st_name == "AuthFailed"
            assert not isinstance(e.value, ConnectionError)
            await heard_the_loss(c)  # the server closes (1008) after answering
            with pytest.raises(ConnectionError):
                await c.count(1)
    # With reconnection the next call gets a new, unauthenticated connection.
    async with SessionClient(srv.uri) as c:
        assert await c.authenticate("apu", password("apu")) == "app"
        with pytest.raises(ResponseError) as e:
            await c.authenticate("apu", "wrong")
        assert e.value.st == Status.AuthFailed
        await heard_the_loss(c)
        with pytest.raises(ResponseError) as e:  # the failed attempt's creds were not kept...
            await c.create_session()
        assert e.value.st == Status.AuthRequired  # ...nor the earlier ones
        assert c.is_open


async def test_authenticate_on_a_server_without_users(client: SessionClient) -> None:
    assert await client.authenticate("anyone", "anything") == "admin"
    assert (await client.create_session()).isValid


async def test_reconnections_keep_authenticating(make_restartable_server: Any, pki: Pki) -> None:
    """After a restart the next call reconnects with the same credentials:
    Basic ones in the upgrade, or an `authenticate` repeated on the new
    connection before anything else."""
    srv = make_restartable_server(*pki.tls_args(), *pki.users_args())
    assert srv.uri.startswith("wss://")
    tls = pki.context()
    async with SessionClient(srv.uri, ssl=tls, **as_user("apu")) as basic, SessionClient(
        srv.uri, ssl=tls
    ) as sv_auth:
        assert await sv_auth.authenticate("apu", password("apu")) == "app"
        for c in (basic, sv_auth):
            await c.create_session()
        srv.restart()
        for c in (basic, sv_auth):
            await heard_the_loss(c)
            s = await c.create_session(keys={"after": "restart"})  # not 15
            assert await c.get("after", s) == {"after": "restart"}
            with pytest.raises(ResponseError) as e:
                await c.server_info()
            assert e.value.st == Status.NotPermitted  # still app, not admin


async def test_a_reconnection_refused_raises_at_once(
    make_restartable_server: Any, pki: Pki, tmp_path: Path
) -> None:
    """The server comes back with other passwords: the next call raises
    `AuthenticationError` at once (not after reconnect_timeout, here never),
    each later call tries once more, and they work when the password does."""
    users = write_users(tmp_path / "users.json", USERS)
    srv = make_restartable_server(*pki.users_args(users))
    async with SessionClient(srv.uri, reconnect_timeout=None, **as_user("apu")) as basic:
        async with SessionClient(srv.uri, reconnect_timeout=None) as sv_auth:
            await sv_auth.authenticate("apu", password("apu"))
            srv.kill()
            write_users(users, {**USERS, "apu": ("app", "a new password")})
            srv.start()
            for c in (basic, sv_auth):
                await heard_the_loss(c)
                for _ in range(2):
                    with pytest.raises(AuthenticationError) as e:
                        await asyncio.wait_for(c.create_session(), 10)
                    assert "authentication failed" in str(e.value)
            srv.kill()
            write_users(users, USERS)
            srv.start()
            for c in (basic, sv_auth):
                assert (await asyncio.wait_for(c.create_session(), 10)).isValid


async def test_event_streams_authenticate_too(make_server: Any, pki: Pki) -> None:
    """A stream opens a connection of its own: it carries the Basic
    credentials, or repeats `authenticate`, before subscribing."""
    srv = make_server(*pki.tls_args(), *pki.users_args())
    tls = pki.context()
    async with SessionClient(srv.uri, ssl=tls, **as_user("rita")) as basic, SessionClient(
        srv.uri, ssl=tls
    ) as sv_auth, SessionClient(srv.uri, ssl=tls, **as_user("apu")) as writer:
        await sv_auth.authenticate("rita", password("rita"))
        async with basic.events(["created"]) as one, sv_auth.events(["created"]) as two:
            s = await writer.create_session()
            for stream in (one, two):
                event = await asyncio.wait_for(first_event(stream), 10)
                assert (event.event, event.tkn) == ("created", s.tkn)
    # Without credentials the subscription is refused like any other request.
    async with SessionClient(srv.uri, ssl=tls) as anonymous:
        with pytest.raises(ResponseError) as e:
            await anonymous.events().start()
        assert e.value.st == Status.AuthRequired


# ---------------------------------------------------------------- /metrics


async def test_metrics_need_basic_auth_and_count_failures(make_server: Any, pki: Pki) -> None:
    srv = make_server(*pki.tls_args(), *pki.users_args())
    tls = pki.context()
    # No credentials, or wrong ones: 401 with a Basic challenge.
    for auth in (None, ("rita", "wrong"), ("nobody", "")):
        answer = https_get(srv, "/metrics", tls, auth)
        assert answer.status == 401, answer
        challenge = {k.lower(): v for k, v in answer.headers.items()}["www-authenticate"]
        assert challenge.startswith("Basic")
    # Health and readiness stay open to probes.
    assert https_get(srv, "/healthz", tls).status == 200
    # Any user may scrape.
    for user in USERS:
        assert https_get(srv, "/metrics", tls, (user, password(user))).status == 200

    before = scrape(srv, tls).value("nemesisdb_auth_failures_total")
    with pytest.raises(AuthenticationError):
        await SessionClient(srv.uri, ssl=tls, user="ann", password="wrong").open()
    async with SessionClient(srv.uri, ssl=tls) as c:
        with pytest.raises(ResponseError) as e:
            await c.authenticate("ann", "wrong")
        assert e.value.st == Status.AuthFailed
    assert https_get(srv, "/metrics", tls, ("ann", "wrong")).status == 401
    await eventually(
        lambda: scrape(srv, tls).value("nemesisdb_auth_failures_total") - before,
        lambda delta: delta == 3,
        "a refused upgrade, a refused SV_AUTH and a refused scrape counted",
    )
