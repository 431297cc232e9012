// What every command gets: the config (loaded lazily, so `--help` never reads a file), output
// streams that tests can capture, and the error types that map to exit codes.

import type { Command } from "commander";
import { type LoadedConfig, loadConfig } from "../config/load.ts";

export interface CliIO {
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
}

export const processIO: CliIO = {
  out: (text) => process.stdout.write(text.endsWith("\n") ? text : `${text}\n`),
  err: (text) => process.stderr.write(text.endsWith("\n") ? text : `${text}\n`),
};

/** A command whose implementation has not landed yet: it says so and exits non-zero. */
export class NotBuiltError extends Error {
  constructor(command: string, issue: number) {
    super(`moe-swarm ${command}: not built yet (tracked in issue #${issue})`);
    this.name = "NotBuiltError";
  }
}

/** A usage error the user can fix (bad flag value, missing file): exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** An operation that ran and failed (corrupt data, wrong key, missing checkpoint): exit code 1. */
export class OperationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OperationError";
  }
}

/** The config named by the global `--config` flag, or the local defaults. */
export function configFor(command: Command): LoadedConfig {
  const { config } = command.optsWithGlobals<{ config?: string }>();
  return loadConfig(config);
}

export function notBuilt(program: Command, name: string, summary: string, issue: number): Command {
  return program
    .command(name)
    .description(`${summary} (not built yet: issue #${issue})`)
    .allowUnknownOption(true)
    .allowExcessArguments(true)
    .action(() => {
      throw new NotBuiltError(name, issue);
    });
}
