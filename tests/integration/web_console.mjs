// web_console.mjs - drives the browser console (GET /) in headless Chromium
// with playwright-core, against a running sbxd.  Run by test_web.py:
//
//   node tests/integration/web_console.mjs URL ARTIFACT_DIR SANDBOX_NAME
//
// Prints one line per step; exits 0 when every check passed, 1 otherwise
// (with the reason), 77 when the browser cannot be started at all.

import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
// playwright-core is a devDependency of web/, not of this directory
const require = createRequire(path.join(here, '..', '..', 'web', 'package.json'));
const { chromium } = require('playwright-core');

const [url, artifacts, sbName] = process.argv.slice(2);
if (!url || !artifacts || !sbName) {
  console.error('usage: web_console.mjs URL ARTIFACT_DIR SANDBOX_NAME');
  process.exit(2);
}
const KEY = 'sbxtestkey123';
const CHROMIUM = process.env.SBX_CHROMIUM || '/usr/bin/chromium';

const step = (s) => console.log('step: ' + s);
function fail(msg) { throw new Error(msg); }

// Poll fn (async, returns a truthy value when done) until timeout.
async function until(what, fn, timeout = 20000) {
  const t0 = Date.now();
  let last;
  while (Date.now() - t0 < timeout) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  fail('timed out after ' + timeout + ' ms waiting for ' + what);
}

const lines = async (page) => (await page.evaluate(() => window.sbxConsole.screen())).split('\n');

// Type a command into the terminal and wait for a line of its output that
// matches re and comes after the newest line showing the command.
async function termRun(page, cmd, re, what) {
  await page.click('#terminal');
  await page.keyboard.type(cmd, { delay: 15 });
  await page.keyboard.press('Enter');
  return until(what, async () => {
    const ls = await lines(page);
    const at = ls.findLastIndex((l) => l.includes(cmd)); // the newest run of cmd
    if (at < 0) return null;
    return ls.slice(at + 1).find((l) => re.test(l.trim())) || null;
  });
}

// Run `stty size` until it reports the terminal's current size.  The layout
// may still be settling (panels filling in), so the size is read after each
// run; a resize that never reaches the pty times this out.
async function sttyMatches(page, what) {
  return until(what, async () => {
    const got = (await termRun(page, 'stty size', /^\d+ \d+$/, 'stty size output')).trim();
    const s = await page.evaluate(() => window.sbxConsole.size());
    return got === s.rows + ' ' + s.cols ? got : null;
  });
}

const userDataDir = mkdtempSync(path.join(tmpdir(), 'sbx-chromium-'));
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
    timeout: 60000,
  });
} catch (e) {
  console.error('cannot start ' + CHROMIUM + ': ' + e.message);
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(77);
}

let rc = 0;
const problems = [];
try {
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(20000);
  page.on('dialog', (d) => d.accept());
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push('console error: ' + m.text());
  });
  // every request must stay on the server (nothing from a CDN), REST with the key
  const origin = new URL(url).origin;
  const restNoKey = [];
  let KEY_SET = false; // REST calls after the key was entered must carry it
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(origin) && !u.startsWith('data:'))
      problems.push('request off the server: ' + u);
    if (new URL(u).pathname.startsWith('/v1/') && KEY_SET && r.headers()['authorization'] !== 'Bearer ' + KEY)
      restNoKey.push(r.method() + ' ' + u);
  });
  const wsProtocols = [];
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  cdp.on('Network.webSocketWillSendHandshakeRequest', (ev) => {
    const h = ev.request.headers || {};
    wsProtocols.push(h['Sec-WebSocket-Protocol'] || h['sec-websocket-protocol'] || '');
  });

  step('open ' + url);
  const resp = await page.goto(url);
  if (resp.status() !== 200) fail('GET / answered ' + resp.status());
  await until('the server version in the header',
    async () => /^sbxd /.test(await page.textContent('#server')));

  step('enter an API key');
  await page.fill('#key', KEY);
  await page.click('#key-form button[type=submit]');
  KEY_SET = true;
  await until('the version reloaded', async () => /^sbxd /.test(await page.textContent('#server')));

  step('create sandbox ' + sbName);
  await page.fill('#create-name', sbName);
  await page.click('#create');
  const row = `#sandboxes tbody tr:has(td:text-is("${sbName}"))`;
  await page.waitForSelector(row + ' td.state-running', { timeout: 60000 });

  step('open a terminal');
  await page.click(row + ' button.open');
  await until('the shell to start',
    async () => /^running, exec ex_/.test(await page.textContent('#term-status')));

  step('echo hi');
  await termRun(page, 'echo hi', /^hi$/, 'the output "hi"');

  step('stty size');
  const stty1 = await sttyMatches(page, 'stty size to match the terminal');
  const size1 = await page.evaluate(() => window.sbxConsole.size());
  console.log('  stty size: ' + stty1);

  step('resize the page');
  await page.setViewportSize({ width: 900, height: 640 });
  const size2 = await until('the terminal to refit', async () => {
    const s = await page.evaluate(() => window.sbxConsole.size());
    return s.rows !== size1.rows || s.cols !== size1.cols ? s : null;
  });
  console.log('  terminal refit to ' + size2.rows + 'x' + size2.cols);
  const stty2 = await sttyMatches(page, 'stty size to follow the resize');
  if (stty2 === stty1) fail('stty size did not change after the resize');
  console.log('  stty size after resize: ' + stty2);
  await page.screenshot({ path: path.join(artifacts, 'console-terminal.png') });

  step('one-shot command');
  await page.fill('#run-command', 'echo out; echo err >&2; exit 3');
  await page.click('#run');
  await until('the exit code', async () => /exit code 3/.test(await page.textContent('#run-status')));
  const out = await page.textContent('#run-stdout'), err = await page.textContent('#run-stderr');
  if (out !== 'out\n') fail('stdout shows ' + JSON.stringify(out));
  if (err !== 'err\n') fail('stderr shows ' + JSON.stringify(err));

  step('a detached shell, closed, listed and re-attached');
  await page.check('#detach');
  await page.click('#open-terminal');
  await until('the second shell to start',
    async () => /^running, exec ex_/.test(await page.textContent('#term-status')));
  const execId = await page.evaluate(() => window.sbxConsole.execId());
  await termRun(page, 'echo attached-$((6*7))', /^attached-42$/, 'the marker');
  await page.click('#term-close');
  await page.click('#refresh-execs');
  const execRow = `#execs tbody tr[data-id="${execId}"]`;
  await page.waitForSelector(execRow + ' td.state-running');
  await page.click(execRow + ' button.attach');
  await until('the replayed marker', async () => (await lines(page)).some((l) => l.trim() === 'attached-42'));
  await termRun(page, 'echo again-$((2+3))', /^again-5$/, 'live output after attach');
  await page.screenshot({ path: path.join(artifacts, 'console-attached.png') });
  await page.click('#term-kill');
  await until('the attached shell to end',
    async () => /killed by signal 9|exit code/.test(await page.textContent('#term-status')));

  step('remove the sandbox');
  await page.click(row + ' button.remove');
  await page.waitForSelector(row, { state: 'detached' });

  step('the key went everywhere');
  if (restNoKey.length) fail('REST calls without the key: ' + restNoKey.slice(0, 3).join(', '));
  if (!wsProtocols.length) fail('no WebSocket handshake seen');
  for (const p of wsProtocols)
    if (p.replace(/\s/g, '') !== 'sbx.v1.json,sbx.token.' + KEY)
      fail('a WebSocket offered ' + JSON.stringify(p));

  if (problems.length) fail(problems.join('\n'));
  console.log('ok: every step passed');
} catch (e) {
  rc = 1;
  console.log('FAILED: ' + e.message);
  try {
    const page = context.pages()[0];
    await page.screenshot({ path: path.join(artifacts, 'console-failure.png') });
    console.log('terminal text:\n' + await page.evaluate(() => window.sbxConsole && window.sbxConsole.screen()));
  } catch (e2) { /* the page is gone */ }
} finally {
  await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(rc);
