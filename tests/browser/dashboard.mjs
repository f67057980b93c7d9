// The dashboard in a real browser (Debian's headless Chromium through playwright-core), against
// a running local stack whose queues are being drained. Driven by the end-to-end scenario
// `the_dashboard_works_in_a_real_browser` (tests/scenarios.rs), which passes:
//   CHARLIE_UI          the dashboard's base URL (http://127.0.0.1:PORT/ui)
//   CHARLIE_UI_KEY      an operate key to sign in with
//   CHARLIE_UI_REPORT   a report and a period with rows to start a run of
//   CHARLIE_UI_PERIOD
//   CHARLIE_UI_LETTER   text found in the body of a dead letter in the mail DLQ
//   CHARLIE_UI_SHOTS    where the screenshots go
// Prints one line per step; exits non-zero with the reason on the first failure.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const ui = env("CHARLIE_UI");
const shots = env("CHARLIE_UI_SHOTS");
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const step = (what) => console.log(`  browser: ${what}`);
const problems = [];
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  page = await context.newPage();
  // The CSP allows no scripts and nothing from elsewhere: a violation shows in the console.
  // (The wrong key's 401 is a console error too, and expected.)
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused to/.test(m.text())) {
      problems.push(`console: ${m.text()}`);
    }
  });
  page.on("response", (r) => {
    if (r.status() === 404 || r.status() >= 500) problems.push(`${r.status()} for ${r.url()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  const shot = async (name) => {
    await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
    step(`screenshot ${name}.png`);
  };

  // Anything but the login page sends a stranger to it.
  await page.goto(`${ui}/runs`);
  if (!page.url().endsWith("/ui/login")) throw new Error(`not sent to the login page: ${page.url()}`);
  await page.fill("#key", "chk_0123456789abcdef_not-a-real-key");
  await page.click("button[type=submit]");
  await page.getByRole("alert").filter({ hasText: "not known" }).waitFor();
  step("a wrong key is refused on the login page");
  await shot("01-login-refused");
  await page.fill("#key", env("CHARLIE_UI_KEY"));
  await page.click("button[type=submit]");
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "charlie_session");
  if (!session || !session.httpOnly || !session.secure || session.sameSite !== "Strict") {
    throw new Error(`the session cookie is not HttpOnly, Secure and SameSite=Strict: ${JSON.stringify(session)}`);
  }
  step("signed in: the session cookie is HttpOnly, Secure, SameSite=Strict");
  await page.getByText("Rows stored per day").waitFor();
  await shot("02-overview");

  // Start a run and wait until its mail shows as sent (the page reloads by itself).
  await page.click("nav >> text=Runs");
  await page.selectOption("#start-report", env("CHARLIE_UI_REPORT"));
  await page.fill("#start-period", env("CHARLIE_UI_PERIOD"));
  await page.click("text=Start run");
  await page.getByRole("heading", { name: /^Run / }).waitFor();
  const runUrl = page.url();
  step(`run started: ${runUrl}`);
  await page.locator("td >> .status", { hasText: "sent" }).first().waitFor({ timeout: 120_000 });
  const status = (await page.locator("#run-status").innerText()).trim();
  if (!status.includes("built")) throw new Error(`the run shows ${status}, not built`);
  step(`the run shows "${status}" and its delivery "sent"`);
  await shot("03-run-sent");
  await page.click("nav >> text=Runs");
  await shot("04-runs");

  // A quarantined file's reason.
  await page.click("nav >> text=Intake");
  const quarantine = page.locator("details.quarantine").first();
  await quarantine.locator("summary").click();
  const reason = (await quarantine.locator("p.reason").innerText()).trim();
  if (!reason) throw new Error("the quarantine reason is empty");
  step(`quarantine reason opened: ${reason.slice(0, 80)}`);
  await shot("05-intake-quarantine");

  // Redrive a dead letter.
  await page.click("nav >> text=Dead letters");
  await shot("06-dead-letters");
  await page.click("a[href='/ui/dead-letters/mail']");
  const letter = page.locator("tr", { hasText: env("CHARLIE_UI_LETTER") });
  await letter.first().waitFor();
  const cause = (await letter.first().locator("td.reason").innerText()).trim();
  step(`dead letter found, cause: ${cause.slice(0, 80)}`);
  await shot("07-dead-letter-queue");
  await letter.first().getByRole("button", { name: "Redrive" }).click();
  await page.getByRole("status").filter({ hasText: "1 message(s) sent back" }).waitFor();
  step("dead letter redriven");
  await shot("08-redriven");

  await page.click("nav >> text=Reports");
  await page.getByText("Next run").first().waitFor();
  await shot("09-reports");

  // A laptop-sized screen and a narrow one still show the overview readably.
  await page.setViewportSize({ width: 800, height: 900 });
  await page.click("nav >> text=Overview");
  await shot("10-overview-narrow");

  await page.click("text=Sign out");
  await page.goto(`${ui}`);
  if (!page.url().endsWith("/ui/login")) throw new Error("signing out did not end the session");
  step("signed out: the session is gone");
  if (problems.length) throw new Error(`the browser reported problems:\n${problems.join("\n")}`);
} catch (e) {
  console.error(`browser test failed: ${e.message}`);
  if (page) {
    // What the browser had in front of it: a screenshot and the page's text.
    await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
    const text = await page.locator("main").innerText().catch(() => "");
    console.error(`at ${page.url()}:\n${text.slice(0, 2000)}`);
  }
  if (problems.length) console.error(problems.join("\n"));
  await browser.close();
  process.exit(1);
}
await browser.close();
console.log("  browser: every step passed");
