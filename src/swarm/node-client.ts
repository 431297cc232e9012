// A connection from the dispatcher to one expert node: request/response matching by request id
// over one TCP connection, a deadline per call, and fast failure. When the connection closes —
// a node killed with SIGKILL closes its sockets at once on the same machine — every call in flight
// fails immediately with NodeUnavailableError instead of waiting for its deadline; that is what
// lets the dispatcher fail over in about one RTT (hivemind/Petals clients wait for a timeout).

import { connect, type Socket } from "node:net";
import { invariant } from "../common/assert.ts";
import type { ExpertCallContext, ExpertId } from "../model/expert.ts";
import { clientInflightMax, connectTimeoutMs } from "./constants.ts";
import {
  DeadlineError,
  FrameDecodeError,
  NodeUnavailableError,
  RemoteCallError,
} from "./errors.ts";
import {
  decodeFrame,
  encodeFrame,
  type Frame,
  FrameKind,
  type Op,
  type WireTensor,
} from "./frame.ts";
import type { WireSpan } from "./frame-spans.ts";
import { FrameReader, shapedWrite } from "./frame-stream.ts";
import { LinkShaper, type RegionLinks } from "./region-links.ts";

/** Hex digits whose lowest bit (the W3C `sampled` flag) is set. */
const sampledDigits = "13579bdf";

/** Where a node listens and which region it is in. */
export interface NodeAddress {
  readonly nodeId: string;
  readonly region: string;
  readonly host: string;
  readonly port: number;
}

export interface NodeCall {
  readonly op: Op;
  readonly ids: readonly ExpertId[];
  readonly scalars?: readonly number[];
  readonly tensors?: readonly WireTensor[];
  /** Text field of the frame (e.g. tensor names of a training state). */
  readonly text?: string;
  /** This attempt's deadline in ms from now. */
  readonly timeoutMs: number;
  readonly ctx?: ExpertCallContext;
}

interface InFlight {
  readonly resolve: (f: Frame) => void;
  readonly reject: (e: Error) => void;
  readonly timer: NodeJS.Timeout;
  readonly cleanup: (() => void) | undefined;
}

export class NodeClient {
  readonly #pending = new Map<number, InFlight>();
  #socket: Socket | undefined;
  #connecting: Promise<Socket> | undefined;
  #shaper: LinkShaper | undefined;
  #nextId = 1;
  #closed = false;
  /** Request frames and bytes written, answer bytes read (for the data-plane figures). */
  framesSent = 0;
  bytesSent = 0;
  bytesReceived = 0;

  constructor(
    readonly address: NodeAddress,
    private readonly localRegion: string,
    private readonly links: RegionLinks,
    /**
     * Collects the node's trace spans of sampled calls (issue #8): with it, a request whose
     * traceparent is sampled asks the node for its spans, which come back in the reply frame
     * (frame-spans.ts). Called synchronously as the reply arrives; it must not throw.
     */
    private readonly onSpans?: (spans: readonly WireSpan[], node: NodeAddress) => void,
  ) {}

  get inflight(): number {
    return this.#pending.size;
  }

  async call(req: NodeCall): Promise<Frame> {
    if (this.#closed) throw new NodeUnavailableError(this.address.nodeId, "client closed");
    if (this.#pending.size >= clientInflightMax)
      throw new NodeUnavailableError(this.address.nodeId, `${clientInflightMax} calls in flight`);
    invariant(req.timeoutMs > 0, `attempt timeout ${req.timeoutMs} ms`);
    const socket = await this.#connect();
    const requestId = this.#nextId;
    this.#nextId = this.#nextId >= 0xffffffff ? 1 : this.#nextId + 1;
    const traceparent = req.ctx?.traceparent ?? "";
    const frame = encodeFrame({
      kind: FrameKind.request,
      op: req.op,
      requestId,
      budgetMs: req.timeoutMs,
      region: this.localRegion,
      traceparent,
      // Version 00's last hex digit holds the sampled bit (W3C trace-context trace-flags).
      spansWanted:
        this.onSpans !== undefined &&
        traceparent.length === 55 &&
        sampledDigits.includes(traceparent.charAt(54)),
      ids: req.ids,
      scalars: req.scalars ?? [],
      tensors: req.tensors ?? [],
      text: req.text ?? "",
    });
    return new Promise<Frame>((resolve, reject) => {
      const signal = req.ctx?.signal;
      const onAbort = () =>
        this.#take(requestId)?.reject(
          signal?.reason instanceof Error ? signal.reason : new Error("aborted"),
        );
      const timer = setTimeout(
        () => this.#take(requestId)?.reject(new DeadlineError(this.address.nodeId, req.timeoutMs)),
        req.timeoutMs,
      );
      // The abort listener is removed when the call settles, so a long-lived signal (one HTTP
      // request making thousands of expert calls) does not collect listeners.
      const cleanup = signal ? () => signal.removeEventListener("abort", onAbort) : undefined;
      this.#pending.set(requestId, { resolve, reject, timer, cleanup });
      if (signal) {
        if (signal.aborted) {
          onAbort();
          return;
        }
        signal.addEventListener("abort", onAbort, { once: true });
      }
      this.framesSent++;
      this.bytesSent += frame.length;
      shapedWrite(socket, this.#shaper, frame);
    });
  }

  /** Removes a call in flight (timer, abort listener) and returns it, if still pending. */
  #take(requestId: number): InFlight | undefined {
    const p = this.#pending.get(requestId);
    if (!p) return undefined;
    this.#pending.delete(requestId);
    clearTimeout(p.timer);
    p.cleanup?.();
    return p;
  }

  close(): void {
    this.#closed = true;
    this.#socket?.destroy();
    this.#failAll("client closed");
  }

  #failAll(reason: string): void {
    for (const id of [...this.#pending.keys()])
      this.#take(id)?.reject(new NodeUnavailableError(this.address.nodeId, reason));
  }

  #connect(): Promise<Socket> {
    if (this.#socket && !this.#socket.destroyed) return Promise.resolve(this.#socket);
    if (this.#connecting) return this.#connecting;
    const { host, port, nodeId, region } = this.address;
    this.#connecting = new Promise<Socket>((resolve, reject) => {
      const socket = connect({ host, port });
      socket.setNoDelay(true);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new NodeUnavailableError(nodeId, `connect timed out after ${connectTimeoutMs} ms`));
      }, connectTimeoutMs);
      const reader = new FrameReader();
      socket.once("connect", () => {
        clearTimeout(timer);
        this.#socket = socket;
        this.#shaper = new LinkShaper(
          this.links.oneWayMs(this.localRegion, region),
          this.links.bitsPerSecond,
        );
        resolve(socket);
      });
      socket.on("data", (chunk: Buffer) => {
        this.bytesReceived += chunk.length;
        try {
          for (const body of reader.push(chunk)) this.#onFrame(decodeFrame(body));
        } catch (err) {
          if (!(err instanceof FrameDecodeError)) throw err;
          socket.destroy();
          this.#failAll(`sent an undecodable frame: ${err.message}`);
        }
      });
      socket.on("error", (err) => {
        clearTimeout(timer);
        reject(new NodeUnavailableError(nodeId, err.message));
      });
      socket.on("close", () => {
        clearTimeout(timer);
        if (this.#socket === socket) {
          this.#socket = undefined;
          this.#shaper?.close();
          this.#shaper = undefined;
        }
        this.#failAll("connection closed");
      });
    }).finally(() => {
      this.#connecting = undefined;
    });
    return this.#connecting;
  }

  #onFrame(frame: Frame): void {
    if (frame.spans.length > 0) this.onSpans?.(frame.spans, this.address);
    const p = this.#take(frame.requestId);
    if (!p) return; // late answer to a call that already timed out or was hedged away
    if (frame.kind === FrameKind.error)
      p.reject(new RemoteCallError(frame.scalars[0] ?? 0, frame.text, this.address.nodeId));
    else p.resolve(frame);
  }
}
