// The key/value cache of incremental inference: greedy generation with the cache equals full
// recompute (also past the window slide), a cached step's logits equal the full-window forward's
// last row, sessions never mix, and inference routing has no capacity drops (so the row count of
// a call cannot change a token's output).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { generateBytes } from "../../src/model/generate.ts";
import { KvBatcher, KvSession, kvInitialPositions } from "../../src/model/kv-cache.ts";
import { LocalExpertHost } from "../../src/model/local-expert-host.ts";
import { MoeTransformer } from "../../src/model/transformer.ts";
import { OnnxKernels } from "../../src/tensor/onnx-kernels.ts";
import { type DType, noGradAsync } from "../../src/tensor/tensor.ts";
import { tinyConfig } from "./tiny.ts";

const prompt = new TextEncoder().encode("Call me Ishmael.");

async function tinyModel(dtype: DType, kernels: OnnxKernels | null = null) {
  const mc = { ...tinyConfig(), seed: 7 };
  const host = await LocalExpertHost.create(mc, { backend: kernels ? "onnx" : "js", dtype });
  return { model: new MoeTransformer(mc, host, dtype, kernels), host };
}

/** Full-window logits of the last position (the reference: no cache, no routing cache). */
async function fullLastRow(model: MoeTransformer, window: number[]): Promise<Float64Array> {
  const T = window.length;
  const V = model.config.vocab;
  const { logits } = await noGradAsync(() =>
    model.forward(Int32Array.from(window), 1, T, undefined, { routingCache: false }),
  );
  return Float64Array.from(logits.data.subarray((T - 1) * V, T * V));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}

const greedy = (maxNewBytes: number, kvCache: boolean) => ({
  maxNewBytes,
  temperature: 0,
  topK: 0,
  rng: new Prng(1),
  kvCache,
});

describe("KV cache (incremental inference)", () => {
  it("greedy generation with the cache equals full recompute, past the window slide", async () => {
    // context 32: 16 prompt bytes + 40 new ones slide the window 24 times.
    for (const [dtype, useKernels] of [
      ["float32", false],
      ["float32", true],
      ["float64", false],
    ] as const) {
      const kernels = useKernels ? await OnnxKernels.create(1) : null;
      const { model, host } = await tinyModel(dtype, kernels);
      try {
        const cached = await generateBytes(model, prompt, greedy(40, true));
        const full = await generateBytes(model, prompt, greedy(40, false));
        assert.deepEqual(cached, full, `${dtype}${useKernels ? " onnx" : ""}`);
        // Not a constant output: the comparison would hide nothing otherwise.
        assert.ok(new Set(cached).size > 1, `varied bytes: ${[...cached]}`);
      } finally {
        await host.close();
        await kernels?.release();
      }
    }
  });

  it("a cached step's logits equal the full-window logits of the last position", async () => {
    // The two paths do the same arithmetic per row in another order (attention sums over the cache
    // instead of a masked T×T product; GEMMs of 1 row instead of T). Measured on this model
    // (|logit| ≤ 0.28): float64 differs by ~1e-16, float32 by ~6e-8 (one ulp). Bounds: float64
    // 1e-12, float32 1e-5 (~100 ulps of a logit of magnitude 1, room for another GEMM kernel's
    // blocking), far below what would change a sampled byte except at exact ties.
    for (const [dtype, tol] of [
      ["float64", 1e-12],
      ["float32", 1e-5],
    ] as const) {
      const { model, host } = await tinyModel(dtype);
      try {
        const session = new KvSession(model);
        const rng = new Prng(3);
        const seq = Array.from(prompt);
        let worst = 0;
        for (let i = 0; i < 24; i++) {
          const window = seq.slice(-model.config.context);
          const row = await session.lastLogits(window);
          worst = Math.max(worst, maxAbsDiff(row, await fullLastRow(model, window)));
          seq.push(rng.int(256));
        }
        assert.ok(worst <= tol, `${dtype}: max |Δlogit| ${worst} > ${tol}`);
        // 16 + 23 = 39 > 32 tokens: the first 17 calls are prompt prefill + 16 steps, then the
        // window slides and every call re-prefills it (absolute positions).
        assert.equal(session.stats.steps, 16);
        assert.equal(session.stats.prefills, 8);
      } finally {
        await host.close();
      }
    }
  });

  it("the cache grows past its first allocation without changing results", async () => {
    const mc = { ...tinyConfig(), seed: 7, context: 100 };
    const host = await LocalExpertHost.create(mc, { backend: "js", dtype: "float64" });
    const model = new MoeTransformer(mc, host, "float64");
    try {
      const session = new KvSession(model);
      assert.equal(session.cache.positionsAllocated, kvInitialPositions);
      const rng = new Prng(5);
      const seq = Array.from(prompt);
      let worst = 0;
      while (seq.length < 90) {
        const row = await session.lastLogits(seq);
        if (seq.length % 7 === 0)
          worst = Math.max(worst, maxAbsDiff(row, await fullLastRow(model, seq)));
        seq.push(rng.int(256));
      }
      assert.equal(session.cache.positionsAllocated, 100, "64 doubled, capped at the context");
      assert.equal(session.stats.prefills, 1);
      assert.ok(worst <= 1e-12, `max |Δlogit| ${worst}`);
    } finally {
      await host.close();
    }
  });

  it("a step sends one row per MoE layer to the experts", async () => {
    const { model, host } = await tinyModel("float32");
    try {
      const session = new KvSession(model);
      const seq = Array.from(prompt);
      await session.lastLogits(seq);
      model.resetRoutingStats();
      seq.push(65);
      await session.lastLogits(seq);
      for (const s of model.routingStats()) assert.equal(s.tokens, 1, `layer ${s.layer}`);
    } finally {
      await host.close();
    }
  });

  it("sessions are per request: interleaved and batched generations equal sequential ones", async () => {
    const { model, host } = await tinyModel("float32");
    try {
      const prompts = ["Call me Ishmael.", "Some years ago", "x"].map((p) =>
        Array.from(new TextEncoder().encode(p)),
      );
      const run = async (p: number[], steps: number, interleave: boolean, batcher?: KvBatcher) => {
        const s = new KvSession(model, batcher);
        const seq = [...p];
        for (let i = 0; i < steps; i++) {
          if (interleave) await new Promise((r) => setImmediate(r));
          const row = await s.lastLogits(seq.slice(-model.config.context));
          let best = 0;
          for (let b = 1; b < 256; b++) if ((row[b] as number) > (row[best] as number)) best = b;
          seq.push(best);
        }
        return seq;
      };
      const sequential: number[][] = [];
      for (const p of prompts) sequential.push(await run(p, 20, false));
      const concurrent = await Promise.all(prompts.map((p) => run(p, 20, true)));
      assert.deepEqual(concurrent, sequential);
      // Continuous batching: the three sessions' calls share passes, each gets its own result.
      const batcher = new KvBatcher(model);
      const batched = await Promise.all(prompts.map((p) => run(p, 20, false, batcher)));
      assert.deepEqual(batched, sequential);
      assert.equal(batcher.stats.largestPass, 3, "all three sequences shared a pass");
      assert.ok(batcher.stats.passes < 3 * 20, `${batcher.stats.passes} passes for 60 calls`);
    } finally {
      await host.close();
    }
  });

  it("inference routing drops no token for capacity; training keeps the capacity limit", async () => {
    const base = tinyConfig();
    // A tight capacity: training drops, inference must not.
    const mc = {
      ...base,
      seed: 7,
      tiers: base.tiers.map((t) => ({ ...t, capacityFactor: 0.25 })),
    };
    const host = await LocalExpertHost.create(mc, { backend: "js" });
    const model = new MoeTransformer(mc, host);
    try {
      const ids = Int32Array.from(prompt);
      await noGradAsync(() =>
        model.forward(ids, 1, ids.length, undefined, { routingCache: false }),
      );
      const dropsInference = model.routingStats().reduce((s, l) => s + l.droppedAssignments, 0);
      assert.equal(dropsInference, 0);
      model.resetRoutingStats();
      await model.forward(ids, 1, ids.length, ids, { routingCache: false });
      const dropsTraining = model.routingStats().reduce((s, l) => s + l.droppedAssignments, 0);
      assert.ok(dropsTraining > 0, "capacity factor 0.25 drops assignments in training");
    } finally {
      await host.close();
    }
  });
});
