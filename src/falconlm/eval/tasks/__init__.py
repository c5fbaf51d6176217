"""Small offline lm-eval tasks written by the falconlm team, usable with `falconlm evaluate --tasks`.

The YAML files are materialised at run time with absolute paths to the JSONL data shipped in the
package (lm-eval's local-dataset loader needs absolute paths).
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

TASKS = {
    # Multiple-choice sentence completion: which ending does the model find most likely?
    "falconlm_mc": """task: falconlm_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
    # Cloze (LAMBADA-style): is the last word the model's greedy continuation, and how likely is it?
    "falconlm_cloze": """task: falconlm_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/cloze.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
}


def data_dir() -> Path:
    """Where the tasks' JSONL files are installed."""
    return Path(str(resources.files("falconlm") / "assets" / "eval"))


def task_dir(target: str | Path | None = None) -> Path:
    """A directory of lm-eval YAML files for the bundled tasks, ready for TaskManager(include_path=...)."""
    out = Path(target) if target else Path(tempfile.mkdtemp(prefix="falconlm-tasks-"))
    out.mkdir(parents=True, exist_ok=True)
    for name, template in TASKS.items():
        (out / f"{name}.yaml").write_text(template.format(data=data_dir()))
    return out
