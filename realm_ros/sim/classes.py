"""Semantic classes of the simulator: the 11 DSEC-Semantic (ESS) classes, in the order REALM's segmentation head uses.

The order must equal ``realm_ros.models.heads.DSEC_CLASSES``; a unit test checks it whenever that module imports.
Label images (``mono8``) hold these ids; sky pixels are 0 and have infinite depth.
"""
from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = ('sky', 'building', 'fence', 'person', 'pole', 'road', 'sidewalk', 'vegetation',
                                'car', 'wall', 'traffic light')
NUM_CLASSES = len(CLASS_NAMES)

SKY = 0
BUILDING = 1
FENCE = 2
PERSON = 3
POLE = 4
ROAD = 5
SIDEWALK = 6
VEGETATION = 7
CAR = 8
WALL = 9
TRAFFIC_LIGHT = 10
