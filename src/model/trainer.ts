// One training step of the MoE transformer, with the experts wherever their ExpertHost puts them:
// forward → loss (CE + aux) → backward (experts accumulate their own gradients) → global-norm
// clipping over trunk and experts together → AdamW on the trunk here and on the experts through
// `applyUpdate` with the same step, learning rate and clip scale. Evaluation reports bits per
// byte (tokens are bytes, so bpb = CE in nats / ln 2).

import { invariant } from "../common/assert.ts";
import { AdamW, type AdamWInit } from "../tensor/adamw.ts";
import { backward, noGradAsync } from "../tensor/tensor.ts";
import type { Batch } from "./dataset.ts";
import type { ExpertId } from "./expert.ts";
import { MoeTransformer } from "./transformer.ts";

export interface StepResult {
  readonly loss: number;
  readonly ce: number;
  readonly loadBalance: number;
  readonly zLoss: number;
  /** Global gradient norm before clipping. */
  readonly gradNorm: number;
  readonly tokens: number;
}

export class Trainer {
  readonly model: MoeTransformer;
  readonly optimizer: AdamW;
  readonly clipNorm: number;
  readonly #experts: ExpertId[];
  step = 0;

  constructor(model: MoeTransformer, init: { adamw?: AdamWInit; clipNorm?: number } = {}) {
    this.model = model;
    this.optimizer = new AdamW([...model.params.values()], MoeTransformer.decays, init.adamw);
    this.clipNorm = init.clipNorm ?? 1;
    invariant(this.clipNorm > 0, "clip norm > 0");
    this.#experts = model.expertIds();
  }

  async trainStep(batch: Batch, learningRate: number): Promise<StepResult> {
    const { model } = this;
    const out = await model.forward(batch.ids, batch.B, batch.T, batch.targets);
    invariant(out.loss !== null && out.ce !== null, "training forward without a loss");
    await backward(out.loss);
    const sq = this.optimizer.gradSquaredNorm() + (await model.host.gradSquaredNorm(this.#experts));
    const gradNorm = Math.sqrt(sq);
    invariant(
      Number.isFinite(gradNorm),
      () => `gradient norm is ${gradNorm} at step ${this.step + 1}`,
    );
    const gradScale = gradNorm > this.clipNorm ? this.clipNorm / gradNorm : 1;
    this.step++;
    this.optimizer.step(this.step, learningRate, gradScale);
    await model.host.applyUpdate(this.#experts, { step: this.step, learningRate, gradScale });
    model.clearRoutingCaches();
    return {
      loss: out.loss.item(),
      ce: out.ce.item(),
      loadBalance: out.loadBalance,
      zLoss: out.zLoss,
      gradNorm,
      tokens: batch.B * batch.T,
    };
  }
}

/** Mean cross-entropy over the batches, in bits per byte. */
export async function bitsPerByte(
  model: MoeTransformer,
  batches: readonly Batch[],
): Promise<number> {
  let nats = 0;
  let tokens = 0;
  for (const b of batches) {
    const out = await noGradAsync(() =>
      model.forward(b.ids, b.B, b.T, b.targets, { routingCache: false }),
    );
    nats += (out.ce?.item() ?? 0) * b.B * b.T;
    tokens += b.B * b.T;
  }
  invariant(tokens > 0, "bitsPerByte: no tokens");
  return nats / tokens / Math.LN2;
}
