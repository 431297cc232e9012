// Weights as safetensors: round trip to identical logits, and rejection of bad files.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import {
  CheckpointError,
  encodeModel,
  loadModelInto,
  readModelFile,
  saveModel,
} from "../../src/model/checkpoint.ts";
import { sequentialBatches } from "../../src/model/dataset.ts";
import { generateBytes } from "../../src/model/generate.ts";
import { LocalExpertHost } from "../../src/model/local-expert-host.ts";
import {
  decodeSafetensors,
  encodeSafetensors,
  SafetensorsError,
} from "../../src/model/safetensors.ts";
import { Trainer } from "../../src/model/trainer.ts";
import { MoeTransformer } from "../../src/model/transformer.ts";
import { noGradAsync } from "../../src/tensor/tensor.ts";
import { tinyConfig } from "./tiny.ts";

const dir = mkdtempSync(join(tmpdir(), "moe-ckpt-"));
after(() => rmSync(dir, { recursive: true, force: true }));

async function trainedTiny() {
  const mc = tinyConfig();
  const host = await LocalExpertHost.create(mc, { backend: "js" });
  const model = new MoeTransformer(mc, host);
  const trainer = new Trainer(model);
  const [batch] = sequentialBatches(
    new TextEncoder().encode("call me ishmael. some years ago, never mind"),
    1,
    32,
    1,
  );
  for (let s = 0; s < 3; s++) await trainer.trainStep(batch as NonNullable<typeof batch>, 1e-2);
  return { mc, host, model };
}

describe("safetensors format", () => {
  it("round-trips tensors and metadata, header 8-byte aligned", () => {
    const t = [
      { name: "a", shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, -6.5]) },
      { name: "b", shape: [0], data: new Float32Array(0) },
      { name: "c", shape: [], data: Float32Array.from([7]) },
    ];
    const bytes = encodeSafetensors(t, { k: "v" });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal((8 + n) % 8, 0);
    const back = decodeSafetensors(bytes);
    assert.deepEqual(back.metadata, { k: "v" });
    assert.deepEqual(back.tensors.get("a")?.data, t[0]?.data);
    assert.deepEqual(back.tensors.get("c")?.shape, []);
  });

  it("rejects truncated, oversized, overlapping and mistyped files with a reason", () => {
    const good = encodeSafetensors([
      { name: "a", shape: [4], data: Float32Array.from([1, 2, 3, 4]) },
    ]);
    const header = (json: string, data = 16) => {
      const h = new TextEncoder().encode(json);
      const b = new Uint8Array(8 + h.length + data);
      new DataView(b.buffer).setBigUint64(0, BigInt(h.length), true);
      b.set(h, 8);
      return b;
    };
    const cases: [Uint8Array, RegExp][] = [
      [good.subarray(0, 5), /truncated/],
      [good.subarray(0, good.length - 1), /truncated|ends at byte/],
      [Uint8Array.from([...good, 0, 0]), /trailing bytes/],
      [header("{", 0), /not valid UTF-8 JSON/],
      [header('{"a":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}', 8), /dtype "F16"/],
      [header('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}'), /needs 12/],
      [
        header(
          '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
        ),
        /holes or overlaps/,
      ],
      [
        header('{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}', 0),
        /non-negative integers/,
      ],
      [header('{"__metadata__":{"x":1}}', 0), /not a string/],
    ];
    const big = new Uint8Array(16);
    new DataView(big.buffer).setBigUint64(0, 2n ** 40n, true);
    cases.push([big, /exceeds/]);
    for (const [bytes, why] of cases)
      assert.throws(
        () => decodeSafetensors(bytes),
        (e: Error) => e instanceof SafetensorsError && why.test(e.message),
        String(why),
      );
  });
});

describe("model checkpoints", () => {
  it("save → load gives identical logits (trunk and experts)", async () => {
    const { mc, host, model } = await trainedTiny();
    const path = join(dir, "m.safetensors");
    saveModel(path, model, host, { step: "3" });
    const host2 = await LocalExpertHost.create(mc, { backend: "js" });
    const model2 = new MoeTransformer(mc, host2);
    const ids = Int32Array.from(new TextEncoder().encode("the sea, the sea"));
    const before = await noGradAsync(() => model2.forward(ids, 1, ids.length));
    const meta = loadModelInto(readModelFile(path), model2, host2, path);
    assert.equal(meta.step, "3");
    const a = await noGradAsync(() =>
      model.forward(ids, 1, ids.length, undefined, { routingCache: false }),
    );
    const b = await noGradAsync(() =>
      model2.forward(ids, 1, ids.length, undefined, { routingCache: false }),
    );
    assert.deepEqual(b.logits.data, a.logits.data);
    assert.notDeepEqual(before.logits.data, a.logits.data);
    // and the same seeded samples
    const s1 = await generateBytes(model, ids, {
      maxNewBytes: 8,
      temperature: 1,
      topK: 20,
      rng: new Prng(1),
    });
    const s2 = await generateBytes(model2, ids, {
      maxNewBytes: 8,
      temperature: 1,
      topK: 20,
      rng: new Prng(1),
    });
    assert.deepEqual(s1, s2);
  });

  it("rejects a file with a mismatched config, naming the field", async () => {
    const { host, model } = await trainedTiny();
    const bytes = encodeModel(model, host);
    const other = { ...tinyConfig(), seed: 99 };
    const host3 = await LocalExpertHost.create(other, { backend: "js" });
    assert.throws(
      () => loadModelInto(bytes, new MoeTransformer(other, host3), host3, "m.safetensors"),
      (e: Error) =>
        e instanceof CheckpointError && /config\.seed: file has 1337, expected 99/.test(e.message),
    );
  });

  it("rejects wrong shapes, missing tensors and truncated bytes without changing weights", async () => {
    const { mc, host, model } = await trainedTiny();
    const host2 = await LocalExpertHost.create(mc, { backend: "js" });
    const model2 = new MoeTransformer(mc, host2);
    const snapshot = Float32Array.from(model2.tokEmb.data);
    const tensors = decodeSafetensors(encodeModel(model, host));
    const meta = { ...tensors.metadata };
    const list = [...tensors.tensors.values()];
    const wrongShape = encodeSafetensors(
      list.map((t) =>
        t.name === "head.bias" ? { ...t, shape: [t.data.length - 2], data: t.data.subarray(2) } : t,
      ),
      meta,
    );
    assert.throws(
      () => loadModelInto(wrongShape, model2, host2),
      /head\.bias has shape \[256\], expected \[258\]/,
    );
    const missing = encodeSafetensors(
      list.filter((t) => t.name !== "experts.L1.E0.w2"),
      meta,
    );
    assert.throws(() => loadModelInto(missing, model2, host2), /experts\.L1\.E0\.w2 is missing/);
    const good = encodeModel(model, host);
    assert.throws(
      () => loadModelInto(good.subarray(0, good.length - 100), model2, host2),
      (e: Error) => e instanceof CheckpointError && /truncated/.test(e.message),
    );
    assert.throws(
      () => loadModelInto(encodeSafetensors(list, {}), model2, host2),
      /metadata\.format/,
    );
    assert.deepEqual(model2.tokEmb.data, snapshot);
    assert.throws(
      () => readModelFile(join(dir, "nope.safetensors")),
      /no model at .*moe-swarm train/,
    );
  });

  it("writes atomically to the given path", async () => {
    const { host, model } = await trainedTiny();
    const path = join(dir, "nested", "x.safetensors");
    const n = saveModel(path, model, host);
    assert.equal(readFileSync(path).length, n);
  });
});
