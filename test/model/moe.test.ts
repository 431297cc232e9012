// The whole MoE block's gradient (router + routing + experts through ExpertHost + aux losses)
// against central finite differences in float64, for each activation mode; routing statistics;
// the superposition cache in inference.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import type { ModelConfig, RoutingConfig, TierConfig } from "../../src/model/config.ts";
import { LocalExpertHost } from "../../src/model/local-expert-host.ts";
import { MoeLayer } from "../../src/model/moe-layer.ts";
import { bornProbabilities, loadBalanceLoss, routerZLoss } from "../../src/model/router.ts";
import { gradCheck, project, randomFloat64 } from "../../src/tensor/gradcheck.ts";
import { weightedSum } from "../../src/tensor/ops.ts";
import { noGradAsync, Tensor } from "../../src/tensor/tensor.ts";

const routing: RoutingConfig = {
  collapseThreshold: 0.85,
  loadBalanceWeight: 0.3,
  zLossWeight: 0.2,
  cacheEntries: 64,
  cacheBits: 8,
};

function setup(
  activation: TierConfig["activation"],
  capacityFactor = 8,
  dtype: "float32" | "float64" = "float64",
  cacheEntries = 0,
) {
  const D = 6;
  const tier: TierConfig = {
    name: "t",
    experts: 4,
    activation,
    blocks: 1,
    expertHidden: 5,
    topK: 3,
    capacityFactor,
  };
  const mc: ModelConfig = {
    vocab: 258,
    dModel: D,
    nHeads: 2,
    context: 8,
    seed: 3,
    tiers: [tier],
    routing,
  };
  const rng = new Prng(17);
  const router = Tensor.param(
    dtype === "float64"
      ? randomFloat64(D * 4, rng, 0.8)
      : Float32Array.from(randomFloat64(D * 4, rng, 0.8)),
    [D, 4],
    "router",
  );
  const layer = new MoeLayer({ layer: 0, tier, tierIndex: 0 }, D, router, {
    ...routing,
    cacheEntries,
  });
  return { mc, layer, router, D, rng };
}

describe("router ops vs central differences (float64)", () => {
  const rng = new Prng(23);
  const a = Tensor.param(randomFloat64(5 * 4, rng), [5, 4], "amplitudes");
  it("Born-rule probabilities p = a²/Σa² (rows sum to 1)", async () => {
    const p = bornProbabilities(a);
    for (let t = 0; t < 5; t++) {
      let s = 0;
      for (let j = 0; j < 4; j++) s += p.data[t * 4 + j] as number;
      assert.ok(Math.abs(s - 1) < 1e-12);
    }
    const r = randomFloat64(20, rng);
    const res = await gradCheck(() => project(bornProbabilities(a), r), [a], { floor: 1e-7 });
    assert.ok(res.maxError < 1e-6, res.worst);
  });
  it("router z-loss and load-balance loss", async () => {
    const z = await gradCheck(() => routerZLoss(a), [a], { floor: 1e-7 });
    assert.ok(z.maxError < 1e-6, z.worst);
    const f = Float64Array.from([0.4, 0.3, 0.2, 0.1]);
    const lb = await gradCheck(() => loadBalanceLoss(bornProbabilities(a), f), [a], {
      floor: 1e-7,
    });
    assert.ok(lb.maxError < 1e-6, lb.worst);
    // uniform routing and uniform probabilities give exactly 1
    const uniform = new Tensor(new Float64Array(8).fill(0.25), [2, 4]);
    assert.ok(
      Math.abs(loadBalanceLoss(uniform, new Float64Array(4).fill(0.25)).item() - 1) < 1e-12,
    );
  });
});

describe("MoE block gradient vs central differences (float64)", () => {
  for (const activation of ["parallel", "selective", "sequential"] as const) {
    it(`${activation}: d(loss)/d(input) and d(loss)/d(router)`, async () => {
      const { mc, layer, router, D, rng } = setup(activation);
      const host = await LocalExpertHost.create(mc, { dtype: "float64", backend: "js" });
      // larger expert weights so the block is far from linear
      for (const id of host.ids()) {
        const p = host.params(id);
        for (const w of [p.w1, p.w2, p.b1, p.b2])
          for (let i = 0; i < w.length; i++) w[i] = rng.normal() * 0.7;
      }
      const N = 7;
      const h = Tensor.param(randomFloat64(N * D, rng), [N, D], "h");
      const r = randomFloat64(N * D, rng);
      const loss = async () => {
        const out = await layer.forward(h, host);
        const terms = [project(out.y, r)];
        if (out.loadBalance && out.zLoss) terms.push(out.loadBalance, out.zLoss);
        return terms.length === 1 ? (terms[0] as Tensor) : weightedSum(terms, [1, 0.3, 0.2]);
      };
      const res = await gradCheck(loss, [h, router], { epsilon: 1e-6, floor: 1e-7 });
      assert.ok(res.maxError < 1e-5, `max relative error ${res.maxError} at ${res.worst}`);
      const plan = (await noGradAsync(() => layer.forward(h, host))).plan;
      if (activation === "parallel") assert.ok([...plan.servedPerToken].every((k) => k === 3));
      if (activation === "sequential") assert.ok(plan.rounds.length >= 2, "a real cascade");
    });
  }
});

describe("MoE layer behaviour", () => {
  it("counts drops under a tight capacity and records routing statistics", async () => {
    const { mc, layer, D, rng } = setup("parallel", 0.25);
    const host = await LocalExpertHost.create(mc, { dtype: "float64", backend: "js" });
    const N = 16;
    const h = Tensor.param(randomFloat64(N * D, rng), [N, D], "h");
    const out = await layer.forward(h, host);
    // capacity ⌈0.25·16·3/4⌉ = 3 per expert, 4 experts → at most 12 of 48 assignments served
    assert.equal(out.plan.capacity, 3);
    const served = out.plan.admitted.reduce((a, b) => a + b, 0);
    assert.ok(served <= 12);
    assert.equal(out.plan.droppedAssignments, 48 - served);
    assert.equal(layer.stats.droppedAssignments, 48 - served);
    assert.equal(layer.stats.tokens, N);
    assert.equal(
      layer.stats.requested.reduce((a, b) => a + b, 0),
      48,
    );
    // a token served by no expert passes through unchanged: its MoE output is exactly zero
    for (let t = 0; t < N; t++)
      if (out.plan.servedPerToken[t] === 0)
        for (let j = 0; j < D; j++) assert.equal(out.y.data[t * D + j], 0);
    assert.ok(out.loadBalance !== null && out.loadBalance.item() >= 1 - 1e-9, "balance loss ≥ 1");
  });

  it("inference: cache hits return identical routing and output; hit rate is reported", async () => {
    for (const activation of ["parallel", "selective", "sequential"] as const) {
      const { mc, layer, D, rng } = setup(activation, 8, "float32", 64);
      const host = await LocalExpertHost.create(mc, { backend: "js" });
      const N = 9;
      const h = new Tensor(Float32Array.from(randomFloat64(N * D, rng)), [N, D]);
      const first = await noGradAsync(() => layer.forward(h, host));
      assert.equal(layer.cache.hits, 0);
      assert.equal(layer.cache.misses, N);
      const second = await noGradAsync(() => layer.forward(h, host));
      assert.equal(layer.cache.hits, N);
      assert.equal(layer.cache.hitRate, 0.5);
      assert.deepEqual(second.plan.rounds, first.plan.rounds);
      assert.deepEqual(second.y.data, first.y.data);
      // and the cached route equals the uncached router's decision
      const fresh = new MoeLayer(layer.info, D, layer.router, { ...routing, cacheEntries: 0 });
      const direct = await noGradAsync(() => fresh.forward(h, host));
      assert.deepEqual(direct.plan.rounds, first.plan.rounds, activation);
    }
  });
});
