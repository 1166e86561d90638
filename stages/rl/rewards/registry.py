"""Verifier registry: a dataset's `domain` names its verifier; recipes add their own by import path.

A verifier is a callable `verifier(answer: str, ground_truth, config: RewardConfig, **info)` returning a
`Verdict` or a float in [0, 1]. `answer` is the boxed text for verifiable domains and the whole
`<answer>` text otherwise. Classes are registered by instantiating them once with no arguments.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Callable

from .config import RewardConfig
from .types import RewardConfigError, UnknownVerifierError

Verifier = Callable[..., Any]
_REGISTRY: dict[str, Verifier] = {}
# Kinds of question as public sets name them (Video-R1's `problem_type`) -> the verifier that grades
# them; other names are read as a verifier's after case, spaces and hyphens ("multiple choice", "OCR")
PUBLISHED_KINDS = {"numerical": "math", "regression": "mra", "free_form": "rouge"}


def _instantiate(obj: Any, origin: str) -> Verifier:
    verifier = obj() if isinstance(obj, type) else obj
    if not callable(verifier):
        raise RewardConfigError(f"verifier {origin!r} is not callable: {type(verifier).__name__}")
    return verifier


def _identity(verifier: Verifier) -> tuple[str, str]:
    return getattr(verifier, "__module__", ""), getattr(verifier, "__qualname__", type(verifier).__qualname__)


def register_verifier(name: str, *, overwrite: bool = False) -> Callable[[Any], Any]:
    """Decorator: `@register_verifier("my_domain")` on a function or a class; returns it unchanged."""

    def decorate(obj: Any) -> Any:
        verifier = _instantiate(obj, name)
        current = _REGISTRY.get(name)
        # Re-importing the defining module registers the same definition again; that is not a clash.
        if current is not None and _identity(current) != _identity(verifier) and not overwrite:
            raise RewardConfigError(f"a verifier named {name!r} is already registered; pass overwrite=True")
        _REGISTRY[name] = verifier
        return obj

    return decorate


def get_verifier(name: str) -> Verifier:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownVerifierError(f"no verifier named {name!r}; registered: {sorted(_REGISTRY)}") from None


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def load_object(path: str) -> Any:
    """Import "package.module:attr" (attr may be dotted) with importlib; no eval."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise RewardConfigError(f"expected 'package.module:attr', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise RewardConfigError(f"cannot load {path!r}: {err}") from err
    return obj


@lru_cache(maxsize=256)
def load_verifier(path: str) -> Verifier:
    """The verifier at import path "package.module:attr" (a class is instantiated once, with no arguments)."""
    return _instantiate(load_object(path), path)


def resolve_verifier(domain: str, config: RewardConfig) -> Verifier:
    """The verifier for a dataset domain: its entry in config.domain_verifiers (a registered name or
    an import path), else the domain itself when it names a verifier (or is an import path), else
    config.default_verifier. A domain is also found as its canonical name (lower case, "_" for spaces
    and hyphens: Video-R1's "multiple choice", "OCR"), in the mapping and among the verifiers, and
    Video-R1's "numerical" / "regression" / "free-form" are graded by math / mra / rouge."""
    canonical = _canonical(domain)
    target = config.domain_verifiers.get(domain)
    if target is None and (domain in _REGISTRY or ":" in domain):
        target = domain  # exact names first: a mapping of "Math" does not take the registered "math"
    if target is None:
        target = {_canonical(k): v for k, v in config.domain_verifiers.items()}.get(canonical)
    if target is None and (kind := PUBLISHED_KINDS.get(canonical, canonical)) in _REGISTRY:
        target = kind
    if target is None:
        target = config.default_verifier or domain
    return load_verifier(target) if ":" in target else get_verifier(target)


def _canonical(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


def check_domains(domains: Iterable[str], config: RewardConfig) -> None:
    """Every domain of a prompt set has a verifier, or one clear error before any rollout (not a
    crash when the first response of that domain is scored)."""
    counts = Counter(domains)
    unknown, broken = [], []
    for domain in sorted(counts):
        try:
            resolve_verifier(domain, config)
        except UnknownVerifierError:
            unknown.append(f"{domain!r} ({counts[domain]} records)")
        except RewardConfigError as err:  # a mapping to an import path that does not load
            broken.append(f"{domain!r}: {err}")
    problems = []
    if unknown:
        problems.append(
            f"no verifier for the domain(s) {', '.join(unknown)}: map each to a registered verifier "
            f"({', '.join(registered_names())}) or an import path (`++rewards.domain_verifiers.<domain>=<name>`), "
            f"or set `rewards.default_verifier=<name>`; if the set's `domain` column is a category, not a "
            f"verifier, `data.columns.domain=''` reads every row as data.domain")
    problems += broken
    if problems:
        raise RewardConfigError("; ".join(problems))
