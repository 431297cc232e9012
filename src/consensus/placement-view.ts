// The swarm's read path to the replicated registry. The gateway and expert nodes ask "which nodes
// host expert L.E?" on every dispatch, which must not wait for a consensus round; so this view
// keeps the last registry read (a linearizable `get_registry` through consensus) and refreshes it
// every `refreshMs`. Its answers are linearizable as of the last refresh (they may be at most
// `refreshMs` + one commit stale); writes (register, heartbeat, placement) go straight to
// consensus through `RegistryClient`.
//
// Expired nodes (no heartbeat within the registry's TTL, marked by the replicated state machine at
// a committed block time) are not offered: `replicas()` and `nodes()` leave them out, and list them
// again once a heartbeat revives them. Only when every replica of an expert is expired does
// `replicas()` fall back to the expired ones (the registry may be stale, e.g. all heartbeats were
// held up by a coordinator outage; the dispatcher's own failover then decides).
//
// It has the shape of the swarm's `PlacementRegistry` (src/swarm/placement.ts: `replicas(id)` and
// `nodes()` returning { nodeId, region, host, port }), without importing it: the swarm depends on
// the consensus layer, not the other way round.

import type { RegistryClient } from "./client.ts";
import { isExpired, type NodeRecord, type RegistryState } from "./registry.ts";

export interface RegistryNodeAddress {
  readonly nodeId: string;
  readonly region: string;
  readonly host: string;
  readonly port: number;
}

/** Registry refresh period of the placement view when none is given. */
export const placementRefreshMsDefault = 1_000;

/** Expert key as in src/model/expert.ts `expertKey`: "L<layer>.E<expert>". */
function keyOf(id: { readonly layer: number; readonly expert: number }): string {
  return `L${id.layer}.E${id.expert}`;
}

function addressOf(n: NodeRecord): RegistryNodeAddress | undefined {
  const m = /^(.+):(\d{1,5})$/.exec(n.address);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  return { nodeId: n.nodeId, region: n.region, host: m[1] as string, port };
}

export class RegistryPlacementView {
  readonly #client: RegistryClient;
  readonly #refreshMs: number;
  #nodes: RegistryNodeAddress[] = [];
  #byExpert = new Map<string, RegistryNodeAddress[]>();
  #expired = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  #lastRefreshMs = 0;

  constructor(client: RegistryClient, refreshMs = placementRefreshMsDefault) {
    this.#client = client;
    this.#refreshMs = refreshMs;
  }

  /** Reads the registry once (linearizably) and replaces the cached view. */
  async refresh(): Promise<void> {
    const r = await this.#client.getRegistry();
    if (!r.ok) throw new Error(`registry read failed: ${r.error}`);
    this.#apply(r.value as RegistryState);
    this.#lastRefreshMs = Date.now();
  }

  #apply(state: RegistryState): void {
    const byId = new Map<string, RegistryNodeAddress>();
    const expired = new Set<string>();
    for (const n of Object.values(state.nodes)) {
      const a = addressOf(n);
      if (a) byId.set(n.nodeId, a);
      if (isExpired(n)) expired.add(n.nodeId);
    }
    this.#nodes = [...byId.values()]
      .filter((a) => !expired.has(a.nodeId))
      .sort((a, b) => (a.nodeId < b.nodeId ? -1 : 1));
    const byExpert = new Map<string, RegistryNodeAddress[]>();
    for (const [expert, ids] of Object.entries(state.placements)) {
      const all = ids
        .map((id) => byId.get(id))
        .filter((a): a is RegistryNodeAddress => a !== undefined);
      const live = all.filter((a) => !expired.has(a.nodeId));
      byExpert.set(expert, live.length > 0 ? live : all);
    }
    this.#byExpert = byExpert;
    this.#expired = expired;
  }

  /** Nodes the registry marked expired at the last refresh (sorted ids). */
  expiredNodeIds(): readonly string[] {
    return [...this.#expired].sort();
  }

  /** Loads once, then refreshes in the background until `stop`. */
  async start(): Promise<void> {
    await this.refresh();
    const loop = () => {
      if (this.#stopped) return;
      this.#timer = setTimeout(() => {
        this.refresh().then(loop, loop);
      }, this.#refreshMs);
    };
    loop();
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  /** Wall-clock time of the last successful refresh (ms since epoch). */
  get lastRefreshMs(): number {
    return this.#lastRefreshMs;
  }

  replicas(id: {
    readonly layer: number;
    readonly expert: number;
  }): readonly RegistryNodeAddress[] {
    return this.#byExpert.get(keyOf(id)) ?? [];
  }

  nodes(): readonly RegistryNodeAddress[] {
    return this.#nodes;
  }
}

export interface PlacementEntry extends RegistryNodeAddress {
  readonly gpuType: "a10" | "l40s" | "a100-80gb";
  readonly experts: readonly { readonly layer: number; readonly expert: number }[];
}

/**
 * Writes a placement plan into the registry through consensus: registers every node, then sets each
 * expert's replica list. Returns the first failed result's error, if any. (What `moe-swarm up`
 * does once the coordinators are up, instead of a static placement file.)
 */
export async function publishPlacement(
  client: RegistryClient,
  entries: readonly PlacementEntry[],
  options: { readonly register?: boolean } = {},
): Promise<void> {
  // register: false when the nodes registered themselves (moe-swarm node --registry).
  for (const e of options.register === false ? [] : entries) {
    const r = await client.registerNode(e.nodeId, e.region, e.gpuType, `${e.host}:${e.port}`);
    if (!r.ok) throw new Error(`register ${e.nodeId}: ${r.error}`);
  }
  const byExpert = new Map<string, string[]>();
  for (const e of entries)
    for (const id of e.experts)
      byExpert.set(keyOf(id), [...(byExpert.get(keyOf(id)) ?? []), e.nodeId]);
  for (const [expert, nodeIds] of byExpert) {
    const r = await client.setPlacement(expert, nodeIds);
    if (!r.ok) throw new Error(`placement of ${expert}: ${r.error}`);
  }
}
