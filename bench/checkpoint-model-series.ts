// Figure: bytes stored for successive checkpoints of the project's MoE transformer (issue #4's
// `local` profile model, trained on Moby-Dick with its Trainer: AdamW, gradient clipping,
// onnxruntime kernels), saved as safetensors weights the way `moe-swarm train` writes them, into
// the warm tier — beside restic and zstd-9 on the same files. (The model's checkpoints hold
// weights only: its AdamW state is not exported by src/model.)
// Run: npx tsx bench/checkpoint-model-series.ts [steps between checkpoints=100] [checkpoints=5] [lr=3e-3]

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Prng } from "../src/common/prng.ts";
import { loadConfig } from "../src/config/load.ts";
import { encodeModel } from "../src/model/checkpoint.ts";
import { modelConfigFrom } from "../src/model/config.ts";
import { mobyDick, sampleBatch } from "../src/model/dataset.ts";
import { LocalExpertHost } from "../src/model/local-expert-host.ts";
import { Trainer } from "../src/model/trainer.ts";
import { MoeTransformer } from "../src/model/transformer.ts";
import type { Shard } from "../src/storage/checkpoint-store.ts";
import { CheckpointStore } from "../src/storage/checkpoint-store.ts";
import { chunkSizesFromAverage } from "../src/storage/fastcdc.ts";
import { OnnxKernels } from "../src/tensor/onnx-kernels.ts";
import { tiersIn } from "../test/storage/fixtures/store.ts";
import { duBytes, printPeers, seriesPeers } from "./storage-peers.ts";

const gap = Number(process.argv[2] ?? 100);
const count = Number(process.argv[3] ?? 5);
const lr = Number(process.argv[4] ?? 3e-3);
const chunkAvgBytes = 256 * 1024;
const root = mkdtempSync(join(tmpdir(), "moe-bench-model-series-"));

const mc = modelConfigFrom(loadConfig().config);
const host = await LocalExpertHost.create(mc, { backend: "auto" });
const kernels = await OnnxKernels.create(1);
const model = new MoeTransformer(mc, host, "float32", kernels);
const trainer = new Trainer(model);
const data = mobyDick();
const rng = new Prng(1);
const series: Shard[][] = [];
const t0 = performance.now();
let loss = 0;
let firstLoss = 0;
for (let c = 0; c < count; c++) {
  for (let s = 0; s < gap; s++) {
    loss = (await trainer.trainStep(sampleBatch(data.train, 8, mc.context, rng), lr)).loss;
    if (c === 0 && s === 0) firstLoss = loss;
  }
  series.push([
    { name: "model.safetensors", bytes: encodeModel(model, host, { step: String(trainer.step) }) },
  ]);
}
await host.close();
await kernels.release();
const params = (series[0]?.[0]?.bytes.length ?? 0) / 4;
console.log(
  `MoE transformer, local profile (≈${(params / 1e6).toFixed(2)}M params), AdamW lr ${lr}, ${count} checkpoints ${gap} steps apart ` +
    `(loss ${firstLoss.toFixed(3)} → ${loss.toFixed(3)}, ${((performance.now() - t0) / 1000).toFixed(0)} s)`,
);
const peers = seriesPeers(series, join(root, "peers"));
printPeers("safetensors weights", peers);
const store = new CheckpointStore({
  tiers: tiersIn(join(root, "store")),
  chunkSizes: chunkSizesFromAverage(chunkAvgBytes),
  similarityThreshold: 0.8,
});
let deltas = 0;
let chunks = 0;
series.forEach((shards, c) => {
  const r = store.save("warm", `step-${(c + 1) * gap}`, shards);
  deltas += r.deltaChunks;
  chunks += r.chunks;
});
const warm = duBytes(join(root, "store", "warm")) / peers.raw;
console.log(
  `  moe-swarm warm tier: ${warm.toFixed(3)}× (${chunks} chunks, ${deltas} deltas; FastCDC avg ${chunkAvgBytes / 1024} KiB)`,
);
if (peers.restic !== undefined)
  console.log(
    `  warm tier / restic: ${(warm / (peers.restic / peers.raw)).toFixed(2)}; warm tier / zstd-9 per file: ${(warm / (peers.zstd / peers.raw)).toFixed(2)}`,
  );
rmSync(root, { recursive: true, force: true });
