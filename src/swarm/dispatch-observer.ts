// What the dispatcher (RemoteExpertHost) tells an observer as it happens, so that observability
// (issue #8, src/observe/dispatch-observer.ts) records real measurements without the data plane
// depending on it: hedged duplicates (for their trace span and its link to the primary call),
// failovers with their reason, the coherence time of replicated weight updates, and the expert
// nodes' trace spans of sampled calls, which come back in the reply frames (frame-spans.ts).
// Every callback is optional and synchronous; the dispatcher guards each one, so an observer's bug
// never fails an expert call.

import type { ExpertId } from "../model/expert.ts";
import type { WireSpan } from "./frame-spans.ts";
import type { NodeAddress } from "./node-client.ts";

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
  /**
   * A node's spans of sampled calls arrived in its reply frames (validated by the decoder). With
   * this callback the dispatcher asks nodes for their spans of every sampled call.
   */
  nodeSpans?(node: NodeAddress, spans: readonly WireSpan[]): void;
}

/**
 * The NodeClient span sink for an observer: undefined when it does not collect node spans (the
 * nodes then export theirs themselves, if at all); a guarded callback otherwise, so that an
 * observer's bug never fails an expert call.
 */
export function spanSinkOf(
  observer: DispatchObserver | undefined,
): ((spans: readonly WireSpan[], node: NodeAddress) => void) | undefined {
  if (!observer?.nodeSpans) return undefined;
  return (spans, node) => {
    try {
      observer.nodeSpans?.(node, spans);
    } catch {
      // Spans are best effort; the call they describe goes on.
    }
  };
}
