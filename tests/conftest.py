"""Shared pytest setup for tests/.

Test modules import their helpers by module name (`from helpers import make_project`, `from tolerances import ...`):
tests/ is not a package (no __init__.py), so pytest's default import mode (prepend) puts tests/ on sys.path before
it imports any test module, and this file need not. A fixture that several test files use belongs here; none is
shared today (every fixture is used by the one file that defines it)."""
