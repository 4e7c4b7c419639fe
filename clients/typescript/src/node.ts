/**
 * The Node entry (Node 18+): always the `ws` package for the socket (it can
 * pause reading, which event streams need for back-pressure; Node 22's global
 * WebSocket cannot), and for exact integers `JSON.parse` with the number's
 * source text where the runtime has it (Node 21+), else the `lossless-json`
 * package.
 *
 * Credentials go as `SV_AUTH`, the first message of each connection, as in
 * browsers: one way in for both, and a refusal is a status (17) rather than
 * an HTTP error without a body.
 */

import { parse as losslessParse } from "lossless-json";
import { WebSocket, type ClientOptions } from "ws";
import { Client, type ConnectOptions } from "./client.js";
import type { SocketLike } from "./connection.js";
import { type JsonParse, numberFromSource, sourceTextParse, withFastPath } from "./json.js";

export * from "./index.js";

/** Certificates and keys: PEM text or its bytes (a `Buffer` is a `Uint8Array`). */
export type Pem = string | Uint8Array | Array<string | Uint8Array>;

/**
 * Socket options in Node, passed to the `ws` package as they are. Declared
 * here so that using this package's types needs nothing else installed.
 */
export interface NodeSocketOptions {
  /** Certificate authorities to trust for `wss://` (default: Node's). */
  ca?: Pem;
  /** A client certificate and its key, for mutual TLS. */
  cert?: Pem;
  key?: Pem;
  /** The key's passphrase. */
  passphrase?: string;
  /** False accepts any server certificate: for tests only (default true). */
  rejectUnauthorized?: boolean;
  /** The TLS server name (SNI), when not the URL's host. */
  servername?: string;
  /** Extra HTTP headers on the upgrade request (e.g. `Authorization`). */
  headers?: Record<string, string>;
  /** Milliseconds allowed for the opening handshake. */
  handshakeTimeout?: number;
  /** Largest message accepted, in bytes. */
  maxPayload?: number;
}

/** `connect`'s options in Node: socket options too (`ca`, `rejectUnauthorized`, `cert`, `key` for `wss://`). */
export interface NodeConnectOptions extends ConnectOptions {
  ws?: NodeSocketOptions;
}

const exactParse: JsonParse = withFastPath(
  sourceTextParse() ?? ((text) => losslessParse(text, null, numberFromSource)),
);

export async function connect(url: string, options: NodeConnectOptions = {}): Promise<Client> {
  const parse = options.jsonParse ?? exactParse;
  const wsOptions: ClientOptions = { perMessageDeflate: false, ...(options.ws as ClientOptions | undefined) };
  const socket = (u: string): SocketLike => batchWrites(new WebSocket(u, wsOptions));
  return new Client(url, { socket, parse }, options).open(options.signal);
}

/**
 * `ws` writes each message to its TCP socket at once: one system call per
 * call. Pipelined calls made in one turn of the event loop are held back
 * (`cork`) and leave together when the turn ends (`uncork` on the next
 * tick): the same frames in the same order, in far fewer writes. `_socket`
 * is `ws`'s own field; without it messages are simply written one by one.
 */
function batchWrites(ws: WebSocket): SocketLike {
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
