// The relay's agent API over HTTPS: login, refresh and logout, the workspace's settings, the
// conversation list, a conversation's history and its consumer. The session is the HttpOnly
// cookie the login sets (the page never sees the bearer); every request carries the session's
// CSRF token, kept for this tab only (sessionStorage). A 401 or 403 means the session ended.

const CSRF_KEY = "brandgate.csrf";

export class SessionEnded extends Error {}

/** An answer that is not 2xx, with the relay's reason. */
export class Refused extends Error {
  constructor(status, body, headers) {
    super(body?.error ?? `HTTP ${status}`);
    this.status = status;
    this.body = body ?? {};
    this.retryAfter = Number(headers?.get("retry-after")) || 0;
  }
}

function csrf() {
  return sessionStorage.getItem(CSRF_KEY) ?? "";
}

export function hasSession() {
  return csrf() !== "";
}

export function forgetSession() {
  sessionStorage.removeItem(CSRF_KEY);
}

async function call(method, path, body) {
  const headers = { "x-csrf-token": csrf() };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = { error: text };
  }
  if (response.ok) return parsed;
  throw new Refused(response.status, parsed, response.headers);
}

/** Calls that need the session: a 401/403 becomes `SessionEnded`. */
async function session(method, path, body) {
  try {
    return await call(method, path, body);
  } catch (e) {
    if (e instanceof Refused && (e.status === 401 || e.status === 403)) {
      forgetSession();
      throw new SessionEnded(e.message);
    }
    throw e;
  }
}

/** Signs in; the cookie holds the session, the answer its CSRF token and end. */
export async function login(account, username, password) {
  const answer = await call("POST", `/api/account/${encodeURIComponent(account)}/login`, {
    username,
    password,
    cookieOnly: true,
  });
  sessionStorage.setItem(CSRF_KEY, answer.csrf);
  return answer;
}

/**
 * Takes what a single sign-on left in the address's fragment (`#csrf=...` on success,
 * `#sso-error=<code>` when refused) and removes it from the address bar and history. Returns
 * the refusal's code, or "".
 */
export function takeSignOnResult() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("csrf");
  const error = fragment.get("sso-error") ?? "";
  if (token === null && !fragment.has("sso-error")) return "";
  if (token) sessionStorage.setItem(CSRF_KEY, token);
  window.history.replaceState(null, "", location.pathname + location.search);
  return error;
}

export async function refresh(account) {
  const answer = await session("POST", `/api/account/${encodeURIComponent(account)}/refresh`);
  sessionStorage.setItem(CSRF_KEY, answer.csrf);
  return answer;
}

export async function logout(account) {
  try {
    await call("POST", `/api/account/${encodeURIComponent(account)}/logout`);
  } finally {
    forgetSession();
  }
}

export const workspace = () => session("GET", "/api/v1/workspace");
export const conversations = () => session("GET", "/api/v1/conversations");
export const consumer = (id) => session("GET", `/api/v1/conversations/${encodeURIComponent(id)}/consumer`);
export const history = (id, fromSeq, limit) =>
  session("GET", `/api/v1/conversations/${encodeURIComponent(id)}/events?fromSeq=${fromSeq}&limit=${limit}`);
export const publicConfig = () => call("GET", "/workspace/config.json");
