// What the dashboard shows, kept as small bounded structures beside the Prometheus metrics: a
// ring of recent request latencies (live rate and exact p50/p99 over the last few seconds), the
// per-expert activation counts of every MoE layer, measured region-link latencies, node health,
// consensus status, the training-loss curve (halved when full) and recent events. `snapshot()`
// turns it into the JSON the live feed sends; everything in it was recorded by a real operation.
//
// Prometheus is the record of truth for operators (rates and quantiles over any window with PromQL);
// this state only serves the page that an operator keeps open, without a Prometheus server.

import { invariant } from "../common/assert.ts";
import type { SwarmConfig } from "../config/schema.ts";
import {
  latencyWindowSamplesMax,
  latencyWindowSeconds,
  lossCurvePointsMax,
  recentEventsMax,
} from "./constants.ts";

export type SwarmEventKind =
  | "failover"
  | "hedge"
  | "view_change"
  | "canary_step"
  | "node_down"
  | "node_up"
  | "checkpoint";

export interface SwarmEvent {
  /** Epoch milliseconds. */
  readonly at: number;
  readonly kind: SwarmEventKind;
  readonly message: string;
}

export interface NodeView {
  readonly id: string;
  readonly region: string;
  readonly up: boolean;
  /** Expert keys it hosts, e.g. "L0.E3". */
  readonly experts: readonly string[];
  /** Median call latency seen by the caller, seconds; null when unknown. */
  readonly latencyP50Seconds: number | null;
}

/** Commit latency of the coordinator cluster, as the gateway learns it from their status. */
export interface CommitLatencyView {
  /**
   * Request arrival → commit: the median, over the coordinators that answered, of each one's own
   * percentile over its last requests (a lying coordinator cannot move a median of 3 or more).
   */
  readonly p50Seconds: number | null;
  readonly p99Seconds: number | null;
  /** Blocks and requests committed, the (f+1)-th highest reported (vouched by an honest one). */
  readonly blocksCommitted: number;
  readonly requestsCommitted: number;
  /** Coordinators that answered the last status poll. */
  readonly coordinatorsUp: number;
  readonly coordinators: number;
}

export interface ConsensusView {
  readonly leader: string;
  readonly view: number;
  readonly height: number;
  /** Blocks whose commit this process recorded itself (a coordinator), and the last latency. */
  readonly commits: number;
  readonly lastCommitLatencySeconds: number | null;
  /** The cluster's commit latency (the gateway's view of the coordinators); null until known. */
  readonly commitLatency: CommitLatencyView | null;
}

/** Byzantine evidence the coordinators report (src/swarm/consensus-feed.ts evidenceSummary). */
export interface EvidenceView {
  readonly against: readonly {
    readonly region: string;
    readonly reporters: number;
    readonly countMax: number;
  }[];
  readonly recent: readonly {
    readonly reporter: string;
    readonly against: string;
    readonly reason: string;
    readonly view: number;
    readonly atMs: number;
  }[];
  readonly coordinatorsUp: number;
}

export interface TierView {
  readonly name: string;
  readonly gpuType: string;
  readonly activation: string;
  readonly experts: number;
  /** Global index of the tier's first MoE layer. */
  readonly firstLayer: number;
  /** Cumulative tokens routed, [layer within tier][expert]. */
  readonly activations: readonly (readonly number[])[];
  readonly droppedTokens: number;
}

export interface LinkView {
  readonly a: string;
  readonly b: string;
  /** Configured (emulated) round-trip time, 2 × one-way delay, seconds; null when not configured. */
  readonly configuredRttSeconds: number | null;
  /** Last measured median round-trip time of calls on this link, seconds; null until measured. */
  readonly measuredRttSeconds: number | null;
}

export interface DashboardSnapshot {
  readonly at: number;
  readonly process: string;
  readonly requests: {
    readonly total: number;
    readonly errors: number;
    readonly ratePerSecond: number;
    readonly p50Seconds: number | null;
    readonly p99Seconds: number | null;
  };
  readonly tokens: { readonly total: number; readonly ratePerSecond: number };
  readonly regions: readonly { readonly code: string; readonly role: string }[];
  readonly links: readonly LinkView[];
  readonly nodes: readonly NodeView[];
  readonly tiers: readonly TierView[];
  readonly loss: readonly { readonly step: number; readonly loss: number }[];
  readonly consensus: ConsensusView | null;
  /** Null until the gateway has polled the coordinators. */
  readonly evidence: EvidenceView | null;
  readonly failovers: number;
  readonly gradientFidelity: number | null;
  readonly events: readonly SwarmEvent[];
}

function linkKey(a: string, b: string): string {
  return a < b ? `${a}-${b}` : `${b}-${a}`;
}

/** Nearest-rank quantile of an ascending array. */
function quantileSorted(sorted: Float64Array, q: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] ?? null;
}

export class DashboardState {
  readonly #process: string;
  readonly #now: () => number;
  readonly #regions: { code: string; role: string }[];
  readonly #links = new Map<
    string,
    { a: string; b: string; configured: number | null; measured: number | null }
  >();
  readonly #tiers: {
    name: string;
    gpuType: string;
    activation: string;
    experts: number;
    firstLayer: number;
    layers: Float64Array[];
    dropped: number;
  }[] = [];
  /** Global MoE layer index → [tier index, layer within tier]. */
  readonly #layerToTier: [number, number][] = [];
  // Ring of (end time ms, latency s) for the recent-request window.
  readonly #latencyAt = new Float64Array(latencyWindowSamplesMax);
  readonly #latencySeconds = new Float64Array(latencyWindowSamplesMax);
  #latencyNext = 0;
  #latencyCount = 0;
  #requests = 0;
  #errors = 0;
  readonly #tokenAt = new Float64Array(latencyWindowSamplesMax);
  readonly #tokenCount = new Float64Array(latencyWindowSamplesMax);
  #tokenNext = 0;
  #tokens = 0;
  readonly #nodes = new Map<string, NodeView>();
  #loss: { step: number; loss: number }[] = [];
  #lossStride = 1;
  #lossSeen = 0;
  #consensus: ConsensusView | null = null;
  #evidence: EvidenceView | null = null;
  #failovers = 0;
  #fidelity: number | null = null;
  readonly #events: SwarmEvent[] = [];

  constructor(config: SwarmConfig, process: string, now: () => number = Date.now) {
    this.#process = process;
    this.#now = now;
    this.#regions = config.regions.map((r) => ({ code: r.code, role: r.role }));
    const codes = config.regions.map((r) => r.code);
    for (let i = 0; i < codes.length; i++) {
      for (let j = i + 1; j < codes.length; j++) {
        const a = codes[i] as string;
        const b = codes[j] as string;
        const table = config.swarm.emulation.one_way_latency;
        const d = table[`${a}-${b}`] ?? table[`${b}-${a}`];
        const [lo, hi] = a < b ? [a, b] : [b, a];
        this.#links.set(linkKey(a, b), {
          a: lo,
          b: hi,
          configured: config.swarm.emulation.enabled && d ? 2 * d.seconds : null,
          measured: null,
        });
      }
    }
    let layer = 0;
    config.expert_topology.hierarchical_layers.forEach((tier, t) => {
      const layers: Float64Array[] = [];
      for (let b = 0; b < tier.blocks; b++) {
        layers.push(new Float64Array(tier.experts_per_region));
        this.#layerToTier.push([t, b]);
      }
      this.#tiers.push({
        name: tier.name,
        gpuType: tier.gpu_type,
        activation: tier.activation,
        experts: tier.experts_per_region,
        firstLayer: layer,
        layers,
        dropped: 0,
      });
      layer += tier.blocks;
    });
  }

  /** Number of MoE layers across all tiers. */
  get layerCount(): number {
    return this.#layerToTier.length;
  }

  /** The tier of a global MoE layer index, or undefined when out of range. */
  tierOfLayer(layer: number): { tier: number; name: string; gpuType: string } | undefined {
    const entry = this.#layerToTier[layer];
    if (!entry) return undefined;
    const tier = this.#tiers[entry[0]];
    invariant(tier, "layer map points at a missing tier");
    return { tier: entry[0], name: tier.name, gpuType: tier.gpuType };
  }

  recordRequest(seconds: number, ok: boolean): void {
    this.#requests++;
    if (!ok) this.#errors++;
    const i = this.#latencyNext;
    this.#latencyAt[i] = this.#now();
    this.#latencySeconds[i] = seconds;
    this.#latencyNext = (i + 1) % latencyWindowSamplesMax;
    if (this.#latencyCount < latencyWindowSamplesMax) this.#latencyCount++;
  }

  recordTokens(count: number): void {
    this.#tokens += count;
    const i = this.#tokenNext;
    this.#tokenAt[i] = this.#now();
    this.#tokenCount[i] = count;
    this.#tokenNext = (i + 1) % latencyWindowSamplesMax;
  }

  recordActivations(layer: number, counts: ArrayLike<number>): void {
    const entry = this.#layerToTier[layer];
    if (!entry) return;
    const row = this.#tiers[entry[0]]?.layers[entry[1]];
    invariant(row, "layer map points at a missing row");
    const n = Math.min(row.length, counts.length);
    for (let e = 0; e < n; e++) row[e] = (row[e] as number) + (counts[e] as number);
  }

  recordDropped(layer: number, tokens: number): void {
    const entry = this.#layerToTier[layer];
    if (!entry) return;
    const tier = this.#tiers[entry[0]];
    if (tier) tier.dropped += tokens;
  }

  recordLinkRtt(a: string, b: string, seconds: number): void {
    const link = this.#links.get(linkKey(a, b));
    if (link) link.measured = seconds;
  }

  /** Whether a node was last seen up; undefined for a node not seen yet. */
  snapshotNodeUp(id: string): boolean | undefined {
    return this.#nodes.get(id)?.up;
  }

  setNode(node: NodeView): void {
    this.#nodes.set(node.id, node);
  }

  recordLoss(step: number, loss: number): void {
    // Keep every stride-th point; when full, drop every other point and double the stride, so the
    // curve always spans the whole run in at most lossCurvePointsMax points.
    this.#lossSeen++;
    if ((this.#lossSeen - 1) % this.#lossStride !== 0) return;
    this.#loss.push({ step, loss });
    if (this.#loss.length >= lossCurvePointsMax) {
      this.#loss = this.#loss.filter((_, i) => i % 2 === 0);
      this.#lossStride *= 2;
    }
  }

  setConsensus(status: { leader: string; view: number; height: number }): ConsensusView | null {
    const before = this.#consensus;
    invariant(
      before === null || status.view >= before.view,
      () => `consensus view went back from ${before?.view} to ${status.view}`,
    );
    this.#consensus = {
      leader: status.leader,
      view: status.view,
      height: status.height,
      commits: before?.commits ?? 0,
      lastCommitLatencySeconds: before?.lastCommitLatencySeconds ?? null,
      commitLatency: before?.commitLatency ?? null,
    };
    return before;
  }

  setCommitLatency(latency: CommitLatencyView): void {
    const c = this.#consensus ?? {
      leader: "",
      view: 0,
      height: 0,
      commits: 0,
      lastCommitLatencySeconds: null,
      commitLatency: null,
    };
    this.#consensus = { ...c, commitLatency: latency };
  }

  recordCommit(latencySeconds: number): void {
    const c = this.#consensus ?? {
      leader: "",
      view: 0,
      height: 0,
      commits: 0,
      lastCommitLatencySeconds: null,
      commitLatency: null,
    };
    this.#consensus = { ...c, commits: c.commits + 1, lastCommitLatencySeconds: latencySeconds };
  }

  setEvidence(evidence: EvidenceView): void {
    this.#evidence = evidence;
  }

  recordFailover(count = 1): void {
    this.#failovers += count;
  }

  setFidelity(value: number): void {
    this.#fidelity = value;
  }

  addEvent(kind: SwarmEventKind, message: string): SwarmEvent {
    const event = { at: this.#now(), kind, message };
    this.#events.push(event);
    if (this.#events.length > recentEventsMax) this.#events.shift();
    return event;
  }

  snapshot(): DashboardSnapshot {
    const now = this.#now();
    const since = now - latencyWindowSeconds * 1000;
    const recent: number[] = [];
    let oldest = now;
    for (let k = 0; k < this.#latencyCount; k++) {
      const at = this.#latencyAt[k] as number;
      if (at >= since) {
        recent.push(this.#latencySeconds[k] as number);
        if (at < oldest) oldest = at;
      }
    }
    const sorted = Float64Array.from(recent).sort();
    // Rate over the window actually covered (the ring may hold less than the whole window).
    const windowSeconds =
      this.#latencyCount >= latencyWindowSamplesMax
        ? Math.max(1e-3, (now - oldest) / 1000)
        : latencyWindowSeconds;
    let tokensRecent = 0;
    for (let k = 0; k < latencyWindowSamplesMax; k++) {
      if ((this.#tokenAt[k] as number) >= since) tokensRecent += this.#tokenCount[k] as number;
    }
    return {
      at: now,
      process: this.#process,
      requests: {
        total: this.#requests,
        errors: this.#errors,
        ratePerSecond: recent.length / windowSeconds,
        p50Seconds: quantileSorted(sorted, 0.5),
        p99Seconds: quantileSorted(sorted, 0.99),
      },
      tokens: { total: this.#tokens, ratePerSecond: tokensRecent / latencyWindowSeconds },
      regions: this.#regions,
      links: [...this.#links.values()].map((l) => ({
        a: l.a,
        b: l.b,
        configuredRttSeconds: l.configured,
        measuredRttSeconds: l.measured,
      })),
      nodes: [...this.#nodes.values()],
      tiers: this.#tiers.map((t) => ({
        name: t.name,
        gpuType: t.gpuType,
        activation: t.activation,
        experts: t.experts,
        firstLayer: t.firstLayer,
        activations: t.layers.map((row) => Array.from(row)),
        droppedTokens: t.dropped,
      })),
      loss: this.#loss.slice(),
      consensus: this.#consensus,
      evidence: this.#evidence,
      failovers: this.#failovers,
      gradientFidelity: this.#fidelity,
      events: this.#events.slice(),
    };
  }
}
