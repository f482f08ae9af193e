"""The job state machine: each verb, the states it may act on, the state it leaves, and the
record's expiry after it. The stores and scripts take their states from here (nowhere else
names them), `docs/architecture.md` shows `markdown_table()`, and a test drives every verb
from every state against a real Redis with this table as the oracle.
"""

from dataclasses import dataclass
from enum import StrEnum

from conveyor.jobstore.model import JobState

W = JobState.WAITING
Q, S, RN, RT = JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING, JobState.RETRYING
OK, F, C = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED


class Verb(StrEnum):
    """What can happen to a job."""

    ACCEPT = "accept"
    PROMOTE = "promote"
    START = "start"
    REPORT_PROGRESS = "report_progress"
    RETRY = "retry"
    SUCCEED = "succeed"
    FAIL = "fail"
    DEAD_LETTER = "dead_letter"
    CANCEL = "cancel"
    HAND_BACK = "hand_back"
    REPLAY = "replay"
    PURGE = "purge"
    RELEASE = "release"
    SKIP = "skip"
    REVIVE = "revive"
    RERUN = "rerun"


class Expiry(StrEnum):
    """What happens to the record's time to live."""

    KEEP = "kept until the job finishes"
    RETENTION = "expires after JOBS__RETENTION_SECONDS"
    DEAD_LETTER_RETENTION = "expires after JOBS__DEAD_LETTER_RETENTION_SECONDS"


@dataclass(frozen=True)
class Transition:
    """One verb's rule."""

    verb: Verb
    sources: tuple[JobState, ...]
    target: JobState
    expiry: Expiry
    by: str
    note: str

    @property
    def allowed(self) -> str:
        """The sources as the scripts take them: '|a|b|'."""
        return listed(self.sources)


TRANSITIONS: dict[Verb, Transition] = {
    t.verb: t
    for t in (
        Transition(Verb.ACCEPT, (), Q, Expiry.KEEP, "API, beat, callbacks",
                   "`scheduled` instead when it has a delay"),
        Transition(Verb.PROMOTE, (S,), Q, Expiry.KEEP, "workers, beat",
                   "a due `retrying` job's message is pushed too; it stays `retrying`"),
        Transition(Verb.START, (Q, S, RT, RN), RN, Expiry.KEEP, "worker",
                   "from `running`, the previous worker died: `deaths` + 1, poison at the limit"),
        Transition(Verb.REPORT_PROGRESS, (RN,), RN, Expiry.KEEP, "task",
                   "refused once cancelled: the task stops"),
        Transition(Verb.RETRY, (RN,), RT, Expiry.KEEP, "worker",
                   "the next attempt waits in the delayed set"),
        Transition(Verb.SUCCEED, (RN, Q), OK, Expiry.RETENTION, "worker",
                   "from `queued`: handed back at shutdown, but finished in its last moments"),
        Transition(Verb.FAIL, (RN, Q), F, Expiry.RETENTION, "worker",
                   "a permanent error, or the hard time limit"),
        Transition(Verb.DEAD_LETTER, (RN, Q), F, Expiry.DEAD_LETTER_RETENTION, "worker",
                   "retries exhausted, or poison; the message waits in the dead-letter set"),
        Transition(Verb.CANCEL, (W, Q, S, RN, RT), C, Expiry.RETENTION, "API",
                   "a delayed job's message is dropped; a running one stops"),
        Transition(Verb.HAND_BACK, (RN,), Q, Expiry.KEEP, "worker (shutdown)",
                   "not a death; the message is requeued as the consumer closes"),
        Transition(Verb.REPLAY, (F,), Q, Expiry.KEEP, "API (admin)",
                   "dead letters only; `deaths` reset, `attempts` go on"),
        Transition(Verb.PURGE, (F,), F, Expiry.RETENTION, "API (admin)",
                   "dead letters only; the record stays readable until it expires"),
        Transition(Verb.RELEASE, (W,), Q, Expiry.KEEP, "a parent's finishing verb",
                   "workflow step: its last parent succeeded; its kept message is queued"),
        Transition(Verb.SKIP, (W, Q, S, RN, RT), C, Expiry.KEEP, "a parent's verb, start",
                   "workflow step: a parent failed, or its workflow halted (fail fast); "
                   "expires with its workflow"),
        Transition(Verb.REVIVE, (C,), W, Expiry.KEEP, "replay of a step",
                   "workflow step skipped by a failure: waits (or is queued) again"),
        Transition(Verb.RERUN, (F,), Q, Expiry.KEEP, "API (workflow's tenant)",
                   "workflow step, failed or dead-lettered: its kept message runs again and "
                   "the workflow resumes from it"),
    )
}  # fmt: skip


# States whose delayed message is pushed onto its queue when due: a scheduled job (which
# becomes queued, PROMOTE) and a retrying one (which stays retrying until a worker starts it).
DUE_MESSAGE_STATES = (S, RT)


# The states a job is active in (not finished): what `unique.mode = active` covers.
ACTIVE_STATES = tuple(s for s in JobState if not s.is_terminal)


def listed(states: tuple[JobState, ...]) -> str:
    """States as the scripts take them: '|a|b|'."""
    return "|" + "|".join(states) + "|"


def transition(verb: Verb) -> Transition:
    """The rule of `verb`."""
    return TRANSITIONS[verb]


def markdown_table() -> str:
    """The table as docs/architecture.md shows it."""
    rows = ["| verb | from | to | record | by | note |", "| --- | --- | --- | --- | --- | --- |"]
    for t in TRANSITIONS.values():
        sources = ", ".join(f"`{s}`" for s in t.sources) or "—"
        rows.append(f"| `{t.verb}` | {sources} | `{t.target}` | {t.expiry} | {t.by} | {t.note} |")
    return "\n".join(rows) + "\n"
