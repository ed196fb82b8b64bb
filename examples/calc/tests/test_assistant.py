from calc import assistant


class FakeLLM:
    def __init__(self):
        self.prompts = []

    def complete(self, prompt):
        self.prompts.append(prompt)
        return "arithmetic" if "Classify" in prompt else "an explanation"


def test_classify_arithmetic():
    assert assistant.classify(FakeLLM(), "2 + 2") == "arithmetic"


def test_explain_uses_the_model():
    llm = FakeLLM()
    assert assistant.explain(llm, "2 * 3") == "an explanation"
    assert llm.prompts


def test_is_arithmetic():
    assert assistant.is_arithmetic("1 / 2")
    assert not assistant.is_arithmetic("hello")
