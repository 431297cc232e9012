// `moe-swarm up|node|gateway`: the swarm data plane (issue #5). Long-running commands print one
// JSON "listening" line on stdout (what `up` and the tests read) and stop cleanly on SIGINT/SIGTERM.

import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import type { ExpertBackend } from "../../model/local-expert-host.ts";
import { runMoeSwarm } from "../../swarm/child-nodes.ts";
import { startGateway } from "../../swarm/gateway.ts";
import { startNodeProcess } from "../../swarm/node-process.ts";
import { placementFromFile } from "../../swarm/placement.ts";
import { swarmUp } from "../../swarm/swarm-up.ts";
import { type CliIO, configFor, OperationError, UsageError } from "../context.ts";

/** Training budget of `up` when no model file exists yet. */
const upTrainSecondsDefault = 120;

function intOption(value: string, flag: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new UsageError(`${flag}: expected an integer ${min}..${max}; got "${value}"`);
  return n;
}

function trunkKernels(text: string): "onnx" | "js" {
  if (text !== "onnx" && text !== "js")
    throw new UsageError(`--trunk: expected onnx or js; got "${text}"`);
  return text;
}

function parseRegions(text: string): string[] {
  const list = text.split(",").map((r) => r.trim().toUpperCase());
  if (
    list.length === 0 ||
    list.some((r) => !/^[A-Z]{3}$/.test(r)) ||
    new Set(list).size !== list.length
  )
    throw new UsageError(
      `--regions: expected distinct three-letter codes like ORD,IAD,SJC; got "${text}"`,
    );
  return list;
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
  program
    .command("up")
    .description(
      "start the whole local swarm on loopback: expert nodes in every region and the gateway; prints the URL",
    )
    .option("--regions <list>", "regions to run, comma-separated (default: all configured)")
    .option("--nodes <n>", "expert nodes per region (default: swarm.nodes_per_region)")
    .option("--port <n>", "gateway HTTP port (default: swarm.gateway_port; 0 = any free port)")
    .option(
      "--model <file>",
      "model file to serve (default: <data_dir>/models/<profile>.safetensors)",
    )
    .option(
      "--train-seconds <n>",
      "training budget when no model file exists yet",
      String(upTrainSecondsDefault),
    )
    .option("--untrained", "serve the seed-initialised model without training one")
    .option("--backend <name>", "expert kernels on the nodes: js, onnx or auto", "auto")
    .action(async (opts: Record<string, string | boolean | undefined>, command: Command) => {
      const { config } = configFor(command);
      const configPath = command.optsWithGlobals<{ config?: string }>().config;
      const regions =
        opts.regions === undefined
          ? config.regions.map((r) => r.code)
          : parseRegions(String(opts.regions));
      const nodesPerRegion =
        opts.nodes === undefined
          ? config.swarm.nodes_per_region
          : intOption(String(opts.nodes), "--nodes", 1, 64);
      const port =
        opts.port === undefined
          ? config.swarm.gateway_port
          : intOption(String(opts.port), "--port", 0, 65535);
      let modelPath: string | undefined;
      if (!opts.untrained) {
        modelPath =
          (opts.model as string | undefined) ??
          join(config.swarm.data_dir, "models", `${config.profile}.safetensors`);
        if (!existsSync(modelPath)) {
          if (opts.model !== undefined) throw new UsageError(`--model: no file at ${modelPath}`);
          const budget = intOption(String(opts.trainSeconds), "--train-seconds", 1, 3600);
          io.err(
            `no trained model at ${modelPath}: training one for up to ${budget} s (moe-swarm train on Moby Dick)`,
          );
          // The model's own training command (issue #4), with its progress bar, in a child process.
          const code = await runMoeSwarm(
            ["train", "--minutes", String(budget / 60), "--out", modelPath],
            configPath,
          );
          if (code !== 0 || !existsSync(modelPath))
            throw new OperationError(`moe-swarm up: training the model failed (exit ${code})`);
        }
      }
      io.err(
        `starting ${regions.length * nodesPerRegion} expert nodes (${regions.join(", ")}) and the gateway…`,
      );
      let swarm: Awaited<ReturnType<typeof swarmUp>>;
      try {
        swarm = await swarmUp(config, {
          configPath,
          regions,
          nodesPerRegion,
          gatewayPort: port,
          modelPath,
          backend: String(opts.backend),
          log: (line) => io.err(line),
        });
      } catch (err) {
        if (err instanceof UsageError) throw err;
        if (err instanceof RangeError) throw new UsageError(err.message);
        throw new OperationError(
          `moe-swarm up: the swarm did not start: ${(err as Error).message}`,
        );
      }
      let stopping = false;
      for (const n of swarm.nodes)
        n.child.once("exit", (code, signal) => {
          if (!stopping)
            io.err(
              `node ${n.nodeId} exited (${signal ?? code}); its experts are served by their replicas`,
            );
        });
      io.out(
        JSON.stringify({
          event: "listening",
          role: "up",
          url: swarm.url,
          nodes: swarm.nodes.length,
        }),
      );
      io.out(
        [
          `moe-swarm is up: ${swarm.url}  (${swarm.nodes.length} expert nodes in ${regions.join(", ")}; placement ${swarm.placementPath})`,
          `  curl ${swarm.url}/v1/completions -H 'content-type: application/json' -d '{"model":"moe-swarm-${config.profile}","prompt":"Call me Ishmael.","max_tokens":40}'`,
          `  swarm state: ${swarm.url}/v1/swarm   ·   Ctrl-C stops everything`,
        ].join("\n"),
      );
      await untilSignal();
      stopping = true;
      io.err("stopping the gateway and the expert nodes…");
      await swarm.stop();
    });

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
    .option("--regions <list>", "regions of the placement plan, comma-separated (default: all)")
    .option(
      "--nodes-per-region <n>",
      "nodes per region of the placement plan (default: swarm.nodes_per_region)",
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
          regions: opts.regions === undefined ? undefined : parseRegions(opts.regions),
          nodesPerRegion:
            opts.nodesPerRegion === undefined
              ? undefined
              : intOption(String(opts.nodesPerRegion), "--nodes-per-region", 1, 64),
        });
      } catch (err) {
        if (err instanceof UsageError) throw err;
        if (err instanceof RangeError) throw new UsageError(err.message);
        throw new OperationError(`moe-swarm node: ${(err as Error).message}`);
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
    .option("--trunk <k>", "trunk kernels: onnx (onnxruntime) or js", "onnx")
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
          trunk: trunkKernels(String(opts.trunk)),
        });
      } catch (err) {
        if (err instanceof UsageError) throw err;
        if (err instanceof RangeError) throw new UsageError(err.message);
        throw new OperationError(`moe-swarm gateway: ${(err as Error).message}`);
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
