// Browser tests of the dashboard: real headless Chromium against the real release binary, one
// fresh server (temp data dir) per test. Run alone with tests/browser/run.sh.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, chmodSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Server, launch, signedInPage, shot, rows, until, sleep } from './lib.mjs';

let browser;
const servers = [];
before(async () => { browser = await launch(); });
after(async () => {
  await browser?.close();
  for (const s of servers) await s.close();
});

async function server() {
  const s = await Server.start();
  servers.push(s);
  return s;
}

const flagDir = mkdtempSync(path.join(tmpdir(), 'deployd-browser-flags-'));
after(() => rmSync(flagDir, { recursive: true, force: true }));

/** A shell loop waiting (bounded, 60 s) for `flag` to exist. */
const waitFor = (flag) => `for i in $(seq 1 600); do [ -e ${flag} ] && break; sleep 0.1; done`;

function assertContiguous(got, from, to) {
  const ns = got.map((r) => r.n);
  const want = Array.from({ length: to - from + 1 }, (_, i) => from + i);
  assert.deepEqual(ns, want, 'every line once, in order');
}

test('signing in lists the apps and their deployments; views have URLs; sign-out forgets the session', async () => {
  const s = await server();
  await s.createApp('web');
  const { id, done } = await s.push('web', 'echo hello from web; echo second line', 'v42');
  assert.equal(await done, 0);
  const page = await signedInPage(browser, s);
  await page.waitForSelector('#apps tr[data-app=web]');
  const appRow = await page.textContent('#apps tr[data-app=web]');
  assert.match(appRow, /web/);
  assert.match(appRow, new RegExp(id.slice(0, 8)));
  assert.match(appRow, /admin/);
  const stored = await page.evaluate(() => JSON.stringify({ ...sessionStorage }) + JSON.stringify({ ...localStorage }));
  assert.ok(!stored.includes(s.token), 'the API token is not kept after the exchange');
  await shot(page, 'apps');

  await page.click('#apps a:text("web")');
  await page.waitForURL(`${s.url}/ui/apps/web`);
  await page.waitForSelector(`#deployments tr[data-id="${id}"] .badge-success`);
  assert.match(await page.textContent(`#deployments tr[data-id="${id}"]`), /v42/);
  await shot(page, 'app');

  await page.click(`#deployments tr[data-id="${id}"] a`);
  await page.waitForURL(`${s.url}/ui/apps/web/deployments/${id}`);
  await page.waitForSelector('#log .log-line:has-text("second line")');
  assert.equal(await page.textContent('#deployment-ref'), 'v42');
  assert.equal(await page.textContent('#deployment-pusher'), 'admin');

  await page.goBack();
  await page.waitForURL(`${s.url}/ui/apps/web`);
  await page.waitForSelector(`#deployments tr[data-id="${id}"]`);

  await page.click('#signout');
  await page.waitForSelector('#token');
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  assert.deepEqual(page.problems, []);
});

test('lines pushed while the page is open show live, in order, and the status follows', async () => {
  const s = await server();
  await s.createApp('live');
  const flag = path.join(flagDir, 'live-go');
  const script = `${waitFor(flag)}; for i in $(seq 1 40); do echo "live line $i"; sleep 0.02; done`;
  const { id, done } = await s.push('live', script);
  const page = await signedInPage(browser, s);
  await page.goto(`${s.url}/ui/apps/live/deployments/${id}`);
  await page.waitForSelector('#stream-state[data-state=live]');
  writeFileSync(flag, '');
  assert.equal(await done, 0);
  await page.waitForSelector('#deployment-status .badge-success');
  await page.waitForSelector('#log .log-line:has-text("live line 40")');
  const got = await rows(page);
  assertContiguous(got, 1, 40);
  got.forEach((r, i) => assert.equal(r.text, `live line ${i + 1}`));
  await shot(page, 'deployment-live');
  assert.deepEqual(page.problems, []);
});

test('a fast live log stays followed to its last line (regression: lines arriving between a render and its scroll event turned auto-scroll off)', async () => {
  const s = await server();
  await s.createApp('fast');
  const flag = path.join(flagDir, 'fast-go');
  const { id, done } = await s.push('fast', `${waitFor(flag)}; seq 1 5000`);
  const page = await signedInPage(browser, s);
  await page.goto(`${s.url}/ui/apps/fast/deployments/${id}`);
  await page.waitForSelector('#stream-state[data-state=live]');
  writeFileSync(flag, '');
  assert.equal(await done, 0);
  await page.waitForSelector('#log .log-line[data-n="5000"]:not(.pending)');
  assert.equal(await page.isHidden('.jump-end'), true, 'still following');
  // Scrolling up stops following; "jump to end" comes back to the last line.
  await page.$eval('#log', (el) => { el.scrollTop = 0; });
  await page.waitForSelector('.jump-end:visible');
  await page.click('.jump-end');
  await page.waitForSelector('#log .log-line[data-n="5000"]:not(.pending)');
  assert.deepEqual(page.problems, []);
});

test('a server restarted mid-stream: the page shows reconnecting, then resumes with no lost or doubled line', async () => {
  const s = await server();
  await s.createApp('restart');
  const script = `for i in $(seq 1 25); do echo "before restart $i"; done; sleep 60`;
  const { id, child } = await s.push('restart', script);
  const page = await signedInPage(browser, s);
  await page.goto(`${s.url}/ui/apps/restart/deployments/${id}`);
  await page.waitForSelector('#log .log-line:has-text("before restart 25")');
  await page.waitForSelector('#stream-state[data-state=live]');
  await s.stop();
  child.kill('SIGKILL');
  await page.waitForSelector('#stream-state[data-state=reconnecting]');
  await shot(page, 'deployment-reconnecting');
  await s.spawn();
  // The restart ends the pusher's deployment (a line says why): the page gets that line and the
  // terminal status through the resumed stream.
  await page.waitForSelector('#deployment-status .badge-aborted', { timeout: 30_000 });
  const stored = await s.deployment('restart', id);
  const text = await (await fetch(`${s.url}/v1/apps/restart/deployments/${id}/output`, {
    headers: { Authorization: `Basic ${Buffer.from(`:${s.token}`).toString('base64')}` },
  })).text();
  const lines = text.split('\n').filter((l, i, all) => i < all.length - 1 || l);
  assert.ok(lines.length > 25, `the restart added a line (${stored.status})`);
  await until(async () => (await rows(page)).length === lines.length, 'every stored line on the page');
  const got = await rows(page);
  assertContiguous(got, 1, lines.length);
  got.forEach((r, i) => assert.equal(r.text, lines[i]));
  assert.deepEqual(page.problems, []);
});

test('a million-line log opens with under 2,000 line elements, search finds a line near its start, a permalink scrolls to its line', async () => {
  const s = await server();
  await s.createApp('big');
  const { id, done } = await s.push('big', 'seq 1 4; echo findme-needle; seq 6 1000000');
  assert.equal(await done, 0);
  const page = await signedInPage(browser, s);
  await page.goto(`${s.url}/ui/apps/big/deployments/${id}`);
  await page.waitForSelector('#log .log-line[data-n="1000000"]:not(.pending)');
  const count = await page.$$eval('.log-line', (els) => els.length);
  assert.ok(count < 2000, `${count} line elements`);
  await shot(page, 'deployment-big');

  await page.fill('#log-search', 'FINDME-needle');
  await page.press('#log-search', 'Enter');
  await page.waitForSelector('#log .log-line.match-current[data-n="5"]:not(.pending)');
  assert.equal(await page.textContent('#search-count'), '1 of 1');
  assert.equal(await page.textContent('#log .log-line[data-n="5"] .tx'), 'findme-needle');
  await shot(page, 'deployment-search');

  await page.goto(`${s.url}/ui/apps/big/deployments/${id}#L500000`);
  const row = await page.waitForSelector('#log .log-line.target[data-n="500000"]:not(.pending)');
  assert.equal(await row.$eval('.tx', (el) => el.textContent), '500000');
  const box = await row.boundingBox();
  const view = await (await page.$('#log')).boundingBox();
  assert.ok(box.y >= view.y && box.y + box.height <= view.y + view.height, 'the line is in view');
  assert.ok((await page.$$eval('.log-line', (els) => els.length)) < 2000);
  await shot(page, 'deployment-permalink');
  assert.deepEqual(page.problems, []);
});

test('ANSI colours render as styles, never as raw escapes, and an HTML line shows as text and runs nothing', async () => {
  const s = await server();
  await s.createApp('colors');
  const script = String.raw`printf '\033[31mred\033[0m plain \033[1;3;4mstyled\033[0m\n'; printf '\033[38;5;208mcolour208\033[0m \033[38;2;10;200;30mtruecolour\033[0m \033[2K\033]0;title\007end\n'; echo '<img src=x onerror=alert(1)>'; echo '<script>alert(2)</script>'`;
  const { id, done } = await s.push('colors', script);
  assert.equal(await done, 0);
  const page = await signedInPage(browser, s);
  await page.goto(`${s.url}/ui/apps/colors/deployments/${id}`);
  await page.waitForSelector('#log .log-line[data-n="4"]:not(.pending)');
  const red = await page.$eval('#log .log-line[data-n="1"] .fg-1', (el) => [el.textContent, getComputedStyle(el).color]);
  assert.deepEqual(red, ['red', 'rgb(255, 123, 114)']);
  const styled = await page.$eval('#log .log-line[data-n="1"] .sgr-bold', (el) => {
    const cs = getComputedStyle(el);
    return [el.textContent, cs.fontWeight, cs.fontStyle, cs.textDecorationLine, el.classList.contains('sgr-italic'), el.classList.contains('sgr-underline')];
  });
  assert.deepEqual(styled, ['styled', '700', 'italic', 'underline', true, true]);
  const colours = await page.$$eval('#log .log-line[data-n="2"] .tx span', (els) => els.map((el) => [el.textContent, getComputedStyle(el).color]));
  assert.deepEqual(colours, [['colour208', 'rgb(255, 135, 0)'], ['truecolour', 'rgb(10, 200, 30)']]);
  const texts = (await rows(page)).map((r) => r.text);
  assert.deepEqual(texts, ['red plain styled', 'colour208 truecolour end', '<img src=x onerror=alert(1)>', '<script>alert(2)</script>']);
  for (const t of texts) assert.ok(!/\u001b|\[\d+m/.test(t), `no raw escape in ${JSON.stringify(t)}`);
  assert.equal(await page.$$eval('#log img, #log script', (els) => els.length), 0);
  await sleep(300);
  await shot(page, 'deployment-ansi');
  assert.deepEqual(page.problems, [], 'no dialog, no page error');
});

test('an archive uploaded from the app view deploys, and its roll back button starts its kept image', async () => {
  const s = await server();
  await s.createApp('exec');
  const src = mkdtempSync(path.join(tmpdir(), 'deployd-browser-src-'));
  mkdirSync(path.join(src, 'app', 'bin'), { recursive: true });
  writeFileSync(path.join(src, 'app', 'bin', 'build'), '#!/bin/sh\necho building the app\n');
  chmodSync(path.join(src, 'app', 'bin', 'build'), 0o755);
  const archive = path.join(src, 'app.tar.gz');
  execFileSync('tar', ['czf', archive, '-C', src, 'app']);

  const page = await signedInPage(browser, s);
  await page.goto(`${s.url}/ui/apps/exec`);
  await page.waitForSelector('#deploy');
  await page.setInputFiles('#archive', archive);
  await page.fill('#git-ref', 'first');
  await page.click('#deploy');
  await page.waitForURL(/\/ui\/apps\/exec\/deployments\//);
  // Regression: a deployment that ended between its JSON and its first lines read kept the
  // JSON's status in the header (the executor's fast deployment hits that window).
  await page.waitForSelector('#deployment-status .badge-success', { timeout: 60_000 });
  await page.waitForSelector('#log .log-line:has-text("building the app")');
  const first = page.url().split('/').pop();

  await page.goBack();
  await page.waitForSelector(`#deployments tr[data-id="${first}"] button.rollback`);
  await page.click(`#deployments tr[data-id="${first}"] button.rollback`);
  await page.waitForURL((url) => /\/deployments\//.test(url.pathname) && !url.pathname.endsWith(first));
  await page.waitForSelector('#deployment-status .badge-success', { timeout: 60_000 });
  await page.waitForSelector(`#log .log-line:has-text("Rolling back to ${first}")`);
  assert.equal(await page.textContent('#deployment-ref'), 'first');
  await page.goBack();
  await page.waitForSelector(`#deployments tr[data-id="${first}"] button.rollback`);
  await shot(page, 'app-rollback');
  rmSync(src, { recursive: true, force: true });
  assert.deepEqual(page.problems, []);
});

test('the cancel button ends a running deployment, and the badge follows live', async () => {
  const s = await server();
  await s.createApp('slow');
  const flag = path.join(flagDir, 'never');
  const { id } = await s.push('slow', `echo waiting; ${waitFor(flag)}`, 'slow');
  const page = await signedInPage(browser, s);
  await page.goto(`${s.url}/ui/apps/slow`);
  await page.waitForSelector(`#deployments tr[data-id="${id}"] button.cancel`);
  await shot(page, 'app-cancel');
  await page.click(`#deployments tr[data-id="${id}"] button.cancel`);
  await page.waitForSelector(`#deployments tr[data-id="${id}"] .badge-aborted`, { timeout: 30_000 });
  assert.equal((await s.deployment('slow', id)).status, 'aborted');
  assert.equal(await page.$$eval(`#deployments tr[data-id="${id}"] button.cancel`, (els) => els.length), 0);
  assert.deepEqual(page.problems, []);
});

test('the deployment view works at phone width', async () => {
  const s = await server();
  await s.createApp('phone');
  const { id, done } = await s.push('phone', 'echo "-----> Building"; for i in $(seq 1 50); do echo "step line $i"; done; echo "-----> Done"; echo "!     an error line"');
  assert.equal(await done, 0);
  const page = await signedInPage(browser, s, { width: 375, height: 740 });
  await page.goto(`${s.url}/ui/apps/phone/deployments/${id}`);
  await page.waitForSelector('#log .log-line[data-n="53"]:not(.pending)');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no horizontal page scroll (${overflow} px)`);
  // Steps: collapsing the first hides its lines; the first error is one click away.
  await page.waitForSelector('.steps:not([hidden])');
  await page.click('#log .log-line[data-n="1"] button.fold');
  await page.waitForSelector('#log .log-line[data-n="1"] button.fold[aria-expanded=false]');
  const visible = (await rows(page)).map((r) => r.n);
  assert.deepEqual(visible, [1, 52, 53]);
  await page.click('#first-error');
  await page.waitForSelector('#log .log-line.target[data-n="53"]');
  await shot(page, 'deployment-phone');
  assert.deepEqual(page.problems, []);
});

test('a click on a log row is not lost when the log renders between its press and its release (regression: every render took the rows out and put them back)', async () => {
  const s = await server();
  await s.createApp('clicks');
  const { id, done } = await s.push('clicks', 'echo "-----> Building"; echo "first line"; echo "second line"; echo "-----> Done"; echo "last line"');
  assert.equal(await done, 0);
  const page = await signedInPage(browser, s);
  await page.goto(`${s.url}/ui/apps/clicks/deployments/${id}`);
  await page.waitForSelector('#log .log-line[data-n="5"]:not(.pending)');
  await page.waitForSelector('.steps:not([hidden])');
  const fold = await page.$('#log .log-line[data-n="1"] button.fold');
  const box = await fold.boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  // A render while the button is held (a live line or a scroll does this): the log's own
  // scroll handler, run at once.
  await page.evaluate(() => document.querySelector('#log').dispatchEvent(new Event('scroll')));
  await page.mouse.up();
  await page.waitForSelector('#log .log-line[data-n="1"] button.fold[aria-expanded=false]', { timeout: 5000 });
  assert.deepEqual((await rows(page)).map((r) => r.n), [1, 4, 5]);
  assert.deepEqual(page.problems, []);
});
