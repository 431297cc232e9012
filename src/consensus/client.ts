// `RegistryClient`: how the swarm (gateway, expert nodes, control plane) talks to the coordinators.
// Each call is a request with a fresh (clientId, seq), sent to every coordinator; the call resolves
// when f + 1 = 2 coordinators return the same committed result — at least one of them is honest,
// so the result is what the replicated registry committed. Reads go through consensus too, so
// reads and writes are linearizable. Requests are retransmitted until answered or the deadline.
// One call is outstanding per client at a time (calls queue), which is what exactly-once
// execution by (clientId, seq) needs; use several clients for parallel load. When the coordinators
// answer that this client's session expired (sessions.ts), that call's result is that error (its
// request did not run now, and whether an earlier copy ran is unknown) and the client continues
// under a fresh client id from seq 1.

import { randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import { decodeWith, encodeMessage, replyFrame } from "./codec.ts";
import { messageBytesMax, replicaCount, weakQuorumSize } from "./constants.ts";
import { FrameReader, writeFrame } from "./framing.ts";
import type { RegistryOp, RegistryResult } from "./registry.ts";
import { sessionExpiredError } from "./sessions.ts";
import { canonicalJson, type ReplicaId } from "./types.ts";

export interface RegistryClientInit {
  /** host:port of each coordinator's client port, in replica order (ORD, IAD, SJC, AMS, SYD). */
  readonly endpoints: readonly { host: string; port: number }[];
  readonly clientId?: string;
  /** Resend to every coordinator after this long without f + 1 matching replies. */
  readonly retryMs?: number;
  /** Give up on a call after this long. */
  readonly deadlineMs?: number;
}

export class RegistryTimeoutError extends Error {
  constructor(op: string, ms: number) {
    super(
      `registry ${op}: no f+1 matching replies within ${ms} ms; check that at least 4 coordinators run`,
    );
    this.name = "RegistryTimeoutError";
  }
}

export class RegistryClient {
  #clientId: string;
  /** The id given (or made up) at construction; renewed ids are this plus a random suffix. */
  readonly #baseId: string;
  readonly #endpoints: RegistryClientInit["endpoints"];
  readonly #retryMs: number;
  readonly #deadlineMs: number;
  readonly #sockets: (Socket | undefined)[];
  #seq = 0;
  #closed = false;
  #queue: Promise<unknown> = Promise.resolve();
  #waiting:
    | { seq: number; votes: Map<string, Set<ReplicaId>>; resolve: (r: RegistryResult) => void }
    | undefined;
  readonly #statusWaiters: ((s: Record<string, unknown>) => void)[][] = [];

  constructor(init: RegistryClientInit) {
    if (init.endpoints.length !== replicaCount)
      throw new RangeError(
        `RegistryClient: expected ${replicaCount} endpoints; got ${init.endpoints.length}`,
      );
    this.#clientId = init.clientId ?? `client-${randomBytes(8).toString("hex")}`;
    this.#baseId = this.#clientId.slice(0, 46);
    this.#endpoints = init.endpoints;
    this.#retryMs = init.retryMs ?? 1_000;
    this.#deadlineMs = init.deadlineMs ?? 30_000;
    this.#sockets = new Array(replicaCount).fill(undefined);
    for (let i = 0; i < replicaCount; i++) this.#statusWaiters.push([]);
  }

  /** The client id requests go under now (it changes when the session expired). */
  get clientId(): string {
    return this.#clientId;
  }

  #socket(i: number): Socket | undefined {
    if (this.#closed) return undefined;
    const existing = this.#sockets[i];
    if (existing && !existing.destroyed) return existing;
    const ep = this.#endpoints[i] as { host: string; port: number };
    const s = connect(ep.port, ep.host);
    s.setNoDelay(true);
    const reader = new FrameReader(messageBytesMax);
    s.on("data", (chunk: Buffer) => {
      const { frames, error } = reader.push(chunk);
      for (const f of frames) this.#onFrame(i, f);
      if (error) s.destroy();
    });
    s.on("error", () => s.destroy());
    s.on("close", () => {
      if (this.#sockets[i] === s) this.#sockets[i] = undefined;
    });
    this.#sockets[i] = s;
    return s;
  }

  #onFrame(i: number, frame: Uint8Array): void {
    const d = decodeWith(replyFrame, frame);
    if (!d.ok) return;
    const m = d.value;
    if (m.type === "status") {
      const w = this.#statusWaiters[i]?.shift();
      w?.(m.status);
      return;
    }
    const w = this.#waiting;
    if (!w || m.clientId !== this.clientId || m.seq !== w.seq || m.replica !== i) return;
    const key = canonicalJson(m.result);
    const set = w.votes.get(key) ?? new Set<ReplicaId>();
    set.add(i);
    w.votes.set(key, set);
    if (set.size >= weakQuorumSize) {
      this.#waiting = undefined;
      w.resolve(m.result as RegistryResult);
    }
  }

  #broadcast(bytes: Uint8Array): void {
    for (let i = 0; i < replicaCount; i++) {
      const s = this.#socket(i);
      if (s) writeFrame(s, bytes);
    }
  }

  /** Submits one operation and resolves with the committed result. */
  request(op: RegistryOp): Promise<RegistryResult> {
    const run = () => this.#requestNow(op);
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => undefined);
    return p;
  }

  #requestNow(op: RegistryOp): Promise<RegistryResult> {
    this.#seq += 1;
    const seq = this.#seq;
    const bytes = encodeMessage({
      type: "request",
      request: { clientId: this.#clientId, seq, op },
    });
    return new Promise<RegistryResult>((resolve, reject) => {
      const started = Date.now();
      let timer: NodeJS.Timeout | undefined;
      this.#waiting = {
        seq,
        votes: new Map(),
        resolve: (r) => {
          clearTimeout(timer);
          if (!r.ok && r.error === sessionExpiredError) {
            this.#clientId = `${this.#baseId}-r${randomBytes(8).toString("hex")}`;
            this.#seq = 0;
          }
          resolve(r);
        },
      };
      const attempt = () => {
        if (Date.now() - started > this.#deadlineMs || this.#closed) {
          if (this.#waiting?.seq === seq) this.#waiting = undefined;
          reject(new RegistryTimeoutError(op.kind, this.#deadlineMs));
          return;
        }
        this.#broadcast(bytes);
        timer = setTimeout(attempt, this.#retryMs);
      };
      attempt();
    });
  }

  /** The status of one coordinator (view, leader, heights, counters); not a consensus read. */
  status(replica: ReplicaId, timeoutMs = 2_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const s = this.#socket(replica);
      if (!s) return reject(new Error("client closed"));
      const waiter = (st: Record<string, unknown>) => {
        clearTimeout(timer);
        resolve(st);
      };
      // A waiter that timed out leaves the queue, so the next call is not answered by nobody (its
      // reply consumed by a stale waiter) once a coordinator comes back.
      const timer = setTimeout(() => {
        const q = this.#statusWaiters[replica];
        const at = q?.indexOf(waiter) ?? -1;
        if (q && at >= 0) q.splice(at, 1);
        reject(new Error(`status of replica ${replica}: no answer in ${timeoutMs} ms`));
      }, timeoutMs);
      this.#statusWaiters[replica]?.push(waiter);
      writeFrame(s, encodeMessage({ type: "status" }));
    });
  }

  // ---- The calls the swarm makes -------------------------------------------------------------

  registerNode(
    nodeId: string,
    region: string,
    gpuType: "a10" | "l40s" | "a100-80gb",
    address: string,
  ) {
    return this.request({ kind: "register_node", nodeId, region, gpuType, address });
  }
  heartbeat(nodeId: string) {
    return this.request({ kind: "heartbeat", nodeId });
  }
  deregisterNode(nodeId: string) {
    return this.request({ kind: "deregister_node", nodeId });
  }
  setPlacement(expert: string, nodeIds: string[]) {
    return this.request({ kind: "set_placement", expert, nodeIds });
  }
  async getPlacement(expert: string): Promise<string[]> {
    const r = await this.request({ kind: "get_placement", expert });
    return r.ok ? (r.value as string[]) : [];
  }
  listNodes() {
    return this.request({ kind: "list_nodes" });
  }
  /** Heartbeat age after which the registry marks a node expired (registry.ts). */
  setNodeTtl(ttlMs: number) {
    return this.request({ kind: "set_node_ttl", ttlMs });
  }
  getRegistry() {
    return this.request({ kind: "get_registry" });
  }

  close(): void {
    this.#closed = true;
    for (const s of this.#sockets) s?.destroy();
  }
}
