"""The image run config (engine/oci/config.py): Docker's semantics for Entrypoint/Cmd/Env/
WorkingDir/User, the platform check, and the cache's JSON round trip."""
from __future__ import annotations

import json
import platform
from typing import Any

import pytest

from engine.errors import ImageError
from engine.oci.config import DEFAULT_PATH, ImageConfig, config_from_json, host_architecture, parse_config

WHERE = "test-image:1"


def _document(**run: Any) -> dict[str, Any]:
    return {"architecture": "amd64", "os": "linux", "config": run}


def test_run_fields_are_honoured() -> None:
    config = parse_config(_document(Entrypoint=["python3", "-u"], Cmd=["/app/main.py"],
                                    Env=["PATH=/opt/bin:/usr/bin", "GREETING=hi=there", "EMPTY="],
                                    WorkingDir="/app", User="app:app", Labels={"b": "2", "a": "1"}), WHERE)
    assert config.architecture == "amd64"
    assert config.os == "linux"
    assert config.entrypoint == ("python3", "-u")
    assert config.cmd == ("/app/main.py",)
    assert config.env == (("PATH", "/opt/bin:/usr/bin"), ("GREETING", "hi=there"), ("EMPTY", ""))
    assert config.working_dir == "/app"
    assert config.user == "app:app"
    assert config.labels == (("a", "1"), ("b", "2"))


def test_defaults_when_the_image_says_nothing() -> None:
    config = parse_config({"architecture": "amd64"}, WHERE)
    assert (config.os, config.entrypoint, config.cmd, config.env, config.working_dir, config.user) == \
        ("linux", (), (), (), "/", "")
    assert config.command() == []


def test_null_fields_are_like_missing_ones() -> None:
    config = parse_config(_document(Entrypoint=None, Cmd=None, Env=None, WorkingDir="", User=None), WHERE)
    assert (config.entrypoint, config.cmd, config.env, config.working_dir, config.user) == ((), (), (), "/", "")


def test_command_without_args_is_entrypoint_plus_cmd() -> None:
    config = parse_config(_document(Entrypoint=["python3"], Cmd=["/app/main.py", "--flag"]), WHERE)
    assert config.command() == ["python3", "/app/main.py", "--flag"]
    assert config.command(None) == ["python3", "/app/main.py", "--flag"]


def test_args_replace_cmd_and_keep_entrypoint() -> None:
    config = parse_config(_document(Entrypoint=["python3"], Cmd=["/app/main.py"]), WHERE)
    assert config.command(["-c", "print(1)"]) == ["python3", "-c", "print(1)"]
    assert config.command([]) == ["python3"]  # explicit empty args: no Cmd either


def test_args_without_entrypoint_are_the_whole_command() -> None:
    config = parse_config(_document(Cmd=["/bin/sh"]), WHERE)
    assert config.command(["ls", "-l"]) == ["ls", "-l"]
    assert config.command() == ["/bin/sh"]


def test_environment_adds_the_default_path_only_when_absent() -> None:
    without = parse_config(_document(Env=["A=1"]), WHERE)
    assert without.environment() == {"A": "1", "PATH": DEFAULT_PATH}
    with_path = parse_config(_document(Env=["PATH=/only/here", "A=1"]), WHERE)
    assert with_path.environment() == {"PATH": "/only/here", "A": "1"}


def test_environment_later_entry_wins() -> None:
    config = parse_config(_document(Env=["A=1", "A=2"]), WHERE)
    assert config.environment()["A"] == "2"


def test_missing_architecture_is_refused() -> None:
    with pytest.raises(ImageError, match="architecture") as caught:
        parse_config({"os": "linux", "config": {}}, WHERE)
    assert WHERE in str(caught.value)


def test_not_an_object_is_refused() -> None:
    with pytest.raises(ImageError, match="not a JSON object"):
        parse_config(["architecture", "amd64"], WHERE)


def test_env_entry_without_equals_is_refused() -> None:
    with pytest.raises(ImageError) as caught:
        parse_config(_document(Env=["GOOD=1", "JUSTANAME"]), WHERE)
    assert "'JUSTANAME'" in str(caught.value)
    assert WHERE in str(caught.value)


def test_env_entry_with_empty_name_is_refused() -> None:
    with pytest.raises(ImageError, match="'=value'"):
        parse_config(_document(Env=["=value"]), WHERE)


def test_relative_working_dir_is_refused() -> None:
    with pytest.raises(ImageError, match="'app'") as caught:
        parse_config(_document(WorkingDir="app"), WHERE)
    assert "absolute" in str(caught.value)


@pytest.mark.parametrize("field", ["Cmd", "Entrypoint"])
def test_non_list_command_is_refused(field: str) -> None:
    with pytest.raises(ImageError, match=field) as caught:
        parse_config(_document(**{field: "echo hello"}), WHERE)
    assert "not a list of strings" in str(caught.value)


def test_list_with_non_strings_is_refused() -> None:
    with pytest.raises(ImageError, match="Cmd"):
        parse_config(_document(Cmd=["sleep", 5]), WHERE)


def test_non_string_user_is_refused() -> None:
    with pytest.raises(ImageError, match="User"):
        parse_config(_document(User=1000), WHERE)


def test_host_architecture_is_in_oci_words() -> None:
    expected = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), None)
    if expected is not None:
        assert host_architecture() == expected


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the arm64 refusal is checked on an x86_64 host")
def test_arm64_image_is_refused_on_this_amd64_host() -> None:
    config = parse_config({"architecture": "arm64", "os": "linux"}, WHERE)
    with pytest.raises(ImageError) as caught:
        config.check_platform(WHERE)
    message = str(caught.value)
    assert "arm64" in message and "amd64" in message and WHERE in message


def test_this_hosts_architecture_is_accepted() -> None:
    parse_config({"architecture": host_architecture(), "os": "linux"}, WHERE).check_platform(WHERE)


def test_windows_image_is_refused() -> None:
    config = parse_config({"architecture": host_architecture(), "os": "windows"}, WHERE)
    with pytest.raises(ImageError, match="windows") as caught:
        config.check_platform(WHERE)
    assert WHERE in str(caught.value)


def test_json_round_trip() -> None:
    config = ImageConfig(architecture="amd64", os="linux", entrypoint=("tini", "--"), cmd=("python3", "app.py"),
                         env=(("PATH", "/usr/bin"), ("EQ", "a=b=c"), ("EMPTY", "")), working_dir="/srv",
                         user="1000:1000", labels=(("maintainer", "me"), ("version", "1")))
    stored = json.loads(json.dumps(config.to_json()))  # what the cache writes and reads back
    assert config_from_json(stored) == config


def test_json_round_trip_of_a_parsed_config() -> None:
    config = parse_config(_document(Cmd=["/bin/sh"], Env=["PATH=/bin"], Labels={"x": "y"}), WHERE)
    assert config_from_json(json.loads(json.dumps(config.to_json()))) == config
