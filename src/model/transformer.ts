// The hierarchical MoE transformer: a decoder-only, byte-level language model (GPT-2 layout, pre-
// norm) whose blocks are grouped into the spec's three tiers — Sensory Cortex, Association Areas,
// Prefrontal Cortex — each block's feed-forward sublayer being an MoE layer with its tier's
// experts, width and activation mode. The trunk (embeddings, attention, norms, routers, head)
// lives here; the experts live behind `ExpertHost`, so they may be local or on swarm nodes.
//
//   x = tok_emb[ids] + pos_emb[t]                                    [B·T, C]
//   per block:  x += W_o · attention(LN1(x))                         [B·T, C]
//               x += Σ_e p_e · expert_e(LN2(x))  (MoE layer)         [B·T, C]
//   logits = LN_f(x) · W_head + b_head                               [B·T, V]
//   loss = CE + w_lb · Σ load_balance + w_z · Σ z_loss
// References: Radford et al. 2019 (GPT-2); Karpathy's nanoGPT model.py; Fedus et al. 2021.

import { invariant } from "../common/assert.ts";
import { Prng } from "../common/prng.ts";
import type { OnnxKernels } from "../tensor/onnx-kernels.ts";
import {
  add,
  addBias,
  causalAttention,
  crossEntropy,
  embedding,
  layerNorm,
  linear,
  weightedSum,
} from "../tensor/ops.ts";
import { alloc, type Buf, type DType, noGradAsync, Tensor } from "../tensor/tensor.ts";
import { type ModelConfig, moeLayers, totalBlocks } from "./config.ts";
import type { ExpertCallContext, ExpertHost, ExpertId } from "./expert.ts";
import { initStd } from "./expert-ffn.ts";
import { type CachedForwardOptions, cachedAttention, KvCache } from "./kv-cache.ts";
import { MoeLayer, type MoeLayerStats } from "./moe-layer.ts";

interface Block {
  readonly ln1g: Tensor;
  readonly ln1b: Tensor;
  readonly wq: Tensor;
  readonly bq: Tensor;
  readonly wk: Tensor;
  readonly bk: Tensor;
  readonly wv: Tensor;
  readonly bv: Tensor;
  readonly wo: Tensor;
  readonly bo: Tensor;
  readonly ln2g: Tensor;
  readonly ln2b: Tensor;
  readonly moe: MoeLayer;
}

export interface ForwardResult {
  readonly logits: Tensor;
  /** Cross-entropy in nats per token (when targets were given). */
  readonly ce: Tensor | null;
  /** CE plus the weighted auxiliary losses (when targets were given and a tape is recorded). */
  readonly loss: Tensor | null;
  readonly loadBalance: number;
  readonly zLoss: number;
}

export interface ForwardOptions {
  readonly ctx?: ExpertCallContext;
  /** Reuse cached routes in inference (default true); evaluation turns it off to stay exact. */
  readonly routingCache?: boolean;
}

export class MoeTransformer {
  readonly config: ModelConfig;
  readonly host: ExpertHost;
  readonly dtype: DType;
  readonly tokEmb: Tensor;
  readonly posEmb: Tensor;
  readonly blocks: readonly Block[];
  readonly lnfG: Tensor;
  readonly lnfB: Tensor;
  readonly head: Tensor;
  readonly headBias: Tensor;
  /** Every trunk parameter by its checkpoint name. */
  readonly params: ReadonlyMap<string, Tensor>;

  /** Native trunk kernels (float32); without them the TypeScript ops run. */
  readonly kernels: OnnxKernels | null;

  constructor(
    mc: ModelConfig,
    host: ExpertHost,
    dtype: DType = "float32",
    kernels: OnnxKernels | null = null,
  ) {
    invariant(mc.dModel % mc.nHeads === 0, "d_model divisible by n_heads");
    this.config = mc;
    this.host = host;
    this.dtype = dtype;
    this.kernels = dtype === "float32" ? kernels : null;
    const rng = new Prng(mc.seed);
    const params = new Map<string, Tensor>();
    const C = mc.dModel;
    const mk = (name: string, shape: number[], std: number, fill = 0): Tensor => {
      const n = shape.reduce((a, b) => a * b, 1);
      const data = alloc(n, dtype);
      for (let i = 0; i < n; i++) data[i] = std > 0 ? rng.normal() * std : fill;
      const t = Tensor.param(data, shape, name);
      params.set(name, t);
      return t;
    };
    const residualStd = initStd / Math.sqrt(2 * totalBlocks(mc));
    this.tokEmb = mk("tok_emb", [mc.vocab, C], initStd);
    this.posEmb = mk("pos_emb", [mc.context, C], initStd);
    this.blocks = moeLayers(mc).map((info) => {
      const p = `blocks.${info.layer}`;
      const E = info.tier.experts;
      return {
        ln1g: mk(`${p}.ln1.gamma`, [C], 0, 1),
        ln1b: mk(`${p}.ln1.beta`, [C], 0),
        wq: mk(`${p}.attn.wq`, [C, C], initStd),
        bq: mk(`${p}.attn.bq`, [C], 0),
        wk: mk(`${p}.attn.wk`, [C, C], initStd),
        bk: mk(`${p}.attn.bk`, [C], 0),
        wv: mk(`${p}.attn.wv`, [C, C], initStd),
        bv: mk(`${p}.attn.bv`, [C], 0),
        wo: mk(`${p}.attn.wo`, [C, C], residualStd),
        bo: mk(`${p}.attn.bo`, [C], 0),
        ln2g: mk(`${p}.ln2.gamma`, [C], 0, 1),
        ln2b: mk(`${p}.ln2.beta`, [C], 0),
        // Amplitudes a ~ N(0, 1/E) at init, so Σa² ≈ 1 and the z-loss starts near 0.
        moe: new MoeLayer(info, C, mk(`${p}.router`, [C, E], 1 / Math.sqrt(C * E)), mc.routing),
      };
    });
    this.lnfG = mk("ln_f.gamma", [C], 0, 1);
    this.lnfB = mk("ln_f.beta", [C], 0);
    this.head = mk("head.weight", [C, mc.vocab], initStd);
    this.headBias = mk("head.bias", [mc.vocab], 0);
    this.params = params;
  }

  /** Trunk parameters that get weight decay: matrices except embeddings and routers. */
  static decays(p: Tensor): boolean {
    return p.shape.length === 2 && !p.name.endsWith("emb") && !p.name.endsWith(".router");
  }

  /** Every expert id the model calls. */
  expertIds(): ExpertId[] {
    return this.blocks.flatMap((b) =>
      Array.from({ length: b.moe.info.tier.experts }, (_, e) => ({
        layer: b.moe.info.layer,
        expert: e,
      })),
    );
  }

  /**
   * Logits for B sequences of T tokens (ids row-major [B, T]); with `targets` also the losses.
   */
  async forward(
    ids: Int32Array,
    B: number,
    T: number,
    targets?: Int32Array,
    opts: ForwardOptions = {},
  ): Promise<ForwardResult> {
    const mc = this.config;
    if (T < 1 || T > mc.context)
      throw new RangeError(`sequence length must be in [1, ${mc.context}]; got ${T}`);
    invariant(ids.length === B * T, () => `ids: ${ids.length} ≠ ${B}×${T}`);
    const pos = new Int32Array(B * T);
    for (let i = 0; i < B * T; i++) pos[i] = i % T;
    let x = add(embedding(this.tokEmb, ids), embedding(this.posEmb, pos));
    const lb: Tensor[] = [];
    const z: Tensor[] = [];
    for (const blk of this.blocks) {
      const h = layerNorm(x, blk.ln1g, blk.ln1b);
      const q = await this.#linear(h, blk.wq, blk.bq);
      const k = await this.#linear(h, blk.wk, blk.bk);
      const v = await this.#linear(h, blk.wv, blk.bv);
      const att = this.kernels
        ? await this.kernels.causalAttention(q, k, v, B, T, mc.nHeads)
        : causalAttention(q, k, v, B, T, mc.nHeads);
      x = add(x, await this.#linear(att, blk.wo, blk.bo));
      const h2 = layerNorm(x, blk.ln2g, blk.ln2b);
      const moe = await blk.moe.forward(h2, this.host, opts.ctx, opts.routingCache ?? true);
      x = add(x, moe.y);
      if (moe.loadBalance) lb.push(moe.loadBalance);
      if (moe.zLoss) z.push(moe.zLoss);
    }
    const logits = await this.#linear(layerNorm(x, this.lnfG, this.lnfB), this.head, this.headBias);
    const sum = (ts: Tensor[]) => ts.reduce((s, t) => s + t.item(), 0);
    if (targets === undefined)
      return { logits, ce: null, loss: null, loadBalance: sum(lb), zLoss: sum(z) };
    const ce = crossEntropy(logits, targets);
    const r = mc.routing;
    const loss =
      lb.length + z.length > 0
        ? weightedSum(
            [ce, ...lb, ...z],
            [1, ...lb.map(() => r.loadBalanceWeight), ...z.map(() => r.zLossWeight)],
          )
        : ce;
    return { logits, ce, loss, loadBalance: sum(lb), zLoss: sum(z) };
  }

  /** An empty key/value cache for one sequence of this model (see kv-cache.ts). */
  newKvCache(): KvCache {
    return new KvCache(this.blocks.length, this.config.dModel, this.config.context, this.dtype);
  }

  /**
   * Incremental inference (no tape): logits [n, vocab] for `ids` at positions L..L+n-1 after the
   * L positions in `cache`, attending over the cached keys/values; appends the new rows' keys and
   * values to the cache. Only the n new rows go through the routers and experts. The routing
   * (superposition) cache is not consulted: each token is routed once per sequence here, and a
   * quantised-key hit would reuse another state's gates, so routes are computed exactly.
   */
  async forwardCached(
    ids: Int32Array,
    cache: KvCache,
    opts: CachedForwardOptions = {},
  ): Promise<Buf> {
    return (await this.forwardCachedBatch([{ ids, cache }], opts))[0] as Buf;
  }

  /**
   * `forwardCached` for several sequences in one pass (continuous batching, Yu et al. 2022,
   * "Orca", OSDI): their new rows share every GEMM, router and expert call; attention stays per
   * sequence over its own cache. Rows are independent (row-wise ops, inference routing without
   * capacity), so each sequence gets the logits it would get alone.
   */
  async forwardCachedBatch(
    items: readonly { readonly ids: Int32Array; readonly cache: KvCache }[],
    opts: CachedForwardOptions = {},
  ): Promise<Buf[]> {
    const mc = this.config;
    const C = mc.dModel;
    invariant(items.length >= 1, "cached forward: no sequences");
    invariant(new Set(items.map((it) => it.cache)).size === items.length, "one cache per item");
    const offsets: number[] = [];
    let N = 0;
    for (const { ids, cache } of items) {
      const n = ids.length;
      const L = cache.length;
      if (n < 1 || L + n > mc.context)
        throw new RangeError(
          `cached forward: ${L} cached + ${n} new tokens must be in [1, ${mc.context}]`,
        );
      invariant(
        cache.nLayers === this.blocks.length && cache.dModel === C,
        "KV cache belongs to another model shape",
      );
      offsets.push(N);
      N += n;
    }
    return noGradAsync(async () => {
      const allIds = new Int32Array(N);
      const pos = new Int32Array(N);
      items.forEach(({ ids, cache }, s) => {
        const o = offsets[s] as number;
        allIds.set(ids, o);
        for (let i = 0; i < ids.length; i++) pos[o + i] = cache.length + i;
      });
      let x = add(embedding(this.tokEmb, allIds), embedding(this.posEmb, pos));
      for (let li = 0; li < this.blocks.length; li++) {
        const blk = this.blocks[li] as Block;
        const h = layerNorm(x, blk.ln1g, blk.ln1b);
        const q = await this.#linear(h, blk.wq, blk.bq);
        const k = await this.#linear(h, blk.wk, blk.bk);
        const v = await this.#linear(h, blk.wv, blk.bv);
        const att = alloc(N * C, this.dtype);
        for (let s = 0; s < items.length; s++) {
          const { ids, cache } = items[s] as (typeof items)[number];
          const n = ids.length;
          const L = cache.length;
          const rows = (t: Tensor) =>
            t.data.subarray((offsets[s] as number) * C, ((offsets[s] as number) + n) * C);
          cache.write(li, rows(k), rows(v), n);
          // A prefill is the full forward's attention over the window (same kernel); a step
          // attends its query rows over the cache.
          let o: Buf;
          if (L === 0) {
            const [qs, ks, vs] = [q, k, v].map((t) => new Tensor(rows(t), [n, C]));
            o = (
              this.kernels
                ? await this.kernels.causalAttention(
                    qs as Tensor,
                    ks as Tensor,
                    vs as Tensor,
                    1,
                    n,
                    mc.nHeads,
                  )
                : causalAttention(qs as Tensor, ks as Tensor, vs as Tensor, 1, n, mc.nHeads)
            ).data;
          } else {
            const kv = cache.layers[li] as (typeof cache.layers)[number];
            o = cachedAttention(rows(q), kv, L, n, C, mc.nHeads, this.dtype);
          }
          att.set(o, (offsets[s] as number) * C);
        }
        x = add(x, await this.#linear(new Tensor(att, [N, C]), blk.wo, blk.bo));
        const h2 = layerNorm(x, blk.ln2g, blk.ln2b);
        x = add(x, (await blk.moe.forward(h2, this.host, opts.ctx, false)).y);
      }
      for (const { ids, cache } of items) cache.commit(ids);
      const logits = await this.#linear(
        layerNorm(x, this.lnfG, this.lnfB),
        this.head,
        this.headBias,
      );
      const V = mc.vocab;
      return items.map((it, s) =>
        logits.data.subarray(
          (offsets[s] as number) * V,
          ((offsets[s] as number) + it.ids.length) * V,
        ),
      );
    });
  }

  async #linear(x: Tensor, w: Tensor, b: Tensor): Promise<Tensor> {
    return this.kernels ? addBias(await this.kernels.matmul(x, w), b) : linear(x, w, b);
  }

  moeLayers(): MoeLayer[] {
    return this.blocks.map((b) => b.moe);
  }

  routingStats(): (MoeLayerStats & {
    cacheHitRate: number;
    cacheHits: number;
    cacheMisses: number;
  })[] {
    return this.blocks.map((b) => ({
      ...b.moe.stats,
      cacheHitRate: b.moe.cache.hitRate,
      cacheHits: b.moe.cache.hits,
      cacheMisses: b.moe.cache.misses,
    }));
  }

  resetRoutingStats(): void {
    for (const b of this.blocks) b.moe.resetStats();
  }

  /** Routing depends on weights: call after every weight change. */
  clearRoutingCaches(): void {
    for (const b of this.blocks) b.moe.cache.clear();
  }
}
