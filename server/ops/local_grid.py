"""A Flower Grid that delivers each message to a ClientApp in this process.

For measuring and testing protocols without a SuperLink: the real ClientApp and the real server code
exchange real Flower messages (each side gets its own copy, as over the wire, and each message's
size is what Flower's wire format makes of it), while a node can be made to stop answering from a
given moment on, as a killed institution does. Not a transport: no timeouts, no concurrency.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid


def wire_bytes(msg: Message) -> int:
    """The message's size in Flower's protobuf wire format."""
    return message_to_proto(msg).ByteSize()


class LocalGrid(Grid):
    """``node_configs``: node id -> the SuperNode's node config (e.g. ``{"institution": path}``).
    ``answers(node, msg)``: False when that node stays silent (default: every node answers)."""

    def __init__(self, app: ClientApp, node_configs: dict[int, dict], *,
                 answers: Callable[[int, Message], bool] = lambda node, msg: True):
        self.app = app
        self.contexts = {node: Context(run_id=1, node_id=node, node_config=config, state=RecordDict(), run_config={})
                         for node, config in node_configs.items()}
        self.answers = answers
        self.replies: list[Message] = []  # every reply the server received, in order
        self.bytes_sent = 0  # server -> nodes
        self.bytes_received = 0  # nodes -> server
        self.node_seconds = 0.0  # time spent inside the ClientApp, all nodes together

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.bytes_sent += wire_bytes(msg)
            if not self.answers(node, msg):
                continue
            started = time.perf_counter()
            reply = copy.deepcopy(self.app(copy.deepcopy(msg), self.contexts[node]))
            self.node_seconds += time.perf_counter() - started
            self.bytes_received += wire_bytes(reply)
            self.replies.append(reply)
            replies.append(reply)
        return replies

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    # The rest of Grid's contract drives a SuperLink run; a local grid has none.
    @property
    def run(self):
        raise NotImplementedError("a LocalGrid has no SuperLink run")

    def set_run(self, run_id: int) -> None:
        raise NotImplementedError("a LocalGrid has no SuperLink run")

    def create_message(self, *args, **kwargs) -> Message:
        raise NotImplementedError("build messages with flwr.app.Message")

    def push_messages(self, messages):
        raise NotImplementedError("a LocalGrid answers in send_and_receive")

    def pull_messages(self, message_ids):
        raise NotImplementedError("a LocalGrid answers in send_and_receive")
