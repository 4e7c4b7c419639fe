// Pipelined throughput of one Node process: N SH_GETs in flight on one
// connection (in windows of W), against the server at NDB_URL or, if none,
// a server started from NEMESISDB_BIN. Not a test: it prints a figure.
//
//   NEMESISDB_BIN=target/release/nemesisdb node test/bench.mjs [N] [W]
import { connect } from "../dist/node.js";
import { ServerProcess } from "./support.mjs";

const total = Number(process.argv[2] ?? 100000);
const windowSize = Number(process.argv[3] ?? 10000);
const own = process.env.NDB_URL ? undefined : await ServerProcess.start();
const client = await connect(process.env.NDB_URL ?? own.url);
const session = await client.createSession({ keys: { cart: [1, 2, 3], big: 18446744073709551615n } });

async function run(n) {
  const started = performance.now();
  for (let done = 0; done < n; done += windowSize) {
    const calls = [];
    for (let i = 0; i < Math.min(windowSize, n - done); i++) calls.push(session.get("cart"));
    await Promise.all(calls);
  }
  return performance.now() - started;
}

await run(Math.min(total, 20000)); // warm-up
const ms = await run(total);
console.log(`${total} pipelined SH_GET (window ${windowSize}) in ${ms.toFixed(0)} ms: ${Math.round((total / ms) * 1000)} calls/s`);
await session.end();
client.close();
await own?.kill();
