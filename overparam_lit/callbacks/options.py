"""Study callbacks that take their settings as one options dataclass.

A study's settings are written once: as the fields of a frozen dataclass, with their types and
defaults, and an ``Args:`` entry each in the docstring of the dataclass that declares the field.
:func:`takes_options` lets a callback take that dataclass, ``IterativeMagnitudePruning(ImpOptions(
levels=2))``, or its fields as keywords, ``IterativeMagnitudePruning(levels=2)``, and presents the
fields to ``inspect.signature`` (and so to jsonargparse) as the callback's own keyword parameters:
configs stay flat (``init_args: {levels: 3}``, ``--trainer.callbacks.levels 4``) and
``--trainer.callbacks.help`` lists every field with its type, default and description.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

Cls = TypeVar("Cls", bound=type)


def option_fields(options_type: type) -> list[dataclasses.Field]:
    """The fields of an options dataclass that a caller sets (its ``init`` fields), in order."""
    return [f for f in dataclasses.fields(options_type) if f.init]


def options_signature(options_type: type) -> inspect.Signature:
    """``(self, *, name: type = default, ...)``: the fields of ``options_type`` as keyword
    parameters, with their types resolved (jsonargparse reads them as written)."""
    hints = typing.get_type_hints(options_type)
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in option_fields(options_type):
        default: Any = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        elif default is dataclasses.MISSING:
            default = inspect.Parameter.empty
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=hints[f.name]))
    return inspect.Signature(params, return_annotation=None)


def _args_entries(doc: str | None) -> list[str]:
    """The lines of a Google-style docstring's ``Args:`` section (indented as written)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    if "Args:" not in lines:
        return []
    entries: list[str] = []
    for line in lines[lines.index("Args:") + 1:]:
        if line and not line[0].isspace():
            break
        entries.append(line)
    while entries and not entries[-1]:
        entries.pop()
    return entries


def options_doc(options_type: type) -> str:
    """The docstring of a callback's ``__init__``: one ``Args:`` section with the entry of every
    field of ``options_type``, each taken from the dataclass that declares it."""
    entries = [line for cls in reversed(options_type.__mro__) if dataclasses.is_dataclass(cls)
               for line in _args_entries(cls.__dict__.get("__doc__"))]
    return (f"Take one :class:`~{options_type.__module__}.{options_type.__qualname__}`, or its fields as "
            "keywords.\n\nArgs:\n" + "\n".join(entries))


def takes_options(options_type: type) -> Callable[[Cls], Cls]:
    """Class decorator of a callback whose ``__init__(self, options)`` takes one ``options_type``.

    The decorated ``__init__`` is ``(self, options=None, /, **fields)``: it passes ``options`` on,
    or builds ``options_type(**fields)`` (by keyword, so the dataclass checks them), and presents
    the fields as its signature (:func:`options_signature`) and its docstring
    (:func:`options_doc`). Bad settings raise what the dataclass raises, at construction.
    """
    names = [f.name for f in option_fields(options_type)]

    def decorate(cls: Cls) -> Cls:
        body = cls.__init__

        def __init__(self: Any, options: Any = None, /, **fields: Any) -> None:
            if options is None:
                unknown = sorted(set(fields) - set(names))
                if unknown:
                    raise TypeError(f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; its "
                                    f"options are {', '.join(names)}")
                options = options_type(**fields)
            elif fields or not isinstance(options, options_type):
                raise TypeError(f"{cls.__name__} takes one {options_type.__name__} or its fields as "
                                f"keywords, not {type(options).__name__}"
                                + (f" and {', '.join(fields)}" if fields else ""))
            body(self, options)

        __init__.__signature__ = options_signature(options_type)  # type: ignore[attr-defined]
        __init__.__doc__ = options_doc(options_type)
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__  # type: ignore[misc]
        return cls

    return decorate
