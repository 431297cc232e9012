// Committed registry operations per second and commit latency of five coordinator processes on
// loopback (ML-DSA-65, hybrid links, fsynced WALs), without and with the emulated inter-region
// latency of the local profile. Clients each keep one request outstanding (set_placement writes).
// A light-load case (few clients) measures latency in steady state without queueing, and the ORD
// replica's status explains it: request arrival → proposal → QC → commit, then → client reply.
// The "model" case runs the same Replica code on a simulated clock (sim/latency-model.ts) with the
// WAN matrix, with zero CPU and with the ML-DSA-65 sign/verify cost measured in this run, with and
// without commit votes: the protocol's own latency, apart from a loaded machine's.
// max_batch defaults to batchRequestsMax (4,096): at 1,024 full blocks capped throughput at
// 4,884–5,047 ops/s on the quiet 2-core machine, at 4,096 it was 6,427–6,586 (ML-DSA costs are per
// block, so bigger blocks amortise them).
// Run: npx tsx bench/consensus.ts [--clients 4096] [--light-clients 16] [--seconds 8]
//        [--batch 4096] [--only model|lan|wan|lan-light|wan-light] [--cpu-prof DIR]

import {
  closeSync,
  fsyncSync,
  mkdtempSync,
  openSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { connect, type Socket } from "node:net";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { loadConfig } from "../src/config/load.ts";
import { oneWayLatencySeconds } from "../src/config/schema.ts";
import { RegistryClient } from "../src/consensus/client.ts";
import { encodeMessage } from "../src/consensus/codec.ts";
import { messageBytesMax, weakQuorumSize } from "../src/consensus/constants.ts";
import { FrameReader, writeFrame } from "../src/consensus/framing.ts";
import { LocalCoordinatorCluster } from "../src/consensus/local-cluster.ts";
import type { RegistryOp } from "../src/consensus/registry.ts";
import { runLatencyModel } from "../src/consensus/sim/latency-model.ts";
import { regionsInLeaderOrder } from "../src/consensus/types.ts";
import { MlDsa65Signer, MlDsa65Verifier, mlDsa65Keygen } from "../src/crypto/signature.ts";

const { values } = parseArgs({
  options: {
    clients: { type: "string", default: "4096" },
    "light-clients": { type: "string", default: "16" },
    seconds: { type: "string", default: "8" },
    batch: { type: "string", default: "4096" },
    only: { type: "string" },
    /** Write a V8 CPU profile of each coordinator into this directory (stopped by SIGTERM). */
    "cpu-prof": { type: "string" },
  },
});
const clientsN = Number(values.clients);
const seconds = Number(values.seconds);

/**
 * Many logical clients (each with its own clientId and one outstanding request, as exactly-once
 * execution needs) over one connection per coordinator, so that thousands of requests can be in
 * flight: by Little's law, ops/s = requests in flight / latency.
 */
class MultiplexedClients {
  readonly #sockets: Socket[];
  readonly #waiting = new Map<
    string,
    { seq: number; votes: Map<string, Set<number>>; resolve: () => void }
  >();

  constructor(endpoints: { host: string; port: number }[]) {
    this.#sockets = endpoints.map((ep, i) => {
      const s = connect(ep.port, ep.host);
      s.setNoDelay(true);
      const reader = new FrameReader(messageBytesMax);
      s.on("data", (chunk: Buffer) => {
        for (const f of reader.push(chunk).frames) this.#onReply(i, f);
      });
      s.on("error", () => {});
      return s;
    });
  }

  #onReply(i: number, frame: Uint8Array): void {
    // The bench trusts its own cluster's replies: plain JSON.parse, no schema, so that the load
    // generator (on the same 2 cores) is not what limits the measurement.
    const m = JSON.parse(new TextDecoder().decode(frame)) as {
      type: string;
      clientId: string;
      seq: number;
      replica: number;
      result: unknown;
    };
    if (m.type !== "reply" || m.replica !== i) return;
    const w = this.#waiting.get(m.clientId);
    if (!w || w.seq !== m.seq) return;
    const key = JSON.stringify(m.result);
    const set = w.votes.get(key) ?? new Set<number>();
    set.add(i);
    w.votes.set(key, set);
    if (set.size >= weakQuorumSize) {
      this.#waiting.delete(m.clientId);
      w.resolve();
    }
  }

  request(clientId: string, seq: number, op: RegistryOp): Promise<void> {
    const bytes = encodeMessage({ type: "request", request: { clientId, seq, op } });
    return new Promise((resolve) => {
      this.#waiting.set(clientId, { seq, votes: new Map(), resolve });
      for (const s of this.#sockets) writeFrame(s, bytes);
    });
  }

  close(): void {
    for (const s of this.#sockets) s.destroy();
  }
}

async function runCluster(wan: boolean, clientCount: number) {
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
    ...(values["cpu-prof"]
      ? { nodeArgs: ["--cpu-prof", "--cpu-prof-dir", values["cpu-prof"]] }
      : {}),
  });
  try {
    await cluster.start();
    const endpoints = cluster.endpoints;
    const setup = new RegistryClient({ endpoints, clientId: "bench-setup" });
    await setup.registerNode("n0", "ORD", "a10", "127.0.0.1:1");
    const mux = new MultiplexedClients(endpoints);
    let measuring = false;
    let stop = false;
    let done = 0;
    const lat: number[] = [];
    let latSum = 0;
    const warmupMs = 2_000;
    const loops = Array.from({ length: clientCount }, async (_, k) => {
      for (let seq = 1; !stop; seq++) {
        const t0 = performance.now();
        await mux.request(`b${k}`, seq, {
          kind: "set_placement",
          expert: `L${k}.E${seq % 64}`,
          nodeIds: ["n0"],
        });
        if (measuring) {
          done += 1;
          lat.push(performance.now() - t0);
          latSum += performance.now() - t0;
        }
      }
    });
    await new Promise((r) => setTimeout(r, warmupMs));
    measuring = true;
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    measuring = false;
    const elapsed = (performance.now() - t0) / 1000;
    const statusOrd = (await setup.status(0, 10_000)) as Record<string, number>;
    // The other replicas' counters for the per-block cost breakdown; one too busy to answer is left
    // out (and said so), rather than failing the run.
    const statuses = [statusOrd];
    for (let i = 1; i < regionsInLeaderOrder.length; i++)
      try {
        statuses.push((await setup.status(i, 10_000)) as Record<string, number>);
      } catch {
        console.log(
          `  (no status from ${regionsInLeaderOrder[i]}: left out of the cost breakdown)`,
        );
      }
    stop = true;
    await Promise.race([Promise.all(loops), new Promise((r) => setTimeout(r, 5_000))]);
    mux.close();
    setup.close();
    lat.sort((a, b) => a - b);
    const pct = (p: number) =>
      lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? Number.NaN;
    return {
      opsPerS: done / elapsed,
      p50: pct(0.5),
      p99: pct(0.99),
      mean: latSum / Math.max(1, lat.length),
      status: statusOrd,
      statuses,
    };
  } finally {
    if (values["cpu-prof"]) {
      const pids = cluster.pids();
      await cluster.stopGracefully(5_000);
      console.log(`  CPU profiles in ${values["cpu-prof"]}, by pid: ${JSON.stringify(pids)}`);
    } else await cluster.stop();
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

interface Phase {
  p50: number;
  p99: number;
  mean: number;
}
const lightN = Number(values["light-clients"]);
console.log(
  `five coordinators on loopback, clients logical (1 outstanding request each, multiplexed on one connection per coordinator), max_batch ${values.batch}, ${seconds} s measured after 2 s warm-up; load average ${loadavg()
    .map((x) => x.toFixed(2))
    .join(" ")}`,
);
console.log(
  `ORD's quorum one-way delay δ (4th-nearest incl. itself) with WAN: ${quorumDelayMs} ms`,
);
/** Median ms of ML-DSA-65 sign and verify on this machine now (fresh messages: no cache hits). */
function measureMlDsa(): { signMs: number; verifyMs: number } {
  const kp = mlDsa65Keygen(new Uint8Array(32).fill(7));
  const signer = new MlDsa65Signer(0, kp.secretKey);
  const verifier = new MlDsa65Verifier([kp.publicKey]);
  const signs: number[] = [];
  const verifies: number[] = [];
  for (let i = 0; i < 15; i++) {
    const m = new TextEncoder().encode(`bench-${i}-${Math.random()}`);
    let t = performance.now();
    const sig = signer.sign(m);
    signs.push(performance.now() - t);
    t = performance.now();
    verifier.verify(0, m, sig);
    verifies.push(performance.now() - t);
  }
  const med = (x: number[]) => x.sort((a, b) => a - b)[Math.floor(x.length / 2)] as number;
  return { signMs: med(signs), verifyMs: med(verifies) };
}

/** Median ms of one WAL-sized write + fsync in the temp directory, as the coordinators do it. */
function measureWalAppend(): number {
  const dir = mkdtempSync(join(tmpdir(), "moe-wal-bench-"));
  try {
    const fd = openSync(join(dir, "wal.log"), "a");
    const record = Buffer.alloc(2_048, 7);
    const t: number[] = [];
    for (let i = 0; i < 30; i++) {
      const t0 = performance.now();
      writeSync(fd, record);
      fsyncSync(fd);
      t.push(performance.now() - t0);
    }
    closeSync(fd);
    return t.sort((a, b) => a - b)[Math.floor(t.length / 2)] as number;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (!values.only || values.only === "model") {
  const wanMs = (a: number, b: number) =>
    a === b
      ? 0
      : 1000 *
        oneWayLatencySeconds(
          { ...cfg, swarm: { ...cfg.swarm, emulation: { ...cfg.swarm.emulation, enabled: true } } },
          regionsInLeaderOrder[a] as string,
          regionsInLeaderOrder[b] as string,
        );
  const cost = measureMlDsa();
  const appendMs = measureWalAppend();
  console.log(
    `model (real Replica code, simulated clock, WAN matrix, ${lightN} clients, one CPU per replica): ML-DSA-65 measured now: sign ${cost.signMs.toFixed(2)} ms, verify ${cost.verifyMs.toFixed(2)} ms`,
  );
  console.log(
    `  WAL append (write + fsync of a ~2 KB record) measured now: ${appendMs.toFixed(2)} ms (median)`,
  );
  for (const cpu of [
    { signMs: 0, verifyMs: 0, appendMs: 0 },
    { signMs: cost.signMs, verifyMs: cost.verifyMs, appendMs: 0 },
    { signMs: cost.signMs, verifyMs: cost.verifyMs, appendMs },
  ])
    for (const commitVotes of [false, true]) {
      const r = runLatencyModel({
        linkDelayMs: wanMs,
        commitVotes,
        ...cpu,
        clients: lightN,
        thinkMs: 50,
        durationMs: 20_000,
      });
      const b = (r.status[0] as (typeof r.status)[number]).latencyBreakdownMs;
      const dd = (ms: number) => `${ms.toFixed(0)} ms (${(ms / quorumDelayMs).toFixed(2)} δ)`;
      console.log(
        `  ${cpu.signMs === 0 ? "zero CPU          " : cpu.appendMs === 0 ? "ML-DSA CPU        " : "ML-DSA CPU + fsync"} ${commitVotes ? "commit votes" : "2-chain only"}: ORD proposal→commit ${dd(b.proposalToCommit.p50)} [→QC ${dd(b.proposalToQc.p50)}, QC→commit ${dd(b.qcToCommit.p50)}], arrival→proposal mean ${dd(b.arrivalToProposal.mean)}; client p50 ${dd(r.clientP50Ms)}, p99 ${dd(r.clientP99Ms)}`,
      );
      if (cpu.signMs > 0)
        console.log(
          `      per committed block, all 5 replicas: ${r.signsPerBlock.toFixed(1)} signatures made, ${r.verifiesPerBlock.toFixed(1)} checked = ${(r.signsPerBlock * cost.signMs + r.verifiesPerBlock * cost.verifyMs).toFixed(0)} ms of signature CPU at the measured costs; ${r.appendsPerBlock.toFixed(1)} WAL appends`,
        );
    }
}

const cases = [
  { name: "lan", wan: false, clients: clientsN },
  { name: "wan", wan: true, clients: clientsN },
  { name: "lan-light", wan: false, clients: lightN },
  { name: "wan-light", wan: true, clients: lightN },
];
for (const c of cases) {
  if (values.only && values.only !== c.name) continue;
  const r = await runCluster(c.wan, c.clients);
  const s = r.status as Record<string, unknown> & Record<string, number>;
  const d = (ms: number) => (c.wan ? ` (${(ms / quorumDelayMs).toFixed(2)} δ)` : "");
  const ph = (x: Phase | undefined) =>
    x ? `p50 ${x.p50.toFixed(0)}${d(x.p50)} mean ${x.mean.toFixed(1)}${d(x.mean)}` : "n/a";
  const b = s.latencyBreakdownMs as Record<string, Phase> | undefined;
  const arrivalMean = b
    ? (b.arrivalToProposal?.mean ?? 0) + (b.proposalToCommit?.mean ?? 0)
    : Number.NaN;
  console.log(
    `${c.name.padEnd(9)} ${c.clients} clients: ${r.opsPerS.toFixed(0)} committed ops/s; client-observed commit latency p50 ${r.p50.toFixed(1)} ms${d(r.p50)}, p99 ${r.p99.toFixed(1)} ms${d(r.p99)}, mean ${r.mean.toFixed(1)} ms${d(r.mean)}; ORD replica: view ${s.view}, height ${s.committedHeight}, ${((s.requestsCommittedTotal ?? 0) / Math.max(1, s.blocksCommittedTotal ?? 1)).toFixed(0)} requests/block, commits by commit votes ${s.commitsByCommitVotes ?? "n/a"} / by 2-chain ${s.commitsByTwoChain ?? "n/a"}`,
  );
  console.log(
    `  ORD: arrival→commit p50 ${s.commitLatencyMsP50} ms${d(s.commitLatencyMsP50 ?? 0)} p99 ${s.commitLatencyMsP99} ms${d(s.commitLatencyMsP99 ?? 0)}`,
  );
  console.log(`    arrival→proposal  ${ph(b?.arrivalToProposal)}`);
  console.log(`    proposal→QC       ${ph(b?.proposalToQc)}`);
  console.log(`    QC→commit         ${ph(b?.qcToCommit)}`);
  console.log(
    `    proposal→commit   ${ph(b?.proposalToCommit)}  (p99 ${b?.proposalToCommit?.p99 ?? "n/a"})`,
  );
  // Where the replicas' time went, per committed block (counters since start, warm-up included).
  const blocks = Math.max(1, s.blocksCommittedTotal ?? 1);
  const perBlock = (k: string) =>
    r.statuses.reduce(
      (a, st) => a + ((st.costs as unknown as Record<string, number>)?.[k] ?? 0),
      0,
    ) / blocks;
  const ordCosts = s.costs as unknown as Record<string, number> | undefined;
  console.log(
    `  per committed block, ${r.statuses.length === 5 ? "all 5" : `${r.statuses.length} of 5`} replicas (backend ${s.signatureBackend}): ${perBlock("walAppends").toFixed(1)} WAL appends+fsync = ${perBlock("walAppendMsTotal").toFixed(1)} ms, ${perBlock("signs").toFixed(1)} signs = ${perBlock("signMsTotal").toFixed(1)} ms, ${perBlock("verifies").toFixed(1)} verifies (+${perBlock("verifyCacheHits").toFixed(1)} cache hits) = ${perBlock("verifyMsTotal").toFixed(1)} ms`,
  );
  if (ordCosts)
    console.log(
      `  ORD means: WAL append+fsync ${ordCosts.walAppendMsMean?.toFixed(2)} ms, sign ${ordCosts.signMsMean?.toFixed(2)} ms, verify ${ordCosts.verifyMsMean?.toFixed(2)} ms; emulated-delay timers late by p50 ${ordCosts.delayLateMsP50?.toFixed(2)} ms, mean ${ordCosts.delayLateMsMean?.toFixed(2)} ms (${ordCosts.delayTimers} timers)`,
    );
  if (c.clients <= 64)
    console.log(
      `    commit→client     mean ${(r.mean - arrivalMean).toFixed(1)} ms${d(r.mean - arrivalMean)} (client mean − ORD arrival→commit mean, approximate: ORD's samples include the warm-up; the client waits for f + 1 = 2 matching replies)`,
    );
}
