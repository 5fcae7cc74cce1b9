"""The listening test's database: participants, every rating the moment it is given, forced choices, comments.

SQLAlchemy Core on any URL it takes: a SQLite file by default (`sqlite:///listening.sqlite`),
PostgreSQL with `postgresql+psycopg://user@host/db`. A rating is one row per (participant, trial,
stimulus), written when the slider is released and overwritten when it moves again (its
`revisions` count how often), so a closed tab, a lost connection or a restarted server loses
nothing that was answered; an ABX or remix trial takes one answer; a trial is `done` once all its stimuli are rated and the participant
moves on, which is where a returning participant resumes.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import (Boolean, Column, Float, ForeignKey, Integer, MetaData, String, Table, Text, create_engine,
                        func, insert, select, update)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

metadata = MetaData()

participants = Table(
    "participants", metadata,
    Column("id", String(32), primary_key=True),
    Column("experiment", String(64), nullable=False),
    Column("consented_at", Float, nullable=False),
    Column("finished_at", Float),
)
ratings = Table(
    "ratings", metadata,
    Column("participant_id", String(32), ForeignKey("participants.id"), primary_key=True),
    Column("trial_id", String(64), primary_key=True),
    Column("condition", String(64), primary_key=True),
    Column("score", Integer, nullable=False),
    Column("revisions", Integer, nullable=False, default=1),
    Column("rated_at", Float, nullable=False),
)
choices = Table(  # one answer per forced-choice trial: ABX (which one X is) and remix (which stem is generated)
    "choices", metadata,
    Column("participant_id", String(32), ForeignKey("participants.id"), primary_key=True),
    Column("trial_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("truth", String(64), nullable=False),
    Column("answer", String(64), nullable=False),
    Column("correct", Boolean, nullable=False),
    Column("options", Integer, nullable=False),    # how many answers were possible: chance is 1 / options
    Column("answered_at", Float, nullable=False),
)
trials_done = Table(
    "trials_done", metadata,
    Column("participant_id", String(32), ForeignKey("participants.id"), primary_key=True),
    Column("trial_id", String(64), primary_key=True),
    Column("done_at", Float, nullable=False),
)
comments = Table(
    "comments", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("participant_id", String(32), ForeignKey("participants.id"), nullable=False),
    Column("trial_id", String(64)),
    Column("text", Text, nullable=False),
    Column("written_at", Float, nullable=False),
)


class Store:
    """The database behind one listening app (`url`: any SQLAlchemy URL)."""

    def __init__(self, url: str = "sqlite:///listening.sqlite"):
        kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}} if url.startswith("sqlite") else {}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite") and ":memory:" not in url:
            with self.engine.connect() as c:
                c.exec_driver_sql("PRAGMA journal_mode=WAL")  # readers (the admin) never block the raters
        metadata.create_all(self.engine)

    def new_participant(self, experiment: str) -> str:
        pid = uuid.uuid4().hex
        with self.engine.begin() as c:
            c.execute(insert(participants).values(id=pid, experiment=experiment, consented_at=time.time()))
        return pid

    def participant(self, pid: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(participants).where(participants.c.id == pid)).mappings().first()
        return dict(row) if row else None

    def rate(self, pid: str, trial_id: str, condition: str, score: int) -> int:
        """Store (or overwrite) one rating; returns how many times it has been given."""
        now = time.time()
        with self.engine.begin() as c:
            key = (ratings.c.participant_id == pid) & (ratings.c.trial_id == trial_id) & (ratings.c.condition == condition)
            done = c.execute(update(ratings).where(key).values(score=score, rated_at=now,
                                                               revisions=ratings.c.revisions + 1))
            if done.rowcount:
                return int(c.execute(select(ratings.c.revisions).where(key)).scalar_one())
            try:
                with c.begin_nested():
                    c.execute(insert(ratings).values(participant_id=pid, trial_id=trial_id, condition=condition,
                                                     score=score, revisions=1, rated_at=now))
                return 1
            except IntegrityError:  # a concurrent first save of the same slider won the insert
                c.execute(update(ratings).where(key).values(score=score, rated_at=now,
                                                            revisions=ratings.c.revisions + 1))
                return int(c.execute(select(ratings.c.revisions).where(key)).scalar_one())

    def choose(self, pid: str, trial_id: str, kind: str, truth: str, answer: str, options: int) -> bool:
        """Store the participant's one answer to a forced-choice trial (a second one is refused:
        ValueError); returns whether it was right."""
        try:
            with self.engine.begin() as c:
                c.execute(insert(choices).values(participant_id=pid, trial_id=trial_id, kind=kind, truth=truth,
                                                 answer=answer, correct=truth == answer, options=options,
                                                 answered_at=time.time()))
        except IntegrityError:
            raise ValueError(f"trial {trial_id} was already answered") from None
        return truth == answer

    def finish_trial(self, pid: str, trial_id: str) -> None:
        """Mark a trial done; marking it again (a double click, a retried request) changes nothing."""
        try:
            with self.engine.begin() as c:
                c.execute(insert(trials_done).values(participant_id=pid, trial_id=trial_id, done_at=time.time()))
        except IntegrityError:  # already done: the first time stands
            pass

    def finish(self, pid: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(participants).where(participants.c.id == pid).values(finished_at=time.time()))

    def comment(self, pid: str, trial_id: str | None, text: str) -> None:
        with self.engine.begin() as c:
            c.execute(insert(comments).values(participant_id=pid, trial_id=trial_id, text=text, written_at=time.time()))

    def progress(self, pid: str) -> dict:
        """What a returning participant had answered: ratings {trial: {condition: score}}, choices
        {trial: answer}, and the trials done."""
        with self.engine.connect() as c:
            rated = c.execute(select(ratings).where(ratings.c.participant_id == pid)).mappings().all()
            chosen = c.execute(select(choices).where(choices.c.participant_id == pid)).mappings().all()
            done = c.execute(select(trials_done.c.trial_id).where(trials_done.c.participant_id == pid)).scalars().all()
        out: dict = {"ratings": {}, "choices": {r["trial_id"]: r["answer"] for r in chosen}, "done": sorted(done)}
        for r in rated:
            out["ratings"].setdefault(r["trial_id"], {})[r["condition"]] = r["score"]
        return out

    def rows(self, table: str) -> list[dict]:
        """Every row of `table` (participants, ratings, choices, trials_done, comments): the export."""
        if table not in metadata.tables:
            raise ValueError(f"table {table!r}: the store has {sorted(metadata.tables)}")
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(select(metadata.tables[table])).mappings().all()]

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as c:
            return {name: int(c.execute(select(func.count()).select_from(t)).scalar_one())
                    for name, t in metadata.tables.items()}
