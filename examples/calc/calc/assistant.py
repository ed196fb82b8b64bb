"""Routes user questions; each route is chosen by asking a language model.

The model is reached through the official OpenAI SDK. Under genesis the
SDK talks to the sandbox's LLM endpoint (OPENAI_BASE_URL is set for every
test run), which answers from llm_answers.jsonl; the network stays off.
"""

from openai import OpenAI

MODEL = "gpt-4o-mini"


def client():
    return OpenAI()


def ask(llm, prompt):
    reply = llm.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
    )
    return reply.choices[0].message.content


def classify(llm, text):
    # Asks the model which kind of question this is.
    return ask(llm, "Classify this question: " + text)


def is_arithmetic(text):
    return any(op in text for op in "+-*/")
