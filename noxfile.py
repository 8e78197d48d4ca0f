"""nox sessions: tests, lint, typecheck, and the benchmarks that write docs/benchmarks.md.

Sessions reuse the current interpreter's packages (``venv_backend="none"``), because torch,
torchvision and Avalanche must come as the verified pinned set that ``pip install -e '.[dev]'``
installs; a fresh virtual environment per session would download several GB again.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Run the test suite (pass pytest arguments after --)."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """Check style and imports with ruff."""
    session.run("ruff", "check", "cmrkit", "strategies", "plugins", "tests", "benchmarks", "noxfile.py")


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """Type-check the library with mypy."""
    session.run("mypy", "cmrkit", "strategies", "plugins")


@nox.session(venv_backend="none")
def benchmarks(session: nox.Session) -> None:
    """Measure routing throughput and training memory; writes docs/benchmarks.md."""
    session.run("python", "benchmarks/speed_memory.py", "--output", "docs/benchmarks.md", *session.posargs)
