// Where each expert lives. The dispatcher asks a `PlacementRegistry`; today it is a static file (or
// a plan computed from the config), and issue #6's BFT coordinators implement the same interface
// over their replicated registry, so nothing here changes when they land.
//
// The plan puts each expert on `entanglement_pairs` (3) nodes in distinct regions: expert number i
// (counted over all MoE layers) goes to regions i, i+1, i+2 (mod the region count), and within a
// region to node i mod nodes_per_region. So every region hosts 3/5 of the experts, load is even,
// and losing a whole region leaves 2 replicas of everything.

import { readFileSync } from "node:fs";
import { z } from "zod";
import { invariant } from "../common/assert.ts";
import type { SwarmConfig } from "../config/schema.ts";
import { allExpertIds, modelConfigFrom } from "../model/config.ts";
import { type ExpertId, expertKey } from "../model/expert.ts";
import type { NodeAddress } from "./node-client.ts";

export interface PlacementRegistry {
  /** The nodes hosting replicas of an expert; empty when it is not placed. */
  replicas(id: ExpertId): readonly NodeAddress[];
  /** Every node of the swarm. */
  nodes(): readonly NodeAddress[];
}

export interface NodePlan {
  readonly nodeId: string;
  readonly region: string;
  readonly experts: readonly ExpertId[];
}

/** The node ids of a region: "ORD-0", "ORD-1", ... */
export function nodeIdOf(region: string, index: number): string {
  return `${region}-${index}`;
}

/** Assigns every expert to `replicas` nodes in distinct regions (see the header). */
export function planPlacement(
  experts: readonly ExpertId[],
  regions: readonly string[],
  nodesPerRegion: number,
  replicas: number,
): NodePlan[] {
  if (replicas > regions.length)
    throw new RangeError(
      `expert_topology.routing_strategy.entanglement_pairs (${replicas}) needs at least that many regions; got ${regions.length}`,
    );
  invariant(nodesPerRegion >= 1, `nodes per region ${nodesPerRegion}`);
  const byNode = new Map<string, { region: string; experts: ExpertId[] }>();
  for (const region of regions)
    for (let n = 0; n < nodesPerRegion; n++)
      byNode.set(nodeIdOf(region, n), { region, experts: [] });
  experts.forEach((id, i) => {
    for (let r = 0; r < replicas; r++) {
      const region = regions[(i + r) % regions.length] as string;
      byNode.get(nodeIdOf(region, i % nodesPerRegion))?.experts.push(id);
    }
  });
  return [...byNode].map(([nodeId, v]) => ({ nodeId, region: v.region, experts: v.experts }));
}

/** The config's plan: its regions, nodes_per_region and entanglement_pairs. */
export function planFromConfig(
  cfg: SwarmConfig,
  regions?: readonly string[],
  nodesPerRegion?: number,
): NodePlan[] {
  return planPlacement(
    allExpertIds(modelConfigFrom(cfg)),
    regions ?? cfg.regions.map((r) => r.code),
    nodesPerRegion ?? cfg.swarm.nodes_per_region,
    cfg.expert_topology.routing_strategy.entanglement_pairs,
  );
}

/** A placement that does not change: nodes with addresses and the experts each hosts. */
/** Running nodes with the experts their plan entries give them (entries of a placement). */
export function plannedEntries(
  nodes: readonly NodeAddress[],
  plan: readonly NodePlan[],
): (NodeAddress & { readonly experts: readonly ExpertId[] })[] {
  return nodes.map(({ nodeId, region, host, port }) => ({
    nodeId,
    region,
    host,
    port,
    experts: plan.find((p) => p.nodeId === nodeId)?.experts ?? [],
  }));
}

export class StaticPlacement implements PlacementRegistry {
  readonly #byExpert = new Map<string, NodeAddress[]>();
  readonly #nodes: NodeAddress[];

  constructor(entries: readonly (NodeAddress & { readonly experts: readonly ExpertId[] })[]) {
    this.#nodes = entries.map(({ nodeId, region, host, port }) => ({ nodeId, region, host, port }));
    const ids = new Set<string>();
    for (const entry of entries) {
      invariant(!ids.has(entry.nodeId), () => `node id ${entry.nodeId} twice in the placement`);
      ids.add(entry.nodeId);
      const address = this.#nodes.find((n) => n.nodeId === entry.nodeId) as NodeAddress;
      for (const id of entry.experts) {
        const k = expertKey(id);
        const list = this.#byExpert.get(k) ?? [];
        list.push(address);
        this.#byExpert.set(k, list);
      }
    }
  }

  replicas(id: ExpertId): readonly NodeAddress[] {
    return this.#byExpert.get(expertKey(id)) ?? [];
  }

  nodes(): readonly NodeAddress[] {
    return this.#nodes;
  }
}

const expertKeyPattern = /^L(\d{1,5})\.E(\d{1,5})$/;

export const placementFileSchema = z.strictObject({
  nodes: z
    .array(
      z.strictObject({
        nodeId: z.string().min(1).max(64),
        region: z.string().regex(/^[A-Z]{3}$/, 'a three-letter region code like "ORD"'),
        host: z.string().min(1),
        port: z.number().int().min(1).max(65535),
        experts: z.array(z.string().regex(expertKeyPattern, 'an expert key like "L0.E3"')),
      }),
    )
    .min(1),
});

export type PlacementFile = z.infer<typeof placementFileSchema>;

export function parseExpertKey(key: string): ExpertId {
  const m = expertKeyPattern.exec(key);
  if (!m) throw new RangeError(`expected an expert key like "L0.E3"; got "${key}"`);
  return { layer: Number(m[1]), expert: Number(m[2]) };
}

/** Placement file → registry. Errors name the path of the bad entry. */
export function placementFromJson(value: unknown, source = "placement"): StaticPlacement {
  const parsed = placementFileSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new RangeError(`${source}: ${issue?.path.join(".") || "(root)"}: ${issue?.message}`);
  }
  return new StaticPlacement(
    parsed.data.nodes.map((n) => ({ ...n, experts: n.experts.map(parseExpertKey) })),
  );
}

export function placementFromFile(path: string): StaticPlacement {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new RangeError(`placement file ${path}: ${(err as Error).message}`);
  }
  return placementFromJson(value, path);
}

export function placementToJson(
  entries: readonly (NodeAddress & { experts: readonly ExpertId[] })[],
): PlacementFile {
  return { nodes: entries.map((e) => ({ ...e, experts: e.experts.map(expertKey) })) };
}
