"""The mod as operators get it: the zip the portal serves holds what ContentDB asks for, every
player-facing string goes through the translator, and the servers page tests a server's connection."""

import html
import io
import re
import struct
import zipfile
from pathlib import Path

import pytest

from agents_app import gateway
from portal.mod_package import MOD_DIR, mod_zip
from tests.portal.clients import client_for

LIT = r'"(?:[^"\\]|\\.)*"'
TRANSLATED = re.compile(r"\bS\(\s*(" + LIT + r"(?:\s*\.\.\s*" + LIT + r")*)")
# Where a string reaches a player: chat, notices, chat commands' results and help, privileges, formspecs.
# A literal there that holds words is an offence; the "[voyager] " tag and "<Name>" marks are not words.
WORDS = r"\"(?!\[voyager\] \")(?=[^\"]*[A-Za-z]{2})"
PLAYER_FACING = [
    re.compile(r"\bnotice\(\s*\w+\s*,\s*" + WORDS),
    re.compile(r"\bchat_send_(?:player|all)\(\s*(?:\w+\s*,\s*)?" + WORDS),
    re.compile(r"\bcolorize\(\s*\"#[0-9a-fA-F]+\"\s*,\s*" + WORDS),
    re.compile(r"^\s*(?:description|params) = \"", re.MULTILINE),
    re.compile(r"\b(?:label|button_exit|button)\[[^\"]*;[A-Z][a-z]+\]"),
    re.compile(r"\besc\(\s*\""),
]
# Chat commands answer the player with what they return.
COMMAND_RESULT = re.compile(r"\breturn (?:true|false), " + WORDS)


def lua_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(MOD_DIR.glob("*.lua"))}


def translated_strings() -> list[str]:
    found = []
    for text in lua_sources().values():
        for match in TRANSLATED.finditer(text):
            string = "".join(part[1:-1] for part in re.findall(LIT, match.group(1)))
            if string not in found:
                found.append(string)
    return found


def tr_entries(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# textdomain: voyager", path
    entries = {}
    for line in lines[1:]:
        if line and not line.startswith("#"):
            source, translation = re.split(r"(?<!@)=", line, maxsplit=1)
            entries[source] = translation
    return entries


@pytest.fixture
def archive():
    return zipfile.ZipFile(io.BytesIO(mod_zip()))


def test_the_zip_holds_the_mod_in_one_folder_with_what_contentdb_asks_for(archive):
    names = set(archive.namelist())
    assert all(name.startswith("voyager/") for name in names)
    for required in ("mod.conf", "init.lua", "LICENSE", "README.md", "settingtypes.txt", "screenshot.png"):
        assert f"voyager/{required}" in names, required
    conf = dict(
        line.split(" = ", 1) for line in archive.read("voyager/mod.conf").decode().splitlines() if " = " in line
    )
    assert conf["name"] == "voyager" and conf["title"] and len(conf["description"]) > 20
    assert conf["min_minetest_version"] == "5.6" and "default" in conf["optional_depends"]
    assert "MIT License" in archive.read("voyager/LICENSE").decode()
    assert "voyager/locale/template.txt" in names
    assert any(re.fullmatch(r"voyager/locale/voyager\.[a-z_A-Z]+\.tr", name) for name in names)
    # Nothing the engine provides, and nothing only the specs need.
    assert "voyager/sha1.lua" not in names and not any("spec" in name for name in names)


def test_the_screenshot_is_a_real_png(archive):
    data = archive.read("voyager/screenshot.png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 640 and height >= 360 and len(data) > 10_000


def test_the_zip_is_the_same_bytes_for_the_same_files():
    assert mod_zip() == mod_zip()


def test_every_translated_string_is_in_the_template_and_in_each_translation():
    strings = translated_strings()
    assert len(strings) > 40
    template = tr_entries(MOD_DIR / "locale" / "template.txt")
    assert set(template) == set(strings), set(template) ^ set(strings)
    for path in (MOD_DIR / "locale").glob("*.tr"):
        entries = tr_entries(path)
        assert set(entries) == set(strings), (path.name, set(entries) ^ set(strings))
        assert all(entries.values()), path.name
        for source, translation in entries.items():  # the same arguments, in some order
            assert sorted(re.findall(r"@\d", source)) == sorted(re.findall(r"@\d", translation)), source


def test_no_player_facing_string_bypasses_the_translator():
    offences = []
    for name, text in lua_sources().items():
        for pattern in PLAYER_FACING + ([COMMAND_RESULT] if name == "commands.lua" else []):
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                offences.append(f"{name}:{line}: {text.splitlines()[line - 1].strip()}")
    assert not offences, "\n".join(offences)
    assert "core.get_translator" in lua_sources()["api.lua"]


def test_the_check_catches_a_raw_string():
    """The sink patterns above find what they are meant to find (else the test before could not fail)."""
    samples = [
        'voyager.notice(player, "Wait for an answer first.")',
        'return false, "You must be in the game."',
        '\tdescription = "Manage voyager NPCs",',
        'core.chat_send_player(name, core.colorize("#cccccc", "You to " .. n))',
        '"button_exit[7.4,2.2;2.2,0.8;say;Say]"',
    ]
    for sample in samples:
        assert any(p.search(sample) for p in [*PLAYER_FACING, COMMAND_RESULT]), sample
    assert not any(p.search('core.colorize("#8fd3ff", "<" .. npc_name .. ">")') for p in PLAYER_FACING)


@pytest.mark.django_db
def test_anyone_downloads_the_mod_as_a_zip(client):
    response = client.get("/mod/voyager.zip")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert 'filename="voyager.zip"' in response["Content-Disposition"]
    assert response.content == mod_zip()


@pytest.mark.django_db
def test_the_servers_page_links_the_zip_and_gives_the_least_privilege_lines(alice, game_server):
    page = html.unescape(client_for(alice).get("/profile/servers/").content.decode())
    assert 'href="/mod/voyager.zip"' in page
    lines = page.split('<pre id="mod-settings-http">')[1].split("</pre>")[0]
    assert "secure.http_mods = voyager" in lines and "voyager.url = http://testserver/http/luanti/" in lines
    assert f"/profile/servers/{game_server.pk}/check/" in page


@pytest.mark.django_db
def test_test_connection_says_whether_and_when_the_server_connected(alice, game_server):
    client = client_for(alice)
    response = client.get(f"/profile/servers/{game_server.pk}/check/", follow=True)
    assert "has not connected yet" in html.unescape(response.content.decode())
    gateway.server_seen(game_server)
    response = client.get(f"/profile/servers/{game_server.pk}/check/", follow=True)
    text = html.unescape(response.content.decode())
    assert "Alice's world connected: last at" in text and "ago" in text


@pytest.mark.django_db
def test_nobody_else_tests_a_servers_connection(bob, game_server):
    assert client_for(bob).get(f"/profile/servers/{game_server.pk}/check/").status_code == 404
