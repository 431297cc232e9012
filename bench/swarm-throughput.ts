// Swarm vs in-process: the same model (local profile, same weights) run (a) entirely in this
// process and (b) with its trunk here and its experts on expert nodes (child processes on
// loopback, 3 replicas per expert), for batch 1 and 32 without injected latency; then, with the
// emulated inter-region latency on, p99 with and without hedging; then the recovery time after
// kill -9 of a node (from the kill to the first request on its experts answered by a replica),
// with the time the kernel took to close the killed process's connections (it tears down the
// process's memory first: tens of ms for an expert node under load), hedges and failovers.
//   npx tsx bench/swarm-throughput.ts [iterations]

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { Prng } from "../src/common/prng.ts";
import { loadConfig } from "../src/config/load.ts";
import type { SwarmConfig } from "../src/config/schema.ts";
import { buildLocalModel, buildTrunk } from "../src/model/build.ts";
import type { ExpertId } from "../src/model/expert.ts";
import type { MoeTransformer } from "../src/model/transformer.ts";
import { type ChildNode, spawnNode, spawnPlan, stopChild } from "../src/swarm/child-nodes.ts";
import { planFromConfig, plannedEntries, StaticPlacement } from "../src/swarm/placement.ts";
import { regionLinksFromConfig } from "../src/swarm/region-links.ts";
import { RemoteExpertHost } from "../src/swarm/remote-expert-host.ts";
import { noGradAsync } from "../src/tensor/tensor.ts";

const iterations = Number(process.argv[2] ?? 20);
const T = 64;

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] as number;
}

/** Times `n` forwards of each model on the same inputs, alternating call by call so that both
 * see the same machine load (the machine is shared); 2 warm-up calls each. */
async function timeForward(
  models: readonly MoeTransformer[],
  B: number,
  n: number,
  seed: number,
): Promise<number[][]> {
  const rng = new Prng(seed);
  const times: number[][] = models.map(() => []);
  for (let i = 0; i < n + 2; i++) {
    const ids = Int32Array.from({ length: B * T }, () => rng.int(256));
    for (const [m, model] of models.entries()) {
      model.clearRoutingCaches(); // no cache hits: every call does the full work
      const t0 = performance.now();
      await noGradAsync(() => model.forward(ids, B, T));
      if (i >= 2) times[m]?.push(performance.now() - t0);
    }
  }
  return times;
}

async function startSwarm(configPath: string, cfg: SwarmConfig, hedging: boolean) {
  const plan = planFromConfig(cfg);
  const nodes: ChildNode[] = await spawnPlan(plan, () => ({ configPath }));
  const placement = new StaticPlacement(plannedEntries(nodes, plan));
  const host = new RemoteExpertHost({
    registry: placement,
    region: "ORD",
    dModel: cfg.model.d_model,
    links: regionLinksFromConfig(cfg),
    hedging,
  });
  return {
    nodes,
    host,
    placement,
    stop: async () => {
      host.close();
      await Promise.all(nodes.map((n) => stopChild(n.child)));
    },
  };
}

const dir = mkdtempSync(join(tmpdir(), "moe-swarm-bench-"));
try {
  const noLatency = join(dir, "no-latency.yaml");
  writeFileSync(noLatency, "profile: local\nswarm:\n  emulation:\n    enabled: false\n");
  const withLatency = join(dir, "latency.yaml");
  writeFileSync(withLatency, "profile: local\n");
  const cfg0 = loadConfig(noLatency).config;
  const cfgL = loadConfig(withLatency).config;

  console.log(
    `# model: local profile (d_model ${cfg0.model.d_model}, 3 MoE blocks, 26 experts), T=${T}, ${iterations} iterations, trunk on the TypeScript kernels (bench/swarm-batch1.ts: onnxruntime trunk); load average ${loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")}`,
  );
  const local = await buildLocalModel(cfg0);
  const swarm = await startSwarm(noLatency, cfg0, true);
  const trunk = buildTrunk(cfg0, swarm.host);
  console.log(
    "\n## forward latency, no injected latency (in-process vs swarm of 5 child-process nodes)",
  );
  console.log(
    "| batch | in-process p50 ms | p99 ms | tokens/s | swarm p50 ms | p99 ms | tokens/s | swarm/in-process time (p50) |",
  );
  console.log("|---|---|---|---|---|---|---|---|");
  for (const B of [1, 32]) {
    const [a, b] = (await timeForward([local.model, trunk], B, iterations, B)) as [
      number[],
      number[],
    ];
    const tps = (xs: number[]) => ((B * T) / (quantile(xs, 0.5) / 1000)).toFixed(0);
    console.log(
      `| ${B} | ${quantile(a, 0.5).toFixed(1)} | ${quantile(a, 0.99).toFixed(1)} | ${tps(a)} | ${quantile(b, 0.5).toFixed(1)} | ${quantile(b, 0.99).toFixed(1)} | ${tps(b)} | ${(quantile(b, 0.5) / quantile(a, 0.5)).toFixed(2)}× |`,
    );
  }
  await swarm.stop();
  await local.host.close();

  console.log(
    "\n## with the emulated inter-region latency (gateway in ORD), batch 1: hedging off vs on",
  );
  console.log("| hedging | p50 ms | p95 ms | p99 ms | hedges | hedge wins |");
  console.log("|---|---|---|---|---|---|");
  for (const hedging of [false, true]) {
    const s = await startSwarm(withLatency, cfgL, hedging);
    const model = buildTrunk(cfgL, s.host);
    const [xs] = (await timeForward([model], 1, iterations * 3, 5)) as [number[]];
    console.log(
      `| ${hedging ? "on" : "off"} | ${quantile(xs, 0.5).toFixed(1)} | ${quantile(xs, 0.95).toFixed(1)} | ${quantile(xs, 0.99).toFixed(1)} | ${s.host.counters.hedges} | ${s.host.counters.hedgeWins} |`,
    );
    await s.stop();
  }

  // Recovery: with the latency matrix on, the gateway (ORD) always reads ORD-0's experts from
  // ORD-0 (0 ms away; the other replicas are ≥ 9 ms one way), so after its kill -9 every answer
  // must come from a replica in another region. Measured: kill → first answer to a request issued
  // after the kill (so the figure includes one RTT to the nearest replica).
  console.log(
    "\n## recovery after kill -9 of the nearest node (latency on; 4 callers on its experts; node restarted between kills)",
  );
  const s = await startSwarm(withLatency, cfgL, true);
  const d = cfgL.model.d_model;
  const x = Float32Array.from({ length: 4 * d }, (_, i) => Math.sin(i));
  const victimId = "ORD-0";
  const experts = planFromConfig(cfgL).find((p) => p.nodeId === victimId)?.experts ?? [];
  const recoveries: number[] = [];
  let victim = s.nodes.find((n) => n.nodeId === victimId) as ChildNode;
  for (let round = 0; round < 3; round++) {
    let killedAt = Number.POSITIVE_INFINITY;
    let firstAfter = Number.NaN;
    let failed = 0;
    let stop = false;
    const worker = async (seed: number) => {
      const rng = new Prng(seed);
      while (!stop) {
        const id = experts[rng.int(experts.length)] as ExpertId;
        const issuedAt = performance.now();
        try {
          await s.host.forward(id, x, 4);
          // Only a request issued after the kill proves a replica served (an answer ORD-0 wrote
          // before it died can still arrive from the socket buffer).
          if (issuedAt >= killedAt && Number.isNaN(firstAfter)) firstAfter = performance.now();
        } catch {
          failed++;
        }
      }
    };
    const load = Promise.all([1, 2, 3, 4].map(worker));
    await new Promise((r) => setTimeout(r, 800));
    const failoversBefore = s.host.counters.failovers;
    const hedgesBefore = s.host.counters.hedges;
    // A connection of our own to the victim: when does the kernel close it after the kill?
    const probe = connect({ host: victim.host, port: victim.port });
    probe.on("error", () => {});
    await new Promise((r) => probe.once("connect", r));
    let closedAt = Number.NaN;
    probe.once("close", () => {
      closedAt = performance.now();
    });
    killedAt = performance.now();
    victim.child.kill("SIGKILL");
    await new Promise((r) => setTimeout(r, 800));
    probe.destroy();
    stop = true;
    await load;
    recoveries.push(firstAfter - killedAt);
    console.log(
      `round ${round + 1}: first answer from a replica ${(firstAfter - killedAt).toFixed(2)} ms after kill -9 of ${victimId} (its connections closed by the kernel after ${(closedAt - killedAt).toFixed(2)} ms); hedges ${s.host.counters.hedges - hedgesBefore}, failovers ${s.host.counters.failovers - failoversBefore}; failed requests ${failed}`,
    );
    // bring it back on the same port; the dispatcher's probe marks it healthy again
    victim = await spawnNode("ORD", 0, { configPath: withLatency, port: victim.port });
    const back = performance.now();
    while (!s.host.nodeStats().find((n) => n.nodeId === victimId)?.healthy) {
      await new Promise((r) => setTimeout(r, 10));
      if (performance.now() - back > 15_000) break;
    }
    console.log(
      `  ${victimId} back and marked healthy ${(performance.now() - back).toFixed(0)} ms after it listened again`,
    );
  }
  console.log(
    `recovery time (kill → first answer by a replica): median ${quantile(recoveries, 0.5).toFixed(2)} ms, max ${Math.max(...recoveries).toFixed(2)} ms (one-way ORD–IAD is 9 ms)`,
  );
  await s.stop();
  await stopChild(victim.child);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
