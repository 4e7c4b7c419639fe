// Test support: the real server binary on a free port, and small helpers.
//
// The binary comes from NEMESISDB_BIN (default <repo>/target/debug/nemesisdb)
// and is started as `BIN --ip 127.0.0.1 --port 0 --shards 2 [args]`; its
// stdout line `listening on IP:PORT` says where to connect. A server that a
// test restarts gets a fixed free port instead, so it comes back where its
// clients knew it.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";
import * as nodeTest from "node:test";

/**
 * `node:test`'s test and hooks with a timeout each, so that a hang fails the
 * run instead of stalling it (node:test has no default timeout; the
 * `--test-timeout` flag needs Node 20.11+).
 */
export const TEST_TIMEOUT_MS = 60000;
export const test = (name, fn) => nodeTest.test(name, { timeout: TEST_TIMEOUT_MS }, fn);
export const describe = (name, fn) => nodeTest.describe(name, { timeout: TEST_TIMEOUT_MS }, fn);
export const before = (fn) => nodeTest.before(fn, { timeout: TEST_TIMEOUT_MS });
export const after = (fn) => nodeTest.after(fn, { timeout: TEST_TIMEOUT_MS });

const HERE = dirname(fileURLToPath(import.meta.url));
export const PACKAGE_ROOT = resolve(HERE, "..");
export const REPO_ROOT = resolve(PACKAGE_ROOT, "..", "..");
const LISTENING = /listening on ([0-9.]+):(\d+)/;

export function serverBinary() {
  return process.env.NEMESISDB_BIN ?? resolve(REPO_ROOT, "target", "debug", "nemesisdb");
}

/** A port nobody listens on now. */
export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** One running server; `url` is where it listens. */
export class ServerProcess {
  static async start(args = [], { port = 0 } = {}) {
    const s = new ServerProcess(args, port);
    await s.ready;
    return s;
  }

  constructor(args, port) {
    const bin = serverBinary();
    if (!existsSync(bin)) throw new Error(`server binary not found at ${bin} (build it or set NEMESISDB_BIN)`);
    const env = { ...process.env };
    delete env.RUST_LOG; // the runner's log level could hide the line we wait for
    this.proc = spawn(bin, ["--ip", "127.0.0.1", "--port", String(port), "--shards", "2", ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env,
    });
    this.stderr = "";
    this.proc.stderr.on("data", (d) => (this.stderr = (this.stderr + d).slice(-4000)));
    this.exited = new Promise((res) => this.proc.once("exit", res));
    this.ready = new Promise((res, rej) => {
      let out = "";
      const timer = setTimeout(() => {
        this.kill();
        rej(new Error(`server did not print 'listening on' within 20 s\nstdout: ${out}\nstderr: ${this.stderr}`));
      }, 20000);
      this.proc.stdout.on("data", (d) => {
        out += d;
        const m = LISTENING.exec(out);
        if (m && !this.port) {
          clearTimeout(timer);
          this.host = m[1];
          this.port = Number(m[2]);
          this.url = `ws://${this.host}:${this.port}/`;
          res();
        }
      });
      this.proc.once("exit", (code) => {
        clearTimeout(timer);
        rej(new Error(`server exited (${code}) before listening\nstderr: ${this.stderr}`));
      });
    });
    // A rejection nobody awaits (the process died after `ready`) must not end the run.
    this.ready.catch(() => {});
  }

  async kill() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill("SIGKILL");
    await this.exited;
  }
}

/** A server that a test can kill and start again on the same port. */
export class RestartableServer {
  static async start(args = []) {
    const s = new RestartableServer(args, await freePort());
    await s.startProcess();
    return s;
  }
  constructor(args, port) {
    this.args = args;
    this.port = port;
    this.url = `ws://127.0.0.1:${port}/`;
  }
  async startProcess() {
    this.process = await ServerProcess.start(this.args, { port: this.port });
  }
  async kill() {
    await this.process?.kill();
    this.process = undefined;
  }
  async restart() {
    await this.kill();
    await this.startProcess();
  }
}

export function unique(prefix = "n") {
  return `${prefix}-${randomUUID().slice(0, 12)}`;
}

/** Resolves when `predicate()` holds, polling; fails naming `what` after `timeoutMs`. */
export async function eventually(predicate, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: still not so after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export const TWO_POW_53 = 2n ** 53n;

/**
 * A `Client` whose sockets (`ws`, as the Node entry makes them) the test can
 * see and drop: `sockets` in creation order, `openCount()`, and `tap.onSend(ws,
 * data)` called after each frame is handed to a socket.
 */
export async function trackedClient(url, options = {}) {
  const { WebSocket } = await import("ws");
  const { parse } = await import("lossless-json");
  const { Client, numberFromSource } = await import("../dist/node.js");
  const sockets = [];
  const tap = { onSend: undefined };
  const socket = (u) => {
    const ws = new WebSocket(u, { perMessageDeflate: false });
    sockets.push(ws);
    const send = ws.send.bind(ws);
    ws.send = (data) => {
      send(data);
      tap.onSend?.(ws, data);
    };
    return ws;
  };
  const client = new Client(url, { socket, parse: (t) => parse(t, null, numberFromSource) }, options);
  const openCount = () => sockets.filter((w) => w.readyState === WebSocket.OPEN).length;
  return { client, sockets, tap, openCount };
}

export const delay = (ms) => new Promise((r) => setTimeout(r, ms));
