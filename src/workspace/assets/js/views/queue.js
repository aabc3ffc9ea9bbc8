// Waiting conversations that ring this agent: each with Accept and Decline. A ring another
// agent took disappears as the relay says so.

import { byId, h, replace, since } from "../dom.js";

let actions;

export function mount(a) {
  actions = a;
}

export function render(state) {
  const rings = [...state.rings.values()].sort((a, b) => a.since - b.since);
  byId("queue-count").textContent = String(rings.length);
  replace(
    byId("queue"),
    ...rings.map((ring) =>
      h(
        "li",
        { class: "ringing", "data-conversation": ring.conversationId },
        h("div", { class: "name" }, `Visitor ${String(ring.consumerId).slice(-6)}`),
        h("div", { class: "muted" }, `waiting ${since(ring.since)}`),
        h(
          "div",
          { class: "actions" },
          h("button", { type: "button", class: "primary accept", onclick: () => actions.accept(ring.conversationId) }, "Accept"),
          h("button", { type: "button", class: "decline", onclick: () => actions.decline(ring.conversationId) }, "Decline"),
        ),
      ),
    ),
  );
}
