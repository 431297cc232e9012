// Signatures for consensus messages, behind one interface so that the protocol never depends on a
// particular scheme.
//
// - `MlDsa65Signer` / `MlDsa65Verifier`: ML-DSA-65 (FIPS 204, https://csrc.nist.gov/pubs/fips/204/final).
//   This is what the live coordinators use. Keys come from `@noble/post-quantum` (seeded
//   KeyGen_internal); signing and verifying go through the fastest interoperable backend that loads
//   (ml-dsa-backend.ts: PQClean native ≈ 0.5 ms sign / 0.14 ms verify, noble ≈ 7.5 / 1.6 ms on the
//   project's 2-core machine). A signature is 3,309 bytes, so the protocol signs once per block /
//   vote / timeout, never per client request, and verifiers cache results.
// - `SimulationMacSigner`: HMAC-SHA-256 with a per-replica key. Only for the deterministic
//   simulator, which runs thousands of schedules and cannot afford 8.5 ms per signature. The keys
//   live inside the simulation; a replica object (honest or Byzantine) is handed only its own
//   `Signer`, and the shared `Verifier` exposes `verify` alone. So within the simulation a Byzantine
//   replica cannot produce a tag that verifies under an honest replica's id — which is exactly the
//   unforgeability property the protocol relies on from a signature. It is NOT a signature scheme:
//   a real verifier holding the keys could forge, which is why live processes use ML-DSA-65.

import { createHash, createHmac } from "node:crypto";
import { ml_dsa65 } from "@noble/post-quantum/ml-dsa.js";
import { invariant } from "../common/assert.ts";
import { defaultMlDsa65Backend, type MlDsa65Backend } from "./ml-dsa-backend.ts";

/** Signs with the one key its owner holds. */
export interface Signer {
  readonly replicaId: number;
  readonly scheme: SignatureSchemeName;
  sign(message: Uint8Array): Uint8Array;
}

/** Checks a signature claimed to come from `replicaId`. Never throws on malformed input. */
export interface Verifier {
  readonly scheme: SignatureSchemeName;
  verify(replicaId: number, message: Uint8Array, signature: Uint8Array): boolean;
}

export type SignatureSchemeName = "ml-dsa-65" | "sim-hmac-sha256";

export const mlDsa65PublicKeyBytes = 1952;
export const mlDsa65SecretKeyBytes = 4032;
export const mlDsa65SignatureBytes = 3309;
export const mlDsa65SeedBytes = 32;
/** Verified (signer, message, signature) triples remembered, so a QC seen twice is checked once. */
export const verifyCacheEntriesMax = 16_384;

export interface MlDsa65KeyPair {
  readonly publicKey: Uint8Array;
  readonly secretKey: Uint8Array;
}

/** Deterministic key generation from a 32-byte seed (FIPS 204 ML-DSA.KeyGen_internal). */
export function mlDsa65Keygen(seed: Uint8Array): MlDsa65KeyPair {
  if (!(seed instanceof Uint8Array) || seed.length !== mlDsa65SeedBytes)
    throw new RangeError(`ML-DSA-65 seed: expected ${mlDsa65SeedBytes} bytes; got ${seed?.length}`);
  const { publicKey, secretKey } = ml_dsa65.keygen(seed);
  return { publicKey, secretKey };
}

export class MlDsa65Signer implements Signer {
  readonly scheme = "ml-dsa-65" as const;
  readonly replicaId: number;
  readonly #secretKey: Uint8Array;
  readonly backend: MlDsa65Backend;

  constructor(
    replicaId: number,
    secretKey: Uint8Array,
    backend: MlDsa65Backend = defaultMlDsa65Backend().backend,
  ) {
    if (secretKey.length !== mlDsa65SecretKeyBytes)
      throw new RangeError(
        `ML-DSA-65 secret key: expected ${mlDsa65SecretKeyBytes} bytes; got ${secretKey.length}`,
      );
    this.replicaId = replicaId;
    this.#secretKey = secretKey;
    this.backend = backend;
  }

  /** Signatures made and the wall ms they took (for the coordinator's cost breakdown). */
  signs = 0;
  signMsTotal = 0;

  sign(message: Uint8Array): Uint8Array {
    // Hedged signing (fresh randomness mixed in) as FIPS 204 recommends; verification is unaffected.
    const t0 = performance.now();
    const sig = this.backend.sign(this.#secretKey, message);
    this.signMsTotal += performance.now() - t0;
    this.signs += 1;
    invariant(sig.length === mlDsa65SignatureBytes, "ML-DSA-65 signature length");
    return sig;
  }
}

export class MlDsa65Verifier implements Verifier {
  readonly scheme = "ml-dsa-65" as const;
  readonly #publicKeys: readonly Uint8Array[];
  readonly #cache = new Map<string, true>();
  readonly backend: MlDsa65Backend;
  /** Signatures checked by the backend, the wall ms that took, and checks answered by the cache. */
  verifies = 0;
  verifyMsTotal = 0;
  cacheHits = 0;

  constructor(
    publicKeys: readonly Uint8Array[],
    backend: MlDsa65Backend = defaultMlDsa65Backend().backend,
  ) {
    publicKeys.forEach((pk, i) => {
      if (pk.length !== mlDsa65PublicKeyBytes)
        throw new RangeError(
          `ML-DSA-65 public key of replica ${i}: expected ${mlDsa65PublicKeyBytes} bytes; got ${pk.length}`,
        );
    });
    this.#publicKeys = publicKeys;
    this.backend = backend;
  }

  verify(replicaId: number, message: Uint8Array, signature: Uint8Array): boolean {
    const pk = this.#publicKeys[replicaId];
    // Lengths first: the native backend throws on a wrong-size input, and this never throws.
    if (
      pk === undefined ||
      !(message instanceof Uint8Array) ||
      !(signature instanceof Uint8Array) ||
      signature.length !== mlDsa65SignatureBytes
    )
      return false;
    const key = cacheKey(replicaId, message, signature);
    if (this.#cache.has(key)) {
      this.cacheHits += 1;
      return true;
    }
    let ok = false;
    const t0 = performance.now();
    try {
      ok = this.backend.verify(pk, message, signature);
    } catch {
      ok = false;
    }
    this.verifyMsTotal += performance.now() - t0;
    this.verifies += 1;
    if (ok) remember(this.#cache, key);
    return ok;
  }
}

function cacheKey(replicaId: number, message: Uint8Array, signature: Uint8Array): string {
  const h = createHash("sha256");
  h.update(String(replicaId));
  h.update(message);
  h.update(signature);
  return h.digest("base64");
}

function remember(cache: Map<string, true>, key: string): void {
  if (cache.size >= verifyCacheEntriesMax) {
    const oldest = cache.keys().next().value;
    if (oldest !== undefined) cache.delete(oldest);
  }
  cache.set(key, true);
}

export const simulationMacBytes = 32;

/** The simulation's key holder: hands each replica its own signer and everyone a verify-only view. */
export class SimulationMacKeys {
  readonly #keys: Buffer[];

  constructor(replicas: number, simulationSecret: Uint8Array) {
    this.#keys = Array.from({ length: replicas }, (_, i) =>
      createHash("sha256")
        .update("moe-swarm/sim-mac/v1")
        .update(simulationSecret)
        .update(String(i))
        .digest(),
    );
  }

  signerFor(replicaId: number): Signer {
    const key = this.#keys[replicaId];
    if (key === undefined) throw new RangeError(`no simulated replica ${replicaId}`);
    return {
      replicaId,
      scheme: "sim-hmac-sha256",
      sign: (message) => new Uint8Array(createHmac("sha256", key).update(message).digest()),
    };
  }

  verifier(): Verifier {
    const keys = this.#keys;
    return {
      scheme: "sim-hmac-sha256",
      verify(replicaId, message, signature) {
        const key = keys[replicaId];
        if (key === undefined || signature.length !== simulationMacBytes) return false;
        const expected = createHmac("sha256", key).update(message).digest();
        return Buffer.from(signature.buffer, signature.byteOffset, signature.length).equals(
          expected,
        );
      },
    };
  }
}
