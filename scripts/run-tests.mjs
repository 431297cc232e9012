#!/usr/bin/env node
// Runs every test/**/*.test.ts with node's built-in test runner (through tsx), so that the runner's
// own summary lines (tests, pass, fail, duration) close the output. Node 20's `--test` does not
// expand globs, hence this finder. Extra arguments are passed to `node --test` (e.g. a file filter).
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

function findTests(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...findTests(path));
    else if (name.endsWith(".test.ts")) out.push(path);
  }
  return out;
}

const filters = process.argv.slice(2);
const files = findTests("test").filter(
  (f) => filters.length === 0 || filters.some((s) => f.includes(s)),
);
if (files.length === 0) {
  console.error(`no test files match ${filters.join(" ") || "test/**/*.test.ts"}`);
  process.exit(1);
}
const result = spawnSync(
  process.execPath,
  ["--import", "tsx", "--test", "--test-reporter", "spec", ...files],
  { stdio: "inherit" },
);
process.exit(result.status ?? 1);
