"""A worker that finishes a window while Ctrl-C shuts the context down: the publish that rcl refuses because the
context just became invalid is dropped quietly (the check before it raced with the shutdown); while the context is
alive a publish failure still propagates (the runner counts it)."""
import pytest

from realm_ros.nodes.messages import OutputPublisher


class _Context:
    def __init__(self) -> None:
        self.alive = True

    def ok(self) -> bool:
        return self.alive


class _Publisher:
    def __init__(self, context: _Context, sent: list) -> None:
        self.context, self.sent = context, sent

    def publish(self, msg) -> None:
        if not self.context.alive:
            raise RuntimeError("Failed to publish: publisher's context is invalid")
        self.sent.append(msg)


class _Node:
    def __init__(self) -> None:
        self.context = _Context()
        self.sent: list = []
        self.shutdown_before_publish = False

    def create_lifecycle_publisher(self, msg_type, topic, qos):
        node = self

        class Pub(_Publisher):
            def publish(self, msg) -> None:
                if node.shutdown_before_publish:          # Ctrl-C lands between the liveness check and publish
                    node.context.alive = False
                super().publish(msg)
        return Pub(self.context, self.sent)

    def create_publisher(self, msg_type, topic, depth):
        return _Publisher(self.context, self.sent)


def _publisher(node):
    return OutputPublisher(node, qos=None, param=lambda name: None, camera_info=lambda: None)


def test_a_publish_refused_by_a_context_shut_down_meanwhile_is_dropped_quietly():
    node = _Node()
    out = _publisher(node)
    out._publish('dense', {'depth': 'msg-1'})
    assert node.sent == ['msg-1']
    node.shutdown_before_publish = True
    out._publish('dense', {'depth': 'msg-2', 'semantic': 'msg-3'})      # no exception: shutting down
    assert node.sent == ['msg-1']
    out._publish('dense', {'depth': 'msg-4'})                           # after shutdown: nothing attempted
    assert node.sent == ['msg-1']


def test_a_publish_failure_while_the_context_is_alive_still_raises():
    node = _Node()
    out = _publisher(node)

    class Broken:
        def publish(self, msg):
            raise RuntimeError('serialization failed')
    out.publishers['depth'] = Broken()
    with pytest.raises(RuntimeError, match='serialization failed'):
        out._publish('dense', {'depth': 'msg'})
