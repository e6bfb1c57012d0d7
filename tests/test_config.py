"""Settings parsing, and the README config table kept in step with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.config import REPO_ROOT, Settings, settings_table


def test_env_then_overrides() -> None:
    s = Settings.from_env({"PARLEY_PORT": "9001", "PARLEY_PERSONA": "holmes"}, port=9002, host=None)
    assert (s.port, s.persona, s.host) == (9002, "holmes", "127.0.0.1")


def test_bad_integer_names_the_variable() -> None:
    with pytest.raises(ValueError, match="PARLEY_PORT"):
        Settings.from_env({"PARLEY_PORT": "eighty"})


@pytest.mark.parametrize(("env", "value"), [("PARLEY_AEC", "speex"), ("PARLEY_RNNOISE_KERNEL", "fast"),
                                           ("PARLEY_LOG_FORMAT", "xml"), ("PARLEY_TURN_MODEL", "vad")])
def test_a_choice_outside_its_list_names_the_variable(env: str, value: str) -> None:
    with pytest.raises(ValueError, match=env):
        Settings.from_env({env: value})


def test_backends_default_to_openai_only_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert Settings.from_env({}).llm == "local"
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    assert Settings.from_env({}).llm == "openai"
    assert Settings.from_env({"PARLEY_LLM": "local"}).llm == "local"


def test_readme_documents_every_setting() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for env, default, help_text in settings_table():
        assert f"| `{env}` | `{default}` | {help_text} |" in readme, env
    assert readme.splitlines()[3].startswith("make run") and readme.splitlines()[4].startswith("make test")


def test_tls_cert_and_key_go_together_and_bad_files_are_named(tmp_path: Path) -> None:
    from signaling.tls import server_context

    with pytest.raises(ValueError, match="PARLEY_TLS_KEY"):
        Settings.from_env({"PARLEY_TLS_CERT": "cert.pem"})
    assert server_context(Settings()) is None  # plain HTTP by default
    with pytest.raises(ValueError, match="PARLEY_TLS_CERT=.*no such file"):
        server_context(Settings(tls_cert=str(tmp_path / "none.pem"), tls_key=str(tmp_path / "none.pem")))
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="cannot be loaded"):
        server_context(Settings(tls_cert=str(junk), tls_key=str(junk)))

