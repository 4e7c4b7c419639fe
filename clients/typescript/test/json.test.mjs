// Exact JSON, without a server: parsing keeps integers beyond 2^53, writing writes bigints back.
import assert from "node:assert/strict";
import { test } from "node:test";
import { numberFromSource, stringify } from "../dist/index.js";

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
