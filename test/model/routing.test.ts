// Routing rules: top-k, minimal top-p, cascade stopping, capacity drops; the superposition cache.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import { expertCapacity, planRouting, rankExperts, topK, topP } from "../../src/model/routing.ts";
import { SuperpositionCache } from "../../src/model/superposition-cache.ts";

const rule = (
  activation: "parallel" | "selective" | "sequential",
  topK: number,
  capacityFactor = 100,
) => ({
  activation,
  topK,
  threshold: 0.85,
  capacityFactor,
});

function randomSimplex(rng: Prng, E: number): Float64Array {
  const p = Float64Array.from({ length: E }, () => rng.normal() ** 2 + 1e-9);
  const s = p.reduce((a, b) => a + b, 0);
  return p.map((v) => v / s);
}

describe("expert selection", () => {
  it("top-k picks the k most probable experts in order", () => {
    const p = Float64Array.from([0.1, 0.4, 0.05, 0.3, 0.15]);
    assert.deepEqual(topK(p, 0, 5, 2), [1, 3]);
    assert.deepEqual(rankExperts(p, 0, 5), [1, 3, 4, 0, 2]);
  });

  it("top-p picks exactly the minimal set reaching the threshold (property, 500 random rows)", () => {
    const rng = new Prng(11);
    for (let trial = 0; trial < 500; trial++) {
      const E = 2 + rng.int(15);
      const p = randomSimplex(rng, E);
      const maxK = 1 + rng.int(E);
      const set = topP(p, 0, E, 0.85, maxK);
      const mass = set.reduce((s, e) => s + (p[e] as number), 0);
      const ranked = rankExperts(p, 0, E);
      assert.deepEqual(set, ranked.slice(0, set.length), "a prefix of the ranking");
      assert.ok(set.length <= maxK);
      if (set.length < maxK)
        assert.ok(mass >= 0.85, "reaches the threshold unless bounded by max-k");
      // minimal: without its last expert the set is below the threshold
      const without = mass - (p[set[set.length - 1] as number] as number);
      assert.ok(without < 0.85, `not minimal: ${without} already ≥ 0.85`);
    }
  });

  it("top-p on a worked example", () => {
    const p = Float64Array.from([0.5, 0.3, 0.1, 0.06, 0.04]);
    assert.deepEqual(topP(p, 0, 5, 0.85, 5), [0, 1, 2]); // 0.5, 0.8, 0.9 ≥ 0.85
    assert.deepEqual(topP(p, 0, 5, 0.85, 2), [0, 1]); // bounded by max-k
    assert.deepEqual(topP(p, 0, 5, 0.5, 5), [0]); // exactly reaching counts
  });
});

describe("routing plans", () => {
  it("cascade stops once the served mass passes the threshold", () => {
    // token 0: 0.9 on one expert → 1 round; token 1: 0.5 + 0.4 → 2 rounds; token 2: flat → max-k rounds
    const p = Float64Array.from([
      0.9, 0.05, 0.03, 0.02, 0.4, 0.5, 0.05, 0.05, 0.25, 0.25, 0.25, 0.25,
    ]);
    const plan = planRouting(p, 3, 4, rule("sequential", 3));
    assert.deepEqual(Array.from(plan.servedPerToken), [1, 2, 3]);
    assert.equal(plan.rounds.length, 3);
    assert.deepEqual(plan.rounds[0]?.tokensByExpert, [[0, 2], [1], [], []]);
    assert.deepEqual(plan.rounds[1]?.tokensByExpert, [[1], [2], [], []]);
    assert.deepEqual(plan.rounds[2]?.tokensByExpert, [[], [], [2], []]);
  });

  it("a cascade moves on to the next expert when one is full", () => {
    // 4 tokens all prefer expert 0 (0.9); capacity ⌈0.5·4·2/2⌉ = 2
    const p = Float64Array.from([0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1]);
    const plan = planRouting(p, 4, 2, rule("sequential", 2, 0.5));
    assert.equal(plan.capacity, 2);
    assert.deepEqual(plan.rounds[0]?.tokensByExpert, [[0, 1], []]);
    assert.deepEqual(plan.rounds[1]?.tokensByExpert, [[], [2, 3]]);
    assert.equal(plan.droppedAssignments, 2);
    assert.equal(plan.droppedTokens, 0);
  });

  it("capacity overflow drops and counts assignments and tokens (first choices first)", () => {
    const N = 10;
    const E = 4;
    const p = new Float64Array(N * E);
    for (let t = 0; t < N; t++) {
      p[t * E] = 0.7; // everyone's first choice: expert 0
      p[t * E + 1 + (t % 3)] = 0.3;
    }
    const plan = planRouting(p, N, E, rule("parallel", 1, 1));
    const cap = expertCapacity(N, E, 1, 1);
    assert.equal(cap, 3);
    assert.deepEqual(plan.rounds[0]?.tokensByExpert[0], [0, 1, 2]);
    assert.equal(plan.droppedAssignments, N - cap);
    assert.equal(plan.droppedTokens, N - cap);
    assert.equal(plan.requested[0], N);
    assert.equal(plan.admitted[0], cap);
    const two = planRouting(p, N, E, rule("parallel", 2, 1));
    // capacity 5: expert 0 takes 5 first choices; second choices spread over experts 1..3
    assert.equal(two.capacity, 5);
    assert.equal(two.admitted[0], 5);
    assert.equal(two.droppedAssignments, 5);
    assert.equal(two.droppedTokens, 0);
  });

  it("selective dispatches the top-p set in one round", () => {
    const rng = new Prng(5);
    const N = 50;
    const E = 8;
    const p = new Float64Array(N * E);
    for (let t = 0; t < N; t++) p.set(randomSimplex(rng, E), t * E);
    const plan = planRouting(p, N, E, rule("selective", 4));
    assert.equal(plan.rounds.length, 1);
    for (let t = 0; t < N; t++)
      assert.equal(plan.servedPerToken[t], topP(p, t * E, E, 0.85, 4).length);
  });
});

describe("superposition cache", () => {
  it("returns the stored route for the same quantised state and counts hits", () => {
    const c = new SuperpositionCache(2, 8);
    const h = Float64Array.from([0.5, -1, 0.25, 0]);
    const q = c.quantise(h, 0, 4);
    assert.deepEqual(Array.from(q), [64, -127, 32, 0]);
    assert.equal(c.get(q), undefined);
    const route = { experts: Int32Array.from([2, 0]), gates: Float32Array.from([0.6, 0.3]) };
    c.set(q, route);
    const close = c.quantise(Float64Array.from([0.5001, -1, 0.25, 0.0001]), 0, 4);
    assert.equal(c.get(close), route);
    assert.equal(c.hits, 1);
    assert.equal(c.misses, 1);
    assert.equal(c.hitRate, 0.5);
  });

  it("evicts the least recently used entry", () => {
    const c = new SuperpositionCache(2, 8);
    const r = { experts: Int32Array.from([0]), gates: Float32Array.from([1]) };
    const a = Int16Array.from([1, 0]);
    const b = Int16Array.from([2, 0]);
    const d = Int16Array.from([3, 0]);
    c.set(a, r);
    c.set(b, r);
    c.get(a); // a is now most recent
    c.set(d, r);
    assert.equal(c.size, 2);
    assert.equal(c.get(b), undefined);
    assert.ok(c.get(a));
    assert.ok(c.get(d));
  });

  it("never serves a hash collision: the stored vector is compared", () => {
    const c = new SuperpositionCache(4, 8);
    const a = Int16Array.from([1, 2, 3]);
    c.set(a, { experts: Int32Array.from([0]), gates: Float32Array.from([1]) });
    assert.equal(c.get(Int16Array.from([1, 2, 4])), undefined);
  });
});
