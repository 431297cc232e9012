// Snapshots larger than one frame (src/consensus/state-sync.ts): the certified state travels as
// in-order pieces whose first one carries the block and the f + 1 signatures; the receiver checks
// the certificate first, each piece's length, the whole against the certified digest, and installs
// it like a one-frame snapshot. Tampered, forged, missing and mis-sized pieces install nothing.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeReplicaMsg, encodeMessage } from "../../src/consensus/codec.ts";
import { messageBytesMax } from "../../src/consensus/constants.ts";
import {
  canonicalSessions,
  checkpointDigest,
  StateSync,
  type StateSyncHost,
  stateDigestOf,
} from "../../src/consensus/state-sync.ts";
import type { SessionEntry } from "../../src/consensus/storage.ts";
import {
  type Block,
  genesisBlock,
  type ReplicaMsg,
  type SnapshotChunkMsg,
} from "../../src/consensus/types.ts";
import { SimulationMacKeys } from "../../src/crypto/signature.ts";
import { blockAt as blockAtHeight, registryWithOneNode } from "./fixtures/state-sync.ts";

const chainId = "snapshot-chunks-test";
const keys = new SimulationMacKeys(5, new Uint8Array([11]));
const every = 4;
const height = 8;

const blockAt = (h: number): Block => blockAtHeight(chainId, h);

function bigState(sessionsN: number) {
  const sessions: SessionEntry[] = Array.from({ length: sessionsN }, (_, i) => ({
    clientId: `client-${i.toString(16).padStart(16, "0")}`,
    seq: 1 + (i % 97),
    result: { ok: true },
    atMs: 1_000 + i,
  }));
  return { registry: registryWithOneNode(), sessions };
}

interface Side {
  commit: (b: Block) => void;
  sync: StateSync;
  sent: { to: number; msg: ReplicaMsg }[];
  rejects: string[];
  installed: { height: number; sessions: number }[];
}

function side(
  id: number,
  state: ReturnType<typeof bigState>,
  sizes: { snapshotFrameBytesMax?: number; snapshotChunkBytes?: number },
): Side {
  const sent: Side["sent"] = [];
  const rejects: string[] = [];
  const installed: Side["installed"] = [];
  let committed = genesisBlock(chainId);
  const host: StateSyncHost = {
    id,
    chainId,
    signer: keys.signerFor(id),
    verifier: keys.verifier(),
    send: (to, msg) => sent.push({ to, msg }),
    committed: () => committed,
    committedBlock: () => undefined,
    state: () => state,
    install: (s) => {
      committed = s.block;
      installed.push({ height: s.block.height, sessions: s.sessions.length });
    },
    commitCertified: () => false,
    reject: (_from, reason) => rejects.push(reason),
    evidence: () => {},
    info: () => {},
  };
  const sync = new StateSync({ host, everyBlocks: every, lagBlocks: 2, retryMs: 100, ...sizes });
  return {
    commit: (b) => {
      committed = b;
    },
    sync,
    sent,
    rejects,
    installed,
  };
}

/** Replica 0 holds a checkpoint at `height` certified by itself and replica 1; returns its pieces. */
function servedPieces(
  state: ReturnType<typeof bigState>,
  sizes: { snapshotFrameBytesMax?: number; snapshotChunkBytes?: number },
): SnapshotChunkMsg[] {
  const server = side(0, state, sizes);
  const b = blockAt(height);
  server.commit(b);
  server.sync.onCommitted(b, false);
  const { digest } = stateDigestOf(state.registry, canonicalSessions(state.sessions));
  server.sync.onMessage(
    1,
    {
      type: "checkpoint",
      height,
      blockId: b.id,
      stateDigest: digest,
      author: 1,
      sig: keys.signerFor(1).sign(checkpointDigest(chainId, height, b.id, digest)),
    },
    0,
  );
  server.sync.onMessage(3, { type: "catchup", height: 0 }, 0);
  assert.ok(server.sent.every((s) => s.to === 3));
  return server.sent.map((s) => s.msg as SnapshotChunkMsg);
}

const small = { snapshotFrameBytesMax: 2_000, snapshotChunkBytes: 1_000 };

describe("snapshots in pieces", () => {
  const state = bigState(60);
  const pieces = servedPieces(state, small);

  it("a snapshot above the frame limit goes in order-numbered pieces and installs whole", () => {
    assert.ok(pieces.length >= 5, `${pieces.length} pieces`);
    assert.ok(pieces.every((p) => p.type === "snapshot-chunk" && p.count === pieces.length));
    assert.ok(pieces[0]?.block && pieces[0].sigs?.length === 2, "piece 0 carries the certificate");
    assert.ok(pieces.slice(1).every((p) => p.block === undefined && p.sigs === undefined));
    const client = side(3, bigState(0), small);
    for (const p of pieces) client.sync.onMessage(0, p, 1);
    assert.deepEqual(client.rejects, []);
    assert.deepEqual(client.installed, [{ height, sessions: 60 }]);
  });

  it("a tampered piece is caught by the certified digest; nothing is installed", () => {
    const client = side(3, bigState(0), small);
    const bad = pieces.map((p, i) => {
      if (i !== 2) return p;
      const bytes = Buffer.from(p.data, "base64");
      bytes[10] = (bytes[10] ?? 0) ^ 1;
      return { ...p, data: bytes.toString("base64") };
    });
    for (const p of bad) client.sync.onMessage(0, p, 1);
    assert.deepEqual(client.installed, []);
    assert.match(client.rejects.join("\n"), /does not match its certified digest/);
  });

  it("a forged certificate on piece 0 is refused at once and the other pieces are not kept", () => {
    const client = side(3, bigState(0), small);
    const first = pieces[0] as SnapshotChunkMsg;
    const forged = {
      ...first,
      sigs: (first.sigs ?? []).map((s) => ({
        author: s.author,
        sig: keys
          .signerFor(4)
          .sign(checkpointDigest(chainId, height, first.block?.id ?? "", first.stateDigest)),
      })),
    };
    for (const p of [forged, ...pieces.slice(1)]) client.sync.onMessage(4, p, 1);
    assert.deepEqual(client.installed, []);
    assert.equal(client.rejects.length, 1);
    assert.match(client.rejects[0] ?? "", /signature of replica 0 is invalid/);
  });

  it("a missing piece installs nothing; the whole resent (catch-up retry) installs", () => {
    const client = side(3, bigState(0), small);
    for (const p of pieces.filter((_, i) => i !== 1)) client.sync.onMessage(0, p, 1);
    assert.deepEqual(client.installed, []);
    for (const p of pieces) client.sync.onMessage(0, p, 2);
    assert.deepEqual(client.installed, [{ height, sessions: 60 }]);
  });

  it("pieces of the wrong size or count are refused with a reason", () => {
    const client = side(3, bigState(0), small);
    const first = pieces[0] as SnapshotChunkMsg;
    client.sync.onMessage(0, { ...first, data: first.data.slice(0, 100) }, 1);
    client.sync.onMessage(0, { ...first, count: first.count + 1 }, 1);
    client.sync.onMessage(0, { ...first, block: undefined }, 1);
    assert.equal(client.rejects.length, 3);
    assert.match(client.rejects[0] ?? "", /has 75 bytes; expected 1000/);
    assert.match(client.rejects[1] ?? "", /expected \d+ pieces of 1000 bytes/);
    assert.match(client.rejects[2] ?? "", /without its block and certificate/);
    assert.deepEqual(client.installed, []);
  });

  it("at the real limits a > 4 MiB state goes in 1 MiB pieces that each fit a frame and pass the codec", () => {
    const large = bigState(64_000);
    const real = servedPieces(large, {});
    assert.ok(real.length >= 4, `${real.length} pieces`);
    const client = side(3, bigState(0), {});
    for (const p of real) {
      const bytes = encodeMessage(p);
      assert.ok(bytes.length < messageBytesMax, `${bytes.length} bytes`);
      const d = decodeReplicaMsg(bytes);
      assert.ok(d.ok, d.ok ? "" : d.reason);
      client.sync.onMessage(0, d.value as SnapshotChunkMsg, 1);
    }
    assert.deepEqual(client.rejects, []);
    assert.deepEqual(client.installed, [{ height, sessions: 64_000 }]);
  });
});
