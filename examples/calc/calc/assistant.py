"""Routes user questions; some routes ask a language model.

The llm client is injected so tests can pass a fake one.
"""


def classify(llm, text):
    # Asks the model which kind of question this is.
    return llm.complete("Classify this question: " + text)


def explain(llm, expression):
    return llm.complete("Explain step by step: " + expression)


def is_arithmetic(text):
    return any(op in text for op in "+-*/")
