// Observability for one swarm process in a few calls — what `moe-swarm gateway`, `moe-swarm node`
// and `moe-swarm up` wire in:
//
//   gateway:  const obs = gatewayObservability(cfg, { region: "ORD" });
//             startGateway(cfg, { …, wrapExpertHost: obs.wrapExpertHost });
//             serve obs.instrument(api.handle) + obs.dashboard routes (obs.serve(…)) and
//             obs.startRecorder(gateway) — metrics, traces, dashboard, live feed, OTLP receiver,
//             Pushgateway push when the config names one.
//   node:     const obs = nodeObservability(cfg, { nodeId, region, otlpEndpoint: gateway/v1/traces });
//             new ExpertNode({ …, onRequest: obs.onRequest }); serve obs.routes() for /metrics.
//
// Everything here is composition of the modules beside it; see each for its guarantees.

import type { IncomingMessage, ServerResponse } from "node:http";
import type { SwarmConfig } from "../config/schema.ts";
import type { ExpertHost } from "../model/expert.ts";
import type { DispatchObserver } from "../swarm/dispatch-observer.ts";
import { Dashboard, type ServedDashboard, serveDashboard } from "./dashboard.ts";
import { metricsDispatchObserver } from "./dispatch-observer.ts";
import { expertNodeRequestHook } from "./expert-node-hook.ts";
import { instrumentHandler } from "./http-instrument.ts";
import type { HttpRoute } from "./http-route.ts";
import { SwarmMetrics } from "./metrics.ts";
import { metricsRoute } from "./metrics-http.ts";
import { PushLoop, pushTargetFromConfig } from "./pushgateway.ts";
import {
  type ApiCountersLike,
  type DispatchCountersLike,
  type NodeStatsLike,
  type RoutingStatsLike,
  SwarmRecorder,
} from "./swarm-recorder.ts";
import { TraceRingBuffer } from "./trace-buffer.ts";
import { TracedExpertHost } from "./traced-expert-host.ts";
import { SwarmTracing } from "./tracing.ts";

/** How often the gateway turns the swarm's cumulative counters into metrics. */
export const recorderIntervalSeconds = 0.25;

/** What the recorder reads from a running gateway (src/swarm/gateway.ts RunningGateway). */
export interface ObservedGateway {
  readonly trunk: { routingStats(): readonly RoutingStatsLike[] };
  readonly dispatcher: {
    readonly counters: DispatchCountersLike;
    nodeStats(): readonly NodeStatsLike[];
  };
  readonly api: { readonly counters: ApiCountersLike };
}

export interface GatewayObservability {
  readonly metrics: SwarmMetrics;
  readonly tracing: SwarmTracing;
  readonly traces: TraceRingBuffer;
  readonly dashboard: Dashboard;
  readonly push: PushLoop | null;
  /** For GatewayInit.wrapExpertHost: traces and times each expert call. */
  wrapExpertHost(dispatcher: ExpertHost): ExpertHost;
  /**
   * For GatewayInit.dispatchObserver: hedge spans with links, failovers with their reason,
   * coherence times. When the gateway uses it, pass `{ dispatchObserved: true }` to startRecorder
   * so failovers and hedges are not counted twice.
   */
  readonly dispatchObserver: DispatchObserver;
  /** Wraps the API's request handler: a server span and request metrics per request. */
  instrument(
    handler: (req: IncomingMessage, res: ServerResponse) => void,
  ): (req: IncomingMessage, res: ServerResponse) => void;
  /** Records routing, dispatch and API counters every `recorderIntervalSeconds`. */
  startRecorder(
    gateway: ObservedGateway,
    expertsOf?: (nodeId: string) => readonly string[],
    options?: { dispatchObserved?: boolean },
  ): void;
  /** Records them now (no-op before startRecorder). */
  tick(): void;
  /** One server with the dashboard, /metrics, /v1/traces, /live and `fallback` for the rest. */
  serve(options: {
    host?: string;
    port?: number;
    fallback?: (req: IncomingMessage, res: ServerResponse) => void;
  }): Promise<ServedDashboard>;
  close(): Promise<void>;
}

export interface GatewayObservabilityInit {
  readonly region: string;
  readonly process?: string;
  /** Push to the config's Pushgateway (default: only in the production profile, so local runs
   *  and tests never send metrics off the machine). */
  readonly push?: boolean;
  readonly log?: (message: string) => void;
  /** Runtime switch for spans and metric recording (default: always on). */
  readonly enabled?: () => boolean;
  /** Live-feed tick (default feedSnapshotIntervalSeconds). */
  readonly feedIntervalSeconds?: number;
  /**
   * Fraction of requests traced; nodes follow the gateway's decision. Default: 1 in the local
   * profile (every request inspectable), 0.1 in production, where tracing every expert call of
   * every request costs more CPU than the 3 % budget (bench/observe-overhead.ts).
   */
  readonly traceSampleRatio?: number;
}

export function gatewayObservability(
  config: SwarmConfig,
  init: GatewayObservabilityInit,
): GatewayObservability {
  const enabled = init.enabled;
  const process = init.process ?? "gateway";
  const metrics = new SwarmMetrics({ config, process, region: init.region });
  const traces = new TraceRingBuffer();
  // The gateway keeps its spans in its ring buffer (the dashboard) and also exports them over OTLP
  // when the standard OTEL_EXPORTER_OTLP_* variables name a collector.
  const tracing = new SwarmTracing({
    serviceName: process,
    ringBuffer: traces,
    resource: { "moe.region": init.region },
    sampleRatio: init.traceSampleRatio ?? (config.profile === "production" ? 0.1 : 1),
  });
  const dashboard = new Dashboard({
    metrics,
    traces,
    ...(init.feedIntervalSeconds ? { feed: { intervalSeconds: init.feedIntervalSeconds } } : {}),
  });
  const target =
    (init.push ?? config.profile === "production") ? pushTargetFromConfig(config) : null;
  const push = target
    ? new PushLoop({ target, metrics, ...(init.log ? { log: init.log } : {}) })
    : null;
  push?.start();
  let timer: NodeJS.Timeout | null = null;
  let served: ServedDashboard | null = null;
  let tickNow = () => {};
  return {
    metrics,
    tracing,
    traces,
    dashboard,
    push,
    dispatchObserver: metricsDispatchObserver({
      tracing,
      metrics,
      region: init.region,
      ...(enabled ? { enabled } : {}),
    }),
    wrapExpertHost: (dispatcher) =>
      new TracedExpertHost(dispatcher, {
        tracing,
        metrics,
        region: init.region,
        ...(enabled ? { enabled } : {}),
      }),
    instrument: (handler) =>
      instrumentHandler(handler, { tracing, metrics, ...(enabled ? { enabled } : {}) }),
    startRecorder(gateway, expertsOf, options = {}) {
      const recorder = new SwarmRecorder(metrics);
      // With the dispatch observer in place, failovers and hedges are counted where they happen.
      const observedCounters = { failovers: 0, hedges: 0 };
      const tick = () => {
        if (enabled && !enabled()) return;
        recorder.recordRouting(gateway.trunk.routingStats());
        recorder.recordDispatch(
          options.dispatchObserved ? observedCounters : gateway.dispatcher.counters,
          gateway.dispatcher.nodeStats(),
          init.region,
          expertsOf,
        );
        recorder.recordApi(gateway.api.counters);
      };
      tickNow = tick;
      tick();
      timer = setInterval(tick, recorderIntervalSeconds * 1000);
      timer.unref();
    },
    tick: () => tickNow(),
    async serve(options) {
      served = await serveDashboard(dashboard, options);
      return served;
    },
    async close() {
      if (timer) clearInterval(timer);
      await push?.stop();
      if (served) await served.close();
      else dashboard.close();
      await tracing.shutdown();
    },
  };
}

export interface NodeObservability {
  readonly metrics: SwarmMetrics;
  readonly tracing: SwarmTracing;
  /** For ExpertNodeInit.onRequest. */
  readonly onRequest: ReturnType<typeof expertNodeRequestHook>;
  /** `/metrics`, to mount on a small HTTP server beside the node's wire port. */
  routes(): HttpRoute[];
  close(): Promise<void>;
}

export interface NodeObservabilityInit {
  readonly nodeId: string;
  readonly region: string;
  /** OTLP/HTTP traces endpoint (the gateway's /v1/traces); undefined: the OTEL_* variables. */
  readonly otlpEndpoint?: string | null;
  /** OTLP batch delay (default 1 s, so the dashboard shows node spans about a second later). */
  readonly otlpScheduledDelayMs?: number;
  readonly push?: boolean;
  readonly enabled?: () => boolean;
}

export function nodeObservability(
  config: SwarmConfig,
  init: NodeObservabilityInit,
): NodeObservability {
  // A node serves /metrics only (no dashboard): its per-frame recorders skip the dashboard windows.
  const metrics = new SwarmMetrics({
    config,
    process: init.nodeId,
    region: init.region,
    feedDashboard: false,
  });
  const tracing = new SwarmTracing({
    serviceName: init.nodeId,
    resource: { "moe.region": init.region },
    // Node spans take their parent from the frame's traceparent; no active-span context needed.
    activeContext: false,
    otlpScheduledDelayMs: init.otlpScheduledDelayMs ?? 1000,
    ...(init.otlpEndpoint !== undefined ? { otlpEndpoint: init.otlpEndpoint } : {}),
  });
  const target =
    (init.push ?? config.profile === "production") ? pushTargetFromConfig(config) : null;
  const push = target ? new PushLoop({ target, metrics }) : null;
  push?.start();
  return {
    metrics,
    tracing,
    onRequest: expertNodeRequestHook({
      nodeId: init.nodeId,
      tracing,
      metrics,
      ...(init.enabled ? { enabled: init.enabled } : {}),
    }),
    routes: () => [metricsRoute(metrics)],
    async close() {
      await push?.stop();
      await tracing.shutdown();
    },
  };
}
