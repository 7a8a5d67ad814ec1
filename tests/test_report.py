"""Reports people share: nothing from a dataset or a model is ever live HTML, the comparison page and sweeps, and the
report in a real browser with the network off."""

import json
import shutil
import socket
import subprocess
import threading
from html.parser import HTMLParser

import pytest

from ftkit import cli
from ftkit.core.io import read_json
from ftkit.report.page import render
from tests.conftest import recipe_file, tiny_sft

PAYLOADS = ["<script>alert(1)</script>", '<img src=x onerror="alert(2)">', "</textarea><b>bold</b>",
            '<a href="javascript:alert(3)">click</a>', "<svg onload=alert(4)>"]


class LiveParts(HTMLParser):
    """Everything in a page that a browser would run or follow."""

    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "iframe", "object", "embed", "svg", "textarea"):
            self.found.append(tag)
        for name, value in attrs:
            if name.startswith("on") or (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"{tag}[{name}]")

    def handle_endtag(self, tag):
        if tag == "textarea":
            self.found.append("/textarea")


@pytest.mark.pipeline
def test_payloads_in_data_and_model_output_are_never_live(tiny_model_dir, tmp_path):
    template = "answer <b>now</b> in one short word only please"  # every prompt's: the report names it, escaped
    rows = [{"question": f"{PAYLOADS[i % len(PAYLOADS)]} question {i}: {template}",
             "answer": f"{PAYLOADS[(i + 1) % 5]} {i}"} for i in range(30)]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = recipe_file(tmp_path, {
        "name": "xss", "stages": ["data", "eval"], "model": {"id": str(tiny_model_dir)},
        "data": {"path": "x.jsonl", "test_size": 6, "max_contamination": 1.0},
        "eval": {"batch_size": 8, "max_new_tokens": 3, "robustness_size": 2}}, file="x.yaml")
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0, read_json(run_dir / "status.json")
    predictions = run_dir / "eval" / "predictions_base.jsonl"  # and a model that answers with every payload
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert all("finished" in r for r in records), "every reply was cut at 3 tokens, and answered again"
    for record, payload in zip(records, PAYLOADS):
        record["output"] = record["finished"] = payload
    predictions.write_text("".join(json.dumps(r) + "\n" for r in records))
    page = render(run_dir).read_text()
    parser = LiveParts()
    parser.feed(page)
    assert parser.found == [], parser.found
    assert "<b>bold</b>" not in page and "<b>now</b>" not in page
    assert "Not counted as overlap: wording a tenth of the prompts repeat (a template's), 1 8-gram such as " \
           "&ldquo;answer &lt;b&gt;now&lt;/b&gt; in one short word only please&rdquo;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;/textarea&gt;" in page


@pytest.mark.pipeline
def test_a_sweep_runs_each_value_and_compares_them(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FTKIT_REPORTS", str(tmp_path / "reports"))
    recipe = recipe_file(tmp_path, tiny_sft(tiny_model_dir, gradient_checkpointing=False), name="tiny", stages=["data", "sft"], data={"train_size": 32, "test_size": 8}, sft={"max_steps": 2, "batch_size": 8, "logging_steps": 1, "learning_rate": 1.0e-3}, file="tiny.yaml")
    assert cli.main(["run", str(recipe), "--sweep", "sft.learning_rate=1e-2,1e-3"]) == 0
    runs = sorted(p for p in (tmp_path / "reports" / "tiny").iterdir() if p.is_dir())
    assert [p.name.split("-", 2)[-1] for p in runs] == ["sft.learning_rate=1e-2", "sft.learning_rate=1e-3"]
    [page] = (tmp_path / "reports" / "tiny").glob("sweep-*.html")
    html = page.read_text()
    assert "<td>sft.learning_rate</td><td>0.01</td><td>0.001</td>" in html
    assert all(f"tiny/{p.name}" in html for p in runs) and html.count("data:image/png;base64,") == 2  # SFT loss; phases
    assert "<h2>Where the time went</h2>" in html
    assert "<script" not in html.lower()
    # the same page from the command line, and a directory that is not a run
    out = tmp_path / "compare.html"
    assert cli.main(["compare", *map(str, runs), "-o", str(out)]) == 0 and "sft.learning_rate" in out.read_text()
    assert cli.main(["compare", str(runs[0]), str(tmp_path)]) == 2
    assert "is not a run directory (no recipe.yaml)" in capsys.readouterr().err
    assert cli.main(["run", str(recipe), "--sweep", "sft.learning_rate"]) == 2
    assert "expected KEY=V1,V2,..., e.g. sft.learning_rate=1e-3,3e-4" in capsys.readouterr().err
    assert cli.main(["run", str(recipe), "--sweep", "sft.learnin_rate=1,2"]) == 2
    assert "did you mean 'learning_rate'?" in capsys.readouterr().err


# Chromium's own service traffic, which it sends for about:blank too (component updates, network time, sign-in):
# Google service hosts, not the page's. Google's CDN hosts count as the page's, like any other host.
CDN_HOSTS = {"fonts.googleapis.com", "ajax.googleapis.com", "storage.googleapis.com", "www.googleapis.com"}


def chromium_service(host: str) -> bool:
    """
    >>> chromium_service("update.googleapis.com"), chromium_service("fonts.googleapis.com"), chromium_service("x.org")
    (True, False, False)
    """
    return host not in CDN_HOSTS and host.endswith((".google.com", ".googleapis.com", ".gvt1.com"))
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
                 "--no-pings", "--disable-domain-reliability", "--disable-features=NetworkTimeServiceQuerying"]


def request_host(line: str) -> str:
    """The host of a proxied request line ('CONNECT host:443 HTTP/1.1' or 'GET http://host/path HTTP/1.1')."""
    target = line.split(" ")[1] if " " in line else line
    return target.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]


class CountingProxy:
    """A proxy on localhost that only counts the connections a browser opens through it."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    line = conn.recv(200).decode(errors="replace").splitlines()
                except OSError:
                    line = ["?"]  # opened and silent: counted, since what it wanted is unknown
                if line:  # closed without a byte: a socket Chromium opens ahead and never uses (seen under load)
                    self.requests.append(line[0])


def test_the_report_opens_offline_in_headless_chromium(tiny_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    _, run_dir = tiny_run
    proxy = CountingProxy()
    flags = [browser, *BROWSER_FLAGS, f"--proxy-server=http://127.0.0.1:{proxy.port}",
             "--proxy-bypass-list=<-loopback>", f"--user-data-dir={tmp_path / 'profile'}"]
    url = (run_dir / "report.html").resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert '<div id="metrics">' in dom and "<td>sft</td>" in dom, dom[:500]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1280,2400", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000
    shutil.copy(shot, run_dir / "report.png")  # kept with the run for a person to look at
    from_page = [r for r in proxy.requests if not chromium_service(request_host(r))]
    assert from_page == [], f"the page tried to reach the network: {from_page}"
    assert (run_dir / "report.html").stat().st_size < 5_000_000


def test_the_network_check_would_catch_a_page_that_loads_from_a_cdn(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    page = tmp_path / "cdn.html"
    page.write_text('<html><head><script src="https://cdn.example.org/require.js"></script></head>'
                    '<body><img src="http://images.example.org/x.png">'
                    '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto"></body></html>')
    proxy = CountingProxy()
    subprocess.run([browser, *BROWSER_FLAGS, f"--proxy-server=http://127.0.0.1:{proxy.port}",
                    f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                   capture_output=True, timeout=120)
    hosts = {request_host(r) for r in proxy.requests if not chromium_service(request_host(r))}
    assert {"cdn.example.org", "images.example.org", "fonts.googleapis.com"} <= hosts, proxy.requests
