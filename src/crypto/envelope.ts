// Envelope encryption for the cold checkpoint tier — the honest realisation of the spec's
// "homomorphic_seal" (nothing here computes on ciphertexts; it only keeps them confidential and
// tamper-evident). Each checkpoint gets a fresh random 256-bit data key; blocks are sealed with
// AES-256-GCM under it (96-bit random nonces, the block's identity as associated data, so a block
// cannot be swapped for another). The data key itself is wrapped for the operator's ML-KEM-768
// public key (FIPS 203): encapsulate → shared secret → HKDF-SHA-256 → key-encryption key →
// AES-256-GCM over the data key. Only the holder of the operator's secret key can unwrap it.
// A wrong secret key is caught before any block is touched: the envelope names the fingerprint of
// the public key it was made for, and ML-KEM's implicit rejection plus the GCM tag catch the rest.
// References: NIST FIPS 203 (ML-KEM), NIST SP 800-38D (GCM), RFC 5869 (HKDF).

import { gcm } from "@noble/ciphers/aes.js";
import { hkdf } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { randomBytes } from "@noble/hashes/utils.js";
import { ml_kem768 } from "@noble/post-quantum/ml-kem.js";

export const dataKeyBytes = 32;
export const nonceBytes = 12;
export const gcmTagBytes = 16;
const kekInfo = new TextEncoder().encode("moe-swarm checkpoint envelope v1");

export class EnvelopeError extends Error {
  readonly code: "wrong-key" | "tampered" | "bad-key-file";
  constructor(code: "wrong-key" | "tampered" | "bad-key-file", message: string) {
    super(message);
    this.name = "EnvelopeError";
    this.code = code;
  }
}

export interface OperatorKeyPair {
  readonly publicKey: Uint8Array;
  readonly secretKey: Uint8Array;
}

/** A data key wrapped for one operator public key; safe to store beside the data. */
export interface WrappedKey {
  /** SHA-256 of the operator public key, hex: says which key can open this envelope. */
  readonly recipient: string;
  readonly kemCiphertext: Uint8Array;
  readonly nonce: Uint8Array;
  /** AES-256-GCM(kek, dataKey), tag included. */
  readonly sealedKey: Uint8Array;
}

export function generateOperatorKeyPair(seed?: Uint8Array): OperatorKeyPair {
  const { publicKey, secretKey } = ml_kem768.keygen(seed);
  return { publicKey, secretKey };
}

export function keyFingerprint(publicKey: Uint8Array): string {
  return Buffer.from(sha256(publicKey)).toString("hex");
}

/** The public key embedded in an ML-KEM-768 secret key (FIPS 203: dk = dk_pke ‖ ek ‖ H(ek) ‖ z). */
export function publicKeyOfSecret(secretKey: Uint8Array): Uint8Array {
  const { secretKey: skBytes, publicKey: pkBytes } = ml_kem768.lengths as {
    secretKey: number;
    publicKey: number;
  };
  if (secretKey.length !== skBytes) {
    throw new EnvelopeError(
      "bad-key-file",
      `ML-KEM-768 secret key: expected ${skBytes} bytes; got ${secretKey.length}`,
    );
  }
  const start = 384 * 3; // dk_pke of ML-KEM-768 (k = 3)
  return secretKey.slice(start, start + pkBytes);
}

function kekFrom(sharedSecret: Uint8Array, recipient: string): Uint8Array {
  return hkdf(sha256, sharedSecret, new TextEncoder().encode(recipient), kekInfo, dataKeyBytes);
}

/** A fresh random data key and its envelope for `publicKey`. */
export function newDataKey(publicKey: Uint8Array): { dataKey: Uint8Array; wrapped: WrappedKey } {
  const dataKey = randomBytes(dataKeyBytes);
  const recipient = keyFingerprint(publicKey);
  const { cipherText, sharedSecret } = ml_kem768.encapsulate(publicKey);
  const nonce = randomBytes(nonceBytes);
  const sealedKey = gcm(kekFrom(sharedSecret, recipient), nonce).encrypt(dataKey);
  return { dataKey, wrapped: { recipient, kemCiphertext: cipherText, nonce, sealedKey } };
}

/** Unwraps a data key; throws EnvelopeError("wrong-key") when `secretKey` is not the recipient's. */
export function openDataKey(wrapped: WrappedKey, secretKey: Uint8Array): Uint8Array {
  const holder = keyFingerprint(publicKeyOfSecret(secretKey));
  if (holder !== wrapped.recipient) {
    throw new EnvelopeError(
      "wrong-key",
      `wrong operator key: this checkpoint was sealed for key ${wrapped.recipient.slice(0, 16)}…, the key given is ${holder.slice(0, 16)}…; pass the matching --key file`,
    );
  }
  const sharedSecret = ml_kem768.decapsulate(wrapped.kemCiphertext, secretKey);
  try {
    return gcm(kekFrom(sharedSecret, wrapped.recipient), wrapped.nonce).decrypt(wrapped.sealedKey);
  } catch {
    throw new EnvelopeError(
      "tampered",
      "the wrapped data key fails authentication (envelope corrupt or key mismatch)",
    );
  }
}

export function sealBlock(
  dataKey: Uint8Array,
  plaintext: Uint8Array,
  associatedData: Uint8Array,
): { nonce: Uint8Array; ciphertext: Uint8Array } {
  const nonce = randomBytes(nonceBytes);
  return { nonce, ciphertext: gcm(dataKey, nonce, associatedData).encrypt(plaintext) };
}

export function openBlock(
  dataKey: Uint8Array,
  nonce: Uint8Array,
  ciphertext: Uint8Array,
  associatedData: Uint8Array,
): Uint8Array {
  try {
    return gcm(dataKey, nonce, associatedData).decrypt(ciphertext);
  } catch {
    throw new EnvelopeError("tampered", "block ciphertext fails AES-GCM authentication");
  }
}

/** Serialises a wrapped key as JSON (hex fields) for a key file. */
export function encodeWrappedKey(w: WrappedKey): Uint8Array {
  const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
  return new TextEncoder().encode(
    JSON.stringify({
      v: 1,
      recipient: w.recipient,
      kem: hex(w.kemCiphertext),
      nonce: hex(w.nonce),
      key: hex(w.sealedKey),
    }),
  );
}

export function decodeWrappedKey(bytes: Uint8Array, source: string): WrappedKey {
  try {
    const j = JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;
    const field = (k: string) => {
      const v = j[k];
      if (typeof v !== "string" || !/^[0-9a-f]*$/.test(v)) throw new Error(`field ${k} is not hex`);
      return v;
    };
    if (j.v !== 1) throw new Error(`version ${String(j.v)}`);
    return {
      recipient: field("recipient"),
      kemCiphertext: Buffer.from(field("kem"), "hex"),
      nonce: Buffer.from(field("nonce"), "hex"),
      sealedKey: Buffer.from(field("key"), "hex"),
    };
  } catch (err) {
    throw new EnvelopeError(
      "bad-key-file",
      `${source}: not a wrapped data key (${(err as Error).message})`,
    );
  }
}

/** Operator key files: the raw ML-KEM-768 key bytes, hex, one per file ("secret" or "public"). */
export function encodeOperatorKey(kind: "secret" | "public", key: Uint8Array): string {
  return `moe-swarm ml-kem-768 ${kind} ${Buffer.from(key).toString("hex")}\n`;
}

export function decodeOperatorKey(
  text: string,
  source: string,
): { kind: "secret" | "public"; key: Uint8Array } {
  const m = /^moe-swarm ml-kem-768 (secret|public) ([0-9a-f]+)\s*$/.exec(text);
  if (!m)
    throw new EnvelopeError(
      "bad-key-file",
      `${source}: not a moe-swarm ML-KEM-768 key file (make one with \`moe-swarm checkpoint keygen\`)`,
    );
  const kind = m[1] as "secret" | "public";
  const key = Buffer.from(m[2] as string, "hex");
  const want = (ml_kem768.lengths as { secretKey: number; publicKey: number })[
    kind === "secret" ? "secretKey" : "publicKey"
  ];
  if (key.length !== want)
    throw new EnvelopeError(
      "bad-key-file",
      `${source}: ${kind} key of ${key.length} bytes, expected ${want}`,
    );
  return { kind, key: new Uint8Array(key) };
}
