// An ExpertHost (./expert.ts) whose experts live in this process: it holds their weights,
// accumulates their parameter gradients across backward calls, and applies AdamW on request.
// Each call runs on onnxruntime's native kernels (src/tensor/onnx-ffn.ts) unless it is too small
// to amortise the native call's fixed cost (`onnxMinMacs`); then on the plain-TypeScript kernels.
// Swarm expert nodes (issue #5) wrap this host behind the wire protocol.
//
// Guarantees: forward/backward are stateless (backward recomputes from x); gradients of an
// expert only change in backward and are cleared only by applyUpdate; unknown experts and
// malformed inputs are rejected with typed errors before any state changes.

import { invariant } from "../common/assert.ts";
import {
  type AdamWHyper,
  type AdamWInit,
  type AdamWState,
  adamwHyper,
  adamwState,
  adamwStep,
  squaredNorm,
} from "../tensor/adamw.ts";
import { type FfnWeights, OnnxFfn } from "../tensor/onnx-ffn.ts";
import { alloc, type Buf, type DType } from "../tensor/tensor.ts";
import { allExpertIds, expertHiddenOf, type ModelConfig, totalBlocks } from "./config.ts";
import {
  type ExpertCallContext,
  type ExpertHost,
  type ExpertId,
  type ExpertTrainingState,
  type ExpertUpdate,
  expertKey,
} from "./expert.ts";
import {
  type ExpertParams,
  type ExpertTensorName,
  expertTensorNames,
  expertTensorShape,
  ffnBackwardJs,
  ffnForwardJs,
  initExpertParams,
} from "./expert-ffn.ts";

export type ExpertBackend = "js" | "onnx" | "auto";

/**
 * Below this many multiply-adds per matmul (tokens·d·h) `auto` stays in TypeScript. Measured in
 * bench/tensor-gemm.ts: an onnxruntime call costs ≈ 10 µs, and even an 8×64×64 GEMM ran 4× faster
 * there than in TypeScript, so only near-empty calls stay in TypeScript.
 */
export const onnxMinMacsDefault = 4096;

export interface LocalExpertHostInit {
  readonly backend?: ExpertBackend;
  /** onnxruntime intra-op threads (1 or 2 on this machine). */
  readonly threads?: number;
  readonly onnxMinMacs?: number;
  readonly adamw?: AdamWInit;
  /** float64 keeps the experts in double precision (gradient checks only; JS backend). */
  readonly dtype?: DType;
  /** Which experts this host owns (default: all of the model's). */
  readonly ids?: readonly ExpertId[];
}

export class UnknownExpertError extends Error {
  constructor(id: ExpertId) {
    super(`expert ${expertKey(id)} is not hosted here`);
    this.name = "UnknownExpertError";
  }
}

export class ExpertInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ExpertInputError";
  }
}

interface HostedExpert {
  readonly params: ExpertParams;
  readonly grads: Record<ExpertTensorName, Buf>;
  readonly state: Record<ExpertTensorName, AdamWState>;
  /** Backward calls since the last update (an expert without any skips the optimizer step). */
  pending: number;
}

export class LocalExpertHost implements ExpertHost {
  readonly backend: ExpertBackend;
  readonly dtype: DType;
  readonly #experts = new Map<string, HostedExpert>();
  readonly #onnx = new Map<string, OnnxFfn>(); // by "d×h"
  readonly #hyper: AdamWHyper;
  readonly #onnxMinMacs: number;
  /** Calls served per path, for benchmarks and tests. */
  readonly calls = { js: 0, onnx: 0 };

  private constructor(
    backend: ExpertBackend,
    dtype: DType,
    hyper: AdamWHyper,
    onnxMinMacs: number,
  ) {
    this.backend = backend;
    this.dtype = dtype;
    this.#hyper = hyper;
    this.#onnxMinMacs = onnxMinMacs;
  }

  /** A host for `init.ids` (default: every expert of `mc`), initialised from the model seed. */
  static async create(mc: ModelConfig, init: LocalExpertHostInit = {}): Promise<LocalExpertHost> {
    const dtype = init.dtype ?? "float32";
    const backend = init.backend ?? "auto";
    if (dtype === "float64" && backend === "onnx")
      throw new RangeError(
        "LocalExpertHost: the onnx backend is float32 only; use backend js for float64",
      );
    const host = new LocalExpertHost(
      dtype === "float64" ? "js" : backend,
      dtype,
      adamwHyper(init.adamw),
      init.onnxMinMacs ?? onnxMinMacsDefault,
    );
    const residualScale = 1 / Math.sqrt(2 * totalBlocks(mc));
    const shapes = new Set<number>();
    for (const id of init.ids ?? allExpertIds(mc)) {
      const h = expertHiddenOf(mc, id);
      host.#add(id, initExpertParams(mc.seed, id, mc.dModel, h, residualScale, dtype));
      shapes.add(h);
    }
    if (host.backend !== "js") {
      for (const h of shapes)
        host.#onnx.set(`${mc.dModel}x${h}`, await OnnxFfn.create(mc.dModel, h, init.threads ?? 1));
    }
    return host;
  }

  #add(id: ExpertId, params: ExpertParams): void {
    const grads = {} as Record<ExpertTensorName, Buf>;
    const state = {} as Record<ExpertTensorName, AdamWState>;
    for (const n of expertTensorNames) {
      grads[n] = alloc(params[n].length, this.dtype);
      state[n] = adamwState(params[n].length, params[n]);
    }
    this.#experts.set(expertKey(id), { params, grads, state, pending: 0 });
  }

  ids(): ExpertId[] {
    return [...this.#experts.keys()].map((k) => {
      const m = /^L(\d+)\.E(\d+)$/.exec(k) as RegExpExecArray;
      return { layer: Number(m[1]), expert: Number(m[2]) };
    });
  }

  hosts(id: ExpertId): boolean {
    return this.#experts.has(expertKey(id));
  }

  #get(id: ExpertId): HostedExpert {
    const e = this.#experts.get(expertKey(id));
    if (e === undefined) throw new UnknownExpertError(id);
    return e;
  }

  #check(e: HostedExpert, x: Float32Array, tokens: number, what: string): void {
    const d = e.params.d;
    if (!Number.isInteger(tokens) || tokens < 0)
      throw new ExpertInputError(`${what}: tokens must be a non-negative integer; got ${tokens}`);
    if (x.length !== tokens * d)
      throw new ExpertInputError(
        `${what}: expected ${tokens}×${d} = ${tokens * d} values; got ${x.length}`,
      );
  }

  #onnxFor(e: HostedExpert, tokens: number): OnnxFfn | undefined {
    if (this.backend === "js") return undefined;
    if (this.backend === "auto" && tokens * e.params.d * e.params.h < this.#onnxMinMacs)
      return undefined;
    return this.#onnx.get(`${e.params.d}x${e.params.h}`);
  }

  #toDtype(x: Float32Array): Buf {
    return this.dtype === "float64" ? Float64Array.from(x) : x;
  }

  async forward(
    id: ExpertId,
    x: Float32Array,
    tokens: number,
    ctx?: ExpertCallContext,
  ): Promise<Float32Array> {
    ctx?.signal?.throwIfAborted();
    const e = this.#get(id);
    this.#check(e, x, tokens, `forward ${expertKey(id)}`);
    if (tokens === 0) return new Float32Array(0);
    const onnx = this.#onnxFor(e, tokens);
    if (onnx !== undefined) {
      this.calls.onnx++;
      return onnx.forward(x, tokens, e.params as FfnWeights);
    }
    this.calls.js++;
    const y = ffnForwardJs(e.params, this.#toDtype(x), tokens);
    return y instanceof Float32Array ? y : Float32Array.from(y);
  }

  /** Like forward, but returns the float64 result of a float64 host (gradient checks). */
  forwardExact(id: ExpertId, x: Buf, tokens: number): Buf {
    const e = this.#get(id);
    return ffnForwardJs(e.params, x, tokens);
  }

  async backward(
    id: ExpertId,
    x: Float32Array,
    dy: Float32Array,
    tokens: number,
  ): Promise<Float32Array> {
    const e = this.#get(id);
    this.#check(e, x, tokens, `backward ${expertKey(id)}`);
    this.#check(e, dy, tokens, `backward ${expertKey(id)} (dy)`);
    if (tokens === 0) return new Float32Array(0);
    const onnx = this.#onnxFor(e, tokens);
    let g: { dx: Buf; dw1: Buf; db1: Buf; dw2: Buf; db2: Buf };
    if (onnx !== undefined) {
      this.calls.onnx++;
      g = await onnx.backward(x, dy, tokens, e.params as FfnWeights);
    } else {
      this.calls.js++;
      g = ffnBackwardJs(e.params, this.#toDtype(x), this.#toDtype(dy), tokens);
    }
    this.#accumulate(e, g);
    return g.dx instanceof Float32Array ? g.dx : Float32Array.from(g.dx);
  }

  /** Backward in the host's dtype without rounding to float32 (gradient checks). */
  backwardExact(id: ExpertId, x: Buf, dy: Buf, tokens: number): Buf {
    const e = this.#get(id);
    const g = ffnBackwardJs(e.params, x, dy, tokens);
    this.#accumulate(e, g);
    return g.dx;
  }

  #accumulate(e: HostedExpert, g: { dw1: Buf; db1: Buf; dw2: Buf; db2: Buf }): void {
    const src: Record<ExpertTensorName, Buf> = { w1: g.dw1, b1: g.db1, w2: g.dw2, b2: g.db2 };
    for (const n of expertTensorNames) {
      const dst = e.grads[n];
      const s = src[n];
      invariant(s.length === dst.length, () => `gradient ${n}: ${s.length} ≠ ${dst.length}`);
      for (let i = 0; i < dst.length; i++) dst[i] = (dst[i] as number) + (s[i] as number);
    }
    e.pending++;
  }

  async gradSquaredNorm(ids: readonly ExpertId[]): Promise<number> {
    let s = 0;
    for (const id of ids) {
      const e = this.#get(id);
      s += squaredNorm(expertTensorNames.map((n) => e.grads[n]));
    }
    return s;
  }

  async applyUpdate(ids: readonly ExpertId[], update: ExpertUpdate): Promise<void> {
    const experts = ids.map((id) => this.#get(id)); // all known before any changes
    if (
      !(update.learningRate >= 0) ||
      !(update.gradScale >= 0) ||
      !Number.isInteger(update.step) ||
      update.step < 1
    )
      throw new ExpertInputError(`applyUpdate: bad update ${JSON.stringify(update)}`);
    for (const e of experts) {
      // An expert that received no tokens has no gradient: its moments are not decayed and its
      // weights are not decayed either (the same rule a sparse-gradient optimiser applies).
      if (e.pending === 0) continue;
      for (const n of expertTensorNames) {
        adamwStep(
          e.params[n],
          e.grads[n],
          e.state[n],
          update.step,
          update.learningRate,
          update.gradScale,
          this.#hyper,
          n === "w1" || n === "w2",
        );
        e.grads[n].fill(0);
      }
      e.pending = 0;
    }
  }

  /** The weights of expert `id` (live buffers: for checkpoints and tests; do not mutate). */
  params(id: ExpertId): ExpertParams {
    return this.#get(id).params;
  }

  /** The accumulated gradients of expert `id` (live buffers). */
  grads(id: ExpertId): Readonly<Record<ExpertTensorName, Buf>> {
    return this.#get(id).grads;
  }

  /** Replaces expert `id`'s weights (checkpoint load); shapes must match. */
  setParams(id: ExpertId, values: Readonly<Record<ExpertTensorName, Float32Array>>): void {
    const e = this.#get(id);
    for (const n of expertTensorNames) {
      const shape = expertTensorShape(n, e.params.d, e.params.h);
      const v = values[n];
      if (v.length !== e.params[n].length)
        throw new ExpertInputError(
          `${expertKey(id)}.${n}: expected shape [${shape}]; got ${v.length} values`,
        );
    }
    for (const n of expertTensorNames) e.params[n].set(values[n]);
  }

  async exportTrainingState(ids: readonly ExpertId[]): Promise<ExpertTrainingState[]> {
    const experts = ids.map((id) => ({ id, e: this.#get(id) }));
    if (this.dtype !== "float32")
      throw new ExpertInputError("exportTrainingState: training checkpoints are float32 only");
    return experts.map(({ id, e }) => {
      if (e.pending !== 0)
        throw new ExpertInputError(
          `exportTrainingState: ${expertKey(id)} has gradients pending; export between steps`,
        );
      const tensors: Record<string, { weights: Float32Array; m: Float32Array; v: Float32Array }> =
        {};
      for (const n of expertTensorNames)
        tensors[n] = {
          weights: Float32Array.from(e.params[n]),
          m: Float32Array.from(e.state[n].m),
          v: Float32Array.from(e.state[n].v),
        };
      return { id: { layer: id.layer, expert: id.expert }, tensors };
    });
  }

  async importTrainingState(states: readonly ExpertTrainingState[]): Promise<void> {
    if (this.dtype !== "float32")
      throw new ExpertInputError("importTrainingState: training checkpoints are float32 only");
    // Every state is checked before the first buffer is written: all or nothing.
    const checked = states.map((s) => {
      const e = this.#get(s.id);
      const names = Object.keys(s.tensors).sort();
      if (names.join(",") !== [...expertTensorNames].sort().join(","))
        throw new ExpertInputError(
          `${expertKey(s.id)}: expected tensors ${expertTensorNames.join(", ")}; got ${names.join(", ")}`,
        );
      for (const n of expertTensorNames) {
        const t = s.tensors[n] as ExpertTrainingState["tensors"][string];
        const want = e.params[n].length;
        for (const part of ["weights", "m", "v"] as const)
          if (t[part].length !== want)
            throw new ExpertInputError(
              `${expertKey(s.id)}.${n}.${part}: expected shape [${expertTensorShape(n, e.params.d, e.params.h)}]; got ${t[part].length} values`,
            );
      }
      return { s, e };
    });
    for (const { s, e } of checked) {
      for (const n of expertTensorNames) {
        const t = s.tensors[n] as ExpertTrainingState["tensors"][string];
        e.params[n].set(t.weights);
        e.state[n].m.set(t.m);
        e.state[n].v.set(t.v);
        e.grads[n].fill(0);
      }
      e.pending = 0;
    }
  }

  async close(): Promise<void> {
    for (const s of this.#onnx.values()) await s.release();
    this.#onnx.clear();
  }
}
