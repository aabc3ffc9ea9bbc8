// The agents' workspace in a real browser: Debian's Chromium, driven by playwright-core,
// against a running brandgate (started by tests/integration/workspace.rs), with test consumers
// speaking the relay's protocol over WebSocket (the `ws` package) and the brand backend minting
// their identities (POST /identity/v1/token).
//
//   node workspace-e2e.mjs --config FILE     FILE: JSON written by the Rust test:
//     { base, chromium, screenshots, brandgate, brandgateConfig, account, agents: {name: pw},
//       backend: {id, secret}, scenarios: [...] }
//
// Each scenario prints "ok <name>" or "FAILED <name>: <why>"; the exit status is 1 if any
// failed. The Rust side trusts the test CA for node (NODE_EXTRA_CA_CERTS); Chromium is told to
// ignore certificate errors (the certificate is not what is under test here).

import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import { promisify } from "node:util";
import { chromium } from "playwright-core";
import WebSocket from "ws";

const at = process.argv.indexOf("--config");
const config = JSON.parse(readFileSync(process.argv[at + 1], "utf8"));
const base = config.base; // https://localhost:<port>
const origin = new URL(base);
const WAIT = 15000;

function fail(why) {
  throw new Error(why);
}

function check(condition, why) {
  if (!condition) fail(why);
}

async function until(what, probe, limit = WAIT) {
  const end = Date.now() + limit;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > end) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// ---------------------------------------------------------------- the test consumer

/** A consumer on the relay's consumer socket: its identity from the brand backend (named, with
 *  claims) or an anonymous sign-up. */
class Consumer {
  static async named(subject, claims) {
    const auth = Buffer.from(`${config.backend.id}:${config.backend.secret}`).toString("base64");
    const answer = await fetch(`${base}/identity/v1/token`, {
      method: "POST",
      headers: { authorization: `Basic ${auth}`, "content-type": "application/json" },
      body: JSON.stringify({ subject, claims }),
    });
    check(answer.ok, `token for ${subject}: ${answer.status} ${await answer.clone().text()}`);
    return Consumer.connect((await answer.json()).jwt);
  }

  static async anonymous() {
    const answer = await fetch(`${base}/identity/v1/signup`, { method: "POST" });
    check(answer.ok, `sign-up: ${answer.status}`);
    return Consumer.connect((await answer.json()).jwt);
  }

  static async connect(jwt) {
    const c = new Consumer();
    c.jwt = jwt;
    c.frames = [];
    c.next = 1;
    c.socket = new WebSocket(`wss://${origin.host}/ws/consumer`, { headers: { authorization: `jwt ${jwt}` } });
    c.socket.on("message", (data) => c.frames.push(JSON.parse(String(data))));
    await new Promise((resolve, reject) => {
      c.socket.once("open", resolve);
      c.socket.once("error", reject);
    });
    const opened = await c.request("cm.ConsumerRequestConversation", {});
    check(opened.code === 200, `conversation: ${JSON.stringify(opened)}`);
    c.conversation = opened.body.conversationId;
    const sub = await c.request("ms.SubscribeMessagingEvents", { dialogId: c.conversation, fromSeq: 0 });
    check(sub.code === 200, `subscribe: ${JSON.stringify(sub)}`);
    return c;
  }

  async request(type, body) {
    const id = String(this.next++);
    this.socket.send(JSON.stringify({ kind: "req", id, type, body }));
    return until(`the answer to ${type}`, () => this.frames.find((f) => f.kind === "resp" && f.reqId === id));
  }

  async say(message) {
    const r = await this.request("ms.PublishEvent", {
      dialogId: this.conversation,
      event: { type: "ContentEvent", contentType: "text/plain", message },
    });
    check(r.code === 200, `say: ${JSON.stringify(r)}`);
    return r.body.sequence;
  }

  async typing() {
    await this.request("ms.PublishEvent", { dialogId: this.conversation, event: { type: "ChatStateEvent", chatState: "COMPOSING" } });
  }

  async read(sequences) {
    const r = await this.request("ms.PublishEvent", {
      dialogId: this.conversation,
      event: { type: "AcceptStatusEvent", status: "READ", sequenceList: sequences },
    });
    check(r.code === 200, `read: ${JSON.stringify(r)}`);
  }

  /** Every change received so far. */
  changes() {
    return this.frames.filter((f) => f.type === "ms.MessagingEventNotification").flatMap((f) => f.body.changes);
  }

  /** The agent's message with this text, once received. */
  agentSaid(text) {
    return until(`the consumer to receive ${JSON.stringify(text)}`, () =>
      this.changes().find((c) => c.originatorMetadata?.role === "ASSIGNED_AGENT" && c.event?.message === text),
    );
  }

  close() {
    this.socket.close(1000);
  }
}

// ---------------------------------------------------------------- the browser side

let browser;

async function agentPage(name, { signIn = true, port = null, connectionErrors = false, hash = "" } = {}) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 760 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("dialog", (d) => {
    problems.push(`a dialog opened: ${d.message()}`);
    d.dismiss();
  });
  page.on("console", (m) => {
    const text = m.text();
    // A cut connection makes the browser log each failed reconnect: expected there only.
    const expected = text.includes("Failed to load resource") || (connectionErrors && text.startsWith("WebSocket connection to"));
    if (m.type() === "error" && !expected) problems.push(`console: ${text}`);
  });
  // Every CSP violation the page reports (added by the browser, not by the page's own code).
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  const host = port ? `https://localhost:${port}` : base;
  await page.goto(`${host}/workspace/${hash}`);
  if (signIn) await signInAs(page, name);
  return { context, page, problems, name };
}

async function signInAs(page, name, password = config.agents[name]) {
  await page.waitForSelector("#signin:not([hidden])");
  await page.fill("#signin-account", config.account);
  await page.fill("#signin-username", name);
  await page.fill("#signin-password", password);
  await page.click("#signin-submit");
  await page.waitForSelector("#app:not([hidden])", { timeout: WAIT });
  await page.waitForSelector("#connection[data-state=online]", { timeout: WAIT });
}

async function goOnline(page) {
  await page.selectOption("#availability", "ONLINE");
  await page.waitForSelector("#availability-shown[data-state=ONLINE]", { timeout: WAIT });
}

async function clean(agent) {
  const violations = await agent.page.evaluate(() => window.__violations);
  check(agent.problems.length === 0, `${agent.name}: ${agent.problems.join("; ")}`);
  check(violations.length === 0, `${agent.name}: CSP violations: ${violations.join("; ")}`);
}

async function shot(page, name) {
  await page.screenshot({ path: `${config.screenshots}/${name}.png` });
}

/** The texts of the messages shown in the selected conversation, in order. */
function shownMessages(page) {
  return page.$$eval("#message-list li .text", (items) => items.map((i) => i.textContent));
}

async function accept(page, conversation) {
  const ring = `#queue li[data-conversation="${conversation}"]`;
  await page.waitForSelector(ring, { timeout: WAIT });
  await page.click(`${ring} .accept`);
  await page.waitForSelector(`#conversations li[data-conversation="${conversation}"][aria-current=true]`, { timeout: WAIT });
}

async function brandgate(...args) {
  await promisify(execFile)(config.brandgate, [...args, "--config", config.brandgateConfig, "--account", config.account]);
}

// ---------------------------------------------------------------- scenarios

const scenarios = {
  /** Sign in, go Online, be rung, accept, messages both ways, typing, receipts, who the
   *  consumer is, transfer with a skill, a second agent accepts and closes. */
  async conversation() {
    const alice = await agentPage("alice", { signIn: false });
    await shot(alice.page, "signin");
    await signInAs(alice.page, "alice");
    await goOnline(alice.page);
    const bob = await agentPage("bob");

    // Two agents Online are rung for the same conversation; the one alice takes leaves bob's
    // queue at once.
    await goOnline(bob.page);
    const raced = await Consumer.named("cust-1000", { given_name: "Race" });
    await raced.say("first come, first served");
    const racedRing = `#queue li[data-conversation="${raced.conversation}"]`;
    await bob.page.waitForSelector(racedRing, { timeout: WAIT });
    await accept(alice.page, raced.conversation);
    await bob.page.waitForSelector(racedRing, { state: "detached", timeout: WAIT });
    // In alice's list: its name, its last message, the unread count once the consumer writes
    // while she looks elsewhere, and how long the consumer waits.
    const item = `#conversations li[data-conversation="${raced.conversation}"]`;
    const text = (selector) => alice.page.textContent(selector).catch(() => "");
    await until("the name in the list", async () => (await text(`${item} .name`)) === "Race");
    await until("the last message in the list", async () => (await text(`${item} .last`)) === "first come, first served");
    await until("the waiting time in the list", async () => (await text(`${item} .waiting`)).startsWith("waiting"));
    // Declined: alice's ring goes, and she is not rung for it again.
    const declined = await Consumer.named("cust-1002", { given_name: "Declined" });
    await declined.say("anyone?");
    const declinedRing = `#queue li[data-conversation="${declined.conversation}"]`;
    await alice.page.waitForSelector(declinedRing, { timeout: WAIT });
    await alice.page.click(`${declinedRing} .decline`);
    await alice.page.waitForSelector(declinedRing, { state: "detached", timeout: WAIT });
    // bob takes it (so it does not ring anyone later).
    await accept(bob.page, declined.conversation);
    await bob.page.click("#close");
    declined.close();
    // Unread: alice takes another conversation (it is the one she looks at); the first
    // consumer writes twice meanwhile: 2 unread, until she opens it again.
    const other = await Consumer.named("cust-1003", { given_name: "Other" });
    await other.say("me too");
    await accept(alice.page, other.conversation);
    await raced.say("still there?");
    await raced.say("hello?");
    await until("the unread count", async () => (await text(`${item} .unread`)) === "2");
    await until("the newest message in the list", async () => (await text(`${item} .last`)) === "hello?");
    const order = await alice.page.$$eval("#conversations li", (items) => items.map((i) => i.dataset.conversation));
    check(order[0] === raced.conversation, "newest activity first");
    await alice.page.click(item);
    await until("the unread count to clear", async () => (await alice.page.$(`${item} .unread`)) === null);
    for (const c of [raced, other]) {
      await alice.page.click(`#conversations li[data-conversation="${c.conversation}"]`);
      await alice.page.click("#close");
      c.close();
    }
    await bob.page.selectOption("#availability", "OFFLINE");
    await bob.page.waitForSelector("#availability-shown[data-state=OFFLINE]", { timeout: WAIT });

    const consumer = await Consumer.named("cust-1001", {
      given_name: "Ada",
      family_name: "Lovelace",
      email: "ada@example.test",
      phone_number: "+44 20 7946 0000",
      customer_id: "C-1001",
      tier: "gold",
    });
    await consumer.say("Hello, my order has not arrived");
    const ring = `#queue li[data-conversation="${consumer.conversation}"]`;
    await alice.page.waitForSelector(ring, { timeout: WAIT });
    // The tab's title flashes while it rings.
    await until("the title to flash", async () => (await alice.page.title()).includes("Conversation waiting"));
    // bob is not Online: not rung.
    check((await bob.page.$(ring)) === null, "bob was rung while offline");
    await shot(alice.page, "queue");
    await accept(alice.page, consumer.conversation);
    check((await alice.page.$(ring)) === null, "the ring stayed after accepting");

    await until("the consumer's message", async () => (await shownMessages(alice.page)).includes("Hello, my order has not arrived"));
    // Who the consumer is, exactly as minted (fetched once the conversation is taken).
    await until("the consumer's identity", async () => (await alice.page.textContent("#consumer-details")).includes("Authenticated"));
    const details = await alice.page.textContent("#consumer-details");
    for (const expected of ["Authenticated", "cust-1001", "Ada", "Lovelace", "ada@example.test", "+44 20 7946 0000", "C-1001", "gold"]) {
      check(details.includes(expected), `the consumer panel lacks ${expected}: ${details}`);
    }
    check((await alice.page.textContent("#conversation-title")) === "Ada Lovelace", "the title is the consumer's name");
    // The agent saw the message: the consumer gets a READ receipt for it.
    await until("the agent's READ receipt", () =>
      consumer.changes().find((c) => c.originatorMetadata?.role === "ASSIGNED_AGENT" && c.event?.status === "READ"),
    );

    // The consumer types: shown.
    await consumer.typing();
    await alice.page.waitForSelector("#typing:not([hidden])", { timeout: WAIT });
    // The agent types (its typing reaches the consumer) and sends with Enter; Shift+Enter is a
    // new line.
    await alice.page.click("#reply");
    await alice.page.keyboard.type("Sorry to hear that!");
    await until("the agent's typing at the consumer", () =>
      consumer.changes().find((c) => c.originatorMetadata?.role === "ASSIGNED_AGENT" && c.event?.chatState === "COMPOSING"),
    );
    await alice.page.keyboard.press("Shift+Enter");
    await alice.page.keyboard.type("Let me check.");
    const size = await alice.page.textContent("#size");
    check(/^\d+ \/ \d+ bytes$/.test(size), `the size limit is shown: ${size}`);
    await alice.page.keyboard.press("Enter");
    const reply = await consumer.agentSaid("Sorry to hear that!\nLet me check.");
    check((await alice.page.inputValue("#reply")) === "", "the reply box was emptied");
    // A canned response by its shortcut.
    await alice.page.fill("#reply", "/order");
    await alice.page.press("#reply", "Tab");
    check((await alice.page.inputValue("#reply")).startsWith("Your order number"), "the canned response was inserted");
    await alice.page.fill("#reply", "");
    // The consumer reads the reply: the agent sees it marked read.
    await consumer.read([reply.sequence]);
    await alice.page.waitForSelector(`#message-list li[data-sequence="${reply.sequence}"][data-receipt=READ]`, { timeout: WAIT });
    await shot(alice.page, "conversation");

    // Transfer with a skill; bob goes Online and is rung; bob takes it and sees the history.
    await alice.page.selectOption("#transfer-skill", "billing");
    await alice.page.click("#transfer");
    await until("the conversation to leave alice", async () => (await alice.page.$(`#conversations li[data-conversation="${consumer.conversation}"]`)) === null);
    await goOnline(bob.page);
    await accept(bob.page, consumer.conversation);
    await until("the history at bob", async () => {
      const shown = await shownMessages(bob.page);
      return shown.includes("Hello, my order has not arrived") && shown.includes("Sorry to hear that!\nLet me check.");
    });
    // alice is rung no more for it (she let it go; taken by bob).
    check((await alice.page.$(ring)) === null, "alice is still rung");
    await bob.page.click("#close");
    await until("the consumer to see the close", () =>
      consumer.frames.find((f) => f.type === "ms.MessagingEventNotification") && true,
    );
    await until("the conversation to leave bob", async () => (await bob.page.$(`#conversations li[data-conversation="${consumer.conversation}"]`)) === null);
    await clean(alice);
    await clean(bob);
    consumer.close();
    await alice.context.close();
    await bob.context.close();
  },

  /** A long conversation opens at its last page; earlier messages come from the history REST,
   *  each once and in order. */
  async history() {
    const agent = await agentPage("judy");
    await goOnline(agent.page);
    const consumer = await Consumer.named("cust-history", { given_name: "Long" });
    const sent = [];
    for (let i = 0; i < 65; i += 1) {
      sent.push(`message ${i}`);
      await consumer.say(`message ${i}`);
    }
    await accept(agent.page, consumer.conversation);
    await until("the last page", async () => (await shownMessages(agent.page)).includes("message 64"));
    const first = await shownMessages(agent.page);
    check(first.length === 50 && first[0] === "message 15", `the last page: ${first.length}, from ${first[0]}`);
    check(await agent.page.isVisible("#older"), "no way to earlier messages");
    await agent.page.click("#older");
    await until("the earlier messages", async () => (await shownMessages(agent.page)).length === 65);
    check(JSON.stringify(await shownMessages(agent.page)) === JSON.stringify(sent), "not every message once, in order");
    check(!(await agent.page.isVisible("#older")), "the whole history is shown, yet more is offered");
    await clean(agent);
    consumer.close();
    await agent.context.close();
  },

  /** Hostile text in messages, the consumer's name and every lp_sdes field: shown as typed,
   *  nothing runs, no dialog, no CSP violation. */
  async xss() {
    const corpus = [
      `<img src=x onerror="window.__xss=1;alert(1)">`,
      `<script>window.__xss=2</script>`,
      `</textarea><svg onload=window.__xss=3>`,
      `javascript:window.__xss=4`,
      `"><iframe srcdoc="<script>parent.__xss=5</script>">`,
      "x".repeat(1900),
      "\u202Eevil.exe\u202C text with an RTL override",
      `<a href="javascript:window.__xss=6">click</a> and https://example.test/a?b=<c>`,
    ];
    const agent = await agentPage("carol");
    await goOnline(agent.page);
    const hostile = corpus[0];
    const consumer = await Consumer.named("cust-xss", {
      given_name: hostile,
      family_name: corpus[4],
      email: corpus[1],
      phone_number: corpus[2],
      customer_id: corpus[3],
      tier: corpus[6],
    });
    for (const text of corpus) await consumer.say(text);
    await accept(agent.page, consumer.conversation);
    await until("every message", async () => (await shownMessages(agent.page)).length >= corpus.length);
    const shown = await shownMessages(agent.page);
    for (const text of corpus) check(shown.includes(text), `not shown as typed: ${JSON.stringify(text.slice(0, 60))}`);
    await until("the consumer's identity", async () => (await agent.page.textContent("#consumer-details")).includes("Authenticated"));
    const details = await agent.page.textContent("#consumer-details");
    for (const text of [corpus[0], corpus[1], corpus[2], corpus[3], corpus[4]]) {
      check(details.includes(text), `the consumer panel does not show as typed: ${JSON.stringify(text.slice(0, 40))}`);
    }
    // A claim with a bidirectional override is never minted (the identity bridge leaves it out).
    check(!details.includes("evil.exe"), "a claim with an RTL override reached the panel");
    check((await agent.page.textContent("#conversation-title")).includes(hostile), "the name is not shown as typed");
    // Links: only http(s), opened elsewhere without referrer or opener; no javascript: link.
    const links = await agent.page.$$eval("#message-list a", (as) => as.map((a) => [a.getAttribute("href"), a.getAttribute("rel"), a.getAttribute("target")]));
    check(links.length === 1, `links: ${JSON.stringify(links)}`);
    check(links[0][0].startsWith("https://example.test/") && links[0][1] === "noopener noreferrer" && links[0][2] === "_blank", `link: ${links[0]}`);
    // The agent's own hostile reply goes out as text, too.
    await agent.page.fill("#reply", corpus[2]);
    await agent.page.press("#reply", "Enter");
    await consumer.agentSaid(corpus[2]);
    await until("the reply shown", async () => (await shownMessages(agent.page)).filter((t) => t === corpus[2]).length === 2);
    check((await agent.page.evaluate(() => window.__xss)) === undefined, "a script ran");
    check((await agent.page.$$("img, svg, iframe, script:not([src])")).length === 0, "markup from text made it into the page");
    await clean(agent);
    consumer.close();
    await agent.context.close();
  },

  /** Another site's page cannot use the agent's cookie for the socket; a REST call with the
   *  cookie but without the CSRF token is refused; the bearer never reaches the page. */
  async crossSite() {
    const agent = await agentPage("dave");
    const cookies = await agent.context.cookies();
    const session = cookies.find((c) => c.name === "__Host-brandgate_agent");
    check(session && session.httpOnly && session.secure && session.sameSite === "Strict", `cookie: ${JSON.stringify(session)}`);
    const header = `${session.name}=${session.value}`;
    const upgrade = (originHeader) =>
      new Promise((resolve) => {
        const ws = new WebSocket(`wss://${origin.host}/ws/agent`, { headers: { cookie: header, origin: originHeader } });
        ws.on("open", () => {
          ws.close();
          resolve(101);
        });
        ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
        ws.on("error", (e) => resolve(`error: ${e.message}`));
      });
    const evilUpgrade = await upgrade("https://evil.example");
    check(evilUpgrade === 403, `a cross-site origin was let in with the cookie: ${evilUpgrade}`);
    check((await upgrade(`https://${origin.host}`)) === 101, "the workspace's own origin was refused");
    // REST with the cookie: without the CSRF token refused, with it served.
    const noCsrf = await fetch(`${base}/api/v1/workspace`, { headers: { cookie: header } });
    check(noCsrf.status === 403, `no CSRF token: ${noCsrf.status}`);
    const csrf = await agent.page.evaluate(() => sessionStorage.getItem("brandgate.csrf"));
    const withCsrf = await fetch(`${base}/api/v1/workspace`, { headers: { cookie: header, "x-csrf-token": csrf } });
    check(withCsrf.status === 200, `with the CSRF token: ${withCsrf.status}`);
    // The page never held the bearer: not in storage, not in any answer it read.
    const stored = await agent.page.evaluate(() => JSON.stringify({ ...sessionStorage, ...localStorage }));
    check(!stored.includes(session.value), "the bearer is in the page's storage");
    // A cross-origin page in the browser: its socket to the relay is not the agent's.
    // (A plain page on another site, with no policy of ours in the way.)
    const site = http.createServer((_req, res) => res.end("<!doctype html><title>another site</title>"));
    await new Promise((r) => site.listen(0, "127.0.0.1", r));
    const evil = await agent.context.newPage();
    await evil.goto(`http://127.0.0.1:${site.address().port}/`);
    const outcome = await evil.evaluate(
      (host) =>
        new Promise((resolve) => {
          const ws = new WebSocket(`wss://${host}/ws/agent`);
          ws.onopen = () => resolve("open");
          ws.onclose = (e) => resolve(`closed ${e.code}`);
          setTimeout(() => resolve("no answer"), 10000);
        }),
      origin.host,
    );
    site.close();
    check(outcome.startsWith("closed"), `a page of another site got: ${outcome}`);
    await clean(agent);
    await agent.context.close();
  },

  /** The connection is cut (a TCP proxy between the browser and brandgate drops everything):
   *  the workspace shows it, reconnects by itself, and shows every message once, in order. */
  async reconnect() {
    const proxy = await Proxy.start(Number(origin.port));
    const agent = await agentPage("erin", { port: proxy.port, connectionErrors: true });
    await goOnline(agent.page);
    const consumer = await Consumer.named("cust-reconnect", { given_name: "Grace" });
    await consumer.say("before 1");
    await accept(agent.page, consumer.conversation);
    await until("the first message", async () => (await shownMessages(agent.page)).includes("before 1"));
    await agent.page.fill("#reply", "a draft kept across the cut");
    proxy.cut();
    await agent.page.waitForSelector("#banner:not([hidden])", { timeout: WAIT });
    await shot(agent.page, "reconnecting");
    for (let i = 1; i <= 5; i += 1) await consumer.say(`during ${i}`);
    proxy.resume();
    await agent.page.waitForSelector("#connection[data-state=online]", { timeout: 30000 });
    await consumer.say("after 1");
    const expected = ["before 1", "during 1", "during 2", "during 3", "during 4", "during 5", "after 1"];
    await until("every message after the cut", async () => (await shownMessages(agent.page)).length >= expected.length);
    const shown = await shownMessages(agent.page);
    check(JSON.stringify(shown) === JSON.stringify(expected), `shown: ${JSON.stringify(shown)}`);
    const sequences = await agent.page.$$eval("#message-list li", (items) => items.map((i) => Number(i.dataset.sequence)));
    check(new Set(sequences).size === sequences.length, `a sequence twice: ${sequences}`);
    check((await agent.page.inputValue("#reply")) === "a draft kept across the cut", "the draft was lost");
    check(proxy.connections > 1, "the workspace never reconnected");
    await clean(agent);
    consumer.close();
    await agent.context.close();
    proxy.close();
  },

  /** The agent is disabled with the CLI: the workspace says the session ended and asks to sign
   *  in again; the half-written reply survives the new sign-in. */
  async revoked() {
    const agent = await agentPage("frank");
    await goOnline(agent.page);
    const consumer = await Consumer.named("cust-revoked", { given_name: "Alan" });
    await consumer.say("are you there?");
    await accept(agent.page, consumer.conversation);
    await agent.page.fill("#reply", "half-written reply");
    await brandgate("agents", "disable", "--username", "frank");
    await agent.page.waitForSelector("#signin:not([hidden])", { timeout: 40000 });
    const notice = await agent.page.textContent("#signin-notice");
    check(notice.includes("session ended"), `notice: ${notice}`);
    await shot(agent.page, "session-ended");
    await brandgate("agents", "enable", "--username", "frank");
    await signInAs(agent.page, "frank");
    // frank still holds the conversation: it comes back, with the draft.
    await agent.page.click(`#conversations li[data-conversation="${consumer.conversation}"]`);
    check((await agent.page.inputValue("#reply")) === "half-written reply", "the draft did not survive");
    await agent.page.press("#reply", "Enter");
    await consumer.agentSaid("half-written reply");
    await clean(agent);
    consumer.close();
    await agent.context.close();
  },

  /** What a refused sign-in says: wrong credentials; locked, with when it lifts (only to who
   *  gives the right password). */
  async signinErrors() {
    const agent = await agentPage("grace", { signIn: false });
    const { page } = agent;
    const attempt = async (password) => {
      await page.fill("#signin-account", config.account);
      await page.fill("#signin-username", "grace");
      await page.fill("#signin-password", password);
      await page.click("#signin-submit");
      await page.waitForSelector("#signin-error:not([hidden])", { timeout: WAIT });
      const text = await page.textContent("#signin-error");
      await page.evaluate(() => {
        document.getElementById("signin-error").hidden = true;
      });
      return text;
    };
    check((await attempt("wrong-password-1")) === "Wrong username or password.", "wrong password message");
    // Three failures lock (relay.agents.max_failed_logins = 3 in this test).
    await attempt("wrong-password-2");
    await attempt("wrong-password-3");
    const locked = await attempt(config.agents.grace);
    check(locked.startsWith("This account is locked") && locked.includes("unlocks at"), `locked: ${locked}`);
    check((await attempt("wrong-password-4")) === "Wrong username or password.", "the lock was told to a wrong password");
    await clean(agent);
    await agent.context.close();
  },

  /** "Sign in with SSO": the brand's provider (oidc-provider, on another site), its login and
   *  consent pages, back in the workspace signed in and online; the address bar keeps no
   *  token. Someone the account does not let in is back at the sign-in with the reason. */
  async sso() {
    const agent = await agentPage(config.sso.login, { signIn: false });
    const atProvider = async (page, login) => {
      await page.waitForSelector("#signin-sso:not([hidden]) a", { timeout: WAIT });
      const label = await page.textContent("#signin-sso a");
      check(label === `Sign in with ${config.sso.name}`, `the button says: ${label}`);
      await shot(page, "signin-sso");
      await page.click("#signin-sso a");
      await page.waitForSelector('input[name="login"]', { timeout: WAIT });
      check(page.url().startsWith(config.sso.issuer), `at the provider: ${page.url()}`);
      await page.fill('input[name="login"]', login);
      await page.fill('input[name="password"]', "any");
      await page.click('button[type="submit"]');
      // The provider's consent page, then back to brandgate.
      await page.waitForURL((u) => u.href.startsWith(config.sso.issuer) && u.pathname.includes("interaction"), { timeout: WAIT });
      await page.click('button[type="submit"]');
    };
    const { page } = agent;
    // The account requires single sign-on: the password form (break-glass agents only) is
    // folded away until asked for.
    await page.waitForSelector("#signin-use-password:not([hidden])", { timeout: WAIT });
    check(await page.isHidden("#signin-password-fields"), "the password form is folded away");
    await shot(page, "signin-sso-required");
    await page.click("#signin-use-password");
    await page.waitForSelector("#signin-password-fields:not([hidden])", { timeout: WAIT });
    check(await page.isHidden("#signin-use-password"), "the unfold button stays after use");
    await atProvider(page, config.sso.login);
    await page.waitForSelector("#app:not([hidden])", { timeout: WAIT }).catch(async (e) => {
      const text = (await page.textContent("body").catch(() => "")) ?? "";
      fail(`not signed in at ${page.url()} [${agent.problems.join("; ")}]: ${text.slice(0, 100).replace(/\s+/g, " ")} (${e.message.split("\n")[0]})`);
    });
    await page.waitForSelector("#connection[data-state=online]", { timeout: WAIT });
    check(page.url() === `${base}/workspace/`, `the token left the address bar: ${page.url()}`);
    const who = await page.textContent("#whoami");
    check(who === `${config.sso.login} · ${config.account}`, `signed in as: ${who}`);
    await goOnline(page);
    await shot(page, "signed-in-sso");
    // A reload keeps the session (the cookie and this tab's CSRF token).
    await page.reload();
    await page.waitForSelector("#connection[data-state=online]", { timeout: WAIT });
    await page.click("#signout");
    await page.waitForSelector("#signin:not([hidden])", { timeout: WAIT });
    await clean(agent);
    await agent.context.close();

    // Someone outside the required group (in a browser of its own, with no session at the
    // provider): back at the sign-in, told why.
    const refused = await agentPage(config.sso.refusedLogin, { signIn: false });
    await atProvider(refused.page, config.sso.refusedLogin);
    await refused.page.waitForSelector("#signin-notice:not([hidden])", { timeout: WAIT });
    const notice = await refused.page.textContent("#signin-notice");
    check(
      notice === "Your account at the identity provider is not in the group allowed to work here.",
      `refusal: ${notice}`,
    );
    check(refused.page.url() === `${base}/workspace/`, `the reason left the address bar: ${refused.page.url()}`);
    // A crafted link cannot put its own words on the page: only the page's texts show.
    const crafted = await agentPage(config.sso.login, { signIn: false, hash: "#sso-error=Call+us+at+555-0100" });
    await crafted.page.waitForSelector("#signin-notice:not([hidden])", { timeout: WAIT });
    const shown = await crafted.page.textContent("#signin-notice");
    check(shown === "Single sign-on did not succeed. Please try again.", `crafted: ${shown}`);
    await clean(crafted);
    await crafted.context.close();
    await shot(refused.page, "signin-sso-refused");
    await clean(refused);
    await refused.context.close();
  },

  /** "Sign in with <name>" through the brand's SAML provider (pysaml2, on another site): its
   *  sign-in page, its answer auto-posted back to brandgate (a cross-site POST, which carries
   *  the request's SameSite=None cookie), the workspace signed in and online. Someone outside
   *  the required group is back at the sign-in, told why. */
  async saml() {
    const throughProvider = async (page, login) => {
      await page.waitForSelector("#signin-sso:not([hidden]) a", { timeout: WAIT });
      const label = await page.textContent("#signin-sso a");
      check(label === `Sign in with ${config.saml.name}`, `the button says: ${label}`);
      await page.click("#signin-sso a");
      await page.waitForSelector("#idp-user", { timeout: WAIT });
      check(page.url().startsWith(config.saml.idp), `at the provider: ${page.url()}`);
      await shot(page, "saml-provider");
      await page.fill("#idp-user", login);
      await page.click("#idp-submit");
    };
    const agent = await agentPage(config.saml.login, { signIn: false });
    const { page } = agent;
    await throughProvider(page, config.saml.login);
    await page.waitForSelector("#app:not([hidden])", { timeout: WAIT }).catch(async (e) => {
      const text = (await page.textContent("body").catch(() => "")) ?? "";
      fail(`not signed in at ${page.url()} [${agent.problems.join("; ")}]: ${text.slice(0, 100).replace(/\s+/g, " ")} (${e.message.split("\n")[0]})`);
    });
    await page.waitForSelector("#connection[data-state=online]", { timeout: WAIT });
    check(page.url() === `${base}/workspace/`, `the token left the address bar: ${page.url()}`);
    const who = await page.textContent("#whoami");
    check(who === `${config.saml.login} · ${config.account}`, `signed in as: ${who}`);
    await goOnline(page);
    await shot(page, "signed-in-saml");
    await page.reload();
    await page.waitForSelector("#connection[data-state=online]", { timeout: WAIT });
    await page.click("#signout");
    await page.waitForSelector("#signin:not([hidden])", { timeout: WAIT });
    await clean(agent);
    await agent.context.close();

    const refused = await agentPage(config.saml.refusedLogin, { signIn: false });
    await throughProvider(refused.page, config.saml.refusedLogin);
    await refused.page.waitForSelector("#signin-notice:not([hidden])", { timeout: WAIT });
    const notice = await refused.page.textContent("#signin-notice");
    check(
      notice === "Your account at the identity provider is not in the group allowed to work here.",
      `refusal: ${notice}`,
    );
    await shot(refused.page, "signin-saml-refused");
    await clean(refused);
    await refused.context.close();
  },

  /** Too many sign-ins from one address: the form says to wait. (Run on its own daemon: it
   *  blocks the address for a minute.) */
  async rateLimit() {
    const agent = await agentPage("heidi", { signIn: false });
    for (let i = 0; i < 40; i += 1) {
      const r = await fetch(`${base}/api/account/${config.account}/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ username: "nobody", password: "nothing-here" }),
      });
      if (r.status === 429) break;
    }
    await agent.page.fill("#signin-username", "heidi");
    await agent.page.fill("#signin-password", config.agents.heidi);
    await agent.page.click("#signin-submit");
    await agent.page.waitForSelector("#signin-error:not([hidden])", { timeout: WAIT });
    const text = await agent.page.textContent("#signin-error");
    check(text.startsWith("Too many sign-in attempts") && /\d+ seconds/.test(text), `rate limited: ${text}`);
    await clean(agent);
    await agent.context.close();
  },

  /** The demo page talks to an agent in the workspace. */
  async demo() {
    const agent = await agentPage("ivan");
    await goOnline(agent.page);
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const demo = await context.newPage();
    const errors = [];
    demo.on("pageerror", (e) => errors.push(e.message));
    await demo.goto(`${base}/demo/`);
    await demo.waitForSelector("#status:text('Connected')", { timeout: WAIT });
    await demo.fill("#text", "hello from the demo");
    await demo.click("#send");
    const conversation = await until("the demo's conversation", () => demo.getAttribute("#messages", "data-conversation"));
    await accept(agent.page, conversation);
    await until("the demo's message", async () => (await shownMessages(agent.page)).includes("hello from the demo"));
    await until("an anonymous consumer shown as such", async () => (await agent.page.textContent("#consumer-details")).includes("Not authenticated"));
    await agent.page.fill("#reply", "hello from the workspace");
    await agent.page.press("#reply", "Enter");
    await demo.waitForSelector("#messages li:not(.mine)", { timeout: WAIT });
    check((await demo.textContent("#messages li:not(.mine)")) === "hello from the workspace", "the demo got the reply");
    check(errors.length === 0, `demo errors: ${errors}`);
    await clean(agent);
    await context.close();
    await agent.context.close();
  },
};

/** A TCP proxy to brandgate that can cut every connection and refuse new ones for a while. */
class Proxy {
  static start(target) {
    const p = new Proxy();
    p.target = target;
    p.sockets = new Set();
    p.refusing = false;
    p.connections = 0;
    p.server = net.createServer((client) => {
      if (p.refusing) {
        client.destroy();
        return;
      }
      p.connections += 1;
      const upstream = net.connect(target, "127.0.0.1");
      client.pipe(upstream).pipe(client);
      for (const s of [client, upstream]) {
        p.sockets.add(s);
        s.on("error", () => {});
        s.on("close", () => {
          p.sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
    });
    return new Promise((resolve) => p.server.listen(0, "127.0.0.1", () => {
      p.port = p.server.address().port;
      resolve(p);
    }));
  }
  cut() {
    this.refusing = true;
    for (const s of this.sockets) s.destroy();
  }
  resume() {
    this.refusing = false;
  }
  close() {
    this.cut();
    this.server.close();
  }
}

browser = await chromium.launch({
  executablePath: config.chromium,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
  ],
});
let failed = 0;
/** Longest one scenario may take. */
const SCENARIO_MS = 120000;
for (const name of config.scenarios) {
  try {
    let timer;
    await Promise.race([
      scenarios[name](),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`did not finish within ${SCENARIO_MS / 1000} s`)), SCENARIO_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    console.log(`ok ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAILED ${name}: ${e.stack ?? e}`);
  }
}
await browser.close();
process.exit(failed ? 1 : 0);
