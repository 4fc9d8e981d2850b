"""A Flower Grid that delivers each message to a ClientApp in this process.

For measuring and testing protocols without a SuperLink: the real ClientApp and the real server code
exchange real Flower messages (each side gets its own copy, as over the wire, and each message's
size is what Flower's wire format makes of it), while a node can be made to stop answering from a
given moment on, as a killed institution does. Not a transport: no timeouts, no concurrency.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run


def wire_bytes(msg: Message) -> int:
    """The message's size in Flower's protobuf wire format."""
    return message_to_proto(msg).ByteSize()


class LocalGrid(Grid):
    """``node_configs``: node id -> the SuperNode's node config (e.g. ``{"institution": path}``).
    ``answers(node, msg)``: False when that node stays silent (default: every node answers)."""

    def __init__(self, app: ClientApp, node_configs: dict[int, dict], *,
                 answers: Callable[[int, Message], bool] = lambda node, msg: True, run_id: int = 1):
        self.app = app
        self._run = Run.create_empty(run_id)
        self.contexts = {node: Context(run_id=run_id, node_id=node, node_config=config, state=RecordDict(),
                                       run_config={}) for node, config in node_configs.items()}
        self.answers = answers
        self.replies: list[Message] = []  # every reply the server received, in order
        self.bytes_sent = 0  # server -> nodes
        self.bytes_received = 0  # nodes -> server
        self.node_seconds = 0.0  # time spent inside the ClientApp, all nodes together
        self._pending: dict[str, Message] = {}  # message id -> its reply, until pulled

    @property
    def run(self) -> Run:
        return self._run

    def set_run(self, run: Run) -> None:
        self._run = run

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id,
                       ttl=ttl)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver each message now; its reply waits to be pulled. A silent node's message gets an id
        and never a reply, as one sent to a node that died."""
        ids = []
        for msg in messages:
            message_id = uuid.uuid4().hex
            ids.append(message_id)
            node = msg.metadata.dst_node_id
            self.bytes_sent += wire_bytes(msg)
            if not self.answers(node, msg):
                continue
            started = time.perf_counter()
            reply = copy.deepcopy(self.app(copy.deepcopy(msg), self.contexts[node]))
            self.node_seconds += time.perf_counter() - started
            self.bytes_received += wire_bytes(reply)
            self._pending[message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        replies = [self._pending.pop(i) for i in message_ids if i in self._pending]
        self.replies.extend(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push, then pull: every node answers (or stays silent) before this returns, so no timeout
        is waited out."""
        return self.pull_messages(self.push_messages(messages))
