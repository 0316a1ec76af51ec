"""realm_testing: helpers shared by the test suite and the benchmarks (no tests in here).

* :mod:`.paths` - the repository root and the recordings in ``test/data``.
* :mod:`.events` - expected values of the shipped recordings, decoded payloads, synthetic packets and events.
* :mod:`.training` - small synthetic training bags and a tiny teacher checkpoint.
* :mod:`.perception` - the perception node as a subprocess, a probe node, packet playback (needs rclpy).

The package lives in ``test/``, which pytest puts on ``sys.path`` (``pythonpath = test`` in setup.cfg), so tests write
``from realm_testing.events import TE1``. Scripts outside pytest (benchmarks) add ``test/`` once. Two old module names
(``test/unit/events_testlib.py``, ``test/ros/perception_harness.py``) remain as re-exports until their last callers
(test_pipeline_stream.py, test_perception_node.py) import the package.
"""
