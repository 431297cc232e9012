// The `moe-swarm` command. Each command family lives in its own file under commands/; this file
// only wires them up and maps errors to exit codes:
//   0 success · 1 invalid config or failed operation · 2 usage error or command not built yet.

import { readFileSync } from "node:fs";
import { Command, CommanderError } from "commander";
import { ConfigError } from "../config/load.ts";
import { registerCheckpoint } from "./commands/checkpoint.ts";
import { registerConfig } from "./commands/config.ts";
import { registerCoordinator } from "./commands/coordinator.ts";
import { registerModel } from "./commands/model.ts";
import { registerSwarm } from "./commands/swarm.ts";
import { type CliIO, NotBuiltError, OperationError, processIO, UsageError } from "./context.ts";

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
    version: string;
  };
  return pkg.version;
}

export function buildProgram(io: CliIO): Command {
  const program = new Command("moe-swarm")
    .description(
      "Train and serve a Mixture-of-Experts model on a swarm of expert nodes across regions",
    )
    .version(packageVersion(), "-V, --version")
    .option("-c, --config <file>", "YAML config (default: the built-in local profile)")
    .showHelpAfterError("(run with --help for usage)")
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .exitOverride();
  registerConfig(program, io);
  registerModel(program, io);
  registerSwarm(program, io);
  registerCoordinator(program, io);
  registerCheckpoint(program, io);
  for (const command of program.commands) {
    command.exitOverride().configureOutput({ writeOut: io.out, writeErr: io.err });
    for (const sub of command.commands)
      sub.exitOverride().configureOutput({ writeOut: io.out, writeErr: io.err });
  }
  return program;
}

/** Runs the CLI on `argv` (as process.argv: node, script, ...args) and returns the exit code. */
export async function main(argv: readonly string[], io: CliIO = processIO): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync([...argv]);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here with exit code 0; parse errors were already printed.
      return err.exitCode === 0 ? 0 : 2;
    }
    if (err instanceof ConfigError) {
      io.err(`invalid config: ${err.message}`);
      return 1;
    }
    if (err instanceof OperationError) {
      io.err(err.message);
      return 1;
    }
    if (err instanceof NotBuiltError || err instanceof UsageError) {
      io.err(err.message);
      return 2;
    }
    throw err;
  }
}
