"""realm_ros.miniature: the miniature REALM world (ROS-free).

A tiny teacher ViT (same code as DUNE) trained on simulator RGB, depth / segmentation heads and a small MASt3R-style
decoder trained on the frozen teacher, REALM-mini distilled on simulated events with ``train_from_bag``, evaluated on
held-out simulated sequences. ``scripts/train_miniature.py`` reproduces the shipped ``models/mini_*`` files.

Submodules are imported lazily so that ``realm_ros.miniature.metrics`` (numpy only) stays cheap to import.
"""
