"""A two-node Ray cluster on 127.0.0.1 for tests and benchmarks: `ray start --head` and a second
`ray start --address` node, each as `ray start --block`, so that every process of a node descends
from a command this helper started. It is stopped through those processes' ids — never `ray stop`,
which stops every Ray instance on the machine, other people's included."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
# Ray swaps a loopback address (a node's, or the head's address given to `ray start --address` and
# `ray.init`) for the machine's routable one, unless it runs in its single-machine mode (as on
# Windows/macOS), which this variable selects for the head and the driver. The second node cannot use
# that mode (`ray start --address` refuses it), so it runs Ray's own `ray start` entry point with the
# swap turned off: WORKER_START. Every process of the cluster then listens on 127.0.0.1 only.
LOOPBACK_MODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
WORKER_START = [sys.executable, "-c", "import sys; import ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
                "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"]
# Node death is noticed within ~5 s instead of Ray's default of tens of seconds (not faster: on a
# loaded 2-core machine a live node must not miss its checks).
FAST_HEALTH_CHECKS = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                      "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "5"}


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LoopbackRayCluster:
    """Head + worker Ray nodes bound to 127.0.0.1; `address` is what `--ray-address` takes."""

    def __init__(self, head_cpus: int = 1, worker_cpus: int = 2, log_dir: Path | None = None) -> None:
        # Ray's unix sockets live under the temp dir and must stay under ~100 characters: a short /tmp name.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="fray", dir="/tmp"))
        self.log_dir = Path(log_dir or self.temp_dir)
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        # What a driver needs besides --ray-address: loopback mode and this cluster's own auth token
        # (Ray enables token auth whenever ~/.ray/auth_token exists; the nodes and the driver use this one).
        self.env = {**LOOPBACK_MODE, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
        self.seen: dict[int, psutil.Process] = {}  # every process of the cluster seen so far, by pid

    def _node_args(self) -> list[str]:
        nm, om, agent, agent_grpc, env_agent, metrics = free_ports(6)
        return ["--block", "--node-manager-port", str(nm), "--object-manager-port", str(om),
                "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
                "--disable-usage-stats", "--include-log-monitor", "false"]

    def _start(self, name: str, command: list[str], args: list[str], timeout: float, env: dict[str, str]) -> None:
        log = open(self.log_dir / f"ray-{name}.log", "w")
        env = {**os.environ, **env, **FAST_HEALTH_CHECKS}
        self.nodes[name] = subprocess.Popen([*command, "start", *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in (self.log_dir / f"ray-{name}.log").read_text(errors="replace"):
            if self.nodes[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed: {(self.log_dir / f'ray-{name}.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        self.processes()

    def start(self, timeout: float = 90) -> LoopbackRayCluster:
        """Start the head, then the worker node; returns self."""
        self._start("head", [RAY], ["--head", "--port", str(self.port), "--include-dashboard", "false",
                             "--num-cpus", str(self.head_cpus), "--temp-dir", str(self.temp_dir), "--node-ip-address", "127.0.0.1",
                             *self._node_args()], timeout, self.env)
        worker_env = {k: v for k, v in self.env.items() if k not in LOOPBACK_MODE}
        self._start("worker", WORKER_START, ["--address", self.address, "--num-cpus", str(self.worker_cpus), *self._node_args()], timeout, worker_env)
        return self

    def processes(self, node: str | None = None) -> list[psutil.Process]:
        """The live processes under one node's `ray start` (or both); remembered for stop()."""
        out = []
        for name, p in self.nodes.items():
            if node not in (None, name):
                continue
            try:
                root = psutil.Process(p.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for q in procs:
                self.seen.setdefault(q.pid, q)
            out += procs
        return out

    def _named(self, node: str, word: str) -> list[psutil.Process]:
        found = []
        for q in self.processes(node):
            try:
                if any(word in part for part in q.cmdline()):
                    found.append(q)
            except psutil.Error:
                pass
        return found

    def running_tasks(self, node: str, function: str = "_safe_execute") -> list[psutil.Process]:
        """Worker processes of `node` executing a task of `function` right now (Ray titles them ray::<function>)."""
        return self._named(node, f"ray::{function}")

    def kill_raylet(self, node: str) -> int:
        """SIGKILL the node's raylet (its workers die with it); returns its pid."""
        [raylet] = [q for q in self._named(node, "raylet") if q.name() == "raylet" or "/raylet" in " ".join(q.cmdline()[:1])]
        raylet.kill()
        return raylet.pid

    def stop(self) -> None:
        """Stop both nodes: SIGTERM to each `ray start`, then SIGKILL whatever this cluster started and is left."""
        self.processes()
        for p in self.nodes.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.nodes.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for q in self.seen.values():
            try:
                if q.is_running():  # same pid *and* same start time: never a recycled pid
                    q.kill()
            except psutil.Error:
                pass
        psutil.wait_procs([q for q in self.seen.values() if q.is_running()], timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LoopbackRayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
