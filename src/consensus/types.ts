// The data of the protocol: rounds, blocks, quorum and timeout certificates, and the messages
// replicas exchange. Follows Jolteon / DiemBFT v4 (Gelashvili et al., "Jolteon and Ditto", 2021,
// https://arxiv.org/abs/2106.10362) with one change: a round is a (view, k) pair so that one leader
// keeps its view while it makes progress (ORD is the preferred, stable leader) and the leader only
// changes on a timeout certificate.
//
// Every signed statement is bound to the cluster id and a domain label, so a signature from one
// context can never be replayed as another (a vote is never a timeout, a test cluster's vote is
// never a production vote).

import { createHash } from "node:crypto";
import { replicaCount, roundsPerView } from "./constants.ts";
import type { RegistryState } from "./registry.ts";
import type { SessionEntry } from "./storage.ts";

export type ReplicaId = number;
export type Hex = string;

export const regionsInLeaderOrder = ["ORD", "IAD", "SJC", "AMS", "SYD"] as const;
export type CoordinatorRegion = (typeof regionsInLeaderOrder)[number];

export function viewOf(round: number): number {
  return Math.floor(round / roundsPerView);
}
export function kOf(round: number): number {
  return round % roundsPerView;
}
export function roundAt(view: number, k: number): number {
  return view * roundsPerView + k;
}
/** The last round of a view: timing out of a view means never voting in it again. */
export function lastRoundOf(view: number): number {
  return roundAt(view, roundsPerView - 1);
}

/**
 * Leader of a view. Even views belong to ORD, the preferred leader; odd views rotate through the
 * regional coordinators. If ORD fails, every other view change skips past it to a regional leader.
 */
export function leaderOf(view: number): ReplicaId {
  if (view % 2 === 0) return 0;
  return 1 + (((view - 1) / 2) % (replicaCount - 1));
}

/** A client's operation, identified by (clientId, seq) for exactly-once execution. */
export interface ClientRequest {
  readonly clientId: string;
  readonly seq: number;
  readonly op: unknown;
}

export interface Signature {
  readonly author: ReplicaId;
  readonly sig: Uint8Array;
}

export interface QuorumCert {
  readonly blockId: Hex;
  readonly round: number;
  readonly height: number;
  readonly votes: readonly Signature[];
}

export interface TimeoutSig {
  readonly author: ReplicaId;
  readonly highQcRound: number;
  readonly sig: Uint8Array;
}

export interface TimeoutCert {
  readonly view: number;
  readonly timeouts: readonly TimeoutSig[];
}

export interface Block {
  readonly id: Hex;
  readonly parentId: Hex;
  readonly round: number;
  readonly height: number;
  readonly author: ReplicaId;
  /** Leader's clock, ms; never below the parent's. The registry uses it for heartbeat ages. */
  readonly timestampMs: number;
  readonly payload: readonly ClientRequest[];
  /** Certifies the parent: qc.blockId === parentId. */
  readonly qc: QuorumCert;
}

export interface ProposalMsg {
  readonly type: "proposal";
  readonly block: Block;
  /** Present when the block opens a view (k = 0): the certificate that ended the previous view. */
  readonly tc?: TimeoutCert;
  readonly sig: Uint8Array;
}
export interface VoteMsg {
  readonly type: "vote";
  readonly blockId: Hex;
  readonly round: number;
  readonly height: number;
  readonly author: ReplicaId;
  readonly sig: Uint8Array;
}
/**
 * "I hold QC(block) for its round and had not timed out of its view": the third, PBFT-style phase
 * (Commit Moonshot, Doidge et al. 2024, https://arxiv.org/abs/2401.01791). 2f + 1 of them commit
 * the block; the sender's high QC round is durably ≥ `round` before it leaves (replica.ts header).
 */
export interface CommitVoteMsg {
  readonly type: "commit-vote";
  readonly blockId: Hex;
  readonly round: number;
  readonly height: number;
  readonly author: ReplicaId;
  readonly sig: Uint8Array;
}
/**
 * 2f + 1 signed commit votes for one block, handed to a replica whose timeout shows it may have
 * missed the commit (its own commit vote and one more were missing): it checks every signature and
 * commits as if the votes had come one by one.
 */
export interface CommitCertMsg {
  readonly type: "commit-cert";
  readonly blockId: Hex;
  readonly round: number;
  readonly height: number;
  readonly votes: readonly Signature[];
}
export interface TimeoutMsg {
  readonly type: "timeout";
  readonly view: number;
  readonly highQc: QuorumCert;
  readonly lastTc?: TimeoutCert;
  readonly author: ReplicaId;
  readonly sig: Uint8Array;
}
export interface FetchMsg {
  readonly type: "fetch";
  readonly blockId: Hex;
}
export interface BlocksMsg {
  readonly type: "blocks";
  readonly blocks: readonly Block[];
}
/** "Here are my certificates": sent to a replica whose timeout shows it is behind (Diem's SyncInfo). */
export interface SyncMsg {
  readonly type: "sync";
  readonly highQc: QuorumCert;
  readonly tc?: TimeoutCert;
}
export interface RequestMsg {
  readonly type: "request";
  readonly request: ClientRequest;
}
export interface ReplyMsg {
  readonly type: "reply";
  readonly clientId: string;
  readonly seq: number;
  readonly replica: ReplicaId;
  readonly height: number;
  readonly result: unknown;
}

/** A replica's signed statement of its state digest after a checkpoint block (state-sync.ts). */
export interface CheckpointMsg {
  readonly type: "checkpoint";
  readonly height: number;
  readonly blockId: Hex;
  readonly stateDigest: Hex;
  readonly author: ReplicaId;
  readonly sig: Uint8Array;
}
/** "My committed height is this; send me what comes after" (blocks, or a certified snapshot). */
export interface CatchupMsg {
  readonly type: "catchup";
  readonly height: number;
}
/** A checkpoint's state with the f + 1 signatures that certify it. */
export interface SnapshotMsg {
  readonly type: "snapshot";
  readonly block: Block;
  readonly registry: RegistryState;
  readonly sessions: readonly SessionEntry[];
  readonly stateDigest: Hex;
  readonly sigs: readonly Signature[];
}

/**
 * One piece of a certified snapshot too large for one frame (state-sync.ts): the canonical JSON of
 * the state (registry + sessions), cut into `count` pieces of base64 `data`, sent in order; piece 0
 * also carries the checkpoint block and its f + 1 signatures, which bind `stateDigest`.
 */
export interface SnapshotChunkMsg {
  readonly type: "snapshot-chunk";
  readonly height: number;
  readonly stateDigest: Hex;
  readonly totalBytes: number;
  readonly index: number;
  readonly count: number;
  readonly data: string;
  readonly block?: Block;
  readonly sigs?: readonly Signature[];
}

export type ReplicaMsg =
  | ProposalMsg
  | VoteMsg
  | CommitVoteMsg
  | CommitCertMsg
  | TimeoutMsg
  | FetchMsg
  | BlocksMsg
  | SyncMsg
  | CheckpointMsg
  | CatchupMsg
  | SnapshotMsg
  | SnapshotChunkMsg;
export type Message = ReplicaMsg | RequestMsg | ReplyMsg;

// ---- Canonical bytes and digests ---------------------------------------------------------------

/** JSON with sorted object keys: equal values give equal bytes, whatever order a sender used. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") {
    if (typeof value === "number" && !Number.isFinite(value))
      throw new TypeError("non-finite number");
    return JSON.stringify(value) ?? "null";
  }
  if (value instanceof Uint8Array) return JSON.stringify(Buffer.from(value).toString("base64"));
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(",")}}`;
}

export function sha256Hex(...parts: (string | Uint8Array)[]): Hex {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest("hex");
}

const te = new TextEncoder();

/** Block id: hash of everything in the block but the id (the QC's signatures included). */
export function blockIdOf(chainId: string, b: Omit<Block, "id">): Hex {
  return sha256Hex(
    "moe-swarm/block/v1\0",
    chainId,
    "\0",
    canonicalJson({
      parentId: b.parentId,
      round: b.round,
      height: b.height,
      author: b.author,
      timestampMs: b.timestampMs,
      payload: b.payload,
      qc: b.qc,
    }),
  );
}

export function voteDigest(
  chainId: string,
  blockId: Hex,
  round: number,
  height: number,
): Uint8Array {
  return te.encode(`moe-swarm/vote/v1\0${chainId}\0${blockId}\0${round}\0${height}`);
}
/** Same layout as a vote, distinct tag: a vote can never pass as a commit vote or back. */
export function commitVoteDigest(
  chainId: string,
  blockId: Hex,
  round: number,
  height: number,
): Uint8Array {
  return te.encode(`moe-swarm/commit-vote/v1\0${chainId}\0${blockId}\0${round}\0${height}`);
}
export function timeoutDigest(chainId: string, view: number, highQcRound: number): Uint8Array {
  return te.encode(`moe-swarm/timeout/v1\0${chainId}\0${view}\0${highQcRound}`);
}
export function proposalDigest(chainId: string, blockId: Hex): Uint8Array {
  return te.encode(`moe-swarm/proposal/v1\0${chainId}\0${blockId}`);
}

/** The block every chain starts from; its QC is the only certificate without votes. */
export function genesisBlock(chainId: string): Block {
  const qc: QuorumCert = { blockId: "", round: 0, height: 0, votes: [] };
  const base = { parentId: "", round: 0, height: 0, author: 0, timestampMs: 0, payload: [], qc };
  const id = sha256Hex("moe-swarm/genesis/v1\0", chainId);
  return { id, ...base };
}

export function genesisQc(chainId: string): QuorumCert {
  return { blockId: genesisBlock(chainId).id, round: 0, height: 0, votes: [] };
}

export function requestKey(r: ClientRequest): string {
  return `${r.clientId}#${r.seq}`;
}
