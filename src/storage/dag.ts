// The Merkle DAG of one shard, in UnixFS form so that standard IPFS tools (kubo `ipfs cat`,
// ipfs-unixfs-exporter, `ipfs-car unpack`) read it: chunks are `raw` leaves, inner nodes are dag-pb
// nodes with UnixFS `file` data and `blockSizes`, at most `dagLinksMax` links each (kubo's balanced
// layout); a shard of one chunk is that raw leaf itself, as kubo does with raw leaves. A checkpoint
// is a UnixFS `directory` node whose entries are its shards, so a checkpoint is one CID.
// Reference: https://github.com/ipfs/specs/blob/main/UNIXFS.md
//
// The reader checks structure as it walks (UnixFS type, blockSizes against links, depth bound);
// the bytes of every block are checked against their CID by the block source it is given.

import * as dagPb from "@ipld/dag-pb";
import { UnixFS } from "ipfs-unixfs";
import { invariant } from "../common/assert.ts";
import { type CID, cidFor, cidForAsync, dagPbCode, rawCode } from "./cid.ts";
import { dagDepthMax, dagLinksMax, leafBytesMax, shardNameBytesMax } from "./constants.ts";
import { corruptBlock, StorageError } from "./errors.ts";

export interface DagBlock {
  readonly cid: CID;
  readonly bytes: Uint8Array;
}

/** A chunk of a shard and where it sits. */
export interface LeafRef {
  readonly cid: CID;
  readonly offset: number;
  readonly length: number;
}

export interface FileDag {
  readonly root: CID;
  readonly size: number;
  readonly leaves: LeafRef[];
  /** Inner dag-pb nodes (not the leaves), root last. */
  readonly nodes: DagBlock[];
}

interface Built {
  readonly cid: CID;
  readonly fileSize: number;
  readonly tsize: number;
}

/**
 * Builds the UnixFS file DAG over `data` cut at `cuts` (FastCDC's output); a chunk longer than
 * `leafBytesMax` is split into leaves of at most that size. Leaves are not copied: `leaves` names
 * their ranges of `data`.
 */
export function buildFileDag(data: Uint8Array, cuts: readonly number[]): FileDag {
  return buildFileDagOver(
    leafRanges(data, cuts).map((r) => ({
      ...r,
      cid: cidFor(rawCode, data.subarray(r.offset, r.offset + r.length)),
    })),
  );
}

/** The same DAG with the leaves hashed concurrently on libuv's thread pool (WebCrypto digest). */
export async function buildFileDagAsync(
  data: Uint8Array,
  cuts: readonly number[],
): Promise<FileDag> {
  const leaves = await Promise.all(
    leafRanges(data, cuts).map(async (r) => ({
      ...r,
      cid: await cidForAsync(rawCode, data.subarray(r.offset, r.offset + r.length)),
    })),
  );
  return buildFileDagOver(leaves);
}

function leafRanges(
  data: Uint8Array,
  cuts: readonly number[],
): { offset: number; length: number }[] {
  invariant(cuts.length === 0 || cuts[cuts.length - 1] === data.length, "cuts end at data.length");
  const out: { offset: number; length: number }[] = [];
  let start = 0;
  for (const end of cuts.length === 0 ? [0] : cuts) {
    invariant(end >= start, "cuts ascend");
    // A chunk above leafBytesMax becomes consecutive leaves of at most leafBytesMax (kubo's limit).
    do {
      const length = Math.min(leafBytesMax, end - start);
      out.push({ offset: start, length });
      start += length;
    } while (start < end);
  }
  return out;
}

/** The UnixFS file DAG over hashed leaves (in order, contiguous from offset 0). */
function buildFileDagOver(leaves: LeafRef[]): FileDag {
  let level: Built[] = leaves.map((l) => ({ cid: l.cid, fileSize: l.length, tsize: l.length }));
  const size = leaves.reduce((s, l) => s + l.length, 0);
  const nodes: DagBlock[] = [];
  while (level.length > 1) {
    const next: Built[] = [];
    for (let i = 0; i < level.length; i += dagLinksMax) {
      const group = level.slice(i, i + dagLinksMax);
      const unixfs = new UnixFS({ type: "file", blockSizes: group.map((b) => BigInt(b.fileSize)) });
      const bytes = dagPb.encode(
        dagPb.prepare({
          Data: unixfs.marshal(),
          Links: group.map((b) => ({ Hash: b.cid, Name: "", Tsize: b.tsize })),
        }),
      );
      const cid = cidFor(dagPbCode, bytes);
      nodes.push({ cid, bytes });
      next.push({
        cid,
        fileSize: group.reduce((s, b) => s + b.fileSize, 0),
        tsize: bytes.length + group.reduce((s, b) => s + b.tsize, 0),
      });
    }
    level = next;
  }
  const top = level[0];
  invariant(top !== undefined, "a DAG has a root");
  return { root: top.cid, size, leaves, nodes };
}

export function checkShardName(name: string): void {
  const bytes = Buffer.byteLength(name, "utf8");
  if (
    bytes === 0 ||
    bytes > shardNameBytesMax ||
    name.includes("/") ||
    name.includes("\0") ||
    name === "." ||
    name === ".."
  ) {
    throw new StorageError(
      "bad-input",
      `shard name ${JSON.stringify(name)}: expected 1–${shardNameBytesMax} bytes without '/' or NUL, not "." or ".."`,
    );
  }
}

export interface DirectoryEntry {
  readonly name: string;
  readonly cid: CID;
  /** Cumulative size of the entry's DAG (dag-pb Tsize). */
  readonly tsize: number;
}

/** A UnixFS directory node over `entries` (a checkpoint: shard name → shard root). */
export function buildDirectory(entries: readonly DirectoryEntry[]): DagBlock {
  const names = new Set<string>();
  for (const e of entries) {
    checkShardName(e.name);
    if (names.has(e.name))
      throw new StorageError("bad-input", `shard name ${JSON.stringify(e.name)} appears twice`);
    names.add(e.name);
  }
  const bytes = dagPb.encode(
    dagPb.prepare({
      Data: new UnixFS({ type: "directory" }).marshal(),
      Links: entries.map((e) => ({ Hash: e.cid, Name: e.name, Tsize: e.tsize })),
    }),
  );
  return { cid: cidFor(dagPbCode, bytes), bytes };
}

/** Reads a block's verified plaintext; throws a StorageError when it is missing or corrupt. */
export type BlockSource = (cid: CID) => Uint8Array;

function decodeNode(cid: CID, bytes: Uint8Array): { node: dagPb.PBNode; unixfs: UnixFS } {
  try {
    const node = dagPb.decode(bytes);
    if (node.Data === undefined) throw new Error("dag-pb node without UnixFS data");
    return { node, unixfs: UnixFS.unmarshal(node.Data) };
  } catch (err) {
    throw corruptBlock(
      cid.toString(),
      "(dag node)",
      `not a UnixFS dag-pb node: ${(err as Error).message}`,
    );
  }
}

/** The entries of a checkpoint's directory node. */
export function readDirectory(root: CID, get: BlockSource): DirectoryEntry[] {
  if (root.code !== dagPbCode)
    throw corruptBlock(root.toString(), "(checkpoint root)", "not a dag-pb directory");
  const { node, unixfs } = decodeNode(root, get(root));
  if (unixfs.type !== "directory") {
    throw corruptBlock(
      root.toString(),
      "(checkpoint root)",
      `UnixFS type ${unixfs.type}, expected directory`,
    );
  }
  return node.Links.map((l) => {
    const name = l.Name ?? "";
    checkShardName(name);
    return { name, cid: l.Hash, tsize: l.Tsize ?? 0 };
  });
}

/**
 * The leaves of a shard's file DAG in order, with their offsets. Inner nodes are fetched and
 * checked (type, blockSizes against links); leaves are not fetched.
 */
export function readFileLeaves(root: CID, get: BlockSource): { leaves: LeafRef[]; inner: CID[] } {
  const leaves: LeafRef[] = [];
  const inner: CID[] = [];
  const walk = (cid: CID, expectedSize: number | undefined, depth: number): number => {
    if (depth > dagDepthMax)
      throw corruptBlock(cid.toString(), "(dag node)", `DAG deeper than ${dagDepthMax}`);
    if (cid.code === rawCode) {
      if (expectedSize === undefined) {
        // A one-chunk shard: the root is the leaf; its size comes from the block itself.
        const length = get(cid).length;
        leaves.push({ cid, offset: 0, length });
        return length;
      }
      const offset =
        leaves.length === 0
          ? 0
          : (leaves[leaves.length - 1] as LeafRef).offset +
            (leaves[leaves.length - 1] as LeafRef).length;
      leaves.push({ cid, offset, length: expectedSize });
      return expectedSize;
    }
    if (cid.code !== dagPbCode)
      throw corruptBlock(
        cid.toString(),
        "(dag node)",
        `unsupported codec 0x${cid.code.toString(16)}`,
      );
    inner.push(cid);
    const { node, unixfs } = decodeNode(cid, get(cid));
    if (unixfs.type !== "file" && unixfs.type !== "raw") {
      throw corruptBlock(cid.toString(), "(dag node)", `UnixFS type ${unixfs.type}, expected file`);
    }
    if (unixfs.data !== undefined && unixfs.data.length > 0) {
      throw corruptBlock(
        cid.toString(),
        "(dag node)",
        "inline file data is not produced by this store",
      );
    }
    if (unixfs.blockSizes.length !== node.Links.length) {
      throw corruptBlock(
        cid.toString(),
        "(dag node)",
        `${node.Links.length} links but ${unixfs.blockSizes.length} blockSizes`,
      );
    }
    let total = 0;
    node.Links.forEach((link, k) => {
      const size = Number(unixfs.blockSizes[k]);
      const got = walk(link.Hash, size, depth + 1);
      if (got !== size)
        throw corruptBlock(
          cid.toString(),
          "(dag node)",
          `link ${k} holds ${got} B, blockSizes says ${size}`,
        );
      total += size;
    });
    if (expectedSize !== undefined && total !== expectedSize) {
      throw corruptBlock(
        cid.toString(),
        "(dag node)",
        `holds ${total} B, parent says ${expectedSize}`,
      );
    }
    return total;
  };
  walk(root, undefined, 0);
  return { leaves, inner };
}
