// Figures: bytes stored for a series of successive training checkpoints as a fraction of their
// raw size (lossless), per tier, beside restic and zstd-9; and restore throughput per tier.
// The checkpoints come from a real training run: an expert FFN of src/model trained with the
// project's AdamW (test/storage/fixtures/train-expert.ts); each checkpoint holds the weights and
// both AdamW moments. Between checkpoints nearly every float changes, so exact dedup finds almost
// nothing; what helps is float-aware encoding (byte planes, XOR delta against the similar chunk).
// Run: npx tsx bench/checkpoint-series.ts [d] [h] [steps between checkpoints]

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateOperatorKeyPair } from "../src/crypto/envelope.ts";
import type { Shard } from "../src/storage/checkpoint-store.ts";
import { CheckpointStore } from "../src/storage/checkpoint-store.ts";
import { chunkSizesFromAverage } from "../src/storage/fastcdc.ts";
import { tiersIn } from "../test/storage/fixtures/store.ts";
import { ExpertTrainer } from "../test/storage/fixtures/train-expert.ts";
import { duBytes, printPeers, seriesPeers, uniqueDiskBytes } from "./storage-peers.ts";

const d = Number(process.argv[2] ?? 128);
const h = Number(process.argv[3] ?? 512);
const gap = Number(process.argv[4] ?? 200);
const count = 5;
const chunkAvgBytes = 256 * 1024;
const root = mkdtempSync(join(tmpdir(), "moe-bench-series-"));
const seconds = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e9;

// ---- the training run ----
const trainer = new ExpertTrainer({ seed: 3, d, h, tokens: 32, lr: 1e-3 });
const params = 2 * d * h + d + h;
const checkpoints: Shard[][] = [];
let t0 = process.hrtime.bigint();
const losses: number[] = [];
for (let c = 0; c < count; c++) {
  for (let s = 0; s < gap; s++) losses.push(trainer.trainStep());
  checkpoints.push(trainer.checkpoint());
}
console.log(
  `training: expert FFN d=${d} h=${h} (${(params / 1e6).toFixed(2)}M params), AdamW lr 1e-3, ${count} checkpoints ${gap} steps apart ` +
    `(loss ${losses[0]?.toExponential(2)} → ${losses.at(-1)?.toExponential(2)}, ${seconds(t0).toFixed(1)} s)`,
);
const raw = checkpoints.flat().reduce((s, x) => s + x.bytes.length, 0);
const rawWeights = checkpoints
  .flat()
  .filter((x) => x.name.startsWith("expert."))
  .reduce((s, x) => s + x.bytes.length, 0);
console.log(
  `raw: ${(raw / 1e6).toFixed(2)} MB in all (weights ${(rawWeights / 1e6).toFixed(2)} MB, AdamW moments the rest); FastCDC avg ${chunkAvgBytes / 1024} KiB`,
);

// ---- peers: restic (one snapshot per checkpoint into one repo) and zstd-9 per file ----
const peers = (label: string, select: (s: Shard) => boolean) =>
  seriesPeers(
    checkpoints.map((shards) => shards.filter(select)),
    join(root, label),
  );
const allPeers = peers("all", () => true);
const weightPeers = peers("weights", (s) => s.name.startsWith("expert."));
const fraction = (bytes: number) => (bytes / raw).toFixed(3);

// ---- ours: each tier ----
const keys = generateOperatorKeyPair();
const openStore = () =>
  new CheckpointStore({
    tiers: tiersIn(join(root, "store")),
    chunkSizes: chunkSizesFromAverage(chunkAvgBytes),
    similarityThreshold: 0.8,
    operatorPublicKey: keys.publicKey,
    operatorSecretKey: keys.secretKey,
  });
const store = openStore();
// Restores go through a fresh store each time (cold cache): the saving store's cache holds every
// block it read as a delta base, which would hide the decoding cost.
const rows: string[] = [];
for (const tier of ["hot", "warm", "cold"] as const) {
  t0 = process.hrtime.bigint();
  let deltas = 0;
  let dups = 0;
  let chunks = 0;
  checkpoints.forEach((shards, c) => {
    const r = store.save(tier, `step-${(c + 1) * gap}`, shards, { step: (c + 1) * gap });
    deltas += r.deltaChunks;
    dups += r.duplicateChunks;
    chunks += r.chunks;
  });
  const saveS = seconds(t0);
  const stored = duBytes(join(root, "store", tier));
  t0 = process.hrtime.bigint();
  const reader = openStore();
  for (let c = 0; c < count; c++) reader.restore(tier, `step-${(c + 1) * gap}`);
  const restoreS = seconds(t0);
  rows.push(
    `${tier.padEnd(5)} ${fraction(stored)}× raw  save ${(raw / 1e6 / saveS).toFixed(1).padStart(6)} MB/s  restore ${(raw / 1e6 / restoreS).toFixed(1).padStart(6)} MB/s  (${chunks} chunks: ${dups} duplicates, ${deltas} deltas)`,
  );
}
printPeers("whole training state (weights + AdamW moments)", allPeers);
console.log("  moe-swarm tiers (stored bytes include manifests, DAG nodes and key files):");
for (const r of rows) console.log(`    ${r}`);
t0 = process.hrtime.bigint();
const hotReader = openStore();
for (let c = 0; c < count; c++) hotReader.restore("hot", `step-${(c + 1) * gap}`);
console.log(
  `  hot restore once its chunks are shared with warm (warm records decoded): ${(raw / 1e6 / seconds(t0)).toFixed(1)} MB/s`,
);
const tierDir = (tier: string) => join(root, "store", tier);
const apart = duBytes(tierDir("hot")) + duBytes(tierDir("warm"));
const together = uniqueDiskBytes([tierDir("hot"), tierDir("warm")]);
console.log(
  `  hot + warm on disk, each file once (chunks in both tiers are one hard-linked file): ${fraction(together)}× raw ` +
    `(${fraction(apart)}× counted per tier)`,
);
const warm = Number(rows[1]?.split("×")[0]?.trim().split(/\s+/)[1]);
if (allPeers.restic !== undefined)
  console.log(
    `  warm tier / restic: ${(warm / (allPeers.restic / raw)).toFixed(2)}; warm tier / zstd-9 per file: ${(warm / (allPeers.zstd / raw)).toFixed(2)}`,
  );

// ---- weights only (what a model export holds) into a warm tier of its own ----
const weightsStore = new CheckpointStore({
  tiers: tiersIn(join(root, "weights-store")),
  chunkSizes: chunkSizesFromAverage(chunkAvgBytes),
  similarityThreshold: 0.8,
});
checkpoints.forEach((shards, c) => {
  weightsStore.save(
    "warm",
    `w-${c}`,
    shards.filter((s) => s.name.startsWith("expert.")),
  );
});
const weightsWarm = duBytes(join(root, "weights-store", "warm")) / weightPeers.raw;
printPeers("weights only", weightPeers);
console.log(`  moe-swarm warm tier: ${weightsWarm.toFixed(3)}×`);
if (weightPeers.restic !== undefined)
  console.log(
    `  warm tier / restic: ${(weightsWarm / (weightPeers.restic / weightPeers.raw)).toFixed(2)}; warm tier / zstd-9 per file: ${(weightsWarm / (weightPeers.zstd / weightPeers.raw)).toFixed(2)}`,
  );
rmSync(root, { recursive: true, force: true });
