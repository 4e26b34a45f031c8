"""The reproduction report: each claim led by its "paper vs measured" table, then the
figures, then the tables collapsed; "not testable" never shown as "does not hold";
no horizontal scrolling at 1280 px."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rankbias.run_reports import paper_vs_measured, verdict_line, write_reproduce_report
from rankbias.verdicts import STATUSES, status_of, verdict

CLAIM = "Depth lowers the effective rank of the embeddings."


def png(path: Path, width_px: int = 1800) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width_px / 100, 3), dpi=100)
    ax.plot([0, 1], [1, 0])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def entries(tmp_path: Path) -> list[dict]:
    new_style = verdict("not testable", "the data's stable rank grows >= 10x, and ...",
                        "the data's rank grows only 3.1x (< 10x): this data cannot show the claim",
                        max_data_growth=3.1, generalising_sigmas=[0.5, 1.0])
    new_style["paper"] = {"data stable rank growth": ">= 10x (Fig. 2)", "filter rank growth": "about 1x"}
    new_style["measured"] = {"data stable rank growth": "3.1x", "filter rank growth": 1.02,
                             "test accuracy": 0.97}
    run_a = tmp_path / "runs" / "a"
    png(run_a / "figures" / "wide_figure.png")
    wide = [{f"column_{i}": 1.0 / (i + 1) for i in range(40)} | {"note": "x" * 300} for _ in range(3)]
    return [
        {"name": "exp-new", "description": "with paper and measured", "claim": CLAIM, "status": "done",
         "verdict": "not testable", "summary": {"verdict": new_style, "per_sigma": wide}, "run_dir": run_a,
         "config": {"sigmas": [0, 0.5, 1.0]}, "wall_time_s": 1.0},
        {"name": "exp-old", "description": "only holds", "claim": "The old claim text.", "status": "done",
         "verdict": "does not hold", "summary": {"verdict": {"holds": False, "median": 3.0}},
         "run_dir": None, "config": {}, "wall_time_s": 2.0},
        {"name": "exp-failed", "description": "raises", "claim": "c", "status": "failed", "verdict": "failed",
         "error": "RuntimeError: boom", "run_dir": None, "summary": None, "config": None},
        {"name": "exp-not-run", "description": "skipped", "claim": "c", "status": "not run",
         "verdict": "not run", "reason": "not selected (--only)", "summary": None, "config": None},
    ]


ENV = {"preset": "quick", "total_wall_time_s": 3.0, "torch": "2.x", "packages": {"numpy": "2.x"}}


def sections(html: str) -> dict[str, str]:
    return dict(re.findall(r"<section id='([^']+)'>(.*?)</section>", html, re.S))


def test_the_report_words_a_verdict_with_the_one_verdict_to_word_function():
    """run_reports.py has no word function of its own: each outcome of STATUSES shows as itself."""
    import rankbias.run_reports as report

    assert report.status_of is status_of and not hasattr(report, "status_word")
    lines = {"holds": "the claim HOLDS", "does not hold": "the claim does NOT hold",
             "inconclusive": "inconclusive", "not testable": "not testable"}
    for status in STATUSES:
        v = verdict(status, "c", "r")
        assert paper_vs_measured(v)[-1]["measured"] == f"{status}: r"
        assert verdict_line(v) == f"**Verdict: {lines[status]}.** r"
    assert paper_vs_measured({"holds": None})[-1]["measured"] == "no verdict"


def test_paper_vs_measured_rows():
    v = verdict("holds", "t-interval above 0", "+1.2 pp [0.3, 2.1]")
    v.update(paper={"test accuracy gain": "+2 pp", "train accuracy": "lower"},
             measured={"test accuracy gain": "+1.2 pp", "depth": 4})
    assert paper_vs_measured(v, CLAIM) == [
        {"": "test accuracy gain", "paper": "+2 pp", "measured": "+1.2 pp"},
        {"": "train accuracy", "paper": "lower", "measured": ""},
        {"": "depth", "paper": "", "measured": "4"},
        {"": "test", "paper": "", "measured": "t-interval above 0"},
        {"": "result", "paper": "", "measured": "holds: +1.2 pp [0.3, 2.1]"},
    ]
    one = paper_vs_measured({**v, "paper": "rank falls with depth", "measured": "falls 3.2 -> 1.4"}, CLAIM)
    assert one[0] == {"": "claim", "paper": "rank falls with depth", "measured": "falls 3.2 -> 1.4"}
    # an experiment without paper/measured keys: the claim text against the verdict
    assert paper_vs_measured({"holds": True}, CLAIM) == [
        {"": "claim", "paper": CLAIM, "measured": ""}, {"": "result", "paper": "", "measured": "holds"}]


def test_html_order_collapsed_tables_and_fallbacks(tmp_path):
    write_reproduce_report(tmp_path, entries(tmp_path), ENV)
    html = (tmp_path / "report" / "index.html").read_text()
    sec = sections(html)
    assert list(sec) == ["exp-new", "exp-old", "exp-failed", "exp-not-run"]
    new = sec["exp-new"]
    # paper vs measured first, then the figure, then everything else collapsed
    i_pvm, i_fig, i_det = new.index("class='pvm'"), new.index("<img"), new.index("<details")
    assert i_pvm < i_fig < i_det
    assert "&gt;= 10x (Fig. 2)" in new and "3.1x" in new and ">not testable<" in new
    assert f"<b>Claim.</b> {CLAIM}" in new and "<b>Claim.</b>" not in sections(html)["exp-old"]
    assert "does not hold" not in new
    assert "column_39" in new[i_det:] and "column_39" not in new[:i_det]  # the wide table is collapsed
    # every table sits in a horizontal scroll box: a wide one cannot widen the page
    assert html.count("<table") == html.count("<div class='scroll'><table")
    old = sec["exp-old"]
    assert "The old claim text." in old and ">does not hold<" in old and "median" in old
    assert "RuntimeError: boom" in sec["exp-failed"] and ">failed<" in sec["exp-failed"]
    assert "not selected (--only)" in sec["exp-not-run"]
    assert "1 not testable" in html and "1 does not hold" in html
    md = (tmp_path / "report.md").read_text()
    assert "## exp-new: not testable" in md and "| data stable rank growth | >= 10x (Fig. 2) | 3.1x |" in md
    assert md.index("| data stable rank growth") < md.index("![wide_figure]") < md.index("<details>")


def test_four_outcomes_each_with_its_badge_and_the_papers_statement(tmp_path):
    statuses = ("holds", "does not hold", "inconclusive", "not testable")
    runs = []
    for i, st in enumerate(statuses):
        v = verdict(st, f"test {i}", f"reason {i}", statement=f'"the paper says {i}" (source {i})',
                    paper=f"paper {i}", measured=f"measured {i}")
        runs.append({"name": f"exp-{i}", "description": "", "claim": CLAIM, "status": "done", "verdict": st,
                     "summary": {"verdict": v}, "run_dir": None, "config": {}, "wall_time_s": 1.0})
    write_reproduce_report(tmp_path, runs, ENV)
    html = (tmp_path / "report" / "index.html").read_text()
    sec = sections(html)
    colours = {}
    for i, st in enumerate(statuses):
        badge = re.search(rf'<h2>exp-{i} <span class="badge" style="background:(#[0-9a-f]+)">([^<]+)</span>',
                          sec[f"exp-{i}"])
        assert badge and badge.group(2) == st
        colours[st] = badge.group(1)
        # the claim's table: the paper's words first, then ours, the test, the outcome
        rows = re.findall(r"<tr[^>]*><td>([^<]*)</td>", sec[f"exp-{i}"])
        assert rows == ["statement", "claim", "test", "result"]
        assert f"&quot;the paper says {i}&quot; (source {i})" in sec[f"exp-{i}"]
    assert len(set(colours.values())) == 4  # one colour per outcome
    # the legend names the four outcomes, before the first claim
    legend = html[html.index("class='legend'"):html.index("<section")]
    assert all(f">{st}</span>" in legend for st in statuses)
    md = (tmp_path / "report.md").read_text()
    assert all(f"| {st} | " in md for st in statuses)
    assert md.index("| inconclusive | the interval holds both") < md.index("## exp-0")
    assert "1 holds, 1 does not hold, 1 inconclusive, 1 not testable" in md
    assert '| exp-2 | inconclusive | "the paper says 2" (source 2) |' in md


CHROMIUM = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)),
                None)


# `make test` installs Chromium where it is missing; under CI a skip here is a failure
@pytest.mark.ci_required
@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium (apt-get install chromium)")
def test_no_horizontal_scrolling_at_1280_px(tmp_path):
    write_reproduce_report(tmp_path, entries(tmp_path), ENV)
    page = (tmp_path / "report" / "index.html").read_text()
    # a copy that opens every collapsed part and reports the page width (the report has no script)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>document.querySelectorAll('details').forEach(d => d.open = true);"
                                             "document.title='W='+document.documentElement.scrollWidth"
                                             "+'/'+window.innerWidth</script></body>"))
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900", "--dump-dom",
                        probe.as_uri()], capture_output=True, text=True, timeout=600)
    m = re.search(r"<title>W=(\d+)/(\d+)</title>", r.stdout)
    assert m, r.stderr[-2000:]
    scroll, inner = map(int, m.groups())
    assert inner == 1280 and scroll <= inner


def test_a_ci_required_test_that_skips_fails_under_ci(tmp_path):
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.ci_required\n@pytest.mark.skipif(True, reason='no tool here')\n"
        "def test_needs_a_tool():\n    pass\n\n"
        "@pytest.mark.skipif(True, reason='optional')\ndef test_optional():\n    pass\n"
    )

    def run(ci: str) -> subprocess.CompletedProcess:
        # this suite's conftest as a plugin, on a probe file outside the suite
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "CI": ci}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                               "-p", "conftest", "test_probe.py"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    r = run("true")
    # the skip happens at setup, so pytest counts the failure as an error; the other skip stays
    assert r.returncode == 1 and "1 skipped, 1 error" in r.stdout, r.stdout[-2000:]
    assert "skipped under CI=true, but this test must run in CI: no tool here" in r.stdout
    r = run("")
    assert r.returncode == 0 and "2 skipped" in r.stdout, r.stdout[-2000:]
