# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Driving the demo's page in headless Chromium (Debian's `chromium` + `chromium-driver`, through Selenium): used by
`tests/test_demo.py`, and to take the README's screenshot of the quickstart's run::

    python tests/demo_browser.py runs/quickstart/nsp docs/demo.png
"""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


TIMEOUT = 120
"""Seconds any one wait for the page may take."""


def chromium_paths() -> tuple[str, str] | None:
    """``(chromium, chromedriver)``, or ``None`` when either is not installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium driven by Selenium, quit on exit."""
    from selenium import webdriver

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError("No `chromium`/`chromedriver` here: `apt-get install chromium chromium-driver`.")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=paths[1]), options=options)
    browser.set_page_load_timeout(TIMEOUT)
    try:
        yield browser
    finally:
        browser.quit()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(demo: Any) -> Iterator[str]:
    """``demo`` served on a free loopback port; yields its URL."""
    from peft_nsp.demo import launch

    _, url, _ = launch(demo, free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def open_tab(browser: Any, name: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.XPATH, f"//button[@role='tab'][contains(., '{name}')]").click()


def shown_text(browser: Any, element_id: str) -> str:
    """The text of the element, whitespace collapsed (Markdown splits it across elements)."""
    from selenium.webdriver.common.by import By

    return " ".join(browser.find_element(By.ID, element_id).text.split())


def top_label(browser: Any, element_id: str) -> str:
    """The class a `gr.Label` shows as its prediction ("" before it has one)."""
    from selenium.webdriver.common.by import By

    found = browser.find_elements(By.CSS_SELECTOR, f"#{element_id} [data-testid=label-output-value]")
    return found[0].text.strip() if found else ""


def classify_in_page(browser: Any, url: str, image: Path, compare: bool = False) -> tuple[str, str]:
    """Open the page, upload ``image`` in the Classify tab (and press "Classify with both revisions"); returns the
    predictions shown for revision A and B (B empty unless ``compare``)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, TIMEOUT)
    browser.get(url)
    wait.until(lambda b: "revision(s)" in shown_text(b, "header"))
    open_tab(browser, "Classify")
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(image))
    wait.until(lambda b: top_label(b, "label-a"))
    if compare:
        browser.find_element(By.ID, "classify").click()
        wait.until(lambda b: top_label(b, "label-b"))
    return top_label(browser, "label-a"), top_label(browser, "label-b")


def teach_in_page(browser: Any, expected: str) -> str:
    """Press Teach with the tab's defaults; returns the status once it contains ``expected``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_tab(browser, "Teach")
    browser.find_element(By.ID, "teach").click()
    WebDriverWait(browser, TIMEOUT).until(lambda b: expected in shown_text(b, "status"))
    return shown_text(browser, "status")


def pixel_spread(path: str | Path) -> float:
    """Standard deviation of a screenshot's grey levels: about 0 for a blank page."""
    return float(np.asarray(Image.open(path).convert("L"), dtype=np.float32).std())


def main(source: str, output: str) -> None:
    """Screenshot the Classify tab: a test digit of MNIST-5k by the first and the latest revision of ``source``."""
    from peft_nsp.demo import build_demo
    from peft_nsp.offline import load_mnist_5k

    test = load_mnist_5k(test_per_class=1, seed=0)["test"]
    image = Path(output).resolve().with_name(".demo-digit.png")
    test.filter(lambda label: label == 7, input_columns="label")[0]["image"].resize((112, 112)).save(image)
    try:
        with served(build_demo(source)) as url, headless_chromium(1400, 1000) as browser:
            shown = classify_in_page(browser, url, image, compare=True)
            browser.execute_script("window.scrollTo(0, 0)")
            browser.save_screenshot(output)
    finally:
        image.unlink()
    print(f"{output}: predictions {shown}, pixel spread {pixel_spread(output):.1f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
