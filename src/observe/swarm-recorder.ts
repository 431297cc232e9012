// Turns the cumulative counters that the model and the swarm already keep into metric increments,
// so wiring observability in is one call per scrape or tick, with no change to their hot paths:
//   - model.routingStats() (src/model/moe-layer.ts MoeLayerStats: tokens admitted per expert and
//     dropped tokens, per MoE layer) → expert activation and dropped-token counters, heatmap;
//   - the dispatcher's DispatchCounters and nodeStats() (src/swarm/swarm-stats.ts: failovers,
//     hedges, node health, per-node latency) → failover/hedge counters, node health gauges and the
//     median RTT of each link from the caller's region.
// The inputs are described structurally here, so this file depends on no other module's classes.
// Counters only grow; a value that goes down (a restarted process) is taken as a restart and the
// new value counts from zero.

import type { CommitLatencyView, EvidenceView } from "./dashboard-state.ts";
import type { SwarmMetrics } from "./metrics.ts";

export interface RoutingStatsLike {
  readonly layer: number;
  /** Cumulative assignments served, per expert. */
  readonly admitted: ArrayLike<number>;
  /** Cumulative tokens dropped for capacity. */
  readonly droppedTokens: number;
}

export interface DispatchCountersLike {
  readonly failovers: number;
  readonly hedges: number;
}

export interface NodeStatsLike {
  readonly nodeId: string;
  readonly region: string;
  readonly healthy: boolean;
  readonly latencyMsP50: number | undefined;
  readonly lastError?: string | undefined;
}

export interface ConsensusStatusLike {
  readonly view: number;
  readonly committedHeight: number;
  /** Region of the current leader (the dashboard names leaders by region). */
  readonly leaderRegion: string;
  /** Rounds completed by a quorum certificate, cumulative. */
  readonly roundsTotal: number;
}

export interface ApiCountersLike {
  readonly completionTokens: number;
}

function delta(now: number, before: number | undefined): number {
  if (before === undefined || now < before) return now;
  return now - before;
}

export class SwarmRecorder {
  readonly #metrics: SwarmMetrics;
  readonly #admitted = new Map<number, Float64Array>();
  readonly #dropped = new Map<number, number>();
  #failovers: number | undefined;
  #hedges: number | undefined;
  readonly #rounds = new Map<string, number>();
  #completionTokens: number | undefined;

  constructor(metrics: SwarmMetrics) {
    this.#metrics = metrics;
  }

  /** Records what routed since the last call. */
  recordRouting(stats: readonly RoutingStatsLike[]): void {
    for (const s of stats) {
      const before = this.#admitted.get(s.layer);
      const now = Float64Array.from(s.admitted);
      const inc = new Float64Array(now.length);
      let any = false;
      for (let e = 0; e < now.length; e++) {
        inc[e] = delta(now[e] as number, before?.[e]);
        if ((inc[e] as number) > 0) any = true;
      }
      this.#admitted.set(s.layer, now);
      if (any) this.#metrics.recordExpertActivations(s.layer, inc);
      const dropped = delta(s.droppedTokens, this.#dropped.get(s.layer));
      this.#dropped.set(s.layer, s.droppedTokens);
      if (dropped > 0) this.#metrics.recordDroppedTokens(s.layer, dropped);
    }
  }

  /**
   * Records dispatch counters and node health. `fromRegion` is the caller's region (the
   * gateway's); `expertsOf` names the experts each node hosts, for the dashboard.
   */
  recordDispatch(
    counters: DispatchCountersLike,
    nodes: readonly NodeStatsLike[],
    fromRegion: string,
    expertsOf: (nodeId: string) => readonly string[] = () => [],
  ): void {
    const failovers = delta(counters.failovers, this.#failovers);
    this.#failovers = counters.failovers;
    // Failover events with their reason are emitted where they happen (SwarmMetrics.recordFailover);
    // here only the count is known, so it goes to the counter with reason "unknown".
    if (failovers > 0) this.#metrics.countFailovers(failovers);
    const hedges = delta(counters.hedges, this.#hedges);
    this.#hedges = counters.hedges;
    if (hedges > 0) this.#metrics.countHedges(hedges);
    const rttByRegion = new Map<string, number>();
    for (const n of nodes) {
      const p50 = n.latencyMsP50 === undefined ? null : n.latencyMsP50 / 1000;
      this.#metrics.setNodeHealth({
        id: n.nodeId,
        region: n.region,
        up: n.healthy,
        experts: expertsOf(n.nodeId),
        latencyP50Seconds: p50,
      });
      if (p50 !== null && n.healthy) {
        const best = rttByRegion.get(n.region);
        if (best === undefined || p50 < best) rttByRegion.set(n.region, p50);
      }
    }
    for (const [region, rtt] of rttByRegion) {
      if (region !== fromRegion) this.#metrics.recordLinkRtt(fromRegion, region, rtt);
    }
  }

  /** Records a coordinator's status: view, height, leader, and the rounds since the last call. */
  recordConsensus(
    status: ConsensusStatusLike,
    labels: { region: string; gpuType: string; algorithm: string },
  ): void {
    this.recordConsensusStatus(status);
    this.recordConsensusRounds(status.roundsTotal, labels);
  }

  /** The cluster's view, height and leader as the dashboard and the view/height gauges show it. */
  recordConsensusStatus(status: Omit<ConsensusStatusLike, "roundsTotal">): void {
    this.#metrics.setConsensusStatus({
      leader: status.leaderRegion,
      view: status.view,
      height: status.committedHeight,
    });
  }

  /**
   * Rounds of one coordinator (cumulative `roundsTotal`) since the last call for the same
   * `labels.region`, so each of several coordinators polled in turn is counted on its own.
   */
  recordConsensusRounds(
    roundsTotal: number,
    labels: { region: string; gpuType: string; algorithm: string },
  ): void {
    const rounds = delta(roundsTotal, this.#rounds.get(labels.region));
    this.#rounds.set(labels.region, roundsTotal);
    if (rounds > 0) this.#metrics.recordConsensusRound(labels, rounds);
  }

  /** The coordinators' commit latency and counts, for the dashboard's consensus panel. */
  recordCommitLatency(latency: CommitLatencyView): void {
    this.#metrics.setCommitLatency(latency);
  }

  /** Byzantine evidence the coordinators report, for the dashboard's evidence panel. */
  recordEvidence(evidence: EvidenceView): void {
    this.#metrics.setEvidence(evidence);
  }

  /** Records the tokens the gateway's API generated since the last call. */
  recordApi(counters: ApiCountersLike): void {
    const generated = delta(counters.completionTokens, this.#completionTokens);
    this.#completionTokens = counters.completionTokens;
    if (generated > 0) this.#metrics.recordTokens("generated", generated);
  }
}
