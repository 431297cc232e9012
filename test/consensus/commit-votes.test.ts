// The commit-vote phase (Commit Moonshot, https://arxiv.org/abs/2401.01791) at one replica and in
// the simulator: a replica commit-votes only while holding the QC and not timed out of its view,
// only after its high QC is durable; 2f + 1 commit votes commit; forged, relayed, replayed and
// vote-tagged commit votes are refused; with fixed link delays δ a block commits 3 δ after its
// proposal (4 δ by the 2-chain rule alone); Byzantine commit-voters break neither safety nor
// liveness, nor does the 2-chain path alone.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeReplicaMsg, encodeMessage } from "../../src/consensus/codec.ts";
import { Replica, type ReplicaEvent } from "../../src/consensus/replica.ts";
import { runLatencyModel } from "../../src/consensus/sim/latency-model.ts";
import { runSimulation } from "../../src/consensus/sim/simulation.ts";
import { MemoryStorage, type WalRecord } from "../../src/consensus/storage.ts";
import {
  type Block,
  blockIdOf,
  type CommitVoteMsg,
  commitVoteDigest,
  genesisBlock,
  genesisQc,
  type ProposalMsg,
  proposalDigest,
  type ReplicaMsg,
  timeoutDigest,
  type VoteMsg,
  voteDigest,
} from "../../src/consensus/types.ts";
import { SimulationMacKeys } from "../../src/crypto/signature.ts";

const chainId = "commit-vote-test";
const keys = new SimulationMacKeys(5, new Uint8Array([7]));

function proposalR1(): ProposalMsg {
  const parent = genesisBlock(chainId);
  const fields = {
    parentId: parent.id,
    round: 1,
    height: 1,
    author: 0,
    timestampMs: 1,
    payload: [{ clientId: "c", seq: 1, op: { kind: "list_nodes" } }],
    qc: genesisQc(chainId),
  };
  const block: Block = { id: blockIdOf(chainId, fields), ...fields };
  return {
    type: "proposal",
    block,
    sig: keys.signerFor(0).sign(proposalDigest(chainId, block.id)),
  };
}

function vote(author: number, b: Block): VoteMsg {
  return {
    type: "vote",
    blockId: b.id,
    round: b.round,
    height: b.height,
    author,
    sig: keys.signerFor(author).sign(voteDigest(chainId, b.id, b.round, b.height)),
  };
}

function commitVote(author: number, b: Block, signer = author): CommitVoteMsg {
  return {
    type: "commit-vote",
    blockId: b.id,
    round: b.round,
    height: b.height,
    author,
    sig: keys.signerFor(signer).sign(commitVoteDigest(chainId, b.id, b.round, b.height)),
  };
}

/** Storage that remembers, for each message sent, the highest high-QC round durable at the time. */
class WatchedStorage extends MemoryStorage {
  durableHighQcRound = 0;
  override append(records: readonly WalRecord[]): void {
    super.append(records);
    for (const r of records)
      if (r.kind === "safety")
        this.durableHighQcRound = Math.max(this.durableHighQcRound, r.highQc.round);
  }
}

function setup(storage = new WatchedStorage()) {
  const sent: { msg: ReplicaMsg; durableHighQcRound: number }[] = [];
  const events: ReplicaEvent[] = [];
  const r = new Replica({
    id: 1,
    chainId,
    signer: keys.signerFor(1),
    verifier: keys.verifier(),
    storage,
    network: {
      send: (_to, msg) => sent.push({ msg, durableHighQcRound: storage.durableHighQcRound }),
      reply: () => {},
    },
    viewTimeoutMs: 100,
    maxBatch: 8,
    nowMs: 0,
    log: (e) => events.push(e),
  });
  const commitVotesSent = () =>
    sent.filter((s) => s.msg.type === "commit-vote") as {
      msg: CommitVoteMsg;
      durableHighQcRound: number;
    }[];
  return { r, sent, events, storage, commitVotesSent };
}

describe("commit votes at one replica", () => {
  const p = proposalR1();
  const b = p.block;

  it("round-trip the wire codec; an ill-shaped one is refused with a reason", () => {
    const cv = commitVote(2, b);
    const d = decodeReplicaMsg(encodeMessage(cv));
    assert.equal(d.ok, true);
    assert.deepEqual(d.ok && d.value, cv);
    const bad = decodeReplicaMsg(
      new TextEncoder().encode(JSON.stringify({ ...cv, sig: undefined, round: -1 })),
    );
    assert.equal(bad.ok, false);
    assert.match(!bad.ok ? bad.reason : "", /invalid message at round/);
  });

  it("holding QC(B) it commit-votes once, after its high QC round is durable; 4 commit votes commit B", () => {
    const { r, sent, commitVotesSent, storage } = setup();
    r.onMessage(0, p, 1);
    assert.equal(commitVotesSent().length, 0, "no commit vote before the QC");
    for (const a of [0, 2, 3]) r.onMessage(a, vote(a, b), 2);
    const cvs = commitVotesSent();
    assert.equal(cvs.length, 4, "one commit vote to each of the 4 others");
    for (const c of cvs) {
      assert.equal(c.msg.blockId, b.id);
      assert.ok(c.durableHighQcRound >= 1, "the QC's round was durable before the commit vote");
    }
    assert.equal(r.status().committedHeight, 0, "a QC alone does not commit");
    r.onMessage(0, commitVote(0, b), 3);
    r.onMessage(2, commitVote(2, b), 3);
    r.onMessage(2, commitVote(2, b), 3); // duplicate: counted once
    assert.equal(r.status().committedHeight, 0, "3 commit votes (own + 2) are not 2f + 1");
    r.onMessage(3, commitVote(3, b), 4);
    const st = r.status();
    assert.equal(st.committedHeight, 1);
    assert.equal(st.commitsByCommitVotes, 1);
    assert.equal(st.commitsByTwoChain, 0);
    // A restart keeps the high QC the commit vote promised to carry in its timeouts.
    const again = setup(storage);
    assert.ok(again.r.status().highQcRound >= 1);
    assert.equal(again.r.status().committedHeight, 1);
    assert.ok(sent.length > 0);
  });

  it("refuses forged, relayed and vote-tagged commit votes with a logged reason", () => {
    const { r, events } = setup();
    r.onMessage(0, p, 1);
    for (const a of [0, 2, 3]) r.onMessage(a, vote(a, b), 2);
    r.onMessage(2, commitVote(2, b, 4), 3); // replica 4's key, replica 2's name
    r.onMessage(3, commitVote(2, b), 3); // replica 2's commit vote relayed (replayed) by 3
    const v = vote(4, b); // a vote's signature presented as a commit vote
    r.onMessage(4, { ...commitVote(4, b), sig: v.sig }, 3);
    r.onMessage(0, commitVote(0, b), 4);
    const reasons = events.filter((e) => e.kind === "reject").map((e) => e.reason);
    assert.equal(reasons.filter((x) => /commit vote .*invalid signature/.test(x)).length, 2);
    assert.equal(reasons.filter((x) => /commit vote by 2 relayed by 3/.test(x)).length, 1);
    assert.equal(r.status().committedHeight, 0, "own + ORD's only: the refused ones do not count");
  });

  it("a replica that timed out of the view does not commit-vote, even when the QC arrives later", () => {
    const { r, commitVotesSent } = setup();
    r.onMessage(0, p, 1);
    r.submit({ clientId: "w", seq: 1, op: { kind: "list_nodes" } }, 2);
    r.tick(1_000); // a request pending and no QC: times out of view 0
    assert.ok(r.status().lastVotedRound > 1);
    for (const a of [0, 2, 3]) r.onMessage(a, vote(a, b), 1_001);
    assert.ok(r.status().highQcRound >= 1, "it holds QC(B)");
    assert.equal(commitVotesSent().length, 0);
  });

  it("a replica that missed a commit (timed out, 3 commit votes) commits from a peer's certificate; a forged one is refused", () => {
    const { r, events } = setup();
    r.onMessage(0, p, 1);
    r.submit({ clientId: "w", seq: 1, op: { kind: "list_nodes" } }, 2);
    r.tick(1_000); // times out of view 0 before the QC: no commit vote of its own
    for (const a of [0, 2, 3]) r.onMessage(a, vote(a, b), 1_001);
    for (const a of [0, 2, 3]) r.onMessage(a, commitVote(a, b), 1_002);
    assert.equal(r.status().committedHeight, 0, "3 commit votes are not 2f + 1");
    const cert = (signers: number[]) => ({
      type: "commit-cert" as const,
      blockId: b.id,
      round: b.round,
      height: b.height,
      votes: [0, 2, 3, 4].map((a, i) => ({ author: a, sig: commitVote(a, b, signers[i]).sig })),
    });
    r.onMessage(2, cert([0, 2, 3, 3]), 1_003); // replica 4's vote signed by 3
    assert.match(
      JSON.stringify(events),
      /commit certificate vote of replica 4 has an invalid signature/,
    );
    assert.equal(r.status().committedHeight, 0);
    const good = cert([0, 2, 3, 4]);
    assert.deepEqual(decodeReplicaMsg(encodeMessage(good)).ok, true);
    r.onMessage(2, good, 1_004);
    assert.equal(r.status().committedHeight, 1);
    assert.equal(r.status().commitsByCommitVotes, 1);
  });

  it("a replica that committed by commit votes answers a stuck peer's timeout with the certificate", () => {
    const { r, sent } = setup();
    r.onMessage(0, p, 1);
    for (const a of [0, 2, 3]) r.onMessage(a, vote(a, b), 2);
    for (const a of [0, 2, 3]) r.onMessage(a, commitVote(a, b), 3);
    assert.equal(r.status().committedHeight, 1);
    const qc = {
      blockId: b.id,
      round: 1,
      height: 1,
      votes: [0, 2, 3, 4].map((a) => ({ author: a, sig: vote(a, b).sig })),
    };
    r.onMessage(
      4,
      {
        type: "timeout",
        view: 0,
        highQc: qc,
        author: 4,
        sig: keys.signerFor(4).sign(timeoutDigest(chainId, 0, 1)),
      },
      4,
    );
    const certs = sent.filter((x) => x.msg.type === "commit-cert");
    assert.equal(certs.length, 1);
    assert.equal(certs[0]?.msg.type === "commit-cert" && certs[0].msg.votes.length, 4);
  });

  it("conflicting commit votes from one replica in one round are evidence, and only the first counts", () => {
    const { r, events } = setup();
    r.onMessage(0, p, 1);
    const other: Block = { ...b, id: `${b.id.slice(0, 63)}${b.id.endsWith("0") ? "1" : "0"}` };
    r.onMessage(4, commitVote(4, other), 2);
    r.onMessage(4, commitVote(4, b), 2);
    assert.match(JSON.stringify(events), /conflicting commit votes in round 1/);
  });
});

describe("commit latency in the simulator (fixed link delays, no faults)", () => {
  it("a block commits 3 one-way delays after its proposal with commit votes, 4 by the 2-chain rule alone", () => {
    const deltaMs = 10;
    for (const [commitVotes, expected] of [
      [true, 3],
      [false, 4],
    ] as const) {
      const r = runSimulation({
        seed: 1,
        byzantine: "none",
        faults: false,
        clients: 4,
        opsPerClient: 20,
        linkDelayMs: () => deltaMs,
        commitVotes,
      });
      assert.deepEqual(r.violations, []);
      for (const s of r.finalStatus) {
        assert.ok(s);
        // The leader's clock starts at its proposal; a follower's when the block reaches it (δ later).
        const seenAfter = s.id === 0 ? 0 : 1;
        const b = s.latencyBreakdownMs;
        assert.equal(b.proposalToQc.p50, (2 - seenAfter) * deltaMs, `replica ${s.id}`);
        assert.equal(b.proposalToCommit.p50, (expected - seenAfter) * deltaMs, `replica ${s.id}`);
        assert.equal(b.proposalToCommit.p99, (expected - seenAfter) * deltaMs, `replica ${s.id}`);
        if (commitVotes) assert.ok(s.commitsByCommitVotes > 0);
        else assert.equal(s.commitsByCommitVotes, 0);
      }
    }
  });
});

describe("latency model (WAN-like delays, steady client load)", () => {
  // ORD's nearest three at 9, 23 and 48 ms: δ = 48 ms is the farthest of ORD's quorum.
  const delays = [
    [0, 9, 23, 48, 95],
    [9, 0, 31, 40, 103],
    [23, 31, 0, 72, 75],
    [48, 40, 72, 0, 138],
    [95, 103, 75, 138, 0],
  ];
  const linkDelayMs = (a: number, b: number) => delays[a]?.[b] ?? 0;
  const run = (commitVotes: boolean, signMs: number, verifyMs: number) =>
    runLatencyModel({
      linkDelayMs,
      commitVotes,
      signMs,
      verifyMs,
      clients: 8,
      thinkMs: 50,
      durationMs: 4_000,
    });

  it("commits 3 δ after the proposal at ORD with commit votes (4 δ without); signature CPU adds to both", () => {
    const cv = run(true, 0, 0);
    const chain = run(false, 0, 0);
    const ord = (r: ReturnType<typeof run>) => r.status[0]?.latencyBreakdownMs.proposalToCommit;
    assert.ok(cv.completed > 40 && chain.completed > 40);
    assert.ok(Math.abs((ord(cv)?.p50 ?? 0) - 3 * 48) <= 2, `commit votes ${ord(cv)?.p50}`);
    assert.equal(ord(chain)?.p50, 4 * 48);
    assert.ok(cv.clientP50Ms < chain.clientP50Ms);
    const cvCpu = run(true, 8, 2);
    const chainCpu = run(false, 8, 2);
    assert.ok((ord(cvCpu)?.p50 ?? 0) > (ord(cv)?.p50 ?? 0), "CPU costs time");
    assert.ok((ord(cvCpu)?.p50 ?? 0) < (ord(chainCpu)?.p50 ?? 0), "commit votes still win");
    assert.ok(cvCpu.cpuBusy.every((b) => b > 0 && b < 1));
  });
});

describe("Byzantine commit-voters in the simulator", () => {
  const cases = [
    ["conflicting-commit-votes", undefined],
    ["reckless-commit-votes", undefined],
    ["replay-commit-votes", /commit vote by N relayed by N/],
  ] as const;
  for (const [behaviour, reason] of cases) {
    it(`"${behaviour}" by ORD or a regional coordinator breaks neither safety nor liveness`, () => {
      for (const id of [0, 3]) {
        for (let seed = 1; seed <= 8; seed++) {
          const r = runSimulation({ seed, byzantine: { id, behaviours: [behaviour] } });
          assert.deepEqual(r.violations, [], `seed ${seed}, Byzantine ${id}`);
          assert.ok((r.liesTold.get(behaviour) ?? 0) > 0, `the ${behaviour} lie was told`);
          if (reason) assert.match([...r.rejectReasons.keys()].join(" | "), reason);
          assert.ok(r.stats.committedHeightMax > 5);
        }
      }
    });
  }

  it("the 2-chain rule alone (no commit votes) stays safe and live over 150 seeded schedules", () => {
    const failures: string[] = [];
    for (let seed = 10_001; seed <= 10_150; seed++) {
      const r = runSimulation({ seed, commitVotes: false });
      if (!r.ok) failures.push(`seed ${seed}: ${r.violations.join("; ")}`);
      for (const s of r.finalStatus) if (s) assert.equal(s.commitsByCommitVotes, 0);
    }
    assert.deepEqual(failures.slice(0, 5), []);
  });
});
