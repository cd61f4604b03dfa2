"""The base of every scenario section: a frozen pydantic model that refuses unknown names.

Frozen, so a scenario cannot drift while a simulation reads it; ``extra="forbid"``, so a typo in
a field name is an error naming it (:func:`sdsim.errors.format_validation_error`); no NaN or
infinity anywhere.
"""

from __future__ import annotations

__all__ = ["Frozen", "PathStr"]

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


class Frozen(BaseModel):
    """A scenario section: frozen, closed to unknown fields, finite numbers only."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _path_like(v: Any) -> Any:
    # a file path (or a registry name) the operating system can be asked about: stat() of a
    # name with a NUL byte or longer than the system allows raises instead of answering "no"
    if isinstance(v, str) and (
        "\0" in v or len(v) > 4096 or any(len(part) > 255 for part in v.split("/"))
    ):
        raise ValueError(
            "not a usable file path or name (a NUL byte, or longer than 4096 characters or 255 "
            "per component)"
        )
    return v


PathStr = Annotated[str, BeforeValidator(_path_like)]
