// The block store of one tier on local disk: one file per block, named by its CID, holding the
// tier's record encoding (block-record.ts). Writes are atomic (temp, fsync, rename), so a crash
// leaves a block either absent or whole; reads decode the record and check the bytes against the
// CID before anyone sees them, so a flipped byte anywhere in a file is reported with its CID and
// path, never returned. An LRU cache keeps recently read blocks in memory.

import {
  existsSync,
  linkSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { invariant } from "../common/assert.ts";
import { EnvelopeError } from "../crypto/envelope.ts";
import { fsyncDir, tempSuffix, writeFileAtomic } from "./atomic.ts";
import {
  type Compression,
  type DeltaRef,
  decodeRecord,
  encodeRecord,
  parseRecordHeader,
  RecordFormatError,
  type RecordHeader,
} from "./block-record.ts";
import { bytesMatchCid, type CID, parseCid } from "./cid.ts";
import { chunkBytesMax, deltaChainMax } from "./constants.ts";
import { corruptBlock, missingBlock, StorageError } from "./errors.ts";
import { type CrashHook, noCrash } from "./faults.ts";
import { ByteLru } from "./lru.ts";

export interface BlockStoreInit {
  readonly dir: string;
  readonly compression: Compression;
  readonly cacheBytesMax: number;
  /** The data key of a sealed record's key id (cold tier); throws when it cannot be opened. */
  readonly dataKey?: (keyId: string) => Uint8Array;
  readonly crash?: CrashHook;
}

export interface PutOptions {
  readonly phase: number;
  /** Float delta against the same region of an earlier checkpoint. */
  readonly delta?: DeltaRef;
  /** Dictionary delta against one similar earlier block (super-feature match). */
  readonly dict?: DeltaRef;
  /**
   * The same region of an earlier checkpoint, too unlike the block for a float delta (below the
   * similarity threshold) but still usable as the range coder's context for its byte planes.
   */
  readonly context?: DeltaRef;
  readonly seal?: { readonly keyId: string; readonly dataKey: Uint8Array };
}

export class BlockStore {
  readonly dir: string;
  readonly compression: Compression;
  readonly cache: ByteLru;
  readonly #dataKey: (keyId: string) => Uint8Array;
  readonly #crash: CrashHook;

  constructor(init: BlockStoreInit) {
    this.dir = init.dir;
    this.compression = init.compression;
    this.cache = new ByteLru(init.cacheBytesMax);
    this.#dataKey =
      init.dataKey ??
      ((keyId) => {
        throw new StorageError(
          "wrong-key",
          `block sealed under key ${keyId}: this tier needs the operator's secret key (--key)`,
        );
      });
    this.#crash = init.crash ?? noCrash;
  }

  pathOf(cid: CID | string): string {
    const s = cid.toString();
    return join(this.dir, s.slice(-2), s);
  }

  has(cid: CID): boolean {
    return existsSync(this.pathOf(cid));
  }

  /**
   * Stores `plaintext` under `cid` unless present; returns the bytes written (0 for a duplicate)
   * and whether the record became a delta. The caller derived `cid` from these very bytes (the
   * DAG builder, or a CAR import that checked them); re-hashing here would cost a second SHA-256
   * pass over every checkpoint, so only the cheap checks run, and every read verifies the hash.
   */
  put(cid: CID, plaintext: Uint8Array, options: PutOptions): { bytes: number; delta: boolean } {
    invariant(
      cid.multihash.code === 0x12 && cid.multihash.digest.length === 32,
      "put: a SHA-256 CID",
    );
    invariant(
      plaintext.length <= chunkBytesMax,
      () => `put: ${plaintext.length} B block above the limit`,
    );
    if (this.has(cid)) return { bytes: 0, delta: false };
    // A base that cannot be read (damaged, missing) only costs compression: store the block whole.
    const readable = <T>(read: () => T): T | undefined => {
      try {
        return read();
      } catch (err) {
        if (err instanceof StorageError) return undefined;
        throw err;
      }
    };
    let delta: { ref: DeltaRef; baseBytes: Uint8Array } | undefined;
    if (options.delta !== undefined) {
      const ref = options.delta;
      invariant(ref.baseDepth < deltaChainMax, "delta base below the chain limit");
      const baseBytes = readable(() => this.baseRange(ref.bases, ref.offset, plaintext.length));
      if (baseBytes !== undefined) delta = { ref, baseBytes };
    }
    let context: { ref: DeltaRef; baseBytes: Uint8Array } | undefined;
    if (options.context !== undefined && delta === undefined) {
      const ref = options.context;
      invariant(ref.baseDepth < deltaChainMax, "context base below the chain limit");
      const baseBytes = readable(() => this.baseRange(ref.bases, ref.offset, plaintext.length));
      if (baseBytes !== undefined) context = { ref, baseBytes };
    }
    let dict: { ref: DeltaRef; baseBytes: Uint8Array } | undefined;
    if (options.dict !== undefined) {
      const ref = options.dict;
      invariant(ref.baseDepth < deltaChainMax, "dictionary base below the chain limit");
      const baseBytes = readable(() => this.get(ref.bases[0] as CID));
      if (baseBytes !== undefined) dict = { ref, baseBytes };
    }
    const record = encodeRecord({
      cid,
      plaintext,
      phase: options.phase,
      compression: this.compression,
      ...(delta !== undefined ? { delta } : {}),
      ...(dict !== undefined ? { dict } : {}),
      ...(context !== undefined ? { context } : {}),
      ...(options.seal !== undefined ? { seal: options.seal } : {}),
    });
    this.#crash("block:before-write");
    writeFileAtomic(this.pathOf(cid), record.bytes, this.#crash);
    return { bytes: record.bytes.length, delta: record.delta };
  }

  /** The block's plaintext, checked against its CID. */
  get(cid: CID): Uint8Array {
    const key = cid.toString();
    const cached = this.cache.get(key);
    if (cached !== undefined) return cached;
    const path = this.pathOf(cid);
    let record: Uint8Array;
    try {
      record = readFileSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") throw missingBlock(key, path);
      throw err;
    }
    let plain: Uint8Array;
    try {
      plain = decodeRecord(cid, record, {
        baseRange: (bases, offset, length) => this.baseRange(bases, offset, length),
        block: (base) => this.get(base),
        dataKey: (keyId) => {
          try {
            return this.#dataKey(keyId);
          } catch (err) {
            // A wrong operator key is the caller's to fix; anything else about the key this record
            // names (a missing or damaged key file, a corrupted key id) is this block's problem.
            if (err instanceof StorageError && err.code !== "wrong-key") {
              throw corruptBlock(
                key,
                path,
                `its data key ${keyId} cannot be read (${err.message})`,
              );
            }
            throw err;
          }
        },
      });
    } catch (err) {
      if (err instanceof RecordFormatError) throw corruptBlock(key, path, err.message);
      if (err instanceof EnvelopeError && err.code === "tampered")
        throw corruptBlock(key, path, err.message);
      throw err;
    }
    if (!bytesMatchCid(cid, plain))
      throw corruptBlock(key, path, "content does not hash to its CID");
    this.cache.set(key, plain);
    return plain;
  }

  /** `length` bytes of the concatenated plaintext of `bases` from `offset` (zero past the end). */
  baseRange(bases: readonly CID[], offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    let at = 0; // position of the current base's first byte in the concatenation
    for (const base of bases) {
      if (at >= offset + length) break;
      const bytes = this.get(base);
      const from = Math.max(offset, at);
      const to = Math.min(offset + length, at + bytes.length);
      if (to > from) out.set(bytes.subarray(from - at, to - at), from - offset);
      at += bytes.length;
    }
    return out;
  }

  /** The record header of a stored block (what it depends on), without decoding the payload. */
  header(cid: CID): RecordHeader {
    const path = this.pathOf(cid);
    let record: Uint8Array;
    try {
      record = readFileSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT")
        throw missingBlock(cid.toString(), path);
      throw err;
    }
    try {
      return parseRecordHeader(record);
    } catch (err) {
      if (err instanceof RecordFormatError) throw corruptBlock(cid.toString(), path, err.message);
      throw err;
    }
  }

  /** Every file in the store: block files by CID, plus names that are not CIDs (temp leftovers). */
  list(): { blocks: CID[]; strays: string[] } {
    const blocks: CID[] = [];
    const strays: string[] = [];
    if (!existsSync(this.dir)) return { blocks, strays };
    for (const sub of readdirSync(this.dir).sort()) {
      const subPath = join(this.dir, sub);
      if (!statSync(subPath).isDirectory()) {
        strays.push(subPath);
        continue;
      }
      for (const name of readdirSync(subPath).sort()) {
        const cid = name.endsWith(tempSuffix) ? undefined : parseCid(name);
        if (cid !== undefined && name.slice(-2) === sub && cid.toString() === name)
          blocks.push(cid);
        else strays.push(join(subPath, name));
      }
    }
    return { blocks, strays };
  }

  /** Deletes a block file (GC sweep only). */
  remove(cid: CID): void {
    this.cache.delete(cid.toString());
    rmSync(this.pathOf(cid), { force: true });
  }

  storedBytes(cid: CID): number {
    return statSync(this.pathOf(cid)).size;
  }

  /** Whether this store's file for `cid` and `other`'s are one file (hard links to one inode). */
  sameFile(other: BlockStore, cid: CID): boolean {
    try {
      const a = statSync(this.pathOf(cid));
      const b = statSync(other.pathOf(cid));
      return a.dev === b.dev && a.ino === b.ino;
    } catch {
      return false;
    }
  }

  /**
   * Replaces this store's record of `cid` by a hard link to `other`'s record of it, atomically
   * (link to a temp name, rename over): afterwards both stores name one file, so the block takes
   * its bytes once on disk, and either store's GC unlinking its name leaves the other's intact.
   * The caller checks that this store can decode the record (its bases are here too). Returns
   * false, changing nothing, where links are impossible (another file system, no link support).
   */
  linkFrom(other: BlockStore, cid: CID): boolean {
    const target = this.pathOf(cid);
    const temp = `${target}.${process.pid}.link${tempSuffix}`;
    try {
      mkdirSync(dirname(target), { recursive: true });
      rmSync(temp, { force: true });
      linkSync(other.pathOf(cid), temp);
    } catch {
      rmSync(temp, { force: true });
      return false;
    }
    this.#crash("block:before-link-rename");
    renameSync(temp, target);
    fsyncDir(dirname(target));
    this.cache.delete(cid.toString());
    return true;
  }
}
