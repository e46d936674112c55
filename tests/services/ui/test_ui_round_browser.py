"""Browser test (Debian's Chromium via playwright) of the whole round: "Start DPO round" in the labeling app,
a real tiny DPO job (the trainer's own ``execute_job``), the new version registered, ``neo serve`` following
the registry loads it, and the panel's "Arena battle: new vs previous version" sets up a battle that is voted
on and lands on the leaderboard as new-vs-parent."""

from __future__ import annotations

import pytest

from neo.registry import ModelRegistry
from neo_ui.store import PreferenceStore

from .conftest import LiveUI, make_settings, stop
from .test_ui_arena_browser import _start_round_and_run_it, screenshot
from .test_ui_browser import wait_for
from .test_ui_chat_browser import serve_registry

pytestmark = pytest.mark.slow


def test_a_new_round_is_served_then_battled_against_its_parent(page, tmp_path, redis_prefix, rds, checkpoints,
                                                               monkeypatch):
    registry = ModelRegistry(rds, redis_prefix)
    base = registry.register("tiny", checkpoints["tiny"], stage="sft")
    # `tiny` follows the registry (its watcher polls every 0.5 s); `tiny:v1` stays on the version labeled so far
    proc, url = serve_registry(["tiny", "tiny:v1"], redis_prefix, tmp_path / "serve.log")
    try:
        settings = make_settings(tmp_path / "home", redis_prefix, url, ui_users=["admin:pw"], ui_admins=["admin"],
                                 label_models=["tiny"])
        with LiveUI(settings) as ui:
            worker, out = _start_round_and_run_it(page, ui.url, settings, rds, monkeypatch)
            assert page.locator("#round-battle").is_hidden()
            page.wait_for_selector("#round-status :text('state: done')", timeout=300_000)
            worker.join(timeout=60)
            assert out["state"] == "done"
            new = registry.latest("tiny")
            assert (new.ref, new.parent, new.stage) == ("tiny:v2", base.ref, "dpo")
            # the labels' round marker moves once the job is done (the panel settles it), not when it was queued
            store = PreferenceStore(rds, redis_prefix)
            wait_for(lambda: store.last_round().get("round") == 1, what="round 1 marked after training")
            assert store.round_in_progress() == {}

            # the panel follows serving: once the watcher serves v2 as `tiny`, the battle is offered
            page.wait_for_selector("#round-status :text('Ready for an arena battle')", timeout=60_000)
            text = page.locator("#round-status").inner_text()
            assert "New version tiny:v2 (parent tiny:v1)" in text.replace("*", "") and "Served as tiny" in text
            screenshot(page, "label-round-served", tmp_path)
            page.locator("#round-battle").click()
            page.wait_for_selector("#arena-status :text('Arena set up')")
            assert "tiny:v2" in page.locator("#arena-status").inner_text()
            # the new version (served as `tiny`) against its parent (pinned `tiny:v1`), shown with stage and parent
            assert page.locator("#arena-model-1 input").input_value() == "tiny · v2 · dpo · from tiny:v1"
            assert page.locator("#arena-model-2 input").input_value() == "tiny:v1 · sft"

            page.locator("#arena-prompt textarea").fill("Which answer is better? 哪个回答更好？")
            page.locator("#arena-battle").click()
            page.wait_for_selector("#arena-status :text('shown after your vote')")
            wait_for(lambda: page.locator("#arena-answer-a").inner_text().strip(), what="answer A")
            page.locator("#arena-vote-a").click()
            page.wait_for_selector("#arena-status :text('Vote saved')")

            [label] = [r for r in PreferenceStore(rds, redis_prefix).iter_labels() if r.source == "arena"]
            assert {label.answer_a.model_version, label.answer_b.model_version} == {"tiny:v2", "tiny:v1"}
            page.locator("#refresh-leaderboard").click()
            wait_for(lambda: label.answer_a.model_version in page.locator("#leaderboard").inner_text(),
                     what="the battle on the leaderboard")
            board = page.locator("#leaderboard tbody tr")
            assert board.count() == 2 and label.answer_a.model_version in board.first.inner_text()
    finally:
        stop(proc)
