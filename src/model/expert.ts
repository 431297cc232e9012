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

/**
 * Everything an expert's training depends on, for checkpoints that resume bit-exactly: per tensor
 * (w1, b1, w2, b2) its weights and AdamW first/second moments, float32 row-major.
 */
export interface ExpertTrainingState {
  readonly id: ExpertId;
  readonly tensors: Readonly<
    Record<
      string,
      { readonly weights: Float32Array; readonly m: Float32Array; readonly v: Float32Array }
    >
  >;
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
  /**
   * Optional (training checkpoints): copies of these experts' weights and optimizer moments. Only
   * meaningful between steps, when no gradient is pending. A host without it cannot be resumed.
   */
  exportTrainingState?(ids: readonly ExpertId[]): Promise<ExpertTrainingState[]>;
  /**
   * Optional: replaces these experts' weights and moments and clears their pending gradients.
   * Checks every state before changing any, so a rejected input leaves the host as it was.
   */
  importTrainingState?(states: readonly ExpertTrainingState[]): Promise<void>;
}
