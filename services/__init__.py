"""dcb's domain layer: Docker, PostgreSQL, the backup store and the flows over them.

Never imports Textual (or anything from tui/, widgets/, cli/): the CLI, the scheduler and the
tests use it alone. An import-linter contract in pyproject.toml enforces it.
"""
