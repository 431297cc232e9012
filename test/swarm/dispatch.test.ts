import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import type { ExpertId } from "../../src/model/expert.ts";
import { NoReplicaError } from "../../src/swarm/errors.ts";
import { LatencyWindow } from "../../src/swarm/latency-window.ts";
import { placementFromJson, planPlacement } from "../../src/swarm/placement.ts";
import { directLinks, type RegionLinks } from "../../src/swarm/region-links.ts";
import { RemoteExpertHost } from "../../src/swarm/remote-expert-host.ts";
import { LocalSwarm, randn } from "./fixtures/local-swarm.ts";
import { TinyFfnHost } from "./fixtures/tiny-ffn.ts";

const d = 8;
const h = 8;
const regions = ["ORD", "IAD", "SJC", "AMS", "SYD"];
const experts: ExpertId[] = Array.from({ length: 5 }, (_, e) => ({ layer: 0, expert: e }));

let swarm: LocalSwarm | undefined;
let dispatcher: RemoteExpertHost | undefined;
afterEach(async () => {
  dispatcher?.close();
  await swarm?.close();
  swarm = undefined;
  dispatcher = undefined;
});

async function setup(links: RegionLinks = directLinks, hedging = true) {
  swarm = new LocalSwarm(d, h, 5, links);
  const placement = await swarm.start(planPlacement(experts, regions, 1, 3));
  dispatcher = new RemoteExpertHost({
    registry: placement,
    region: "ORD",
    dModel: d,
    links,
    hedging,
  });
  return { swarm, dispatcher, reference: new TinyFfnHost(d, h, experts, 5) };
}

describe("placement", () => {
  it("puts each expert on 3 nodes in distinct regions, evenly", () => {
    const plan = planPlacement(
      Array.from({ length: 20 }, (_, e) => ({ layer: 1, expert: e })),
      regions,
      2,
      3,
    );
    const byExpert = new Map<number, string[]>();
    for (const n of plan)
      for (const id of n.experts)
        byExpert.set(id.expert, [...(byExpert.get(id.expert) ?? []), n.region]);
    for (const [e, rs] of byExpert) {
      assert.equal(rs.length, 3, `expert ${e}`);
      assert.equal(new Set(rs).size, 3, `expert ${e} regions ${rs}`);
    }
    const loads = plan.map((n) => n.experts.length);
    assert.ok(Math.max(...loads) - Math.min(...loads) <= 1, `loads ${loads}`);
    assert.throws(() => planPlacement(experts, ["ORD", "IAD"], 1, 3), /entanglement_pairs \(3\)/);
  });

  it("a placement file is validated and errors name the entry", () => {
    assert.throws(
      () =>
        placementFromJson({
          nodes: [{ nodeId: "a", region: "ord", host: "h", port: 1, experts: [] }],
        }),
      /nodes\.0\.region/,
    );
    assert.throws(
      () =>
        placementFromJson({
          nodes: [{ nodeId: "a", region: "ORD", host: "h", port: 1, experts: ["E1"] }],
        }),
      /nodes\.0\.experts\.0/,
    );
    const p = placementFromJson({
      nodes: [{ nodeId: "a", region: "ORD", host: "h", port: 9, experts: ["L2.E3"] }],
    });
    assert.equal(p.replicas({ layer: 2, expert: 3 })[0]?.port, 9);
  });
});

describe("latency window", () => {
  it("quantiles by nearest rank over the last samples", () => {
    const w = new LatencyWindow();
    for (let i = 1; i <= 100; i++) w.record(i);
    assert.equal(w.count, 64);
    assert.equal(w.quantile(0.5), 68); // samples 37..100
    assert.equal(w.quantile(1), 100);
    assert.equal(w.quantile(0), 37);
  });
});

describe("RemoteExpertHost", () => {
  it("forward through the swarm equals the expert computed in-process", async () => {
    const { dispatcher, reference } = await setup();
    for (const id of experts) {
      const x = randn(id.expert, 4 * d);
      assert.deepEqual(await dispatcher.forward(id, x, 4), await reference.forward(id, x, 4));
    }
  });

  it("prefers the lowest-latency replica (emulated RTT before any sample)", async () => {
    const links: RegionLinks = {
      oneWayMs: (a, b) =>
        a === b ? 0 : a === "ORD" || b === "ORD" ? (a === "SYD" || b === "SYD" ? 40 : 10) : 20,
      bitsPerSecond: undefined,
    };
    const { dispatcher, swarm } = await setup(links, false);
    // expert 2 lives in SJC, AMS, SYD; from ORD, SJC and AMS cost 10 ms each way, SYD 40
    await dispatcher.forward({ layer: 0, expert: 2 }, randn(1, d), 1);
    const served = swarm.nodes.filter((n) => n.host.forwardCalls > 0).map((n) => n.plan.region);
    assert.equal(served.length, 1);
    assert.ok(["SJC", "AMS"].includes(served[0] as string), `served by ${served}`);
  });

  it("fails over when a node is stopped, marks it down, and recovers it when it is back", async () => {
    const { dispatcher, swarm, reference } = await setup();
    const id = { layer: 0, expert: 0 }; // ORD-0, IAD-0, SJC-0
    const x = randn(9, 2 * d);
    await dispatcher.forward(id, x, 2);
    const first = swarm.nodes.find((n) => n.host.forwardCalls > 0)?.plan.nodeId as string;
    await swarm.stop(first);
    assert.deepEqual(await dispatcher.forward(id, x, 2), await reference.forward(id, x, 2));
    assert.ok(dispatcher.counters.failovers >= 1);
    assert.equal(dispatcher.nodeStats().find((s) => s.nodeId === first)?.healthy, false);
    await swarm.restart(first);
    for (
      let i = 0;
      i < 100 && !dispatcher.nodeStats().find((s) => s.nodeId === first)?.healthy;
      i++
    )
      await new Promise((r) => setTimeout(r, 20));
    assert.equal(dispatcher.nodeStats().find((s) => s.nodeId === first)?.healthy, true);
    assert.ok(dispatcher.counters.nodesRecovered >= 1);
  });

  it("with every replica down the call fails with a clear error", async () => {
    const { dispatcher, swarm } = await setup();
    for (const n of ["ORD-0", "IAD-0", "SJC-0"]) await swarm.stop(n);
    await assert.rejects(
      dispatcher.forward({ layer: 0, expert: 0 }, randn(1, d), 1),
      (e: NoReplicaError) => /expert L0\.E0: no replica answered \(3 attempts/.test(e.message),
    );
  });

  it("hedges a slow replica to a second one and the hedge wins", async () => {
    const { dispatcher, swarm, reference } = await setup();
    const id = { layer: 0, expert: 1 };
    const x = randn(3, d);
    for (let i = 0; i < 12; i++) await dispatcher.forward(id, x, 1); // learn latencies
    // The first node each call goes to (a hedge goes to another one after it).
    let first: string | undefined;
    swarm.onFrame = (nodeId, f) => {
      if (f.op === 1) first ??= nodeId;
    };
    await dispatcher.forward(id, x, 1);
    // On a loaded machine a learning call may have been hedged, and measured latency may then
    // reorder the replicas: slow the one the last call went to first, and if the next call goes
    // elsewhere, try again with that one.
    let exercised = false;
    for (let attempt = 0; attempt < 5 && !exercised; attempt++) {
      const primary = first as string;
      first = undefined;
      swarm.get(primary).host.delayMs = 300; // it becomes slow, not dead
      const { hedges, hedgeWins } = dispatcher.counters;
      const y = await dispatcher.forward(id, x, 1);
      swarm.get(primary).host.delayMs = 0;
      assert.deepEqual(y, await reference.forward(id, x, 1));
      if (first !== primary) continue;
      exercised = true;
      assert.equal(dispatcher.counters.hedges - hedges, 1);
      assert.equal(dispatcher.counters.hedgeWins - hedgeWins, 1);
    }
    assert.ok(exercised, "no call in 5 went first to the slowed replica");
  });

  it("training through replicas: same gradients, norm and updated weights as in-process; replicas stay identical", async () => {
    const { dispatcher, swarm, reference } = await setup();
    const ids = experts.slice(0, 3);
    for (let step = 1; step <= 2; step++) {
      for (const id of ids) {
        const x = randn(step * 10 + id.expert, 3 * d);
        const dy = randn(step * 20 + id.expert, 3 * d);
        assert.deepEqual(
          await dispatcher.backward(id, x, dy, 3),
          await reference.backward(id, x, dy, 3),
        );
      }
      const norm = await dispatcher.gradSquaredNorm(ids);
      const want = await reference.gradSquaredNorm(ids);
      assert.ok(Math.abs(norm - want) <= 1e-12 * want, `norm ${norm} vs ${want}`); // summed per node
      const update = { step, learningRate: 0.05, gradScale: 0.5 };
      await dispatcher.applyUpdate(ids, update);
      await reference.applyUpdate(ids, update);
    }
    const x = randn(99, 2 * d);
    for (const id of ids) {
      const want = await reference.forward(id, x, 2);
      for (const n of swarm.nodes.filter((n) => n.plan.experts.some((e) => e.expert === id.expert)))
        assert.deepEqual(await n.host.forward(id, x, 2), want, `${n.plan.nodeId} L0.E${id.expert}`);
    }
  });

  it("a replica that missed an update is stale and never read again", async () => {
    const { dispatcher, swarm, reference } = await setup();
    const id = { layer: 0, expert: 0 }; // ORD-0, IAD-0, SJC-0
    const x = randn(5, d);
    await swarm.stop("SJC-0");
    await dispatcher.backward(id, x, randn(6, d), 1);
    await dispatcher.applyUpdate([id], { step: 1, learningRate: 0.1, gradScale: 1 });
    await reference.backward(id, x, randn(6, d), 1);
    await reference.applyUpdate([id], { step: 1, learningRate: 0.1, gradScale: 1 });
    await swarm.restart("SJC-0"); // back with its initial weights
    await swarm.stop("ORD-0");
    await swarm.stop("IAD-0");
    await assert.rejects(dispatcher.forward(id, x, 1), NoReplicaError);
    await swarm.restart("IAD-0"); // also initial weights: version 0 < 1
    await assert.rejects(dispatcher.forward(id, x, 1), /stale|no replica/);
    assert.ok(dispatcher.counters.staleReplicas >= 1);
    void reference;
  });
});

describe("adaptive deadlines", () => {
  it("a node that stops answering is abandoned after a multiple of its measured p99, not a fixed timeout", async () => {
    const { dispatcher, swarm, reference } = await setup(directLinks, false);
    const id = { layer: 0, expert: 3 };
    const x = randn(4, d);
    for (let i = 0; i < 16; i++) await dispatcher.forward(id, x, 1); // learn: answers take ~1 ms
    const primary = swarm.nodes.find((n) => n.host.forwardCalls > 0);
    if (!primary) throw new Error("no primary");
    primary.host.delayMs = 2500; // hangs beyond the adaptive deadline
    assert.deepEqual(await dispatcher.forward(id, x, 1), await reference.forward(id, x, 1));
    const stats = dispatcher.nodeStats().find((s) => s.nodeId === primary.plan.nodeId);
    const m = /did not answer within (\d+) ms/.exec(stats?.lastError ?? "");
    assert.ok(m, `deadline error recorded: ${stats?.lastError}`);
    assert.ok(Number(m[1]) < 2000, `adaptive deadline ${m[1]} ms is below the 2000 ms prior`);
    assert.equal(stats?.healthy, false);
    primary.host.delayMs = 0;
  });
});

describe("hedging across regions", () => {
  it("a straggler near replica is hedged to one in another region, and the hedge wins", async () => {
    // ORD-0 is in the gateway's region; the other replicas of L0.E0 are 5 ms away one way.
    const links: RegionLinks = { oneWayMs: (a, b) => (a === b ? 0 : 5), bitsPerSecond: undefined };
    const { dispatcher, swarm, reference } = await setup(links);
    const id = { layer: 0, expert: 0 }; // ORD-0, IAD-0, SJC-0
    const x = randn(21, d);
    for (let i = 0; i < 12; i++) await dispatcher.forward(id, x, 1); // learn: ORD-0 answers in ~1 ms
    const ord = swarm.get("ORD-0");
    assert.ok(ord.host.forwardCalls >= 12, "the near replica serves");
    ord.host.delayMs = 400; // a straggler, far slower than a round trip to another region
    const { hedges, hedgeWins } = dispatcher.counters;
    assert.deepEqual(await dispatcher.forward(id, x, 1), await reference.forward(id, x, 1));
    // The first rule hedged only to a replica expected within the near one's p95 (~1 ms): never
    // to one 10 ms away.
    assert.equal(dispatcher.counters.hedges - hedges, 1);
    assert.equal(dispatcher.counters.hedgeWins - hedgeWins, 1);
    ord.host.delayMs = 0;
  });

  it("a call slower than its node's p95 is hedged even to a replica farther away than that", async () => {
    // The other replicas are 50 ms away (round trip); the near one straggles for 30 ms, within its
    // attempt deadline (50 ms floor). The rule before hedged only after the farther replica's
    // whole expected latency (≥ 50 ms: never); a node killed but not yet closed by the kernel
    // kept its calls that long.
    const links: RegionLinks = { oneWayMs: (a, b) => (a === b ? 0 : 25), bitsPerSecond: undefined };
    const { dispatcher, swarm, reference } = await setup(links);
    const id = { layer: 0, expert: 0 }; // ORD-0, IAD-0, SJC-0
    const x = randn(22, d);
    for (let i = 0; i < 12; i++) await dispatcher.forward(id, x, 1); // learn: ORD-0 answers in ~1 ms
    const ord = swarm.get("ORD-0");
    ord.host.delayMs = 30;
    const { hedges } = dispatcher.counters;
    assert.deepEqual(await dispatcher.forward(id, x, 1), await reference.forward(id, x, 1));
    assert.equal(dispatcher.counters.hedges - hedges, 1);
    ord.host.delayMs = 0;
  });
});

describe("hedge delay by frame size", () => {
  it("a small frame is hedged after the p95 of small frames, not of the node's larger ones", async () => {
    const { dispatcher, swarm, reference } = await setup();
    const id = { layer: 0, expert: 0 };
    const small = randn(31, d);
    const large = randn(32, 150 * d);
    for (let i = 0; i < 4; i++) await dispatcher.forward(id, small, 1);
    const primary = swarm.nodes.filter((n) => n.host.forwardCalls > 0);
    assert.equal(primary.length, 1, "without slowness one replica serves everything");
    const node = primary[0] as (typeof primary)[0];
    // Learn: 150-row frames take 150 ms (1 ms per row) on every replica, so the primary's answer
    // is the one recorded; they are 10 of the window's 64 samples, more than 5%: the primary's
    // p95 over all its frames is ~150 ms, that of its 1-row frames ~1 ms.
    for (const n of swarm.nodes) n.host.delayMsPerToken = 1;
    for (let i = 0; i < 10; i++) await dispatcher.forward(id, large, 150);
    for (const n of swarm.nodes) n.host.delayMsPerToken = 0;
    for (let i = 0; i < 50; i++) await dispatcher.forward(id, small, 1);
    // A 1-row frame that straggles for 100 ms: past the p95 of 1-row frames, within the node's
    // p95 over all frames; it is hedged only when judged against frames of its size.
    node.host.delayMs = 100;
    const { hedges, hedgeWins } = dispatcher.counters;
    assert.deepEqual(await dispatcher.forward(id, small, 1), await reference.forward(id, small, 1));
    node.host.delayMs = 0;
    assert.equal(dispatcher.counters.hedges - hedges, 1);
    assert.equal(dispatcher.counters.hedgeWins - hedgeWins, 1);
  });
});

describe("write deadlines", () => {
  it("an update slower than every forward keeps its replicas: writes have their own latency statistics", async () => {
    const { dispatcher, swarm, reference } = await setup(directLinks, false);
    const ids = experts.slice(0, 3);
    const x = randn(11, d);
    // Forward latencies are learned (~1 ms each, so 4 × p99 is far below every floor) ...
    for (let i = 0; i < 16; i++) for (const id of ids) await dispatcher.forward(id, x, 1);
    // ... and then every node's optimizer step takes longer than the write floor (1000 ms): only
    // the updates' own statistics (the prior until they have samples) give them time.
    for (const n of swarm.nodes) n.host.updateDelayMs = 1100;
    for (let step = 1; step <= 2; step++) {
      for (const id of ids) {
        await dispatcher.backward(id, x, randn(step, d), 1);
        await reference.backward(id, x, randn(step, d), 1);
      }
      const update = { step, learningRate: 0.05, gradScale: 1 };
      await dispatcher.applyUpdate(ids, update);
      await reference.applyUpdate(ids, update);
    }
    assert.equal(dispatcher.counters.staleReplicas, 0, "no replica missed an update");
    assert.equal(dispatcher.counters.failovers, 0);
    assert.ok(dispatcher.nodeStats().every((n) => n.healthy));
    for (const id of ids) {
      const want = await reference.forward(id, x, 1);
      for (const n of swarm.nodes.filter((n) => n.plan.experts.some((e) => e.expert === id.expert)))
        assert.deepEqual(await n.host.forward(id, x, 1), want, `${n.plan.nodeId} L0.E${id.expert}`);
    }
  });
});

describe("emulated link rate", () => {
  it("messages on one link are serialised at the configured rate, in order", async () => {
    const { LinkShaper } = await import("../../src/swarm/region-links.ts");
    const shaper = new LinkShaper(5, 1_000_000); // 5 ms one way, 1 Mbit/s
    const t0 = performance.now();
    const arrivals: number[] = [];
    await new Promise<void>((resolve) => {
      for (let i = 0; i < 3; i++)
        shaper.send(1250, () => {
          arrivals.push(performance.now() - t0);
          if (arrivals.length === 3) resolve();
        }); // 1250 B = 10 ms at 1 Mbit/s
    });
    // k-th message: k × 10 ms of serialisation + 5 ms of delay (timers never fire early by > 1 ms)
    for (const [k, at] of arrivals.entries())
      assert.ok(at >= (k + 1) * 10 + 5 - 1, `message ${k} at ${at.toFixed(1)} ms`);
    assert.deepEqual(
      [...arrivals].sort((a, b) => a - b),
      arrivals,
    );
  });
});

describe("caller cancellation", () => {
  it("an aborted call stops at once: no failover, no node marked down", async () => {
    const { dispatcher, swarm } = await setup(directLinks, false);
    const id = { layer: 0, expert: 4 };
    const x = randn(8, d);
    await dispatcher.forward(id, x, 1);
    for (const n of swarm.nodes) n.host.delayMs = 300;
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("client went away")), 20);
    await assert.rejects(
      dispatcher.forward(id, x, 1, { signal: controller.signal }),
      /client went away/,
    );
    assert.equal(dispatcher.counters.failovers, 0);
    assert.ok(dispatcher.nodeStats().every((s) => s.healthy));
    for (const n of swarm.nodes) n.host.delayMs = 0;
  });

  it("past the caller's deadline no further replica is tried", async () => {
    const { dispatcher } = await setup(directLinks, false);
    await assert.rejects(
      dispatcher.forward({ layer: 0, expert: 0 }, randn(1, d), 1, { deadlineMs: Date.now() - 1 }),
      NoReplicaError,
    );
    assert.equal(dispatcher.counters.failovers, 0);
  });
});

describe("grouped dispatch rounds", () => {
  /** One dispatch round: a forward call for every expert in the same turn, as an MoE layer makes. */
  const round = (dispatcher: RemoteExpertHost, seed: number) =>
    Promise.all(experts.map((id) => dispatcher.forward(id, randn(seed + id.expert, 2 * d), 2)));
  const want = (reference: TinyFfnHost, seed: number) =>
    Promise.all(experts.map((id) => reference.forward(id, randn(seed + id.expert, 2 * d), 2)));
  /** Forward frames each node receives. */
  const countFrames = (swarm: LocalSwarm) => {
    const frames = new Map<string, number>();
    swarm.onFrame = (nodeId, f) => {
      if (f.op === 1) frames.set(nodeId, (frames.get(nodeId) ?? 0) + 1);
    };
    return frames;
  };

  it("a round's calls go as one frame per node, on as few nodes as cover them; same results", async () => {
    const { dispatcher, swarm, reference } = await setup(directLinks, false);
    const frames = countFrames(swarm);
    assert.deepEqual(await round(dispatcher, 1), await want(reference, 1));
    // Expert i lives in regions i, i+1, i+2 (mod 5): two nodes cover all five experts.
    assert.equal(
      [...frames.values()].reduce((a, b) => a + b, 0),
      2,
      `frames ${[...frames]}`,
    );
    assert.equal(dispatcher.counters.groupFrames, 2);
    assert.equal(dispatcher.counters.groupedCalls, 5);
    assert.equal(dispatcher.counters.calls, 5);
  });

  it("a group whose node is gone: each of its calls fails over to a replica, none fails", async () => {
    const { dispatcher, swarm, reference } = await setup(directLinks, false);
    const frames = countFrames(swarm);
    await round(dispatcher, 1);
    const [victim] = [...frames.keys()];
    await swarm.stop(victim as string);
    assert.deepEqual(await round(dispatcher, 2), await want(reference, 2));
    assert.ok(dispatcher.counters.failovers >= 2, `failovers ${dispatcher.counters.failovers}`);
    assert.equal(dispatcher.counters.failedCalls, 0);
    assert.equal(dispatcher.nodeStats().find((n) => n.nodeId === victim)?.healthy, false);
  });

  it("a slow group's calls are hedged to other replicas, and the hedges win", async () => {
    const { dispatcher, swarm, reference } = await setup();
    for (let i = 0; i < 12; i++) await round(dispatcher, 1); // learn latencies
    const frames = countFrames(swarm);
    await round(dispatcher, 1);
    // The replica choice follows measured latency, which other load on the machine can reorder
    // between rounds: slow a node the last round used, and if this round avoids it, try the next.
    let exercised = false;
    for (let attempt = 0; attempt < 5 && !exercised; attempt++) {
      const [slow] = [...frames.keys()];
      const node = swarm.get(slow as string);
      const { hedges, hedgeWins } = dispatcher.counters;
      node.host.delayMs = 300; // slow, not dead
      frames.clear();
      const t0 = performance.now();
      assert.deepEqual(await round(dispatcher, 3), await want(reference, 3));
      const ms = performance.now() - t0;
      node.host.delayMs = 0;
      if (!frames.has(slow as string)) continue;
      exercised = true;
      assert.ok(dispatcher.counters.hedges - hedges >= 1, "hedged");
      assert.ok(dispatcher.counters.hedgeWins - hedgeWins >= 1, "a hedge answered first");
      assert.ok(ms < 300, `the round took ${ms.toFixed(0)} ms; the slow node needs 300`);
    }
    assert.ok(exercised, "no round in 5 used the slowed node");
  });
});

describe("grouped hedges", () => {
  const round = (dispatcher: RemoteExpertHost, seed: number) =>
    Promise.all(experts.map((id) => dispatcher.forward(id, randn(seed + id.expert, 2 * d), 2)));
  const want = (reference: TinyFfnHost, seed: number) =>
    Promise.all(experts.map((id) => reference.forward(id, randn(seed + id.expert, 2 * d), 2)));

  it("a slow group is hedged in one frame per replica node, not one frame per call", async () => {
    const { dispatcher, swarm, reference } = await setup();
    for (let i = 0; i < 12; i++) await round(dispatcher, 1); // learn latencies
    // The groups of the last round, and the frames that carry only a slowed group's experts to
    // other nodes: its hedges.
    let groups = new Map<string, string[]>();
    let slowGroup: { node: string; ids: string[] } | undefined;
    const hedgeFrames: string[][] = [];
    swarm.onFrame = (nodeId, f) => {
      if (f.op !== 1) return;
      const ids = f.ids.map((e) => `${e.expert}`);
      if (!groups.has(nodeId)) groups.set(nodeId, ids);
      if (slowGroup && nodeId !== slowGroup.node && ids.every((e) => slowGroup?.ids.includes(e)))
        hedgeFrames.push(ids);
    };
    await round(dispatcher, 1);
    // As above, other load can reorder the replica choice between rounds: if this round does not
    // send the slowed node the same group, try again with the new round's largest group.
    let exercised = false;
    for (let attempt = 0; attempt < 5 && !exercised; attempt++) {
      const [slow, slowIds] = [...groups].sort((a, b) => b[1].length - a[1].length)[0] as [
        string,
        string[],
      ];
      assert.ok(slowIds.length >= 3, `largest group ${slowIds}`); // 2 nodes cover the 5 experts
      slowGroup = { node: slow, ids: slowIds };
      groups = new Map();
      hedgeFrames.length = 0;
      swarm.get(slow).host.delayMs = 300; // slow, not dead
      const { hedges } = dispatcher.counters;
      assert.deepEqual(await round(dispatcher, 3), await want(reference, 3));
      swarm.get(slow).host.delayMs = 0;
      slowGroup = undefined;
      if (groups.get(slow)?.join() !== slowIds.join()) continue;
      exercised = true;
      // Every call of the group is hedged (other calls may be too, when the machine is loaded).
      assert.ok(dispatcher.counters.hedges - hedges >= slowIds.length, "every call of the group");
      assert.deepEqual(new Set(hedgeFrames.flat()), new Set(slowIds), "each expert hedged");
      assert.ok(
        hedgeFrames.length < slowIds.length,
        `${slowIds.length} hedged calls went in ${hedgeFrames.length} frames: ${JSON.stringify(hedgeFrames)}`,
      );
    }
    assert.ok(exercised, "no round in 5 sent the slowed node the same group");
  });

  it("each call of a grouped hedge is reported to the observer and ended once, won or lost", async () => {
    swarm = new LocalSwarm(d, h, 5, directLinks);
    const placement = await swarm.start(planPlacement(experts, regions, 1, 3));
    // Only the hedges of the measured round count: on a loaded machine a learning round may hedge
    // too, and its hedges may end during the measured one.
    const ended: string[] = [];
    let started = 0;
    let measuring = false;
    dispatcher = new RemoteExpertHost({
      registry: placement,
      region: "ORD",
      dModel: d,
      observer: {
        hedgeStarted: () => {
          const counted = measuring;
          if (counted) started++;
          let ends = 0;
          return {
            traceparent: undefined,
            end: (outcome) => {
              if (counted) ended.push(++ends === 1 ? outcome : `${outcome} (ended twice)`);
            },
          };
        },
      },
    });
    const reference = new TinyFfnHost(d, h, experts, 5);
    for (let i = 0; i < 12; i++) await round(dispatcher, 1); // learn latencies
    const sizes = new Map<string, number>();
    swarm.onFrame = (nodeId, f) => {
      if (f.op === 1) sizes.set(nodeId, f.ids.length);
    };
    await round(dispatcher, 1);
    const [slow] = [...sizes].sort((a, b) => b[1] - a[1])[0] as [string, number];
    swarm.get(slow).host.delayMs = 300;
    measuring = true;
    assert.deepEqual(await round(dispatcher, 4), await want(reference, 4));
    swarm.get(slow).host.delayMs = 0;
    assert.ok(started >= 2, `hedges started ${started}`);
    // The slow group's own answers come later (later still on a loaded machine): wait, bounded,
    // until every hedge has ended, then a little longer to see that none ends twice.
    for (const until = Date.now() + 5_000; ended.length < started && Date.now() < until; )
      await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(ended.length, started, `ended ${ended}`);
    assert.ok(ended.includes("won"), `outcomes ${ended}`);
  });
});

describe("coalescing", () => {
  it("same-turn forward calls for one expert go as one wire call; each caller gets its own rows", async () => {
    const { dispatcher, swarm, reference } = await setup(directLinks, false);
    const id = { layer: 0, expert: 2 };
    const inputs = Array.from({ length: 8 }, (_, i) => randn(100 + i, (1 + (i % 3)) * d));
    const before = swarm.nodes.reduce((s, n) => s + n.host.forwardCalls, 0);
    const got = await Promise.all(inputs.map((x) => dispatcher.forward(id, x, x.length / d)));
    for (const [i, x] of inputs.entries())
      assert.deepEqual(got[i], await reference.forward(id, x, x.length / d));
    assert.equal(dispatcher.counters.coalescedCalls, 7);
    assert.equal(
      swarm.nodes.reduce((s, n) => s + n.host.forwardCalls, 0) - before,
      1,
      "one expert call on the nodes",
    );
  });

  it("a caller that aborted is answered alone; the others still get their rows", async () => {
    const { dispatcher, reference } = await setup(directLinks, false);
    const id = { layer: 0, expert: 1 };
    const gone = new AbortController();
    gone.abort(new Error("went away"));
    const x = randn(7, d);
    const [a, b] = await Promise.allSettled([
      dispatcher.forward(id, x, 1, { signal: gone.signal }),
      dispatcher.forward(id, x, 1),
    ]);
    assert.equal(a.status, "rejected");
    assert.deepEqual(
      b.status === "fulfilled" ? b.value : undefined,
      await reference.forward(id, x, 1),
    );
  });
});
