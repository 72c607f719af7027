#!/usr/bin/env python3
"""Swagger UI in a real browser: headless Chromium (through chromedriver) against a real core4d.

The page loads with no console error and no request leaving the host; "Try it out" on
POST /login with a JSON body returns a token; Authorize with it as BearerToken; POST /roles with
the documented example returns 200; GET /profile returns the admin.

Usage: swagger_ui.py CORE4D_BINARY   (exit 0: passed, 1: failed)
"""

import json
import os
import secrets
import sys
import tempfile
import time
from urllib.parse import urlparse

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from core4d_proc import Core4d  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
# A hang guard for each wait, not a timing assertion.
WAIT = int(os.environ.get("SWAGGER_UI_WAIT", "60"))


def browser(profile_dir):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile_dir}",
        "--window-size=1400,1000",
    ]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def opblock(driver, method, path):
    """The operation block of METHOD PATH, expanded."""
    xpath = (
        f"//div[contains(@class,'opblock-{method}')]"
        f"[.//*[contains(@class,'opblock-summary-path') and @data-path='{path}']]"
    )
    block = WebDriverWait(driver, WAIT).until(EC.presence_of_element_located((By.XPATH, xpath)))
    if "is-open" not in block.get_attribute("class"):
        summary = block.find_element(By.CSS_SELECTOR, ".opblock-summary")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", summary)
        summary.click()
        WebDriverWait(driver, WAIT).until(lambda d: "is-open" in block.get_attribute("class"))
    return block


def try_it_out(driver, block):
    button = WebDriverWait(block, WAIT).until(
        lambda b: b.find_element(By.CSS_SELECTOR, "button.try-out__btn")
    )
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()


def execute(driver, block):
    """Clicks Execute and returns (status, parsed JSON body) of the live response."""
    button = WebDriverWait(block, WAIT).until(
        lambda b: b.find_element(By.CSS_SELECTOR, "button.execute")
    )
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()

    def response(b):
        cells = b.find_elements(By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_status")
        bodies = b.find_elements(
            By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_description pre"
        )
        if cells and bodies and bodies[0].get_attribute("textContent").strip():
            return cells[0].get_attribute("textContent").strip(), bodies[0].get_attribute(
                "textContent"
            )
        return False

    status, body = WebDriverWait(block, WAIT).until(response)
    status = int("".join(c for c in status if c.isdigit())[:3])
    return status, json.loads(body)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def run(binary):
    admin_password = secrets.token_urlsafe(12)
    with Core4d(binary, admin_password) as core4d, tempfile.TemporaryDirectory() as profile:
        driver = browser(profile)
        try:
            driver.get(core4d.api("/docs"))
            WebDriverWait(driver, WAIT).until(
                EC.presence_of_element_located((By.CSS_SELECTOR, ".opblock"))
            )
            check(driver.title == "core4d API", f"the page is titled core4d API ({driver.title!r})")

            # POST /login: the documented body, with the real password typed in.
            block = opblock(driver, "post", "/login")
            try_it_out(driver, block)
            area = block.find_element(By.CSS_SELECTOR, "textarea.body-param__text")
            shown = json.loads(area.get_attribute("value"))
            check(shown.get("username") == "admin", f"the login body is prefilled ({shown})")
            area.clear()
            area.send_keys(json.dumps({"username": "admin", "password": admin_password}))
            status, body = execute(driver, block)
            token = body.get("data", {}).get("token", "")
            check(status == 200 and token.count(".") == 2, f"POST /login returns a token ({status})")

            # Login also set the HttpOnly cookie, which would authenticate everything below by
            # itself; drop it so that only the Authorize dialog's token can.
            driver.delete_all_cookies()

            driver.find_element(By.CSS_SELECTOR, ".scheme-container button.authorize").click()
            dialog = WebDriverWait(driver, WAIT).until(
                EC.presence_of_element_located((By.CSS_SELECTOR, ".modal-ux"))
            )
            section = dialog.find_element(
                By.XPATH, ".//div[contains(@class,'auth-container')][.//h4[contains(.,'BearerToken')]]"
            )
            section.find_element(By.CSS_SELECTOR, "input").send_keys(token)
            section.find_element(By.CSS_SELECTOR, "button.authorize").click()
            WebDriverWait(section, WAIT).until(
                lambda s: s.find_elements(By.XPATH, ".//button[contains(.,'Logout')]")
            )
            dialog.find_element(By.CSS_SELECTOR, "button.close-modal").click()
            WebDriverWait(driver, WAIT).until(
                EC.invisibility_of_element_located((By.CSS_SELECTOR, ".modal-ux"))
            )
            print("ok: authorized with the token as BearerToken")

            # POST /roles exactly as documented.
            block = opblock(driver, "post", "/roles")
            try_it_out(driver, block)
            shown = json.loads(
                block.find_element(By.CSS_SELECTOR, "textarea.body-param__text").get_attribute(
                    "value"
                )
            )
            check("string" not in json.dumps(shown), f"the POST /roles example is realistic ({shown})")
            status, body = execute(driver, block)
            check(status == 200, f"POST /roles with the documented example returns 200 ({body})")
            check(body["data"]["name"] == shown["name"], "the created user is the example's")

            block = opblock(driver, "get", "/profile")
            try_it_out(driver, block)
            status, body = execute(driver, block)
            check(
                status == 200 and body["data"]["name"] == "admin",
                f"GET /profile returns the admin ({status})",
            )

            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            check(not errors, f"no console error ({errors})")
            outside = set()
            for entry in driver.get_log("performance"):
                msg = json.loads(entry["message"])["message"]
                if msg["method"] != "Network.requestWillBeSent":
                    continue
                url = msg["params"]["request"]["url"]
                parsed = urlparse(url)
                # data:, blob: and the browser's own pages (chrome-untrusted://) use no network.
                if parsed.scheme not in ("http", "https", "ws", "wss"):
                    continue
                if parsed.hostname != "127.0.0.1" or parsed.port != core4d.port:
                    outside.add(url)
            check(not outside, f"no request leaves the host ({sorted(outside)})")
        except (AssertionError, TimeoutException, KeyError, ValueError):
            shot = os.path.join(tempfile.gettempdir(), f"swagger-ui-failure-{int(time.time())}.png")
            driver.save_screenshot(shot)
            for entry in driver.get_log("browser"):
                print(f"console: {entry}", file=sys.stderr)
            print(f"screenshot: {shot}", file=sys.stderr)
            print("core4d log (end):\n" + "".join(core4d.log[-20:]), file=sys.stderr)
            raise
        finally:
            driver.quit()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run(sys.argv[1])
    print("swagger ui: all checks passed")
