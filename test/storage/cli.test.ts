import assert from "node:assert/strict";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { main } from "../../src/cli/main.ts";
import { floatBytes, tempDir } from "./fixtures/store.ts";

async function run(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await main(["node", "moe-swarm", ...args], {
    out: (t) => (out += t),
    err: (t) => (err += t),
  });
  return { code, out, err };
}

const t = tempDir("cli");
after(t.cleanup);

describe("moe-swarm checkpoint", () => {
  const config = join(t.dir, "small-chunks.yaml");
  const store = join(t.dir, "store");
  const files = join(t.dir, "files");
  const ck = (...args: string[]) => run("--config", config, "checkpoint", ...args);

  it("has --help on every subcommand", async () => {
    for (const sub of [
      "keygen",
      "save",
      "list",
      "restore",
      "verify",
      "delete",
      "gc",
      "export-car",
      "import-car",
    ]) {
      const r = await run("checkpoint", sub, "--help");
      assert.equal(r.code, 0, sub);
      assert.match(r.out, new RegExp(`Usage: moe-swarm checkpoint ${sub}`));
    }
  });

  it("saves, lists, restores, exports and imports; a wrong key fails cleanly and overwrites nothing", async () => {
    writeFileSync(
      config,
      "checkpoint_strategy:\n  deduplication:\n    algorithm: content_defined_chunking\n    chunk_size: 4KB\n    similarity_threshold: 0.8\n",
    );
    const { mkdirSync } = await import("node:fs");
    mkdirSync(files);
    writeFileSync(join(files, "weights.f32"), floatBytes(8, 30_000));
    writeFileSync(join(files, "meta.json"), '{"step":1000}');
    assert.equal((await ck("keygen", join(t.dir, "op"))).code, 0);
    assert.equal((await ck("keygen", join(t.dir, "other"))).code, 0);
    const save = await ck(
      "save",
      "step-1000",
      join(files, "weights.f32"),
      join(files, "meta.json"),
      "--store",
      store,
      "--tier",
      "cold",
      "--step",
      "1000",
      "--key",
      join(t.dir, "op.public.key"),
    );
    assert.equal(save.code, 0, save.err);
    assert.match(save.out, /saved step-1000 to cold: root bafy\w+, 0\.12 MB in \d+ chunks/);
    const list = await ck("list", "--store", store);
    assert.match(list.out, /cold\s+step-1000\s+step 1000/);

    // Wrong key: exit 1, a message that says what to do, and the existing output untouched.
    const out = join(t.dir, "restored");
    mkdirSync(out);
    writeFileSync(join(out, "weights.f32"), "previous contents");
    const wrong = await ck(
      "restore",
      "step-1000",
      out,
      "--store",
      store,
      "--tier",
      "cold",
      "--key",
      join(t.dir, "other.secret.key"),
      "--force",
    );
    assert.equal(wrong.code, 1);
    assert.match(wrong.err, /wrong operator key.*pass the matching --key file/);
    assert.equal(readFileSync(join(out, "weights.f32"), "utf8"), "previous contents");
    assert.deepEqual(readdirSync(out), ["weights.f32"]);

    const right = await ck(
      "restore",
      "step-1000",
      out,
      "--store",
      store,
      "--tier",
      "cold",
      "--key",
      join(t.dir, "op.secret.key"),
      "--force",
    );
    assert.equal(right.code, 0, right.err);
    assert.deepEqual(
      readFileSync(join(out, "weights.f32")),
      readFileSync(join(files, "weights.f32")),
    );
    assert.deepEqual(readFileSync(join(out, "meta.json")), readFileSync(join(files, "meta.json")));

    const car = join(t.dir, "step-1000.car");
    const exp = await ck(
      "export-car",
      "step-1000",
      car,
      "--store",
      store,
      "--tier",
      "cold",
      "--key",
      join(t.dir, "op.secret.key"),
    );
    assert.equal(exp.code, 0, exp.err);
    const imp = await ck("import-car", car, "copy", "--store", store, "--tier", "warm");
    assert.equal(imp.code, 0, imp.err);
    const verify = await ck("verify", "--store", store, "--key", join(t.dir, "op.secret.key"));
    assert.equal(verify.code, 0, verify.err);
    assert.match(verify.out, /warm: 1 checkpoints, \d+ blocks, 0 problems/);

    // Corrupt one warm block file: verify names it and exits 1; restore refuses.
    const blocksDir = join(store, "warm", "blocks");
    const sub = readdirSync(blocksDir)[0] as string;
    const name = readdirSync(join(blocksDir, sub))[0] as string;
    const path = join(blocksDir, sub, name);
    const bytes = readFileSync(path);
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 0xff;
    writeFileSync(path, bytes);
    const bad = await ck("verify", "--store", store, "--tier", "warm");
    assert.equal(bad.code, 1);
    assert.ok(bad.err.includes(name) && bad.err.includes(path), bad.err);
    const refused = await ck(
      "restore",
      "copy",
      join(t.dir, "never"),
      "--store",
      store,
      "--tier",
      "warm",
    );
    assert.equal(refused.code, 1);
    assert.match(refused.err, /corrupt|missing/);

    const copy = await ck(
      "copy",
      "step-1000",
      "--from",
      "cold",
      "--to",
      "hot",
      "--store",
      store,
      "--key",
      join(t.dir, "op.secret.key"),
    );
    assert.equal(copy.code, 0, copy.err);
    assert.match(copy.out, /copied step-1000 cold → hot: root bafy/);
    const gc = await ck("gc", "--store", store);
    assert.equal(gc.code, 0, gc.err);
    assert.match(gc.out, /cold: expired 0/);
    assert.equal((await ck("save", "x", "/nonexistent", "--store", store)).code, 2);
  });
});
