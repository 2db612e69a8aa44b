"""Cleaning raw Magpie queries.

A model asked to write a user query sometimes adds an enumerator ("1."), a label
("Question:"), answers itself ("Answer: ..."), leaks the next turn's header, or writes
several queries. The cleaner strips the decorations, cuts only where an answer or a
second turn demonstrably follows the query, records every edit (rule and removed text)
and marks unusable queries with a reason instead of dropping them.

Rules follow the reference's ``instruction_post_process`` (magpie-align/magpie,
``exp/str_utils.py``: its prefixes, answer markers and "# Step 1" markers) where they cut
only what is demonstrably not the query; a marker is never taken where the user plainly
quotes it (after an introducing colon, inside a code block, next to the user's own attempt,
or followed by the user's own question). Each rule, and each difference from the reference,
is a case in ``tests/test_cleaning.py``; the evidence is ``tests/data/*raw_queries.yaml``.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from magpie_dl.recipe import reasons

# The reference's prefixes, then ours. Matched case-insensitively at the very start as
# "Label:", "## Label:", "**Label:**", "**Label**", "Label 2:"; "Question 2." and "Q2." too.
_REFERENCE_PREFIXES = (
    "Task", "Prompt", "Original Prompt", "Question", "The Problem", "Problem", "Scenario",
    "The senario", "Situation", "The situation", "Context", "Challenge", "Query", "Request",
    "Instructions", "Instruction", "Descriptions", "Description",
)
_OUR_PREFIXES = ("User's query", "User's question", "User query", "User question", "User", "Q")
_NAMES = "|".join(re.escape(p) for p in sorted({*_REFERENCE_PREFIXES, *_OUR_PREFIXES}, key=len, reverse=True))
_LABEL = re.compile(
    rf"^(?:#{{1,4}}[ \t]*)?(?:"
    rf"\*\*(?:{_NAMES})(?:[ \t]*\d{{1,3}})?[ \t]*[:：.]?\*\*(?:[ \t]*[:：])?"
    rf"|(?:{_NAMES}|Part[ \t]*\d{{1,3}})(?:[ \t]*\d{{1,3}})?[ \t]*[:：]"
    rf"|(?:Question|Q)[ \t]*\d{{1,3}}\."
    rf")[ \t]*(?:\*\*)?[ \t]*",
    re.IGNORECASE,
)
_ENUMERATOR = re.compile(r"^(?:\d{1,3}[.)]|\(\d{1,3}\)|[A-Za-z]\)|[-*•])[ \t]+")
# A list item on a later line: the leading enumerator then belongs to the user's list.
_ITEM_LINE = re.compile(r"\n[ \t]*(?:\d{1,3}[.)]|\(\d{1,3}\)|[-*•])[ \t]+\S")

# Where the assistant's turn demonstrably starts.
# The next turn's header with its special tokens skipped ("...?assistant\n\nSure, ...").
# Lowercase only, as every family's header writes it ("Assistant" on a line is a word).
_HEADER_LEAK = re.compile(r"(?:(?<=[.?!)\]\"'*`。？！])|(?<=\n))[ \t]*assistant[ \t]*(?=\n|$)")
_ROLE_LABEL = re.compile(r"(?m)^[ \t]*(?:\*\*)?(?:AI Assistant|Assistant|AI)(?:\*\*)?[ \t]*[:：]", re.IGNORECASE)
# A dialogue the user pasted: a role label of theirs before an "Assistant:" line.
_DIALOGUE_LINE = re.compile(
    r"(?m)^[ \t]*(?:\*\*)?(?:User|Human|Customer|Client|Me|Person [AB12])(?:\*\*)?[ \t]*[:：]", re.IGNORECASE
)
# The reference's answer markers (case-sensitive, as there). The ones ending in ":" match
# with a single ":" (the reference required "::"); the others need a ":" after them.
_ANSWER = re.compile(
    r"(?:#{1,4}[ \t]*)?(?:\*\*)?(?:"
    r"(?:Answers?|Explanation|Solution Approach|Solution)(?:\*\*)?[ \t]*[:：]"
    r"|(?:The correct answer|The answer is|Correct answer|Answer is|Here are some)s?(?:\*\*)?[ \t]*[:：]"
    r")"
)
_STEP = re.compile(r"#{1,3}[ \t]*Step 1\b")  # the reference's "# Step 1" markers (Llama-3)
# How an assistant opens an answer, on a line of its own after the query.
_OPENER = re.compile(
    r"(?:Sure|Certainly|Of course|Absolutely|Great question|Good question)[!,.]|I'd be (?:happy|glad) to help"
)
# An opener that answers the question right before it, on the same line or the next
# ("...data analysis? Absolutely, I can do it. What do you need from me?"): the words after
# the opener are the assistant's, so it counts even where the text ends on a question.
_OPENER_AFTER_QUESTION = re.compile(
    r"(?<=[?？])[ \t]*\n?[ \t]*((?:Sure|Certainly|Of course|Absolutely)[!,.][ \t]*"
    r"(?:I can (?:help|do|assist)|I'd be (?:happy|glad)|I'll help|I will help|here(?:'s| is| are)|let me|let's)"
    r"|(?:Great|Good) question[!,.])",
    re.IGNORECASE,
)
# The user showing an answer to be checked (their own, or one they paste to be graded):
# a marker after this is part of the query.
_OWN_ATTEMPT = re.compile(
    r"\b(?:my|our) (?:own )?(?:answers?|solutions?|attempts?|work|working|reasoning|explanation|approach|response)\b"
    r"|\bI (?:got|tried|wrote|answered|came up with|solved|put)\b"
    r"|\b(?:grade|check|mark|evaluate|review|assess|verify|critique)\b",
    re.IGNORECASE,
)
# A query written as a bold or quoted question title, then more text on later lines.
_TITLE = re.compile(r"^(\*\*|\"|“)([^\n]*?[?？])(\*\*|\"|”)[ \t]*\n+(\S[\s\S]*)$")
_TITLE_CLOSE = {"**": "**", '"': '"', "“": "”"}
# Text after a title that is the user's, not an answer: first person, or a request.
_USER_VOICE = re.compile(
    r"(?:I(?!'d be (?:happy|glad))|I'm|I've|I am|My|We|We're|Our|Me|Here(?:'s| is| are) (?:my|our|the)"
    r"|Explain|Write|Translate|Summari[sz]e|Analy[sz]e|Rewrite|Paraphrase|Tell|Describe|Discuss|Compare"
    r"|Answer|Respond|Reply|Help|Give|List|Identify|Classify|Correct|Fix|Edit|Improve|Please|Can|Could"
    r"|Would|Will|What|Who|Why|How|Where|When|Which|Is|Are|Do|Does|Should|Context|Note|Background)\b"
)
# A closing quote right after the query's last sentence with no opening quote anywhere:
# the model closed a quotation it never opened ("...my immune system?\"").
_STRAY_QUOTE = re.compile(r"(?<=[.?!])([\"”])(?=[ \t]*(?:\n\s*\n|$))")
# Further queries of a list the model wrote: "\n2. ..." or "\nQuestion 2: ...".
_NEXT_NUMBERED = re.compile(r"(?m)^[ \t]*(?:2[.)]|\(2\))[ \t]+\S")
_NEXT_LABELLED = re.compile(
    r"(?m)^[ \t]*(?:\*\*)?(?:Question|Q)[ \t]*\d{0,3}[ \t]*(?:\*\*)?[ \t]*[:：.]", re.IGNORECASE
)
_STARTS_LABELLED = re.compile(r"^[ \t]*(?:#{1,4}[ \t]*)?(?:\*\*)?(?:Question|Q)\b", re.IGNORECASE)

_SENTENCE_END = (".", "?", "!", "。", "？", "！")
# The model ended its turn on a space right after a word: it stopped mid-sentence
# ("The internet has created a vast network of virtual ").
_ENDS_ON_SPACE = re.compile(r"[^\W_][ \t]+$")
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|[^\W\d_]+|\d+")
# A cut that ends on one of these left half a sentence ("Find the", "plan a trip to").
_DANGLING = frozenset(
    "a an the of to for with and or but in on at by from as about into than my your our their his her its".split()
)
CUT_RULES = frozenset(
    {"cut_second_turn", "cut_answer", "cut_steps", "cut_opener", "cut_title_answer", "keep_first_query",
     "cut_after_quote", "cut_prose_answer", "cut_requested_text"}
)

# --- answers with no marker: a question answered in prose on the next line, an instruction
# followed by what it asked for. Later turns of a conversation meet these far more often
# (the writer has just seen the assistant answer). Both cut only where the next line cannot
# be the user's: the query points at nothing that follows (no "this text", "the following",
# "my ..."), and the next line is not in the user's voice, a constraint, a list of theirs,
# code, a label or a question.
_WORDS = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
# The query refers to material it brings along: what follows is the user's.
_POINTS_AT_MATERIAL = re.compile(
    r"\b(?:following|below|above|attached|given|provided|my|our|mine|here(?:'s| is| are)?"
    r"|(?:this|these|that|those)[ \t]+(?:\w+[ \t]+)?(?:text|passage|paragraph|sentences?|code|snippet|article|essay|poems?"
    r"|email|letter|data|list|story|excerpt|quote|statement|table|function|script|program|review|message|document"
    r"|problem|equation|words?|phrases?|lines?|verses?|stanza|lyrics|argument|claim|example|draft|notes?|items?"
    r"|options?|names?|titles?|questions?|answers?|responses?|dialogue|conversation|translation|output|error))\b",
    re.IGNORECASE,
)
# A next line in the user's voice or giving the user's requirements.
_USERS_LINE = re.compile(
    r"(?:I|I'm|I've|I'd|I'll|My|Me|We|We're|We've|Our|Us|Please|Make sure|Be sure|Keep|Use|Avoid|Include|Don't|Do not"
    r"|Note|Also|Thanks|Thank you|Bonus|Context|Background|Requirements?|Constraints?|Hint)\b"
    r"|[^\n]*\b(?:should|must|needs? to|has to|have to|no more than|at least|at most|word limit)\b",
    re.IGNORECASE,
)
# Lines that are data, not prose: code, markup, a label, a table row.
_NOT_PROSE = re.compile(r"^[ \t]*(?:```|[#>|{}\[\]()<$`]|\w+[ \t]*[=(]|[^\n.?!]{1,40}[:：][ \t]*$)")
# Yes/no answers open with the verdict.
# First person anywhere on the line: the user speaking ("... comes up in my son's class").
_FIRST_PERSON = re.compile(r"\b(?:I|I'm|I've|I'd|me|my|mine|we|we're|us|our|ours)\b", re.IGNORECASE)
_VERDICT = re.compile(r"^(?:Yes|No|Yep|Nope|Definitely|Absolutely not|Not really|Not necessarily)\b[,.!]")
# A request for a piece of writing or a list the model then writes itself.
_WRITE_REQUEST = re.compile(
    r"^(?:(?:Please|Can you|Could you|Would you)[ \t]+)?(?:Write|Compose|Create|Generate|Draft|Give me|List|Suggest"
    r"|Name|Come up with|Brainstorm|Make(?: me)?|Tell me)\b[^\n]*?\b(?:poem|haiku|limerick|sonnet|verse|song|lyrics"
    r"|story|tale|joke|riddle|slogan|tagline|motto|names?|titles?|ideas|tips|examples|ways|reasons|list|recipe"
    r"|tweet|caption|sentences?|paragraph|quote)s?\b[^\n]*[.!]?$",
    re.IGNORECASE,
)
_ITEM_START = re.compile(r"^[ \t]*(?:\d{1,3}[.)]|\(\d{1,3}\)|[-*•])[ \t]+\S")
_STOPWORDS = frozenset(
    "a an the of to for with and or but in on at by from as about into than is are was were be been being do does did "
    "can could would should will what who whom whose which why how when where there their they them it its this that "
    "these those you your yours i me my we our us he she his her some any more most other such not no yes if so also "
    "just very much many have has had get make way ways".split()
)


@dataclass(frozen=True)
class Edit:
    """One edit the cleaner made: the rule's name and the exact text it removed."""

    rule: str
    removed: str


@dataclass(frozen=True)
class CleanResult:
    """The cleaned query, what was done to it, and why it is unusable (None if usable)."""

    instruction: str
    edits: tuple[Edit, ...] = ()
    reason: str | None = None

    @property
    def actions(self) -> tuple[str, ...]:
        """The rules applied, in order (the row's ``cleaning_actions``)."""
        return tuple(edit.rule for edit in self.edits)

    @property
    def removed(self) -> tuple[str, ...]:
        """What each rule removed, aligned with :attr:`actions` (the row's ``cleaning_removed``)."""
        return tuple(edit.removed for edit in self.edits)


@dataclass(frozen=True)
class CleaningRules:
    """Limits that decide when a query is unusable."""

    min_chars: int = 3
    max_chars: int = 8000
    # Fraction of characters that must be printable (guards against byte soup).
    min_printable: float = 0.9


def clean_query(raw: str | None, rules: CleaningRules = CleaningRules()) -> CleanResult:
    """Clean one raw query. Never raises for any string input."""
    if raw is None:
        return CleanResult("", (), reasons.EMPTY)
    edits: list[Edit] = []
    text = raw.replace("\r\n", "\n")
    stripped = text.strip()
    if stripped != text:
        edits.append(Edit("strip_whitespace", _removed_whitespace(text, stripped)))
    labelled = bool(_STARTS_LABELLED.match(stripped))
    text = _strip_prefixes(stripped, edits)

    text = _cut_title_answer(text, edits)
    text = _cut_after_stray_quote(text, edits)
    text = _cut_at_answer(text, edits)
    text = _cut_unmarked_answer(text, edits)
    text = _keep_first_query(text, labelled, edits)
    if any(edit.rule in CUT_RULES for edit in edits):
        text = _strip_prefixes(text, edits)  # a cut can leave a lone "1." or a label
    text = _strip_wrapping(text, edits)

    reason = unusable_reason(text, rules)
    cut = any(edit.rule in CUT_RULES for edit in edits)
    if reason is None and cut and is_fragment(text):
        reason = reasons.FRAGMENT
    elif reason is None and not cut and _ENDS_ON_SPACE.search(raw) and not text.endswith(_SENTENCE_END):
        reason = reasons.UNFINISHED
    return CleanResult(text, tuple(edits), reason)


def _removed_whitespace(text: str, stripped: str) -> str:
    start = len(text) - len(text.lstrip())
    return text[:start] + text[start + len(stripped):]


def _strip_prefixes(text: str, edits: list[Edit]) -> str:
    """Strip a leading enumerator and a label, in either order ("1. Question: ...")."""
    for _ in range(2):
        before = text
        match = _ENUMERATOR.match(text)
        if match and not _ITEM_LINE.search(text):  # a list's "1." is the user's
            edits.append(Edit("strip_enumerator", match.group()))
            text = text[match.end():].strip()
        match = _LABEL.match(text)
        if match and text[match.end():].strip():
            edits.append(Edit("strip_label", match.group()))
            text = text[match.end():].strip()
        if text == before:
            break
    return text


def _cut(text: str, pos: int, rule: str, edits: list[Edit]) -> str:
    edits.append(Edit(rule, text[pos:].strip()))
    return text[:pos].rstrip()


class _Scan:
    """What the cut rules ask about one text, found once so a check costs O(1)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._fence_ends = [m.end() for m in re.finditer("```", text)]
        self._own_end = _first_end(_OWN_ATTEMPT, text)
        self._dialogue_end = _first_end(_DIALOGUE_LINE, text)
        self._item_end = _first_end(_ITEM_LINE, text)
        # Every tail ends where the text does: a question there is the user's.
        self.asks_at_end = text.rstrip().endswith(("?", "？"))
        self.last_line = text.rstrip().rsplit("\n", 1)[-1].strip()

    def in_code(self, pos: int) -> bool:
        """Whether ``pos`` is inside a fenced code block."""
        return bisect_right(self._fence_ends, pos) % 2 == 1

    def char_before(self, pos: int, same_line: bool = False) -> str:
        """The last non-blank character before ``pos`` ('' if none; '\\n' where ``same_line`` has none)."""
        i = pos - 1
        while i >= 0 and self.text[i] in (" \t" if same_line else " \t\n\r"):
            i -= 1
        return self.text[i] if i >= 0 else ""

    def at_sentence_start(self, pos: int) -> bool:
        """Whether ``pos`` starts a line after the first, or follows a sentence's end."""
        before = self.char_before(pos, same_line=True)
        return before == "\n" or (before != "" and before in _SENTENCE_END)

    def opens_line(self, pos: int) -> bool:
        return self.char_before(pos, same_line=True) == "\n"

    def after_sentence(self, pos: int) -> bool:
        before = self.char_before(pos)
        return before != "" and before in _SENTENCE_END

    def head_has_own_attempt(self, pos: int) -> bool:
        return self._own_end <= pos

    def head_has_dialogue(self, pos: int) -> bool:
        return self._dialogue_end <= pos

    def head_has_list_item(self, pos: int) -> bool:
        return self._item_end <= pos

    def user_quotes_it(self, pos: int) -> bool:
        """Whether the text at ``pos`` is plainly part of the user's query, not an answer."""
        before = self.char_before(pos)
        return (
            before in ("", ":", "：")  # "Here is my attempt:\nSolution: ..."
            or self.in_code(pos)
            or self.head_has_own_attempt(pos)
            or self.asks_at_end  # "...\nAnswer: 54\nWhy is it wrong?"
        )


def _first_end(pattern: re.Pattern[str], text: str) -> int:
    match = pattern.search(text)
    return match.end() if match else len(text) + 1


def _first_answer_start(text: str) -> tuple[int, str] | None:
    """The earliest place the assistant's turn demonstrably starts, and the rule."""
    scan = _Scan(text)
    found: list[tuple[int, str]] = []
    for match in _HEADER_LEAK.finditer(text):
        if scan.char_before(match.start()) and not scan.in_code(match.start()):
            found.append((match.start(), "cut_second_turn"))
            break
    for match in _ROLE_LABEL.finditer(text):
        pos = match.start()
        if (scan.char_before(pos) not in ("", ":", "：") and not scan.in_code(pos)
                and not scan.head_has_dialogue(pos)):  # a dialogue the user pasted
            found.append((pos, "cut_second_turn"))
            break
    for match in _OPENER_AFTER_QUESTION.finditer(text):
        if not scan.in_code(match.start(1)) and not scan.head_has_dialogue(match.start(1)):
            found.append((match.start(1), "cut_opener"))
            break
    if not scan.asks_at_end:
        for pattern, rule in ((_ANSWER, "cut_answer"), (_STEP, "cut_steps"), (_OPENER, "cut_opener")):
            for match in pattern.finditer(text):
                pos = match.start()
                # Answer markers may follow a sentence on its line; the others open a line.
                if pattern is _ANSWER:
                    placed = scan.at_sentence_start(pos)
                else:
                    placed = scan.opens_line(pos) and (pattern is _STEP or scan.after_sentence(pos))
                if placed and not scan.user_quotes_it(pos):
                    found.append((pos, rule))
                    break
    return min(found) if found else None


def _cut_after_stray_quote(text: str, edits: list[Edit]) -> str:
    """A lone closing quote after the query ends it: drop the quote, and cut what follows a
    paragraph break after it (the model's answer: '...get started?"\n\nMolley, the AI ...')."""
    if text.count('"') + text.count("”") != 1 or "“" in text:
        return text
    match = _STRAY_QUOTE.search(text)
    if not match or _Scan(text).in_code(match.start()):
        return text
    if text[match.end():].strip():
        text = _cut(text, match.end(), "cut_after_quote", edits)
    edits.append(Edit("strip_stray_quote", match.group(1)))
    return text[: match.start()]


def _cut_at_answer(text: str, edits: list[Edit]) -> str:
    start = _first_answer_start(text)
    return _cut(text, start[0], start[1], edits) if start else text


def _content_words(line: str) -> set[str]:
    """Lower-cased words of a line that carry its subject (stop words and short words left out)."""
    return {w.lower() for w in _WORDS.findall(line) if len(w) >= 4 and w.lower() not in _STOPWORDS}


def _cut_unmarked_answer(text: str, edits: list[Edit]) -> str:
    """Cut an answer the model wrote with no marker on the line after the query.

    ``cut_prose_answer``: a line ending in a question, then a line of plain prose that
    answers it: a yes/no verdict, or a statement about the question's own subject (it
    shares a content word with it). ``cut_requested_text``: a first line asking for a
    piece of writing or a list (a poem, names, tips), then two or more lines of it.
    Neither cuts where the query points at material it brings ("this text", "the
    following", "my ...", a closing colon), where the text ends on a question, or where
    the next line is the user's (first person, a requirement, code, a label, a table).
    """
    if text.rstrip().endswith(("?", "？")):
        return text
    scan = _Scan(text)
    lines = text.split("\n")
    offsets = [0]
    for line in lines[:-1]:
        offsets.append(offsets[-1] + len(line) + 1)
    filled = [i for i, line in enumerate(lines) if line.strip()]

    def users(i: int) -> bool:
        line = lines[i].strip()
        return bool(_USERS_LINE.match(line) or _FIRST_PERSON.search(line) or _NOT_PROSE.match(line)
                    or scan.in_code(offsets[i])
                    or scan.head_has_dialogue(offsets[i]) or line.endswith(("?", "？", ":", "：")))

    if filled and len(filled) >= 3:  # the request, then at least two lines of what it asked for
        first, nxt = filled[0], filled[1]
        request = lines[first].strip()
        if (_WRITE_REQUEST.match(request) and request.endswith((".", "!")) and not _POINTS_AT_MATERIAL.search(request)
                and not users(nxt)):
            return _cut(text, offsets[nxt], "cut_requested_text", edits)
    for at, i in enumerate(filled[:-1]):
        question = lines[i].strip()
        if not question.endswith(("?", "？")):
            continue
        nxt = filled[at + 1]
        answer = lines[nxt].strip()
        head = text[: offsets[nxt]]
        if (users(nxt) or _ITEM_START.match(answer) or _POINTS_AT_MATERIAL.search(head)
                or not answer[:1].isupper()):
            return text
        sentence = re.split(r"(?<=[.!?])\s", answer, maxsplit=1)[0]
        if _VERDICT.match(answer) or (
            _content_words(question) & _content_words(sentence) and sentence.endswith(_SENTENCE_END)
        ):
            return _cut(text, offsets[nxt], "cut_prose_answer", edits)
        return text  # only the first question is looked at: later lines are the user's text
    return text


def _cut_title_answer(text: str, edits: list[Edit]) -> str:
    """A bold or quoted question title followed by its answer: keep the question.

    The reference keeps the text up to the first "?" of any query opening with "*" or a
    quote; here only when the title closes right after its question mark and what follows
    is not the user's (first person, a request, or a further question).
    """
    match = _TITLE.match(text)
    if not match or _TITLE_CLOSE[match.group(1)] != match.group(3):
        return text
    title, tail = match.group(2).strip(), match.group(4)
    last_line = tail.rstrip().rsplit("\n", 1)[-1].strip()
    if not title or _USER_VOICE.match(tail) or last_line.endswith(("?", "？")):
        return text
    edits.append(Edit("cut_title_answer", tail.strip()))
    edits.append(Edit("strip_bold" if match.group(1) == "**" else "strip_quotes", match.group(1) + match.group(3)))
    return title


def _keep_first_query(text: str, labelled: bool, edits: list[Edit]) -> str:
    """Keep the first of a list of queries the model wrote ("...?\\n2. ...")."""
    scan = _Scan(text)
    if _ENUMERATOR.match(scan.last_line):  # no prose after the list
        for match in _NEXT_NUMBERED.finditer(text):
            pos = match.start()
            if scan.head_has_list_item(pos):
                break  # the user's own list ("1. Restarted it\n2. Reset it")
            if scan.after_sentence(pos) and not scan.in_code(pos):
                return _cut(text, pos, "keep_first_query", edits)
    if labelled:  # the model wrote "Question 1: ...": a later "Question 2:" is a further query
        for match in _NEXT_LABELLED.finditer(text):
            pos = match.start()
            if pos > 0 and scan.after_sentence(pos) and not scan.in_code(pos):
                return _cut(text, pos, "keep_first_query", edits)
    return text


def _strip_wrapping(text: str, edits: list[Edit]) -> str:
    """Remove quotes or bold wrapped around the whole query."""
    wrappings = (('"', '"', "strip_quotes"), ("“", "”", "strip_quotes"), ("**", "**", "strip_bold"))
    for opening, closing, rule in wrappings:
        if (
            len(text) > len(opening) + len(closing)
            and text.startswith(opening)
            and text.endswith(closing)
            and text.count(opening) + (text.count(closing) if closing != opening else 0) == 2
        ):
            edits.append(Edit(rule, opening + closing))
            return text[len(opening): -len(closing)].strip()
    return text


def is_fragment(text: str) -> bool:
    """Whether a cut query is a piece of a sentence rather than a query.

    It ends on a colon or a comma, or on a dangling word ("Find the", "Tell me about."),
    or it has under three words, or under five with no sentence end ("You are a travel").
    """
    text = text.strip()
    if text.endswith((":", "：", ",", "，", ";", "(", "-", "–", "—")):
        return True
    words = _WORD.findall(text)
    if len(words) < 3:
        return True
    end = text.rstrip("\"')]*`”’")
    if words[-1].lower() in _DANGLING and not end.endswith(("?", "!", "？", "！")):
        return True  # "Tell me about." asks nothing; "What is this for?" does
    return len(words) < 5 and not end.endswith(_SENTENCE_END)
def unusable_reason(text: str, rules: CleaningRules = CleaningRules()) -> str | None:
    """Why a (cleaned) query cannot be used, or None."""
    if not text:
        return reasons.EMPTY
    if len(text) < rules.min_chars:
        return reasons.TOO_SHORT
    if len(text) > rules.max_chars:
        return reasons.TOO_LONG
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    if printable / len(text) < rules.min_printable:
        return reasons.UNPRINTABLE
    if not any(ch.isalpha() for ch in text):
        return reasons.NO_LETTERS
    return None


def duplicate_key(instruction: str) -> bytes:
    """What two queries share when they are exact duplicates: case and spacing folded.

    A 16-byte digest of the folded text, not the text: a run remembers every query it
    wrote, and 1M queries of a few hundred characters would otherwise hold ~0.5 GB.
    """
    return hashlib.blake2b(" ".join(instruction.lower().split()).encode(), digest_size=16).digest()


def mark_exact_duplicates(rows: Iterable[dict[str, Any]], seen: set[bytes]) -> None:
    """Mark each usable query that repeats an earlier one ``instruction_status="duplicate"``.

    ``rows`` must come in row-index order; ``seen`` holds the keys of the rows before
    them (every status counts, so a row repeating an unusable one is a duplicate too)
    and is updated, so successive batches of one run share it.
    """
    for row in rows:
        key = duplicate_key(row.get("instruction") or "")  # None: a batch that failed upstream
        if row.get("instruction_status") == "ok" and key in seen:
            row["instruction_status"] = "duplicate"
        seen.add(key)
