// Every differentiable op's gradient against central finite differences in float64.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { gemm, transpose } from "../../src/tensor/gemm.ts";
import { gradCheck, project, randomFloat64 } from "../../src/tensor/gradcheck.ts";
import {
  add,
  addBias,
  bmm,
  causalAttention,
  crossEntropy,
  embedding,
  gatherRows,
  gelu,
  layerNorm,
  linear,
  matmul,
  scale,
  scatterAddRows,
  softmax,
  weightedSum,
} from "../../src/tensor/ops.ts";
import { backward, noGrad, Tensor } from "../../src/tensor/tensor.ts";

/** Stated tolerance: float64 central differences with ε = 1e-6 agree to ≈ 1e-8 relative. */
const tolerance = 1e-6;

function param(shape: number[], rng: Prng, name: string, s = 1): Tensor {
  return Tensor.param(
    randomFloat64(
      shape.reduce((a, b) => a * b, 1),
      rng,
      s,
    ),
    shape,
    name,
  );
}

async function check(build: () => Tensor, inputs: Tensor[], seed = 7): Promise<void> {
  const rng = new Prng(seed);
  const out = noGrad(build);
  const r = randomFloat64(out.size, rng);
  const res = await gradCheck(() => project(build(), r), inputs, { floor: 1e-7 });
  assert.ok(res.checked > 0);
  assert.ok(res.maxError < tolerance, `max relative error ${res.maxError} at ${res.worst}`);
}

describe("gemm", () => {
  it("matches the naive triple loop for every transpose combination", () => {
    const rng = new Prng(1);
    for (const [M, N, K] of [
      [1, 1, 1],
      [5, 7, 3],
      [9, 4, 130],
      [17, 33, 65],
    ] as const) {
      const A = randomFloat64(M * K, rng);
      const B = randomFloat64(K * N, rng);
      const ref = new Float64Array(M * N);
      for (let i = 0; i < M; i++)
        for (let j = 0; j < N; j++) {
          let s = 0;
          for (let k = 0; k < K; k++) s += (A[i * K + k] as number) * (B[k * N + j] as number);
          ref[i * N + j] = s;
        }
      for (const tA of [false, true])
        for (const tB of [false, true]) {
          const a = tA ? transpose(A, M, K) : A;
          const b = tB ? transpose(B, K, N) : B;
          const C = new Float64Array(M * N).fill(1);
          gemm(a, b, C, M, N, K, tA, tB, true);
          for (let i = 0; i < C.length; i++)
            assert.ok(Math.abs((C[i] as number) - 1 - (ref[i] as number)) < 1e-9);
        }
    }
  });
});

describe("op gradients vs central differences (float64)", () => {
  const rng = new Prng(42);
  it("matmul", async () => {
    const a = param([5, 4], rng, "a");
    const b = param([4, 6], rng, "b");
    await check(() => matmul(a, b), [a, b]);
  });
  it("bmm", async () => {
    const a = param([3, 4, 5], rng, "a");
    const b = param([3, 5, 2], rng, "b");
    await check(() => bmm(a, b), [a, b]);
  });
  it("linear (matmul + bias)", async () => {
    const x = param([6, 4], rng, "x");
    const w = param([4, 3], rng, "w");
    const b = param([3], rng, "b");
    await check(() => linear(x, w, b), [x, w, b]);
    const c = param([4], rng, "c");
    await check(() => addBias(x, c), [x, c]);
  });
  it("add, scale, weightedSum", async () => {
    const a = param([3, 4], rng, "a");
    const b = param([3, 4], rng, "b");
    await check(() => scale(add(a, b), -1.7), [a, b]);
    const r = randomFloat64(12, rng);
    await check(() => weightedSum([project(a, r), project(b, r)], [0.3, 2]), [a, b]);
  });
  it("gelu", async () => {
    const x = param([4, 5], rng, "x", 2);
    await check(() => gelu(x), [x]);
  });
  it("softmax", async () => {
    const x = param([3, 7], rng, "x", 2);
    await check(() => softmax(x), [x]);
  });
  it("layerNorm", async () => {
    const x = param([4, 6], rng, "x");
    const g = param([6], rng, "gamma");
    const b = param([6], rng, "beta");
    await check(() => layerNorm(x, g, b), [x, g, b]);
  });
  it("embedding, gatherRows, scatterAddRows", async () => {
    const table = param([5, 3], rng, "table");
    const ids = Int32Array.from([4, 0, 4, 2]);
    await check(() => embedding(table, ids), [table]);
    const x = param([6, 3], rng, "x");
    await check(() => gatherRows(x, Int32Array.from([5, 1, 1])), [x]);
    await check(() => scatterAddRows(x, Int32Array.from([0, 2, 2, 1, 0, 3]), 4), [x]);
  });
  it("causalAttention (B=2, T=5, H=2)", async () => {
    const q = param([10, 4], rng, "q");
    const k = param([10, 4], rng, "k");
    const v = param([10, 4], rng, "v");
    await check(() => causalAttention(q, k, v, 2, 5, 2), [q, k, v]);
  });
  it("crossEntropy with an ignored target", async () => {
    const logits = param([4, 6], rng, "logits", 2);
    const targets = Int32Array.from([1, -1, 5, 0]);
    const res = await gradCheck(() => crossEntropy(logits, targets), [logits], { floor: 1e-7 });
    assert.ok(res.maxError < tolerance, res.worst);
  });
});

describe("op semantics", () => {
  it("attention is causal: position t ignores later positions", () => {
    const rng = new Prng(3);
    const mk = () => new Tensor(randomFloat64(8 * 4, rng), [8, 4]);
    const q = mk();
    const k = mk();
    const v = mk();
    const y1 = causalAttention(q, k, v, 1, 8, 2);
    k.data[7 * 4] = 99;
    v.data[7 * 4 + 1] = -99;
    const y2 = causalAttention(q, k, v, 1, 8, 2);
    assert.deepEqual(y1.data.subarray(0, 7 * 4), y2.data.subarray(0, 7 * 4));
    assert.notDeepEqual(y1.data.subarray(28), y2.data.subarray(28));
  });
  it("softmax rows sum to one; cross-entropy of uniform logits is ln V", () => {
    const x = new Tensor(Float64Array.from([1, 2, 3, -1e3, 0, 1e3]), [2, 3]);
    const p = softmax(x);
    assert.ok(
      Math.abs((p.data[0] as number) + (p.data[1] as number) + (p.data[2] as number) - 1) < 1e-12,
    );
    assert.equal(p.data[5], 1);
    const ce = crossEntropy(new Tensor(new Float64Array(2 * 5), [2, 5]), Int32Array.from([3, 0]));
    assert.ok(Math.abs(ce.item() - Math.log(5)) < 1e-12);
  });
  it("gradients accumulate across backward calls on a leaf", async () => {
    const w = Tensor.param(Float64Array.from([2]), [1, 1], "w");
    const x = new Tensor(Float64Array.from([3]), [1, 1]);
    await backward(matmul(x, w));
    await backward(matmul(x, w));
    assert.equal(w.grad?.[0], 6);
  });
  it("noGrad records no tape", () => {
    const w = Tensor.param(Float64Array.from([2]), [1, 1], "w");
    const y = noGrad(() => matmul(w, w));
    assert.equal(y.requiresGrad, false);
  });
});
