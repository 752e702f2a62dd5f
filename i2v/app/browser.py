"""Drive ``python app.py`` in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver`` via Selenium):
used by the browser test (tests/app/test_browser.py) and by ``scripts/app_screenshot.py`` (the README's
``docs/app.png``), so the picture shows what the test checks."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)
# Records every progress text Gradio shows while a request runs (it can be gone before a poll would see it).
WATCH_PROGRESS = """
window.__progress = [];
new MutationObserver(() => {
  document.querySelectorAll('.progress-text, .meta-text, .meta-text-center, .progress-level').forEach(el => {
    const t = (el.textContent || '').replace(/\s+/g, ' ').trim();
    if (t && !window.__progress.includes(t)) window.__progress.push(t);
  });
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def find_browser() -> tuple[Optional[str], Optional[str], str]:
    """(chromium binary, chromedriver binary, reason when either is missing)."""
    browser = next((shutil.which(b) for b in CHROMIUM if shutil.which(b)), None)
    driver = next((shutil.which(d) for d in DRIVER if shutil.which(d)), None)
    try:
        import selenium  # noqa: F401
    except ImportError:
        return browser, driver, "selenium is not installed (pip install -r requirements.txt)"
    if browser is None or driver is None:
        return browser, driver, "no chromium/chromedriver on PATH (apt-get install -y chromium chromium-driver)"
    return browser, driver, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_server(args: list[str], log: Path, port: Optional[int] = None, timeout: float = 180.0) -> Iterator[str]:
    """Run ``python app.py server.port=<free> *args`` in its own process group; yield its URL once it answers.
    On exit: SIGTERM, wait, and raise if the server did not stop or left a process behind."""
    port = port or free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), f"server.port={port}", *args], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode} before serving:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"app.py did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            stop_process_group(proc)
        except RuntimeError as err:
            raise RuntimeError(f"{err}\n--- {log} (last lines) ---\n{log.read_text()[-4000:]}") from None


def stop_process_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the server (it closes like Ctrl-C), wait; SIGKILL its group if it hangs. Raises if it had to kill,
    if it exited non-zero, or if any process of its group is still alive afterwards."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise RuntimeError(f"app.py did not stop within {timeout:.0f} s of SIGTERM; killed")
    try:
        os.killpg(proc.pid, 0)            # the group still has a member: an orphan
    except ProcessLookupError:
        pass
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError("app.py left a process running after it stopped; killed its group")
    if proc.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(f"app.py exited with status {proc.returncode}")


@contextmanager
def chromium(browser: str, driver: str, width: int = 1400, height: int = 1300):
    """A headless Chromium under Selenium; always quit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}", "--hide-scrollbars", "--mute-audio"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


def generate_in_page(drv, url: str, image: Path, prompt: str, steps: int = 4, timeout: float = 120.0) -> dict:
    """Open the page, upload ``image``, type ``prompt``, set steps, click generate, wait for the video.
    Returns {"video_src", "progress": [texts seen], "status", "settings": text of the settings box}."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(drv, timeout)
    drv.get(url)
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#generate")))
    drv.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(Path(image).resolve()))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#input-image img")))
    box = drv.find_element(By.CSS_SELECTOR, "#prompt textarea")
    box.clear()
    box.send_keys(prompt)
    num = drv.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
    num.send_keys(Keys.CONTROL, "a")
    num.send_keys(str(steps), Keys.TAB)
    drv.execute_script(WATCH_PROGRESS)
    drv.find_element(By.CSS_SELECTOR, "#generate").click()
    video = wait.until(lambda d: next((v for v in d.find_elements(By.CSS_SELECTOR, "#video video")
                                       if v.get_attribute("src")), None))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#status").text.strip())
    time.sleep(1.0)   # let the player show its first frame before a screenshot
    return {"video_src": video.get_attribute("src"), "progress": drv.execute_script("return window.__progress"),
            "status": drv.find_element(By.CSS_SELECTOR, "#status").text,
            "settings": drv.find_element(By.CSS_SELECTOR, "#settings").text}


def table3_in_page(drv, timeout: float = 120.0) -> dict:
    """After :func:`generate_in_page` (image and prompt in place): open the side-by-side tab, click "every ablation
    (Table 3)", wait for the contact sheet. Returns {"sheet_src", "status"}."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(drv, timeout)
    tab = next(b for b in drv.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "Side by side" in b.text)
    tab.click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#table3").is_displayed())
    drv.find_element(By.CSS_SELECTOR, "#table3").click()
    sheet = wait.until(lambda d: next((i for i in d.find_elements(By.CSS_SELECTOR, "#sheet img")
                                       if i.get_attribute("src")), None))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#cmp-status").text.strip())
    return {"sheet_src": sheet.get_attribute("src"), "status": drv.find_element(By.CSS_SELECTOR, "#cmp-status").text}
