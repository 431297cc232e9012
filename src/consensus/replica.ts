// One coordinator replica: a pure, deterministic state machine of the Jolteon / DiemBFT v4
// protocol (HotStuff family, 2-chain commit), https://arxiv.org/abs/2106.10362.
//
// - Rounds are (view, k). A leader proposes one block per round, extending the highest QC; votes go
//   to every replica, so each forms the QC itself. Entering round r needs the QC of round r − 1
//   (same view) or, for k = 0, the timeout certificate (TC) of the previous view.
// - Voting rule (safety): vote for a block in round r only once (r > lastVotedRound) and only if its
//   QC is for round r − 1, or it opens the view with a TC and its QC is at least as high as every
//   high QC reported in the TC. Timing out of a view raises lastVotedRound to the view's last round.
// - Commit rule (2-chain): a QC for block B2 whose parent B1 is in the directly preceding round of
//   the same view commits B1 and all its ancestors.
// - Commit votes (a third, PBFT-style phase: "Commit Moonshot", Doidge et al. 2024,
//   https://arxiv.org/abs/2401.01791): a replica that holds QC(B) for round r, in view v, and has
//   not timed out of v (lastVotedRound < the last round of v) first makes its high QC round ≥ r
//   durable, then broadcasts a signed commit vote for B. 4 = 2f + 1 commit votes for B commit B and
//   its ancestors, ≈ 3 one-way delays after B's proposal instead of the 2-chain's ≥ 4. The 2-chain
//   rule stays as the other path (it commits when commit votes are lost).
//   Safety: let 4 commit votes for B (round r, view v) exist; ≥ 3 come from honest replicas. Claim:
//   every certified block B' with round r' > r extends B. Take the smallest such r' with B' not
//   extending B. (a) r' in view v, or r' > roundAt(view(r'), 0): B' was voted via a QC of round
//   r' − 1 ≥ r; QCs per round are unique (honest replicas vote once per round and two quorums of 4
//   of 5 share an honest replica), so that QC is QC(B) (r' − 1 = r) or certifies a block that
//   extends B (minimality), so B' extends B. (b) B' opens a view w > v with a TC for w − 1 ≥ v, and
//   honest replicas vote for it only if B'.qc.round ≥ every high QC round in the TC. The TC's 4
//   senders and the 4 commit voters share ≥ 3 replicas, ≥ 2 of them honest. Such an honest replica
//   sent its commit vote before timing out of w − 1 ≥ v: timing out of w − 1 raises lastVotedRound
//   to the last round of w − 1 ≥ that of v, after which it never commit-votes in v. So its
//   timeout carries a high QC round ≥ r (persisted, monotone, survives a restart), hence
//   B'.qc.round ≥ r, and B'.qc is QC(B) or certifies a block extending B (minimality): B' extends
//   B. So any block committed by either rule at a height ≥ B's extends B.
//   Commit votes are signed, so 4 of them are a transferable commit certificate: a replica that
//   committed by them answers a timeout from a peer whose high QC is not above that block with
//   the certificate (a peer that timed out before its own commit vote may hold only 3 and, with the
//   cluster idle, would otherwise never see a 2-chain complete).
// - Pacemaker: a replica with work pending (client requests or uncommitted non-empty blocks) that
//   sees no new round within the timeout — or a request waiting several timeouts (a censoring
//   leader) — leaves the view and broadcasts a timeout carrying its highest QC; f + 1 timeouts for
//   a view make others join; 4 form a TC. Timeouts double per consecutive view change.
//
// The replica never reads a clock, a random source or a timer: time arrives as `nowMs` arguments,
// messages through `onMessage`, and effects leave through the injected network and storage. So the
// simulator can replay any schedule from a seed. Every message is checked; a bad one is dropped
// with a logged reason and never throws.

import { invariant } from "../common/assert.ts";
import { SampleRing } from "../common/sample-ring.ts";
import type { Signer, Verifier } from "../crypto/signature.ts";
import { checkQc, checkTc, tcHighQcRound } from "./certificates.ts";
import {
  batchRequestsMax,
  censorshipTimeoutViews,
  clockSkewMsMax,
  fetchBlocksMax,
  futureRoundsMax,
  futureViewsMax,
  leaderTermRoundsMax,
  mempoolRequestsMax,
  parkedProposalsMax,
  pendingCommitVoteSetsMax,
  quorumSize,
  replicaCount,
  retainedCommittedBlocks,
  roundsPerView,
  snapshotEveryBlocks,
  timeoutBackoffExponentMax,
  weakQuorumSize,
} from "./constants.ts";
import { type RegistryResult, RegistryStateMachine, registryOp } from "./registry.ts";
import {
  pruneSessions,
  sessionExpiredError,
  sessionIdleMsMax,
  sessionPruneEveryBlocks,
  sessionsMax,
} from "./sessions.ts";
import { StateSync, type StateSyncStatus, type VerifiedSnapshot } from "./state-sync.ts";
import type { ReplicaStorage, SessionEntry, Snapshot, WalRecord } from "./storage.ts";
import {
  type Block,
  type BlocksMsg,
  blockIdOf,
  type ClientRequest,
  type CommitCertMsg,
  type CommitVoteMsg,
  commitVoteDigest,
  type FetchMsg,
  genesisBlock,
  genesisQc,
  type Hex,
  kOf,
  lastRoundOf,
  leaderOf,
  type ProposalMsg,
  proposalDigest,
  type QuorumCert,
  type ReplicaId,
  type ReplicaMsg,
  type ReplyMsg,
  regionsInLeaderOrder,
  requestKey,
  roundAt,
  type SyncMsg,
  type TimeoutCert,
  type TimeoutMsg,
  type TimeoutSig,
  timeoutDigest,
  type VoteMsg,
  viewOf,
  voteDigest,
} from "./types.ts";

export interface ReplicaNetwork {
  /** Sends to another replica (never to itself). */
  send(to: ReplicaId, msg: ReplicaMsg): void;
  /** Sends a committed result to the client that asked. */
  reply(msg: ReplyMsg): void;
}

export type ReplicaEvent =
  | { kind: "reject"; from: ReplicaId | string; reason: string }
  | { kind: "evidence"; against: ReplicaId; reason: string }
  | { kind: "view-change"; view: number; leader: ReplicaId }
  | { kind: "timeout"; view: number }
  | { kind: "info"; message: string };

export interface ReplicaInit {
  readonly id: ReplicaId;
  readonly chainId: string;
  readonly signer: Signer;
  readonly verifier: Verifier;
  readonly storage: ReplicaStorage;
  readonly network: ReplicaNetwork;
  /** Base of the exponential view timeout (config consensus.view_timeout). */
  readonly viewTimeoutMs: number;
  /** Requests per block (config consensus.max_batch). */
  readonly maxBatch: number;
  readonly nowMs: number;
  /** Committed blocks between snapshots (WAL truncation); default snapshotEveryBlocks. */
  readonly snapshotEveryBlocks?: number;
  /** Committed blocks kept to serve lagging peers; default retainedCommittedBlocks. */
  readonly retainedCommittedBlocks?: number;
  /** Client-session expiry (sessions.ts); defaults sessionIdleMsMax and sessionsMax. */
  readonly sessionIdleMsMax?: number;
  readonly sessionsMax?: number;
  /** Called after a certified snapshot replaced the committed state (the blocks below it skipped). */
  readonly onSnapshotInstalled?: (block: Block) => void;
  /** Send commit votes (third phase); default true. Off leaves only the 2-chain rule (A/B runs). */
  readonly commitVotes?: boolean;
  readonly log?: (event: ReplicaEvent) => void;
  /** Called once per committed block, in height order, after its commit record is durable. */
  readonly onCommit?: (block: Block, results: readonly RegistryResult[]) => void;
}

export interface ReplicaStatus {
  readonly id: ReplicaId;
  readonly region: string;
  readonly view: number;
  readonly round: number;
  readonly leader: ReplicaId;
  readonly leaderRegion: string;
  readonly committedHeight: number;
  readonly committedBlockId: Hex;
  readonly highQcRound: number;
  readonly lastVotedRound: number;
  /** Rounds completed by a QC (swarm_consensus_rounds) and views ended by a TC. */
  readonly roundsTotal: number;
  readonly viewChangesTotal: number;
  readonly blocksCommittedTotal: number;
  readonly requestsCommittedTotal: number;
  readonly mempoolSize: number;
  readonly rejectedTotal: number;
  readonly evidenceTotal: number;
  /** Request arrival → commit at this replica, over the last commitLatencySamplesMax requests. */
  readonly commitLatencyMsP50: number;
  readonly commitLatencyMsP99: number;
  /** Misbehaviour seen, per accused replica, and the latest records (at most evidenceRecordsMax). */
  readonly evidenceByReplica: readonly number[];
  readonly evidence: readonly EvidenceRecord[];
  /** Checkpoints and state transfer (state-sync.ts). */
  readonly stateSync: StateSyncStatus;
  /**
   * Where arrival → commit goes, per committed request at this replica (same samples): waiting for
   * the block that carries it (arrival → the block is proposed here or reaches here), proposal →
   * QC of that block formed here, QC → commit. The three means add up to the arrival → commit mean.
   */
  readonly latencyBreakdownMs: LatencyBreakdown;
  /** Blocks committed by 2f + 1 commit votes, and by the 2-chain rule (the other path). */
  readonly commitsByCommitVotes: number;
  readonly commitsByTwoChain: number;
}

/** One piece of Byzantine evidence as this replica saw it (CometBFT keeps an evidence pool). */
export interface EvidenceRecord {
  readonly against: ReplicaId;
  readonly region: string;
  readonly reason: string;
  readonly view: number;
  readonly atMs: number;
}
/** Evidence records kept in a replica's status (the oldest are dropped; the counts stay). */
export const evidenceRecordsMax = 32;

export interface LatencyPhase {
  readonly p50: number;
  readonly p99: number;
  readonly mean: number;
}
export interface LatencyBreakdown {
  readonly arrivalToProposal: LatencyPhase;
  readonly proposalToQc: LatencyPhase;
  readonly qcToCommit: LatencyPhase;
  readonly proposalToCommit: LatencyPhase;
}

function phaseOf(samples: SampleRing): LatencyPhase {
  const sorted = samples.sorted();
  const pct = (p: number) =>
    sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
  const mean = sorted.length === 0 ? 0 : sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return { p50: pct(0.5), p99: pct(0.99), mean };
}

export const commitLatencySamplesMax = 4096;
const orphanBlocksMax = 4 * fetchBlocksMax;

interface VoteSet {
  readonly round: number;
  readonly height: number;
  readonly sigs: Map<ReplicaId, Uint8Array>;
  certified: boolean;
}

/** A message to a replica or a reply to a client, as the group commit holds it. */
type Outgoing = { to: ReplicaId; msg: ReplicaMsg } | { reply: ReplyMsg };

export class Replica {
  readonly id: ReplicaId;
  readonly #chainId: string;
  readonly #signer: Signer;
  readonly #verifier: Verifier;
  readonly #storage: ReplicaStorage;
  readonly #net: ReplicaNetwork;
  readonly #timeoutBaseMs: number;
  readonly #maxBatch: number;
  readonly #log: (event: ReplicaEvent) => void;
  readonly #onCommit: ReplicaInit["onCommit"];
  readonly #snapshotEvery: number;
  readonly #sendCommitVotes: boolean;
  readonly #retained: number;
  readonly #stateSync: StateSync;
  #prunedAt = 0;

  #now: number;
  // Safety state (persisted before any vote or timeout leaves).
  #lastVotedRound = 0;
  #highQc: QuorumCert;
  // Pacemaker.
  #view = 0;
  #round = 1;
  #lastTc: TimeoutCert | undefined;
  #timedOutView = -1;
  #myTimeout: TimeoutMsg | undefined;
  #roundDeadlineMs: number;
  #viewStartMs: number;
  #consecutiveViewChanges = 0;
  #proposedRound = 0;
  // Block tree.
  readonly #blocks = new Map<Hex, Block>();
  readonly #orphans = new Map<Hex, Block>();
  readonly #committedIds = new Map<number, Hex>();
  #committed: Block;
  #snapshotHeight = 0;
  readonly #parked: { from: ReplicaId; msg: ProposalMsg }[] = [];
  readonly #proposalsByRound = new Map<number, Hex>();
  // Votes and timeouts being collected.
  readonly #votes = new Map<Hex, VoteSet>();
  readonly #voteOf = new Map<string, Hex>();
  readonly #commitVotes = new Map<Hex, VoteSet>();
  readonly #commitVoteOf = new Map<string, Hex>();
  /** Blocks with 2f + 1 commit votes whose chain is not all here yet. */
  readonly #commitReady = new Set<Hex>();
  /** The 2f + 1 commit votes of the latest block committed by them (for peers that missed it). */
  #lastCommitCert: CommitCertMsg | undefined;
  /** Highest round this replica commit-voted in (this life; repeating one after a restart is harmless). */
  #commitVotedRound = 0;
  /** Highest high-QC round known durable in the WAL (a commit vote needs its round there first). */
  #durableHighQcRound = 0;
  readonly #timeouts = new Map<number, Map<ReplicaId, TimeoutSig>>();
  // Requests and execution.
  readonly #mempool = new Map<string, { req: ClientRequest; arrivedMs: number }>();
  readonly #sessions = new Map<string, SessionEntry>();
  readonly #sessionIdleMsMax: number;
  readonly #sessionsMax: number;
  readonly #sm = new RegistryStateMachine();
  readonly #selfQueue: ReplicaMsg[] = [];
  #draining = false;
  #pendingWal: WalRecord[] = [];
  /**
   * Group commit: messages and replies produced while handling one input wait here; at the end of
   * the handler the WAL records it produced are made durable with one append (one fsync) and then
   * they leave, in order. So every message still leaves after the records it depends on are on
   * disk (each flush point below only marks one), but one input costs one fsync, not up to three
   * (commit vote, next proposal and own vote when a QC forms at the leader).
   */
  #outbox: Outgoing[] = [];
  #handlerDepth = 0;
  /** Work handled as a next input once this one's messages left (the leader's own proposal). */
  #afterRelease: (() => void)[] = [];
  // Counters.
  #roundsTotal = 0;
  #viewChangesTotal = 0;
  #blocksCommittedTotal = 0;
  #requestsCommittedTotal = 0;
  #rejectedTotal = 0;
  #evidenceTotal = 0;
  readonly #evidenceByReplica: number[] = new Array(replicaCount).fill(0);
  readonly #evidenceLog: EvidenceRecord[] = [];
  readonly #latencies = new SampleRing(commitLatencySamplesMax);
  // Latency decomposition: when each uncommitted block reached this replica and when its QC did.
  readonly #blockSeenMs = new Map<Hex, number>();
  readonly #qcSeenMs = new Map<Hex, number>();
  readonly #phaseSamples = {
    arrivalToProposal: new SampleRing(commitLatencySamplesMax),
    proposalToQc: new SampleRing(commitLatencySamplesMax),
    qcToCommit: new SampleRing(commitLatencySamplesMax),
    proposalToCommit: new SampleRing(commitLatencySamplesMax),
  };
  #commitsByCommitVotes = 0;
  #commitsByTwoChain = 0;

  constructor(init: ReplicaInit) {
    invariant(
      init.id >= 0 && init.id < replicaCount,
      `replica id ${init.id} in [0, ${replicaCount})`,
    );
    invariant(init.signer.replicaId === init.id, "a replica signs with its own key");
    invariant(init.viewTimeoutMs > 0 && init.maxBatch > 0, "positive timeout and batch");
    this.id = init.id;
    this.#chainId = init.chainId;
    this.#signer = init.signer;
    this.#verifier = init.verifier;
    this.#storage = init.storage;
    this.#net = init.network;
    this.#timeoutBaseMs = init.viewTimeoutMs;
    this.#maxBatch = Math.min(init.maxBatch, batchRequestsMax);
    this.#log = init.log ?? (() => {});
    this.#onCommit = init.onCommit;
    this.#snapshotEvery = init.snapshotEveryBlocks ?? snapshotEveryBlocks;
    this.#sendCommitVotes = init.commitVotes ?? true;
    this.#retained = init.retainedCommittedBlocks ?? retainedCommittedBlocks;
    invariant(this.#retained >= 2, "retain at least 2 committed blocks");
    this.#sessionIdleMsMax = init.sessionIdleMsMax ?? sessionIdleMsMax;
    this.#sessionsMax = init.sessionsMax ?? sessionsMax;
    this.#stateSync = new StateSync({
      host: {
        id: init.id,
        chainId: init.chainId,
        signer: init.signer,
        verifier: init.verifier,
        send: (to, msg) => this.#send(to, msg),
        committed: () => this.#committed,
        committedBlock: (height) => {
          const id = this.#committedIds.get(height);
          return id === undefined ? undefined : this.#blocks.get(id);
        },
        state: () => ({ registry: this.#sm.snapshot(), sessions: [...this.#sessions.values()] }),
        install: (s) => {
          this.#installSnapshot(s);
          init.onSnapshotInstalled?.(s.block);
        },
        commitCertified: (height, blockId) => {
          const b = this.#blocks.get(blockId);
          if (!b || b.height !== height || !this.#extendsCommitted(b)) return false;
          this.#commitChain(b, true);
          return true;
        },
        reject: (from, reason) => this.#reject(from, reason),
        evidence: (against, reason) => this.#evidence(against, reason),
        info: (message) => this.#log({ kind: "info", message }),
      },
      everyBlocks: this.#snapshotEvery,
      lagBlocks: Math.max(1, Math.min(fetchBlocksMax, Math.floor(this.#retained / 2))),
      retryMs: init.viewTimeoutMs,
    });
    this.#now = init.nowMs;
    this.#roundDeadlineMs = init.nowMs + init.viewTimeoutMs;
    this.#viewStartMs = init.nowMs;
    const genesis = genesisBlock(init.chainId);
    this.#committed = genesis;
    this.#highQc = genesisQc(init.chainId);
    this.#blocks.set(genesis.id, genesis);
    this.#committedIds.set(0, genesis.id);
    this.#recover();
  }

  // ---- Recovery ---------------------------------------------------------------------------------

  #recover(): void {
    const { snapshot, records } = this.#storage.load();
    if (snapshot) {
      this.#blocks.clear();
      this.#committedIds.clear();
      this.#committed = snapshot.block;
      this.#blocks.set(snapshot.block.id, snapshot.block);
      this.#committedIds.set(snapshot.block.height, snapshot.block.id);
      this.#snapshotHeight = snapshot.block.height;
      this.#sm.restore(snapshot.registry);
      for (const s of snapshot.sessions) this.#sessions.set(s.clientId, s);
      this.#lastVotedRound = snapshot.lastVotedRound;
      this.#highQc = snapshot.highQc;
    }
    let commitTarget: Hex | undefined;
    let commitHeight = this.#committed.height;
    for (const r of records) {
      if (r.kind === "block") {
        if (r.block.height > this.#committed.height) this.#blocks.set(r.block.id, r.block);
        if (r.block.author === this.id)
          this.#proposedRound = Math.max(this.#proposedRound, r.block.round);
      } else if (r.kind === "safety") {
        this.#lastVotedRound = Math.max(this.#lastVotedRound, r.lastVotedRound);
        if (r.highQc.round > this.#highQc.round) this.#highQc = r.highQc;
      } else if (r.height > commitHeight) {
        commitHeight = r.height;
        commitTarget = r.blockId;
      }
    }
    if (commitTarget !== undefined) {
      const target = this.#blocks.get(commitTarget);
      invariant(target, `recovered commit record names block ${commitTarget} that the WAL holds`);
      this.#commitChain(target, false);
    }
    this.#durableHighQcRound = this.#highQc.round; // recovered from the WAL, so durable
    const resumeRound = Math.max(this.#highQc.round + 1, this.#lastVotedRound);
    this.#view = viewOf(resumeRound);
    this.#round = Math.max(this.#highQc.round + 1, roundAt(this.#view, 0));
    if (this.#lastVotedRound === lastRoundOf(this.#view)) this.#timedOutView = this.#view;
    if (records.length > 0 || snapshot)
      this.#log({
        kind: "info",
        message: `recovered at height ${this.#committed.height}, view ${this.#view}, last voted round ${this.#lastVotedRound}`,
      });
  }

  // ---- Entry points -----------------------------------------------------------------------------

  onMessage(from: ReplicaId, msg: ReplicaMsg, nowMs: number): void {
    this.#handle(() => {
      this.#now = Math.max(this.#now, nowMs);
      this.#dispatch(from, msg);
      this.#drain();
    });
  }

  /** A client's request (from the client edge, not yet validated). */
  submit(req: ClientRequest, nowMs: number): void {
    this.#handle(() => {
      this.#now = Math.max(this.#now, nowMs);
      this.#onRequest(req);
      this.#drain();
    });
  }

  tick(nowMs: number): void {
    this.#handle(() => this.#tick(nowMs));
  }

  /** Runs one input's handling, then one WAL append and the messages it produced (group commit). */
  #handle(work: () => void): void {
    this.#handlerDepth += 1;
    try {
      work();
    } catch (err) {
      this.#outbox = []; // a broken invariant: nothing it produced may leave
      this.#afterRelease = [];
      throw err;
    } finally {
      this.#handlerDepth -= 1;
    }
    if (this.#handlerDepth > 0) return;
    this.#flushWalNow();
    const out = this.#outbox;
    this.#outbox = [];
    for (const o of out) this.#deliver(o);
    const next = this.#afterRelease;
    this.#afterRelease = [];
    if (next.length > 0)
      this.#handle(() => {
        for (const work of next) work();
        this.#drain();
      });
  }

  #send(to: ReplicaId, msg: ReplicaMsg): void {
    this.#emit({ to, msg });
  }

  /** Inside a handler a message waits for the group commit; outside, the WAL is flushed first. */
  #emit(o: Outgoing): void {
    if (this.#handlerDepth > 0) this.#outbox.push(o);
    else {
      this.#flushWalNow();
      this.#deliver(o);
    }
  }

  #deliver(o: Outgoing): void {
    if ("reply" in o) this.#net.reply(o.reply);
    else this.#net.send(o.to, o.msg);
  }

  #tick(nowMs: number): void {
    this.#now = Math.max(this.#now, nowMs);
    const timeout = this.#currentTimeoutMs();
    if (this.#now >= this.#roundDeadlineMs) {
      if (this.#timedOutView >= this.#view && this.#myTimeout) {
        this.#broadcast(this.#myTimeout); // retransmit until a TC forms
        this.#roundDeadlineMs = this.#now + timeout;
      } else if (this.#hasWork()) {
        this.#localTimeout(this.#view);
      } else {
        this.#roundDeadlineMs = this.#now + timeout;
      }
    } else if (this.#timedOutView < this.#view && this.#censorshipDeadlineMs() <= this.#now) {
      this.#localTimeout(this.#view);
    }
    this.#stateSync.onTick(this.#now);
    this.#drain();
  }

  /** When the driver should call `tick` next. */
  nextDeadlineMs(): number {
    if (this.#timedOutView >= this.#view) return this.#roundDeadlineMs;
    return Math.min(this.#roundDeadlineMs, this.#censorshipDeadlineMs());
  }

  status(): ReplicaStatus {
    const arrivalToCommit = phaseOf(this.#latencies);
    const leader = leaderOf(this.#view);
    return {
      id: this.id,
      region: regionsInLeaderOrder[this.id] ?? String(this.id),
      view: this.#view,
      round: this.#round,
      leader,
      leaderRegion: regionsInLeaderOrder[leader] ?? String(leader),
      committedHeight: this.#committed.height,
      committedBlockId: this.#committed.id,
      highQcRound: this.#highQc.round,
      lastVotedRound: this.#lastVotedRound,
      roundsTotal: this.#roundsTotal,
      viewChangesTotal: this.#viewChangesTotal,
      blocksCommittedTotal: this.#blocksCommittedTotal,
      requestsCommittedTotal: this.#requestsCommittedTotal,
      mempoolSize: this.#mempool.size,
      rejectedTotal: this.#rejectedTotal,
      evidenceTotal: this.#evidenceTotal,
      commitLatencyMsP50: arrivalToCommit.p50,
      commitLatencyMsP99: arrivalToCommit.p99,
      latencyBreakdownMs: {
        arrivalToProposal: phaseOf(this.#phaseSamples.arrivalToProposal),
        proposalToQc: phaseOf(this.#phaseSamples.proposalToQc),
        qcToCommit: phaseOf(this.#phaseSamples.qcToCommit),
        proposalToCommit: phaseOf(this.#phaseSamples.proposalToCommit),
      },
      commitsByCommitVotes: this.#commitsByCommitVotes,
      commitsByTwoChain: this.#commitsByTwoChain,
      evidenceByReplica: [...this.#evidenceByReplica],
      evidence: [...this.#evidenceLog],
      stateSync: this.#stateSync.status(),
    };
  }

  /** The committed block at `height`, if still retained (for checkers and state reads). */
  committedBlockAt(height: number): Hex | undefined {
    return this.#committedIds.get(height);
  }

  /** Read-only view of the registry at the committed height (not linearizable on its own). */
  registrySnapshot() {
    return this.#sm.snapshot();
  }

  // ---- Dispatch ---------------------------------------------------------------------------------

  #dispatch(from: ReplicaId, msg: ReplicaMsg): void {
    switch (msg.type) {
      case "proposal": {
        this.#onProposal(from, msg);
        return;
      }
      case "vote": {
        this.#onVote(from, msg);
        return;
      }
      case "timeout": {
        this.#onTimeout(from, msg);
        return;
      }
      case "fetch": {
        this.#onFetch(from, msg);
        return;
      }
      case "blocks": {
        this.#onBlocks(from, msg);
        return;
      }
      case "commit-vote": {
        this.#onCommitVote(from, msg);
        return;
      }
      case "commit-cert": {
        this.#onCommitCert(from, msg);
        return;
      }
      case "sync": {
        this.#onSync(from, msg);
        return;
      }
      case "checkpoint":
      case "catchup":
      case "snapshot":
      case "snapshot-chunk": {
        this.#stateSync.onMessage(from, msg, this.#now);
        return;
      }
    }
  }

  #drain(): void {
    if (this.#draining) return;
    this.#draining = true;
    try {
      for (let msg = this.#selfQueue.shift(); msg; msg = this.#selfQueue.shift())
        this.#dispatch(this.id, msg);
    } finally {
      this.#draining = false;
    }
  }

  #reject(from: ReplicaId | string, reason: string): void {
    this.#rejectedTotal += 1;
    this.#log({ kind: "reject", from, reason });
  }

  #evidence(against: ReplicaId, reason: string): void {
    this.#evidenceTotal += 1;
    this.#evidenceByReplica[against] = (this.#evidenceByReplica[against] ?? 0) + 1;
    if (this.#evidenceLog.length >= evidenceRecordsMax) this.#evidenceLog.shift();
    this.#evidenceLog.push({
      against,
      region: regionsInLeaderOrder[against] ?? String(against),
      reason,
      view: this.#view,
      atMs: this.#now,
    });
    this.#log({ kind: "evidence", against, reason });
  }

  #broadcast(msg: ReplicaMsg): void {
    for (let to = 0; to < replicaCount; to++) if (to !== this.id) this.#send(to, msg);
  }

  /**
   * A point after which what was recorded must be durable before anything that follows leaves:
   * inside a handler, the group commit at its end does it (messages wait in the outbox).
   */
  #flushWal(): void {
    if (this.#handlerDepth > 0) return;
    this.#flushWalNow();
  }

  #flushWalNow(): void {
    if (this.#pendingWal.length === 0) return;
    const records = this.#pendingWal;
    this.#pendingWal = [];
    this.#storage.append(records);
    for (const r of records)
      if (r.kind === "safety" && r.highQc.round > this.#durableHighQcRound)
        this.#durableHighQcRound = r.highQc.round;
  }

  // ---- Requests ---------------------------------------------------------------------------------

  #onRequest(req: ClientRequest): void {
    if (
      typeof req?.clientId !== "string" ||
      req.clientId.length === 0 ||
      req.clientId.length > 64 ||
      !Number.isSafeInteger(req.seq) ||
      req.seq < 1
    ) {
      this.#reject("client", "request without a valid clientId and seq");
      return;
    }
    const parsed = registryOp.safeParse(req.op);
    if (!parsed.success) {
      this.#reject(req.clientId, `invalid operation: ${parsed.error.issues[0]?.message}`);
      return;
    }
    const session = this.#sessions.get(req.clientId);
    if (session && session.seq >= req.seq) {
      if (session.seq === req.seq) this.#sendReply(session, this.#committed.height);
      return;
    }
    const key = requestKey(req);
    if (this.#mempool.has(key)) return;
    if (this.#mempool.size >= mempoolRequestsMax) {
      this.#reject(req.clientId, `mempool full (${mempoolRequestsMax} requests)`);
      return;
    }
    // The pacemaker times progress while there is work, not idle time: a request that ends an idle
    // spell restarts the round timer, or the first request after a quiet second would find the
    // timer nearly run out and change view under a leader that is doing its job.
    const wasIdle = !this.#hasWork();
    this.#mempool.set(key, {
      req: { clientId: req.clientId, seq: req.seq, op: parsed.data },
      arrivedMs: this.#now,
    });
    if (wasIdle && this.#timedOutView < this.#view)
      this.#roundDeadlineMs = Math.max(this.#roundDeadlineMs, this.#now + this.#currentTimeoutMs());
    this.#tryPropose();
  }

  #sendReply(s: SessionEntry, height: number): void {
    const reply: ReplyMsg = {
      type: "reply",
      clientId: s.clientId,
      seq: s.seq,
      replica: this.id,
      height,
      result: s.result,
    };
    this.#emit({ reply });
  }

  // ---- Proposals and votes ----------------------------------------------------------------------

  #checkBlockShape(b: Block): string | undefined {
    if (blockIdOf(this.#chainId, b) !== b.id) return "block id does not match its contents";
    if (b.parentId !== b.qc.blockId) return "block does not extend the block its QC certifies";
    if (b.height !== b.qc.height + 1) return `block height ${b.height} is not its QC's height + 1`;
    if (b.round <= b.qc.round)
      return `block round ${b.round} is not above its QC's round ${b.qc.round}`;
    if (kOf(b.round) >= roundsPerView - 2) return "block round at the end of a view";
    if (b.payload.length > this.#maxBatch)
      return `block carries ${b.payload.length} requests > ${this.#maxBatch}`;
    return checkQc(b.qc, this.#chainId, this.#verifier);
  }

  #onProposal(from: ReplicaId, p: ProposalMsg): void {
    const b = p.block;
    const view = viewOf(b.round);
    if (from !== b.author) {
      this.#reject(from, `proposal by ${b.author} relayed by ${from}`);
      return;
    }
    if (b.author !== leaderOf(view)) {
      this.#reject(from, `proposal for view ${view} from non-leader ${b.author}`);
      return;
    }
    if (view > this.#view + futureViewsMax) {
      this.#reject(from, `proposal for future view ${view}`);
      return;
    }
    if (b.round < this.#round && b.round <= this.#lastVotedRound && from !== this.id) {
      // Old proposal (retransmitted, replayed or late): only useful if it fills a gap in our tree.
      if (this.#blocks.has(b.id)) return;
    }
    if (
      from !== this.id &&
      !this.#verifier.verify(b.author, proposalDigest(this.#chainId, b.id), p.sig)
    ) {
      this.#reject(from, `proposal ${b.id.slice(0, 8)} has an invalid signature`);
      return;
    }
    const bad = this.#checkBlockShape(b);
    if (bad) {
      this.#reject(from, `proposal: ${bad}`);
      return;
    }
    if (p.tc) {
      const badTc = checkTc(p.tc, this.#chainId, this.#verifier);
      if (badTc) {
        this.#reject(from, `proposal: ${badTc}`);
        return;
      }
    }
    const seen = this.#proposalsByRound.get(b.round);
    if (seen !== undefined && seen !== b.id) {
      this.#evidence(
        b.author,
        `equivocation: two proposals in round ${b.round} (${seen.slice(0, 8)}, ${b.id.slice(0, 8)})`,
      );
      return;
    }
    this.#processQc(b.qc, from);
    if (p.tc) this.#processTc(p.tc);
    if (!this.#blocks.has(b.parentId)) {
      if (b.qc.height <= this.#committed.height) {
        this.#reject(
          from,
          `proposal extends ${b.parentId.slice(0, 8)}, not on the committed chain`,
        );
        return;
      }
      this.#park(from, p);
      return;
    }
    const parent = this.#blocks.get(b.parentId) as Block;
    if (b.timestampMs > this.#now + clockSkewMsMax) {
      this.#reject(
        from,
        `proposal timestamp ${b.timestampMs - this.#now} ms ahead of this replica's clock`,
      );
      return;
    }
    if (b.timestampMs < parent.timestampMs) {
      this.#reject(from, "proposal timestamp below its parent's");
      return;
    }
    if (!this.#extendsCommitted(parent)) {
      this.#reject(from, `proposal does not extend committed block ${this.#committed.height}`);
      return;
    }
    this.#proposalsByRound.set(b.round, b.id);
    this.#insertBlock(b);

    // Voting rule (Jolteon): once per round, only in the round we are in, with a QC of the previous
    // round or a TC whose high QCs this block's QC covers.
    const r = b.round;
    const viaQc = kOf(r) >= 1 && b.qc.round === r - 1;
    const viaTc =
      kOf(r) === 0 &&
      p.tc !== undefined &&
      p.tc.view + 1 === view &&
      b.qc.round >= tcHighQcRound(p.tc);
    if (r === this.#round && r > this.#lastVotedRound && (viaQc || viaTc)) {
      this.#lastVotedRound = r;
      this.#pendingWal.push({ kind: "safety", lastVotedRound: r, highQc: this.#highQc });
      this.#flushWal(); // the block and the vote's round are on disk before the vote leaves
      const sig = this.#signer.sign(voteDigest(this.#chainId, b.id, b.round, b.height));
      const vote: VoteMsg = {
        type: "vote",
        blockId: b.id,
        round: b.round,
        height: b.height,
        author: this.id,
        sig,
      };
      this.#broadcast(vote);
      this.#selfQueue.push(vote);
    } else {
      this.#flushWal();
    }
    this.#retryParked();
    // The new block may complete a 2-chain whose QC (from votes) arrived before the block did.
    this.#tryCommit(this.#highQc);
    this.#retryCommitVotes();
  }

  #extendsCommitted(parent: Block): boolean {
    let b: Block | undefined = parent;
    while (b && b.height > this.#committed.height) b = this.#blocks.get(b.parentId);
    return b !== undefined && b.id === this.#committed.id;
  }

  #insertBlock(b: Block): void {
    if (this.#blocks.has(b.id)) return;
    // A certified block and a different signed proposal in one round: the leader equivocated.
    const seen = this.#proposalsByRound.get(b.round);
    if (seen !== undefined && seen !== b.id)
      this.#evidence(
        b.author,
        `equivocation: blocks ${seen.slice(0, 8)} and ${b.id.slice(0, 8)} in round ${b.round}`,
      );
    else this.#proposalsByRound.set(b.round, b.id);
    this.#blocks.set(b.id, b);
    if (b.height > this.#committed.height) this.#blockSeenMs.set(b.id, this.#now);
    this.#pendingWal.push({ kind: "block", block: b });
  }

  #park(from: ReplicaId, p: ProposalMsg): void {
    if (this.#parked.length >= parkedProposalsMax) this.#parked.shift();
    this.#parked.push({ from, msg: p });
    this.#send(from, { type: "fetch", blockId: p.block.parentId });
  }

  #retryParked(): void {
    const ready = this.#parked.filter((x) => this.#blocks.has(x.msg.block.parentId));
    if (ready.length === 0) return;
    for (const x of ready) this.#parked.splice(this.#parked.indexOf(x), 1);
    for (const x of ready) this.#onProposal(x.from, x.msg);
  }

  #onVote(from: ReplicaId, v: VoteMsg): void {
    if (from !== v.author) {
      this.#reject(from, `vote by ${v.author} relayed by ${from}`);
      return;
    }
    if (v.round <= this.#highQc.round && this.#votes.get(v.blockId)?.certified !== false) {
      return; // stale: that round is already certified or passed
    }
    if (v.round > this.#round + futureRoundsMax || viewOf(v.round) > this.#view + futureViewsMax) {
      this.#reject(from, `vote for future round ${v.round}`);
      return;
    }
    if (!Number.isSafeInteger(v.height) || v.height <= this.#committed.height) return; // late
    if (
      from !== this.id &&
      !this.#verifier.verify(
        v.author,
        voteDigest(this.#chainId, v.blockId, v.round, v.height),
        v.sig,
      )
    ) {
      this.#reject(from, `vote for round ${v.round} has an invalid signature`);
      return;
    }
    const key = `${v.author}:${v.round}`;
    const prior = this.#voteOf.get(key);
    if (prior !== undefined && prior !== v.blockId) {
      this.#evidence(
        v.author,
        `conflicting votes in round ${v.round} (${prior.slice(0, 8)}, ${v.blockId.slice(0, 8)})`,
      );
      return;
    }
    this.#voteOf.set(key, v.blockId);
    const ours = this.#proposalsByRound.get(v.round);
    if (
      ours !== undefined &&
      ours !== v.blockId &&
      !this.#votes.has(v.blockId) &&
      !this.#blocks.has(v.blockId)
    )
      this.#send(from, { type: "fetch", blockId: v.blockId }); // another block in our round: look
    let set = this.#votes.get(v.blockId);
    if (!set) {
      set = { round: v.round, height: v.height, sigs: new Map(), certified: false };
      this.#votes.set(v.blockId, set);
    }
    if (set.round !== v.round || set.height !== v.height) {
      this.#evidence(
        v.author,
        `vote for ${v.blockId.slice(0, 8)} with a different round or height`,
      );
      return;
    }
    set.sigs.set(v.author, v.sig);
    if (!set.certified && set.sigs.size >= quorumSize) {
      set.certified = true;
      const votes = [...set.sigs.entries()]
        .sort((a, b) => a[0] - b[0])
        .slice(0, quorumSize)
        .map(([author, sig]) => ({ author, sig }));
      this.#processQc({ blockId: v.blockId, round: v.round, height: v.height, votes }, from);
    }
  }

  /** Takes in a verified QC: raises the high QC, commits by the 2-chain rule, enters the next round. */
  #processQc(qc: QuorumCert, from: ReplicaId): void {
    if (qc.votes.length > 0) this.#stateSync.onCertified(qc.height, from, this.#now);
    if (qc.round > this.#highQc.round) this.#highQc = qc;
    if (qc.height > this.#committed.height && !this.#qcSeenMs.has(qc.blockId))
      this.#qcSeenMs.set(qc.blockId, this.#now);
    if (qc.votes.length > 0 && !this.#blocks.has(qc.blockId) && qc.height > this.#committed.height)
      this.#send(from === this.id ? leaderOf(viewOf(qc.round)) : from, {
        type: "fetch",
        blockId: qc.blockId,
      });
    this.#tryCommit(qc);
    this.#maybeCommitVote(qc);
    if (qc.round >= this.#round && viewOf(qc.round) >= this.#view) {
      this.#roundsTotal += 1;
      this.#enterRound(qc.round + 1);
    }
  }

  /** Third phase: see the header for why holding QC(B) without having timed out of B's view suffices. */
  #maybeCommitVote(qc: QuorumCert): void {
    if (!this.#sendCommitVotes || qc.votes.length === 0 || qc.round <= this.#commitVotedRound)
      return;
    if (qc.height <= this.#committed.height) return; // committed already: nothing to speed up
    if (this.#lastVotedRound >= lastRoundOf(viewOf(qc.round))) return; // timed out of its view
    this.#commitVotedRound = qc.round;
    if (this.#durableHighQcRound < qc.round) {
      this.#pendingWal.push({
        kind: "safety",
        lastVotedRound: this.#lastVotedRound,
        highQc: this.#highQc,
      });
      this.#flushWal(); // the high QC round ≥ r is durable before the commit vote leaves
    }
    const cv: CommitVoteMsg = {
      type: "commit-vote",
      blockId: qc.blockId,
      round: qc.round,
      height: qc.height,
      author: this.id,
      sig: this.#signer.sign(commitVoteDigest(this.#chainId, qc.blockId, qc.round, qc.height)),
    };
    this.#broadcast(cv);
    this.#selfQueue.push(cv);
  }

  #onCommitVote(from: ReplicaId, v: CommitVoteMsg): void {
    if (from !== v.author) {
      this.#reject(from, `commit vote by ${v.author} relayed by ${from}`);
      return;
    }
    if (v.height <= this.#committed.height) return; // late: committed already (checked before any work)
    // A replica a view behind still counts commit votes of the view the others are in (it commits
    // by them); far-future views and rounds are refused.
    const vView = viewOf(v.round);
    if (
      vView > this.#view + futureViewsMax ||
      (vView <= this.#view && v.round > this.#round + futureRoundsMax)
    ) {
      this.#reject(from, `commit vote for future round ${v.round}`);
      return;
    }
    const known = this.#commitVotes.get(v.blockId);
    if (known?.sigs.has(v.author)) return; // duplicate or replay
    if (!known && this.#commitVotes.size >= pendingCommitVoteSetsMax) {
      this.#reject(from, `commit votes pending for ${pendingCommitVoteSetsMax} blocks already`);
      return;
    }
    if (
      from !== this.id &&
      !this.#verifier.verify(
        v.author,
        commitVoteDigest(this.#chainId, v.blockId, v.round, v.height),
        v.sig,
      )
    ) {
      this.#reject(from, `commit vote for round ${v.round} has an invalid signature`);
      return;
    }
    const key = `${v.author}:${v.round}`;
    const prior = this.#commitVoteOf.get(key);
    if (prior !== undefined && prior !== v.blockId) {
      this.#evidence(
        v.author,
        `conflicting commit votes in round ${v.round} (${prior.slice(0, 8)}, ${v.blockId.slice(0, 8)})`,
      );
      return;
    }
    let set = this.#commitVotes.get(v.blockId);
    if (!set) {
      set = { round: v.round, height: v.height, sigs: new Map(), certified: false };
      this.#commitVotes.set(v.blockId, set);
    }
    if (set.round !== v.round || set.height !== v.height) {
      this.#evidence(
        v.author,
        `commit vote for ${v.blockId.slice(0, 8)} with a different round or height`,
      );
      return;
    }
    this.#commitVoteOf.set(key, v.blockId);
    set.sigs.set(v.author, v.sig);
    // The 4th commit vote asks its sender once for a missing block; later ones only retry.
    if (set.sigs.size >= quorumSize)
      this.#tryCommitByVotes(v.blockId, set.sigs.size === quorumSize ? from : undefined);
  }

  /** Commits a block that 2f + 1 replicas commit-voted for, once it and its ancestors are here. */
  #tryCommitByVotes(blockId: Hex, fetchFrom: ReplicaId | undefined): void {
    const set = this.#commitVotes.get(blockId);
    this.#commitReady.delete(blockId);
    if (!set || set.certified || set.sigs.size < quorumSize) return;
    if (set.height <= this.#committed.height) return;
    let b = this.#blocks.get(blockId);
    let missing = b ? undefined : blockId;
    while (b && b.height > this.#committed.height + 1) {
      const parent = this.#blocks.get(b.parentId);
      if (!parent) missing = b.parentId;
      b = parent;
    }
    if (missing !== undefined) {
      // Waits for the blocks (fetched here once, or arriving by proposals, fetches or state sync).
      this.#commitReady.add(blockId);
      if (fetchFrom !== undefined)
        this.#send(fetchFrom === this.id ? leaderOf(viewOf(set.round)) : fetchFrom, {
          type: "fetch",
          blockId: missing,
        });
      return;
    }
    set.certified = true;
    this.#commitsByCommitVotes += 1;
    const votes = [...set.sigs.entries()]
      .sort((a, b) => a[0] - b[0])
      .slice(0, quorumSize)
      .map(([author, sig]) => ({ author, sig }));
    this.#lastCommitCert = {
      type: "commit-cert",
      blockId,
      round: set.round,
      height: set.height,
      votes,
    };
    this.#commitChain(this.#blocks.get(blockId) as Block, true);
  }

  #onCommitCert(from: ReplicaId, m: CommitCertMsg): void {
    if (m.height <= this.#committed.height) return; // nothing new (checked before any work)
    const mView = viewOf(m.round);
    if (
      mView > this.#view + futureViewsMax ||
      (mView <= this.#view && m.round > this.#round + futureRoundsMax)
    ) {
      this.#reject(from, `commit certificate for future round ${m.round}`);
      return;
    }
    if (m.votes.length < quorumSize) {
      this.#reject(from, `commit certificate with ${m.votes.length} votes < quorum ${quorumSize}`);
      return;
    }
    const digest = commitVoteDigest(this.#chainId, m.blockId, m.round, m.height);
    const authors = new Set<ReplicaId>();
    for (const v of m.votes) {
      if (authors.has(v.author)) {
        this.#reject(from, `commit certificate counts replica ${v.author} twice`);
        return;
      }
      authors.add(v.author);
      if (!this.#verifier.verify(v.author, digest, v.sig)) {
        this.#reject(
          from,
          `commit certificate vote of replica ${v.author} has an invalid signature`,
        );
        return;
      }
    }
    let set = this.#commitVotes.get(m.blockId);
    if (!set) {
      if (this.#commitVotes.size >= pendingCommitVoteSetsMax) {
        this.#reject(from, `commit votes pending for ${pendingCommitVoteSetsMax} blocks already`);
        return;
      }
      set = { round: m.round, height: m.height, sigs: new Map(), certified: false };
      this.#commitVotes.set(m.blockId, set);
    }
    if (set.round !== m.round || set.height !== m.height) {
      this.#reject(
        from,
        `commit certificate for ${m.blockId.slice(0, 8)} with another round or height`,
      );
      return;
    }
    for (const v of m.votes) {
      set.sigs.set(v.author, v.sig);
      this.#commitVoteOf.set(`${v.author}:${m.round}`, m.blockId);
    }
    this.#tryCommitByVotes(m.blockId, from);
  }

  /** After blocks arrive: commit-vote quorums that waited for them. */
  #retryCommitVotes(): void {
    if (this.#commitReady.size === 0) return;
    const ready = [...this.#commitReady].sort(
      (a, b) => (this.#commitVotes.get(b)?.height ?? 0) - (this.#commitVotes.get(a)?.height ?? 0),
    );
    for (const id of ready) this.#tryCommitByVotes(id, undefined); // highest first: commits the rest
  }

  #tryCommit(qc: QuorumCert): void {
    const b2 = this.#blocks.get(qc.blockId);
    if (!b2) return;
    const b1 = this.#blocks.get(b2.qc.blockId);
    if (!b1 || b1.height <= this.#committed.height) return;
    if (viewOf(b1.round) === viewOf(b2.round) && b2.round === b1.round + 1) {
      this.#commitsByTwoChain += 1;
      this.#commitChain(b1, true);
    }
  }

  #commitChain(target: Block, live: boolean): void {
    const chain: Block[] = [];
    let b: Block | undefined = target;
    while (b && b.height > this.#committed.height) {
      chain.push(b);
      b = this.#blocks.get(b.parentId);
    }
    // Safety: a committed block always extends the previous one. If it did not, two quorums would
    // have certified conflicting blocks — the protocol's core guarantee is broken; stop.
    invariant(
      b && b.id === this.#committed.id,
      () => `commit of ${target.id} does not extend committed ${this.#committed.id}`,
    );
    chain.reverse();
    const replies: SessionEntry[] = [];
    const perBlock: RegistryResult[][] = [];
    for (const block of chain) {
      const results: RegistryResult[] = [];
      for (const req of block.payload) {
        const key = requestKey(req);
        const prev = this.#sessions.get(req.clientId);
        if (prev && prev.seq >= req.seq) {
          results.push(
            prev.seq === req.seq ? prev.result : { ok: false, error: "duplicate request" },
          );
          this.#mempool.delete(key);
          continue;
        }
        if (!prev && req.seq > 1) {
          // No session (expired, or never had one): it may have run before, so it does not run now.
          const expired: SessionEntry = {
            clientId: req.clientId,
            seq: req.seq,
            result: { ok: false, error: sessionExpiredError },
          };
          results.push(expired.result);
          this.#mempool.delete(key);
          replies.push(expired);
          continue;
        }
        const result = this.#sm.apply(req.op, block.timestampMs);
        const entry = { clientId: req.clientId, seq: req.seq, result, atMs: block.timestampMs };
        this.#sessions.set(req.clientId, entry);
        results.push(result);
        const waiting = this.#mempool.get(key);
        if (waiting) {
          this.#mempool.delete(key);
          if (live) this.#recordLatency(this.#now - waiting.arrivedMs, block.id);
        }
        replies.push(entry);
        this.#requestsCommittedTotal += live ? 1 : 0;
      }
      if (block.height % sessionPruneEveryBlocks === 0)
        pruneSessions(this.#sessions, block.timestampMs, this.#sessionIdleMsMax, this.#sessionsMax);
      this.#committed = block;
      this.#committedIds.set(block.height, block.id);
      this.#stateSync.onCommitted(block, live);
      this.#blockSeenMs.delete(block.id);
      this.#qcSeenMs.delete(block.id);
      perBlock.push(results);
      if (live) this.#blocksCommittedTotal += 1;
    }
    if (!live) return;
    this.#consecutiveViewChanges = 0;
    this.#pendingWal.push({
      kind: "commit",
      height: this.#committed.height,
      blockId: this.#committed.id,
    });
    this.#flushWal(); // durable before any client hears of it
    chain.forEach((block, i) => {
      this.#onCommit?.(block, perBlock[i] ?? []);
    });
    for (const r of replies) this.#sendReply(r, this.#committed.height);
    if (this.#committed.height - this.#snapshotHeight >= this.#snapshotEvery) this.#takeSnapshot();
    if (this.#committed.height - this.#prunedAt >= Math.min(64, this.#retained)) this.#prune();
  }

  #recordLatency(ms: number, blockId: Hex): void {
    this.#latencies.push(ms);
    const seen = this.#blockSeenMs.get(blockId);
    const qcAt = this.#qcSeenMs.get(blockId);
    if (seen === undefined || qcAt === undefined) return;
    const arrived = this.#now - ms;
    const s = this.#phaseSamples;
    // A request can arrive here after its block did (the leader's batch beat the client's copy).
    const proposed = Math.max(seen, arrived);
    s.arrivalToProposal.push(proposed - arrived);
    s.proposalToQc.push(Math.max(qcAt, proposed) - proposed);
    s.qcToCommit.push(this.#now - Math.max(qcAt, proposed));
    s.proposalToCommit.push(this.#now - proposed);
  }

  #takeSnapshot(): void {
    const keep: WalRecord[] = [];
    for (const b of this.#blocks.values())
      if (b.height > this.#committed.height) keep.push({ kind: "block", block: b });
    keep.sort((a, b) =>
      a.kind === "block" && b.kind === "block" ? a.block.height - b.block.height : 0,
    );
    keep.push({ kind: "safety", lastVotedRound: this.#lastVotedRound, highQc: this.#highQc });
    const snapshot: Snapshot = {
      block: this.#committed,
      registry: this.#sm.snapshot(),
      sessions: [...this.#sessions.values()],
      lastVotedRound: this.#lastVotedRound,
      highQc: this.#highQc,
    };
    this.#flushWalNow(); // the snapshot replaces the log: nothing may be left pending
    this.#storage.saveSnapshot(snapshot, keep);
    this.#snapshotHeight = this.#committed.height;
  }

  /**
   * Replaces the committed state by a snapshot that a checkpoint certificate proves (state-sync.ts):
   * durable first (storage snapshot + WAL truncation, atomic), then in memory. Safety state (last
   * voted round, high QC) is this replica's own and is kept. Blocks above the snapshot are dropped
   * and fetched again from the peers.
   */
  #installSnapshot(s: VerifiedSnapshot): void {
    invariant(
      s.block.height > this.#committed.height,
      () => `snapshot at ${s.block.height} is above committed height ${this.#committed.height}`,
    );
    this.#flushWalNow();
    const snapshot: Snapshot = {
      block: s.block,
      registry: s.registry,
      sessions: s.sessions,
      lastVotedRound: this.#lastVotedRound,
      highQc: this.#highQc,
    };
    this.#storage.saveSnapshot(snapshot, [
      { kind: "safety", lastVotedRound: this.#lastVotedRound, highQc: this.#highQc },
    ]);
    this.#blocks.clear();
    this.#orphans.clear();
    this.#committedIds.clear();
    this.#committed = s.block;
    this.#blocks.set(s.block.id, s.block);
    this.#committedIds.set(s.block.height, s.block.id);
    this.#snapshotHeight = s.block.height;
    this.#prunedAt = s.block.height;
    this.#sm.restore(s.registry);
    this.#sessions.clear();
    for (const e of s.sessions) this.#sessions.set(e.clientId, e);
    for (const [key, { req }] of this.#mempool) {
      const done = this.#sessions.get(req.clientId);
      if (done && done.seq >= req.seq) {
        this.#mempool.delete(key);
        if (done.seq === req.seq) this.#sendReply(done, this.#committed.height);
      }
    }
  }

  #prune(): void {
    const h = this.#committed.height;
    this.#prunedAt = h;
    const retainedCommittedBlocks = this.#retained;
    for (const [id, b] of this.#blocks) {
      if (
        b.height < h - retainedCommittedBlocks ||
        (b.height <= h && this.#committedIds.get(b.height) !== id)
      )
        this.#blocks.delete(id);
    }
    for (const height of this.#committedIds.keys())
      if (height < h - retainedCommittedBlocks) this.#committedIds.delete(height);
    for (const [id, set] of this.#votes)
      if (set.round < this.#highQc.round - 2 * futureRoundsMax || set.height <= h - 2)
        this.#votes.delete(id);
    for (const [key, id] of this.#voteOf) if (!this.#votes.has(id)) this.#voteOf.delete(key);
    for (const [id, set] of this.#commitVotes)
      if (set.round < this.#highQc.round - 2 * futureRoundsMax || set.height <= h)
        this.#commitVotes.delete(id);
    for (const [key, id] of this.#commitVoteOf)
      if (!this.#commitVotes.has(id)) this.#commitVoteOf.delete(key);
    for (const id of this.#commitReady)
      if (!this.#commitVotes.has(id)) this.#commitReady.delete(id);
    for (const round of this.#proposalsByRound.keys())
      if (round < this.#round - futureRoundsMax) this.#proposalsByRound.delete(round);
    for (const view of this.#timeouts.keys())
      if (view < this.#view - 1) this.#timeouts.delete(view);
    for (const [id, b] of this.#orphans) if (b.height <= h) this.#orphans.delete(id);
    for (const id of this.#blockSeenMs.keys())
      if (!this.#blocks.has(id)) this.#blockSeenMs.delete(id);
    for (const [id, at] of this.#qcSeenMs)
      if (!this.#blocks.has(id) && at < this.#now - 60_000) this.#qcSeenMs.delete(id);
  }

  // ---- Pacemaker --------------------------------------------------------------------------------

  #currentTimeoutMs(): number {
    return (
      this.#timeoutBaseMs * 2 ** Math.min(this.#consecutiveViewChanges, timeoutBackoffExponentMax)
    );
  }

  #censorshipDeadlineMs(): number {
    if (this.#mempool.size === 0) return Number.POSITIVE_INFINITY;
    const oldest = this.#mempool.values().next().value as { arrivedMs: number };
    return (
      Math.max(oldest.arrivedMs, this.#viewStartMs) +
      censorshipTimeoutViews * this.#currentTimeoutMs()
    );
  }

  #hasWork(): boolean {
    if (this.#mempool.size > 0) return true;
    let b = this.#blocks.get(this.#highQc.blockId);
    while (b && b.height > this.#committed.height) {
      if (b.payload.length > 0) return true;
      b = this.#blocks.get(b.parentId);
    }
    return false;
  }

  #enterRound(r: number): void {
    if (r <= this.#round) return;
    const newView = viewOf(r);
    this.#round = r;
    if (newView > this.#view) {
      this.#view = newView;
      this.#viewStartMs = this.#now;
      this.#viewChangesTotal += 1;
      this.#log({ kind: "view-change", view: newView, leader: leaderOf(newView) });
    }
    this.#roundDeadlineMs = this.#now + this.#currentTimeoutMs();
    this.#tryPropose();
  }

  #localTimeout(view: number): void {
    // After a restart the view may be timed out (persisted) without the message: sign it again.
    if (
      view < this.#timedOutView ||
      (view === this.#timedOutView && this.#myTimeout?.view === view)
    )
      return;
    this.#log({ kind: "timeout", view });
    if (view > this.#view) {
      this.#view = view;
      this.#round = roundAt(view, 0);
      this.#viewStartMs = this.#now;
    }
    this.#timedOutView = view;
    this.#lastVotedRound = Math.max(this.#lastVotedRound, lastRoundOf(view));
    this.#pendingWal.push({
      kind: "safety",
      lastVotedRound: this.#lastVotedRound,
      highQc: this.#highQc,
    });
    this.#flushWal();
    const sig = this.#signer.sign(timeoutDigest(this.#chainId, view, this.#highQc.round));
    const msg: TimeoutMsg = {
      type: "timeout",
      view,
      highQc: this.#highQc,
      author: this.id,
      sig,
      ...(this.#lastTc && this.#lastTc.view === view - 1 ? { lastTc: this.#lastTc } : {}),
    };
    this.#myTimeout = msg;
    this.#roundDeadlineMs = this.#now + this.#currentTimeoutMs();
    this.#broadcast(msg);
    this.#selfQueue.push(msg);
  }

  #onTimeout(from: ReplicaId, t: TimeoutMsg): void {
    if (from !== t.author) {
      this.#reject(from, `timeout by ${t.author} relayed by ${from}`);
      return;
    }
    // A lagging replica (older view or lower high QC): hand it the certificates that moved us on.
    if (from !== this.id && (t.view < this.#view || t.highQc.round < this.#highQc.round))
      this.#send(from, {
        type: "sync",
        highQc: this.#highQc,
        ...(this.#lastTc ? { tc: this.#lastTc } : {}),
      });
    // A peer stuck in our view whose high QC is not above our last commit-vote commit may have
    // missed that commit: hand it the certificate.
    const cert = this.#lastCommitCert;
    if (from !== this.id && t.view === this.#view && cert && t.highQc.height <= cert.height)
      this.#send(from, cert);
    if (t.view < this.#view) return;
    if (t.view > this.#view + futureViewsMax) {
      this.#reject(from, `timeout for future view ${t.view}`);
      return;
    }
    if (
      from !== this.id &&
      !this.#verifier.verify(t.author, timeoutDigest(this.#chainId, t.view, t.highQc.round), t.sig)
    ) {
      this.#reject(from, `timeout for view ${t.view} has an invalid signature`);
      return;
    }
    const badQc = checkQc(t.highQc, this.#chainId, this.#verifier);
    if (badQc) {
      this.#reject(from, `timeout: ${badQc}`);
      return;
    }
    if (t.lastTc) {
      const badTc = checkTc(t.lastTc, this.#chainId, this.#verifier);
      if (badTc) {
        this.#reject(from, `timeout: ${badTc}`);
        return;
      }
    }
    this.#processQc(t.highQc, from);
    if (t.lastTc) this.#processTc(t.lastTc);
    if (t.view < this.#view) return;
    let set = this.#timeouts.get(t.view);
    if (!set) {
      set = new Map();
      this.#timeouts.set(t.view, set);
    }
    set.set(t.author, { author: t.author, highQcRound: t.highQc.round, sig: t.sig });
    if (set.size >= weakQuorumSize && t.view > this.#timedOutView) this.#localTimeout(t.view);
    if (set.size >= quorumSize) {
      const timeouts = [...set.values()].sort((a, b) => a.author - b.author);
      this.#processTc({ view: t.view, timeouts });
    }
  }

  #processTc(tc: TimeoutCert): void {
    if (tc.view < this.#view) return;
    if (this.#lastTc === undefined || tc.view > this.#lastTc.view) this.#lastTc = tc;
    if (roundAt(tc.view + 1, 0) > this.#round) {
      this.#consecutiveViewChanges += 1;
      this.#enterRound(roundAt(tc.view + 1, 0));
    }
  }

  #tryPropose(): void {
    const r = this.#round;
    const view = this.#view;
    if (leaderOf(view) !== this.id || this.#proposedRound >= r || r <= this.#lastVotedRound) return;
    if (this.#timedOutView >= view) return;
    const k = kOf(r);
    if (k >= roundsPerView - 3 || (this.id !== 0 && k > leaderTermRoundsMax)) return;
    const parent = this.#blocks.get(this.#highQc.blockId);
    if (!parent) return;
    let tc: TimeoutCert | undefined;
    if (k === 0) {
      tc = this.#lastTc;
      if (!tc || tc.view !== view - 1 || this.#highQc.round < tcHighQcRound(tc)) return;
    } else if (this.#highQc.round !== r - 1) return;
    // Requests already in the uncommitted chain or executed are not proposed again.
    const inFlight = new Set<string>();
    let pendingBlocks = false;
    for (
      let b: Block | undefined = parent;
      b && b.height > this.#committed.height;
      b = this.#blocks.get(b.parentId)
    ) {
      for (const req of b.payload) inFlight.add(requestKey(req));
      if (b.payload.length > 0) pendingBlocks = true;
    }
    const payload: ClientRequest[] = [];
    for (const [key, { req }] of this.#mempool) {
      if (payload.length >= this.#maxBatch) break;
      if (inFlight.has(key)) continue;
      const s = this.#sessions.get(req.clientId);
      if (s && s.seq >= req.seq) continue;
      payload.push(req);
    }
    if (payload.length === 0 && !pendingBlocks) return;
    const fields = {
      parentId: parent.id,
      round: r,
      height: parent.height + 1,
      author: this.id,
      timestampMs: Math.max(this.#now, parent.timestampMs),
      payload,
      qc: this.#highQc,
    };
    const block: Block = { id: blockIdOf(this.#chainId, fields), ...fields };
    this.#proposedRound = r;
    const msg: ProposalMsg = {
      type: "proposal",
      block,
      ...(tc ? { tc } : {}),
      sig: this.#signer.sign(proposalDigest(this.#chainId, block.id)),
    };
    // The block is durable before it leaves, so a restarted leader knows it proposed in this round
    // and never proposes a second block in it. Our own vote (a signature and its own durable
    // record) is handled as the next input, once the proposal has left: off the critical path.
    this.#insertBlock(block);
    this.#flushWal();
    this.#broadcast(msg);
    if (this.#handlerDepth > 0) this.#afterRelease.push(() => this.#onProposal(this.id, msg));
    else this.#onProposal(this.id, msg);
  }

  #onSync(from: ReplicaId, m: SyncMsg): void {
    if (m.highQc.round <= this.#highQc.round && (!m.tc || m.tc.view < this.#view)) return;
    const badQc = checkQc(m.highQc, this.#chainId, this.#verifier);
    if (badQc) {
      this.#reject(from, `sync: ${badQc}`);
      return;
    }
    if (m.tc) {
      const badTc = checkTc(m.tc, this.#chainId, this.#verifier);
      if (badTc) {
        this.#reject(from, `sync: ${badTc}`);
        return;
      }
    }
    this.#processQc(m.highQc, from);
    if (m.tc) this.#processTc(m.tc);
  }

  // ---- Block fetching ---------------------------------------------------------------------------

  #onFetch(from: ReplicaId, f: FetchMsg): void {
    if (from === this.id) return;
    const chain: Block[] = [];
    let b = this.#blocks.get(f.blockId);
    while (b && chain.length < fetchBlocksMax && b.height > 0) {
      chain.push(b);
      b = this.#blocks.get(b.parentId);
    }
    if (chain.length === 0) return;
    chain.reverse();
    const msg: BlocksMsg = { type: "blocks", blocks: chain };
    this.#send(from, msg);
  }

  #onBlocks(from: ReplicaId, m: BlocksMsg): void {
    if (m.blocks.length > fetchBlocksMax) {
      this.#reject(from, `blocks response of ${m.blocks.length} > ${fetchBlocksMax}`);
      return;
    }
    for (const b of m.blocks) {
      if (this.#blocks.has(b.id) || b.height <= this.#committed.height) continue;
      const bad = this.#checkBlockShape(b);
      if (bad) {
        this.#reject(from, `fetched block: ${bad}`);
        return;
      }
      if (this.#orphans.size >= orphanBlocksMax)
        this.#orphans.delete(this.#orphans.keys().next().value as string);
      this.#orphans.set(b.id, b);
    }
    // Insert every orphan whose parent is known, lowest first, until none connects.
    let progress = true;
    while (progress) {
      progress = false;
      const ready = [...this.#orphans.values()]
        .filter((b) => this.#blocks.has(b.parentId))
        .sort((a, b) => a.height - b.height);
      for (const b of ready) {
        this.#orphans.delete(b.id);
        const parent = this.#blocks.get(b.parentId) as Block;
        if (!this.#extendsCommitted(parent)) continue;
        this.#insertBlock(b);
        this.#processQc(b.qc, from);
        progress = true;
      }
    }
    this.#flushWal();
    const lowest = [...this.#orphans.values()].sort((a, b) => a.height - b.height)[0];
    if (lowest && !this.#blocks.has(lowest.parentId) && lowest.height - 1 > this.#committed.height)
      this.#send(from, { type: "fetch", blockId: lowest.parentId });
    this.#retryParked();
    // Blocks we now hold may complete a 2-chain whose QC we saw before the blocks.
    this.#tryCommit(this.#highQc);
    this.#retryCommitVotes();
  }
}
