"""Run resumable tasks on local worker processes or on Ray.

A *task* is any picklable object with
  - `id: str`          stable across runs (it names the completion marker),
  - `size_bytes: int`  input size, for the MB/s bar and ETA (0 if unknown),
  - `run() -> dict`    does the work; it must write its outputs atomically (`falconlm.atomic`,
                       or `writers.ShardWriter` for shards) BEFORE returning. The returned dict must be
                       JSON-serialisable (e.g. {"stats": [StepStats.to_dict(), ...], ...}).
Inside `run`, call `report_progress(docs=..., nbytes=...)` now and then to move the progress bar.

A *stage* is a named list of tasks with its own marker directory. `run_stage(stage, ...)` runs
every task whose marker `<marker_dir>/<task id>.json` does not exist yet, writes that marker (holding
the task's result) only after `run()` returned, and returns the results of ALL tasks (loaded from
markers for the skipped ones) in task order — so a run killed at any moment and rerun returns
exactly what an uninterrupted run returns. A global pass (e.g. MinHash bucketing, which needs all
signatures) is simply a later stage whose tasks read the earlier stage's outputs.

Plugging a new stage in: build your tasks (dataclasses with id/size_bytes/run), wrap them in
`Stage("my-stage", tasks, marker_dir=out/"markers"/"my-stage")` and call
`run_stage(stage, ExecConfig(workers=..., executor=...))`. Recipe stages (stage.py) are built of
such stages; the runner (refine.py) chains them and holds one `ray_session` for all of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from falconlm.atomic import atomic_write_text
from falconlm.errors import FalconError


class Task(Protocol):
    """A unit of work: stable id, input size, and a `run` that writes outputs atomically."""

    id: str
    size_bytes: int

    def run(self) -> dict[str, Any]: ...


@dataclass
class Stage:
    """A named list of tasks sharing one marker directory."""

    name: str
    tasks: Sequence[Task]
    marker_dir: Path


@dataclass
class ExecConfig:
    """How tasks run: local processes or Ray, how many at once, whether to show a bar."""

    workers: int = 1  # tasks at once (processes, or Ray CPUs of a local Ray instance)
    executor: Literal["local", "ray"] = "local"  # local processes, or a Ray cluster
    ray_address: str | None = None  # join a running Ray cluster: auto or HOST:PORT (implies --executor ray); None: start a local Ray instance
    progress: bool = True  # progress bars and the tables stages print; False: a quiet run
    max_task_retries: int = 3  # Ray: re-runs of a task whose worker or node died (safe: a task writes atomically, its marker last)

    def __post_init__(self) -> None:
        if self.ray_address and self.executor == "local":
            self.executor = "ray"  # an address only means something to Ray: asking for one is asking for Ray


# ---------------------------------------------------------------------------- progress plumbing

_progress_sink: Callable[[int, int], None] | None = None


def report_progress(docs: int = 0, nbytes: int = 0) -> None:
    """Called from inside a task to advance the progress bar (no-op when nobody listens)."""
    if _progress_sink is not None:
        _progress_sink(docs, nbytes)


def _init_worker(q: Any, parent_pid: int | None = None) -> None:
    """Worker-process initialiser: die with the parent (falconlm.workers), route report_progress into the parent's queue."""
    global _progress_sink
    from falconlm.workers import die_with_parent

    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _progress_sink = lambda d, b: q.put((d, b))  # noqa: E731


def marker_path(marker_dir: Path, task_id: str) -> Path:
    """Where a task's completion marker lives."""
    safe = task_id.replace(os.sep, "__")
    return Path(marker_dir) / f"{safe}.json"


def execute_task(task: Task, marker_dir: str) -> dict[str, Any]:
    """Run one task, then write its marker (outputs are already renamed into place by `run`)."""
    result = task.run()
    atomic_write_text(marker_path(Path(marker_dir), task.id), json.dumps(result, sort_keys=True))
    return result


_USER_ERROR = "FalconError: "  # how _safe_execute marks a failure that is already a user-facing sentence


def _safe_execute(task: Task, marker_dir: str) -> tuple[str, dict[str, Any] | None, str | None]:
    try:
        return task.id, execute_task(task, marker_dir), None
    except FalconError as exc:  # a sentence for the user (a corrupt input...), which rerunning will not fix
        return task.id, None, f"{_USER_ERROR}{exc}"
    except Exception:  # report, don't kill the pool: the other tasks still finish
        return task.id, None, traceback.format_exc()


# ------------------------------------------------------------------------------------- the bar


class _Bar:
    """tqdm over input bytes (so MB/s and ETA), with documents/s in the postfix."""

    def __init__(self, name: str, total_bytes: int, n_tasks: int, skipped: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.t0 = time.monotonic()
        self.docs = 0
        self.done = skipped
        self.n_tasks = n_tasks
        self.bar = tqdm(
            total=total_bytes or None,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            desc=name,
            disable=not enabled,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self._postfix()

    def update(self, docs: int, nbytes: int) -> None:
        self.docs += docs
        if nbytes:
            self.bar.update(nbytes)
        self._postfix()

    def task_done(self) -> None:
        self.done += 1
        self._postfix()

    def _postfix(self) -> None:
        rate = self.docs / max(time.monotonic() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"tasks {self.done}/{self.n_tasks}, {rate:,.0f} docs/s", refresh=False)

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------------------ executors


def run_stage(stage: Stage, config: ExecConfig | None = None) -> list[dict[str, Any]]:
    """Run the stage's unfinished tasks; return every task's result in task order."""
    config = config or ExecConfig()
    marker_dir = Path(stage.marker_dir)
    marker_dir.mkdir(parents=True, exist_ok=True)
    ids = [t.id for t in stage.tasks]
    if len(set(ids)) != len(ids):
        raise FalconError(f"stage {stage.name}: task ids are not unique")
    results: dict[str, dict[str, Any]] = {}
    todo: list[Task] = []
    for t in stage.tasks:
        mp = marker_path(marker_dir, t.id)
        if mp.exists():
            try:
                results[t.id] = json.loads(mp.read_text(encoding="utf-8"))
                continue
            except (OSError, json.JSONDecodeError):
                pass  # an unreadable marker means: run it again
        todo.append(t)
    total = sum(int(getattr(t, "size_bytes", 0) or 0) for t in todo)
    bar = _Bar(stage.name, total, len(stage.tasks), len(stage.tasks) - len(todo), config.progress)
    failures: dict[str, str] = {}
    try:
        if todo:
            if config.executor == "ray":
                _run_ray(todo, str(marker_dir), config, bar, results, failures)
            elif config.executor == "local":
                _run_local(todo, str(marker_dir), config, bar, results, failures)
            else:
                raise FalconError(f"unknown executor {config.executor!r}: use local or ray")
    finally:
        bar.close()
    if failures:
        first_id, first_tb = next(iter(failures.items()))
        if first_tb.startswith(_USER_ERROR):
            raise FalconError(first_tb[len(_USER_ERROR):])
        raise FalconError(
            f"stage {stage.name}: {len(failures)} of {len(stage.tasks)} tasks failed (first: {first_id}: "
            f"{first_tb.strip().splitlines()[-1]}); finished tasks are kept, rerun the same command to retry"
        )
    return [results[i] for i in ids]


def _run_local(
    todo: list[Task], marker_dir: str, config: ExecConfig, bar: _Bar, results: dict, failures: dict
) -> None:
    global _progress_sink
    if config.workers <= 1:
        # In-process: no pickling, and the per-document alarm works in the main thread.
        _progress_sink = bar.update
        try:
            for t in todo:
                tid, res, err = _safe_execute(t, marker_dir)
                _collect(tid, res, err, bar, results, failures)
        finally:
            _progress_sink = None
        return

    import multiprocessing as mp

    from falconlm.workers import quiet_resource_tracker

    quiet_resource_tracker()
    ctx = mp.get_context("spawn")  # fork + threads (tqdm, pyarrow) is unsafe; spawn is portable
    q = ctx.Queue()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                d, b = q.get(timeout=0.2)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            bar.update(d, b)

    th = threading.Thread(target=drain, daemon=True)
    th.start()
    with ctx.Pool(processes=min(config.workers, len(todo)), initializer=_init_worker, initargs=(q, os.getpid())) as pool:
        pending = [pool.apply_async(_safe_execute, (t, marker_dir)) for t in todo]
        for p in pending:
            _collect(*p.get(), bar, results, failures)
    stop.set()
    th.join(timeout=2)


def _collect(tid: str, res: dict | None, err: str | None, bar: _Bar, results: dict, failures: dict) -> None:
    if err is not None:
        failures[tid] = err
    else:
        # Normalise exactly as the marker stores it, so fresh and resumed results are identical.
        results[tid] = json.loads(json.dumps(res, sort_keys=True))
    bar.task_done()


def _run_ray(
    todo: list[Task], marker_dir: str, config: ExecConfig, bar: _Bar, results: dict, failures: dict
) -> None:
    with ray_session(config):
        import ray

        # On a cluster, SPREAD sends the tasks to every node (the default packs the driver's node first).
        strategy = "SPREAD" if config.ray_address else "DEFAULT"
        remote = ray.remote(max_retries=config.max_task_retries, scheduling_strategy=strategy)(_safe_execute)
        refs = {remote.remote(t, marker_dir): t for t in todo}
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for r in ready:
                try:
                    tid, res, err = ray.get(r)
                except ray.exceptions.RayError as exc:  # its worker or node died more often than max_task_retries
                    tid, res, err = refs[r].id, None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                if res is not None:
                    bar.update(int(res.get("docs_read", 0)), int(getattr(refs[r], "size_bytes", 0) or 0))
                _collect(tid, res, err, bar, results, failures)


@contextlib.contextmanager
def ray_session(config: ExecConfig) -> Iterator[None]:
    """Ray up for the duration of the block: started (and shut down after) unless it is already running.

    A command wraps all its stages in one session, so Ray starts once per command; a stage run on
    its own starts a session for itself. Does nothing for the local executor."""
    if config.executor != "ray":
        yield
        return
    try:
        import ray
    except ImportError:
        raise FalconError("the ray executor needs Ray: pip install 'falconlm[ray]'") from None
    if ray.is_initialized():
        yield
        return
    if config.ray_address:
        try:
            ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise FalconError(f"cannot join the Ray cluster at {config.ray_address}: {str(exc).strip().splitlines()[0]}") from None
    else:
        ray.init(num_cpus=max(1, config.workers), include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
