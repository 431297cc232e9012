// Loads a trained model file (the model's safetensors checkpoint, src/model/checkpoint.ts) into the
// parts of the model one swarm process runs: the gateway's trunk, or a node's experts. The file is
// read and checked by the model's own loader (config, names and shapes) into a full in-process
// model first, then the needed tensors are copied over — simple and exact; it holds the whole
// model in memory once, which is fine for the local profile and should become a selective read
// for the production sizes.

import { invariant } from "../common/assert.ts";
import type { SwarmConfig } from "../config/schema.ts";
import { buildLocalModel } from "../model/build.ts";
import { loadModelInto, readModelFile } from "../model/checkpoint.ts";
import type { ExpertId } from "../model/expert.ts";
import type { LocalExpertHost } from "../model/local-expert-host.ts";
import type { MoeTransformer } from "../model/transformer.ts";

async function loadFull(cfg: SwarmConfig, path: string) {
  const full = await buildLocalModel(cfg, { backend: "js" });
  loadModelInto(readModelFile(path), full.model, full.host, path);
  return full;
}

/** Sets the trunk's parameters (embeddings, attention, norms, routers, head) from a model file. */
export async function loadTrunkWeights(
  cfg: SwarmConfig,
  trunk: MoeTransformer,
  path: string,
): Promise<void> {
  const full = await loadFull(cfg, path);
  for (const [name, p] of full.model.params) {
    const target = trunk.params.get(name);
    invariant(
      target !== undefined && target.data.length === p.data.length,
      () => `trunk tensor ${name}`,
    );
    target.data.set(p.data);
  }
  trunk.clearRoutingCaches();
  await full.host.close();
}

/** Sets the weights of the experts `ids` on `host` from a model file. */
export async function loadExpertWeights(
  cfg: SwarmConfig,
  host: LocalExpertHost,
  ids: readonly ExpertId[],
  path: string,
): Promise<void> {
  const full = await loadFull(cfg, path);
  for (const id of ids) {
    const p = full.host.params(id);
    host.setParams(id, {
      w1: Float32Array.from(p.w1),
      b1: Float32Array.from(p.b1),
      w2: Float32Array.from(p.w2),
      b2: Float32Array.from(p.b2),
    });
  }
  await full.host.close();
}
