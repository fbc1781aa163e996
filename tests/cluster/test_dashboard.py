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

import numpy as np
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
def make_array(n):
    return np.ones(n, dtype=np.uint8)


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


READ_PAGE = """
const rows = sel => [...document.querySelectorAll(sel)];
return {
  sampled: document.body.dataset.sampledAt || "",
  nodes: rows("#nodes tr").map(r => [r.dataset.node, r.dataset.alive, r.textContent]),
  counts: Object.fromEntries(rows("#counts b").map(b => [b.id.slice(6), b.textContent])),
  functions: Object.fromEntries(rows("#functions tr[data-function]").map(
    r => [r.dataset.function, [...r.cells].map(c => c.textContent)])),
  stream: rows("#stream rect").map(r => r.dataset.status),
  errors: rows("#errors details").map(d => d.textContent),
  open: rows("#errors details[open] pre").map(p => p.textContent),
  open_text: rows("#errors details[open] pre").filter(p => p.offsetHeight > 0)
    .map(p => p.innerText),
  largest: rows("#largest tr[data-object]").map(r => r.dataset.object),
  objects: Object.fromEntries(rows("#objects tr").map(r => [r.dataset.node,
                                                          r.cells[1].textContent])),
  lines: rows("#state-chart polyline").length,
};
"""


def _screenshot(driver, name: str, tmp_path) -> str:
    folder = os.environ.get("ZF_SCREENSHOTS") or str(tmp_path)
    path = os.path.join(folder, name)
    driver.save_screenshot(path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return path


def test_dashboard_of_a_live_cluster(live_cluster, browser, tmp_path):
    from selenium.webdriver.common.by import By

    info = zf.init(address=live_cluster.address)
    url = info["dashboard_url"]
    assert url == live_cluster.nodes[0].info["dashboard_url"]
    assert zf.get([work.remote(i) for i in range(OK)]) == list(range(OK))
    for ref in [fails.options(resources={"far": 0.5}).remote(i) for i in range(BAD)]:
        with pytest.raises(ValueError):
            zf.get(ref)
    arrays = [make_array.options(resources={"far": 0.5}).remote(n)
              for n in (6_000_000, 3_000_000, 2_000_000)]
    zf.wait(arrays, num_returns=len(arrays))
    arrays.append(zf.put(np.ones(4_000_000, dtype=np.uint8)))
    expected = wait_for_tasks(url, finished=OK + 3, failed=BAD)
    ran_on = {r["node_id"] for r in expected["stream"]}
    far = {h.node_id for h in live_cluster.nodes[1:]}
    assert ran_on & far   # the stream shows runs of other nodes, replicated

    browser.get(url)

    def page():
        return browser.execute_script(READ_PAGE)   # one consistent reading of the DOM

    def shows(pred, timeout=30.0):
        """The page's reading once `pred` holds of it (after a refresh or more)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = page()
            if pred(seen):
                return seen
            assert time.monotonic() < deadline, f"after {timeout} s the page shows {seen}"
            time.sleep(0.2)

    # the node table: three rows, alive, the cluster's own node ids
    seen = shows(lambda p: len(p["nodes"]) == 3)
    assert {n[0] for n in seen["nodes"]} == {h.node_id for h in live_cluster.nodes}
    assert [n[1] for n in seen["nodes"]] == ["true"] * 3
    assert all("alive" in n[2] for n in seen["nodes"])
    # the counts: what the cluster ran
    seen = shows(lambda p: p["counts"].get("finished") == str(OK + 3)
                 and p["counts"].get("failed") == str(BAD))
    assert seen["counts"]["running"] == seen["counts"]["queued"] == "0"
    functions = seen["functions"]
    assert functions["work"][4:7] == [str(OK), "0", "0"]
    assert functions["fails"][4:7] == ["0", str(BAD), "0"]
    assert functions["make_array"][4:7] == ["3", "0", "0"]
    # the task stream draws every run; the errors carry their tracebacks
    seen = shows(lambda p: len(p["stream"]) == OK + BAD + 3 and len(p["errors"]) == BAD)
    assert seen["stream"].count("failed") == BAD
    assert all("ValueError" in e and "is not allowed" in e and "Traceback" in e
               for e in seen["errors"])
    assert {e["node_id"] for e in get_json(url, "/api/errors")["errors"]} <= far
    # objects: the four arrays, largest first, on the nodes that hold them
    want = [ref.hex() for ref in (arrays[0], arrays[3], arrays[1], arrays[2])]
    seen = shows(lambda p: p["largest"][:4] == want)
    assert int(seen["objects"][live_cluster.nodes[0].node_id]) >= 1
    assert sum(int(n) for n in seen["objects"].values()) >= 4
    # the state chart has its lines once two samples are in
    shows(lambda p: p["lines"] > 0)
    _screenshot(browser, "dashboard.png", tmp_path)

    # a traceback opened stays open across the page's refreshes
    browser.find_element(By.CSS_SELECTOR, "#errors details summary").click()
    sampled = page()["sampled"]
    seen = shows(lambda p: p["sampled"] != sampled)
    assert seen["open"] == [seen["open_text"][0]] and seen["open_text"][0].startswith(
        "Traceback (most recent call last):")
    browser.execute_script("document.getElementById('errors').scrollIntoView()")
    _screenshot(browser, "dashboard-errors.png", tmp_path)
    # no script error, no failed request, in the page's console
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
