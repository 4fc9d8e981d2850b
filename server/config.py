"""The federation config: one YAML file describes a run (model, tasks, rounds, aggregation,
central evaluation, outputs) and, for a simulation, its institutions inline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from common.config import (
    InstitutionConfig,
    Species,
    StrictModel,
    SyntheticDataConfig,
    TaskName,
    TrainingConfig,
    load_config,
)
from common.model import ModelConfig
from common.tasks import TASK_NAMES


class FederationSection(StrictModel):
    rounds: int = Field(5, ge=1, le=10000)
    fraction_train: float = Field(1.0, gt=0.0, le=1.0)
    fraction_evaluate: float = Field(1.0, ge=0.0, le=1.0)
    min_train_institutions: int = Field(2, ge=1)  # fewer usable updates in a round is an error
    min_available_institutions: int = Field(2, ge=1)  # wait for this many before a round starts
    round_timeout_s: float = Field(3600.0, gt=0.0)


class AggregationSection(StrictModel):
    mode: Literal["species_balanced", "examples", "uniform"] = "species_balanced"
    species_weights: dict[Species, float] = {}  # lambda_s; species not listed weigh 1
    max_update_norm: float | None = Field(None, gt=0.0)  # reject updates moving further than this

    @model_validator(mode="after")
    def _positive_weights(self) -> AggregationSection:
        bad = {k: v for k, v in self.species_weights.items() if not v > 0}
        if bad:
            raise ValueError(f"species_weights must be > 0, got {bad}")
        return self


class CentralEvaluationSection(StrictModel):
    data_dir: Path | None = None  # <dir>/<task>/test.tsv; default: the generated central set
    batch_size: int = Field(128, ge=1)
    baselines: bool = True  # train the classic baselines once, for the report's reference column


class EnrolledInstitution(StrictModel):
    """An institution allowed to join a deployed federation: its SuperNode's public key."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    public_key: Path  # OpenSSH ECDSA public key (``helixfed certs`` writes <tls-dir>/institutions/<name>.pub)


class FederationConfig(StrictModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")] = "helixfed"
    seed: int = 0
    tasks: tuple[TaskName, ...] = TASK_NAMES  # type: ignore[assignment]
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    federation: FederationSection = FederationSection()
    aggregation: AggregationSection = AggregationSection()
    central_evaluation: CentralEvaluationSection = CentralEvaluationSection()
    data: SyntheticDataConfig | None = None  # simulation: generate the institutions' data
    data_dir: Path | None = None  # where institution data lives (default <output_dir>/data)
    output_dir: Path = Path("runs/helixfed")
    institutions: tuple[InstitutionConfig, ...] = ()  # inline institutions (simulation)
    enrolled: tuple[EnrolledInstitution, ...] = ()  # deployment: who may connect
    resume: bool = False

    @model_validator(mode="after")
    def _institutions_fit_the_federation(self) -> FederationConfig:
        names = [i.name for i in self.institutions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"institutions: duplicate names {duplicates}")
        for index, institution in enumerate(self.institutions):
            foreign = sorted(set(institution.tasks) - set(self.tasks))
            if foreign:
                raise ValueError(f"institutions.{index} ({institution.name}): tasks {foreign} are not "
                                 f"federation tasks {list(self.tasks)}")
        return self

    def resolved(self, base: Path) -> FederationConfig:
        """Relative paths made absolute against ``base`` (the config file's directory for paths in
        the file; the ServerApp runs in the SuperLink's working directory, not the user's)."""
        output_dir = (base / self.output_dir).resolve()
        data_dir = (base / self.data_dir).resolve() if self.data_dir else output_dir / "data"
        central = self.central_evaluation
        central_dir = (base / central.data_dir).resolve() if central.data_dir else data_dir / "central"
        enrolled = tuple(e.model_copy(update={"public_key": (base / e.public_key).resolve()}) for e in self.enrolled)
        return self.model_copy(update={
            "output_dir": output_dir, "data_dir": data_dir, "enrolled": enrolled,
            "central_evaluation": central.model_copy(update={"data_dir": central_dir})})


def load_federation(path: str | Path, *, base: Path | None = None,
                    output_dir: Path | None = None) -> FederationConfig:
    """Load a federation file with every path absolute. Relative paths are relative to ``base``
    (default: the cwd, the way a user typing ``helixfed simulate --config configs/demo.yaml``
    expects). ``output_dir`` replaces the file's (data and central set follow it unless the
    file places them elsewhere)."""
    config = load_config(path, FederationConfig)
    if output_dir is not None:
        config = config.model_copy(update={"output_dir": Path(output_dir)})
    return config.resolved(base or Path.cwd())
