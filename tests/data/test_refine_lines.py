"""Line-wise corrections: each line rule, the short-line edits, and the 5% document cut."""

from __future__ import annotations

from falconlm.data.document import Document
from falconlm.data.filters.lines import LineConfig, LineFilter, correct_lines, edit_line, line_removal_reason

from refine_helpers import english

C = LineConfig()


def reason(line: str) -> str | None:
    return line_removal_reason(line, line.split(), C)


def test_removed_line_kinds():
    assert reason("THIS IS A SHOUTED BANNER") == "uppercase"
    assert reason("Mostly UPPER CASE WORDS here") == "uppercase"  # 17 of 23 letters upper
    assert reason("NASA and the ESA agree on a plan") is None  # 7 of 21 letters upper
    assert reason("FAQ") == "single_word"  # too short to judge by case, but a single word
    assert reason("12,345 678.90 - 12") == "numeric"
    assert reason("2023-02-01 14:32") == "numeric"
    assert reason("12 likes") == "counter"
    assert reason("1.2K views") == "counter"
    assert reason("Comments (4)") == "counter"
    assert reason("Introduction") == "single_word"
    assert reason("The river rises in spring.") is None


def test_short_line_edits():
    assert edit_line("Sign in to comment", C) == "to comment"
    assert edit_line("Share this: the valley in spring", C) == "the valley in spring"
    assert edit_line("Great article about rivers. Read more...", C) == "Great article about rivers."
    assert edit_line("You have 3 items in cart today", C) == "You have 3 today"
    long_line = "Read more about how the farmers of the valley built their mills along the river banks, read more"
    assert edit_line(long_line, C) == long_line  # more than 10 words: never edited


def test_five_percent_cut_boundary():
    body = english(95)
    # 95 words of prose + 5 single-word lines -> 5 of 100 words removed = 5% -> kept
    text = body + "\n" + "\n".join(["Home", "Menu", "Search", "Login", "Archive"])
    out, removed, total, reasons = correct_lines(text, C)
    assert (removed, total) == (5, 100)
    assert reasons["single_word"] == 5
    kept = LineFilter().process(Document("a", text))
    assert isinstance(kept, Document) and "Archive" not in kept.text and kept.text.startswith("The river")
    # one more removed word -> 6 of 101 > 5% -> dropped
    text2 = text + "\nContact"
    assert LineFilter().process(Document("b", text2)) == "too_many_removed_lines"


def test_edit_words_count_toward_the_cut():
    body = english(96)
    text = body + "\nRiver notes. Read more..."  # "Read more..." = 2 words removed of 100
    out, removed, total, _ = correct_lines(text, C)
    assert removed == 2 and total == 100
    assert out.endswith("River notes.")


def test_empty_after_corrections():
    assert LineFilter().process(Document("c", "12 likes\n2023")) == "empty_after_lines"
