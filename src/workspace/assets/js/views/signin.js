// The sign-in form: account, username, password, and the reason it shows (the session ended
// or expired). Says clearly what went wrong: wrong credentials, a lock-out and when it lifts,
// too many attempts. Offers "Sign in with <name>" when the account has single sign-on, and
// folds the password form away when the account requires it (break-glass agents unfold it).

import { byId, h, replace } from "../dom.js";

let busy = false;

export function mount(actions) {
  byId("signin-use-password").addEventListener("click", () => actions.showPasswordForm());
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

/** Why a single sign-on did not succeed, by the code the relay sent back (only these texts
 *  are ever shown: the address that carries the code could have been crafted by anyone). */
const SIGN_ON_REFUSALS = {
  network_not_allowed: "This account's agents may sign in only from its allowed networks, and this network is not one of them.",
  sso_not_in_group: "Your account at the identity provider is not in the group allowed to work here.",
  unknown_username: "There is no agent with your username in this account. Ask an administrator to add you.",
  sso_no_username: "The identity provider did not give a username this account can use.",
  sso_subject_mismatch: "This agent is linked to another identity at the identity provider.",
  sso_break_glass: "This agent signs in with its password only.",
  sso_not_linked: "This agent has a password and is not set up for single sign-on. Ask an administrator.",
  disabled: "This agent is disabled.",
  locked: "This agent is locked after too many failed sign-ins.",
  sign_in_unknown: "This sign-in expired, was already used, or was started in another browser. Please start again.",
  provider_ended: "The identity provider did not complete the sign-in.",
  provider_unavailable: "The identity provider cannot be reached right now. Please try again.",
  provider_refused: "The identity provider's answer could not be accepted. Please start again.",
  sso_invalid_response: "The identity provider's answer could not be accepted. Please start again.",
  too_many_sign_ins: "Too many sign-ins from this network. Try again in a minute.",
  unavailable: "Sign-ins cannot be completed right now. Please try again.",
};

export function explainSignOn(code) {
  return SIGN_ON_REFUSALS[code] ?? "Single sign-on did not succeed. Please try again.";
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
  // An account that requires single sign-on keeps the password form for break-glass agents
  // only: folded away until asked for.
  const folded = state.ssoRequired && !state.passwordFormShown;
  byId("signin-password-fields").hidden = folded;
  byId("signin-use-password").hidden = !folded;
}
