// Exact JSON, without a server: parsing keeps integers beyond 2^53, writing writes bigints back.
import assert from "node:assert/strict";
import { numberFromSource, stringify } from "../dist/index.js";
import { hasLongDigitRun } from "../dist/json.js";
import { test } from "./support.mjs";

test("numberFromSource keeps unsafe integers exact and leaves the rest numbers", () => {
  assert.equal(numberFromSource("16351792548006066062"), 16351792548006066062n);
  assert.equal(numberFromSource("-9223372036854775808"), -9223372036854775808n);
  assert.equal(numberFromSource("9007199254740991"), 9007199254740991);
  assert.equal(numberFromSource("1.5"), 1.5);
  assert.equal(numberFromSource("1E2"), 100);
});

test("stringify writes bigints as JSON numbers, and everything else as JSON.stringify does", () => {
  const value = { a: 16351792548006066062n, b: [1n, "x", null, undefined], c: undefined, d: { e: -5n } };
  assert.equal(stringify(value), '{"a":16351792548006066062,"b":[1,"x",null,null],"d":{"e":-5}}');
  assert.equal(stringify({ a: 1, b: "s" }), JSON.stringify({ a: 1, b: "s" }));
  const cyclic = { x: 1n };
  cyclic.self = cyclic;
  assert.throws(() => stringify(cyclic), TypeError);
});

test("stringify writes holes in arrays as null, as JSON.stringify does", () => {
  // eslint-disable-next-line no-sparse-arrays
  const sparse = [1n, , 3];
  sparse[5] = "x";
  assert.equal(stringify({ a: sparse }), '{"a":[1,null,3,null,null,"x"]}');
  assert.equal(stringify({ a: new Array(2), b: 1n }), '{"a":[null,null],"b":1}');
});

test("an application's BigInt.prototype.toJSON does not turn bigints into strings", () => {
  assert.equal(Object.getOwnPropertyDescriptor(BigInt.prototype, "toJSON"), undefined);
  Object.defineProperty(BigInt.prototype, "toJSON", {
    value() {
      return this.toString();
    },
    configurable: true,
    writable: true,
  });
  try {
    assert.equal(JSON.stringify({ a: 1n }), '{"a":"1"}'); // what the application asked for, its own business
    assert.equal(stringify({ a: 18446744073709551615n, b: [2n], c: "s", d: 1.5 }), '{"a":18446744073709551615,"b":[2],"c":"s","d":1.5}');
    assert.equal(stringify({ a: 1, b: "s" }), '{"a":1,"b":"s"}');
    assert.equal(stringify({ d: new Date(0) }), JSON.stringify({ d: new Date(0) }));
  } finally {
    delete BigInt.prototype.toJSON;
  }
  assert.equal(BigInt.prototype.toJSON, undefined);
});

test("the parser is chosen by a scan for 16 digits in a row", () => {
  assert.equal(hasLongDigitRun('{"a":123456789012345}'), false);
  assert.equal(hasLongDigitRun('{"a":1234567890123456}'), true);
  assert.equal(hasLongDigitRun('{"a":"123456789012345","b":1}'), false);
  assert.equal(hasLongDigitRun(""), false);
  assert.equal(hasLongDigitRun("9".repeat(16)), true);
});

test("the published types import nothing outside the package (no @types/ws, no @types/node needed)", async () => {
  const { readdirSync, readFileSync } = await import("node:fs");
  const dist = new URL("../dist/", import.meta.url);
  for (const file of readdirSync(dist).filter((f) => f.endsWith(".d.ts"))) {
    const text = readFileSync(new URL(file, dist), "utf8");
    for (const m of text.matchAll(/^(?:import|export)\b.*\bfrom\s*["']([^"']+)["']|\bimport\(\s*["']([^"']+)["']/gm)) {
      const spec = m[1] ?? m[2];
      assert.ok(spec.startsWith("./"), `${file} imports ${spec}`);
    }
    assert.doesNotMatch(text, /\bNodeJS\.|:\s*Buffer\b/, file);
  }
});
