"""Every configuration file's schema, and the one place that loads and resolves them (the strict YAML
reading itself is common/yaml_files.py).

Two kinds of YAML file: a federation file (model, tasks, rounds, aggregation, central evaluation,
outputs, and for a simulation its institutions inline) and an institution file (who it is, its
data, its state directory, its privacy budget). Both sides import this module, so a file is
validated once, the same way, wherever it is read. An unknown key, a wrong type or an
out-of-range value is a ``ConfigError`` naming the file and the key path
(``training.learning_rate``), the bad value and what was expected. Privacy settings live only
here and in the files; nothing downstream hard-codes them.

Paths: one rule for every file — a relative path resolves against the directory of the file it is
written in (federation and institution files alike), never against the working directory, so a
config means the same wherever a command, a SuperLink or a Ray worker reads it. Paths given on a
command line (``--out``) resolve against the working directory, as any command-line path does; a
Flower run config's ``config-file`` and ``out-dir`` against its ``base-dir`` (default: the app). An
inline institution without data/state directories keeps its data under the federation's
``data_dir`` and its ledger under ``<output_dir>/state`` (:meth:`FederationConfig.institution`), the
same for server and clients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.data.importing import SplitConfig
from common.data.sources import TaskSource
from common.model import PER_TASK_OPTIONS, ModelConfig
from common.protocol import RunConfigKey
from common.tasks import TASK_NAME_PATTERN, TASK_NAMES, TASKS, class_weights_after_clipping, declare_tasks
from common.yaml_files import ConfigError, load_yaml


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# A preset (promoter, splice, coding, enhancer) or a task the federation declares (``tasks:`` as a
# mapping, see TaskDeclaration); species are free names (the generator's presets have genome models).
TaskName = Annotated[str, Field(pattern=TASK_NAME_PATTERN)]
Species = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class TaskDeclaration(StrictModel):
    """A federation's own task: ``tf_binding: {kind: sequence, classes: [unbound, bound], metric: mcc}``."""

    kind: Literal["sequence", "position"]
    classes: tuple[str, ...] = Field(min_length=2)
    metric: str | None = None  # the headline metric (default: mcc, or pr_auc_mean for position tasks)
    description: str = ""
    class_weights: tuple[float, ...] | None = None


def _task_declarations(data):
    """``tasks:`` written as a mapping -> the task names plus ``task_declarations`` (a preset may
    appear with no body: ``tasks: {promoter: null, tf_binding: {...}}``)."""
    if isinstance(data, dict) and isinstance(data.get("tasks"), dict):
        declared = {name: body for name, body in data["tasks"].items() if body is not None}
        data = {**data, "tasks": list(data["tasks"]), "task_declarations": declared}
    return data


def _declare(declarations: Mapping[str, TaskDeclaration], tasks: tuple[str, ...], *, where: str) -> None:
    """Register the declared tasks, then check every named task is known (a preset or declared)."""
    declare_tasks({name: d.model_dump() for name, d in declarations.items()})
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"{where}tasks {unknown} are neither built-in ({', '.join(TASK_NAMES)}) nor declared; "
                         f"declare them as tasks: {{{unknown[0]}: {{kind: sequence, classes: [no, yes]}}}}")
# An institution's name: a SuperNode's node config, a directory name and a certificate's subject.
INSTITUTION_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
InstitutionName = Annotated[str, Field(pattern=INSTITUTION_NAME_PATTERN)]


class TrainingConfig(StrictModel):
    """Local training at an institution (one federated round = ``local_epochs`` over each task).

    The learning rate follows ``lr_schedule`` across the whole federation (its rounds) or the whole
    ``helixfed train`` run (its epochs): a linear warm-up over ``warmup_fraction`` of it, then
    constant, linear decay or cosine decay to ``learning_rate * final_lr_fraction``. Under DP the
    step does not shrink as the loss falls (every clipped gradient has length C), so a decaying
    rate is what lets the last noisy steps settle (dp-training.md).
    """

    local_epochs: float = Field(1.0, gt=0.0, le=100.0)
    batch_size: int = Field(32, ge=1, le=65536)  # expected (Poisson) logical batch size
    max_physical_batch_size: int = Field(64, ge=1, le=65536)  # memory cap (BatchMemoryManager)
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    final_lr_fraction: float = Field(0.0, ge=0.0, le=1.0)
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    # Per-sample clipping: "flat" scales a gradient longer than C down to C (Abadi et al.);
    # "automatic" scales every gradient to C / (norm + 0.01) (Bu et al. 2023). Both bound a record's
    # contribution by C, so the accounting is the same.
    clipping: Literal["flat", "automatic"] = "flat"
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)  # > 0: send the moving average of the local steps' weights
    # Training targets 1 - s + s/K and s/K instead of 1 and 0 (Szegedy et al. 2016). Under flat clipping
    # every misfit record pushes at full length C until it is fit almost exactly, so the model grows
    # overconfident (test loss far above a logistic regression's); with smoothed targets a record
    # fit past its target pushes back. Fixed in advance: no privacy cost. The rounds' training losses are
    # the smoothed ones (they cannot reach 0); test metrics and losses use the true labels.
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # Per-class weights in (0, 1] on a sequence task's *clipped* per-record gradients ({task: [w per class]}).
    # A loss weight is clipped away, so under DP the bias settles where pushes balance by count and a
    # minority class is under-called. A weighted record still contributes <= C: noise and accounting are
    # unchanged. Fixed in the config, never computed from class counts (that would make one record's
    # contribution depend on the others). Without DP nothing is clipped and they do nothing.
    weights_after_clipping: dict[TaskName, tuple[float, ...]] = Field(default_factory=dict)
    # A multiple of learning_rate for a task's k-mer path ({task: scale}); the rest of the model keeps
    # learning_rate. Under DP-Adam every coordinate moves about lr per step whatever its signal, so a path
    # whose weights must grow large (splice's per-base window: log-odds of a few units per base) needs
    # more steps than the network at one rate. It changes what the optimizer does with the noised
    # gradient, not the gradient: clipping, noise and accounting are unchanged.
    kmer_path_lr_scale: dict[TaskName, Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)]] = Field(
        default_factory=dict)
    max_len: int = Field(512, ge=1)  # longest sequence accepted from data
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast applies on CUDA only
    seed: int = 0
    # What trains (common/finetuning.py): every parameter, the heads only, or LoRA adapters +
    # LayerNorms + heads. A property of the federation's model: institutions cannot override it.
    trainable: Literal["all", "heads", "lora"] = "all"

    @field_validator("weights_after_clipping")
    @classmethod
    def _weights_in_range(cls, value: dict[str, tuple[float, ...]]) -> dict[str, tuple[float, ...]]:
        for task, weights in value.items():
            if len(weights) < 2 or not all(0.0 < w <= 1.0 for w in weights):
                raise ValueError(f"{task}: {list(weights)}; expected one weight per class, each in (0, 1] "
                                 f"(above 1 a record could contribute more than the clipping norm)")
        return value

    def learning_rate_at(self, progress: float) -> float:
        """The learning rate ``progress`` (0 = start, 1 = end) through the whole training."""
        progress = min(max(progress, 0.0), 1.0)
        if self.warmup_fraction and progress < self.warmup_fraction:
            return self.learning_rate * progress / self.warmup_fraction
        after = (progress - self.warmup_fraction) / (1.0 - self.warmup_fraction)  # 0..1 after warm-up
        if self.lr_schedule == "linear":
            decay = 1.0 - after
        elif self.lr_schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * after))
        else:
            return self.learning_rate
        return self.learning_rate * (self.final_lr_fraction + (1.0 - self.final_lr_fraction) * decay)


class PrivacyConfig(StrictModel):
    """An institution's own DP budget and mechanism. The institution enforces it, not the server."""

    enabled: bool = True
    epsilon: float = Field(8.0, gt=0.0, le=100.0)  # total budget over every round ever trained
    delta: float = Field(1e-5, gt=0.0, lt=1.0)  # must be < 1/(records held), checked with the data
    max_grad_norm: float = Field(1.0, gt=0.0)
    accountant: Literal["rdp", "prv"] = "rdp"
    # Federated evaluation sends metrics computed on the institution's raw test split: not DP and not
    # in the ledger. Off unless the institution opts in (the server asks only if fraction_evaluate > 0).
    share_evaluation: bool = False
    # The secret sealing the ledger (HMAC); default privacy_ledger.key in the state directory. Kept
    # elsewhere (e.g. beside the SuperNode key), editing the state directory cannot forge a ledger.
    ledger_key: Path | None = None
    # Train only in secure rounds (aggregation.secure): a plain round's request is refused, so this
    # institution's update never leaves unmasked whatever the server is configured to do.
    require_secure: bool = False
    noise_multiplier: float | None = Field(None, ge=0.0)  # fixed sigma, or
    planned_rounds: int | None = Field(None, ge=1)  # choose sigma so this many rounds fit the budget

    @model_validator(mode="after")
    def _one_way_to_set_noise(self) -> PrivacyConfig:
        if self.enabled and (self.noise_multiplier is None) == (self.planned_rounds is None):
            raise ValueError("give exactly one of noise_multiplier or planned_rounds")
        return self


class InstitutionConfig(StrictModel):
    """One institution: who it is, what data it holds, where it keeps state, its budget."""

    name: InstitutionName
    species: Species
    tasks: tuple[TaskName, ...] = Field(min_length=1)
    task_declarations: dict[TaskName, TaskDeclaration] = {}  # from `tasks:` written as a mapping
    data_dir: Path | None = None  # <data_dir>/<task>/{train,val,test}.tsv
    # Or the institution's own files, per task (common.data.sources), split by `split`.
    data: dict[TaskName, TaskSource] | None = None
    split: SplitConfig = SplitConfig()
    state_dir: Path | None = None  # ledger and local state; survives restarts
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    size: float = Field(1.0, gt=0.0, le=100.0)  # generated-data size multiplier (simulation only)
    privacy: PrivacyConfig = PrivacyConfig(planned_rounds=10)
    training: TrainingConfig | None = None  # overrides the federation's training section
    # The largest model this agent builds from a config a server sends (parameters, estimated first).
    max_model_parameters: int = Field(50_000_000, ge=1_000, le=2_000_000_000)

    @field_validator("tasks")
    @classmethod
    def _no_duplicate_tasks(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task in {list(tasks)}")
        return tasks

    @model_validator(mode="before")
    @classmethod
    def _tasks_mapping(cls, data):
        return _task_declarations(data)

    @model_validator(mode="after")
    def _one_source_per_task(self) -> InstitutionConfig:
        # Declared tasks are registered here; whether every task is known is checked where the
        # file is complete (load_institution, or the federation that lists this institution inline).
        declare_tasks({name: d.model_dump() for name, d in self.task_declarations.items()})
        if self.data is None:
            return self
        if self.data_dir is not None:
            raise ValueError("give data (the files per task) or data_dir (the TSV layout), not both")
        if set(self.data) != set(self.tasks):
            raise ValueError(f"data names tasks {sorted(self.data)} but tasks are {sorted(self.tasks)}; "
                             f"every task needs exactly one source")
        return self


class SyntheticDataConfig(StrictModel):
    """Generated data for a simulated federation (``helixfed data synth``)."""

    seed: int = 0
    n_per_task: int = Field(600, ge=30)  # records per institution and task (train+val+test) at size 1
    central_n: int = Field(200, ge=10)  # central evaluation records per task and species
    difficulty: float = Field(0.5, ge=0.0, le=1.0)  # label noise, motif sharpness, decoys (see synthetic)
    lengths: dict[TaskName, Annotated[int, Field(ge=60, le=4096)]] = {}  # bases per window and task
    public_bases: int = Field(200_000, ge=0)  # unlabelled public sequence per species (public/<species>.fa)


class FederationSection(StrictModel):
    rounds: int = Field(5, ge=1, le=10000)
    fraction_train: float = Field(1.0, gt=0.0, le=1.0)
    fraction_evaluate: float = Field(0.0, ge=0.0, le=1.0)  # > 0: ask for federated evaluation (opt-in per site)
    min_train_institutions: int = Field(2, ge=1)  # fewer usable updates in a round is an error
    min_available_institutions: int = Field(2, ge=1)  # wait for this many before a round starts
    round_timeout_s: float = Field(3600.0, gt=0.0)


class CentralDPSection(StrictModel):
    """Institution-level DP added by the server (server/central_dp.py): every institution's update is
    clipped to ``clip`` and the aggregate gets Gaussian noise of ``noise_multiplier`` x clip x the
    largest normalised weight of each parameter group; ε (institution level, at ``delta``) per round."""

    noise_multiplier: float = Field(gt=0.0, le=1000.0)
    clip: float = Field(gt=0.0)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)


class SecureAggregationSection(StrictModel):
    """Flower's SecAgg+ (server/secure_aggregation.py): the server learns only the weighted sums.

    ``reconstruction_threshold``: the fraction of an institution's key shares needed to unmask (and
    so the fewest of its neighbours that must stay to the end: below it the round cannot finish);
    ``clipping_range``: each weighted update entry is quantised within ±this (entries beyond it are
    clipped, and the institution reports how many); ``on_failure``: a round that falls below the
    threshold is tried again (``retry``, up to ``retries`` times, then stops), skipped (the model is
    kept) or stops the run."""

    # above 2/3 so the threshold, rounded as Flower does, is always more than half the shares
    reconstruction_threshold: float = Field(0.67, ge=0.67, le=1.0)
    # the fraction of the round's institutions each one shares its keys with (SecAgg+'s neighbourhood;
    # 1.0: everyone, as SecAgg). Fewer cost less with many institutions, and tolerate fewer dropouts.
    neighbours: float = Field(1.0, gt=0.0, le=1.0)
    clipping_range: float = Field(2.0, gt=0.0, le=1e6)
    quantization_range: int = Field(2 ** 22, ge=2 ** 8, le=2 ** 30)
    timeout_s: float | None = Field(None, gt=0.0)  # per protocol stage; default: federation.round_timeout_s
    on_failure: Literal["retry", "skip", "stop"] = "retry"
    retries: int = Field(1, ge=0, le=10)


class AggregationSection(StrictModel):
    mode: Literal["species_balanced", "examples", "uniform"] = "species_balanced"
    species_weights: dict[Species, float] = {}  # lambda_s; species not listed weigh 1
    max_update_norm: float | None = Field(None, gt=0.0)  # reject updates moving further than this
    central_dp: CentralDPSection | None = None  # institution-level DP at the server (off by default)
    # true (default settings) or a SecureAggregationSection: each update reaches the server masked
    secure: SecureAggregationSection | None = None

    @field_validator("secure", mode="before")
    @classmethod
    def _secure_flag(cls, value):
        if value is True:
            return {}
        return None if value is False else value

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

    name: InstitutionName
    public_key: Path  # OpenSSH ECDSA public key (``helixfed certs`` writes <tls-dir>/institutions/<name>.pub)


class FederationConfig(StrictModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")] = "helixfed"
    seed: int = 0
    tasks: tuple[TaskName, ...] = TASK_NAMES  # type: ignore[assignment]
    task_declarations: dict[TaskName, TaskDeclaration] = {}  # from `tasks:` written as a mapping
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
    # Written `model.init_checkpoint: DIR` in the file: the checkpoint (e.g. `helixfed pretrain`'s)
    # whose weights the federation starts from. Kept out of ModelConfig, which describes an
    # architecture and travels to institutions and into every checkpoint.
    init_checkpoint: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _tasks_mapping(cls, data):
        return _task_declarations(data)

    @model_validator(mode="before")
    @classmethod
    def _init_checkpoint_from_model_section(cls, data):
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, dict) and "init_checkpoint" in model:
            if data.get("init_checkpoint") is not None:
                raise ValueError("init_checkpoint: give it once, as model.init_checkpoint")
            model = dict(model)
            data = {**data, "model": model, "init_checkpoint": model.pop("init_checkpoint")}
        return data

    @model_validator(mode="after")
    def _institutions_fit_the_federation(self) -> FederationConfig:
        if self.training.trainable == "lora" and not self.model.lora_rank:
            raise ValueError("training.trainable: lora needs model.lora_rank > 0 (the adapters' rank)")
        if self.aggregation.secure is not None and self.federation.min_train_institutions < 2:
            raise ValueError("aggregation.secure needs federation.min_train_institutions >= 2: a sum of one "
                             "update is that update")
        _declare(self.task_declarations, self.tasks, where="")
        for option in PER_TASK_OPTIONS:
            foreign = sorted(set(self.model.named_tasks(option)) - set(self.tasks))
            if foreign:
                raise ValueError(f"model.{option}: {foreign} are not federation tasks {list(self.tasks)}")
        check_training_tasks(self.training, self.tasks)
        for task in self.training.kmer_path_lr_scale:
            if not self.model.kmer_k(task):
                raise ValueError(f"training.kmer_path_lr_scale: {task!r} has no k-mer path (model.kmer_linear)")
        for institution in self.institutions:
            for name, declaration in institution.task_declarations.items():
                if name in self.task_declarations and declaration != self.task_declarations[name]:
                    raise ValueError(f"institution {institution.name}: task {name!r} is declared differently "
                                     f"from the federation's declaration")
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

    def resolved(self, file_dir: Path) -> FederationConfig:
        """Every path absolute, relative ones against ``file_dir`` (the federation file's directory)."""
        output_dir = (file_dir / self.output_dir).resolve()
        data_dir = (file_dir / self.data_dir).resolve() if self.data_dir else output_dir / "data"
        central = self.central_evaluation
        central_dir = (file_dir / central.data_dir).resolve() if central.data_dir else data_dir / "central"
        enrolled = tuple(e.model_copy(update={"public_key": (file_dir / e.public_key).resolve()})
                         for e in self.enrolled)
        init = (file_dir / self.init_checkpoint).resolve() if self.init_checkpoint else None
        institutions = tuple(_with_directories(i, file_dir, data_root=data_dir, state_root=output_dir / "state")
                             for i in self.institutions)
        return self.model_copy(update={
            "output_dir": output_dir, "data_dir": data_dir, "enrolled": enrolled, "institutions": institutions,
            "init_checkpoint": init,
            "central_evaluation": central.model_copy(update={"data_dir": central_dir})})

    def institution(self, index: int) -> InstitutionConfig:
        """Inline institution ``index`` (a simulated SuperNode's ``partition-id``).

        Raises:
            ConfigError: no such entry.
        """
        if not 0 <= index < len(self.institutions):
            raise ConfigError(f"institutions: no entry {index} (the federation lists {len(self.institutions)})")
        return self.institutions[index]


def check_training_tasks(training: TrainingConfig, tasks: tuple[str, ...]) -> None:
    """Every per-task training option names one of ``tasks`` (a misspelt task would match nothing and
    silently do nothing), and each task's weights fit :func:`class_weights_after_clipping`."""
    for option in ("weights_after_clipping", "kmer_path_lr_scale"):
        for task in getattr(training, option):
            if task not in tasks:
                raise ValueError(f"training.{option}: {task!r} is not one of the tasks {list(tasks)}")
    for task, task_weights in training.weights_after_clipping.items():
        try:
            class_weights_after_clipping(task, task_weights)
        except ValueError as err:
            raise ValueError(f"training.weights_after_clipping: {err}") from err


T = TypeVar("T", bound=BaseModel)


def _key_path(location: tuple) -> str:
    # Declarations are written under `tasks:` (a mapping); the schema keeps them in task_declarations.
    parts = ["tasks" if part == "task_declarations" else str(part) for part in location]
    return ".".join(parts) or "<top level>"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for problem in err.errors():
        where = _key_path(problem["loc"])
        got = problem.get("input")
        # A whole-file check (empty location) would echo the whole file: name the rule only.
        shown = "" if problem["type"] == "missing" or not problem["loc"] else f" (got {got!r})"
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


def load_config(path: str | Path, schema: type[T]) -> T:
    """Load and validate one YAML config file against ``schema``."""
    return parse_config(load_yaml(path), schema, source=str(path))



def _with_directories(config: InstitutionConfig, file_dir: Path, *, data_root: Path | None = None,
                      state_root: Path | None = None) -> InstitutionConfig:
    """Relative data and state directories made absolute against the file they are written in (a
    SuperNode's ClientApp runs in a directory of Flower's choosing); missing ones, when roots are
    given, placed at ``<root>/<name>``."""
    updates = {}
    if config.data is not None:
        updates["data"] = {task: source.resolved(file_dir) for task, source in config.data.items()}
        data_root = None  # the files are the data: no default data directory
    for key, root in (("data_dir", data_root), ("state_dir", state_root)):
        value = getattr(config, key)
        if value is not None and not value.is_absolute():
            updates[key] = (file_dir / value).resolve()
        elif value is None and root is not None:
            updates[key] = root / config.name
    key = config.privacy.ledger_key
    if key is not None and not key.is_absolute():
        updates["privacy"] = config.privacy.model_copy(update={"ledger_key": (file_dir / key).resolve()})
    return config.model_copy(update=updates) if updates else config


def load_institution(path: str | Path) -> InstitutionConfig:
    """Read an institution file (``configs/institutions/<name>.yaml``); data and state directories
    must be given, relative to the file or absolute.

    Raises:
        ConfigError: bad file (names file and key path), or data_dir/state_dir missing.
    """
    path = Path(path).resolve()
    config = _with_directories(load_config(path, InstitutionConfig), path.parent)
    try:
        _declare(config.task_declarations, config.tasks, where="")
        if config.training is not None:
            check_training_tasks(config.training, config.tasks)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from err
    for key in ("state_dir",) if config.data is not None else ("data_dir", "state_dir"):
        if getattr(config, key) is None:
            raise ConfigError(f"{path}: {key}: Field required for an institution agent")
    return config


def load_federation(path: str | Path, *, output_dir: Path | None = None) -> FederationConfig:
    """Load a federation file with every path absolute (relative ones against the file's directory).

    Args:
        path: the federation YAML.
        output_dir: replaces the file's ``output_dir`` (data and central set follow it unless the
            file places them elsewhere); a relative one is taken against the working directory, as
            the command line that gave it means.

    Raises:
        ConfigError: the file does not match the schema (names file and key path).
    """
    path = Path(path).resolve()
    config = load_config(path, FederationConfig)
    if output_dir is not None:
        config = config.model_copy(update={"output_dir": Path(output_dir).resolve()})
    return config.resolved(path.parent)


APP_DIR = Path(__file__).resolve().parents[1]  # the Flower app: pyproject.toml and the three packages
DEFAULT_FEDERATION_FILE = "configs/quickstart.yaml"  # as pyproject's run config


def run_base_dir(run_config: Mapping) -> Path:
    """What relative paths in a Flower run config resolve against: ``base-dir``, else the app."""
    return Path(str(run_config.get(RunConfigKey.BASE_DIR) or APP_DIR)).resolve()


def run_config_paths(run_config: Mapping) -> tuple[Path, Path | None]:
    """The federation file and the output directory override (None: the file's own) a Flower run
    config names, absolute. The apps run in the SuperLink's working directory, not the user's, so
    nothing here may depend on the cwd."""
    base = run_base_dir(run_config)
    config_file = (base / str(run_config.get(RunConfigKey.CONFIG_FILE) or DEFAULT_FEDERATION_FILE)).resolve()
    out = str(run_config.get(RunConfigKey.OUT_DIR) or "")
    return config_file, (base / out).resolve() if out else None


def federation_from_run_config(run_config: Mapping) -> FederationConfig:
    """The federation a Flower run config names, with every path absolute (the ServerApp's view;
    simulated ClientApps take the paths the ServerApp resolved, see ``protocol.SIMULATION_PATHS``)."""
    config_file, out = run_config_paths(run_config)
    return load_federation(config_file, output_dir=out)
