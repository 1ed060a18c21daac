// Drive examples/browser/ in headless Chromium (playwright-core + the system's chromium): wait for the model,
// type a text, click Classify, read the label and scores, click the latency button, read the median of 20.
// Prints {"label", "score", "scores", "median_ms", "status"} as JSON.
//   node browser_demo.mjs URL TEXT CHROMIUM_PATH
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [url, text, executablePath] = process.argv.slice(2);
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'adapterdeploy-chromium-'));
const args = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
              '--disable-component-update', '--disable-sync'];
const context = await chromium.launchPersistentContext(userDataDir, { executablePath, headless: true, args });
const offsite = [];
try {
  const page = context.pages()[0] || await context.newPage();
  // no network: anything but the local static server is refused and recorded
  await page.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if (u.hostname === '127.0.0.1' || u.hostname === 'localhost') return route.continue();
    offsite.push(u.href);
    return route.abort();
  });
  await page.goto(url);
  await page.waitForSelector('#status[data-ready], #status[data-error]', { timeout: 120000 });
  const status = await page.textContent('#status');
  if (await page.getAttribute('#status', 'data-error')) throw new Error(status);
  await page.fill('#text', '');
  await page.type('#text', text);
  await page.click('#classify');
  await page.waitForSelector('#result[data-label]', { timeout: 60000 });
  const label = await page.getAttribute('#result', 'data-label');
  const score = Number(await page.getAttribute('#result', 'data-score'));
  const scores = JSON.parse(await page.getAttribute('#result', 'data-scores'));
  await page.click('#bench');
  await page.waitForSelector('#latency[data-median]', { timeout: 120000 });
  const median_ms = Number(await page.getAttribute('#latency', 'data-median'));
  console.log(JSON.stringify({ label, score, scores, median_ms, status, offsite }));
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
