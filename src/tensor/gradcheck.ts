// Gradient checking: compares the tape's gradients with central finite differences
// (f(θ+ε) − f(θ−ε)) / 2ε, coordinate by coordinate, in float64 so that rounding does not drown
// the derivative (truncation error O(ε²)). Used by the tests of every op and of the MoE block.

import { invariant } from "../common/assert.ts";
import type { Prng } from "../common/prng.ts";
import { alloc, type Buf, backward, noGradAsync, Tensor } from "./tensor.ts";

/** Σ out ⊙ r: turns any tensor into a scalar with a fixed random projection (r has out's size). */
export function project(out: Tensor, r: Buf): Tensor {
  invariant(out.size === r.length, "project: size mismatch");
  let s = 0;
  for (let i = 0; i < r.length; i++) s += (out.data[i] as number) * (r[i] as number);
  const data = alloc(1, out.dtype);
  data[0] = s;
  return Tensor.fromOp(
    data,
    [1],
    [out],
    (g) => {
      const go = out.gradBuffer();
      for (let i = 0; i < r.length; i++)
        go[i] = (go[i] as number) + (g[0] as number) * (r[i] as number);
    },
    "project",
  );
}

export function randomFloat64(n: number, rng: Prng, scaleBy = 1): Float64Array {
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal() * scaleBy;
  return a;
}

export interface GradCheckResult {
  /** Max over coordinates of |analytic − numeric| / max(|analytic| + |numeric|, floor). */
  readonly maxError: number;
  readonly worst: string;
  readonly checked: number;
}

/**
 * Checks d loss / d input for every element of `inputs` (all must require gradients). `loss`
 * rebuilds the scalar from the current input values. Error per coordinate is
 * |a − n| / max(|a| + |n|, floor) — relative where the derivative is large, absolute near zero.
 */
export async function gradCheck(
  loss: () => Tensor | Promise<Tensor>,
  inputs: readonly Tensor[],
  init: { epsilon?: number; floor?: number; maxPerInput?: number; beforeEach?: () => void } = {},
): Promise<GradCheckResult> {
  const eps = init.epsilon ?? 1e-6;
  const floor = init.floor ?? 1e-6;
  for (const x of inputs) {
    invariant(x.requiresGrad, `gradCheck: input ${x.name} does not require a gradient`);
    invariant(x.dtype === "float64", `gradCheck: input ${x.name} must be float64`);
    x.grad = null;
  }
  init.beforeEach?.();
  const l = await loss();
  await backward(l);
  const analytic = inputs.map((x) =>
    x.grad === null ? new Float64Array(x.size) : Float64Array.from(x.grad),
  );
  let maxError = 0;
  let worst = "";
  let checked = 0;
  for (let k = 0; k < inputs.length; k++) {
    const x = inputs[k] as Tensor;
    const n = Math.min(x.size, init.maxPerInput ?? x.size);
    const stride = x.size / n;
    for (let c = 0; c < n; c++) {
      const i = Math.floor(c * stride);
      const orig = x.data[i] as number;
      x.data[i] = orig + eps;
      init.beforeEach?.();
      const fp = (await noGradAsync(async () => loss())).item();
      x.data[i] = orig - eps;
      init.beforeEach?.();
      const fm = (await noGradAsync(async () => loss())).item();
      x.data[i] = orig;
      const num = (fp - fm) / (2 * eps);
      const ana = analytic[k]?.[i] as number;
      const err = Math.abs(ana - num) / Math.max(Math.abs(ana) + Math.abs(num), floor);
      checked++;
      if (err > maxError) {
        maxError = err;
        worst = `${x.name || `input${k}`}[${i}]: analytic ${ana}, numeric ${num}`;
      }
    }
  }
  return { maxError, worst, checked };
}
