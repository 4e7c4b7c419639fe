/**
 * One pipelined WebSocket connection: the socket, the FIFO of calls waiting
 * for their answers, and pushed events set aside.
 *
 * Owns the envelope (`{CMD: {...}}` out, `{CMD_RSP: {...}}` in) and nothing
 * about individual commands. It never reconnects: it is one socket's life;
 * `client.ts` replaces it.
 *
 * Why a FIFO is enough: the server answers the requests of one connection
 * strictly in the order they were sent (docs/PROTOCOL.md, "Transport").
 * `request` writes the frame and appends its entry in one synchronous step,
 * so the FIFO order is the send order. An answer whose name is not the head's
 * command means the two sides disagree: the connection is closed with a
 * `ProtocolError` rather than hand anyone a wrong answer.
 */

import { type JsonParse, stringify } from "./json.js";
import { type Body, ConnectionError, ProtocolError, errorFor } from "./status.js";

/** What this client needs of a WebSocket: the browser's, Node 22's and `ws`'s all fit. */
export interface SocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: stop and restart reading the socket (back-pressure for event streams). */
  pause?: () => void;
  resume?: () => void;
}

/** Makes a socket for a URL; each runtime entry (browser, Node) gives its own. */
export type SocketFactory = (url: string) => SocketLike;

/** The name of a pushed event message; never the name of an answer. */
export const EVENT = "SH_EVENT";

const OPEN = 1;

interface Pending {
  command: string;
  ok: readonly number[];
  resolve: (body: Body) => void;
  reject: (error: Error) => void;
  /** The caller gave up (its signal aborted): the answer is read and dropped. */
  settled: boolean;
}

export interface ConnectionHooks {
  /** Each pushed `SH_EVENT` body, in arrival order. */
  onEvent?: (body: Body) => void;
  /** Once, when the connection becomes unusable (dropped, contract broken, or closed). */
  onClose?: (error: ConnectionError) => void;
}

export class Connection {
  /** Entries of sent requests, oldest at `head`; compacted as it drains. */
  private pending: Pending[] = [];
  private head = 0;
  /** Set once the connection is unusable; every later call fails with it. */
  private error: ConnectionError | undefined;

  private constructor(
    private readonly socket: SocketLike,
    private readonly parse: JsonParse,
    private readonly hooks: ConnectionHooks,
  ) {}

  /**
   * Open a socket to `url`. Rejects with `ConnectionError` when it does not
   * open within `timeoutMs`, or `signal`'s reason when that aborts first.
   */
  static open(
    factory: SocketFactory,
    url: string,
    parse: JsonParse,
    hooks: ConnectionHooks,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<Connection> {
    return new Promise((resolve, reject) => {
      signal?.throwIfAborted();
      let socket: SocketLike;
      try {
        socket = factory(url);
      } catch (e) {
        reject(new ConnectionError(`cannot connect to ${url}: ${describe(e)}`, { cause: e }));
        return;
      }
      let done = false;
      const finish = (error?: Error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        if (error) {
          socket.onopen = socket.onclose = socket.onmessage = null;
          // Not null: `ws` reports closing a socket still connecting as an
          // error event, and an error without a listener would crash Node.
          socket.onerror = () => {};
          try {
            socket.close();
          } catch {
            /* a socket that never opened may refuse to close */
          }
          reject(error);
        } else {
          resolve(new Connection(socket, parse, hooks).attach());
        }
      };
      const onAbort = () => finish(signal?.reason instanceof Error ? signal.reason : new ConnectionError("aborted"));
      const timer = setTimeout(
        () => finish(new ConnectionError(`cannot connect to ${url}: no answer within ${timeoutMs} ms`)),
        timeoutMs,
      );
      signal?.addEventListener("abort", onAbort, { once: true });
      let detail = "";
      socket.onerror = (ev) => {
        detail = describe((ev as { error?: unknown; message?: unknown }).error ?? (ev as { message?: unknown }).message ?? "");
      };
      socket.onclose = (ev) =>
        finish(new ConnectionError(`cannot connect to ${url}: ${detail || `closed (${ev.code ?? "no code"})`}`));
      socket.onopen = () => finish();
    });
  }

  private attach(): this {
    this.socket.onmessage = (ev) => this.onMessage(ev.data);
    this.socket.onerror = () => {
      /* the close event that follows says what happened */
    };
    this.socket.onclose = (ev) => {
      const why = ev.reason ? `${ev.code}: ${ev.reason}` : String(ev.code ?? "no code");
      this.fail(new ConnectionError(`connection closed (${why})`));
    };
    return this;
  }

  /** True while requests can be sent. */
  get isOpen(): boolean {
    return this.error === undefined && this.socket.readyState === OPEN;
  }

  /** How many answers are due. */
  get inFlight(): number {
    return this.pending.length - this.head;
  }

  /**
   * Send `{command: params}` and resolve with the answer's body when its
   * `st` is one of `ok`; reject with `NdbError` otherwise, `ConnectionError`
   * (`sent: true`) if the connection goes first, or `signal`'s reason if it
   * aborts first (the answer is then dropped when it comes).
   */
  request(command: string, params: object, ok: readonly number[] = [1], signal?: AbortSignal): Promise<Body> {
    if (this.error) return Promise.reject(this.error);
    if (signal?.aborted) return Promise.reject(signal.reason);
    const frame = stringify({ [command]: params });
    return new Promise<Body>((resolve, reject) => {
      const entry: Pending = { command, ok, resolve, reject, settled: false };
      if (signal) {
        const onAbort = () => {
          if (entry.settled) return;
          entry.settled = true;
          reject(signal.reason);
        };
        signal.addEventListener("abort", onAbort, { once: true });
        entry.resolve = (body) => {
          signal.removeEventListener("abort", onAbort);
          resolve(body);
        };
        entry.reject = (error) => {
          signal.removeEventListener("abort", onAbort);
          reject(error);
        };
      }
      try {
        this.socket.send(frame);
      } catch (e) {
        // Through the entry: it also removes the abort listener.
        entry.settled = true;
        entry.reject(new ConnectionError(`send failed: ${describe(e)}`, { cause: e }));
        return;
      }
      this.pending.push(entry);
    });
  }

  /** Stop reading the socket (where the runtime can: `ws`); the server then holds events back. */
  pauseReading(): void {
    this.socket.pause?.();
  }

  resumeReading(): void {
    this.socket.resume?.();
  }

  /** Close the socket; every call still waiting fails with `ConnectionError`. */
  close(reason = "closed by client"): void {
    this.fail(new ConnectionError(reason));
  }

  private onMessage(data: unknown): void {
    if (this.error) return;
    if (typeof data !== "string") {
      this.fail(new ProtocolError("the server sent a binary frame"));
      return;
    }
    let message: unknown;
    try {
      message = this.parse(data);
    } catch (e) {
      this.fail(new ProtocolError(`the server sent text that is not JSON: ${describe(e)}`));
      return;
    }
    const names = message !== null && typeof message === "object" ? Object.keys(message) : [];
    const name = names[0];
    const body = name === undefined ? undefined : (message as Record<string, unknown>)[name];
    if (names.length !== 1 || name === undefined || body === null || typeof body !== "object" || Array.isArray(body)) {
      this.fail(new ProtocolError(`the server sent a message that is not {NAME: {...}}: ${data.slice(0, 200)}`));
      return;
    }
    if (name === EVENT) {
      this.hooks.onEvent?.(body as Body);
      return;
    }
    const entry = this.pending[this.head];
    // "ERR" answers a frame that names no command; we never send one, but
    // an unauthenticated connection gets it for every frame (status 15).
    if (entry === undefined || (name !== `${entry.command}_RSP` && name !== "ERR")) {
      const expected = entry ? `${entry.command}_RSP` : "nothing";
      this.fail(new ProtocolError(`the server answered ${name} where ${expected} was due`));
      return;
    }
    this.pending[this.head] = undefined as unknown as Pending;
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.head);
      this.head = 0;
    }
    if (entry.settled) return;
    entry.settled = true;
    const b = body as Body;
    if (typeof b.st === "number" && entry.ok.includes(b.st)) entry.resolve(b);
    else entry.reject(errorFor(entry.command, b));
  }

  private fail(error: ConnectionError): void {
    if (this.error) return;
    this.error = error;
    const waiting = this.pending.slice(this.head);
    this.pending = [];
    this.head = 0;
    this.socket.onmessage = null;
    this.socket.onclose = null;
    try {
      this.socket.close();
    } catch {
      /* already closing */
    }
    for (const entry of waiting) {
      if (entry.settled) continue;
      entry.settled = true;
      const e = new ConnectionError(`${entry.command}: ${error.message}; it may or may not have run`, { cause: error });
      e.sent = true;
      entry.reject(error instanceof ProtocolError ? error : e);
    }
    this.hooks.onClose?.(error);
  }
}

export function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
