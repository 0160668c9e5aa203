"""Base for every component's config model: frozen, no unknown keys, described fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ComponentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
