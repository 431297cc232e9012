// What the gateway's HTTP API needs from the model: a text generator. The model (issue #4) runs
// its trunk in the gateway process with a RemoteExpertHost as its ExpertHost and implements this
// interface; the API layer (openai-api.ts) knows nothing of tensors.

export interface GenerateRequest {
  readonly prompt: string;
  /** Most new tokens. */
  readonly maxTokens: number;
  /** 0 = greedy. */
  readonly temperature: number;
  readonly topP: number;
  readonly seed: number | undefined;
  /** Generation ends before any of these strings would appear. */
  readonly stop: readonly string[];
  readonly signal: AbortSignal;
  /** Absolute deadline (epoch ms); passed to every expert call so nodes drop work nobody awaits. */
  readonly deadlineMs?: number;
}

export interface GenerateResult {
  readonly text: string;
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly finishReason: "stop" | "length";
}

export interface TextGenerator {
  /** The model name clients pass as `model`. */
  readonly modelId: string;
  /** Context window in tokens (prompt + completion). */
  readonly contextTokens: number;
  /** Tokens a prompt takes (to reject over-long requests before generating). */
  countTokens(text: string): number;
  /** Generates; `onText` receives each piece of text as soon as it is final (for streaming). */
  generate(req: GenerateRequest, onText: (delta: string) => void): Promise<GenerateResult>;
}

/**
 * OpenAI stop-sequence semantics for a stream of text pieces: the output ends right before the
 * first occurrence of any stop string, and nothing of a stop string is ever emitted. Text that
 * could still turn out to be the start of a stop string is held back until it cannot.
 */
export class StopSequenceFilter {
  #held = "";
  #stopped = false;

  constructor(private readonly stops: readonly string[]) {}

  get stopped(): boolean {
    return this.#stopped;
  }

  /** Feeds a piece; returns the text that is now safe to emit. */
  push(piece: string): string {
    if (this.#stopped) return "";
    const text = this.#held + piece;
    let cut = -1;
    for (const s of this.stops) {
      const i = text.indexOf(s);
      if (i !== -1 && (cut === -1 || i < cut)) cut = i;
    }
    if (cut !== -1) {
      this.#stopped = true;
      this.#held = "";
      return text.slice(0, cut);
    }
    // hold back the longest suffix that is a proper prefix of a stop string
    let keep = 0;
    for (const s of this.stops)
      for (let k = Math.min(s.length - 1, text.length); k > keep; k--)
        if (text.endsWith(s.slice(0, k))) {
          keep = k;
          break;
        }
    this.#held = text.slice(text.length - keep);
    return text.slice(0, text.length - keep);
  }

  /** At the end of generation: the held text (it never became a stop string). */
  flush(): string {
    const t = this.#stopped ? "" : this.#held;
    this.#held = "";
    return t;
  }
}

/** A request parameter this generator cannot honour (HTTP 400, naming the parameter). */
export class UnsupportedParameterError extends Error {
  constructor(
    readonly param: string,
    message: string,
  ) {
    super(message);
    this.name = "UnsupportedParameterError";
  }
}

/** The completion ran past its wall-clock budget (HTTP 504 at the API). */
export class GenerationDeadlineError extends Error {
  constructor(readonly deadlineMs: number) {
    super(`generation ran past its deadline (${new Date(deadlineMs).toISOString()})`);
    this.name = "GenerationDeadlineError";
  }
}
