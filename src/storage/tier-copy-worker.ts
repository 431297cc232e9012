// The worker thread of tier-copier.ts: it opens its own CheckpointStore over the same directories
// and runs copy and GC jobs one at a time, in the order they come, so that zstd-9, brotli-11 and
// ML-KEM/AES-GCM sealing of a cold copy never run on the training thread. Jobs never overlap, so a
// GC here never sweeps blocks of a copy in flight; a GC waits on the shared write lock while the
// training thread is writing a hot checkpoint (tier-copier.ts explains the lock).

import { parentPort, workerData } from "node:worker_threads";
import { invariant } from "../common/assert.ts";
import { CheckpointStore } from "./checkpoint-store.ts";
import { StorageError } from "./errors.ts";
import { removeMarker, writeMarker } from "./pending-copies.ts";
import type { CopierJob, CopierResult, CopierWorkerData } from "./tier-copier.ts";
import { lockFree, lockGc, lockWaitMs } from "./tier-copier.ts";

const data = workerData as CopierWorkerData;
const port = parentPort;
invariant(port !== null, "tier-copy-worker runs as a worker thread");
const store = new CheckpointStore(data.init);
const lock = new Int32Array(data.lock);

function run(job: CopierJob): CopierResult {
  if (job.kind === "copy") {
    const dir = store.tier(job.to).init.dir;
    writeMarker(dir, { ...job.marker, state: "copying" });
    try {
      const exists = store.list(job.to).some((m) => m.id === job.marker.id);
      const t0 = performance.now();
      const report = exists ? undefined : store.copy(job.from, job.to, job.marker.id);
      removeMarker(dir, job.marker.id);
      return {
        seq: job.seq,
        ok: true,
        kind: "copy",
        to: job.to,
        id: job.marker.id,
        storedBytes: report?.storedBytes ?? 0,
        rawBytes: report?.rawBytes ?? 0,
        seconds: (performance.now() - t0) / 1000,
      };
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      writeMarker(dir, { ...job.marker, state: "failed", error: message.slice(0, 1000) });
      throw err;
    }
  }
  // GC: wait until the training thread is not writing a checkpoint, then hold the lock.
  while (Atomics.compareExchange(lock, 0, lockFree, lockGc) !== lockFree)
    Atomics.wait(lock, 0, Atomics.load(lock, 0), lockWaitMs);
  try {
    const reports = store.gc();
    return { seq: job.seq, ok: true, kind: "gc", reports };
  } finally {
    Atomics.store(lock, 0, lockFree);
    Atomics.notify(lock, 0);
  }
}

port.on("message", (job: CopierJob) => {
  let result: CopierResult;
  try {
    result = run(job);
  } catch (err) {
    result = {
      seq: job.seq,
      ok: false,
      message: err instanceof Error ? err.message : String(err),
      storageError: err instanceof StorageError,
    };
  }
  port.postMessage(result);
});
port.postMessage({ ready: true });
