// Limits of the consensus layer, in one place (TigerBeetle's constants.zig habit). Units last.
// Relations between them are asserted once, below.

import { invariant } from "../common/assert.ts";

/** Coordinators: n = 5 tolerates f = 1 Byzantine replica (n ≥ 3f + 2 for a 4-vote quorum). */
export const replicaCount = 5;
export const faultsTolerated = 1;
/** Two quorums of 4 out of 5 share 3 replicas, of which at least 2 are honest. */
export const quorumSize = 4;
/** f + 1 matching replies / timeouts contain at least one honest replica. */
export const weakQuorumSize = faultsTolerated + 1;

/** Round = view · roundsPerView + k: k counts the blocks of one leader's view, from 0. */
export const roundsPerView = 2 ** 20;
/** A non-preferred leader hands the view on after this many rounds so ORD can lead again. */
export const leaderTermRoundsMax = 1_000;
/** Pacemaker: the timeout doubles per consecutive view change, up to base · 2^this. */
export const timeoutBackoffExponentMax = 6;
/** A client request older than this many view timeouts makes an honest replica leave the view. */
export const censorshipTimeoutViews = 4;

/** A proposal stamped further ahead of a replica's clock is refused (heartbeat ages use it). */
export const clockSkewMsMax = 30_000;
/** Future views / rounds whose messages are kept; further ones are dropped with a logged reason. */
export const futureViewsMax = 64;
export const futureRoundsMax = 1_024;
/** Requests waiting at a replica; beyond it new ones are refused. */
export const mempoolRequestsMax = 100_000;
/** Proposals parked while their ancestors are fetched. */
export const parkedProposalsMax = 16;
/** Blocks with commit votes collected but not committed yet; beyond it new ones are refused. */
export const pendingCommitVoteSetsMax = 4_096;
/** Blocks answered in one fetch response. */
export const fetchBlocksMax = 64;
/** Committed blocks kept in memory (and on disk until a snapshot) to serve lagging replicas. */
export const retainedCommittedBlocks = 2_048;
/** A snapshot is taken after this many committed blocks; the WAL is truncated to it. */
export const snapshotEveryBlocks = 512;

/** Wire limits. */
export const messageBytesMax = 4 * 1024 * 1024;
/** A snapshot too large for one frame travels in pieces of this many bytes (base64: 4/3 more). */
export const snapshotChunkBytes = 1024 * 1024;
/** The largest snapshot served or assembled from pieces. */
export const snapshotBytesTotalMax = 64 * 1024 * 1024;
export const opJsonBytesMax = 4_096;
export const clientIdBytesMax = 64;
export const batchRequestsMax = 4_096;

invariant(
  quorumSize + quorumSize - replicaCount >= faultsTolerated + 2,
  "quorum intersection ≥ f + 2",
);
invariant(replicaCount - faultsTolerated >= quorumSize, "honest replicas alone form a quorum");
invariant(leaderTermRoundsMax < roundsPerView - 1, "a leader term fits in one view");
invariant(
  (4 * snapshotChunkBytes) / 3 + 256 * 1024 <= messageBytesMax,
  "a snapshot piece in base64 with its block and certificate fits in one frame",
);
