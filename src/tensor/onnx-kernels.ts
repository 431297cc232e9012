// onnxruntime-backed differentiable ops for the trunk: matmul (all transpose combinations, via
// the ONNX Gemm op) and fused causal multi-head attention, forward and backward, as small
// prebuilt graphs with symbolic shapes — one session per graph, whatever the batch. Measured in
// bench/tensor-gemm.ts: onnxruntime's MLAS GEMM runs 20–100× faster than the TypeScript kernel
// at the trunk's shapes and costs ≈ 10 µs per call, so the native path wins at every size we
// use. The TypeScript ops in ./ops.ts stay the reference (float64 gradient checks) and the
// fallback; tests check that both agree.
//
// Attention graph, per sequence b and head h (q, k, v: [B·T, H·dh], reshaped to [B,H,T,dh]):
//   S = q·kᵀ/√dh + M (M: 0 on and below the diagonal, −1e9 above), P = softmax(S), O = P·v
// Backward: dV = Pᵀ·dO, dP = dO·vᵀ, dS = P ⊙ (dP − Σ_j dP⊙P) / √dh, dQ = dS·k, dK = dSᵀ·q.

import ort from "onnxruntime-node";
import { invariant } from "../common/assert.ts";
import { onnxThreadsMax } from "./onnx-ffn.ts";
import {
  encodeOnnxModel,
  type OnnxAttr,
  type OnnxNode,
  onnxFloat,
  onnxInt64,
} from "./onnx-proto.ts";
import { Tensor } from "./tensor.ts";

const opset = 20;
const f = (name: string, dims: (number | string)[]) => ({ name, elemType: onnxFloat, dims });
const i64 = (name: string, dims: (number | string)[]) => ({ name, elemType: onnxInt64, dims });
const n = (
  op: string,
  inputs: string[],
  outputs: string[],
  attrs?: Record<string, OnnxAttr>,
): OnnxNode => (attrs === undefined ? { op, inputs, outputs } : { op, inputs, outputs, attrs });
const int = (value: number): OnnxAttr => ({ kind: "int", value });

/** [B, T, H, dh] ↔ [B, H, T, dh] (the permutation is its own inverse). */
const headsPerm = { perm: { kind: "ints", value: [0, 2, 1, 3] } as OnnxAttr };
/** Swaps the last two axes: K → Kᵀ, P → Pᵀ per head. */
const swapLastPerm = { perm: { kind: "ints", value: [0, 1, 3, 2] } as OnnxAttr };

/** [B·T, H·dh] → [B, H, T, dh]: reshape by `shape4`, then move heads before time. */
const toHeads = (x: string, out: string): OnnxNode[] => [
  n("Reshape", [x, "shape4"], [`${x}4`]),
  n("Transpose", [`${x}4`], [out], headsPerm),
];
/** [B, H, T, dh] → [B·T, H·dh], the inverse of `toHeads`. */
const fromHeads = (x: string, out: string): OnnxNode[] => [
  n("Transpose", [x], [`${out}4`], headsPerm),
  n("Reshape", [`${out}4`, "shape2"], [out]),
];

function gemmGraph(transA: boolean, transB: boolean): Uint8Array {
  return encodeOnnxModel({
    name: `gemm_${transA ? "t" : "n"}${transB ? "t" : "n"}`,
    opset,
    inputs: [f("a", ["A0", "A1"]), f("b", ["B0", "B1"])],
    outputs: [f("c", ["M", "N"])],
    nodes: [
      n("Gemm", ["a", "b"], ["c"], { transA: int(transA ? 1 : 0), transB: int(transB ? 1 : 0) }),
    ],
  });
}

/** Inputs shape4 = [B, T, H, dh], shape2 = [B·T, H·dh], mask [T, T], scale []. */
function attentionForwardGraph(): Uint8Array {
  return encodeOnnxModel({
    name: "attention_forward",
    opset,
    inputs: [
      f("q", ["N", "C"]),
      f("k", ["N", "C"]),
      f("v", ["N", "C"]),
      f("mask", ["T", "T"]),
      f("scale", []),
      i64("shape4", [4]),
      i64("shape2", [2]),
    ],
    outputs: [f("o", ["N", "C"]), f("p", ["B", "H", "T", "T"])],
    nodes: [
      ...toHeads("q", "qh"),
      ...toHeads("k", "kh"),
      ...toHeads("v", "vh"),
      n("Transpose", ["kh"], ["kt"], swapLastPerm),
      n("MatMul", ["qh", "kt"], ["s0"]),
      n("Mul", ["s0", "scale"], ["s1"]),
      n("Add", ["s1", "mask"], ["s"]),
      n("Softmax", ["s"], ["p"], { axis: int(-1) }),
      n("MatMul", ["p", "vh"], ["oh"]),
      ...fromHeads("oh", "o"),
    ],
  });
}

function attentionBackwardGraph(): Uint8Array {
  return encodeOnnxModel({
    name: "attention_backward",
    opset,
    inputs: [
      f("q", ["N", "C"]),
      f("k", ["N", "C"]),
      f("v", ["N", "C"]),
      f("p", ["B", "H", "T", "T"]),
      f("do", ["N", "C"]),
      f("scale", []),
      i64("shape4", [4]),
      i64("shape2", [2]),
    ],
    outputs: [f("dq", ["N", "C"]), f("dk", ["N", "C"]), f("dv", ["N", "C"])],
    initializers: [{ name: "axis_last", elemType: onnxInt64, dims: [1], values: [-1] }],
    nodes: [
      ...toHeads("q", "qh"),
      ...toHeads("k", "kh"),
      ...toHeads("v", "vh"),
      ...toHeads("do", "doh"),
      n("Transpose", ["p"], ["pt"], swapLastPerm),
      n("MatMul", ["pt", "doh"], ["dvh"]),
      n("Transpose", ["vh"], ["vt"], swapLastPerm),
      n("MatMul", ["doh", "vt"], ["dp"]),
      n("Mul", ["dp", "p"], ["dpp"]),
      n("ReduceSum", ["dpp", "axis_last"], ["rs"], { keepdims: int(1) }),
      n("Sub", ["dp", "rs"], ["dpc"]),
      n("Mul", ["p", "dpc"], ["ds0"]),
      n("Mul", ["ds0", "scale"], ["ds"]),
      n("MatMul", ["ds", "kh"], ["dqh"]),
      n("Transpose", ["ds"], ["dst"], swapLastPerm),
      n("MatMul", ["dst", "qh"], ["dkh"]),
      ...fromHeads("dqh", "dq"),
      ...fromHeads("dkh", "dk"),
      ...fromHeads("dvh", "dv"),
    ],
  });
}

function t32(data: Float32Array, dims: number[]): ort.Tensor {
  return new ort.Tensor("float32", data, dims);
}

export class OnnxKernels {
  readonly threads: number;
  readonly #gemm: Map<string, ort.InferenceSession>;
  readonly #attnFwd: ort.InferenceSession;
  readonly #attnBwd: ort.InferenceSession;
  readonly #masks = new Map<number, Float32Array>();

  private constructor(
    threads: number,
    gemm: Map<string, ort.InferenceSession>,
    fwd: ort.InferenceSession,
    bwd: ort.InferenceSession,
  ) {
    this.threads = threads;
    this.#gemm = gemm;
    this.#attnFwd = fwd;
    this.#attnBwd = bwd;
  }

  static async create(threads = 1): Promise<OnnxKernels> {
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
    const gemm = new Map<string, ort.InferenceSession>();
    for (const ta of [false, true])
      for (const tb of [false, true])
        gemm.set(`${ta}${tb}`, await ort.InferenceSession.create(gemmGraph(ta, tb), options));
    const fwd = await ort.InferenceSession.create(attentionForwardGraph(), options);
    const bwd = await ort.InferenceSession.create(attentionBackwardGraph(), options);
    return new OnnxKernels(threads, gemm, fwd, bwd);
  }

  /** op(A)·op(B) with A, B row-major of the given stored shapes. */
  async gemm(
    a: Float32Array,
    aShape: [number, number],
    b: Float32Array,
    bShape: [number, number],
    transA = false,
    transB = false,
  ): Promise<Float32Array> {
    const s = this.#gemm.get(`${transA}${transB}`) as ort.InferenceSession;
    const out = await s.run({ a: t32(a, aShape), b: t32(b, bShape) });
    return (out.c as ort.Tensor).data as Float32Array;
  }

  /** [M,K]·[K,N] → [M,N] as a tape op (float32 only). */
  async matmul(a: Tensor, b: Tensor): Promise<Tensor> {
    invariant(a.dtype === "float32" && b.dtype === "float32", "OnnxKernels.matmul: float32 only");
    const [M, K] = a.shape as [number, number];
    const [K2, N] = b.shape as [number, number];
    invariant(
      a.shape.length === 2 && b.shape.length === 2 && K === K2,
      () => `matmul: [${a.shape}] · [${b.shape}]`,
    );
    const A = a.data as Float32Array;
    const B = b.data as Float32Array;
    const c = await this.gemm(A, [M, K], B, [K, N]);
    return Tensor.fromOp(
      c,
      [M, N],
      [a, b],
      async (g) => {
        const G = g as Float32Array;
        if (a.requiresGrad) a.accumulateGrad(await this.gemm(G, [M, N], B, [K, N], false, true));
        if (b.requiresGrad) b.accumulateGrad(await this.gemm(A, [M, K], G, [M, N], true, false));
      },
      "matmul(onnx)",
    );
  }

  #mask(T: number): Float32Array {
    let m = this.#masks.get(T);
    if (m === undefined) {
      m = new Float32Array(T * T);
      for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) m[i * T + j] = -1e9;
      this.#masks.set(T, m);
    }
    return m;
  }

  /** Fused causal attention, like ops.causalAttention, on onnxruntime (float32). */
  async causalAttention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    B: number,
    T: number,
    H: number,
  ): Promise<Tensor> {
    const [BT, C] = q.shape as [number, number];
    invariant(
      q.dtype === "float32" && BT === B * T && C % H === 0,
      () => `attention: [${q.shape}] B=${B} T=${T} H=${H}`,
    );
    const dh = C / H;
    const common = {
      scale: new ort.Tensor("float32", Float32Array.from([1 / Math.sqrt(dh)]), []),
      shape4: new ort.Tensor("int64", BigInt64Array.from([B, T, H, dh].map(BigInt)), [4]),
      shape2: new ort.Tensor("int64", BigInt64Array.from([BT, C].map(BigInt)), [2]),
    };
    const Q = t32(q.data as Float32Array, [BT, C]);
    const K = t32(k.data as Float32Array, [BT, C]);
    const V = t32(v.data as Float32Array, [BT, C]);
    const out = await this.#attnFwd.run({
      q: Q,
      k: K,
      v: V,
      mask: t32(this.#mask(T), [T, T]),
      ...common,
    });
    const o = (out.o as ort.Tensor).data as Float32Array;
    const p = out.p as ort.Tensor;
    return Tensor.fromOp(
      o,
      [BT, C],
      [q, k, v],
      async (g) => {
        const r = await this.#attnBwd.run({
          q: Q,
          k: K,
          v: V,
          p,
          do: t32(g as Float32Array, [BT, C]),
          ...common,
        });
        q.accumulateGrad((r.dq as ort.Tensor).data as Float32Array);
        k.accumulateGrad((r.dk as ort.Tensor).data as Float32Array);
        v.accumulateGrad((r.dv as ort.Tensor).data as Float32Array);
      },
      "causalAttention(onnx)",
    );
  }

  async release(): Promise<void> {
    for (const s of this.#gemm.values()) await s.release();
    await this.#attnFwd.release();
    await this.#attnBwd.release();
  }
}
