// Figure: bytes stored for successive checkpoints of the project's MoE transformer (issue #4's
// `local` profile model, trained on Moby-Dick with its Trainer: AdamW, gradient clipping,
// onnxruntime kernels), saved as safetensors weights the way `moe-swarm train` writes them, into
// the warm tier — beside restic and zstd-9 on the same files; then the same with the full training
// state (weights + AdamW moments, as `train --checkpoint-every` saves it), and every encoding we
// tried on the same series (checkpoint-encodings.ts).
// Run: npx tsx bench/checkpoint-model-series.ts [steps between checkpoints=100] [checkpoints=5] [lr=3e-3] [dump dir]
// With a dump dir the series is written there (c0/, c1/, ...); a dump dir that already holds the
// whole series is read back instead of training again (to iterate on encodings; says so).

import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Prng } from "../src/common/prng.ts";
import { loadConfig } from "../src/config/load.ts";
import { modelConfigFrom } from "../src/model/config.ts";
import { mobyDick, sampleBatch } from "../src/model/dataset.ts";
import { LocalExpertHost } from "../src/model/local-expert-host.ts";
import { Trainer } from "../src/model/trainer.ts";
import { captureTrainingState } from "../src/model/training-state.ts";
import { MoeTransformer } from "../src/model/transformer.ts";
import type { Shard } from "../src/storage/checkpoint-store.ts";
import { CheckpointStore } from "../src/storage/checkpoint-store.ts";
import { chunkSizesFromAverage } from "../src/storage/fastcdc.ts";
import { OnnxKernels } from "../src/tensor/onnx-kernels.ts";
import { tiersIn } from "../test/storage/fixtures/store.ts";
import { printEncodingVariants } from "./checkpoint-encodings.ts";
import { duBytes, printPeers, seriesPeers } from "./storage-peers.ts";

const gap = Number(process.argv[2] ?? 100);
const count = Number(process.argv[3] ?? 5);
const lr = Number(process.argv[4] ?? 3e-3);
const dumpDir = process.argv[5];
const chunkAvgBytes = 256 * 1024;
const root = mkdtempSync(join(tmpdir(), "moe-bench-model-series-"));

const series: Shard[][] = [];
const reuse =
  dumpDir !== undefined && existsSync(join(dumpDir, `c${count - 1}`, "model.safetensors"));
if (reuse && dumpDir !== undefined) {
  for (let c = 0; c < count; c++)
    series.push(
      readdirSync(join(dumpDir, `c${c}`))
        .sort()
        .map((name) => ({
          name,
          bytes: new Uint8Array(readFileSync(join(dumpDir, `c${c}`, name))),
        })),
    );
  console.log(
    `series read back from ${dumpDir} (trained by an earlier run; lr and gap as it used)`,
  );
} else await train();

async function train(): Promise<void> {
  const mc = modelConfigFrom(loadConfig().config);
  const host = await LocalExpertHost.create(mc, { backend: "auto" });
  const kernels = await OnnxKernels.create(1);
  const model = new MoeTransformer(mc, host, "float32", kernels);
  const trainer = new Trainer(model);
  const data = mobyDick();
  const rng = new Prng(1);
  const t0 = performance.now();
  let loss = 0;
  let firstLoss = 0;
  for (let c = 0; c < count; c++) {
    for (let s = 0; s < gap; s++) {
      loss = (await trainer.trainStep(sampleBatch(data.train, 8, mc.context, rng), lr)).loss;
      if (c === 0 && s === 0) firstLoss = loss;
    }
    const shards = await captureTrainingState(trainer, {
      runId: "bench",
      recipe: {
        seed: 1,
        batch: 8,
        seq: mc.context,
        schedule: { peak: lr, min: lr, warmupSteps: 0, totalSteps: gap * count },
        clipNorm: 1,
        adamw: trainer.optimizer.hyper,
      },
      sampler: { seed: 1, draws: 0 },
      kernels: { experts: "onnx", trunk: "onnx" },
    });
    series.push(shards);
    if (dumpDir !== undefined) {
      mkdirSync(join(dumpDir, `c${c}`), { recursive: true });
      for (const s of shards) writeFileSync(join(dumpDir, `c${c}`, s.name), s.bytes);
    }
  }
  await host.close();
  await kernels.release();
  const params = (series[0]?.find((s) => s.name === "model.safetensors")?.bytes.length ?? 0) / 4;
  console.log(
    `MoE transformer, local profile (≈${(params / 1e6).toFixed(2)}M params), AdamW lr ${lr}, ${count} checkpoints ${gap} steps apart ` +
      `(loss ${firstLoss.toFixed(3)} → ${loss.toFixed(3)}, ${((performance.now() - t0) / 1000).toFixed(0)} s)`,
  );
}

/** The warm tier's bytes for `shards` of each checkpoint, beside restic and zstd-9 per file. */
function measure(label: string, shards: Shard[][]): void {
  const dir = join(root, label.replace(/\W+/g, "-"));
  const peers = seriesPeers(shards, join(dir, "peers"));
  printPeers(label, peers);
  const store = new CheckpointStore({
    tiers: tiersIn(join(dir, "store")),
    chunkSizes: chunkSizesFromAverage(chunkAvgBytes),
    similarityThreshold: 0.8,
  });
  let deltas = 0;
  let chunks = 0;
  const s0 = performance.now();
  shards.forEach((cs, c) => {
    const r = store.save("warm", `step-${(c + 1) * gap}`, cs);
    deltas += r.deltaChunks;
    chunks += r.chunks;
  });
  const saveS = (performance.now() - s0) / 1000;
  // Restore through a fresh store: the saving store's cache holds every block it read as a delta
  // base, which would hide the decoding cost.
  const reader = new CheckpointStore({
    tiers: tiersIn(join(dir, "store")),
    chunkSizes: chunkSizesFromAverage(chunkAvgBytes),
    similarityThreshold: 0.8,
  });
  const r0 = performance.now();
  shards.forEach((cs, c) => {
    const back = reader.restore("warm", `step-${(c + 1) * gap}`);
    for (const s of cs) {
      const got = back.find((b) => b.name === s.name);
      if (got === undefined || !Buffer.from(got.bytes).equals(Buffer.from(s.bytes)))
        throw new Error(`warm tier did not restore ${s.name} of checkpoint ${c} bit for bit`);
    }
  });
  const restoreS = (performance.now() - r0) / 1000;
  const warm = duBytes(join(dir, "store", "warm")) / peers.raw;
  console.log(
    `  moe-swarm warm tier: ${warm.toFixed(3)}× (${chunks} chunks, ${deltas} against a base; FastCDC avg ${chunkAvgBytes / 1024} KiB; ` +
      `save ${(peers.raw / 1e6 / saveS).toFixed(1)} MB/s, restore (cold cache) ${(peers.raw / 1e6 / restoreS).toFixed(1)} MB/s, bit-exact)`,
  );
  if (peers.restic !== undefined)
    console.log(
      `  warm tier / restic: ${(warm / (peers.restic / peers.raw)).toFixed(2)}; warm tier / zstd-9 per file: ${(warm / (peers.zstd / peers.raw)).toFixed(2)}`,
    );
}

measure(
  "weights (model.safetensors)",
  series.map((cs) => cs.filter((s) => s.name === "model.safetensors")),
);
measure("training state (weights + AdamW moments + training.json)", series);
console.log("every encoding tried, on this series:");
printEncodingVariants(series);
rmSync(root, { recursive: true, force: true });
