"""Model cards are Markdown written by modders: render a safe subset, raw HTML escaped.

Links keep to http(s), mailto and links within the site (anything else stays text), and carry
``rel="nofollow ugc"``: search engines give the portal's standing to no link a user wrote.
"""

from __future__ import annotations

import re

from django.utils.safestring import mark_safe
from markdown_it import MarkdownIt

SAFE_SCHEMES = frozenset({"http", "https", "mailto"})
_SCHEME = re.compile(r"^\s*([a-z][a-z0-9+.\-]*):", re.IGNORECASE)

# commonmark with html off: raw HTML becomes text.
_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).disable("image")


def _safe_link(url: str) -> bool:
    scheme = _SCHEME.match(url)
    return scheme is None or scheme.group(1).lower() in SAFE_SCHEMES


def _link_open(renderer, tokens, idx, options, env):
    tokens[idx].attrSet("rel", "nofollow ugc")
    return renderer.renderToken(tokens, idx, options, env)


_md.validateLink = _safe_link  # an allowlist, where markdown-it's own only refuses javascript:, data: and the like
_md.add_render_rule("link_open", _link_open)


def render_markdown(text: str) -> str:
    return mark_safe(_md.render(text or ""))  # noqa: S308 (markdown-it escapes everything; html is off)
