// Saving a model trained through the swarm: the trunk's parameters are in this process, the
// experts' on the nodes. Each expert's weights are fetched from one up-to-date replica (wire op
// getWeights) into an in-process LocalExpertHost, and the model's own checkpoint writer
// (src/model/checkpoint.ts) saves both as one safetensors file — the same format local training
// writes, so `moe-swarm generate` and `moe-swarm up --model` read it unchanged.

import type { SwarmConfig } from "../config/schema.ts";
import { buildExpertHost } from "../model/build.ts";
import { saveModel } from "../model/checkpoint.ts";
import type { MoeTransformer } from "../model/transformer.ts";
import type { RemoteExpertHost } from "./remote-expert-host.ts";

/** Writes trunk + remote experts to `path`; returns the file size in bytes. */
export async function saveSwarmModel(
  cfg: SwarmConfig,
  path: string,
  trunk: MoeTransformer,
  remote: RemoteExpertHost,
  extra: Record<string, string> = {},
): Promise<number> {
  const shadow = await buildExpertHost(cfg, { backend: "js" });
  try {
    const ids = trunk.expertIds();
    const weights = await Promise.all(ids.map((id) => remote.fetchExpertWeights(id)));
    ids.forEach((id, i) => {
      const w = weights[i];
      if (w) shadow.setParams(id, { w1: w.w1, b1: w.b1, w2: w.w2, b2: w.b2 });
    });
    return saveModel(path, trunk, shadow, { trained_with: "moe-swarm train --swarm", ...extra });
  } finally {
    await shadow.close();
  }
}
