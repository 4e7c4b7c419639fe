/**
 * Session events (docs/PROTOCOL.md, "Events"): `EventStream`, what
 * `client.events(...)` returns, iterated with `for await`.
 *
 * A stream has a connection of its own, so that a consumer that pauses never
 * holds up the answers of the request connection, and the server (which
 * writes events only as fast as the client reads them) keeps the rest in its
 * ring. With `ws` the stream stops reading the socket while its queue is
 * long; browsers cannot pause a WebSocket, so there the queue grows instead.
 *
 * Resuming: the stream keeps the cursor of the last event it received (before
 * any, the one the `SH_SUBSCRIBE` answer gave). When the connection goes it
 * opens another with backoff, as the client does (without limit, until the
 * stream closes or the credentials are refused), and subscribes with
 * `after: cursor`; events that are gone by then (status 160, or a cursor the
 * server no longer understands) come as one event of kind `lost` first.
 * Nothing is skipped silently. The queue survives the reconnection, so
 * resuming from the last event *received* is right; an application that
 * stores a cursor for a later run stores the last *processed* event's
 * `event.cursor`.
 *
 * One subscription at a time: a connection becomes the stream's (`conn`)
 * only once its `SH_SUBSCRIBE` is answered; only one subscribe loop runs;
 * events and losses of any other connection are ignored.
 */

import { Listeners } from "./listeners.js";
import type { Client, ClientEvents } from "./client.js";
import { nextDelay, sleep, tokenString } from "./client.js";
import type { Connection } from "./connection.js";
import type { JsonValue } from "./json.js";
import { type Body, ConnectionError, NdbError, ProtocolError, Status } from "./status.js";

export type EventKind = "created" | "ended" | "expired" | "keysExpired";

export interface EventsOptions {
  /** The kinds wanted (default all). */
  events?: EventKind[];
  /** Only this owner's sessions. */
  owner?: string;
  /** `ended`, `expired` and `keysExpired` events carry the session's keys. */
  withKeys?: boolean;
  /** Resume after this cursor (an event's, or `stream.cursor`); default: from now. */
  after?: string;
  /** Ends the stream (the loop ends without an error). */
  signal?: AbortSignal;
}

/** One pushed event. */
export interface SessionEvent {
  /** What happened; `lost`: events this subscriber will never see (`lost` says how many; -1 unknown). */
  event: EventKind | "lost";
  tkn?: string;
  name?: string;
  owner?: string;
  /** When, ms since the Unix epoch. */
  at?: number;
  /** For `expired`/`keysExpired`: the deadline that passed, ms since the Unix epoch. */
  deadline?: number;
  reason?: "idle" | "lifetime";
  keys?: Record<string, JsonValue>;
  keysTruncated?: boolean;
  lost?: number;
  /**
   * Pass as `after` to resume right after this event. Every event the server
   * sends carries one, and so does a `lost` event (where the stream resumed).
   * To go on in a later run, store the cursor of the last event you
   * *processed*, not `stream.cursor` (which is the last one received).
   */
  cursor?: string;
  /** The body as it arrived. */
  raw: Body;
}

interface StreamSettings {
  reconnect: boolean;
  backoff: { initialMs: number; maxMs: number };
  forget: (s: EventStream) => void;
}

// Past this many unread events the stream stops reading its socket (where it can).
const HIGH_WATER = 256;
const LOW_WATER = 32;

export class EventStream implements AsyncIterableIterator<SessionEvent> {
  private queue: SessionEvent[] = [];
  /** `next()` calls waiting for an event, oldest first. */
  private waiting: Array<{ resolve: (r: IteratorResult<SessionEvent>) => void; reject: (e: unknown) => void }> = [];
  /** Why the stream ended, if it did with an error; thrown once the queue is drained. */
  private failure: unknown;
  private closed = false;
  private conn: Connection | undefined;
  private paused = false;
  private started: Promise<void> | undefined;
  private readonly params: Record<string, unknown>;
  private cursorValue: string | undefined;
  /** Whether the cursor came from the server, not the caller: a refusal of the server's own means events were lost. */
  private cursorFromServer = false;
  private readonly abort = new AbortController();
  /** True while a subscribe loop runs: a loss then starts no second one. */
  private subscribing = false;
  private readonly listeners = new Listeners<ClientEvents>();
  private readonly signal: AbortSignal | undefined;
  private readonly onSignal = () => void this.close();

  constructor(
    private readonly client: Client,
    opts: EventsOptions,
    private readonly settings: StreamSettings,
  ) {
    this.params = {};
    if (opts.events !== undefined) this.params.events = opts.events;
    if (opts.owner !== undefined) this.params.owner = opts.owner;
    if (opts.withKeys !== undefined) this.params.withKeys = opts.withKeys;
    this.cursorValue = opts.after;
    this.signal = opts.signal;
    if (opts.signal) {
      if (opts.signal.aborted) void this.close();
      else opts.signal.addEventListener("abort", this.onSignal, { once: true });
    }
  }

  /**
   * Listen to the stream's connection life, as `client.on` does for the
   * client's: `disconnect`, `reconnecting` (each attempt), `reconnect`, and
   * `error` (the stream gave up: the iteration then throws it).
   */
  on<K extends keyof ClientEvents>(type: K, listener: (ev: ClientEvents[K]) => void): () => void {
    return this.listeners.on(type, listener);
  }

  private emit<K extends keyof ClientEvents>(type: K, ev: ClientEvents[K]): void {
    this.listeners.emit(type, ev);
  }

  /**
   * The cursor of the last event received (queued, perhaps not yet
   * processed): where this stream resumes after a reconnect. To resume in a
   * later run, store the `cursor` of the last event you processed instead.
   */
  get cursor(): string | undefined {
    return this.cursorValue;
  }

  /**
   * Subscribe now rather than at the first `next()`. Once it resolves the
   * server keeps every later event for this stream.
   */
  start(): Promise<void> {
    this.started ??= this.subscribe(false).catch((e) => {
      void this.close();
      throw e;
    });
    return this.started;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<SessionEvent>> {
    if (!this.closed) await this.start();
    const event = this.queue.shift();
    if (event) {
      this.resumeIfDrained();
      return { value: event, done: false };
    }
    if (this.failure !== undefined) {
      const failure = this.failure;
      this.failure = undefined;
      throw failure;
    }
    if (this.closed) return { value: undefined, done: true };
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  /** Leaving a `for await` loop closes the stream. */
  async return(): Promise<IteratorResult<SessionEvent>> {
    await this.close();
    return { value: undefined, done: true };
  }

  /** End the subscription and close its connection; a waiting `next()` ends the loop. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.end("event stream closed");
    this.wake();
  }

  private end(reason: string): void {
    this.closed = true;
    this.abort.abort();
    this.signal?.removeEventListener("abort", this.onSignal);
    this.settings.forget(this);
    // A paused `ws` socket would not read the server's close frame and
    // would linger (keeping Node alive) until its 30 s close timeout.
    if (this.paused) this.conn?.resumeReading();
    this.paused = false;
    this.conn?.close(reason);
    this.conn = undefined;
  }

  private wake(): void {
    while (this.waiting.length > 0) {
      const event = this.queue.shift();
      if (event) {
        this.waiting.shift()!.resolve({ value: event, done: false });
      } else if (this.failure !== undefined) {
        const failure = this.failure;
        this.failure = undefined;
        this.waiting.shift()!.reject(failure);
      } else if (this.closed) {
        this.waiting.shift()!.resolve({ value: undefined, done: true });
      } else {
        return;
      }
    }
    this.resumeIfDrained();
  }

  private push(event: SessionEvent): void {
    if (event.cursor !== undefined) {
      this.cursorValue = event.cursor;
      this.cursorFromServer = true;
    }
    this.queue.push(event);
    if (this.queue.length > HIGH_WATER && this.conn && !this.paused) {
      this.paused = true;
      this.conn.pauseReading();
    }
    this.wake();
  }

  private resumeIfDrained(): void {
    if (this.paused && this.queue.length < LOW_WATER) {
      this.paused = false;
      this.conn?.resumeReading();
    }
  }

  private fail(error: unknown): void {
    if (this.closed) return;
    this.failure = error;
    this.end("event stream failed");
    this.emit("error", { error: error instanceof Error ? error : new Error(String(error)) });
    this.wake();
  }

  /**
   * Connect and subscribe from the cursor. The first subscription makes one
   * attempt; later ones (`retrying`) retry with backoff like the client's
   * reconnection: without limit, until the stream closes or the error is
   * not one a retry can mend (refused credentials, a broken contract, a
   * refused subscription).
   */
  private async subscribe(retrying: boolean): Promise<void> {
    if (this.subscribing) return;
    this.subscribing = true;
    try {
      let delay = 0;
      for (let attempt = 1; ; attempt++) {
        if (this.closed) return;
        if (retrying) this.emit("reconnecting", { attempt, delayMs: delay });
        if (delay > 0) await sleep(delay, this.abort.signal);
        if (this.closed) return;
        try {
          await this.subscribeOnce();
          if (this.conn) {
            if (retrying) this.emit("reconnect", { attempts: attempt });
            return;
          }
          // Subscribed, but that connection went before this loop went on: again.
        } catch (e) {
          if (this.closed) return;
          const retryable = e instanceof ConnectionError && !(e instanceof ProtocolError) && e.name !== "AuthenticationError";
          if (!retrying || !retryable || !this.settings.reconnect) throw e;
        }
        retrying = true;
        delay = nextDelay(delay, this.settings.backoff);
      }
    } finally {
      this.subscribing = false;
    }
  }

  private async subscribeOnce(): Promise<void> {
    // Events of this subscription follow its answer on the wire, but may be
    // read before the answer's promise continues: keep them until it has,
    // so that a `lost` event from the answer comes first.
    let answered = false;
    const early: Body[] = [];
    let conn: Connection | undefined;
    conn = await this.client.openConnection(this.abort.signal, {
      // Only the stream's current connection delivers; a stale one is ignored.
      onEvent: (body) => {
        if (!answered) early.push(body);
        else if (conn !== undefined && this.conn === conn) this.push(toEvent(body));
      },
      onClose: (error) => {
        if (conn !== undefined && this.conn === conn) this.onLost(conn, error);
        // Before it is the stream's, a loss fails the pending SH_SUBSCRIBE: the loop retries.
      },
    });
    if (this.closed) {
      conn.close();
      return;
    }
    const params = { ...this.params };
    if (this.cursorValue !== undefined) params.after = this.cursorValue;
    let body: Body;
    let refused: NdbError | undefined;
    try {
      body = await conn.request("SH_SUBSCRIBE", params, [Status.Ok, Status.EventsLost], this.abort.signal);
    } catch (e) {
      if (!(e instanceof NdbError && e.status === Status.ValueSize && this.cursorFromServer && params.after !== undefined)) {
        conn.close();
        throw e;
      }
      // The server refuses a cursor it made itself: it restarted with another
      // number of shards. Everything since is gone, how much nobody knows.
      refused = e;
      delete params.after;
      body = await conn.request("SH_SUBSCRIBE", params, [Status.Ok], this.abort.signal);
    }
    if (this.closed || !conn.isOpen) {
      conn.close();
      if (this.closed) return;
      throw new ConnectionError("the event connection closed as it subscribed");
    }
    // Subscribed: from here this is the stream's connection, in one synchronous step.
    this.conn = conn;
    this.paused = false;
    this.takeCursor(body);
    if (refused) {
      this.push({ event: "lost", lost: -1, cursor: this.cursorValue, raw: refused.body });
    } else if (body.st === Status.EventsLost) {
      const lost = typeof body.lost === "number" ? body.lost : -1;
      this.push({ event: "lost", lost, cursor: this.cursorValue, raw: body });
    }
    answered = true;
    for (const b of early) this.push(toEvent(b));
  }

  private takeCursor(body: Body): void {
    if (typeof body.cursor === "string") {
      this.cursorValue = body.cursor;
      this.cursorFromServer = true;
    }
  }

  private onLost(conn: Connection, error: ConnectionError): void {
    if (this.conn !== conn || this.closed) return;
    this.conn = undefined;
    this.paused = false;
    this.emit("disconnect", { error });
    if (error instanceof ProtocolError || !this.settings.reconnect) {
      this.fail(error);
      return;
    }
    // A loop already running sees `conn` gone and subscribes again itself.
    if (this.subscribing) return;
    this.subscribe(true).catch((e) => this.fail(e));
  }
}

function toEvent(body: Body): SessionEvent {
  const event: SessionEvent = { event: String(body.event) as SessionEvent["event"], raw: body };
  if (body.tkn !== undefined) event.tkn = tokenString(body.tkn);
  for (const field of ["name", "owner", "reason", "cursor"] as const) {
    if (typeof body[field] === "string") (event as unknown as Record<string, unknown>)[field] = body[field];
  }
  for (const field of ["at", "deadline", "lost"] as const) {
    if (typeof body[field] === "number") event[field] = body[field] as number;
  }
  if (body.keys !== null && typeof body.keys === "object") event.keys = body.keys as Record<string, JsonValue>;
  if (body.keysTruncated === true) event.keysTruncated = true;
  return event;
}
