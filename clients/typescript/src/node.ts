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
import type { ClientOptions, WebSocket as WsSocket } from "ws";
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
    socket = (u) => batchWrites(new WebSocket(u, wsOptions));
  }
  return new Client(url, { socket, parse }, options).open(options.signal);
}

/**
 * `ws` writes each message to its TCP socket at once: one system call per
 * call. Pipelined calls made in one turn of the event loop are held back
 * (`cork`) and leave together when the turn ends (`uncork` on the next
 * tick): the same frames in the same order, in far fewer writes. `_socket`
 * is `ws`'s own field; without it messages are simply written one by one.
 */
function batchWrites(ws: WsSocket): SocketLike {
  const send = ws.send.bind(ws);
  let corked = false;
  (ws as unknown as SocketLike).send = (data: string) => {
    const tcp = (ws as unknown as { _socket?: { cork(): void; uncork(): void } })._socket;
    if (tcp && !corked) {
      corked = true;
      tcp.cork();
      process.nextTick(() => {
        corked = false;
        tcp.uncork();
      });
    }
    send(data);
  };
  return ws as unknown as SocketLike;
}
