// The one socket to the relay (`wss://<host>/ws/agent`, authenticated by the session cookie):
// requests and their answers, notifications handed on typed, and the way back after a network
// loss. It reconnects by itself with growing, jittered waits; once open again it calls
// `onOpen`, which subscribes again and resumes each conversation from the sequence after the
// last one held, so nothing is missed and nothing shown twice. It gives up only when the relay
// says the session is over (4401, 4410). No view touches the socket.

/** Close codes that end the session rather than the connection. */
const SESSION_OVER = new Set([4401, 4410]);
/** Longest wait between reconnects. */
const MAX_WAIT_MS = 15000;
/** Longest wait for one answer. */
const ANSWER_MS = 15000;

export class Connection {
  /**
   * @param {object} hooks
   * @param {() => Promise<void>} hooks.onOpen subscribe (again) once the socket is open
   * @param {(type: string, body: object) => void} hooks.onNotification
   * @param {(status: string, attempt: number) => void} hooks.onStatus
   * @param {(code: number) => void} hooks.onSessionOver
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.socket = null;
    this.nextId = 1;
    this.waiting = new Map();
    this.attempt = 0;
    this.stopped = true;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.open();
  }

  /** Closes for good (sign-out, session over). */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000, "signed out");
    this.socket = null;
    this.failAll("the connection was closed");
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  open() {
    this.hooks.onStatus(this.attempt === 0 ? "connecting" : "reconnecting", this.attempt);
    const socket = new WebSocket(`wss://${location.host}/ws/agent`);
    this.socket = socket;
    socket.addEventListener("open", async () => {
      this.attempt = 0;
      this.hooks.onStatus("online", 0);
      try {
        await this.hooks.onOpen();
      } catch (e) {
        // A failed subscription is a broken connection: start over.
        console.warn("subscribing failed", e);
        socket.close(4000, "subscribe failed");
      }
    });
    socket.addEventListener("message", (m) => this.received(m.data));
    socket.addEventListener("close", (event) => this.closed(socket, event.code));
  }

  closed(socket, code) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.failAll("the connection was lost");
    if (this.stopped) return;
    if (SESSION_OVER.has(code)) {
      this.stopped = true;
      this.hooks.onStatus("offline", 0);
      this.hooks.onSessionOver(code);
      return;
    }
    this.attempt += 1;
    const base = Math.min(MAX_WAIT_MS, 500 * 2 ** Math.min(this.attempt - 1, 5));
    const wait = base / 2 + Math.random() * (base / 2);
    this.hooks.onStatus("reconnecting", this.attempt);
    this.timer = setTimeout(() => this.open(), wait);
  }

  received(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.kind === "resp") {
      const waiter = this.waiting.get(frame.reqId);
      if (waiter) {
        this.waiting.delete(frame.reqId);
        clearTimeout(waiter.timer);
        waiter.resolve(frame);
      }
    } else if (frame.kind === "notification") {
      this.hooks.onNotification(frame.type, frame.body ?? {});
    }
  }

  /** Sends a request; resolves with its answer (`{code, body, ...}`), rejects when the socket
   *  is not open or goes before the answer. */
  request(type, body) {
    if (!this.isOpen) return Promise.reject(new Error("not connected"));
    const id = String(this.nextId++);
    const frame = { kind: "req", id, type };
    if (body !== undefined) frame.body = body;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`no answer to ${type}`));
      }, ANSWER_MS);
      this.waiting.set(id, { resolve, reject, timer });
      this.socket.send(JSON.stringify(frame));
    });
  }

  failAll(reason) {
    for (const waiter of this.waiting.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error(reason));
    }
    this.waiting.clear();
  }
}
