// The sign-in form: account, username, password, and the reason it shows (the session ended
// or expired). Says clearly what went wrong: wrong credentials, a lock-out and when it lifts,
// too many attempts. Leaves room for "Sign in with SSO" when the account offers it.

import { byId, h, replace } from "../dom.js";

let busy = false;

export function mount(actions) {
  byId("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy) return;
    const account = byId("signin-account").value.trim();
    const username = byId("signin-username").value.trim();
    const password = byId("signin-password").value;
    if (!account || !username || !password) {
      show("Enter the account, your username and your password.");
      return;
    }
    busy = true;
    byId("signin-submit").disabled = true;
    show("");
    try {
      await actions.signIn(account, username, password);
      byId("signin-password").value = "";
    } catch (e) {
      show(explain(e));
    } finally {
      busy = false;
      byId("signin-submit").disabled = false;
    }
  });
}

/** What a refused sign-in means, for the agent. */
export function explain(e) {
  switch (e?.status) {
    case 401:
      return "Wrong username or password.";
    case 423: {
      const until = Number(e.body?.lockedUntil);
      const when = until ? new Date(until).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "later";
      return `This account is locked after too many failed sign-ins. It unlocks at ${when}.`;
    }
    case 429:
      return `Too many sign-in attempts from this network. Try again in ${e.retryAfter || 60} seconds.`;
    case 404:
      return "There is no such account here.";
    case 503:
      return "The service cannot check sign-ins right now. Try again shortly.";
    default:
      return "Signing in failed. Check your connection and try again.";
  }
}

function show(message) {
  const error = byId("signin-error");
  error.textContent = message;
  error.hidden = message === "";
}

export function render(state) {
  const visible = state.session === "signed-out" || state.session === "ended";
  byId("signin").hidden = !visible;
  const notice = byId("signin-notice");
  notice.textContent = state.sessionNotice;
  notice.hidden = state.sessionNotice === "";
  const account = byId("signin-account");
  if (!account.value && state.account) account.value = state.account;
  // Single sign-on choices go here when the account has them.
  const sso = byId("signin-sso");
  replace(sso, ...(state.ssoChoices ?? []).map((c) => h("a", { href: c.href }, `Sign in with ${c.name}`)));
  sso.hidden = !(state.ssoChoices ?? []).length;
}
