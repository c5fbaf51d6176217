"""Bad input and misuse, as a new user meets them (issue #18): every `falconlm` command run as a subprocess.

Each case asserts what a user sees: a non-zero exit where the run cannot succeed, stderr of one or two
lines without a traceback, nothing half-written left in --out, and skipped input counted in the
summary. The commands of the module run concurrently once (a python start plus torch import is ~2 s
each), and each test checks one result. Fixtures: scripts/make_bad_inputs.py and a tiny checkpoint.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_helpers import ENV, ROOT, Run, falconlm, no_temps

pytestmark = pytest.mark.slow
TINY = ["--model", "tiny-7b", "--data", "tokd", "--seq-len", "32", "--global-batch-size", "2", "--no-progress", "--no-tensorboard"]
CASES: dict[str, list[str]] = {
    "pretrain_default_model": ["pretrain", "--data", "tokd", "--out", "o-7b", "--max-steps", "2"],
    "out_file_refine": ["refine", "good.jsonl", "--out", "afile", "--no-progress"],
    "out_file_tokenize": ["tokenize", "good.jsonl", "--tokenizer", "tok", "--out", "afile", "--workers", "1"],
    "out_file_pretrain": ["pretrain", *TINY, "--out", "afile", "--max-steps", "1"],
    "out_file_init_model": ["init-model", "tiny-7b", "--out", "afile"],
    "out_file_train_tokenizer": ["train-tokenizer", "good.jsonl", "--out", "afile", "--vocab-size", "300"],
    "corrupt_zst_train_tokenizer": ["train-tokenizer", "corrupt.jsonl.zst", "--out", "o-tt", "--vocab-size", "300"],
    "corrupt_gz_tokenize": ["tokenize", "corrupt.jsonl.gz", "--tokenizer", "tok", "--out", "o-tz", "--workers", "1"],
    "truncated_zst_evaluate": ["evaluate", "ckpt", "--data", "truncated.jsonl.zst", "--out", "ev.json"],
    "corrupt_zst_finetune": ["finetune", "ckpt", "--data", "corrupt.jsonl.zst", "--out", "o-ft", "--max-steps", "1"],
    "corrupt_zst_dedup": ["dedup", "corrupt.jsonl.zst", "good.jsonl", "--out", "o-dd", "--no-progress"],
    "corrupt_zst_refine": ["refine", "corrupt.jsonl.zst", "good.jsonl", "--out", "o-rc", "--no-progress", "--no-dedup"],
    "set_bad_value": ["refine", "good.jsonl", "--out", "o-set", "--set", "quality.min_doc_words=abc"],
    "bad_yaml": ["refine", "good.jsonl", "--out", "o-yaml", "--config", "bad.yaml"],
    "wrong_type_yaml": ["refine", "good.jsonl", "--out", "o-wt", "--config", "wrong_type.yaml"],
    "fsdp_without_torchrun": ["pretrain", *TINY, "--out", "o-fsdp", "--max-steps", "1", "--strategy", "fsdp"],
    "hub_task_offline": ["evaluate", "ckpt", "--tasks", "hellaswag", "--limit", "2", "--out", "ev2.json"],
    "evaluate_empty": ["evaluate", "ckpt", "--data", "empty.jsonl", "--out", "ev3.json"],
    "evaluate_wrong_text_key": ["evaluate", "ckpt", "--data", "good.jsonl", "--text-key", "body", "--out", "ev4.json"],
    "train_tokenizer_empty": ["train-tokenizer", "empty.jsonl", "--out", "o-te", "--vocab-size", "300"],
    "refine_empty_warc": ["refine", "empty.warc.gz", "--out", "o-ew", "--no-progress"],
    "random_gz_tokenize": ["tokenize", "random.jsonl.gz", "--tokenizer", "tok", "--out", "o-rg", "--workers", "1"],
    "tokenize_broken_lines": ["tokenize", "broken_lines.jsonl", "--tokenizer", "tok", "--out", "o-bl", "--workers", "1", "--val-fraction", "0"],
    "max_steps_zero": ["pretrain", *TINY, "--out", "o-m0", "--max-steps", "0"],
    "max_steps_negative": ["pretrain", *TINY, "--out", "o-m3", "--max-steps", "-3"],
    "max_tokens_negative": ["pretrain", *TINY, "--out", "o-mt", "--max-tokens", "-5"],
    "seq_len_past_context": ["pretrain", "--model", "tiny-7b", "--data", "tokd", "--seq-len", "1024", "--global-batch-size", "1", "--out", "o-sl", "--max-steps", "1"],
    "evaluate_max_length": ["evaluate", "ckpt", "--data", "good.jsonl", "--max-length", "100000", "--out", "ev5.json"],
    "generate_negative_temperature": ["generate", "ckpt", "--prompt", "hi", "--temperature", "-1"],
    "chat_negative_temperature": ["chat", "ckpt", "--temperature", "-1"],
    "generate_empty_stop": ["generate", "ckpt", "--prompt", "hi", "--stop", ""],
    "init_model_small_vocab": ["init-model", "tiny-7b", "--out", "o-iv", "--vocab-size", "200", "--tokenizer", "tok"],
    "short_run_warnings": ["pretrain", *TINY, "--out", "o-short", "--max-steps", "2", "--log-interval", "1"],
    "french": ["refine", "french.jsonl", "--out", "o-fr", "--no-progress", "--no-dedup", "--languages", "fr"],
    "recipe_unknown": ["refine", "good.jsonl", "--out", "o-nr", "--recipe", "nosuch"],
    "vocab_too_small": ["pretrain", *TINY, "--out", "o-vs", "--max-steps", "1", "--model-overrides", "vocab_size=100"],
    "generate_on_a_file": ["generate", "good.jsonl", "--prompt", "hi"],
    "parquet_names": ["refine", "good.jsonl", "--out", "o-pq", "--no-progress", "--no-dedup", "--format", "parquet"],
    "workers_one_file": ["refine", "good.jsonl", "--out", "o-w2", "--no-progress", "--no-dedup", "--workers", "2"],
}


@pytest.fixture(scope="module")
def runs(work) -> dict[str, Run]:
    """Every case, run once, two at a time."""
    with ThreadPoolExecutor(2) as pool:  # two cores
        futures = {name: pool.submit(falconlm, *args, cwd=work) for name, args in CASES.items()}
        return {name: f.result() for name, f in futures.items()}


# ------------------------------------------------------------------ 1. memory before allocation

def test_pretrain_without_model_refuses_fast_with_the_estimate(runs, work):
    r = runs["pretrain_default_model"]
    r.refused("falcon-7b needs about", "GB", "--force")
    assert r.seconds < 5 * 3  # three runs share two cores here; alone it is under 2 s
    assert not (work / "o-7b").exists()


# ------------------------------------------------------------------ 2. tracebacks that must be a sentence

@pytest.mark.parametrize("case", ["out_file_refine", "out_file_tokenize", "out_file_pretrain", "out_file_init_model", "out_file_train_tokenizer"])
def test_out_pointing_at_a_file(runs, case):
    runs[case].refused("afile is a file, not a directory")


@pytest.mark.parametrize("case, name", [("corrupt_zst_train_tokenizer", "corrupt.jsonl.zst"), ("corrupt_gz_tokenize", "corrupt.jsonl.gz"),
                                        ("truncated_zst_evaluate", "truncated.jsonl.zst"), ("corrupt_zst_finetune", "corrupt.jsonl.zst")])
def test_corrupt_compressed_input_is_named(runs, work, case, name):
    runs[case].refused(f"{name} is corrupt")
    assert not (work / runs[case].args[runs[case].args.index("--out") + 1]).exists()


@pytest.mark.parametrize("case", ["corrupt_zst_dedup", "corrupt_zst_refine"])
def test_refine_and_dedup_keep_going_past_a_corrupt_file_and_say_so(runs, case):
    r = runs[case]
    assert r.rc == 0 and "Traceback" not in r.err and "rerun" not in r.err
    assert "corrupt.jsonl.zst is corrupt" in r.err


def test_refine_summary_names_the_corrupt_file(runs):
    assert "skipped input: corrupt.jsonl.zst: 1 corrupt_file" in runs["corrupt_zst_refine"].out


@pytest.mark.parametrize("case, words", [("set_bad_value", ["quality.min_doc_words", "expected an integer"]), ("bad_yaml", ["bad.yaml line", "not valid YAML"]),
                                         ("wrong_type_yaml", ["quality.min_doc_words: expected an integer, got 'many'"]),
                                         ("fsdp_without_torchrun", ["torchrun"])])
def test_bad_settings_are_one_sentence(runs, case, words):
    runs[case].refused(*words)


def test_hub_task_offline_says_how_to_provide_it(runs):
    r = runs["hub_task_offline"]
    assert r.rc == 1 and "Traceback" not in r.err
    assert "Rowan/hellaswag" in r.err and "not in the local Hugging Face cache" in r.err and "HF_HOME" in r.err


@pytest.mark.parametrize("args", [["inspect", "tiny-7b"], ["dedup", "good.jsonl", "--out", "o-est", "--estimate", "1000"]])
def test_output_piped_to_a_closed_reader(work, args):
    p = subprocess.Popen([sys.executable, "-m", "falconlm.cli", *args], cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = p.stderr.read().decode()
    assert p.wait(60) in (0, 141) and "Traceback" not in err and "BrokenPipe" not in err, err


def test_killed_refine_takes_its_workers_along_quietly(work):
    log = open(work / "killed.err", "w+")
    p = subprocess.Popen([sys.executable, "-m", "falconlm.cli", "refine", "--sample", "--out", "o-kill", "--workers", "2", "--slices-per-file", "2",
                          "--no-progress"], cwd=work, env=ENV, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while time.time() < deadline and not list((work / "o-kill").glob("work/filter/.*")) and not _children(p.pid):
        time.sleep(0.2)
    time.sleep(1.5)  # the workers are busy filtering
    workers = _children(p.pid)
    assert workers, "refine started no worker processes"
    p.send_signal(signal.SIGKILL)
    p.wait()
    time.sleep(2.0)
    alive = [w for w in workers if Path(f"/proc/{w}").exists() and "zombie" not in Path(f"/proc/{w}/status").read_text().lower()]
    log.seek(0)
    err = log.read()
    assert not alive, f"workers {alive} outlived their parent"
    assert "Traceback" not in err and "leaked semaphore" not in err, err


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []


# ------------------------------------------------------------------ 3. stale output and resume

def test_resume_with_other_settings_is_refused_with_the_differences(work):
    first = falconlm("pretrain", *TINY, "--out", "o-res", "--max-steps", "2", "--warmup-tokens", "0", "--batch-rampup-tokens", "0", cwd=work)
    assert first.rc == 0, first.err
    before = (work / "o-res" / "run_config.yaml").read_text()
    r = falconlm("pretrain", *TINY, "--out", "o-res", "--max-steps", "4", "--warmup-tokens", "0", "--batch-rampup-tokens", "0", "--resume",
                 "--lr", "1e-3", cwd=work)
    r.refused("lr 0.0006 -> 0.001")
    assert (work / "o-res" / "run_config.yaml").read_text() == before  # the run's record still matches its checkpoint
    done = falconlm("pretrain", *TINY, "--out", "o-res", "--max-steps", "2", "--warmup-tokens", "0", "--batch-rampup-tokens", "0", "--resume", cwd=work)
    assert done.rc == 0 and "nothing to do" in done.out and "nan" not in done.out


# ------------------------------------------------------------------ 4. empty or unreadable input

@pytest.mark.parametrize("case, out", [("evaluate_empty", None), ("evaluate_wrong_text_key", None), ("train_tokenizer_empty", "o-te"),
                                       ("refine_empty_warc", "o-ew"), ("random_gz_tokenize", "o-rg")])
def test_zero_usable_documents_is_an_error(runs, work, case, out):
    r = runs[case]
    r.refused()
    assert "no usable documents" in r.err or "no documents could be read" in r.err or "is corrupt" in r.err
    if out:
        assert not (work / out).exists()


def test_wrong_text_key_names_the_key(runs):
    assert "'body'" in runs["evaluate_wrong_text_key"].err and "40 missing_text" in runs["evaluate_wrong_text_key"].err


def test_malformed_lines_are_counted_with_line_numbers(runs, work):
    r = runs["tokenize_broken_lines"]
    assert r.rc == 0, r.err
    assert "broken_lines.jsonl: 3 malformed_json (lines 3, 6, 14), 2 missing_text (lines 8, 15)" in r.out
    index = json.loads((work / "o-bl" / "index.json").read_text())
    assert index["skipped_docs"] == 5 and index["docs"] == 10


# ------------------------------------------------------------------ 5. impossible settings

@pytest.mark.parametrize("case, words", [
    ("max_steps_zero", ["--max-steps must be at least 1"]), ("max_steps_negative", ["--max-steps must be at least 1, got -3"]),
    ("max_tokens_negative", ["--max-tokens must be positive"]), ("seq_len_past_context", ["--seq-len 1,024 exceeds", "max_position_embeddings"]),
    ("evaluate_max_length", ["--max-length 100,000 exceeds the model's context"]), ("generate_negative_temperature", ["temperature must be >= 0"]),
    ("chat_negative_temperature", ["temperature must be >= 0"]), ("generate_empty_stop", ["stop strings must be non-empty"]),
    ("init_model_small_vocab", ["has 300 ids", "--vocab-size 300"]),
])
def test_impossible_settings_are_refused_up_front(runs, work, case, words):
    runs[case].refused(*words)
    assert not any((work / n).exists() for n in ("o-m0", "o-m3", "o-mt", "o-sl", "o-iv"))


# ------------------------------------------------------------------ 6. defaults that do nothing on small runs

def test_short_runs_warn_about_warm_up_and_ramp_up(runs):
    r = runs["short_run_warnings"]
    assert r.rc == 0, r.err
    assert "warning: the warm-up" in r.err and "warning: the batch ramp-up" in r.err
    assert "MFU" in r.out and not any(float(x.split("%")[0]) > 100 for x in r.out.split("MFU ")[1:] if x[:1].isdigit())


# ------------------------------------------------------------------ 7. non-English refining

def test_french_documents_are_not_dropped_by_the_english_stop_word_rule(runs, work):
    r = runs["french"]
    assert r.rc == 0, r.err
    assert "stop-word rule" in r.out and "skipped for documents in fr" in r.out
    steps = {s["name"]: s for s in json.loads((work / "o-fr" / "stats.json").read_text())["steps"]}
    assert steps["language"]["docs_out"] == 40 and steps["quality"]["docs_out"] == 40


# ------------------------------------------------------------------ 8. interruption

def test_ctrl_c_in_pretrain_saves_a_checkpoint(work):
    p = subprocess.Popen([sys.executable, "-m", "falconlm.cli", "pretrain", *TINY, "--out", "o-int", "--max-steps", "100000", "--log-interval", "1",
                          "--save-interval", "100000", "--eval-interval", "0", "--warmup-tokens", "0"],
                         cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("step"):
            break
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    ckpts = list((work / "o-int" / "checkpoints").glob("step-*"))
    assert ckpts and "interrupted: saved" in out + err
    assert not no_temps(work / "o-int")


# ------------------------------------------------------------------ 10. smaller ones

def test_unknown_recipe_and_vocab_error_leave_no_directory(runs, work):
    runs["recipe_unknown"].refused("unknown recipe 'nosuch'")
    assert not (work / "o-nr").exists()
    runs["vocab_too_small"].refused("vocab_size is 100")
    assert not (work / "o-vs").exists()


def test_generate_on_a_file_says_so(runs):
    runs["generate_on_a_file"].refused("is a file, not a checkpoint directory")


def test_parquet_shards_are_named_parquet(runs, work):
    assert runs["parquet_names"].rc == 0
    names = [p.name for p in (work / "o-pq" / "data").iterdir()]
    assert names == ["00000-good.parquet"]  # the input's own suffix is not kept in front of the format's


def test_more_workers_than_tasks_hints_at_slices(runs):
    assert "--slices-per-file 2" in runs["workers_one_file"].err


def test_lm_eval_tasks_outside_a_git_checkout_print_no_git_noise(work):
    r = falconlm("evaluate", "ckpt", "--tasks", "falconlm_mc", "--limit", "2", "--out", "ev6.json", cwd=work)
    assert r.rc == 0, r.err
    assert "fatal" not in r.err


# ------------------------------------------------------------------ 9. README statements

def test_readme_train_pipeline_runs(work):
    """README "Train": train-tokenizer --vocab-size 65024 -> tokenize -> pretrain --config configs/tiny.yaml (shortened to 2 steps)."""
    corpus = str(ROOT / "tests" / "train" / "fixtures" / "sample_corpus.jsonl")
    steps = [["train-tokenizer", corpus, "--vocab-size", "65024", "--out", "rd-tok"],
             ["tokenize", corpus, "--tokenizer", "rd-tok", "--out", "rd-shards", "--workers", "1", "--val-fraction", "0.005"],
             ["pretrain", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data", "rd-shards", "--out", "rd-run", "--max-steps", "2", "--no-progress",
              "--no-tensorboard"]]
    for args in steps:
        r = falconlm(*args, cwd=work)
        assert r.rc == 0, (args, r.err[-2000:])
    assert "vocab_size 1,024 ->" in r.out and (work / "rd-run" / "checkpoints" / "step-00000002").is_dir()
