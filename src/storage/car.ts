// CARv1 export and import, the IPFS archive format: `ipfs dag import`, `ipfs-car unpack`, Helia
// and any CAR reader take what `exportCar` writes. Export writes a checkpoint's (or one shard's)
// whole DAG in depth-first order with its root in the header, atomically (temp, fsync, rename).
// Import trusts nothing: every block must hash to its CID, the single root's DAG must be complete
// and contain every block of the file, and all of this is checked in memory before one byte goes
// into the store; a failure names the CAR file and the CID (or the byte offset) concerned.
// Reference: https://ipld.io/specs/transport/car/carv1/

import {
  closeSync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import { CarBlockIterator, CarWriter } from "@ipld/car";
import { fsyncDir } from "./atomic.ts";
import type { CheckpointStore, SaveReport } from "./checkpoint-store.ts";
import { bytesMatchCid, CID, dagPbCode } from "./cid.ts";
import { shardBytesMax } from "./constants.ts";
import { readDirectory, readFileLeaves } from "./dag.ts";
import { StorageError } from "./errors.ts";
import type { Manifest, TierName } from "./manifest.ts";

/** Largest CAR file `importCar` reads (it verifies the whole file in memory before storing). */
export const carFileBytesMax = shardBytesMax;

export interface ExportOptions {
  /** Export only this shard (its file DAG's root becomes the CAR root). */
  readonly shard?: string;
  readonly onProgress?: (doneBlocks: number, totalBlocks: number) => void;
}

/** The blocks of a DAG in depth-first order, root first. */
function dagOrder(
  store: CheckpointStore,
  tier: TierName,
  manifest: Manifest,
  shard: string | undefined,
): { root: CID; cids: CID[] } {
  const blocks = store.blockStore(tier);
  const get = (cid: CID) => blocks.get(cid);
  const fileBlocks = (root: CID): CID[] => {
    const { leaves, inner } = readFileLeaves(root, get);
    // inner nodes are listed in walk order; put them before the leaves (readers need no order).
    return root.code === dagPbCode ? [...inner, ...leaves.map((l) => l.cid)] : [root];
  };
  if (shard !== undefined) {
    const entry = manifest.shards.find((s) => s.name === shard);
    if (entry === undefined) {
      throw new StorageError(
        "not-found",
        `checkpoint ${manifest.id} has no shard ${JSON.stringify(shard)}; it has ${manifest.shards.map((s) => s.name).join(", ")}`,
      );
    }
    const root = CID.parse(entry.root);
    return { root, cids: fileBlocks(root) };
  }
  const root = CID.parse(manifest.root);
  const cids = [root];
  for (const e of readDirectory(root, get)) cids.push(...fileBlocks(e.cid));
  return { root, cids };
}

/** Writes checkpoint `id` of `tier` (or one shard of it) to `path` as a CARv1 file. */
export async function exportCar(
  store: CheckpointStore,
  tier: TierName,
  id: string,
  path: string,
  options: ExportOptions = {},
): Promise<{ root: CID; blocks: number; bytes: number }> {
  const manifest = store.manifest(tier, id);
  const { root, cids } = dagOrder(store, tier, manifest, options.shard);
  const blocks = store.blockStore(tier);
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  const fd = openSync(temp, "w");
  let bytes = 0;
  try {
    const { writer, out } = CarWriter.create([root]);
    const drain = (async () => {
      for await (const chunk of out) {
        let off = 0;
        while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
        bytes += chunk.length;
      }
    })();
    const seen = new Set<string>();
    let done = 0;
    for (const cid of cids) {
      const key = cid.toString();
      if (seen.has(key)) continue; // a chunk repeated within a shard is written once
      seen.add(key);
      await writer.put({ cid, bytes: blocks.get(cid) });
      options.onProgress?.(++done, cids.length);
    }
    await writer.close();
    await drain;
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(temp, { force: true });
    throw err;
  }
  closeSync(fd);
  renameSync(temp, path);
  fsyncDir(dirname(path));
  return { root, blocks: new Set(cids.map(String)).size, bytes };
}

export interface CarContents {
  readonly root: CID;
  readonly blocks: Map<string, Uint8Array>;
}

/** Reads and checks a CARv1 file: every block against its CID, exactly one root. */
export async function readCar(path: string): Promise<CarContents> {
  const bad = (message: string, cid?: string): StorageError =>
    new StorageError("bad-car", `${path}: ${message}`, {
      file: path,
      ...(cid !== undefined ? { cid } : {}),
    });
  let size: number;
  try {
    size = statSync(path).size;
  } catch {
    throw new StorageError("not-found", `no CAR file at ${path}`, { file: path });
  }
  if (size > carFileBytesMax)
    throw bad(`${size} B is above the import limit of ${carFileBytesMax} B`);
  const bytes = readFileSync(path);
  let iterator: CarBlockIterator;
  try {
    iterator = await CarBlockIterator.fromBytes(bytes);
  } catch (err) {
    throw bad(`not a CAR file: ${(err as Error).message}`);
  }
  if (iterator.version !== 1) throw bad(`CAR version ${iterator.version}; only CARv1 is imported`);
  const roots = await iterator.getRoots();
  if (roots.length !== 1 || roots[0] === undefined)
    throw bad(`expected exactly one root; got ${roots.length}`);
  const blocks = new Map<string, Uint8Array>();
  try {
    for await (const block of iterator) {
      const key = block.cid.toString();
      if (!bytesMatchCid(block.cid, block.bytes))
        throw bad(`block ${key} does not hash to its CID (corrupt)`, key);
      blocks.set(key, block.bytes);
    }
  } catch (err) {
    if (err instanceof StorageError) throw err;
    throw bad(`malformed after ${blocks.size} blocks: ${(err as Error).message}`);
  }
  return { root: roots[0], blocks };
}

/**
 * Imports a CAR file as checkpoint `id` of `tier`. The root is a checkpoint directory, or a single
 * file DAG that becomes a one-shard checkpoint named `shardName`. Checked completely first.
 */
export async function importCar(
  store: CheckpointStore,
  tier: TierName,
  id: string,
  path: string,
  options: { shardName?: string; step?: number } = {},
): Promise<SaveReport> {
  const { root, blocks } = await readCar(path);
  let dag: ImportedDag;
  try {
    dag = checkDag(path, root, blocks, options.shardName ?? "shard");
  } catch (err) {
    // DAG errors name the block; say which file it came from.
    if (err instanceof StorageError && err.file !== path) {
      throw new StorageError(
        err.code === "missing-block" ? "missing-block" : "bad-car",
        `${path}: ${err.message}`,
        {
          file: path,
          ...(err.cid !== undefined ? { cid: err.cid } : {}),
        },
      );
    }
    throw err;
  }
  return store.importDag(tier, id, dag, options.step);
}

type ImportedDag = Parameters<CheckpointStore["importDag"]>[2];

/** The checkpoint DAG under `root`, complete and without foreign blocks, or a StorageError. */
function checkDag(
  path: string,
  root: CID,
  blocks: Map<string, Uint8Array>,
  shardName: string,
): ImportedDag {
  const used = new Set<string>();
  const get = (cid: CID): Uint8Array => {
    const key = cid.toString();
    const b = blocks.get(key);
    if (b === undefined) {
      throw new StorageError(
        "missing-block",
        `${path}: block ${key} of the root's DAG is not in the CAR file`,
        {
          file: path,
          cid: key,
        },
      );
    }
    used.add(key);
    return b;
  };
  const isDirectory =
    root.code === dagPbCode &&
    (() => {
      try {
        readDirectory(root, get);
        return true;
      } catch {
        return false;
      }
    })();
  used.clear();
  const entries = isDirectory
    ? readDirectory(root, get).map((e) => ({ name: e.name, cid: e.cid }))
    : [{ name: shardName, cid: root }];
  for (const e of entries) {
    const { leaves } = readFileLeaves(e.cid, get);
    for (const l of leaves) {
      const b = get(l.cid);
      if (b.length !== l.length) {
        throw new StorageError(
          "bad-car",
          `${path}: block ${l.cid} holds ${b.length} B where its parent says ${l.length}`,
          {
            file: path,
            cid: l.cid.toString(),
          },
        );
      }
    }
  }
  for (const key of blocks.keys()) {
    if (!used.has(key)) {
      throw new StorageError(
        "bad-car",
        `${path}: block ${key} is not part of the root's DAG (corrupt CID or foreign block)`,
        {
          file: path,
          cid: key,
        },
      );
    }
  }
  return { root: isDirectory ? root : undefined, entries, get };
}
