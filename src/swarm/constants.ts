// Limits and defaults of the swarm data plane, in one place (TigerBeetle's constants.zig habit):
// every bound a peer's input is checked against, and every timing the dispatcher starts from before
// it has measured anything. Units are last in names. Relations between limits are asserted below,
// once, at load.

import { invariant } from "../common/assert.ts";

/** Wire protocol version; a frame with another version gets an UNSUPPORTED_VERSION error reply. */
export const wireVersion = 1;
/** "MOEW" as four ASCII bytes read as a little-endian u32. */
export const wireMagic = 0x57454f4d;

/** Largest frame (after the 4-byte length prefix) a node or client accepts. */
export const frameBytesMax = 64 * 1024 * 1024;
/** Bytes of the fixed header after the length prefix (magic .. region). */
export const frameHeaderBytes = 24;
/** Most dimensions of one tensor. */
export const tensorDimsMax = 4;
/** Most tensors in one frame (training state: weights, m and v of w1, b1, w2, b2 = 12). */
export const frameTensorsMax = 16;
/** Most tokens (rows) in one request. */
export const requestTokensMax = 65_536;
/** Largest model width (columns) a node accepts. */
export const modelWidthMax = 65_536;
/** Most expert ids in one frame (gradSquaredNorm / applyUpdate name many). */
export const frameExpertIdsMax = 4096;
/** Most f64 scalars in one frame. */
export const frameScalarsMax = 32;
/** Longest W3C traceparent we carry (version 00 is 55 characters). */
export const traceparentBytesMax = 128;
/** Longest text (error message) in one frame. */
export const frameTextBytesMax = 4096;

/**
 * Most experts in one grouped forward frame (one tensor and one weight version per expert). The
 * dispatcher sends one frame per node per MoE dispatch round instead of one per expert.
 */
export const forwardGroupExpertsMax = frameTensorsMax;
/**
 * A dispatch round adds an expert to a node's group only while the group holds fewer tokens than
 * this: small calls are dominated by the per-frame cost (a process wake-up and a round trip), so
 * they ride together on as few nodes as possible; large ones are spread so nodes compute in parallel.
 */
export const groupTokensMax = 512;
/**
 * A replica already in this round's plan is preferred to the best one when its expected latency
 * (with in-flight load) is within this factor of the best: joining a frame costs nothing, a frame
 * to one more node costs a round trip. Replicas behind an emulated WAN link are never within it.
 */
export const groupAffinitySlack = 1.5;
/** Tokens a node merges into one expert call when concurrent requests for the same expert queue. */
export const batchTokensMax = 8192;
/** Requests a node queues across all experts before answering OVERLOADED. */
export const nodeQueueRequestsMax = 4096;
/** Concurrent requests one client connection may have in flight. */
export const clientInflightMax = 4096;

/** TCP connect timeout to a node. Petals added a 5 s connect timeout for faster retries; ours is
 * loopback or a regional link, so a second is already generous. */
export const connectTimeoutMs = 1000;
/** Latency samples kept per node for the p95 / p99 estimates. */
export const latencyWindowSamples = 64;
/** Samples needed before the p95 is trusted for hedging and deadlines. */
export const latencySamplesMin = 8;
/** Per-attempt deadline = this × recent p99, clamped to the bounds below. */
export const deadlineP99Multiplier = 4;
export const attemptDeadlineMsMin = 50;
/**
 * Floor of a write's (backward, applyUpdate, importState) attempt deadline. A write waits for every
 * replica anyway, so its deadline only has to catch a hung node; one missed by a node that was
 * merely slow makes that replica stale until a resync, so it is far from the read floor.
 */
export const writeDeadlineMsMin = 1000;
export const attemptDeadlineMsMax = 30_000;
/** Before any sample: the attempt deadline is the emulated RTT plus this much compute time. */
export const computeBudgetMsPrior = 2000;
/** Hedge after max(recent p95, this floor) so that a fast link does not hedge every request. */
export const hedgeDelayMsMin = 2;
/** Each call in flight to a node adds this fraction of its median latency to its expected latency
 * (less than 1: the node batches concurrent calls, so a queued call costs less than a full one). */
export const inflightLatencyWeight = 0.25;
/** Unhealthy nodes are probed again after this, doubling per failure up to the max. */
export const probeIntervalMsMin = 100;
export const probeIntervalMsMax = 5000;
/**
 * `moe-swarm gateway` pings every node this often (one tiny frame each), so a node that died while
 * no request needed it is shown down (dashboard, /metrics, /readyz) within this time, and its load
 * report stays fresh.
 */
export const healthProbeIntervalMs = 2000;
/** Consecutive failures (errors or deadlines) that mark a node unhealthy. */
export const failuresToMarkUnhealthy = 1;
/** Total attempts of one call across replicas before it fails. */
export const callAttemptsMax = 6;

invariant(
  frameHeaderBytes + traceparentBytesMax + frameTextBytesMax < frameBytesMax,
  "header fits",
);
invariant(batchTokensMax <= requestTokensMax, "a merged batch is a legal request");
invariant(
  forwardGroupExpertsMax <= frameTensorsMax && forwardGroupExpertsMax <= frameScalarsMax,
  "a grouped forward's tensors and weight versions fit in one frame",
);
invariant(groupAffinitySlack >= 1, "affinity never prefers a slower replica by less than 1×");
invariant(attemptDeadlineMsMin < attemptDeadlineMsMax, "deadline bounds are ordered");
invariant(
  attemptDeadlineMsMin <= writeDeadlineMsMin && writeDeadlineMsMin < attemptDeadlineMsMax,
  "write deadline floor within the bounds",
);
invariant(probeIntervalMsMin <= probeIntervalMsMax, "probe bounds are ordered");
invariant(latencySamplesMin <= latencyWindowSamples, "the window holds the minimum sample count");
