// Deterministic simulation of the five coordinators (in the manner of TigerBeetle's VOPR and
// FoundationDB's simulator): one seed fixes the whole run — network delays, drops, duplicates,
// reordering, partitions, crashes and restarts, which replica is Byzantine and how it lies, and
// what the clients ask. A run has a safety phase under faults, then a liveness phase after the
// network heals and crashed replicas restart. Separate checkers judge it: agreement on the
// committed prefix, durability across restarts, liveness after heal, and linearizability of the
// clients' history. A failing seed reproduces with `moe-swarm coordinator simulate --seed N`.

import { invariant } from "../../common/assert.ts";
import { Prng } from "../../common/prng.ts";
import {
  MlDsa65Signer,
  MlDsa65Verifier,
  mlDsa65Keygen,
  type Signer,
  SimulationMacKeys,
  type Verifier,
} from "../../crypto/signature.ts";
import { replicaCount, weakQuorumSize } from "../constants.ts";
import { checkLinearizable, type HistoryOp, type SequentialModel } from "../linearizability.ts";
import { type RegistryOp, type RegistryResult, RegistryStateMachine } from "../registry.ts";
import { Replica, type ReplicaEvent, type ReplicaNetwork, type ReplicaStatus } from "../replica.ts";
import { MemoryStorage } from "../storage.ts";
import {
  canonicalJson,
  type ReplicaId,
  type ReplicaMsg,
  type ReplyMsg,
  regionsInLeaderOrder,
  sha256Hex,
} from "../types.ts";
import { type ByzantineBehaviour, ByzantineNetwork, byzantineBehaviours } from "./byzantine.ts";
import {
  type CommitRecord,
  checkAgreement,
  checkDurability,
  checkLiveness,
  type LivenessProbe,
  type RestartRecord,
} from "./checkers.ts";
import { EventQueue } from "./scheduler.ts";

export interface SimulationOptions {
  readonly seed: number;
  readonly signatures?: "sim-hmac" | "ml-dsa-65";
  readonly clients?: number;
  readonly opsPerClient?: number;
  readonly safetyPhaseMs?: number;
  readonly livenessPhaseMsMax?: number;
  readonly viewTimeoutMs?: number;
  readonly maxBatch?: number;
  /** "random": chosen from the seed; "none": all honest; or a fixed replica and behaviours. */
  readonly byzantine?:
    | "random"
    | "none"
    | { id: ReplicaId; behaviours: readonly ByzantineBehaviour[] };
  /** Partitions, crashes, drops and duplicates in the safety phase (delays and reordering always). */
  readonly faults?: boolean;
  readonly livenessViewsMax?: number;
  /** Fixed one-way delay per replica link (e.g. the WAN matrix) instead of the seeded random one. */
  readonly linkDelayMs?: (from: ReplicaId, to: ReplicaId) => number;
  /** Honest replicas send commit votes (default true); false runs the 2-chain rule alone. */
  readonly commitVotes?: boolean;
  /** Committed blocks each replica keeps for lagging peers (default: the production constant). */
  readonly retainedCommittedBlocks?: number;
  /**
   * Crashes this honest replica at `atMs` and keeps it down until the heal, so that with a small
   * `retainedCommittedBlocks` it can only catch up by state transfer.
   */
  readonly crashUntilHeal?: { readonly replica: ReplicaId; readonly atMs: number };
  /** Receives every replica event (rejections, evidence, view changes) for debugging a seed. */
  readonly trace?: (atMs: number, replica: ReplicaId, event: ReplicaEvent) => void;
}

export interface SimulationResult {
  readonly seed: number;
  readonly ok: boolean;
  readonly violations: readonly string[];
  readonly reproduce: string;
  readonly byzantine: { id: ReplicaId; behaviours: readonly ByzantineBehaviour[] } | undefined;
  readonly stats: {
    events: number;
    simulatedMs: number;
    committedHeightMax: number;
    viewMax: number;
    crashes: number;
    partitions: number;
    clientOpsCompleted: number;
    clientOpsTotal: number;
    evidence: number;
    rejected: number;
  };
  /** Reject reasons with numbers stripped, and how often each was logged. */
  readonly rejectReasons: ReadonlyMap<string, number>;
  readonly liesTold: ReadonlyMap<ByzantineBehaviour, number>;
  /** Each replica's status at the end (undefined while crashed). */
  readonly finalStatus: readonly (ReplicaStatus | undefined)[];
}

type ClientInput = RegistryOp;

/** The registry as a sequential model; the ops clients use here do not depend on block time. */
export const registryModel: SequentialModel<RegistryStateMachine, ClientInput, RegistryResult> = {
  init: () => new RegistryStateMachine(),
  step(state, input) {
    const next = new RegistryStateMachine();
    next.restore(state.snapshot());
    const output = next.apply(input, 0);
    return { state: next, output };
  },
  equal: (a, b) => canonicalJson(a) === canonicalJson(b),
  key: (s) => sha256Hex(canonicalJson(s.snapshot())),
};

const livenessViewsMaxDefault = 12;
/** Events at one simulated instant beyond which the run is declared livelocked. */
export const sameInstantEventsMax = 20_000;

export function runSimulation(options: SimulationOptions): SimulationResult {
  const seed = options.seed;
  const prng = new Prng(seed);
  const faults = options.faults ?? true;
  const clients = options.clients ?? 3;
  const opsPerClient = options.opsPerClient ?? 6;
  const safetyMs = options.safetyPhaseMs ?? 1_500;
  const livenessMaxMs = options.livenessPhaseMsMax ?? 30_000;
  const viewTimeoutMs = options.viewTimeoutMs ?? 60;
  const chainId = `sim-${seed}`;
  const q = new EventQueue();

  // ---- Faults drawn from the seed --------------------------------------------------------------
  const delayMaxMs = 2 + prng.int(18);
  let dropP = faults ? prng.next() * 0.08 : 0;
  let dupP = faults ? prng.next() * 0.05 : 0;
  let partition: number[] | undefined; // group number per replica
  let byz: { id: ReplicaId; behaviours: ByzantineBehaviour[] } | undefined;
  if (options.byzantine === undefined || options.byzantine === "random") {
    const id = prng.next() < 0.4 ? 0 : 1 + prng.int(replicaCount - 1);
    const pool = byzantineBehaviours.filter((b) => b !== "silent");
    const behaviours =
      prng.next() < 0.1
        ? (["silent"] as ByzantineBehaviour[])
        : prng.shuffle([...pool]).slice(0, 1 + prng.int(3));
    byz = { id, behaviours };
  } else if (options.byzantine !== "none") {
    byz = { id: options.byzantine.id, behaviours: [...options.byzantine.behaviours] };
  }
  const honest = new Set<ReplicaId>();
  for (let i = 0; i < replicaCount; i++) if (i !== byz?.id) honest.add(i);

  // ---- Keys ---------------------------------------------------------------------------------------
  let signers: Signer[];
  let verifier: Verifier;
  if (options.signatures === "ml-dsa-65") {
    const pairs = Array.from({ length: replicaCount }, (_, i) =>
      mlDsa65Keygen(Buffer.from(sha256Hex(`sim-key-${seed}-${i}`), "hex")),
    );
    signers = pairs.map((p, i) => new MlDsa65Signer(i, p.secretKey));
    verifier = new MlDsa65Verifier(pairs.map((p) => p.publicKey));
  } else {
    const keys = new SimulationMacKeys(replicaCount, new TextEncoder().encode(chainId));
    signers = Array.from({ length: replicaCount }, (_, i) => keys.signerFor(i));
    verifier = keys.verifier();
  }

  // ---- Replicas -----------------------------------------------------------------------------------
  const storages = Array.from({ length: replicaCount }, () => new MemoryStorage());
  const replicas: (Replica | undefined)[] = new Array(replicaCount).fill(undefined);
  const incarnation = new Array(replicaCount).fill(0);
  const armedAt = new Array(replicaCount).fill(Number.POSITIVE_INFINITY);
  const commits: CommitRecord[] = [];
  const restarts: RestartRecord[] = [];
  const rejectReasons = new Map<string, number>();
  let evidence = 0;
  let rejected = 0;
  let crashes = 0;
  let partitions = 0;
  let healed = false;
  let healHeight = 0;
  const probes = new Map<ReplicaId, { viewAtHeal: number; viewAtResume?: number }>();
  const byzNet: { net?: ByzantineNetwork } = {};
  const crashedState = new Map<ReplicaId, { height: number; id: string }>();

  const delay = () => 1 + prng.int(delayMaxMs);
  const linkUp = (a: ReplicaId, b: ReplicaId) => !partition || partition[a] === partition[b];

  const deliverToReplica = (from: ReplicaId, to: ReplicaId, msg: ReplicaMsg) => {
    const life = incarnation[to];
    q.at(q.nowMs + (options.linkDelayMs ? options.linkDelayMs(from, to) : delay()), () => {
      const r = replicas[to];
      if (!r || incarnation[to] !== life || !linkUp(from, to)) return;
      if (to === byz?.id) byzNet.net?.observe(msg);
      r.onMessage(from, msg, q.nowMs);
      arm(to);
    });
  };

  const networkFor = (from: ReplicaId): ReplicaNetwork => ({
    send(to, msg) {
      if (!linkUp(from, to) || prng.next() < dropP) return;
      deliverToReplica(from, to, msg);
      if (prng.next() < dupP) deliverToReplica(from, to, msg);
    },
    reply(msg) {
      if (prng.next() < dropP) return;
      q.at(q.nowMs + delay(), () => clientReceive(msg));
    },
  });

  const arm = (i: ReplicaId) => {
    const r = replicas[i];
    if (!r) return;
    const d = r.nextDeadlineMs();
    if (!Number.isFinite(d) || (d >= armedAt[i] && armedAt[i] > q.nowMs)) return;
    armedAt[i] = Math.max(d, q.nowMs);
    const life = incarnation[i];
    q.at(armedAt[i], () => {
      if (incarnation[i] !== life || !replicas[i]) return;
      armedAt[i] = Number.POSITIVE_INFINITY;
      replicas[i]?.tick(q.nowMs);
      arm(i);
    });
  };

  const start = (i: ReplicaId) => {
    incarnation[i] += 1;
    armedAt[i] = Number.POSITIVE_INFINITY;
    let net = networkFor(i);
    if (i === byz?.id) {
      byzNet.net = new ByzantineNetwork(
        net,
        i,
        signers[i] as Signer,
        chainId,
        prng.fork(),
        byz.behaviours,
      );
      net = byzNet.net;
    }
    const log = (e: ReplicaEvent) => {
      options.trace?.(q.nowMs, i, e);
      if (!honest.has(i)) return;
      if (e.kind === "reject") {
        rejected += 1;
        const key = e.reason.replace(/[0-9a-f]{8,}/g, "<id>").replace(/\d+/g, "N");
        rejectReasons.set(key, (rejectReasons.get(key) ?? 0) + 1);
      } else if (e.kind === "evidence") evidence += 1;
    };
    const replica = new Replica({
      id: i,
      chainId,
      signer: signers[i] as Signer,
      verifier,
      storage: storages[i] as MemoryStorage,
      network: net,
      viewTimeoutMs,
      maxBatch: options.maxBatch ?? 16,
      // Small, so that snapshots and WAL truncation happen (and are crashed through) in every run.
      snapshotEveryBlocks: 4,
      ...(options.commitVotes === undefined ? {} : { commitVotes: options.commitVotes }),
      ...(options.retainedCommittedBlocks
        ? { retainedCommittedBlocks: options.retainedCommittedBlocks }
        : {}),
      nowMs: q.nowMs,
      log,
      onSnapshotInstalled: (block) => {
        commits.push({
          replica: i,
          height: block.height,
          blockId: block.id,
          atMs: q.nowMs,
          viaSnapshot: true,
        });
      },
      onCommit: (block) => {
        commits.push({ replica: i, height: block.height, blockId: block.id, atMs: q.nowMs });
        const probe = probes.get(i);
        if (healed && probe && probe.viewAtResume === undefined && block.height > healHeight)
          probe.viewAtResume = replicas[i]?.status().view ?? 0;
      },
    });
    replicas[i] = replica;
    const before = crashedState.get(i);
    if (before) {
      const st = replica.status();
      restarts.push({
        replica: i,
        heightBeforeCrash: before.height,
        idBeforeCrash: before.id,
        heightAfterRestart: st.committedHeight,
        idAfterRestartAtOldHeight: replica.committedBlockAt(before.height),
      });
      crashedState.delete(i);
    }
    arm(i);
  };

  const crash = (i: ReplicaId) => {
    const r = replicas[i];
    if (!r) return;
    const st = r.status();
    crashedState.set(i, { height: st.committedHeight, id: st.committedBlockId });
    replicas[i] = undefined;
    incarnation[i] += 1;
    crashes += 1;
  };

  for (let i = 0; i < replicaCount; i++) start(i);

  // ---- Fault schedule (safety phase) -----------------------------------------------------------
  if (faults) {
    const episodes = prng.int(4);
    for (let e = 0; e < episodes; e++) {
      const at = prng.int(safetyMs);
      const len = 50 + prng.int(600);
      q.at(at, () => {
        const groups = Array.from({ length: replicaCount }, () => 0);
        const isolated = prng.shuffle([0, 1, 2, 3, 4]).slice(0, 1 + prng.int(2));
        for (const r of isolated) groups[r] = 1;
        partition = groups;
        partitions += 1;
      });
      q.at(at + len, () => {
        if (!healed) partition = undefined;
      });
    }
    const crashEpisodes = prng.int(3);
    for (let e = 0; e < crashEpisodes; e++) {
      const at = prng.int(safetyMs);
      const who = [...honest][prng.int(honest.size)] as ReplicaId;
      const down = 20 + prng.int(700);
      q.at(at, () => crash(who));
      q.at(at + down, () => {
        if (!replicas[who] && !healed && who !== longCrash?.replica) start(who);
      });
    }
  }

  // The long-crashed replica is an honest one: the next replica if the seed made it Byzantine.
  const longCrash = options.crashUntilHeal && {
    atMs: options.crashUntilHeal.atMs,
    replica:
      options.crashUntilHeal.replica === byz?.id
        ? (options.crashUntilHeal.replica + 1) % replicaCount
        : options.crashUntilHeal.replica,
  };
  if (longCrash) {
    invariant(honest.has(longCrash.replica), "the long-crashed replica is an honest one");
    q.at(longCrash.atMs, () => crash(longCrash.replica));
  }

  // ---- Clients ----------------------------------------------------------------------------------
  const history: HistoryOp<ClientInput, RegistryResult>[] = [];
  interface ClientState {
    id: string;
    seq: number;
    pending?: {
      op: ClientInput;
      callMs: number;
      votes: Map<string, Set<ReplicaId>>;
      index: number;
    };
    done: number;
  }
  const cs: ClientState[] = Array.from({ length: clients }, (_, c) => ({
    id: `c${c}`,
    seq: 0,
    done: 0,
  }));
  const clientPrng = prng.fork();
  const nextOp = (c: number, k: number): ClientInput => {
    if (k === 0)
      return {
        kind: "register_node",
        nodeId: `n${c}`,
        region: regionsInLeaderOrder[c % replicaCount] as string,
        gpuType: "a10",
        address: `10.0.0.${c}:7000`,
      };
    const expert = `L0.E${clientPrng.int(2)}`;
    const roll = clientPrng.next();
    if (roll < 0.45) {
      const nodeIds = Array.from({ length: clients }, (_, i) => `n${i}`).filter(
        () => clientPrng.next() < 0.6,
      );
      return { kind: "set_placement", expert, nodeIds };
    }
    if (roll < 0.9) return { kind: "get_placement", expert };
    return {
      kind: "put_deployment",
      name: "main",
      version: `v${k}`,
      trafficPercent: 100,
      state: "active",
    };
  };
  const sendRequest = (c: ClientState) => {
    const p = c.pending;
    if (!p) return;
    for (let i = 0; i < replicaCount; i++) {
      if (prng.next() < dropP) continue;
      const life = incarnation[i];
      const req = { clientId: c.id, seq: c.seq, op: p.op };
      q.at(q.nowMs + delay(), () => {
        const r = replicas[i];
        if (!r || incarnation[i] !== life) return;
        r.submit(req, q.nowMs);
        arm(i);
      });
    }
    const seq = c.seq;
    q.at(q.nowMs + 4 * viewTimeoutMs, () => {
      if (c.pending && c.seq === seq) sendRequest(c);
    });
  };
  const issue = (ci: number) => {
    const c = cs[ci] as ClientState;
    if (c.done >= opsPerClient) return;
    const op = nextOp(ci, c.done);
    c.seq += 1;
    history.push({ clientId: c.id, input: op, callMs: q.nowMs });
    c.pending = { op, callMs: q.nowMs, votes: new Map(), index: history.length - 1 };
    sendRequest(c);
  };
  const clientReceive = (m: ReplyMsg) => {
    const ci = cs.findIndex((c) => c.id === m.clientId);
    const c = cs[ci];
    if (!c?.pending || m.seq !== c.seq) return;
    const key = canonicalJson(m.result);
    const set = c.pending.votes.get(key) ?? new Set<ReplicaId>();
    set.add(m.replica);
    c.pending.votes.set(key, set);
    if (set.size < weakQuorumSize) return;
    const entry = history[c.pending.index] as HistoryOp<ClientInput, RegistryResult>;
    history[c.pending.index] = { ...entry, returnMs: q.nowMs, output: m.result as RegistryResult };
    c.pending = undefined;
    c.done += 1;
    if (c.id !== "heal-probe") q.at(q.nowMs + clientPrng.int(20), () => issue(ci));
  };
  for (let c = 0; c < clients; c++) q.at(clientPrng.int(50), () => issue(c));

  // ---- Run: safety phase, heal, liveness phase -------------------------------------------------
  // Livelock guard: a replica that keeps asking to be woken at the same instant is a bug.
  const violations: string[] = [];
  let livelock = false;
  let instant = -1;
  let atInstant = 0;
  const stuckAt = () => {
    if (q.nowMs !== instant) {
      instant = q.nowMs;
      atInstant = 0;
    }
    if (++atInstant > sameInstantEventsMax) livelock = true;
    return livelock ? q.nowMs : Number.NaN;
  };
  let events = q.runUntil(safetyMs, () => q.nowMs === stuckAt());
  healed = true;
  partition = undefined;
  dropP = 0;
  dupP = 0;
  for (let i = 0; i < replicaCount; i++) if (!replicas[i]) start(i);
  for (const i of honest) {
    const r = replicas[i] as Replica;
    healHeight = Math.max(healHeight, r.status().committedHeight);
  }
  // Views are counted from the cluster's view at the heal: a replica restarted from an old WAL
  // starts in its old view and jumps ahead on the first certificate it sees, which is no delay.
  let clusterViewAtHeal = 0;
  for (const i of honest)
    clusterViewAtHeal = Math.max(clusterViewAtHeal, (replicas[i] as Replica).status().view);
  for (const i of honest) probes.set(i, { viewAtHeal: clusterViewAtHeal });
  // A probe client asks once after the heal, so there is work even if the others had finished.
  const probe: ClientState = { id: "heal-probe", seq: 0, done: 0 };
  cs.push(probe);
  q.at(q.nowMs + 1, () => {
    probe.seq = 1;
    const op: ClientInput = { kind: "get_placement", expert: "L0.E0" };
    history.push({ clientId: probe.id, input: op, callMs: q.nowMs });
    probe.pending = { op, callMs: q.nowMs, votes: new Map(), index: history.length - 1 };
    sendRequest(probe);
  });
  const finished = () =>
    cs.every((c) => c.done >= (c === probe ? 1 : opsPerClient)) &&
    [...probes.values()].every((p) => p.viewAtResume !== undefined);
  events += q.runUntil(safetyMs + livenessMaxMs, () => finished() || q.nowMs === stuckAt());
  if (livelock)
    violations.push(`livelock: more than ${sameInstantEventsMax} events at ${q.nowMs} ms`);

  // ---- Check ------------------------------------------------------------------------------------
  violations.push(...checkAgreement(commits, honest));
  violations.push(...checkDurability(restarts.filter((r) => honest.has(r.replica))));
  violations.push(
    ...checkLiveness(
      [...probes.entries()].map(
        ([replica, p]) =>
          ({ replica, viewAtHeal: p.viewAtHeal, viewAtResume: p.viewAtResume }) as LivenessProbe,
      ),
      options.livenessViewsMax ?? livenessViewsMaxDefault,
    ),
  );
  const incomplete = cs.filter((c) => c.done < (c.id === "heal-probe" ? 1 : opsPerClient));
  if (incomplete.length > 0)
    violations.push(
      `liveness: clients ${incomplete.map((c) => c.id).join(", ")} did not finish their operations`,
    );
  const lin = checkLinearizable(history, registryModel);
  if (lin.ok !== true) violations.push(`linearizability: ${lin.reason}`);

  let heightMax = 0;
  let viewMax = 0;
  for (const r of replicas) {
    if (!r) continue;
    const st = r.status();
    heightMax = Math.max(heightMax, st.committedHeight);
    viewMax = Math.max(viewMax, st.view);
  }
  return {
    seed,
    ok: violations.length === 0,
    violations,
    reproduce: `npx moe-swarm coordinator simulate --seed ${seed}${options.signatures === "ml-dsa-65" ? " --ml-dsa" : ""}${options.retainedCommittedBlocks ? ` --retain ${options.retainedCommittedBlocks}` : ""}${options.crashUntilHeal ? ` --long-crash ${options.crashUntilHeal.replica}@${options.crashUntilHeal.atMs}` : ""}${options.opsPerClient !== undefined ? ` --ops ${options.opsPerClient}` : ""}${options.livenessViewsMax !== undefined ? ` --liveness-views ${options.livenessViewsMax}` : ""}`,
    byzantine: byz,
    stats: {
      events,
      simulatedMs: q.nowMs,
      committedHeightMax: heightMax,
      viewMax,
      crashes,
      partitions,
      clientOpsCompleted: history.filter((h) => h.returnMs !== undefined).length,
      clientOpsTotal: history.length,
      evidence,
      rejected,
    },
    rejectReasons,
    liesTold: byzNet.net?.told ?? new Map(),
    finalStatus: replicas.map((r) => r?.status()),
  };
}
