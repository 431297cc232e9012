// The gateway's TextGenerator over the model of src/model/: the trunk runs here, every MoE layer
// dispatches its tokens to the experts through the trunk's ExpertHost (a RemoteExpertHost in the
// gateway). Sampling is the model's own (`sampleLogits`: temperature, top-k) at top_p = 1, and
// nucleus sampling (`sampleNucleus`, Holtzman et al. 2020, https://arxiv.org/abs/1904.09751) below
// it; this file also adds what serving needs — UTF-8 assembly of byte tokens, stop sequences,
// cancellation when the client goes away, and the caller's deadline passed down to every expert
// call. Each request decodes through its own key/value cache (src/model/kv-cache.ts): the prompt
// is one prefill, then a step sends one row per MoE layer to the experts instead of the whole
// prefix (until the window slides: positions are absolute, so past the context every step
// re-prefills the last window). Steps of concurrent requests share one pass (continuous
// batching, KvBatcher), which gives every request the logits it would get alone.

import { invariant } from "../common/assert.ts";
import { Prng } from "../common/prng.ts";
import { byteVocab } from "../model/config.ts";
import { recomputeLastLogits, sampleLogits } from "../model/generate.ts";
import { KvBatcher, KvSession } from "../model/kv-cache.ts";
import type { MoeTransformer } from "../model/transformer.ts";
import {
  type GenerateRequest,
  type GenerateResult,
  GenerationDeadlineError,
  StopSequenceFilter,
  type TextGenerator,
} from "./text-generator.ts";

/** Top-k of the model's sampler used for API requests (0 = all 256 bytes). */
export const samplingTopK = 0;

/**
 * Nucleus (top-p) sampling over the byte tokens: the smallest set of them, most probable first (ties by token id),
 * whose probabilities under `temperature` sum to at least `topP`, renormalised, then one draw of
 * `rng`. Temperature 0 is greedy. With topP = 1 the set is every token.
 */
export function sampleNucleus(
  row: ArrayLike<number>,
  temperature: number,
  topP: number,
  rng: Prng,
): number {
  invariant(temperature >= 0, () => `temperature ${temperature}`);
  invariant(topP > 0 && topP <= 1, () => `top_p ${topP}`);
  // Bytes only, as the model's sampler: the special tokens after them are never generated.
  const n = Math.min(row.length, byteVocab);
  const idx = Array.from({ length: n }, (_, i) => i).sort(
    (a, b) => (row[b] as number) - (row[a] as number) || a - b,
  );
  if (temperature === 0) return idx[0] as number;
  const max = row[idx[0] as number] as number;
  const w = idx.map((i) => Math.exp(((row[i] as number) - max) / temperature));
  const total = w.reduce((a, b) => a + b, 0);
  let kept = 0;
  let mass = 0;
  while (kept < w.length && (kept === 0 || mass < topP * total)) mass += w[kept++] as number;
  let u = rng.next() * mass;
  for (let i = 0; i < kept; i++) {
    u -= w[i] as number;
    if (u <= 0) return idx[i] as number;
  }
  return idx[kept - 1] as number;
}

export type GeneratorDecoding = "batched" | "cached" | "recompute";

export class ModelTextGenerator implements TextGenerator {
  readonly contextTokens: number;
  /** Shared by this generator's concurrent requests (decoding "batched"). */
  readonly batcher: KvBatcher | undefined;
  #unseeded: Prng;

  constructor(
    readonly model: MoeTransformer,
    readonly modelId: string,
    /**
     * "batched" (default): per-request KV caches, and the steps of concurrent requests share
     * passes (KvBatcher); "cached": per-request KV caches, one pass per request; "recompute": the
     * whole window every token (the reference, no cache).
     */
    readonly decoding: GeneratorDecoding = "batched",
  ) {
    this.contextTokens = model.config.context;
    this.batcher = decoding === "batched" ? new KvBatcher(model) : undefined;
    this.#unseeded = new Prng(model.config.seed ^ 0x5eed);
  }

  countTokens(text: string): number {
    return Buffer.byteLength(text, "utf8"); // byte-level model: one token per UTF-8 byte
  }

  async generate(req: GenerateRequest, onText: (delta: string) => void): Promise<GenerateResult> {
    const rng = req.seed === undefined ? this.#unseeded.fork() : new Prng(req.seed);
    const seq = [...Buffer.from(req.prompt, "utf8")];
    if (seq.length === 0) seq.push(0x0a);
    const promptTokens = this.countTokens(req.prompt);
    const decoder = new TextDecoder("utf-8");
    const filter = new StopSequenceFilter(req.stop);
    const { context } = this.model.config;
    const session = new KvSession(this.model, this.batcher);
    let text = "";
    const emit = (piece: string) => {
      const out = filter.push(piece);
      if (out) {
        text += out;
        onText(out);
      }
    };
    for (let i = 0; i < req.maxTokens; i++) {
      req.signal.throwIfAborted();
      if (req.deadlineMs !== undefined && Date.now() > req.deadlineMs)
        throw new GenerationDeadlineError(req.deadlineMs);
      const window = seq.slice(-context);
      const ctx = { signal: req.signal, deadlineMs: req.deadlineMs };
      const row =
        this.decoding !== "recompute"
          ? await session.lastLogits(window, { ctx })
          : await recomputeLastLogits(this.model, window, { ctx });
      // top_p = 1 keeps the model's own sampler (same draws as `generate` for a seed).
      const b =
        req.topP < 1
          ? sampleNucleus(row, req.temperature, req.topP, rng)
          : sampleLogits(row, req.temperature, samplingTopK, rng);
      seq.push(b);
      emit(decoder.decode(Uint8Array.of(b), { stream: true }));
      if (filter.stopped)
        return { text, promptTokens, completionTokens: i + 1, finishReason: "stop" };
    }
    emit(decoder.decode());
    if (!filter.stopped) {
      const rest = filter.flush();
      if (rest) {
        text += rest;
        onText(rest);
      }
    }
    return {
      text,
      promptTokens,
      completionTokens: req.maxTokens,
      finishReason: filter.stopped ? "stop" : "length",
    };
  }
}
