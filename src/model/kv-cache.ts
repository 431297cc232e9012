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
//     generations never share state. Its buffers start at 64 positions and double up to the
//     context (production: 2,048 positions × d 1,024 × layers would otherwise be held up front).
//   - Continuous batching (`KvBatcher`): concurrent sessions' calls of one event-loop turn share a
//     pass; each still gets exactly the logits it would get alone.

import { setMaxListeners } from "node:events";
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
  /** `forwardCached` of several sequences (distinct caches) in one pass. */
  forwardCachedBatch(
    items: readonly { readonly ids: Int32Array; readonly cache: KvCache }[],
    opts?: CachedForwardOptions,
  ): Promise<Buf[]>;
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

  constructor(
    readonly model: CachedForward,
    /** Shares passes with other sessions' calls of the same event-loop turn (the gateway). */
    readonly batcher?: KvBatcher,
  ) {
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
    const logits = this.batcher
      ? await this.batcher.run(fresh, this.cache, opts)
      : await this.model.forwardCached(fresh, this.cache, opts);
    return logits.subarray((fresh.length - 1) * vocab, fresh.length * vocab);
  }
}

/** Abort listeners a shared pass's signal may carry: one per in-flight expert call. */
export const passSignalListenersMax = 4096;

/** Most token rows one batched pass takes; more calls wait for the next pass. */
export const batchRowsMax = 4096;

interface Pending {
  readonly ids: Int32Array;
  readonly cache: KvCache;
  readonly ctx: ExpertCallContext | undefined;
  readonly resolve: (logits: Buf) => void;
  readonly reject: (e: unknown) => void;
}

/**
 * Continuous batching of concurrent sequences (Yu et al. 2022, "Orca: A Distributed Serving System
 * for Transformer-Based Generative Models", OSDI): cached-forward calls issued in the same
 * event-loop turn run as one `forwardCachedBatch` pass, so 32 concurrent generations make one set
 * of trunk GEMMs and one call per chosen expert per step instead of 32. Each sequence's logits are
 * those it would get alone (rows are independent). The pass's expert calls carry the latest of the
 * callers' deadlines and are aborted only when every caller has aborted, so one client going away
 * never fails the others.
 */
export class KvBatcher {
  #pending: Pending[] = [];
  #scheduled = false;
  readonly stats = { passes: 0, sequences: 0, largestPass: 0 };

  constructor(
    readonly model: CachedForward,
    readonly rowsMax = batchRowsMax,
  ) {
    invariant(rowsMax >= 1, "batch rows");
  }

  run(ids: Int32Array, cache: KvCache, opts: CachedForwardOptions = {}): Promise<Buf> {
    return new Promise<Buf>((resolve, reject) => {
      this.#pending.push({ ids, cache, ctx: opts.ctx, resolve, reject });
      if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(() => this.#flush());
      }
    });
  }

  #flush(): void {
    this.#scheduled = false;
    const take: Pending[] = [];
    let rows = 0;
    while (this.#pending.length > 0) {
      const next = this.#pending[0] as Pending;
      if (take.length > 0 && rows + next.ids.length > this.rowsMax) break;
      take.push(next);
      rows += next.ids.length;
      this.#pending.shift();
    }
    if (this.#pending.length > 0) {
      this.#scheduled = true;
      setImmediate(() => this.#flush());
    }
    this.stats.passes++;
    this.stats.sequences += take.length;
    this.stats.largestPass = Math.max(this.stats.largestPass, take.length);
    const { ctx, release } = mergeContexts(take.map((p) => p.ctx));
    this.model
      .forwardCachedBatch(
        take.map((p) => ({ ids: p.ids, cache: p.cache })),
        ctx ? { ctx } : {},
      )
      .then(
        (outs) => {
          take.forEach((p, i) => {
            p.resolve(outs[i] as Buf);
          });
        },
        (e: unknown) => {
          for (const p of take) p.reject(e);
        },
      )
      .finally(release);
  }
}

/** One context for a shared pass: the latest deadline; aborted once every caller has aborted. */
function mergeContexts(ctxs: readonly (ExpertCallContext | undefined)[]): {
  ctx: ExpertCallContext | undefined;
  release: () => void;
} {
  const none = { ctx: undefined, release: () => {} };
  if (ctxs.length === 1) return { ctx: ctxs[0], release: () => {} };
  if (ctxs.some((c) => c === undefined)) return none;
  const deadlines = ctxs.map((c) => c?.deadlineMs);
  const deadlineMs = deadlines.some((d) => d === undefined)
    ? undefined
    : Math.max(...(deadlines as number[]));
  const signals = ctxs.map((c) => c?.signal);
  if (signals.some((s) => s === undefined))
    return { ctx: deadlineMs === undefined ? undefined : { deadlineMs }, release: () => {} };
  const ac = new AbortController();
  // Every expert call of the pass listens on this one signal (as on a request's own signal).
  setMaxListeners(passSignalListenersMax, ac.signal);
  let live = 0;
  const onAbort = () => {
    if (--live === 0) ac.abort(new Error("every request of this batched pass was cancelled"));
  };
  for (const s of signals as AbortSignal[])
    if (!s.aborted) {
      live++;
      s.addEventListener("abort", onAbort, { once: true });
    }
  if (live === 0) ac.abort(new Error("every request of this batched pass was cancelled"));
  const release = () => {
    for (const s of signals as AbortSignal[]) s.removeEventListener("abort", onAbort);
  };
  return {
    ctx: deadlineMs === undefined ? { signal: ac.signal } : { signal: ac.signal, deadlineMs },
    release,
  };
}
