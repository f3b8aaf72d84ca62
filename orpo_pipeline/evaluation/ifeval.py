"""IFEval (Zhou et al. 2023): does the answer follow verifiable instructions ("no commas",
"at least 300 words", "end with 'Is there anything else?'")?

The checking is lm-eval's own (`lm_eval.tasks.ifeval`), not a rewrite; this module picks the
prompts, feeds it responses and aggregates the four standard accuracies. Two checkers split
text with NLTK's Punkt English model (`punkt_tab`), which lm-eval downloads at import; it is
shipped in `resources/nltk_data/` so that nothing is downloaded.
"""

import json
from functools import cache
from importlib.resources import files
from pathlib import Path
from types import ModuleType
from typing import Any

from orpo_pipeline.errors import ConfigError

IFEVAL_DATA = Path(
    str(files("orpo_pipeline") / "resources" / "eval_sets" / "ifeval_input_data.jsonl")
)
NLTK_DATA = Path(str(files("orpo_pipeline") / "resources" / "nltk_data"))
METRICS = ("prompt_level_strict", "inst_level_strict", "prompt_level_loose", "inst_level_loose")
"""lm-eval's names, less the `_acc` suffix."""


def ifeval_records(count: int) -> list[dict[str, Any]]:
    """`count` IFEval records spread evenly over the 541 (key, prompt, instruction ids, kwargs)."""
    lines = IFEVAL_DATA.read_text(encoding="utf-8").splitlines()
    return [json.loads(lines[i]) for i in spread(len(lines), count)]


def spread(total: int, count: int) -> list[int]:
    """`count` distinct indices evenly spaced over `range(total)`, first one included.

    >>> spread(10, 3)
    [0, 3, 6]
    """
    count = min(count, total)
    return [i * total // count for i in range(count)]


@cache
def _checkers() -> ModuleType:
    """lm-eval's IFEval utilities, loaded offline with the shipped Punkt model."""
    try:
        import langdetect
        import nltk
    except ImportError as error:
        msg = "IFEval needs lm-eval's checkers: pip install 'orpo-pipeline[eval]'"
        raise ConfigError(msg) from error
    if str(NLTK_DATA) not in nltk.data.path:
        nltk.data.path.insert(0, str(NLTK_DATA))  # found here, lm-eval downloads nothing
    langdetect.DetectorFactory.seed = 0  # langdetect samples; seeded, a verdict is repeatable
    try:
        from lm_eval.tasks.ifeval import utils
    except ImportError as error:
        msg = "IFEval needs lm-eval's checkers: pip install 'orpo-pipeline[eval]'"
        raise ConfigError(msg) from error
    return utils


def check_response(record: dict[str, Any], response: str) -> dict[str, Any]:
    """lm-eval's strict and loose verdicts on one response: per instruction and for the prompt.

    Loose accepts the response with its first and/or last line removed or without '*'.
    """
    utils = _checkers()
    results = utils.process_results(record, [response])
    return {
        "key": record["key"],
        "instruction_id_list": record["instruction_id_list"],
        **{name: results[f"{name}_acc"] for name in METRICS},
    }


def ifeval_scores(checked: list[dict[str, Any]]) -> dict[str, float | int]:
    """The four accuracies over checked responses: prompt level (every instruction of the
    prompt followed) and instruction level (share of all instructions followed)."""
    scores: dict[str, float | int] = {"num_prompts": len(checked)}
    scores["num_instructions"] = sum(len(c["instruction_id_list"]) for c in checked)
    for name in METRICS:
        if name.startswith("prompt"):
            hits = [bool(c[name]) for c in checked]
        else:
            hits = [bool(v) for c in checked for v in c[name]]
        scores[name] = sum(hits) / len(hits) if hits else float("nan")
    return scores
