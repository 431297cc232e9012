// The replicated state of the coordinators: the swarm registry. Members (expert nodes with their
// region and GPU type, heartbeats), expert placements (which nodes host each expert's replicas),
// deployments (for blue-green and canary rollouts) and the key epoch. It is a deterministic state
// machine: the same committed operations in the same order give the same state on every replica;
// time comes only from the committed block's timestamp, never from a local clock.
//
// Node expiry: a node whose last heartbeat is older than the registry's `nodeTtlMs` at the time of
// a committed block is marked expired (`expiredAtMs`), before that block's operation is applied;
// its next heartbeat (or a re-registration) revives it. Every replica commits the same blocks with
// the same timestamps, so every replica expires the same nodes at the same operation. The block
// time is the leader's clock, refused by honest replicas when it runs more than clockSkewMsMax
// ahead of theirs and never below the parent's, so a Byzantine leader can make nodes look expired
// at most clockSkewMsMax early (their next heartbeat revives them); it cannot forge heartbeats.
//
// Operations are validated with a schema when they enter (client edge) and again when applied, so
// a malformed operation committed by a Byzantine leader yields an error result, never a crash.

import { z } from "zod";
import { gpuTypes } from "../config/schema.ts";

export const nodeIdPattern = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;
const nodeId = z.string().regex(nodeIdPattern, "a node id of letters, digits and . _ : -");
const region = z.string().regex(/^[A-Z]{3}$/, 'a three-letter region code like "ORD"');
/** Expert key as the model names it (`expertKey` in src/model/expert.ts), e.g. "L0.E12". */
const expertName = z.string().min(1).max(64);
/** Replicas per expert accepted in one placement. */
export const placementReplicasMax = 16;
/** Heartbeat age after which a node is expired when the registry has not been told otherwise. */
export const nodeTtlMsDefault = 15_000;
/** Bounds of `set_node_ttl`. */
export const nodeTtlMsMin = 100;
export const nodeTtlMsMax = 24 * 3_600_000;

export const registryOp = z.discriminatedUnion("kind", [
  z.strictObject({
    kind: z.literal("register_node"),
    nodeId,
    region,
    gpuType: z.enum(gpuTypes),
    address: z.string().min(1).max(256),
  }),
  z.strictObject({ kind: z.literal("heartbeat"), nodeId }),
  z.strictObject({ kind: z.literal("deregister_node"), nodeId }),
  z.strictObject({
    kind: z.literal("set_placement"),
    expert: expertName,
    nodeIds: z.array(nodeId).max(placementReplicasMax),
  }),
  z.strictObject({
    kind: z.literal("put_deployment"),
    name: z.string().min(1).max(64),
    version: z.string().min(1).max(128),
    trafficPercent: z.number().min(0).max(100),
    state: z.enum(["provisioning", "canary", "active", "draining", "retired"]),
  }),
  z.strictObject({ kind: z.literal("rotate_key_epoch"), epoch: z.number().int().min(0) }),
  z.strictObject({
    kind: z.literal("set_node_ttl"),
    ttlMs: z.number().int().min(nodeTtlMsMin).max(nodeTtlMsMax),
  }),
  z.strictObject({ kind: z.literal("get_placement"), expert: expertName }),
  z.strictObject({ kind: z.literal("get_node"), nodeId }),
  z.strictObject({ kind: z.literal("list_nodes") }),
  z.strictObject({ kind: z.literal("get_registry") }),
]);
export type RegistryOp = z.output<typeof registryOp>;

export interface NodeRecord {
  readonly nodeId: string;
  readonly region: string;
  readonly gpuType: (typeof gpuTypes)[number];
  readonly address: string;
  readonly registeredAtMs: number;
  readonly lastHeartbeatMs: number;
  /** Block time at which the node's heartbeat was found older than the TTL; absent while live. */
  readonly expiredAtMs?: number;
}
export interface DeploymentRecord {
  readonly name: string;
  readonly version: string;
  readonly trafficPercent: number;
  readonly state: string;
  readonly updatedAtMs: number;
}
export interface KeyEpochRecord {
  readonly epoch: number;
  readonly startedAtMs: number;
}

export interface RegistryState {
  nodes: Record<string, NodeRecord>;
  placements: Record<string, string[]>;
  deployments: Record<string, DeploymentRecord>;
  keyEpoch: KeyEpochRecord;
  /** Heartbeat age at which a node is expired (set_node_ttl). */
  nodeTtlMs: number;
}

const uint = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
/** The registry state as it arrives in a snapshot from a peer (state-sync.ts): checked, not trusted. */
export const registryStateSchema = z.strictObject({
  nodes: z.record(
    z.string().regex(nodeIdPattern),
    z.strictObject({
      nodeId: nodeId,
      region,
      gpuType: z.enum(gpuTypes),
      address: z.string().min(1).max(256),
      registeredAtMs: uint,
      lastHeartbeatMs: uint,
      expiredAtMs: uint.optional(),
    }),
  ),
  placements: z.record(expertName, z.array(nodeId).max(placementReplicasMax)),
  deployments: z.record(
    z.string().min(1).max(64),
    z.strictObject({
      name: z.string().min(1).max(64),
      version: z.string().min(1).max(128),
      trafficPercent: z.number().min(0).max(100),
      state: z.string().max(32),
      updatedAtMs: uint,
    }),
  ),
  keyEpoch: z.strictObject({ epoch: uint, startedAtMs: uint }),
  nodeTtlMs: z.number().int().min(nodeTtlMsMin).max(nodeTtlMsMax),
});

/** Whether a node record is expired (as of the last committed operation that looked at it). */
export function isExpired(n: NodeRecord): boolean {
  return n.expiredAtMs !== undefined;
}

export type RegistryResult = { ok: true; value?: unknown } | { ok: false; error: string };

export function isReadOnly(op: RegistryOp): boolean {
  return op.kind.startsWith("get_") || op.kind === "list_nodes";
}

export class RegistryStateMachine {
  #s: RegistryState = {
    nodes: {},
    placements: {},
    deployments: {},
    keyEpoch: { epoch: 0, startedAtMs: 0 },
    nodeTtlMs: nodeTtlMsDefault,
  };
  /** Earliest block time at which a live node can expire (a cache of the state, not state). */
  #nextExpiryMs = 0;

  /** Marks every node whose heartbeat is older than the TTL at `timestampMs` as expired. */
  expire(timestampMs: number): void {
    if (timestampMs < this.#nextExpiryMs) return;
    const s = this.#s;
    let next = Number.POSITIVE_INFINITY;
    for (const id of Object.keys(s.nodes)) {
      const n = s.nodes[id] as NodeRecord;
      if (n.expiredAtMs !== undefined) continue;
      const due = n.lastHeartbeatMs + s.nodeTtlMs;
      if (timestampMs > due) s.nodes[id] = { ...n, expiredAtMs: timestampMs };
      else next = Math.min(next, due + 1);
    }
    this.#nextExpiryMs = next;
  }

  /** Applies one committed operation at the committing block's timestamp. */
  apply(raw: unknown, timestampMs: number): RegistryResult {
    const parsed = registryOp.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const at = issue?.path.length ? `${issue.path.join(".")}: ` : "";
      return { ok: false, error: `invalid operation: ${at}${issue?.message}` };
    }
    const op = parsed.data;
    this.expire(timestampMs);
    const s = this.#s;
    switch (op.kind) {
      case "register_node": {
        const prev = s.nodes[op.nodeId];
        s.nodes[op.nodeId] = {
          nodeId: op.nodeId,
          region: op.region,
          gpuType: op.gpuType,
          address: op.address,
          registeredAtMs: prev?.registeredAtMs ?? timestampMs,
          lastHeartbeatMs: timestampMs,
        };
        this.#nextExpiryMs = Math.min(this.#nextExpiryMs, timestampMs + s.nodeTtlMs + 1);
        return { ok: true };
      }
      case "heartbeat": {
        const n = s.nodes[op.nodeId];
        if (!n) return { ok: false, error: `unknown node ${op.nodeId}: register it first` };
        const { expiredAtMs: _revived, ...live } = n;
        s.nodes[op.nodeId] = { ...live, lastHeartbeatMs: timestampMs };
        this.#nextExpiryMs = Math.min(this.#nextExpiryMs, timestampMs + s.nodeTtlMs + 1);
        return { ok: true };
      }
      case "deregister_node": {
        if (!s.nodes[op.nodeId]) return { ok: false, error: `unknown node ${op.nodeId}` };
        delete s.nodes[op.nodeId];
        for (const [expert, ids] of Object.entries(s.placements))
          s.placements[expert] = ids.filter((id) => id !== op.nodeId);
        return { ok: true };
      }
      case "set_placement": {
        const unknown = op.nodeIds.filter((id) => !s.nodes[id]);
        if (unknown.length > 0)
          return { ok: false, error: `unknown nodes ${unknown.join(", ")}: register them first` };
        if (new Set(op.nodeIds).size !== op.nodeIds.length)
          return { ok: false, error: `placement of ${op.expert} names a node twice` };
        s.placements[op.expert] = [...op.nodeIds];
        return { ok: true };
      }
      case "put_deployment":
        s.deployments[op.name] = {
          name: op.name,
          version: op.version,
          trafficPercent: op.trafficPercent,
          state: op.state,
          updatedAtMs: timestampMs,
        };
        return { ok: true };
      case "rotate_key_epoch":
        if (op.epoch <= s.keyEpoch.epoch)
          return {
            ok: false,
            error: `key epoch must grow: ${op.epoch} <= current ${s.keyEpoch.epoch}`,
          };
        s.keyEpoch = { epoch: op.epoch, startedAtMs: timestampMs };
        return { ok: true };
      case "set_node_ttl":
        s.nodeTtlMs = op.ttlMs;
        this.#nextExpiryMs = 0; // recompute at the next operation
        return { ok: true };
      case "get_placement":
        return { ok: true, value: s.placements[op.expert] ?? [] };
      case "get_node":
        return { ok: true, value: s.nodes[op.nodeId] ?? null };
      case "list_nodes":
        return {
          ok: true,
          value: Object.values(s.nodes).sort((a, b) => (a.nodeId < b.nodeId ? -1 : 1)),
        };
      case "get_registry":
        return { ok: true, value: structuredClone(s) };
    }
  }

  snapshot(): RegistryState {
    return structuredClone(this.#s);
  }

  restore(state: RegistryState): void {
    // Snapshots written before node expiry existed carry no TTL.
    this.#s = { ...structuredClone(state), nodeTtlMs: state.nodeTtlMs ?? nodeTtlMsDefault };
    this.#nextExpiryMs = 0;
  }
}
