// Background tier copies and GC for training: the hot write stays on the training thread (it is
// what a crash-restart needs), while copies into the slower tiers (zstd-9 with float deltas and
// range-coded planes; brotli-11 and ML-KEM-768 / AES-256-GCM sealing) and the retention GC run on a
// worker thread (tier-copy-worker.ts), so training does not wait for them. Measured before this:
// a cold copy stopped training for 10–16 s at every 10th checkpoint.
//
// Guarantees:
// - Honest listing: a copy is marked queued (pending-copies.ts) before it is handed over, copying
//   while it runs, and the marker goes only after the copy's manifest is written; a crash leaves
//   an "interrupted" marker and unlisted blocks, never a half-written listed checkpoint.
// - Bounded backlog: at most `backlogMax` jobs wait or run; one more makes `enqueueCopy` wait for
//   the oldest to finish (backpressure; the wait is reported), so a slow disk cannot grow memory
//   or markers without bound.
// - GC safety: jobs run one at a time on the worker, so GC never overlaps a copy; a GC of a tier
//   while the training thread writes into it could sweep a block the new checkpoint deduplicates
//   against, so writes and GC exclude each other through a lock word in shared memory (Atomics):
//   the training thread waits only while a GC is actually running, never for a copy. This lock
//   covers one process; across processes (`checkpoint gc` while training writes) the writers'
//   leases and the tier's gc.lock exclude them (tier-lock.ts).

import { Worker } from "node:worker_threads";
import { invariant } from "../common/assert.ts";
import type { CheckpointStoreSpec, GcReport } from "./checkpoint-store.ts";
import { StorageError } from "./errors.ts";
import type { TierName } from "./manifest.ts";
import { type PendingMarker, writeMarker } from "./pending-copies.ts";
import { selfHolder } from "./tier-lock.ts";

/** Lock word states (Int32 in a SharedArrayBuffer). */
export const lockFree = 0;
export const lockWrite = 1;
export const lockGc = 2;
/** How long one wait on the lock word lasts before the state is checked again. */
export const lockWaitMs = 20;
/** Jobs (copies and GCs) that may be queued or running at once, by default. */
export const copyBacklogMaxDefault = 4;

export interface CopierWorkerData {
  readonly init: CheckpointStoreSpec;
  readonly lock: SharedArrayBuffer;
}

export type CopierJob =
  | {
      readonly seq: number;
      readonly kind: "copy";
      readonly from: TierName;
      readonly to: TierName;
      readonly marker: PendingMarker;
    }
  | { readonly seq: number; readonly kind: "gc" };

export type CopierResult =
  | {
      readonly seq: number;
      readonly ok: true;
      readonly kind: "copy";
      readonly to: TierName;
      readonly id: string;
      readonly storedBytes: number;
      readonly rawBytes: number;
      readonly seconds: number;
    }
  | { readonly seq: number; readonly ok: true; readonly kind: "gc"; readonly reports: GcReport[] }
  | {
      readonly seq: number;
      readonly ok: false;
      readonly message: string;
      readonly storageError: boolean;
    };

export interface TierCopierOptions {
  readonly backlogMax?: number;
  /** Called on the training thread for every finished job (log it; it must not throw). */
  readonly onResult?: (result: CopierResult, job: CopierJob) => void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class TierCopier {
  readonly #worker: Worker;
  readonly #lock: Int32Array;
  readonly #spec: CheckpointStoreSpec;
  readonly #backlogMax: number;
  readonly #onResult: TierCopierOptions["onResult"];
  readonly #jobs = new Map<number, { job: CopierJob; done: () => void }>();
  readonly #results: CopierResult[] = [];
  #seq = 0;
  #gcQueued = false;
  #failure: Error | undefined;
  #waiters: (() => void)[] = [];

  private constructor(
    worker: Worker,
    lock: Int32Array,
    spec: CheckpointStoreSpec,
    o: TierCopierOptions,
  ) {
    this.#worker = worker;
    this.#lock = lock;
    this.#spec = spec;
    this.#backlogMax = o.backlogMax ?? copyBacklogMaxDefault;
    this.#onResult = o.onResult;
    invariant(Number.isInteger(this.#backlogMax) && this.#backlogMax >= 1, "backlogMax ≥ 1");
  }

  /** Starts the worker over the store described by `spec` (CheckpointStore.spec). */
  static async start(
    spec: CheckpointStoreSpec,
    options: TierCopierOptions = {},
  ): Promise<TierCopier> {
    const lock = new SharedArrayBuffer(4);
    // The worker is TypeScript: register tsx's loader in it before importing it (a worker does
    // not inherit the parent's --import hooks on Node 20).
    const tsx = import.meta.resolve("tsx/esm/api");
    const entry = new URL("./tier-copy-worker.ts", import.meta.url).href;
    const boot =
      `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); })` +
      `.catch((e) => { require("node:worker_threads").parentPort.postMessage({ bootFailed: String((e && e.stack) || e) }); });`;
    const data: CopierWorkerData = { init: spec, lock };
    const worker = new Worker(boot, { eval: true, workerData: data });
    const copier = new TierCopier(worker, new Int32Array(lock), spec, options);
    await new Promise<void>((resolve, reject) => {
      const onMessage = (m: { ready?: boolean; bootFailed?: string }) => {
        worker.off("error", reject);
        if (m.ready === true) resolve();
        else
          reject(
            new StorageError("background", `the tier-copy worker did not start: ${m.bootFailed}`),
          );
      };
      worker.once("message", onMessage);
      worker.once("error", reject);
    });
    worker.on("message", (m: CopierResult) => copier.#finished(m));
    worker.on("error", (err) => copier.#fail(err));
    worker.on("exit", (code) => {
      if (copier.#jobs.size > 0) copier.#fail(new Error(`tier-copy worker exited (${code})`));
    });
    return copier;
  }

  /** Jobs queued or running. */
  get backlog(): number {
    return this.#jobs.size;
  }

  /** Every finished job's result, oldest first. */
  get results(): readonly CopierResult[] {
    return this.#results;
  }

  /**
   * Runs `write` (a save into a tier on this thread) while no GC runs; waits only while a GC
   * holds the lock.
   */
  async whileWriting<T>(write: () => Promise<T> | T): Promise<T> {
    while (Atomics.compareExchange(this.#lock, 0, lockFree, lockWrite) !== lockFree)
      await sleep(lockWaitMs);
    try {
      return await write();
    } finally {
      Atomics.store(this.#lock, 0, lockFree);
      Atomics.notify(this.#lock, 0);
    }
  }

  /**
   * Queues a copy of checkpoint `id` from → to. The copy is listed as pending at once. Resolves
   * when the job is accepted: at once, or after the oldest job finished when the backlog is full
   * (`waitedMs` says how long).
   */
  async enqueueCopy(from: TierName, to: TierName, id: string): Promise<{ waitedMs: number }> {
    const t0 = performance.now();
    await this.#room();
    const tierDir = this.#spec.tiers.find((t) => t.name === to)?.dir;
    if (tierDir === undefined)
      throw new StorageError("bad-input", `tier ${to} is not configured: cannot copy into it`);
    const self = selfHolder();
    const marker: PendingMarker = {
      id,
      from,
      to,
      pid: process.pid,
      ...(self.identity !== undefined ? { identity: self.identity } : {}),
      queuedAtMs: Date.now(),
      state: "queued",
    };
    writeMarker(tierDir, marker);
    this.#post({ seq: ++this.#seq, kind: "copy", from, to, marker });
    return { waitedMs: performance.now() - t0 };
  }

  /** Queues retention GC of every tier, unless one is already queued. */
  async enqueueGc(): Promise<void> {
    if (this.#gcQueued) return;
    await this.#room();
    this.#gcQueued = true;
    this.#post({ seq: ++this.#seq, kind: "gc" });
  }

  /** Waits until every queued job has finished. */
  async drain(): Promise<void> {
    while (this.#jobs.size > 0) await this.#next();
    if (this.#failure !== undefined) throw this.#failure;
  }

  /** Drains, then stops the worker. */
  async close(): Promise<void> {
    try {
      await this.drain();
    } finally {
      await this.#worker.terminate();
    }
  }

  async #room(): Promise<void> {
    if (this.#failure !== undefined) throw this.#failure;
    while (this.#jobs.size >= this.#backlogMax) await this.#next();
    if (this.#failure !== undefined) throw this.#failure;
  }

  #next(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  #post(job: CopierJob): void {
    if (this.#failure !== undefined) throw this.#failure;
    this.#jobs.set(job.seq, { job, done: () => {} });
    this.#worker.postMessage(job);
  }

  #finished(result: CopierResult): void {
    const entry = this.#jobs.get(result.seq);
    if (entry === undefined) return;
    this.#jobs.delete(result.seq);
    if (entry.job.kind === "gc") this.#gcQueued = false;
    this.#results.push(result);
    this.#onResult?.(result, entry.job);
    this.#wake();
  }

  #fail(err: Error): void {
    this.#failure ??= new StorageError("background", `the tier-copy worker failed: ${err.message}`);
    this.#jobs.clear();
    this.#wake();
  }
}
