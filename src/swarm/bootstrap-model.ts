// The `local` model `moe-swarm up` serves when none has been trained yet: a short, time-bounded
// training run of the model (src/model: Trainer, AdamW, warmup + cosine schedule) on Moby Dick,
// saved as the model's safetensors checkpoint. It only exists so that `npm start` on a fresh
// machine serves a model that has learned something within a few minutes; `moe-swarm train`
// (issue #4) is the real training command, and its output is served the same way.

import { Prng } from "../common/prng.ts";
import type { SwarmConfig } from "../config/schema.ts";
import { buildLocalModel } from "../model/build.ts";
import { saveModel } from "../model/checkpoint.ts";
import { mobyDick, sampleBatch } from "../model/dataset.ts";
import { learningRate } from "../model/schedule.ts";
import { Trainer } from "../model/trainer.ts";

/** Default wall-clock budget of the bootstrap training run. */
export const bootstrapTrainSecondsDefault = 120;
export const bootstrapBatchSequences = 8;
export const bootstrapSequenceTokensMax = 64;
export const bootstrapPeakLearningRate = 3e-3;
export const bootstrapWarmupSteps = 20;
/** Steps the cosine schedule is laid out over; the time budget usually ends the run earlier. */
export const bootstrapScheduleSteps = 2000;

export interface BootstrapProgress {
  readonly step: number;
  readonly loss: number;
  readonly elapsedSeconds: number;
  readonly budgetSeconds: number;
}

export interface BootstrapResult {
  readonly steps: number;
  readonly firstLoss: number;
  readonly lastLoss: number;
  readonly bytes: number;
}

/** Trains for at most `budgetSeconds` and saves the model to `path`. */
export async function trainBootstrapModel(
  cfg: SwarmConfig,
  path: string,
  budgetSeconds: number,
  onProgress: (p: BootstrapProgress) => void = () => {},
): Promise<BootstrapResult> {
  const { model, host } = await buildLocalModel(cfg, { backend: "auto" });
  try {
    const trainer = new Trainer(model);
    const text = mobyDick().train;
    const rng = new Prng(cfg.model.seed);
    const T = Math.min(bootstrapSequenceTokensMax, cfg.model.context_length);
    const schedule = {
      peak: bootstrapPeakLearningRate,
      min: bootstrapPeakLearningRate / 10,
      warmupSteps: bootstrapWarmupSteps,
      totalSteps: bootstrapScheduleSteps,
    };
    const start = performance.now();
    let firstLoss = Number.NaN;
    let lastLoss = Number.NaN;
    let step = 0;
    while ((performance.now() - start) / 1000 < budgetSeconds && step < bootstrapScheduleSteps) {
      step++;
      const batch = sampleBatch(text, bootstrapBatchSequences, T, rng);
      const r = await trainer.trainStep(batch, learningRate(schedule, step));
      if (step === 1) firstLoss = r.ce;
      lastLoss = r.ce;
      onProgress({
        step,
        loss: r.ce,
        elapsedSeconds: (performance.now() - start) / 1000,
        budgetSeconds,
      });
    }
    const bytes = saveModel(path, model, host, {
      trained_by: "moe-swarm up (bootstrap)",
      steps: String(step),
      final_ce: String(lastLoss),
    });
    return { steps: step, firstLoss, lastLoss, bytes };
  } finally {
    await host.close();
  }
}
