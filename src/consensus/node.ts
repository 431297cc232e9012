// A live coordinator process: the pure `Replica` driven by real time, a file WAL with fsync, TCP
// links to the other four coordinators through the hybrid ML-KEM-768 + X25519 handshake with
// ML-DSA-65 mutual authentication (crypto/hybrid-link.ts), and a client port for RegistryClient.
// This file is the only place with sockets and timers; everything it feeds the replica is decoded
// and validated first, and a bad frame or handshake is logged with its reason and dropped.
//
// Inter-region latency of the local emulation is added on the sending side: each frame to peer j
// leaves after the configured one-way delay between the two regions.

import { createServer, connect as netConnect, type Server, type Socket } from "node:net";
import { SampleRing } from "../common/sample-ring.ts";
import {
  handshake1Bytes,
  handshakeAccept,
  handshakeFinish,
  handshakeRespond,
  handshakeStart,
  type LinkCipher,
  LinkError,
  type LinkIdentity,
} from "../crypto/hybrid-link.ts";
import { defaultMlDsa65Backend } from "../crypto/ml-dsa-backend.ts";
import { MlDsa65Signer, MlDsa65Verifier } from "../crypto/signature.ts";
import { clientFrame, decodeReplicaMsg, decodeWith, encodeMessage } from "./codec.ts";
import { messageBytesMax, quorumSize, replicaCount } from "./constants.ts";
import { FrameReader, writeFrame } from "./framing.ts";
import { Replica, type ReplicaEvent } from "./replica.ts";
import type { Block, ReplicaId, ReplicaMsg, ReplyMsg } from "./types.ts";
import { canonicalJson, sha256Hex } from "./types.ts";
import { FileWal } from "./wal.ts";

export interface CoordinatorNodeInit {
  readonly id: ReplicaId;
  readonly chainId: string;
  readonly host: string;
  /** Replica i listens for peers on portBase + i and for clients on portBase + 10 + i. */
  readonly portBase: number;
  readonly dataDir: string;
  readonly secretKey: Uint8Array;
  readonly publicKeys: readonly Uint8Array[];
  readonly viewTimeoutMs: number;
  readonly keyEpochMs: number;
  readonly maxBatch: number;
  /** Committed blocks kept for lagging peers and the checkpoint interval (defaults: constants.ts). */
  readonly retainedCommittedBlocks?: number;
  readonly snapshotEveryBlocks?: number;
  /** One-way delay to peer j in ms (0 without emulation). */
  readonly latencyMs: (peer: ReplicaId) => number;
  readonly log: (line: string) => void;
  /** Metrics hooks (src/observe/coordinator-metrics.ts); none when omitted. */
  readonly observer?: CoordinatorObserver;
}

/**
 * What a coordinator reports as it runs, for its /metrics (issue #8). Structural, so consensus
 * depends on no observability module.
 */
export interface CoordinatorObserver {
  /** Every replica event (rejections, timeouts, view changes …) and every frame the node drops. */
  event(e: { readonly kind: string; readonly reason?: string; readonly against?: number }): void;
  /** A block committed live here; `nowMs` is this replica's clock (the block carries the leader's). */
  committed(block: Pick<Block, "height" | "timestampMs">, nowMs: number): void;
  /** A request a client sent to this coordinator committed `ms` after it arrived. */
  requestCommitted(ms: number): void;
}

/** Client requests whose arrival time is kept for the arrival → commit latency (oldest dropped). */
export const requestArrivalsMax = 4_096;

export const handshakeTimeoutMs = 5_000;
export const reconnectDelayMs = 250;
/** How long a starting coordinator waits for links to a quorum before serving clients anyway. */
export const linksGraceMs = 10_000;
/** Client connections accepted at once. */
export const clientConnectionsMax = 1_024;
/** Emulated-latency timer samples kept for the cost breakdown in status (oldest dropped). */
export const delayLatenessSamplesMax = 4_096;

export function peerPort(portBase: number, id: ReplicaId): number {
  return portBase + id;
}
export function clientPort(portBase: number, id: ReplicaId): number {
  return portBase + 10 + id;
}

interface Link {
  socket: Socket;
  cipher: LinkCipher;
}

export class CoordinatorNode {
  readonly #init: CoordinatorNodeInit;
  readonly #identity: LinkIdentity;
  readonly #replica: Replica;
  readonly #wal: FileWal;
  readonly #links: (Link | undefined)[] = new Array(replicaCount).fill(undefined);
  readonly #clients = new Map<string, Socket>();
  #peerServer: Server | undefined;
  #clientServer: Server | undefined;
  #timer: NodeJS.Timeout | undefined;
  #timerAt = Number.POSITIVE_INFINITY;
  #stopped = false;
  readonly #reconnects: NodeJS.Timeout[] = [];
  /** clientId \0 seq → arrival ms, for requests that came from this node's clients. */
  readonly #arrivals = new Map<string, number>();
  /** Which ML-DSA-65 implementation signs and verifies here (crypto/ml-dsa-backend.ts). */
  readonly signatureBackend: string;
  readonly #signer: MlDsa65Signer;
  readonly #verifier: MlDsa65Verifier;
  /** How late the emulated-latency timers fire (ms past the intended departure): the OS's share. */
  readonly #delayLateMs = new SampleRing(delayLatenessSamplesMax);

  constructor(init: CoordinatorNodeInit) {
    this.#init = init;
    const { backend, reason } = defaultMlDsa65Backend();
    this.signatureBackend = backend.name;
    init.log(`ML-DSA-65 signatures by ${backend.name} (${reason})`);
    const signer = new MlDsa65Signer(init.id, init.secretKey, backend);
    const verifier = new MlDsa65Verifier(init.publicKeys, backend);
    this.#signer = signer;
    this.#verifier = verifier;
    this.#identity = { selfId: init.id, signer, verifier, peers: replicaCount };
    this.#wal = new FileWal(init.dataDir);
    const log = (e: ReplicaEvent) => {
      init.observer?.event(e);
      if (e.kind === "reject") init.log(`reject from ${e.from}: ${e.reason}`);
      else if (e.kind === "evidence") init.log(`evidence against ${e.against}: ${e.reason}`);
      else if (e.kind === "view-change") init.log(`view ${e.view}, leader ${e.leader}`);
      else if (e.kind === "timeout") init.log(`timed out of view ${e.view}`);
      else init.log(e.message);
    };
    this.#replica = new Replica({
      id: init.id,
      chainId: init.chainId,
      signer,
      verifier,
      storage: this.#wal,
      network: { send: (to, msg) => this.#sendToPeer(to, msg), reply: (msg) => this.#reply(msg) },
      viewTimeoutMs: init.viewTimeoutMs,
      maxBatch: init.maxBatch,
      ...(init.retainedCommittedBlocks === undefined
        ? {}
        : { retainedCommittedBlocks: init.retainedCommittedBlocks }),
      ...(init.snapshotEveryBlocks === undefined
        ? {}
        : { snapshotEveryBlocks: init.snapshotEveryBlocks }),
      nowMs: Date.now(),
      log,
      ...(init.observer ? { onCommit: (block: Block) => this.#observeCommit(block) } : {}),
    });
  }

  /** fsync calls of the WAL so far. */
  get walFsyncs(): number {
    return this.#wal.fsyncs;
  }

  #observeCommit(block: Block): void {
    const observer = this.#init.observer;
    if (!observer) return;
    const now = Date.now();
    observer.committed(block, now);
    for (const req of block.payload) {
      const key = `${req.clientId}\u0000${req.seq}`;
      const at = this.#arrivals.get(key);
      if (at !== undefined) {
        this.#arrivals.delete(key);
        observer.requestCommitted(now - at);
      }
    }
  }

  get replica(): Replica {
    return this.#replica;
  }

  /**
   * Where this replica's time goes, since start: WAL appends (write + fsync), ML-DSA-65 signs and
   * verifies (with cache hits), and how late the emulated-latency timers fire. Wall times, so on a
   * loaded machine they include waiting for a core.
   */
  costs(): Record<string, number> {
    const w = this.#wal;
    const s = this.#signer;
    const v = this.#verifier;
    const late = this.#delayLateMs.sorted();
    const mean = (total: number, n: number) => (n === 0 ? 0 : total / n);
    return {
      walAppends: w.fsyncs,
      walAppendMsMean: mean(w.appendMsTotal, w.fsyncs),
      walAppendMsTotal: w.appendMsTotal,
      signs: s.signs,
      signMsMean: mean(s.signMsTotal, s.signs),
      signMsTotal: s.signMsTotal,
      verifies: v.verifies,
      verifyMsMean: mean(v.verifyMsTotal, v.verifies),
      verifyMsTotal: v.verifyMsTotal,
      verifyCacheHits: v.cacheHits,
      delayTimers: late.length,
      delayLateMsP50: late[Math.floor(late.length / 2)] ?? 0,
      delayLateMsMean: late.length === 0 ? 0 : late.reduce((a, b) => a + b, 0) / late.length,
    };
  }

  async start(): Promise<void> {
    const { host, portBase, id } = this.#init;
    this.#peerServer = createServer((s) => this.#acceptPeer(s));
    this.#clientServer = createServer((s) => this.#acceptClient(s));
    this.#clientServer.maxConnections = clientConnectionsMax;
    await listen(this.#peerServer, host, peerPort(portBase, id));
    for (let j = id + 1; j < replicaCount; j++) this.#dial(j);
    this.#arm();
    // Serve clients once a quorum can be reached (or after a grace period), so a first proposal
    // is not sent into links that are still handshaking, which would cost a view change.
    const until = Date.now() + linksGraceMs;
    while (this.#links.filter(Boolean).length < quorumSize - 1 && Date.now() < until)
      await new Promise((r) => setTimeout(r, 20));
    await listen(this.#clientServer, host, clientPort(portBase, id));
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    for (const t of this.#reconnects) clearTimeout(t);
    for (const l of this.#links) l?.socket.destroy();
    for (const s of this.#clients.values()) s.destroy();
    this.#peerServer?.close();
    this.#clientServer?.close();
    this.#wal.close();
  }

  // ---- Timers -------------------------------------------------------------------------------------

  #arm(): void {
    if (this.#stopped) return;
    const at = this.#replica.nextDeadlineMs();
    if (at >= this.#timerAt && this.#timer) return;
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(
      () => {
        this.#timerAt = Number.POSITIVE_INFINITY;
        this.#timer = undefined;
        this.#replica.tick(Date.now());
        this.#arm();
      },
      Math.max(0, Math.min(at - Date.now(), 2 ** 31 - 1)),
    );
  }

  // ---- Peer links ---------------------------------------------------------------------------------

  #epoch(): number {
    return Math.floor(Date.now() / this.#init.keyEpochMs);
  }

  #dial(j: ReplicaId): void {
    if (this.#stopped) return;
    const s = netConnect(peerPort(this.#init.portBase, j), this.#init.host);
    s.setNoDelay(true);
    const reader = new FrameReader(messageBytesMax + 64);
    const pending = handshakeStart(this.#identity, j, this.#epoch());
    let stage: "await-2" | "open" = "await-2";
    const timer = setTimeout(() => s.destroy(), handshakeTimeoutMs);
    s.on("connect", () => writeFrame(s, pending.msg1));
    s.on("data", (chunk: Buffer) => {
      const { frames, error } = reader.push(chunk);
      for (const f of frames) {
        if (stage === "await-2") {
          try {
            const { msg3, link } = handshakeFinish(this.#identity, pending, f);
            writeFrame(s, msg3);
            clearTimeout(timer);
            stage = "open";
            this.#setLink(j, { socket: s, cipher: link });
          } catch (err) {
            this.#init.log(`link to ${j} refused: ${(err as Error).message}`);
            s.destroy();
            return;
          }
        } else this.#onLinkFrame(j, f);
      }
      if (error) {
        this.#init.log(`link to ${j}: ${error}`);
        s.destroy();
      }
    });
    s.on("error", () => s.destroy());
    s.on("close", () => {
      clearTimeout(timer);
      if (this.#links[j]?.socket === s) this.#links[j] = undefined;
      if (!this.#stopped) this.#reconnects.push(setTimeout(() => this.#dial(j), reconnectDelayMs));
    });
  }

  #acceptPeer(s: Socket): void {
    s.setNoDelay(true);
    const reader = new FrameReader(messageBytesMax + 64);
    let stage: "await-1" | "await-3" | "open" = "await-1";
    let responder: ReturnType<typeof handshakeRespond> | undefined;
    let peer = -1;
    const timer = setTimeout(() => s.destroy(), handshakeTimeoutMs);
    s.on("data", (chunk: Buffer) => {
      const { frames, error } = reader.push(chunk);
      for (const f of frames) {
        try {
          if (stage === "await-1") {
            if (f.length !== handshake1Bytes)
              throw new LinkError("malformed", `handshake 1 of ${f.length} bytes`);
            responder = handshakeRespond(this.#identity, f);
            peer = responder.peerId;
            writeFrame(s, responder.msg2);
            stage = "await-3";
          } else if (stage === "await-3" && responder) {
            const cipher = handshakeAccept(this.#identity, responder, f);
            clearTimeout(timer);
            stage = "open";
            this.#setLink(peer, { socket: s, cipher });
          } else this.#onLinkFrame(peer, f);
        } catch (err) {
          this.#init.log(
            `link from ${peer >= 0 ? peer : s.remoteAddress} refused: ${(err as Error).message}`,
          );
          s.destroy();
          return;
        }
      }
      if (error) {
        this.#init.log(`link from ${peer}: ${error}`);
        s.destroy();
      }
    });
    s.on("error", () => s.destroy());
    s.on("close", () => {
      clearTimeout(timer);
      if (peer >= 0 && this.#links[peer]?.socket === s) this.#links[peer] = undefined;
    });
  }

  #setLink(j: ReplicaId, link: Link): void {
    const old = this.#links[j];
    this.#links[j] = link;
    if (old && old.socket !== link.socket) old.socket.destroy();
    this.#init.log(`link with ${j} up (ML-KEM-768 + X25519, ML-DSA-65 authenticated)`);
  }

  #onLinkFrame(j: ReplicaId, frame: Uint8Array): void {
    const link = this.#links[j];
    if (!link) return;
    let plain: Uint8Array;
    try {
      plain = link.cipher.open(frame);
    } catch (err) {
      this.#init.log(`link with ${j} closed: ${(err as Error).message}`);
      link.socket.destroy();
      return;
    }
    const d = decodeReplicaMsg(plain);
    if (!d.ok) {
      this.#init.log(`reject from ${j}: ${d.reason}`);
      this.#init.observer?.event({ kind: "reject", reason: `malformed: ${d.reason}` });
      return;
    }
    this.#replica.onMessage(j, d.value, Date.now());
    this.#arm();
  }

  #sendToPeer(to: ReplicaId, msg: ReplicaMsg): void {
    const bytes = encodeMessage(msg);
    const go = () => {
      const link = this.#links[to];
      if (!link || link.socket.destroyed) return; // the protocol retransmits what matters
      link.cipher.rekey(this.#epoch());
      writeFrame(link.socket, link.cipher.seal(bytes));
    };
    const delay = this.#init.latencyMs(to);
    if (delay > 0) {
      const due = performance.now() + delay;
      setTimeout(() => {
        this.#delayLateMs.push(performance.now() - due);
        go();
      }, delay);
    } else go();
  }

  // ---- Clients ------------------------------------------------------------------------------------

  #acceptClient(s: Socket): void {
    s.setNoDelay(true);
    const reader = new FrameReader(messageBytesMax);
    const ids = new Set<string>();
    s.on("data", (chunk: Buffer) => {
      const { frames, error } = reader.push(chunk);
      for (const f of frames) {
        const d = decodeWith(clientFrame, f);
        if (!d.ok) {
          this.#init.log(`reject from client ${s.remoteAddress}:${s.remotePort}: ${d.reason}`);
          this.#init.observer?.event({ kind: "reject", reason: `malformed: ${d.reason}` });
          continue;
        }
        const m = d.value;
        if (m.type === "status") {
          writeFrame(
            s,
            encodeMessage({
              type: "status",
              status: {
                ...this.#replica.status(),
                walFsyncs: this.#wal.fsyncs,
                signatureBackend: this.signatureBackend,
                costs: this.costs(),
                // Equal on every replica at the same committed height (compare them).
                registryDigest: sha256Hex(canonicalJson(this.#replica.registrySnapshot())),
              },
            }),
          );
          continue;
        }
        ids.add(m.request.clientId);
        this.#clients.set(m.request.clientId, s);
        if (this.#init.observer) {
          const key = `${m.request.clientId}\u0000${m.request.seq}`;
          if (!this.#arrivals.has(key)) {
            if (this.#arrivals.size >= requestArrivalsMax) {
              const oldest = this.#arrivals.keys().next().value;
              if (oldest !== undefined) this.#arrivals.delete(oldest);
            }
            this.#arrivals.set(key, Date.now());
          }
        }
        this.#replica.submit(m.request, Date.now());
        this.#arm();
      }
      if (error) {
        this.#init.log(`client ${s.remoteAddress}: ${error}`);
        s.destroy();
      }
    });
    s.on("error", () => s.destroy());
    s.on("close", () => {
      for (const id of ids) if (this.#clients.get(id) === s) this.#clients.delete(id);
    });
  }

  #reply(msg: ReplyMsg): void {
    const s = this.#clients.get(msg.clientId);
    if (s && !s.destroyed) writeFrame(s, encodeMessage(msg));
  }
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
}
