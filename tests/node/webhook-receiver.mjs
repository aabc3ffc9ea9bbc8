// A brand's webhook receiver for brandgate's relay tests: an independent peer that checks
// each webhook's signature as a brand's backend would (README, "Relay webhooks"): with the
// Standard Webhooks project's own library, and the earlier X-Brandgate-* headers, when present,
// with Node's crypto. Records what it received.
//
//   node webhook-receiver.mjs --config FILE
//
// FILE is JSON:
//   { "tls": {"cert": "chain.pem", "key": "key.pem"},
//     "secret": "...",             // the shared secret this receiver believes in (whsec_<base64>,
//                                  // or any other text, a raw key)
//     "answers": [503, 503],       // optional: statuses to answer, in order; then 200. An
//                                  // answer can also be {"status": 503, "retryAfter": "30"}
//     "hang": false }              // optional: never answer at all
//
// A webhook is accepted when the library verifies its webhook-id, webhook-timestamp and
// webhook-signature; one that fails gets 401 (whatever "answers" says) and is recorded with
// "signatureValid": false and the library's reason. The earlier headers, when sent, are checked
// too ("legacy": X-Brandgate-Signature is "v1=" + hex(HMAC-SHA256(secret, timestamp + "." +
// body)) for X-Brandgate-Timestamp within five minutes).
// Once listening, prints one line of JSON to stdout, {"port": <port>}, and runs until killed.
//
// Admin API (JSON), same server:
//   GET  /__test/deliveries   200 [{ "delivery" (webhook-id), "timestamp", "signatureValid",
//                                   "signatureError", "legacy" (null, or {"delivery", "event",
//                                   "timestamp", "signatureValid"}),
//                                   "status" (what it answered, null while hanging),
//                                   "receivedAt" (Unix ms),
//                                   "body" (parsed) }, ...], oldest first
//   POST /__test/script {"answers": [...], "hang": bool}   replaces the behaviour
import { createHmac, timingSafeEqual } from "node:crypto";
import { Webhook } from "standardwebhooks";
import { readFileSync } from "node:fs";
import * as https from "node:https";

function fail(message) {
  process.stderr.write(`webhook-receiver: ${message}\n`);
  process.exit(1);
}

const at = process.argv.indexOf("--config");
if (at < 0 || !process.argv[at + 1]) fail("usage: webhook-receiver.mjs --config FILE");
const config = JSON.parse(readFileSync(process.argv[at + 1], "utf8"));
if (!config.secret) fail("config: secret is required");

let answers = [...(config.answers ?? [])];
let hang = Boolean(config.hang);
const deliveries = [];
const MAX_SKEW_SECONDS = 300;

const standard = config.secret.startsWith("whsec_")
  ? new Webhook(config.secret)
  : new Webhook(config.secret, { format: "raw" });

// The library's reason when it refuses, else null.
function standardRefusal(headers, raw) {
  try {
    standard.verify(raw, headers, { jsonParse: false });
    return null;
  } catch (e) {
    return String(e.message ?? e);
  }
}

function legacySignatureValid(headers, raw) {
  const timestamp = headers["x-brandgate-timestamp"];
  const signature = headers["x-brandgate-signature"];
  if (typeof timestamp !== "string" || !/^[0-9]+$/.test(timestamp)) return false;
  if (typeof signature !== "string" || !signature.startsWith("v1=")) return false;
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > MAX_SKEW_SECONDS) return false;
  const expected = createHmac("sha256", config.secret)
    .update(`${timestamp}.`)
    .update(raw)
    .digest();
  const given = Buffer.from(signature.slice(3), "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

function json(res, status, value) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(value));
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

const server = https.createServer(
  { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) },
  async (req, res) => {
    const raw = await readBody(req);
    const path = new URL(req.url, "https://receiver").pathname;
    if (path === "/__test/deliveries" && req.method === "GET") {
      return json(res, 200, deliveries);
    }
    if (path === "/__test/script" && req.method === "POST") {
      const script = JSON.parse(raw.toString("utf8"));
      answers = [...(script.answers ?? [])];
      hang = Boolean(script.hang);
      return json(res, 200, { ok: true });
    }
    if (req.method !== "POST") return json(res, 405, { error: "POST only" });
    let body = null;
    try {
      body = JSON.parse(raw.toString("utf8"));
    } catch {
      body = null;
    }
    const refusal = standardRefusal(req.headers, raw);
    const valid = refusal === null;
    const legacy =
      req.headers["x-brandgate-signature"] === undefined
        ? null
        : {
            delivery: req.headers["x-brandgate-delivery"] ?? null,
            event: req.headers["x-brandgate-event"] ?? null,
            timestamp: req.headers["x-brandgate-timestamp"] ?? null,
            signatureValid: legacySignatureValid(req.headers, raw),
          };
    const record = {
      delivery: req.headers["webhook-id"] ?? null,
      timestamp: req.headers["webhook-timestamp"] ?? null,
      contentType: req.headers["content-type"] ?? null,
      signatureValid: valid,
      signatureError: refusal,
      legacy,
      status: null,
      receivedAt: Date.now(),
      body,
    };
    deliveries.push(record);
    if (hang) return; // Never answered: the socket stays open until brandgate gives up.
    const answer = !valid ? 401 : (answers.shift() ?? 200);
    const status = typeof answer === "number" ? answer : answer.status;
    record.status = status;
    if (answer.retryAfter !== undefined) res.setHeader("retry-after", answer.retryAfter);
    json(res, status, status < 300 ? { ok: true } : { error: "scripted" });
  },
);

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
