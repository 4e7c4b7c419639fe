/**
 * JSON for the wire, exact for 64-bit integers.
 *
 * `JSON.parse` turns 16351792548006066062 into 16351792548006066000: another
 * session. Every answer is therefore parsed so that an integer outside the
 * safe range (±(2^53 - 1)) becomes a `bigint` with exactly its digits;
 * every other number stays a `number`. Three ways, fastest first:
 *
 * 1. A message with no run of 16 digits cannot hold an unsafe integer (every
 *    integer of 15 digits or fewer is safe): plain `JSON.parse`. The check
 *    only picks the parser; it never edits the message.
 * 2. Where the runtime gives revivers the number's source text (Chrome and
 *    Edge 114+, Firefox 135+, Safari 18.4+, Node 21+), `JSON.parse` with a
 *    reviver that rebuilds unsafe integers from their source.
 * 3. Otherwise a parser given by the runtime entry (Node 18/20: the
 *    `lossless-json` package).
 *
 * `stringify` writes a `bigint` as its digits (even where an application
 * installed `BigInt.prototype.toJSON`), so values read back can be written
 * unchanged.
 */

export type JsonParse = (text: string) => unknown;

/** A JSON value as this client reads and writes it: integers beyond 2^53 are `bigint`. */
export type JsonValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | JsonValue[]
  | { [key: string]: JsonValue };

const INTEGER = /^-?(0|[1-9][0-9]*)$/;

/** A number token's text as a `number`, or a `bigint` when it is an integer a `number` cannot hold. */
export function numberFromSource(source: string): number | bigint {
  // 15 characters hold at most 15 digits: always a safe integer, or not an integer.
  if (source.length <= 15) return Number(source);
  const n = Number(source);
  if (!Number.isSafeInteger(n) && INTEGER.test(source)) return BigInt(source);
  return n;
}

type SourceReviver = (key: string, value: unknown, context?: { source?: string }) => unknown;

function exactReviver(_key: string, value: unknown, context?: { source?: string }): unknown {
  if (typeof value === "number" && !Number.isSafeInteger(value) && context?.source !== undefined) {
    return numberFromSource(context.source);
  }
  return value;
}

/** `JSON.parse` with an exact reviver, when the runtime gives revivers the source text; else undefined. */
export function sourceTextParse(): JsonParse | undefined {
  let supported = false;
  try {
    const probe: SourceReviver = (_k, v, ctx) => {
      if (ctx?.source === "9007199254740993") supported = true;
      return v;
    };
    JSON.parse("9007199254740993", probe as (k: string, v: unknown) => unknown);
  } catch {
    return undefined;
  }
  if (!supported) return undefined;
  const reviver = exactReviver as (k: string, v: unknown) => unknown;
  return (text) => JSON.parse(text, reviver);
}

/** Wrap an exact parser with the fast path for messages that cannot hold an unsafe integer. */
export function withFastPath(exact: JsonParse): JsonParse {
  return (text) => (hasLongDigitRun(text) ? exact(text) : JSON.parse(text));
}

/** Whether `text` holds 16 or more ASCII digits in a row: a plain scan, it never edits the text. */
export function hasLongDigitRun(text: string): boolean {
  let run = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      if (++run >= 16) return true;
    } else {
      run = 0;
    }
  }
  return false;
}

/** `JSON.stringify`, but a `bigint` is written as its decimal digits (a JSON number). */
export function stringify(value: unknown): string {
  // An application may install `BigInt.prototype.toJSON` (commonly to give a
  // string): `JSON.stringify` would then write every bigint as that, a
  // string, not a number. Only then, or when `JSON.stringify` refuses a
  // bigint, is the message written by this module's own writer.
  if (typeof (BigInt.prototype as { toJSON?: unknown }).toJSON !== "function") {
    try {
      return JSON.stringify(value);
    } catch (e) {
      if (!(e instanceof TypeError)) throw e;
    }
  }
  const out: string[] = [];
  write(value, out, new Set());
  return out.join("");
}

function write(value: unknown, out: string[], seen: Set<object>): boolean {
  if (typeof value === "bigint") {
    out.push(value.toString());
    return true;
  }
  if (value !== null && typeof value === "object") {
    const withToJson = value as { toJSON?: () => unknown };
    if (typeof withToJson.toJSON === "function") return write(withToJson.toJSON(), out, seen);
    if (seen.has(value)) throw new TypeError("cannot write a cyclic structure as JSON");
    seen.add(value);
    if (Array.isArray(value)) {
      out.push("[");
      // An index loop, not forEach: a hole is written as null, as JSON.stringify does.
      for (let i = 0; i < value.length; i++) {
        if (i > 0) out.push(",");
        if (!write(value[i], out, seen)) out.push("null");
      }
      out.push("]");
    } else {
      out.push("{");
      let first = true;
      for (const [k, v] of Object.entries(value)) {
        const mark = out.length;
        out.push(first ? "" : ",", JSON.stringify(k), ":");
        if (write(v, out, seen)) first = false;
        else out.length = mark; // undefined, a function: left out, as JSON.stringify does
      }
      out.push("}");
    }
    seen.delete(value);
    return true;
  }
  const text = JSON.stringify(value) as string | undefined;
  if (text === undefined) return false;
  out.push(text);
  return true;
}
