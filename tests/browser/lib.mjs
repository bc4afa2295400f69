// Shared helpers of the browser tests: the real deployd binary ($DEPLOYD_BIN, default
// target/release/deployd) on 127.0.0.1 with a temp data dir, Debian's headless Chromium
// through playwright-core, the HTTP API and `deployd push` for feeding deployments, and
// screenshots (written to $SCREENSHOT_DIR, default tests/browser/screenshots).

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
export const BIN = process.env.DEPLOYD_BIN || path.join(repo, 'target', 'release', 'deployd');
export const SHOTS = process.env.SCREENSHOT_DIR || path.join(here, 'screenshots');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value (bounded: `tries` × `every` ms). */
export async function until(fn, what, { tries = 600, every = 100 } = {}) {
  let last;
  for (let i = 0; i < tries; i++) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    await sleep(every);
  }
  throw new Error(`gave up waiting for ${what} (last: ${last})`);
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/** A running deployd: `url`, `token` (the admin's), `stop()`, `restart()`. */
export class Server {
  static async start() {
    const s = new Server();
    s.dir = mkdtempSync(path.join(tmpdir(), 'deployd-browser-'));
    s.port = await freePort();
    s.url = `http://127.0.0.1:${s.port}`;
    await s.spawn();
    return s;
  }

  async spawn() {
    this.log = [];
    this.proc = spawn(BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    });
    const keep = (chunk) => { this.log.push(String(chunk)); if (this.log.length > 200) this.log.shift(); };
    this.proc.stdout.on('data', keep);
    this.proc.stderr.on('data', keep);
    this.exited = new Promise((resolve) => this.proc.on('exit', resolve));
    const tokenFile = path.join(this.dir, 'admin-token');
    await until(() => existsSync(tokenFile) && readFileSync(tokenFile, 'utf8').trim(), 'the admin token');
    this.token = readFileSync(tokenFile, 'utf8').trim();
    await until(async () => (await fetch(`${this.url}/healthz`)).ok, 'healthz');
  }

  /** Stops the process (SIGTERM, then SIGKILL after 10 s). */
  async stop(signal = 'SIGTERM') {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill(signal);
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(timer);
  }

  async restart(signal = 'SIGTERM') {
    await this.stop(signal);
    await this.spawn();
  }

  async close() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** An API call with the admin token (Basic `:token`); resolves to the parsed JSON or null. */
  async api(method, p, body) {
    const res = await fetch(this.url + p, {
      method,
      headers: {
        Authorization: `Basic ${Buffer.from(`:${this.token}`).toString('base64')}`,
        ...(body ? { 'Content-Type': 'application/json' } : {}),
      },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  async createApp(name) {
    return (await this.api('POST', '/v1/apps', { app: { name } })).app;
  }

  async deployments(app) {
    return (await this.api('GET', `/v1/apps/${app}/deployments?per_page=100`)).deployments;
  }

  /**
   * `deployd push` running `sh -c script` as app `app`'s deployment: resolves once the
   * deployment exists, to `{id, done}` (`done`: the push's exit code).
   */
  async push(app, script, gitRef = 'v1') {
    const before = new Set((await this.deployments(app)).map((d) => d.id));
    const child = spawn(BIN, ['push', '--url', this.url, '--token', this.token, '--app', app, '--git-ref', gitRef, '--', 'sh', '-c', script], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (c) => { err += c; });
    const done = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    const id = await until(async () => {
      if (child.exitCode !== null && child.exitCode !== 0) throw new Error(`deployd push failed: ${err}`);
      const found = (await this.deployments(app)).find((d) => !before.has(d.id));
      return found && found.id;
    }, 'the pushed deployment');
    return { id, done, child };
  }

  async deployment(app, id) {
    return (await this.api('GET', `/v1/apps/${app}/deployments/${id}`)).deployment;
  }

  async waitStatus(app, id, statuses) {
    return until(async () => {
      const d = await this.deployment(app, id);
      return statuses.includes(d.status) && d;
    }, `deployment ${id} to reach ${statuses}`);
  }
}

export async function launch() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
}

/**
 * A new page signed in to `server` through the sign-in form. Fails the test on any page
 * error, console error or dialog (an injected `alert` would be one).
 */
export async function signedInPage(browser, server, { width = 1280, height = 900 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (err) => page.problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/WebSocket|Failed to load resource|ERR_CONNECTION_REFUSED/.test(msg.text())) {
      page.problems.push(`console: ${msg.text()}`);
    }
  });
  page.on('dialog', async (dialog) => {
    page.problems.push(`dialog: ${dialog.message()}`);
    await dialog.dismiss();
  });
  await page.goto(`${server.url}/ui/`);
  await page.fill('#token', server.token);
  await page.click('button[type=submit]');
  await page.waitForSelector('h1:text("Apps")');
  return page;
}

export async function shot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

/** The line numbers and texts of the log rows now in the DOM, in DOM order. */
export async function rows(page) {
  return page.$$eval('#log .log-line:not(.pending)', (els) => els.map((el) => ({
    n: Number(el.dataset.n),
    text: el.querySelector('.tx').textContent,
  })));
}
