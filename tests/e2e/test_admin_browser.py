"""A moderator works the policy-audit queue in a real browser (headless Chromium)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from agents_app.models import Exchange, PolicyFlag
from agents_app.moderation import moderator_grant
from tests.browser import ARTIFACTS, csp_violations, needs_browser, open_chromium

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
    needs_browser,
]


@pytest.fixture
def browser(tmp_path):
    driver = open_chromium(tmp_path / "profile")
    try:
        yield driver
        violations = csp_violations(driver)
    finally:
        driver.quit()
    assert violations == [], "an admin page broke the Content-Security-Policy"


def test_a_moderator_confirms_a_flag_and_freezes_the_npc_in_the_admin(live_server, browser, npc):
    dana = get_user_model().objects.create_user("dana", "dana@example.org", "dana-password-1")
    moderator_grant(user=dana)
    flags = []
    for text, reply, rule in [
        ("what's your email?", "Write to [hidden].", "personal_data"),
        ("are you real?", "Hm, where was I? Let's talk about this world instead.", "breaking_character"),
    ]:
        exchange = Exchange.objects.create(
            npc=npc,
            persona=npc.persona,
            player_name="steve",
            player_text=text,
            prompt="p",
            reply_text=reply,
            raw_text=reply,
            blocked_actions=[{"name": "dig", "args": [], "rule": "action_not_allowed"}],
        )
        flags.append(PolicyFlag.objects.create(exchange=exchange, rule=rule, severity="severe", detail=rule))
    wait = WebDriverWait(browser, 20)

    browser.get(f"{live_server.url}/admin/login/?next=/admin/agents_app/policyflag/")
    browser.find_element(By.NAME, "username").send_keys("dana")
    browser.find_element(By.NAME, "password").send_keys("dana-password-1")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 2
    assert "what's your email?" in browser.page_source and "Write to [hidden]." in browser.page_source

    # Narrow the queue to one rule, then confirm that flag and freeze its NPC.
    browser.find_element(By.LINK_TEXT, "personal_data").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")) == 1)
    browser.find_element(By.CSS_SELECTOR, "#result_list tbody input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("confirm_flags")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "ul.messagelist"), "Confirmed 1 flag"))

    browser.get(f"{live_server.url}/admin/agents_app/policyflag/?status=all")
    wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    for box in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody input.action-select"):
        box.click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("freeze_npcs")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "ul.messagelist"), "Froze 1 NPC"))

    browser.find_element(By.CSS_SELECTOR, 'ul.object-tools a[href$="/policyflag/summary/"]').click()
    wait.until(ec.presence_of_element_located((By.ID, "flag-counts")))
    browser.back()
    wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "moderator-policy-queue.png"))

    flags[0].refresh_from_db()
    flags[1].refresh_from_db()
    npc.refresh_from_db()
    assert (flags[0].status, flags[0].reviewed_by) == ("confirmed", dana)
    assert flags[1].status == "open" and npc.is_frozen()
