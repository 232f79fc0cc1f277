"""The console in a real headless Chromium (Debian's chromium + chromium-driver, Selenium):
log in with the token, see a held message, release it, see it submitted; a POP3 account's
refusal, shown and retried."""

from __future__ import annotations

import poplib
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By

from imap_ingest.states import SKIPPED

from .support.browser import body_text, log_in, reload_until, screenshot, submit
from .support.daemon import Daemon, free_port, start
from .support.dovecot import Dovecot, ImapAccount
from .support.ingest_env import pop3_config
from .support.mail import make
from .support.process import wait_for
from .support.redmine_server import FakeRedmine

TOKEN = "console-token-0123456789"


def test_release_a_held_message_from_the_console(
        daemon: list[Daemon], tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        browser: webdriver.Chrome) -> None:
    """Log in, see the held message (subject as text), release it, see it submitted."""
    imap.append("INBOX", make(subject="Out of office <img src=x onerror=alert(1)>",
                              headers={"Auto-Submitted": "auto-replied"}))
    imap.append("INBOX", make(subject="printer on fire"))
    (tmp_path / "token").write_text(TOKEN)
    port = free_port()
    one, _ = start(daemon, tmp_path, imap, redmine, loops_folder="Held",
                   console={"listen": f"127.0.0.1:{port}", "token_file": str(tmp_path / "token")})
    wait_for(lambda: len(redmine.emails) == 1)
    url = f"http://127.0.0.1:{port}/"
    log_in(browser, url, "wrong")
    wait_for(lambda: "not the console's" in browser.page_source)
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    submit(browser)

    reload_until(browser, url, "Out of office", timeout=30)
    folders = browser.find_element(By.XPATH, "//h2[.='Folders']/following-sibling::div[1]").text
    assert "IMAP: pushed (IDLE) when offered, else polled every 60 s" in folders, folders
    assert "accepted: deleted; refused: marked in place" in folders
    assert "<img src=x onerror=alert(1)>" in browser.find_element(By.TAG_NAME, "body").text
    assert not browser.find_elements(By.CSS_SELECTOR, "img")
    assert browser.find_elements(By.CSS_SELECTOR, "svg rect")
    browser.save_screenshot(str(tmp_path / "console-held.png"))
    screenshot(browser, "console-held.png")

    browser.find_element(By.LINK_TEXT, "Out of office <img src=x onerror=alert(1)>").click()
    trace = browser.find_element(By.TAG_NAME, "pre").text
    assert "HIT   auto-submitted: Auto-Submitted: auto-replied" in trace
    assert "decision: hold" in trace
    browser.find_element(By.CSS_SELECTOR, "button[value=release]").click()
    wait_for(lambda: "released" in body_text(browser))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "released: submitted to redmine" in body, body
    assert len(redmine.emails) == 2 and b"Out of office" in redmine.emails[1]
    assert "released from Held" in body
    assert "Out of office" not in browser.find_element(By.XPATH, "//h2[.='Set aside']"
                                                       "/following-sibling::div[1]").text
    browser.save_screenshot(str(tmp_path / "console-released.png"))
    screenshot(browser, "console-released.png")
    with imap.client() as client:
        client.select_folder("Held")
        assert client.search(["UNDELETED"]) == []
    one.stop()


def test_release_a_message_held_in_place(
        daemon: list[Daemon], tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        browser: webdriver.Chrome) -> None:
    """With no loops folder the held message stays in INBOX, marked: listed, and released."""
    imap.append("INBOX", make(subject="Vacation reply", headers={"Auto-Submitted": "auto-replied"}))
    imap.append("INBOX", make(subject="skipped by a rule"))
    (tmp_path / "token").write_text(TOKEN)
    port = free_port()
    one, _ = start(daemon, tmp_path, imap, redmine,
                   folder={"rules": [{"name": "quiet", "if": ["^Subject: skipped by"],
                                      "then": "skip"}]},
                   console={"listen": f"127.0.0.1:{port}", "token_file": str(tmp_path / "token")})
    wait_for(lambda: [sorted(f) for f, _ in imap.messages("INBOX").values()]
             == [[SKIPPED.encode()]] * 2)
    url = f"http://127.0.0.1:{port}/"
    log_in(browser, url, TOKEN)

    reload_until(browser, url, "Vacation reply", timeout=30)
    aside = browser.find_element(By.XPATH, "//h2[.='Set aside']/following-sibling::div[1]").text
    assert "held test/INBOX" in aside and "skipped by a rule" not in aside, aside
    browser.find_element(By.CSS_SELECTOR, "button[value=release]").click()
    wait_for(lambda: "released" in body_text(browser))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "released: submitted to redmine" in body, body
    assert len(redmine.emails) == 1 and b"Vacation reply" in redmine.emails[0]
    assert [raw.count(b"skipped by a rule") for _, raw in imap.messages("INBOX").values()] == [1]
    one.stop()


def test_a_pop3_refusal_is_shown_and_retried_from_the_console(
        daemon: list[Daemon], tmp_path: Path, dovecot_pop3: Dovecot, redmine: FakeRedmine,
        browser: webdriver.Chrome) -> None:
    """A POP3 folder says it is polled and keeps refusals on the server; Retry sends one again."""
    box = dovecot_pop3.account()
    box.append("INBOX", make(subject="refused over POP3"))
    redmine.answer = lambda request: (422, b"no such project", 0)
    (tmp_path / "token").write_text(TOKEN)
    port, status = free_port(), free_port()
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url, keep=False,
                       folder={"interval": "1s"},
                       top={"http": {"listen": f"127.0.0.1:{status}"},
                            "console": {"listen": f"127.0.0.1:{port}",
                                        "token_file": str(tmp_path / "token")}})
    one = Daemon(path)
    daemon.append(one)
    wait_for(lambda: len(redmine.emails) == 1)
    url = f"http://127.0.0.1:{port}/"
    log_in(browser, url, TOKEN)
    reload_until(browser, url, "refused over POP3", timeout=30)
    folders = browser.find_element(By.XPATH, "//h2[.='Folders']/following-sibling::div[1]").text
    assert "POP3: polled every 1 s (no IDLE)" in folders, folders
    assert "accepted: deleted (keep: false)" in folders
    assert "refused: left on the server, Retry releases it in the ledger" in folders
    assert "moves: none (POP3 has no folders)" in folders
    aside = browser.find_element(By.XPATH, "//h2[.='Set aside']/following-sibling::div[1]").text
    assert "failed pop/INBOX uid 1" in aside and "Redmine refused" in aside, aside
    screenshot(browser, "console-pop3.png")

    browser.find_element(By.LINK_TEXT, "refused over POP3").click()
    assert "decision: submit" in browser.find_element(By.TAG_NAME, "pre").text
    redmine.answer = redmine.default
    browser.find_element(By.CSS_SELECTOR, "button[value=retry]").click()
    wait_for(lambda: "released" in body_text(browser))
    assert "released 1 message(s) of pop/INBOX" in body_text(browser)
    wait_for(lambda: len(redmine.emails) == 2)
    wait_for(lambda: poplib_count(dovecot_pop3, box) == 0)
    one.stop()


def poplib_count(server: Dovecot, box: ImapAccount) -> int:
    """How many messages the maildrop holds now, by POP3 STAT."""
    client = poplib.POP3(box.host, server.pop3_port, timeout=10)
    try:
        client.user(box.username)
        client.pass_(box.password)
        return int(client.stat()[0])
    finally:
        client.quit()
