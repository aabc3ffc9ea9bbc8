// "My conversations": what the agent holds, newest activity first, each with the consumer's
// name, the last message, how many of the consumer's messages are unread, and how long the
// consumer has been waiting for an answer. Updated live.

import { byId, h, replace, since } from "../dom.js";
import { consumerName, ordered, unread } from "../store.js";

let actions;

export function mount(a) {
  actions = a;
}

/** The last message, and since when the consumer waits (its last message unanswered). */
function summary(c) {
  const messages = ordered(c).filter((e) => e.event?.type === "ContentEvent");
  const last = messages.at(-1);
  const activity = last?.serverTimestamp ?? c.startTs;
  const waiting = last && last.originatorMetadata?.role === "CONSUMER" ? last.serverTimestamp : null;
  return { last, activity, waiting };
}

export function render(state) {
  const items = [...state.conversations.values()].map((c) => ({ c, ...summary(c) }));
  items.sort((a, b) => b.activity - a.activity);
  replace(
    byId("conversations"),
    ...items.map(({ c, last, waiting }) => {
      const count = unread(c);
      return h(
        "li",
        {
          "data-conversation": c.id,
          "aria-current": state.selected === c.id ? "true" : "false",
          tabindex: "0",
          onclick: () => actions.select(c.id),
          onkeydown: (e) => {
            if (e.key === "Enter") actions.select(c.id);
          },
        },
        h(
          "div",
          { class: "line1" },
          h("span", { class: "name" }, consumerName(c)),
          count > 0 ? h("span", { class: "unread", title: "unread" }, String(count)) : null,
          c.open ? null : h("span", { class: "muted" }, "closed"),
        ),
        h("div", { class: "last" }, last ? String(last.event.message) : "No messages yet"),
        waiting && c.open ? h("div", { class: "waiting" }, `waiting ${since(waiting)}`) : null,
      );
    }),
  );
  const limit = byId("follow-limit");
  limit.hidden = state.unfollowed === 0;
  limit.textContent = state.unfollowed
    ? `${state.unfollowed} more conversation(s) are not shown live (16 at a time).`
    : "";
}
