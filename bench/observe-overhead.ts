// Overhead of metrics + tracing on swarm throughput, on vs off in the same run.
//
// The swarm: the real gateway (startGateway: trunk over RemoteExpertHost, OpenAI-compatible API)
// in this process and five expert nodes as child processes (test/observe/fixtures/observed-*.ts),
// local profile, with everything issue #8 adds switched on or off at run time in every process:
// a server span and request metrics per HTTP request, a client span and latency sample per expert
// call (TracedExpertHost), a server span per sampled request frame on the nodes (returned in the
// reply frame and recorded by the gateway's tracer), the SwarmRecorder tick and the dashboard's live feed with one client.
//
// Load: `clients` concurrent greedy completions of `tokens` tokens, for `phase` seconds per phase,
// phases alternating off/on in ABBA order (off on on off …) so slow drift of the shared machine
// cancels out. Emulated inter-region latency is off by default (CPU-bound: the worst case for
// overhead); `--emulation` turns it on (latency-bound, as deployed).
//
// `--sample` is the fraction of requests traced (parent-based: the nodes follow the gateway);
// metrics are recorded for every request either way.
//
// On a shared, loaded machine prefer `--clients 1`: with one request at a time every token costs
// the same expert calls (no cross-request merging, which varies with load), so the CPU per token
// on vs off compares like with like; wall-clock throughput there mostly measures the neighbours.
//
//   npx tsx bench/observe-overhead.ts [--sample 1] [--emulation] [--clients 4] [--tokens 8] [--phase 6] [--rounds 2]
//
// Profiling: `--only on` (or `off`) runs a single phase of that mode and no ABBA rounds, e.g.
//   OBSERVED_NODE_CPU_PROF_DIR=/tmp/prof node --cpu-prof --cpu-prof-dir=/tmp/prof --import tsx \
//     bench/observe-overhead.ts --only on --phase 20
// writes a CPU profile of the gateway (this process) and of each node process (node 20 refuses
// --cpu-prof in NODE_OPTIONS, so the swarm fixture passes it to the nodes from that variable).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { WebSocket } from "ws";
import { loadConfig } from "../src/config/load.ts";
import type { ExpertHost } from "../src/model/expert.ts";
import { expertNodeRequestHook } from "../src/observe/expert-node-hook.ts";
import { routeAll } from "../src/observe/http-route.ts";
import { SwarmMetrics } from "../src/observe/metrics.ts";
import { otlpTraceRoute } from "../src/observe/otlp-receiver.ts";
import { TraceRingBuffer } from "../src/observe/trace-buffer.ts";
import { TracedExpertHost } from "../src/observe/traced-expert-host.ts";
import { SwarmTracing } from "../src/observe/tracing.ts";
import { decodeFrame, encodeFrame, FrameKind, Op } from "../src/swarm/frame.ts";
import { defaultModelId } from "../src/swarm/gateway.ts";
import { startObservedSwarm } from "../test/observe/fixtures/observed-swarm.ts";

const { values } = parseArgs({
  options: {
    emulation: { type: "boolean", default: false },
    sample: { type: "string", default: "1" },
    clients: { type: "string", default: "4" },
    tokens: { type: "string", default: "8" },
    phase: { type: "string", default: "6" },
    rounds: { type: "string", default: "2" },
    only: { type: "string" },
  },
});
const clients = Number(values.clients);
const tokens = Number(values.tokens);
const phaseSeconds = Number(values.phase);
const only = values.only;
if (only !== undefined && only !== "on" && only !== "off")
  throw new RangeError(`--only: expected on or off; got "${only}"`);
const rounds = only === undefined ? Number(values.rounds) : 0;

// ---- 1. what each instrumented operation costs, in isolation -----------------------------------
// CPU time (process.cpuUsage) per operation, median of 5 runs, on this process alone — robust to
// other work on the machine, unlike wall-clock throughput:
//   metrics per expert call   TracedExpertHost with metrics only, minus the plain no-op host;
//   gateway span per call     TracedExpertHost with tracing only (client span → ring buffer);
//   node span, exported       a node's server span exported over OTLP/HTTP JSON and received,
//                             validated and stored by the gateway's receiver (both in this process)
//                             — the path of nodes whose caller does not collect spans;
//   node span, in the reply   what the swarm does: the node's hook makes a wire span record, the
//                             reply frame carries it (encode + decode), the gateway records it in
//                             its tracer (ring buffer); minus the same reply without a span.
async function cpuMicros(run: () => Promise<void>, n: number): Promise<number> {
  const runs: number[] = [];
  for (let r = 0; r < 5; r++) {
    const c0 = process.cpuUsage();
    await run();
    const c = process.cpuUsage(c0);
    runs.push((c.user + c.system) / n);
  }
  return runs.sort((p, q) => p - q)[2] as number;
}

async function operationCosts(): Promise<{
  metricsUs: number;
  gatewaySpanUs: number;
  nodeSpanUs: number;
  nodeWireSpanUs: number;
}> {
  const { config } = loadConfig();
  const y = new Float32Array(64);
  const noop: ExpertHost = {
    forward: async () => y,
    backward: async () => y,
    gradSquaredNorm: async () => 0,
    applyUpdate: async () => {},
  };
  const x = new Float32Array(64);
  const id = { layer: 0, expert: 3 };
  const calls = 50_000;
  const loop = (host: ExpertHost) => async () => {
    for (let i = 0; i < calls; i++) await host.forward(id, x, 1);
  };
  const metrics = new SwarmMetrics({ config, process: "bench", defaultMetrics: false });
  const tracing = new SwarmTracing({
    serviceName: "bench",
    ringBuffer: new TraceRingBuffer(),
    otlpEndpoint: null,
  });
  await cpuMicros(loop(noop), calls); // warm-up
  const plain = await cpuMicros(loop(noop), calls);
  const withMetrics = await cpuMicros(loop(new TracedExpertHost(noop, { metrics })), calls);
  const withSpans = await cpuMicros(loop(new TracedExpertHost(noop, { tracing })), calls);

  const ring = new TraceRingBuffer();
  const receiver = createServer(routeAll([otlpTraceRoute(ring)]));
  await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/v1/traces`;
  const node = new SwarmTracing({
    serviceName: "AMS-0",
    otlpEndpoint: url,
    otlpScheduledDelayMs: 50,
  });
  const spans = 1500; // below the batch processor's queue (2048), which drops beyond it
  const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  const nodeSpans = async () => {
    const a0 = ring.added;
    for (let i = 0; i < spans; i++) {
      node
        .startServerSpan("expert.node.forward", parent, {
          "moe.node": "AMS-0",
          "moe.expert": "L0.E3",
          "moe.experts": 1,
          "moe.tokens": 12,
          "moe.caller_region": "ORD",
        })
        .end();
    }
    await node.flush();
    while (ring.added - a0 < spans) await new Promise((r) => setTimeout(r, 5));
  };
  await nodeSpans();
  const nodeSpanUs = await cpuMicros(nodeSpans, spans);
  await node.shutdown();
  receiver.close();

  // The wire path: hook → record → reply frame → decode → gateway tracer (ring buffer).
  const hook = expertNodeRequestHook({ nodeId: "AMS-0" });
  const gatewayTracing = new SwarmTracing({
    serviceName: "gateway",
    ringBuffer: new TraceRingBuffer(),
    otlpEndpoint: null,
    activeContext: false,
  });
  const rows = new Float32Array(12 * 64);
  const request = {
    op: Op.forward,
    traceparent: parent,
    ids: [id],
    tensors: [{ dims: [12, 64], data: rows }],
    region: "ORD",
  } as const;
  const replies = (spansWanted: boolean) => async () => {
    for (let i = 0; i < spans; i++) {
      const record = hook({ ...request, spansWanted })?.(false);
      const body = encodeFrame({
        kind: FrameKind.response,
        op: Op.forward,
        requestId: i,
        region: "AMS",
        scalars: [0],
        tensors: [{ dims: [12, 64], data: rows }],
        spans: record ? [record] : [],
      }).subarray(4);
      const frame = decodeFrame(body);
      if (frame.spans.length > 0) gatewayTracing.recordRemoteSpans("AMS-0", frame.spans);
    }
  };
  await cpuMicros(replies(true), spans); // warm-up
  const withoutSpan = await cpuMicros(replies(false), spans);
  const withSpan = await cpuMicros(replies(true), spans);
  await gatewayTracing.shutdown();
  return {
    metricsUs: withMetrics - plain,
    gatewaySpanUs: withSpans - plain,
    nodeSpanUs,
    nodeWireSpanUs: withSpan - withoutSpan,
  };
}

// Skipped with --only, so a profile of the phase is not mixed with these loops.
console.log(
  `load average at the start: ${loadavg()
    .map((l) => l.toFixed(1))
    .join(" ")} on ${cpus().length} cores`,
);
const costs =
  only === undefined
    ? await operationCosts()
    : {
        metricsUs: Number.NaN,
        gatewaySpanUs: Number.NaN,
        nodeSpanUs: Number.NaN,
        nodeWireSpanUs: Number.NaN,
      };
console.log("CPU per instrumented operation (median of 5 runs, this process alone):");
console.log(`  metrics per expert call            ${costs.metricsUs.toFixed(2)} µs`);
console.log(`  gateway client span per call       ${costs.gatewaySpanUs.toFixed(2)} µs`);
console.log(`  node server span, OTLP out and in  ${costs.nodeSpanUs.toFixed(2)} µs`);
console.log(`  node span in the reply frame       ${costs.nodeWireSpanUs.toFixed(2)} µs`);

// ---- 2. swarm throughput, on vs off ------------------------------------------------------------
const dir = mkdtempSync(join(tmpdir(), "moe-swarm-observe-bench-"));
const configPath = join(dir, "swarm.yaml");
writeFileSync(
  configPath,
  `profile: local\nswarm:\n  emulation:\n    enabled: ${values.emulation ? "true" : "false"}\n`,
);
const swarm = await startObservedSwarm({ configPath, traceSampleRatio: Number(values.sample) });
const model = defaultModelId(swarm.config);
const feed = new WebSocket(`${swarm.url.replace("http", "ws")}/live`);
feed.on("message", () => {});

let completed = 0;
let generated = 0;
let failed = 0;
let stop = false;
async function client(i: number): Promise<void> {
  let n = 0;
  while (!stop) {
    const res = await fetch(`${swarm.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model,
        prompt: `Client ${i} request ${n++}: Call me Ishmael.`,
        max_tokens: tokens,
        temperature: 0,
      }),
    });
    const body = (await res.json()) as { usage?: { completion_tokens: number } };
    if (res.status === 200) {
      completed++;
      generated += body.usage?.completion_tokens ?? 0;
    } else failed++;
  }
}

/**
 * CPU seconds used so far by the gateway (this process) and the node processes. On a machine
 * shared with other work, wall-clock throughput swings with everyone else's load; the CPU the
 * swarm itself spends per generated token does much less, so it is reported beside throughput.
 * Children's times come from /proc/<pid>/stat (utime + stime, in USER_HZ = 100 ticks per second).
 */
function swarmCpuSeconds(): number {
  const self = process.cpuUsage();
  let total = (self.user + self.system) / 1e6;
  for (const n of swarm.nodes) {
    const stat = readFileSync(`/proc/${n.child.pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    total += (Number(fields[11]) + Number(fields[12])) / 100;
  }
  return total;
}

async function phase(on: boolean): Promise<{
  on: boolean;
  rps: number;
  tps: number;
  cpuMsPerToken: number;
  callsPerToken: number;
}> {
  swarm.setObserving(on);
  await new Promise((r) => setTimeout(r, 500)); // let in-flight requests of the last phase drain
  const calls0 = swarm.gateway.dispatcher.counters.calls;
  const c0 = completed;
  const g0 = generated;
  const cpu0 = swarmCpuSeconds();
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, phaseSeconds * 1000));
  const s = (performance.now() - t0) / 1000;
  const cpu = swarmCpuSeconds() - cpu0;
  const tokensDone = generated - g0;
  return {
    on,
    rps: (completed - c0) / s,
    tps: tokensDone / s,
    cpuMsPerToken: tokensDone > 0 ? (cpu * 1000) / tokensDone : Number.NaN,
    callsPerToken: (swarm.gateway.dispatcher.counters.calls - calls0) / tokensDone,
  };
}

const load = Array.from({ length: clients }, (_, i) => client(i));
const warmup = await phase(only !== "off"); // warm-up (the only phase with --only)
const order: boolean[] = [];
for (let r = 0; r < rounds; r++) order.push(false, true, true, false);
const results = only === undefined ? [] : [warmup];
for (const on of order) {
  const p = await phase(on);
  results.push(p);
  console.log(
    `  phase ${on ? "on " : "off"}: ${p.rps.toFixed(2)} requests/s, ${p.tps.toFixed(1)} tokens/s, ${p.cpuMsPerToken.toFixed(2)} CPU ms/token, ${p.callsPerToken.toFixed(1)} expert calls/token`,
  );
}
stop = true;
await Promise.all(load);
feed.close();
const spans = swarm.traces.added;
await swarm.close();
rmSync(dir, { recursive: true, force: true });

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const off = mean(results.filter((p) => !p.on).map((p) => p.tps));
const on = mean(results.filter((p) => p.on).map((p) => p.tps));
const cpuOff = mean(results.filter((p) => !p.on).map((p) => p.cpuMsPerToken));
const cpuOn = mean(results.filter((p) => p.on).map((p) => p.cpuMsPerToken));
console.log(
  `swarm throughput (gateway + 5 node processes, local profile, emulated latency ${values.emulation ? "on" : "off"}, ${clients} clients × ${tokens}-token greedy completions, ${phaseSeconds} s phases, ABBA × ${rounds}, trace sampling ${values.sample}):`,
);
console.log(`  observability off: ${off.toFixed(1)} tokens/s`);
console.log(
  `  observability on:  ${on.toFixed(1)} tokens/s  (${spans} spans recorded in the gateway's buffer)`,
);
console.log(
  `  throughput on/off ratio ${(on / off).toFixed(3)} · overhead ${((1 - on / off) * 100).toFixed(1)}% (goal < 3%) · failed requests ${failed}`,
);
console.log(
  `  swarm CPU per generated token: off ${cpuOff.toFixed(2)} ms · on ${cpuOn.toFixed(2)} ms · CPU overhead ${((cpuOn / cpuOff - 1) * 100).toFixed(1)}%`,
);
// Per ABBA block (off on on off, 4 consecutive phases): the on/off ratio of that block alone.
// Neighbours' load drifts over seconds to minutes; within one block it mostly cancels, so the
// median over blocks (with its spread) is the figure to trust on a shared machine.
const blocks: { tps: number; cpu: number }[] = [];
const abba = only === undefined ? results : [];
for (let b = 0; b + 4 <= abba.length; b += 4) {
  const block = abba.slice(b, b + 4);
  const m = (on: boolean, f: (p: (typeof block)[number]) => number) =>
    mean(block.filter((p) => p.on === on).map(f));
  blocks.push({
    tps: m(true, (p) => p.tps) / m(false, (p) => p.tps),
    cpu: m(true, (p) => p.cpuMsPerToken) / m(false, (p) => p.cpuMsPerToken),
  });
}
const quartiles = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.round(q * (s.length - 1)))] as number;
  return [at(0.25), at(0.5), at(0.75)] as const;
};
if (blocks.length > 0) {
  const [t1, t2, t3] = quartiles(blocks.map((x) => (1 - x.tps) * 100));
  const [c1, c2, c3] = quartiles(blocks.map((x) => (x.cpu - 1) * 100));
  console.log(
    `  per ABBA block, median [quartiles] over ${blocks.length} blocks: throughput overhead ${t2.toFixed(1)}% [${t1.toFixed(1)}, ${t3.toFixed(1)}] · CPU-per-token overhead ${c2.toFixed(1)}% [${c1.toFixed(1)}, ${c3.toFixed(1)}]`,
  );
}
console.log(
  `  load average at the end: ${loadavg()
    .map((l) => l.toFixed(1))
    .join(" ")} on ${cpus().length} cores (other work on the machine moves throughput)`,
);
const sample = Number(values.sample);
const callsPerToken = mean(results.map((p) => p.callsPerToken));
const addedUs =
  callsPerToken * (2 * costs.metricsUs + sample * (costs.gatewaySpanUs + costs.nodeWireSpanUs));
console.log(
  `  estimate from the isolated costs: ${callsPerToken.toFixed(1)} expert calls per token × (metrics at gateway and node ${(2 * costs.metricsUs).toFixed(1)} µs + ${sample} × spans ${(costs.gatewaySpanUs + costs.nodeWireSpanUs).toFixed(1)} µs, node span in the reply) = ${(addedUs / 1000).toFixed(2)} ms per token = ${((addedUs / 1000 / cpuOff) * 100).toFixed(1)}% of the swarm's ${cpuOff.toFixed(2)} CPU ms per token`,
);
