"""Browser tests (Debian's Chromium via playwright) of the labeling app's arena, plots and live DPO round:

- an arena vote is stored both as a preference pair (it is in the DPO export) and as a battle (the
  leaderboard goes from empty to both versions, the winner on top);
- the Plots tab renders every plot with data (labels per day/annotator, win rate by version, agreement, the
  DPO round's curves from its metrics.jsonl);
- the live round panel follows a real tiny DPO job (the trainer's own ``execute_job``, a real training child)
  from queued/running to step N/N and the registered new version, and shows the reason when a round fails.

With ``NEO_UI_SCREENSHOTS=1`` the tests also write the README's screenshots to ``docs/screenshots/``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from neo.registry import ModelRegistry
from neo_ui.export import export
from neo_ui.store import PreferenceStore

from .conftest import LiveUI, make_settings
from .records import record
from .test_ui_browser import open_chat, send, wait_for

pytestmark = pytest.mark.slow

SHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"


def screenshot(page, name: str, tmp_path: Path) -> None:
    """Always into the test's tmp dir; into docs/screenshots/ (the README's) with NEO_UI_SCREENSHOTS=1."""
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    if os.environ.get("NEO_UI_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page, url: str, name: str) -> None:
    page.goto(f"{url}/label/")
    page.locator("#annotator-name textarea, #annotator-name input").first.fill(name)
    page.locator("#sign-in").click()
    page.wait_for_selector("#signed-in :text('Signed in as')")


def log_in(page, url: str, name: str, password: str) -> None:
    """Gradio's login, through the page's own cookie jar."""
    response = page.request.post(f"{url}/label/login", form={"username": name, "password": password})
    assert response.ok, response.text()
    page.goto(f"{url}/label/")
    page.wait_for_selector("#signed-in :text('Signed in as')")


def plot_rendered(page, elem_id: str) -> bool:
    """A Vega plot drew into its element (a canvas or an SVG with marks)."""
    return page.evaluate("""(id) => { const el = document.getElementById(id);
        return !!el && !!el.querySelector('canvas, svg .mark-symbol, svg .mark-rect, svg .mark-line, svg path'); }""",
                         elem_id)


def test_an_arena_vote_is_a_pair_and_a_battle_and_moves_the_leaderboard(page, settings, rds, tmp_path):
    with LiveUI(settings) as ui:
        sign_in(page, ui.url, "alice")
        page.get_by_role("tab", name="Arena").click()
        page.wait_for_selector("#arena-status :text('versions served')")
        page.locator("#refresh-leaderboard").click()
        page.wait_for_selector("#leaderboard :text('No battles yet')")

        page.locator("#arena-prompt textarea").fill("Write one line about the sea. 写一句关于大海的话。")
        page.locator("#arena-battle").click()
        page.wait_for_selector("#arena-status :text('shown after your vote')")
        wait_for(lambda: page.locator("#arena-answer-a").inner_text().strip(), what="answer A")
        assert page.locator("#arena-answer-b").inner_text().strip()
        assert "tiny" not in page.locator("#arena-answer-a").inner_text()  # blind: no version shown
        screenshot(page, "label-arena-battle", tmp_path)
        page.locator("#arena-vote-a").click()
        page.wait_for_selector("#arena-status :text('Vote saved')")
        revealed = page.locator("#arena-status").inner_text()
        assert "A was tiny" in revealed and "B was tiny" in revealed

        store = PreferenceStore(rds, settings.redis_prefix)
        [label] = list(store.iter_labels())
        assert label.source == "arena" and label.choice == "a"
        versions = {label.answer_a.model_version, label.answer_b.model_version}
        assert versions == {"tiny:local", "tiny2:local"}
        report = export(store, tmp_path / "prefs.jsonl")  # the vote is a DPO pair
        [row] = [json.loads(line) for line in report.path.read_text().splitlines()]
        assert row["chosen"][0]["content"] == label.answer_a.text

        wait_for(lambda: label.answer_a.model_version in page.locator("#leaderboard").inner_text(),
                 what="the leaderboard to show the battle")
        board = page.locator("#leaderboard tbody tr")
        assert board.count() == 2 and label.answer_a.model_version in board.first.inner_text()  # winner on top
        wait_for(lambda: plot_rendered(page, "leaderboard-plot"), what="the ratings plot")
        screenshot(page, "label-arena-leaderboard", tmp_path)


def test_the_plots_render_with_data(page, settings, rds, tmp_path):
    store = PreferenceStore(rds, settings.redis_prefix)
    for i, (who, choice, versions) in enumerate([("alice", "a", ("m:v1", "m:v2")), ("bob", "b", ("m:v1", "m:v2")),
                                                 ("alice", "b", ("m:v2", "m:v3")), ("bob", "b", ("m:v2", "m:v3")),
                                                 ("carol", "tie", ("m:v1", "m:v3"))]):
        store.save_label(record(f"l{i}", choice, annotator=who, pair=f"p{i // 2}", versions=versions,
                                minutes=i * 24 * 60), 3)
    run_dir = tmp_path / "runs" / "dpo-round-001"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 0.69 - 0.05 * s, "rewards/margins": 0.1 * s,
                    "rewards/accuracies": min(1.0, 0.5 + 0.1 * s)}) + "\n" for s in range(1, 9)))
    rds.hset(f"{settings.redis_prefix}train:job:j1", mapping={"id": "j1", "kind": "dpo", "state": "done",
                                                             "run_dir": str(run_dir), "step": 8})
    store.mark_round(labels=5, path="round-001.jsonl", job="j1")
    with LiveUI(settings) as ui:
        sign_in(page, ui.url, "alice")
        page.get_by_role("tab", name="Plots").click()
        page.locator("#refresh-plots").click()
        page.wait_for_selector("#plot-dpo-note :text('DPO curves of round job')")
        for plot in ("plot-per-day", "plot-per-annotator", "plot-win-rate", "plot-agreement", "plot-dpo"):
            wait_for(lambda plot=plot: plot_rendered(page, plot), what=f"{plot} to render")
        page.wait_for_timeout(500)
        screenshot(page, "label-plots", tmp_path)


def test_chat_screenshot(page, settings, tmp_path):
    with LiveUI(settings) as ui:
        open_chat(page, ui.url)
        send(page, "你好! Write a short poem about the sea.")
        wait_for(lambda: page.locator('[data-testid="bot"]').last.inner_text().strip(), what="an answer")
        page.wait_for_timeout(1500)
        screenshot(page, "chat", tmp_path)


def _run_job(rds, prefix: str, job: str, out: dict) -> None:
    from neo_trainer.worker import JobStore, execute_job

    out["state"] = execute_job(JobStore(rds, prefix), job, poll_s=0.5)


def _start_round_and_run_it(page, ui_url: str, settings, rds,
                            monkeypatch) -> tuple[threading.Thread, dict]:
    """Label pairs, press 'Start DPO round' as the admin, and run the queued job as the trainer worker does."""
    store = PreferenceStore(rds, settings.redis_prefix)
    for i in range(8):
        store.save_label(record(f"t{i}", "a" if i % 2 else "b", pair=f"p{i}", versions=("tiny:v1", "tiny:v1"),
                                prompt=f"Say something nice {i}"), 2)
    log_in(page, ui_url, "admin", "pw")
    page.get_by_role("tab", name="Export & DPO").click()
    page.locator("#start-round").click()
    page.wait_for_selector("#round-status :text('Round 1')")
    job = store.round_in_progress()["job"]  # the marker itself moves once the job is done
    monkeypatch.setenv("NEO_REDIS_URL", settings.redis_url)  # the training child registers the new version here
    monkeypatch.setenv("NEO_REDIS_PREFIX", settings.redis_prefix)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out: dict = {}
    worker = threading.Thread(target=_run_job, args=(rds, settings.redis_prefix, job, out), daemon=True)
    worker.start()
    return worker, out


def test_the_round_panel_follows_a_real_dpo_job_to_its_new_version(page, tmp_path, redis_prefix, rds, serving,
                                                                   checkpoints, monkeypatch):
    settings = make_settings(tmp_path / "home", redis_prefix, serving, ui_users=["admin:pw"], ui_admins=["admin"],
                             label_models=["tiny"])
    base = ModelRegistry(rds, redis_prefix).register("tiny", checkpoints["tiny"], stage="sft")
    with LiveUI(settings) as ui:
        worker, out = _start_round_and_run_it(page, ui.url, settings, rds, monkeypatch)
        page.wait_for_selector("#round-status :text('state: running')", timeout=120_000)
        screenshot(page, "label-round-running", tmp_path)
        page.wait_for_selector("#round-status :text('state: done')", timeout=300_000)
        worker.join(timeout=60)
        assert out["state"] == "done"
        page.wait_for_selector("#round-status :text('New version')", timeout=30_000)
        text = page.locator("#round-status").inner_text()
        assert "tiny:v2" in text and base.ref in text and "Not served yet" in text
        assert "step 2/2" in text.replace("*", "")  # 8 pairs, 4 per step, one epoch
        assert "loss" in text
        screenshot(page, "label-round-done", tmp_path)


def test_the_round_panel_shows_why_a_round_failed(page, tmp_path, redis_prefix, rds, serving, monkeypatch):
    settings = make_settings(tmp_path / "home", redis_prefix, serving, ui_users=["admin:pw"], ui_admins=["admin"],
                             dpo_base_model=str(tmp_path / "no-such-checkpoint"))
    with LiveUI(settings) as ui:
        worker, out = _start_round_and_run_it(page, ui.url, settings, rds, monkeypatch)
        page.wait_for_selector("#round-status :text('The round failed')", timeout=180_000)
        worker.join(timeout=60)
        assert out["state"] == "failed"
        text = page.locator("#round-status").inner_text()
        assert "no-such-checkpoint" in text  # the job log's last lines name the missing checkpoint
        assert PreferenceStore(rds, redis_prefix).last_round() == {}  # not marked: its labels go to the next round
