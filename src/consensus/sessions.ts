// Expiry of client sessions: the table of each client's last (seq, result) that gives exactly-once
// execution (a retried request gets the recorded result instead of running twice) would otherwise
// grow by one entry per client id forever (each node start, each CLI call, each bench client).
//
// As in Raft's client sessions (Ongaro's dissertation §6.3, https://github.com/ongardie/dissertation),
// expiry must be deterministic, so it uses only committed data: every `sessionPruneEveryBlocks`
// committed blocks, sessions whose last request committed more than `sessionIdleMsMax` of *block
// time* before that block are removed, then, if more than `sessionsMax` remain (client ids are
// free to choose, so a flood of them must not exhaust memory), the least recently used ones go,
// ties broken by client id. Every replica commits the same blocks with the same timestamps, so all
// expire the same sessions at the same height, and the state digest of checkpoints stays equal.
//
// What the client sees: a request from a client id with no session and seq > 1 is answered with
// `sessionExpiredError` and not executed (its outcome may already be recorded as executed before
// the session expired, so running it again could apply it twice; Raft answers SESSION_EXPIRED for
// the same reason). `RegistryClient` then continues under a fresh client id. A seq-1 request
// retried more than `sessionIdleMsMax` after it committed would run again; `RegistryClient` gives
// up on a request after 30 s, far below the 1 h default.

import { invariant } from "../common/assert.ts";
import type { SessionEntry } from "./storage.ts";

/** Block time a session may stay idle before it is removed. */
export const sessionIdleMsMax = 3_600_000;
/** Sessions kept at most; beyond it the least recently used are removed. */
export const sessionsMax = 65_536;
/** Committed blocks between two expiry passes (the pass is O(sessions)). */
export const sessionPruneEveryBlocks = 64;

/** The error result for a request whose session expired (or never existed) with seq > 1. */
export const sessionExpiredError =
  "session expired or unknown: this client id has no session and seq > 1; start a new client id at seq 1 (the request was not executed)";

/**
 * When a session's last request committed (block time). Sessions from snapshots written before
 * expiry existed carry no time: they count as time 0 (1970), so with real block times every
 * replica drops them at its first pass (their clients get `sessionExpiredError` once and continue
 * under a new id).
 */
export function sessionTimeMs(s: SessionEntry): number {
  return s.atMs ?? 0;
}

/**
 * Removes idle sessions and, above `max`, the least recently used, from `sessions` (in place).
 * `blockTimeMs` is the committed block's timestamp. Returns how many were removed.
 */
export function pruneSessions(
  sessions: Map<string, SessionEntry>,
  blockTimeMs: number,
  idleMsMax: number,
  max: number,
): number {
  invariant(idleMsMax > 0 && max > 0, "session limits are positive");
  const before = sessions.size;
  for (const [id, s] of sessions)
    if (blockTimeMs - sessionTimeMs(s) > idleMsMax) sessions.delete(id);
  if (sessions.size > max) {
    const byAge = [...sessions.values()].sort((a, b) => {
      const d = sessionTimeMs(a) - sessionTimeMs(b);
      return d !== 0 ? d : a.clientId < b.clientId ? -1 : a.clientId > b.clientId ? 1 : 0;
    });
    for (const s of byAge.slice(0, sessions.size - max)) sessions.delete(s.clientId);
  }
  invariant(sessions.size <= max, "sessions within the limit after pruning");
  return before - sessions.size;
}
