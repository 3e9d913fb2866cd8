"""The value checks every config section uses, and ``ConfigError``."""

from __future__ import annotations

import math
import string

from diffdfkd.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used, with a message saying what was wrong."""


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose from {', '.join(choices)}")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        finite = "a finite number " if isinstance(value, float) else ""
        raise ConfigError(f"{name}={value!r} must be {finite}{'>= 0' if allow_zero else '> 0'}")


def check_prompt_template(template: str, styled: bool = False) -> None:
    """A class template names ``{label}``, and ``{style}`` exactly when ``generator.prompt_styles`` is set
    (``styled``); no other placeholder (``{{``/``}}`` are literal braces)."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ConfigError(
            f"generator.prompt_template={template!r} is not a valid template: {error}"
        ) from None
    expected = {"label", "style"} if styled else {"label"}
    if fields == expected:
        return
    unknown = sorted(fields - expected)
    if unknown == ["style"]:
        problem = "names {style} but generator.prompt_styles is empty"
    elif unknown:
        problem = f"has unknown placeholders {unknown}"
    else:
        problem = "must contain " + " and ".join(f"'{{{f}}}'" for f in sorted(expected - fields))
        if styled:
            problem += " (generator.prompt_styles is set)"
    example = "'a {style} of a {label}'" if styled else "'a photo of a {label}'"
    raise ConfigError(
        f"generator.prompt_template={template!r} {problem}; the placeholders are {{label}} (the class "
        f"name) and, with generator.prompt_styles, {{style}}, e.g. {example}"
    )
