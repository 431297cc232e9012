import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { after, describe, it } from "node:test";
import { main } from "../../src/cli/main.ts";
import { cidFor, rawCode } from "../../src/storage/cid.ts";
import { chunkSizesFromAverage } from "../../src/storage/fastcdc.ts";
import { listMarkers, writeMarker } from "../../src/storage/pending-copies.ts";
import { TierCopier } from "../../src/storage/tier-copier.ts";
import { floatBytes, openTestStore, tempDir } from "./fixtures/store.ts";

const t = tempDir("tier-copier");
after(t.cleanup);

async function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await main(["node", "moe-swarm", ...args], {
    out: (s) => (out += s),
    err: (s) => (err += s),
  });
  return { code, out, err };
}

/** A pid that certainly belonged to a process that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", "0"]);
  assert.ok(r.pid !== undefined && r.pid > 0);
  return r.pid;
}

const tick = () => new Promise((r) => setImmediate(r));

describe("background tier copies (training waits only for the hot write)", () => {
  it("training steps run while a cold copy (brotli-11 + sealing) runs; list shows it pending, then done", async () => {
    const dir = `${t.dir}/proceeds`;
    const store = openTestStore(dir, { chunkSizes: chunkSizesFromAverage(64 * 1024) });
    const copier = await TierCopier.start(store.spec);
    try {
      // 256 KiB of floats: brotli-11 takes long enough (a second or so) to watch the copy run.
      const shard = { name: "w", bytes: floatBytes(41, 64 * 1024) };
      await copier.whileWriting(() => store.saveAsync("hot", "ck-1", [shard], { step: 1 }));
      await copier.enqueueCopy("hot", "cold", "ck-1");
      const first = store.pendingCopies("cold");
      assert.equal(first.length, 1);
      assert.ok(["queued", "copying"].includes(first[0]?.state ?? ""), first[0]?.state);
      const listed = await cli("checkpoint", "list", "--store", dir, "--tier", "cold");
      assert.equal(listed.code, 0, listed.err);
      assert.match(
        listed.out,
        /cold\s+ck-1\s+copy from hot (queued|copying) since .*not restorable/,
      );
      // "Training": short steps on this thread; count those done while the copy was running.
      let stepsWhileCopying = 0;
      let sum = 0;
      while (copier.backlog > 0) {
        for (let i = 0; i < 20_000; i++) sum += Math.sqrt(i);
        if (store.pendingCopies("cold")[0]?.state === "copying") stepsWhileCopying++;
        await tick();
      }
      assert.ok(sum > 0);
      assert.ok(stepsWhileCopying >= 3, `${stepsWhileCopying} steps ran during the copy`);
      await copier.drain();
      assert.deepEqual(store.pendingCopies(), [], "marker removed once the copy is listed");
      assert.deepEqual(
        store.list("cold").map((m) => m.id),
        ["ck-1"],
      );
      const back = store.restore("cold", "ck-1");
      assert.ok(Buffer.from(back[0]?.bytes ?? []).equals(Buffer.from(shard.bytes)));
      const done = copier.results.find((r) => r.ok && r.kind === "copy");
      assert.ok(done?.ok && done.kind === "copy" && done.storedBytes > 0);
    } finally {
      await copier.close();
    }
  });

  it("a copy interrupted mid-way is never listed; list says interrupted; GC sweeps its blocks", async () => {
    const dir = `${t.dir}/interrupted`;
    const store = openTestStore(dir);
    store.save("hot", "ck-2", [{ name: "w", bytes: floatBytes(42, 4000) }]);
    // What a crash mid-copy leaves in the warm tier: some blocks, no manifest, and the marker.
    const orphan = floatBytes(43, 300);
    store.blockStore("warm").put(cidFor(rawCode, orphan), orphan, { phase: 0 });
    const tierDir = store.tier("warm").init.dir;
    writeMarker(tierDir, {
      id: "ck-2",
      from: "hot",
      to: "warm",
      pid: deadPid(),
      queuedAtMs: Date.now(),
      state: "copying",
    });
    assert.deepEqual(store.list("warm"), []);
    assert.equal(store.pendingCopies("warm")[0]?.state, "interrupted");
    const listed = await cli("checkpoint", "list", "--store", dir, "--tier", "warm");
    assert.match(listed.out, /warm\s+ck-2\s+copy from hot interrupted .*checkpoint gc/);
    const [gc] = store.gc("warm");
    assert.deepEqual(gc?.staleCopies, ["ck-2"]);
    assert.equal(gc?.sweptBlocks, 1, "the half copy's block is swept");
    assert.deepEqual(listMarkers(tierDir, "warm"), []);
  });

  it("GC keeps a checkpoint a pending copy reads from, and does not sweep a tier being copied into", () => {
    let now = 1_000_000;
    const dir = `${t.dir}/gc-pending`;
    const store = openTestStore(dir, { clock: () => now });
    store.save("hot", "old", [{ name: "w", bytes: floatBytes(44, 3000) }]);
    now += 1000;
    store.save("hot", "new", [{ name: "w", bytes: floatBytes(45, 3000) }]);
    now += 48 * 3600 * 1000; // both past the hot tier's 24 h
    const marker = {
      id: "old",
      from: "hot" as const,
      to: "warm" as const,
      pid: process.pid,
      queuedAtMs: now,
      state: "copying" as const,
    };
    writeMarker(store.tier("warm").init.dir, marker);
    const orphan = floatBytes(46, 300);
    store.blockStore("warm").put(cidFor(rawCode, orphan), orphan, { phase: 0 });
    const [hot, warm] = store.gc();
    assert.deepEqual(hot?.keptForCopies, ["old"]);
    assert.deepEqual(hot?.expired, []);
    assert.equal(warm?.sweepSkipped, true);
    assert.equal(warm?.sweptBlocks, 0);
    // Once the copy is gone, the same GC expires and sweeps.
    writeMarker(store.tier("warm").init.dir, { ...marker, state: "failed", error: "disk full" });
    const [hot2, warm2] = store.gc();
    assert.deepEqual(hot2?.expired, ["old"]);
    assert.equal(warm2?.sweptBlocks, 1);
    assert.deepEqual(warm2?.staleCopies, ["old"]);
  });

  it("the backlog is bounded: one copy more than backlogMax waits for the oldest", async () => {
    const dir = `${t.dir}/backlog`;
    const store = openTestStore(dir, { chunkSizes: chunkSizesFromAverage(16 * 1024) });
    const copier = await TierCopier.start(store.spec, { backlogMax: 1 });
    try {
      for (const id of ["b-1", "b-2"])
        store.save("hot", id, [
          { name: "w", bytes: floatBytes(id.length + id.charCodeAt(2), 40_000) },
        ]);
      await copier.enqueueCopy("hot", "warm", "b-1");
      assert.equal(copier.backlog, 1);
      assert.equal(copier.results.length, 0);
      await copier.enqueueCopy("hot", "warm", "b-2");
      assert.equal(copier.results.length, 1, "accepted only after the first copy finished");
      assert.equal(copier.backlog, 1);
      await copier.drain();
      assert.deepEqual(
        store.list("warm").map((m) => m.id),
        ["b-1", "b-2"],
      );
    } finally {
      await copier.close();
    }
  });
});
