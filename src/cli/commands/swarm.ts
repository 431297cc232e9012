// `moe-swarm up|node|gateway`: the swarm data plane (issue #5). Long-running commands print one
// JSON "listening" line on stdout (what `up` and the tests read) and stop cleanly on SIGINT/SIGTERM.

import type { Command } from "commander";
import type { ExpertBackend } from "../../model/local-expert-host.ts";
import { startGateway } from "../../swarm/gateway.ts";
import { startNodeProcess } from "../../swarm/node-process.ts";
import { placementFromFile } from "../../swarm/placement.ts";
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
    .option(
      "--model <file>",
      "trained model file (default: weights initialised from the model seed)",
    )
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
          modelPath: opts.model,
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

  program
    .command("gateway")
    .description(
      "run the gateway: trunk, expert dispatch to the nodes and the OpenAI-compatible HTTP API",
    )
    .requiredOption("--placement <file>", "placement JSON: the nodes, their addresses and experts")
    .option("--port <n>", "HTTP port (default: swarm.gateway_port of the config; 0 = any)")
    .option("--host <addr>", "address to listen on (default: swarm.host of the config)")
    .option("--region <code>", "region of the gateway (default: the global coordinator's)")
    .option(
      "--model <file>",
      "trained model file (default: weights initialised from the model seed)",
    )
    .option("--no-hedging", "do not hedge slow expert calls to a second replica")
    .action(async (opts: Record<string, string | boolean | undefined>, command: Command) => {
      const { config } = configFor(command);
      let gateway: Awaited<ReturnType<typeof startGateway>>;
      try {
        gateway = await startGateway(config, {
          placement: placementFromFile(String(opts.placement)),
          port:
            opts.port === undefined ? undefined : intOption(String(opts.port), "--port", 0, 65535),
          host: opts.host as string | undefined,
          region: opts.region as string | undefined,
          modelPath: opts.model as string | undefined,
          hedging: opts.hedging !== false,
        });
      } catch (err) {
        if (err instanceof RangeError) throw new UsageError(err.message);
        throw err;
      }
      io.out(
        JSON.stringify({
          event: "listening",
          role: "gateway",
          url: gateway.url,
          port: gateway.port,
        }),
      );
      await untilSignal();
      await gateway.close();
    });
}
