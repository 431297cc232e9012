// One MoE layer: Born-rule router → routing plan (top-k / top-p / cascade, capacity) → experts
// called through `ExpertHost` → gate-weighted combine, y_t = Σ_{e served t} p_te · FFN_e(h_t).
// The gates are the routing probabilities themselves (Switch Transformer, not renormalised), so
// the router learns from the task loss through p_te, and from the auxiliary losses.
//
// The layer is a single tape node with an async backward: it sends dL/dy_e = p_te · dL/dy_t to
// each expert's host (which accumulates the expert's parameter gradients and returns dL/dh), and
// gives the router dL/dp_te = dL/dy_t · FFN_e(h_t). Experts of one dispatch round are called
// concurrently; a cascade's rounds run one after another, since each depends on the last.

import { invariant } from "../common/assert.ts";
import { matmul } from "../tensor/ops.ts";
import { alloc, type Buf, isGradEnabled, Tensor } from "../tensor/tensor.ts";
import type { MoeLayerInfo, RoutingConfig } from "./config.ts";
import type { ExpertCallContext, ExpertHost, ExpertId } from "./expert.ts";
import { bornProbabilities, loadBalanceLoss, routerZLoss } from "./router.ts";
import { planRouting, type RoutingPlan, rankExperts } from "./routing.ts";
import { SuperpositionCache } from "./superposition-cache.ts";

/** A host that can also compute in its own precision (float64 gradient checks). */
export interface ExactExpertHost {
  forwardExact(id: ExpertId, x: Buf, tokens: number): Buf;
  backwardExact(id: ExpertId, x: Buf, dy: Buf, tokens: number): Buf;
}

function isExact(host: ExpertHost): host is ExpertHost & ExactExpertHost {
  const h = host as Partial<ExactExpertHost>;
  return typeof h.forwardExact === "function" && typeof h.backwardExact === "function";
}

/** Cumulative routing statistics of one layer (for the dashboard and the canary's spike rates). */
export interface MoeLayerStats {
  readonly layer: number;
  readonly tier: string;
  readonly activation: string;
  tokens: number;
  /** Assignments the router asked for, per expert (before capacity). */
  readonly requested: Float64Array;
  /** Assignments served, per expert. */
  readonly admitted: Float64Array;
  droppedAssignments: number;
  droppedTokens: number;
  /** Σ over tokens of the experts that served them. */
  expertsServed: number;
  /** Dispatch rounds (1 per batch, except cascades). */
  rounds: number;
  batches: number;
  lastLoadBalance: number;
  lastZLoss: number;
}

interface Call {
  readonly expert: number;
  readonly rows: Int32Array;
  readonly x: Buf;
  readonly y: Buf;
}

export interface MoeOutput {
  readonly y: Tensor;
  /** Auxiliary losses (absent when the route came through the superposition cache). */
  readonly loadBalance: Tensor | null;
  readonly zLoss: Tensor | null;
  readonly plan: RoutingPlan;
}

/**
 * Capacity factor of the no-grad (inference and evaluation) path: E/k, which makes the capacity
 * ⌈(E/k)·N·k/E⌉ = N assignments per expert — more than any expert can be asked for, since a token
 * is assigned to an expert at most once. So inference never drops a token for capacity (GShard and
 * Switch use a larger eval capacity for the same reason), and a token's output does not depend on
 * how many other tokens share its call: a KV-cached step (1 row) equals the full-window forward.
 * Training (a tape is recorded) keeps the tier's `capacity_factor` and its drops.
 */
export function inferenceCapacityFactor(experts: number, topK: number): number {
  return experts / Math.min(topK, experts);
}

export class MoeLayer {
  readonly info: MoeLayerInfo;
  readonly dModel: number;
  /** Router weights [d_model, E]: amplitudes a = h · W. */
  readonly router: Tensor;
  readonly cache: SuperpositionCache;
  readonly routing: RoutingConfig;
  stats: MoeLayerStats;

  constructor(info: MoeLayerInfo, dModel: number, router: Tensor, routing: RoutingConfig) {
    invariant(router.shape[0] === dModel && router.shape[1] === info.tier.experts, "router shape");
    this.info = info;
    this.dModel = dModel;
    this.router = router;
    this.routing = routing;
    this.cache = new SuperpositionCache(routing.cacheEntries, routing.cacheBits);
    this.stats = this.#freshStats();
  }

  #freshStats(): MoeLayerStats {
    const E = this.info.tier.experts;
    return {
      layer: this.info.layer,
      tier: this.info.tier.name,
      activation: this.info.tier.activation,
      tokens: 0,
      requested: new Float64Array(E),
      admitted: new Float64Array(E),
      droppedAssignments: 0,
      droppedTokens: 0,
      expertsServed: 0,
      rounds: 0,
      batches: 0,
      lastLoadBalance: Number.NaN,
      lastZLoss: Number.NaN,
    };
  }

  resetStats(): void {
    this.stats = this.#freshStats();
    this.cache.resetCounters();
  }

  /** Routing probabilities [N,E] without a tape, reusing cached routes (inference). */
  #cachedProbabilities(h: Tensor, N: number): Buf {
    const E = this.info.tier.experts;
    const D = this.dModel;
    const k = Math.min(this.info.tier.topK, E);
    const P = alloc(N * E, h.dtype);
    const keys: Int16Array[] = [];
    const misses: number[] = [];
    for (let t = 0; t < N; t++) {
      const q = this.cache.quantise(h.data, t * D, D);
      keys.push(q);
      const hit = this.cache.get(q);
      if (hit === undefined) {
        misses.push(t);
        continue;
      }
      hit.experts.forEach((e, i) => {
        P[t * E + e] = hit.gates[i] as number;
      });
    }
    if (misses.length === 0) return P;
    const xm = alloc(misses.length * D, h.dtype);
    misses.forEach((t, i) => {
      xm.set(h.data.subarray(t * D, (t + 1) * D), i * D);
    });
    const pm = bornProbabilities(matmul(new Tensor(xm, [misses.length, D]), this.router)).data;
    misses.forEach((t, i) => {
      // The cached route is the k best experts with their probabilities: every activation mode
      // consults at most k experts, in rank order, so a hit reproduces the same decision.
      const ranked = rankExperts(pm, i * E, E).slice(0, k);
      const experts = Int32Array.from(ranked);
      const gates = Float32Array.from(ranked, (e) => pm[i * E + e] as number);
      this.cache.set(keys[t] as Int16Array, { experts, gates });
      ranked.forEach((e, j) => {
        P[t * E + e] = h.dtype === "float32" ? (gates[j] as number) : (pm[i * E + e] as number);
      });
    });
    return P;
  }

  /**
   * y [N,D] for h [N,D]. With a tape, routes from fresh probabilities and returns the auxiliary
   * losses; without one (inference) it uses the superposition cache, if it has any entries.
   */
  async forward(
    h: Tensor,
    host: ExpertHost,
    ctx?: ExpertCallContext,
    useCache = true,
  ): Promise<MoeOutput> {
    invariant(h.shape.length === 2 && h.shape[1] === this.dModel, () => `MoE input [${h.shape}]`);
    const N = h.shape[0] as number;
    const D = this.dModel;
    const tier = this.info.tier;
    const E = tier.experts;
    const training = isGradEnabled() && (h.requiresGrad || this.router.requiresGrad);

    let p: Tensor;
    let amplitudes: Tensor | null = null;
    if (training || !useCache || this.routing.cacheEntries === 0) {
      amplitudes = matmul(h, this.router);
      p = bornProbabilities(amplitudes);
    } else {
      p = new Tensor(this.#cachedProbabilities(h, N), [N, E]);
    }
    const plan = planRouting(p.data, N, E, {
      activation: tier.activation,
      topK: tier.topK,
      threshold: this.routing.collapseThreshold,
      capacityFactor: training ? tier.capacityFactor : inferenceCapacityFactor(E, tier.topK),
    });

    const exact = h.dtype === "float64" && isExact(host) ? host : null;
    const out = alloc(N * D, h.dtype);
    // Per round and expert: the rows sent and the expert's outputs (kept for dL/dp). Results are
    // combined in expert order after each round, so sums do not depend on which call returns first.
    const rounds: Call[][] = [];
    for (const round of plan.rounds) {
      const sent: { expert: number; rows: Int32Array; x: Buf }[] = [];
      round.tokensByExpert.forEach((tokens, expert) => {
        if (tokens.length === 0) return;
        const rows = Int32Array.from(tokens);
        const x = alloc(rows.length * D, exact ? "float64" : "float32");
        rows.forEach((t, i) => {
          x.set(h.data.subarray(t * D, (t + 1) * D), i * D);
        });
        sent.push({ expert, rows, x });
      });
      const ys = await Promise.all(
        sent.map(({ expert, rows, x }) => {
          const id = { layer: this.info.layer, expert };
          return exact
            ? exact.forwardExact(id, x, rows.length)
            : host.forward(id, x as Float32Array, rows.length, ctx);
        }),
      );
      const calls: Call[] = sent.map((c, i) => ({ ...c, y: ys[i] as Buf }));
      for (const { expert, rows, x, y } of calls) {
        invariant(
          y.length === x.length,
          () => `expert ${expert} returned ${y.length} values, expected ${x.length}`,
        );
        rows.forEach((t, i) => {
          const gate = p.data[t * E + expert] as number;
          for (let j = 0; j < D; j++)
            out[t * D + j] = (out[t * D + j] as number) + gate * (y[i * D + j] as number);
        });
      }
      rounds.push(calls);
    }
    this.#record(plan, N);

    const y = Tensor.fromOp(
      out,
      [N, D],
      [h, p],
      async (g) => {
        const gh = h.requiresGrad ? h.gradBuffer() : null;
        const gp = p.requiresGrad ? p.gradBuffer() : null;
        for (const calls of rounds) {
          const dys = calls.map(({ expert, rows, x, y: ye }) => {
            const dy = alloc(x.length, exact ? "float64" : "float32");
            rows.forEach((t, i) => {
              const gate = p.data[t * E + expert] as number;
              let dot = 0;
              for (let j = 0; j < D; j++) {
                const gv = g[t * D + j] as number;
                dy[i * D + j] = gate * gv;
                dot += gv * (ye[i * D + j] as number);
              }
              if (gp) gp[t * E + expert] = (gp[t * E + expert] as number) + dot;
            });
            return dy;
          });
          const dxs = await Promise.all(
            calls.map(({ expert, rows, x }, c) => {
              const id = { layer: this.info.layer, expert };
              const dy = dys[c] as Buf;
              return exact
                ? exact.backwardExact(id, x, dy, rows.length)
                : host.backward(id, x as Float32Array, dy as Float32Array, rows.length, ctx);
            }),
          );
          calls.forEach(({ expert, rows, x }, c) => {
            const dx = dxs[c] as Buf;
            invariant(
              dx.length === x.length,
              () => `expert ${expert} backward returned ${dx.length} values`,
            );
            if (gh)
              rows.forEach((t, i) => {
                for (let j = 0; j < D; j++)
                  gh[t * D + j] = (gh[t * D + j] as number) + (dx[i * D + j] as number);
              });
          });
        }
      },
      "moe",
    );

    let loadBalance: Tensor | null = null;
    let zLoss: Tensor | null = null;
    if (amplitudes !== null) {
      const total = plan.requested.reduce((s, v) => s + v, 0);
      const fraction = alloc(E, h.dtype);
      for (let i = 0; i < E; i++)
        fraction[i] = total > 0 ? (plan.requested[i] as number) / total : 0;
      loadBalance = loadBalanceLoss(p, fraction);
      zLoss = routerZLoss(amplitudes);
      this.stats.lastLoadBalance = loadBalance.item();
      this.stats.lastZLoss = zLoss.item();
    }
    return { y, loadBalance, zLoss, plan };
  }

  #record(plan: RoutingPlan, N: number): void {
    const s = this.stats;
    s.tokens += N;
    s.batches++;
    s.rounds += plan.rounds.length;
    s.droppedAssignments += plan.droppedAssignments;
    s.droppedTokens += plan.droppedTokens;
    for (let i = 0; i < plan.requested.length; i++) {
      s.requested[i] = (s.requested[i] as number) + (plan.requested[i] as number);
      s.admitted[i] = (s.admitted[i] as number) + (plan.admitted[i] as number);
    }
    for (let t = 0; t < N; t++) s.expertsServed += plan.servedPerToken[t] as number;
  }
}
