// Who computes ML-DSA-65 (FIPS 204, https://csrc.nist.gov/pubs/fips/204/final) signatures and
// verifications: PQClean's clean C implementation (https://github.com/PQClean/PQClean) through the
// `pqclean` package, as its native Node addon when that was compiled at install, else as the
// WebAssembly build the package ships; the audited pure-TypeScript `@noble/post-quantum` last.
//
// Why: signature CPU is what kept live commit latency above 3 one-way delays (issue #6). Per block
// the five coordinators make 11 signatures and 39 verifications. Measured on the project's 2-core
// machine (bench/crypto.ts, same run): noble signs in ≈ 6–7.5 ms and verifies in ≈ 1.6–2 ms;
// PQClean native in ≈ 0.4–0.5 ms and ≈ 0.14–0.15 ms (≈ 13–15× faster both); PQClean's
// WebAssembly build within a few % of native here. So the per-block signature CPU of the cluster
// falls from ≈ 145 ms to ≈ 10 ms.
//
// All implement the same standard (ML-DSA.Sign with an empty context string, hedged: fresh
// randomness is mixed into each signature, FIPS 204 §3.4), so keys and signatures are
// interchangeable: a signature made by either verifies under the other, and test/crypto checks it
// both ways. Key generation stays in noble because PQClean has no seeded KeyGen_internal; the
// coordinators derive their identity keys from 32-byte seeds (consensus/keys.ts). At load, a
// PQClean backend must reproduce that interoperability on a fixed key (its signature verified by
// noble, noble's verified by it, a flipped byte refused), or it is not used.
//
// `MOE_SWARM_ML_DSA_BACKEND` picks: unset or `auto` takes the first that loads (native, wasm,
// noble); `noble`, `pqclean-wasm` or `pqclean-native` require that one (to measure them in one
// tree) and fail loudly when it cannot load.
//
// Callers (signature.ts) check key and signature lengths before calling in: PQClean throws on a
// wrong-size key, and a never-throwing verifier is part of the `Verifier` contract.

import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { ml_dsa65 } from "@noble/post-quantum/ml-dsa.js";

export type MlDsa65BackendName = "pqclean-native" | "pqclean-wasm" | "noble";

/** One ML-DSA-65 implementation. Inputs have the FIPS 204 lengths (checked by the caller). */
export interface MlDsa65Backend {
  readonly name: MlDsa65BackendName;
  /** Hedged ML-DSA.Sign(sk, M) with an empty context; a plain Uint8Array of 3,309 bytes. */
  sign(secretKey: Uint8Array, message: Uint8Array): Uint8Array;
  /** ML-DSA.Verify(pk, M, σ) with an empty context. May throw on malformed input (callers guard). */
  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;
}

/** The environment variable that picks the backend: unset / `auto`, or one backend name. */
export const mlDsa65BackendEnvVar = "MOE_SWARM_ML_DSA_BACKEND";

const publicKeyBytes = 1952;
const secretKeyBytes = 4032;
const signatureBytes = 3309;

export const nobleMlDsa65: MlDsa65Backend = {
  name: "noble",
  sign: (secretKey, message) => ml_dsa65.sign(message, secretKey),
  verify: (publicKey, message, signature) => ml_dsa65.verify(signature, message, publicKey),
};

/**
 * The part of pqclean's `Sign` class used here, synchronous form (native: pqclean/native/
 * node_pqclean.cc; WebAssembly: pqclean/wasm/index.js). It returns signatures as Buffers.
 */
interface PqcleanSign {
  readonly signatureSize: number;
  readonly publicKeySize: number;
  readonly privateKeySize: number;
  sign(privateKey: Uint8Array, message: Uint8Array): Uint8Array;
  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;
}
type PqcleanSignConstructor = new (algorithm: string) => PqcleanSign;

/** Error raised when a backend is required (by the env variable) but cannot be used. */
export class MlDsa65BackendError extends Error {
  override readonly name = "MlDsa65BackendError";
}

/** Where each PQClean build lives inside the package (the native one is built by node-gyp). */
const pqcleanEntry = {
  "pqclean-native": ["build", "Release", "node_pqclean.node"],
  "pqclean-wasm": ["wasm", "index.js"],
} as const;

/**
 * Loads one PQClean build of ML-DSA-65 and checks it against noble on a fixed key. Returns why not
 * when it is missing, has other sizes or disagrees.
 */
export function loadPqcleanMlDsa65(
  name: keyof typeof pqcleanEntry,
): { backend: MlDsa65Backend } | { error: string } {
  let impl: PqcleanSign;
  try {
    const require = createRequire(import.meta.url);
    const root = dirname(require.resolve("pqclean/package.json"));
    const entry = require(join(root, ...pqcleanEntry[name])) as { Sign?: PqcleanSignConstructor };
    if (typeof entry.Sign !== "function") return { error: `${name} exports no Sign` };
    impl = new entry.Sign("ml-dsa-65");
  } catch (err) {
    return { error: `${name} not loadable (${(err as Error).message})` };
  }
  if (
    impl.signatureSize !== signatureBytes ||
    impl.publicKeySize !== publicKeyBytes ||
    impl.privateKeySize !== secretKeyBytes
  )
    return {
      error: `${name} ml-dsa-65 sizes ${impl.publicKeySize}/${impl.privateKeySize}/${impl.signatureSize} differ from FIPS 204's ${publicKeyBytes}/${secretKeyBytes}/${signatureBytes}`,
    };
  const backend: MlDsa65Backend = {
    name,
    sign: (secretKey, message) => {
      // A plain Uint8Array view of the Buffer: Buffer's toJSON would change how it serialises.
      const b = impl.sign(secretKey, message);
      return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    },
    verify: (publicKey, message, signature) => impl.verify(publicKey, message, signature),
  };
  const why = interopFailure(backend);
  return why === undefined ? { backend } : { error: `${name} self-check failed: ${why}` };
}

/** A known-key check that `candidate` and noble accept each other's signatures; why not, if not. */
export function interopFailure(candidate: MlDsa65Backend): string | undefined {
  try {
    const { publicKey, secretKey } = ml_dsa65.keygen(new Uint8Array(32).fill(0x5a));
    const message = new TextEncoder().encode("moe-swarm ml-dsa-65 backend self-check");
    const theirs = candidate.sign(secretKey, message);
    if (theirs.length !== signatureBytes) return `signature of ${theirs.length} bytes`;
    if (!ml_dsa65.verify(theirs, message, publicKey)) return "noble rejects its signature";
    const ours = ml_dsa65.sign(message, secretKey);
    if (!candidate.verify(publicKey, message, ours)) return "it rejects noble's signature";
    const flipped = ours.slice();
    flipped[7] = (flipped[7] ?? 0) ^ 1;
    if (candidate.verify(publicKey, message, flipped)) return "it accepts a flipped signature";
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

export interface MlDsa65BackendChoice {
  readonly backend: MlDsa65Backend;
  /** Why this one, for the coordinator's log (e.g. why the native addon was not used). */
  readonly reason: string;
}

/**
 * Picks the backend for `setting` (the env variable's value). Throws only when one is required.
 * `load` is injectable so that tests can take the fallback path in a tree where PQClean loads.
 */
export function selectMlDsa65Backend(
  setting: string | undefined,
  load: typeof loadPqcleanMlDsa65 = loadPqcleanMlDsa65,
): MlDsa65BackendChoice {
  const want = setting === undefined || setting === "" ? "auto" : setting;
  if (want === "noble") return { backend: nobleMlDsa65, reason: `${mlDsa65BackendEnvVar}=noble` };
  if (want === "pqclean-native" || want === "pqclean-wasm") {
    const loaded = load(want);
    if ("backend" in loaded)
      return { backend: loaded.backend, reason: `${mlDsa65BackendEnvVar}=${want}` };
    throw new MlDsa65BackendError(
      `${mlDsa65BackendEnvVar}=${want}: ${loaded.error}; run \`npm rebuild pqclean\` (the native build needs a C compiler) or unset the variable`,
    );
  }
  if (want !== "auto")
    throw new MlDsa65BackendError(
      `${mlDsa65BackendEnvVar}: expected auto, noble, pqclean-wasm or pqclean-native; got "${want}"`,
    );
  const native = load("pqclean-native");
  if ("backend" in native) return { backend: native.backend, reason: "native addon loaded" };
  const wasm = load("pqclean-wasm");
  if ("backend" in wasm) return { backend: wasm.backend, reason: native.error };
  return { backend: nobleMlDsa65, reason: `${native.error}; ${wasm.error}` };
}

let processChoice: MlDsa65BackendChoice | undefined;

/** The backend this process uses by default, chosen once from the environment. */
export function defaultMlDsa65Backend(): MlDsa65BackendChoice {
  processChoice ??= selectMlDsa65Backend(process.env[mlDsa65BackendEnvVar]);
  return processChoice;
}
