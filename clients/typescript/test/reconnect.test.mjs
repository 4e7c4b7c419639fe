// The connection's life: reconnect after the server restarts, surfaced as events; writes never resent.
import assert from "node:assert/strict";
import { test } from "./support.mjs";
import { ConnectionError, NdbError, connect } from "../dist/node.js";
import { RestartableServer, eventually, freePort } from "./support.mjs";

test("after the server restarts the client reconnects with backoff and says so", async () => {
  const server = await RestartableServer.start();
  const client = await connect(server.url, { reconnectTimeoutMs: 10000 });
  const seen = [];
  client.on("disconnect", () => seen.push("disconnect"));
  client.on("reconnecting", ({ attempt }) => seen.push(`reconnecting ${attempt}`));
  client.on("reconnect", () => seen.push("reconnect"));
  try {
    const s = await client.createSession({ keys: { a: 1 } });
    await server.restart();
    // The old session went with the old process; the client did not.
    await assert.rejects(s.get("a"), (e) => e instanceof NdbError && e.statusName === "SessionNotExist");
    assert.equal(seen[0], "disconnect");
    assert.ok(seen.includes("reconnecting 1"));
    assert.equal(seen.at(-1), "reconnect");
    const t = await client.createSession({ keys: { b: 2 } });
    assert.deepEqual(await t.get("b"), { b: 2 });
  } finally {
    client.close();
    await server.kill();
  }
});

test("calls in flight when the connection goes fail with ConnectionError (sent) and are not resent", async () => {
  const server = await RestartableServer.start();
  const client = await connect(server.url, { reconnectTimeoutMs: 10000 });
  try {
    const s = await client.createSession();
    // Many writes in flight, then the server dies under them.
    const writes = Array.from({ length: 2000 }, (_, i) => s.incr("n").then(() => "ok", (e) => e));
    await server.kill();
    const outcomes = await Promise.all(writes);
    const failed = outcomes.filter((o) => o !== "ok");
    for (const e of failed) {
      assert.ok(e instanceof ConnectionError, String(e));
      assert.equal(e.sent, true);
    }
    await server.startProcess();
    // Calls made while the server was away wait for the reconnection.
    const fresh = await client.createSession({ keys: { x: 1 } });
    assert.deepEqual(await fresh.get("x"), { x: 1 });
    // Nothing was resent: the new server never saw the old session's writes.
    assert.equal((await client.infoAll()).totalSessions, 1);
  } finally {
    client.close();
    await server.kill();
  }
});

test("a server that stays away fails calls after reconnectTimeoutMs; connect fails at once", async () => {
  const port = await freePort();
  await assert.rejects(connect(`ws://127.0.0.1:${port}/`), ConnectionError);
  const server = await RestartableServer.start();
  const client = await connect(server.url, { reconnectTimeoutMs: 300 });
  try {
    await server.kill();
    await eventually(() => !client.isOpen, "client saw the loss");
    const started = Date.now();
    await assert.rejects(client.createSession(), (e) => e instanceof ConnectionError && !e.sent);
    assert.ok(Date.now() - started >= 250);
  } finally {
    client.close();
  }
});

test("reconnect: false leaves the client closed after a loss", async () => {
  const server = await RestartableServer.start();
  const client = await connect(server.url, { reconnect: false });
  try {
    await server.restart();
    await eventually(() => !client.isOpen, "client saw the loss");
    await assert.rejects(client.createSession(), ConnectionError);
  } finally {
    client.close();
    await server.kill();
  }
});
