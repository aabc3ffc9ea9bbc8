// The top bar: the agent's state (chosen and as the relay reports it), the connection's state
// (with a banner while reconnecting), the sound and desktop-notification switches, who is
// signed in, sign-out.

import { byId } from "../dom.js";

const NAMES = { ONLINE: "Online", AWAY: "Away", BACK_SOON: "Back soon", OFFLINE: "Offline" };
const CONNECTION = { offline: "Offline", connecting: "Connecting…", online: "Connected", reconnecting: "Reconnecting…" };

export function mount(actions) {
  byId("availability").addEventListener("change", (e) => actions.setAvailability(e.target.value));
  byId("signout").addEventListener("click", () => actions.signOut());
  byId("sound").addEventListener("change", (e) => actions.setSound(e.target.checked));
  byId("notifications").addEventListener("click", () => actions.enableNotifications());
}

export function render(state) {
  byId("app").hidden = state.session !== "signed-in" && state.session !== "ended";
  const select = byId("availability");
  if (select.value !== state.wanted) select.value = state.wanted;
  const shown = byId("availability-shown");
  shown.dataset.state = state.availability;
  shown.textContent = NAMES[state.availability] ?? state.availability;
  const connection = byId("connection");
  connection.dataset.state = state.connection;
  connection.textContent = CONNECTION[state.connection] ?? state.connection;
  byId("whoami").textContent = state.username ? `${state.username} · ${state.account}` : "";
  byId("sound").checked = state.sound;
  const notifications = byId("notifications");
  const permission = typeof Notification === "undefined" ? "unsupported" : Notification.permission;
  notifications.hidden = permission === "granted" || permission === "unsupported";
  const banner = byId("banner");
  const reconnecting = state.session === "signed-in" && state.connection === "reconnecting";
  banner.hidden = !reconnecting;
  banner.textContent = reconnecting
    ? `Connection lost. Reconnecting… (attempt ${state.reconnectAttempt}). Nothing you wrote is lost.`
    : "";
}
