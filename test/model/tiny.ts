// A tiny model config for tests: the local profile's three tiers and modes, shrunk.
import { loadConfig } from "../../src/config/load.ts";
import { type ModelConfig, modelConfigFrom } from "../../src/model/config.ts";

/** The local profile's three tiers and modes, shrunk: d=16, context 32, experts 4/2/1. */
export function tinyConfig(): ModelConfig {
  const base = modelConfigFrom(loadConfig().config);
  return {
    ...base,
    dModel: 16,
    nHeads: 2,
    context: 32,
    tiers: base.tiers.map((t, i) => ({
      ...t,
      experts: [4, 2, 1][i] as number,
      expertHidden: 32,
      topK: Math.min(t.topK, [4, 2, 1][i] as number),
    })),
  };
}
