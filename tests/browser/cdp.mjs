// A bare Chrome DevTools Protocol client for measuring the live view without Playwright's
// instrumentation: Playwright enables the Network domain on every page, so each WebSocket frame
// the page receives is also serialised into a CDP event and sent to Node (measured here: it
// costs the live view about a tenth of its lines/s). This client drives a separately launched
// headless Chromium with `Page`, `Runtime` and `Profiler` only.
//
// Needs a global WebSocket: Node 22+, or Node 20 with --experimental-websocket
// (`measure.mjs` re-executes itself with the flag when needed).

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CHROMIUM, CHROMIUM_ARGS, sleep } from './lib.mjs';

export class BareChromium {
  static async launch() {
    const b = new BareChromium();
    b.profile = mkdtempSync(path.join(tmpdir(), 'deployd-cdp-'));
    b.proc = spawn(CHROMIUM, [...CHROMIUM_ARGS, '--remote-debugging-port=0', `--user-data-dir=${b.profile}`,
      '--window-size=1280,900', 'about:blank'], { stdio: ['ignore', 'ignore', 'pipe'] });
    const endpoint = await new Promise((resolve, reject) => {
      let err = '';
      b.proc.stderr.on('data', (chunk) => {
        err += chunk;
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
        if (m) resolve(m[1]);
      });
      b.proc.on('exit', (code) => reject(new Error(`chromium exited (${code}): ${err}`)));
    });
    const http = endpoint.replace(/^ws:\/\/([^/]+)\/.*$/, 'http://$1');
    const targets = await (await fetch(`${http}/json/list`)).json();
    const page = targets.find((t) => t.type === 'page');
    b.ws = new WebSocket(page.webSocketDebuggerUrl);
    b.next = 1;
    b.waiting = new Map();
    b.ws.onmessage = (msg) => {
      const reply = JSON.parse(msg.data);
      const w = b.waiting.get(reply.id);
      if (!w) return;
      b.waiting.delete(reply.id);
      if (reply.error) w.reject(new Error(reply.error.message));
      else w.resolve(reply.result);
    };
    await new Promise((resolve) => { b.ws.onopen = resolve; });
    return b;
  }

  send(method, params = {}) {
    const id = this.next++;
    this.ws.send(JSON.stringify({ id, method, params }));
    return new Promise((resolve, reject) => this.waiting.set(id, { resolve, reject }));
  }

  /** Evaluates `expression` in the page; its (JSON-able) value. */
  async eval(expression) {
    const r = await this.send('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true });
    if (r.exceptionDetails) throw new Error(r.exceptionDetails.text);
    return r.result.value;
  }

  async goto(url) {
    await this.send('Page.navigate', { url });
    await this.until(`document.readyState === 'complete' && location.href === ${JSON.stringify(url)}`, url);
  }

  /** Polls `expression` every `every` ms until truthy. */
  async until(expression, what, { tries = 6000, every = 20 } = {}) {
    for (let i = 0; i < tries; i++) {
      if (await this.eval(expression).catch(() => false)) return;
      await sleep(every);
    }
    throw new Error(`gave up waiting for ${what}`);
  }

  async close() {
    this.ws.close();
    this.proc.kill('SIGKILL');
    await new Promise((resolve) => this.proc.exitCode !== null ? resolve() : this.proc.on('exit', resolve));
    // Chromium's helpers may still be writing the profile as they exit.
    rmSync(this.profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  }
}
