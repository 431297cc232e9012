// Builds a CheckpointStore from the validated `checkpoint_strategy` block: one tier per level
// (compression, sealing, retention from the config; the blocks under the level's `path`, or
// `<storeDir>/<name>` when it has none) and FastCDC sizes from `deduplication.chunk_size`.

import { isAbsolute, join } from "node:path";
import type { SwarmConfig } from "../config/schema.ts";
import type { Compression } from "./block-record.ts";
import { CheckpointStore, type CheckpointStoreInit, type TierInit } from "./checkpoint-store.ts";
import { chunkSizesFromAverage } from "./fastcdc.ts";

const compressionOf: Record<"none" | "zstd_level_9" | "brotli_level_11", Compression> = {
  none: "none",
  zstd_level_9: "zstd",
  brotli_level_11: "brotli",
};

export function tiersFromConfig(
  strategy: SwarmConfig["checkpoint_strategy"],
  storeDir: string,
): TierInit[] {
  return strategy.levels.map((level) => ({
    name: level.name,
    dir:
      level.path === undefined
        ? join(storeDir, level.name)
        : isAbsolute(level.path)
          ? level.path
          : join(storeDir, level.path),
    compression: compressionOf[level.compression],
    sealed: level.encryption === "homomorphic_seal",
    retentionSeconds: level.retention.seconds,
  }));
}

/**
 * Whether training should checkpoint now under `checkpoint_strategy.frequency`: every N steps
 * ("every_1000_steps"), or once `secondsSinceLast` reaches the period ("30m").
 */
export function checkpointDue(
  frequency: SwarmConfig["checkpoint_strategy"]["frequency"],
  step: number,
  secondsSinceLast: number,
): boolean {
  return frequency.kind === "steps"
    ? step > 0 && step % frequency.steps === 0
    : secondsSinceLast >= frequency.seconds;
}

export function storeFromConfig(
  config: SwarmConfig,
  storeDir: string,
  extra: Omit<CheckpointStoreInit, "tiers" | "chunkSizes" | "similarityThreshold"> = {},
): CheckpointStore {
  const dedup = config.checkpoint_strategy.deduplication;
  return new CheckpointStore({
    ...extra,
    tiers: tiersFromConfig(config.checkpoint_strategy, storeDir),
    chunkSizes: chunkSizesFromAverage(dedup.chunk_size.bytes),
    similarityThreshold: dedup.similarity_threshold,
  });
}
