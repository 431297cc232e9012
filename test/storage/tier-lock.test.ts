import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { writeFileAtomic } from "../../src/storage/atomic.ts";
import { StorageError } from "../../src/storage/errors.ts";
import { listMarkers, writeMarker } from "../../src/storage/pending-copies.ts";
import {
  acquireGcLock,
  acquireWriterLease,
  holderAlive,
  type LockHolder,
  locksDir,
  processIdentity,
  selfHolder,
} from "../../src/storage/tier-lock.ts";
import { floatBytes, openTestStore, tempDir } from "./fixtures/store.ts";

const linux = existsSync("/proc/self/stat");
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
});

/** Another live process (a `sleep` that the test kills), as a lock holder. */
function liveOther(): { holder: LockHolder; kill: () => Promise<void> } {
  const child = spawn("sleep", ["30"], { stdio: "ignore" });
  children.push(child);
  const pid = child.pid as number;
  const identity = processIdentity(pid);
  return {
    holder: { pid, ...(identity !== undefined ? { identity } : {}), sinceMs: Date.now() },
    kill: () =>
      new Promise((resolve) => {
        child.once("exit", () => resolve());
        child.kill("SIGKILL");
      }),
  };
}

function writeHolder(path: string, h: LockHolder): void {
  writeFileAtomic(path, new TextEncoder().encode(JSON.stringify(h)));
}

describe("tier locks (GC and writes across processes; liveness by pid and start time)", () => {
  it("a holder is live only while its pid has the same start time: a reused pid is not", {
    skip: !linux && "needs /proc",
  }, async () => {
    const me = selfHolder();
    assert.ok(me.identity !== undefined && /\/\d+$/.test(me.identity), String(me.identity));
    assert.equal(holderAlive(me), true);
    // Our own pid with another start time: what `kill -0` would call alive (a reused pid).
    assert.equal(holderAlive({ pid: process.pid, identity: `${me.identity}9` }), false);
    const other = liveOther();
    assert.equal(holderAlive(other.holder), true);
    await other.kill();
    assert.equal(holderAlive(other.holder), false, "a dead process");
    const done = spawnSync("true");
    assert.equal(holderAlive({ pid: done.pid as number, identity: "x/1" }), false);
  });

  it("GC skips its sweep while another process holds a writer lease, and sweeps once it is gone", async () => {
    const { dir, cleanup } = tempDir("lock-gc");
    try {
      const store = openTestStore(dir);
      store.save("hot", "a", [{ name: "w", bytes: floatBytes(1, 4000) }]);
      store.save("hot", "b", [{ name: "w", bytes: floatBytes(2, 4000) }]);
      store.delete("hot", "a"); // a's blocks are garbage now
      const writer = liveOther();
      const lease = join(locksDir(join(dir, "hot")), `writer-${writer.holder.pid}-1-0.json`);
      writeHolder(lease, writer.holder);
      const [busy] = store.gc("hot");
      assert.equal(busy?.sweepSkipped, true);
      assert.equal(busy?.sweptBlocks, 0);
      assert.match(
        busy?.sweepSkippedBy ?? "",
        new RegExp(`save into this tier in process ${writer.holder.pid}`),
      );
      await writer.kill(); // crashed mid-save: its lease is stale
      const [swept] = store.gc("hot");
      assert.equal(swept?.sweepSkipped, false);
      assert.ok((swept?.sweptBlocks ?? 0) > 0, "a's blocks swept");
      assert.equal(existsSync(lease), false, "the stale lease is removed");
      assert.deepEqual(
        store.restore("hot", "b").map((s) => s.name),
        ["w"],
        "the live checkpoint is intact",
      );
      assert.deepEqual(readdirSync(locksDir(join(dir, "hot"))), [], "gc.lock released");
    } finally {
      cleanup();
    }
  });

  it("a writer waits for a live GC of its tier (then a clear error); a stale gc.lock is taken over", async () => {
    const { dir, cleanup } = tempDir("lock-write");
    try {
      const tierDir = join(dir, "warm");
      const gc = liveOther();
      writeHolder(join(locksDir(tierDir), "gc.lock"), gc.holder);
      assert.deepEqual(acquireGcLock(tierDir).heldBy?.pid, gc.holder.pid, "one GC at a time");
      const t0 = Date.now();
      assert.throws(
        () => acquireWriterLease(tierDir, "warm", 0.2),
        (err: unknown) =>
          err instanceof StorageError &&
          err.code === "busy" &&
          err.message.includes(`gc of the warm tier is running in process ${gc.holder.pid}`),
      );
      assert.ok(Date.now() - t0 >= 150, "it waited before giving up");
      assert.deepEqual(
        readdirSync(locksDir(tierDir)).filter((f) => f.startsWith("writer-")),
        [],
        "no lease left behind",
      );
      await gc.kill();
      const lease = acquireWriterLease(tierDir, "warm", 0.2); // the GC died: its lock is stale
      lease.release();
      const lock = acquireGcLock(tierDir);
      assert.equal(lock.heldBy, undefined, "a stale gc.lock is taken over");
      if (lock.heldBy === undefined) lock.release();
      assert.deepEqual(readdirSync(locksDir(tierDir)), []);
      // Saves through the store take and release a lease.
      const store = openTestStore(dir);
      store.save("warm", "c", [{ name: "w", bytes: floatBytes(3, 2000) }]);
      assert.deepEqual(readdirSync(locksDir(tierDir)), []);
    } finally {
      cleanup();
    }
  });

  it("a copy marker whose pid now belongs to another process is listed as interrupted", {
    skip: !linux && "needs /proc",
  }, () => {
    const { dir, cleanup } = tempDir("lock-marker");
    try {
      const me = selfHolder();
      const base = { from: "hot", to: "warm", pid: process.pid, queuedAtMs: 1 } as const;
      writeMarker(dir, { ...base, id: "live", state: "copying", identity: me.identity as string });
      writeMarker(dir, { ...base, id: "reused", state: "copying", identity: `${me.identity}9` });
      const states = Object.fromEntries(listMarkers(dir, "warm").map((m) => [m.id, m.state]));
      assert.deepEqual(states, { live: "copying", reused: "interrupted" });
    } finally {
      cleanup();
    }
  });
});
