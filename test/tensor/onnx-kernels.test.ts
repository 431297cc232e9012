// The onnxruntime trunk kernels agree with the TypeScript reference ops (whose gradients are
// checked against finite differences in ops.test.ts), forward and backward.
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { project } from "../../src/tensor/gradcheck.ts";
import { OnnxKernels } from "../../src/tensor/onnx-kernels.ts";
import { encodeOnnxModel } from "../../src/tensor/onnx-proto.ts";
import { causalAttention, matmul } from "../../src/tensor/ops.ts";
import { backward, Tensor } from "../../src/tensor/tensor.ts";

function randomParam(shape: number[], rng: Prng, name: string): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.param(
    Float32Array.from({ length: n }, () => rng.normal()),
    shape,
    name,
  );
}

function close(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(a.length, b.length, what);
  for (let i = 0; i < a.length; i++)
    assert.ok(
      Math.abs((a[i] as number) - (b[i] as number)) <= tol * Math.max(1, Math.abs(b[i] as number)),
      `${what}[${i}]: ${a[i]} vs ${b[i]}`,
    );
}

describe("OnnxKernels vs TypeScript ops (float32)", async () => {
  const kernels = await OnnxKernels.create(1);
  after(() => kernels.release());

  it("matmul forward and backward", async () => {
    const rng = new Prng(1);
    const a = randomParam([37, 19], rng, "a");
    const b = randomParam([19, 11], rng, "b");
    const r = Float32Array.from({ length: 37 * 11 }, () => rng.normal());
    await backward(project(matmul(a, b), r));
    const ga = Float32Array.from(a.grad as Float32Array);
    const gb = Float32Array.from(b.grad as Float32Array);
    a.grad = null;
    b.grad = null;
    const y = await kernels.matmul(a, b);
    close(y.data, matmul(a, b).data, 1e-5, "y");
    await backward(project(y, r));
    close(a.grad as unknown as Float32Array, ga, 1e-4, "da");
    close(b.grad as unknown as Float32Array, gb, 1e-4, "db");
  });

  it("causal attention forward and backward (B=3, T=7, H=2)", async () => {
    const rng = new Prng(2);
    const q = randomParam([21, 8], rng, "q");
    const k = randomParam([21, 8], rng, "k");
    const v = randomParam([21, 8], rng, "v");
    const r = Float32Array.from({ length: 21 * 8 }, () => rng.normal());
    await backward(project(causalAttention(q, k, v, 3, 7, 2), r));
    const ref = [q, k, v].map((t) => Float32Array.from(t.grad as Float32Array));
    for (const t of [q, k, v]) t.grad = null;
    const y = await kernels.causalAttention(q, k, v, 3, 7, 2);
    close(y.data, causalAttention(q, k, v, 3, 7, 2).data, 1e-5, "y");
    await backward(project(y, r));
    for (const [i, t] of [q, k, v].entries())
      close(t.grad as unknown as Float32Array, ref[i] as Float32Array, 1e-4, t.name);
  });

  it("float32 gradient of the native matmul also passes a coarse finite-difference check", async () => {
    // Float32 central differences are noisy: ε = 1e-2 on O(1) inputs, tolerance 2e-2.
    const rng = new Prng(3);
    const a = randomParam([4, 3], rng, "a");
    const b = randomParam([3, 5], rng, "b");
    const r = Float32Array.from({ length: 20 }, () => rng.normal());
    const y = await kernels.matmul(a, b);
    await backward(project(y, r));
    const ga = a.grad as Float32Array;
    const f = async () => project(await kernels.matmul(a, b), r).item();
    for (let i = 0; i < a.size; i++) {
      const o = a.data[i] as number;
      a.data[i] = o + 1e-2;
      const fp = await f();
      a.data[i] = o - 1e-2;
      const fm = await f();
      a.data[i] = o;
      const num = (fp - fm) / 2e-2;
      assert.ok(Math.abs(num - (ga[i] as number)) < 2e-2 * Math.max(1, Math.abs(num)));
    }
  });

  it("the ONNX encoder rejects an empty graph", () => {
    assert.throws(() =>
      encodeOnnxModel({ name: "x", opset: 20, nodes: [], inputs: [], outputs: [] }),
    );
  });
});
