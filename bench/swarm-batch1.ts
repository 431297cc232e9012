// Where the batch-1 time of a swarm forward goes. The same model (local profile, same weights) runs
// in this process and with its experts on 5 child-process nodes (no injected latency), alternating
// call by call so both see the same machine load. Besides p50 of each and their ratio it prints,
// per swarm forward: expert calls the model made, wire frames and bytes sent, dispatch rounds
// (one per MoE layer, two for the cascade tier), and the bare round trip of a ping to a node — the
// fixed cost each round pays before any compute.
// Both models run the trunk (embeddings, attention, routers) on onnxruntime as `moe-swarm gateway`
// does; `js` as the third argument runs both trunks on the TypeScript kernels instead. Like for
// like: the in-process experts and every node's experts run on onnxruntime with 1 intra-op thread
// (the node default, `moe-swarm node --threads 1`), the trunk with 1.
// CPU time per forward (Linux /proc for the nodes) is printed beside the wall times: on a shared
// 2-core machine it is steadier than wall time, and it shows what the swarm adds — the nodes' CPU
// on top of the experts' own compute, and the fixed CPU of one frame round trip (the ping).
//   npx tsx bench/swarm-batch1.ts [iterations] [batch] [onnx|js]
// CPU profiles of both sides in one run (node refuses --cpu-prof in NODE_OPTIONS, so the nodes take
// theirs from MOE_SWARM_CHILD_NODE_OPTIONS, see child-nodes.ts):
//   MOE_SWARM_CHILD_NODE_OPTIONS="--cpu-prof --cpu-prof-dir=/tmp/prof/nodes" \
//     node --cpu-prof --cpu-prof-dir=/tmp/prof/gateway --import tsx bench/swarm-batch1.ts 300

import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { Prng } from "../src/common/prng.ts";
import { loadConfig } from "../src/config/load.ts";
import { buildExpertHost } from "../src/model/build.ts";
import { modelConfigFrom } from "../src/model/config.ts";
import { MoeTransformer } from "../src/model/transformer.ts";
import { type ChildNode, spawnPlan, stopChild } from "../src/swarm/child-nodes.ts";
import { Op } from "../src/swarm/frame.ts";
import { NodeClient } from "../src/swarm/node-client.ts";
import { planFromConfig, plannedEntries, StaticPlacement } from "../src/swarm/placement.ts";
import { directLinks } from "../src/swarm/region-links.ts";
import { RemoteExpertHost } from "../src/swarm/remote-expert-host.ts";
import { OnnxKernels } from "../src/tensor/onnx-kernels.ts";
import { noGradAsync } from "../src/tensor/tensor.ts";

const iterations = Number(process.argv[2] ?? 40);
const B = Number(process.argv[3] ?? 1);
const trunkKernels = process.argv[4] ?? "onnx";
if (trunkKernels !== "onnx" && trunkKernels !== "js")
  throw new RangeError(`trunk kernels: expected onnx or js; got ${trunkKernels}`);
const T = 64;

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] as number;
}

async function once(model: MoeTransformer, ids: Int32Array): Promise<number> {
  model.clearRoutingCaches(); // no cache hits: every call does the full work
  const t0 = performance.now();
  await noGradAsync(() => model.forward(ids, B, T));
  return performance.now() - t0;
}

/** CPU ms (user + system) a child process used so far; NaN where /proc is not there. */
function childCpuMs(pid: number | undefined): number {
  const stat = `/proc/${pid}/stat`;
  if (pid === undefined || !existsSync(stat)) return Number.NaN;
  // Fields after the ")" that ends the command name: utime and stime are the 12th and 13th, in
  // clock ticks (100 per second on Linux).
  const f = readFileSync(stat, "utf8").split(") ")[1]?.split(" ") ?? [];
  return (Number(f[11]) + Number(f[12])) * 10;
}

/** CPU ms this process used so far. */
function selfCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

const dir = mkdtempSync(join(tmpdir(), "moe-swarm-batch1-"));
const nodes: ChildNode[] = [];
try {
  const configPath = join(dir, "no-latency.yaml");
  writeFileSync(configPath, "profile: local\nswarm:\n  emulation:\n    enabled: false\n");
  const cfg = loadConfig(configPath).config;
  const plan = planFromConfig(cfg);
  nodes.push(...(await spawnPlan(plan, () => ({ configPath }))));
  const placement = new StaticPlacement(plannedEntries(nodes, plan));
  const host = new RemoteExpertHost({
    registry: placement,
    region: "ORD",
    dModel: cfg.model.d_model,
  });
  const kernels = trunkKernels === "onnx" ? await OnnxKernels.create(1) : null;
  const mc = modelConfigFrom(cfg);
  const localHost = await buildExpertHost(cfg);
  const local = { model: new MoeTransformer(mc, localHost, "float32", kernels), host: localHost };
  const trunk = new MoeTransformer(mc, host, "float32", kernels);

  const rng = new Prng(B);
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < 3; i++) {
    const ids = Int32Array.from({ length: B * T }, () => rng.int(256));
    await once(local.model, ids);
    await once(trunk, ids);
  }
  const c0 = { ...host.counters };
  const w0 = host.wire();
  const nodesCpuMs = () => nodes.reduce((s, n) => s + childCpuMs(n.child.pid), 0);
  let localCpuMs = 0;
  let gatewayCpuMs = 0;
  const n0 = nodesCpuMs();
  for (let i = 0; i < iterations; i++) {
    const ids = Int32Array.from({ length: B * T }, () => rng.int(256));
    let c = selfCpuMs();
    a.push(await once(local.model, ids));
    localCpuMs += selfCpuMs() - c;
    c = selfCpuMs();
    b.push(await once(trunk, ids));
    gatewayCpuMs += selfCpuMs() - c;
  }
  const swarmNodesCpuMs = nodesCpuMs() - n0;
  const w1 = host.wire();
  const rounds =
    trunk.blocks.reduce((s, l) => s + l.moe.stats.rounds, 0) /
    trunk.blocks.reduce((s, l) => s + l.moe.stats.batches, 0);

  // The bare round trip: a ping frame to one node and back, nothing computed.
  const first = nodes[0] as ChildNode;
  const client = new NodeClient(first, "ORD", directLinks);
  const pings: number[] = [];
  const pingCount = 1000;
  const pingNode0 = childCpuMs(first.child.pid);
  const pingSelf0 = selfCpuMs();
  for (let i = 0; i < pingCount; i++) {
    const t0 = performance.now();
    await client.call({ op: Op.ping, ids: [], timeoutMs: 1000 });
    pings.push(performance.now() - t0);
  }
  const pingSelfUs = ((selfCpuMs() - pingSelf0) * 1000) / pingCount;
  const pingNodeUs = ((childCpuMs(first.child.pid) - pingNode0) * 1000) / pingCount;
  client.close();

  const per = (n: number) => (n / iterations).toFixed(1);
  console.log(
    `# batch ${B}, T=${T}, trunk on ${trunkKernels}, ${iterations} forwards each, alternating; load average ${loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")}`,
  );
  console.log(
    "| in-process p50 ms | swarm p50 ms | swarm / in-process (p50) | in-process p90 | swarm p90 |",
  );
  console.log("|---|---|---|---|---|");
  console.log(
    `| ${quantile(a, 0.5).toFixed(2)} | ${quantile(b, 0.5).toFixed(2)} | ${(quantile(b, 0.5) / quantile(a, 0.5)).toFixed(2)}× | ${quantile(a, 0.9).toFixed(2)} | ${quantile(b, 0.9).toFixed(2)} |`,
  );
  console.log(
    `per swarm forward: ${per(host.counters.calls - c0.calls)} expert calls, ${per(w1.frames - w0.frames)} request frames, ${per(w1.bytesSent - w0.bytesSent)} bytes sent, ${per(w1.bytesReceived - w0.bytesReceived)} bytes received, ${rounds.toFixed(2)} dispatch rounds, hedges ${host.counters.hedges - c0.hedges}`,
  );
  console.log(
    `bare ping round trip to one node: p50 ${quantile(pings, 0.5).toFixed(3)} ms, p90 ${quantile(pings, 0.9).toFixed(3)} ms; CPU per ping: gateway ${pingSelfUs.toFixed(0)} µs, node ${pingNodeUs.toFixed(0)} µs`,
  );
  const cpu = (ms: number) => (ms / iterations).toFixed(2);
  console.log(
    `CPU per forward: in-process ${cpu(localCpuMs)} ms; swarm ${cpu(gatewayCpuMs + swarmNodesCpuMs)} ms = gateway ${cpu(gatewayCpuMs)} + nodes ${cpu(swarmNodesCpuMs)} (nodes from /proc, 10 ms ticks summed over the run)`,
  );
  console.log(
    `threads: trunk onnxruntime ${kernels?.threads ?? 0} (0 = TypeScript kernels), in-process experts 1 intra-op thread, each node's experts 1 (moe-swarm node --threads 1)`,
  );
  host.close();
  await local.host.close();
} finally {
  await Promise.all(nodes.map((n) => stopChild(n.child)));
  rmSync(dir, { recursive: true, force: true });
}
