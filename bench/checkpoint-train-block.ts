// Figure: how long a checkpoint stops the training thread, with the warm and cold copies inline
// (as before: zstd-9 + range coder, brotli-11 + ML-KEM/AES-GCM sealing on the training thread)
// against on a TierCopier worker (the training thread does the hot write and hands the copies
// over). Same checkpoints (an expert FFN trained with AdamW: weights + both moments), same run.
// While the background copies run, the training thread keeps doing 1 ms steps; the bench counts
// them and reports the longest gap between two steps (what a copy still steals from training).
// Run: npx tsx bench/checkpoint-train-block.ts [d=256] [h=1024] [checkpoints=3]

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateOperatorKeyPair } from "../src/crypto/envelope.ts";
import { CheckpointStore, type Shard } from "../src/storage/checkpoint-store.ts";
import { chunkSizesFromAverage } from "../src/storage/fastcdc.ts";
import { TierCopier } from "../src/storage/tier-copier.ts";
import { tiersIn } from "../test/storage/fixtures/store.ts";
import { ExpertTrainer } from "../test/storage/fixtures/train-expert.ts";

const d = Number(process.argv[2] ?? 256);
const h = Number(process.argv[3] ?? 1024);
const count = Number(process.argv[4] ?? 3);
const root = mkdtempSync(join(tmpdir(), "moe-bench-train-block-"));
const keys = generateOperatorKeyPair();

const trainer = new ExpertTrainer({ seed: 4, d, h, tokens: 32, lr: 1e-3 });
const checkpoints: Shard[][] = [];
for (let c = 0; c < count; c++) {
  for (let s = 0; s < 50; s++) trainer.trainStep();
  checkpoints.push(trainer.checkpoint());
}
const raw = checkpoints[0]?.reduce((s, x) => s + x.bytes.length, 0) ?? 0;
console.log(
  `${count} checkpoints of an expert FFN d=${d} h=${h} (weights + AdamW moments), ${(raw / 1e6).toFixed(1)} MB each; each copied hot → warm and hot → cold`,
);

function open(label: string): CheckpointStore {
  return new CheckpointStore({
    tiers: tiersIn(join(root, label)),
    chunkSizes: chunkSizesFromAverage(256 * 1024),
    similarityThreshold: 0.8,
    operatorPublicKey: keys.publicKey,
    operatorSecretKey: keys.secretKey,
  });
}

// ---- inline: the training thread does everything ----
const inline = open("inline");
const inlineMs: number[] = [];
for (const [c, shards] of checkpoints.entries()) {
  const t0 = performance.now();
  await inline.saveAsync("hot", `c${c}`, shards);
  inline.copy("hot", "warm", `c${c}`);
  inline.copy("hot", "cold", `c${c}`);
  inlineMs.push(performance.now() - t0);
}

// ---- background: hot write on the training thread, copies on the worker ----
const bg = open("background");
const copier = await TierCopier.start(bg.spec);
const blockedMs: number[] = [];
let steps = 0;
let longestGapMs = 0;
const t1 = performance.now();
for (const [c, shards] of checkpoints.entries()) {
  const t0 = performance.now();
  await copier.whileWriting(() => bg.saveAsync("hot", `c${c}`, shards));
  await copier.enqueueCopy("hot", "warm", `c${c}`);
  await copier.enqueueCopy("hot", "cold", `c${c}`);
  blockedMs.push(performance.now() - t0);
  // "Training" between checkpoints: 1 ms steps until this checkpoint's copies are done.
  let last = performance.now();
  while (copier.backlog > 0) {
    const s0 = performance.now();
    while (performance.now() - s0 < 1) {}
    steps++;
    await new Promise((r) => setImmediate(r));
    const now = performance.now();
    longestGapMs = Math.max(longestGapMs, now - last - 1);
    last = now;
  }
}
await copier.close();
const totalBgMs = performance.now() - t1;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
console.log(
  `  inline copies: training stopped ${(mean(inlineMs) / 1000).toFixed(2)} s per checkpoint ` +
    `(${inlineMs.map((x) => (x / 1000).toFixed(2)).join(", ")} s)`,
);
console.log(
  `  TierCopier: training stopped ${(mean(blockedMs) / 1000).toFixed(2)} s per checkpoint (hot write + hand-over; ` +
    `${blockedMs.map((x) => (x / 1000).toFixed(2)).join(", ")} s); ${steps} training steps of 1 ms ran while the copies ran ` +
    `(${(totalBgMs / 1000).toFixed(1)} s in all), longest pause between steps ${longestGapMs.toFixed(1)} ms`,
);
console.log(
  `  training-thread stop, TierCopier / inline: ${(mean(blockedMs) / mean(inlineMs)).toFixed(3)}`,
);
for (const tier of ["warm", "cold"] as const) {
  const same = bg.list(tier).length === inline.list(tier).length;
  if (!same) throw new Error(`the background ${tier} tier lacks checkpoints`);
}
rmSync(root, { recursive: true, force: true });
