"""The preference-labeling app (Gradio Blocks): thin callbacks over ``Labeler``, the queue, stats and export.

Who is labeling: with ``NEO_UI_USERS`` set the app sits behind Gradio's login and the account name is the
annotator; without, an annotator types a name, kept in the session's state. Named API endpoints (for
``gradio_client``): ``/sign_in``, ``/next_pair``, ``/submit_label``, ``/skip``, ``/add_prompts``,
``/prompts_from_chat``, ``/stats``, ``/export``, ``/start_round``, ``/round_status``.

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

from neo_ui.chatlog import ChatLog
from neo_ui.client import ServingClient, ServingUnavailable
from neo_ui.export import export
from neo_ui.jobs import RoundError, TrainerQueue, start_dpo_round, status_markdown
from neo_ui.labeling import CHOICES, Labeler, LabelError, TaskView, check_annotator
from neo_ui.prompts import PromptQueue
from neo_ui.render import conversation_markdown, markdown_table, safe_markdown
from neo_ui.settings import UISettings
from neo_ui.stats import PreferenceStats, compute, summary_markdown
from neo_ui.store import PreferenceStore

log = logging.getLogger(__name__)

EMPTY = ("", "", "", "")  # task id, prompt, answer A, answer B
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
            return _task_outputs(None, "The queue has nothing left for you: upload prompts or take them from chat logs.")
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
        return f"{self.prompts.open_count()} prompts waiting for labels."

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
            return f"⚠️ Only admins ({', '.join(self.settings.ui_admins) or 'none configured: NEO_UI_ADMINS'}) start rounds."
        try:
            started = start_dpo_round(self.settings, self.store, self.queue, self.client)
        except (RoundError, ServingUnavailable) as exc:
            return f"⚠️ {safe_markdown(str(exc))}"
        log.info("%s started DPO round %s (job %s)", who, started.marker["round"], started.job)
        return (f"Round {started.marker['round']} queued: {safe_markdown(started.export.summary())}\n\n"
                + status_markdown(started.job, self.queue.status(started.job)))

    def round_status(self) -> str:
        job = self.store.last_round().get("job") or None
        return status_markdown(job, self.queue.status(job) if job else None)


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
        with gr.Tab("Label"):
            next_btn = gr.Button("Next pair", variant="secondary", elem_id="next-pair")
            task_id = gr.Textbox(visible=False, elem_id="task-id")
            prompt = gr.Markdown(elem_id="prompt", sanitize_html=True)
            with gr.Row(equal_height=False):
                with gr.Column():
                    gr.Markdown("### Answer A")
                    answer_a = gr.Markdown(elem_id="answer-a", sanitize_html=True)
                with gr.Column():
                    gr.Markdown("### Answer B")
                    answer_b = gr.Markdown(elem_id="answer-b", sanitize_html=True)
            choice = gr.Radio(list(CHOICES), label="Which answer is better?", elem_id="choice")
            comment = gr.Textbox(label="Comment (optional)", elem_id="comment")
            edit = gr.Textbox(label="Edit of the better answer (optional; used as 'chosen' when you pick A or B)",
                              lines=5, elem_id="edit")
            with gr.Row():
                submit_btn = gr.Button("Submit label", variant="primary", elem_id="submit-label")
                skip_btn = gr.Button("Skip this prompt", elem_id="skip")
            status = gr.Markdown(elem_id="label-status")
        with gr.Tab("Prompts"):
            queue_md = gr.Markdown(elem_id="queue-info")
            upload = gr.File(label="Upload prompts (JSONL: {\"prompt\": …} or {\"messages\": […]} per line)",
                             file_types=[".jsonl", ".json", ".txt"], type="filepath")
            pasted = gr.Textbox(label="…or paste JSONL", lines=4)
            paste_btn = gr.Button("Add pasted prompts")
            chat_n = gr.Number(100, label="Newest chat turns to queue", precision=0)
            chat_btn = gr.Button("Queue prompts from chat logs")
        with gr.Tab("Stats"):
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
        with gr.Tab("Export & DPO"):
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
            round_refresh = gr.Button("Refresh job status", size="sm")
            timer = gr.Timer(10)

        task_outputs = [task_id, prompt, answer_a, answer_b, choice, comment, edit, status]
        sign_in = sign_in_btn.click(cb.sign_in, [name_box], [name, signed_in, round_btn], api_name="sign_in")
        name_box.submit(cb.sign_in, [name_box], [name, signed_in, round_btn], api_name=False)
        sign_in.then(cb.round_status, None, [round_md], api_name=False)
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
        round_refresh.click(cb.round_status, None, [round_md], api_name="round_status")
        timer.tick(cb.round_status, None, [round_md], api_name=False, show_progress="hidden")
    return app
