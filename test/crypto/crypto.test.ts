// ML-DSA-65 signatures, the simulation MAC signer, and the hybrid ML-KEM-768 + X25519 link.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  handshakeAccept,
  handshakeFinish,
  handshakeRespond,
  handshakeStart,
  type LinkCipher,
  LinkError,
  type LinkIdentity,
} from "../../src/crypto/hybrid-link.ts";
import {
  MlDsa65Signer,
  MlDsa65Verifier,
  mlDsa65Keygen,
  mlDsa65SignatureBytes,
  SimulationMacKeys,
} from "../../src/crypto/signature.ts";

const keys = [0, 1, 2].map((i) => mlDsa65Keygen(new Uint8Array(32).fill(i + 1)));
const verifier = new MlDsa65Verifier(keys.map((k) => k.publicKey));
const signer = (i: number) =>
  new MlDsa65Signer(i, (keys[i] as { secretKey: Uint8Array }).secretKey);
const msg = new TextEncoder().encode("vote for block 42");

describe("ML-DSA-65 signatures", () => {
  it("verifies its own signature and rejects tampering, truncation and the wrong signer", () => {
    const sig = signer(0).sign(msg);
    assert.equal(sig.length, mlDsa65SignatureBytes);
    assert.equal(verifier.verify(0, msg, sig), true);
    assert.equal(verifier.verify(1, msg, sig), false, "not replica 1's signature");
    const flipped = sig.slice();
    flipped[100] = (flipped[100] ?? 0) ^ 1;
    assert.equal(verifier.verify(0, msg, flipped), false);
    assert.equal(verifier.verify(0, msg, sig.subarray(0, 3000)), false);
    assert.equal(verifier.verify(0, new TextEncoder().encode("vote for block 43"), sig), false);
    assert.equal(verifier.verify(7, msg, sig), false, "unknown replica");
  });

  it("refuses keys of the wrong size with a message naming the size", () => {
    assert.throws(() => new MlDsa65Signer(0, new Uint8Array(10)), /4032 bytes; got 10/);
    assert.throws(() => mlDsa65Keygen(new Uint8Array(31)), /32 bytes; got 31/);
  });
});

describe("simulation MAC signer", () => {
  it("gives each replica only its own key: no replica can produce another's tag", () => {
    const k = new SimulationMacKeys(5, new Uint8Array([1, 2, 3]));
    const v = k.verifier();
    const byz = k.signerFor(4);
    const tag = byz.sign(msg);
    assert.equal(v.verify(4, msg, tag), true);
    for (let honest = 0; honest < 4; honest++) assert.equal(v.verify(honest, msg, tag), false);
    assert.equal(v.verify(4, msg, tag.subarray(1)), false);
  });
});

function identity(i: number): LinkIdentity {
  return { selfId: i, signer: signer(i), verifier, peers: 3 };
}

function connect(a: number, b: number, epoch = 0): { ab: LinkCipher; ba: LinkCipher } {
  const start = handshakeStart(identity(a), b, epoch);
  const resp = handshakeRespond(identity(b), start.msg1);
  const fin = handshakeFinish(identity(a), start, resp.msg2);
  const ba = handshakeAccept(identity(b), resp, fin.msg3);
  return { ab: fin.link, ba };
}

describe("hybrid ML-KEM-768 + X25519 link", () => {
  it("establishes a mutually authenticated link and carries frames both ways", () => {
    const { ab, ba } = connect(0, 1);
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(ba.open(ab.seal(msg)), msg);
      assert.deepEqual(ab.open(ba.seal(new Uint8Array([i]))), new Uint8Array([i]));
    }
  });

  it("rejects a responder that does not hold the expected identity key", () => {
    const start = handshakeStart(identity(0), 1, 0);
    // Replica 2 answers a handshake addressed to 1, signing with its own key.
    const impostor = { ...identity(2), selfId: 1 };
    const resp = handshakeRespond(impostor, start.msg1);
    assert.throws(
      () => handshakeFinish(identity(0), start, resp.msg2),
      (e: unknown) => e instanceof LinkError && e.reason === "bad-signature",
    );
  });

  it("rejects an initiator that does not hold the claimed identity key, and tampered messages", () => {
    const start = handshakeStart({ ...identity(2), selfId: 0 }, 1, 0); // claims to be 0, signs as 2
    const resp = handshakeRespond(identity(1), start.msg1);
    const fin = handshakeFinish({ ...identity(2), selfId: 0, verifier }, start, resp.msg2);
    assert.throws(() => handshakeAccept(identity(1), resp, fin.msg3), /bad-signature/);

    const s2 = handshakeStart(identity(0), 1, 0);
    const r2 = handshakeRespond(identity(1), s2.msg1);
    const tampered = r2.msg2.slice();
    tampered[10] = (tampered[10] ?? 0) ^ 0xff; // the responder's X25519 share
    assert.throws(() => handshakeFinish(identity(0), s2, tampered), /bad-signature/);
    assert.throws(() => handshakeRespond(identity(1), s2.msg1.subarray(0, 100)), /malformed/);
    assert.throws(() => handshakeRespond(identity(2), s2.msg1), /wrong-peer/);
  });

  it("rejects replayed, reordered, truncated, tampered and oversized frames", () => {
    const { ab, ba } = connect(0, 1);
    const f1 = ab.seal(msg);
    const f2 = ab.seal(msg);
    assert.throws(() => ba.open(f2), /replay-or-reorder/);
    ba.open(f1);
    assert.throws(() => ba.open(f1), /replay-or-reorder/);
    const bad = f2.slice();
    bad[bad.length - 1] = (bad[bad.length - 1] ?? 0) ^ 1;
    assert.throws(() => ba.open(bad), /bad-tag/);
    assert.throws(() => ba.open(f2.subarray(0, 20)), /malformed/);
    assert.deepEqual(ba.open(f2), msg, "the untampered frame still opens");
    assert.throws(() => ab.seal(new Uint8Array(9 * 1024 * 1024)), /oversized/);
  });

  it("rekeys per epoch: new frames open after the ratchet, old-epoch frames are refused", () => {
    const { ab, ba } = connect(0, 1, 5);
    const old = ab.seal(msg);
    ab.rekey(6);
    assert.equal(ab.sendEpoch, 6);
    const fresh = ab.seal(msg);
    assert.deepEqual(ba.open(fresh), msg);
    assert.throws(() => ba.open(old), /stale-epoch/);
  });
});
