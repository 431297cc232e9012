// Overhead of metrics + tracing on swarm throughput, on vs off in the same run.
//
// The swarm: the real gateway (startGateway: trunk over RemoteExpertHost, OpenAI-compatible API)
// in this process and five expert nodes as child processes (test/observe/fixtures/observed-*.ts),
// local profile, with everything issue #8 adds switched on or off at run time in every process:
// a server span and request metrics per HTTP request, a client span and latency sample per expert
// call (TracedExpertHost), a server span per request frame on the nodes (exported over OTLP/HTTP
// to the gateway), the SwarmRecorder tick and the dashboard's live feed with one client.
//
// Load: `clients` concurrent greedy completions of `tokens` tokens, for `phase` seconds per phase,
// phases alternating off/on in ABBA order (off on on off …) so slow drift of the shared machine
// cancels out. Emulated inter-region latency is off by default (CPU-bound: the worst case for
// overhead); `--emulation` turns it on (latency-bound, as deployed).
//
// `--sample` is the fraction of requests traced (parent-based: the nodes follow the gateway);
// metrics are recorded for every request either way.
//
//   npx tsx bench/observe-overhead.ts [--sample 1] [--emulation] [--clients 4] [--tokens 8] [--phase 6] [--rounds 2]
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { WebSocket } from "ws";
import { loadConfig } from "../src/config/load.ts";
import type { ExpertHost } from "../src/model/expert.ts";
import { SwarmMetrics } from "../src/observe/metrics.ts";
import { TraceRingBuffer } from "../src/observe/trace-buffer.ts";
import { TracedExpertHost } from "../src/observe/traced-expert-host.ts";
import { SwarmTracing } from "../src/observe/tracing.ts";
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
  },
});
const clients = Number(values.clients);
const tokens = Number(values.tokens);
const phaseSeconds = Number(values.phase);
const rounds = Number(values.rounds);

// ---- 1. the cost of one instrumented expert call, in isolation ---------------------------------
// A no-op ExpertHost called 50k times in a loop: what TracedExpertHost adds per call. The first
// figure is taken before any tracer exists; creating one installs OpenTelemetry's
// AsyncLocalStorage context manager, which on Node 20 makes every promise in the process slightly
// dearer, so "plain, context manager on" shows that cost alone.
async function perCallCosts(): Promise<[string, number][]> {
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
  const time = async (host: ExpertHost) => {
    const runs: number[] = [];
    for (let r = 0; r < 5; r++) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < 50_000; i++) await host.forward(id, x, 1);
      runs.push(Number(process.hrtime.bigint() - t0) / 50_000);
    }
    return runs.sort((p, q) => p - q)[2] as number;
  };
  const out: [string, number][] = [["plain, no tracer in the process", await time(noop)]];
  const metrics = new SwarmMetrics({ config, process: "bench", defaultMetrics: false });
  const tracing = new SwarmTracing({
    serviceName: "bench",
    ringBuffer: new TraceRingBuffer(),
    otlpEndpoint: null,
  });
  out.push(["plain, context manager on", await time(noop)]);
  out.push(["metrics only", await time(new TracedExpertHost(noop, { metrics }))]);
  out.push([
    "tracing only (span → ring buffer)",
    await time(new TracedExpertHost(noop, { tracing })),
  ]);
  out.push(["metrics + tracing", await time(new TracedExpertHost(noop, { tracing, metrics }))]);
  return out;
}

console.log("per expert call, no-op host in process (median of 5 × 50k calls):");
for (const [name, ns] of await perCallCosts())
  console.log(`  ${name.padEnd(36)} ${ns.toFixed(0).padStart(6)} ns`);

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

async function phase(
  on: boolean,
): Promise<{ on: boolean; rps: number; tps: number; cpuMsPerToken: number }> {
  swarm.setObserving(on);
  await new Promise((r) => setTimeout(r, 500)); // let in-flight requests of the last phase drain
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
  };
}

const load = Array.from({ length: clients }, (_, i) => client(i));
await phase(true); // warm-up
const order: boolean[] = [];
for (let r = 0; r < rounds; r++) order.push(false, true, true, false);
const results = [];
for (const on of order) {
  const p = await phase(on);
  results.push(p);
  console.log(
    `  phase ${on ? "on " : "off"}: ${p.rps.toFixed(2)} requests/s, ${p.tps.toFixed(1)} tokens/s`,
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
console.log(
  `  load average at the end: ${loadavg()
    .map((l) => l.toFixed(1))
    .join(" ")} on ${cpus().length} cores (other work on the machine moves throughput)`,
);
