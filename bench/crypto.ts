// Cost of the coordinators' post-quantum cryptography, with classical peers measured in the same
// run: ML-DSA-65 sign/verify vs Ed25519 (node:crypto, OpenSSL); the hybrid ML-KEM-768 + X25519
// handshake (both sides, incl. two ML-DSA signatures) vs an X25519-only exchange; link AEAD
// (@noble ChaCha20-Poly1305) vs OpenSSL's ChaCha20-Poly1305.
// Run: npx tsx bench/crypto.ts

import { createCipheriv, generateKeyPairSync, randomBytes, sign, verify } from "node:crypto";
import { x25519 } from "@noble/curves/ed25519.js";
import { ml_kem768 } from "@noble/post-quantum/ml-kem.js";
import {
  handshakeAccept,
  handshakeFinish,
  handshakeRespond,
  handshakeStart,
  type LinkIdentity,
} from "../src/crypto/hybrid-link.ts";
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
const signer0 = new MlDsa65Signer(0, (keys[0] as { secretKey: Uint8Array }).secretKey);
const verifier = () => new MlDsa65Verifier(keys.map((k) => k.publicKey)); // fresh: no cache hits
const msg = randomBytes(96);
const ed = generateKeyPairSync("ed25519");

const sigs: Uint8Array[] = [];
const tSign = time(60, () => sigs.push(signer0.sign(msg)));
const edSigs: Buffer[] = [];
const tEdSign = time(300, () => edSigs.push(sign(null, msg, ed.privateKey)));
row("ML-DSA-65 sign (@noble/post-quantum)", tSign, "Ed25519 sign (OpenSSL)", tEdSign);
const tVerify = time(60, (i) => verifier().verify(0, msg, sigs[i % sigs.length] as Uint8Array));
const tEdVerify = time(300, (i) =>
  verify(null, msg, ed.publicKey, edSigs[i % edSigs.length] as Buffer),
);
row("ML-DSA-65 verify", tVerify, "Ed25519 verify (OpenSSL)", tEdVerify);
const v = verifier();
v.verify(0, msg, sigs[0] as Uint8Array);
row(
  "ML-DSA-65 verify, cached (QC seen again)",
  time(300, () => v.verify(0, msg, sigs[0] as Uint8Array)),
);
row("QC of 4 ML-DSA-65 signatures, verify", 4 * tVerify, "QC of 4 Ed25519, verify", 4 * tEdVerify);

const kem = ml_kem768.keygen();
row(
  "ML-KEM-768 keygen + encaps + decaps",
  time(60, () => {
    const k = ml_kem768.keygen();
    const { cipherText } = ml_kem768.encapsulate(k.publicKey);
    ml_kem768.decapsulate(cipherText, k.secretKey);
  }),
  "X25519 keygen ×2 + DH ×2 (@noble)",
  time(60, () => {
    const a = x25519.keygen();
    const b = x25519.keygen();
    x25519.getSharedSecret(a.secretKey, b.publicKey);
    x25519.getSharedSecret(b.secretKey, a.publicKey);
  }),
);
void kem;

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
