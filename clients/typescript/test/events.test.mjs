// Session events: `for await`, filters, keys, and resuming from the cursor after a restart.
import assert from "node:assert/strict";
import { after, before, test } from "./support.mjs";
import { connect } from "../dist/node.js";
import { RestartableServer, ServerProcess, unique } from "./support.mjs";

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
