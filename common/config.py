"""Configuration schema: YAML files parsed into typed, validated, frozen objects.

An unknown key, a wrong type or an out-of-range value is a ``ConfigError`` naming the file and
the key path (``training.learning_rate``), the bad value and what was expected. Privacy settings
live only here and in the files; nothing downstream hard-codes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.model import ModelConfig

SPECIES_NAMES = ("human", "mouse", "fruit_fly", "yeast", "e_coli")


class ConfigError(ValueError):
    """A configuration file that does not match its schema."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


TaskName = Literal["promoter", "splice", "coding", "enhancer"]
Species = Literal["human", "mouse", "fruit_fly", "yeast", "e_coli"]
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]


class TrainingConfig(StrictModel):
    """Local training at an institution (one federated round = ``local_epochs`` over each task)."""

    local_epochs: float = Field(1.0, gt=0.0, le=100.0)
    batch_size: int = Field(32, ge=1, le=65536)  # expected (Poisson) logical batch size
    max_physical_batch_size: int = Field(64, ge=1, le=65536)  # memory cap (BatchMemoryManager)
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    max_len: int = Field(512, ge=1)  # longest sequence accepted from data
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast applies on CUDA only
    seed: int = 0


class PrivacyConfig(StrictModel):
    """An institution's own DP budget and mechanism. The institution enforces it, not the server."""

    enabled: bool = True
    epsilon: float = Field(8.0, gt=0.0, le=100.0)  # total budget over every round ever trained
    delta: float = Field(1e-5, gt=0.0, lt=1.0)  # must be < 1/(records held), checked with the data
    max_grad_norm: float = Field(1.0, gt=0.0)
    accountant: Literal["rdp", "prv"] = "rdp"
    noise_multiplier: float | None = Field(None, ge=0.0)  # fixed sigma, or
    planned_rounds: int | None = Field(None, ge=1)  # choose sigma so this many rounds fit the budget

    @model_validator(mode="after")
    def _one_way_to_set_noise(self) -> PrivacyConfig:
        if self.enabled and (self.noise_multiplier is None) == (self.planned_rounds is None):
            raise ValueError("give exactly one of noise_multiplier or planned_rounds")
        return self


class InstitutionConfig(StrictModel):
    """One institution: who it is, what data it holds, where it keeps state, its budget."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    species: Species
    tasks: tuple[TaskName, ...] = Field(min_length=1)
    data_dir: Path | None = None  # <data_dir>/<task>/{train,val,test}.tsv
    state_dir: Path | None = None  # ledger and local state; survives restarts
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    size: float = Field(1.0, gt=0.0, le=100.0)  # generated-data size multiplier (simulation only)
    privacy: PrivacyConfig = PrivacyConfig(planned_rounds=10)
    training: TrainingConfig | None = None  # overrides the federation's training section

    @field_validator("tasks")
    @classmethod
    def _no_duplicate_tasks(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task in {list(tasks)}")
        return tasks


class SyntheticDataConfig(StrictModel):
    """Generated data for a simulated federation (``helixfed data synth``)."""

    seed: int = 0
    n_per_task: int = Field(600, ge=30)  # records per institution and task (train+val+test) at size 1
    central_n: int = Field(200, ge=10)  # central evaluation records per task and species
    difficulty: float = Field(0.5, ge=0.0, le=1.0)  # label noise, motif sharpness, decoys (see synthetic)
    lengths: dict[TaskName, Annotated[int, Field(ge=60, le=4096)]] = {}  # bases per window and task


T = TypeVar("T", bound=BaseModel)


def _key_path(location: tuple) -> str:
    return ".".join(str(part) for part in location) or "<top level>"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for problem in err.errors():
        where = _key_path(problem["loc"])
        got = problem.get("input")
        shown = "" if problem["type"] == "missing" else f" (got {got!r})"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            message = "unknown key"
        lines.append(f"{source}: {where}: {message}{shown}")
    return "\n".join(lines)


def parse_config(data: object, schema: type[T], *, source: str = "<config>") -> T:
    """Validate a parsed mapping against ``schema``.

    Raises:
        ConfigError: naming ``source`` and each offending key path.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level, "
                          f"got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from err


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; missing file, bad YAML and non-mapping documents are ConfigErrors."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror or err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML: {getattr(err, 'problem', err)}") from err
    if data is None:
        raise ConfigError(f"{path}: empty config file")
    return data


def load_config(path: str | Path, schema: type[T]) -> T:
    """Load and validate one YAML config file against ``schema``."""
    return parse_config(load_yaml(path), schema, source=str(path))


def model_config_from(values: dict, *, source: str = "<config>") -> ModelConfig:
    """A ``model:`` section as a validated ModelConfig (used by checkpoints and config files)."""
    return parse_config({"model": values}, _ModelOnly, source=source).model


class _ModelOnly(StrictModel):
    model: ModelConfig

