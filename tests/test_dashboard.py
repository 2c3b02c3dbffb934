"""The dashboard finds and acts on messages: search (in memory), a message's page with its
buttons (each POST carries a token made for that action on that message, and comes from
the same origin), sign-in with the token as a cookie; then all of it in a real browser
(Debian's chromium through selenium and chromedriver) against a real twistd."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.trial.unittest import TestCase

from tests.fake_relay import settle
from tests.support import DeliveryCase

TOKEN = "dash-token-0123456789abcdef"


class InMemoryTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.configure()
        self.relay.rcpt_replies = {"bad@example.org": "550 5.1.1 no such user"}

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, data: Any = None
    ) -> tuple[int, str, Any]:
        stub = StubTreq(self.service.status.site.resource)
        response = stub.request(
            method, f"http://status.test{path}", headers=headers or {}, data=data,
            allow_redirects=False,
        )  # fmt: skip
        stub.flush()
        settle(self.clock)
        stub.flush()
        result = self.successResultOf(response)
        return result.code, self.successResultOf(result.content()).decode(), result

    def add(self, to: str, subject: str) -> str:
        data = f"From: app@example.com\r\nSubject: {subject}\r\n\r\nhi\r\n".encode()
        return self.store.enqueue("app@example.com", [to], data, 5, self.clock.seconds(), 100)

    def test_search_then_the_page_then_retry(self) -> None:
        failing = self.add("bad@example.org", "Quarterly report")
        self.add("ok@example.org", "Lunch")
        self.start()
        code, page, _ = self.request("GET", "/search?q=quarterly")
        self.assertEqual(code, 200)
        self.assertEqual(re.findall(r'href="/messages/(\w+)"', page), [failing])
        code, page, _ = self.request("GET", f"/messages/{failing}")
        self.assertIn('<td id="state">failed</td>', page)
        token = re.search(r'action="/messages/\w+/retry"><input type="hidden" name="csrf" '
                          r'value="(\w+)"', page).group(1)  # fmt: skip
        self.assertNotIn('id="release"', page, "only the actions its state allows")
        self.relay.rcpt_replies = {}
        code, _, result = self.request(
            "POST", f"/messages/{failing}/retry", data={"csrf": token},
            headers={"Origin": "http://status.test", "Host": "status.test"},
        )  # fmt: skip
        self.assertEqual(code, 303)
        self.assertEqual(result.headers.getRawHeaders("location"), [f"/messages/{failing}"])
        settle(self.clock)
        self.assertEqual(self.state(failing), "sent")

    def test_the_source_to_download(self) -> None:
        message_id = self.add("bad@example.org", "Report")
        self.start()
        code, page, _ = self.request("GET", f"/messages/{message_id}")
        self.assertIn(f'href="/messages/{message_id}/source"', page)
        code, source, result = self.request("GET", f"/messages/{message_id}/source")
        self.assertEqual(code, 200)
        self.assertEqual(result.headers.getRawHeaders("content-type"), ["message/rfc822"])
        self.assertIn(
            f'filename="{message_id}.eml"', result.headers.getRawHeaders("content-disposition")[0]
        )
        self.assertEqual(source, "From: app@example.com\r\nSubject: Report\r\n\r\nhi\r\n")
        self.assertEqual(self.request("GET", "/messages/NOPE/source")[0], 404)
        self.config = attrs.evolve(
            self.config, status=attrs.evolve(self.config.status, token=TOKEN)
        )
        self.service.status.config = self.config
        self.assertEqual(self.request("GET", f"/messages/{message_id}/source")[0], 401)

    def test_an_action_needs_its_own_token_and_this_origin(self) -> None:
        message_id = self.add("bad@example.org", "x")
        other = self.add("bad@example.org", "y")
        self.start()
        _, page, _ = self.request("GET", f"/messages/{message_id}")
        delete = re.search(r'/delete"><input type="hidden" name="csrf" value="(\w+)"', page)
        assert delete is not None
        for path, form, origin in (
            (f"/messages/{message_id}/delete", {}, None),
            (f"/messages/{message_id}/delete", {"csrf": "0" * 64}, None),
            (f"/messages/{other}/delete", {"csrf": delete.group(1)}, None),  # another message
            (f"/messages/{message_id}/retry", {"csrf": delete.group(1)}, None),  # another action
            (f"/messages/{message_id}/delete", {"csrf": delete.group(1)}, "http://evil.test"),
        ):
            headers = {"Host": "status.test", **({"Origin": origin} if origin else {})}
            code, _, _ = self.request("POST", path, data=form, headers=headers)
            self.assertEqual(code, 403, path)
        self.assertEqual(self.state(message_id), "failed")
        code, _, _ = self.request(
            "POST", f"/messages/{message_id}/delete", data={"csrf": delete.group(1)},
            headers={"Host": "status.test"},
        )  # fmt: skip
        self.assertEqual(code, 303)
        self.assertEqual(self.request("GET", f"/messages/{message_id}")[0], 404)

    def test_with_a_token_a_browser_signs_in_for_a_cookie(self) -> None:
        self.config = attrs.evolve(
            self.config, status=attrs.evolve(self.config.status, token=TOKEN)
        )
        self.start()
        code, page, _ = self.request("GET", "/")
        self.assertEqual(code, 401)
        self.assertIn('<form method="post" action="/login">', page)
        self.assertEqual(self.request("GET", "/v1/queue")[0], 401)
        code, page, _ = self.request("POST", "/login", data={"token": "wrong"})
        self.assertEqual(code, 401)
        code, _, result = self.request("POST", "/login", data={"token": TOKEN})
        self.assertEqual(code, 303)
        (cookie,) = result.headers.getRawHeaders("set-cookie")
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        value = cookie.split(";", 1)[0]
        code, page, _ = self.request("GET", "/", headers={"Cookie": value})
        self.assertEqual(code, 200)
        self.assertIn('<form id="search"', page)


class BrowserTests(TestCase):
    """Chromium, headless, driven by selenium through Debian's chromedriver."""

    timeout = 180

    def driver(self) -> Any:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        binary, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
        if binary is None or chromedriver is None:
            self.fail("chromium or chromedriver is missing: make test installs them")
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        profile = tempfile.mkdtemp(prefix="smtpm-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        for argument in (
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--window-size=1300,1000",
        ):  # fmt: skip
            options.add_argument(argument)
        browser = webdriver.Chrome(service=Service(chromedriver), options=options)
        self.addCleanup(browser.quit)
        return browser

    def test_search_open_retry_and_see_the_state_change(self) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        from tests.daemon import Daemon, started_peer, temporary_home, wait_until

        home = temporary_home(self)
        peer = started_peer(self)
        peer.set(reject_rcpt={"bad@example.org": "550 5.1.1 no such mailbox"})
        daemon = Daemon(
            os.path.join(home, "d"),
            f"[Relay]\nhost = 127.0.0.1\nport = {peer.port}\nsecurity = none\n",
            extra="[Bounce]\nenabled = false\n",
        )
        self.addCleanup(daemon.stop)
        daemon.start()
        message_id = daemon.send(
            "--from", "a@example.com", "--to", "bad@example.org", "--subject", "Quarterly numbers"
        )
        daemon.send("--from", "a@example.com", "--to", "ok@example.org", "--subject", "Lunch")
        wait_until(lambda: daemon.states() == {"sent": 1, "failed": 1}, what="outcomes")
        port = re.search(r"status service listening on 127\.0\.0\.1:(\d+)", daemon.log())
        assert port is not None
        base = f"http://127.0.0.1:{port.group(1)}"
        browser = self.driver()
        browser.get(base + "/")
        box = browser.find_element(By.ID, "q")
        box.send_keys("quarterly")
        box.submit()
        WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, "tr.found"))
        (found,) = browser.find_elements(By.CSS_SELECTOR, "tr.found a")
        self.assertEqual(found.text, message_id)
        found.click()
        WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.ID, "state"))
        self.assertEqual(browser.find_element(By.ID, "state").text, "failed")
        self.assertIn("550 5.1.1 no such mailbox", browser.page_source)
        peer.set(reject_rcpt={})
        shown = browser.find_element(By.ID, "state")
        browser.find_element(By.ID, "retry").click()
        # The form's POST and its redirect replace the page. Refreshing before that would
        # reload the GET and could cancel the POST, so the retry would never be made.
        WebDriverWait(browser, 20).until(expected_conditions.staleness_of(shown))
        wait_until(lambda: f"dashboard: retry {message_id}" in daemon.log(), what="the retry")

        def sent(b: Any) -> bool:
            b.refresh()
            return bool(b.find_element(By.ID, "state").text == "sent")

        WebDriverWait(browser, 30, poll_frequency=0.5).until(sent)
        self.assertEqual(len(peer.messages()), 2)
        screenshot = os.path.join(home, "message.png")
        browser.save_screenshot(screenshot)
        with open(screenshot, "rb") as handle:
            image = handle.read()
        self.assertTrue(image.startswith(b"\x89PNG"))
        self.assertGreater(len(image), 20_000, "a blank page would be far smaller")
        keep = os.environ.get("SMTPMAILER_SCREENSHOT_MESSAGE")
        if keep:
            shutil.copy(screenshot, keep)
        self.assertNotIn("Traceback", daemon.log())
