from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("task", "sequences")
    TASK_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    task: str
    sequences: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task: _Optional[str] = ..., sequences: _Optional[_Iterable[str]] = ...) -> None: ...

class PositionPrediction(_message.Message):
    __slots__ = ("probabilities", "label")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    label: str
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ..., label: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("probabilities", "label", "positions")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    label: str
    positions: _containers.RepeatedCompositeFieldContainer[PositionPrediction]
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ..., label: _Optional[str] = ..., positions: _Optional[_Iterable[_Union[PositionPrediction, _Mapping]]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("task", "class_names", "predictions")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    task: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, task: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class VariantPair(_message.Message):
    __slots__ = ("id", "ref", "alt", "task")
    ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    ALT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    id: str
    ref: str
    alt: str
    task: str
    def __init__(self, id: _Optional[str] = ..., ref: _Optional[str] = ..., alt: _Optional[str] = ..., task: _Optional[str] = ...) -> None: ...

class ScoreVariantsRequest(_message.Message):
    __slots__ = ("pairs",)
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[VariantPair]
    def __init__(self, pairs: _Optional[_Iterable[_Union[VariantPair, _Mapping]]] = ...) -> None: ...

class VariantScore(_message.Message):
    __slots__ = ("id", "task", "delta_probability", "attention_change", "score", "impact", "label")
    class DeltaProbabilityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DELTA_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_CHANGE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    IMPACT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    task: str
    delta_probability: _containers.ScalarMap[str, float]
    attention_change: float
    score: float
    impact: float
    label: str
    def __init__(self, id: _Optional[str] = ..., task: _Optional[str] = ..., delta_probability: _Optional[_Mapping[str, float]] = ..., attention_change: _Optional[float] = ..., score: _Optional[float] = ..., impact: _Optional[float] = ..., label: _Optional[str] = ...) -> None: ...

class ScoreVariantsResponse(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[VariantScore]
    def __init__(self, scores: _Optional[_Iterable[_Union[VariantScore, _Mapping]]] = ...) -> None: ...

class AttentionRequest(_message.Message):
    __slots__ = ("sequence", "layer", "head")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    sequence: str
    layer: int
    head: int
    def __init__(self, sequence: _Optional[str] = ..., layer: _Optional[int] = ..., head: _Optional[int] = ...) -> None: ...

class AttentionResponse(_message.Message):
    __slots__ = ("layer", "head", "tokens", "weights", "received", "entropy", "sequence_entropy", "num_layers", "num_heads")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    head: int
    tokens: _containers.RepeatedScalarFieldContainer[str]
    weights: _containers.RepeatedScalarFieldContainer[float]
    received: _containers.RepeatedScalarFieldContainer[float]
    entropy: _containers.RepeatedScalarFieldContainer[float]
    sequence_entropy: float
    num_layers: int
    num_heads: int
    def __init__(self, layer: _Optional[int] = ..., head: _Optional[int] = ..., tokens: _Optional[_Iterable[str]] = ..., weights: _Optional[_Iterable[float]] = ..., received: _Optional[_Iterable[float]] = ..., entropy: _Optional[_Iterable[float]] = ..., sequence_entropy: _Optional[float] = ..., num_layers: _Optional[int] = ..., num_heads: _Optional[int] = ...) -> None: ...

class LabelledSequence(_message.Message):
    __slots__ = ("id", "sequence", "label", "labels", "species")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SPECIES_FIELD_NUMBER: _ClassVar[int]
    id: str
    sequence: str
    label: int
    labels: _containers.RepeatedScalarFieldContainer[int]
    species: str
    def __init__(self, id: _Optional[str] = ..., sequence: _Optional[str] = ..., label: _Optional[int] = ..., labels: _Optional[_Iterable[int]] = ..., species: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("task", "examples")
    TASK_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    task: str
    examples: _containers.RepeatedCompositeFieldContainer[LabelledSequence]
    def __init__(self, task: _Optional[str] = ..., examples: _Optional[_Iterable[_Union[LabelledSequence, _Mapping]]] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("task", "metrics", "by_species", "num_examples")
    class BySpeciesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Metrics
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Metrics, _Mapping]] = ...) -> None: ...
    TASK_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BY_SPECIES_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    task: str
    metrics: Metrics
    by_species: _containers.MessageMap[str, Metrics]
    num_examples: int
    def __init__(self, task: _Optional[str] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., by_species: _Optional[_Mapping[str, Metrics]] = ..., num_examples: _Optional[int] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("name", "kind", "class_names", "headline_metric")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    HEADLINE_METRIC_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    headline_metric: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., headline_metric: _Optional[str] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("tasks", "model_config_json", "num_parameters", "round", "num_layers", "num_heads", "max_batch", "max_length", "high_impact_threshold", "checkpoint")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    HIGH_IMPACT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    model_config_json: str
    num_parameters: int
    round: int
    num_layers: int
    num_heads: int
    max_batch: int
    max_length: int
    high_impact_threshold: float
    checkpoint: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., model_config_json: _Optional[str] = ..., num_parameters: _Optional[int] = ..., round: _Optional[int] = ..., num_layers: _Optional[int] = ..., num_heads: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_length: _Optional[int] = ..., high_impact_threshold: _Optional[float] = ..., checkpoint: _Optional[str] = ...) -> None: ...
