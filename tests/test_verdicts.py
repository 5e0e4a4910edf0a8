import pytest

from genrm_jax.judge import verdicts

BRACKETS = [
    ("Assistant A is more accurate. [[A]]", "A"),
    ("[[B]]", "B"),
    ("After weighing both, my final verdict is: [[b]]", "B"),  # lowercase
    ("[[ A ]]", "A"),  # inner spaces
    ("First I thought [[A]], but on reflection B handles the edge case. [[B]]", "B"),  # the last one counts
    ("[[B]] ... wait, B misreads the question. Final verdict: [[A]]", "A"),
    ('The format asks for "[[A]]" or "[[B]]". A is clearly better. [[A]]', "A"),  # restated format, then verdict
    ('I must output "[[A]]" if A is better and "[[B]]" if B is better.', None),  # only quoted mentions
    ("Output [[A]] or [[B]].", None),  # alternatives, not a decision
    ("Either [[A]]/[[B]] would be acceptable... I pick [[B]]", "B"),
    ("The verdict is “[[A]]”", None),  # curly quotes: a mention
    ("Both are fine, it is a tie. [[C]]", None),  # no tie allowed
    ("I cannot decide.", None),  # none
    ("", None),
    ("[A]", None),  # single brackets are not the format
    ("[[Assistant B]]", "B"),
    ("Verdict: [[A]]\n\nExplanation: response B was also good, but [[A]] stands.", "A"),
    ("[[AB]]", None),
    ("**Final verdict: [[B]]**", "B"),
    ("'[[A]]' is what the instructions call for; however B wins: [[B]]", "B"),
]

BARE = [
    ("A", "A"),
    (" B\n", "B"),
    ("b", "B"),  # lowercase bare letter
    ("B.", "B"),
    ("**A**", "A"),
    ("Answer: B", "B"),
    ("Assistant A", "A"),
    ("(B)", "B"),
    ("A is better because it is concise.", "A"),
    ("a good answer would mention both.", None),  # lowercase article, not a verdict
    ("A good place to start is the manual.", None),  # capital article: seen from the 135M model
    ("A Comprehensive Guide on", None),
    ("B wins: it cites the source.", "B"),
    ("A\n\nBecause it is shorter.", "A"),
    ("The better response is B.", "B"),
    ("I think [[B]]", "B"),
    ("Neither.", None),
    ("", None),
    ("As an AI, I prefer B", None),  # no verdict form at the start or after a marker
    ("Final answer: a", "A"),
]

RESULT = [
    ("Feedback: thorough and correct. [RESULT] 5", 5),
    ("Feedback: ... [RESULT] (3)", 3),
    ("[RESULT] 4/5", 4),
    ("[result]: 2", 2),
    ("Feedback: fine. [RESULT] 7", None),  # out of range
    ('Output format "[RESULT] 5"; mine: [RESULT] 1', 1),
    ("Feedback: no score given.", None),
    ("[RESULT] 2 ... revised: [RESULT] 3", 3),
]

RESULT_PAIR = [
    ("Feedback: Response 2 is safer. [RESULT] 2", "B"),
    ("[RESULT] 1", "A"),
    ("[RESULT] (Either 1 or 2)", None),
    ("[RESULT] 3", None),
    ("Response 1 wins, [RESULT] [RESULT] 1", "A"),
]


CASES = {"brackets": BRACKETS, "bare": BARE, "result": RESULT, "result_pair": RESULT_PAIR}


@pytest.mark.parametrize("style,text,want", [(style, t, w) for style, cases in CASES.items() for t, w in cases])
def test_parse(style, text, want):
    assert verdicts.parse(text, style) == want


def test_unknown_style():
    with pytest.raises(ValueError, match="unknown verdict style"):
        verdicts.parse("[[A]]", "stars")
