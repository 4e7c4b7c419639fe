/**
 * nemesisdb: a client for NemesisDB-protocol session stores, for browsers and Node.
 *
 * # Layout
 *
 * - `browser.ts`, `node.ts`: the two entries; each gives `connect` its
 *   runtime (a WebSocket, an exact JSON parser) and re-exports the rest.
 * - `client.ts`: `Client` (one method per command, reconnection), `Session`.
 * - `events.ts`: `EventStream`, `for await` over session events, resuming from its cursor.
 * - `connection.ts`: one pipelined WebSocket: answers matched in order, events set aside.
 * - `json.ts`: exact parsing (integers beyond 2^53 as `bigint`) and writing.
 * - `status.ts`: the status table and the error classes.
 *
 * This module holds what both entries share; each entry adds its `connect`.
 */

export { Client, Session, token, tokenString } from "./client.js";
export type {
  CallOptions,
  ClientEvents,
  ConnectOptions,
  CreateSessionOptions,
  ExpiryOptions,
  Int,
  Keys,
  ReadOptions,
  ServerInfo,
  SessionInfo,
  TokenLike,
  Versioned,
  WriteOptions,
} from "./client.js";
export { EventStream } from "./events.js";
export type { EventKind, EventsOptions, SessionEvent } from "./events.js";
export type { JsonParse, JsonValue } from "./json.js";
export { numberFromSource, stringify } from "./json.js";
export {
  AuthenticationError,
  ConnectionError,
  NdbError,
  ProtocolError,
  Status,
  VersionMismatchError,
  statusName,
} from "./status.js";
export type { Body, StatusName, Version } from "./status.js";
