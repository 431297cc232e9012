// ML-DSA-65 backends: PQClean (native addon and WebAssembly) and noble implement the same FIPS 204
// scheme, so each verifies the others' signatures; tampering is refused by each; malformed input
// never throws out of the verifier; the choice falls back, and honours the environment variable.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  interopFailure,
  loadPqcleanMlDsa65,
  type MlDsa65Backend,
  MlDsa65BackendError,
  nobleMlDsa65,
  selectMlDsa65Backend,
} from "../../src/crypto/ml-dsa-backend.ts";
import {
  MlDsa65Signer,
  MlDsa65Verifier,
  mlDsa65Keygen,
  mlDsa65SignatureBytes,
} from "../../src/crypto/signature.ts";

const keys = [0, 1].map((i) => mlDsa65Keygen(new Uint8Array(32).fill(i + 40)));
const publicKeys = keys.map((k) => k.publicKey);
const secret = (i: number) => (keys[i] as { secretKey: Uint8Array }).secretKey;
const msg = new TextEncoder().encode("commit vote: view 3, block 9f2c");

function loaded(name: "pqclean-native" | "pqclean-wasm"): MlDsa65Backend {
  const r = loadPqcleanMlDsa65(name);
  assert.ok("backend" in r, `${name} should load in this tree: ${"error" in r ? r.error : ""}`);
  return r.backend;
}

// The native addon is compiled by `npm install` (node-gyp); the WebAssembly build ships in the
// package. Both are expected here: a missing one fails the test rather than skipping silently.
const pqBackends = [loaded("pqclean-native"), loaded("pqclean-wasm")];
const all = [nobleMlDsa65, ...pqBackends];

describe("ML-DSA-65 backends are interoperable (FIPS 204)", () => {
  for (const signerBackend of all)
    for (const verifierBackend of all)
      it(`${signerBackend.name} signature verifies under ${verifierBackend.name}; tampering refused`, () => {
        const sig = new MlDsa65Signer(0, secret(0), signerBackend).sign(msg);
        assert.equal(sig.length, mlDsa65SignatureBytes);
        // A plain Uint8Array (a Buffer would serialise differently in the consensus codec).
        assert.equal(Object.getPrototypeOf(sig), Uint8Array.prototype);
        const v = () => new MlDsa65Verifier(publicKeys, verifierBackend); // fresh: no cache
        assert.equal(v().verify(0, msg, sig), true);
        assert.equal(v().verify(1, msg, sig), false, "wrong key");
        const flipped = sig.slice();
        flipped[1234] = (flipped[1234] ?? 0) ^ 0x10;
        assert.equal(v().verify(0, msg, flipped), false, "flipped signature byte");
        const other = msg.slice();
        other[0] = (other[0] ?? 0) ^ 1;
        assert.equal(v().verify(0, other, sig), false, "tampered message");
      });

  for (const b of pqBackends)
    it(`${b.name} signs a message that is a view into a larger buffer, as codec frames are`, () => {
      const frame = new Uint8Array(msg.length + 17);
      frame.set(msg, 9);
      const view = frame.subarray(9, 9 + msg.length);
      const sig = new MlDsa65Signer(1, secret(1), b).sign(view);
      assert.equal(new MlDsa65Verifier(publicKeys, nobleMlDsa65).verify(1, msg, sig), true);
      assert.equal(new MlDsa65Verifier(publicKeys, b).verify(1, view, sig), true);
    });

  for (const b of all)
    it(`${b.name} verifier returns false, never throws, on malformed input`, () => {
      const v = new MlDsa65Verifier(publicKeys, b);
      const sig = new MlDsa65Signer(0, secret(0), b).sign(msg);
      const bad: [number, unknown, unknown][] = [
        [0, msg, sig.subarray(0, 3000)],
        [0, msg, new Uint8Array(mlDsa65SignatureBytes + 1)],
        [0, msg, new Uint8Array(0)],
        [0, msg, new Uint8Array(mlDsa65SignatureBytes)], // right length, all zeros
        [0, msg, new Uint8Array(mlDsa65SignatureBytes).fill(0xff)],
        [5, msg, sig],
        [-1, msg, sig],
        [0, "not bytes", sig],
        [0, msg, "not bytes"],
      ];
      for (const [id, m, s] of bad)
        assert.equal(v.verify(id, m as Uint8Array, s as Uint8Array), false);
    });
});

describe("ML-DSA-65 backend choice", () => {
  it("auto picks the native addon here, and says why", () => {
    const c = selectMlDsa65Backend(undefined);
    assert.equal(c.backend.name, "pqclean-native");
    assert.match(c.reason, /native addon loaded/);
  });

  it("falls back to WebAssembly, then to noble, and says why; a required one fails loudly", () => {
    const noNative = (name: "pqclean-native" | "pqclean-wasm") =>
      name === "pqclean-native"
        ? { error: "pqclean-native not loadable (no compiler)" }
        : loadPqcleanMlDsa65(name);
    const w = selectMlDsa65Backend("auto", noNative);
    assert.equal(w.backend.name, "pqclean-wasm");
    assert.match(w.reason, /no compiler/);
    const nothing = (name: string) => ({ error: `${name} missing` });
    const n = selectMlDsa65Backend(undefined, nothing);
    assert.equal(n.backend, nobleMlDsa65);
    assert.match(n.reason, /pqclean-native missing; pqclean-wasm missing/);
    // The fallback signs and verifies like the others.
    const sig = new MlDsa65Signer(0, secret(0), n.backend).sign(msg);
    assert.equal(new MlDsa65Verifier(publicKeys, pqBackends[0]).verify(0, msg, sig), true);
    assert.throws(
      () => selectMlDsa65Backend("pqclean-native", nothing),
      (e: unknown) => e instanceof MlDsa65BackendError && /npm rebuild pqclean/.test(e.message),
    );
  });

  it("honours an explicit choice and names the allowed values for a wrong one", () => {
    assert.equal(selectMlDsa65Backend("noble").backend, nobleMlDsa65);
    assert.equal(selectMlDsa65Backend("pqclean-wasm").backend.name, "pqclean-wasm");
    assert.throws(
      () => selectMlDsa65Backend("openssl"),
      (e: unknown) =>
        e instanceof MlDsa65BackendError &&
        /auto, noble, pqclean-wasm or pqclean-native/.test(e.message),
    );
  });

  it("the self-check refuses a backend that is not FIPS 204 ML-DSA-65", () => {
    const lenient: MlDsa65Backend = { ...nobleMlDsa65, verify: () => true };
    assert.match(interopFailure(lenient) ?? "", /accepts a flipped signature/);
    const foreign: MlDsa65Backend = {
      ...nobleMlDsa65,
      sign: () => new Uint8Array(mlDsa65SignatureBytes).fill(1),
    };
    assert.match(interopFailure(foreign) ?? "", /noble rejects its signature/);
    const throwing: MlDsa65Backend = {
      ...nobleMlDsa65,
      sign: () => {
        throw new Error("no addon");
      },
    };
    assert.equal(interopFailure(throwing), "no addon");
    assert.equal(interopFailure(pqBackends[0] as MlDsa65Backend), undefined);
  });

  it("a verifier over an injected backend that throws still returns false", () => {
    const broken: MlDsa65Backend = {
      ...nobleMlDsa65,
      verify: () => {
        throw new TypeError("Invalid signature size");
      },
    };
    const sig = new MlDsa65Signer(0, secret(0), nobleMlDsa65).sign(msg);
    assert.equal(new MlDsa65Verifier(publicKeys, broken).verify(0, msg, sig), false);
  });
});
