// Committed registry operations per second and commit latency of five coordinator processes on
// loopback (ML-DSA-65, hybrid links, fsynced WALs), without and with the emulated inter-region
// latency of the local profile. Clients each keep one request outstanding (set_placement writes).
// Run: npx tsx bench/consensus.ts [--clients 256] [--seconds 8] [--batch 1024] [--only lan|wan]

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { loadConfig } from "../src/config/load.ts";
import { oneWayLatencySeconds } from "../src/config/schema.ts";
import { RegistryClient } from "../src/consensus/client.ts";
import { LocalCoordinatorCluster } from "../src/consensus/local-cluster.ts";
import { regionsInLeaderOrder } from "../src/consensus/types.ts";

const { values } = parseArgs({
  options: {
    clients: { type: "string", default: "256" },
    seconds: { type: "string", default: "8" },
    batch: { type: "string", default: "1024" },
    only: { type: "string" },
  },
});
const clientsN = Number(values.clients);
const seconds = Number(values.seconds);

async function runCluster(wan: boolean) {
  const dir = mkdtempSync(join(tmpdir(), "moe-coord-bench-"));
  const portBase = 21_000 + 20 * Math.floor(Math.random() * 500); // below the ephemeral range
  writeFileSync(
    join(dir, "swarm.yaml"),
    `profile: local\nconsensus:\n  view_timeout: "2s"\n  max_batch: ${values.batch}\nswarm:\n  emulation:\n    enabled: ${wan}\n`,
  );
  const cluster = new LocalCoordinatorCluster({
    dataDir: dir,
    portBase,
    configPath: join(dir, "swarm.yaml"),
    chainId: "bench",
  });
  try {
    await cluster.start();
    const endpoints = cluster.endpoints;
    const clients = Array.from(
      { length: clientsN },
      (_, k) =>
        new RegistryClient({ endpoints, clientId: `b${k}`, retryMs: 5_000, deadlineMs: 60_000 }),
    );
    await clients[0]?.registerNode("n0", "ORD", "a10", "127.0.0.1:1");
    let measuring = false;
    let stop = false;
    let done = 0;
    const lat: number[] = [];
    const warmupMs = 2_000;
    const loops = clients.map(async (c, k) => {
      for (let i = 0; !stop; i++) {
        const t0 = performance.now();
        await c.setPlacement(`L${k}.E${i % 64}`, ["n0"]);
        if (measuring) {
          done += 1;
          lat.push(performance.now() - t0);
        }
      }
    });
    await new Promise((r) => setTimeout(r, warmupMs));
    measuring = true;
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    measuring = false;
    const elapsed = (performance.now() - t0) / 1000;
    const statusOrd = (await clients[0]?.status(0)) as Record<string, number>;
    stop = true;
    await Promise.all(loops);
    for (const c of clients) c.close();
    lat.sort((a, b) => a - b);
    const pct = (p: number) =>
      lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? Number.NaN;
    return { opsPerS: done / elapsed, p50: pct(0.5), p99: pct(0.99), status: statusOrd };
  } finally {
    cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

const cfg = loadConfig(undefined).config;
// ORD's quorum of 4 (itself + its 3 nearest): the farthest of those one-way delays.
const fromOrd = regionsInLeaderOrder
  .slice(1)
  .map(
    (r) =>
      1000 *
      oneWayLatencySeconds(
        { ...cfg, swarm: { ...cfg.swarm, emulation: { ...cfg.swarm.emulation, enabled: true } } },
        "ORD",
        r,
      ),
  )
  .sort((a, b) => a - b);
const quorumDelayMs = fromOrd[2] as number;

console.log(
  `five coordinators on loopback, ${clientsN} clients (1 outstanding each), max_batch ${values.batch}, ${seconds} s measured after 2 s warm-up`,
);
for (const wan of [false, true]) {
  if (values.only && values.only !== (wan ? "wan" : "lan")) continue;
  const r = await runCluster(wan);
  const s = r.status;
  console.log(
    `${wan ? "with emulated WAN latency" : "no WAN latency        "}: ${r.opsPerS.toFixed(0)} committed ops/s, client-observed commit latency p50 ${r.p50.toFixed(1)} ms, p99 ${r.p99.toFixed(1)} ms; ORD replica: view ${s.view}, height ${s.committedHeight}, ${((s.requestsCommittedTotal ?? 0) / Math.max(1, s.blocksCommittedTotal ?? 1)).toFixed(0)} requests/block, arrival→commit p50 ${s.commitLatencyMsP50} ms p99 ${s.commitLatencyMsP99} ms`,
  );
  if (wan)
    console.log(
      `  ORD's quorum one-way delay (4th-nearest incl. itself): ${quorumDelayMs} ms → p50 = ${(r.p50 / quorumDelayMs).toFixed(1)} one-way delays`,
    );
}
