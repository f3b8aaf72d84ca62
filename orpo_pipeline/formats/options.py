"""Conversion settings: the format, an optional field mapping and the pairing knobs."""

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orpo_pipeline.formats.mapping import FieldMapping


class ConvertOptions(BaseModel):
    """How `convert_files` reads the input and turns it into preference pairs."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    format: str | None = None
    """Input format name (a key of `FORMATS`); None detects it from the first rows."""
    mapping: FieldMapping | None = None
    """Field mapping for a layout no built-in format knows; implies format 'mapping'."""
    source: str | None = None
    """Value of the `source` column; None uses each input file's name."""

    score_source: Literal["overall", "mean_aspects", "aspect", "rank"] | None = None
    """Ranked data: what a completion is scored by; None takes the source's own (rank for Nectar
    and OpenAssistant, the overall score otherwise). A rank r is scored as -r."""
    aspect: str | None = None
    """Ranked data: the aspect rating used when `score_source` is 'aspect' (e.g. 'helpfulness')."""
    rejected: Literal["random_lower", "worst", "all_lower", "all_pairs"] = "random_lower"
    """Ranked data: which completions become rejected answers next to the best one."""
    ties: Literal["drop", "keep"] = "drop"
    """Ranked data: whether two completions with equal scores may form a pair."""
    min_margin: float = Field(default=0.0, ge=0.0)
    """Ranked data: smallest score(chosen) - score(rejected) kept; 0 keeps every strict gap."""
    seed: int = 0
    """Seed for every random choice; each prompt draws from hash(seed, prompt)."""

    disagreement: Literal["drop", "majority"] = "drop"
    """Pairwise judgments: when judges of the same two answers disagree, drop them all or follow
    the majority (an even split is dropped)."""

    role_markers: Literal["split", "keep"] = "split"
    """Text starting with HH role labels ('Human:', 'Assistant:'): split a prompt transcript into
    its turns and strip a leading label from answers ('split'), or keep the text as it is."""
    salvage: bool = False
    """A JSONL(.gz) file cut short: convert every complete line before the break and reject the
    rest as one `truncated_file` row, instead of refusing the file."""

    negatives: Literal["other_prompt", "truncated", "model"] = "other_prompt"
    """SFT data: where rejected answers come from: the answer of another prompt (instant), the
    reference answer cut short (instant), or a model's generation (slow on CPU: it says what it
    will run and how long before it starts)."""
    truncate_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)
    """SFT data with `negatives='truncated'`: fraction of the answer's words kept."""
    model: str = "default"
    """SFT data with `negatives='model'`: model name or path; 'default' is the embedded model."""
    max_new_tokens: int = Field(default=256, gt=0)
    """SFT data with `negatives='model'`: generation length limit."""
    temperature: float = Field(default=0.0, ge=0.0)
    """SFT data with `negatives='model'`: sampling temperature; 0 decodes greedily."""
    generation_batch_size: int = Field(default=8, gt=0)
    """SFT data with `negatives='model'`: prompts generated per batch."""
    cache_dir: Path | None = None
    """SFT data with `negatives='model'`: generation cache folder; None uses
    `$ORPO_PIPELINE_CACHE` or `~/.cache/orpo-pipeline`."""
    yes: bool = False
    """SFT data with `negatives='model'`: start generating without asking, even when the
    estimate is long (the question is only asked on a terminal)."""

    @model_validator(mode="after")
    def _check_knobs(self) -> Self:
        if self.score_source == "aspect" and self.aspect is None:
            msg = "score_source 'aspect' needs `aspect` (e.g. aspect='helpfulness')"
            raise ValueError(msg)
        if self.aspect is not None and self.score_source != "aspect":
            msg = "`aspect` is only used with score_source 'aspect'"
            raise ValueError(msg)
        if self.ties == "keep" and self.min_margin > 0:
            msg = "ties='keep' contradicts min_margin > 0; choose one"
            raise ValueError(msg)
        if self.mapping is not None and self.format not in (None, "mapping"):
            msg = f"a field mapping implies format 'mapping', got format {self.format!r}"
            raise ValueError(msg)
        return self
