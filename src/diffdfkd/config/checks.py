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


def check_prompt_template(template: str) -> None:
    """A class template names ``{label}`` and no other placeholder (``{{``/``}}`` are literal braces)."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ConfigError(
            f"generator.prompt_template={template!r} is not a valid template: {error}"
        ) from None
    if fields != {"label"}:
        unknown = sorted(fields - {"label"})
        raise ConfigError(
            f"generator.prompt_template={template!r} "
            + (f"has unknown placeholders {unknown}" if unknown else "must contain '{label}'")
            + "; the only placeholder is {label} (the class name), e.g. 'a photo of a {label}'"
        )
