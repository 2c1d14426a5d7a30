"""The admin key of Triton's restricted protocols: which protocols, and where the key comes from."""

import pytest

from openspeedy.server import (
    ADMIN_KEY_ENV,
    RESTRICTED_PROTOCOLS,
    ServerOptions,
    TritonServer,
    admin_key_from_environment,
)


def test_restricted_protocols_are_the_admin_ones():
    assert set(RESTRICTED_PROTOCOLS) == {"model-repository", "shared-memory", "trace", "logging"}


def test_admin_key_comes_from_a_secret_or_is_made_per_start(tmp_path):
    first, second = admin_key_from_environment({}), admin_key_from_environment({})
    assert first != second and len(first) >= 32
    secret = tmp_path / "admin-key"
    secret.write_text("a-mounted-secret-key-0123456789\n")
    assert admin_key_from_environment({"OPENSPEEDY_ADMIN_KEY_FILE": str(secret)}) == "a-mounted-secret-key-0123456789"
    assert admin_key_from_environment({ADMIN_KEY_ENV: "from-the-environment-0123"}) == "from-the-environment-0123"
    for bad in ("short", "has,comma-and-is-long-enough", "has=equals-and-is-long-enough"):
        with pytest.raises(ValueError, match=ADMIN_KEY_ENV):
            admin_key_from_environment({ADMIN_KEY_ENV: bad})


def test_the_key_reaches_both_restriction_flags_and_not_the_models_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ADMIN_KEY_ENV, "from-the-environment-0123")
    server = TritonServer(ServerOptions(tmp_path))
    assert server.restriction_flags() == [
        "--http-restricted-api=model-repository,shared-memory,trace,logging:openspeedy-admin-key="
        "from-the-environment-0123",
        "--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:openspeedy-admin-key="
        "from-the-environment-0123",
    ]

    class Install:
        library_paths = ()

    assert ADMIN_KEY_ENV not in server.environment(Install())
