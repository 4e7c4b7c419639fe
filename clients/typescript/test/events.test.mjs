// Session events: `for await`, filters, keys, and resuming from the cursor after a restart.
import assert from "node:assert/strict";
import { after, before, test } from "./support.mjs";
import { connect } from "../dist/node.js";
import { RestartableServer, ServerProcess, delay, eventually, trackedClient, unique } from "./support.mjs";

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

/** The next `n` events of `iterator`. */
async function take(iterator, n) {
  const got = [];
  while (got.length < n) {
    const { value, done } = await iterator.next();
    if (done) break;
    got.push(value);
  }
  return got;
}

test("created, ended and expired events, with keys, filtered by owner", async () => {
  const owner = unique("owner");
  const stream = client.events({ owner, withKeys: true });
  await stream.start();
  const a = await client.createSession({ owner, name: "a" });
  await client.createSession({ owner: unique("other") }); // filtered out
  await a.set({ cart: [1, 18446744073709551615n] });
  await a.end();
  const b = await client.createSession({ owner, expiry: { duration: 1, deleteSession: true } });
  const events = await take(stream, 4);
  assert.deepEqual(events.map((e) => [e.event, e.tkn]), [
    ["created", a.tkn],
    ["ended", a.tkn],
    ["created", b.tkn],
    ["expired", b.tkn],
  ]);
  assert.equal(events[0].name, "a");
  assert.equal(events[0].owner, owner);
  assert.deepEqual(events[1].keys, { cart: [1, 18446744073709551615n] });
  assert.equal(events[3].reason, "idle");
  assert.equal(typeof events[3].deadline, "number");
  assert.equal(stream.cursor, events[3].cursor);
  await stream.close();
  assert.deepEqual(await stream.next(), { value: undefined, done: true });
});

test("for await ... break closes the stream; a new stream resumes after its cursor", async () => {
  const owner = unique("owner");
  const stream = client.events({ owner, events: ["created"] });
  await stream.start();
  const first = await client.createSession({ owner });
  let cursor;
  for await (const event of stream) {
    assert.equal(event.tkn, first.tkn);
    cursor = event.cursor;
    break;
  }
  const second = await client.createSession({ owner });
  const resumed = client.events({ owner, events: ["created"], after: cursor });
  const [event] = await take(resumed, 1);
  assert.equal(event.tkn, second.tkn);
  await resumed.close();
});

test("refused parameters reject the iteration with the server's status", async () => {
  const stream = client.events({ events: ["nonsense"] });
  await assert.rejects(stream.next(), (e) => e.statusName === "ValueSize");
});

test("after the server restarts the stream resumes, reporting the events it lost", async () => {
  const own = await RestartableServer.start();
  const c = await connect(own.url, { reconnectTimeoutMs: 10000 });
  try {
    const stream = c.events({ events: ["created"] });
    await stream.start();
    const before = await c.createSession();
    assert.equal((await take(stream, 1))[0].tkn, before.tkn);
    await own.restart();
    // A cursor from the old process: the server answers 160 with lost -1, then events flow.
    const later = c.createSession();
    const [lost, created] = await take(stream, 2);
    assert.equal(lost.event, "lost");
    assert.equal(lost.lost, -1);
    assert.equal(created.event, "created");
    assert.equal(created.tkn, (await later).tkn);
    await stream.close();
  } finally {
    c.close();
    await own.kill();
  }
});

test("two next() calls waiting at once get two events, in order", async () => {
  const owner = unique("owner");
  const stream = client.events({ owner, events: ["created"] });
  await stream.start();
  const first = stream.next();
  const second = stream.next();
  const a = await client.createSession({ owner });
  const b = await client.createSession({ owner });
  const [r1, r2] = await Promise.all([first, second]);
  assert.equal(r1.value.tkn, a.tkn);
  assert.equal(r2.value.tkn, b.tkn);
  const third = stream.next();
  await stream.close();
  assert.deepEqual(await third, { value: undefined, done: true });
});

test("after a plain connection drop the stream resumes from its cursor: no lost event, nothing twice", async () => {
  const t = await trackedClient(server.url, { backoff: { initialMs: 10, maxMs: 40 } });
  await t.client.open();
  try {
    const owner = unique("owner");
    const stream = t.client.events({ owner, events: ["created"] });
    const life = [];
    for (const kind of ["disconnect", "reconnecting", "reconnect"]) stream.on(kind, () => life.push(kind));
    await stream.start();
    const a = await t.client.createSession({ owner });
    const [ea] = await take(stream, 1);
    assert.equal(ea.tkn, a.tkn);
    assert.equal(typeof ea.cursor, "string");
    const reconnected = new Promise((r) => stream.on("reconnect", r));
    t.sockets[1].terminate(); // the stream's own connection; the server stays up
    const b = await t.client.createSession({ owner }); // most likely while the stream is away
    await reconnected;
    const c = await t.client.createSession({ owner });
    const got = await take(stream, 2);
    assert.deepEqual(got.map((e) => [e.event, e.tkn]), [["created", b.tkn], ["created", c.tkn]]);
    assert.ok(got.every((e) => typeof e.cursor === "string"));
    assert.deepEqual([life[0], life[1], life.at(-1)], ["disconnect", "reconnecting", "reconnect"]);
    assert.equal(t.openCount(), 2);
    await stream.close();
  } finally {
    t.client.close();
  }
});

test("a connection lost while re-subscribing leaves one subscription: no event twice, one socket", async () => {
  const t = await trackedClient(server.url, { backoff: { initialMs: 10, maxMs: 40 } });
  await t.client.open();
  try {
    const owner = unique("owner");
    const stream = t.client.events({ owner, events: ["created"] });
    await stream.start();
    const a = await t.client.createSession({ owner });
    assert.equal((await take(stream, 1))[0].tkn, a.tkn);
    // Drop the stream's connection, then the next two right after each sends SH_SUBSCRIBE.
    let drops = 2;
    t.tap.onSend = (ws, data) => {
      if (drops > 0 && data.startsWith('{"SH_SUBSCRIBE"')) {
        drops--;
        ws.terminate();
      }
    };
    const reconnected = new Promise((r) => stream.on("reconnect", r));
    t.sockets[1].terminate();
    await reconnected;
    assert.equal(drops, 0);
    const b = await t.client.createSession({ owner });
    const c = await t.client.createSession({ owner });
    assert.deepEqual((await take(stream, 2)).map((e) => e.tkn), [b.tkn, c.tkn]);
    await delay(200); // time for a second subscription, were there one, to deliver b and c again
    const d = await t.client.createSession({ owner });
    assert.deepEqual((await take(stream, 1)).map((e) => e.tkn), [d.tkn]);
    assert.equal(t.openCount(), 2, "the client's connection and the stream's, no other");
    await stream.close();
    await eventually(() => t.openCount() === 1, "the stream's socket closed");
  } finally {
    t.client.close();
  }
});

test("closing a paused stream closes its socket at once", async () => {
  const t = await trackedClient(server.url);
  await t.client.open();
  try {
    const owner = unique("owner");
    const stream = t.client.events({ owner, events: ["created"] });
    await stream.start();
    const ws = t.sockets[1];
    await Promise.all(Array.from({ length: 400 }, () => t.client.createSession({ owner })));
    await eventually(() => ws.isPaused, "the stream stopped reading");
    await stream.close();
    // Paused, the close handshake would wait for ws's 30 s close timeout.
    await eventually(() => ws.readyState === 3, "the stream's socket closed", 3000);
  } finally {
    t.client.close();
  }
});
