"""The base of every scenario section: a frozen pydantic model that refuses unknown names.

Frozen, so a scenario cannot drift while a simulation reads it; ``extra="forbid"``, so a typo in
a field name is an error naming it (:func:`sdsim.errors.format_validation_error`); no NaN or
infinity anywhere.
"""

from __future__ import annotations

__all__ = ["Frozen"]

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """A scenario section: frozen, closed to unknown fields, finite numbers only."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
