// The edges of a coordinator: the wire codec refuses forged, truncated, oversized and malformed
// frames with a reason; the WAL survives a torn write and snapshots with truncation; a restarted
// replica never votes twice in a round; the registry state machine; the checkers can fail.

import assert from "node:assert/strict";
import {
  appendFileSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { decodeReplicaMsg, encodeMessage } from "../../src/consensus/codec.ts";
import { messageBytesMax } from "../../src/consensus/constants.ts";
import { checkLinearizable, type HistoryOp } from "../../src/consensus/linearizability.ts";
import {
  type RegistryOp,
  type RegistryResult,
  RegistryStateMachine,
} from "../../src/consensus/registry.ts";
import { Replica, type ReplicaEvent } from "../../src/consensus/replica.ts";
import {
  checkAgreement,
  checkDurability,
  checkLiveness,
} from "../../src/consensus/sim/checkers.ts";
import { registryModel } from "../../src/consensus/sim/simulation.ts";
import { MemoryStorage } from "../../src/consensus/storage.ts";
import {
  type Block,
  blockIdOf,
  genesisBlock,
  genesisQc,
  type ProposalMsg,
  proposalDigest,
  type ReplicaMsg,
  type VoteMsg,
} from "../../src/consensus/types.ts";
import { FileWal } from "../../src/consensus/wal.ts";
import { SimulationMacKeys } from "../../src/crypto/signature.ts";

const chainId = "edge-test";
const keys = new SimulationMacKeys(5, new Uint8Array([9]));

function proposal(author: number, payloadSeq: number, timestampMs = 1): ProposalMsg {
  const parent = genesisBlock(chainId);
  const fields = {
    parentId: parent.id,
    round: 1,
    height: 1,
    author,
    timestampMs,
    payload: [{ clientId: "c", seq: payloadSeq, op: { kind: "list_nodes" } }],
    qc: genesisQc(chainId),
  };
  const block: Block = { id: blockIdOf(chainId, fields), ...fields };
  return {
    type: "proposal",
    block,
    sig: keys.signerFor(author).sign(proposalDigest(chainId, block.id)),
  };
}

function replica(
  id: number,
  storage: MemoryStorage,
  sent: ReplicaMsg[],
  events: ReplicaEvent[] = [],
) {
  return new Replica({
    id,
    chainId,
    signer: keys.signerFor(id),
    verifier: keys.verifier(),
    storage,
    network: { send: (_to, m) => sent.push(m), reply: () => {} },
    viewTimeoutMs: 100,
    maxBatch: 8,
    nowMs: 0,
    log: (e) => events.push(e),
  });
}

describe("wire codec", () => {
  const p = proposal(0, 1);
  const bytes = encodeMessage(p);

  it("round-trips a signed proposal", () => {
    const d = decodeReplicaMsg(bytes);
    assert.equal(d.ok, true);
    assert.deepEqual(d.ok && d.value, p);
  });

  it("refuses truncated, oversized, non-JSON and ill-shaped frames with a reason", () => {
    const truncated = decodeReplicaMsg(bytes.subarray(0, bytes.length - 7));
    assert.equal(truncated.ok, false);
    assert.match(!truncated.ok ? truncated.reason : "", /malformed frame/);
    const big = decodeReplicaMsg(new Uint8Array(messageBytesMax + 1));
    assert.match(!big.ok ? big.reason : "", /oversized frame/);
    const shape = decodeReplicaMsg(
      new TextEncoder().encode('{"type":"vote","blockId":"zz","round":1}'),
    );
    assert.match(!shape.ok ? shape.reason : "", /invalid message at blockId/);
    const hugeSig = decodeReplicaMsg(
      new TextEncoder().encode(
        JSON.stringify({ type: "fetch", blockId: "a".repeat(64), x: { $b: "A".repeat(20_000) } }),
      ),
    );
    assert.equal(hugeSig.ok, false);
  });

  it("a replica logs and drops a forged proposal (valid shape, wrong signer) and a replayed one", () => {
    const sent: ReplicaMsg[] = [];
    const events: ReplicaEvent[] = [];
    const r = replica(1, new MemoryStorage(), sent, events);
    // Replica 3 forges ORD's proposal: it can only sign with its own key.
    const forged: ProposalMsg = {
      ...p,
      sig: keys.signerFor(3).sign(proposalDigest(chainId, p.block.id)),
    };
    r.onMessage(0, forged, 1);
    assert.match(JSON.stringify(events), /invalid signature/);
    assert.equal(sent.filter((m) => m.type === "vote").length, 0);
    r.onMessage(0, p, 2);
    assert.equal(
      sent.filter((m) => m.type === "vote").length,
      4,
      "one vote, to each of the 4 others",
    );
    r.onMessage(0, p, 3); // replayed: no second vote
    assert.equal(sent.filter((m) => m.type === "vote").length, 4);
    // Tampered block contents under a valid signature.
    const tampered: ProposalMsg = { ...p, block: { ...p.block, timestampMs: 99 } };
    r.onMessage(0, tampered, 4);
    assert.match(JSON.stringify(events), /block id does not match/);
  });
});

describe("crash recovery", () => {
  it("a restarted replica never votes twice in a round, even for a different block", () => {
    const storage = new MemoryStorage();
    const sent: ReplicaMsg[] = [];
    const r1 = replica(2, storage, sent);
    r1.onMessage(0, proposal(0, 1), 1);
    const votes1 = sent.filter((m): m is VoteMsg => m.type === "vote");
    assert.equal(votes1.length, 4, "voted once, to the 4 others");
    // Crash: the object is gone; a new one recovers from storage. An equivocating ORD now sends a
    // different block for the same round.
    const sent2: ReplicaMsg[] = [];
    const r2 = replica(2, storage, sent2);
    assert.equal(r2.status().lastVotedRound, 1);
    r2.onMessage(0, proposal(0, 2, 5), 10);
    assert.equal(sent2.filter((m) => m.type === "vote").length, 0);
  });
});

describe("file WAL", () => {
  const dir = mkdtempSync(join(tmpdir(), "moe-wal-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("recovers appended records, cuts a torn tail, and truncates at a snapshot", () => {
    const p = proposal(0, 1);
    const wal = new FileWal(dir);
    wal.append([{ kind: "block", block: p.block }]);
    wal.append([{ kind: "safety", lastVotedRound: 1, highQc: genesisQc(chainId) }]);
    wal.close();
    appendFileSync(join(dir, "wal.log"), Buffer.from([0, 0, 1, 0, 1, 2, 3])); // torn write
    const wal2 = new FileWal(dir);
    const rec = wal2.load();
    assert.equal(rec.records.length, 2);
    assert.deepEqual(rec.records[0], { kind: "block", block: p.block });
    const cut = statSync(join(dir, "wal.log")).size;
    wal2.append([{ kind: "commit", height: 1, blockId: p.block.id }]);
    assert.equal(new FileWal(dir).load().records.length, 3);
    assert.ok(statSync(join(dir, "wal.log")).size > cut);

    const machine = new RegistryStateMachine();
    wal2.saveSnapshot(
      {
        block: p.block,
        registry: machine.snapshot(),
        sessions: [],
        lastVotedRound: 1,
        highQc: genesisQc(chainId),
      },
      [{ kind: "safety", lastVotedRound: 1, highQc: genesisQc(chainId) }],
    );
    const after = new FileWal(dir).load();
    assert.equal(after.records.length, 1);
    assert.equal(after.snapshot?.block.id, p.block.id);
    // A corrupted byte in the middle stops recovery there (checksum).
    const raw = readFileSync(join(dir, "wal.log"));
    raw[raw.length - 3] = (raw[raw.length - 3] ?? 0) ^ 0xff;
    writeFileSync(join(dir, "wal.log"), raw);
    assert.equal(new FileWal(dir).load().records.length, 0);
  });
});

describe("registry state machine", () => {
  it("registers nodes, places experts on registered nodes only, and validates operations", () => {
    const m = new RegistryStateMachine();
    assert.deepEqual(
      m.apply(
        { kind: "register_node", nodeId: "n1", region: "ORD", gpuType: "a10", address: "h:1" },
        5,
      ),
      { ok: true },
    );
    assert.match(
      JSON.stringify(m.apply({ kind: "set_placement", expert: "L0.E1", nodeIds: ["n1", "n2"] }, 6)),
      /unknown nodes n2/,
    );
    assert.deepEqual(m.apply({ kind: "set_placement", expert: "L0.E1", nodeIds: ["n1"] }, 6), {
      ok: true,
    });
    assert.deepEqual(m.apply({ kind: "get_placement", expert: "L0.E1" }, 7), {
      ok: true,
      value: ["n1"],
    });
    assert.deepEqual(m.apply({ kind: "heartbeat", nodeId: "n1" }, 9), { ok: true });
    assert.equal((m.snapshot().nodes.n1 as { lastHeartbeatMs: number }).lastHeartbeatMs, 9);
    assert.deepEqual(m.apply({ kind: "deregister_node", nodeId: "n1" }, 10), { ok: true });
    assert.deepEqual(m.apply({ kind: "get_placement", expert: "L0.E1" }, 11), {
      ok: true,
      value: [],
    });
    assert.match(JSON.stringify(m.apply({ kind: "rotate_key_epoch", epoch: 0 }, 12)), /must grow/);
    assert.match(JSON.stringify(m.apply({ kind: "drop_tables" }, 12)), /invalid operation/);
  });
});

describe("checkers fail when they should", () => {
  it("agreement and durability checkers report conflicting and lost commits", () => {
    const honest = new Set([0, 1, 2, 3]);
    assert.deepEqual(
      checkAgreement(
        [
          { replica: 0, height: 1, blockId: "a", atMs: 0 },
          { replica: 1, height: 1, blockId: "a", atMs: 0 },
        ],
        honest,
      ),
      [],
    );
    assert.equal(
      checkAgreement(
        [
          { replica: 0, height: 1, blockId: "a", atMs: 0 },
          { replica: 1, height: 1, blockId: "b", atMs: 0 },
        ],
        honest,
      ).length,
      1,
    );
    assert.equal(
      checkAgreement(
        [
          { replica: 4, height: 1, blockId: "b", atMs: 0 },
          { replica: 1, height: 1, blockId: "a", atMs: 0 },
        ],
        honest,
      ).length,
      0,
      "the Byzantine replica is not judged",
    );
    assert.equal(
      checkDurability([
        {
          replica: 0,
          heightBeforeCrash: 5,
          idBeforeCrash: "x",
          heightAfterRestart: 4,
          idAfterRestartAtOldHeight: undefined,
        },
      ]).length,
      1,
    );
    assert.equal(
      checkLiveness([{ replica: 0, viewAtHeal: 3, viewAtResume: undefined }], 5).length,
      1,
    );
    assert.equal(checkLiveness([{ replica: 0, viewAtHeal: 3, viewAtResume: 20 }], 5).length, 1);
  });

  it("the linearizability checker accepts concurrent histories and rejects a stale read", () => {
    const reg: RegistryOp = {
      kind: "register_node",
      nodeId: "n1",
      region: "ORD",
      gpuType: "a10",
      address: "a",
    };
    const put: RegistryOp = { kind: "set_placement", expert: "E", nodeIds: ["n1"] };
    const get: RegistryOp = { kind: "get_placement", expert: "E" };
    const ok: RegistryResult = { ok: true };
    const base: HistoryOp<RegistryOp, RegistryResult>[] = [
      { clientId: "a", input: reg, callMs: 0, returnMs: 1, output: ok },
    ];
    // The read overlaps the write: either answer is linearizable.
    for (const seen of [[], ["n1"]]) {
      const h: HistoryOp<RegistryOp, RegistryResult>[] = [
        ...base,
        { clientId: "a", input: put, callMs: 2, returnMs: 6, output: ok },
        { clientId: "b", input: get, callMs: 3, returnMs: 5, output: { ok: true, value: seen } },
      ];
      assert.equal(checkLinearizable(h, registryModel).ok, true, JSON.stringify(seen));
    }
    // The read starts after the write returned but misses it: not linearizable.
    const stale: HistoryOp<RegistryOp, RegistryResult>[] = [
      ...base,
      { clientId: "a", input: put, callMs: 2, returnMs: 3, output: ok },
      { clientId: "b", input: get, callMs: 4, returnMs: 5, output: { ok: true, value: [] } },
    ];
    assert.equal(checkLinearizable(stale, registryModel).ok, false);
    // A write that never returned may or may not have happened.
    const pending: HistoryOp<RegistryOp, RegistryResult>[] = [
      ...base,
      { clientId: "a", input: put, callMs: 2 },
      { clientId: "b", input: get, callMs: 4, returnMs: 5, output: { ok: true, value: ["n1"] } },
    ];
    assert.equal(checkLinearizable(pending, registryModel).ok, true);
  });
});
