// Autoregressive sampling from the byte-level model: temperature-scaled softmax over the last
// position's logits, restricted to the top-k bytes (Fan et al. 2018), drawn with the seeded PRNG.
// Steps run through a per-call key/value cache (kv-cache.ts): the prompt is prefilled in one call,
// then each step feeds only the new byte. Positions are absolute, so once the sequence outgrows the
// context window every step re-prefills the last window (what full recompute does). `kvCache:
// false` keeps the old full-window recompute as the reference the tests compare against.

import { invariant } from "../common/assert.ts";
import type { Prng } from "../common/prng.ts";
import { type Buf, noGradAsync } from "../tensor/tensor.ts";
import { byteVocab } from "./config.ts";
import { type CachedForwardOptions, KvSession } from "./kv-cache.ts";
import type { MoeTransformer } from "./transformer.ts";

export interface SampleInit {
  readonly maxNewBytes: number;
  /** 0 = greedy. */
  readonly temperature: number;
  /** Sample among the k most likely bytes (0 = all). */
  readonly topK: number;
  readonly rng: Prng;
  /** Called with each new byte as it is produced. */
  readonly onByte?: (byte: number) => void;
  /** Incremental decoding with a key/value cache (default true); false re-reads the window. */
  readonly kvCache?: boolean;
}

/** Index sampled from logits row `row` (only the 256 byte values are eligible). */
export function sampleLogits(
  row: ArrayLike<number>,
  temperature: number,
  topK: number,
  rng: Prng,
): number {
  invariant(temperature >= 0 && topK >= 0, "temperature and top-k are non-negative");
  const n = Math.min(row.length, byteVocab);
  const idx = Array.from({ length: n }, (_, i) => i).sort(
    (a, b) => (row[b] as number) - (row[a] as number) || a - b,
  );
  if (temperature === 0) return idx[0] as number;
  const keep = topK > 0 ? idx.slice(0, Math.min(topK, n)) : idx;
  const max = row[keep[0] as number] as number;
  const w = keep.map((i) => Math.exp(((row[i] as number) - max) / temperature));
  const total = w.reduce((a, b) => a + b, 0);
  let u = rng.next() * total;
  for (let i = 0; i < keep.length; i++) {
    u -= w[i] as number;
    if (u <= 0) return keep[i] as number;
  }
  return keep[keep.length - 1] as number;
}

/**
 * The reference without a key/value cache: the whole window's forward (no tape, exact routes),
 * returning its last position's logits.
 */
export async function recomputeLastLogits(
  model: MoeTransformer,
  window: readonly number[],
  opts: CachedForwardOptions = {},
): Promise<Buf> {
  const T = window.length;
  const V = model.config.vocab;
  const { logits } = await noGradAsync(() =>
    model.forward(Int32Array.from(window), 1, T, undefined, {
      routingCache: false,
      ...(opts.ctx ? { ctx: opts.ctx } : {}),
    }),
  );
  return logits.data.subarray((T - 1) * V, T * V);
}

export async function generateBytes(
  model: MoeTransformer,
  prompt: ArrayLike<number>,
  init: SampleInit,
): Promise<Uint8Array> {
  const ctx = model.config.context;
  const seq: number[] = prompt.length > 0 ? Array.from(prompt) : [0x0a];
  const out: number[] = [];
  const session = (init.kvCache ?? true) ? new KvSession(model) : null;
  for (let i = 0; i < init.maxNewBytes; i++) {
    const window = seq.slice(-ctx);
    const row = session
      ? await session.lastLogits(window)
      : await recomputeLastLogits(model, window);
    const b = sampleLogits(row, init.temperature, init.topK, init.rng);
    seq.push(b);
    out.push(b);
    init.onByte?.(b);
  }
  return Uint8Array.from(out);
}
