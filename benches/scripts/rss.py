#!/usr/bin/env python3
"""Resident memory of a release pgwarden per idle client session, and over connect/disconnect
cycles.

Starts pgwarden (the release binary) on a free port, logs N raw-protocol clients in through it
and keeps them idle, and reads VmRSS from /proc/<pid>/status before and after; then runs M
sequential connect / login / Terminate cycles, sampling VmRSS as it goes (it should stay
flat). pgwarden is stopped by its PID.

N idle sessions need N server backends: by default a private PostgreSQL cluster is started
(initdb / pg_ctl in a temp dir, max_connections = N + 50, on a free port), so the shared
server on 127.0.0.1:5432 is not exhausted; `--upstream 127.0.0.1:5432` uses an existing
server instead (then keep N below its free connections).

    cargo build --release
    python3 benches/scripts/rss.py [--clients 1000] [--cycles 10000] [--bin PATH]
"""

import argparse
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def startup_packet(user, db):
    body = struct.pack("!I", 0x0003_0000)
    for k, v in (("user", user), ("database", db)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def read_until_ready(s):
    buf = b""
    while True:
        while len(buf) >= 5:
            tag = buf[0:1]
            (n,) = struct.unpack("!I", buf[1:5])
            if len(buf) < 1 + n:
                break
            frame, buf = buf[: 1 + n], buf[1 + n :]
            if tag == b"E":
                raise RuntimeError(f"server error: {frame!r}")
            if tag == b"Z":
                return
        d = s.recv(65536)
        if not d:
            raise RuntimeError("connection closed during login")
        buf += d


def login(port, user, db):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(startup_packet(user, db))
    read_until_ready(s)
    return s


def wait_port(port, proc, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError("pgwarden exited early")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("pgwarden did not listen")


class Cluster:
    """A private PostgreSQL cluster for many backends (initdb as the postgres user)."""

    def __init__(self, max_connections):
        bindir = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="pgwarden-rss-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        as_root = os.geteuid() == 0
        self.prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        if as_root:
            shutil.chown(self.dir, "postgres")
        subprocess.run(
            self.prefix
            + [f"{bindir}/initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.dir}'\nfsync = off\n"
                f"max_connections = {max_connections}\nshared_buffers = 32MB\n"
            )
        subprocess.run(
            self.prefix
            + [f"{bindir}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "start"],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def stop(self):
        subprocess.run(
            self.prefix + [f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(target, "release", "pgwarden"))
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--cycles", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=5000,
                    help="distinct statements (cache misses inspected on their own thread) in one session")
    ap.add_argument("--upstream", help="HOST:PORT of an existing server (default: a private cluster)")
    ap.add_argument("--user", default="postgres")
    ap.add_argument("--db", default="postgres")
    args = ap.parse_args()

    cluster = None
    if args.upstream:
        upstream = args.upstream
    else:
        cluster = Cluster(args.clients + 50)
        upstream = f"127.0.0.1:{cluster.port}"

    work = tempfile.mkdtemp(prefix="pgwarden-rss-run-")
    policies = os.path.join(work, "policies")
    os.mkdir(policies)
    config = os.path.join(work, "pgwarden.toml")
    with open(config, "w") as f:
        f.write(f"max_client_connections = {args.clients + 100}\n")
    port = free_port()
    proc = subprocess.Popen(
        [args.bin, "serve", "--config", config, "--listen", f"127.0.0.1:{port}",
         "--upstream", upstream, "--policies", policies, "--state-dir", work,
         "--admin-listen", "off"],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, "pgwarden.log"), "w"),
        env={**os.environ, "PGWARDEN_LOG": "warn"},
    )
    socks = []
    try:
        wait_port(port, proc)
        # Warm up: the allocator's arenas, the runtime's threads, one session's worth of
        # everything that is made once.
        for _ in range(20):
            s = login(port, args.user, args.db)
            s.sendall(b"X\0\0\0\x04")
            s.close()
        time.sleep(0.5)
        base = rss_kib(proc.pid)
        for _ in range(args.clients):
            socks.append(login(port, args.user, args.db))
        time.sleep(0.5)
        idle = rss_kib(proc.pid)
        per = (idle - base) * 1024 / max(args.clients, 1)
        print(f"baseline VmRSS            {base} KiB")
        print(f"{args.clients} idle sessions VmRSS {idle} KiB")
        print(f"per idle session          {per / 1024:.1f} KiB  (goal <= 64 KiB)")
        for s in socks:
            s.sendall(b"X\0\0\0\x04")
            s.close()
        socks.clear()
        time.sleep(1.0)
        print(f"after they left           {rss_kib(proc.pid)} KiB")

        samples = []
        step = max(args.cycles // 10, 1)
        t0 = time.time()
        for i in range(1, args.cycles + 1):
            s = login(port, args.user, args.db)
            s.sendall(b"X\0\0\0\x04")
            s.close()
            if i % step == 0:
                samples.append((i, rss_kib(proc.pid)))
        dt = time.time() - t0
        print(f"{args.cycles} connect/disconnect cycles in {dt:.1f}s; VmRSS (KiB) by cycle:")
        for i, r in samples:
            print(f"  {i:>6}  {r}")
        if samples:
            print(f"growth over the cycles    {samples[-1][1] - samples[0][1]} KiB")

        # Distinct statements long enough to be inspected on a thread of their own (see
        # src/sql/deep.rs): the threads' stacks and libpg_query's per-thread memory must go.
        if args.queries:
            for kind, terms in (("short (inline)", 2), ("long (inspection pool)", 20)):
                s = login(port, args.user, args.db)
                samples = []
                step = max(args.queries // 5, 1)
                t0 = time.time()
                for i in range(1, args.queries + 1):
                    expr = "+".join(str(i + k) for k in range(terms))
                    sql = f"SELECT {expr} AS q{i}_{terms}".encode() + b"\0"
                    s.sendall(b"Q" + struct.pack("!I", len(sql) + 4) + sql)
                    read_until_ready(s)
                    if i % step == 0:
                        samples.append((i, rss_kib(proc.pid)))
                dt = time.time() - t0
                print(f"{args.queries} distinct {kind} statements: {dt / args.queries * 1e6:.0f} us each (round trip); VmRSS (KiB): "
                      + ", ".join(f"{i}: {r}" for i, r in samples))
                s.sendall(b"X\0\0\0\x04")
                s.close()
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if cluster:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
