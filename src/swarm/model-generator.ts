// The gateway's TextGenerator over the model of src/model/: the trunk runs here, every MoE layer
// dispatches its tokens to the experts through the trunk's ExpertHost (a RemoteExpertHost in the
// gateway). Sampling is the model's own (`sampleLogits`: temperature, top-k); this file only adds
// what serving needs — UTF-8 assembly of byte tokens, stop sequences, cancellation when the client
// goes away, and the caller's deadline passed down to every expert call.

import { Prng } from "../common/prng.ts";
import { sampleLogits } from "../model/generate.ts";
import type { MoeTransformer } from "../model/transformer.ts";
import { noGradAsync } from "../tensor/tensor.ts";
import {
  type GenerateRequest,
  type GenerateResult,
  GenerationDeadlineError,
  StopSequenceFilter,
  type TextGenerator,
  UnsupportedParameterError,
} from "./text-generator.ts";

/** Top-k of the model's sampler used for API requests (0 = all 256 bytes). */
export const samplingTopK = 0;

export class ModelTextGenerator implements TextGenerator {
  readonly contextTokens: number;
  #unseeded: Prng;

  constructor(
    readonly model: MoeTransformer,
    readonly modelId: string,
  ) {
    this.contextTokens = model.config.context;
    this.#unseeded = new Prng(model.config.seed ^ 0x5eed);
  }

  countTokens(text: string): number {
    return Buffer.byteLength(text, "utf8"); // byte-level model: one token per UTF-8 byte
  }

  async generate(req: GenerateRequest, onText: (delta: string) => void): Promise<GenerateResult> {
    if (req.topP < 1)
      throw new UnsupportedParameterError(
        "top_p",
        `this model samples with temperature over all bytes; top_p must be 1 (got ${req.topP})`,
      );
    const rng = req.seed === undefined ? this.#unseeded.fork() : new Prng(req.seed);
    const seq = [...Buffer.from(req.prompt, "utf8")];
    if (seq.length === 0) seq.push(0x0a);
    const promptTokens = this.countTokens(req.prompt);
    const decoder = new TextDecoder("utf-8");
    const filter = new StopSequenceFilter(req.stop);
    const { context, vocab } = this.model.config;
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
      const T = window.length;
      const { logits } = await noGradAsync(() =>
        this.model.forward(Int32Array.from(window), 1, T, undefined, {
          ctx: { signal: req.signal, deadlineMs: req.deadlineMs },
        }),
      );
      const b = sampleLogits(
        logits.data.subarray((T - 1) * vocab, T * vocab),
        req.temperature,
        samplingTopK,
        rng,
      );
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
