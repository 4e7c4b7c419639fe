// The connection's life: reconnect after the server restarts, surfaced as events; writes never resent.
import assert from "node:assert/strict";
import { test } from "./support.mjs";
import { createHash } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WebSocketServer } from "ws";
import { AuthenticationError, ConnectionError, NdbError, connect } from "../dist/node.js";
import { RestartableServer, delay, eventually, freePort, trackedClient } from "./support.mjs";

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

/** A WebSocket server that answers the first SV_AUTH of `answered` connections, drops them, and ignores the rest. */
async function silentServer({ answered = 0 } = {}) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((r) => wss.once("listening", r));
  const sockets = [];
  let n = 0;
  wss.on("connection", (ws) => {
    sockets.push(ws);
    const answer = n++ < answered;
    ws.on("message", () => {
      if (answer) {
        ws.send(JSON.stringify({ SV_AUTH_RSP: { st: 1, role: "app" } }));
        setTimeout(() => ws.terminate(), 50);
      }
    });
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}/`,
    sockets,
    openCount: () => sockets.filter((w) => w.readyState === 1).length,
    close: () => {
      for (const w of sockets) w.terminate();
      return new Promise((r) => wss.close(r));
    },
  };
}

test("SV_AUTH without an answer fails the connection after connectTimeoutMs", async () => {
  const fake = await silentServer();
  try {
    const started = Date.now();
    await assert.rejects(
      connect(fake.url, { user: "web", password: "pw", connectTimeoutMs: 300 }),
      (e) => e instanceof ConnectionError && /SV_AUTH/.test(e.message),
    );
    assert.ok(Date.now() - started < 5000);
    await eventually(() => fake.openCount() === 0, "the socket closed");
  } finally {
    await fake.close();
  }
});

test("close() stops a reconnection in progress, even an attempt waiting for SV_AUTH", async () => {
  const fake = await silentServer({ answered: 1 });
  const t = await trackedClient(fake.url, { user: "web", password: "pw", backoff: { initialMs: 10, maxMs: 20 } });
  try {
    await t.client.open();
    const attempts = [];
    t.client.on("reconnecting", ({ attempt }) => attempts.push(attempt));
    // The fake drops the first connection; the next attempt opens and waits for an SV_AUTH answer that never comes.
    await eventually(() => attempts.length >= 1 && fake.sockets.length >= 2, "an attempt under way");
    const waiting = t.client.createSession();
    t.client.close();
    await assert.rejects(waiting, ConnectionError);
    await eventually(() => t.openCount() === 0 && fake.openCount() === 0, "every socket closed", 3000);
    const made = t.sockets.length;
    await delay(200);
    assert.equal(t.sockets.length, made, "no attempt after close()");
  } finally {
    t.client.close();
    await fake.close();
  }
});

test("credentials refused on reconnect: AuthenticationError, the client and its streams give up", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ndb-ts-reauth-"));
  const file = join(dir, "users.json");
  const users = (pw) =>
    writeFileSync(file, JSON.stringify([{ name: "web", passwordSha256: createHash("sha256").update(pw).digest("hex"), role: "app" }]));
  users("old-pw");
  const server = await RestartableServer.start(["--users", file]);
  const client = await connect(server.url, { user: "web", password: "old-pw", backoff: { initialMs: 10, maxMs: 50 } });
  try {
    const errors = [];
    client.on("error", ({ error }) => errors.push(error));
    const stream = client.events({ events: ["created"] });
    await stream.start();
    await server.kill();
    users("new-pw");
    await server.startProcess();
    await eventually(() => errors.length === 1, "the client gave up");
    assert.ok(errors[0] instanceof AuthenticationError);
    assert.equal(errors[0].status, 17);
    await assert.rejects(client.createSession(), AuthenticationError);
    await assert.rejects(stream.next(), AuthenticationError);
  } finally {
    client.close();
    await server.kill();
  }
});
