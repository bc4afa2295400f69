// Measures the dashboard's log viewer on a 1,000,000-line log (a benchmark, not a test: it
// prints figures and asserts nothing). Real release binary, Debian's headless Chromium.
//
//   node tests/browser/measure.mjs            (or: npm run measure, in tests/browser)
//
// Figures: time to first screen (navigation start → the last line rendered, median of 3),
// the tab's JS heap and DOM node count with the log open, frames dropped while scrolling (a
// steady fast scroll and a random-jump scroll, 3 s each, counted from requestAnimationFrame
// gaps), and the lines/s the live view keeps up with (a push of 200,000 lines while the page
// follows it: page time vs the push's own time).

import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Server, launch, signedInPage, sleep } from './lib.mjs';

const LINES = Number(process.env.MEASURE_LINES || 1_000_000);
const LIVE_LINES = Number(process.env.MEASURE_LIVE_LINES || 200_000);
const RUNS = 3;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const s = await Server.start();
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

  // Live: the page follows a push of LIVE_LINES lines as fast as deployd push sends them.
  await s.createApp('fast');
  const flag = path.join(s.dir, 'go');
  const live = await s.push('fast', `for i in $(seq 1 600); do [ -e ${flag} ] && break; sleep 0.05; done; seq 1 ${LIVE_LINES}`);
  await page.goto(`${s.url}/ui/apps/fast/deployments/${live.id}`);
  await page.waitForSelector('#stream-state[data-state=live]');
  t = Date.now();
  writeFileSync(flag, '');
  await live.done;
  const pushLive = (Date.now() - t) / 1000;
  await page.waitForSelector(`#log .log-line[data-n="${LIVE_LINES}"]:not(.pending)`, { timeout: 300_000 });
  const pageLive = (Date.now() - t) / 1000;
  console.log(`live: ${LIVE_LINES} lines pushed in ${pushLive.toFixed(1)} s (${Math.round(LIVE_LINES / pushLive)} lines/s); the page showed the last one after ${pageLive.toFixed(1)} s (${Math.round(LIVE_LINES / pageLive)} lines/s)`);
  await sleep(100);
} finally {
  await browser.close();
  await s.close();
}
