// The workspace's entry module: the agent's actions, and how the relay's answers and
// notifications change the state. The views render from the state (store.js); the socket is
// connection.js's; REST calls are api.js's.

import * as alerts from "./alerts.js";
import * as api from "./api.js";
import { Connection } from "./connection.js";
import { applyChange, conversation, state, subscribe, unread, update } from "./store.js";
import * as consumerView from "./views/consumer.js";
import * as conversationView from "./views/conversation.js";
import * as conversationsView from "./views/conversations.js";
import * as header from "./views/header.js";
import * as queueView from "./views/queue.js";
import * as signin from "./views/signin.js";

/** Conversations one socket follows at once (the relay's limit). */
const MAX_FOLLOWS = 16;
/** Events loaded at a time: on opening a conversation, and per "Earlier messages". */
const PAGE = 50;

let refreshTimer = null;
let typingSent = new Map();

const connection = new Connection({
  onOpen: subscribeAll,
  onNotification: notified,
  onStatus: (status, attempt) =>
    update((s) => {
      s.connection = status;
      s.reconnectAttempt = attempt;
    }),
  onSessionOver: (code) =>
    sessionEnded(
      code === 4410
        ? "Your session expired. Sign in again; your unsent replies are kept."
        : "Your session ended (signed out elsewhere, or your account changed). Sign in again; your unsent replies are kept.",
    ),
});

/** Sends a request; a non-200 answer is an error carrying the relay's reason. */
async function ask(type, body) {
  const answer = await connection.request(type, body);
  if (answer.code !== 200) {
    const error = new Error(typeof answer.body === "string" ? answer.body : `${type} failed (${answer.code})`);
    error.code = answer.code;
    throw error;
  }
  return answer;
}

/** Everything a fresh socket needs: the agent's state, its subscriptions, and each held
 *  conversation resumed after the last event held. */
async function subscribeAll() {
  update((s) => {
    s.rings.clear();
    s.unfollowed = 0;
    for (const c of s.conversations.values()) c.following = false;
  });
  await ask("routing.SetAgentState", { availability: state.wanted });
  await ask("routing.SubscribeAgentsState", {});
  await ask("routing.SubscribeRoutingTasks", {});
  await ask("cqm.SubscribeExConversations", { convState: ["OPEN", "CLOSE"] });
  resendPending();
}

let listing = null;

/** The relay's list of the agent's conversations (their last sequence), once per round. */
function lastSequences() {
  listing ??= api.conversations().finally(() => setTimeout(() => (listing = null), 1000));
  return listing;
}

/** Follows a held conversation: resumed after the last event held, or from its last page. */
async function follow(c) {
  if (c.following || !c.open) return;
  const followed = [...state.conversations.values()].filter((x) => x.following).length;
  if (followed >= MAX_FOLLOWS) {
    update((s) => (s.unfollowed += 1));
    return;
  }
  c.following = true;
  try {
    let from;
    if (c.highest >= 0 || c.from !== undefined) {
      from = Math.max(c.highest + 1, c.from ?? 0);
    } else {
      const list = await lastSequences();
      const found = list.conversations.find((x) => x.conversationId === c.id);
      const last = found?.lastSequence ?? -1;
      from = Math.max(0, last - PAGE + 1);
      update(() => {
        c.from = from;
        c.complete = from === 0;
      });
    }
    await ask("ms.SubscribeMessagingEvents", { dialogId: c.id, fromSeq: from });
  } catch (e) {
    c.following = false;
    if (e instanceof api.SessionEnded) sessionEnded("Your session ended. Sign in again.");
  }
  if (!c.profile) {
    api.consumer(c.id).then(
      (p) => update(() => (c.profile = p)),
      (e) => e instanceof api.SessionEnded && sessionEnded("Your session ended. Sign in again."),
    );
  }
}

function notified(type, body) {
  const changes = Array.isArray(body.changes) ? body.changes : [];
  switch (type) {
    case "ms.MessagingEventNotification":
      update(() => changes.forEach(applyChange));
      if (state.selected) markRead(state.selected);
      break;
    case "routing.routingTaskNotification":
      for (const change of changes) ringChanged(change.result ?? {});
      break;
    case "routing.agentStateNotification":
      update((s) => (s.availability = changes[0]?.result?.availability ?? s.availability));
      break;
    case "cqm.ExConversationChangeNotification":
      for (const change of changes) conversationChanged(change);
      break;
    case "brandgate.SessionExpired":
      break;
    default:
      break;
  }
}

function ringChanged(result) {
  const id = result.conversationId;
  const waiting = result.ringsDetails?.[0]?.ringState === "WAITING" && !result.taskCompleted;
  const isNew = waiting && !state.rings.has(id);
  update((s) => {
    if (waiting) {
      if (!s.rings.has(id)) s.rings.set(id, { conversationId: id, consumerId: result.consumerId, since: Date.now() });
    } else {
      s.rings.delete(id);
    }
  });
  alerts.flash(state.rings.size);
  if (isNew) alerts.ring(state.sound);
}

function conversationChanged(change) {
  const result = change.result ?? {};
  const id = result.convId;
  const details = result.conversationDetails ?? {};
  if (!id) return;
  if (change.type === "DELETE") {
    update((s) => forget(s, id));
    return;
  }
  const open = details.state === "OPEN";
  if (!open && !state.conversations.has(id)) return;
  let c;
  update(() => {
    c = conversation(id);
    c.open = open;
    c.startTs = details.startTs ?? c.startTs;
    c.consumerId = details.participants?.find((p) => p.role === "CONSUMER")?.id ?? c.consumerId;
  });
  follow(c);
}

function forget(s, id) {
  s.conversations.delete(id);
  if (s.selected === id) s.selected = null;
}

/** Messages waiting for an answer (lost connection): sent again with the same event id, so a
 *  message that did arrive is not stored twice. */
function resendPending() {
  for (const c of state.conversations.values()) {
    for (const [eventId, p] of c.pending) {
      if (p.sequence === null && !p.failed) publish(c, eventId, p.text);
    }
  }
}

async function publish(c, eventId, text) {
  try {
    const answer = await connection.request("ms.PublishEvent", {
      dialogId: c.id,
      event: { type: "ContentEvent", contentType: "text/plain", message: text, eventId },
    });
    update(() => {
      const p = c.pending.get(eventId);
      if (!p) return;
      if (answer.code === 200) p.sequence = answer.body.sequence;
      else p.failed = typeof answer.body === "string" ? answer.body : `refused (${answer.code})`;
    });
  } catch {
    // Not connected: sent again once the socket is back.
  }
}

/** Marks the selected conversation's consumer messages READ while the agent sees them. */
function markRead(id) {
  const c = state.conversations.get(id);
  if (!c || document.visibilityState !== "visible" || !connection.isOpen || unread(c) === 0) return;
  const seqs = [...c.events.values()]
    .filter((e) => e.sequence > c.readUpTo && e.event?.type === "ContentEvent" && e.originatorMetadata?.role === "CONSUMER")
    .map((e) => e.sequence)
    .sort((a, b) => a - b)
    .slice(0, 1000);
  const upTo = seqs.at(-1);
  update(() => (c.readUpTo = Math.max(c.readUpTo, upTo)));
  connection
    .request("ms.PublishEvent", {
      dialogId: c.id,
      event: { type: "AcceptStatusEvent", status: "READ", sequenceList: seqs },
    })
    .catch(() => update(() => (c.readUpTo = -1)));
}

function sessionEnded(notice) {
  connection.stop();
  clearTimeout(refreshTimer);
  api.forgetSession();
  update((s) => {
    s.session = "ended";
    s.sessionNotice = notice;
    s.connection = "offline";
    // The relay forgot the agent's state with its socket; the choice is set again on return.
    s.availability = "OFFLINE";
    s.rings.clear();
  });
}

/** Signed in: the settings, the socket, and a refresh before the session ends. */
async function start() {
  const me = await api.workspace();
  update((s) => {
    s.session = "signed-in";
    s.sessionNotice = "";
    s.account = me.account;
    s.username = me.username;
    s.expiresAt = me.expiresAt;
    s.settings = { maxMessageBytes: me.maxMessageBytes, skills: me.skills ?? [], canned: me.canned ?? [] };
  });
  scheduleRefresh();
  connection.start();
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const wait = Math.max(10000, state.expiresAt - Date.now() - 120000);
  refreshTimer = setTimeout(async () => {
    try {
      const answer = await api.refresh(state.account);
      update((s) => (s.expiresAt = answer.expiresAt));
      scheduleRefresh();
    } catch (e) {
      if (e instanceof api.SessionEnded) sessionEnded("Your session ended. Sign in again; your unsent replies are kept.");
      else refreshTimer = setTimeout(scheduleRefresh, 30000);
    }
  }, wait);
}

const actions = {
  async signIn(account, username, password) {
    await api.login(account, username, password);
    await start();
  },
  async signOut() {
    connection.stop();
    clearTimeout(refreshTimer);
    await api.logout(state.account).catch(() => {});
    update((s) => {
      s.session = "signed-out";
      s.sessionNotice = "";
      s.conversations.clear();
      s.rings.clear();
      s.drafts.clear();
      s.selected = null;
      s.wanted = "OFFLINE";
      s.availability = "OFFLINE";
    });
    alerts.flash(0);
  },
  showPasswordForm() {
    update((s) => (s.passwordFormShown = true));
  },
  setAvailability(value) {
    update((s) => (s.wanted = value));
    ask("routing.SetAgentState", { availability: value }).catch(() => {});
  },
  setSound(on) {
    update((s) => (s.sound = on));
  },
  async enableNotifications() {
    await alerts.askForNotifications();
    update(() => {});
  },
  async accept(id) {
    try {
      await ask("routing.UpdateRingState", { ringId: id, ringState: "ACCEPTED" });
      update((s) => {
        s.rings.delete(id);
        conversation(id).open = true;
        s.selected = id;
      });
      follow(conversation(id));
    } catch {
      update((s) => s.rings.delete(id));
    }
    alerts.flash(state.rings.size);
  },
  async decline(id) {
    await ask("routing.UpdateRingState", { ringId: id, ringState: "REJECTED" }).catch(() => {});
    update((s) => s.rings.delete(id));
    alerts.flash(state.rings.size);
  },
  select(id) {
    update((s) => (s.selected = id));
    markRead(id);
  },
  send(id, text) {
    const c = state.conversations.get(id);
    if (!c) return;
    const eventId = crypto.randomUUID();
    update(() => c.pending.set(eventId, { text, sequence: null, failed: null }));
    typingSent.delete(id);
    publish(c, eventId, text);
  },
  saveDraft(id, text) {
    if (text) state.drafts.set(id, text);
    else state.drafts.delete(id);
  },
  typing(id, composing) {
    const last = typingSent.get(id);
    const now = Date.now();
    if (composing && last && now - last < 3000) return;
    if (!composing && !last) return;
    if (composing) typingSent.set(id, now);
    else typingSent.delete(id);
    connection
      .request("ms.PublishEvent", {
        dialogId: id,
        event: { type: "ChatStateEvent", chatState: composing ? "COMPOSING" : "PAUSE" },
      })
      .catch(() => {});
  },
  markRead,
  async loadOlder(id) {
    const c = state.conversations.get(id);
    if (!c || c.complete) return;
    const top = Math.min(c.from ?? 0, c.lowest ?? Infinity);
    const from = Math.max(0, top - PAGE);
    try {
      const page = await api.history(id, from, top - from);
      update(() => {
        for (const e of page.events ?? []) applyChange(e);
        c.from = from;
        c.complete = from === 0;
      });
    } catch (e) {
      if (e instanceof api.SessionEnded) sessionEnded("Your session ended. Sign in again.");
    }
  },
  async transfer(id, skill) {
    const fields = [{ field: "ParticipantsChange", type: "REMOVE", role: "ASSIGNED_AGENT" }];
    if (skill) fields.push({ field: "Skill", type: "UPDATE", skill });
    await ask("cm.UpdateConversationField", { conversationId: id, conversationField: fields });
    update((s) => forget(s, id));
  },
  async close(id) {
    await ask("cm.UpdateConversationField", {
      conversationId: id,
      conversationField: [{ field: "ConversationStateField", conversationState: "CLOSE" }],
    });
    update((s) => forget(s, id));
  },
};

for (const view of [signin, header, queueView, conversationsView, conversationView, consumerView]) {
  view.mount?.(actions);
  subscribe(view.render);
}
// Waiting times and typing indicators age without events.
setInterval(() => update(() => {}), 5000);

(async () => {
  const signOnError = api.takeSignOnResult();
  const config = await api.publicConfig().catch(() => ({}));
  update((s) => {
    s.account = config.account ?? "";
    s.ssoChoices = config.sso ?? [];
    s.ssoRequired = config.passwords === false;
  });
  if (signOnError) {
    update((s) => {
      s.session = "signed-out";
      s.sessionNotice = signin.explainSignOn(signOnError);
    });
    return;
  }
  if (api.hasSession()) {
    try {
      await start();
      return;
    } catch {
      api.forgetSession();
    }
  }
  update((s) => (s.session = "signed-out"));
})();
