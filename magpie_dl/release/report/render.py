"""The Jinja2 environments of the card (Markdown) and the report (HTML, autoescaped), with their filters."""

from __future__ import annotations

import html
import re
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup


def md_cell(value: Any) -> str:
    """``value`` fit for a Markdown table cell: pipes and newlines would break the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def fenced(text: str, lang: str = "text") -> str:
    """A code fence longer than any backtick run inside ``text``, so content cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def md_inline(text: str) -> Markup:
    """Escape, then render the two inline marks the recipe steps use (**bold**, `code`)."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return Markup(re.sub(r"`(.+?)`", r"<code>\1</code>", out))


def _escape_text(value: Any) -> Any:
    # Autoescape escapes anything not marked safe; text is escaped here first, the way
    # html.escape does it (quotes as &quot; / &#x27;), so escaped pages read as before.
    if isinstance(value, str) and not isinstance(value, Markup):
        return Markup(html.escape(value))
    return value


@cache
def environment(autoescape: bool) -> Environment:
    """Templates from ``magpie_dl/release/report/templates``; ``autoescape``: escape every value (HTML)."""
    env = Environment(
        loader=PackageLoader("magpie_dl.release.report", "templates"),
        autoescape=autoescape,
        finalize=_escape_text if autoescape else None,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md_cell=md_cell, fenced=fenced, md_inline=md_inline)
    return env
