// `/metrics` of one BFT coordinator (issue #8: every process exposes /metrics). The coordinator
// process (`moe-swarm coordinator --metrics-port`) passes this as its CoordinatorNode's observer
// (src/consensus/node.ts CoordinatorObserver) and serves it on its own HTTP port:
//   - the swarm's SwarmMetrics registry (so the spec's three metrics are there too), process label
//     `coordinator-<REGION>`, with, read from the replica's status at each scrape:
//       moe_swarm_consensus_view / _height (gauges), moe_swarm_consensus_view_changes_total,
//       moe_swarm_consensus_rounds_total{region, gpu_type="none", algorithm} (the spec's
//       swarm_consensus_rounds; a coordinator has no GPU);
//   - fed as it happens:
//       moe_swarm_consensus_commit_latency_seconds{since="proposal"} per committed block (the
//         leader's proposal timestamp → the commit here; on one machine exact, across machines it
//         includes the clock offset between them) and {since="request"} per committed request
//         that a client sent to this coordinator (its arrival → its commit);
//       moe_swarm_consensus_timeouts_total (this replica timed out of a view);
//       moe_swarm_consensus_rejected_messages_total{reason} (a bounded set of reasons,
//         rejectReasonLabel; the full text stays in the log);
//       moe_swarm_consensus_wal_fsyncs_total (fsync calls of the write-ahead log);
//       moe_swarm_consensus_signature_backend_info{backend} = 1 (who signs and verifies ML-DSA-65:
//         pqclean-native, pqclean-wasm or noble; src/crypto/ml-dsa-backend.ts).
//   - pushed, like the gateway's and the nodes', to the Pushgateway the config names
//     (pushgateway.ts: by default only in the production profile; a failed push is logged and
//     retried with backoff, never fatal): the push loop runs from `serve` to `close`.

import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import client from "prom-client";
import type { SwarmConfig } from "../config/schema.ts";
import { regionsInLeaderOrder as coordinatorRegions } from "../consensus/types.ts";
import { coordinatorGpuLabel } from "../swarm/consensus-feed.ts";
import { metricPrefix } from "./constants.ts";
import { routeAll } from "./http-route.ts";
import { SwarmMetrics } from "./metrics.ts";
import { metricsRoute } from "./metrics-http.ts";
import { PushLoop, pushTargetFromConfig } from "./pushgateway.ts";
import { type ConsensusStatusLike, SwarmRecorder } from "./swarm-recorder.ts";

/** The label values of moe_swarm_consensus_rejected_messages_total. */
export const rejectReasons = [
  "malformed",
  "bad_signature",
  "relayed",
  "not_leader",
  "future",
  "clock",
  "bad_chain",
  "mempool_full",
  "invalid_request",
  "other",
] as const;
export type RejectReason = (typeof rejectReasons)[number];

/** Maps a rejection's text (replica.ts / node.ts) to one of a bounded set of label values. */
export function rejectReasonLabel(reason: string): RejectReason {
  if (reason.startsWith("malformed")) return "malformed";
  if (/invalid signature/.test(reason)) return "bad_signature";
  if (/relayed by/.test(reason)) return "relayed";
  if (/non-leader/.test(reason)) return "not_leader";
  if (/future/.test(reason)) return "future";
  if (/timestamp|clock/.test(reason)) return "clock";
  if (/does not extend|below its parent/.test(reason)) return "bad_chain";
  if (/mempool full/.test(reason)) return "mempool_full";
  if (/clientId|invalid operation/.test(reason)) return "invalid_request";
  return "other";
}

/** What the metrics read from the coordinator at each scrape. */
export interface CoordinatorStatusSource {
  status(): ConsensusStatusLike;
  /** Cumulative fsync calls of the WAL. */
  walFsyncs(): number;
  /** The ML-DSA-65 backend's name, once the coordinator has chosen it. */
  signatureBackend?(): string | undefined;
}

export interface CoordinatorMetricsInit {
  readonly config: SwarmConfig;
  readonly region: string;
  readonly source: CoordinatorStatusSource;
  /** Push to the config's Pushgateway (default: only in the production profile). */
  readonly push?: boolean;
  /** Where push failures are reported (default console.warn). */
  readonly log?: (message: string) => void;
  /** Backoff of failed pushes (tests; default pushgateway.ts's). */
  readonly pushRetryDelaySeconds?: { readonly min: number; readonly max: number };
}

export class CoordinatorMetrics {
  readonly metrics: SwarmMetrics;
  /** The Pushgateway loop, when the config names one and pushing is on; runs while served. */
  readonly push: PushLoop | null;
  readonly #init: CoordinatorMetricsInit;
  readonly #recorder: SwarmRecorder;
  readonly #timeouts: client.Counter<string>;
  readonly #rejected: client.Counter<"reason">;
  readonly #fsyncs: client.Counter<string>;
  readonly #evidence: client.Counter<"against">;
  readonly #backend: client.Gauge<"backend">;
  #fsyncsSeen = 0;
  #server: Server | undefined;

  constructor(init: CoordinatorMetricsInit) {
    this.#init = init;
    this.metrics = new SwarmMetrics({
      config: init.config,
      process: `coordinator-${init.region}`,
      region: init.region,
    });
    this.#recorder = new SwarmRecorder(this.metrics);
    const registers = [this.metrics.registry];
    this.#timeouts = new client.Counter({
      name: `${metricPrefix}consensus_timeouts_total`,
      help: "Times this coordinator timed out of a view (no progress within the view timeout)",
      registers,
    });
    this.#rejected = new client.Counter({
      name: `${metricPrefix}consensus_rejected_messages_total`,
      help: "Messages and frames this coordinator rejected, by reason (the full text is in its log)",
      labelNames: ["reason"],
      registers,
    });
    this.#evidence = new client.Counter({
      name: `${metricPrefix}consensus_evidence_total`,
      help: "Byzantine evidence this coordinator saw (equivocation, conflicting votes or checkpoints), by accused replica's region; the records are in `coordinator status`",
      labelNames: ["against"],
      registers,
    });
    this.#fsyncs = new client.Counter({
      name: `${metricPrefix}consensus_wal_fsyncs_total`,
      help: "fsync calls of this coordinator's write-ahead log (one before each vote and reply batch)",
      registers,
    });
    this.#backend = new client.Gauge({
      name: `${metricPrefix}consensus_signature_backend_info`,
      help: "1 for the backend that signs and verifies this coordinator's ML-DSA-65 signatures (pqclean-native, pqclean-wasm or noble)",
      labelNames: ["backend"],
      registers,
    });
    this.metrics.addCollector(() => this.refresh());
    const target =
      (init.push ?? init.config.profile === "production")
        ? pushTargetFromConfig(init.config)
        : null;
    this.push = target
      ? new PushLoop({
          target,
          metrics: this.metrics,
          job: "moe_swarm",
          ...(init.log ? { log: init.log } : {}),
          ...(init.pushRetryDelaySeconds
            ? {
                retryDelaySecondsMin: init.pushRetryDelaySeconds.min,
                retryDelaySecondsMax: init.pushRetryDelaySeconds.max,
              }
            : {}),
        })
      : null;
  }

  /** Reads the replica's status into the gauges and counters (runs before every scrape). */
  refresh(): void {
    const status = this.#init.source.status();
    this.#recorder.recordConsensus(status, {
      region: this.#init.region,
      gpuType: coordinatorGpuLabel,
      algorithm: this.#init.config.consensus.algorithm,
    });
    const fsyncs = this.#init.source.walFsyncs();
    if (fsyncs > this.#fsyncsSeen) this.#fsyncs.inc(fsyncs - this.#fsyncsSeen);
    this.#fsyncsSeen = fsyncs;
    const backend = this.#init.source.signatureBackend?.();
    if (backend !== undefined) {
      this.#backend.reset();
      this.#backend.set({ backend }, 1);
    }
  }

  // ---- CoordinatorObserver (src/consensus/node.ts) -----------------------------------------------

  event(e: { readonly kind: string; readonly reason?: string; readonly against?: number }): void {
    if (e.kind === "reject") this.#rejected.inc({ reason: rejectReasonLabel(e.reason ?? "") });
    else if (e.kind === "timeout") this.#timeouts.inc();
    else if (e.kind === "evidence" && e.against !== undefined)
      this.#evidence.inc({ against: coordinatorRegions[e.against] ?? String(e.against) });
  }

  committed(block: { readonly timestampMs: number }, nowMs: number): void {
    // A leader clock ahead of ours (bounded by the replica's clock-skew check) reads as 0, not < 0.
    this.metrics.recordCommit(Math.max(0, nowMs - block.timestampMs) / 1000, "proposal");
  }

  requestCommitted(ms: number): void {
    this.metrics.recordCommit(Math.max(0, ms) / 1000, "request");
  }

  // ---- HTTP ------------------------------------------------------------------------------------

  /**
   * Serves GET /metrics on `host:port` (0: any free port) and starts the Pushgateway loop when
   * one is configured; resolves with the URL.
   */
  async serve(host: string, port: number): Promise<{ url: string; port: number }> {
    const server = createServer(routeAll([metricsRoute(this.metrics)]));
    server.on("clientError", (_err, socket) => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.#server = server;
    this.push?.start();
    const actual = (server.address() as AddressInfo).port;
    return { url: `http://${host}:${actual}/metrics`, port: actual };
  }

  async close(): Promise<void> {
    await this.push?.stop();
    const server = this.#server;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  }
}
