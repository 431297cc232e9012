// CIDv1 with SHA-256 multihashes, as IPFS uses: `raw` (0x55) for chunk leaves, `dag-pb` (0x70) for
// UnixFS file and directory nodes. Hashing uses node:crypto (SHA-NI where the CPU has it); the
// digest is wrapped as a multihash so that any IPFS implementation computes the same CID.
// Reference: https://github.com/multiformats/cid, https://github.com/multiformats/multihash

import { createHash, webcrypto } from "node:crypto";
import * as dagPb from "@ipld/dag-pb";
import { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import * as Digest from "multiformats/hashes/digest";

export const sha256Code = 0x12;
export const rawCode = raw.code;
export const dagPbCode = dagPb.code;

export function sha256(bytes: Uint8Array): Uint8Array {
  return createHash("sha256").update(bytes).digest();
}

export function cidFor(codec: number, bytes: Uint8Array): CID {
  return CID.createV1(codec, Digest.create(sha256Code, sha256(bytes)));
}

/** cidFor, hashed on libuv's thread pool (WebCrypto), so that many chunks hash on all cores. */
export async function cidForAsync(codec: number, bytes: Uint8Array): Promise<CID> {
  const digest = new Uint8Array(await webcrypto.subtle.digest("SHA-256", bytes));
  return CID.createV1(codec, Digest.create(sha256Code, digest));
}

/** True when `bytes` hash to `cid`'s multihash (SHA-256 only: other hashes are rejected as unknown). */
export function bytesMatchCid(cid: CID, bytes: Uint8Array): boolean {
  if (cid.multihash.code !== sha256Code) return false;
  const digest = sha256(bytes);
  const expected = cid.multihash.digest;
  if (digest.length !== expected.length) return false;
  for (let i = 0; i < digest.length; i++) if (digest[i] !== expected[i]) return false;
  return true;
}

/** Parses a CID string, or returns undefined (for file names and user input). */
export function parseCid(text: string): CID | undefined {
  try {
    return CID.parse(text);
  } catch {
    return undefined;
  }
}

export { CID };
