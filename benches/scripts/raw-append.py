#!/usr/bin/env python3
"""The durable-ingest limit `deployd bench ingest` is compared with: a raw file append.

P writers (threads; the write and fdatasync calls release the GIL) each append LINES lines of
LINE_BYTES bytes (plus a newline) to their own file in a temporary directory, BATCH lines per
write(), and each calls fdatasync on its file whenever SYNC_MS milliseconds passed since its last
one, plus once at the end. This is what deployd's writer does at best for P pushers (one log file
per deployment, text written then synced), without an index, a protocol or a socket: the
ceiling of lines/s on this machine's disk. It prints lines/s and MB/s of text.

    benches/scripts/raw-append.py [--writers 4] [--lines 250000] [--line-bytes 100]
                                  [--batch 1000] [--sync-ms 1] [--dir DIR]

DIR (default: a new directory under /tmp, removed afterwards) should be on the disk the
server's data directory is on.
"""

import argparse
import os
import shutil
import tempfile
import threading
import time


def writer(path, lines, line_bytes, batch, sync_s, results, index):
    chunk = (b"x" * line_bytes + b"\n") * batch
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    syncs = 0
    try:
        written = 0
        last_sync = time.monotonic()
        while written < lines:
            n = min(batch, lines - written)
            data = chunk if n == batch else chunk[: n * (line_bytes + 1)]
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            written += n
            now = time.monotonic()
            if now - last_sync >= sync_s:
                os.fdatasync(fd)
                syncs += 1
                last_sync = now
        os.fdatasync(fd)
        syncs += 1
    finally:
        os.close(fd)
    results[index] = syncs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--lines", type=int, default=250_000, help="lines per writer")
    parser.add_argument("--line-bytes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000, help="lines per write()")
    parser.add_argument("--sync-ms", type=float, default=1.0)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    if args.writers < 1 or args.lines < 1 or args.line_bytes < 1 or args.batch < 1:
        parser.error("--writers, --lines, --line-bytes and --batch must be at least 1")

    made = args.dir is None
    directory = tempfile.mkdtemp(prefix="raw-append-") if made else args.dir
    try:
        results = [0] * args.writers
        threads = [
            threading.Thread(
                target=writer,
                args=(
                    os.path.join(directory, f"log-{i}"),
                    args.lines,
                    args.line_bytes,
                    args.batch,
                    args.sync_ms / 1000.0,
                    results,
                    i,
                ),
            )
            for i in range(args.writers)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    finally:
        if made:
            shutil.rmtree(directory, ignore_errors=True)
    total = args.writers * args.lines
    print(
        f"raw append: {args.writers} writers x {args.lines} lines of {args.line_bytes} B, "
        f"{args.batch} per write, fdatasync every {args.sync_ms} ms: "
        f"{total / elapsed / 1e6:.2f} M lines/s, "
        f"{total * args.line_bytes / elapsed / 1e6:.0f} MB/s of text, "
        f"{sum(results)} fdatasyncs in {elapsed:.2f} s"
    )


if __name__ == "__main__":
    main()
