// One copy per chunk across tiers: a chunk in both hot and warm is one file (hard-linked into
// both tiers, the smaller record kept), each tier stays decodable on its own, GC of one tier never
// takes a block the other still lists, and the sealed cold tier never shares (ciphertext only).

import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { after, describe, it } from "node:test";
import type { CheckpointStore } from "../../src/storage/checkpoint-store.ts";
import { CID } from "../../src/storage/cid.ts";
import type { TierName } from "../../src/storage/manifest.ts";
import { floatBytes, openTestStore, perturbed, tempDir } from "./fixtures/store.ts";

const t = tempDir("shared-blocks");
after(t.cleanup);

/** Bytes on disk of the given tiers' block files, each inode counted once. */
function uniqueBytes(store: CheckpointStore, tiers: TierName[]): number {
  const seen = new Map<string, number>();
  for (const tier of tiers) {
    const blocks = store.blockStore(tier);
    for (const cid of blocks.list().blocks) {
      const st = statSync(blocks.pathOf(cid));
      seen.set(`${st.dev}:${st.ino}`, st.size);
    }
  }
  return [...seen.values()].reduce((a, b) => a + b, 0);
}

function inode(store: CheckpointStore, tier: TierName, cid: string): number {
  return statSync(store.blockStore(tier).pathOf(cid)).ino;
}

describe("blocks shared across tiers", () => {
  it("hot → warm copy leaves one file per chunk; both tiers restore and verify on their own", () => {
    let now = 1_000_000;
    const store = openTestStore(`${t.dir}/share`, { clock: () => now });
    const a = floatBytes(51, 20_000);
    const b = perturbed(a, 52, 0.0005);
    store.save("hot", "a", [{ name: "w", bytes: a }]);
    now += 1000;
    store.save("hot", "b", [{ name: "w", bytes: b }]);
    const hotOnly = uniqueBytes(store, ["hot"]);
    now += 1000;
    const ra = store.copy("hot", "warm", "a");
    now += 1000;
    const rb = store.copy("hot", "warm", "b");
    assert.ok(ra.sharedBlocks > 0 && rb.sharedBlocks > 0, `${ra.sharedBlocks}, ${rb.sharedBlocks}`);
    const warmOnly = uniqueBytes(store, ["warm"]);
    const both = uniqueBytes(store, ["hot", "warm"]);
    assert.ok(both < hotOnly, `hot + warm ${both} B on disk, hot alone had ${hotOnly} B`);
    assert.ok(both < 1.1 * warmOnly, `hot + warm ${both} B vs warm ${warmOnly} B`);
    for (const id of ["a", "b"]) {
      const leaves = store.manifest("warm", id).blocks.filter((c) => CID.parse(c).code === 0x55);
      const linked = leaves.filter((c) => inode(store, "hot", c) === inode(store, "warm", c));
      assert.ok(linked.length >= 0.9 * leaves.length, `${id}: ${linked.length}/${leaves.length}`);
    }
    for (const tier of ["hot", "warm"] as const) {
      assert.ok(Buffer.from(store.restore(tier, "b")[0]?.bytes ?? []).equals(Buffer.from(b)));
      assert.deepEqual(store.verify(tier).problems, [], `${tier} verifies clean`);
    }
    // GC of one tier never takes what the other lists: drop "a" and "b" from warm, sweep warm...
    store.delete("warm", "a");
    store.delete("warm", "b");
    store.gc("warm");
    assert.ok(Buffer.from(store.restore("hot", "a")[0]?.bytes ?? []).equals(Buffer.from(a)));
    assert.ok(Buffer.from(store.restore("hot", "b")[0]?.bytes ?? []).equals(Buffer.from(b)));
    assert.deepEqual(store.verify("hot").problems, []);
    // ... and expiring "a" from hot keeps the blocks that b's shared delta records depend on.
    now += 48 * 3600 * 1000;
    const [gc] = store.gc("hot");
    assert.deepEqual(gc?.expired, ["a"]);
    assert.ok(Buffer.from(store.restore("hot", "b")[0]?.bytes ?? []).equals(Buffer.from(b)));
    assert.deepEqual(store.verify("hot").problems, []);
  });

  it("the sealed cold tier never shares a file and holds only encrypted records", () => {
    const store = openTestStore(`${t.dir}/cold`);
    const w = floatBytes(53, 10_000);
    store.save("hot", "c", [{ name: "w", bytes: w }]);
    store.copy("hot", "warm", "c");
    const r = store.copy("hot", "cold", "c");
    assert.equal(r.sharedBlocks, 0);
    for (const cid of store.manifest("cold", "c").blocks) {
      assert.notEqual(inode(store, "cold", cid), inode(store, "hot", cid));
      assert.notEqual(inode(store, "cold", cid), inode(store, "warm", cid));
      assert.ok(store.blockStore("cold").header(CID.parse(cid)).keyId !== undefined, "sealed");
    }
  });
});
