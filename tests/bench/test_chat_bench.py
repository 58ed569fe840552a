"""The chat latency benchmark runs end to end on a tiny model (speed is reported, not asserted)
and times what a real chat does."""

import csv

import pytest

from research.bench import chat
from research.sampling import ChatSession

TINY = ["--turns", "1,2", "--turn_tokens", "3", "--d_model", "16", "--layers", "1"]
TINY += ["--heads", "2", "--vocab", "32", "--repeats", "1"]


def test_each_timed_reply_samples_every_token_as_a_chat_does(tmp_path, monkeypatch, capsys):
    """A forced reply of 3 tokens still draws (and reads back) a sample at each step: 3 draws
    per reply, for every timed and untimed turn; the table, CSV and PNG are written."""
    draws = []
    real_session = chat._session

    def session(args, attention) -> ChatSession:
        s = real_session(args, attention)
        choose = s._choose

        def spy(logits, key):
            draws.append(1)
            return choose(logits, key)

        s._choose = spy
        return s

    monkeypatch.setattr(chat, "_session", session)
    turns = []
    real_turn = chat.time_turn

    def count(session, user, reply, **kw):
        before = len(draws)
        out = real_turn(session, user, reply, **kw)
        turns.append((len(draws) - before, kw["repeats"] + 1))
        return out

    monkeypatch.setattr(chat, "time_turn", count)
    rows = chat.main([*TINY, "--out", str(tmp_path)])
    assert turns and all(n == 3 * calls for n, calls in turns)
    assert [(r["attention"], r["history_turns"]) for r in rows] == [
        (a, h) for a in chat.ATTENTIONS for h in (1, 2)
    ]
    with open(tmp_path / "chat_latency.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert (tmp_path / "chat_latency.png").stat().st_size > 10_000
    assert "| attention | history turns |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--vocab", "5"], "argument --vocab: expected an integer >= 6, got 5"),
        (["--turns", "0"], "history lengths must be >= 1"),
        (["--heads", "3"], "d_model (16) must be divisible by num_heads (3)"),
    ],
)
def test_bad_arguments_exit_2(bad, message, capsys):
    with pytest.raises(SystemExit) as e:
        chat.main([*TINY, *bad])
    assert e.value.code == 2 and message in capsys.readouterr().err
