// Starts the five coordinators as separate processes on one machine (`moe-swarm coordinator
// --region X` each), as `npm start` / `moe-swarm up` does for the local swarm and as the live test
// and benchmark do. Keys are created on first use. Each child is a real process, so kill -9 of one
// is a real crash; `stop()` ends every child it started.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { RegistryClient, type RegistryClientInit } from "./client.ts";
import { replicaCount } from "./constants.ts";
import { generateClusterKeys } from "./keys.ts";
import { clientPort } from "./node.ts";
import { regionsInLeaderOrder } from "./types.ts";

export interface LocalClusterInit {
  readonly dataDir: string;
  readonly portBase: number;
  /** YAML config passed to every coordinator (`--config`); the built-in local profile if absent. */
  readonly configPath?: string;
  readonly chainId?: string;
  /** Each coordinator's stderr lines (rejections, view changes, link events). */
  readonly onLog?: (region: string, line: string) => void;
  readonly startTimeoutMs?: number;
  /** Extra `moe-swarm coordinator` options for every replica (e.g. --retain-blocks 8 in tests). */
  readonly coordinatorArgs?: readonly string[];
  /** Options for node itself, before the script (e.g. --cpu-prof in a benchmark). */
  readonly nodeArgs?: readonly string[];
}

const binPath = new URL("../../bin/moe-swarm.js", import.meta.url).pathname;

// Children still running when this process exits (an uncaught error, process.exit) are killed, so a
// crashed parent leaves no coordinator behind.
const live = new Set<ChildProcess>();
let exitHook = false;
function killOnExit(child: ChildProcess): void {
  if (!exitHook) {
    exitHook = true;
    process.on("exit", () => {
      for (const c of live) c.kill("SIGKILL");
    });
  }
  live.add(child);
  child.once("exit", () => live.delete(child));
}

export class LocalCoordinatorCluster {
  readonly #init: LocalClusterInit;
  readonly #children: (ChildProcess | undefined)[] = new Array(replicaCount).fill(undefined);
  readonly #metricsUrls: (string | undefined)[] = new Array(replicaCount).fill(undefined);

  constructor(init: LocalClusterInit) {
    this.#init = init;
  }

  get endpoints(): { host: string; port: number }[] {
    return regionsInLeaderOrder.map((_, i) => ({
      host: "127.0.0.1",
      port: clientPort(this.#init.portBase, i),
    }));
  }

  /** Each running coordinator's Prometheus /metrics URL, by region (ports picked by the OS). */
  metricsUrls(): Record<string, string> {
    const out: Record<string, string> = {};
    this.#metricsUrls.forEach((url, i) => {
      const c = this.#children[i];
      if (url && c && c.exitCode === null && c.signalCode === null)
        out[regionsInLeaderOrder[i] as string] = url;
    });
    return out;
  }

  client(options: Omit<RegistryClientInit, "endpoints"> = {}): RegistryClient {
    return new RegistryClient({ ...options, endpoints: this.endpoints });
  }

  async start(): Promise<void> {
    const keys = join(this.#init.dataDir, "keys");
    if (!existsSync(join(keys, "public-keys.json"))) generateClusterKeys(keys);
    await Promise.all(regionsInLeaderOrder.map((_, i) => this.startReplica(i)));
  }

  /** Starts (or restarts, on its existing WAL) coordinator i; resolves when it listens. */
  startReplica(i: number): Promise<void> {
    const region = regionsInLeaderOrder[i] as string;
    const args = [
      ...(this.#init.nodeArgs ?? []),
      binPath,
      ...(this.#init.configPath ? ["--config", this.#init.configPath] : []),
      "coordinator",
      "--region",
      region,
      "--keys",
      join(this.#init.dataDir, "keys"),
      "--data-dir",
      join(this.#init.dataDir, region),
      "--port-base",
      String(this.#init.portBase),
      "--chain-id",
      this.#init.chainId ?? "moe-swarm",
      "--metrics-port",
      "0",
      ...(this.#init.coordinatorArgs ?? []),
    ];
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.#children[i] = child;
    killOnExit(child);
    const errLines: string[] = [];
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      for (const line of d.split("\n"))
        if (line) {
          if (errLines.length < 50) errLines.push(line);
          this.#init.onLog?.(region, line);
        }
    });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`coordinator ${region} did not start: ${errLines.join(" | ")}`)),
        this.#init.startTimeoutMs ?? 30_000,
      );
      child.stdout?.setEncoding("utf8").on("data", (d: string) => {
        const metrics = /metrics on (http:\/\/\S+)/.exec(d);
        if (metrics) this.#metricsUrls[i] = metrics[1];
        if (d.includes(" up:")) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(
          new Error(`coordinator ${region} exited (${code ?? signal}): ${errLines.join(" | ")}`),
        );
      });
    });
  }

  /** SIGKILL: a crash without any chance to flush or say goodbye. */
  kill(i: number): void {
    const c = this.#children[i];
    if (c && c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  }

  /** Process id of each running coordinator, by region (kill -9 one to try a view change). */
  pids(): Record<string, number> {
    const out: Record<string, number> = {};
    this.#children.forEach((c, i) => {
      if (c?.pid !== undefined && c.exitCode === null && c.signalCode === null)
        out[regionsInLeaderOrder[i] as string] = c.pid;
    });
    return out;
  }

  /**
   * SIGTERM to every coordinator (a clean stop: node writes a --cpu-prof profile on the way out);
   * after `graceMs`, SIGKILL to any still running. Resolves when all have exited.
   */
  async stopGracefully(graceMs: number): Promise<void> {
    const running = this.#children.filter(
      (c): c is ChildProcess => c !== undefined && c.exitCode === null && c.signalCode === null,
    );
    const exited = Promise.all(
      running.map((c) => new Promise<void>((resolve) => c.once("exit", () => resolve()))),
    );
    for (const c of running) c.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, graceMs))]);
    await this.stop();
  }

  /** Kills every coordinator it started; resolves when all have exited. */
  stop(): Promise<void> {
    const exited = this.#children.map((c) =>
      c && c.exitCode === null && c.signalCode === null
        ? new Promise<void>((resolve) => c.once("exit", () => resolve()))
        : Promise.resolve(),
    );
    for (let i = 0; i < replicaCount; i++) this.kill(i);
    return Promise.all(exited).then(() => undefined);
  }
}
