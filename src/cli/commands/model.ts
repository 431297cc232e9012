// `moe-swarm train` and `moe-swarm generate`: the MoE model core (issue #4). Training reads Moby
// Dick from its npm package, trains the configured hierarchical MoE transformer with AdamW
// (warmup + cosine, global-norm clipping) under a progress bar (loss, tokens/s, ETA, validation
// bits per byte) and saves the weights as safetensors at
// `<swarm.data_dir>/models/<profile>.safetensors`; generation samples from that file.

import { existsSync } from "node:fs";
import { join } from "node:path";
import { SingleBar } from "cli-progress";
import type { Command } from "commander";
import { Prng } from "../../common/prng.ts";
import type { SwarmConfig } from "../../config/schema.ts";
import {
  CheckpointError,
  loadModelInto,
  readModelFile,
  saveModel,
  storedConfig,
} from "../../model/checkpoint.ts";
import { modelConfigFrom } from "../../model/config.ts";
import { mobyDick, sampleBatch, sequentialBatches } from "../../model/dataset.ts";
import { generateBytes } from "../../model/generate.ts";
import { type ExpertBackend, LocalExpertHost } from "../../model/local-expert-host.ts";
import { learningRate } from "../../model/schedule.ts";
import { bitsPerByte, Trainer } from "../../model/trainer.ts";
import { MoeTransformer } from "../../model/transformer.ts";
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
    .option("--resume", "start from the weights at --out if the file exists")
    .option("--no-progress", "print one line per validation instead of a progress bar")
    .action(async (opts: TrainOptions, cmd: Command) => {
      const { config: cfg } = configFor(cmd);
      await train(cfg, opts, io);
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
    .option("--stats", "print routing statistics (superposition cache hit rate) to stderr")
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
          for (const s of model.routingStats())
            io.err(
              `layer ${s.layer} (${s.tier}, ${s.activation}): ${(s.expertsServed / Math.max(1, s.tokens)).toFixed(2)} experts/token, superposition cache hit rate ${(100 * s.cacheHitRate).toFixed(1)}% (${s.cacheHits}/${s.cacheHits + s.cacheMisses})`,
            );
        }
      } finally {
        await host.close();
        await kernels?.release();
      }
    });
}

async function train(cfg: SwarmConfig, opts: TrainOptions, io: CliIO): Promise<void> {
  const mc = modelConfigFrom(cfg);
  const T = opts.seq ?? mc.context;
  if (T > mc.context)
    throw new UsageError(`--seq: at most model.context_length (${mc.context}); got ${T}`);
  const out = opts.out ?? defaultModelPath(cfg);
  const adamw = { weightDecay: opts.weightDecay };
  const host = await LocalExpertHost.create(mc, {
    backend: opts.backend,
    threads: opts.threads,
    adamw,
  });
  const kernels = opts.trunk === "onnx" ? await OnnxKernels.create(opts.threads) : null;
  try {
    const model = new MoeTransformer(mc, host, "float32", kernels);
    if (opts.resume && existsSync(out)) {
      withCheckpointErrors(() => loadModelInto(readModelFile(out), model, host, out));
      io.err(`resumed weights from ${out}`);
    }
    const trainer = new Trainer(model, { adamw, clipNorm: opts.clip });
    const data = mobyDick();
    const valBatches = sequentialBatches(data.validation, opts.batch, T, opts.evalWindows);
    const rng = new Prng(opts.seed ?? mc.seed);
    const budgetMs = opts.minutes === undefined ? Number.POSITIVE_INFINITY : opts.minutes * 60_000;
    let totalSteps = opts.steps ?? (opts.minutes === undefined ? 1000 : Number.POSITIVE_INFINITY);
    const fitToBudget = !Number.isFinite(totalSteps);
    const schedule = () => ({
      peak: opts.lr,
      min: opts.minLr ?? opts.lr / 10,
      warmupSteps:
        opts.warmup ??
        Math.max(1, Math.round(0.05 * (Number.isFinite(totalSteps) ? totalSteps : 1000))),
      totalSteps: Number.isFinite(totalSteps) ? totalSteps : 1000,
    });
    io.err(
      `training ${mc.tiers.map((t) => `${t.name} ${t.experts}×${t.activation}`).join(", ")}; d_model ${mc.dModel}, ` +
        `batch ${opts.batch}×${T} bytes, ${data.train.length} train / ${data.validation.length} validation bytes, ` +
        `experts on ${host.backend}, trunk on ${opts.trunk}, ${opts.threads} thread(s)`,
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
    let val = Number.NaN;
    const t0 = performance.now();
    let tokens = 0;
    let trainMs = 0;
    let lastLoss = Number.NaN;
    bar?.start(Number.isFinite(totalSteps) ? totalSteps : 1000, 0, {
      loss: "-",
      tps: "-",
      val: "-",
    });
    for (let step = 1; step <= totalSteps; step++) {
      const batch = sampleBatch(data.train, opts.batch, T, rng);
      const s0 = performance.now();
      const r = await trainer.trainStep(batch, learningRate(schedule(), step));
      trainMs += performance.now() - s0;
      tokens += r.tokens;
      lastLoss = r.ce;
      const elapsed = performance.now() - t0;
      if (fitToBudget && step === timingStepsForBudget) {
        totalSteps = Math.max(step + 1, Math.floor((budgetMs / elapsed) * step));
        bar?.setTotal(totalSteps);
        io.err(
          `\nfitted the schedule to ${opts.minutes} min: ${totalSteps} steps (replay with --steps ${totalSteps})`,
        );
      }
      if (step % opts.evalEvery === 0 || step === totalSteps || elapsed >= budgetMs) {
        val = await bitsPerByte(model, valBatches);
        if (!bar)
          io.err(`step ${step}: loss ${r.ce.toFixed(3)} nats, val ${val.toFixed(3)} bits/byte`);
      }
      bar?.update(step, {
        loss: r.ce.toFixed(3),
        tps: Math.round((tokens / trainMs) * 1000),
        val: Number.isNaN(val) ? "-" : val.toFixed(3),
      });
      if (elapsed >= budgetMs) {
        totalSteps = step;
        break;
      }
    }
    bar?.stop();
    const seconds = (performance.now() - t0) / 1000;
    const bytes = saveModel(out, model, host, {
      steps: String(trainer.step),
      validation_bits_per_byte: val.toFixed(4),
    });
    const stats = model.routingStats();
    const dropped = stats.reduce((s, l) => s + l.droppedAssignments, 0);
    const requested = stats.reduce((s, l) => s + l.requested.reduce((a, b) => a + b, 0), 0);
    io.out(
      `trained ${trainer.step} steps in ${seconds.toFixed(0)} s: ${Math.round((tokens / trainMs) * 1000)} tokens/s (training steps only), ` +
        `final train loss ${(lastLoss / Math.LN2).toFixed(3)} bits/byte, validation ${val.toFixed(3)} bits/byte, ` +
        `dropped ${((100 * dropped) / Math.max(1, requested)).toFixed(2)}% of expert assignments; ` +
        `saved ${(bytes / 1e6).toFixed(1)} MB to ${out}`,
    );
  } finally {
    await host.close();
    await kernels?.release();
  }
}
