// Regenerates the README's screenshot of the deployment view (docs/dashboard-deployment.png):
// a build-like log with steps, colours and an error line, timestamps on, in Chromium at
// 1280×800. Run: node tests/browser/readme-screenshot.mjs (real release binary, like the tests).

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { mkdirSync } from 'node:fs';
import { Server, launch, signedInPage } from './lib.mjs';

const out = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'dashboard-deployment.png');
const script = String.raw`
echo '-----> Fetching dependencies'
for i in $(seq 1 12); do printf '       \033[32m✓\033[0m package-%02d \033[2m(cached)\033[0m\n' $i; done
sleep 1
echo '-----> Compiling'
for i in $(seq 1 20); do printf '   \033[1;32mCompiling\033[0m crate-%02d v0.%d.0\n' $i $i; done
sleep 2
printf '\033[33mwarning\033[0m: unused variable: \033[1mx\033[0m\n'
echo '-----> Running tests'
for i in $(seq 1 6); do printf 'test module_%d::works ... \033[32mok\033[0m\n' $i; done
printf 'test module_7::fails ... \033[31mFAILED\033[0m\n'
echo '!     Build failed: exited with status 101'
exit 1`;

const s = await Server.start();
const browser = await launch();
try {
  await s.createApp('shop');
  const { id, done } = await s.push('shop', script, 'v1.4.2');
  await done;
  const page = await signedInPage(browser, s, { width: 1280, height: 800 });
  await page.goto(`${s.url}/ui/apps/shop/deployments/${id}`);
  await page.waitForSelector('#log .log-line:has-text("Build failed")');
  await page.check('#opt-times');
  await page.waitForSelector('.steps:not([hidden])');
  mkdirSync(path.dirname(out), { recursive: true });
  await page.screenshot({ path: out });
  console.log(out);
} finally {
  await browser.close();
  await s.close();
}
