"""The code's shape: every import points down a floor, Kafka names live in one module, clients are built one way.

georep       the command and the API process: composes everything below
producers    consumers    what puts events into Kafka / what reads Kafka (neither imports the other)
adapters     the I/O both share: Kafka clients, compacted views, the registry client, the store, health
engine       the domain: no I/O
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import topics

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"engine": 0, "adapters": 1, "producers": 2, "consumers": 2, "georep": 3}
#: what may import what, beyond "a lower floor": nothing sideways
SIDEWAYS: dict[str, set[str]] = {"producers": set(), "consumers": set()}
KAFKA_NAMES = (
    topics.EVENTS,
    topics.REPLICATION_LOG,
    topics.DEAD_LETTER,
    topics.REPLICAS,
    topics.BACKFILL,
    topics.RECONCILE,
    topics.replicator_group(""),
    topics.redrive_group(""),
    topics.API_GROUP,
)


def python_files(*tops: str) -> Iterator[Path]:
    for top in tops:
        yield from sorted((ROOT / top).rglob("*.py"))


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found & set(FLOORS)


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_every_import_points_down(package: str) -> None:
    floor = FLOORS[package]
    wrong = []
    for path in python_files(package):
        for imported in imported_packages(path):
            if imported == package:
                continue
            if FLOORS[imported] >= floor and imported not in SIDEWAYS.get(package, set()):
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """String literals (and literal parts of f-strings), docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_topic_and_group_names_are_spelled_only_in_engine_topics() -> None:
    home = ROOT / "engine" / "topics.py"
    spelled = []
    for path in python_files("engine", "adapters", "producers", "consumers", "georep", "deploy", "tests"):
        if path == home:
            continue
        for line, text in _strings(ast.parse(path.read_text())):
            if any(name in text for name in KAFKA_NAMES):
                spelled.append(f"{path.relative_to(ROOT)}:{line}: {text[:80]!r}")
    assert not spelled, "use engine.topics instead:\n" + "\n".join(spelled)


def test_kafka_clients_are_built_only_by_adapters_kafka() -> None:
    home = ROOT / "adapters" / "kafka.py"
    constructors = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}
    built = []
    for path in python_files("engine", "adapters", "producers", "consumers", "georep", "deploy", "tests"):
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                if name in constructors:
                    built.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}(...)")
    assert not built, "build Kafka clients with adapters.kafka.new_*:\n" + "\n".join(built)


def test_every_error_georep_raises_is_a_georep_error() -> None:
    """A failure outside the tree (Kafka away during a backfill, say) would escape the handlers that mark a
    checkpoint failed or print one line: every exception class of the product derives from GeorepError."""
    from engine.errors import GeorepError

    outside = []
    for path in python_files("engine", "adapters", "producers", "consumers", "georep"):
        if path.name == "__main__.py":
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            defined = getattr(module, node.name, None)
            is_error = isinstance(defined, type) and issubclass(defined, BaseException)
            if is_error and not issubclass(defined, GeorepError):  # type: ignore[arg-type]
                outside.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert outside == []
