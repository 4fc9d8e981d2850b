"""The institution's side of a secure round (``aggregation.secure``): Flower's SecAgg+ client mod.

A secure round reaches the ClientApp as five messages: a describe query (will it train, on how many
records of each task: ``client/app.py`` answers it with the agent's readiness), then the four SecAgg+ stages as ``train`` messages. Flower's
``secaggplus_mod`` answers the key stages itself; at "collect masked vectors" it calls the ClientApp's
training, and :func:`secure_records` puts the institution's weighted update (:mod:`common.secure_sum`)
where Flower's legacy ``FitRes`` keeps parameters; the mod
masks that vector and clears the plaintext from the reply before it leaves. So the server receives
the masked vector and this round's metadata (status, ε, record counts), never the update itself.
Against a server that deviates from the protocol the institution refuses weights outside [0, 1], a
bound that is not positive and a reconstruction threshold of half the shares or less
(``privacy.require_secure`` also refuses plain rounds); what it cannot see is how the server weighs
the others (README, threat model).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, ndarrays_to_parameters
from flwr.common import Status as FlowerStatus
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from client.agent import InstitutionAgent, reported
from common import protocol as p
from common.protocol import Status
from common.secure_sum import SecureLayout, contribution

log = logging.getLogger(__name__)

# Every institution sends the weight 1 to Flower's protocol (its own weights are inside the vector),
# so the workflow's weighted mean is the plain mean of the vectors; the server multiplies it back.
SECURE_WEIGHT = 1
# Failure codes of an error reply; the reason names only the error type (details stay in the log).
SECURE_FAILURE = 1


def is_secure_stage(msg: Message) -> bool:
    return RECORD_KEY_CONFIGS in msg.content.config_records


def secure_stage(msg: Message, context: Context, train: Callable[[Message, Context], RecordDict]) -> Message:
    """Run one SecAgg+ stage through Flower's mod. ``train(msg, context)`` returns the plain reply's
    records with the plaintext vector under ``FitRes``'s keys. Any failure becomes an error reply, which
    the server's protocol treats as this institution dropping out (its masks are then reconstructed
    from its neighbours' shares): nothing of the update, and no detail of the error, leaves."""
    def call_next(inner: Message, ctx: Context) -> Message:
        return Message(train(inner, ctx), reply_to=inner)

    try:
        check_setup(msg)
        return secaggplus_mod(msg, context, call_next)
    except Exception as err:
        log.exception("secure aggregation stage failed; the server is told only the error type")
        return Message(Error(code=SECURE_FAILURE, reason=f"{type(err).__name__} at the institution"), reply_to=msg)


def server_weights(config) -> tuple[dict[str, float], float | None]:
    """This institution's weights per group and the bound on its update, as the server sent them;
    anything a protocol-following server could not have sent is refused."""
    weights = {str(g): float(w) for g, w in json.loads(str(config[p.SECURE_WEIGHTS])).items()}
    bad = {g: w for g, w in weights.items() if not 0.0 <= w <= 1.0}
    if bad:
        raise ValueError(f"secure round: weights outside [0, 1] from the server: {bad}")
    clip = float(config[p.SECURE_CLIP]) if p.SECURE_CLIP in config else None
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"secure round: the server's bound on the update is {clip!r}")
    return weights, clip


def check_setup(msg: Message) -> None:
    """Before any key is shared: a threshold of at most half the shares would let a server that
    deviates from the protocol collect one half's shares of a mask seed and the other half's of a key,
    and unmask this institution alone."""
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    if configs.get(Key.STAGE) == Stage.SETUP:
        shares, threshold = int(configs[Key.SHARE_NUMBER]), int(configs[Key.THRESHOLD])
        if 2 * threshold <= shares:
            raise ValueError(f"secure round: reconstruction threshold {threshold} of {shares} shares is at most half")


def secure_records(agent: InstitutionAgent, outcome, msg: Message, context: Context) -> RecordDict:
    """The reply's records for a trained secure round: the weighted update as ``FitRes`` parameters
    (masked and cleared by the mod) and the round's metadata, which the server reads from ``FitRes``'s
    metrics (Flower's workflow passes the server only the FitRes)."""
    if outcome.status != Status.TRAINED:  # it said READY a moment ago; now it cannot: drop out
        raise RuntimeError(f"{agent.config.name}: {outcome.status} in a secure round ({outcome.reason})")
    config = msg.content[p.CONFIG]
    layout = SecureLayout.from_json(str(config[p.SECURE_LAYOUT]))
    weights, clip = server_weights(config)
    clipping_range = float(context.state.config_records[RECORD_KEY_STATE]["clipping_range"])  # as the mod quantises
    reference = {k: v.numpy() for k, v in msg.content[p.ARRAYS].to_torch_state_dict().items()}
    trained = {k: v.numpy() for k, v in outcome.weights.items()}
    sent = contribution(trained, reference, weights, layout, clip=clip, clipping_range=clipping_range)
    # Whether the update was clipped, and how many entries the quantiser will clip, stay in this log:
    # each is a bit about the update that the masked sum is there to hide.
    log.info("%s: secure update%s; %d weighted entries beyond the quantisation range ±%g", agent.config.name,
             " clipped to the bound" if sent.clipped else " within the bound", sent.range_clipped, clipping_range)
    metrics, meta = reported(agent, outcome)
    fitres = FitRes(status=FlowerStatus(code=Code.OK, message=""),
                    parameters=ndarrays_to_parameters([np.asarray(v, dtype=np.float64) for v in sent.vector]),
                    num_examples=SECURE_WEIGHT, metrics={p.META: json.dumps(meta), p.METRICS: json.dumps(metrics)})
    return fitres_to_recorddict(fitres, keep_input=False)
