"""The shared shape of a config section's own rules: each section dataclass has a `problems()`
method returning `Problem`s, built with the helpers below; launch/config_checks.py collects them
from every section, adds the cross-section rules and says where each value was set.

Lives in ops/, the lowest layer, so that every package's config schema may use it.
"""

import difflib
from collections.abc import Iterable

# (one-line message, the dotted keys it is about: their sources are named after the message)
Problem = tuple[str, tuple[str, ...]]


def choice_problems(section, prefix: str, choices: dict[str, tuple]) -> list[Problem]:
    """A field outside its choices, with the nearest choice when one is close."""
    problems = []
    for name, allowed in choices.items():
        value = getattr(section, name)
        if value in allowed:
            continue
        close = difflib.get_close_matches(str(value), [str(c) for c in allowed], n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append((f"{prefix}.{name} must be one of {' | '.join(map(str, allowed))}, "
                         f"got {value!r}{hint}", (f"{prefix}.{name}",)))
    return problems


def range_problems(section, prefix: str, minimums: dict[str, float],
                   positives: Iterable[str] = ()) -> list[Problem]:
    """A number below its smallest allowed value, or a must-be-positive one that is not (NaN
    fails both)."""
    problems = []
    for name, minimum in minimums.items():
        value = getattr(section, name)
        if not value >= minimum:
            problems.append((f"{prefix}.{name} must be >= {minimum}, got {value}", (f"{prefix}.{name}",)))
    for name in positives:
        value = getattr(section, name)
        if not value > 0:
            problems.append((f"{prefix}.{name} must be > 0, got {value}", (f"{prefix}.{name}",)))
    return problems
