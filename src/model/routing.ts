// Which experts each token goes to, given its routing probabilities (the spec's
// `quantum_superposition` "measurement"), for the three activation modes of the expert tiers, and
// the capacity limit that drops assignments an expert cannot take.
//
//   parallel   — fixed top-k experts, all dispatched together (Switch / GShard).
//   selective  — top-p: the smallest set of most-probable experts whose mass reaches
//                `collapse_threshold`, bounded by max-k; dispatched together.
//   sequential — cascade: experts consulted one round at a time in order of probability; a token
//                stops once the mass of the experts that actually served it passes the threshold.
//                An assignment dropped for capacity adds no mass, so the token moves on to its
//                next expert in the next round (at most max-k rounds).
//
// Capacity (Switch Transformer): an expert takes at most ⌈capacity_factor · N · k / E⌉ assignments
// per batch; the rest are dropped (the token keeps only its residual path for that expert) and
// counted. Assignments are admitted in priority order: first choices of all tokens before second
// choices (GShard's "top-1 first"), tokens in position order within a choice rank.
// References: Fedus et al. 2021 (Switch); Lepikhin et al. 2020 (GShard); Huang et al. 2024 (top-p
// routing, "Harder Tasks Need More Experts: Dynamic Routing in MoE Models").

import { invariant } from "../common/assert.ts";
import type { Buf } from "../tensor/tensor.ts";
import type { Activation } from "./config.ts";

/** Experts of one row of probabilities sorted by probability, descending (ties: lower index). */
export function rankExperts(p: Buf, off: number, E: number): number[] {
  const idx = Array.from({ length: E }, (_, i) => i);
  idx.sort((a, b) => (p[off + b] as number) - (p[off + a] as number) || a - b);
  return idx;
}

/** The k most probable experts. */
export function topK(p: Buf, off: number, E: number, k: number): number[] {
  invariant(k >= 1 && k <= E, () => `top-k: k=${k} with ${E} experts`);
  return rankExperts(p, off, E).slice(0, k);
}

/** The smallest prefix of experts by probability whose mass reaches `threshold`, at most maxK. */
export function topP(p: Buf, off: number, E: number, threshold: number, maxK: number): number[] {
  invariant(maxK >= 1 && maxK <= E, () => `top-p: max-k=${maxK} with ${E} experts`);
  const ranked = rankExperts(p, off, E);
  const out: number[] = [];
  let mass = 0;
  for (const e of ranked) {
    if (out.length >= maxK) break;
    out.push(e);
    mass += p[off + e] as number;
    if (mass >= threshold) break;
  }
  return out;
}

export interface Assignment {
  readonly token: number;
  readonly expert: number;
}

/** One dispatch round: the assignments admitted per expert. */
export interface RoutingRound {
  /** For each expert, the tokens it serves in this round (ascending priority order). */
  readonly tokensByExpert: readonly number[][];
}

export interface RoutingPlan {
  readonly rounds: readonly RoutingRound[];
  /** Assignments the router wanted before capacity, per expert (load-balance statistics). */
  readonly requested: Int32Array;
  /** Assignments admitted, per expert. */
  readonly admitted: Int32Array;
  /** Assignments dropped for capacity. */
  readonly droppedAssignments: number;
  /** Tokens that no expert served at all. */
  readonly droppedTokens: number;
  /** Experts that served each token. */
  readonly servedPerToken: Int32Array;
  readonly capacity: number;
}

export interface RoutingRule {
  readonly activation: Activation;
  readonly topK: number;
  readonly threshold: number;
  readonly capacityFactor: number;
}

export function expertCapacity(tokens: number, experts: number, k: number, factor: number): number {
  return Math.max(1, Math.ceil((factor * tokens * k) / experts));
}

/** Plans dispatch of N tokens with probabilities p [N,E] under `rule`. */
export function planRouting(p: Buf, N: number, E: number, rule: RoutingRule): RoutingPlan {
  invariant(p.length === N * E, () => `planRouting: p has ${p.length} values for ${N}×${E}`);
  const k = Math.min(rule.topK, E);
  const capacity = expertCapacity(N, E, k, rule.capacityFactor);
  const load = new Int32Array(E);
  const requested = new Int32Array(E);
  const served = new Int32Array(N);
  let dropped = 0;
  const rounds: RoutingRound[] = [];

  const admit = (round: number[][], t: number, e: number): boolean => {
    requested[e] = (requested[e] as number) + 1;
    if ((load[e] as number) >= capacity) {
      dropped++;
      return false;
    }
    load[e] = (load[e] as number) + 1;
    (round[e] as number[]).push(t);
    served[t] = (served[t] as number) + 1;
    return true;
  };

  if (rule.activation === "sequential") {
    const ranked: number[][] = [];
    for (let t = 0; t < N; t++) ranked.push(rankExperts(p, t * E, E));
    const mass = new Float64Array(N);
    const next = new Int32Array(N); // next rank to consult
    let active = Array.from({ length: N }, (_, t) => t);
    for (let r = 0; r < k && active.length > 0; r++) {
      const round: number[][] = Array.from({ length: E }, () => []);
      const still: number[] = [];
      for (const t of active) {
        const e = (ranked[t] as number[])[next[t] as number] as number;
        next[t] = (next[t] as number) + 1;
        if (admit(round, t, e)) mass[t] = (mass[t] as number) + (p[t * E + e] as number);
        if ((mass[t] as number) < rule.threshold && (next[t] as number) < k) still.push(t);
      }
      rounds.push({ tokensByExpert: round });
      active = still;
    }
  } else {
    const choices: number[][] = [];
    for (let t = 0; t < N; t++) {
      choices.push(
        rule.activation === "parallel"
          ? topK(p, t * E, E, k)
          : topP(p, t * E, E, rule.threshold, k),
      );
    }
    const round: number[][] = Array.from({ length: E }, () => []);
    for (let rank = 0; rank < k; rank++)
      for (let t = 0; t < N; t++) {
        const e = (choices[t] as number[])[rank];
        if (e !== undefined) admit(round, t, e);
      }
    rounds.push({ tokensByExpert: round });
  }
  let droppedTokens = 0;
  for (let t = 0; t < N; t++) if (served[t] === 0) droppedTokens++;
  return {
    rounds,
    requested,
    admitted: load,
    droppedAssignments: dropped,
    droppedTokens,
    servedPerToken: served,
    capacity,
  };
}
