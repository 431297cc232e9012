// The swarm's Prometheus metrics: one prom-client registry per process, names by Prometheus
// conventions (https://prometheus.io/docs/practices/naming/): prefix `moe_swarm_`, base units
// (seconds, bytes, ratios), `_total` on counters, the unit as the last word of the name.
//
// The spec's three custom metrics come from config `metrics.custom_metrics` (their type, unit,
// buckets and labels), converted to base units:
//   expert_coherence_time          → moe_swarm_expert_coherence_time_seconds (histogram; the spec's
//                                    10 ns … 10 µs buckets become 1e-8 … 1e-5 s, extended upward to
//                                    10 s, see coherenceBucketsExtensionSeconds): how long the
//                                    replicas of one expert take to agree on a weight version;
//   gradient_entanglement_fidelity → moe_swarm_gradient_entanglement_fidelity_ratio (gauge):
//                                    cosine(true gradient, communicated gradient);
//   swarm_consensus_rounds         → moe_swarm_consensus_rounds_total{region,gpu_type,algorithm}
//                                    (a leading `swarm_` is not repeated after the namespace).
// Any other custom metric in the config is created the same way and reachable by `custom(name)`.
//
// Every recording function is typed and cheap (a label lookup and an add); they also feed the
// dashboard's bounded state (dashboard-state.ts), so the page and `/metrics` show the same events.

import client from "prom-client";
import { invariant } from "../common/assert.ts";
import type { SwarmConfig } from "../config/schema.ts";
import {
  BoundHistogram,
  type CounterChild,
  type HistogramChild,
  PendingCounter,
} from "./bound-metrics.ts";
import {
  coherenceBucketsExtensionSeconds,
  commitLatencyBucketsSeconds,
  expertCallDurationBucketsSeconds,
  metricPrefix,
  requestDurationBucketsSeconds,
} from "./constants.ts";
import {
  type CommitLatencyView,
  type DashboardSnapshot,
  DashboardState,
  type EvidenceView,
  type SwarmEvent,
} from "./dashboard-state.ts";

type CustomMetricConfig = SwarmConfig["metrics"]["custom_metrics"][number];

/** A custom metric in the config that cannot be built; the message names the key to change. */
export class MetricsConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MetricsConfigError";
  }
}

const unitDivisor: Record<NonNullable<CustomMetricConfig["unit"]>, number> = {
  nanoseconds: 1e9,
  microseconds: 1e6,
  milliseconds: 1e3,
  seconds: 1,
  ratio: 1,
  bytes: 1,
};
const unitSuffix: Record<NonNullable<CustomMetricConfig["unit"]>, string> = {
  nanoseconds: "_seconds",
  microseconds: "_seconds",
  milliseconds: "_seconds",
  seconds: "_seconds",
  ratio: "_ratio",
  bytes: "_bytes",
};

/** The Prometheus name of a custom metric from the config (see the header for examples). */
export function customMetricName(
  metric: Pick<CustomMetricConfig, "name" | "type" | "unit">,
): string {
  let base = metric.name.replace(/^swarm_/, "");
  const suffix = metric.unit ? unitSuffix[metric.unit] : "";
  if (suffix && !base.endsWith(suffix)) base += suffix;
  if (metric.type === "counter" && !base.endsWith("_total")) base += "_total";
  return metricPrefix + base;
}

/** Histogram buckets of a custom metric, converted to base units (e.g. ns → s). */
export function customMetricBuckets(metric: CustomMetricConfig): number[] | undefined {
  if (!metric.buckets) return undefined;
  const divisor = metric.unit ? unitDivisor[metric.unit] : 1;
  // Division (not multiplication by 1e-9) keeps 10 ns exactly 1e-8 in binary floating point.
  return metric.buckets.map((b) => b / divisor);
}

const specMetrics = {
  coherence: "expert_coherence_time",
  fidelity: "gradient_entanglement_fidelity",
  rounds: "swarm_consensus_rounds",
} as const;
const roundsLabels = ["region", "gpu_type", "algorithm"] as const;

/**
 * Buckets of expert_coherence_time: the configured ones (the spec's 10 ns … 10 µs) followed by
 * coherenceBucketsExtensionSeconds above the largest. Replicas of one expert acknowledge an update
 * over real network round trips, so measured coherence times are milliseconds: with the spec's
 * buckets alone every observation fell in +Inf and the histogram said nothing.
 */
export function coherenceBuckets(configured: readonly number[] | undefined): number[] {
  const base = configured ?? [];
  const top = base.length > 0 ? Math.max(...base) : 0;
  return [...base, ...coherenceBucketsExtensionSeconds.filter((b) => b > top)];
}
const coherenceHelpNote =
  "; buckets above the spec's 10 µs added because measured times are milliseconds (replica acks cross the network)";

type AnyMetric = client.Counter<string> | client.Gauge<string> | client.Histogram<string>;

export interface SwarmMetricsInit {
  readonly config: SwarmConfig;
  /** This process's name, a default label on every series (e.g. "gateway", "node-ORD-0"). */
  readonly process: string;
  /** This process's region, a default label when given. */
  readonly region?: string;
  /** Also collect prom-client's default process and Node.js runtime metrics (default true). */
  readonly defaultMetrics?: boolean;
  /** Clock for the dashboard state (epoch ms); injectable for tests. */
  readonly now?: () => number;
  /**
   * Feed the dashboard's per-request and per-token windows (default true). An expert node serves
   * no dashboard, only /metrics, so it passes false and its per-frame recorders skip them.
   */
  readonly feedDashboard?: boolean;
}

export type ExpertCallOutcome = "ok" | "error" | "timeout" | "cancelled";
export type FailoverReason = "timeout" | "error" | "node_down";
export type TokenKind = "prompt" | "generated" | "train";
export type CommitLatencySince = "proposal" | "request";

export class SwarmMetrics {
  readonly registry: client.Registry;
  readonly dashboard: DashboardState;
  readonly #feedDashboard: boolean;
  readonly #custom = new Map<string, { metric: AnyMetric; config: CustomMetricConfig }>();
  readonly #eventListeners = new Set<(event: SwarmEvent) => void>();
  readonly #process: string;

  // The spec's custom metrics.
  readonly #coherence: client.Histogram<string>;
  readonly #fidelity: client.Gauge<string>;
  readonly #rounds: client.Counter<string>;
  readonly #roundsLabels: readonly string[];
  // Operational metrics.
  // Per-call series (a request, a wire frame, an expert call, tokens) are bound once (bound-metrics.ts).
  readonly #requests = new PendingCounter<"route" | "status">(["route", "status"]);
  readonly #requestSeconds: BoundHistogram<"route">;
  readonly #tokens = new PendingCounter<"kind">(["kind"]);
  readonly #activations: client.Counter<"tier" | "layer" | "expert">;
  readonly #dropped: client.Counter<"tier" | "layer">;
  readonly #expertCallSeconds: BoundHistogram<"region" | "outcome">;
  readonly #failovers: client.Counter<"tier" | "reason">;
  readonly #hedges: client.Counter<"tier">;
  readonly #nodeUp: client.Gauge<"node" | "node_region">;
  readonly #nodeExperts: client.Gauge<"node" | "node_region">;
  readonly #linkLatency: client.Gauge<"source_region" | "target_region">;
  readonly #consensusView: client.Gauge<string>;
  readonly #consensusHeight: client.Gauge<string>;
  readonly #consensusViewChanges: client.Counter<string>;
  readonly #commitSeconds: client.Histogram<"since">;
  readonly #checkpointBytes: client.Gauge<"level">;
  readonly #checkpoints: client.Counter<"level">;
  readonly #trainingLoss: client.Gauge<string>;
  readonly #trainingSteps: client.Counter<string>;
  readonly #canaryWeight: client.Gauge<string>;
  readonly #events: client.Counter<"kind">;
  /** Label values per layer, computed once so the hot path does no string building. */
  readonly #layerLabels: { tier: string; layer: string }[];
  readonly #collectors: (() => void)[] = [];
  #statusViewSeen: number | undefined;
  readonly #routes = new Map<string, (status: number, seconds: number) => void>();
  readonly #tokenChildren: Record<TokenKind, CounterChild>;
  readonly #expertLabels: string[];

  constructor(init: SwarmMetricsInit) {
    const { config } = init;
    this.#process = init.process;
    this.registry = new client.Registry();
    const defaults: Record<string, string> = { process: init.process };
    if (init.region) defaults.region = init.region;
    this.registry.setDefaultLabels(defaults);
    if (init.defaultMetrics ?? true) client.collectDefaultMetrics({ register: this.registry });
    this.dashboard = new DashboardState(config, init.process, init.now);
    this.#feedDashboard = init.feedDashboard ?? true;
    const registers = [this.registry];

    // --- the spec's custom metrics, from config -----------------------------------------------
    config.metrics.custom_metrics.forEach((metric, i) => {
      const key = `metrics.custom_metrics[${i}]`;
      const name = customMetricName(metric);
      if (this.#custom.has(metric.name) || this.registry.getSingleMetric(name)) {
        throw new MetricsConfigError(
          `${key}.name: expected a unique metric; got "${metric.name}" twice`,
        );
      }
      const labelNames = metric.labels ?? [];
      if (labelNames.includes("process")) {
        throw new MetricsConfigError(
          `${key}.labels: "process" is set on every series by the exporter; remove it`,
        );
      }
      const coherence = metric.name === specMetrics.coherence && metric.type === "histogram";
      const help = `spec custom metric ${metric.name}${metric.unit ? ` (configured in ${metric.unit}, exported in base units)` : ""}${coherence ? coherenceHelpNote : ""}`;
      let built: AnyMetric;
      if (metric.type === "histogram") {
        const buckets = coherence
          ? coherenceBuckets(customMetricBuckets(metric))
          : customMetricBuckets(metric);
        built = new client.Histogram({
          name,
          help,
          labelNames,
          registers,
          ...(buckets ? { buckets } : {}),
        });
      } else if (metric.type === "gauge") {
        if (metric.buckets)
          throw new MetricsConfigError(`${key}.buckets: a gauge has no buckets; remove the key`);
        built = new client.Gauge({ name, help, labelNames, registers });
      } else {
        if (metric.buckets)
          throw new MetricsConfigError(`${key}.buckets: a counter has no buckets; remove the key`);
        built = new client.Counter({ name, help, labelNames, registers });
      }
      this.#custom.set(metric.name, { metric: built, config: metric });
    });
    const spec = <T extends AnyMetric>(
      specName: string,
      type: CustomMetricConfig["type"],
      fallback: CustomMetricConfig,
    ): [T, CustomMetricConfig] => {
      let entry = this.#custom.get(specName);
      if (!entry) {
        // Not in the config: build it with the spec's own definition so recorders always work.
        const name = customMetricName(fallback);
        const coherence = specName === specMetrics.coherence;
        const help = `spec custom metric ${specName}${coherence ? coherenceHelpNote : ""}`;
        const labelNames = fallback.labels ?? [];
        const buckets = coherence
          ? coherenceBuckets(customMetricBuckets(fallback))
          : customMetricBuckets(fallback);
        const metric: AnyMetric =
          type === "histogram"
            ? new client.Histogram({
                name,
                help,
                labelNames,
                registers,
                ...(buckets ? { buckets } : {}),
              })
            : type === "gauge"
              ? new client.Gauge({ name, help, labelNames, registers })
              : new client.Counter({ name, help, labelNames, registers });
        entry = { metric, config: fallback };
        this.#custom.set(specName, entry);
      }
      if (entry.config.type !== type) {
        const i = config.metrics.custom_metrics.findIndex((m) => m.name === specName);
        throw new MetricsConfigError(
          `metrics.custom_metrics[${i}].type: the spec's ${specName} is a ${type}; got "${entry.config.type}"`,
        );
      }
      return [entry.metric as T, entry.config];
    };
    [this.#coherence] = spec<client.Histogram<string>>(specMetrics.coherence, "histogram", {
      name: specMetrics.coherence,
      type: "histogram",
      unit: "nanoseconds",
      buckets: [10, 50, 100, 500, 1000, 5000, 10000],
    });
    const [fidelity, fidelityConfig] = spec<client.Gauge<string>>(specMetrics.fidelity, "gauge", {
      name: specMetrics.fidelity,
      type: "gauge",
      unit: "ratio",
    });
    this.#fidelity = fidelity;
    // No gradient is compressed or measured until a caller records one (none does yet): the gauge
    // says "no data" (NaN, as Prometheus prints an empty summary) rather than a made-up 0.
    if ((fidelityConfig.labels ?? []).length === 0) fidelity.set(Number.NaN);
    const [rounds, roundsConfig] = spec<client.Counter<string>>(specMetrics.rounds, "counter", {
      name: specMetrics.rounds,
      type: "counter",
      labels: [...roundsLabels],
    });
    this.#rounds = rounds;
    this.#roundsLabels = roundsConfig.labels ?? [];
    for (const label of this.#roundsLabels) {
      if (!(roundsLabels as readonly string[]).includes(label)) {
        const i = config.metrics.custom_metrics.findIndex((m) => m.name === specMetrics.rounds);
        throw new MetricsConfigError(
          `metrics.custom_metrics[${i}].labels: expected labels among ${roundsLabels.join(", ")}; got "${label}"`,
        );
      }
    }

    // --- operational metrics -------------------------------------------------------------------
    const p = metricPrefix;
    const requests = this.#requests;
    requests.attach(
      new client.Counter({
        name: `${p}requests_total`,
        help: "HTTP requests served, by route and status code class",
        labelNames: ["route", "status"],
        registers,
        collect: () => requests.flush(),
      }),
    );
    this.#requestSeconds = new BoundHistogram({
      name: `${p}request_duration_seconds`,
      help: "Time from request received to response finished",
      labelNames: ["route"],
      buckets: requestDurationBucketsSeconds,
      registers,
    });
    const tokens = this.#tokens;
    tokens.attach(
      new client.Counter({
        name: `${p}tokens_total`,
        help: "Tokens processed (rate() gives tokens per second), by kind: prompt, generated, train",
        labelNames: ["kind"],
        registers,
        collect: () => tokens.flush(),
      }),
    );
    this.#activations = new client.Counter({
      name: `${p}expert_activations_total`,
      help: "Tokens routed to each expert, by tier, global MoE layer and expert",
      labelNames: ["tier", "layer", "expert"],
      registers,
    });
    this.#dropped = new client.Counter({
      name: `${p}expert_dropped_tokens_total`,
      help: "Tokens dropped because the chosen experts were over capacity",
      labelNames: ["tier", "layer"],
      registers,
    });
    this.#tokenChildren = {
      prompt: tokens.child({ kind: "prompt" }),
      generated: tokens.child({ kind: "generated" }),
      train: tokens.child({ kind: "train" }),
    };
    this.#expertCallSeconds = new BoundHistogram({
      name: `${p}expert_call_duration_seconds`,
      help: "Remote expert call latency, by the serving node's region and outcome",
      labelNames: ["region", "outcome"],
      buckets: expertCallDurationBucketsSeconds,
      registers,
    });
    this.#failovers = new client.Counter({
      name: `${p}replica_failovers_total`,
      help: "Expert calls retried on another replica, by tier and reason",
      labelNames: ["tier", "reason"],
      registers,
    });
    this.#hedges = new client.Counter({
      name: `${p}hedged_requests_total`,
      help: "Hedged duplicate expert calls sent to a second replica",
      labelNames: ["tier"],
      registers,
    });
    this.#nodeUp = new client.Gauge({
      name: `${p}node_up`,
      help: "1 when an expert node answers its health check, else 0",
      labelNames: ["node", "node_region"],
      registers,
    });
    this.#nodeExperts = new client.Gauge({
      name: `${p}node_experts`,
      help: "Experts hosted by a node",
      labelNames: ["node", "node_region"],
      registers,
    });
    this.#linkLatency = new client.Gauge({
      name: `${p}region_link_rtt_seconds`,
      help: "Median round-trip time of calls from one region to another (includes the callee's service time)",
      labelNames: ["source_region", "target_region"],
      registers,
    });
    this.#consensusView = new client.Gauge({
      name: `${p}consensus_view`,
      help: "Current BFT view number",
      registers,
    });
    this.#consensusHeight = new client.Gauge({
      name: `${p}consensus_height`,
      help: "Height of the last committed block",
      registers,
    });
    this.#consensusViewChanges = new client.Counter({
      name: `${p}consensus_view_changes_total`,
      help: "View changes seen (leader replaced after a timeout)",
      registers,
    });
    this.#commitSeconds = new client.Histogram({
      name: `${p}consensus_commit_latency_seconds`,
      help: "Commit latency at a coordinator, per committed block since=proposal (the leader's proposal timestamp to the commit here; across machines it includes their clock offset) and per committed request since=request (its arrival at this coordinator to its commit)",
      labelNames: ["since"],
      buckets: [...commitLatencyBucketsSeconds],
      registers,
    });
    this.#checkpointBytes = new client.Gauge({
      name: `${p}checkpoint_size_bytes`,
      help: "Size of the last checkpoint written, by storage level",
      labelNames: ["level"],
      registers,
    });
    this.#checkpoints = new client.Counter({
      name: `${p}checkpoints_total`,
      help: "Checkpoints written, by storage level",
      labelNames: ["level"],
      registers,
    });
    this.#trainingLoss = new client.Gauge({
      name: `${p}training_loss`,
      help: "Cross-entropy loss of the last training step (nats per token)",
      registers,
    });
    this.#trainingSteps = new client.Counter({
      name: `${p}training_steps_total`,
      help: "Optimizer steps taken",
      registers,
    });
    this.#canaryWeight = new client.Gauge({
      name: `${p}canary_traffic_ratio`,
      help: "Fraction of traffic sent to the canary",
      registers,
    });
    this.#events = new client.Counter({
      name: `${p}events_total`,
      help: "Swarm events (failover, view change, canary step, node up/down, checkpoint)",
      labelNames: ["kind"],
      registers,
    });

    this.#layerLabels = [];
    for (let layer = 0; layer < this.dashboard.layerCount; layer++) {
      const tier = this.dashboard.tierOfLayer(layer);
      invariant(tier, "every layer below layerCount has a tier");
      this.#layerLabels.push({ tier: tier.name, layer: String(layer) });
    }
    const expertsMax = Math.max(
      ...config.expert_topology.hierarchical_layers.map((l) => l.experts_per_region),
    );
    this.#expertLabels = Array.from({ length: expertsMax }, (_, e) => String(e));
  }

  get process(): string {
    return this.#process;
  }

  // --- the spec's custom metrics ----------------------------------------------------------------

  /** Replicas of one expert agreed on a weight version `seconds` after the update was issued. */
  recordCoherenceTime(seconds: number): void {
    if (!(seconds >= 0)) throw new RangeError(`coherence time must be ≥ 0 s; got ${seconds}`);
    this.#coherence.observe(seconds);
  }

  /**
   * Sets the fidelity gauge to cosine(true, communicated) and returns it. Two all-zero vectors
   * are identical (1); one zero vector against a non-zero one shares no direction (0).
   */
  recordGradientFidelity(trueGradient: ArrayLike<number>, communicated: ArrayLike<number>): number {
    if (trueGradient.length !== communicated.length) {
      throw new RangeError(
        `gradient lengths differ: true ${trueGradient.length}, communicated ${communicated.length}`,
      );
    }
    let dot = 0;
    let aa = 0;
    let bb = 0;
    for (let i = 0; i < trueGradient.length; i++) {
      const a = trueGradient[i] as number;
      const b = communicated[i] as number;
      dot += a * b;
      aa += a * a;
      bb += b * b;
    }
    const cosine = aa === 0 && bb === 0 ? 1 : aa === 0 || bb === 0 ? 0 : dot / Math.sqrt(aa * bb);
    const clamped = Math.max(-1, Math.min(1, cosine));
    this.#fidelity.set(clamped);
    this.dashboard.setFidelity(clamped);
    return clamped;
  }

  /** One round of consensus finished (a block proposed and voted on). */
  recordConsensusRound(
    labels: { region: string; gpuType: string; algorithm: string },
    count = 1,
  ): void {
    const all: Record<string, string> = {
      region: labels.region,
      gpu_type: labels.gpuType,
      algorithm: labels.algorithm,
    };
    const values: Record<string, string> = {};
    for (const l of this.#roundsLabels) values[l] = all[l] as string;
    this.#rounds.inc(values, count);
  }

  /** Another custom metric from the config, by its config name. */
  custom(name: string): AnyMetric | undefined {
    return this.#custom.get(name)?.metric;
  }

  // --- requests and tokens ----------------------------------------------------------------------

  /** One HTTP request finished after `seconds` with status code `status`. */
  recordRequest(route: string, status: number, seconds: number): void {
    this.bindRequest(route)(status, seconds);
  }

  /**
   * The recorder of one route's requests, bound once (for per-frame paths such as a node's wire
   * ops): no label lookup per call. Routes must come from a bounded set.
   */
  bindRequest(route: string): (status: number, seconds: number) => void {
    let bound = this.#routes.get(route);
    if (!bound) {
      const duration = this.#requestSeconds.child({ route });
      const byClass = (["2xx", "3xx", "4xx", "5xx"] as const).map((status) =>
        this.#requests.child({ route, status }),
      ) as [CounterChild, CounterChild, CounterChild, CounterChild];
      bound = (status, seconds) => {
        byClass[status >= 500 ? 3 : status >= 400 ? 2 : status >= 300 ? 1 : 0].inc();
        duration.observe(seconds);
        if (this.#feedDashboard) this.dashboard.recordRequest(seconds, status < 500);
      };
      this.#routes.set(route, bound);
    }
    return bound;
  }

  recordTokens(kind: TokenKind, count: number): void {
    this.#tokenChildren[kind].inc(count);
    if (this.#feedDashboard) this.dashboard.recordTokens(count);
  }

  // --- experts ----------------------------------------------------------------------------------

  /** Tokens routed to each expert of global MoE layer `layer` in one batch (`counts[expert]`). */
  recordExpertActivations(layer: number, counts: ArrayLike<number>): void {
    const labels = this.#layerLabels[layer];
    if (!labels)
      throw new RangeError(`MoE layer ${layer} out of range [0, ${this.#layerLabels.length})`);
    for (let e = 0; e < counts.length; e++) {
      const n = counts[e] as number;
      if (n > 0) {
        this.#activations.inc(
          { tier: labels.tier, layer: labels.layer, expert: this.#expertLabels[e] ?? String(e) },
          n,
        );
      }
    }
    this.dashboard.recordActivations(layer, counts);
  }

  recordDroppedTokens(layer: number, tokens: number): void {
    const labels = this.#layerLabels[layer];
    if (!labels)
      throw new RangeError(`MoE layer ${layer} out of range [0, ${this.#layerLabels.length})`);
    if (tokens > 0) this.#dropped.inc(labels, tokens);
    this.dashboard.recordDropped(layer, tokens);
  }

  recordExpertCall(region: string, outcome: ExpertCallOutcome, seconds: number): void {
    this.bindExpertCall(region)(outcome, seconds);
  }

  /** The expert-call latency recorder of one caller region, bound once (one call per expert call). */
  bindExpertCall(region: string): (outcome: ExpertCallOutcome, seconds: number) => void {
    const children: Record<ExpertCallOutcome, HistogramChild> = {
      ok: this.#expertCallSeconds.child({ region, outcome: "ok" }),
      error: this.#expertCallSeconds.child({ region, outcome: "error" }),
      timeout: this.#expertCallSeconds.child({ region, outcome: "timeout" }),
      cancelled: this.#expertCallSeconds.child({ region, outcome: "cancelled" }),
    };
    return (outcome, seconds) => children[outcome].observe(seconds);
  }

  recordFailover(
    f: {
      layer: number;
      expert: number;
      from: string;
      to: string;
      reason: FailoverReason;
    },
    options: { event?: boolean } = {},
  ): void {
    const tier = this.#layerLabels[f.layer]?.tier ?? "unknown";
    this.#failovers.inc({ tier, reason: f.reason });
    this.dashboard.recordFailover();
    // `event: false` counts without a live-feed event (the caller rate-limits events).
    if (options.event !== false)
      this.#emit("failover", `L${f.layer}.E${f.expert}: ${f.from} → ${f.to} (${f.reason})`);
  }

  /** Failovers known only as a count (from the dispatcher's cumulative counters). */
  countFailovers(count: number): void {
    this.#failovers.inc({ tier: "all", reason: "unknown" }, count);
    this.dashboard.recordFailover(count);
    this.#emit(
      "failover",
      `${count} expert call${count === 1 ? "" : "s"} failed over to another replica`,
    );
  }

  /** Hedged calls known only as a count. */
  countHedges(count: number): void {
    this.#hedges.inc({ tier: "all" }, count);
  }

  recordHedge(layer: number): void {
    const tier = this.#layerLabels[layer]?.tier ?? "unknown";
    this.#hedges.inc({ tier });
  }

  // --- nodes and links --------------------------------------------------------------------------

  setNodeHealth(node: {
    id: string;
    region: string;
    up: boolean;
    experts: readonly string[];
    latencyP50Seconds?: number | null;
  }): void {
    const labels = { node: node.id, node_region: node.region };
    const wasUp = this.dashboard.snapshotNodeUp(node.id);
    this.#nodeUp.set(labels, node.up ? 1 : 0);
    this.#nodeExperts.set(labels, node.experts.length);
    this.dashboard.setNode({ ...node, latencyP50Seconds: node.latencyP50Seconds ?? null });
    if (wasUp !== undefined && wasUp !== node.up) {
      this.#emit(
        node.up ? "node_up" : "node_down",
        `${node.id} (${node.region}) is ${node.up ? "up" : "down"}`,
      );
    }
  }

  recordLinkRtt(source: string, target: string, seconds: number): void {
    this.#linkLatency.set({ source_region: source, target_region: target }, seconds);
    this.dashboard.recordLinkRtt(source, target, seconds);
  }

  // --- consensus --------------------------------------------------------------------------------

  setConsensusStatus(status: { leader: string; view: number; height: number }): void {
    this.dashboard.setConsensus(status);
    this.#consensusView.set(status.view);
    this.#consensusHeight.set(status.height);
    // Changes are counted from the first status seen (a commit or latency figure recorded before
    // any status is not a view 0).
    const before = this.#statusViewSeen;
    this.#statusViewSeen = status.view;
    if (before !== undefined && status.view > before) {
      this.#consensusViewChanges.inc(status.view - before);
      this.#emit("view_change", `view ${before} → ${status.view}, leader ${status.leader}`);
    }
  }

  /** A block (since proposal) or a client request (since its arrival) committed. */
  recordCommit(latencySeconds: number, since: CommitLatencySince = "proposal"): void {
    if (!(latencySeconds >= 0))
      throw new RangeError(`commit latency must be ≥ 0 s; got ${latencySeconds}`);
    this.#commitSeconds.observe({ since }, latencySeconds);
    if (since === "proposal") this.dashboard.recordCommit(latencySeconds);
  }

  /** The cluster's commit latency percentiles as the gateway learns them from the coordinators. */
  setCommitLatency(latency: CommitLatencyView): void {
    this.dashboard.setCommitLatency(latency);
  }

  /** Byzantine evidence the coordinators report (the dashboard's evidence panel). */
  setEvidence(evidence: EvidenceView): void {
    this.dashboard.setEvidence(evidence);
  }

  /** Runs `collect` before every exposition (scrape or push): for values read on demand. */
  addCollector(collect: () => void): void {
    this.#collectors.push(collect);
  }

  // --- storage, training, deployments -----------------------------------------------------------

  recordCheckpoint(level: string, bytes: number): void {
    this.#checkpointBytes.set({ level }, bytes);
    this.#checkpoints.inc({ level });
    this.#emit("checkpoint", `${level} checkpoint, ${bytes} bytes`);
  }

  recordTrainingStep(step: number, loss: number): void {
    this.#trainingLoss.set(loss);
    this.#trainingSteps.inc();
    this.dashboard.recordLoss(step, loss);
  }

  recordCanaryStep(stage: number, trafficRatio: number, message: string): void {
    this.#canaryWeight.set(trafficRatio);
    this.#emit(
      "canary_step",
      `stage ${stage}: ${Math.round(trafficRatio * 1000) / 10}% — ${message}`,
    );
  }

  // --- output -----------------------------------------------------------------------------------

  /** Registers a listener for events (the live feed uses it); returns the unsubscribe function. */
  onEvent(listener: (event: SwarmEvent) => void): () => void {
    this.#eventListeners.add(listener);
    return () => this.#eventListeners.delete(listener);
  }

  snapshot(): DashboardSnapshot {
    return this.dashboard.snapshot();
  }

  /** Runs the collectors (values read on demand): before every scrape and every push. */
  collect(): void {
    for (const collect of this.#collectors) collect();
  }

  /** The Prometheus text exposition format (version 0.0.4). */
  async exposition(): Promise<string> {
    this.collect();
    // prom-client 15 prints NaN as "Nan"; the format's spelling is "NaN" (strict parsers need it).
    return (await this.registry.metrics()).replace(/^([^#\n].*) Nan$/gm, "$1 NaN");
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  #emit(kind: SwarmEvent["kind"], message: string): void {
    this.#events.inc({ kind });
    const event = this.dashboard.addEvent(kind, message);
    for (const listener of this.#eventListeners) listener(event);
  }
}
