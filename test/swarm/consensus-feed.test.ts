// The gateway's consensus feed (src/swarm/consensus-feed.ts) against scripted coordinator statuses:
// rounds are counted per coordinator with gpu_type "none"; the shown view and height are vouched
// for by f + 1 coordinators, so one lying coordinator cannot inflate them; a coordinator that does
// not answer in time is skipped without stalling the poll; the shown view never goes back.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  ConsensusFeed,
  type ConsensusSink,
  consensusStatusTimeoutMs,
  coordinatorGpuLabel,
  type StatusSource,
  vouchedMax,
} from "../../src/swarm/consensus-feed.ts";

type Raw = Record<string, unknown> | "silent" | "error";

function scripted(statuses: () => Raw[]): StatusSource {
  return {
    status(i: number, timeoutMs = 2000) {
      const s = statuses()[i];
      if (s === "error") return Promise.reject(new Error("connection refused"));
      if (s === "silent")
        return new Promise((_, reject) =>
          setTimeout(() => reject(new Error("no answer")), timeoutMs),
        );
      return Promise.resolve(s as Record<string, unknown>);
    },
  };
}

function recorder() {
  const shown: { view: number; committedHeight: number; leaderRegion: string }[] = [];
  const rounds: { roundsTotal: number; region: string; gpuType: string; algorithm: string }[] = [];
  const sink: ConsensusSink = {
    recordConsensusStatus: (s) => shown.push(s),
    recordConsensusRounds: (roundsTotal, l) => rounds.push({ roundsTotal, ...l }),
  };
  return { sink, shown, rounds };
}

const st = (view: number, committedHeight: number, roundsTotal: number) => ({
  view,
  committedHeight,
  roundsTotal,
  leader: 0,
});

describe("consensus feed", () => {
  it("vouchedMax is the second highest of five (f = 1) and needs two values", () => {
    assert.equal(vouchedMax([3, 9, 4, 4, 1]), 4);
    assert.equal(vouchedMax([7, 7]), 7);
    assert.equal(vouchedMax([7]), undefined);
  });

  it("counts rounds per coordinator and shows the view at least two coordinators reached", async () => {
    // SYD lies: view 1000, height 10^6. ORD is down.
    let now: Raw[] = ["error", st(4, 20, 30), st(4, 19, 29), st(3, 18, 28), st(1000, 1e6, 5)];
    const r = recorder();
    const feed = new ConsensusFeed(
      scripted(() => now),
      r.sink,
      "hotstuff_2chain",
    );
    await feed.poll();
    assert.deepEqual(
      r.rounds.map((x) => x.region),
      ["IAD", "SJC", "AMS", "SYD"],
    );
    assert.ok(r.rounds.every((x) => x.gpuType === coordinatorGpuLabel && x.gpuType === "none"));
    assert.ok(r.rounds.every((x) => x.algorithm === "hotstuff_2chain"));
    assert.deepEqual(r.shown.at(-1), { view: 4, committedHeight: 20, leaderRegion: "ORD" });
    // View 5's leader is AMS: odd views rotate over the regional coordinators (1 → IAD, 3 → SJC, 5 → AMS).
    now = ["error", st(5, 22, 31), st(5, 22, 31), st(5, 21, 30), st(1000, 1e6, 5)];
    await feed.poll();
    assert.deepEqual(r.shown.at(-1), { view: 5, committedHeight: 22, leaderRegion: "AMS" });
    // A poll whose vouched view is older (coordinators restarted, a partition) is not shown.
    now = ["error", st(2, 1, 1), st(2, 1, 1), "error", "error"];
    const before = r.shown.length;
    await feed.poll();
    assert.equal(r.shown.length, before);
    // Fewer than f + 1 answers: nothing shown.
    now = ["error", "error", "error", "error", st(9, 9, 9)];
    await feed.poll();
    assert.equal(r.shown.length, before);
  });

  it("a silent coordinator costs one status timeout, not a stalled poll", async () => {
    const now: Raw[] = ["silent", st(2, 5, 6), st(2, 5, 6), st(2, 5, 6), st(2, 5, 6)];
    const r = recorder();
    const feed = new ConsensusFeed(
      scripted(() => now),
      r.sink,
      "hotstuff_2chain",
    );
    const t0 = Date.now();
    await feed.poll();
    assert.ok(Date.now() - t0 < consensusStatusTimeoutMs + 2000);
    assert.equal(r.rounds.length, 4);
    assert.equal(feed.last[0], undefined);
    assert.equal(r.shown.at(-1)?.view, 2);
  });

  it("ignores malformed statuses", async () => {
    const now: Raw[] = [
      { view: -1, committedHeight: 1, roundsTotal: 1 },
      { view: "7", committedHeight: 1, roundsTotal: 1 },
      { view: 1.5, committedHeight: 1, roundsTotal: 1 },
      st(1, 1, 1),
      st(1, 1, 1),
    ];
    const r = recorder();
    await new ConsensusFeed(
      scripted(() => now),
      r.sink,
      "hotstuff_2chain",
    ).poll();
    assert.deepEqual(
      r.rounds.map((x) => x.region),
      ["AMS", "SYD"],
    );
  });
});
