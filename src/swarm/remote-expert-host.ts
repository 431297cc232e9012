// The dispatcher: an `ExpertHost` whose experts live on remote expert nodes, so the model runs
// unchanged with its experts in the swarm (hivemind's RemoteExpert idea, one level up).
//
// Reads (forward) go to one replica: the healthy one with the lowest recent median latency (before
// any sample: the lowest emulated RTT). If it has not answered after its node's recent p95 (over
// forward frames of its own size class: experts and rows by powers of 2), the same request is hedged to the next replica and the first answer wins ("The Tail at Scale", Dean
// & Barroso 2013) — whatever that replica's distance: a call stuck on a node that just died is
// answered one round trip to the replica after the p95, not after the kernel has closed the dead
// process's sockets (10–40 ms for an expert node here, bench/swarm-throughput.ts).
// A dispatch round's calls go as one frame per node (#forwardGroup); the calls of a slow group are
// hedged together, one frame per replica node they are planned onto, and each call fails over on
// its own. On an error, a closed connection or a missed deadline the next replica
// is tried at once (failover) and the node is marked unhealthy; a background probe with exponential backoff marks it healthy again.
// Attempt deadlines adapt: a multiple of the node's recent p99 for that op (forward, backward,
// applyUpdate, ... each has its own latency window, so a grouped update is not judged by forward
// latencies), clamped, never more than what is left of the caller's deadline.
//
// Writes keep replicas identical: backward (which accumulates parameter gradients on the host) and
// applyUpdate go to every replica of the expert, and need one success. A replica that missed a
// write, or answers with an older weight version than the others, is stale and no longer read from.
// Experts are deterministic given weights and input, so replicas that saw the same writes agree
// bit for bit.

import { invariant } from "../common/assert.ts";
import {
  type ExpertCallContext,
  type ExpertHost,
  type ExpertId,
  type ExpertTrainingState,
  type ExpertUpdate,
  expertKey,
} from "../model/expert.ts";
import {
  attemptDeadlineMsMax,
  attemptDeadlineMsMin,
  batchTokensMax,
  callAttemptsMax,
  computeBudgetMsPrior,
  deadlineP99Multiplier,
  forwardGroupExpertsMax,
  groupAffinitySlack,
  groupTokensMax,
  hedgeDelayMsMin,
  inflightLatencyWeight,
  probeIntervalMsMax,
  probeIntervalMsMin,
  writeDeadlineMsMin,
} from "./constants.ts";
import {
  type DispatchFailoverReason,
  type DispatchObserver,
  type HedgeHandle,
  spanSinkOf,
} from "./dispatch-observer.ts";
import {
  DeadlineError,
  NodeUnavailableError,
  NoReplicaError,
  RemoteCallError,
  WireErrorCode,
} from "./errors.ts";
import { type ExpertWeights, type NodeLoad, nodeLoadFields } from "./expert-node.ts";
import { type Frame, Op, type WireTensor } from "./frame.ts";
import { LatencyWindow } from "./latency-window.ts";
import { type NodeAddress, NodeClient } from "./node-client.ts";
import type { PlacementRegistry } from "./placement.ts";
import { directLinks, type RegionLinks } from "./region-links.ts";
import { DispatchCounters, type NodeStats } from "./swarm-stats.ts";

export interface RemoteExpertHostInit {
  readonly registry: PlacementRegistry;
  /** Region of the caller (the gateway), for the emulated links and the latency prior. */
  readonly region: string;
  readonly dModel: number;
  readonly links?: RegionLinks;
  /** Hedge slow reads to a second replica (default true). */
  readonly hedging?: boolean;
  /** Coalesce same-turn forward calls for one expert into one wire call (default true). */
  readonly coalesce?: boolean;
  readonly nowMs?: () => number;
  /** Told about hedges, failovers and update coherence as they happen (issue #8's metrics). */
  readonly observer?: DispatchObserver;
}

interface ForwardPart {
  readonly x: Float32Array;
  readonly tokens: number;
  readonly ctx: ExpertCallContext | undefined;
  readonly resolve: (y: Float32Array) => void;
  readonly reject: (e: unknown) => void;
}

/** A forward call after coalescing: one expert's rows, settled once. */
interface ForwardCall {
  readonly id: ExpertId;
  readonly x: Float32Array;
  readonly tokens: number;
  readonly ctx: ExpertCallContext | undefined;
  readonly resolve: (y: Float32Array) => void;
  readonly reject: (e: unknown) => void;
}

/** Where a read starts: the planned replica first, or every replica but one (and why). */
interface ReadRoute {
  /** Try this replica first (the round's plan chose it). */
  readonly first?: NodeState | undefined;
  /** Never this replica (its group frame failed, or it is being hedged). */
  readonly exclude?: NodeState;
  /** The read is a hedge of a group frame sent to this node. */
  readonly hedgeOf?: NodeState;
  /** Size class of the forward frame (#frameClass): its hedge delay comes from frames like it. */
  readonly frameClass?: number;
}

/**
 * One context for a call made on behalf of several callers: it lives as long as the latest
 * caller's deadline and is aborted only when every caller has aborted. `dispose` drops listeners.
 */
function mergeContexts(ctxs: readonly (ExpertCallContext | undefined)[]): {
  ctx: ExpertCallContext;
  dispose: () => void;
} {
  const deadlines = ctxs.map((c) => c?.deadlineMs);
  const deadlineMs = deadlines.some((t) => t === undefined)
    ? undefined
    : Math.max(...(deadlines as number[]));
  const signals = ctxs.map((c) => c?.signal);
  const all = signals.every((sg) => sg !== undefined)
    ? allAborted(signals as AbortSignal[])
    : undefined;
  return {
    ctx: { deadlineMs, signal: all?.signal, traceparent: ctxs[0]?.traceparent },
    dispose: () => all?.dispose(),
  };
}

function parseKey(k: string): ExpertId {
  const m = /^L(\d+)\.E(\d+)$/.exec(k);
  invariant(m !== null, () => `expert key ${k}`);
  return { layer: Number(m[1]), expert: Number(m[2]) };
}

/** An exportState answer → the model's ExpertTrainingState. */
function stateFromFrame(id: ExpertId, f: Frame): ExpertTrainingState {
  const names = f.text === "" ? [] : f.text.split(",");
  if (names.length === 0 || names.length * 3 !== f.tensors.length)
    throw new RemoteCallError(
      WireErrorCode.badShape,
      `exportState answer for ${expertKey(id)}: ${names.length} names, ${f.tensors.length} tensors`,
      "?",
    );
  const tensors: Record<string, { weights: Float32Array; m: Float32Array; v: Float32Array }> = {};
  names.forEach((n, i) => {
    const [w, m, v] = f.tensors.slice(3 * i, 3 * i + 3);
    tensors[n] = {
      weights: (w as WireTensor).data,
      m: (m as WireTensor).data,
      v: (v as WireTensor).data,
    };
  });
  return { id: { layer: id.layer, expert: id.expert }, tensors };
}

/** A signal that aborts once all of `signals` have aborted; `dispose` removes its listeners. */
function allAborted(signals: readonly AbortSignal[]): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  let left = signals.length;
  const listeners: [AbortSignal, () => void][] = [];
  for (const sg of signals) {
    const one = () => {
      if (--left === 0) controller.abort(sg.reason);
    };
    if (sg.aborted) one();
    else {
      sg.addEventListener("abort", one, { once: true });
      listeners.push([sg, one]);
    }
  }
  return {
    signal: controller.signal,
    dispose: () => {
      for (const [sg, one] of listeners) sg.removeEventListener("abort", one);
    },
  };
}

interface NodeState {
  readonly address: NodeAddress;
  readonly client: NodeClient;
  /** Forward latencies: replica choice, hedging and the forward deadline. */
  readonly latency: LatencyWindow;
  /** Every other op's own latencies (backward, applyUpdate, exportState, ...), for its deadline:
   * a grouped update costs more than a forward, so a deadline derived from forward latency would
   * abandon healthy writes under load and leave their replicas stale. */
  readonly opLatency: Map<Op, LatencyWindow>;
  /** Forward latencies per frame size class (#frameClass), for the hedge delay only: a round's
   * frames to one node differ several-fold in size (10 experts of a layer, then 2 of the next),
   * and against the p95 of them all the largest frames were hedged many times more often than the
   * intended 5%, the smallest far later. */
  readonly forwardByClass: Map<number, LatencyWindow>;
  healthy: boolean;
  failures: number;
  lastError: string | undefined;
  /** The node's last load report (from probeAll). */
  load: NodeLoad | undefined;
  probeBackoffMs: number;
  probeTimer: NodeJS.Timeout | undefined;
  /** Expert key → weight version this node last reported. */
  readonly versions: Map<string, number>;
  /** Expert keys whose replica on this node missed a write. */
  readonly stale: Set<string>;
}

/** `traceparent`: set for a hedged attempt, which carries its own span's context. */
type Attempt = (
  client: NodeClient,
  timeoutMs: number,
  signal: AbortSignal,
  traceparent: string | undefined,
) => Promise<Frame>;

/** The failover reason an attempt's error stands for. */
function failoverReason(err: unknown): DispatchFailoverReason {
  if (err instanceof DeadlineError) return "timeout";
  if (err instanceof RemoteCallError && err.code === WireErrorCode.deadlineExceeded)
    return "timeout";
  if (err instanceof NodeUnavailableError) return "node_down";
  return "error";
}

/** Runs an observer callback; an observer's bug never fails an expert call. */
function observe<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch {
    return undefined;
  }
}

export class RemoteExpertHost implements ExpertHost {
  readonly counters = new DispatchCounters();
  readonly #init: RemoteExpertHostInit;
  readonly #links: RegionLinks;
  readonly #nodes = new Map<string, NodeState>();
  /** Expert key → newest weight version any replica reported. */
  readonly #versions = new Map<string, number>();
  readonly #now: () => number;
  /** Forward calls of the current event-loop turn, per expert key (flushed by #flushTurn). */
  #turn: Map<string, { id: ExpertId; parts: ForwardPart[] }> | undefined;
  #closed = false;

  constructor(init: RemoteExpertHostInit) {
    this.#init = init;
    this.#links = init.links ?? directLinks;
    this.#now = init.nowMs ?? (() => performance.now());
  }

  // ---- ExpertHost ------------------------------------------------------------------------------

  /**
   * Forward calls issued in the same event-loop turn (an MoE layer's dispatch round, and
   * concurrent requests at the gateway reaching a layer together) go out together:
   * - calls for one expert are coalesced into one call of their concatenated rows, up to
   *   batchTokensMax tokens; each caller gets back exactly its rows;
   * - the round's calls are then planned onto replicas (#planRound) and each node gets one frame
   *   carrying all of its experts' rows (#forwardGroup), so a round costs one round trip per node
   *   used instead of one per expert.
   * Experts are token-wise, so this changes no result, only the number of frames.
   */
  forward(
    id: ExpertId,
    x: Float32Array,
    tokens: number,
    ctx?: ExpertCallContext,
  ): Promise<Float32Array> {
    this.#checkRows(x, tokens, "x");
    if (this.#init.coalesce === false) return this.#forwardNow(id, x, tokens, ctx);
    return new Promise<Float32Array>((resolve, reject) => {
      let turn = this.#turn;
      if (!turn) {
        turn = new Map();
        this.#turn = turn;
        setImmediate(() => this.#flushTurn());
      }
      const k = expertKey(id);
      let batch = turn.get(k);
      if (!batch) {
        batch = { id, parts: [] };
        turn.set(k, batch);
      }
      batch.parts.push({ x, tokens, ctx, resolve, reject });
    });
  }

  #flushTurn(): void {
    const turn = this.#turn;
    this.#turn = undefined;
    if (!turn) return;
    const calls: ForwardCall[] = [];
    for (const { id, parts } of turn.values()) calls.push(...this.#coalesce(id, parts));
    for (const { node, calls: group } of this.#planRound(calls)) {
      if (node !== undefined && group.length > 1) this.#forwardGroup(node, group);
      else
        for (const c of group)
          this.#forwardNow(c.id, c.x, c.tokens, c.ctx, { first: node }).then(c.resolve, c.reject);
    }
  }

  /** One expert's parts of a turn → calls of at most batchTokensMax tokens each. */
  #coalesce(id: ExpertId, all: ForwardPart[]): ForwardCall[] {
    const d = this.#init.dModel;
    // Callers that already gave up are answered now and not sent.
    const parts = all.filter((p) => {
      if (!p.ctx?.signal?.aborted) return true;
      p.reject(p.ctx.signal.reason instanceof Error ? p.ctx.signal.reason : new Error("aborted"));
      return false;
    });
    const calls: ForwardCall[] = [];
    while (parts.length > 0) {
      const group: ForwardPart[] = [];
      let tokens = 0;
      while (
        parts.length > 0 &&
        (group.length === 0 || tokens + (parts[0] as ForwardPart).tokens <= batchTokensMax)
      ) {
        const p = parts.shift() as ForwardPart;
        group.push(p);
        tokens += p.tokens;
      }
      if (group.length === 1) {
        const p = group[0] as ForwardPart;
        calls.push({ id, x: p.x, tokens, ctx: p.ctx, resolve: p.resolve, reject: p.reject });
        continue;
      }
      this.counters.coalescedCalls += group.length - 1;
      const x = new Float32Array(tokens * d);
      let o = 0;
      for (const p of group) {
        x.set(p.x, o);
        o += p.tokens * d;
      }
      // The merged call lives as long as its latest caller wants it, and is cancelled only when
      // every caller has gone away.
      const merged = mergeContexts(group.map((p) => p.ctx));
      calls.push({
        id,
        x,
        tokens,
        ctx: merged.ctx,
        resolve: (y) => {
          merged.dispose();
          let at = 0;
          for (const p of group) {
            p.resolve(y.slice(at, at + p.tokens * d));
            at += p.tokens * d;
          }
        },
        reject: (err) => {
          merged.dispose();
          for (const p of group) p.reject(err);
        },
      });
    }
    return calls;
  }

  /**
   * Assigns a round's calls to replicas. Each call goes to its best fresh replica by expected
   * latency weighted by load (calls in flight plus frames already planned in this round), except
   * that a node already holding an open group is preferred when it is within groupAffinitySlack
   * of that best: small calls ride together on few nodes (at batch 1 two nodes cover a layer of
   * the 5-region placement), large ones (groupTokensMax) spread out. Calls with no healthy fresh
   * replica are left to #read (node undefined), which fails over or reports the error.
   */
  #planRound(
    calls: readonly ForwardCall[],
    exclude?: NodeState,
  ): { node: NodeState | undefined; calls: ForwardCall[] }[] {
    const groups: { node: NodeState | undefined; calls: ForwardCall[]; tokens: number }[] = [];
    const open = new Map<NodeState, (typeof groups)[number]>();
    const planned = new Map<NodeState, number>();
    const score = (n: NodeState) =>
      this.#expectedMs(n) *
      (1 + inflightLatencyWeight * (n.client.inflight + (planned.get(n) ?? 0)));
    for (const c of calls) {
      const k = expertKey(c.id);
      const fresh = this.#init.registry
        .replicas(c.id)
        .map((a) => this.#node(a))
        .filter((n) => n.healthy && !n.stale.has(k) && n !== exclude);
      if (fresh.length === 0) {
        groups.push({ node: undefined, calls: [c], tokens: c.tokens });
        continue;
      }
      let best = fresh[0] as NodeState;
      let bestScore = score(best);
      for (const n of fresh) {
        const s = score(n);
        if (s < bestScore || (s === bestScore && n.address.nodeId < best.address.nodeId)) {
          best = n;
          bestScore = s;
        }
      }
      let join: (typeof groups)[number] | undefined;
      let joinScore = Number.POSITIVE_INFINITY;
      for (const n of fresh) {
        const g = open.get(n);
        if (!g || g.tokens + c.tokens > groupTokensMax) continue;
        const s = score(n);
        if (s <= bestScore * groupAffinitySlack && s < joinScore) {
          join = g;
          joinScore = s;
        }
      }
      if (join) {
        join.calls.push(c);
        join.tokens += c.tokens;
        if (join.calls.length >= forwardGroupExpertsMax) open.delete(join.node as NodeState);
        continue;
      }
      const g = { node: best, calls: [c], tokens: c.tokens };
      groups.push(g);
      open.set(best, g);
      planned.set(best, (planned.get(best) ?? 0) + 1);
    }
    return groups;
  }

  /**
   * One frame to `n` with several experts' rows. Each call settles once, with the first answer
   * for it: the group's, or that of another replica, asked when the group is slower than `n`'s
   * recent p95 (a hedge: the calls due are planned together onto their other healthy replicas, one
   * frame per node, as a round is) or when the group fails (a failover, per call; its read fails
   * over further across the remaining replicas).
   * `hedgeOf`: this group is itself a hedge of a group sent to that node; it is not hedged again
   * (as a hedged read is not) and its calls were counted with that group.
   */
  #forwardGroup(n: NodeState, calls: readonly ForwardCall[], hedgeOf?: NodeState): void {
    const d = this.#init.dModel;
    const frameClass = this.#frameClass(
      calls.length,
      calls.reduce((s, c) => s + c.tokens, 0),
    );
    if (hedgeOf === undefined) this.counters.calls += calls.length;
    this.counters.groupedCalls += calls.length;
    this.counters.groupFrames++;
    const settled = calls.map(() => false);
    const aloneInFlight = calls.map(() => false);
    let left = calls.length;
    let groupFailed = false;
    const controllers: AbortController[] = [];
    const groupController = new AbortController();
    controllers.push(groupController);
    const merged = mergeContexts(calls.map((c) => c.ctx));
    let hedgeTimer: NodeJS.Timeout | undefined;
    const unlisten: (() => void)[] = [];
    const settle = (i: number, y: Float32Array | undefined, err?: unknown): void => {
      if (settled[i]) return;
      settled[i] = true;
      left--;
      const c = calls[i] as ForwardCall;
      if (y) c.resolve(y);
      else c.reject(err);
      if (left > 0) return;
      if (hedgeTimer) clearTimeout(hedgeTimer);
      for (const off of unlisten) off();
      merged.dispose();
      for (const ac of controllers) ac.abort(new Error("every call of the group was answered"));
    };
    // A caller that gives up is answered at once; the others go on.
    calls.forEach((c, i) => {
      const signal = c.ctx?.signal;
      if (!signal) return;
      const onAbort = () =>
        settle(i, undefined, signal.reason instanceof Error ? signal.reason : new Error("aborted"));
      signal.addEventListener("abort", onAbort, { once: true });
      unlisten.push(() => signal.removeEventListener("abort", onAbort));
    });
    /** Call i alone through #read on the other replicas (a failover). */
    const alone = (i: number): void => {
      const c = calls[i] as ForwardCall;
      const ac = new AbortController();
      controllers.push(ac);
      aloneInFlight[i] = true;
      const signal = c.ctx?.signal ? AbortSignal.any([c.ctx.signal, ac.signal]) : ac.signal;
      this.#forwardNow(c.id, c.x, c.tokens, { ...c.ctx, signal }, { exclude: n }).then(
        (y) => settle(i, y),
        (err: unknown) => settle(i, undefined, err),
      );
    };
    /**
     * The calls `due` hedged together: planned onto their other replicas as a round is (never
     * `n`), one frame per node, a lone call as a hedged read. Before, each call went alone: a slow
     * group of 10 calls cost 10 extra frames (and 10 node wake-ups) instead of one or two.
     */
    const hedge = (due: readonly number[]): void => {
      const observer = this.#init.observer;
      const subs: ForwardCall[] = due.map((i) => {
        const c = calls[i] as ForwardCall;
        aloneInFlight[i] = true;
        // One controller per call: a shared one would collect a listener per call (and warn).
        const ac = new AbortController();
        controllers.push(ac);
        const signal = c.ctx?.signal ? AbortSignal.any([c.ctx.signal, ac.signal]) : ac.signal;
        const sub: ForwardCall = {
          id: c.id,
          x: c.x,
          tokens: c.tokens,
          ctx: { ...c.ctx, signal },
          resolve: (y) => settle(i, y),
          reject: (err: unknown) => {
            aloneInFlight[i] = false;
            // A failed hedge leaves the call to the group, unless the group failed too.
            if (groupFailed) settle(i, undefined, err);
          },
        };
        return sub;
      });
      const dueOf = new Map(subs.map((sub, k) => [sub, due[k] as number]));
      for (const { node, calls: group } of this.#planRound(subs, n)) {
        if (node === undefined || group.length === 1) {
          // #read counts the hedge and reports it to the observer.
          for (const c of group)
            this.#forwardNow(c.id, c.x, c.tokens, c.ctx, {
              exclude: n,
              hedgeOf: n,
              first: node,
            }).then(c.resolve, c.reject);
          continue;
        }
        this.counters.hedges += group.length;
        // One hedge span per call (issue #8); the frame carries the first one's context.
        const handles = group.map((c) =>
          observer?.hedgeStarted
            ? observe(() =>
                observer.hedgeStarted?.({
                  expert: c.id,
                  primaryNode: n.address.nodeId,
                  hedgeNode: node.address.nodeId,
                  traceparent: c.ctx?.traceparent,
                }),
              )
            : undefined,
        );
        const traced = handles.find((h) => h?.traceparent !== undefined)?.traceparent;
        this.#forwardGroup(
          node,
          group.map((c, j) => {
            const end = (outcome: "won" | "lost" | "error") => {
              const h = handles[j];
              if (h) observe(() => h.end(outcome));
            };
            const i = dueOf.get(c) as number;
            return {
              ...c,
              ctx: traced ? { ...c.ctx, traceparent: traced } : c.ctx,
              resolve: (y: Float32Array) => {
                // A lone hedge is counted by #read; a grouped one here.
                if (!settled[i]) this.counters.hedgeWins++;
                end(settled[i] ? "lost" : "won");
                c.resolve(y);
              },
              reject: (err: unknown) => {
                // Cancelled because the call was answered first: the hedge lost, as in #read.
                end(settled[i] ? "lost" : "error");
                c.reject(err);
              },
            };
          }),
          n,
        );
      }
    };
    const failAll = (err: unknown): void => {
      groupFailed = true;
      if (merged.ctx.signal?.aborted) {
        calls.forEach((_, i) => {
          settle(i, undefined, err);
        });
        return;
      }
      this.#markFailure(n, err);
      const reason = failoverReason(err);
      const observer = this.#init.observer;
      calls.forEach((c, i) => {
        if (settled[i] || aloneInFlight[i]) return;
        this.counters.failovers++;
        this.counters.lastFailoverAtMs = this.#now();
        if (observer?.failover) {
          const to = this.#candidates(c.id).find((m) => m !== n)?.address.nodeId ?? null;
          observe(() =>
            observer.failover?.({ experts: [c.id], from: n.address.nodeId, to, reason }),
          );
        }
        alone(i);
      });
    };
    const timeoutMs = this.#attemptTimeoutMs(n, merged.ctx, Op.forward);
    const t0 = this.#now();
    const signal = merged.ctx.signal
      ? AbortSignal.any([merged.ctx.signal, groupController.signal])
      : groupController.signal;
    n.client
      .call({
        op: Op.forward,
        ids: calls.map((c) => c.id),
        tensors: calls.map((c) => ({ dims: [c.tokens, d], data: c.x })),
        timeoutMs,
        ctx: { ...merged.ctx, signal },
      })
      .then(
        (frame) => {
          if (left === 0) return;
          this.#recordLatency(n, Op.forward, this.#now() - t0, frameClass);
          this.#markHealthy(n);
          if (frame.tensors.length !== calls.length) {
            failAll(
              new RemoteCallError(
                WireErrorCode.badShape,
                `grouped answer has ${frame.tensors.length} tensors; want ${calls.length}`,
                n.address.nodeId,
              ),
            );
            return;
          }
          calls.forEach((c, i) => {
            if (settled[i]) return;
            const t = frame.tensors[i] as WireTensor;
            if (t.dims[0] !== c.tokens || t.dims[1] !== d) {
              settle(
                i,
                undefined,
                new RemoteCallError(
                  WireErrorCode.badShape,
                  `answer has shape [${t.dims}]; want [${c.tokens}, ${d}]`,
                  n.address.nodeId,
                ),
              );
              return;
            }
            if (!this.#acceptVersion(n, c.id, frame.scalars[i])) {
              // Stale weights on n for this expert: read it from the others.
              if (!aloneInFlight[i]) alone(i);
              groupFailed = true;
              return;
            }
            settle(i, t.data);
          });
        },
        (err: unknown) => {
          if (left > 0) failAll(err);
        },
      );
    const p95Ms = this.#hedgeDelayMs(n, timeoutMs, Op.forward, frameClass);
    if ((this.#init.hedging ?? true) && hedgeOf === undefined && p95Ms < timeoutMs) {
      // As #read: once the group is slower than n's recent p95, its unanswered calls that have
      // another healthy replica are hedged, together.
      hedgeTimer = setTimeout(() => {
        hedgeTimer = undefined;
        const due: number[] = [];
        calls.forEach((c, i) => {
          if (settled[i] || aloneInFlight[i]) return;
          if (this.#candidates(c.id).some((m) => m !== n && m.healthy)) due.push(i);
        });
        if (due.length > 0) hedge(due);
      }, p95Ms);
    }
  }

  async #forwardNow(
    id: ExpertId,
    x: Float32Array,
    tokens: number,
    ctx?: ExpertCallContext,
    route?: ReadRoute,
  ): Promise<Float32Array> {
    const frame = await this.#read(
      id,
      ctx,
      Op.forward,
      (client, timeoutMs, signal, traceparent) =>
        client.call({
          op: Op.forward,
          ids: [id],
          tensors: [{ dims: [tokens, this.#init.dModel], data: x }],
          timeoutMs,
          ctx: { ...ctx, signal, traceparent: traceparent ?? ctx?.traceparent },
        }),
      true,
      { ...route, frameClass: this.#frameClass(1, tokens) },
    );
    return this.#rows(frame, tokens);
  }

  async backward(
    id: ExpertId,
    x: Float32Array,
    dy: Float32Array,
    tokens: number,
    ctx?: ExpertCallContext,
  ): Promise<Float32Array> {
    this.#checkRows(x, tokens, "x");
    this.#checkRows(dy, tokens, "dy");
    const dims = [tokens, this.#init.dModel];
    const frames = await this.#writeAll([id], ctx, Op.backward, (client, ids, timeoutMs) =>
      client.call({
        op: Op.backward,
        ids,
        tensors: [
          { dims, data: x },
          { dims, data: dy },
        ],
        timeoutMs,
        ctx,
      }),
    );
    return this.#rows(frames[0] as Frame, tokens);
  }

  async gradSquaredNorm(ids: readonly ExpertId[]): Promise<number> {
    // One replica per expert is enough (replicas hold the same gradients); group per node.
    const groups = new Map<string, ExpertId[]>();
    for (const id of ids) {
      const [best] = this.#candidates(id);
      if (!best) throw new NoReplicaError(expertKey(id), []);
      const list = groups.get(best.address.nodeId) ?? [];
      list.push(id);
      groups.set(best.address.nodeId, list);
    }
    const parts = await Promise.all(
      [...groups].map(async ([nodeId, group]) => {
        const node = this.#nodes.get(nodeId) as NodeState;
        try {
          const f = await this.#timed(node, Op.gradSquaredNorm, (t) =>
            node.client.call({ op: Op.gradSquaredNorm, ids: group, timeoutMs: t }),
          );
          return f.scalars[0] ?? Number.NaN;
        } catch (err) {
          this.#markFailure(node, err);
          // Fall back to one read per expert, each with failover.
          let sum = 0;
          for (const id of group) {
            const f = await this.#read(
              id,
              undefined,
              Op.gradSquaredNorm,
              (client, timeoutMs, signal) =>
                client.call({ op: Op.gradSquaredNorm, ids: [id], timeoutMs, ctx: { signal } }),
              false,
            );
            sum += f.scalars[0] ?? Number.NaN;
          }
          return sum;
        }
      }),
    );
    return parts.reduce((a, b) => a + b, 0);
  }

  async applyUpdate(ids: readonly ExpertId[], update: ExpertUpdate): Promise<void> {
    await this.#writeAll(
      ids,
      undefined,
      Op.applyUpdate,
      (client, group, timeoutMs) =>
        client.call({
          op: Op.applyUpdate,
          ids: group,
          scalars: [update.step, update.learningRate, update.gradScale],
          timeoutMs,
        }),
      true,
    );
  }

  /**
   * Weights and AdamW moments of these experts, each from one up-to-date replica (the model's
   * training checkpoints call this between steps, when no gradient is pending).
   */
  async exportTrainingState(ids: readonly ExpertId[]): Promise<ExpertTrainingState[]> {
    return Promise.all(
      ids.map(async (id) => {
        const f = await this.#read(id, undefined, Op.exportState, (client, timeoutMs, signal) =>
          client.call({ op: Op.exportState, ids: [id], timeoutMs, ctx: { signal } }),
        );
        return stateFromFrame(id, f);
      }),
    );
  }

  /**
   * Replaces these experts' weights and moments on every replica — stale ones included, which
   * makes them up to date again (resume from a checkpoint, or resync). Needs one success per expert.
   */
  async importTrainingState(states: readonly ExpertTrainingState[]): Promise<void> {
    this.counters.calls++;
    await Promise.all(states.map((state) => this.#importOne(state, undefined)));
  }

  /**
   * Copies weights and optimizer moments from an up-to-date replica to every healthy replica that
   * missed a write, so it serves and trains again. Call between training steps (no gradient
   * pending anywhere). Resolves with the number of replicas brought up to date.
   */
  async resyncStaleReplicas(): Promise<number> {
    this.#syncNodes();
    const byExpert = new Map<string, { id: ExpertId; nodes: NodeState[] }>();
    for (const n of this.#nodes.values()) {
      if (!n.healthy) continue;
      for (const k of n.stale) {
        const entry = byExpert.get(k) ?? { id: parseKey(k), nodes: [] };
        entry.nodes.push(n);
        byExpert.set(k, entry);
      }
    }
    let synced = 0;
    for (const { id, nodes } of byExpert.values()) {
      const [state] = await this.exportTrainingState([id]);
      if (!state) continue;
      synced += await this.#importOne(state, nodes);
    }
    this.counters.resyncedReplicas += synced;
    return synced;
  }

  /** Sends one expert's state to `targets` (default: every replica); returns the successes. */
  async #importOne(state: ExpertTrainingState, targets: NodeState[] | undefined): Promise<number> {
    const k = expertKey(state.id);
    const version = this.#versions.get(k) ?? 0;
    const names = Object.keys(state.tensors);
    const tensors = names.flatMap((n) => {
      const t = state.tensors[n] as ExpertTrainingState["tensors"][string];
      return [t.weights, t.m, t.v].map((data) => ({ dims: [data.length], data }));
    });
    const nodes = targets ?? this.#init.registry.replicas(state.id).map((a) => this.#node(a));
    const results = await Promise.allSettled(
      nodes.map((n) =>
        this.#timed(n, Op.importState, (t) =>
          n.client.call({
            op: Op.importState,
            ids: [state.id],
            text: names.join(","),
            scalars: [version],
            tensors,
            timeoutMs: t,
          }),
        ),
      ),
    );
    let ok = 0;
    const errors: string[] = [];
    results.forEach((r, i) => {
      const n = nodes[i] as NodeState;
      if (r.status === "fulfilled") {
        ok++;
        n.stale.delete(k);
        n.versions.set(k, version);
        this.#markHealthy(n);
      } else {
        errors.push(`${n.address.nodeId}: ${(r.reason as Error).message}`);
        this.#markFailure(n, r.reason);
        n.stale.add(k);
      }
    });
    if (ok === 0 && targets === undefined) {
      this.counters.failedCalls++;
      throw new NoReplicaError(k, errors);
    }
    return ok;
  }

  /** The current weights of an expert, from one fresh replica (for checkpoints). */
  async fetchExpertWeights(
    id: ExpertId,
  ): Promise<
    ExpertWeights & { w1: Float32Array; b1: Float32Array; w2: Float32Array; b2: Float32Array }
  > {
    const f = await this.#read(id, undefined, Op.getWeights, (client, timeoutMs, signal) =>
      client.call({ op: Op.getWeights, ids: [id], timeoutMs, ctx: { signal } }),
    );
    const [w1, b1, w2, b2] = f.tensors;
    if (!w1 || !b1 || !w2 || !b2 || w1.dims.length !== 2 || w1.dims[0] !== this.#init.dModel)
      throw new RemoteCallError(
        WireErrorCode.badShape,
        `getWeights answer for ${expertKey(id)} has the wrong tensors`,
        "?",
      );
    return {
      d: w1.dims[0] as number,
      h: w1.dims[1] as number,
      w1: w1.data,
      b1: b1.data,
      w2: w2.data,
      b2: b2.data,
    };
  }

  // ---- health and stats ------------------------------------------------------------------------

  nodeStats(): NodeStats[] {
    this.#syncNodes();
    return [...this.#nodes.values()].map((n) => ({
      nodeId: n.address.nodeId,
      region: n.address.region,
      healthy: n.healthy,
      latencyMsP50: n.latency.quantile(0.5),
      latencyMsP95: n.latency.quantile(0.95),
      latencyMsP99: n.latency.quantile(0.99),
      samples: n.latency.count,
      failures: n.failures,
      inflight: n.client.inflight,
      lastError: n.lastError,
      load: n.load,
    }));
  }

  /** Request frames and bytes sent to every node, and answer bytes received, since the start. */
  wire(): { frames: number; bytesSent: number; bytesReceived: number } {
    let frames = 0;
    let bytesSent = 0;
    let bytesReceived = 0;
    for (const n of this.#nodes.values()) {
      frames += n.client.framesSent;
      bytesSent += n.client.bytesSent;
      bytesReceived += n.client.bytesReceived;
    }
    return { frames, bytesSent, bytesReceived };
  }

  /** Pings every node once (marks health, records its load report); resolves with the number of healthy nodes. */
  async probeAll(timeoutMs = 1000): Promise<number> {
    this.#syncNodes();
    const results = await Promise.all(
      [...this.#nodes.values()].map(async (n) => {
        try {
          // Not recorded as a latency sample: a ping costs no compute and would bias the p95 down.
          const f = await n.client.call({ op: Op.ping, ids: [], timeoutMs });
          n.load = Object.fromEntries(
            nodeLoadFields.map((k, i) => [k, f.scalars[i] ?? 0]),
          ) as unknown as NodeLoad;
          this.#markHealthy(n);
          return 1;
        } catch (err) {
          this.#markFailure(n, err);
          return 0;
        }
      }),
    );
    return results.reduce<number>((a, b) => a + b, 0);
  }

  close(): void {
    this.#closed = true;
    for (const n of this.#nodes.values()) {
      if (n.probeTimer) clearTimeout(n.probeTimer);
      n.client.close();
    }
  }

  // ---- internals ------------------------------------------------------------------------------

  #checkRows(a: Float32Array, tokens: number, what: string): void {
    invariant(
      a.length === tokens * this.#init.dModel,
      () => `${what} has ${a.length} values; want ${tokens}×${this.#init.dModel}`,
    );
  }

  #rows(frame: Frame, tokens: number): Float32Array {
    const t = frame.tensors[0];
    if (!t || t.dims[0] !== tokens || t.dims[1] !== this.#init.dModel)
      throw new RemoteCallError(
        WireErrorCode.badShape,
        `answer has shape [${t?.dims ?? []}]; want [${tokens}, ${this.#init.dModel}]`,
        "?",
      );
    return t.data;
  }

  #syncNodes(): void {
    for (const address of this.#init.registry.nodes()) this.#node(address);
  }

  #node(address: NodeAddress): NodeState {
    let n = this.#nodes.get(address.nodeId);
    if (!n || n.address.port !== address.port || n.address.host !== address.host) {
      n?.client.close();
      n = {
        address,
        client: new NodeClient(
          address,
          this.#init.region,
          this.#links,
          spanSinkOf(this.#init.observer),
        ),
        latency: new LatencyWindow(),
        opLatency: new Map(),
        forwardByClass: new Map(),
        healthy: true,
        failures: 0,
        lastError: undefined,
        load: undefined,
        probeBackoffMs: probeIntervalMsMin,
        probeTimer: undefined,
        versions: new Map(),
        stale: new Set(),
      };
      this.#nodes.set(address.nodeId, n);
    }
    return n;
  }

  /** Emulated RTT to a node: what a call costs before we have measured it. */
  #priorMs(n: NodeState): number {
    return 2 * this.#links.oneWayMs(this.#init.region, n.address.region);
  }

  /**
   * Expected latency of a call: the node's recent median; for a node not measured yet, its
   * emulated RTT plus the largest compute overhead measured elsewhere, so that an unmeasured node
   * never looks faster than an equally far measured one (no flapping between equal replicas).
   */
  #expectedMs(n: NodeState): number {
    if (n.latency.count > 0) return n.latency.quantile(0.5) as number;
    let overhead = 0;
    for (const m of this.#nodes.values())
      if (m.latency.count > 0)
        overhead = Math.max(overhead, (m.latency.quantile(0.5) as number) - this.#priorMs(m));
    return this.#priorMs(n) + overhead;
  }

  /** The latency window of `op` on node `n` (forward: the one replica choice and hedging use). */
  #window(n: NodeState, op: Op): LatencyWindow {
    if (op === Op.forward) return n.latency;
    let w = n.opLatency.get(op);
    if (!w) {
      w = new LatencyWindow();
      n.opLatency.set(op, w);
    }
    return w;
  }

  /** Attempt deadline of `op` on `n`: a multiple of that op's own recent p99 on that node. */
  #attemptTimeoutMs(n: NodeState, ctx: ExpertCallContext | undefined, op: Op): number {
    const w = this.#window(n, op);
    const adaptive = w.trusted
      ? deadlineP99Multiplier * (w.quantile(0.99) as number)
      : this.#priorMs(n) + computeBudgetMsPrior;
    const floor =
      op === Op.backward || op === Op.applyUpdate || op === Op.importState
        ? writeDeadlineMsMin
        : attemptDeadlineMsMin;
    let t = Math.min(attemptDeadlineMsMax, Math.max(floor, adaptive));
    if (ctx?.deadlineMs !== undefined) t = Math.min(t, Math.max(1, ctx.deadlineMs - Date.now()));
    return t;
  }

  /** Size class of a forward frame: experts and rows, each by powers of 2. */
  #frameClass(experts: number, rows: number): number {
    return (
      64 * Math.ceil(Math.log2(Math.max(1, experts))) + Math.ceil(Math.log2(Math.max(1, rows)))
    );
  }

  /** A reply's latency: the node's window of `op` (replica choice, deadlines) and, for a forward
   * frame of a known size class, that class's (hedge delay). */
  #recordLatency(n: NodeState, op: Op, ms: number, frameClass?: number): void {
    this.#window(n, op).record(ms);
    if (op !== Op.forward || frameClass === undefined) return;
    let w = n.forwardByClass.get(frameClass);
    if (!w) {
      w = new LatencyWindow();
      n.forwardByClass.set(frameClass, w);
    }
    w.record(ms);
  }

  /** Hedge delay: the p95 of the node's window of `op`; for a forward frame of a known size class,
   * of that class's frames once it has enough samples. */
  #hedgeDelayMs(n: NodeState, timeoutMs: number, op: Op, frameClass?: number): number {
    const c =
      op === Op.forward && frameClass !== undefined ? n.forwardByClass.get(frameClass) : undefined;
    if (c?.trusted) return Math.max(hedgeDelayMsMin, c.quantile(0.95) as number);
    const w = this.#window(n, op);
    if (!w.trusted) return timeoutMs / 2;
    return Math.max(hedgeDelayMsMin, w.quantile(0.95) as number);
  }

  /**
   * Replicas in the order to try: fresh and healthy first, then by expected latency, where each
   * call already in flight to a node adds `inflightLatencyWeight` of its median (least outstanding
   * requests, weighted by latency): under concurrent load the replicas share the work instead of
   * all of it queueing on the single fastest node.
   */
  #candidates(id: ExpertId): NodeState[] {
    const k = expertKey(id);
    const replicas = this.#init.registry.replicas(id).map((a) => this.#node(a));
    const fresh = replicas.filter((n) => !n.stale.has(k));
    const score = (n: NodeState) =>
      (n.healthy ? 0 : 1e9) + this.#expectedMs(n) * (1 + inflightLatencyWeight * n.client.inflight);
    return fresh.sort(
      (a, b) => score(a) - score(b) || a.address.nodeId.localeCompare(b.address.nodeId),
    );
  }

  /** One attempt of `op` on `n` under that op's adaptive deadline; records its latency there. */
  async #timed(
    n: NodeState,
    op: Op,
    call: (timeoutMs: number) => Promise<Frame>,
    ctx?: ExpertCallContext,
  ): Promise<Frame> {
    const t0 = this.#now();
    const f = await call(this.#attemptTimeoutMs(n, ctx, op));
    this.#recordLatency(n, op, this.#now() - t0);
    return f;
  }

  /** Checks an answer's weight version against the newest known; refuses stale replicas. */
  #acceptVersion(n: NodeState, id: ExpertId, version: number | undefined): boolean {
    if (version === undefined) return true;
    const k = expertKey(id);
    n.versions.set(k, version);
    const newest = this.#versions.get(k) ?? 0;
    if (version > newest) {
      this.#versions.set(k, version);
      return true;
    }
    if (version < newest) {
      n.stale.add(k);
      this.counters.staleReplicas++;
      return false;
    }
    return true;
  }

  /** One replica answers (with hedging and failover). `versioned`: scalars[0] is a weight version. */
  #read(
    id: ExpertId,
    ctx: ExpertCallContext | undefined,
    op: Op,
    attempt: Attempt,
    versioned = true,
    route: ReadRoute = {},
  ): Promise<Frame> {
    // A read that continues a group's call (hedge or failover) was counted with the group.
    if (route.exclude === undefined) this.counters.calls++;
    const queue = this.#candidates(id).filter((n) => n !== route.exclude);
    const first = route.first;
    if (first !== undefined && queue[0] !== first && queue.includes(first)) {
      queue.splice(queue.indexOf(first), 1);
      queue.unshift(first);
    }
    const key = expertKey(id);
    const hedging = this.#init.hedging ?? true;
    return new Promise<Frame>((resolve, reject) => {
      const errors: string[] = [];
      const controllers: AbortController[] = [];
      let running = 0;
      let started = 0;
      let done = false;
      let hedgeTimer: NodeJS.Timeout | undefined;
      const callerSignal = ctx?.signal;
      // One listener on the caller's signal for the whole call, removed when it settles.
      const onCallerAbort = () => {
        for (const c of controllers) c.abort(callerSignal?.reason);
      };
      callerSignal?.addEventListener("abort", onCallerAbort, { once: true });
      const finish = () => {
        done = true;
        callerSignal?.removeEventListener("abort", onCallerAbort);
        if (hedgeTimer) clearTimeout(hedgeTimer);
        for (const c of controllers) c.abort(new Error("another replica answered"));
      };
      const giveUp = () => {
        finish();
        this.counters.failedCalls++;
        reject(new NoReplicaError(key, errors));
      };
      let primaryNode = route.hedgeOf?.address.nodeId ?? "";
      /** Tells the observer that `from` failed and the call moved on (or not). */
      const failover = (from: NodeState, reason: DispatchFailoverReason) => {
        const to = queue[0]?.address.nodeId ?? null;
        const launched = launch("failover");
        const observer = this.#init.observer;
        if (observer?.failover)
          observe(() =>
            observer.failover?.({
              experts: [id],
              from: from.address.nodeId,
              to: launched ? to : null,
              reason,
            }),
          );
        return launched;
      };
      const launch = (kind: "first" | "hedge" | "failover"): boolean => {
        if (this.#closed || callerSignal?.aborted) return false;
        // Past the caller's deadline nobody awaits an answer: stop trying.
        if (ctx?.deadlineMs !== undefined && Date.now() >= ctx.deadlineMs) return false;
        const n = queue.shift();
        if (!n || started >= callAttemptsMax) return false;
        started++;
        running++;
        if (kind !== "hedge") primaryNode = n.address.nodeId;
        let hedge: HedgeHandle | undefined;
        if (kind === "hedge") {
          this.counters.hedges++;
          const observer = this.#init.observer;
          if (observer?.hedgeStarted)
            hedge = observe(() =>
              observer.hedgeStarted?.({
                expert: id,
                primaryNode,
                hedgeNode: n.address.nodeId,
                traceparent: ctx?.traceparent,
              }),
            );
        }
        const endHedge = (outcome: "won" | "lost" | "error") => {
          if (hedge) observe(() => hedge?.end(outcome));
        };
        if (kind === "failover") {
          this.counters.failovers++;
          this.counters.lastFailoverAtMs = this.#now();
        }
        const controller = new AbortController();
        controllers.push(controller);
        const timeoutMs = this.#attemptTimeoutMs(n, ctx, op);
        const t0 = this.#now();
        attempt(n.client, timeoutMs, controller.signal, hedge?.traceparent).then(
          (frame) => {
            running--;
            if (done) {
              endHedge("lost");
              return;
            }
            this.#recordLatency(n, op, this.#now() - t0, route.frameClass);
            this.#markHealthy(n);
            if (versioned && !this.#acceptVersion(n, id, frame.scalars[0])) {
              endHedge("error");
              errors.push(`${n.address.nodeId}: stale weights (version ${frame.scalars[0]})`);
              if (!failover(n, "error") && running === 0) giveUp();
              return;
            }
            if (kind === "hedge") this.counters.hedgeWins++;
            endHedge("won");
            finish();
            resolve(frame);
          },
          (err: unknown) => {
            running--;
            if (done) {
              endHedge("lost");
              return;
            }
            endHedge("error");
            if (callerSignal?.aborted) {
              // The caller gave up (client went away): not a node failure, no failover.
              finish();
              reject(
                callerSignal.reason instanceof Error ? callerSignal.reason : new Error("aborted"),
              );
              return;
            }
            errors.push(`${n.address.nodeId}: ${(err as Error).message}`);
            this.#markFailure(n, err);
            if (!failover(n, failoverReason(err)) && running === 0) giveUp();
          },
        );
        const next = queue[0];
        // Hedge once this attempt is slower than its node's recent p95 (The Tail at Scale), to the
        // next replica however far: waiting also for that replica's whole expected latency (the
        // rule before) only delays the answer when this attempt is stuck (a node killed but not
        // yet closed), and a straggler beyond it is beaten either way.
        const hedgeAtMs = next ? this.#hedgeDelayMs(n, timeoutMs, op, route.frameClass) : timeoutMs;
        if (kind !== "hedge" && hedging && hedgeAtMs < timeoutMs) {
          if (hedgeTimer) clearTimeout(hedgeTimer);
          hedgeTimer = setTimeout(() => {
            if (!done) launch("hedge");
          }, hedgeAtMs);
        }
        return true;
      };
      if (!launch(route.hedgeOf ? "hedge" : "first")) giveUp();
    });
  }

  /**
   * Sends a write to every fresh replica of each expert (grouped per node) and waits for all;
   * resolves with one answer per node that succeeded, needs at least one success per expert.
   */
  async #writeAll(
    ids: readonly ExpertId[],
    ctx: ExpertCallContext | undefined,
    op: Op,
    call: (client: NodeClient, ids: readonly ExpertId[], timeoutMs: number) => Promise<Frame>,
    measureCoherence = false,
  ): Promise<Frame[]> {
    this.counters.calls++;
    const groups = new Map<string, { node: NodeState; ids: ExpertId[] }>();
    for (const id of ids) {
      const replicas = this.#candidates(id);
      if (replicas.length === 0) throw new NoReplicaError(expertKey(id), []);
      for (const n of replicas) {
        const g = groups.get(n.address.nodeId) ?? { node: n, ids: [] };
        g.ids.push(id);
        groups.set(n.address.nodeId, g);
      }
    }
    const ordered = [...groups.values()].sort(
      (a, b) => this.#expectedMs(a.node) - this.#expectedMs(b.node),
    );
    // When each node acknowledged (for the coherence time of replicated updates).
    const ackedAtMs = new Array<number>(ordered.length).fill(Number.NaN);
    const results = await Promise.allSettled(
      ordered.map(({ node, ids: group }, i) =>
        this.#timed(node, op, (t) => call(node.client, group, t), ctx).then((f) => {
          ackedAtMs[i] = this.#now();
          return f;
        }),
      ),
    );
    const answers: Frame[] = [];
    const ok = new Set<string>();
    const errors: string[] = [];
    /** Expert key → acknowledgements (version, time) of the replicas that took the write. */
    const acks = new Map<string, { id: ExpertId; version: number; atMs: number }[]>();
    const observer = this.#init.observer;
    results.forEach((r, i) => {
      const { node, ids: group } = ordered[i] as { node: NodeState; ids: ExpertId[] };
      if (r.status === "fulfilled") {
        this.#markHealthy(node);
        answers.push(r.value);
        const versions = r.value.op === Op.applyUpdate ? r.value.scalars : [r.value.scalars[0]];
        group.forEach((id, j) => {
          if (this.#acceptVersion(node, id, versions[j])) ok.add(expertKey(id));
          const version = versions[j];
          if (measureCoherence && version !== undefined) {
            const list = acks.get(expertKey(id)) ?? [];
            list.push({ id, version, atMs: ackedAtMs[i] as number });
            acks.set(expertKey(id), list);
          }
        });
      } else {
        errors.push(`${node.address.nodeId}: ${(r.reason as Error).message}`);
        this.#markFailure(node, r.reason);
        // The replica missed a write: its accumulated gradients or weights now differ.
        for (const id of group) node.stale.add(expertKey(id));
        if (observer?.failover)
          observe(() =>
            observer.failover?.({
              experts: group,
              from: node.address.nodeId,
              to: null,
              reason: failoverReason(r.reason),
            }),
          );
      }
    });
    if (observer?.coherence) {
      for (const list of acks.values()) {
        // The replicas that reached the newest version: from the first one's ack to the last's.
        const newest = Math.max(...list.map((a) => a.version));
        const same = list.filter((a) => a.version === newest);
        if (same.length < 2) continue;
        const times = same.map((a) => a.atMs);
        const seconds = (Math.max(...times) - Math.min(...times)) / 1000;
        const first = same[0] as { id: ExpertId };
        observe(() =>
          observer.coherence?.({
            expert: first.id,
            version: newest,
            replicas: same.length,
            seconds,
          }),
        );
      }
    }
    for (const id of ids) {
      if (!ok.has(expertKey(id))) {
        this.counters.failedCalls++;
        throw new NoReplicaError(expertKey(id), errors);
      }
    }
    if (errors.length > 0) {
      this.counters.failovers += errors.length;
      this.counters.lastFailoverAtMs = this.#now();
    }
    return answers;
  }

  #markHealthy(n: NodeState): void {
    if (!n.healthy) {
      n.healthy = true;
      this.counters.nodesRecovered++;
    }
    n.probeBackoffMs = probeIntervalMsMin;
    if (n.probeTimer) {
      clearTimeout(n.probeTimer);
      n.probeTimer = undefined;
    }
  }

  #markFailure(n: NodeState, err: unknown): void {
    n.failures++;
    n.lastError = (err as Error)?.message ?? String(err);
    // A request-level error (bad shape, unknown expert) says nothing about the node's health.
    const nodeLevel =
      err instanceof NodeUnavailableError ||
      err instanceof DeadlineError ||
      (err instanceof RemoteCallError &&
        (err.code === WireErrorCode.overloaded ||
          err.code === WireErrorCode.shuttingDown ||
          err.code === WireErrorCode.hostFailure ||
          err.code === WireErrorCode.deadlineExceeded));
    if (!nodeLevel || !n.healthy) return;
    n.healthy = false;
    this.counters.nodesMarkedDown++;
    this.#scheduleProbe(n);
  }

  #scheduleProbe(n: NodeState): void {
    if (this.#closed || n.probeTimer) return;
    n.probeTimer = setTimeout(async () => {
      n.probeTimer = undefined;
      try {
        await n.client.call({
          op: Op.ping,
          ids: [],
          timeoutMs: Math.max(attemptDeadlineMsMin, this.#priorMs(n) + 500),
        });
        this.#markHealthy(n);
      } catch {
        n.probeBackoffMs = Math.min(probeIntervalMsMax, n.probeBackoffMs * 2);
        this.#scheduleProbe(n);
      }
    }, n.probeBackoffMs);
    n.probeTimer.unref();
  }
}
