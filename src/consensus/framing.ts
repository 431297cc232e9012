// Length-prefixed frames over a TCP stream (u32 big-endian length, then the bytes). A length above
// the cap is refused before any buffering, so a peer cannot make us allocate without bound.

import type { Socket } from "node:net";

export class FrameReader {
  #buf: Buffer = Buffer.alloc(0);
  readonly #maxBytes: number;

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  /** Adds bytes; returns whole frames, or an error reason when the stream must be closed. */
  push(chunk: Buffer): { frames: Uint8Array[]; error?: string } {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const frames: Uint8Array[] = [];
    while (this.#buf.length >= 4) {
      const len = this.#buf.readUInt32BE(0);
      if (len > this.#maxBytes)
        return { frames, error: `frame of ${len} bytes exceeds the ${this.#maxBytes}-byte limit` };
      if (this.#buf.length < 4 + len) break;
      frames.push(new Uint8Array(this.#buf.subarray(4, 4 + len)));
      this.#buf = this.#buf.subarray(4 + len);
    }
    return { frames };
  }
}

export function writeFrame(socket: Socket, bytes: Uint8Array): void {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(bytes.length, 0);
  socket.write(Buffer.concat([header, bytes]));
}
