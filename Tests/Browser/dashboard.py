#!/usr/bin/env python3
"""hv serve's dashboard in a real headless browser (Debian's chromium and chromedriver, driven by
Selenium): it loads, lists two running VMs, pauses one through its button, and the charts
update. Screenshots go to OUT (test artefacts, never committed).

    dashboard.py BASE_URL TOKEN OUT_DIR          (DaemonTests runs it against a live daemon)

Exit status 0 when every check holds; otherwise 1, with the check that failed on stderr.
"""
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def fail(message):
    print(f"dashboard: {message}", file=sys.stderr)
    sys.exit(1)


def wait(what, condition, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception:  # an element that is being redrawn
            pass
        time.sleep(0.2)
    fail(f"timed out waiting for {what}")


def main():
    base, token, out = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(out, exist_ok=True)
    options = Options()
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"]:
        options.add_argument(argument)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"{base}/#token={token}")

        def states():
            rows = driver.find_elements(By.CSS_SELECTOR, "#vms tbody tr")
            return {row.get_attribute("data-vm"): row.find_element(By.CSS_SELECTOR, "td.state").text for row in rows}

        wait("two running VMs in the list", lambda: states() == {"web1": "running", "web2": "running"})
        driver.save_screenshot(os.path.join(out, "1-two-running.png"))

        def points(element_id):
            return int(driver.find_element(By.ID, element_id).get_attribute("data-points") or 0)

        # The table's exit-rate charts fill from the event stream's vm.metrics events.
        first = wait("web2's chart to get points", lambda: points("spark-web2") >= 2 and points("spark-web2"))
        wait("web2's chart to update", lambda: points("spark-web2") > first)

        button = wait("web1's pause button",
                      lambda: driver.find_element(By.CSS_SELECTOR, "tr[data-vm='web1'] button[data-action='pause']"))
        button.click()
        wait("web1 paused in the list", lambda: states().get("web1") == "paused")
        wait("web1's resume button", lambda: driver.find_element(By.CSS_SELECTOR, "tr[data-vm='web1'] button[data-action='resume']"))
        if states().get("web2") != "running":
            fail(f"web2 should still run: {states()}")
        log = wait("the pause in the event log",
                   lambda: [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#events .event[data-type='vm.paused']")])
        if not any("web1" in line for line in log):
            fail(f"the event log does not show web1's pause: {log}")
        driver.save_screenshot(os.path.join(out, "2-web1-paused.png"))

        # The detail view's charts and console.
        driver.find_element(By.CSS_SELECTOR, "tr[data-vm='web2'] td").click()
        wait("the detail view", lambda: driver.find_element(By.ID, "detail").is_displayed())
        start = wait("the rate chart to have points", lambda: points("rate-chart") >= 1 and points("rate-chart"))
        wait("the rate chart to update", lambda: points("rate-chart") > start)
        wait("the latency chart to have points", lambda: points("latency-chart") >= 1)
        driver.save_screenshot(os.path.join(out, "3-web2-detail.png"))
        errors = [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
        if errors:
            fail(f"the page logged errors: {errors}")
        print("dashboard: loaded, listed web1 and web2 running, paused web1 with its button, charts updated")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
