"""Library code logs through ``logging.getLogger(__name__)`` (or the node's rclpy logger); only command-line
programs print their user output."""
import ast
from pathlib import Path

import realm_ros

PACKAGE = Path(realm_ros.__file__).parent

#: Modules whose job is a command line's output (console scripts and ``python -m`` programs).
CLI_MODULES = {
    'demo.py',                 # realm-demo: progress and the results table
    'models/convert.py',       # realm-convert-checkpoint
    'sim/__main__.py',         # python -m realm_ros.sim
    'tools/events_cli.py',     # realm-events
    'training/cli.py',         # train_from_bag / train_heads
}


def print_calls(source: str) -> list[int]:
    """Line numbers of the calls of the built-in ``print`` in ``source``."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'print']


def test_print_calls_finds_calls_only():
    src = 'def f(log=print):\n    print("x")\n    x.print("y")\n    s = "print(z)"\n    print(\n        1)\n'
    assert print_calls(src) == [2, 5]


def test_no_print_outside_cli_modules():
    found = {}
    for path in sorted(PACKAGE.rglob('*.py')):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel not in CLI_MODULES:
            lines = print_calls(path.read_text(encoding='utf-8'))
            if lines:
                found[rel] = lines
    assert not found, f'print() in library modules (use logging.getLogger(__name__)): {found}'


def test_cli_allowlist_is_current():
    """Every allow-listed module exists and still prints (a module that stopped printing leaves the list)."""
    for rel in sorted(CLI_MODULES):
        path = PACKAGE / rel
        assert path.is_file(), rel
        assert print_calls(path.read_text(encoding='utf-8')), f'{rel} no longer prints: remove it from CLI_MODULES'
