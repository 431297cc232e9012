// Runs one expert node as a process of the swarm (`moe-swarm node`): derives which experts it hosts
// from the placement plan of the config (region, index within the region), builds the model's
// LocalExpertHost for them (weights initialised from the model seed, so every replica of an expert
// starts identical), and serves them. The first line on stdout is a JSON "listening" event with
// the bound port, which `moe-swarm up` and the tests read.
// With `registry` (moe-swarm node --registry host:port,...), the node registers itself with the BFT
// coordinators and heartbeats through RegistryClient (consensus/node-heartbeat.ts). Registration and
// heartbeats run in the background from the start: the node serves (and announces itself) at once,
// and a dead coordinator or a slow commit never holds up serving.

import type { SwarmConfig } from "../config/schema.ts";
import { RegistryClient } from "../consensus/client.ts";
import { NodeHeartbeat, nodeHeartbeatMsDefault } from "../consensus/node-heartbeat.ts";
import { modelConfigFrom, moeLayers } from "../model/config.ts";
import type { ExpertId } from "../model/expert.ts";
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
  /** Coordinators' client endpoints: register and heartbeat there (none: the node stays out). */
  readonly registry?: {
    readonly endpoints: readonly { host: string; port: number }[];
    readonly heartbeatMs?: number;
    readonly log?: (line: string) => void;
  };
}

/** Deadline of one registry call of the node (registration or heartbeat). */
export const registryCallMsMin = 10_000;

/**
 * The GPU type a node registers with: the gpu_type of the tier (config hierarchical_layers) that
 * most of its experts belong to (ties: the earlier tier). A node of the plan hosts experts of
 * several tiers; the registry keeps one GPU type per node.
 */
export function nodeGpuType(
  cfg: SwarmConfig,
  experts: readonly ExpertId[],
): "a10" | "l40s" | "a100-80gb" {
  const tiers = cfg.expert_topology.hierarchical_layers;
  const tierOfLayer = new Map(moeLayers(modelConfigFrom(cfg)).map((l) => [l.layer, l.tierIndex]));
  const counts = new Array<number>(tiers.length).fill(0);
  for (const id of experts) {
    const t = tierOfLayer.get(id.layer);
    if (t !== undefined) counts[t] = (counts[t] ?? 0) + 1;
  }
  let best = 0;
  counts.forEach((c, t) => {
    if (c > (counts[best] ?? 0)) best = t;
  });
  return (tiers[best] ?? tiers[0])?.gpu_type ?? "a10";
}

export interface RunningNode {
  readonly node: ExpertNode;
  readonly nodeId: string;
  readonly host: string;
  readonly port: number;
  readonly experts: number;
  /** Registry membership, when started with `registry`. */
  readonly heartbeat: NodeHeartbeat | undefined;
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
  let heartbeat: NodeHeartbeat | undefined;
  let client: RegistryClient | undefined;
  if (init.registry) {
    const heartbeatMs = init.registry.heartbeatMs ?? nodeHeartbeatMsDefault;
    // Each call is bounded: a slow or dead quorum costs at most one beat, never the data plane.
    // A fresh client id per process: exactly-once sessions are keyed by (client id, seq), and a
    // restarted process starts its seq at 1 again.
    client = new RegistryClient({
      endpoints: init.registry.endpoints,
      retryMs: Math.max(100, Math.min(1_000, heartbeatMs / 2)),
      deadlineMs: Math.max(2 * heartbeatMs, registryCallMsMin),
    });
    const dial = address.host === "0.0.0.0" || address.host === "::" ? "127.0.0.1" : address.host;
    heartbeat = new NodeHeartbeat({
      client,
      nodeId,
      region: init.region,
      gpuType: nodeGpuType(cfg, plan.experts),
      address: `${dial}:${address.port}`,
      heartbeatMs,
      log: init.registry.log ?? (() => {}),
    });
    void heartbeat.start();
  }
  return {
    node,
    nodeId,
    host: address.host,
    port: address.port,
    experts: plan.experts.length,
    heartbeat,
    async close() {
      heartbeat?.stop();
      client?.close();
      await node.close();
      await host.close();
    },
  };
}
