"""What Magpie needs, read from a model's own chat template.

The template is rendered over a few sentinel conversations (one user turn; user,
assistant, user; user and assistant closed; a system prompt and a user turn) and cut
at the sentinels. What lies between them is the template's markup:

* the BOS the template writes, and the system block it inserts when none is given;
* the user-turn header (the pre-query prompt ends with it);
* what closes the user turn and opens the assistant's (the response prompt), with and
  without thinking where the template has an ``enable_thinking`` switch;
* what closes a turn (the stop strings);
* where a system prompt goes: a block before the user header, or folded into the user
  turn (Gemma), or nowhere (the template refuses or drops it).

Strings are compared in *atoms*: a special (added) token is one atom, any other
character is one atom, so a common prefix never cuts a control token in half.
Token ids are resolved later from the same tokenizer (:mod:`magpie_dl.templates.prompts`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from magpie_dl.templates.family import ModelFamily
from magpie_dl.templates.prompts import DEFAULT_TEMPLATE_DATE, render_chat

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class ChatTemplateError(ValueError):
    """The tokenizer has no chat template, or its template cannot be read as turns."""


# Invisible separators around ASCII: no template writes them, and `trim` keeps them.
_USER, _USER2, _ASSISTANT, _SYSTEM = (f"\u2063MAGPIE_DL_{name}\u2063" for name in ("USER", "USER2", "ASSISTANT", "SYSTEM"))
SYSTEM_SLOT = "{system}"
# Any other ISO date: a template whose rendering changes with it renders "today".
_OTHER_DATE = "2001-02-03"


@dataclass(frozen=True)
class TemplateParts:
    """The markup of one chat template, cut at the sentinels (see the module docstring).

    Attributes:
        bos: the BOS token the template writes first ("" when it writes none).
        default_block: the system block the template inserts when a conversation has no
            system message ("" when none), as rendered.
        default_system: that block's system prompt ("" for an empty one), or ``None``
            when there is no block or it does not read as the template's system block.
        user_header: what opens a user turn.
        assistant_header: what closes the user turn and opens the assistant's
            (thinking off where the template has a switch).
        thinking_header: the same with thinking on; ``None`` when the template has no switch.
        turn_end: what closes an assistant turn.
        system_template: a system block with ``{system}`` rendered before the user
            header; ``None`` when the template puts the system prompt elsewhere or nowhere.
        system_in_user: the system prompt folded into the first user turn, with
            ``{system}``, written right after the user header; ``None`` otherwise.
        dated: the rendering changes with "today" (it was pinned to ``template_date``).
        template_date: the date "today" rendered as.
        eos: the tokenizer's EOS token, if any.
        special_atoms: the tokenizer's special and added tokens (longest first).
    """

    bos: str
    default_block: str
    default_system: str | None
    user_header: str
    assistant_header: str
    thinking_header: str | None
    turn_end: str
    system_template: str | None
    system_in_user: str | None
    dated: bool
    template_date: str
    eos: str | None
    special_atoms: tuple[str, ...] = ()

    def turn_end_tokens(self) -> tuple[str, ...]:
        """The special tokens that close a turn (the turn end's text when it has none)."""
        specials = tuple(a for a in split_atoms(self.turn_end, self.special_atoms) if a in self.special_atoms)
        if specials:
            return specials
        return (self.turn_end.strip(),) if self.turn_end.strip() else ()

    def response_stop(self) -> tuple[str, ...]:
        """End of turn, the token that opens the next turn, and EOS: where a response stops."""
        opener = split_atoms(self.user_header, self.special_atoms)[:1]
        stops = [*self.turn_end_tokens(), *(a for a in opener if a in self.special_atoms)]
        if self.eos:
            stops.append(self.eos)
        return tuple(dict.fromkeys(s for s in stops if s))


@lru_cache(maxsize=16)
def _atom_pattern(specials: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))


def split_atoms(text: str, specials: tuple[str, ...]) -> list[str]:
    """``text`` as atoms: each special token whole, every other character alone."""
    if not specials:
        return list(text)
    pattern = _atom_pattern(specials)
    atoms: list[str] = []
    pos = 0
    for match in pattern.finditer(text):
        atoms.extend(text[pos:match.start()])
        atoms.append(match.group(0))
        pos = match.end()
    atoms.extend(text[pos:])
    return atoms


def _common_prefix(a: list[str], b: list[str]) -> list[str]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer carries a chat template (one, or a default among several)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "default" in template
    return bool(template)


def _specials(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    tokens |= set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    return tuple(sorted((t for t in tokens if t), key=len, reverse=True))


def _prepends_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether encoding plain text (special tokens on) puts the BOS token first."""
    if not getattr(tokenizer, "bos_token", None) or tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _cut(rendered: str, *sentinels: str) -> list[str]:
    """``rendered`` split at each sentinel in turn (each must occur exactly once)."""
    pieces: list[str] = []
    rest = rendered
    for sentinel in sentinels:
        head, sep, rest = rest.partition(sentinel)
        if not sep or sentinel in rest:
            raise ChatTemplateError("the chat template does not render each message exactly once")
        pieces.append(head)
    return pieces + [rest]


def derive_parts(
    tokenizer: PreTrainedTokenizerBase, template_date: str = DEFAULT_TEMPLATE_DATE
) -> TemplateParts:
    """Cut the tokenizer's chat template at sentinel messages (see the module docstring).

    Raises :class:`ChatTemplateError` (one line) when there is no template or its turns
    cannot be found.
    """
    if not has_chat_template(tokenizer):
        raise ChatTemplateError(
            "the tokenizer has no chat template: Magpie needs one to find the pre-query prompt "
            "(name a family with --generator.family, or use a chat model's tokenizer)"
        )
    specials = _specials(tokenizer)

    def render(messages: list[dict[str, str]], *, gen: bool = True, thinking: bool = False,
               day: str = template_date) -> str:
        try:
            return render_chat(tokenizer, messages, add_generation_prompt=gen, template_date=day,
                               enable_thinking=thinking)
        except ChatTemplateError:
            raise
        except Exception as exc:  # a template may refuse a conversation (raise_exception)
            raise ChatTemplateError(f"the chat template cannot render it: {str(exc).splitlines()[0]}") from None

    user = [{"role": "user", "content": _USER}]
    pre, assistant_header = _cut(render(user), _USER)
    thinking_header: str | None = _cut(render(user, thinking=True), _USER)[1]
    if thinking_header == assistant_header:
        thinking_header = None
    dated = render(user, day=_OTHER_DATE) != render(user)

    closed = _cut(render(user + [{"role": "assistant", "content": _ASSISTANT}], gen=False), _USER, _ASSISTANT)[2]
    try:
        between = _cut(render(user + [{"role": "assistant", "content": _ASSISTANT},
                                      {"role": "user", "content": _USER2}]), _USER, _ASSISTANT, _USER2)[2]
    except ChatTemplateError:
        between = ""  # a template with one user turn only: the header comes from `pre` alone
    pre_atoms = split_atoms(pre, specials)
    if between:
        turn_end = "".join(_common_prefix(split_atoms(closed, specials), split_atoms(between, specials)))
        user_header = between[len(turn_end):]
        if not pre.endswith(user_header):
            # The first user turn is opened differently: take what both openings end with.
            common = _common_prefix(pre_atoms[::-1], split_atoms(user_header, specials)[::-1])
            user_header = "".join(common[::-1])
    else:
        turn_end, user_header = closed, ""
    if not user_header.strip():
        raise ChatTemplateError("the chat template writes no user-turn header; name a family with --generator.family")
    head = pre[: len(pre) - len(user_header)]
    head_atoms = split_atoms(head, specials)
    header_atoms = set(split_atoms(user_header, specials))
    bos = head_atoms[0] if head_atoms and head_atoms[0] in specials and head_atoms[0] not in header_atoms else ""
    written_bos = bos
    default_block = head[len(bos):]
    if not bos and _prepends_bos(tokenizer) and tokenizer.bos_token not in header_atoms:
        # The template writes none, but the tokenizer puts BOS before every text it
        # encodes (Phi-3): the model was trained with it, as the reference's prompt has it.
        bos = tokenizer.bos_token

    system_template = system_in_user = None
    try:
        system_pre = _cut(render([{"role": "system", "content": _SYSTEM}] + user), _USER)[0]
    except ChatTemplateError:
        system_pre = ""  # the template refuses a system role
    if system_pre.count(_SYSTEM) == 1 and system_pre.startswith(written_bos):
        block = system_pre[len(written_bos):]
        if block.startswith(user_header):
            system_in_user = block[len(user_header):].replace(_SYSTEM, SYSTEM_SLOT)
        elif block.endswith(user_header):
            system_template = block[: len(block) - len(user_header)].replace(_SYSTEM, SYSTEM_SLOT)

    default_system = None
    if default_block and system_template is not None:
        before, after = system_template.split(SYSTEM_SLOT)
        if default_block.startswith(before) and default_block.endswith(after) and len(default_block) >= len(before) + len(after):
            default_system = default_block[len(before): len(default_block) - len(after)]
    return TemplateParts(
        bos=bos,
        default_block=default_block,
        default_system=default_system,
        user_header=user_header,
        assistant_header=assistant_header,
        thinking_header=thinking_header,
        turn_end=turn_end,
        system_template=system_template,
        system_in_user=system_in_user,
        dated=dated,
        template_date=template_date,
        eos=getattr(tokenizer, "eos_token", None) or None,
        special_atoms=specials,
    )


# The reference stops query sampling on the literal "assistant" too (the model sometimes
# starts answering itself); derived families keep that.
_QUERY_EXTRA_STOPS = ("assistant",)


def derived_family(parts: TemplateParts, note: str = "") -> ModelFamily:
    """A family made only of what the template renders (name ``derived``).

    The template's default system block is kept before the user header (the model as
    deployed: SmolLM2 writes code fragments without its block). A default block that does
    not read as a system block stays as markup after the BOS.
    """

    bos, default_system = parts.bos, parts.default_system  # "" is a default: an empty system block
    if parts.default_block and parts.default_system is None:
        bos += parts.default_block
    response_stop = parts.response_stop()
    # A header of plain text ("### Response:") is where a query runs into an answer.
    header_atoms = split_atoms(parts.assistant_header, parts.special_atoms)
    plain = () if any(a in parts.special_atoms for a in header_atoms) else tuple(
        line.strip() for line in parts.assistant_header.splitlines() if line.strip()
    )
    return ModelFamily(
        name="derived",
        bos=bos,
        user_header=parts.user_header,
        system_template=parts.system_template,
        system_in_user=parts.system_in_user,
        assistant_header=parts.assistant_header,
        thinking_header=parts.thinking_header,
        stop=tuple(dict.fromkeys(response_stop + plain + _QUERY_EXTRA_STOPS)),
        response_stop=response_stop,
        default_system=default_system,
        source="derived",
        note=note,
        template_date=parts.template_date if parts.dated else None,
        turn_end=parts.turn_end,
    )


def _squash(text: str | None) -> str | None:
    """``text`` without whitespace: the reference's spellings differ from templates only there."""
    return None if text is None else "".join(text.split())


def mismatches(family: ModelFamily, parts: TemplateParts) -> list[str]:
    """Where ``family``'s strings differ from what the template renders ([] when they match).

    Prompt strings must be equal (up to whitespace for a family whose reference spelling
    differs there: phi-3, mistral-v0.3, gemma-2). A family's system block may leave out
    fixed lines the template's adds (Llama-3.1's knowledge-cutoff lines). The template's
    end of turn must be one of the family's response stops.
    """
    same = (lambda a, b: _squash(a) == _squash(b)) if family.reference_spacing else (lambda a, b: a == b)
    found: list[str] = []
    for name, mine, theirs in [
        ("bos", family.bos, parts.bos),
        ("user header", family.user_header, parts.user_header),
        ("assistant header", family.assistant_header, parts.assistant_header),
    ]:
        if not same(mine, theirs):
            found.append(f"{name} {mine!r} but the template renders {theirs!r}")
    if (family.thinking_header is None) != (parts.thinking_header is None) or (
        family.thinking_header is not None and not same(family.thinking_header, parts.thinking_header)
    ):
        found.append(f"thinking header {family.thinking_header!r} but the template renders {parts.thinking_header!r}")
    if bool(parts.default_block) != family.template_default_block:
        found.append("default system block " + ("missing from the template" if family.template_default_block
                                                 else f"{parts.default_block!r} not expected"))
    else:
        expected = family.template_default if family.template_default is not None else family.default_system
        if parts.default_block and expected is not None and parts.default_system != expected:
            found.append(f"default system prompt {expected!r} but the template's is {parts.default_system!r}")
    if family.system_template is not None:
        before, after = family.system_template.split(SYSTEM_SLOT)
        theirs = parts.system_template
        fold = _squash if family.reference_spacing else (lambda text: text)
        if theirs is None or not (
            fold(theirs.split(SYSTEM_SLOT)[0]).startswith(fold(before))
            and fold(theirs.split(SYSTEM_SLOT)[1]).endswith(fold(after))
        ):
            found.append(f"system block {family.system_template!r} but the template renders {theirs!r}")
    elif family.system_in_user is not None:
        if not same(family.system_in_user, parts.system_in_user):
            found.append(f"system prompt in the user turn as {family.system_in_user!r}, the template: {parts.system_in_user!r}")
    elif parts.system_template is not None or parts.system_in_user is not None:
        # An entry without a system role would refuse the system prompt the template takes.
        where = (f"a block {parts.system_template!r}" if parts.system_template is not None
                 else f"the user turn as {parts.system_in_user!r}")
        found.append(f"no system role but the template renders a system prompt in {where}")
    ends = parts.turn_end_tokens()
    if ends and not set(ends) & set(family.response_stop):
        found.append(f"the template ends turns with {'/'.join(ends)!r}, not among the family's stops")
    return found


def with_template(family: ModelFamily, parts: TemplateParts, **changes: Any) -> ModelFamily:
    """``family`` where it follows its template: the template's default system prompt and date."""
    from dataclasses import replace

    if family.use_template_default:
        changes.setdefault("default_system", parts.default_system or None)
    changes.setdefault("turn_end", parts.turn_end)
    return replace(family, template_date=parts.template_date if parts.dated else None, **changes)


_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def split_thinking(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a response written with thinking on, both stripped.

    The ``<think>...</think>`` block at the start is the reasoning (also when the
    generation prompt opened it, so only ``</think>`` was written); a block never closed
    (the response ran out of tokens) is all reasoning and leaves no answer. A response
    without a block has ``None`` reasoning.
    """
    body = text.strip()
    if body.startswith(_THINK_OPEN):
        body = body[len(_THINK_OPEN):]
    elif _THINK_CLOSE not in body:
        return None, body
    reasoning, closed, answer = body.partition(_THINK_CLOSE)
    if not closed:
        return reasoning.strip(), ""
    return reasoning.strip(), answer.strip()
