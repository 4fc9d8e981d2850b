"""Secure rounds on the server (``aggregation.secure``): Flower's SecAgg+, driven from the run loop.

A secure round:

1. **describe** — each sampled institution says whether it will train and on how many records of
   each task (``query.describe``); refusals and failures are recorded as in a plain round;
2. **weights** — the server computes every ready institution's species-balanced, per-head weights
   from those counts (:func:`server.aggregation.contributor_weights`, the plain rule);
3. **SecAgg+** — Flower's :class:`SecAggPlusWorkflow` runs its four stages; at "collect masked
   vectors" each institution trains, scales its update by its weights and masks it
   (``client/secure.py``, :mod:`common.secure_sum`); the workflow unmasks only the sum;
4. **average** — the server divides the sum by the weights of the institutions whose vectors are in
   it (:func:`common.secure_sum.average_from_sum`), then adds institution-level DP noise if asked.

The server never holds one institution's update: every vector it receives is masked, and the
workflow's output is the sum. What it can no longer check on one update (its norm, names, shapes,
finiteness) each institution enforces before masking; the server checks the sum. Flower's workflow is
used unchanged except for what the bridge needs: the train instructions are ours, the "strategy" it
calls only collects the unmasked sum, and institutions lost before the key shares went out leave the
protocol (Flower would otherwise wait for shares nobody holds and halt; nobody masked with them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from common import protocol as p
from common.config import SecureAggregationSection
from common.protocol import Status
from common.secure_sum import SecureLayout, SecureLayoutError, average_from_sum
from server.aggregation import (
    AggregationError,
    AggregationReport,
    SecureRoundIncomplete,
    Update,
    contributor_weights,
    group_of,
)

log = logging.getLogger(__name__)

MODULUS_RANGE = 2 ** 32  # Flower's default; n institutions x quantization_range must stay below it (1,023 at 2^22)


@dataclass
class SecureSum:
    """What a finished secure round hands the strategy: the new weights and who is in them."""

    weights: dict[str, np.ndarray]
    report: AggregationReport  # effective normalised weights of the institutions in the sum
    trained: list = field(default_factory=list)  # InstitutionReport of each institution in the sum
    rejected: list = field(default_factory=list)  # InstitutionReport of each vector screened out before unmasking
    ready: dict[int, tuple[str, str, dict]] = field(default_factory=dict)  # who was to take part


class _SumCollector(Strategy):
    """The legacy strategy Flower's workflow calls: it proposes the ready institutions and keeps the
    unmasked result; nothing else (our strategy aggregates)."""

    def __init__(self, proxies: list[GridClientProxy]):
        self.proxies = proxies
        self.results: list | None = None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(proxy, FitIns(Parameters(tensors=[], tensor_type=""), {})) for proxy in self.proxies]

    def aggregate_fit(self, server_round, results, failures):
        self.results = list(results)
        return None, {}

    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _Screened:
    """The grid as the collect stage sees it: a reply whose metadata fails its checks is dropped
    before it can enter the sum, so the protocol treats that institution as gone (its pairwise masks
    are removed with its key shares) and the sum is opened at most once, without it."""

    def __init__(self, grid: Grid, screen: Callable[[Message], bool]):
        self.grid, self.screen = grid, screen

    def send_and_receive(self, messages, *, timeout=None):
        return [r for r in self.grid.send_and_receive(messages, timeout=timeout) if r.has_error() or self.screen(r)]


class _Workflow(SecAggPlusWorkflow):
    """Flower's workflow with our train instructions, screening and minimum.

    ``instructions(kept)`` builds each institution's instructions (the model and its weights) once the
    key shares are out, from the institutions still there, so the weights of anyone lost before
    training are shared out exactly as if it had not been sampled; ``screen(reply)`` checks a masked
    vector's metadata before the vector may count; fewer than ``minimum`` vectors are never unmasked."""

    def __init__(self, instructions: Callable[[set[int]], dict[int, RecordDict]], screen: Callable[[Message], bool],
                 minimum: int, **settings):
        super().__init__(**settings)
        self.instructions, self.screen, self.minimum = instructions, screen, minimum
        self.halted = ""  # why the protocol stopped, when it did

    def share_keys_stage(self, grid, context, state) -> bool:
        if 2 * state.threshold <= state.num_shares:  # a deviating server could unmask one institution alone
            self.halted = (f"the reconstruction threshold is {state.threshold} of {state.num_shares} key shares, "
                           f"at most half")
            return False
        ok = super().share_keys_stage(grid, context, state)
        # An institution that is gone before its key shares went out was masked with by nobody and
        # has no shares to recover: leave it out of the rest of the protocol.
        kept = set(state.active_node_ids)
        state.sampled_node_ids = kept
        state.nid_to_neighbours = {nid: neighbours & kept for nid, neighbours in state.nid_to_neighbours.items()
                                   if nid in kept}
        state.nid_to_fitins = self.instructions(kept) if ok else {}
        return ok

    def collect_masked_vectors_stage(self, grid, context, state) -> bool:
        return super().collect_masked_vectors_stage(_Screened(grid, self.screen), context, state)

    def unmask_stage(self, grid, context, state) -> bool:
        if len(state.active_node_ids) < self.minimum:
            self.halted = (f"{len(state.active_node_ids)} updates would be in the sum, at least {self.minimum} "
                           f"needed (federation.min_train_institutions)")
            return False
        return super().unmask_stage(grid, context, state)


def run_secure_round(grid: Grid, strategy, *, server_round: int, arrays: ArrayRecord, train_config: ConfigRecord,
                     settings: SecureAggregationSection, timeout: float, layout: SecureLayout,
                     clip: float | None, attempt: int = 1) -> SecureSum:
    """One secure round (module docstring). ``strategy``: the run's :class:`SpeciesFedAvg`, which
    sorts the replies' metadata and keeps the round record.

    Raises:
        AggregationError: fewer ready institutions than the federation needs.
        SecureRoundIncomplete: the protocol fell below its reconstruction threshold or the minimum of
            updates, or the summed weights disagree with the assigned ones.
    """
    nodes = [m.metadata.dst_node_id for m in strategy.configure_train(server_round, arrays, train_config, grid)]
    question = ConfigRecord({**dict(train_config), p.SERVER_ROUND: server_round})
    replies = grid.send_and_receive(
        [Message(RecordDict({p.CONFIG: question}), dst_node_id=n, message_type=p.DESCRIBE) for n in nodes],
        timeout=timeout)
    ready = strategy.sort_descriptions(server_round, replies)  # node id -> (institution, species, examples)
    if len(ready) < strategy.min_train_institutions:
        raise AggregationError(f"round {server_round}: {len(ready)} institutions ready to train, at least "
                               f"{strategy.min_train_institutions} needed for a secure round")
    if len(ready) * settings.quantization_range >= MODULUS_RANGE:  # the sum of n vectors must not wrap
        raise AggregationError(f"round {server_round}: {len(ready)} institutions x quantization_range "
                               f"{settings.quantization_range} reaches 2^32, where the masked sum wraps: lower "
                               f"aggregation.secure.quantization_range")
    planned: dict[str, dict[str, float]] = {}
    screened: dict[int, object] = {}  # node id -> InstitutionReport of its masked vector's metadata

    def screen(reply: Message) -> bool:
        report = strategy.screen_secure(reply.metadata.src_node_id, reply.content)
        screened[reply.metadata.src_node_id] = report
        return report.status == Status.TRAINED

    def instructions(kept: set[int]) -> dict[int, RecordDict]:
        """Weights from the record counts of the institutions still in the protocol, per group."""
        counts = [Update(institution, species, {}, examples)
                  for institution, species, examples in (ready[n] for n in kept)]
        planned.update({g: contributor_weights(counts, g, mode=strategy.aggregation.mode,
                                               species_weights=strategy.aggregation.species_weights)
                        for g in layout.groups})
        contents = {}
        for node in kept:
            institution = ready[node][0]
            config = ConfigRecord({**dict(train_config), p.SERVER_ROUND: server_round, p.ATTEMPT: attempt,
                                   p.SECURE_LAYOUT: layout.to_json(),
                                   p.SECURE_WEIGHTS: json.dumps({g: w.get(institution, 0.0) for g, w in planned.items()}),
                                   **({p.SECURE_CLIP: clip} if clip else {})})
            contents[node] = RecordDict({p.ARRAYS: arrays, p.CONFIG: config})
        return contents

    collector = _SumCollector([GridClientProxy(node, grid, 0) for node in ready])
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict({
        MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
        MAIN_PARAMS_RECORD: ArrayRecord()}), run_config={}), strategy=collector)
    workflow = _Workflow(instructions, screen, max(2, strategy.min_train_institutions),
                         num_shares=settings.neighbours, reconstruction_threshold=settings.reconstruction_threshold,
                         max_weight=1.0, clipping_range=settings.clipping_range,
                         quantization_range=settings.quantization_range, modulus_range=MODULUS_RANGE, timeout=timeout)
    workflow(grid, context)
    rejected = [r for r in screened.values() if r.status != Status.TRAINED]
    if collector.results is None:
        reason = workflow.halted or (f"fewer institutions stayed than its reconstruction threshold "
                                     f"({settings.reconstruction_threshold:g} of the key shares) needs")
        raise SecureRoundIncomplete(f"round {server_round}: secure aggregation could not finish: {reason}", ready,
                                    rejected)
    trained = [screened[proxy.node_id] for proxy, _ in collector.results]
    try:
        return _sum_from(collector.results, trained, rejected, ready, planned, arrays, layout, settings)
    except SecureLayoutError as err:
        raise SecureRoundIncomplete(f"round {server_round}: {err}; the round's sum is discarded", ready,
                                    rejected) from err


def _sum_from(results, trained, rejected, ready, planned, arrays: ArrayRecord, layout: SecureLayout,
              settings: SecureAggregationSection) -> SecureSum:
    stayed = {ready[r.node_id][0] for r in trained}
    expected = {g: sum(w for i, w in weights.items() if i in stayed) for g, weights in planned.items()}
    # The workflow returns the mean of the vectors (every institution weighs 1 in it): the sum is n times it.
    total = [np.asarray(v, dtype=np.float64) * len(trained) for v in parameters_to_ndarrays(results[0][1].parameters)]
    step = 2 * settings.clipping_range / settings.quantization_range
    reference = {k: v.numpy() for k, v in arrays.to_torch_state_dict().items()}
    weights = average_from_sum(total, reference, layout, expected, tolerance=4 * step * len(trained) + 1e-9)
    report = AggregationReport(weights={g: {i: w / expected[g] for i, w in ws.items() if i in stayed}
                                        if expected[g] > 0 else {} for g, ws in planned.items()})
    report.kept = [g for g in layout.groups if not report.weights[g]]
    report.averaged = [n for n in layout.names if report.weights[group_of(n)]]
    return SecureSum(weights, report, trained, rejected, ready)


def secure_layout(names: set[str], reference: dict[str, np.ndarray]) -> SecureLayout:
    """The masked vector's layout: every floating parameter an institution may send, in a fixed order."""
    return SecureLayout(tuple(sorted(n for n in names if np.issubdtype(reference[n].dtype, np.floating))))

