// Measures the dashboard's log viewer on a 1,000,000-line log (a benchmark, not a test: it
// prints figures and asserts nothing). Real release binary, Debian's headless Chromium.
//
//   node tests/browser/measure.mjs            (or: npm run measure, in tests/browser)
//
// Figures: time to first screen (navigation start → the last line rendered, median of 3),
// the tab's JS heap and DOM node count with the log open, frames dropped while scrolling (a
// steady fast scroll and a random-jump scroll, 3 s each, counted from requestAnimationFrame
// gaps), and the lines/s the live view keeps up with (a push of 200,000 lines while the page
// follows it: page time vs the push's own time), with per-line `log` frames and with the
// `log_batch` frames the page asks for (`batch=lines`), in the same run.
//
// The live figures use `cdp.mjs`'s BareChromium, not Playwright: Playwright's Network
// instrumentation serialises every WebSocket frame the page receives into a CDP event, which
// would be measured along with the page. `MEASURE_ONLY=live` skips the other figures.

import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BareChromium } from './cdp.mjs';
import { Server, launch, signedInPage } from './lib.mjs';

// cdp.mjs needs a global WebSocket: Node 20 has it behind a flag.
if (!globalThis.WebSocket) {
  const again = spawnSync(process.execPath, ['--experimental-websocket', ...process.execArgv,
    fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' });
  process.exit(again.status ?? 1);
}

const LINES = Number(process.env.MEASURE_LINES || 1_000_000);
const LIVE_LINES = Number(process.env.MEASURE_LIVE_LINES || 200_000);
const ONLY_LIVE = process.env.MEASURE_ONLY === 'live';
const RUNS = 3;

// Run in the page before its own scripts: counts the WebSocket messages the page receives
// (one listener doing an increment: negligible beside a message's cost), and for the per-line
// figure drops `batch=lines` from the page's stream URL, so the server sends one `log` frame per
// line (what the page did before it asked for batches).
const countScript = (perLine) => `(() => {
  const Native = window.WebSocket;
  window.wsMessages = 0;
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      const u = new URL(url);
      if (${perLine}) u.searchParams.delete('batch');
      super(u.toString(), protocols);
      this.addEventListener('message', () => { window.wsMessages++; });
    }
  };
})();`;

/**
 * The live view following a push of LIVE_LINES lines (gated on a flag file, so the page is
 * live before the first line): seconds until the push ended and until the page showed the
 * last line. `perLine`: the page gets `log` frames instead of `log_batch` frames.
 */
async function measureLive(s, app, { perLine }) {
  const b = await BareChromium.launch();
  try {
    // Scripts for new documents run only with the Page domain enabled.
    await b.send('Page.enable');
    await b.send('Page.addScriptToEvaluateOnNewDocument', { source: countScript(perLine) });
    await b.goto(`${s.url}/ui/`);
    await b.until(`!!document.querySelector('#token')`, 'the sign-in form');
    await b.eval(`(() => {
      document.querySelector('#token').value = ${JSON.stringify(s.token)};
      document.querySelector('button[type=submit]').click();
    })()`);
    await b.until(`[...document.querySelectorAll('h1')].some((h) => h.textContent === 'Apps')`, 'the apps page');
    await s.createApp(app);
    const flag = path.join(s.dir, `go-${app}`);
    const live = await s.push(app, `for i in $(seq 1 600); do [ -e ${flag} ] && break; sleep 0.05; done; seq 1 ${LIVE_LINES}`);
    await b.goto(`${s.url}/ui/apps/${app}/deployments/${live.id}`);
    await b.until(`!!document.querySelector('#stream-state[data-state=live]')`, 'the live stream');
    const t = Date.now();
    writeFileSync(flag, '');
    await live.done;
    const push = (Date.now() - t) / 1000;
    // Polled every 100 ms: each poll is a little page work, and 0.1 s is plenty here.
    await b.until(`!!document.querySelector('#log .log-line[data-n="${LIVE_LINES}"]:not(.pending)')`,
      'the last live line', { tries: 6000, every: 100 });
    const page = (Date.now() - t) / 1000;
    return { push, page, messages: await b.eval('window.wsMessages') };
  } finally {
    await b.close();
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const s = await Server.start();
try {
  if (!ONLY_LIVE) await measureStatic(s);
  // Live: the page follows a push of LIVE_LINES lines as fast as deployd push sends them.
  for (const [app, perLine] of [['fast-lines', true], ['fast-batches', false]]) {
    const r = await measureLive(s, app, { perLine });
    const form = perLine ? 'per-line log frames' : 'log_batch frames';
    console.log(`live (${form}): ${LIVE_LINES} lines pushed in ${r.push.toFixed(1)} s (${Math.round(LIVE_LINES / r.push)} lines/s); the page showed the last one after ${r.page.toFixed(1)} s (${Math.round(LIVE_LINES / r.page)} lines/s), in ${r.messages} WebSocket messages`);
  }
} finally {
  await s.close();
}

/** First screen, memory and scrolling on a LINES-line log, through Playwright. */
async function measureStatic(s) {
  const browser = await launch();
  try {
    await s.createApp('big');
    let t = Date.now();
    const { id, done } = await s.push('big', `seq 1 ${LINES}`);
    await done;
    const pushSecs = (Date.now() - t) / 1000;
    console.log(`pushed ${LINES} lines in ${pushSecs.toFixed(1)} s (deployd push)`);

    const page = await signedInPage(browser, s);
    const url = `${s.url}/ui/apps/big/deployments/${id}`;
    const firsts = [];
    for (let i = 0; i < RUNS; i++) {
      await page.goto(`${s.url}/ui/`);
      await page.waitForSelector('#apps');
      t = Date.now();
      await page.goto(url);
      await page.waitForSelector(`#log .log-line[data-n="${LINES}"]:not(.pending)`);
      firsts.push(Date.now() - t);
    }
    console.log(`time to first screen (page load → last line shown): median ${median(firsts)} ms of ${firsts.join(', ')} ms`);

    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Performance.enable');
    const metric = async () => {
      await cdp.send('HeapProfiler.collectGarbage');
      return Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((m) => [m.name, m.value]));
    };
    let m = await metric();
    console.log(`tab with the log open: JS heap ${(m.JSHeapUsedSize / 1048576).toFixed(1)} MiB used, ${m.Nodes} DOM nodes, ${await page.$$eval('.log-line', (e) => e.length)} line elements`);

    const scroll = (mode) => page.evaluate(async (mode) => {
      const el = document.getElementById('log');
      const gaps = [];
      let last = performance.now();
      const end = last + 3000;
      let pending = 0;
      await new Promise((resolve) => {
        const frame = (now) => {
          gaps.push(now - last);
          last = now;
          if (mode === 'steady') el.scrollTop = Math.max(0, el.scrollTop - 600);
          else el.scrollTop = Math.random() * el.scrollHeight;
          pending += document.querySelectorAll('#log .log-line.pending').length ? 1 : 0;
          if (now < end) requestAnimationFrame(frame);
          else resolve();
        };
        requestAnimationFrame(frame);
      });
      const budget = 1000 / 60;
      const dropped = gaps.reduce((n, g) => n + Math.max(0, Math.round(g / budget) - 1), 0);
      return { frames: gaps.length, dropped, worst: Math.max(...gaps), pendingFrames: pending };
    }, mode);
    for (const mode of ['steady', 'jump']) {
      const r = await scroll(mode);
      console.log(`scrolling (${mode}, 3 s): ${r.frames} frames, ${r.dropped} dropped at 60 Hz, worst frame ${r.worst.toFixed(1)} ms, ${r.pendingFrames} frames showed rows still loading`);
    }
    m = await metric();
    console.log(`after scrolling: JS heap ${(m.JSHeapUsedSize / 1048576).toFixed(1)} MiB used, ${m.Nodes} DOM nodes`);
  } finally {
    await browser.close();
  }
}
