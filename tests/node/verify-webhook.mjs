// Verifies one webhook as a brand's receiver would, with the Standard Webhooks project's own
// library (npm `standardwebhooks`), not brandgate's code.
//
//   node verify-webhook.mjs < REQUEST
//
// REQUEST is JSON: {"secret": "...", "headers": {"webhook-id": ..., ...}, "body": "<raw body>"}.
// A secret that starts with "whsec_" is read as the standard writes secrets (base64 after the
// prefix); any other is given to the library as a raw key. Prints {"ok": true} or
// {"ok": false, "error": "..."} and exits 0 either way.
import { Webhook } from "standardwebhooks";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const webhook = request.secret.startsWith("whsec_")
  ? new Webhook(request.secret)
  : new Webhook(request.secret, { format: "raw" });
try {
  webhook.verify(request.body, request.headers);
  process.stdout.write(JSON.stringify({ ok: true }) + "\n");
} catch (e) {
  process.stdout.write(JSON.stringify({ ok: false, error: String(e.message ?? e) }) + "\n");
}
