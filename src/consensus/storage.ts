// What a replica must keep across a crash, and the in-memory implementation the simulator uses.
//
// The replica writes through `ReplicaStorage` and only acts on the outside world after `append`
// returns: a vote or timeout is sent only after the safety record (last voted round, highest QC)
// and the voted block are durable, and a client hears a result only after the commit record is.
// So a restarted replica never votes twice in a round and never forgets an acknowledged write.
// The file-backed implementation (fsync, checksums, snapshot + truncation) is in wal.ts.

import type { RegistryResult, RegistryState } from "./registry.ts";
import type { Block, QuorumCert } from "./types.ts";

export type WalRecord =
  | { readonly kind: "block"; readonly block: Block }
  | { readonly kind: "safety"; readonly lastVotedRound: number; readonly highQc: QuorumCert }
  | { readonly kind: "commit"; readonly height: number; readonly blockId: string };

export interface SessionEntry {
  readonly clientId: string;
  readonly seq: number;
  readonly result: RegistryResult;
  /** Block time of the commit of `seq` (sessions.ts expires on it); absent in older snapshots. */
  readonly atMs?: number;
}

/** The state machine at one committed block, plus the safety state at the time it was taken. */
export interface Snapshot {
  readonly block: Block;
  readonly registry: RegistryState;
  readonly sessions: readonly SessionEntry[];
  readonly lastVotedRound: number;
  readonly highQc: QuorumCert;
}

export interface Recovered {
  readonly snapshot?: Snapshot;
  readonly records: readonly WalRecord[];
}

export interface ReplicaStorage {
  /** Durable when it returns (the file WAL fsyncs). */
  append(records: readonly WalRecord[]): void;
  /** Atomically replaces everything with `snapshot` followed by `keep`. */
  saveSnapshot(snapshot: Snapshot, keep: readonly WalRecord[]): void;
  load(): Recovered;
}

/**
 * Storage for simulated replicas: it survives a simulated crash (the replica object is dropped and
 * rebuilt from `load()`), as an fsynced file survives kill -9. Counts appends for the harness.
 */
export class MemoryStorage implements ReplicaStorage {
  #snapshot: Snapshot | undefined;
  #records: WalRecord[] = [];
  appends = 0;

  append(records: readonly WalRecord[]): void {
    this.appends += 1;
    this.#records.push(...records);
  }

  saveSnapshot(snapshot: Snapshot, keep: readonly WalRecord[]): void {
    this.#snapshot = structuredClone(snapshot);
    this.#records = [...keep];
  }

  load(): Recovered {
    return this.#snapshot
      ? { snapshot: structuredClone(this.#snapshot), records: [...this.#records] }
      : { records: [...this.#records] };
  }

  get recordCount(): number {
    return this.#records.length;
  }
}
