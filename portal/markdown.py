"""Model cards are Markdown written by modders: render a safe subset, raw HTML escaped."""

from __future__ import annotations

from django.utils.safestring import mark_safe
from markdown_it import MarkdownIt

# commonmark with html off: raw HTML becomes text; markdown-it refuses javascript:/vbscript:/data: links.
_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).disable("image")


def render_markdown(text: str) -> str:
    return mark_safe(_md.render(text or ""))  # noqa: S308 (markdown-it escapes everything; html is off)
