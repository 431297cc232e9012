// A checkpoint's manifest: the root of its DAG (a UnixFS directory of shards), the metadata that
// is not content (tier, step, time) and the list of every block of its DAG, so that garbage
// collection can mark without decrypting anything. Manifests are the forest index of a tier: the
// set of live shard roots is the union of their `shards`. Parsed with a schema at the edge: a
// manifest file is untrusted input.

import { readFileSync } from "node:fs";
import { z } from "zod";
import { parseCid } from "./cid.ts";
import { checkpointIdCharsMax } from "./constants.ts";
import { StorageError } from "./errors.ts";

export const manifestFormat = "moe-swarm-checkpoint/1";
export const tierNames = ["hot", "warm", "cold"] as const;
export type TierName = (typeof tierNames)[number];

const cidString = z.string().refine((s) => parseCid(s)?.toString() === s, "a CID string");
const hex64 = z.string().regex(/^[0-9a-f]{64}$/, "a SHA-256 hex digest");

export const checkpointIdPattern = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export const shardEntry = z.strictObject({
  name: z.string().min(1),
  root: cidString,
  sizeBytes: z.number().int().min(0),
  sha256: hex64,
});

export const manifestSchema = z.strictObject({
  format: z.literal(manifestFormat),
  id: z.string().max(checkpointIdCharsMax).regex(checkpointIdPattern),
  tier: z.enum(tierNames),
  step: z.number().int().min(0).optional(),
  createdAtMs: z.number().int().min(0),
  root: cidString,
  shards: z.array(shardEntry),
  /** Every block of the DAG (directory, inner nodes, leaves), deduplicated. */
  blocks: z.array(cidString),
  /** MinHash features (hex) of the checkpoint's chunks, by CID: the tier's similarity index. */
  features: z.record(z.string(), z.string()).optional(),
  /** Key file of the data key the checkpoint's new blocks are sealed with (cold tier). */
  keyId: z.string().optional(),
});

export type Manifest = z.infer<typeof manifestSchema>;
export type ShardEntry = z.infer<typeof shardEntry>;

export function checkCheckpointId(id: string): void {
  if (id.length === 0 || id.length > checkpointIdCharsMax || !checkpointIdPattern.test(id)) {
    throw new StorageError(
      "bad-input",
      `checkpoint id ${JSON.stringify(id)}: expected 1–${checkpointIdCharsMax} characters of letters, digits, '.', '_', '-', starting with a letter or digit`,
    );
  }
}

export function readManifest(path: string): Manifest {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      throw new StorageError("not-found", `no checkpoint manifest at ${path}`, { file: path });
    }
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new StorageError(
      "corrupt-block",
      `manifest ${path} is not JSON: ${(err as Error).message}`,
      { file: path },
    );
  }
  const parsed = manifestSchema.safeParse(json);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    throw new StorageError(
      "corrupt-block",
      `manifest ${path} is malformed at ${first?.path.join(".") || "(top)"}: ${first?.message}`,
      { file: path },
    );
  }
  return parsed.data;
}

export function encodeManifest(m: Manifest): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(m, null, 1)}\n`);
}
