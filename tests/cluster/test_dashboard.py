"""The dashboard of a live 3-node cluster, in a real headless browser.

Debian's chromium, driven by selenium through Debian's chromium-driver, both
given by path, so that nothing is downloaded at run time (.ci/run installs
them where missing). The test loads the page of the first node, checks its
node table and task counts against what the cluster did, opens an error's
traceback, and saves screenshots (to ZF_SCREENSHOTS=DIR if set, e.g. docs/,
else to the test's temp dir).

It is skipped, saying why, only where chromium or its driver is not
installed and the run is not CI's; in CI (CI=true) a missing browser fails.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

import zfabric as zf
from tests.harness.dashboard import get_json, wait_for_tasks
from zfabric.testing import LocalCluster

pytestmark = pytest.mark.timeout(180)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
OK, BAD = 40, 5


def _need_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e .[test])")
    if missing:
        why = f"no headless browser: {', '.join(missing)} missing " \
              "(apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; .ci/run installs them")
        pytest.skip(why)


@pytest.fixture
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="zf-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1300",
                "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")   # selenium-manager: never the network
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@zf.remote
def work(i):
    time.sleep(0.05 + 0.01 * (i % 5))
    return i


@zf.remote
def fails(i):
    raise ValueError(f"input {i} is not allowed")


@pytest.fixture
def live_cluster(fresh):
    """3 nodes; tasks that fail run on the second and third (resource "far")."""
    with LocalCluster(nodes=1, num_cpus=1) as cluster:
        cluster.add_node(num_cpus=1, resources={"far": 1})
        cluster.add_node(num_cpus=1, resources={"far": 1})
        yield cluster


def _screenshot(driver, name: str, tmp_path) -> str:
    folder = os.environ.get("ZF_SCREENSHOTS") or str(tmp_path)
    path = os.path.join(folder, name)
    driver.save_screenshot(path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return path


def test_dashboard_of_a_live_cluster(live_cluster, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    info = zf.init(address=live_cluster.address)
    url = info["dashboard_url"]
    assert url == live_cluster.nodes[0].info["dashboard_url"]
    assert zf.get([work.remote(i) for i in range(OK)]) == list(range(OK))
    for ref in [fails.options(resources={"far": 0.5}).remote(i) for i in range(BAD)]:
        with pytest.raises(ValueError):
            zf.get(ref)
    expected = wait_for_tasks(url, finished=OK, failed=BAD)
    ran_on = {r["node_id"] for r in expected["stream"]}
    far = {h.node_id for h in live_cluster.nodes[1:]}
    assert ran_on & far   # the stream shows runs of other nodes, replicated

    browser.get(url)
    wait = WebDriverWait(browser, 30, poll_frequency=0.2)

    def text(css):
        return browser.find_element(By.CSS_SELECTOR, css).text

    # the node table: three rows, alive, the cluster's own node ids
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#nodes tr")) == 3)
    rows = browser.find_elements(By.CSS_SELECTOR, "#nodes tr")
    assert {r.get_attribute("data-node") for r in rows} == {h.node_id for h in live_cluster.nodes}
    assert [r.get_attribute("data-alive") for r in rows] == ["true"] * 3
    assert all("alive" in r.text for r in rows)
    # the counts: what the cluster ran
    wait.until(lambda d: text("#count-finished") == str(OK) and text("#count-failed") == str(BAD))
    functions = {r.get_attribute("data-function"): r.text.split()
                 for r in browser.find_elements(By.CSS_SELECTOR, "#functions tr")}
    assert functions["work"][4:7] == [str(OK), "0", "0"]
    assert functions["fails"][4:7] == ["0", str(BAD), "0"]
    # the task stream draws every run; the errors carry their tracebacks
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#stream rect")) == OK + BAD)
    assert len(browser.find_elements(By.CSS_SELECTOR, '#stream rect[data-status="failed"]')) \
        == BAD
    errors = browser.find_elements(By.CSS_SELECTOR, "#errors details")
    assert len(errors) == BAD
    assert all("ValueError" in e.text and "is not allowed" in e.text for e in errors)
    assert {e["node_id"] for e in get_json(url, "/api/errors")["errors"]} <= far
    # the state chart has its lines once two samples are in
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#state-chart polyline'))
    _screenshot(browser, "dashboard.png", tmp_path)

    errors[0].find_element(By.TAG_NAME, "summary").click()
    pre = errors[0].find_element(By.TAG_NAME, "pre")
    assert pre.is_displayed() and pre.text.startswith("Traceback (most recent call last):")
    browser.execute_script("document.getElementById('errors').scrollIntoView()")
    _screenshot(browser, "dashboard-errors.png", tmp_path)
    # no script error, no failed request, in the page's console
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
