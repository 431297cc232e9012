// State transfer between coordinators: how a replica that fell further behind than its peers keep
// blocks (a long crash, a partition) catches up. Block fetching (replica.ts) only works while the
// peers still hold every block since the lagging replica's committed height; after they truncate
// (retainedCommittedBlocks, snapshots every snapshotEveryBlocks) it needs the state itself.
//
// The design is PBFT's checkpoint protocol (Castro & Liskov, OSDI '99 §4.3 and TOCS 2002 §6.2) as
// CometBFT's state sync uses it (https://docs.cometbft.com/v0.38/spec/p2p/legacy-docs/messages/state-sync):
// - Checkpoints. Every replica, on committing the block at a height that is a multiple of the
//   snapshot interval, computes the digest of its state (registry + client sessions, canonical
//   JSON, SHA-256), signs (height, block id, state digest) with its ML-DSA-65 key and sends it to the
//   others. f + 1 = 2 matching signatures form a checkpoint certificate: at least one signer is
//   honest, an honest replica signs only the state it computed from committed blocks, and honest
//   replicas commit the same blocks and execute deterministically, so the certified state is THE
//   committed state at that height. One peer's word is never enough.
// - Catch-up. A replica that learns of a certified block more than `lagBlocks` above its committed
//   height asks one peer (`catchup` with its height). The peer answers with the committed blocks
//   after that height if it still holds them (checked by their QCs like any fetched block), or else
//   with its latest certified checkpoint: the block, the registry, the sessions and the signatures.
//   The lagging replica recomputes the digest, checks the signatures against the cluster's public
//   keys, installs the snapshot atomically in its storage (WAL snapshot + truncation, as a local
//   snapshot would) and then asks for the blocks after it. No answer in `retryMs`: it asks the next
//   peer. A peer that signs a different state for a committed block is reported as evidence.
// - Large snapshots. A state whose canonical JSON does not fit in one frame (snapshotBytesMax)
//   travels as `snapshot-chunk` pieces of snapshotChunkBytes, in order on the link, as CometBFT
//   state sync sends chunks. Piece 0 carries the block and the certificate, which are checked
//   first, so the pieces are bound to a certified digest before they are kept; the receiver then
//   takes only the next piece from the same peer, of the exact expected length, and at the end
//   hashes the whole and installs it through the same checks as a one-frame snapshot. A missing
//   or bad piece drops the assembly; the catch-up retry asks again. At most
//   snapshotBytesTotalMax bytes are assembled.
// - Commit by checkpoint. f + 1 matching checkpoint signatures for a block above our committed
//   height also prove that block committed (an honest replica signs only after committing it). A
//   replica that holds the chain up to it commits it at once; one that does not asks for the
//   blocks. This ends the case of a replica that missed the last QC of a burst while the cluster
//   went idle: with no new blocks, no 2-chain would ever commit what it holds.
//
// This module is pure and deterministic like the replica: no clock, no randomness, no I/O of its
// own; the replica hands it time, messages and a narrow host interface.

import { z } from "zod";
import { invariant } from "../common/assert.ts";
import type { Signer, Verifier } from "../crypto/signature.ts";
import {
  fetchBlocksMax,
  messageBytesMax,
  replicaCount,
  snapshotBytesTotalMax,
  snapshotChunkBytes,
  weakQuorumSize,
} from "./constants.ts";
import { type RegistryState, registryStateSchema } from "./registry.ts";
import type { SessionEntry } from "./storage.ts";
import {
  type Block,
  blockIdOf,
  type CatchupMsg,
  type CheckpointMsg,
  canonicalJson,
  type Hex,
  type ReplicaId,
  type ReplicaMsg,
  type Signature,
  type SnapshotChunkMsg,
  type SnapshotMsg,
  sha256Hex,
} from "./types.ts";

/** Checkpoint heights whose peer signatures are kept while our own checkpoint is not there yet. */
export const checkpointHeightsMax = 8;
/** A serialized snapshot larger than this is not served (it would not fit in one frame). */
export const snapshotBytesMax = messageBytesMax - 256 * 1024;

const te = new TextEncoder();
const td = new TextDecoder("utf-8", { fatal: true });

export function checkpointDigest(
  chainId: string,
  height: number,
  blockId: Hex,
  stateDigest: Hex,
): Uint8Array {
  return te.encode(`moe-swarm/checkpoint/v1\0${chainId}\0${height}\0${blockId}\0${stateDigest}`);
}

/** Sessions in a canonical order (by client id), so equal states give equal bytes. */
export function canonicalSessions(sessions: Iterable<SessionEntry>): SessionEntry[] {
  return [...sessions].sort((a, b) =>
    a.clientId < b.clientId ? -1 : a.clientId > b.clientId ? 1 : 0,
  );
}

const stateDigestDomain = "moe-swarm/state/v1\0";

/** Canonical JSON of the replicated state and its SHA-256 digest. */
export function stateDigestOf(
  registry: RegistryState,
  sessions: readonly SessionEntry[],
): { digest: Hex; bytes: number } {
  const json = canonicalJson({ registry, sessions: canonicalSessions(sessions) });
  return { digest: sha256Hex(stateDigestDomain, json), bytes: json.length };
}

export const sessionEntrySchema = z.strictObject({
  clientId: z.string().min(1).max(64),
  seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  result: z.union([
    z.strictObject({ ok: z.literal(true), value: z.unknown().optional() }),
    z.strictObject({ ok: z.literal(false), error: z.string().max(4_096) }),
  ]),
  atMs: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
});

/** The canonical JSON a large snapshot's pieces add up to. */
const assembledState = z.strictObject({
  registry: registryStateSchema,
  sessions: z.array(sessionEntrySchema),
});

/** A state the replica may install: checked against a checkpoint certificate. */
export interface VerifiedSnapshot {
  readonly block: Block;
  readonly registry: RegistryState;
  readonly sessions: readonly SessionEntry[];
}

export interface StateSyncHost {
  readonly id: ReplicaId;
  readonly chainId: string;
  readonly signer: Signer;
  readonly verifier: Verifier;
  send(to: ReplicaId, msg: ReplicaMsg): void;
  committed(): Block;
  /** The committed block at `height` if this replica still holds it. */
  committedBlock(height: number): Block | undefined;
  /** The committed state now (called at checkpoint heights, right after the block is applied). */
  state(): { registry: RegistryState; sessions: readonly SessionEntry[] };
  /** Replaces the committed state with a verified snapshot above the committed height. */
  install(snapshot: VerifiedSnapshot): void;
  /**
   * Commits the block `blockId` at `height` (proven committed by f + 1 checkpoint signatures) if
   * this replica holds it and its chain down to the committed block; false when it does not.
   */
  commitCertified(height: number, blockId: Hex): boolean;
  reject(from: ReplicaId, reason: string): void;
  evidence(against: ReplicaId, reason: string): void;
  info(message: string): void;
}

export interface StateSyncInit {
  readonly host: StateSyncHost;
  /** Checkpoint interval in blocks (the replica's snapshot interval; equal on every replica). */
  readonly everyBlocks: number;
  /** Catch up by `catchup` when a certified block is this far above the committed height. */
  readonly lagBlocks: number;
  /** Ask the next peer after this long without progress. */
  readonly retryMs: number;
  /** Snapshot size served in one frame, and piece size beyond it (defaults: the constants). */
  readonly snapshotFrameBytesMax?: number;
  readonly snapshotChunkBytes?: number;
}

/** A large snapshot being received piece by piece, bound to a certified digest by piece 0. */
interface Assembly {
  readonly from: ReplicaId;
  readonly height: number;
  readonly stateDigest: Hex;
  readonly totalBytes: number;
  readonly count: number;
  readonly block: Block;
  readonly sigs: readonly Signature[];
  readonly parts: Uint8Array[];
}

interface Checkpoint {
  readonly height: number;
  readonly blockId: Hex;
  readonly stateDigest: Hex;
  readonly block: Block;
  readonly registry: RegistryState;
  readonly sessions: readonly SessionEntry[];
  readonly bytes: number;
  readonly sigs: Map<ReplicaId, Uint8Array>;
}

export interface StateSyncStatus {
  /** Height of the latest checkpoint certified by f + 1 signatures (0: none yet). */
  readonly certifiedCheckpointHeight: number;
  readonly snapshotsInstalled: number;
  readonly snapshotsServed: number;
  readonly catchupRequests: number;
}

export class StateSync {
  readonly #h: StateSyncHost;
  readonly #every: number;
  readonly #lagBlocks: number;
  readonly #retryMs: number;
  readonly #frameBytesMax: number;
  readonly #chunkBytes: number;
  #assembly: Assembly | undefined;
  /** Our latest checkpoint, certified or still collecting signatures. */
  #own: Checkpoint | undefined;
  #certified: Checkpoint | undefined;
  /** Peer signatures for checkpoint heights we have not reached yet. */
  readonly #early = new Map<number, Map<ReplicaId, CheckpointMsg>>();
  /** The highest checkpoint above our committed height that f + 1 peers signed alike. */
  #provenAhead: { height: number; blockId: Hex } | undefined;
  // Catch-up progress.
  #targetHeight = 0;
  #requestedAtHeight = -1;
  #requestedAtMs = Number.NEGATIVE_INFINITY;
  #peer: ReplicaId;
  #installed = 0;
  #served = 0;
  #requests = 0;

  constructor(init: StateSyncInit) {
    invariant(init.everyBlocks >= 1 && init.lagBlocks >= 1, "positive checkpoint interval and lag");
    this.#h = init.host;
    this.#every = init.everyBlocks;
    this.#lagBlocks = init.lagBlocks;
    this.#retryMs = init.retryMs;
    this.#frameBytesMax = init.snapshotFrameBytesMax ?? snapshotBytesMax;
    this.#chunkBytes = init.snapshotChunkBytes ?? snapshotChunkBytes;
    invariant(
      this.#chunkBytes >= 1 && this.#chunkBytes <= snapshotChunkBytes,
      "snapshot piece size within the wire limit",
    );
    this.#peer = (init.host.id + 1) % replicaCount;
  }

  status(): StateSyncStatus {
    return {
      certifiedCheckpointHeight: this.#certified?.height ?? 0,
      snapshotsInstalled: this.#installed,
      snapshotsServed: this.#served,
      catchupRequests: this.#requests,
    };
  }

  // ---- Checkpoints ------------------------------------------------------------------------------

  /** Called for every committed block, in height order, after it is applied. */
  onCommitted(block: Block, live: boolean): void {
    if (block.height === 0 || block.height % this.#every !== 0) return;
    const { registry, sessions } = this.#h.state();
    const ordered = canonicalSessions(sessions);
    const { digest, bytes } = stateDigestOf(registry, ordered);
    const sig = this.#h.signer.sign(
      checkpointDigest(this.#h.chainId, block.height, block.id, digest),
    );
    const cp: Checkpoint = {
      height: block.height,
      blockId: block.id,
      stateDigest: digest,
      block,
      registry,
      sessions: ordered,
      bytes,
      sigs: new Map([[this.#h.id, sig]]),
    };
    this.#own = cp;
    const early = this.#early.get(block.height);
    this.#early.delete(block.height);
    for (const m of early?.values() ?? []) this.#addSig(cp, m);
    for (const h of this.#early.keys()) if (h <= block.height) this.#early.delete(h);
    this.#maybeCertify();
    // Only a live commit announces itself; a replica replaying its WAL after a restart re-derives
    // the state but stays quiet (its peers certified that height long ago).
    if (!live) return;
    const msg: CheckpointMsg = {
      type: "checkpoint",
      height: block.height,
      blockId: block.id,
      stateDigest: digest,
      author: this.#h.id,
      sig,
    };
    for (let to = 0; to < replicaCount; to++) if (to !== this.#h.id) this.#h.send(to, msg);
  }

  #addSig(cp: Checkpoint, m: CheckpointMsg): void {
    if (m.blockId !== cp.blockId || m.stateDigest !== cp.stateDigest) {
      // A committed block is the same at every honest replica, and so is the state after it.
      this.#h.evidence(
        m.author,
        `checkpoint at height ${m.height} signs block ${m.blockId.slice(0, 8)} state ${m.stateDigest.slice(0, 8)}; the committed ones are ${cp.blockId.slice(0, 8)} ${cp.stateDigest.slice(0, 8)}`,
      );
      return;
    }
    cp.sigs.set(m.author, m.sig);
  }

  #maybeCertify(): void {
    const cp = this.#own;
    if (cp && cp.sigs.size >= weakQuorumSize && cp !== this.#certified) this.#certified = cp;
  }

  #onCheckpoint(from: ReplicaId, m: CheckpointMsg): void {
    if (from !== m.author) {
      this.#h.reject(from, `checkpoint by ${m.author} relayed by ${from}`);
      return;
    }
    const committed = this.#h.committed().height;
    if (m.height === 0 || m.height % this.#every !== 0) {
      this.#h.reject(from, `checkpoint at height ${m.height}, not a multiple of ${this.#every}`);
      return;
    }
    if (m.height <= (this.#certified?.height ?? 0) && m.height !== this.#own?.height) return; // late
    if (m.height > committed + checkpointHeightsMax * this.#every) {
      this.#h.reject(from, `checkpoint for far-future height ${m.height}`);
      return;
    }
    if (
      !this.#h.verifier.verify(
        m.author,
        checkpointDigest(this.#h.chainId, m.height, m.blockId, m.stateDigest),
        m.sig,
      )
    ) {
      this.#h.reject(from, `checkpoint at height ${m.height} has an invalid signature`);
      return;
    }
    if (this.#own && m.height === this.#own.height) {
      this.#addSig(this.#own, m);
      this.#maybeCertify();
      return;
    }
    if (m.height <= committed) return; // a height we passed without a checkpoint of our own
    let set = this.#early.get(m.height);
    if (!set) {
      if (this.#early.size >= checkpointHeightsMax) {
        const lowest = Math.min(...this.#early.keys());
        this.#early.delete(lowest);
      }
      set = new Map();
      this.#early.set(m.height, set);
    }
    set.set(m.author, m);
    const alike = [...set.values()].filter(
      (x) => x.blockId === m.blockId && x.stateDigest === m.stateDigest,
    ).length;
    if (alike >= weakQuorumSize && m.height > (this.#provenAhead?.height ?? 0)) {
      this.#provenAhead = { height: m.height, blockId: m.blockId };
      this.#commitProven();
    }
  }

  /** Commits the proven checkpoint block if we hold its chain; otherwise catch-up asks for it. */
  #commitProven(): void {
    const p = this.#provenAhead;
    if (!p) return;
    if (p.height <= this.#h.committed().height || this.#h.commitCertified(p.height, p.blockId))
      this.#provenAhead = undefined;
  }

  // ---- Catch-up: the lagging side -------------------------------------------------------------

  /** A verified certificate for a block at `height` was seen (from `from`). */
  onCertified(height: number, from: ReplicaId, nowMs: number): void {
    if (height > this.#targetHeight) this.#targetHeight = height;
    this.#commitProven();
    if (from !== this.#h.id && height > this.#h.committed().height + this.#lagBlocks)
      this.#peer = from;
    this.#maybeRequest(nowMs);
  }

  /** Called on ticks, so an unanswered request moves on to the next peer. */
  onTick(nowMs: number): void {
    this.#commitProven();
    this.#maybeRequest(nowMs);
  }

  #maybeRequest(nowMs: number): void {
    const committed = this.#h.committed().height;
    const proven = (this.#provenAhead?.height ?? 0) > committed;
    if (this.#targetHeight <= committed + this.#lagBlocks && !proven) return;
    const progressed = committed > this.#requestedAtHeight;
    if (!progressed && nowMs < this.#requestedAtMs + this.#retryMs) return;
    if (!progressed) {
      // No answer from that peer: try the next one.
      this.#peer = (this.#peer + 1) % replicaCount;
      if (this.#peer === this.#h.id) this.#peer = (this.#peer + 1) % replicaCount;
    }
    this.#requestedAtHeight = committed;
    this.#requestedAtMs = nowMs;
    this.#requests += 1;
    this.#h.send(this.#peer, { type: "catchup", height: committed });
  }

  // ---- Catch-up: the serving side -------------------------------------------------------------

  #onCatchup(from: ReplicaId, m: CatchupMsg): void {
    if (from === this.#h.id) return;
    const committed = this.#h.committed().height;
    if (m.height >= committed) return;
    // Blocks when we still hold the next one; the snapshot only when we do not.
    if (this.#h.committedBlock(m.height + 1)) {
      const blocks: Block[] = [];
      for (let h = m.height + 1; h <= committed && blocks.length < fetchBlocksMax; h++) {
        const b = this.#h.committedBlock(h);
        if (!b) break;
        blocks.push(b);
      }
      this.#h.send(from, { type: "blocks", blocks });
      return;
    }
    const cp = this.#certified;
    if (!cp || cp.height <= m.height) {
      this.#h.info(
        `catch-up of replica ${from} from height ${m.height}: blocks truncated and no certified checkpoint above it yet`,
      );
      return;
    }
    const sigs = [...cp.sigs.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([author, sig]) => ({ author, sig }));
    if (cp.bytes <= this.#frameBytesMax) {
      this.#served += 1;
      this.#h.send(from, {
        type: "snapshot",
        block: cp.block,
        registry: cp.registry,
        sessions: cp.sessions,
        stateDigest: cp.stateDigest,
        sigs,
      });
      return;
    }
    // Too large for one frame: the canonical JSON (whose hash is the digest) in pieces.
    const bytes = te.encode(canonicalJson({ registry: cp.registry, sessions: cp.sessions }));
    if (bytes.length > snapshotBytesTotalMax) {
      this.#h.info(
        `catch-up of replica ${from}: snapshot of ${bytes.length} bytes > ${snapshotBytesTotalMax}, not served`,
      );
      return;
    }
    this.#served += 1;
    const count = Math.ceil(bytes.length / this.#chunkBytes);
    for (let index = 0; index < count; index++) {
      const piece = bytes.subarray(index * this.#chunkBytes, (index + 1) * this.#chunkBytes);
      this.#h.send(from, {
        type: "snapshot-chunk",
        height: cp.height,
        stateDigest: cp.stateDigest,
        totalBytes: bytes.length,
        index,
        count,
        data: Buffer.from(piece.buffer, piece.byteOffset, piece.length).toString("base64"),
        ...(index === 0 ? { block: cp.block, sigs } : {}),
      });
    }
  }

  // ---- Catch-up: installing a snapshot --------------------------------------------------------

  /** Why a snapshot is refused; undefined when its certificate proves it. */
  checkSnapshot(m: SnapshotMsg): string | undefined {
    const b = m.block;
    if (b.height === 0 || b.height % this.#every !== 0)
      return `snapshot at height ${b.height}, not a checkpoint height`;
    if (blockIdOf(this.#h.chainId, b) !== b.id)
      return "snapshot block id does not match its contents";
    const registry = registryStateSchema.safeParse(m.registry);
    if (!registry.success)
      return `snapshot registry: ${registry.error.issues[0]?.path.join(".")}: ${registry.error.issues[0]?.message}`;
    const { digest } = stateDigestOf(m.registry, m.sessions);
    if (digest !== m.stateDigest) return "snapshot state does not match its digest";
    return this.#checkCertificate(b, m.stateDigest, m.sigs);
  }

  /** Why f + 1 distinct valid checkpoint signatures over (block, digest) are not there, if not. */
  #checkCertificate(b: Block, stateDigest: Hex, sigs: readonly Signature[]): string | undefined {
    const seen = new Set<ReplicaId>();
    const message = checkpointDigest(this.#h.chainId, b.height, b.id, stateDigest);
    for (const s of sigs) {
      if (seen.has(s.author)) return `snapshot certificate counts replica ${s.author} twice`;
      if (!this.#h.verifier.verify(s.author, message, s.sig))
        return `snapshot certificate: signature of replica ${s.author} is invalid`;
      seen.add(s.author);
    }
    if (seen.size < weakQuorumSize)
      return `snapshot certificate with ${seen.size} signatures < f + 1 = ${weakQuorumSize}`;
    return undefined;
  }

  /** One piece of a large snapshot; the last one completes it and installs it like a whole one. */
  #onSnapshotChunk(from: ReplicaId, m: SnapshotChunkMsg): void {
    const bad = this.#takeSnapshotChunk(from, m);
    if (bad === undefined) return;
    if (this.#assembly?.from === from) this.#assembly = undefined;
    this.#h.reject(from, bad);
  }

  /** Why a piece is refused (the caller logs it and drops that peer's assembly); else undefined. */
  #takeSnapshotChunk(from: ReplicaId, m: SnapshotChunkMsg): string | undefined {
    if (m.height <= this.#h.committed().height) return undefined; // installed already
    const expectedCount = Math.ceil(m.totalBytes / this.#chunkBytes);
    if (m.count !== expectedCount || m.index >= m.count)
      return `snapshot piece ${m.index} of ${m.count} for ${m.totalBytes} bytes: expected ${expectedCount} pieces of ${this.#chunkBytes} bytes`;
    const data = Buffer.from(m.data, "base64");
    const want =
      m.index < m.count - 1 ? this.#chunkBytes : m.totalBytes - this.#chunkBytes * (m.count - 1);
    if (data.length !== want)
      return `snapshot piece ${m.index} has ${data.length} bytes; expected ${want}`;
    if (m.index === 0) {
      const b = m.block;
      if (!b || !m.sigs) return "snapshot piece 0 without its block and certificate";
      if (b.height !== m.height || b.height % this.#every !== 0)
        return `snapshot piece 0 for height ${m.height}, block ${b.height}`;
      if (blockIdOf(this.#h.chainId, b) !== b.id)
        return "snapshot block id does not match its contents";
      const bad = this.#checkCertificate(b, m.stateDigest, m.sigs);
      if (bad) return bad;
      this.#assembly = {
        from,
        height: m.height,
        stateDigest: m.stateDigest,
        totalBytes: m.totalBytes,
        count: m.count,
        block: b,
        sigs: m.sigs,
        parts: [],
      };
    }
    const a = this.#assembly;
    // Pieces come in order on one link; anything else belongs to no assembly we are building.
    if (
      !a ||
      a.from !== from ||
      a.height !== m.height ||
      a.stateDigest !== m.stateDigest ||
      a.totalBytes !== m.totalBytes ||
      a.parts.length !== m.index
    )
      return undefined;
    a.parts.push(data);
    if (a.parts.length < a.count) return undefined;
    this.#assembly = undefined;
    const whole = Buffer.concat(a.parts);
    invariant(whole.length === a.totalBytes, "assembled snapshot has the announced size");
    if (sha256Hex(stateDigestDomain, whole) !== a.stateDigest)
      return "assembled snapshot does not match its certified digest";
    let state: z.output<typeof assembledState>;
    try {
      const parsed = assembledState.safeParse(JSON.parse(td.decode(whole)));
      if (!parsed.success)
        return `assembled snapshot: ${parsed.error.issues[0]?.path.join(".")}: ${parsed.error.issues[0]?.message}`;
      state = parsed.data;
    } catch (err) {
      return `assembled snapshot is not JSON: ${(err as Error).message}`;
    }
    this.#onSnapshot(from, {
      type: "snapshot",
      block: a.block,
      registry: state.registry,
      sessions: state.sessions,
      stateDigest: a.stateDigest,
      sigs: a.sigs,
    });
    return undefined;
  }

  #onSnapshot(from: ReplicaId, m: SnapshotMsg): void {
    if (m.block.height <= this.#h.committed().height) return; // already there
    const bad = this.checkSnapshot(m);
    if (bad) {
      this.#h.reject(from, bad);
      return;
    }
    const sessions = canonicalSessions(m.sessions);
    this.#h.install({ block: m.block, registry: m.registry, sessions });
    this.#installed += 1;
    this.#h.info(
      `installed snapshot at height ${m.block.height} from replica ${from} (certified by ${m.sigs.map((s) => s.author).join(", ")})`,
    );
    // We hold a proven checkpoint now and can serve it in turn.
    const cp: Checkpoint = {
      height: m.block.height,
      blockId: m.block.id,
      stateDigest: m.stateDigest,
      block: m.block,
      registry: m.registry,
      sessions,
      bytes: stateDigestOf(m.registry, sessions).bytes,
      sigs: new Map(m.sigs.map((s) => [s.author, s.sig])),
    };
    this.#own = cp;
    this.#certified = cp;
  }

  onMessage(
    from: ReplicaId,
    msg: CheckpointMsg | CatchupMsg | SnapshotMsg | SnapshotChunkMsg,
    nowMs: number,
  ): void {
    if (msg.type === "checkpoint") this.#onCheckpoint(from, msg);
    else if (msg.type === "catchup") this.#onCatchup(from, msg);
    else {
      if (msg.type === "snapshot") this.#onSnapshot(from, msg);
      else this.#onSnapshotChunk(from, msg);
      this.#maybeRequest(nowMs);
    }
  }
}
