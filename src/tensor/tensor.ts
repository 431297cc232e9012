// A dense row-major tensor with reverse-mode automatic differentiation (a dynamic tape, as in
// PyTorch's autograd or micrograd): every op that takes a tensor which requires a gradient records
// its parents and a closure that maps the output's gradient to the parents' gradients; `backward`
// walks that graph once in reverse topological order. A closure may be async, because the MoE
// layer's backward calls experts through `ExpertHost`, which may live on another process.
//
// Storage is Float32Array (training, inference) or Float64Array (gradient checks against central
// finite differences, where float32 rounding would drown the derivative). All kernels accept both;
// one process uses one dtype per model, so V8 sees monomorphic arrays on the hot path.
// Reference: Baydin et al., "Automatic differentiation in machine learning: a survey" (JMLR 2018).

import { AsyncLocalStorage } from "node:async_hooks";
import { invariant } from "../common/assert.ts";

export type DType = "float32" | "float64";
export type Buf = Float32Array | Float64Array;

export function alloc(length: number, dtype: DType): Buf {
  return dtype === "float64" ? new Float64Array(length) : new Float32Array(length);
}

export function dtypeOf(buf: Buf): DType {
  return buf instanceof Float64Array ? "float64" : "float32";
}

export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    invariant(Number.isInteger(d) && d >= 0, () => `bad dimension ${d} in [${shape}]`);
    n *= d;
  }
  return n;
}

// Whether ops record the tape is scoped to the async call chain (AsyncLocalStorage), not a global
// flag: a gateway generates many completions concurrently under `noGradAsync` while a trainer in
// the same process may be recording, and a global flag saved and restored around interleaved
// awaits could be left switched off (or on) for the wrong caller.
const gradScope = new AsyncLocalStorage<boolean>();

/** Runs `fn` without recording the tape (inference, evaluation). */
export function noGrad<T>(fn: () => T): T {
  return gradScope.run(false, fn);
}

/** Async variant of `noGrad`: everything `fn` awaits runs without the tape, other callers unaffected. */
export function noGradAsync<T>(fn: () => Promise<T>): Promise<T> {
  return gradScope.run(false, fn);
}

export function isGradEnabled(): boolean {
  return gradScope.getStore() ?? true;
}

export type BackwardFn = (outGrad: Buf) => void | Promise<void>;

export class Tensor {
  readonly data: Buf;
  readonly shape: readonly number[];
  /** dL/dthis, allocated on first accumulation. */
  grad: Buf | null = null;
  readonly requiresGrad: boolean;
  readonly parents: readonly Tensor[];
  readonly backwardFn: BackwardFn | null;
  /** Parameter name (for checkpoints) or op name (for debugging). */
  readonly name: string;

  constructor(
    data: Buf,
    shape: readonly number[],
    init: {
      requiresGrad?: boolean;
      parents?: readonly Tensor[];
      backward?: BackwardFn;
      name?: string;
    } = {},
  ) {
    invariant(data.length === sizeOf(shape), () => `data length ${data.length} ≠ [${shape}]`);
    this.data = data;
    this.shape = [...shape];
    this.requiresGrad = init.requiresGrad ?? false;
    this.parents = init.parents ?? [];
    this.backwardFn = init.backward ?? null;
    this.name = init.name ?? "";
  }

  get dtype(): DType {
    return dtypeOf(this.data);
  }

  get size(): number {
    return this.data.length;
  }

  /** A leaf parameter (requires a gradient, no parents). */
  static param(data: Buf, shape: readonly number[], name: string): Tensor {
    return new Tensor(data, shape, { requiresGrad: true, name });
  }

  static zeros(shape: readonly number[], dtype: DType): Tensor {
    return new Tensor(alloc(sizeOf(shape), dtype), shape);
  }

  /**
   * The result of an op. Records the tape only if grad mode is on and some parent needs a
   * gradient; otherwise the result is a constant.
   */
  static fromOp(
    data: Buf,
    shape: readonly number[],
    parents: readonly Tensor[],
    backward: BackwardFn,
    name: string,
  ): Tensor {
    const needs = isGradEnabled() && parents.some((p) => p.requiresGrad);
    if (!needs) return new Tensor(data, shape, { name });
    return new Tensor(data, shape, { requiresGrad: true, parents, backward, name });
  }

  /** Adds `g` into this tensor's gradient (allocating it on first use). */
  accumulateGrad(g: Buf): void {
    invariant(g.length === this.data.length, () => `grad length ${g.length} ≠ ${this.size}`);
    if (!this.requiresGrad) return;
    if (this.grad === null) {
      this.grad = alloc(this.data.length, this.dtype);
    }
    const dst = this.grad;
    for (let i = 0; i < g.length; i++) dst[i] = (dst[i] as number) + (g[i] as number);
  }

  /** A gradient buffer to write into in place (for ops that scatter). */
  gradBuffer(): Buf {
    if (this.grad === null) this.grad = alloc(this.data.length, this.dtype);
    return this.grad;
  }

  item(): number {
    invariant(this.size === 1, () => `item() on a tensor of shape [${this.shape}]`);
    return this.data[0] as number;
  }
}

/**
 * Back-propagates from the scalar `loss` (seed gradient 1) through the tape. Leaf gradients
 * accumulate (call `zeroGrad` on parameters between steps); intermediate gradients are released.
 */
export async function backward(loss: Tensor): Promise<void> {
  invariant(loss.size === 1, () => `backward from a non-scalar of shape [${loss.shape}]`);
  if (!loss.requiresGrad) return;
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  // Iterative post-order DFS: deep transformer tapes would overflow a recursive one.
  const stack: [Tensor, number][] = [[loss, 0]];
  seen.add(loss);
  while (stack.length > 0) {
    const top = stack[stack.length - 1] as [Tensor, number];
    const [node, next] = top;
    if (next < node.parents.length) {
      top[1] = next + 1;
      const p = node.parents[next] as Tensor;
      if (p.requiresGrad && !seen.has(p)) {
        seen.add(p);
        stack.push([p, 0]);
      }
    } else {
      stack.pop();
      order.push(node);
    }
  }
  loss.gradBuffer()[0] = (loss.grad?.[0] ?? 0) + 1;
  for (let i = order.length - 1; i >= 0; i--) {
    const node = order[i] as Tensor;
    if (node.backwardFn === null || node.grad === null) continue;
    const r = node.backwardFn(node.grad);
    if (r !== undefined) await r;
    node.grad = null; // intermediates: free memory; leaves have no backwardFn and keep theirs
  }
}

export function zeroGrad(params: readonly Tensor[]): void {
  for (const p of params) if (p.grad !== null) p.grad.fill(0);
}
