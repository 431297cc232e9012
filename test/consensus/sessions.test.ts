// Client-session expiry (src/consensus/sessions.ts): idle sessions and, above the cap, the least
// recently used ones are removed at fixed committed heights using block time only; a request of a
// client without a session and seq > 1 is answered "session expired" and not executed; the
// RegistryClient then continues under a new client id.

import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server, type Socket } from "node:net";
import { describe, it } from "node:test";
import { RegistryClient } from "../../src/consensus/client.ts";
import { clientFrame, decodeWith, encodeMessage } from "../../src/consensus/codec.ts";
import { messageBytesMax, replicaCount } from "../../src/consensus/constants.ts";
import { FrameReader, writeFrame } from "../../src/consensus/framing.ts";
import { Replica } from "../../src/consensus/replica.ts";
import {
  pruneSessions,
  sessionExpiredError,
  sessionPruneEveryBlocks,
} from "../../src/consensus/sessions.ts";
import { MemoryStorage, type SessionEntry } from "../../src/consensus/storage.ts";
import {
  type Block,
  blockIdOf,
  type ClientRequest,
  genesisBlock,
  genesisQc,
  type ProposalMsg,
  proposalDigest,
  type QuorumCert,
  type ReplyMsg,
  voteDigest,
} from "../../src/consensus/types.ts";
import { SimulationMacKeys } from "../../src/crypto/signature.ts";

const entry = (clientId: string, atMs?: number): SessionEntry => ({
  clientId,
  seq: 1,
  result: { ok: true },
  ...(atMs === undefined ? {} : { atMs }),
});

describe("pruneSessions", () => {
  it("removes sessions idle longer than the limit, by block time", () => {
    const m = new Map([
      ["a", entry("a", 1_000)],
      ["b", entry("b", 5_000)],
      ["c", entry("c", 9_000)],
    ]);
    assert.equal(pruneSessions(m, 10_000, 5_000, 100), 1);
    assert.deepEqual([...m.keys()], ["b", "c"], "a was idle 9 s > 5 s; b exactly 5 s stays");
  });

  it("above the cap removes the least recently used, ties broken by client id, the same on every replica", () => {
    const ids = ["d", "b", "a", "c", "e"];
    const build = (order: string[]) =>
      new Map(order.map((id) => [id, entry(id, id === "e" ? 2_000 : 1_000)]));
    const one = build(ids);
    const two = build([...ids].reverse());
    assert.equal(pruneSessions(one, 3_000, 60_000, 2), 3);
    pruneSessions(two, 3_000, 60_000, 2);
    assert.deepEqual([...one.keys()].sort(), ["d", "e"]);
    assert.deepEqual([...two.keys()].sort(), ["d", "e"], "insertion order does not matter");
  });

  it("drops sessions from snapshots written before expiry existed (no time) at the first pass", () => {
    const m = new Map([
      ["old", entry("old")],
      ["new", entry("new", 1_763_999_000_000)],
    ]);
    pruneSessions(m, 1_764_000_000_000, 3_600_000, 100); // a real block time (2025)
    assert.deepEqual([...m.keys()], ["new"]);
  });
});

// One replica (id 1) fed a chain of blocks from leader 0, certified by votes of 0, 2, 3 and 4; the
// 2-chain rule commits block h when the proposal of h + 2 arrives.
const chainId = "sessions-test";
const keys = new SimulationMacKeys(replicaCount, new Uint8Array([5]));
const minuteMs = 60_000;

function qcFor(b: Block): QuorumCert {
  return {
    blockId: b.id,
    round: b.round,
    height: b.height,
    votes: [0, 2, 3, 4].map((author) => ({
      author,
      sig: keys.signerFor(author).sign(voteDigest(chainId, b.id, b.round, b.height)),
    })),
  };
}

function chain(payloads: ClientRequest[][], blockGapMs: number): ProposalMsg[] {
  const out: ProposalMsg[] = [];
  let parent = genesisBlock(chainId);
  let qc = genesisQc(chainId);
  payloads.forEach((payload, i) => {
    const fields = {
      parentId: parent.id,
      round: i + 1,
      height: i + 1,
      author: 0,
      timestampMs: (i + 1) * blockGapMs,
      payload,
      qc,
    };
    const block: Block = { id: blockIdOf(chainId, fields), ...fields };
    out.push({
      type: "proposal",
      block,
      sig: keys.signerFor(0).sign(proposalDigest(chainId, block.id)),
    });
    qc = qcFor(block);
    parent = block;
  });
  return out;
}

function runChain(
  payloads: ClientRequest[][],
  init: { sessionsMax?: number } = {},
  blockGapMs = minuteMs,
): ReplyMsg[] {
  const replies: ReplyMsg[] = [];
  const r = new Replica({
    id: 1,
    chainId,
    signer: keys.signerFor(1),
    verifier: keys.verifier(),
    storage: new MemoryStorage(),
    network: { send: () => {}, reply: (m) => replies.push(m) },
    viewTimeoutMs: 10 * 24 * 3_600_000, // no view change while the test feeds blocks
    maxBatch: 8,
    nowMs: 0,
    ...init,
  });
  chain(payloads, blockGapMs).forEach((p) => {
    r.onMessage(0, p, p.block.timestampMs);
  });
  const committed = r.status().committedHeight;
  assert.equal(committed, payloads.length - 2, "every block but the last two committed");
  return replies;
}

const put = (clientId: string, seq: number, expert: string): ClientRequest => ({
  clientId,
  seq,
  op: { kind: "set_placement", expert, nodeIds: [] },
});

describe("session expiry in the replica", () => {
  it("expires an idle session at a prune height; its next request is refused unexecuted, a new id works", () => {
    // Block h is at h minutes. "idle" commits at minute 1, "busy" every block; the pass at height
    // 64 (minute 64) finds "idle" 63 minutes old (> 60) and removes it.
    const payloads: ClientRequest[][] = [];
    const blocks = sessionPruneEveryBlocks + 4;
    for (let h = 1; h <= blocks; h++) {
      const p: ClientRequest[] = [put("busy", h, `L0.E${h % 4}`)];
      if (h === 1) p.push(put("idle", 1, "L1.E1"));
      if (h === 10) p.push(put("idle", 1, "L1.E1")); // a retry inside the hour: the recorded result
      if (h === sessionPruneEveryBlocks + 1)
        p.push(put("idle", 2, "L1.E2"), put("fresh", 1, "L2.E1"));
      payloads.push(p);
    }
    const replies = runChain(payloads);
    const of = (id: string, seq: number) =>
      replies.filter((m) => m.clientId === id && m.seq === seq).map((m) => m.result);
    assert.deepEqual(
      of("idle", 1),
      [{ ok: true }],
      "executed once; the retry at block 10 is not replied again here",
    );
    assert.deepEqual(of("idle", 2), [{ ok: false, error: sessionExpiredError }]);
    assert.deepEqual(of("fresh", 1), [{ ok: true }]);
    assert.equal(of("busy", sessionPruneEveryBlocks + 1).length, 1, "a busy client is not expired");
    assert.deepEqual(of("busy", sessionPruneEveryBlocks + 1)[0], { ok: true });
  });

  it("a client id never seen with seq > 1 is refused; the sessions cap evicts the least recently used", () => {
    const payloads: ClientRequest[][] = [];
    const blocks = sessionPruneEveryBlocks + 4;
    for (let h = 1; h <= blocks; h++) {
      const p: ClientRequest[] = [];
      if (h === 1) p.push(put("stranger", 7, "L0.E0"), put("a", 1, "L0.E1"));
      if (h === 2) p.push(put("b", 1, "L0.E2"));
      if (h === 3) p.push(put("c", 1, "L0.E3"));
      if (h === sessionPruneEveryBlocks + 1) p.push(put("a", 2, "L0.E1"), put("c", 2, "L0.E3"));
      payloads.push(p);
    }
    const replies = runChain(payloads, { sessionsMax: 2 }, 1_000); // nobody idle for an hour
    const of = (id: string, seq: number) =>
      replies.filter((m) => m.clientId === id && m.seq === seq).map((m) => m.result);
    assert.deepEqual(of("stranger", 7), [{ ok: false, error: sessionExpiredError }]);
    assert.deepEqual(of("a", 2), [{ ok: false, error: sessionExpiredError }], "a was least recent");
    assert.deepEqual(of("c", 2), [{ ok: true }]);
  });
});

describe("RegistryClient after an expired session", () => {
  it("returns the error for that call and continues under a new client id from seq 1", async () => {
    // Five fake coordinators: requests under the original id get "session expired", others ok.
    const seen = new Set<string>();
    const servers: Server[] = [];
    const sockets: Socket[] = [];
    for (let i = 0; i < replicaCount; i++) {
      const server = createServer((s) => {
        sockets.push(s);
        const reader = new FrameReader(messageBytesMax);
        s.on("data", (chunk: Buffer) => {
          for (const f of reader.push(chunk).frames) {
            const d = decodeWith(clientFrame, f);
            if (!d.ok || d.value.type !== "request") continue;
            const { clientId, seq } = d.value.request;
            seen.add(`${clientId}#${seq}`);
            writeFrame(
              s,
              encodeMessage({
                type: "reply",
                clientId,
                seq,
                replica: i,
                height: 1,
                result:
                  clientId === "node-ORD-0"
                    ? { ok: false, error: sessionExpiredError }
                    : { ok: true },
              }),
            );
          }
        });
        s.on("error", () => s.destroy());
      });
      server.listen(0, "127.0.0.1");
      await once(server, "listening");
      servers.push(server);
    }
    const client = new RegistryClient({
      endpoints: servers.map((s) => ({
        host: "127.0.0.1",
        port: (s.address() as { port: number }).port,
      })),
      clientId: "node-ORD-0",
      retryMs: 200,
      deadlineMs: 5_000,
    });
    try {
      const r1 = await client.request({ kind: "heartbeat", nodeId: "n0" });
      assert.deepEqual(r1, { ok: false, error: sessionExpiredError });
      assert.match(client.clientId, /^node-ORD-0-r[0-9a-f]{16}$/);
      const r2 = await client.request({ kind: "heartbeat", nodeId: "n0" });
      assert.deepEqual(r2, { ok: true });
      // Retransmissions aside, exactly these two requests were sent.
      assert.deepEqual([...seen].sort(), [`${client.clientId}#1`, "node-ORD-0#1"].sort());
    } finally {
      client.close();
      for (const s of sockets) s.destroy();
      for (const s of servers) s.close();
    }
  });
});
