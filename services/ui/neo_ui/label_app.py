"""The preference-labeling app (Gradio Blocks): thin callbacks over ``Labeler``, the queue, stats and export.

Who is labeling: with ``NEO_UI_USERS`` set the app sits behind Gradio's login and the account name is the
annotator; without, an annotator types a name, kept in the session's state. Named API endpoints (for
``gradio_client``): ``/sign_in``, ``/next_pair``, ``/submit_label``, ``/skip``, ``/add_prompts``,
``/prompts_from_chat``, ``/stats``, ``/export``, ``/start_round``, ``/round_status``, ``/arena_battle``,
``/arena_vote``, ``/leaderboard``, ``/plots``.

Arena (``neo_ui.arena``): two chosen versions answer a typed prompt, blind; the vote is a label (a DPO pair
and a leaderboard battle) and the versions are revealed after it. The DPO panel follows the last round live
(a Timer re-reads the job hash): state, step/total, loss, then the registered version, and once serving
serves it, a button that sets up an arena battle of the new version against its parent.

The task id travels through a hidden textbox, so a double click sends the same id twice and the
store keeps one label (the second click answers "already saved" and leaves the page alone).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gradio as gr
import redis

from neo.registry import ModelRegistry
from neo_ui import plots
from neo_ui.arena import Arena, arena_prompt, reveal, standings_rows
from neo_ui.chatlog import ChatLog
from neo_ui.client import ServingClient, ServingUnavailable
from neo_ui.export import export
from neo_ui.jobs import (
    RoundError,
    TrainerQueue,
    progress_markdown,
    read_metrics,
    round_progress,
    start_dpo_round,
)
from neo_ui.labeling import CHOICES, Labeler, LabelError, TaskView, check_annotator
from neo_ui.prompts import PromptQueue
from neo_ui.render import conversation_markdown, markdown_table, safe_markdown
from neo_ui.settings import UISettings
from neo_ui.stats import PreferenceStats, compute, summary_markdown
from neo_ui.store import PreferenceStore

log = logging.getLogger(__name__)

EMPTY = ("", "", "", "")  # task id, prompt, answer A, answer B
ROUND_POLL_S = 2.0  # the DPO panel re-reads the job's status this often
STORE_DOWN = "The label store (Redis) is unreachable: nothing was saved. Try again in a moment."


def stats_markdown(stats: PreferenceStats) -> tuple[str, str, str, str, str]:
    return (summary_markdown(stats), markdown_table(stats.annotators), markdown_table(stats.models),
            markdown_table(stats.matchups), markdown_table(stats.agreement_pairs))


def _task_outputs(view: TaskView | None, status: str) -> tuple[Any, ...]:
    """Values for (task id, prompt, A, B, choice, comment, edit, status)."""
    if view is None:
        return (*EMPTY, None, "", "", status)
    return (view.task_id, conversation_markdown(view.prompt), safe_markdown(view.answer_a),
            safe_markdown(view.answer_b), None, "", "", status)


class LabelCallbacks:
    """The app's callbacks: each resolves the annotator, calls one plain function, formats the result."""

    def __init__(self, settings: UISettings, labeler: Labeler, store: PreferenceStore, prompts: PromptQueue,
                 chatlog: ChatLog, queue: TrainerQueue, client: ServingClient):
        self.settings, self.labeler, self.store, self.prompts = settings, labeler, store, prompts
        self.chatlog, self.queue, self.client = chatlog, queue, client
        self.registry = ModelRegistry(store.redis, settings.redis_prefix)
        self.arena = Arena(client, self.registry)

    @staticmethod
    def annotator(name: str | None, request: gr.Request | None) -> str:
        """The Gradio account when the app has logins, else the name typed into this session."""
        user = getattr(request, "username", None) if request is not None else None
        return check_annotator(user or name)

    def sign_in(self, name: str, request: gr.Request) -> tuple[str, str, Any]:
        try:
            who = self.annotator(name, request)
        except LabelError as exc:
            return "", f"⚠️ {exc}", gr.update(interactive=False)
        admin = who in self.settings.ui_admins
        return who, f"Signed in as **{safe_markdown(who)}**{' (admin)' if admin else ''}.", gr.update(interactive=admin)

    def next_pair(self, name: str, request: gr.Request) -> tuple[Any, ...]:
        try:
            view = self.labeler.next_task(self.annotator(name, request))
        except (LabelError, ServingUnavailable) as exc:
            return _task_outputs(None, f"⚠️ {exc}")
        except redis.RedisError as exc:
            log.error("next pair: Redis error: %s", exc)
            return _task_outputs(None, f"⚠️ {STORE_DOWN}")
        if view is None:
            return _task_outputs(None, "The queue has nothing left for you: upload prompts or take them from chat "
                                       "logs.")
        return _task_outputs(view, "Read both answers, pick one, then submit.")

    def submit(self, task_id: str, choice: str | None, comment: str, edit: str, name: str,
               request: gr.Request) -> tuple[Any, ...]:
        try:
            who = self.annotator(name, request)
            if not choice:
                raise LabelError("Pick A better, B better, Tie or Both bad first.")
            result = self.labeler.submit(who, task_id, choice, comment or "", edit or "")
        except LabelError as exc:
            return (*[gr.skip()] * 7, f"⚠️ {exc}")
        except redis.RedisError as exc:
            log.error("label of task %s NOT saved: Redis error: %s", task_id, exc)
            return (*[gr.skip()] * 7, f"⚠️ {STORE_DOWN}")
        if not result.created:
            return (*[gr.skip()] * 7, f"Already saved (label `{result.record.id[:8]}`): nothing changed.")
        saved = f"Saved label `{result.record.id[:8]}` ({result.record.choice}). "
        next_view = self.next_pair(name, request)
        return (*next_view[:7], saved + next_view[7])

    def skip(self, task_id: str, name: str, request: gr.Request) -> tuple[Any, ...]:
        try:
            self.labeler.skip(self.annotator(name, request), task_id)
        except LabelError as exc:
            return (*[gr.skip()] * 7, f"⚠️ {exc}")
        except redis.RedisError as exc:
            log.error("skip of task %s failed: Redis error: %s", task_id, exc)
            return (*[gr.skip()] * 7, f"⚠️ {STORE_DOWN}")
        return self.next_pair(name, request)

    def better_text(self, task_id: str, choice: str | None, name: str, request: gr.Request) -> str:
        try:
            return self.labeler.better_text(self.annotator(name, request), task_id, choice or "")
        except LabelError:
            return ""

    # --- prompts --------------------------------------------------------------------------------------
    def queue_info(self) -> str:
        """How many prompts wait, and where the queue's prompts came from."""
        sources = self.prompts.sources()
        origin = (" Queued so far: " + ", ".join(f"{n} from {name}" for name, n in sources.items()) + "."
                  if sources else "")
        return f"{self.prompts.open_count()} prompts waiting for labels.{origin}"

    def add_prompts(self, jsonl: str) -> str:
        return self.prompts.add_jsonl(jsonl or "", source="upload").summary() + ". " + self.queue_info()

    def upload_prompts(self, file: str | None) -> str:
        if not file:
            return self.queue_info()
        return self.add_prompts(Path(file).read_text(encoding="utf-8"))

    def prompts_from_chat(self, n: float) -> str:
        rows = self.chatlog.prompts_from_log(int(n or 0))
        return self.prompts.add_rows(rows, source="chat").summary() + ". " + self.queue_info()

    # --- stats, export, rounds ------------------------------------------------------------------------------
    def stats(self) -> tuple[str, str, str, str, str]:
        return stats_markdown(compute(self.store.iter_labels(), self.store.last_round()))

    def export(self, keep_ties: bool, keep_both_bad: bool, fmt: str, since_last_round: bool) -> tuple[Any, str]:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = self.settings.prefs_dir / "exports" / f"prefs-{stamp}.jsonl"
        report = export(self.store, path, keep_ties=keep_ties, keep_both_bad=keep_both_bad, fmt=fmt,  # type: ignore[arg-type]
                        since_last_round=since_last_round)
        return str(report.path), safe_markdown(report.summary())

    def start_round(self, name: str, request: gr.Request) -> str:
        try:
            who = self.annotator(name, request)
        except LabelError as exc:
            return f"⚠️ {exc}"
        if who not in self.settings.ui_admins:
            log.warning("%s tried to start a DPO round without being an admin", who)
            admins = ", ".join(self.settings.ui_admins) or "none configured: NEO_UI_ADMINS"
            return f"⚠️ Only admins ({admins}) start rounds."
        try:
            started = start_dpo_round(self.settings, self.store, self.queue, self.client)
        except (RoundError, ServingUnavailable) as exc:
            return f"⚠️ {safe_markdown(str(exc))}"
        log.info("%s started DPO round %s (job %s)", who, started.marker["round"], started.job)
        return (f"Round {started.marker['round']} queued: {safe_markdown(started.export.summary())}\n\n"
                + progress_markdown(round_progress(self.store, self.queue, self.registry, self.client)))

    def round_status(self) -> tuple[str, Any]:
        """The live panel's text, and the 'battle new vs previous' button (shown once both are served)."""
        try:
            progress = round_progress(self.store, self.queue, self.registry, self.client)
        except redis.RedisError as exc:
            return f"⚠️ Redis is unreachable ({exc}): job status unknown.", gr.skip()
        return progress_markdown(progress), gr.update(visible=progress.battle_ready)

    def battle_new_vs_previous(self) -> tuple[Any, Any, str, Any]:
        """Set the arena up with the last round's new version against its parent, and open the Arena tab."""
        progress = round_progress(self.store, self.queue, self.registry, self.client)
        if not progress.battle_ready:
            return gr.skip(), gr.skip(), "⚠️ The new version or its parent is not served (yet).", gr.skip()
        choices = self._arena_choices()
        return (gr.update(choices=choices, value=progress.served),
                gr.update(choices=choices, value=progress.parent_served),
                f"Arena set up: **{progress.registered}** (new) against **{progress.parent}** (its parent). "
                "Type a prompt and press Battle.", gr.Tabs(selected="arena"))

    # --- arena ---------------------------------------------------------------------------------------------
    def _arena_choices(self) -> list[tuple[str, str]]:
        return [(c.model.label, c.id) for c in self.arena.contenders()]

    def arena_setup(self) -> tuple[Any, Any, str]:
        """The served versions, preselected as newest vs its parent."""
        try:
            contenders = self.arena.contenders()
        except ServingUnavailable as exc:
            return gr.skip(), gr.skip(), f"⚠️ {exc}"
        choices = [(c.model.label, c.id) for c in contenders]
        matchup = self.arena.default_matchup(contenders)
        if matchup is None:
            return (gr.update(choices=choices), gr.update(choices=choices),
                    "⚠️ The arena needs two served versions (serve a pinned `NAME:vN` beside the latest).")
        refs = {c.id: c.ref for c in contenders}
        return (gr.update(choices=choices, value=matchup[0]), gr.update(choices=choices, value=matchup[1]),
                f"{len(choices)} versions served; default match-up: the newest against its parent "
                f"({refs[matchup[0]]} vs {refs[matchup[1]]}) when both are served.")

    def arena_random_prompt(self) -> str:
        """A queued prompt's last user turn (to battle on something real)."""
        pid = self.prompts.redis.zrandmember(self.prompts.key("queue"))
        prompt = self.prompts.get(pid) if pid else None
        return prompt.messages[-1].content if prompt else ""

    def arena_battle(self, first: str | None, second: str | None, text: str, name: str,
                     request: gr.Request) -> tuple[str, str, str, str]:
        """Values for (task id, answer A, answer B, status)."""
        try:
            who = self.annotator(name, request)
            if not first or not second or first == second:
                raise LabelError("Pick two different versions.")
            if not (text or "").strip():
                raise LabelError("Type a prompt (or take a random queued one) first.")
            view = self.labeler.battle(who, arena_prompt(text, self.settings.system_prompt),
                                       self.arena.pick(first, second))
        except (LabelError, ValueError, ServingUnavailable) as exc:
            return "", "", "", f"⚠️ {safe_markdown(str(exc))}"
        except redis.RedisError as exc:
            log.error("arena battle: Redis error: %s", exc)
            return "", "", "", f"⚠️ {STORE_DOWN}"
        return (view.task_id, safe_markdown(view.answer_a), safe_markdown(view.answer_b),
                "Which answer is better? The versions are shown after your vote.")

    def arena_vote(self, task_id: str, choice: str, name: str, request: gr.Request) -> tuple[str, str]:
        """Values for (task id, status): the vote is stored as a label, then the versions are revealed."""
        try:
            if not task_id:
                raise LabelError("Start a battle first.")
            result = self.labeler.submit(self.annotator(name, request), task_id, choice)
        except LabelError as exc:
            return task_id, f"⚠️ {exc}"
        except redis.RedisError as exc:
            log.error("arena vote of task %s NOT saved: Redis error: %s", task_id, exc)
            return task_id, f"⚠️ {STORE_DOWN}"
        head = "Vote saved" if result.created else "Already voted"
        return "", f"{head} (label `{result.record.id[:8]}`). {reveal(result.record)}"

    def leaderboard(self) -> tuple[str, Any]:
        board = self.arena.board(self.store.iter_labels())
        if not board:
            return "_No battles yet: a battle is a vote between answers of two different versions._", None
        return markdown_table(standings_rows(board)), plots.ratings(board)

    def plots(self) -> tuple[Any, Any, Any, Any, Any, str]:
        labels = list(self.store.iter_labels())
        job = self.store.current_round().get("job") or None
        status = self.queue.status(job) if job else None
        curves = plots.dpo_curves(read_metrics((status or {}).get("run_dir")))
        note = (f"DPO curves of round job `{job}`." if len(curves) else
                "No DPO metrics yet (they appear while the round's job trains).")
        return (plots.labels_per_day(labels), plots.labels_per_annotator(labels), plots.win_rate_by_version(labels),
                plots.agreement_frame(labels), curves, note)


def _vote(cb: LabelCallbacks, choice: str):
    def vote(task_id: str, name: str, request: gr.Request) -> tuple[str, str]:
        return cb.arena_vote(task_id, choice, name, request)

    return vote


def _side_by_side(title: str, elem: str) -> tuple[gr.Markdown, gr.Markdown]:
    """Two answers in columns, headed "{title} A" / "{title} B", with element ids ``{elem}-a`` / ``{elem}-b``."""
    with gr.Row(equal_height=False):
        boxes = []
        for side in ("A", "B"):
            with gr.Column():
                gr.Markdown(f"### {title} {side}")
                boxes.append(gr.Markdown(elem_id=f"{elem}-{side.lower()}", sanitize_html=True))
    return boxes[0], boxes[1]


def build_label_app(settings: UISettings, cb: LabelCallbacks) -> gr.Blocks:
    """The labeling page: Label, Prompts, Stats and Export tabs."""
    logins = bool(settings.accounts)
    with gr.Blocks(title="Neo preference labeling") as app:
        name = gr.State("")
        gr.Markdown("## Neo preference labeling")
        with gr.Row(visible=not logins):
            name_box = gr.Textbox(label="Your name", scale=3, elem_id="annotator-name")
            sign_in_btn = gr.Button("Sign in", scale=1, elem_id="sign-in")
        signed_in = gr.Markdown(elem_id="signed-in")
        with gr.Tabs() as tabs, gr.Tab("Label", id="label"):
            next_btn = gr.Button("Next pair", variant="secondary", elem_id="next-pair")
            task_id = gr.Textbox(visible=False, elem_id="task-id")
            prompt = gr.Markdown(elem_id="prompt", sanitize_html=True)
            answer_a, answer_b = _side_by_side("Answer", "answer")
            choice = gr.Radio(list(CHOICES), label="Which answer is better?", elem_id="choice")
            comment = gr.Textbox(label="Comment (optional)", elem_id="comment")
            edit = gr.Textbox(label="Edit of the better answer (optional; used as 'chosen' when you pick A or B)",
                              lines=5, elem_id="edit")
            with gr.Row():
                submit_btn = gr.Button("Submit label", variant="primary", elem_id="submit-label")
                skip_btn = gr.Button("Skip this prompt", elem_id="skip")
            status = gr.Markdown(elem_id="label-status")
        with tabs, gr.Tab("Arena", id="arena"):
            gr.Markdown("Two versions answer your prompt; you see them blind as A and B and vote. The vote is a "
                        "preference pair (the next DPO round uses it) and a battle on the leaderboard.")
            with gr.Row():
                arena_1 = gr.Dropdown(label="Version 1", elem_id="arena-model-1", allow_custom_value=False)
                arena_2 = gr.Dropdown(label="Version 2", elem_id="arena-model-2", allow_custom_value=False)
                arena_default = gr.Button("Newest vs parent", elem_id="arena-default", scale=0)
            arena_text = gr.Textbox(label="Your prompt", lines=3, elem_id="arena-prompt")
            with gr.Row():
                arena_random = gr.Button("Random queued prompt", elem_id="arena-random")
                battle_btn = gr.Button("Battle", variant="primary", elem_id="arena-battle")
            arena_task = gr.Textbox(visible=False, elem_id="arena-task")
            arena_a, arena_b = _side_by_side("Model", "arena-answer")
            with gr.Row():
                vote_buttons = [gr.Button(text, elem_id=f"arena-vote-{choice}") for text, choice in
                                (("A is better", "a"), ("B is better", "b"), ("Tie", "tie"),
                                 ("Both bad", "both_bad"))]
            arena_status = gr.Markdown(elem_id="arena-status")
            gr.Markdown("### Leaderboard (Bradley-Terry, Elo scale, 95% bootstrap CIs; win rate vs parent with "
                        "its Wilson interval)")
            board_btn = gr.Button("Refresh leaderboard", elem_id="refresh-leaderboard", size="sm")
            board_md = gr.Markdown(elem_id="leaderboard")
            board_plot = gr.ScatterPlot(x="version", y="elo", color="series", label="Ratings with 95% CIs",
                                        elem_id="leaderboard-plot", height=260)
        with tabs, gr.Tab("Prompts", id="prompts"):
            queue_md = gr.Markdown(elem_id="queue-info")
            upload = gr.File(label="Upload prompts (JSONL: {\"prompt\": …} or {\"messages\": […]} per line)",
                             file_types=[".jsonl", ".json", ".txt"], type="filepath")
            pasted = gr.Textbox(label="…or paste JSONL", lines=4)
            paste_btn = gr.Button("Add pasted prompts")
            chat_n = gr.Number(100, label="Newest chat turns to queue", precision=0)
            chat_btn = gr.Button("Queue prompts from chat logs")
        with tabs, gr.Tab("Stats", id="stats"):
            stats_btn = gr.Button("Refresh stats", elem_id="refresh-stats")
            summary = gr.Markdown(elem_id="stats-summary")
            gr.Markdown("#### Labels per annotator")
            by_annotator = gr.Markdown(elem_id="stats-annotators")
            gr.Markdown("#### Per model version (win rate = (wins + ½ ties) / games between different versions)")
            by_model = gr.Markdown(elem_id="stats-models")
            gr.Markdown("#### Match-ups")
            matchups = gr.Markdown()
            gr.Markdown("#### Agreement between annotators on shared prompts")
            agreement = gr.Markdown()
        with tabs, gr.Tab("Plots", id="plots"):
            plots_btn = gr.Button("Refresh plots", elem_id="refresh-plots")
            with gr.Row():
                per_day = gr.BarPlot(x="day", y="labels", color="annotator", label="Labels per day",
                                     elem_id="plot-per-day", height=260)
                per_annotator = gr.BarPlot(x="annotator", y="labels", color="choice", label="Labels per annotator",
                                           elem_id="plot-per-annotator", height=260)
            with gr.Row():
                win_rates = gr.LinePlot(x="version", y="value", color="series", y_lim=[0, 1],
                                        label="Win rate by version (rounds in order) with 95% CI",
                                        elem_id="plot-win-rate", height=260)
                agreement_plot = gr.BarPlot(x="annotators", y="agreement", y_lim=[0, 1],
                                            label="Agreement between annotators", elem_id="plot-agreement",
                                            height=260)
            curves = gr.LinePlot(x="step", y="value", color="metric",
                                 label="Last DPO round: loss, reward margin, accuracy", elem_id="plot-dpo",
                                 height=300)
            curves_note = gr.Markdown(elem_id="plot-dpo-note")
        with tabs, gr.Tab("Export & DPO", id="export"):
            with gr.Row():
                keep_ties = gr.Checkbox(False, label="Keep ties")
                keep_both_bad = gr.Checkbox(False, label="Keep both-bad")
                since_round = gr.Checkbox(False, label="Only labels since the last DPO round")
            fmt = gr.Radio(["conversational", "text"], value="conversational", label="TRL format")
            export_btn = gr.Button("Export TRL JSONL", elem_id="export")
            export_file = gr.File(label="Export", interactive=False)
            export_md = gr.Markdown(elem_id="export-summary")
            gr.Markdown("#### DPO round (admins)")
            round_btn = gr.Button("Start DPO round on new labels", variant="stop", interactive=False,
                                  elem_id="start-round")
            round_md = gr.Markdown(elem_id="round-status")
            with gr.Row():
                round_refresh = gr.Button("Refresh job status", size="sm")
                round_battle = gr.Button("Arena battle: new vs previous version", variant="primary", visible=False,
                                         elem_id="round-battle")
            timer = gr.Timer(ROUND_POLL_S)

        task_outputs = [task_id, prompt, answer_a, answer_b, choice, comment, edit, status]
        sign_in = sign_in_btn.click(cb.sign_in, [name_box], [name, signed_in, round_btn], api_name="sign_in")
        name_box.submit(cb.sign_in, [name_box], [name, signed_in, round_btn], api_name=False)
        sign_in.then(cb.round_status, None, [round_md, round_battle], api_name=False)
        if logins:
            app.load(cb.sign_in, [name_box], [name, signed_in, round_btn], api_name=False)
        app.load(cb.queue_info, None, [queue_md], api_name=False)
        next_btn.click(cb.next_pair, [name], task_outputs, api_name="next_pair")
        submit_btn.click(cb.submit, [task_id, choice, comment, edit, name], task_outputs, api_name="submit_label")
        skip_btn.click(cb.skip, [task_id, name], task_outputs, api_name="skip")
        choice.input(cb.better_text, [task_id, choice, name], [edit], api_name=False)
        upload.upload(cb.upload_prompts, [upload], [queue_md], api_name=False)
        paste_btn.click(cb.add_prompts, [pasted], [queue_md], api_name="add_prompts")
        chat_btn.click(cb.prompts_from_chat, [chat_n], [queue_md], api_name="prompts_from_chat")
        stats_out = [summary, by_annotator, by_model, matchups, agreement]
        stats_btn.click(cb.stats, None, stats_out, api_name="stats")
        export_btn.click(cb.export, [keep_ties, keep_both_bad, fmt, since_round], [export_file, export_md],
                         api_name="export")
        round_btn.click(cb.start_round, [name], [round_md], api_name="start_round")
        round_refresh.click(cb.round_status, None, [round_md, round_battle], api_name="round_status")
        timer.tick(cb.round_status, None, [round_md, round_battle], api_name=False, show_progress="hidden")
        round_battle.click(cb.battle_new_vs_previous, None, [arena_1, arena_2, arena_status, tabs], api_name=False)

        app.load(cb.arena_setup, None, [arena_1, arena_2, arena_status], api_name=False)
        arena_default.click(cb.arena_setup, None, [arena_1, arena_2, arena_status], api_name=False)
        arena_random.click(cb.arena_random_prompt, None, [arena_text], api_name=False)
        battle_btn.click(cb.arena_battle, [arena_1, arena_2, arena_text, name],
                         [arena_task, arena_a, arena_b, arena_status], api_name="arena_battle")
        board_out = [board_md, board_plot]
        for button, choice in zip(vote_buttons, ("A better", "B better", "Tie", "Both bad"), strict=True):
            button.click(_vote(cb, choice), [arena_task, name], [arena_task, arena_status],
                         api_name="arena_vote" if choice == "A better" else False
                         ).then(cb.leaderboard, None, board_out, api_name=False)
        board_btn.click(cb.leaderboard, None, board_out, api_name="leaderboard")
        plots_out = [per_day, per_annotator, win_rates, agreement_plot, curves, curves_note]
        plots_btn.click(cb.plots, None, plots_out, api_name="plots")
    return app
