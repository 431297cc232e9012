// Node membership in the replicated registry: expiry by committed block time (deterministic: two
// state machines fed the same operations and block times agree byte for byte), revival by a
// heartbeat, the TTL setting and its bounds, old snapshots without a TTL; the placement view leaves
// expired nodes out; a node's heartbeat loop retries through registry failures and re-registers
// when it was deregistered; replica status keeps bounded evidence.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { evidenceLines } from "../../src/cli/commands/coordinator.ts";
import { loadConfig } from "../../src/config/load.ts";
import type { RegistryClient } from "../../src/consensus/client.ts";
import { type MembershipClient, NodeHeartbeat } from "../../src/consensus/node-heartbeat.ts";
import { RegistryPlacementView } from "../../src/consensus/placement-view.ts";
import {
  nodeTtlMsDefault,
  type RegistryResult,
  type RegistryState,
  RegistryStateMachine,
} from "../../src/consensus/registry.ts";
import { runSimulation } from "../../src/consensus/sim/simulation.ts";
import { canonicalJson } from "../../src/consensus/types.ts";
import { CoordinatorMetrics } from "../../src/observe/coordinator-metrics.ts";

const register = (nodeId: string) => ({
  kind: "register_node" as const,
  nodeId,
  region: "ORD",
  gpuType: "a10" as const,
  address: `127.0.0.1:${7000 + nodeId.length}`,
});

describe("node expiry in the registry", () => {
  it("expires a node whose heartbeat is older than the TTL at a committed block time; a heartbeat revives it", () => {
    const sm = new RegistryStateMachine();
    assert.deepEqual(sm.apply(register("a"), 1_000), { ok: true });
    assert.deepEqual(sm.apply(register("b"), 1_000), { ok: true });
    sm.apply({ kind: "heartbeat", nodeId: "b" }, 10_000);
    // At exactly the TTL the node is still live; one millisecond later it is expired.
    sm.apply({ kind: "list_nodes" }, 1_000 + nodeTtlMsDefault);
    assert.equal(sm.snapshot().nodes.a?.expiredAtMs, undefined);
    sm.apply({ kind: "list_nodes" }, 1_001 + nodeTtlMsDefault);
    assert.equal(sm.snapshot().nodes.a?.expiredAtMs, 1_001 + nodeTtlMsDefault);
    assert.equal(sm.snapshot().nodes.b?.expiredAtMs, undefined);
    // The read that found it expired already says so.
    const got = sm.apply({ kind: "get_node", nodeId: "a" }, 20_000) as {
      ok: true;
      value: { expiredAtMs?: number };
    };
    assert.equal(got.value.expiredAtMs, 1_001 + nodeTtlMsDefault);
    sm.apply({ kind: "heartbeat", nodeId: "a" }, 30_000);
    assert.equal(sm.snapshot().nodes.a?.expiredAtMs, undefined);
    assert.equal(sm.snapshot().nodes.a?.lastHeartbeatMs, 30_000);
    // b's last heartbeat was at 10 s: expired by the same operation.
    assert.equal(sm.snapshot().nodes.b?.expiredAtMs, 30_000);
  });

  it("is deterministic: the same operations at the same block times give identical states", () => {
    const ops: [unknown, number][] = [
      [register("n1"), 0],
      [register("n2"), 5],
      [{ kind: "set_node_ttl", ttlMs: 1_000 }, 10],
      [{ kind: "heartbeat", nodeId: "n1" }, 900],
      [{ kind: "get_registry" }, 1_011],
      [{ kind: "set_placement", expert: "L0.E0", nodeIds: ["n1", "n2"] }, 1_500],
      [{ kind: "heartbeat", nodeId: "n2" }, 1_600],
      [{ kind: "list_nodes" }, 2_000],
    ];
    const run = () => {
      const sm = new RegistryStateMachine();
      const results = ops.map(([op, t]) => sm.apply(op, t));
      return canonicalJson({ state: sm.snapshot(), results });
    };
    assert.equal(run(), run());
    const sm = new RegistryStateMachine();
    for (const [op, t] of ops) sm.apply(op, t);
    const s = sm.snapshot();
    assert.equal(s.nodeTtlMs, 1_000);
    assert.equal(s.nodes.n1?.expiredAtMs, 2_000); // last heartbeat 900 + 1,000 < 2,000
    assert.equal(s.nodes.n2?.expiredAtMs, undefined); // revived at 1,600
    // Expiry never edits the placement: the view decides what to offer.
    assert.deepEqual(s.placements["L0.E0"], ["n1", "n2"]);
  });

  it("refuses a TTL out of bounds and restores snapshots written before the TTL existed", () => {
    const sm = new RegistryStateMachine();
    const r = sm.apply({ kind: "set_node_ttl", ttlMs: 5 }, 0) as RegistryResult;
    assert.equal(r.ok, false);
    assert.match(r.ok ? "" : r.error, /ttlMs/);
    const old = sm.snapshot() as Partial<RegistryState>;
    delete old.nodeTtlMs;
    const restored = new RegistryStateMachine();
    restored.restore(old as RegistryState);
    assert.equal(restored.snapshot().nodeTtlMs, nodeTtlMsDefault);
  });
});

describe("placement view and expired nodes", () => {
  function viewOf(state: RegistryState): RegistryPlacementView {
    const client = {
      getRegistry: async () => ({ ok: true, value: state }) as RegistryResult,
    } as unknown as RegistryClient;
    return new RegistryPlacementView(client);
  }

  it("does not offer expired nodes, unless every replica of an expert is expired", async () => {
    const sm = new RegistryStateMachine();
    for (const id of ["n1", "n2", "n3"]) sm.apply(register(id), 0);
    sm.apply({ kind: "set_node_ttl", ttlMs: 1_000 }, 0);
    sm.apply({ kind: "set_placement", expert: "L0.E0", nodeIds: ["n1", "n2"] }, 0);
    sm.apply({ kind: "set_placement", expert: "L0.E1", nodeIds: ["n3"] }, 0);
    sm.apply({ kind: "heartbeat", nodeId: "n2" }, 1_500);
    sm.apply({ kind: "list_nodes" }, 2_001); // n1, n3 expired; n2 live
    const view = viewOf(sm.snapshot());
    await view.refresh();
    assert.deepEqual(view.expiredNodeIds(), ["n1", "n3"]);
    assert.deepEqual(
      view.replicas({ layer: 0, expert: 0 }).map((n) => n.nodeId),
      ["n2"],
    );
    assert.deepEqual(
      view.nodes().map((n) => n.nodeId),
      ["n2"],
    );
    // All replicas expired: offered anyway (a stale registry must not take the expert down).
    assert.deepEqual(
      view.replicas({ layer: 0, expert: 1 }).map((n) => n.nodeId),
      ["n3"],
    );
    // A heartbeat revives n1.
    sm.apply({ kind: "heartbeat", nodeId: "n1" }, 2_100);
    const revived = viewOf(sm.snapshot());
    await revived.refresh();
    assert.deepEqual(
      revived.replicas({ layer: 0, expert: 0 }).map((n) => n.nodeId),
      ["n1", "n2"],
    );
  });
});

describe("a node's own heartbeat loop", () => {
  it("registers, heartbeats, retries through failures and re-registers after a deregistration", async () => {
    const calls: string[] = [];
    const logs: string[] = [];
    let failNext = 1;
    let known = false;
    const client: MembershipClient = {
      registerNode: async (nodeId: string) => {
        calls.push(`register ${nodeId}`);
        if (failNext > 0) {
          failNext -= 1;
          throw new Error("registry register_node: no f+1 matching replies within 10 ms");
        }
        known = true;
        return { ok: true };
      },
      heartbeat: async (nodeId: string) => {
        calls.push(`heartbeat ${nodeId}`);
        return known
          ? { ok: true }
          : { ok: false, error: `unknown node ${nodeId}: register it first` };
      },
    };
    const hb = new NodeHeartbeat({
      client,
      nodeId: "ORD-0",
      region: "ORD",
      gpuType: "a10",
      address: "127.0.0.1:9",
      heartbeatMs: 50,
      log: (l) => logs.push(l),
    });
    assert.equal(await hb.start(), false, "the first registration failed");
    const until = async (pred: () => boolean) => {
      const end = Date.now() + 5_000;
      while (!pred() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
      assert.ok(pred());
    };
    await until(() => hb.status().registered && hb.status().heartbeatsOk >= 3);
    known = false; // deregistered behind its back
    await until(() => calls.filter((c) => c.startsWith("register")).length >= 3);
    await until(() => known && hb.status().registered);
    hb.stop();
    const n = calls.length;
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(calls.length, n, "no call after stop");
    assert.ok(logs.some((l) => /registration failed \(1 in a row/.test(l)));
    assert.ok(logs.some((l) => /unknown node ORD-0/.test(l)));
    assert.ok(hb.status().failures >= 2);
    assert.throws(
      () =>
        new NodeHeartbeat({
          client,
          nodeId: "x",
          region: "ORD",
          gpuType: "a10",
          address: "h:1",
          heartbeatMs: 1,
          log: () => {},
        }),
      /heartbeat interval: expected an integer ≥ 50 ms; got 1/,
    );
  });
});

describe("evidence in replica status", () => {
  it("counts evidence per accused replica and keeps the latest records (Byzantine ORD equivocating)", () => {
    const r = runSimulation({ seed: 3, byzantine: { id: 0, behaviours: ["equivocate"] } });
    assert.deepEqual(r.violations, []);
    const honest = r.finalStatus.filter((s, i) => s !== undefined && i !== 0);
    const withEvidence = honest.filter((s) => (s?.evidenceByReplica[0] ?? 0) > 0);
    assert.ok(withEvidence.length > 0, "some honest replica saw the equivocation");
    for (const s of withEvidence) {
      assert.ok(s);
      assert.equal(
        s.evidenceByReplica.reduce((a, b) => a + b, 0),
        s.evidenceTotal,
      );
      assert.ok(s.evidence.length > 0 && s.evidence.length <= 32);
      assert.ok(s.evidence.every((e) => e.against === 0 && e.region === "ORD"));
      assert.match(s.evidence[0]?.reason ?? "", /equivocation/);
    }
    // `moe-swarm coordinator status` prints it under the status line.
    const st = withEvidence[0] as unknown as Record<string, unknown>;
    const lines = evidenceLines(st);
    assert.match(
      lines[0] ?? "",
      new RegExp(`^evidence: ${st.evidenceTotal} \\(against ORD \\d+\\)$`),
    );
    assert.match(lines[1] ?? "", /^ {2}view \d+, against ORD: equivocation/);
    assert.deepEqual(evidenceLines({ evidenceTotal: 0 }), []);
  });

  it("is counted on the coordinator's /metrics by accused region", async () => {
    const { config } = loadConfig();
    const m = new CoordinatorMetrics({
      config,
      region: "IAD",
      source: {
        status: () => ({ view: 1, committedHeight: 1, leaderRegion: "ORD", roundsTotal: 1 }),
        walFsyncs: () => 0,
      },
    });
    m.event({ kind: "evidence", against: 0, reason: "equivocation: two proposals in round 4" });
    m.event({ kind: "evidence", against: 0, reason: "conflicting votes in round 5" });
    m.event({ kind: "evidence", against: 3, reason: "checkpoint at height 8 signs block …" });
    const text = await m.metrics.exposition();
    assert.match(text, /moe_swarm_consensus_evidence_total\{[^}]*against="ORD"[^}]*\} 2/);
    assert.match(text, /moe_swarm_consensus_evidence_total\{[^}]*against="AMS"[^}]*\} 1/);
  });
});
