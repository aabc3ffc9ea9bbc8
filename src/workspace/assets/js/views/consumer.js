// Who the consumer is: what its identity token says, as the identity bridge minted it
// (logged in or anonymous, name, email, phone, and every lp_sdes customer-info and personal
// field). Every value is shown as text.

import { byId, h, replace } from "../dom.js";

const LABELS = {
  given_name: "First name",
  family_name: "Last name",
  preferred_username: "Username",
  email: "Email",
  phone_number: "Phone",
  gender: "Gender",
};

/** Rows for a JSON value: nested objects and arrays flattened to dotted keys. */
function rows(prefix, value, out) {
  if (value !== null && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) rows(prefix ? `${prefix}.${k}` : k, v, out);
  } else {
    out.push([prefix, String(value)]);
  }
  return out;
}

function list(pairs) {
  return h("dl", {}, ...pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export function render(state) {
  const target = byId("consumer-details");
  const c = state.selected ? state.conversations.get(state.selected) : null;
  if (!c) {
    replace(target, h("p", { class: "muted" }, "No conversation selected."));
    return;
  }
  if (!c.profile) {
    replace(target, h("p", { class: "muted" }, "Loading…"));
    return;
  }
  const claims = c.profile.claims ?? {};
  const top = Object.entries(LABELS)
    .filter(([k]) => claims[k] !== undefined)
    .map(([k, label]) => [label, String(claims[k])]);
  const sdes = Array.isArray(claims.lp_sdes) ? claims.lp_sdes : [];
  const sections = sdes.map((entry) => {
    const body = entry?.type === "ctmrinfo" ? entry.info : entry?.type === "personal" ? entry.personal : entry;
    const title = entry?.type === "ctmrinfo" ? "Customer info" : entry?.type === "personal" ? "Personal info" : "Other";
    return [h("h3", {}, title), list(rows("", body, []))];
  });
  replace(
    target,
    h(
      "span",
      { class: c.profile.authenticated ? "badge authenticated" : "badge anonymous" },
      c.profile.authenticated ? "Authenticated" : "Not authenticated",
    ),
    list([["Consumer id", String(c.consumerId)], ...top]),
    ...sections.flat(),
  );
}
