"""The institution's Flower ClientApp: decode the message, call the agent, encode the reply.

Where the institution's config comes from:
- deployment: the SuperNode's node config, ``--node-config 'institution="/path/inst.yaml"'``;
- simulation: the federation file listing institutions inline and the node's ``partition-id``,
  with data and state where that file places them (:meth:`common.config.FederationConfig.institution`).
  The file and output directory are the ones the ServerApp resolved (``protocol.SIMULATION_PATHS``),
  since Flower may load this app from another copy of the code than the ServerApp.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.agent import InstitutionAgent, TrainOutcome, reported
from client.secure import is_secure_stage, secure_records, secure_stage
from common import protocol as p
from common.config import (
    TrainingConfig,
    federation_from_run_config,
    load_federation,
    load_institution,
    parse_config,
)
from common.logs import drop_opacus_root_handler
from common.model import GenomicTransformer, ModelConfig
from common.protocol import Status
from common.tasks import declare_tasks

log = logging.getLogger(__name__)
app = ClientApp()

# One agent per institution per process: simulation reuses the process across rounds, so data is
# read and the ledger opened once; deployment starts a process per message and opens them again.
_AGENTS: dict[tuple, InstitutionAgent] = {}


def agent_for(context: Context, training: TrainingConfig, simulation_paths: str | None = None) -> InstitutionAgent:
    node = context.node_config
    if "institution" in node:  # deployment: the institution's own file; nothing the server says about paths
        key = ("file", str(node["institution"]))
        make = lambda: InstitutionAgent(load_institution(node["institution"]), federation_training=training)  # noqa: E731
    else:
        index = int(node["partition-id"])
        key = ("sim", tuple(sorted((k, str(v)) for k, v in context.run_config.items())), simulation_paths, index)

        def make() -> InstitutionAgent:
            if simulation_paths:  # where the ServerApp resolved them (protocol.SIMULATION_PATHS)
                paths = json.loads(simulation_paths)
                federation = load_federation(paths["config_file"], output_dir=paths["output_dir"])
            else:
                federation = federation_from_run_config(context.run_config)
            return InstitutionAgent(federation.institution(index), federation_training=training)
    if key not in _AGENTS:
        drop_opacus_root_handler()
        torch.set_num_threads(max(1, int(os.environ.get("HELIXFED_CLIENT_THREADS", "1"))))
        _AGENTS[key] = make()
    return _AGENTS[key]


def model_from(msg: Message, agent: InstitutionAgent) -> GenomicTransformer:
    config = msg.content[p.CONFIG]
    model_config = ModelConfig.from_dict(json.loads(str(config[p.MODEL_CONFIG])))
    limit = agent.config.max_model_parameters
    if model_config.estimated_parameters() > limit:  # refuse before allocating anything
        raise ValueError(f"{agent.config.name}: the server's model config needs about "
                         f"{model_config.estimated_parameters():,} parameters; this agent's limit "
                         f"(max_model_parameters) is {limit:,}")
    if p.TASK_DECLARATIONS in config:  # the federation's own tasks; one that clashes with ours is an error
        declare_tasks(json.loads(str(config[p.TASK_DECLARATIONS])))
    model = GenomicTransformer(model_config, tasks=tuple(json.loads(str(config[p.TASKS]))))
    model.load_state_dict(msg.content[p.ARRAYS].to_torch_state_dict(), strict=True)
    return model


def training_from(msg: Message) -> TrainingConfig:
    raw = msg.content[p.CONFIG].get(p.TRAINING)
    return parse_config(json.loads(str(raw)), TrainingConfig, source="server training config") if raw \
        else TrainingConfig()


def meta(agent: InstitutionAgent, status: str, reason: str = "") -> ConfigRecord:
    return ConfigRecord({p.INSTITUTION: agent.config.name, p.SPECIES: agent.config.species,
                         p.STATUS: str(status), p.REASON: reason})


def encode_outcome(agent: InstitutionAgent, outcome: TrainOutcome) -> RecordDict:
    numbers, described = reported(agent, outcome)
    record = RecordDict({p.METRICS: MetricRecord(numbers), p.META: ConfigRecord(described)})
    if outcome.weights is not None:
        record[p.ARRAYS] = ArrayRecord(outcome.weights)
    return record


def keep_failures_local(handler):
    """An agent's exception stays in its own log: Flower would send ``str(exception)`` to the server,
    and data errors name files, lines, record ids and counts. The reply says only that it failed."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as err:
            log.exception("%s failed; the server is told only the error type", msg.metadata.message_type)
            node = context.node_config
            name = str(node.get("institution-name", f"node-{context.node_id}"))
            return Message(RecordDict({p.META: ConfigRecord({
                p.INSTITUTION: name, p.SPECIES: "unknown", p.STATUS: str(Status.FAILED),
                p.REASON: f"{type(err).__name__} at the institution (details in its own log)"})}), reply_to=msg)

    return wrapper


def train_outcome(msg: Message, context: Context) -> tuple[InstitutionAgent, TrainOutcome]:
    agent = agent_for(context, training_from(msg), msg.content[p.CONFIG].get(p.SIMULATION_PATHS))
    model = model_from(msg, agent)
    config = msg.content[p.CONFIG]
    outcome = agent.train(model, run_id=str(context.run_id), server_round=int(config[p.SERVER_ROUND]),
                          num_rounds=int(config[p.NUM_ROUNDS]) if p.NUM_ROUNDS in config else None,
                          attempt=int(config.get(p.ATTEMPT, 1)))
    return agent, outcome


@app.train()
def train(msg: Message, context: Context) -> Message:
    if is_secure_stage(msg):  # aggregation.secure: one of SecAgg+'s four stages (client/secure.py)
        return secure_stage(msg, context, lambda inner, ctx: secure_records(*train_outcome(inner, ctx), inner, ctx))
    return plain_train(msg, context)


@keep_failures_local
def plain_train(msg: Message, context: Context) -> Message:
    agent = agent_for(context, training_from(msg), msg.content[p.CONFIG].get(p.SIMULATION_PATHS))
    if agent.config.privacy.require_secure:  # this institution's updates leave masked, or not at all
        return Message(encode_outcome(agent, agent.refusal("this institution requires secure aggregation "
                                                          "(privacy.require_secure)")), reply_to=msg)
    agent, outcome = train_outcome(msg, context)
    return Message(encode_outcome(agent, outcome), reply_to=msg)


@app.query("describe")
@keep_failures_local
def describe_institution(msg: Message, context: Context) -> Message:
    """A secure round's first question: will this institution train, on how many records."""
    agent = agent_for(context, training_from(msg), msg.content[p.CONFIG].get(p.SIMULATION_PATHS))
    return Message(encode_outcome(agent, agent.readiness()), reply_to=msg)  # READY or REFUSED, no weights


@app.evaluate()
@keep_failures_local
def evaluate(msg: Message, context: Context) -> Message:
    agent = agent_for(context, training_from(msg), msg.content[p.CONFIG].get(p.SIMULATION_PATHS))
    if not agent.config.privacy.share_evaluation:  # metrics on raw test data are outside ε: opt-in only
        return Message(RecordDict({p.META: meta(agent, Status.DECLINED, "privacy.share_evaluation is false")}),
                       reply_to=msg)
    per_task = agent.evaluate(model_from(msg, agent))
    examples = sum(int(m[p.NUM_EXAMPLES]) for m in per_task.values())
    metrics = MetricRecord({p.NUM_EXAMPLES: examples, p.EPSILON: agent.epsilon(),
                            **p.flatten_task_metrics(per_task)})
    return Message(RecordDict({p.METRICS: metrics, p.META: meta(agent, Status.EVALUATED)}), reply_to=msg)
