// The model's shape, derived once from the validated SwarmConfig (src/config): vocabulary, widths,
// the three tiers of MoE blocks with their expert counts and activation modes, and the routing
// knobs. Everything that builds a trunk or an expert — locally or on a swarm node — starts here,
// so that every process derives the same shapes and the same initial weights from one config.

import type { SwarmConfig } from "../config/schema.ts";
import type { ExpertId } from "./expert.ts";

/** Byte-level vocabulary: 256 byte values, then the special tokens. */
export const byteVocab = 256;
export const bosToken = 256;
export const eosToken = 257;
export const vocabSize = 258;

export type Activation = "parallel" | "selective" | "sequential";

export interface TierConfig {
  readonly name: string;
  readonly experts: number;
  readonly activation: Activation;
  readonly blocks: number;
  readonly expertHidden: number;
  /** parallel: experts per token; selective / sequential: the max-k bound. */
  readonly topK: number;
  readonly capacityFactor: number;
}

export interface RoutingConfig {
  readonly collapseThreshold: number;
  readonly loadBalanceWeight: number;
  readonly zLossWeight: number;
  readonly cacheEntries: number;
  readonly cacheBits: number;
}

export interface ModelConfig {
  readonly vocab: number;
  readonly dModel: number;
  readonly nHeads: number;
  readonly context: number;
  readonly seed: number;
  readonly tiers: readonly TierConfig[];
  readonly routing: RoutingConfig;
}

export function modelConfigFrom(cfg: SwarmConfig): ModelConfig {
  const r = cfg.expert_topology.routing_strategy;
  return {
    vocab: vocabSize,
    dModel: cfg.model.d_model,
    nHeads: cfg.model.n_heads,
    context: cfg.model.context_length,
    seed: cfg.model.seed,
    tiers: cfg.expert_topology.hierarchical_layers.map((l) => ({
      name: l.name,
      experts: l.experts_per_region,
      activation: l.activation,
      blocks: l.blocks,
      expertHidden: l.expert_hidden,
      topK: l.top_k,
      capacityFactor: l.capacity_factor,
    })),
    routing: {
      collapseThreshold: r.collapse_threshold,
      loadBalanceWeight: r.load_balance_loss_weight,
      zLossWeight: r.z_loss_weight,
      cacheEntries: r.superposition_cache.entries,
      cacheBits: r.superposition_cache.quantization_bits,
    },
  };
}

/** The MoE block at global index `layer` (0-based over all tiers) and its tier. */
export interface MoeLayerInfo {
  readonly layer: number;
  readonly tier: TierConfig;
  readonly tierIndex: number;
}

export function moeLayers(mc: ModelConfig): MoeLayerInfo[] {
  const out: MoeLayerInfo[] = [];
  mc.tiers.forEach((tier, tierIndex) => {
    for (let b = 0; b < tier.blocks; b++) out.push({ layer: out.length, tier, tierIndex });
  });
  return out;
}

/** Every expert of the model, layer by layer. */
export function allExpertIds(mc: ModelConfig): ExpertId[] {
  const ids: ExpertId[] = [];
  for (const { layer, tier } of moeLayers(mc))
    for (let e = 0; e < tier.experts; e++) ids.push({ layer, expert: e });
  return ids;
}

/** Width of expert `id`'s hidden layer; throws RangeError for an id outside the model. */
export function expertHiddenOf(mc: ModelConfig, id: ExpertId): number {
  const info = moeLayers(mc)[id.layer];
  if (
    info === undefined ||
    !Number.isInteger(id.expert) ||
    id.expert < 0 ||
    id.expert >= info.tier.experts
  )
    throw new RangeError(`expert L${id.layer}.E${id.expert} is not in this model`);
  return info.tier.expertHidden;
}

export function totalBlocks(mc: ModelConfig): number {
  return mc.tiers.reduce((s, t) => s + t.blocks, 0);
}
