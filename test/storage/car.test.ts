import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { exporter } from "ipfs-unixfs-exporter";
import { CID } from "multiformats/cid";
import { exportCar, importCar } from "../../src/storage/car.ts";
import { leafBytesMax } from "../../src/storage/constants.ts";
import { StorageError } from "../../src/storage/errors.ts";
import { chunkSizesFromAverage } from "../../src/storage/fastcdc.ts";
import { floatBytes, openTestStore, tempDir } from "./fixtures/store.ts";

// ---- An independent CARv1 reader (no @ipld/car, no multiformats): varints, CIDv1, SHA-256. ----

function varint(bytes: Uint8Array, at: number): [value: number, next: number] {
  let value = 0;
  let shift = 0;
  for (let i = at; i < bytes.length; i++) {
    const b = bytes[i] as number;
    value += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) return [value, i + 1];
    shift += 7;
    if (shift > 49) throw new Error("varint too long");
  }
  throw new Error("varint runs past the end");
}

interface RawBlock {
  cidBytes: Uint8Array;
  codec: number;
  digest: Uint8Array;
  data: Uint8Array;
}

function parseCarV1(bytes: Uint8Array): { header: Uint8Array; blocks: RawBlock[] } {
  const [headerLen, afterLen] = varint(bytes, 0);
  const header = bytes.subarray(afterLen, afterLen + headerLen);
  let at = afterLen + headerLen;
  const blocks: RawBlock[] = [];
  while (at < bytes.length) {
    const [sectionLen, start] = varint(bytes, at);
    const end = start + sectionLen;
    const [version, p1] = varint(bytes, start);
    assert.equal(version, 1, "CIDv1");
    const [codec, p2] = varint(bytes, p1);
    const [hashCode, p3] = varint(bytes, p2);
    assert.equal(hashCode, 0x12, "sha2-256 multihash");
    const [digestLen, p4] = varint(bytes, p3);
    let p = p4;
    const digest = bytes.subarray(p, p + digestLen);
    p += digestLen;
    blocks.push({
      cidBytes: bytes.subarray(start, p),
      codec,
      digest,
      data: bytes.subarray(p, end),
    });
    at = end;
  }
  return { header, blocks };
}

const cleanups: (() => void)[] = [];
after(() => {
  for (const c of cleanups) c();
});

function checkpointShards() {
  return [
    { name: "weights.f32", bytes: floatBytes(3, 20_000) },
    { name: "config.json", bytes: new TextEncoder().encode('{"d_model":64}') },
  ];
}

describe("CAR export and import", () => {
  it("is read by an independent CARv1 parser and ipfs-unixfs-exporter: every block hashes to its CID", async () => {
    const t = tempDir("car-read");
    cleanups.push(t.cleanup);
    const store = openTestStore(t.dir);
    const shards = checkpointShards();
    store.save("warm", "ck", shards);
    const file = join(t.dir, "ck.car");
    const { root } = await exportCar(store, "warm", "ck", file);
    const { header, blocks } = parseCarV1(readFileSync(file));
    assert.ok(blocks.length > 50, `${blocks.length} blocks`);
    assert.ok(Buffer.from(header).includes(Buffer.from(root.bytes)), "the header names the root");
    const byCid = new Map<string, Uint8Array>();
    for (const b of blocks) {
      const digest = createHash("sha256").update(b.data).digest();
      assert.deepEqual(digest, Buffer.from(b.digest), "block hashes to its CID");
      assert.ok(b.codec === 0x55 || b.codec === 0x70, `codec 0x${b.codec.toString(16)}`);
      byCid.set(Buffer.from(b.cidBytes).toString("hex"), b.data);
    }
    // A UnixFS reader from the IPFS project walks the DAG from those blocks alone.
    const blockstore = {
      *get(cid: CID) {
        const data = byCid.get(Buffer.from(cid.bytes).toString("hex"));
        if (data === undefined) throw new Error(`no block ${cid}`);
        yield data;
      },
    };
    const dir = await exporter(root, blockstore);
    assert.equal(dir.type, "directory");
    if (dir.type !== "directory") return;
    const names: string[] = [];
    for await (const entry of dir.entries()) {
      names.push(entry.name);
      const fileEntry = await exporter(entry.cid, blockstore);
      assert.ok(fileEntry.type === "file" || fileEntry.type === "raw", fileEntry.type);
      if (fileEntry.type !== "file" && fileEntry.type !== "raw") return;
      const parts: Uint8Array[] = [];
      for await (const part of fileEntry.content()) parts.push(part as Uint8Array);
      const expected = shards.find((s) => s.name === entry.name);
      assert.ok(expected);
      assert.deepEqual(Buffer.concat(parts), Buffer.from(expected.bytes), entry.name);
    }
    assert.deepEqual(names.sort(), ["config.json", "weights.f32"]);
  });

  it("at production chunk sizes (4 MB average, 16 MB max) no exported block exceeds kubo's 1 MiB", async () => {
    const t = tempDir("car-kubo");
    cleanups.push(t.cleanup);
    const store = openTestStore(t.dir, { chunkSizes: chunkSizesFromAverage(4 * 1000 * 1000) });
    const shard = { name: "weights.f32", bytes: floatBytes(9, 6 * 1024 * 1024) }; // 24 MiB
    const saved = store.save("hot", "big", [shard]);
    assert.ok(saved.chunks > 24, `${saved.chunks} leaves for 24 MiB`);
    const file = join(t.dir, "big.car");
    const { root } = await exportCar(store, "hot", "big", file);
    const { blocks } = parseCarV1(readFileSync(file));
    const largest = Math.max(...blocks.map((b) => b.data.length));
    assert.ok(largest <= leafBytesMax, `largest block ${largest} B`);
    assert.ok(largest > leafBytesMax / 2, "leaves are near the cap, not tiny");
    // The capped DAG still reads back as the same file through the IPFS project's UnixFS reader.
    const byCid = new Map(blocks.map((b) => [Buffer.from(b.cidBytes).toString("hex"), b.data]));
    const blockstore = {
      *get(cid: CID) {
        const data = byCid.get(Buffer.from(cid.bytes).toString("hex"));
        if (data === undefined) throw new Error(`no block ${cid}`);
        yield data;
      },
    };
    const dir = await exporter(root, blockstore);
    assert.equal(dir.type, "directory");
    if (dir.type !== "directory") return;
    for await (const entry of dir.entries()) {
      const f = await exporter(entry.cid, blockstore);
      assert.equal(f.type, "file");
      if (f.type !== "file") return;
      const parts: Uint8Array[] = [];
      for await (const part of f.content()) parts.push(part as Uint8Array);
      assert.ok(Buffer.concat(parts).equals(Buffer.from(shard.bytes)), "same bytes");
    }
  });

  it("imports into another store and tier with the same root and bytes", async () => {
    const a = tempDir("car-a");
    const b = tempDir("car-b");
    cleanups.push(a.cleanup, b.cleanup);
    const src = openTestStore(a.dir);
    const shards = checkpointShards();
    const saved = src.save("hot", "ck", shards);
    const file = join(a.dir, "ck.car");
    await exportCar(src, "hot", "ck", file);
    const dst = openTestStore(b.dir);
    const imported = await importCar(dst, "cold", "ck-copy", file);
    assert.equal(imported.manifest.root, saved.manifest.root);
    const back = dst.restore("cold", "ck-copy");
    for (const s of shards)
      assert.deepEqual(
        Buffer.from(back.find((x) => x.name === s.name)?.bytes ?? []),
        Buffer.from(s.bytes),
      );
    // One shard alone: its file DAG is the root, imported as a one-shard checkpoint.
    const one = join(a.dir, "weights.car");
    const r = await exportCar(src, "hot", "ck", one, { shard: "weights.f32" });
    assert.equal(
      r.root.toString(),
      saved.manifest.shards.find((s) => s.name === "weights.f32")?.root,
    );
    await importCar(dst, "warm", "weights-only", one, { shardName: "weights.f32" });
    assert.deepEqual(
      Buffer.from(dst.restore("warm", "weights-only")[0]?.bytes ?? []),
      Buffer.from(shards[0]?.bytes ?? []),
    );
  });

  it("rejects a CAR with any single flipped byte, naming the file (and the CID for block bytes)", async () => {
    const t = tempDir("car-flip");
    cleanups.push(t.cleanup);
    const store = openTestStore(t.dir);
    // Small enough to flip every byte: a three-chunk shard and a tiny one.
    store.save("hot", "small", [
      { name: "w", bytes: floatBytes(4, 400) },
      { name: "m", bytes: new TextEncoder().encode("{}") },
    ]);
    const file = join(t.dir, "small.car");
    await exportCar(store, "hot", "small", file);
    const good = readFileSync(file);
    const { blocks } = parseCarV1(good);
    // Byte ranges of block data, and the CID each belongs to.
    const dataRanges = blocks.map((b) => {
      const start = good.indexOf(Buffer.from(b.data), 0);
      return { start, end: start + b.data.length, cid: CID.decode(b.cidBytes).toString() };
    });
    const flipped = join(t.dir, "flipped.car");
    let blockFlips = 0;
    for (let i = 0; i < good.length; i++) {
      const bad = Buffer.from(good);
      bad[i] = (bad[i] as number) ^ 0x01;
      writeFileSync(flipped, bad);
      const fresh = openTestStore(join(t.dir, `import-${i % 4}`));
      await assert.rejects(
        importCar(fresh, "hot", `try-${i}`, flipped),
        (e: unknown) => {
          assert.ok(e instanceof StorageError, `byte ${i}: ${String(e)}`);
          assert.ok(e.message.includes(flipped), `byte ${i}: file not named: ${e.message}`);
          const inBlock = dataRanges.find((r) => i >= r.start && i < r.end);
          if (inBlock !== undefined) {
            blockFlips++;
            assert.equal(e.cid, inBlock.cid, `byte ${i}: ${e.message}`);
          }
          return true;
        },
        `byte ${i} of ${good.length}`,
      );
      assert.equal(fresh.list("hot").length, 0, "nothing imported");
    }
    assert.ok(blockFlips > 1000, `${blockFlips} flips inside block data`);
  });
});
