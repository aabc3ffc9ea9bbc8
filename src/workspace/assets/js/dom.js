// Building the page: elements from text only. Nothing here takes HTML: every string becomes
// a text node (or an attribute value), so consumer text can never become markup. The page's
// policy requires Trusted Types, so a stray innerHTML anywhere would throw instead of run.

/** An element with attributes (`class`, `data-*`, `aria-*`, ...) and children: strings become
 *  text nodes, `null`/`false` are skipped. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) {
      // Handlers are functions; an attribute string would be code.
      if (typeof value !== "function") throw new TypeError(`${name} must be a function`);
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }
}

/** Replaces an element's children. */
export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
}

/** The element with this id (the page's skeleton has them all). */
export function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no #${id}`);
  return element;
}

/** Text with its http(s) links made clickable (opening elsewhere, without the referrer and
 *  without a handle on this page); every other scheme, `javascript:` included, stays text. */
export function linkified(text) {
  const parts = [];
  const pattern = /\bhttps?:\/\/[^\s<>"']+/gi;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    parts.push(text.slice(last, match.index));
    let url = null;
    try {
      url = new URL(match[0]);
    } catch {
      url = null;
    }
    if (url && (url.protocol === "https:" || url.protocol === "http:")) {
      parts.push(h("a", { href: url.href, target: "_blank", rel: "noopener noreferrer" }, match[0]));
    } else {
      parts.push(match[0]);
    }
    last = match.index + match[0].length;
  }
  parts.push(text.slice(last));
  return parts.filter((p) => p !== "");
}

/** Bytes of `text` in UTF-8 (how the relay counts a message's size). */
export function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

/** "3 min", "1 h 5 min": how long since `millis`. */
export function since(millis, now = Date.now()) {
  const minutes = Math.max(0, Math.floor((now - millis) / 60000));
  if (minutes < 1) return "less than a minute";
  if (minutes < 60) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** A time of day, for message stamps. */
export function clock(millis) {
  return new Date(millis).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}
