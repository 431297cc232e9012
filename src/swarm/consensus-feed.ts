// The gateway's window on the BFT coordinators (issue #6) for the dashboard and /metrics: every
// `consensusPollMs` it asks each of the five coordinators for its status (view, leader, committed
// height, rounds), each with a timeout, so a dead or silent coordinator never stalls the poll.
//   - Rounds are counted per coordinator (moe_swarm_consensus_rounds_total{region=<coordinator>,
//     gpu_type="none", algorithm}): a coordinator has no GPU, so its gpu_type label says "none"
//     and the spec's label set is kept.
//   - The view and height shown are the (f+1)-th highest reported (f = 1): at least f + 1 = 2
//     coordinators report that much or more, so at least one honest coordinator has reached it; a
//     single Byzantine coordinator cannot inflate them. The leader is the view's leader
//     (round-robin from ORD, src/consensus/types.ts leaderOf). Shown values never go back: a poll
//     whose aggregate view is older than the last shown is not shown.
//   - Commit latency (the dashboard's panel): each coordinator reports the p50 and p99 of request
//     arrival → commit over its own last requests (replica.ts, commitLatencySamplesMax); the panel
//     shows the median over the coordinators that answered, which one liar cannot move with three
//     or more answers, beside the blocks and requests committed (vouched like the height). Each
//     coordinator's full histogram is on its own /metrics (moe-swarm coordinator --metrics-port).
//   - Byzantine evidence (the dashboard's evidence panel): per accused coordinator, how many
//     coordinators report evidence against it (equivocation, conflicting votes or checkpoints;
//     replica.ts counts them) and the highest count reported, with the newest records. Each is a
//     coordinator's own unverified account: a Byzantine coordinator can accuse anyone, so the
//     panel shows the number of reporters, and f + 1 = 2 of them mean an honest one saw it.
// Status is not a consensus read: it is each coordinator's own account, which is what a dashboard
// of the coordinators shows (CometBFT's /status is the same).

import { invariant } from "../common/assert.ts";
import type { RegistryClient } from "../consensus/client.ts";
import { faultsTolerated, replicaCount } from "../consensus/constants.ts";
import { leaderOf, regionsInLeaderOrder } from "../consensus/types.ts";

/** How often the gateway polls the coordinators' status. */
export const consensusPollMs = 1000;
/** How long one coordinator gets to answer a status request. */
export const consensusStatusTimeoutMs = 800;
/** The gpu_type label of a coordinator's rounds: coordinators run no experts and have no GPU. */
export const coordinatorGpuLabel = "none";

invariant(consensusStatusTimeoutMs < consensusPollMs, "a poll ends before the next one starts");

/** What the feed writes to (src/observe/swarm-recorder.ts SwarmRecorder has this shape). */
export interface ConsensusSink {
  recordConsensusStatus(status: {
    view: number;
    committedHeight: number;
    leaderRegion: string;
  }): void;
  recordConsensusRounds(
    roundsTotal: number,
    labels: { region: string; gpuType: string; algorithm: string },
  ): void;
  /** The cluster's commit latency and commit counts (optional: a sink may not show them). */
  recordCommitLatency?(latency: CommitLatencySummary): void;
  /** Byzantine evidence the coordinators report (optional). */
  recordEvidence?(evidence: EvidenceSummary): void;
}

/** Evidence records shown (newest first, across coordinators), and the reason text kept of each. */
export const evidenceRecordsShownMax = 8;
export const evidenceReasonCharsMax = 160;

/** One evidence record as a coordinator reported it. */
export interface EvidenceReport {
  readonly reporter: string;
  readonly against: string;
  readonly reason: string;
  readonly view: number;
  readonly atMs: number;
}

/** What the feed learns about Byzantine evidence from one poll (see the header). */
export interface EvidenceSummary {
  /** One entry per coordinator region, in leader order. */
  readonly against: readonly {
    readonly region: string;
    readonly reporters: number;
    readonly countMax: number;
  }[];
  readonly recent: readonly EvidenceReport[];
  readonly coordinatorsUp: number;
}

/** What the feed learns about commit latency from one poll (dashboard-state.ts shows it). */
export interface CommitLatencySummary {
  readonly p50Seconds: number | null;
  readonly p99Seconds: number | null;
  readonly blocksCommitted: number;
  readonly requestsCommitted: number;
  readonly coordinatorsUp: number;
  readonly coordinators: number;
}

export interface CoordinatorStatus {
  readonly region: string;
  readonly view: number;
  readonly committedHeight: number;
  readonly roundsTotal: number;
  /** Optional fields: a coordinator that omits or garbles them is left out of those figures. */
  readonly blocksCommittedTotal?: number;
  readonly requestsCommittedTotal?: number;
  readonly commitLatencyMsP50?: number;
  readonly commitLatencyMsP99?: number;
  /** Evidence counts per accused replica (index = replica id), and the newest records. */
  readonly evidenceByReplica?: readonly number[];
  readonly evidence?: readonly EvidenceReport[];
}

function statusOf(i: number, raw: Record<string, unknown>): CoordinatorStatus | undefined {
  const { view, committedHeight, roundsTotal } = raw;
  const ok = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
  if (!ok(view) || !ok(committedHeight) || !ok(roundsTotal)) return undefined;
  const finite = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v) && v >= 0;
  const { blocksCommittedTotal, requestsCommittedTotal, commitLatencyMsP50, commitLatencyMsP99 } =
    raw;
  const region = regionsInLeaderOrder[i] as string;
  const { evidenceByReplica, evidence } = raw;
  const counts =
    Array.isArray(evidenceByReplica) &&
    evidenceByReplica.length === replicaCount &&
    evidenceByReplica.every(ok)
      ? (evidenceByReplica as number[])
      : undefined;
  const records = Array.isArray(evidence)
    ? evidence
        .slice(-evidenceRecordsShownMax)
        .map((r: unknown) => evidenceOf(region, r))
        .filter((r): r is EvidenceReport => r !== undefined)
    : undefined;
  return {
    region: regionsInLeaderOrder[i] as string,
    view,
    committedHeight,
    roundsTotal,
    ...(ok(blocksCommittedTotal) ? { blocksCommittedTotal } : {}),
    ...(ok(requestsCommittedTotal) ? { requestsCommittedTotal } : {}),
    // Percentiles mean something only once the coordinator has committed a request.
    ...(ok(requestsCommittedTotal) && requestsCommittedTotal > 0 && finite(commitLatencyMsP50)
      ? { commitLatencyMsP50 }
      : {}),
    ...(ok(requestsCommittedTotal) && requestsCommittedTotal > 0 && finite(commitLatencyMsP99)
      ? { commitLatencyMsP99 }
      : {}),
    ...(counts ? { evidenceByReplica: counts } : {}),
    ...(records ? { evidence: records } : {}),
  };
}

/** One evidence record of a status (untrusted JSON), or undefined when malformed. */
function evidenceOf(reporter: string, raw: unknown): EvidenceReport | undefined {
  if (typeof raw !== "object" || raw === null) return undefined;
  const { against, reason, view, atMs } = raw as Record<string, unknown>;
  if (!Number.isSafeInteger(against) || (against as number) < 0) return undefined;
  const accused = regionsInLeaderOrder[against as number];
  if (accused === undefined || typeof reason !== "string") return undefined;
  if (!Number.isSafeInteger(view) || (view as number) < 0) return undefined;
  if (typeof atMs !== "number" || !Number.isFinite(atMs)) return undefined;
  return {
    reporter,
    against: accused,
    reason: reason.slice(0, evidenceReasonCharsMax),
    view: view as number,
    atMs,
  };
}

/** Evidence figures of one poll's answers (see the header). */
export function evidenceSummary(up: readonly CoordinatorStatus[]): EvidenceSummary {
  return {
    against: regionsInLeaderOrder.map((region, i) => {
      const counts = up.map((s) => s.evidenceByReplica?.[i] ?? 0);
      return {
        region,
        reporters: counts.filter((c) => c > 0).length,
        countMax: Math.max(0, ...counts),
      };
    }),
    recent: up
      .flatMap((s) => s.evidence ?? [])
      .sort((a, b) => b.atMs - a.atMs)
      .slice(0, evidenceRecordsShownMax),
    coordinatorsUp: up.length,
  };
}

/** The median of the values (the mean of the middle two for an even count); undefined if none. */
export function median(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** Commit figures of one poll's answers (see the header). */
export function commitLatencySummary(
  up: readonly CoordinatorStatus[],
  coordinators: number = replicaCount,
): CommitLatencySummary {
  const defined = (xs: (number | undefined)[]) => xs.filter((x): x is number => x !== undefined);
  const p50 = median(defined(up.map((s) => s.commitLatencyMsP50)));
  const p99 = median(defined(up.map((s) => s.commitLatencyMsP99)));
  return {
    p50Seconds: p50 === undefined ? null : p50 / 1000,
    p99Seconds: p99 === undefined ? null : p99 / 1000,
    blocksCommitted: vouchedMax(defined(up.map((s) => s.blocksCommittedTotal))) ?? 0,
    requestsCommitted: vouchedMax(defined(up.map((s) => s.requestsCommittedTotal))) ?? 0,
    coordinatorsUp: up.length,
    coordinators,
  };
}

/** The (f+1)-th highest of the values (undefined with fewer than f + 1 values). */
export function vouchedMax(values: readonly number[]): number | undefined {
  if (values.length < faultsTolerated + 1) return undefined;
  return [...values].sort((a, b) => b - a)[faultsTolerated];
}

/** The one call the feed makes (RegistryClient has it). */
export type StatusSource = Pick<RegistryClient, "status">;

export class ConsensusFeed {
  readonly #client: StatusSource;
  readonly #sink: ConsensusSink;
  readonly #algorithm: string;
  #timer: NodeJS.Timeout | undefined;
  #polling = false;
  #stopped = false;
  #shownView = -1;
  #shownHeight = 0;
  /** Statuses of the last poll (undefined: no answer in time). */
  last: (CoordinatorStatus | undefined)[] = new Array(replicaCount).fill(undefined);

  constructor(client: StatusSource, sink: ConsensusSink, algorithm: string) {
    this.#client = client;
    this.#sink = sink;
    this.#algorithm = algorithm;
  }

  /** Polls every coordinator once and records what came back. */
  async poll(): Promise<void> {
    const answers = await Promise.allSettled(
      regionsInLeaderOrder.map((_, i) => this.#client.status(i, consensusStatusTimeoutMs)),
    );
    const statuses = answers.map((a, i) =>
      a.status === "fulfilled" ? statusOf(i, a.value) : undefined,
    );
    this.last = statuses;
    const up = statuses.filter((s): s is CoordinatorStatus => s !== undefined);
    for (const s of up)
      this.#sink.recordConsensusRounds(s.roundsTotal, {
        region: s.region,
        gpuType: coordinatorGpuLabel,
        algorithm: this.#algorithm,
      });
    this.#sink.recordCommitLatency?.(commitLatencySummary(up));
    this.#sink.recordEvidence?.(evidenceSummary(up));
    const view = vouchedMax(up.map((s) => s.view));
    const height = vouchedMax(up.map((s) => s.committedHeight));
    if (view === undefined || height === undefined || view < this.#shownView) return;
    this.#shownView = view;
    this.#shownHeight = Math.max(this.#shownHeight, height);
    this.#sink.recordConsensusStatus({
      view,
      committedHeight: this.#shownHeight,
      leaderRegion: regionsInLeaderOrder[leaderOf(view)] as string,
    });
  }

  /** Polls now and then every `intervalMs` until `stop` (one poll at a time). */
  start(intervalMs = consensusPollMs): void {
    const tick = () => {
      if (this.#polling || this.#stopped) return;
      this.#polling = true;
      this.poll()
        .catch(() => undefined)
        .finally(() => {
          this.#polling = false;
        });
    };
    tick();
    this.#timer = setInterval(tick, intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
  }
}
