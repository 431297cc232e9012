// The gateway's HTTP API, compatible with OpenAI's REST API so that existing clients (the official
// `openai` npm package, curl scripts, LangChain) work unchanged:
//   POST /v1/completions, POST /v1/chat/completions (both with `stream: true` as server-sent
//   events ending in `data: [DONE]`), GET /v1/models, GET /healthz, GET /readyz, and
//   GET /v1/swarm (dispatch counters and node health, for issue #8's metrics).
// Reference: https://platform.openai.com/docs/api-reference (completions, chat, streaming).
//
// Every body is size-capped and validated with zod before use; errors come back in OpenAI's shape
// `{ "error": { "message", "type", "param", "code" } }` with the matching status (400 bad request,
// 404 unknown model or route, 405, 413 body too large, 429 too many requests in flight, 503 the
// swarm cannot serve, 500 anything else). A handler error never takes the server down.
// Other modules mount routes (issue #8's /metrics, dashboard) through `extraRoutes`, tried first.

import { randomUUID } from "node:crypto";
import { setMaxListeners } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { z } from "zod";
import { invariant } from "../common/assert.ts";
import { NoReplicaError } from "./errors.ts";
import {
  type GenerateResult,
  GenerationDeadlineError,
  type TextGenerator,
  UnsupportedParameterError,
} from "./text-generator.ts";

/** Largest request body accepted. */
export const httpBodyBytesMax = 1024 * 1024;
/** Generation requests served at once; more get 429. */
export const httpRequestsInflightMax = 64;
/** Most stop sequences (OpenAI's limit). */
export const stopSequencesMax = 4;
/** Most chat messages in one request. */
export const chatMessagesMax = 256;
/** Listeners one completion's abort signal may hold (concurrent expert calls of a layer). */
export const abortListenersMax = 4096;
/** How long an idle keep-alive connection is kept open. */
export const httpKeepAliveMs = 65_000;
/** Wall-clock budget of one completion; every expert call of it carries what is left. */
export const completionDeadlineMs = 300_000;

/** A request handler that answered (true) or left the request to the next one (false). */
export type HttpRoute = (req: IncomingMessage, res: ServerResponse) => boolean;

export interface ApiCounters {
  httpRequests: number;
  completions: number;
  streams: number;
  clientErrors: number;
  serverErrors: number;
  completionTokens: number;
}

export interface OpenAiApiInit {
  readonly generator: TextGenerator;
  /** Readiness for /readyz (e.g. every expert has a healthy replica). */
  readonly ready: () => Promise<boolean>;
  /** Extra JSON for /healthz and /v1/swarm (dispatch counters, node health). */
  readonly swarmStats?: () => unknown;
  readonly extraRoutes?: readonly HttpRoute[];
}

class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

const stop = z
  .union([z.string().min(1), z.array(z.string().min(1)).max(stopSequencesMax)])
  .nullish()
  .transform((s) => (s == null ? [] : typeof s === "string" ? [s] : s));

const common = {
  model: z.string().min(1),
  max_tokens: z.number().int().min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  n: z.literal(1).nullish(),
  stream: z.boolean().nullish(),
  stop,
  seed: z.number().int().nullish(),
  user: z.string().nullish(),
};

export const completionBody = z.object({
  ...common,
  prompt: z.union([z.string(), z.array(z.string()).length(1)], {
    error: (issue) =>
      `expected a string or a list of exactly one string; got ${Array.isArray(issue.input) ? `a list of ${issue.input.length}` : typeof issue.input}`,
  }),
});

const contentPart = z.object({ type: z.literal("text"), text: z.string() });
export const chatBody = z.object({
  ...common,
  max_completion_tokens: z.number().int().min(1).nullish(),
  messages: z
    .array(
      z.object({
        role: z.enum(["system", "developer", "user", "assistant"]),
        content: z.union([z.string(), z.array(contentPart)]),
        name: z.string().optional(),
      }),
    )
    .min(1)
    .max(chatMessagesMax),
});

/** The chat template: one line per message, then the assistant's turn. */
export function chatPrompt(messages: z.infer<typeof chatBody>["messages"]): string {
  const text = (c: (typeof messages)[number]["content"]) =>
    typeof c === "string" ? c : c.map((p) => p.text).join("");
  return `${messages.map((m) => `${m.role}: ${text(m.content)}`).join("\n")}\nassistant:`;
}

function zodMessage(error: z.ZodError): { message: string; param: string | null } {
  const issue = error.issues[0];
  const param = issue && issue.path.length > 0 ? issue.path.join(".") : null;
  return { message: `${param ?? "body"}: ${issue?.message ?? "invalid"}`, param };
}

export class OpenAiApi {
  readonly counters: ApiCounters = {
    httpRequests: 0,
    completions: 0,
    streams: 0,
    clientErrors: 0,
    serverErrors: 0,
    completionTokens: 0,
  };
  readonly #init: OpenAiApiInit;
  readonly #created = Math.floor(Date.now() / 1000);
  #inflight = 0;
  #server: Server | undefined;

  constructor(init: OpenAiApiInit) {
    this.#init = init;
  }

  async listen(host: string, port: number): Promise<{ host: string; port: number; url: string }> {
    invariant(this.#server === undefined, "listen() called twice");
    const server = createServer((req, res) => this.handle(req, res));
    // Longer than clients' idle pools, so that a client never reuses a socket the server is
    // closing at that moment (ECONNRESET races under bursts after a pause).
    server.keepAliveTimeout = httpKeepAliveMs;
    server.headersTimeout = httpKeepAliveMs + 1000;
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    });
    const address = server.address();
    invariant(address !== null && typeof address === "object", "bound address");
    return { host, port: address.port, url: `http://${host}:${address.port}` };
  }

  async close(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** The request handler (exported for mounting in another server). */
  handle(req: IncomingMessage, res: ServerResponse): void {
    this.counters.httpRequests++;
    for (const route of this.#init.extraRoutes ?? []) if (route(req, res)) return;
    this.#route(req, res).catch((err: unknown) => this.#fail(res, err));
  }

  async #route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?")[0];
    const method = req.method ?? "GET";
    const only = (m: string) => {
      if (method !== m)
        throw new ApiError(
          405,
          `${path} accepts ${m}, not ${method}`,
          "invalid_request_error",
          "method_not_allowed",
        );
    };
    switch (path) {
      case "/healthz":
        only("GET");
        return json(res, 200, {
          status: "ok",
          api: this.counters,
          swarm: this.#init.swarmStats?.(),
        });
      case "/readyz": {
        only("GET");
        const ready = await this.#init.ready();
        return json(res, ready ? 200 : 503, { ready });
      }
      case "/v1/swarm":
        only("GET");
        return json(res, 200, { api: this.counters, swarm: this.#init.swarmStats?.() });
      case "/v1/models":
        only("GET");
        return json(res, 200, { object: "list", data: [this.#model()] });
      case "/v1/completions":
        only("POST");
        return this.#completions(res, completionBody, await readJson(req));
      case "/v1/chat/completions":
        only("POST");
        return this.#completions(res, chatBody, await readJson(req));
      default:
        if (path === `/v1/models/${this.#init.generator.modelId}`)
          return json(res, 200, this.#model());
        throw new ApiError(
          404,
          `no route for ${method} ${path}`,
          "invalid_request_error",
          "not_found",
        );
    }
  }

  #model() {
    return {
      id: this.#init.generator.modelId,
      object: "model",
      created: this.#created,
      owned_by: "moe-swarm",
    };
  }

  async #completions(
    res: ServerResponse,
    schema: typeof completionBody | typeof chatBody,
    body: unknown,
  ): Promise<void> {
    const parsed = schema.safeParse(body);
    if (!parsed.success) {
      const { message, param } = zodMessage(parsed.error);
      throw new ApiError(400, message, "invalid_request_error", "invalid_value", param);
    }
    const b = parsed.data;
    const chat = "messages" in b;
    const gen = this.#init.generator;
    if (b.model !== gen.modelId)
      throw new ApiError(
        404,
        `The model '${b.model}' does not exist; this gateway serves '${gen.modelId}' (GET /v1/models)`,
        "invalid_request_error",
        "model_not_found",
        "model",
      );
    const prompt = chat
      ? chatPrompt(b.messages)
      : typeof b.prompt === "string"
        ? b.prompt
        : (b.prompt[0] as string);
    const promptTokens = gen.countTokens(prompt);
    const maxTokens = (chat ? (b.max_completion_tokens ?? b.max_tokens) : b.max_tokens) ?? 16;
    if (promptTokens + maxTokens > gen.contextTokens)
      throw new ApiError(
        400,
        `This model's context is ${gen.contextTokens} tokens; the prompt takes ${promptTokens} and max_tokens asks for ${maxTokens}. Shorten the prompt or lower max_tokens.`,
        "invalid_request_error",
        "context_length_exceeded",
        chat ? "messages" : "prompt",
      );
    if (this.#inflight >= httpRequestsInflightMax)
      throw new ApiError(
        429,
        `${httpRequestsInflightMax} requests are in flight; retry shortly`,
        "rate_limit_error",
        "too_many_requests",
      );
    const id = `${chat ? "chatcmpl" : "cmpl"}-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const abort = new AbortController();
    // Every expert call of this completion listens on it: up to all experts of a layer at once.
    setMaxListeners(abortListenersMax, abort.signal);
    res.on("close", () => {
      if (!res.writableFinished) abort.abort(new Error("client disconnected"));
    });
    const request = {
      prompt,
      maxTokens,
      temperature: b.temperature ?? 1,
      topP: b.top_p ?? 1,
      seed: b.seed ?? undefined,
      stop: b.stop,
      signal: abort.signal,
      deadlineMs: Date.now() + completionDeadlineMs,
    };
    this.#inflight++;
    this.counters.completions++;
    try {
      if (b.stream) {
        this.counters.streams++;
        await this.#stream(res, id, created, chat, request);
        return;
      }
      const result = await gen.generate(request, () => {});
      this.counters.completionTokens += result.completionTokens;
      const usage = usageOf(result);
      if (chat)
        return json(res, 200, {
          id,
          object: "chat.completion",
          created,
          model: gen.modelId,
          choices: [
            {
              index: 0,
              message: { role: "assistant", content: result.text },
              logprobs: null,
              finish_reason: result.finishReason,
            },
          ],
          usage,
        });
      return json(res, 200, {
        id,
        object: "text_completion",
        created,
        model: gen.modelId,
        choices: [
          { index: 0, text: result.text, logprobs: null, finish_reason: result.finishReason },
        ],
        usage,
      });
    } finally {
      this.#inflight--;
    }
  }

  async #stream(
    res: ServerResponse,
    id: string,
    created: number,
    chat: boolean,
    request: Parameters<TextGenerator["generate"]>[0],
  ): Promise<void> {
    const gen = this.#init.generator;
    const model = gen.modelId;
    const send = (value: unknown) => {
      if (!res.headersSent)
        res.writeHead(200, {
          "content-type": "text/event-stream; charset=utf-8",
          "cache-control": "no-store",
          connection: "keep-alive",
        });
      res.write(`data: ${JSON.stringify(value)}\n\n`);
    };
    const chunk = (delta: string | null, finish: string | null, first = false) =>
      chat
        ? {
            id,
            object: "chat.completion.chunk",
            created,
            model,
            choices: [
              {
                index: 0,
                delta:
                  delta === null
                    ? {}
                    : first
                      ? { role: "assistant", content: delta }
                      : { content: delta },
                logprobs: null,
                finish_reason: finish,
              },
            ],
          }
        : {
            id,
            object: "text_completion",
            created,
            model,
            choices: [{ index: 0, text: delta ?? "", logprobs: null, finish_reason: finish }],
          };
    if (chat) send(chunk("", null, true));
    let result: GenerateResult;
    try {
      result = await gen.generate(request, (delta) => send(chunk(delta, null)));
    } catch (err) {
      if (!res.headersSent) throw err; // nothing sent yet: a normal error response
      // Mid-stream: the status is already 200; report in-band as OpenAI does, then end.
      const e = toApiError(err);
      this.#count(e.status);
      res.write(`data: ${JSON.stringify(errorBody(e))}\n\n`);
      res.end();
      return;
    }
    this.counters.completionTokens += result.completionTokens;
    send({ ...chunk(chat ? null : "", result.finishReason), usage: usageOf(result) });
    res.write("data: [DONE]\n\n");
    res.end();
  }

  #count(status: number): void {
    if (status >= 500) this.counters.serverErrors++;
    else this.counters.clientErrors++;
  }

  #fail(res: ServerResponse, err: unknown): void {
    const e = toApiError(err);
    this.#count(e.status);
    if (res.headersSent) {
      res.end();
      return;
    }
    json(res, e.status, errorBody(e));
  }
}

function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof UnsupportedParameterError)
    return new ApiError(
      400,
      err.message,
      "invalid_request_error",
      "unsupported_parameter",
      err.param,
    );
  if (err instanceof GenerationDeadlineError)
    return new ApiError(504, err.message, "server_error", "deadline_exceeded");
  if (err instanceof NoReplicaError)
    return new ApiError(
      503,
      `the swarm could not serve this request: ${err.message}`,
      "server_error",
      "swarm_unavailable",
    );
  return new ApiError(
    500,
    `internal error: ${(err as Error)?.message ?? String(err)}`,
    "server_error",
    "internal_error",
  );
}

function errorBody(e: ApiError) {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

function usageOf(r: GenerateResult) {
  return {
    prompt_tokens: r.promptTokens,
    completion_tokens: r.completionTokens,
    total_tokens: r.promptTokens + r.completionTokens,
  };
}

function json(res: ServerResponse, status: number, value: unknown): void {
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "cache-control": "no-store",
  });
  res.end(JSON.stringify(value));
}

/** Reads a JSON body of at most httpBodyBytesMax bytes. */
function readJson(req: IncomingMessage): Promise<unknown> {
  const type = req.headers["content-type"] ?? "";
  if (!type.includes("application/json"))
    return Promise.reject(
      new ApiError(
        400,
        `expected content-type application/json; got "${type}"`,
        "invalid_request_error",
        "invalid_content_type",
      ),
    );
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > httpBodyBytesMax) return Promise.reject(tooLarge(declared));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    req.on("data", (c: Buffer) => {
      if (failed) return;
      size += c.length;
      if (size > httpBodyBytesMax) {
        failed = true;
        reject(tooLarge(size));
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on("error", (err) => {
      failed = true;
      reject(new ApiError(400, `reading the body failed: ${err.message}`, "invalid_request_error"));
    });
    req.on("end", () => {
      if (failed) return;
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")));
      } catch (err) {
        reject(
          new ApiError(
            400,
            `body is not valid JSON: ${(err as Error).message}`,
            "invalid_request_error",
            "invalid_json",
          ),
        );
      }
    });
  });
}

function tooLarge(size: number): ApiError {
  return new ApiError(
    413,
    `body of ${size} bytes exceeds the ${httpBodyBytesMax}-byte limit`,
    "invalid_request_error",
    "body_too_large",
  );
}
