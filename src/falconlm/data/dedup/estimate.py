"""The dedup stages in RefinedWeb order (MinHash -> exact substring -> URL), their settings, an
up-front resource estimate, and `run_dedup` for corpora outside the refine pipeline."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from falconlm.data.dedup.common import DedupContext, Resources
from falconlm.data.dedup.exact_substring import BYTES_PER_TOKEN, ExactSubstringConfig, part_tokens_for
from falconlm.data.dedup.minhash import MinHashConfig, MinHasher
from falconlm.data.dedup.url import UrlDedupConfig
from falconlm.data.executor import ExecConfig, StageResult
from falconlm.errors import FalconError


@dataclass
class DedupConfig:
    """Which dedup methods run and with what settings (None = method off)."""

    minhash: MinHashConfig | None = field(default_factory=MinHashConfig)
    exact_substring: ExactSubstringConfig | None = field(default_factory=ExactSubstringConfig)
    url: UrlDedupConfig | None = field(default_factory=UrlDedupConfig)
    resources: Resources = field(default_factory=Resources)
    bucket_groups: int = 0  # MinHash bucket tasks; 0 = 16 (at most one per band)

    def to_dict(self) -> dict[str, Any]:
        """JSON form written beside the outputs."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DedupConfig":
        """Inverse of to_dict (missing keys take defaults; an explicit null turns a method off)."""
        def sub(key: str, typ: type) -> Any:
            if key not in d:
                return typ()
            return None if d[key] is None else typ(**d[key])

        return cls(
            minhash=sub("minhash", MinHashConfig),
            exact_substring=sub("exact_substring", ExactSubstringConfig),
            url=sub("url", UrlDedupConfig),
            resources=Resources(**d.get("resources", {})),
            bucket_groups=int(d.get("bucket_groups", 0)),
        )


def dedup_stage_list(config: DedupConfig, verbose: bool = True) -> list:
    """The enabled dedup stages, in RefinedWeb order."""
    from falconlm.data.dedup.exact_stage import ExactSubstringStage
    from falconlm.data.dedup.minhash_stage import MinHashStage
    from falconlm.data.dedup.url import UrlDedupStage

    stages: list = []

    def res() -> Resources:
        # Only the first stage reads the user's files; later ones read our shards, whose
        # records always use the standard "text" / "id" keys.
        return config.resources if not stages else replace(config.resources, text_key="text", id_key="id")

    if config.minhash is not None:
        stages.append(MinHashStage(config.minhash, res(), config.bucket_groups, verbose))
    if config.exact_substring is not None:
        stages.append(ExactSubstringStage(config.exact_substring, res()))
    if config.url is not None:
        stages.append(UrlDedupStage(config.url, res()))
    return stages


def refinedweb_dedup_stages(refine_config: Any) -> list:
    """The dedup stages of the `refinedweb` recipe, configured from RefineConfig.dedup (a dict)."""
    cfg = DedupConfig.from_dict(dict(getattr(refine_config, "dedup", {}) or {}))
    cfg.resources.output_format = getattr(refine_config, "output_format", cfg.resources.output_format)
    return dedup_stage_list(cfg)


def estimate(config: DedupConfig, n_docs: int, avg_chars: float = 3000.0, workers: int = 1) -> dict[str, Any]:
    """Disk and memory a run over n_docs documents will need (bytes), by stage."""
    words = avg_chars / 6.0  # ~6 characters per word with its separator on web text
    res = config.resources
    est: dict[str, Any] = {"documents": n_docs, "avg_chars": avg_chars, "workers": workers, "stages": {}}
    corpus = n_docs * avg_chars * 0.35  # jsonl.zst output, ~0.35 byte per character
    if config.minhash is not None:
        m = config.minhash
        batch = max(8, min(256, res.memory_bytes // (4 * 8 * m.num_hashes)))
        sig_batch = batch * m.num_hashes * 8 + MinHasher.BLOCK_ELEMENTS * 8 * 3
        est["stages"]["minhash"] = {
            "disk_signatures": n_docs * m.bands * 16,
            "memory_per_task": min(res.memory_bytes, max(1 << 16, res.memory_bytes // 2) + n_docs * m.bands * 16) + sig_batch,
            "memory_clusters_per_duplicate_doc": 16 * 6,
            "disk_output": corpus,
        }
    if config.exact_substring is not None:
        pt = config.exact_substring.part_tokens or part_tokens_for(res.memory_bytes)
        tokens = n_docs * words
        est["stages"]["exact_substring"] = {
            "disk_tokens": tokens * 8 + n_docs * 8,
            "parts": max(1, int(-(-tokens // pt))),
            "part_tokens": pt,
            "memory_per_task": min(tokens, pt) * BYTES_PER_TOKEN,
            "disk_output": corpus,
        }
    if config.url is not None:
        est["stages"]["url_dedup"] = {"disk_keys": n_docs * 16, "memory_per_task": res.memory_bytes, "disk_output": corpus}
    st = est["stages"].values()
    est["peak_disk"] = sum(sum(v for k, v in s.items() if k.startswith("disk")) for s in st)
    est["peak_memory"] = workers * max([s["memory_per_task"] for s in st] or [0])
    return est


def _h(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def format_estimate(est: dict[str, Any]) -> str:
    """Human-readable form of `estimate`."""
    lines = [f"Estimate for {est['documents']:,} documents of ~{est['avg_chars']:,.0f} characters, {est['workers']} worker(s):"]
    for name, s in est["stages"].items():
        parts = ", ".join(f"{k.replace('_', ' ')} {_h(v) if k.startswith(('disk', 'memory')) else f'{v:,}'}" for k, v in s.items())
        lines.append(f"  {name}: {parts}")
    lines.append(f"  total: disk ~{_h(est['peak_disk'])}, memory ~{_h(est['peak_memory'])} at peak")
    return "\n".join(lines)


def count_documents(inputs: list[Path], res: Resources, sample: int = 2000) -> tuple[int, float]:
    """(documents, average characters) estimated from the first shard and the input sizes."""
    from falconlm.data.dedup.common import iter_shard

    if not inputs:
        return 0, 0.0
    n = chars = 0
    for doc in iter_shard(inputs[0], res):
        n += 1
        chars += len(doc.text)
        if n >= sample:
            break
    if n == 0:
        return 0, 0.0
    total = sum(os.path.getsize(p) for p in inputs)
    if n < sample:  # the whole first shard was read: scale by file size
        docs = int(n * total / max(1, os.path.getsize(inputs[0])))
    else:  # bytes per document from the average text length and the compression
        compressed = str(inputs[0]).endswith((".gz", ".zst", ".parquet"))
        docs = int(total / max(1.0, chars / n * (0.35 if compressed else 1.1)))
    return max(n, docs), chars / n


@contextmanager
def _ray_session(exec_config: ExecConfig) -> Iterator[None]:
    """Start Ray once for all dedup stages (the executor would otherwise start it per stage)."""
    if exec_config.executor != "ray":
        yield
        return
    try:
        import ray
    except ImportError:
        raise FalconError("the ray executor needs Ray: pip install 'falconlm[ray]'") from None
    if ray.is_initialized():
        yield
        return
    if exec_config.ray_address:
        ray.init(address=exec_config.ray_address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=max(1, exec_config.workers), include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def run_dedup(inputs: list[str | os.PathLike], out: str | os.PathLike, config: DedupConfig | None = None,
              exec_config: ExecConfig | None = None, verbose: bool = True, report: bool = True) -> dict[str, Any]:
    """Deduplicate JSONL/Parquet shards into out/data; write stats.json, config.json and the report; return the stats."""
    from falconlm.data.readers import expand_inputs

    config = config or DedupConfig()
    exec_config = exec_config or ExecConfig()
    files = expand_inputs(list(inputs))
    stages = dedup_stage_list(config, verbose)
    if not stages:
        raise FalconError("no dedup method selected: use --minhash, --exact-substring and/or --url")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"dedup": config.to_dict(), "inputs": [str(f) for f in files],
                                                 "executor": asdict(exec_config)}, indent=1, default=str), encoding="utf-8")
    if verbose:
        n, avg = count_documents(files, config.resources)
        print(format_estimate(estimate(config, n, avg or 3000.0, exec_config.workers)), flush=True)
    t0 = time.time()
    current = list(files)
    all_stats: list[dict] = []
    examples: dict[str, list] = {}
    with _ray_session(exec_config):
        for k, stage in enumerate(stages):
            ctx = DedupContext(out, exec_config, last=(k == len(stages) - 1))
            res: StageResult = stage.run(current, ctx)
            current = list(res.outputs)
            all_stats.extend(res.stats)
            examples.update(res.examples)
    stats = {"recipe": "dedup", "inputs": [str(f) for f in files], "input_bytes": sum(os.path.getsize(f) for f in files),
             "steps": all_stats, "examples": examples, "outputs": [str(p) for p in current]}
    tmp = out / f"stats.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(stats, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, out / "stats.json")
    if report:
        from falconlm.data.report import write_report

        write_report(out, stats)  # funnel.png + report.html (cluster sizes, examples)
    # Wall time is kept out of stats.json so that a resumed run writes the same file.
    return {**stats, "seconds": round(time.time() - t0, 3)}


def format_summary(stats: dict[str, Any]) -> str:
    """The closing summary: documents and characters removed by each stage."""
    lines = [f"{'stage':<16}{'docs in':>10}{'docs out':>10}{'removed':>9}{'chars removed':>15}"]
    for s in stats["steps"]:
        rem = s["docs_in"] - s["docs_out"]
        crem = s["chars_in"] - s["chars_out"]
        pct = 100.0 * crem / max(1, s["chars_in"])
        lines.append(f"{s['name']:<16}{s['docs_in']:>10,}{s['docs_out']:>10,}{rem:>9,}{crem:>11,} ({pct:4.1f}%)")
        if "cluster_size_histogram" in s:
            lines.append(f"  clusters: {s['clusters']:,}; sizes {s['cluster_size_histogram']}")
    lines.append(f"output: {len(stats['outputs'])} shard(s) in {Path(stats['outputs'][0]).parent if stats['outputs'] else '-'}; {stats['seconds']} s")
    return "\n".join(lines)
