// Property: whatever sequence of saves, deletes, retention GCs and crashes (injected at every
// crash point of the write and GC paths), every checkpoint that is live after a restart restores
// to exactly the bytes it was saved with. Seeded: a failure prints the seed and the operation log.

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import type { CheckpointStore, Shard } from "../../src/storage/checkpoint-store.ts";
import { SimulatedCrash } from "../../src/storage/faults.ts";
import type { TierName } from "../../src/storage/manifest.ts";
import { floatBytes, openTestStore, perturbed, tempDir } from "./fixtures/store.ts";

const hourMs = 3600_000;
const retentionMs: Record<TierName, number> = {
  hot: 24 * hourMs,
  warm: 7 * 24 * hourMs,
  cold: Number.POSITIVE_INFINITY,
};
const seeds = [1, 2, 3, 4, 5, 6];
const opsPerSeed = 28;

/** Content pool: a chain of perturbed weights (successive checkpoints), a frozen shard, metadata. */
function contentPool(): Shard[][] {
  const frozen = floatBytes(100, 1500);
  let w = floatBytes(101, 2500);
  const pool: Shard[][] = [];
  for (let v = 0; v < 6; v++) {
    pool.push([
      { name: "weights", bytes: w },
      { name: "frozen", bytes: frozen },
      { name: "meta.json", bytes: new TextEncoder().encode(`{"variant":${v}}`) },
    ]);
    w = perturbed(w, 200 + v, 0.0003);
  }
  return pool;
}

const cleanups: (() => void)[] = [];
after(() => {
  for (const c of cleanups) c();
});

describe("checkpoint GC under crashes (seeded property test)", () => {
  it("never loses a block of a live checkpoint", () => {
    const pool = contentPool();
    const pointsHit = new Set<string>();
    const crashedAt = new Set<string>();
    for (const seed of seeds) {
      const prng = new Prng(seed);
      const t = tempDir(`gcprop-${seed}`);
      cleanups.push(t.cleanup);
      let now = 10_000 * hourMs;
      let countdown = 0; // > 0: crash when it reaches 0
      const hook = (point: string) => {
        pointsHit.add(point);
        if (countdown > 0 && --countdown === 0) {
          crashedAt.add(point);
          throw new SimulatedCrash(point);
        }
      };
      const open = (): CheckpointStore =>
        openTestStore(t.dir, { clock: () => now, crash: hook, cacheBytesMax: 64 * 1024 });
      let store = open();
      // The model: what must restore, per tier and id, and when it was saved.
      const live = new Map<
        string,
        { tier: TierName; id: string; variant: number; savedAt: number }
      >();
      const log: string[] = [];
      const fail = (msg: string) => `seed ${seed}: ${msg}\n  ops: ${log.join("; ")}`;
      for (let op = 0; op < opsPerSeed; op++) {
        const r = prng.next();
        countdown = prng.next() < 0.35 ? 1 + prng.int(14) : 0;
        try {
          if (r < 0.5 || live.size === 0) {
            const tier: TierName = (["hot", "warm", "warm", "cold"] as const)[
              prng.int(4)
            ] as TierName;
            const variant = prng.int(pool.length);
            const id = `c${op}`;
            log.push(`save ${tier}/${id} v${variant}${countdown ? ` crash@${countdown}` : ""}`);
            store.save(tier, id, pool[variant] as Shard[]);
            live.set(`${tier}/${id}`, { tier, id, variant, savedAt: now });
          } else if (r < 0.7) {
            const keys = [...live.keys()];
            const key = keys[prng.int(keys.length)] as string;
            const entry = live.get(key);
            assert.ok(entry);
            log.push(`delete ${key}${countdown ? ` crash@${countdown}` : ""}`);
            store.delete(entry.tier, entry.id);
            live.delete(key);
          } else {
            now += prng.int(60) * hourMs;
            log.push(
              `gc +${Math.round((now / hourMs) % 1000)}h${countdown ? ` crash@${countdown}` : ""}`,
            );
            for (const rep of store.gc())
              for (const id of rep.expired) live.delete(`${rep.tier}/${id}`);
          }
          countdown = 0;
        } catch (err) {
          if (!(err instanceof SimulatedCrash)) throw new Error(fail(String(err)), { cause: err });
          log.push(`CRASH at ${err.point}`);
          countdown = 0;
          store = open(); // restart: nothing in memory survives
          // Reconcile with what is durably there: a crashed save may or may not have committed; a
          // crashed delete or GC may have removed manifests, but only deleted or expirable ones.
          const listed = new Set(store.list().map((m) => `${m.tier}/${m.id}`));
          const last = log.at(-2) ?? "";
          const saved = /^save (\w+)\/(\w+) v(\d+)/.exec(last);
          if (saved && listed.has(`${saved[1]}/${saved[2]}`)) {
            live.set(`${saved[1]}/${saved[2]}`, {
              tier: saved[1] as TierName,
              id: saved[2] as string,
              variant: Number(saved[3]),
              savedAt: now,
            });
          }
          for (const [key, e] of live) {
            if (listed.has(key)) continue;
            const deleting = last === `delete ${key}` || last.startsWith(`delete ${key} `);
            const newest = Math.max(
              ...[...live.values()].filter((x) => x.tier === e.tier).map((x) => x.savedAt),
            );
            const expirable =
              last.startsWith("gc") && e.savedAt + retentionMs[e.tier] < now && e.savedAt < newest;
            assert.ok(deleting || expirable, fail(`${key} vanished after ${err.point}`));
            live.delete(key);
          }
        }
        // Every live checkpoint restores exactly, read from disk by a fresh process.
        const checker = openTestStore(t.dir, { clock: () => now, cacheBytesMax: 0 });
        for (const e of live.values()) {
          let got: Shard[];
          try {
            got = checker.restore(e.tier, e.id);
          } catch (err) {
            assert.fail(fail(`${e.tier}/${e.id} does not restore: ${(err as Error).message}`));
          }
          const want = pool[e.variant] as Shard[];
          for (const s of want) {
            const g = got.find((x) => x.name === s.name);
            assert.ok(
              g && Buffer.from(g.bytes).equals(Buffer.from(s.bytes)),
              fail(`${e.tier}/${e.id}/${s.name} differs`),
            );
          }
        }
      }
      // A clean GC afterwards leaves a store that verifies without problems.
      countdown = 0;
      const final = openTestStore(t.dir, { clock: () => now });
      final.gc();
      for (const tier of ["hot", "warm", "cold"] as const) {
        assert.deepEqual(final.verify(tier).problems, [], fail(`verify ${tier}`));
      }
    }
    // The sequences exercised the interesting crash points.
    for (const p of [
      "save:before-manifest",
      "atomic:before-rename",
      "block:before-write",
      "gc:sweep-block",
      "gc:after-mark",
    ]) {
      assert.ok(pointsHit.has(p), `crash point ${p} never reached`);
    }
    assert.ok(crashedAt.size >= 4, `crashes injected at ${[...crashedAt].join(", ")}`);
  });

  it("scripted: a crash anywhere in a sweep never leaves a delta whose base is gone", () => {
    // A (whole blocks) and B (deltas against A) are both deleted; GC crashes after k sweeps, for
    // every k; then C re-saves B's content, deduplicating against whatever survived. C must restore.
    const pool = contentPool();
    let sweeps = 0;
    for (let k = 1; ; k++) {
      const t = tempDir(`sweep-${k}`);
      cleanups.push(t.cleanup);
      let countdown = 0;
      let crashed = false;
      const hook = (point: string) => {
        if (point === "gc:sweep-block" && countdown > 0 && --countdown === 0) {
          crashed = true;
          throw new SimulatedCrash(point);
        }
      };
      const store = openTestStore(t.dir, { crash: hook });
      store.save("warm", "A", pool[0] as Shard[]);
      const b = store.save("warm", "B", pool[1] as Shard[]);
      assert.ok(b.deltaChunks > 0, "B is stored as deltas against A");
      store.delete("warm", "A");
      store.delete("warm", "B");
      countdown = k;
      try {
        const [rep] = store.gc("warm");
        sweeps = rep?.sweptBlocks ?? 0;
      } catch (err) {
        if (!(err instanceof SimulatedCrash)) throw err;
      }
      const restarted = openTestStore(t.dir);
      restarted.save("warm", "C", pool[1] as Shard[]);
      const got = restarted.restore("warm", "C");
      for (const s of pool[1] as Shard[]) {
        assert.ok(
          Buffer.from(got.find((g) => g.name === s.name)?.bytes ?? []).equals(Buffer.from(s.bytes)),
          `crash after ${k} sweeps`,
        );
      }
      if (!crashed) break;
    }
    assert.ok(sweeps > 10, `${sweeps} blocks swept in the crash-free run`);
  });
});
