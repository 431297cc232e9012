// `moe-swarm up|node|gateway`: the swarm data plane (issue #5). Long-running commands print one
// JSON "listening" line on stdout (what `up` and the tests read) and stop cleanly on SIGINT/SIGTERM.

import { existsSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { Command } from "commander";
import { RegistryClient } from "../../consensus/client.ts";
import { replicaCount } from "../../consensus/constants.ts";
import { nodeHeartbeatMsDefault, nodeHeartbeatMsMin } from "../../consensus/node-heartbeat.ts";
import { RegistryPlacementView } from "../../consensus/placement-view.ts";
import { expertKey } from "../../model/expert.ts";
import type { ExpertBackend } from "../../model/local-expert-host.ts";
import { routeAll } from "../../observe/http-route.ts";
import { gatewayObservability, nodeObservability } from "../../observe/observability.ts";
import { SwarmRecorder } from "../../observe/swarm-recorder.ts";
import { runMoeSwarm } from "../../swarm/child-nodes.ts";
import { ConsensusFeed } from "../../swarm/consensus-feed.ts";
import { healthProbeIntervalMs } from "../../swarm/constants.ts";
import { startGateway } from "../../swarm/gateway.ts";
import { startNodeProcess } from "../../swarm/node-process.ts";
import { httpKeepAliveMs } from "../../swarm/openai-api.ts";
import { nodeIdOf, type PlacementRegistry, placementFromFile } from "../../swarm/placement.ts";
import { dialHost, nodeHeartbeatMs, nodeTtlHeartbeats, swarmUp } from "../../swarm/swarm-up.ts";
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

/** "host:port,host:port,…" → endpoints (exactly one per coordinator). */
function parseEndpoints(text: string): { host: string; port: number }[] {
  const list = text.split(",").map((e) => e.trim());
  const parsed = list.map((e) => /^([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(e));
  if (
    list.length !== replicaCount ||
    parsed.some((m) => !m || Number(m[2]) < 1 || Number(m[2]) > 65535)
  )
    throw new UsageError(
      `--registry: expected ${replicaCount} endpoints host:port (ORD,IAD,SJC,AMS,SYD order), comma-separated; got "${text}"`,
    );
  return parsed.map((m) => ({
    host: String(m?.[1] ?? "").replace(/^\[|\]$/g, ""),
    port: Number(m?.[2]),
  }));
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
      "start the whole local swarm on loopback: the 5 BFT coordinators, expert nodes in every region and the gateway; prints the URL",
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
    .option(
      "--no-coordinators",
      "do not start the five BFT coordinators: the gateway reads a static placement file",
    )
    .option(
      "--coordinator-port-base <n>",
      "coordinator ports: peers on n+0..4, clients on n+10..14 (default: a free block)",
    )
    .option(
      "--node-heartbeat-ms <n>",
      `how often each node heartbeats into the registry; a node is expired after ${nodeTtlHeartbeats} missed (default ${nodeHeartbeatMs})`,
    )
    .action(async (opts: Record<string, string | boolean | undefined>, command: Command) => {
      const { config } = configFor(command);
      const heartbeatMs =
        opts.nodeHeartbeatMs === undefined
          ? undefined
          : intOption(
              String(opts.nodeHeartbeatMs),
              "--node-heartbeat-ms",
              nodeHeartbeatMsMin,
              3_600_000,
            );
      const coordinatorPortBase =
        opts.coordinatorPortBase === undefined
          ? undefined
          : intOption(String(opts.coordinatorPortBase), "--coordinator-port-base", 1024, 65520);
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
      const coordinators = opts.coordinators !== false;
      io.err(
        `starting ${coordinators ? "the 5 coordinators (ORD, IAD, SJC, AMS, SYD), " : ""}${regions.length * nodesPerRegion} expert nodes (${regions.join(", ")}) and the gateway…`,
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
          coordinators,
          ...(coordinatorPortBase !== undefined ? { coordinatorPortBase } : {}),
          ...(heartbeatMs !== undefined ? { nodeHeartbeatMs: heartbeatMs } : {}),
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
          dashboard: swarm.dashboardUrl,
          metrics: swarm.metricsUrl,
          live: swarm.liveUrl,
          nodeMetrics: Object.fromEntries(swarm.nodes.map((n) => [n.nodeId, n.metricsUrl ?? null])),
          // Process ids, e.g. to try a failover with kill -9.
          nodePids: Object.fromEntries(swarm.nodes.map((n) => [n.nodeId, n.child.pid ?? null])),
          // Client endpoints and process ids of the coordinators (null: --no-coordinators).
          coordinators: swarm.coordinators
            ? Object.fromEntries(
                swarm.coordinators.endpoints.map((e) => [e.region, `${e.host}:${e.port}`]),
              )
            : null,
          coordinatorPids: swarm.coordinators?.pids ?? null,
          coordinatorMetrics: swarm.coordinators?.metrics ?? null,
        }),
      );
      const api = swarm.dashboardUrl.replace(/\/$/, "");
      io.out(
        [
          `moe-swarm is up: ${api}  (${swarm.nodes.length} expert nodes in ${regions.join(", ")}; placement ${swarm.coordinators ? "from the coordinators' registry" : swarm.placementPath})`,
          swarm.coordinators
            ? `  coordinators (BFT, HotStuff-family, ML-DSA-65 signed): ${swarm.coordinators.endpoints.map((e) => `${e.region} ${e.host}:${e.port}`).join(", ")}`
            : "  coordinators: not started (--no-coordinators); placement from the file",
          `  dashboard: ${swarm.dashboardUrl}   ·   metrics: ${swarm.metricsUrl}   ·   live feed: ${swarm.liveUrl}`,
          `  curl ${api}/v1/completions -H 'content-type: application/json' -d '{"model":"moe-swarm-${config.profile}","prompt":"Call me Ishmael.","max_tokens":40}'`,
          `  node metrics: ${swarm.nodes.map((n) => n.metricsUrl ?? "?").join(" ")}`,
          ...(swarm.coordinators
            ? [
                `  coordinator metrics: ${Object.entries(swarm.coordinators.metrics)
                  .map(([region, url]) => `${region} ${url}`)
                  .join(" ")}`,
              ]
            : []),
          `  swarm state: ${api}/v1/swarm   ·   Ctrl-C stops everything`,
        ].join("\n"),
      );
      await untilSignal();
      stopping = true;
      io.err(
        `stopping the gateway, the expert nodes${swarm.coordinators ? " and the coordinators" : ""}…`,
      );
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
    .option("--metrics-port <n>", "HTTP port of this node's Prometheus /metrics (0 = any)", "0")
    .option(
      "--otlp <url>",
      "OTLP/HTTP traces endpoint to export spans to, e.g. the gateway's http://127.0.0.1:8080/v1/traces (default: OTEL_EXPORTER_OTLP_* variables)",
    )
    .option(
      "--registry <list>",
      `the coordinators' client endpoints host:port (ORD,IAD,SJC,AMS,SYD order): register there and heartbeat`,
    )
    .option(
      "--heartbeat-ms <n>",
      `registry heartbeat interval with --registry (default ${nodeHeartbeatMsDefault})`,
    )
    .action(async (opts: Record<string, string>, command: Command) => {
      const { config } = configFor(command);
      const backend = opts.backend as ExpertBackend;
      if (!["js", "onnx", "auto"].includes(backend))
        throw new UsageError(`--backend: expected js, onnx or auto; got "${opts.backend}"`);
      const index = intOption(String(opts.index), "--index", 0, 1023);
      const metricsPort = intOption(String(opts.metricsPort), "--metrics-port", 0, 65535);
      if (opts.otlp !== undefined && !/^https?:\/\/[^\s]+$/.test(opts.otlp))
        throw new UsageError(`--otlp: expected an http(s) URL; got "${opts.otlp}"`);
      const region = String(opts.region).toUpperCase();
      const registryEndpoints =
        opts.registry === undefined ? undefined : parseEndpoints(String(opts.registry));
      if (opts.heartbeatMs !== undefined && registryEndpoints === undefined)
        throw new UsageError("--heartbeat-ms: only with --registry <endpoints>");
      const heartbeatMs =
        opts.heartbeatMs === undefined
          ? nodeHeartbeatMsDefault
          : intOption(String(opts.heartbeatMs), "--heartbeat-ms", nodeHeartbeatMsMin, 3_600_000);
      const obs = nodeObservability(config, {
        nodeId: nodeIdOf(region, index),
        region,
        ...(opts.otlp !== undefined ? { otlpEndpoint: opts.otlp } : {}),
      });
      let running: Awaited<ReturnType<typeof startNodeProcess>>;
      const metricsServer = createServer(routeAll(obs.routes()));
      try {
        running = await startNodeProcess(config, {
          region: String(opts.region),
          index,
          onRequest: obs.onRequest,
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
          ...(registryEndpoints
            ? {
                registry: {
                  endpoints: registryEndpoints,
                  heartbeatMs,
                  log: (line: string) => io.err(`[${nodeIdOf(region, index)}] ${line}`),
                },
              }
            : {}),
        });
        await new Promise<void>((resolve, reject) => {
          metricsServer.once("error", reject);
          metricsServer.listen(metricsPort, running.host, () => resolve());
        });
      } catch (err) {
        await obs.close();
        metricsServer.close();
        if (err instanceof UsageError) throw err;
        if (err instanceof RangeError) throw new UsageError(err.message);
        throw new OperationError(`moe-swarm node: ${(err as Error).message}`);
      }
      metricsServer.on("clientError", (_err, socket) => socket.destroy());
      const boundMetricsPort = (metricsServer.address() as AddressInfo).port;
      io.out(
        JSON.stringify({
          event: "listening",
          role: "node",
          nodeId: running.nodeId,
          region: String(opts.region),
          host: running.host,
          port: running.port,
          experts: running.experts,
          metricsPort: boundMetricsPort,
          metricsUrl: `http://${dialHost(running.host)}:${boundMetricsPort}/metrics`,
        }),
      );
      await untilSignal();
      metricsServer.closeAllConnections();
      metricsServer.close();
      await running.close();
      await obs.close();
    });

  program
    .command("gateway")
    .description(
      "run the gateway: trunk, expert dispatch to the nodes and the OpenAI-compatible HTTP API",
    )
    .option("--placement <file>", "placement JSON: the nodes, their addresses and experts (static)")
    .option(
      "--registry <list>",
      "read placement from the BFT coordinators instead: their client endpoints host:port, comma-separated, in the order ORD,IAD,SJC,AMS,SYD",
    )
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
      const region =
        (opts.region as string | undefined) ??
        config.regions.find((r) => r.role === "global_coordinator")?.code ??
        "";
      // Metrics, traces (and the OTLP receiver the nodes export to), the dashboard and its live
      // feed, on the same server as the OpenAI API.
      if ((opts.placement === undefined) === (opts.registry === undefined))
        throw new UsageError(
          "gateway: give exactly one of --placement <file> (static) or --registry <endpoints> (the coordinators)",
        );
      const endpoints =
        opts.registry === undefined ? undefined : parseEndpoints(String(opts.registry));
      const obs = gatewayObservability(config, { region, log: (line) => io.err(line) });
      let gateway: Awaited<ReturnType<typeof startGateway>>;
      // With --registry: placement read (and refreshed) from the replicated registry, and the
      // coordinators' status polled for the dashboard's consensus panel and the rounds metric.
      const registry = endpoints ? new RegistryClient({ endpoints, deadlineMs: 10_000 }) : null;
      const statusClient = endpoints ? new RegistryClient({ endpoints }) : null;
      let view: RegistryPlacementView | null = null;
      let feed: ConsensusFeed | null = null;
      const closeRegistry = () => {
        feed?.stop();
        view?.stop();
        registry?.close();
        statusClient?.close();
      };
      try {
        let placement: PlacementRegistry;
        if (registry && statusClient) {
          view = new RegistryPlacementView(registry);
          await view.start(); // one linearizable read first, then a refresh every second
          placement = view;
          feed = new ConsensusFeed(
            statusClient,
            new SwarmRecorder(obs.metrics),
            config.consensus.algorithm,
          );
          feed.start();
        } else placement = placementFromFile(String(opts.placement));
        gateway = await startGateway(config, {
          placement,
          port:
            opts.port === undefined ? undefined : intOption(String(opts.port), "--port", 0, 65535),
          host: opts.host as string | undefined,
          region,
          modelPath: opts.model as string | undefined,
          hedging: opts.hedging !== false,
          trunk: trunkKernels(String(opts.trunk)),
          wrapExpertHost: obs.wrapExpertHost,
          dispatchObserver: obs.dispatchObserver,
          healthProbeIntervalMs,
          serve: async (handler, host, port) => {
            const served = await obs.serve({ host, port, fallback: obs.instrument(handler) });
            // As the API's own server: longer than clients' idle pools (no reuse-while-closing).
            served.server.keepAliveTimeout = httpKeepAliveMs;
            served.server.headersTimeout = httpKeepAliveMs + 1000;
            const bound = (served.server.address() as AddressInfo).port;
            return { url: served.url, port: bound, close: () => served.close() };
          },
        });
        // Which experts each node hosts (for the dashboard), recomputed as the placement changes.
        const ids = gateway.trunk.expertIds();
        let expertsOf = new Map<string, string[]>();
        let builtFrom: readonly unknown[] | undefined;
        const expertsOfNode = (nodeId: string): string[] => {
          const nodes = placement.nodes();
          if (nodes !== builtFrom) {
            builtFrom = nodes;
            expertsOf = new Map();
            for (const id of ids)
              for (const n of placement.replicas(id)) {
                const list = expertsOf.get(n.nodeId) ?? [];
                list.push(expertKey(id));
                expertsOf.set(n.nodeId, list);
              }
          }
          return expertsOf.get(nodeId) ?? [];
        };
        obs.startRecorder(gateway, expertsOfNode, { dispatchObserved: true });
      } catch (err) {
        closeRegistry();
        await obs.close();
        if (err instanceof UsageError) throw err;
        if (err instanceof RangeError) throw new UsageError(err.message);
        throw new OperationError(`moe-swarm gateway: ${(err as Error).message}`);
      }
      const dial = `http://${dialHost(new URL(gateway.url).hostname)}:${gateway.port}`;
      io.out(
        JSON.stringify({
          event: "listening",
          role: "gateway",
          url: gateway.url,
          port: gateway.port,
          dashboard: `${dial}/`,
          metrics: `${dial}/metrics`,
          live: `${dial.replace(/^http/, "ws")}/live`,
          otlp: `${dial}/v1/traces`,
        }),
      );
      await untilSignal();
      closeRegistry();
      await gateway.close();
      await obs.close();
    });
}
