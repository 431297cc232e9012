// The hierarchical MoE transformer end to end: a tiny model overfits a short text; the whole
// model's gradient matches finite differences on sampled coordinates; training replays from a seed.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { sequentialBatches } from "../../src/model/dataset.ts";
import { LocalExpertHost } from "../../src/model/local-expert-host.ts";
import { Trainer } from "../../src/model/trainer.ts";
import { MoeTransformer } from "../../src/model/transformer.ts";
import { gradCheck } from "../../src/tensor/gradcheck.ts";
import { OnnxKernels } from "../../src/tensor/onnx-kernels.ts";
import { backward } from "../../src/tensor/tensor.ts";
import { tinyConfig } from "./tiny.ts";

const text = new TextEncoder().encode("the whale, the whale! a dead whale or a stove boat. ");

describe("MoeTransformer", () => {
  it("has the spec's three tiers with their activation modes", () => {
    const mc = tinyConfig();
    assert.deepEqual(
      mc.tiers.map((t) => [t.name, t.activation]),
      [
        ["Sensory Cortex", "parallel"],
        ["Association Areas", "selective"],
        ["Prefrontal Cortex", "sequential"],
      ],
    );
  });

  it("a tiny model overfits a short text to near-zero loss", async () => {
    const mc = tinyConfig();
    const host = await LocalExpertHost.create(mc, { backend: "js", adamw: { weightDecay: 0 } });
    const model = new MoeTransformer(mc, host);
    const trainer = new Trainer(model, { adamw: { weightDecay: 0 } });
    const [batch] = sequentialBatches(text, 1, 32, 1);
    assert.ok(batch);
    let first = 0;
    let last = 0;
    for (let s = 0; s < 150; s++) {
      const r = await trainer.trainStep(batch, 1e-2);
      if (s === 0) first = r.ce;
      last = r.ce;
    }
    assert.ok(first > 5, `starts near ln 258 ≈ 5.55 nats; got ${first}`);
    assert.ok(last < 0.05, `overfits to near zero; final CE ${last} nats/byte`);
    const stats = model.routingStats();
    assert.equal(stats.length, 3);
    assert.ok(stats.every((s) => s.tokens === 150 * 32));
  });

  it("whole-model gradient matches central differences (float64, sampled coordinates)", async () => {
    const mc = tinyConfig();
    const host = await LocalExpertHost.create(mc, { backend: "js", dtype: "float64" });
    const model = new MoeTransformer(mc, host, "float64");
    const [batch] = sequentialBatches(text, 2, 8, 2);
    assert.ok(batch);
    const params = [...model.params.values()];
    const res = await gradCheck(
      async () => {
        const out = await model.forward(batch.ids, batch.B, batch.T, batch.targets, {
          routingCache: false,
        });
        return out.loss as NonNullable<typeof out.loss>;
      },
      params,
      { epsilon: 1e-5, floor: 1e-5, maxPerInput: 3 },
    );
    assert.ok(res.checked > 50);
    assert.ok(res.maxError < 1e-4, `max relative error ${res.maxError} at ${res.worst}`);
  });

  it("the onnxruntime trunk computes the same logits and gradients as the TypeScript trunk", async () => {
    const mc = tinyConfig();
    const host = await LocalExpertHost.create(mc, { backend: "js" });
    const kernels = await OnnxKernels.create(1);
    try {
      const js = new MoeTransformer(mc, host);
      const native = new MoeTransformer(mc, host, "float32", kernels);
      const [batch] = sequentialBatches(text, 1, 32, 1);
      assert.ok(batch);
      const a = await js.forward(batch.ids, 1, 32, batch.targets);
      const b = await native.forward(batch.ids, 1, 32, batch.targets);
      for (let i = 0; i < a.logits.size; i++)
        assert.ok(Math.abs((a.logits.data[i] as number) - (b.logits.data[i] as number)) < 1e-4);
      await backward(a.loss as NonNullable<typeof a.loss>);
      await backward(b.loss as NonNullable<typeof b.loss>);
      for (const [name, p] of js.params) {
        const q = native.params.get(name);
        assert.ok(q?.grad && p.grad, name);
        for (let i = 0; i < p.size; i++)
          assert.ok(
            Math.abs((p.grad[i] as number) - (q.grad[i] as number)) <
              1e-4 * Math.max(1, Math.abs(p.grad[i] as number)),
            `${name}[${i}]`,
          );
      }
    } finally {
      await kernels.release();
    }
  });

  it("training replays bit for bit from the seed", async () => {
    const run = async () => {
      const mc = tinyConfig();
      const host = await LocalExpertHost.create(mc, { backend: "js" });
      const trainer = new Trainer(new MoeTransformer(mc, host));
      const [batch] = sequentialBatches(text, 1, 32, 1);
      const losses: number[] = [];
      for (let s = 0; s < 5; s++)
        losses.push((await trainer.trainStep(batch as NonNullable<typeof batch>, 3e-3)).loss);
      return losses;
    };
    assert.deepEqual(await run(), await run());
  });
});
