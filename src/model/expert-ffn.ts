// One expert: a two-layer GELU feed-forward network y = GELU(x·W1 + b1)·W2 + b2 ([tokens, d] →
// [tokens, d]), its deterministic initialisation, and the plain-TypeScript forward / backward that
// serve as the reference for the onnxruntime path (src/tensor/onnx-ffn.ts) and as its fallback.
// Initial weights depend only on (model seed, layer, expert), so a swarm node that hosts an expert
// builds the same weights as a single-process run without any transfer.

import { invariant } from "../common/assert.ts";
import { Prng } from "../common/prng.ts";
import { geluBackward, geluForward } from "../tensor/gelu.ts";
import { gemm } from "../tensor/gemm.ts";
import { alloc, type Buf, type DType } from "../tensor/tensor.ts";
import type { ExpertId } from "./expert.ts";

/** GPT-2's initial standard deviation for weight matrices. */
export const initStd = 0.02;

export interface ExpertParams {
  readonly d: number;
  readonly h: number;
  readonly w1: Buf; // [d, h]
  readonly b1: Buf; // [h]
  readonly w2: Buf; // [h, d]
  readonly b2: Buf; // [d]
}

export interface ExpertGrads {
  readonly dx: Buf;
  readonly dw1: Buf;
  readonly db1: Buf;
  readonly dw2: Buf;
  readonly db2: Buf;
}

/** The names of an expert's tensors, in a fixed order (checkpoints, gradient buffers). */
export const expertTensorNames = ["w1", "b1", "w2", "b2"] as const;
export type ExpertTensorName = (typeof expertTensorNames)[number];

export function expertTensorShape(name: ExpertTensorName, d: number, h: number): number[] {
  switch (name) {
    case "w1":
      return [d, h];
    case "b1":
      return [h];
    case "w2":
      return [h, d];
    case "b2":
      return [d];
  }
}

/**
 * Seeded initial weights of expert `id`. `residualScale` shrinks W2 (GPT-2: 1/√(2·blocks)) so the
 * residual stream's variance does not grow with depth.
 */
export function initExpertParams(
  seed: number,
  id: ExpertId,
  d: number,
  h: number,
  residualScale: number,
  dtype: DType = "float32",
): ExpertParams {
  const rng = new Prng(
    (seed ^ Math.imul(id.layer + 1, 0x9e3779b1) ^ Math.imul(id.expert + 1, 0x85ebca77)) >>> 0,
  );
  const w1 = alloc(d * h, dtype);
  const w2 = alloc(h * d, dtype);
  for (let i = 0; i < w1.length; i++) w1[i] = rng.normal() * initStd;
  for (let i = 0; i < w2.length; i++) w2[i] = rng.normal() * initStd * residualScale;
  return { d, h, w1, b1: alloc(h, dtype), w2, b2: alloc(d, dtype) };
}

/** out[t, j] += bias[j] for every row t. */
function addBiasRows(out: Buf, bias: Buf, rows: number, cols: number): void {
  for (let t = 0; t < rows; t++)
    for (let j = 0; j < cols; j++)
      out[t * cols + j] = (out[t * cols + j] as number) + (bias[j] as number);
}

/** The hidden layer: pre = x·W1 + b1 and a = GELU(pre), both [tokens, h]. */
function hiddenJs(p: ExpertParams, x: Buf, tokens: number): { pre: Buf; a: Buf; dt: DType } {
  const { d, h } = p;
  const dt: DType = p.w1 instanceof Float64Array ? "float64" : "float32";
  const pre = alloc(tokens * h, dt);
  gemm(x, p.w1, pre, tokens, h, d);
  addBiasRows(pre, p.b1, tokens, h);
  const a = alloc(tokens * h, dt);
  geluForward(pre, a);
  return { pre, a, dt };
}

export function ffnForwardJs(p: ExpertParams, x: Buf, tokens: number): Buf {
  const { d, h } = p;
  invariant(
    x.length === tokens * d,
    () => `expert forward: x has ${x.length} values, expected ${tokens}×${d}`,
  );
  const { a, dt } = hiddenJs(p, x, tokens);
  const y = alloc(tokens * d, dt);
  gemm(a, p.w2, y, tokens, d, h);
  addBiasRows(y, p.b2, tokens, d);
  return y;
}

export function ffnBackwardJs(p: ExpertParams, x: Buf, dy: Buf, tokens: number): ExpertGrads {
  const { d, h } = p;
  invariant(x.length === tokens * d && dy.length === tokens * d, "expert backward: shapes");
  // Stateless backward: the hidden layer is recomputed from x (see ExpertHost).
  const { pre, a, dt } = hiddenJs(p, x, tokens);
  const dw2 = alloc(h * d, dt);
  gemm(a, dy, dw2, h, d, tokens, true, false);
  const db2 = alloc(d, dt);
  for (let t = 0; t < tokens; t++)
    for (let j = 0; j < d; j++) db2[j] = (db2[j] as number) + (dy[t * d + j] as number);
  const da = alloc(tokens * h, dt);
  gemm(dy, p.w2, da, tokens, h, d, false, true);
  const dh = alloc(tokens * h, dt);
  geluBackward(pre, da, dh);
  const dw1 = alloc(d * h, dt);
  gemm(x, dh, dw1, d, h, tokens, true, false);
  const db1 = alloc(h, dt);
  for (let t = 0; t < tokens; t++)
    for (let j = 0; j < h; j++) db1[j] = (db1[j] as number) + (dh[t * h + j] as number);
  const dx = alloc(tokens * d, dt);
  gemm(dh, p.w1, dx, tokens, d, h, false, true);
  return { dx, dw1, db1, dw2, db2 };
}
