"""House style of the tests themselves."""

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def test_every_test_function_has_a_one_line_docstring() -> None:
    """Each test function under tests/ has a docstring of exactly one line."""
    offenders = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
                    node.name.startswith("test")):
                doc = ast.get_docstring(node)
                if doc is None or "\n" in doc.strip():
                    offenders.append(f"{path.relative_to(TESTS)}:{node.lineno} {node.name}")
    assert offenders == [], "test functions without a one-line docstring:\n" + "\n".join(
        offenders)
