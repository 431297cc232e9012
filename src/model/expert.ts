// The contract between the MoE layer and wherever its experts run. The model calls experts only
// through `ExpertHost`, so the swarm (issue #5) can put experts on other processes — behind the
// wire protocol, with replicas, hedging and deadlines — without touching the model.
//
// Calls are stateless like hivemind's RemoteExpert: `backward` carries the expert's input again and
// the host recomputes what it needs, so no activation state is kept between calls on a host. The
// host accumulates its experts' parameter gradients; `applyUpdate` applies them with the
// optimizer, so that training with remote experts follows the same update rule as local training.

/** An expert of one MoE layer. `layer` is the global index of the MoE block (0-based, all tiers). */
export interface ExpertId {
  readonly layer: number;
  readonly expert: number;
}

export function expertKey(id: ExpertId): string {
  return `L${id.layer}.E${id.expert}`;
}

/** Per-call metadata that travels with a request (deadline, tracing). */
export interface ExpertCallContext {
  /** Absolute deadline, epoch milliseconds. */
  readonly deadlineMs?: number;
  /** W3C trace context of the calling span. */
  readonly traceparent?: string;
  readonly signal?: AbortSignal;
}

/** One optimizer step for the experts a host owns. */
export interface ExpertUpdate {
  /** 1-based optimizer step (AdamW bias correction uses it). */
  readonly step: number;
  readonly learningRate: number;
  /** Multiplier applied to the accumulated gradients first (global-norm clipping, 1 = none). */
  readonly gradScale: number;
}

export interface ExpertHost {
  /** y = FFN_e(x). `x` is [tokens, d_model] row-major float32; so is the result. */
  forward(
    id: ExpertId,
    x: Float32Array,
    tokens: number,
    ctx?: ExpertCallContext,
  ): Promise<Float32Array>;
  /**
   * dL/dx for dL/dy = `dy` at input `x` (both [tokens, d_model]). Accumulates dL/dθ of the expert
   * on its host.
   */
  backward(
    id: ExpertId,
    x: Float32Array,
    dy: Float32Array,
    tokens: number,
    ctx?: ExpertCallContext,
  ): Promise<Float32Array>;
  /** Σ‖g‖² of the accumulated gradients of these experts (for global-norm clipping). */
  gradSquaredNorm(ids: readonly ExpertId[]): Promise<number>;
  /** Applies and clears the accumulated gradients of these experts. */
  applyUpdate(ids: readonly ExpertId[], update: ExpertUpdate): Promise<void>;
}
