"""realm_testing: helpers shared by the test suite and the benchmarks (no tests in here).

* :mod:`.paths` - the repository root and the recordings in ``test/data``.
* :mod:`.events` - expected values of the shipped recordings, decoded payloads, synthetic packets and events.
* :mod:`.training` - small synthetic training bags and a tiny teacher checkpoint.
* :mod:`.perception` - the perception node as a subprocess, a probe node, packet playback (needs rclpy).
* :mod:`.models` - the official checkpoints' key layouts (``test/data/model_keys``) and random weights.
* :mod:`.geometry` - a synthetic two-view decoder (two-plane scene, optional contraction bias) for pose tests.

The package lives in ``test/``, which pytest puts on ``sys.path`` (``pythonpath = test`` in setup.cfg), so tests write
``from realm_testing.events import TE1``. Scripts outside pytest (benchmarks) add ``test/`` once. Tests never import
other test modules: what two test files share lives here.
"""
