// The console in a real browser: Playwright (playwright-core) driving
// Debian's chromium against a `host serve` that tests/console.rs started
// and filled (an agent's refunds waiting for approval, a hostile result).
//
// Environment: TOOLHOST_URL, TOOLHOST_CHROMIUM, APPROVER_KEY, AUDITOR_KEY,
// AGENT_KEY_ID, APPROVE_ID, DENY_ID, XSS_INVOCATION, PROFILE_DIR; and
// TOOLHOST_SCREENSHOTS=DIR to save the inbox and reports pages there.
//
// Prints one line per check and `N passed, M failed`; exits 1 on failure.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (tests/console.rs sets it)`);
  return v;
};
const url = env('TOOLHOST_URL');
const shots = process.env.TOOLHOST_SCREENSHOTS;
const profile = process.env.PROFILE_DIR || fs.mkdtempSync(path.join(os.tmpdir(), 'toolhost-chromium-'));

const browser = await chromium.launchPersistentContext(profile, {
  executablePath: env('TOOLHOST_CHROMIUM'),
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
  viewport: { width: 1280, height: 900 },
});

// Anything a page tries to pop up or log as an error is a finding.
const dialogs = [];
const errors = [];
const watch = (page) => {
  page.on('dialog', async (d) => {
    dialogs.push(d.message());
    await d.dismiss();
  });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  return page;
};

let passed = 0;
let failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed += 1;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`not ok - ${name}\n  ${String(e.stack || e).split('\n').join('\n  ')}`);
  }
}

async function signIn(page, key) {
  await page.goto(`${url}/console/login`);
  await page.fill('#key', key);
  await Promise.all([page.waitForURL(/\/console\/(?!login)/), page.click('button[type=submit]')]);
}

const approver = watch(await browser.newPage());
const approveId = env('APPROVE_ID');
const denyId = env('DENY_ID');

await check('signing in with an approver key lands on the inbox', async () => {
  await signIn(approver, env('APPROVER_KEY'));
  assert.match(approver.url(), /\/console\/approvals$/);
  assert.equal(await approver.locator('h1').innerText(), 'Approvals');
  const cookies = await browser.cookies(`${url}/console/`);
  const session = cookies.find((c) => c.name === 'toolhost_session');
  assert.ok(session, 'a session cookie');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Strict');
  // Script cannot read it (HttpOnly), and there is no script anyway.
  assert.equal(await approver.evaluate(() => document.cookie.includes('toolhost_session')), false);
  assert.equal(await approver.locator('script').count(), 0);
});

await check("the agent's refund above the threshold is in the inbox with its packet", async () => {
  const card = approver.locator('article.approval', { has: approver.locator(`a[href$="${approveId}"]`) });
  await card.waitFor();
  const text = await card.innerText();
  assert.match(text, /issue-refund/);
  assert.match(text, /120(\.0)? USD/);
  assert.match(text, /over 50 USD/);
  assert.match(text, new RegExp(env('AGENT_KEY_ID')));
  assert.match(text, /support-42/);
  assert.match(text, /Arguments SHA-256/);
  assert.ok(await card.locator('button.approve').isVisible());
  if (shots) {
    fs.mkdirSync(shots, { recursive: true });
    await approver.screenshot({ path: path.join(shots, 'console-inbox.png'), fullPage: true });
  }
});

await check('approving runs the call and the invocation shows its result', async () => {
  const card = approver.locator('article.approval', { has: approver.locator(`a[href$="${approveId}"]`) });
  await card.locator('form[action$="/approve"] input[name=reason]').fill('customer verified');
  await Promise.all([
    approver.waitForURL(new RegExp(`/console/approvals/${approveId}$`)),
    card.locator('button.approve').click(),
  ]);
  const outcome = await approver.locator('section.outcome').innerText();
  assert.match(outcome, /ok/);
  assert.match(outcome, /re_ord_1002_12000/);
  assert.match(await approver.locator('main').innerText(), /approved by/);
  // The invocation page shows the same result.
  await Promise.all([approver.waitForURL(/\/console\/invocations\/inv_/), approver.click('section.outcome a')]);
  assert.match(await approver.locator('pre.result').innerText(), /re_ord_1002_12000/);
  assert.match(await approver.locator('main').innerText(), /Budget charge/);
});

await check('a denied request shows its reason', async () => {
  await approver.goto(`${url}/console/approvals/${denyId}`);
  await approver.fill('form[action$="/deny"] input[name=reason]', 'amount above the order policy <i>limit</i>');
  await Promise.all([
    approver.waitForURL(new RegExp(`/console/approvals/${denyId}$`)),
    approver.click('button.deny'),
  ]);
  const main = await approver.locator('main').innerText();
  assert.match(main, /denied by/);
  assert.match(main, /amount above the order policy <i>limit<\/i>/, 'the reason, as text');
  assert.match(main, /approval_denied/);
  assert.equal(await approver.locator('main i').count(), 0, 'no markup from the reason');
});

await check('the XSS probe renders as text and no script runs', async () => {
  await approver.goto(`${url}/console/invocations/${env('XSS_INVOCATION')}`);
  const result = await approver.locator('pre.result').innerText();
  assert.match(result, /<script>window\.__xss = 1; alert\('xss'\)<\/script>/);
  const args = await approver.locator('pre.args').innerText();
  assert.match(args, /<img src=x onerror=/);
  assert.equal(await approver.locator('main script').count(), 0);
  assert.equal(await approver.locator('main img').count(), 0);
  assert.equal(await approver.evaluate(() => window.__xss), undefined);
  // The list page (the task id carries HTML too).
  await approver.goto(`${url}/console/invocations`);
  assert.match(await approver.locator('table.list').innerText(), /<b>task<\/b>/);
  assert.equal(await approver.locator('table.list b').count(), 0);
  assert.deepEqual(dialogs, []);
});

await check('a form post without the CSRF token is refused', async () => {
  const res = await approver.request.post(`${url}/console/approvals/${denyId}/approve`, {
    form: { reason: 'no token' },
    headers: { origin: url },
    maxRedirects: 0,
  });
  assert.equal(res.status(), 403);
  assert.match(await res.text(), /CSRF/);
});

await check('a cross-site form post is refused and decides nothing', async () => {
  // (Its own 403 is not a finding: only a dialog would be.)
  const attacker = await browser.newPage();
  attacker.on('dialog', async (d) => {
    dialogs.push(d.message());
    await d.dismiss();
  });
  const csrf = await approver.goto(`${url}/console/approvals`).then(() =>
    approver.locator('input[name=csrf]').first().inputValue(),
  );
  // A page of another origin posting a form (even with a stolen token).
  await attacker.setContent(
    `<form method="post" action="${url}/console/approvals/${approveId}/deny">` +
      `<input name="csrf" value="${csrf}"><input name="reason" value="csrf"><button>go</button></form>`,
  );
  const [response] = await Promise.all([attacker.waitForNavigation(), attacker.click('button')]);
  assert.equal(response.status(), 403);
  await approver.goto(`${url}/console/approvals/${approveId}`);
  assert.match(await approver.locator('main').innerText(), /approved by/);
  await attacker.close();
});

await check('the reports page shows the figures and charts', async () => {
  await approver.goto(`${url}/console/stats?since=3m`);
  const main = await approver.locator('main').innerText();
  assert.match(main, /invocations/);
  assert.match(main, /hostile/);
  assert.match(main, /fuel_exhausted/);
  assert.ok((await approver.locator('svg.chart').count()) >= 2);
  assert.ok((await approver.locator('svg.chart rect.bar').count()) > 0);
  if (shots) {
    await approver.screenshot({ path: path.join(shots, 'console-stats.png'), fullPage: true });
  }
});

await check('sign-out ends the session', async () => {
  await approver.goto(`${url}/console/approvals`);
  await Promise.all([approver.waitForURL(/\/console\/login$/), approver.click('header form button')]);
  await approver.goto(`${url}/console/approvals`);
  assert.match(approver.url(), /\/console\/login$/);
});

await check("an auditor's key sees audit and verifies the chain, but cannot approve", async () => {
  const auditor = watch(await browser.newPage());
  await signIn(auditor, env('AUDITOR_KEY'));
  const nav = await auditor.locator('header nav').innerText();
  assert.match(nav, /Audit/);
  await auditor.goto(`${url}/console/audit`);
  await Promise.all([auditor.waitForURL(/\/console\/audit\/verify$/), auditor.click('text=Verify the chain')]);
  assert.match(await auditor.locator('article.verify').innerText(), /intact/);
  await auditor.goto(`${url}/console/approvals?status=all`);
  assert.equal(await auditor.locator('button.approve').count(), 0);
  assert.equal(await auditor.locator('button.deny').count(), 0);
  const csrf = await auditor.locator('input[name=csrf]').first().inputValue();
  const res = await auditor.request.post(`${url}/console/approvals/${approveId}/deny`, {
    form: { csrf },
    headers: { origin: url },
    maxRedirects: 0,
  });
  assert.equal(res.status(), 403);
  assert.match(await res.text(), /approve/);
  await auditor.close();
});

await check('no page raised a dialog or a script error', async () => {
  assert.deepEqual(dialogs, []);
  assert.deepEqual(errors, []);
});

await browser.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
