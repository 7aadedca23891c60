"""`Section`, the base of every config section: unknown keys, NaN/inf and partial overrides."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class Section(BaseModel):
    # allow_inf_nan=False: NaN or inf in any float field (nested, optional, in a tuple or a dict) is
    # an error; YAML's .nan/.inf and an override's `lr=nan` would otherwise reach the optimizer.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _start_from_section_defaults(cls, data: Any) -> Any:
        """A partial mapping for a section whose default sets fields of its own (placement.reward's
        num_cpus=0.25, a stage's lr=1e-3) fills the rest from that default, not from the section
        class: `placement.reward.num_gpus=1` keeps num_cpus=0.25."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, info in cls.model_fields.items():
            if isinstance(info.default, BaseModel) and isinstance(data.get(name), dict):
                merged[name] = _deep_merge(info.default.model_dump(exclude_unset=True), data[name])
        return merged


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if both else value
    return out
