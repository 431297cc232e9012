// Atomic file replacement: write to a temp file in the same directory, fsync it, rename over the
// target, fsync the directory. A crash at any point leaves either the old file or the new one, never
// a torn mix (POSIX rename(2) is atomic within a file system). The crash-injection hook lets tests
// stop the process at each step.

import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { type CrashHook, noCrash } from "./faults.ts";

let tempCounter = 0;

/** The temp-file suffix; a sweep removes leftovers of crashed writes. */
export const tempSuffix = ".tmp";

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export function writeFileAtomic(path: string, bytes: Uint8Array, crash: CrashHook = noCrash): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true });
  const temp = join(dir, `.${basename(path)}.${process.pid}.${tempCounter++}${tempSuffix}`);
  const fd = openSync(temp, "w");
  try {
    let offset = 0;
    while (offset < bytes.length) offset += writeSync(fd, bytes, offset, bytes.length - offset);
    crash("atomic:before-fsync");
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  crash("atomic:before-rename");
  renameSync(temp, path);
  crash("atomic:before-dir-fsync");
  fsyncDir(dir);
}
