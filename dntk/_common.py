"""Shared plumbing used by several dntk modules (private: not part of the public API).

One place for the small things every stage needs, so that each is written once:
input checks, the eval/device context for models, the ``functional_call`` parameter split,
progress bars, learning-rate schedules and the Gram-matrix eigendecomposition.
Persistence (atomic writes, checksums) lives in :mod:`dntk.store`, not here.

Sections are owned by the module that introduced them; add new helpers at the end of the
section they belong to, with a numpydoc docstring.
"""
from __future__ import annotations

# --- input checking -----------------------------------------------------------------------

# --- models: eval/device context, functional_call parameter split --------------------------

# --- progress bars and schedules ------------------------------------------------------------

# --- linear algebra: Gram-matrix eigendecomposition -----------------------------------------
