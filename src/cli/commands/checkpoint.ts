// `moe-swarm checkpoint ...`: content-addressed tiered checkpoints (issue #7).

import type { Command } from "commander";
import { type CliIO, notBuilt } from "../context.ts";

export function registerCheckpoint(program: Command, _io: CliIO): void {
  notBuilt(
    program,
    "checkpoint",
    "list, save, restore, verify, gc, export-car and import-car checkpoints",
    7,
  );
}
