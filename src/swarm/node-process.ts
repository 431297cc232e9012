// Runs one expert node as a process of the swarm (`moe-swarm node`): derives which experts it hosts
// from the placement plan of the config (region, index within the region), builds the model's
// LocalExpertHost for them (weights initialised from the model seed, so every replica of an expert
// starts identical), and serves them. The first line on stdout is a JSON "listening" event with
// the bound port, which `moe-swarm up` and the tests read.

import type { SwarmConfig } from "../config/schema.ts";
import { modelConfigFrom } from "../model/config.ts";
import { type ExpertBackend, LocalExpertHost } from "../model/local-expert-host.ts";
import { ExpertNode, type ExpertNodeInit } from "./expert-node.ts";
import { loadExpertWeights } from "./model-weights.ts";
import { nodeIdOf, planFromConfig } from "./placement.ts";
import { regionLinksFromConfig } from "./region-links.ts";

export interface NodeProcessInit {
  readonly region: string;
  readonly index: number;
  readonly host?: string;
  readonly port?: number;
  readonly backend?: ExpertBackend;
  readonly threads?: number;
  /** Regions of the plan (default: all configured regions). */
  readonly regions?: readonly string[];
  readonly nodesPerRegion?: number;
  /** Trained model file; without it the experts keep their seed initialisation. */
  readonly modelPath?: string;
  /** Per-request hook (issue #8's nodeObservability().onRequest: a span and metrics per frame). */
  readonly onRequest?: ExpertNodeInit["onRequest"];
}

export interface RunningNode {
  readonly node: ExpertNode;
  readonly nodeId: string;
  readonly host: string;
  readonly port: number;
  readonly experts: number;
  close(): Promise<void>;
}

export async function startNodeProcess(
  cfg: SwarmConfig,
  init: NodeProcessInit,
): Promise<RunningNode> {
  const regions = init.regions ?? cfg.regions.map((r) => r.code);
  if (!regions.includes(init.region))
    throw new RangeError(`--region: expected one of ${regions.join(", ")}; got "${init.region}"`);
  const nodesPerRegion = init.nodesPerRegion ?? cfg.swarm.nodes_per_region;
  if (!Number.isInteger(init.index) || init.index < 0 || init.index >= nodesPerRegion)
    throw new RangeError(
      `--index: expected 0..${nodesPerRegion - 1} (swarm.nodes_per_region = ${nodesPerRegion}); got ${init.index}`,
    );
  const nodeId = nodeIdOf(init.region, init.index);
  const plan = planFromConfig(cfg, regions, nodesPerRegion).find((p) => p.nodeId === nodeId);
  if (!plan) throw new RangeError(`node ${nodeId} is not in the placement plan`);
  const mc = modelConfigFrom(cfg);
  const host = await LocalExpertHost.create(mc, {
    ids: plan.experts,
    backend: init.backend ?? "auto",
    threads: init.threads ?? 1,
  });
  if (init.modelPath) await loadExpertWeights(cfg, host, plan.experts, init.modelPath);
  const node = new ExpertNode({
    nodeId,
    region: init.region,
    host,
    experts: plan.experts,
    dModel: mc.dModel,
    weights: host,
    links: regionLinksFromConfig(cfg),
    listenHost: init.host ?? cfg.swarm.host,
    port: init.port ?? 0,
    ...(init.onRequest ? { onRequest: init.onRequest } : {}),
  });
  const address = await node.listen();
  return {
    node,
    nodeId,
    host: address.host,
    port: address.port,
    experts: plan.experts.length,
    async close() {
      await node.close();
      await host.close();
    },
  };
}
