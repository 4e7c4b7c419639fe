/**
 * Status codes of the NemesisDB protocol and the errors a call can fail with.
 *
 * Owns the one table of `st` values (docs/PROTOCOL.md, "Status values") and
 * the error classes. Knows nothing about sockets or commands.
 *
 * Two families, so that callers can tell "the server said no" from "we do
 * not know what happened":
 * - `NdbError`: the server answered with a failure status (`VersionMismatchError`
 *   for 104, which carries the session's current version).
 * - `ConnectionError`: no answer (could not connect, the connection went,
 *   the server broke the contract: `ProtocolError`, or refused the
 *   credentials: `AuthenticationError`).
 */

/** Every `st` value the server may send, named as in the protocol. */
export const Status = {
  Ok: 1,
  PayLoadInvalid: 2,
  JsonInvalid: 3,
  CommandNotExist: 10,
  CommandMultiple: 11,
  CommandType: 12,
  CommandSyntax: 13,
  CommandDisabled: 14,
  AuthRequired: 15,
  NotPermitted: 16,
  AuthFailed: 17,
  ParamMissing: 26,
  ValueTypeInvalid: 41,
  ValueSize: 42,
  ValueNotInteger: 43,
  IntegerOverflow: 44,
  SessionNotExist: 100,
  SessionTokenInvalid: 101,
  SessionOpenFail: 102,
  SessionNewFail: 103,
  VersionMismatch: 104,
  SaveComplete: 121,
  SaveDirWriteFail: 122,
  SaveError: 123,
  LoadComplete: 141,
  LoadError: 142,
  MemoryLimit: 150,
  EventsLost: 160,
  Unknown: 1000,
} as const;

export type StatusName = keyof typeof Status;

const NAMES: ReadonlyMap<number, StatusName> = new Map(
  (Object.keys(Status) as StatusName[]).map((name) => [Status[name], name]),
);

/** The protocol name of `st`, or `Status<st>` for a value not in the table. */
export function statusName(st: unknown): string {
  return (typeof st === "number" && NAMES.get(st)) || `Status<${String(st)}>`;
}

/** A response body: the object inside `{"<CMD>_RSP": {...}}`. */
export type Body = Record<string, unknown>;

/**
 * A session version (docs/PROTOCOL.md, "Versions"): a `number`, or a
 * `bigint` once it passes 2^53 (which ten million writes a second take 28
 * years to reach). Either may be passed back as `ifVersion`.
 */
export type Version = number | bigint;

/** The server answered a request with a status other than the success one. */
export class NdbError extends Error {
  /** The numeric status, e.g. 100. */
  readonly status: number;
  /** The status name, e.g. `"SessionNotExist"` (`Status<n>` for an unknown one). */
  readonly statusName: string;
  /** The request's command, e.g. `"SH_GET"`. */
  readonly command: string;
  /** The server's `m` text, when it sent one. */
  readonly serverMessage: string | undefined;
  /** The whole response body, `st` included. */
  readonly body: Body;

  constructor(command: string, body: Body) {
    const st = typeof body.st === "number" ? body.st : -1;
    const name = statusName(body.st);
    const m = typeof body.m === "string" ? body.m : undefined;
    super(`${command} failed: ${name} (${String(body.st)})${m ? `: ${m}` : ""}`);
    this.name = "NdbError";
    this.status = st;
    this.statusName = name;
    this.command = command;
    this.serverMessage = m;
    this.body = body;
  }
}

/**
 * A write given `ifVersion` found the session at another version (104).
 * Nothing changed. Read again (`get(keys, {withVersion: true})`) and retry
 * with the version just read.
 */
export class VersionMismatchError extends NdbError {
  /** The session's current version, as the server reported it. */
  readonly version: Version | undefined;

  constructor(command: string, body: Body) {
    super(command, body);
    this.name = "VersionMismatchError";
    const v = body.version;
    this.version = typeof v === "number" || typeof v === "bigint" ? v : undefined;
  }
}

/** The error for a failed answer: `VersionMismatchError` for 104, else `NdbError`. */
export function errorFor(command: string, body: Body): NdbError {
  return body.st === Status.VersionMismatch
    ? new VersionMismatchError(command, body)
    : new NdbError(command, body);
}

/**
 * No answer: the server could not be reached, or the connection went.
 *
 * `sent` is true when the request had been written to a connection that
 * then went away: the server may or may not have run it. The client never
 * sends it again by itself (a write run twice is not always harmless).
 */
export class ConnectionError extends Error {
  sent = false;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ConnectionError";
  }
}

/** The server broke the wire contract (a reply that matches no request, not JSON). */
export class ProtocolError extends ConnectionError {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

/**
 * The server refused the credentials (`SV_AUTH` answered 17; it then
 * closes the connection). Never retried: the same credentials would be
 * refused again.
 */
export class AuthenticationError extends ConnectionError {
  readonly status = Status.AuthFailed;
  readonly serverMessage: string | undefined;
  constructor(message: string, serverMessage?: string) {
    super(message);
    this.name = "AuthenticationError";
    this.serverMessage = serverMessage;
  }
}
