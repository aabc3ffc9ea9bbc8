// The selected conversation: its messages in order (older ones on request, from the history
// REST), the consumer's typing, receipts on the agent's messages (sent, accepted ✓, read ✓✓),
// the reply box (Enter sends, Shift+Enter is a new line, the size limit shown as one types,
// "/shortcut" + Tab inserts a canned response), and Transfer and Close.
//
// The reply box is never rebuilt: a draft survives every re-render, a lost connection and a
// session that ends. Messages are only ever set as text.

import { byId, clock, h, linkified, replace, utf8Length } from "../dom.js";
import { consumerName, ordered, receipts } from "../store.js";

let actions;
let shown = null;
let typingStopped = null;

export function mount(a) {
  actions = a;
  const reply = byId("reply");
  reply.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    } else if (e.key === "Tab" && !e.shiftKey) {
      if (expandCanned()) e.preventDefault();
    }
  });
  reply.addEventListener("input", () => {
    if (!shown) return;
    actions.saveDraft(shown, reply.value);
    sizeShown();
    if (reply.value !== "") {
      actions.typing(shown, true);
      clearTimeout(typingStopped);
      const id = shown;
      typingStopped = setTimeout(() => actions.typing(id, false), 5000);
    }
  });
  byId("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  byId("canned").addEventListener("change", (e) => {
    const text = e.target.value;
    e.target.value = "";
    if (text) insert(text);
  });
  byId("older").addEventListener("click", () => shown && actions.loadOlder(shown));
  byId("close").addEventListener("click", () => shown && actions.close(shown));
  byId("transfer").addEventListener("click", () => {
    if (!shown) return;
    const skill = byId("transfer-skill");
    actions.transfer(shown, skill.hidden ? null : skill.value || null);
  });
  byId("messages").addEventListener("scroll", () => shown && actions.markRead(shown));
  document.addEventListener("visibilitychange", () => shown && actions.markRead(shown));
}

let maxBytes = 8192;
let canned = [];

function sizeShown() {
  const bytes = utf8Length(byId("reply").value);
  const size = byId("size");
  size.textContent = `${bytes} / ${maxBytes} bytes`;
  size.classList.toggle("over", bytes > maxBytes);
  byId("send").disabled = bytes === 0 || bytes > maxBytes;
}

function submit() {
  const reply = byId("reply");
  const text = reply.value;
  if (!shown || text.trim() === "" || utf8Length(text) > maxBytes) return;
  clearTimeout(typingStopped);
  actions.send(shown, text);
  reply.value = "";
  actions.saveDraft(shown, "");
  sizeShown();
}

/** "/shortcut" just before the cursor becomes its canned text. */
function expandCanned() {
  const reply = byId("reply");
  const before = reply.value.slice(0, reply.selectionStart);
  const match = before.match(/(^|\s)(\/[\w-]+)$/);
  const found = match && canned.find((c) => c.shortcut === match[2]);
  if (!found) return false;
  const start = reply.selectionStart - match[2].length;
  reply.value = reply.value.slice(0, start) + found.text + reply.value.slice(reply.selectionStart);
  reply.selectionStart = reply.selectionEnd = start + found.text.length;
  reply.dispatchEvent(new Event("input"));
  return true;
}

function insert(text) {
  const reply = byId("reply");
  const at = reply.selectionStart ?? reply.value.length;
  reply.value = reply.value.slice(0, at) + text + reply.value.slice(at);
  reply.focus();
  reply.dispatchEvent(new Event("input"));
}

function message(e, mine, mark) {
  const event = e.event;
  const label = mine ? (mark === "READ" ? "✓✓ read" : mark === "ACCEPT" ? "✓ delivered" : "sent") : "";
  return h(
    "li",
    {
      class: mine ? "message mine" : "message",
      "data-sequence": String(e.sequence),
      "data-receipt": mine ? (mark ?? "SENT") : null,
    },
    h("span", { class: "text" }, ...linkified(String(event.message))),
    h("span", { class: "meta" }, [clock(e.serverTimestamp), label].filter(Boolean).join(" · ")),
  );
}

export function render(state) {
  maxBytes = state.settings.maxMessageBytes;
  if (canned !== state.settings.canned) {
    canned = state.settings.canned;
    replace(
      byId("canned"),
      h("option", { value: "" }, "Canned responses…"),
      ...canned.map((c) => h("option", { value: c.text }, `${c.shortcut} — ${c.text.slice(0, 40)}`)),
    );
    byId("canned").hidden = canned.length === 0;
  }
  const skills = byId("transfer-skill");
  if (skills.options.length !== state.settings.skills.length + 1) {
    replace(
      skills,
      h("option", { value: "" }, "Same skill"),
      ...state.settings.skills.map((s) => h("option", { value: s }, s)),
    );
  }
  skills.hidden = state.settings.skills.length === 0;

  const c = state.selected ? state.conversations.get(state.selected) : null;
  byId("conversation-empty").hidden = c !== null && c !== undefined;
  byId("conversation-view").hidden = !c;
  if (!c) {
    shown = null;
    return;
  }
  const reply = byId("reply");
  if (shown !== c.id) {
    shown = c.id;
    reply.value = state.drafts.get(c.id) ?? "";
  }
  byId("conversation-title").textContent = consumerName(c);
  byId("older").hidden = c.complete;
  const marks = receipts(c);
  const items = ordered(c)
    .filter((e) => e.event?.type === "ContentEvent")
    .map((e) => message(e, e.originatorMetadata?.role === "ASSIGNED_AGENT", marks.get(e.sequence)));
  for (const [id, p] of c.pending) {
    if (p.sequence !== null && c.events.has(p.sequence)) continue;
    items.push(
      h(
        "li",
        { class: p.failed ? "message mine failed" : "message mine pending", "data-event-id": id },
        h("span", { class: "text" }, p.text),
        h("span", { class: "meta" }, p.failed ? `not sent: ${p.failed}` : "sending…"),
      ),
    );
  }
  const box = byId("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const list = byId("message-list");
  const before = list.childElementCount;
  replace(list, ...items);
  if (atBottom || before === 0) box.scrollTop = box.scrollHeight;
  byId("typing").hidden = !(c.typingSince && Date.now() - c.typingSince < 10000);
  reply.disabled = !c.open;
  byId("transfer").disabled = !c.open;
  byId("close").disabled = !c.open;
  sizeShown();
}
