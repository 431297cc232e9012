// Steady-state commit latency of the five replicas as a deterministic model, to explain the live
// figure: the real `Replica` code on a simulated clock, fixed one-way link delays (the WAN matrix
// of the emulation), no faults, clients that keep requests flowing, and optionally a CPU cost per
// signature operation. With costs, each replica is one serial processor: a message waits until
// its replica is free, handling it takes (signatures made × signMs + signatures checked ×
// verifyMs + WAL appends × appendMs, the write + fsync a vote waits for), and what it sends leaves
// when that work is done. Real processes also share cores and pay for hashing and JSON, which this
// leaves out: it is the protocol's floor for given costs, not a prediction of a loaded machine.

import { Prng } from "../../common/prng.ts";
import type { Signer, Verifier } from "../../crypto/signature.ts";
import { SimulationMacKeys, verifyCacheEntriesMax } from "../../crypto/signature.ts";
import { replicaCount, weakQuorumSize } from "../constants.ts";
import { Replica, type ReplicaStatus } from "../replica.ts";
import { MemoryStorage } from "../storage.ts";
import type { ReplicaId, ReplicaMsg, ReplyMsg } from "../types.ts";
import { EventQueue } from "./scheduler.ts";

export interface LatencyModelOptions {
  /** One-way delay between replicas, ms (also client → replica is taken as 0: clients are local). */
  readonly linkDelayMs: (from: ReplicaId, to: ReplicaId) => number;
  readonly commitVotes: boolean;
  /** CPU per signature made / checked, ms; 0 for the pure message-delay count. */
  readonly signMs: number;
  readonly verifyMs: number;
  /** Wall ms per WAL append (write + fsync), 0 when omitted. */
  readonly appendMs?: number;
  /**
   * Clients, each with one request outstanding, asking again after a think time drawn uniformly
   * from [0, 2 · thinkMs) (seeded), so that arrivals do not fall in step with the block period.
   */
  readonly clients: number;
  readonly thinkMs: number;
  readonly seed?: number;
  readonly durationMs: number;
  readonly maxBatch?: number;
}

export interface LatencyModelResult {
  /** Client-observed (f + 1 matching replies) request latency, ms. */
  readonly clientP50Ms: number;
  readonly clientP99Ms: number;
  readonly clientMeanMs: number;
  readonly completed: number;
  /** Each replica's status at the end (its latency breakdown included). */
  readonly status: readonly ReplicaStatus[];
  /** Fraction of the run each replica's CPU was busy with signatures. */
  readonly cpuBusy: readonly number[];
  /** Signatures made and checked, and WAL appends, by all five replicas per block ORD committed. */
  readonly signsPerBlock: number;
  readonly verifiesPerBlock: number;
  readonly appendsPerBlock: number;
}

/**
 * Counts signatures made and checked, so their modelled CPU time can be charged. Like the live
 * `MlDsa65Verifier`, a (signer, message, signature) triple already verified is not checked again
 * (a QC whose votes arrived one by one costs nothing more).
 */
class Metered {
  signs = 0;
  verifies = 0;
  readonly #verified = new Set<string>();
  signer(inner: Signer): Signer {
    return {
      replicaId: inner.replicaId,
      scheme: inner.scheme,
      sign: (m) => {
        this.signs += 1;
        return inner.sign(m);
      },
    };
  }
  verifier(inner: Verifier): Verifier {
    return {
      scheme: inner.scheme,
      verify: (id, m, s) => {
        const key = `${id}:${Buffer.from(m).toString("base64")}:${Buffer.from(s).toString("base64")}`;
        if (this.#verified.has(key)) return true;
        this.verifies += 1;
        const ok = inner.verify(id, m, s);
        if (ok) {
          if (this.#verified.size >= verifyCacheEntriesMax) this.#verified.clear();
          this.#verified.add(key);
        }
        return ok;
      },
    };
  }
}

export function runLatencyModel(o: LatencyModelOptions): LatencyModelResult {
  const q = new EventQueue();
  const prng = new Prng(o.seed ?? 1);
  const chainId = "latency-model";
  const keys = new SimulationMacKeys(replicaCount, new TextEncoder().encode(chainId));
  const meters = Array.from({ length: replicaCount }, () => new Metered());
  const storages = Array.from({ length: replicaCount }, () => new MemoryStorage());
  const busyUntil = new Array<number>(replicaCount).fill(0);
  const busyTotal = new Array<number>(replicaCount).fill(0);
  const armedAt = new Array<number>(replicaCount).fill(Number.POSITIVE_INFINITY);
  // Each message sent remembers the CPU spent in its handler before it was sent: it leaves then.
  type Out = { to: ReplicaId | "client"; msg: ReplicaMsg | ReplyMsg; afterMs: number };
  const outbox: Out[][] = Array.from({ length: replicaCount }, () => []);
  const spent = (i: ReplicaId) => {
    const m = meters[i] as Metered;
    const appends = (storages[i] as MemoryStorage).appends;
    return m.signs * o.signMs + m.verifies * o.verifyMs + appends * (o.appendMs ?? 0);
  };
  const handlerStart = new Array<number>(replicaCount).fill(0);
  const replicas: Replica[] = [];

  /**
   * Runs `work` on replica i once it is free; each message it sends leaves once the signature CPU
   * spent in the handler up to that send is done.
   */
  const runOn = (i: ReplicaId, work: (r: Replica) => void) => {
    const start = Math.max(q.nowMs, busyUntil[i] as number);
    const go = () => {
      handlerStart[i] = spent(i);
      work(replicas[i] as Replica);
      const cost = spent(i) - (handlerStart[i] as number);
      busyUntil[i] = q.nowMs + cost;
      busyTotal[i] = (busyTotal[i] as number) + cost;
      const out = outbox[i] as Out[];
      outbox[i] = [];
      for (const { to, msg, afterMs } of out) {
        if (to === "client") q.at(q.nowMs + afterMs, () => clientReceive(msg as ReplyMsg));
        else
          q.at(q.nowMs + afterMs + o.linkDelayMs(i, to), () =>
            runOn(to, (r) => r.onMessage(i, msg as ReplicaMsg, q.nowMs)),
          );
      }
      arm(i);
    };
    if (start > q.nowMs) q.at(start, go);
    else go();
  };

  const arm = (i: ReplicaId) => {
    const d = (replicas[i] as Replica).nextDeadlineMs();
    if (!Number.isFinite(d) || (d >= (armedAt[i] as number) && (armedAt[i] as number) > q.nowMs))
      return;
    armedAt[i] = Math.max(d, q.nowMs);
    q.at(armedAt[i] as number, () => {
      armedAt[i] = Number.POSITIVE_INFINITY;
      runOn(i, (r) => r.tick(q.nowMs));
    });
  };

  for (let i = 0; i < replicaCount; i++) {
    const m = meters[i] as Metered;
    replicas.push(
      new Replica({
        id: i,
        chainId,
        signer: m.signer(keys.signerFor(i)),
        verifier: m.verifier(keys.verifier()),
        storage: storages[i] as MemoryStorage,
        network: {
          send: (to, msg) =>
            outbox[i]?.push({ to, msg, afterMs: spent(i) - (handlerStart[i] as number) }),
          reply: (msg) =>
            outbox[i]?.push({
              to: "client",
              msg,
              afterMs: spent(i) - (handlerStart[i] as number),
            }),
        },
        viewTimeoutMs: 60_000,
        maxBatch: o.maxBatch ?? 1024,
        nowMs: 0,
        commitVotes: o.commitVotes,
      }),
    );
  }

  // Clients: each submits to every replica and completes on f + 1 matching replies.
  const latencies: number[] = [];
  const pending = new Map<string, { seq: number; sentMs: number; from: Set<ReplicaId> }>();
  const issue = (c: number, seq: number) => {
    if (q.nowMs >= o.durationMs) return;
    const clientId = `c${c}`;
    pending.set(clientId, { seq, sentMs: q.nowMs, from: new Set() });
    const req = { clientId, seq, op: { kind: "get_placement", expert: `L0.E${c % 8}` } };
    for (let i = 0; i < replicaCount; i++) runOn(i, (r) => r.submit(req, q.nowMs));
  };
  const clientReceive = (m: ReplyMsg) => {
    const p = pending.get(m.clientId);
    if (!p || p.seq !== m.seq) return;
    p.from.add(m.replica);
    if (p.from.size < weakQuorumSize) return;
    pending.delete(m.clientId);
    if (p.sentMs >= o.durationMs / 4) latencies.push(q.nowMs - p.sentMs); // after a warm-up
    const c = Number(m.clientId.slice(1));
    q.at(q.nowMs + prng.next() * 2 * o.thinkMs, () => issue(c, m.seq + 1));
  };
  for (let c = 0; c < o.clients; c++) q.at(prng.next() * 2 * o.thinkMs, () => issue(c, 1));
  q.runUntil(o.durationMs + 10_000);

  latencies.sort((a, b) => a - b);
  const pct = (p: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? Number.NaN;
  return {
    clientP50Ms: pct(0.5),
    clientP99Ms: pct(0.99),
    clientMeanMs: latencies.reduce((a, b) => a + b, 0) / Math.max(1, latencies.length),
    completed: latencies.length,
    status: replicas.map((r) => r.status()),
    cpuBusy: busyTotal.map((b) => b / (o.durationMs + 10_000)),
    signsPerBlock:
      meters.reduce((a, m) => a + m.signs, 0) /
      Math.max(1, replicas[0]?.status().blocksCommittedTotal ?? 0),
    verifiesPerBlock:
      meters.reduce((a, m) => a + m.verifies, 0) /
      Math.max(1, replicas[0]?.status().blocksCommittedTotal ?? 0),
    appendsPerBlock:
      storages.reduce((a, s) => a + s.appends, 0) /
      Math.max(1, replicas[0]?.status().blocksCommittedTotal ?? 0),
  };
}
