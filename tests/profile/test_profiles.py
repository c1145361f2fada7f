"""Pool profiles: validation (every kind of error, all at once), loading, overrides, saving, CLI.

No test here boots a VM: builders are checked through the specs and settings they produce.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import engine
import engine.profile.parse
from capsatui.cli import main as cli_main

BUNDLED = Path(__file__).resolve().parents[2] / "profiles"


def _issues(text: str, **kwargs: Any) -> list[str]:
    """The issues parse_profile reports for ``text`` (named p.yaml), as their printed lines."""
    with pytest.raises(engine.ProfileError) as caught:
        engine.parse_profile(textwrap.dedent(text), "p.yaml", **kwargs)
    return [str(issue) for issue in caught.value.errors]


def _parse(text: str, **kwargs: Any) -> engine.Profile:
    return engine.parse_profile(textwrap.dedent(text), "p.yaml", **kwargs)






# -- parsing: the good cases -------------------------------------------------------------------


def test_a_name_alone_gives_the_documented_defaults() -> None:
    profile = _parse("name: web\n")
    assert (profile.cpus, profile.memory_mb, profile.console, profile.size, profile.max_size) == (1, 256, True, 2, 4)
    assert profile.boot == engine.BootChoice("default")
    assert profile.network == engine.NoNetwork()
    assert profile.hostname == "web" and profile.login is None and profile.kernel_args == ()
    assert profile.description == "" and profile.source == "file"


def test_every_field_is_read() -> None:
    profile = _parse(
        """\
        name: full
        description: all the keys
        boot:
          kernel: vmlinuz
          initrd: /abs/initrd.img
          cmdline: "console=ttyS0 quiet"
        cpus: 4
        memory_mb: 1024
        console: false
        hostname: box-1
        pool: {size: 5, max_size: 9}
        network: {mode: none}
        """,
        base_dir=Path("/profiles"),
        is_file=lambda path: True,
    )
    assert profile.boot == engine.BootChoice("custom", Path("/profiles/vmlinuz"), Path("/abs/initrd.img"), "console=ttyS0 quiet")
    assert (profile.cpus, profile.memory_mb, profile.console, profile.hostname) == (4, 1024, False, "box-1")
    assert (profile.size, profile.max_size, profile.description) == (5, 9, "all the keys")


def test_login_and_kernel_args_are_read() -> None:
    profile = _parse(
        """\
        name: login
        login: {user: alice, password: "1234"}
        kernel_args: {loglevel: 4, foo: bar baz}
        """
    )
    assert profile.login == engine.LoginSpec("alice", "1234")
    assert profile.kernel_args == (("loglevel", "4"), ("foo", "bar baz"))


def test_max_size_defaults_to_at_least_the_size() -> None:
    assert _parse("name: a\npool: {size: 7}\n").max_size == 7
    assert _parse("name: a\npool: {size: 1}\n").max_size == 4


def test_hostname_defaults_to_capsa_when_the_name_is_no_host_name() -> None:
    assert _parse("name: my_pool\n").hostname == "capsa"


# -- parsing: every kind of error --------------------------------------------------------------


def test_bad_yaml_syntax_names_the_line() -> None:
    assert _issues("name: a\ncpus: [1, 2\nmemory_mb: 3\n") == [
        "p.yaml:3: invalid YAML: expected ',' or ']', but got ':'"
    ]


def test_a_duplicate_key_is_a_yaml_error_on_its_line() -> None:
    (issue,) = _issues("name: a\ncpus: 1\ncpus: 2\n")
    assert issue.startswith("p.yaml:3: invalid YAML: ") and "duplicate key" in issue


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "p.yaml:1: the file is empty: expected a mapping with at least 'name'"),
        ("# only a comment\n", "p.yaml:1: the file is empty: expected a mapping with at least 'name'"),
        ("- name: a\n", "p.yaml:1: expected a mapping of keys (name: ..., cpus: ...), found a list"),
        ("just words\n", "p.yaml:1: expected a mapping of keys (name: ..., cpus: ...), found string 'just words'"),
    ],
)
def test_a_file_that_is_not_a_mapping_says_so(text: str, expected: str) -> None:
    assert _issues(text) == [expected]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('cpus: "2"', "cpus: expected an integer from 1 to 64, found string '2'"),
        ("cpus: true", "cpus: expected an integer from 1 to 64, found boolean true"),  # bool is no int
        ("cpus: 1.5", "cpus: expected an integer from 1 to 64, found number 1.5"),
        ("memory_mb: 256M", "memory_mb: expected an integer from 64 to 65536, found string '256M'"),
        ("console: yes", "console: expected true or false, found string 'yes'"),  # YAML 1.2: a string
        ("description: 12", "description: expected a string (put it in quotes), found integer 12"),
        ("pool: 3", "pool: expected a mapping, found integer 3"),
        ("pool:", "pool: expected a mapping, found nothing (null)"),
        ("boot: custom", "boot: expected 'default' or a mapping with kernel and initrd (or root_disk), found string 'custom'"),
        ("login: {user: bob, password: 1234}", "login.password: expected a string (put it in quotes), found integer 1234"),
        ("kernel_args: [quiet]", "kernel_args: expected a mapping, found a list"),
        ("kernel_args: {quiet: true}", "kernel_args.quiet: expected a string or a number, found boolean true"),
    ],
)
def test_a_wrong_type_names_line_field_expected_and_found(line: str, expected: str) -> None:
    assert _issues(f"name: a\n{line}\n") == [f"p.yaml:2: {expected}"]


def test_an_unknown_key_suggests_the_closest_known_one() -> None:
    assert _issues("name: a\n\ncrpus: 2\npool:\n  sise: 2\nfoo: 1\n") == [
        "p.yaml:3: crpus: unknown key (did you mean 'cpus'?)",
        "p.yaml:5: pool.sise: unknown key (did you mean 'size'?)",
        "p.yaml:6: foo: unknown key (known keys: name, description, kind, boot, image, cpus, memory_mb, "
        "console, hostname, kernel_args, login, scratch_disk_mb, timeout, pool, network, shares, disks)",
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("cpus: 0", "cpus: expected an integer from 1 to 64, found integer 0"),
        ("cpus: 65", "cpus: expected an integer from 1 to 64, found integer 65"),
        ("memory_mb: 63", "memory_mb: expected an integer from 64 to 65536, found integer 63"),
        ("memory_mb: 65537", "memory_mb: expected an integer from 64 to 65536, found integer 65537"),
        ("pool: {size: -1}", "pool.size: expected an integer from 0 to 64, found integer -1"),
        ("pool: {max_size: 257}", "pool.max_size: expected an integer from 1 to 256, found integer 257"),
    ],
)
def test_out_of_range_numbers_are_errors(line: str, expected: str) -> None:
    assert _issues(f"name: a\n{line}\n") == [f"p.yaml:2: {expected}"]


def test_max_size_below_size_is_an_error() -> None:
    assert _issues("name: a\npool:\n  size: 3\n  max_size: 2\n") == [
        "p.yaml:4: pool.max_size: expected at least pool.size (3), found 2"
    ]


def test_a_missing_kernel_file_is_an_error_naming_boot_kernel(tmp_path: Path) -> None:
    (tmp_path / "initrd.img").write_bytes(b"i")
    path = tmp_path / "custom.yaml"
    path.write_text("name: custom\nboot:\n  kernel: vmlinuz\n  initrd: initrd.img\n")
    with pytest.raises(engine.ProfileError) as caught:
        engine.load_profile(path)
    assert [str(issue) for issue in caught.value.errors] == [
        f"{path}:3: boot.kernel: expected an existing kernel file, found '{tmp_path / 'vmlinuz'}' (no such file)"
    ]
    (tmp_path / "vmlinuz").write_bytes(b"k")  # relative paths are the profile folder's, not the cwd's
    assert engine.load_profile(path).boot.kernel == tmp_path / "vmlinuz"


def test_a_custom_boot_needs_kernel_and_initrd() -> None:
    assert _issues("name: a\nboot:\n  kernal: x\n") == [
        "p.yaml:3: boot.kernal: unknown key (did you mean 'kernel'?)",
        "p.yaml:3: boot.kernel: missing: expected the path of the kernel file",
        "p.yaml:3: boot.initrd: missing: expected the path of the initrd file",
    ]


def test_name_is_required_and_checked() -> None:
    assert _issues("cpus: 1\n") == ["p.yaml:1: name: missing: expected a profile name, e.g. 'name: default'"]
    (issue,) = _issues("name: Has Spaces\n")
    assert issue.startswith("p.yaml:1: name: expected a name of lowercase letters") and "found string 'Has Spaces'" in issue


def test_login_needs_the_default_guest_and_a_user() -> None:
    text = "name: a\nboot: {kernel: /k, initrd: /i}\nlogin:\n  password: x\n"
    assert _issues(text, is_file=lambda path: True) == [
        "p.yaml:3: login: expected 'boot: default' with login (a custom initrd brings its own getty)",
        "p.yaml:4: login.user: missing: expected the user name to log in as",
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("network: wifi", "network: expected 'none', 'user_nat' or a mapping with mode, found string 'wifi'"),
        ("network: {mode: nat}", "network.mode: expected 'none' or 'user_nat', found string 'nat' (did you mean 'user_nat'?)"),
        ("network: {mode: none, policy: {}}", "network.policy: expected no policy with mode none (no network card), or mode user_nat"),
        ("network: {mode: 3}", "network.mode: expected 'none' or 'user_nat', found integer 3"),
    ],
)
def test_a_bad_network_mode_names_line_and_field(line: str, expected: str) -> None:
    """The rest of the network section is tested in test_profile_network.py."""
    assert _issues(f"name: a\n{line}\n") == [f"p.yaml:2: {expected}"]


def test_kernel_args_cannot_set_capsa_args_or_join_a_whole_cmdline() -> None:
    assert _issues("name: a\nkernel_args:\n  capsa.login: 1\n") == [
        "p.yaml:3: kernel_args.capsa.login: expected no capsa.* argument (set hostname and login in the profile)"
    ]
    text = "name: a\nboot: {kernel: /k, initrd: /i, cmdline: quiet}\nkernel_args: {a: b}\n"
    assert _issues(text, is_file=lambda path: True) == [
        "p.yaml:3: kernel_args: expected no kernel_args with boot.cmdline (it replaces the whole command line)"
    ]


def test_every_error_in_a_file_is_reported_at_once_in_line_order() -> None:
    text = "name: a\npool:\n  size: 9\n  max_size: 3\ncpus: 0\nmemroy_mb: 1\nconsole: 1\n"
    with pytest.raises(engine.ProfileError) as caught:
        _parse(text)
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[0:2] for line in lines] == [
        ["p.yaml:4", "pool.max_size"],
        ["p.yaml:5", "cpus"],
        ["p.yaml:6", "memroy_mb"],
        ["p.yaml:7", "console"],
    ]
    assert isinstance(caught.value, engine.ConfigError)  # callers catching ConfigError see it


# -- builders ----------------------------------------------------------------------------------


def test_the_default_guest_is_resolved_only_when_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_image() -> engine.LinuxDirectBoot:
        raise engine.ImageError("no guest image")

    monkeypatch.setattr(engine.profile.parse, "default_boot", no_image)
    profile = _parse("name: a\n")  # loading must not need the image
    with pytest.raises(engine.ImageError):
        profile.vm_builder()


def test_vm_builder_carries_the_whole_shape(fake_guest: engine.LinuxDirectBoot) -> None:
    profile = _parse(
        "name: shape\ncpus: 2\nmemory_mb: 512\nhostname: h1\nkernel_args: {loglevel: 4}\nlogin: {user: bob, password: pw}\n"
    )
    spec = profile.vm_builder().spec()
    assert spec.boot == fake_guest
    assert (spec.cpus, spec.memory_mb, spec.console, spec.hostname) == (2, 512, True, "h1")
    assert spec.cmdline_args == (("loglevel", "4"),)
    assert spec.login == engine.LoginSpec("bob", "pw")
    assert spec.cmdline_override is None


def test_a_custom_boot_and_cmdline_reach_the_spec(tmp_path: Path) -> None:
    for name in ("vmlinuz", "initrd"):
        (tmp_path / name).write_bytes(b"x")
    profile = _parse("name: own\nboot: {kernel: vmlinuz, initrd: initrd, cmdline: console=ttyS0}\n", base_dir=tmp_path)
    spec = profile.vm_builder().spec()
    assert (spec.boot.kernel, spec.boot.initrd, spec.boot.capsa_guest) == (tmp_path / "vmlinuz", tmp_path / "initrd", False)
    assert spec.cmdline_override == "console=ttyS0"


def test_pool_builder_carries_shape_name_and_max_size(fake_guest: engine.LinuxDirectBoot) -> None:
    profile = _parse("name: warm\ncpus: 2\nconsole: false\npool: {size: 3, max_size: 5}\n")
    builder = profile.pool_builder()
    assert isinstance(builder, engine.PoolBuilder)
    assert (builder.spec().cpus, builder.spec().console, builder.spec().boot) == (2, False, fake_guest)
    settings = builder.settings(profile.size)
    assert (settings.name, settings.size, settings.max_size) == ("warm", 3, 5)


# -- the bundled profiles ----------------------------------------------------------------------


def test_bundled_profiles_load_and_make_valid_specs(
    user_dir: Path, fake_guest: engine.LinuxDirectBoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox_boot = engine.LinuxDirectBoot(fake_guest.kernel, fake_guest.initrd, capsa_guest=True, has_agent=True,
                                          root_disk=engine.DiskImage(fake_guest.kernel, read_only=True))
    monkeypatch.setattr(engine.profile.parse, "sandbox_boot", lambda *args, **kwargs: sandbox_boot)
    profiles = {p.name: p for p in engine.load_profiles()}
    assert {"default", "login", "tiny", "web", "sandbox"} <= set(profiles)
    for profile in profiles.values():
        assert profile.source == "bundled" and profile.description
        profile.vm_builder().spec()  # VmSpec.validate agrees with the profile's own checks
        profile.pool_builder().settings(profile.size)
    default = profiles["default"]
    assert default.network == engine.NoNetwork()
    assert isinstance(profiles["web"].network, engine.UserNatConfig)
    shape = (default.cpus, default.memory_mb, default.console, default.size, default.max_size)
    assert shape == (1, 256, True, 2, 4)
    assert profiles["login"].login is not None and profiles["login"].login.password


def test_bundled_profiles_survive_a_save_byte_for_byte(tmp_path: Path) -> None:
    """Our YAML writer's style matches the bundled files, so saving changes only what it must."""
    for path in sorted(BUNDLED.glob("*.yaml")):
        copy = tmp_path / path.name
        copy.write_text(path.read_text())
        engine.save_profile(copy, {})
        assert copy.read_text() == path.read_text(), path.name


# -- loading from folders ----------------------------------------------------------------------


def test_a_user_profile_overrides_the_bundled_one_of_the_same_name(user_dir: Path) -> None:
    (user_dir / "mine.yaml").write_text("name: default\ncpus: 2\n")
    (user_dir / "extra.yml").write_text("name: extra\n")
    profiles = {p.name: p for p in engine.load_profiles()}
    assert (profiles["default"].source, profiles["default"].cpus) == ("user", 2)
    assert profiles["default"].path == user_dir / "mine.yaml"
    assert profiles["tiny"].source == "bundled" and profiles["extra"].source == "user"
    assert [p.name for p in engine.load_profiles()] == sorted(profiles)


def test_load_profiles_reports_every_bad_file_and_keeps_the_good_ones(user_dir: Path) -> None:
    (user_dir / "a.yaml").write_text("name: a\ncpus: 0\n")
    (user_dir / "b.yaml").write_text("name: b\nmemory: 1\n")
    (user_dir / "c.yaml").write_text("name: c\n")
    with pytest.raises(engine.ProfileError) as caught:
        engine.load_profiles()
    assert [str(issue) for issue in caught.value.errors] == [
        f"{user_dir / 'a.yaml'}:2: cpus: expected an integer from 1 to 64, found integer 0",
        f"{user_dir / 'b.yaml'}:2: memory: unknown key (did you mean 'memory_mb'?)",
    ]
    assert {"c", "default"} <= {p.name for p in caught.value.profiles}


def test_two_files_of_one_folder_with_the_same_name_are_an_error(user_dir: Path) -> None:
    (user_dir / "a.yaml").write_text("name: twin\n")
    (user_dir / "b.yaml").write_text("# the second one\nname: twin\n")
    with pytest.raises(engine.ProfileError) as caught:
        engine.load_profiles()
    (issue,) = caught.value.errors
    assert str(issue).startswith(f"{user_dir / 'b.yaml'}:2: name: expected a name unique in {user_dir}")


def test_find_profile_by_name_by_path_and_with_a_hint(user_dir: Path, tmp_path: Path) -> None:
    assert engine.find_profile("tiny").name == "tiny"
    path = tmp_path / "elsewhere.yaml"
    path.write_text("name: elsewhere\n")
    assert engine.find_profile(str(path)).path == path
    with pytest.raises(engine.ConfigError, match=r"no profile named 'tinny' \(did you mean 'tiny'\?\)"):
        engine.find_profile("tinny")


def test_find_profile_ignores_other_broken_files_but_not_its_own(user_dir: Path) -> None:
    (user_dir / "broken.yaml").write_text("name: broken\ncpus: lots\n")
    assert engine.find_profile("default").source == "bundled"
    (user_dir / "tiny.yaml").write_text("name: tiny\ncpus: 0\n")  # meant to override tiny
    with pytest.raises(engine.ProfileError, match="cpus: expected an integer"):
        engine.find_profile("tiny")


def test_profile_dirs_are_bundled_then_user(user_dir: Path) -> None:
    assert engine.profile_dirs() == [("bundled", BUNDLED), ("user", user_dir)]


# -- saving ------------------------------------------------------------------------------------

COMMENTED = """\
# My pool, with comments that must survive.
name: mine   # the name
cpus: 1      # one is enough

# pool sizing
pool:
  max_size: 4  # the ceiling
  size: 2
description: "quoted, last"
"""


def test_saving_keeps_comments_quotes_and_key_order(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(COMMENTED)
    saved = engine.save_profile(path, {"cpus": 2, "pool.max_size": 6})
    assert path.read_text() == COMMENTED.replace("cpus: 1 ", "cpus: 2 ").replace("max_size: 4", "max_size: 6")
    assert (saved.cpus, saved.max_size) == (2, 6)
    assert engine.load_profile(path) == saved


def test_saving_adds_nested_keys_and_removes_keys(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(COMMENTED)
    saved = engine.save_profile(path, {"login.user": "bob", "description": None})
    assert saved.login == engine.LoginSpec("bob") and saved.description == ""
    text = path.read_text()
    assert "login:\n  user: bob\n" in text and "description" not in text and "# pool sizing" in text


def test_an_invalid_save_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(COMMENTED)
    with pytest.raises(engine.ProfileError, match=r"pool.max_size: expected at least pool.size \(2\), found 1"):
        engine.save_profile(path, {"pool.max_size": 1})
    assert path.read_text() == COMMENTED
    assert os.listdir(tmp_path) == ["mine.yaml"]  # no temp file left behind


def test_saving_a_bundled_profile_writes_a_user_copy(user_dir: Path) -> None:
    bundled = engine.find_profile("tiny")
    before = bundled.path.read_text() if bundled.path else ""
    saved = engine.save_profile(bundled, {"cpus": 2})
    assert (saved.source, saved.path, saved.cpus) == ("user", user_dir / "tiny.yaml", 2)
    assert bundled.path is not None and bundled.path.read_text() == before
    assert "# The smallest useful VMs" in (user_dir / "tiny.yaml").read_text()  # comments came along
    assert engine.find_profile("tiny").source == "user"


# -- the command line --------------------------------------------------------------------------


def test_cli_check_prints_ok_and_every_error_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("name: good\n")
    bad.write_text("name: bad\ncrpus: 2\npool: {size: 3, max_size: 1}\n")
    status = cli_main(["profiles", "check", str(good), str(bad), str(tmp_path / "missing.yaml")])
    assert status == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{good}: ok",
        f"{bad}:2: crpus: unknown key (did you mean 'cpus'?)",
        f"{bad}:3: pool.max_size: expected at least pool.size (3), found 1",
        f"{tmp_path / 'missing.yaml'}: no such file",
    ]


def test_cli_check_of_good_files_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(path) for path in BUNDLED.glob("*.yaml"))
    assert cli_main(["profiles", "check", *files]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{file}: ok" for file in files]


def test_cli_list_json_shows_user_and_bundled_profiles(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (user_dir / "mine.yaml").write_text("name: mine\nlogin: {user: bob, password: secret}\n")
    assert cli_main(["profiles", "list", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["mine"]["source"] == "user" and listed["default"]["source"] == "bundled"
    assert listed["mine"]["login"] == {"user": "bob"}  # the password stays out of listings


def test_cli_list_shows_good_profiles_and_reports_bad_files(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (user_dir / "bad.yaml").write_text("name: bad\ncpus: 99\n")
    assert cli_main(["profiles", "list"]) == 1
    out, err = capsys.readouterr()
    assert "default" in out and "tiny" in out and str(user_dir) in out
    assert f"{user_dir / 'bad.yaml'}:2: cpus: expected an integer from 1 to 64, found integer 99" in err


def test_the_installed_command_lists_profiles(tmp_path: Path) -> None:
    cli = str(Path(sys.executable).with_name("capsa-tui"))
    env = {**os.environ, "CAPSA_CONFIG_DIR": str(tmp_path)}
    res = subprocess.run([cli, "profiles", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert all(name in res.stdout for name in ("default", "login", "tiny"))
