"""The references still readable from an entry that failed validation.

An invalid entry has no config, but most of its fields are usually fine. Each field
is validated on its own (a nested model field that fails is read field by field in
turn), and the kind's own ``references()`` is asked of a model built, without
validation, from the fields that passed. The loader then reports a missing or
wrong-kind reference in the same run as the entry's field errors, not after they
are fixed. A field that fails, or is missing, takes no part: it names nothing.
"""

from __future__ import annotations

from typing import Any, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from wippy_queue.registry.entry import EntryModel, Reference


def written_references(
    model: type[EntryModel], data: dict[str, Any], context: dict[str, Any]
) -> list[Reference]:
    """The references of ``data`` (an entry as written) that its valid fields make."""
    partial = _construct(model, data, context)
    assert isinstance(partial, EntryModel)
    try:
        refs = partial.references()
    except Exception:
        # a half-built model may not answer (a field it reads is missing); the
        # entry's own problems are reported, and it names nothing we can check
        return []
    return [ref for ref in refs if isinstance(ref.target, str)]


def _construct(model: type[BaseModel], data: dict[Any, Any], context: dict[str, Any]) -> BaseModel:
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        value = _field(info, data[name], context) if name in data else None
        if value is not None or info.is_required():
            values[name] = value  # a required field that failed is None: it names nothing
    return model.model_construct(**values)


def _field(info: FieldInfo, value: Any, context: dict[str, Any]) -> Any:
    """``value`` validated as the field's type, else read field by field, else None."""
    try:
        return TypeAdapter(info.rebuild_annotation()).validate_python(value, context=context)
    except ValidationError:
        nested = _nested_model(info.annotation)
        if nested is not None and isinstance(value, dict):
            return _construct(nested, value, context)
        return None


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The one model class in ``X`` or ``X | None`` (None for lists, dicts, scalars)."""
    options = get_args(annotation) if get_origin(annotation) is not None else (annotation,)
    models = [
        option for option in options if isinstance(option, type) and issubclass(option, BaseModel)
    ]
    return models[0] if len(models) == 1 else None
