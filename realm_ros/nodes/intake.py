"""Event packets received on a thread of their own, through a node that has nothing else to wait for.

rclpy's executor rebuilds its wait set from every entity of the node for each message it takes; a lifecycle node has
about a dozen services (parameters, lifecycle) besides its subscriptions and timers, which made each event packet
cost ~0.5 ms of Python on the executor thread (1000 packets/s: half a core). The intake node holds one subscription
and no services (its own name, no global arguments: the topic is the perception node's resolved ``events`` topic,
remappings and namespace applied), and a dedicated thread waits on it and, at each wake-up, takes every packet that
has arrived (rclpy's wait set + ``take_message``, the calls its executor makes, without the executor's per-message
task machinery); where that low-level interface differs, a SingleThreadedExecutor on the intake node does the same
work. Packets are taken as they come, whatever the main executor is doing.

With a ``raw_decoder`` (the perception node passes :func:`realm_ros.events.cdr.event_packet_from_cdr`) the
subscription takes the serialized message and the decoder turns it into the message: rclpy's take-and-convert of a
2.5 KB EventPacket cost ~47-69 us of the intake thread, the serialized take ~13-19 us plus ~5 us to read it
(development machine). A buffer the decoder refuses is converted by rclpy
instead (``rclpy.serialization.deserialize_message``); one that cannot be converted at all goes to ``on_error``.

After each batch the thread waits ``gather_s`` before it looks again, so that packets are taken several at a time
(the per-packet Python then runs with warm caches: measured in the demo, 8 ms instead of 2 ms took the intake thread
from 0.17-0.20 to 0.11-0.16 of a core at 1000 packets/s). The wait is shortened at high byte rates so that a batch
never grows past ``GATHER_BATCH_BYTES`` (:func:`gather_wait_s`): packets wait in the publisher's shared-memory
segment, whose buffers a publisher recycles when it needs room (512 KB per participant when a user's DDS profile
replaces the node's 16 MB one).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional

#: the most bytes of event packets a gathered batch may hold (1/8 of a 512 KB shared-memory segment)
GATHER_BATCH_BYTES = 64 * 1024


def gather_wait_s(gather_s: float, batch_bytes: int, interval_s: float) -> float:
    """How long to wait before the next take: ``gather_s``, or less when the last batch (``batch_bytes`` that
    arrived over ``interval_s``) shows a byte rate at which waiting ``gather_s`` would collect more than
    ``GATHER_BATCH_BYTES``."""
    if gather_s <= 0.0 or batch_bytes <= 0 or interval_s <= 0.0:
        return max(0.0, gather_s)
    return min(gather_s, GATHER_BATCH_BYTES * interval_s / batch_bytes)


class EventIntake:
    """A subscription to ``topic`` in its own node and executor thread; ``callback`` gets every message (with a
    ``raw_decoder``: what it reads from the serialized message). ``gather_s``: after taking what has arrived, wait
    this long before looking again (packets taken several at a time). ``batch_callback``: gets the messages of each
    wake-up in one list instead (in arrival order; ``callback`` then serves only the executor fallback)."""

    def __init__(self, context: Any, node_name: str, topic: str, msg_type: Any, qos: Any,
                 callback: Callable[[Any], None], raw_decoder: Optional[Callable[[bytes], Any]] = None,
                 on_error: Optional[Callable[[Exception], None]] = None, gather_s: float = 0.0,
                 batch_callback: Optional[Callable[[List[Any]], None]] = None) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        self.node = Node(node_name, context=context, use_global_arguments=False, start_parameter_services=False,
                         enable_rosout=False)
        self._msg_type = msg_type
        self._raw_decoder = raw_decoder
        self._on_error = on_error
        self._callback = callback if raw_decoder is None else self._deliver_serialized
        self._deliver = callback
        self._batch_callback = batch_callback
        self.subscription = self.node.create_subscription(msg_type, topic, self._callback, qos,
                                                          raw=raw_decoder is not None)
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._stop = threading.Event()
        self._gather_s = max(0.0, float(gather_s))
        self.takes = 0                  # wake-ups that took packets, and the packets they took
        self.packets = 0
        self._thread: Optional[threading.Thread] = threading.Thread(target=self._spin, name='realm_intake',
                                                                    daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from realm_ros.pipeline.runner import name_os_thread
        name_os_thread('realm_intake')
        try:
            self._drain_loop()
        except Exception as exc:  # noqa: BLE001 - shutdown, or an rclpy whose low-level interface differs
            if self._stop.is_set() or not self.node.context.ok():
                return
            self.node.get_logger().info(f'event intake through the executor ({type(exc).__name__}: {exc})')
            self._executor_loop()

    def _drain_loop(self) -> None:
        """Wait for the subscription (100 ms at most), then take every message that is ready (then ``gather_s``)."""
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
        sub, context = self.subscription, self.node.context
        wait_set = _rclpy.WaitSet(1, 0, 0, 0, 0, 0, context.handle)
        last_take = time.monotonic()
        while not self._stop.is_set() and context.ok():
            with sub.handle, context.handle:
                wait_set.clear_entities()
                wait_set.add_subscription(sub.handle)
                wait_set.wait(100_000_000)
            now = time.monotonic()
            count = size = 0
            batch: List[Any] = []
            while not self._stop.is_set():
                with sub.handle:
                    taken = sub.handle.take_message(sub.msg_type, sub.raw)
                if taken is None:
                    break
                count += 1
                if sub.raw:
                    size += len(taken[0])
                if self._batch_callback is None:
                    self._callback(taken[0])
                else:
                    batch.append(taken[0])
            if batch:
                self._deliver_batch(batch)
            if count:
                self.takes += 1
                self.packets += count
                interval, last_take = now - last_take, now
                if self._gather_s:
                    self._stop.wait(gather_wait_s(self._gather_s, size, interval))

    def _deliver_serialized(self, raw: bytes) -> None:
        """A serialized message: the raw decoder, else rclpy's conversion, else ``on_error`` (never raises)."""
        msg = self._read(raw)
        if msg is not None:
            self._deliver(msg)

    def _deliver_batch(self, taken: List[Any]) -> None:
        """The messages of one wake-up to ``batch_callback`` (serialized ones read first; unreadable ones left out,
        reported to ``on_error``)."""
        msgs = [m for m in map(self._read, taken) if m is not None] if self._raw_decoder is not None else taken
        if msgs:
            self._batch_callback(msgs)  # type: ignore[misc]

    def _read(self, raw: bytes) -> Any:
        """The raw decoder's message, else rclpy's conversion, else None after ``on_error``."""
        try:
            return self._raw_decoder(raw)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - e.g. another CDR representation: rclpy's own conversion knows them all
            from rclpy.serialization import deserialize_message
            try:
                return deserialize_message(raw, self._msg_type)
            except Exception as exc:  # noqa: BLE001 - a buffer nothing can read: counted by the owner
                if self._on_error is not None:
                    self._on_error(exc)
                return None

    def _executor_loop(self) -> None:
        from rclpy.executors import ExternalShutdownException
        while not self._stop.is_set():
            try:
                self._executor.spin_once(timeout_sec=0.1)
            except (ExternalShutdownException, KeyboardInterrupt):
                break
            except Exception:
                if not self.node.context.ok():
                    break
                raise

    def stats(self) -> Dict[str, float]:
        """``packets_per_take``: the mean batch size so far (the gathering at work; 1.0 when every packet is taken
        as it arrives)."""
        return {'packets_per_take': round(self.packets / self.takes, 2) if self.takes else 0.0}

    def close(self, timeout: float = 1.0) -> None:
        """Stop taking packets and destroy the node."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        self._executor.remove_node(self.node)
        self._executor.shutdown(timeout_sec=0.1)
        self.node.destroy_subscription(self.subscription)
        self.node.destroy_node()


def make_executor() -> Any:
    """The Python SingleThreadedExecutor; ``REALM_EXECUTOR=events`` tries rclpy's experimental C++ events executor
    (measured here: its thread then kept a core busy and starved the inference workers, so it is not the default)."""
    if os.environ.get('REALM_EXECUTOR', 'single') == 'events':
        try:
            from rclpy.experimental import EventsExecutor
            return EventsExecutor()
        except ImportError:
            pass
    from rclpy.executors import SingleThreadedExecutor
    return SingleThreadedExecutor()
