// A minimal consumer for trying the relay: an anonymous identity (POST /identity/v1/signup),
// the consumer socket authenticated in-band (InitConnection: browsers cannot set headers on a
// WebSocket), one conversation, its messages live, READ receipts for the agent's messages,
// typing. The identity is kept for this tab only. Text is only ever set as text.

const TOKEN_KEY = "brandgate.demo.jwt";
const byId = (id) => document.getElementById(id);
let socket = null;
let conversation = null;
let nextId = 1;
const waiting = new Map();
const seen = new Set();
let typingSent = 0;

function status(text) {
  byId("status").textContent = text;
}

async function token() {
  const kept = sessionStorage.getItem(TOKEN_KEY);
  if (kept) return kept;
  const answer = await fetch("/identity/v1/signup", { method: "POST", cache: "no-store" });
  if (!answer.ok) throw new Error(`sign-up refused (${answer.status})`);
  const { jwt } = await answer.json();
  sessionStorage.setItem(TOKEN_KEY, jwt);
  return jwt;
}

function request(type, body, headers) {
  const id = String(nextId++);
  const frame = { kind: "req", id, type };
  if (body !== undefined) frame.body = body;
  if (headers) frame.headers = headers;
  socket.send(JSON.stringify(frame));
  return new Promise((resolve) => waiting.set(id, resolve));
}

function show(change) {
  const event = change.event ?? {};
  if (event.type === "ChatStateEvent") {
    if (change.originatorMetadata?.role === "ASSIGNED_AGENT") byId("typing").hidden = event.chatState !== "COMPOSING";
    return;
  }
  if (event.type !== "ContentEvent" || seen.has(change.sequence)) return;
  seen.add(change.sequence);
  const mine = change.originatorMetadata?.role === "CONSUMER";
  const item = document.createElement("li");
  item.className = mine ? "mine" : "";
  item.dataset.sequence = String(change.sequence);
  item.textContent = event.message;
  byId("messages").append(item);
  byId("messages").scrollTop = byId("messages").scrollHeight;
  if (!mine) {
    byId("typing").hidden = true;
    request("ms.PublishEvent", {
      dialogId: conversation,
      event: { type: "AcceptStatusEvent", status: "READ", sequenceList: [change.sequence] },
    });
  }
}

async function connect() {
  const jwt = await token();
  socket = new WebSocket(`wss://${location.host}/ws/consumer`);
  socket.addEventListener("message", (m) => {
    const frame = JSON.parse(m.data);
    if (frame.kind === "resp") {
      waiting.get(frame.reqId)?.(frame);
      waiting.delete(frame.reqId);
    } else if (frame.type === "ms.MessagingEventNotification") {
      for (const change of frame.body?.changes ?? []) show(change);
    }
  });
  socket.addEventListener("close", (e) => {
    status(e.code === 4410 ? "Session expired: reload the page." : "Disconnected: reconnecting…");
    if (e.code === 4410 || e.code === 4401) sessionStorage.removeItem(TOKEN_KEY);
    setTimeout(connect, 2000);
  });
  socket.addEventListener("open", async () => {
    const auth = await request("InitConnection", undefined, [
      { type: ".ams.headers.ConsumerAuthentication", jwt },
    ]);
    if (auth.code !== 200) {
      status("Not accepted: reload the page.");
      return;
    }
    const opened = await request("cm.ConsumerRequestConversation", {});
    conversation = opened.body?.conversationId;
    byId("messages").dataset.conversation = conversation;
    await request("ms.SubscribeMessagingEvents", { dialogId: conversation, fromSeq: 0 });
    status("Connected");
  });
}

byId("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = byId("text").value;
  if (!text.trim() || !conversation) return;
  byId("text").value = "";
  const answer = await request("ms.PublishEvent", {
    dialogId: conversation,
    event: { type: "ContentEvent", contentType: "text/plain", message: text, eventId: crypto.randomUUID() },
  });
  if (answer.code !== 200) status(`Not sent: ${answer.body}`);
});

byId("text").addEventListener("input", () => {
  if (!conversation || Date.now() - typingSent < 3000) return;
  typingSent = Date.now();
  request("ms.PublishEvent", { dialogId: conversation, event: { type: "ChatStateEvent", chatState: "COMPOSING" } });
});

connect().catch((e) => status(`Cannot start: ${e.message}`));
