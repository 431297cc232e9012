// The two-layer GELU feed-forward network y = GELU(x·W1 + b1)·W2 + b2, forward and backward, as
// prebuilt ONNX graphs run by onnxruntime-node's CPU kernels (MLAS GEMMs, AVX2/AVX-512 picked at
// run time). This is the expert FFN's fast path: measured in bench/expert-ffn.ts against PyTorch
// with OpenBLAS. The backward graph is written out by hand (onnxruntime's CPU build has no
// training ops): it recomputes the hidden pre-activation (stateless calls, see
// src/model/expert.ts), then dW2 = aᵀdy, db2 = Σdy, da = dy·W2ᵀ, dh = da ⊙ GELU'(h), dW1 = xᵀdh,
// db1 = Σdh, dx = dh·W1ᵀ. GELU is the tanh form, as in ./gelu.ts, so both paths agree.
// Weights are graph inputs, not initializers: they change every optimizer step and a session
// is built once.

import ort from "onnxruntime-node";
import { invariant } from "../common/assert.ts";
import { geluC, geluK } from "./gelu.ts";
import { encodeOnnxModel, type OnnxNode, onnxFloat, onnxInt64 } from "./onnx-proto.ts";

/** onnxruntime's intra-op thread pools we allow: the machine has 2 cores; production more. */
export const onnxThreadsMax = 64;

export interface FfnWeights {
  readonly w1: Float32Array; // [d, h]
  readonly b1: Float32Array; // [h]
  readonly w2: Float32Array; // [h, d]
  readonly b2: Float32Array; // [d]
}

export interface FfnGrads {
  readonly dx: Float32Array;
  readonly dw1: Float32Array;
  readonly db1: Float32Array;
  readonly dw2: Float32Array;
  readonly db2: Float32Array;
}

const f = (name: string, dims: (number | string)[]) => ({ name, elemType: onnxFloat, dims });
const scalar = (name: string, value: number) =>
  ({ name, elemType: onnxFloat, dims: [], values: [value] }) as const;
const node = (
  op: string,
  inputs: string[],
  outputs: string[],
  attrs?: OnnxNode["attrs"],
): OnnxNode => (attrs === undefined ? { op, inputs, outputs } : { op, inputs, outputs, attrs });
const opset = 20;

export function ffnForwardGraph(d: number, h: number): Uint8Array {
  return encodeOnnxModel({
    name: "ffn_forward",
    opset,
    inputs: [f("x", ["T", d]), f("w1", [d, h]), f("b1", [h]), f("w2", [h, d]), f("b2", [d])],
    outputs: [f("y", ["T", d])],
    nodes: [
      node("Gemm", ["x", "w1", "b1"], ["hpre"]),
      node("Gelu", ["hpre"], ["a"], { approximate: { kind: "string", value: "tanh" } }),
      node("Gemm", ["a", "w2", "b2"], ["y"]),
    ],
  });
}

export function ffnBackwardGraph(d: number, h: number): Uint8Array {
  const transA = { transA: { kind: "int", value: 1 } } as const;
  const transB = { transB: { kind: "int", value: 1 } } as const;
  const sum0 = { keepdims: { kind: "int", value: 0 } } as const;
  return encodeOnnxModel({
    name: "ffn_backward",
    opset,
    inputs: [f("x", ["T", d]), f("w1", [d, h]), f("b1", [h]), f("w2", [h, d]), f("dy", ["T", d])],
    outputs: [f("dx", ["T", d]), f("dw1", [d, h]), f("db1", [h]), f("dw2", [h, d]), f("db2", [d])],
    initializers: [
      { name: "axes0", elemType: onnxInt64, dims: [1], values: [0] },
      scalar("one", 1),
      scalar("half", 0.5),
      scalar("k", geluK),
      scalar("k3", 3 * geluK),
      scalar("c", geluC),
      scalar("halfc", 0.5 * geluC),
    ],
    nodes: [
      node("Gemm", ["x", "w1", "b1"], ["hpre"]),
      node("Gelu", ["hpre"], ["a"], { approximate: { kind: "string", value: "tanh" } }),
      node("Gemm", ["a", "dy"], ["dw2"], transA),
      node("ReduceSum", ["dy", "axes0"], ["db2"], sum0),
      node("Gemm", ["dy", "w2"], ["da"], transB),
      // GELU'(h) = ½(1+t) + ½c·h(1−t²)(1+3k h²), t = tanh(c(h + k h³))
      node("Mul", ["hpre", "hpre"], ["h2"]),
      node("Mul", ["h2", "k"], ["kh2"]),
      node("Add", ["kh2", "one"], ["inner"]),
      node("Mul", ["hpre", "inner"], ["hin"]),
      node("Mul", ["hin", "c"], ["u"]),
      node("Tanh", ["u"], ["t"]),
      node("Add", ["t", "one"], ["tp1"]),
      node("Mul", ["tp1", "half"], ["left"]),
      node("Mul", ["t", "t"], ["tt"]),
      node("Sub", ["one", "tt"], ["sech2"]),
      node("Mul", ["h2", "k3"], ["k3h2"]),
      node("Add", ["k3h2", "one"], ["poly"]),
      node("Mul", ["hpre", "sech2"], ["r1"]),
      node("Mul", ["r1", "poly"], ["r2"]),
      node("Mul", ["r2", "halfc"], ["right"]),
      node("Add", ["left", "right"], ["dgelu"]),
      node("Mul", ["da", "dgelu"], ["dh"]),
      node("Gemm", ["x", "dh"], ["dw1"], transA),
      node("ReduceSum", ["dh", "axes0"], ["db1"], sum0),
      node("Gemm", ["dh", "w1"], ["dx"], transB),
    ],
  });
}

/** Forward and backward sessions for one FFN shape (d, h). Create with `OnnxFfn.create`. */
export class OnnxFfn {
  readonly d: number;
  readonly h: number;
  readonly threads: number;
  readonly #fwd: ort.InferenceSession;
  readonly #bwd: ort.InferenceSession;

  private constructor(
    d: number,
    h: number,
    threads: number,
    fwd: ort.InferenceSession,
    bwd: ort.InferenceSession,
  ) {
    this.d = d;
    this.h = h;
    this.threads = threads;
    this.#fwd = fwd;
    this.#bwd = bwd;
  }

  static async create(d: number, h: number, threads: number): Promise<OnnxFfn> {
    if (!Number.isInteger(threads) || threads < 1 || threads > onnxThreadsMax)
      throw new RangeError(
        `onnx threads: expected an integer in [1, ${onnxThreadsMax}]; got ${threads}`,
      );
    const options: ort.InferenceSession.SessionOptions = {
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: "sequential",
      graphOptimizationLevel: "all",
    };
    const fwd = await ort.InferenceSession.create(ffnForwardGraph(d, h), options);
    const bwd = await ort.InferenceSession.create(ffnBackwardGraph(d, h), options);
    return new OnnxFfn(d, h, threads, fwd, bwd);
  }

  #weights(w: FfnWeights): Record<string, ort.Tensor> {
    const { d, h } = this;
    invariant(w.w1.length === d * h && w.w2.length === h * d, "OnnxFfn: weight shapes");
    invariant(w.b1.length === h && w.b2.length === d, "OnnxFfn: bias shapes");
    return {
      w1: new ort.Tensor("float32", w.w1, [d, h]),
      b1: new ort.Tensor("float32", w.b1, [h]),
      w2: new ort.Tensor("float32", w.w2, [h, d]),
    };
  }

  async forward(x: Float32Array, tokens: number, w: FfnWeights): Promise<Float32Array> {
    invariant(x.length === tokens * this.d, "OnnxFfn.forward: x shape");
    const out = await this.#fwd.run({
      ...this.#weights(w),
      b2: new ort.Tensor("float32", w.b2, [this.d]),
      x: new ort.Tensor("float32", x, [tokens, this.d]),
    });
    return (out.y as ort.Tensor).data as Float32Array;
  }

  async backward(
    x: Float32Array,
    dy: Float32Array,
    tokens: number,
    w: FfnWeights,
  ): Promise<FfnGrads> {
    invariant(x.length === tokens * this.d && dy.length === x.length, "OnnxFfn.backward: shapes");
    const out = await this.#bwd.run({
      ...this.#weights(w),
      x: new ort.Tensor("float32", x, [tokens, this.d]),
      dy: new ort.Tensor("float32", dy, [tokens, this.d]),
    });
    const get = (k: string) => (out[k] as ort.Tensor).data as Float32Array;
    return { dx: get("dx"), dw1: get("dw1"), db1: get("db1"), dw2: get("dw2"), db2: get("db2") };
  }

  async release(): Promise<void> {
    await this.#fwd.release();
    await this.#bwd.release();
  }
}
