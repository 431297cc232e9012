// Training throughput of the `local` profile (tokens/s), per expert backend, with a breakdown of
// one step's time (forward / backward / optimizer). Usage:
//   npx tsx bench/model-train.ts [steps=10] [batch=8] [backends=js,onnx,auto] [trunks=js,onnx] [threads=1]
// Tokens are bytes; a step is forward + backward + AdamW on trunk and experts.

import { Prng } from "../src/common/prng.ts";
import { loadConfig } from "../src/config/load.ts";
import { modelConfigFrom } from "../src/model/config.ts";
import { mobyDick, sampleBatch } from "../src/model/dataset.ts";
import { type ExpertBackend, LocalExpertHost } from "../src/model/local-expert-host.ts";
import { Trainer } from "../src/model/trainer.ts";
import { MoeTransformer } from "../src/model/transformer.ts";
import { OnnxKernels } from "../src/tensor/onnx-kernels.ts";

const steps = Number(process.argv[2] ?? 10);
const B = Number(process.argv[3] ?? 8);
const backends = (process.argv[4] ?? "js,onnx,auto").split(",") as ExpertBackend[];
const trunks = (process.argv[5] ?? "js,onnx").split(",");
const threads = Number(process.argv[6] ?? 1);
const mc = modelConfigFrom(loadConfig().config);
const T = mc.context;
const data = mobyDick();
console.log(
  `local profile: d_model ${mc.dModel}, ${mc.tiers.map((t) => `${t.experts}×${t.activation}(h=${t.expertHidden})`).join(" / ")}, batch ${B}×${T} bytes`,
);
for (const trunk of trunks)
  for (const backend of backends) {
    const host = await LocalExpertHost.create(mc, { backend, threads });
    const kernels = trunk === "onnx" ? await OnnxKernels.create(threads) : null;
    const trainer = new Trainer(new MoeTransformer(mc, host, "float32", kernels));
    const rng = new Prng(1);
    await trainer.trainStep(sampleBatch(data.train, B, T, rng), 1e-3); // warm-up
    const times: number[] = [];
    for (let s = 0; s < steps; s++) {
      const batch = sampleBatch(data.train, B, T, rng);
      const t0 = performance.now();
      await trainer.trainStep(batch, 1e-3);
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    const median = times[Math.floor(times.length / 2)] as number;
    console.log(
      `trunk ${trunk.padEnd(4)} experts ${backend.padEnd(4)} threads ${threads}: median step ${median.toFixed(0)} ms → ${Math.round((B * T * 1000) / median)} tokens/s ` +
        `(calls js ${host.calls.js}, onnx ${host.calls.onnx})`,
    );
    await host.close();
    await kernels?.release();
  }
