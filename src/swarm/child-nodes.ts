// Starts expert nodes as child processes (`moe-swarm node`) and reads their "listening" line, for
// `moe-swarm up`, the end-to-end tests and the benchmarks. Every child is killed when the parent
// exits, and `stop()` ends them with SIGTERM (SIGKILL after a grace period).

import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { NodeAddress } from "./node-client.ts";
import type { NodePlan } from "./placement.ts";

export const binPath = fileURLToPath(new URL("../../bin/moe-swarm.js", import.meta.url));
/** Time a child gets to print its listening line. */
export const childStartTimeoutMs = 60_000;
/** Time a child gets to exit after SIGTERM before SIGKILL. */
export const childStopGraceMs = 5000;

export interface ChildNode extends NodeAddress {
  readonly child: ChildProcess;
  readonly experts: number;
  /** The node's Prometheus endpoint (`moe-swarm node` serves it on a second port). */
  readonly metricsUrl: string | undefined;
}

const live = new Set<ChildProcess>();
let exitHook = false;

function killAllOnExit(): void {
  if (exitHook) return;
  exitHook = true;
  process.on("exit", () => {
    for (const c of live) c.kill("SIGKILL");
  });
}

/**
 * Extra node options for every child (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile the
 * nodes a bench starts), from MOE_SWARM_CHILD_NODE_OPTIONS, whitespace-separated. Node refuses
 * --cpu-prof in NODE_OPTIONS, so this is how a bench's nodes get profiled.
 */
function childExecArgv(): string[] {
  const raw = process.env.MOE_SWARM_CHILD_NODE_OPTIONS ?? "";
  return raw.split(/\s+/).filter((a) => a !== "");
}

/** Spawns `moe-swarm [--config file] <args>` and resolves with its parsed listening line. */
export function spawnListening(
  args: readonly string[],
  configPath: string | undefined,
  onLog?: (line: string) => void,
): Promise<{ child: ChildProcess; event: Record<string, unknown> }> {
  killAllOnExit();
  const child = spawn(
    process.execPath,
    [...childExecArgv(), binPath, ...(configPath ? ["--config", configPath] : []), ...args],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  live.add(child);
  child.once("exit", () => live.delete(child));
  return new Promise((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      finish(
        new Error(
          `moe-swarm ${args.join(" ")}: no listening line within ${childStartTimeoutMs} ms`,
        ),
      );
    }, childStartTimeoutMs);
    const finish = (err?: Error, event?: Record<string, unknown>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve({ child, event: event as Record<string, unknown> });
    };
    const stderr: string[] = [];
    createInterface({ input: child.stderr as NodeJS.ReadableStream }).on("line", (line) => {
      stderr.push(line);
      onLog?.(line);
    });
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      if (!settled && line.startsWith("{")) {
        try {
          const event = JSON.parse(line) as Record<string, unknown>;
          if (event.event === "listening") return finish(undefined, event);
        } catch {
          // not our line; fall through to the log
        }
      }
      onLog?.(line);
    });
    child.once("exit", (code, signal) =>
      finish(
        new Error(
          `moe-swarm ${args.join(" ")} exited (${signal ?? code}) before listening: ${stderr.slice(-5).join(" | ")}`,
        ),
      ),
    );
  });
}

export interface SpawnNodeOptions {
  configPath?: string;
  backend?: string;
  port?: number;
  modelPath?: string;
  regions?: readonly string[];
  nodesPerRegion?: number;
  /** OTLP/HTTP traces endpoint the node exports its spans to (the gateway's /v1/traces). */
  otlp?: string;
  /** Coordinators' client endpoints, "host:port,…": the node registers and heartbeats there. */
  registry?: string;
  heartbeatMs?: number;
  onLog?: (line: string) => void;
}

export async function spawnNode(
  region: string,
  index: number,
  opts: SpawnNodeOptions = {},
): Promise<ChildNode> {
  const { child, event } = await spawnListening(
    [
      "node",
      "--region",
      region,
      "--index",
      String(index),
      "--port",
      String(opts.port ?? 0),
      ...(opts.backend ? ["--backend", opts.backend] : []),
      ...(opts.modelPath ? ["--model", opts.modelPath] : []),
      ...(opts.regions ? ["--regions", opts.regions.join(",")] : []),
      ...(opts.nodesPerRegion ? ["--nodes-per-region", String(opts.nodesPerRegion)] : []),
      ...(opts.otlp ? ["--otlp", opts.otlp] : []),
      ...(opts.registry ? ["--registry", opts.registry] : []),
      ...(opts.heartbeatMs ? ["--heartbeat-ms", String(opts.heartbeatMs)] : []),
    ],
    opts.configPath,
    opts.onLog,
  );
  return {
    child,
    nodeId: String(event.nodeId),
    region,
    host: String(event.host),
    port: Number(event.port),
    experts: Number(event.experts),
    metricsUrl: typeof event.metricsUrl === "string" ? event.metricsUrl : undefined,
  };
}

/**
 * One child node per plan entry (its id "ORD-0" names region and index), all started at once. If
 * one fails to start, the others are stopped and its error is thrown: no node is left behind.
 */
export async function spawnPlan(
  plan: readonly NodePlan[],
  optionsOf: (p: NodePlan) => SpawnNodeOptions = () => ({}),
): Promise<ChildNode[]> {
  const started = await Promise.allSettled(
    plan.map((p) => {
      const [region, index] = p.nodeId.split("-") as [string, string];
      return spawnNode(region, Number(index), optionsOf(p));
    }),
  );
  const nodes = started.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
  const failed = started.find((s) => s.status === "rejected");
  if (failed) {
    await Promise.all(nodes.map((n) => stopChild(n.child)));
    throw (failed as PromiseRejectedResult).reason;
  }
  return nodes;
}

/** SIGTERM, then SIGKILL after the grace period; resolves when the child has exited. */
export function stopChild(child: ChildProcess, graceMs = childStopGraceMs): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

/** Runs `moe-swarm [--config file] <args>` with its output on our stderr; resolves with its exit code. */
export function runMoeSwarm(
  args: readonly string[],
  configPath: string | undefined,
): Promise<number> {
  killAllOnExit();
  const child = spawn(
    process.execPath,
    [binPath, ...(configPath ? ["--config", configPath] : []), ...args],
    { stdio: ["ignore", 2, 2] }, // its output goes to our stderr: our stdout is the listening line
  );
  live.add(child);
  return new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      live.delete(child);
      resolve(code ?? (signal ? 128 : 1));
    });
  });
}
