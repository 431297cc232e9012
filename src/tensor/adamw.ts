// AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
// Regularization", ICLR 2019; Kingma & Ba 2015 for Adam). One update rule serves the trunk's
// parameters and the experts on every ExpertHost, so local and remote training step identically.

import { invariant } from "../common/assert.ts";
import { alloc, type Buf, dtypeOf, type Tensor } from "./tensor.ts";

export interface AdamWInit {
  readonly beta1?: number;
  readonly beta2?: number;
  readonly epsilon?: number;
  /** Decoupled decay rate λ; applied only to the parameters the caller marks (weight matrices). */
  readonly weightDecay?: number;
}

export interface AdamWHyper {
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;
  readonly weightDecay: number;
}

export const adamwDefaults: AdamWHyper = {
  beta1: 0.9,
  beta2: 0.95,
  epsilon: 1e-8,
  weightDecay: 0.1,
};

export function adamwHyper(init: AdamWInit = {}): AdamWHyper {
  const h = { ...adamwDefaults, ...init };
  invariant(h.beta1 >= 0 && h.beta1 < 1 && h.beta2 >= 0 && h.beta2 < 1, "AdamW betas in [0,1)");
  invariant(h.epsilon > 0 && h.weightDecay >= 0, "AdamW epsilon > 0, weight decay ≥ 0");
  return h;
}

/** Moment buffers of one parameter. */
export interface AdamWState {
  readonly m: Buf;
  readonly v: Buf;
}

export function adamwState(length: number, like: Buf): AdamWState {
  return { m: alloc(length, dtypeOf(like)), v: alloc(length, dtypeOf(like)) };
}

/**
 * One AdamW step on `param` with gradient `grad · gradScale` (1-based `step`). With `decay`, θ is
 * first shrunk by lr·λ (decoupled from the adaptive gradient step).
 */
export function adamwStep(
  param: Buf,
  grad: Buf,
  state: AdamWState,
  step: number,
  lr: number,
  gradScale: number,
  hyper: AdamWHyper,
  decay: boolean,
): void {
  invariant(Number.isInteger(step) && step >= 1, () => `AdamW step must be ≥ 1; got ${step}`);
  invariant(param.length === grad.length, "AdamW: param and grad lengths differ");
  const { beta1, beta2, epsilon } = hyper;
  const bc1 = 1 - beta1 ** step;
  const bc2 = 1 - beta2 ** step;
  const shrink = decay ? 1 - lr * hyper.weightDecay : 1;
  const { m, v } = state;
  for (let i = 0; i < param.length; i++) {
    const g = (grad[i] as number) * gradScale;
    const mi = beta1 * (m[i] as number) + (1 - beta1) * g;
    const vi = beta2 * (v[i] as number) + (1 - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = (param[i] as number) * shrink - (lr * (mi / bc1)) / (Math.sqrt(vi / bc2) + epsilon);
  }
}

/** Σ g² over buffers. */
export function squaredNorm(bufs: readonly (Buf | null)[]): number {
  let s = 0;
  for (const b of bufs) {
    if (b === null) continue;
    for (let i = 0; i < b.length; i++) s += (b[i] as number) * (b[i] as number);
  }
  return s;
}

/** AdamW over a set of tensor parameters (the trunk). `decay` names which ones get weight decay. */
export class AdamW {
  readonly hyper: AdamWHyper;
  readonly #params: readonly Tensor[];
  readonly #decay: readonly boolean[];
  readonly #state: AdamWState[];

  constructor(params: readonly Tensor[], decay: (p: Tensor) => boolean, init: AdamWInit = {}) {
    this.hyper = adamwHyper(init);
    this.#params = params;
    this.#decay = params.map(decay);
    this.#state = params.map((p) => adamwState(p.size, p.data));
  }

  gradSquaredNorm(): number {
    return squaredNorm(this.#params.map((p) => p.grad));
  }

  /** Applies and clears the accumulated gradients. */
  step(step: number, lr: number, gradScale: number): void {
    this.#params.forEach((p, i) => {
      if (p.grad === null) return;
      adamwStep(
        p.data,
        p.grad,
        this.#state[i] as AdamWState,
        step,
        lr,
        gradScale,
        this.hyper,
        this.#decay[i] as boolean,
      );
      p.grad.fill(0);
    });
  }

  /** Copies of every parameter's moment buffers, in parameter order (for resuming training). */
  exportState(): AdamWState[] {
    return this.#state.map((s) => ({ m: s.m.slice(), v: s.v.slice() }));
  }

  /**
   * Replaces every parameter's moments (in parameter order). All are checked before any is
   * written, so a bad input changes nothing; the checkpoint reader names tensors for its users.
   */
  importState(states: readonly AdamWState[]): void {
    if (states.length !== this.#state.length)
      throw new RangeError(
        `AdamW state: expected ${this.#state.length} parameters; got ${states.length}`,
      );
    states.forEach((s, i) => {
      const p = this.#params[i] as Tensor;
      if (s.m.length !== p.size || s.v.length !== p.size)
        throw new RangeError(
          `AdamW state of ${p.name}: expected ${p.size} values; got m ${s.m.length}, v ${s.v.length}`,
        );
    });
    states.forEach((s, i) => {
      const own = this.#state[i] as AdamWState;
      own.m.set(s.m);
      own.v.set(s.v);
    });
  }

  /** The moment buffers, by parameter name (for resuming training). */
  stateOf(p: Tensor): AdamWState {
    const i = this.#params.indexOf(p);
    invariant(i >= 0, () => `AdamW: unknown parameter ${p.name}`);
    return this.#state[i] as AdamWState;
  }
}
