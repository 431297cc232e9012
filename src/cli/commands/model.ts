// `moe-swarm train` and `moe-swarm generate`: the MoE model core (issue #4).

import type { Command } from "commander";
import { type CliIO, notBuilt } from "../context.ts";

export function registerModel(program: Command, _io: CliIO): void {
  notBuilt(program, "train", "train the MoE model on Moby Dick with a progress bar", 4);
  notBuilt(program, "generate", "sample text from a trained model", 4);
}
