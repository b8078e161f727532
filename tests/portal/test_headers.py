"""Security headers (the Content-Security-Policy on every answer) and links in user-written Markdown.

The real-browser tests (test_browser.py) show the portal's pages keep to the policy; these show it is sent,
and that no template brings inline script or style back."""

import re
from pathlib import Path

import pytest

from portal.markdown import render_markdown
from tests.factories import adapter
from tests.portal.clients import client_for

pytestmark = pytest.mark.django_db

POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'self'; "
    "frame-ancestors 'none'; form-action 'self'"
)
ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted([*(ROOT / "templates").rglob("*.html"), *(ROOT / "agents_app" / "templates").rglob("*.html")])


@pytest.mark.parametrize(
    "path", ["/", "/replies/", "/personas/", "/accounts/login/", "/api/personas/", "/admin/login/"]
)
def test_every_answer_carries_the_content_security_policy(path):
    response = client_for().get(path)
    assert response.status_code == 200
    assert response["Content-Security-Policy"] == POLICY


def test_errors_and_redirects_carry_it_too():
    assert client_for().get("/personas/nobody/")["Content-Security-Policy"] == POLICY
    assert client_for().get("/profile/")["Content-Security-Policy"] == POLICY


def test_the_api_docs_start_swagger_from_a_file_not_an_inline_script():
    page = client_for().get("/api/docs/")
    body = page.content.decode()
    assert re.search(r"<script>", body) is None and "<style" not in body
    script = re.search(r'<script src="([^"]*\?[^"]*script=[^"]*)"', body).group(1).replace("&amp;", "&")
    answer = client_for().get(script)
    assert answer.status_code == 200 and b"SwaggerUIBundle" in answer.content
    redoc = client_for().get("/api/redoc/").content.decode()
    assert re.search(r"<script>", redoc) is None and "<style" not in redoc and "fonts.googleapis" not in redoc


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_template_has_inline_script_style_or_handlers(template):
    html = template.read_text()
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None, "inline <script>"
    assert re.search(r"<style\b", html) is None, "inline <style>"
    assert re.search(r"""\sstyle\s*=\s*["']""", html) is None, "a style attribute"
    assert re.search(r"""\son[a-z]+\s*=\s*["']""", html) is None, "an inline event handler"


# --- links in Markdown that users write (model cards) ---------------------------------------------


def test_links_in_a_model_card_are_nofollow_ugc(charlie, persona):
    adapter(persona, 1, status="approved", card="See [the wiki](https://example.org/wiki) or <https://example.org/a>.")
    body = client_for(charlie).get("/personas/miner/v1/").content.decode()
    assert body.count('rel="nofollow ugc"') == 2
    assert '<a href="https://example.org/wiki" rel="nofollow ugc">the wiki</a>' in body


@pytest.mark.parametrize(
    "source",
    [
        "[x](javascript:alert(1))",
        "[x](JavaScript:alert(1))",
        "[x]( javascript:alert(1))",
        "[x](vbscript:msgbox(1))",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        "[x](file:///etc/passwd)",
        "<javascript:alert(1)>",
        "[x][r]\n\n[r]: javascript:alert(1)",
        "[x](ftp://example.org/file)",
    ],
)
def test_a_link_with_an_unsafe_scheme_stays_text(source):
    html = render_markdown(source)
    assert "<a " not in html and "href" not in html


@pytest.mark.parametrize(
    "source, href",
    [
        ("[x](https://example.org)", "https://example.org"),
        ("[x](http://example.org)", "http://example.org"),
        ("[x](mailto:modder@example.org)", "mailto:modder@example.org"),
        ("[x](/personas/miner/)", "/personas/miner/"),
        ("[x](#usage)", "#usage"),
    ],
)
def test_a_safe_link_keeps_its_target(source, href):
    assert f'<a href="{href}" rel="nofollow ugc">x</a>' in render_markdown(source)
