/**
 * The Node entry (Node 18+): the `ws` package for the socket (unless the
 * runtime has a global WebSocket and no `ws` options are given), and for
 * exact integers `JSON.parse` with the number's source text where the
 * runtime has it (Node 21+), else the `lossless-json` package.
 *
 * Credentials go as `SV_AUTH`, the first message of each connection, as in
 * browsers: one way in for both, and a refusal is a status (17) rather than
 * an HTTP error without a body.
 */

import { parse as losslessParse } from "lossless-json";
import type { ClientOptions } from "ws";
import { Client, type ConnectOptions } from "./client.js";
import type { SocketLike } from "./connection.js";
import { type JsonParse, numberFromSource, sourceTextParse, withFastPath } from "./json.js";

export * from "./index.js";

/** `connect`'s options in Node: `ws` options too (`ca`, `rejectUnauthorized`, `cert`, `key` for `wss://`). */
export interface NodeConnectOptions extends ConnectOptions {
  ws?: ClientOptions;
}

const exactParse: JsonParse = withFastPath(
  sourceTextParse() ?? ((text) => losslessParse(text, null, numberFromSource)),
);

export async function connect(url: string, options: NodeConnectOptions = {}): Promise<Client> {
  const parse = options.jsonParse ?? exactParse;
  const globalWs = (globalThis as { WebSocket?: new (url: string) => SocketLike }).WebSocket;
  let socket: (url: string) => SocketLike;
  if (globalWs && options.ws === undefined) {
    socket = (u) => new globalWs(u);
  } else {
    const { WebSocket } = await import("ws");
    const wsOptions: ClientOptions = { perMessageDeflate: false, ...options.ws };
    socket = (u) => new WebSocket(u, wsOptions) as unknown as SocketLike;
  }
  return new Client(url, { socket, parse }, options).open(options.signal);
}
