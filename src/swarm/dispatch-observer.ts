// What the dispatcher (RemoteExpertHost) tells an observer as it happens, so that observability
// (issue #8, src/observe/dispatch-observer.ts) records real measurements without the data plane
// depending on it: hedged duplicates (for their trace span and its link to the primary call),
// failovers with their reason, and the coherence time of replicated weight updates.
// Every callback is optional and synchronous; the dispatcher guards each one, so an observer's bug
// never fails an expert call.

import type { ExpertId } from "../model/expert.ts";

/** Why a call moved to another replica. */
export type DispatchFailoverReason = "timeout" | "error" | "node_down";

/** A hedged attempt in flight; `end` is called exactly once when it settles or is cancelled. */
export interface HedgeHandle {
  /** W3C traceparent the hedged attempt carries in its frames (undefined: keep the caller's). */
  readonly traceparent: string | undefined;
  end(outcome: "won" | "lost" | "error"): void;
}

export interface DispatchObserver {
  /**
   * A read is being hedged to a second replica. `traceparent` is the caller's (the call span,
   * whose context the primary attempt carries); the returned handle's traceparent goes on the
   * hedged attempt's frames.
   */
  hedgeStarted?(hedge: {
    readonly expert: ExpertId;
    readonly primaryNode: string;
    readonly hedgeNode: string;
    readonly traceparent: string | undefined;
  }): HedgeHandle | undefined;
  /**
   * A call failed on `from`: a read goes on at `to` (null: no replica left); a write (`to` null)
   * needed only one replica and marks this one stale for `experts`.
   */
  failover?(event: {
    readonly experts: readonly ExpertId[];
    readonly from: string;
    readonly to: string | null;
    readonly reason: DispatchFailoverReason;
  }): void;
  /**
   * Replicas of an expert acknowledged the same weight version after an update: `seconds` from the
   * first replica's acknowledgement to the last one's (measured at the dispatcher).
   */
  coherence?(event: {
    readonly expert: ExpertId;
    readonly version: number;
    readonly replicas: number;
    readonly seconds: number;
  }): void;
}
