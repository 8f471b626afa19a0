"""The one error type for what the user can fix.

Raised for bad input (arrays, options, budgets, config, files, cluster sizes); its message says what is
wrong and how to fix it, so the CLI shows it as one line and exits 2. Every other exception is a bug in
dist-al or a failure of its environment, and the CLI reports it as an internal error. It stays a
ValueError so that callers catching ValueError keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix; the message says what and how."""
