// Training ↔ tiered checkpoint store (src/storage/checkpoint-store.ts). The trainer saves its full
// state (./training-state.ts) at `checkpoint_strategy.frequency` into the hot tier, and ages a
// subset into the slower tiers by the policy below; a run resumes from any tier by name or from
// the newest training checkpoint.
//
// Policy (why): the hot tier takes every checkpoint (fast restore after a crash; 24 h retention
// in the default config). Every `warmEvery`-th checkpoint (default 10) is copied hot → warm
// (zstd-9 with float deltas: a week of history at a fraction of the bytes); every `coldEvery`-th
// (default 10) hot → cold, only when an operator ML-KEM-768 public key is configured, because the
// cold tier is sealed to that key. The N-th checkpoint is counted from the step for step-based
// frequencies (so a resumed run keeps the same cadence) and per process for time-based ones.
// Copies go through `CheckpointStore.copy`, which re-reads and verifies the hot copy first. With a
// TierCopier (src/storage/tier-copier.ts) the copies and the retention GC after each checkpoint run
// on a worker thread: training waits only for the hot write (and, when the copy backlog is full,
// for the oldest copy); without one, copies run inline as before and no GC runs.

import type { SwarmConfig } from "../config/schema.ts";
import type { CheckpointStore, SaveReport } from "../storage/checkpoint-store.ts";
import { checkpointDue } from "../storage/from-config.ts";
import type { TierName } from "../storage/manifest.ts";
import type { TierCopier } from "../storage/tier-copier.ts";
import type { Trainer } from "./trainer.ts";
import {
  captureTrainingState,
  type ParsedTrainingState,
  parseTrainingState,
  type TrainingMeta,
  TrainingStateError,
  trainingShardName,
} from "./training-state.ts";

export type CheckpointFrequency = SwarmConfig["checkpoint_strategy"]["frequency"];

/** Every this-many-th training checkpoint is also copied to the warm tier (0 = never). */
export const warmEveryDefault = 10;
/** Every this-many-th training checkpoint is also sealed into the cold tier, when a key is given. */
export const coldEveryDefault = 10;

export interface TrainingCheckpointPolicy {
  readonly frequency: CheckpointFrequency;
  readonly warmEvery: number;
  readonly coldEvery: number;
  /** Whether the store can seal (an operator public key was configured). */
  readonly coldEnabled: boolean;
}

export interface TrainingCheckpointSaved {
  readonly id: string;
  readonly step: number;
  readonly hot: SaveReport;
  /** Slower tiers the checkpoint was also copied into (inline copies: no TierCopier). */
  readonly copies: { readonly tier: TierName; readonly report: SaveReport }[];
  /** Slower tiers a copy was queued for on the TierCopier (done in the background). */
  readonly queued: TierName[];
  /** Milliseconds training waited for a full copy backlog (0 when there was room). */
  readonly backlogWaitMs: number;
}

/** The checkpoint id of `runId` at `step`; zero-padded so ids sort by step. */
export function trainingCheckpointId(runId: string, step: number): string {
  return `${runId}-step-${String(step).padStart(8, "0")}`;
}

/** A run id from a wall-clock time: "train-20261125T131929123Z". */
export function newRunId(nowMs: number): string {
  return `train-${new Date(nowMs).toISOString().replace(/[-:.]/g, "")}`;
}

export class TrainingCheckpointer {
  readonly store: CheckpointStore;
  readonly policy: TrainingCheckpointPolicy;
  readonly #clock: () => number;
  #lastMs: number;
  #saves = 0;
  readonly copier: TierCopier | undefined;

  constructor(
    store: CheckpointStore,
    policy: TrainingCheckpointPolicy,
    clock = () => Date.now(),
    copier?: TierCopier,
  ) {
    for (const [k, v] of [
      ["warmEvery", policy.warmEvery],
      ["coldEvery", policy.coldEvery],
    ] as const)
      if (!Number.isInteger(v) || v < 0)
        throw new RangeError(`checkpoint policy ${k}: expected an integer ≥ 0; got ${v}`);
    this.store = store;
    this.policy = policy;
    this.#clock = clock;
    this.#lastMs = clock();
    this.copier = copier;
  }

  /** Whether a checkpoint is due after optimizer step `step`. */
  due(step: number): boolean {
    return checkpointDue(this.policy.frequency, step, (this.#clock() - this.#lastMs) / 1000);
  }

  /** Saves the trainer's state into hot, and into warm/cold when the policy says so. */
  async save(
    trainer: Trainer,
    meta: Omit<TrainingMeta, "format" | "step">,
  ): Promise<TrainingCheckpointSaved> {
    const shards = await captureTrainingState(trainer, meta);
    const step = trainer.step;
    const id = trainingCheckpointId(meta.runId, step);
    const copier = this.copier;
    const hot =
      copier === undefined
        ? await this.store.saveAsync("hot", id, shards, { step })
        : await copier.whileWriting(() => this.store.saveAsync("hot", id, shards, { step }));
    this.#lastMs = this.#clock();
    this.#saves++;
    const nth =
      this.policy.frequency.kind === "steps" ? step / this.policy.frequency.steps : this.#saves;
    const tiers = this.store.tierNames;
    const copies: { tier: TierName; report: SaveReport }[] = [];
    const every = (n: number) => n > 0 && Number.isInteger(nth) && nth % n === 0;
    const due: TierName[] = [];
    if (tiers.includes("warm") && every(this.policy.warmEvery)) due.push("warm");
    if (tiers.includes("cold") && this.policy.coldEnabled && every(this.policy.coldEvery))
      due.push("cold");
    let backlogWaitMs = 0;
    if (copier === undefined) {
      for (const tier of due) copies.push({ tier, report: this.store.copy("hot", tier, id) });
    } else {
      for (const tier of due) backlogWaitMs += (await copier.enqueueCopy("hot", tier, id)).waitedMs;
      await copier.enqueueGc();
    }
    return { id, step, hot, copies, queued: copier === undefined ? [] : due, backlogWaitMs };
  }
}

/** The newest checkpoint of `tier` that is a training checkpoint (has training.json). */
export function latestTrainingCheckpoint(store: CheckpointStore, tier: TierName): string {
  const training = store
    .list(tier)
    .filter((m) => m.shards.some((s) => s.name === trainingShardName));
  const last = training.at(-1);
  if (last === undefined)
    throw new TrainingStateError(
      `no training checkpoint in the ${tier} tier; train with --checkpoint-every <n> to make one, or name another --tier`,
    );
  return last.id;
}

/**
 * Reads training checkpoint `name` ("latest" = the newest) from `tier`: every block is checked
 * against its CID and every shard against its SHA-256 by the store, then the shards are parsed
 * and checked (./training-state.ts). Nothing is applied to any trainer.
 */
export function readTrainingCheckpoint(
  store: CheckpointStore,
  tier: TierName,
  name: string,
): { id: string; state: ParsedTrainingState } {
  const id = name === "latest" ? latestTrainingCheckpoint(store, tier) : name;
  const shards = store.restore(tier, id);
  return { id, state: parseTrainingState(shards, `checkpoint ${id} (${tier} tier)`) };
}
