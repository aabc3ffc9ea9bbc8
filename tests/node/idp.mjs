// A real OpenID Provider (oidc-provider) for brandgate's integration tests, with a small admin
// API the tests use to make it misbehave on purpose.
//
//   node idp.mjs --config FILE
//
// FILE is JSON:
//   { "host": "127.0.0.1",            // optional, default 127.0.0.1
//     "port": 0,                      // optional, 0 (the default) picks a free port
//     "tls": {"cert": "chain.pem", "key": "key.pem"},   // HTTPS (without it: plain HTTP)
//     "clients": [{"client_id", "client_secret", "redirect_uris", ...oidc-provider client metadata}],
//     "accounts": {"alice": {"email": "...", "customer_tier": "gold", ...}},  // optional
//     "idTokenTtl": 600,              // optional, seconds
//     "conformIdTokenClaims": false } // optional, default false: scope claims go in the ID token
//
// Unlike plain oidc-provider, which accepts client_secret_basic and client_secret_post alike
// from a client registered with either, the token endpoint here holds a client to its registered
// token_endpoint_auth_method (default client_secret_basic): the other one gets 401
// invalid_client, before the code is looked at.
//
// Any login name signs in with any password (oidc-provider's development interactions); the
// account's sub is the login name, its other claims come from "accounts". Once listening, prints
// one line of JSON to stdout, {"issuer":"https://127.0.0.1:<port>","port":<port>}, and runs until
// killed (SIGTERM/SIGINT exit 0). Errors go to stderr, with a non-zero exit status.
//
// Admin API (JSON in and out), on the same server:
//   GET  /__test/health                      200 {"ok":true}
//   POST /__test/tamper {"claims":{...},"key":"provider"|"unknown"|"rotated","header":{...}}
//        the next token response carrying an id_token has that token's claims merged with
//        "claims" (a null value removes the claim) and re-signed RS256 with the chosen key
//        (default "provider"); one-shot. "header" (optional) is merged into the JWS header.
//   POST /__test/sign {"claims":{...},"key":...,"header":{...}}  200 {"id_token":"..."}, RS256
//        with that key; iss defaults to the issuer and iat to now, nothing else is added.
//   POST /__test/rotate                      200 {"kid":"..."}: the "rotated" key's public JWK
//        is served first in the provider's JWKS from now on.
//   GET  /__test/requests                    200 {"authorization":[...],"token":[...]}: what the
//        relying party sent, oldest first: each authorization request's query parameters, and
//        for each token request its "auth_method" (client_secret_basic, client_secret_post,
//        client_assertion or none), form parameters (client_secret left out) and response status.
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import { Readable } from "node:stream";
import {
  calculateJwkThumbprint,
  decodeJwt,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  SignJWT,
} from "jose";

// stdout carries exactly one line, the ready line: oidc-provider prints its notices with
// console.info, so send console.info and console.log to stderr.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

function fail(message) {
  process.stderr.write(`idp: ${message}\n`);
  process.exit(1);
}

process.on("uncaughtException", (e) => fail(e?.stack ?? String(e)));
process.on("unhandledRejection", (e) => fail(e?.stack ?? String(e)));
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));

const argv = process.argv.slice(2);
const configIndex = argv.indexOf("--config");
if (configIndex === -1 || !argv[configIndex + 1]) fail("usage: node idp.mjs --config FILE");
let config;
try {
  config = JSON.parse(readFileSync(argv[configIndex + 1], "utf8"));
} catch (e) {
  fail(`cannot read config: ${e.message}`);
}

const host = config.host ?? "127.0.0.1";
const accounts = config.accounts ?? {};
const clients = config.clients ?? [];
if (!Array.isArray(clients)) fail("config.clients must be an array");

// Keys: "provider" signs everything the provider issues and is published; "unknown" is never
// published; "rotated" is published (first) once /__test/rotate is called.
async function makeKey(name) {
  const { privateKey } = await generateKeyPair("RS256", { extractable: true });
  const jwk = await exportJWK(privateKey);
  const thumbprint = await calculateJwkThumbprint(jwk);
  const kid = `${name}-${thumbprint.slice(0, 16)}`;
  const privateJwk = { ...jwk, kid, alg: "RS256", use: "sig" };
  const { d, p, q, dp, dq, qi, ...publicJwk } = privateJwk;
  return { name, kid, privateKey, privateJwk, publicJwk };
}
// Generated concurrently (RSA key generation runs on libuv's thread pool) and while the
// server starts listening and oidc-provider loads.
const keysReady = Promise.all(["provider", "unknown", "rotated"].map(makeKey));
const providerModule = import("oidc-provider");

// The issuer includes the port, so listen first and build the provider once the port is known.
let handler = (req, res) => {
  res.statusCode = 503;
  res.end();
};
const listener = (req, res) => handler(req, res);
let server;
if (config.tls) {
  let tlsOptions;
  try {
    tlsOptions = { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) };
  } catch (e) {
    fail(`cannot read TLS files: ${e.message}`);
  }
  server = https.createServer(tlsOptions, listener);
} else {
  server = http.createServer(listener);
}
server.on("error", (e) => fail(`server: ${e.message}`));
await new Promise((resolve) => server.listen(config.port ?? 0, host, resolve));
const { port } = server.address();
const issuer = `${config.tls ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${port}`;

const keys = Object.fromEntries((await keysReady).map((key) => [key.name, key]));
const { default: Provider } = await providerModule;

// Scope → claims. Account keys that no standard scope covers are exposed under "brand" too.
const scopeClaims = {
  openid: ["sub"],
  email: ["email", "email_verified"],
  profile: ["given_name", "family_name", "preferred_username", "name"],
  phone: ["phone_number"],
  brand: ["customer_tier", "customer_id"],
};
const covered = new Set(Object.values(scopeClaims).flat());
for (const account of Object.values(accounts)) {
  for (const claim of Object.keys(account ?? {})) {
    if (!covered.has(claim)) {
      covered.add(claim);
      scopeClaims.brand.push(claim);
    }
  }
}

const hour = 60 * 60;
const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [keys.provider.privateJwk] },
  claims: scopeClaims,
  conformIdTokenClaims: config.conformIdTokenClaims ?? false,
  // Distinct names, so that they cannot collide with brandgate's own cookies on 127.0.0.1
  // (cookies are not isolated by port). Unsigned: no companion ".sig" cookies.
  cookies: {
    names: { session: "idp_session", interaction: "idp_interaction", resume: "idp_interaction_resume" },
  },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, ...(accounts[sub] ?? {}) };
      },
    };
  },
  ttl: {
    AccessToken: hour,
    AuthorizationCode: 60,
    ClientCredentials: 10 * 60,
    DeviceCode: 10 * 60,
    BackchannelAuthenticationRequest: 10 * 60,
    IdToken: config.idTokenTtl ?? hour,
    Interaction: hour,
    RefreshToken: 24 * hour,
    Session: 24 * hour,
    Grant: 24 * hour,
  },
});

// oidc-provider validates static clients lazily: check them now, so a bad one fails start-up.
for (const client of clients) {
  let found;
  try {
    found = await provider.Client.find(String(client?.client_id));
  } catch (e) {
    fail(`invalid client ${JSON.stringify(client?.client_id)}: ${e.error_description ?? e.message}`);
  }
  if (!found) fail(`invalid client ${JSON.stringify(client?.client_id)}`);
}

for (const event of ["server_error", "authorization.error", "grant.error", "jwks.error"]) {
  provider.on(event, (ctx, err) => {
    process.stderr.write(`idp: ${event}: ${err?.error ?? ""} ${err?.error_description ?? err?.message ?? err}${err?.error_detail ? ` (${err.error_detail})` : ""}\n`);
  });
}

// Admin API and response rewriting.
let pendingTamper = null;
let rotated = false;
const requests = { authorization: [], token: [] };

function chooseKey(name) {
  const key = keys[name ?? "provider"];
  if (!key) throw Object.assign(new Error(`unknown key "${name}" (provider, unknown, rotated)`), { status: 400 });
  return key;
}

async function readRaw(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function readJson(ctx) {
  const text = (await readRaw(ctx.req)).toString("utf8").trim();
  if (!text) return {};
  try {
    const body = JSON.parse(text);
    if (body === null || typeof body !== "object" || Array.isArray(body)) throw new Error("not an object");
    return body;
  } catch (e) {
    throw Object.assign(new Error(`body is not a JSON object: ${e.message}`), { status: 400 });
  }
}

async function sign(claims, key, header = {}) {
  return new SignJWT(claims)
    .setProtectedHeader({ ...header, alg: "RS256", kid: header.kid ?? key.kid })
    .sign(key.privateKey);
}

const admin = {
  "GET /__test/health": async () => ({ ok: true }),
  "POST /__test/tamper": async (body) => {
    const key = chooseKey(body.key);
    pendingTamper = { claims: body.claims ?? {}, key, header: body.header ?? {} };
    return { ok: true, kid: key.kid };
  },
  "POST /__test/sign": async (body) => {
    const key = chooseKey(body.key);
    const claims = { iss: issuer, iat: Math.floor(Date.now() / 1000), ...(body.claims ?? {}) };
    return { id_token: await sign(claims, key, body.header ?? {}) };
  },
  "POST /__test/rotate": async () => {
    rotated = true;
    return { kid: keys.rotated.kid };
  },
  "GET /__test/requests": async () => requests,
};

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith("/__test/")) {
    const action = admin[`${ctx.method} ${ctx.path}`];
    ctx.set("cache-control", "no-store");
    if (!action) {
      ctx.status = 404;
      ctx.body = { error: `no admin route ${ctx.method} ${ctx.path}` };
      return;
    }
    try {
      const body = ctx.method === "POST" ? await readJson(ctx) : {};
      ctx.body = await action(body);
    } catch (e) {
      ctx.status = e.status ?? 500;
      ctx.body = { error: e.message };
    }
    return;
  }

  if (ctx.method === "GET" && ctx.path === "/auth") requests.authorization.push({ ...ctx.query });

  let tokenRequest;
  if (ctx.method === "POST" && ctx.path === "/token") {
    // Read the form here (and hand oidc-provider a replay of it) to log the request and to
    // hold the client to its registered authentication method.
    const raw = await readRaw(ctx.req);
    ctx.req = Readable.from([raw]);
    const params = Object.fromEntries(new URLSearchParams(raw.toString("utf8")));
    const authorization = ctx.get("authorization");
    let authMethod = "none";
    let clientId = params.client_id;
    if (/^basic /i.test(authorization)) {
      authMethod = "client_secret_basic";
      const decoded = Buffer.from(authorization.slice(6).trim(), "base64").toString("utf8");
      try {
        clientId = decodeURIComponent(decoded.split(":")[0].replace(/\+/g, "%20"));
      } catch {
        clientId = decoded.split(":")[0];
      }
    } else if (params.client_secret !== undefined) {
      authMethod = "client_secret_post";
    } else if (params.client_assertion !== undefined) {
      authMethod = "client_assertion";
    }
    delete params.client_secret;
    tokenRequest = { auth_method: authMethod, params, status: undefined };
    requests.token.push(tokenRequest);

    const secretMethods = ["client_secret_basic", "client_secret_post"];
    if (secretMethods.includes(authMethod) && clientId !== undefined) {
      const client = await provider.Client.find(String(clientId)).catch(() => undefined);
      if (client && secretMethods.includes(client.clientAuthMethod) && client.clientAuthMethod !== authMethod) {
        ctx.status = 401;
        ctx.set("cache-control", "no-store");
        if (authMethod === "client_secret_basic") ctx.set("www-authenticate", 'Basic realm="idp"');
        ctx.body = {
          error: "invalid_client",
          error_description: `client authentication failed (${authMethod} used, the client is registered for ${client.clientAuthMethod})`,
        };
        tokenRequest.status = ctx.status;
        process.stderr.write(`idp: token: ${ctx.body.error_description}\n`);
        return;
      }
    }
  }

  try {
    await next();
  } finally {
    if (tokenRequest) tokenRequest.status = ctx.status;
  }

  if (ctx.method === "POST" && ctx.path === "/token" && pendingTamper && typeof ctx.body?.id_token === "string") {
    const { claims: overrides, key, header } = pendingTamper;
    pendingTamper = null;
    const claims = { ...decodeJwt(ctx.body.id_token) };
    for (const [name, value] of Object.entries(overrides)) {
      if (value === null) delete claims[name];
      else claims[name] = value;
    }
    const { alg, kid, ...originalHeader } = decodeProtectedHeader(ctx.body.id_token);
    ctx.body = { ...ctx.body, id_token: await sign(claims, key, { ...originalHeader, ...header }) };
  }

  if (ctx.method === "GET" && ctx.path === "/jwks" && rotated && Array.isArray(ctx.body?.keys)) {
    const type = ctx.type;
    ctx.body = { keys: [keys.rotated.publicJwk, ...ctx.body.keys] };
    ctx.type = type;
  }
});

handler = provider.callback();
process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
