// Text generation end to end: completions through the gateway's HTTP API with the experts on
// expert nodes (child processes, no injected latency) vs the same model generating in-process
// (ModelTextGenerator over a local model; both with onnxruntime trunk kernels), with 1 and 32 concurrent requests. Prints generated
// tokens/s and p50/p99 request latency for both and the ratio. A second table runs the same
// generators with the per-request KV cache turned off (full-window recompute every token, the
// pre-cache behaviour) in the same alternating repeats, with request bytes per generated token.
//   npx tsx bench/gateway-generation.ts [tokens] [repeats]

import { setMaxListeners } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../src/config/load.ts";
import { buildExpertHost } from "../src/model/build.ts";
import { modelConfigFrom } from "../src/model/config.ts";
import { MoeTransformer } from "../src/model/transformer.ts";
import { type ChildNode, spawnPlan, stopChild } from "../src/swarm/child-nodes.ts";
import { startGateway } from "../src/swarm/gateway.ts";
import { ModelTextGenerator } from "../src/swarm/model-generator.ts";
import { planFromConfig, plannedEntries, StaticPlacement } from "../src/swarm/placement.ts";
import { OnnxKernels } from "../src/tensor/onnx-kernels.ts";

const tokens = Number(process.argv[2] ?? 16);
const repeats = Number(process.argv[3] ?? 5);

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] as number;
}

async function measure(concurrency: number, one: (i: number) => Promise<void>) {
  const latencies: number[] = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async (_, i) => {
      const s = performance.now();
      await one(i);
      latencies.push(performance.now() - s);
    }),
  );
  const wall = performance.now() - t0;
  return {
    tps: (concurrency * tokens) / (wall / 1000),
    p50: quantile(latencies, 0.5),
    p99: quantile(latencies, 0.99),
  };
}

const dir = mkdtempSync(join(tmpdir(), "moe-swarm-bench-gen-"));
const nodes: ChildNode[] = [];
try {
  const configPath = join(dir, "swarm.yaml");
  writeFileSync(configPath, "profile: local\nswarm:\n  emulation:\n    enabled: false\n");
  const { config } = loadConfig(configPath);
  const plan = planFromConfig(config);
  nodes.push(...(await spawnPlan(plan, () => ({ configPath }))));
  const placement = new StaticPlacement(plannedEntries(nodes, plan));
  const gateway = await startGateway(config, {
    placement,
    port: 0,
    host: "127.0.0.1",
    modelId: "local",
  });
  // Both sides run the trunk on onnxruntime kernels (the gateway's default).
  const local = await buildExpertHost(config);
  const kernels = await OnnxKernels.create(1);
  const inProcess = new ModelTextGenerator(
    new MoeTransformer(modelConfigFrom(config), local, "float32", kernels),
    "local",
  );
  const prompt = (i: number) => `Call me Ishmael. ${i}`;
  const viaHttp = async (i: number) => {
    const r = await fetch(`${gateway.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "local",
        prompt: prompt(i),
        max_tokens: tokens,
        temperature: 0.8,
        seed: i,
      }),
    });
    if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
    await r.json();
  };
  // The gateway's own trunk (experts on the nodes) without HTTP: separates the API's cost from
  // the forwards'.
  const swarmNoHttp = new ModelTextGenerator(gateway.trunk, "local");
  // The same trunks without the KV cache (the reference the cache replaces).
  const inProcessRecompute = new ModelTextGenerator(inProcess.model, "local", "recompute");
  const swarmRecompute = new ModelTextGenerator(gateway.trunk, "local", "recompute");
  const generate = (g: ModelTextGenerator) => async (i: number) => {
    const signal = new AbortController().signal;
    setMaxListeners(4096, signal); // as the gateway does for each completion
    await g.generate(
      {
        prompt: prompt(i),
        maxTokens: tokens,
        temperature: 0.8,
        topP: 1,
        seed: i,
        stop: [],
        signal,
      },
      () => {},
    );
  };
  const direct = generate(inProcess);
  const noHttp = generate(swarmNoHttp);
  const directRe = generate(inProcessRecompute);
  const noHttpRe = generate(swarmRecompute);
  await viaHttp(0); // warm-up (connections, onnx sessions)
  await direct(0);
  console.log(
    `# local profile, ${tokens} new tokens per request, no injected latency, 5 expert nodes, median of ${repeats} alternating repeats; load average ${loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")}`,
  );
  console.log(
    "| concurrent requests | in-process tok/s | p50 ms | p99 ms | gateway+swarm tok/s | p50 ms | p99 ms | swarm/in-process time | swarm without HTTP tok/s | its /in-process time |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|");
  const perToken: string[] = [];
  const kvRows: string[] = [];
  for (const c of [1, 32]) {
    // Alternate in-process and swarm `repeats` times so both see the same machine load; report the
    // median repeat of each (by tokens/s).
    const as: Awaited<ReturnType<typeof measure>>[] = [];
    const bs: Awaited<ReturnType<typeof measure>>[] = [];
    const ns: Awaited<ReturnType<typeof measure>>[] = [];
    let httpFrames = 0;
    let noHttpFrames = 0;
    const frames = () => gateway.dispatcher.wire().frames;
    const sent = () => gateway.dispatcher.wire().bytesSent;
    const res: Awaited<ReturnType<typeof measure>>[] = [];
    const nres: Awaited<ReturnType<typeof measure>>[] = [];
    let kvBytes = 0;
    let reBytes = 0;
    for (let r = 0; r < repeats; r++) {
      as.push(await measure(c, direct));
      let f0 = frames();
      bs.push(await measure(c, viaHttp));
      httpFrames += frames() - f0;
      f0 = frames();
      let b0 = sent();
      ns.push(await measure(c, noHttp));
      noHttpFrames += frames() - f0;
      kvBytes += sent() - b0;
      res.push(await measure(c, directRe));
      b0 = sent();
      nres.push(await measure(c, noHttpRe));
      reBytes += sent() - b0;
    }
    perToken.push(
      `${c} concurrent: ${(httpFrames / (repeats * c * tokens)).toFixed(1)} request frames per generated token through HTTP, ${(noHttpFrames / (repeats * c * tokens)).toFixed(1)} without`,
    );
    const median = (xs: typeof as) =>
      [...xs].sort((x, y) => x.tps - y.tps)[Math.floor(xs.length / 2)] as (typeof xs)[number];
    const a = median(as);
    const b = median(bs);
    const n = median(ns);
    const ra = median(res);
    const rn = median(nres);
    const perTok = (bytes: number) => (bytes / (repeats * c * tokens) / 1024).toFixed(1);
    kvRows.push(
      `| ${c} | ${a.tps.toFixed(0)} | ${ra.tps.toFixed(0)} | ${(a.tps / ra.tps).toFixed(2)}× | ${n.tps.toFixed(0)} | ${rn.tps.toFixed(0)} | ${(n.tps / rn.tps).toFixed(2)}× | ${perTok(kvBytes)} | ${perTok(reBytes)} |`,
    );
    console.log(
      `| ${c} | ${a.tps.toFixed(0)} | ${a.p50.toFixed(0)} | ${a.p99.toFixed(0)} | ${b.tps.toFixed(0)} | ${b.p50.toFixed(0)} | ${b.p99.toFixed(0)} | ${(a.tps / b.tps).toFixed(2)}× | ${n.tps.toFixed(0)} | ${(a.tps / n.tps).toFixed(2)}× |`,
    );
  }
  for (const line of perToken) console.log(line);
  console.log(
    "\n| concurrent requests | in-process KV tok/s | in-process recompute tok/s | KV speed-up | swarm (no HTTP) KV tok/s | swarm recompute tok/s | KV speed-up | KiB sent per token, KV | KiB sent per token, recompute |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|");
  for (const line of kvRows) console.log(line);
  const c = gateway.dispatcher.counters;
  console.log(
    `gateway dispatcher: ${c.calls} expert calls, ${c.hedges} hedged (${c.hedgeWins} won), ${c.failovers} failovers`,
  );
  await gateway.close();
  await local.close();
  await kernels.release();
} finally {
  await Promise.all(nodes.map((n) => stopChild(n.child)));
  rmSync(dir, { recursive: true, force: true });
}
