// `moe-swarm coordinator`: one replica of the BFT registry (issue #6), plus the tools around it:
// key generation, the deterministic simulator (a failing seed reproduces with one command) and a
// status query.

import { join } from "node:path";
import type { Command } from "commander";
import { oneWayLatencySeconds } from "../../config/schema.ts";
import { RegistryClient } from "../../consensus/client.ts";
import { retainedCommittedBlocks, snapshotEveryBlocks } from "../../consensus/constants.ts";
import { generateClusterKeys, loadClusterKeys } from "../../consensus/keys.ts";
import { CoordinatorNode, clientPort } from "../../consensus/node.ts";
import { runSimulation } from "../../consensus/sim/simulation.ts";
import { regionsInLeaderOrder } from "../../consensus/types.ts";
import { CoordinatorMetrics } from "../../observe/coordinator-metrics.ts";
import { type CliIO, configFor, OperationError, UsageError } from "../context.ts";

export const portBaseDefault = 7400;

/** Human lines for the Byzantine evidence in a coordinator's status (none when it has none). */
export function evidenceLines(status: Record<string, unknown>): string[] {
  const total = typeof status.evidenceTotal === "number" ? status.evidenceTotal : 0;
  if (total === 0) return [];
  const by = Array.isArray(status.evidenceByReplica) ? status.evidenceByReplica : [];
  const counts = by
    .map((n, i) => (typeof n === "number" && n > 0 ? `${regionsInLeaderOrder[i]} ${n}` : ""))
    .filter(Boolean)
    .join(", ");
  const records = Array.isArray(status.evidence) ? status.evidence : [];
  const lines = [`evidence: ${total} (against ${counts})`];
  for (const r of records.slice(-5) as { region?: unknown; view?: unknown; reason?: unknown }[])
    lines.push(`  view ${String(r.view)}, against ${String(r.region)}: ${String(r.reason)}`);
  return lines;
}
/** Replica i serves /metrics on port base + 20 + i unless --metrics-port says otherwise. */
export const metricsPortOffset = 20;

function intOption(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0)
    throw new UsageError(`${name}: expected a non-negative integer; got "${text}"`);
  return n;
}

export function registerCoordinator(program: Command, io: CliIO): void {
  const cmd = program
    .command("coordinator")
    .description(
      "run one BFT coordinator replica (ORD, IAD, SJC, AMS or SYD); subcommands: keygen, simulate, status",
    )
    .option("-r, --region <code>", `which coordinator (${regionsInLeaderOrder.join(", ")})`)
    .option("--keys <dir>", "directory made by `coordinator keygen`", "./data/coordinator-keys")
    .option(
      "--data-dir <dir>",
      "WAL and snapshots (default: <swarm.data_dir>/coordinators/<region>)",
    )
    .option(
      "--port-base <n>",
      `replica i listens on n+i, clients on n+10+i`,
      String(portBaseDefault),
    )
    .option("--chain-id <id>", "cluster id bound into every signature", "moe-swarm")
    .option(
      "--metrics-port <n>",
      `HTTP port of this replica's Prometheus /metrics (0: any free port; default port base + ${metricsPortOffset} + replica index)`,
    )
    .option(
      "--retain-blocks <n>",
      `committed blocks kept for lagging peers; further behind, they catch up by a certified snapshot (default ${retainedCommittedBlocks})`,
    )
    .option(
      "--snapshot-every <n>",
      `blocks between snapshots and signed checkpoints; equal on every replica (default ${snapshotEveryBlocks})`,
    )
    .action(
      async (
        opts: {
          region?: string;
          keys: string;
          dataDir?: string;
          portBase: string;
          chainId: string;
          metricsPort?: string;
          retainBlocks?: string;
          snapshotEvery?: string;
        },
        c: Command,
      ) => {
        if (!opts.region)
          throw new UsageError(
            "coordinator: --region is required (or use a subcommand: keygen, simulate, status)",
          );
        const id = regionsInLeaderOrder.indexOf(
          opts.region as (typeof regionsInLeaderOrder)[number],
        );
        if (id < 0)
          throw new UsageError(
            `coordinator --region: expected one of ${regionsInLeaderOrder.join(", ")}; got "${opts.region}"`,
          );
        const cfg = configFor(c).config;
        const portBase = intOption("--port-base", opts.portBase, portBaseDefault);
        const metricsPort = intOption(
          "--metrics-port",
          opts.metricsPort,
          portBase + metricsPortOffset + id,
        );
        if (metricsPort > 65535)
          throw new UsageError(`--metrics-port: expected a port ≤ 65535; got ${metricsPort}`);
        let keys: ReturnType<typeof loadClusterKeys>;
        try {
          keys = loadClusterKeys(opts.keys, opts.region);
        } catch (err) {
          throw new OperationError((err as Error).message);
        }
        const { secretKey, publicKeys } = keys;
        const region = opts.region;
        const host = cfg.swarm.host === "0.0.0.0" ? "127.0.0.1" : cfg.swarm.host;
        // Set once the node exists: the metrics read its replica's status at each scrape.
        let node: CoordinatorNode | undefined;
        const metrics = new CoordinatorMetrics({
          config: cfg,
          region,
          source: {
            status: () => {
              if (!node) throw new Error("coordinator not started");
              return node.replica.status();
            },
            walFsyncs: () => node?.walFsyncs ?? 0,
            signatureBackend: () => node?.signatureBackend,
          },
        });
        node = new CoordinatorNode({
          id,
          chainId: opts.chainId,
          host,
          portBase,
          dataDir: opts.dataDir ?? join(cfg.swarm.data_dir, "coordinators", region),
          secretKey,
          publicKeys,
          viewTimeoutMs: cfg.consensus.view_timeout.seconds * 1000,
          keyEpochMs: cfg.consensus.key_epoch.seconds * 1000,
          maxBatch: cfg.consensus.max_batch,
          retainedCommittedBlocks: Math.max(
            2,
            intOption("--retain-blocks", opts.retainBlocks, retainedCommittedBlocks),
          ),
          snapshotEveryBlocks: Math.max(
            1,
            intOption("--snapshot-every", opts.snapshotEvery, snapshotEveryBlocks),
          ),
          latencyMs: (peer) =>
            1000 * oneWayLatencySeconds(cfg, region, regionsInLeaderOrder[peer] as string),
          log: (line) => io.err(`[${region}] ${line}`),
          observer: metrics,
        });
        const running = node;
        let served: { url: string };
        try {
          served = await metrics.serve(host, metricsPort);
        } catch (err) {
          throw new OperationError(
            `coordinator --metrics-port ${metricsPort}: cannot listen (${(err as Error).message}); pick another port or 0 for any`,
          );
        }
        await running.start();
        io.out(
          `coordinator ${region} (replica ${id}) up: peers on ${portBase + id}, clients on ${clientPort(portBase, id)}, metrics on ${served.url}`,
        );
        await new Promise<void>((resolve) => {
          const stop = () => {
            running.stop();
            void metrics.close();
            resolve();
          };
          process.once("SIGINT", stop);
          process.once("SIGTERM", stop);
        });
      },
    );

  cmd
    .command("keygen")
    .description("create ML-DSA-65 identity keys for the five coordinators")
    .requiredOption("--out <dir>", "directory for <REGION>.seed (secret) and public-keys.json")
    .action((opts: { out: string }) => {
      generateClusterKeys(opts.out);
      io.out(
        `wrote ${regionsInLeaderOrder.map((r) => `${r}.seed`).join(", ")} and public-keys.json to ${opts.out}`,
      );
    });

  cmd
    .command("simulate")
    .description(
      "run seeded deterministic simulations (faults + one Byzantine replica); prints failing seeds",
    )
    .option("--seed <n>", "first seed", "1")
    .option("--seeds <n>", "how many consecutive seeds", "1")
    .option("--ml-dsa", "sign with real ML-DSA-65 instead of the simulation MAC (slow)")
    .option("-v, --verbose", "print every run's statistics")
    .option(
      "--retain <n>",
      "committed blocks each replica keeps (small: lagging replicas need state transfer)",
    )
    .option(
      "--long-crash <replica@ms>",
      "crash this replica (0-4) at this simulated time and keep it down until the heal",
    )
    .option("--ops <n>", "operations per client")
    .option("--liveness-views <n>", "views a replica may take to commit again after the heal")
    .action(
      (opts: {
        seed: string;
        seeds: string;
        mlDsa?: boolean;
        verbose?: boolean;
        retain?: string;
        longCrash?: string;
        ops?: string;
        livenessViews?: string;
      }) => {
        const first = intOption("--seed", opts.seed, 1);
        const count = intOption("--seeds", opts.seeds, 1);
        const crash =
          opts.longCrash === undefined ? undefined : /^([0-4])@(\d{1,9})$/.exec(opts.longCrash);
        if (opts.longCrash !== undefined && !crash)
          throw new UsageError(
            `--long-crash: expected <replica 0-4>@<simulated ms>, e.g. 3@100; got "${opts.longCrash}"`,
          );
        const extra = {
          ...(opts.retain !== undefined
            ? { retainedCommittedBlocks: Math.max(2, intOption("--retain", opts.retain, 2)) }
            : {}),
          ...(crash
            ? { crashUntilHeal: { replica: Number(crash[1]), atMs: Number(crash[2]) } }
            : {}),
          ...(opts.ops !== undefined ? { opsPerClient: intOption("--ops", opts.ops, 6) } : {}),
          ...(opts.livenessViews !== undefined
            ? { livenessViewsMax: intOption("--liveness-views", opts.livenessViews, 12) }
            : {}),
        };
        const started = performance.now();
        const failed: number[] = [];
        for (let seed = first; seed < first + count; seed++) {
          const r = runSimulation({
            seed,
            ...(opts.mlDsa ? { signatures: "ml-dsa-65" as const } : {}),
            ...extra,
          });
          if (!r.ok) {
            failed.push(seed);
            io.out(
              `seed ${seed} FAILED: ${r.violations.join("; ")}\n  byzantine: ${JSON.stringify(r.byzantine)}\n  reproduce: ${r.reproduce}`,
            );
          } else if (opts.verbose || count === 1) {
            io.out(
              `seed ${seed} ok: ${JSON.stringify(r.stats)} byzantine ${JSON.stringify(r.byzantine)}`,
            );
            if (count === 1)
              for (const [reason, n] of r.rejectReasons) io.out(`  rejected ×${n}: ${reason}`);
          }
        }
        const s = (performance.now() - started) / 1000;
        io.out(`${count - failed.length}/${count} seeds passed in ${s.toFixed(1)} s`);
        if (failed.length > 0) throw new OperationError(`failing seeds: ${failed.join(", ")}`);
      },
    );

  cmd
    .command("status")
    .description("print each coordinator's view, leader, committed height and counters")
    .option("--port-base <n>", "as given to the coordinators", String(portBaseDefault))
    .action(async (opts: { portBase: string }) => {
      const portBase = intOption("--port-base", opts.portBase, portBaseDefault);
      const client = new RegistryClient({
        endpoints: regionsInLeaderOrder.map((_, i) => ({
          host: "127.0.0.1",
          port: clientPort(portBase, i),
        })),
      });
      try {
        for (let i = 0; i < regionsInLeaderOrder.length; i++) {
          try {
            const status = await client.status(i);
            io.out(`${regionsInLeaderOrder[i]}: ${JSON.stringify(status)}`);
            for (const line of evidenceLines(status)) io.out(`  ${line}`);
          } catch (err) {
            io.out(`${regionsInLeaderOrder[i]}: down (${(err as Error).message})`);
          }
        }
      } finally {
        client.close();
      }
    });
}
