// Checkers of a simulated run, kept apart from the harness that drives it (TigerBeetle keeps its
// state checker beside, not inside, the VOPR). Each returns a list of violations; empty = pass.

import type { Hex, ReplicaId } from "../types.ts";

/** What the harness recorded: per replica, every block it committed at each height (all lives). */
export interface CommitRecord {
  readonly replica: ReplicaId;
  readonly height: number;
  readonly blockId: Hex;
  readonly atMs: number;
  /** The replica reached this height by installing a certified snapshot (state-sync.ts). */
  readonly viaSnapshot?: boolean;
}

/**
 * Agreement on the committed prefix: no two honest replicas — and no replica across its restarts —
 * ever commit different blocks at the same height, and each replica commits heights in order
 * (a certified snapshot may skip heights; its block must still agree).
 */
export function checkAgreement(
  commits: readonly CommitRecord[],
  honest: ReadonlySet<ReplicaId>,
): string[] {
  const violations: string[] = [];
  const byHeight = new Map<number, { blockId: Hex; replica: ReplicaId }>();
  const lastHeight = new Map<ReplicaId, number>();
  for (const c of commits) {
    if (!honest.has(c.replica)) continue;
    const prev = byHeight.get(c.height);
    if (prev && prev.blockId !== c.blockId)
      violations.push(
        `agreement: replica ${c.replica} committed ${c.blockId.slice(0, 12)} at height ${c.height}, replica ${prev.replica} committed ${prev.blockId.slice(0, 12)}`,
      );
    if (!prev) byHeight.set(c.height, { blockId: c.blockId, replica: c.replica });
    const last = lastHeight.get(c.replica) ?? 0;
    if (c.height !== last + 1 && c.height > last && !c.viaSnapshot)
      violations.push(`order: replica ${c.replica} committed height ${c.height} after ${last}`);
    if (c.height > last) lastHeight.set(c.replica, c.height);
  }
  return violations;
}

/** Durability: a restarted replica recovers at least the height it had committed before the crash,
 *  with the same blocks. `recovered` lists (replica, height before crash, height after restart,
 *  id after restart at the old height). */
export interface RestartRecord {
  readonly replica: ReplicaId;
  readonly heightBeforeCrash: number;
  readonly idBeforeCrash: Hex;
  readonly heightAfterRestart: number;
  readonly idAfterRestartAtOldHeight: Hex | undefined;
}

export function checkDurability(restarts: readonly RestartRecord[]): string[] {
  const violations: string[] = [];
  for (const r of restarts) {
    if (r.heightAfterRestart < r.heightBeforeCrash)
      violations.push(
        `durability: replica ${r.replica} committed height ${r.heightBeforeCrash} before its crash but recovered only ${r.heightAfterRestart}`,
      );
    else if (
      r.idAfterRestartAtOldHeight !== undefined &&
      r.idAfterRestartAtOldHeight !== r.idBeforeCrash
    )
      violations.push(
        `durability: replica ${r.replica} recovered a different block at height ${r.heightBeforeCrash}`,
      );
  }
  return violations;
}

/**
 * Liveness after heal: once the network heals and crashed replicas restart, every honest replica
 * commits past the highest height committed anywhere at the heal, within `viewsMax` views.
 */
export interface LivenessProbe {
  readonly replica: ReplicaId;
  readonly viewAtHeal: number;
  /** The view in which it first committed beyond the heal height, if it did. */
  readonly viewAtResume: number | undefined;
}

export function checkLiveness(probes: readonly LivenessProbe[], viewsMax: number): string[] {
  const violations: string[] = [];
  for (const p of probes) {
    if (p.viewAtResume === undefined)
      violations.push(`liveness: replica ${p.replica} committed nothing new after the heal`);
    else if (p.viewAtResume - p.viewAtHeal > viewsMax)
      violations.push(
        `liveness: replica ${p.replica} resumed committing only after ${p.viewAtResume - p.viewAtHeal} views (> ${viewsMax})`,
      );
  }
  return violations;
}
