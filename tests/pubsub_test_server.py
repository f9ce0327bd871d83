"""A small Pub/Sub server for the scenarios the emulator cannot play deterministically.

Google's emulator (0.8.20) never unregisters a streaming pull that ends by the client's cancel
or by the client's process dying: grpc-java inside it fails with NoSuchMethodError
(``ServerImpl$JumpToApplicationThreadServerStreamListener.closedInternal``, in its log), so the
dead stream keeps getting its share of deliveries. Each one is lost for the dead stream's ack
deadline (60 s) and counts as a delivery attempt; with no other stream, a message goes to the
dead one for ever. A watcher that is killed or stopped and started again therefore gets its
story back after anything from seconds to never, with Pub/Sub's attempt count run up.

This server speaks the same gRPC API (``google.pubsub.v1`` Publisher and Subscriber: the calls
the official client makes) and keeps Pub/Sub's documented delivery rules, including for
streams that end:

- a message goes to one open stream of its subscription (round robin, within the stream's
  ``max_outstanding_messages``) or to a Pull; it is leased for the stream's ack deadline
  (``stream_ack_deadline_seconds``) or the subscription's;
- ModifyAckDeadline extends the lease; 0 (a nack) makes the message available at once;
  Acknowledge removes it; a lease that runs out makes it available again;
- a stream that ends (cancelled, or its client gone) leaves its messages leased until their
  deadlines pass, as Pub/Sub does, and gets no more;
- ``delivery_attempt`` counts deliveries on subscriptions with a dead-letter policy (0
  otherwise); after ``max_delivery_attempts`` the message moves to the dead-letter topic.

Not modelled: retry backoff, ordering keys, exactly-once delivery, filters, retention, IAM,
snapshots and seeking, push subscriptions, schemas.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import pytest
from google.pubsub_v1 import types

DEFAULT_ACK_DEADLINE_S = 10
TICK_S = 0.05  # how often leases are checked and waiting messages handed out


@dataclass
class _Lease:
    ack_id: str
    deadline: float
    stream: _Stream | None


@dataclass
class _Message:
    message: types.PubsubMessage
    deliveries: int = 0
    lease: _Lease | None = None


@dataclass
class _Stream:
    subscription: str
    ack_deadline_s: int
    max_outstanding: int
    responses: queue.Queue = field(default_factory=queue.Queue)
    closed: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Subscription:
    config: types.Subscription
    messages: dict[str, _Message] = field(default_factory=dict)  # by message id, in order
    streams: list[_Stream] = field(default_factory=list)
    next_stream: int = 0


def _empty(_message) -> bytes:
    return b""


class PubSubTestServer:
    """The server's state and its gRPC handlers; ``start()`` serves on 127.0.0.1:port."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._topics: dict[str, types.Topic] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._message_ids = itertools.count(1)
        self._ack_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        self._dispatcher = threading.Thread(target=self._dispatch_loop, daemon=True)
        self.host: str | None = None
        self.streams_opened = 0

    # Serving ------------------------------------------------------------------------------

    def start(self, port: int = 0) -> str:
        server = grpc.server(ThreadPoolExecutor(max_workers=64, thread_name_prefix="pubsub"))
        server.add_generic_rpc_handlers([self._publisher_handlers(), self._subscriber_handlers()])
        port = server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        self._server = server
        self._dispatcher.start()
        self.host = f"127.0.0.1:{port}"
        return self.host

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for subscription in self._subscriptions.values():
                for stream in subscription.streams:
                    stream.closed.set()
            self._lock.notify_all()
        if self._server is not None:
            self._server.stop(grace=1).wait()
        self._dispatcher.join(5)

    def _publisher_handlers(self) -> grpc.GenericRpcHandler:
        def unary(method, request_type, response_serializer):
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request_type.deserialize,
                response_serializer=response_serializer,
            )

        return grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Publisher",
            {
                "CreateTopic": unary(self.create_topic, types.Topic, types.Topic.serialize),
                "GetTopic": unary(self.get_topic, types.GetTopicRequest, types.Topic.serialize),
                "Publish": unary(
                    self.publish, types.PublishRequest, types.PublishResponse.serialize
                ),
            },
        )

    def _subscriber_handlers(self) -> grpc.GenericRpcHandler:
        def unary(method, request_type, response_serializer):
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request_type.deserialize,
                response_serializer=response_serializer,
            )

        return grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Subscriber",
            {
                "CreateSubscription": unary(
                    self.create_subscription, types.Subscription, types.Subscription.serialize
                ),
                "GetSubscription": unary(
                    self.get_subscription,
                    types.GetSubscriptionRequest,
                    types.Subscription.serialize,
                ),
                "Acknowledge": unary(self.acknowledge, types.AcknowledgeRequest, _empty),
                "ModifyAckDeadline": unary(
                    self.modify_ack_deadline, types.ModifyAckDeadlineRequest, _empty
                ),
                "Pull": unary(self.pull, types.PullRequest, types.PullResponse.serialize),
                "StreamingPull": grpc.stream_stream_rpc_method_handler(
                    self.streaming_pull,
                    request_deserializer=types.StreamingPullRequest.deserialize,
                    response_serializer=types.StreamingPullResponse.serialize,
                ),
            },
        )

    def messages_left(self, subscription: str) -> int:
        """Messages of the subscription not acknowledged yet (leased or not)."""
        with self._lock:
            return len(self._subscriptions[subscription].messages)

    # Publisher ----------------------------------------------------------------------------

    def create_topic(self, topic: types.Topic, context: grpc.ServicerContext) -> types.Topic:
        with self._lock:
            if topic.name in self._topics:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
            self._topics[topic.name] = topic
            return topic

    def get_topic(self, request: types.GetTopicRequest, context) -> types.Topic:
        with self._lock:
            if request.topic not in self._topics:
                context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
            return self._topics[request.topic]

    def publish(self, request: types.PublishRequest, context) -> types.PublishResponse:
        with self._lock:
            if request.topic not in self._topics:
                context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
            ids = [self._publish(request.topic, message) for message in request.messages]
            self._lock.notify_all()
        return types.PublishResponse(message_ids=ids)

    def _publish(self, topic: str, message: types.PubsubMessage) -> str:
        stored = types.PubsubMessage(
            data=message.data,
            attributes=dict(message.attributes),
            message_id=str(next(self._message_ids)),
            publish_time=datetime.now(UTC),
        )
        for subscription in self._subscriptions.values():
            if subscription.config.topic == topic:
                subscription.messages[stored.message_id] = _Message(stored)
        return stored.message_id

    # Subscriber ---------------------------------------------------------------------------

    def create_subscription(self, request: types.Subscription, context) -> types.Subscription:
        with self._lock:
            if request.name in self._subscriptions:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists")
            if request.topic not in self._topics:
                context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
            policy = request.dead_letter_policy
            if policy.dead_letter_topic:
                if policy.dead_letter_topic not in self._topics:
                    context.abort(grpc.StatusCode.NOT_FOUND, "Dead letter topic not found")
                if not 5 <= (policy.max_delivery_attempts or 5) <= 100:
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, "max_delivery_attempts must be 5-100"
                    )
            config = types.Subscription(request)
            if not config.ack_deadline_seconds:
                config.ack_deadline_seconds = DEFAULT_ACK_DEADLINE_S
            self._subscriptions[request.name] = _Subscription(config)
            return config

    def get_subscription(self, request: types.GetSubscriptionRequest, context):
        with self._lock:
            return self._subscription(request.subscription, context).config

    def _subscription(self, name: str, context) -> _Subscription:
        subscription = self._subscriptions.get(name)
        if subscription is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "Subscription does not exist")
        return subscription

    def acknowledge(self, request: types.AcknowledgeRequest, context) -> None:
        with self._lock:
            subscription = self._subscription(request.subscription, context)
            self._acknowledge(subscription, request.ack_ids)
            self._lock.notify_all()

    def modify_ack_deadline(self, request: types.ModifyAckDeadlineRequest, context) -> None:
        with self._lock:
            subscription = self._subscription(request.subscription, context)
            self._modify(subscription, request.ack_ids, request.ack_deadline_seconds)
            self._lock.notify_all()

    def _acknowledge(self, subscription: _Subscription, ack_ids) -> None:
        wanted = set(ack_ids)
        for message_id, held in list(subscription.messages.items()):
            if held.lease is not None and held.lease.ack_id in wanted:
                del subscription.messages[message_id]

    def _modify(self, subscription: _Subscription, ack_ids, seconds: int) -> None:
        wanted = set(ack_ids)
        now = time.monotonic()
        for held in subscription.messages.values():
            if held.lease is not None and held.lease.ack_id in wanted:
                held.lease.deadline = now + seconds

    def pull(self, request: types.PullRequest, context) -> types.PullResponse:
        with self._lock:
            subscription = self._subscription(request.subscription, context)
            self._expire(subscription)
            received = []
            for held in self._available(subscription)[: request.max_messages or 1]:
                deadline_s = subscription.config.ack_deadline_seconds
                received.append(self._lease(subscription, held, deadline_s, None))
            return types.PullResponse(received_messages=received)

    def streaming_pull(
        self, requests: Iterator[types.StreamingPullRequest], context: grpc.ServicerContext
    ) -> Iterator[types.StreamingPullResponse]:
        first = next(requests)
        with self._lock:
            subscription = self._subscription(first.subscription, context)
            stream = _Stream(
                first.subscription,
                first.stream_ack_deadline_seconds or subscription.config.ack_deadline_seconds,
                first.max_outstanding_messages or 1000,
            )
            self._apply_stream_request(subscription, stream, first)
            subscription.streams.append(stream)
            self.streams_opened += 1
            self._lock.notify_all()

        def read_requests() -> None:
            try:
                for request in requests:
                    with self._lock:
                        self._apply_stream_request(subscription, stream, request)
                        self._lock.notify_all()
            except Exception:  # the client went away: the stream ends below
                pass
            finally:
                stream.closed.set()

        threading.Thread(target=read_requests, daemon=True).start()
        context.add_callback(stream.closed.set)  # cancelled, or the connection dropped
        try:
            while not stream.closed.is_set() and not self._stopping.is_set():
                try:
                    response = stream.responses.get(timeout=TICK_S)
                except queue.Empty:
                    continue
                yield response
        finally:
            stream.closed.set()
            with self._lock:
                if stream in subscription.streams:
                    subscription.streams.remove(stream)

    def _apply_stream_request(self, subscription, stream, request) -> None:
        if request.stream_ack_deadline_seconds:
            stream.ack_deadline_s = request.stream_ack_deadline_seconds
        if request.ack_ids:
            self._acknowledge(subscription, request.ack_ids)
        for ack_id, seconds in zip(
            request.modify_deadline_ack_ids, request.modify_deadline_seconds, strict=False
        ):
            self._modify(subscription, [ack_id], seconds)

    # Delivery -----------------------------------------------------------------------------

    def _available(self, subscription: _Subscription) -> list[_Message]:
        return [held for held in subscription.messages.values() if held.lease is None]

    def _expire(self, subscription: _Subscription) -> None:
        """Leases that ran out end; messages out of attempts move to the dead-letter topic."""
        now = time.monotonic()
        policy = subscription.config.dead_letter_policy
        for message_id, held in list(subscription.messages.items()):
            if held.lease is not None and held.lease.deadline <= now:
                held.lease = None
            if (
                held.lease is None
                and policy.dead_letter_topic
                and held.deliveries >= (policy.max_delivery_attempts or 5)
            ):
                del subscription.messages[message_id]
                dead = types.PubsubMessage(
                    data=held.message.data,
                    attributes={
                        **dict(held.message.attributes),
                        "CloudPubSubDeadLetterSourceDeliveryCount": str(held.deliveries),
                        "CloudPubSubDeadLetterSourceSubscription": subscription.config.name,
                    },
                )
                self._publish(policy.dead_letter_topic, dead)

    def _lease(
        self, subscription: _Subscription, held: _Message, deadline_s: int, stream
    ) -> types.ReceivedMessage:
        held.deliveries += 1
        ack_id = f"{subscription.config.name}:{held.message.message_id}:{next(self._ack_ids)}"
        held.lease = _Lease(ack_id, time.monotonic() + deadline_s, stream)
        counted = bool(subscription.config.dead_letter_policy.dead_letter_topic)
        return types.ReceivedMessage(
            ack_id=ack_id,
            message=held.message,
            delivery_attempt=held.deliveries if counted else 0,
        )

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                for subscription in self._subscriptions.values():
                    self._expire(subscription)
                    self._hand_out(subscription)
                self._lock.wait(TICK_S)

    def _hand_out(self, subscription: _Subscription) -> None:
        streams = [stream for stream in subscription.streams if not stream.closed.is_set()]
        for held in self._available(subscription):
            for turn in range(len(streams)):
                stream = streams[(subscription.next_stream + turn) % len(streams)]
                outstanding = sum(
                    1
                    for other in subscription.messages.values()
                    if other.lease is not None and other.lease.stream is stream
                )
                if outstanding < stream.max_outstanding:
                    received = self._lease(subscription, held, stream.ack_deadline_s, stream)
                    stream.responses.put(types.StreamingPullResponse(received_messages=[received]))
                    subscription.next_stream = (subscription.next_stream + turn + 1) % len(streams)
                    break
            else:
                return  # every stream is full


@pytest.fixture(name="pubsub_test_server")
def pubsub_test_server_fixture(monkeypatch) -> Iterator[PubSubTestServer]:
    """A fresh server for one test, with PUBSUB_EMULATOR_HOST pointing at it."""
    server = PubSubTestServer()
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", server.start())
    try:
        yield server
    finally:
        server.stop()
