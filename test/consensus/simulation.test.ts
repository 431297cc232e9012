// Seeded simulations of the five coordinators under faults and one Byzantine replica.
// Safety (agreement, durability), liveness after heal and linearizability are judged by the
// checkers in src/consensus/sim/checkers.ts and src/consensus/linearizability.ts.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { runSimulation } from "../../src/consensus/sim/simulation.ts";

/** Schedules per test run; `moe-swarm coordinator simulate --seeds N` runs longer sweeps. */
const seedsInTest = 2_000;

describe("deterministic simulation", () => {
  it(`keeps agreement, durability, liveness and linearizability over ${seedsInTest} seeded schedules`, () => {
    const failures: string[] = [];
    let crashes = 0;
    let partitions = 0;
    let byzantineRuns = 0;
    let viewChanges = 0;
    let committed = 0;
    for (let seed = 1; seed <= seedsInTest; seed++) {
      const r = runSimulation({ seed });
      if (!r.ok)
        failures.push(`seed ${seed}: ${r.violations.join("; ")} (reproduce: ${r.reproduce})`);
      crashes += r.stats.crashes;
      partitions += r.stats.partitions;
      byzantineRuns += r.byzantine ? 1 : 0;
      viewChanges += r.stats.viewMax;
      committed += r.stats.committedHeightMax;
    }
    assert.deepEqual(failures.slice(0, 5), []);
    // The schedules really were hostile.
    assert.ok(crashes > seedsInTest / 2, `crashes ${crashes}`);
    assert.ok(partitions > seedsInTest / 2, `partitions ${partitions}`);
    assert.equal(byzantineRuns, seedsInTest);
    assert.ok(viewChanges > seedsInTest, `view changes ${viewChanges}`);
    assert.ok(committed > 10 * seedsInTest, `blocks committed ${committed}`);
  });

  it("replays a seed exactly", () => {
    const a = runSimulation({ seed: 4242 });
    const b = runSimulation({ seed: 4242 });
    assert.deepEqual(a.stats, b.stats);
    assert.deepEqual([...a.rejectReasons], [...b.rejectReasons]);
    assert.deepEqual(a.finalStatus, b.finalStatus);
  });

  const cases = [
    ["equivocate", /equivocation/],
    ["conflicting-votes", undefined],
    ["bad-signatures", /invalid signature/],
    ["replay", /relayed by/],
    ["forge-author", /relayed by/],
    ["future-view", /future (view|round)/],
  ] as const;
  for (const [behaviour, reason] of cases) {
    it(`a Byzantine ORD leader that does "${behaviour}" is rejected with a logged reason, and the others go on`, () => {
      let equivocationsSeen = 0;
      for (let seed = 1; seed <= 5; seed++) {
        const r = runSimulation({ seed, byzantine: { id: 0, behaviours: [behaviour] } });
        assert.deepEqual(r.violations, [], `seed ${seed}`);
        assert.ok((r.liesTold.get(behaviour) ?? 0) > 0, `the ${behaviour} lie was told`);
        const reasons = [...r.rejectReasons.keys()].join(" | ");
        if (behaviour === "equivocate") equivocationsSeen += r.stats.evidence;
        else if (reason) assert.match(reasons, reason);
        assert.ok(r.stats.committedHeightMax > 5);
      }
      if (behaviour === "equivocate") assert.ok(equivocationsSeen > 0, "equivocation was detected");
    });
  }

  it("a silent ORD makes the regional coordinators take over the lead", () => {
    const r = runSimulation({
      seed: 7,
      byzantine: { id: 0, behaviours: ["silent"] },
      faults: false,
    });
    assert.deepEqual(r.violations, []);
    const leaders = new Set(
      r.finalStatus.filter((s) => s && s.id !== 0).map((s) => s?.leaderRegion),
    );
    assert.ok(![...leaders].includes("ORD"), `leader after ORD went silent: ${[...leaders]}`);
    assert.ok(r.stats.committedHeightMax > 5);
  });

  it("runs with real ML-DSA-65 signatures (few short schedules)", () => {
    for (const seed of [1, 2]) {
      const r = runSimulation({
        seed,
        signatures: "ml-dsa-65",
        clients: 2,
        opsPerClient: 3,
        safetyPhaseMs: 400,
        viewTimeoutMs: 200,
      });
      assert.deepEqual(r.violations, [], `seed ${seed}`);
      assert.ok(r.stats.committedHeightMax >= 3);
    }
  });
});
