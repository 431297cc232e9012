// Tiered, content-addressed checkpoints. A checkpoint is a set of named byte shards (model
// weights, optimizer state, metadata JSON ...) saved into one tier:
//   hot  — blocks stored as they are (fast restore),
//   warm — zstd level 9, with byte-plane grouping, float deltas against the same tensor region of
//          the tier's previous checkpoint where they are similar enough (float32Resemblance), and
//          zstd dictionary deltas against the most similar earlier chunk found by MinHash
//          super-features (similarity.ts), both gated by `similarity_threshold`; below the
//          threshold that region still serves as context of the range-coded planes (block-record.ts);
//          each block is stored by the smallest of these and the float coder (float-coder.ts:
//          each float coded given the same float of that region, or alone),
//   cold — brotli level 11, byte planes, float deltas and the float coder likewise, then
//          AES-256-GCM under a fresh per-checkpoint
//          data key wrapped with ML-KEM-768 for the operator (src/crypto/envelope.ts).
// Each shard is cut by FastCDC into chunks that become raw CIDv1 leaves of a UnixFS DAG; a chunk
// already in the tier is stored once however many checkpoints use it. A save writes the key file,
// then the blocks, then the manifest, each atomically: a crash leaves the previous state plus
// unreferenced blocks that the next GC removes. Restore reads every block through its CID check
// and each shard through its SHA-256 before returning anything; it refuses rather than return
// wrong bytes.
//
// A chunk held by both unsealed tiers is one file hard-linked into both (#shareBlocks); the sealed
// cold tier never shares. Each tier's names stay decodable on their own, so GC stays per tier.
//
// GC is mark and sweep per tier: expire manifests past the tier's retention (never the newest
// `keepLatestMin`), mark every block listed by a live manifest, the delta bases they depend on
// (transitively) and the key files they are sealed under, then sweep the rest — deltas before the
// blocks they may depend on, keys last — so a crash at any point of a sweep leaves every surviving
// block decodable, and a later save that deduplicates against a survivor is safe.

import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { invariant } from "../common/assert.ts";
import {
  decodeWrappedKey,
  EnvelopeError,
  encodeWrappedKey,
  newDataKey,
  openDataKey,
} from "../crypto/envelope.ts";
import { fsyncDir, tempSuffix, writeFileAtomic } from "./atomic.ts";
import type { Compression, DeltaRef } from "./block-record.ts";
import { BlockStore } from "./block-store.ts";
import { CID } from "./cid.ts";
import {
  deltaBasesMax,
  deltaChainMax,
  hotCacheBytesMax,
  keepLatestMin,
  shardBytesMax,
  similarityBytesMin,
  similaritySampleWordsMax,
} from "./constants.ts";
import {
  buildDirectory,
  buildFileDag,
  buildFileDagAsync,
  checkShardName,
  type DagBlock,
  type FileDag,
  type LeafRef,
  readDirectory,
  readFileLeaves,
} from "./dag.ts";
import { corruptBlock, StorageError } from "./errors.ts";
import { type ChunkSizes, FastCdc } from "./fastcdc.ts";
import { type CrashHook, noCrash } from "./faults.ts";
import { float32Resemblance } from "./float-transform.ts";
import {
  checkCheckpointId,
  encodeManifest,
  type Manifest,
  manifestFormat,
  readManifest,
  type ShardEntry,
  type TierName,
} from "./manifest.ts";
import { listMarkers, type PendingCopy, removeMarker } from "./pending-copies.ts";
import {
  chunkFeatures,
  decodeFeatures,
  encodeFeatures,
  featureResemblance,
  superFeatures,
} from "./similarity.ts";
import { acquireGcLock, acquireWriterLease, writerLeases } from "./tier-lock.ts";

export interface TierInit {
  readonly name: TierName;
  readonly dir: string;
  readonly compression: Compression;
  readonly sealed: boolean;
  /** Infinity for "unlimited". */
  readonly retentionSeconds: number;
}

export interface CheckpointStoreInit {
  readonly tiers: readonly TierInit[];
  readonly chunkSizes: ChunkSizes;
  /** Minimum resemblance (0..1) of a chunk and its base for a delta (`similarity_threshold`). */
  readonly similarityThreshold: number;
  /** Operator ML-KEM-768 public key: needed to save into a sealed tier. */
  readonly operatorPublicKey?: Uint8Array;
  /** Operator ML-KEM-768 secret key: needed to read a sealed tier. */
  readonly operatorSecretKey?: Uint8Array;
  /** Wall clock in ms (injected so that retention tests replay). */
  readonly clock?: () => number;
  readonly crash?: CrashHook;
  readonly cacheBytesMax?: number;
}

/**
 * The part of a store's setup that another thread can open the same store with (no callbacks, no
 * secret key): what CheckpointStore.spec returns and tier-copier.ts hands to its worker.
 */
export type CheckpointStoreSpec = Pick<
  CheckpointStoreInit,
  "tiers" | "chunkSizes" | "similarityThreshold" | "operatorPublicKey" | "cacheBytesMax"
>;

export interface Shard {
  readonly name: string;
  readonly bytes: Uint8Array;
}

export interface SaveOptions {
  readonly step?: number;
  readonly onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export interface SaveReport {
  readonly manifest: Manifest;
  readonly rawBytes: number;
  /** Bytes of new block records written (what this checkpoint added to the tier). */
  readonly storedBytes: number;
  readonly chunks: number;
  /** Chunks already in the tier (exact dedup). */
  readonly duplicateChunks: number;
  /** Chunks stored as an XOR delta against a similar earlier chunk range. */
  readonly deltaChunks: number;
  /**
   * Blocks of this checkpoint now shared with another unsealed tier (one file, hard-linked into
   * both): the smaller record of the two is kept for both tiers.
   */
  readonly sharedBlocks: number;
}

export interface Problem {
  readonly tier: TierName;
  readonly checkpoint?: string;
  readonly cid?: string;
  readonly file?: string;
  readonly message: string;
}

export interface GcReport {
  readonly tier: TierName;
  readonly expired: string[];
  readonly liveCheckpoints: number;
  readonly liveBlocks: number;
  readonly sweptBlocks: number;
  readonly sweptBytes: number;
  readonly sweptKeys: number;
  readonly sweptStrays: number;
  /** Checkpoints kept past retention because a copy out of them is still queued or running. */
  readonly keptForCopies: string[];
  /** Whether the sweep was skipped because a copy into this tier was running (its blocks are not
   * listed by any manifest yet). */
  readonly sweepSkipped: boolean;
  /** What was running when the sweep was skipped: a copy, a save or a gc (and its process). */
  readonly sweepSkippedBy?: string;
  /** Markers of failed or interrupted copies into this tier, removed (their blocks are swept). */
  readonly staleCopies: string[];
}

interface SimilarityIndex {
  readonly byCid: Map<string, Uint32Array>;
  readonly bySuperFeature: Map<number, string>;
  readonly add: (cid: string, f: Uint32Array) => void;
}

class Tier {
  readonly init: TierInit;
  readonly blocks: BlockStore;
  readonly #keys = new Map<string, Uint8Array>();
  readonly #secretKey: Uint8Array | undefined;

  constructor(
    init: TierInit,
    cacheBytesMax: number,
    secretKey: Uint8Array | undefined,
    crash: CrashHook,
  ) {
    this.init = init;
    this.#secretKey = secretKey;
    this.blocks = new BlockStore({
      dir: join(init.dir, "blocks"),
      compression: init.compression,
      cacheBytesMax,
      dataKey: (keyId) => this.dataKey(keyId),
      crash,
    });
  }

  get manifestDir(): string {
    return join(this.init.dir, "checkpoints");
  }
  get keyDir(): string {
    return join(this.init.dir, "keys");
  }
  manifestPath(id: string): string {
    return join(this.manifestDir, `${id}.json`);
  }
  keyPath(keyId: string): string {
    return join(this.keyDir, `${keyId}.json`);
  }

  rememberKey(keyId: string, dataKey: Uint8Array): void {
    this.#keys.set(keyId, dataKey);
  }

  dataKey(keyId: string): Uint8Array {
    const known = this.#keys.get(keyId);
    if (known !== undefined) return known;
    if (this.#secretKey === undefined) {
      throw new StorageError(
        "wrong-key",
        `the ${this.init.name} tier is sealed: pass the operator's secret key (--key)`,
      );
    }
    const path = this.keyPath(keyId);
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(path);
    } catch {
      throw new StorageError(
        "missing-block",
        `data key ${keyId} is missing (expected at ${path})`,
        { file: path },
      );
    }
    try {
      const key = openDataKey(decodeWrappedKey(bytes, path), this.#secretKey);
      this.#keys.set(keyId, key);
      return key;
    } catch (err) {
      if (err instanceof EnvelopeError && err.code === "wrong-key") {
        throw new StorageError("wrong-key", `${err.message} (key file ${path})`, { file: path });
      }
      if (err instanceof EnvelopeError)
        throw new StorageError("corrupt-block", `data key file ${path}: ${err.message}`, {
          file: path,
        });
      throw err;
    }
  }

  /** Every manifest, oldest first; throws on an unreadable one (GC must not guess what is live). */
  manifests(): Manifest[] {
    return this.manifestFiles()
      .map((path) => readManifest(path))
      .sort((a, b) => a.createdAtMs - b.createdAtMs || a.id.localeCompare(b.id));
  }

  manifestFiles(): string[] {
    if (!existsSync(this.manifestDir)) return [];
    return readdirSync(this.manifestDir)
      .filter((n) => n.endsWith(".json") && !n.startsWith("."))
      .sort()
      .map((n) => join(this.manifestDir, n));
  }
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

export class CheckpointStore {
  readonly #tiers = new Map<TierName, Tier>();
  readonly #cdc: FastCdc;
  readonly #threshold: number;
  readonly #publicKey: Uint8Array | undefined;
  readonly #clock: () => number;
  readonly #crash: CrashHook;
  readonly #spec: CheckpointStoreSpec;

  constructor(init: CheckpointStoreInit) {
    this.#spec = {
      tiers: init.tiers,
      chunkSizes: init.chunkSizes,
      similarityThreshold: init.similarityThreshold,
      ...(init.operatorPublicKey !== undefined
        ? { operatorPublicKey: init.operatorPublicKey }
        : {}),
      ...(init.cacheBytesMax !== undefined ? { cacheBytesMax: init.cacheBytesMax } : {}),
    };
    invariant(
      init.similarityThreshold >= 0 && init.similarityThreshold <= 1,
      "similarity threshold in [0, 1]",
    );
    this.#cdc = new FastCdc(init.chunkSizes);
    this.#threshold = init.similarityThreshold;
    this.#publicKey = init.operatorPublicKey;
    this.#clock = init.clock ?? (() => Date.now());
    this.#crash = init.crash ?? noCrash;
    for (const t of init.tiers) {
      invariant(!this.#tiers.has(t.name), () => `tier ${t.name} configured twice`);
      this.#tiers.set(
        t.name,
        new Tier(t, init.cacheBytesMax ?? hotCacheBytesMax, init.operatorSecretKey, this.#crash),
      );
    }
  }

  /** What another thread needs to open this store (tier-copier.ts). */
  get spec(): CheckpointStoreSpec {
    return this.#spec;
  }

  get tierNames(): TierName[] {
    return [...this.#tiers.keys()];
  }

  tier(name: TierName): Tier {
    const t = this.#tiers.get(name);
    if (t === undefined) {
      throw new StorageError(
        "bad-input",
        `tier ${name} is not configured (checkpoint_strategy.levels has ${this.tierNames.join(", ")})`,
      );
    }
    return t;
  }

  blockStore(name: TierName): BlockStore {
    return this.tier(name).blocks;
  }

  list(name?: TierName): Manifest[] {
    return (name === undefined ? this.tierNames : [name]).flatMap((n) => this.tier(n).manifests());
  }

  manifest(name: TierName, id: string): Manifest {
    checkCheckpointId(id);
    return readManifest(this.tier(name).manifestPath(id));
  }

  /** Saves `shards` as checkpoint `id` in tier `name`, chunked by FastCDC. */
  save(
    name: TierName,
    id: string,
    shards: readonly Shard[],
    options: SaveOptions = {},
  ): SaveReport {
    const sorted = this.#checkShards(name, id, shards);
    const dags = sorted.map((shard) => ({
      shard,
      dag: buildFileDag(shard.bytes, this.#cdc.cuts(shard.bytes)),
    }));
    return this.#commit(name, id, dags, undefined, options);
  }

  /**
   * `save`, with the chunks hashed concurrently on the thread pool (WebCrypto) while the next
   * shard is being chunked: the same checkpoint, faster on several cores. Blocks and manifest are
   * written exactly as by `save`.
   */
  async saveAsync(
    name: TierName,
    id: string,
    shards: readonly Shard[],
    options: SaveOptions = {},
  ): Promise<SaveReport> {
    const sorted = this.#checkShards(name, id, shards);
    const pending = sorted.map((shard) =>
      buildFileDagAsync(shard.bytes, this.#cdc.cuts(shard.bytes)),
    );
    const dags = (await Promise.all(pending)).map((dag, k) => ({ shard: sorted[k] as Shard, dag }));
    this.#checkNew(name, id); // again: the id may have been taken while the chunks hashed
    return this.#commit(name, id, dags, undefined, options);
  }

  /** Validates a save's id and shards; returns the shards sorted by name. */
  #checkShards(name: TierName, id: string, shards: readonly Shard[]): Shard[] {
    this.#checkNew(name, id);
    const names = new Set<string>();
    for (const s of shards) {
      checkShardName(s.name);
      if (names.has(s.name))
        throw new StorageError("bad-input", `shard ${JSON.stringify(s.name)} given twice`);
      names.add(s.name);
      if (s.bytes.length > shardBytesMax) {
        throw new StorageError(
          "bad-input",
          `shard ${s.name} is ${s.bytes.length} B; the limit is ${shardBytesMax} B`,
        );
      }
    }
    return [...shards].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * Stores an existing DAG (from a CAR file) as checkpoint `id`, keeping its CIDs: `root` is its
   * directory node, or undefined to wrap `entries` (file DAG roots) in a new directory. Every block
   * comes through `get`, which must return bytes already checked against their CIDs.
   */
  importDag(
    name: TierName,
    id: string,
    dag: {
      root: CID | undefined;
      entries: readonly { name: string; cid: CID }[];
      get: (cid: CID) => Uint8Array;
    },
    step?: number,
  ): SaveReport {
    this.#checkNew(name, id);
    const dags = dag.entries.map((e) => {
      const { leaves, inner } = readFileLeaves(e.cid, dag.get);
      const size = leaves.reduce((s, l) => s + l.length, 0);
      if (size > shardBytesMax)
        throw new StorageError(
          "bad-input",
          `shard ${e.name} is ${size} B; the limit is ${shardBytesMax} B`,
        );
      const bytes = new Uint8Array(size);
      for (const l of leaves) bytes.set(dag.get(l.cid), l.offset);
      const nodes = inner.map((cid) => ({ cid, bytes: dag.get(cid) })).reverse();
      return { shard: { name: e.name, bytes }, dag: { root: e.cid, size, leaves, nodes } };
    });
    const root = dag.root === undefined ? undefined : { cid: dag.root, bytes: dag.get(dag.root) };
    return this.#commit(name, id, dags, root, step === undefined ? {} : { step });
  }

  #checkNew(name: TierName, id: string): void {
    checkCheckpointId(id);
    if (existsSync(this.tier(name).manifestPath(id))) {
      throw new StorageError(
        "exists",
        `checkpoint ${id} already exists in the ${name} tier; delete it or pick another id`,
      );
    }
  }

  /**
   * Writes the key file (sealed tiers), the blocks, then the manifest, under a writer's lease on
   * the tier (tier-lock.ts): a GC of the tier from another process skips its sweep meanwhile, and
   * a running one is waited for.
   */
  #commit(
    name: TierName,
    id: string,
    dags: readonly { shard: Shard; dag: FileDag }[],
    givenRoot: DagBlock | undefined,
    options: SaveOptions,
  ): SaveReport {
    const lease = acquireWriterLease(this.tier(name).init.dir, name);
    try {
      return this.#commitLeased(name, id, dags, givenRoot, options);
    } finally {
      lease.release();
    }
  }

  #commitLeased(
    name: TierName,
    id: string,
    dags: readonly { shard: Shard; dag: FileDag }[],
    givenRoot: DagBlock | undefined,
    options: SaveOptions,
  ): SaveReport {
    const tier = this.tier(name);
    const previous = tier.manifests().at(-1);
    let seal: { keyId: string; dataKey: Uint8Array } | undefined;
    if (tier.init.sealed) {
      if (this.#publicKey === undefined) {
        throw new StorageError(
          "wrong-key",
          `the ${name} tier is sealed: saving needs the operator's public key (--key)`,
        );
      }
      const { dataKey, wrapped } = newDataKey(this.#publicKey);
      const keyId = `${id}-${sha256Hex(wrapped.kemCiphertext).slice(0, 12)}`;
      this.#crash("save:before-key");
      writeFileAtomic(tier.keyPath(keyId), encodeWrappedKey(wrapped), this.#crash);
      tier.rememberKey(keyId, dataKey);
      seal = { keyId, dataKey };
    }
    const sealOpt = seal !== undefined ? { seal } : {};
    const totalBytes = dags.reduce((s, x) => s + x.shard.bytes.length, 0);
    let doneBytes = 0;
    let storedBytes = 0;
    let chunks = 0;
    let duplicateChunks = 0;
    let deltaChunks = 0;
    const blocks = new Set<string>();
    const similar = tier.init.compression === "zstd" ? this.#similarityIndex(tier) : undefined;
    const features: Record<string, string> = {};
    const entries: ShardEntry[] = [];
    const dirEntries: { name: string; cid: CID; tsize: number }[] = [];
    for (const { shard, dag } of dags) {
      const baseLeaves = this.#baseLeaves(tier, previous, shard);
      for (const leaf of dag.leaves) {
        chunks++;
        blocks.add(leaf.cid.toString());
        const bytes = shard.bytes.subarray(leaf.offset, leaf.offset + leaf.length);
        const key = leaf.cid.toString();
        let f: Uint32Array | undefined;
        if (similar !== undefined && leaf.length >= similarityBytesMin) {
          f = similar.byCid.get(key) ?? chunkFeatures(bytes);
          features[key] = encodeFeatures(f);
        }
        if (tier.blocks.has(leaf.cid)) {
          duplicateChunks++;
        } else {
          const base = this.#deltaFor(tier, baseLeaves, leaf, bytes);
          const delta = base?.similar === true ? base.ref : undefined;
          const context = base?.similar === false ? base.ref : undefined;
          const dict =
            f !== undefined && similar !== undefined
              ? this.#similarBase(tier, similar, f)
              : undefined;
          const put = tier.blocks.put(leaf.cid, bytes, {
            phase: leaf.offset & 3,
            ...(delta !== undefined ? { delta } : {}),
            ...(context !== undefined ? { context } : {}),
            ...(dict !== undefined ? { dict } : {}),
            ...sealOpt,
          });
          if (f !== undefined && similar !== undefined) similar.add(key, f);
          storedBytes += put.bytes;
          if (put.delta) deltaChunks++;
        }
        doneBytes += leaf.length;
        options.onProgress?.(doneBytes, totalBytes);
      }
      for (const node of dag.nodes) {
        blocks.add(node.cid.toString());
        storedBytes += tier.blocks.put(node.cid, node.bytes, { phase: 0, ...sealOpt }).bytes;
      }
      const tsize = dag.nodes.reduce((s, n) => s + n.bytes.length, 0) + shard.bytes.length;
      entries.push({
        name: shard.name,
        root: dag.root.toString(),
        sizeBytes: shard.bytes.length,
        sha256: sha256Hex(shard.bytes),
      });
      dirEntries.push({ name: shard.name, cid: dag.root, tsize });
    }
    const dir = givenRoot ?? buildDirectory(dirEntries);
    blocks.add(dir.cid.toString());
    storedBytes += tier.blocks.put(dir.cid, dir.bytes, { phase: 0, ...sealOpt }).bytes;
    const manifest: Manifest = {
      format: manifestFormat,
      id,
      tier: name,
      ...(options.step !== undefined ? { step: options.step } : {}),
      createdAtMs: Math.max(this.#clock(), (previous?.createdAtMs ?? -1) + 1),
      root: dir.cid.toString(),
      shards: entries,
      blocks: [...blocks].sort(),
      ...(similar !== undefined ? { features } : {}),
      ...(seal !== undefined ? { keyId: seal.keyId } : {}),
    };
    this.#crash("save:before-manifest");
    writeFileAtomic(tier.manifestPath(id), encodeManifest(manifest), this.#crash);
    this.#crash("save:after-manifest");
    const sharedBlocks = this.#shareBlocks(tier, manifest.blocks);
    return {
      manifest,
      rawBytes: totalBytes,
      storedBytes,
      chunks,
      duplicateChunks,
      deltaChunks,
      sharedBlocks,
    };
  }

  /**
   * One copy per block across unsealed tiers: where another unsealed tier holds a record of the
   * same CID (same plaintext), both tiers' names are made one file — the smaller record, so a
   * warm-encoded record serves the hot tier too — provided the tier that gets the link holds every
   * base that record depends on (each tier stays decodable on its own; its GC marks those bases).
   * The sealed (cold) tier never shares: it must hold nothing but ciphertext. Restoring a shared
   * block from the hot tier decodes the warm encoding (zstd / range coder) instead of reading raw.
   */
  #shareBlocks(tier: Tier, cids: readonly string[]): number {
    if (tier.init.sealed) return 0;
    let shared = 0;
    for (const other of this.#tiers.values()) {
      if (other === tier || other.init.sealed) continue;
      for (const key of cids) {
        const cid = CID.parse(key);
        if (!other.blocks.has(cid) || !tier.blocks.has(cid)) continue;
        if (tier.blocks.sameFile(other.blocks, cid)) {
          shared++;
          continue;
        }
        const [keep, into] =
          tier.blocks.storedBytes(cid) <= other.blocks.storedBytes(cid)
            ? [tier, other]
            : [other, tier];
        let bases: CID[];
        try {
          bases = keep.blocks.header(cid).delta?.bases ?? [];
        } catch (err) {
          if (err instanceof StorageError) continue; // a damaged record is not shared
          throw err;
        }
        if (bases.some((b) => !into.blocks.has(b))) continue;
        if (into.blocks.linkFrom(keep.blocks, cid)) shared++;
      }
    }
    return shared;
  }

  /** Leaves of the same-named, same-sized shard of the tier's previous checkpoint (delta bases). */
  #baseLeaves(tier: Tier, previous: Manifest | undefined, shard: Shard): LeafRef[] | undefined {
    if (tier.init.compression === "none" || previous === undefined) return undefined;
    const entry = previous.shards.find(
      (s) => s.name === shard.name && s.sizeBytes === shard.bytes.length,
    );
    if (entry === undefined) return undefined;
    try {
      return readFileLeaves(CID.parse(entry.root), (cid) => tier.blocks.get(cid)).leaves;
    } catch (err) {
      if (err instanceof StorageError) return undefined; // a damaged base only costs compression
      throw err;
    }
  }

  /** Super-feature index of the chunks of the tier's live checkpoints. */
  #similarityIndex(tier: Tier): SimilarityIndex {
    const byCid = new Map<string, Uint32Array>();
    const bySuperFeature = new Map<number, string>();
    const add = (cid: string, f: Uint32Array) => {
      byCid.set(cid, f);
      for (const sf of superFeatures(f)) bySuperFeature.set(sf, cid);
    };
    for (const m of tier.manifests()) {
      for (const [cid, hex] of Object.entries(m.features ?? {})) {
        const f = decodeFeatures(hex);
        if (f !== undefined) add(cid, f);
      }
    }
    return { byCid, bySuperFeature, add };
  }

  /** The most similar indexed chunk at or above the threshold, as a dictionary-delta base. */
  #similarBase(tier: Tier, index: SimilarityIndex, f: Uint32Array): DeltaRef | undefined {
    let best: { cid: string; resemblance: number } | undefined;
    for (const sf of superFeatures(f)) {
      const cid = index.bySuperFeature.get(sf);
      const other = cid === undefined ? undefined : index.byCid.get(cid);
      if (cid === undefined || other === undefined) continue;
      const resemblance = featureResemblance(f, other);
      if (
        resemblance >= this.#threshold &&
        (best === undefined || resemblance > best.resemblance)
      ) {
        best = { cid, resemblance };
      }
    }
    if (best === undefined) return undefined;
    const base = CID.parse(best.cid);
    if (!tier.blocks.has(base)) return undefined;
    let baseDepth: number;
    try {
      baseDepth = tier.blocks.header(base).depth;
    } catch (err) {
      if (err instanceof StorageError) return undefined; // a damaged base only costs compression
      throw err;
    }
    return baseDepth + 1 > deltaChainMax ? undefined : { bases: [base], offset: 0, baseDepth };
  }

  /**
   * The base range at the same offset of the previous checkpoint's same shard, and whether it is
   * similar enough (`similarity_threshold`) for a float delta; below it, the base is only offered
   * as coding context (block-record.ts, range-coded planes).
   */
  #deltaFor(
    tier: Tier,
    baseLeaves: LeafRef[] | undefined,
    leaf: LeafRef,
    bytes: Uint8Array,
  ): { ref: DeltaRef; similar: boolean } | undefined {
    if (baseLeaves === undefined || leaf.length < 16) return undefined;
    const end = leaf.offset + leaf.length;
    const covering = baseLeaves.filter((b) => b.offset < end && b.offset + b.length > leaf.offset);
    if (covering.length === 0 || covering.length > deltaBasesMax) return undefined;
    const first = covering[0] as LeafRef;
    const offset = leaf.offset - first.offset;
    try {
      let baseDepth = 0;
      for (const b of covering) {
        if (b.cid.equals(leaf.cid)) return undefined;
        baseDepth = Math.max(baseDepth, tier.blocks.header(b.cid).depth);
      }
      if (baseDepth + 1 > deltaChainMax) return undefined;
      const bases = covering.map((b) => b.cid);
      const baseBytes = tier.blocks.baseRange(bases, offset, leaf.length);
      const resemblance = float32Resemblance(
        bytes,
        baseBytes,
        leaf.offset & 3,
        similaritySampleWordsMax,
      );
      return { ref: { bases, offset, baseDepth }, similar: resemblance >= this.#threshold };
    } catch (err) {
      if (err instanceof StorageError) return undefined; // a damaged base only costs compression
      throw err;
    }
  }

  /**
   * The shards of a checkpoint, every block checked against its CID and every shard against its
   * size and SHA-256. Throws a StorageError naming the block and file on the first problem.
   */
  restore(
    name: TierName,
    id: string,
    onProgress?: (doneBytes: number, totalBytes: number) => void,
  ): Shard[] {
    const tier = this.tier(name);
    const manifest = this.manifest(name, id);
    const get = (cid: CID) => tier.blocks.get(cid);
    const root = CID.parse(manifest.root);
    const dirEntries = readDirectory(root, get);
    const totalBytes = manifest.shards.reduce((s, x) => s + x.sizeBytes, 0);
    let doneBytes = 0;
    const out: Shard[] = [];
    for (const entry of manifest.shards) {
      const linked = dirEntries.find((e) => e.name === entry.name);
      if (linked === undefined || linked.cid.toString() !== entry.root) {
        throw corruptBlock(
          manifest.root,
          tier.blocks.pathOf(root),
          `directory does not link shard ${entry.name} to ${entry.root}`,
        );
      }
      const shardRoot = CID.parse(entry.root);
      const { leaves } = readFileLeaves(shardRoot, get);
      const bytes = new Uint8Array(entry.sizeBytes);
      let at = 0;
      for (const leaf of leaves) {
        const data = get(leaf.cid);
        if (data.length !== leaf.length || at + data.length > bytes.length) {
          throw corruptBlock(
            leaf.cid.toString(),
            tier.blocks.pathOf(leaf.cid),
            `holds ${data.length} B where the DAG says ${leaf.length}`,
          );
        }
        bytes.set(data, at);
        at += data.length;
        doneBytes += data.length;
        onProgress?.(doneBytes, totalBytes);
      }
      if (at !== entry.sizeBytes || sha256Hex(bytes) !== entry.sha256) {
        throw new StorageError(
          "corrupt-block",
          `shard ${entry.name} of checkpoint ${id} does not match its manifest (size or SHA-256): refusing to restore`,
          { file: tier.manifestPath(id) },
        );
      }
      out.push({ name: entry.name, bytes });
    }
    if (dirEntries.length !== manifest.shards.length) {
      throw corruptBlock(
        manifest.root,
        tier.blocks.pathOf(root),
        "directory and manifest list different shards",
      );
    }
    return out;
  }

  /**
   * Copies checkpoint `id` from one tier to another (hot → warm → cold as it ages), verified on
   * the way out. Chunking is deterministic, so a checkpoint this store saved keeps its CIDs and
   * root (one imported from a CAR chunked elsewhere is re-chunked), and only chunks the
   * destination tier lacks are written.
   */
  copy(from: TierName, to: TierName, id: string, options: SaveOptions = {}): SaveReport {
    const manifest = this.manifest(from, id);
    const shards = this.restore(from, id);
    return this.save(to, id, shards, {
      ...options,
      ...(manifest.step !== undefined ? { step: manifest.step } : {}),
    });
  }

  /** Deletes a checkpoint's manifest; its blocks go at the next GC unless another checkpoint uses them. */
  delete(name: TierName, id: string): void {
    checkCheckpointId(id);
    const tier = this.tier(name);
    const path = tier.manifestPath(id);
    if (!existsSync(path))
      throw new StorageError("not-found", `no checkpoint ${id} in the ${name} tier`, {
        file: path,
      });
    this.#crash("delete:before-unlink");
    rmSync(path);
    fsyncDir(tier.manifestDir);
  }

  /**
   * Checks a tier: every live checkpoint restores (each block against its CID, each shard against
   * its SHA-256), the manifest's block list covers its DAG, and every block file in the store
   * (garbage too) decodes to its CID. Returns the problems found; throws nothing for bad data.
   */
  verify(
    name: TierName,
    onProgress?: (done: number, total: number) => void,
  ): { checkedBlocks: number; checkpoints: number; problems: Problem[] } {
    const tier = this.tier(name);
    const problems: Problem[] = [];
    const report = (err: unknown, checkpoint?: string) => {
      if (err instanceof StorageError) {
        problems.push({
          tier: name,
          ...(checkpoint !== undefined ? { checkpoint } : {}),
          ...(err.cid !== undefined ? { cid: err.cid } : {}),
          ...(err.file !== undefined ? { file: err.file } : {}),
          message: err.message,
        });
      } else throw err;
    };
    const manifests: Manifest[] = [];
    for (const path of tier.manifestFiles()) {
      try {
        manifests.push(readManifest(path));
      } catch (err) {
        report(err);
      }
    }
    const { blocks } = tier.blocks.list();
    const total = manifests.length + blocks.length;
    let done = 0;
    for (const m of manifests) {
      try {
        this.restore(name, m.id);
        const listed = new Set(m.blocks);
        for (const cid of this.#dagBlocks(tier, m)) {
          if (!listed.has(cid))
            throw new StorageError(
              "corrupt-block",
              `manifest of ${m.id} omits block ${cid} of its DAG`,
              { cid, file: tier.manifestPath(m.id) },
            );
        }
      } catch (err) {
        report(err, m.id);
      }
      onProgress?.(++done, total);
    }
    for (const cid of blocks) {
      try {
        tier.blocks.cache.delete(cid.toString()); // read from disk, not from the cache
        tier.blocks.get(cid);
      } catch (err) {
        report(err);
      }
      onProgress?.(++done, total);
    }
    // Blocks a live checkpoint lists but that are not on disk.
    const present = new Set(blocks.map((c) => c.toString()));
    for (const m of manifests) {
      for (const cid of m.blocks) {
        if (!present.has(cid) && !problems.some((p) => p.cid === cid)) {
          problems.push({
            tier: name,
            checkpoint: m.id,
            cid,
            file: tier.blocks.pathOf(cid),
            message: `block ${cid} is missing (expected at ${tier.blocks.pathOf(cid)})`,
          });
        }
      }
    }
    return { checkedBlocks: blocks.length, checkpoints: manifests.length, problems };
  }

  /** CIDs of every block of a checkpoint's DAG, by walking it. */
  #dagBlocks(tier: Tier, m: Manifest): string[] {
    const get = (cid: CID) => tier.blocks.get(cid);
    const out: string[] = [m.root];
    for (const e of readDirectory(CID.parse(m.root), get)) {
      const { leaves, inner } = readFileLeaves(e.cid, get);
      for (const c of inner) out.push(c.toString());
      for (const l of leaves) out.push(l.cid.toString());
    }
    return out;
  }

  /** Copies into a tier (or every tier) that are queued, running, failed or interrupted. */
  pendingCopies(name?: TierName): PendingCopy[] {
    return (name === undefined ? this.tierNames : [name]).flatMap((n) =>
      listMarkers(this.tier(n).init.dir, n),
    );
  }

  /** Retention and mark-and-sweep GC of every tier (or one). */
  gc(name?: TierName): GcReport[] {
    return (name === undefined ? this.tierNames : [name]).map((n) => this.#gcTier(this.tier(n)));
  }

  /**
   * GC of one tier under its gc.lock (tier-lock.ts). Another live GC of the tier, or a live
   * writer of it in any process, makes this one expire manifests but skip the sweep.
   */
  #gcTier(tier: Tier): GcReport {
    const lock = acquireGcLock(tier.init.dir);
    try {
      let busy: string | undefined;
      if (lock.heldBy !== undefined) busy = `a gc in process ${lock.heldBy.pid}`;
      else {
        const leases = writerLeases(tier.init.dir);
        for (const path of leases.stale) rmSync(path, { force: true });
        const w = leases.live[0];
        if (w !== undefined) busy = `a save into this tier in process ${w.pid}`;
      }
      return this.#gcTierLocked(tier, busy);
    } finally {
      if (lock.heldBy === undefined) lock.release();
    }
  }

  #gcTierLocked(tier: Tier, busy: string | undefined): GcReport {
    const now = this.#clock();
    const manifests = tier.manifests();
    const expired: string[] = [];
    const keptForCopies: string[] = [];
    const retentionMs = tier.init.retentionSeconds * 1000;
    // A checkpoint that a queued or running copy reads from stays until the copy is done.
    const outbound = new Set(
      this.pendingCopies()
        .filter((p) => p.from === tier.init.name && (p.state === "queued" || p.state === "copying"))
        .map((p) => p.id),
    );
    const inbound = this.pendingCopies(tier.init.name);
    const copyRunning = inbound.some((p) => p.state === "copying");
    const copying = copyRunning || busy !== undefined;
    manifests.forEach((m, i) => {
      const protectedLatest = i >= manifests.length - keepLatestMin;
      if (protectedLatest || m.createdAtMs + retentionMs >= now) return;
      if (outbound.has(m.id)) keptForCopies.push(m.id);
      else expired.push(m.id);
    });
    for (const id of expired) {
      this.#crash("gc:before-expire");
      rmSync(tier.manifestPath(id), { force: true });
    }
    if (expired.length > 0) fsyncDir(tier.manifestDir);
    const live = tier.manifests();
    // Mark: listed blocks, their delta bases (transitively) and key ids.
    const marked = new Set<string>();
    const keys = new Set<string>();
    const stack: CID[] = [];
    for (const m of live) {
      for (const c of m.blocks) stack.push(CID.parse(c));
      if (m.keyId !== undefined) keys.add(m.keyId);
    }
    while (stack.length > 0) {
      const cid = stack.pop() as CID;
      const key = cid.toString();
      if (marked.has(key)) continue;
      marked.add(key);
      if (!tier.blocks.has(cid)) continue; // verify reports it; GC must not stop on it
      let header: ReturnType<BlockStore["header"]>;
      try {
        header = tier.blocks.header(cid);
      } catch (err) {
        if (err instanceof StorageError) continue;
        throw err;
      }
      if (header.keyId !== undefined) keys.add(header.keyId);
      for (const base of header.delta?.bases ?? []) stack.push(base);
    }
    this.#crash("gc:after-mark");
    // Sweep deltas before whole blocks (deepest first), so that a surviving block's bases survive.
    const { blocks, strays } = tier.blocks.list();
    const garbage = blocks
      .filter((c) => !copying && !marked.has(c.toString()))
      .map((cid) => {
        let depth = deltaChainMax + 1; // unreadable records go first: nothing can depend on them
        try {
          depth = tier.blocks.header(cid).depth;
        } catch (err) {
          if (!(err instanceof StorageError)) throw err;
        }
        return { cid, depth };
      })
      .sort((a, b) => b.depth - a.depth);
    let sweptBytes = 0;
    for (const { cid } of garbage) {
      this.#crash("gc:sweep-block");
      sweptBytes += tier.blocks.storedBytes(cid);
      tier.blocks.remove(cid);
    }
    let sweptKeys = 0;
    if (existsSync(tier.keyDir)) {
      for (const file of readdirSync(tier.keyDir)) {
        const keyId = file.endsWith(".json") ? file.slice(0, -5) : undefined;
        if (keyId !== undefined && keys.has(keyId)) continue;
        this.#crash("gc:sweep-key");
        rmSync(join(tier.keyDir, file), { force: true });
        sweptKeys++;
      }
    }
    const staleCopies: string[] = [];
    if (!copying) {
      for (const p of inbound) {
        if (p.state !== "failed" && p.state !== "interrupted") continue;
        removeMarker(tier.init.dir, p.id);
        staleCopies.push(p.id);
      }
      for (const stray of strays) {
        if (stray.endsWith(tempSuffix)) rmSync(stray, { force: true });
      }
    }
    for (const dir of [tier.manifestDir]) {
      if (!existsSync(dir)) continue;
      for (const f of readdirSync(dir))
        if (f.endsWith(tempSuffix)) rmSync(join(dir, f), { force: true });
    }
    return {
      tier: tier.init.name,
      expired,
      liveCheckpoints: live.length,
      liveBlocks: marked.size,
      sweptBlocks: garbage.length,
      sweptBytes,
      sweptKeys,
      sweptStrays: copying ? 0 : strays.filter((s) => s.endsWith(tempSuffix)).length,
      keptForCopies,
      sweepSkipped: copying,
      ...(copying ? { sweepSkippedBy: busy ?? "a copy into this tier" } : {}),
      staleCopies,
    };
  }
}
