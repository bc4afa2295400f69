#!/usr/bin/env python3
"""Slow clients against a running deployd: how many idle connections it holds before its cap,
and its resident memory under N slowloris clients (headers sent one byte at a time, never
finished). Prints one line per figure; it measures, it asserts nothing.

  deployd serve --listen 127.0.0.1:8080 --data /tmp/d &   # the binary under test
  benches/scripts/slow-clients.py --addr 127.0.0.1:8080 --pid $! --slow 2000 --idle 12000

--idle N opens up to N connections that send nothing and counts how many stay open (the rest
get the 503 refusal and are closed). --slow N opens N connections that trickle header bytes
and reports VmRSS while they are all open. Needs `ulimit -n` above N for this script itself.
"""
import argparse
import resource
import socket
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def connect(host, port):
    s = socket.create_connection((host, port), timeout=5)
    s.setblocking(False)
    return s


def held_idle(host, port, count):
    """Opens `count` silent connections; returns how many the server kept open."""
    socks = []
    for _ in range(count):
        try:
            socks.append(connect(host, port))
        except OSError:
            break
    time.sleep(2)  # let refusals arrive
    open_ = 0
    for s in socks:
        try:
            data = s.recv(1, socket.MSG_PEEK)
            # A refusal (503) or a close means this one was not held.
            if data == b"":
                continue
        except BlockingIOError:
            open_ += 1  # nothing to read: still held
        except OSError:
            continue
    for s in socks:
        s.close()
    return open_


def slowloris(host, port, pid, count, rounds):
    socks = [connect(host, port) for _ in range(count)]
    request = b"GET /v1/apps HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 64
    peak = 0
    for i in range(rounds):
        for s in socks:
            try:
                s.send(request[i % len(request):i % len(request) + 1])
            except OSError:
                pass
        peak = max(peak, rss_kib(pid))
        time.sleep(0.5)
    for s in socks:
        s.close()
    return peak


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", default="127.0.0.1:8080")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument("--slow", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"rss_idle_kib {rss_kib(args.pid)}")
    if args.slow:
        print(f"slow_clients {args.slow} rss_peak_kib {slowloris(host, port, args.pid, args.slow, args.rounds)}")
    if args.idle:
        print(f"idle_connections_tried {args.idle} held {held_idle(host, port, args.idle)}")
    time.sleep(1)
    print(f"rss_after_kib {rss_kib(args.pid)}")


if __name__ == "__main__":
    main()
