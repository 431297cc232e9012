// Distributed training with remote experts (`moe-swarm train --swarm`): starts the expert nodes as
// child processes and returns a RemoteExpertHost over them. The caller builds the model's trunk on
// it (`buildTrunk(cfg, swarm.host)`) and trains with the model's Trainer unchanged: forward,
// backward (gradients accumulate on every replica of an expert) and the AdamW update of the experts
// run on the nodes, with the same step, learning rate and clip scale as local training — so the
// loss curve matches local training for the same seed within float tolerance (test/swarm/train).

import type { SwarmConfig } from "../config/schema.ts";
import { type ChildNode, spawnPlan, stopChild } from "./child-nodes.ts";
import type { DispatchObserver } from "./dispatch-observer.ts";
import { planFromConfig, plannedEntries, StaticPlacement } from "./placement.ts";
import { regionLinksFromConfig } from "./region-links.ts";
import { RemoteExpertHost } from "./remote-expert-host.ts";

export interface TrainingSwarmInit {
  /** Config file for the children (the parent's `--config`); undefined = built-in profile. */
  readonly configPath?: string;
  readonly regions?: readonly string[];
  readonly nodesPerRegion?: number;
  readonly backend?: string;
  /** Start the experts from this model file instead of the seed initialisation. */
  readonly modelPath?: string;
  readonly log?: (line: string) => void;
  /** Told about hedges, failovers and update coherence (moe-swarm train passes issue #8's). */
  readonly observer?: DispatchObserver;
}

export interface TrainingSwarm {
  readonly host: RemoteExpertHost;
  readonly nodes: readonly ChildNode[];
  stop(): Promise<void>;
}

export async function startTrainingSwarm(
  cfg: SwarmConfig,
  init: TrainingSwarmInit = {},
): Promise<TrainingSwarm> {
  const regions = init.regions ?? cfg.regions.map((r) => r.code);
  const nodesPerRegion = init.nodesPerRegion ?? cfg.swarm.nodes_per_region;
  const plan = planFromConfig(cfg, regions, nodesPerRegion);
  const nodes = await spawnPlan(plan, (p) => ({
    configPath: init.configPath,
    backend: init.backend,
    modelPath: init.modelPath,
    regions,
    nodesPerRegion,
    onLog: (line) => init.log?.(`[${p.nodeId}] ${line}`),
  }));
  const placement = new StaticPlacement(plannedEntries(nodes, plan));
  const global = cfg.regions.find((r) => r.role === "global_coordinator")?.code;
  const host = new RemoteExpertHost({
    registry: placement,
    region: global && regions.includes(global) ? global : (regions[0] as string),
    dModel: cfg.model.d_model,
    links: regionLinksFromConfig(cfg),
    ...(init.observer ? { observer: init.observer } : {}),
  });
  return {
    host,
    nodes,
    async stop() {
      host.close();
      await Promise.all(nodes.map((n) => stopChild(n.child)));
    },
  };
}
