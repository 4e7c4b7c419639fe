// A real browser: headless Chromium (the system's, /usr/bin/chromium or
// CHROMIUM_BIN) loads the built browser bundle from a local page and runs
// create / set / get / end with a token above 2^53 against the real server.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, normalize } from "node:path";
import { after, before, test } from "./support.mjs";
import puppeteer from "puppeteer-core";
import { PACKAGE_ROOT, ServerProcess, TWO_POW_53 } from "./support.mjs";

const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".map": "application/json" };

let server;
let http;
let browser;
let profile;
let pageBase;

/** Serves test/browser/ at / and dist/ at /dist/, nothing else. */
function serveFiles() {
  const srv = createServer(async (req, res) => {
    const path = normalize(new URL(req.url, "http://x").pathname);
    const file = path.startsWith("/dist/")
      ? join(PACKAGE_ROOT, path)
      : join(PACKAGE_ROOT, "test", "browser", path === "/" ? "page.html" : path);
    if (!file.startsWith(PACKAGE_ROOT)) return void res.writeHead(403).end();
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[file.slice(file.lastIndexOf("."))] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((res) => srv.listen(0, "127.0.0.1", () => res(srv)));
}

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_BIN)`);
  assert.ok(existsSync(join(PACKAGE_ROOT, "dist", "nemesisdb.browser.js")), "build first: npm run build");
  server = await ServerProcess.start();
  http = await serveFiles();
  pageBase = `http://127.0.0.1:${http.address().port}/`;
  profile = mkdtempSync(join(tmpdir(), "ndb-chromium-"));
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--user-data-dir=${profile}`,
    ],
  });
});

after(async () => {
  await browser?.close();
  http?.close();
  await server?.kill();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test("the browser bundle creates, sets, gets and ends a session with an exact token above 2^53", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(pageBase, { waitUntil: "load" });
  await page.waitForFunction(() => window.bundleLoaded === true, { timeout: 10000 });
  const result = await page.evaluate((url) => window.runScenario(url), server.url);
  assert.deepEqual(errors, []);
  assert.match(result.tkn, /^[0-9]+$/);
  assert.ok(BigInt(result.tkn) > TWO_POW_53, result.tkn);
  assert.equal(result.infoTkn, result.tkn);
  assert.deepEqual(result.cart, [{ sku: "A1", qty: 2 }]);
  assert.equal(result.big, "18446744073709551615");
  assert.deepEqual(result.existsAfterEnd, []);
  await page.close();
});
