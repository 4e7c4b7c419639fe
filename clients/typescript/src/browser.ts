/**
 * The browser entry: the page's own WebSocket, and `JSON.parse` with the
 * number's source text (Chrome/Edge 114+, Firefox 135+, Safari 18.4+) for
 * exact integers. No other code is loaded.
 *
 * Credentials go as `SV_AUTH`, the first message of each connection: a
 * browser cannot set headers on a WebSocket upgrade.
 */

import { Client, type ConnectOptions } from "./client.js";
import type { SocketLike } from "./connection.js";
import { sourceTextParse, withFastPath } from "./json.js";

export * from "./index.js";

const exact = sourceTextParse();

export async function connect(url: string, options: ConnectOptions = {}): Promise<Client> {
  const parse = options.jsonParse ?? (exact && withFastPath(exact));
  if (!parse) {
    throw new TypeError(
      "this browser's JSON.parse cannot give a reviver the number's source text, so 64-bit tokens " +
        "would lose digits: give connect() an exact parser as options.jsonParse (see the README)",
    );
  }
  const WS = (globalThis as { WebSocket?: new (url: string) => SocketLike }).WebSocket;
  if (!WS) throw new TypeError("no WebSocket in this runtime: in Node, import from 'nemesisdb/node'");
  return new Client(url, { socket: (u) => new WS(u), parse }, options).open(options.signal);
}
