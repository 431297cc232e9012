// `moe-swarm up|node|gateway`: the swarm data plane (issue #5). Long-running commands print one
// JSON "listening" line on stdout (what `up` and the tests read) and stop cleanly on SIGINT/SIGTERM.

import type { Command } from "commander";
import type { ExpertBackend } from "../../model/local-expert-host.ts";
import { startNodeProcess } from "../../swarm/node-process.ts";
import { type CliIO, configFor, notBuilt, UsageError } from "../context.ts";

function intOption(value: string, flag: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new UsageError(`${flag}: expected an integer ${min}..${max}; got "${value}"`);
  return n;
}

/** Resolves on the first SIGINT or SIGTERM. */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (signal: NodeJS.Signals) => {
      process.off("SIGINT", on);
      process.off("SIGTERM", on);
      resolve(signal);
    };
    process.on("SIGINT", on);
    process.on("SIGTERM", on);
  });
}

export function registerSwarm(program: Command, io: CliIO): void {
  notBuilt(
    program,
    "up",
    "start the whole local swarm: coordinators, expert nodes per region, gateway, dashboard",
    5,
  );

  program
    .command("node")
    .description("run one expert node hosting its planned experts (placement from the config)")
    .requiredOption("--region <code>", "region of this node, e.g. ORD")
    .option("--index <n>", "index of this node within its region", "0")
    .option("--port <n>", "TCP port to listen on (0 = any free port)", "0")
    .option("--host <addr>", "address to listen on (default: swarm.host of the config)")
    .option("--backend <name>", "expert kernels: js, onnx or auto", "auto")
    .option("--threads <n>", "onnxruntime threads per call", "1")
    .action(async (opts: Record<string, string>, command: Command) => {
      const { config } = configFor(command);
      const backend = opts.backend as ExpertBackend;
      if (!["js", "onnx", "auto"].includes(backend))
        throw new UsageError(`--backend: expected js, onnx or auto; got "${opts.backend}"`);
      let running: Awaited<ReturnType<typeof startNodeProcess>>;
      try {
        running = await startNodeProcess(config, {
          region: String(opts.region),
          index: intOption(String(opts.index), "--index", 0, 1023),
          port: intOption(String(opts.port), "--port", 0, 65535),
          host: opts.host,
          backend,
          threads: intOption(String(opts.threads), "--threads", 1, 64),
        });
      } catch (err) {
        if (err instanceof RangeError) throw new UsageError(err.message);
        throw err;
      }
      io.out(
        JSON.stringify({
          event: "listening",
          role: "node",
          nodeId: running.nodeId,
          region: String(opts.region),
          host: running.host,
          port: running.port,
          experts: running.experts,
        }),
      );
      await untilSignal();
      await running.close();
    });

  notBuilt(program, "gateway", "run the gateway: trunk, expert dispatch and the HTTP API", 5);
}
