// Bytes ↔ messages at the network edge (replica links and the client port) and in the WAL.
// JSON with byte arrays tagged as {"$b": base64}; every decoded value is checked against a schema
// with explicit length caps before the replica sees it, so a forged, truncated, oversized or
// malformed frame is refused with a reason and never throws past the edge.

import { z } from "zod";
import {
  batchRequestsMax,
  clientIdBytesMax,
  fetchBlocksMax,
  messageBytesMax,
  replicaCount,
  snapshotBytesTotalMax,
  snapshotChunkBytes,
} from "./constants.ts";
import { registryStateSchema } from "./registry.ts";
import { sessionEntrySchema } from "./state-sync.ts";
import type { ClientRequest, Message, ReplicaMsg } from "./types.ts";

/** Largest signature accepted on the wire (ML-DSA-65 is 3,309 bytes; ML-DSA-87 4,627). */
export const signatureBytesMax = 4_627;

export function encodeJson(value: unknown): Uint8Array {
  return new TextEncoder().encode(
    JSON.stringify(value, (_k, v: unknown) =>
      v instanceof Uint8Array ? { $b: Buffer.from(v).toString("base64") } : v,
    ),
  );
}

function parseJson(bytes: Uint8Array): unknown {
  return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes), (_k, v: unknown) => {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      const o = v as Record<string, unknown>;
      const keys = Object.keys(o);
      if (keys.length === 1 && keys[0] === "$b" && typeof o.$b === "string") {
        if (o.$b.length > 4 * Math.ceil(signatureBytesMax / 3))
          throw new RangeError("byte field too long");
        return new Uint8Array(Buffer.from(o.$b, "base64"));
      }
    }
    return v;
  });
}

const bytes = z
  .instanceof(Uint8Array)
  .refine((b) => b.length > 0 && b.length <= signatureBytesMax, {
    message: `expected 1..${signatureBytesMax} signature bytes`,
  });
const hash = z.string().regex(/^[0-9a-f]{64}$/, "a 64-hex-digit id");
const uint = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const author = z
  .number()
  .int()
  .min(0)
  .max(replicaCount - 1);
const signature = z.strictObject({ author, sig: bytes });
const qc = z.strictObject({
  blockId: hash,
  round: uint,
  height: uint,
  votes: z.array(signature).max(replicaCount),
});
const tc = z.strictObject({
  view: uint,
  timeouts: z.array(z.strictObject({ author, highQcRound: uint, sig: bytes })).max(replicaCount),
});
export const clientRequest = z.strictObject({
  clientId: z.string().min(1).max(clientIdBytesMax),
  seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  op: z.unknown(),
});
const block = z.strictObject({
  id: hash,
  parentId: hash,
  round: uint,
  height: uint,
  author,
  timestampMs: uint,
  payload: z.array(clientRequest).max(batchRequestsMax),
  qc,
});

export const replicaMsg = z.discriminatedUnion("type", [
  z.strictObject({ type: z.literal("proposal"), block, tc: tc.optional(), sig: bytes }),
  z.strictObject({
    type: z.literal("vote"),
    blockId: hash,
    round: uint,
    height: uint,
    author,
    sig: bytes,
  }),
  z.strictObject({
    type: z.literal("commit-vote"),
    blockId: hash,
    round: uint,
    height: uint,
    author,
    sig: bytes,
  }),
  z.strictObject({
    type: z.literal("commit-cert"),
    blockId: hash,
    round: uint,
    height: uint,
    votes: z.array(signature).max(replicaCount),
  }),
  z.strictObject({
    type: z.literal("timeout"),
    view: uint,
    highQc: qc,
    lastTc: tc.optional(),
    author,
    sig: bytes,
  }),
  z.strictObject({ type: z.literal("fetch"), blockId: hash }),
  z.strictObject({ type: z.literal("blocks"), blocks: z.array(block).max(fetchBlocksMax) }),
  z.strictObject({ type: z.literal("sync"), highQc: qc, tc: tc.optional() }),
  z.strictObject({
    type: z.literal("checkpoint"),
    height: uint,
    blockId: hash,
    stateDigest: hash,
    author,
    sig: bytes,
  }),
  z.strictObject({ type: z.literal("catchup"), height: uint }),
  z.strictObject({
    type: z.literal("snapshot"),
    block,
    registry: registryStateSchema,
    sessions: z.array(sessionEntrySchema),
    stateDigest: hash,
    sigs: z.array(signature).max(replicaCount),
  }),
  z.strictObject({
    type: z.literal("snapshot-chunk"),
    height: uint,
    stateDigest: hash,
    totalBytes: z.number().int().min(1).max(snapshotBytesTotalMax),
    index: uint,
    count: z
      .number()
      .int()
      .min(1)
      .max(Math.ceil(snapshotBytesTotalMax / snapshotChunkBytes)),
    data: z
      .string()
      .max(4 * Math.ceil(snapshotChunkBytes / 3))
      .regex(/^[A-Za-z0-9+/]*={0,2}$/, "base64"),
    block: block.optional(),
    sigs: z.array(signature).max(replicaCount).optional(),
  }),
]);

/** What a client may send on the client port. */
export const clientFrame = z.discriminatedUnion("type", [
  z.strictObject({ type: z.literal("request"), request: clientRequest }),
  z.strictObject({ type: z.literal("status") }),
]);
export type ClientFrame = { type: "request"; request: ClientRequest } | { type: "status" };

export const replyFrame = z.discriminatedUnion("type", [
  z.strictObject({
    type: z.literal("reply"),
    clientId: z.string(),
    seq: uint,
    replica: author,
    height: uint,
    result: z.unknown(),
  }),
  z.strictObject({ type: z.literal("status"), status: z.record(z.string(), z.unknown()) }),
]);

export type Decoded<T> = { ok: true; value: T } | { ok: false; reason: string };

/** Parses and validates one frame; never throws. */
export function decodeWith<T>(schema: z.ZodType<T>, frame: Uint8Array): Decoded<T> {
  if (frame.length > messageBytesMax)
    return { ok: false, reason: `oversized frame: ${frame.length} bytes > ${messageBytesMax}` };
  let raw: unknown;
  try {
    raw = parseJson(frame);
  } catch (err) {
    return {
      ok: false,
      reason: `malformed frame (truncated or not JSON): ${(err as Error).message}`,
    };
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return {
      ok: false,
      reason: `invalid message at ${issue?.path.join(".") || "(root)"}: ${issue?.message}`,
    };
  }
  return { ok: true, value: parsed.data };
}

export function decodeReplicaMsg(frame: Uint8Array): Decoded<ReplicaMsg> {
  return decodeWith(replicaMsg, frame) as Decoded<ReplicaMsg>;
}

export function encodeMessage(
  msg: Message | ClientFrame | { type: "status"; status: unknown },
): Uint8Array {
  return encodeJson(msg);
}

export function decodeJsonUnchecked(frame: Uint8Array): unknown {
  return parseJson(frame);
}
