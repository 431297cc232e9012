// Training through the swarm vs in-process: the model's Trainer with its experts (a) in this
// process and (b) on expert nodes (child processes, 3 replicas per expert, forward once, backward
// and updates to every replica), same seed and batches; prints step time, tokens/s and the ratio,
// and the loss of both runs side by side (they should agree to float tolerance).
//   npx tsx bench/swarm-train.ts [steps]

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Prng } from "../src/common/prng.ts";
import { loadConfig } from "../src/config/load.ts";
import { buildLocalModel, buildTrunk } from "../src/model/build.ts";
import { mobyDick, sampleBatch } from "../src/model/dataset.ts";
import { Trainer } from "../src/model/trainer.ts";
import { startTrainingSwarm } from "../src/swarm/training-swarm.ts";

const steps = Number(process.argv[2] ?? 10);
const B = 8;
const T = 64;
const dir = mkdtempSync(join(tmpdir(), "moe-swarm-bench-train-"));
try {
  const configPath = join(dir, "swarm.yaml");
  writeFileSync(configPath, "profile: local\nswarm:\n  emulation:\n    enabled: false\n");
  const { config } = loadConfig(configPath);
  const text = mobyDick().train;
  const run = async (trainer: Trainer) => {
    const rng = new Prng(3);
    const times: number[] = [];
    const losses: number[] = [];
    for (let s = 0; s < steps + 1; s++) {
      const batch = sampleBatch(text, B, T, rng);
      const t0 = performance.now();
      const r = await trainer.trainStep(batch, 3e-3);
      if (s > 0) times.push(performance.now() - t0); // first step warms up
      losses.push(r.loss);
    }
    times.sort((a, b) => a - b);
    return { p50: times[Math.floor(times.length / 2)] as number, losses };
  };
  const local = await buildLocalModel(config);
  const a = await run(new Trainer(local.model));
  await local.host.close();
  const swarm = await startTrainingSwarm(config, { configPath });
  const b = await run(new Trainer(buildTrunk(config, swarm.host)));
  await swarm.stop();
  const tps = (ms: number) => ((B * T) / (ms / 1000)).toFixed(0);
  console.log(
    `# local profile, B=${B}, T=${T}, ${steps} steps (median step time), no injected latency`,
  );
  console.log("| run | step ms | tokens/s |");
  console.log("|---|---|---|");
  console.log(`| in-process | ${a.p50.toFixed(1)} | ${tps(a.p50)} |`);
  console.log(`| swarm (5 nodes, 3 replicas) | ${b.p50.toFixed(1)} | ${tps(b.p50)} |`);
  console.log(`swarm / in-process step time: ${(b.p50 / a.p50).toFixed(2)}×`);
  const maxRel = Math.max(
    ...a.losses.map((l, i) => Math.abs(l - (b.losses[i] as number)) / Math.abs(l)),
  );
  console.log(`loss curves: in-process ${a.losses.map((l) => l.toFixed(4)).join(" ")}`);
  console.log(`             swarm      ${b.losses.map((l) => l.toFixed(4)).join(" ")}`);
  console.log(`max relative loss difference: ${maxRel.toExponential(2)}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
