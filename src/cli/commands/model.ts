// `moe-swarm train` and `moe-swarm generate`: the MoE model core (issue #4). Training reads Moby
// Dick from its npm package, trains the configured hierarchical MoE transformer with AdamW
// (warmup + cosine, global-norm clipping) under a progress bar (loss, tokens/s, ETA, validation
// bits per byte) and saves the weights as safetensors at
// `<swarm.data_dir>/models/<profile>.safetensors`; generation samples from that file.
// Training checkpoints its full state (weights, AdamW moments, step, data position, recipe) into
// the tiered store at `checkpoint_strategy.frequency` (or `--checkpoint-every`), hot always, warm
// and cold every Nth (src/model/training-checkpoints.ts); `--resume-from <id|latest>` continues a
// run bit-exactly from any tier.

import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { SingleBar } from "cli-progress";
import type { Command } from "commander";
import { Prng } from "../../common/prng.ts";
import type { SwarmConfig } from "../../config/schema.ts";
import { decodeOperatorKey, EnvelopeError, publicKeyOfSecret } from "../../crypto/envelope.ts";
import { BatchSampler } from "../../model/batch-sampler.ts";
import {
  CheckpointError,
  loadModelInto,
  readModelFile,
  saveModel,
  storedConfig,
} from "../../model/checkpoint.ts";
import { modelConfigFrom } from "../../model/config.ts";
import { mobyDick, sequentialBatches } from "../../model/dataset.ts";
import type { ExpertHost } from "../../model/expert.ts";
import { generateBytes } from "../../model/generate.ts";
import { type ExpertBackend, LocalExpertHost } from "../../model/local-expert-host.ts";
import { learningRate } from "../../model/schedule.ts";
import { bitsPerByte, Trainer } from "../../model/trainer.ts";
import {
  type CheckpointFrequency,
  coldEveryDefault,
  newRunId,
  readTrainingCheckpoint,
  TrainingCheckpointer,
  warmEveryDefault,
} from "../../model/training-checkpoints.ts";
import {
  applyTrainingState,
  type ParsedTrainingState,
  type TrainingRecipe,
  TrainingStateError,
} from "../../model/training-state.ts";
import { MoeTransformer } from "../../model/transformer.ts";
import { metricsDispatchObserver } from "../../observe/dispatch-observer.ts";
import { SwarmMetrics } from "../../observe/metrics.ts";
import { PushLoop, pushTargetFromConfig } from "../../observe/pushgateway.ts";
import type { CheckpointStore } from "../../storage/checkpoint-store.ts";
import { StorageError } from "../../storage/errors.ts";
import { storeFromConfig } from "../../storage/from-config.ts";
import { type TierName, tierNames } from "../../storage/manifest.ts";
import { TierCopier } from "../../storage/tier-copier.ts";
import { saveSwarmModel } from "../../swarm/swarm-checkpoint.ts";
import { startTrainingSwarm } from "../../swarm/training-swarm.ts";
import { adamwHyper } from "../../tensor/adamw.ts";
import { OnnxKernels } from "../../tensor/onnx-kernels.ts";
import { type CliIO, configFor, OperationError, UsageError } from "../context.ts";

/** Steps timed before `--minutes` alone fixes the schedule's length. */
const timingStepsForBudget = 5;

export function defaultModelPath(cfg: SwarmConfig): string {
  return join(cfg.swarm.data_dir, "models", `${cfg.profile}.safetensors`);
}

function intOption(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (text: string): number => {
    const v = Number(text);
    if (!Number.isInteger(v) || v < min || v > max)
      throw new UsageError(`--${name}: expected an integer in [${min}, ${max}]; got "${text}"`);
    return v;
  };
}

function numberOption(name: string, min: number, max = Number.POSITIVE_INFINITY) {
  return (text: string): number => {
    const v = Number(text);
    if (!Number.isFinite(v) || v < min || v > max)
      throw new UsageError(`--${name}: expected a number in [${min}, ${max}]; got "${text}"`);
    return v;
  };
}

function trunkOption(text: string): "onnx" | "js" {
  if (text === "js" || text === "onnx") return text;
  throw new UsageError(`--trunk: expected one of onnx, js; got "${text}"`);
}

function backendOption(text: string): ExpertBackend {
  if (text === "js" || text === "onnx" || text === "auto") return text;
  throw new UsageError(`--backend: expected one of auto, onnx, js; got "${text}"`);
}

interface TrainOptions {
  steps?: number;
  minutes?: number;
  batch: number;
  seq?: number;
  lr: number;
  minLr?: number;
  warmup?: number;
  clip: number;
  weightDecay: number;
  evalEvery: number;
  evalWindows: number;
  seed?: number;
  backend: ExpertBackend;
  trunk: "onnx" | "js";
  threads: number;
  out?: string;
  resume?: boolean;
  resumeFrom?: string;
  tier: string;
  key?: string;
  store?: string;
  checkpointEvery?: number;
  warmEvery: number;
  coldEvery: number;
  stopAt?: number;
  swarm?: boolean;
  progress: boolean;
}

interface GenerateOptions {
  prompt: string;
  bytes: number;
  temperature: number;
  topK: number;
  seed: number;
  model?: string;
  backend: ExpertBackend;
  trunk: "onnx" | "js";
  threads: number;
  stats?: boolean;
}

function withCheckpointErrors<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof CheckpointError) throw new OperationError(err.message);
    throw err;
  }
}

/** Expected failures of the checkpoint store and of training state → exit 1 with their message. */
async function withStoreErrors<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (
      err instanceof StorageError ||
      err instanceof EnvelopeError ||
      err instanceof TrainingStateError ||
      err instanceof CheckpointError
    )
      throw new OperationError(err.message);
    throw err;
  }
}

/** The global `--config` file, which the swarm's child nodes must read too. */
function configPathOf(cmd: Command): string | undefined {
  return cmd.optsWithGlobals<{ config?: string }>().config;
}

function tierOption(text: string): TierName {
  if ((tierNames as readonly string[]).includes(text)) return text as TierName;
  throw new UsageError(`--tier: expected one of ${tierNames.join(", ")}; got "${text}"`);
}

/** The store of training checkpoints, with the operator key of `--key` (public or secret). */
function openTrainingStore(cfg: SwarmConfig, opts: TrainOptions): CheckpointStore {
  const dir = resolve(opts.store ?? join(cfg.swarm.data_dir, "checkpoints"));
  let keys: { operatorPublicKey?: Uint8Array; operatorSecretKey?: Uint8Array } = {};
  if (opts.key !== undefined) {
    let text: string;
    try {
      text = readFileSync(opts.key, "utf8");
    } catch {
      throw new UsageError(`--key: cannot read ${opts.key}`);
    }
    const { kind, key } = (() => {
      try {
        return decodeOperatorKey(text, opts.key);
      } catch (err) {
        if (err instanceof EnvelopeError) throw new UsageError(`--key: ${err.message}`);
        throw err;
      }
    })();
    keys =
      kind === "secret"
        ? { operatorPublicKey: publicKeyOfSecret(key), operatorSecretKey: key }
        : { operatorPublicKey: key };
  }
  return storeFromConfig(cfg, dir, keys);
}

/** Flags whose values the recipe of a resumed run fixes, with the recipe's value for each. */
function recipeFlags(r: TrainingRecipe): [flag: string, key: keyof TrainOptions, value: number][] {
  return [
    ["--seed", "seed", r.seed],
    ["--batch", "batch", r.batch],
    ["--seq", "seq", r.seq],
    ["--lr", "lr", r.schedule.peak],
    ["--min-lr", "minLr", r.schedule.min],
    ["--warmup", "warmup", r.schedule.warmupSteps],
    ["--steps", "steps", r.schedule.totalSteps],
    ["--clip", "clip", r.clipNorm],
    ["--weight-decay", "weightDecay", r.adamw.weightDecay],
  ];
}

/** A resumed run keeps its recipe: a flag given on the command line must agree with it. */
function checkResumeFlags(r: TrainingRecipe, opts: TrainOptions, cmd: Command, id: string): void {
  for (const [flag, key, value] of recipeFlags(r)) {
    if (cmd.getOptionValueSource(key) !== "cli") continue;
    const given = opts[key];
    if (given !== value)
      throw new UsageError(
        `${flag} ${given} differs from checkpoint ${id}, which was trained with ${flag} ${value}; ` +
          `a resumed run keeps its recipe so that it continues the same loss curve (omit ${flag})`,
      );
  }
}

export function registerModel(program: Command, io: CliIO): void {
  program
    .command("train")
    .description("train the MoE model on Moby Dick with a progress bar; saves safetensors")
    .option(
      "--steps <n>",
      "optimizer steps (default 1000, or fitted to --minutes)",
      intOption("steps", 1),
    )
    .option(
      "--minutes <m>",
      "wall-clock budget; alone, the schedule is fitted to it",
      numberOption("minutes", 0.01),
    )
    .option("--batch <n>", "sequences per step", intOption("batch", 1, 4096), 8)
    .option("--seq <n>", "bytes per sequence (default: model.context_length)", intOption("seq", 2))
    .option("--lr <x>", "peak learning rate", numberOption("lr", 0, 10), 1e-2)
    .option(
      "--min-lr <x>",
      "final learning rate of the cosine (default lr/10)",
      numberOption("min-lr", 0, 10),
    )
    .option("--warmup <n>", "linear warmup steps (default 5% of steps)", intOption("warmup", 0))
    .option("--clip <x>", "global gradient-norm clip", numberOption("clip", 1e-6), 1)
    .option(
      "--weight-decay <x>",
      "AdamW decoupled weight decay",
      numberOption("weight-decay", 0, 1),
      0.1,
    )
    .option("--eval-every <n>", "steps between validation passes", intOption("eval-every", 1), 100)
    .option(
      "--eval-windows <n>",
      "validation windows of --seq bytes",
      intOption("eval-windows", 1),
      64,
    )
    .option("--seed <n>", "data-order seed (default: model.seed)", intOption("seed", 0, 2 ** 31))
    .option(
      "--backend <b>",
      "expert kernels: auto, onnx (onnxruntime) or js",
      backendOption,
      "auto",
    )
    .option("--trunk <k>", "trunk kernels: onnx (onnxruntime) or js", trunkOption, "onnx")
    .option("--threads <n>", "onnxruntime intra-op threads", intOption("threads", 1, 64), 1)
    .option("--out <file>", "where to save (default <swarm.data_dir>/models/<profile>.safetensors)")
    .option("--resume", "start from the weights at --out if the file exists (weights only)")
    .option(
      "--resume-from <id>",
      "continue a run bit-exactly from a training checkpoint in the store (an id, or latest)",
    )
    .option("--tier <name>", "tier to resume from: hot, warm or cold", tierOption, "hot")
    .option(
      "--key <file>",
      "operator ML-KEM-768 key (public: also seal checkpoints into cold; secret: also resume from cold)",
    )
    .option("--store <dir>", "checkpoint store folder (default: <swarm.data_dir>/checkpoints)")
    .option(
      "--checkpoint-every <n>",
      "checkpoint every n steps (default: checkpoint_strategy.frequency; 0 = never)",
      intOption("checkpoint-every", 0),
    )
    .option(
      "--warm-every <n>",
      "copy every n-th checkpoint to the warm tier (0 = never)",
      intOption("warm-every", 0),
      warmEveryDefault,
    )
    .option(
      "--cold-every <n>",
      "seal every n-th checkpoint into the cold tier when --key is given (0 = never)",
      intOption("cold-every", 0),
      coldEveryDefault,
    )
    .option(
      "--stop-at <step>",
      "stop after this step; the schedule still spans --steps (resume later with --resume-from)",
      intOption("stop-at", 1),
    )
    .option(
      "--swarm",
      "train with the experts on expert nodes (child processes over the wire, per swarm config)",
    )
    .option("--no-progress", "print one line per validation instead of a progress bar")
    .action(async (opts: TrainOptions, cmd: Command) => {
      const { config: cfg } = configFor(cmd);
      await train(cfg, opts, io, cmd);
    });

  program
    .command("generate")
    .description("sample text from a trained model")
    .requiredOption("--prompt <text>", "text to continue")
    .option("--bytes <n>", "bytes to generate", intOption("bytes", 1, 100_000), 200)
    .option(
      "--temperature <t>",
      "sampling temperature (0 = greedy)",
      numberOption("temperature", 0, 100),
      0.8,
    )
    .option(
      "--top-k <k>",
      "sample among the k most likely bytes (0 = all)",
      intOption("top-k", 0, 256),
      40,
    )
    .option("--seed <n>", "sampling seed", intOption("seed", 0, 2 ** 31), 1)
    .option(
      "--model <file>",
      "safetensors file (default <swarm.data_dir>/models/<profile>.safetensors)",
    )
    .option("--backend <b>", "expert kernels: auto, onnx or js", backendOption, "auto")
    .option("--trunk <k>", "trunk kernels: onnx or js", trunkOption, "onnx")
    .option("--threads <n>", "onnxruntime intra-op threads", intOption("threads", 1, 64), 1)
    .option(
      "--stats",
      "print routing statistics (experts per token, superposition cache use) to stderr",
    )
    .action(async (opts: GenerateOptions, cmd: Command) => {
      const { config: cfg } = configFor(cmd);
      const path = opts.model ?? defaultModelPath(cfg);
      const bytes = withCheckpointErrors(() => readModelFile(path));
      // The file's own config decides the shapes; the checkpoint carries it.
      const { config: mc } = withCheckpointErrors(() => storedConfig(bytes, path));
      const host = await LocalExpertHost.create(mc, {
        backend: opts.backend,
        threads: opts.threads,
      });
      const kernels = opts.trunk === "onnx" ? await OnnxKernels.create(opts.threads) : null;
      try {
        const model = new MoeTransformer(mc, host, "float32", kernels);
        withCheckpointErrors(() => loadModelInto(bytes, model, host, path));
        const prompt = new TextEncoder().encode(opts.prompt);
        const out = await generateBytes(model, prompt, {
          maxNewBytes: opts.bytes,
          temperature: opts.temperature,
          topK: opts.topK,
          rng: new Prng(opts.seed),
        });
        io.out(opts.prompt + new TextDecoder().decode(out));
        if (opts.stats) {
          for (const s of model.routingStats()) {
            const lookups = s.cacheHits + s.cacheMisses;
            // KV-cached decoding routes each token once, so the routing cache has nothing to reuse.
            const cache =
              lookups === 0
                ? "superposition cache not consulted (KV-cached decoding routes each token once)"
                : `superposition cache hit rate ${(100 * s.cacheHitRate).toFixed(1)}% (${s.cacheHits}/${lookups})`;
            io.err(
              `layer ${s.layer} (${s.tier}, ${s.activation}): ${(s.expertsServed / Math.max(1, s.tokens)).toFixed(2)} experts/token, ${cache}`,
            );
          }
        }
      } finally {
        await host.close();
        await kernels?.release();
      }
    });
}

async function train(cfg: SwarmConfig, opts: TrainOptions, io: CliIO, cmd: Command): Promise<void> {
  const mc = modelConfigFrom(cfg);
  if (opts.resume && opts.resumeFrom !== undefined)
    throw new UsageError(
      "--resume (weights only) and --resume-from (full training state) exclude each other",
    );
  if (opts.swarm && opts.resume)
    throw new UsageError(
      "--resume (weights only) does not apply to --swarm; resume a swarm run with --resume-from",
    );
  const frequency: CheckpointFrequency | null =
    opts.checkpointEvery === undefined
      ? cfg.checkpoint_strategy.frequency
      : opts.checkpointEvery === 0
        ? null
        : {
            kind: "steps",
            steps: opts.checkpointEvery,
            text: `every_${opts.checkpointEvery}_steps`,
          };
  const store =
    frequency !== null || opts.resumeFrom !== undefined ? openTrainingStore(cfg, opts) : null;
  // Resuming: read and verify the whole checkpoint before building anything.
  let resumed: { id: string; state: ParsedTrainingState } | undefined;
  if (opts.resumeFrom !== undefined && store !== null) {
    const name = opts.resumeFrom;
    resumed = await withStoreErrors(() =>
      readTrainingCheckpoint(store, tierOption(opts.tier), name),
    );
    checkResumeFlags(resumed.state.meta.recipe, opts, cmd, resumed.id);
  }
  const fixed = resumed?.state.meta.recipe;
  const T = fixed?.seq ?? opts.seq ?? mc.context;
  if (T > mc.context)
    throw new UsageError(`--seq: at most model.context_length (${mc.context}); got ${T}`);
  const batchSize = fixed?.batch ?? opts.batch;
  const clipNorm = fixed?.clipNorm ?? opts.clip;
  const out = opts.out ?? defaultModelPath(cfg);
  const adamw = fixed?.adamw ?? adamwHyper({ weightDecay: opts.weightDecay });
  // Experts in this process, or on expert nodes started as child processes (`--swarm`, issue #5):
  // the Trainer is the same, the nodes run the experts' forward, backward and AdamW updates.
  // With --swarm, the dispatcher reports to issue #8's observer as in the gateway, so
  // expert_coherence_time (first to last replica acknowledgement of each weight version) is
  // recorded during training: into this process's metrics (pushed to the Pushgateway in the
  // production profile, as the gateway's are) and summed up in the final line.
  const trainMetrics = opts.swarm ? new SwarmMetrics({ config: cfg, process: "train" }) : null;
  const coherence = { count: 0, sumSeconds: 0, maxSeconds: 0 };
  const observed = trainMetrics ? metricsDispatchObserver({ metrics: trainMetrics }) : null;
  const pushTarget =
    trainMetrics && cfg.profile === "production" ? pushTargetFromConfig(cfg) : null;
  const push =
    trainMetrics && pushTarget
      ? new PushLoop({ target: pushTarget, metrics: trainMetrics, log: (line) => io.err(line) })
      : null;
  const swarm = opts.swarm
    ? await startTrainingSwarm(cfg, {
        ...(configPathOf(cmd) !== undefined ? { configPath: configPathOf(cmd) } : {}),
        backend: opts.backend,
        log: (line) => io.err(line),
        ...(observed
          ? {
              observer: {
                ...observed,
                coherence: (e) => {
                  observed.coherence?.(e);
                  coherence.count++;
                  coherence.sumSeconds += e.seconds;
                  coherence.maxSeconds = Math.max(coherence.maxSeconds, e.seconds);
                },
              },
            }
          : {}),
      })
    : null;
  const local =
    swarm === null
      ? await LocalExpertHost.create(mc, { backend: opts.backend, threads: opts.threads, adamw })
      : null;
  const host: ExpertHost = swarm?.host ?? (local as LocalExpertHost);
  const expertsOn =
    swarm === null ? (local as LocalExpertHost).backend : `swarm (${swarm.nodes.length} nodes)`;
  let kernels: OnnxKernels | null = null;
  // Tier copies and retention GC after each checkpoint run on a worker thread (issue #7).
  let copier: TierCopier | null = null;
  push?.start();
  try {
    kernels = opts.trunk === "onnx" ? await OnnxKernels.create(opts.threads) : null;
    const model = new MoeTransformer(mc, host, "float32", kernels);
    if (opts.resume && existsSync(out) && local !== null) {
      withCheckpointErrors(() => loadModelInto(readModelFile(out), model, local, out));
      io.err(`resumed weights from ${out}`);
    }
    const trainer = new Trainer(model, { adamw, clipNorm });
    const data = mobyDick();
    const kernelNames = { experts: swarm === null ? expertsOn : "swarm", trunk: opts.trunk };
    let sampler = new BatchSampler(data.train, batchSize, T, {
      seed: opts.seed ?? mc.seed,
      draws: 0,
    });
    if (resumed !== undefined) {
      const { id, state } = resumed;
      await withStoreErrors(() => applyTrainingState(state, trainer, `checkpoint ${id}`, fixed));
      sampler = new BatchSampler(data.train, batchSize, T, state.meta.sampler);
      io.err(
        `resumed ${id} from the ${opts.tier} tier at step ${trainer.step}/${state.meta.recipe.schedule.totalSteps} (run ${state.meta.runId})`,
      );
      const k = state.meta.kernels;
      if (k.experts !== kernelNames.experts || k.trunk !== kernelNames.trunk)
        io.err(
          `note: the checkpoint was trained with experts on ${k.experts}, trunk on ${k.trunk}; ` +
            `this run uses ${kernelNames.experts}/${kernelNames.trunk}, so the curve continues within float rounding, not bit-exactly`,
        );
    }
    if (opts.stopAt !== undefined && opts.stopAt <= trainer.step)
      throw new UsageError(
        `--stop-at ${opts.stopAt}: the run is already at step ${trainer.step}; pass a later step`,
      );
    if (resumed !== undefined && trainer.step >= resumed.state.meta.recipe.schedule.totalSteps) {
      io.out(
        `checkpoint ${resumed.id} is at the last step (${trainer.step}) of its schedule: nothing to train; ${out} is unchanged`,
      );
      return;
    }
    const valBatches = sequentialBatches(data.validation, batchSize, T, opts.evalWindows);
    const budgetMs = opts.minutes === undefined ? Number.POSITIVE_INFINITY : opts.minutes * 60_000;
    let totalSteps =
      fixed?.schedule.totalSteps ??
      opts.steps ??
      (opts.minutes === undefined ? 1000 : Number.POSITIVE_INFINITY);
    const fitToBudget = !Number.isFinite(totalSteps);
    const schedule = () =>
      fixed?.schedule ?? {
        peak: opts.lr,
        min: opts.minLr ?? opts.lr / 10,
        warmupSteps:
          opts.warmup ??
          Math.max(1, Math.round(0.05 * (Number.isFinite(totalSteps) ? totalSteps : 1000))),
        totalSteps: Number.isFinite(totalSteps) ? totalSteps : 1000,
      };
    const recipe = (): TrainingRecipe => ({
      seed: sampler.seed,
      batch: batchSize,
      seq: T,
      schedule: schedule(),
      clipNorm,
      adamw: trainer.optimizer.hyper,
    });
    const runId = newRunId(Date.now());
    if (store !== null && frequency !== null) copier = await TierCopier.start(store.spec);
    const checkpointer =
      store !== null && frequency !== null
        ? new TrainingCheckpointer(
            store,
            {
              frequency,
              warmEvery: opts.warmEvery,
              coldEvery: opts.coldEvery,
              coldEnabled: opts.key !== undefined,
            },
            undefined,
            copier ?? undefined,
          )
        : null;
    if (checkpointer !== null && host.exportTrainingState === undefined)
      throw new UsageError(
        `checkpoints (${frequency?.text}) need an expert host that exports its training state, and ${expertsOn} does not; pass --checkpoint-every 0`,
      );
    let checkpointFailures = 0;
    let copiesReported = 0;
    io.err(
      `training ${mc.tiers.map((t) => `${t.name} ${t.experts}×${t.activation}`).join(", ")}; d_model ${mc.dModel}, ` +
        `batch ${batchSize}×${T} bytes, ${data.train.length} train / ${data.validation.length} validation bytes, ` +
        `experts on ${expertsOn}, trunk on ${opts.trunk}, ${opts.threads} thread(s)` +
        (checkpointer === null
          ? "; no checkpoints"
          : `; checkpoints ${frequency?.text} into ${resolve(opts.store ?? join(cfg.swarm.data_dir, "checkpoints"))} as ${runId}-step-N`),
    );
    const bar = opts.progress
      ? new SingleBar({
          format:
            "{bar} {value}/{total} | loss {loss} | {tps} tok/s | val {val} bpb | ETA {eta_formatted}",
          noTTYOutput: true,
          notTTYSchedule: 10_000,
          etaBuffer: 50,
        })
      : null;
    let barValue = trainer.step;
    let barPayload = { loss: "-", tps: "-" as string | number, val: "-" };
    /**
     * A line (checkpoint saved, schedule fitted) while the bar runs: the bar stops (restoring the
     * cursor it saved), its frozen copy is erased on a terminal, the line is printed, and the bar
     * restarts below it — so lines and bar never overwrite each other.
     */
    const logLine = (line: string) => {
      if (bar === null) {
        io.err(line);
        return;
      }
      const total = bar.getTotal();
      bar.stop();
      if (process.stderr.isTTY) process.stderr.write("\x1b[1A\r\x1b[2K");
      io.err(line);
      bar.start(total, barValue, barPayload);
    };
    let val = Number.NaN;
    const t0 = performance.now();
    let tokens = 0;
    let trainMs = 0;
    let lastLoss = Number.NaN;
    const firstStep = trainer.step + 1;
    bar?.start(Number.isFinite(totalSteps) ? totalSteps : 1000, trainer.step, barPayload);
    for (let step = firstStep; step <= totalSteps; step++) {
      const batch = sampler.next();
      const s0 = performance.now();
      const r = await trainer.trainStep(batch, learningRate(schedule(), step));
      trainMs += performance.now() - s0;
      tokens += r.tokens;
      lastLoss = r.ce;
      const elapsed = performance.now() - t0;
      if (fitToBudget && step === timingStepsForBudget) {
        totalSteps = Math.max(step + 1, Math.floor((budgetMs / elapsed) * step));
        bar?.setTotal(totalSteps);
        logLine(
          `fitted the schedule to ${opts.minutes} min: ${totalSteps} steps (replay with --steps ${totalSteps})`,
        );
      }
      const stopping = elapsed >= budgetMs || step === opts.stopAt;
      if (step % opts.evalEvery === 0 || step === totalSteps || stopping) {
        val = await bitsPerByte(model, valBatches);
        if (!bar)
          io.err(`step ${step}: loss ${r.ce.toFixed(3)} nats, val ${val.toFixed(3)} bits/byte`);
      }
      barValue = step;
      barPayload = {
        loss: r.ce.toFixed(3),
        tps: Math.round((tokens / trainMs) * 1000),
        val: Number.isNaN(val) ? "-" : val.toFixed(3),
      };
      bar?.update(step, barPayload);
      if (checkpointer?.due(step)) {
        const c0 = performance.now();
        // A failed save (disk full, unreachable node) is reported and training goes on: the run's
        // weights are still saved at the end, and the next due step tries again.
        try {
          const saved = await withStoreErrors(() =>
            checkpointer.save(trainer, {
              runId,
              ...(resumed !== undefined ? { resumedFrom: resumed.id } : {}),
              recipe: recipe(),
              sampler: sampler.position(),
              kernels: kernelNames,
            }),
          );
          const mb = (n: number) => `${(n / 1e6).toFixed(2)} MB`;
          logLine(
            `checkpoint ${saved.id} → hot${saved.copies.map((c) => `, ${c.tier}`).join("")}: ` +
              `${mb(saved.hot.rawBytes)}, wrote ${mb(saved.hot.storedBytes)} hot` +
              saved.copies.map((c) => ` + ${mb(c.report.storedBytes)} ${c.tier}`).join("") +
              ` in ${((performance.now() - c0) / 1000).toFixed(2)} s` +
              saved.queued.map((tier) => `; ${tier} copy queued`).join(""),
          );
          for (const r of copier?.results.slice(copiesReported) ?? [])
            if (!r.ok) logLine(`background checkpoint job FAILED: ${r.message}`);
          copiesReported = copier?.results.length ?? 0;
        } catch (err) {
          if (!(err instanceof OperationError)) throw err;
          checkpointFailures++;
          logLine(`checkpoint at step ${step} FAILED: ${err.message}; training continues`);
        }
      }
      if (stopping) break;
    }
    bar?.stop();
    const seconds = (performance.now() - t0) / 1000;
    const extra = { steps: String(trainer.step), validation_bits_per_byte: val.toFixed(4) };
    const bytes =
      swarm === null
        ? saveModel(out, model, local as LocalExpertHost, extra)
        : await saveSwarmModel(cfg, out, model, swarm.host, extra);
    const stats = model.routingStats();
    const dropped = stats.reduce((s, l) => s + l.droppedAssignments, 0);
    const requested = stats.reduce((s, l) => s + l.requested.reduce((a, b) => a + b, 0), 0);
    const ran = trainer.step - firstStep + 1;
    io.out(
      `trained ${trainer.step} steps${resumed !== undefined ? ` (${ran} after resuming)` : ""} in ${seconds.toFixed(0)} s: ` +
        `${Math.round((tokens / trainMs) * 1000)} tokens/s (training steps only), ` +
        `final train loss ${(lastLoss / Math.LN2).toFixed(3)} bits/byte, validation ${val.toFixed(3)} bits/byte, ` +
        `dropped ${((100 * dropped) / Math.max(1, requested)).toFixed(2)}% of expert assignments; ` +
        `saved ${(bytes / 1e6).toFixed(1)} MB to ${out}` +
        (checkpointFailures > 0 ? `; ${checkpointFailures} checkpoint(s) FAILED (see above)` : "") +
        (swarm !== null
          ? `; expert coherence time over ${coherence.count} replicated updates: mean ${((1000 * coherence.sumSeconds) / Math.max(1, coherence.count)).toFixed(1)} ms, max ${(1000 * coherence.maxSeconds).toFixed(1)} ms`
          : ""),
    );
  } finally {
    if (copier !== null && copier.backlog > 0)
      io.err(`waiting for ${copier.backlog} background checkpoint job(s) (tier copies, GC)`);
    await copier
      ?.close()
      .catch((err: Error) => io.err(`background checkpoint jobs: ${err.message}`));
    await push?.stop();
    await local?.close();
    await swarm?.stop();
    await kernels?.release();
  }
}
