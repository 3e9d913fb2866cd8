"""One small generic registry: name -> factory, used for models, worlds and synthetic-data sources."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from diffdfkd.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
    """A name that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to factories, given as one explicit table; ``create(name, **kw)`` builds one.

    Example::

        MODELS = Registry("model", {"resnet18": resnet18, "lenet5": lenet5})
        MODELS.create("resnet18", num_classes=10)

    Nothing registers itself by being imported: the table names every entry.
    """

    def __init__(self, kind: str, factories: dict[str, Callable[..., T]]) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = dict(factories)

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._factories:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._factories[name]

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
