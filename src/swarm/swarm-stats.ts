// Counters of the data plane, kept in one plain object that the gateway exposes (GET /v1/swarm and
// the /healthz body) so that issue #8's Prometheus metrics can read them without a redesign.
// Counters only grow; per-node figures are computed on demand by the dispatcher.

import type { NodeLoad } from "./expert-node.ts";

export interface NodeStats {
  readonly nodeId: string;
  readonly region: string;
  readonly healthy: boolean;
  readonly latencyMsP50: number | undefined;
  readonly latencyMsP95: number | undefined;
  readonly latencyMsP99: number | undefined;
  readonly samples: number;
  readonly failures: number;
  readonly inflight: number;
  readonly lastError: string | undefined;
  /** The node's last load report (requests in flight and queued, served, batches, errors). */
  readonly load: NodeLoad | undefined;
}

export class DispatchCounters {
  /** Expert calls made by the model (forward + backward + norm + update). */
  calls = 0;
  /** Forward calls that rode along in another caller's wire call (coalesced in one turn). */
  coalescedCalls = 0;
  /** Forward calls sent inside a frame with other experts' calls to the same node. */
  groupedCalls = 0;
  /** Frames carrying more than one expert's forward call (one per node per dispatch round). */
  groupFrames = 0;
  /** Calls that failed after every replica was tried. */
  failedCalls = 0;
  /** Attempts started on another replica after one failed (error, deadline, closed connection). */
  failovers = 0;
  /** Second attempts started because the first was slower than its node's recent p95. */
  hedges = 0;
  /** Hedged attempts that answered first. */
  hedgeWins = 0;
  /** Answers refused because the replica's expert weights were behind the others. */
  staleReplicas = 0;
  /** Stale replicas brought up to date by resyncStaleReplicas. */
  resyncedReplicas = 0;
  /** Nodes marked unhealthy / healthy again. */
  nodesMarkedDown = 0;
  nodesRecovered = 0;
  /** performance.now() of the last failover (for recovery-time measurements). */
  lastFailoverAtMs: number | undefined;
}
