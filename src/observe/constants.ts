// Limits and defaults of the observability layer, in one place (TigerBeetle's constants file):
// every buffer is bounded, every rate is capped, and relations between them are asserted once at
// load. Units are last in the names.

import { invariant } from "../common/assert.ts";

/** Prefix of every metric this project defines (Prometheus naming: one namespace per product). */
export const metricPrefix = "moe_swarm_";

/** Request-latency buckets (seconds): 1 ms … 30 s, roughly ×2.5 per bucket. */
export const requestDurationBucketsSeconds = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
] as const;

/** Expert-call latency buckets (seconds): one remote expert call, 100 µs … 5 s. */
export const expertCallDurationBucketsSeconds = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5,
] as const;

/** Consensus commit latency buckets (seconds): proposal to commit, 1 ms … 30 s. */
export const commitLatencyBucketsSeconds = [
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
] as const;

/**
 * Buckets appended to the spec's expert_coherence_time buckets (10 ns … 10 µs), in seconds, in the
 * spec's own 1-5-10 steps up to 10 s: real coherence times (first to last replica ack of a weight
 * version) are milliseconds, which the spec's buckets put in +Inf (metrics.ts coherenceBuckets).
 */
export const coherenceBucketsExtensionSeconds = [
  5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1, 5, 10,
] as const;

/** Recent request latencies kept for the dashboard's live p50/p99 (a ring; oldest overwritten). */
export const latencyWindowSamplesMax = 4096;
/** The dashboard's request rate and p50/p99 look at this much recent history. */
export const latencyWindowSeconds = 10;
/** Points of the training-loss curve kept; when full, every other point is dropped (halving). */
export const lossCurvePointsMax = 512;
/** Events (failover, view change, canary step) kept for a client that connects later. */
export const recentEventsMax = 64;

/** Finished spans kept in the in-process trace ring buffer. */
export const traceSpansMax = 4096;
/** Remote services (expert nodes) whose span resource the gateway keeps built. */
export const remoteResourcesMax = 1024;
/** Traces returned by one `/api/traces` call. */
export const tracesListedMax = 50;
/** Attributes kept per span in the ring buffer (the rest are dropped and counted). */
export const spanAttributesMax = 32;
/** Largest OTLP/HTTP JSON body the in-process receiver accepts. */
export const otlpBodyBytesMax = 4 * 1024 * 1024;
/** Spans accepted in one OTLP request. */
export const otlpSpansPerRequestMax = 8192;

/** The live feed never sends snapshots faster than this. */
export const feedSnapshotIntervalSecondsMin = 0.1;
/** Default period of live-feed snapshots. */
export const feedSnapshotIntervalSeconds = 0.5;
/** A client whose unsent bytes exceed this gets no new messages: snapshots coalesce, events queue. */
export const feedClientBufferedBytesMax = 256 * 1024;
/** Events queued per slow client; beyond it the oldest are dropped and counted. */
export const feedClientEventsQueuedMax = 256;
/** A client that stays over its buffer limit this long is disconnected. */
export const feedClientStalledSecondsMax = 30;
/** Clients connected to one live feed at once; more are refused with close code 1013. */
export const feedClientsMax = 64;
/** Largest message a client may send (clients only send pings; anything larger closes it). */
export const feedClientMessageBytesMax = 1024;

/** Pushgateway: first retry delay, cap, and per-request timeout. */
export const pushRetryDelaySecondsMin = 1;
export const pushRetryDelaySecondsMax = 60;
export const pushTimeoutSeconds = 5;
export const pushIntervalSecondsDefault = 15;

/** Live-feed failover events: at most one per failing node and reason in this period (all are counted). */
export const failoverEventIntervalSeconds = 1;

invariant(latencyWindowSamplesMax > 0, "latency window must hold samples");
invariant(feedSnapshotIntervalSeconds >= feedSnapshotIntervalSecondsMin, "snapshot period too low");
invariant(pushRetryDelaySecondsMin <= pushRetryDelaySecondsMax, "push retry bounds reversed");
invariant(tracesListedMax <= traceSpansMax, "cannot list more traces than spans are kept");
