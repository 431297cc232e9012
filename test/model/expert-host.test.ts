// LocalExpertHost: the ExpertHost contract with both kernels (TypeScript and onnxruntime).
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { loadConfig } from "../../src/config/load.ts";
import { allExpertIds, type ModelConfig, modelConfigFrom } from "../../src/model/config.ts";
import { ffnBackwardJs, ffnForwardJs, initExpertParams } from "../../src/model/expert-ffn.ts";
import {
  ExpertInputError,
  LocalExpertHost,
  UnknownExpertError,
} from "../../src/model/local-expert-host.ts";

const base = modelConfigFrom(loadConfig().config);
const mc: ModelConfig = {
  ...base,
  dModel: 16,
  tiers: base.tiers.map((t) => ({ ...t, experts: Math.max(1, t.experts / 4), expertHidden: 24 })),
};
const id = { layer: 0, expert: 1 };

function randomX(tokens: number, d: number, seed: number): Float32Array {
  const rng = new Prng(seed);
  return Float32Array.from({ length: tokens * d }, () => rng.normal());
}

describe("LocalExpertHost", async () => {
  const js = await LocalExpertHost.create(mc, { backend: "js" });
  const onnx = await LocalExpertHost.create(mc, { backend: "onnx", threads: 1 });
  after(async () => {
    await js.close();
    await onnx.close();
  });

  it("hosts every expert of the model with seed-determined weights", () => {
    assert.equal(js.ids().length, allExpertIds(mc).length);
    assert.deepEqual(js.params(id).w1, onnx.params(id).w1);
    const again = initExpertParams(mc.seed, id, mc.dModel, 24, 1 / Math.sqrt(6));
    assert.deepEqual(again.w1, js.params(id).w1);
    assert.notDeepEqual(js.params({ layer: 0, expert: 0 }).w1, js.params(id).w1);
  });

  it("onnxruntime and TypeScript kernels agree on forward and backward", async () => {
    const x = randomX(37, 16, 1);
    const dy = randomX(37, 16, 2);
    const y1 = await js.forward(id, x, 37);
    const y2 = await onnx.forward(id, x, 37);
    for (let i = 0; i < y1.length; i++)
      assert.ok(Math.abs((y1[i] as number) - (y2[i] as number)) < 1e-5);
    const d1 = await js.backward(id, x, dy, 37);
    const d2 = await onnx.backward(id, x, dy, 37);
    for (let i = 0; i < d1.length; i++)
      assert.ok(Math.abs((d1[i] as number) - (d2[i] as number)) < 1e-5);
    const g1 = js.grads(id);
    const g2 = onnx.grads(id);
    for (const n of ["w1", "b1", "w2", "b2"] as const)
      for (let i = 0; i < g1[n].length; i++)
        assert.ok(Math.abs((g1[n][i] as number) - (g2[n][i] as number)) < 1e-4, `${n}[${i}]`);
    assert.ok(onnx.calls.onnx >= 2 && js.calls.onnx === 0);
    assert.ok(
      Math.abs((await js.gradSquaredNorm([id])) - (await onnx.gradSquaredNorm([id]))) < 1e-3,
    );
  });

  it("backward gives the finite-difference gradient (float64 reference)", () => {
    const p = initExpertParams(3, id, 5, 7, 1, "float64");
    for (let i = 0; i < p.b1.length; i++) p.b1[i] = 0.1 * i - 0.3;
    const tokens = 4;
    const rng = new Prng(9);
    const x = Float64Array.from({ length: tokens * 5 }, () => rng.normal());
    const r = Float64Array.from({ length: tokens * 5 }, () => rng.normal());
    for (let i = 0; i < p.w1.length; i++) p.w1[i] = rng.normal() * 0.5;
    for (let i = 0; i < p.w2.length; i++) p.w2[i] = rng.normal() * 0.5;
    const f = () => {
      const y = ffnForwardJs(p, x, tokens);
      let s = 0;
      for (let i = 0; i < y.length; i++) s += (y[i] as number) * (r[i] as number);
      return s;
    };
    const g = ffnBackwardJs(p, x, r, tokens);
    const eps = 1e-6;
    const pairs = [
      [x, g.dx],
      [p.w1, g.dw1],
      [p.b1, g.db1],
      [p.w2, g.dw2],
      [p.b2, g.db2],
    ] as const;
    for (const [buf, grad] of pairs) {
      for (let i = 0; i < buf.length; i++) {
        const o = buf[i] as number;
        buf[i] = o + eps;
        const fp = f();
        buf[i] = o - eps;
        const fm = f();
        buf[i] = o;
        const num = (fp - fm) / (2 * eps);
        assert.ok(
          Math.abs(num - (grad[i] as number)) <= 1e-6 * Math.max(1, Math.abs(num)),
          `${num} vs ${grad[i]}`,
        );
      }
    }
  });

  it("accumulates gradients across calls and clears them in applyUpdate", async () => {
    const host = await LocalExpertHost.create(mc, { backend: "js", ids: [id] });
    const x = randomX(3, 16, 4);
    const dy = randomX(3, 16, 5);
    await host.backward(id, x, dy, 3);
    const once = await host.gradSquaredNorm([id]);
    await host.backward(id, x, dy, 3);
    const twice = await host.gradSquaredNorm([id]);
    assert.ok(Math.abs(twice - 4 * once) < 1e-3 * twice, `‖2g‖² = 4‖g‖²: ${twice} vs ${once}`);
    const before = Float32Array.from(host.params(id).w1);
    await host.applyUpdate([id], { step: 1, learningRate: 1e-2, gradScale: 0.5 });
    assert.equal(await host.gradSquaredNorm([id]), 0);
    assert.notDeepEqual(host.params(id).w1, before);
    // AdamW's first step moves each weight by ≈ lr·sign(g) (plus decay).
    const w1 = host.params(id).w1;
    const moved = Math.abs((w1[0] as number) - (before[0] as number));
    assert.ok(moved > 0.9e-2 && moved < 1.1e-2, `first AdamW step moved ${moved}`);
    // A step without gradients leaves weights alone.
    const snapshot = Float32Array.from(w1);
    await host.applyUpdate([id], { step: 2, learningRate: 1e-2, gradScale: 1 });
    assert.deepEqual(host.params(id).w1, snapshot);
  });

  it("rejects unknown experts and malformed inputs with typed errors", async () => {
    await assert.rejects(
      js.forward({ layer: 9, expert: 0 }, new Float32Array(16), 1),
      UnknownExpertError,
    );
    await assert.rejects(js.forward(id, new Float32Array(15), 1), ExpertInputError);
    await assert.rejects(
      js.backward(id, new Float32Array(16), new Float32Array(8), 1),
      ExpertInputError,
    );
    await assert.rejects(js.forward(id, new Float32Array(0), -1), ExpertInputError);
    assert.deepEqual(await js.forward(id, new Float32Array(0), 0), new Float32Array(0));
    const aborted = AbortSignal.abort(new Error("caller gave up"));
    await assert.rejects(
      js.forward(id, new Float32Array(16), 1, { signal: aborted }),
      /caller gave up/,
    );
  });
});
