"""dcb: backup and disaster recovery for a Docker Compose stack.

The one import package. Its subpackages are the repository's top-level folders (``services/``,
``cli/``, ``tui/``, ``widgets/``), linked here so that an editable checkout, the type checker and
an installed wheel all see the same module names (``dcb.services.store``...), and so that no
generic top-level name like ``services`` is installed into a user's site-packages.
"""

__version__ = "0.1.0"
