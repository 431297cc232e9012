// An expert node: the process that hosts some experts (the spec's "GPU machine") and serves
// forward, backward, gradient-norm and update calls for them over the wire protocol (frame.ts).
//
// Guarantees:
// - Every frame is validated at the edge; a malformed one gets an error frame with the reason, an
//   unframeable stream (bad length) gets one error frame and the connection is closed. The process
//   never crashes on peer input, and an exception from the expert host becomes a HOST_FAILURE reply.
// - A forward frame may carry several experts (one tensor and one returned weight version each):
//   the dispatcher sends one frame per node per MoE dispatch round. Backward carries one expert.
// - Concurrent requests for the same expert and op are merged into one expert call (continuous
//   batching: an idle expert starts at once; requests that arrive while a batch runs go together
//   in the next one, up to batchTokensMax tokens). Experts are token-wise, so a merged call gives each request exactly
//   the rows it would get alone, and backward's parameter gradients are the sum either way.
// - A request whose caller's time budget ran out while it queued is answered DEADLINE_EXCEEDED
//   without computing it.
// - Each expert has a weight version (number of updates applied) returned with every forward and
//   backward, so a dispatcher can refuse a replica whose weights are behind.

import { createServer, type Server, type Socket } from "node:net";
import { InvariantError, invariant } from "../common/assert.ts";
import {
  type ExpertHost,
  type ExpertId,
  type ExpertTrainingState,
  expertKey,
} from "../model/expert.ts";
import {
  batchTokensMax,
  forwardGroupExpertsMax,
  modelWidthMax,
  nodeQueueRequestsMax,
  requestTokensMax,
} from "./constants.ts";
import { FrameDecodeError, WireErrorCode } from "./errors.ts";
import {
  decodeFrame,
  encodeFrame,
  type Frame,
  FrameKind,
  Op,
  peekRequestId,
  type WireTensor,
} from "./frame.ts";
import type { WireSpan } from "./frame-spans.ts";
import { FrameReader, shapedWrite } from "./frame-stream.ts";
import { LinkShaper, type RegionLinks } from "./region-links.ts";

export interface ExpertNodeInit {
  readonly nodeId: string;
  readonly region: string;
  /** Computes the experts; the model's LocalExpertHost in production. */
  readonly host: ExpertHost;
  readonly experts: readonly ExpertId[];
  readonly dModel: number;
  readonly links: RegionLinks;
  readonly listenHost?: string;
  /** 0 = any free port. */
  readonly port?: number;
  readonly nowMs?: () => number;
  /** Read access to the hosted experts' weights, for `getWeights` (the LocalExpertHost itself). */
  readonly weights?: ExpertWeightSource;
  /**
   * Called as a request frame is handled; the returned function when its reply is ready (issue
   * #8's tracing). A span it returns rides back in the reply when the request asked for spans.
   */
  readonly onRequest?: (frame: Frame) => ((failed: boolean) => WireSpan | undefined) | undefined;
}

/** The weights of one expert FFN: w1 [d, h], b1 [h], w2 [h, d], b2 [d], row-major. */
export interface ExpertWeights {
  readonly d: number;
  readonly h: number;
  readonly w1: ArrayLike<number>;
  readonly b1: ArrayLike<number>;
  readonly w2: ArrayLike<number>;
  readonly b2: ArrayLike<number>;
}

export interface ExpertWeightSource {
  params(id: ExpertId): ExpertWeights;
}

/** The load report a node returns to `ping` (scalars in this order on the wire). */
export interface NodeLoad {
  readonly inflightRequests: number;
  readonly queuedRequests: number;
  readonly servedRequests: number;
  readonly servedTokens: number;
  readonly batches: number;
  readonly errorReplies: number;
  readonly malformedFrames: number;
  readonly uptimeSeconds: number;
}

export const nodeLoadFields = [
  "inflightRequests",
  "queuedRequests",
  "servedRequests",
  "servedTokens",
  "batches",
  "errorReplies",
  "malformedFrames",
  "uptimeSeconds",
] as const satisfies readonly (keyof NodeLoad)[];

class RequestError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

interface Pending {
  readonly x: Float32Array;
  readonly dy: Float32Array | undefined;
  readonly tokens: number;
  readonly deadlineAtMs: number;
  readonly resolve: (y: Float32Array) => void;
  readonly reject: (e: Error) => void;
}

interface Lane {
  readonly op: Op;
  readonly id: ExpertId;
  readonly queue: Pending[];
  busy: boolean;
}

export class ExpertNode {
  readonly #init: ExpertNodeInit;
  readonly #hosted = new Map<string, ExpertId>();
  readonly #versions = new Map<string, number>();
  readonly #lanes = new Map<string, Lane>();
  readonly #sockets = new Set<Socket>();
  readonly #now: () => number;
  readonly #startedMs: number;
  #server: Server | undefined;
  #closing = false;
  #inflight = 0;
  #queued = 0;
  #served = 0;
  #tokens = 0;
  #batches = 0;
  #errors = 0;
  #malformed = 0;

  constructor(init: ExpertNodeInit) {
    invariant(init.dModel > 0 && init.dModel <= modelWidthMax, `dModel ${init.dModel}`);
    this.#init = init;
    this.#now = init.nowMs ?? (() => performance.now());
    this.#startedMs = this.#now();
    for (const id of init.experts) {
      this.#hosted.set(expertKey(id), id);
      this.#versions.set(expertKey(id), 0);
    }
  }

  get nodeId(): string {
    return this.#init.nodeId;
  }

  /** Listens; resolves with the bound address. */
  async listen(): Promise<{ host: string; port: number }> {
    invariant(this.#server === undefined, "listen() called twice");
    const server = createServer((socket) => this.#accept(socket));
    this.#server = server;
    const host = this.#init.listenHost ?? "127.0.0.1";
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.#init.port ?? 0, host, () => resolve());
    });
    const address = server.address();
    invariant(address !== null && typeof address === "object", "bound address");
    return { host, port: address.port };
  }

  async close(): Promise<void> {
    this.#closing = true;
    for (const s of this.#sockets) s.destroy();
    const server = this.#server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  load(): NodeLoad {
    return {
      inflightRequests: this.#inflight,
      queuedRequests: this.#queued,
      servedRequests: this.#served,
      servedTokens: this.#tokens,
      batches: this.#batches,
      errorReplies: this.#errors,
      malformedFrames: this.#malformed,
      uptimeSeconds: (this.#now() - this.#startedMs) / 1000,
    };
  }

  #accept(socket: Socket): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    this.#sockets.add(socket);
    const reader = new FrameReader();
    let shaper: LinkShaper | undefined;
    let peerRegion: string | undefined;
    const send = (frame: Buffer) => shapedWrite(socket, shaper, frame);
    socket.on("data", (chunk: Buffer) => {
      let bodies: Buffer[];
      try {
        bodies = reader.push(chunk);
      } catch (err) {
        // The stream cannot be resynchronised: answer once, then close this connection only.
        this.#malformed++;
        const e = err as FrameDecodeError;
        send(this.#errorFrame(0, Op.ping, e.code, e.message));
        socket.end();
        socket.pause();
        return;
      }
      for (const body of bodies) {
        let frame: Frame;
        try {
          frame = decodeFrame(body);
        } catch (err) {
          this.#malformed++;
          if (!(err instanceof FrameDecodeError)) throw err;
          send(this.#errorFrame(peekRequestId(body), Op.ping, err.code, err.message));
          continue;
        }
        if (peerRegion === undefined && frame.region !== "") {
          peerRegion = frame.region;
          const { links } = this.#init;
          shaper = new LinkShaper(
            links.oneWayMs(this.#init.region, peerRegion),
            links.bitsPerSecond,
          );
        }
        this.#handle(frame).then(send, (err: unknown) => {
          // #handle turns every expected failure into a frame; anything else is a bug.
          setImmediate(() => {
            throw err;
          });
        });
      }
    });
    socket.on("error", () => socket.destroy());
    socket.on("close", () => {
      this.#sockets.delete(socket);
      shaper?.close();
    });
  }

  #errorFrame(
    requestId: number,
    op: Op,
    code: number,
    message: string,
    spans: readonly WireSpan[] = [],
  ): Buffer {
    this.#errors++;
    return encodeFrame({
      kind: FrameKind.error,
      op,
      requestId,
      region: this.#init.region,
      scalars: [code],
      text: message,
      spans,
    });
  }

  async #handle(frame: Frame): Promise<Buffer> {
    const receivedMs = this.#now();
    const done = this.#init.onRequest?.(frame);
    let failed = false;
    // The hook's span of the call, ended once as the reply is encoded; it goes in the reply when
    // the caller asked for spans (frame-spans.ts).
    let finished = false;
    const finish = (failedNow: boolean): WireSpan[] => {
      if (finished) return [];
      finished = true;
      const span = done?.(failedNow);
      return span && frame.spansWanted ? [span] : [];
    };
    this.#inflight++;
    try {
      if (frame.kind !== FrameKind.request)
        throw new RequestError(WireErrorCode.malformedFrame, "a node accepts only request frames");
      if (this.#closing)
        throw new RequestError(WireErrorCode.shuttingDown, "node is shutting down");
      const deadlineAtMs =
        frame.budgetMs > 0 ? receivedMs + frame.budgetMs : Number.POSITIVE_INFINITY;
      const reply = (fields: Partial<Frame>) =>
        encodeFrame({
          kind: FrameKind.response,
          op: frame.op,
          requestId: frame.requestId,
          region: this.#init.region,
          ...fields,
          spans: finish(false),
        });
      switch (frame.op) {
        case Op.ping:
          return reply({
            scalars: nodeLoadFields.map((f) => this.load()[f]),
            ids: [...this.#hosted.values()].slice(0, 4096),
          });
        case Op.exportState: {
          const [id] = this.#checkHosted(frame.ids.length === 1 ? frame.ids : []);
          const host = this.#init.host;
          if (!id)
            throw new RequestError(WireErrorCode.badShape, "exportState needs exactly 1 expert id");
          if (!host.exportTrainingState)
            throw new RequestError(
              WireErrorCode.unknownOp,
              `node ${this.#init.nodeId} cannot export training state`,
            );
          const [state] = await this.#host(() =>
            (host.exportTrainingState as NonNullable<ExpertHost["exportTrainingState"]>)([id]),
          );
          if (!state) throw new RequestError(WireErrorCode.hostFailure, "host exported no state");
          const names = Object.keys(state.tensors);
          return reply({
            scalars: [this.#versions.get(expertKey(id)) ?? 0],
            text: names.join(","),
            tensors: names.flatMap((n) => {
              const t = state.tensors[n] as ExpertTrainingState["tensors"][string];
              return [t.weights, t.m, t.v].map((data) => ({ dims: [data.length], data }));
            }),
          });
        }
        case Op.importState: {
          const [id] = this.#checkHosted(frame.ids.length === 1 ? frame.ids : []);
          const host = this.#init.host;
          const names = frame.text === "" ? [] : frame.text.split(",");
          const version = frame.scalars[0];
          if (
            !id ||
            names.length * 3 !== frame.tensors.length ||
            names.some((n) => !/^[a-z0-9_]{1,32}$/.test(n)) ||
            new Set(names).size !== names.length ||
            !Number.isInteger(version) ||
            (version as number) < 0
          )
            throw new RequestError(
              WireErrorCode.badShape,
              "importState needs 1 expert id, tensor names in text, 3 tensors (weights, m, v) per name and scalars [version]",
            );
          if (!host.importTrainingState)
            throw new RequestError(
              WireErrorCode.unknownOp,
              `node ${this.#init.nodeId} cannot import training state`,
            );
          const tensors: Record<
            string,
            { weights: Float32Array; m: Float32Array; v: Float32Array }
          > = {};
          names.forEach((n, i) => {
            const [w, m, v] = frame.tensors.slice(3 * i, 3 * i + 3) as [
              WireTensor,
              WireTensor,
              WireTensor,
            ];
            tensors[n] = { weights: w.data, m: m.data, v: v.data };
          });
          // The host checks names and shapes before changing anything (all or nothing).
          await this.#host(() =>
            (host.importTrainingState as NonNullable<ExpertHost["importTrainingState"]>)([
              { id, tensors },
            ]),
          );
          this.#versions.set(expertKey(id), version as number);
          return reply({ scalars: [version as number] });
        }
        case Op.getWeights: {
          const [id] = this.#checkHosted(frame.ids.length === 1 ? frame.ids : []);
          const source = this.#init.weights;
          if (!id || !source)
            throw new RequestError(
              id ? WireErrorCode.unknownOp : WireErrorCode.badShape,
              id
                ? `node ${this.#init.nodeId} does not export weights`
                : "getWeights needs exactly 1 expert id",
            );
          const p = source.params(id);
          const f32 = (a: ArrayLike<number>) =>
            a instanceof Float32Array ? a : Float32Array.from(a);
          return reply({
            scalars: [this.#versions.get(expertKey(id)) ?? 0],
            tensors: [
              { dims: [p.d, p.h], data: f32(p.w1) },
              { dims: [p.h], data: f32(p.b1) },
              { dims: [p.h, p.d], data: f32(p.w2) },
              { dims: [p.d], data: f32(p.b2) },
            ],
          });
        }
        case Op.forward: {
          // One frame may carry several experts' rows (a dispatch round's calls to this node).
          const calls = this.#checkForwardGroup(frame);
          const ys = await Promise.all(
            calls.map(({ id, x, tokens }) =>
              this.#enqueue(Op.forward, id, { x, dy: undefined, tokens, deadlineAtMs }),
            ),
          );
          return reply({
            tensors: calls.map(({ tokens }, i) => {
              this.#served++;
              this.#tokens += tokens;
              return { dims: [tokens, this.#init.dModel], data: ys[i] as Float32Array };
            }),
            scalars: calls.map(({ id }) => this.#versions.get(expertKey(id)) ?? 0),
          });
        }
        case Op.backward: {
          const { id, x, dy, tokens } = this.#checkExpertCall(frame);
          const y = await this.#enqueue(frame.op, id, { x, dy, tokens, deadlineAtMs });
          this.#served++;
          this.#tokens += tokens;
          return reply({
            tensors: [{ dims: [tokens, this.#init.dModel], data: y }],
            scalars: [this.#versions.get(expertKey(id)) ?? 0],
          });
        }
        case Op.gradSquaredNorm: {
          const ids = this.#checkHosted(frame.ids);
          const norm = await this.#host(() => this.#init.host.gradSquaredNorm(ids));
          return reply({ scalars: [norm] });
        }
        case Op.applyUpdate: {
          const ids = this.#checkHosted(frame.ids);
          const [step, learningRate, gradScale] = frame.scalars;
          if (
            frame.scalars.length !== 3 ||
            !Number.isInteger(step) ||
            (step as number) < 1 ||
            !Number.isFinite(learningRate) ||
            !Number.isFinite(gradScale)
          )
            throw new RequestError(
              WireErrorCode.badShape,
              "applyUpdate needs scalars [step ≥ 1 integer, learningRate, gradScale]",
            );
          await this.#host(() =>
            this.#init.host.applyUpdate(ids, {
              step: step as number,
              learningRate: learningRate as number,
              gradScale: gradScale as number,
            }),
          );
          for (const id of ids) {
            const k = expertKey(id);
            this.#versions.set(k, (this.#versions.get(k) ?? 0) + 1);
          }
          return reply({ scalars: ids.map((id) => this.#versions.get(expertKey(id)) ?? 0) });
        }
      }
    } catch (err) {
      failed = true;
      if (err instanceof RequestError)
        return this.#errorFrame(frame.requestId, frame.op, err.code, err.message, finish(true));
      throw err;
    } finally {
      this.#inflight--;
      finish(failed);
    }
    // Every op above returns or throws; TypeScript cannot see that past a call in `finally`.
    invariant(false, `unhandled op ${frame.op}`);
  }

  async #host<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (err) {
      throw new RequestError(WireErrorCode.hostFailure, (err as Error).message ?? String(err));
    }
  }

  #checkHosted(ids: readonly ExpertId[]): ExpertId[] {
    const out: ExpertId[] = [];
    for (const id of ids) {
      const hosted = this.#hosted.get(expertKey(id));
      if (!hosted)
        throw new RequestError(
          WireErrorCode.unknownExpert,
          `expert ${expertKey(id)} is not hosted on node ${this.#init.nodeId}`,
        );
      out.push(hosted);
    }
    return out;
  }

  /** A forward frame: 1..forwardGroupExpertsMax distinct hosted experts, one [tokens, d] each. */
  #checkForwardGroup(frame: Frame): { id: ExpertId; x: Float32Array; tokens: number }[] {
    const k = frame.ids.length;
    if (k < 1 || k > forwardGroupExpertsMax || frame.tensors.length !== k)
      throw new RequestError(
        WireErrorCode.badShape,
        `forward needs 1..${forwardGroupExpertsMax} expert ids and one tensor per id; got ${k} and ${frame.tensors.length}`,
      );
    const ids = this.#checkHosted(frame.ids);
    if (new Set(ids.map(expertKey)).size !== k)
      throw new RequestError(WireErrorCode.badShape, "forward names an expert twice");
    return ids.map((id, i) => {
      const t = frame.tensors[i] as WireTensor;
      this.#checkRowsTensor(t);
      return { id, x: t.data, tokens: t.dims[0] as number };
    });
  }

  #checkRowsTensor(t: WireTensor): void {
    const d = this.#init.dModel;
    const [rows, cols] = t.dims;
    if (t.dims.length !== 2 || cols !== d || (rows as number) > requestTokensMax)
      throw new RequestError(
        WireErrorCode.badShape,
        `expected a tensor [tokens ≤ ${requestTokensMax}, ${d}]; got [${t.dims}]`,
      );
  }

  /** A backward frame: 1 hosted expert, x and dy of the same [tokens, d]. */
  #checkExpertCall(frame: Frame): {
    id: ExpertId;
    x: Float32Array;
    dy: Float32Array | undefined;
    tokens: number;
  } {
    if (frame.ids.length !== 1 || frame.tensors.length !== 2)
      throw new RequestError(
        WireErrorCode.badShape,
        `backward needs 1 expert id and 2 tensors; got ${frame.ids.length} and ${frame.tensors.length}`,
      );
    const [id] = this.#checkHosted(frame.ids) as [ExpertId];
    for (const t of frame.tensors) this.#checkRowsTensor(t);
    const x = frame.tensors[0] as (typeof frame.tensors)[0];
    const dy = frame.tensors[1];
    if (dy && dy.dims[0] !== x.dims[0])
      throw new RequestError(
        WireErrorCode.badShape,
        `dy [${dy.dims}] does not match x [${x.dims}]`,
      );
    return { id, x: x.data, dy: dy?.data, tokens: x.dims[0] as number };
  }

  #enqueue(op: Op, id: ExpertId, req: Omit<Pending, "resolve" | "reject">): Promise<Float32Array> {
    if (this.#queued >= nodeQueueRequestsMax)
      return Promise.reject(
        new RequestError(WireErrorCode.overloaded, `node queue is full (${nodeQueueRequestsMax})`),
      );
    const key = `${op}:${expertKey(id)}`;
    let lane = this.#lanes.get(key);
    if (!lane) {
      lane = { op, id, queue: [], busy: false };
      this.#lanes.set(key, lane);
    }
    const l = lane;
    return new Promise<Float32Array>((resolve, reject) => {
      l.queue.push({ ...req, resolve, reject });
      this.#queued++;
      if (!l.busy) {
        l.busy = true;
        // An idle lane starts at once, with what is queued when the frames of the bytes just read
        // have been handled (continuous batching: no window to wait for; requests that arrive
        // while a batch runs form the next one).
        queueMicrotask(() => void this.#runLane(l));
      }
    });
  }

  async #runLane(lane: Lane): Promise<void> {
    while (lane.queue.length > 0) {
      const batch: Pending[] = [];
      let tokens = 0;
      while (lane.queue.length > 0) {
        const next = lane.queue[0] as Pending;
        if (batch.length > 0 && tokens + next.tokens > batchTokensMax) break;
        lane.queue.shift();
        this.#queued--;
        if (this.#now() > next.deadlineAtMs) {
          next.reject(
            new RequestError(
              WireErrorCode.deadlineExceeded,
              "caller's deadline passed while queued",
            ),
          );
          continue;
        }
        batch.push(next);
        tokens += next.tokens;
      }
      if (batch.length === 0) continue;
      await this.#runBatch(lane, batch, tokens);
    }
    lane.busy = false;
  }

  async #runBatch(lane: Lane, batch: Pending[], tokens: number): Promise<void> {
    const d = this.#init.dModel;
    const concat = (pick: (p: Pending) => Float32Array) => {
      if (batch.length === 1) return pick(batch[0] as Pending);
      const out = new Float32Array(tokens * d);
      let o = 0;
      for (const p of batch) {
        out.set(pick(p), o);
        o += p.tokens * d;
      }
      return out;
    };
    this.#batches++;
    try {
      const x = concat((p) => p.x);
      const host = this.#init.host;
      const y =
        lane.op === Op.backward
          ? await host.backward(
              lane.id,
              x,
              concat((p) => p.dy as Float32Array),
              tokens,
            )
          : await host.forward(lane.id, x, tokens);
      invariant(
        y.length === tokens * d,
        () => `expert returned ${y.length} values; want ${tokens * d}`,
      );
      let o = 0;
      for (const p of batch) {
        p.resolve(batch.length === 1 ? y : y.slice(o, o + p.tokens * d));
        o += p.tokens * d;
      }
    } catch (err) {
      if (err instanceof InvariantError) throw err;
      const e =
        err instanceof RequestError
          ? err
          : new RequestError(WireErrorCode.hostFailure, (err as Error).message ?? String(err));
      for (const p of batch) p.reject(e);
    }
  }
}
