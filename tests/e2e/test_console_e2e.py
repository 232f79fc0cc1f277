"""The console in a real headless Chromium against Debian's real Redmine: a message the loop
checks held, released from the console, becomes an issue (checked through Redmine's REST API)."""

from __future__ import annotations

from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By

from ..support.browser import body_text, log_in, reload_until, screenshot
from ..support.daemon import Daemon, free_port, start
from ..support.dovecot import ImapAccount
from ..support.mail import make
from ..support.process import wait_for
from .redmine import MAIL_KEY, RealRedmine

TOKEN = "console-token-0123456789"
ALICE = "alice@example.org"  # a Reporter of the project "support"


def test_a_held_message_released_from_the_console_becomes_a_redmine_issue(
        daemon: list[Daemon], tmp_path: Path, imap: ImapAccount, redmine_stock: RealRedmine,
        browser: webdriver.Chrome) -> None:
    """Log in, see the Precedence: bulk message held in Loops, release it: an issue by Alice."""
    # Not Auto-Submitted: Redmine itself ignores that (422), released or not.
    redmine_stock.reset()
    imap.append("INBOX", make(subject="Newsletter: printer on fire", sender=ALICE,
                              headers={"Precedence": "bulk"}))
    (tmp_path / "token").write_text(TOKEN)
    port = free_port()
    one, _ = start(daemon, tmp_path, imap, redmine_stock, key=MAIL_KEY, loops_folder="Loops",
                   console={"listen": f"127.0.0.1:{port}", "token_file": str(tmp_path / "token")})
    url = f"http://127.0.0.1:{port}/"
    log_in(browser, url, TOKEN)

    reload_until(browser, url, "Newsletter", timeout=60)
    assert redmine_stock.issues() == []
    screenshot(browser, "console-e2e-held.png")
    browser.find_element(By.CSS_SELECTOR, "button[value=release]").click()
    wait_for(lambda: "released" in body_text(browser), timeout=60)
    notice = browser.find_element(By.CSS_SELECTOR, "p.ok").text
    assert "released: submitted to redmine" in notice, notice
    screenshot(browser, "console-e2e-released.png")
    [issue] = redmine_stock.issues()
    assert issue["subject"] == "Newsletter: printer on fire"
    assert issue["project"]["name"] == "Support" and issue["author"]["name"] == "Alice Member"
    assert imap.messages("Loops") == {} and imap.messages("INBOX") == {}
    one.stop()
