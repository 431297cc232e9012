// Byzantine behaviours for the simulator. The faulty replica runs the honest code, but everything
// it sends passes through `ByzantineNetwork`, which lies: it equivocates as leader, votes for
// conflicting blocks, corrupts signatures, replays old messages (its own and others'), forges the
// author field, sends messages for far-future views, or goes silent. Against the commit-vote phase
// it commit-votes for conflicting blocks, commit-votes for every QC and proposal it ever sees (after
// timing out, for uncertified blocks) and replays its own and others' old commit votes. It holds only its own signer,
// so what it cannot do is what no real attacker can do: sign as an honest replica.

import type { Prng } from "../../common/prng.ts";
import type { Signer } from "../../crypto/signature.ts";
import { replicaCount } from "../constants.ts";
import type { ReplicaNetwork } from "../replica.ts";
import {
  type Block,
  blockIdOf,
  type CommitVoteMsg,
  commitVoteDigest,
  type ProposalMsg,
  proposalDigest,
  type ReplicaId,
  type ReplicaMsg,
  type ReplyMsg,
  roundAt,
  timeoutDigest,
  type VoteMsg,
  viewOf,
  voteDigest,
} from "../types.ts";

export const byzantineBehaviours = [
  "equivocate",
  "conflicting-votes",
  "bad-signatures",
  "replay",
  "forge-author",
  "future-view",
  "conflicting-commit-votes",
  "reckless-commit-votes",
  "replay-commit-votes",
  "silent",
] as const;
export type ByzantineBehaviour = (typeof byzantineBehaviours)[number];

export const replayBufferMessagesMax = 256;

export class ByzantineNetwork implements ReplicaNetwork {
  readonly #inner: ReplicaNetwork;
  readonly #id: ReplicaId;
  readonly #signer: Signer;
  readonly #chainId: string;
  readonly #prng: Prng;
  readonly #behaviours: ReadonlySet<ByzantineBehaviour>;
  readonly #seen: ReplicaMsg[] = [];
  /** Commit votes this replica (honestly or not) sent, kept to replay later. */
  readonly #ownCommitVotes: CommitVoteMsg[] = [];
  /** Blocks it has already commit-voted for recklessly. */
  readonly #reckless = new Set<string>();
  /** Counts of each lie actually told (the harness checks that they were attempted). */
  readonly told = new Map<ByzantineBehaviour, number>();

  constructor(
    inner: ReplicaNetwork,
    id: ReplicaId,
    signer: Signer,
    chainId: string,
    prng: Prng,
    behaviours: readonly ByzantineBehaviour[],
  ) {
    this.#inner = inner;
    this.#id = id;
    this.#signer = signer;
    this.#chainId = chainId;
    this.#prng = prng;
    this.#behaviours = new Set(behaviours);
  }

  #lie(b: ByzantineBehaviour): boolean {
    if (!this.#behaviours.has(b)) return false;
    this.told.set(b, (this.told.get(b) ?? 0) + 1);
    return true;
  }

  /** Everything the faulty replica receives is kept for replays. */
  observe(msg: ReplicaMsg): void {
    if (this.#seen.length >= replayBufferMessagesMax)
      this.#seen.splice(this.#prng.int(this.#seen.length), 1);
    this.#seen.push(msg);
    if (this.#behaviours.has("reckless-commit-votes")) this.#recklessCommitVotes(msg);
  }

  /**
   * Commit votes that no honest replica would send: for the QC a timeout or proposal carries, and
   * for a proposed or voted-for block that is not certified yet, whatever its own timeouts say.
   */
  #recklessCommitVotes(msg: ReplicaMsg): void {
    const targets: { blockId: string; round: number; height: number }[] = [];
    if (msg.type === "timeout" && msg.highQc.votes.length > 0) targets.push(msg.highQc);
    if (msg.type === "vote") targets.push(msg); // a block someone voted for, certified or not
    if (msg.type === "proposal") {
      const b = msg.block;
      if (b.qc.votes.length > 0) targets.push(b.qc);
      targets.push({ blockId: b.id, round: b.round, height: b.height });
    }
    for (const { blockId, round, height } of targets) {
      if (this.#reckless.has(blockId)) continue;
      if (this.#reckless.size >= replayBufferMessagesMax) this.#reckless.clear();
      this.#reckless.add(blockId);
      this.#lie("reckless-commit-votes");
      const cv: CommitVoteMsg = {
        type: "commit-vote",
        blockId,
        round,
        height,
        author: this.#id,
        sig: this.#signer.sign(commitVoteDigest(this.#chainId, blockId, round, height)),
      };
      for (let to = 0; to < replicaCount; to++) if (to !== this.#id) this.#inner.send(to, cv);
    }
  }

  reply(msg: ReplyMsg): void {
    if (this.#behaviours.has("silent")) return;
    // A lying reply: a different result. Clients need f + 1 matching replies, so it cannot win.
    if (this.#prng.next() < 0.5 && this.#lie("bad-signatures")) {
      this.#inner.reply({ ...msg, result: { ok: false, error: "byzantine" } });
      return;
    }
    this.#inner.reply(msg);
  }

  send(to: ReplicaId, msg: ReplicaMsg): void {
    if (this.#behaviours.has("silent")) {
      this.#lie("silent");
      return;
    }
    let out: ReplicaMsg = msg;
    if (msg.type === "proposal" && this.#behaviours.has("equivocate") && to % 2 === 1) {
      out = this.#equivocate(msg);
    }
    if (msg.type === "vote" && this.#behaviours.has("conflicting-votes") && to % 2 === 1) {
      out = this.#conflictingVote(msg);
    }
    if (msg.type === "commit-vote") {
      if (this.#ownCommitVotes.length >= replayBufferMessagesMax) this.#ownCommitVotes.shift();
      this.#ownCommitVotes.push(msg);
      if (this.#behaviours.has("conflicting-commit-votes") && to % 2 === 1)
        out = this.#conflictingCommitVote(msg);
    }
    if (
      this.#behaviours.has("replay-commit-votes") &&
      this.#prng.next() < 0.3 &&
      this.#lie("replay-commit-votes")
    ) {
      // Its own old commit votes (validly signed, stale or duplicate) and others' (not its to send).
      const others = this.#seen.filter((m) => m.type === "commit-vote");
      const pool = this.#prng.next() < 0.5 && others.length > 0 ? others : this.#ownCommitVotes;
      const old = pool[this.#prng.int(Math.max(1, pool.length))];
      if (old) this.#inner.send(to, old);
    }
    if (this.#behaviours.has("bad-signatures") && this.#prng.next() < 0.2) out = this.#corrupt(out);
    this.#inner.send(to, out);
    if (this.#behaviours.has("replay") && this.#seen.length > 0 && this.#prng.next() < 0.3) {
      this.#lie("replay");
      this.#inner.send(to, this.#seen[this.#prng.int(this.#seen.length)] as ReplicaMsg);
    }
    if (this.#behaviours.has("forge-author") && this.#prng.next() < 0.1) this.#forge(to, msg);
    if (this.#behaviours.has("future-view") && this.#prng.next() < 0.1) this.#future(to, msg);
  }

  #equivocate(p: ProposalMsg): ProposalMsg {
    this.#lie("equivocate");
    const b = p.block;
    const fields: Omit<Block, "id"> = {
      parentId: b.parentId,
      round: b.round,
      height: b.height,
      author: b.author,
      timestampMs: b.timestampMs + 1,
      payload: b.payload.slice(0, Math.floor(b.payload.length / 2)),
      qc: b.qc,
    };
    const id = blockIdOf(this.#chainId, fields);
    const block: Block = { id, ...fields };
    return { ...p, block, sig: this.#signer.sign(proposalDigest(this.#chainId, id)) };
  }

  #conflictingVote(v: VoteMsg): VoteMsg {
    this.#lie("conflicting-votes");
    const blockId = this.#conflictingBlockId(v);
    return {
      ...v,
      blockId,
      sig: this.#signer.sign(voteDigest(this.#chainId, blockId, v.round, v.height)),
    };
  }

  /** A commit vote for another block of the same round (a seen proposal, else a made-up id). */
  #conflictingCommitVote(v: CommitVoteMsg): CommitVoteMsg {
    this.#lie("conflicting-commit-votes");
    const blockId = this.#conflictingBlockId(v);
    return {
      ...v,
      blockId,
      sig: this.#signer.sign(commitVoteDigest(this.#chainId, blockId, v.round, v.height)),
    };
  }

  /** Another block of `v`'s round: a proposal seen for it, else `v`'s id with its last digit flipped. */
  #conflictingBlockId(v: { readonly blockId: string; readonly round: number }): string {
    const other = this.#seen.find(
      (m) => m.type === "proposal" && m.block.id !== v.blockId && m.block.round === v.round,
    );
    return other?.type === "proposal"
      ? other.block.id
      : `${v.blockId.slice(0, 63)}${v.blockId.endsWith("0") ? "1" : "0"}`;
  }

  #corrupt(msg: ReplicaMsg): ReplicaMsg {
    if (
      msg.type !== "proposal" &&
      msg.type !== "vote" &&
      msg.type !== "commit-vote" &&
      msg.type !== "timeout"
    )
      return msg;
    this.#lie("bad-signatures");
    const sig = msg.sig.slice();
    const at = this.#prng.int(sig.length);
    sig[at] = (sig[at] ?? 0) ^ (1 + this.#prng.int(255));
    return { ...msg, sig };
  }

  #forge(to: ReplicaId, msg: ReplicaMsg): void {
    if (msg.type !== "vote") return;
    this.#lie("forge-author");
    const victim = (this.#id + 1 + this.#prng.int(replicaCount - 1)) % replicaCount;
    this.#inner.send(to, { ...msg, author: victim });
  }

  #future(to: ReplicaId, msg: ReplicaMsg): void {
    if (msg.type !== "vote" && msg.type !== "timeout") return;
    this.#lie("future-view");
    if (msg.type === "timeout") {
      const view = msg.view + 1 + this.#prng.int(1000);
      this.#inner.send(to, {
        ...msg,
        view,
        sig: this.#signer.sign(timeoutDigest(this.#chainId, view, msg.highQc.round)),
      });
    } else {
      const round = roundAt(viewOf(msg.round) + 1 + this.#prng.int(1000), 1);
      this.#inner.send(to, {
        ...msg,
        round,
        sig: this.#signer.sign(voteDigest(this.#chainId, msg.blockId, round, msg.height)),
      });
    }
  }
}
