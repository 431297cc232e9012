// Learning-rate schedule: linear warmup then cosine decay to a floor (Loshchilov & Hutter, SGDR,
// 2017; the GPT-2/3 recipe). lr(step) for 1-based steps.

import { invariant } from "../common/assert.ts";

export interface LrSchedule {
  readonly peak: number;
  readonly min: number;
  readonly warmupSteps: number;
  readonly totalSteps: number;
}

export function learningRate(s: LrSchedule, step: number): number {
  invariant(step >= 1, "lr step ≥ 1");
  invariant(s.totalSteps >= 1 && s.warmupSteps >= 0 && s.min <= s.peak, "lr schedule bounds");
  if (step <= s.warmupSteps) return (s.peak * step) / s.warmupSteps;
  if (step >= s.totalSteps) return s.min;
  const progress = (step - s.warmupSteps) / Math.max(1, s.totalSteps - s.warmupSteps);
  return s.min + 0.5 * (s.peak - s.min) * (1 + Math.cos(Math.PI * progress));
}
