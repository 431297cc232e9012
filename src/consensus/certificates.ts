// Checks of quorum certificates (QC) and timeout certificates (TC). A QC proves that a quorum of
// 4 distinct replicas voted for one block in one round; since any two quorums share an honest
// replica and an honest replica votes once per round, at most one block per round is certified.
// A TC proves that 4 distinct replicas gave up on a view, and carries each one's highest QC round,
// which bounds what the next leader may extend (Jolteon's safety argument).

import type { Verifier } from "../crypto/signature.ts";
import { quorumSize, replicaCount } from "./constants.ts";
import {
  genesisQc,
  type QuorumCert,
  type TimeoutCert,
  timeoutDigest,
  voteDigest,
} from "./types.ts";

/** Why a certificate was refused; undefined when it is valid. */
export function checkQc(qc: QuorumCert, chainId: string, verifier: Verifier): string | undefined {
  if (qc.votes.length === 0) {
    const g = genesisQc(chainId);
    return qc.blockId === g.blockId && qc.round === 0 && qc.height === 0
      ? undefined
      : "certificate without votes that is not the genesis certificate";
  }
  if (qc.round <= 0 || qc.height <= 0)
    return `certificate for round ${qc.round} height ${qc.height}`;
  if (qc.votes.length < quorumSize)
    return `certificate with ${qc.votes.length} votes < quorum ${quorumSize}`;
  if (qc.votes.length > replicaCount)
    return `certificate with ${qc.votes.length} votes > ${replicaCount}`;
  const seen = new Set<number>();
  const digest = voteDigest(chainId, qc.blockId, qc.round, qc.height);
  for (const v of qc.votes) {
    if (!Number.isInteger(v.author) || v.author < 0 || v.author >= replicaCount)
      return `certificate vote from unknown replica ${v.author}`;
    if (seen.has(v.author)) return `certificate counts replica ${v.author} twice`;
    seen.add(v.author);
    if (!verifier.verify(v.author, digest, v.sig))
      return `certificate vote of replica ${v.author} has an invalid signature`;
  }
  return undefined;
}

export function checkTc(tc: TimeoutCert, chainId: string, verifier: Verifier): string | undefined {
  if (tc.timeouts.length < quorumSize)
    return `timeout certificate with ${tc.timeouts.length} timeouts < quorum ${quorumSize}`;
  if (tc.timeouts.length > replicaCount)
    return `timeout certificate with ${tc.timeouts.length} entries`;
  const seen = new Set<number>();
  for (const t of tc.timeouts) {
    if (!Number.isInteger(t.author) || t.author < 0 || t.author >= replicaCount)
      return `timeout from unknown replica ${t.author}`;
    if (seen.has(t.author)) return `timeout certificate counts replica ${t.author} twice`;
    seen.add(t.author);
    if (!verifier.verify(t.author, timeoutDigest(chainId, tc.view, t.highQcRound), t.sig))
      return `timeout of replica ${t.author} has an invalid signature`;
  }
  return undefined;
}

export function tcHighQcRound(tc: TimeoutCert): number {
  return tc.timeouts.reduce((m, t) => Math.max(m, t.highQcRound), 0);
}
