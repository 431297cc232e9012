// State transfer between coordinators (src/consensus/state-sync.ts): a replica crashed for longer
// than its peers keep blocks catches up from a snapshot certified by f + 1 ML-DSA/MAC signatures,
// in seeded simulations with a Byzantine replica; a forged, tampered or under-signed snapshot is
// refused with a reason; a peer that signs another state for a committed block is evidence.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeReplicaMsg, encodeMessage } from "../../src/consensus/codec.ts";
import { runSimulation } from "../../src/consensus/sim/simulation.ts";
import {
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
  type SnapshotMsg,
} from "../../src/consensus/types.ts";
import { SimulationMacKeys } from "../../src/crypto/signature.ts";
import { blockAt as blockAtHeight, registryWithOneNode } from "./fixtures/state-sync.ts";

const chainId = "state-sync-test";
const keys = new SimulationMacKeys(5, new Uint8Array([7]));
const every = 4;

const blockAt = (h: number): Block => blockAtHeight(chainId, h);

function stateWithNode(): { registry: ReturnType<typeof registryWithOneNode> } {
  return { registry: registryWithOneNode() };
}

function snapshotMsg(signers: readonly number[], height = 8): SnapshotMsg {
  const block = blockAt(height);
  const { registry } = stateWithNode();
  const sessions: SessionEntry[] = [{ clientId: "c1", seq: 3, result: { ok: true } }];
  const { digest } = stateDigestOf(registry, sessions);
  return {
    type: "snapshot",
    block,
    registry,
    sessions,
    stateDigest: digest,
    sigs: signers.map((author) => ({
      author,
      sig: keys.signerFor(author).sign(checkpointDigest(chainId, height, block.id, digest)),
    })),
  };
}

function harness(id = 0) {
  const sent: { to: number; msg: ReplicaMsg }[] = [];
  const rejects: string[] = [];
  const evidence: { against: number; reason: string }[] = [];
  const installed: number[] = [];
  const provenCommits: number[] = [];
  let committed = genesisBlock(chainId);
  const state = stateWithNode();
  const host: StateSyncHost = {
    id,
    chainId,
    signer: keys.signerFor(id),
    verifier: keys.verifier(),
    send: (to, msg) => sent.push({ to, msg }),
    committed: () => committed,
    committedBlock: () => undefined,
    state: () => ({ registry: state.registry, sessions: [] }),
    install: (s) => {
      committed = s.block;
      installed.push(s.block.height);
    },
    commitCertified: (height) => {
      provenCommits.push(height);
      return true;
    },
    reject: (_from, reason) => rejects.push(reason),
    evidence: (against, reason) => evidence.push({ against, reason }),
    info: () => {},
  };
  const sync = new StateSync({ host, everyBlocks: every, lagBlocks: 2, retryMs: 100 });
  return {
    sync,
    sent,
    rejects,
    evidence,
    installed,
    provenCommits,
    commit: (b: Block) => {
      committed = b;
    },
  };
}

/** A replica down from 100 ms until the heal while its peers keep only 4 committed blocks. */
const longCrashOptions = {
  retainedCommittedBlocks: 4,
  crashUntilHeal: { replica: 3, atMs: 100 },
  opsPerClient: 30,
  // The restarted replica first fetches the state, while the others may change views.
  livenessViewsMax: 24,
};

describe("state transfer", () => {
  it("a replica down for longer than its peers keep blocks catches up by a certified snapshot (40 seeded schedules, Byzantine replica, faults)", () => {
    const failures: string[] = [];
    let installedRuns = 0;
    for (let seed = 1; seed <= 40; seed++) {
      const r = runSimulation({ seed, ...longCrashOptions });
      // The checkers demand agreement (the snapshot's block included) and that the long-crashed
      // replica commits past the height at the heal, which it can only reach by a snapshot here.
      if (!r.ok) failures.push(`seed ${seed}: ${r.violations.join("; ")} (${r.reproduce})`);
      if (r.finalStatus.some((s) => s !== undefined && s.stateSync.snapshotsInstalled > 0))
        installedRuns += 1;
    }
    assert.deepEqual(failures.slice(0, 3), []);
    // A failing seed prints one command that reruns it with these options.
    assert.match(
      runSimulation({ seed: 1, ...longCrashOptions }).reproduce,
      /simulate --seed 1 --retain 4 --long-crash 3@100 --ops 30 --liveness-views 24$/,
    );
    // Without state transfer these runs could not finish; most of them needed a snapshot.
    assert.ok(installedRuns >= 20, `snapshots installed in ${installedRuns} of 40 runs`);
  });

  it("installs a snapshot certified by f + 1 signatures and refuses forged, tampered or under-signed ones", () => {
    const h = harness();
    const good = snapshotMsg([1, 2]);
    // Through the wire codec, as a peer would send it.
    const decoded = decodeReplicaMsg(encodeMessage(good));
    assert.ok(decoded.ok);
    assert.equal(h.sync.checkSnapshot(decoded.value as SnapshotMsg), undefined);

    const oneSigner = snapshotMsg([1]);
    assert.match(h.sync.checkSnapshot(oneSigner) ?? "", /1 signatures < f \+ 1 = 2/);
    const twice = { ...good, sigs: [good.sigs[0], good.sigs[0]] } as SnapshotMsg;
    assert.match(h.sync.checkSnapshot(twice) ?? "", /counts replica 1 twice/);
    const forged = {
      ...good,
      sigs: [good.sigs[0], { author: 3, sig: good.sigs[1]?.sig }],
    } as SnapshotMsg;
    assert.match(h.sync.checkSnapshot(forged) ?? "", /signature of replica 3 is invalid/);
    const tampered: SnapshotMsg = {
      ...good,
      registry: { ...good.registry, placements: { "L0.E0": ["ORD-0"] } },
    };
    assert.match(h.sync.checkSnapshot(tampered) ?? "", /does not match its digest/);
    const otherBlock: SnapshotMsg = { ...good, block: { ...good.block, timestampMs: 5 } };
    assert.match(h.sync.checkSnapshot(otherBlock) ?? "", /block id does not match/);
    const offGrid = snapshotMsg([1, 2], 6);
    assert.match(h.sync.checkSnapshot(offGrid) ?? "", /not a checkpoint height/);

    for (const bad of [oneSigner, twice, forged, tampered, otherBlock]) h.sync.onMessage(1, bad, 0);
    assert.deepEqual(h.installed, []);
    assert.equal(h.rejects.length, 5);
    h.sync.onMessage(1, good, 0);
    assert.deepEqual(h.installed, [8]);
    assert.equal(h.sync.status().snapshotsInstalled, 1);
    assert.equal(h.sync.status().certifiedCheckpointHeight, 8);
  });

  it("the codec refuses a snapshot whose registry breaks the schema", () => {
    const good = snapshotMsg([1, 2]);
    const bad = {
      ...good,
      registry: { ...good.registry, nodes: { "ORD-0": { nodeId: "ORD-0", region: "ord" } } },
    };
    const d = decodeReplicaMsg(encodeMessage(bad as unknown as SnapshotMsg));
    assert.equal(d.ok, false);
    assert.match(d.ok ? "" : d.reason, /registry\.nodes/);
  });

  it("asks a peer when far behind, moves on to the next one without an answer, and serves its certified checkpoint", () => {
    const lag = harness(4);
    lag.sync.onCertified(40, 1, 0);
    assert.deepEqual(lag.sent.at(-1), { to: 1, msg: { type: "catchup", height: 0 } });
    lag.sync.onTick(50); // within retryMs: no second request
    assert.equal(lag.sent.length, 1);
    lag.sync.onTick(150);
    assert.deepEqual(lag.sent.at(-1), { to: 2, msg: { type: "catchup", height: 0 } });

    // A server certifies its checkpoint at height 4 with one peer's signature, then serves it.
    const srv = harness(0);
    const b4 = blockAt(4);
    srv.commit(b4);
    srv.sync.onCommitted(b4, true);
    const mine = srv.sent.find((s) => s.msg.type === "checkpoint")?.msg;
    assert.ok(mine?.type === "checkpoint");
    assert.equal(srv.sync.status().certifiedCheckpointHeight, 0);
    srv.sync.onMessage(
      2,
      {
        ...mine,
        author: 2,
        sig: keys.signerFor(2).sign(checkpointDigest(chainId, 4, b4.id, mine.stateDigest)),
      },
      0,
    );
    assert.equal(srv.sync.status().certifiedCheckpointHeight, 4);
    srv.sync.onMessage(3, { type: "catchup", height: 0 }, 0);
    const served = srv.sent.at(-1);
    assert.equal(served?.to, 3);
    assert.ok(served?.msg.type === "snapshot");
    assert.equal(lag.sync.checkSnapshot(served.msg), undefined);
  });

  it("f + 1 matching checkpoints above the committed height commit that block (one is not enough)", () => {
    const h = harness(0);
    const b8 = blockAt(8);
    const digest = "cd".repeat(32);
    const cp = (author: number) => ({
      type: "checkpoint" as const,
      height: 8,
      blockId: b8.id,
      stateDigest: digest,
      author,
      sig: keys.signerFor(author).sign(checkpointDigest(chainId, 8, b8.id, digest)),
    });
    h.sync.onMessage(2, cp(2), 0);
    assert.deepEqual(h.provenCommits, []);
    h.sync.onMessage(3, cp(3), 0);
    assert.deepEqual(h.provenCommits, [8]);
  });

  it("a peer that signs another state for a committed checkpoint block is evidence", () => {
    const h = harness(0);
    const b4 = blockAt(4);
    h.commit(b4);
    h.sync.onCommitted(b4, true);
    const lie = "ab".repeat(32);
    h.sync.onMessage(
      2,
      {
        type: "checkpoint",
        height: 4,
        blockId: b4.id,
        stateDigest: lie,
        author: 2,
        sig: keys.signerFor(2).sign(checkpointDigest(chainId, 4, b4.id, lie)),
      },
      0,
    );
    assert.equal(h.evidence.length, 1);
    assert.equal(h.evidence[0]?.against, 2);
    assert.match(h.evidence[0]?.reason ?? "", /checkpoint at height 4 signs/);
    assert.equal(h.sync.status().certifiedCheckpointHeight, 0);
    // A forged checkpoint (signed by 1, claimed by 2) is rejected, not evidence.
    h.sync.onMessage(
      2,
      {
        type: "checkpoint",
        height: 4,
        blockId: b4.id,
        stateDigest: lie,
        author: 2,
        sig: keys.signerFor(1).sign(checkpointDigest(chainId, 4, b4.id, lie)),
      },
      0,
    );
    assert.equal(h.evidence.length, 1);
    assert.match(h.rejects.at(-1) ?? "", /invalid signature/);
  });
});
