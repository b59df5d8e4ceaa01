from __future__ import annotations

import httpx
import pytest

from llmops.simulator import SimConfig, run_in_thread
from llmops.tokens import count_messages, count_text
from tests.conftest import SIM_KEY

MSGS = [
    {"role": "system", "content": "Summarise in 2 sentences."},
    {"role": "user", "content": "<record>Alpha beta gamma. Delta epsilon. Zeta eta theta.</record>"},
]


def _post(url: str, key: str = SIM_KEY, **body):
    payload = {"model": "sim-small", "messages": MSGS, "max_tokens": 50, **body}
    return httpx.post(f"{url}/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_chat_completion_counts_tokens(sim):
    r = _post(sim.url)
    assert r.status_code == 200
    body = r.json()
    text = body["choices"][0]["message"]["content"]
    assert body["usage"]["prompt_tokens"] == count_messages(MSGS)
    assert body["usage"]["completion_tokens"] == count_text(text)
    assert text == "Alpha beta gamma. Delta epsilon."  # extractive, built from the prompt
    assert "x-ratelimit-remaining-requests" in r.headers
    assert httpx.get(f"{sim.url}/models").json()["data"][0]["id"].startswith("sim-")


def test_auth_and_bad_requests(sim):
    assert _post(sim.url, key="wrong").status_code == 401
    assert _post(sim.url, model="gpt-5").status_code == 404
    assert _post(sim.url, messages=[]).status_code == 400


def test_rate_limit_answers_429_with_retry_after():
    srv = run_in_thread(SimConfig(port=0, rpm=2, latency_scale=0))
    try:
        codes = [_post(srv.url, key="any") for _ in range(3)]
        assert [c.status_code for c in codes] == [200, 200, 429]
        limited = codes[-1]
        assert float(limited.headers["retry-after-ms"]) > 0 and int(limited.headers["retry-after"]) >= 1
        assert limited.headers["x-ratelimit-limit-requests"] == "2"
    finally:
        srv.stop()


def test_injected_faults_are_reproducible():
    srv = run_in_thread(SimConfig(port=0, error_rate=0.5, latency_scale=0, seed=3))
    try:
        codes = [_post(srv.url, key="any").status_code for _ in range(20)]
        assert set(codes) <= {200, 500, 503} and 3 <= codes.count(200) <= 17
    finally:
        srv.stop()


def test_litellm_reaches_the_simulator_over_http(sim):
    from llmops.provider import litellm_module

    litellm = litellm_module()
    r = litellm.completion(
        model="openai/sim-medium", api_base=sim.url, api_key=SIM_KEY, messages=MSGS, max_tokens=40, num_retries=0
    )
    assert r.choices[0].message.content
    assert r.usage.prompt_tokens == count_messages(MSGS)


@pytest.mark.parametrize("model", ["sim-small", "sim-medium", "sim-large"])
def test_classification_is_honest_and_deterministic(sim, model):
    msgs = [
        {
            "role": "user",
            "content": "Answer with JSON.\nCategories:\n- billing: refund, charge\n"
            "- shipping: parcel, delivery\n<record>Subject: shipping is late\nThe parcel delivery is late.</record>",
        }
    ]
    out1 = _post(sim.url, model=model, messages=msgs).json()["choices"][0]["message"]["content"]
    out2 = _post(sim.url, model=model, messages=msgs).json()["choices"][0]["message"]["content"]
    assert out1 == out2 and '"shipping"' in out1


def test_token_counts_treat_special_tokens_as_text():
    """count_text (encode_ordinary, cached) counts what encode(disallowed_special=()) counts — special tokens
    such as <|endoftext|> in a record are text, never refused — over the labelled corpora."""
    from llmops.injection_model import read_labelled
    from llmops.tokens import _encoding, truncate
    from tests.conftest import ROOT

    texts = read_labelled(sorted((ROOT / "benchmarks/data").glob("injection*.txt")))[0]
    texts += ["<|endoftext|> and <|im_start|>system<|im_end|>", "", "日本語のテキスト", "a" * 5000]
    enc = _encoding()
    for text in texts:
        assert count_text(text) == len(enc.encode(text, disallowed_special=())), text[:80]
        assert count_text(text) == count_text(text)  # the cached answer
    cut, truncated = truncate("<|endoftext|> " * 50, 10)
    assert truncated and count_text(cut) <= 10
