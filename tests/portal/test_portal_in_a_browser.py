"""The portal as its people use it, in headless Chromium: players rating in place, a phone-width menu,
a modder trying a version before review, an operator rotating a token, a moderator working the queue.

Screenshots of the main pages at 1280 and 390 px are kept in var/screenshots/. No page a test visits may
break the Content-Security-Policy.
"""

from __future__ import annotations

import json

import pytest

from agents_app.models import Exchange, GameServer, PolicyFlag, Rating
from agents_app.services import game_server_authenticate
from tests.browser import (
    csp_violations,
    emulate_width,
    log_in,
    needs_browser,
    open_chromium,
    screenshot,
    sideways_overflow,
    sign_up,
    wait_for,
)
from tests.factories import make_exchange

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180), needs_browser]

DESKTOP, PHONE = 1280, 390


def _browser(tmp_path, width, name="main"):
    driver = open_chromium(tmp_path / f"profile-{name}-{width}", window=f"{max(width, 500)},900")
    if width < 500:
        emulate_width(driver, width)
    driver.implicitly_wait(0)
    return driver


@pytest.fixture
def browser(tmp_path):
    driver = _browser(tmp_path, DESKTOP)
    try:
        yield driver
        violations = csp_violations(driver)
    finally:
        driver.quit()
    assert violations == [], "a page broke the Content-Security-Policy"


@pytest.fixture
def phone(tmp_path):
    driver = _browser(tmp_path, PHONE)
    try:
        yield driver
        violations = csp_violations(driver)
    finally:
        driver.quit()
    assert violations == [], "a page broke the Content-Security-Policy"


def card_of(driver, exchange_id):
    return driver.find_element(By.ID, f"reply-{exchange_id}")


def status_of(card) -> str:
    return card.find_element(By.CSS_SELECTOR, ".rating .status").text


def open_reason(card):
    details = card.find_element(By.CSS_SELECTOR, "details.why")
    if details.get_attribute("open") is None:
        details.find_element(By.TAG_NAME, "summary").click()


# --- rating in the feed ------------------------------------------------------------------------


def test_a_tag_ticked_after_voting_is_saved_and_one_ticked_before_waits_for_a_vote(browser, live_server, charlie, npc):
    voted, unvoted = make_exchange(npc), make_exchange(npc, reply="Up the west stairs.")
    log_in(browser, live_server, "charlie", "charlie-password-1")
    browser.get(f"{live_server.url}/replies/")
    card = card_of(browser, voted.pk)
    card.find_element(By.CSS_SELECTOR, "button[data-score='1']").click()
    wait_for(browser, lambda d: status_of(card) == "Saved: thumbs up.")
    open_reason(card)
    card.find_element(By.CSS_SELECTOR, "input[value='funny']").click()
    wait_for(browser, lambda d: status_of(card) == "Saved: thumbs up, 1 tag.")
    assert Rating.objects.get(exchange=voted).tags == ["funny"]

    other = card_of(browser, unvoted.pk)
    open_reason(other)
    other.find_element(By.CSS_SELECTOR, "input[value='rude']").click()
    wait_for(browser, lambda d: "Press good or poor to save this" in status_of(other))
    assert not Rating.objects.filter(exchange=unvoted).exists()
    other.find_element(By.CSS_SELECTOR, "button[data-score='-1']").click()
    wait_for(browser, lambda d: status_of(other) == "Saved: thumbs down, 1 tag.")
    assert Rating.objects.get(exchange=unvoted).tags == ["rude"]


def test_a_vote_from_an_expired_session_is_kept_and_saved_after_logging_in(browser, live_server, charlie, npc):
    exchange = make_exchange(npc)
    log_in(browser, live_server, "charlie", "charlie-password-1")
    browser.get(f"{live_server.url}/replies/")
    browser.delete_cookie("sessionid")  # the session ends while the page stays open
    card = card_of(browser, exchange.pk)
    open_reason(card)
    card.find_element(By.CSS_SELECTOR, "input[value='helpful']").click()
    card.find_element(By.CSS_SELECTOR, "textarea[name=reason]").send_keys("Knew the way.")
    card.find_element(By.CSS_SELECTOR, "button[data-score='1']").click()
    link = wait_for(browser, lambda d: card.find_elements(By.CSS_SELECTOR, "a.login-again"))[0]
    assert "your vote is kept" in status_of(card) and "JSON" not in status_of(card)
    assert not Rating.objects.exists()

    link.click()
    wait_for(browser, lambda d: "/accounts/login/" in d.current_url)
    browser.find_element(By.NAME, "username").send_keys("charlie")
    browser.find_element(By.NAME, "password").send_keys("charlie-password-1")
    browser.find_element(By.CSS_SELECTOR, "main form button").click()
    wait_for(browser, lambda d: d.current_url.endswith("/replies/"))
    flash = wait_for(browser, lambda d: d.find_elements(By.ID, "pending-vote"))[0]
    assert flash.text == "Your vote from before you logged in is saved."
    rating = Rating.objects.get()
    assert (rating.user.username, rating.score, rating.tags, rating.reason) == (
        "charlie",
        1,
        ["helpful"],
        "Knew the way.",
    )
    card = card_of(browser, exchange.pk)
    assert "chosen" in card.find_element(By.CSS_SELECTOR, "button[data-score='1']").get_attribute("class")
    assert browser.execute_script("return localStorage.getItem('voyager.pendingVote')") is None


# --- phones ------------------------------------------------------------------------------------


def test_at_390_px_the_menu_collapses_and_every_page_fits(phone, live_server, alice, npc, persona):
    make_exchange(npc)
    log_in(phone, live_server, "alice", "alice-password-1")
    assert phone.execute_script("return window.innerWidth") == PHONE
    phone.get(f"{live_server.url}/")
    nav = phone.find_element(By.ID, "site-nav")
    assert not nav.is_displayed()
    phone.find_element(By.ID, "nav-button").click()
    wait_for(phone, lambda d: nav.is_displayed())
    for name in ("Replies", "Personas", "Playground", "Servers", "API"):
        link = nav.find_element(By.LINK_TEXT, name)
        assert link.is_displayed() and link.rect["x"] + link.rect["width"] <= PHONE, name
    nav.find_element(By.LINK_TEXT, "Servers").click()
    wait_for(phone, lambda d: d.current_url.endswith("/profile/servers/"))
    wide = {}
    for path in (
        "/",
        "/replies/",
        "/personas/",
        "/personas/miner/",
        "/leaderboard/",
        "/compare/",
        "/playground/",
        "/profile/",
        "/profile/servers/",
        "/rating-guide/",
        "/personas/miner/edit/",
    ):
        phone.get(f"{live_server.url}{path}")
        wide[path] = sideways_overflow(phone)
    assert {path: px for path, px in wide.items() if px > 0} == {}


# --- operators ---------------------------------------------------------------------------------


def test_a_token_rotation_is_confirmed_and_a_reload_rotates_nothing(browser, live_server, alice, game_server):
    old = game_server.raw_token
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": live_server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    log_in(browser, live_server, "alice", "alice-password-1")
    browser.get(f"{live_server.url}/profile/servers/")
    browser.find_element(By.LINK_TEXT, "New token…").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "confirm-rotation"))
    assert game_server_authenticate(old) == game_server  # asking is not rotating
    browser.find_element(By.ID, "confirm-new-token").click()
    token_el = wait_for(browser, lambda d: d.find_elements(By.ID, "server-token"))[0]
    new = token_el.text
    assert browser.current_url.endswith("/profile/servers/#new-token")
    assert game_server_authenticate(old) is None and game_server_authenticate(new) == game_server

    browser.find_element(By.CSS_SELECTOR, "button[data-copy='#server-token']").click()
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "button[data-copy='#server-token']").text == "Copied")
    assert browser.execute_script("return navigator.clipboard.readText()") == new
    assert f"voyager.token = {new}" in browser.find_element(By.ID, "mod-settings").text

    hash_before = GameServer.objects.get(pk=game_server.pk).token_hash
    browser.refresh()
    wait_for(browser, lambda d: d.find_elements(By.ID, "servers"))
    assert not browser.find_elements(By.ID, "server-token")
    assert GameServer.objects.get(pk=game_server.pk).token_hash == hash_before
    assert game_server_authenticate(new) == game_server


# --- moderators --------------------------------------------------------------------------------


def test_a_moderator_works_the_queue_one_flag_after_another(browser, live_server, dana, npc):
    first, second = (
        PolicyFlag.objects.create(exchange=make_exchange(npc, reply=reply), rule="rude", severity="warning")
        for reply in ("Go away.", "Write to me at [hidden].")
    )
    browser.get(f"{live_server.url}/admin/login/?next=/admin/agents_app/policyflag/")
    browser.find_element(By.NAME, "username").send_keys("dana")
    browser.find_element(By.NAME, "password").send_keys("dana-password-1")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "result_list"))
    assert sideways_overflow(browser) == 0
    browser.find_element(By.ID, "work-the-queue").click()
    wait_for(browser, lambda d: d.current_url.endswith(f"/policyflag/{first.pk}/change/"))
    assert "2 open flags in the queue" in browser.find_element(By.ID, "queue-buttons").text
    assert "Go away." in browser.page_source
    browser.find_element(By.NAME, "_confirm_next").click()
    wait_for(browser, lambda d: d.current_url.endswith(f"/policyflag/{second.pk}/change/"))
    assert "Write to me at [hidden]." in browser.page_source
    browser.find_element(By.NAME, "_dismiss_next").click()
    wait_for(browser, lambda d: "The queue is empty" in d.page_source)
    assert [f.status for f in PolicyFlag.objects.order_by("created_at")] == ["confirmed", "dismissed"]
    assert {f.reviewed_by for f in PolicyFlag.objects.all()} == {dana}

    # The exchanges list fits 1280 px too, and excludes in bulk.
    browser.get(f"{live_server.url}/admin/agents_app/exchange/")
    wait_for(browser, lambda d: d.find_elements(By.ID, "result_list"))
    assert sideways_overflow(browser) == 0
    for box in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody input.action-select"):
        box.click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("exclude_from_training")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    wait_for(browser, lambda d: "Excluded 2 exchange(s) from training" in d.page_source)
    assert Exchange.objects.filter(excluded_from_training=False).count() == 0

    # The other lists a moderator works fit as well.
    wide = {}
    for model in ("policyflag/?status=all", "rating/", "adapterversion/", "npc/", "modderrequest/", "persona/"):
        browser.get(f"{live_server.url}/admin/agents_app/{model}")
        wait_for(browser, lambda d: d.find_elements(By.ID, "changelist"))
        wide[model] = sideways_overflow(browser)
    assert {model: px for model, px in wide.items() if px} == {}


# --- the playground (Daphne: HTTP and the WebSocket, the echo worker) --------------------------


def ask_in_playground(driver, text, persona=None, version=None):
    driver.get(f"{driver.base}/playground/")
    form = driver.find_element(By.ID, "playground")
    if persona:
        Select(form.find_element(By.NAME, "persona")).select_by_value(persona)
    if version:
        Select(form.find_element(By.NAME, "version")).select_by_visible_text(version)
    form.find_element(By.NAME, "text").send_keys(text)
    form.find_element(By.TAG_NAME, "button").click()
    return wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chat .reply form.rating"), timeout=20)[0]


def rating_in(server, username) -> dict | None:
    out = server.shell(
        "import json; from agents_app.models import Rating; "
        f"r = Rating.objects.filter(user__username={username!r}).first(); "
        "print(json.dumps(r and {'score': r.score, 'tags': r.tags, 'reason': r.reason, 'test': r.exchange.is_test}))"
    )
    return json.loads(out)


def test_a_player_rates_a_playground_reply_in_place_with_a_reason_and_undoes_it(browser, daphne_server):
    browser.base = daphne_server.url
    sign_up(browser, daphne_server, username="pat")
    form = ask_in_playground(browser, "where is the iron?")
    card = form.find_element(By.XPATH, "./ancestor::article")
    open_reason(card)
    form.find_element(By.CSS_SELECTOR, "input[value='helpful']").click()
    form.find_element(By.CSS_SELECTOR, "textarea[name=reason]").send_keys("Answered what I asked.")
    form.find_element(By.CSS_SELECTOR, "button[data-score='1']").click()
    wait_for(browser, lambda d: status_of(card) == "Saved: thumbs up, 1 tag, your reason.")
    assert form.find_element(By.CSS_SELECTOR, ".up").text == "1"
    assert rating_in(daphne_server, "pat") == {
        "score": 1,
        "tags": ["helpful"],
        "reason": "Answered what I asked.",
        "test": False,
    }
    undo = form.find_element(By.CSS_SELECTOR, "button.undo")
    assert undo.is_displayed()
    undo.click()
    wait_for(browser, lambda d: status_of(card) == "Rating taken back.")
    assert form.find_element(By.CSS_SELECTOR, ".up").text == "0" and not undo.is_displayed()
    assert rating_in(daphne_server, "pat") is None


def test_a_modder_tries_a_version_not_yet_approved_and_nobody_else_sees_it(browser, daphne_server, tmp_path):
    daphne_server.shell(
        "from django.contrib.auth import get_user_model; from django.contrib.auth.models import Group; "
        "from agents_app.models import AdapterVersion, Persona; "
        "mona = get_user_model().objects.create_user('mona', 'mona@example.org', 'mona-password-1'); "
        "mona.groups.add(*Group.objects.filter(name__in=['player', 'modder'])); "
        "smith = Persona.objects.create(slug='smith', name='Smith', owner=mona, system_prompt='You forge.'); "
        "AdapterVersion.objects.create(persona=smith, version=1, files_path='adapters/smith/v1', sha256='a' * 64, "
        "base_model_id='echo', rank=4, target_modules=['q_proj'], size_bytes=1, status='validated')"
    )
    browser.base = daphne_server.url
    log_in(browser, daphne_server, "mona", "mona-password-1")
    form = ask_in_playground(
        browser, "can you forge a sword", persona="smith", version="smith v1 (validated: a test, yours to try)"
    )
    card = form.find_element(By.XPATH, "./ancestor::article")
    assert "can you forge a sword" in card.text
    exchange = json.loads(
        daphne_server.shell(
            "import json; from agents_app.models import Exchange; e = Exchange.objects.get(persona__slug='smith'); "
            "print(json.dumps({'id': str(e.pk), 'test': e.is_test, 'version': e.adapter_version.version}))"
        )
    )
    assert exchange["test"] is True and exchange["version"] == 1
    browser.get(f"{daphne_server.url}/replies/?mine=1")
    assert "test of an unapproved version" in card_of(browser, exchange["id"]).text

    # Someone else: no such version to choose, and the test is not in the feed.
    other = _browser(tmp_path, DESKTOP, name="other")
    try:
        sign_up(other, daphne_server, username="pat")
        other.get(f"{daphne_server.url}/playground/")
        options = [o.text for o in other.find_elements(By.CSS_SELECTOR, "select[name=version] option")]
        assert not any("smith" in o for o in options)
        other.get(f"{daphne_server.url}/replies/")
        assert not other.find_elements(By.ID, f"reply-{exchange['id']}")
        assert csp_violations(other) == []
    finally:
        other.quit()


# --- screenshots -------------------------------------------------------------------------------


def test_screenshots_of_the_main_pages_at_1280_and_390_px(tmp_path, daphne_server):
    """var/screenshots/{home,feed,persona,playground}-{1280,390}.png, with a rated reply in them."""
    for width in (DESKTOP, PHONE):
        driver = _browser(tmp_path, width, name="shots")
        driver.base = daphne_server.url
        try:
            sign_up(driver, daphne_server, username=f"shot{width}")
            form = ask_in_playground(driver, "hello, who are you?")
            form.find_element(By.CSS_SELECTOR, "button[data-score='1']").click()
            wait_for(driver, lambda d, f=form: f.find_element(By.CSS_SELECTOR, ".up").text != "0")
            shots = [screenshot(driver, f"playground-{width}")]
            for name, path in (("home", "/"), ("feed", "/replies/"), ("persona", "/personas/")):
                driver.get(f"{daphne_server.url}{path}")
                if name == "persona":
                    driver.find_element(By.CSS_SELECTOR, "main h2 a").click()
                    wait_for(driver, lambda d: d.find_elements(By.ID, "versions"))
                assert sideways_overflow(driver) == 0, (name, width)
                shots.append(screenshot(driver, f"{name}-{width}"))
            assert all(p.stat().st_size > 5000 for p in shots)
            assert csp_violations(driver) == []
        finally:
            driver.quit()
