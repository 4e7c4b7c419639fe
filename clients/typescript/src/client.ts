/**
 * `Client`: one method per server command, the reconnection of its request
 * connection, and `Session`, a handle on one session's token.
 *
 * Owns argument checking and the shape of each command's request and result.
 * The socket and answer matching live in `connection.ts`; statuses and error
 * classes in `status.ts`; event streams in `events.ts`. Nothing here knows
 * which runtime it runs in: the entries (`browser.ts`, `node.ts`) hand it a
 * `Runtime` (how to make a socket, how to parse JSON exactly).
 */

import { Listeners } from "./listeners.js";
import { Connection, type ConnectionHooks, type SocketFactory, describe } from "./connection.js";
import { EventStream, type EventsOptions } from "./events.js";
import type { JsonParse, JsonValue } from "./json.js";
import {
  AuthenticationError,
  type Body,
  ConnectionError,
  NdbError,
  ProtocolError,
  Status,
  type Version,
} from "./status.js";

/** What a runtime entry gives the client. */
export interface Runtime {
  socket: SocketFactory;
  parse: JsonParse;
}

/** Options of `connect`. */
export interface ConnectOptions {
  /** With `password`: sent as `SV_AUTH`, the first message of every connection the client opens. */
  user?: string;
  password?: string;
  /** Replace a lost connection (default true). False: a lost connection fails every later call. */
  reconnect?: boolean;
  /** How long a call waits for a connection being re-established before it fails (default 5000 ms). */
  reconnectTimeoutMs?: number;
  /** Backoff between reconnection attempts: from `initialMs` (50), doubling to `maxMs` (2000), with jitter. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** How long one attempt to open a socket may take (default 10000 ms). */
  connectTimeoutMs?: number;
  /** Aborts the first connection attempt. */
  signal?: AbortSignal;
  /** An exact JSON parser to use instead of the runtime's (see the README, "Token precision"). */
  jsonParse?: JsonParse;
}

/** Per-call options: every method takes `signal` (e.g. `AbortSignal.timeout(500)`). */
export interface CallOptions {
  /** Abort waiting for the answer; the call rejects with the signal's reason. */
  signal?: AbortSignal;
}
export interface ReadOptions extends CallOptions {
  /** Also return the session's version (docs/PROTOCOL.md, "Versions"). */
  withVersion?: boolean;
}
export interface WriteOptions extends ReadOptions {
  /** Write only if the session is at this version; else `VersionMismatchError` and nothing changes. */
  ifVersion?: Version;
}
type Plain = { withVersion?: false; ifVersion?: undefined };
type Versioned_ = { withVersion: true } | { ifVersion: Version };

/** A result together with the session's version after the command. */
export interface Versioned<T> {
  value: T;
  version: Version;
}

/** Name -> value, as stored. Integers beyond 2^53 are `bigint`. */
export type Keys = Record<string, JsonValue>;

/** An integer from the server that may be beyond 2^53 (an `SH_INCR` value). */
export type Int = number | bigint;

/** Where a token is expected: its decimal string, or a `Session`. */
export type TokenLike = string | Session;

export interface ExpiryOptions {
  /** Seconds of idleness until expiry (0: no idle deadline). */
  duration?: number;
  /** Absolute lifetime in seconds from creation. */
  maxLifetime?: number;
  /** Delete the session on expiry (default false: only its keys are cleared). */
  deleteSession?: boolean;
  extendOnSetAdd?: boolean;
  extendOnGet?: boolean;
}

export interface CreateSessionOptions extends CallOptions {
  name?: string;
  shared?: boolean;
  owner?: string;
  /** Initial keys, set in the same step as the creation. */
  keys?: Keys;
  expiry?: ExpiryOptions;
  /** Set the handle's `version` (1). */
  withVersion?: boolean;
}

export interface SessionInfo {
  tkn: string;
  name?: string;
  shared: boolean;
  owner?: string;
  keyCnt: number;
  expires: boolean;
  expiry?: {
    duration: number;
    remaining: number;
    deleteSession: boolean;
    extendOnSetAdd: boolean;
    extendOnGet: boolean;
    maxLifetime?: number;
    lifetimeRemaining?: number;
  };
  version?: Version;
}

export interface ServerInfo {
  serverVersion: string;
  persistEnabled: boolean;
  shards: number;
  sessions: number;
  keys: number;
  connections: number;
  uptimeSeconds: number;
  memoryUsed: number;
  maxMemory: number;
  sessionNotExist: number;
  [field: string]: unknown;
}

/** What `client.on` reports about the request connection. */
export interface ClientEvents {
  /** The connection went; `error` says why. Calls in flight failed with `ConnectionError` (`sent: true`). */
  disconnect: { error: ConnectionError };
  /** Attempt `attempt` (1, 2, ...) starts after `delayMs`. */
  reconnecting: { attempt: number; delayMs: number };
  /** A new connection is open (and authenticated); calls flow again. */
  reconnect: { attempts: number };
  /** The client gave up for good (the credentials were refused). */
  error: { error: Error };
}

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;
const DATASET_NAME = /^[A-Za-z0-9_.-]{1,128}$/;
const DECIMAL = /^[0-9]+$/;

/** A session: its token and the calls that act on it. Made by `createSession`, `openSession` or `client.session(tkn)`. */
export class Session {
  constructor(
    readonly client: Client,
    /** The token, as a decimal string (exact: a `number` cannot hold every u64). */
    readonly tkn: string,
    readonly name?: string,
    readonly shared = false,
    readonly owner?: string,
    /** The version when the handle was made, if asked for (`withVersion`); a snapshot. */
    readonly version?: Version,
  ) {}

  toString(): string {
    return this.tkn;
  }
  toJSON(): string {
    return this.tkn;
  }

  /** Set keys (SH_SET). Resolves to the new version when `withVersion`/`ifVersion` is given. */
  async set(keys: Keys, opts: WriteOptions = {}): Promise<Version | undefined> {
    return this.client.write("SH_SET", { tkn: this.tkn, keys: keyValues(keys) }, opts);
  }
  /** Set keys that do not exist yet; existing keys keep their value (SH_ADD). */
  async add(keys: Keys, opts: WriteOptions = {}): Promise<Version | undefined> {
    return this.client.write("SH_ADD", { tkn: this.tkn, keys: keyValues(keys) }, opts);
  }
  /** Remove keys; absent names are ignored (SH_RMV). */
  async rmv(keys: string | string[], opts: WriteOptions = {}): Promise<Version | undefined> {
    return this.client.write("SH_RMV", { tkn: this.tkn, keys: keyNames(keys) }, opts);
  }

  /** Read keys (SH_GET): only the keys that exist. */
  get(keys: string | string[], opts?: CallOptions & Plain): Promise<Keys>;
  get(keys: string | string[], opts: CallOptions & { withVersion: true }): Promise<Versioned<Keys>>;
  async get(keys: string | string[], opts: ReadOptions = {}): Promise<Keys | Versioned<Keys>> {
    return this.client.result("SH_GET", { tkn: this.tkn, keys: keyNames(keys) }, opts, (b) => b.keys as Keys);
  }

  /** Which of `keys` exist, in request order (SH_CONTAINS). */
  contains(keys: string | string[], opts?: CallOptions & Plain): Promise<string[]>;
  contains(keys: string | string[], opts: CallOptions & { withVersion: true }): Promise<Versioned<string[]>>;
  async contains(keys: string | string[], opts: ReadOptions = {}): Promise<string[] | Versioned<string[]>> {
    return this.client.result("SH_CONTAINS", { tkn: this.tkn, keys: keyNames(keys) }, opts, (b) => b.contains as string[]);
  }

  /** How many keys the session holds (SH_COUNT). */
  count(opts?: CallOptions & Plain): Promise<number>;
  count(opts: CallOptions & { withVersion: true }): Promise<Versioned<number>>;
  async count(opts: ReadOptions = {}): Promise<number | Versioned<number>> {
    return this.client.result("SH_COUNT", { tkn: this.tkn }, opts, (b) => Number(b.cnt));
  }

  /** The names of all keys, in no particular order (SH_KEYS). */
  keys(opts?: CallOptions & Plain): Promise<string[]>;
  keys(opts: CallOptions & { withVersion: true }): Promise<Versioned<string[]>>;
  async keys(opts: ReadOptions = {}): Promise<string[] | Versioned<string[]>> {
    return this.client.result("SH_KEYS", { tkn: this.tkn }, opts, (b) => b.keys as string[]);
  }

  /** Remove every key, keep the session (SH_CLEAR); resolves to how many were removed. */
  clear(opts?: CallOptions & Plain): Promise<number>;
  clear(opts: CallOptions & Versioned_): Promise<Versioned<number>>;
  async clear(opts: WriteOptions = {}): Promise<number | Versioned<number>> {
    return this.client.result("SH_CLEAR", { tkn: this.tkn }, opts, (b) => Number(b.cnt));
  }

  /** Replace all keys with `keys` in one step (SH_CLEAR_SET); resolves to how many were removed. */
  clearSet(keys: Keys, opts?: CallOptions & Plain): Promise<number>;
  clearSet(keys: Keys, opts: CallOptions & Versioned_): Promise<Versioned<number>>;
  async clearSet(keys: Keys, opts: WriteOptions = {}): Promise<number | Versioned<number>> {
    return this.client.result("SH_CLEAR_SET", { tkn: this.tkn, keys: keyValues(keys) }, opts, (b) => Number(b.cnt));
  }

  /** Add `by` (default 1) to the integer at `key`, atomically (SH_INCR); resolves to the new value. */
  incr(key: string, by?: Int, opts?: CallOptions & Plain): Promise<Int>;
  incr(key: string, by: Int | undefined, opts: CallOptions & Versioned_): Promise<Versioned<Int>>;
  async incr(key: string, by: Int = 1, opts: WriteOptions = {}): Promise<Int | Versioned<Int>> {
    if (typeof key !== "string") throw new TypeError("key must be a string");
    if (!isIntegerIn(by, I64_MIN, I64_MAX)) throw new RangeError(`by must be a signed 64-bit integer, got ${String(by)}`);
    return this.client.result("SH_INCR", { tkn: this.tkn, key, by }, opts, (b) => b.value as Int);
  }

  /** Facts about the session (SH_INFO); `version` too with `withVersion`. */
  async info(opts: ReadOptions = {}): Promise<SessionInfo> {
    const body = await this.client.call("SH_INFO", withVersion({ tkn: this.tkn }, opts), opts);
    return { ...withoutSt(body), tkn: tokenString(body.tkn) } as unknown as SessionInfo;
  }

  /**
   * Keep the session alive (SH_TOUCH): with `slide` (default true) its idle
   * deadline moves to now + duration. Resolves to ms until its next
   * deadline, -1 when it has none.
   */
  touch(opts?: CallOptions & { slide?: boolean } & Plain): Promise<number>;
  touch(opts: CallOptions & { slide?: boolean; withVersion: true }): Promise<Versioned<number>>;
  async touch(opts: ReadOptions & { slide?: boolean } = {}): Promise<number | Versioned<number>> {
    return this.client.result("SH_TOUCH", { tkn: this.tkn, slide: opts.slide ?? true }, opts, (b) => Number(b.ttlMs));
  }

  /** End the session (SH_END). */
  async end(opts: CallOptions = {}): Promise<void> {
    await this.client.call("SH_END", { tkn: this.tkn }, opts);
  }
}

/**
 * A client of a NemesisDB-protocol server. Make one with `connect(url, options)`.
 *
 * Calls are pipelined on one WebSocket: any number may be in flight, each
 * gets its own answer. When the connection goes, calls in flight fail with
 * `ConnectionError` (`sent: true`: they may have run) and are never sent
 * again; the client reconnects in the background with backoff (see `on`)
 * and calls made meanwhile wait for it, up to `reconnectTimeoutMs`.
 */
export class Client {
  private conn: Connection | undefined;
  /** Credentials sent as SV_AUTH first on every connection (from options, or the last `authenticate`). */
  private credentials: { user: string; password: string } | undefined;
  private closed = false;
  /** The error that ended the client for good (refused credentials, closed, reconnect off). */
  private fatal: Error | undefined;
  private reconnecting = false;
  private waiters: Array<{ resolve: (c: Connection) => void; reject: (e: Error) => void }> = [];
  private readonly listeners = new Listeners<ClientEvents>();
  private readonly streams = new Set<EventStream>();
  /** Aborted by `close()`: ends backoff sleeps and connection attempts in progress. */
  private readonly lifetime = new AbortController();
  private readonly reconnectEnabled: boolean;
  private readonly reconnectTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly backoff: { initialMs: number; maxMs: number };

  /** Use `connect(url, options)`. */
  constructor(
    /** Where the client connects, e.g. `ws://127.0.0.1:1987/`. */
    readonly url: string,
    private readonly runtime: Runtime,
    options: ConnectOptions = {},
  ) {
    const { user, password } = options;
    if ((user === undefined) !== (password === undefined)) throw new TypeError("give both user and password, or neither");
    if (user !== undefined && password !== undefined) {
      if (typeof user !== "string" || typeof password !== "string") throw new TypeError("user and password must be strings");
      this.credentials = { user, password };
    }
    this.reconnectEnabled = options.reconnect ?? true;
    this.reconnectTimeoutMs = options.reconnectTimeoutMs ?? 5000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this.backoff = { initialMs: options.backoff?.initialMs ?? 50, maxMs: options.backoff?.maxMs ?? 2000 };
  }

  // ---------------------------------------------------------------- connection

  /** Open the first connection: one attempt. Called by `connect`. */
  async open(signal?: AbortSignal): Promise<this> {
    const both = anySignal([signal, this.lifetime.signal]);
    try {
      this.conn = await this.openConnection(both.signal, { onClose: (e) => this.onLost(e) });
    } finally {
      both.dispose();
    }
    return this;
  }

  /** Aborted when the client closes. @internal */
  get closedSignal(): AbortSignal {
    return this.lifetime.signal;
  }

  /** True while the request connection is open. */
  get isOpen(): boolean {
    return this.conn?.isOpen ?? false;
  }

  /** Listen to the request connection's life; returns a function that removes the listener. */
  on<K extends keyof ClientEvents>(type: K, listener: (ev: ClientEvents[K]) => void): () => void {
    return this.listeners.on(type, listener);
  }

  private emit<K extends keyof ClientEvents>(type: K, ev: ClientEvents[K]): void {
    this.listeners.emit(type, ev);
  }

  /** Close the connection and every event stream. Calls in flight fail with `ConnectionError`. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.fatal = new ConnectionError("client closed");
    this.lifetime.abort(this.fatal);
    this.conn?.close("client closed");
    this.conn = undefined;
    for (const stream of [...this.streams]) void stream.close();
    this.rejectWaiters(this.fatal);
  }

  /**
   * A connection to this client's server, authenticated as the client is:
   * the request connection's and every event stream's. Rejects with
   * `AuthenticationError` when the credentials are refused.
   */
  async openConnection(signal: AbortSignal | undefined, hooks: ConnectionHooks): Promise<Connection> {
    let lost: ConnectionError | undefined;
    let authenticated = false;
    const conn = await Connection.open(
      this.runtime.socket,
      this.url,
      this.runtime.parse,
      {
        onEvent: hooks.onEvent,
        // Until authenticated, a loss is this attempt's failure, not the client's.
        onClose: (e) => (authenticated ? hooks.onClose?.(e) : (lost = e)),
      },
      this.connectTimeoutMs,
      signal,
    );
    if (this.credentials) {
      const { user, password } = this.credentials;
      // The answer is bounded like the socket's opening: a server that
      // accepts the socket but never answers must not hold the client.
      const timeout = new AbortController();
      const timer = setTimeout(
        () => timeout.abort(new ConnectionError(`no answer to SV_AUTH from ${this.url} within ${this.connectTimeoutMs} ms`)),
        this.connectTimeoutMs,
      );
      const both = anySignal([signal, timeout.signal]);
      try {
        await conn.request("SV_AUTH", { user, password }, [Status.Ok], both.signal);
      } catch (e) {
        conn.close();
        if (e instanceof NdbError && e.status === Status.AuthFailed) {
          throw new AuthenticationError(`the server refused user ${JSON.stringify(user)}`, e.serverMessage);
        }
        throw e;
      } finally {
        clearTimeout(timer);
        both.dispose();
      }
    }
    if (lost) throw lost;
    authenticated = true;
    return conn;
  }

  private onLost(error: ConnectionError): void {
    this.conn = undefined;
    if (this.closed) return;
    this.emit("disconnect", { error });
    if (error instanceof ProtocolError || !this.reconnectEnabled) {
      this.fatal = error instanceof ProtocolError ? error : new ConnectionError(`connection lost and reconnect is off: ${error.message}`);
      this.rejectWaiters(this.fatal);
      return;
    }
    void this.reconnectLoop();
  }

  private async reconnectLoop(): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    let delay = 0;
    for (let attempt = 1; !this.closed; attempt++) {
      this.emit("reconnecting", { attempt, delayMs: delay });
      if (delay > 0) await sleep(delay, this.lifetime.signal);
      if (this.closed) break;
      try {
        const conn = await this.openConnection(this.lifetime.signal, { onClose: (e) => this.onLost(e) });
        if (this.closed) {
          conn.close();
          break;
        }
        this.conn = conn;
        this.reconnecting = false;
        this.emit("reconnect", { attempts: attempt });
        const waiters = this.waiters;
        this.waiters = [];
        for (const w of waiters) w.resolve(conn);
        return;
      } catch (e) {
        if (e instanceof AuthenticationError) {
          this.fatal = e;
          this.emit("error", { error: e });
          this.rejectWaiters(e);
          break;
        }
      }
      delay = nextDelay(delay, this.backoff);
    }
    this.reconnecting = false;
  }

  private rejectWaiters(error: Error): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(error);
  }

  /** The open connection, or one that the reconnection will open within `reconnectTimeoutMs`. */
  private connection(signal?: AbortSignal): Promise<Connection> {
    if (this.conn?.isOpen) return Promise.resolve(this.conn);
    if (this.fatal) return Promise.reject(this.fatal);
    return new Promise<Connection>((resolve, reject) => {
      const timer = setTimeout(() => {
        done();
        reject(new ConnectionError(`no connection to ${this.url} within ${this.reconnectTimeoutMs} ms`));
      }, this.reconnectTimeoutMs);
      const onAbort = () => {
        done();
        reject(signal?.reason);
      };
      const waiter = {
        resolve: (c: Connection) => {
          done();
          resolve(c);
        },
        reject: (e: Error) => {
          done();
          reject(e);
        },
      };
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.waiters = this.waiters.filter((w) => w !== waiter);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  /** Send one command; resolves with the answer's body (statuses in `ok` count as success). @internal */
  call(command: string, params: object, opts: CallOptions = {}, ok: readonly number[] = [Status.Ok]): Promise<Body> {
    const conn = this.conn;
    // The common case stays synchronous, so that calls made in one turn are sent in that order.
    // A socket already closing (its close event not yet handled) is not
    // written to: the call waits for the next connection instead.
    if (conn?.isOpen) return conn.request(command, params, ok, opts.signal);
    return this.connection(opts.signal).then((c) => c.request(command, params, ok, opts.signal));
  }

  /** A write that returns nothing but, when asked, the new version. @internal */
  async write(command: string, params: Record<string, unknown>, opts: WriteOptions): Promise<Version | undefined> {
    const versioned = addVersionParams(params, opts);
    const body = await this.call(command, params, opts);
    return versioned ? versionOf(command, body) : undefined;
  }

  /** A command whose result `pick` takes from the body; with the version when asked. @internal */
  async result<T>(command: string, params: Record<string, unknown>, opts: WriteOptions, pick: (b: Body) => T): Promise<T | Versioned<T>> {
    const versioned = addVersionParams(params, opts);
    const body = await this.call(command, params, opts);
    return versioned ? { value: pick(body), version: versionOf(command, body) } : pick(body);
  }

  /**
   * Authenticate this connection as `user` (SV_AUTH); resolves to the role.
   * Every connection the client opens later sends the same credentials.
   * A refusal (17) rejects with `AuthenticationError`; the server closes the connection.
   */
  async authenticate(user: string, password: string, opts: CallOptions = {}): Promise<string> {
    if (typeof user !== "string" || typeof password !== "string") throw new TypeError("user and password must be strings");
    try {
      const body = await this.call("SV_AUTH", { user, password }, opts);
      this.credentials = { user, password };
      return String(body.role);
    } catch (e) {
      if (e instanceof NdbError && e.status === Status.AuthFailed) {
        throw new AuthenticationError(`the server refused user ${JSON.stringify(user)}`, e.serverMessage);
      }
      throw e;
    }
  }

  // ------------------------------------------------------------------ sessions

  /** A handle on an existing session, e.g. one whose token the page kept. Nothing is sent. */
  session(tkn: TokenLike): Session {
    return tkn instanceof Session ? tkn : new Session(this, token(tkn));
  }

  /** Create a session (SH_NEW). */
  async createSession(opts: CreateSessionOptions = {}): Promise<Session> {
    const params: Record<string, unknown> = {};
    if (opts.name !== undefined) params.name = opts.name;
    if (opts.shared !== undefined) params.shared = opts.shared;
    if (opts.owner !== undefined) params.owner = opts.owner;
    if (opts.keys !== undefined) params.keys = keyValues(opts.keys);
    if (opts.expiry !== undefined) {
      const expiry: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(opts.expiry)) if (v !== undefined) expiry[k] = v;
      params.expiry = expiry;
    }
    addVersionParams(params, opts);
    const body = await this.call("SH_NEW", params, opts);
    return new Session(
      this,
      tokenString(body.tkn),
      opts.name,
      opts.shared ?? false,
      opts.owner,
      opts.withVersion ? versionOf("SH_NEW", body) : undefined,
    );
  }

  /** Open the shared session called `name` (SH_OPEN); `SessionOpenFail` (102) when there is none. */
  async openSession(name: string, opts: ReadOptions = {}): Promise<Session> {
    const body = await this.call("SH_OPEN", withVersion({ name }, opts), opts);
    return new Session(this, tokenString(body.tkn), name, true, undefined, opts.withVersion ? versionOf("SH_OPEN", body) : undefined);
  }

  /** Which of `tkns` exist, in request order (SH_EXISTS). */
  async exists(tkns: TokenLike | TokenLike[], opts: CallOptions = {}): Promise<string[]> {
    const list = Array.isArray(tkns) ? tkns : [tkns];
    const body = await this.call("SH_EXISTS", { tkns: list.map(token) }, opts);
    return (body.exist as unknown[]).map(tokenString);
  }

  /** End every session (SH_END_ALL); resolves to how many were ended. */
  async endAll(opts: CallOptions = {}): Promise<number> {
    return Number((await this.call("SH_END_ALL", {}, opts)).cnt);
  }

  /** Totals (SH_INFO_ALL). */
  async infoAll(opts: CallOptions = {}): Promise<{ totalSessions: number; totalKeys: number }> {
    const body = await this.call("SH_INFO_ALL", {}, opts);
    return { totalSessions: Number(body.totalSessions), totalKeys: Number(body.totalKeys) };
  }

  /** The live sessions of `owner`, oldest first (SH_OWNER_SESSIONS). */
  async ownerSessions(owner: string, opts: CallOptions = {}): Promise<string[]> {
    const body = await this.call("SH_OWNER_SESSIONS", { owner }, opts);
    return (body.tkns as unknown[]).map(tokenString);
  }

  /** End every session of `owner`, but `except` (SH_OWNER_END); resolves to how many were ended. */
  async ownerEnd(owner: string, opts: CallOptions & { except?: TokenLike } = {}): Promise<number> {
    const params: Record<string, unknown> = { owner };
    if (opts.except !== undefined) params.except = token(opts.except);
    return Number((await this.call("SH_OWNER_END", params, opts)).cnt);
  }

  // --------------------------------------------------------------- persistence

  /** Save sessions (all, or `tkns`) as a new version of dataset `name` (SH_SAVE). */
  async save(name: string, opts: CallOptions & { tkns?: TokenLike[] } = {}): Promise<{ name: string; duration: number; sessions: number; keys: number }> {
    checkDatasetName(name);
    const params: Record<string, unknown> = { name };
    if (opts.tkns !== undefined) params.tkns = opts.tkns.map(token);
    const body = await this.call("SH_SAVE", params, opts, [Status.SaveComplete]);
    return withoutSt(body) as { name: string; duration: number; sessions: number; keys: number };
  }

  /** Load the newest complete version of dataset `name` (SH_LOAD). */
  async load(name: string, opts: CallOptions = {}): Promise<{ name: string; sessions: number; keys: number }> {
    checkDatasetName(name);
    const body = await this.call("SH_LOAD", { name }, opts, [Status.LoadComplete]);
    return withoutSt(body) as { name: string; sessions: number; keys: number };
  }

  /** Server facts (SV_INFO). */
  async serverInfo(opts: CallOptions = {}): Promise<ServerInfo> {
    return withoutSt(await this.call("SV_INFO", {}, opts)) as ServerInfo;
  }

  // -------------------------------------------------------------------- events

  /**
   * Subscribe to session events (SH_SUBSCRIBE) on a connection of the
   * stream's own; iterate with `for await`. The stream resumes from its
   * cursor after a reconnect; events that are gone arrive as one `lost` event.
   */
  events(opts: EventsOptions = {}): EventStream {
    if (this.closed) throw new ConnectionError("client closed");
    const stream = new EventStream(this, opts, {
      reconnect: this.reconnectEnabled,
      backoff: this.backoff,
      forget: (s) => this.streams.delete(s),
    });
    this.streams.add(stream);
    return stream;
  }
}

// ------------------------------------------------------------------- helpers

/** The wire form of a token: its decimal string (the server takes it, and it is exact). */
export function token(tkn: TokenLike): string {
  if (tkn instanceof Session) return tkn.tkn;
  if (typeof tkn === "string" && DECIMAL.test(tkn)) return tkn;
  if (typeof tkn === "bigint" && tkn >= 0n && tkn <= U64_MAX) return (tkn as bigint).toString();
  throw new TypeError(`a token is a decimal string (or a Session), got ${typeof tkn === "string" ? JSON.stringify(tkn) : typeof tkn}`);
}

/** A token from an answer (a number or, past 2^53, a bigint) as its decimal string. */
export function tokenString(value: unknown): string {
  if (typeof value === "bigint" || (typeof value === "number" && Number.isSafeInteger(value))) return value.toString();
  throw new ProtocolError(`the server sent a token that is not an integer: ${String(value)}`);
}

function keyValues(keys: Keys): Keys {
  if (keys === null || typeof keys !== "object" || Array.isArray(keys)) throw new TypeError("keys must be an object of name -> value");
  return keys;
}

function keyNames(keys: string | string[]): string[] {
  const names = typeof keys === "string" ? [keys] : keys;
  if (!Array.isArray(names) || names.some((k) => typeof k !== "string")) throw new TypeError("keys must be a name or an array of names");
  return names;
}

function isIntegerIn(v: unknown, min: bigint, max: bigint): v is Int {
  if (typeof v === "number") return Number.isSafeInteger(v);
  return typeof v === "bigint" && v >= min && v <= max;
}

function checkDatasetName(name: string): void {
  if (typeof name !== "string" || !DATASET_NAME.test(name) || name === "." || name === "..") {
    throw new RangeError(`a dataset name is 1 to 128 of [A-Za-z0-9_.-] and not '.' or '..', got ${JSON.stringify(name)}`);
  }
}

function withVersion(params: Record<string, unknown>, opts: ReadOptions): Record<string, unknown> {
  if (opts.withVersion) params.withVersion = true;
  return params;
}

/** Adds `withVersion`/`ifVersion` when given (only then); true when the answer will carry `version`. */
function addVersionParams(params: Record<string, unknown>, opts: WriteOptions): boolean {
  if (opts.withVersion) params.withVersion = true;
  if (opts.ifVersion !== undefined) {
    if (!isIntegerIn(opts.ifVersion, 0n, U64_MAX) || (typeof opts.ifVersion === "number" && opts.ifVersion < 0)) {
      throw new RangeError(`ifVersion must be an unsigned 64-bit integer, got ${String(opts.ifVersion)}`);
    }
    params.ifVersion = opts.ifVersion;
  }
  return Boolean(opts.withVersion) || opts.ifVersion !== undefined;
}

function versionOf(command: string, body: Body): Version {
  const v = body.version;
  if (typeof v === "number" || typeof v === "bigint") return v;
  throw new ProtocolError(`${command} answered without a version: the server does not support versions`);
}

function withoutSt(body: Body): Body {
  const { st: _st, ...rest } = body;
  return rest;
}

export function nextDelay(previous: number, backoff: { initialMs: number; maxMs: number }): number {
  const base = previous === 0 ? backoff.initialMs : Math.min(previous * 2, backoff.maxMs);
  // Up to a quarter less, so that many clients of one restarted server do not return in step.
  return Math.round(base * (0.75 + Math.random() * 0.25));
}

/**
 * A signal that aborts when any of `signals` does, with its reason
 * (`AbortSignal.any` is Node 20.3+); `dispose` removes the listeners.
 */
export function anySignal(signals: Array<AbortSignal | undefined>): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const present = signals.filter((s): s is AbortSignal => s !== undefined);
  const onAbort = (ev: Event) => {
    dispose();
    controller.abort((ev.target as AbortSignal).reason);
  };
  const dispose = () => {
    for (const s of present) s.removeEventListener("abort", onAbort);
  };
  for (const s of present) {
    if (s.aborted) {
      dispose();
      controller.abort(s.reason);
      break;
    }
    s.addEventListener("abort", onAbort, { once: true });
  }
  return { signal: controller.signal, dispose };
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

export { describe };
