"""One model family's strings: what Magpie needs to prompt and stop a chat model.

The record alone, so the template reader (:mod:`magpie_dl.templates.chat`), the prompts and
the table (:mod:`magpie_dl.templates.families`) can all use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


class UnknownFamilyError(ValueError):
    """A named model family is not in the table."""


@dataclass(frozen=True)
class ModelFamily:
    """What Magpie needs to know about one chat-template family.

    Most of it is read from the model's own chat template
    (:mod:`magpie_dl.templates.chat`); a table entry adds what a template cannot tell
    (first-token bans, a default system prompt, the reference's quirks) and names the
    strings the template must render for the entry to be used.

    Attributes:
        name: the family's name (``llama-3.1``; ``derived`` when read from the template only).
        bos: the literal BOS string the templates start with ("" when none).
        user_header: the user-turn opening that follows the BOS or a system block.
        system_template: a system block with ``{system}`` in it, rendered *before* the
            user header; ``None`` where the system prompt goes elsewhere or nowhere.
        system_in_user: the system prompt folded into the user turn (Gemma 3), with
            ``{system}``, written right after the user header.
        stop: stop strings for query sampling (end/turn markers, ``assistant``).
        response_stop: stop strings for response sampling (end/turn markers only).
        first_token_ban: strings banned at the first generated position of a query.
        assistant_header: what closes the user turn and opens the assistant's.
        thinking_header: the same with thinking on (Qwen3); ``None``: no thinking switch.
        default_system: a system prompt the family's queries need by default.
        stop_at_newline: also stop query sampling at the first ``\\n`` by default.
        template_default_block: the family's template inserts a system block of its own
            when a conversation has none (whether or not the family's prompts use it).
        template_default: the system prompt of that block, when the table knows it
            ("" for an empty one); checked against the template.
        use_template_default: the family's default system prompt is its template's.
        reference_spacing: the reference spells this family's markup with other
            whitespace than its template (SentencePiece-era decoding); compared without it.
        source: ``table`` or ``derived`` (read from the chat template alone).
        note: why the family in use is not the table's, in one line ("" when it is).
        template_date: the date "today" rendered as, when the template renders one.
        turn_end: what closes an assistant turn before the next user header, as the template
            renders it ("" when the template was not read: such a family writes one turn only).
    """

    name: str
    bos: str
    user_header: str
    system_template: str | None
    stop: tuple[str, ...]
    response_stop: tuple[str, ...]
    first_token_ban: tuple[str, ...] = ()
    # Closes the user turn and opens the assistant's (the Magpie response prompt).
    assistant_header: str = ""
    thinking_header: str | None = None
    system_in_user: str | None = None
    # A fixed system block the family's queries need (qwen2.5 degrades without it).
    default_system: str | None = None
    # The reference's "early stopping": its query writer stops at the first "\n" (models
    # sometimes answer right after one) unless a family's script turns that off, as the
    # llama-3.1 / 3.3 and gemma-2 scripts do.
    stop_at_newline: bool = False
    template_default_block: bool = False
    template_default: str | None = None
    use_template_default: bool = False
    reference_spacing: bool = False
    source: str = "table"
    note: str = ""
    template_date: str | None = None
    turn_end: str = ""

    def query_stop(self, newline: bool) -> tuple[str, ...]:
        """Stop strings for query sampling, with ``"\\n"`` added when ``newline``."""
        return self.stop + ("\n",) if newline else self.stop

    @property
    def pre_query_template(self) -> str:
        """The left part of the chat template, up to where a user message starts."""
        return self.pre_query_prompt(self.default_system)

    def pre_query_prompt(self, system_prompt: str | None = None) -> str:
        """The pre-query prompt, with ``system_prompt`` where the template puts one.

        That is a system block before the user header, or (Gemma 3) the system prompt
        at the start of the user turn, as the template folds it.
        """
        if system_prompt is None:
            system_prompt = self.default_system
        if system_prompt is None:
            return self.bos + self.user_header
        if self.system_template is not None:
            return self.bos + self.system_template.replace("{system}", system_prompt, 1) + self.user_header
        if self.system_in_user is not None:
            return self.bos + self.user_header + self.system_in_user.replace("{system}", system_prompt, 1)
        raise ValueError(f"family {self.name!r} has no system role; drop the system prompt")

    def response_header(self, thinking: bool = False) -> str:
        """What follows the instruction in the response prompt, thinking on or off."""
        if thinking and self.thinking_header is None:
            raise ValueError(f"family {self.name!r} has no thinking switch; drop --responses.thinking")
        return self.thinking_header if thinking else self.assistant_header
