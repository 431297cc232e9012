// The entry points the rest of the system uses to get a model from a config. The swarm (issue #5)
// builds a trunk against any ExpertHost (e.g. its gateway's remote-expert dispatcher) with
// `buildTrunk`, and each expert node builds the experts it hosts with `buildExpertHost(cfg,
// { ids })`; both derive shapes and initial weights from the same SwarmConfig and seed, so a
// trunk and its remote experts match a single-process model exactly.

import type { SwarmConfig } from "../config/schema.ts";
import type { DType } from "../tensor/tensor.ts";
import { type ModelConfig, modelConfigFrom } from "./config.ts";
import type { ExpertHost } from "./expert.ts";
import { LocalExpertHost, type LocalExpertHostInit } from "./local-expert-host.ts";
import { MoeTransformer } from "./transformer.ts";

export function buildTrunk(
  cfg: SwarmConfig | ModelConfig,
  host: ExpertHost,
  dtype: DType = "float32",
): MoeTransformer {
  return new MoeTransformer(toModelConfig(cfg), host, dtype);
}

export function buildExpertHost(
  cfg: SwarmConfig | ModelConfig,
  init: LocalExpertHostInit = {},
): Promise<LocalExpertHost> {
  return LocalExpertHost.create(toModelConfig(cfg), init);
}

/** Trunk and all experts in this process. */
export async function buildLocalModel(
  cfg: SwarmConfig | ModelConfig,
  init: LocalExpertHostInit = {},
): Promise<{ model: MoeTransformer; host: LocalExpertHost }> {
  const host = await buildExpertHost(cfg, init);
  return { model: buildTrunk(cfg, host, init.dtype), host };
}

function toModelConfig(cfg: SwarmConfig | ModelConfig): ModelConfig {
  return "expert_topology" in cfg ? modelConfigFrom(cfg) : cfg;
}
