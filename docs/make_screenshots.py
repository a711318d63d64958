"""Make the README's MLflow UI screenshots from a real run (headless Chromium, loopback only).

    python examples/demo_digits.py --tracking-uri sqlite:///demo.db
    python docs/make_screenshots.py sqlite:///demo.db

Needs Debian's ``chromium`` and ``chromium-driver`` and ``pip install selenium``. It starts
``mlflow ui`` on a free loopback port, opens the demo's Keras Tuner study with its trials
expanded, then the study's report page (``reports/study.html``) in the artifact viewer, scrolled
to its parameter importances, and writes
``docs/mlflow-ui-study.png`` and ``docs/mlflow-ui-report.png``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient
from selenium import webdriver
from selenium.webdriver.common.by import By

HERE = Path(__file__).resolve().parent


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def main(uri: str, experiment: str = "digits-demo", study: str = "keras_tuner") -> None:
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    parent = client.search_runs(
        [experiment_id], f"tags.`mlflow_hpo.study_name` = '{study}'", max_results=1
    )[0]
    port = _port()
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [sys.executable, "-m", *command, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1500,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService("/usr/bin/chromedriver"), options=options
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{base}/health")
        driver.get(f"{base}/#/experiments/{experiment_id}/runs")
        time.sleep(6)
        for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
            close.click()  # the assistant side panel
        row = driver.find_element(By.CSS_SELECTOR, f"[row-id='{parent.info.run_id}']")
        row.find_element(By.CSS_SELECTOR, "button").click()  # expand the study's trials
        time.sleep(3)
        driver.save_screenshot(str(HERE / "mlflow-ui-study.png"))
        driver.get(
            f"{base}/#/experiments/{experiment_id}/runs/{parent.info.run_id}"
            "/artifacts/reports/study.html"
        )
        time.sleep(8)
        driver.save_screenshot(str(HERE / "mlflow-ui-report.png"))
    finally:
        driver.quit()
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///mlflow.db")
