// `moe-swarm checkpoint ...`: content-addressed tiered checkpoints (issue #7). Thin wrappers over
// src/storage: the store lives under `--store` (default `<swarm.data_dir>/checkpoints`), one
// folder per tier of `checkpoint_strategy.levels`; the cold tier needs the operator's ML-KEM-768
// key (`checkpoint keygen`). Progress bars go to stderr when it is a terminal. Storage failures
// (corrupt or missing block, wrong key, bad CAR) print what and where, and exit with code 1.

import { chmodSync, existsSync, readFileSync, statSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { SingleBar } from "cli-progress";
import type { Command } from "commander";
import {
  decodeOperatorKey,
  EnvelopeError,
  encodeOperatorKey,
  generateOperatorKeyPair,
  publicKeyOfSecret,
} from "../../crypto/envelope.ts";
import { writeFileAtomic } from "../../storage/atomic.ts";
import { exportCar, importCar } from "../../storage/car.ts";
import type { CheckpointStore } from "../../storage/checkpoint-store.ts";
import { StorageError } from "../../storage/errors.ts";
import { storeFromConfig } from "../../storage/from-config.ts";
import { type TierName, tierNames } from "../../storage/manifest.ts";
import { type CliIO, configFor, OperationError, UsageError } from "../context.ts";

interface StoreOpts {
  store?: string;
  tier: string;
  key?: string;
}

/** A progress bar on stderr (terminals only); `unit` "MB" shows byte counts in megabytes. */
function progressBar(
  label: string,
  unit: "MB" | "blocks" | "items" = "MB",
): {
  update: (done: number, total: number) => void;
  stop: () => void;
} {
  if (!process.stderr.isTTY) return { update: () => {}, stop: () => {} };
  const show = (n: number) => (unit === "MB" ? (n / 1e6).toFixed(1) : String(n));
  const bar = new SingleBar({
    format: `${label} [{bar}] {percentage}% | {shown}/{all} ${unit}`,
    stream: process.stderr,
    hideCursor: true,
  });
  let started = false;
  return {
    update: (done, total) => {
      if (!started) {
        bar.start(total, 0, { shown: show(0), all: show(total) });
        started = true;
      }
      bar.setTotal(total);
      bar.update(done, { shown: show(done), all: show(total) });
    },
    stop: () => {
      if (started) bar.stop();
    },
  };
}

function tierOf(text: string): TierName {
  if (!(tierNames as readonly string[]).includes(text)) {
    throw new UsageError(
      `--tier: expected one of ${tierNames.join(", ")}; got ${JSON.stringify(text)}`,
    );
  }
  return text as TierName;
}

function readKey(path: string): { publicKey: Uint8Array; secretKey?: Uint8Array } {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    throw new UsageError(`--key: cannot read ${path}`);
  }
  const { kind, key } = decodeOperatorKey(text, path);
  return kind === "secret"
    ? { publicKey: publicKeyOfSecret(key), secretKey: key }
    : { publicKey: key };
}

function openStore(command: Command, opts: StoreOpts): CheckpointStore {
  const { config } = configFor(command);
  const dir = resolve(opts.store ?? join(config.swarm.data_dir, "checkpoints"));
  const key = opts.key === undefined ? undefined : readKey(opts.key);
  return storeFromConfig(config, dir, {
    ...(key !== undefined ? { operatorPublicKey: key.publicKey } : {}),
    ...(key?.secretKey !== undefined ? { operatorSecretKey: key.secretKey } : {}),
  });
}

/** Runs a storage operation, turning expected storage failures into exit code 1 with their message. */
async function guarded<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof StorageError || err instanceof EnvelopeError)
      throw new OperationError(err.message);
    throw err;
  }
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(2)} MB`;
}

function storeOptions(cmd: Command, tierDefault = "hot"): Command {
  return cmd
    .option("--store <dir>", "checkpoint store folder (default: <swarm.data_dir>/checkpoints)")
    .option("--tier <name>", "tier: hot, warm or cold", tierDefault)
    .option(
      "--key <file>",
      "operator ML-KEM-768 key file (cold tier: public to save, secret to read)",
    );
}

export function registerCheckpoint(program: Command, io: CliIO): void {
  const cp = program
    .command("checkpoint")
    .description(
      "list, save, restore, verify, copy, delete, gc, export-car and import-car checkpoints",
    );

  cp.command("keygen")
    .description("create an operator ML-KEM-768 key pair for the cold tier's envelope encryption")
    .argument("<prefix>", "writes <prefix>.secret.key (mode 0600) and <prefix>.public.key")
    .action((prefix: string) => {
      const secretPath = `${prefix}.secret.key`;
      const publicPath = `${prefix}.public.key`;
      for (const p of [secretPath, publicPath]) {
        if (existsSync(p))
          throw new UsageError(`${p} already exists; pick another prefix or remove it`);
      }
      const pair = generateOperatorKeyPair();
      writeFileAtomic(
        secretPath,
        new TextEncoder().encode(encodeOperatorKey("secret", pair.secretKey)),
      );
      chmodSync(secretPath, 0o600);
      writeFileAtomic(
        publicPath,
        new TextEncoder().encode(encodeOperatorKey("public", pair.publicKey)),
      );
      io.out(
        `wrote ${secretPath} (keep it safe: it opens every cold checkpoint) and ${publicPath}`,
      );
    });

  storeOptions(
    cp
      .command("save")
      .description("save files as one checkpoint (each file is a shard named by its base name)")
      .argument("<id>", "checkpoint id (letters, digits, '.', '_', '-')")
      .argument("<files...>", "shard files"),
  )
    .option("--step <n>", "training step recorded in the manifest")
    .action(
      async (
        id: string,
        files: string[],
        opts: StoreOpts & { step?: string },
        command: Command,
      ) => {
        const tier = tierOf(opts.tier);
        const step = opts.step === undefined ? undefined : Number(opts.step);
        if (step !== undefined && !(Number.isInteger(step) && step >= 0)) {
          throw new UsageError(
            `--step: expected a non-negative integer; got ${JSON.stringify(opts.step)}`,
          );
        }
        const shards = files.map((f) => {
          if (!existsSync(f) || !statSync(f).isFile()) throw new UsageError(`${f}: not a file`);
          return { name: basename(f), bytes: new Uint8Array(readFileSync(f)) };
        });
        const store = openStore(command, opts);
        const bar = progressBar(`save ${id}`);
        const r = await guarded(() =>
          store.saveAsync(tier, id, shards, {
            ...(step !== undefined ? { step } : {}),
            onProgress: bar.update,
          }),
        ).finally(bar.stop);
        io.out(
          `saved ${id} to ${tier}: root ${r.manifest.root}, ${mb(r.rawBytes)} in ${r.chunks} chunks ` +
            `(${r.duplicateChunks} already stored, ${r.deltaChunks} as deltas), wrote ${mb(r.storedBytes)} ` +
            `(${r.rawBytes === 0 ? "0.000" : (r.storedBytes / r.rawBytes).toFixed(3)}× raw)`,
        );
      },
    );

  cp.command("list")
    .description("list checkpoints of every tier (or one)")
    .option("--store <dir>", "checkpoint store folder (default: <swarm.data_dir>/checkpoints)")
    .option("--tier <name>", "only this tier")
    .option("--json", "print manifests as JSON")
    .action(async (opts: { store?: string; tier?: string; json?: boolean }, command: Command) => {
      const store = openStore(command, { ...opts, tier: opts.tier ?? "hot" });
      const tierName = opts.tier === undefined ? undefined : tierOf(opts.tier);
      const manifests = await guarded(() => store.list(tierName));
      // Copies into a tier that are queued, running, failed or interrupted: not checkpoints yet.
      const pending = await guarded(() => store.pendingCopies(tierName));
      if (opts.json) {
        io.out(
          JSON.stringify(
            manifests.map(({ blocks: _b, ...m }) => m),
            null,
            2,
          ),
        );
        return;
      }
      if (manifests.length === 0 && pending.length === 0) io.out("no checkpoints");
      for (const m of manifests) {
        const bytes = m.shards.reduce((s, x) => s + x.sizeBytes, 0);
        io.out(
          `${m.tier.padEnd(5)} ${m.id.padEnd(24)} step ${String(m.step ?? "-").padEnd(8)} ${new Date(m.createdAtMs).toISOString()} ${m.shards.length} shards ${mb(bytes)} ${m.root}`,
        );
      }
      for (const p of pending) {
        const why = p.state === "failed" ? `: ${p.error ?? "unknown error"}` : "";
        const hint =
          p.state === "interrupted" ? " (its process is gone; `checkpoint gc` clears it)" : "";
        io.out(
          `${p.to.padEnd(5)} ${p.id.padEnd(24)} copy from ${p.from} ${p.state} since ${new Date(p.queuedAtMs).toISOString()}${why}${hint}: not restorable from ${p.to} yet`,
        );
      }
    });

  storeOptions(
    cp
      .command("restore")
      .description("restore a checkpoint's shards into a folder, every byte checked first")
      .argument("<id>", "checkpoint id")
      .argument("<dir>", "output folder"),
  )
    .option("--force", "overwrite existing files")
    .action(
      async (id: string, dir: string, opts: StoreOpts & { force?: boolean }, command: Command) => {
        const tier = tierOf(opts.tier);
        const store = openStore(command, opts);
        const bar = progressBar(`restore ${id}`);
        // Everything is decoded and verified in memory before the first file is written.
        const shards = await guarded(() => store.restore(tier, id, bar.update)).finally(bar.stop);
        if (!opts.force) {
          for (const s of shards) {
            const path = join(dir, s.name);
            if (existsSync(path)) throw new UsageError(`${path} exists; pass --force to overwrite`);
          }
        }
        for (const s of shards) writeFileAtomic(join(dir, s.name), s.bytes);
        io.out(
          `restored ${id} from ${tier}: ${shards.length} shards, ${mb(shards.reduce((a, s) => a + s.bytes.length, 0))} into ${dir}`,
        );
      },
    );

  storeOptions(
    cp
      .command("verify")
      .description(
        "check every block of a tier against its CID and every checkpoint against its hashes",
      ),
    "all",
  ).action(async (opts: StoreOpts, command: Command) => {
    const store = openStore(command, { ...opts, tier: "hot" });
    const tiers = opts.tier === "all" ? store.tierNames : [tierOf(opts.tier)];
    let problems = 0;
    for (const tier of tiers) {
      const bar = progressBar(`verify ${tier}`, "items");
      const r = await guarded(() => store.verify(tier, bar.update)).finally(bar.stop);
      problems += r.problems.length;
      io.out(
        `${tier}: ${r.checkpoints} checkpoints, ${r.checkedBlocks} blocks, ${r.problems.length} problems`,
      );
      for (const p of r.problems)
        io.err(`  ${p.checkpoint ? `[${p.checkpoint}] ` : ""}${p.message}`);
    }
    if (problems > 0) throw new OperationError(`verify found ${problems} problems`);
  });

  cp.command("copy")
    .description("copy a checkpoint to another tier (only chunks that tier lacks are written)")
    .argument("<id>", "checkpoint id")
    .requiredOption("--from <tier>", "source tier")
    .requiredOption("--to <tier>", "destination tier")
    .option("--store <dir>", "checkpoint store folder (default: <swarm.data_dir>/checkpoints)")
    .option(
      "--key <file>",
      "operator key file (secret to read a cold source, public or secret to write cold)",
    )
    .action(
      async (
        id: string,
        opts: { from: string; to: string; store?: string; key?: string },
        command: Command,
      ) => {
        const store = openStore(command, { ...opts, tier: opts.from });
        const bar = progressBar(`copy ${id}`);
        const r = await guarded(() =>
          store.copy(tierOf(opts.from), tierOf(opts.to), id, { onProgress: bar.update }),
        ).finally(bar.stop);
        io.out(
          `copied ${id} ${opts.from} → ${opts.to}: root ${r.manifest.root}, ${r.duplicateChunks}/${r.chunks} chunks already there, wrote ${mb(r.storedBytes)}`,
        );
      },
    );

  storeOptions(
    cp
      .command("delete")
      .description("delete a checkpoint (its blocks go at the next gc unless shared)")
      .argument("<id>", "checkpoint id"),
  ).action(async (id: string, opts: StoreOpts, command: Command) => {
    const store = openStore(command, opts);
    await guarded(() => store.delete(tierOf(opts.tier), id));
    io.out(`deleted ${id} from ${opts.tier}`);
  });

  storeOptions(
    cp
      .command("gc")
      .description(
        "expire checkpoints past their tier's retention, then mark and sweep unreferenced blocks",
      ),
    "all",
  ).action(async (opts: StoreOpts, command: Command) => {
    const store = openStore(command, { ...opts, tier: "hot" });
    const reports = await guarded(() =>
      store.gc(opts.tier === "all" ? undefined : tierOf(opts.tier)),
    );
    for (const r of reports) {
      io.out(
        `${r.tier}: expired ${r.expired.length} (${r.expired.join(", ") || "none"}), ${r.liveCheckpoints} live checkpoints, ` +
          `${r.liveBlocks} live blocks, swept ${r.sweptBlocks} blocks (${mb(r.sweptBytes)}), ${r.sweptKeys} keys` +
          (r.keptForCopies.length > 0
            ? `; kept ${r.keptForCopies.join(", ")} past retention for pending copies`
            : "") +
          (r.sweepSkipped
            ? `; sweep skipped: ${r.sweepSkippedBy ?? "a copy into this tier"} is running`
            : "") +
          (r.staleCopies.length > 0
            ? `; cleared failed/interrupted copies ${r.staleCopies.join(", ")}`
            : ""),
      );
    }
  });

  storeOptions(
    cp
      .command("export-car")
      .description("export a checkpoint (or one shard) as a CARv1 file that IPFS tools read")
      .argument("<id>", "checkpoint id")
      .argument("<file>", "output .car file"),
  )
    .option("--shard <name>", "export only this shard")
    .action(
      async (id: string, file: string, opts: StoreOpts & { shard?: string }, command: Command) => {
        const store = openStore(command, opts);
        const bar = progressBar(`export ${id}`, "blocks");
        const r = await guarded(() =>
          exportCar(store, tierOf(opts.tier), id, file, {
            ...(opts.shard !== undefined ? { shard: opts.shard } : {}),
            onProgress: bar.update,
          }),
        ).finally(bar.stop);
        io.out(`wrote ${file}: root ${r.root}, ${r.blocks} blocks, ${mb(r.bytes)}`);
      },
    );

  storeOptions(
    cp
      .command("import-car")
      .description(
        "import a CARv1 file as a checkpoint; every block is checked against its CID first",
      )
      .argument("<file>", ".car file")
      .argument("<id>", "checkpoint id to create"),
  )
    .option("--shard-name <name>", "shard name when the CAR root is a single file", "shard")
    .action(
      async (
        file: string,
        id: string,
        opts: StoreOpts & { shardName: string },
        command: Command,
      ) => {
        const store = openStore(command, opts);
        const r = await guarded(() =>
          importCar(store, tierOf(opts.tier), id, file, { shardName: opts.shardName }),
        );
        io.out(
          `imported ${file} as ${id} in ${opts.tier}: root ${r.manifest.root}, ${r.manifest.shards.length} shards, wrote ${mb(r.storedBytes)}`,
        );
      },
    );
}
