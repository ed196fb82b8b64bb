"""One test per question: the route each question takes.

Every call goes through the real OpenAI SDK to whatever OPENAI_BASE_URL
names; genesis counts the calls the baseline and the candidate make.
"""

import pytest

from calc import assistant

QUESTIONS = [
    ("2 + 3", "arithmetic"),
    ("10 / 4", "arithmetic"),
    ("7 * 6", "arithmetic"),
    ("9 - 12", "arithmetic"),
    ("What is the capital of France?", "geography"),
    ("Which river flows through Cairo?", "geography"),
    ("Who wrote Hamlet?", "literature"),
    ("Recommend a novel about the sea", "literature"),
    ("Translate 'hello' into Spanish", "language"),
    ("What is the boiling point of water?", "science"),
]


@pytest.fixture(scope="module")
def llm():
    return assistant.client()


@pytest.mark.parametrize("question,kind", QUESTIONS)
def test_route(llm, question, kind):
    assert assistant.classify(llm, question) == kind


def test_is_arithmetic():
    assert assistant.is_arithmetic("1 / 2")
    assert not assistant.is_arithmetic("hello")
