// Cost of the coordinators' post-quantum cryptography, with classical peers measured in the same
// run: ML-DSA-65 sign/verify per backend (PQClean native addon, PQClean WebAssembly, noble; the
// ratio is noble's time over each) and vs Ed25519 (node:crypto, OpenSSL); the hybrid ML-KEM-768 +
// X25519 handshake (both sides, incl. two ML-DSA signatures) vs an X25519-only exchange, with the
// KEM's share of it; link AEAD (@noble ChaCha20-Poly1305) vs OpenSSL's ChaCha20-Poly1305.
// Run: npx tsx bench/crypto.ts

import { createCipheriv, generateKeyPairSync, randomBytes, sign, verify } from "node:crypto";
import { x25519 } from "@noble/curves/ed25519.js";
import { ml_kem768 } from "@noble/post-quantum/ml-kem.js";
import { loadConfig } from "../src/config/load.ts";
import {
  handshakeAccept,
  handshakeFinish,
  handshakeRespond,
  handshakeStart,
  type LinkIdentity,
} from "../src/crypto/hybrid-link.ts";
import {
  defaultMlDsa65Backend,
  loadPqcleanMlDsa65,
  type MlDsa65Backend,
  nobleMlDsa65,
} from "../src/crypto/ml-dsa-backend.ts";
import { MlDsa65Signer, MlDsa65Verifier, mlDsa65Keygen } from "../src/crypto/signature.ts";

function median(samples: number[]): number {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}
function time(n: number, f: (i: number) => void): number {
  const t: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    f(i);
    t.push(performance.now() - t0);
  }
  return median(t);
}
const row = (name: string, ms: number, peerName?: string, peerMs?: number) =>
  console.log(
    `${name.padEnd(44)} ${ms.toFixed(3).padStart(8)} ms` +
      (peerName && peerMs !== undefined
        ? `   ${peerName.padEnd(30)} ${peerMs.toFixed(3).padStart(8)} ms   ratio ${(ms / peerMs).toFixed(1)}×`
        : ""),
  );

const keys = [0, 1].map((i) => mlDsa65Keygen(new Uint8Array(32).fill(i + 7)));
const msg = randomBytes(96);
const ed = generateKeyPairSync("ed25519");
const edSigs: Buffer[] = [];
const tEdSign = time(300, () => edSigs.push(sign(null, msg, ed.privateKey)));
const tEdVerify = time(300, (i) =>
  verify(null, msg, ed.publicKey, edSigs[i % edSigs.length] as Buffer),
);

const backends: MlDsa65Backend[] = [nobleMlDsa65];
for (const name of ["pqclean-wasm", "pqclean-native"] as const) {
  const r = loadPqcleanMlDsa65(name);
  if ("backend" in r) backends.push(r.backend);
  else console.log(`${name}: not measured (${r.error})`);
}
const chosen = defaultMlDsa65Backend();
console.log(`coordinators use: ${chosen.backend.name} (${chosen.reason})`);
const perBackend = new Map<string, { sign: number; verify: number }>();
for (const backend of backends) {
  const signer = new MlDsa65Signer(0, (keys[0] as { secretKey: Uint8Array }).secretKey, backend);
  const n = backend.name === "noble" ? 60 : 300;
  const sigs: Uint8Array[] = [];
  const tSign = time(n, () => sigs.push(signer.sign(msg)));
  // A fresh verifier per call: no cache hits.
  const tVerify = time(n, (i) =>
    new MlDsa65Verifier(
      keys.map((k) => k.publicKey),
      backend,
    ).verify(0, msg, sigs[i % sigs.length] as Uint8Array),
  );
  perBackend.set(backend.name, { sign: tSign, verify: tVerify });
}
const noble = perBackend.get("noble") as { sign: number; verify: number };
const speedup = (name: string, what: string, ms: number, nobleMs: number) =>
  console.log(
    `${`ML-DSA-65 ${what} (${name})`.padEnd(44)} ${ms.toFixed(3).padStart(8)} ms   ${`ML-DSA-65 ${what} (noble)`.padEnd(30)} ${nobleMs.toFixed(3).padStart(8)} ms   ${(nobleMs / ms).toFixed(1)}× faster`,
  );
for (const [name, t] of perBackend) {
  if (name === "noble") continue;
  speedup(name, "sign", t.sign, noble.sign);
  speedup(name, "verify", t.verify, noble.verify);
}
const fast = perBackend.get(chosen.backend.name) ?? noble;
row(`ML-DSA-65 sign (${chosen.backend.name})`, fast.sign, "Ed25519 sign (OpenSSL)", tEdSign);
row(
  `ML-DSA-65 verify (${chosen.backend.name})`,
  fast.verify,
  "Ed25519 verify (OpenSSL)",
  tEdVerify,
);
const v = new MlDsa65Verifier(keys.map((k) => k.publicKey));
const sig0 = new MlDsa65Signer(0, (keys[0] as { secretKey: Uint8Array }).secretKey).sign(msg);
v.verify(0, msg, sig0);
row(
  "ML-DSA-65 verify, cached (QC seen again)",
  time(300, () => v.verify(0, msg, sig0)),
);
row(
  `QC of 4 ML-DSA-65 signatures, verify (${chosen.backend.name})`,
  4 * fast.verify,
  "QC of 4 Ed25519, verify",
  4 * tEdVerify,
);
// What the five coordinators spend on signatures per block (11 signs, 39 verifies, measured in
// session 2 by counting), at each backend's cost.
for (const [name, t] of perBackend)
  console.log(
    `signature CPU per block, all 5 replicas (11 signs + 39 verifies), ${name.padEnd(15)} ${(11 * t.sign + 39 * t.verify).toFixed(1).padStart(7)} ms`,
  );

const tKem = time(60, () => {
  const k = ml_kem768.keygen();
  const { cipherText } = ml_kem768.encapsulate(k.publicKey);
  ml_kem768.decapsulate(cipherText, k.secretKey);
});
row(
  "ML-KEM-768 keygen + encaps + decaps (noble)",
  tKem,
  "X25519 keygen ×2 + DH ×2 (@noble)",
  time(60, () => {
    const a = x25519.keygen();
    const b = x25519.keygen();
    x25519.getSharedSecret(a.secretKey, b.publicKey);
    x25519.getSharedSecret(b.secretKey, a.publicKey);
  }),
);

const verifier = () => new MlDsa65Verifier(keys.map((k) => k.publicKey)); // fresh: no cache hits
const id = (i: number): LinkIdentity => ({
  selfId: i,
  signer: new MlDsa65Signer(i, (keys[i] as { secretKey: Uint8Array }).secretKey),
  verifier: verifier(),
  peers: 2,
});
const tHandshake = time(30, () => {
  const a = id(0);
  const b = id(1);
  const s = handshakeStart(a, 1, 0);
  const r = handshakeRespond(b, s.msg1);
  const f = handshakeFinish(a, s, r.msg2);
  handshakeAccept(b, r, f.msg3);
});
row("hybrid handshake, both sides (KEM+X25519+2×sign+2×verify)", tHandshake);
// Is ML-KEM on a hot path? A handshake runs once per link at start and once per link per key
// epoch (config consensus.key_epoch), never per message: 10 links among 5 coordinators.
const epochS = loadConfig(undefined).config.consensus.key_epoch.seconds;
const linksN = 10;
console.log(
  `handshakes per key epoch (${epochS} s, ${linksN} links): ${(linksN * tHandshake).toFixed(1)} ms of CPU, of which ML-KEM ${(linksN * tKem).toFixed(1)} ms = ${((100 * linksN * tKem) / (epochS * 1000)).toExponential(1)}% of one core: not a hot path, ML-KEM stays on noble`,
);

const a = id(0);
const b = id(1);
const s = handshakeStart(a, 1, 0);
const r = handshakeRespond(b, s.msg1);
const f = handshakeFinish(a, s, r.msg2);
const rx = handshakeAccept(b, r, f.msg3);
const frame = randomBytes(64 * 1024);
const tSeal = time(200, () => rx.open(f.link.seal(frame)));
const key = randomBytes(32);
const tOssl = time(200, () => {
  const c = createCipheriv("chacha20-poly1305", key, randomBytes(12), { authTagLength: 16 });
  c.update(frame);
  c.final();
  c.getAuthTag();
});
const mbps = (ms: number) => (frame.length / 1e6 / (ms / 1000)).toFixed(0);
console.log(
  `link seal+open 64 KiB (framed, OpenSSL ChaCha20-Poly1305)   ${mbps(tSeal)} MB/s   OpenSSL ChaCha20-Poly1305 seal ${mbps(tOssl)} MB/s   ratio ${(tOssl / tSeal).toFixed(2)}× (of OpenSSL's speed, seal+open vs seal only)`,
);
