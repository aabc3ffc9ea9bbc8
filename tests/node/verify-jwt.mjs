// Verifies a JWT with jose (an independent JOSE implementation), against a JWKS file or a
// one-line base64 SPKI public key, and prints the verified payload and header as JSON.
//
//   node verify-jwt.mjs --token T (--jwks FILE | --pem-line FILE --alg ALG) [--issuer I] [--audience A]
//
// Exit status 0 when the token verifies, 1 otherwise (the reason on stderr).
import { readFileSync } from "node:fs";
import { createLocalJWKSet, importSPKI, jwtVerify } from "jose";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
}

try {
  let key;
  if (args.jwks) {
    key = createLocalJWKSet(JSON.parse(readFileSync(args.jwks, "utf8")));
  } else {
    const line = readFileSync(args["pem-line"], "utf8").trim();
    const pem = `-----BEGIN PUBLIC KEY-----\n${line.match(/.{1,64}/g).join("\n")}\n-----END PUBLIC KEY-----\n`;
    key = await importSPKI(pem, args.alg);
  }
  const options = {};
  if (args.issuer) options.issuer = args.issuer;
  if (args.audience) options.audience = args.audience;
  const { payload, protectedHeader } = await jwtVerify(args.token, key, options);
  process.stdout.write(JSON.stringify({ payload, header: protectedHeader }) + "\n");
} catch (e) {
  process.stderr.write(`${e.code ?? "ERR"}: ${e.message}\n`);
  process.exit(1);
}
