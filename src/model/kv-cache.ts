// Key/value cache for incremental (no-grad) inference: per sequence, each attention layer's keys
// and values of the positions already processed, so a generation step feeds only the new token —
// one row through the embeddings, attention projections, routers and experts instead of the whole
// window (as HF transformers' `past_key_values`, vLLM and llama.cpp do; Pope et al. 2022,
// "Efficiently Scaling Transformer Inference", https://arxiv.org/abs/2211.05102 §2).
//
// Guarantees:
//   - Exactness: position t's hidden states depend only on tokens 0..t (causal attention, row-wise
//     norms and MLPs, and an inference routing plan without capacity limit — see moe-layer.ts), so
//     the cached step's logits equal the full-window forward's last row up to float rounding.
//   - Sliding window: positions are ABSOLUTE (learned `pos_emb[t]`, GPT-2). Once a sequence
//     outgrows `context`, the window drops its first token and every kept token moves to a new
//     position, so every cached key/value is stale. `KvSession` then re-prefills the last window
//     (one call over `context` tokens) — exactly what full recompute computes. Context shifting
//     of the cache (llama.cpp) is only valid for relative encodings such as RoPE, not here.
//   - A cache belongs to one sequence: each request makes its own `KvSession`, so concurrent
//     generations never share state.

import { invariant } from "../common/assert.ts";
import { alloc, type Buf, type DType } from "../tensor/tensor.ts";
import type { ExpertCallContext } from "./expert.ts";

/** Keys and values of one attention layer, rows [position, d_model]. */
export interface LayerKv {
  readonly k: Buf;
  readonly v: Buf;
}

/** Positions the buffers hold at first; they double as the sequence grows, up to the context. */
export const kvInitialPositions = 64;

export class KvCache {
  #layers: LayerKv[];
  /** The token ids whose keys/values are cached, position 0 first. */
  readonly tokens: number[] = [];

  constructor(
    readonly nLayers: number,
    readonly dModel: number,
    /** Most positions (the model's context window). */
    readonly positionsMax: number,
    readonly dtype: DType,
  ) {
    invariant(nLayers >= 1 && dModel >= 1 && positionsMax >= 1, "KvCache dimensions");
    // Grown on demand: a short request on a long-context model (production: 2,048 positions)
    // does not hold the whole window's buffers.
    this.#layers = this.#allocate(Math.min(kvInitialPositions, positionsMax));
  }

  #allocate(positions: number): LayerKv[] {
    return Array.from({ length: this.nLayers }, () => ({
      k: alloc(positions * this.dModel, this.dtype),
      v: alloc(positions * this.dModel, this.dtype),
    }));
  }

  get layers(): readonly LayerKv[] {
    return this.#layers;
  }

  /** Positions the buffers can hold now. */
  get positionsAllocated(): number {
    return (this.#layers[0] as LayerKv).k.length / this.dModel;
  }

  /** Positions cached. */
  get length(): number {
    return this.tokens.length;
  }

  /** Forgets every position (the buffers are reused). */
  clear(): void {
    this.tokens.length = 0;
  }

  /** Bytes held by the buffers. */
  get bytes(): number {
    return this.#layers.reduce((s, l) => s + l.k.byteLength + l.v.byteLength, 0);
  }

  /** Stores layer `layer`'s keys/values of `n` new rows at positions length..length+n-1. */
  write(layer: number, k: Buf, v: Buf, n: number): void {
    const L = this.length;
    const C = this.dModel;
    invariant(L + n <= this.positionsMax, () => `KV cache: ${L}+${n} > ${this.positionsMax}`);
    invariant(k.length === n * C && v.length === n * C, "KV rows");
    if (L + n > this.positionsAllocated) {
      let cap = this.positionsAllocated;
      while (cap < L + n) cap *= 2;
      const grown = this.#allocate(Math.min(cap, this.positionsMax));
      grown.forEach((g, i) => {
        const old = this.#layers[i] as LayerKv;
        g.k.set(old.k.subarray(0, L * C));
        g.v.set(old.v.subarray(0, L * C));
      });
      this.#layers = grown;
    }
    const kv = this.#layers[layer] as LayerKv;
    kv.k.set(k, L * C);
    kv.v.set(v, L * C);
  }

  /** Records the new tokens once every layer has written their rows. */
  commit(ids: ArrayLike<number>): void {
    invariant(this.length + ids.length <= this.positionsMax, "KV cache overflow");
    for (let i = 0; i < ids.length; i++) this.tokens.push(ids[i] as number);
  }
}

/**
 * Causal multi-head attention of `n` new query rows q [n, C] (positions past..past+n-1) over the
 * cached keys/values of positions 0..past+n-1 (the new rows already written). Same arithmetic as
 * ops.causalAttention: scores q·k/√dh, softmax with the row max subtracted, accumulated in float64.
 */
export function cachedAttention(
  q: Buf,
  kv: LayerKv,
  past: number,
  n: number,
  C: number,
  H: number,
  dtype: DType,
): Buf {
  invariant(C % H === 0 && q.length === n * C, () => `cached attention: q ${q.length}, n=${n}`);
  const dh = C / H;
  const sc = 1 / Math.sqrt(dh);
  const out = alloc(n * C, dtype);
  const s = new Float64Array(past + n);
  const acc = new Float64Array(dh);
  for (let i = 0; i < n; i++) {
    const upto = past + i; // attends positions 0..upto
    for (let h = 0; h < H; h++) {
      const qo = i * C + h * dh;
      let max = Number.NEGATIVE_INFINITY;
      for (let j = 0; j <= upto; j++) {
        const ko = j * C + h * dh;
        let dot = 0;
        for (let d = 0; d < dh; d++) dot += (q[qo + d] as number) * (kv.k[ko + d] as number);
        const v = dot * sc;
        s[j] = v;
        if (v > max) max = v;
      }
      let sum = 0;
      acc.fill(0);
      for (let j = 0; j <= upto; j++) {
        const e = Math.exp((s[j] as number) - max);
        sum += e;
        const vo = j * C + h * dh;
        for (let d = 0; d < dh; d++) acc[d] = (acc[d] as number) + e * (kv.v[vo + d] as number);
      }
      for (let d = 0; d < dh; d++) out[qo + d] = (acc[d] as number) / sum;
    }
  }
  return out;
}

/** What a session needs from the model (MoeTransformer implements it). */
export interface CachedForward {
  readonly config: { readonly context: number; readonly vocab: number };
  newKvCache(): KvCache;
  /** Logits [n, vocab] of `ids` appended to the cached positions; writes their keys/values. */
  forwardCached(ids: Int32Array, cache: KvCache, opts?: CachedForwardOptions): Promise<Buf>;
}

export interface CachedForwardOptions {
  readonly ctx?: ExpertCallContext;
}

/** Counters of one session: how often the window had to be re-read. */
export interface KvSessionStats {
  /** Calls that started from an empty cache (the prompt, or a window slide). */
  prefills: number;
  /** Calls that only fed new tokens. */
  steps: number;
  /** Token rows sent through the trunk (and, at most, through each MoE layer). */
  rowsFed: number;
}

/**
 * One sequence's incremental decoder. `lastLogits(window)` returns the logits of the window's last
 * position: when the cached tokens are a proper prefix of `window` it feeds only the rest; otherwise
 * (first call, or the window slid: positions are absolute) it clears the cache and prefills
 * `window` in one call.
 */
export class KvSession {
  readonly cache: KvCache;
  readonly stats: KvSessionStats = { prefills: 0, steps: 0, rowsFed: 0 };

  constructor(readonly model: CachedForward) {
    this.cache = model.newKvCache();
  }

  async lastLogits(window: readonly number[], opts: CachedForwardOptions = {}): Promise<Buf> {
    const { context, vocab } = this.model.config;
    invariant(
      window.length >= 1 && window.length <= context,
      () => `window of ${window.length} tokens; the context is ${context}`,
    );
    const cached = this.cache.tokens;
    let extends_ = cached.length < window.length;
    for (let i = 0; extends_ && i < cached.length; i++) extends_ = cached[i] === window[i];
    if (extends_ && cached.length > 0) this.stats.steps++;
    else {
      this.cache.clear();
      this.stats.prefills++;
    }
    const fresh = Int32Array.from(window.slice(this.cache.length));
    this.stats.rowsFed += fresh.length;
    const logits = await this.model.forwardCached(fresh, this.cache, opts);
    return logits.subarray((fresh.length - 1) * vocab, fresh.length * vocab);
  }
}
