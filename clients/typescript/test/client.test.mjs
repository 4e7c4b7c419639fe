// Every command against the real server binary (2 shards, a free port).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "./support.mjs";
import {
  AuthenticationError,
  ConnectionError,
  NdbError,
  Session,
  Status,
  VersionMismatchError,
  connect,
} from "../dist/node.js";
import { ServerProcess, TWO_POW_53, unique } from "./support.mjs";

let server;
let client;
before(async () => {
  server = await ServerProcess.start();
  client = await connect(server.url);
});
after(async () => {
  client?.close();
  await server?.kill();
});

describe("sessions", () => {
  test("createSession with name, owner, keys and expiry; info reports them", async () => {
    const name = unique();
    const s = await client.createSession({
      name,
      owner: "ann",
      keys: { a: 1 },
      expiry: { duration: 60, deleteSession: true, extendOnGet: true },
      withVersion: true,
    });
    assert.ok(s instanceof Session);
    assert.equal(typeof s.tkn, "string");
    assert.equal(s.version, 1);
    const info = await s.info({ withVersion: true });
    assert.equal(info.tkn, s.tkn);
    assert.equal(info.name, name);
    assert.equal(info.owner, "ann");
    assert.equal(info.keyCnt, 1);
    assert.equal(info.expires, true);
    assert.equal(info.expiry.duration, 60);
    assert.equal(info.expiry.deleteSession, true);
    assert.equal(info.version, 1);
    await s.end();
  });

  test("shared sessions open by name from another connection", async () => {
    const name = unique();
    const s = await client.createSession({ name, shared: true });
    const other = await connect(server.url);
    try {
      const opened = await other.openSession(name, { withVersion: true });
      assert.equal(opened.tkn, s.tkn);
      assert.equal(opened.shared, true);
      assert.equal(opened.version, 1);
      await assert.rejects(other.openSession(unique()), (e) => e instanceof NdbError && e.status === 102 && e.statusName === "SessionOpenFail");
      await assert.rejects(client.createSession({ name, shared: true }), (e) => e.status === Status.SessionNewFail);
    } finally {
      other.close();
      await s.end();
    }
  });

  test("tokens are decimal strings, exact beyond 2^53", async () => {
    // A token is a random u64: draw until one lies above 2^53 (all but 1 in 2048 do).
    let s;
    for (;;) {
      s = await client.createSession();
      if (BigInt(s.tkn) > TWO_POW_53) break;
      await s.end();
    }
    assert.match(s.tkn, /^[0-9]+$/);
    assert.notEqual(String(Number(s.tkn)), s.tkn, "a number could not have held it");
    await s.set({ k: "v" });
    assert.deepEqual(await client.session(s.tkn).get("k"), { k: "v" });
    assert.deepEqual(await client.exists([s.tkn, "1"]), [s.tkn]);
    const info = await s.info();
    assert.equal(info.tkn, s.tkn);
    await s.end();
    assert.deepEqual(await client.exists(s.tkn), []);
  });

  test("touch returns ms to the next deadline, -1 without expiry", async () => {
    const s = await client.createSession({ expiry: { duration: 30 } });
    const ttl = await s.touch();
    assert.ok(ttl > 29000 && ttl <= 30000, String(ttl));
    assert.equal(await client.createSession().then((t) => t.touch({ slide: false })), -1);
    await s.end();
  });

  test("owners: ownerSessions lists, ownerEnd ends all but `except`", async () => {
    const owner = unique("owner");
    const a = await client.createSession({ owner });
    const b = await client.createSession({ owner });
    const c = await client.createSession({ owner });
    assert.deepEqual(await client.ownerSessions(owner), [a.tkn, b.tkn, c.tkn]);
    assert.equal(await client.ownerEnd(owner, { except: b }), 2);
    assert.deepEqual(await client.ownerSessions(owner), [b.tkn]);
    assert.equal(await client.ownerEnd(owner), 1);
    assert.deepEqual(await client.ownerSessions(owner), []);
  });

  test("ending a session that does not exist is SessionNotExist", async () => {
    const s = await client.createSession();
    await s.end();
    await assert.rejects(s.end(), (e) => e instanceof NdbError && e.status === 100 && e.command === "SH_END");
    await assert.rejects(client.session("123").get("a"), (e) => e.statusName === "SessionNotExist");
  });

  test("a token that is not a decimal string is refused before sending", () => {
    assert.throws(() => client.session(12345), TypeError);
    assert.throws(() => client.session("12a"), TypeError);
  });
});

describe("keys", () => {
  test("set, add, get, rmv, contains, count, keys, clear, clearSet", async () => {
    const s = await client.createSession();
    await s.set({ a: 1, b: "two", c: [1, { d: null }] });
    await s.add({ a: 99, e: true });
    assert.deepEqual(await s.get(["a", "b", "c", "e", "missing"]), { a: 1, b: "two", c: [1, { d: null }], e: true });
    assert.deepEqual(await s.contains(["e", "x", "a"]), ["e", "a"]);
    assert.equal(await s.count(), 4);
    assert.deepEqual((await s.keys()).sort(), ["a", "b", "c", "e"]);
    await s.rmv(["a", "zz"]);
    assert.equal(await s.count(), 3);
    assert.equal(await s.clearSet({ f: 6 }), 3);
    assert.deepEqual(await s.get(["f", "b"]), { f: 6 });
    assert.equal(await s.clear(), 1);
    assert.equal(await s.count(), 0);
    await s.end();
  });

  test("large integer values round-trip exactly and can be written back unchanged", async () => {
    const s = await client.createSession();
    const values = {
      u64max: 18446744073709551615n,
      i64min: -9223372036854775808n,
      beyond64: 123456789012345678901234567890n,
      safe: 9007199254740991,
      nested: { list: [9007199254740993n, 1.25, "18446744073709551615"] },
    };
    await s.set(values);
    const got = await s.get(Object.keys(values));
    assert.deepEqual(got, values);
    const t = await client.createSession({ keys: got });
    assert.deepEqual(await t.get(Object.keys(values)), values);
    await s.end();
    await t.end();
  });

  test("incr: atomic, bigint beyond 2^53, errors 43 and 44", async () => {
    const s = await client.createSession();
    assert.equal(await s.incr("n"), 1);
    assert.equal(await s.incr("n", 41), 42);
    assert.equal(await s.incr("n", -2), 40);
    await s.set({ big: 9223372036854775000n, f: 1.5 });
    assert.equal(await s.incr("big", 800n), 9223372036854775800n);
    await assert.rejects(s.incr("big", 8n), (e) => e.status === Status.IntegerOverflow);
    await assert.rejects(s.incr("f"), (e) => e.statusName === "ValueNotInteger");
    await assert.rejects(s.incr("n", 2n ** 63n), RangeError);
    const results = await Promise.all(Array.from({ length: 100 }, () => s.incr("c")));
    assert.deepEqual(results, Array.from({ length: 100 }, (_, i) => i + 1));
    await s.end();
  });
});

describe("versions", () => {
  test("withVersion and ifVersion; a mismatch carries the current version", async () => {
    const s = await client.createSession({ keys: { cart: [1] } });
    const read = await s.get("cart", { withVersion: true });
    assert.deepEqual(read, { value: { cart: [1] }, version: 1 });
    assert.equal(await s.set({ cart: [1, 2] }, { ifVersion: read.version }), 2);
    await assert.rejects(s.set({ cart: [1, 3] }, { ifVersion: read.version }), (e) => {
      assert.ok(e instanceof VersionMismatchError);
      assert.ok(e instanceof NdbError);
      assert.equal(e.status, 104);
      assert.equal(e.version, 2);
      return true;
    });
    assert.equal(await s.add({ x: 1 }, { withVersion: true }), 3);
    assert.equal(await s.rmv("x", { ifVersion: 3 }), 4);
    assert.deepEqual(await s.count({ withVersion: true }), { value: 1, version: 4 });
    assert.deepEqual(await s.contains("cart", { withVersion: true }), { value: ["cart"], version: 4 });
    assert.deepEqual(await s.keys({ withVersion: true }), { value: ["cart"], version: 4 });
    assert.deepEqual(await s.incr("n", 5, { ifVersion: 4n }), { value: 5, version: 5 });
    assert.deepEqual(await s.clearSet({ y: 1 }, { withVersion: true }), { value: 2, version: 6 });
    assert.deepEqual(await s.touch({ withVersion: true }), { value: -1, version: 6 });
    assert.deepEqual(await s.clear({ ifVersion: 6 }), { value: 1, version: 7 });
    await s.end();
  });
});

describe("server-wide", () => {
  test("infoAll, endAll, serverInfo on a server of its own", async () => {
    const own = await ServerProcess.start();
    const c = await connect(own.url);
    try {
      await c.createSession({ keys: { a: 1, b: 2 } });
      await c.createSession();
      assert.deepEqual(await c.infoAll(), { totalSessions: 2, totalKeys: 2 });
      const info = await c.serverInfo();
      assert.equal(info.shards, 2);
      assert.equal(info.sessions, 2);
      assert.equal(typeof info.serverVersion, "string");
      assert.equal(await c.endAll(), 2);
      assert.deepEqual(await c.infoAll(), { totalSessions: 0, totalKeys: 0 });
    } finally {
      c.close();
      await own.kill();
    }
  });

  test("save and load with persistence; CommandDisabled without", async () => {
    await assert.rejects(client.save("ds"), (e) => e.status === Status.CommandDisabled);
    const dir = mkdtempSync(join(tmpdir(), "ndb-ts-"));
    const own = await ServerProcess.start(["--persist-path", join(dir, "data")]);
    const c = await connect(own.url);
    try {
      const s = await c.createSession({ name: "kept", keys: { big: 18446744073709551615n } });
      const t = await c.createSession({ keys: { other: 1 } });
      const saved = await c.save("ds", { tkns: [s] });
      assert.equal(saved.name, "ds");
      assert.equal(saved.sessions, 1);
      assert.equal(saved.keys, 1);
      assert.equal(typeof saved.duration, "number");
      await c.endAll();
      const loaded = await c.load("ds");
      assert.deepEqual(loaded, { name: "ds", sessions: 1, keys: 1 });
      // Loaded sessions keep their token and values, digit for digit.
      assert.deepEqual(await s.get("big"), { big: 18446744073709551615n });
      assert.deepEqual(await c.exists([s, t]), [s.tkn]);
    } finally {
      c.close();
      await own.kill();
    }
    await assert.rejects(client.save("../x"), RangeError);
  });
});

describe("errors and options", () => {
  test("status errors carry the right class, status and name", async () => {
    await assert.rejects(client.createSession({ name: "" }), (e) => e instanceof NdbError && e.status === 42 && e.statusName === "ValueSize");
    await assert.rejects(client.ownerSessions(""), (e) => e.status === 42);
    await assert.rejects(client.createSession({ expiry: {} }), (e) => e.statusName === "ParamMissing");
    await assert.rejects(client.createSession({ shared: true }), (e) => e instanceof NdbError && !(e instanceof ConnectionError));
  });

  test("a call aborted by its signal rejects with the signal's reason; the calls around it keep their own answers", async () => {
    const s = await client.createSession({ keys: { a: "A", b: "B", c: "C", d: "D" } });
    for (let round = 0; round < 20; round++) {
      const ac = new AbortController();
      // All four are in flight together; the second is aborted before any answer comes.
      const pa = s.get("a");
      const pb = s.get("b", { signal: ac.signal });
      const pc = s.get("c");
      const pd = s.incr("n", round + 1);
      ac.abort(new Error("gave up"));
      await assert.rejects(pb, /gave up/);
      assert.deepEqual(await pa, { a: "A" });
      assert.deepEqual(await pc, { c: "C" });
      assert.equal(await pd, ((round + 1) * (round + 2)) / 2);
    }
    await assert.rejects(s.get("a", { signal: AbortSignal.abort() }), (e) => e.name === "AbortError");
    assert.deepEqual(await s.get("d", { signal: AbortSignal.timeout(5000) }), { d: "D" });
    await s.end();
  });

  test("10,000 pipelined calls resolve in order", async () => {
    const s = await client.createSession();
    const n = 10000;
    const calls = [];
    for (let i = 0; i < n; i++) {
      calls.push(i % 2 === 0 ? s.set({ [`k${i}`]: i }) : s.get(`k${i - 1}`));
    }
    const results = await Promise.all(calls);
    for (let i = 1; i < n; i += 2) assert.deepEqual(results[i], { [`k${i - 1}`]: i - 1 });
    assert.equal(await s.count(), n / 2);
    await s.end();
  });
});

describe("users", () => {
  let own;
  before(async () => {
    const dir = mkdtempSync(join(tmpdir(), "ndb-ts-users-"));
    const sha = (p) => createHash("sha256").update(p).digest("hex");
    const file = join(dir, "users.json");
    writeFileSync(file, JSON.stringify([
      { name: "ops", passwordSha256: sha("ops-pw"), role: "admin" },
      { name: "web", passwordSha256: sha("web-pw"), role: "app" },
    ]));
    own = await ServerProcess.start(["--users", file]);
  });
  after(async () => own?.kill());

  test("connect with user and password sends SV_AUTH first; roles apply", async () => {
    const c = await connect(own.url, { user: "web", password: "web-pw" });
    try {
      const s = await c.createSession({ keys: { a: 1 } });
      assert.deepEqual(await s.get("a"), { a: 1 });
      await assert.rejects(c.serverInfo(), (e) => e instanceof NdbError && e.statusName === "NotPermitted");
      assert.equal(await c.authenticate("ops", "ops-pw"), "admin");
      assert.equal((await c.serverInfo()).shards, 2);
    } finally {
      c.close();
    }
  });

  test("wrong credentials are an AuthenticationError; none is AuthRequired", async () => {
    await assert.rejects(connect(own.url, { user: "web", password: "nope" }), (e) => e instanceof AuthenticationError && e instanceof ConnectionError && e.status === 17);
    const anon = await connect(own.url);
    try {
      await assert.rejects(anon.createSession(), (e) => e instanceof NdbError && e.status === Status.AuthRequired);
    } finally {
      anon.close();
    }
  });

  test("authenticate() refused (17) with calls pipelined behind it: they reject with ConnectionError, none resolves", async () => {
    const c = await connect(own.url, { user: "web", password: "web-pw", backoff: { initialMs: 10, maxMs: 50 } });
    try {
      const s = await c.createSession({ keys: { a: 1 } });
      const auth = c.authenticate("ops", "wrong");
      const behind = [s.get("a"), s.set({ b: 2 }), s.incr("n"), c.createSession()];
      await assert.rejects(auth, (e) => e instanceof AuthenticationError && e.status === 17);
      for (const o of await Promise.allSettled(behind)) {
        assert.equal(o.status, "rejected", `resolved: ${JSON.stringify(o.value)}`);
        assert.ok(o.reason instanceof ConnectionError, String(o.reason));
        assert.ok(!(o.reason instanceof AuthenticationError));
      }
      // The client reconnects with its own credentials; nothing behind the refusal ran.
      assert.deepEqual(await s.get(["a", "b", "n"]), { a: 1 });
    } finally {
      c.close();
    }
  });
});
