// The one place the workspace's state lives. Views render from it and never keep their own
// copy; the connection and the REST client change it only through `update`, and every change
// is announced once to the subscribers (the views), in a microtask.

/** A conversation the agent holds, as the workspace knows it. */
export function newConversation(id) {
  return {
    id,
    consumerId: "",
    startTs: 0,
    open: true,
    skill: null,
    /** What the consumer's identity token says: {authenticated, claims}, once fetched. */
    profile: null,
    /** Stored events by sequence (content and receipts), each shown once. */
    events: new Map(),
    /** Messages sent from here not yet seen back from the relay, by their event id:
     *  {text, sequence (once acknowledged), failed (the reason)}. */
    pending: new Map(),
    /** The lowest sequence held (older ones come from the history REST). */
    lowest: null,
    /** The highest sequence received: a resumed subscription starts after it. */
    highest: -1,
    /** Whether every event from sequence 0 is held. */
    complete: false,
    /** Whether a subscription to its events was made on the current socket. */
    following: false,
    /** When the consumer last said it was typing (ms), or 0. */
    typingSince: 0,
    /** The highest consumer message the agent has marked READ. */
    readUpTo: -1,
  };
}

export const state = {
  /** "unknown" (starting), "signed-out", "signed-in", "ended" (the session ended meanwhile). */
  session: "unknown",
  /** Why the sign-in form is shown again (session ended, expired). */
  sessionNotice: "",
  /** Single sign-on choices of the account: `{name, href}`. */
  ssoChoices: [],
  /** The account requires single sign-on (passwords only for break-glass agents). */
  ssoRequired: false,
  /** The agent asked for the password form anyway. */
  passwordFormShown: false,
  account: "",
  username: "",
  expiresAt: 0,
  settings: { maxMessageBytes: 8192, skills: [], canned: [] },
  /** "offline", "connecting", "online", "reconnecting". */
  connection: "offline",
  reconnectAttempt: 0,
  /** What the agent chose, and what the relay last reported. */
  wanted: "OFFLINE",
  availability: "OFFLINE",
  /** Waiting conversations ringing this agent, by conversation id. */
  rings: new Map(),
  /** Conversations the agent holds, by id. */
  conversations: new Map(),
  selected: null,
  /** Reply drafts by conversation id: they survive a session that ends. */
  drafts: new Map(),
  sound: false,
  /** Held conversations past the per-socket follow limit. */
  unfollowed: 0,
};

const subscribers = new Set();
let announced = true;

/** Calls `render` after every change (and once now). */
export function subscribe(render) {
  subscribers.add(render);
  render(state);
}

/** Changes the state with `change(state)`, then tells the views once. */
export function update(change) {
  change(state);
  if (announced) {
    announced = false;
    queueMicrotask(() => {
      announced = true;
      for (const render of subscribers) render(state);
    });
  }
}

/** The conversation `id`, made known if it was not. */
export function conversation(id) {
  let c = state.conversations.get(id);
  if (!c) {
    c = newConversation(id);
    state.conversations.set(id, c);
  }
  return c;
}

/** Applies a relay change (`ms.MessagingEventNotification` item or a history event) to its
 *  conversation: stored events by sequence, each once; a chat state sets or clears typing. */
export function applyChange(change) {
  const c = state.conversations.get(change.dialogId);
  if (!c) return;
  const event = change.event ?? {};
  const role = change.originatorMetadata?.role;
  if (event.type === "ChatStateEvent") {
    if (role === "CONSUMER") c.typingSince = event.chatState === "COMPOSING" ? Date.now() : 0;
    return;
  }
  if (!Number.isInteger(change.sequence) || c.events.has(change.sequence)) return;
  c.events.set(change.sequence, change);
  c.highest = Math.max(c.highest, change.sequence);
  c.lowest = c.lowest === null ? change.sequence : Math.min(c.lowest, change.sequence);
  if (c.lowest === 0) c.complete = true;
  if (role === "CONSUMER" && event.type === "ContentEvent") c.typingSince = 0;
  if (role === "ASSIGNED_AGENT" && event.type === "AcceptStatusEvent" && event.status === "READ") {
    c.readUpTo = Math.max(c.readUpTo, ...event.sequenceList);
  }
  // A message sent from here is shown once: the stored one replaces its pending copy.
  for (const [id, p] of c.pending) {
    if (p.sequence === change.sequence) c.pending.delete(id);
  }
}

/** The conversation's events in order. */
export function ordered(c) {
  return [...c.events.values()].sort((a, b) => a.sequence - b.sequence);
}

/** Consumer messages after the agent's last READ. */
export function unread(c) {
  let n = 0;
  for (const e of c.events.values()) {
    if (e.sequence > c.readUpTo && e.event?.type === "ContentEvent" && e.originatorMetadata?.role === "CONSUMER") n += 1;
  }
  return n;
}

/** How the consumer's receipts mark each of the agent's messages: sequence → "ACCEPT"|"READ". */
export function receipts(c) {
  const marks = new Map();
  for (const e of ordered(c)) {
    if (e.event?.type !== "AcceptStatusEvent" || e.originatorMetadata?.role !== "CONSUMER") continue;
    for (const seq of e.event.sequenceList ?? []) {
      if (marks.get(seq) !== "READ") marks.set(seq, e.event.status);
    }
  }
  return marks;
}

/** The consumer's display name: from its identity, else "Visitor" and a short id. */
export function consumerName(c) {
  const claims = c.profile?.claims ?? {};
  const full = [claims.given_name, claims.family_name].filter((p) => typeof p === "string" && p).join(" ");
  if (c.profile?.authenticated && (full || claims.preferred_username)) return full || String(claims.preferred_username);
  return `Visitor ${String(c.consumerId).slice(-6)}`;
}
