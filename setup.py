import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'realm_ros'


def files(pattern):
    return [f for f in glob(pattern) if os.path.isfile(f)]


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'benchmarks']),
    package_data={package_name: ['py.typed']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        (os.path.join('share', package_name, 'launch'), files('launch/*.launch.py')),
        (os.path.join('share', package_name, 'config'), files('config/*.yaml') + files('config/*.rviz')),
        (os.path.join('share', package_name, 'models'), files('models/*')),
        (os.path.join('share', package_name, 'interfaces', 'event_camera_msgs', 'msg'),
         files('interfaces/event_camera_msgs/msg/*.msg')),
    ],
    install_requires=['setuptools', 'numpy', 'pyyaml'],
    extras_require={
        # torch is pinned by scripts/setup_env.sh (CPU build) or installed by the user (CUDA build).
        'ml': ['torch', 'peft', 'safetensors', 'opencv-python-headless', 'rosbags', 'rosbags-image', 'numba', 'tqdm'],
        'test': ['pytest', 'hypothesis', 'colcon-common-extensions', 'ruff==0.17.6', 'mypy==2.4.1'],
    },
    zip_safe=True,
    maintainer='realm_ros maintainers',
    maintainer_email='realm-ros@example.com',
    description='REALM event-camera perception for ROS 2: events -> voxel grids -> LoRA-adapted DUNE ViT -> '
                'depth, semantics, MASt3R matching and relative pose; plus distillation from rosbags.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'perception_node = realm_ros.nodes.entry:perception_node',
            'sim_event_camera = realm_ros.nodes.entry:sim_event_camera',
            'train_from_bag = realm_ros.nodes.train_from_bag:main',
            'train_heads = realm_ros.nodes.train_heads:main',
            'realm-events = realm_ros.tools.events_cli:main',
            'realm-convert-checkpoint = realm_ros.models.convert:main',
            'realm-demo = realm_ros.demo:main',
        ],
    },
)
