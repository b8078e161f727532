"""The portal in a real browser: headless Debian Chromium through Selenium and Debian's chromedriver.

Screenshots go to test-artifacts/ so a failing run can be looked at. No page a test visits may break the
Content-Security-Policy: the browser reports each violation, and a test that saw one fails.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from agents_app.models import AdapterVersion, Exchange
from tests.browser import ARTIFACTS, csp_violations, log_in, needs_browser, open_chromium, sign_up, wait_for
from tests.factories import adapter, config_json, make_exchange, weights

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.fixture
def browser(tmp_path):
    driver = open_chromium(tmp_path / "profile", window="1200,900")
    driver.implicitly_wait(0)
    yield driver
    try:
        violations = csp_violations(driver)
    finally:
        driver.quit()
    assert violations == [], "a page broke the Content-Security-Policy"


@needs_browser
def test_a_visitor_signs_up_and_lands_on_their_profile_as_a_player(browser, live_server):
    from selenium.webdriver.common.by import By

    sign_up(browser, live_server)
    assert browser.find_element(By.ID, "whoami").text == "dora"
    assert browser.find_element(By.ID, "roles").text == "player"
    browser.save_screenshot(str(ARTIFACTS / "signup-profile.png"))


@needs_browser
def test_rating_a_reply_changes_the_count_without_reloading(browser, live_server, npc):
    from selenium.webdriver.common.by import By

    exchange = Exchange.objects.create(
        npc=npc,
        persona=npc.persona,
        player_name="steve",
        player_text="where is iron?",
        prompt="p",
        reply_text="Down the east tunnel.",
        created_at=timezone.now(),
    )
    sign_up(browser, live_server)
    browser.get(f"{live_server.url}/replies/")
    browser.execute_script("window.__samePage = true;")
    card = browser.find_element(By.ID, f"reply-{exchange.pk}")
    assert card.find_element(By.CSS_SELECTOR, ".up").text == "0"
    card.find_element(By.CSS_SELECTOR, "button[data-score='1']").click()
    wait_for(browser, lambda d: card.find_element(By.CSS_SELECTOR, ".up").text == "1")
    assert browser.execute_script("return window.__samePage === true;")
    assert "chosen" in card.find_element(By.CSS_SELECTOR, "button[data-score='1']").get_attribute("class")
    browser.save_screenshot(str(ARTIFACTS / "rated-up.png"))
    # Changing the rating moves the count, still in place.
    card.find_element(By.CSS_SELECTOR, "details.why summary").click()
    card.find_element(By.CSS_SELECTOR, "input[value='rude']").click()
    card.find_element(By.CSS_SELECTOR, "button[data-score='-1']").click()
    wait_for(browser, lambda d: card.find_element(By.CSS_SELECTOR, ".down").text == "1")
    assert card.find_element(By.CSS_SELECTOR, ".up").text == "0"
    assert browser.execute_script("return window.__samePage === true;")
    rating = exchange.ratings.get()
    assert (rating.score, rating.tags) == (-1, ["rude"])
    browser.save_screenshot(str(ARTIFACTS / "rated-down.png"))


@needs_browser
def test_a_reply_with_a_script_tag_renders_as_text(browser, live_server, npc):
    from selenium.webdriver.common.by import By

    payload = "<script>window.__pwned = 1</script><b>bold?</b>"
    exchange = Exchange.objects.create(
        npc=npc,
        persona=npc.persona,
        player_name="steve",
        player_text=payload,
        prompt="p",
        reply_text=payload,
        created_at=timezone.now(),
    )
    browser.get(f"{live_server.url}/replies/")
    card = browser.find_element(By.ID, f"reply-{exchange.pk}")
    assert card.find_element(By.CSS_SELECTOR, ".reply-text").text == payload
    assert card.find_element(By.CSS_SELECTOR, ".player-text").text == payload
    assert browser.execute_script("return window.__pwned === undefined;")
    assert not card.find_elements(By.TAG_NAME, "b")
    browser.save_screenshot(str(ARTIFACTS / "script-as-text.png"))


@pytest.fixture
def eager_tasks():
    """The upload's validation task runs in the server thread, as in the embedded default, even when
    REDIS_URL names a broker that no worker of this test reads."""
    from portal.celery import app

    saved = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = saved


@needs_browser
@pytest.mark.usefixtures("base_model", "eager_tasks")
def test_a_modder_uploads_an_adapter_and_sees_the_version_validated(browser, live_server, alice, persona, tmp_path):
    from selenium.webdriver.common.by import By

    config, weights_file = tmp_path / "adapter_config.json", tmp_path / "adapter_model.safetensors"
    config.write_bytes(config_json())
    weights_file.write_bytes(weights())
    log_in(browser, live_server, "alice", "alice-password-1")
    browser.get(f"{live_server.url}/personas/miner/")
    browser.find_element(By.LINK_TEXT, "Upload a new version").click()
    browser.find_element(By.NAME, "config").send_keys(str(config))
    browser.find_element(By.NAME, "weights").send_keys(str(weights_file))
    browser.find_element(By.NAME, "model_card").send_keys("# Miner v1\n\nKnows where the iron is.")
    browser.find_element(By.CSS_SELECTOR, "main form button").click()
    wait_for(browser, lambda d: d.current_url == f"{live_server.url}/personas/miner/v1/", timeout=30)
    assert "Knows where the iron is." in browser.find_element(By.CSS_SELECTOR, ".model-card").text

    def v1_status(driver) -> str:
        driver.get(f"{live_server.url}/personas/miner/")
        row = driver.find_element(By.XPATH, "//a[@href='/personas/miner/v1/']/ancestor::tr")
        return row.find_elements(By.TAG_NAME, "td")[1].text

    # The version is listed at once; its smoke generation may still be running: reload until it has passed.
    status = wait_for(browser, lambda d: (s := v1_status(d)) in ("Validated", "Rejected") and s, timeout=60)
    browser.save_screenshot(str(ARTIFACTS / "adapter-uploaded.png"))
    assert status == "Validated"
    assert AdapterVersion.objects.get(persona=persona, version=1).status == "validated"


@needs_browser
def test_the_playground_streams_a_reply_over_the_browser_websocket(browser, daphne_server):
    from selenium.webdriver.common.by import By

    sign_up(browser, daphne_server, username="pat")
    browser.get(f"{daphne_server.url}/playground/")
    box = browser.find_element(By.NAME, "text")
    box.send_keys("hello <b>Bram</b> from the browser")
    browser.find_element(By.CSS_SELECTOR, "#playground button").click()
    chat = browser.find_element(By.ID, "chat")
    wait_for(browser, lambda d: chat.text.count("hello <b>Bram</b> from the browser") == 2, timeout=20)
    assert not chat.find_elements(By.TAG_NAME, "b")
    browser.save_screenshot(str(ARTIFACTS / "playground.png"))
    # The playground reply is stored and shows up under "mine", rateable.
    browser.get(f"{daphne_server.url}/replies/?mine=1")
    card = browser.find_element(By.CSS_SELECTOR, "article.reply")
    assert "hello <b>Bram</b> from the browser" in card.find_element(By.CSS_SELECTOR, ".reply-text").text
    card.find_element(By.CSS_SELECTOR, "button[data-score='1']").click()
    wait_for(browser, lambda d: card.find_element(By.CSS_SELECTOR, ".up").text == "1")


# --- the Content-Security-Policy ------------------------------------------------------------------


def visit_all(driver, base_url, paths, ready=None) -> dict[str, list[str]]:
    """Each page in turn, loaded and (for those named in ``ready``) drawn: the violations each one caused."""
    from selenium.webdriver.common.by import By

    seen = {}
    for path in paths:
        driver.get(f"{base_url}{path}")
        if ready and path in ready:
            wait_for(driver, lambda d, css=ready[path]: d.find_elements(By.CSS_SELECTOR, css), timeout=20)
        seen[path] = csp_violations(driver)
    return seen


@needs_browser
def test_an_inline_script_is_refused_by_the_content_security_policy_and_reported(browser, live_server):
    browser.get(f"{live_server.url}/")
    browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.__inline = 1'; document.body.append(s);"
    )
    assert browser.execute_script("return window.__inline === undefined;")
    violations = csp_violations(browser)
    assert violations and all("script-src" in v for v in violations)


@needs_browser
def test_no_page_of_the_portal_breaks_the_content_security_policy(browser, live_server, alice, npc, persona):
    from agents_app.services import rating_upsert

    rating_upsert(exchange=make_exchange(npc, text="where is iron?"), score=1, user=alice)
    make_exchange(npc, text="where is the iron?", reply="Ask the smith.")
    adapter(persona, 1, status="approved", card="# Miner v1\n\nSee [the wiki](https://example.org/wiki).")
    anonymous = [
        "/",
        "/replies/",
        "/personas/",
        "/personas/miner/",
        "/personas/miner/v1/",
        "/compare/",
        "/leaderboard/",
        "/accounts/login/",
        "/accounts/signup/",
        "/accounts/password_reset/",
        "/api/personas/",
        "/api/docs/",
    ]
    seen = visit_all(browser, live_server.url, anonymous, ready={"/api/docs/": ".swagger-ui .opblock"})
    # ReDoc draws its page too; what it tries to fetch from a CDN (Redocly's logo) is refused, nothing else.
    redoc = visit_all(browser, live_server.url, ["/api/redoc/"], ready={"/api/redoc/": "[data-section-id]"})
    refused = [v for v in redoc["/api/redoc/"] if "cdn.redoc.ly" not in v]
    assert refused == [] and redoc["/api/redoc/"]
    log_in(browser, live_server, "alice", "alice-password-1")
    signed_in = [
        "/profile/",
        "/profile/servers/",
        "/replies/?mine=1",
        "/compare/",
        "/personas/new/",
        "/personas/miner/edit/",
        "/personas/miner/upload/",
        "/playground/",
        "/accounts/password_change/",
    ]
    seen |= {f"{path} (alice)": found for path, found in visit_all(browser, live_server.url, signed_in).items()}
    assert {path: found for path, found in seen.items() if found} == {}


@needs_browser
def test_no_admin_page_breaks_the_content_security_policy(browser, live_server, django_user_model, npc):
    from django_celery_beat.models import CrontabSchedule
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    django_user_model.objects.create_superuser("root", "root@example.org", "root-password-1")
    exchange = make_exchange(npc)
    crontab = CrontabSchedule.objects.create(minute="30", hour="3")
    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("root")
    browser.find_element(By.NAME, "password").send_keys("root-password-1")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "site-name") and "/login/" not in d.current_url)
    seen = visit_all(
        browser,
        live_server.url,
        [
            "/admin/",
            "/admin/agents_app/exchange/",
            f"/admin/agents_app/exchange/{exchange.pk}/change/",
            "/admin/agents_app/policyflag/",
            "/admin/agents_app/persona/add/",
            "/admin/auth/user/add/",
            "/admin/django_celery_beat/periodictask/add/",
        ],
    )
    # django-celery-beat's crontab help, moved out of its inline script, still says the schedule in words.
    Select(browser.find_element(By.ID, "id_crontab")).select_by_value(str(crontab.pk))
    help_text = browser.find_element(By.CSS_SELECTOR, ".field-crontab .help")
    wait_for(browser, lambda d: "Translation:" in help_text.text)
    assert "03:30" in help_text.text or "3:30" in help_text.text
    assert {path: found for path, found in seen.items() if found} == {}


# --- arena battles and corrections --------------------------------------------------------------


@needs_browser
def test_a_battle_vote_in_the_browser_names_the_versions_only_after_the_vote(browser, daphne_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    daphne_server.shell(
        "from agents_app.models import AdapterVersion, Persona\n"
        "p = Persona.objects.get(slug='bram')\n"
        "v = AdapterVersion.objects.create(persona=p, version=1, files_path='adapters/bram/v1', sha256='a' * 64,"
        " base_model_id='echo', rank=4, target_modules=['q_proj'], size_bytes=1, status='active')\n"
        "p.active_adapter = v\np.save()\n",
    )
    sign_up(browser, daphne_server, username="vera")
    browser.get(f"{daphne_server.url}/compare/")
    form = browser.find_element(By.ID, "battle")
    Select(form.find_element(By.NAME, "persona")).select_by_value("bram")
    form.find_element(By.NAME, "text").send_keys("which way to the mine?")
    vote = browser.find_element(By.ID, "battle-vote")
    assert not vote.is_displayed(), "no vote before both replies are in"
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait_for(browser, lambda d: vote.is_displayed(), timeout=20)
    left, right = browser.find_element(By.ID, "battle-left"), browser.find_element(By.ID, "battle-right")
    assert left.text == right.text == "which way to the mine?"  # the echo backend says the words back
    for side in ("reveal-left", "reveal-right"):
        assert browser.find_element(By.ID, side).text == ""
    for card in browser.find_elements(By.CSS_SELECTOR, ".battle-side"):
        assert "v1" not in card.text and "base model" not in card.text
    browser.save_screenshot(str(ARTIFACTS / "battle-before-vote.png"))

    vote.find_element(By.CSS_SELECTOR, "button[value='left']").click()
    status = browser.find_element(By.ID, "battle-status")
    wait_for(browser, lambda d: "Vote saved" in status.text)
    shown = {browser.find_element(By.ID, s).text for s in ("reveal-left", "reveal-right")}
    assert shown == {"· v1", "· base model"}
    assert not vote.is_displayed()
    browser.save_screenshot(str(ARTIFACTS / "battle-after-vote.png"))
    daphne_server.shell(
        "from agents_app.models import Battle, PairwiseVote\n"
        "b = Battle.objects.get()\nassert b.outcome == 'left' and PairwiseVote.objects.count() == 1, b\n",
    )


@needs_browser
def test_a_player_corrects_a_reply_in_the_browser_and_a_forbidden_action_is_refused(browser, live_server, npc):
    from selenium.webdriver.common.by import By

    exchange = Exchange.objects.create(
        npc=npc,
        persona=npc.persona,
        player_name="steve",
        player_text="where is iron?",
        prompt="p",
        reply_text="No idea.",
        created_at=timezone.now(),
    )
    sign_up(browser, live_server, username="tess")

    def correct(text: str) -> None:
        browser.get(f"{live_server.url}/replies/")
        card = browser.find_element(By.ID, f"reply-{exchange.pk}")
        card.find_element(By.CSS_SELECTOR, "details.correction summary").click()
        field = card.find_element(By.CSS_SELECTOR, "form.correct input[name=text]")
        field.send_keys(text)
        card.find_element(By.CSS_SELECTOR, "form.correct button").click()

    correct("[[ACTION:fly]] Up we go!")
    wait_for(browser, lambda d: "may not take the action 'fly'" in d.page_source)
    assert not exchange.corrections.exists()

    correct("East tunnel, steve. [[ACTION:jump]]")
    wait_for(browser, lambda d: "your reply is saved" in d.page_source)
    assert browser.current_url.endswith("/replies/")
    browser.save_screenshot(str(ARTIFACTS / "corrected.png"))
    correction = exchange.corrections.get()
    assert (correction.user.username, correction.reply_text) == ("tess", "East tunnel, steve.")
    assert correction.actions == [{"name": "jump", "args": []}]
