"""End to end in headless Chromium: a real ``airflow api-server`` loads plugins/instatag_plugin.py;
the browser, logged in to Airflow, opens the "instatag" entry of the Airflow UI, filters the tag
browser by a tag, and moves the report's threshold slider; a user with edit rights confirms a
predicted tag (stored in label_corrections), a viewer sees no correction controls.

Needs Debian's ``chromium`` and ``chromium-driver`` (scripts/provision_browser.sh) and the
``selenium`` package; without them the tests skip, except under CI (CI set), where they fail.
The api-server runs with a throw-away AIRFLOW_HOME and SQLite metadata database, the
SimpleAuthManager with a viewer and an editor (role user), and instatag settings pointing at a SQLite database filled by
the real pipeline (a tiny untrained model: evaluate, promote, score, report).
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser_support import headless_chromium, require_browser
from builders import add_images, add_model, add_vocab

from instatag import db, evaluate, promote, report, score
from instatag.settings import load_settings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
USER, PASSWORD = "viewer", secrets.token_urlsafe(10)
EDITOR, EDITOR_PASSWORD = "editor", secrets.token_urlsafe(10)
TAG = "soup"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model_dir):
    """instatag settings on SQLite with a champion, its predictions (by the scorer) and its report."""
    require_browser()
    settings = load_settings(env={}, data_dir=tmp_path_factory.mktemp("instatag") / "var")
    db.upgrade(settings)
    images = add_images(settings, 24)
    mid = add_model(settings, add_vocab(settings, images), tiny_model_dir)
    evaluate.evaluate(settings, mid)
    promote.promote(settings, mid, reason="browser test")
    score.score(settings)
    report.build_report(settings, mid)
    return settings, mid


@pytest.fixture(scope="module")
def api_server(tmp_path_factory, data):
    """``airflow api-server`` with the repo's plugins folder; yields its base URL."""
    import requests

    settings, _ = data
    root = tmp_path_factory.mktemp("airflow")
    (root / "dags").mkdir()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    (root / "passwords.json").write_text(json.dumps({USER: PASSWORD, EDITOR: EDITOR_PASSWORD}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "INSTATAG_"))}
    env.update({
        "AIRFLOW_HOME": str(root),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer,{EDITOR}:user",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "passwords.json"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "INSTATAG_DATABASE_URL": settings.database_url,
        "INSTATAG_DATA_DIR": str(settings.data_dir),
    })
    log = root / "api-server.log"
    with log.open("ab") as fh:
        rc = subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=root, stdout=fh, stderr=subprocess.STDOUT,
                            timeout=600).returncode
    assert rc == 0, f"airflow db migrate failed:\n{_tail(log)}"
    with log.open("ab") as fh:
        proc = subprocess.Popen([AIRFLOW, "api-server", "--port", str(port), "--host", "127.0.0.1"], env=env, cwd=root,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"api-server exited with {proc.returncode}:\n{_tail(log)}"
            try:
                if requests.get(f"{base}/api/v2/monitor/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"api-server not up after 300 s:\n{_tail(log)}"
            time.sleep(2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _login(api_server, user: str, password: str) -> str:
    import requests

    r = requests.post(f"{api_server}/auth/token", json={"username": user, "password": password}, timeout=30)
    r.raise_for_status()
    return r.json()["access_token"]


@pytest.fixture(scope="module")
def token(api_server) -> str:
    return _login(api_server, USER, PASSWORD)


@pytest.fixture
def browser(tmp_path, api_server, token):
    """Headless Chromium logged in as the viewer."""
    yield from _chromium(tmp_path, api_server, token)


@pytest.fixture
def editor_browser(tmp_path, api_server):
    """Headless Chromium logged in as the editor (role user: may edit the instatag DAGs)."""
    yield from _chromium(tmp_path, api_server, _login(api_server, EDITOR, EDITOR_PASSWORD))


def _chromium(tmp_path, api_server, token):
    """Headless Chromium holding the Airflow login cookie."""
    with headless_chromium(tmp_path / "chromium") as driver:
        driver.get(f"{api_server}/instatag/robots.txt")  # any page of the origin, to set its cookie
        driver.add_cookie({"name": "_token", "value": token, "path": "/"})  # what Airflow's login sets
        yield driver


def assert_not_blank(png: bytes) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 22)
    assert len(colours) > 500, f"only {len(colours)} colours"
    assert max(n for n, _ in colours) < 0.9 * img.width * img.height, "one colour covers the screenshot"


# --------------------------------------------------------------------------- tests
def test_plugin_pages_require_an_airflow_login(api_server, token, data):
    import requests

    _, mid = data
    for path in ("/instatag/", f"/instatag/browse?tag={TAG}", "/instatag/thumb/1", f"/instatag/models/{mid}/report"):
        assert requests.get(api_server + path, timeout=30).status_code == 401, path
        bad = requests.get(api_server + path, headers={"Authorization": "Bearer not-a-jwt"}, timeout=30)
        assert bad.status_code in (401, 403), path
        ok = requests.get(api_server + path, cookies={"_token": token}, timeout=30)
        assert ok.status_code == 200, path
    plugins = requests.get(f"{api_server}/api/v2/plugins", headers={"Authorization": f"Bearer {token}"},
                           timeout=30).json()["plugins"]
    mine = next(p for p in plugins if p["name"] == "instatag")
    assert mine["external_views"][0]["name"] == "instatag"
    for path in ("/instatag/reports/1/../../instatag.db", "/instatag/reports/1/..%2f..%2finstatag.db",
                 "/instatag/reports/1/%2e%2e/%2e%2e/instatag.db"):
        raw = requests.Request("GET", api_server + path, cookies={"_token": token}).prepare()
        raw.url = api_server + path  # as typed: no client-side normalisation
        r = requests.Session().send(raw, timeout=30)
        assert r.status_code in (400, 404) and b"SQLite format" not in r.content, path


def test_tag_browser_inside_the_airflow_ui(browser, api_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(f"{api_server}/plugin/instatag")
    frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe[title='instatag']")))
    assert browser.find_elements(By.XPATH, "//a[.//*[normalize-space(text())='instatag']] | "
                                           "//*[normalize-space(text())='instatag']"), "no nav entry"
    browser.switch_to.frame(frame)
    wait.until(ec.presence_of_element_located((By.ID, "models")))
    assert "★ champion" in browser.page_source
    browser.find_element(By.LINK_TEXT, "Tag browser").click()
    Select(wait.until(ec.presence_of_element_located((By.ID, "tag")))).select_by_value(TAG)
    browser.find_element(By.ID, "apply").click()
    wait.until(ec.url_contains(f"tag={TAG}"))
    cards = wait.until(ec.presence_of_all_elements_located((By.CSS_SELECTOR, "#results .card")))
    assert cards
    for card in cards:
        assert card.find_element(By.CSS_SELECTOR, ".chip.hit").text.startswith(f"{TAG} ")
    wait.until(lambda d: d.execute_script(
        "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))  # thumbnails served
    html = browser.page_source
    assert f'<option value="{TAG}" selected="">' in html and f"with “{TAG}”" in html
    assert 'class="correct"' not in html and 'name="csrf"' not in html  # a viewer: no correction controls
    browser.switch_to.default_content()
    png = browser.get_screenshot_as_png()
    (tmp_path / "tag-browser.png").write_bytes(png)
    assert_not_blank(png)


def test_report_slider_updates_precision_and_recall(browser, api_server, data):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    settings, mid = data
    browser.get(f"{api_server}/instatag/models/{mid}/report")
    slider = WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.ID, "threshold")))
    curves = json.loads(re.search(r'id="curves">(.*?)</script>', browser.page_source, re.S).group(1))

    def shown():
        rows = browser.find_elements(By.CSS_SELECTOR, "#label-table tbody tr")
        return {r.get_attribute("data-label"): (r.find_element(By.CSS_SELECTOR, ".sp").text,
                                                r.find_element(By.CSS_SELECTOR, ".sr").text) for r in rows}

    def expected(i):
        def pct(num, den):
            return f"{100 * num / den:.1f}" if den else "–"

        out = {}
        for label, c in curves["labels"].items():
            tp, fp, fn = c["tp"][i], c["fp"][i], c["fn"][i]
            out[label] = (pct(tp, tp + fp), pct(tp, tp + fn))
        return out

    assert browser.find_element(By.ID, "threshold-value").text == "0.50"
    assert shown() == expected(report.THRESHOLDS.index(0.5))
    slider.send_keys(Keys.HOME)  # the lowest threshold: the script runs under the page's CSP
    assert browser.find_element(By.ID, "threshold-value").text == "0.05"
    assert shown() == expected(0)
    assert "all labels together" in browser.find_element(By.ID, "micro").text


def test_a_tags_heatmap_shows_over_its_photo(browser, api_server, data):
    """Clicking a predicted tag swaps the card's photo for that tag's Grad-CAM heatmap (computed by the
    api-server, cached under heatmaps/<model version>/); clicking it again brings the photo back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    settings, mid = data
    wait = WebDriverWait(browser, 120)
    browser.get(f"{api_server}/instatag/browse?model={mid}")
    card = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .card")))
    img, chip = card.find_element(By.TAG_NAME, "img"), card.find_element(By.CSS_SELECTOR, ".chip[data-label]")
    photo, label = img.get_attribute("src"), chip.get_attribute("data-label")
    chip.click()
    wait.until(lambda d: "/heatmap/" in img.get_attribute("src") and "loading" not in card.get_attribute("class"))
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 32
    assert f"label={label}" in img.get_attribute("src") and "why" in chip.get_attribute("class")
    assert not card.find_elements(By.CLASS_NAME, "why-error")
    assert list((settings.data_dir / "heatmaps" / str(mid)).glob(f"*_{label}.png"))
    chip.click()
    wait.until(lambda d: img.get_attribute("src") == photo)
    assert "why" not in chip.get_attribute("class")


def test_an_editor_confirms_a_tag_and_it_is_stored(editor_browser, api_server, data):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    from sqlalchemy import text

    settings, mid = data
    wait = WebDriverWait(editor_browser, 120)
    editor_browser.get(f"{api_server}/instatag/browse?order=review")
    card = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .card")))
    image_id = int(card.get_attribute("id").removeprefix("image-"))
    button = card.find_element(By.CSS_SELECTOR, "form.correct button.confirm")
    label = button.get_attribute("value").removeprefix("confirmed:")
    button.click()
    saved = wait.until(ec.presence_of_element_located((By.ID, "saved")))
    assert f"image #{image_id} stored" in saved.text and "order=review" in editor_browser.current_url
    card = editor_browser.find_element(By.ID, f"image-{image_id}")
    assert card.find_element(By.CSS_SELECTOR, f'.verdict.confirmed[data-label="{label}"]')
    with db.get_engine(settings).connect() as conn:
        rows = conn.execute(text('select image_id, label, verdict, "user", model_version_id from label_corrections'
                                 )).all()
    assert [tuple(r) for r in rows] == [(image_id, label, "confirmed", EDITOR, mid)]


def test_correction_posts_through_the_real_auth_manager(api_server, token, data):
    """Airflow's own login and SimpleAuthManager roles: no login 401, the viewer 403, the editor's forged
    cross-site or token-less POST 403; nothing stored by any of them."""
    import requests
    from sqlalchemy import text

    settings, mid = data
    url = f"{api_server}/instatag/correct"
    form = {"image_id": 1, "model": mid, "action": f"rejected:{TAG}", "csrf": "", "back": ""}
    with db.get_engine(settings).connect() as conn:
        before = conn.execute(text("select count(*) from label_corrections")).scalar()
    assert requests.post(url, data=form, timeout=30, allow_redirects=False).status_code == 401
    r = requests.post(url, data=form, cookies={"_token": token}, timeout=30, allow_redirects=False)
    assert r.status_code == 403 and "edit rights" in r.text
    editor = {"_token": _login(api_server, EDITOR, EDITOR_PASSWORD)}
    assert requests.post(url, data=form, cookies=editor, timeout=30, allow_redirects=False).status_code == 403
    r = requests.post(url, data=form, cookies=editor, headers={"Origin": "https://evil.example"}, timeout=30,
                      allow_redirects=False)
    assert r.status_code == 403 and "evil.example" in r.text
    with db.get_engine(settings).connect() as conn:
        assert conn.execute(text("select count(*) from label_corrections")).scalar() == before
