// The gateway's DispatchObserver (src/swarm/dispatch-observer.ts): what the dispatcher measures as
// it happens becomes spans, metrics and live-feed events.
//   - hedge: a CLIENT span "expert.forward.hedge", child of the expert call span whose context the
//     primary attempt carries, with a span link to that primary ("moe.link": "hedge_of"), so a
//     trace shows both attempts and which one answered; the hedged frames carry the hedge span's
//     traceparent, so the serving node's span hangs under it. Counted per tier.
//   - failover: counted per tier and reason (moe_swarm_replica_failovers_total); a live-feed event
//     at most once per failing node and reason every failoverEventIntervalSeconds, so a dead node
//     under load cannot flood the feed's bounded event list.
//   - coherence: moe_swarm_expert_coherence_time_seconds, the time from the first replica's
//     acknowledgement of an update to the last one's acknowledgement of the same weight version.
//   - node spans: an expert node's spans of a sampled call, returned in its reply frame, become
//     spans of the node's service in this process's tracer (ring buffer, OTLP export).

import { trace } from "@opentelemetry/api";
import { expertKey } from "../model/expert.ts";
import type { DispatchObserver } from "../swarm/dispatch-observer.ts";
import type { WireSpan } from "../swarm/frame-spans.ts";
import type { NodeAddress } from "../swarm/node-client.ts";
import { failoverEventIntervalSeconds } from "./constants.ts";
import type { SwarmMetrics } from "./metrics.ts";
import {
  extractTraceContext,
  type SwarmTracing,
  traceparentOf,
  traceparentSampled,
} from "./tracing.ts";

export interface DispatchObserverInit {
  readonly tracing?: SwarmTracing;
  readonly metrics: SwarmMetrics;
  /** The caller's (gateway's) region, recorded on node spans as `moe.caller_region`. */
  readonly region?: string;
  readonly enabled?: () => boolean;
  readonly nowMs?: () => number;
}

export function metricsDispatchObserver(init: DispatchObserverInit): DispatchObserver {
  const { tracing, metrics } = init;
  const on = () => !init.enabled || init.enabled();
  const now = init.nowMs ?? (() => performance.now());
  const lastEventAtMs = new Map<string, number>();
  const callerAttributes = init.region ? { "moe.caller_region": init.region } : undefined;
  return {
    hedgeStarted({ expert, primaryNode, hedgeNode, traceparent }) {
      if (!on()) return undefined;
      metrics.recordHedge(expert.layer);
      // An unsampled call (flag off) gets no hedge span: the hedged frames carry the call's context.
      if (!tracing || traceparentSampled(traceparent) !== true) return undefined;
      const parent = extractTraceContext(traceparent);
      // The primary attempt carries the call span's context: the hedge links to it.
      const primary = trace.getSpan(parent);
      if (!primary) return undefined;
      const span = tracing.startHedge(parent, primary, "expert.forward.hedge", {
        "moe.expert": expertKey(expert),
        "moe.layer": expert.layer,
        "moe.node": hedgeNode,
        "moe.hedge_of_node": primaryNode,
      });
      if (!span.isRecording()) {
        span.end();
        return undefined;
      }
      return {
        traceparent: traceparentOf(span),
        end(outcome) {
          span.setAttribute("moe.hedge.outcome", outcome);
          span.end();
        },
      };
    },
    failover({ experts, from, to, reason }) {
      if (!on()) return;
      const first = experts[0];
      if (!first) return;
      const key = `${from}|${reason}`;
      const t = now();
      const last = lastEventAtMs.get(key);
      const event = last === undefined || t - last >= failoverEventIntervalSeconds * 1000;
      if (event) lastEventAtMs.set(key, t);
      metrics.recordFailover(
        {
          layer: first.layer,
          expert: first.expert,
          from,
          to:
            to ??
            (experts.length > 1 ? `other replicas (${experts.length} experts)` : "other replicas"),
          reason,
        },
        { event },
      );
    },
    coherence({ seconds }) {
      if (!on()) return;
      metrics.recordCoherenceTime(seconds);
    },
    ...(tracing
      ? {
          nodeSpans(node: NodeAddress, spans: readonly WireSpan[]) {
            tracing.recordRemoteSpans(node.nodeId, spans, {
              resource: { "moe.region": node.region },
              ...(callerAttributes ? { attributes: callerAttributes } : {}),
            });
          },
        }
      : {}),
  };
}
