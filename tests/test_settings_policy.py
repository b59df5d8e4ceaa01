from __future__ import annotations

from pathlib import Path

import pytest

from llmops.errors import ConfigError
from llmops.policy import load_policy
from llmops.settings import load_settings
from tests.conftest import ROOT, write_policy


def test_shipped_policy_loads_with_prices():
    policy = load_policy(ROOT / "llmops.yaml")
    assert {"sim-small", "sim-medium", "sim-large"} <= set(policy.models)
    inp, out = policy.models["gpt-4o-mini"].price()  # from litellm's bundled map, offline
    assert inp > 0 and out > 0


def _one_line(exc: ConfigError) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_unknown_key_names_file_key_and_fix(tmp_path: Path):
    p = write_policy(tmp_path / "p.yaml", **{"departments/legal/monthly_budjet": 5})
    with pytest.raises(ConfigError) as ei:
        load_policy(p)
    msg = _one_line(ei.value)
    assert str(p) in msg and "departments.legal.monthly_budjet" in msg
    assert "fix:" in msg and "monthly_budget_usd" in msg


def test_bad_value_is_one_line(tmp_path: Path):
    p = write_policy(tmp_path / "p.yaml", **{"departments/legal/monthly_budget_usd": -5})
    with pytest.raises(ConfigError) as ei:
        load_policy(p)
    msg = _one_line(ei.value)
    assert "departments.legal.monthly_budget_usd" in msg and "-5" in msg


def test_dangling_department_reference(tmp_path: Path):
    p = write_policy(
        tmp_path / "p.yaml", **{"people/hana.sato@example.com": {"department": "nope", "roles": ["analyst"]}}
    )
    with pytest.raises(ConfigError, match="unknown department 'nope'"):
        load_policy(p)


def test_unpriced_model_fails_to_load(tmp_path: Path):
    p = write_policy(
        tmp_path / "p.yaml",
        **{
            "models/local": {
                "litellm_model": "openai/my-local-llm",
                "provider": "openai_compatible",
                "context_window": 4096,
            }
        },
    )
    with pytest.raises(ConfigError, match=r"no price.*never a silent \$0"):
        load_policy(p)


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"provider": "openai", "litellm_model": "gpt-4o-mini"}, "may only go to a self-hosted endpoint"),
        ({"provider": "openai_compatible", "litellm_model": "openai/x"}, "may only go to a self-hosted endpoint"),
        ({"provider": "azure", "litellm_model": "azure/x", "self_hosted": True}, "is a hosted service"),
        ({"provider": "openai_compatible", "litellm_model": "openai/x", "self_hosted": True}, None),
        ({"provider": "vllm", "litellm_model": "hosted_vllm/x"}, None),
        ({"provider": "ollama", "litellm_model": "ollama/x"}, None),
    ],
)
def test_restricted_clearance_needs_a_self_hosted_endpoint(tmp_path: Path, entry: dict, error: str | None):
    """Restricted data only on endpoints the company runs: a hosted provider cannot be cleared for it, nor
    declared self-hosted; an openai_compatible endpoint must be declared so."""
    model = {
        **entry,
        "context_window": 4096,
        "clearance": "restricted",
        "input_usd_per_mtok": 1,
        "output_usd_per_mtok": 2,
    }
    p = write_policy(tmp_path / "p.yaml", **{"models/private": model})
    if error is None:
        assert load_policy(p).models["private"].is_self_hosted
        return
    with pytest.raises(ConfigError) as ei:
        load_policy(p)
    msg = _one_line(ei.value)
    assert error in msg and "models.private" in msg and "fix:" in msg


def test_duplicate_yaml_key(tmp_path: Path):
    p = tmp_path / "dup.yaml"
    p.write_text("version: 1\nversion: 1\n")
    with pytest.raises(ConfigError, match="duplicate key 'version'"):
        load_policy(p)


def test_env_settings_strict(monkeypatch):
    monkeypatch.setenv("LLMOPS_CHUNK_SIZE", "zero")
    with pytest.raises(ConfigError, match="LLMOPS_CHUNK_SIZE"):
        load_settings()
    monkeypatch.delenv("LLMOPS_CHUNK_SIZE")
    monkeypatch.setenv("LLMOPS_TIMEZONE", "Mars/Base")
    with pytest.raises(ConfigError, match="LLMOPS_TIMEZONE"):
        load_settings()


def test_import_touches_no_network(monkeypatch):
    import socket
    import subprocess
    import sys

    code = (
        "import socket\n"
        "def boom(*a, **k): raise SystemExit('network used at import')\n"
        "socket.getaddrinfo = boom; socket.create_connection = boom\n"
        "import llmops, llmops.gateway, llmops.batch, llmops.cli, llmops.policy\n"
        "from llmops.policy import load_policy; from pathlib import Path\n"
        f"load_policy(Path({str(ROOT / 'llmops.yaml')!r}))\n"
    )
    assert socket  # the check runs in a fresh interpreter
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
