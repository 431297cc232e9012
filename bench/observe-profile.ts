// Where observability's CPU goes, from V8 CPU profiles of the swarm with it on and off — a figure
// that holds on a loaded machine, where the on/off throughput of bench/observe-overhead.ts swings
// by ±10% (the neighbours' load): each profile's busy samples are split by what code they are in,
// so the neighbours scale numerator and denominator alike.
//
// Make the profiles (gateway and the five node processes, one phase each, same settings):
//   for mode in on off; do
//     OBSERVED_NODE_CPU_PROF_DIR=/tmp/prof-$mode node --cpu-prof --cpu-prof-dir=/tmp/prof-$mode \
//       --import tsx bench/observe-overhead.ts --only $mode --phase 20 --clients 1 --sample 0.1
//   done
//   npx tsx bench/observe-profile.ts /tmp/prof-on /tmp/prof-off [--window 15]
//
// Only the last `--window` seconds of each profile are counted (minus the last second), so process
// start-up (module loading, config parsing) and shutdown are left out. Self time is counted: a
// function's own samples, not its callees'. Categories:
//   observability  src/observe/*, src/swarm/frame-spans.ts, src/swarm/dispatch-observer.ts
//   otel           @opentelemetry/* (spans, context API)
//   prom-client    prom-client and its helpers
//   async hooks    node's async_hooks (the AsyncLocalStorage context manager's promise hooks)
//   gc             the garbage collector (indirect: span objects and the trace ring buffer)
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

interface CpuProfile {
  readonly nodes: readonly { id: number; callFrame: { functionName: string; url: string } }[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

const categories = ["observability", "otel", "prom-client", "async hooks", "gc"] as const;
type Category = (typeof categories)[number];

function categoryOf(url: string, functionName: string): Category | undefined {
  if (/src\/observe\/|src\/swarm\/frame-spans\.ts|src\/swarm\/dispatch-observer\.ts/.test(url))
    return "observability";
  if (url.includes("@opentelemetry")) return "otel";
  if (/prom-client|bintrees|tdigest/.test(url)) return "prom-client";
  if (url.includes("async_hooks")) return "async hooks";
  if (functionName === "(garbage collector)") return "gc";
  return undefined;
}

function summarize(
  dir: string,
  windowSeconds: number,
): { busyMs: number; byCategory: Map<Category, number> } {
  let busyUs = 0;
  const byCategory = new Map<Category, number>(categories.map((c) => [c, 0]));
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".cpuprofile"))) {
    const p = JSON.parse(readFileSync(join(dir, file), "utf8")) as CpuProfile;
    const frames = new Map(p.nodes.map((n) => [n.id, n.callFrame]));
    const lo = p.endTime - (windowSeconds + 1) * 1e6;
    const hi = p.endTime - 1e6;
    let at = p.startTime;
    p.samples.forEach((id, i) => {
      const dt = p.timeDeltas[i] ?? 0;
      at += dt;
      const frame = frames.get(id);
      if (at < lo || at > hi || !frame || frame.functionName === "(idle)") return;
      busyUs += dt;
      const c = categoryOf(frame.url, frame.functionName);
      if (c) byCategory.set(c, (byCategory.get(c) ?? 0) + dt);
    });
  }
  return { busyMs: busyUs / 1000, byCategory };
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { window: { type: "string", default: "15" } },
});
const [onDir, offDir] = positionals;
if (!onDir || !offDir)
  throw new Error("usage: observe-profile.ts <on profiles dir> <off profiles dir> [--window 15]");
const windowSeconds = Number(values.window);
const on = summarize(onDir, windowSeconds);
const off = summarize(offDir, windowSeconds);
const share = (s: typeof on, c: Category) => ((s.byCategory.get(c) ?? 0) / 1000 / s.busyMs) * 100;
console.log(
  `self time by category, share of all swarm processes' busy time (last ${windowSeconds} s of each profile): on ${on.busyMs.toFixed(0)} ms busy, off ${off.busyMs.toFixed(0)} ms busy`,
);
let total = 0;
for (const c of categories) {
  const d = share(on, c) - share(off, c);
  total += d;
  console.log(
    `  ${c.padEnd(14)} on ${share(on, c).toFixed(2).padStart(5)}%  off ${share(off, c).toFixed(2).padStart(5)}%  on − off ${d >= 0 ? "+" : ""}${d.toFixed(2)}%`,
  );
}
console.log(
  `  observability's added share of the swarm's CPU (on − off, all categories): ${total.toFixed(2)}%`,
);
