"""Pure logic behind Magpie query synthesis: seeds, system prompts, row ids.

Every random choice is a function of (run seed, row index) or (run seed, row uuid), so
a row's prompt, system prompt and sampling seed do not depend on batching, on
replicas, or on what a resumed run already had.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

# Magpie's control tasks: a system prompt steers the queries toward one kind of task.
CONTROL_TASKS: dict[str, str] = {
    "math": (
        "You are an AI assistant designed to provide helpful, step-by-step guidance on solving "
        "math problems. The user will ask you a wide range of complex mathematical questions."
    ),
    "code": (
        "You are an AI assistant designed to help with programming tasks. The user will engage "
        "in a multi-round conversation with you, asking questions about writing, debugging and "
        "explaining code."
    ),
    "translation": (
        "You are an AI assistant specifically designed to provide accurate and contextually "
        "appropriate translations. Users will ask you to translate text between languages."
    ),
}

_NAMESPACE = uuid.UUID("5c0f2d38-6d1b-4c7e-9a9e-4f1d2e6b7a10")


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (unlike ``hash()``, equal across processes)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def row_uuid(model: str, seed: int, index: int) -> str:
    """A row's id: unique per (generator model, run seed, row index), stable across reruns."""
    return str(uuid.uuid5(_NAMESPACE, f"{model}\x1f{seed}\x1f{index}"))


def instruction_uuid(instruction: str) -> str:
    """The id of a row that came without one: derived from its instruction text, so stable across reruns."""
    return str(uuid.uuid5(_NAMESPACE, f"instruction\x1f{instruction}"))


@dataclass(frozen=True)
class SystemPromptPlan:
    """Which system prompt each row gets: none, one fixed, or weighted categories.

    ``choices`` maps a category to (system prompt, weight); ``None`` as a prompt means
    "no system block" for that category.
    """

    choices: tuple[tuple[str, str | None, float], ...] = ()

    @classmethod
    def build(
        cls,
        system_prompt: str | None = None,
        weighted: Mapping[str, tuple[str | None, float]] | None = None,
        control_task: str | None = None,
    ) -> SystemPromptPlan:
        """Exactly one of the three (or none) may be given."""
        given = [x is not None for x in (system_prompt, weighted, control_task)]
        if sum(given) > 1:
            raise ValueError("give only one of system_prompt, system_prompts or control_task")
        if control_task is not None:
            if control_task not in CONTROL_TASKS:
                raise ValueError(f"unknown control task {control_task!r}; known: {', '.join(CONTROL_TASKS)}")
            return cls(((control_task, CONTROL_TASKS[control_task], 1.0),))
        if system_prompt is not None:
            return cls((("fixed", system_prompt, 1.0),))
        if weighted:
            bad = [k for k, (_, w) in weighted.items() if not w > 0]
            if bad:
                raise ValueError(f"system prompt weights must be > 0; fix: {', '.join(bad)}")
            return cls(tuple((name, prompt, float(w)) for name, (prompt, w) in weighted.items()))
        return cls()

    def pick(self, seed: int, index: int) -> tuple[str | None, str | None]:
        """(category, system prompt) for row ``index``; (None, None) without a plan."""
        if not self.choices:
            return None, None
        if len(self.choices) == 1:
            return self.choices[0][0], self.choices[0][1]
        rng = random.Random(derive_seed("system", seed, index))
        name, prompt, _ = rng.choices(self.choices, weights=[w for *_, w in self.choices])[0]
        return name, prompt
